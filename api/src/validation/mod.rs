//! Kubernetes validation rules for every kind, reported as field errors.
//!
//! [`validate`] is the entry point: it decodes the object as its k8s-openapi type and
//! runs the rules of its kind, collecting one [`FieldError`] per bad field, with
//! Kubernetes' paths and messages (kubectl prints them as `* <field>: <message>`).
//! The string checks shared by every kind live in [`names`], metadata rules in [`meta`],
//! and [`quantity`] parses resource quantities (the scheduler reuses it).

mod apps;
mod config;
mod event;
mod lease;
pub mod meta;
pub mod names;
mod namespace;
mod node;
mod pod;
pub mod quantity;
mod render;
mod service;

use std::fmt;

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::resource::Resource;
use crate::status::StatusCause;

pub use render::BadValue;

/// What is wrong with a field (Kubernetes' `field.ErrorType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorType {
    Invalid,
    Required,
    NotSupported,
    Duplicate,
    Forbidden,
    TooLong,
    TooMany,
    /// A reference to something that does not exist (e.g. a volume mount's volume).
    NotFound,
}

impl ErrorType {
    /// The `StatusCause.reason` (Kubernetes' `CauseType`).
    pub fn reason(self) -> &'static str {
        match self {
            ErrorType::Invalid => "FieldValueInvalid",
            ErrorType::Required => "FieldValueRequired",
            ErrorType::NotSupported => "FieldValueNotSupported",
            ErrorType::Duplicate => "FieldValueDuplicate",
            ErrorType::Forbidden => "FieldValueForbidden",
            ErrorType::TooLong => "FieldValueTooLong",
            ErrorType::TooMany => "FieldValueTooMany",
            ErrorType::NotFound => "FieldValueNotFound",
        }
    }

    /// The words that open the message, e.g. `Invalid value`.
    pub fn label(self) -> &'static str {
        match self {
            ErrorType::Invalid => "Invalid value",
            ErrorType::Required => "Required value",
            ErrorType::NotSupported => "Unsupported value",
            ErrorType::Duplicate => "Duplicate value",
            ErrorType::Forbidden => "Forbidden",
            ErrorType::TooLong => "Too long",
            ErrorType::TooMany => "Too many",
            ErrorType::NotFound => "Not found",
        }
    }
}

/// One bad field, e.g. `spec.replicas: Invalid value: -1: must be greater than or equal to 0`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub kind: ErrorType,
    /// The field path, e.g. `spec.template.spec.containers[0].name`.
    pub field: String,
    /// The bad value, rendered as Kubernetes does (strings quoted).
    pub value: Option<String>,
    pub detail: String,
}

impl FieldError {
    fn new(
        kind: ErrorType,
        field: impl fmt::Display,
        value: Option<String>,
        detail: impl Into<String>,
    ) -> Self {
        FieldError {
            kind,
            field: field.to_string(),
            value,
            detail: detail.into(),
        }
    }

    /// A malformed value: `<field>: Invalid value: <value>: <detail>`.
    pub fn invalid(
        field: impl fmt::Display,
        value: impl BadValue,
        detail: impl Into<String>,
    ) -> Self {
        Self::new(ErrorType::Invalid, field, Some(value.render()), detail)
    }

    /// A missing value: `<field>: Required value[: <detail>]`.
    pub fn required(field: impl fmt::Display, detail: impl Into<String>) -> Self {
        Self::new(ErrorType::Required, field, None, detail)
    }

    /// A value outside an enumeration: `Unsupported value: "X": supported values: "A", "B"`.
    pub fn not_supported(
        field: impl fmt::Display,
        value: impl BadValue,
        supported: &[&str],
    ) -> Self {
        let detail = if supported.is_empty() {
            String::new()
        } else {
            let quoted: Vec<String> = supported.iter().map(|s| render::quote(s)).collect();
            format!("supported values: {}", quoted.join(", "))
        };
        Self::new(ErrorType::NotSupported, field, Some(value.render()), detail)
    }

    /// A value that must be unique: `<field>: Duplicate value: "web"`.
    pub fn duplicate(field: impl fmt::Display, value: impl BadValue) -> Self {
        Self::new(ErrorType::Duplicate, field, Some(value.render()), "")
    }

