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
//!
//! A node publishes its annotations a moment after it turns Ready (its agent waits for
//! the podCIDR first), so the check first waits, up to [`PUBLISH_WAIT`], for every Ready
//! node to publish ([`wait_for_publication`]); `rkube up` waits for the same, and then
//! until every node's VXLAN device has the entries for every other node
//! ([`unprogrammed`]), so a check right after `up` finds nothing half-done.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::future::Future;
use std::net::Ipv4Addr;
use std::process::Command;
use std::time::{Duration, Instant};

/// The node agents' VXLAN device and bridge (see the node agent's `network` module).
pub const VXLAN_DEVICE: &str = "rkube.1";
pub const BRIDGE: &str = "rkube0";
pub const VTEP_MAC_ANNOTATION: &str = "rkube.io/vtep-mac";
pub const UNDERLAY_IP_ANNOTATION: &str = "rkube.io/underlay-ip";
/// What a Node without a `spec.podCIDR` lacks, in [`missing`]'s list.
pub const POD_CIDR: &str = "podCIDR";
/// How long `rkube net check` waits for Ready nodes to publish their annotations.
pub const PUBLISH_WAIT: Duration = Duration::from_secs(20);

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

/// What `view`'s Node still lacks for the overlay: [`POD_CIDR`],
/// [`VTEP_MAC_ANNOTATION`], [`UNDERLAY_IP_ANNOTATION`] (empty when it has all three).
pub fn missing(view: &NodeView) -> Vec<&'static str> {
    let mut missing = Vec::new();
    if view.pod_cidr.is_none() {
        missing.push(POD_CIDR);
    }
    if view.vtep_mac.is_none() {
        missing.push(VTEP_MAC_ANNOTATION);
    }
    if view.underlay_ip.is_none() {
        missing.push(UNDERLAY_IP_ANNOTATION);
    }
    missing
}

