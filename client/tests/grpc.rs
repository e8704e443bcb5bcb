//! The client against an in-memory fake of the `Resources` service, over real sockets:
//! typed CRUD, error mapping, authentication, TLS, watch, watcher and reflector.

mod fake;

use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Binding, ConfigMap, ObjectReference, Pod, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use rkube_client::watcher::{Backoff, Event};
use rkube_client::{
    reflector, store, watcher, Api, Client, ClientConfig, DeleteParams, ListParams, ObjectRef,
    WatchEvent, WatchParams, WatcherConfig,
};
use serde_json::json;
use tonic::Code;

use fake::{serve, Fake, TestServer};

fn cm(name: &str, value: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            ..Default::default()
        },
        data: Some([("v".to_string(), value.to_string())].into()),
        ..Default::default()
    }
}

fn cm_json(name: &str, value: &str) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"v": value}})
}

fn value(cm: &ConfigMap) -> String {
    let v = cm
        .data
        .as_ref()
        .and_then(|d| d.get("v"))
        .cloned()
        .unwrap_or_default();
    format!("{}={v}", cm.metadata.name.as_deref().unwrap_or_default())
}

/// A watcher event as a short string, for whole-sequence comparisons.
fn show(event: &Event<ConfigMap>) -> String {
    match event {
        Event::Init => "Init".to_string(),
        Event::InitApply(cm) => format!("InitApply {}", value(cm)),
        Event::InitDone => "InitDone".to_string(),
        Event::Apply(cm) => format!("Apply {}", value(cm)),
        Event::Delete(cm) => format!("Delete {}", value(cm)),
    }
}

async fn start() -> (Fake, TestServer, Client) {
    let fake = Fake::default();
    let server = serve(fake.clone(), None, None).await;
    let client = Client::connect(ClientConfig::new(server.endpoint.clone()))
        .await
        .expect("connect");
    (fake, server, client)
}

/// The next `n` items of a watcher stream, shown; panics on errors or a stall.
async fn take<S>(events: &mut S, n: usize) -> Vec<String>
where
    S: Stream<Item = rkube_client::watcher::Result<Event<ConfigMap>>> + Unpin,
{
    let mut out = Vec::new();
    while out.len() < n {
        let item = tokio::time::timeout(Duration::from_secs(10), events.next())
            .await
            .unwrap_or_else(|_| panic!("stalled after {out:?}"))
            .expect("watcher streams never end");
        out.push(show(&item.expect("no watcher error")));
    }
    out
}

/// Asserts that nothing more arrives for a while.
async fn assert_quiet<S>(events: &mut S)
where
    S: Stream<Item = rkube_client::watcher::Result<Event<ConfigMap>>> + Unpin,
{
    if let Ok(Some(item)) = tokio::time::timeout(Duration::from_millis(300), events.next()).await {
        panic!("unexpected {:?}", item.map(|e| show(&e)));
    }
}

fn quick() -> WatcherConfig {
    WatcherConfig::default().backoff(Backoff {
        initial: Duration::from_millis(10),
        max: Duration::from_millis(100),
    })
}

