//! The registry: Kubernetes API semantics for every resource, over storage and the
//! watch cache. REST and gRPC are thin front ends over it.
//!
//! Start with [`Registry::create`], [`Registry::update`], [`Registry::patch`] and
//! [`Registry::delete`]: each decodes, defaults, validates and writes in one etcd
//! transaction, and answers errors as Kubernetes [`Status`] objects. Per-kind rules
//! (pods' graceful deletion, namespaces' termination, Services' allocations) are in
//! [`crate::strategy`].

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use serde_json::{json, Value};

use rkube_api::{
    codec, defaults, fields, object, patch,
    selector::{FieldSelector, LabelSelector},
    status::Status,
    validation, Resource, Subresource,
};

use crate::allocator::Allocator;
use crate::cache::{self, CachedObject, Delivery, EventType, Subscription, WatchCache};
use crate::storage::{self, Storage};
use crate::strategy;
use crate::ttl::Leases;

/// Registry results: errors are Kubernetes statuses, ready for the wire.
pub type Result<T, E = Box<Status>> = std::result::Result<T, E>;

/// How unknown fields in a request body are handled (`fieldValidation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FieldValidation {
    /// Reject with 400.
    Strict,
    /// Accept, drop them and warn.
    #[default]
    Warn,
    /// Accept and drop them silently.
    Ignore,
}

impl FieldValidation {
    /// Parses the query parameter (absent means Warn, as in Kubernetes 1.32).
    pub fn parse(value: Option<&str>) -> Result<Self> {
        match value.unwrap_or("") {
            "" | "Warn" => Ok(FieldValidation::Warn),
            "Strict" => Ok(FieldValidation::Strict),
            "Ignore" => Ok(FieldValidation::Ignore),
            other => Err(Box::new(Status::bad_request(format!(
                "fieldValidation must be one of Ignore, Warn or Strict, got {other:?}"
            )))),
        }
    }
}

/// Options common to writes.
#[derive(Debug, Clone, Default)]
pub struct WriteOptions {
    pub dry_run: bool,
    pub field_validation: FieldValidation,
    pub field_manager: Option<String>,
    pub force: bool,
}

/// A written object and the warnings to send with it.
#[derive(Debug)]
pub struct Written {
    pub object: Value,
    pub warnings: Vec<String>,
    /// Whether the write created the object (201 rather than 200).
    pub created: bool,
}

/// The patch formats Kubernetes accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    Json,
    Merge,
    StrategicMerge,
    Apply,
}

impl PatchType {
    /// From a request's `Content-Type`.
    pub fn from_content_type(ct: &str) -> Option<Self> {
        let base = ct.split(';').next().unwrap_or("").trim();
        match base {
            "application/json-patch+json" => Some(PatchType::Json),
            "application/merge-patch+json" => Some(PatchType::Merge),
            "application/strategic-merge-patch+json" => Some(PatchType::StrategicMerge),
            "application/apply-patch+yaml" | "application/apply-patch+json" => {
                Some(PatchType::Apply)
            }
            _ => None,
        }
    }
}

/// DeleteOptions (the parts rkube honours).
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeleteOptions {
    pub grace_period_seconds: Option<i64>,
    pub propagation_policy: Option<String>,
    #[serde(default)]
    pub preconditions: Preconditions,
    #[serde(default)]
    pub dry_run: Vec<String>,
}

/// Delete preconditions.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Preconditions {
    pub uid: Option<String>,
    pub resource_version: Option<String>,
}

/// List options.
#[derive(Debug, Clone, Default)]
pub struct ListOptions {
    pub label_selector: LabelSelector,
    pub field_selector: FieldSelector,
    pub limit: i64,
    pub continue_token: Option<String>,
    pub resource_version: Option<String>,
}

/// One page of a list.
pub struct ListResult {
    pub items: Vec<Arc<CachedObject>>,
    pub resource_version: i64,
    pub continue_token: Option<String>,
}

/// Where the next page of a list starts.
#[derive(serde::Serialize, serde::Deserialize)]
struct ContinueToken {
    rv: i64,
    start: String,
}

/// Which objects a list or watch selects.
#[derive(Debug, Clone)]
pub struct Filter {
    pub resource: &'static Resource,
    pub namespace: Option<String>,
    pub labels: LabelSelector,
    pub fields: FieldSelector,
}

impl Filter {
    pub fn matches(&self, o: &CachedObject) -> bool {
        if let Some(ns) = &self.namespace {
            if self.resource.namespaced() && &o.namespace != ns {
                return false;
            }
        }
        self.labels.matches(&o.labels)
            && self
                .fields
                .matches(|f| fields::field_value(self.resource, &o.value, f))
    }
}

/// One event of a filtered watch.
pub enum WatchItem {
    Event(EventType, Arc<CachedObject>),
    Bookmark(i64),
}

