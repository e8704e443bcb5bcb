//! The kernel side of the pod network, over rtnetlink: the bridge, the VXLAN device,
//! the pods' veth pairs and the overlay's routes, neighbour and FDB entries.
//!
//! A [`Netlink`] talks to the network namespace of the thread that created it (netlink
//! sockets bind to their creator's namespace). Work inside a pod's namespace runs on a
//! short-lived thread that `setns`es into it ([`configure_pod`]): a thread that joined
//! another namespace must never go back to a pool.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use futures::TryStreamExt;
use ipnetwork::Ipv4Network;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::{
    AfSpecInet6, AfSpecUnspec, In6AddrGenMode, InfoData, InfoVeth, InfoVxlan, LinkAttribute,
    LinkInfo, LinkMessage,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::AddressFamily;
use rtnetlink::{
    Handle, LinkBridge, LinkBridgePort, LinkMessageBuilder, LinkUnspec, LinkVeth, LinkVxlan,
    RouteMessageBuilder,
};
use tracing::{debug, info};

use super::overlay::{Change, Mac, Present, Route};

/// The kernel's "no such device" / "no such entry" answers.
const ENODEV: i32 = 19;
const ENOENT: i32 = 2;
const ESRCH: i32 = 3;

/// A netlink request that failed, or a step around one.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to open a netlink socket")]
    Connect(#[source] std::io::Error),
    #[error("netlink: failed to {op}")]
    Netlink {
        op: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("no interface holds the underlay address {ip}")]
    NoUnderlay { ip: Ipv4Addr },
    #[error("link {name} vanished while it was being set up")]
    LinkGone { name: String },
    #[error("failed to open network namespace {path}")]
    OpenNetns {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to enter network namespace {path}")]
    Setns {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("failed to start a runtime in a network namespace")]
    Runtime(#[source] std::io::Error),
    #[error("the namespace thread stopped without an answer")]
    Thread,
    #[error("failed to enable IPv4 forwarding")]
    Forwarding(#[source] std::io::Error),
}

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn netlink(op: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> Error {
    let op = op.into();
    move |source| Error::Netlink { op, source }
}

/// Whether `err` is the kernel saying the thing to delete is not there.
fn is_missing(err: &rtnetlink::Error) -> bool {
    match err {
        rtnetlink::Error::NetlinkError(message) => message
            .code
            .is_some_and(|code| matches!(-code.get(), ENODEV | ENOENT | ESRCH)),
        _ => false,
    }
}

fn link_name(link: &LinkMessage) -> Option<&str> {
    link.attributes.iter().find_map(|attr| match attr {
        LinkAttribute::IfName(name) => Some(name.as_str()),
        _ => None,
    })
}

fn link_mac(link: &LinkMessage) -> Option<Mac> {
    link.attributes.iter().find_map(|attr| match attr {
        LinkAttribute::Address(bytes) => Mac::from_bytes(bytes),
        _ => None,
    })
}

fn link_mtu(link: &LinkMessage) -> Option<u32> {
    link.attributes.iter().find_map(|attr| match attr {
        LinkAttribute::Mtu(mtu) => Some(*mtu),
        _ => None,
    })
}

/// The VXLAN settings of a device that decide whether it can be adopted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct VxlanInfo {
    vni: u32,
    local: Option<Ipv4Addr>,
    port: Option<u16>,
    underlay: Option<u32>,
}

/// The VXLAN settings of `link`, `None` when it is no VXLAN device.
fn vxlan_info(link: &LinkMessage) -> Option<VxlanInfo> {
    let data = link.attributes.iter().find_map(|attr| match attr {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|info| match info {
            LinkInfo::Data(InfoData::Vxlan(data)) => Some(data),
            _ => None,
        }),
        _ => None,
    })?;
    let mut vni = None;
    let (mut local, mut port, mut underlay) = (None, None, None);
    for item in data {
        match item {
            InfoVxlan::Id(id) => vni = Some(*id),
            InfoVxlan::Local(ip) => local = Some(*ip),
            InfoVxlan::Port(p) => port = Some(*p),
            InfoVxlan::Link(index) => underlay = Some(*index),
            _ => {}
        }
    }
    Some(VxlanInfo {
        vni: vni?,
        local,
        port,
        underlay,
    })
}

/// A netlink connection in the namespace of the thread that made it.
#[derive(Debug, Clone)]
pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// Opens a netlink socket in the calling thread's network namespace and spawns its
    /// connection task on the current tokio runtime.
    ///
    /// # Errors
    /// When the socket cannot be opened.
    pub fn connect() -> Result<Self> {
        let (connection, handle, _) = rtnetlink::new_connection().map_err(Error::Connect)?;
        tokio::spawn(connection);
        Ok(Netlink { handle })
    }

    /// The link called `name`, if there is one.
    ///
    /// # Errors
    /// When the kernel cannot be asked.
    pub async fn link(&self, name: &str) -> Result<Option<LinkMessage>> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match links.try_next().await {
            Ok(link) => Ok(link),
            Err(err) if is_missing(&err) => Ok(None),
            Err(source) => Err(Error::Netlink {
                op: format!("look up link {name}"),
                source,
            }),
        }
    }

    async fn index(&self, name: &str) -> Result<u32> {
        self.link(name)
            .await?
            .map(|link| link.header.index)
            .ok_or_else(|| Error::LinkGone {
                name: name.to_string(),
            })
    }

    /// Deletes link `name`; `false` when there was none.
    ///
    /// # Errors
    /// When the kernel refuses.
    pub async fn delete_link(&self, name: &str) -> Result<bool> {
        let Some(link) = self.link(name).await? else {
            return Ok(false);
        };
        match self.handle.link().del(link.header.index).execute().await {
            Ok(()) => Ok(true),
            Err(err) if is_missing(&err) => Ok(false),
            Err(source) => Err(Error::Netlink {
                op: format!("delete link {name}"),
                source,
            }),
        }
    }

    /// The interface holding `ip` and its MTU: the underlay the overlay rides on.
    ///
    /// # Errors
    /// [`Error::NoUnderlay`] when no interface has the address.
    pub async fn underlay(&self, ip: Ipv4Addr) -> Result<(u32, u32)> {
        let mut addresses = self.handle.address().get().execute();
        while let Some(address) = addresses
            .try_next()
            .await
            .map_err(netlink("list addresses"))?
        {
            let holds = address.attributes.iter().any(|attr| {
                matches!(attr, AddressAttribute::Local(IpAddr::V4(a)) | AddressAttribute::Address(IpAddr::V4(a)) if *a == ip)
            });
            if holds {
                let index = address.header.index;
                let mut links = self.handle.link().get().match_index(index).execute();
                let link = links
                    .try_next()
                    .await
                    .map_err(netlink("look up the underlay link"))?
                    .ok_or(Error::NoUnderlay { ip })?;
                return Ok((index, link_mtu(&link).unwrap_or(1500)));
            }
        }
        Err(Error::NoUnderlay { ip })
    }

    /// Creates or adopts bridge `name` with exactly the address `gateway/prefix`, MTU
    /// `mtu`, up; returns its index.
    ///
    /// # Errors
    /// When a netlink request fails.
    pub async fn ensure_bridge(&self, name: &str, gateway: Ipv4Network, mtu: u32) -> Result<u32> {
        if self.link(name).await?.is_none() {
            info!(bridge = name, "creating bridge");
            self.handle
                .link()
                .add(LinkBridge::new(name).mtu(mtu).up().build())
                .execute()
                .await
                .map_err(netlink(format!("create bridge {name}")))?;
        }
        let index = self.index(name).await?;
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).mtu(mtu).up().build())
            .execute()
            .await
            .map_err(netlink(format!("set bridge {name} up")))?;
        self.ensure_only_address(index, gateway).await?;
        Ok(index)
    }

    /// Gives link `index` the IPv4 address `address` and removes any other IPv4 one.
    async fn ensure_only_address(&self, index: u32, address: Ipv4Network) -> Result<()> {
        let mut present = false;
        let mut stale = Vec::new();
        let mut addresses = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        while let Some(message) = addresses
            .try_next()
            .await
            .map_err(netlink("list bridge addresses"))?
        {
            let ip = message.attributes.iter().find_map(|attr| match attr {
                AddressAttribute::Address(IpAddr::V4(ip)) => Some(*ip),
                _ => None,
            });
            match ip {
                Some(ip) if ip == address.ip() && message.header.prefix_len == address.prefix() => {
                    present = true
                }
                Some(_) => stale.push(message),
                None => {}
            }
        }
        for message in stale {
            debug!(index, "removing a stale bridge address");
            self.handle
                .address()
                .del(message)
                .execute()
                .await
                .map_err(netlink("remove a stale bridge address"))?;
        }
        if !present {
            self.handle
                .address()
                .add(index, IpAddr::V4(address.ip()), address.prefix())
                .execute()
                .await
                .map_err(netlink(format!("add address {address}")))?;
        }
        Ok(())
    }

    /// Creates or adopts VXLAN device `name` (VNI `vni`, UDP `port`, no learning) bound
    /// to `local` on link `underlay`, MTU `mtu`, up; returns its index and MAC. A device
    /// bound elsewhere is recreated with the same MAC, so peers' entries stay valid.
    ///
    /// # Errors
    /// When a netlink request fails.
    pub async fn ensure_vxlan(
        &self,
        name: &str,
        vni: u32,
        port: u16,
        underlay: u32,
        local: Ipv4Addr,
        mtu: u32,
    ) -> Result<(u32, Mac)> {
        let mut keep_mac = None;
        if let Some(link) = self.link(name).await? {
            let wanted = VxlanInfo {
                vni,
                local: Some(local),
                port: Some(port),
                underlay: Some(underlay),
            };
            if vxlan_info(&link) == Some(wanted) {
                let index = link.header.index;
                self.handle
                    .link()
                    .set(LinkUnspec::new_with_index(index).mtu(mtu).up().build())
                    .execute()
                    .await
                    .map_err(netlink(format!("set {name} up")))?;
                let mac = link_mac(&link).ok_or_else(|| Error::LinkGone {
                    name: name.to_string(),
                })?;
                return Ok((index, mac));
            }
            info!(
                device = name,
                ?local,
                "VXLAN device bound elsewhere; recreating it"
            );
            keep_mac = link_mac(&link);
            self.delete_link(name).await?;
        }
        let mut builder = LinkVxlan::new(name, vni)
            .dev(underlay)
            .local(local)
            .port(port)
            .learning(false)
            .mtu(mtu)
            .up();
        if let Some(mac) = keep_mac {
            builder = builder.address(mac.0.to_vec());
        }
        self.handle
            .link()
            .add(builder.build())
            .execute()
            .await
            .map_err(netlink(format!("create VXLAN device {name}")))?;
        let link = self.link(name).await?.ok_or_else(|| Error::LinkGone {
            name: name.to_string(),
        })?;
        let mac = link_mac(&link).ok_or_else(|| Error::LinkGone {
            name: name.to_string(),
        })?;
        info!(device = name, %local, %mac, "created VXLAN device");
        Ok((link.header.index, mac))
    }

    /// The routes, permanent neighbours and FDB remotes on link `index`.
    ///
    /// # Errors
    /// When a dump fails.
    pub async fn present(&self, index: u32) -> Result<Present> {
        let mut present = Present::default();
        let mut routes = self
            .handle
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute();
        while let Some(route) = routes.try_next().await.map_err(netlink("list routes"))? {
            let oif = route
                .attributes
                .iter()
                .any(|a| matches!(a, RouteAttribute::Oif(i) if *i == index));
            if !oif || route.header.kind != RouteType::Unicast {
                continue;
            }
            let destination = route.attributes.iter().find_map(|a| match a {
                RouteAttribute::Destination(RouteAddress::Inet(ip)) => Some(*ip),
                _ => None,
            });
            let gateway = route.attributes.iter().find_map(|a| match a {
                RouteAttribute::Gateway(RouteAddress::Inet(ip)) => Some(*ip),
                _ => None,
            });
            let destination = destination.unwrap_or(Ipv4Addr::UNSPECIFIED);
            if let Ok(destination) =
                Ipv4Network::new(destination, route.header.destination_prefix_length)
            {
                present.routes.insert(Route {
                    destination,
                    gateway,
                });
            }
        }
        let mut neighbours = self
            .handle
            .neighbours()
            .get()
            .set_address_family(AddressFamily::Inet)
            .execute();
        while let Some(entry) = neighbours
            .try_next()
            .await
            .map_err(netlink("list neighbours"))?
        {
            if entry.header.ifindex != index || entry.header.state != NeighbourState::Permanent {
                continue;
            }
            let ip = entry.attributes.iter().find_map(|a| match a {
                NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(*ip),
                _ => None,
            });
            let mac = entry.attributes.iter().find_map(|a| match a {
                NeighbourAttribute::LinkLayerAddress(bytes) => Mac::from_bytes(bytes),
                _ => None,
            });
            if let (Some(ip), Some(mac)) = (ip, mac) {
                present.neighbours.insert(ip, mac);
            }
        }
        let mut fdb = self
            .handle
            .neighbours()
            .get()
            .set_address_family(AddressFamily::Bridge)
            .execute();
        while let Some(entry) = fdb.try_next().await.map_err(netlink("list FDB"))? {
            if entry.header.ifindex != index {
                continue;
            }
            // In the bridge family the remote comes back as raw bytes.
            let dst = entry.attributes.iter().find_map(|a| match a {
                NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(*ip),
                NeighbourAttribute::Destination(NeighbourAddress::Other(bytes)) => {
                    <[u8; 4]>::try_from(bytes.as_slice())
                        .ok()
                        .map(Ipv4Addr::from)
                }
                _ => None,
            });
            let mac = entry.attributes.iter().find_map(|a| match a {
                NeighbourAttribute::LinkLayerAddress(bytes) => Mac::from_bytes(bytes),
                _ => None,
            });
            // The all-zero MAC is the default remote of a device with a `remote`; not ours.
            if let (Some(dst), Some(mac)) = (dst, mac) {
                if mac.0 != [0; 6] {
                    present.fdb.insert(mac, dst);
                }
            }
        }
        Ok(present)
    }

    /// Carries out one [`Change`] on link `index`; deleting what is gone already is fine.
    ///
    /// # Errors
    /// When the kernel refuses.
    pub async fn apply(&self, index: u32, change: &Change) -> Result<()> {
        let op = format!("{change:?}");
        let result =
            match change {
                Change::SetRoute(route) => {
                    self.handle
                        .route()
                        .add(route_message(index, route))
                        .replace()
                        .execute()
                        .await
                }
                Change::DeleteRoute(route) => {
                    // As `ip route del`: any protocol and scope, so a route someone
                    // else added (protocol boot, …) goes too.
                    let mut message = route_message(index, route);
                    message.header.protocol = RouteProtocol::Unspec;
                    message.header.scope = RouteScope::NoWhere;
                    self.handle.route().del(message).execute().await
                }
                Change::SetNeighbour { ip, mac } => {
                    self.handle
                        .neighbours()
                        .add(index, IpAddr::V4(*ip))
                        .link_layer_address(&mac.0)
                        .state(NeighbourState::Permanent)
                        .replace()
                        .execute()
                        .await
                }
                Change::DeleteNeighbour { ip, .. } => {
                    let mut message = NeighbourMessage::default();
                    message.header.family = AddressFamily::Inet;
                    message.header.ifindex = index;
                    message
                        .attributes
                        .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(*ip)));
                    self.handle.neighbours().del(message).execute().await
                }
                Change::SetFdb { mac, dst } => {
                    let mut request = self
                        .handle
                        .neighbours()
                        .add_bridge(index, &mac.0)
                        .flags(NeighbourFlags::Own)
                        .state(NeighbourState::Permanent)
                        .replace();
                    request
                        .message_mut()
                        .attributes
                        .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
                            *dst,
                        )));
                    request.execute().await
                }
                Change::DeleteFdb { mac, dst } => {
                    let mut message = NeighbourMessage::default();
                    message.header.family = AddressFamily::Bridge;
                    message.header.ifindex = index;
                    message.header.flags = NeighbourFlags::Own;
                    message
                        .attributes
                        .push(NeighbourAttribute::LinkLayerAddress(mac.0.to_vec()));
                    message.attributes.push(NeighbourAttribute::Destination(
                        NeighbourAddress::Inet(*dst),
                    ));
                    self.handle.neighbours().del(message).execute().await
                }
            };
        match result {
            Ok(()) => Ok(()),
            Err(err)
                if is_missing(&err)
                    && matches!(
                        change,
                        Change::DeleteRoute(_)
                            | Change::DeleteNeighbour { .. }
                            | Change::DeleteFdb { .. }
                    ) =>
            {
                Ok(())
            }
            Err(source) => Err(Error::Netlink { op, source }),
        }
    }

    /// Creates veth pair `host`–`peer` (replacing a leftover `host`) with `peer` made
    /// directly inside the namespace at `netns`; `host` stays down, off any bridge (see
    /// [`Netlink::attach_to_bridge`]).
    ///
    /// The peer is born in the pod's namespace rather than moved there: moving a device
    /// between namespaces waits for an RCU grace period under the kernel's global
    /// rtnl lock, about 20 ms that every other network change on the machine waits
    /// behind (30 pods starting at once on three lab nodes queued ~600 ms on it).
    ///
    /// # Errors
    /// When the namespace cannot be opened or a netlink request fails.
    pub async fn create_veth(&self, host: &str, peer: &str, mtu: u32, netns: &Path) -> Result<()> {
        self.delete_link(host).await?;
        let namespace = std::fs::File::open(netns).map_err(|source| Error::OpenNetns {
            path: netns.to_path_buf(),
            source,
        })?;
        let peer_message = LinkMessageBuilder::<LinkUnspec>::new()
            .name(peer.to_string())
            .mtu(mtu)
            .setns_by_fd(namespace.as_raw_fd())
            .build();
        self.handle
            .link()
            .add(
                LinkVeth::new(host, peer)
                    .mtu(mtu)
                    .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_message)))
                    .build(),
            )
            .execute()
            .await
            .map_err(netlink(format!(
                "create veth {host} into {}",
                netns.display()
            )))?;
        Ok(())
    }

    /// Puts the host end `host` of a pod's veth on bridge `bridge`, with hairpin and
    /// without IPv6 addresses, and up.
    ///
    /// # Errors
    /// When a netlink request fails.
    pub async fn attach_to_bridge(&self, host: &str, bridge: u32, mtu: u32) -> Result<()> {
        let host_index = self.index(host).await?;
        self.handle
            .link()
            .set(
                LinkUnspec::new_with_index(host_index)
                    .append_extra_attribute(no_ipv6_addresses())
                    .build(),
            )
            .execute()
            .await
            .map_err(netlink(format!("keep IPv6 addresses off {host}")))?;
        self.handle
            .link()
            .set(
                LinkUnspec::new_with_index(host_index)
                    .controller(bridge)
                    .mtu(mtu)
                    .up()
                    .build(),
            )
            .execute()
            .await
            .map_err(netlink(format!("attach {host} to the bridge")))?;
        // Hairpin: a pod's packets to its own Service may come back out of its port.
        self.handle
            .link()
            .set_port(LinkBridgePort::new(host_index).hairpin(true).build())
            .execute()
            .await
            .map_err(netlink(format!("turn on hairpin on {host}")))?;
        Ok(())
    }
}

