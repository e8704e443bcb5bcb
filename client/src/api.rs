//! Typed access to one kind of object over the internal gRPC API: [`Api<K>`].

use std::fmt;
use std::marker::PhantomData;

use futures::stream::BoxStream;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Binding, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::NamespaceResourceScope;
use rkube_api::status::Status;
use rkube_proto::v1 as proto;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tonic::Code;

use crate::client::Client;

/// What a typed API call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The apiserver refused the request with a Kubernetes `Status`
    /// (not found, conflict, invalid…).
    #[error("apiserver answered {} {}: {}", .0.code, .0.reason, .0.message)]
    Api(Box<Status>),
    /// The call failed below the Kubernetes layer: connection refused or reset, a gRPC
    /// status without a `Status` in its details.
    #[error("grpc call failed")]
    Transport(#[source] Box<tonic::Status>),
    /// The apiserver sent JSON that is not a valid object of the expected kind.
    #[error("failed to decode {kind} from the apiserver")]
    Decode {
        kind: &'static str,
        #[source]
        source: serde_json::Error,
    },
    /// The object could not be serialised as JSON.
    #[error("failed to encode {kind}")]
    Encode {
        kind: &'static str,
        #[source]
        source: serde_json::Error,
    },
    /// A watch event whose type is none of ADDED, MODIFIED, DELETED, BOOKMARK, ERROR.
    #[error("unknown watch event type {0:?}")]
    UnknownEventType(String),
}

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<tonic::Status> for Error {
    /// A gRPC status carrying a Kubernetes `Status` in its details becomes [`Error::Api`];
    /// anything else is a transport failure.
    fn from(status: tonic::Status) -> Self {
        if !status.details().is_empty() {
            if let Ok(k8s) = serde_json::from_slice::<Status>(status.details()) {
                return Error::Api(Box::new(k8s));
            }
        }
        Error::Transport(Box::new(status))
    }
}

impl Error {
    /// The Kubernetes `Status` the apiserver answered with, if any.
    pub fn status(&self) -> Option<&Status> {
        match self {
            Error::Api(status) => Some(status),
            _ => None,
        }
    }

    fn matches(&self, http: u16, reason: Option<&str>, grpc: Code) -> bool {
        match self {
            Error::Api(s) => s.code == http && reason.is_none_or(|r| s.reason == r),
            Error::Transport(s) => s.code() == grpc,
            _ => false,
        }
    }

    /// 404: the object (or the namespace) does not exist.
    pub fn is_not_found(&self) -> bool {
        self.matches(404, None, Code::NotFound)
    }

    /// 409 AlreadyExists: a create found an object of that name.
    pub fn is_already_exists(&self) -> bool {
        self.matches(409, Some("AlreadyExists"), Code::AlreadyExists)
    }

    /// 409 Conflict: the object changed since the resourceVersion the write was based on
    /// (or a delete precondition failed). Re-read and try again.
    pub fn is_conflict(&self) -> bool {
        self.matches(409, Some("Conflict"), Code::Aborted)
    }

    /// 410 Gone: the resourceVersion (or continue token) was compacted away; relist.
    pub fn is_gone(&self) -> bool {
        self.matches(410, None, Code::OutOfRange)
    }

    /// 400 or 422: the request or the object is invalid; retrying will not help.
    pub fn is_invalid(&self) -> bool {
        self.matches(422, None, Code::InvalidArgument)
            || self.matches(400, None, Code::InvalidArgument)
    }
}

/// A Kubernetes kind that [`Api`] can read and write: every k8s-openapi type with an
/// `ObjectMeta` (Pod, Node, Deployment…).
pub trait Object:
    k8s_openapi::Resource
    + k8s_openapi::Metadata<Ty = ObjectMeta>
    + Serialize
    + DeserializeOwned
    + Clone
    + fmt::Debug
    + Send
    + Sync
    + 'static
{
}

impl<K> Object for K where
    K: k8s_openapi::Resource
        + k8s_openapi::Metadata<Ty = ObjectMeta>
        + Serialize
        + DeserializeOwned
        + Clone
        + fmt::Debug
        + Send
        + Sync
        + 'static
{
}

