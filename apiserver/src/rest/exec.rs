//! `GET …/pods/{name}/exec` over WebSocket (`v5.channel.k8s.io`, also `v4`), bridged
//! to the node agent's `Exec` stream.
//!
//! Every WebSocket message is binary; its first byte is the channel: 0 stdin, 1 stdout,
//! 2 stderr, 3 the final `Status`, 4 terminal resizes (`{"Width":…,"Height":…}`), and
//! (v5 only) 255 "close", whose second byte names the channel the client closed. The
//! server always ends with a channel-3 `Status` (with the exit code when the command
//! failed) and a close frame. SPDY, which kubectl tries when the upgrade is refused, is
//! answered with a 400 `Status`.

use std::time::Duration;

use axum::body::Body;
use axum::http::{header, request::Parts, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tracing::{debug, info_span, Instrument};

use rkube_api::status::Status;
use rkube_proto::node::v1::{
    exec_input, exec_output, ExecExit, ExecInput, ExecStart, TerminalSize,
};

use super::stream::{bool_param, locate, PodContainer};
use super::ApiState;
use crate::node_proxy::status_from_grpc;

/// The subprotocols this server speaks, preferred first.
pub const SUBPROTOCOLS: [&str; 2] = ["v5.channel.k8s.io", "v4.channel.k8s.io"];

/// The channels of the remote-command protocol.
pub mod channel {
    pub const STDIN: u8 = 0;
    pub const STDOUT: u8 = 1;
    pub const STDERR: u8 = 2;
    pub const STATUS: u8 = 3;
    pub const RESIZE: u8 = 4;
    pub const CLOSE: u8 = 255;
}

/// How long the server waits for the client's close frame after its own.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// What a client message asks for.
#[derive(Debug, PartialEq)]
pub enum ClientFrame {
    Stdin(Bytes),
    Resize {
        width: u32,
        height: u32,
    },
    /// The client closed one of its streams (v5); channel 0 is stdin.
    Close(u8),
    /// A channel the server does not read, or a frame it cannot parse.
    Ignored(String),
}

/// `{"Width":80,"Height":24}`, as `remotecommand.TerminalSize` encodes it.
#[derive(Deserialize)]
struct Resize {
    #[serde(rename = "Width")]
    width: u32,
    #[serde(rename = "Height")]
    height: u32,
}

/// Decodes one binary message from the client.
pub fn decode_client(data: &[u8]) -> ClientFrame {
    match data.split_first() {
        None => ClientFrame::Ignored("an empty message".into()),
        Some((&channel::STDIN, rest)) => ClientFrame::Stdin(Bytes::copy_from_slice(rest)),
        Some((&channel::RESIZE, rest)) => match serde_json::from_slice::<Resize>(rest) {
            Ok(r) => ClientFrame::Resize {
                width: r.width,
                height: r.height,
            },
            Err(e) => ClientFrame::Ignored(format!("a bad resize message: {e}")),
        },
        Some((&channel::CLOSE, [closed, ..])) => ClientFrame::Close(*closed),
        Some((c, _)) => ClientFrame::Ignored(format!("a message on channel {c}")),
    }
}

/// One server message: the channel byte, then `data`.
pub fn encode(channel: u8, data: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(data.len() + 1);
    out.push(channel);
    out.extend_from_slice(data);
    Bytes::from(out)
}

/// The channel-3 `Status` for how the command ended: `Success`, the `NonZeroExitCode`
/// failure kubectl turns into its own exit code, or the agent's error.
pub fn exit_status(exit: &ExecExit) -> Value {
    if !exit.error.is_empty() {
        let mut status = Status::internal(exit.error.clone()).to_json();
        status["metadata"] = json!({});
        return status;
    }
    if exit.exit_code == 0 {
        return json!({"metadata": {}, "status": "Success"});
    }
    json!({
        "metadata": {},
        "status": "Failure",
        "message": format!("command terminated with non-zero exit code: exit status {}", exit.exit_code),
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": exit.exit_code.to_string()}]},
    })
}

/// `PodExecOptions`, validated.
#[derive(Debug, Default, PartialEq)]
pub struct ExecOptions {
    pub container: Option<String>,
    pub command: Vec<String>,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

impl ExecOptions {
    /// Reads the query (`command` repeats, one argument each).
    ///
    /// # Errors
    /// 400 for a malformed flag, no command, or no stream at all.
    pub fn parse(query: &str) -> Result<Self, Box<Status>> {
        let pairs = serde_urlencoded::from_str::<Vec<(String, String)>>(query)
            .map_err(|e| Box::new(Status::bad_request(format!("invalid query: {e}"))))?;
        let last = |k: &str| {
            pairs
                .iter()
                .rev()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        let tty = bool_param(last("tty"), "tty")?;
        let opts = ExecOptions {
            container: last("container")
                .filter(|c| !c.is_empty())
                .map(String::from),
            command: pairs
                .iter()
                .filter(|(k, _)| k == "command")
                .map(|(_, v)| v.clone())
                .collect(),
            stdin: bool_param(last("stdin"), "stdin")?,
            stdout: bool_param(last("stdout"), "stdout")?,
            // A terminal merges stderr into stdout.
            stderr: bool_param(last("stderr"), "stderr")? && !tty,
            tty,
        };
        if opts.command.is_empty() {
            return Err(Box::new(Status::bad_request(
                "you must specify at least 1 command",
            )));
        }
        if !(opts.stdin || opts.stdout || opts.stderr) {
            return Err(Box::new(Status::bad_request(
                "you must specify at least 1 of stdin, stdout, stderr",
            )));
        }
        Ok(opts)
    }
}

/// The WebSocket handshake a request asks for: its key and the subprotocol chosen.
#[derive(Debug, PartialEq)]
pub struct Handshake {
    pub key: String,
    pub protocol: &'static str,
}

/// Checks the upgrade request.
///
/// # Errors
/// 400 when the request is not a WebSocket upgrade (kubectl's SPDY fallback included)
/// or offers none of [`SUBPROTOCOLS`].
pub fn handshake(method: &Method, headers: &HeaderMap) -> Result<Handshake, Box<Status>> {
    let header_has = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    if headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().starts_with("spdy"))
    {
        return Err(Box::new(Status::bad_request(
            "SPDY is not supported: rkube serves exec over WebSocket (v5.channel.k8s.io) only; use kubectl v1.30 or later",
        )));
    }
    if method != Method::GET
        || !header_has(header::UPGRADE, "websocket")
        || !header_has(header::CONNECTION, "upgrade")
    {
        return Err(Box::new(Status::bad_request(
            "Upgrade request required: exec needs a WebSocket upgrade (v5.channel.k8s.io)",
        )));
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        return Err(Box::new(Status::bad_request(
            "unsupported WebSocket version: want 13",
        )));
    }
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .and_then(|v| v.to_str().ok())
        .filter(|k| !k.is_empty())
        .ok_or_else(|| Box::new(Status::bad_request("missing Sec-WebSocket-Key")))?
        .to_string();
    let offered: Vec<String> = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_string())
        .collect();
    let protocol = SUBPROTOCOLS
        .into_iter()
        .find(|p| offered.iter().any(|o| o == p))
        .ok_or_else(|| {
            Box::new(Status::bad_request(format!(
                "none of the offered subprotocols {offered:?} is supported; this server speaks {}",
                SUBPROTOCOLS.join(", ")
            )))
        })?;
    Ok(Handshake { key, protocol })
}

/// Serves one exec request: validation and the pod's node before the upgrade (errors
/// are plain `Status` answers), then the bridge on the upgraded connection.
pub(super) async fn serve(
    state: &ApiState,
    mut parts: Parts,
    namespace: &str,
    name: &str,
) -> Response {
    let prepared = async {
        let opts = ExecOptions::parse(parts.uri.query().unwrap_or(""))?;
        let target = locate(state, namespace, name, opts.container.as_deref()).await?;
        let handshake = handshake(&parts.method, &parts.headers)?;
        let upgrade = parts
            .extensions
            .remove::<hyper::upgrade::OnUpgrade>()
            .ok_or_else(|| {
                Box::new(Status::bad_request(
                    "this connection cannot be upgraded (WebSocket needs HTTP/1.1)",
                ))
            })?;
        Ok::<_, Box<Status>>((opts, target, handshake, upgrade))
    }
    .await;
    let (opts, target, handshake, upgrade) = match prepared {
        Ok(p) => p,
        Err(status) => return super::status_response(&status),
    };
    let span = info_span!("exec", pod = %name, namespace, node = %target.node, container = %target.container.container);
    tokio::spawn(
        async move {
            match upgrade.await {
                Ok(upgraded) => {
                    let ws = WebSocketStream::from_raw_socket(
                        TokioIo::new(upgraded),
                        Role::Server,
                        None,
                    )
                    .await;
                    bridge(ws, opts, target).await;
                }
                Err(e) => debug!(error = %e, "exec upgrade failed"),
            }
        }
        .instrument(span),
    );
    let accept =
        tokio_tungstenite::tungstenite::handshake::derive_accept_key(handshake.key.as_bytes());
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static(handshake.protocol),
    );
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    resp
}

