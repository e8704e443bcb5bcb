//! `rkube net check`: for every ordered pair of lab nodes, walks the overlay path one hop
//! at a time and names the first broken one:
//!
//! 1. `annotations`: the peer's Node has a podCIDR and its agent published its VTEP MAC
//!    and underlay address;
//! 2. `fdb`: the node's VXLAN device sends the peer's VTEP MAC to the peer's underlay
//!    address;
//! 3. `neighbour`: the peer's bridge address resolves to its VTEP MAC (permanent);
//! 4. `route`: the peer's podCIDR goes via its bridge address over the VXLAN device;
//! 5. `underlay`: the peer's underlay address answers a ping;
//! 6. `vxlan`: the peer's bridge address answers a ping from ours across the overlay
//!    (fails when UDP 8472 is blocked or the peer's VTEP is down);
//! 7. `mtu`: the same ping at the overlay MTU with "don't fragment" set.
//!
//! The kernel is read and probed through a [`Probe`]; [`IpProbe`] runs `ip`, `bridge`
//! and `ping` inside each node's network namespace (`ip -n`, `ip netns exec`).

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::process::Command;

/// The node agents' VXLAN device and bridge (see the node agent's `network` module).
pub const VXLAN_DEVICE: &str = "rkube.1";
pub const BRIDGE: &str = "rkube0";
const VTEP_MAC_ANNOTATION: &str = "rkube.io/vtep-mac";
const UNDERLAY_IP_ANNOTATION: &str = "rkube.io/underlay-ip";

/// A lab node as the check sees it: its namespace and what its Node object says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    pub name: String,
    /// Its network namespace name (`/run/netns/<netns>`).
    pub netns: String,
    /// `spec.podCIDR` as (network, prefix length).
    pub pod_cidr: Option<(Ipv4Addr, u8)>,
    /// The published VTEP MAC, lower case.
    pub vtep_mac: Option<String>,
    /// The published underlay address.
    pub underlay_ip: Option<Ipv4Addr>,
}

impl NodeView {
    /// The node's bridge address: the first address of its podCIDR.
    pub fn gateway(&self) -> Option<Ipv4Addr> {
        self.pod_cidr
            .map(|(network, _)| Ipv4Addr::from(u32::from(network) + 1))
    }
}

/// The views of `nodes` (name → netns) from a `NodeList` as the apiserver returns it.
pub fn views_from_node_list(
    nodes: &BTreeMap<String, String>,
    node_list: &serde_json::Value,
) -> Vec<NodeView> {
    let items = node_list["items"].as_array().cloned().unwrap_or_default();
    nodes
        .iter()
        .map(|(name, netns)| {
            let item = items
                .iter()
                .find(|item| item["metadata"]["name"].as_str() == Some(name.as_str()));
            let annotation = |key: &str| {
                item.and_then(|i| i["metadata"]["annotations"][key].as_str())
                    .map(str::to_string)
            };
            NodeView {
                name: name.clone(),
                netns: netns.clone(),
                pod_cidr: item
                    .and_then(|i| i["spec"]["podCIDR"].as_str())
                    .and_then(parse_cidr),
                vtep_mac: annotation(VTEP_MAC_ANNOTATION).map(|m| m.to_lowercase()),
                underlay_ip: annotation(UNDERLAY_IP_ANNOTATION).and_then(|ip| ip.parse().ok()),
            }
        })
        .collect()
}

fn parse_cidr(text: &str) -> Option<(Ipv4Addr, u8)> {
    let (ip, prefix) = text.split_once('/')?;
    Some((ip.parse().ok()?, prefix.parse().ok().filter(|p| *p <= 32)?))
}

/// The hop of the overlay path a check looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Hop {
    Annotations,
    Fdb,
    Neighbour,
    Route,
    Underlay,
    Vxlan,
    Mtu,
}

impl fmt::Display for Hop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Hop::Annotations => "annotations",
            Hop::Fdb => "fdb",
            Hop::Neighbour => "neighbour",
            Hop::Route => "route",
            Hop::Underlay => "underlay",
            Hop::Vxlan => "vxlan",
            Hop::Mtu => "mtu",
        })
    }
}

