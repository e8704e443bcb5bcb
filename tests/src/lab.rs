//! Fixtures for tests that run a whole lab with `rkube up` and the real binaries from
//! `target/debug` (root): [`Lab`] (a state directory and kubeconfig of its own, `rkube
//! down` on drop, even when an assertion fails), [`LabPorts`] and [`test_underlay`]
//! (ports and an underlay CIDR unique to the test's pid), and small `kubectl` helpers.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

/// The binaries a lab runs.
pub const LAB_BINARIES: [&str; 5] = [
    "rkube",
    "rkube-apiserver",
    "rkube-scheduler",
    "rkube-controller-manager",
    "rkube-nodeagent",
];

/// The workspace's `target/debug`, where `make test` (`cargo build --bins`) puts the
/// binaries the lab runs.
pub fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("target")
        .join("debug")
}

/// Panics (with how to fix it) when a lab binary is missing from `target/debug`.
pub fn require_binaries() {
    for binary in LAB_BINARIES {
        assert!(
            bin_dir().join(binary).is_file(),
            "{binary} not in target/debug: run `cargo build --bins` (make test does)"
        );
    }
}

/// A free TCP port on the host (a race with other processes is possible but unlikely).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("0.0.0.0:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// An underlay `/24` unique to this process (`salt` tells apart two labs of one test
/// binary), out of the cluster (10.244.0.0/16) and Service (10.96.0.0/12) CIDRs.
pub fn test_underlay(salt: u32) -> String {
    let pid = std::process::id();
    format!("10.{}.{}.0/24", 200 + ((pid >> 8) + salt) % 40, pid % 256)
}

/// The ports of a lab's etcd, apiserver and registry.
#[derive(Debug, Clone, Copy)]
pub struct LabPorts {
    pub etcd: u16,
    pub peer: u16,
    pub secure: u16,
    /// The registry's port on the lab's bridge address; 0 lets `rkube up` pick a free
    /// one there (never the well-known 5000, which parallel labs would fight over).
    pub registry: u16,
}

impl LabPorts {
    /// Three free ports, and a registry port `rkube up` picks.
    pub fn free() -> LabPorts {
        LabPorts {
            etcd: free_port(),
            peer: free_port(),
            secure: free_port(),
            registry: 0,
        }
    }

    /// The `rkube up` flags for them.
    pub fn args(&self) -> Vec<String> {
        vec![
            "--etcd-client-port".into(),
            self.etcd.to_string(),
            "--etcd-peer-port".into(),
            self.peer.to_string(),
            "--secure-port".into(),
            self.secure.to_string(),
            "--registry-port".into(),
            self.registry.to_string(),
        ]
    }

    /// The whole `rkube up` command line of a test lab: `nodes` nodes on `underlay`,
    /// then `extra` flags (node sizes), then these ports.
    pub fn up_args(&self, nodes: usize, underlay: &str, extra: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = vec![
            "up".into(),
            "--nodes".into(),
            nodes.to_string(),
            "--underlay-cidr".into(),
            underlay.into(),
        ];
        args.extend(extra.iter().map(|flag| flag.to_string()));
        args.extend(self.args());
        args
    }
}

/// A lab in a temporary directory; dropping it runs `rkube down`.
pub struct Lab {
    pub dir: tempfile::TempDir,
}