/// A filtered watch over the cache.
pub struct Watch {
    sub: Subscription,
    filter: Filter,
    pending: std::collections::VecDeque<WatchItem>,
}

impl Watch {
    /// The next event, a bookmark when `bookmark_every` passes quietly, or `None` when
    /// the watch must end (the client re-watches).
    pub async fn next(&mut self, bookmark_every: Option<Duration>) -> Option<WatchItem> {
        loop {
            if let Some(item) = self.pending.pop_front() {
                return Some(item);
            }
            let delivery = match bookmark_every {
                Some(every) => match tokio::time::timeout(every, self.sub.next()).await {
                    Ok(d) => d,
                    Err(_) => {
                        let (drained, rv) = self.sub.drain_for_bookmark();
                        for d in drained {
                            match self.filtered(d) {
                                Some(Some(item)) => self.pending.push_back(item),
                                Some(None) => {}
                                None => return self.pending.pop_front(),
                            }
                        }
                        self.pending.push_back(WatchItem::Bookmark(rv));
                        continue;
                    }
                },
                None => self.sub.next().await,
            };
            match self.filtered(delivery) {
                Some(Some(item)) => return Some(item),
                Some(None) => continue,
                None => return None,
            }
        }
    }

    /// Applies the filter, turning selector transitions into ADDED/DELETED as
    /// Kubernetes does. `None` = closed; `Some(None)` = filtered out.
    fn filtered(&self, delivery: Delivery) -> Option<Option<WatchItem>> {
        let (kind, obj, prev) = match delivery {
            Delivery::Closed => return None,
            Delivery::Event(k, o, p) => (k, o, p),
        };
        let now = self.filter.matches(&obj);
        let before = prev.as_ref().is_some_and(|p| self.filter.matches(p));
        let kind = match kind {
            EventType::Added if now => EventType::Added,
            EventType::Deleted if now || before => EventType::Deleted,
            EventType::Modified if now && before => EventType::Modified,
            EventType::Modified if now => EventType::Added,
            EventType::Modified if before => EventType::Deleted,
            _ => return Some(None),
        };
        Some(Some(WatchItem::Event(kind, obj)))
    }
}

/// The registry, cheap to clone.
#[derive(Clone)]
pub struct Registry {
    pub(crate) storage: Storage,
    pub(crate) cache: WatchCache,
    pub(crate) allocator: Arc<Allocator>,
    /// The leases expiring objects are written with (see [`crate::ttl`]).
    leases: Arc<Leases>,
    /// How long Events live; `None`: forever.
    event_ttl: Option<Duration>,
}

fn boxed(s: Status) -> Box<Status> {
    Box::new(s)
}

/// Converts a storage error about one object into a Status.
pub(crate) fn storage_status(resource: &Resource, name: &str, err: storage::Error) -> Box<Status> {
    boxed(match err {
        storage::Error::AlreadyExists => {
            Status::already_exists(resource.group, resource.plural, name)
        }
        storage::Error::NotFound => Status::not_found(resource.group, resource.plural, name),
        storage::Error::Conflict { .. } => Status::conflict(resource.group, resource.plural, name),
        storage::Error::ClaimTaken(claim) => Status::conflict_message(
            resource.group,
            resource.plural,
            name,
            &format!("allocation {claim} is already taken"),
        ),
        storage::Error::Compacted { requested } => {
            Status::expired(format!("too old resource version: {requested}"))
        }
        e @ (storage::Error::Etcd(_)
        | storage::Error::Corrupt { .. }
        | storage::Error::LeaseNotFound) => {
            tracing::error!(error = %e, "storage failure");
            Status::internal(format!("storage failure: {e}"))
        }
    })
}

fn cache_status(err: cache::Error) -> Box<Status> {
    boxed(match err {
        cache::Error::TooOld { .. } => Status::expired(err.to_string()),
        cache::Error::TooNew { .. } => Status::timeout(err.to_string()),
        cache::Error::NotReady => Status::unavailable(err.to_string()),
        cache::Error::Storage(e) => Status::internal(format!("storage failure: {e}")),
    })
}

/// A delete's uid and resourceVersion preconditions, checked against the stored object
/// `obj` at `mod_revision`: a 409 naming what differs, as Kubernetes words it.
///
/// # Errors
/// The conflict, or a precondition resourceVersion that is not a number.
pub(crate) fn check_preconditions(
    resource: &Resource,
    name: &str,
    obj: &Value,
    mod_revision: i64,
    pre: &Preconditions,
) -> Result<()> {
    let failed = |message: String| {
        boxed(Status::conflict_message(
            resource.group,
            resource.plural,
            name,
            &format!("Precondition failed: {message}"),
        ))
    };
    let uid = object::uid(obj).unwrap_or_default();
    if let Some(want) = pre.uid.as_deref().filter(|u| *u != uid) {
        return Err(failed(format!(
            "UID in precondition: {want}, UID in object meta: {uid}"
        )));
    }
    if let Some(want) = &pre.resource_version {
        if parse_rv(want)? != mod_revision {
            return Err(failed(format!(
                "ResourceVersion in precondition: {want}, ResourceVersion in object meta: {mod_revision}"
            )));
        }
    }
    Ok(())
}

