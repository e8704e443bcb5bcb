//! Node lifecycle: a node whose Lease (in `kube-node-lease`) is not renewed within the
//! grace period becomes Ready=Unknown and gets the `node.kubernetes.io/unreachable`
//! NoExecute taint; its pods are evicted once their toleration of that taint expires
//! (the eviction timeout for pods without one) so their controllers replace them. A
//! node whose lease is renewed again loses the taint. Start at [`reconcile`].

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, NodeCondition, Pod, Taint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::chrono::{DateTime, Utc};
use rkube_client::controller::Action;
use rkube_client::{api, DeleteParams, ObjectRef, Store};
use tracing::{info, warn};

use crate::cluster::Writer;
use crate::events::{EventRecorder, EventType};
use crate::pod::now;

/// The taint of a node that stopped reporting.
pub const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
/// Where node agents keep their heartbeat Leases.
pub const LEASE_NAMESPACE: &str = "kube-node-lease";

/// What a node lifecycle reconcile can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to update node {0}")]
    UpdateNode(String, #[source] api::Error),
    #[error("failed to update the status of node {0}")]
    UpdateNodeStatus(String, #[source] api::Error),
    #[error("failed to evict pod {0}")]
    Evict(String, #[source] api::Error),
}

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What the node lifecycle controller reads and writes.
pub struct Context {
    pub leases: Store<Lease>,
    pub pods: Store<Pod>,
    pub node_writer: Arc<dyn Writer<Node>>,
    pub pod_writer: Arc<dyn Writer<Pod>>,
    pub events: EventRecorder,
    pub grace: Duration,
    pub eviction_timeout: Duration,
}

/// When the node last showed it was alive: its lease renewal, its Ready heartbeat, or
/// (never heard of) its creation.
fn last_seen(node: &Node, lease: Option<&Lease>) -> Option<DateTime<Utc>> {
    let renewed = lease
        .and_then(|l| l.spec.as_ref()?.renew_time.as_ref())
        .map(|t| t.0);
    let heartbeat = ready_condition(node)
        .and_then(|c| c.last_heartbeat_time.as_ref())
        .map(|t| t.0);
    let created = node.metadata.creation_timestamp.as_ref().map(|t| t.0);
    renewed.max(heartbeat).or(created)
}

fn ready_condition(node: &Node) -> Option<&NodeCondition> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
}

fn unreachable_taint(node: &Node) -> Option<&Taint> {
    node.spec
        .as_ref()?
        .taints
        .as_ref()?
        .iter()
        .find(|t| t.key == UNREACHABLE && t.effect == "NoExecute")
}

/// How long `pod` stays on an unreachable node: its own toleration's seconds, forever
/// if it tolerates the taint without a limit, else `default`.
pub fn toleration_seconds(pod: &Pod, default: Duration) -> Option<Duration> {
    let tolerations = pod.spec.as_ref().and_then(|s| s.tolerations.as_ref());
    let matching = tolerations.into_iter().flatten().find(|t| {
        let key_matches = match t.operator.as_deref() {
            Some("Exists") => t
                .key
                .as_deref()
                .is_none_or(|k| k.is_empty() || k == UNREACHABLE),
            _ => t.key.as_deref() == Some(UNREACHABLE),
        };
        key_matches
            && t.effect
                .as_deref()
                .is_none_or(|e| e.is_empty() || e == "NoExecute")
    });
    match matching {
        None => Some(default),
        Some(t) => t
            .toleration_seconds
            .map(|s| Duration::from_secs(s.max(0) as u64)),
    }
}

/// Marks an unresponsive node unreachable and evicts its pods when their time is up;
/// clears the taint of a node that came back. Reconciled every second (resync) and
/// when its Lease changes.
pub async fn reconcile(node: Arc<Node>, ctx: Arc<Context>) -> Result<Action> {
    let name = node.metadata.name.clone().unwrap_or_default();
    let lease = ctx
        .leases
        .get(&ObjectRef::new(&name).within(LEASE_NAMESPACE));
    let now = now();
    let grace = k8s_openapi::chrono::Duration::from_std(ctx.grace).unwrap_or_default();
    let alive = last_seen(&node, lease.as_deref()).is_some_and(|seen| seen + grace > now);

    if alive {
        if unreachable_taint(&node).is_some() {
            let mut updated = (*node).clone();
            if let Some(taints) = updated.spec.as_mut().and_then(|s| s.taints.as_mut()) {
                taints.retain(|t| t.key != UNREACHABLE);
            }
            ctx.node_writer
                .replace(&updated)
                .await
                .map_err(|e| Error::UpdateNode(name.clone(), e))?;
            info!(node = %name, "node is reachable again, removed taint");
            ctx.events.record(
                &*node,
                EventType::Normal,
                "NodeReady",
                format!("Node {name} status is now: NodeReady"),
            );
        }
        return Ok(Action::await_change());
    }

    // Unreachable: condition first, then taint, then evictions.
    if ready_condition(&node).is_none_or(|c| c.status != "Unknown") {
        let mut updated = (*node).clone();
        let status = updated.status.get_or_insert_with(Default::default);
        let conditions = status.conditions.get_or_insert_with(Vec::new);
        let heartbeat = conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .and_then(|c| c.last_heartbeat_time.clone());
        conditions.retain(|c| c.type_ != "Ready");
        conditions.push(NodeCondition {
            type_: "Ready".into(),
            status: "Unknown".into(),
            reason: Some("NodeStatusUnknown".into()),
            message: Some("Kubelet stopped posting node status.".into()),
            last_heartbeat_time: heartbeat,
            last_transition_time: Some(Time(now)),
        });
        ctx.node_writer
            .replace_status(&updated)
            .await
            .map_err(|e| Error::UpdateNodeStatus(name.clone(), e))?;
        warn!(node = %name, "node stopped renewing its lease, marked unknown");
        ctx.events.record(
            &*node,
            EventType::Normal,
            "NodeNotReady",
            format!("Node {name} status is now: NodeNotReady"),
        );
        return Ok(Action::requeue(Duration::from_millis(200)));
    }
    let Some(taint) = unreachable_taint(&node) else {
        let mut updated = (*node).clone();
        updated
            .spec
            .get_or_insert_with(Default::default)
            .taints
            .get_or_insert_with(Vec::new)
            .push(Taint {
                key: UNREACHABLE.into(),
                effect: "NoExecute".into(),
                time_added: Some(Time(now)),
                value: None,
            });
        ctx.node_writer
            .replace(&updated)
            .await
            .map_err(|e| Error::UpdateNode(name.clone(), e))?;
        info!(node = %name, "tainted unreachable node");
        return Ok(Action::requeue(Duration::from_millis(200)));
    };
    let tainted_at = taint.time_added.as_ref().map_or(now, |t| t.0);

    let mut next: Option<Duration> = None;
    for pod in ctx.pods.state() {
        if pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) != Some(name.as_str())
            || pod.metadata.deletion_timestamp.is_some()
        {
            continue;
        }
        let Some(tolerated) = toleration_seconds(&pod, ctx.eviction_timeout) else {
            continue;
        };
        let evict_at =
            tainted_at + k8s_openapi::chrono::Duration::from_std(tolerated).unwrap_or_default();
        if evict_at > now {
            let wait = (evict_at - now).to_std().unwrap_or_default();
            next = Some(next.map_or(wait, |n| n.min(wait)));
            continue;
        }
        let pod_name = pod.metadata.name.clone().unwrap_or_default();
        // The node cannot confirm the pod stopped, and will not: remove it at once so
        // that its controller replaces it (the node agent kills leftovers if it returns).
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        };
        match ctx
            .pod_writer
            .delete(pod.metadata.namespace.as_deref(), &pod_name, &params)
            .await
        {
            Ok(_) => {}
            Err(err) if err.is_not_found() => {}
            Err(err) => return Err(Error::Evict(pod_name, err)),
        }
        info!(node = %name, pod = %pod_name, "evicted pod from unreachable node");
        ctx.events.record(
            &*pod,
            EventType::Normal,
            "TaintManagerEviction",
            format!("Marking for deletion Pod {pod_name}"),
        );
    }
    Ok(Action::requeue(
        next.unwrap_or(Duration::from_secs(1))
            .max(Duration::from_millis(100)),
    ))
}

