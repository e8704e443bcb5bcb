//! rkube-scheduler on a real apiserver and etcd with simulated nodes (Node objects,
//! no agent): node affinity and selectors, taints, pod anti-affinity across hostnames
//! and zones, pod affinity, resource fit, Kubernetes' aggregated failure message, and
//! an unschedulable pod placed once a node that fits is added.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, Node, Pod};
use rkube_client::{Api, Client, ListParams};
use rkube_ctl::pki::Component;
use rkube_scheduler::config::SchedulerConfig;
use rkube_scheduler::{run_scheduler, Metrics};
use rkube_tests::{Etcd, TestApiserver};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

const ZONE: &str = "topology.kubernetes.io/zone";
const HOST: &str = "kubernetes.io/hostname";

async fn connect(api: &TestApiserver, who: Component) -> Client {
    Client::connect(api.client_config(who))
        .await
        .expect("connect over gRPC")
}

/// Creates a Node with `labels`, `cpu` cores and optional taints, and makes sure its
/// status (allocatable) is stored.
async fn add_node(nodes: &Api<Node>, name: &str, labels: Value, cpu: &str, taints: Value) {
    let mut labels = labels;
    labels[HOST] = json!(name);
    let node: Node = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels},
        "spec": {"taints": taints},
        "status": {"allocatable": {"cpu": cpu, "memory": "16Gi", "pods": "110"},
                   "capacity": {"cpu": cpu, "memory": "16Gi", "pods": "110"}}
    }))
    .expect("node");
    let created = nodes.create(&node).await.expect("create node");
    if created
        .status
        .as_ref()
        .and_then(|s| s.allocatable.as_ref())
        .is_none()
    {
        let mut with_status = created.clone();
        with_status.status = node.status.clone();
        nodes
            .replace_status(name, &with_status)
            .await
            .expect("set node status");
    }
}

fn pod(name: &str, labels: Value, spec: Value) -> Pod {
    let mut spec = spec;
    spec["containers"] = json!([{"name": "c", "image": "busybox:1.36",
        "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}]);
    if let Some(cpu) = spec.get("cpu").cloned() {
        spec["containers"][0]["resources"]["requests"]["cpu"] = cpu;
        spec.as_object_mut().expect("object").remove("cpu");
    }
    serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}, "spec": spec}))
        .expect("pod")
}

fn anti_affinity(app: &str, topology: &str) -> Value {
    json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {"matchLabels": {"app": app}}, "topologyKey": topology}]}})
}

