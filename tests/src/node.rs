//! Fixtures for root tests of the node agent with its built-in runtime: a real
//! `docker-registry` on a free loopback port, a busybox image built from Debian's
//! busybox-static and pushed to it, an in-process [`Agent`] whose drop removes whatever
//! its containers left, and [`root_test_main`], the `main` of such test binaries (they
//! double as the agent's `shim` helper, so they run with `harness = false`).

use std::ffi::OsString;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use oci_client::client::{ClientConfig as OciConfig, ClientProtocol, Config, ImageLayer};
use oci_client::secrets::RegistryAuth;
use rkube_client::{Api, Client};
use rkube_ctl::pki::Component;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::{Etcd, TestApiserver};

const REGISTRY_BINARY: &str = "/usr/bin/docker-registry";
const BUSYBOX: &str = "/bin/busybox";

/// One root test: its name and the future that runs it (panics fail it).
pub type RootTest = (
    &'static str,
    fn() -> Pin<Box<dyn Future<Output = ()> + Send>>,
);

/// The `main` of a root test binary: answers `shim …` as the agent's helper, skips
/// when not root, otherwise runs each test in turn (each in its own task, so a panic
/// unwinds through its guards) and prints libtest-style result lines.
pub fn root_test_main(binary: &str, tests: &[RootTest]) -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == "shim") {
        return rkube_nodeagent::shim::main_from_args(args.into_iter().skip(1));
    }
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("{binary}: skipped, running containers needs root");
        return ExitCode::SUCCESS;
    }
    // The workspace's one TLS crypto provider, for the registry client that pushes.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("{binary}: start tokio: {err}");
            return ExitCode::FAILURE;
        }
    };
    let filter: Vec<String> = args
        .iter()
        .skip(1)
        .filter_map(|a| a.to_str())
        .filter(|a| !a.starts_with('-'))
        .map(str::to_string)
        .collect();
    let (mut passed, mut failed, mut filtered) = (0, 0, 0);
    for (name, test) in tests {
        if !filter.is_empty() && !filter.iter().any(|f| name.contains(f.as_str())) {
            filtered += 1;
            continue;
        }
        match runtime.block_on(async { tokio::spawn(test()).await }) {
            Ok(()) => {
                println!("test {name} ... ok");
                passed += 1;
            }
            Err(err) => {
                println!("test {name} ... FAILED: {err}");
                failed += 1;
            }
        }
    }
    let result = if failed == 0 { "ok" } else { "FAILED" };
    println!(
        "\ntest result: {result}. {passed} passed; {failed} failed; 0 ignored; 0 measured; {filtered} filtered out"
    );
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// A `docker-registry` on a free loopback port with temporary storage; killed on drop.
pub struct Registry {
    child: Child,
    /// `127.0.0.1:<port>`.
    pub addr: String,
    _dir: tempfile::TempDir,
}

