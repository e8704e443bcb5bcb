//! Shared helpers for rkube's integration and end-to-end tests: a real etcd on a free
//! port with a temporary data directory ([`Etcd`]), and a real apiserver in front of it
//! over HTTPS with the cluster PKI ([`TestApiserver`]), which also drives the real
//! `/usr/bin/kubectl`.
//!
//! Both clean up on drop: etcd is killed and its data removed; the apiserver is shut
//! down through its cancellation token.

pub mod bench_network_path;
pub mod fake_agent;
pub mod lab;
pub mod netlab;
pub mod node;
pub mod terminal;

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpListener as StdTcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rkube_client::ClientConfig;
use rkube_ctl::kubeconfig;
use rkube_ctl::pki::{ClusterPki, Component, CONTEXT_NAME};
use tokio_util::sync::CancellationToken;

/// The etcd binary (Debian's etcd-server).
pub const ETCD_BINARY: &str = "/usr/bin/etcd";
/// The real kubectl the tests drive.
pub const KUBECTL_BINARY: &str = "/usr/bin/kubectl";
/// How long a test waits for etcd or the apiserver to answer.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A throwaway etcd: free loopback ports, a temporary data directory (on tmpfs when
/// there is one). Killed, and its data removed, on drop.
pub struct Etcd {
    child: Child,
    endpoint: String,
    dir: Option<tempfile::TempDir>,
}

impl Etcd {
    /// Starts etcd and waits until it serves requests.
    ///
    /// # Errors
    /// When etcd cannot be started or does not answer within 30 s (the error holds the
    /// tail of its log).
    pub async fn start() -> anyhow::Result<Etcd> {
        // Free ports are picked by binding port 0 and letting go, so another process may
        // take one before etcd binds it: try a few times.
        let mut last_error = None;
        for _ in 0..3 {
            match Self::try_start().await {
                Ok(etcd) => return Ok(etcd),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.expect("the loop ran at least once"))
    }

    async fn try_start() -> anyhow::Result<Etcd> {
        let dir = temp_dir("rkube-etcd-").context("create etcd data dir")?;
        let client_port = free_port().context("pick etcd client port")?;
        let peer_port = free_port().context("pick etcd peer port")?;
        let client = format!("http://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let log_path = dir.path().join("etcd.log");
        let log = std::fs::File::create(&log_path).context("create etcd log")?;
        let child = Command::new(ETCD_BINARY)
            .args(["--name", "test", "--data-dir"])
            .arg(dir.path().join("data"))
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("test={peer}")])
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("open etcd log")?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("start {ETCD_BINARY}"))?;
        let mut etcd = Etcd {
            child,
            endpoint: client,
            dir: Some(dir),
        };

        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = etcd.child.try_wait().context("poll etcd")? {
                bail!("etcd exited ({status}):\n{}", log_tail(&log_path));
            }
            if let Ok(mut client) = etcd.client().await {
                if client.status().await.is_ok() {
                    return Ok(etcd);
                }
            }
            if Instant::now() >= deadline {
                bail!(
                    "etcd did not answer within {START_TIMEOUT:?}:\n{}",
                    log_tail(&log_path)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The client URL, e.g. `http://127.0.0.1:41234`.
    pub fn endpoint(&self) -> String {
        self.endpoint.clone()
    }

    /// The directory holding etcd's data and log; removed on drop.
    pub fn data_dir(&self) -> &Path {
        self.dir.as_ref().expect("set until drop").path()
    }

    /// A new etcd client for this etcd.
    ///
    /// # Errors
    /// When it cannot connect.
    pub async fn client(&self) -> anyhow::Result<etcd_client::Client> {
        let options = etcd_client::ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(1))
            .with_timeout(Duration::from_secs(5));
        etcd_client::Client::connect([&self.endpoint], Some(options))
            .await
            .context("connect to etcd")
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(dir) = self.dir.take() {
            let _ = dir.close();
        }
    }
}

/// A real apiserver on a free loopback port, running on the current tokio runtime,
/// serving HTTPS with a freshly generated cluster PKI, tokens required. Shut down on
/// drop.
pub struct TestApiserver {
    url: String,
    pki: ClusterPki,
    dir: tempfile::TempDir,
    http: reqwest::Client,
    shutdown: CancellationToken,
}

impl TestApiserver {
    /// Starts an apiserver on `etcd` with the test defaults (HTTPS, tokens required).
    ///
    /// # Errors
    /// As [`start_with`](Self::start_with).
    pub async fn start(etcd: &Etcd) -> anyhow::Result<TestApiserver> {
        Self::start_with(etcd, |_| {}).await
    }

