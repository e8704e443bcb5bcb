//! The pod network end to end on a real lab (root): `rkube up --nodes 3` with the real
//! binaries from `target/debug`, a busybox `httpd` pod on every node (image pushed to the
//! lab's registry), then, through `kubectl exec` in the pods themselves:
//!
//! - pod-to-pod by pod IP across nodes, every ordered pair;
//! - `rkube net check` reports every pair ok;
//! - a ClusterIP Service reached from a pod on another node, spread over all endpoints;
//! - a NodePort from the host on every node's underlay address;
//! - `<svc>.<ns>.svc.cluster.local` resolves from a pod (`nslookup`);
//! - a deleted pod leaves the endpoints and stops receiving;
//! - a restarted agent keeps its pods' IPs and connectivity;
//! - a removed node's podCIDR route goes from the other nodes.
//!
//! A guard runs `rkube down` even when an assertion fails; names, ports and the underlay
//! CIDR are unique to the test's pid.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Output};
use std::time::Duration;

use rkube_tests::eventually;
use rkube_tests::lab::{busybox_pod, require_binaries, test_underlay, Lab, LabPorts};
use rkube_tests::node::push_busybox_to;
use serde_json::{json, Value};

const NODES: usize = 3;
const PORT: u16 = 8080;

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `kubectl exec <pod> -- sh -c <script>`.
fn exec(lab: &Lab, pod: &str, script: &str) -> Output {
    lab.kubectl(&["exec", pod, "--", "sh", "-c", script])
}

/// A shell command that GETs `/index.html` from `target` (`host:port`) with HTTP/1.0
/// over busybox `nc` (the busybox of the test image has a `wget` that crashes) and
/// prints the response.
fn get_script(target: &str) -> String {
    let (host, port) = target.rsplit_once(':').unwrap_or((target, "80"));
    format!("printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' | nc -w 5 {host} {port}")
}

/// The body of an HTTP response, trimmed; `None` without a 200 status line.
fn http_body(response: &str) -> Option<String> {
    if !response.starts_with("HTTP/1.") || !response.lines().next()?.contains(" 200 ") {
        return None;
    }
    let (_, body) = response.split_once("\r\n\r\n")?;
    Some(body.trim().to_string())
}

/// What `pod` gets from `http://<target>/index.html` (body trimmed), or why not.
fn fetch(lab: &Lab, pod: &str, target: &str) -> Result<String, String> {
    let out = exec(lab, pod, &get_script(target));
    let response = String::from_utf8_lossy(&out.stdout).into_owned();
    match http_body(&response) {
        Some(body) if out.status.success() => Ok(body),
        _ => Err(format!("{target} from {pod}: {}", text(&out))),
    }
}

