//! A private network lab for the pod network's root tests: named network namespaces
//! that go away on drop ([`Netns`]), an "underlay" namespace with a bridge and three
//! "node" namespaces on it ([`Lab`]), and TCP round trips between namespaces
//! ([`tcp`]). Nothing here touches the host's own network.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Runs `ip` with `args`, panicking with its stderr when it fails (test setup only).
pub fn ip(args: &[&str]) {
    let output = Command::new("ip")
        .args(args)
        .output()
        .expect("run the ip command");
    assert!(
        output.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A named network namespace (`/run/netns/<name>`), deleted on drop.
pub struct Netns {
    /// The name under `/run/netns`.
    pub name: String,
}

impl Netns {
    pub fn add(name: String) -> Netns {
        // A leftover of an earlier run with the same pid goes first.
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        ip(&["netns", "add", &name]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        Netns { name }
    }

    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Runs `work` on a fresh thread inside the namespace at `path`.
pub fn in_ns<T: Send + 'static>(path: &Path, work: impl FnOnce() -> T + Send + 'static) -> T {
    let path = path.to_path_buf();
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("open netns");
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        work()
    })
    .join()
    .expect("namespace thread")
}

/// A TCP round trip from inside `from` to a listener inside `to` at `to_ip`.
pub fn tcp(from: &Path, to: &Path, to_ip: Ipv4Addr, port: u16) -> Result<(), String> {
    let (bound_tx, bound_rx) = mpsc::channel();
    let listener = {
        let path = to.to_path_buf();
        std::thread::spawn(move || -> Result<(), String> {
            let file = std::fs::File::open(&path).map_err(|e| e.to_string())?;
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| e.to_string())?;
            let listener = TcpListener::bind(SocketAddr::from((to_ip, port)))
                .map_err(|e| format!("bind {to_ip}:{port}: {e}"))?;
            listener.set_nonblocking(true).map_err(|e| e.to_string())?;
            let _ = bound_tx.send(());
            let deadline = Instant::now() + Duration::from_secs(4);
            loop {
                match listener.accept() {
                    Ok((mut stream, _)) => {
                        stream.set_nonblocking(false).map_err(|e| e.to_string())?;
                        stream
                            .set_read_timeout(Some(Duration::from_secs(3)))
                            .map_err(|e| e.to_string())?;
                        let mut buf = [0u8; 5];
                        stream.read_exact(&mut buf).map_err(|e| e.to_string())?;
                        stream.write_all(&buf).map_err(|e| e.to_string())?;
                        return Ok(());
                    }
                    Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                        if Instant::now() > deadline {
                            return Err("nothing connected".to_string());
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(err) => return Err(err.to_string()),
                }
            }
        })
    };
    if bound_rx.recv_timeout(Duration::from_secs(5)).is_err() {
        return Err(format!(
            "listener failed: {:?}",
            listener.join().unwrap_or(Err("panicked".to_string()))
        ));
    }
    let connected = in_ns(from, move || -> Result<(), String> {
        let mut stream =
            TcpStream::connect_timeout(&SocketAddr::from((to_ip, port)), Duration::from_secs(2))
                .map_err(|e| format!("connect {to_ip}:{port}: {e}"))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(3)))
            .map_err(|e| e.to_string())?;
        stream.write_all(b"hello").map_err(|e| e.to_string())?;
        let mut buf = [0u8; 5];
        stream.read_exact(&mut buf).map_err(|e| e.to_string())?;
        if &buf != b"hello" {
            return Err(format!("echo was {buf:?}"));
        }
        Ok(())
    });
    let served = listener
        .join()
        .unwrap_or(Err("listener panicked".to_string()));
    connected.and(served.map_err(|e| format!("listener: {e}")))
}

/// The lab: underlay namespace with a bridge, three node namespaces on it.
pub struct Lab {
    pub underlay: Netns,
    pub nodes: Vec<Netns>,
    pub underlay_net: [u8; 3],
}

impl Lab {
    pub fn new(pid: u32) -> Lab {
        let underlay = Netns::add(format!("rku{pid}"));
        ip(&["-n", &underlay.name, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &underlay.name, "link", "set", "br0", "up"]);
        let underlay_net = [10, 99, (pid % 250) as u8];
        let mut nodes = Vec::new();
        for (i, letter) in ["a", "b", "c"].iter().enumerate() {
            let node = Netns::add(format!("rkn{pid}{letter}"));
            let port = format!("u{letter}");
            ip(&[
                "-n",
                &underlay.name,
                "link",
                "add",
                &port,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &node.name,
            ]);
            ip(&[
                "-n",
                &underlay.name,
                "link",
                "set",
                &port,
                "master",
                "br0",
                "up",
            ]);
            let address = format!("{}/24", lab_ip(underlay_net, 10 + i as u8));
            ip(&["-n", &node.name, "addr", "add", &address, "dev", "eth0"]);
            ip(&["-n", &node.name, "link", "set", "eth0", "up"]);
            nodes.push(node);
        }
        Lab {
            underlay,
            nodes,
            underlay_net,
        }
    }
}

/// Host `host` of the /24 `net`.
pub fn lab_ip(net: [u8; 3], host: u8) -> Ipv4Addr {
    Ipv4Addr::new(net[0], net[1], net[2], host)
}

/// One node's [`PodNetwork`], built and kept on a thread inside the node's namespace
/// (its netlink socket lives there); its methods may be called from any runtime.
/// Stopped on drop.
pub struct NodeNetwork {
    pub network: std::sync::Arc<rkube_nodeagent::network::PodNetwork>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl NodeNetwork {
    /// Runs node start-up for `config` inside the namespace at `netns`.
    ///
    /// # Errors
    /// When the namespace cannot be entered or start-up fails.
    pub fn start(
        netns: &Path,
        config: rkube_nodeagent::network::NetworkConfig,
    ) -> anyhow::Result<NodeNetwork> {
        let path = netns.to_path_buf();
        let (ready_tx, ready_rx) = mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let started = (|| -> anyhow::Result<tokio::runtime::Runtime> {
                let file = std::fs::File::open(&path)?;
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)?;
                Ok(tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?)
            })();
            let runtime = match started {
                Ok(runtime) => runtime,
                Err(err) => {
                    let _ = ready_tx.send(Err(err));
                    return;
                }
            };
            runtime.block_on(async move {
                match rkube_nodeagent::network::PodNetwork::start(config).await {
                    Ok(network) => {
                        let _ = ready_tx.send(Ok(std::sync::Arc::new(network)));
                        // Keep driving the netlink connection until stopped.
                        let _ = stopped.await;
                    }
                    Err(err) => {
                        let _ = ready_tx.send(Err(err.into()));
                    }
                }
            });
        });
        let network = ready_rx
            .recv()
            .map_err(|_| anyhow::anyhow!("the node network thread died"))??;
        Ok(NodeNetwork {
            network,
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for NodeNetwork {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
