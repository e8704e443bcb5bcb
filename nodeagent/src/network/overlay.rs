//! The overlay's peer state, flannel's VXLAN scheme: for every other node, a route to
//! its podCIDR via its bridge address over the VXLAN device (onlink), a permanent
//! neighbour entry mapping that bridge address to the node's VTEP MAC, and an FDB entry
//! sending frames for that MAC to the node's underlay address.
//!
//! [`plan`] is pure: it diffs the peers wanted against what the kernel holds on the
//! VXLAN device ([`Present`], listed by [`super::link`]) and returns the changes, so a
//! restarted agent or a stale entry is fixed by listing and diffing, never by blind
//! re-adds. [`peers_from_nodes`] derives the peers from Node objects.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use k8s_openapi::api::core::v1::Node;

use super::ipam::gateway;

/// Node annotation with the node's VTEP MAC (`aa:bb:cc:dd:ee:ff`).
pub const VTEP_MAC_ANNOTATION: &str = "rkube.io/vtep-mac";
/// Node annotation with the node's underlay address (the VXLAN source address).
pub const UNDERLAY_IP_ANNOTATION: &str = "rkube.io/underlay-ip";

/// A MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mac(pub [u8; 6]);

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl std::str::FromStr for Mac {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = text.split(':').collect();
        if parts.len() != 6 {
            return Err(format!("{text:?} is not a MAC address"));
        }
        let mut mac = [0u8; 6];
        for (byte, part) in mac.iter_mut().zip(parts) {
            *byte = u8::from_str_radix(part, 16)
                .map_err(|_| format!("{text:?} is not a MAC address"))?;
        }
        Ok(Mac(mac))
    }
}

impl Mac {
    /// The MAC of a 6-byte link-layer address, `None` for any other length.
    pub fn from_bytes(bytes: &[u8]) -> Option<Mac> {
        <[u8; 6]>::try_from(bytes).ok().map(Mac)
    }
}

/// Another node of the overlay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub node: String,
    pub pod_cidr: Ipv4Network,
    pub vtep_mac: Mac,
    pub underlay_ip: Ipv4Addr,
}

impl Peer {
    /// The peer's bridge address (the first address of its podCIDR), the next hop of
    /// the route to its pods.
    pub fn gateway(&self) -> Ipv4Addr {
        gateway(self.pod_cidr)
    }
}

/// A route on the VXLAN device: destination → next hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Route {
    pub destination: Ipv4Network,
    pub gateway: Option<Ipv4Addr>,
}

/// What the kernel holds on the VXLAN device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Present {
    /// IPv4 routes whose output device is the VXLAN device.
    pub routes: BTreeSet<Route>,
    /// Permanent IPv4 neighbour entries: address → MAC.
    pub neighbours: BTreeMap<Ipv4Addr, Mac>,
    /// FDB entries with a remote: MAC → underlay address.
    pub fdb: BTreeMap<Mac, Ipv4Addr>,
}

/// One change to the kernel's state.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Change {
    DeleteRoute(Route),
    DeleteNeighbour {
        ip: Ipv4Addr,
        mac: Mac,
    },
    DeleteFdb {
        mac: Mac,
        dst: Ipv4Addr,
    },
    /// Add, or replace the remote of, an FDB entry.
    SetFdb {
        mac: Mac,
        dst: Ipv4Addr,
    },
    /// Add, or replace the MAC of, a permanent neighbour entry.
    SetNeighbour {
        ip: Ipv4Addr,
        mac: Mac,
    },
    /// Add, or replace, the route to a peer's pods.
    SetRoute(Route),
}

/// The changes that turn `present` into the state `peers` want, deletions first (so a
/// replaced entry never briefly points two ways), then FDB, neighbour and route
/// entries, in the order a packet needs them.
pub fn plan(peers: &[Peer], present: &Present) -> Vec<Change> {
    let routes: BTreeSet<Route> = peers
        .iter()
        .map(|peer| Route {
            destination: peer.pod_cidr,
            gateway: Some(peer.gateway()),
        })
        .collect();
    let neighbours: BTreeMap<Ipv4Addr, Mac> = peers
        .iter()
        .map(|peer| (peer.gateway(), peer.vtep_mac))
        .collect();
    let fdb: BTreeMap<Mac, Ipv4Addr> = peers
        .iter()
        .map(|peer| (peer.vtep_mac, peer.underlay_ip))
        .collect();

    let mut changes = Vec::new();
    for route in &present.routes {
        if !routes.contains(route) {
            changes.push(Change::DeleteRoute(*route));
        }
    }
    for (ip, mac) in &present.neighbours {
        if !neighbours.contains_key(ip) {
            changes.push(Change::DeleteNeighbour { ip: *ip, mac: *mac });
        }
    }
    for (mac, dst) in &present.fdb {
        if !fdb.contains_key(mac) {
            changes.push(Change::DeleteFdb {
                mac: *mac,
                dst: *dst,
            });
        }
    }
    for (mac, dst) in &fdb {
        if present.fdb.get(mac) != Some(dst) {
            changes.push(Change::SetFdb {
                mac: *mac,
                dst: *dst,
            });
        }
    }
    for (ip, mac) in &neighbours {
        if present.neighbours.get(ip) != Some(mac) {
            changes.push(Change::SetNeighbour { ip: *ip, mac: *mac });
        }
    }
    for route in &routes {
        if !present.routes.contains(route) {
            changes.push(Change::SetRoute(*route));
        }
    }
    changes
}

