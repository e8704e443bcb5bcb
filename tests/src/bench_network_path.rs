//! The data path figures of `make bench-network` (root): pod-to-pod over the VXLAN
//! overlay against node-to-node over the underlay, on the private lab of
//! [`crate::netlab`] (an underlay bridge in its own namespace, node namespaces on it)
//! with the node agent's real [`rkube_nodeagent::network::PodNetwork`] on two nodes and one "pod" namespace
//! attached to each.
//!
//! - `BENCH network.tcp_ratio <pct> %`: TCP throughput pod-to-pod as a percentage of
//!   node-to-node (`iperf3`, run in the namespaces with `ip netns exec`; medians of
//!   alternating runs, as the machine is shared);
//! - `BENCH network.rr_p99_overhead <ms> ms`: the p99 of 1-byte TCP request/response
//!   round trips pod-to-pod minus node-to-node, measured from threads that `setns` into
//!   the namespaces;
//! - `BENCH network.tcp_ratio_host_veth_rps <pct> %` (no target): the ratio again after
//!   turning RPS on for the host ends of the pods' veths, which the agent does not do
//!   (yet).
//!
//! Everything is made under names unique to the pid and removed on drop, even on errors.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rkube_nodeagent::network::overlay::Peer;
use rkube_nodeagent::network::NetworkConfig;

use crate::netlab::{lab_ip, Lab, Netns, NodeNetwork};

/// How long each iperf3 run lasts.
const IPERF_SECONDS: u32 = 3;
/// Alternating node-to-node / pod-to-pod iperf3 runs per figure (the median counts).
const ROUNDS: usize = 3;
/// Round trips per latency run.
const ROUND_TRIPS: usize = 10_000;

/// The figures, printed as `BENCH` lines by [`run`].
#[derive(Debug, Clone, Copy)]
pub struct PathFigures {
    pub underlay_gbps: f64,
    pub overlay_gbps: f64,
    pub underlay_p99_ms: f64,
    pub overlay_p99_ms: f64,
}

/// Builds the lab, measures, prints the `BENCH` lines (and the raw figures on stderr).
///
/// # Errors
/// When `iperf3` is missing, the lab or the pod network cannot be set up, or a
/// measurement fails.
pub fn run() -> anyhow::Result<PathFigures> {
    which("iperf3")
        .context("iperf3 is needed (apt-get install iperf3; make bench-network does)")?;
    let pid = std::process::id();
    let state = tempfile::tempdir().context("state dir")?;
    let lab = Lab::new(pid);
    let pod_net = 100 + (pid % 100) as u8;
    let mut networks = Vec::new();
    for i in 0..2u8 {
        let config = NetworkConfig {
            state_dir: state.path().join(format!("node{i}")),
            pod_cidr: format!("10.{pod_net}.{}.0/24", i + 1)
                .parse()
                .context("pod CIDR")?,
            underlay_ip: lab_ip(lab.underlay_net, 10 + i),
        };
        networks.push(
            NodeNetwork::start(&lab.nodes[usize::from(i)].path(), config)
                .with_context(|| format!("start the pod network of node {i}"))?,
        );
    }
    let pods = [
        Netns::add(format!("rkbp{pid}a")),
        Netns::add(format!("rkbp{pid}b")),
    ];
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let peers: Vec<Peer> = networks
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let local = n.network.local();
            Peer {
                node: format!("node-{i}"),
                pod_cidr: local.pod_cidr,
                vtep_mac: local.vtep_mac,
                underlay_ip: local.underlay_ip,
            }
        })
        .collect();
    let mut pod_ips = Vec::new();
    for (i, network) in networks.iter().enumerate() {
        let others: Vec<Peer> = peers
            .iter()
            .filter(|p| p.node != format!("node-{i}"))
            .cloned()
            .collect();
        runtime
            .block_on(network.network.sync_peers(&others))
            .with_context(|| format!("peers of node {i}"))?;
        let ip = runtime
            .block_on(
                network
                    .network
                    .attach(&format!("bench{i}"), &pods[i].path()),
            )
            .with_context(|| format!("attach the pod of node {i}"))?;
        pod_ips.push(ip);
    }
    eprintln!(
        "overlay MTU {}, pods {pod_ips:?}",
        networks[0].network.local().mtu
    );
    let node_paths = [lab.nodes[0].path(), lab.nodes[1].path()];
    let pod_paths = [pods[0].path(), pods[1].path()];
    let underlay_b = lab_ip(lab.underlay_net, 11);

    let (underlay_gbps, overlay_gbps) = interleaved(
        (&lab.nodes[0].name, &lab.nodes[1].name, underlay_b),
        (&pods[0].name, &pods[1].name, pod_ips[1]),
    )?;
    let port = 20000 + (pid % 20000) as u16;
    let underlay_p99_ms = round_trip_p99(&node_paths[0], &node_paths[1], underlay_b, port)
        .context("round trips node to node")?;
    let overlay_p99_ms = round_trip_p99(&pod_paths[0], &pod_paths[1], pod_ips[1], port + 1)
        .context("round trips pod to pod")?;
    let figures = PathFigures {
        underlay_gbps,
        overlay_gbps,
        underlay_p99_ms,
        overlay_p99_ms,
    };
    eprintln!("{figures:?}");
    println!(
        "BENCH network.tcp_ratio {:.1} %",
        100.0 * overlay_gbps / underlay_gbps
    );
    println!(
        "BENCH network.rr_p99_overhead {:.3} ms",
        overlay_p99_ms - underlay_p99_ms
    );
    // Not a target: the same ratio with RPS on the host ends of the pods' veths, so
    // that the forwarding and encapsulation of a pod's packets may leave the sending
    // pod's CPU; evidence for a change the agent does not make (yet).
    match veth_rps(&[&lab.nodes[0].name, &lab.nodes[1].name]) {
        Ok(()) => {
            let (underlay, overlay) = interleaved(
                (&lab.nodes[0].name, &lab.nodes[1].name, underlay_b),
                (&pods[0].name, &pods[1].name, pod_ips[1]),
            )?;
            println!(
                "BENCH network.tcp_ratio_host_veth_rps {:.1} %",
                100.0 * overlay / underlay
            );
        }
        Err(err) => eprintln!("skipping the veth RPS variant: {err:#}"),
    }
    // Pods before the networks, the networks before the lab (drop order is reversed
    // declaration order: `pods`, `networks`, `lab`, `state`).
    drop(pods);
    drop(networks);
    drop(lab);
    Ok(figures)
}

