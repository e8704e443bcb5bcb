//! Container probes and lifecycle hooks as kubelet runs them: the three actions
//! (`exec` through [`ContainerRuntime::exec_sync`], `httpGet` with hyper, `tcpSocket`),
//! and [`spawn_prober`], the periodic task that runs one probe of one container
//! instance and sends every attempt's result to the pod worker, which counts them
//! against the thresholds.
//!
//! A pod's network namespace is not the agent's: network actions create their socket
//! inside the sandbox's namespace ([`SandboxStatus::netns`](crate::runtime::SandboxStatus))
//! on a short-lived thread that enters it with `setns`, then connect from tokio. A
//! socket stays in the namespace it was created in.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Empty;
use hyper::body::Bytes;
use k8s_openapi::api::core::v1::{
    Container, ExecAction, HTTPGetAction, LifecycleHandler, Probe, TCPSocketAction,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::runtime::{self, ContainerId, ContainerRuntime};

/// The `User-Agent` of HTTP probes and hooks unless the spec sets one.
pub const USER_AGENT: &str = "kube-probe/1.32";
/// `periodSeconds` when unset.
pub const DEFAULT_PERIOD: Duration = Duration::from_secs(10);
/// `timeoutSeconds` when unset.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
/// `failureThreshold` when unset.
pub const DEFAULT_FAILURE_THRESHOLD: u32 = 3;

/// Which probe of a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProbeKind {
    Startup,
    Liveness,
    Readiness,
}

impl ProbeKind {
    /// As kubelet names it in events (`Liveness probe failed: …`).
    pub fn title(self) -> &'static str {
        match self {
            ProbeKind::Startup => "Startup",
            ProbeKind::Liveness => "Liveness",
            ProbeKind::Readiness => "Readiness",
        }
    }

    /// The container's probe of this kind.
    pub fn of(self, container: &Container) -> Option<&Probe> {
        match self {
            ProbeKind::Startup => container.startup_probe.as_ref(),
            ProbeKind::Liveness => container.liveness_probe.as_ref(),
            ProbeKind::Readiness => container.readiness_probe.as_ref(),
        }
    }
}

/// The result of one action: `Err` carries kubelet's failure message.
pub type Outcome = std::result::Result<(), String>;

/// Where a pod's network actions connect from and to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetTarget {
    /// The sandbox's network namespace; `None` connects from the agent's.
    pub netns: Option<PathBuf>,
    /// The pod IP, the default host; 127.0.0.1 when unknown.
    pub pod_ip: Option<IpAddr>,
}

/// A probe's timing and thresholds with kubelet's defaults applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

impl Timing {
    /// The timing of `probe`; values below the minimum count as the default.
    pub fn of(probe: &Probe) -> Self {
        let seconds = |v: Option<i32>, default: Duration| match v {
            Some(s) if s > 0 => Duration::from_secs(s.unsigned_abs().into()),
            _ => default,
        };
        let count = |v: Option<i32>, default: u32| match v {
            Some(n) if n > 0 => n.unsigned_abs(),
            _ => default,
        };
        Timing {
            initial_delay: match probe.initial_delay_seconds {
                Some(s) if s > 0 => Duration::from_secs(s.unsigned_abs().into()),
                _ => Duration::ZERO,
            },
            period: seconds(probe.period_seconds, DEFAULT_PERIOD),
            timeout: seconds(probe.timeout_seconds, DEFAULT_TIMEOUT),
            success_threshold: count(probe.success_threshold, 1),
            failure_threshold: count(probe.failure_threshold, DEFAULT_FAILURE_THRESHOLD),
        }
    }
}

/// One attempt of one probe, sent to the pod worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeResult {
    /// The container's name in the pod.
    pub container: String,
    /// The instance probed; results for an older instance are stale.
    pub instance: ContainerId,
    pub kind: ProbeKind,
    pub outcome: Outcome,
}

