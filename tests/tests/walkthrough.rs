//! The walkthrough of ARCHITECTURE.md end to end on a real two-node lab (root), with the
//! real binaries from `target/debug` and the manifests of `manifests/hello/`:
//!
//! - both hello images (1.0.0 and 1.1.0) built from `manifests/hello/Dockerfile` and
//!   pushed to the lab's registry with `rkubectl image build/push`;
//! - then twice, once with `rkubectl` and once with /usr/bin/kubectl, each pass in a
//!   namespace (and on a NodePort) of its own: apply the ConfigMap, Deployment and
//!   NodePort Service; pods Running on both nodes; hello.html through the NodePort of
//!   each node from the host; the mounted ConfigMap served; scale 2 → 1 → 2 → 1;
//!   hello.html from a pod on the other node by ClusterIP and by DNS name; `set image`
//!   to 1.1.0 shows the new page, `rollout undo` the old one; `logs` show the requests;
//!   `exec` reads the page; removing the probed file makes the liveness probe restart
//!   the container;
//! - a node killed (its agent SIGKILLed): it goes NotReady, its pods are evicted and
//!   come back on the other node, which serves the page;
//! - `rkube down` leaves no process, namespace, link, mount, state or context behind.
//!
//! A guard tears the lab down even when an assertion fails; names, ports and the
//! underlay CIDR are unique to the test's pid.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use rkube_tests::lab::{
    agent_processes, assert_down_leaves_nothing, bin_dir, require_binaries, test_underlay, Lab,
    LabPorts,
};
use serde_json::Value;

/// The registry address of a lab with the default underlay and registry port, as
/// `manifests/hello/deployment.yaml` names it.
const DEFAULT_REGISTRY: &str = "10.250.0.1:5000";

const NODES: usize = 2;
const V1: &str = "version 1.0.0";
const V2: &str = "version 1.1.0";
const CONFIG: &str = "Hello from the helloworld-config ConfigMap!";

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Polls `check` every 250 ms until it gives a value; panics after `timeout`.
fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + timeout;
    let mut last: String;
    loop {
        match check() {
            Ok(value) => return value,
            Err(why) => last = why,
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {last}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn manifests() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("manifests")
        .join("hello")
}

/// The body of an HTTP response; `None` without a 200 status line.
fn http_body(response: &str) -> Option<String> {
    if !response.lines().next()?.contains(" 200 ") {
        return None;
    }
    let (_, body) = response.split_once("\r\n\r\n")?;
    Some(body.to_string())
}

/// GET `path` from `addr` (`ip:port`) from the host.
fn host_get(addr: &str, path: &str) -> Result<String, String> {
    let sock: std::net::SocketAddr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
    let mut stream =
        TcpStream::connect_timeout(&sock, Duration::from_secs(3)).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(3)))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| e.to_string())?;
    http_body(&response).ok_or_else(|| format!("{addr}{path}: not a 200: {response:?}"))
}

/// The CLI a pass drives: `rkubectl` or the real kubectl, on the lab's kubeconfig.
struct Cli<'a> {
    binary: PathBuf,
    lab: &'a Lab,
    namespace: String,
}

impl Cli<'_> {
    fn run(&self, args: &[&str]) -> Output {
        self.run_with_input(args, None)
    }

    fn run_with_input(&self, args: &[&str], input: Option<&str>) -> Output {
        let mut child = Command::new(&self.binary)
            .arg("-n")
            .arg(&self.namespace)
            .args(args)
            .env("KUBECONFIG", self.lab.kubeconfig())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("run {}: {e}", self.binary.display()));
        if let Some(mut stdin) = child.stdin.take() {
            if let Some(input) = input {
                stdin.write_all(input.as_bytes()).expect("write stdin");
            }
        }
        child.wait_with_output().expect("wait")
    }

    /// Runs and panics (with the output) on failure; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "{} {args:?}: {}",
            self.binary.display(),
            text(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn apply(&self, manifest: &str) {
        let out = self.run_with_input(&["apply", "-f", "-"], Some(manifest));
        assert!(
            out.status.success(),
            "{} apply: {}",
            self.binary.display(),
            text(&out)
        );
    }

    fn json(&self, args: &[&str]) -> Result<Value, String> {
        let mut args = args.to_vec();
        args.extend(["-o", "json"]);
        let out = self.run(&args);
        if !out.status.success() {
            return Err(text(&out));
        }
        serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
    }

    /// The helloworld pods that are not being deleted.
    fn pods(&self) -> Vec<Value> {
        self.json(&["get", "pods", "-l", "app=helloworld"])
            .ok()
            .and_then(|list| list["items"].as_array().cloned())
            .unwrap_or_default()
            .into_iter()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .collect()
    }

    /// Waits for exactly `n` live helloworld pods, all Running and ready, of `image`.
    fn wait_running(&self, n: usize, image: &str) -> Vec<Value> {
        wait_for(
            &format!("{n} helloworld pods of {image} Running and ready"),
            Duration::from_secs(90),
            || {
                let pods = self.pods();
                let good = pods.iter().all(|p| {
                    p["status"]["phase"] == "Running"
                        && p["spec"]["containers"][0]["image"] == image
                        && p["status"]["conditions"].as_array().is_some_and(|c| {
                            c.iter()
                                .any(|c| c["type"] == "Ready" && c["status"] == "True")
                        })
                });
                if pods.len() == n && good {
                    Ok(pods)
                } else {
                    Err(format!("{} pods: {pods:?}", pods.len()))
                }
            },
        )
    }

    /// What `pod` gets for `path` from `host:port` (busybox `nc`, HTTP/1.0).
    fn pod_get(&self, pod: &str, host: &str, path: &str) -> Result<String, String> {
        let script = format!("printf 'GET {path} HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {host} 80");
        let out = self.run(&["exec", pod, "--", "sh", "-c", &script]);
        let response = String::from_utf8_lossy(&out.stdout).into_owned();
        http_body(&response).ok_or_else(|| format!("{host}{path} from {pod}: {}", text(&out)))
    }
}

