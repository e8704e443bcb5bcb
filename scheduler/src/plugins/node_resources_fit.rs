//! NodeResourcesFit: the pod's requests (cpu, memory, ephemeral-storage, extended
//! resources, one pod slot) must fit in what the node has left; scores nodes with the
//! LeastAllocated strategy (emptier nodes score higher).

use std::sync::Arc;

use crate::framework::{
    Code, CycleState, FilterPlugin, Plugin, ScorePlugin, Status, MAX_NODE_SCORE,
};
use crate::node_info::{NodeInfo, PodInfo};

pub const NAME: &str = "NodeResourcesFit";
pub const REASON_TOO_MANY_PODS: &str = "Too many pods";

pub struct NodeResourcesFit;

pub fn new() -> Arc<dyn Plugin> {
    Arc::new(NodeResourcesFit)
}

impl Plugin for NodeResourcesFit {
    fn name(&self) -> &'static str {
        NAME
    }
    fn as_filter(&self) -> Option<&dyn FilterPlugin> {
        Some(self)
    }
    fn as_score(&self) -> Option<&dyn ScorePlugin> {
        Some(self)
    }
}

/// The reasons the pod does not fit (empty when it fits), in Kubernetes' order: pods,
/// cpu, memory, ephemeral-storage, extended resources.
pub fn insufficient(pod: &PodInfo, node: &NodeInfo) -> Vec<String> {
    let mut reasons = Vec::new();
    if node.pods.len() as i64 + 1 > node.allocatable.pods {
        reasons.push(REASON_TOO_MANY_PODS.to_string());
    }
    let req = &pod.requests;
    if req.is_zero() {
        return reasons;
    }
    let (alloc, used) = (&node.allocatable, &node.requested);
    let checks = [
        ("cpu", req.milli_cpu, alloc.milli_cpu, used.milli_cpu),
        ("memory", req.memory, alloc.memory, used.memory),
        (
            "ephemeral-storage",
            req.ephemeral_storage,
            alloc.ephemeral_storage,
            used.ephemeral_storage,
        ),
    ];
    for (name, want, have, taken) in checks {
        if want > 0 && want > have - taken {
            reasons.push(format!("Insufficient {name}"));
        }
    }
    for (name, want) in &req.scalar {
        let have = alloc.scalar.get(name).copied().unwrap_or(0);
        let taken = used.scalar.get(name).copied().unwrap_or(0);
        if *want > 0 && *want > have - taken {
            reasons.push(format!("Insufficient {name}"));
        }
    }
    reasons
}

impl FilterPlugin for NodeResourcesFit {
    fn filter(&self, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Status {
        let reasons = insufficient(pod, node);
        if reasons.is_empty() {
            Status::success()
        } else {
            Status {
                code: Code::Unschedulable,
                reasons,
                plugin: NAME,
            }
        }
    }
}

/// LeastAllocated for one resource: the share left free after placing the pod, 0–100.
/// Worked example: 4000m allocatable, 1000m requested (pod included) → (4000 - 1000) ·
/// 100 / 4000 = 75.
pub fn least_allocated(requested: i64, allocatable: i64) -> i64 {
    if allocatable <= 0 || requested > allocatable {
        return 0;
    }
    (allocatable - requested) * MAX_NODE_SCORE / allocatable
}

impl ScorePlugin for NodeResourcesFit {
    /// cpu and memory, weight 1 each, with the non-zero request defaults.
    fn score(&self, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Result<i64, Status> {
        let cpu = least_allocated(
            node.non_zero_requested.milli_cpu + pod.non_zero_requests.milli_cpu,
            node.allocatable.milli_cpu,
        );
        let memory = least_allocated(
            node.non_zero_requested.memory + pod.non_zero_requests.memory,
            node.allocatable.memory,
        );
        Ok((cpu + memory) / 2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{node, pod};

    #[test]
    fn filter() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let cases = [
            (
                "fits",
                pod("p").cpu("1"),
                node("n").cpu("2"),
                vec![pod("a").cpu("1")],
                s(&[]),
            ),
            (
                "cpu short",
                pod("p").cpu("1500m"),
                node("n").cpu("2"),
                vec![pod("a").cpu("1")],
                s(&["Insufficient cpu"]),
            ),
            (
                "cpu and memory short",
                pod("p").cpu("3").memory("9Gi"),
                node("n").cpu("2"),
                vec![],
                s(&["Insufficient cpu", "Insufficient memory"]),
            ),
            (
                "pod slots",
                pod("p"),
                node("n").max_pods("1"),
                vec![pod("a")],
                s(&[REASON_TOO_MANY_PODS]),
            ),
            (
                "no requests always fit resources",
                pod("p"),
                node("n").cpu("0"),
                vec![],
                s(&[]),
            ),
        ];
        for (name, p, n, existing, want) in cases {
            let got = NodeResourcesFit.filter(&CycleState::new(), &p.info(), &n.with(existing));
            assert_eq!(got.reasons, want, "{name}");
            assert_eq!(got.is_success(), want.is_empty(), "{name}");
        }
    }

    #[test]
    fn init_containers_count_at_their_peak() {
        let p = pod("p").cpu("200m").spec_json(serde_json::json!({"initContainers": [
            {"name": "sidecar", "restartPolicy": "Always", "resources": {"requests": {"cpu": "100m"}}},
            {"name": "init", "resources": {"requests": {"cpu": "700m"}}}]}));
        // steady 200m + 100m = 300m; init phase 100m + 700m = 800m.
        assert_eq!(p.info().requests.milli_cpu, 800);
    }

    #[test]
    fn least_allocated_score() {
        let cases = [
            (
                "empty node, 1 cpu of 4, 1Gi of 8Gi",
                vec![],
                4000,
                (75 + 87) / 2,
            ),
            (
                "half used",
                vec![pod("a").cpu("1").memory("3Gi")],
                4000,
                (50 + 50) / 2,
            ),
        ];
        for (name, existing, _alloc, want) in cases {
            let p = pod("p").cpu("1").memory("1Gi").info();
            let got = NodeResourcesFit
                .score(&CycleState::new(), &p, &node("n").with(existing))
                .expect("score");
            assert_eq!(got, want, "{name}");
        }
    }
}
