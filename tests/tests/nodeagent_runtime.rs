//! The node agent with its built-in runtime, as root, against a real etcd, apiserver
//! and registry: a busybox image built here from Debian's busybox-static is pushed to a
//! `docker-registry` on a free loopback port, pulled over plain HTTP, and run by
//! libcontainer through the `shim` helper. A pod's output reaches its CRI log and the
//! pod goes Running then Succeeded; deleting a running pod stops it within its grace
//! period and removes its containers, sandbox and cgroups; a pod with a configMap
//! volume and a memory-backed emptyDir shared by its init and main containers shows
//! both files' contents in its log, and its volumes go with it; a `sleep` pod keeps
//! its container (same id and process, restartCount 0) across an agent restart.
//!
//! This binary has its own `main` (harness = false) because it doubles as the agent's
//! helper: the runtime re-executes it as `<this binary> shim …`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapVolumeSource, Container, EmptyDirVolumeSource, Pod, PodSpec, Volume,
    VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use oci_client::client::{ClientConfig as OciConfig, ClientProtocol, Config, ImageLayer};
use oci_client::secrets::RegistryAuth;
use rkube_client::{Api, Client, DeleteParams};
use rkube_ctl::pki::Component;
use rkube_tests::{eventually, Etcd, TestApiserver};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

const REGISTRY_BINARY: &str = "/usr/bin/docker-registry";
const BUSYBOX: &str = "/bin/busybox";

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == "shim") {
        return rkube_nodeagent::shim::main_from_args(args.into_iter().skip(1));
    }
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("nodeagent_runtime: skipped, running containers needs root");
        return ExitCode::SUCCESS;
    }
    // The workspace's one TLS crypto provider, for the registry client that pushes.
    let _ = rustls::crypto::ring::default_provider().install_default();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("nodeagent_runtime: start tokio: {err}");
            return ExitCode::FAILURE;
        }
    };
    // A panicking test unwinds through its guards (processes, mounts, cgroups) first.
    let test = "runs_a_pod_logs_its_output_and_deletes_a_running_pod";
    match runtime.block_on(async {
        tokio::spawn(runs_a_pod_logs_its_output_and_deletes_a_running_pod()).await
    }) {
        Ok(()) => {
            println!("test {test} ... ok");
            println!(
                "\ntest result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out"
            );
            ExitCode::SUCCESS
        }
        Err(err) => {
            println!("test {test} ... FAILED: {err}");
            println!(
                "\ntest result: FAILED. 0 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out"
            );
            ExitCode::FAILURE
        }
    }
}

