//! Watch responses: chunked JSON lines, one event per line, flushed as they happen.

use std::time::Duration;

use axum::body::Body;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::json;

use rkube_api::{status::Status, Resource};

use super::{status_response, table, Query};
use crate::registry::{ListOptions, Registry, Watch, WatchItem};

/// How often a quiet watch that asked for bookmarks gets one.
const BOOKMARK_EVERY: Duration = Duration::from_secs(5);
/// How long a watch without `timeoutSeconds` stays open.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);

struct Stream {
    watch: Watch,
    resource: &'static Resource,
    as_table: bool,
    headers_sent: bool,
    bookmarks: bool,
    query: Query,
    deadline: tokio::time::Instant,
}

impl Stream {
    fn line(&mut self, item: WatchItem) -> Bytes {
        let mut out = Vec::new();
        match item {
            WatchItem::Event(kind, obj) if self.as_table => {
                let row = table::row(
                    self.resource,
                    &obj.value,
                    &self.query,
                    jiff::Timestamp::now(),
                );
                let t = table::table(
                    self.resource,
                    vec![row],
                    Some(obj.revision.to_string()),
                    None,
                    !self.headers_sent,
                );
                self.headers_sent = true;
                let event = json!({"type": kind.as_str(), "object": t});
                serde_json::to_writer(&mut out, &event).expect("a JSON value always serialises");
            }
            WatchItem::Event(kind, obj) => {
                out.extend_from_slice(b"{\"type\":\"");
                out.extend_from_slice(kind.as_str().as_bytes());
                out.extend_from_slice(b"\",\"object\":");
                out.extend_from_slice(&obj.json);
                out.push(b'}');
            }
            WatchItem::Bookmark(rv) => {
                let event = json!({"type": "BOOKMARK", "object": {
                    "kind": self.resource.kind, "apiVersion": self.resource.api_version(),
                    "metadata": {"resourceVersion": rv.to_string()}}});
                serde_json::to_writer(&mut out, &event).expect("a JSON value always serialises");
            }
        }
        out.push(b'\n');
        Bytes::from(out)
    }
}

/// Starts a watch and streams it.
pub async fn serve(
    reg: &Registry,
    r: &'static Resource,
    ns: Option<&str>,
    opts: &ListOptions,
    q: &Query,
    as_table: bool,
) -> Response {
    let watch = match reg.watch(r, ns, opts).await {
        Ok(w) => w,
        Err(status) if status.code == 410 => return expired_stream(&status),
        Err(status) => return status_response(&status),
    };
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map_or(DEFAULT_TIMEOUT, Duration::from_secs);
    let state = Stream {
        watch,
        resource: r,
        as_table,
        headers_sent: false,
        bookmarks: q.get("allowWatchBookmarks").is_some_and(|v| v == "true"),
        query: q.clone(),
        deadline: tokio::time::Instant::now() + timeout,
    };
    let stream = futures::stream::unfold(state, |mut s| async move {
        let every = s.bookmarks.then_some(BOOKMARK_EVERY);
        let item = tokio::time::timeout_at(s.deadline, s.watch.next(every))
            .await
            .ok()??;
        let line = s.line(item);
        Some((Ok::<_, std::convert::Infallible>(line), s))
    });
    let mut resp = (StatusCode::OK, Body::from_stream(stream)).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}

/// A watch from a compacted revision: Kubernetes answers 200 with one ERROR event.
fn expired_stream(status: &Status) -> Response {
    let event = json!({"type": "ERROR", "object": status.to_json()});
    let mut line = serde_json::to_vec(&event).expect("a JSON value always serialises");
    line.push(b'\n');
    let mut resp = (StatusCode::OK, line).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}
