//! NodePorts: a pod's host ports must be free on the node (same protocol and port,
//! overlapping host IP, is a conflict).

use std::sync::Arc;

use crate::framework::{Code, CycleState, FilterPlugin, Plugin, Status};
use crate::node_info::{NodeInfo, PodInfo};

pub const NAME: &str = "NodePorts";
pub const REASON: &str = "node(s) didn't have free ports for the requested pod ports";

pub struct NodePorts;

pub fn new() -> Arc<dyn Plugin> {
    Arc::new(NodePorts)
}

impl Plugin for NodePorts {
    fn name(&self) -> &'static str {
        NAME
    }
    fn as_filter(&self) -> Option<&dyn FilterPlugin> {
        Some(self)
    }
}

impl FilterPlugin for NodePorts {
    fn filter(&self, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Status {
        let conflict = pod
            .host_ports
            .iter()
            .any(|want| node.used_ports.iter().any(|used| used.conflicts(want)));
        if conflict {
            Status::new(Code::Unschedulable, REASON)
        } else {
            Status::success()
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
            (
                "no ports",
                pod("p"),
                vec![pod("a").host_port(80)],
                Code::Success,
            ),
            (
                "free port",
                pod("p").host_port(8080),
                vec![pod("a").host_port(80)],
                Code::Success,
            ),
            (
                "taken port",
                pod("p").host_port(80),
                vec![pod("a").host_port(80)],
                Code::Unschedulable,
            ),
        ];
        for (name, p, existing, want) in cases {
            let got = NodePorts.filter(&CycleState::new(), &p.info(), &node("n").with(existing));
            assert_eq!(got.code, want, "{name}");
        }
    }
}
