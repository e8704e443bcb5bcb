//! The agent's own gRPC service, `rkube.node.v1.NodeAgent` (container logs, exec and
//! stats), which the apiserver proxies `pods/log` and `pods/exec` to, as it does to the
//! kubelet's port 10250.
//!
//! It is served over TLS with a self-signed certificate the agent makes at its first
//! start and keeps in its root directory (as the kubelet does without
//! `--tls-cert-file`). Callers must present a client certificate signed by the cluster
//! CA whose CN is [`APISERVER_USER`]; everyone else gets `Unauthenticated`.
//!
//! Pods are found by namespace, name and uid (the uid looked up in the apiserver when
//! the caller left it empty); their containers through
//! [`LocalRuntime::pod_containers`].

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::chrono::{DateTime, SecondsFormat, Utc};
use rkube_client::{Api, Client, ListParams};
use rkube_proto::node::v1::exec_input::Input;
use rkube_proto::node::v1::exec_output::Output;
use rkube_proto::node::v1::node_agent_server::{NodeAgent, NodeAgentServer};
use rkube_proto::node::v1::{
    ContainerRef, ContainerStats, ExecExit, ExecInput, ExecOutput, ExecStart, LogChunk,
    LogsRequest, PodStats, StatsRequest, StatsResponse,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, warn};

use crate::runtime::exec::{ExecRequest, TerminalSize};
use crate::runtime::logs::{LogOptions, LogStream};
use crate::runtime::state::ContainerMeta;
use crate::runtime::{ContainerId, ContainerRuntime, ContainerState, LocalRuntime};
use crate::stats::{Hierarchy, StatsCollector};

/// The CN of the only client certificate the service accepts: the apiserver's.
pub const APISERVER_USER: &str = "rkube-apiserver";

/// How often a followed log is polled for new lines.
const FOLLOW_INTERVAL: Duration = Duration::from_millis(100);

/// What setting the service up can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to generate the serving certificate")]
    Certificate(#[source] rcgen::Error),
    #[error("i/o error on {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the cluster CA is unknown (the kubeconfig has no certificate authority)")]
    NoClusterCa,
    #[error("failed to serve")]
    Serve(#[source] tonic::transport::Error),
}

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The serving certificate and key (PEM) in `dir`, made self-signed for `node_name` and
/// `node_ip` when they are not there yet.
///
/// # Errors
/// When they cannot be generated, read or written.
pub fn serving_certificate(dir: &Path, node_name: &str, node_ip: IpAddr) -> Result<Identity> {
    let cert_path = dir.join("nodeagent.crt");
    let key_path = dir.join("nodeagent.key");
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { path, source }
    };
    if !cert_path.exists() || !key_path.exists() {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let key = rcgen::KeyPair::generate().map_err(Error::Certificate)?;
        let mut params = rcgen::CertificateParams::new(vec![node_name.to_string()])
            .map_err(Error::Certificate)?;
        params
            .subject_alt_names
            .push(rcgen::SanType::IpAddress(node_ip));
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            format!("{node_name}@rkube-nodeagent"),
        );
        let cert = params.self_signed(&key).map_err(Error::Certificate)?;
        write_private(&key_path, key.serialize_pem().as_bytes()).map_err(io(&key_path))?;
        std::fs::write(&cert_path, cert.pem()).map_err(io(&cert_path))?;
        info!(path = %cert_path.display(), "generated the agent's serving certificate");
    }
    let cert = std::fs::read(&cert_path).map_err(io(&cert_path))?;
    let key = std::fs::read(&key_path).map_err(io(&key_path))?;
    Ok(Identity::from_pem(cert, key))
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?
        .write_all(bytes)
}

/// A bound listener and the TLS settings to serve on it.
#[derive(Debug)]
pub struct Listener {
    listener: tokio::net::TcpListener,
    tls: ServerTlsConfig,
}

