//! Rules for `metadata` (names, namespaces, labels, annotations, finalizers, owners)
//! and for label selectors, shared by every kind.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, LabelSelectorRequirement, ObjectMeta,
};
use serde_json::Value;

use super::render::Raw;
use super::{names, ErrorList, FieldError, NameRule, Path};
use crate::resource::Resource;

/// The most bytes all annotations of an object may hold (keys and values).
pub const TOTAL_ANNOTATION_SIZE_LIMIT: usize = 256 * 1024;

/// Finalizers Kubernetes knows without a domain prefix.
const STANDARD_FINALIZERS: &[&str] = &["kubernetes", "orphan", "foregroundDeletion"];

/// Validates the metadata of a new object: `namespaced` says whether the kind lives in
/// a namespace, `name_rule` checks its name format.
pub fn validate_object_meta(
    meta: &ObjectMeta,
    namespaced: bool,
    name_rule: NameRule,
    path: &Path,
) -> ErrorList {
    let mut errs = Vec::new();
    if let Some(generate_name) = meta.generate_name.as_deref().filter(|g| !g.is_empty()) {
        for msg in name_rule(generate_name, true) {
            errs.push(FieldError::invalid(
                path.child("generateName"),
                generate_name,
                msg,
            ));
        }
    }
    match meta.name.as_deref().filter(|n| !n.is_empty()) {
        None => errs.push(FieldError::required(
            path.child("name"),
            "name or generateName is required",
        )),
        Some(name) => {
            for msg in name_rule(name, false) {
                errs.push(FieldError::invalid(path.child("name"), name, msg));
            }
        }
    }
    let namespace = meta.namespace.as_deref().unwrap_or("");
    if namespaced {
        if namespace.is_empty() {
            errs.push(FieldError::required(path.child("namespace"), ""));
        } else {
            for msg in names::is_dns1123_label(namespace) {
                errs.push(FieldError::invalid(path.child("namespace"), namespace, msg));
            }
        }
    } else if !namespace.is_empty() {
        errs.push(FieldError::forbidden(
            path.child("namespace"),
            "not allowed on this type",
        ));
    }
    if let Some(generation) = meta.generation.filter(|g| *g < 0) {
        errs.push(FieldError::invalid(
            path.child("generation"),
            generation,
            super::NEGATIVE,
        ));
    }
    errs.extend(validate_labels(meta.labels.as_ref(), &path.child("labels")));
    errs.extend(validate_annotations(
        meta.annotations.as_ref(),
        &path.child("annotations"),
    ));
    errs.extend(validate_owner_references(
        meta,
        &path.child("ownerReferences"),
    ));
    errs.extend(validate_finalizers(
        meta.finalizers.as_deref().unwrap_or_default(),
        &path.child("finalizers"),
    ));
    errs
}

