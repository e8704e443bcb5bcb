//! `GET …/pods/{name}/log`: Kubernetes' `PodLogOptions` from the query, streamed from
//! the node agent's `Logs` as `200 text/plain`.

use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt;
use tracing::debug;

use rkube_api::status::Status;
use rkube_proto::node::v1::LogsRequest;

use super::stream::{bool_param, locate};
use super::{ApiState, Query};
use crate::node_proxy::status_from_grpc;

/// How long to wait for the agent's first answer before the 200 is sent: an error
/// that arrives within it (no such container) still becomes a proper Status.
const FIRST_CHUNK_WAIT: Duration = Duration::from_millis(500);

/// `PodLogOptions`, validated.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct LogOptions {
    pub container: Option<String>,
    pub follow: bool,
    pub previous: bool,
    pub timestamps: bool,
    pub tail_lines: Option<i64>,
    pub since_seconds: Option<i64>,
    pub since_time: Option<String>,
    pub limit_bytes: Option<i64>,
}

impl LogOptions {
    /// Reads and validates the query as Kubernetes does.
    ///
    /// # Errors
    /// 400 naming the parameter that is malformed or out of range.
    pub(super) fn parse(q: &Query) -> Result<Self, Box<Status>> {
        let get = |k: &str| q.get(k).map(String::as_str);
        let int = |k: &str| -> Result<Option<i64>, Box<Status>> {
            get(k)
                .map(|v| {
                    v.parse::<i64>().map_err(|_| {
                        Box::new(Status::bad_request(format!(
                            "{k}: Invalid value: {v:?}: must be an integer"
                        )))
                    })
                })
                .transpose()
        };
        let opts = LogOptions {
            container: get("container").filter(|c| !c.is_empty()).map(String::from),
            follow: bool_param(get("follow"), "follow")?,
            previous: bool_param(get("previous"), "previous")?,
            timestamps: bool_param(get("timestamps"), "timestamps")?,
            tail_lines: int("tailLines")?,
            since_seconds: int("sinceSeconds")?,
            since_time: get("sinceTime").map(String::from),
            limit_bytes: int("limitBytes")?,
        };
        let invalid = |field: &str, value: i64, why: &str| {
            Box::new(Status::bad_request(format!(
                "{field}: Invalid value: {value}: {why}"
            )))
        };
        if let Some(n) = opts.tail_lines.filter(|n| *n < 0) {
            return Err(invalid(
                "tailLines",
                n,
                "must be greater than or equal to 0",
            ));
        }
        if let Some(n) = opts.since_seconds.filter(|n| *n < 1) {
            return Err(invalid("sinceSeconds", n, "must be greater than 0"));
        }
        if let Some(n) = opts.limit_bytes.filter(|n| *n < 1) {
            return Err(invalid("limitBytes", n, "must be greater than 0"));
        }
        if let Some(t) = &opts.since_time {
            if t.parse::<jiff::Timestamp>().is_err() {
                return Err(Box::new(Status::bad_request(format!(
                    "sinceTime: Invalid value: {t:?}: must be an RFC 3339 time"
                ))));
            }
        }
        if opts.since_seconds.is_some() && opts.since_time.is_some() {
            return Err(Box::new(Status::bad_request(
                "at most one of `sinceTime` or `sinceSeconds` may be specified",
            )));
        }
        Ok(opts)
    }
}

/// Serves one log request: validation, the pod and its node, then the agent's stream.
pub(super) async fn serve(state: &ApiState, namespace: &str, name: &str, q: &Query) -> Response {
    match stream_logs(state, namespace, name, q).await {
        Ok(resp) => resp,
        Err(status) => super::status_response(&status),
    }
}

