//! The fields each kind supports in field selectors, and their values on an object.
//!
//! This follows the Kubernetes apiserver: every kind selects on `metadata.name` and
//! `metadata.namespace`, some kinds add their own fields (a Pod's `spec.nodeName`, an
//! Event's `involvedObject.*`), and an unknown field is a 400 error, never ignored.
//! Nodes and Namespaces, like upstream, accept `metadata.name` but not
//! `metadata.namespace`.

use serde_json::Value;

use crate::object;
use crate::resource::Resource;
use crate::selector::FieldSelector;

/// A field selector names a field the kind does not support.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Wording of kinds with their own field list (Pod, Node, Event, …).
    #[error("field label not supported: {0}")]
    NotSupported(String),
    /// Wording of kinds that only know the metadata fields (Deployment, ConfigMap, …).
    #[error("{0:?} is not a known field selector: only \"metadata.name\", \"metadata.namespace\"")]
    NotKnown(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

const METADATA: &[&str] = &["metadata.name", "metadata.namespace"];

const POD: &[&str] = &[
    "metadata.name",
    "metadata.namespace",
    "spec.nodeName",
    "spec.restartPolicy",
    "spec.schedulerName",
    "spec.serviceAccountName",
    "spec.hostNetwork",
    "status.phase",
    "status.podIP",
    "status.podIPs",
    "status.nominatedNodeName",
];

const NODE: &[&str] = &["metadata.name", "spec.unschedulable"];

const NAMESPACE: &[&str] = &["metadata.name", "status.phase"];

const EVENT: &[&str] = &[
    "metadata.name",
    "metadata.namespace",
    "involvedObject.kind",
    "involvedObject.namespace",
    "involvedObject.name",
    "involvedObject.uid",
    "involvedObject.apiVersion",
    "involvedObject.resourceVersion",
    "involvedObject.fieldPath",
    "reason",
    "reportingComponent",
    "source",
    "type",
];

const SECRET: &[&str] = &["metadata.name", "metadata.namespace", "type"];

const SERVICE: &[&str] = &[
    "metadata.name",
    "metadata.namespace",
    "spec.clusterIP",
    "spec.type",
];

// Documented upstream; the 1.32 apiserver itself forgets to register it
// (kubernetes/kubernetes#135136). We accept it, as the documentation promises.
const REPLICA_SET: &[&str] = &["metadata.name", "metadata.namespace", "status.replicas"];

/// Old clients send `spec.host` for a Pod's `spec.nodeName`; Kubernetes still accepts it.
const POD_HOST_ALIAS: &str = "spec.host";

/// The kinds with a field list of their own, by `(group, kind)`.
fn own_fields(resource: &Resource) -> Option<&'static [&'static str]> {
    Some(match (resource.group, resource.kind) {
        ("", "Pod") => POD,
        ("", "Node") => NODE,
        ("", "Namespace") => NAMESPACE,
        ("", "Event") => EVENT,
        ("", "Secret") => SECRET,
        ("", "Service") => SERVICE,
        ("apps", "ReplicaSet") => REPLICA_SET,
        _ => return None,
    })
}

/// The fields `resource` supports in field selectors.
pub fn supported(resource: &Resource) -> &'static [&'static str] {
    own_fields(resource).unwrap_or(METADATA)
}

/// Whether `field` may appear in a field selector for `resource` (aliases included).
fn accepts(resource: &Resource, field: &str) -> bool {
    supported(resource).contains(&field) || (is_pod(resource) && field == POD_HOST_ALIAS)
}

fn is_pod(resource: &Resource) -> bool {
    resource.group.is_empty() && resource.kind == "Pod"
}

/// Checks that every field of `sel` is supported for `resource`.
///
/// # Errors
/// The first unsupported field, worded as the Kubernetes apiserver words it.
pub fn check(resource: &Resource, sel: &FieldSelector) -> Result<()> {
    match sel
        .requirements()
        .map(|(field, _, _)| field)
        .find(|f| !accepts(resource, f))
    {
        None => Ok(()),
        Some(field) if own_fields(resource).is_some() => {
            Err(Error::NotSupported(field.to_string()))
        }
        Some(field) => Err(Error::NotKnown(field.to_string())),
    }
}

