//! Event rules: the involved object lives in the event's namespace.

use k8s_openapi::api::core::v1::Event;

use super::meta;
use super::{ErrorList, FieldError};
use crate::resource::Resource;

/// An Event (core/v1).
pub(super) fn validate(resource: &Resource, event: &Event, old: Option<&Event>) -> ErrorList {
    let mut errs = meta::validate_meta_for(resource, &event.metadata, old.map(|o| &o.metadata));
    let namespace = event.metadata.namespace.as_deref().unwrap_or("");
    let involved = event.involved_object.namespace.as_deref().unwrap_or("");
    let mismatch = if event.event_time.is_none() {
        // Old-style events: cluster objects' events may sit in "default".
        if involved.is_empty() {
            !namespace.is_empty() && namespace != "default"
        } else {
            namespace != involved
        }
    } else {
        if event
            .reporting_component
            .as_deref()
            .unwrap_or("")
            .is_empty()
        {
            errs.push(FieldError::required("reportingController", ""));
        }
        involved.is_empty() && namespace != "kube-system" && namespace != "default"
            || !involved.is_empty() && namespace != involved
    };
    if mismatch {
        errs.push(FieldError::invalid(
            "involvedObject.namespace",
            involved,
            "does not match event.namespace",
        ));
    }
    errs
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    #[test]
    fn event_rules() {
        let r = crate::resource::find("", "v1", "events").expect("events");
        let event = |involved_ns: &str| {
            json!({"metadata": {"name": "web.1", "namespace": "default"},
                "involvedObject": {"kind": "Pod", "name": "web", "namespace": involved_ns}})
        };
        let cases: Vec<(&str, Value, Vec<&str>)> = vec![
            ("same namespace", event("default"), vec![]),
            ("cluster object in default", event(""), vec![]),
            (
                "other namespace",
                event("kube-system"),
                vec!["involvedObject.namespace: Invalid value: \"kube-system\": does not match event.namespace"],
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