    /// A valid value that is not allowed here: `<field>: Forbidden: <detail>`.
    pub fn forbidden(field: impl fmt::Display, detail: impl Into<String>) -> Self {
        Self::new(ErrorType::Forbidden, field, None, detail)
    }

    /// A value longer than `max` bytes: `<field>: Too long: must have at most <max> bytes`.
    pub fn too_long(field: impl fmt::Display, max: usize) -> Self {
        Self::new(
            ErrorType::TooLong,
            field,
            None,
            format!("must have at most {max} bytes"),
        )
    }

    /// A list with more than `max` items: `<field>: Too many: <actual>: must have at most <max> items`.
    pub fn too_many(field: impl fmt::Display, actual: usize, max: usize) -> Self {
        Self::new(
            ErrorType::TooMany,
            field,
            Some(actual.to_string()),
            format!("must have at most {max} items"),
        )
    }

    /// A reference to something missing: `<field>: Not found: "x"`.
    pub fn not_found(field: impl fmt::Display, value: impl BadValue) -> Self {
        Self::new(ErrorType::NotFound, field, Some(value.render()), "")
    }

    /// The message without the field, as in `StatusCause.message`:
    /// `Invalid value: -1: must be greater than or equal to 0`.
    pub fn body(&self) -> String {
        let mut s = self.kind.label().to_string();
        let shows_value = !matches!(
            self.kind,
            ErrorType::Required | ErrorType::Forbidden | ErrorType::TooLong
        );
        if let (true, Some(value)) = (shows_value, &self.value) {
            s.push_str(": ");
            s.push_str(value);
        }
        if !self.detail.is_empty() {
            s.push_str(": ");
            s.push_str(&self.detail);
        }
        s
    }

    /// The `Status` cause for this error.
    pub fn to_cause(&self) -> StatusCause {
        StatusCause {
            reason: self.kind.reason().into(),
            message: self.body(),
            field: self.field.clone(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.body())
    }
}

/// A field path under construction, e.g. `spec.containers[0].ports[1].name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Path(String);

impl Path {
    /// The root segment, e.g. `Path::new("spec")`.
    pub fn new(root: &str) -> Self {
        Path(root.to_string())
    }

    /// `parent.name`.
    pub fn child(&self, name: &str) -> Path {
        if self.0.is_empty() {
            Path(name.to_string())
        } else {
            Path(format!("{}.{name}", self.0))
        }
    }

    /// `parent[i]`.
    pub fn index(&self, i: usize) -> Path {
        Path(format!("{}[{i}]", self.0))
    }

