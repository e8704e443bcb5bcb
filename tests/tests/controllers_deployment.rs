//! The ReplicaSet and Deployment controllers on a real apiserver and etcd, with a
//! simulated node agent binding pods and marking them Running and Ready: scaling,
//! adoption, a rolling update that never drops below `replicas - maxUnavailable` ready
//! pods, a stuck rollout reaching ProgressDeadlineExceeded, Recreate,
//! revisionHistoryLimit cleanup, minReadySeconds, and `kubectl rollout
//! status/history/undo` with the real kubectl.

use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use rkube_client::{Api, Client, ListParams};
use rkube_controller_manager::simulation::SimulatedNodes;
use rkube_controller_manager::{run, Config};
use rkube_ctl::pki::Component;
use rkube_tests::{eventually, Etcd, TestApiserver};
use tokio_util::sync::CancellationToken;

struct Cluster {
    _etcd: Etcd,
    api: TestApiserver,
    client: Client,
    sim: SimulatedNodes,
    shutdown: CancellationToken,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn cluster(nodes: usize) -> Cluster {
    let etcd = Etcd::start().await.expect("etcd");
    let api = TestApiserver::start(&etcd).await.expect("apiserver");
    let config = |component| api.client_config(component);
    let shutdown = CancellationToken::new();
    let cm_config = Config::new(config(Component::ControllerManager));
    tokio::spawn(run(cm_config, shutdown.clone()));
    let client = Client::connect(config(Component::Admin))
        .await
        .expect("connect");
    let sim = SimulatedNodes::start(client.clone(), nodes, shutdown.clone())
        .await
        .expect("simulated nodes");
    Cluster {
        _etcd: etcd,
        api,
        client,
        sim,
        shutdown,
    }
}

fn ready_pods(pods: &[Pod]) -> usize {
    pods.iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .count()
}

async fn list_pods(client: &Client, selector: &str) -> Vec<Pod> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    pods.list(&ListParams::default().labels(selector))
        .await
        .expect("list pods")
        .items
}

fn ok(output: &std::process::Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(
        output.status.success(),
        "kubectl failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

const RS: &str = r#"{"apiVersion":"apps/v1","kind":"ReplicaSet","metadata":{"name":"front"},
 "spec":{"replicas":3,"selector":{"matchLabels":{"app":"front"}},
  "template":{"metadata":{"labels":{"app":"front"}},"spec":{"containers":[{"name":"c","image":"busybox:1.36"}]}}}}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicaset_scales_adopts_and_reports_status() {
    let c = cluster(3).await;
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), "default");
    // An orphan that matches: adopted instead of a fourth pod being created.
    let orphan: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "orphan", "labels": {"app": "front"}},
        "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]}
    }))
    .expect("pod");
    pods.create(&orphan).await.expect("create orphan");
    ok(&tokio::task::block_in_place(|| {
        c.api.kubectl_stdin(&["apply", "-f", "-"], RS)
    }));

    let rss: Api<ReplicaSet> = Api::namespaced(c.client.clone(), "default");
    eventually("3 ready replicas", Duration::from_secs(30), || async {
        let rs = rss.get("front").await.ok()?;
        let status = rs.status?;
        (status.ready_replicas == Some(3)
            && status.available_replicas == Some(3)
            && status.fully_labeled_replicas == Some(3)
            && status.observed_generation == rs.metadata.generation)
            .then_some(())
    })
    .await;
    let all = list_pods(&c.client, "app=front").await;
    assert_eq!(all.len(), 3, "no double creation");
    let adopted = pods.get("orphan").await.expect("orphan kept");
    let owner = adopted.metadata.owner_references.unwrap_or_default();
    assert_eq!(owner.first().map(|o| o.name.as_str()), Some("front"));

    ok(&tokio::task::block_in_place(|| {
        c.api.kubectl(&["scale", "rs/front", "--replicas=5"])
    }));
    eventually("5 ready pods", Duration::from_secs(30), || async {
        (ready_pods(&list_pods(&c.client, "app=front").await) == 5).then_some(())
    })
    .await;
    ok(&tokio::task::block_in_place(|| {
        c.api.kubectl(&["scale", "rs/front", "--replicas=1"])
    }));
    eventually("1 pod left", Duration::from_secs(30), || async {
        let rs = rss.get("front").await.ok()?;
        (list_pods(&c.client, "app=front").await.len() == 1 && rs.status?.replicas == 1)
            .then_some(())
    })
    .await;
    // Events tell the story.
    let events = ok(&tokio::task::block_in_place(|| {
        c.api
            .kubectl(&["get", "events", "-o", "jsonpath={.items[*].reason}"])
    }));
    assert!(events.contains("SuccessfulCreate"), "{events}");
    assert!(events.contains("SuccessfulDelete"), "{events}");
}

