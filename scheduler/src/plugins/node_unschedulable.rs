//! NodeUnschedulable: cordoned nodes (`spec.unschedulable`) take no pods, unless the pod
//! tolerates the `node.kubernetes.io/unschedulable:NoSchedule` taint.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Taint;

use crate::framework::{Code, CycleState, FilterPlugin, Plugin, Status};
use crate::node_info::{tolerates, NodeInfo, PodInfo};

pub const NAME: &str = "NodeUnschedulable";
pub const REASON: &str = "node(s) were unschedulable";
pub const TAINT_KEY: &str = "node.kubernetes.io/unschedulable";

pub struct NodeUnschedulable;

pub fn new() -> Arc<dyn Plugin> {
    Arc::new(NodeUnschedulable)
}

impl Plugin for NodeUnschedulable {
    fn name(&self) -> &'static str {
        NAME
    }
    fn as_filter(&self) -> Option<&dyn FilterPlugin> {
        Some(self)
    }
}

impl FilterPlugin for NodeUnschedulable {
    fn filter(&self, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Status {
        let cordoned = node
            .node()
            .spec
            .as_ref()
            .and_then(|s| s.unschedulable)
            .unwrap_or(false);
        if !cordoned {
            return Status::success();
        }
        let taint = Taint {
            key: TAINT_KEY.to_string(),
            effect: "NoSchedule".to_string(),
            value: None,
            time_added: None,
        };
        if pod.tolerations.iter().any(|t| tolerates(t, &taint)) {
            return Status::success();
        }
        Status::new(Code::UnschedulableAndUnresolvable, REASON)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{node, pod};

    #[test]
    fn filter() {
        let tolerating = pod("p").spec_json(serde_json::json!({"tolerations": [
            {"key": TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}]}));
        let cases = [
            ("schedulable node", pod("p"), node("n"), Code::Success),
            (
                "cordoned",
                pod("p"),
                node("n").unschedulable(),
                Code::UnschedulableAndUnresolvable,
            ),
            (
                "cordoned but tolerated",
                tolerating,
                node("n").unschedulable(),
                Code::Success,
            ),
        ];
        for (name, p, n, want) in cases {
            let got = NodeUnschedulable.filter(&CycleState::new(), &p.info(), &n.info());
            assert_eq!(got.code, want, "{name}");
        }
    }
}
