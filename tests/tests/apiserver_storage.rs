//! Integration tests of the apiserver on a real etcd: CRUD and conflicts, generations,
//! lists with selectors and pages, watches that resume and expire, finalizers, graceful
//! pod deletion, terminating namespaces, Service allocations, validation and limits.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use rkube_tests::{Etcd, TestApiserver};
use serde_json::{json, Value};

struct Cluster {
    _etcd: Etcd,
    api: TestApiserver,
}

async fn cluster() -> Cluster {
    cluster_with(|_| {}).await
}

async fn cluster_with(f: impl FnOnce(&mut rkube_apiserver::Config)) -> Cluster {
    let etcd = Etcd::start().await.expect("start etcd");
    let api = TestApiserver::start_with(&etcd, f)
        .await
        .expect("start apiserver");
    Cluster { _etcd: etcd, api }
}

impl Cluster {
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        self.call_as(method, path, body, "application/json").await
    }

    async fn call_as(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        content_type: &str,
    ) -> (StatusCode, Value) {
        let mut req = self
            .api
            .http()
            .request(method, format!("{}{path}", self.api.url()));
        if let Some(b) = body {
            req = req.header("content-type", content_type).body(b.to_string());
        }
        let resp = req.send().await.expect("request reaches the apiserver");
        let code = resp.status();
        let text = resp.text().await.expect("read body");
        (
            code,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Reads a watch until `n` events arrived or `wait` passed.
    async fn watch(&self, path: &str, n: usize, wait: Duration) -> Vec<Value> {
        let mut resp = self
            .api
            .http()
            .get(format!("{}{path}", self.api.url()))
            .send()
            .await
            .expect("watch request");
        assert_eq!(resp.status(), StatusCode::OK, "watch {path}");
        let mut events = Vec::new();
        let mut buf = Vec::new();
        let deadline = tokio::time::Instant::now() + wait;
        while events.len() < n {
            let chunk = match tokio::time::timeout_at(deadline, resp.chunk()).await {
                Ok(Ok(Some(c))) => c,
                _ => break,
            };
            buf.extend_from_slice(&chunk);
            while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=pos).collect();
                events
                    .push(serde_json::from_slice::<Value>(&line).expect("one JSON event per line"));
            }
        }
        events
    }
}

fn cm(name: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "labels": labels}, "data": {"k": "v"}})
}

fn rv(obj: &Value) -> String {
    obj["metadata"]["resourceVersion"]
        .as_str()
        .expect("resourceVersion")
        .to_string()
}

const CMS: &str = "/api/v1/namespaces/default/configmaps";

#[tokio::test]
async fn crud_with_conflicts() {
    let c = cluster().await;
    let (code, created) = c.call(Method::POST, CMS, Some(cm("a", json!({})))).await;
    assert_eq!(code, StatusCode::CREATED, "{created}");
    assert!(created["metadata"]["uid"]
        .as_str()
        .is_some_and(|u| u.len() == 36));
    assert!(created["metadata"]["creationTimestamp"].is_string());
    let first_rv = rv(&created);

    let (code, again) = c.call(Method::POST, CMS, Some(cm("a", json!({})))).await;
    assert_eq!(code, StatusCode::CONFLICT);
    assert_eq!(again["reason"], "AlreadyExists");
    assert_eq!(again["message"], "configmaps \"a\" already exists");

    let mut changed = created.clone();
    changed["data"]["k"] = json!("w");
    let (code, updated) = c
        .call(Method::PUT, &format!("{CMS}/a"), Some(changed.clone()))
        .await;
    assert_eq!(code, StatusCode::OK, "{updated}");
    assert_eq!(updated["data"]["k"], "w");
    assert!(
        rv(&updated).parse::<i64>().expect("numeric") > first_rv.parse::<i64>().expect("numeric")
    );

    // The same body again carries the old resourceVersion: a conflict.
    let (code, conflict) = c
        .call(Method::PUT, &format!("{CMS}/a"), Some(changed))
        .await;
    assert_eq!(code, StatusCode::CONFLICT);
    assert_eq!(conflict["reason"], "Conflict");

    // A no-op update does not bump the resourceVersion.
    let (code, same) = c
        .call(Method::PUT, &format!("{CMS}/a"), Some(updated.clone()))
        .await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(rv(&same), rv(&updated));

    let (code, _) = c.call(Method::DELETE, &format!("{CMS}/a"), None).await;
    assert_eq!(code, StatusCode::OK);
    let (code, gone) = c.call(Method::GET, &format!("{CMS}/a"), None).await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    assert_eq!(gone["message"], "configmaps \"a\" not found");
    let (code, _) = c
        .call(
            Method::GET,
            "/apis/apps/v1/namespaces/default/deployments/nope",
            None,
        )
        .await;
    assert_eq!(code, StatusCode::NOT_FOUND);
}

