//! The `kubectl.kubernetes.io/last-applied-configuration` annotation: what `apply` stores
//! on an object so that the next `apply` knows which fields it set.
//!
//! The value is the manifest as kubectl sends it (`metadata.namespace` filled in for
//! namespaced kinds, `metadata.annotations` present) without the annotation itself,
//! encoded the way Go's `encoding/json` encodes it — keys sorted, no spaces, `<`, `>` and
//! `&` escaped, a final newline — so that `kubectl apply` and `rkubectl apply` store the
//! same bytes and each sees the other's apply of the same file as `unchanged`.

use serde_json::{Map, Value};

/// The annotation's key.
pub const ANNOTATION: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Why a manifest or a live object does not fit the annotation's format.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// `metadata` or `metadata.annotations` holds something other than a map.
    #[error("{field} must be a map")]
    NotAMap { field: &'static str },

    /// The live object's annotation does not hold a JSON object.
    #[error("the {ANNOTATION} annotation does not hold a JSON object")]
    InvalidAnnotation,
}

/// The result type of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The configuration `apply` sends: `manifest` with `metadata.namespace` set to
/// `namespace` (for namespaced kinds, when the manifest has none) and the last-applied
/// annotation holding the manifest itself.
///
/// # Errors
/// When `metadata` or `metadata.annotations` is not a map.
pub fn modified(manifest: &Value, namespace: Option<&str>) -> Result<Value> {
    let mut object = manifest.clone();
    let Value::Object(root) = &mut object else {
        return Err(Error::NotAMap {
            field: "the object",
        });
    };
    let metadata = map_at(root, "metadata", "metadata")?;
    if let Some(namespace) = namespace {
        if metadata
            .get("namespace")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            metadata.insert("namespace".into(), Value::from(namespace));
        }
    }
    map_at(metadata, "annotations", "metadata.annotations")?.remove(ANNOTATION);
    let last_applied = go_json(&object);
    if let Some(annotations) = object
        .pointer_mut("/metadata/annotations")
        .and_then(Value::as_object_mut)
    {
        annotations.insert(ANNOTATION.into(), Value::from(last_applied));
    }
    Ok(object)
}

/// The configuration the previous `apply` stored on `live`; `None` when the object has
/// no annotation (it was not made by `apply`).
///
/// # Errors
/// When the annotation is not a JSON object.
pub fn original(live: &Value) -> Result<Option<Value>> {
    let Some(text) = live["metadata"]["annotations"][ANNOTATION].as_str() else {
        return Ok(None);
    };
    match serde_json::from_str::<Value>(text) {
        Ok(value @ Value::Object(_)) => Ok(Some(value)),
        _ => Err(Error::InvalidAnnotation),
    }
}

/// The map in `key`, made `{}` when absent or null.
fn map_at<'m>(
    map: &'m mut Map<String, Value>,
    key: &str,
    field: &'static str,
) -> Result<&'m mut Map<String, Value>> {
    let slot = map.entry(key).or_insert_with(|| Value::Object(Map::new()));
    if slot.is_null() {
        *slot = Value::Object(Map::new());
    }
    slot.as_object_mut().ok_or(Error::NotAMap { field })
}

/// `value` as Go's `json.Encoder` writes a decoded object: keys sorted, compact, HTML
/// characters and the JavaScript line separators escaped, integral floats written as
/// integers (YAML `1.0` decodes to an integer in kubectl), and a final newline.
pub fn go_json(value: &Value) -> String {
    let text = serde_json::to_string(&canonical(value)).expect("a JSON value always serializes");
    let mut out = String::with_capacity(text.len() + 1);
    // These characters only occur inside strings, where Go writes them escaped.
    for c in text.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out.push('\n');
    out
}