/// The outcome for one ordered pair of nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairResult {
    pub from: String,
    pub to: String,
    /// The first broken hop and what is wrong with it; `None` when the path works.
    pub broken: Option<(Hop, String)>,
}

/// What the check reads from, and probes in, a node's namespace.
pub trait Probe {
    /// FDB entries of the VXLAN device: MAC (lower case) → remote address.
    fn fdb(&self, netns: &str) -> Result<BTreeMap<String, Ipv4Addr>, String>;
    /// Neighbour entries of the VXLAN device: address → MAC (lower case).
    fn neighbours(&self, netns: &str) -> Result<BTreeMap<Ipv4Addr, String>, String>;
    /// Routes over the VXLAN device: destination (`a.b.c.d/n`) → gateway.
    fn routes(&self, netns: &str) -> Result<BTreeMap<String, Option<Ipv4Addr>>, String>;
    /// The VXLAN device's MTU.
    fn overlay_mtu(&self, netns: &str) -> Result<u32, String>;
    /// Whether `target` answers one ping from `source` (if given) of `size` payload
    /// bytes, with "don't fragment" set when `dont_fragment`.
    fn ping(
        &self,
        netns: &str,
        target: Ipv4Addr,
        source: Option<Ipv4Addr>,
        size: Option<u32>,
        dont_fragment: bool,
    ) -> bool;
}

/// Checks every ordered pair of `nodes`.
pub fn check(nodes: &[NodeView], probe: &dyn Probe) -> Vec<PairResult> {
    let mut results = Vec::new();
    for from in nodes {
        for to in nodes {
            if from.name != to.name {
                results.push(PairResult {
                    from: from.name.clone(),
                    to: to.name.clone(),
                    broken: check_pair(from, to, probe).err(),
                });
            }
        }
    }
    results
}

fn check_pair(from: &NodeView, to: &NodeView, probe: &dyn Probe) -> Result<(), (Hop, String)> {
    let (Some((network, prefix)), Some(mac), Some(underlay), Some(peer_gw)) =
        (to.pod_cidr, &to.vtep_mac, to.underlay_ip, to.gateway())
    else {
        return Err((
            Hop::Annotations,
            format!(
                "node {} lacks a podCIDR or its {VTEP_MAC_ANNOTATION} / {UNDERLAY_IP_ANNOTATION} annotations (is its agent running with the pod network?)",
                to.name
            ),
        ));
    };
    let Some(own_gw) = from.gateway() else {
        return Err((
            Hop::Annotations,
            format!("node {} has no podCIDR", from.name),
        ));
    };
    let fdb = probe.fdb(&from.netns).map_err(|e| (Hop::Fdb, e))?;
    match fdb.get(mac) {
        Some(dst) if *dst == underlay => {}
        Some(dst) => {
            return Err((
                Hop::Fdb,
                format!("FDB sends {mac} to {dst}, not to {underlay}"),
            ))
        }
        None => {
            return Err((
                Hop::Fdb,
                format!("no FDB entry for {mac} on {VXLAN_DEVICE}"),
            ))
        }
    }
    let neighbours = probe
        .neighbours(&from.netns)
        .map_err(|e| (Hop::Neighbour, e))?;
    match neighbours.get(&peer_gw) {
        Some(found) if found == mac => {}
        Some(found) => {
            return Err((
                Hop::Neighbour,
                format!("{peer_gw} resolves to {found}, not {mac}"),
            ))
        }
        None => {
            return Err((
                Hop::Neighbour,
                format!("no neighbour entry for {peer_gw} on {VXLAN_DEVICE}"),
            ))
        }
    }
    let routes = probe.routes(&from.netns).map_err(|e| (Hop::Route, e))?;
    let destination = format!("{network}/{prefix}");
    if routes.get(&destination) != Some(&Some(peer_gw)) {
        return Err((
            Hop::Route,
            format!("no route {destination} via {peer_gw} dev {VXLAN_DEVICE}"),
        ));
    }
    if !probe.ping(&from.netns, underlay, None, None, false) {
        return Err((
            Hop::Underlay,
            format!("{underlay} does not answer on the underlay"),
        ));
    }
    if !probe.ping(&from.netns, peer_gw, Some(own_gw), None, false) {
        return Err((
            Hop::Vxlan,
            format!("{peer_gw} does not answer across the overlay from {own_gw} (UDP 8472 blocked, or the peer's {VXLAN_DEVICE} is down?)"),
        ));
    }
    let mtu = probe.overlay_mtu(&from.netns).map_err(|e| (Hop::Mtu, e))?;
    // ICMP echo payload = MTU − 20 (IPv4 header) − 8 (ICMP header).
    let size = mtu.saturating_sub(28);
    if !probe.ping(&from.netns, peer_gw, Some(own_gw), Some(size), true) {
        return Err((
            Hop::Mtu,
            format!("a {mtu}-byte packet with DF set does not cross the overlay (underlay MTU below {mtu} + 50?)"),
        ));
    }
    Ok(())
}