#[tokio::test]
async fn typed_crud_round_trip() {
    let (_fake, server, client) = start().await;
    let api = Api::<ConfigMap>::namespaced(client.clone(), "default");

    let created = api.create(&cm("web", "1")).await.expect("create");
    assert_eq!(created.metadata.namespace.as_deref(), Some("default"));
    assert_eq!(created.metadata.uid.as_deref(), Some("uid-web"));
    assert!(created.metadata.resource_version.is_some());
    assert_eq!(api.get("web").await.expect("get"), created);
    api.create(&cm("db", "1")).await.expect("create db");

    let all = api.list(&ListParams::default()).await.expect("list");
    let names: Vec<String> = all.items.iter().map(value).collect();
    assert_eq!(names, ["db=1", "web=1"]);
    assert_eq!(all.resource_version, "2");
    assert_eq!(all.continue_token, None);

    let page = api
        .list(&ListParams::default().limit(1))
        .await
        .expect("page 1");
    assert_eq!(page.items.len(), 1);
    let token = page.continue_token.expect("more pages");
    let page = api
        .list(&ListParams::default().limit(1).continue_token(&token))
        .await
        .expect("page 2");
    assert_eq!(page.items.iter().map(value).collect::<Vec<_>>(), ["web=1"]);
    assert_eq!(page.continue_token, None);

    let mut changed = created.clone();
    changed.data = Some([("v".to_string(), "2".to_string())].into());
    let replaced = api.replace("web", &changed).await.expect("replace");
    assert_eq!(value(&replaced), "web=2");
    assert_ne!(
        replaced.metadata.resource_version,
        created.metadata.resource_version
    );

    let deleted = api
        .delete("web", &DeleteParams::default())
        .await
        .expect("delete");
    assert_eq!(value(&deleted), "web=2");
    assert_eq!(api.get_opt("web").await.expect("get_opt"), None);

    // Cluster-wide Api: create uses the object's namespace.
    let everywhere = Api::<ConfigMap>::all(client);
    let mut other = cm("x", "1");
    other.metadata.namespace = Some("kube-system".to_string());
    everywhere
        .create(&other)
        .await
        .expect("create in kube-system");
    let all = everywhere
        .list(&ListParams::default())
        .await
        .expect("list all");
    assert_eq!(all.items.len(), 2);
    server.stop().await;
}

#[tokio::test]
async fn status_and_binding_go_to_their_subresources() {
    let (_fake, server, client) = start().await;
    let pods = Api::<Pod>::namespaced(client, "default");
    let mut pod = Pod::default();
    pod.metadata.name = Some("p".to_string());
    let pod = pods.create(&pod).await.expect("create pod");

    let mut running = pod.clone();
    running.status = Some(PodStatus {
        phase: Some("Running".to_string()),
        ..Default::default()
    });
    let updated = pods
        .replace_status("p", &running)
        .await
        .expect("replace_status");
    assert_eq!(
        updated.status.and_then(|s| s.phase).as_deref(),
        Some("Running")
    );

    let binding = Binding {
        metadata: ObjectMeta {
            name: Some("p".to_string()),
            ..Default::default()
        },
        target: ObjectReference {
            kind: Some("Node".to_string()),
            name: Some("n1".to_string()),
            ..Default::default()
        },
    };
    pods.bind("p", &binding).await.expect("bind");
    let bound = pods.get("p").await.expect("get");
    assert_eq!(bound.spec.and_then(|s| s.node_name).as_deref(), Some("n1"));
    let again = pods.bind("p", &binding).await.expect_err("already bound");
    assert!(again.is_conflict(), "{again:?}");
    server.stop().await;
}

#[tokio::test]
async fn maps_errors_to_kubernetes_statuses() {
    let (_fake, server, client) = start().await;
    let api = Api::<ConfigMap>::namespaced(client, "default");

    let missing = api.get("missing").await.expect_err("not found");
    assert!(missing.is_not_found(), "{missing:?}");
    let status = missing.status().expect("a Kubernetes status");
    assert_eq!((status.code, status.reason.as_str()), (404, "NotFound"));
    assert!(
        missing
            .to_string()
            .contains("configmaps \"missing\" not found"),
        "{missing}"
    );

    let first = api.create(&cm("web", "1")).await.expect("create");
    let dup = api.create(&cm("web", "1")).await.expect_err("duplicate");
    assert!(dup.is_already_exists() && !dup.is_conflict(), "{dup:?}");

    let mut newer = first.clone();
    newer.data = Some([("v".to_string(), "2".to_string())].into());
    api.replace("web", &newer).await.expect("replace");
    // `first` still carries the old resourceVersion.
    let stale = api.replace("web", &first).await.expect_err("stale write");
    assert!(stale.is_conflict() && !stale.is_not_found(), "{stale:?}");

    let gone = api
        .delete("missing", &DeleteParams::default())
        .await
        .expect_err("delete missing");
    assert!(gone.is_not_found(), "{gone:?}");
    server.stop().await;
}

