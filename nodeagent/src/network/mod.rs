//! The pod network, flannel's VXLAN scheme on netlink.
//!
//! On each node: bridge [`BRIDGE`] holding the first address of the node's podCIDR (the
//! pods' gateway); per pod a veth pair (`veth<hash>` on the bridge, `eth0` in the pod's
//! namespace) with an address from the node-local [`ipam`]; MTU = underlay MTU − 50;
//! VXLAN device [`VXLAN`] (VNI 1, UDP 8472, no learning) bound to the node's underlay
//! address; for every other node a route, a permanent neighbour and an FDB entry
//! ([`overlay`]). [`PodNetwork`] holds one node's part; [`node`] ties it to the Node
//! objects (podCIDR, annotations, peers).
//!
//! Every method works in the network namespace of the thread that called
//! [`PodNetwork::start`]; pod namespaces are entered on a thread of their own.

pub mod ipam;
pub mod link;
pub mod node;
pub mod overlay;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use ipnetwork::Ipv4Network;
use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use self::ipam::Ipam;
use self::link::{Netlink, PodInterface};
use self::overlay::{Change, Mac, Peer};

/// The node's bridge, the pods' gateway.
pub const BRIDGE: &str = "rkube0";
/// The node's VXLAN device.
pub const VXLAN: &str = "rkube.1";
/// The overlay's VXLAN network identifier.
pub const VNI: u32 = 1;
/// The overlay's UDP port (Linux's and flannel's VXLAN port).
pub const VXLAN_PORT: u16 = 8472;
/// What VXLAN encapsulation costs: outer IPv4 (20) + UDP (8) + VXLAN (8) + Ethernet (14).
pub const VXLAN_OVERHEAD: u32 = 50;

/// What went wrong while setting up the network or a pod's part of it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Link(#[from] link::Error),
    #[error("pod address management failed")]
    Ipam(#[from] ipam::Error),
    #[error("the IPAM task was interrupted")]
    Join(#[source] tokio::task::JoinError),
}

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The cluster-wide settings of the pod network, as the agent's flags give them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodNetworkOptions {
    /// All pods' addresses (`--cluster-cidr`, default 10.244.0.0/16).
    pub cluster_cidr: Ipv4Network,
    /// Services' virtual addresses (`--service-cidr`, default 10.96.0.0/12).
    pub service_cidr: Ipv4Network,
    /// The cluster's DNS domain (`--cluster-domain`, default `cluster.local`).
    pub cluster_domain: String,
}

impl Default for PodNetworkOptions {
    fn default() -> Self {
        PodNetworkOptions {
            cluster_cidr: Ipv4Network::new(Ipv4Addr::new(10, 244, 0, 0), 16)
                .expect("a /16 is a valid prefix"),
            service_cidr: Ipv4Network::new(Ipv4Addr::new(10, 96, 0, 0), 12)
                .expect("a /12 is a valid prefix"),
            cluster_domain: "cluster.local".to_string(),
        }
    }
}

/// What one node's part of the network is built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkConfig {
    /// Where the IPAM file lives (`<agent root>/network`).
    pub state_dir: PathBuf,
    /// The node's `spec.podCIDR`.
    pub pod_cidr: Ipv4Network,
    /// The node's address on the underlay; the VXLAN device is bound to it.
    pub underlay_ip: Ipv4Addr,
}

/// What this node publishes for its peers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalNode {
    pub pod_cidr: Ipv4Network,
    pub gateway: Ipv4Addr,
    pub vtep_mac: Mac,
    pub underlay_ip: Ipv4Addr,
    /// The pods' MTU (the underlay's minus [`VXLAN_OVERHEAD`]).
    pub mtu: u32,
}

/// One node's pod network: bridge, VXLAN device, IPAM, pod attachments and peers.
#[derive(Debug)]
pub struct PodNetwork {
    netlink: Netlink,
    local: LocalNode,
    bridge: u32,
    vxlan: u32,
    ipam: Mutex<Ipam>,
}

/// The runtime's late-bound handle on the pod network: the network can only be built
/// once the node's podCIDR is known, after the runtime exists. Until then a sandbox
/// cannot be attached and pod creation is retried.
#[derive(Debug, Clone, Default)]
pub struct NetworkHandle {
    network: Arc<OnceLock<Arc<PodNetwork>>>,
    ready: Arc<tokio::sync::Notify>,
    cluster_domain: String,
}

impl NetworkHandle {
    /// An empty handle; pods get `search` domains under `cluster_domain`.
    pub fn new(cluster_domain: impl Into<String>) -> Self {
        NetworkHandle {
            network: Arc::default(),
            ready: Arc::default(),
            cluster_domain: cluster_domain.into(),
        }
    }

