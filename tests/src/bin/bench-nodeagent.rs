//! `make bench-nodeagent`: the node agent's built-in runtime and the agent itself, as
//! root, with the busybox image of [`rkube_tests::node`] served by a local
//! `docker-registry`. Prints one `BENCH <name> <value> <unit>` line per figure:
//!
//! - `runtime.start.median` (ms): create + start + wait for the exit + delete of a
//!   `true` container through [`LocalRuntime`] and its `shim` helper (the released
//!   `rkube-nodeagent` binary, as pods use it), median of 100;
//! - `runtime.runc.median` (ms): `runc run` of the same bundle (same config.json and
//!   root filesystem), median of 100, each run right after one of ours;
//!   `runtime.vs_runc` (x): runc's median / ours;
//! - `nodeagent.pod_start.p50` (ms): a pod created bound to the node, with its image
//!   present, until a watch sees it Running — one `rkube-nodeagent` process (from
//!   target/release) against a real apiserver and etcd, 20 pods one after another;
//! - `nodeagent.batch30` (s): 30 pods created at once until all are Running;
//! - `nodeagent.rss` (MB): the agent's resident memory with those 30 pods running;
//! - `nodeagent.shim_rss` (MB): the resident memory of one container's `shim` helper.
//!
//! Needs root. Everything it starts (registry, agent, helpers, containers, mounts,
//! cgroups) is stopped and removed on the way out, also after a failure.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use rkube_client::watcher::Event;
use rkube_client::{watcher, Api, Client, DeleteParams, WatcherConfig};
use rkube_ctl::pki::Component;
use rkube_nodeagent::runtime::rootfs;
use rkube_nodeagent::runtime::state::{self, ContainerMeta, ContainerPaths};
use rkube_nodeagent::runtime::{
    ContainerConfig, ContainerRuntime, ContainerState, ImageRef, LocalRuntime, LocalRuntimeConfig,
    PullPolicy, SandboxConfig,
};
use rkube_tests::node::{clean_up_agent_state, entries, pod, push_busybox, Registry};
use rkube_tests::{Etcd, TestApiserver};

const STARTS: usize = 100;
const SEQUENTIAL_PODS: usize = 20;
const BATCH: usize = 30;
const TIMEOUT: Duration = Duration::from_secs(120);
const RUNC: &str = "runc";
/// How often the runtime figures look for the container's exit.
const POLL: Duration = Duration::from_micros(100);