fn which(program: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
        .with_context(|| format!("{program} not found"))
}

/// A child process killed (and reaped) on drop.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Medians in Gbit/s of [`ROUNDS`] node-to-node and pod-to-pod `iperf3` runs, taken
/// alternately so that both see the same load on a shared machine; the raw figures go
/// to stderr. Each argument is (client namespace, server namespace, server address).
fn interleaved(
    underlay: (&str, &str, Ipv4Addr),
    overlay: (&str, &str, Ipv4Addr),
) -> anyhow::Result<(f64, f64)> {
    let mut under = Vec::with_capacity(ROUNDS);
    let mut over = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        under.push(iperf(underlay.0, underlay.1, underlay.2).context("iperf3 node to node")?);
        over.push(iperf(overlay.0, overlay.1, overlay.2).context("iperf3 pod to pod")?);
    }
    eprintln!("iperf3 Gbit/s node to node {under:.2?}, pod to pod {over:.2?}");
    Ok((median(under), median(over)))
}

/// The median of `values` (NaN when empty).
fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

/// Spreads receive processing over every CPU (RPS) on each veth in the node namespaces
/// `nodes` except the underlay's `eth0`: the host ends of the pods' veths (bench setup,
/// through a sysfs that `ip netns exec` mounts for the namespace).
fn veth_rps(nodes: &[&String]) -> anyhow::Result<()> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get().min(32));
    let mask = format!("{:x}", (1u64 << cpus) - 1);
    for node in nodes {
        let out = Command::new("ip")
            .args(["-n", node, "-o", "link", "show", "type", "veth"])
            .output()
            .context("list veths")?;
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            // "7: name@if6: <…": the name sits between the first ": " and the "@".
            let Some(name) = line.split(": ").nth(1).and_then(|n| n.split('@').next()) else {
                continue;
            };
            if name == "eth0" {
                continue;
            }
            let status = Command::new("ip")
                .args(["netns", "exec", node, "sh", "-c"])
                .arg(format!(
                    "echo {mask} > /sys/class/net/{name}/queues/rx-0/rps_cpus"
                ))
                .status()
                .context("write rps_cpus")?;
            anyhow::ensure!(status.success(), "rps_cpus of {name} in {node}");
        }
    }
    Ok(())
}

