//! What controllers need to know about pods: active, ready, available, and which pods
//! are the least useful (deleted first when scaling down).

use std::cmp::Ordering;

use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use k8s_openapi::chrono::{DateTime, Utc};
pub use rkube_client::time::now;

/// Not terminated (Succeeded/Failed) and not being deleted: counts towards replicas.
pub fn is_active(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    pod.metadata.deletion_timestamp.is_none() && !matches!(phase, Some("Succeeded" | "Failed"))
}

/// When the pod's Ready condition last became True, if it is True now.
pub fn ready_since(pod: &Pod) -> Option<Option<DateTime<Utc>>> {
    let condition = pod
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")?;
    (condition.status == "True").then(|| condition.last_transition_time.as_ref().map(|t| t.0))
}

/// The Ready condition is True.
pub fn is_ready(pod: &Pod) -> bool {
    ready_since(pod).is_some()
}

/// Ready for at least `min_ready_seconds` at `now` (Kubernetes' `IsPodAvailable`).
pub fn is_available(pod: &Pod, min_ready_seconds: i32, now: DateTime<Utc>) -> bool {
    match ready_since(pod) {
        None => false,
        Some(_) if min_ready_seconds <= 0 => true,
        Some(None) => false,
        Some(Some(since)) => {
            since + k8s_openapi::chrono::Duration::seconds(i64::from(min_ready_seconds)) <= now
        }
    }
}

/// Seconds until a ready pod becomes available, when it is not yet.
pub fn seconds_until_available(
    pod: &Pod,
    min_ready_seconds: i32,
    now: DateTime<Utc>,
) -> Option<i64> {
    let since = ready_since(pod)??;
    let at = since + k8s_openapi::chrono::Duration::seconds(i64::from(min_ready_seconds));
    (at > now).then(|| (at - now).num_seconds() + 1)
}

fn phase_rank(pod: &Pod) -> u8 {
    match pod.status.as_ref().and_then(|s| s.phase.as_deref()) {
        Some("Pending") | None => 0,
        Some("Running") => 2,
        _ => 1,
    }
}

fn restarts(pod: &Pod) -> i32 {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .map(|cs| cs.iter().map(|c| c.restart_count).max().unwrap_or(0))
        .unwrap_or(0)
}

fn created(pod: &Pod) -> Option<DateTime<Utc>> {
    pod.metadata.creation_timestamp.as_ref().map(|t: &Time| t.0)
}

/// Orders pods so that the least useful come first (Kubernetes' `ActivePods`): not yet
/// scheduled, then Pending before Unknown before Running, not ready before ready, ready
/// for less time before longer, more container restarts before fewer, newer before
/// older. Deleting from the front keeps the healthiest, longest-serving pods.
pub fn deletion_order(a: &Pod, b: &Pod) -> Ordering {
    let assigned = |p: &Pod| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some();
    assigned(a)
        .cmp(&assigned(b))
        .then_with(|| phase_rank(a).cmp(&phase_rank(b)))
        .then_with(|| is_ready(a).cmp(&is_ready(b)))
        .then_with(
            || match (ready_since(a).flatten(), ready_since(b).flatten()) {
                // Ready more recently = ready for less time = goes first.
                (Some(x), Some(y)) => y.cmp(&x),
                _ => Ordering::Equal,
            },
        )
        .then_with(|| restarts(b).cmp(&restarts(a)))
        .then_with(|| created(b).cmp(&created(a)))
}

/// The controller ownerReference of an object, if any.
pub fn controller_of(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references
        .as_ref()?
        .iter()
        .find(|o| o.controller == Some(true))
}