async fn stream_logs(
    state: &ApiState,
    namespace: &str,
    name: &str,
    q: &Query,
) -> Result<Response, Box<Status>> {
    let opts = LogOptions::parse(q)?;
    let mut target = locate(state, namespace, name, opts.container.as_deref()).await?;
    let request = LogsRequest {
        container: Some(target.container.clone()),
        follow: opts.follow,
        previous: opts.previous,
        timestamps: opts.timestamps,
        tail_lines: opts.tail_lines,
        since_seconds: opts.since_seconds,
        since_time: opts.since_time.clone(),
        limit_bytes: opts.limit_bytes,
    };
    debug!(pod = %name, namespace, node = %target.node, container = %target.container.container, follow = opts.follow, "proxying logs");
    let chunks = target
        .client
        .logs(request)
        .await
        .map_err(|e| Box::new(status_from_grpc(&e)))?
        .into_inner();
    let mut chunks = chunks.peekable();
    // An error as the agent's first message is still the request's answer.
    if let Ok(Some(Err(e))) =
        tokio::time::timeout(FIRST_CHUNK_WAIT, std::pin::Pin::new(&mut chunks).peek()).await
    {
        return Err(Box::new(status_from_grpc(e)));
    }
    let pod = name.to_string();
    // Each chunk is one HTTP chunk, written as it arrives. An error after the 200 can
    // only end the stream.
    let body = chunks
        .take_while(move |chunk| {
            if let Err(e) = chunk {
                debug!(pod = %pod, error = %e, "log stream from the node agent ended");
            }
            std::future::ready(chunk.is_ok())
        })
        .filter_map(|chunk| {
            std::future::ready(match chunk {
                Ok(c) if !c.data.is_empty() => Some(Ok::<_, std::io::Error>(Bytes::from(c.data))),
                _ => None,
            })
        });
    let mut resp = (StatusCode::OK, Body::from_stream(body)).into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rest::query_of as query;

    #[test]
    fn options_parse_every_parameter() {
        let q = query(&[
            ("container", "main"),
            ("follow", "true"),
            ("previous", "false"),
            ("timestamps", "1"),
            ("tailLines", "10"),
            ("limitBytes", "500"),
            ("sinceTime", "2026-01-02T03:04:05Z"),
        ]);
        assert_eq!(
            LogOptions::parse(&q).expect("valid"),
            LogOptions {
                container: Some("main".into()),
                follow: true,
                previous: false,
                timestamps: true,
                tail_lines: Some(10),
                since_seconds: None,
                since_time: Some("2026-01-02T03:04:05Z".into()),
                limit_bytes: Some(500),
            }
        );
        assert_eq!(
            LogOptions::parse(&query(&[("sinceSeconds", "60"), ("tailLines", "0")]))
                .expect("valid"),
            LogOptions {
                since_seconds: Some(60),
                tail_lines: Some(0),
                ..LogOptions::default()
            }
        );
    }

    #[test]
    fn bad_options_are_400s_naming_the_parameter() {
        let cases: [(&[(&str, &str)], &str); 9] = [
            (
                &[("tailLines", "-1")],
                "tailLines: Invalid value: -1: must be greater than or equal to 0",
            ),
            (
                &[("tailLines", "ten")],
                "tailLines: Invalid value: \"ten\": must be an integer",
            ),
            (
                &[("sinceSeconds", "0")],
                "sinceSeconds: Invalid value: 0: must be greater than 0",
            ),
            (
                &[("sinceSeconds", "1.5")],
                "sinceSeconds: Invalid value: \"1.5\": must be an integer",
            ),
            (
                &[("limitBytes", "0")],
                "limitBytes: Invalid value: 0: must be greater than 0",
            ),
            (
                &[("sinceTime", "yesterday")],
                "sinceTime: Invalid value: \"yesterday\": must be an RFC 3339 time",
            ),
            (
                &[("sinceTime", "2026-01-02T03:04:05Z"), ("sinceSeconds", "5")],
                "at most one of `sinceTime` or `sinceSeconds` may be specified",
            ),
            (
                &[("follow", "yes")],
                "follow: Invalid value: \"yes\": must be a boolean",
            ),
            (
                &[("previous", "2")],
                "previous: Invalid value: \"2\": must be a boolean",
            ),
        ];
        for (pairs, want) in cases {
            let status = LogOptions::parse(&query(pairs)).expect_err(want);
            assert_eq!((status.code, status.message.as_str()), (400, want));
        }
    }
}
