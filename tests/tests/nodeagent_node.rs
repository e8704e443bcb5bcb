//! The node agent against a real apiserver on a real etcd: it registers a Ready Node
//! (also as `kubectl get nodes` shows it), renews its Lease, and runs a bound pod through
//! the recording fake runtime: status Running, then graceful deletion removes the pod.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Container, Node, Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use rkube_client::{Api, Client, DeleteParams};
use rkube_ctl::pki::Component;
use rkube_nodeagent::runtime::fake::{Call, FakeRuntime};
use rkube_nodeagent::runtime::StopSignal;
use rkube_tests::{eventually, Etcd, TestApiserver};
use tokio_util::sync::CancellationToken;

/// A unique node name per test run, so parallel runs never share objects.
fn node_name(test: &str) -> String {
    format!("na-{test}-{}", std::process::id())
}

struct Agent {
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    _root: tempfile::TempDir,
}

impl Agent {
    async fn start(api: &TestApiserver, node: &str, runtime: Arc<FakeRuntime>) -> Agent {
        let root = tempfile::tempdir().expect("state dir");
        let mut config = rkube_nodeagent::Config::new(
            api.client_config(Component::NodeAgent),
            node,
            root.path().to_path_buf(),
        );
        config.lease_renew_interval = Duration::from_millis(500);
        config.node_status_interval = Duration::from_millis(500);
        config.pod_resync_interval = Duration::from_millis(100);
        config.node_ip = Some("127.0.0.1".parse().expect("ip"));
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(rkube_nodeagent::agent::run_with_runtime(
            config,
            runtime,
            shutdown.clone(),
        ));
        Agent {
            shutdown,
            task,
            _root: root,
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("agent stops within 10s")
            .expect("agent task joins")
            .expect("agent ran without error");
    }
}

fn ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_a_ready_node_and_renews_its_lease() {
    let etcd = Etcd::start().await.expect("etcd");
    let api = TestApiserver::start(&etcd).await.expect("apiserver");
    let admin = Client::connect(api.client_config(Component::Scheduler))
        .await
        .expect("connect");
    let name = node_name("ready");
    let agent = Agent::start(&api, &name, Arc::new(FakeRuntime::new())).await;

    let nodes: Api<Node> = Api::all(admin.clone());
    let node = eventually("a Ready node", Duration::from_secs(20), || async {
        nodes.get_opt(&name).await.ok().flatten().filter(ready)
    })
    .await;
    let labels = node.metadata.labels.clone().unwrap_or_default();
    assert_eq!(labels.get("kubernetes.io/hostname"), Some(&name));
    assert_eq!(
        labels.get("kubernetes.io/os").map(String::as_str),
        Some("linux")
    );
    assert!(labels.contains_key("kubernetes.io/arch"));
    let status = node.status.clone().expect("status");
    let capacity = status.capacity.clone().expect("capacity");
    for resource in ["cpu", "memory", "pods", "ephemeral-storage"] {
        assert!(capacity.contains_key(resource), "capacity has {resource}");
    }
    assert_eq!(capacity["pods"].0, "110");
    let info = status.node_info.clone().expect("nodeInfo");
    assert_eq!(info.kubelet_version, "v1.32.0-rkube");
    assert_eq!(info.container_runtime_version, "rkube://0.1.0");
    assert!(!info.kernel_version.is_empty());
    let addresses = status.addresses.clone().unwrap_or_default();
    assert!(addresses
        .iter()
        .any(|a| a.type_ == "InternalIP" && a.address == "127.0.0.1"));

    let out = api.kubectl(&["get", "nodes", "--no-headers"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "kubectl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name.as_str()))
        .unwrap_or_else(|| panic!("node in kubectl get nodes: {stdout}"));
    assert_eq!(line.split_whitespace().nth(1), Some("Ready"), "{line}");

    let leases: Api<Lease> = Api::namespaced(admin.clone(), "kube-node-lease");
    let renew_time = |lease: &Lease| lease.spec.as_ref().and_then(|s| s.renew_time.clone());
    let first = eventually("the node lease", Duration::from_secs(10), || async {
        leases.get_opt(&name).await.ok().flatten()
    })
    .await;
    let spec = first.spec.clone().expect("lease spec");
    assert_eq!(spec.holder_identity.as_deref(), Some(name.as_str()));
    assert_eq!(spec.lease_duration_seconds, Some(40));
    let first_renew = renew_time(&first).expect("renewTime");
    eventually("a renewed lease", Duration::from_secs(10), || async {
        let lease = leases.get_opt(&name).await.ok().flatten()?;
        renew_time(&lease).filter(|t| t.0 > first_renew.0)
    })
    .await;

    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_a_bound_pod_and_removes_it_after_deletion() {
    let etcd = Etcd::start().await.expect("etcd");
    let api = TestApiserver::start(&etcd).await.expect("apiserver");
    let admin = Client::connect(api.client_config(Component::Scheduler))
        .await
        .expect("connect");
    let name = node_name("pods");
    let runtime = Arc::new(FakeRuntime::new());
    let agent = Agent::start(&api, &name, runtime.clone()).await;

    let pods: Api<Pod> = Api::namespaced(admin.clone(), "default");
    let pod = Pod {
        metadata: ObjectMeta {
            name: Some("web".into()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            node_name: Some(name.clone()),
            containers: vec![Container {
                name: "app".into(),
                image: Some("registry.local/busybox:1".into()),
                ..Default::default()
            }],
            termination_grace_period_seconds: Some(5),
            ..Default::default()
        }),
        ..Default::default()
    };
    pods.create(&pod).await.expect("create pod");

    let running = eventually("the pod Running", Duration::from_secs(20), || async {
        let pod = pods.get_opt("web").await.ok().flatten()?;
        let status = pod.status.clone()?;
        (status.phase.as_deref() == Some("Running")).then_some(status)
    })
    .await;
    assert_eq!(running.host_ip.as_deref(), Some("127.0.0.1"));
    assert_eq!(running.qos_class.as_deref(), Some("BestEffort"));
    let container = &running
        .container_statuses
        .clone()
        .expect("containerStatuses")[0];
    assert!(container.ready);
    assert_eq!(container.image_id, "registry.local/busybox:1@sha256:fake");

    let out = api.kubectl(&["get", "pod", "web", "--no-headers"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("1/1") && stdout.contains("Running"),
        "{stdout}"
    );

    pods.delete("web", &DeleteParams::default())
        .await
        .expect("delete pod");
    eventually("the pod removed", Duration::from_secs(20), || async {
        matches!(pods.get_opt("web").await, Ok(None)).then_some(())
    })
    .await;
    let calls = runtime.calls();
    assert!(
        calls.contains(&Call::KillContainer("app".into(), StopSignal::Term)),
        "{calls:?}"
    );
    assert_eq!(calls.last(), Some(&Call::RemoveSandbox("web".into())));
    assert_eq!(runtime.container_count(), 0);

    agent.stop().await;
}