/// The metadata rules of an update: identity fields never change, generation never
/// goes back, and an object being deleted takes no new finalizers.
pub fn validate_object_meta_update(new: &ObjectMeta, old: &ObjectMeta, path: &Path) -> ErrorList {
    let mut errs = Vec::new();
    let text = |s: &Option<String>| s.clone().unwrap_or_default();
    for (field, new_value, old_value) in [
        ("name", text(&new.name), text(&old.name)),
        ("namespace", text(&new.namespace), text(&old.namespace)),
        ("uid", text(&new.uid), text(&old.uid)),
    ] {
        if new_value != old_value {
            errs.push(FieldError::invalid(path.child(field), new_value, IMMUTABLE));
        }
    }
    let time = |t: Option<String>| Raw(t.unwrap_or_else(|| "null".into()));
    if new.creation_timestamp != old.creation_timestamp {
        let value = new.creation_timestamp.as_ref().map(|t| t.0.to_string());
        errs.push(FieldError::invalid(
            path.child("creationTimestamp"),
            time(value),
            IMMUTABLE,
        ));
    }
    if new.deletion_timestamp != old.deletion_timestamp {
        let value = new.deletion_timestamp.as_ref().map(|t| t.0.to_string());
        errs.push(FieldError::invalid(
            path.child("deletionTimestamp"),
            time(value),
            IMMUTABLE,
        ));
    }
    if new.deletion_grace_period_seconds != old.deletion_grace_period_seconds {
        errs.push(FieldError::invalid(
            path.child("deletionGracePeriodSeconds"),
            new.deletion_grace_period_seconds,
            IMMUTABLE,
        ));
    }
    if new.generation.unwrap_or(0) < old.generation.unwrap_or(0) {
        errs.push(FieldError::invalid(
            path.child("generation"),
            new.generation.unwrap_or(0),
            "must not be decremented",
        ));
    }
    if old.deletion_timestamp.is_some() {
        let old_finalizers = old.finalizers.as_deref().unwrap_or_default();
        let added: Vec<String> = new
            .finalizers
            .as_deref()
            .unwrap_or_default()
            .iter()
            .filter(|f| !old_finalizers.contains(f))
            .map(|f| super::render::quote(f))
            .collect();
        if !added.is_empty() {
            errs.push(FieldError::forbidden(
                path.child("finalizers"),
                format!(
                    "no new finalizers can be added if the object is being deleted, found new finalizers []string{{{}}}",
                    added.join(", ")
                ),
            ));
        }
    }
    errs
}

/// `field is immutable`.
pub const IMMUTABLE: &str = "field is immutable";

/// Label keys are qualified names, values at most 63 characters of `[-A-Za-z0-9_.]`.
pub fn validate_labels(labels: Option<&BTreeMap<String, String>>, path: &Path) -> ErrorList {
    let mut errs = Vec::new();
    for (key, value) in labels.into_iter().flatten() {
        errs.extend(validate_label_name(key, path));
        for msg in names::is_label_value(value) {
            errs.push(FieldError::invalid(path, value, msg));
        }
    }
    errs
}

/// A label key (or any qualified name) at `path`.
pub fn validate_label_name(key: &str, path: &Path) -> ErrorList {
    names::is_qualified_name(key)
        .into_iter()
        .map(|msg| FieldError::invalid(path, key, msg))
        .collect()
}

/// Annotation keys are qualified names (any case); all of them fit in 256 KiB.
pub fn validate_annotations(
    annotations: Option<&BTreeMap<String, String>>,
    path: &Path,
) -> ErrorList {
    let mut errs = Vec::new();
    let mut size = 0;
    for (key, value) in annotations.into_iter().flatten() {
        for msg in names::is_qualified_name(&key.to_lowercase()) {
            errs.push(FieldError::invalid(path, key, msg));
        }
        size += key.len() + value.len();
    }
    if size > TOTAL_ANNOTATION_SIZE_LIMIT {
        errs.push(FieldError::too_long(path, TOTAL_ANNOTATION_SIZE_LIMIT));
    }
    errs
}

fn validate_owner_references(meta: &ObjectMeta, path: &Path) -> ErrorList {
    let mut errs = Vec::new();
    for owner in meta.owner_references.iter().flatten() {
        // The version is what follows the last '/', or the whole apiVersion.
        let version = owner.api_version.rsplit('/').next().unwrap_or("");
        if version.is_empty() {
            errs.push(FieldError::invalid(
                path.child("apiVersion"),
                &owner.api_version,
                "version must not be empty",
            ));
        }
        for (field, value) in [
            ("kind", &owner.kind),
            ("name", &owner.name),
            ("uid", &owner.uid),
        ] {
            if value.is_empty() {
                errs.push(FieldError::invalid(
                    path.child(field),
                    value,
                    "must not be empty",
                ));
            }
        }
    }
    errs
}

