//! `make bench-scheduler`: a scheduler_perf-style benchmark of rkube-scheduler with
//! simulated nodes (Node objects, no agent).
//!
//! For each workload it prints, as `BENCH <name> <value> <unit>` lines:
//! - `scheduler.<workload>.algo` (pods/s): the in-process algorithm alone — cache,
//!   snapshot, PreFilter/Filter/Score, assume — with no API;
//! - `scheduler.<workload>.e2e` (pods/s): the scheduler against a real apiserver and
//!   etcd, from the first to the last bind persisted (the pods and the existing pods
//!   are created before the scheduler starts, so creation is not measured);
//! - `scheduler.<workload>.scored` (percent): feasible nodes scored per pod, as a share
//!   of all nodes (the in-process run).
//!
//! Workloads (5,000 nodes each): `basic` (10,000 plain pods), `anti_affinity` (1,000
//! existing and 1,000 new pods with required anti-affinity on hostname),
//! `pod_affinity` (5,000 existing pods, 1,000 new pods with required affinity to them on
//! zone), `node_affinity` (10,000 pods with required node affinity on zone). Nothing
//! here asserts on time.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Node, Pod};
use rkube_client::{Api, Client};
use rkube_ctl::pki::Component;
use rkube_scheduler::cache::Cache;
use rkube_scheduler::config::{Profile, SchedulerConfig, DEFAULT_SCHEDULER_NAME};
use rkube_scheduler::framework::{CycleState, Framework};
use rkube_scheduler::node_info::PodInfo;
use rkube_scheduler::{plugins, run_scheduler, Metrics};
use rkube_tests::{Etcd, TestApiserver};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

const NODES: usize = 5_000;
const ZONES: usize = 10;
const CONCURRENCY: usize = 64;

/// One benchmark scenario: what exists before, and the pods to schedule.
struct Workload {
    name: &'static str,
    /// Pods already bound to nodes, as (pod, node index).
    existing: Vec<(Pod, usize)>,
    pods: Vec<Pod>,
}

fn node(i: usize) -> Node {
    serde_json::from_value(json!({
        "metadata": {"name": format!("node-{i:05}"), "labels": {
            "kubernetes.io/hostname": format!("node-{i:05}"),
            "topology.kubernetes.io/zone": format!("zone-{}", i % ZONES)}},
        "status": {
            "allocatable": {"cpu": "32", "memory": "64Gi", "pods": "110"},
            "capacity": {"cpu": "32", "memory": "64Gi", "pods": "110"}}
    }))
    .expect("valid node")
}

fn pod(name: String, labels: Value, affinity: Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default", "labels": labels},
        "spec": {"containers": [{"name": "c", "image": "registry.local/pause:3.9",
            "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}],
            "affinity": affinity}
    }))
    .expect("valid pod")
}

fn workloads() -> Vec<Workload> {
    let anti = json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {"matchLabels": {"color": "green"}}, "topologyKey": "kubernetes.io/hostname"}]}});
    let affinity = json!({"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {"matchLabels": {"color": "blue"}}, "topologyKey": "topology.kubernetes.io/zone"}]}});
    let node_affinity = json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [{"key": "topology.kubernetes.io/zone",
            "operator": "In", "values": ["zone-1", "zone-3", "zone-5", "zone-7", "zone-9"]}]}]}}});
    vec![
        Workload {
            name: "basic",
            existing: Vec::new(),
            pods: (0..10_000)
                .map(|i| {
                    pod(
                        format!("basic-{i:05}"),
                        json!({"app": "basic"}),
                        json!(null),
                    )
                })
                .collect(),
        },
        Workload {
            name: "anti_affinity",
            existing: (0..1_000)
                .map(|i| {
                    (
                        pod(
                            format!("init-{i:05}"),
                            json!({"color": "green"}),
                            anti.clone(),
                        ),
                        i * 5,
                    )
                })
                .collect(),
            pods: (0..1_000)
                .map(|i| {
                    pod(
                        format!("anti-{i:05}"),
                        json!({"color": "green"}),
                        anti.clone(),
                    )
                })
                .collect(),
        },
        Workload {
            name: "pod_affinity",
            existing: (0..5_000)
                .map(|i| {
                    (
                        pod(
                            format!("init-{i:05}"),
                            json!({"color": "blue"}),
                            json!(null),
                        ),
                        i,
                    )
                })
                .collect(),
            pods: (0..1_000)
                .map(|i| {
                    pod(
                        format!("aff-{i:05}"),
                        json!({"color": "blue"}),
                        affinity.clone(),
                    )
                })
                .collect(),
        },
        Workload {
            name: "node_affinity",
            existing: Vec::new(),
            pods: (0..10_000)
                .map(|i| {
                    pod(
                        format!("na-{i:05}"),
                        json!({"app": "na"}),
                        node_affinity.clone(),
                    )
                })
                .collect(),
        },
    ]
}

