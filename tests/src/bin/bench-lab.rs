//! The lab benchmark (`make bench-lab`, as root, with the release binaries next to this
//! one in `target/release`):
//!
//! - `BENCH lab.up3 <s> s`: `rkube up --nodes 3` until every node is Ready (target
//!   ≤ 10 s);
//! - `BENCH lab.pod_startup.p50|p99 <ms> ms`: 30 busybox pods (image already on every
//!   node) created at once through the REST API, each timed from just before its create
//!   request to the first watch event that shows it Running (targets p50 ≤ 250 ms, p99
//!   ≤ 1 s). Three such bursts, one after the other's pods are gone; the figures are
//!   over all 90 pods, and each burst's own are printed too (on stderr), since one
//!   burst on a shared virtual machine varies by a fifth from run to run;
//! - `BENCH lab.rss.control_plane <MB> MB`: apiserver + scheduler + controller-manager +
//!   etcd resident memory, idle with the 30 pods (target ≤ 150 MB);
//! - `BENCH lab.rss.nodeagent <MB> MB`: the largest node agent's (target ≤ 50 MB).
//!
//! The lab lives in a temporary directory with ports and an underlay CIDR of its own;
//! `rkube down` runs at the end, also on failure. Never asserts on time.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use reqwest::Method;
use rkube_ctl::rkubectl::client::{Body, Client};
use rkube_ctl::rkubectl::config::{paths, Kubeconfig};
use rkube_tests::lab::{test_underlay, LabPorts};
use rkube_tests::node::push_busybox_to;
use serde_json::{json, Value};

const NODES: usize = 3;
const PODS: usize = 30;
/// How many bursts of PODS pods the startup figures are taken over.
const BURSTS: usize = 3;
const CONTROL_PLANE: [&str; 4] = [
    "etcd",
    "rkube-apiserver",
    "rkube-scheduler",
    "rkube-controller-manager",
];

/// A lab started with the release `rkube`; `rkube down` on drop.
struct BenchLab {
    rkube: PathBuf,
    dir: tempfile::TempDir,
}

impl BenchLab {
    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    fn run(&self, args: &[String]) -> anyhow::Result<std::process::Output> {
        let out = Command::new(&self.rkube)
            .args(args)
            .arg("--state-dir")
            .arg(self.state())
            .env("KUBECONFIG", self.kubeconfig())
            .output()
            .with_context(|| format!("run {}", self.rkube.display()))?;
        if !out.status.success() {
            bail!(
                "rkube {args:?}: {}\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(out)
    }
}

impl Drop for BenchLab {
    fn drop(&mut self) {
        if self.state().exists() {
            if let Err(e) = self.run(&["down".to_string()]) {
                eprintln!("rkube down: {e:#}");
            }
        }
    }
}

/// VmRSS of `pid` in MB.
fn rss_mb(pid: i64) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("read /proc/{pid}/status"))?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no VmRSS for {pid}"))?;
    Ok(kb / 1024.0)
}

/// The nearest-rank percentile `p` (0–100) of sorted `values`.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

fn pod(name: &str, image: &str, labels: Value, node: Option<&str>) -> Value {
    let mut spec = json!({
        "terminationGracePeriodSeconds": 0,
        "containers": [{ "name": "main", "image": image, "command": ["sleep", "3600"] }],
    });
    if let Some(node) = node {
        spec["nodeSelector"] = json!({ "kubernetes.io/hostname": node });
    }
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": name, "labels": labels },
        "spec": spec,
    })
}

const PODS_PATH: &str = "/api/v1/namespaces/default/pods";

async fn create(client: &Client, pod: &Value) -> anyhow::Result<()> {
    client
        .send(
            Method::POST,
            PODS_PATH,
            &[],
            None,
            Some(Body::json("application/json", pod)),
        )
        .await
        .with_context(|| format!("create pod {}", pod["metadata"]["name"]))?;
    Ok(())
}

/// Waits (polling) until every pod with `selector` is Running and there are `n`.
async fn wait_running(client: &Client, selector: &str, n: usize) -> anyhow::Result<()> {
    wait_pods(client, selector, &format!("{n} Running"), |items| {
        items
            .iter()
            .filter(|p| p["status"]["phase"] == "Running")
            .count()
            == n
    })
    .await
}