/// Each finalizer is a qualified name, and one without a domain prefix must be one of
/// Kubernetes' own.
pub fn validate_finalizers(finalizers: &[String], path: &Path) -> ErrorList {
    let mut errs = Vec::new();
    for (i, finalizer) in finalizers.iter().enumerate() {
        errs.extend(validate_finalizer_name(finalizer, &path.index(i)));
    }
    if finalizers.iter().any(|f| f == "orphan")
        && finalizers.iter().any(|f| f == "foregroundDeletion")
    {
        let quoted: Vec<String> = finalizers.iter().map(|f| super::render::quote(f)).collect();
        errs.push(FieldError::invalid(
            path,
            Raw(format!("[]string{{{}}}", quoted.join(", "))),
            "finalizer orphan and foregroundDeletion cannot be both set",
        ));
    }
    errs
}

/// One finalizer name at `path`.
pub fn validate_finalizer_name(finalizer: &str, path: &Path) -> ErrorList {
    let mut errs = validate_label_name(finalizer, path);
    if !finalizer.contains('/') && !STANDARD_FINALIZERS.contains(&finalizer) {
        errs.push(FieldError::invalid(
            path,
            finalizer,
            "name is neither a standard finalizer name nor is it fully qualified",
        ));
    }
    errs
}

/// The syntax of a label selector: label rules for `matchLabels`, and each expression's
/// operator, key and values.
pub fn validate_label_selector(selector: &LabelSelector, path: &Path) -> ErrorList {
    let mut errs = validate_labels(selector.match_labels.as_ref(), &path.child("matchLabels"));
    for (i, expr) in selector.match_expressions.iter().flatten().enumerate() {
        errs.extend(validate_requirement(
            expr,
            &path.child("matchExpressions").index(i),
        ));
    }
    errs
}

fn validate_requirement(expr: &LabelSelectorRequirement, path: &Path) -> ErrorList {
    let mut errs = Vec::new();
    let values = expr.values.as_deref().unwrap_or_default();
    match expr.operator.as_str() {
        "In" | "NotIn" if values.is_empty() => errs.push(FieldError::required(
            path.child("values"),
            "must be specified when `operator` is 'In' or 'NotIn'",
        )),
        "Exists" | "DoesNotExist" if !values.is_empty() => errs.push(FieldError::forbidden(
            path.child("values"),
            "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
        )),
        "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
        other => errs.push(FieldError::invalid(
            path.child("operator"),
            other,
            "not a valid selector operator",
        )),
    }
    errs.extend(validate_label_name(&expr.key, &path.child("key")));
    for (i, value) in values.iter().enumerate() {
        for msg in names::is_label_value(value) {
            errs.push(FieldError::invalid(
                path.child("values").index(i),
                value,
                msg,
            ));
        }
    }
    errs
}

/// Whether a selector has no requirement at all (and so would select everything).
pub fn selector_is_empty(selector: &LabelSelector) -> bool {
    selector
        .match_labels
        .as_ref()
        .is_none_or(BTreeMap::is_empty)
        && selector
            .match_expressions
            .as_ref()
            .is_none_or(Vec::is_empty)
}

/// Whether `labels` satisfy every requirement of `selector`.
pub fn selector_matches(
    selector: &LabelSelector,
    labels: Option<&BTreeMap<String, String>>,
) -> bool {
    let empty = BTreeMap::new();
    let labels = labels.unwrap_or(&empty);
    let labels_match = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let expressions_match = selector.match_expressions.iter().flatten().all(|e| {
        let values = e.values.as_deref().unwrap_or_default();
        let value = labels.get(&e.key);
        match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        }
    });
    labels_match && expressions_match
}

/// Metadata rules for a kind without typed rules.
pub(super) fn validate_untyped(resource: &Resource, obj: &Value, old: Option<&Value>) -> ErrorList {
    let decode = |v: &Value| {
        let meta = v
            .get("metadata")
            .cloned()
            .unwrap_or_else(|| serde_json::json!({}));
        serde_json::from_value::<ObjectMeta>(meta).ok()
    };
    let Some(meta) = decode(obj) else {
        return vec![FieldError::invalid(
            "metadata",
            Raw("null".into()),
            "must be an object",
        )];
    };
    let path = Path::new("metadata");
    let mut errs = validate_object_meta(
        &meta,
        resource.namespaced(),
        super::name_rule(resource),
        &path,
    );
    if let Some(old_meta) = old.and_then(decode) {
        errs.extend(validate_object_meta_update(&meta, &old_meta, &path));
    }
    errs
}