/// Starts the periodic task running `kind` of `container` against `instance`: it waits
/// `initialDelaySeconds`, then probes every `periodSeconds` until `cancel`, sending every
/// result to `results`. It stops by itself when the worker is gone.
pub fn spawn_prober<R: ContainerRuntime>(
    runtime: Arc<R>,
    kind: ProbeKind,
    container: Container,
    instance: ContainerId,
    target: NetTarget,
    results: mpsc::UnboundedSender<ProbeResult>,
    cancel: CancellationToken,
) {
    let Some(probe) = kind.of(&container).cloned() else {
        return;
    };
    let timing = Timing::of(&probe);
    tokio::spawn(async move {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(timing.initial_delay) => {}
        }
        loop {
            let outcome = tokio::select! {
                _ = cancel.cancelled() => return,
                outcome = run_probe(runtime.as_ref(), &probe, &container, &instance, &target, timing.timeout) => outcome,
            };
            debug!(container = %container.name, kind = ?kind, ok = outcome.is_ok(), "probed");
            let result = ProbeResult {
                container: container.name.clone(),
                instance: instance.clone(),
                kind,
                outcome,
            };
            if results.send(result).is_err() {
                return;
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(timing.period) => {}
            }
        }
    });
}

/// Runs `probe` once; its handler's outcome within `timeout`.
pub async fn run_probe<R: ContainerRuntime>(
    runtime: &R,
    probe: &Probe,
    container: &Container,
    instance: &ContainerId,
    target: &NetTarget,
    timeout: Duration,
) -> Outcome {
    let action = Action {
        exec: probe.exec.as_ref(),
        http_get: probe.http_get.as_ref(),
        tcp_socket: probe.tcp_socket.as_ref(),
    };
    if probe.grpc.is_some() {
        return Err("gRPC probes are not supported by this node agent yet".into());
    }
    action
        .run(runtime, container, instance, target, timeout)
        .await
}

/// Runs a lifecycle hook (`postStart`, `preStop`) once, at most `timeout`.
pub async fn run_hook<R: ContainerRuntime>(
    runtime: &R,
    handler: &LifecycleHandler,
    container: &Container,
    instance: &ContainerId,
    target: &NetTarget,
    timeout: Duration,
) -> Outcome {
    if let Some(sleep) = &handler.sleep {
        let seconds = u64::try_from(sleep.seconds).unwrap_or(0);
        tokio::time::sleep(Duration::from_secs(seconds).min(timeout)).await;
        return Ok(());
    }
    let action = Action {
        exec: handler.exec.as_ref(),
        http_get: handler.http_get.as_ref(),
        tcp_socket: handler.tcp_socket.as_ref(),
    };
    action
        .run(runtime, container, instance, target, timeout)
        .await
}

/// The handler part shared by probes and hooks.
struct Action<'a> {
    exec: Option<&'a ExecAction>,
    http_get: Option<&'a HTTPGetAction>,
    tcp_socket: Option<&'a TCPSocketAction>,
}

impl Action<'_> {
    async fn run<R: ContainerRuntime>(
        &self,
        runtime: &R,
        container: &Container,
        instance: &ContainerId,
        target: &NetTarget,
        timeout: Duration,
    ) -> Outcome {
        if let Some(exec) = self.exec {
            let command = exec.command.clone().unwrap_or_default();
            return exec_action(runtime, instance, &command, timeout).await;
        }
        if let Some(http) = self.http_get {
            return http_get(http, container, target, timeout).await;
        }
        if let Some(tcp) = self.tcp_socket {
            return tcp_socket(tcp, container, target, timeout).await;
        }
        Err("missing probe handler".into())
    }
}

/// `exec`: exit code 0 is success; otherwise the command's output is the message.
pub async fn exec_action<R: ContainerRuntime>(
    runtime: &R,
    instance: &ContainerId,
    command: &[String],
    timeout: Duration,
) -> Outcome {
    match runtime.exec_sync(instance, command, timeout).await {
        Ok(out) if out.exit_code == 0 => Ok(()),
        Ok(out) => {
            let text = String::from_utf8_lossy(&out.output).trim_end().to_string();
            if text.is_empty() {
                Err(format!(
                    "command {command:?} exited with code {}",
                    out.exit_code
                ))
            } else {
                Err(text)
            }
        }
        Err(runtime::Error::Timeout { timeout, .. }) => Err(format!(
            "command {command:?} timed out after {}s",
            timeout.as_secs()
        )),
        Err(err) => Err(err.to_string()),
    }
}