/// A controller ownerReference pointing at `owner`.
pub fn controller_ref(api_version: &str, kind: &str, owner: &ObjectMeta) -> OwnerReference {
    OwnerReference {
        api_version: api_version.to_string(),
        kind: kind.to_string(),
        name: owner.name.clone().unwrap_or_default(),
        uid: owner.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// A new pod from `template`, owned by `owner`, named `<prefix><random>` by the apiserver.
pub fn from_template(
    template: &PodTemplateSpec,
    namespace: &str,
    generate_name: &str,
    owner: OwnerReference,
) -> Pod {
    let meta = template.metadata.clone().unwrap_or_default();
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(generate_name.to_string()),
            namespace: Some(namespace.to_string()),
            labels: meta.labels,
            annotations: meta.annotations,
            finalizers: meta.finalizers,
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        spec: template.spec.clone(),
        status: None,
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! Pod fixtures: `PodFixture::new("a").on_node("n1").ready_at(t)`.
    use k8s_openapi::api::core::v1::{PodCondition, PodSpec, PodStatus};

    use super::*;

    pub fn pod(name: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                namespace: Some("default".to_string()),
                creation_timestamp: Some(Time(DateTime::<Utc>::UNIX_EPOCH)),
                ..Default::default()
            },
            spec: Some(PodSpec::default()),
            status: Some(PodStatus {
                phase: Some("Pending".into()),
                ..Default::default()
            }),
        }
    }

    pub fn on_node(mut pod: Pod, node: &str) -> Pod {
        if let Some(spec) = pod.spec.as_mut() {
            spec.node_name = Some(node.into());
        }
        pod
    }

    pub fn running_ready(mut pod: Pod, since_secs: i64) -> Pod {
        let status = pod.status.get_or_insert_with(Default::default);
        status.phase = Some("Running".into());
        status.conditions = Some(vec![PodCondition {
            type_: "Ready".into(),
            status: "True".into(),
            last_transition_time: Some(Time(
                DateTime::<Utc>::UNIX_EPOCH + k8s_openapi::chrono::Duration::seconds(since_secs),
            )),
            ..Default::default()
        }]);
        pod
    }

    pub fn created_at(mut pod: Pod, secs: i64) -> Pod {
        pod.metadata.creation_timestamp = Some(Time(
            DateTime::<Utc>::UNIX_EPOCH + k8s_openapi::chrono::Duration::seconds(secs),
        ));
        pod
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;

    #[test]
    fn least_useful_pods_sort_first() {
        let unscheduled = pod("unscheduled");
        let pending = on_node(pod("pending"), "n1");
        let old_ready = running_ready(on_node(pod("old-ready"), "n1"), 10);
        let new_ready = running_ready(on_node(pod("new-ready"), "n1"), 100);
        let mut running_not_ready = on_node(pod("running"), "n1");
        running_not_ready
            .status
            .get_or_insert_with(Default::default)
            .phase = Some("Running".into());
        let mut pods = [
            old_ready,
            new_ready,
            running_not_ready,
            pending,
            unscheduled,
        ];
        pods.sort_by(deletion_order);
        let names: Vec<_> = pods
            .iter()
            .filter_map(|p| p.metadata.name.clone())
            .collect();
        assert_eq!(
            names,
            [
                "unscheduled",
                "pending",
                "running",
                "new-ready",
                "old-ready"
            ]
        );
    }

    #[test]
    fn newer_pods_go_first_when_otherwise_equal() {
        let mut pods = [created_at(pod("old"), 1), created_at(pod("new"), 2)];
        pods.sort_by(deletion_order);
        assert_eq!(pods[0].metadata.name.as_deref(), Some("new"));
    }

    #[test]
    fn availability_waits_for_min_ready_seconds() {
        let p = running_ready(pod("p"), 100);
        let at = |s: i64| DateTime::<Utc>::UNIX_EPOCH + k8s_openapi::chrono::Duration::seconds(s);
        assert!(is_available(&p, 0, at(100)));
        assert!(!is_available(&p, 10, at(105)));
        assert!(is_available(&p, 10, at(110)));
        assert_eq!(seconds_until_available(&p, 10, at(105)), Some(6));
        assert!(!is_available(&pod("pending"), 0, at(0)));
    }
}