    /// Starts an apiserver on `etcd` after `configure` adjusted its configuration, and
    /// waits until `/readyz` answers 200.
    ///
    /// # Errors
    /// When the PKI cannot be generated, the port cannot be bound, or the apiserver
    /// fails or does not become ready within 30 s.
    pub async fn start_with(
        etcd: &Etcd,
        configure: impl FnOnce(&mut rkube_apiserver::Config),
    ) -> anyhow::Result<TestApiserver> {
        let dir = temp_dir("rkube-apiserver-").context("create apiserver temp dir")?;
        let pki = ClusterPki::generate(&dir.path().join("pki"), &[]).context("generate PKI")?;
        std::fs::create_dir_all(dir.path().join("home")).context("create kubectl home")?;

        let mut config = rkube_apiserver::Config::for_tests(&etcd.endpoint());
        config.tls_cert_file = Some(pki.apiserver_cert_path());
        config.tls_private_key_file = Some(pki.apiserver_key_path());
        config.client_ca_file = Some(pki.ca_cert_path());
        config.token_auth_file = Some(pki.token_file_path());
        config.insecure_plain_http = false;
        config.insecure_allow_anonymous = false;
        config.kubelet_client_certificate = Some(pki.kubelet_client_cert_path());
        config.kubelet_client_key = Some(pki.kubelet_client_key_path());
        configure(&mut config);

        let listener = tokio::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
            .await
            .context("bind apiserver listener")?;
        let port = listener
            .local_addr()
            .context("read listener address")?
            .port();
        let scheme = if config.insecure_plain_http {
            "http"
        } else {
            "https"
        };
        let url = format!("{scheme}://127.0.0.1:{port}");

        let http = http_client(&pki, Some(pki.admin_token()))?;
        let shutdown = CancellationToken::new();
        let mut task = tokio::spawn(rkube_apiserver::run_with_listener(
            config,
            listener,
            shutdown.clone(),
        ));
        let api = TestApiserver {
            url,
            pki,
            dir,
            http,
            shutdown,
        };
        kubeconfig::write_single(
            &api.kubeconfig_path(),
            CONTEXT_NAME,
            &api.url,
            api.pki.ca_pem(),
            api.pki.admin_token(),
        )
        .context("write admin kubeconfig")?;

        let probe = http_client(&api.pki, None)?;
        let readyz = format!("{}/readyz", api.url);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            tokio::select! {
                result = &mut task => {
                    match result {
                        Ok(Ok(())) => bail!("apiserver stopped before it became ready"),
                        Ok(Err(e)) => return Err(e.context("run apiserver")),
                        Err(e) => bail!("apiserver task failed: {e}"),
                    }
                }
                response = probe.get(&readyz).send() => {
                    if response.is_ok_and(|r| r.status() == reqwest::StatusCode::OK) {
                        return Ok(api);
                    }
                }
            }
            if Instant::now() >= deadline {
                bail!("apiserver did not become ready within {START_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The base URL, e.g. `https://127.0.0.1:41235`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The admin's bearer token (user `admin`, group `system:masters`).
    pub fn admin_token(&self) -> &str {
        self.pki.admin_token()
    }

    /// The cluster CA certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        self.pki.ca_pem()
    }

    /// The cluster PKI (component tokens, admin client certificate).
    /// A gRPC client configuration for one component's credentials.
    pub fn client_config(&self, component: Component) -> ClientConfig {
        ClientConfig {
            endpoint: self.url().to_string(),
            ca_pem: Some(self.ca_pem().to_string()),
            token: Some(self.pki().token(component).to_string()),
        }
    }

    pub fn pki(&self) -> &ClusterPki {
        &self.pki
    }

    /// A kubeconfig for the admin, pointing at this apiserver.
    pub fn kubeconfig_path(&self) -> PathBuf {
        self.dir.path().join("admin.kubeconfig")
    }

    /// An HTTP client that trusts the cluster CA and sends the admin's bearer token.
    pub fn http(&self) -> reqwest::Client {
        self.http.clone()
    }

    /// A `kubectl` command for this apiserver: admin kubeconfig, a `HOME` and discovery
    /// cache of its own (so no cache leaks between tests), then `args`.
    pub fn kubectl_command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(KUBECTL_BINARY);
        command
            .arg("--cache-dir")
            .arg(self.dir.path().join("kube-cache"))
            .args(args)
            .env("KUBECONFIG", self.kubeconfig_path())
            .env("HOME", self.dir.path().join("home"))
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env_remove("KUBERNETES_SERVICE_PORT")
            .env("NO_PROXY", "127.0.0.1,localhost")
            .stdin(Stdio::null());
        command
    }

    /// Runs kubectl with `args` and returns what it did.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_command(args)
            .output()
            .unwrap_or_else(|e| panic!("run {KUBECTL_BINARY} {args:?}: {e}"))
    }

