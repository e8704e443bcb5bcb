//! The Deployment controller: rolls a Deployment's pod template out through
//! ReplicaSets, one per template (named `<deployment>-<pod-template-hash>`), as
//! Kubernetes does. Start at [`reconcile`]; then, by job:
//! - [`sync`]: finding the new and old ReplicaSets, revisions, scaling (proportional
//!   during a rollout), history cleanup, status;
//! - [`rolling`]: the RollingUpdate strategy (maxSurge / maxUnavailable);
//! - [`recreate`]: the Recreate strategy;
//! - [`rollback`]: rollbacks requested through the `deprecated.deployment.rollback.to`
//!   annotation (`kubectl rollout undo` patches the template instead; [`sync`] then
//!   moves the matching old ReplicaSet to the newest revision);
//! - [`progress`]: the Progressing and Available conditions and the progress deadline.

pub mod progress;
pub mod recreate;
pub mod rollback;
pub mod rolling;
pub mod sync;

use std::sync::Arc;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use rkube_api::selector::LabelSelector;
use rkube_client::controller::Action;
use rkube_client::{api, ObjectRef, Store};

use crate::cluster::Writer;
use crate::events::{EventRecorder, EventType};
use crate::pod;

/// The revision of a ReplicaSet (and, copied, of its Deployment).
pub const REVISION: &str = "deployment.kubernetes.io/revision";
/// Earlier revisions of a reused ReplicaSet, comma-separated.
pub const REVISION_HISTORY: &str = "deployment.kubernetes.io/revision-history";
/// `spec.replicas` of the Deployment when the ReplicaSet was last scaled.
pub const DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
/// `spec.replicas + maxSurge` of the Deployment when the ReplicaSet was last scaled.
pub const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";
/// The label telling the pods of one template apart.
pub const POD_TEMPLATE_HASH: &str = "pod-template-hash";
/// A rollback request (revision number, 0 = the previous one).
pub const ROLLBACK_TO: &str = "deprecated.deployment.rollback.to";

