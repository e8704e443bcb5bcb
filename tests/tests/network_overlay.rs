//! The pod network on real namespaces, veth pairs, bridges and VXLAN devices (root).
//!
//! A private underlay: one "underlay" network namespace holding a bridge, three "node"
//! namespaces each with a veth (`eth0`) on it and an address from a range derived from
//! the pid. Each node runs [`PodNetwork`] on a thread of its own inside its namespace
//! (netlink sockets bind to their creator's namespace); "pods" are plain network
//! namespaces attached to it. Peers come from Node objects through
//! [`overlay::peers_from_nodes`], as the agent's Node watch derives them. No host
//! networking is touched; every namespace goes away on drop, even when a step fails.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use ipnetwork::Ipv4Network;
use k8s_openapi::api::core::v1::{Node, NodeSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use rkube_client::{Api, Client};
use rkube_ctl::netcheck::{self, Hop, IpProbe, NodeView};
use rkube_ctl::pki::Component;
use rkube_nodeagent::network::node::{self, Startup};
use rkube_nodeagent::network::overlay::{
    self, Change, Peer, Present, UNDERLAY_IP_ANNOTATION, VTEP_MAC_ANNOTATION,
};
use rkube_nodeagent::network::{host_veth, LocalNode, NetworkConfig, NetworkHandle, PodNetwork};
use rkube_tests::netlab::{ip, lab_ip, tcp, Lab, Netns};
use rkube_tests::{eventually, Etcd, TestApiserver};
use tokio_util::sync::CancellationToken;

fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

enum Request {
    Attach(String, PathBuf, mpsc::Sender<Result<Ipv4Addr, String>>),
    Detach(String, mpsc::Sender<Result<(), String>>),
    Sync(Vec<Peer>, mpsc::Sender<Result<Vec<Change>, String>>),
    State(mpsc::Sender<Result<Present, String>>),
    Allocations(mpsc::Sender<BTreeMap<Ipv4Addr, String>>),
}

/// One node's network, run on a thread inside the node's namespace, like the agent.
struct NodeAgent {
    name: String,
    local: LocalNode,
    commands: Option<mpsc::Sender<Request>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl NodeAgent {
    fn start(name: &str, netns: &Path, config: NetworkConfig) -> NodeAgent {
        let (ready_tx, ready_rx) = mpsc::channel();
        let (tx, rx) = mpsc::channel::<Request>();
        let path = netns.to_path_buf();
        let thread = std::thread::spawn(move || {
            let file = std::fs::File::open(&path).expect("open node netns");
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let network = match PodNetwork::start(config).await {
                    Ok(network) => network,
                    Err(err) => {
                        let _ = ready_tx.send(Err(format!("{:#}", anyhow::Error::from(err))));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(network.local().clone()));
                while let Ok(command) = rx.recv() {
                    match command {
                        Request::Attach(sandbox, netns, reply) => {
                            let result = network.attach(&sandbox, &netns).await;
                            let _ = reply
                                .send(result.map_err(|e| format!("{:#}", anyhow::Error::from(e))));
                        }
                        Request::Detach(sandbox, reply) => {
                            let result = network.detach(&sandbox).await;
                            let _ = reply
                                .send(result.map_err(|e| format!("{:#}", anyhow::Error::from(e))));
                        }
                        Request::Sync(peers, reply) => {
                            let result = network.sync_peers(&peers).await;
                            let _ = reply
                                .send(result.map_err(|e| format!("{:#}", anyhow::Error::from(e))));
                        }
                        Request::State(reply) => {
                            let result = network.overlay_state().await;
                            let _ = reply
                                .send(result.map_err(|e| format!("{:#}", anyhow::Error::from(e))));
                        }
                        Request::Allocations(reply) => {
                            let _ = reply.send(network.allocations());
                        }
                    }
                }
            });
        });
        let local = match ready_rx.recv() {
            Ok(Ok(local)) => local,
            Ok(Err(err)) => panic!("start the network of {name}: {err}"),
            Err(_) => panic!("the network thread of {name} died"),
        };
        NodeAgent {
            name: name.to_string(),
            local,
            commands: Some(tx),
            thread: Some(thread),
        }
    }

    fn call<T>(&self, make: impl FnOnce(mpsc::Sender<T>) -> Request) -> T {
        let (tx, rx) = mpsc::channel();
        self.commands
            .as_ref()
            .expect("running")
            .send(make(tx))
            .expect("node thread alive");
        rx.recv_timeout(Duration::from_secs(30))
            .expect("node thread answered")
    }

    fn attach(&self, sandbox: &str, pod: &Netns) -> Ipv4Addr {
        let result = self.call(|tx| Request::Attach(sandbox.to_string(), pod.path(), tx));
        result.unwrap_or_else(|err| panic!("attach {sandbox} on {}: {err}", self.name))
    }

    fn detach(&self, sandbox: &str) {
        let result = self.call(|tx| Request::Detach(sandbox.to_string(), tx));
        result.unwrap_or_else(|err| panic!("detach {sandbox} on {}: {err}", self.name))
    }

    fn sync(&self, peers: &[Peer]) -> Vec<Change> {
        let result = self.call(|tx| Request::Sync(peers.to_vec(), tx));
        result.unwrap_or_else(|err| panic!("sync peers on {}: {err}", self.name))
    }

    fn state(&self) -> Present {
        let result = self.call(Request::State);
        result.unwrap_or_else(|err| panic!("overlay state on {}: {err}", self.name))
    }

    fn allocations(&self) -> BTreeMap<Ipv4Addr, String> {
        self.call(Request::Allocations)
    }

    /// Stops the thread (dropping its netlink sockets), like an agent exiting.
    fn stop(&mut self) {
        self.commands = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for NodeAgent {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The Node object an agent would leave behind: podCIDR and overlay annotations.
fn node_object(name: &str, local: &LocalNode) -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            annotations: Some(BTreeMap::from([
                (VTEP_MAC_ANNOTATION.to_string(), local.vtep_mac.to_string()),
                (
                    UNDERLAY_IP_ANNOTATION.to_string(),
                    local.underlay_ip.to_string(),
                ),
            ])),
            ..ObjectMeta::default()
        },
        spec: Some(NodeSpec {
            pod_cidr: Some(local.pod_cidr.to_string()),
            ..NodeSpec::default()
        }),
        status: None,
    }
}

/// Syncs every agent against the Nodes of `agents`, as each agent's Node watch would.
fn sync_all(agents: &[&NodeAgent]) -> Vec<Vec<Change>> {
    let nodes: Vec<Node> = agents
        .iter()
        .map(|agent| node_object(&agent.name, &agent.local))
        .collect();
    agents
        .iter()
        .map(|agent| agent.sync(&overlay::peers_from_nodes(&nodes, &agent.name)))
        .collect()
}

#[test]
fn pod_network_across_three_nodes() {
    if !is_root() {
        eprintln!("skipped: the pod network test needs root");
        return;
    }
    let pid = std::process::id();
    let state = tempfile::tempdir().expect("state dir");
    let lab = Lab::new(pid);
    let _ = &lab.underlay;
    let pod_net = 100 + (pid % 100) as u8;
    let cidr =
        |n: u8| -> Ipv4Network { format!("10.{pod_net}.{n}.0/24").parse().expect("pod CIDR") };
    let config = |i: usize, underlay_ip: Ipv4Addr| NetworkConfig {
        state_dir: state.path().join(format!("node{i}")),
        pod_cidr: cidr(i as u8 + 1),
        underlay_ip,
    };
    let names = ["node-a", "node-b", "node-c"];
    let mut agents: Vec<NodeAgent> = (0..3)
        .map(|i| {
            NodeAgent::start(
                names[i],
                &lab.nodes[i].path(),
                config(i, lab_ip(lab.underlay_net, 10 + i as u8)),
            )
        })
        .collect();
    for agent in &agents {
        assert_eq!(agent.local.mtu, 1450, "underlay 1500 minus VXLAN's 50");
        assert_eq!(agent.local.gateway, ipnetwork_first(agent.local.pod_cidr));
    }

    // Peers: three entries per other node, then nothing more to do.
    let changes = sync_all(&[&agents[0], &agents[1], &agents[2]]);
    for change in &changes {
        assert_eq!(change.len(), 6, "{change:?}");
    }
    let again = sync_all(&[&agents[0], &agents[1], &agents[2]]);
    assert!(again.iter().all(Vec::is_empty), "{again:?}");

    // Drift is fixed by diffing against the kernel: a lost FDB entry comes back, a
    // route nobody wants goes.
    let node_a = &lab.nodes[0].name;
    let stale = format!("10.{pod_net}.77.0/24");
    let stale_gw = format!("10.{pod_net}.77.1");
    ip(&[
        "-n", node_a, "route", "add", &stale, "via", &stale_gw, "dev", "rkube.1", "onlink",
    ]);
    let b_mac = agents[1].local.vtep_mac.to_string();
    let b_ip = agents[1].local.underlay_ip.to_string();
    let deleted = std::process::Command::new("bridge")
        .args([
            "-n", node_a, "fdb", "del", &b_mac, "dev", "rkube.1", "dst", &b_ip,
        ])
        .output()
        .expect("bridge fdb del");
    assert!(deleted.status.success(), "{deleted:?}");
    let nodes: Vec<Node> = agents
        .iter()
        .map(|agent| node_object(&agent.name, &agent.local))
        .collect();
    let fixed = agents[0].sync(&overlay::peers_from_nodes(&nodes, &agents[0].name));
    assert_eq!(fixed.len(), 2, "{fixed:?}");
    assert!(fixed.contains(&Change::SetFdb {
        mac: agents[1].local.vtep_mac,
        dst: agents[1].local.underlay_ip
    }));
    assert!(fixed
        .iter()
        .any(|c| matches!(c, Change::DeleteRoute(r) if r.destination.to_string() == stale)));
    let state = agents[0].state();
    assert_eq!(
        state.fdb.get(&agents[1].local.vtep_mac),
        Some(&agents[1].local.underlay_ip)
    );
    assert!(!state
        .routes
        .iter()
        .any(|r| r.destination.to_string() == stale));

    // Pods: two on a, one on b, one on c.
    let pods: Vec<Netns> = ["a1", "a2", "b1", "c1"]
        .iter()
        .map(|p| Netns::add(format!("rkp{pid}{p}")))
        .collect();
    let a1 = agents[0].attach("sb-a1", &pods[0]);
    let a2 = agents[0].attach("sb-a2", &pods[1]);
    let b1 = agents[1].attach("sb-b1", &pods[2]);
    let c1 = agents[2].attach("sb-c1", &pods[3]);
    assert!(cidr(1).contains(a1) && cidr(1).contains(a2) && a1 != a2);
    assert!(cidr(2).contains(b1) && cidr(3).contains(c1));
    assert_ne!(a1, agents[0].local.gateway);
    let port_details = std::process::Command::new("ip")
        .args([
            "-d",
            "-n",
            &lab.nodes[0].name,
            "link",
            "show",
            &host_veth("sb-a1"),
        ])
        .output()
        .expect("ip link show");
    let port_details = String::from_utf8_lossy(&port_details.stdout);
    assert!(
        port_details.contains("master rkube0") && port_details.contains("hairpin on"),
        "{port_details}"
    );
    // Both ends of the veth are IPv4-only: no IPv6 address on either, not even a
    // link-local one (the pod's lo keeps ::1).
    let ipv6_of = |netns: &str, device: &str| -> String {
        let out = std::process::Command::new("ip")
            .args(["-n", netns, "-6", "-o", "addr", "show", "dev", device])
            .output()
            .expect("ip -6 addr");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(ipv6_of(&lab.nodes[0].name, &host_veth("sb-a1")), "");
    assert_eq!(ipv6_of(&pods[0].name, "eth0"), "");
    assert!(ipv6_of(&pods[0].name, "lo").contains("::1"));
    assert_eq!(
        agents[0].attach("sb-a1", &pods[0]),
        a1,
        "attach is idempotent per sandbox"
    );

    // Pod to pod across nodes, both ways, and on the same node.
    let port = 20000 + (pid % 20000) as u16;
    tcp(&pods[0].path(), &pods[2].path(), b1, port).expect("a1 -> b1 across nodes");
    tcp(&pods[2].path(), &pods[0].path(), a1, port + 1).expect("b1 -> a1 across nodes");
    tcp(&pods[3].path(), &pods[2].path(), b1, port + 2).expect("c1 -> b1 across nodes");
    tcp(&pods[0].path(), &pods[3].path(), c1, port + 3).expect("a1 -> c1 across nodes");
    tcp(&pods[0].path(), &pods[1].path(), a2, port + 4).expect("a1 -> a2 on one node");

    // The diagnosis sees a healthy overlay between every pair.
    let views = |agents: &[&NodeAgent]| -> Vec<NodeView> {
        agents
            .iter()
            .map(|agent| {
                let index = names
                    .iter()
                    .position(|n| *n == agent.name)
                    .expect("known node");
                NodeView {
                    name: agent.name.clone(),
                    netns: lab.nodes[index].name.clone(),
                    pod_cidr: Some((
                        agent.local.pod_cidr.network(),
                        agent.local.pod_cidr.prefix(),
                    )),
                    vtep_mac: Some(agent.local.vtep_mac.to_string()),
                    underlay_ip: Some(agent.local.underlay_ip),
                }
            })
            .collect()
    };
    let results = netcheck::check(&views(&[&agents[0], &agents[1], &agents[2]]), &IpProbe);
    assert!(
        results.iter().all(|r| r.broken.is_none()),
        "{}",
        netcheck::render(&results)
    );

    // An agent restart: start-up runs again; addresses, kernel state and traffic stay,
    // and a new pod never gets an address in use.
    let before = agents[0].allocations();
    agents[0].stop();
    agents[0] = NodeAgent::start(
        names[0],
        &lab.nodes[0].path(),
        config(0, lab_ip(lab.underlay_net, 10)),
    );
    assert_eq!(agents[0].allocations(), before);
    let again = sync_all(&[&agents[0], &agents[1], &agents[2]]);
    assert!(again.iter().all(Vec::is_empty), "{again:?}");
    tcp(&pods[0].path(), &pods[2].path(), b1, port + 5)
        .expect("a1 -> b1 after the agent restarted");
    let a3_ns = Netns::add(format!("rkp{pid}a3"));
    let a3 = agents[0].attach("sb-a3", &a3_ns);
    assert!(a3 != a1 && a3 != a2, "{a3} handed out twice");
    tcp(&a3_ns.path(), &pods[3].path(), c1, port + 6).expect("a3 -> c1");

    // Detach releases the address and removes the pod's link.
    agents[0].detach("sb-a3");
    assert!(!agents[0].allocations().values().any(|s| s == "sb-a3"));
    assert!(
        tcp(&pods[3].path(), &a3_ns.path(), a3, port + 7).is_err(),
        "a detached pod is unreachable"
    );
    drop(a3_ns);

    // Node b's underlay address changes: its agent restarts on the new one (same VTEP
    // MAC) and the others repoint their FDB entry.
    let old_b = lab_ip(lab.underlay_net, 11);
    let new_b = lab_ip(lab.underlay_net, 21);
    let b_mac = agents[1].local.vtep_mac;
    agents[1].stop();
    // Old first: deleting a primary address also drops the secondaries of its subnet.
    ip(&[
        "-n",
        &lab.nodes[1].name,
        "addr",
        "del",
        &format!("{old_b}/24"),
        "dev",
        "eth0",
    ]);
    ip(&[
        "-n",
        &lab.nodes[1].name,
        "addr",
        "add",
        &format!("{new_b}/24"),
        "dev",
        "eth0",
    ]);
    agents[1] = NodeAgent::start(names[1], &lab.nodes[1].path(), config(1, new_b));
    assert_eq!(agents[1].local.vtep_mac, b_mac, "the VTEP keeps its MAC");
    assert_eq!(agents[1].local.underlay_ip, new_b);
    let changes = sync_all(&[&agents[0], &agents[1], &agents[2]]);
    for i in [0, 2] {
        assert_eq!(
            changes[i],
            vec![Change::SetFdb {
                mac: b_mac,
                dst: new_b
            }],
            "node {i}"
        );
    }
    // b's VXLAN device was recreated on the new address, taking its entries along.
    assert_eq!(changes[1].len(), 6, "{:?}", changes[1]);
    tcp(&pods[0].path(), &pods[2].path(), b1, port + 8).expect("a1 -> b1 after b moved");
    tcp(&pods[2].path(), &pods[3].path(), c1, port + 9).expect("b1 -> c1 after b moved");

    // Node c leaves: its route, neighbour and FDB entry go everywhere; traffic stops.
    let c = agents.pop().expect("node c");
    let changes = sync_all(&[&agents[0], &agents[1]]);
    for change in &changes {
        assert_eq!(change.len(), 3, "{change:?}");
    }
    for agent in &agents {
        let state = agent.state();
        assert!(!state
            .routes
            .iter()
            .any(|r| r.destination == c.local.pod_cidr));
        assert!(!state.neighbours.contains_key(&c.local.gateway));
        assert!(!state.fdb.contains_key(&c.local.vtep_mac));
        assert_eq!(state.fdb.len(), 1, "{state:?}");
    }
    assert!(
        tcp(&pods[0].path(), &pods[3].path(), c1, port + 10).is_err(),
        "traffic to a node that left stops"
    );
    tcp(&pods[0].path(), &pods[2].path(), b1, port + 11).expect("a1 -> b1 still works");
    // The diagnosis names the missing FDB entry as the broken hop towards c.
    let results = netcheck::check(&views(&[&agents[0], &agents[1], &c]), &IpProbe);
    let to_c = results
        .iter()
        .find(|r| r.from == names[0] && r.to == names[2])
        .expect("a -> c");
    assert_eq!(
        to_c.broken.as_ref().map(|(hop, _)| *hop),
        Some(Hop::Fdb),
        "{}",
        netcheck::render(&results)
    );
    let a_to_b = results
        .iter()
        .find(|r| r.from == names[0] && r.to == names[1])
        .expect("a -> b");
    assert_eq!(a_to_b.broken, None, "{}", netcheck::render(&results));
    drop(c);

    drop(agents);
    drop(pods);
}

fn ipnetwork_first(cidr: Ipv4Network) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(cidr.network()) + 1)
}