/// The number of a probe's port: a number, or the name of one of the container's ports.
pub fn resolve_port(port: &IntOrString, container: &Container) -> std::result::Result<u16, String> {
    let number = match port {
        IntOrString::Int(n) => *n,
        IntOrString::String(name) => match name.parse::<i32>() {
            Ok(n) => n,
            Err(_) => container
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .map(|p| p.container_port)
                .ok_or_else(|| {
                    format!(
                        "couldn't find port: {name} in container {:?}",
                        container.name
                    )
                })?,
        },
    };
    u16::try_from(number)
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("invalid port number: {number}"))
}

/// The address a network action connects to: `host` if set, else the pod IP, else
/// 127.0.0.1.
async fn address(
    host: Option<&str>,
    port: u16,
    target: &NetTarget,
) -> std::result::Result<SocketAddr, String> {
    match host.filter(|h| !h.is_empty()) {
        Some(host) => match host.parse::<IpAddr>() {
            Ok(ip) => Ok(SocketAddr::new(ip, port)),
            Err(_) => tokio::net::lookup_host((host, port))
                .await
                .map_err(|e| format!("dial tcp: lookup {host}: {e}"))?
                .next()
                .ok_or_else(|| format!("dial tcp: lookup {host}: no such host")),
        },
        None => Ok(SocketAddr::new(
            target.pod_ip.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            port,
        )),
    }
}

/// `tcpSocket`: success when the connection opens.
pub async fn tcp_socket(
    action: &TCPSocketAction,
    container: &Container,
    target: &NetTarget,
    timeout: Duration,
) -> Outcome {
    let port = resolve_port(&action.port, container)?;
    let addr = address(action.host.as_deref(), port, target).await?;
    match tokio::time::timeout(timeout, connect(target.netns.as_deref(), addr)).await {
        Ok(Ok(_stream)) => Ok(()),
        Ok(Err(err)) => Err(format!("dial tcp {addr}: connect: {err}")),
        Err(_) => Err(format!("dial tcp {addr}: i/o timeout")),
    }
}

/// `httpGet`: success when the answer's status is 200–399.
pub async fn http_get(
    action: &HTTPGetAction,
    container: &Container,
    target: &NetTarget,
    timeout: Duration,
) -> Outcome {
    if action
        .scheme
        .as_deref()
        .is_some_and(|s| !s.eq_ignore_ascii_case("HTTP"))
    {
        return Err("HTTPS probes are not supported by this node agent yet".into());
    }
    let port = resolve_port(&action.port, container)?;
    let addr = address(action.host.as_deref(), port, target).await?;
    let mut path = action.path.clone().unwrap_or_default();
    if !path.starts_with('/') {
        path.insert(0, '/');
    }
    let host = match action.host.as_deref().filter(|h| !h.is_empty()) {
        Some(host) => host.to_string(),
        None => addr.ip().to_string(),
    };
    let authority = match addr.ip() {
        IpAddr::V6(_) if host.parse::<IpAddr>().is_ok() => format!("[{host}]:{port}"),
        _ => format!("{host}:{port}"),
    };
    let url = format!("http://{authority}{path}");
    match tokio::time::timeout(timeout, get(target.netns.as_deref(), addr, &authority, &path, action)).await {
        Ok(Ok(status)) if (200..400).contains(&status) => Ok(()),
        Ok(Ok(status)) => Err(format!("HTTP probe failed with statuscode: {status}")),
        Ok(Err(err)) => Err(format!("Get {url:?}: {err}")),
        Err(_) => Err(format!(
            "Get {url:?}: context deadline exceeded (Client.Timeout exceeded while awaiting headers)"
        )),
    }
}

