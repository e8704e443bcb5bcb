//! The node agent's container lifecycle, as root, against a real etcd, apiserver and
//! `docker-registry`, with real containers and cgroups:
//!
//! - a container over its `16Mi` memory limit is OOM-killed (`OOMKilled`, exit 137)
//!   and restarted per its `OnFailure` policy;
//! - an image tag the registry does not have gives `ErrImagePull` with the registry's
//!   message, then `ImagePullBackOff`;
//! - configMap and secret volume files appear (`items`, `mode`, `defaultMode`) and are
//!   updated in place when the objects change, while env from the secret stays;
//! - graceful deletion: a container that handles SIGTERM goes at once, one that ignores
//!   it lives until its grace period ends;
//! - the real `rkube-nodeagent` binary killed with SIGKILL and started again leaves the
//!   container running (same id, same process, restartCount 0) and the pod's status
//!   Running and Ready throughout; a container killed while no agent ran is seen as
//!   exited (137, `Error`) and restarted by the new agent.
//!
//! This binary has its own `main` (harness = false) because it doubles as the agent's
//! helper: the runtime re-executes it as `<this binary> shim …`.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapVolumeSource, ContainerStatus, EnvVar, EnvVarSource, Event, KeyToPath,
    Node, Pod, ResourceRequirements, Secret, SecretKeySelector, SecretVolumeSource, Volume,
    VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;
use rkube_client::{Api, DeleteParams, ListParams};
use rkube_ctl::pki::Component;
use rkube_tests::eventually;
use rkube_tests::node::{
    clean_up_agent_state, log_files, phase, pod, root_test_main, Agent, Cluster,
};

fn main() -> std::process::ExitCode {
    root_test_main(
        "nodeagent_lifecycle",
        &[
            ("memory_limit_oom_kills_and_restarts", || {
                Box::pin(memory_limit_oom_kills_and_restarts())
            }),
            ("missing_image_backs_off_with_the_registry_message", || {
                Box::pin(missing_image_backs_off_with_the_registry_message())
            }),
            ("config_map_and_secret_volumes_appear_and_update", || {
                Box::pin(config_map_and_secret_volumes_appear_and_update())
            }),
            ("graceful_deletion_honours_the_grace_period", || {
                Box::pin(graceful_deletion_honours_the_grace_period())
            }),
            (
                "sigkilled_agent_restarts_without_touching_containers",
                || Box::pin(sigkilled_agent_restarts_without_touching_containers()),
            ),
        ],
    )
}

fn main_status(pod: &Pod) -> Option<ContainerStatus> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .first()
        .cloned()
}

fn condition(pod: &Pod, type_: &str) -> Option<String> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.status.clone())
}

/// The contents of the main container's CRI logs.
fn main_log(root: &Path) -> String {
    log_files(&root.join("logs"))
        .iter()
        .filter(|p| p.parent().is_some_and(|d| d.ends_with("main")))
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .collect()
}

/// Whether process `pid` is alive (exists and is not a zombie).
fn alive(pid: i32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    !stat.is_empty() && !stat.contains(") Z")
}

/// The pid of the container of the agent under `root` whose id starts with `prefix`.
fn container_pid(root: &Path, prefix: &str) -> (String, i32) {
    let id = rkube_tests::node::entries(&root.join("containers"))
        .into_iter()
        .find(|id| id.starts_with(prefix))
        .unwrap_or_else(|| panic!("a container starting with {prefix}"));
    let pid = std::fs::read_to_string(root.join("containers").join(&id).join("container.pid"))
        .expect("container pid")
        .trim()
        .parse()
        .expect("numeric pid");
    (id, pid)
}

async fn delete_and_wait(pods: &Api<Pod>, name: &str) {
    pods.delete(name, &DeleteParams::default())
        .await
        .expect("delete pod");
    eventually("the pod removed", Duration::from_secs(60), || async {
        matches!(pods.get_opt(name).await, Ok(None)).then_some(())
    })
    .await;
}

