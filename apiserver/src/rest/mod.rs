//! The Kubernetes REST front end: paths, content negotiation, Tables, watches and
//! `Status` errors over the [`Registry`].
//!
//! Start with [`handle`]: it parses the path ([`path`]), answers discovery
//! ([`discovery`]) or dispatches a resource request by method.

pub mod discovery;
mod eviction;
pub mod exec;
mod logs;
pub mod path;
mod stream;
mod table;
mod watch;

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body_util::BodyExt;
use serde_json::{json, Value};

use rkube_api::validation::FieldError;
use rkube_api::{
    fields, object,
    selector::{FieldSelector, LabelSelector},
    status::Status,
    Resource, Subresource,
};

use crate::auth::{Authorizer, Decision, RequestAttributes, UserInfo};
use crate::node_proxy::NodeProxy;
use crate::registry::{
    DeleteOptions, FieldValidation, ListOptions, PatchType, Registry, WriteOptions,
};
use path::{Route, Target};

/// Bodies larger than this are refused with 413, as Kubernetes does.
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

/// What every handler shares.
#[derive(Clone)]
pub struct ApiState {
    pub registry: Registry,
    /// Decides, after authentication, whether the user may make the request.
    pub authorizer: Arc<dyn Authorizer>,
    /// Clients of the node agents, for `pods/log` and `pods/exec`.
    pub node_proxy: NodeProxy,
}

type Query = HashMap<String, String>;

/// A query from `key=value` pairs, for the handlers' tests.
#[cfg(test)]
fn query_of(pairs: &[(&str, &str)]) -> Query {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn parse_query(q: Option<&str>) -> Query {
    serde_urlencoded::from_str::<Vec<(String, String)>>(q.unwrap_or(""))
        .unwrap_or_default()
        .into_iter()
        .collect()
}

/// A JSON response.
pub fn json_response(code: StatusCode, body: &Value, warnings: &[String]) -> Response {
    let bytes = serde_json::to_vec(body).expect("a JSON value always serialises");
    bytes_response(code, Bytes::from(bytes), "application/json", warnings)
}

fn bytes_response(
    code: StatusCode,
    body: Bytes,
    content_type: &str,
    warnings: &[String],
) -> Response {
    let mut resp = (code, body).into_response();
    if let Ok(ct) = HeaderValue::from_str(content_type) {
        resp.headers_mut().insert(header::CONTENT_TYPE, ct);
    }
    for w in warnings {
        let text = format!("299 - \"{}\"", w.replace('"', "\\\""));
        if let Ok(v) = HeaderValue::from_str(&text) {
            resp.headers_mut().append(header::WARNING, v);
        }
    }
    resp
}

/// A `Status` error as its HTTP response.
pub fn status_response(status: &Status) -> Response {
    let code = StatusCode::from_u16(status.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(code, &status.to_json(), &[])
}

/// Whether the client asked for a server-side Table.
fn wants_table(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| {
            a.split(',')
                .next()
                .is_some_and(|first| first.contains("as=Table"))
        })
}

fn wants_aggregated(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("as=APIGroupDiscoveryList"))
}

/// What a resource request asks to do, for the authorizer.
pub fn request_attributes(
    method: &Method,
    target: &Target,
    q: &Query,
    path: &str,
) -> RequestAttributes {
    let verb = match (method.as_str(), target.name.is_some()) {
        // Opening a stream into a container creates something, whatever the method
        // (kubectl's WebSocket is a GET, its SPDY fallback a POST).
        _ if target.subresource.as_deref() == Some(Subresource::Exec.name()) => "create",
        ("GET" | "HEAD", false) if is_true(q, "watch") => "watch",
        ("GET" | "HEAD", false) => "list",
        ("GET" | "HEAD", true) => "get",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", false) => "deletecollection",
        ("DELETE", true) => "delete",
        _ => "unknown",
    };
    RequestAttributes {
        verb: verb.into(),
        group: target.resource.group.into(),
        resource: target.resource.plural.into(),
        subresource: target.subresource.clone().unwrap_or_default(),
        namespace: target.namespace.clone().unwrap_or_default(),
        name: target.name.clone().unwrap_or_default(),
        path: path.into(),
    }
}

