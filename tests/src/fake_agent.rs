//! A scripted `NodeAgent` gRPC server for testing the apiserver's logs and exec proxy
//! without root: TLS with a throwaway self-signed certificate, a client certificate from
//! the cluster CA with CN `rkube-apiserver` required, every request recorded.
//!
//! Logs: container `c` of any pod has the lines `c 1` … `c 5`; `tail_lines` keeps the
//! last ones; with `follow`, the stream stays open after them until
//! [`FakeAgent::release_follow`], then sends `c after release` and ends. A container
//! named `sleepy` is "waiting to start" (gRPC NotFound).
//!
//! Exec without a TTY runs the command on the host (stdin, stdout, stderr and the exit
//! code are real). With a TTY it plays a terminal: it prints `fake tty ready`, answers
//! each resize with `resize WxH`, echoes stdin, and exits 0 once it has read `exit` (or
//! Ctrl-D).

use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use futures::Stream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, Notify};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status, Streaming};

use rkube_proto::node::v1::node_agent_server::{NodeAgent, NodeAgentServer};
use rkube_proto::node::v1::{
    exec_input, exec_output, ExecExit, ExecInput, ExecOutput, ExecStart, LogChunk, LogsRequest,
    StatsRequest, StatsResponse, TerminalSize,
};

/// The only client the fake accepts, as the real agent.
pub const CLIENT_CN: &str = "rkube-apiserver";

/// What the fake was asked.
#[derive(Debug, Default, Clone)]
pub struct Recorded {
    pub logs: Vec<LogsRequest>,
    pub execs: Vec<ExecStart>,
    pub resizes: Vec<TerminalSize>,
    pub stdin_closes: usize,
    /// Client certificate CNs of refused requests.
    pub refused: Vec<String>,
}

#[derive(Clone)]
struct Service {
    recorded: Arc<Mutex<Recorded>>,
    release: Arc<Notify>,
}

/// A running fake agent; stops on drop.
pub struct FakeAgent {
    address: SocketAddr,
    recorded: Arc<Mutex<Recorded>>,
    release: Arc<Notify>,
    shutdown: CancellationToken,
}

impl FakeAgent {
    /// Serves on a free loopback port, trusting client certificates signed by the CA in
    /// `ca_pem` (and then only CN [`CLIENT_CN`]).
    ///
    /// # Errors
    /// When the certificate cannot be made or the port bound.
    pub async fn start(ca_pem: &str) -> anyhow::Result<FakeAgent> {
        let key = rcgen::KeyPair::generate().context("generate key")?;
        let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
            .context("certificate parameters")?;
        let cert = params.self_signed(&key).context("self-sign")?;
        let tls = ServerTlsConfig::new()
            .identity(Identity::from_pem(cert.pem(), key.serialize_pem()))
            .client_ca_root(Certificate::from_pem(ca_pem));
        let listener = tokio::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
            .await
            .context("bind fake agent")?;
        let address = listener.local_addr().context("fake agent address")?;
        let recorded = Arc::new(Mutex::new(Recorded::default()));
        let release = Arc::new(Notify::new());
        let service = Service {
            recorded: recorded.clone(),
            release: release.clone(),
        };
        let shutdown = CancellationToken::new();
        let server = Server::builder()
            .tls_config(tls)
            .context("fake agent TLS")?
            .add_service(NodeAgentServer::new(service))
            .serve_with_incoming_shutdown(
                TcpListenerStream::new(listener),
                shutdown.clone().cancelled_owned(),
            );
        tokio::spawn(async move {
            if let Err(e) = server.await {
                eprintln!("fake agent stopped: {e}");
            }
        });
        Ok(FakeAgent {
            address,
            recorded,
            release,
            shutdown,
        })
    }

    /// Where it listens.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// A copy of what it was asked so far.
    pub fn recorded(&self) -> Recorded {
        self.recorded.lock().expect("fake agent lock").clone()
    }