/// A node's pod network driven by its Node object, as the agent runs it
/// ([`rkube_nodeagent::network::node::run`]): on a thread inside the node's namespace,
/// with a client whose connection lives in the test's (host) runtime.
struct NodeTask {
    handle: NetworkHandle,
    shutdown: CancellationToken,
    thread: Option<std::thread::JoinHandle<Result<(), String>>>,
}

impl NodeTask {
    fn start(netns: &Path, client: Client, startup: Startup) -> NodeTask {
        let handle = NetworkHandle::new("cluster.local");
        let shutdown = CancellationToken::new();
        let path = netns.to_path_buf();
        let (task_handle, token) = (handle.clone(), shutdown.clone());
        let thread = std::thread::spawn(move || -> Result<(), String> {
            let file = std::fs::File::open(&path).map_err(|e| e.to_string())?;
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| e.to_string())?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            runtime
                .block_on(node::run(Api::all(client), startup, task_handle, token))
                .map_err(|e| format!("{:#}", anyhow::Error::from(e)))
        });
        NodeTask {
            handle,
            shutdown,
            thread: Some(thread),
        }
    }

    fn network(&self) -> Option<Arc<PodNetwork>> {
        self.handle.get().cloned()
    }

    fn stop(&mut self) -> Result<(), String> {
        self.shutdown.cancel();
        match self.thread.take() {
            Some(thread) => thread.join().unwrap_or(Err("panicked".to_string())),
            None => Ok(()),
        }
    }
}