    /// Runs kubectl with `args`, feeding `stdin` (e.g. a manifest for `-f -`).
    pub fn kubectl_stdin(&self, args: &[&str], stdin: &str) -> Output {
        let mut child = self
            .kubectl_command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("run {KUBECTL_BINARY} {args:?}: {e}"));
        let mut pipe = child.stdin.take().expect("stdin is piped");
        let input = stdin.to_string();
        // Written from a thread: kubectl may print before it has read all its input.
        let writer = std::thread::spawn(move || pipe.write_all(input.as_bytes()));
        let output = child
            .wait_with_output()
            .unwrap_or_else(|e| panic!("wait for kubectl {args:?}: {e}"));
        // kubectl may exit without reading everything (bad flags): a broken pipe is fine.
        let _ = writer.join();
        output
    }
}

impl Drop for TestApiserver {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// An HTTP client trusting only the cluster CA, never proxied, optionally sending a
/// bearer token.
fn http_client(pki: &ClusterPki, token: Option<&str>) -> anyhow::Result<reqwest::Client> {
    let ca = reqwest::Certificate::from_pem(pki.ca_pem().as_bytes()).context("parse CA")?;
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(token) = token {
        let value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
            .context("build authorization header")?;
        headers.insert(reqwest::header::AUTHORIZATION, value);
    }
    reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
        .default_headers(headers)
        .no_proxy()
        // HTTP/1.1: the tests send upgrade requests (SPDY, WebSocket) as kubectl's
        // streaming clients do, and HTTP/2 has no `Upgrade`.
        .http1_only()
        .timeout(Duration::from_secs(30))
        .build()
        .context("build HTTP client")
}

/// A temporary directory, on tmpfs (`/dev/shm`) when there is one: etcd fsyncs a lot.
fn temp_dir(prefix: &str) -> std::io::Result<tempfile::TempDir> {
    let shm = Path::new("/dev/shm");
    let builder = {
        let mut b = tempfile::Builder::new();
        b.prefix(prefix);
        b
    };
    if shm.is_dir() {
        if let Ok(dir) = builder.tempdir_in(shm) {
            return Ok(dir);
        }
    }
    builder.tempdir()
}

fn free_port() -> std::io::Result<u16> {
    Ok(StdTcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// Polls `check` every 50 ms until it returns `Some`, or panics naming `what` after
/// `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