impl Registry {
    pub async fn start() -> anyhow::Result<Registry> {
        let dir = tempfile::tempdir().context("registry dir")?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .context("pick a port")?
            .port();
        let addr = format!("127.0.0.1:{port}");
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
                dir.path().join("storage").display()
            ),
        )
        .context("write registry config")?;
        let log = std::fs::File::create(dir.path().join("registry.log")).context("registry log")?;
        let child = Command::new(REGISTRY_BINARY)
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("registry log")?)
            .stderr(log)
            .spawn()
            .with_context(|| {
                format!("start {REGISTRY_BINARY} (apt-get install docker-registry)")
            })?;
        let registry = Registry {
            child,
            addr,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if std::net::TcpStream::connect(&registry.addr).is_ok() {
                return Ok(registry);
            }
            if Instant::now() > deadline {
                bail!("the registry did not listen on {}", registry.addr);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

/// A header owned by root with a fixed mtime (the layer is reproducible).
pub fn tar_header() -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header
}

/// The busybox applets the test image links in `/bin`.
pub const APPLETS: &[&str] = &[
    "sh", "echo", "sleep", "cat", "ls", "id", "env", "true", "false", "test", "grep", "mkdir",
    "rm", "touch", "hostname", "httpd", "nc", "wget", "ip", "ping", "nslookup", "dd", "head",
    "printf", "date", "ps", "kill", "wc", "tr", "seq", "yes", "unshare", "tty", "stty",
];

/// A one-layer image: `/bin/busybox` and links to it for each of [`APPLETS`].
pub fn busybox_layer() -> anyhow::Result<Vec<u8>> {
    let binary =
        std::fs::read(BUSYBOX).with_context(|| format!("read {BUSYBOX} (busybox-static)"))?;
    let mut builder = tar::Builder::new(Vec::new());
    for dir in ["bin/", "tmp/", "etc/", "var/", "www/"] {
        let mut header = tar_header();
        header.set_entry_type(tar::EntryType::Directory);
        header.set_mode(0o755);
        header.set_size(0);
        builder.append_data(&mut header, dir, &[][..])?;
    }
    let mut header = tar_header();
    header.set_mode(0o755);
    header.set_size(binary.len() as u64);
    builder.append_data(&mut header, "bin/busybox", binary.as_slice())?;
    for applet in APPLETS {
        let mut header = tar_header();
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_mode(0o777);
        header.set_size(0);
        builder.append_link(&mut header, format!("bin/{applet}"), "busybox")?;
    }
    Ok(builder.into_inner()?)
}

/// Builds the busybox image and pushes it as `<registry>/rkube-test/busybox:1`.
pub async fn push_busybox(registry: &Registry) -> anyhow::Result<String> {
    push_busybox_to(&registry.addr).await
}

/// Builds the busybox image and pushes it to the plain-HTTP registry at `addr`
/// (`host:port`, e.g. a lab's) as `<addr>/rkube-test/busybox:1`.
pub async fn push_busybox_to(addr: &str) -> anyhow::Result<String> {
    let layer = busybox_layer()?;
    let config = serde_json::json!({
        "architecture": std::env::consts::ARCH.replace("x86_64", "amd64").replace("aarch64", "arm64"),
        "os": "linux",
        "config": { "Env": ["PATH=/bin"], "Cmd": ["sh"] },
        "rootfs": { "type": "layers", "diff_ids": [sha256(&layer)] },
    });
    let image = format!("{addr}/rkube-test/busybox:1");
    let reference: oci_client::Reference = image.parse().context("image reference")?;
    let client = oci_client::Client::new(OciConfig {
        protocol: ClientProtocol::HttpsExcept(vec![addr.to_string()]),
        ..Default::default()
    });
    let layers = [ImageLayer::new(
        layer,
        "application/vnd.oci.image.layer.v1.tar".to_string(),
        None,
    )];
    let config = Config::new(
        serde_json::to_vec(&config)?,
        "application/vnd.oci.image.config.v1+json".to_string(),
        None,
    );
    client
        .push(&reference, &layers, config, &RegistryAuth::Anonymous, None)
        .await
        .context("push the busybox image")?;
    Ok(image)
}

/// What an agent under test talks to: a real etcd, apiserver and registry, the busybox
/// image pushed there, and an admin client.
pub struct Cluster {
    pub etcd: Etcd,
    pub api: TestApiserver,
    pub registry: Registry,
    pub image: String,
    pub admin: Client,
}

impl Cluster {
    /// Starts all of it; panics (the test fails) when a piece does not start.
    pub async fn start() -> Cluster {
        let etcd = Etcd::start().await.expect("etcd");
        let api = TestApiserver::start(&etcd).await.expect("apiserver");
        let registry = Registry::start().await.expect("registry");
        let image = push_busybox(&registry).await.expect("push image");
        let admin = Client::connect(api.client_config(Component::Admin))
            .await
            .expect("connect");
        Cluster {
            etcd,
            api,
            registry,
            image,
            admin,
        }
    }

    /// Pods in the `default` namespace.
    pub fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.admin.clone(), "default")
    }
}

/// The agent with the built-in runtime; on drop it stops and then removes whatever its
/// containers left (processes, mounts, cgroups), even when an assertion failed.
pub struct Agent {
    pub shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    pub root: tempfile::TempDir,
    /// What it was started with; a restart starts the same.
    config: rkube_nodeagent::Config,
}

impl Agent {
    pub fn start(api: &TestApiserver, node: &str, registry: &str) -> anyhow::Result<Agent> {
        Agent::start_in(
            tempfile::tempdir().context("state dir")?,
            api,
            node,
            registry,
        )
    }

    /// An agent on the state directory `root` (a fresh one, or one an agent left).
    pub fn start_in(
        root: tempfile::TempDir,
        api: &TestApiserver,
        node: &str,
        registry: &str,
    ) -> anyhow::Result<Agent> {
        Agent::start_configured(root, api, node, registry, |_| {})
    }