fn parse_rv(rv: &str) -> Result<i64> {
    rv.parse::<i64>().ok().filter(|r| *r >= 0).ok_or_else(|| {
        boxed(Status::bad_request(format!(
            "invalid resource version {rv:?}"
        )))
    })
}

/// `now` as Kubernetes writes timestamps (RFC 3339, seconds).
pub fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

impl Registry {
    /// Builds the registry over a connected storage and a started cache.
    pub fn new(storage: Storage, cache: WatchCache, allocator: Allocator) -> Self {
        Registry {
            leases: Arc::new(Leases::new(&storage.client())),
            storage,
            cache,
            allocator: Arc::new(allocator),
            event_ttl: None,
        }
    }

    /// Events written from now on expire `ttl` after their last write (zero: never).
    pub fn with_event_ttl(mut self, ttl: Duration) -> Self {
        self.event_ttl = (!ttl.is_zero()).then_some(ttl);
        self
    }

    /// The lease a write of `resource` attaches: Events expire, nothing else does.
    async fn lease_for(&self, resource: &Resource) -> Result<Option<i64>> {
        let ttl = match self.event_ttl {
            Some(ttl) if resource.group.is_empty() && resource.plural == "events" => ttl,
            _ => return Ok(None),
        };
        match self.leases.for_ttl(ttl).await {
            Ok(lease) => Ok(Some(lease)),
            Err(e) => Err(storage_status(resource, "", e)),
        }
    }

    /// Runs `write` with the lease of [`Self::lease_for`], and once more with a new
    /// lease when etcd no longer knows the shared one.
    async fn write_with_lease<T, F, Fut>(
        &self,
        resource: &Resource,
        write: F,
    ) -> Result<storage::Result<T>>
    where
        F: Fn(Option<i64>) -> Fut,
        Fut: std::future::Future<Output = storage::Result<T>>,
    {
        let lease = self.lease_for(resource).await?;
        match (write(lease).await, lease) {
            (Err(storage::Error::LeaseNotFound), Some(gone)) => {
                tracing::warn!(lease = gone, "the shared lease is gone; granting another");
                self.leases.forget(gone).await;
                let lease = self.lease_for(resource).await?;
                Ok(write(lease).await)
            }
            (written, _) => Ok(written),
        }
    }

    /// The watch cache (for health checks).
    pub fn cache(&self) -> &WatchCache {
        &self.cache
    }

