//! `rkube up --nodes 2` end to end with the real binaries from `target/debug` (root):
//! both nodes Ready with the capacity given and their network published (podCIDR,
//! VTEP MAC, underlay address) when `up` returns, `rkube net check` passing right after
//! `up` without waiting, `rkube status -o json` matching what exists, a busybox pod
//! (pushed to the lab's registry) Running on each node through the scheduler, and
//! no node ever NotReady while its agent runs (the Lease is renewed well within the
//! controller manager's grace period), and `rkube down` leaving nothing behind: no processes, namespaces, links, mounts,
//! cgroups, state or kubeconfig context. A guard tears the lab down even when an
//! assertion fails. Names, ports and the underlay CIDR are unique to the test's pid.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rkube_ctl::lab::nodes::mounts_under;
use rkube_tests::eventually;
use rkube_tests::lab::{
    agent_processes, assert_down_leaves_nothing, busybox_pod, pid_alive, require_binaries,
    test_underlay, Lab, LabPorts,
};
use rkube_tests::node::{cgroup_dirs, push_busybox_to, tmpfs_size};
use serde_json::Value;

const NODES: usize = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lab_up_runs_pods_on_every_node_and_down_leaves_nothing() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: the lab's namespaces and containers need root");
        return;
    }
    require_binaries();
    let _ = rustls::crypto::ring::default_provider().install_default();

    let lab = Lab::new();
    let underlay = test_underlay(0);
    // The registry on a port `up` picks (LabPorts), not the well-known 5000.
    let up_args = LabPorts::free().up_args(
        NODES,
        &underlay,
        &["--node-cpu", "2", "--node-memory", "3Gi"],
    );
    let up_refs: Vec<&str> = up_args.iter().map(String::as_str).collect();
    let up = lab.rkube(&up_refs);
    assert!(up.status.success(), "rkube up failed");
    let ready_at = Instant::now();
    let stdout = String::from_utf8_lossy(&up.stdout);
    assert!(stdout.contains("node-1 is Ready") && stdout.contains("node-2 is Ready"));

    // When `up` returns, every node is Ready, with the capacity it was given, and has
    // published its podCIDR and overlay annotations: no waiting needed.
    let nodes = lab
        .kubectl_json(&["get", "nodes", "-o", "json"])
        .expect("kubectl get nodes");
    let items = nodes["items"].as_array().expect("items");
    assert_eq!(items.len(), NODES);
    for node in items {
        let name = node["metadata"]["name"].as_str().expect("name");
        let ready = node["status"]["conditions"]
            .as_array()
            .expect("conditions")
            .iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True");
        assert!(ready, "{name} Ready");
        assert_eq!(node["status"]["capacity"]["cpu"], "2");
        assert_eq!(node["status"]["capacity"]["memory"], "3145728Ki");
        assert!(node["spec"]["podCIDR"].is_string(), "{name} has a podCIDR");
        let annotations = &node["metadata"]["annotations"];
        assert!(
            annotations["rkube.io/vtep-mac"].is_string(),
            "{name} published its VTEP MAC: {annotations}"
        );
        let n: usize = name
            .strip_prefix("node-")
            .and_then(|n| n.parse().ok())
            .expect("node-N");
        assert_eq!(
            annotations["rkube.io/underlay-ip"],
            underlay.replace(".0/24", &format!(".{}", n + 1)),
            "{name} published its underlay address"
        );
    }

    // `rkube net check` right after `up`: every ordered pair ok at once.
    let check = lab.rkube(&["net", "check"]);
    let report = String::from_utf8_lossy(&check.stdout).into_owned();
    assert!(
        check.status.success(),
        "net check after up failed:\n{report}"
    );
    let lines: Vec<&str> = report.lines().collect();
    assert_eq!(lines.len(), NODES * (NODES - 1), "{report}");
    assert!(lines.iter().all(|l| l.ends_with(": ok")), "{report}");
    let stderr = String::from_utf8_lossy(&check.stderr);
    assert!(
        !stderr.contains("waiting"),
        "net check had to wait for annotations `up` should have awaited: {stderr}"
    );

    // `status -o json` matches what exists.
    let status = lab.rkube(&["status", "-o", "json"]);
    assert!(status.status.success());
    let status: Value = serde_json::from_slice(&status.stdout).expect("status json");
    assert_eq!(status["apiserver_ready"], true);
    assert_eq!(
        status["kubeconfig"].as_str(),
        Some(lab.kubeconfig().to_str().expect("utf-8"))
    );
    let registry = status["registry"].as_str().expect("registry").to_string();
    let bridge = status["bridge"].as_str().expect("bridge").to_string();
    assert!(Path::new("/sys/class/net").join(&bridge).exists());
    let bridge_ip = underlay.replace(".0/24", ".1");
    assert!(registry.starts_with(&format!("{bridge_ip}:")), "{registry}");
    let status_nodes = status["nodes"].as_array().expect("nodes").clone();
    assert_eq!(status_nodes.len(), NODES);
    let mut netns = Vec::new();
    let mut pids: Vec<i64> = Vec::new();
    let mut roots = Vec::new();
    for (i, node) in status_nodes.iter().enumerate() {
        assert_eq!(node["name"], format!("node-{}", i + 1));
        assert_eq!(
            node["underlay_ip"],
            underlay.replace(".0/24", &format!(".{}", i + 2))
        );
        assert_eq!(node["ready"], true);
        let ns = node["netns"].as_str().expect("netns").to_string();
        assert!(Path::new("/run/netns").join(&ns).exists(), "netns {ns}");
        let agent = node["agent_pid"].as_i64().expect("agent pid");
        assert!(pid_alive(agent), "agent {agent} alive");
        // The agent really runs inside its node's namespace.
        let agent_ns = std::fs::metadata(format!("/proc/{agent}/ns/net")).expect("ns");
        let node_ns = std::fs::metadata(Path::new("/run/netns").join(&ns)).expect("ns");
        use std::os::unix::fs::MetadataExt;
        assert_eq!(agent_ns.ino(), node_ns.ino(), "agent in {ns}");
        netns.push(ns);
        pids.push(agent);
        roots.push(PathBuf::from(node["root_dir"].as_str().expect("root")));
    }
    // The nodes reach each other over the underlay (what the VXLAN overlay rides on).
    let node2_ip = status_nodes[1]["underlay_ip"].as_str().expect("ip");
    let ping = Command::new("ip")
        .args([
            "netns",
            "exec",
            &netns[0],
            "/bin/busybox",
            "ping",
            "-c",
            "1",
            "-W",
            "5",
        ])
        .arg(node2_ip)
        .output()
        .expect("run ping");
    assert!(
        ping.status.success(),
        "node-1 pings node-2 at {node2_ip}: {}",
        String::from_utf8_lossy(&ping.stdout)
    );
    for process in status["processes"].as_array().expect("processes") {
        let pid = process["pid"].as_i64();
        assert!(pid.is_some_and(pid_alive), "{process} runs");
        pids.extend(pid);
    }

    // A busybox pod from the lab registry on each node, placed by the scheduler.
    let image = push_busybox_to(&registry).await.expect("push busybox");
    for n in 1..=NODES {
        lab.apply(&busybox_pod(
            &format!("busy-{n}"),
            &format!("node-{n}"),
            &image,
            &["sleep", "3600"],
            serde_json::json!({}),
        ));
    }
    for n in 1..=NODES {
        let pod = eventually(
            &format!("busy-{n} Running"),
            Duration::from_secs(90),
            || {
                let pod = lab.kubectl_json(&["get", "pod", &format!("busy-{n}"), "-o", "json"]);
                async move { pod.filter(|p| p["status"]["phase"] == "Running") }
            },
        )
        .await;
        let node_name = format!("node-{n}");
        assert_eq!(pod["spec"]["nodeName"], node_name);
        // The pod network gives the pod an address from its node's podCIDR.
        let node = lab
            .kubectl_json(&["get", "node", &node_name, "-o", "json"])
            .expect("get node");
        let cidr = node["spec"]["podCIDR"].as_str().expect("podCIDR");
        let ip = pod["status"]["podIP"].as_str().expect("pod IP");
        let prefix = cidr.rsplit_once('.').expect("IPv4 /24").0;
        assert!(ip.starts_with(&format!("{prefix}.")), "{ip} in {cidr}");
    }

    // The nodes stayed Ready: past the lab's 8 s grace period and a Lease renewal or
    // two more, the node lifecycle controller never saw a Lease run out.
    let settle = Duration::from_secs(12).saturating_sub(ready_at.elapsed());
    tokio::time::sleep(settle).await;
    let events = lab
        .kubectl_json(&["get", "events", "-A", "-o", "json"])
        .expect("get events");
    let not_ready: Vec<String> = events["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|e| e["reason"] == "NodeNotReady")
        .map(|e| format!("{} {}", e["involvedObject"]["name"], e["lastTimestamp"]))
        .collect();
    assert!(not_ready.is_empty(), "nodes went NotReady: {not_ready:?}");

    // Lab nodes keep their containers' writable layers and logs in memory.
    for root in &roots {
        for dir in ["layers", "logs"] {
            tmpfs_size(&root.join(dir));
        }
    }

    // What the containers made, to check that `down` removes it.
    let mut containers = Vec::new();
    for root in &roots {
        let (ids, processes) = agent_processes(root);
        containers.extend(ids);
        pids.extend(processes);
    }
    assert!(containers.len() >= NODES, "containers: {containers:?}");
    let state = lab.state_dir().canonicalize().expect("state dir");
    assert!(
        !mounts_under(&state).is_empty(),
        "the running containers have rootfs mounts under the state dir"
    );
    assert!(
        containers
            .iter()
            .any(|id| cgroup_dirs(id).iter().any(|d| d.exists())),
        "the running containers have cgroups"
    );

    assert_down_leaves_nothing(&lab, &pids, &netns, &bridge);
    for id in &containers {
        for dir in cgroup_dirs(id) {
            assert!(!dir.exists(), "cgroup {} left", dir.display());
        }
    }
}