impl Lab {
    /// A lab (nothing started yet) in a new temporary directory.
    pub fn new() -> Lab {
        Lab {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    /// Runs `rkube <args> --state-dir <state>` and logs what it printed.
    pub fn rkube(&self, args: &[&str]) -> Output {
        let state = self.state_dir();
        let out = Command::new(bin_dir().join("rkube"))
            .args(args)
            .arg("--state-dir")
            .arg(&state)
            .env("KUBECONFIG", self.kubeconfig())
            .output()
            .expect("run rkube");
        eprintln!(
            "rkube {args:?}: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// `rkube status -o json`.
    pub fn status(&self) -> Value {
        let out = self.rkube(&["status", "-o", "json"]);
        assert!(out.status.success(), "rkube status failed");
        serde_json::from_slice(&out.stdout).expect("status json")
    }

    pub fn kubectl(&self, args: &[&str]) -> Output {
        Command::new(crate::KUBECTL_BINARY)
            .args(args)
            .env("KUBECONFIG", self.kubeconfig())
            .output()
            .expect("run kubectl")
    }

    /// The JSON `kubectl <args>` prints, `None` when it fails.
    pub fn kubectl_json(&self, args: &[&str]) -> Option<Value> {
        let out = self.kubectl(args);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// `kubectl apply -f -` of `manifest`; panics when it fails.
    pub fn apply(&self, manifest: &str) {
        let out = Command::new(crate::KUBECTL_BINARY)
            .args(["apply", "-f", "-"])
            .env("KUBECONFIG", self.kubeconfig())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                if let Some(mut stdin) = child.stdin.take() {
                    stdin.write_all(manifest.as_bytes())?;
                }
                child.wait_with_output()
            })
            .expect("kubectl apply");
        assert!(
            out.status.success(),
            "apply: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Default for Lab {
    fn default() -> Self {
        Lab::new()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.state_dir().exists() {
            let _ = self.rkube(&["down"]);
        }
    }
}

/// A busybox pod pinned to `node` running `command`, with `labels`.
pub fn busybox_pod(name: &str, node: &str, image: &str, command: &[&str], labels: Value) -> String {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": name, "labels": labels },
        "spec": {
            "nodeSelector": { "kubernetes.io/hostname": node },
            "terminationGracePeriodSeconds": 0,
            "containers": [{
                "name": "main",
                "image": image,
                "command": command,
            }],
        },
    })
    .to_string()
}

/// Whether `pid` is a live process (a zombie has no cmdline left to read).
pub fn pid_alive(pid: i64) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| !c.is_empty())
}

fn pid_in(path: &Path) -> Option<i64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The containers an agent with root dir `root` runs, and the pids of their processes,
/// helpers and pause processes (from the runtime's pid files).
pub fn agent_processes(root: &Path) -> (Vec<String>, Vec<i64>) {
    let mut pids = Vec::new();
    let containers = crate::node::entries(&root.join("containers"));
    for id in &containers {
        let dir = root.join("containers").join(id);
        pids.extend(pid_in(&dir.join("container.pid")));
        pids.extend(pid_in(&dir.join("shim.pid")));
    }
    for id in crate::node::entries(&root.join("sandboxes")) {
        pids.extend(pid_in(&root.join("sandboxes").join(id).join("pause.pid")));
    }
    (containers, pids)
}

/// Runs `rkube down` and asserts that it left nothing of `lab`: none of `pids` alive,
/// none of the namespaces `netns`, no link of the lab's `bridge`, no mount under the
/// state directory, no state directory and no `rkube` kubeconfig context.
pub fn assert_down_leaves_nothing(lab: &Lab, pids: &[i64], netns: &[String], bridge: &str) {
    let state = lab.state_dir().canonicalize().expect("state dir");
    let down = lab.rkube(&["down"]);
    assert!(down.status.success(), "rkube down failed");
    let alive: Vec<i64> = pids.iter().copied().filter(|p| pid_alive(*p)).collect();
    assert!(alive.is_empty(), "processes left: {alive:?}");
    for ns in netns {
        assert!(
            !Path::new("/run/netns").join(ns).exists(),
            "netns {ns} left"
        );
    }
    let links: Vec<String> = crate::node::entries(Path::new("/sys/class/net"))
        .into_iter()
        .filter(|l| l.starts_with(bridge))
        .collect();
    assert!(links.is_empty(), "links left: {links:?}");
    let mounts = rkube_ctl::lab::nodes::mounts_under(&state);
    assert!(mounts.is_empty(), "mounts left: {mounts:?}");
    assert!(!lab.state_dir().exists(), "state dir left");
    let contexts = lab.kubectl(&["config", "get-contexts", "-o", "name"]);
    assert!(contexts.status.success(), "kubectl config get-contexts");
    let contexts = String::from_utf8_lossy(&contexts.stdout);
    assert!(
        contexts.lines().all(|c| c.trim() != "rkube"),
        "the rkube context is gone: {contexts}"
    );
}