/// The value of `field` on `obj`, as a field selector compares it.
///
/// `None` if the field is not supported for the kind; `Some("")` for a supported field
/// that is absent (so `spec.nodeName=` selects unscheduled pods). Booleans read as
/// `"true"`/`"false"` and numbers in decimal, defaulted as Kubernetes defaults them.
pub fn field_value(resource: &Resource, obj: &Value, field: &str) -> Option<String> {
    if !accepts(resource, field) {
        return None;
    }
    let text = |path: &[&str]| str_at(obj, path).to_string();
    Some(match field {
        "metadata.name" => object::name(obj).unwrap_or_default().to_string(),
        "metadata.namespace" => object::namespace(obj).unwrap_or_default().to_string(),
        POD_HOST_ALIAS => text(&["spec", "nodeName"]),
        "spec.hostNetwork" | "spec.unschedulable" => {
            let name = field.trim_start_matches("spec.");
            obj.pointer(&format!("/spec/{name}"))
                .and_then(Value::as_bool)
                .unwrap_or(false)
                .to_string()
        }
        // Kubernetes takes the primary IP from `podIPs`, which conversion fills from `podIP`.
        "status.podIP" => obj
            .pointer("/status/podIPs/0/ip")
            .and_then(Value::as_str)
            .unwrap_or_else(|| str_at(obj, &["status", "podIP"]))
            .to_string(),
        // Accepted by Kubernetes but never given a value there, so it always reads as "".
        "status.podIPs" => String::new(),
        "status.replicas" => obj
            .pointer("/status/replicas")
            .and_then(Value::as_i64)
            .unwrap_or(0)
            .to_string(),
        // An Event's source is its component, or else the reporting controller.
        "source" => match str_at(obj, &["source", "component"]) {
            "" => text(&["reportingComponent"]),
            component => component.to_string(),
        },
        // `spec.nodeName`, `status.phase`, `involvedObject.kind`, `type`, `reason`, …
        dotted => text(&dotted.split('.').collect::<Vec<_>>()),
    })
}