/// The names of the Nodes of a `NodeList` whose Ready condition is True.
pub fn ready_nodes(node_list: &serde_json::Value) -> BTreeSet<String> {
    node_list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|node| {
            node["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
        .filter_map(|node| node["metadata"]["name"].as_str().map(str::to_string))
        .collect()
}

/// The Ready nodes among `nodes` (name → netns) that have not published everything
/// yet, with what each lacks.
pub fn unpublished(
    nodes: &BTreeMap<String, String>,
    node_list: &serde_json::Value,
) -> BTreeMap<String, Vec<&'static str>> {
    let ready = ready_nodes(node_list);
    views_from_node_list(nodes, node_list)
        .iter()
        .filter(|view| ready.contains(&view.name))
        .map(|view| (view.name.clone(), missing(view)))
        .filter(|(_, missing)| !missing.is_empty())
        .collect()
}

/// `node-1 (podCIDR, rkube.io/vtep-mac), node-2 (…)`.
pub fn describe_unpublished(unpublished: &BTreeMap<String, Vec<&'static str>>) -> String {
    unpublished
        .iter()
        .map(|(name, missing)| format!("{name} ({})", missing.join(", ")))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Fetches the `NodeList` with `fetch` until every Ready node among `nodes` (name →
/// netns) has its podCIDR and annotations, or `timeout` has passed, polling every
/// `interval`; returns the last list. `report` hears what is awaited whenever that
/// changes, and what is still missing when the time is up (the check then reports those
/// nodes as broken at [`Hop::Annotations`]). Nodes that are not Ready are not awaited.
///
/// # Errors
/// The first error of `fetch`.
pub async fn wait_for_publication<F, Fut, E>(
    nodes: &BTreeMap<String, String>,
    mut fetch: F,
    timeout: Duration,
    interval: Duration,
    report: &mut dyn FnMut(&str),
) -> Result<serde_json::Value, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<serde_json::Value, E>>,
{
    let started = Instant::now();
    let mut reported = BTreeMap::new();
    let mut first = true;
    loop {
        let list = fetch().await?;
        if first {
            let ready = ready_nodes(&list);
            let not_ready: Vec<&str> = nodes
                .keys()
                .filter(|name| !ready.contains(*name))
                .map(String::as_str)
                .collect();
            if !not_ready.is_empty() {
                report(&format!(
                    "not waiting for nodes that are not Ready: {}",
                    not_ready.join(", ")
                ));
            }
            first = false;
        }
        let waiting = unpublished(nodes, &list);
        if waiting.is_empty() {
            return Ok(list);
        }
        if started.elapsed() >= timeout {
            report(&format!(
                "still unpublished after {}s: {}",
                timeout.as_secs(),
                describe_unpublished(&waiting)
            ));
            return Ok(list);
        }
        if waiting != reported {
            report(&format!(
                "waiting up to {}s for Ready nodes to publish: {}",
                timeout.as_secs(),
                describe_unpublished(&waiting)
            ));
            reported = waiting;
        }
        tokio::time::sleep(interval).await;
    }
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

/// The pairs of `nodes` whose path is not set up yet: the first four hops
/// (annotations, FDB, neighbour, route), read without sending a packet. Empty once
/// every node's VXLAN device knows every other node.
pub fn unprogrammed(nodes: &[NodeView], probe: &dyn Probe) -> Vec<PairResult> {
    let mut results = Vec::new();
    for from in nodes {
        for to in nodes {
            if from.name == to.name {
                continue;
            }
            if let Err(broken) = check_entries(from, to, probe) {
                results.push(PairResult {
                    from: from.name.clone(),
                    to: to.name.clone(),
                    broken: Some(broken),
                });
            }
        }
    }
    results
}

/// The peer's overlay addresses once both Nodes have published everything.
struct PeerPath<'a> {
    pod_cidr: (Ipv4Addr, u8),
    mac: &'a str,
    underlay: Ipv4Addr,
    peer_gw: Ipv4Addr,
    own_gw: Ipv4Addr,
}

fn published<'a>(from: &NodeView, to: &'a NodeView) -> Result<PeerPath<'a>, (Hop, String)> {
    let (Some(pod_cidr), Some(mac), Some(underlay), Some(peer_gw)) = (
        to.pod_cidr,
        to.vtep_mac.as_deref(),
        to.underlay_ip,
        to.gateway(),
    ) else {
        return Err((
            Hop::Annotations,
            format!(
                "node {} lacks {} (is its agent running, with the pod network?)",
                to.name,
                missing(to).join(", ")
            ),
        ));
    };
    let Some(own_gw) = from.gateway() else {
        return Err((
            Hop::Annotations,
            format!("node {} has no {POD_CIDR}", from.name),
        ));
    };
    Ok(PeerPath {
        pod_cidr,
        mac,
        underlay,
        peer_gw,
        own_gw,
    })
}

/// The hops up to `route`: what `from`'s kernel must hold to reach `to`.
fn check_entries(from: &NodeView, to: &NodeView, probe: &dyn Probe) -> Result<(), (Hop, String)> {
    let PeerPath {
        pod_cidr: (network, prefix),
        mac,
        underlay,
        peer_gw,
        ..
    } = published(from, to)?;
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
    Ok(())
}

fn check_pair(from: &NodeView, to: &NodeView, probe: &dyn Probe) -> Result<(), (Hop, String)> {
    check_entries(from, to, probe)?;
    let PeerPath {
        underlay,
        peer_gw,
        own_gw,
        ..
    } = published(from, to)?;
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
    fn a_node_without_annotations_is_named_with_what_it_lacks() {
        let mut b = view(2);
        b.vtep_mac = None;
        b.underlay_ip = None;
        let results = check(&[view(1), b], &healthy(&[view(1), view(2)]));
        let (hop, why) = results
            .iter()
            .find(|r| r.to == "node-2")
            .and_then(|r| r.broken.clone())
            .expect("node-1 -> node-2 broken");
        assert_eq!(hop, Hop::Annotations);
        assert!(
            why.contains("node-2 lacks rkube.io/vtep-mac, rkube.io/underlay-ip"),
            "{why}"
        );
    }

    #[test]
    fn unprogrammed_lists_pairs_whose_entries_are_missing_without_pinging() {
        let nodes = [view(1), view(2), view(3)];
        let probe = healthy(&nodes);
        assert_eq!(unprogrammed(&nodes, &probe), []);
        assert!(probe.pings.borrow().is_empty(), "no packets sent");

        let mut probe = healthy(&nodes);
        probe.routes.get_mut("ns3").expect("ns3").clear();
        let pending = unprogrammed(&nodes, &probe);
        assert_eq!(pending.len(), 2, "{pending:?}");
        assert!(pending
            .iter()
            .all(|p| p.from == "node-3" && p.broken.as_ref().map(|b| b.0) == Some(Hop::Route)));
        assert!(probe.pings.borrow().is_empty());
    }

    /// A NodeList of `(name, ready, published)` Nodes (published: podCIDR and both
    /// annotations).
    fn node_list(nodes: &[(&str, bool, bool)]) -> serde_json::Value {
        let items: Vec<serde_json::Value> = nodes
            .iter()
            .enumerate()
            .map(|(i, (name, ready, published))| {
                let mut node = serde_json::json!({
                    "metadata": {"name": name},
                    "spec": {},
                    "status": {"conditions": [
                        {"type": "Ready", "status": if *ready { "True" } else { "False" }}
                    ]},
                });
                if *published {
                    node["spec"]["podCIDR"] = format!("10.244.{i}.0/24").into();
                    node["metadata"]["annotations"] = serde_json::json!({
                        "rkube.io/vtep-mac": format!("02:00:00:00:00:0{i}"),
                        "rkube.io/underlay-ip": format!("192.168.0.{i}"),
                    });
                }
                node
            })
            .collect();
        serde_json::json!({ "items": items })
    }

    fn lab_nodes() -> BTreeMap<String, String> {
        BTreeMap::from([
            ("node-1".to_string(), "ns1".to_string()),
            ("node-2".to_string(), "ns2".to_string()),
        ])
    }

    #[tokio::test]
    async fn waits_until_ready_nodes_publish() {
        // node-2 is Ready at once but publishes only in the third list.
        let lists = [
            node_list(&[("node-1", true, true), ("node-2", true, false)]),
            node_list(&[("node-1", true, true), ("node-2", true, false)]),
            node_list(&[("node-1", true, true), ("node-2", true, true)]),
        ];
        let fetched = RefCell::new(0);
        let mut lines = Vec::new();
        let list = wait_for_publication(
            &lab_nodes(),
            || {
                let n = fetched.replace_with(|n| *n + 1);
                let list = lists[n.min(lists.len() - 1)].clone();
                async move { Ok::<_, String>(list) }
            },
            Duration::from_secs(20),
            Duration::from_millis(1),
            &mut |line| lines.push(line.to_string()),
        )
        .await
        .expect("wait");
        assert_eq!(*fetched.borrow(), 3);
        assert_eq!(list, lists[2]);
        assert_eq!(
            lines,
            ["waiting up to 20s for Ready nodes to publish: node-2 (podCIDR, rkube.io/vtep-mac, rkube.io/underlay-ip)"],
            "reported once, naming what is missing"
        );
        assert!(unpublished(&lab_nodes(), &list).is_empty());
    }

    #[tokio::test]
    async fn gives_up_after_the_timeout_naming_the_node_and_skips_not_ready_ones() {
        let list = node_list(&[("node-1", false, false), ("node-2", true, false)]);
        let mut lines = Vec::new();
        let got = wait_for_publication(
            &lab_nodes(),
            || {
                let list = list.clone();
                async move { Ok::<_, String>(list) }
            },
            Duration::from_millis(30),
            Duration::from_millis(5),
            &mut |line| lines.push(line.to_string()),
        )
        .await
        .expect("wait");
        assert_eq!(got, list);
        assert_eq!(
            lines.first().map(String::as_str),
            Some("not waiting for nodes that are not Ready: node-1")
        );
        let last = lines.last().expect("a final line");
        assert!(
            last.starts_with("still unpublished after 0s: node-2 (podCIDR"),
            "{lines:?}"
        );
        assert!(!last.contains("node-1"), "{last}");

        // A NotReady node alone is not awaited.
        let list = node_list(&[("node-1", false, false), ("node-2", true, true)]);
        let mut fetched = 0;
        wait_for_publication(
            &lab_nodes(),
            || {
                fetched += 1;
                let list = list.clone();
                async move { Ok::<_, String>(list) }
            },
            Duration::from_secs(20),
            Duration::from_millis(1),
            &mut |_| {},
        )
        .await
        .expect("wait");
        assert_eq!(fetched, 1);

        // A failing fetch ends the wait with its error.
        let failed = wait_for_publication(
            &lab_nodes(),
            || async { Err::<serde_json::Value, _>("apiserver down".to_string()) },
            Duration::from_secs(20),
            Duration::from_millis(1),
            &mut |_| {},
        )
        .await;
        assert_eq!(failed, Err("apiserver down".to_string()));
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