fn deployment(name: &str, replicas: i64) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "web", "image": "hello:1.0"}]}}}})
}

#[tokio::test]
async fn generation_follows_spec_changes_only() {
    let c = cluster().await;
    let path = "/apis/apps/v1/namespaces/default/deployments";
    let (code, d) = c.call(Method::POST, path, Some(deployment("web", 1))).await;
    assert_eq!(code, StatusCode::CREATED, "{d}");
    assert_eq!(d["metadata"]["generation"], 1);
    assert_eq!(
        d["spec"]["strategy"]["type"], "RollingUpdate",
        "defaults applied"
    );

    let (code, d) = c
        .call_as(
            Method::PATCH,
            &format!("{path}/web"),
            Some(json!({"metadata": {"labels": {"x": "y"}}})),
            "application/merge-patch+json",
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{d}");
    assert_eq!(d["metadata"]["generation"], 1, "labels are not spec");

    let (code, d) = c
        .call_as(
            Method::PATCH,
            &format!("{path}/web/scale"),
            Some(json!({"spec": {"replicas": 3}})),
            "application/merge-patch+json",
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{d}");
    assert_eq!(d["kind"], "Scale");
    assert_eq!(d["spec"]["replicas"], 3);
    assert_eq!(d["status"]["selector"], "app=web");
    let (_, d) = c.call(Method::GET, &format!("{path}/web"), None).await;
    assert_eq!(d["metadata"]["generation"], 2);
    assert_eq!(d["spec"]["replicas"], 3);

    let mut with_status = d.clone();
    with_status["status"] = json!({"replicas": 3, "observedGeneration": 2});
    let (code, s) = c
        .call(
            Method::PUT,
            &format!("{path}/web/status"),
            Some(with_status.clone()),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{s}");
    assert_eq!(s["status"]["replicas"], 3);
    assert_eq!(s["metadata"]["generation"], 2, "status is not spec");

    // Through the main resource, status changes are ignored.
    let mut sneaky = s.clone();
    sneaky["status"]["replicas"] = json!(99);
    sneaky["spec"]["replicas"] = json!(4);
    let (code, m) = c
        .call(Method::PUT, &format!("{path}/web"), Some(sneaky))
        .await;
    assert_eq!(code, StatusCode::OK, "{m}");
    assert_eq!(m["status"]["replicas"], 3);
    assert_eq!(m["metadata"]["generation"], 3);
}

#[tokio::test]
async fn lists_page_and_select() {
    let c = cluster().await;
    for i in 0..5 {
        let tier = if i % 2 == 0 { "web" } else { "db" };
        let (code, body) = c
            .call(
                Method::POST,
                CMS,
                Some(cm(&format!("cm-{i}"), json!({"tier": tier}))),
            )
            .await;
        assert_eq!(code, StatusCode::CREATED, "{body}");
    }
    let (code, page1) = c.call(Method::GET, &format!("{CMS}?limit=2"), None).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(page1["kind"], "ConfigMapList");
    assert_eq!(page1["items"].as_array().map(Vec::len), Some(2), "{page1}");
    let list_rv = page1["metadata"]["resourceVersion"]
        .as_str()
        .expect("list rv")
        .to_string();
    let mut names: Vec<String> = page1["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| i["metadata"]["name"].as_str().unwrap_or("").to_string())
        .collect();
    let mut token = page1["metadata"]["continue"].as_str().map(String::from);
    // A write between pages must not show up: pages are a snapshot.
    c.call(Method::POST, CMS, Some(cm("late", json!({})))).await;
    while let Some(t) = token {
        let (code, page) = c
            .call(Method::GET, &format!("{CMS}?limit=2&continue={t}"), None)
            .await;
        assert_eq!(code, StatusCode::OK, "{page}");
        assert_eq!(page["metadata"]["resourceVersion"], list_rv.as_str());
        names.extend(
            page["items"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|i| i["metadata"]["name"].as_str().unwrap_or("").to_string()),
        );
        token = page["metadata"]["continue"].as_str().map(String::from);
    }
    assert_eq!(names, vec!["cm-0", "cm-1", "cm-2", "cm-3", "cm-4"]);

    let (_, web) = c
        .call(
            Method::GET,
            &format!("{CMS}?labelSelector=tier%3Dweb"),
            None,
        )
        .await;
    assert_eq!(web["items"].as_array().map(Vec::len), Some(3));
    let (_, not_web) = c
        .call(
            Method::GET,
            &format!("{CMS}?labelSelector=tier%20notin%20(web)"),
            None,
        )
        .await;
    assert_eq!(
        not_web["items"].as_array().map(Vec::len),
        Some(3),
        "db x2 + late (no label)"
    );
    let (_, one) = c
        .call(
            Method::GET,
            &format!("{CMS}?fieldSelector=metadata.name%3Dcm-3"),
            None,
        )
        .await;
    assert_eq!(one["items"][0]["metadata"]["name"], "cm-3");
    assert_eq!(one["items"].as_array().map(Vec::len), Some(1));
    let (code, bad) = c
        .call(
            Method::GET,
            &format!("{CMS}?fieldSelector=spec.nope%3Dx"),
            None,
        )
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{bad}");
    let (code, _) = c
        .call(Method::GET, &format!("{CMS}?labelSelector=%3D%3D%3D"), None)
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    let (_, all) = c.call(Method::GET, "/api/v1/configmaps", None).await;
    assert_eq!(all["items"].as_array().map(Vec::len), Some(6));
}

#[tokio::test]
async fn watches_resume_from_a_resource_version() {
    let c = cluster().await;
    let (_, list) = c.call(Method::GET, CMS, None).await;
    let start = list["metadata"]["resourceVersion"]
        .as_str()
        .expect("rv")
        .to_string();
    let mut rvs = Vec::new();
    for name in ["w1", "w2", "w3"] {
        let (_, o) = c
            .call(Method::POST, CMS, Some(cm(name, json!({"w": "yes"}))))
            .await;
        rvs.push(rv(&o));
    }
    let events = c
        .watch(
            &format!("{CMS}?watch=true&resourceVersion={start}"),
            3,
            Duration::from_secs(10),
        )
        .await;
    let seen: Vec<(String, String)> = events
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap_or("").to_string(),
                e["object"]["metadata"]["name"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            ("ADDED".into(), "w1".into()),
            ("ADDED".into(), "w2".into()),
            ("ADDED".into(), "w3".into())
        ]
    );

    // Resuming after w2 yields exactly w3, then live changes.
    let path = format!("{CMS}?watch=true&resourceVersion={}", rvs[1]);
    let c2 = &c;
    let (events, _) = tokio::join!(c.watch(&path, 3, Duration::from_secs(10)), async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (_, o) = c2.call(Method::GET, &format!("{CMS}/w1"), None).await;
        let mut o = o;
        o["data"]["k"] = json!("changed");
        c2.call(Method::PUT, &format!("{CMS}/w1"), Some(o)).await;
        c2.call(Method::DELETE, &format!("{CMS}/w2"), None).await;
    });
    let seen: Vec<(String, String)> = events
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap_or("").to_string(),
                e["object"]["metadata"]["name"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            ("ADDED".into(), "w3".into()),
            ("MODIFIED".into(), "w1".into()),
            ("DELETED".into(), "w2".into())
        ]
    );

    // From 0: the current state as synthetic ADDED events.
    let events = c
        .watch(
            &format!("{CMS}?watch=true&resourceVersion=0&labelSelector=w%3Dyes"),
            2,
            Duration::from_secs(10),
        )
        .await;
    let names: Vec<&str> = events
        .iter()
        .map(|e| e["object"]["metadata"]["name"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(names, vec!["w1", "w3"]);
    assert!(events.iter().all(|e| e["type"] == "ADDED"));

    // Bookmarks when asked.
    let events = c.watch(&format!("{CMS}?watch=true&resourceVersion={}&allowWatchBookmarks=true&fieldSelector=metadata.name%3Dnone", rvs[2]), 1, Duration::from_secs(15)).await;
    assert_eq!(
        events.first().map(|e| e["type"].clone()),
        Some(json!("BOOKMARK"))
    );
}

#[tokio::test]
async fn compaction_expires_old_resource_versions() {
    let c = cluster_with(|cfg| cfg.etcd_compaction_interval = 1).await;
    let (_, first) = c.call(Method::POST, CMS, Some(cm("old", json!({})))).await;
    let old_rv = rv(&first);
    for name in ["x1", "x2", "x3"] {
        c.call(Method::POST, CMS, Some(cm(name, json!({})))).await;
    }
    let (_, page) = c.call(Method::GET, &format!("{CMS}?limit=1"), None).await;
    let token = page["metadata"]["continue"]
        .as_str()
        .unwrap_or_else(|| panic!("a continue token: {page}"))
        .to_string();
    // The compactor compacts to the revision it saw one interval earlier.
    let mut expired = None;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        c.call(
            Method::POST,
            CMS,
            Some(cm(&format!("tick-{}", rand_suffix()), json!({}))),
        )
        .await;
        let events = c
            .watch(
                &format!("{CMS}?watch=true&resourceVersion={old_rv}"),
                1,
                Duration::from_millis(500),
            )
            .await;
        if let Some(e) = events.first().filter(|e| e["type"] == "ERROR") {
            expired = Some(e.clone());
            break;
        }
    }
    let expired = expired.expect("a watch from a compacted revision gets an ERROR event");
    assert_eq!(expired["object"]["code"], 410);
    assert_eq!(expired["object"]["reason"], "Expired");
    let (code, body) = c
        .call(
            Method::GET,
            &format!("{CMS}?limit=1&continue={token}"),
            None,
        )
        .await;
    assert_eq!(code, StatusCode::GONE, "{body}");
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

#[tokio::test]
async fn finalizers_hold_deletion() {
    let c = cluster().await;
    let mut obj = cm("held", json!({}));
    obj["metadata"]["finalizers"] = json!(["example.com/hold"]);
    c.call(Method::POST, CMS, Some(obj)).await;
    let (code, marked) = c
        .call(
            Method::DELETE,
            &format!("{CMS}/held"),
            Some(json!({"propagationPolicy": "Background"})),
        )
        .await;
    assert_eq!(code, StatusCode::OK);
    assert!(
        marked["metadata"]["deletionTimestamp"].is_string(),
        "{marked}"
    );
    let (code, still) = c.call(Method::GET, &format!("{CMS}/held"), None).await;
    assert_eq!(code, StatusCode::OK);
    assert!(still["metadata"]["deletionTimestamp"].is_string());
    let (code, _) = c
        .call_as(
            Method::PATCH,
            &format!("{CMS}/held"),
            Some(json!({"metadata": {"finalizers": null}})),
            "application/merge-patch+json",
        )
        .await;
    assert_eq!(code, StatusCode::OK);
    let (code, _) = c.call(Method::GET, &format!("{CMS}/held"), None).await;
    assert_eq!(
        code,
        StatusCode::NOT_FOUND,
        "removing the last finalizer removes the object"
    );
}

fn pod(name: &str, node: Option<&str>) -> Value {
    let mut p = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"containers": [{"name": "main", "image": "busybox:1.36"}], "terminationGracePeriodSeconds": 20}});
    if let Some(n) = node {
        p["spec"]["nodeName"] = json!(n);
    }
    p
}