    fn ns_of<'a>(resource: &Resource, namespace: Option<&'a str>) -> Option<&'a str> {
        if resource.namespaced() {
            namespace
        } else {
            None
        }
    }

    pub(crate) async fn read(
        &self,
        resource: &Resource,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<storage::Stored> {
        let key = storage::key(resource, Self::ns_of(resource, namespace), name);
        match self.storage.get(&key).await {
            Ok(Some(stored)) => Ok(stored),
            Ok(None) => Err(boxed(Status::not_found(
                resource.group,
                resource.plural,
                name,
            ))),
            Err(e) => Err(storage_status(resource, name, e)),
        }
    }

    /// Reads one object (a linearizable read from etcd).
    pub async fn get(
        &self,
        resource: &Resource,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Value> {
        Ok(self.read(resource, namespace, name).await?.value)
    }

    /// Lists objects: from the watch cache once it is fresh, continued pages from etcd at
    /// the first page's revision.
    pub async fn list(
        &self,
        resource: &'static Resource,
        namespace: Option<&str>,
        opts: &ListOptions,
    ) -> Result<ListResult> {
        let filter = Filter {
            resource,
            namespace: Self::ns_of(resource, namespace).map(String::from),
            labels: opts.label_selector.clone(),
            fields: opts.field_selector.clone(),
        };
        let prefix = storage::collection_prefix(resource, filter.namespace.as_deref());
        if let Some(token) = opts.continue_token.as_deref().filter(|t| !t.is_empty()) {
            return self
                .list_continue(&filter, &prefix, token, opts.limit)
                .await;
        }
        match opts.resource_version.as_deref() {
            None | Some("") => {
                self.cache.wait_fresh().await.map_err(cache_status)?;
            }
            Some("0") => {}
            Some(rv) => {
                let rv = parse_rv(rv)?;
                self.cache
                    .wait_for(rv, Duration::from_secs(3))
                    .await
                    .map_err(cache_status)?;
            }
        }
        let (objects, revision) = self.cache.snapshot(resource, &prefix);
        let mut items: Vec<Arc<CachedObject>> =
            objects.into_iter().filter(|o| filter.matches(o)).collect();
        let mut continue_token = None;
        if opts.limit > 0 && items.len() as i64 > opts.limit {
            items.truncate(opts.limit as usize);
            if let Some(last) = items.last() {
                continue_token = Some(encode_continue(revision, &last.key));
            }
        }
        Ok(ListResult {
            items,
            resource_version: revision,
            continue_token,
        })
    }

    async fn list_continue(
        &self,
        filter: &Filter,
        prefix: &str,
        token: &str,
        limit: i64,
    ) -> Result<ListResult> {
        let token = decode_continue(token)?;
        if !token.start.starts_with(prefix) {
            return Err(boxed(Status::bad_request(
                "continue key is not valid for this list",
            )));
        }
        let mut items = Vec::new();
        let mut start = token.start.clone();
        let mut continue_token = None;
        loop {
            let page = self
                .storage
                .list(prefix, Some(&start), token.rv, limit.max(100))
                .await
                .map_err(|e| match e {
                    storage::Error::Compacted { .. } => boxed(Status::expired(
                        "The provided continue parameter is too old to display a consistent list result. \
                         You can start a new list without the continue parameter.",
                    )),
                    e => storage_status(filter.resource, "", e),
                })?;
            let more = page.more;
            for (key, stored) in page.items {
                let obj = Arc::new(CachedObject::new(
                    key.clone(),
                    stored.value,
                    stored.mod_revision,
                ));
                start = format!("{key}\0");
                if filter.matches(&obj) {
                    items.push(obj);
                    if limit > 0 && items.len() as i64 == limit {
                        continue_token = Some(encode_continue(token.rv, &key));
                        break;
                    }
                }
            }
            if continue_token.is_some() || !more {
                break;
            }
        }
        // A token that points past the last key lists nothing more.
        if let Some(t) = &continue_token {
            if let Ok(decoded) = decode_continue(t) {
                let probe = self
                    .storage
                    .list(prefix, Some(&decoded.start), token.rv, 1)
                    .await
                    .map_err(|e| storage_status(filter.resource, "", e))?;
                if probe.items.is_empty() {
                    continue_token = None;
                }
            }
        }
        Ok(ListResult {
            items,
            resource_version: token.rv,
            continue_token,
        })
    }

    /// Starts a watch. `resource_version` empty or "0": the current state first.
    pub async fn watch(
        &self,
        resource: &'static Resource,
        namespace: Option<&str>,
        opts: &ListOptions,
    ) -> Result<Watch> {
        let revision = match opts.resource_version.as_deref() {
            None | Some("") | Some("0") => 0,
            Some(rv) => parse_rv(rv)?,
        };
        let sub = self
            .cache
            .watch(resource, revision)
            .await
            .map_err(cache_status)?;
        Ok(Watch {
            sub,
            filter: Filter {
                resource,
                namespace: Self::ns_of(resource, namespace).map(String::from),
                labels: opts.label_selector.clone(),
                fields: opts.field_selector.clone(),
            },
            pending: Default::default(),
        })
    }

    /// Decodes a request body as the resource's kind, applying `fieldValidation`.
    fn decode_body(
        resource: &Resource,
        body: Value,
        fv: FieldValidation,
        warnings: &mut Vec<String>,
    ) -> Result<Value> {
        if !body.is_object() {
            return Err(boxed(Status::bad_request(format!(
                "{} in version \"{}\" cannot be handled as a {}: the body is not a JSON object",
                resource.kind, resource.version, resource.kind
            ))));
        }
        if let Some(kind) = body.get("kind").and_then(Value::as_str) {
            if kind != resource.kind {
                return Err(boxed(Status::bad_request(format!(
                    "the kind {kind:?} of the body does not match the resource ({})",
                    resource.kind
                ))));
            }
        }
        if let Some(av) = body.get("apiVersion").and_then(Value::as_str) {
            if av != resource.api_version() {
                return Err(boxed(Status::bad_request(format!(
                    "the apiVersion {av:?} of the body does not match the resource ({})",
                    resource.api_version()
                ))));
            }
        }
        let decoded =
            codec::decode(resource, body).map_err(|e| boxed(Status::bad_request(e.to_string())))?;
        if !decoded.unknown_fields.is_empty() {
            let msgs: Vec<String> = decoded
                .unknown_fields
                .iter()
                .map(|f| format!("unknown field \"{f}\""))
                .collect();
            match fv {
                FieldValidation::Strict => {
                    return Err(boxed(Status::bad_request(format!(
                        "{} in version \"{}\" cannot be handled as a {}: strict decoding error: {}",
                        resource.kind,
                        resource.version,
                        resource.kind,
                        msgs.join(", ")
                    ))))
                }
                FieldValidation::Warn => warnings.extend(msgs),
                FieldValidation::Ignore => {}
            }
        }
        Ok(decoded.object)
    }

    fn invalid(resource: &Resource, obj: &Value, errors: &[validation::FieldError]) -> Box<Status> {
        boxed(Status::invalid(
            resource.group,
            resource.kind,
            object::name(obj).unwrap_or_default(),
            errors,
        ))
    }

    /// Checks that a namespaced object's namespace exists and is not terminating.
    async fn check_namespace(&self, resource: &Resource, namespace: &str) -> Result<()> {
        if !resource.namespaced() {
            return Ok(());
        }
        let ns_resource =
            rkube_api::resource::find("", "v1", "namespaces").expect("namespaces are in the table");
        // The watch cache answers for namespaces it has seen, as Kubernetes' namespace
        // lifecycle admission uses an informer (a namespace's deletion returns only once
        // the cache has seen it, see `delete`); etcd answers for one it has not seen yet.
        let key = storage::key(ns_resource, None, namespace);
        let ns = match self.cache.get(ns_resource, &key) {
            Some(cached) => cached.value.clone(),
            None => self.get(ns_resource, None, namespace).await?,
        };
        if object::deletion_timestamp(&ns).is_some() || ns["status"]["phase"] == "Terminating" {
            let mut status = Status::forbidden(format!(
                "{} \"{}\" is forbidden: unable to create new content in namespace {namespace} because it is being terminated",
                resource.group_resource(),
                "",
            ));
            status.details = Some(rkube_api::status::StatusDetails {
                kind: resource.plural.into(),
                group: resource.group.into(),
                causes: vec![rkube_api::status::StatusCause {
                    reason: "NamespaceTerminating".into(),
                    message: format!("namespace {namespace} is being terminated"),
                    field: "metadata.namespace".into(),
                }],
                ..Default::default()
            });
            return Err(boxed(status));
        }
        Ok(())
    }

    /// Creates an object (POST).
    pub async fn create(
        &self,
        resource: &'static Resource,
        namespace: Option<&str>,
        body: Value,
        opts: &WriteOptions,
    ) -> Result<Written> {
        let mut warnings = Vec::new();
        let mut obj = Self::decode_body(resource, body, opts.field_validation, &mut warnings)?;
        let namespace = Self::ns_of(resource, namespace);
        match (namespace, object::namespace(&obj)) {
            (Some(url), Some(body)) if !body.is_empty() && url != body => {
                return Err(boxed(Status::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                )))
            }
            _ => {}
        }
        object::set_meta_str(&mut obj, "namespace", namespace);
        if object::name(&obj).is_none_or(str::is_empty) {
            if let Some(prefix) = object::meta_str(&obj, "generateName").filter(|p| !p.is_empty()) {
                let name = format!("{prefix}{}", random_suffix());
                object::set_meta_str(&mut obj, "name", Some(&name));
            }
        }
        let meta = object::metadata_mut(&mut obj);
        meta.insert(
            "uid".into(),
            Value::String(uuid::Uuid::new_v4().to_string()),
        );
        meta.insert("creationTimestamp".into(), Value::String(now_rfc3339()));
        meta.insert("generation".into(), json!(1));
        for field in [
            "resourceVersion",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "selfLink",
            "managedFields",
        ] {
            meta.remove(field);
        }
        strategy::prepare_for_create(resource, &mut obj);
        defaults::apply_defaults(resource, &mut obj);
        let errors = validation::validate(resource, &obj, None);
        if !errors.is_empty() {
            return Err(Self::invalid(resource, &obj, &errors));
        }
        if let Some(ns) = namespace {
            self.check_namespace(resource, ns).await?;
        }
        let name = object::name(&obj).unwrap_or_default().to_string();
        let key = storage::key(resource, namespace, &name);
        let mut attempts = 0;
        loop {
            attempts += 1;
            let mut candidate = obj.clone();
            strategy::allocate(resource, &self.allocator, &mut candidate, None)
                .map_err(|errs| Self::invalid(resource, &candidate, &errs))?;
            if opts.dry_run {
                return Ok(Written {
                    object: candidate,
                    warnings,
                    created: true,
                });
            }
            let claims = strategy::claims(resource, &candidate);
            let created = self
                .write_with_lease(resource, |lease| {
                    self.storage.create(&key, &candidate, &claims, lease)
                })
                .await?;
            match created {
                Ok(rev) => {
                    object::set_meta_str(&mut candidate, "resourceVersion", Some(&rev.to_string()));
                    return Ok(Written {
                        object: candidate,
                        warnings,
                        created: true,
                    });
                }
                Err(storage::Error::ClaimTaken(claim)) if attempts < 16 => {
                    if let Some(errs) = strategy::claim_conflict(resource, &obj, &claim) {
                        return Err(Self::invalid(resource, &obj, &errs));
                    }
                }
                Err(e) => return Err(storage_status(resource, &name, e)),
            }
        }
    }

    /// Replaces an object (PUT), or its status (`subresource` = status).
    pub async fn update(
        &self,
        resource: &'static Resource,
        namespace: Option<&str>,
        name: &str,
        body: Value,
        subresource: Option<Subresource>,
        opts: &WriteOptions,
    ) -> Result<Written> {
        let mut warnings = Vec::new();
        let body = Self::decode_body(resource, body, opts.field_validation, &mut warnings)?;
        if let Some(body_name) = object::name(&body).filter(|n| !n.is_empty()) {
            if body_name != name {
                return Err(boxed(Status::bad_request(format!(
                    "the name of the object ({body_name}) does not match the name on the URL ({name})"
                ))));
            }
        }
        let precondition = object::resource_version(&body).map(parse_rv).transpose()?;
        let current = self.read(resource, namespace, name).await?;
        if precondition.is_some_and(|rv| rv != current.mod_revision) {
            return Err(boxed(Status::conflict(
                resource.group,
                resource.plural,
                name,
            )));
        }
        let mut written = self
            .write_update(resource, namespace, name, current, body, subresource, opts)
            .await?;
        warnings.append(&mut written.warnings);
        written.warnings = warnings;
        Ok(written)
    }

    /// Turns `current` into `new` (already decoded) with Kubernetes update semantics and
    /// writes it if `current` is still what etcd holds.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn write_update(
        &self,
        resource: &'static Resource,
        namespace: Option<&str>,
        name: &str,
        current: storage::Stored,
        mut new: Value,
        subresource: Option<Subresource>,
        opts: &WriteOptions,
    ) -> Result<Written> {
        let old = current.value;
        let namespace = Self::ns_of(resource, namespace);
        if subresource == Some(Subresource::Status) {
            // Only the status changes through /status.
            let status = new.get("status").cloned();
            new = old.clone();
            match status {
                Some(s) => {
                    new["status"] = s;
                }
                None => {
                    if let Some(map) = new.as_object_mut() {
                        map.remove("status");
                    }
                }
            }
        } else if resource.has(Subresource::Status) {
            match old.get("status") {
                Some(s) => new["status"] = s.clone(),
                None => {
                    if let Some(map) = new.as_object_mut() {
                        map.remove("status");
                    }
                }
            }
        }
        // Fields users cannot change.
        let meta = object::metadata_mut(&mut new);
        for field in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
        ] {
            match old["metadata"].get(field) {
                Some(v) => {
                    meta.insert(field.into(), v.clone());
                }
                None => {
                    meta.remove(field);
                }
            }
        }
        meta.insert("name".into(), Value::String(name.into()));
        match namespace {
            Some(ns) => {
                meta.insert("namespace".into(), Value::String(ns.into()));
            }
            None => {
                meta.remove("namespace");
            }
        }
        meta.remove("managedFields");
        meta.insert(
            "resourceVersion".into(),
            Value::String(current.mod_revision.to_string()),
        );
        strategy::prepare_for_update(resource, &mut new, &old);
        defaults::apply_defaults(resource, &mut new);
        if object::spec_part(&new) != object::spec_part(&old) {
            let generation = old["metadata"]["generation"].as_i64().unwrap_or(0) + 1;
            object::metadata_mut(&mut new).insert("generation".into(), json!(generation));
        }
        let mut errors = validation::validate(resource, &new, Some(&old));
        if let Err(mut errs) = strategy::allocate(resource, &self.allocator, &mut new, Some(&old)) {
            errors.append(&mut errs);
        }
        if !errors.is_empty() {
            return Err(Self::invalid(resource, &new, &errors));
        }
        if new == old {
            return Ok(Written {
                object: new,
                warnings: vec![],
                created: false,
            });
        }
        let key = storage::key(resource, namespace, name);
        if strategy::ready_to_remove(resource, &new) {
            if opts.dry_run {
                return Ok(Written {
                    object: new,
                    warnings: vec![],
                    created: false,
                });
            }
            let claims = strategy::claims(resource, &old);
            self.storage
                .delete(&key, current.mod_revision, &claims)
                .await
                .map_err(|e| storage_status(resource, name, e))?;
            return Ok(Written {
                object: new,
                warnings: vec![],
                created: false,
            });
        }
        if opts.dry_run {
            return Ok(Written {
                object: new,
                warnings: vec![],
                created: false,
            });
        }
        let old_claims = strategy::claims(resource, &old);
        let new_claims = strategy::claims(resource, &new);
        let added: Vec<String> = new_claims
            .iter()
            .filter(|c| !old_claims.contains(c))
            .cloned()
            .collect();
        let released: Vec<String> = old_claims
            .iter()
            .filter(|c| !new_claims.contains(c))
            .cloned()
            .collect();
        let claims = storage::Claims {
            new: &added,
            released: &released,
        };
        let updated = self
            .write_with_lease(resource, |lease| {
                self.storage
                    .update(&key, &new, current.mod_revision, claims, lease)
            })
            .await?;
        match updated {
            Ok(rev) => {
                object::set_meta_str(&mut new, "resourceVersion", Some(&rev.to_string()));
                Ok(Written {
                    object: new,
                    warnings: vec![],
                    created: false,
                })
            }
            Err(storage::Error::ClaimTaken(claim)) => {
                match strategy::claim_conflict(resource, &new, &claim) {
                    Some(errs) => Err(Self::invalid(resource, &new, &errs)),
                    None => Err(storage_status(
                        resource,
                        name,
                        storage::Error::ClaimTaken(claim),
                    )),
                }
            }
            Err(e) => Err(storage_status(resource, name, e)),
        }
    }

    /// Patches an object (PATCH); `Apply` creates it when absent.
    #[allow(clippy::too_many_arguments)]
    pub async fn patch(
        &self,
        resource: &'static Resource,
        namespace: Option<&str>,
        name: &str,
        patch_type: PatchType,
        patch_body: Value,
        subresource: Option<Subresource>,
        opts: &WriteOptions,
    ) -> Result<Written> {
        if patch_type == PatchType::Apply && opts.field_manager.as_deref().is_none_or(str::is_empty)
        {
            let mut status = Status::invalid(resource.group, resource.kind, name, &[]);
            status.message = "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch".into();
            return Err(boxed(status));
        }
        let precondition = match patch_type {
            PatchType::Json => None,
            _ => patch_body["metadata"]["resourceVersion"]
                .as_str()
                .map(parse_rv)
                .transpose()?,
        };
        for _attempt in 0..16 {
            let current = match self.read(resource, namespace, name).await {
                Ok(c) => c,
                Err(status)
                    if status.code == 404
                        && patch_type == PatchType::Apply
                        && subresource.is_none() =>
                {
                    let mut body = patch_body.clone();
                    object::set_meta_str(&mut body, "name", Some(name));
                    return self.create(resource, namespace, body, opts).await;
                }
                Err(status) => return Err(status),
            };
            if precondition.is_some_and(|rv| rv != current.mod_revision) {
                return Err(boxed(Status::conflict(
                    resource.group,
                    resource.plural,
                    name,
                )));
            }
            let patched = match patch_type {
                PatchType::Json => patch::json_patch(&current.value, &patch_body),
                PatchType::Merge => patch::merge_patch(&current.value, &patch_body),
                PatchType::StrategicMerge | PatchType::Apply => {
                    patch::strategic_merge_patch(resource, &current.value, &patch_body)
                }
            }
            .map_err(|e| {
                boxed(Status {
                    code: 422,
                    reason: "Invalid".into(),
                    ..Status::bad_request(e.to_string())
                })
            })?;
            let mut warnings = Vec::new();
            let decoded =
                Self::decode_body(resource, patched, opts.field_validation, &mut warnings)?;
            match self
                .write_update(
                    resource,
                    namespace,
                    name,
                    current,
                    decoded,
                    subresource,
                    opts,
                )
                .await
            {
                Err(status)
                    if status.code == 409
                        && status.reason == "Conflict"
                        && precondition.is_none() =>
                {
                    continue
                }
                Ok(mut written) => {
                    warnings.append(&mut written.warnings);
                    written.warnings = warnings;
                    return Ok(written);
                }
                Err(status) => return Err(status),
            }
        }
        Err(boxed(Status::conflict(
            resource.group,
            resource.plural,
            name,
        )))
    }

    /// Deletes an object, honouring finalizers, grace periods and preconditions. Returns
    /// the object: still present (being deleted) or as it was when removed.
    pub async fn delete(
        &self,
        resource: &'static Resource,
        namespace: Option<&str>,
        name: &str,
        opts: &DeleteOptions,
    ) -> Result<(Value, bool)> {
        if let Some(status) = strategy::refuse_delete(resource, name) {
            return Err(boxed(status));
        }
        for _attempt in 0..16 {
            let current = self.read(resource, namespace, name).await?;
            let obj = &current.value;
            check_preconditions(
                resource,
                name,
                obj,
                current.mod_revision,
                &opts.preconditions,
            )?;
            let dry_run = !opts.dry_run.is_empty();
            let key = storage::key(resource, Self::ns_of(resource, namespace), name);
            let outcome = strategy::plan_delete(resource, obj, opts);
            let result = match outcome {
                strategy::DeletePlan::Remove => {
                    if dry_run {
                        return Ok((obj.clone(), true));
                    }
                    let claims = strategy::claims(resource, obj);
                    self.storage
                        .delete(&key, current.mod_revision, &claims)
                        .await
                        .map(|_| (obj.clone(), true))
                }
                strategy::DeletePlan::Mark(marked) => {
                    if marked == *obj || dry_run {
                        return Ok((marked, false));
                    }
                    let claims = storage::Claims::default();
                    self.write_with_lease(resource, |lease| {
                        self.storage
                            .update(&key, &marked, current.mod_revision, claims, lease)
                    })
                    .await?
                    .map(|rev| {
                        let mut marked = marked;
                        object::set_meta_str(
                            &mut marked,
                            "resourceVersion",
                            Some(&rev.to_string()),
                        );
                        (marked, false)
                    })
                }
            };
            match result {
                Ok(done) => {
                    if resource.kind == "Namespace" && resource.group.is_empty() {
                        // Creates check namespaces in the watch cache: let it see the
                        // termination before anyone is told it happened.
                        let rev = object::resource_version(&done.0)
                            .and_then(|r| r.parse().ok())
                            .unwrap_or(0);
                        if let Err(e) = self.cache.wait_for(rev, Duration::from_secs(5)).await {
                            tracing::warn!(error = %e, "watch cache is slow to see a terminating namespace");
                        }
                    }
                    return Ok(done);
                }
                Err(storage::Error::Conflict { .. })
                    if opts.preconditions.resource_version.is_none() =>
                {
                    continue
                }
                Err(e) => return Err(storage_status(resource, name, e)),
            }
        }
        Err(boxed(Status::conflict(
            resource.group,
            resource.plural,
            name,
        )))
    }

    /// Binds a pod to a node (`pods/binding`).
    pub async fn bind(&self, namespace: &str, name: &str, binding: &Value) -> Result<Value> {
        let pods = rkube_api::resource::find("", "v1", "pods").expect("pods are in the table");
        let node = binding["target"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if node.is_empty() {
            return Err(boxed(Status::invalid(
                "",
                "Binding",
                name,
                &[validation::FieldError::required("target.name", "")],
            )));
        }
        for _attempt in 0..16 {
            let current = self.read(pods, Some(namespace), name).await?;
            let mut pod = current.value.clone();
            if object::deletion_timestamp(&pod).is_some() {
                return Err(boxed(Status::conflict_message(
                    "",
                    "pods",
                    name,
                    "pod is being deleted, cannot be assigned to a host",
                )));
            }
            if let Some(existing) = pod["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) {
                return Err(boxed(Status::conflict_message(
                    "",
                    "pods",
                    name,
                    &format!("pod {name} is already assigned to node \"{existing}\""),
                )));
            }
            pod["spec"]["nodeName"] = Value::String(node.clone());
            strategy::set_condition(&mut pod, "PodScheduled", "True", None, None);
            let key = storage::key(pods, Some(namespace), name);
            match self
                .storage
                .update(
                    &key,
                    &pod,
                    current.mod_revision,
                    storage::Claims::default(),
                    None,
                )
                .await
            {
                Ok(rev) => {
                    object::set_meta_str(&mut pod, "resourceVersion", Some(&rev.to_string()));
                    return Ok(pod);
                }
                Err(storage::Error::Conflict { .. }) => continue,
                Err(e) => return Err(storage_status(pods, name, e)),
            }
        }
        Err(boxed(Status::conflict("", "pods", name)))
    }

    /// Makes sure the namespaces every cluster has exist.
    pub async fn ensure_system_namespaces(&self) -> anyhow::Result<()> {
        let namespaces =
            rkube_api::resource::find("", "v1", "namespaces").expect("namespaces are in the table");
        for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            let body = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
            match self
                .create(namespaces, None, body, &WriteOptions::default())
                .await
            {
                Ok(_) => tracing::info!(namespace = ns, "created namespace"),
                Err(status) if status.code == 409 => {}
                Err(status) => anyhow::bail!("create namespace {ns}: {}", status.message),
            }
        }
        Ok(())
    }
}

