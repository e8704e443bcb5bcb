//! Typed decoding of untyped objects: every object is read through its k8s-openapi type
//! before it is stored, so what reaches storage has Kubernetes' shape.
//!
//! [`decode`] returns the canonical JSON (typed round trip) and the fields the type does
//! not know, which the apiserver rejects (`fieldValidation=Strict`), reports as warnings
//! (`Warn`) or drops (`Ignore`).

use k8s_openapi::api::{apps::v1 as apps, coordination::v1 as coordination, core::v1 as core};
use serde::{de::DeserializeOwned, Serialize};
use serde_json::Value;

use crate::resource::Resource;

/// Why an object could not be decoded as its kind.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// The JSON does not fit the type, e.g. a string where a number belongs.
    #[error("{kind} in version \"{version}\" cannot be handled as a {kind}: {detail}")]
    Malformed {
        kind: String,
        version: String,
        detail: String,
    },
    /// The resource table names a kind this module cannot decode.
    #[error("no decoder for kind {0}")]
    UnknownKind(String),
}

/// The result of [`decode`].
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    /// The object after a typed round trip: unknown fields are gone.
    pub object: Value,
    /// Paths of fields in the input that the type does not know, e.g. `spec.foo`.
    pub unknown_fields: Vec<String>,
}

/// Decodes `input` as the kind of `resource` (setting `apiVersion` and `kind`).
///
/// # Errors
/// [`Error::Malformed`] when a field has the wrong JSON type.
pub fn decode(resource: &Resource, mut input: Value) -> Result<Decoded, Error> {
    crate::object::set_type_meta(&mut input, &resource.api_version(), resource.kind);
    let object = roundtrip(resource, &input)?;
    let mut unknown_fields = Vec::new();
    collect_unknown(&input, &object, String::new(), &mut unknown_fields);
    Ok(Decoded {
        object,
        unknown_fields,
    })
}

/// Decodes an object as its typed form `T`, e.g. to validate it.
///
/// # Errors
/// [`Error::Malformed`] when a field has the wrong JSON type.
pub fn typed<T: DeserializeOwned>(resource: &Resource, value: &Value) -> Result<T, Error> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        Error::Malformed {
            kind: resource.kind.into(),
            version: resource.version.into(),
            detail: if path == "." || path.is_empty() {
                inner.to_string()
            } else {
                format!("field {path}: {inner}")
            },
        }
    })
}

fn through<T: DeserializeOwned + Serialize>(
    resource: &Resource,
    value: &Value,
) -> Result<Value, Error> {
    let typed: T = typed(resource, value)?;
    Ok(serde_json::to_value(typed).expect("k8s-openapi types always serialise"))
}

fn roundtrip(resource: &Resource, value: &Value) -> Result<Value, Error> {
    match (resource.group, resource.kind) {
        ("", "Namespace") => through::<core::Namespace>(resource, value),
        ("", "Node") => through::<core::Node>(resource, value),
        ("", "Pod") => through::<core::Pod>(resource, value),
        ("", "Service") => through::<core::Service>(resource, value),
        ("", "Endpoints") => through::<core::Endpoints>(resource, value),
        ("", "ConfigMap") => through::<core::ConfigMap>(resource, value),
        ("", "Secret") => through::<core::Secret>(resource, value),
        ("", "Event") => through::<core::Event>(resource, value),
        ("apps", "Deployment") => through::<apps::Deployment>(resource, value),
        ("apps", "ReplicaSet") => through::<apps::ReplicaSet>(resource, value),
        ("apps", "DaemonSet") => through::<apps::DaemonSet>(resource, value),
        ("apps", "StatefulSet") => through::<apps::StatefulSet>(resource, value),
        ("coordination.k8s.io", "Lease") => through::<coordination::Lease>(resource, value),
        (_, kind) => Err(Error::UnknownKind(kind.into())),
    }
}

/// Records every path present (and not null) in `input` but absent from `output`.
fn collect_unknown(input: &Value, output: &Value, path: String, out: &mut Vec<String>) {
    match (input, output) {
        (Value::Object(inp), Value::Object(outp)) => {
            for (key, value) in inp {
                let child = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                match outp.get(key) {
                    Some(o) => collect_unknown(value, o, child, out),
                    None if value.is_null() => {}
                    None => out.push(child),
                }
            }
        }
        (Value::Array(inp), Value::Array(outp)) => {
            for (i, (a, b)) in inp.iter().zip(outp).enumerate() {
                collect_unknown(a, b, format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::find;
    use serde_json::json;

    #[test]
    fn decode_finds_unknown_fields() {
        let deploy = find("apps", "v1", "deployments").expect("deployments");
        let input = json!({
            "metadata": {"name": "d", "bogus": 1, "labels": null},
            "spec": {"selector": {"matchLabels": {"a": "b"}}, "foo": true,
                "template": {"metadata": {"labels": {"a": "b"}},
                    "spec": {"containers": [{"name": "c", "image": "i", "colour": "red"}]}}}
        });
        let decoded = decode(deploy, input).expect("decodes");
        assert_eq!(
            decoded.unknown_fields,
            vec![
                "metadata.bogus",
                "spec.foo",
                "spec.template.spec.containers[0].colour"
            ]
        );
        assert_eq!(decoded.object["kind"], "Deployment");
        assert_eq!(decoded.object["apiVersion"], "apps/v1");
        assert!(decoded.object["spec"].get("foo").is_none());
    }

    #[test]
    fn decode_names_the_mistyped_field() {
        let deploy = find("apps", "v1", "deployments").expect("deployments");
        let err = decode(
            deploy,
            json!({"metadata": {"name": "d"}, "spec": {"replicas": "three"}}),
        )
        .expect_err("replicas is a number");
        let msg = err.to_string();
        assert!(
            msg.starts_with("Deployment in version \"v1\" cannot be handled as a Deployment"),
            "{msg}"
        );
        assert!(msg.contains("spec.replicas"), "{msg}");
    }

    #[test]
    fn every_kind_decodes() {
        for r in crate::resource::RESOURCES {
            decode(r, json!({"metadata": {"name": "x"}}))
                .unwrap_or_else(|e| panic!("{}: {e}", r.kind));
        }
    }
}