    /// Fills the handle; a second call is ignored (the first network stays).
    pub fn set(&self, network: Arc<PodNetwork>) {
        if self.network.set(network).is_err() {
            warn!("the pod network was set twice; keeping the first");
        }
        self.ready.notify_waiters();
    }

    /// Waits until the network is up (the service proxy and cluster DNS start then:
    /// DNS listens on the bridge address) and returns it.
    pub async fn wait(&self) -> Arc<PodNetwork> {
        loop {
            // Registered before the check, so a `set` in between is not missed.
            let notified = self.ready.notified();
            if let Some(network) = self.network.get() {
                return network.clone();
            }
            notified.await;
        }
    }

    /// The network, once it is up.
    pub fn get(&self) -> Option<&Arc<PodNetwork>> {
        self.network.get()
    }

    /// The cluster's DNS domain (`cluster.local`).
    pub fn cluster_domain(&self) -> &str {
        &self.cluster_domain
    }
}

/// The host-side veth name of `sandbox`: `veth` and 8 hex digits of its hash (IFNAMSIZ
/// allows 15 characters).
pub fn host_veth(sandbox: &str) -> String {
    format!("veth{}", &short_hash(sandbox)[..8])
}

/// The name the pod's end has until it is renamed `eth0` inside the pod.
fn peer_veth(sandbox: &str) -> String {
    format!("rkp{}", &short_hash(sandbox)[..8])
}

