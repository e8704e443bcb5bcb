//! `rkubectl` (the real binary from `target/debug`) against a test apiserver on a real
//! etcd: tables from the server, output formats, apply/create/delete, the mutating
//! verbs, watch, kubeconfig contexts, and kubectl-like errors.
//!
//! Build the binary first: `cargo build -p rkube-ctl --bin rkubectl` (`make test`
//! builds every binary).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use rkube_tests::{Etcd, TestApiserver};
use serde_json::Value;

/// The binary under test: `$CARGO_TARGET_DIR/debug/rkubectl`, else the workspace's
/// `target/debug/rkubectl`.
fn binary() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join("target")
        });
    let bin = target.join("debug").join("rkubectl");
    assert!(
        bin.exists(),
        "{} not built: run `cargo build -p rkube-ctl --bin rkubectl` (make test does)",
        bin.display()
    );
    bin
}

struct Kube {
    api: TestApiserver,
    home: tempfile::TempDir,
    _etcd: Etcd,
}

async fn kube() -> Kube {
    let etcd = Etcd::start().await.expect("start etcd");
    let api = TestApiserver::start(&etcd).await.expect("start apiserver");
    let home = tempfile::tempdir().expect("create HOME");
    Kube {
        api,
        home,
        _etcd: etcd,
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

impl Kube {
    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(binary());
        c.args(args)
            .env("KUBECONFIG", self.api.kubeconfig_path())
            .env("HOME", self.home.path())
            .env("NO_PROXY", "127.0.0.1,localhost")
            .stdin(Stdio::null());
        c
    }

    /// Runs rkubectl off the async runtime, feeding `input` on stdin when given.
    async fn run_with(&self, args: &[&str], input: Option<&str>) -> Output {
        tokio::task::block_in_place(|| {
            let mut cmd = self.command(args);
            cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
            if input.is_some() {
                cmd.stdin(Stdio::piped());
            }
            let mut child = cmd.spawn().expect("spawn rkubectl");
            if let Some(input) = input {
                let mut pipe = child.stdin.take().expect("piped stdin");
                pipe.write_all(input.as_bytes()).expect("write stdin");
            }
            child.wait_with_output().expect("wait for rkubectl")
        })
    }

    async fn run(&self, args: &[&str]) -> Output {
        self.run_with(args, None).await
    }

    /// Runs rkubectl and insists that it succeeded; returns stdout.
    async fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args).await;
        assert!(
            out.status.success(),
            "rkubectl {args:?} failed:\n{}",
            text(&out)
        );
        stdout(&out)
    }

    /// Runs rkubectl and insists that it failed with exit code 1; returns stdout+stderr.
    async fn fails(&self, args: &[&str], input: Option<&str>) -> String {
        let out = self.run_with(args, input).await;
        assert_eq!(
            out.status.code(),
            Some(1),
            "rkubectl {args:?}:\n{}",
            text(&out)
        );
        text(&out)
    }

    async fn stdin_ok(&self, args: &[&str], input: &str) -> String {
        let out = self.run_with(args, Some(input)).await;
        assert!(
            out.status.success(),
            "rkubectl {args:?} failed:\n{}",
            text(&out)
        );
        stdout(&out)
    }

    async fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        serde_json::from_str(&self.ok(&all).await).expect("-o json prints JSON")
    }
}

fn hello_dir() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("manifests")
        .join("hello")
        .display()
        .to_string()
}

const NAMESPACE_AND_CONFIGMAPS: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: other
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: cm-a
  namespace: other
  labels:
    team: a
data:
  k: v
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: cm-b
  labels:
    team: b