#[tokio::test]
async fn pods_are_deleted_gracefully() {
    let c = cluster().await;
    let pods = "/api/v1/namespaces/default/pods";
    let (code, body) = c
        .call(Method::POST, pods, Some(pod("running", Some("node-1"))))
        .await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    assert_eq!(body["status"]["phase"], "Pending");
    c.call(Method::POST, pods, Some(pod("pending", None))).await;

    let (_, deleted) = c
        .call(Method::DELETE, &format!("{pods}/pending"), None)
        .await;
    assert_eq!(deleted["metadata"]["name"], "pending");
    let (code, _) = c.call(Method::GET, &format!("{pods}/pending"), None).await;
    assert_eq!(
        code,
        StatusCode::NOT_FOUND,
        "an unscheduled pod goes at once"
    );

    let (code, marked) = c
        .call(Method::DELETE, &format!("{pods}/running"), None)
        .await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(marked["metadata"]["deletionGracePeriodSeconds"], 20);
    let (code, _) = c.call(Method::GET, &format!("{pods}/running"), None).await;
    assert_eq!(code, StatusCode::OK, "a bound pod waits for its node");
    let (code, _) = c
        .call(
            Method::DELETE,
            &format!("{pods}/running?gracePeriodSeconds=0"),
            None,
        )
        .await;
    assert_eq!(code, StatusCode::OK);
    let (code, _) = c.call(Method::GET, &format!("{pods}/running"), None).await;
    assert_eq!(
        code,
        StatusCode::NOT_FOUND,
        "grace period 0 confirms the deletion"
    );

    // Binding sets the node once.
    c.call(Method::POST, pods, Some(pod("tobind", None))).await;
    let binding = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "tobind"}, "target": {"kind": "Node", "name": "node-2"}});
    let (code, _) = c
        .call(
            Method::POST,
            &format!("{pods}/tobind/binding"),
            Some(binding.clone()),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED);
    let (_, bound) = c.call(Method::GET, &format!("{pods}/tobind"), None).await;
    assert_eq!(bound["spec"]["nodeName"], "node-2");
    let (code, _) = c
        .call(
            Method::POST,
            &format!("{pods}/tobind/binding"),
            Some(binding),
        )
        .await;
    assert_eq!(code, StatusCode::CONFLICT);
}

