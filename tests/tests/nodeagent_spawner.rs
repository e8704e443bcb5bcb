//! The runtime's helper spawner, as root, with real containers: one `shim spawner`
//! process per runtime forks the pause and `run` helpers, which then read like the
//! executed helpers in `ps` (so tools that look for a helper by its bundle still find
//! it) and live on detached from it; a helper's failure and its message come back
//! through it; a killed spawner is replaced on the next start; and it exits with the
//! runtime. A container's root file system is mounted in its helper's mount namespace
//! only.
//!
//! Its own `main` (harness = false): this binary doubles as the runtime's helper.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rkube_nodeagent::runtime::spawner::Spawner;
use rkube_nodeagent::runtime::{
    ContainerConfig, ContainerRuntime, ContainerState, ImageRef, LocalRuntime, LocalRuntimeConfig,
    PullPolicy, SandboxConfig,
};
use rkube_tests::eventually;
use rkube_tests::node::{clean_up_agent_state, push_busybox, root_test_main, Registry};

fn main() -> std::process::ExitCode {
    root_test_main(
        "nodeagent_spawner",
        &[
            ("one_spawner_forks_the_helpers", || {
                Box::pin(one_spawner_forks_the_helpers())
            }),
            ("failures_come_back_with_their_message", || {
                Box::pin(failures_come_back_with_their_message())
            }),
        ],
    )
}

/// Removes what the runtime under `root` left, even when an assertion failed.
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        clean_up_agent_state(&self.0);
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `/proc/<pid>/cmdline` with its NULs as spaces.
fn command_line(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .unwrap_or_default()
}