fn deployment_yaml(image: &str, strategy: &str) -> String {
    format!(
        r#"{{"apiVersion":"apps/v1","kind":"Deployment","metadata":{{"name":"web"}},
 "spec":{{"replicas":6,"progressDeadlineSeconds":600,"selector":{{"matchLabels":{{"app":"web"}}}},
  "strategy":{strategy},
  "template":{{"metadata":{{"labels":{{"app":"web"}}}},"spec":{{"containers":[{{"name":"web","image":"{image}"}}]}}}}}}}}"#
    )
}

const ROLLING: &str =
    r#"{"type":"RollingUpdate","rollingUpdate":{"maxSurge":"25%","maxUnavailable":"25%"}}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rolling_update_keeps_availability_and_kubectl_rollout_works() {
    let c = cluster(3).await;
    ok(&tokio::task::block_in_place(|| {
        c.api
            .kubectl_stdin(&["apply", "-f", "-"], &deployment_yaml("web:1", ROLLING))
    }));
    let status = ok(&tokio::task::block_in_place(|| {
        c.api
            .kubectl(&["rollout", "status", "deploy/web", "--timeout=60s"])
    }));
    assert!(status.contains("successfully rolled out"), "{status}");

    // The ReplicaSet looks like Kubernetes': name, hash label, revision, owner.
    let rss: Api<ReplicaSet> = Api::namespaced(c.client.clone(), "default");
    let first = rss.list(&ListParams::default()).await.expect("list").items;
    assert_eq!(first.len(), 1);
    let rs = &first[0];
    let hash = rs
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get("pod-template-hash"))
        .cloned()
        .expect("hash label");
    assert_eq!(
        rs.metadata.name.as_deref(),
        Some(format!("web-{hash}").as_str())
    );
    let annotations = rs.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(
        annotations
            .get("deployment.kubernetes.io/revision")
            .map(String::as_str),
        Some("1")
    );
    assert_eq!(
        annotations
            .get("deployment.kubernetes.io/desired-replicas")
            .map(String::as_str),
        Some("6")
    );
    assert_eq!(
        annotations
            .get("deployment.kubernetes.io/max-replicas")
            .map(String::as_str),
        Some("8")
    );

    // Roll out a new image while watching readiness: 6 replicas, maxUnavailable 25%
    // (1.5 rounded down = 1), so at least 5 pods must be ready at every step.
    let watcher_client = c.client.clone();
    let stop = CancellationToken::new();
    let stop_watch = stop.clone();
    let min_seen = tokio::spawn(async move {
        let mut min = usize::MAX;
        while !stop_watch.is_cancelled() {
            min = min.min(ready_pods(&list_pods(&watcher_client, "app=web").await));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        min
    });
    ok(&tokio::task::block_in_place(|| {
        c.api.kubectl(&["set", "image", "deploy/web", "web=web:2"])
    }));
    let status = ok(&tokio::task::block_in_place(|| {
        c.api
            .kubectl(&["rollout", "status", "deploy/web", "--timeout=90s"])
    }));
    assert!(status.contains("successfully rolled out"), "{status}");
    stop.cancel();
    let min = min_seen.await.expect("watcher");
    assert!(min >= 5, "ready pods dropped to {min} during the rollout");

    let pods = list_pods(&c.client, "app=web").await;
    assert_eq!(pods.len(), 6);
    assert!(pods
        .iter()
        .all(|p| p.spec.as_ref().map(|s| s.containers[0].image.as_deref()) == Some(Some("web:2"))));

    let history = ok(&tokio::task::block_in_place(|| {
        c.api.kubectl(&["rollout", "history", "deploy/web"])
    }));
    assert!(history.contains('1') && history.contains('2'), "{history}");

    // Undo: the first ReplicaSet is reused and becomes revision 3.
    ok(&tokio::task::block_in_place(|| {
        c.api.kubectl(&["rollout", "undo", "deploy/web"])
    }));
    let status = ok(&tokio::task::block_in_place(|| {
        c.api
            .kubectl(&["rollout", "status", "deploy/web", "--timeout=90s"])
    }));
    assert!(status.contains("successfully rolled out"), "{status}");
    let reused = rss
        .get(&format!("web-{hash}"))
        .await
        .expect("first replica set");
    let annotations = reused.metadata.annotations.unwrap_or_default();
    assert_eq!(
        annotations
            .get("deployment.kubernetes.io/revision")
            .map(String::as_str),
        Some("3")
    );
    assert_eq!(
        annotations
            .get("deployment.kubernetes.io/revision-history")
            .map(String::as_str),
        Some("1")
    );
    let history = ok(&tokio::task::block_in_place(|| {
        c.api.kubectl(&["rollout", "history", "deploy/web"])
    }));
    let revisions: Vec<&str> = history
        .lines()
        .skip(2)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(revisions, ["2", "3"], "{history}");
    let pods = list_pods(&c.client, "app=web").await;
    assert!(pods
        .iter()
        .all(|p| p.spec.as_ref().map(|s| s.containers[0].image.as_deref()) == Some(Some("web:1"))));

    // Undo to a revision that does not exist is a clear error.
    let missing = tokio::task::block_in_place(|| {
        c.api
            .kubectl(&["rollout", "undo", "deploy/web", "--to-revision=42"])
    });
    assert!(!missing.status.success());
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(
        stderr.contains("unable to find specified revision 42"),
        "{stderr}"
    );
    // Undo to revision 2 works by number.
    ok(&tokio::task::block_in_place(|| {
        c.api
            .kubectl(&["rollout", "undo", "deploy/web", "--to-revision=2"])
    }));
    let status = ok(&tokio::task::block_in_place(|| {
        c.api
            .kubectl(&["rollout", "status", "deploy/web", "--timeout=90s"])
    }));
    assert!(status.contains("successfully rolled out"), "{status}");

    // Scaling mid-way and restart keep working.
    ok(&tokio::task::block_in_place(|| {
        c.api.kubectl(&["scale", "deploy/web", "--replicas=3"])
    }));
    ok(&tokio::task::block_in_place(|| {
        c.api.kubectl(&["rollout", "restart", "deploy/web"])
    }));
    let status = ok(&tokio::task::block_in_place(|| {
        c.api
            .kubectl(&["rollout", "status", "deploy/web", "--timeout=90s"])
    }));
    assert!(status.contains("successfully rolled out"), "{status}");
    assert_eq!(list_pods(&c.client, "app=web").await.len(), 3);

    let describe = ok(&tokio::task::block_in_place(|| {
        c.api.kubectl(&["describe", "deploy/web"])
    }));
    assert!(describe.contains("ScalingReplicaSet"), "{describe}");
    assert!(describe.contains("NewReplicaSetAvailable"), "{describe}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stuck_rollout_reaches_progress_deadline() {
    let c = cluster(2).await;
    ok(&tokio::task::block_in_place(|| {
        c.api
            .kubectl_stdin(&["apply", "-f", "-"], &deployment_yaml("web:1", ROLLING))
    }));
    ok(&tokio::task::block_in_place(|| {
        c.api
            .kubectl(&["rollout", "status", "deploy/web", "--timeout=60s"])
    }));
    ok(&tokio::task::block_in_place(|| {
        c.api.kubectl(&[
            "patch",
            "deploy/web",
            "-p",
            r#"{"spec":{"progressDeadlineSeconds":3}}"#,
        ])
    }));
    ok(&tokio::task::block_in_place(|| {
        c.api
            .kubectl(&["set", "image", "deploy/web", "web=web:never-ready"])
    }));
    let deployments: Api<Deployment> = Api::namespaced(c.client.clone(), "default");
    eventually(
        "ProgressDeadlineExceeded",
        Duration::from_secs(30),
        || async {
            let d = deployments.get("web").await.ok()?;
            let conditions = d.status?.conditions?;
            conditions
                .iter()
                .any(|c| {
                    c.type_ == "Progressing"
                        && c.status == "False"
                        && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
                })
                .then_some(())
        },
    )
    .await;
    let out = tokio::task::block_in_place(|| {
        c.api
            .kubectl(&["rollout", "status", "deploy/web", "--timeout=20s"])
    });
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("exceeded its progress deadline"),
        "{stderr}"
    );
    // The old pods kept serving: at least replicas - maxUnavailable are ready.
    assert!(ready_pods(&list_pods(&c.client, "app=web").await) >= 5);

    // Scaling the stuck rollout from 6 to 12 shares the new pods between the old and
    // new ReplicaSets in proportion: both grow, and together they use exactly
    // 12 + maxSurge (25% of 12 = 3) pods.
    let rss: Api<ReplicaSet> = Api::namespaced(c.client.clone(), "default");
    let before: Vec<i32> = sizes(&rss).await;
    tokio::task::block_in_place(|| c.api.kubectl(&["scale", "deploy/web", "--replicas=12"]));
    let after = eventually("proportional scale-up", Duration::from_secs(30), || async {
        let after = sizes(&rss).await;
        (after.iter().sum::<i32>() == 15).then_some(after)
    })
    .await;
    assert_eq!(before.len(), 2, "{before:?}");
    assert!(
        after.iter().zip(&before).all(|(a, b)| a > b),
        "{before:?} -> {after:?}"
    );
}