fn encode_continue(rv: i64, last_key: &str) -> String {
    let token = ContinueToken {
        rv,
        start: format!("{last_key}\0"),
    };
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(serde_json::to_vec(&token).expect("a token serialises"))
}

fn decode_continue(token: &str) -> Result<ContinueToken> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<ContinueToken>(&bytes).ok())
        .ok_or_else(|| boxed(Status::bad_request("continue key is not valid")))
}

/// Five characters as Kubernetes' generateName uses (no vowels, no confusable digits).
fn random_suffix() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    (0..5)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continue_tokens_round_trip() {
        let t = encode_continue(42, "/registry/pods/default/a");
        let back = decode_continue(&t).expect("valid token");
        assert_eq!(back.rv, 42);
        assert_eq!(back.start, "/registry/pods/default/a\0");
        assert!(decode_continue("garbage!").is_err());
    }

    #[test]
    fn patch_types_from_content_types() {
        for (ct, want) in [
            ("application/json-patch+json", Some(PatchType::Json)),
            (
                "application/merge-patch+json; charset=utf-8",
                Some(PatchType::Merge),
            ),
            (
                "application/strategic-merge-patch+json",
                Some(PatchType::StrategicMerge),
            ),
            ("application/apply-patch+yaml", Some(PatchType::Apply)),
            ("application/json", None),
        ] {
            assert_eq!(PatchType::from_content_type(ct), want, "{ct}");
        }
    }

    #[test]
    fn generated_names_use_the_kubernetes_alphabet() {
        let s = random_suffix();
        assert_eq!(s.len(), 5);
        assert!(
            s.chars().all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c)),
            "{s}"
        );
    }
}