/// Asks the authorizer; a refusal is Kubernetes' 403 Forbidden.
pub fn authorize(
    authorizer: &dyn Authorizer,
    user: &UserInfo,
    attrs: &RequestAttributes,
) -> Result<(), Box<Status>> {
    let reason = match authorizer.authorize(user, attrs) {
        Decision::Allow => return Ok(()),
        Decision::Deny(reason) => reason,
        Decision::NoOpinion => String::new(),
    };
    let resource = if attrs.subresource.is_empty() {
        attrs.resource.clone()
    } else {
        format!("{}/{}", attrs.resource, attrs.subresource)
    };
    let gr = if attrs.group.is_empty() {
        attrs.resource.clone()
    } else {
        format!("{}.{}", attrs.resource, attrs.group)
    };
    let scope = if attrs.namespace.is_empty() {
        "at the cluster scope".to_string()
    } else {
        format!("in the namespace \"{}\"", attrs.namespace)
    };
    let mut message = format!(
        "{gr} \"{}\" is forbidden: User \"{}\" cannot {} resource \"{resource}\" in API group \"{}\" {scope}",
        attrs.name, user.name, attrs.verb, attrs.group
    );
    if !reason.is_empty() {
        message.push_str(&format!(": {reason}"));
    }
    Err(Box::new(Status::forbidden(message)))
}

/// The single entry point of the REST API.
pub async fn handle(State(state): State<Arc<ApiState>>, req: Request<Body>) -> Response {
    let (parts, body) = req.into_parts();
    let query = parse_query(parts.uri.query());
    let route = path::parse(parts.uri.path());
    let get = parts.method == Method::GET;
    match route {
        Route::Health if get => match state.registry.cache().wait_fresh().await {
            Ok(_) => bytes_response(StatusCode::OK, Bytes::from_static(b"ok"), "text/plain", &[]),
            Err(e) => status_response(&Status::unavailable(e.to_string())),
        },
        Route::Version if get => json_response(StatusCode::OK, &discovery::version(), &[]),
        Route::Api if get && wants_aggregated(&parts.headers) => aggregated_response(true),
        Route::Apis if get && wants_aggregated(&parts.headers) => aggregated_response(false),
        Route::Api if get => json_response(StatusCode::OK, &discovery::api_versions(), &[]),
        Route::Apis if get => json_response(StatusCode::OK, &discovery::api_group_list(), &[]),
        Route::Group(g) if get => match discovery::group(&g) {
            Some(v) => json_response(StatusCode::OK, &v, &[]),
            None => status_response(&Status::path_not_found()),
        },
        Route::GroupVersion(g, v) if get => match discovery::resource_list(&g, &v) {
            Some(v) => json_response(StatusCode::OK, &v, &[]),
            None => status_response(&Status::path_not_found()),
        },
        Route::OpenApiV3 if get => json_response(StatusCode::OK, &discovery::openapi_index(), &[]),
        Route::OpenApiV3Doc(key) if get => match discovery::openapi_document(&key) {
            Some(v) => json_response(StatusCode::OK, &v, &[]),
            None => status_response(&Status::path_not_found()),
        },
        // kubectl only understands protobuf OpenAPI v2; a 404 makes it use v3.
        Route::OpenApiV2 => status_response(&Status::path_not_found()),
        Route::Resource(target) => {
            let attrs = request_attributes(&parts.method, &target, &query, parts.uri.path());
            let anonymous = UserInfo::anonymous();
            let user = parts.extensions.get::<UserInfo>().unwrap_or(&anonymous);
            if let Err(status) = authorize(state.authorizer.as_ref(), user, &attrs) {
                return status_response(&status);
            }
            if let Some(sub) = stream_subresource(&target) {
                return stream_request(&state, parts, &query, &target, sub).await;
            }
            resource_request(&state, parts.method, &parts.headers, &query, target, body).await
        }
        Route::NotFound => status_response(&Status::path_not_found()),
        _ => status_response(&Status::method_not_allowed(format!(
            "the server does not allow this method on the requested resource ({})",
            parts.method
        ))),
    }
}

/// `pods/log` or `pods/exec` on a named object: served by the pod's node agent.
fn stream_subresource(target: &Target) -> Option<Subresource> {
    let sub = Subresource::from_name(target.subresource.as_deref()?)?;
    (matches!(sub, Subresource::Log | Subresource::Exec)
        && target.resource.has(sub)
        && target.name.is_some())
    .then_some(sub)
}