/// One HTTP/1.1 GET; the response's status code.
async fn get(
    netns: Option<&Path>,
    addr: SocketAddr,
    authority: &str,
    path: &str,
    action: &HTTPGetAction,
) -> std::result::Result<u16, String> {
    let stream = connect(netns, addr)
        .await
        .map_err(|e| format!("dial tcp {addr}: connect: {e}"))?;
    let io = hyper_util::rt::TokioIo::new(stream);
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut request = http::Request::builder().method("GET").uri(path);
    let headers = action.http_headers.as_deref().unwrap_or_default();
    let has = |name: &str| headers.iter().any(|h| h.name.eq_ignore_ascii_case(name));
    if !has("host") {
        request = request.header(http::header::HOST, authority);
    }
    if !has("user-agent") {
        request = request.header(http::header::USER_AGENT, USER_AGENT);
    }
    if !has("accept") {
        request = request.header(http::header::ACCEPT, "*/*");
    }
    for header in headers {
        request = request.header(header.name.as_str(), header.value.as_str());
    }
    let request = request
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("invalid request: {e}"))?;
    let response = sender.send_request(request).await;
    driver.abort();
    response
        .map(|r| r.status().as_u16())
        .map_err(|e| e.to_string())
}

/// A TCP connection to `addr` from the network namespace `netns` (the agent's when
/// `None`).
async fn connect(netns: Option<&Path>, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = match netns {
        None => match addr {
            SocketAddr::V4(_) => TcpSocket::new_v4()?,
            SocketAddr::V6(_) => TcpSocket::new_v6()?,
        },
        Some(netns) => {
            let netns = netns.to_path_buf();
            let (sender, receiver) = tokio::sync::oneshot::channel();
            // A thread of its own: it enters the pod's namespace and ends, so no pooled
            // thread is ever left in the wrong namespace.
            std::thread::Builder::new()
                .name("probe-netns".into())
                .spawn(move || {
                    let _ = sender.send(socket_in(&netns, addr));
                })?;
            let std_socket = receiver
                .await
                .map_err(|_| std::io::Error::other("netns socket thread ended"))??;
            TcpSocket::from_std_stream(std_socket)
        }
    };
    socket.connect(addr).await
}

