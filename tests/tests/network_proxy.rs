//! The service proxy and the cluster DNS as root, on real namespaces, veths, a bridge and
//! nftables: a "node" network namespace with a bridge and three "pod" namespaces on it,
//! plus a "client" namespace outside the cluster on the node's underlay link. The proxy
//! watches Services and Endpoints on a real apiserver (etcd behind it) and applies its
//! table inside the node namespace; the DNS server's sockets are bound there too.
//!
//! Proves: ClusterIP spreads over the ready endpoints (TCP and UDP), a removed endpoint
//! stops receiving, no endpoints → connection refused at once, NodePort and ClusterIP
//! from outside, ClientIP affinity sticks, hairpin, egress masquerade; DNS answers a
//! service name, a headless service, an endpoint hostname, NXDOMAIN, and forwards.
//!
//! Everything is created under names and addresses derived from the pid and removed by
//! Drop guards, even when an assertion fails.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, Service, ServicePort, ServiceSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use rkube_client::{Api, Client};
use rkube_ctl::pki::Component;
use rkube_nodeagent::dns::{DnsConfig, DnsServer};
use rkube_nodeagent::proxy::apply::Nft;
use rkube_nodeagent::proxy::ruleset::Ranges;
use rkube_nodeagent::proxy::{self, Proxy};
use rkube_tests::{eventually, Etcd, TestApiserver};
use tokio_util::sync::CancellationToken;