/// Proxies a log or exec request to the pod's node agent.
async fn stream_request(
    state: &ApiState,
    parts: axum::http::request::Parts,
    query: &Query,
    target: &Target,
    sub: Subresource,
) -> Response {
    let (Some(namespace), Some(name)) = (target.namespace.as_deref(), target.name.as_deref())
    else {
        return status_response(&Status::path_not_found());
    };
    match sub {
        Subresource::Log if parts.method == Method::GET => {
            logs::serve(state, namespace, name, query).await
        }
        // GET for WebSocket; kubectl's SPDY fallback POSTs and gets a clear refusal.
        Subresource::Exec if parts.method == Method::GET || parts.method == Method::POST => {
            exec::serve(state, parts, namespace, name).await
        }
        _ => status_response(&Status::method_not_allowed(format!(
            "the server does not allow this method on the requested resource ({})",
            parts.method
        ))),
    }
}

fn aggregated_response(core: bool) -> Response {
    let body =
        serde_json::to_vec(&discovery::aggregated(core)).expect("a JSON value always serialises");
    bytes_response(
        StatusCode::OK,
        Bytes::from(body),
        discovery::AGGREGATED_CONTENT_TYPE,
        &[],
    )
}

/// The raw request body, refused with 413 past [`MAX_BODY_BYTES`].
async fn read_bytes(body: Body) -> Result<Bytes, Box<Status>> {
    match http_body_util::Limited::new(body, MAX_BODY_BYTES)
        .collect()
        .await
    {
        Ok(c) => Ok(c.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(Box::new(Status::too_large(format!(
                "the request body is larger than the limit of {MAX_BODY_BYTES} bytes"
            ))))
        }
        Err(e) => Err(Box::new(Status::bad_request(format!(
            "reading the request body failed: {e}"
        )))),
    }
}

/// The request body decoded by its content type, and that content type.
async fn read_body(headers: &HeaderMap, body: Body) -> Result<(Value, String), Box<Status>> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_string();
    let bytes = read_bytes(body).await?;
    let base = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_string();
    let value = match base.as_str() {
        "application/vnd.kubernetes.protobuf" => crate::protobuf::decode(&bytes).map_err(|e| {
            Box::new(Status::bad_request(format!(
                "decoding the protobuf body failed: {e}"
            )))
        })?,
        "application/yaml" | "application/apply-patch+yaml" => {
            serde_yaml::from_slice::<Value>(&bytes).map_err(|e| {
                Box::new(Status::bad_request(format!(
                    "the body is not valid YAML: {e}"
                )))
            })?
        }
        "application/json"
        | "application/json-patch+json"
        | "application/merge-patch+json"
        | "application/strategic-merge-patch+json"
        | "application/apply-patch+json"
        | "" => serde_json::from_slice::<Value>(&bytes).map_err(|e| {
            Box::new(Status::bad_request(format!(
                "the body is not valid JSON: {e}"
            )))
        })?,
        other => return Err(Box::new(Status::unsupported_media_type(other))),
    };
    Ok((value, base))
}

fn list_options(target: &Target, q: &Query) -> Result<ListOptions, Box<Status>> {
    let label_selector = LabelSelector::parse(q.get("labelSelector").map_or("", String::as_str))
        .map_err(|e| {
            Box::new(Status::bad_request(format!(
                "unable to parse requirement: {e}"
            )))
        })?;
    let field_selector = FieldSelector::parse(q.get("fieldSelector").map_or("", String::as_str))
        .map_err(|e| Box::new(Status::bad_request(e.to_string())))?;
    fields::check(target.resource, &field_selector)
        .map_err(|e| Box::new(Status::bad_request(e.to_string())))?;
    let limit = match q.get("limit") {
        Some(l) => l
            .parse::<i64>()
            .map_err(|_| Box::new(Status::bad_request(format!("invalid limit {l:?}"))))?,
        None => 0,
    };
    Ok(ListOptions {
        label_selector,
        field_selector,
        limit,
        continue_token: q.get("continue").cloned(),
        resource_version: q.get("resourceVersion").cloned(),
    })
}

fn write_options(q: &Query) -> Result<WriteOptions, Box<Status>> {
    Ok(WriteOptions {
        dry_run: q.get("dryRun").is_some_and(|v| v == "All"),
        field_validation: FieldValidation::parse(q.get("fieldValidation").map(String::as_str))?,
        field_manager: q.get("fieldManager").cloned(),
        force: q.get("force").is_some_and(|v| v == "true"),
    })
}

fn is_true(q: &Query, key: &str) -> bool {
    q.get(key).is_some_and(|v| v == "true" || v == "1")
}

