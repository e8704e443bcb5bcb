//! `make bench-apiserver`: the apiserver against a real etcd on this machine.
//!
//! Prints one `BENCH <name> <value> <unit>` line per figure:
//! - `apiserver.create.throughput` (obj/s), `apiserver.create.p50` / `.p99` (ms): 10,000
//!   pods created over REST (HTTPS, bearer token) by 64 concurrent clients;
//! - `apiserver.etcd_ratio`: that throughput divided by etcd's own for the same objects
//!   written straight into etcd (create-if-absent transactions) with the same concurrency;
//! - `apiserver.list10k` (ms): the median of 5 lists of those 10,000 pods;
//! - `apiserver.watch.p99` (ms): 1,000 concurrent watchers receiving 1,000 changes.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use rkube_tests::{Etcd, TestApiserver};
use serde_json::json;
use tokio::sync::Mutex;

/// The same allocator as the `rkube-apiserver` binary, which this benchmark runs in-process.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const PODS: usize = 10_000;
const CONCURRENCY: usize = 64;
const WATCHERS: usize = 1_000;
const CHANGES: usize = 1_000;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn pod(i: usize) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("pod-{i:05}"), "namespace": "bench", "labels": {"app": "bench", "shard": (i % 16).to_string()}},
        "spec": {"containers": [{"name": "main", "image": "registry.local/hello:1.0",
            "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}, "ports": [{"containerPort": 8080}]}]}})
}

fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let etcd = Etcd::start().await.context("start etcd")?;
    let api = TestApiserver::start_with(&etcd, |cfg| cfg.etcd_compaction_interval = 0)
        .await
        .context("start apiserver")?;
    let http = api.http();
    let base = api.url().to_string();
    let resp = http
        .post(format!("{base}/api/v1/namespaces"))
        .json(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "bench"}}))
        .send()
        .await?;
    if !resp.status().is_success() {
        bail!("create namespace: {}", resp.status());
    }

    // Create throughput and latency. Bodies are serialised before the clock starts, so
    // the figures are the server's.
    let bodies: Arc<Vec<bytes::Bytes>> = Arc::new(
        (0..PODS)
            .map(|i| bytes::Bytes::from(pod(i).to_string()))
            .collect(),
    );
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(PODS)));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CONCURRENCY {
        let (http, base, next, latencies, bodies) = (
            http.clone(),
            base.clone(),
            next.clone(),
            latencies.clone(),
            bodies.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= PODS {
                    break;
                }
                let t = Instant::now();
                let resp = http
                    .post(format!("{base}/api/v1/namespaces/bench/pods"))
                    .header("content-type", "application/json")
                    .body(bodies[i].clone())
                    .send()
                    .await?;
                let status = resp.status();
                let _ = resp.bytes().await?;
                if status.as_u16() != 201 {
                    bail!("create pod {i}: {status}");
                }
                mine.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            latencies.lock().await.extend(mine);
            Ok::<_, anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let mut lat = latencies.lock().await.clone();
    lat.sort_by(|a, b| a.total_cmp(b));
    let throughput = PODS as f64 / elapsed;
    println!("BENCH apiserver.create.throughput {throughput:.0} obj/s");
    println!(
        "BENCH apiserver.create.p50 {:.2} ms",
        percentile(&lat, 0.50)
    );
    println!(
        "BENCH apiserver.create.p99 {:.2} ms",
        percentile(&lat, 0.99)
    );

    // The same objects straight into etcd, same concurrency: the physical limit here.
    let client = etcd_client::Client::connect([etcd.endpoint()], None).await?;
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CONCURRENCY {
        let (mut kv, next, bodies) = (client.kv_client(), next.clone(), bodies.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= PODS {
                    break;
                }
                let key = format!("/bench-raw/pods/bench/pod-{i:05}");
                let value = bodies[i].to_vec();
                let txn = etcd_client::Txn::new()
                    .when(vec![etcd_client::Compare::create_revision(
                        key.as_str(),
                        etcd_client::CompareOp::Equal,
                        0,
                    )])
                    .and_then(vec![etcd_client::TxnOp::put(key.as_str(), value, None)]);
                kv.txn(txn).await?;
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let etcd_throughput = PODS as f64 / started.elapsed().as_secs_f64();
    println!("BENCH apiserver.etcd.throughput {etcd_throughput:.0} obj/s");
    println!(
        "BENCH apiserver.etcd_ratio {:.2} ratio",
        throughput / etcd_throughput
    );

    // List latency: the median of five full lists.
    let mut lists = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let resp = http
            .get(format!("{base}/api/v1/namespaces/bench/pods"))
            .send()
            .await?;
        let body = resp.bytes().await?;
        let list: serde_json::Value = serde_json::from_slice(&body)?;
        let n = list["items"].as_array().map_or(0, Vec::len);
        if n != PODS {
            bail!("list returned {n} pods");
        }
        lists.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    lists.sort_by(|a, b| a.total_cmp(b));
    println!("BENCH apiserver.list10k {:.1} ms", percentile(&lists, 0.5));

    // Watch delivery: 1,000 watchers, 1,000 changes paced at 100/s.
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "tick", "namespace": "bench"}, "data": {"sent": "0"}});
    http.post(format!("{base}/api/v1/namespaces/bench/configmaps"))
        .json(&cm)
        .send()
        .await?;
    let delays = Arc::new(Mutex::new(Vec::with_capacity(WATCHERS * CHANGES)));
    let ready = Arc::new(tokio::sync::Barrier::new(WATCHERS + 1));
    let clients: Vec<reqwest::Client> = (0..8).map(|_| api.http()).collect();
    let mut watchers = Vec::new();
    for w in 0..WATCHERS {
        let (http, base, delays, ready) = (
            clients[w % clients.len()].clone(),
            base.clone(),
            delays.clone(),
            ready.clone(),
        );
        watchers.push(tokio::spawn(async move {
            let mut resp = http
                .get(format!("{base}/api/v1/namespaces/bench/configmaps?watch=true&fieldSelector=metadata.name%3Dtick&resourceVersion=0"))
                .send()
                .await?;
            ready.wait().await;
            let mut seen = Vec::with_capacity(CHANGES);
            let mut buf = Vec::new();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
            while seen.len() < CHANGES {
                let chunk = match tokio::time::timeout_at(deadline, resp.chunk()).await {
                    Ok(Ok(Some(c))) => c,
                    _ => break,
                };
                let arrived = now_nanos();
                buf.extend_from_slice(&chunk);
                while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=pos).collect();
                    let text = String::from_utf8_lossy(&line);
                    if let Some(sent) = text.split("\"sent\":\"").nth(1).and_then(|s| s.split('"').next()).and_then(|s| s.parse::<u128>().ok()) {
                        if sent > 0 && text.contains("\"MODIFIED\"") {
                            seen.push(arrived.saturating_sub(sent) as f64 / 1e6);
                        }
                    }
                }
            }
            let n = seen.len();
            delays.lock().await.extend(seen);
            Ok::<usize, anyhow::Error>(n)
        }));
    }
    ready.wait().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut interval = tokio::time::interval(Duration::from_millis(10));
    for _ in 0..CHANGES {
        interval.tick().await;
        let patch = json!({"data": {"sent": now_nanos().to_string()}});
        let resp = http
            .patch(format!("{base}/api/v1/namespaces/bench/configmaps/tick"))
            .header("content-type", "application/merge-patch+json")
            .body(patch.to_string())
            .send()
            .await?;
        if !resp.status().is_success() {
            bail!("patch: {}", resp.status());
        }
    }
    let mut received = 0;
    for w in watchers {
        received += w.await??;
    }
    let mut d = delays.lock().await.clone();
    d.sort_by(|a, b| a.total_cmp(b));
    println!("BENCH apiserver.watch.delivered {received} events");
    println!("BENCH apiserver.watch.p50 {:.2} ms", percentile(&d, 0.50));
    println!("BENCH apiserver.watch.p99 {:.2} ms", percentile(&d, 0.99));
    drop(api);
    drop(etcd);
    Ok(())
}