impl Listener {
    /// Binds `addr` (port 0 picks a free one) with `identity`, trusting client
    /// certificates signed by `client_ca_pem`.
    ///
    /// # Errors
    /// When the address cannot be bound.
    pub async fn bind(addr: SocketAddr, identity: Identity, client_ca_pem: &str) -> Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| Error::Bind { addr, source })?;
        let tls = ServerTlsConfig::new()
            .identity(identity)
            .client_ca_root(Certificate::from_pem(client_ca_pem))
            // A caller without a certificate gets a gRPC Unauthenticated, not a
            // handshake failure; one with a certificate from another CA is refused.
            .client_auth_optional(true);
        Ok(Listener { listener, tls })
    }

    /// The port actually bound.
    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    /// Serves `service` until `shutdown`.
    ///
    /// # Errors
    /// When the server fails.
    pub async fn serve(self, service: NodeAgentService, shutdown: CancellationToken) -> Result<()> {
        let addr = self.listener.local_addr().ok();
        info!(addr = ?addr, "serving the NodeAgent service");
        tonic::transport::Server::builder()
            .tls_config(self.tls)
            .map_err(Error::Serve)?
            .add_service(NodeAgentServer::new(service))
            .serve_with_incoming_shutdown(
                TcpListenerStream::new(self.listener),
                shutdown.cancelled_owned(),
            )
            .await
            .map_err(Error::Serve)
    }
}

/// The service: the runtime's containers, the apiserver for pod lookups.
#[derive(Debug, Clone)]
pub struct NodeAgentService {
    runtime: Arc<LocalRuntime>,
    client: Client,
    node_name: String,
    stats: Arc<StatsCollector>,
}

impl NodeAgentService {
    pub fn new(runtime: Arc<LocalRuntime>, client: Client, node_name: String) -> Self {
        NodeAgentService {
            runtime,
            client,
            node_name,
            stats: Arc::new(StatsCollector::new(Hierarchy::detect())),
        }
    }

    /// The pod's uid: the caller's, or the apiserver's when the caller left it empty.
    async fn pod_uid(&self, namespace: &str, pod: &str, uid: &str) -> Result<String, Status> {
        if !uid.is_empty() {
            return Ok(uid.to_string());
        }
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        match pods.get_opt(pod).await {
            Ok(Some(found)) => Ok(found.metadata.uid.unwrap_or_default()),
            Ok(None) => Err(Status::not_found(format!("pods \"{pod}\" not found"))),
            Err(err) => Err(Status::unavailable(format!(
                "failed to look up pod {pod:?}: {err}"
            ))),
        }
    }

    /// The container `target` names: its current instance, or the one before it.
    async fn resolve(
        &self,
        target: &ContainerRef,
        previous: bool,
    ) -> Result<(ContainerId, ContainerMeta), Status> {
        let uid = self
            .pod_uid(&target.namespace, &target.pod, &target.pod_uid)
            .await?;
        let containers = self
            .runtime
            .pod_containers(&target.namespace, &target.pod, &uid)
            .await
            .map_err(|err| Status::internal(err.to_string()))?;
        let name = if target.container.is_empty() {
            let mut names: Vec<&str> = containers.iter().map(|(_, m)| m.name.as_str()).collect();
            names.dedup();
            match names.as_slice() {
                [only] => only.to_string(),
                _ => {
                    return Err(Status::invalid_argument(format!(
                        "a container name must be specified for pod {}",
                        target.pod
                    )))
                }
            }
        } else {
            target.container.clone()
        };
        let mut instances: Vec<(ContainerId, ContainerMeta)> = containers
            .into_iter()
            .filter(|(_, meta)| meta.name == name)
            .collect();
        let pod = &target.pod;
        if previous {
            if instances.len() < 2 {
                return Err(Status::not_found(format!(
                    "previous terminated container \"{name}\" in pod \"{pod}\" not found"
                )));
            }
            instances.pop();
        }
        instances.pop().ok_or_else(|| {
            Status::not_found(format!(
                "container \"{name}\" in pod \"{pod}\" is not running"
            ))
        })
    }
}

/// Accepts only a client certificate (chain checked by TLS) whose CN is the apiserver's.
fn authorize<T>(request: &Request<T>) -> Result<(), Status> {
    let certs = request
        .peer_certs()
        .ok_or_else(|| Status::unauthenticated("a client certificate is required"))?;
    let leaf = certs
        .first()
        .ok_or_else(|| Status::unauthenticated("a client certificate is required"))?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|_| Status::unauthenticated("unreadable client certificate"))?;
    let allowed = cert
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok())
        .any(|cn| cn == APISERVER_USER);
    if allowed {
        Ok(())
    } else {
        Err(Status::unauthenticated(format!(
            "only {APISERVER_USER} may use this service"
        )))
    }
}