/// Receiver-side throughput in Gbit/s of an `iperf3` TCP run from namespace `client`
/// to a server in namespace `server` at `server_ip`.
fn iperf(client: &str, server: &str, server_ip: Ipv4Addr) -> anyhow::Result<f64> {
    let _server = Reaped(
        Command::new("ip")
            .args(["netns", "exec", server, "iperf3", "-s", "-1"])
            .arg("-B")
            .arg(server_ip.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start the iperf3 server")?,
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let out = Command::new("ip")
            .args(["netns", "exec", client, "iperf3", "-J", "-c"])
            .arg(server_ip.to_string())
            .args(["-t", &IPERF_SECONDS.to_string()])
            .output()
            .context("run the iperf3 client")?;
        if out.status.success() {
            let report: serde_json::Value =
                serde_json::from_slice(&out.stdout).context("iperf3 JSON")?;
            if let Some(bps) = report["end"]["sum_received"]["bits_per_second"].as_f64() {
                return Ok(bps / 1e9);
            }
            if Instant::now() > deadline {
                bail!(
                    "iperf3 -c {server_ip} in {client}: no end.sum_received.bits_per_second in {}",
                    String::from_utf8_lossy(&out.stdout)
                );
            }
        } else if Instant::now() > deadline {
            bail!(
                "iperf3 -c {server_ip} in {client}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // The server may not listen yet.
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn enter(path: &Path) -> anyhow::Result<()> {
    let file = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
        .with_context(|| format!("setns {}", path.display()))
}

/// The p99 in ms of [`ROUND_TRIPS`] 1-byte request/response round trips over one TCP
/// connection (`TCP_NODELAY`) from a thread in `from` to an echo thread in `to`.
fn round_trip_p99(from: &Path, to: &Path, to_ip: Ipv4Addr, port: u16) -> anyhow::Result<f64> {
    let addr = SocketAddr::from((to_ip, port));
    let (bound_tx, bound_rx) = std::sync::mpsc::channel();
    let to = to.to_path_buf();
    let echo = std::thread::spawn(move || -> anyhow::Result<()> {
        let bound = enter(&to)
            .and_then(|()| TcpListener::bind(addr).with_context(|| format!("bind {addr}")));
        let listener = match bound {
            Ok(listener) => {
                let _ = bound_tx.send(Ok(()));
                listener
            }
            Err(err) => {
                let _ = bound_tx.send(Err(format!("{err:#}")));
                return Err(err);
            }
        };
        let (mut stream, _) = listener.accept().context("accept")?;
        stream.set_nodelay(true).context("nodelay")?;
        let mut byte = [0u8; 1];
        loop {
            match stream.read(&mut byte) {
                Ok(0) => return Ok(()),
                Ok(_) => stream.write_all(&byte).context("echo")?,
                Err(err) => return Err(err).context("read"),
            }
        }
    });
    match bound_rx.recv_timeout(Duration::from_secs(5)) {
        Ok(Ok(())) => {}
        Ok(Err(err)) => bail!("echo server: {err}"),
        Err(_) => bail!("the echo server did not start"),
    }
    let from = from.to_path_buf();
    let client = std::thread::spawn(move || -> anyhow::Result<Vec<Duration>> {
        enter(&from)?;
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .with_context(|| format!("connect {addr}"))?;
        stream.set_nodelay(true).context("nodelay")?;
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .context("timeout")?;
        let mut times = Vec::with_capacity(ROUND_TRIPS + 100);
        let mut byte = [7u8; 1];
        // 100 warm-up round trips are not counted.
        for i in 0..ROUND_TRIPS + 100 {
            let start = Instant::now();
            stream.write_all(&byte).context("send")?;
            stream.read_exact(&mut byte).context("receive")?;
            if i >= 100 {
                times.push(start.elapsed());
            }
        }
        Ok(times)
    });
    let times = client
        .join()
        .map_err(|_| anyhow::anyhow!("the client thread panicked"))??;
    echo.join()
        .map_err(|_| anyhow::anyhow!("the echo thread panicked"))??;
    Ok(percentile_ms(times, 0.99))
}

/// The `q` quantile of `times` in ms (nearest rank).
fn percentile_ms(mut times: Vec<Duration>, q: f64) -> f64 {
    if times.is_empty() {
        return f64::NAN;
    }
    times.sort();
    let rank = ((q * times.len() as f64).ceil() as usize).clamp(1, times.len());
    times[rank - 1].as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(Vec::new()).is_nan());
    }

    #[test]
    fn percentile_is_nearest_rank() {
        let times: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile_ms(times.clone(), 0.99), 99.0);
        assert_eq!(percentile_ms(times, 1.0), 100.0);
        assert!(percentile_ms(Vec::new(), 0.99).is_nan());
    }
}