/// Runs `ip`/`sysctl`-style commands, failing loudly.
fn run(program: &str, args: &[&str]) {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {program} {args:?}: {e}"));
    assert!(
        output.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A named network namespace, deleted on drop.
struct Netns(String);

impl Netns {
    fn new(name: String) -> Netns {
        // A leftover from a crashed run with the same pid would make `add` fail.
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        run("ip", &["netns", "add", &name]);
        let ns = Netns(name);
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", self.0.as_str()];
        all.extend_from_slice(args);
        run("ip", &all);
    }

    fn exec(&self, args: &[&str]) {
        let mut all = vec!["netns", "exec", self.0.as_str()];
        all.extend_from_slice(args);
        run("ip", &all);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace removes its links, veth peers, bridge and nft tables.
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

/// Runs `f` on a fresh thread that has entered the network namespace `ns`.
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
            .unwrap_or_else(|e| panic!("setns {path}: {e}"));
        f()
    })
    .join()
    .expect("netns thread")
}

/// A server thread inside a namespace answering every TCP connection and UDP datagram on
/// `port` with its `name` (or, with `name` empty, with the peer's address).
struct Server {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Server {
    fn start(ns: &str, port: u16, name: &str) -> Server {
        let stop = Arc::new(AtomicBool::new(false));
        let (tcp, udp) = in_netns(ns, move || {
            let tcp = TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).expect("bind tcp");
            let udp = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port)).expect("bind udp");
            (tcp, udp)
        });
        let reply = |name: &str, peer: SocketAddr| {
            if name.is_empty() {
                peer.ip().to_string()
            } else {
                name.to_string()
            }
        };
        tcp.set_nonblocking(true).expect("nonblocking");
        udp.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        let (tcp_stop, tcp_name) = (stop.clone(), name.to_string());
        let tcp_thread = std::thread::spawn(move || {
            while !tcp_stop.load(Ordering::Relaxed) {
                match tcp.accept() {
                    Ok((mut stream, peer)) => {
                        let _ = stream.write_all(reply(&tcp_name, peer).as_bytes());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        let (udp_stop, udp_name) = (stop.clone(), name.to_string());
        let udp_thread = std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while !udp_stop.load(Ordering::Relaxed) {
                if let Ok((_, peer)) = udp.recv_from(&mut buf) {
                    let _ = udp.send_to(reply(&udp_name, peer).as_bytes(), peer);
                }
            }
        });
        Server {
            stop,
            threads: vec![tcp_thread, udp_thread],
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// One TCP connection from `ns` to `addr`: what the server said.
fn tcp_get(ns: &str, addr: SocketAddr) -> std::io::Result<String> {
    in_netns(ns, move || {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer)?;
        Ok(answer)
    })
}

/// One UDP exchange from `ns` with `addr`.
fn udp_get(ns: &str, addr: SocketAddr) -> std::io::Result<String> {
    in_netns(ns, move || {
        let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
        socket.set_read_timeout(Some(Duration::from_secs(1)))?;
        socket.send_to(b"hi", addr)?;
        let mut buf = [0u8; 512];
        let (len, _) = socket.recv_from(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf[..len]).to_string())
    })
}

/// The distinct answers of `count` TCP connections (errors as `error: …`).
fn answers(ns: &str, addr: SocketAddr, count: usize) -> BTreeSet<String> {
    (0..count)
        .map(|_| tcp_get(ns, addr).unwrap_or_else(|e| format!("error: {e}")))
        .collect()
}

/// One DNS query over UDP (or TCP) from `ns`.
fn dns_query(ns: &str, server: SocketAddr, name: &str, qtype: RecordType, tcp: bool) -> Message {
    let mut request = Message::new();
    request.set_id(0x4242).set_recursion_desired(true);
    request.add_query(Query::query(Name::from_ascii(name).expect("name"), qtype));
    let bytes = request.to_vec().expect("encode");
    let response = in_netns(ns, move || -> std::io::Result<Vec<u8>> {
        if tcp {
            let mut stream = TcpStream::connect_timeout(&server, Duration::from_secs(2))?;
            stream.set_read_timeout(Some(Duration::from_secs(3)))?;
            let mut framed = u16::try_from(bytes.len())
                .expect("short")
                .to_be_bytes()
                .to_vec();
            framed.extend_from_slice(&bytes);
            stream.write_all(&framed)?;
            let mut len = [0u8; 2];
            stream.read_exact(&mut len)?;
            let mut response = vec![0u8; usize::from(u16::from_be_bytes(len))];
            stream.read_exact(&mut response)?;
            Ok(response)
        } else {
            let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
            socket.set_read_timeout(Some(Duration::from_secs(3)))?;
            socket.send_to(&bytes, server)?;
            let mut buf = vec![0u8; 4096];
            let (len, _) = socket.recv_from(&mut buf)?;
            buf.truncate(len);
            Ok(buf)
        }
    })
    .unwrap_or_else(|e| panic!("dns query {name}: {e}"));
    let message = Message::from_vec(&response).expect("decode");
    assert_eq!(message.id(), 0x4242, "{name}: response id");
    message
}

fn a_records(message: &Message) -> BTreeSet<String> {
    message
        .answers()
        .iter()
        .filter_map(|r| match r.data() {
            RData::A(a) => Some(a.0.to_string()),
            _ => None,
        })
        .collect()
}

fn service(name: &str, ip: &str, type_: &str, ports: Vec<ServicePort>) -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some("default".to_string()),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            cluster_ip: Some(ip.to_string()),
            type_: Some(type_.to_string()),
            ports: Some(ports),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn port(protocol: &str, port: i32, node_port: Option<i32>) -> ServicePort {
    ServicePort {
        name: Some(protocol.to_lowercase()),
        protocol: Some(protocol.to_string()),
        port,
        node_port,
        ..Default::default()
    }
}

/// Endpoints with ready `(ip, hostname)`s, serving TCP and UDP on `target`.
fn endpoints(name: &str, ready: &[(&str, Option<&str>)], target: i32) -> Endpoints {
    Endpoints {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some("default".to_string()),
            ..Default::default()
        },
        subsets: Some(vec![EndpointSubset {
            addresses: Some(
                ready
                    .iter()
                    .map(|(ip, hostname)| EndpointAddress {
                        ip: ip.to_string(),
                        hostname: hostname.map(str::to_string),
                        ..Default::default()
                    })
                    .collect(),
            ),
            not_ready_addresses: None,
            ports: Some(vec![
                EndpointPort {
                    name: Some("tcp".to_string()),
                    protocol: Some("TCP".to_string()),
                    port: target,
                    ..Default::default()
                },
                EndpointPort {
                    name: Some("udp".to_string()),
                    protocol: Some("UDP".to_string()),
                    port: target,
                    ..Default::default()
                },
            ]),
        }]),
    }
}

/// Creates or replaces `eps`.
async fn put_endpoints(api: &Api<Endpoints>, eps: Endpoints) {
    let name = eps.metadata.name.clone().expect("name");
    match api.get_opt(&name).await.expect("get endpoints") {
        Some(current) => {
            let mut eps = eps;
            eps.metadata.resource_version = current.metadata.resource_version;
            api.replace(&name, &eps).await.expect("replace endpoints");
        }
        None => {
            api.create(&eps).await.expect("create endpoints");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_and_dns_on_a_node_namespace() {
    let pid = std::process::id();
    let n = pid % 200 + 20; // second octet of every test range
    let tag = format!("{pid}");
    let node = Netns::new(format!("rkpx-node-{tag}"));
    let client = Netns::new(format!("rkpx-out-{tag}"));
    let pods: Vec<Netns> = (1..=3)
        .map(|i| Netns::new(format!("rkpx-pod{i}-{tag}")))
        .collect();
    let cluster_cidr = format!("10.{n}.0.0/16");
    let gateway = format!("10.{n}.1.1");
    let pod_ip = |i: usize| format!("10.{n}.1.{}", 10 + i);
    let node_ip = format!("192.168.{n}.1");
    let svc_ip = |i: u8| format!("10.96.{n}.{i}");

    // The node: a bridge with the pods' gateway, forwarding, an uplink to the client.
    node.ip(&["link", "add", "br0", "type", "bridge"]);
    node.ip(&["addr", "add", &format!("{gateway}/24"), "dev", "br0"]);
    node.ip(&["link", "set", "br0", "up"]);
    node.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    node.exec(&["sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=0"]);
    for (i, pod) in pods.iter().enumerate() {
        let i = i + 1;
        let veth = format!("veth{i}");
        node.ip(&[
            "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &pod.0,
        ]);
        node.ip(&["link", "set", &veth, "master", "br0", "up"]);
        // With bridged traffic through conntrack, a pod's reply to its own hairpinned
        // connection goes back out the port it came in on: the port needs hairpin mode
        // (what bridge CNI's hairpinMode and kubelet's hairpin-veth do).
        node.ip(&[
            "link",
            "set",
            &veth,
            "type",
            "bridge_slave",
            "hairpin",
            "on",
        ]);
        pod.ip(&["addr", "add", &format!("{}/24", pod_ip(i)), "dev", "eth0"]);
        pod.ip(&["link", "set", "eth0", "up"]);
        pod.ip(&["route", "add", "default", "via", &gateway]);
    }
    node.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", &client.0,
    ]);
    node.ip(&["addr", "add", &format!("{node_ip}/24"), "dev", "eth0"]);
    node.ip(&["link", "set", "eth0", "up"]);
    node.ip(&["route", "add", "default", "via", &format!("192.168.{n}.2")]);
    client.ip(&["addr", "add", &format!("192.168.{n}.2/24"), "dev", "eth0"]);
    client.ip(&["link", "set", "eth0", "up"]);
    client.ip(&["route", "add", &format!("10.96.{n}.0/24"), "via", &node_ip]);

    // The proxy's own switch for same-bridge replies, entered in the node namespace.
    let sysctl = in_netns(&node.0, || {
        proxy::enable_bridge_netfilter().expect("enable bridge netfilter");
        std::fs::read_to_string("/proc/sys/net/bridge/bridge-nf-call-iptables")
            .expect("read sysctl")
    });
    assert_eq!(sysctl.trim(), "1");

    // Servers: each pod answers with its name on 8080 (TCP and UDP); the client
    // answers with the peer address it sees (egress masquerade check).
    let _servers: Vec<Server> = (1..=3)
        .map(|i| Server::start(&pods[i - 1].0, 8080, &format!("pod{i}")))
        .chain([Server::start(&client.0, 9090, "")])
        .collect();

    // The control plane, and the proxy + DNS of this node.
    let etcd = Etcd::start().await.expect("etcd");
    let apiserver = TestApiserver::start(&etcd).await.expect("apiserver");
    let kube = Client::connect(apiserver.client_config(Component::NodeAgent))
        .await
        .expect("client");
    let services: Api<Service> = Api::namespaced(kube.clone(), "default");
    let eps: Api<Endpoints> = Api::namespaced(kube.clone(), "default");
    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    let (reflector, state) = proxy::reflect(kube.clone());
    tokio::spawn(reflector.run(shutdown.clone()));
    let ranges = Ranges {
        cluster_cidr: cluster_cidr.parse().expect("cidr"),
        service_cidr: "10.96.0.0/12".parse().expect("cidr"),
    };
    let proxy = Proxy::new(
        state.clone(),
        ranges,
        Arc::new(Nft::in_netns(node.0.clone())),
    );
    tokio::spawn(proxy.run(shutdown.clone()));

    // A fake upstream resolver, the "host's resolver": every name is 192.0.2.7. It
    // listens in the test's own namespace because the server's forwarding sockets are
    // opened by tokio threads there (in the agent, everything is in the node's).
    let upstream = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind upstream");
    let upstream_addr = upstream.local_addr().expect("upstream addr");
    upstream
        .set_read_timeout(Some(Duration::from_millis(50)))
        .expect("timeout");
    let upstream_stop = Arc::new(AtomicBool::new(false));
    let upstream_flag = upstream_stop.clone();
    let upstream_thread = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while !upstream_flag.load(Ordering::Relaxed) {
            let Ok((len, peer)) = upstream.recv_from(&mut buf) else {
                continue;
            };
            let Ok(request) = Message::from_vec(&buf[..len]) else {
                continue;
            };
            let mut response = rkube_nodeagent::dns::answer::reply(&request, ResponseCode::NoError);
            if let Some(query) = request.queries().first() {
                response.add_answer(hickory_proto::rr::Record::from_rdata(
                    query.name().clone(),
                    60,
                    RData::A(hickory_proto::rr::rdata::A(Ipv4Addr::new(192, 0, 2, 7))),
                ));
            }
            let _ = upstream.send_to(&response.to_vec().expect("encode"), peer);
        }
    });
    struct StopThread(Arc<AtomicBool>, Option<JoinHandle<()>>);
    impl Drop for StopThread {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
            if let Some(t) = self.1.take() {
                let _ = t.join();
            }
        }
    }
    let _upstream = StopThread(upstream_stop, Some(upstream_thread));
    let dns_addr: SocketAddr = format!("{gateway}:53").parse().expect("addr");
    let (dns_udp, dns_tcp) = in_netns(&node.0, move || {
        (
            UdpSocket::bind(dns_addr).expect("bind dns udp"),
            TcpListener::bind(dns_addr).expect("bind dns tcp"),
        )
    });
    let dns = DnsServer::from_std(
        dns_udp,
        dns_tcp,
        DnsConfig {
            domain: "cluster.local".to_string(),
            // A dead resolver first: the server must fail over to the next one.
            upstreams: vec!["127.0.0.1:9".parse().expect("addr"), upstream_addr],
            upstream_timeout: Duration::from_millis(300),
        },
        Arc::new(state.clone()),
    )
    .expect("dns server");
    tokio::spawn(dns.run(shutdown.clone()));

    // Services: web (pod1, pod2; NodePort), sticky (ClientIP, pod1..3), empty (no
    // endpoints; NodePort), self (pod1 only: hairpin), headless (pod2, pod3).
    let node_port = |k: u16| 30000 + (pid % 500) as u16 * 4 + k;
    let web_np = i32::from(node_port(0));
    let empty_np = i32::from(node_port(1));
    let mut web = service(
        "web",
        &svc_ip(10),
        "NodePort",
        vec![port("TCP", 80, Some(web_np)), port("UDP", 53, None)],
    );
    web.spec
        .as_mut()
        .expect("spec")
        .ports
        .as_mut()
        .expect("ports")[1]
        .node_port = None;
    services.create(&web).await.expect("create web");
    let mut sticky = service(
        "sticky",
        &svc_ip(11),
        "ClusterIP",
        vec![port("TCP", 80, None)],
    );
    sticky.spec.as_mut().expect("spec").session_affinity = Some("ClientIP".to_string());
    services.create(&sticky).await.expect("create sticky");
    services
        .create(&service(
            "empty",
            &svc_ip(12),
            "NodePort",
            vec![port("TCP", 80, Some(empty_np))],
        ))
        .await
        .expect("create empty");
    services
        .create(&service(
            "self",
            &svc_ip(13),
            "ClusterIP",
            vec![port("TCP", 80, None)],
        ))
        .await
        .expect("create self");
    services
        .create(&service(
            "headless",
            "None",
            "ClusterIP",
            vec![port("TCP", 80, None)],
        ))
        .await
        .expect("create headless");
    let (p1, p2, p3) = (pod_ip(1), pod_ip(2), pod_ip(3));
    put_endpoints(&eps, endpoints("web", &[(&p1, None), (&p2, None)], 8080)).await;
    put_endpoints(
        &eps,
        endpoints("sticky", &[(&p1, None), (&p2, None), (&p3, None)], 8080),
    )
    .await;
    put_endpoints(&eps, endpoints("self", &[(&p1, None)], 8080)).await;
    put_endpoints(
        &eps,
        endpoints("headless", &[(&p2, Some("h-2")), (&p3, Some("h-3"))], 8080),
    )
    .await;

    let at = |ip: &str, port: u16| -> SocketAddr { format!("{ip}:{port}").parse().expect("addr") };
    let web_addr = at(&svc_ip(10), 80);
    let pod3 = pods[2].0.clone();

    // ClusterIP from a pod that is not an endpoint (pod3 → pod1/pod2, same bridge:
    // replies must pass conntrack) spreads over both endpoints.
    let want: BTreeSet<String> = ["pod1", "pod2"].map(str::to_string).into();
    let got = eventually(
        "web to answer from both endpoints",
        Duration::from_secs(20),
        || {
            let got = answers(&pod3, web_addr, 30);
            let want = want.clone();
            async move { (got == want).then_some(got) }
        },
    )
    .await;
    assert_eq!(got, want);

    // UDP through the same service.
    let udp: BTreeSet<String> = (0..30)
        .map(|_| udp_get(&pod3, at(&svc_ip(10), 53)).unwrap_or_else(|e| format!("error: {e}")))
        .collect();
    assert_eq!(udp, want, "udp answers");

    // NodePort on the node's address, and the ClusterIP, from outside the cluster.
    let from_outside = answers(&client.0, at(&node_ip, node_port(0)), 30);
    assert_eq!(from_outside, want, "nodeport from outside");
    let from_outside = answers(&client.0, web_addr, 30);
    assert_eq!(from_outside, want, "clusterip from outside");
    // NodePort on another local address of the node: the bridge's.
    let via_bridge = answers(&pod3, at(&gateway, node_port(0)), 30);
    assert_eq!(via_bridge, want, "nodeport on the bridge address");

    // No endpoints: refused at once, ClusterIP and NodePort.
    for (what, ns, addr) in [
        ("clusterip", pod3.clone(), at(&svc_ip(12), 80)),
        ("nodeport", client.0.clone(), at(&node_ip, node_port(1))),
    ] {
        let started = Instant::now();
        let error = tcp_get(&ns, addr).expect_err("no endpoints must fail");
        assert_eq!(
            error.kind(),
            std::io::ErrorKind::ConnectionRefused,
            "{what}: {error}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{what}: refused quickly"
        );
    }

    // ClientIP affinity: every connection of pod3 lands on one endpoint of three.
    let sticky_answers = answers(&pod3, at(&svc_ip(11), 80), 20);
    assert_eq!(sticky_answers.len(), 1, "affinity: {sticky_answers:?}");
    assert!(
        !sticky_answers.iter().any(|a| a.starts_with("error")),
        "{sticky_answers:?}"
    );

    // Hairpin: pod1 reaches itself through its Service.
    let hairpin = answers(&pods[0].0, at(&svc_ip(13), 80), 5);
    assert_eq!(hairpin, BTreeSet::from(["pod1".to_string()]), "hairpin");

    // Egress masquerade: the outside sees the node's address, not the pod's.
    let seen = tcp_get(&pod3, at(&format!("192.168.{n}.2"), 9090)).expect("egress");
    assert_eq!(seen, node_ip, "egress source");

    // An endpoint removed stops receiving.
    put_endpoints(&eps, endpoints("web", &[(&p2, None)], 8080)).await;
    let only: BTreeSet<String> = BTreeSet::from(["pod2".to_string()]);
    eventually("pod1 to leave web", Duration::from_secs(20), || {
        let got = answers(&pod3, web_addr, 20);
        let only = only.clone();
        async move { (got == only).then_some(()) }
    })
    .await;

    // DNS, from a pod, to the server on the gateway address.
    let q = |name: &str, qtype: RecordType, tcp: bool| dns_query(&pod3, dns_addr, name, qtype, tcp);
    let m = q("web.default.svc.cluster.local.", RecordType::A, false);
    assert_eq!(m.response_code(), ResponseCode::NoError);
    assert_eq!(a_records(&m), BTreeSet::from([svc_ip(10)]), "clusterip");
    assert!(m.answers().iter().all(|r| r.ttl() == 5), "ttl 5");
    let m = q("web.default.svc.cluster.local.", RecordType::A, true);
    assert_eq!(
        a_records(&m),
        BTreeSet::from([svc_ip(10)]),
        "clusterip over tcp"
    );
    let m = q("headless.default.svc.cluster.local.", RecordType::A, false);
    assert_eq!(
        a_records(&m),
        BTreeSet::from([p2.clone(), p3.clone()]),
        "headless"
    );
    let m = q(
        "h-3.headless.default.svc.cluster.local.",
        RecordType::A,
        false,
    );
    assert_eq!(
        a_records(&m),
        BTreeSet::from([p3.clone()]),
        "endpoint hostname"
    );
    let m = q("nothere.default.svc.cluster.local.", RecordType::A, false);
    assert_eq!(m.response_code(), ResponseCode::NXDomain, "unknown service");
    let m = q("example.org.", RecordType::A, false);
    assert_eq!(m.response_code(), ResponseCode::NoError, "forwarded");
    assert_eq!(
        a_records(&m),
        BTreeSet::from(["192.0.2.7".to_string()]),
        "forwarded"
    );

    shutdown.cancel();
    // The table stays after the proxy stops (a restarting agent replaces it); the
    // namespace guard removes it with the namespace.
    let listed = Command::new("ip")
        .args([
            "netns", "exec", &node.0, "nft", "list", "table", "ip", "rkube",
        ])
        .output()
        .expect("nft list");
    assert!(listed.status.success(), "table left in place");
}