fn bound(mut pod: Pod, node: usize) -> Pod {
    if let Some(spec) = pod.spec.as_mut() {
        spec.node_name = Some(format!("node-{node:05}"));
    }
    pod
}

/// The algorithm alone: returns (pods/s, percent of nodes scored).
fn algo(w: &Workload) -> anyhow::Result<(f64, f64)> {
    let cache = Cache::new();
    for i in 0..NODES {
        cache.upsert_node(Arc::new(node(i)));
    }
    for (p, n) in &w.existing {
        let p = bound(p.clone(), *n);
        cache.upsert_bound_pod(Arc::new(PodInfo::new(Arc::new(p))), &format!("node-{n:05}"));
    }
    let registry = plugins::in_tree_registry().context("build registry")?;
    let fw = Framework::new(&registry, &Profile::new(DEFAULT_SCHEDULER_NAME), 0)
        .context("build framework")?;
    let infos: Vec<Arc<PodInfo>> = w
        .pods
        .iter()
        .map(|p| Arc::new(PodInfo::new(Arc::new(p.clone()))))
        .collect();
    let mut feasible = 0u64;
    let start = Instant::now();
    for info in &infos {
        let snapshot = cache.snapshot();
        let mut state = CycleState::new();
        let result = fw
            .schedule(&mut state, info, &snapshot)
            .map_err(|e| anyhow::anyhow!("{}: {}", info.key, e.message()))?;
        feasible += result.feasible_nodes as u64;
        cache
            .assume_pod(info.clone(), &result.node)
            .context("assume pod")?;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let n = infos.len() as f64;
    Ok((n / elapsed, 100.0 * feasible as f64 / (n * NODES as f64)))
}

async fn create_all<K: rkube_client::Object>(api: &Api<K>, objects: Vec<K>) -> anyhow::Result<()> {
    futures::stream::iter(objects.into_iter().map(|o| {
        let api = api.clone();
        async move { api.create(&o).await.map(|_| ()) }
    }))
    .buffer_unordered(CONCURRENCY)
    .try_collect::<Vec<()>>()
    .await
    .context("create objects")?;
    Ok(())
}

/// Against a real apiserver and etcd: pods/s from the first to the last bind.
async fn e2e(w: &Workload) -> anyhow::Result<f64> {
    let etcd = Etcd::start().await.context("start etcd")?;
    let api = TestApiserver::start_with(&etcd, |cfg| cfg.etcd_compaction_interval = 0)
        .await
        .context("start apiserver")?;
    let connect = |who| Client::connect(api.client_config(who));
    let admin = connect(Component::Admin).await.context("connect admin")?;
    let nodes: Api<Node> = Api::all(admin.clone());
    create_all(&nodes, (0..NODES).map(node).collect()).await?;
    let pods: Api<Pod> = Api::namespaced(admin.clone(), "default");
    create_all(
        &pods,
        w.existing
            .iter()
            .map(|(p, n)| bound(p.clone(), *n))
            .collect(),
    )
    .await?;
    create_all(&pods, w.pods.clone()).await?;

    let mut config = SchedulerConfig::default();
    config.leader_election.leader_elect = false;
    let metrics = Arc::new(Metrics::default());
    let shutdown = CancellationToken::new();
    let scheduler_client = connect(Component::Scheduler)
        .await
        .context("connect scheduler")?;
    let task = tokio::spawn(run_scheduler(
        scheduler_client,
        config,
        metrics.clone(),
        shutdown.clone(),
    ));

    // The first bind of a workload pod (existing pods are already bound).
    let want = w.pods.len() as u64;
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut first = None;
    let last = loop {
        let done = metrics.bound.load(Ordering::Relaxed);
        if done >= 1 && first.is_none() {
            first = Some(Instant::now());
        }
        if done >= want {
            break Instant::now();
        }
        if Instant::now() > deadline {
            bail!("{}: only {done} of {want} pods bound in time", w.name);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
    let first = first.unwrap_or(last);
    let seconds = last.duration_since(first).as_secs_f64().max(1e-3);
    Ok((want - 1) as f64 / seconds)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let only = std::env::args().nth(1);
    for w in workloads() {
        if only.as_deref().is_some_and(|o| o != w.name) {
            continue;
        }
        let (rate, scored) = algo(&w).with_context(|| format!("run {} in process", w.name))?;
        println!("BENCH scheduler.{}.algo {rate:.0} pods/s", w.name);
        println!("BENCH scheduler.{}.scored {scored:.1} percent", w.name);
        let rate = e2e(&w)
            .await
            .with_context(|| format!("run {} against the apiserver", w.name))?;
        println!("BENCH scheduler.{}.e2e {rate:.0} pods/s", w.name);
    }
    Ok(())
}
