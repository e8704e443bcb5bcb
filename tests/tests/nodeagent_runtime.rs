//! The node agent with its built-in runtime, as root, against a real etcd, apiserver
//! and registry: a busybox image built here from Debian's busybox-static is pushed to a
//! `docker-registry` on a free loopback port, pulled over plain HTTP, and run by
//! libcontainer through the `shim` helper. A pod's output reaches its CRI log and the
//! pod goes Running then Succeeded; deleting a running pod stops it within its grace
//! period and removes its containers, sandbox and cgroups; a pod with a configMap
//! volume and a memory-backed emptyDir shared by its init and main containers shows
//! both files' contents in its log, and its volumes go with it; a `sleep` pod keeps
//! its container (same id and process, restartCount 0) across an agent restart. An
//! agent told `--ephemeral-storage-tmpfs` keeps writable layers and logs on tmpfs
//! mounts of that size, which a restart keeps and a full one refuses writes to.
//!
//! This binary has its own `main` (harness = false) because it doubles as the agent's
//! helper: the runtime re-executes it as `<this binary> shim …`.

use std::path::Path;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapVolumeSource, Container, EmptyDirVolumeSource, Pod, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use rkube_client::{Api, Client, DeleteParams};
use rkube_ctl::pki::Component;
use rkube_tests::node::{
    cgroup_dirs, entries, log_files, phase, pod, root_test_main, tmpfs_size, Agent, Cluster,
};
use rkube_tests::{eventually, TestApiserver};

fn main() -> std::process::ExitCode {
    root_test_main(
        "nodeagent_runtime",
        &[
            (
                "runs_a_pod_logs_its_output_and_deletes_a_running_pod",
                || Box::pin(runs_a_pod_logs_its_output_and_deletes_a_running_pod()),
            ),
            (
                "keeps_writable_layers_and_logs_in_memory_when_asked",
                || Box::pin(keeps_writable_layers_and_logs_in_memory_when_asked()),
            ),
        ],
    )
}

async fn runs_a_pod_logs_its_output_and_deletes_a_running_pod() {
    let Cluster {
        etcd: _etcd,
        api,
        registry,
        image,
        admin,
    } = Cluster::start().await;
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
    let agent = keeps_containers_running_across_an_agent_restart(&pods, agent, &node, &image).await;
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
    pods: &Api<Pod>,
    agent: Agent,
    node: &str,
    image: &str,
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

    let agent = agent.restart().await.expect("restart the agent");
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

/// The agent's `ephemeral_storage_tmpfs` (`--ephemeral-storage-tmpfs`): `layers/` and
/// `logs/` are tmpfs mounts of the given size; a container's writes land there, a write
/// past the size fails with ENOSPC (said in its log), a restarted agent keeps the
/// mounts and what a running container wrote instead of hiding them, and removing the
/// pods empties both.
async fn keeps_writable_layers_and_logs_in_memory_when_asked() {
    const SIZE: u64 = 16 * 1024 * 1024;
    let Cluster {
        etcd: _etcd,
        api,
        registry,
        image,
        admin,
    } = Cluster::start().await;
    let node = format!("na-ephemeral-{}", std::process::id());
    let agent = Agent::start_configured(
        tempfile::tempdir().expect("state dir"),
        &api,
        &node,
        &registry.addr,
        |config| config.ephemeral_storage_tmpfs = Some(SIZE),
    )
    .expect("agent");
    let pods: Api<Pod> = Api::namespaced(admin, "default");
    let root = agent.root.path().to_path_buf();

    let writer = format!("writer-{}", std::process::id());
    let script = "dd if=/dev/zero of=/written bs=1M count=4 && echo wrote 4MiB && sleep 1000";
    pods.create(&pod(&writer, &node, &image, &["sh", "-c", script], 1))
        .await
        .expect("create the writer");
    eventually("the writer wrote", Duration::from_secs(60), || async {
        let pod = pods.get_opt(&writer).await.ok().flatten()?;
        let logged = logs_text(&root.join("logs")).contains("stdout F wrote 4MiB");
        (phase(&pod).as_deref() == Some("Running") && logged).then_some(())
    })
    .await;
    for dir in ["layers", "logs"] {
        assert_eq!(
            tmpfs_size(&root.join(dir)),
            SIZE,
            "{dir} has the size asked"
        );
    }
    let written = find_file(&root.join("layers"), "written").expect("/written in an upper dir");
    assert_eq!(
        std::fs::metadata(&written).expect("stat").len(),
        4 * 1024 * 1024
    );

    // 32 MiB do not fit in what is left of 16.
    let filler = format!("filler-{}", std::process::id());
    let too_big = pod(
        &filler,
        &node,
        &image,
        &["dd", "if=/dev/zero", "of=/filler", "bs=1M", "count=32"],
        1,
    );
    pods.create(&too_big).await.expect("create the filler");
    let failed = eventually("the filler Failed", Duration::from_secs(60), || async {
        let pod = pods.get_opt(&filler).await.ok().flatten()?;
        (phase(&pod).as_deref() == Some("Failed")).then_some(pod)
    })
    .await;
    let terminated = main_status(&failed)
        .and_then(|s| s.state)
        .and_then(|s| s.terminated)
        .expect("terminated state");
    assert_ne!(terminated.exit_code, 0);
    let text = logs_text(&root.join("logs"));
    assert!(
        text.contains("No space left on device"),
        "the filler says why: {text:?}"
    );

    // A restart keeps the mounts and the writer's file, and the writer runs on.
    let before = main_status(&pods.get(&writer).await.expect("get the writer"));
    let agent = agent.restart().await.expect("restart the agent");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = pods.get(&writer).await.expect("get the writer");
    assert_eq!(phase(&after).as_deref(), Some("Running"));
    assert_eq!(
        main_status(&after).and_then(|s| s.container_id),
        before.and_then(|s| s.container_id)
    );
    for dir in ["layers", "logs"] {
        assert_eq!(
            tmpfs_size(&root.join(dir)),
            SIZE,
            "{dir} has the size asked"
        );
    }
    assert!(written.exists(), "{} is still there", written.display());

    for name in [&writer, &filler] {
        pods.delete(name, &DeleteParams::default())
            .await
            .expect("delete pod");
    }
    eventually(
        "layers and logs emptied",
        Duration::from_secs(30),
        || async {
            (entries(&root.join("layers")).is_empty() && entries(&root.join("logs")).is_empty())
                .then_some(())
        },
    )
    .await;
    agent.stop().await;
}

/// Every CRI log line under `dir`.
fn logs_text(dir: &Path) -> String {
    log_files(dir)
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .collect()
}

/// The first file named `name` under `dir`.
fn find_file(dir: &Path, name: &str) -> Option<std::path::PathBuf> {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.file_name().is_some_and(|n| n == name) {
                return Some(path);
            }
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(path);
            }
        }
    }
    None
}