/// The peers among `nodes`: every node but `local` with a podCIDR and both overlay
/// annotations (nodes still starting up, or with unreadable values, are skipped).
pub fn peers_from_nodes<'a>(nodes: impl IntoIterator<Item = &'a Node>, local: &str) -> Vec<Peer> {
    let mut peers: Vec<Peer> = nodes
        .into_iter()
        .filter_map(|node| {
            let name = node.metadata.name.as_deref()?;
            if name == local {
                return None;
            }
            let pod_cidr = node.spec.as_ref()?.pod_cidr.as_deref()?.parse().ok()?;
            let annotations = node.metadata.annotations.as_ref()?;
            let vtep_mac = annotations.get(VTEP_MAC_ANNOTATION)?.parse().ok()?;
            let underlay_ip = annotations.get(UNDERLAY_IP_ANNOTATION)?.parse().ok()?;
            Some(Peer {
                node: name.to_string(),
                pod_cidr,
                vtep_mac,
                underlay_ip,
            })
        })
        .collect();
    peers.sort_by(|a, b| a.node.cmp(&b.node));
    peers
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::NodeSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn peer(n: u8) -> Peer {
        Peer {
            node: format!("n{n}"),
            pod_cidr: format!("10.244.{n}.0/24").parse().expect("cidr"),
            vtep_mac: Mac([2, 0, 0, 0, 0, n]),
            underlay_ip: Ipv4Addr::new(192, 168, 0, n),
        }
    }

    fn present_for(peers: &[Peer]) -> Present {
        let mut present = Present::default();
        for change in plan(peers, &Present::default()) {
            match change {
                Change::SetRoute(route) => {
                    present.routes.insert(route);
                }
                Change::SetNeighbour { ip, mac } => {
                    present.neighbours.insert(ip, mac);
                }
                Change::SetFdb { mac, dst } => {
                    present.fdb.insert(mac, dst);
                }
                other => panic!("unexpected {other:?} from an empty state"),
            }
        }
        present
    }

    #[test]
    fn from_nothing_adds_fdb_neighbour_and_route_per_peer() {
        let peers = [peer(1), peer(2)];
        let changes = plan(&peers, &Present::default());
        assert_eq!(changes.len(), 6);
        assert!(changes.contains(&Change::SetFdb {
            mac: Mac([2, 0, 0, 0, 0, 1]),
            dst: Ipv4Addr::new(192, 168, 0, 1)
        }));
        assert!(changes.contains(&Change::SetNeighbour {
            ip: Ipv4Addr::new(10, 244, 2, 1),
            mac: Mac([2, 0, 0, 0, 0, 2])
        }));
        assert!(changes.contains(&Change::SetRoute(Route {
            destination: "10.244.2.0/24".parse().expect("cidr"),
            gateway: Some(Ipv4Addr::new(10, 244, 2, 1)),
        })));
        // FDB before neighbour before route.
        let kinds: Vec<u8> = changes
            .iter()
            .map(|c| match c {
                Change::SetFdb { .. } => 0,
                Change::SetNeighbour { .. } => 1,
                Change::SetRoute(_) => 2,
                _ => 9,
            })
            .collect();
        assert!(kinds.windows(2).all(|w| w[0] <= w[1]), "{kinds:?}");
    }

    #[test]
    fn in_sync_means_no_change() {
        let peers = [peer(1), peer(2)];
        assert!(plan(&peers, &present_for(&peers)).is_empty());
    }

    #[test]
    fn a_node_leaving_removes_its_three_entries_first() {
        let before = present_for(&[peer(1), peer(2)]);
        let changes = plan(&[peer(1)], &before);
        assert_eq!(
            changes,
            vec![
                Change::DeleteRoute(Route {
                    destination: "10.244.2.0/24".parse().expect("cidr"),
                    gateway: Some(Ipv4Addr::new(10, 244, 2, 1)),
                }),
                Change::DeleteNeighbour {
                    ip: Ipv4Addr::new(10, 244, 2, 1),
                    mac: Mac([2, 0, 0, 0, 0, 2])
                },
                Change::DeleteFdb {
                    mac: Mac([2, 0, 0, 0, 0, 2]),
                    dst: Ipv4Addr::new(192, 168, 0, 2)
                },
            ]
        );
    }

    #[test]
    fn a_new_underlay_address_or_mac_is_replaced() {
        let before = present_for(&[peer(1)]);
        let mut moved = peer(1);
        moved.underlay_ip = Ipv4Addr::new(192, 168, 9, 9);
        assert_eq!(
            plan(std::slice::from_ref(&moved), &before),
            vec![Change::SetFdb {
                mac: moved.vtep_mac,
                dst: moved.underlay_ip
            }]
        );
        let mut new_mac = peer(1);
        new_mac.vtep_mac = Mac([2, 9, 9, 9, 9, 9]);
        let changes = plan(std::slice::from_ref(&new_mac), &before);
        assert_eq!(
            changes,
            vec![
                Change::DeleteFdb {
                    mac: Mac([2, 0, 0, 0, 0, 1]),
                    dst: Ipv4Addr::new(192, 168, 0, 1)
                },
                Change::SetFdb {
                    mac: new_mac.vtep_mac,
                    dst: new_mac.underlay_ip
                },
                Change::SetNeighbour {
                    ip: Ipv4Addr::new(10, 244, 1, 1),
                    mac: new_mac.vtep_mac
                },
            ]
        );
    }

    #[test]
    fn stale_entries_of_unknown_nodes_are_removed() {
        let mut present = present_for(&[peer(1)]);
        present.routes.insert(Route {
            destination: "10.244.77.0/24".parse().expect("cidr"),
            gateway: Some(Ipv4Addr::new(10, 244, 77, 1)),
        });
        present
            .fdb
            .insert(Mac([2, 7, 7, 7, 7, 7]), Ipv4Addr::new(192, 168, 7, 7));
        let changes = plan(&[peer(1)], &present);
        assert_eq!(changes.len(), 2, "{changes:?}");
        assert!(changes
            .iter()
            .all(|c| matches!(c, Change::DeleteRoute(_) | Change::DeleteFdb { .. })));
    }

    #[test]
    fn peers_need_a_cidr_and_both_annotations_and_exclude_self() {
        let node = |name: &str, cidr: Option<&str>, mac: Option<&str>, ip: Option<&str>| {
            let mut annotations = BTreeMap::new();
            if let Some(mac) = mac {
                annotations.insert(VTEP_MAC_ANNOTATION.to_string(), mac.to_string());
            }
            if let Some(ip) = ip {
                annotations.insert(UNDERLAY_IP_ANNOTATION.to_string(), ip.to_string());
            }
            Node {
                metadata: ObjectMeta {
                    name: Some(name.to_string()),
                    annotations: Some(annotations),
                    ..ObjectMeta::default()
                },
                spec: Some(NodeSpec {
                    pod_cidr: cidr.map(str::to_string),
                    ..NodeSpec::default()
                }),
                status: None,
            }
        };
        let nodes = [
            node(
                "b",
                Some("10.244.2.0/24"),
                Some("02:00:00:00:00:02"),
                Some("192.168.0.2"),
            ),
            node(
                "a",
                Some("10.244.1.0/24"),
                Some("02:00:00:00:00:01"),
                Some("192.168.0.1"),
            ),
            node(
                "self",
                Some("10.244.3.0/24"),
                Some("02:00:00:00:00:03"),
                Some("192.168.0.3"),
            ),
            node(
                "nocidr",
                None,
                Some("02:00:00:00:00:04"),
                Some("192.168.0.4"),
            ),
            node("nomac", Some("10.244.5.0/24"), None, Some("192.168.0.5")),
            node(
                "badip",
                Some("10.244.6.0/24"),
                Some("02:00:00:00:00:06"),
                Some("x"),
            ),
        ];
        let peers = peers_from_nodes(&nodes, "self");
        let names: Vec<&str> = peers.iter().map(|p| p.node.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(peers[0].vtep_mac.to_string(), "02:00:00:00:00:01");
        assert_eq!(peers[0].gateway(), Ipv4Addr::new(10, 244, 1, 1));
    }
}