/// What a Deployment reconcile can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid selector")]
    InvalidSelector(#[source] rkube_api::selector::Error),
    #[error("invalid maxSurge or maxUnavailable {0:?}")]
    InvalidIntOrPercent(String),
    #[error("failed to create replica set {0}")]
    CreateReplicaSet(String, #[source] api::Error),
    #[error(
        "replica set {0} exists with another template (hash collision), retrying with a new hash"
    )]
    HashCollision(String),
    #[error("new replica set {0} is not in the cache yet")]
    CacheBehind(String),
    #[error("failed to update replica set {0}")]
    UpdateReplicaSet(String, #[source] api::Error),
    #[error("failed to delete replica set {0}")]
    DeleteReplicaSet(String, #[source] api::Error),
    #[error("failed to update deployment")]
    UpdateDeployment(#[source] api::Error),
    #[error("failed to update deployment status")]
    UpdateStatus(#[source] api::Error),
}

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What the Deployment controller reads and writes.
pub struct Context {
    pub replicasets: Store<ReplicaSet>,
    pub pods: Store<Pod>,
    pub deployment_writer: Arc<dyn Writer<Deployment>>,
    pub rs_writer: Arc<dyn Writer<ReplicaSet>>,
    pub events: EventRecorder,
}

/// One branch per state, in priority order, as Kubernetes' `syncDeployment`: deleting →
/// status only; paused → scale only; rollback requested → roll back; scaling event →
/// scale proportionally; otherwise one step of the strategy. Each step writes what it
/// decided and returns; the resulting events bring the next step.
pub async fn reconcile(d: Arc<Deployment>, ctx: Arc<Context>) -> Result<Action> {
    let spec = d.spec.clone().unwrap_or_default();
    let selector = LabelSelector::from_k8s(&spec.selector).map_err(Error::InvalidSelector)?;
    if selector.is_empty() {
        ctx.events.record(
            d.as_ref(),
            EventType::Warning,
            "SelectingAll",
            "This deployment is selecting all pods. A non-empty selector is required.".into(),
        );
        return Ok(Action::await_change());
    }
    let mut d = (*d).clone();
    let rs_list = sync::claim_replicasets(&mut d, &selector, &ctx).await?;

    if d.metadata.deletion_timestamp.is_some() {
        return sync::sync_status_only(&mut d, &rs_list, &ctx).await;
    }
    progress::check_paused_conditions(&mut d, &ctx).await?;
    if spec.paused == Some(true) {
        return sync::sync(&mut d, &rs_list, &ctx).await;
    }
    if rollback::requested(&d).is_some() {
        return rollback::rollback(&mut d, &rs_list, &ctx).await;
    }
    if sync::is_scaling_event(&d, &rs_list) {
        return sync::sync(&mut d, &rs_list, &ctx).await;
    }
    match spec.strategy.as_ref().and_then(|s| s.type_.as_deref()) {
        Some("Recreate") => recreate::rollout(&mut d, &rs_list, &ctx).await,
        _ => rolling::rollout(&mut d, &rs_list, &ctx).await,
    }
}

/// Every failure is retried with the queue's back-off.
pub fn error_policy(d: Arc<Deployment>, err: &Error, _ctx: Arc<Context>) -> Action {
    crate::failure::report("deployment", &ObjectRef::from_obj(d.as_ref()), err);
    Action::retry()
}

/// FNV-32a, the hash Kubernetes uses for `pod-template-hash`.
fn fnv32a(bytes: &[u8], mut hash: u32) -> u32 {
    for byte in bytes {
        hash ^= u32::from(*byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash
}

const FNV32_OFFSET: u32 = 0x811c_9dc5;

/// Characters of "safe" encoded strings: no vowels (no words), no look-alike digits.
const SAFE_ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// The `pod-template-hash` of `template`: FNV-32a of the template (here its canonical
/// JSON, see [`equal_ignore_hash`]: fields in a fixed order, maps sorted) followed, when the
/// Deployment had hash collisions, by the collision count as 8 little-endian bytes; the
/// decimal number is then mapped digit by digit onto safe characters, as Kubernetes'
/// `ComputeHash` and `SafeEncodeString` do.
///
/// Example: hash 1234567890 → digits "1234567890" → ASCII 49, 50, …, 57, 48 modulo 27
/// = 22, 23, …, 3, 21 → "56789bcdf4".
pub fn pod_template_hash(template: &PodTemplateSpec, collision_count: Option<i32>) -> String {
    let json = serde_json::to_vec(&canonical(template)).expect("JSON values always serialise");
    let mut hash = fnv32a(&json, FNV32_OFFSET);
    if let Some(count) = collision_count {
        let mut bytes = [0u8; 8];
        bytes[..4].copy_from_slice(&(count as u32).to_le_bytes());
        hash = fnv32a(&bytes, hash);
    }
    safe_encode(hash)
}

/// The decimal digits of `n` mapped onto [`SAFE_ALPHANUMS`] (`SafeEncodeString`).
fn safe_encode(n: u32) -> String {
    n.to_string()
        .bytes()
        .map(|b| char::from(SAFE_ALPHANUMS[usize::from(b) % SAFE_ALPHANUMS.len()]))
        .collect()
}

/// Whether two templates are equal once the `pod-template-hash` label is ignored
/// (Kubernetes' `EqualIgnoreHash`), comparing them as Kubernetes' semantic equality
/// does: an absent field, `null`, `{}` and `[]` are the same. (kubectl's `rollout undo`
/// sends `"resources": {}` where the stored ReplicaSet has none.)
pub fn equal_ignore_hash(a: &PodTemplateSpec, b: &PodTemplateSpec) -> bool {
    let strip = |t: &PodTemplateSpec| {
        let mut t = t.clone();
        if let Some(labels) = t.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
            labels.remove(POD_TEMPLATE_HASH);
        }
        canonical(&t)
    };
    strip(a) == strip(b)
}

/// `template` as JSON without nulls, empty objects and empty arrays (recursively).
fn canonical(template: &PodTemplateSpec) -> serde_json::Value {
    fn prune(value: &mut serde_json::Value) -> bool {
        match value {
            serde_json::Value::Null => true,
            serde_json::Value::Object(map) => {
                map.retain(|_, v| !prune(v));
                map.is_empty()
            }
            serde_json::Value::Array(items) => {
                for item in items.iter_mut() {
                    prune(item);
                }
                items.is_empty()
            }
            _ => false,
        }
    }
    let mut value = serde_json::to_value(template).unwrap_or_default();
    prune(&mut value);
    value
}

/// The revision annotation of an object, 0 when absent or unparsable.
pub fn revision_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> i64 {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(REVISION))
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

/// `spec.replicas` of a ReplicaSet (default 1).
pub fn rs_replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

/// `spec.replicas` of a Deployment (default 1).
pub fn replicas(d: &Deployment) -> i32 {
    d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

/// Pods of the given ReplicaSets (by controller ownerReference uid).
fn pods_of<'a>(ctx: &Context, rss: impl Iterator<Item = &'a ReplicaSet>) -> Vec<Arc<Pod>> {
    let uids: std::collections::HashSet<String> =
        rss.filter_map(|rs| rs.metadata.uid.clone()).collect();
    ctx.pods
        .state()
        .into_iter()
        .filter(|p| pod::controller_of(&p.metadata).is_some_and(|o| uids.contains(&o.uid)))
        .collect()
}

#[cfg(test)]
pub(crate) mod testing {
    //! Deployment and ReplicaSet fixtures.
    use std::collections::BTreeMap;

    use k8s_openapi::api::apps::v1::{
        DeploymentSpec, DeploymentStrategy, ReplicaSetSpec, ReplicaSetStatus,
        RollingUpdateDeployment,
    };
    use k8s_openapi::api::core::v1::{Container, PodSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, Time};
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    use k8s_openapi::chrono::{DateTime, Utc};

    use super::*;

    pub fn template(image: &str) -> PodTemplateSpec {
        PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some(BTreeMap::from([("app".to_string(), "web".to_string())])),
                ..Default::default()
            }),
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "web".into(),
                    image: Some(image.into()),
                    ..Default::default()
                }],
                ..Default::default()
            }),
        }
    }

    pub fn deployment(replicas: i32, surge: IntOrString, unavailable: IntOrString) -> Deployment {
        Deployment {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("default".into()),
                uid: Some("d-uid".into()),
                generation: Some(1),
                ..Default::default()
            },
            spec: Some(DeploymentSpec {
                replicas: Some(replicas),
                selector: LabelSelector {
                    match_labels: Some(BTreeMap::from([("app".to_string(), "web".to_string())])),
                    ..Default::default()
                },
                template: template("web:1"),
                strategy: Some(DeploymentStrategy {
                    type_: Some("RollingUpdate".into()),
                    rolling_update: Some(RollingUpdateDeployment {
                        max_surge: Some(surge),
                        max_unavailable: Some(unavailable),
                    }),
                }),
                ..Default::default()
            }),
            status: None,
        }
    }

    /// A ReplicaSet of `d` with `replicas` in spec, `available` of them available.
    pub fn replicaset(
        d: &Deployment,
        name: &str,
        image: &str,
        replicas: i32,
        available: i32,
        created: i64,
    ) -> ReplicaSet {
        let mut tmpl = template(image);
        let hash = pod_template_hash(&tmpl, None);
        if let Some(labels) = tmpl.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
            labels.insert(POD_TEMPLATE_HASH.into(), hash);
        }
        let labels = tmpl.metadata.as_ref().and_then(|m| m.labels.clone());
        ReplicaSet {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                labels: labels.clone(),
                uid: Some(format!("{name}-uid")),
                creation_timestamp: Some(Time(
                    DateTime::<Utc>::UNIX_EPOCH + k8s_openapi::chrono::Duration::seconds(created),
                )),
                owner_references: Some(vec![pod::controller_ref(
                    "apps/v1",
                    "Deployment",
                    &d.metadata,
                )]),
                annotations: Some(BTreeMap::from([(
                    REVISION.to_string(),
                    created.to_string(),
                )])),
                ..Default::default()
            },
            spec: Some(ReplicaSetSpec {
                replicas: Some(replicas),
                selector: LabelSelector {
                    match_labels: labels,
                    ..Default::default()
                },
                template: Some(tmpl),
                ..Default::default()
            }),
            status: Some(ReplicaSetStatus {
                replicas,
                ready_replicas: Some(available),
                available_replicas: Some(available),
                ..Default::default()
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;

    #[test]
    fn template_hash_is_stable_safe_and_sensitive() {
        let a = pod_template_hash(&template("web:1"), None);
        assert_eq!(a, pod_template_hash(&template("web:1"), None));
        assert_ne!(a, pod_template_hash(&template("web:2"), None));
        assert_ne!(a, pod_template_hash(&template("web:1"), Some(1)));
        assert!(a.bytes().all(|b| SAFE_ALPHANUMS.contains(&b)), "{a}");
        assert_eq!(safe_encode(1_234_567_890), "56789bcdf4");
        // FNV-32a test vectors.
        assert_eq!(fnv32a(b"", FNV32_OFFSET), 0x811c_9dc5);
        assert_eq!(fnv32a(b"a", FNV32_OFFSET), 0xe40c_292c);
        assert_eq!(fnv32a(b"foobar", FNV32_OFFSET), 0xbf9c_f968);
    }

    #[test]
    fn templates_equal_ignoring_hash_label() {
        let d = deployment(
            3,
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1),
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(0),
        );
        let rs = replicaset(&d, "web-1", "web:1", 3, 3, 1);
        let rs_template = rs.spec.and_then(|s| s.template).unwrap_or_default();
        assert!(equal_ignore_hash(&template("web:1"), &rs_template));
        assert!(!equal_ignore_hash(&template("web:2"), &rs_template));
        // What kubectl rollout undo sends: empty structs where the stored one has none.
        let mut undo = template("web:1");
        if let Some(spec) = undo.spec.as_mut() {
            spec.containers[0].resources = Some(Default::default());
            spec.volumes = Some(vec![]);
        }
        assert!(equal_ignore_hash(&undo, &rs_template));
        assert_eq!(
            pod_template_hash(&undo, None),
            pod_template_hash(&template("web:1"), None)
        );
    }
}