async fn resource_request(
    state: &ApiState,
    method: Method,
    headers: &HeaderMap,
    q: &Query,
    target: Target,
    body: Body,
) -> Response {
    match dispatch(state, method, headers, q, target, body).await {
        Ok(resp) => resp,
        Err(status) => status_response(&status),
    }
}

/// Runs one resource request; every error is a `Status`.
async fn dispatch(
    state: &ApiState,
    method: Method,
    headers: &HeaderMap,
    q: &Query,
    target: Target,
    body: Body,
) -> Result<Response, Box<Status>> {
    let r = target.resource;
    if r.namespaced() && target.namespace.is_none() && target.name.is_some() {
        return Err(Box::new(Status::path_not_found()));
    }
    let ns = target.namespace.as_deref();
    let sub = match target.subresource.as_deref() {
        None => None,
        Some("finalize") if r.kind == "Namespace" => Some(Subresource::Status),
        Some(s) => Some(
            Subresource::from_name(s)
                .filter(|s| r.has(*s))
                .ok_or_else(|| Box::new(Status::path_not_found()))?,
        ),
    };
    let reg = &state.registry;
    let resp = match (method, target.name.as_deref(), sub) {
        (Method::GET, None, None) => {
            let opts = list_options(&target, q)?;
            if is_true(q, "watch") {
                return Ok(watch::serve(reg, r, ns, &opts, q, wants_table(headers)).await);
            }
            let list = reg.list(r, ns, &opts).await?;
            if wants_table(headers) {
                table::list_response(r, &list, q)
            } else {
                list_json(r, &list)
            }
        }
        (Method::POST, None, None) => {
            let (body, _) = read_body(headers, body).await?;
            let w = reg.create(r, ns, body, &write_options(q)?).await?;
            json_response(StatusCode::CREATED, &w.object, &w.warnings)
        }
        (Method::DELETE, None, None) => delete_collection(reg, r, ns, q).await?,
        (Method::GET, Some(name), None | Some(Subresource::Status)) => {
            let obj = reg.get(r, ns, name).await?;
            if wants_table(headers) {
                table::object_response(r, obj, q)
            } else {
                json_response(StatusCode::OK, &obj, &[])
            }
        }
        (Method::GET, Some(name), Some(Subresource::Scale)) => json_response(
            StatusCode::OK,
            &scale_of(r, &reg.get(r, ns, name).await?),
            &[],
        ),
        (Method::PUT | Method::PATCH, Some(name), Some(Subresource::Scale)) => {
            scale_write(reg, r, ns, name, headers, q, body).await?
        }
        (Method::PUT, Some(name), None | Some(Subresource::Status)) => {
            let (body, _) = read_body(headers, body).await?;
            let w = reg
                .update(r, ns, name, body, sub, &write_options(q)?)
                .await?;
            json_response(StatusCode::OK, &w.object, &w.warnings)
        }
        (Method::PATCH, Some(name), None | Some(Subresource::Status)) => {
            let (patch_body, ct) = read_body(headers, body).await?;
            let patch_type = PatchType::from_content_type(&ct)
                .ok_or_else(|| Box::new(Status::unsupported_media_type(&ct)))?;
            let w = reg
                .patch(r, ns, name, patch_type, patch_body, sub, &write_options(q)?)
                .await?;
            let code = if w.created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            json_response(code, &w.object, &w.warnings)
        }
        (Method::DELETE, Some(name), None) => {
            let opts = delete_options(q, body).await?;
            let (obj, _) = reg.delete(r, ns, name, &opts).await?;
            json_response(StatusCode::OK, &obj, &[])
        }
        (Method::POST, Some(name), Some(Subresource::Binding)) => {
            let (binding, _) = read_body(headers, body).await?;
            reg.bind(ns.unwrap_or("default"), name, &binding).await?;
            json_response(StatusCode::CREATED, &Status::success(None).to_json(), &[])
        }
        (Method::POST, Some(name), Some(Subresource::Eviction)) => {
            let (eviction, _) = read_body(headers, body).await?;
            eviction::serve(reg, r, ns.unwrap_or("default"), name, &eviction, q).await?
        }
        (m, _, _) => {
            return Err(Box::new(Status::method_not_allowed(format!(
                "the server does not allow this method on the requested resource ({m})"
            ))))
        }
    };
    Ok(resp)
}