fn node_of(pod: &Value) -> String {
    pod["spec"]["nodeName"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn name_of(pod: &Value) -> String {
    pod["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Waits until the NodePort of every node in `ips` serves `want` in hello.html.
fn wait_page(ips: &[String], port: u16, want: &str) {
    for ip in ips {
        let addr = format!("{ip}:{port}");
        wait_for(
            &format!("{want} through NodePort {addr}"),
            Duration::from_secs(30),
            || {
                let page = host_get(&addr, "/hello.html")?;
                if page.contains(want) {
                    Ok(())
                } else {
                    Err(page)
                }
            },
        );
    }
}

/// The build context: manifests/hello with Debian's busybox-static copied in.
fn build_context(dir: &Path) -> PathBuf {
    let context = dir.join("hello");
    let status = Command::new("cp")
        .arg("-a")
        .arg(manifests())
        .arg(&context)
        .status()
        .expect("cp");
    assert!(status.success(), "copy manifests/hello");
    std::fs::copy("/bin/busybox", context.join("busybox")).expect("copy /bin/busybox");
    context
}

/// One pass of the walkthrough with `cli` in its namespace, the Service on `node_port`.
fn walkthrough(cli: &Cli, registry: &str, node_ips: &[String], node_port: u16) {
    let ns = cli.namespace.clone();
    let image1 = format!("{registry}/hello:1.0.0");
    let image2 = format!("{registry}/hello:1.1.0");
    cli.apply(&format!(
        "{{\"apiVersion\":\"v1\",\"kind\":\"Namespace\",\"metadata\":{{\"name\":\"{ns}\"}}}}"
    ));
    let read = |file: &str| std::fs::read_to_string(manifests().join(file)).expect("manifest");
    cli.apply(&read("configmap.yaml"));
    // The manifest names the default lab's registry; this lab has its own underlay and
    // registry port.
    let deployment = read("deployment.yaml");
    assert!(
        deployment.contains(&format!("{DEFAULT_REGISTRY}/hello:1.0.0")),
        "deployment.yaml names {DEFAULT_REGISTRY}/hello:1.0.0"
    );
    cli.apply(&deployment.replace(DEFAULT_REGISTRY, registry));
    cli.apply(&read("service.yaml").replace("30080", &node_port.to_string()));

    // Two pods, one on each node.
    let pods = cli.wait_running(2, &image1);
    let mut nodes: Vec<String> = pods.iter().map(node_of).collect();
    nodes.sort();
    assert_eq!(nodes, ["node-1", "node-2"], "one pod on each node");

    // hello.html and the mounted ConfigMap through the NodePort of each node.
    wait_page(node_ips, node_port, V1);
    let message = host_get(
        &format!("{}:{node_port}", node_ips[0]),
        "/config/message.txt",
    )
    .expect("the ConfigMap's file through the NodePort");
    assert_eq!(message.trim(), CONFIG);
    let mounted = cli.ok(&[
        "exec",
        &name_of(&pods[0]),
        "--",
        "cat",
        "/www/config/message.txt",
    ]);
    assert_eq!(mounted.trim(), CONFIG);

    // Scale 2 → 1 → 2 → 1.
    for replicas in [1, 2, 1] {
        let out = cli.ok(&[
            "scale",
            "deployment/helloworld",
            &format!("--replicas={replicas}"),
        ]);
        assert!(out.contains("scaled"), "scale: {out}");
        cli.wait_running(replicas, &image1);
    }
    let pod = cli.wait_running(1, &image1).remove(0);

    // From a pod on the other node, by ClusterIP and by DNS name.
    let other = if node_of(&pod) == "node-1" {
        "node-2"
    } else {
        "node-1"
    };
    let client = format!(
        "{{\"apiVersion\":\"v1\",\"kind\":\"Pod\",\"metadata\":{{\"name\":\"client\"}},\
         \"spec\":{{\"nodeName\":\"{other}\",\"terminationGracePeriodSeconds\":0,\
         \"containers\":[{{\"name\":\"client\",\"image\":\"{image1}\",\
         \"command\":[\"sleep\",\"3600\"]}}]}}}}"
    );
    cli.apply(&client);
    wait_for("client Running", Duration::from_secs(60), || {
        let p = cli.json(&["get", "pod", "client"])?;
        (p["status"]["phase"] == "Running")
            .then_some(())
            .ok_or_else(|| p["status"].to_string())
    });
    let svc = cli
        .json(&["get", "service", "helloworld"])
        .expect("get service");
    let cluster_ip = svc["spec"]["clusterIP"]
        .as_str()
        .expect("clusterIP")
        .to_string();
    for host in [
        cluster_ip.clone(),
        format!("helloworld.{ns}.svc.cluster.local"),
    ] {
        let page = wait_for(
            &format!("hello.html from client on {other} via {host}"),
            Duration::from_secs(30),
            || cli.pod_get("client", &host, "/hello.html"),
        );
        assert!(page.contains(V1), "{host}: {page}");
    }
    cli.ok(&["delete", "pod", "client", "--wait=false"]);

    // set image 1.1.0 → the new page; rollout undo → the old page.
    cli.ok(&[
        "set",
        "image",
        "deployment/helloworld",
        &format!("helloworld={image2}"),
    ]);
    cli.ok(&[
        "rollout",
        "status",
        "deployment/helloworld",
        "--timeout=90s",
    ]);
    cli.wait_running(1, &image2);
    wait_page(node_ips, node_port, V2);
    cli.ok(&["rollout", "undo", "deployment/helloworld"]);
    cli.ok(&[
        "rollout",
        "status",
        "deployment/helloworld",
        "--timeout=90s",
    ]);
    let pod = cli.wait_running(1, &image1).remove(0);
    wait_page(node_ips, node_port, V1);
    let pod_name = name_of(&pod);

    // logs: httpd -v logs every request it answered (`response:200`); exec reads the page.
    wait_for("the requests in the logs", Duration::from_secs(20), || {
        let logs = cli.ok(&["logs", &pod_name]);
        if logs.contains("response:200") {
            Ok(())
        } else {
            Err(logs)
        }
    });
    let page = cli.ok(&["exec", &pod_name, "--", "cat", "/www/hello.html"]);
    assert!(page.contains(V1), "exec cat: {page}");

    // A liveness probe failure restarts the container.
    let restarts = |p: &Value| p["status"]["containerStatuses"][0]["restartCount"].as_u64();
    assert_eq!(restarts(&pod), Some(0), "{pod}");
    cli.ok(&["exec", &pod_name, "--", "rm", "/www/healthz"]);
    wait_for(
        "the liveness probe restarts the container",
        Duration::from_secs(60),
        || {
            let p = cli.json(&["get", "pod", &pod_name])?;
            let ready = p["status"]["containerStatuses"][0]["ready"] == true;
            match restarts(&p) {
                Some(n) if n >= 1 && ready => Ok(()),
                _ => Err(p["status"].to_string()),
            }
        },
    );
    wait_page(node_ips, node_port, V1);
    let described = cli.ok(&["describe", "pod", &pod_name]);
    assert!(described.contains("Liveness"), "describe: {described}");
}

#[test]
fn walkthrough_with_rkubectl_and_kubectl_node_loss_and_down() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: the lab's namespaces and containers need root");
        return;
    }
    require_binaries();
    let rkubectl = bin_dir().join("rkubectl");
    assert!(rkubectl.is_file(), "rkubectl not in target/debug");
    assert!(Path::new("/bin/busybox").is_file(), "busybox-static needed");

    let lab = Lab::new();
    let underlay = test_underlay(12);
    let up_args = LabPorts::free().up_args(NODES, &underlay, &[]);
    let up_refs: Vec<&str> = up_args.iter().map(String::as_str).collect();
    let up = lab.rkube(&up_refs);
    assert!(up.status.success(), "rkube up failed");
    let status = lab.status();
    let registry = status["registry"].as_str().expect("registry").to_string();
    let node_ips: Vec<String> = status["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| n["underlay_ip"].as_str().expect("ip").to_string())
        .collect();
    assert_eq!(node_ips.len(), NODES);

    // Both images, built and pushed with rkubectl.
    let context = build_context(lab.dir.path());
    for version in ["1.0.0", "1.1.0"] {
        let reference = format!("{registry}/hello:{version}");
        let build = Command::new(&rkubectl)
            .args(["image", "build", "-t", &reference, "--build-arg"])
            .arg(format!("VERSION={version}"))
            .arg(&context)
            .output()
            .expect("rkubectl image build");
        assert!(build.status.success(), "image build: {}", text(&build));
        let push = Command::new(&rkubectl)
            .args([
                "image",
                "push",
                "--insecure-registry",
                &registry,
                &reference,
            ])
            .output()
            .expect("rkubectl image push");
        assert!(push.status.success(), "image push: {}", text(&push));
    }

    let pid = std::process::id();
    let port_base = 30000 + (pid % 2700) as u16;
    let rk = Cli {
        binary: rkubectl,
        lab: &lab,
        namespace: format!("wt-rkubectl-{pid}"),
    };
    walkthrough(&rk, &registry, &node_ips, port_base);
    let kc = Cli {
        binary: PathBuf::from(rkube_tests::KUBECTL_BINARY),
        lab: &lab,
        namespace: format!("wt-kubectl-{pid}"),
    };
    walkthrough(&kc, &registry, &node_ips, port_base + 1);

    // Kill the node running kubectl's pass's pod: NotReady, evicted, back on the other.
    let image1 = format!("{registry}/hello:1.0.0");
    let victim_pod = kc.wait_running(1, &image1).remove(0);
    let victim = node_of(&victim_pod);
    let index = if victim == "node-1" { 0 } else { 1 };
    let survivor_ip = node_ips[1 - index].clone();
    let agent = status["nodes"][index]["agent_pid"]
        .as_i64()
        .expect("agent pid");
    let mut pids: Vec<i64> = vec![agent];
    for process in status["processes"].as_array().expect("processes") {
        pids.extend(process["pid"].as_i64());
    }
    let agent_pid = nix::unistd::Pid::from_raw(i32::try_from(agent).expect("pid"));
    nix::sys::signal::kill(agent_pid, nix::sys::signal::Signal::SIGKILL).expect("kill agent");
    wait_for(
        &format!("{victim} NotReady"),
        Duration::from_secs(60),
        || {
            let node = kc.json(&["get", "node", &victim])?;
            let ready = node["status"]["conditions"]
                .as_array()
                .and_then(|c| c.iter().find(|c| c["type"] == "Ready").cloned())
                .unwrap_or_default();
            (ready["status"] != "True")
                .then_some(())
                .ok_or_else(|| ready.to_string())
        },
    );
    let victim_name = name_of(&victim_pod);
    wait_for(
        &format!("{victim_name} evicted from {victim}"),
        Duration::from_secs(60),
        || match kc.json(&["get", "pod", &victim_name]) {
            Ok(p) if p["metadata"]["deletionTimestamp"].is_null() => Err(p["status"].to_string()),
            Ok(_) => Ok(()),
            Err(e) if e.contains("NotFound") || e.contains("not found") => Ok(()),
            Err(e) => Err(e),
        },
    );
    let replacement = wait_for(
        "the evicted pod back on the other node",
        Duration::from_secs(90),
        || {
            let pods = kc.pods();
            pods.iter()
                .find(|p| {
                    node_of(p) != victim
                        && p["status"]["phase"] == "Running"
                        && name_of(p) != name_of(&victim_pod)
                })
                .cloned()
                .ok_or_else(|| format!("{pods:?}"))
        },
    );
    assert_ne!(node_of(&replacement), victim);
    wait_page(&[survivor_ip], port_base + 1, V1);

    // `rkube down` leaves nothing behind.
    let netns: Vec<String> = status["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| n["netns"].as_str().expect("netns").to_string())
        .collect();
    let bridge = status["bridge"].as_str().expect("bridge").to_string();
    for node in status["nodes"].as_array().expect("nodes") {
        let root = PathBuf::from(node["root_dir"].as_str().expect("root dir"));
        pids.extend(agent_processes(&root).1);
    }
    assert!(pids.len() > 8, "the containers' processes: {pids:?}");
    assert_down_leaves_nothing(&lab, &pids, &netns, &bridge);
}