#[cfg(test)]
mod reconcile_tests {
    //! Reconcile decisions against the recording fake, as Kubernetes' deployment
    //! controller tests do (`expectCreateRSAction`, `expectUpdateRSAction`…).
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    use rkube_client::store;
    use rkube_client::watcher::Event;

    use super::testing::*;
    use super::*;
    use crate::cluster::Recorder;

    fn context(rss: Vec<ReplicaSet>, recorder: &Recorder) -> Arc<Context> {
        let (rs_store, mut writer) = store::store();
        writer.apply_watcher_event(&Event::Init);
        for rs in rss {
            writer.apply_watcher_event(&Event::InitApply(rs));
        }
        writer.apply_watcher_event(&Event::InitDone);
        let (pods, mut pod_writer) = store::store();
        pod_writer.apply_watcher_event(&Event::Init);
        pod_writer.apply_watcher_event(&Event::InitDone);
        Arc::new(Context {
            replicasets: rs_store,
            pods,
            deployment_writer: Arc::new(recorder.clone()),
            rs_writer: Arc::new(recorder.clone()),
            events: EventRecorder::disabled(),
        })
    }

    fn with_scale_annotations(mut rs: ReplicaSet, desired: i32, max: i32) -> ReplicaSet {
        sync::set_replicas_annotations(&mut rs, desired, max);
        rs
    }

