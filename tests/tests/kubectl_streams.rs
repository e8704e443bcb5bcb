//! `kubectl logs` and `kubectl exec` through the apiserver's proxy to a node agent: the
//! real `/usr/bin/kubectl` against a test apiserver, with a scripted `NodeAgent` gRPC
//! server ([`rkube_tests::fake_agent`]) registered as the pods' node. No root needed.

use std::io::{BufRead, BufReader};
use std::process::{Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use rkube_tests::fake_agent::FakeAgent;
use rkube_tests::terminal::run_in_terminal;
use rkube_tests::{Etcd, TestApiserver};
use serde_json::{json, Value};

struct Cluster {
    _etcd: Etcd,
    api: TestApiserver,
    agent: FakeAgent,
    node: String,
}

/// An apiserver, a fake agent registered as a Node on 127.0.0.1, and pods on it:
/// `web` (container `main`, Running), `two` (containers `a` and `b`), `sleepy-pod`
/// (container `sleepy`) and `pending` (not scheduled).
async fn cluster(configure: impl FnOnce(&mut rkube_apiserver::Config)) -> Cluster {
    let etcd = Etcd::start().await.expect("start etcd");
    let api = TestApiserver::start_with(&etcd, configure)
        .await
        .expect("start apiserver");
    let agent = FakeAgent::start(api.ca_pem())
        .await
        .expect("start fake agent");
    let node = format!("fake-node-{}", std::process::id());
    let c = Cluster {
        _etcd: etcd,
        api,
        agent,
        node,
    };
    c.post(
        "/api/v1/nodes",
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": c.node}}),
    )
    .await;
    c.patch_status(
        &format!("/api/v1/nodes/{}/status", c.node),
        json!({"status": {
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": c.agent.address().port()}},
        }}),
    )
    .await;
    for (name, containers, node) in [
        ("web", vec!["main"], Some(c.node.as_str())),
        ("two", vec!["a", "b"], Some(c.node.as_str())),
        ("sleepy-pod", vec!["sleepy"], Some(c.node.as_str())),
        ("pending", vec!["main"], None),
    ] {
        let containers: Vec<Value> = containers
            .iter()
            .map(|n| json!({"name": n, "image": "busybox"}))
            .collect();
        let mut pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name},
            "spec": {"containers": containers},
        });
        if let Some(node) = node {
            pod["spec"]["nodeName"] = json!(node);
        }
        c.post("/api/v1/namespaces/default/pods", pod).await;
        c.patch_status(
            &format!("/api/v1/namespaces/default/pods/{name}/status"),
            json!({"status": {"phase": "Running"}}),
        )
        .await;
    }
    c
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

impl Cluster {
    async fn post(&self, path: &str, body: Value) {
        let resp = self
            .api
            .http()
            .post(format!("{}{path}", self.api.url()))
            .json(&body)
            .send()
            .await
            .expect("POST");
        assert!(resp.status().is_success(), "POST {path}: {}", resp.status());
    }

    async fn patch_status(&self, path: &str, body: Value) {
        let resp = self
            .api
            .http()
            .patch(format!("{}{path}", self.api.url()))
            .header("content-type", "application/merge-patch+json")
            .body(body.to_string())
            .send()
            .await
            .expect("PATCH");
        assert!(
            resp.status().is_success(),
            "PATCH {path}: {}",
            resp.status()
        );
    }

    /// A GET whose answer is a `Status`: its code and message.
    async fn status_of(&self, path: &str) -> (u16, String) {
        let resp = self
            .api
            .http()
            .get(format!("{}{path}", self.api.url()))
            .send()
            .await
            .expect("GET");
        let code = resp.status().as_u16();
        let body: Value = resp.json().await.expect("a Status body");
        assert_eq!(body["kind"], "Status", "{body}");
        (
            code,
            body["message"].as_str().unwrap_or_default().to_string(),
        )
    }

    async fn kubectl(&self, args: &[&str]) -> Output {
        let api = &self.api;
        tokio::task::block_in_place(|| api.kubectl(args))
    }

