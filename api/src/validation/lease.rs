//! Lease rules: positive durations and non-negative transition counts.

use k8s_openapi::api::coordination::v1::Lease;

use super::meta;
use super::{nonnegative, ErrorList, FieldError, Path};
use crate::resource::Resource;

/// A Lease (coordination.k8s.io/v1).
pub(super) fn validate(resource: &Resource, lease: &Lease, old: Option<&Lease>) -> ErrorList {
    let mut errs = meta::validate_meta_for(resource, &lease.metadata, old.map(|o| &o.metadata));
    let Some(spec) = &lease.spec else { return errs };
    let path = Path::new("spec");
    if let Some(seconds) = spec.lease_duration_seconds.filter(|s| *s <= 0) {
        errs.push(FieldError::invalid(
            path.child("leaseDurationSeconds"),
            seconds,
            "must be greater than 0",
        ));
    }
    errs.extend(nonnegative(
        spec.lease_transitions.map(i64::from),
        &path.child("leaseTransitions"),
    ));
    errs
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    #[test]
    fn lease_rules() {
        let r = crate::resource::find("coordination.k8s.io", "v1", "leases").expect("leases");
        let lease = |spec: Value| json!({"metadata": {"name": "n1", "namespace": "kube-node-lease"}, "spec": spec});
        let cases: Vec<(&str, Value, Vec<&str>)> = vec![
            (
                "valid",
                lease(json!({"holderIdentity": "n1", "leaseDurationSeconds": 40})),
                vec![],
            ),
            (
                "zero duration",
                lease(json!({"leaseDurationSeconds": 0})),
                vec!["spec.leaseDurationSeconds: Invalid value: 0: must be greater than 0"],
            ),
            (
                "negative transitions",
                lease(json!({"leaseTransitions": -1})),
                vec![
                    "spec.leaseTransitions: Invalid value: -1: must be greater than or equal to 0",
                ],
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