    #[tokio::test]
    async fn new_deployment_creates_its_first_replica_set() {
        let d = deployment(4, IntOrString::Int(1), IntOrString::Int(1));
        let recorder = Recorder::default();
        reconcile(Arc::new(d.clone()), context(vec![], &recorder))
            .await
            .expect("reconcile");
        let hash = pod_template_hash(&template("web:1"), None);
        assert_eq!(
            recorder.calls(),
            [
                format!("create ReplicaSet default/web-{hash}"),
                "update Deployment default/web".to_string(),
                "update-status Deployment default/web".to_string(),
            ]
        );
        let objects = recorder.objects();
        let rs = &objects[0];
        // Up to replicas + maxSurge pods may exist, none do: the new set gets all 4.
        assert_eq!(rs["spec"]["replicas"], 4);
        assert_eq!(rs["metadata"]["labels"][POD_TEMPLATE_HASH], hash.as_str());
        assert_eq!(
            rs["spec"]["selector"]["matchLabels"][POD_TEMPLATE_HASH],
            hash.as_str()
        );
        assert_eq!(rs["metadata"]["annotations"][REVISION], "1");
        assert_eq!(rs["metadata"]["annotations"][DESIRED_REPLICAS], "4");
        assert_eq!(rs["metadata"]["annotations"][MAX_REPLICAS], "5");
        assert_eq!(rs["metadata"]["ownerReferences"][0]["controller"], true);
        assert_eq!(objects[1]["metadata"]["annotations"][REVISION], "1");
    }