    /// Lets followed log streams send their last line and end.
    pub fn release_follow(&self) {
        self.release.notify_waiters();
    }
}

impl Drop for FakeAgent {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl Service {
    /// Refuses clients whose certificate is not the apiserver's, as the real agent.
    fn check_client<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let cn = request
            .peer_certs()
            .and_then(|certs| {
                let der = certs.first()?.to_vec();
                let (_, cert) = x509_parser::parse_x509_certificate(&der).ok()?;
                let cn = cert
                    .subject()
                    .iter_common_name()
                    .next()?
                    .as_str()
                    .ok()?
                    .to_string();
                Some(cn)
            })
            .unwrap_or_default();
        if cn == CLIENT_CN {
            Ok(())
        } else {
            self.lock().refused.push(cn.clone());
            Err(Status::unauthenticated(format!(
                "client {cn:?} may not use this agent"
            )))
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Recorded> {
        self.recorded.lock().expect("fake agent lock")
    }
}

type OutputStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl NodeAgent for Service {
    type LogsStream = OutputStream<LogChunk>;
    type ExecStream = OutputStream<ExecOutput>;

    async fn logs(
        &self,
        request: Request<LogsRequest>,
    ) -> Result<Response<Self::LogsStream>, Status> {
        self.check_client(&request)?;
        let req = request.into_inner();
        self.lock().logs.push(req.clone());
        let container = req.container.clone().unwrap_or_default();
        if container.container == "sleepy" {
            return Err(Status::not_found(format!(
                "container {:?} in pod {:?} is waiting to start: ContainerCreating",
                container.container, container.pod
            )));
        }
        let name = container.container;
        let mut lines: Vec<String> = (1..=5).map(|i| format!("{name} {i}\n")).collect();
        if let Some(n) = req.tail_lines {
            let keep = usize::try_from(n).unwrap_or(0).min(lines.len());
            lines.drain(..lines.len() - keep);
        }
        let (tx, rx) = mpsc::channel(8);
        let release = self.release.clone();
        let follow = req.follow;
        tokio::spawn(async move {
            // Registered before the first line goes out, so a release that follows
            // what the client read is never missed.
            let released = release.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            for line in lines {
                let chunk = LogChunk {
                    data: line.into_bytes(),
                };
                if tx.send(Ok(chunk)).await.is_err() {
                    return;
                }
            }
            if follow {
                tokio::select! {
                    _ = released => {}
                    _ = tx.closed() => return,
                }
                let last = LogChunk {
                    data: format!("{name} after release\n").into_bytes(),
                };
                let _ = tx.send(Ok(last)).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn exec(
        &self,
        request: Request<Streaming<ExecInput>>,
    ) -> Result<Response<Self::ExecStream>, Status> {
        self.check_client(&request)?;
        let mut input = request.into_inner();
        let start = match input.message().await? {
            Some(ExecInput {
                input: Some(exec_input::Input::Start(start)),
            }) => start,
            _ => return Err(Status::invalid_argument("the first message must be start")),
        };
        self.lock().execs.push(start.clone());
        let (tx, rx) = mpsc::channel(16);
        let service = self.clone();
        if start.tty {
            tokio::spawn(async move { service.terminal(input, tx).await });
        } else {
            tokio::spawn(async move { service.run(start, input, tx).await });
        }
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn stats(
        &self,
        request: Request<StatsRequest>,
    ) -> Result<Response<StatsResponse>, Status> {
        self.check_client(&request)?;
        Ok(Response::new(StatsResponse::default()))
    }
}

type Out = mpsc::Sender<Result<ExecOutput, Status>>;

fn output(o: exec_output::Output) -> Result<ExecOutput, Status> {
    Ok(ExecOutput { output: Some(o) })
}

impl Service {
    /// Runs the command on the host with piped standard streams.
    async fn run(&self, start: ExecStart, mut input: Streaming<ExecInput>, tx: Out) {
        let Some((program, args)) = start.command.split_first() else {
            let exit = ExecExit {
                exit_code: -1,
                error: "no command".into(),
            };
            let _ = tx.send(output(exec_output::Output::Exit(exit))).await;
            return;
        };
        let child = tokio::process::Command::new(program)
            .args(args)
            .stdin(if start.stdin {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) => {
                let exit = ExecExit {
                    exit_code: -1,
                    error: format!("cannot run {program:?}: {e}"),
                };
                let _ = tx.send(output(exec_output::Output::Exit(exit))).await;
                return;
            }
        };
        let mut stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        let pump = |mut from: Box<dyn tokio::io::AsyncRead + Send + Unpin>,
                    tx: Out,
                    wrap: fn(Vec<u8>) -> exec_output::Output| async move {
            let mut buf = vec![0u8; 8192];
            while let Ok(n) = from.read(&mut buf).await {
                if n == 0 || tx.send(output(wrap(buf[..n].to_vec()))).await.is_err() {
                    break;
                }
            }
        };
        let out_task = tokio::spawn(pump(
            Box::new(stdout),
            tx.clone(),
            exec_output::Output::Stdout,
        ));
        let err_task = tokio::spawn(pump(
            Box::new(stderr),
            tx.clone(),
            exec_output::Output::Stderr,
        ));
        let recorded = self.recorded.clone();
        let feeder = tokio::spawn(async move {
            while let Ok(Some(message)) = input.message().await {
                match message.input {
                    Some(exec_input::Input::Stdin(data)) => {
                        if let Some(pipe) = stdin.as_mut() {
                            let _ = pipe.write_all(&data).await;
                        }
                    }
                    Some(exec_input::Input::CloseStdin(_)) => {
                        recorded.lock().expect("lock").stdin_closes += 1;
                        stdin = None;
                    }
                    Some(exec_input::Input::Resize(size)) => {
                        recorded.lock().expect("lock").resizes.push(size);
                    }
                    _ => {}
                }
            }
        });
        let status = child.wait().await;
        let _ = out_task.await;
        let _ = err_task.await;
        feeder.abort();
        let exit = match status {
            Ok(s) => ExecExit {
                exit_code: s.code().unwrap_or(-1),
                error: String::new(),
            },
            Err(e) => ExecExit {
                exit_code: -1,
                error: e.to_string(),
            },
        };
        let _ = tx.send(output(exec_output::Output::Exit(exit))).await;
    }

    /// Plays a terminal until `exit` or Ctrl-D.
    async fn terminal(&self, mut input: Streaming<ExecInput>, tx: Out) {
        let say = |text: String| output(exec_output::Output::Stdout(text.into_bytes()));
        if tx.send(say("fake tty ready\r\n".into())).await.is_err() {
            return;
        }
        let mut typed = Vec::new();
        let deadline = tokio::time::sleep(Duration::from_secs(30));
        tokio::pin!(deadline);
        loop {
            let message = tokio::select! {
                _ = &mut deadline => break,
                m = input.message() => m,
            };
            match message {
                Ok(Some(ExecInput {
                    input: Some(exec_input::Input::Resize(size)),
                })) => {
                    self.lock().resizes.push(size);
                    let text = format!("resize {}x{}\r\n", size.width, size.height);
                    let _ = tx.send(say(text)).await;
                }
                Ok(Some(ExecInput {
                    input: Some(exec_input::Input::Stdin(data)),
                })) => {
                    typed.extend_from_slice(&data);
                    let _ = tx
                        .send(output(exec_output::Output::Stdout(data.clone())))
                        .await;
                    let text = String::from_utf8_lossy(&typed);
                    if text.contains("exit") || typed.contains(&4) {
                        break;
                    }
                }
                Ok(Some(ExecInput {
                    input: Some(exec_input::Input::CloseStdin(_)),
                })) => {
                    self.lock().stdin_closes += 1;
                    break;
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return,
            }
        }
        let exit = ExecExit {
            exit_code: 0,
            error: String::new(),
        };
        let _ = tx.send(output(exec_output::Output::Exit(exit))).await;
    }
}