/// Options of [`Api::list`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListParams {
    /// A label selector such as `app=web,tier!=db`.
    pub label_selector: Option<String>,
    /// A field selector such as `spec.nodeName=n1`.
    pub field_selector: Option<String>,
    /// At most this many items per page; `None` lists everything at once.
    pub limit: Option<u32>,
    /// The `continue_token` of the previous page.
    pub continue_token: Option<String>,
    /// List at (or after) this resourceVersion; `None` reads the latest state.
    pub resource_version: Option<String>,
}

impl ListParams {
    /// Restricts the list to objects whose labels match `selector`.
    pub fn labels(mut self, selector: &str) -> Self {
        self.label_selector = Some(selector.to_string());
        self
    }

    /// Restricts the list to objects whose fields match `selector`.
    pub fn fields(mut self, selector: &str) -> Self {
        self.field_selector = Some(selector.to_string());
        self
    }

    /// Asks for pages of at most `limit` items.
    pub fn limit(mut self, limit: u32) -> Self {
        self.limit = Some(limit);
        self
    }

    /// Continues a paged list.
    pub fn continue_token(mut self, token: &str) -> Self {
        self.continue_token = Some(token.to_string());
        self
    }
}

/// Options of [`Api::watch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchParams {
    pub label_selector: Option<String>,
    pub field_selector: Option<String>,
    /// Ask the apiserver for BOOKMARK events, which move the resourceVersion forward
    /// while nothing matching the selectors changes (default: true).
    pub bookmarks: bool,
}

impl Default for WatchParams {
    fn default() -> Self {
        WatchParams {
            label_selector: None,
            field_selector: None,
            bookmarks: true,
        }
    }
}

impl WatchParams {
    /// Restricts the watch to objects whose labels match `selector`.
    pub fn labels(mut self, selector: &str) -> Self {
        self.label_selector = Some(selector.to_string());
        self
    }

    /// Restricts the watch to objects whose fields match `selector`.
    pub fn fields(mut self, selector: &str) -> Self {
        self.field_selector = Some(selector.to_string());
        self
    }
}

/// How dependents of a deleted object are treated by garbage collection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PropagationPolicy {
    /// Delete the object now, its dependents in the background (the default).
    Background,
    /// Delete the dependents first, then the object.
    Foreground,
    /// Leave the dependents, without owner reference.
    Orphan,
}

impl PropagationPolicy {
    fn as_str(self) -> &'static str {
        match self {
            PropagationPolicy::Background => "Background",
            PropagationPolicy::Foreground => "Foreground",
            PropagationPolicy::Orphan => "Orphan",
        }
    }
}

/// Options of [`Api::delete`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeleteParams {
    /// Seconds before the object is removed; `Some(0)` deletes a pod immediately.
    pub grace_period_seconds: Option<i64>,
    pub propagation_policy: Option<PropagationPolicy>,
    /// Delete only if the object still has this uid.
    pub precondition_uid: Option<String>,
    /// Delete only if the object still has this resourceVersion.
    pub precondition_resource_version: Option<String>,
}

/// One page of objects and the resourceVersion it was read at.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectList<K> {
    pub items: Vec<K>,
    /// Watch from here to see every change after this list.
    pub resource_version: String,
    /// Set when more pages follow: pass it in [`ListParams::continue_token`].
    pub continue_token: Option<String>,
}

/// One change seen by [`Api::watch`].
#[derive(Debug, Clone, PartialEq)]
pub enum WatchEvent<K> {
    Added(K),
    Modified(K),
    Deleted(K),
    /// Nothing to report, but the watch has seen everything up to this resourceVersion.
    Bookmark(String),
    /// The apiserver ended the watch with this status; code 410 means the
    /// resourceVersion is too old and the caller must list again.
    Error(Box<Status>),
}

/// Typed access to objects of kind `K`, in one namespace or in all of them.
///
/// Cheap to clone. Writes return the object as the apiserver stored it.
pub struct Api<K> {
    client: Client,
    namespace: Option<String>,
    kind: PhantomData<fn() -> K>,
}

impl<K> Clone for Api<K> {
    fn clone(&self) -> Self {
        Api {
            client: self.client.clone(),
            namespace: self.namespace.clone(),
            kind: PhantomData,
        }
    }
}