/// Kills what a runtime state directory's helpers left and removes their mounts and
/// cgroups; on drop, so a failed run leaves nothing behind either.
struct Cleanup {
    root: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        clean_up_agent_state(&self.root);
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// The agent process; SIGTERM, then SIGKILL, on drop.
struct AgentProcess {
    child: Child,
}

impl AgentProcess {
    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn stop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.pid());
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(12);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

fn median(samples: &mut [Duration]) -> Duration {
    samples.sort_unstable();
    samples[samples.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Resident memory of process `pid` in MB (`VmRSS`).
fn rss_mb(pid: i32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("read /proc/{pid}/status"))?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no VmRSS for {pid}"))?;
    Ok(kb / 1024.0)
}

/// The released agent binary next to this one (target/release/rkube-nodeagent).
fn agent_binary() -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe().context("this binary")?;
    let binary = me
        .parent()
        .context("this binary's directory")?
        .join("rkube-nodeagent");
    if !binary.exists() {
        bail!(
            "{} is missing: cargo build --release -p rkube-nodeagent",
            binary.display()
        );
    }
    Ok(binary)
}

fn container(image: &ImageRef, attempt: u32) -> ContainerConfig {
    ContainerConfig {
        attempt,
        ..ContainerConfig::new("bench", image.clone(), &["true"])
    }
}

/// `runtime.start.median`, `runtime.runc.median` and `runtime.vs_runc`. Each round
/// runs one container of ours, then `runc run` of the same bundle, so that the VM's
/// drift over the run weighs on both alike.
async fn runtime_figures(registry: &Registry, image: &str) -> anyhow::Result<()> {
    let root = tempfile::Builder::new()
        .prefix("rkube-bench-runtime-")
        .tempdir()
        .context("runtime dir")?
        .keep();
    let _cleanup = Cleanup { root: root.clone() };
    // As the agent binary configures it for pods.
    let runtime = LocalRuntime::new(LocalRuntimeConfig {
        root_dir: root.clone(),
        insecure_registries: vec![registry.addr.clone()],
        shim_binary: agent_binary()?,
        favor_dynamic_cgroups: true,
        state_on_tmpfs: true,
        ephemeral_storage_tmpfs: None,
    })
    .context("runtime")?;
    let image = runtime
        .pull_image(image, PullPolicy::IfNotPresent)
        .await
        .context("pull")?;
    let sandbox = runtime
        .create_sandbox(&SandboxConfig {
            pod_uid: format!("bench-{}", std::process::id()),
            namespace: "default".into(),
            name: "bench".into(),
            hostname: "bench".into(),
        })
        .await
        .context("sandbox")?;
    // runc's bundle: a created, never started container's directory.
    let runc_bundle = runtime
        .create_container(&sandbox, &container(&image, 10_000))
        .await
        .context("create the runc bundle")?;
    let bundle = root.join("containers").join(&runc_bundle.0);
    // Our helper mounts the root file system in its own mount namespace when it starts
    // the container; for runc it is mounted here, the same overlay.
    let meta = state::read_json::<ContainerMeta>(
        &ContainerPaths {
            dir: bundle.clone(),
        }
        .meta(),
    )
    .context("read the runc bundle's state")?
    .context("the runc bundle's state")?;
    if let Some(options) = &meta.overlay {
        rootfs::mount_overlay(&bundle.join("rootfs"), options).context("mount runc's root")?;
    }
    // runc's own state on a tmpfs, where it keeps it by default (/run/runc).
    let runc_root = root.join("runc");
    std::fs::create_dir_all(&runc_root).context("runc root")?;
    rkube_nodeagent::runtime::tmpfs::prepare(&runc_root, rkube_nodeagent::runtime::tmpfs::STATE)
        .context("runc root on tmpfs")?;

    let mut ours = Vec::with_capacity(STARTS);
    let mut theirs = Vec::with_capacity(STARTS);
    // Per phase: create, start, until the exit is recorded, remove.
    let mut phases: [Vec<Duration>; 4] = Default::default();
    for round in 0..=STARTS as u32 {
        let started = Instant::now();
        let id = runtime
            .create_container(&sandbox, &container(&image, round))
            .await
            .context("create")?;
        let created = Instant::now();
        runtime.start_container(&id).await.context("start")?;
        let running = Instant::now();
        loop {
            match runtime.container_status(&id).await.context("status")? {
                ContainerState::Exited { exit_code: 0, .. } => break,
                ContainerState::Exited { exit_code, .. } => {
                    bail!("`true` exited with {exit_code}")
                }
                // Not tokio's timer: its 1 ms ticks would add up to 2 ms of waiting
                // that is the bench's, not the runtime's (runc waits with wait4).
                _ => std::thread::sleep(POLL),
            }
        }
        let exited = Instant::now();
        runtime.remove_container(&id).await.context("remove")?;
        let ours_took = started.elapsed();
        let marks = [started, created, running, exited, Instant::now()];
        let runc_took = runc_run(&runc_root, &bundle, round)?;
        // The first round warms the page cache and the image's layers: not counted.
        if round > 0 {
            ours.push(ours_took);
            theirs.push(runc_took);
            for (phase, pair) in phases.iter_mut().zip(marks.windows(2)) {
                phase.push(pair[1] - pair[0]);
            }
        }
    }
    let [create, start, wait, remove] = &mut phases;
    eprintln!(
        "runtime phases (median ms): create {:.2}, start {:.2}, until exit recorded {:.2}, remove {:.2}",
        ms(median(create)),
        ms(median(start)),
        ms(median(wait)),
        ms(median(remove))
    );
    runtime
        .remove_container(&runc_bundle)
        .await
        .context("remove")?;
    runtime
        .remove_sandbox(&sandbox)
        .await
        .context("remove sandbox")?;
    let ours = median(&mut ours);
    let theirs = median(&mut theirs);
    println!("BENCH runtime.start.median {:.2} ms", ms(ours));
    println!("BENCH runtime.runc.median {:.2} ms", ms(theirs));
    println!(
        "BENCH runtime.vs_runc {:.2} x",
        theirs.as_secs_f64() / ours.as_secs_f64()
    );
    Ok(())
}

/// One `runc run` of `bundle` (create, start, wait, delete), timed.
fn runc_run(runc_root: &Path, bundle: &Path, round: u32) -> anyhow::Result<Duration> {
    let name = format!("rkube-bench-runc-{}-{round}", std::process::id());
    let started = Instant::now();
    let status = Command::new(RUNC)
        .arg("--root")
        .arg(runc_root)
        .args(["run", "--bundle"])
        .arg(bundle)
        .arg(&name)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("run {RUNC} (apt-get install runc)"))?;
    let took = started.elapsed();
    if !status.status.success() {
        let _ = Command::new(RUNC)
            .arg("--root")
            .arg(runc_root)
            .args(["delete", "--force", &name])
            .output();
        bail!(
            "runc run failed: {}",
            String::from_utf8_lossy(&status.stderr).trim()
        );
    }
    Ok(took)
}

