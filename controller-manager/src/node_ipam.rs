//! Node IPAM: gives every Node a `spec.podCIDR` (a /24 by default) out of the cluster
//! CIDR (10.244.0.0/16 by default), never the same to two nodes. Start at
//! [`reconcile`].
//!
//! The allocator keeps no state of its own beyond writes in flight: the ranges in use
//! are read from the node cache, so a deleted node's range is free again as soon as the
//! cache drops it, and a restart loses nothing.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::Arc;

use ipnetwork::{IpNetwork, Ipv4Network};
use k8s_openapi::api::core::v1::Node;
use parking_lot::Mutex;
use rkube_client::controller::Action;
use rkube_client::{api, ObjectRef, Store};
use tracing::info;

use crate::cluster::Writer;
use crate::events::{EventRecorder, EventType};

/// What allocating a node's range can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("only IPv4 cluster CIDRs are supported, got {0}")]
    NotIpv4(IpNetwork),
    #[error("node mask /{mask} does not fit in cluster CIDR {cidr}")]
    BadMask { cidr: IpNetwork, mask: u8 },
    #[error("no pod CIDR left in {0}")]
    Exhausted(IpNetwork),
    #[error("failed to set the pod CIDR of node {0}")]
    UpdateNode(String, #[source] api::Error),
}

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What the allocator reads and writes.
pub struct Context {
    pub nodes: Store<Node>,
    pub writer: Arc<dyn Writer<Node>>,
    pub cluster_cidr: IpNetwork,
    pub mask: u8,
    pub events: EventRecorder,
    /// Ranges given to nodes whose update the cache has not shown yet, by node name.
    pub in_flight: Mutex<HashMap<String, Ipv4Network>>,
}

/// The `index`-th subnet of size `/mask` in `cluster`, if there is one.
fn subnet(cluster: Ipv4Network, mask: u8, index: u32) -> Option<Ipv4Network> {
    let count = 1u64 << (mask - cluster.prefix());
    if u64::from(index) >= count {
        return None;
    }
    let base = u32::from(cluster.network());
    let size = 1u64 << (32 - mask);
    let start = u64::from(base) + u64::from(index) * size;
    Ipv4Network::new(Ipv4Addr::from(start as u32), mask).ok()
}

/// The first `/mask` range of `cluster` not in `used`.
///
/// Example: cluster 10.244.0.0/16, mask 24, used {10.244.0.0/24} → 10.244.1.0/24.
pub fn allocate(cluster: IpNetwork, mask: u8, used: &HashSet<Ipv4Network>) -> Result<Ipv4Network> {
    let IpNetwork::V4(v4) = cluster else {
        return Err(Error::NotIpv4(cluster));
    };
    if mask < v4.prefix() || mask > 32 {
        return Err(Error::BadMask {
            cidr: cluster,
            mask,
        });
    }
    let mut index = 0;
    while let Some(candidate) = subnet(v4, mask, index) {
        if !used.contains(&candidate) {
            return Ok(candidate);
        }
        index += 1;
    }
    Err(Error::Exhausted(cluster))
}

/// Gives `node` a pod CIDR if it has none.
pub async fn reconcile(node: Arc<Node>, ctx: Arc<Context>) -> Result<Action> {
    let name = node.metadata.name.clone().unwrap_or_default();
    let has_cidr = node
        .spec
        .as_ref()
        .and_then(|s| s.pod_cidr.as_ref())
        .is_some();
    if has_cidr || node.metadata.deletion_timestamp.is_some() {
        ctx.in_flight.lock().remove(&name);
        return Ok(Action::await_change());
    }
    let cidr = {
        let mut in_flight = ctx.in_flight.lock();
        if let Some(cidr) = in_flight.get(&name) {
            *cidr
        } else {
            // Forget writes for nodes that are gone or whose write the cache now shows.
            in_flight.retain(|n, _| {
                ctx.nodes.get(&ObjectRef::new(n)).is_some_and(|node| {
                    node.spec
                        .as_ref()
                        .and_then(|s| s.pod_cidr.as_ref())
                        .is_none()
                })
            });
            let mut used: HashSet<Ipv4Network> = ctx
                .nodes
                .state()
                .iter()
                .filter_map(|n| n.spec.as_ref()?.pod_cidr.as_ref()?.parse().ok())
                .collect();
            used.extend(in_flight.values().copied());
            let cidr = allocate(ctx.cluster_cidr, ctx.mask, &used)?;
            in_flight.insert(name.clone(), cidr);
            cidr
        }
    };
    let mut updated = (*node).clone();
    let spec = updated.spec.get_or_insert_with(Default::default);
    spec.pod_cidr = Some(cidr.to_string());
    spec.pod_cidrs = Some(vec![cidr.to_string()]);
    match ctx.writer.replace(&updated).await {
        Ok(_) => {
            info!(node = %name, %cidr, "allocated pod CIDR");
            ctx.events.record(
                &*node,
                EventType::Normal,
                "CIDRAssignmentSucceeded",
                format!("Assigned pod CIDR {cidr}"),
            );
            Ok(Action::await_change())
        }
        Err(err) => {
            ctx.in_flight.lock().remove(&name);
            Err(Error::UpdateNode(name, err))
        }
    }
}

/// Exhaustion is reported and retried with back-off (a deleted node frees a range).
pub fn error_policy(node: Arc<Node>, err: &Error, ctx: Arc<Context>) -> Action {
    let name = node.metadata.name.as_deref().unwrap_or_default();
    crate::failure::report("node-ipam", &name, err);
    if matches!(err, Error::Exhausted(_)) {
        ctx.events.record(
            &*node,
            EventType::Warning,
            "CIDRNotAvailable",
            err.to_string(),
        );
    }
    Action::retry()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Network {
        s.parse().expect("valid CIDR")
    }

    #[test]
    fn allocates_the_first_free_range() {
        let cluster: IpNetwork = "10.244.0.0/16".parse().expect("valid");
        let mut used = HashSet::new();
        assert_eq!(
            allocate(cluster, 24, &used).expect("free"),
            net("10.244.0.0/24")
        );
        used.insert(net("10.244.0.0/24"));
        used.insert(net("10.244.2.0/24"));
        assert_eq!(
            allocate(cluster, 24, &used).expect("free"),
            net("10.244.1.0/24")
        );
        used.insert(net("10.244.1.0/24"));
        assert_eq!(
            allocate(cluster, 24, &used).expect("free"),
            net("10.244.3.0/24")
        );
        // Released: the range is free again.
        used.remove(&net("10.244.0.0/24"));
        assert_eq!(
            allocate(cluster, 24, &used).expect("free"),
            net("10.244.0.0/24")
        );
    }

    #[test]
    fn exhaustion_and_bad_masks_are_errors() {
        let cluster: IpNetwork = "10.0.0.0/30".parse().expect("valid");
        let used: HashSet<_> = [net("10.0.0.0/31"), net("10.0.0.2/31")].into();
        assert!(matches!(
            allocate(cluster, 31, &used),
            Err(Error::Exhausted(_))
        ));
        assert!(matches!(
            allocate(cluster, 29, &HashSet::new()),
            Err(Error::BadMask { .. })
        ));
        let v6: IpNetwork = "fd00::/64".parse().expect("valid");
        assert!(matches!(
            allocate(v6, 80, &HashSet::new()),
            Err(Error::NotIpv4(_))
        ));
    }
}
