//! Reading and writing the metadata of untyped objects (`serde_json::Value`).
//!
//! Generic code (storage, REST, gRPC) handles every kind as JSON; these accessors keep
//! the `metadata` plumbing in one place. Missing or mistyped fields read as absent.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

/// The object's `metadata` map, created if absent.
pub fn metadata_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.is_object() {
        *obj = Value::Object(Map::new());
    }
    let map = obj.as_object_mut().expect("made an object above");
    let meta = map
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    if !meta.is_object() {
        *meta = Value::Object(Map::new());
    }
    meta.as_object_mut().expect("made an object above")
}

/// A string field of `metadata`.
pub fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata")?.get(field)?.as_str()
}

/// Sets (or, with `None`, removes) a string field of `metadata`.
pub fn set_meta_str(obj: &mut Value, field: &str, value: Option<&str>) {
    let meta = metadata_mut(obj);
    match value {
        Some(v) => {
            meta.insert(field.into(), Value::String(v.into()));
        }
        None => {
            meta.remove(field);
        }
    }
}

pub fn name(obj: &Value) -> Option<&str> {
    meta_str(obj, "name")
}

pub fn namespace(obj: &Value) -> Option<&str> {
    meta_str(obj, "namespace")
}

pub fn resource_version(obj: &Value) -> Option<&str> {
    meta_str(obj, "resourceVersion").filter(|s| !s.is_empty())
}

pub fn uid(obj: &Value) -> Option<&str> {
    meta_str(obj, "uid").filter(|s| !s.is_empty())
}

pub fn deletion_timestamp(obj: &Value) -> Option<&str> {
    meta_str(obj, "deletionTimestamp")
}

/// `metadata.labels` (or `metadata.annotations`, …) as a sorted map of strings.
pub fn string_map(obj: &Value, field: &str) -> BTreeMap<String, String> {
    obj.get("metadata")
        .and_then(|m| m.get(field))
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

pub fn labels(obj: &Value) -> BTreeMap<String, String> {
    string_map(obj, "labels")
}

pub fn annotations(obj: &Value) -> BTreeMap<String, String> {
    string_map(obj, "annotations")
}

/// `metadata.finalizers`.
pub fn finalizers(obj: &Value) -> Vec<String> {
    obj.get("metadata")
        .and_then(|m| m.get("finalizers"))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// Sets `apiVersion` and `kind` at the top of the object.
pub fn set_type_meta(obj: &mut Value, api_version: &str, kind: &str) {
    if let Some(map) = obj.as_object_mut() {
        map.insert("apiVersion".into(), Value::String(api_version.into()));
        map.insert("kind".into(), Value::String(kind.into()));
    }
}

/// The object without `status`, `metadata` and type fields: what a change of
/// `generation` is decided on.
pub fn spec_part(obj: &Value) -> Value {
    match obj {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(k, _)| {
                    !matches!(k.as_str(), "status" | "metadata" | "apiVersion" | "kind")
                })
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn accessors_read_and_write_metadata() {
        let mut obj = json!({"metadata": {"name": "a", "labels": {"x": "1"}, "finalizers": ["f"]}});
        assert_eq!(name(&obj), Some("a"));
        assert_eq!(namespace(&obj), None);
        set_meta_str(&mut obj, "namespace", Some("ns"));
        assert_eq!(namespace(&obj), Some("ns"));
        assert_eq!(labels(&obj).get("x").map(String::as_str), Some("1"));
        assert_eq!(finalizers(&obj), vec!["f".to_string()]);
        set_meta_str(&mut obj, "namespace", None);
        assert_eq!(namespace(&obj), None);
        let mut not_object = json!(3);
        set_meta_str(&mut not_object, "name", Some("b"));
        assert_eq!(name(&not_object), Some("b"));
    }

    #[test]
    fn spec_part_drops_metadata_and_status() {
        let obj = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {}, "spec": {"a": 1}, "status": {"b": 2}});
        assert_eq!(spec_part(&obj), json!({"spec": {"a": 1}}));
    }
}