    /// `parent[key]`, as Kubernetes writes map entries.
    pub fn key(&self, key: &str) -> Path {
        Path(format!("{}[{key}]", self.0))
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The field errors found so far.
pub type ErrorList = Vec<FieldError>;

/// Kubernetes' message for a negative count or duration.
pub const NEGATIVE: &str = "must be greater than or equal to 0";

/// `path: Invalid value: N: must be greater than or equal to 0` when `value` is negative.
pub(crate) fn nonnegative(value: Option<i64>, path: &Path) -> Option<FieldError> {
    value
        .filter(|v| *v < 0)
        .map(|v| FieldError::invalid(path, v, NEGATIVE))
}

/// Validates `obj` (already decoded) as its kind; `old` is the stored object on update.
pub fn validate(resource: &Resource, obj: &Value, old: Option<&Value>) -> Vec<FieldError> {
    // The stored object went through defaulting when it was written; defaulting it
    // again makes comparisons fair after rkube learns a new default (Kubernetes
    // defaults objects read from storage for the same reason).
    let old = old.map(|o| {
        let mut o = o.clone();
        crate::defaults::apply_defaults(resource, &mut o);
        o
    });
    let old = old.as_ref();
    match (resource.group, resource.kind) {
        ("", "Namespace") => typed(resource, obj, old, namespace::validate),
        ("", "Node") => typed(resource, obj, old, node::validate),
        ("", "Pod") => typed(resource, obj, old, pod::validate_pod),
        ("", "Service") => typed(resource, obj, old, service::validate),
        ("", "Endpoints") => typed(resource, obj, old, service::validate_endpoints),
        ("", "ConfigMap") => typed(resource, obj, old, config::validate_config_map),
        ("", "Secret") => typed(resource, obj, old, config::validate_secret),
        ("", "Event") => typed(resource, obj, old, event::validate),
        ("apps", "Deployment") => typed(resource, obj, old, apps::validate_deployment),
        ("apps", "ReplicaSet") => typed(resource, obj, old, apps::validate_replica_set),
        ("apps", "DaemonSet") => typed(resource, obj, old, apps::validate_daemon_set),
        ("apps", "StatefulSet") => typed(resource, obj, old, apps::validate_stateful_set),
        ("coordination.k8s.io", "Lease") => typed(resource, obj, old, lease::validate),
        _ => meta::validate_untyped(resource, obj, old),
    }
}

/// Decodes `obj` (and `old`) as `T` and runs `rules`; a value that does not decode is
/// reported as one error instead of a panic.
fn typed<T: DeserializeOwned>(
    resource: &Resource,
    obj: &Value,
    old: Option<&Value>,
    rules: fn(&Resource, &T, Option<&T>) -> ErrorList,
) -> ErrorList {
    let new: T = match crate::codec::typed(resource, obj) {
        Ok(t) => t,
        Err(e) => return vec![FieldError::new(ErrorType::Invalid, "", None, e.to_string())],
    };
    // A stored object that no longer decodes cannot be compared: validate as a create.
    let old: Option<T> = old.and_then(|o| crate::codec::typed(resource, o).ok());
    rules(resource, &new, old.as_ref())
}

/// The name rules of a kind: the messages explaining why `name` is not a valid name
/// for it (empty when it is). Most kinds take a DNS-1123 subdomain; namespaces a
/// DNS-1123 label; services a DNS-1035 label.
pub fn validate_name(resource: &Resource, name: &str) -> Vec<String> {
    name_rule(resource)(name, false)
}

/// A name rule: the name (or, with `prefix`, a generateName prefix) and its problems.
pub(crate) type NameRule = fn(&str, bool) -> Vec<String>;

/// The name rule of a kind, as Kubernetes' `ValidateNameFunc`s choose it.
pub(crate) fn name_rule(resource: &Resource) -> NameRule {
    match (resource.group, resource.kind) {
        ("", "Namespace") => names::name_is_dns1123_label,
        ("", "Service") => names::name_is_dns1035_label,
        _ => names::name_is_dns1123_subdomain,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_matches_kubernetes() {
        let cases = [
            (
                "invalid int",
                FieldError::invalid("spec.replicas", -1i64, "must be greater than or equal to 0"),
                "spec.replicas: Invalid value: -1: must be greater than or equal to 0",
            ),
            (
                "required with detail",
                FieldError::required("metadata.name", "name or generateName is required"),
                "metadata.name: Required value: name or generateName is required",
            ),
            ("required bare", FieldError::required("spec.containers", ""), "spec.containers: Required value"),
            (
                "not supported",
                FieldError::not_supported("spec.restartPolicy", "X", &["Always", "OnFailure", "Never"]),
                "spec.restartPolicy: Unsupported value: \"X\": supported values: \"Always\", \"OnFailure\", \"Never\"",
            ),
            (
                "duplicate",
                FieldError::duplicate("spec.template.spec.containers[1].name", "web"),
                "spec.template.spec.containers[1].name: Duplicate value: \"web\"",
            ),
            (
                "forbidden",
                FieldError::forbidden("metadata.namespace", "not allowed on this type"),
                "metadata.namespace: Forbidden: not allowed on this type",
            ),
            (
                "too long hides the value",
                FieldError::too_long("metadata.annotations", 262144),
                "metadata.annotations: Too long: must have at most 262144 bytes",
            ),
            (
                "too many",
                FieldError::too_many("spec.items", 5, 4),
                "spec.items: Too many: 5: must have at most 4 items",
            ),
            (
                "not found",
                FieldError::not_found("spec.containers[0].volumeMounts[0].name", "data"),
                "spec.containers[0].volumeMounts[0].name: Not found: \"data\"",
            ),
            (
                "string with quotes",
                FieldError::invalid("metadata.name", "a\"b", "bad"),
                "metadata.name: Invalid value: \"a\\\"b\": bad",
            ),
        ];
        for (name, err, want) in cases {
            assert_eq!(err.to_string(), want, "{name}");
        }
    }

    #[test]
    fn cause_carries_reason_field_and_body() {
        let cases = [
            (
                FieldError::invalid("spec.replicas", -1i64, "must be greater than or equal to 0"),
                (
                    "FieldValueInvalid",
                    "Invalid value: -1: must be greater than or equal to 0",
                    "spec.replicas",
                ),
            ),
            (
                FieldError::required("metadata.name", "name or generateName is required"),
                (
                    "FieldValueRequired",
                    "Required value: name or generateName is required",
                    "metadata.name",
                ),
            ),
            (
                FieldError::not_supported("spec.type", "X", &["A"]),
                (
                    "FieldValueNotSupported",
                    "Unsupported value: \"X\": supported values: \"A\"",
                    "spec.type",
                ),
            ),
            (
                FieldError::duplicate("a", "b"),
                ("FieldValueDuplicate", "Duplicate value: \"b\"", "a"),
            ),
            (
                FieldError::forbidden("a", "no"),
                ("FieldValueForbidden", "Forbidden: no", "a"),
            ),
            (
                FieldError::too_long("a", 3),
                (
                    "FieldValueTooLong",
                    "Too long: must have at most 3 bytes",
                    "a",
                ),
            ),
            (
                FieldError::too_many("a", 3, 2),
                (
                    "FieldValueTooMany",
                    "Too many: 3: must have at most 2 items",
                    "a",
                ),
            ),
        ];
        for (err, (reason, message, field)) in cases {
            let cause = err.to_cause();
            assert_eq!(
                (
                    cause.reason.as_str(),
                    cause.message.as_str(),
                    cause.field.as_str()
                ),
                (reason, message, field),
                "{err}"
            );
        }
    }

    #[test]
    fn paths_render_like_kubernetes() {
        let spec = Path::new("spec");
        let cases = [
            ("child", spec.child("replicas"), "spec.replicas"),
            (
                "index",
                spec.child("containers").index(2).child("name"),
                "spec.containers[2].name",
            ),
            ("key", Path::new("data").key("a.b"), "data[a.b]"),
            ("empty root", Path::new("").child("data"), "data"),
        ];
        for (name, path, want) in cases {
            assert_eq!(path.to_string(), want, "{name}");
        }
    }

    #[test]
    fn odd_input_is_reported_not_panicked() {
        let inputs = [
            serde_json::json!("text"),
            serde_json::json!({"metadata": {"name": 3}}),
            serde_json::json!({"spec": {"containers": [{"name": "a"}], "template": 7}}),
        ];
        for r in crate::resource::RESOURCES {
            for input in &inputs {
                let errs = validate(r, input, Some(input));
                assert!(!errs.is_empty(), "{} accepted {input}", r.kind);
            }
        }
    }

    #[test]
    fn every_kind_requires_a_name() {
        for r in crate::resource::RESOURCES {
            let errs = validate(
                r,
                &serde_json::json!({"metadata": {"namespace": "default"}}),
                None,
            );
            let names: Vec<String> = errs
                .iter()
                .filter(|e| e.field == "metadata.name")
                .map(|e| e.to_string())
                .collect();
            assert_eq!(
                names,
                vec!["metadata.name: Required value: name or generateName is required"],
                "{}",
                r.kind
            );
        }
    }

    #[test]
    fn names_follow_the_kind() {
        let find = |plural| crate::resource::find("", "v1", plural).expect("core kind");
        let label_msg = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
        let cases: Vec<(&str, &Resource, &str, Vec<String>)> = vec![
            ("pod subdomain ok", find("pods"), "web.v1", vec![]),
            ("namespace with dot", find("namespaces"), "a.b", vec!["must not contain dots".to_string()]),
            ("namespace upper case", find("namespaces"), "A", vec![label_msg.to_string()]),
            (
                "service must start with a letter",
                find("services"),
                "1web",
                vec!["a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')".to_string()],
            ),
            ("configmap subdomain", find("configmaps"), "app.config", vec![]),
        ];
        for (name, resource, input, want) in cases {
            assert_eq!(validate_name(resource, input), want, "{name}");
        }
    }
}