/// Waits until no pod matches `selector` (their node agents have torn them down).
async fn wait_gone(client: &Client, selector: &str) -> anyhow::Result<()> {
    wait_pods(client, selector, "none left", |items| items.is_empty()).await
}

/// Polls the pods that match `selector` until `done` holds for them (120 s at most;
/// `want` says what was waited for).
async fn wait_pods(
    client: &Client,
    selector: &str,
    want: &str,
    done: impl Fn(&[Value]) -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let list = client
            .get(PODS_PATH, &[("labelSelector", selector.to_string())])
            .await?;
        let items = list["items"].as_array().cloned().unwrap_or_default();
        if done(&items) {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "pods {selector}: not {want} after 120 s ({} there)",
            items.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    ensure!(
        nix::unistd::Uid::effective().is_root(),
        "bench-lab runs a lab: run it as root"
    );
    let _ = rustls::crypto::ring::default_provider().install_default();
    let exe = std::env::current_exe().context("current exe")?;
    let bin = exe.parent().context("exe dir")?;
    let rkube = bin.join("rkube");
    for binary in [
        "rkube",
        "rkube-apiserver",
        "rkube-scheduler",
        "rkube-controller-manager",
        "rkube-nodeagent",
    ] {
        ensure!(
            bin.join(binary).is_file(),
            "{binary} missing next to bench-lab in {}: build the release binaries first",
            bin.display()
        );
    }
    let lab = BenchLab {
        rkube,
        dir: tempfile::tempdir().context("tempdir")?,
    };

    // lab.up3
    let up = LabPorts::free().up_args(NODES, &test_underlay(31), &[]);
    let started = Instant::now();
    lab.run(&up)?;
    let up3 = started.elapsed().as_secs_f64();
    println!("BENCH lab.up3 {up3:.2} s");

    let status = lab.run(&["status".into(), "-o".into(), "json".into()])?;
    let status: Value = serde_json::from_slice(&status.stdout).context("status json")?;
    let registry = status["registry"].as_str().context("registry")?.to_string();
    let config = Kubeconfig::load(paths(Some(&lab.kubeconfig()))).context("kubeconfig")?;
    let resolved = config.resolve(None).context("kubeconfig context")?;
    let client = Client::new(&resolved, Some("default".into())).context("client")?;

    // The image, present on every node before the measurement.
    let image = push_busybox_to(&registry).await?;
    for n in 1..=NODES {
        let node = format!("node-{n}");
        create(
            &client,
            &pod(
                &format!("warm-{n}"),
                &image,
                json!({ "bench": "warm" }),
                Some(&node),
            ),
        )
        .await?;
    }
    wait_running(&client, "bench=warm", NODES).await?;
    // Measured on a quiet cluster: the warm-up pods' teardown is not part of it.
    delete_pods(&client, "bench=warm").await?;

    // Pod startup through a watch: BURSTS bursts of PODS pods, each on a quiet cluster,
    // the figures over every pod of every burst (one burst's are printed as it ends).
    let mut latencies = Vec::new();
    let mut to_bound = Vec::new();
    for round in 1..=BURSTS {
        if round > 1 {
            delete_pods(&client, "bench=startup").await?;
            // The held-back events of the last burst are written by then.
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
        let (mut startup, mut bound) = burst(&client, &image).await?;
        startup.sort_by(f64::total_cmp);
        eprintln!(
            "burst {round}: p50 {:.0} ms, p99 {:.0} ms",
            percentile(&startup, 50.0),
            percentile(&startup, 99.0)
        );
        latencies.append(&mut startup);
        to_bound.append(&mut bound);
    }
    latencies.sort_by(f64::total_cmp);
    to_bound.sort_by(f64::total_cmp);
    // Where the time goes (not a BENCH figure): create → bound by the scheduler.
    if !to_bound.is_empty() {
        eprintln!(
            "create → bound: p50 {:.0} ms, p99 {:.0} ms",
            percentile(&to_bound, 50.0),
            percentile(&to_bound, 99.0)
        );
    }
    println!(
        "BENCH lab.pod_startup.p50 {:.0} ms",
        percentile(&latencies, 50.0)
    );
    println!(
        "BENCH lab.pod_startup.p99 {:.0} ms",
        percentile(&latencies, 99.0)
    );

    // Resident memory, idle with the 30 pods.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let mut control_plane = 0.0;
    for process in status["processes"].as_array().context("processes")? {
        let name = process["name"].as_str().unwrap_or_default();
        if CONTROL_PLANE.contains(&name) {
            let pid = process["pid"].as_i64().context("pid")?;
            control_plane += rss_mb(pid)?;
        }
    }
    let mut agent_max: f64 = 0.0;
    for node in status["nodes"].as_array().context("nodes")? {
        let pid = node["agent_pid"].as_i64().context("agent pid")?;
        agent_max = agent_max.max(rss_mb(pid)?);
    }
    println!("BENCH lab.rss.control_plane {control_plane:.1} MB");
    println!("BENCH lab.rss.nodeagent {agent_max:.1} MB");
    Ok(())
}

/// One burst: PODS pods created at once through the REST API, each timed from just
/// before its create request to the first watch event that shows it Running. Returns
/// the pods' startup latencies and their create → bound times, in ms (unsorted).
async fn burst(client: &Client, image: &str) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let list = client
        .get(PODS_PATH, &[("labelSelector", "bench=startup".into())])
        .await?;
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or("0")
        .to_string();
    let mut response = client
        .start(
            Method::GET,
            PODS_PATH,
            &[
                ("watch", "true".into()),
                ("labelSelector", "bench=startup".into()),
                ("resourceVersion", rv),
            ],
            None,
            None,
        )
        .await
        .context("watch pods")?;
    let running: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let bound: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let seen = running.clone();
    let seen_bound = bound.clone();
    let watcher = tokio::spawn(async move {
        let mut buffer = Vec::new();
        while let Ok(Some(chunk)) = response.chunk().await {
            let now = Instant::now();
            buffer.extend_from_slice(&chunk);
            while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buffer.drain(..=end).collect();
                let Ok(event) = serde_json::from_slice::<Value>(&line) else {
                    continue;
                };
                let object = &event["object"];
                if let (Some(name), true) = (
                    object["metadata"]["name"].as_str(),
                    object["spec"]["nodeName"].is_string(),
                ) {
                    let mut map = seen_bound.lock().unwrap_or_else(|e| e.into_inner());
                    map.entry(name.to_string()).or_insert(now);
                }
                if object["status"]["phase"] == "Running" {
                    if let Some(name) = object["metadata"]["name"].as_str() {
                        let mut map = seen.lock().unwrap_or_else(|e| e.into_inner());
                        map.entry(name.to_string()).or_insert(now);
                    }
                }
            }
        }
    });
    let mut created = HashMap::new();
    let creates = (0..PODS).map(|i| {
        let name = format!("startup-{i}");
        let manifest = pod(&name, image, json!({ "bench": "startup" }), None);
        let client = client.clone();
        async move {
            let at = Instant::now();
            create(&client, &manifest).await.map(|()| (name, at))
        }
    });
    for result in futures::future::join_all(creates).await {
        let (name, at) = result?;
        created.insert(name, at);
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let done = running.lock().unwrap_or_else(|e| e.into_inner()).len();
        if done >= PODS {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "{done}/{PODS} pods Running after 120 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    watcher.abort();
    let latencies: Vec<f64> = {
        let map = running.lock().unwrap_or_else(|e| e.into_inner());
        created
            .iter()
            .filter_map(|(name, at)| map.get(name).map(|r| (*r - *at).as_secs_f64() * 1000.0))
            .collect()
    };
    let to_bound: Vec<f64> = {
        let map = bound.lock().unwrap_or_else(|e| e.into_inner());
        created
            .iter()
            .filter_map(|(name, at)| map.get(name).map(|b| (*b - *at).as_secs_f64() * 1000.0))
            .collect()
    };
    Ok((latencies, to_bound))
}

/// Deletes the pods `selector` selects and waits until they are gone.
async fn delete_pods(client: &Client, selector: &str) -> anyhow::Result<()> {
    client
        .send(
            Method::DELETE,
            PODS_PATH,
            &[("labelSelector", selector.into())],
            None,
            None,
        )
        .await
        .with_context(|| format!("delete the pods {selector}"))?;
    wait_gone(client, selector).await
}