/// Runs the exec on the agent and copies between it and the WebSocket until the
/// command ends or the client goes; always ends with a channel-3 `Status` and a close
/// frame when the client is still there.
async fn bridge<S>(ws: WebSocketStream<S>, opts: ExecOptions, mut target: PodContainer)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, mut source) = ws.split();
    let (tx, rx) = mpsc::channel::<ExecInput>(16);
    let start = ExecInput {
        input: Some(exec_input::Input::Start(ExecStart {
            container: Some(target.container.clone()),
            command: opts.command.clone(),
            stdin: opts.stdin,
            stdout: opts.stdout,
            stderr: opts.stderr,
            tty: opts.tty,
            size: None,
        })),
    };
    // Cannot fail: the receiver is still here.
    let _ = tx.send(start).await;

    // Client to agent, until the client closes or goes away; then the agent's input
    // ends with it.
    let stdin = opts.stdin;
    let reader = async move {
        while let Some(message) = source.next().await {
            let data = match message {
                Ok(Message::Binary(data)) => data,
                Ok(Message::Close(_)) | Err(_) => break,
                Ok(_) => continue,
            };
            let input = match decode_client(&data) {
                ClientFrame::Stdin(bytes) if stdin => exec_input::Input::Stdin(bytes.to_vec()),
                ClientFrame::Resize { width, height } => {
                    exec_input::Input::Resize(TerminalSize { width, height })
                }
                ClientFrame::Close(channel::STDIN) if stdin => exec_input::Input::CloseStdin(true),
                other => {
                    debug!(frame = ?other, "ignored client frame");
                    continue;
                }
            };
            if tx.send(ExecInput { input: Some(input) }).await.is_err() {
                break;
            }
        }
    };
    tokio::pin!(reader);

    let call = target.client.exec(ReceiverStream::new(rx));
    let mut output = tokio::select! {
        _ = &mut reader => {
            debug!("client left before the exec started");
            return;
        }
        response = call => match response {
            Ok(r) => r.into_inner(),
            Err(e) => {
                let status = failure_json(&status_from_grpc(&e));
                finish(&mut sink, &status, reader).await;
                return;
            }
        },
    };
    loop {
        let message = tokio::select! {
            _ = &mut reader => {
                debug!("client left; cancelling the exec");
                return;
            }
            message = output.message() => message,
        };
        let frame = match message {
            Ok(Some(out)) => match out.output {
                Some(exec_output::Output::Stdout(data)) => encode(channel::STDOUT, &data),
                Some(exec_output::Output::Stderr(data)) => encode(channel::STDERR, &data),
                Some(exec_output::Output::Exit(exit)) => {
                    debug!(exit_code = exit.exit_code, error = %exit.error, "exec ended");
                    finish(&mut sink, &exit_status(&exit), reader).await;
                    return;
                }
                None => continue,
            },
            Ok(None) => {
                let status =
                    Status::internal("the node agent ended the exec stream without an exit status");
                finish(&mut sink, &failure_json(&status), reader).await;
                return;
            }
            Err(e) => {
                finish(&mut sink, &failure_json(&status_from_grpc(&e)), reader).await;
                return;
            }
        };
        if sink.send(Message::Binary(frame)).await.is_err() {
            debug!("client connection broke; cancelling the exec");
            return;
        }
    }
}

