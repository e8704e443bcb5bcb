//! NodeName: a pod that names a node (`spec.nodeName`) fits only that node.

use std::sync::Arc;

use crate::framework::{Code, CycleState, FilterPlugin, Plugin, Status};
use crate::node_info::{NodeInfo, PodInfo};

pub const NAME: &str = "NodeName";
pub const REASON: &str = "node(s) didn't match the requested node name";

pub struct NodeName;

pub fn new() -> Arc<dyn Plugin> {
    Arc::new(NodeName)
}

impl Plugin for NodeName {
    fn name(&self) -> &'static str {
        NAME
    }
    fn as_filter(&self) -> Option<&dyn FilterPlugin> {
        Some(self)
    }
}

impl FilterPlugin for NodeName {
    fn filter(&self, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Status {
        match pod.pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) {
            Some(wanted) if !wanted.is_empty() && wanted != node.name() => {
                Status::new(Code::UnschedulableAndUnresolvable, REASON)
            }
            _ => Status::success(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{node, pod};

    #[test]
    fn filter() {
        let cases = [
            ("no node name", pod("p"), Code::Success),
            ("same node", pod("p").node_name("n1"), Code::Success),
            (
                "other node",
                pod("p").node_name("n2"),
                Code::UnschedulableAndUnresolvable,
            ),
        ];
        for (name, p, want) in cases {
            let got = NodeName.filter(&CycleState::new(), &p.info(), &node("n1").info());
            assert_eq!(got.code, want, "{name}");
        }
    }
}
