//! NodeResourcesBalancedAllocation: prefers nodes whose cpu and memory would be used in
//! similar proportions after placing the pod.

use std::sync::Arc;

use crate::framework::{CycleState, Plugin, ScorePlugin, Status, MAX_NODE_SCORE};
use crate::node_info::{NodeInfo, PodInfo};

pub const NAME: &str = "NodeResourcesBalancedAllocation";

pub struct BalancedAllocation;

pub fn new() -> Arc<dyn Plugin> {
    Arc::new(BalancedAllocation)
}

impl Plugin for BalancedAllocation {
    fn name(&self) -> &'static str {
        NAME
    }
    fn as_score(&self) -> Option<&dyn ScorePlugin> {
        Some(self)
    }
}

fn fraction(requested: i64, allocatable: i64) -> f64 {
    if allocatable <= 0 {
        return 1.0;
    }
    (requested as f64 / allocatable as f64).min(1.0)
}

impl ScorePlugin for BalancedAllocation {
    /// `(1 - std) · 100` over the cpu and memory fractions. With two resources the
    /// standard deviation is half their difference. Worked example: cpu 50 %, memory
    /// 10 % → std = |0.5 - 0.1| / 2 = 0.2 → score 80.
    fn score(&self, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Result<i64, Status> {
        let cpu = fraction(
            node.non_zero_requested.milli_cpu + pod.non_zero_requests.milli_cpu,
            node.allocatable.milli_cpu,
        );
        let memory = fraction(
            node.non_zero_requested.memory + pod.non_zero_requests.memory,
            node.allocatable.memory,
        );
        let std = (cpu - memory).abs() / 2.0;
        Ok(((1.0 - std) * MAX_NODE_SCORE as f64) as i64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{node, pod};

    #[test]
    fn score() {
        let cases = [
            (
                "cpu 50%, memory 10%",
                pod("p").cpu("2").memory("1Gi"),
                node("n").cpu("4").memory("10Gi"),
                80,
            ),
            (
                "balanced",
                pod("p").cpu("2").memory("4Gi"),
                node("n").cpu("4").memory("8Gi"),
                100,
            ),
            (
                "all cpu, no memory",
                pod("p").cpu("4").memory("1"),
                node("n").cpu("4").memory("8Gi"),
                50,
            ),
        ];
        for (name, p, n, want) in cases {
            let got = BalancedAllocation
                .score(&CycleState::new(), &p.info(), &n.info())
                .expect("score");
            assert_eq!(got, want, "{name}");
        }
    }
}