impl Drop for NodeTask {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(work)
        .await
        .expect("blocking task")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overlay_follows_node_objects_through_the_apiserver() {
    if !is_root() {
        eprintln!("skipped: the pod network test needs root");
        return;
    }
    // A different pid-derived range than the other test of this binary.
    let pid = std::process::id() + 7;
    let state = tempfile::tempdir().expect("state dir");
    let lab = blocking(move || Lab::new(pid)).await;
    let etcd = Etcd::start().await.expect("etcd");
    let api = TestApiserver::start(&etcd).await.expect("apiserver");
    let client = Client::connect(api.client_config(Component::Admin))
        .await
        .expect("connect");
    let nodes: Api<Node> = Api::all(client.clone());
    let pod_net = 100 + (pid % 100) as u8;
    let names: Vec<String> = ["a", "b", "c"]
        .iter()
        .map(|n| format!("net-{pid}-{n}"))
        .collect();

    // Node a exists without a podCIDR at first: its network waits for one.
    let mut tasks = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let node = Node {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(NodeSpec {
                pod_cidr: (i != 0).then(|| format!("10.{pod_net}.{}.0/24", i + 1)),
                ..NodeSpec::default()
            }),
            status: None,
        };
        nodes.create(&node).await.expect("create node");
        tasks.push(NodeTask::start(
            &lab.nodes[i].path(),
            client.clone(),
            Startup {
                node_name: name.clone(),
                state_dir: state.path().join(name),
                underlay_ip: lab_ip(lab.underlay_net, 10 + i as u8),
                sandboxes_dir: state.path().join(name).join("sandboxes"),
            },
        ));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(tasks[0].network().is_none(), "no network before a podCIDR");
    let mut a = nodes.get(&names[0]).await.expect("node a");
    a.spec.get_or_insert_with(NodeSpec::default).pod_cidr = Some(format!("10.{pod_net}.1.0/24"));
    nodes
        .replace(&names[0], &a)
        .await
        .expect("give node a its podCIDR");

    let networks: Vec<Arc<PodNetwork>> = {
        let mut networks = Vec::new();
        for task in &tasks {
            networks.push(
                eventually("the node's network", Duration::from_secs(20), || async {
                    task.network()
                })
                .await,
            );
        }
        networks
    };
    // Each Node carries its annotations, as the others read them.
    for (name, network) in names.iter().zip(&networks) {
        let local = network.local().clone();
        let nodes = nodes.clone();
        eventually("the overlay annotations", Duration::from_secs(10), || {
            let nodes = nodes.clone();
            let local = local.clone();
            async move {
                let node = nodes.get(name).await.ok()?;
                let annotations = node.metadata.annotations?;
                (annotations.get(VTEP_MAC_ANNOTATION) == Some(&local.vtep_mac.to_string())
                    && annotations.get(UNDERLAY_IP_ANNOTATION)
                        == Some(&local.underlay_ip.to_string()))
                .then_some(())
            }
        })
        .await;
    }
    // Every node learns the two others from the watch.
    for network in &networks {
        eventually("the peers' entries", Duration::from_secs(20), || async {
            let state = network.overlay_state().await.ok()?;
            (state.fdb.len() == 2 && state.neighbours.len() == 2 && state.routes.len() == 2)
                .then_some(())
        })
        .await;
    }

    let pods: Vec<Netns> = ["a1", "c1"]
        .iter()
        .map(|p| Netns::add(format!("rkp{pid}{p}")))
        .collect();
    let a1 = networks[0]
        .attach("sb-a1", &pods[0].path())
        .await
        .expect("attach a1");
    let c1 = networks[2]
        .attach("sb-c1", &pods[1].path())
        .await
        .expect("attach c1");
    let port = 20000 + (pid % 20000) as u16;
    let (from, to) = (pods[0].path(), pods[1].path());
    let result =
        blocking(move || tcp(&from, &to, c1, port).and(tcp(&to, &from, a1, port + 1))).await;
    result.expect("a1 <-> c1 across nodes, peers from the Node watch");

    // Node c's object goes: a and b drop its entries; traffic to c's pod stops.
    let c_local = networks[2].local().clone();
    nodes
        .delete(&names[2], &Default::default())
        .await
        .expect("delete node c");
    for network in &networks[..2] {
        eventually("c's entries to go", Duration::from_secs(20), || async {
            let state = network.overlay_state().await.ok()?;
            (!state.fdb.contains_key(&c_local.vtep_mac)
                && !state.neighbours.contains_key(&c_local.gateway)
                && !state
                    .routes
                    .iter()
                    .any(|r| r.destination == c_local.pod_cidr)
                && state.fdb.len() == 1)
                .then_some(())
        })
        .await;
    }
    let (from, to) = (pods[0].path(), pods[1].path());
    let gone = blocking(move || tcp(&from, &to, c1, port + 2)).await;
    assert!(
        gone.is_err(),
        "traffic to the pod of a node that left stops"
    );

    for task in &mut tasks {
        task.stop()
            .expect("the node's network task ends cleanly on shutdown");
    }
    drop(networks);
    drop(tasks);
    drop(pods);
    blocking(move || drop(lab)).await;
}