/// When a watch first saw each pod Running.
type RunningAt = Arc<Mutex<HashMap<String, Instant>>>;

fn watch_running(pods: Api<Pod>, node: &str) -> (RunningAt, tokio::task::JoinHandle<()>) {
    let seen: RunningAt = Arc::default();
    let record = seen.clone();
    let config = WatcherConfig::default().fields(&format!("spec.nodeName={node}"));
    let task = tokio::spawn(async move {
        let mut stream = std::pin::pin!(watcher(pods, config));
        while let Some(event) = stream.next().await {
            let pod = match event {
                Ok(Event::Apply(pod)) | Ok(Event::InitApply(pod)) => pod,
                _ => continue,
            };
            let running = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
            if let (true, Some(name)) = (running, pod.metadata.name) {
                if let Ok(mut seen) = record.lock() {
                    seen.entry(name).or_insert_with(Instant::now);
                }
            }
        }
    });
    (seen, task)
}

async fn wait_running(seen: &RunningAt, names: &[String]) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        {
            let seen = seen
                .lock()
                .map_err(|_| anyhow::anyhow!("watch task panicked"))?;
            let times: Vec<Instant> = names.iter().filter_map(|n| seen.get(n).copied()).collect();
            if times.len() == names.len() {
                return times.into_iter().max().context("no pods");
            }
        }
        if Instant::now() > deadline {
            bail!("pods not Running after {TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn delete_all(pods: &Api<Pod>, names: &[String], root: &Path) -> anyhow::Result<()> {
    for name in names {
        pods.delete(name, &DeleteParams::default())
            .await
            .with_context(|| format!("delete {name}"))?;
    }
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let mut left = 0;
        for name in names {
            if pods.get_opt(name).await.context("get pod")?.is_some() {
                left += 1;
            }
        }
        if left == 0 && entries(&root.join("containers")).is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{left} pods not removed after {TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `nodeagent.pod_start.p50`, `nodeagent.batch30`, `nodeagent.rss`, `nodeagent.shim_rss`.
async fn agent_figures(registry: &Registry, image: &str) -> anyhow::Result<()> {
    let etcd = Etcd::start().await.context("start etcd")?;
    let api = TestApiserver::start(&etcd)
        .await
        .context("start apiserver")?;
    let dir = tempfile::tempdir().context("bench dir")?;
    let kubeconfig = dir.path().join("nodeagent.kubeconfig");
    rkube_ctl::kubeconfig::write_single(
        &kubeconfig,
        "bench",
        api.url(),
        api.ca_pem(),
        api.pki().token(Component::NodeAgent),
    )
    .context("write the agent's kubeconfig")?;
    let root = tempfile::Builder::new()
        .prefix("rkube-bench-agent-")
        .tempdir()
        .context("agent dir")?
        .keep();
    let node = format!("bench-{}", std::process::id());
    let log = std::fs::File::create(dir.path().join("agent.log")).context("agent log")?;
    let mut agent = AgentProcess {
        child: Command::new(agent_binary()?)
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(["--node-name", &node, "--node-ip", "127.0.0.1"])
            .arg("--root-dir")
            .arg(&root)
            .args(["--insecure-registry", &registry.addr])
            // Pods stay loopback-only (no podCIDR allocator runs here) and the agent's
            // own service takes a free port.
            .args(["--pod-network=false", "--listen-address", "127.0.0.1:0"])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("agent log")?)
            .stderr(log)
            .spawn()
            .context("start rkube-nodeagent")?,
    };
    // Dropped after the agent: the agent stops first, then its leftovers go.
    let _cleanup = Cleanup { root: root.clone() };
    let result = measure_agent(&api, &node, image, &root, agent.pid()).await;
    agent.stop();
    if result.is_err() {
        let text = std::fs::read_to_string(dir.path().join("agent.log")).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(20).collect();
        eprintln!("agent log (last lines, newest first):\n{}", tail.join("\n"));
    }
    result
}

async fn measure_agent(
    api: &TestApiserver,
    node: &str,
    image: &str,
    root: &Path,
    agent_pid: i32,
) -> anyhow::Result<()> {
    let client = Client::connect(api.client_config(Component::Admin))
        .await
        .context("connect")?;
    let nodes: Api<Node> = Api::all(client.clone());
    let deadline = Instant::now() + TIMEOUT;
    while nodes.get_opt(node).await.context("get node")?.is_none() {
        if Instant::now() > deadline {
            bail!("node {node} not registered after {TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let (seen, watch) = watch_running(pods.clone(), node);
    let sleeper = |name: &str| pod(name, node, image, &["sleep", "3600"], 1);

    // Pull the image once; every measured pod finds it present.
    let warm = vec!["warm".to_string()];
    pods.create(&sleeper("warm")).await.context("create pod")?;
    wait_running(&seen, &warm).await?;
    delete_all(&pods, &warm, root).await?;

    let mut starts = Vec::with_capacity(SEQUENTIAL_PODS);
    let mut names = Vec::with_capacity(SEQUENTIAL_PODS);
    for n in 0..SEQUENTIAL_PODS {
        let name = format!("one-{n}");
        let created = Instant::now();
        pods.create(&sleeper(&name)).await.context("create pod")?;
        let running = wait_running(&seen, std::slice::from_ref(&name)).await?;
        starts.push(running.saturating_duration_since(created));
        names.push(name);
    }
    println!(
        "BENCH nodeagent.pod_start.p50 {:.1} ms",
        ms(median(&mut starts))
    );
    delete_all(&pods, &names, root).await?;

    let names: Vec<String> = (0..BATCH).map(|n| format!("batch-{n}")).collect();
    let created = Instant::now();
    let creates = names.iter().map(|name| {
        let pods = pods.clone();
        let pod = sleeper(name);
        async move { pods.create(&pod).await }
    });
    for result in futures::future::join_all(creates).await {
        result.context("create pod")?;
    }
    let running = wait_running(&seen, &names).await?;
    println!(
        "BENCH nodeagent.batch30 {:.2} s",
        running.saturating_duration_since(created).as_secs_f64()
    );
    // Let the agent settle (status updates of the burst) before reading its memory.
    tokio::time::sleep(Duration::from_secs(2)).await;
    println!("BENCH nodeagent.rss {:.1} MB", rss_mb(agent_pid)?);
    let shim = entries(&root.join("containers"))
        .into_iter()
        .find_map(|id| {
            std::fs::read_to_string(root.join("containers").join(id).join("shim.pid"))
                .ok()
                .and_then(|t| t.trim().parse::<i32>().ok())
        })
        .context("no running container's helper")?;
    println!("BENCH nodeagent.shim_rss {:.1} MB", rss_mb(shim)?);
    delete_all(&pods, &names, root).await?;
    watch.abort();
    Ok(())
}

fn main() -> anyhow::Result<()> {
    if !nix::unistd::Uid::effective().is_root() {
        bail!("bench-nodeagent runs containers: run it as root");
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("start tokio")?
        .block_on(async {
            let registry = Registry::start().await.context("start registry")?;
            let image = push_busybox(&registry).await.context("push busybox")?;
            runtime_figures(&registry, &image).await?;
            agent_figures(&registry, &image).await
        })
}