fn short_hash(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

impl PodNetwork {
    /// Node start-up: creates or adopts the bridge (gateway address, MTU, up), enables
    /// IPv4 forwarding, creates or adopts the VXLAN device on the underlay interface and
    /// opens the IPAM. Safe to run again (an agent restart): existing pods keep their
    /// addresses and connectivity.
    ///
    /// # Errors
    /// When the underlay address is on no interface or a netlink request fails.
    pub async fn start(config: NetworkConfig) -> Result<Self> {
        let netlink = Netlink::connect()?;
        let (underlay, underlay_mtu) = netlink.underlay(config.underlay_ip).await?;
        let mtu = underlay_mtu.saturating_sub(VXLAN_OVERHEAD);
        let gateway = ipam::gateway(config.pod_cidr);
        let gateway_net = Ipv4Network::new(gateway, config.pod_cidr.prefix())
            .expect("a podCIDR's own prefix is valid");
        let bridge = netlink.ensure_bridge(BRIDGE, gateway_net, mtu).await?;
        link::enable_forwarding()?;
        let (vxlan, vtep_mac) = netlink
            .ensure_vxlan(VXLAN, VNI, VXLAN_PORT, underlay, config.underlay_ip, mtu)
            .await?;
        let path = config.state_dir.join("ipam.json");
        let cidr = config.pod_cidr;
        let ipam = tokio::task::spawn_blocking(move || Ipam::open(path, cidr))
            .await
            .map_err(Error::Join)??;
        let local = LocalNode {
            pod_cidr: config.pod_cidr,
            gateway,
            vtep_mac,
            underlay_ip: config.underlay_ip,
            mtu,
        };
        info!(pod_cidr = %local.pod_cidr, gateway = %gateway, vtep_mac = %vtep_mac, underlay = %local.underlay_ip, mtu, "pod network ready");
        Ok(PodNetwork {
            netlink,
            local,
            bridge,
            vxlan,
            ipam: Mutex::new(ipam),
        })
    }

    /// What this node publishes for its peers.
    pub fn local(&self) -> &LocalNode {
        &self.local
    }

    /// Attaches the sandbox `sandbox`, whose network namespace is at `netns`: allocates
    /// its address (the same one again for the same sandbox), creates its veth pair,
    /// and configures `eth0` in the namespace. Returns the pod's address.
    ///
    /// # Errors
    /// When no address is free or a netlink request fails; the address is released
    /// again then.
    pub async fn attach(&self, sandbox: &str, netns: &Path) -> Result<Ipv4Addr> {
        let ip = self.ipam.lock().allocate(sandbox)?;
        match self.plug(sandbox, netns, ip).await {
            Ok(()) => {
                info!(sandbox, %ip, "attached pod to the network");
                Ok(ip)
            }
            Err(err) => {
                let _ = self.netlink.delete_link(&host_veth(sandbox)).await;
                if let Err(release) = self.ipam.lock().release(sandbox) {
                    warn!(sandbox, error = %release, "failed to release the address of a failed attach");
                }
                Err(err)
            }
        }
    }

    async fn plug(&self, sandbox: &str, netns: &Path, ip: Ipv4Addr) -> Result<()> {
        let host = host_veth(sandbox);
        let peer = peer_veth(sandbox);
        self.netlink
            .create_veth(&host, &peer, self.local.mtu, netns)
            .await?;
        self.netlink
            .attach_to_bridge(&host, self.bridge, self.local.mtu)
            .await?;
        let address = Ipv4Network::new(ip, self.local.pod_cidr.prefix())
            .expect("a podCIDR's own prefix is valid");
        link::configure_pod(
            netns,
            PodInterface {
                temporary_name: peer,
                address,
                gateway: self.local.gateway,
                mtu: self.local.mtu,
            },
        )
        .await?;
        Ok(())
    }

    /// Detaches `sandbox`: deletes its veth pair (if its namespace still holds it) and
    /// releases its address. Detaching twice is fine.
    ///
    /// # Errors
    /// When the kernel refuses or the IPAM file cannot be written.
    pub async fn detach(&self, sandbox: &str) -> Result<()> {
        self.netlink.delete_link(&host_veth(sandbox)).await?;
        if let Some(ip) = self.ipam.lock().release(sandbox)? {
            info!(sandbox, %ip, "detached pod from the network");
        }
        Ok(())
    }

    /// The address `sandbox` holds, if any.
    pub fn address(&self, sandbox: &str) -> Option<Ipv4Addr> {
        self.ipam.lock().get(sandbox)
    }

    /// Every allocation, address → sandbox id.
    pub fn allocations(&self) -> BTreeMap<Ipv4Addr, String> {
        self.ipam.lock().allocations().clone()
    }

    /// Start-up sweep: releases the address of every sandbox `is_live` says is gone and
    /// removes its host veth, if one is left; returns how many were released.
    ///
    /// # Errors
    /// When the IPAM file cannot be written.
    pub async fn sweep(&self, is_live: impl Fn(&str) -> bool) -> Result<usize> {
        let gone: Vec<String> = self
            .ipam
            .lock()
            .allocations()
            .values()
            .filter(|sandbox| !is_live(sandbox))
            .cloned()
            .collect();
        for sandbox in &gone {
            let _ = self.netlink.delete_link(&host_veth(sandbox)).await;
        }
        let released = self
            .ipam
            .lock()
            .sweep(|sandbox| !gone.iter().any(|g| g == sandbox))?;
        Ok(released)
    }

    /// Makes the kernel's overlay entries match `peers`: lists what the VXLAN device
    /// has, diffs ([`overlay::plan`]) and applies the changes; returns them.
    ///
    /// # Errors
    /// When a dump or a change fails (the changes before it stay applied; the next
    /// sync diffs again).
    pub async fn sync_peers(&self, peers: &[Peer]) -> Result<Vec<Change>> {
        let present = self.netlink.present(self.vxlan).await?;
        let changes = overlay::plan(peers, &present);
        for change in &changes {
            info!(?change, "overlay change");
            self.netlink.apply(self.vxlan, change).await?;
        }
        Ok(changes)
    }

    /// What the kernel holds on the VXLAN device (for diagnosis and tests).
    ///
    /// # Errors
    /// When a dump fails.
    pub async fn overlay_state(&self) -> Result<overlay::Present> {
        Ok(self.netlink.present(self.vxlan).await?)
    }

    /// The `resolv.conf` of a pod in `namespace`: the cluster DNS on the gateway, the
    /// cluster search domains, `ndots:5`.
    pub fn resolv_conf(&self, namespace: &str, cluster_domain: &str) -> String {
        resolv_conf(self.local.gateway, namespace, cluster_domain)
    }
}

/// The `resolv.conf` of a pod in `namespace` whose cluster DNS listens on `nameserver`.
pub fn resolv_conf(nameserver: Ipv4Addr, namespace: &str, cluster_domain: &str) -> String {
    format!(
        "nameserver {nameserver}\nsearch {namespace}.svc.{cluster_domain} svc.{cluster_domain} {cluster_domain}\noptions ndots:5\n"
    )
}

/// The `/etc/hosts` of a pod with address `ip` (if any) and host name `hostname`.
pub fn hosts_file(ip: Option<Ipv4Addr>, hostname: &str) -> String {
    let mut hosts =
        String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    if let Some(ip) = ip {
        hosts.push_str(&format!("{ip}\t{hostname}\n"));
    }
    hosts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn veth_names_fit_ifnamsiz_and_differ_per_sandbox() {
        let a = host_veth("default_web-1_uid");
        let b = host_veth("default_web-2_uid");
        assert!(a.len() <= 15 && peer_veth("x").len() <= 15);
        assert!(a.starts_with("veth"));
        assert_ne!(a, b);
        assert_eq!(a, host_veth("default_web-1_uid"));
    }

    #[test]
    fn resolv_conf_has_the_cluster_search_path() {
        let text = resolv_conf(Ipv4Addr::new(10, 244, 1, 1), "shop", "cluster.local");
        assert_eq!(
            text,
            "nameserver 10.244.1.1\nsearch shop.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n"
        );
        assert!(
            hosts_file(Some(Ipv4Addr::new(10, 244, 1, 5)), "web").ends_with("10.244.1.5\tweb\n")
        );
    }
}
