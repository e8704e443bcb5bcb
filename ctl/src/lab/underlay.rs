//! The lab's underlay network: a bridge on the host holding the first address of the
//! underlay CIDR, and per node a network namespace whose `eth0` (one end of a veth pair,
//! the other end on the bridge) holds the node's own address, with `lo` up and a default
//! route via the bridge address.
//!
//! Every change goes through the [`Net`] trait; [`IpCommand`] drives iproute2's `ip`
//! (idempotent `replace` forms where there are any), [`RecordingNet`] records calls for
//! unit tests. Names derive from the lab's name, so two labs on one machine (parallel
//! tests) never share a bridge, a namespace or a link.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;

/// Why an underlay operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid underlay CIDR {cidr:?}: {reason}")]
    Cidr { cidr: String, reason: &'static str },
    #[error("the underlay {cidr} has room for {room} nodes, not {wanted}")]
    TooSmall {
        cidr: String,
        room: u32,
        wanted: usize,
    },
    #[error("failed to run `ip {args}`")]
    Spawn {
        args: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`ip {args}` failed: {stderr}")]
    Command { args: String, stderr: String },
}

/// The result type of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An IPv4 network, e.g. `10.250.0.0/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Cidr {
    pub network: Ipv4Addr,
    pub prefix: u8,
}

impl Cidr {
    /// Parses `a.b.c.d/len` (host bits are cleared).
    ///
    /// # Errors
    /// When it is not an IPv4 CIDR with a prefix between 8 and 30.
    pub fn parse(text: &str) -> Result<Cidr> {
        let invalid = |reason| Error::Cidr {
            cidr: text.to_string(),
            reason,
        };
        let (addr, prefix) = text.split_once('/').ok_or_else(|| invalid("no /prefix"))?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| invalid("not an IPv4 address"))?;
        let prefix: u8 = prefix.parse().map_err(|_| invalid("bad prefix"))?;
        if !(1..=30).contains(&prefix) {
            return Err(invalid("the prefix must be between 1 and 30"));
        }
        let mask = u32::MAX << (32 - u32::from(prefix));
        Ok(Cidr {
            network: Ipv4Addr::from(u32::from(addr) & mask),
            prefix,
        })
    }

    /// The `index`th address after the network address (1 is the bridge's).
    pub fn host(&self, index: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + index)
    }

    /// How many host addresses there are (without network and broadcast).
    pub fn hosts(&self) -> u32 {
        (1u32 << (32 - u32::from(self.prefix))) - 2
    }

    /// The bridge's address: the first host address.
    pub fn bridge_ip(&self) -> Ipv4Addr {
        self.host(1)
    }

    /// Node `n`'s address (nodes count from 1): the address after the bridge's.
    pub fn node_ip(&self, n: usize) -> Ipv4Addr {
        self.host(1 + n as u32)
    }

    /// Whether the two networks share an address.
    pub fn overlaps(&self, other: &Cidr) -> bool {
        let prefix = self.prefix.min(other.prefix);
        let mask = u32::MAX << (32 - u32::from(prefix));
        u32::from(self.network) & mask == u32::from(other.network) & mask
    }

    /// Fails unless `nodes` nodes and the bridge fit.
    ///
    /// # Errors
    /// [`Error::TooSmall`].
    pub fn check_room(&self, nodes: usize) -> Result<()> {
        let room = self.hosts() - 1;
        if nodes as u64 > u64::from(room) {
            return Err(Error::TooSmall {
                cidr: self.to_string(),
                room,
                wanted: nodes,
            });
        }
        Ok(())
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// The names of one lab's links and namespaces, derived from its short name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    /// `rkb-<hash>`: the lab's name, also its bridge's.
    pub lab: String,
}

impl Names {
    /// Names for the lab whose state lives in `state_dir` (the same directory always
    /// gives the same names; different ones practically never collide).
    pub fn for_state_dir(state_dir: &Path) -> Names {
        // FNV-1a: stable across builds and platforms, unlike `DefaultHasher`.
        let mut hash: u32 = 0x811c_9dc5;
        for byte in state_dir.as_os_str().as_encoded_bytes() {
            hash ^= u32::from(*byte);
            hash = hash.wrapping_mul(0x0100_0193);
        }
        Names {
            lab: format!("rkb-{:06x}", hash & 0xff_ffff),
        }
    }

    /// The host bridge (10 characters, within IFNAMSIZ).
    pub fn bridge(&self) -> String {
        self.lab.clone()
    }

    /// Node `n`'s network namespace.
    pub fn netns(&self, n: usize) -> String {
        format!("{}-node{n}", self.lab)
    }

    /// The host end of node `n`'s veth pair (at most 15 characters below 10,000 nodes).
    pub fn host_veth(&self, n: usize) -> String {
        format!("{}.{n}", self.lab)
    }
}