fn route_message(index: u32, route: &Route) -> RouteMessage {
    let mut builder = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(route.destination.network(), route.destination.prefix())
        .output_interface(index)
        .onlink();
    if let Some(gateway) = route.gateway {
        builder = builder.gateway(gateway);
    }
    builder.build()
}

/// Turns on IPv4 forwarding in the calling thread's network namespace.
///
/// # Errors
/// When the sysctl cannot be written.
pub fn enable_forwarding() -> Result<()> {
    std::fs::write("/proc/sys/net/ipv4/ip_forward", b"1").map_err(Error::Forwarding)
}

/// The link attribute that keeps the kernel from giving a link IPv6 addresses
/// (`addr_gen_mode none`), set before the link goes up.
///
/// The pod network is IPv4-only. A veth left to IPv6 gets a link-local address,
/// duplicate address detection and router solicitations from the kernel's
/// `ipv6_addrconf` worker, which holds the global rtnl lock while it works: with a few
/// dozen pods starting, that worker was the busiest thing on the machine. (Turning
/// `disable_ipv6` on per device is no better: that sysctl spins on the same lock.) The
/// pod's `lo` keeps `::1`.
fn no_ipv6_addresses() -> LinkAttribute {
    LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet6(vec![AfSpecInet6::AddrGenMode(
        In6AddrGenMode::None,
    )])])
}