/// An HTTP GET of `/index.html` from the host (the test's own namespace).
fn host_fetch(addr: &str) -> Result<String, String> {
    let sock: std::net::SocketAddr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
    let mut stream =
        TcpStream::connect_timeout(&sock, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(b"GET /index.html HTTP/1.0\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| e.to_string())?;
    http_body(&response).ok_or_else(|| format!("not an HTTP 200 response: {response:?}"))
}

fn web_pod(n: usize, image: &str) -> String {
    let name = format!("web-{n}");
    let script = format!("mkdir -p /tmp/www && echo {name} > /tmp/www/index.html && exec httpd -f -p {PORT} -h /tmp/www");
    busybox_pod(
        &name,
        &format!("node-{n}"),
        image,
        &["sh", "-c", &script],
        json!({ "app": "web" }),
    )
}

async fn running_pod(lab: &Lab, name: &str) -> Value {
    eventually(
        &format!("{name} Running with an IP"),
        Duration::from_secs(90),
        || {
            let pod = lab.kubectl_json(&["get", "pod", name, "-o", "json"]);
            async move {
                pod.filter(|p| {
                    p["status"]["phase"] == "Running" && p["status"]["podIP"].is_string()
                })
            }
        },
    )
    .await
}

/// The ready endpoint addresses of Service `name`.
fn endpoint_ips(lab: &Lab, name: &str) -> BTreeSet<String> {
    let Some(ep) = lab.kubectl_json(&["get", "endpoints", name, "-o", "json"]) else {
        return BTreeSet::new();
    };
    ep["subsets"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["addresses"].as_array().cloned().unwrap_or_default())
        .filter_map(|a| a["ip"].as_str().map(str::to_string))
        .collect()
}

/// The names the web pods answer `pod` with over `tries` requests to `target`.
fn spread(lab: &Lab, pod: &str, target: &str, tries: usize) -> Result<Vec<String>, String> {
    let out = exec(
        lab,
        pod,
        &format!(
            "i=0; while [ $i -lt {tries} ]; do {} || exit 1; echo; echo ====; i=$((i+1)); done",
            get_script(target)
        ),
    );
    if !out.status.success() {
        return Err(text(&out));
    }
    String::from_utf8_lossy(&out.stdout)
        .split("\n====\n")
        .filter(|r| !r.trim().is_empty())
        .map(|r| http_body(r).ok_or_else(|| format!("not an HTTP 200 response: {r:?}")))
        .collect()
}

/// The routes of namespace `netns`.
fn routes(netns: &str) -> String {
    let out = Command::new("ip")
        .args(["-n", netns, "route", "show"])
        .output()
        .expect("run ip route");
    assert!(out.status.success(), "ip -n {netns} route: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lab_network_pods_services_dns_restart_and_node_removal() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: the lab's namespaces and containers need root");
        return;
    }
    require_binaries();
    let _ = rustls::crypto::ring::default_provider().install_default();

    let lab = Lab::new();
    let underlay = test_underlay(7);
    let ports = LabPorts::free();
    let up_args = ports.up_args(
        NODES,
        &underlay,
        &["--node-cpu", "2", "--node-memory", "2Gi"],
    );
    let up_refs: Vec<&str> = up_args.iter().map(String::as_str).collect();
    let up = lab.rkube(&up_refs);
    assert!(up.status.success(), "rkube up failed");

    let status = lab.status();
    let registry = status["registry"].as_str().expect("registry").to_string();
    let nodes: Vec<(String, String, String)> = status["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| {
            (
                n["name"].as_str().expect("name").to_string(),
                n["netns"].as_str().expect("netns").to_string(),
                n["underlay_ip"].as_str().expect("ip").to_string(),
            )
        })
        .collect();
    assert_eq!(nodes.len(), NODES);

    // A web pod on every node.
    let image = push_busybox_to(&registry).await.expect("push busybox");
    for n in 1..=NODES {
        lab.apply(&web_pod(n, &image));
    }
    let mut ips = Vec::new();
    for n in 1..=NODES {
        let pod = running_pod(&lab, &format!("web-{n}")).await;
        assert_eq!(pod["spec"]["nodeName"], format!("node-{n}"));
        ips.push(pod["status"]["podIP"].as_str().expect("pod IP").to_string());
    }
    let distinct: BTreeSet<&String> = ips.iter().collect();
    assert_eq!(distinct.len(), NODES, "pod IPs {ips:?}");

    // Pod to pod across nodes, every ordered pair, by pod IP.
    for from in 1..=NODES {
        for to in 1..=NODES {
            if from == to {
                continue;
            }
            let target = format!("{}:{PORT}", ips[to - 1]);
            let from_pod = format!("web-{from}");
            let body = eventually(
                &format!("web-{from} fetches from web-{to} at {target}"),
                Duration::from_secs(20),
                || {
                    let got = fetch(&lab, &from_pod, &target);
                    async move { got.map_err(|e| eprintln!("{e}")).ok() }
                },
            )
            .await;
            assert_eq!(body, format!("web-{to}"));
        }
    }

    // `rkube net check`: every ordered pair ok.
    let check = lab.rkube(&["net", "check"]);
    let report = String::from_utf8_lossy(&check.stdout).into_owned();
    assert!(
        check.status.success(),
        "net check failed:\n{}",
        text(&check)
    );
    let lines: Vec<&str> = report.lines().collect();
    assert_eq!(lines.len(), NODES * (NODES - 1), "{report}");
    assert!(lines.iter().all(|l| l.ends_with(": ok")), "{report}");

    // A ClusterIP + NodePort Service over the three pods.
    lab.apply(
        &json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": { "name": "web" },
            "spec": {
                "type": "NodePort",
                "selector": { "app": "web" },
                "ports": [{ "port": 80, "targetPort": PORT, "protocol": "TCP" }],
            },
        })
        .to_string(),
    );
    let svc = lab
        .kubectl_json(&["get", "service", "web", "-o", "json"])
        .expect("get service");
    let cluster_ip = svc["spec"]["clusterIP"]
        .as_str()
        .expect("clusterIP")
        .to_string();
    let node_port = svc["spec"]["ports"][0]["nodePort"]
        .as_u64()
        .expect("nodePort");
    let all_ips: BTreeSet<String> = ips.iter().cloned().collect();
    eventually("3 endpoints", Duration::from_secs(30), || {
        let got = endpoint_ips(&lab, "web");
        let want = all_ips.clone();
        async move { (got == want).then_some(()) }
    })
    .await;

    // From web-1 (node-1): every endpoint answers, two of them on other nodes.
    let seen = eventually(
        "the ClusterIP spreads over all 3 endpoints",
        Duration::from_secs(30),
        || {
            let got = spread(&lab, "web-1", &format!("{cluster_ip}:80"), 30);
            async move {
                let got = got.map_err(|e| eprintln!("{e}")).ok()?;
                let seen: BTreeSet<String> = got.into_iter().collect();
                (seen.len() == NODES).then_some(seen)
            }
        },
    )
    .await;
    let want: BTreeSet<String> = (1..=NODES).map(|n| format!("web-{n}")).collect();
    assert_eq!(seen, want);

    // NodePort from the host on every node's underlay address.
    for (name, _, ip) in &nodes {
        let addr = format!("{ip}:{node_port}");
        let body = eventually(
            &format!("NodePort {addr} of {name} from the host"),
            Duration::from_secs(20),
            || {
                let got = host_fetch(&addr).map_err(|e| eprintln!("{addr}: {e}"));
                async move { got.ok() }
            },
        )
        .await;
        assert!(want.contains(&body), "{addr} answered {body:?}");
    }

    // The Service's name resolves from a pod on another node.
    let lookup = eventually(
        "web.default.svc.cluster.local resolves from web-2",
        Duration::from_secs(20),
        || {
            let out = exec(&lab, "web-2", "nslookup web.default.svc.cluster.local");
            async move { out.status.success().then(|| text(&out)) }
        },
    )
    .await;
    assert!(lookup.contains(&cluster_ip), "nslookup: {lookup}");
    let by_name = fetch(&lab, "web-2", "web.default.svc.cluster.local:80");
    assert!(
        by_name.as_ref().is_ok_and(|b| want.contains(b)),
        "fetch by name: {by_name:?}"
    );

    // A deleted pod leaves the endpoints and stops receiving.
    let deleted = lab.kubectl(&["delete", "pod", "web-3", "--grace-period=0", "--wait=true"]);
    assert!(deleted.status.success(), "delete web-3: {}", text(&deleted));
    let remaining: BTreeSet<String> = ips[..2].iter().cloned().collect();
    eventually(
        "web-3 leaves the endpoints",
        Duration::from_secs(30),
        || {
            let got = endpoint_ips(&lab, "web");
            let want = remaining.clone();
            async move { (got == want).then_some(()) }
        },
    )
    .await;
    let seen = eventually(
        "the ClusterIP answers from web-1 and web-2 only",
        Duration::from_secs(20),
        || {
            let got = spread(&lab, "web-1", &format!("{cluster_ip}:80"), 20);
            async move {
                let got = got.map_err(|e| eprintln!("{e}")).ok()?;
                let seen: BTreeSet<String> = got.into_iter().collect();
                (!seen.contains("web-3")).then_some(seen)
            }
        },
    )
    .await;
    assert_eq!(
        seen,
        BTreeSet::from(["web-1".to_string(), "web-2".to_string()])
    );

    // Restart node-2's agent: web-2 keeps its IP and stays reachable.
    let agent = status["nodes"][1]["agent_pid"].as_i64().expect("agent pid");
    let agent = nix::unistd::Pid::from_raw(i32::try_from(agent).expect("pid"));
    nix::sys::signal::kill(agent, nix::sys::signal::Signal::SIGKILL).expect("kill agent");
    eventually("node-2's agent gone", Duration::from_secs(10), || {
        let gone = std::fs::read(format!("/proc/{agent}/cmdline")).map_or(true, |c| c.is_empty());
        async move { gone.then_some(()) }
    })
    .await;
    let up = lab.rkube(&up_refs);
    assert!(
        up.status.success(),
        "rkube up (restart node-2's agent) failed"
    );
    let restarted = lab.status();
    assert_ne!(
        restarted["nodes"][1]["agent_pid"],
        status["nodes"][1]["agent_pid"]
    );
    let pod = running_pod(&lab, "web-2").await;
    assert_eq!(pod["status"]["podIP"].as_str(), Some(ips[1].as_str()));
    let body = eventually(
        "web-1 reaches web-2 after node-2's agent restarted",
        Duration::from_secs(20),
        || {
            let got = fetch(&lab, "web-1", &format!("{}:{PORT}", ips[1]));
            async move { got.map_err(|e| eprintln!("{e}")).ok() }
        },
    )
    .await;
    assert_eq!(body, "web-2");
    let body = fetch(&lab, "web-2", &format!("{}:{PORT}", ips[0]));
    assert_eq!(body.as_deref(), Ok("web-1"));

    // Remove node-3 (`up` with 2 nodes stops its agent, deletes its Node and namespace):
    // its podCIDR's route goes from node-1 and node-2.
    let node3 = lab
        .kubectl_json(&["get", "node", "node-3", "-o", "json"])
        .expect("get node-3");
    let cidr3 = node3["spec"]["podCIDR"]
        .as_str()
        .expect("podCIDR")
        .to_string();
    for (_, netns, _) in &nodes[..2] {
        assert!(routes(netns).contains(&cidr3), "{netns} routes {cidr3}");
    }
    let mut shrink = up_args.clone();
    shrink[2] = "2".into();
    let shrink: Vec<&str> = shrink.iter().map(String::as_str).collect();
    let up = lab.rkube(&shrink);
    assert!(up.status.success(), "rkube up --nodes 2 failed");
    for (_, netns, _) in &nodes[..2] {
        let netns = netns.clone();
        let cidr = cidr3.clone();
        eventually(
            &format!("{netns} drops the route to {cidr}"),
            Duration::from_secs(30),
            || {
                let table = routes(&netns);
                let cidr = cidr.clone();
                async move { (!table.contains(&cidr)).then_some(()) }
            },
        )
        .await;
    }
    let body = fetch(&lab, "web-1", &format!("{}:{PORT}", ips[1]));
    assert_eq!(body.as_deref(), Ok("web-2"));

    let down = lab.rkube(&["down"]);
    assert!(down.status.success(), "rkube down failed");
}