/// The metadata rules every typed kind runs: create rules, plus update rules when
/// there is an old object.
pub(super) fn validate_meta_for(
    resource: &Resource,
    new: &ObjectMeta,
    old: Option<&ObjectMeta>,
) -> ErrorList {
    let path = Path::new("metadata");
    let mut errs = validate_object_meta(
        new,
        resource.namespaced(),
        super::name_rule(resource),
        &path,
    );
    if let Some(old) = old {
        errs.extend(validate_object_meta_update(new, old, &path));
    }
    errs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(v: serde_json::Value) -> ObjectMeta {
        serde_json::from_value(v).expect("test metadata decodes")
    }

    fn show(errs: ErrorList) -> Vec<String> {
        errs.into_iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn object_meta_rules() {
        let big = "x".repeat(TOTAL_ANNOTATION_SIZE_LIMIT);
        let cases: Vec<(&str, serde_json::Value, bool, Vec<&str>)> = vec![
            ("valid", serde_json::json!({"name": "web", "namespace": "default", "labels": {"app": "web"}}), true, vec![]),
            (
                "missing name",
                serde_json::json!({"namespace": "default"}),
                true,
                vec!["metadata.name: Required value: name or generateName is required"],
            ),
            ("missing namespace", serde_json::json!({"name": "web"}), true, vec!["metadata.namespace: Required value"]),
            (
                "namespace on cluster kind",
                serde_json::json!({"name": "n1", "namespace": "default"}),
                false,
                vec!["metadata.namespace: Forbidden: not allowed on this type"],
            ),
            (
                "bad name",
                serde_json::json!({"name": "Web", "namespace": "default"}),
                true,
                vec!["metadata.name: Invalid value: \"Web\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"],
            ),
            (
                "bad label value",
                serde_json::json!({"name": "web", "namespace": "default", "labels": {"app": "-x"}}),
                true,
                vec!["metadata.labels: Invalid value: \"-x\": a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"],
            ),
            (
                "bad label key",
                serde_json::json!({"name": "web", "namespace": "default", "labels": {"/app": "x"}}),
                true,
                vec!["metadata.labels: Invalid value: \"/app\": prefix part must be non-empty"],
            ),
            (
                "annotations too big",
                serde_json::json!({"name": "web", "namespace": "default", "annotations": {"a": big}}),
                true,
                vec!["metadata.annotations: Too long: must have at most 262144 bytes"],
            ),
            (
                "upper case annotation key is fine",
                serde_json::json!({"name": "web", "namespace": "default", "annotations": {"Example.COM/Key": "v"}}),
                true,
                vec![],
            ),
            (
                "unqualified finalizer",
                serde_json::json!({"name": "web", "namespace": "default", "finalizers": ["kubernetes", "mine"]}),
                true,
                vec!["metadata.finalizers[1]: Invalid value: \"mine\": name is neither a standard finalizer name nor is it fully qualified"],
            ),
            (
                "owner without uid",
                serde_json::json!({"name": "web", "namespace": "default", "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": ""}]}),
                true,
                vec!["metadata.ownerReferences.uid: Invalid value: \"\": must not be empty"],
            ),
        ];
        for (name, input, namespaced, want) in cases {
            let got = show(validate_object_meta(
                &meta(input),
                namespaced,
                names::name_is_dns1123_subdomain,
                &Path::new("metadata"),
            ));
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn object_meta_update_rules() {
        let old = serde_json::json!({"name": "web", "namespace": "default", "uid": "u1", "generation": 2, "creationTimestamp": "2024-01-01T00:00:00Z"});
        let cases: Vec<(&str, serde_json::Value, serde_json::Value, Vec<&str>)> = vec![
            ("unchanged", old.clone(), old.clone(), vec![]),
            (
                "uid changed",
                serde_json::json!({"name": "web", "namespace": "default", "uid": "u2", "generation": 2, "creationTimestamp": "2024-01-01T00:00:00Z"}),
                old.clone(),
                vec!["metadata.uid: Invalid value: \"u2\": field is immutable"],
            ),
            (
                "generation decremented",
                serde_json::json!({"name": "web", "namespace": "default", "uid": "u1", "generation": 1, "creationTimestamp": "2024-01-01T00:00:00Z"}),
                old.clone(),
                vec!["metadata.generation: Invalid value: 1: must not be decremented"],
            ),
            (
                "finalizer added while deleting",
                serde_json::json!({"name": "web", "deletionTimestamp": "2024-01-02T00:00:00Z", "finalizers": ["a.io/x"]}),
                serde_json::json!({"name": "web", "deletionTimestamp": "2024-01-02T00:00:00Z"}),
                vec!["metadata.finalizers: Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers []string{\"a.io/x\"}"],
            ),
        ];
        for (name, new, old, want) in cases {
            assert_eq!(
                show(validate_object_meta_update(
                    &meta(new),
                    &meta(old),
                    &Path::new("metadata")
                )),
                want,
                "{name}"
            );
        }
    }

    #[test]
    fn selectors() {
        let sel = |v: serde_json::Value| -> LabelSelector {
            serde_json::from_value(v).expect("selector decodes")
        };
        let cases: Vec<(&str, LabelSelector, Vec<&str>)> = vec![
            ("valid", sel(serde_json::json!({"matchLabels": {"app": "web"}, "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a"]}]})), vec![]),
            (
                "in without values",
                sel(serde_json::json!({"matchExpressions": [{"key": "tier", "operator": "In"}]})),
                vec!["spec.selector.matchExpressions[0].values: Required value: must be specified when `operator` is 'In' or 'NotIn'"],
            ),
            (
                "exists with values",
                sel(serde_json::json!({"matchExpressions": [{"key": "tier", "operator": "Exists", "values": ["a"]}]})),
                vec!["spec.selector.matchExpressions[0].values: Forbidden: may not be specified when `operator` is 'Exists' or 'DoesNotExist'"],
            ),
            (
                "bad operator",
                sel(serde_json::json!({"matchExpressions": [{"key": "tier", "operator": "Has"}]})),
                vec!["spec.selector.matchExpressions[0].operator: Invalid value: \"Has\": not a valid selector operator"],
            ),
        ];
        for (name, selector, want) in cases {
            assert_eq!(
                show(validate_label_selector(
                    &selector,
                    &Path::new("spec").child("selector")
                )),
                want,
                "{name}"
            );
        }

        let labels: BTreeMap<String, String> = [("app".to_string(), "web".to_string())].into();
        let matches = [
            (
                "labels match",
                serde_json::json!({"matchLabels": {"app": "web"}}),
                true,
            ),
            (
                "labels differ",
                serde_json::json!({"matchLabels": {"app": "db"}}),
                false,
            ),
            (
                "in",
                serde_json::json!({"matchExpressions": [{"key": "app", "operator": "In", "values": ["web", "x"]}]}),
                true,
            ),
            (
                "notin",
                serde_json::json!({"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["web"]}]}),
                false,
            ),
            (
                "exists",
                serde_json::json!({"matchExpressions": [{"key": "app", "operator": "Exists"}]}),
                true,
            ),
            (
                "does not exist",
                serde_json::json!({"matchExpressions": [{"key": "tier", "operator": "DoesNotExist"}]}),
                true,
            ),
        ];
        for (name, selector, want) in matches {
            assert_eq!(
                selector_matches(&sel(selector), Some(&labels)),
                want,
                "{name}"
            );
        }
    }
}