/// The string at `path`, or `""` when absent or not a string.
fn str_at<'a>(obj: &'a Value, path: &[&str]) -> &'a str {
    path.iter()
        .try_fold(obj, |v, key| v.get(key))
        .and_then(Value::as_str)
        .unwrap_or("")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::resource::{self, RESOURCES};

    fn kind(kind: &str) -> &'static Resource {
        RESOURCES
            .iter()
            .find(|r| r.kind == kind)
            .unwrap_or_else(|| panic!("no kind {kind}"))
    }

    #[test]
    fn every_kind_selects_on_its_name() {
        for r in RESOURCES {
            assert!(supported(r).contains(&"metadata.name"), "{}", r.kind);
            let obj = json!({"metadata": {"name": "x"}});
            assert_eq!(
                field_value(r, &obj, "metadata.name").as_deref(),
                Some("x"),
                "{}",
                r.kind
            );
            assert_eq!(field_value(r, &obj, "no.such.field"), None, "{}", r.kind);
        }
    }

    #[test]
    fn values_per_kind() {
        let pod = json!({
            "metadata": {"name": "web-1", "namespace": "default"},
            "spec": {"nodeName": "node-1", "restartPolicy": "Always", "schedulerName": "default-scheduler",
                     "serviceAccountName": "default", "hostNetwork": true},
            "status": {"phase": "Running", "podIP": "10.0.0.9", "podIPs": [{"ip": "10.0.0.7"}], "nominatedNodeName": "node-2"},
        });
        let bare_pod = json!({"metadata": {"name": "p"}, "spec": {}});
        let event = json!({
            "metadata": {"name": "web-1.17a", "namespace": "default"},
            "involvedObject": {"kind": "Pod", "namespace": "default", "name": "web-1", "uid": "u-1",
                               "apiVersion": "v1", "resourceVersion": "42", "fieldPath": "spec.containers{web}"},
            "reason": "Started", "type": "Normal", "source": {"component": "kubelet"}, "reportingComponent": "kubelet-x",
        });
        let new_event = json!({"metadata": {"name": "e"}, "reportingComponent": "scheduler"});
        let node = json!({"metadata": {"name": "n1"}, "spec": {"unschedulable": true}});
        let cases: Vec<(&str, Value, &str, Option<&str>)> = vec![
            ("Pod", pod.clone(), "metadata.namespace", Some("default")),
            ("Pod", pod.clone(), "spec.nodeName", Some("node-1")),
            ("Pod", pod.clone(), "spec.host", Some("node-1")),
            ("Pod", pod.clone(), "spec.restartPolicy", Some("Always")),
            (
                "Pod",
                pod.clone(),
                "spec.schedulerName",
                Some("default-scheduler"),
            ),
            (
                "Pod",
                pod.clone(),
                "spec.serviceAccountName",
                Some("default"),
            ),
            ("Pod", pod.clone(), "spec.hostNetwork", Some("true")),
            ("Pod", pod.clone(), "status.phase", Some("Running")),
            ("Pod", pod.clone(), "status.podIP", Some("10.0.0.7")),
            ("Pod", pod.clone(), "status.podIPs", Some("")),
            (
                "Pod",
                pod.clone(),
                "status.nominatedNodeName",
                Some("node-2"),
            ),
            ("Pod", pod.clone(), "status.hostIP", None),
            ("Pod", bare_pod.clone(), "spec.nodeName", Some("")),
            ("Pod", bare_pod.clone(), "spec.hostNetwork", Some("false")),
            ("Pod", bare_pod.clone(), "status.podIP", Some("")),
            ("Pod", bare_pod.clone(), "metadata.namespace", Some("")),
            ("Event", event.clone(), "involvedObject.kind", Some("Pod")),
            (
                "Event",
                event.clone(),
                "involvedObject.namespace",
                Some("default"),
            ),
            ("Event", event.clone(), "involvedObject.name", Some("web-1")),
            ("Event", event.clone(), "involvedObject.uid", Some("u-1")),
            (
                "Event",
                event.clone(),
                "involvedObject.apiVersion",
                Some("v1"),
            ),
            (
                "Event",
                event.clone(),
                "involvedObject.resourceVersion",
                Some("42"),
            ),
            (
                "Event",
                event.clone(),
                "involvedObject.fieldPath",
                Some("spec.containers{web}"),
            ),
            ("Event", event.clone(), "reason", Some("Started")),
            ("Event", event.clone(), "type", Some("Normal")),
            ("Event", event.clone(), "source", Some("kubelet")),
            (
                "Event",
                event.clone(),
                "reportingComponent",
                Some("kubelet-x"),
            ),
            ("Event", new_event.clone(), "source", Some("scheduler")),
            ("Event", new_event.clone(), "involvedObject.uid", Some("")),
            ("Node", node.clone(), "spec.unschedulable", Some("true")),
            ("Node", json!({}), "spec.unschedulable", Some("false")),
            ("Node", node.clone(), "metadata.namespace", None),
            (
                "Namespace",
                json!({"status": {"phase": "Terminating"}}),
                "status.phase",
                Some("Terminating"),
            ),
            ("Namespace", json!({}), "metadata.namespace", None),
            (
                "Secret",
                json!({"type": "kubernetes.io/tls"}),
                "type",
                Some("kubernetes.io/tls"),
            ),
            (
                "Service",
                json!({"spec": {"clusterIP": "10.96.0.1", "type": "NodePort"}}),
                "spec.clusterIP",
                Some("10.96.0.1"),
            ),
            (
                "Service",
                json!({"spec": {"type": "NodePort"}}),
                "spec.type",
                Some("NodePort"),
            ),
            (
                "ReplicaSet",
                json!({"status": {"replicas": 3}}),
                "status.replicas",
                Some("3"),
            ),
            ("ReplicaSet", json!({}), "status.replicas", Some("0")),
            (
                "Deployment",
                json!({"metadata": {"namespace": "ns"}}),
                "metadata.namespace",
                Some("ns"),
            ),
            ("Deployment", json!({}), "status.replicas", None),
            ("ConfigMap", json!({}), "spec.nodeName", None),
        ];
        for (k, obj, field, want) in cases {
            assert_eq!(
                field_value(kind(k), &obj, field).as_deref(),
                want,
                "{k} {field}"
            );
        }
    }

    #[test]
    fn check_rejects_unknown_fields_with_kubernetes_wording() {
        let cases: [(&str, &str, Result<(), &str>); 8] = [
            ("Pod", "status.phase=Running,spec.nodeName=node-1,metadata.namespace!=default", Ok(())),
            ("Pod", "spec.host=n1", Ok(())),
            ("Pod", "status.hostIP=1.2.3.4", Err("field label not supported: status.hostIP")),
            ("Event", "involvedObject.name=x,involvedObject.namespace=default,involvedObject.uid=u", Ok(())),
            ("Node", "metadata.namespace=x", Err("field label not supported: metadata.namespace")),
            ("Deployment", "metadata.name=helloworld", Ok(())),
            ("Deployment", "spec.replicas=1", Err("\"spec.replicas\" is not a known field selector: only \"metadata.name\", \"metadata.namespace\"")),
            ("Lease", "", Ok(())),
        ];
        for (k, sel, want) in cases {
            let sel = FieldSelector::parse(sel).expect("valid selector");
            let got = check(kind(k), &sel).map_err(|e| e.to_string());
            assert_eq!(got, want.map_err(String::from), "{k} {sel}");
        }
    }

    #[test]
    fn selectors_match_through_field_values() {
        let pods = resource::find("", "v1", "pods").expect("pods are served");
        let scheduled = json!({"metadata": {"name": "a"}, "spec": {"nodeName": "n1"}, "status": {"phase": "Running"}});
        let pending =
            json!({"metadata": {"name": "b"}, "spec": {}, "status": {"phase": "Pending"}});
        let cases = [
            ("spec.nodeName=", &scheduled, false),
            ("spec.nodeName=", &pending, true),
            (
                "spec.nodeName=n1,status.phase!=Succeeded,status.phase!=Failed",
                &scheduled,
                true,
            ),
            ("metadata.name=b", &pending, true),
        ];
        for (sel, obj, want) in cases {
            let parsed = FieldSelector::parse(sel).expect("valid selector");
            assert_eq!(parsed.matches(|f| field_value(pods, obj, f)), want, "{sel}");
        }
    }
}
