//! The `pods/{name}/eviction` subresource on a real apiserver and etcd: a graceful
//! delete through a `policy/v1` Eviction (and `policy/v1beta1`), its `Success` Status,
//! the `DisruptionTarget` condition, dry runs, preconditions, and the refusals (404 for
//! a missing pod, 400 for a body naming another pod, 405 for anything but POST).

use reqwest::{Method, StatusCode};
use rkube_tests::{Etcd, TestApiserver};
use serde_json::{json, Value};

const PODS: &str = "/api/v1/namespaces/default/pods";

struct Cluster {
    _etcd: Etcd,
    api: TestApiserver,
}

async fn cluster() -> Cluster {
    let etcd = Etcd::start().await.expect("start etcd");
    let api = TestApiserver::start(&etcd).await.expect("start apiserver");
    Cluster { _etcd: etcd, api }
}

impl Cluster {
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut req = self
            .api
            .http()
            .request(method, format!("{}{path}", self.api.url()));
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let resp = req.send().await.expect("request reaches the apiserver");
        let code = resp.status();
        let text = resp.text().await.expect("read body");
        (
            code,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Creates a pod with a 20 s grace period, bound to `node` when given.
    async fn pod(&self, name: &str, node: Option<&str>) -> Value {
        let mut p = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"containers": [{"name": "main", "image": "busybox:1.36"}],
                     "terminationGracePeriodSeconds": 20}});
        if let Some(n) = node {
            p["spec"]["nodeName"] = json!(n);
        }
        let (code, body) = self.call(Method::POST, PODS, Some(p)).await;
        assert_eq!(code, StatusCode::CREATED, "create pod {name}: {body}");
        body
    }

    async fn get_pod(&self, name: &str) -> (StatusCode, Value) {
        self.call(Method::GET, &format!("{PODS}/{name}"), None)
            .await
    }

    async fn evict(&self, name: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, &format!("{PODS}/{name}/eviction"), Some(body))
            .await
    }
}

fn eviction(name: &str) -> Value {
    json!({"apiVersion": "policy/v1", "kind": "Eviction",
           "metadata": {"name": name, "namespace": "default"}})
}

fn disruption_target(pod: &Value) -> Option<&Value> {
    pod["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "DisruptionTarget")
}

#[tokio::test]
async fn eviction_deletes_bound_pods_gracefully() {
    let c = cluster().await;
    let created = c.pod("web", Some("node-1")).await;

    let (code, body) = c.evict("web", eviction("web")).await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    assert_eq!(
        body,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201})
    );
    let (code, pod) = c.get_pod("web").await;
    assert_eq!(
        code,
        StatusCode::OK,
        "a bound pod waits for its node: {pod}"
    );
    assert!(
        pod["metadata"]["deletionTimestamp"].is_string(),
        "marked for deletion: {pod}"
    );
    assert_eq!(
        pod["metadata"]["deletionGracePeriodSeconds"], 20,
        "the pod's own grace period"
    );
    assert_eq!(pod["metadata"]["uid"], created["metadata"]["uid"]);
    let condition = disruption_target(&pod).expect("DisruptionTarget condition");
    assert_eq!(
        (
            &condition["status"],
            &condition["reason"],
            &condition["message"]
        ),
        (
            &json!("True"),
            &json!("EvictionByEvictionAPI"),
            &json!("Eviction API: evicting")
        )
    );
    assert!(condition["lastTransitionTime"].is_string(), "{condition}");

    // Evicting a terminating pod again is accepted, as in Kubernetes; the deleteOptions
    // shorten the grace period, and zero confirms the deletion.
    let mut now = eviction("web");
    now["deleteOptions"] = json!({"kind": "DeleteOptions", "apiVersion": "v1",
        "gracePeriodSeconds": 0, "preconditions": {"uid": created["metadata"]["uid"]}});
    let (code, body) = c.evict("web", now).await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    let (code, gone) = c.get_pod("web").await;
    assert_eq!(code, StatusCode::NOT_FOUND, "{gone}");
}