    #[tokio::test]
    async fn rolling_update_scales_the_new_set_up_first() {
        let mut d = deployment(10, IntOrString::Int(3), IntOrString::Int(2));
        if let Some(spec) = d.spec.as_mut() {
            spec.template = template("web:2");
        }
        let old = with_scale_annotations(replicaset(&d, "old", "web:1", 10, 10, 1), 10, 13);
        let new = with_scale_annotations(replicaset(&d, "new", "web:2", 0, 0, 2), 10, 13);
        let recorder = Recorder::default();
        reconcile(Arc::new(d), context(vec![old, new], &recorder))
            .await
            .expect("reconcile");
        assert_eq!(
            recorder.calls(),
            [
                "update Deployment default/web",
                "update ReplicaSet default/new",
                "update-status Deployment default/web",
            ]
        );
        // 10 old + 0 new, 13 allowed: the new set grows by 3.
        assert_eq!(recorder.objects()[1]["spec"]["replicas"], 3);
    }

    #[tokio::test]
    async fn rolling_update_then_scales_old_sets_down_within_max_unavailable() {
        let mut d = deployment(10, IntOrString::Int(3), IntOrString::Int(2));
        if let Some(spec) = d.spec.as_mut() {
            spec.template = template("web:2");
        }
        d.metadata.annotations = Some([(REVISION.to_string(), "2".to_string())].into());
        let old = with_scale_annotations(replicaset(&d, "old", "web:1", 10, 10, 1), 10, 13);
        let new = with_scale_annotations(replicaset(&d, "new", "web:2", 3, 3, 2), 10, 13);
        let recorder = Recorder::default();
        reconcile(Arc::new(d), context(vec![old, new], &recorder))
            .await
            .expect("reconcile");
        assert_eq!(
            recorder.calls(),
            [
                "update ReplicaSet default/old",
                "update-status Deployment default/web"
            ]
        );
        // 13 available, 8 needed: 5 old pods go.
        assert_eq!(recorder.objects()[0]["spec"]["replicas"], 5);
    }

    #[tokio::test]
    async fn scaling_event_resizes_without_rolling() {
        let d = deployment(6, IntOrString::Int(1), IntOrString::Int(0));
        let d = Deployment {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                annotations: Some([(REVISION.to_string(), "1".to_string())].into()),
                ..d.metadata.clone()
            },
            ..d
        };
        let only = with_scale_annotations(replicaset(&d, "web-1", "web:1", 3, 3, 1), 3, 4);
        let recorder = Recorder::default();
        reconcile(Arc::new(d), context(vec![only], &recorder))
            .await
            .expect("reconcile");
        assert_eq!(
            recorder.calls(),
            [
                "update ReplicaSet default/web-1",
                "update-status Deployment default/web"
            ]
        );
        let rs = &recorder.objects()[0];
        assert_eq!(rs["spec"]["replicas"], 6);
        assert_eq!(rs["metadata"]["annotations"][DESIRED_REPLICAS], "6");
    }

    #[tokio::test]
    async fn paused_deployment_does_not_roll_out() {
        let mut d = deployment(3, IntOrString::Int(1), IntOrString::Int(0));
        d.metadata.annotations = Some([(REVISION.to_string(), "1".to_string())].into());
        if let Some(spec) = d.spec.as_mut() {
            spec.paused = Some(true);
            spec.template = template("web:2");
        }
        let old = with_scale_annotations(replicaset(&d, "web-1", "web:1", 3, 3, 1), 3, 4);
        let recorder = Recorder::default();
        reconcile(Arc::new(d), context(vec![old], &recorder))
            .await
            .expect("reconcile");
        // No ReplicaSet created or scaled, only the status.
        assert_eq!(recorder.calls(), ["update-status Deployment default/web"]);
    }
}