/// A shell variable that doubles until it holds far more than the 16Mi limit.
async fn memory_limit_oom_kills_and_restarts() {
    let cluster = Cluster::start().await;
    let pid = std::process::id();
    let node = format!("na-oom-{pid}");
    let agent = Agent::start(&cluster.api, &node, &cluster.registry.addr).expect("agent");
    let pods = cluster.pods();
    let name = format!("hog-{pid}");
    let mut spec = pod(
        &name,
        &node,
        &cluster.image,
        &[
            "sh",
            "-c",
            "echo started; x=0123456789abcdef; while true; do x=$x$x; done",
        ],
        1,
    );
    let pod_spec = spec.spec.as_mut().expect("spec");
    pod_spec.restart_policy = Some("OnFailure".into());
    pod_spec.containers[0].resources = Some(ResourceRequirements {
        limits: Some(BTreeMap::from([(
            "memory".to_string(),
            Quantity("16Mi".into()),
        )])),
        ..Default::default()
    });
    pods.create(&spec).await.expect("create pod");
    // The same with `restartPolicy: Never`: the pod fails, its container OOMKilled.
    let once = format!("hog-once-{pid}");
    let mut spec_once = spec.clone();
    spec_once.metadata.name = Some(once.clone());
    spec_once.spec.as_mut().expect("spec").restart_policy = Some("Never".into());
    pods.create(&spec_once).await.expect("create pod");

    let restarted = eventually(
        "the hog OOM-killed and restarted",
        Duration::from_secs(90),
        || async {
            let pod = pods.get_opt(&name).await.ok().flatten()?;
            let status = main_status(&pod)?;
            (status.restart_count >= 1
                && status
                    .last_state
                    .as_ref()
                    .and_then(|s| s.terminated.as_ref())
                    .is_some())
            .then_some(status)
        },
    )
    .await;
    let terminated = restarted
        .last_state
        .as_ref()
        .and_then(|s| s.terminated.clone())
        .expect("lastState.terminated");
    assert_eq!(
        terminated.reason.as_deref(),
        Some("OOMKilled"),
        "{restarted:?}"
    );
    assert_eq!(terminated.exit_code, 137, "{restarted:?}");
    // The restarted container ran too (its log has the line of more than one run).
    eventually(
        "the restarted container's output",
        Duration::from_secs(30),
        || async {
            let log = main_log(agent.root.path());
            (log.lines()
                .filter(|l| l.ends_with(" stdout F started"))
                .count()
                >= 2)
                .then_some(())
        },
    )
    .await;

    let failed = eventually("the Never pod Failed", Duration::from_secs(60), || async {
        let pod = pods.get_opt(&once).await.ok().flatten()?;
        (phase(&pod).as_deref() == Some("Failed")).then_some(pod)
    })
    .await;
    let status = main_status(&failed).expect("container status");
    let terminated = status
        .state
        .as_ref()
        .and_then(|s| s.terminated.clone())
        .expect("state.terminated");
    assert_eq!(
        terminated.reason.as_deref(),
        Some("OOMKilled"),
        "{status:?}"
    );
    assert_eq!(terminated.exit_code, 137, "{status:?}");
    assert_eq!(status.restart_count, 0);

    delete_and_wait(&pods, &name).await;
    delete_and_wait(&pods, &once).await;
    agent.stop().await;
}