#[tokio::test]
async fn eviction_removes_unbound_pods_at_once_and_takes_v1beta1() {
    let c = cluster().await;
    c.pod("pending", None).await;
    let mut beta = eviction("pending");
    beta["apiVersion"] = json!("policy/v1beta1");
    let (code, body) = c.evict("pending", beta).await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    assert_eq!(body["status"], "Success");
    let (code, _) = c.get_pod("pending").await;
    assert_eq!(
        code,
        StatusCode::NOT_FOUND,
        "an unscheduled pod goes at once"
    );
}

#[tokio::test]
async fn eviction_refuses_what_kubernetes_refuses() {
    let c = cluster().await;
    let created = c.pod("keep", Some("node-1")).await;
    let untouched = |pod: &Value| {
        pod["metadata"]["deletionTimestamp"].is_null() && disruption_target(pod).is_none()
    };

    let (code, body) = c.evict("nope", eviction("nope")).await;
    assert_eq!(code, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["reason"], "NotFound");
    assert_eq!(body["message"], "pods \"nope\" not found");
    assert_eq!(body["details"]["name"], "nope");
    assert_eq!(body["details"]["kind"], "pods");

    let (code, body) = c.evict("keep", eviction("other")).await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["reason"], "BadRequest");
    assert_eq!(
        body["message"],
        "name in URL does not match name in Eviction object"
    );

    let mut elsewhere = eviction("keep");
    elsewhere["metadata"]["namespace"] = json!("kube-system");
    let (code, body) = c.evict("keep", elsewhere).await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");

    let mut stale = eviction("keep");
    stale["deleteOptions"] = json!({"preconditions": {"uid": "not-the-uid"}});
    let (code, body) = c.evict("keep", stale).await;
    assert_eq!(code, StatusCode::CONFLICT, "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("Precondition failed: UID in precondition: not-the-uid")),
        "{body}"
    );
    let mut old_rv = eviction("keep");
    old_rv["deleteOptions"] = json!({"preconditions": {"resourceVersion": "1"}});
    let (code, body) = c.evict("keep", old_rv).await;
    assert_eq!(code, StatusCode::CONFLICT, "{body}");

    let (code, body) = c
        .call(Method::GET, &format!("{PODS}/keep/eviction"), None)
        .await;
    assert_eq!(code, StatusCode::METHOD_NOT_ALLOWED, "{body}");

    // A dry run answers as the eviction would, and changes nothing.
    let (code, body) = c
        .call(
            Method::POST,
            &format!("{PODS}/keep/eviction?dryRun=All"),
            Some(eviction("keep")),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{body}");

    let (code, pod) = c.get_pod("keep").await;
    assert_eq!(code, StatusCode::OK);
    assert!(untouched(&pod), "refused evictions change nothing: {pod}");
    assert_eq!(
        pod["metadata"]["resourceVersion"], created["metadata"]["resourceVersion"],
        "nothing was written"
    );

    // The right resourceVersion precondition holds across the condition's write.
    let mut current = eviction("keep");
    current["deleteOptions"] =
        json!({"preconditions": {"resourceVersion": created["metadata"]["resourceVersion"]}});
    let (code, body) = c.evict("keep", current).await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    let (_, pod) = c.get_pod("keep").await;
    assert!(pod["metadata"]["deletionTimestamp"].is_string(), "{pod}");
}

#[tokio::test]
async fn discovery_offers_eviction_to_kubectl_drain() {
    let c = cluster().await;
    let (code, core) = c.call(Method::GET, "/api/v1", None).await;
    assert_eq!(code, StatusCode::OK);
    let eviction = core["resources"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["name"] == "pods/eviction")
        .unwrap_or_else(|| panic!("pods/eviction not in {core}"));
    assert_eq!(eviction["group"], "policy");
    assert_eq!(eviction["version"], "v1");
    assert_eq!(eviction["kind"], "Eviction");
    assert_eq!(eviction["verbs"], json!(["create"]));
}