data:
  k: v
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_and_get_in_every_format() {
    let k = kube().await;
    // A directory: both manifests, created, then unchanged.
    let out = k.ok(&["apply", "-f", &hello_dir()]).await;
    assert!(out.contains("deployment.apps/helloworld created"), "{out}");
    assert!(out.contains("service/helloworld created"), "{out}");
    let out = k.ok(&["apply", "-f", &hello_dir()]).await;
    assert!(
        out.contains("deployment.apps/helloworld unchanged"),
        "{out}"
    );
    assert!(out.contains("service/helloworld unchanged"), "{out}");
    // A single file changed on stdin: configured.
    let changed = std::fs::read_to_string(Path::new(&hello_dir()).join("deployment.yaml"))
        .expect("read manifest")
        .replace("replicas: 2", "replicas: 1");
    let out = k.stdin_ok(&["apply", "-f", "-"], &changed).await;
    assert!(
        out.contains("deployment.apps/helloworld configured"),
        "{out}"
    );
    assert_eq!(
        k.json(&["get", "deploy", "helloworld"]).await["spec"]["replicas"],
        1
    );
    // Multi-document stdin with a namespace.
    let out = k
        .stdin_ok(&["create", "-f", "-"], NAMESPACE_AND_CONFIGMAPS)
        .await;
    for want in [
        "namespace/other created",
        "configmap/cm-a created",
        "configmap/cm-b created",
    ] {
        assert!(out.contains(want), "{out}");
    }

    // Server-side tables, wide, several kinds.
    let table = k.ok(&["get", "deployments"]).await;
    assert!(table.starts_with("NAME"), "{table}");
    for want in ["READY", "UP-TO-DATE", "AVAILABLE", "AGE", "helloworld"] {
        assert!(table.contains(want), "{table}");
    }
    assert!(!table.contains("IMAGES"), "{table}");
    let wide = k.ok(&["get", "deploy", "-o", "wide"]).await;
    assert!(
        wide.contains("IMAGES") && wide.contains("hello:1.0.0") && wide.contains("app=helloworld"),
        "{wide}"
    );
    let both = k.ok(&["get", "deploy,svc"]).await;
    assert!(
        both.contains("deployment.apps/helloworld") && both.contains("service/helloworld"),
        "{both}"
    );
    assert!(
        both.contains("NodePort") && both.contains("80:30080/TCP"),
        "{both}"
    );
    let labels = k
        .ok(&["get", "deploy", "helloworld", "--show-labels"])
        .await;
    assert!(
        labels.contains("LABELS") && labels.contains("app=helloworld"),
        "{labels}"
    );

    // -A adds the NAMESPACE column from the row objects.
    let all = k.ok(&["get", "configmaps", "-A"]).await;
    assert!(all.starts_with("NAMESPACE"), "{all}");
    let row_a = all.lines().find(|l| l.contains("cm-a")).expect("cm-a row");
    assert!(row_a.starts_with("other"), "{all}");
    let row_b = all.lines().find(|l| l.contains("cm-b")).expect("cm-b row");
    assert!(row_b.starts_with("default"), "{all}");
    assert!(!k.ok(&["get", "cm"]).await.contains("cm-a"));
    assert!(k.ok(&["get", "cm", "-n", "other"]).await.contains("cm-a"));

    // yaml, json, name, jsonpath.
    let yaml = k.ok(&["get", "deploy", "helloworld", "-o", "yaml"]).await;
    assert!(
        yaml.contains("kind: Deployment") && yaml.contains("replicas: 1"),
        "{yaml}"
    );
    let list = k.json(&["get", "deploy,svc"]).await;
    assert_eq!(list["kind"], "List");
    assert_eq!(list["items"][0]["kind"], "Deployment");
    assert_eq!(list["items"][1]["kind"], "Service");
    assert_eq!(
        k.ok(&["get", "deploy,svc", "-o", "name"]).await,
        "deployment.apps/helloworld\nservice/helloworld\n"
    );
    assert_eq!(
        k.ok(&[
            "get",
            "configmaps",
            "-A",
            "-o",
            "jsonpath={range .items[*]}{.metadata.namespace}/{.metadata.name}{\"\\n\"}{end}"
        ])
        .await,
        "default/cm-b\ndefault/helloworld-config\nother/cm-a\n"
    );
    assert_eq!(
        k.ok(&[
            "get",
            "deploy",
            "helloworld",
            "-o",
            "jsonpath={.spec.template.spec.containers[*].image}"
        ])
        .await,
        "10.250.0.1:5000/hello:1.0.0"
    );

    // Selectors.
    assert_eq!(
        k.ok(&["get", "cm", "-A", "-l", "team=a", "-o", "name"])
            .await,
        "configmap/cm-a\n"
    );
    let out = k.run(&["get", "deploy", "-l", "app=other"]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(stdout(&out).is_empty(), "{}", text(&out));
    assert!(
        stderr(&out).contains("No resources found in default namespace."),
        "{}",
        text(&out)
    );
    assert_eq!(
        k.ok(&[
            "get",
            "cm",
            "-A",
            "--field-selector",
            "metadata.namespace=other",
            "-o",
            "name"
        ])
        .await,
        "configmap/cm-a\n"
    );

    // Errors read like kubectl's.
    let err = k.fails(&["get", "deploy", "nope"], None).await;
    assert!(
        err.contains("Error from server (NotFound): deployments.apps \"nope\" not found"),
        "{err}"
    );
    let err = k.fails(&["get", "pods", "-o", "xml"], None).await;
    assert!(err.contains("unable to match a printer"), "{err}");
    let err = k.fails(&["get", "frobs"], None).await;
    assert!(
        err.contains("the server doesn't have a resource type \"frobs\""),
        "{err}"
    );

    // Discovery-driven verbs.
    let resources = k.ok(&["api-resources"]).await;
    for want in [
        "deployments",
        "deploy",
        "apps/v1",
        "pods",
        "po",
        "namespaces",
    ] {
        assert!(resources.contains(want), "{resources}");
    }
    let version = k.ok(&["version"]).await;
    assert!(
        version.contains("Server Version: v1.32.0-rkube"),
        "{version}"
    );
    let info = k.ok(&["cluster-info"]).await;
    assert!(info.contains(k.api.url()), "{info}");
}

const BAD_REPLICAS: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: bad
spec:
  replicas: -1
  selector:
    matchLabels: {app: bad}
  template:
    metadata:
      labels: {app: bad}
    spec:
      containers:
      - name: c
        image: busybox
"#;

const NODE: &str = r#"
apiVersion: v1
kind: Node
metadata:
  name: rkubectl-node
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_and_mutating_verbs() {
    let k = kube().await;
    // Bad YAML and an invalid object: exit 1, the server's Status with the field.
    let err = k.fails(&["apply", "-f", "-"], Some("kind: [x")).await;
    assert!(err.contains("error parsing STDIN"), "{err}");
    let err = k.fails(&["create", "-f", "-"], Some(BAD_REPLICAS)).await;
    assert!(
        err.contains("The Deployment \"bad\" is invalid") && err.contains("spec.replicas"),
        "{err}"
    );
    let unknown = BAD_REPLICAS.replace("replicas: -1", "replicas: 1\n  colour: red");
    let err = k.fails(&["apply", "-f", "-"], Some(&unknown)).await;
    assert!(err.contains("colour"), "{err}");

    // create, then AlreadyExists.
    let good = BAD_REPLICAS.replace("replicas: -1", "replicas: 1");
    let out = k.stdin_ok(&["create", "-f", "-"], &good).await;
    assert!(out.contains("deployment.apps/bad created"), "{out}");
    let err = k.fails(&["create", "-f", "-"], Some(&good)).await;
    assert!(
        err.contains("Error from server (AlreadyExists)") && err.contains("already exists"),
        "{err}"
    );

    // scale, set image, label, annotate.
    assert_eq!(
        k.ok(&["scale", "--replicas=4", "deploy/bad"]).await,
        "deployment.apps/bad scaled\n"
    );
    assert_eq!(
        k.ok(&["set", "image", "deployment", "bad", "c=busybox:1.37"])
            .await,
        "deployment.apps/bad image updated\n"
    );
    let err = k.fails(&["set", "image", "deploy/bad", "zz=x"], None).await;
    assert!(
        err.contains("unable to find container named \"zz\""),
        "{err}"
    );
    assert_eq!(
        k.ok(&["label", "deploy", "bad", "tier=web"]).await,
        "deployment.apps/bad labeled\n"
    );
    let err = k.fails(&["label", "deploy", "bad", "tier=db"], None).await;
    assert!(err.contains("--overwrite is false"), "{err}");
    k.ok(&["label", "deploy", "bad", "tier=db", "--overwrite"])
        .await;
    k.ok(&["annotate", "deploy/bad", "note=hi", "other=x"])
        .await;
    k.ok(&["annotate", "deploy/bad", "other-"]).await;
    let d = k.json(&["get", "deploy", "bad"]).await;
    assert_eq!(d["spec"]["replicas"], 4);
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"],
        "busybox:1.37"
    );
    assert_eq!(d["metadata"]["labels"]["tier"], "db");
    assert_eq!(d["metadata"]["annotations"]["note"], "hi");
    assert!(d["metadata"]["annotations"].get("other").is_none(), "{d}");

    // cordon / uncordon.
    k.stdin_ok(&["create", "-f", "-"], NODE).await;
    assert_eq!(
        k.ok(&["cordon", "rkubectl-node"]).await,
        "node/rkubectl-node cordoned\n"
    );
    assert_eq!(
        k.ok(&["cordon", "rkubectl-node"]).await,
        "node/rkubectl-node already cordoned\n"
    );
    assert_eq!(
        k.json(&["get", "node", "rkubectl-node"]).await["spec"]["unschedulable"],
        true
    );
    assert_eq!(
        k.ok(&["uncordon", "no/rkubectl-node"]).await,
        "node/rkubectl-node uncordoned\n"
    );
    assert!(k.json(&["get", "node", "rkubectl-node"]).await["spec"]
        .get("unschedulable")
        .is_none_or(|v| v == false));

    // delete: by name, -f, -l, --all; not found is an error.
    let out = k.ok(&["delete", "deploy", "bad"]).await;
    assert_eq!(out, "deployment.apps \"bad\" deleted\n");
    let err = k.fails(&["get", "deploy", "bad"], None).await;
    assert!(err.contains("NotFound"), "{err}");
    let err = k.fails(&["delete", "deploy", "bad"], None).await;
    assert!(
        err.contains("Error from server (NotFound): deployments.apps \"bad\" not found"),
        "{err}"
    );
    k.ok(&["delete", "deploy", "bad", "--ignore-not-found"])
        .await;
    k.ok(&["apply", "-f", &hello_dir()]).await;
    let out = k.ok(&["delete", "-f", &hello_dir()]).await;
    assert!(
        out.contains("deployment.apps \"helloworld\" deleted")
            && out.contains("service \"helloworld\" deleted"),
        "{out}"
    );
    k.stdin_ok(&["create", "-f", "-"], NAMESPACE_AND_CONFIGMAPS)
        .await;
    for name in ["x1", "x2"] {
        let cm = format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  labels: {{team: x}}\n"
        );
        k.stdin_ok(&["create", "-f", "-"], &cm).await;
    }
    let out = k.ok(&["delete", "cm", "-l", "team=x"]).await;
    assert!(
        out.contains("configmap \"x1\" deleted") && out.contains("configmap \"x2\" deleted"),
        "{out}"
    );
    assert!(k
        .ok(&["get", "cm", "cm-b", "-o", "name"])
        .await
        .contains("cm-b"));
    let out = k.ok(&["delete", "cm", "--all"]).await;
    assert!(out.contains("configmap \"cm-b\" deleted"), "{out}");
    assert_eq!(
        k.ok(&["get", "cm", "-n", "other", "-o", "name"]).await,
        "configmap/cm-a\n",
        "--all stays in its namespace"
    );
    let err = k.fails(&["delete", "cm"], None).await;
    assert!(err.contains("no name was specified"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_watch_prints_changes() {
    let k = kube().await;
    k.stdin_ok(&["create", "-f", "-"], NAMESPACE_AND_CONFIGMAPS)
        .await;
    let mut child = k
        .command(&["get", "configmaps", "-w", "--show-labels"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn rkubectl get -w");
    let out = child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines: Vec<String> = Vec::new();
    let mut wait_for = |needle: &str| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !lines.iter().any(|l| l.contains(needle)) && Instant::now() < deadline {
            if let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
                lines.push(l);
            }
        }
        let found = lines.iter().any(|l| l.contains(needle));
        (found, lines.join("\n"))
    };
    let (found, seen) = wait_for("team=b");
    assert!(found, "initial table lacks cm-b:\n{seen}");
    k.ok(&["label", "cm", "cm-b", "seen=yes"]).await;
    let (found, seen) = wait_for("seen=yes");
    let created = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cm-new\n";
    k.stdin_ok(&["create", "-f", "-"], created).await;
    let (found_new, seen_new) = wait_for("cm-new");
    let _ = child.kill();
    let _ = child.wait();
    assert!(found, "the label change was not printed:\n{seen}");
    assert!(found_new, "the new object was not printed:\n{seen_new}");
    assert!(
        !seen_new.contains("cm-a"),
        "another namespace leaked in:\n{seen_new}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contexts_from_merged_kubeconfigs() {
    let k = kube().await;
    k.stdin_ok(&["create", "-f", "-"], NAMESPACE_AND_CONFIGMAPS)
        .await;
    // A second file adds a context on the same cluster and user, in namespace other.
    let context = rkube_ctl::pki::CONTEXT_NAME.to_string();
    let second = k.home.path().join("second.kubeconfig");
    std::fs::write(
        &second,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: ''\ncontexts:\n- name: in-other\n  context: {{cluster: {context}, user: {context}, namespace: other}}\n"
        ),
    )
    .expect("write second kubeconfig");
    let merged = format!("{}:{}", second.display(), k.api.kubeconfig_path().display());
    let run = |args: &[&str]| {
        let out = tokio::task::block_in_place(|| {
            k.command(args)
                .env("KUBECONFIG", &merged)
                .output()
                .expect("run rkubectl")
        });
        assert!(out.status.success(), "rkubectl {args:?}:\n{}", text(&out));
        stdout(&out)
    };
    let contexts = run(&["config", "get-contexts"]);
    assert!(
        contexts.contains("in-other") && contexts.contains(&context),
        "{contexts}"
    );
    assert_eq!(run(&["config", "current-context"]), format!("{context}\n"));
    assert_eq!(run(&["get", "cm", "-o", "name"]), "configmap/cm-b\n");
    assert_eq!(
        run(&["--context", "in-other", "get", "cm", "-o", "name"]),
        "configmap/cm-a\n"
    );
    let view = run(&["config", "view"]);
    assert!(
        view.contains("REDACTED") || view.contains("DATA+OMITTED"),
        "{view}"
    );
    assert!(
        !view.contains(k.api.admin_token()),
        "config view leaks the token"
    );
    assert_eq!(
        run(&["config", "use-context", "in-other"]),
        "Switched to context \"in-other\".\n"
    );
    assert_eq!(run(&["config", "current-context"]), "in-other\n");
    assert_eq!(run(&["get", "cm", "-o", "name"]), "configmap/cm-a\n");
    // The change went to the file that set the current context (the admin one).
    let admin_after = std::fs::read_to_string(k.api.kubeconfig_path()).expect("read");
    assert!(
        admin_after.contains("current-context: in-other"),
        "{admin_after}"
    );
}

/// A control plane that rolls deployments out: the controller manager and simulated
/// nodes that run (and make Ready) the pods bound to them; the simulation binds pods
/// itself, or (`real_scheduler`) the real scheduler does, against simulated nodes that
/// report no capacity, so every pod stays Pending with the scheduler's reason.
struct Rollouts {
    k: Kube,
    _sim: rkube_controller_manager::simulation::SimulatedNodes,
    shutdown: tokio_util::sync::CancellationToken,
}

impl Drop for Rollouts {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn rollouts(real_scheduler: bool) -> Rollouts {
    use rkube_ctl::pki::Component;
    let k = kube().await;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let cm =
        rkube_controller_manager::Config::new(k.api.client_config(Component::ControllerManager));
    tokio::spawn(rkube_controller_manager::run(cm, shutdown.clone()));
    let client = rkube_client::Client::connect(k.api.client_config(Component::Admin))
        .await
        .expect("connect");
    let sim =
        rkube_controller_manager::simulation::SimulatedNodes::start(client, 1, shutdown.clone())
            .await
            .expect("simulated nodes");
    if real_scheduler {
        let scheduler = rkube_scheduler::Config {
            client: k.api.client_config(Component::Scheduler),
            scheduler: rkube_scheduler::SchedulerConfig::default(),
            identity: format!("rkubectl-test-{}", std::process::id()),
        };
        tokio::spawn(rkube_scheduler::run(scheduler, shutdown.clone()));
    }
    sim.set_binding(!real_scheduler);
    Rollouts {
        k,
        _sim: sim,
        shutdown,
    }
}

fn web(image: &str, cpu: &str) -> String {
    format!(
        r#"{{"apiVersion":"apps/v1","kind":"Deployment","metadata":{{"name":"web"}},
 "spec":{{"replicas":2,"progressDeadlineSeconds":600,"selector":{{"matchLabels":{{"app":"web"}}}},
  "template":{{"metadata":{{"labels":{{"app":"web"}}}},
   "spec":{{"containers":[{{"name":"web","image":"{image}","resources":{{"requests":{{"cpu":"{cpu}"}}}}}}]}}}}}}}}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rollout_status_history_undo_pause_restart() {
    let r = rollouts(false).await;
    let k = &r.k;
    k.stdin_ok(&["apply", "-f", "-"], &web("web:1", "10m"))
        .await;
    let out = k
        .ok(&["rollout", "status", "deploy/web", "--timeout-seconds", "60"])
        .await;
    assert!(
        out.contains("deployment \"web\" successfully rolled out"),
        "{out}"
    );
    k.ok(&["set", "image", "deploy/web", "web=web:2"]).await;
    let out = k
        .ok(&[
            "rollout",
            "status",
            "deployment",
            "web",
            "--timeout-seconds",
            "60",
        ])
        .await;
    assert!(out.contains("successfully rolled out"), "{out}");
    let history = k.ok(&["rollout", "history", "deploy/web"]).await;
    let revisions: Vec<&str> = history
        .lines()
        .skip(2)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(revisions, vec!["1", "2"], "{history}");

    // undo goes back to web:1 (revision 3), --to-revision=2 forward to web:2.
    assert_eq!(
        k.ok(&["rollout", "undo", "deploy/web"]).await,
        "deployment.apps/web rolled back\n"
    );
    let image = "jsonpath={.spec.template.spec.containers[0].image}";
    assert_eq!(k.ok(&["get", "deploy", "web", "-o", image]).await, "web:1");
    k.ok(&["rollout", "status", "deploy/web", "--timeout-seconds", "60"])
        .await;
    k.ok(&["rollout", "undo", "deploy/web", "--to-revision", "2"])
        .await;
    assert_eq!(k.ok(&["get", "deploy", "web", "-o", image]).await, "web:2");
    let err = k
        .fails(
            &["rollout", "undo", "deploy/web", "--to-revision", "99"],
            None,
        )
        .await;
    assert!(
        err.contains("unable to find specified revision 99 in history"),
        "{err}"
    );

    // pause / resume / restart.
    assert_eq!(
        k.ok(&["rollout", "pause", "deploy/web"]).await,
        "deployment.apps/web paused\n"
    );
    let err = k.fails(&["rollout", "pause", "deploy/web"], None).await;
    assert!(err.contains("already paused"), "{err}");
    assert_eq!(
        k.json(&["get", "deploy", "web"]).await["spec"]["paused"],
        true
    );
    assert_eq!(
        k.ok(&["rollout", "resume", "deploy/web"]).await,
        "deployment.apps/web resumed\n"
    );
    assert_eq!(
        k.ok(&["rollout", "restart", "deploy/web"]).await,
        "deployment.apps/web restarted\n"
    );
    let d = k.json(&["get", "deploy", "web"]).await;
    assert!(
        d["spec"]["template"]["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"]
            .is_string(),
        "{d}"
    );
    k.ok(&["rollout", "status", "deploy/web", "--timeout-seconds", "60"])
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rollout_status_says_why_it_is_stuck() {
    let r = rollouts(true).await;
    let k = &r.k;
    // Unschedulable: the scheduler's reason from the PodScheduled condition.
    k.stdin_ok(&["apply", "-f", "-"], &web("web:1", "500"))
        .await;
    let out = k
        .run(&["rollout", "status", "deploy/web", "--timeout-seconds", "10"])
        .await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let t = text(&out);
    assert!(
        t.contains("is Pending: ") && t.contains("0/1 nodes are available"),
        "{t}"
    );
    assert!(t.contains("timed out"), "{t}");

    // No progress: the Progressing condition gives up.
    let stuck = web("web:never-ready", "10m").replace(
        "\"progressDeadlineSeconds\":600",
        "\"progressDeadlineSeconds\":3",
    );
    k.stdin_ok(&["apply", "-f", "-"], &stuck).await;
    let out = k
        .run(&["rollout", "status", "deploy/web", "--timeout-seconds", "60"])
        .await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let t = text(&out);
    assert!(
        t.contains("error: deployment \"web\" exceeded its progress deadline"),
        "{t}"
    );
}

fn bare_pod(name: &str, node: &str, owner: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n{owner}spec:\n  nodeName: {node}\n  containers:\n  - name: c\n    image: busybox\n    resources:\n      requests: {{cpu: 100m}}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_and_edit() {
    let k = kube().await;
    k.ok(&["apply", "-f", &hello_dir()]).await;
    let uid = k
        .ok(&[
            "get",
            "deploy",
            "helloworld",
            "-o",
            "jsonpath={.metadata.uid}",
        ])
        .await;
    let event = format!(
        "apiVersion: v1\nkind: Event\nmetadata:\n  name: helloworld.1\ninvolvedObject:\n  apiVersion: apps/v1\n  kind: Deployment\n  name: helloworld\n  namespace: default\n  uid: {uid}\nreason: ScalingReplicaSet\nmessage: Scaled up replica set helloworld-abc to 3\ntype: Normal\nsource:\n  component: deployment-controller\n"
    );
    k.stdin_ok(&["create", "-f", "-"], &event).await;

    let d = k.ok(&["describe", "deploy", "helloworld"]).await;
    for want in [
        "Name:               helloworld",
        "Namespace:          default",
        "Labels:             app=helloworld",
        "Replicas:           2 desired | 0 updated | 0 total | 0 available | 0 unavailable",
        "StrategyType:       RollingUpdate",
        "Pod Template:",
        "Events:",
        "ScalingReplicaSet",
        "deployment-controller",
        "Scaled up replica set helloworld-abc to 3",
    ] {
        assert!(d.contains(want), "describe lacks {want:?}:\n{d}");
    }
    assert!(
        d.lines()
            .any(|l| l.trim_start().starts_with("Image:")
                && l.ends_with(" 10.250.0.1:5000/hello:1.0.0")),
        "{d}"
    );
    let svc = k.ok(&["describe", "svc/helloworld"]).await;
    assert!(
        svc.contains("Type:               NodePort") && svc.contains("30080/TCP"),
        "{svc}"
    );
    assert!(svc.contains("Events:              <none>"), "{svc}");

    // edit: the editor's change is written back; no change cancels.
    let out = k
        .command(&["edit", "deploy/helloworld"])
        .env("KUBE_EDITOR", "sed -i 's/replicas: 2/replicas: 5/'")
        .output()
        .expect("run edit");
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(stdout(&out), "deployment.apps/helloworld edited\n");
    assert_eq!(
        k.json(&["get", "deploy", "helloworld"]).await["spec"]["replicas"],
        5
    );
    let out = k
        .command(&["edit", "deploy", "helloworld"])
        .env("KUBE_EDITOR", "true")
        .output()
        .expect("run edit");
    assert_eq!(
        stdout(&out),
        "Edit cancelled, no changes made.\n",
        "{}",
        text(&out)
    );
    let out = k
        .command(&["edit", "deploy", "helloworld"])
        .env("KUBE_EDITOR", "sed -i 's/replicas: 5/replicas: -2/'")
        .output()
        .expect("run edit");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("is invalid"), "{}", text(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_evicts_through_the_subresource() {
    let k = kube().await;
    // drain: refuses unmanaged and DaemonSet pods, then with flags evicts the bare
    // pod through pods/eviction, leaves the DaemonSet's, and cordons the node.
    let node = format!("drain-{}", std::process::id());
    k.stdin_ok(
        &["create", "-f", "-"],
        &NODE.replace("rkubectl-node", &node),
    )
    .await;
    k.stdin_ok(&["create", "-f", "-"], &bare_pod("bare", &node, ""))
        .await;
    let ds_owner = "  ownerReferences:\n  - {apiVersion: apps/v1, kind: DaemonSet, name: ds, uid: 00000000-0000-0000-0000-000000000001, controller: true}\n";
    k.stdin_ok(&["create", "-f", "-"], &bare_pod("ds-pod", &node, ds_owner))
        .await;
    let pod = k.ok(&["describe", "pod", "bare"]).await;
    assert!(
        pod.contains(&format!("Node:               {node}")) && pod.contains("Containers:"),
        "{pod}"
    );
    let nd = k.ok(&["describe", "node", &node]).await;
    assert!(nd.contains("Non-terminated Pods:  (2 in total)"), "{nd}");

    let err = k.fails(&["drain", &node], None).await;
    assert!(
        err.contains("cannot delete DaemonSet-managed Pods (use --ignore-daemonsets to ignore): default/ds-pod")
            && err.contains("cannot delete Pods that declare no controller (use --force to override): default/bare"),
        "{err}"
    );
    // Every request rkubectl sends, from its debug log.
    let drain = |args: &[&str]| {
        let out = tokio::task::block_in_place(|| {
            k.command(args)
                .env("RKUBECTL_LOG", "rkube_ctl::rkubectl::client=debug")
                .env("NO_COLOR", "1")
                .output()
                .expect("run drain")
        });
        let requests = |method: &str, path: &str| {
            let (method, url) = (format!("method={method} "), format!("{path} "));
            stderr(&out)
                .lines()
                .filter(|l| l.contains(&method) && l.contains(&url))
                .count()
        };
        (
            out.status.code(),
            text(&out),
            requests("POST", "/api/v1/namespaces/default/pods/bare/eviction"),
            requests("DELETE", "/api/v1/namespaces/default/pods/bare"),
        )
    };
    let (code, out, evictions, deletes) = drain(&[
        "drain",
        &node,
        "--ignore-daemonsets",
        "--force",
        "--grace-period",
        "0",
        "--timeout=30s",
    ]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains(&format!("node/{node} already cordoned"))
            && out.contains("evicting pod default/bare")
            && out.contains("pod/bare evicted")
            && out.contains(&format!("node/{node} drained")),
        "{out}"
    );
    assert_eq!(
        (evictions, deletes),
        (1, 0),
        "evicted through the subresource, never deleted:\n{out}"
    );
    assert_eq!(k.ok(&["get", "pods", "-o", "name"]).await, "pod/ds-pod\n");
    assert_eq!(
        k.json(&["get", "node", &node]).await["spec"]["unschedulable"],
        true
    );

    // The pod's own grace period: evicted (marked for deletion, DisruptionTarget), and
    // with no node agent to confirm, drain waits until its timeout, as kubectl does.
    let slow_node = format!("drain-slow-{}", std::process::id());
    k.stdin_ok(
        &["create", "-f", "-"],
        &NODE.replace("rkubectl-node", &slow_node),
    )
    .await;
    let rs_owner = "  ownerReferences:\n  - {apiVersion: apps/v1, kind: ReplicaSet, name: rs, uid: 00000000-0000-0000-0000-000000000002, controller: true}\n";
    k.stdin_ok(
        &["create", "-f", "-"],
        &bare_pod("slow", &slow_node, rs_owner),
    )
    .await;
    let (code, out, _, _) = drain(&["drain", &slow_node, "--timeout-seconds", "3"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("evicting pod default/slow")
            && out.contains("error when waiting for pod \"slow\" in namespace \"default\" to terminate: context deadline exceeded"),
        "{out}"
    );
    let slow = k.json(&["get", "pod", "slow"]).await;
    assert!(slow["metadata"]["deletionTimestamp"].is_string(), "{slow}");
    assert!(
        slow["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "DisruptionTarget" && c["reason"] == "EvictionByEvictionAPI"),
        "{slow}"
    );
}

/// A fake node agent registered as a node on 127.0.0.1, with Running pods `web`
/// (container `main`, owned by nothing but labelled `app=web`) and `two` (`a`, `b`),
/// and a Deployment `web` selecting `app=web` (no controller runs: the pod is made by
/// hand).
async fn streams() -> (Kube, rkube_tests::fake_agent::FakeAgent) {
    let k = kube().await;
    let agent = rkube_tests::fake_agent::FakeAgent::start(k.api.ca_pem())
        .await
        .expect("start fake agent");
    let node = format!("fake-node-{}", std::process::id());
    let http = k.api.http();
    let send = |method: reqwest::Method, path: String, ct: &'static str, body: Value| {
        let req = http
            .request(method, format!("{}{path}", k.api.url()))
            .header("content-type", ct)
            .body(body.to_string());
        async move {
            let resp = req.send().await.expect("request");
            assert!(resp.status().is_success(), "{path}: {}", resp.status());
        }
    };
    send(
        reqwest::Method::POST,
        "/api/v1/nodes".into(),
        "application/json",
        serde_json::json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": node}}),
    )
    .await;
    send(
        reqwest::Method::PATCH,
        format!("/api/v1/nodes/{node}/status"),
        "application/merge-patch+json",
        serde_json::json!({"status": {
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": agent.address().port()}},
        }}),
    )
    .await;
    for (name, containers) in [("web", vec!["main"]), ("two", vec!["a", "b"])] {
        let containers: Vec<Value> = containers
            .iter()
            .map(|n| serde_json::json!({"name": n, "image": "busybox"}))
            .collect();
        send(
            reqwest::Method::POST,
            "/api/v1/namespaces/default/pods".into(),
            "application/json",
            serde_json::json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "labels": {"app": name}},
                "spec": {"nodeName": node, "containers": containers}}),
        )
        .await;
        send(
            reqwest::Method::PATCH,
            format!("/api/v1/namespaces/default/pods/{name}/status"),
            "application/merge-patch+json",
            serde_json::json!({"status": {"phase": "Running"}}),
        )
        .await;
    }
    k.stdin_ok(&["create", "-f", "-"], &web("web:1", "10m"))
        .await;
    (k, agent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_and_exec_through_the_node_agent() {
    let (k, agent) = streams().await;
    assert_eq!(
        k.ok(&["logs", "web"]).await,
        "main 1\nmain 2\nmain 3\nmain 4\nmain 5\n"
    );
    assert_eq!(
        k.ok(&["logs", "deploy/web", "--tail", "2", "--timestamps"])
            .await,
        "main 4\nmain 5\n"
    );
    assert_eq!(
        k.ok(&["logs", "two", "-c", "b"]).await,
        "b 1\nb 2\nb 3\nb 4\nb 5\n"
    );
    let out = k.run(&["logs", "two"]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        stderr(&out).contains("Defaulted container \"a\" out of: a, b"),
        "{}",
        text(&out)
    );
    let err = k.fails(&["logs", "two", "-c", "zz"], None).await;
    assert!(
        err.contains("container zz is not valid for pod two"),
        "{err}"
    );
    let logs = agent.recorded().logs;
    let deploy = &logs[1];
    assert_eq!(
        (deploy.tail_lines, deploy.timestamps, deploy.follow),
        (Some(2), true, false)
    );
    assert_eq!(
        deploy.container.as_ref().map(|c| c.pod.as_str()),
        Some("web")
    );

    // -f prints lines as they arrive and ends when the stream does.
    let mut follow = k
        .command(&["logs", "-f", "web"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn logs -f");
    let out = follow.stdout.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while lines.len() < 5 && Instant::now() < deadline {
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
            lines.push(l);
        }
    }
    assert_eq!(lines.len(), 5, "{lines:?}");
    agent.release_follow();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !lines.iter().any(|l| l == "main after release") && Instant::now() < deadline {
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
            lines.push(l);
        }
    }
    let status = tokio::task::block_in_place(|| follow.wait()).expect("wait logs -f");
    assert!(status.success(), "{lines:?}");
    assert!(lines.iter().any(|l| l == "main after release"), "{lines:?}");

    // exec: output, stderr, exit code from the channel-3 Status.
    let out = k
        .run(&[
            "exec",
            "web",
            "--",
            "sh",
            "-c",
            "echo out; echo err >&2; exit 3",
        ])
        .await;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert_eq!(stdout(&out), "out\n");
    assert!(stderr(&out).contains("err\n"), "{}", text(&out));
    assert!(
        stderr(&out).contains("command terminated with exit code 3"),
        "{}",
        text(&out)
    );
    assert_eq!(
        k.ok(&["exec", "two", "-c", "b", "--", "echo", "hi there"])
            .await,
        "hi there\n"
    );
    // -i: stdin reaches the command and its end closes the command's stdin.
    let out = k
        .stdin_ok(
            &[
                "exec",
                "-i",
                "deploy/web",
                "--",
                "sh",
                "-c",
                "cat; echo done",
            ],
            "hello\nworld\n",
        )
        .await;
    assert_eq!(out, "hello\nworld\ndone\n");
    let recorded = agent.recorded();
    assert!(recorded.stdin_closes >= 1, "no [255, 0] arrived");
    let starts = &recorded.execs;
    assert_eq!(
        starts[0].command,
        ["sh", "-c", "echo out; echo err >&2; exit 3"]
    );
    assert!(starts[0].stdout && starts[0].stderr && !starts[0].stdin && !starts[0].tty);
    assert!(starts[2].stdin);

    // -it on a real (pseudo-)terminal: raw mode, the size as a resize.
    let out = tokio::task::block_in_place(|| {
        rkube_tests::terminal::run_in_terminal(
            &k.command(&["exec", "-it", "web", "--", "sh"]),
            "fake tty ready",
            &["hello", "exit"],
            Duration::from_secs(20),
        )
    });
    let screen = text(&out);
    assert!(out.status.success(), "{screen}");
    assert!(
        screen.contains("resize 100x30") && screen.contains("hello"),
        "{screen}"
    );
    let recorded = agent.recorded();
    let tty = recorded.execs.last().expect("the -it exec");
    assert!(tty.tty && tty.stdin && tty.stdout && !tty.stderr, "{tty:?}");

    // A command that cannot start is a failure, not rc 0.
    let err = k
        .fails(&["exec", "web", "--", "/nonexistent/binary"], None)
        .await;
    assert!(err.contains("cannot run"), "{err}");
}

/// A Deployment with the given labels, env vars of the `app` container and, when
/// `sidecar`, a second container. The command holds `>` and `&&`, which Go's JSON
/// escapes in the last-applied annotation.
fn app(name: &str, labels: &[&str], env: &[&str], sidecar: bool) -> String {
    let labels: String = labels
        .iter()
        .map(|l| format!("\n    {l}: \"yes\""))
        .collect();
    let env: String = env
        .iter()
        .map(|e| format!("\n        - name: {e}\n          value: \"v-{e}\""))
        .collect();
    let sidecar = if sidecar {
        "\n      - name: sidecar\n        image: busybox:1.36"
    } else {
        ""
    };
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
  labels:
    app: {name}{labels}
spec:
  selector:
    matchLabels:
      app: {name}
  template:
    metadata:
      labels:
        app: {name}
    spec:
      containers:
      - name: app
        image: busybox:1.36
        command: ["sh", "-c", "echo ok > /tmp/ok && sleep 3600"]
        ports:
        - containerPort: 8080
        env:{env}{sidecar}
"#
    )
}

fn names(list: &Value, field: &str) -> Vec<String> {
    list.as_array()
        .map(|l| {
            l.iter()
                .map(|e| e[field].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn label_keys(object: &Value) -> Vec<String> {
    let mut keys: Vec<String> = object["metadata"]["labels"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    keys.sort();
    keys
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_removes_what_the_manifest_no_longer_has() {
    let k = kube().await;
    let v1 = app("web", &["tier", "team"], &["A", "B"], true);
    let out = k.stdin_ok(&["apply", "-f", "-"], &v1).await;
    assert_eq!(out, "deployment.apps/web created\n");
    let d = k.json(&["get", "deploy", "web"]).await;
    let annotation = d["metadata"]["annotations"]
        ["kubectl.kubernetes.io/last-applied-configuration"]
        .as_str()
        .expect("apply stores the last-applied configuration")
        .to_owned();
    assert!(annotation.ends_with("}\n"), "{annotation}");
    assert!(
        annotation.contains(r#""metadata":{"annotations":{},"labels""#)
            && annotation.contains(r#""namespace":"default""#)
            && annotation.contains(r#"echo ok \u003e /tmp/ok \u0026\u0026 sleep 3600"#),
        "{annotation}"
    );
    assert_eq!(
        k.stdin_ok(&["apply", "-f", "-"], &v1).await,
        "deployment.apps/web unchanged\n"
    );

    // A field the manifest does not set, changed by someone else, is kept.
    k.ok(&["scale", "deploy", "web", "--replicas", "3"]).await;
    assert_eq!(
        k.stdin_ok(&["apply", "-f", "-"], &v1).await,
        "deployment.apps/web unchanged\n"
    );
    // A label someone else added is kept too.
    k.ok(&["label", "deploy", "web", "owner=ops"]).await;

    // One label, one env var and the sidecar removed from the manifest.
    let v2 = app("web", &["tier"], &["A"], false);
    assert_eq!(
        k.stdin_ok(&["apply", "-f", "-"], &v2).await,
        "deployment.apps/web configured\n"
    );
    let d = k.json(&["get", "deploy", "web"]).await;
    assert_eq!(label_keys(&d), ["app", "owner", "tier"], "{d}");
    let spec = &d["spec"]["template"]["spec"];
    assert_eq!(names(&spec["containers"], "name"), ["app"], "{d}");
    assert_eq!(names(&spec["containers"][0]["env"], "name"), ["A"], "{d}");
    assert_eq!(spec["containers"][0]["env"][0]["value"], "v-A", "{d}");
    assert_eq!(
        spec["containers"][0]["ports"][0]["containerPort"], 8080,
        "{d}"
    );
    assert_eq!(d["spec"]["replicas"], 3, "{d}");
    assert_eq!(
        k.stdin_ok(&["apply", "-f", "-"], &v2).await,
        "deployment.apps/web unchanged\n"
    );

    // Adding back and reordering: the manifest's order wins.
    let v3 = app("web", &["tier"], &["C", "A"], true);
    assert_eq!(
        k.stdin_ok(&["apply", "-f", "-"], &v3).await,
        "deployment.apps/web configured\n"
    );
    let d = k.json(&["get", "deploy", "web"]).await;
    let spec = &d["spec"]["template"]["spec"];
    assert_eq!(
        names(&spec["containers"], "name"),
        ["app", "sidecar"],
        "{d}"
    );
    assert_eq!(
        names(&spec["containers"][0]["env"], "name"),
        ["C", "A"],
        "{d}"
    );

    // A field the manifest stops setting is deleted, even when someone changed it.
    let with_replicas = v3.replace("spec:\n  selector:", "spec:\n  replicas: 2\n  selector:");
    k.stdin_ok(&["apply", "-f", "-"], &with_replicas).await;
    assert_eq!(
        k.json(&["get", "deploy", "web"]).await["spec"]["replicas"],
        2
    );
    k.ok(&["scale", "deploy", "web", "--replicas", "4"]).await;
    assert_eq!(
        k.stdin_ok(&["apply", "-f", "-"], &v3).await,
        "deployment.apps/web configured\n"
    );
    // Deleted from the object, the server defaults it again.
    assert_eq!(
        k.json(&["get", "deploy", "web"]).await["spec"]["replicas"],
        1
    );

    // An object created without apply is patched (nothing is deleted) and annotated.
    let plain = app("plain", &["tier", "team"], &["A"], false);
    k.stdin_ok(&["create", "-f", "-"], &plain).await;
    let out = k
        .run_with(
            &["apply", "-f", "-"],
            Some(&app("plain", &["tier"], &["A"], false)),
        )
        .await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(stdout(&out), "deployment.apps/plain configured\n");
    assert!(
        stderr(&out).contains("Warning: deployments.apps/plain has no kubectl.kubernetes.io/last-applied-configuration annotation"),
        "{}",
        text(&out)
    );
    let d = k.json(&["get", "deploy", "plain"]).await;
    assert_eq!(label_keys(&d), ["app", "team", "tier"], "{d}");
    assert!(
        d["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]
            .is_string(),
        "{d}"
    );
    // From now on, removals are seen.
    let out = k
        .stdin_ok(&["apply", "-f", "-"], &app("plain", &[], &["A"], false))
        .await;
    assert_eq!(out, "deployment.apps/plain configured\n");
    assert_eq!(
        label_keys(&k.json(&["get", "deploy", "plain"]).await),
        ["app", "team"]
    );
}

impl Kube {
    /// Runs /usr/bin/kubectl with `manifest` on stdin and insists that it succeeded.
    async fn kubectl_stdin_ok(&self, args: &[&str], manifest: &str) -> String {
        let out = tokio::task::block_in_place(|| self.api.kubectl_stdin(args, manifest));
        assert!(
            out.status.success(),
            "kubectl {args:?} failed:\n{}",
            text(&out)
        );
        stdout(&out)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_takes_turns_with_kubectl_apply() {
    let k = kube().await;
    let annotation = |d: &Value| {
        d["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"].clone()
    };

    // rkubectl first, then kubectl: the same file is unchanged for kubectl (the same
    // annotation bytes), and kubectl's removals use rkubectl's annotation.
    let v1 = app("one", &["tier", "team"], &["A", "B"], true);
    let v2 = app("one", &["tier"], &["A"], false);
    assert_eq!(
        k.stdin_ok(&["apply", "-f", "-"], &v1).await,
        "deployment.apps/one created\n"
    );
    let ours = annotation(&k.json(&["get", "deploy", "one"]).await);
    assert_eq!(
        k.kubectl_stdin_ok(&["apply", "-f", "-"], &v1).await,
        "deployment.apps/one unchanged\n"
    );
    assert_eq!(
        k.kubectl_stdin_ok(&["apply", "-f", "-"], &v2).await,
        "deployment.apps/one configured\n"
    );
    let d = k.json(&["get", "deploy", "one"]).await;
    assert_eq!(label_keys(&d), ["app", "tier"], "{d}");
    let spec = &d["spec"]["template"]["spec"];
    assert_eq!(names(&spec["containers"], "name"), ["app"], "{d}");
    assert_eq!(names(&spec["containers"][0]["env"], "name"), ["A"], "{d}");
    assert_eq!(
        k.stdin_ok(&["apply", "-f", "-"], &v2).await,
        "deployment.apps/one unchanged\n"
    );
    assert_eq!(
        k.stdin_ok(&["apply", "-f", "-"], &v1).await,
        "deployment.apps/one configured\n"
    );
    let d = k.json(&["get", "deploy", "one"]).await;
    assert_eq!(annotation(&d), ours, "{d}");
    assert_eq!(label_keys(&d), ["app", "team", "tier"], "{d}");

    // kubectl first, then rkubectl.
    let w1 = app("two", &["tier", "team"], &["A", "B"], true);
    let w2 = app("two", &["team"], &["B"], false);
    assert_eq!(
        k.kubectl_stdin_ok(&["apply", "-f", "-"], &w1).await,
        "deployment.apps/two created\n"
    );
    let theirs = annotation(&k.json(&["get", "deploy", "two"]).await);
    assert_eq!(
        k.stdin_ok(&["apply", "-f", "-"], &w1).await,
        "deployment.apps/two unchanged\n"
    );
    assert_eq!(
        k.stdin_ok(&["apply", "-f", "-"], &w2).await,
        "deployment.apps/two configured\n"
    );
    let d = k.json(&["get", "deploy", "two"]).await;
    assert_eq!(label_keys(&d), ["app", "team"], "{d}");
    let spec = &d["spec"]["template"]["spec"];
    assert_eq!(names(&spec["containers"], "name"), ["app"], "{d}");
    assert_eq!(names(&spec["containers"][0]["env"], "name"), ["B"], "{d}");
    assert_eq!(
        k.kubectl_stdin_ok(&["apply", "-f", "-"], &w2).await,
        "deployment.apps/two unchanged\n"
    );
    assert_eq!(
        k.kubectl_stdin_ok(&["apply", "-f", "-"], &w1).await,
        "deployment.apps/two configured\n"
    );
    assert_eq!(annotation(&k.json(&["get", "deploy", "two"]).await), theirs);
}