/// Failures are retried with back-off.
pub fn error_policy(node: Arc<Node>, err: &Error, _ctx: Arc<Context>) -> Action {
    let name = node.metadata.name.as_deref().unwrap_or_default();
    crate::failure::report("node-lifecycle", &name, err);
    Action::retry()
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::Toleration;

    use super::*;
    use crate::pod::testing::pod;

    #[test]
    fn toleration_decides_how_long_a_pod_stays() {
        let default = Duration::from_secs(5);
        let plain = pod("plain");
        assert_eq!(toleration_seconds(&plain, default), Some(default));
        let mut limited = pod("limited");
        limited
            .spec
            .get_or_insert_with(Default::default)
            .tolerations = Some(vec![Toleration {
            key: Some(UNREACHABLE.into()),
            operator: Some("Exists".into()),
            effect: Some("NoExecute".into()),
            toleration_seconds: Some(30),
            ..Default::default()
        }]);
        assert_eq!(
            toleration_seconds(&limited, default),
            Some(Duration::from_secs(30))
        );
        let mut forever = pod("forever");
        forever
            .spec
            .get_or_insert_with(Default::default)
            .tolerations = Some(vec![Toleration {
            operator: Some("Exists".into()),
            ..Default::default()
        }]);
        assert_eq!(toleration_seconds(&forever, default), None);
    }
}
