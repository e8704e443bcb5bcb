//! The in-tree plugins, one module each, and [`in_tree_registry`] / [`default_plugins`]
//! (the default profile: every plugin, with Kubernetes' score weights).

use crate::framework::{Registry, Result};
use crate::queue::ClusterEvent;

pub mod balanced_allocation;
pub mod inter_pod_affinity;
pub mod node_affinity;
pub mod node_name;
pub mod node_ports;
pub mod node_resources_fit;
pub mod node_unschedulable;
pub mod pod_topology_spread;
pub mod taint_toleration;

/// Every in-tree plugin by name.
///
/// # Errors
/// Never in practice: the names are distinct (the registry checks).
pub fn in_tree_registry() -> Result<Registry> {
    let mut r = Registry::new();
    r.register(node_name::NAME, node_name::new)?;
    r.register(node_unschedulable::NAME, node_unschedulable::new)?;
    r.register(node_resources_fit::NAME, node_resources_fit::new)?;
    r.register(node_ports::NAME, node_ports::new)?;
    r.register(node_affinity::NAME, node_affinity::new)?;
    r.register(taint_toleration::NAME, taint_toleration::new)?;
    r.register(inter_pod_affinity::NAME, inter_pod_affinity::new)?;
    r.register(pod_topology_spread::NAME, pod_topology_spread::new)?;
    r.register(balanced_allocation::NAME, balanced_allocation::new)?;
    Ok(r)
}

/// The default profile's plugins in the order they run, with Kubernetes' default score
/// weights (TaintToleration 3; NodeAffinity, InterPodAffinity, PodTopologySpread 2;
/// NodeResourcesFit, BalancedAllocation 1; filter-only plugins carry weight 1, unused).
pub fn default_plugins() -> Vec<(&'static str, i64)> {
    vec![
        (node_unschedulable::NAME, 1),
        (node_name::NAME, 1),
        (taint_toleration::NAME, 3),
        (node_affinity::NAME, 2),
        (node_ports::NAME, 1),
        (node_resources_fit::NAME, 1),
        (pod_topology_spread::NAME, 2),
        (inter_pod_affinity::NAME, 2),
        (balanced_allocation::NAME, 1),
    ]
}

/// Whether `event` may make a pod that `plugin` rejected schedulable. Unknown plugins
/// are interested in everything.
pub fn interested(plugin: &str, event: ClusterEvent) -> bool {
    use ClusterEvent::*;
    let events: &[ClusterEvent] = match plugin {
        node_name::NAME => &[NodeAdded],
        node_unschedulable::NAME | node_affinity::NAME | taint_toleration::NAME => {
            &[NodeAdded, NodeChanged]
        }
        node_ports::NAME => &[NodeAdded, AssignedPodDeleted],
        node_resources_fit::NAME => &[NodeAdded, NodeChanged, AssignedPodDeleted],
        inter_pod_affinity::NAME | pod_topology_spread::NAME => {
            &[NodeAdded, NodeChanged, AssignedPodAdded, AssignedPodDeleted]
        }
        _ => return true,
    };
    events.contains(&event)
}