    /// An agent on `root` whose test configuration `configure` adjusts first.
    pub fn start_configured(
        root: tempfile::TempDir,
        api: &TestApiserver,
        node: &str,
        registry: &str,
        configure: impl FnOnce(&mut rkube_nodeagent::Config),
    ) -> anyhow::Result<Agent> {
        let mut config = rkube_nodeagent::Config::new(
            api.client_config(Component::NodeAgent),
            node,
            root.path().to_path_buf(),
        );
        config.lease_renew_interval = Duration::from_millis(500);
        config.node_status_interval = Duration::from_millis(500);
        config.pod_resync_interval = Duration::from_millis(100);
        config.node_ip = Some("127.0.0.1".parse()?);
        config.insecure_registries = vec![registry.to_string()];
        config.shim_binary = Some(std::env::current_exe().context("this test binary")?);
        // The NodeAgent service (logs, exec, stats) on a free loopback port.
        config.listen_address = Some("127.0.0.1:0".parse()?);
        configure(&mut config);
        Ok(Agent::spawn(root, config))
    }

    fn spawn(root: tempfile::TempDir, config: rkube_nodeagent::Config) -> Agent {
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(rkube_nodeagent::run(config.clone(), shutdown.clone()));
        Agent {
            shutdown,
            task: Some(task),
            root,
            config,
        }
    }

    /// Stops this agent the way a restart would (its containers keep running) and
    /// starts a new one with the same configuration on the same state directory.
    pub async fn restart(mut self) -> anyhow::Result<Agent> {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .context("agent stops within 10s")?
                .context("agent task joins")?
                .context("agent ran without error")?;
        }
        // The old agent's drop then cleans an empty directory, not the live one.
        let root = std::mem::replace(&mut self.root, tempfile::tempdir().context("state dir")?);
        let config = self.config.clone();
        drop(self);
        Ok(Agent::spawn(root, config))
    }

    pub fn containers(&self) -> Vec<String> {
        entries(&self.root.path().join("containers"))
    }

    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("agent stops within 10s")
                .expect("agent task joins")
                .expect("agent ran without error");
        }
    }
}

/// The size of the tmpfs mounted on `dir`; panics (the test fails) when `dir` is not one.
pub fn tmpfs_size(dir: &Path) -> u64 {
    let fs = nix::sys::statfs::statfs(dir)
        .unwrap_or_else(|err| panic!("statfs {}: {err}", dir.display()));
    assert_eq!(
        fs.filesystem_type(),
        nix::sys::statfs::TMPFS_MAGIC,
        "{} is a tmpfs",
        dir.display()
    );
    fs.blocks() as u64 * fs.block_size() as u64
}

pub fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Where a container's cgroup would be, in every mounted hierarchy.
pub fn cgroup_dirs(id: &str) -> Vec<PathBuf> {
    let base = Path::new("/sys/fs/cgroup");
    if base.join("cgroup.controllers").exists() {
        return vec![base.join("rkube").join(id)];
    }
    entries(base)
        .into_iter()
        .map(|h| base.join(h).join("rkube").join(id))
        .collect()
}

pub fn kill_pid_file(path: &Path) {
    if let Some(pid) = std::fs::read_to_string(path)
        .ok()
        .and_then(|t| t.trim().parse::<i32>().ok())
        .filter(|pid| *pid > 0)
    {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.shutdown.cancel();
        clean_up_agent_state(self.root.path());
    }
}

/// Removes whatever the containers of an agent with state directory `root` left: kills
/// their processes, shims and pause processes, unmounts everything mounted under `root`
/// (root filesystems, memory-backed volumes, the runtime's state tmpfs mounts) and
/// removes their cgroups. For a stopped (or killed) agent.
pub fn clean_up_agent_state(root: &Path) {
    let containers = entries(&root.join("containers"));
    for id in &containers {
        let dir = root.join("containers").join(id);
        kill_pid_file(&dir.join("container.pid"));
        kill_pid_file(&dir.join("shim.pid"));
    }
    for id in entries(&root.join("sandboxes")) {
        kill_pid_file(&root.join("sandboxes").join(id).join("pause.pid"));
    }
    std::thread::sleep(Duration::from_millis(100));
    rkube_ctl::lab::nodes::unmount_under(root);
    for id in &containers {
        for cgroup in cgroup_dirs(id) {
            let _ = std::fs::remove_dir(cgroup);
        }
    }
}

pub fn pod(name: &str, node: &str, image: &str, command: &[&str], grace: i64) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            node_name: Some(node.into()),
            restart_policy: Some("Never".into()),
            containers: vec![Container {
                name: "main".into(),
                image: Some(image.into()),
                command: Some(command.iter().map(|s| s.to_string()).collect()),
                ..Default::default()
            }],
            termination_grace_period_seconds: Some(grace),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn phase(pod: &Pod) -> Option<String> {
    pod.status.as_ref().and_then(|s| s.phase.clone())
}

/// Every `*.log` file under `dir`.
pub fn log_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "log") {
                found.push(path);
            }
        }
    }
    found
}