impl<K> fmt::Debug for Api<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Api")
            .field("kind", &std::any::type_name::<K>())
            .field("namespace", &self.namespace)
            .finish()
    }
}

impl<K: Object + k8s_openapi::Resource<Scope = NamespaceResourceScope>> Api<K> {
    /// Objects of a namespaced kind in `namespace`.
    pub fn namespaced(client: Client, namespace: &str) -> Self {
        Api {
            client,
            namespace: Some(namespace.to_string()),
            kind: PhantomData,
        }
    }
}

impl<K: Object> Api<K> {
    /// Objects of a cluster-scoped kind, or of a namespaced kind across all namespaces
    /// (`create` then uses the object's own namespace).
    pub fn all(client: Client) -> Self {
        Api {
            client,
            namespace: None,
            kind: PhantomData,
        }
    }

    /// The namespace this `Api` is restricted to, if any.
    pub fn namespace(&self) -> Option<&str> {
        self.namespace.as_deref()
    }

    fn resource() -> proto::ResourceRef {
        proto::ResourceRef {
            group: K::GROUP.to_string(),
            version: K::VERSION.to_string(),
            resource: K::URL_PATH_SEGMENT.to_string(),
        }
    }

    fn ns(&self) -> String {
        self.namespace.clone().unwrap_or_default()
    }

    /// Reads one object.
    ///
    /// # Errors
    /// [`Error::Api`] with 404 when it does not exist (see [`Api::get_opt`]).
    pub async fn get(&self, name: &str) -> Result<K> {
        let request = proto::GetRequest {
            resource: Some(Self::resource()),
            namespace: self.ns(),
            name: name.to_string(),
        };
        let object = self.client.grpc().get(request).await?.into_inner();
        decode(&object.json)
    }