#[tokio::test]
async fn terminating_namespaces_refuse_new_objects() {
    let c = cluster().await;
    let (code, _) = c
        .call(Method::GET, "/api/v1/namespaces/kube-system", None)
        .await;
    assert_eq!(
        code,
        StatusCode::OK,
        "system namespaces exist from the start"
    );
    let (code, body) = c
        .call(
            Method::POST,
            "/api/v1/namespaces/nope/configmaps",
            Some(cm("x", json!({}))),
        )
        .await;
    assert_eq!(code, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["message"], "namespaces \"nope\" not found");

    c.call(
        Method::POST,
        "/api/v1/namespaces",
        Some(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team"}})),
    )
    .await;
    let (code, _) = c
        .call(
            Method::POST,
            "/api/v1/namespaces/team/configmaps",
            Some(cm("before", json!({}))),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED);
    let (code, ns) = c
        .call(Method::DELETE, "/api/v1/namespaces/team", None)
        .await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(ns["status"]["phase"], "Terminating");
    let (code, body) = c
        .call(
            Method::POST,
            "/api/v1/namespaces/team/configmaps",
            Some(cm("after", json!({}))),
        )
        .await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("because it is being terminated")),
        "{body}"
    );
    let (code, _) = c
        .call(Method::DELETE, "/api/v1/namespaces/default", None)
        .await;
    assert_eq!(code, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn services_get_cluster_ips_and_node_ports() {
    let c = cluster().await;
    let svcs = "/api/v1/namespaces/default/services";
    let svc = |name: &str, node_port: Option<i64>| {
        let mut port = json!({"port": 80, "targetPort": 8080});
        if let Some(np) = node_port {
            port["nodePort"] = json!(np);
        }
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": {"type": "NodePort", "selector": {"app": "x"}, "ports": [port]}})
    };
    let (code, a) = c
        .call(Method::POST, svcs, Some(svc("a", Some(30080))))
        .await;
    assert_eq!(code, StatusCode::CREATED, "{a}");
    let ip: std::net::Ipv4Addr = a["spec"]["clusterIP"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("cluster IP");
    assert_eq!(ip.octets()[0], 10);
    assert_eq!(a["spec"]["ports"][0]["nodePort"], 30080);
    let (code, b) = c
        .call(Method::POST, svcs, Some(svc("b", Some(30080))))
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
    assert_eq!(b["details"]["causes"][0]["field"], "spec.ports[0].nodePort");
    let (code, out) = c.call(Method::POST, svcs, Some(svc("c", Some(80)))).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{out}");
    let (code, auto) = c.call(Method::POST, svcs, Some(svc("d", None))).await;
    assert_eq!(code, StatusCode::CREATED);
    let np = auto["spec"]["ports"][0]["nodePort"]
        .as_i64()
        .expect("allocated node port");
    assert!((30000..=32767).contains(&np));
    assert_ne!(auto["spec"]["clusterIP"], a["spec"]["clusterIP"]);
    c.call(Method::DELETE, &format!("{svcs}/a"), None).await;
    let (code, b) = c
        .call(Method::POST, svcs, Some(svc("b", Some(30080))))
        .await;
    assert_eq!(
        code,
        StatusCode::CREATED,
        "a released node port can be taken again: {b}"
    );
}

#[tokio::test]
async fn bad_input_is_refused_with_the_field_named() {
    let c = cluster().await;
    let path = "/apis/apps/v1/namespaces/default/deployments";
    let (code, body) = c
        .call(Method::POST, path, Some(deployment("bad", -1)))
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["reason"], "Invalid");
    assert_eq!(body["details"]["kind"], "Deployment");
    assert!(
        body["details"]["causes"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["field"] == "spec.replicas"),
        "{body}"
    );
    let (code, _) = c.call(Method::GET, &format!("{path}/bad"), None).await;
    assert_eq!(code, StatusCode::NOT_FOUND, "nothing invalid is written");

    let mut unknown = deployment("strict", 1);
    unknown["spec"]["colour"] = json!("red");
    let (code, body) = c
        .call(
            Method::POST,
            &format!("{path}?fieldValidation=Strict"),
            Some(unknown.clone()),
        )
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("unknown field \"spec.colour\"")),
        "{body}"
    );
    let resp = c
        .api
        .http()
        .post(format!("{}{path}?fieldValidation=Warn", c.api.url()))
        .header("content-type", "application/json")
        .body(unknown.to_string())
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), StatusCode::CREATED);
    let warning = resp
        .headers()
        .get("warning")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    assert!(warning.contains("unknown field"), "{warning}");

    let (code, body) = c
        .call_as(
            Method::POST,
            CMS,
            Some(json!("{not json")),
            "application/json",
        )
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");
    let huge = cm("huge", json!({}));
    let mut huge = huge;
    huge["data"]["k"] = json!("x".repeat(3 * 1024 * 1024 + 1));
    let (code, _) = c.call(Method::POST, CMS, Some(huge)).await;
    assert_eq!(code, StatusCode::PAYLOAD_TOO_LARGE);
    let (code, _) = c
        .call_as(Method::POST, CMS, Some(cm("x", json!({}))), "text/csv")
        .await;
    assert_eq!(code, StatusCode::UNSUPPORTED_MEDIA_TYPE);
}