/// An unconnected, non-blocking TCP socket for `addr` created inside `netns`; the
/// calling thread goes back to its own namespace afterwards.
fn socket_in(netns: &Path, addr: SocketAddr) -> std::io::Result<std::net::TcpStream> {
    use nix::sched::{setns, CloneFlags};
    let own = std::fs::File::open("/proc/thread-self/ns/net")?;
    let target = std::fs::File::open(netns)?;
    setns(&target, CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)?;
    let made = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )
    .and_then(|s| s.set_nonblocking(true).map(|()| s));
    let back = setns(&own, CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from);
    let socket = made?;
    back?;
    Ok(std::net::TcpStream::from(socket))
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{ContainerPort, HTTPHeader};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;
    use crate::runtime::fake::{Call, FakeRuntime};
    use crate::runtime::{ExecOutput, SandboxConfig};

    fn container() -> Container {
        Container {
            name: "app".into(),
            ports: Some(vec![ContainerPort {
                name: Some("http".into()),
                container_port: 8080,
                ..Default::default()
            }]),
            ..Default::default()
        }
    }

    /// Serves one request per connection with `status`, sending each request head to
    /// the returned channel.
    async fn serve(status: u16) -> (u16, mpsc::UnboundedReceiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let (sender, receiver) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = sender.send(String::from_utf8_lossy(&head).into_owned());
                let answer = format!(
                    "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                );
                let _ = stream.write_all(answer.as_bytes()).await;
            }
        });
        (port, receiver)
    }

    fn http_action(port: i32, headers: Vec<HTTPHeader>) -> HTTPGetAction {
        HTTPGetAction {
            host: Some("127.0.0.1".into()),
            path: Some("/healthz".into()),
            port: IntOrString::Int(port),
            http_headers: Some(headers),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn http_get_sends_headers_and_judges_the_status() {
        let (port, mut heads) = serve(200).await;
        let header = HTTPHeader {
            name: "X-Custom".into(),
            value: "probe-me".into(),
        };
        let action = http_action(i32::from(port), vec![header]);
        let target = NetTarget::default();
        assert_eq!(
            http_get(&action, &container(), &target, DEFAULT_TIMEOUT).await,
            Ok(())
        );
        let head = heads
            .recv()
            .await
            .expect("a request arrived")
            .to_lowercase();
        assert!(head.starts_with("get /healthz http/1.1"), "{head}");
        assert!(head.contains("x-custom: probe-me"), "{head}");
        assert!(head.contains("user-agent: kube-probe/1.32"), "{head}");

        // An overridden User-Agent replaces the default.
        let ua = HTTPHeader {
            name: "User-Agent".into(),
            value: "mine".into(),
        };
        let action = http_action(i32::from(port), vec![ua]);
        assert_eq!(
            http_get(&action, &container(), &target, DEFAULT_TIMEOUT).await,
            Ok(())
        );
        let head = heads
            .recv()
            .await
            .expect("a request arrived")
            .to_lowercase();
        assert!(head.contains("user-agent: mine"), "{head}");
        assert!(!head.contains("kube-probe"), "{head}");

        let (port, _heads) = serve(500).await;
        let action = http_action(i32::from(port), vec![]);
        assert_eq!(
            http_get(&action, &container(), &target, DEFAULT_TIMEOUT).await,
            Err("HTTP probe failed with statuscode: 500".into())
        );
        let (port, _heads) = serve(302).await;
        let action = http_action(i32::from(port), vec![]);
        assert_eq!(
            http_get(&action, &container(), &target, DEFAULT_TIMEOUT).await,
            Ok(())
        );
    }

    #[tokio::test]
    async fn tcp_socket_succeeds_only_when_something_listens() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let action = TCPSocketAction {
            host: Some("127.0.0.1".into()),
            port: IntOrString::Int(i32::from(port)),
        };
        let target = NetTarget::default();
        assert_eq!(
            tcp_socket(&action, &container(), &target, DEFAULT_TIMEOUT).await,
            Ok(())
        );
        drop(listener);
        let err = tcp_socket(&action, &container(), &target, DEFAULT_TIMEOUT)
            .await
            .expect_err("nothing listens");
        assert!(
            err.starts_with(&format!("dial tcp 127.0.0.1:{port}: connect:")),
            "{err}"
        );
    }

    #[test]
    fn ports_resolve_by_number_or_name() {
        let c = container();
        assert_eq!(resolve_port(&IntOrString::Int(80), &c), Ok(80));
        assert_eq!(
            resolve_port(&IntOrString::String("http".into()), &c),
            Ok(8080)
        );
        assert_eq!(resolve_port(&IntOrString::String("81".into()), &c), Ok(81));
        assert!(resolve_port(&IntOrString::String("grpc".into()), &c).is_err());
        assert!(resolve_port(&IntOrString::Int(0), &c).is_err());
    }

    #[test]
    fn timing_defaults_like_kubelet() {
        let t = Timing::of(&Probe::default());
        assert_eq!(
            t,
            Timing {
                initial_delay: Duration::ZERO,
                period: Duration::from_secs(10),
                timeout: Duration::from_secs(1),
                success_threshold: 1,
                failure_threshold: 3,
            }
        );
    }

    #[tokio::test]
    async fn exec_goes_through_the_runtime() {
        let runtime = FakeRuntime::new();
        let config = SandboxConfig {
            pod_uid: "u".into(),
            namespace: "default".into(),
            name: "p".into(),
            hostname: "p".into(),
        };
        let sandbox = runtime.create_sandbox(&config).await.expect("sandbox");
        let image = runtime
            .pull_image("img", runtime::PullPolicy::IfNotPresent)
            .await
            .expect("image");
        let id = runtime
            .create_container(&sandbox, &runtime::ContainerConfig::new("app", image, &[]))
            .await
            .expect("container");
        let command = vec!["cat".to_string(), "/tmp/healthy".to_string()];
        assert_eq!(
            exec_action(&runtime, &id, &command, DEFAULT_TIMEOUT).await,
            Ok(())
        );
        runtime.set_exec_result(
            "app",
            ExecOutput {
                exit_code: 1,
                output: b"cat: can't open '/tmp/healthy'\n".to_vec(),
            },
        );
        assert_eq!(
            exec_action(&runtime, &id, &command, DEFAULT_TIMEOUT).await,
            Err("cat: can't open '/tmp/healthy'".into())
        );
        assert!(runtime
            .calls()
            .contains(&Call::Exec("app".into(), command.clone())));
    }
}