/// A copy of `value` whose maps are built in sorted key order (whatever the map type
/// keeps) and whose integral floats are integers.
fn canonical(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            Value::Object(
                keys.into_iter()
                    .map(|k| (k.clone(), canonical(&map[k])))
                    .collect(),
            )
        }
        Value::Array(list) => Value::Array(list.iter().map(canonical).collect()),
        Value::Number(n) if n.is_f64() => match n.as_f64() {
            // i64 holds every integral float below 2^63 exactly.
            Some(f) if f.fract() == 0.0 && f.abs() < 9.0e18 => Value::from(f as i64),
            _ => value.clone(),
        },
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn go_json_sorts_escapes_and_ends_with_a_newline() {
        let cases = [
            (
                "sorted",
                json!({"b": 1, "a": {"d": 2, "c": 3}}),
                "{\"a\":{\"c\":3,\"d\":2},\"b\":1}\n",
            ),
            (
                "html escaped",
                json!({"cmd": "echo ok > /f && cat <x"}),
                "{\"cmd\":\"echo ok \\u003e /f \\u0026\\u0026 cat \\u003cx\"}\n",
            ),
            (
                "integral float",
                json!({"x": 1.0, "y": 0.5}),
                "{\"x\":1,\"y\":0.5}\n",
            ),
            ("quotes", json!({"q": "a\"b\n"}), "{\"q\":\"a\\\"b\\n\"}\n"),
        ];
        for (name, input, want) in cases {
            assert_eq!(go_json(&input), want, "{name}");
        }
    }

    #[test]
    fn modified_adds_namespace_empty_annotations_and_itself() {
        let manifest = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "c"}, "data": {"k": "v"}});
        let got = modified(&manifest, Some("default")).expect("valid manifest");
        let want_annotation =
            "{\"apiVersion\":\"v1\",\"data\":{\"k\":\"v\"},\"kind\":\"ConfigMap\",\
            \"metadata\":{\"annotations\":{},\"name\":\"c\",\"namespace\":\"default\"}}\n";
        assert_eq!(got["metadata"]["annotations"][ANNOTATION], want_annotation);
        assert_eq!(got["metadata"]["namespace"], "default");
        assert_eq!(got["data"], json!({"k": "v"}));
        let back = original(&got)
            .expect("valid annotation")
            .expect("annotated");
        let mut want = manifest.clone();
        want["metadata"]["namespace"] = json!("default");
        want["metadata"]["annotations"] = json!({});
        assert_eq!(back, want);
    }

    #[test]
    fn modified_keeps_other_annotations_and_replaces_a_stale_one() {
        let manifest = json!({"kind": "Namespace", "metadata": {"name": "n",
            "annotations": {"team": "a", ANNOTATION: "stale"}}});
        let got = modified(&manifest, None).expect("valid manifest");
        assert_eq!(
            got["metadata"]["annotations"][ANNOTATION],
            "{\"kind\":\"Namespace\",\"metadata\":{\"annotations\":{\"team\":\"a\"},\"name\":\"n\"}}\n"
        );
        assert_eq!(got["metadata"]["annotations"]["team"], "a");
        assert!(got["metadata"].get("namespace").is_none());
    }

    #[test]
    fn modified_keeps_an_explicit_namespace() {
        let manifest =
            json!({"kind": "ConfigMap", "metadata": {"name": "c", "namespace": "other"}});
        let got = modified(&manifest, Some("default")).expect("valid manifest");
        assert_eq!(got["metadata"]["namespace"], "other");
    }

    #[test]
    fn bad_shapes_are_errors() {
        assert_eq!(
            modified(&json!({"metadata": {"annotations": ["x"]}}), None),
            Err(Error::NotAMap {
                field: "metadata.annotations"
            })
        );
        assert_eq!(
            modified(&json!({"metadata": "x"}), None),
            Err(Error::NotAMap { field: "metadata" })
        );
        let live = json!({"metadata": {"annotations": {ANNOTATION: "not json"}}});
        assert_eq!(original(&live), Err(Error::InvalidAnnotation));
        assert_eq!(original(&json!({"metadata": {}})), Ok(None));
    }
}