/// What a pod's `eth0` gets.
#[derive(Debug, Clone)]
pub struct PodInterface {
    /// The name the veth end has when it arrives in the namespace.
    pub temporary_name: String,
    pub address: Ipv4Network,
    pub gateway: Ipv4Addr,
    pub mtu: u32,
}

/// Runs `work` on a fresh thread inside the network namespace at `netns`, on a
/// current-thread tokio runtime, and returns its result. The thread ends afterwards, so
/// no thread of the agent stays in a pod's namespace.
///
/// # Errors
/// When the namespace cannot be entered, or what `work` returns.
pub async fn in_netns<T, F, Fut>(netns: &Path, work: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T>>,
{
    let path = netns.to_path_buf();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("rkube-netns".to_string())
        .spawn(move || {
            let _ = tx.send(run_in_netns(&path, work));
        })
        .map_err(Error::Runtime)?;
    rx.await.map_err(|_| Error::Thread)?
}

fn run_in_netns<T, F, Fut>(path: &Path, work: F) -> Result<T>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let namespace = std::fs::File::open(path).map_err(|source| Error::OpenNetns {
        path: path.to_path_buf(),
        source,
    })?;
    nix::sched::setns(&namespace, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|source| {
        Error::Setns {
            path: path.to_path_buf(),
            source,
        }
    })?;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(Error::Runtime)?
        .block_on(work())
}

