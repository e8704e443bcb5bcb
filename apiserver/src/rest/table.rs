//! Server-side `Table` responses (what `kubectl get` prints), built from the per-kind
//! columns in `rkube_api::table`.

use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{json, Value};

use rkube_api::{table, Resource};

use super::{json_response, Query};
use crate::registry::ListResult;

/// A row's `object`: `PartialObjectMetadata` by default, the object with
/// `includeObject=Object`, nothing with `includeObject=None`.
fn row_object(obj: &Value, q: &Query) -> Option<Value> {
    match q.get("includeObject").map(String::as_str) {
        Some("None") => None,
        Some("Object") => Some(obj.clone()),
        _ => Some(json!({
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": obj.get("metadata").cloned().unwrap_or_else(|| json!({})),
        })),
    }
}

/// One row.
pub fn row(r: &Resource, obj: &Value, q: &Query, now: jiff::Timestamp) -> Value {
    let mut row = json!({"cells": table::row_cells(r, obj, now)});
    if let Some(o) = row_object(obj, q) {
        row["object"] = o;
    }
    row
}

/// A Table with the given rows; `headers` false leaves the column definitions out (later
/// events of a watch).
pub fn table(
    r: &Resource,
    rows: Vec<Value>,
    resource_version: Option<String>,
    continue_token: Option<&str>,
    headers: bool,
) -> Value {
    let mut meta = json!({});
    if let Some(rv) = resource_version {
        meta["resourceVersion"] = json!(rv);
    }
    if let Some(c) = continue_token {
        meta["continue"] = json!(c);
    }
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": meta,
        "columnDefinitions": if headers { table::column_definitions(r) } else { Value::Null },
        "rows": rows,
    })
}

pub fn list_response(r: &Resource, list: &ListResult, q: &Query) -> Response {
    let now = jiff::Timestamp::now();
    let rows = list
        .items
        .iter()
        .map(|o| row(r, &o.value, q, now))
        .collect();
    let body = table(
        r,
        rows,
        Some(list.resource_version.to_string()),
        list.continue_token.as_deref(),
        true,
    );
    json_response(StatusCode::OK, &body, &[])
}

pub fn object_response(r: &Resource, obj: Value, q: &Query) -> Response {
    let rv = rkube_api::object::resource_version(&obj).map(String::from);
    let body = table(
        r,
        vec![row(r, &obj, q, jiff::Timestamp::now())],
        rv,
        None,
        true,
    );
    json_response(StatusCode::OK, &body, &[])
}
