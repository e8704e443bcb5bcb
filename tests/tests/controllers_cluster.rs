//! The cluster-level controllers on a real apiserver and etcd with simulated nodes:
//! node IPAM, a DaemonSet following nodes as they join and leave (and `kubectl rollout
//! status` following it), a node whose lease stops being renewed losing its pods to
//! other nodes, cascading deletion (background, foreground, orphan) of ReplicaSets and
//! pods and of ConfigMaps and Services, owners in another namespace, namespace
//! deletion, and endpoints.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{ConfigMap, Endpoints, Namespace, Node, Pod, Service};
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

impl Cluster {
    fn kubectl(&self, args: &[&str]) -> String {
        let out = tokio::task::block_in_place(|| self.api.kubectl(args));
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "kubectl {args:?}: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    fn apply(&self, manifest: &str) {
        let out =
            tokio::task::block_in_place(|| self.api.kubectl_stdin(&["apply", "-f", "-"], manifest));
        assert!(
            out.status.success(),
            "apply: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    async fn pods(&self, namespace: &str, selector: &str) -> Vec<Pod> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        pods.list(&ListParams::default().labels(selector))
            .await
            .expect("list pods")
            .items
    }
}

async fn cluster(nodes: usize) -> Cluster {
    let etcd = Etcd::start().await.expect("etcd");
    let api = TestApiserver::start(&etcd).await.expect("apiserver");
    let config = |component| api.client_config(component);
    let shutdown = CancellationToken::new();
    let mut cm_config = Config::new(config(Component::ControllerManager));
    cm_config.node_monitor_grace_period = Duration::from_secs(3);
    cm_config.pod_eviction_timeout = Duration::from_secs(2);
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

fn node_of(p: &Pod) -> String {
    p.spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap_or_default()
}

fn is_ready(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none()
        && p.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

const DEPLOYMENT: &str = r#"{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"web","namespace":"NS"},
 "spec":{"replicas":4,"selector":{"matchLabels":{"app":"web"}},
  "template":{"metadata":{"labels":{"app":"web"}},"spec":{"containers":[{"name":"web","image":"web:1","ports":[{"name":"http","containerPort":8080}]}]}}}}"#;

fn deployment_in(ns: &str) -> String {
    DEPLOYMENT.replace("NS", ns)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodes_get_distinct_pod_cidrs_and_freed_ones_are_reused() {
    let c = cluster(3).await;
    let nodes: Api<Node> = Api::all(c.client.clone());
    let cidrs = eventually("3 pod CIDRs", Duration::from_secs(20), || async {
        let list = nodes.list(&ListParams::default()).await.ok()?.items;
        let cidrs: Vec<(String, String)> = list
            .iter()
            .filter_map(|n| Some((n.metadata.name.clone()?, n.spec.as_ref()?.pod_cidr.clone()?)))
            .collect();
        (cidrs.len() == 3).then_some(cidrs)
    })
    .await;
    let distinct: HashSet<&String> = cidrs.iter().map(|(_, c)| c).collect();
    assert_eq!(distinct.len(), 3, "{cidrs:?}");
    assert!(
        cidrs
            .iter()
            .all(|(_, c)| c.starts_with("10.244.") && c.ends_with(".0/24")),
        "{cidrs:?}"
    );

    let (gone, freed) = cidrs
        .iter()
        .find(|(n, _)| n == "node-1")
        .cloned()
        .expect("node-1");
    c.sim.remove_node(&gone).await.expect("remove node");
    eventually("node deleted", Duration::from_secs(10), || async {
        nodes.get_opt(&gone).await.ok()?.is_none().then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.sim
        .add_node("node-new", BTreeMap::new())
        .await
        .expect("add node");
    let cidr = eventually(
        "pod CIDR for the new node",
        Duration::from_secs(20),
        || async { nodes.get("node-new").await.ok()?.spec?.pod_cidr },
    )
    .await;
    assert_eq!(cidr, freed, "the freed range is given out again");
}

const DAEMONSET: &str = r#"{"apiVersion":"apps/v1","kind":"DaemonSet","metadata":{"name":"agent"},
 "spec":{"selector":{"matchLabels":{"app":"agent"}},
  "template":{"metadata":{"labels":{"app":"agent"}},"spec":{
   "nodeSelector":{"role":"worker"},
   "containers":[{"name":"agent","image":"agent:1"}]}}}}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn daemonset_follows_nodes_as_they_join_and_leave() {
    let c = cluster(0).await;
    let worker = BTreeMap::from([("role".to_string(), "worker".to_string())]);
    for name in ["w1", "w2"] {
        c.sim
            .add_node(name, worker.clone())
            .await
            .expect("add node");
    }
    c.sim
        .add_node("other", BTreeMap::new())
        .await
        .expect("add node");
    c.apply(DAEMONSET);
    let on_nodes = |pods: Vec<Pod>| {
        let mut nodes: Vec<String> = pods.iter().filter(|p| is_ready(p)).map(node_of).collect();
        nodes.sort();
        nodes
    };
    eventually("daemons on w1 and w2", Duration::from_secs(20), || async {
        (on_nodes(c.pods("default", "app=agent").await) == ["w1", "w2"]).then_some(())
    })
    .await;
    c.sim
        .add_node("w3", worker.clone())
        .await
        .expect("add node");
    eventually("a daemon on w3", Duration::from_secs(20), || async {
        (on_nodes(c.pods("default", "app=agent").await) == ["w1", "w2", "w3"]).then_some(())
    })
    .await;
    c.sim.remove_node("w1").await.expect("remove node");
    eventually("no daemon on w1", Duration::from_secs(20), || async {
        let pods = c.pods("default", "app=agent").await;
        (pods.len() == 2 && on_nodes(pods) == ["w2", "w3"]).then_some(())
    })
    .await;
    let dss: Api<DaemonSet> = Api::namespaced(c.client.clone(), "default");
    eventually("daemonset status", Duration::from_secs(10), || async {
        let status = dss.get("agent").await.ok()?.status?;
        (status.desired_number_scheduled == 2
            && status.number_ready == 2
            && status.number_available == Some(2))
        .then_some(())
    })
    .await;

    // Rolling update: every daemon is replaced by one of the new template.
    c.kubectl(&["set", "image", "ds/agent", "agent=agent:2"]);
    eventually("updated daemons", Duration::from_secs(30), || async {
        let pods = c.pods("default", "app=agent").await;
        (pods.len() == 2
            && pods.iter().all(|p| {
                is_ready(p)
                    && p.spec.as_ref().map(|s| s.containers[0].image.as_deref())
                        == Some(Some("agent:2"))
            }))
        .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kubectl_rollout_status_follows_a_daemonset() {
    let c = cluster(0).await;
    let worker = BTreeMap::from([("role".to_string(), "worker".to_string())]);
    for name in ["w1", "w2"] {
        c.sim
            .add_node(name, worker.clone())
            .await
            .expect("add node");
    }
    c.apply(DAEMONSET);
    let image_of = |p: &Pod| {
        p.spec
            .as_ref()
            .and_then(|s| s.containers[0].image.clone())
            .unwrap_or_default()
    };
    let status = c.kubectl(&["rollout", "status", "ds/agent", "--timeout=30s"]);
    assert!(status.contains("successfully rolled out"), "{status}");
    let pods = c.pods("default", "app=agent").await;
    assert_eq!(pods.iter().filter(|p| is_ready(p)).count(), 2, "{pods:?}");

    // kubectl waits until every daemon runs the new template and is available.
    c.kubectl(&["set", "image", "ds/agent", "agent=agent:2"]);
    let status = c.kubectl(&["rollout", "status", "ds/agent", "--timeout=60s"]);
    assert!(status.contains("successfully rolled out"), "{status}");
    let pods: Vec<Pod> = c
        .pods("default", "app=agent")
        .await
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect();
    let mut nodes: Vec<String> = pods.iter().map(node_of).collect();
    nodes.sort();
    assert_eq!(nodes, ["w1", "w2"]);
    assert!(
        pods.iter().all(|p| is_ready(p) && image_of(p) == "agent:2"),
        "{pods:?}"
    );
    let dss: Api<DaemonSet> = Api::namespaced(c.client.clone(), "default");
    let ds = dss.get("agent").await.expect("daemonset");
    let ds_status = ds.status.expect("status");
    assert_eq!(ds_status.observed_generation, ds.metadata.generation);
    assert_eq!(ds_status.updated_number_scheduled, Some(2));
    assert_eq!(ds_status.number_available, Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pods_of_a_node_that_stops_renewing_its_lease_move_elsewhere() {
    let c = cluster(3).await;
    c.apply(&deployment_in("default"));
    eventually("4 ready pods", Duration::from_secs(30), || async {
        (c.pods("default", "app=web")
            .await
            .iter()
            .filter(|p| is_ready(p))
            .count()
            == 4)
            .then_some(())
    })
    .await;
    let victim = node_of(&c.pods("default", "app=web").await[0]);
    let started = Instant::now();
    c.sim.kill_node(&victim);
    let nodes: Api<Node> = Api::all(c.client.clone());
    eventually("node unreachable", Duration::from_secs(20), || async {
        let node = nodes.get(&victim).await.ok()?;
        let tainted = node
            .spec?
            .taints?
            .iter()
            .any(|t| t.key == "node.kubernetes.io/unreachable" && t.effect == "NoExecute");
        let unknown = node
            .status?
            .conditions?
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "Unknown");
        (tainted && unknown).then_some(())
    })
    .await;
    eventually(
        "pods replaced on other nodes",
        Duration::from_secs(30),
        || async {
            let pods = c.pods("default", "app=web").await;
            (pods.len() == 4 && pods.iter().all(|p| is_ready(p) && node_of(p) != victim))
                .then_some(())
        },
    )
    .await;
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(20), "took {elapsed:?}");
    let events = c.kubectl(&["get", "events", "-A", "-o", "jsonpath={.items[*].reason}"]);
    assert!(events.contains("NodeNotReady"), "{events}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cascading_deletion_background_foreground_and_orphan() {
    let c = cluster(2).await;
    let rss: Api<ReplicaSet> = Api::namespaced(c.client.clone(), "default");
    let deployments: Api<Deployment> = Api::namespaced(c.client.clone(), "default");
    let ready = || async {
        eventually("4 ready pods", Duration::from_secs(30), || async {
            (c.pods("default", "app=web")
                .await
                .iter()
                .filter(|p| is_ready(p))
                .count()
                == 4)
                .then_some(())
        })
        .await
    };

    // Background: the deployment goes at once, its ReplicaSet and pods after.
    c.apply(&deployment_in("default"));
    ready().await;
    c.kubectl(&["delete", "deploy/web", "--cascade=background"]);
    eventually("everything gone", Duration::from_secs(30), || async {
        let rs_left = rss.list(&ListParams::default()).await.ok()?.items.len();
        (rs_left == 0 && c.pods("default", "app=web").await.is_empty()).then_some(())
    })
    .await;

    // Foreground: the deployment stays (with its finalizer) until its dependents are gone.
    c.apply(&deployment_in("default"));
    ready().await;
    c.kubectl(&[
        "delete",
        "deploy/web",
        "--cascade=foreground",
        "--wait=false",
    ]);
    let d = deployments
        .get("web")
        .await
        .expect("still there while dependents go");
    assert!(d.metadata.deletion_timestamp.is_some());
    eventually(
        "deployment gone after its pods",
        Duration::from_secs(30),
        || async {
            let gone = deployments.get_opt("web").await.ok()?.is_none();
            (gone
                && c.pods("default", "app=web").await.is_empty()
                && rss
                    .list(&ListParams::default())
                    .await
                    .ok()?
                    .items
                    .is_empty())
            .then_some(())
        },
    )
    .await;

    // Orphan: the ReplicaSet and pods stay, without an owner.
    c.apply(&deployment_in("default"));
    ready().await;
    c.kubectl(&["delete", "deploy/web", "--cascade=orphan"]);
    eventually("deployment gone", Duration::from_secs(20), || async {
        deployments
            .get_opt("web")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    let orphans = rss.list(&ListParams::default()).await.expect("list").items;
    assert_eq!(orphans.len(), 1);
    assert!(orphans[0]
        .metadata
        .owner_references
        .as_ref()
        .is_none_or(|r| r.is_empty()));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        c.pods("default", "app=web")
            .await
            .iter()
            .filter(|p| is_ready(p))
            .count(),
        4
    );
}

/// Creates a ConfigMap `web-config` and a Service `web` in `ns`, owned by Deployment
/// `web` (uid `uid`); the ConfigMap also carries `finalizers`.
async fn create_owned_by_web(client: &Client, ns: &str, uid: &str, finalizers: &[&str]) {
    let owner = serde_json::json!([{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web",
        "uid": uid, "controller": true, "blockOwnerDeletion": true}]);
    let cm: ConfigMap = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web-config", "namespace": ns, "ownerReferences": owner,
                     "finalizers": finalizers},
        "data": {"greeting": "hello"}}))
    .expect("a valid configmap");
    let svc: Service = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web", "namespace": ns, "ownerReferences": owner},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}}))
    .expect("a valid service");
    Api::<ConfigMap>::namespaced(client.clone(), ns)
        .create(&cm)
        .await
        .expect("create configmap");
    Api::<Service>::namespaced(client.clone(), ns)
        .create(&svc)
        .await
        .expect("create service");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cascading_deletion_reaches_configmaps_and_services() {
    let c = cluster(1).await;
    let deployments: Api<Deployment> = Api::namespaced(c.client.clone(), "default");
    let configmaps: Api<ConfigMap> = Api::namespaced(c.client.clone(), "default");
    let services: Api<Service> = Api::namespaced(c.client.clone(), "default");
    let deploy = || async {
        c.apply(&deployment_in("default"));
        let uid = deployments
            .get("web")
            .await
            .expect("deployment")
            .metadata
            .uid
            .expect("uid");
        create_owned_by_web(&c.client, "default", &uid, &[]).await;
        uid
    };
    let both_gone = || async {
        (configmaps.get_opt("web-config").await.ok()?.is_none()
            && services.get_opt("web").await.ok()?.is_none())
        .then_some(())
    };

    // Background: both go after the deployment.
    deploy().await;
    c.kubectl(&["delete", "deploy/web", "--cascade=background"]);
    eventually(
        "configmap and service gone",
        Duration::from_secs(20),
        both_gone,
    )
    .await;

    // Orphan: both stay, without the reference to the deployment.
    let uid = deploy().await;
    c.kubectl(&["delete", "deploy/web", "--cascade=orphan"]);
    eventually("deployment gone", Duration::from_secs(20), || async {
        deployments
            .get_opt("web")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let cm = configmaps
        .get("web-config")
        .await
        .expect("orphaned configmap");
    let svc = services.get("web").await.expect("orphaned service");
    for (what, refs) in [
        ("configmap", &cm.metadata.owner_references),
        ("service", &svc.metadata.owner_references),
    ] {
        assert!(
            refs.iter().flatten().all(|r| r.uid != uid),
            "{what} still names its owner: {refs:?}"
        );
    }
    c.kubectl(&["delete", "configmap/web-config", "service/web"]);
    for rs in c.kubectl(&["get", "rs", "-o", "name"]).lines() {
        c.kubectl(&["delete", rs]);
    }

    // Foreground: the deployment waits for both. A finalizer of the test's own holds
    // the ConfigMap (deleted, but still there) until the test lets it go.
    c.apply(&deployment_in("default"));
    let uid = deployments
        .get("web")
        .await
        .expect("deployment")
        .metadata
        .uid
        .expect("uid");
    create_owned_by_web(&c.client, "default", &uid, &["example.com/hold"]).await;
    c.kubectl(&[
        "delete",
        "deploy/web",
        "--cascade=foreground",
        "--wait=false",
    ]);
    eventually(
        "configmap deleted and service gone",
        Duration::from_secs(20),
        || async {
            let cm = configmaps.get_opt("web-config").await.ok()??;
            (cm.metadata.deletion_timestamp.is_some()
                && services.get_opt("web").await.ok()?.is_none())
            .then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let d = deployments
        .get("web")
        .await
        .expect("the deployment waits for its configmap");
    assert!(d.metadata.deletion_timestamp.is_some());
    c.kubectl(&[
        "patch",
        "configmap/web-config",
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":null}}"#,
    ]);
    eventually(
        "deployment gone after its dependents",
        Duration::from_secs(20),
        || async {
            (deployments.get_opt("web").await.ok()?.is_none()
                && configmaps.get_opt("web-config").await.ok()?.is_none())
            .then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_owner_in_another_namespace_is_never_an_owner() {
    let c = cluster(1).await;
    let deployments: Api<Deployment> = Api::namespaced(c.client.clone(), "default");
    c.apply(&deployment_in("default"));
    let uid = deployments
        .get("web")
        .await
        .expect("deployment")
        .metadata
        .uid
        .expect("uid");
    c.kubectl(&["create", "namespace", "other"]);
    // Same owner in both namespaces: only the dependents in "default" have one.
    create_owned_by_web(&c.client, "default", &uid, &[]).await;
    create_owned_by_web(&c.client, "other", &uid, &[]).await;
    let others: Api<ConfigMap> = Api::namespaced(c.client.clone(), "other");
    let other_services: Api<Service> = Api::namespaced(c.client.clone(), "other");
    eventually(
        "dependents in the other namespace collected",
        Duration::from_secs(20),
        || async {
            (others.get_opt("web-config").await.ok()?.is_none()
                && other_services.get_opt("web").await.ok()?.is_none())
            .then_some(())
        },
    )
    .await;
    let configmaps: Api<ConfigMap> = Api::namespaced(c.client.clone(), "default");
    let services: Api<Service> = Api::namespaced(c.client.clone(), "default");
    assert!(configmaps
        .get_opt("web-config")
        .await
        .expect("get")
        .is_some());
    assert!(services.get_opt("web").await.expect("get").is_some());
    assert!(deployments.get_opt("web").await.expect("get").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn namespace_deletion_empties_and_removes_it() {
    let c = cluster(2).await;
    c.kubectl(&["create", "namespace", "shop"]);
    c.apply(&deployment_in("shop"));
    eventually("pods in shop", Duration::from_secs(30), || async {
        (c.pods("shop", "app=web")
            .await
            .iter()
            .filter(|p| is_ready(p))
            .count()
            == 4)
            .then_some(())
    })
    .await;
    c.kubectl(&["delete", "namespace", "shop", "--wait=false"]);
    let namespaces: Api<Namespace> = Api::all(c.client.clone());
    eventually("namespace gone", Duration::from_secs(30), || async {
        namespaces
            .get_opt("shop")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
}

const SERVICE: &str = r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"web"},
 "spec":{"selector":{"app":"web"},"ports":[{"name":"http","port":80,"targetPort":"http"}]}}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn endpoints_follow_pods() {
    let c = cluster(2).await;
    c.apply(SERVICE);
    c.apply(&deployment_in("default"));
    let endpoints: Api<Endpoints> = Api::namespaced(c.client.clone(), "default");
    let check = |want: usize| {
        let endpoints = endpoints.clone();
        let client = c.client.clone();
        async move {
            let e = endpoints.get_opt("web").await.ok()??;
            let subsets = e.subsets.unwrap_or_default();
            let ips: HashSet<String> = subsets
                .iter()
                .flat_map(|s| s.addresses.iter().flatten())
                .map(|a| a.ip.clone())
                .collect();
            let ports: Vec<i32> = subsets
                .iter()
                .flat_map(|s| s.ports.iter().flatten())
                .map(|p| p.port)
                .collect();
            let pods: Api<Pod> = Api::namespaced(client, "default");
            let pod_ips: HashSet<String> = pods
                .list(&ListParams::default().labels("app=web"))
                .await
                .ok()?
                .items
                .iter()
                .filter(|p| is_ready(p))
                .filter_map(|p| p.status.as_ref()?.pod_ip.clone())
                .collect();
            (ips.len() == want && ips == pod_ips && ports.iter().all(|p| *p == 8080)).then_some(())
        }
    };
    eventually("4 endpoints on port 8080", Duration::from_secs(30), || {
        check(4)
    })
    .await;
    c.kubectl(&["scale", "deploy/web", "--replicas=2"]);
    eventually("2 endpoints", Duration::from_secs(30), || check(2)).await;
}