#[tokio::test]
async fn sends_the_bearer_token() {
    let fake = Fake::default();
    let server = serve(fake, Some("s3cret"), None).await;
    let anonymous = Client::connect(ClientConfig::new(server.endpoint.clone()))
        .await
        .expect("connect");
    let err = Api::<ConfigMap>::namespaced(anonymous, "default")
        .get("x")
        .await
        .expect_err("unauthenticated");
    match &err {
        rkube_client::api::Error::Transport(status) => {
            assert_eq!(status.code(), Code::Unauthenticated)
        }
        other => panic!("want a transport error, got {other:?}"),
    }

    let config = ClientConfig {
        endpoint: server.endpoint.clone(),
        ca_pem: None,
        token: Some("s3cret".to_string()),
    };
    let client = Client::connect(config).await.expect("connect");
    let got = Api::<ConfigMap>::namespaced(client, "default")
        .get_opt("x")
        .await;
    assert_eq!(got.expect("authenticated"), None);
    server.stop().await;
}

#[tokio::test]
async fn speaks_tls_with_the_cluster_ca() {
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).expect("cert");
    let (cert_pem, key_pem) = (cert.cert.pem(), cert.signing_key.serialize_pem());
    let fake = Fake::default();
    let server = serve(fake, None, Some((cert_pem.clone(), key_pem))).await;
    assert!(server.endpoint.starts_with("https://"));

    let config = ClientConfig {
        endpoint: server.endpoint.clone(),
        ca_pem: Some(cert_pem),
        token: None,
    };
    let client = Client::connect(config.clone())
        .await
        .expect("connect over TLS");
    Api::<ConfigMap>::namespaced(client, "default")
        .create(&cm("web", "1"))
        .await
        .expect("create over TLS");

    let stranger = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).expect("cert");
    let untrusted = ClientConfig {
        ca_pem: Some(stranger.cert.pem()),
        ..config
    };
    let err = Client::connect(untrusted)
        .await
        .expect_err("untrusted server");
    assert!(
        matches!(err, rkube_client::client::Error::Connect { .. }),
        "{err:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn watch_streams_typed_events() {
    let (fake, server, client) = start().await;
    let api = Api::<ConfigMap>::namespaced(client, "default");
    let mut stream = api
        .watch(&WatchParams::default(), "0")
        .await
        .expect("watch");
    fake.put("configmaps", "default", cm_json("a", "1"));
    fake.put("configmaps", "default", cm_json("a", "2"));
    fake.remove("configmaps", "default", "a");
    let mut got = Vec::new();
    for _ in 0..3 {
        let event = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("an event")
            .expect("stream open")
            .expect("no error");
        got.push(match event {
            WatchEvent::Added(cm) => format!("Added {}", value(&cm)),
            WatchEvent::Modified(cm) => format!("Modified {}", value(&cm)),
            WatchEvent::Deleted(cm) => format!("Deleted {}", value(&cm)),
            other => format!("{other:?}"),
        });
    }
    assert_eq!(got, ["Added a=1", "Modified a=2", "Deleted a=2"]);
    server.stop().await;
}

