//! Node rules: pod CIDRs and taints.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::Node;

use super::meta;
use super::pod::validate_taint_effect;
use super::render::Raw;
use super::{names, ErrorList, FieldError, Path};
use crate::resource::Resource;

/// A Node.
pub(super) fn validate(resource: &Resource, node: &Node, old: Option<&Node>) -> ErrorList {
    let mut errs = meta::validate_meta_for(resource, &node.metadata, old.map(|o| &o.metadata));
    let Some(spec) = &node.spec else { return errs };
    let path = Path::new("spec");
    if let Some(cidr) = spec.pod_cidr.as_deref().filter(|c| !c.is_empty()) {
        for msg in names::is_valid_cidr(cidr) {
            errs.push(FieldError::invalid(path.child("podCIDR"), cidr, msg));
        }
    }
    for (i, cidr) in spec.pod_cidrs.iter().flatten().enumerate() {
        for msg in names::is_valid_cidr(cidr) {
            errs.push(FieldError::invalid(
                path.child("podCIDRs").index(i),
                cidr,
                msg,
            ));
        }
    }
    let mut seen = BTreeSet::new();
    for (i, taint) in spec.taints.iter().flatten().enumerate() {
        let idx = path.child("taints").index(i);
        errs.extend(meta::validate_label_name(&taint.key, &idx.child("key")));
        let value = taint.value.as_deref().unwrap_or("");
        let msgs = names::is_label_value(value);
        if !msgs.is_empty() {
            errs.push(FieldError::invalid(
                idx.child("value"),
                value,
                msgs.join(";"),
            ));
        }
        errs.extend(validate_taint_effect(&taint.effect, &idx.child("effect")));
        if !seen.insert((taint.key.as_str(), taint.effect.as_str())) {
            let mut dup = FieldError::duplicate(
                &idx,
                Raw(format!(
                    "core.Taint{{Key:{}, Value:{}, Effect:{}}}",
                    super::render::quote(&taint.key),
                    super::render::quote(value),
                    super::render::quote(&taint.effect)
                )),
            );
            dup.detail = "taints must be unique by key and effect pair".into();
            errs.push(dup);
        }
    }
    errs
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    #[test]
    fn node_rules() {
        let r = crate::resource::find("", "v1", "nodes").expect("nodes");
        let node = |spec: Value| json!({"metadata": {"name": "n1"}, "spec": spec});
        let cases: Vec<(&str, Value, Vec<&str>)> = vec![
            ("valid", node(json!({"podCIDR": "10.244.1.0/24", "taints": [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]})), vec![]),
            (
                "bad cidr",
                node(json!({"podCIDR": "10.244.1.0"})),
                vec!["spec.podCIDR: Invalid value: \"10.244.1.0\": must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)"],
            ),
            (
                "bad effect",
                node(json!({"taints": [{"key": "k", "effect": "Evict"}]})),
                vec!["spec.taints[0].effect: Unsupported value: \"Evict\": supported values: \"NoSchedule\", \"PreferNoSchedule\", \"NoExecute\""],
            ),
            ("missing effect", node(json!({"taints": [{"key": "k"}]})), vec!["spec.taints[0].effect: Required value"]),
            (
                "duplicate taint",
                node(json!({"taints": [{"key": "k", "effect": "NoSchedule"}, {"key": "k", "value": "v", "effect": "NoSchedule"}]})),
                vec!["spec.taints[1]: Duplicate value: core.Taint{Key:\"k\", Value:\"v\", Effect:\"NoSchedule\"}: taints must be unique by key and effect pair"],
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