fn parent(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The live (not zombie) children of this process running `shim spawner`.
fn spawners() -> Vec<i32> {
    let me = std::process::id() as i32;
    rkube_tests::node::entries(Path::new("/proc"))
        .into_iter()
        .filter_map(|e| e.parse::<i32>().ok())
        .filter(|pid| parent(*pid) == Some(me))
        .filter(|pid| command_line(*pid).contains(" shim spawner "))
        .collect()
}

fn read_pid(path: &Path) -> i32 {
    std::fs::read_to_string(path)
        .unwrap_or_else(|err| panic!("read {}: {err}", path.display()))
        .trim()
        .parse()
        .unwrap_or_else(|err| panic!("pid in {}: {err}", path.display()))
}

fn sleeper(image: &ImageRef, attempt: u32) -> ContainerConfig {
    ContainerConfig {
        attempt,
        ..ContainerConfig::new("sleeper", image.clone(), &["sleep", "300"])
    }
}

async fn one_spawner_forks_the_helpers() {
    let registry = Registry::start().await.expect("registry");
    let image = push_busybox(&registry).await.expect("push image");
    let root = tempfile::Builder::new()
        .prefix("rkube-spawner-")
        .tempdir()
        .expect("root")
        .keep();
    let _cleanup = Cleanup(root.clone());
    let runtime = LocalRuntime::new(LocalRuntimeConfig {
        root_dir: root.clone(),
        insecure_registries: vec![registry.addr.clone()],
        shim_binary: std::env::current_exe().expect("this binary"),
        favor_dynamic_cgroups: true,
        state_on_tmpfs: true,
        ephemeral_storage_tmpfs: None,
    })
    .expect("runtime");
    assert_eq!(
        spawners(),
        Vec::<i32>::new(),
        "no spawner before the first helper"
    );
    let image = runtime
        .pull_image(&image, PullPolicy::IfNotPresent)
        .await
        .expect("pull");
    let sandbox = runtime
        .create_sandbox(&SandboxConfig {
            pod_uid: format!("spawner-{}", std::process::id()),
            namespace: "default".into(),
            name: "spawner".into(),
            hostname: "spawner".into(),
        })
        .await
        .expect("sandbox");
    let first = runtime
        .create_container(&sandbox, &sleeper(&image, 0))
        .await
        .expect("create");
    runtime.start_container(&first).await.expect("start");
    let spawner = spawners();
    assert_eq!(
        spawner.len(),
        1,
        "one spawner for the sandbox and the container"
    );

    // The helpers name what they hold, as executed ones do, and are nobody's children
    // here: neither this process's nor the spawner's.
    let pause = read_pid(&root.join("sandboxes").join(&sandbox.0).join("pause.pid"));
    let helper = read_pid(&root.join("containers").join(&first.0).join("shim.pid"));
    let pause_line = command_line(pause);
    assert!(pause_line.contains(" shim pause --dir "), "{pause_line}");
    let helper_line = command_line(helper);
    assert!(
        helper_line.contains(&format!(" shim run --id {} --bundle ", first.0)),
        "{helper_line}"
    );
    for pid in [pause, helper] {
        let up = parent(pid);
        assert!(
            up != Some(std::process::id() as i32) && up != Some(spawner[0]),
            "helper {pid} is still attached to {up:?}"
        );
    }
    assert!(matches!(
        runtime.container_status(&first).await.expect("status"),
        ContainerState::Running { .. }
    ));
    // Its root file system is mounted in the helper's mount namespace, not the node's.
    let rootfs = root.join("containers").join(&first.0).join("rootfs");
    let node_mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(
        !node_mounts.contains(&rootfs.display().to_string()),
        "{} is in the node's mount table",
        rootfs.display()
    );
    let helper_mounts =
        std::fs::read_to_string(format!("/proc/{helper}/mountinfo")).expect("helper mountinfo");
    assert!(
        helper_mounts.contains(&rootfs.display().to_string()),
        "{helper_mounts}"
    );

    // A killed spawner is replaced by the next start, which works.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(spawner[0]),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the spawner");
    eventually(
        "the killed spawner is gone",
        Duration::from_secs(5),
        || async { (!spawners().contains(&spawner[0])).then_some(()) },
    )
    .await;
    let second = runtime
        .create_container(&sandbox, &sleeper(&image, 1))
        .await
        .expect("create after the kill");
    runtime
        .start_container(&second)
        .await
        .expect("start after the kill");
    let replaced = spawners();
    assert_eq!(replaced.len(), 1, "{replaced:?}");
    assert_ne!(replaced, spawner);
    // The first container did not notice.
    assert!(matches!(
        runtime.container_status(&first).await.expect("status"),
        ContainerState::Running { .. }
    ));

    for id in [&first, &second] {
        runtime.remove_container(id).await.expect("remove");
    }
    runtime
        .remove_sandbox(&sandbox)
        .await
        .expect("remove sandbox");
    // The spawner goes with its runtime.
    drop(runtime);
    eventually(
        "the spawner exits with the runtime",
        Duration::from_secs(5),
        || async { spawners().is_empty().then_some(()) },
    )
    .await;
}

async fn failures_come_back_with_their_message() {
    let spawner = Spawner::new(std::env::current_exe().expect("this binary"));
    // A bundle without config.json: the detached helper fails and tells its launcher.
    let bundle = tempfile::tempdir().expect("bundle");
    let id = format!("no-config-{}", std::process::id());
    let reply = spawner
        .run(
            "run",
            &[
                "--id".as_ref(),
                id.as_ref(),
                "--bundle".as_ref(),
                bundle.path().as_os_str(),
                "--root".as_ref(),
                bundle.path().join("lc").as_os_str(),
                "--log".as_ref(),
                bundle.path().join("log").as_os_str(),
                "--cgroup".as_ref(),
                format!("/rkube-spawner-test/{id}").as_ref(),
            ],
        )
        .await
        .expect("the spawner answers")
        .expect("the spawner took the request");
    assert_eq!(reply.status, "exit 1", "{reply:?}");
    assert!(!reply.success());
    assert!(
        reply
            .message
            .contains(&format!("failed to create container {id}")),
        "the helper's own words come back: {reply:?}"
    );

    let unknown = spawner
        .run("no-such-command", &[])
        .await
        .expect("the spawner answers")
        .expect("the spawner took the request");
    assert!(!unknown.success());
    assert!(unknown.message.contains("no-such-command"), "{unknown:?}");

    // Arguments that cannot travel as NUL-ended UTF-8 are not taken: the caller runs
    // the helper itself then.
    let refused = spawner
        .run("delete", &["".as_ref()])
        .await
        .expect("nothing was sent");
    assert!(refused.is_none());
}