#[tokio::test]
async fn watcher_lists_in_pages_then_watches() {
    let (fake, server, client) = start().await;
    for name in ["a", "b", "c"] {
        fake.put("configmaps", "default", cm_json(name, "1"));
    }
    fake.put("configmaps", "other", cm_json("elsewhere", "1"));
    let api = Api::<ConfigMap>::namespaced(client, "default");
    let mut events = watcher(api, quick().page_size(Some(2))).boxed();
    assert_eq!(
        take(&mut events, 5).await,
        [
            "Init",
            "InitApply a=1",
            "InitApply b=1",
            "InitApply c=1",
            "InitDone"
        ]
    );
    assert_eq!(fake.list_calls(), 2, "two pages of two");

    fake.put("configmaps", "default", cm_json("d", "1"));
    fake.put("configmaps", "default", cm_json("a", "2"));
    fake.put("configmaps", "other", cm_json("elsewhere", "2"));
    fake.remove("configmaps", "default", "b");
    assert_eq!(
        take(&mut events, 3).await,
        ["Apply d=1", "Apply a=2", "Delete b=1"]
    );
    assert_quiet(&mut events).await;
    server.stop().await;
}

#[tokio::test]
async fn watcher_resumes_without_gaps_or_duplicates() {
    let (fake, server, client) = start().await;
    fake.put("configmaps", "default", cm_json("a", "0"));
    let api = Api::<ConfigMap>::namespaced(client, "default");
    let mut events = watcher(api, quick()).boxed();
    assert_eq!(
        take(&mut events, 3).await,
        ["Init", "InitApply a=0", "InitDone"]
    );

    // Every watch now ends after one event; the watcher must resume each time.
    fake.end_watches_after(Some(1));
    let mut want = Vec::new();
    for i in 1..=5 {
        fake.put("configmaps", "default", cm_json("a", &i.to_string()));
        fake.put("configmaps", "default", cm_json(&format!("n{i}"), "1"));
        want.push(format!("Apply a={i}"));
        want.push(format!("Apply n{i}=1"));
    }
    assert_eq!(take(&mut events, 10).await, want);
    assert_quiet(&mut events).await;
    assert_eq!(fake.list_calls(), 1, "resumed by watching, not relisting");
    assert!(
        fake.watch_calls() >= 10,
        "watch calls: {}",
        fake.watch_calls()
    );
    server.stop().await;
}

#[tokio::test]
async fn watcher_relists_after_410_on_an_open_watch() {
    let (fake, server, client) = start().await;
    fake.put("configmaps", "default", cm_json("a", "1"));
    fake.put("configmaps", "default", cm_json("b", "1"));
    let api = Api::<ConfigMap>::namespaced(client, "default");
    let mut events = watcher(api, quick()).boxed();
    assert_eq!(
        take(&mut events, 4).await,
        ["Init", "InitApply a=1", "InitApply b=1", "InitDone"]
    );

    assert_quiet(&mut events).await; // polling opens the watch
                                     // History the watch never sees, then an ERROR 410 on the open watch.
    fake.remove_unseen("configmaps", "default", "a");
    fake.put_unseen("configmaps", "default", cm_json("c", "1"));
    fake.expire();
    assert_eq!(
        take(&mut events, 4).await,
        ["Init", "InitApply b=1", "InitApply c=1", "InitDone"]
    );
    assert_eq!(fake.list_calls(), 2);

    fake.put("configmaps", "default", cm_json("d", "1"));
    assert_eq!(take(&mut events, 1).await, ["Apply d=1"]);
    server.stop().await;
}

#[tokio::test]
async fn watcher_relists_when_resuming_from_a_compacted_version() {
    let (fake, server, client) = start().await;
    fake.put("configmaps", "default", cm_json("a", "1"));
    let api = Api::<ConfigMap>::namespaced(client, "default");
    let mut events = watcher(api, quick()).boxed();
    assert_eq!(
        take(&mut events, 3).await,
        ["Init", "InitApply a=1", "InitDone"]
    );

    assert_quiet(&mut events).await; // polling opens the watch
    fake.put_unseen("configmaps", "default", cm_json("b", "1"));
    fake.compact();
    // The open watch ends; resuming from its resourceVersion gets 410.
    fake.end_watches_after(Some(0));
    assert_eq!(
        take(&mut events, 4).await,
        ["Init", "InitApply a=1", "InitApply b=1", "InitDone"]
    );
    fake.end_watches_after(None);
    fake.put("configmaps", "default", cm_json("c", "1"));
    assert_eq!(take(&mut events, 1).await, ["Apply c=1"]);
    server.stop().await;
}