async fn missing_image_backs_off_with_the_registry_message() {
    let cluster = Cluster::start().await;
    let pid = std::process::id();
    let node = format!("na-pull-{pid}");
    let agent = Agent::start(&cluster.api, &node, &cluster.registry.addr).expect("agent");
    let pods = cluster.pods();
    let events: Api<Event> = Api::namespaced(cluster.admin.clone(), "default");
    let name = format!("missing-{pid}");
    // The repository exists (the busybox image), the tag does not.
    let missing = format!("{}/rkube-test/busybox:missing-{pid}", cluster.registry.addr);
    pods.create(&pod(&name, &node, &missing, &["true"], 1))
        .await
        .expect("create pod");

    let seen = std::sync::Mutex::new(Vec::new());
    let backoff = eventually("ImagePullBackOff", Duration::from_secs(60), || async {
        let pod = pods.get_opt(&name).await.ok().flatten()?;
        let waiting = main_status(&pod)?.state?.waiting?;
        if let Ok(mut seen) = seen.lock() {
            seen.push((waiting.reason.clone(), waiting.message.clone()));
        }
        (waiting.reason.as_deref() == Some("ImagePullBackOff")).then_some(waiting)
    })
    .await;
    let seen = seen.into_inner().expect("observed states");
    // The registry (docker distribution) answers MANIFEST_UNKNOWN "manifest unknown".
    let message = backoff.message.clone().unwrap_or_default();
    assert!(
        message.contains("manifest unknown"),
        "the registry's message in {backoff:?}"
    );
    assert_eq!(
        message.matches("manifest unknown").count(),
        1,
        "the registry's message once in {backoff:?}"
    );
    // As kubelet 1.32: the back-off message keeps the pull error.
    assert!(
        message.starts_with(&format!(
            "Back-off pulling image {missing:?}: ErrImagePull: "
        )),
        "{backoff:?}"
    );
    let pod = pods.get(&name).await.expect("get pod");
    assert_eq!(phase(&pod).as_deref(), Some("Pending"));
    // ErrImagePull came first, with the registry's message (in the status when it was
    // seen, and in any case in the events).
    for (reason, message) in &seen {
        if reason.as_deref() == Some("ErrImagePull") {
            assert!(
                message
                    .as_deref()
                    .unwrap_or("")
                    .contains("manifest unknown"),
                "{seen:?}"
            );
        }
    }
    let mine = eventually(
        "ErrImagePull and ImagePullBackOff events",
        Duration::from_secs(20),
        || async {
            let list = events.list(&ListParams::default()).await.ok()?;
            let mine: Vec<Event> = list
                .items
                .into_iter()
                .filter(|e| e.involved_object.name.as_deref() == Some(name.as_str()))
                .collect();
            let has = |text: &str| mine.iter().any(|e| e.message.as_deref() == Some(text));
            (has("Error: ErrImagePull") && has("Error: ImagePullBackOff")).then_some(mine)
        },
    )
    .await;
    let failed = mine
        .iter()
        .filter_map(|e| e.message.as_deref())
        .find(|m| m.starts_with("Failed to pull image"))
        .unwrap_or_else(|| panic!("a Failed to pull image event in {mine:?}"));
    assert!(failed.contains("manifest unknown"), "{failed}");
    let first_err = mine
        .iter()
        .position(|e| e.message.as_deref() == Some("Error: ErrImagePull"));
    let first_backoff = mine
        .iter()
        .position(|e| e.message.as_deref() == Some("Error: ImagePullBackOff"));
    let time = |i: usize| mine[i].first_timestamp.as_ref().map(|t| t.0);
    if let (Some(err), Some(back)) = (first_err, first_backoff) {
        if let (Some(a), Some(b)) = (time(err), time(back)) {
            assert!(a <= b, "ErrImagePull before ImagePullBackOff: {mine:?}");
        }
    }

    delete_and_wait(&pods, &name).await;
    agent.stop().await;
}