/// Waits until the pod is bound; returns its node.
async fn bound_node(pods: &Api<Pod>, name: &str) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let pod = pods.get(name).await.expect("get pod");
        if let Some(node) = pod.spec.and_then(|s| s.node_name) {
            return node;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "pod {name} was not bound"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the pod has `PodScheduled=False`; returns the condition's message.
async fn unschedulable_message(pods: &Api<Pod>, name: &str) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let pod = pods.get(name).await.expect("get pod");
        assert!(
            pod.spec
                .as_ref()
                .and_then(|s| s.node_name.as_ref())
                .is_none(),
            "{name} was bound"
        );
        let condition = pod
            .status
            .and_then(|s| s.conditions)
            .into_iter()
            .flatten()
            .find(|c| c.type_ == "PodScheduled" && c.status == "False");
        if let Some(c) = condition {
            assert_eq!(c.reason.as_deref(), Some("Unschedulable"));
            return c.message.unwrap_or_default();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "pod {name} got no PodScheduled condition"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn node_zone(node: &str) -> &'static str {
    match node {
        "n1" | "n2" => "a",
        _ => "b",
    }
}

// Multi-threaded: kubectl blocks its thread while the in-process apiserver answers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn places_pods_like_kubernetes() {
    let etcd = Etcd::start().await.expect("etcd");
    let api = TestApiserver::start(&etcd).await.expect("apiserver");
    let admin = connect(&api, Component::Admin).await;
    let nodes: Api<Node> = Api::all(admin.clone());
    let pods: Api<Pod> = Api::namespaced(admin.clone(), "default");
    add_node(
        &nodes,
        "n1",
        json!({ZONE: "a", "disk": "ssd"}),
        "4",
        json!([]),
    )
    .await;
    add_node(&nodes, "n2", json!({ZONE: "a"}), "4", json!([])).await;
    add_node(
        &nodes,
        "n3",
        json!({ZONE: "b", "disk": "ssd"}),
        "4",
        json!([]),
    )
    .await;
    add_node(
        &nodes,
        "n4",
        json!({ZONE: "b"}),
        "4",
        json!([{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]),
    )
    .await;

    let mut config = SchedulerConfig::default();
    config.leader_election.leader_elect = false;
    let shutdown = CancellationToken::new();
    let metrics = Arc::new(Metrics::default());
    let scheduler = tokio::spawn(run_scheduler(
        connect(&api, Component::Scheduler).await,
        config,
        metrics.clone(),
        shutdown.clone(),
    ));

    // Anti-affinity on hostname: three web replicas on three different untainted nodes;
    // a fourth has nowhere to go.
    for i in 0..4 {
        let p = pod(
            &format!("web-{i}"),
            json!({"app": "web"}),
            json!({"affinity": anti_affinity("web", HOST)}),
        );
        pods.create(&p).await.expect("create web");
    }
    let mut web_nodes = Vec::new();
    for i in 0..3 {
        web_nodes.push(bound_node(&pods, &format!("web-{i}")).await);
    }
    web_nodes.sort();
    assert_eq!(web_nodes, vec!["n1", "n2", "n3"]);
    assert_eq!(
        unschedulable_message(&pods, "web-3").await,
        "0/4 nodes are available: 1 node(s) had untolerated taint {dedicated: gpu}, \
         3 node(s) didn't match pod anti-affinity rules."
    );

    // Anti-affinity on zone: two replicas, one per zone (the toleration opens n4).
    for i in 0..2 {
        let p = pod(
            &format!("zonal-{i}"),
            json!({"app": "zonal"}),
            json!({"affinity": anti_affinity("zonal", ZONE),
                   "tolerations": [{"key": "dedicated", "operator": "Exists"}]}),
        );
        pods.create(&p).await.expect("create zonal");
    }
    let z0 = bound_node(&pods, "zonal-0").await;
    let z1 = bound_node(&pods, "zonal-1").await;
    assert_ne!(node_zone(&z0), node_zone(&z1), "{z0} and {z1} share a zone");

    // Node affinity (Exists) and a nodeSelector.
    let p = pod(
        "ssd-in-b",
        json!({}),
        json!({"nodeSelector": {ZONE: "b"},
               "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                   "nodeSelectorTerms": [{"matchExpressions": [{"key": "disk", "operator": "Exists"}]}]}}}}),
    );
    pods.create(&p).await.expect("create ssd pod");
    assert_eq!(bound_node(&pods, "ssd-in-b").await, "n3");

    // Taints: only a tolerating pod pinned to zone b by node affinity lands on n4 when
    // n3 is excluded.
    let p = pod(
        "gpu",
        json!({}),
        json!({"tolerations": [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}],
               "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                   "nodeSelectorTerms": [{"matchExpressions": [
                       {"key": ZONE, "operator": "In", "values": ["b"]},
                       {"key": HOST, "operator": "NotIn", "values": ["n3"]}]}]}}}}),
    );
    pods.create(&p).await.expect("create gpu pod");
    assert_eq!(bound_node(&pods, "gpu").await, "n4");

    // Pod affinity on zone: follows the db pod (on n1, zone a).
    pods.create(&pod(
        "db",
        json!({"app": "db"}),
        json!({"nodeSelector": {HOST: "n1"}}),
    ))
    .await
    .expect("create db");
    assert_eq!(bound_node(&pods, "db").await, "n1");
    let p = pod(
        "cache",
        json!({"app": "cache"}),
        json!({"affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": ZONE}]}}}),
    );
    pods.create(&p).await.expect("create cache");
    assert_eq!(node_zone(&bound_node(&pods, "cache").await), "a");

    // Resource fit: 6 cores fit nowhere until a big node arrives.
    pods.create(&pod("big", json!({}), json!({"cpu": "6"})))
        .await
        .expect("create big");
    assert_eq!(
        unschedulable_message(&pods, "big").await,
        "0/4 nodes are available: 1 node(s) had untolerated taint {dedicated: gpu}, 3 Insufficient cpu."
    );
    add_node(&nodes, "n5", json!({ZONE: "c"}), "8", json!([])).await;
    assert_eq!(bound_node(&pods, "big").await, "n5");

    // Events: Scheduled for bound pods, FailedScheduling with the aggregated message.
    let events: Api<Event> = Api::namespaced(admin.clone(), "default");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let list = events
            .list(&ListParams::default())
            .await
            .expect("list events");
        let has = |reason: &str, pod: &str| {
            list.items.iter().any(|e| {
                e.reason.as_deref() == Some(reason)
                    && e.involved_object.name.as_deref() == Some(pod)
            })
        };
        if has("Scheduled", "gpu") && has("FailedScheduling", "web-3") {
            let scheduled = list
                .items
                .iter()
                .find(|e| {
                    e.reason.as_deref() == Some("Scheduled")
                        && e.involved_object.name.as_deref() == Some("gpu")
                })
                .and_then(|e| e.message.clone());
            assert_eq!(
                scheduled.as_deref(),
                Some("Successfully assigned default/gpu to n4")
            );
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "events missing");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // kubectl sees what the scheduler did.
    let out = api.kubectl(&["get", "pod", "gpu", "-o", "jsonpath={.spec.nodeName}"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "n4");

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), scheduler)
        .await
        .expect("scheduler stops")
        .expect("join")
        .expect("scheduler ran cleanly");
}

