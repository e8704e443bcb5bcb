//! Namespace rules: a DNS-1123 label name and qualified spec finalizers.

use k8s_openapi::api::core::v1::Namespace;

use super::meta;
use super::{ErrorList, Path};
use crate::resource::Resource;

/// A Namespace.
pub(super) fn validate(resource: &Resource, ns: &Namespace, old: Option<&Namespace>) -> ErrorList {
    let mut errs = meta::validate_meta_for(resource, &ns.metadata, old.map(|o| &o.metadata));
    let path = Path::new("spec").child("finalizers");
    for finalizer in ns.spec.iter().flat_map(|s| s.finalizers.iter().flatten()) {
        errs.extend(meta::validate_finalizer_name(finalizer, &path));
    }
    errs
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    #[test]
    fn namespace_rules() {
        let r = crate::resource::find("", "v1", "namespaces").expect("namespaces");
        let cases: Vec<(&str, Value, Vec<&str>)> = vec![
            ("valid", json!({"metadata": {"name": "team-a"}, "spec": {"finalizers": ["kubernetes"]}}), vec![]),
            ("dotted name", json!({"metadata": {"name": "team.a"}}), vec!["metadata.name: Invalid value: \"team.a\": must not contain dots"]),
            (
                "bad finalizer",
                json!({"metadata": {"name": "a"}, "spec": {"finalizers": ["mine"]}}),
                vec!["spec.finalizers: Invalid value: \"mine\": name is neither a standard finalizer name nor is it fully qualified"],
            ),
            (
                "namespaced namespace",
                json!({"metadata": {"name": "a", "namespace": "b"}}),
                vec!["metadata.namespace: Forbidden: not allowed on this type"],
            ),
        ];
        for (name, input, want) in cases {
            let got: Vec<String> = super::super::validate(r, &input, None)
                .iter()
                .map(|e| e.to_string())
                .collect();
            assert_eq!(got, want, "{name}");
        }
    }
}
