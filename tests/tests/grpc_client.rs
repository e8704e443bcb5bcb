//! rkube-client over the real gRPC API of a real apiserver on a real etcd: typed CRUD,
//! conflicts, binding, and the watcher feeding a reflector store.

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Binding, ConfigMap, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use rkube_client::{
    reflector, store, watcher, Api, Client, DeleteParams, ListParams, ObjectRef, WatcherConfig,
};
use rkube_ctl::pki::Component;
use rkube_tests::{Etcd, TestApiserver};

async fn connect(api: &TestApiserver) -> Client {
    Client::connect(api.client_config(Component::Scheduler))
        .await
        .expect("connect over gRPC")
}

fn cm(name: &str, value: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some([("app".to_string(), "grpc".to_string())].into()),
            ..Default::default()
        },
        data: Some([("k".to_string(), value.to_string())].into()),
        ..Default::default()
    }
}

#[tokio::test]
async fn typed_crud_and_conflicts() {
    let etcd = Etcd::start().await.expect("etcd");
    let api = TestApiserver::start(&etcd).await.expect("apiserver");
    let cms: Api<ConfigMap> = Api::namespaced(connect(&api).await, "default");

    let created = cms.create(&cm("a", "1")).await.expect("create");
    assert!(created.metadata.uid.is_some());
    let err = cms.create(&cm("a", "1")).await.expect_err("exists");
    assert!(err.is_already_exists(), "{err}");

    let mut changed = created.clone();
    changed.data = Some([("k".to_string(), "2".to_string())].into());
    let updated = cms.replace("a", &changed).await.expect("replace");
    assert_eq!(
        updated
            .data
            .as_ref()
            .and_then(|d| d.get("k"))
            .map(String::as_str),
        Some("2")
    );
    let err = cms
        .replace("a", &changed)
        .await
        .expect_err("stale resourceVersion");
    assert!(err.is_conflict(), "{err}");

    let list = cms
        .list(&ListParams::default().labels("app=grpc"))
        .await
        .expect("list");
    assert_eq!(list.items.len(), 1);
    let err = cms
        .list(&ListParams::default().fields("spec.nope=x"))
        .await
        .expect_err("bad field");
    assert!(
        err.is_invalid() || err.status().is_some_and(|s| s.code == 400),
        "{err}"
    );

    cms.delete("a", &DeleteParams::default())
        .await
        .expect("delete");
    let err = cms.get("a").await.expect_err("gone");
    assert!(err.is_not_found(), "{err}");
    assert!(cms.get_opt("a").await.expect("get_opt").is_none());

    let pods: Api<Pod> = Api::namespaced(connect(&api).await, "default");
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]}
    }))
    .expect("pod");
    pods.create(&pod).await.expect("create pod");
    let binding = Binding {
        metadata: ObjectMeta {
            name: Some("p".into()),
            ..Default::default()
        },
        target: ObjectReference {
            kind: Some("Node".into()),
            name: Some("node-1".into()),
            ..Default::default()
        },
    };
    pods.bind("p", &binding).await.expect("bind");
    let bound = pods.get("p").await.expect("get pod");
    assert_eq!(
        bound.spec.and_then(|s| s.node_name).as_deref(),
        Some("node-1")
    );
    let err = pods.bind("p", &binding).await.expect_err("already bound");
    assert!(err.is_conflict(), "{err}");
}

#[tokio::test]
async fn watcher_feeds_a_store() {
    let etcd = Etcd::start().await.expect("etcd");
    let api = TestApiserver::start(&etcd).await.expect("apiserver");
    let client = connect(&api).await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    cms.create(&cm("before", "0")).await.expect("create");

    let (reader, writer) = store::store();
    let mut events = reflector(writer, watcher(cms.clone(), WatcherConfig::default())).boxed();
    let drive = tokio::spawn(async move { while events.next().await.is_some() {} });
    tokio::time::timeout(Duration::from_secs(10), reader.wait_until_ready())
        .await
        .expect("ready in time")
        .expect("ready");
    assert!(reader
        .get(&ObjectRef::new("before").within("default"))
        .is_some());

    for i in 0..20 {
        cms.create(&cm(&format!("c{i}"), "x"))
            .await
            .expect("create");
    }
    let mut changed = cms.get("c3").await.expect("get");
    changed.data = Some([("k".to_string(), "changed".to_string())].into());
    cms.replace("c3", &changed).await.expect("replace");
    cms.delete("before", &DeleteParams::default())
        .await
        .expect("delete");

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let c3 = reader.get(&ObjectRef::new("c3").within("default"));
        let done = reader.len() == 20
            && reader
                .get(&ObjectRef::new("before").within("default"))
                .is_none()
            && c3
                .and_then(|c| c.data.clone())
                .and_then(|d| d.get("k").cloned())
                .as_deref()
                == Some("changed");
        if done {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "store did not converge: {} objects",
            reader.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drive.abort();
}