/// The network changes the lab makes: small enough to fake.
pub trait Net: Send + Sync {
    /// Creates the bridge with `addr`/`prefix` and sets it up (keeps an existing one).
    fn ensure_bridge(&self, bridge: &str, cidr: &Cidr) -> Result<()>;
    /// Creates namespace `netns` with `eth0` at `addr` on `bridge`, `lo` up and a default
    /// route via the bridge address (keeps what exists, fills in what is missing).
    fn ensure_node(
        &self,
        netns: &str,
        host_veth: &str,
        bridge: &str,
        addr: Ipv4Addr,
        cidr: &Cidr,
    ) -> Result<()>;
    /// Whether namespace `netns` exists.
    fn netns_exists(&self, netns: &str) -> bool;
    /// Whether link `name` exists in the host namespace.
    fn link_exists(&self, name: &str) -> bool;
    /// Removes namespace `netns` (and with it its links) and the host veth end, if there.
    fn remove_node(&self, netns: &str, host_veth: &str) -> Result<()>;
    /// Removes the bridge, if there.
    fn remove_bridge(&self, bridge: &str) -> Result<()>;
}

/// [`Net`] through iproute2's `ip`.
#[derive(Debug, Clone, Default)]
pub struct IpCommand;

impl IpCommand {
    fn ip(&self, args: &[&str]) -> Result<()> {
        let joined = args.join(" ");
        let out = Command::new("ip")
            .args(args)
            .output()
            .map_err(|source| Error::Spawn {
                args: joined.clone(),
                source,
            })?;
        if out.status.success() {
            tracing::debug!(args = %joined, "ip");
            Ok(())
        } else {
            Err(Error::Command {
                args: joined,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            })
        }
    }

    fn quiet(&self, args: &[&str]) -> bool {
        Command::new("ip")
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }
}

impl Net for IpCommand {
    fn ensure_bridge(&self, bridge: &str, cidr: &Cidr) -> Result<()> {
        if !self.link_exists(bridge) {
            self.ip(&["link", "add", bridge, "type", "bridge"])?;
        }
        let addr = format!("{}/{}", cidr.bridge_ip(), cidr.prefix);
        self.ip(&["addr", "replace", &addr, "dev", bridge])?;
        self.ip(&["link", "set", bridge, "up"])
    }

    fn ensure_node(
        &self,
        netns: &str,
        host_veth: &str,
        bridge: &str,
        addr: Ipv4Addr,
        cidr: &Cidr,
    ) -> Result<()> {
        if !self.netns_exists(netns) {
            self.ip(&["netns", "add", netns])?;
        }
        if !self.link_exists(host_veth) {
            // A stale `eth0` cannot be left: a veth pair dies with either end.
            self.ip(&[
                "link", "add", host_veth, "type", "veth", "peer", "name", "eth0", "netns", netns,
            ])?;
        }
        self.ip(&["link", "set", host_veth, "master", bridge, "up"])?;
        let addr = format!("{addr}/{}", cidr.prefix);
        let gateway = cidr.bridge_ip().to_string();
        self.ip(&["-n", netns, "link", "set", "lo", "up"])?;
        self.ip(&["-n", netns, "addr", "replace", &addr, "dev", "eth0"])?;
        self.ip(&["-n", netns, "link", "set", "eth0", "up"])?;
        self.ip(&["-n", netns, "route", "replace", "default", "via", &gateway])
    }

    fn netns_exists(&self, netns: &str) -> bool {
        Path::new("/run/netns").join(netns).exists()
    }

    fn link_exists(&self, name: &str) -> bool {
        Path::new("/sys/class/net").join(name).exists()
    }

    fn remove_node(&self, netns: &str, host_veth: &str) -> Result<()> {
        if self.netns_exists(netns) {
            self.ip(&["netns", "delete", netns])?;
        }
        // The pair goes with the namespace once nothing holds it any more; do not wait.
        if self.link_exists(host_veth) && !self.quiet(&["link", "delete", host_veth]) {
            // It may have vanished between the check and the delete.
            if self.link_exists(host_veth) {
                self.ip(&["link", "delete", host_veth])?;
            }
        }
        Ok(())
    }

    fn remove_bridge(&self, bridge: &str) -> Result<()> {
        if self.link_exists(bridge) {
            self.ip(&["link", "delete", bridge, "type", "bridge"])?;
        }
        Ok(())
    }
}

/// A [`Net`] that records the calls and keeps what "exists" in memory.
#[derive(Debug, Default)]
pub struct RecordingNet {
    pub calls: Mutex<Vec<String>>,
    pub existing: Mutex<Vec<String>>,
}