/// A `docker-registry` on a free loopback port with temporary storage; killed on drop.
struct Registry {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Registry {
    async fn start() -> anyhow::Result<Registry> {
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

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

/// A header owned by root with a fixed mtime (the layer is reproducible).
fn tar_header() -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header
}

/// A one-layer image: `/bin/busybox` and its applet links `sh`, `echo`, `sleep`, `cat`.
fn busybox_layer() -> anyhow::Result<Vec<u8>> {
    let binary =
        std::fs::read(BUSYBOX).with_context(|| format!("read {BUSYBOX} (busybox-static)"))?;
    let mut builder = tar::Builder::new(Vec::new());
    for dir in ["bin/", "tmp/"] {
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
    for applet in ["sh", "echo", "sleep", "cat"] {
        let mut header = tar_header();
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_mode(0o777);
        header.set_size(0);
        builder.append_link(&mut header, format!("bin/{applet}"), "busybox")?;
    }
    Ok(builder.into_inner()?)
}

/// Builds the busybox image and pushes it as `<registry>/rkube-test/busybox:1`.
async fn push_busybox(registry: &Registry) -> anyhow::Result<String> {
    let layer = busybox_layer()?;
    let config = serde_json::json!({
        "architecture": std::env::consts::ARCH.replace("x86_64", "amd64").replace("aarch64", "arm64"),
        "os": "linux",
        "config": { "Env": ["PATH=/bin"], "Cmd": ["sh"] },
        "rootfs": { "type": "layers", "diff_ids": [sha256(&layer)] },
    });
    let image = format!("{}/rkube-test/busybox:1", registry.addr);
    let reference: oci_client::Reference = image.parse().context("image reference")?;
    let client = oci_client::Client::new(OciConfig {
        protocol: ClientProtocol::HttpsExcept(vec![registry.addr.clone()]),
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

/// The agent with the built-in runtime; on drop it stops and then removes whatever its
/// containers left (processes, mounts, cgroups), even when an assertion failed.
struct Agent {
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    root: tempfile::TempDir,
}

impl Agent {
    fn start(api: &TestApiserver, node: &str, registry: &str) -> anyhow::Result<Agent> {
        Agent::start_in(
            tempfile::tempdir().context("state dir")?,
            api,
            node,
            registry,
        )
    }

    /// An agent on the state directory `root` (a fresh one, or one an agent left).
    fn start_in(
        root: tempfile::TempDir,
        api: &TestApiserver,
        node: &str,
        registry: &str,
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
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(rkube_nodeagent::run(config, shutdown.clone()));
        Ok(Agent {
            shutdown,
            task: Some(task),
            root,
        })
    }

    /// Stops this agent the way a restart would (its containers keep running) and
    /// starts a new one on the same state directory.
    async fn restart(
        mut self,
        api: &TestApiserver,
        node: &str,
        registry: &str,
    ) -> anyhow::Result<Agent> {
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
        drop(self);
        Agent::start_in(root, api, node, registry)
    }

    fn containers(&self) -> Vec<String> {
        entries(&self.root.path().join("containers"))
    }

    async fn stop(mut self) {
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

fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Where a container's cgroup would be, in every mounted hierarchy.
fn cgroup_dirs(id: &str) -> Vec<PathBuf> {
    let base = Path::new("/sys/fs/cgroup");
    if base.join("cgroup.controllers").exists() {
        return vec![base.join("rkube").join(id)];
    }
    entries(base)
        .into_iter()
        .map(|h| base.join(h).join("rkube").join(id))
        .collect()
}

fn kill_pid_file(path: &Path) {
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
        let root = self.root.path();
        for id in self.containers() {
            let dir = root.join("containers").join(&id);
            kill_pid_file(&dir.join("container.pid"));
            kill_pid_file(&dir.join("shim.pid"));
            std::thread::sleep(Duration::from_millis(100));
            let _ = nix::mount::umount2(&dir.join("rootfs"), nix::mount::MntFlags::MNT_DETACH);
            for cgroup in cgroup_dirs(&id) {
                let _ = std::fs::remove_dir(cgroup);
            }
        }
        for id in entries(&root.join("sandboxes")) {
            kill_pid_file(&root.join("sandboxes").join(id).join("pause.pid"));
        }
        // Memory-backed emptyDirs are tmpfs mounts under the pods' volume directories.
        for uid in entries(&root.join("pods")) {
            let volumes = root.join("pods").join(uid).join("volumes");
            for name in entries(&volumes) {
                let _ = nix::mount::umount2(&volumes.join(name), nix::mount::MntFlags::MNT_DETACH);
            }
        }
    }
}

fn pod(name: &str, node: &str, image: &str, command: &[&str], grace: i64) -> Pod {
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

fn phase(pod: &Pod) -> Option<String> {
    pod.status.as_ref().and_then(|s| s.phase.clone())
}

/// Every `*.log` file under `dir`.
fn log_files(dir: &Path) -> Vec<PathBuf> {
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

async fn runs_a_pod_logs_its_output_and_deletes_a_running_pod() {
    let etcd = Etcd::start().await.expect("etcd");
    let api = TestApiserver::start(&etcd).await.expect("apiserver");
    let registry = Registry::start().await.expect("registry");
    let image = push_busybox(&registry).await.expect("push image");
    let admin = Client::connect(api.client_config(Component::Scheduler))
        .await
        .expect("connect");
    let node = format!("na-runtime-{}", std::process::id());
    let agent = Agent::start(&api, &node, &registry.addr).expect("agent");
    let pods: Api<Pod> = Api::namespaced(admin.clone(), "default");

    // A pod that prints and exits: Running, then Succeeded, its line in the CRI log.
    let hello = format!("hello-{}", std::process::id());
    pods.create(&pod(
        &hello,
        &node,
        &image,
        &["sh", "-c", "echo hello from rkube; sleep 2"],
        5,
    ))
    .await
    .expect("create pod");
    eventually("the pod Running", Duration::from_secs(60), || async {
        let pod = pods.get_opt(&hello).await.ok().flatten()?;
        (phase(&pod).as_deref() == Some("Running")).then_some(())
    })
    .await;
    let done = eventually("the pod Succeeded", Duration::from_secs(30), || async {
        let pod = pods.get_opt(&hello).await.ok().flatten()?;
        (phase(&pod).as_deref() == Some("Succeeded")).then_some(pod)
    })
    .await;
    let status = done.status.clone().expect("status");
    let container = &status
        .container_statuses
        .clone()
        .expect("containerStatuses")[0];
    let terminated = container
        .state
        .as_ref()
        .and_then(|s| s.terminated.clone())
        .expect("terminated state");
    assert_eq!(terminated.exit_code, 0);
    assert_eq!(terminated.reason.as_deref(), Some("Completed"));
    let logs = log_files(&agent.root.path().join("logs"));
    let text: String = logs
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .collect();
    let line = text
        .lines()
        .find(|l| l.ends_with(" stdout F hello from rkube"))
        .unwrap_or_else(|| panic!("CRI log line in {logs:?}: {text:?}"));
    let timestamp = line.split(' ').next().expect("timestamp");
    assert!(
        k8s_openapi::chrono::DateTime::parse_from_rfc3339(timestamp).is_ok(),
        "{line}"
    );

    // A pod that runs until deleted: stopped within its grace period, then removed.
    let sleeper = format!("sleeper-{}", std::process::id());
    let grace = 3;
    pods.create(&pod(&sleeper, &node, &image, &["sleep", "1000"], grace))
        .await
        .expect("create pod");
    eventually("the sleeper Running", Duration::from_secs(60), || async {
        let pod = pods.get_opt(&sleeper).await.ok().flatten()?;
        (phase(&pod).as_deref() == Some("Running")).then_some(())
    })
    .await;
    let ids = agent.containers();
    assert_eq!(ids.len(), 2, "{ids:?}");
    let sleeper_id = ids
        .iter()
        .find(|id| id.starts_with("sleeper"))
        .cloned()
        .expect("the sleeper's container");
    let pid: i32 = std::fs::read_to_string(
        agent
            .root
            .path()
            .join("containers")
            .join(&sleeper_id)
            .join("container.pid"),
    )
    .expect("container pid")
    .trim()
    .parse()
    .expect("numeric pid");
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    let deleted = Instant::now();
    pods.delete(&sleeper, &DeleteParams::default())
        .await
        .expect("delete pod");
    eventually("the sleeper removed", Duration::from_secs(30), || async {
        matches!(pods.get_opt(&sleeper).await, Ok(None)).then_some(())
    })
    .await;
    // `sleep` as pid 1 of its namespace ignores SIGTERM: SIGKILL after the grace period.
    let took = deleted.elapsed();
    assert!(
        took < Duration::from_secs(grace as u64 + 5),
        "removal took {took:?}"
    );
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    assert!(
        stat.is_empty() || stat.contains(") Z"),
        "the container process is gone: {stat}"
    );
    assert!(!agent.containers().contains(&sleeper_id));
    for dir in cgroup_dirs(&sleeper_id) {
        assert!(!dir.exists(), "cgroup {} removed", dir.display());
    }

    shares_volumes_between_init_and_main_containers(&api, &pods, &agent, &node, &image).await;

    // Deleting the finished pod removes the rest.
    pods.delete(&hello, &DeleteParams::default())
        .await
        .expect("delete pod");
    eventually(
        "the finished pod removed",
        Duration::from_secs(30),
        || async { matches!(pods.get_opt(&hello).await, Ok(None)).then_some(()) },
    )
    .await;
    // A pod already finished may be removed at once; its worker cleans up after that.
    eventually(
        "containers and sandboxes removed",
        Duration::from_secs(20),
        || async {
            (agent.containers().is_empty()
                && entries(&agent.root.path().join("sandboxes")).is_empty())
            .then_some(())
        },
    )
    .await;
    let agent = keeps_containers_running_across_an_agent_restart(
        &api,
        &pods,
        agent,
        &node,
        &image,
        &registry.addr,
    )
    .await;
    agent.stop().await;
}

/// A configMap volume and a memory-backed emptyDir: the init container writes a file
/// into the emptyDir, the main container prints it and the configMap's file.
async fn shares_volumes_between_init_and_main_containers(
    api: &TestApiserver,
    pods: &Api<Pod>,
    agent: &Agent,
    node: &str,
    image: &str,
) {
    let admin = Client::connect(api.client_config(Component::Admin))
        .await
        .expect("connect as admin");
    let config_maps: Api<ConfigMap> = Api::namespaced(admin, "default");
    let cm_name = format!("greeting-{}", std::process::id());
    config_maps
        .create(&ConfigMap {
            metadata: ObjectMeta {
                name: Some(cm_name.clone()),
                ..Default::default()
            },
            data: Some([("message".to_string(), "hello from a configMap".to_string())].into()),
            ..Default::default()
        })
        .await
        .expect("create configMap");

    let name = format!("volumes-{}", std::process::id());
    let mut spec = pod(
        &name,
        node,
        image,
        &["sh", "-c", "cat /shared/note /etc/greeting/message"],
        5,
    );
    let pod_spec = spec.spec.as_mut().expect("spec");
    let mount = |volume: &str, path: &str| VolumeMount {
        name: volume.into(),
        mount_path: path.into(),
        ..Default::default()
    };
    pod_spec.volumes = Some(vec![
        Volume {
            name: "greeting".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: cm_name.clone(),
                ..Default::default()
            }),
            ..Default::default()
        },
        Volume {
            name: "shared".into(),
            empty_dir: Some(EmptyDirVolumeSource {
                medium: Some("Memory".into()),
                size_limit: Some(k8s_openapi::apimachinery::pkg::api::resource::Quantity(
                    "1Mi".into(),
                )),
            }),
            ..Default::default()
        },
    ]);
    pod_spec.init_containers = Some(vec![Container {
        name: "writer".into(),
        image: Some(image.into()),
        command: Some(
            ["sh", "-c", "echo written by init > /shared/note"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
        ),
        volume_mounts: Some(vec![mount("shared", "/shared")]),
        ..Default::default()
    }]);
    pod_spec.containers[0].volume_mounts = Some(vec![
        mount("shared", "/shared"),
        mount("greeting", "/etc/greeting"),
    ]);
    let created = pods.create(&spec).await.expect("create pod");
    let uid = created.metadata.uid.clone().expect("uid");
    let done = eventually(
        "the volume pod Succeeded",
        Duration::from_secs(60),
        || async {
            let pod = pods.get_opt(&name).await.ok().flatten()?;
            matches!(phase(&pod).as_deref(), Some("Succeeded") | Some("Failed")).then_some(pod)
        },
    )
    .await;
    assert_eq!(
        phase(&done).as_deref(),
        Some("Succeeded"),
        "{:?}",
        done.status
    );
    let pod_dir = agent.root.path().join("pods").join(&uid);
    let shared = pod_dir.join("volumes").join("shared");
    let fs = nix::sys::statfs::statfs(&shared).expect("statfs of the emptyDir");
    assert_eq!(
        fs.filesystem_type(),
        nix::sys::statfs::TMPFS_MAGIC,
        "emptyDir is tmpfs"
    );

    let logs = log_files(&agent.root.path().join("logs"));
    let text: String = logs
        .iter()
        .filter(|p| p.parent().is_some_and(|d| d.ends_with("main")))
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .collect();
    for want in ["written by init", "hello from a configMap"] {
        assert!(
            text.lines()
                .any(|l| l.ends_with(&format!(" stdout F {want}"))),
            "{want:?} in the main container's log: {text:?}"
        );
    }

    pods.delete(&name, &DeleteParams::default())
        .await
        .expect("delete pod");
    eventually(
        "the volume pod's volumes removed",
        Duration::from_secs(30),
        || async {
            (matches!(pods.get_opt(&name).await, Ok(None)) && !pod_dir.exists()).then_some(())
        },
    )
    .await;
}

fn main_status(pod: &Pod) -> Option<k8s_openapi::api::core::v1::ContainerStatus> {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first().cloned())
}

/// A `sleep` pod survives the agent stopping and a new agent starting on the same state
/// directory: same container, same process, restartCount 0, still Running.
async fn keeps_containers_running_across_an_agent_restart(
    api: &TestApiserver,
    pods: &Api<Pod>,
    agent: Agent,
    node: &str,
    image: &str,
    registry: &str,
) -> Agent {
    let name = format!("survivor-{}", std::process::id());
    pods.create(&pod(&name, node, image, &["sleep", "1000"], 1))
        .await
        .expect("create pod");
    let running = eventually("the survivor Running", Duration::from_secs(60), || async {
        let pod = pods.get_opt(&name).await.ok().flatten()?;
        (phase(&pod).as_deref() == Some("Running")).then_some(pod)
    })
    .await;
    let before = main_status(&running).expect("container status");
    let id = agent
        .containers()
        .into_iter()
        .find(|id| id.starts_with("survivor"))
        .expect("the survivor's container");
    let pid_file = agent
        .root
        .path()
        .join("containers")
        .join(&id)
        .join("container.pid");
    let pid = std::fs::read_to_string(&pid_file).expect("container pid");

    let agent = agent
        .restart(api, node, registry)
        .await
        .expect("restart the agent");
    // Several resyncs of the new agent's worker.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pod = pods
        .get(&name)
        .await
        .expect("get the survivor after the restart");
    assert_eq!(phase(&pod).as_deref(), Some("Running"));
    let after = main_status(&pod).expect("container status");
    assert_eq!(after.container_id, before.container_id);
    assert_eq!(after.restart_count, 0);
    assert!(
        after.state.as_ref().is_some_and(|s| s.running.is_some()),
        "{after:?}"
    );
    assert_eq!(
        std::fs::read_to_string(&pid_file).expect("container pid"),
        pid,
        "the same process"
    );
    let pid: i32 = pid.trim().parse().expect("numeric pid");
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    assert!(
        !stat.is_empty() && !stat.contains(") Z"),
        "the container process still runs: {stat:?}"
    );

    pods.delete(&name, &DeleteParams::default())
        .await
        .expect("delete pod");
    eventually("the survivor removed", Duration::from_secs(30), || async {
        (matches!(pods.get_opt(&name).await, Ok(None)) && !agent.containers().contains(&id))
            .then_some(())
    })
    .await;
    agent
}