/// Inside the pod's namespace at `netns`: renames the arrived veth end to `eth0`, gives
/// it its address and MTU, brings it and `lo` up and adds the default route via the
/// gateway.
///
/// # Errors
/// When the namespace cannot be entered or a netlink request fails.
pub async fn configure_pod(netns: &Path, interface: PodInterface) -> Result<()> {
    in_netns(netns, move || async move {
        let netlink = Netlink::connect()?;
        let index = netlink.index(&interface.temporary_name).await?;
        netlink
            .handle
            .link()
            .set(
                LinkUnspec::new_with_index(index)
                    .name("eth0".to_string())
                    .mtu(interface.mtu)
                    .build(),
            )
            .execute()
            .await
            .map_err(netlink_op("rename the pod's interface to eth0"))?;
        netlink
            .handle
            .link()
            .set(
                LinkUnspec::new_with_index(index)
                    .append_extra_attribute(no_ipv6_addresses())
                    .build(),
            )
            .execute()
            .await
            .map_err(netlink_op("keep IPv6 addresses off eth0"))?;
        netlink
            .handle
            .address()
            .add(
                index,
                IpAddr::V4(interface.address.ip()),
                interface.address.prefix(),
            )
            .replace()
            .execute()
            .await
            .map_err(netlink_op("address eth0"))?;
        netlink
            .handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(netlink_op("set eth0 up"))?;
        let lo = netlink.index("lo").await?;
        netlink
            .handle
            .link()
            .set(LinkUnspec::new_with_index(lo).up().build())
            .execute()
            .await
            .map_err(netlink_op("set lo up"))?;
        netlink
            .handle
            .route()
            .add(
                RouteMessageBuilder::<Ipv4Addr>::new()
                    .gateway(interface.gateway)
                    .output_interface(index)
                    .build(),
            )
            .replace()
            .execute()
            .await
            .map_err(netlink_op("add the default route"))?;
        Ok(())
    })
    .await
}