async fn delete_options(q: &Query, body: Body) -> Result<DeleteOptions, Box<Status>> {
    let bytes = read_bytes(body).await?;
    let mut opts: DeleteOptions = if bytes.is_empty() {
        DeleteOptions::default()
    } else {
        serde_json::from_slice(&bytes)
            .map_err(|e| Box::new(Status::bad_request(format!("invalid DeleteOptions: {e}"))))?
    };
    if let Some(g) = q.get("gracePeriodSeconds") {
        let grace = g.parse().map_err(|_| {
            Box::new(Status::bad_request(format!(
                "invalid gracePeriodSeconds {g:?}"
            )))
        })?;
        opts.grace_period_seconds = Some(grace);
    }
    if let Some(p) = q.get("propagationPolicy") {
        opts.propagation_policy = Some(p.clone());
    }
    if q.get("dryRun").is_some_and(|v| v == "All") {
        opts.dry_run = vec!["All".into()];
    }
    Ok(opts)
}

async fn delete_collection(
    reg: &Registry,
    r: &'static Resource,
    ns: Option<&str>,
    q: &Query,
) -> Result<Response, Box<Status>> {
    let target = Target {
        resource: r,
        namespace: ns.map(String::from),
        name: None,
        subresource: None,
    };
    let list = reg.list(r, ns, &list_options(&target, q)?).await?;
    let mut items = Vec::new();
    for o in &list.items {
        let ns = r.namespaced().then_some(o.namespace.as_str());
        match reg.delete(r, ns, &o.name, &DeleteOptions::default()).await {
            Ok((obj, _)) => items.push(obj),
            Err(s) if s.code == 404 => {}
            Err(s) => return Err(s),
        }
    }
    let body = json!({"kind": r.list_kind(), "apiVersion": r.api_version(), "metadata": {}, "items": items});
    Ok(json_response(StatusCode::OK, &body, &[]))
}

/// The JSON of a list, assembled from each object's cached serialisation.
fn list_json(r: &Resource, list: &crate::registry::ListResult) -> Response {
    let mut meta = json!({"resourceVersion": list.resource_version.to_string()});
    if let Some(c) = &list.continue_token {
        meta["continue"] = json!(c);
    }
    let head = format!(
        "{{\"kind\":\"{}\",\"apiVersion\":\"{}\",\"metadata\":{},\"items\":[",
        r.list_kind(),
        r.api_version(),
        meta
    );
    let mut out = Vec::with_capacity(
        head.len() + list.items.iter().map(|o| o.json.len() + 1).sum::<usize>() + 2,
    );
    out.extend_from_slice(head.as_bytes());
    for (i, o) in list.items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&o.json);
    }
    out.extend_from_slice(b"]}");
    bytes_response(StatusCode::OK, Bytes::from(out), "application/json", &[])
}

/// The `autoscaling/v1` Scale of a workload.
fn scale_of(r: &Resource, obj: &Value) -> Value {
    let selector = obj["spec"]["selector"].clone();
    let selector_text = serde_json::from_value::<
        k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
    >(selector)
    .ok()
    .and_then(|s| LabelSelector::from_k8s(&s).ok())
    .map(|s| s.to_string())
    .unwrap_or_default();
    let meta = &obj["metadata"];
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": meta["name"], "namespace": meta["namespace"], "uid": meta["uid"],
            "resourceVersion": meta["resourceVersion"], "creationTimestamp": meta["creationTimestamp"],
        },
        "spec": {"replicas": obj["spec"]["replicas"].as_i64().unwrap_or(if r.kind == "StatefulSet" || r.kind == "Deployment" || r.kind == "ReplicaSet" { 1 } else { 0 })},
        "status": {"replicas": obj["status"]["replicas"].as_i64().unwrap_or(0), "selector": selector_text},
    })
}