#[tokio::test]
async fn bookmarks_move_the_resume_point() {
    let (fake, server, client) = start().await;
    fake.put("configmaps", "default", cm_json("a", "1"));
    let api = Api::<ConfigMap>::namespaced(client, "default");
    let mut events = watcher(api, quick()).boxed();
    assert_eq!(
        take(&mut events, 3).await,
        ["Init", "InitApply a=1", "InitDone"]
    );

    assert_quiet(&mut events).await; // polling opens the watch
                                     // Changes of another kind move the resourceVersion; a bookmark tells the watcher,
                                     // then history before it is compacted. Resuming must not need a relist.
    fake.end_watches_after(Some(1));
    for i in 0..3 {
        fake.put(
            "secrets",
            "default",
            json!({"metadata": {"name": format!("s{i}")}}),
        );
    }
    fake.bookmark("configmaps");
    fake.compact();
    fake.put("configmaps", "default", cm_json("b", "1"));
    assert_eq!(take(&mut events, 1).await, ["Apply b=1"]);
    assert_eq!(fake.list_calls(), 1, "a bookmark spared a relist");
    server.stop().await;
}

#[tokio::test]
async fn watcher_reports_transport_errors_and_retries() {
    let (fake, server, client) = start().await;
    let api = Api::<ConfigMap>::namespaced(client.clone(), "default");
    server.stop().await;
    let mut events = watcher(api, quick()).boxed();
    let first = tokio::time::timeout(Duration::from_secs(10), events.next())
        .await
        .expect("an item")
        .expect("never ends");
    assert!(
        matches!(
            first,
            Err(rkube_client::watcher::Error::InitialListFailed(_))
        ),
        "{first:?}"
    );
    let second = tokio::time::timeout(Duration::from_secs(10), events.next())
        .await
        .expect("retried after a back-off")
        .expect("never ends");
    assert!(second.is_err(), "the server is still down");
    assert_eq!(fake.list_calls(), 0);
}

#[tokio::test]
async fn reflector_keeps_a_store_in_sync() {
    let (fake, server, client) = start().await;
    fake.put("configmaps", "default", cm_json("a", "1"));
    fake.put("configmaps", "default", cm_json("b", "1"));
    let api = Api::<ConfigMap>::namespaced(client, "default");
    let (reader, writer) = store::store::<ConfigMap>();
    let mut events = reflector(writer, watcher(api, quick())).boxed();
    let get = |name: &str| {
        reader
            .get(&ObjectRef::new(name).within("default"))
            .map(|c| value(&c))
    };

    assert!(!reader.is_ready());
    take(&mut events, 4).await;
    reader.wait_until_ready().await.expect("ready");
    assert_eq!(reader.len(), 2);
    assert_eq!(get("a").as_deref(), Some("a=1"));

    fake.put("configmaps", "default", cm_json("a", "2"));
    fake.put("configmaps", "default", cm_json("c", "1"));
    fake.remove("configmaps", "default", "b");
    take(&mut events, 3).await;
    assert_eq!(get("a").as_deref(), Some("a=2"));
    assert_eq!(get("b"), None);
    assert_eq!(get("c").as_deref(), Some("c=1"));

    // After a relist the store holds exactly the listed state.
    assert_quiet(&mut events).await;
    fake.remove_unseen("configmaps", "default", "c");
    fake.expire();
    take(&mut events, 3).await;
    let mut names: Vec<String> = reader.state().iter().map(|c| value(c)).collect();
    names.sort();
    assert_eq!(names, ["a=2"]);
    server.stop().await;
}
