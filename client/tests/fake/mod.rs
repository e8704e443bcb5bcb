//! An in-memory `rkube.v1.Resources` server for the client's tests: objects in a map,
//! a change log for watches, and knobs to end, expire and compact watches.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use parking_lot::Mutex;
use rkube_api::status::Status;
use rkube_proto::v1::resources_server::{Resources, ResourcesServer};
use rkube_proto::v1::{
    BindRequest, CreateRequest, DeleteRequest, GetRequest, ListRequest, ListResponse, Object,
    ResourceRef, UpdateRequest, WatchEvent, WatchRequest,
};
use serde_json::{json, Value};
use tokio::sync::{broadcast, oneshot};
use tokio::task::JoinHandle;
use tonic::transport::{Identity, Server, ServerTlsConfig};
use tonic::{Code, Request, Response};

type Key = (String, String, String);

struct Change {
    rv: u64,
    resource: String,
    namespace: String,
    kind: &'static str,
    object: Value,
}

#[derive(Default)]
struct State {
    rv: u64,
    objects: BTreeMap<Key, Value>,
    log: Vec<Change>,
    /// Watches from before this resourceVersion get ERROR 410.
    compacted: u64,
    /// Bumped to send ERROR 410 to every open watch.
    epoch: u64,
    /// Each watch stream ends after this many events.
    end_after: Option<usize>,
    list_calls: usize,
    watch_calls: usize,
}

/// The fake apiserver; clones share state.
#[derive(Clone, Default)]
pub struct Fake {
    state: Arc<Mutex<State>>,
    changed: Arc<Mutex<Option<broadcast::Sender<()>>>>,
}

fn grpc(status: &Status) -> tonic::Status {
    let code = match status.code {
        404 => Code::NotFound,
        409 if status.reason == "AlreadyExists" => Code::AlreadyExists,
        409 => Code::Aborted,
        400 | 422 => Code::InvalidArgument,
        410 => Code::OutOfRange,
        _ => Code::Internal,
    };
    let details = serde_json::to_vec(status).expect("a Status serialises");
    tonic::Status::with_details(code, status.message.clone(), details.into())
}

fn resource(r: Option<&ResourceRef>) -> Result<String, tonic::Status> {
    r.map(|r| r.resource.clone())
        .ok_or_else(|| grpc(&Status::bad_request("resource is required")))
}

fn parse(bytes: &[u8]) -> Result<Value, tonic::Status> {
    serde_json::from_slice(bytes).map_err(|e| grpc(&Status::bad_request(e.to_string())))
}

fn object(value: &Value) -> Response<Object> {
    Response::new(Object {
        json: serde_json::to_vec(value).expect("JSON serialises"),
    })
}

impl Fake {
    fn notify(&self) {
        if let Some(tx) = self.changed.lock().as_ref() {
            let _ = tx.send(());
        }
    }

    fn subscribe(&self) -> broadcast::Receiver<()> {
        self.changed
            .lock()
            .get_or_insert_with(|| broadcast::channel(1024).0)
            .subscribe()
    }

    /// Writes an object as another client would: bumps the rv and logs an event
    /// (unless `logged` is false: a change the watches will never see).
    fn write(
        &self,
        kind: &'static str,
        resource: &str,
        ns: &str,
        mut obj: Value,
        logged: bool,
    ) -> Value {
        let mut s = self.state.lock();
        s.rv += 1;
        let rv = s.rv;
        let name = obj["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        if !ns.is_empty() {
            obj["metadata"]["namespace"] = json!(ns);
        }
        let key = (resource.to_string(), ns.to_string(), name);
        if kind == "DELETED" {
            s.objects.remove(&key);
        } else {
            s.objects.insert(key, obj.clone());
        }
        if logged {
            s.log.push(Change {
                rv,
                resource: resource.to_string(),
                namespace: ns.to_string(),
                kind,
                object: obj.clone(),
            });
        }
        drop(s);
        self.notify();
        obj
    }