/// The `LogOptions` of a request, validated.
fn log_options(request: &LogsRequest) -> Result<LogOptions, Status> {
    let positive = |value: Option<i64>, name: &str| -> Result<Option<usize>, Status> {
        match value {
            None => Ok(None),
            Some(v) if v < 0 => Err(Status::invalid_argument(format!(
                "{name} must be greater than or equal to 0"
            ))),
            Some(v) => Ok(Some(usize::try_from(v).unwrap_or(usize::MAX))),
        }
    };
    let since = match (&request.since_time, request.since_seconds) {
        (Some(time), _) => Some(
            DateTime::parse_from_rfc3339(time)
                .map_err(|_| Status::invalid_argument(format!("invalid sinceTime {time:?}")))?
                .with_timezone(&Utc),
        ),
        (None, Some(seconds)) if seconds <= 0 => {
            return Err(Status::invalid_argument(
                "sinceSeconds must be greater than 0",
            ))
        }
        (None, Some(seconds)) => Some(Utc::now() - k8s_openapi::chrono::Duration::seconds(seconds)),
        (None, None) => None,
    };
    let limit_bytes = positive(request.limit_bytes, "limitBytes")?;
    if limit_bytes == Some(0) {
        return Err(Status::invalid_argument(
            "limitBytes must be greater than 0",
        ));
    }
    Ok(LogOptions {
        tail_lines: positive(request.tail_lines, "tailLines")?,
        since,
        timestamps: request.timestamps,
        limit_bytes,
    })
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl NodeAgent for NodeAgentService {
    type LogsStream = BoxStream<LogChunk>;

    async fn logs(
        &self,
        request: Request<LogsRequest>,
    ) -> Result<Response<Self::LogsStream>, Status> {
        authorize(&request)?;
        let request = request.into_inner();
        let target = request.container.clone().unwrap_or_default();
        let options = log_options(&request)?;
        let (id, meta) = self.resolve(&target, request.previous).await?;
        debug!(container = %id.0, follow = request.follow, previous = request.previous, "logs");
        let follow = request.follow && !request.previous;
        let (tx, rx) = mpsc::channel(16);
        let runtime = self.runtime.clone();
        tokio::spawn(async move {
            let mut stream = LogStream::new(&meta.log_path, options);
            let mut first = true;
            loop {
                // Looked at before reading, so the last read sees everything the
                // container wrote before it exited.
                let finished = !follow || container_finished(&runtime, &id).await;
                let read = tokio::task::spawn_blocking(move || {
                    let read = if first {
                        stream.read_existing()
                    } else {
                        stream.read_new()
                    };
                    (stream, read)
                })
                .await;
                first = false;
                let Ok((returned, read)) = read else { return };
                stream = returned;
                match read {
                    Ok(bytes) if bytes.is_empty() => {}
                    Ok(data) => {
                        if tx.send(Ok(LogChunk { data })).await.is_err() {
                            return;
                        }
                    }
                    Err(err) => {
                        let _ = tx
                            .send(Err(Status::internal(format!(
                                "failed to read the log: {err}"
                            ))))
                            .await;
                        return;
                    }
                }
                if finished || stream.exhausted() {
                    return;
                }
                tokio::select! {
                    _ = tx.closed() => return,
                    _ = tokio::time::sleep(FOLLOW_INTERVAL) => {}
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type ExecStream = BoxStream<ExecOutput>;

    async fn exec(
        &self,
        request: Request<Streaming<ExecInput>>,
    ) -> Result<Response<Self::ExecStream>, Status> {
        authorize(&request)?;
        let mut input = request.into_inner();
        let start = match input.message().await?.and_then(|m| m.input) {
            Some(Input::Start(start)) => start,
            _ => {
                return Err(Status::invalid_argument(
                    "the first message must be `start`",
                ))
            }
        };
        if start.command.is_empty() {
            return Err(Status::invalid_argument("a command is required"));
        }
        let (tx, rx) = mpsc::channel(32);
        let service = self.clone();
        tokio::spawn(async move {
            let exit = match service.run_exec(start, input, &tx).await {
                Ok(exit_code) => ExecExit {
                    exit_code,
                    error: String::new(),
                },
                Err(error) => ExecExit {
                    exit_code: 126,
                    error,
                },
            };
            let _ = tx
                .send(Ok(ExecOutput {
                    output: Some(Output::Exit(exit)),
                }))
                .await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn stats(
        &self,
        request: Request<StatsRequest>,
    ) -> Result<Response<StatsResponse>, Status> {
        authorize(&request)?;
        let request = request.into_inner();
        let pods: Api<Pod> = Api::all(self.client.clone());
        let params = ListParams::default().fields(&format!("spec.nodeName={}", self.node_name));
        let listed = pods
            .list(&params)
            .await
            .map_err(|err| Status::unavailable(format!("failed to list pods: {err}")))?;
        let wanted = |pod: &Pod| {
            let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
            let name = pod.metadata.name.as_deref().unwrap_or_default();
            (request.namespace.is_empty() || request.namespace == namespace)
                && (request.pod.is_empty() || request.pod == name)
        };
        let mut result = Vec::new();
        let mut live = Vec::new();
        for pod in listed.items.iter().filter(|p| wanted(p)) {
            let namespace = pod.metadata.namespace.clone().unwrap_or_default();
            let name = pod.metadata.name.clone().unwrap_or_default();
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            let containers = self
                .runtime
                .pod_containers(&namespace, &name, &uid)
                .await
                .map_err(|err| Status::internal(err.to_string()))?;
            let mut stats = PodStats {
                namespace,
                name,
                uid,
                ..Default::default()
            };
            // Newest attempt last: keep the running instance of each container.
            for (id, meta) in containers.iter().rev() {
                if stats.containers.iter().any(|c| c.name == meta.name) {
                    continue;
                }
                if !matches!(
                    self.runtime.container_status(id).await,
                    Ok(ContainerState::Running { .. })
                ) {
                    continue;
                }
                let collector = self.stats.clone();
                let (key, cgroup) = (id.0.clone(), meta.cgroup_path.clone());
                let sample =
                    tokio::task::spawn_blocking(move || collector.sample(&key, &cgroup)).await;
                let usage = match sample {
                    Ok(Ok(usage)) => usage,
                    Ok(Err(err)) => {
                        debug!(container = %id.0, error = %err, "no stats");
                        continue;
                    }
                    Err(_) => continue,
                };
                live.push(id.0.clone());
                stats.cpu_usage_nanocores += usage.cpu_usage_nanocores;
                stats.memory_working_set_bytes += usage.usage.memory_working_set_bytes;
                stats.containers.push(ContainerStats {
                    name: meta.name.clone(),
                    cpu_usage_core_nanoseconds: usage.usage.cpu_usage_ns,
                    cpu_usage_nanocores: usage.cpu_usage_nanocores,
                    memory_usage_bytes: usage.usage.memory_usage_bytes,
                    memory_working_set_bytes: usage.usage.memory_working_set_bytes,
                });
            }
            result.push(stats);
        }
        if request.namespace.is_empty() && request.pod.is_empty() {
            self.stats.retain(&live);
        } else if !request.pod.is_empty() && result.is_empty() {
            return Err(Status::not_found(format!(
                "pods \"{}\" not found on node {}",
                request.pod, self.node_name
            )));
        }
        Ok(Response::new(StatsResponse {
            timestamp: Utc::now().to_rfc3339_opts(SecondsFormat::Nanos, true),
            pods: result,
        }))
    }
}

/// Whether a followed container ended (or is gone).
async fn container_finished(runtime: &LocalRuntime, id: &ContainerId) -> bool {
    !matches!(
        runtime.container_status(id).await,
        Ok(ContainerState::Running { .. }) | Ok(ContainerState::Created)
    )
}

impl NodeAgentService {
    /// Runs one exec session: its output to `tx`; returns the exit code, or why the
    /// command could not be started.
    async fn run_exec(
        &self,
        start: ExecStart,
        mut input: Streaming<ExecInput>,
        tx: &mpsc::Sender<Result<ExecOutput, Status>>,
    ) -> Result<i32, String> {
        let target = start.container.clone().unwrap_or_default();
        let (id, _) = self
            .resolve(&target, false)
            .await
            .map_err(|status| status.message().to_string())?;
        let size = start.size.map(|s| TerminalSize {
            width: u16::try_from(s.width).unwrap_or(u16::MAX),
            height: u16::try_from(s.height).unwrap_or(u16::MAX),
        });
        let request = ExecRequest {
            command: start.command.clone(),
            stdin: start.stdin,
            tty: start.tty,
            size: size.filter(|s| s.width > 0 && s.height > 0),
        };
        let mut process = self
            .runtime
            .exec(&id, &request)
            .await
            .map_err(|err| error_chain(&err))?;
        info!(container = %id.0, command = ?start.command, tty = start.tty, "exec");
        // Output nobody asked for is read and dropped, so the command never blocks on
        // it or dies of SIGPIPE.
        let stdout = process.stdout.take();
        let stderr = process.stderr.take();
        let (want_stdout, want_stderr) = (start.stdout || start.tty, start.stderr);
        let stdin = process.stdin.take();
        let resizer = process.resizer();
        let tty = start.tty;
        let feed = async move {
            let mut stdin = stdin;
            loop {
                let message = match input.message().await {
                    Ok(Some(message)) => message,
                    Ok(None) | Err(_) => return,
                };
                match message.input {
                    Some(Input::Stdin(bytes)) => {
                        if let Some(writer) = stdin.as_mut() {
                            if writer.write_all(&bytes).await.is_err()
                                || writer.flush().await.is_err()
                            {
                                stdin = None;
                            }
                        }
                    }
                    Some(Input::Resize(size)) => {
                        if let Some(resizer) = &resizer {
                            let size = TerminalSize {
                                width: u16::try_from(size.width).unwrap_or(u16::MAX),
                                height: u16::try_from(size.height).unwrap_or(u16::MAX),
                            };
                            if let Err(err) = resizer.resize(size) {
                                warn!(error = %err, "failed to resize an exec terminal");
                            }
                        }
                    }
                    Some(Input::CloseStdin(_)) => {
                        if let Some(mut writer) = stdin.take() {
                            if tty {
                                // A terminal has no end of input: ^D at a line start.
                                let _ = writer.write_all(&[4]).await;
                                let _ = writer.flush().await;
                            } else {
                                let _ = writer.shutdown().await;
                            }
                        }
                    }
                    Some(Input::Start(_)) | None => {}
                }
            }
        };
        let pumps = async {
            let (out, err) = tokio::join!(
                pump(stdout, want_stdout.then_some(tx), Output::Stdout),
                pump(stderr, want_stderr.then_some(tx), Output::Stderr)
            );
            out && err
        };
        tokio::pin!(feed);
        tokio::pin!(pumps);
        let mut feeding = true;
        let mut connected = true;
        let delivered = loop {
            tokio::select! {
                delivered = &mut pumps => break delivered,
                () = &mut feed, if feeding => feeding = false,
                () = tx.closed(), if connected => {
                    // The client went away while the command was silent.
                    connected = false;
                    process.kill();
                }
            }
        };
        if !delivered || !connected {
            // The client went away: the command does not outlive its session.
            process.kill();
        }
        process.wait().await.map_err(|err| error_chain(&err))
    }
}

/// Copies `reader` to the client as `wrap` messages (to nowhere without `tx`); false
/// when the client went away.
async fn pump(
    reader: Option<Pin<Box<dyn AsyncRead + Send>>>,
    tx: Option<&mpsc::Sender<Result<ExecOutput, Status>>>,
    wrap: fn(Vec<u8>) -> Output,
) -> bool {
    let Some(mut reader) = reader else {
        return true;
    };
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => return true,
            Ok(n) => {
                let Some(tx) = tx else { continue };
                let message = ExecOutput {
                    output: Some(wrap(buf[..n].to_vec())),
                };
                if tx.send(Ok(message)).await.is_err() {
                    return false;
                }
            }
        }
    }
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_options_validate_like_pod_log_options() {
        let request = LogsRequest {
            tail_lines: Some(3),
            limit_bytes: Some(10),
            timestamps: true,
            ..Default::default()
        };
        let options = log_options(&request).expect("valid");
        assert_eq!(options.tail_lines, Some(3));
        assert_eq!(options.limit_bytes, Some(10));
        assert!(options.timestamps && options.since.is_none());
        let bad = LogsRequest {
            tail_lines: Some(-1),
            ..Default::default()
        };
        assert_eq!(
            log_options(&bad).expect_err("negative").code(),
            tonic::Code::InvalidArgument
        );
        let since = LogsRequest {
            since_time: Some("2024-05-01T12:00:00Z".into()),
            since_seconds: Some(5),
            ..Default::default()
        };
        assert_eq!(
            log_options(&since)
                .expect("valid")
                .since
                .map(|t| t.to_rfc3339()),
            Some("2024-05-01T12:00:00+00:00".to_string())
        );
        let recent = LogsRequest {
            since_seconds: Some(60),
            ..Default::default()
        };
        let since = log_options(&recent).expect("valid").since.expect("since");
        assert!(Utc::now() - since >= k8s_openapi::chrono::Duration::seconds(59));
    }
}
