//! The DaemonSet controller: one pod per eligible node (nodeSelector, required node
//! affinity, taints and tolerations), created already bound to its node, pods on
//! nodes that are no longer eligible deleted, RollingUpdate with maxUnavailable, and
//! status. Start at [`reconcile`].

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetStatus};
use k8s_openapi::api::core::v1::{Node, NodeSelectorRequirement, Pod, Toleration};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use rkube_client::controller::Action;
use rkube_client::{api, DeleteParams, ObjectRef, Store};
use tracing::info;

use crate::cluster::Writer;
use crate::deployment::pod_template_hash;
use crate::events::{EventRecorder, EventType};
use crate::pod;
use crate::replicaset::Expectations;

/// The label carrying the hash of the template a daemon pod was made from.
pub const REVISION_HASH: &str = "controller-revision-hash";

/// What a DaemonSet reconcile can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to create pod on node {0}")]
    CreatePod(String, #[source] api::Error),
    #[error("failed to delete pod {0}")]
    DeletePod(String, #[source] api::Error),
    #[error("failed to update status")]
    UpdateStatus(#[source] api::Error),
    #[error("invalid maxUnavailable {0:?}")]
    InvalidMaxUnavailable(String),
}

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What the DaemonSet controller reads and writes.
pub struct Context {
    pub nodes: Store<Node>,
    pub pods: Store<Pod>,
    pub pod_writer: Arc<dyn Writer<Pod>>,
    pub ds_writer: Arc<dyn Writer<DaemonSet>>,
    pub expectations: Expectations,
    pub events: EventRecorder,
}

fn requirement_matches(req: &NodeSelectorRequirement, labels: &BTreeMap<String, String>) -> bool {
    let value = labels.get(&req.key);
    let values = req.values.clone().unwrap_or_default();
    match req.operator.as_str() {
        "In" => value.is_some_and(|v| values.contains(v)),
        "NotIn" => value.is_none_or(|v| !values.contains(v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => {
            let (Some(v), Some(bound)) = (
                value.and_then(|v| v.parse::<i64>().ok()),
                values.first().and_then(|b| b.parse::<i64>().ok()),
            ) else {
                return false;
            };
            if req.operator == "Gt" {
                v > bound
            } else {
                v < bound
            }
        }
        _ => false,
    }
}

fn tolerates(tolerations: &[Toleration], key: &str, value: Option<&str>, effect: &str) -> bool {
    tolerations.iter().any(|t| {
        let effect_ok = t
            .effect
            .as_deref()
            .is_none_or(|e| e.is_empty() || e == effect);
        let key_ok = t.key.as_deref().is_none_or(|k| k.is_empty())
            && t.operator.as_deref() == Some("Exists")
            || t.key.as_deref() == Some(key)
                && match t.operator.as_deref() {
                    Some("Exists") => true,
                    _ => t.value.as_deref().unwrap_or("") == value.unwrap_or(""),
                };
        effect_ok && key_ok
    })
}

/// Tolerations every daemon pod gets, as Kubernetes adds them: daemons keep running on
/// nodes that are not ready, unreachable, under pressure or unschedulable.
fn daemon_tolerations() -> Vec<Toleration> {
    let exists = |key: &str, effect: &str| Toleration {
        key: Some(key.into()),
        operator: Some("Exists".into()),
        effect: Some(effect.into()),
        ..Default::default()
    };
    vec![
        exists("node.kubernetes.io/not-ready", "NoExecute"),
        exists("node.kubernetes.io/unreachable", "NoExecute"),
        exists("node.kubernetes.io/disk-pressure", "NoSchedule"),
        exists("node.kubernetes.io/memory-pressure", "NoSchedule"),
        exists("node.kubernetes.io/pid-pressure", "NoSchedule"),
        exists("node.kubernetes.io/unschedulable", "NoSchedule"),
    ]
}

/// Whether a pod of `ds` should run on `node`.
pub fn should_run(ds: &DaemonSet, node: &Node) -> bool {
    if node.metadata.deletion_timestamp.is_some() {
        return false;
    }
    let labels = node.metadata.labels.clone().unwrap_or_default();
    let spec = ds
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .cloned()
        .unwrap_or_default();
    if let Some(selector) = &spec.node_selector {
        if !selector.iter().all(|(k, v)| labels.get(k) == Some(v)) {
            return false;
        }
    }
    let required = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
    if let Some(required) = required {
        let name = node.metadata.name.clone().unwrap_or_default();
        let any_term = required.node_selector_terms.iter().any(|term| {
            term.match_expressions
                .iter()
                .flatten()
                .all(|r| requirement_matches(r, &labels))
                && term.match_fields.iter().flatten().all(|r| {
                    let fields = BTreeMap::from([("metadata.name".to_string(), name.clone())]);
                    requirement_matches(r, &fields)
                })
        });
        if !any_term {
            return false;
        }
    }
    let mut tolerations = spec.tolerations.clone().unwrap_or_default();
    tolerations.extend(daemon_tolerations());
    node.spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .into_iter()
        .flatten()
        .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
        .all(|t| tolerates(&tolerations, &t.key, t.value.as_deref(), &t.effect))
}

/// The pod `ds` runs on `node`, bound to it already.
fn daemon_pod(ds: &DaemonSet, node: &str, hash: &str) -> Pod {
    let namespace = ds.metadata.namespace.clone().unwrap_or_default();
    let template = ds
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default();
    let mut p = pod::from_template(
        &template,
        &namespace,
        &format!("{}-", ds.metadata.name.as_deref().unwrap_or("daemon")),
        pod::controller_ref("apps/v1", "DaemonSet", &ds.metadata),
    );
    p.metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(REVISION_HASH.into(), hash.into());
    let spec = p.spec.get_or_insert_with(Default::default);
    spec.node_name = Some(node.to_string());
    let tolerations = spec.tolerations.get_or_insert_with(Vec::new);
    for t in daemon_tolerations() {
        if !tolerations.contains(&t) {
            tolerations.push(t);
        }
    }
    p
}

/// Creates the missing daemon pods, deletes surplus and misplaced ones, replaces
/// outdated ones within maxUnavailable, and writes status.
pub async fn reconcile(ds: Arc<DaemonSet>, ctx: Arc<Context>) -> Result<Action> {
    let key = ObjectRef::from_obj(ds.as_ref());
    let namespace = ds.metadata.namespace.clone().unwrap_or_default();
    let uid = ds.metadata.uid.clone().unwrap_or_default();
    let template = ds
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default();
    let hash = pod_template_hash(&template, None);
    let min_ready = ds
        .spec
        .as_ref()
        .and_then(|s| s.min_ready_seconds)
        .unwrap_or(0);
    let now = pod::now();

    let mut by_node: HashMap<String, Vec<Arc<Pod>>> = HashMap::new();
    for p in ctx.pods.state() {
        if p.metadata.namespace.as_deref() == Some(namespace.as_str())
            && pod::controller_of(&p.metadata).is_some_and(|o| o.uid == uid)
            && pod::is_active(&p)
        {
            let node = p
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .unwrap_or_default();
            by_node.entry(node).or_default().push(p);
        }
    }
    let nodes = ctx.nodes.state();
    let eligible: Vec<String> = nodes
        .iter()
        .filter(|n| should_run(&ds, n))
        .filter_map(|n| n.metadata.name.clone())
        .collect();

    let mut to_create = Vec::new();
    let mut to_delete: Vec<Arc<Pod>> = Vec::new();
    for node in &eligible {
        match by_node.get(node) {
            None => to_create.push(node.clone()),
            Some(pods) if pods.len() > 1 => {
                let mut pods = pods.clone();
                pods.sort_by_key(|p| p.metadata.creation_timestamp.clone());
                to_delete.extend(pods.into_iter().skip(1));
            }
            Some(_) => {}
        }
    }
    let misplaced: Vec<Arc<Pod>> = by_node
        .iter()
        .filter(|(node, _)| !eligible.contains(node))
        .flat_map(|(_, pods)| pods.clone())
        .collect();
    to_delete.extend(misplaced.iter().cloned());

    // Rolling update: replace outdated pods while at most maxUnavailable daemon pods
    // are unavailable. Example: 10 nodes, maxUnavailable 1, all available: one
    // outdated pod is deleted; its node gets the new pod on a later reconcile, and the
    // next old pod goes once that one is available.
    let rolling = ds
        .spec
        .as_ref()
        .and_then(|s| s.update_strategy.as_ref())
        .is_none_or(|s| s.type_.as_deref() != Some("OnDelete"));
    if rolling {
        let max_unavailable = ds
            .spec
            .as_ref()
            .and_then(|s| s.update_strategy.as_ref())
            .and_then(|s| s.rolling_update.as_ref())
            .and_then(|r| r.max_unavailable.clone())
            .unwrap_or(IntOrString::Int(1));
        let desired = eligible.len() as i32;
        let max = match &max_unavailable {
            IntOrString::Int(n) => *n,
            IntOrString::String(s) => {
                let pct: i64 = s
                    .strip_suffix('%')
                    .and_then(|p| p.parse().ok())
                    .ok_or_else(|| Error::InvalidMaxUnavailable(s.clone()))?;
                ((pct * i64::from(desired) + 99) / 100) as i32
            }
        }
        .max(1);
        let mut unavailable = 0;
        let mut outdated_available = Vec::new();
        for node in &eligible {
            match by_node.get(node).and_then(|pods| pods.first()) {
                None => unavailable += 1,
                Some(p) => {
                    let current = p
                        .metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get(REVISION_HASH))
                        == Some(&hash);
                    let available = pod::is_available(p, min_ready, now);
                    if !available {
                        unavailable += 1;
                        if !current {
                            to_delete.push(p.clone());
                        }
                    } else if !current {
                        outdated_available.push(p.clone());
                    }
                }
            }
        }
        let budget = (max - unavailable).max(0) as usize;
        to_delete.extend(outdated_available.into_iter().take(budget));
    }

    if ctx.expectations.satisfied(&key, &ctx.pods) && ds.metadata.deletion_timestamp.is_none() {
        let mut created = Vec::new();
        for node in &to_create {
            match ctx.pod_writer.create(&daemon_pod(&ds, node, &hash)).await {
                Ok(p) => {
                    let name = p.metadata.name.clone().unwrap_or_default();
                    ctx.events.record(
                        &*ds,
                        EventType::Normal,
                        "SuccessfulCreate",
                        format!("Created pod: {name}"),
                    );
                    created.push(name);
                }
                Err(err) => {
                    ctx.expectations.expect(&key, created, Vec::new());
                    return Err(Error::CreatePod(node.clone(), err));
                }
            }
        }
        let mut deleted = Vec::new();
        for p in &to_delete {
            let name = p.metadata.name.clone().unwrap_or_default();
            match ctx
                .pod_writer
                .delete(Some(&namespace), &name, &DeleteParams::default())
                .await
            {
                Ok(_) => {
                    ctx.events.record(
                        &*ds,
                        EventType::Normal,
                        "SuccessfulDelete",
                        format!("Deleted pod: {name}"),
                    );
                    deleted.push(name);
                }
                Err(err) if err.is_not_found() => {}
                Err(err) => return Err(Error::DeletePod(name, err)),
            }
        }
        if !created.is_empty() || !deleted.is_empty() {
            info!(
                created = created.len(),
                deleted = deleted.len(),
                "synced daemon pods"
            );
        }
        ctx.expectations.expect(&key, created, deleted);
    }

    // Status.
    let scheduled: Vec<&Arc<Pod>> = eligible
        .iter()
        .filter_map(|n| by_node.get(n).and_then(|p| p.first()))
        .collect();
    let ready = scheduled.iter().filter(|p| pod::is_ready(p)).count() as i32;
    let available = scheduled
        .iter()
        .filter(|p| pod::is_available(p, min_ready, now))
        .count() as i32;
    let updated = scheduled
        .iter()
        .filter(|p| {
            p.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(REVISION_HASH))
                == Some(&hash)
        })
        .count() as i32;
    let desired = eligible.len() as i32;
    let status = DaemonSetStatus {
        desired_number_scheduled: desired,
        current_number_scheduled: scheduled.len() as i32,
        number_misscheduled: misplaced.len() as i32,
        number_ready: ready,
        number_available: Some(available),
        number_unavailable: Some((desired - available).max(0)),
        updated_number_scheduled: Some(updated),
        observed_generation: ds.metadata.generation,
        collision_count: ds.status.as_ref().and_then(|s| s.collision_count),
        conditions: ds.status.as_ref().and_then(|s| s.conditions.clone()),
    };
    if ds.status.as_ref() != Some(&status) {
        let mut changed = (*ds).clone();
        changed.status = Some(status);
        ctx.ds_writer
            .replace_status(&changed)
            .await
            .map_err(Error::UpdateStatus)?;
    }
    Ok(Action::await_change())
}

/// Failures are retried with back-off.
pub fn error_policy(ds: Arc<DaemonSet>, err: &Error, _ctx: Arc<Context>) -> Action {
    crate::failure::report("daemonset", &ObjectRef::from_obj(ds.as_ref()), err);
    Action::retry()
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::apps::v1::DaemonSetSpec;
    use k8s_openapi::api::core::v1::{NodeSpec, PodSpec, PodTemplateSpec, Taint};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    fn node(name: &str, labels: &[(&str, &str)], taints: Vec<Taint>) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                taints: Some(taints),
                ..Default::default()
            }),
            status: None,
        }
    }

    fn ds(spec: PodSpec) -> DaemonSet {
        DaemonSet {
            spec: Some(DaemonSetSpec {
                template: PodTemplateSpec {
                    metadata: None,
                    spec: Some(spec),
                },
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn taint(key: &str, effect: &str) -> Taint {
        Taint {
            key: key.into(),
            effect: effect.into(),
            ..Default::default()
        }
    }

    #[test]
    fn eligibility_follows_selectors_and_taints() {
        let plain = ds(PodSpec::default());
        let with_selector = ds(PodSpec {
            node_selector: Some([("disk".to_string(), "ssd".to_string())].into()),
            ..Default::default()
        });
        let tolerant = ds(PodSpec {
            tolerations: Some(vec![Toleration {
                key: Some("dedicated".into()),
                operator: Some("Exists".into()),
                ..Default::default()
            }]),
            ..Default::default()
        });
        let ssd = node("a", &[("disk", "ssd")], vec![]);
        let hdd = node("b", &[("disk", "hdd")], vec![]);
        let dedicated = node("c", &[], vec![taint("dedicated", "NoSchedule")]);
        let unreachable = node(
            "d",
            &[],
            vec![taint("node.kubernetes.io/unreachable", "NoExecute")],
        );
        let cases = [
            ("plain on ssd", &plain, &ssd, true),
            ("selector on ssd", &with_selector, &ssd, true),
            ("selector on hdd", &with_selector, &hdd, false),
            ("plain on tainted", &plain, &dedicated, false),
            ("tolerant on tainted", &tolerant, &dedicated, true),
            ("daemons tolerate unreachable", &plain, &unreachable, true),
        ];
        for (name, ds, node, want) in cases {
            assert_eq!(should_run(ds, node), want, "{name}");
        }
    }
}