/// `spec.replicas` of the ReplicaSets, oldest first.
async fn sizes(rss: &Api<ReplicaSet>) -> Vec<i32> {
    let mut list = rss.list(&ListParams::default()).await.expect("list").items;
    list.sort_by_key(|rs| rs.metadata.creation_timestamp.clone());
    list.iter()
        .map(|rs| rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_elect_one_leader_through_a_lease() {
    let etcd = Etcd::start().await.expect("etcd");
    let api = TestApiserver::start(&etcd).await.expect("apiserver");
    let config = |component| api.client_config(component);
    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    for _ in 0..2 {
        let mut cm = Config::new(config(Component::ControllerManager));
        cm.leader_elect_lease = Some("rkube-controller-manager".into());
        tokio::spawn(run(cm, shutdown.clone()));
    }
    let client = Client::connect(config(Component::Admin))
        .await
        .expect("connect");
    let _sim = SimulatedNodes::start(client.clone(), 1, shutdown.clone())
        .await
        .expect("nodes");
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(client.clone(), "kube-system");
    let holder = eventually("a leader", Duration::from_secs(20), || async {
        leases
            .get_opt("rkube-controller-manager")
            .await
            .ok()??
            .spec?
            .holder_identity
    })
    .await;
    assert!(!holder.is_empty());
    // The leader runs the controllers: a ReplicaSet gets its pods.
    let out = tokio::task::block_in_place(|| api.kubectl_stdin(&["apply", "-f", "-"], RS));
    assert!(out.status.success());
    eventually("3 pods", Duration::from_secs(30), || async {
        (ready_pods(&list_pods(&client, "app=front").await) == 3).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn recreate_stops_old_pods_before_starting_new_ones() {
    let c = cluster(2).await;
    ok(&tokio::task::block_in_place(|| {
        c.api.kubectl_stdin(
            &["apply", "-f", "-"],
            &deployment_yaml("web:1", r#"{"type":"Recreate"}"#),
        )
    }));
    ok(&tokio::task::block_in_place(|| {
        c.api
            .kubectl(&["rollout", "status", "deploy/web", "--timeout=60s"])
    }));
    let client = c.client.clone();
    let stop = CancellationToken::new();
    let stop_watch = stop.clone();
    let mixed = tokio::spawn(async move {
        let mut mixed = false;
        while !stop_watch.is_cancelled() {
            let images: std::collections::HashSet<String> = list_pods(&client, "app=web")
                .await
                .iter()
                .filter_map(|p| p.spec.as_ref()?.containers[0].image.clone())
                .collect();
            mixed |= images.len() > 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        mixed
    });
    ok(&tokio::task::block_in_place(|| {
        c.api.kubectl(&["set", "image", "deploy/web", "web=web:2"])
    }));
    ok(&tokio::task::block_in_place(|| {
        c.api
            .kubectl(&["rollout", "status", "deploy/web", "--timeout=60s"])
    }));
    stop.cancel();
    assert!(
        !mixed.await.expect("watcher"),
        "old and new pods ran at the same time"
    );
    let _ = &c.sim;
}

/// The revisions `kubectl rollout history` lists.
fn history_revisions(history: &str) -> Vec<String> {
    history
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| w.chars().all(|c| c.is_ascii_digit()))
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revision_history_limit_deletes_the_oldest_replicasets() {
    let c = cluster(2).await;
    let manifest = |image: &str| {
        deployment_yaml(image, ROLLING).replace(
            r#""replicas":6,"#,
            r#""replicas":2,"revisionHistoryLimit":2,"#,
        )
    };
    for image in ["web:1", "web:2", "web:3", "web:4", "web:5"] {
        ok(&tokio::task::block_in_place(|| {
            c.api.kubectl_stdin(&["apply", "-f", "-"], &manifest(image))
        }));
        let status = ok(&tokio::task::block_in_place(|| {
            c.api
                .kubectl(&["rollout", "status", "deploy/web", "--timeout=60s"])
        }));
        assert!(status.contains("successfully rolled out"), "{status}");
    }
    // Revision 5 runs; of the four old ReplicaSets the newest two (3 and 4) stay.
    let rss: Api<ReplicaSet> = Api::namespaced(c.client.clone(), "default");
    let revisions = eventually(
        "old replicasets cleaned up",
        Duration::from_secs(20),
        || async {
            let mut revisions: Vec<String> = rss
                .list(&ListParams::default())
                .await
                .ok()?
                .items
                .iter()
                .filter_map(|rs| {
                    rs.metadata
                        .annotations
                        .as_ref()?
                        .get("deployment.kubernetes.io/revision")
                        .cloned()
                })
                .collect();
            revisions.sort();
            (revisions.len() == 3).then_some(revisions)
        },
    )
    .await;
    assert_eq!(revisions, ["3", "4", "5"]);
    let history = ok(&tokio::task::block_in_place(|| {
        c.api.kubectl(&["rollout", "history", "deploy/web"])
    }));
    assert_eq!(history_revisions(&history), ["3", "4", "5"], "{history}");
    // Undo to a revision that was cleaned up is refused.
    let out = tokio::task::block_in_place(|| {
        c.api
            .kubectl(&["rollout", "undo", "deploy/web", "--to-revision=1"])
    });
    assert!(
        !out.status.success(),
        "undo to a deleted revision succeeded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn available_replicas_lag_readiness_by_min_ready_seconds() {
    let c = cluster(2).await;
    let manifest = deployment_yaml("web:1", ROLLING)
        .replace(r#""replicas":6,"#, r#""replicas":2,"minReadySeconds":3,"#);
    ok(&tokio::task::block_in_place(|| {
        c.api.kubectl_stdin(&["apply", "-f", "-"], &manifest)
    }));
    let deployments: Api<Deployment> = Api::namespaced(c.client.clone(), "default");
    // The first time the Deployment reports both replicas ready, none is available yet.
    let available = eventually("2 ready replicas", Duration::from_secs(20), || async {
        let status = deployments.get("web").await.ok()?.status?;
        (status.ready_replicas == Some(2)).then(|| status.available_replicas.unwrap_or(0))
    })
    .await;
    assert!(available < 2, "available as soon as ready: {available}");
    let available_at = eventually("2 available replicas", Duration::from_secs(20), || async {
        let status = deployments.get("web").await.ok()?.status?;
        (status.available_replicas == Some(2)).then(k8s_openapi::chrono::Utc::now)
    })
    .await;
    // Measured from when the pods really became Ready (their condition's transition
    // time, which the API rounds down to the second), not from when the Deployment's
    // status first said so, which may lag on a busy machine.
    let pods = Api::<Pod>::namespaced(c.client.clone(), "default")
        .list(&ListParams::default())
        .await
        .expect("list pods")
        .items;
    let ready_since = pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| {
            p.status
                .as_ref()?
                .conditions
                .as_ref()?
                .iter()
                .find(|c| c.type_ == "Ready" && c.status == "True")?
                .last_transition_time
                .as_ref()
                .map(|t| t.0)
        })
        .max()
        .expect("Ready pods");
    let lag = (available_at - ready_since)
        .to_std()
        .unwrap_or(Duration::ZERO);
    assert!(
        lag >= Duration::from_secs(3),
        "available {lag:?} after the pods became Ready, minReadySeconds is 3"
    );
    assert!(
        lag < Duration::from_secs(11),
        "available only after {lag:?}"
    );
    let rs = Api::<ReplicaSet>::namespaced(c.client.clone(), "default")
        .list(&ListParams::default())
        .await
        .expect("list")
        .items;
    assert_eq!(rs.len(), 1);
    assert_eq!(
        rs[0].status.as_ref().and_then(|s| s.available_replicas),
        Some(2)
    );
}
