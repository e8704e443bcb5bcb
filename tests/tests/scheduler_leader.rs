//! Leader election through a Lease (`rkube_client::leader`) on a real apiserver: one
//! holder at a time, hand-over on release, take-over after expiry, and the leading
//! future cancelled when the Lease is taken away.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use rkube_client::leader::{Error, LeaderElector, LeaseConfig};
use rkube_client::{Api, Client};
use rkube_ctl::pki::Component;
use rkube_tests::{Etcd, TestApiserver};
use tokio_util::sync::CancellationToken;

async fn connect(api: &TestApiserver) -> Client {
    Client::connect(api.client_config(Component::Scheduler))
        .await
        .expect("connect over gRPC")
}

fn config(identity: &str, lease_seconds: u64) -> LeaseConfig {
    LeaseConfig {
        namespace: "default".to_string(),
        name: "sched".to_string(),
        identity: identity.to_string(),
        lease_duration: Duration::from_secs(lease_seconds),
        retry_period: Duration::from_millis(100),
    }
}

async fn holder(leases: &Api<Lease>) -> (Option<String>, i32) {
    let spec = leases
        .get("sched")
        .await
        .expect("get lease")
        .spec
        .unwrap_or_default();
    (spec.holder_identity, spec.lease_transitions.unwrap_or(-1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_hand_over_and_loss() {
    let etcd = Etcd::start().await.expect("etcd");
    let api = TestApiserver::start(&etcd).await.expect("apiserver");
    let client = connect(&api).await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), "default");
    let a = LeaderElector::new(client.clone(), config("a", 15));
    let b = LeaderElector::new(client.clone(), config("b", 15));

    assert!(a.try_acquire_or_renew().await.expect("a acquires"));
    assert!(
        !b.try_acquire_or_renew().await.expect("b tries"),
        "a holds a valid lease"
    );
    assert!(a.try_acquire_or_renew().await.expect("a renews"));
    assert_eq!(holder(&leases).await, (Some("a".to_string()), 0));

    // a gives the lease up; b, waiting in run(), takes over and leads.
    a.release().await.expect("release");
    let (led_tx, led_rx) = tokio::sync::oneshot::channel();
    let shutdown = CancellationToken::new();
    let b_run = tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            b.run(shutdown, |leading| async move {
                let _ = led_tx.send(());
                leading.cancelled().await;
                "stopped"
            })
            .await
        }
    });
    tokio::time::timeout(Duration::from_secs(5), led_rx)
        .await
        .expect("b leads in time")
        .expect("b's future ran");
    assert_eq!(holder(&leases).await, (Some("b".to_string()), 1));

    // Someone else overwrites the lease: b notices on its next renewal, its future is
    // cancelled and run() reports the loss.
    let mut stolen = leases.get("sched").await.expect("get");
    stolen
        .spec
        .get_or_insert_with(Default::default)
        .holder_identity = Some("c".to_string());
    leases.replace("sched", &stolen).await.expect("steal");
    let outcome = tokio::time::timeout(Duration::from_secs(5), b_run)
        .await
        .expect("b stops in time")
        .expect("join");
    assert!(matches!(outcome, Err(Error::Lost(_))), "{outcome:?}");
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_lease_is_taken_over() {
    let etcd = Etcd::start().await.expect("etcd");
    let api = TestApiserver::start(&etcd).await.expect("apiserver");
    let client = connect(&api).await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), "default");
    let dead = LeaderElector::new(client.clone(), config("dead", 1));
    assert!(dead.try_acquire_or_renew().await.expect("acquire"));

    let c = LeaderElector::new(client.clone(), config("c", 1));
    assert!(
        !c.try_acquire_or_renew().await.expect("first look"),
        "not expired yet"
    );
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert!(c.try_acquire_or_renew().await.expect("take over"));
    assert_eq!(holder(&leases).await, (Some("c".to_string()), 1));

    // run() returns the leading future's output once it finishes, and releases.
    let out = c
        .run(CancellationToken::new(), |_| async { 42 })
        .await
        .expect("run");
    assert_eq!(out, Some(42));
    assert_eq!(holder(&leases).await.0, None);
}