#[tokio::test]
async fn requests_without_credentials_are_refused() {
    let c = cluster().await;
    let resp = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(c.api.ca_pem().as_bytes()).expect("ca"),
        )
        .build()
        .expect("client")
        .get(format!("{}/api/v1/namespaces", c.api.url()))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let (code, _) = c.call(Method::GET, "/api/v1/namespaces", None).await;
    assert_eq!(code, StatusCode::OK);
}

/// A second apiserver on the same etcd (a restart, or a replica) loads what the first
/// stored — including its own bookkeeping keys, which hold no object.
#[tokio::test]
async fn a_restarted_apiserver_loads_the_stored_objects() {
    let etcd = Etcd::start().await.expect("start etcd");
    let first = TestApiserver::start(&etcd).await.expect("start apiserver");
    let resp = first
        .http()
        .post(format!("{}{CMS}", first.url()))
        .header("content-type", "application/json")
        .body(cm("kept", json!({})).to_string())
        .send()
        .await
        .expect("create");
    assert_eq!(resp.status(), StatusCode::CREATED);
    // A consistent list writes the tick key.
    let resp = first
        .http()
        .get(format!("{}{CMS}", first.url()))
        .send()
        .await
        .expect("list");
    assert_eq!(resp.status(), StatusCode::OK);
    drop(first);

    let second = TestApiserver::start(&etcd)
        .await
        .expect("an apiserver starts on an etcd that holds a tick key");
    let resp = second
        .http()
        .get(format!("{}{CMS}/kept", second.url()))
        .send()
        .await
        .expect("get");
    assert_eq!(resp.status(), StatusCode::OK);
}