    async fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args).await;
        assert!(out.status.success(), "kubectl {args:?}:\n{}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    async fn kubectl_stdin(&self, args: &[&str], stdin: &str) -> Output {
        let api = &self.api;
        tokio::task::block_in_place(|| api.kubectl_stdin(args, stdin))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_logs_through_the_node_agent() {
    let c = cluster(|_| {}).await;

    let all = c.kubectl_ok(&["logs", "web"]).await;
    assert_eq!(all, "main 1\nmain 2\nmain 3\nmain 4\nmain 5\n");

    let tail = c
        .kubectl_ok(&["logs", "web", "--tail=2", "--timestamps"])
        .await;
    assert_eq!(tail, "main 4\nmain 5\n");
    let b = c.kubectl_ok(&["logs", "two", "-c", "b"]).await;
    assert_eq!(b, "b 1\nb 2\nb 3\nb 4\nb 5\n");
    let since = c
        .kubectl_ok(&["logs", "web", "--since=1h", "--limit-bytes=100"])
        .await;
    assert_eq!(since.lines().count(), 5, "{since}");

    let requests = c.agent.recorded().logs;
    assert_eq!(requests.len(), 4, "{requests:?}");
    let target = requests[0].container.clone().expect("container");
    assert_eq!(
        (
            target.namespace.as_str(),
            target.pod.as_str(),
            target.container.as_str()
        ),
        ("default", "web", "main")
    );
    assert!(!target.pod_uid.is_empty(), "the pod's uid is sent");
    assert_eq!(
        (requests[1].tail_lines, requests[1].timestamps),
        (Some(2), true)
    );
    assert_eq!(
        requests[2].container.as_ref().map(|c| c.container.as_str()),
        Some("b")
    );
    assert_eq!(
        (requests[3].since_seconds, requests[3].limit_bytes),
        (Some(3600), Some(100))
    );
    assert!(!requests[0].follow && !requests[0].previous);

    // -f prints lines as they arrive and exits 0 when the agent's stream ends.
    let mut follow = c
        .api
        .kubectl_command(&["logs", "-f", "web"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kubectl logs -f");
    let stdout = follow.stdout.take().expect("piped");
    let (lines_tx, lines_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    while seen.len() < 5 {
        let line = tokio::task::block_in_place(|| lines_rx.recv_timeout(Duration::from_secs(20)))
            .unwrap_or_else(|e| panic!("kubectl logs -f printed {seen:?}, then {e}"));
        seen.push(line);
    }
    assert_eq!(seen.last().map(String::as_str), Some("main 5"));
    assert!(
        follow.try_wait().expect("poll kubectl").is_none(),
        "kubectl logs -f is still following while the stream is open"
    );
    assert!(c.agent.recorded().logs.last().is_some_and(|r| r.follow));
    c.agent.release_follow();
    let last = tokio::task::block_in_place(|| lines_rx.recv_timeout(Duration::from_secs(20)))
        .expect("the line sent after the release");
    assert_eq!(last, "main after release");
    let status = tokio::task::block_in_place(|| follow.wait()).expect("wait for kubectl");
    assert!(
        status.success(),
        "kubectl logs -f ends with 0 when the stream ends"
    );

    // Errors, as kubectl prints them.
    let out = c.kubectl(&["logs", "sleepy-pod"]).await;
    assert!(!out.status.success());
    assert!(
        text(&out).contains(
            "Error from server (BadRequest): container \"sleepy\" in pod \"sleepy-pod\" is waiting to start: ContainerCreating"
        ),
        "{}",
        text(&out)
    );
    let out = c.kubectl(&["logs", "web", "-c", "nope"]).await;
    assert!(
        text(&out).contains("container nope is not valid for pod web"),
        "{}",
        text(&out)
    );
    let out = c.kubectl(&["logs", "nope"]).await;
    assert!(
        text(&out).contains("pods \"nope\" not found"),
        "{}",
        text(&out)
    );

    let base = "/api/v1/namespaces/default/pods";
    let cases = [
        (
            format!("{base}/two/log"),
            400,
            "a container name must be specified for pod two, choose one of: [a b]",
        ),
        (
            format!("{base}/pending/log"),
            400,
            "pod pending does not have a host assigned",
        ),
        (
            format!("{base}/web/log?tailLines=-1"),
            400,
            "tailLines: Invalid value: -1: must be greater than or equal to 0",
        ),
        (
            format!("{base}/web/log?sinceSeconds=x"),
            400,
            "sinceSeconds: Invalid value: \"x\": must be an integer",
        ),
        (format!("{base}/nope/log"), 404, "pods \"nope\" not found"),
    ];
    for (path, code, message) in cases {
        assert_eq!(
            c.status_of(&path).await,
            (code, message.to_string()),
            "{path}"
        );
    }
    assert!(c.agent.recorded().refused.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_exec_through_the_node_agent() {
    let c = cluster(|_| {}).await;

    let out = c
        .kubectl(&[
            "exec",
            "web",
            "--",
            "sh",
            "-c",
            "echo out; echo err >&2; exit 3",
        ])
        .await;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("err\n"), "{stderr}");
    assert!(
        stderr.contains("command terminated with exit code 3"),
        "{stderr}"
    );

    let ok = c
        .kubectl_ok(&["exec", "two", "-c", "b", "--", "echo", "hi there"])
        .await;
    assert_eq!(ok, "hi there\n");

    // -i: stdin reaches the command, and its end closes the command's stdin.
    let out = c
        .kubectl_stdin(
            &["exec", "-i", "web", "--", "sh", "-c", "cat; echo done"],
            "hello\nworld\n",
        )
        .await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\nworld\ndone\n");

    let starts = c.agent.recorded().execs;
    assert_eq!(starts.len(), 3, "{starts:?}");
    assert_eq!(
        starts[0].command,
        ["sh", "-c", "echo out; echo err >&2; exit 3"]
    );
    assert!(starts[0].stdout && starts[0].stderr && !starts[0].stdin && !starts[0].tty);
    assert_eq!(
        starts[1].container.as_ref().map(|c| c.container.as_str()),
        Some("b")
    );
    assert!(starts[2].stdin);
    assert!(
        c.agent.recorded().stdin_closes >= 1,
        "v5 close of stdin arrived"
    );

    // -it under a pseudo-terminal: the terminal size arrives as a resize.
    let out = tokio::task::block_in_place(|| {
        run_in_terminal(
            &c.api.kubectl_command(&["exec", "-it", "web", "--", "sh"]),
            "fake tty ready",
            &["hello", "exit"],
            Duration::from_secs(20),
        )
    });
    let screen = text(&out);
    assert!(out.status.success(), "{screen}");
    assert!(screen.contains("fake tty ready"), "{screen}");
    assert!(screen.contains("resize 100x30"), "{screen}");
    assert!(screen.contains("hello"), "{screen}");
    let recorded = c.agent.recorded();
    let tty = recorded.execs.last().expect("the -it exec");
    assert!(tty.tty && tty.stdin && tty.stdout && !tty.stderr, "{tty:?}");
    assert!(
        recorded
            .resizes
            .iter()
            .any(|s| (s.width, s.height) == (100, 30)),
        "{:?}",
        recorded.resizes
    );

    // Errors before the upgrade are Statuses kubectl prints.
    let out = c
        .kubectl(&["exec", "web", "-c", "nope", "--", "true"])
        .await;
    assert!(!out.status.success());
    assert!(
        text(&out).contains("container nope is not valid for pod web"),
        "{}",
        text(&out)
    );
    let out = c.kubectl(&["exec", "pending", "--", "true"]).await;
    assert!(
        text(&out).contains("pod pending does not have a host assigned"),
        "{}",
        text(&out)
    );
    // A command the agent cannot start ends with a failure Status, not rc 0.
    let out = c
        .kubectl(&["exec", "web", "--", "/nonexistent/binary"])
        .await;
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("cannot run"), "{}", text(&out));

    // kubectl's SPDY fallback gets a clear refusal.
    let resp = c
        .api
        .http()
        .post(format!(
            "{}/api/v1/namespaces/default/pods/web/exec?command=true&stdout=true",
            c.api.url()
        ))
        .header("connection", "Upgrade")
        .header("upgrade", "SPDY/3.1")
        .header("x-stream-protocol-version", "v4.channel.k8s.io")
        .send()
        .await
        .expect("POST exec");
    assert_eq!(resp.status().as_u16(), 400);
    let body: Value = resp.json().await.expect("Status");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("SPDY is not supported")),
        "{body}"
    );
    assert!(c.agent.recorded().refused.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_kubelet_client_certificate_logs_and_exec_are_unavailable() {
    let c = cluster(|config| {
        config.kubelet_client_certificate = None;
        config.kubelet_client_key = None;
    })
    .await;
    let (code, message) = c.status_of("/api/v1/namespaces/default/pods/web/log").await;
    assert_eq!(code, 503);
    assert!(
        message.contains("--kubelet-client-certificate"),
        "{message}"
    );
    let out = c.kubectl(&["exec", "web", "--", "true"]).await;
    assert!(!out.status.success());
    assert!(
        text(&out).contains("--kubelet-client-certificate"),
        "{}",
        text(&out)
    );
    assert!(c.agent.recorded().execs.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_refuses_a_certificate_that_is_not_the_apiservers() {
    let c = cluster(|config| {
        // The admin's certificate is signed by the same CA, but its CN is "admin".
        let pki = config.client_ca_file.clone().expect("the test PKI");
        let dir = pki.parent().expect("the PKI directory").to_path_buf();
        config.kubelet_client_certificate = Some(dir.join(rkube_ctl::pki::ADMIN_CERT));
        config.kubelet_client_key = Some(dir.join(rkube_ctl::pki::ADMIN_KEY));
    })
    .await;
    let (code, message) = c.status_of("/api/v1/namespaces/default/pods/web/log").await;
    assert_eq!(code, 500, "{message}");
    assert!(
        message.contains("refused the apiserver's client certificate"),
        "{message}"
    );
    assert_eq!(c.agent.recorded().refused, ["admin"]);
    assert!(c.agent.recorded().logs.is_empty());
}