/// Starts a scheduler (no leader election) on `api`; cancel the token to stop it.
async fn start_scheduler(
    api: &TestApiserver,
) -> (
    CancellationToken,
    tokio::task::JoinHandle<Result<(), rkube_scheduler::scheduler::Error>>,
) {
    let mut config = SchedulerConfig::default();
    config.leader_election.leader_elect = false;
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(run_scheduler(
        connect(api, Component::Scheduler).await,
        config,
        Arc::new(Metrics::default()),
        shutdown.clone(),
    ));
    (shutdown, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spreads_over_zones_and_frees_host_ports() {
    let etcd = Etcd::start().await.expect("etcd");
    let api = TestApiserver::start(&etcd).await.expect("apiserver");
    let admin = connect(&api, Component::Admin).await;
    let nodes: Api<Node> = Api::all(admin.clone());
    let pods: Api<Pod> = Api::namespaced(admin.clone(), "default");
    add_node(&nodes, "n1", json!({ZONE: "a"}), "4", json!([])).await;
    add_node(&nodes, "n2", json!({ZONE: "a"}), "4", json!([])).await;
    add_node(&nodes, "n3", json!({ZONE: "b"}), "4", json!([])).await;
    let (shutdown, scheduler) = start_scheduler(&api).await;

    // maxSkew 1 over two zones: four replicas split 2/2 although zone a has twice the
    // nodes (and twice the free capacity).
    for i in 0..4 {
        let p = pod(
            &format!("spread-{i}"),
            json!({"app": "spread"}),
            json!({"topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": ZONE,
                "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": "spread"}}}]}),
        );
        pods.create(&p).await.expect("create spread pod");
    }
    let mut in_b = 0;
    for i in 0..4 {
        if node_zone(&bound_node(&pods, &format!("spread-{i}")).await) == "b" {
            in_b += 1;
        }
    }
    assert_eq!(in_b, 2, "two of four replicas in zone b");

    // Host port 8080: one pod per node; the fourth waits until a port is freed.
    let port_pod = |name: &str| {
        let mut p = pod(name, json!({}), json!({}));
        if let Some(spec) = p.spec.as_mut() {
            spec.containers[0].ports = Some(vec![k8s_openapi::api::core::v1::ContainerPort {
                container_port: 8080,
                host_port: Some(8080),
                ..Default::default()
            }]);
        }
        p
    };
    for i in 0..4 {
        pods.create(&port_pod(&format!("port-{i}")))
            .await
            .expect("create port pod");
    }
    let mut placed = Vec::new();
    let mut waiting = None;
    for i in 0..4 {
        let name = format!("port-{i}");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let p = pods.get(&name).await.expect("get");
            if let Some(node) = p.spec.as_ref().and_then(|s| s.node_name.clone()) {
                placed.push((name.clone(), node));
                break;
            }
            let unschedulable = p
                .status
                .and_then(|s| s.conditions)
                .into_iter()
                .flatten()
                .any(|c| c.type_ == "PodScheduled" && c.status == "False");
            if unschedulable {
                waiting = Some(name.clone());
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{name} neither bound nor unschedulable"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let waiting = waiting.expect("one port pod waits");
    assert_eq!(placed.len(), 3);
    let mut used: Vec<&str> = placed.iter().map(|(_, n)| n.as_str()).collect();
    used.sort();
    assert_eq!(used, vec!["n1", "n2", "n3"]);
    assert_eq!(
        unschedulable_message(&pods, &waiting).await,
        "0/3 nodes are available: 3 node(s) didn't have free ports for the requested pod ports."
    );

    let (gone, freed) = &placed[0];
    pods.delete(
        gone,
        &rkube_client::DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        },
    )
    .await
    .expect("delete port pod");
    assert_eq!(&bound_node(&pods, &waiting).await, freed);

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), scheduler)
        .await
        .expect("scheduler stops")
        .expect("join")
        .expect("scheduler ran cleanly");
}