/// The real probe: `ip -j`, `bridge -j` and `ping` in the node's namespace.
#[derive(Debug, Clone, Copy, Default)]
pub struct IpProbe;

fn json(program: &str, args: &[&str]) -> Result<serde_json::Value, String> {
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("run {program}: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    if output.stdout.iter().all(u8::is_ascii_whitespace) {
        return Ok(serde_json::Value::Array(Vec::new()));
    }
    serde_json::from_slice(&output.stdout).map_err(|e| format!("{program} output: {e}"))
}

fn entries(value: &serde_json::Value) -> Vec<serde_json::Value> {
    value.as_array().cloned().unwrap_or_default()
}

impl Probe for IpProbe {
    fn fdb(&self, netns: &str) -> Result<BTreeMap<String, Ipv4Addr>, String> {
        let value = json(
            "bridge",
            &["-n", netns, "-j", "fdb", "show", "dev", VXLAN_DEVICE],
        )?;
        Ok(entries(&value)
            .iter()
            .filter_map(|e| {
                let mac = e["mac"].as_str()?.to_lowercase();
                let dst = e["dst"].as_str()?.parse().ok()?;
                Some((mac, dst))
            })
            .collect())
    }

    fn neighbours(&self, netns: &str) -> Result<BTreeMap<Ipv4Addr, String>, String> {
        let value = json(
            "ip",
            &[
                "-n",
                netns,
                "-j",
                "-4",
                "neigh",
                "show",
                "dev",
                VXLAN_DEVICE,
            ],
        )?;
        Ok(entries(&value)
            .iter()
            .filter_map(|e| {
                let ip = e["dst"].as_str()?.parse().ok()?;
                let mac = e["lladdr"].as_str()?.to_lowercase();
                Some((ip, mac))
            })
            .collect())
    }

    fn routes(&self, netns: &str) -> Result<BTreeMap<String, Option<Ipv4Addr>>, String> {
        let value = json(
            "ip",
            &[
                "-n",
                netns,
                "-j",
                "-4",
                "route",
                "show",
                "dev",
                VXLAN_DEVICE,
            ],
        )?;
        Ok(entries(&value)
            .iter()
            .filter_map(|e| {
                let dst = e["dst"].as_str()?.to_string();
                let gateway = e["gateway"].as_str().and_then(|g| g.parse().ok());
                Some((dst, gateway))
            })
            .collect())
    }

    fn overlay_mtu(&self, netns: &str) -> Result<u32, String> {
        let value = json("ip", &["-n", netns, "-j", "link", "show", VXLAN_DEVICE])?;
        entries(&value)
            .first()
            .and_then(|e| e["mtu"].as_u64())
            .and_then(|mtu| u32::try_from(mtu).ok())
            .ok_or_else(|| format!("no {VXLAN_DEVICE} in {netns}"))
    }

    fn ping(
        &self,
        netns: &str,
        target: Ipv4Addr,
        source: Option<Ipv4Addr>,
        size: Option<u32>,
        dont_fragment: bool,
    ) -> bool {
        let mut args = vec![
            "netns".to_string(),
            "exec".to_string(),
            netns.to_string(),
            "ping".to_string(),
            "-n".to_string(),
            "-q".to_string(),
            "-c".to_string(),
            "1".to_string(),
            "-W".to_string(),
            "2".to_string(),
        ];
        if let Some(source) = source {
            args.extend(["-I".to_string(), source.to_string()]);
        }
        if let Some(size) = size {
            args.extend(["-s".to_string(), size.to_string()]);
        }
        if dont_fragment {
            args.extend(["-M".to_string(), "do".to_string()]);
        }
        args.push(target.to_string());
        Command::new("ip")
            .args(&args)
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    }
}