    /// Creates or replaces an object behind the client's back.
    pub fn put(&self, resource: &str, ns: &str, obj: Value) -> Value {
        let name = obj["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let exists =
            self.state
                .lock()
                .objects
                .contains_key(&(resource.to_string(), ns.to_string(), name));
        self.write(
            if exists { "MODIFIED" } else { "ADDED" },
            resource,
            ns,
            obj,
            true,
        )
    }

    /// Deletes an object behind the client's back.
    pub fn remove(&self, resource: &str, ns: &str, name: &str) {
        let key = (resource.to_string(), ns.to_string(), name.to_string());
        let obj = self.state.lock().objects.get(&key).cloned();
        if let Some(obj) = obj {
            self.write("DELETED", resource, ns, obj, true);
        }
    }

    /// Changes objects without any watch event (history that was compacted away).
    pub fn put_unseen(&self, resource: &str, ns: &str, obj: Value) {
        self.write("ADDED", resource, ns, obj, false);
    }

    /// Deletes an object without any watch event.
    pub fn remove_unseen(&self, resource: &str, ns: &str, name: &str) {
        let key = (resource.to_string(), ns.to_string(), name.to_string());
        let obj = self.state.lock().objects.get(&key).cloned();
        if let Some(obj) = obj {
            self.write("DELETED", resource, ns, obj, false);
        }
    }

    /// Compacts history up to now: watches from older resourceVersions get 410, and so
    /// does every open watch.
    pub fn expire(&self) {
        {
            let mut s = self.state.lock();
            s.compacted = s.rv;
            s.epoch += 1;
        }
        self.notify();
    }

    /// Compacts history up to now without touching open watches.
    pub fn compact(&self) {
        let mut s = self.state.lock();
        s.compacted = s.rv;
    }

    /// Sends a BOOKMARK at the current resourceVersion to watches of `resource`.
    pub fn bookmark(&self, resource: &str) {
        {
            let mut s = self.state.lock();
            let rv = s.rv;
            s.log.push(Change {
                rv,
                resource: resource.to_string(),
                namespace: String::new(),
                kind: "BOOKMARK",
                object: json!({"kind": "Bookmark", "metadata": {"resourceVersion": rv.to_string()}}),
            });
        }
        self.notify();
    }

    /// Makes every watch stream (open or future) end after `n` events.
    pub fn end_watches_after(&self, n: Option<usize>) {
        self.state.lock().end_after = n;
        self.notify();
    }

    pub fn list_calls(&self) -> usize {
        self.state.lock().list_calls
    }

    pub fn watch_calls(&self) -> usize {
        self.state.lock().watch_calls
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchEvent, tonic::Status>> + Send>>;

struct Cursor {
    fake: Fake,
    rx: broadcast::Receiver<()>,
    resource: String,
    namespace: String,
    bookmarks: bool,
    pos: u64,
    sent: usize,
    epoch: u64,
    done: bool,
}

fn expired_event() -> WatchEvent {
    WatchEvent {
        r#type: "ERROR".into(),
        object: serde_json::to_vec(&Status::expired("too old resource version"))
            .expect("serialises"),
    }
}

impl Cursor {
    async fn next(&mut self) -> Option<WatchEvent> {
        if self.done {
            return None;
        }
        loop {
            {
                let s = self.fake.state.lock();
                if s.epoch != self.epoch {
                    self.done = true;
                    return Some(expired_event());
                }
                if s.end_after.is_some_and(|n| self.sent >= n) {
                    return None;
                }
                let next = s.log.iter().find(|c| {
                    c.rv > self.pos
                        && c.resource == self.resource
                        && (self.namespace.is_empty()
                            || c.namespace == self.namespace
                            || c.kind == "BOOKMARK")
                        && (self.bookmarks || c.kind != "BOOKMARK")
                });
                if let Some(change) = next {
                    self.pos = change.rv;
                    self.sent += 1;
                    return Some(WatchEvent {
                        r#type: change.kind.into(),
                        object: serde_json::to_vec(&change.object).expect("serialises"),
                    });
                }
            }
            match self.rx.recv().await {
                Ok(()) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

#[tonic::async_trait]
impl Resources for Fake {
    async fn get(&self, req: Request<GetRequest>) -> Result<Response<Object>, tonic::Status> {
        let req = req.into_inner();
        let resource = resource(req.resource.as_ref())?;
        let key = (resource.clone(), req.namespace, req.name.clone());
        match self.state.lock().objects.get(&key) {
            Some(obj) => Ok(object(obj)),
            None => Err(grpc(&Status::not_found("", &resource, &req.name))),
        }
    }

    async fn list(
        &self,
        req: Request<ListRequest>,
    ) -> Result<Response<ListResponse>, tonic::Status> {
        let req = req.into_inner();
        let resource = resource(req.resource.as_ref())?;
        let mut s = self.state.lock();
        s.list_calls += 1;
        let mut items = Vec::new();
        let mut continue_token = String::new();
        let mut last_key = String::new();
        for ((r, ns, name), obj) in &s.objects {
            if *r != resource || (!req.namespace.is_empty() && *ns != req.namespace) {
                continue;
            }
            let key = format!("{ns}/{name}");
            if !req.continue_token.is_empty() && key <= req.continue_token {
                continue;
            }
            if req.limit > 0 && items.len() as i64 == req.limit {
                // More follow: the token names the last item handed out.
                continue_token = last_key;
                break;
            }
            items.push(serde_json::to_vec(obj).expect("serialises"));
            last_key = key;
        }
        Ok(Response::new(ListResponse {
            items,
            resource_version: s.rv.to_string(),
            continue_token,
        }))
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        req: Request<WatchRequest>,
    ) -> Result<Response<WatchStream>, tonic::Status> {
        let req = req.into_inner();
        let resource = resource(req.resource.as_ref())?;
        let pos: u64 = req.resource_version.parse().map_err(|_| {
            grpc(&Status::bad_request(
                "the fake needs a numeric resourceVersion",
            ))
        })?;
        let rx = self.subscribe();
        let (epoch, expired) = {
            let mut s = self.state.lock();
            s.watch_calls += 1;
            (s.epoch, pos < s.compacted)
        };
        if expired {
            return Ok(Response::new(Box::pin(futures::stream::iter([Ok(
                expired_event(),
            )]))));
        }
        let cursor = Cursor {
            fake: self.clone(),
            rx,
            resource,
            namespace: req.namespace,
            bookmarks: req.allow_bookmarks,
            pos,
            sent: 0,
            epoch,
            done: false,
        };
        let stream = futures::stream::unfold(cursor, |mut cursor| async move {
            let event = cursor.next().await?;
            Some((Ok(event), cursor))
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn create(&self, req: Request<CreateRequest>) -> Result<Response<Object>, tonic::Status> {
        let req = req.into_inner();
        let resource = resource(req.resource.as_ref())?;
        let mut obj = parse(&req.object)?;
        let name = obj["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let key = (resource.clone(), req.namespace.clone(), name.clone());
        if self.state.lock().objects.contains_key(&key) {
            return Err(grpc(&Status::already_exists("", &resource, &name)));
        }
        obj["metadata"]["uid"] = json!(format!("uid-{name}"));
        Ok(object(&self.write(
            "ADDED",
            &resource,
            &req.namespace,
            obj,
            true,
        )))
    }

    async fn update(&self, req: Request<UpdateRequest>) -> Result<Response<Object>, tonic::Status> {
        self.update_impl(req.into_inner(), false)
    }

    async fn update_status(
        &self,
        req: Request<UpdateRequest>,
    ) -> Result<Response<Object>, tonic::Status> {
        self.update_impl(req.into_inner(), true)
    }

    async fn delete(&self, req: Request<DeleteRequest>) -> Result<Response<Object>, tonic::Status> {
        let req = req.into_inner();
        let resource = resource(req.resource.as_ref())?;
        let key = (resource.clone(), req.namespace.clone(), req.name.clone());
        let obj = self.state.lock().objects.get(&key).cloned();
        let obj = obj.ok_or_else(|| grpc(&Status::not_found("", &resource, &req.name)))?;
        if !req.precondition_uid.is_empty() && obj["metadata"]["uid"] != json!(req.precondition_uid)
        {
            return Err(grpc(&Status::conflict("", &resource, &req.name)));
        }
        Ok(object(&self.write(
            "DELETED",
            &resource,
            &req.namespace,
            obj,
            true,
        )))
    }

    async fn bind(&self, req: Request<BindRequest>) -> Result<Response<Object>, tonic::Status> {
        let req = req.into_inner();
        let binding = parse(&req.binding)?;
        let key = ("pods".to_string(), req.namespace.clone(), req.name.clone());
        let pod = self.state.lock().objects.get(&key).cloned();
        let mut pod = pod.ok_or_else(|| grpc(&Status::not_found("", "pods", &req.name)))?;
        if pod["spec"]["nodeName"].is_string() {
            return Err(grpc(&Status::conflict("", "pods", &req.name)));
        }
        pod["spec"]["nodeName"] = binding["target"]["name"].clone();
        Ok(object(&self.write(
            "MODIFIED",
            "pods",
            &req.namespace,
            pod,
            true,
        )))
    }
}

impl Fake {
    fn update_impl(
        &self,
        req: UpdateRequest,
        status_only: bool,
    ) -> Result<Response<Object>, tonic::Status> {
        let resource = resource(req.resource.as_ref())?;
        let body = parse(&req.object)?;
        let key = (resource.clone(), req.namespace.clone(), req.name.clone());
        let stored = self.state.lock().objects.get(&key).cloned();
        let stored = stored.ok_or_else(|| grpc(&Status::not_found("", &resource, &req.name)))?;
        let wanted_rv = &body["metadata"]["resourceVersion"];
        if wanted_rv.is_string() && *wanted_rv != stored["metadata"]["resourceVersion"] {
            return Err(grpc(&Status::conflict("", &resource, &req.name)));
        }
        let mut next = if status_only {
            stored.clone()
        } else {
            body.clone()
        };
        if status_only {
            next["status"] = body["status"].clone();
        } else if let Some(status) = stored.get("status") {
            next["status"] = status.clone();
        }
        next["metadata"]["uid"] = stored["metadata"]["uid"].clone();
        Ok(object(&self.write(
            "MODIFIED",
            &resource,
            &req.namespace,
            next,
            true,
        )))
    }
}

/// A fake served on 127.0.0.1:0; stop it with [`TestServer::stop`].
pub struct TestServer {
    pub endpoint: String,
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl TestServer {
    pub async fn stop(self) {
        let _ = self.shutdown.send(());
        // Open watch streams would hold a graceful shutdown forever.
        self.task.abort();
        let _ = self.task.await;
    }
}

/// Serves `fake` over plain HTTP/2, requiring `token` when given, or over TLS when a
/// PEM certificate and key are given.
pub async fn serve(
    fake: Fake,
    token: Option<&'static str>,
    tls: Option<(String, String)>,
) -> TestServer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let check = move |req: Request<()>| -> Result<Request<()>, tonic::Status> {
        let Some(token) = token else { return Ok(req) };
        let want = format!("Bearer {token}");
        match req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
        {
            Some(got) if got == want => Ok(req),
            _ => Err(tonic::Status::unauthenticated("bad token")),
        }
    };
    let mut builder = Server::builder();
    let scheme = if let Some((cert, key)) = tls {
        builder = builder
            .tls_config(ServerTlsConfig::new().identity(Identity::from_pem(cert, key)))
            .expect("tls config");
        "https"
    } else {
        "http"
    };
    let (shutdown, rx) = oneshot::channel::<()>();
    let router = builder.add_service(ResourcesServer::with_interceptor(fake, check));
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let task = tokio::spawn(async move {
        let _ = router
            .serve_with_incoming_shutdown(incoming, async {
                let _ = rx.await;
            })
            .await;
    });
    TestServer {
        endpoint: format!("{scheme}://{addr}"),
        shutdown,
        task,
    }
}
