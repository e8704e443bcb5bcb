//! The network benchmark (`make bench-network`): for now the time to program the service
//! proxy's rules for 1,000 Services × 10 endpoints — build the objects' service ports,
//! render the nftables script and apply it with `nft -f -` in a scratch network
//! namespace (as root). Prints `BENCH network.rules_1000svc <ms> ms` (target ≤ 1 s): the
//! first apply into an empty namespace and a full replacement of that table, the slower
//! of the two; the median of a few runs.

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, Service, ServicePort, ServiceSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use rkube_nodeagent::proxy::apply::{Nft, RulesetApplier};
use rkube_nodeagent::proxy::ruleset::{self, Ranges};

const SERVICES: usize = 1_000;
const ENDPOINTS: usize = 10;
const RUNS: usize = 5;

/// A scratch network namespace, deleted on drop.
struct Netns(String);

impl Netns {
    fn new(name: String) -> anyhow::Result<Netns> {
        let status = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .context("run ip netns add")?;
        anyhow::ensure!(
            status.success(),
            "ip netns add {name} failed (are we root?)"
        );
        Ok(Netns(name))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn objects() -> (Vec<Arc<Service>>, Vec<Arc<Endpoints>>) {
    let meta = |i: usize| ObjectMeta {
        name: Some(format!("svc-{i}")),
        namespace: Some(format!("ns-{}", i % 20)),
        ..Default::default()
    };
    let mut services = Vec::with_capacity(SERVICES);
    let mut endpoints = Vec::with_capacity(SERVICES);
    for i in 0..SERVICES {
        services.push(Arc::new(Service {
            metadata: meta(i),
            spec: Some(ServiceSpec {
                cluster_ip: Some(format!("10.96.{}.{}", i / 250, i % 250 + 1)),
                type_: Some(if i % 10 == 0 { "NodePort" } else { "ClusterIP" }.to_string()),
                ports: Some(vec![ServicePort {
                    name: Some("http".to_string()),
                    port: 80,
                    node_port: (i % 10 == 0).then_some(30_000 + i as i32),
                    ..Default::default()
                }]),
                session_affinity: (i % 7 == 0).then(|| "ClientIP".to_string()),
                ..Default::default()
            }),
            ..Default::default()
        }));
        endpoints.push(Arc::new(Endpoints {
            metadata: meta(i),
            subsets: Some(vec![EndpointSubset {
                addresses: Some(
                    (0..ENDPOINTS)
                        .map(|e| EndpointAddress {
                            ip: format!(
                                "10.244.{}.{}",
                                (i * ENDPOINTS + e) / 250,
                                (i * ENDPOINTS + e) % 250 + 2
                            ),
                            ..Default::default()
                        })
                        .collect(),
                ),
                ports: Some(vec![EndpointPort {
                    name: Some("http".to_string()),
                    port: 8080,
                    ..Default::default()
                }]),
                ..Default::default()
            }]),
        }));
    }
    (services, endpoints)
}

/// Generates and applies the whole table once.
fn program(
    nft: &Nft,
    ranges: &Ranges,
    services: &[Arc<Service>],
    endpoints: &[Arc<Endpoints>],
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let ports = ruleset::service_ports(services, endpoints);
    anyhow::ensure!(ports.len() == SERVICES, "{} service ports", ports.len());
    let script = ruleset::render(ranges, &ports);
    let rendered = started.elapsed();
    if let Some(path) = std::env::var_os("BENCH_NETWORK_DUMP") {
        std::fs::write(path, &script).context("dump the script")?;
    }
    nft.apply(&script).context("apply the ruleset")?;
    eprintln!(
        "generated {} bytes in {:?}, applied in {:?}",
        script.len(),
        rendered,
        started.elapsed() - rendered
    );
    Ok(started.elapsed())
}

fn main() -> anyhow::Result<()> {
    let ranges = Ranges {
        cluster_cidr: "10.244.0.0/16".parse().context("cluster cidr")?,
        service_cidr: "10.96.0.0/12".parse().context("service cidr")?,
    };
    let (services, endpoints) = objects();
    let mut times = Vec::new();
    for run in 0..RUNS {
        let netns = Netns::new(format!("rkbench-{}-{run}", std::process::id()))?;
        let nft = Nft::in_netns(netns.0.clone());
        let first = program(&nft, &ranges, &services, &endpoints)?;
        let replace = program(&nft, &ranges, &services, &endpoints)?;
        times.push(first.max(replace));
    }
    times.sort();
    let median = times[times.len() / 2];
    println!(
        "BENCH network.rules_1000svc {:.1} ms",
        median.as_secs_f64() * 1000.0
    );
    rkube_tests::bench_network_path::run().context("the data path figures")?;
    Ok(())
}