async fn config_map_and_secret_volumes_appear_and_update() {
    let cluster = Cluster::start().await;
    let pid = std::process::id();
    let node = format!("na-cfg-{pid}");
    let agent = Agent::start(&cluster.api, &node, &cluster.registry.addr).expect("agent");
    let pods = cluster.pods();
    let config_maps: Api<ConfigMap> = Api::namespaced(cluster.admin.clone(), "default");
    let secrets: Api<Secret> = Api::namespaced(cluster.admin.clone(), "default");
    let cm_name = format!("settings-{pid}");
    let secret_name = format!("creds-{pid}");
    let config_map = |value: &str| ConfigMap {
        metadata: ObjectMeta {
            name: Some(cm_name.clone()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([
            ("key".to_string(), value.to_string()),
            ("other".to_string(), "not projected".to_string()),
        ])),
        ..Default::default()
    };
    let secret = |value: &str| Secret {
        metadata: ObjectMeta {
            name: Some(secret_name.clone()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            "password".to_string(),
            ByteString(value.as_bytes().to_vec()),
        )])),
        ..Default::default()
    };
    config_maps
        .create(&config_map("one"))
        .await
        .expect("create configMap");
    secrets
        .create(&secret("s3cret"))
        .await
        .expect("create secret");

    let name = format!("reader-{pid}");
    let mut spec = pod(
        &name,
        &node,
        &cluster.image,
        &[
            "sh",
            "-c",
            "while true; do echo \"cfg=$(cat /cfg/sub/value.txt) sec=$(cat /sec/password) \
             env=$PASSWORD\"; sleep 0.2; done",
        ],
        1,
    );
    let pod_spec = spec.spec.as_mut().expect("spec");
    pod_spec.volumes = Some(vec![
        Volume {
            name: "cfg".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: cm_name.clone(),
                items: Some(vec![KeyToPath {
                    key: "key".into(),
                    path: "sub/value.txt".into(),
                    mode: Some(0o600),
                }]),
                default_mode: Some(0o640),
                ..Default::default()
            }),
            ..Default::default()
        },
        Volume {
            name: "sec".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret_name.clone()),
                default_mode: Some(0o400),
                ..Default::default()
            }),
            ..Default::default()
        },
    ]);
    let main = &mut pod_spec.containers[0];
    main.volume_mounts = Some(vec![
        VolumeMount {
            name: "cfg".into(),
            mount_path: "/cfg".into(),
            read_only: Some(true),
            ..Default::default()
        },
        VolumeMount {
            name: "sec".into(),
            mount_path: "/sec".into(),
            read_only: Some(true),
            ..Default::default()
        },
    ]);
    main.env = Some(vec![EnvVar {
        name: "PASSWORD".into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret_name.clone(),
                key: "password".into(),
                optional: None,
            }),
            ..Default::default()
        }),
        ..Default::default()
    }]);
    let created = pods.create(&spec).await.expect("create pod");
    let uid = created.metadata.uid.clone().expect("uid");
    let root = agent.root.path().to_path_buf();

    let want = " stdout F cfg=one sec=s3cret env=s3cret";
    eventually(
        "the first values in the log",
        Duration::from_secs(60),
        || {
            let root = root.clone();
            async move {
                main_log(&root)
                    .lines()
                    .any(|l| l.ends_with(want))
                    .then_some(())
            }
        },
    )
    .await;
    // The files as the host sees them: only the item, with its own mode; the secret's
    // key with the default mode.
    let volumes = root.join("pods").join(&uid).join("volumes");
    let mode = |path: PathBuf| {
        std::fs::metadata(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!(mode(volumes.join("cfg/sub/value.txt")), 0o600);
    assert!(!volumes.join("cfg/other").exists(), "only the items");
    assert!(!volumes.join("cfg/key").exists(), "only the items");
    assert_eq!(mode(volumes.join("sec/password")), 0o400);
    // As kubelet: secrets never reach the disk, their volume is a tmpfs.
    let fs = nix::sys::statfs::statfs(&volumes.join("sec")).expect("statfs of the secret");
    assert_eq!(
        fs.filesystem_type(),
        nix::sys::statfs::TMPFS_MAGIC,
        "the secret volume is a tmpfs"
    );
    let (reader_id, reader_pid) = container_pid(&root, "reader");

    // Both objects change: the running container reads the new files, its env stays.
    let mut cm = config_maps.get(&cm_name).await.expect("get configMap");
    cm.data = config_map("two").data;
    config_maps
        .replace(&cm_name, &cm)
        .await
        .expect("update configMap");
    let mut s = secrets.get(&secret_name).await.expect("get secret");
    s.data = secret("changed").data;
    secrets
        .replace(&secret_name, &s)
        .await
        .expect("update secret");
    let want = " stdout F cfg=two sec=changed env=s3cret";
    eventually("the new values in the log", Duration::from_secs(90), || {
        let root = root.clone();
        async move {
            main_log(&root)
                .lines()
                .any(|l| l.ends_with(want))
                .then_some(())
        }
    })
    .await;
    assert_eq!(mode(volumes.join("cfg/sub/value.txt")), 0o600);
    assert_eq!(mode(volumes.join("sec/password")), 0o400);
    // Updated in place: the same container and process, not a restart.
    assert_eq!(container_pid(&root, "reader"), (reader_id, reader_pid));
    assert!(alive(reader_pid));
    let pod = pods.get(&name).await.expect("get pod");
    assert_eq!(main_status(&pod).map(|s| s.restart_count), Some(0));

    delete_and_wait(&pods, &name).await;
    agent.stop().await;
}

/// A container that exits on SIGTERM goes at once even with a long grace period; one
/// whose pid 1 ignores SIGTERM (`sleep`) lives on until its grace period is over.
async fn graceful_deletion_honours_the_grace_period() {
    let cluster = Cluster::start().await;
    let pid = std::process::id();
    let node = format!("na-grace-{pid}");
    let agent = Agent::start(&cluster.api, &node, &cluster.registry.addr).expect("agent");
    let pods = cluster.pods();
    let polite = format!("polite-{pid}");
    let stubborn = format!("stubborn-{pid}");
    let stubborn_grace = 8;
    pods.create(&pod(
        &polite,
        &node,
        &cluster.image,
        &[
            "sh",
            "-c",
            "trap 'echo got TERM; sleep 1; exit 0' TERM; echo ready; while true; do sleep 0.1; done",
        ],
        120,
    ))
    .await
    .expect("create pod");
    pods.create(&pod(
        &stubborn,
        &node,
        &cluster.image,
        &["sleep", "1000"],
        stubborn_grace,
    ))
    .await
    .expect("create pod");
    for name in [&polite, &stubborn] {
        eventually("the pod Running", Duration::from_secs(60), || async {
            let pod = pods.get_opt(name).await.ok().flatten()?;
            (phase(&pod).as_deref() == Some("Running")).then_some(())
        })
        .await;
    }
    let root = agent.root.path().to_path_buf();
    let (_, polite_pid) = container_pid(&root, "polite");
    let (_, stubborn_pid) = container_pid(&root, "stubborn");
    assert!(alive(polite_pid) && alive(stubborn_pid));

    // The polite one: removed long before its 120 s grace period. Its handler says so
    // in the log, which goes with the pod: look while it winds down.
    pods.delete(&polite, &DeleteParams::default())
        .await
        .expect("delete pod");
    let mut got_term = false;
    eventually(
        "the polite pod removed well within its grace period",
        Duration::from_secs(30),
        || {
            got_term |= main_log(&root)
                .lines()
                .any(|l| l.ends_with(" stdout F got TERM"));
            async { matches!(pods.get_opt(&polite).await, Ok(None)).then_some(()) }
        },
    )
    .await;
    assert!(!alive(polite_pid), "the polite container exited");
    assert!(got_term, "the polite container got SIGTERM");

    // The stubborn one: still alive part-way through its grace period, gone after.
    let deleted = Instant::now();
    pods.delete(&stubborn, &DeleteParams::default())
        .await
        .expect("delete pod");
    tokio::time::sleep(Duration::from_secs(3)).await;
    if deleted.elapsed() < Duration::from_secs(stubborn_grace as u64 - 1) {
        assert!(
            alive(stubborn_pid),
            "a container ignoring SIGTERM lives until its grace period ends"
        );
    }
    eventually(
        "the stubborn pod removed after its grace period",
        Duration::from_secs(stubborn_grace as u64 + 30),
        || async { matches!(pods.get_opt(&stubborn).await, Ok(None)).then_some(()) },
    )
    .await;
    assert!(
        deleted.elapsed() >= Duration::from_secs(stubborn_grace as u64 - 1),
        "not killed before its grace period: {:?}",
        deleted.elapsed()
    );
    assert!(!alive(stubborn_pid), "the stubborn container was killed");
    agent.stop().await;
}

/// The real agent binary as a child process; on drop it is killed and whatever its
/// containers left is removed.
struct AgentProcess {
    child: Option<Child>,
    root: PathBuf,
    log: PathBuf,
}

impl AgentProcess {
    fn spawn(
        binary: &Path,
        kubeconfig: &Path,
        node: &str,
        root: &Path,
        registry: &str,
        log: &Path,
    ) -> Self {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("agent log");
        let child = Command::new(binary)
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(["--node-name", node])
            .arg("--root-dir")
            .arg(root)
            .args(["--insecure-registry", registry])
            .args(["--node-ip", "127.0.0.1"])
            .args(["--listen-address", "127.0.0.1:0"])
            .arg("--pod-network=false")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("agent log"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", binary.display()));
        AgentProcess {
            child: Some(child),
            root: root.to_path_buf(),
            log: log.to_path_buf(),
        }
    }

    fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    /// SIGKILL, as the OOM killer or a crash would; its containers stay.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        self.kill();
        clean_up_agent_state(&self.root);
        if std::thread::panicking() {
            eprintln!(
                "agent log:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

/// `target/debug/rkube-nodeagent`, next to this test binary's `deps` directory.
fn agent_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("this test binary");
    let binary = exe
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join("rkube-nodeagent"))
        .expect("target directory");
    assert!(
        binary.exists(),
        "{} (cargo build -p rkube-nodeagent)",
        binary.display()
    );
    binary
}

fn heartbeat(node: &Node) -> Option<k8s_openapi::chrono::DateTime<k8s_openapi::chrono::Utc>> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")?
        .last_heartbeat_time
        .as_ref()
        .map(|t| t.0)
}

async fn sigkilled_agent_restarts_without_touching_containers() {
    let cluster = Cluster::start().await;
    let pid = std::process::id();
    let node = format!("na-sigkill-{pid}");
    let state = tempfile::tempdir().expect("state dir");
    let root = state.path().join("agent");
    std::fs::create_dir(&root).expect("agent root");
    let kubeconfig = state.path().join("nodeagent.kubeconfig");
    rkube_ctl::kubeconfig::write_single(
        &kubeconfig,
        "rkube",
        cluster.api.url(),
        cluster.api.ca_pem(),
        cluster.api.pki().token(Component::NodeAgent),
    )
    .expect("write the agent's kubeconfig");
    let binary = agent_binary();
    let pods = cluster.pods();
    let nodes: Api<Node> = Api::all(cluster.admin.clone());

    let mut agent = AgentProcess::spawn(
        &binary,
        &kubeconfig,
        &node,
        &root,
        &cluster.registry.addr,
        &state.path().join("agent.log"),
    );
    let name = format!("steady-{pid}");
    pods.create(&pod(&name, &node, &cluster.image, &["sleep", "1000"], 1))
        .await
        .expect("create pod");
    // A second pod whose container dies while no agent watches.
    let victim = format!("victim-{pid}");
    let mut spec = pod(&victim, &node, &cluster.image, &["sleep", "1000"], 1);
    spec.spec.as_mut().expect("spec").restart_policy = Some("OnFailure".into());
    pods.create(&spec).await.expect("create pod");
    eventually("the victim Running", Duration::from_secs(60), || async {
        let pod = pods.get_opt(&victim).await.ok().flatten()?;
        (phase(&pod).as_deref() == Some("Running")).then_some(())
    })
    .await;
    let running = eventually(
        "the pod Running and Ready",
        Duration::from_secs(60),
        || async {
            let pod = pods.get_opt(&name).await.ok().flatten()?;
            (phase(&pod).as_deref() == Some("Running")
                && condition(&pod, "Ready").as_deref() == Some("True"))
            .then_some(pod)
        },
    )
    .await;
    let before = main_status(&running).expect("container status");
    let (id, container) = container_pid(&root, "steady");
    assert!(alive(container));
    let old_agent = agent.pid();

    // SIGKILL: no shutdown path runs.
    agent.kill();
    assert!(!alive(old_agent));
    assert!(alive(container), "the container outlives its agent");
    let (_, victim_pid) = container_pid(&root, "victim");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(victim_pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the victim's container");
    let killed_at = k8s_openapi::chrono::Utc::now();
    let mut agent = AgentProcess::spawn(
        &binary,
        &kubeconfig,
        &node,
        &root,
        &cluster.registry.addr,
        &state.path().join("agent.log"),
    );

    // Watch the pod while the new agent comes up, reports its node and resyncs.
    let mut observed = Vec::new();
    let mut synced_at: Option<Instant> = None;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        assert!(
            Instant::now() < deadline,
            "the new agent heartbeats within 90s"
        );
        let pod = pods.get(&name).await.expect("get pod");
        observed.push((
            phase(&pod),
            condition(&pod, "Ready"),
            main_status(&pod).map(|s| {
                (
                    s.container_id.clone(),
                    s.restart_count,
                    s.ready,
                    s.state.as_ref().is_some_and(|st| st.running.is_some()),
                )
            }),
        ));
        if synced_at.is_none() {
            let node = nodes.get(&node).await.expect("get node");
            if heartbeat(&node).is_some_and(|t| t > killed_at) {
                synced_at = Some(Instant::now());
            }
        }
        // Several of the new agent's pod resyncs (every second by default).
        if synced_at.is_some_and(|t| t.elapsed() > Duration::from_secs(5)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let want = (
        Some("Running".to_string()),
        Some("True".to_string()),
        Some((before.container_id.clone(), 0, true, true)),
    );
    for seen in &observed {
        assert_eq!(seen, &want, "the status never flapped: {observed:?}");
    }
    assert_eq!(container_pid(&root, "steady"), (id.clone(), container));
    assert!(alive(container), "the same process still runs");

    // The container that died meanwhile: the new agent saw its exit and restarted it.
    let victim_pod = eventually(
        "the victim restarted by the new agent",
        Duration::from_secs(60),
        || async {
            let pod = pods.get_opt(&victim).await.ok().flatten()?;
            let status = main_status(&pod)?;
            (status.restart_count == 1
                && status.state.as_ref().is_some_and(|s| s.running.is_some()))
            .then_some(status)
        },
    )
    .await;
    let last = victim_pod
        .last_state
        .as_ref()
        .and_then(|s| s.terminated.clone())
        .expect("the victim's lastState.terminated");
    assert_eq!(last.exit_code, 137, "{victim_pod:?}");
    assert_eq!(last.reason.as_deref(), Some("Error"), "{victim_pod:?}");
    delete_and_wait(&pods, &victim).await;

    // The new agent still owns the pod: deleting it removes the container.
    delete_and_wait(&pods, &name).await;
    eventually("the container removed", Duration::from_secs(30), || async {
        (!rkube_tests::node::entries(&root.join("containers")).contains(&id)).then_some(())
    })
    .await;
    assert!(!alive(container));
    agent.kill();
    drop(agent);
}
