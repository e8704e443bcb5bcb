//! The built-in runtime on the pod network (root): sandboxes of two "nodes" (network
//! namespaces on a private underlay, see [`rkube_tests::netlab`]) get an `eth0` with an
//! address of their node's podCIDR, report it in their status, reach each other across
//! the VXLAN overlay, and their containers see the cluster's `/etc/resolv.conf` and an
//! `/etc/hosts` naming the pod. Removing a sandbox releases its address and link.
//!
//! The pause and container processes run in the host's namespaces apart from the
//! network namespace the pause process creates; nothing touches the host's network.
//! This binary has its own `main` (harness = false) because it doubles as the
//! runtime's `shim` helper.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnetwork::Ipv4Network;
use rkube_nodeagent::network::overlay::Peer;
use rkube_nodeagent::network::{host_veth, NetworkConfig, NetworkHandle};
use rkube_nodeagent::runtime::{
    ContainerConfig, ContainerRuntime, ImageRef, LocalRuntime, LocalRuntimeConfig, PullPolicy,
    SandboxConfig, StopSignal,
};
use rkube_tests::netlab::{lab_ip, tcp, Lab, NodeNetwork};
use rkube_tests::node::{
    cgroup_dirs, entries, kill_pid_file, push_busybox, root_test_main, Registry,
};

fn main() -> std::process::ExitCode {
    root_test_main(
        "network_runtime",
        &[("sandboxes_join_the_pod_network", || {
            Box::pin(sandboxes_join_the_pod_network())
        })],
    )
}

/// Kills every process and unmounts every root filesystem a runtime left under `root`.
struct RuntimeGuard {
    root: PathBuf,
}