async fn scale_write(
    reg: &Registry,
    r: &'static Resource,
    ns: Option<&str>,
    name: &str,
    headers: &HeaderMap,
    q: &Query,
    body: Body,
) -> Result<Response, Box<Status>> {
    let (input, ct) = read_body(headers, body).await?;
    let opts = write_options(q)?;
    for _attempt in 0..16 {
        let current = reg.read(r, ns, name).await?;
        let scale = scale_of(r, &current.value);
        let new_scale = match PatchType::from_content_type(&ct) {
            None => Ok(input.clone()),
            Some(PatchType::Json) => rkube_api::patch::json_patch(&scale, &input),
            Some(PatchType::Merge | PatchType::StrategicMerge | PatchType::Apply) => {
                rkube_api::patch::merge_patch(&scale, &input)
            }
        }
        .map_err(|e| Box::new(Status::bad_request(e.to_string())))?;
        let precondition = object::resource_version(&new_scale);
        if precondition.is_some_and(|rv| rv != current.mod_revision.to_string()) {
            return Err(Box::new(Status::conflict(r.group, r.plural, name)));
        }
        let Some(replicas) = new_scale["spec"]["replicas"].as_i64() else {
            let missing = FieldError::required("spec.replicas", "");
            return Err(Box::new(Status::invalid(
                "autoscaling",
                "Scale",
                name,
                &[missing],
            )));
        };
        let mut obj = current.value.clone();
        obj["spec"]["replicas"] = json!(replicas);
        match reg
            .write_update(r, ns, name, current, obj, None, &opts)
            .await
        {
            Ok(w) => return Ok(json_response(StatusCode::OK, &scale_of(r, &w.object), &[])),
            // Someone else wrote in between: scale the newer object, unless the client
            // named the version it scaled.
            Err(s) if s.code == 409 && s.reason == "Conflict" && precondition.is_none() => continue,
            Err(s) => return Err(s),
        }
    }
    Err(Box::new(Status::conflict(r.group, r.plural, name)))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct DenyDeletes;

    impl Authorizer for DenyDeletes {
        fn authorize(&self, _user: &UserInfo, attrs: &RequestAttributes) -> Decision {
            if attrs.verb == "delete" {
                Decision::Deny("deletes are off".into())
            } else {
                Decision::Allow
            }
        }
    }

    fn target(path: &str) -> Target {
        match path::parse(path) {
            Route::Resource(t) => t,
            other => panic!("{path} is not a resource path: {other:?}"),
        }
    }

    #[test]
    fn requests_map_to_kubernetes_verbs() {
        let watch: Query = [("watch".to_string(), "true".to_string())].into();
        let none = Query::new();
        let cases = [
            (Method::GET, "/api/v1/namespaces/d/pods", &none, "list"),
            (Method::GET, "/api/v1/namespaces/d/pods", &watch, "watch"),
            (Method::GET, "/api/v1/namespaces/d/pods/p", &none, "get"),
            (Method::POST, "/api/v1/namespaces/d/pods", &none, "create"),
            (
                Method::PUT,
                "/api/v1/namespaces/d/pods/p/status",
                &none,
                "update",
            ),
            (
                Method::PATCH,
                "/apis/apps/v1/namespaces/d/deployments/x/scale",
                &none,
                "patch",
            ),
            (
                Method::DELETE,
                "/api/v1/namespaces/d/pods/p",
                &none,
                "delete",
            ),
            (
                Method::DELETE,
                "/api/v1/namespaces/d/pods",
                &none,
                "deletecollection",
            ),
            // kubectl's WebSocket exec is a GET, its SPDY fallback a POST: both create.
            (
                Method::GET,
                "/api/v1/namespaces/d/pods/p/exec",
                &none,
                "create",
            ),
            (
                Method::POST,
                "/api/v1/namespaces/d/pods/p/exec",
                &none,
                "create",
            ),
            (Method::GET, "/api/v1/namespaces/d/pods/p/log", &none, "get"),
        ];
        for (method, path, q, verb) in cases {
            let attrs = request_attributes(&method, &target(path), q, path);
            assert_eq!(attrs.verb, verb, "{method} {path}");
            assert_eq!(attrs.namespace, "d", "{path}");
        }
        let scale = request_attributes(
            &Method::PATCH,
            &target("/apis/apps/v1/namespaces/d/deployments/x/scale"),
            &none,
            "",
        );
        assert_eq!(
            (
                scale.group.as_str(),
                scale.resource.as_str(),
                scale.subresource.as_str(),
                scale.name.as_str()
            ),
            ("apps", "deployments", "scale", "x")
        );
    }

    #[test]
    fn refusals_are_forbidden_statuses() {
        let user = UserInfo {
            name: "alice".into(),
            uid: String::new(),
            groups: vec![],
        };
        let path = "/api/v1/namespaces/d/pods/p";
        let get = request_attributes(&Method::GET, &target(path), &Query::new(), path);
        assert!(authorize(&DenyDeletes, &user, &get).is_ok());
        let delete = request_attributes(&Method::DELETE, &target(path), &Query::new(), path);
        let status = authorize(&DenyDeletes, &user, &delete).expect_err("refused");
        assert_eq!(status.code, 403);
        assert_eq!(
            status.message,
            "pods \"p\" is forbidden: User \"alice\" cannot delete resource \"pods\" in API group \"\" in the namespace \"d\": deletes are off"
        );
    }
}