/// A failure `Status` as channel-3 JSON.
fn failure_json(status: &Status) -> Value {
    let mut v = status.to_json();
    v["metadata"] = json!({});
    v
}

/// Sends the final status and a close frame, then lets the client close (reading what
/// it still sends, so that closing the socket does not reset the status away).
async fn finish<K, R>(sink: &mut K, status: &Value, reader: std::pin::Pin<&mut R>)
where
    K: futures::Sink<Message> + Unpin,
    R: std::future::Future<Output = ()>,
{
    let body = serde_json::to_vec(status).expect("a JSON value always serialises");
    let close = CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    };
    if sink
        .send(Message::Binary(encode(channel::STATUS, &body)))
        .await
        .is_ok()
        && sink.send(Message::Close(Some(close))).await.is_ok()
    {
        let _ = tokio::time::timeout(CLOSE_WAIT, reader).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_frames_decode_by_channel() {
        let cases: [(&[u8], ClientFrame); 7] = [
            (
                b"\x00ls -l\r",
                ClientFrame::Stdin(Bytes::from_static(b"ls -l\r")),
            ),
            (b"\x00", ClientFrame::Stdin(Bytes::new())),
            (
                b"\x04{\"Width\":80,\"Height\":24}\n",
                ClientFrame::Resize {
                    width: 80,
                    height: 24,
                },
            ),
            (
                b"\x04{\"Width\":0,\"Height\":0}",
                ClientFrame::Resize {
                    width: 0,
                    height: 0,
                },
            ),
            (b"\xff\x00", ClientFrame::Close(0)),
            (b"", ClientFrame::Ignored("an empty message".into())),
            (
                b"\x01out",
                ClientFrame::Ignored("a message on channel 1".into()),
            ),
        ];
        for (data, want) in cases {
            assert_eq!(decode_client(data), want, "{data:?}");
        }
        assert!(matches!(
            decode_client(b"\x04{\"Width\":\"x\"}"),
            ClientFrame::Ignored(m) if m.starts_with("a bad resize message")
        ));
        assert!(matches!(decode_client(b"\xff"), ClientFrame::Ignored(_)));
    }

    #[test]
    fn server_frames_carry_the_channel_first() {
        assert_eq!(&encode(channel::STDOUT, b"hi\n")[..], b"\x01hi\n");
        assert_eq!(&encode(channel::STDERR, b"")[..], b"\x02");
        assert_eq!(&encode(channel::STATUS, b"{}")[..], b"\x03{}");
    }

    #[test]
    fn exit_statuses_are_what_kubectl_reads() {
        assert_eq!(
            serde_json::to_string(&exit_status(&ExecExit::default())).expect("json"),
            r#"{"metadata":{},"status":"Success"}"#
        );
        let failed = exit_status(&ExecExit {
            exit_code: 3,
            error: String::new(),
        });
        assert_eq!(
            failed,
            json!({
                "metadata": {},
                "status": "Failure",
                "message": "command terminated with non-zero exit code: exit status 3",
                "reason": "NonZeroExitCode",
                "details": {"causes": [{"reason": "ExitCode", "message": "3"}]},
            })
        );
        let error = exit_status(&ExecExit {
            exit_code: -1,
            error: "executable file \"nope\" not found".into(),
        });
        assert_eq!(error["status"], "Failure");
        assert_eq!(error["reason"], "InternalError");
        assert_eq!(error["message"], "executable file \"nope\" not found");
    }

    #[test]
    fn exec_options_parse_repeated_commands() {
        let opts = ExecOptions::parse(
            "command=sh&command=-c&command=echo+hi%3B+exit+3&container=main&stdin=true&stdout=true&stderr=true",
        )
        .expect("valid");
        assert_eq!(
            opts,
            ExecOptions {
                container: Some("main".into()),
                command: vec!["sh".into(), "-c".into(), "echo hi; exit 3".into()],
                stdin: true,
                stdout: true,
                stderr: true,
                tty: false,
            }
        );
        let tty = ExecOptions::parse("command=sh&stdin=true&stdout=true&stderr=true&tty=true")
            .expect("valid");
        assert!(tty.tty && !tty.stderr, "a terminal has no separate stderr");

        let cases = [
            ("stdout=true", "you must specify at least 1 command"),
            (
                "command=ls",
                "you must specify at least 1 of stdin, stdout, stderr",
            ),
            (
                "command=ls&stdout=maybe",
                "stdout: Invalid value: \"maybe\": must be a boolean",
            ),
        ];
        for (query, want) in cases {
            let status = ExecOptions::parse(query).expect_err(query);
            assert_eq!(
                (status.code, status.message.as_str()),
                (400, want),
                "{query}"
            );
        }
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn handshakes_pick_v5_and_refuse_spdy() {
        let ws = [
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ];
        let with = |protocols: &'static str| {
            let mut h = headers(&ws);
            h.append(
                header::SEC_WEBSOCKET_PROTOCOL,
                HeaderValue::from_static(protocols),
            );
            h
        };
        assert_eq!(
            handshake(&Method::GET, &with("v5.channel.k8s.io")).expect("v5"),
            Handshake {
                key: "dGhlIHNhbXBsZSBub25jZQ==".into(),
                protocol: "v5.channel.k8s.io"
            }
        );
        assert_eq!(
            handshake(&Method::GET, &with("v4.channel.k8s.io, v5.channel.k8s.io"))
                .expect("both")
                .protocol,
            "v5.channel.k8s.io"
        );
        assert_eq!(
            handshake(&Method::GET, &with("v4.channel.k8s.io"))
                .expect("v4")
                .protocol,
            "v4.channel.k8s.io"
        );
        let refused = handshake(&Method::GET, &with("channel.k8s.io")).expect_err("old");
        assert_eq!(refused.code, 400);

        let spdy = headers(&[
            ("connection", "Upgrade"),
            ("upgrade", "SPDY/3.1"),
            ("x-stream-protocol-version", "v5.channel.k8s.io"),
        ]);
        let status = handshake(&Method::POST, &spdy).expect_err("spdy");
        assert_eq!(status.code, 400);
        assert!(
            status.message.starts_with("SPDY is not supported"),
            "{}",
            status.message
        );

        let plain = handshake(&Method::GET, &HeaderMap::new()).expect_err("no upgrade");
        assert!(plain.message.starts_with("Upgrade request required"));
        // RFC 6455's example key.
        assert_eq!(
            tokio_tungstenite::tungstenite::handshake::derive_accept_key(
                b"dGhlIHNhbXBsZSBub25jZQ=="
            ),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }
}