/// The whole check of a lab with the real probe: `nodes` maps each lab node's name to
/// its namespace (from the lab record), `node_list` is `GET /api/v1/nodes`. Print the
/// result with [`render`]; any `broken` pair should make `rkube net check` fail.
pub fn check_lab(
    nodes: &BTreeMap<String, String>,
    node_list: &serde_json::Value,
) -> Vec<PairResult> {
    check(&views_from_node_list(nodes, node_list), &IpProbe)
}

/// The report's lines: one per pair, `ok` or the broken hop and why.
pub fn render(results: &[PairResult]) -> String {
    let mut text = String::new();
    for result in results {
        match &result.broken {
            None => text.push_str(&format!("{} -> {}: ok\n", result.from, result.to)),
            Some((hop, why)) => text.push_str(&format!(
                "{} -> {}: BROKEN at {hop}: {why}\n",
                result.from, result.to
            )),
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    #[derive(Default)]
    struct FakeProbe {
        fdb: BTreeMap<String, BTreeMap<String, Ipv4Addr>>,
        neighbours: BTreeMap<String, BTreeMap<Ipv4Addr, String>>,
        routes: BTreeMap<String, BTreeMap<String, Option<Ipv4Addr>>>,
        /// (netns, target, dont_fragment) that do not answer.
        silent: Vec<(String, Ipv4Addr, bool)>,
        pings: RefCell<Vec<String>>,
    }

    impl Probe for FakeProbe {
        fn fdb(&self, netns: &str) -> Result<BTreeMap<String, Ipv4Addr>, String> {
            Ok(self.fdb.get(netns).cloned().unwrap_or_default())
        }
        fn neighbours(&self, netns: &str) -> Result<BTreeMap<Ipv4Addr, String>, String> {
            Ok(self.neighbours.get(netns).cloned().unwrap_or_default())
        }
        fn routes(&self, netns: &str) -> Result<BTreeMap<String, Option<Ipv4Addr>>, String> {
            Ok(self.routes.get(netns).cloned().unwrap_or_default())
        }
        fn overlay_mtu(&self, _: &str) -> Result<u32, String> {
            Ok(1450)
        }
        fn ping(
            &self,
            netns: &str,
            target: Ipv4Addr,
            source: Option<Ipv4Addr>,
            size: Option<u32>,
            dont_fragment: bool,
        ) -> bool {
            self.pings.borrow_mut().push(format!(
                "{netns} {target} {source:?} {size:?} {dont_fragment}"
            ));
            !self
                .silent
                .iter()
                .any(|(n, t, df)| n == netns && *t == target && *df == dont_fragment)
        }
    }

    fn view(n: u8) -> NodeView {
        NodeView {
            name: format!("node-{n}"),
            netns: format!("ns{n}"),
            pod_cidr: Some((Ipv4Addr::new(10, 244, n, 0), 24)),
            vtep_mac: Some(format!("02:00:00:00:00:0{n}")),
            underlay_ip: Some(Ipv4Addr::new(192, 168, 0, n)),
        }
    }

    /// A probe where every node has correct entries for the others.
    fn healthy(nodes: &[NodeView]) -> FakeProbe {
        let mut probe = FakeProbe::default();
        for from in nodes {
            for to in nodes.iter().filter(|t| t.name != from.name) {
                let mac = to.vtep_mac.clone().expect("mac");
                let gw = to.gateway().expect("gw");
                let (net, prefix) = to.pod_cidr.expect("cidr");
                probe
                    .fdb
                    .entry(from.netns.clone())
                    .or_default()
                    .insert(mac.clone(), to.underlay_ip.expect("ip"));
                probe
                    .neighbours
                    .entry(from.netns.clone())
                    .or_default()
                    .insert(gw, mac);
                probe
                    .routes
                    .entry(from.netns.clone())
                    .or_default()
                    .insert(format!("{net}/{prefix}"), Some(gw));
            }
        }
        probe
    }

    fn broken_hop(results: &[PairResult], from: &str, to: &str) -> Option<Hop> {
        results
            .iter()
            .find(|r| r.from == from && r.to == to)
            .and_then(|r| r.broken.as_ref().map(|(hop, _)| *hop))
    }

    #[test]
    fn a_healthy_lab_is_ok_and_probes_at_the_overlay_mtu() {
        let nodes = [view(1), view(2), view(3)];
        let probe = healthy(&nodes);
        let results = check(&nodes, &probe);
        assert_eq!(results.len(), 6);
        assert!(results.iter().all(|r| r.broken.is_none()), "{results:?}");
        assert!(probe
            .pings
            .borrow()
            .contains(&"ns1 10.244.2.1 Some(10.244.1.1) Some(1422) true".to_string()));
        assert!(render(&results).contains("node-1 -> node-2: ok\n"));
    }

    #[test]
    fn names_the_first_broken_hop() {
        let nodes = [view(1), view(2)];
        let mut probe = healthy(&nodes);
        probe
            .fdb
            .get_mut("ns1")
            .expect("ns1")
            .insert("02:00:00:00:00:02".into(), Ipv4Addr::new(192, 168, 9, 9));
        let results = check(&nodes, &probe);
        assert_eq!(broken_hop(&results, "node-1", "node-2"), Some(Hop::Fdb));
        assert_eq!(broken_hop(&results, "node-2", "node-1"), None);

        let mut probe = healthy(&nodes);
        probe.neighbours.get_mut("ns2").expect("ns2").clear();
        assert_eq!(
            broken_hop(&check(&nodes, &probe), "node-2", "node-1"),
            Some(Hop::Neighbour)
        );

        let mut probe = healthy(&nodes);
        probe.routes.get_mut("ns2").expect("ns2").clear();
        assert_eq!(
            broken_hop(&check(&nodes, &probe), "node-2", "node-1"),
            Some(Hop::Route)
        );

        let mut probe = healthy(&nodes);
        probe
            .silent
            .push(("ns1".into(), Ipv4Addr::new(192, 168, 0, 2), false));
        assert_eq!(
            broken_hop(&check(&nodes, &probe), "node-1", "node-2"),
            Some(Hop::Underlay)
        );

        let mut probe = healthy(&nodes);
        probe
            .silent
            .push(("ns1".into(), Ipv4Addr::new(10, 244, 2, 1), false));
        assert_eq!(
            broken_hop(&check(&nodes, &probe), "node-1", "node-2"),
            Some(Hop::Vxlan)
        );

        let mut probe = healthy(&nodes);
        probe
            .silent
            .push(("ns1".into(), Ipv4Addr::new(10, 244, 2, 1), true));
        let results = check(&nodes, &probe);
        assert_eq!(broken_hop(&results, "node-1", "node-2"), Some(Hop::Mtu));
        assert!(render(&results).contains("node-1 -> node-2: BROKEN at mtu"));
    }

    #[test]
    fn a_node_without_annotations_is_named() {
        let mut b = view(2);
        b.vtep_mac = None;
        let nodes = [view(1), b];
        let results = check(&nodes, &healthy(&[view(1), view(2)]));
        assert_eq!(
            broken_hop(&results, "node-1", "node-2"),
            Some(Hop::Annotations)
        );
    }

    #[test]
    fn views_come_from_a_node_list() {
        let list = serde_json::json!({"items": [{
            "metadata": {"name": "node-1", "annotations": {
                "rkube.io/vtep-mac": "02:AA:00:00:00:01", "rkube.io/underlay-ip": "192.168.0.1"}},
            "spec": {"podCIDR": "10.244.1.0/24"}
        }]});
        let names = BTreeMap::from([
            ("node-1".to_string(), "ns1".to_string()),
            ("node-2".to_string(), "ns2".to_string()),
        ]);
        let views = views_from_node_list(&names, &list);
        assert_eq!(views[0].vtep_mac.as_deref(), Some("02:aa:00:00:00:01"));
        assert_eq!(views[0].gateway(), Some(Ipv4Addr::new(10, 244, 1, 1)));
        assert_eq!(views[1].pod_cidr, None);
    }
}
