//! The real `/usr/bin/kubectl` (v1.32) against a test apiserver on a real etcd: the
//! commands an operator uses, and the errors they print.

use std::io::{BufRead, BufReader};
use std::process::{Output, Stdio};
use std::time::Duration;

use rkube_tests::{Etcd, TestApiserver};
use serde_json::Value;

struct Kube {
    _etcd: Etcd,
    api: TestApiserver,
}

async fn kube() -> Kube {
    let etcd = Etcd::start().await.expect("start etcd");
    let api = TestApiserver::start(&etcd).await.expect("start apiserver");
    Kube { _etcd: etcd, api }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

impl Kube {
    /// Runs kubectl off the async runtime and insists that it succeeded.
    async fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args).await;
        assert!(
            out.status.success(),
            "kubectl {args:?} failed:\n{}",
            text(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    async fn run(&self, args: &[&str]) -> Output {
        let api = &self.api;
        tokio::task::block_in_place(|| api.kubectl(args))
    }

    async fn apply(&self, args: &[&str], manifest: &str) -> Output {
        let api = &self.api;
        tokio::task::block_in_place(|| api.kubectl_stdin(args, manifest))
    }

    async fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        serde_json::from_str(&self.ok(&all).await).expect("kubectl -o json prints JSON")
    }
}

const DEPLOYMENT: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: helloworld
  labels:
    app: helloworld
spec:
  replicas: 1
  selector:
    matchLabels:
      app: helloworld
  template:
    metadata:
      labels:
        app: helloworld
    spec:
      containers:
      - name: helloworld
        image: hello:1.0.0
        ports:
        - containerPort: 80
        env:
        - name: A
          value: "1"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_and_version() {
    let k = kube().await;
    let version = k.ok(&["version"]).await;
    assert!(
        version.contains("Server Version: v1.32.0-rkube"),
        "{version}"
    );
    let resources = k.ok(&["api-resources"]).await;
    for want in [
        "deployments",
        "deploy",
        "apps/v1",
        "pods",
        "po",
        "namespaces",
        "leases",
        "coordination.k8s.io/v1",
    ] {
        assert!(
            resources.contains(want),
            "api-resources lacks {want}:\n{resources}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_apply_get_scale_and_delete() {
    let k = kube().await;
    let out = k.apply(&["create", "-f", "-"], DEPLOYMENT).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("deployment.apps/helloworld created"));
    let out = k.apply(&["create", "-f", "-"], DEPLOYMENT).await;
    assert!(!out.status.success());
    assert!(text(&out).contains("AlreadyExists"), "{}", text(&out));

    // Client-side apply twice, with a change: the second run is a strategic merge patch.
    k.ok(&["delete", "deployment", "helloworld"]).await;
    let out = k.apply(&["apply", "-f", "-"], DEPLOYMENT).await;
    assert!(
        text(&out).contains("deployment.apps/helloworld created"),
        "{}",
        text(&out)
    );
    let changed = DEPLOYMENT
        .replace("replicas: 1", "replicas: 3")
        .replace("value: \"1\"", "value: \"2\"");
    let out = k.apply(&["apply", "-f", "-"], &changed).await;
    assert!(
        text(&out).contains("deployment.apps/helloworld configured"),
        "{}",
        text(&out)
    );
    let d = k.json(&["get", "deployment", "helloworld"]).await;
    assert_eq!(d["spec"]["replicas"], 3);
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"],
        "2"
    );
    assert_eq!(d["metadata"]["generation"], 2);
    let out = k.apply(&["apply", "-f", "-"], &changed).await;
    assert!(
        text(&out).contains("deployment.apps/helloworld unchanged"),
        "{}",
        text(&out)
    );

    // Tables with the usual columns; -o yaml; -l.
    let table = k.ok(&["get", "deployments"]).await;
    assert!(
        table.starts_with("NAME")
            && table.contains("READY")
            && table.contains("UP-TO-DATE")
            && table.contains("helloworld"),
        "{table}"
    );
    let wide = k.ok(&["get", "deploy", "-o", "wide"]).await;
    assert!(
        wide.contains("IMAGES") && wide.contains("hello:1.0.0") && wide.contains("app=helloworld"),
        "{wide}"
    );
    let yaml = k.ok(&["get", "deploy", "helloworld", "-o", "yaml"]).await;
    assert!(
        yaml.contains("kind: Deployment") && yaml.contains("replicas: 3"),
        "{yaml}"
    );
    assert!(k
        .ok(&["get", "deploy", "-l", "app=helloworld", "-o", "name"])
        .await
        .contains("deployment.apps/helloworld"));
    assert!(k.ok(&["get", "deploy", "-l", "app=other"]).await.is_empty());

    // scale, set image, label, annotate.
    assert!(k
        .ok(&["scale", "--replicas=2", "deploy/helloworld"])
        .await
        .contains("deployment.apps/helloworld scaled"));
    assert!(k
        .ok(&[
            "set",
            "image",
            "deploy/helloworld",
            "helloworld=hello:1.1.0"
        ])
        .await
        .contains("image updated"));
    k.ok(&["label", "deploy", "helloworld", "tier=web"]).await;
    k.ok(&["annotate", "deploy", "helloworld", "note=hi"]).await;
    let d = k.json(&["get", "deploy", "helloworld"]).await;
    assert_eq!(d["spec"]["replicas"], 2);
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"],
        "hello:1.1.0"
    );
    assert_eq!(d["metadata"]["labels"]["tier"], "web");
    assert_eq!(d["metadata"]["annotations"]["note"], "hi");
    let out = k.run(&["label", "deploy", "helloworld", "tier=db"]).await;
    assert!(!out.status.success(), "an existing label needs --overwrite");
    k.ok(&["label", "deploy", "helloworld", "tier-"]).await;
    assert!(
        k.json(&["get", "deploy", "helloworld"]).await["metadata"]["labels"]
            .get("tier")
            .is_none()
    );

    let out = k.apply(&["delete", "-f", "-"], DEPLOYMENT).await;
    assert!(
        text(&out).contains("deployment.apps \"helloworld\" deleted"),
        "{}",
        text(&out)
    );
    let out = k.run(&["get", "deploy", "helloworld"]).await;
    assert!(text(&out).contains("NotFound"), "{}", text(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_side_apply_creates_then_updates() {
    let k = kube().await;
    let out = k
        .apply(&["apply", "--server-side", "-f", "-"], DEPLOYMENT)
        .await;
    assert!(
        text(&out).contains("deployment.apps/helloworld serverside-applied"),
        "{}",
        text(&out)
    );
    let changed = DEPLOYMENT.replace("replicas: 1", "replicas: 4");
    let out = k
        .apply(&["apply", "--server-side", "-f", "-"], &changed)
        .await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        k.json(&["get", "deploy", "helloworld"]).await["spec"]["replicas"],
        4
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imperative_creates_send_protobuf() {
    let k = kube().await;
    assert!(k
        .ok(&["create", "namespace", "team"])
        .await
        .contains("namespace/team created"));
    assert!(k
        .ok(&[
            "create",
            "configmap",
            "cfg",
            "-n",
            "team",
            "--from-literal=a=b"
        ])
        .await
        .contains("configmap/cfg created"));
    assert!(k
        .ok(&[
            "create",
            "deployment",
            "web",
            "-n",
            "team",
            "--image=nginx:1.25",
            "--replicas=2"
        ])
        .await
        .contains("deployment.apps/web created"));
    let cm = k.json(&["get", "configmap", "cfg", "-n", "team"]).await;
    assert_eq!(cm["data"]["a"], "b");
    let d = k.json(&["get", "deploy", "web", "-n", "team"]).await;
    assert_eq!(d["spec"]["replicas"], 2);
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"],
        "nginx:1.25"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_manifests_name_the_field() {
    let k = kube().await;
    let bad = DEPLOYMENT.replace("replicas: 1", "replicas: -1");
    let out = k.apply(&["create", "-f", "-"], &bad).await;
    assert!(!out.status.success());
    let t = text(&out);
    assert!(
        t.contains("The Deployment \"helloworld\" is invalid") && t.contains("spec.replicas"),
        "{t}"
    );
    let unknown = DEPLOYMENT.replace("  replicas: 1", "  replicas: 1\n  colour: red");
    let out = k.apply(&["apply", "-f", "-"], &unknown).await;
    assert!(!out.status.success());
    assert!(
        text(&out).contains("unknown field \"spec.colour\""),
        "{}",
        text(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_watch_prints_changes() {
    let k = kube().await;
    k.ok(&["create", "configmap", "first", "--from-literal=a=1"])
        .await;
    let mut child = k
        .api
        .kubectl_command(&["get", "configmaps", "-w", "--no-headers"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kubectl get -w");
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    let wait_for = |lines: &mut Vec<String>, needle: &str| {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !lines.iter().any(|l| l.contains(needle)) && std::time::Instant::now() < deadline {
            if let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
                lines.push(l);
            }
        }
        lines.iter().any(|l| l.contains(needle))
    };
    assert!(
        tokio::task::block_in_place(|| wait_for(&mut lines, "first")),
        "{lines:?}"
    );
    k.ok(&["create", "configmap", "second", "--from-literal=a=2"])
        .await;
    assert!(
        tokio::task::block_in_place(|| wait_for(&mut lines, "second")),
        "{lines:?}"
    );
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn walkthrough_manifests_apply() {
    let k = kube().await;
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../manifests/hello/");
    let out = k.ok(&["apply", "-f", dir]).await;
    assert!(
        out.contains("deployment.apps/helloworld created")
            && out.contains("service/helloworld created"),
        "{out}"
    );
    let svc = k.ok(&["get", "svc", "helloworld"]).await;
    assert!(
        svc.contains("NodePort") && svc.contains("80:30080/TCP"),
        "{svc}"
    );
    let all = k.ok(&["get", "all"]).await;
    assert!(
        all.contains("deployment.apps/helloworld") && all.contains("service/helloworld"),
        "{all}"
    );
    let scaled = k.ok(&["scale", "--replicas=2", "deploy/helloworld"]).await;
    assert!(scaled.contains("scaled"), "{scaled}");
    let out = k.ok(&["delete", "-f", dir]).await;
    assert!(out.contains("deleted"), "{out}");
}

/// A pod bound to `node`, with `owner` (YAML `ownerReferences` lines, or empty).
fn drain_pod(name: &str, node: &str, owner: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n{owner}spec:\n  nodeName: {node}\n  containers:\n  - name: c\n    image: busybox\n"
    )
}

/// The lines of kubectl's `-v=6` request log (`… round_trippers.go:…] POST https://…/path
/// 201 Created in 5 milliseconds`) for `method` on a URL ending in `suffix`.
fn requests<'a>(log: &'a str, method: &str, suffix: &str) -> Vec<&'a str> {
    log.lines()
        .filter(|l| {
            l.split_once("] ").is_some_and(|(_, request)| {
                request.starts_with(&format!("{method} https://"))
                    && request
                        .split_whitespace()
                        .nth(1)
                        .is_some_and(|url| url.ends_with(suffix))
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_evicts_through_the_subresource() {
    let k = kube().await;
    let pid = std::process::id();
    let node = format!("kubectl-drain-{pid}");
    let slow_node = format!("kubectl-drain-slow-{pid}");
    for n in [&node, &slow_node] {
        let out = k
            .apply(
                &["create", "-f", "-"],
                &format!("apiVersion: v1\nkind: Node\nmetadata:\n  name: {n}\n"),
            )
            .await;
        assert!(out.status.success(), "{}", text(&out));
    }
    // kubectl looks the DaemonSet up (and evicts pods whose DaemonSet is gone).
    let ds = "apiVersion: apps/v1\nkind: DaemonSet\nmetadata:\n  name: ds\nspec:\n  selector:\n    matchLabels: {app: ds}\n  template:\n    metadata:\n      labels: {app: ds}\n    spec:\n      containers:\n      - {name: c, image: busybox}\n";
    let out = k.apply(&["create", "-f", "-"], ds).await;
    assert!(out.status.success(), "{}", text(&out));
    let ds_owner = "  ownerReferences:\n  - {apiVersion: apps/v1, kind: DaemonSet, name: ds, uid: 00000000-0000-0000-0000-000000000001, controller: true}\n";
    let rs_owner = "  ownerReferences:\n  - {apiVersion: apps/v1, kind: ReplicaSet, name: rs, uid: 00000000-0000-0000-0000-000000000002, controller: true}\n";
    for manifest in [
        drain_pod("bare", &node, ""),
        drain_pod("ds-pod", &node, ds_owner),
        drain_pod("slow", &slow_node, rs_owner),
    ] {
        let out = k.apply(&["create", "-f", "-"], &manifest).await;
        assert!(out.status.success(), "{}", text(&out));
    }

    // Grace period 0: the bare pod goes at once, through the eviction subresource.
    let out = k
        .run(&[
            "drain",
            &node,
            "--ignore-daemonsets",
            "--force",
            "--grace-period=0",
            "--timeout=60s",
            "-v=6",
        ])
        .await;
    let (stdout, log) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}{log}");
    for want in [
        format!("node/{node} cordoned"),
        "evicting pod default/bare".into(),
        "pod/bare evicted".into(),
        format!("node/{node} drained"),
    ] {
        assert!(stdout.contains(&want), "stdout lacks {want:?}:\n{stdout}");
    }
    assert!(
        log.contains("ignoring DaemonSet-managed Pods: default/ds-pod"),
        "{log}"
    );
    let evictions = requests(
        &log,
        "POST",
        "/api/v1/namespaces/default/pods/bare/eviction",
    );
    assert!(
        !evictions.is_empty() && evictions.iter().all(|l| l.contains("201 Created")),
        "kubectl evicted through the subresource: {evictions:?}\n{log}"
    );
    let deletes = requests(&log, "DELETE", "/api/v1/namespaces/default/pods/bare");
    assert!(deletes.is_empty(), "kubectl deleted instead: {deletes:?}");
    let out = k.run(&["get", "pod", "bare"]).await;
    assert!(
        text(&out).contains("pods \"bare\" not found"),
        "{}",
        text(&out)
    );
    assert_eq!(
        k.json(&["get", "pod", "ds-pod"]).await["metadata"]["deletionTimestamp"],
        Value::Null,
        "DaemonSet pods stay"
    );
    assert_eq!(
        k.json(&["get", "node", &node]).await["spec"]["unschedulable"],
        true
    );

    // The pod's own grace period: evicted, marked for deletion, and since no node agent
    // confirms, kubectl waits until its timeout.
    let out = k.run(&["drain", &slow_node, "--timeout=3s", "-v=6"]).await;
    let (stdout, log) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(1), "{stdout}{log}");
    assert!(stdout.contains("evicting pod default/slow"), "{stdout}");
    assert!(
        log.contains(
            "error when waiting for pod \"slow\" in namespace \"default\" to terminate: context deadline exceeded"
        ),
        "kubectl waited for the pod to go:\n{log}"
    );
    assert!(
        !requests(
            &log,
            "POST",
            "/api/v1/namespaces/default/pods/slow/eviction"
        )
        .is_empty(),
        "{log}"
    );
    let slow = k.json(&["get", "pod", "slow"]).await;
    assert!(
        slow["metadata"]["deletionTimestamp"].is_string(),
        "evicted pods are marked for deletion: {slow}"
    );
    assert_eq!(slow["metadata"]["deletionGracePeriodSeconds"], 30);
    let conditions = slow["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        conditions
            .iter()
            .any(|c| c["type"] == "DisruptionTarget" && c["reason"] == "EvictionByEvictionAPI"),
        "{slow}"
    );
}