    /// Reads one object; `None` when it does not exist.
    pub async fn get_opt(&self, name: &str) -> Result<Option<K>> {
        match self.get(name).await {
            Ok(object) => Ok(Some(object)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Lists objects (one page when `params.limit` is set).
    pub async fn list(&self, params: &ListParams) -> Result<ObjectList<K>> {
        let request = proto::ListRequest {
            resource: Some(Self::resource()),
            namespace: self.ns(),
            label_selector: params.label_selector.clone().unwrap_or_default(),
            field_selector: params.field_selector.clone().unwrap_or_default(),
            limit: params.limit.map(i64::from).unwrap_or(0),
            continue_token: params.continue_token.clone().unwrap_or_default(),
            resource_version: params.resource_version.clone().unwrap_or_default(),
        };
        let list = self.client.grpc().list(request).await?.into_inner();
        let items = list
            .items
            .iter()
            .map(|json| decode(json))
            .collect::<Result<Vec<K>>>()?;
        Ok(ObjectList {
            items,
            resource_version: list.resource_version,
            continue_token: (!list.continue_token.is_empty()).then_some(list.continue_token),
        })
    }

    /// Creates an object; the apiserver fills in uid, resourceVersion and defaults.
    ///
    /// # Errors
    /// [`Error::Api`] with 409 AlreadyExists ([`Error::is_already_exists`]) or 422.
    pub async fn create(&self, object: &K) -> Result<K> {
        let namespace = self
            .namespace
            .clone()
            .or_else(|| object.metadata().namespace.clone())
            .unwrap_or_default();
        let request = proto::CreateRequest {
            resource: Some(Self::resource()),
            namespace,
            object: encode(object)?,
        };
        let object = self.client.grpc().create(request).await?.into_inner();
        decode(&object.json)
    }

    fn update_request(&self, name: &str, object: &K) -> Result<proto::UpdateRequest> {
        Ok(proto::UpdateRequest {
            resource: Some(Self::resource()),
            namespace: self.ns(),
            name: name.to_string(),
            object: encode(object)?,
        })
    }

    /// Replaces an object (spec and metadata; status is kept). The write is based on
    /// `object.metadata.resourceVersion` when set.
    ///
    /// # Errors
    /// [`Error::Api`] with 409 Conflict ([`Error::is_conflict`]) when the object changed
    /// since that resourceVersion.
    pub async fn replace(&self, name: &str, object: &K) -> Result<K> {
        let request = self.update_request(name, object)?;
        let object = self.client.grpc().update(request).await?.into_inner();
        decode(&object.json)
    }

    /// Replaces the status of an object (the `status` subresource); like
    /// [`Api::replace`] for conflicts.
    pub async fn replace_status(&self, name: &str, object: &K) -> Result<K> {
        let request = self.update_request(name, object)?;
        let object = self
            .client
            .grpc()
            .update_status(request)
            .await?
            .into_inner();
        decode(&object.json)
    }

    /// Deletes an object. Returns it as it is after the call: still present with a
    /// deletionTimestamp (finalizers, grace period) or as it was when removed.
    pub async fn delete(&self, name: &str, params: &DeleteParams) -> Result<K> {
        let request = proto::DeleteRequest {
            resource: Some(Self::resource()),
            namespace: self.ns(),
            name: name.to_string(),
            grace_period_seconds: params.grace_period_seconds,
            propagation_policy: params
                .propagation_policy
                .map(|p| p.as_str().to_string())
                .unwrap_or_default(),
            precondition_uid: params.precondition_uid.clone().unwrap_or_default(),
            precondition_resource_version: params
                .precondition_resource_version
                .clone()
                .unwrap_or_default(),
        };
        let object = self.client.grpc().delete(request).await?.into_inner();
        decode(&object.json)
    }

    /// Watches changes after `resource_version` (empty or `"0"`: the current state first,
    /// as ADDED events).
    ///
    /// The stream ends when the apiserver closes it; resuming, relisting on 410 and
    /// backing off are the job of [`crate::watcher()`].
    pub async fn watch(
        &self,
        params: &WatchParams,
        resource_version: &str,
    ) -> Result<BoxStream<'static, Result<WatchEvent<K>>>> {
        let request = proto::WatchRequest {
            resource: Some(Self::resource()),
            namespace: self.ns(),
            label_selector: params.label_selector.clone().unwrap_or_default(),
            field_selector: params.field_selector.clone().unwrap_or_default(),
            resource_version: resource_version.to_string(),
            allow_bookmarks: params.bookmarks,
        };
        let stream = self.client.grpc().watch(request).await?.into_inner();
        Ok(stream
            .map(|event| event.map_err(Error::from).and_then(decode_event::<K>))
            .boxed())
    }
}

impl Api<Pod> {
    /// Binds a pod to a node (the `binding` subresource); what the scheduler does.
    ///
    /// The namespace is this `Api`'s, or else the binding's.
    ///
    /// # Errors
    /// [`Error::Api`] with 409 Conflict when the pod is already bound.
    pub async fn bind(&self, name: &str, binding: &Binding) -> Result<()> {
        let namespace = self
            .namespace
            .clone()
            .or_else(|| binding.metadata.namespace.clone())
            .unwrap_or_default();
        let request = proto::BindRequest {
            namespace,
            name: name.to_string(),
            binding: encode(binding)?,
        };
        self.client.grpc().bind(request).await?;
        Ok(())
    }
}

fn encode<K: k8s_openapi::Resource + Serialize>(object: &K) -> Result<Vec<u8>> {
    serde_json::to_vec(object).map_err(|source| Error::Encode {
        kind: K::KIND,
        source,
    })
}

fn decode<K: k8s_openapi::Resource + DeserializeOwned>(json: &[u8]) -> Result<K> {
    serde_json::from_slice(json).map_err(|source| Error::Decode {
        kind: K::KIND,
        source,
    })
}

/// The object of a BOOKMARK event: only its resourceVersion matters.
#[derive(Deserialize)]
struct BookmarkObject {
    metadata: BookmarkMeta,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct BookmarkMeta {
    resource_version: String,
}

fn decode_event<K: Object>(event: proto::WatchEvent) -> Result<WatchEvent<K>> {
    match event.r#type.as_str() {
        "ADDED" => Ok(WatchEvent::Added(decode(&event.object)?)),
        "MODIFIED" => Ok(WatchEvent::Modified(decode(&event.object)?)),
        "DELETED" => Ok(WatchEvent::Deleted(decode(&event.object)?)),
        "BOOKMARK" => {
            let bookmark: BookmarkObject =
                serde_json::from_slice(&event.object).map_err(|source| Error::Decode {
                    kind: "Bookmark",
                    source,
                })?;
            Ok(WatchEvent::Bookmark(bookmark.metadata.resource_version))
        }
        "ERROR" => {
            let status: Status =
                serde_json::from_slice(&event.object).map_err(|source| Error::Decode {
                    kind: "Status",
                    source,
                })?;
            Ok(WatchEvent::Error(Box::new(status)))
        }
        other => Err(Error::UnknownEventType(other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grpc_with_status(code: Code, status: &Status) -> tonic::Status {
        let details = serde_json::to_vec(status).expect("a Status serialises");
        tonic::Status::with_details(code, status.message.clone(), details.into())
    }

    #[test]
    fn maps_grpc_statuses_to_kubernetes_errors() {
        let cases: Vec<(&str, tonic::Status, [bool; 4])> = vec![
            // name, status, [not_found, already_exists, conflict, gone]
            (
                "not found",
                grpc_with_status(Code::NotFound, &Status::not_found("", "pods", "x")),
                [true, false, false, false],
            ),
            (
                "already exists",
                grpc_with_status(
                    Code::AlreadyExists,
                    &Status::already_exists("", "pods", "x"),
                ),
                [false, true, false, false],
            ),
            (
                "conflict",
                grpc_with_status(Code::Aborted, &Status::conflict("", "pods", "x")),
                [false, false, true, false],
            ),
            (
                "expired",
                grpc_with_status(Code::OutOfRange, &Status::expired("too old")),
                [false, false, false, true],
            ),
            (
                "bare not found",
                tonic::Status::not_found("no details"),
                [true, false, false, false],
            ),
            (
                "unavailable",
                tonic::Status::unavailable("connection refused"),
                [false, false, false, false],
            ),
        ];
        for (name, status, want) in cases {
            let err = Error::from(status);
            let got = [
                err.is_not_found(),
                err.is_already_exists(),
                err.is_conflict(),
                err.is_gone(),
            ];
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn keeps_the_kubernetes_status() {
        let err = Error::from(grpc_with_status(
            Code::NotFound,
            &Status::not_found("apps", "deployments", "web"),
        ));
        let status = err.status().expect("an Api error");
        assert_eq!(status.reason, "NotFound");
        assert_eq!(status.message, "deployments.apps \"web\" not found");
        // Garbage in the details is a transport error, not a panic.
        let err = Error::from(tonic::Status::with_details(
            Code::Internal,
            "boom",
            b"not json".to_vec().into(),
        ));
        assert!(matches!(err, Error::Transport(_)), "{err:?}");
    }

    #[test]
    fn decodes_watch_events() {
        let pod =
            br#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"a","resourceVersion":"7"}}"#;
        let event = |t: &str, object: &[u8]| proto::WatchEvent {
            r#type: t.to_string(),
            object: object.to_vec(),
        };
        match decode_event::<Pod>(event("MODIFIED", pod)) {
            Ok(WatchEvent::Modified(p)) => assert_eq!(p.metadata.name.as_deref(), Some("a")),
            other => panic!("want Modified, got {other:?}"),
        }
        let bookmark = br#"{"kind":"Pod","apiVersion":"v1","metadata":{"resourceVersion":"42"}}"#;
        assert_eq!(
            decode_event::<Pod>(event("BOOKMARK", bookmark)).ok(),
            Some(WatchEvent::Bookmark("42".to_string()))
        );
        let gone = serde_json::to_vec(&Status::expired("too old")).expect("serialises");
        match decode_event::<Pod>(event("ERROR", &gone)) {
            Ok(WatchEvent::Error(s)) => assert_eq!(s.code, 410),
            other => panic!("want Error, got {other:?}"),
        }
        assert!(matches!(
            decode_event::<Pod>(event("SNAPSHOT", pod)),
            Err(Error::UnknownEventType(t)) if t == "SNAPSHOT"
        ));
        assert!(matches!(
            decode_event::<Pod>(event("ADDED", b"{")),
            Err(Error::Decode { kind: "Pod", .. })
        ));
    }
}
