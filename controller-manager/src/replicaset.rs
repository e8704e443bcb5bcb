//! The ReplicaSet controller: keeps `spec.replicas` pods matching the selector, adopts
//! and releases pods, and reports status. Start at [`reconcile`].
//!
//! Expectations ([`Expectations`]) remember the pods a reconcile created or deleted
//! until the pod cache has seen them, so a slow watch never causes a second round of
//! creates or deletes.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetCondition, ReplicaSetStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::chrono::Utc;
use parking_lot::Mutex;
use rkube_api::selector::LabelSelector;
use rkube_client::controller::Action;
use rkube_client::{api, DeleteParams, ObjectRef, Store};
use tracing::{debug, info, warn};

use crate::cluster::Writer;
use crate::events::{EventRecorder, EventType};
use crate::pod;

/// What a ReplicaSet reconcile can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid selector")]
    InvalidSelector(#[source] rkube_api::selector::Error),
    #[error("failed to create pods")]
    CreatePods(#[source] api::Error),
    #[error("failed to delete pod {0}")]
    DeletePod(String, #[source] api::Error),
    #[error("failed to update owner references of pod {0}")]
    ClaimPod(String, #[source] api::Error),
    #[error("failed to update status")]
    UpdateStatus(#[source] api::Error),
}

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// At most this many pods are created or deleted by one reconcile (Kubernetes'
/// `BurstReplicas`).
pub const BURST_REPLICAS: usize = 500;

/// Expectations older than this are considered fulfilled (a lost watch event must not
/// block a ReplicaSet forever).
const EXPECTATIONS_TTL: Duration = Duration::from_secs(5 * 60);

#[derive(Debug)]
struct Pending {
    creates: HashSet<String>,
    deletes: HashSet<String>,
    since: Instant,
}

/// Pods created or deleted by a reconcile that the pod cache has not caught up with,
/// per ReplicaSet key. Reconcile changes pods only when its ReplicaSet has none left.
#[derive(Debug, Default)]
pub struct Expectations {
    pending: Mutex<HashMap<ObjectRef, Pending>>,
}

impl Expectations {
    /// Whether `pods` has caught up with every write made for `key`.
    pub fn satisfied(&self, key: &ObjectRef, pods: &Store<Pod>) -> bool {
        let mut pending = self.pending.lock();
        let Some(entry) = pending.get_mut(key) else {
            return true;
        };
        let namespace = key.namespace.clone().unwrap_or_default();
        let at = |name: &str| pods.get(&ObjectRef::new(name).within(&namespace));
        entry.creates.retain(|name| at(name).is_none());
        entry
            .deletes
            .retain(|name| at(name).is_some_and(|p| p.metadata.deletion_timestamp.is_none()));
        let done = (entry.creates.is_empty() && entry.deletes.is_empty())
            || entry.since.elapsed() > EXPECTATIONS_TTL;
        if done {
            pending.remove(key);
        }
        done
    }

    pub(crate) fn expect(&self, key: &ObjectRef, creates: Vec<String>, deletes: Vec<String>) {
        if creates.is_empty() && deletes.is_empty() {
            return;
        }
        let mut pending = self.pending.lock();
        let entry = pending.entry(key.clone()).or_insert_with(|| Pending {
            creates: HashSet::new(),
            deletes: HashSet::new(),
            since: Instant::now(),
        });
        entry.creates.extend(creates);
        entry.deletes.extend(deletes);
        entry.since = Instant::now();
    }
}

/// What the ReplicaSet controller reads and writes.
pub struct Context {
    pub pods: Store<Pod>,
    pub pod_writer: Arc<dyn Writer<Pod>>,
    pub rs_writer: Arc<dyn Writer<ReplicaSet>>,
    pub expectations: Expectations,
    pub events: EventRecorder,
}

/// Brings the pods of `rs` to `spec.replicas` and writes its status:
/// 1. claim pods: keep owned pods that still match, release owned pods that do not,
///    adopt matching orphans;
/// 2. unless a previous reconcile's writes are still unseen (expectations) or the
///    ReplicaSet is being deleted, create or delete pods (at most [`BURST_REPLICAS`]);
/// 3. write status if it changed; come back when a ready pod becomes available.
pub async fn reconcile(rs: Arc<ReplicaSet>, ctx: Arc<Context>) -> Result<Action> {
    let key = ObjectRef::from_obj(rs.as_ref());
    let namespace = rs.metadata.namespace.clone().unwrap_or_default();
    let selector = rs
        .spec
        .as_ref()
        .map(|s| LabelSelector::from_k8s(&s.selector))
        .transpose()
        .map_err(Error::InvalidSelector)?
        .unwrap_or_else(LabelSelector::everything);
    let needs_sync =
        ctx.expectations.satisfied(&key, &ctx.pods) && rs.metadata.deletion_timestamp.is_none();

    let owned = claim_pods(&rs, &namespace, &selector, &ctx).await?;
    let active: Vec<Arc<Pod>> = owned.into_iter().filter(|p| pod::is_active(p)).collect();

    let manage_error = if needs_sync {
        manage_replicas(&rs, &key, &namespace, &active, &ctx)
            .await
            .err()
    } else {
        debug!("waiting for the pod cache to catch up");
        None
    };

    let now = crate::pod::now();
    let min_ready = rs
        .spec
        .as_ref()
        .and_then(|s| s.min_ready_seconds)
        .unwrap_or(0);
    let status = compute_status(&rs, &active, manage_error.as_ref(), now);
    if rs.status.as_ref() != Some(&status) {
        let mut updated = (*rs).clone();
        updated.status = Some(status.clone());
        ctx.rs_writer
            .replace_status(&updated)
            .await
            .map_err(Error::UpdateStatus)?;
    }
    if let Some(err) = manage_error {
        return Err(err);
    }
    // A ready pod becomes available after minReadySeconds: look again then.
    let next = active
        .iter()
        .filter_map(|p| pod::seconds_until_available(p, min_ready, now))
        .min();
    Ok(match next {
        Some(seconds) if min_ready > 0 => {
            Action::requeue(Duration::from_secs(seconds.max(1) as u64))
        }
        _ => Action::await_change(),
    })
}

/// Adopts matching orphans and releases owned pods that no longer match; returns the
/// pods `rs` owns afterwards.
async fn claim_pods(
    rs: &ReplicaSet,
    namespace: &str,
    selector: &LabelSelector,
    ctx: &Context,
) -> Result<Vec<Arc<Pod>>> {
    let uid = rs.metadata.uid.clone().unwrap_or_default();
    let deleting = rs.metadata.deletion_timestamp.is_some();
    let mut owned = Vec::new();
    for p in ctx.pods.state() {
        if p.metadata.namespace.as_deref() != Some(namespace) {
            continue;
        }
        let labels = p.metadata.labels.clone().unwrap_or_default();
        let matches = selector.matches(&labels);
        match pod::controller_of(&p.metadata) {
            Some(owner) if owner.uid == uid => {
                if matches || deleting {
                    owned.push(p);
                } else {
                    let mut released = (*p).clone();
                    if let Some(refs) = released.metadata.owner_references.as_mut() {
                        refs.retain(|o| o.uid != uid);
                    }
                    let name = p.metadata.name.clone().unwrap_or_default();
                    info!(pod = %name, "releasing pod that no longer matches");
                    match ctx.pod_writer.replace(&released).await {
                        Ok(_) => {}
                        Err(err) if err.is_not_found() => {}
                        Err(err) => return Err(Error::ClaimPod(name, err)),
                    }
                }
            }
            Some(_) => {}
            None => {
                if !matches || deleting || !pod::is_active(&p) {
                    continue;
                }
                let mut adopted = (*p).clone();
                adopted
                    .metadata
                    .owner_references
                    .get_or_insert_with(Vec::new)
                    .push(pod::controller_ref("apps/v1", "ReplicaSet", &rs.metadata));
                let name = p.metadata.name.clone().unwrap_or_default();
                info!(pod = %name, "adopting orphan pod");
                match ctx.pod_writer.replace(&adopted).await {
                    Ok(stored) => owned.push(Arc::new(stored)),
                    Err(err) if err.is_not_found() => {}
                    Err(err) => return Err(Error::ClaimPod(name, err)),
                }
            }
        }
    }
    Ok(owned)
}

/// Creates or deletes pods to reach `spec.replicas`.
async fn manage_replicas(
    rs: &ReplicaSet,
    key: &ObjectRef,
    namespace: &str,
    active: &[Arc<Pod>],
    ctx: &Context,
) -> Result<()> {
    let want = rs
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(1)
        .max(0) as usize;
    let rs_name = rs.metadata.name.clone().unwrap_or_default();
    if active.len() < want {
        let missing = (want - active.len()).min(BURST_REPLICAS);
        let Some(template) = rs.spec.as_ref().and_then(|s| s.template.as_ref()) else {
            return Ok(());
        };
        let new_pod = pod::from_template(
            template,
            namespace,
            &format!("{rs_name}-"),
            pod::controller_ref("apps/v1", "ReplicaSet", &rs.metadata),
        );
        let (created, result) = slow_start(missing, 1, |_| {
            let writer = ctx.pod_writer.clone();
            let new_pod = new_pod.clone();
            async move { writer.create(&new_pod).await }
        })
        .await;
        let names: Vec<String> = created
            .iter()
            .filter_map(|p| p.metadata.name.clone())
            .collect();
        ctx.expectations.expect(key, names.clone(), Vec::new());
        for name in &names {
            ctx.events.record(
                rs,
                EventType::Normal,
                "SuccessfulCreate",
                format!("Created pod: {name}"),
            );
        }
        info!(created = names.len(), want, "created pods");
        if let Err(err) = result {
            warn!(error = %err, "failed to create pod");
            ctx.events.record(
                rs,
                EventType::Warning,
                "FailedCreate",
                format!("Error creating: {err}"),
            );
            return Err(Error::CreatePods(err));
        }
    } else if active.len() > want {
        let surplus = (active.len() - want).min(BURST_REPLICAS);
        let mut ranked: Vec<&Arc<Pod>> = active.iter().collect();
        ranked.sort_by(|a, b| pod::deletion_order(a, b));
        let victims: Vec<String> = ranked
            .iter()
            .take(surplus)
            .filter_map(|p| p.metadata.name.clone())
            .collect();
        ctx.expectations.expect(key, Vec::new(), victims.clone());
        let params = DeleteParams::default();
        let results = join_all(victims.iter().map(|name| {
            let writer = ctx.pod_writer.clone();
            let params = &params;
            async move { (name, writer.delete(Some(namespace), name, params).await) }
        }))
        .await;
        for (name, result) in results {
            match result {
                Ok(_) => ctx.events.record(
                    rs,
                    EventType::Normal,
                    "SuccessfulDelete",
                    format!("Deleted pod: {name}"),
                ),
                Err(err) if err.is_not_found() => {}
                Err(err) => return Err(Error::DeletePod(name.clone(), err)),
            }
        }
        info!(deleted = victims.len(), want, "deleted pods");
    }
    Ok(())
}

/// Runs `count` calls of `call` in batches of growing size (`initial`, then doubling;
/// Kubernetes' `slowStartBatch`), all calls of a batch concurrently, and stops after the
/// first batch with a failure: a pod template the apiserver rejects costs one call, not
/// hundreds. Returns what succeeded and the first error.
///
/// Example: 10 pods are created in batches of 1, 2, 4 and 3.
pub async fn slow_start<T, F, Fut>(
    count: usize,
    initial: usize,
    call: F,
) -> (Vec<T>, std::result::Result<(), api::Error>)
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = api::Result<T>>,
{
    let mut done = Vec::with_capacity(count);
    let mut batch = initial.max(1);
    let mut started = 0;
    while started < count {
        let size = batch.min(count - started);
        let results = join_all((started..started + size).map(&call)).await;
        started += size;
        let mut failure = None;
        for result in results {
            match result {
                Ok(value) => done.push(value),
                Err(err) => {
                    failure.get_or_insert(err);
                }
            }
        }
        if let Some(err) = failure {
            return (done, Err(err));
        }
        batch *= 2;
    }
    (done, Ok(()))
}

/// The status `rs` should have given its active pods (Kubernetes'
/// `calculateStatus`).
pub fn compute_status(
    rs: &ReplicaSet,
    active: &[Arc<Pod>],
    manage_error: Option<&Error>,
    now: k8s_openapi::chrono::DateTime<Utc>,
) -> ReplicaSetStatus {
    let spec = rs.spec.as_ref();
    let min_ready = spec.and_then(|s| s.min_ready_seconds).unwrap_or(0);
    let template_labels = spec
        .and_then(|s| s.template.as_ref())
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let fully_labeled = active
        .iter()
        .filter(|p| {
            let labels = p.metadata.labels.clone().unwrap_or_default();
            template_labels
                .iter()
                .all(|(k, v)| labels.get(k) == Some(v))
        })
        .count();
    let ready = active.iter().filter(|p| pod::is_ready(p)).count();
    let available = active
        .iter()
        .filter(|p| pod::is_available(p, min_ready, now))
        .count();

    let previous = rs.status.clone().unwrap_or_default();
    let mut conditions: Vec<ReplicaSetCondition> = previous
        .conditions
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|c| c.type_ != "ReplicaFailure")
        .collect();
    if let Some(err) = manage_error {
        let reason = match err {
            Error::CreatePods(_) => "FailedCreate",
            _ => "FailedDelete",
        };
        let existing = previous
            .conditions
            .unwrap_or_default()
            .into_iter()
            .find(|c| c.type_ == "ReplicaFailure" && c.reason.as_deref() == Some(reason));
        conditions.push(existing.unwrap_or(ReplicaSetCondition {
            type_: "ReplicaFailure".into(),
            status: "True".into(),
            reason: Some(reason.into()),
            message: Some(format!("{err}: {}", crate::failure::causes(err))),
            last_transition_time: Some(Time(now)),
        }));
    }
    ReplicaSetStatus {
        replicas: active.len() as i32,
        fully_labeled_replicas: Some(fully_labeled as i32),
        ready_replicas: Some(ready as i32),
        available_replicas: Some(available as i32),
        observed_generation: rs.metadata.generation,
        conditions: (!conditions.is_empty()).then_some(conditions),
    }
}

/// Every failure is retried with the queue's back-off.
pub fn error_policy(rs: Arc<ReplicaSet>, err: &Error, _ctx: Arc<Context>) -> Action {
    crate::failure::report("replicaset", &ObjectRef::from_obj(rs.as_ref()), err);
    Action::retry()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::apps::v1::ReplicaSetSpec;
    use k8s_openapi::api::core::v1::PodTemplateSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
        LabelSelector as K8sSelector, ObjectMeta,
    };
    use rkube_client::store;
    use rkube_client::watcher::Event;

    use super::*;
    use crate::cluster::Recorder;
    use crate::pod::testing::*;

    fn labels() -> BTreeMap<String, String> {
        BTreeMap::from([("app".to_string(), "web".to_string())])
    }

    fn rs(replicas: i32) -> ReplicaSet {
        ReplicaSet {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("default".into()),
                uid: Some("rs-uid".into()),
                generation: Some(2),
                ..Default::default()
            },
            spec: Some(ReplicaSetSpec {
                replicas: Some(replicas),
                selector: K8sSelector {
                    match_labels: Some(labels()),
                    ..Default::default()
                },
                template: Some(PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some(labels()),
                        ..Default::default()
                    }),
                    spec: Some(Default::default()),
                }),
                ..Default::default()
            }),
            status: None,
        }
    }

    fn owned(mut pod: Pod, rs: &ReplicaSet) -> Pod {
        pod.metadata.labels = Some(labels());
        pod.metadata.owner_references = Some(vec![pod::controller_ref(
            "apps/v1",
            "ReplicaSet",
            &rs.metadata,
        )]);
        pod
    }

    fn context(pods: Vec<Pod>, recorder: &Recorder) -> (Arc<Context>, store::Writer<Pod>) {
        let (store, mut writer) = store::store();
        writer.apply_watcher_event(&Event::Init);
        for p in pods {
            writer.apply_watcher_event(&Event::InitApply(p));
        }
        writer.apply_watcher_event(&Event::InitDone);
        let ctx = Context {
            pods: store,
            pod_writer: Arc::new(recorder.clone()),
            rs_writer: Arc::new(recorder.clone()),
            expectations: Expectations::default(),
            events: EventRecorder::disabled(),
        };
        (Arc::new(ctx), writer)
    }

    #[tokio::test]
    async fn creates_missing_pods_once_until_the_cache_sees_them() {
        let recorder = Recorder::default();
        let (ctx, _writer) = context(vec![], &recorder);
        let set = Arc::new(rs(3));
        reconcile(set.clone(), ctx.clone())
            .await
            .expect("reconcile");
        assert_eq!(
            recorder.calls(),
            [
                "create Pod default/web-1",
                "create Pod default/web-2",
                "create Pod default/web-3",
                "update-status ReplicaSet default/web",
            ]
        );
        let created = &recorder.objects()[0];
        assert_eq!(created["metadata"]["ownerReferences"][0]["uid"], "rs-uid");
        assert_eq!(created["metadata"]["labels"]["app"], "web");

        // The cache has not seen the pods: a second reconcile must not create again.
        reconcile(set, ctx).await.expect("reconcile");
        assert_eq!(recorder.calls().len(), 5, "{:?}", recorder.calls());
        assert_eq!(recorder.calls()[4], "update-status ReplicaSet default/web");
    }

    #[tokio::test]
    async fn deletes_least_useful_pods_first() {
        let set = rs(1);
        let pods = vec![
            owned(running_ready(on_node(pod("old-ready"), "n1"), 10), &set),
            owned(pod("unscheduled"), &set),
            owned(running_ready(on_node(pod("new-ready"), "n1"), 100), &set),
        ];
        let recorder = Recorder::default();
        let (ctx, _writer) = context(pods, &recorder);
        reconcile(Arc::new(set), ctx).await.expect("reconcile");
        assert_eq!(
            recorder.calls(),
            [
                "delete Pod default/unscheduled",
                "delete Pod default/new-ready",
                "update-status ReplicaSet default/web",
            ]
        );
    }

    #[tokio::test]
    async fn adopts_matching_orphans_and_releases_mismatched_pods() {
        let set = rs(2);
        let mut orphan = pod("orphan");
        orphan.metadata.labels = Some(labels());
        let mut mismatched = owned(pod("relabeled"), &set);
        mismatched.metadata.labels = Some(BTreeMap::from([("app".into(), "other".into())]));
        let keep = owned(pod("kept"), &set);
        let recorder = Recorder::default();
        let (ctx, _writer) = context(vec![orphan, mismatched, keep], &recorder);
        reconcile(Arc::new(set), ctx).await.expect("reconcile");
        let mut calls = recorder.calls();
        let status = calls.pop();
        calls.sort();
        assert_eq!(
            calls,
            ["update Pod default/orphan", "update Pod default/relabeled"]
        );
        assert_eq!(
            status.as_deref(),
            Some("update-status ReplicaSet default/web")
        );
        let status = recorder.objects().pop().expect("status written");
        assert_eq!(status["status"]["replicas"], 2);
        assert_eq!(status["status"]["observedGeneration"], 2);
    }

    #[tokio::test]
    async fn a_failing_template_costs_one_create() {
        let recorder = Recorder::failing_creates();
        let (ctx, _writer) = context(vec![], &recorder);
        let err = reconcile(Arc::new(rs(50)), ctx)
            .await
            .expect_err("create fails");
        assert!(matches!(err, Error::CreatePods(_)), "{err}");
        assert_eq!(
            recorder.calls(),
            [
                "create Pod default/",
                "update-status ReplicaSet default/web"
            ]
        );
        let status = recorder.objects().pop().expect("status written");
        assert_eq!(status["status"]["conditions"][0]["type"], "ReplicaFailure");
        assert_eq!(status["status"]["conditions"][0]["reason"], "FailedCreate");
    }

    #[tokio::test]
    async fn slow_start_stops_after_the_batch_that_failed() {
        // Batches of 1, 2, 4, 3: a failure at call 3 (third batch: calls 3..=6) ends
        // the run after that batch, so calls 7, 8 and 9 are never made.
        let calls = parking_lot::Mutex::new(Vec::new());
        let (done, result) = slow_start(10, 1, |i| {
            calls.lock().push(i);
            async move {
                if i == 3 {
                    Err(api::Error::UnknownEventType("boom".into()))
                } else {
                    Ok(i)
                }
            }
        })
        .await;
        assert!(result.is_err());
        assert_eq!(done, [0, 1, 2, 4, 5, 6]);
        assert_eq!(*calls.lock(), [0, 1, 2, 3, 4, 5, 6]);
        let (done, result) = slow_start(10, 1, |i| async move { Ok::<_, api::Error>(i) }).await;
        assert!(result.is_ok());
        assert_eq!(done.len(), 10);
    }
}
