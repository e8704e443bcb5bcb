//! NodeAffinity: `nodeSelector` and required node affinity filter nodes (In, NotIn,
//! Exists, DoesNotExist, Gt, Lt; `matchFields` on `metadata.name`); preferred terms
//! score a node with the sum of the weights of the terms it matches.

use std::sync::Arc;

use crate::framework::{
    default_normalize, Code, CycleState, FilterPlugin, Plugin, ScorePlugin, Status,
};
use crate::node_info::{NodeInfo, PodInfo};

pub const NAME: &str = "NodeAffinity";
pub const REASON: &str = "node(s) didn't match Pod's node affinity/selector";

pub struct NodeAffinity;

pub fn new() -> Arc<dyn Plugin> {
    Arc::new(NodeAffinity)
}

impl Plugin for NodeAffinity {
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

impl FilterPlugin for NodeAffinity {
    fn filter(&self, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Status {
        if pod.node_affinity.matches(node) {
            Status::success()
        } else {
            Status::new(Code::UnschedulableAndUnresolvable, REASON)
        }
    }
}

impl ScorePlugin for NodeAffinity {
    fn score(&self, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Result<i64, Status> {
        Ok(pod
            .preferred_node_affinity
            .iter()
            .filter(|(_, term)| term.matches(node))
            .map(|(weight, _)| weight)
            .sum())
    }

    fn normalize_score(&self, _: &CycleState, _: &PodInfo, scores: &mut [i64]) -> Status {
        default_normalize(scores, false);
        Status::success()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{node, pod, PodBuilder};
    use serde_json::json;

    fn required(exprs: serde_json::Value) -> PodBuilder {
        pod("p").spec_json(json!({"affinity": {"nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": exprs}}}}))
    }

    #[test]
    fn filter() {
        let n = || node("n1").label("disk", "ssd").label("cores", "8");
        let cases = [
            ("nothing required", pod("p"), Code::Success),
            (
                "node selector matches",
                pod("p").node_selector("disk", "ssd"),
                Code::Success,
            ),
            (
                "node selector misses",
                pod("p").node_selector("disk", "hdd"),
                Code::UnschedulableAndUnresolvable,
            ),
            (
                "In",
                required(
                    json!([{"matchExpressions": [{"key": "disk", "operator": "In", "values": ["ssd", "nvme"]}]}]),
                ),
                Code::Success,
            ),
            (
                "NotIn",
                required(
                    json!([{"matchExpressions": [{"key": "disk", "operator": "NotIn", "values": ["ssd"]}]}]),
                ),
                Code::UnschedulableAndUnresolvable,
            ),
            (
                "Exists",
                required(json!([{"matchExpressions": [{"key": "disk", "operator": "Exists"}]}])),
                Code::Success,
            ),
            (
                "DoesNotExist",
                required(
                    json!([{"matchExpressions": [{"key": "gpu", "operator": "DoesNotExist"}]}]),
                ),
                Code::Success,
            ),
            (
                "Gt",
                required(
                    json!([{"matchExpressions": [{"key": "cores", "operator": "Gt", "values": ["4"]}]}]),
                ),
                Code::Success,
            ),
            (
                "Lt",
                required(
                    json!([{"matchExpressions": [{"key": "cores", "operator": "Lt", "values": ["4"]}]}]),
                ),
                Code::UnschedulableAndUnresolvable,
            ),
            (
                "terms are ORed",
                required(json!([
                    {"matchExpressions": [{"key": "disk", "operator": "In", "values": ["hdd"]}]},
                    {"matchExpressions": [{"key": "disk", "operator": "In", "values": ["ssd"]}]}])),
                Code::Success,
            ),
            (
                "expressions are ANDed",
                required(json!([{"matchExpressions": [
                    {"key": "disk", "operator": "In", "values": ["ssd"]},
                    {"key": "gpu", "operator": "Exists"}]}])),
                Code::UnschedulableAndUnresolvable,
            ),
            (
                "matchFields on the name",
                required(
                    json!([{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}]}]),
                ),
                Code::Success,
            ),
            (
                "empty term matches nothing",
                required(json!([{}])),
                Code::UnschedulableAndUnresolvable,
            ),
            (
                "selector and affinity both apply",
                required(json!([{"matchExpressions": [{"key": "disk", "operator": "Exists"}]}]))
                    .node_selector("zone", "a"),
                Code::UnschedulableAndUnresolvable,
            ),
        ];
        for (name, p, want) in cases {
            let got = NodeAffinity.filter(&CycleState::new(), &p.info(), &n().info());
            assert_eq!(got.code, want, "{name}");
            if want != Code::Success {
                assert_eq!(got.reasons, vec![REASON.to_string()], "{name}");
            }
        }
    }

    #[test]
    fn score_sums_matching_preferences() {
        let p = pod("p")
            .spec_json(json!({"affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 5, "preference": {"matchExpressions": [{"key": "disk", "operator": "In", "values": ["ssd"]}]}},
                {"weight": 2, "preference": {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}}]}}}))
            .info();
        let nodes = [
            node("a").label("disk", "ssd").label("zone", "a").info(),
            node("b").label("disk", "ssd").info(),
            node("c").info(),
        ];
        let mut scores: Vec<i64> = nodes
            .iter()
            .map(|n| {
                NodeAffinity
                    .score(&CycleState::new(), &p, n)
                    .expect("score")
            })
            .collect();
        assert_eq!(scores, vec![7, 5, 0]);
        NodeAffinity.normalize_score(&CycleState::new(), &p, &mut scores);
        assert_eq!(scores, vec![100, 71, 0]);
    }
}
