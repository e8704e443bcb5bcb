//! Two rkube-scheduler replicas (`rkube_scheduler::run`, as the binary runs it) with
//! leader election: one holds the Lease and schedules; when it stops, it releases the
//! Lease and the other takes over and schedules the next pod.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use rkube_client::{Api, Client};
use rkube_ctl::pki::Component;
use rkube_scheduler::config::SchedulerConfig;
use rkube_tests::{Etcd, TestApiserver};
use serde_json::json;
use tokio_util::sync::CancellationToken;

async fn bound_node(pods: &Api<Pod>, name: &str) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(node) = pods
            .get(name)
            .await
            .expect("get pod")
            .spec
            .and_then(|s| s.node_name)
        {
            return node;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "pod {name} was not bound"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn lease_holder(leases: &Api<Lease>) -> Option<String> {
    leases
        .get_opt("rkube-scheduler")
        .await
        .expect("get lease")
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
}

fn pod(name: &str) -> Pod {
    serde_json::from_value(json!({"metadata": {"name": name},
        "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]}}))
    .expect("pod")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_one_leader_and_fail_over() {
    let etcd = Etcd::start().await.expect("etcd");
    let api = TestApiserver::start(&etcd).await.expect("apiserver");
    let admin = Client::connect(api.client_config(Component::Admin))
        .await
        .expect("connect");
    let node: Node = serde_json::from_value(json!({"metadata": {"name": "n1"},
        "status": {"allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"}}}))
    .expect("node");
    Api::<Node>::all(admin.clone())
        .create(&node)
        .await
        .expect("create node");
    let pods: Api<Pod> = Api::namespaced(admin.clone(), "default");
    let leases: Api<Lease> = Api::namespaced(admin.clone(), "kube-system");

    let mut scheduler = SchedulerConfig::default();
    scheduler.leader_election.retry_period_seconds = 1;
    let replica = |identity: &str| rkube_scheduler::Config {
        client: api.client_config(Component::Scheduler),
        scheduler: scheduler.clone(),
        identity: identity.to_string(),
    };
    let stop_a = CancellationToken::new();
    let stop_b = CancellationToken::new();
    let a = tokio::spawn(rkube_scheduler::run(replica("a"), stop_a.clone()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let b = tokio::spawn(rkube_scheduler::run(replica("b"), stop_b.clone()));

    pods.create(&pod("first")).await.expect("create first");
    assert_eq!(bound_node(&pods, "first").await, "n1");
    assert_eq!(lease_holder(&leases).await.as_deref(), Some("a"));

    // The leader stops: it releases the Lease, b takes over and schedules.
    stop_a.cancel();
    tokio::time::timeout(Duration::from_secs(10), a)
        .await
        .expect("a stops")
        .expect("join")
        .expect("a ran cleanly");
    pods.create(&pod("second")).await.expect("create second");
    assert_eq!(bound_node(&pods, "second").await, "n1");
    assert_eq!(lease_holder(&leases).await.as_deref(), Some("b"));

    stop_b.cancel();
    tokio::time::timeout(Duration::from_secs(10), b)
        .await
        .expect("b stops")
        .expect("join")
        .expect("b ran cleanly");
}