fn netlink_op(op: &'static str) -> impl FnOnce(rtnetlink::Error) -> Error {
    netlink(op)
}

/// The IPv4 address of `eth0` in the namespace at `netns`, if it has one.
///
/// # Errors
/// When the namespace cannot be entered or the kernel asked.
pub async fn pod_address(netns: &Path) -> Result<Option<Ipv4Addr>> {
    in_netns(netns, || async {
        let netlink = Netlink::connect()?;
        let Some(link) = netlink.link("eth0").await? else {
            return Ok(None);
        };
        let mut addresses = netlink
            .handle
            .address()
            .get()
            .set_link_index_filter(link.header.index)
            .execute();
        while let Some(message) = addresses
            .try_next()
            .await
            .map_err(netlink_op("list eth0 addresses"))?
        {
            for attr in &message.attributes {
                if let AddressAttribute::Address(IpAddr::V4(ip)) = attr {
                    return Ok(Some(*ip));
                }
            }
        }
        Ok(None)
    })
    .await
}

/// The names of every link whose name starts with `prefix`.
///
/// # Errors
/// When the kernel cannot be asked.
pub async fn links_with_prefix(netlink: &Netlink, prefix: &str) -> Result<BTreeSet<String>> {
    let mut found = BTreeSet::new();
    let mut links = netlink.handle.link().get().execute();
    while let Some(link) = links.try_next().await.map_err(netlink_op("list links"))? {
        if let Some(name) = link_name(&link) {
            if name.starts_with(prefix) {
                found.insert(name.to_string());
            }
        }
    }
    Ok(found)
}

/// Link names by index, for log messages and tests.
///
/// # Errors
/// When the kernel cannot be asked.
pub async fn link_names(netlink: &Netlink) -> Result<BTreeMap<u32, String>> {
    let mut names = BTreeMap::new();
    let mut links = netlink.handle.link().get().execute();
    while let Some(link) = links.try_next().await.map_err(netlink_op("list links"))? {
        if let Some(name) = link_name(&link) {
            names.insert(link.header.index, name.to_string());
        }
    }
    Ok(names)
}