impl Drop for RuntimeGuard {
    fn drop(&mut self) {
        let root = &self.root;
        for id in entries(&root.join("containers")) {
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
    }
}

fn sleeper(image: &ImageRef) -> ContainerConfig {
    ContainerConfig::new("main", image.clone(), &["sleep", "1000"])
}

fn sandbox(pid: u32, name: &str) -> SandboxConfig {
    SandboxConfig {
        pod_uid: format!("uid-{name}-{pid}"),
        namespace: "shop".into(),
        name: name.into(),
        hostname: name.into(),
    }
}

async fn sandboxes_join_the_pod_network() {
    let pid = std::process::id();
    let registry = Registry::start().await.expect("registry");
    let image = push_busybox(&registry).await.expect("push image");
    let state = tempfile::tempdir().expect("state dir");
    let lab = Lab::new(pid);
    let pod_net = 100 + (pid % 100) as u8;
    let cidr =
        |n: u8| -> Ipv4Network { format!("10.{pod_net}.{n}.0/24").parse().expect("pod CIDR") };

    let mut nodes = Vec::new();
    let mut runtimes = Vec::new();
    let mut guards = Vec::new();
    for i in 0..2 {
        let node = NodeNetwork::start(
            &lab.nodes[i].path(),
            NetworkConfig {
                state_dir: state.path().join(format!("net{i}")),
                pod_cidr: cidr(i as u8 + 1),
                underlay_ip: lab_ip(lab.underlay_net, 10 + i as u8),
            },
        )
        .expect("node network");
        let root = state.path().join(format!("runtime{i}"));
        guards.push(RuntimeGuard { root: root.clone() });
        let mut runtime = LocalRuntime::new(LocalRuntimeConfig {
            root_dir: root,
            insecure_registries: vec![registry.addr.clone()],
            shim_binary: std::env::current_exe().expect("this test binary"),
            favor_dynamic_cgroups: true,
            state_on_tmpfs: false,
            ephemeral_storage_tmpfs: None,
        })
        .expect("runtime");
        let handle = NetworkHandle::new("cluster.local");
        let waiter = tokio::spawn({
            let handle = handle.clone();
            async move { handle.wait().await }
        });
        handle.set(node.network.clone());
        let ready = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("wait() returns once the network is set")
            .expect("waiter");
        assert!(std::sync::Arc::ptr_eq(&ready, &node.network));
        runtime.set_network(handle);
        runtimes.push(runtime);
        nodes.push(node);
    }
    let peer = |i: usize| {
        let local = nodes[i].network.local();
        Peer {
            node: format!("node{i}"),
            pod_cidr: local.pod_cidr,
            vtep_mac: local.vtep_mac,
            underlay_ip: local.underlay_ip,
        }
    };
    let (peer0, peer1) = (peer(0), peer(1));
    nodes[0].network.sync_peers(&[peer1]).await.expect("sync 0");
    nodes[1].network.sync_peers(&[peer0]).await.expect("sync 1");

    let image = runtimes[0]
        .pull_image(&image, PullPolicy::IfNotPresent)
        .await
        .expect("pull on node 0");
    runtimes[1]
        .pull_image(&image.image, PullPolicy::IfNotPresent)
        .await
        .expect("pull on node 1");

    // A sandbox per node: an address of its node's range, reported in its status.
    let web_a = runtimes[0]
        .create_sandbox(&sandbox(pid, "web-a"))
        .await
        .expect("sandbox a");
    let web_b = runtimes[1]
        .create_sandbox(&sandbox(pid, "web-b"))
        .await
        .expect("sandbox b");
    let status_a = runtimes[0].sandbox_status(&web_a).await.expect("status a");
    let status_b = runtimes[1].sandbox_status(&web_b).await.expect("status b");
    let ip = |status: &rkube_nodeagent::runtime::SandboxStatus| match status.ip {
        Some(IpAddr::V4(ip)) => ip,
        other => panic!("sandbox address {other:?}"),
    };
    let (ip_a, ip_b) = (ip(&status_a), ip(&status_b));
    assert!(cidr(1).contains(ip_a), "{ip_a}");
    assert!(cidr(2).contains(ip_b), "{ip_b}");
    let netns_a = status_a.netns.clone().expect("netns a");
    let netns_b = status_b.netns.clone().expect("netns b");

    // Across the overlay, both ways, between the pause processes' namespaces.
    let port = 20000 + (pid % 20000) as u16;
    let (from, to) = (netns_a.clone(), netns_b.clone());
    let crossed = tokio::task::spawn_blocking(move || {
        tcp(&from, &to, ip_b, port).and(tcp(&to, &from, ip_a, port + 1))
    })
    .await
    .expect("tcp task");
    crossed.expect("sandbox a <-> sandbox b across nodes");

    // A container sees the cluster's resolv.conf and a hosts file naming the pod.
    let container = runtimes[0]
        .create_container(&web_a, &sleeper(&image))
        .await
        .expect("create container");
    runtimes[0]
        .start_container(&container)
        .await
        .expect("start container");
    let cat = |path: &str| vec!["cat".to_string(), path.to_string()];
    let resolv = runtimes[0]
        .exec_sync(
            &container,
            &cat("/etc/resolv.conf"),
            Duration::from_secs(10),
        )
        .await
        .expect("cat resolv.conf");
    let resolv = String::from_utf8_lossy(&resolv.output).to_string();
    let gateway = nodes[0].network.local().gateway;
    assert!(
        resolv.contains(&format!("nameserver {gateway}\n")),
        "{resolv}"
    );
    assert!(
        resolv.contains("search shop.svc.cluster.local svc.cluster.local cluster.local\n"),
        "{resolv}"
    );
    assert!(resolv.contains("options ndots:5"), "{resolv}");
    let hosts = runtimes[0]
        .exec_sync(&container, &cat("/etc/hosts"), Duration::from_secs(10))
        .await
        .expect("cat hosts");
    let hosts = String::from_utf8_lossy(&hosts.output).to_string();
    assert!(hosts.contains(&format!("{ip_a}\tweb-a")), "{hosts}");
    // Their mount points came from the shared mount-point layer: the container's
    // writable layer holds none of them (nor a copied-up /etc).
    let upper = state
        .path()
        .join("runtime0")
        .join("layers")
        .join(&container.0)
        .join("upper");
    assert_eq!(entries(&upper), Vec::<String>::new(), "{}", upper.display());
    let layers = entries(&state.path().join("runtime0").join("mountpoints"));
    assert_eq!(layers.len(), 1, "{layers:?}");

    // Removal releases the address and the host's end of the veth.
    runtimes[0]
        .kill_container(&container, StopSignal::Kill)
        .await
        .expect("kill");
    runtimes[0]
        .remove_container(&container)
        .await
        .expect("remove container");
    runtimes[0]
        .remove_sandbox(&web_a)
        .await
        .expect("remove sandbox");
    assert!(nodes[0].network.allocations().is_empty());
    assert!(!link_exists(&lab.nodes[0].name, &host_veth(&web_a.0)));
    assert!(link_exists(&lab.nodes[1].name, &host_veth(&web_b.0)));
    runtimes[1]
        .remove_sandbox(&web_b)
        .await
        .expect("remove sandbox b");
    assert!(nodes[1].network.allocations().is_empty());

    drop(runtimes);
    drop(guards);
    drop(nodes);
    drop(lab);
}

fn link_exists(netns: &str, link: &str) -> bool {
    std::process::Command::new("ip")
        .args(["-n", netns, "link", "show", link])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}