impl RecordingNet {
    fn record(&self, call: String) {
        if let Ok(mut calls) = self.calls.lock() {
            calls.push(call);
        }
    }

    fn exists(&self, name: &str) -> bool {
        self.existing
            .lock()
            .map(|e| e.iter().any(|n| n == name))
            .unwrap_or(false)
    }

    fn set(&self, name: &str, present: bool) {
        if let Ok(mut existing) = self.existing.lock() {
            existing.retain(|n| n != name);
            if present {
                existing.push(name.to_string());
            }
        }
    }

    /// The recorded calls so far.
    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().map(|c| c.clone()).unwrap_or_default()
    }
}

impl Net for RecordingNet {
    fn ensure_bridge(&self, bridge: &str, cidr: &Cidr) -> Result<()> {
        self.record(format!("bridge {bridge} {}", cidr.bridge_ip()));
        self.set(bridge, true);
        Ok(())
    }

    fn ensure_node(
        &self,
        netns: &str,
        host_veth: &str,
        bridge: &str,
        addr: Ipv4Addr,
        _cidr: &Cidr,
    ) -> Result<()> {
        self.record(format!("node {netns} {host_veth} {bridge} {addr}"));
        self.set(netns, true);
        self.set(host_veth, true);
        Ok(())
    }

    fn netns_exists(&self, netns: &str) -> bool {
        self.exists(netns)
    }

    fn link_exists(&self, name: &str) -> bool {
        self.exists(name)
    }

    fn remove_node(&self, netns: &str, host_veth: &str) -> Result<()> {
        self.record(format!("remove-node {netns} {host_veth}"));
        self.set(netns, false);
        self.set(host_veth, false);
        Ok(())
    }

    fn remove_bridge(&self, bridge: &str) -> Result<()> {
        self.record(format!("remove-bridge {bridge}"));
        self.set(bridge, false);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULT_FOR_TESTS: Cidr = Cidr {
        network: Ipv4Addr::new(10, 250, 0, 0),
        prefix: 24,
    };

    #[test]
    fn cidr_addresses() {
        let cidr = Cidr::parse("10.99.3.7/24").expect("parse");
        assert_eq!(cidr.to_string(), "10.99.3.0/24");
        assert_eq!(cidr.bridge_ip(), Ipv4Addr::new(10, 99, 3, 1));
        assert_eq!(cidr.node_ip(1), Ipv4Addr::new(10, 99, 3, 2));
        assert_eq!(cidr.node_ip(3), Ipv4Addr::new(10, 99, 3, 4));
        assert!(cidr.check_room(253).is_ok());
        assert!(matches!(
            cidr.check_room(254),
            Err(Error::TooSmall { room: 253, .. })
        ));
        let services = Cidr::parse("10.96.0.0/12").expect("parse");
        assert!(Cidr::parse("10.99.0.0/24")
            .expect("parse")
            .overlaps(&services));
        assert!(services.overlaps(&Cidr::parse("10.111.5.0/24").expect("parse")));
        assert!(!DEFAULT_FOR_TESTS.overlaps(&services));
        let small = Cidr::parse("10.0.0.0/30").expect("parse");
        assert!(small.check_room(1).is_ok() && small.check_room(2).is_err());
        for bad in [
            "10.0.0.0",
            "10.0.0.0/31",
            "10.0.0/24",
            "::1/64",
            "10.0.0.0/x",
        ] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names_are_stable_short_and_distinct() {
        let a = Names::for_state_dir(Path::new("/tmp/a/state"));
        let b = Names::for_state_dir(Path::new("/tmp/b/state"));
        assert_eq!(a, Names::for_state_dir(Path::new("/tmp/a/state")));
        assert_ne!(a.lab, b.lab);
        assert!(a.bridge().len() <= 15 && a.host_veth(999).len() <= 15);
        assert!(a.netns(2).starts_with(&a.lab) && a.netns(2).ends_with("node2"));
    }

    #[test]
    fn recording_net_tracks_what_exists() {
        let net = RecordingNet::default();
        let cidr = Cidr::parse("10.1.0.0/24").expect("parse");
        net.ensure_bridge("br", &cidr).expect("bridge");
        net.ensure_node("ns1", "v1", "br", cidr.node_ip(1), &cidr)
            .expect("node");
        assert!(net.netns_exists("ns1") && net.link_exists("v1") && net.link_exists("br"));
        net.remove_node("ns1", "v1").expect("remove");
        net.remove_bridge("br").expect("remove");
        assert!(!net.netns_exists("ns1") && !net.link_exists("br"));
        assert_eq!(
            net.calls(),
            [
                "bridge br 10.1.0.1",
                "node ns1 v1 br 10.1.0.2",
                "remove-node ns1 v1",
                "remove-bridge br"
            ]
        );
    }
}
