//! The pod network's side of the Node objects: wait for this node's `spec.podCIDR`,
//! publish the overlay annotations ([`overlay::VTEP_MAC_ANNOTATION`],
//! [`overlay::UNDERLAY_IP_ANNOTATION`]), and keep the overlay's peer entries in step with
//! the other Nodes as they come, change and go.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use ipnetwork::Ipv4Network;
use k8s_openapi::api::core::v1::Node;
use rkube_client::api::Api;
use rkube_client::watcher::{self, Event};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::overlay::{self, Peer, UNDERLAY_IP_ANNOTATION, VTEP_MAC_ANNOTATION};
use super::{LocalNode, NetworkConfig, NetworkHandle, PodNetwork};

/// How often the peers are re-diffed against the kernel even when no Node changed, so
/// an entry someone removed by hand comes back.
pub const RESYNC_INTERVAL: Duration = Duration::from_secs(30);

/// What the Node side can fail at.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to read node {name}")]
    Get {
        name: String,
        #[source]
        source: rkube_client::api::Error,
    },
    #[error("failed to annotate node {name}")]
    Annotate {
        name: String,
        #[source]
        source: rkube_client::api::Error,
    },
    #[error("node {name} has an invalid podCIDR {cidr:?}")]
    BadPodCidr { name: String, cidr: String },
    #[error("stopped while waiting for node {name}'s podCIDR")]
    Cancelled { name: String },
    #[error("failed to set up the node's pod network")]
    Network(#[from] super::Error),
}

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Waits until Node `name` has a `spec.podCIDR` (the controller-manager's node IPAM
/// assigns it) and returns it.
///
/// # Errors
/// When the Node cannot be read, its podCIDR is not an IPv4 CIDR, or `shutdown` fires.
pub async fn wait_for_pod_cidr(
    nodes: &Api<Node>,
    name: &str,
    shutdown: &CancellationToken,
) -> Result<Ipv4Network> {
    let mut logged = false;
    loop {
        // The Node may not be registered yet: wait for it as for its podCIDR.
        let node = nodes.get_opt(name).await.map_err(|source| Error::Get {
            name: name.to_string(),
            source,
        })?;
        let cidr = node.and_then(|node| node.spec.and_then(|spec| spec.pod_cidr));
        if let Some(cidr) = cidr {
            return cidr.parse().map_err(|_| Error::BadPodCidr {
                name: name.to_string(),
                cidr,
            });
        }
        if !logged {
            info!(node = name, "waiting for the node's podCIDR");
            logged = true;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Err(Error::Cancelled { name: name.to_string() }),
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

/// Sets this node's overlay annotations on Node `name` (read, change, replace; retried
/// on conflicts). Nothing is written when they are already right.
///
/// # Errors
/// When the Node cannot be read or written.
pub async fn publish(nodes: &Api<Node>, name: &str, local: &LocalNode) -> Result<()> {
    let wanted = [
        (VTEP_MAC_ANNOTATION, local.vtep_mac.to_string()),
        (UNDERLAY_IP_ANNOTATION, local.underlay_ip.to_string()),
    ];
    let mut attempt = 0;
    loop {
        let mut node = nodes.get(name).await.map_err(|source| Error::Get {
            name: name.to_string(),
            source,
        })?;
        let annotations = node.metadata.annotations.get_or_insert_with(BTreeMap::new);
        let before = annotations.clone();
        for (key, value) in &wanted {
            annotations.insert((*key).to_string(), value.clone());
        }
        if *annotations == before {
            return Ok(());
        }
        match nodes.replace(name, &node).await {
            Ok(_) => {
                info!(node = name, vtep_mac = %local.vtep_mac, underlay = %local.underlay_ip, "published overlay annotations");
                return Ok(());
            }
            Err(err) if err.is_conflict() && attempt < 5 => {
                attempt += 1;
                debug!(
                    node = name,
                    attempt, "conflict while annotating the node; retrying"
                );
            }
            Err(source) => {
                return Err(Error::Annotate {
                    name: name.to_string(),
                    source,
                })
            }
        }
    }
}

/// Watches every Node and keeps `network`'s peer entries in step with them until
/// `shutdown`: after each complete list, whenever the peers change, and every
/// [`RESYNC_INTERVAL`]. Failures are logged and retried at the next event or tick.
pub async fn run_peers(
    nodes: Api<Node>,
    local: String,
    network: Arc<PodNetwork>,
    shutdown: CancellationToken,
) {
    let mut stream = std::pin::pin!(watcher::watcher(nodes, watcher::Config::default()));
    let mut known: BTreeMap<String, Node> = BTreeMap::new();
    let mut listing: Option<BTreeMap<String, Node>> = None;
    let mut synced: Option<Vec<Peer>> = None;
    let mut tick = tokio::time::interval(RESYNC_INTERVAL);
    loop {
        let force = tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => true,
            event = stream.next() => {
                match event {
                    None => return,
                    Some(Err(err)) => {
                        warn!(error = %err, "node watch failed; the watcher retries");
                        continue;
                    }
                    Some(Ok(Event::Init)) => {
                        listing = Some(BTreeMap::new());
                        continue;
                    }
                    Some(Ok(Event::InitApply(node))) => {
                        if let (Some(list), Some(name)) = (listing.as_mut(), node.metadata.name.clone()) {
                            list.insert(name, node);
                        }
                        continue;
                    }
                    Some(Ok(Event::InitDone)) => {
                        if let Some(list) = listing.take() {
                            known = list;
                        }
                        true
                    }
                    Some(Ok(Event::Apply(node))) => {
                        if let Some(name) = node.metadata.name.clone() {
                            known.insert(name, node);
                        }
                        false
                    }
                    Some(Ok(Event::Delete(node))) => {
                        if let Some(name) = &node.metadata.name {
                            known.remove(name);
                        }
                        false
                    }
                }
            }
        };
        if listing.is_some() {
            // A relist is in progress: wait for the complete picture.
            continue;
        }
        let peers = overlay::peers_from_nodes(known.values(), &local);
        if !force && synced.as_ref() == Some(&peers) {
            continue;
        }
        match network.sync_peers(&peers).await {
            Ok(changes) => {
                if !changes.is_empty() {
                    info!(
                        peers = peers.len(),
                        changes = changes.len(),
                        "overlay peers synced"
                    );
                }
                synced = Some(peers);
            }
            Err(err) => {
                warn!(error = %err, "failed to sync overlay peers; retrying later");
                synced = None;
            }
        }
    }
}

/// What a node's pod network starts from.
#[derive(Debug, Clone)]
pub struct Startup {
    pub node_name: String,
    /// Where the IPAM file lives (`<agent root>/network`).
    pub state_dir: PathBuf,
    /// The node's address on the underlay.
    pub underlay_ip: Ipv4Addr,
    /// The runtime's sandbox directory (`<agent root>/sandboxes`): an address whose
    /// sandbox has no directory there is released at start-up.
    pub sandboxes_dir: PathBuf,
}

/// Node start-up and the peer loop: waits for the podCIDR, builds the node's network
/// ([`PodNetwork::start`]), releases the addresses of sandboxes that are gone, fills
/// `handle` (pods can be attached from then on), publishes the annotations and keeps
/// the peers in step until `shutdown`.
///
/// # Errors
/// When the podCIDR never comes (shutdown), the network cannot be built or the
/// annotations cannot be written.
pub async fn run(
    nodes: Api<Node>,
    startup: Startup,
    handle: NetworkHandle,
    shutdown: CancellationToken,
) -> Result<()> {
    let pod_cidr = wait_for_pod_cidr(&nodes, &startup.node_name, &shutdown).await?;
    let network = Arc::new(
        PodNetwork::start(NetworkConfig {
            state_dir: startup.state_dir.clone(),
            pod_cidr,
            underlay_ip: startup.underlay_ip,
        })
        .await?,
    );
    let sandboxes = startup.sandboxes_dir.clone();
    let released = network
        .sweep(|sandbox| sandboxes.join(sandbox).exists())
        .await?;
    if released > 0 {
        info!(
            released,
            "released the addresses of sandboxes that are gone"
        );
    }
    handle.set(network.clone());
    let mut delay = Duration::from_millis(500);
    loop {
        match publish(&nodes, &startup.node_name, network.local()).await {
            Ok(()) => break,
            Err(err) => warn!(error = %err, "failed to publish the overlay annotations; retrying"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(10));
    }
    run_peers(nodes, startup.node_name, network, shutdown).await;
    Ok(())
}
