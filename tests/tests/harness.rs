//! The test harness itself: a throwaway etcd that cleans up after itself, and a test
//! apiserver that insists on credentials.

use reqwest::StatusCode;
use rkube_tests::{Etcd, TestApiserver};

#[tokio::test]
async fn etcd_serves_and_drop_removes_its_data() {
    let etcd = Etcd::start().await.expect("start etcd");
    let mut client = etcd.client().await.expect("connect");
    client
        .put("/harness/key", "value", None)
        .await
        .expect("put");
    let resp = client.get("/harness/key", None).await.expect("get");
    let values: Vec<&[u8]> = resp.kvs().iter().map(|kv| kv.value()).collect();
    assert_eq!(values, [b"value"]);

    let dir = etcd.data_dir().to_path_buf();
    assert!(dir.join("data").is_dir(), "etcd wrote its data dir");
    drop(client);
    drop(etcd);
    assert!(!dir.exists(), "drop removes {}", dir.display());
}

#[tokio::test]
async fn two_etcds_do_not_collide() {
    let (a, b) = tokio::join!(Etcd::start(), Etcd::start());
    let (a, b) = (a.expect("start a"), b.expect("start b"));
    assert_ne!(a.endpoint(), b.endpoint());
    a.client()
        .await
        .expect("connect a")
        .put("k", "a", None)
        .await
        .expect("put a");
    let resp = b
        .client()
        .await
        .expect("connect b")
        .get("k", None)
        .await
        .expect("get b");
    assert!(resp.kvs().is_empty(), "b does not see a's keys");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apiserver_requires_credentials() {
    let etcd = Etcd::start().await.expect("start etcd");
    let api = TestApiserver::start(&etcd).await.expect("start apiserver");
    let anonymous = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(api.ca_pem().as_bytes()).expect("ca"))
        .no_proxy()
        .build()
        .expect("client");
    let version = format!("{}/version", api.url());

    let resp = anonymous.get(&version).send().await.expect("request");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let resp = anonymous
        .get(&version)
        .bearer_auth("not-a-token")
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);

    let resp = api.http().get(&version).send().await.expect("request");
    assert_eq!(resp.status(), StatusCode::OK);
    let body: serde_json::Value = resp.json().await.expect("version JSON");
    assert_eq!(body["major"], "1");

    // The admin client certificate (CN admin, O system:masters) authenticates too.
    let pki = api.pki();
    let mut identity = std::fs::read(pki.admin_cert_path()).expect("read admin.crt");
    identity.extend(std::fs::read(pki.admin_key_path()).expect("read admin.key"));
    let with_cert = reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(api.ca_pem().as_bytes()).expect("ca"))
        .identity(reqwest::Identity::from_pem(&identity).expect("identity"))
        .no_proxy()
        .build()
        .expect("client");
    let resp = with_cert.get(&version).send().await.expect("request");
    assert_eq!(resp.status(), StatusCode::OK);

    // Health checks need no credentials.
    let resp = anonymous
        .get(format!("{}/readyz", api.url()))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), StatusCode::OK);

    let out = tokio::task::block_in_place(|| api.kubectl(&["version", "-o", "json"]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(api.kubeconfig_path().is_file());
}