const EVENTS: &str = "/api/v1/namespaces/default/events";

fn event(name: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": name},
        "involvedObject": {"kind": "Pod", "name": "web", "namespace": "default"},
        "reason": "Started", "message": "started", "type": "Normal", "count": 1
    })
}

#[tokio::test]
async fn events_expire_after_the_event_ttl() {
    let c = cluster_with(|cfg| cfg.event_ttl = Duration::from_secs(2)).await;
    let (_, list) = c.call(Method::GET, EVENTS, None).await;
    let from = list["metadata"]["resourceVersion"]
        .as_str()
        .expect("list resourceVersion")
        .to_string();
    let (code, created) = c.call(Method::POST, EVENTS, Some(event("e1"))).await;
    assert_eq!(code, StatusCode::CREATED, "{created}");
    let (code, body) = c.call(Method::POST, CMS, Some(cm("keep", json!({})))).await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    // An update (a repeat's count) keeps the expiry: written with a lease again.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut repeat = created.clone();
    repeat["count"] = json!(2);
    let (code, body) = c
        .call(Method::PUT, &format!("{EVENTS}/e1"), Some(repeat))
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");

    // Gone within a few seconds of the last write (etcd revokes leases about once a
    // second), and watchers are told.
    let events = c
        .watch(
            &format!("{EVENTS}?watch=true&resourceVersion={from}"),
            3,
            Duration::from_secs(20),
        )
        .await;
    let types: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(types, ["ADDED", "MODIFIED", "DELETED"], "{events:?}");
    assert_eq!(events[2]["object"]["metadata"]["name"], "e1");
    let (code, _) = c.call(Method::GET, &format!("{EVENTS}/e1"), None).await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    // Other kinds do not expire.
    let (code, _) = c.call(Method::GET, &format!("{CMS}/keep"), None).await;
    assert_eq!(code, StatusCode::OK);
}

#[tokio::test]
async fn events_outlive_a_revoked_lease() {
    let c = cluster_with(|cfg| cfg.event_ttl = Duration::from_secs(3600)).await;
    let (code, body) = c.call(Method::POST, EVENTS, Some(event("first"))).await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    // Someone revokes the lease the apiserver shares among events: etcd deletes what
    // it held, and the next event write must not fail for it.
    let mut etcd = etcd_client::Client::connect([c._etcd.endpoint()], None)
        .await
        .expect("connect to etcd");
    let leases = etcd.leases().await.expect("list leases");
    assert_eq!(leases.leases().len(), 1, "one lease shared by the events");
    etcd.lease_revoke(leases.leases()[0].id())
        .await
        .expect("revoke the lease");
    let (code, _) = c.call(Method::GET, &format!("{EVENTS}/first"), None).await;
    assert_eq!(code, StatusCode::NOT_FOUND, "revoking deleted the event");
    let (code, body) = c.call(Method::POST, EVENTS, Some(event("second"))).await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    let leases = etcd.leases().await.expect("list leases");
    assert_eq!(leases.leases().len(), 1, "a new lease holds the new event");
}
