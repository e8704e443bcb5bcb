//! `rkubectl exec`: runs a command in a container over the apiserver's WebSocket
//! `v5.channel.k8s.io` protocol — binary frames whose first byte is the channel (0
//! stdin, 1 stdout, 2 stderr, 3 the final Status, 4 resize, 255 close) — with `-i`
//! forwarding stdin (and `[255, 0]` at EOF) and `-t` putting the local terminal in raw
//! mode and sending its size, again on every SIGWINCH. The exit code comes from the
//! channel-3 Status.

use std::sync::Arc;

use anyhow::Context as _;
use clap::Args;
use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{self, Message};

use super::client::{self, ApiStatus};
use super::{pods, Ctx, Exit};

/// The only subprotocol offered, as kubectl ≥ 1.30.
pub const PROTOCOL: &str = "v5.channel.k8s.io";

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const STATUS: u8 = 3;
const RESIZE: u8 = 4;
const CLOSE: u8 = 255;

/// Arguments of `exec`.
#[derive(Debug, Args)]
pub struct ExecArgs {
    /// `POD`, or `TYPE/NAME` (e.g. `deploy/web`: one of its pods).
    pub target: String,
    /// The container (default: the pod's default or first container).
    #[arg(short = 'c', long)]
    pub container: Option<String>,
    /// Pass stdin to the command.
    #[arg(short = 'i', long)]
    pub stdin: bool,
    /// Allocate a terminal (stdin must be a terminal for raw mode).
    #[arg(short = 't', long)]
    pub tty: bool,
    /// The command and its arguments (after `--`).
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

/// The exit code a channel-3 Status means, and what to print about it.
fn exit_of(status: &Value) -> (i32, Option<String>) {
    if status["status"] == "Success" {
        return (0, None);
    }
    if status["reason"] == "NonZeroExitCode" {
        let code = status["details"]["causes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["reason"] == "ExitCode")
            .and_then(|c| c["message"].as_str())
            .and_then(|m| m.parse::<i32>().ok());
        if let Some(code) = code {
            return (
                code,
                Some(format!("command terminated with exit code {code}")),
            );
        }
    }
    (
        1,
        Some(format!(
            "error: {}",
            status["message"].as_str().unwrap_or("exec failed")
        )),
    )
}

/// A resize message for channel 4.
fn resize_frame(width: u16, height: u16) -> Vec<u8> {
    let mut frame = vec![RESIZE];
    frame.extend(format!("{{\"Width\":{width},\"Height\":{height}}}").into_bytes());
    frame
}

/// The local terminal in raw mode until dropped.
struct RawTerminal {
    original: rustix::termios::Termios,
}

impl RawTerminal {
    fn enter() -> Option<RawTerminal> {
        let stdin = std::io::stdin();
        if !rustix::termios::isatty(&stdin) {
            return None;
        }
        let original = rustix::termios::tcgetattr(&stdin).ok()?;
        let mut raw = original.clone();
        raw.make_raw();
        rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Now, &raw).ok()?;
        Some(RawTerminal { original })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        let _ = rustix::termios::tcsetattr(
            std::io::stdin(),
            rustix::termios::OptionalActions::Now,
            &self.original,
        );
    }
}

fn terminal_size() -> Option<(u16, u16)> {
    let ws = rustix::termios::tcgetwinsize(std::io::stdout()).ok()?;
    Some((ws.ws_col, ws.ws_row))
}

fn tls_config(ctx: &Ctx) -> anyhow::Result<rustls::ClientConfig> {
    let r = &ctx.resolved;
    let ca = r
        .ca_pem
        .as_ref()
        .context("exec needs the cluster CA (certificate-authority[-data]) in the kubeconfig")?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut ca.as_slice()) {
        roots
            .add(cert.context("read CA certificate")?)
            .context("add CA certificate")?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("TLS versions")?
    .with_root_certificates(roots);
    Ok(match (&r.client_cert_pem, &r.client_key_pem) {
        (Some(cert), Some(key)) => {
            let certs = rustls_pemfile::certs(&mut cert.as_slice())
                .collect::<Result<Vec<_>, _>>()
                .context("read client certificate")?;
            let key = rustls_pemfile::private_key(&mut key.as_slice())
                .context("read client key")?
                .context("no client key in the kubeconfig")?;
            builder
                .with_client_auth_cert(certs, key)
                .context("use client certificate")?
        }
        _ => builder.with_no_client_auth(),
    })
}

/// Runs `exec`; the command's exit code becomes rkubectl's.
///
/// # Errors
/// When the pod or container cannot be found, the connection or upgrade fails, or the
/// command fails ([`Exit`] carries its code).
pub async fn run(ctx: &Ctx, args: ExecArgs) -> anyhow::Result<()> {
    let pod = pods::pick_pod(ctx, &args.target).await?;
    let container = pods::pick_container(&pod, args.container.as_deref())?;
    let ns = pod["metadata"]["namespace"]
        .as_str()
        .unwrap_or(&ctx.client.namespace);
    let name = pod["metadata"]["name"].as_str().unwrap_or_default();
    if pod["status"]["phase"] == "Succeeded" || pod["status"]["phase"] == "Failed" {
        anyhow::bail!(
            "cannot exec into a container in a completed pod; current phase is {}",
            pod["status"]["phase"].as_str().unwrap_or_default()
        );
    }
    let mut url = reqwest::Url::parse(ctx.client.server()).context("parse server URL")?;
    url.set_path(&format!("/api/v1/namespaces/{ns}/pods/{name}/exec"));
    {
        let mut q = url.query_pairs_mut();
        for c in &args.command {
            q.append_pair("command", c);
        }
        q.append_pair("container", &container);
        if args.stdin {
            q.append_pair("stdin", "true");
        }
        q.append_pair("stdout", "true");
        if args.tty {
            q.append_pair("tty", "true");
        } else {
            q.append_pair("stderr", "true");
        }
    }
    let tls = url.scheme() == "https";
    let host = url
        .host_str()
        .context("server URL has no host")?
        .to_string();
    let port = url
        .port_or_known_default()
        .context("server URL has no port")?;
    url.set_scheme(if tls { "wss" } else { "ws" })
        .map_err(|()| anyhow::anyhow!("cannot make a WebSocket URL of {}", ctx.client.server()))?;
    let mut request = url
        .as_str()
        .into_client_request()
        .context("build WebSocket request")?;
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", HeaderValue::from_static(PROTOCOL));
    if let Some(token) = &ctx.resolved.token {
        let mut v = HeaderValue::from_str(&format!("Bearer {token}"))
            .context("the kubeconfig token is not a valid header")?;
        v.set_sensitive(true);
        request.headers_mut().insert("Authorization", v);
    }
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .with_context(|| format!("connect to {host}:{port}"))?;
    let code = if tls {
        let connector = tokio_rustls::TlsConnector::from(Arc::new(tls_config(ctx)?));
        let server_name = rustls::pki_types::ServerName::try_from(host.clone())
            .with_context(|| format!("invalid server name {host:?}"))?;
        let stream = connector
            .connect(server_name, tcp)
            .await
            .context("TLS handshake with the apiserver")?;
        session(request, stream, &args).await?
    } else {
        session(request, tcp, &args).await?
    };
    if code != 0 {
        return Err(Exit(code).into());
    }
    Ok(())
}

async fn session<S>(
    request: tungstenite::handshake::client::Request,
    stream: S,
    args: &ExecArgs,
) -> anyhow::Result<i32>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let ws = match tokio_tungstenite::client_async(request, stream).await {
        Ok((ws, _)) => ws,
        Err(tungstenite::Error::Http(response)) => {
            let body = response.body().clone().unwrap_or_default();
            let status: ApiStatus = serde_json::from_slice(&body).unwrap_or_else(|_| ApiStatus {
                reason: "BadRequest".into(),
                message: String::from_utf8_lossy(&body).trim().to_string(),
                code: response.status().as_u16(),
                ..ApiStatus::default()
            });
            return Err(client::Error::Status(Box::new(status)).into());
        }
        Err(e) => return Err(e).context("upgrade to WebSocket"),
    };
    let (mut sink, mut source) = ws.split();
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(16);
    let _raw = if args.tty && args.stdin {
        RawTerminal::enter()
    } else {
        None
    };
    if args.tty {
        if let Some((w, h)) = terminal_size() {
            let _ = tx.send(resize_frame(w, h)).await;
        }
        let tx = tx.clone();
        tokio::spawn(async move {
            let Ok(mut winch) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
            else {
                return;
            };
            while winch.recv().await.is_some() {
                if let Some((w, h)) = terminal_size() {
                    if tx.send(resize_frame(w, h)).await.is_err() {
                        return;
                    }
                }
            }
        });
    }
    if args.stdin {
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut stdin = tokio::io::stdin();
            let mut buf = vec![0u8; 8192];
            loop {
                match stdin.read(&mut buf).await {
                    Ok(0) | Err(_) => {
                        let _ = tx.send(vec![CLOSE, STDIN]).await;
                        return;
                    }
                    Ok(n) => {
                        let mut frame = Vec::with_capacity(n + 1);
                        frame.push(STDIN);
                        frame.extend_from_slice(&buf[..n]);
                        if tx.send(frame).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
    }
    drop(tx);
    let mut stdout = tokio::io::stdout();
    let mut stderr = tokio::io::stderr();
    let mut code = 0;
    let mut sending = true;
    loop {
        tokio::select! {
            frame = rx.recv(), if sending => match frame {
                Some(frame) => {
                    if sink.send(Message::Binary(frame.into())).await.is_err() {
                        sending = false;
                    }
                }
                None => sending = false,
            },
            message = source.next() => match message {
                Some(Ok(Message::Binary(data))) => {
                    let Some((&channel, payload)) = data.split_first() else { continue };
                    match channel {
                        STDOUT => {
                            stdout.write_all(payload).await.context("write stdout")?;
                            stdout.flush().await.context("flush stdout")?;
                        }
                        STDERR => {
                            stderr.write_all(payload).await.context("write stderr")?;
                            stderr.flush().await.context("flush stderr")?;
                        }
                        STATUS => {
                            let status: Value = serde_json::from_slice(payload).unwrap_or_default();
                            let (c, message) = exit_of(&status);
                            code = c;
                            if let Some(m) = message {
                                drop(_raw);
                                eprintln!("{m}");
                                let _ = sink.close().await;
                                return Ok(code);
                            }
                        }
                        _ => {}
                    }
                }
                Some(Ok(Message::Close(_))) | None => break,
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "exec stream ended");
                    break;
                }
            },
        }
    }
    let _ = sink.close().await;
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn statuses_become_exit_codes() {
        assert_eq!(exit_of(&json!({"status": "Success"})), (0, None));
        let failed = json!({"status": "Failure", "reason": "NonZeroExitCode",
            "message": "command terminated with non-zero exit code: 3",
            "details": {"causes": [{"reason": "ExitCode", "message": "3"}]}});
        assert_eq!(
            exit_of(&failed),
            (3, Some("command terminated with exit code 3".into()))
        );
        let other =
            json!({"status": "Failure", "reason": "InternalError", "message": "no such container"});
        assert_eq!(
            exit_of(&other),
            (1, Some("error: no such container".into()))
        );
        assert_eq!(
            resize_frame(80, 24),
            b"\x04{\"Width\":80,\"Height\":24}".to_vec()
        );
    }
}
