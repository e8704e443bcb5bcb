//! Tests of the three-way patch: the bodies kubectl sends, and convergence when the
//! apiserver's strategic merge applies them.

use rkube_api::patch::strategic_merge_patch;
use rkube_api::resource::RESOURCES;
use serde_json::{json, Value};

use super::*;

/// Applies `patch` as the apiserver does.
fn applied(kind: &str, current: &Value, patch: &Map<String, Value>) -> Value {
    let resource = RESOURCES
        .iter()
        .find(|r| r.kind == kind)
        .expect("test kinds are in the resource table");
    strategic_merge_patch(resource, current, &Value::Object(patch.clone()))
        .unwrap_or_else(|e| panic!("the apiserver refuses {patch:?}: {e}"))
}

fn deployment(labels: Value, containers: Value) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default", "labels": labels},
        "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": containers}}
        }
    })
}

/// `value` as the apiserver would hold it after defaulting and a status update.
fn live(value: &Value) -> Value {
    let mut live = value.clone();
    live["metadata"]["uid"] = json!("u-1");
    live["metadata"]["resourceVersion"] = json!("7");
    if live["spec"].get("replicas").is_none() {
        live["spec"]["replicas"] = json!(1);
    }
    live["spec"]["strategy"] = json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}});
    if let Some(containers) = live["spec"]["template"]["spec"]["containers"].as_array_mut() {
        for c in containers {
            c["imagePullPolicy"] = json!("IfNotPresent");
            c["terminationMessagePath"] = json!("/dev/termination-log");
        }
    }
    live["status"] =
        json!({"replicas": 1, "conditions": [{"type": "Available", "status": "True"}]});
    live
}

#[test]
fn kubectl_bodies() {
    let helloworld = |env: Value, ports: bool| {
        let mut c = json!({"name": "helloworld", "image": "img:1.0", "env": env});
        if ports {
            c["ports"] = json!([{"containerPort": 80}]);
        }
        c
    };
    let v1 = deployment(
        json!({"app": "web"}),
        json!([helloworld(json!([{"name": "A", "value": "1"}]), true)]),
    );
    // Replicas and env changed (the contract's apply 2nd run).
    let mut v2 = v1.clone();
    v2["spec"]["replicas"] = json!(3);
    v2["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"] = json!("2");
    // Env A removed and B added, ports and labels removed, a sidecar added (3rd run).
    let mut v3 = v2.clone();
    v3["metadata"]
        .as_object_mut()
        .expect("map")
        .remove("labels");
    v3["spec"]["template"]["spec"]["containers"] = json!([
        {"name": "helloworld", "image": "img:1.0", "env": [{"name": "B", "value": "3"}]},
        {"name": "sidecar", "image": "busybox:1.36"}
    ]);
    let cases = [
        ("unchanged", &v1, &v1, json!({})),
        (
            "2nd run",
            &v1,
            &v2,
            json!({"spec": {"replicas": 3, "template": {"spec": {
                "$setElementOrder/containers": [{"name": "helloworld"}],
                "containers": [{"$setElementOrder/env": [{"name": "A"}],
                    "env": [{"name": "A", "value": "2"}], "name": "helloworld"}]}}}}),
        ),
        (
            "3rd run",
            &v2,
            &v3,
            json!({"metadata": {"labels": null}, "spec": {"template": {"spec": {
                "$setElementOrder/containers": [{"name": "helloworld"}, {"name": "sidecar"}],
                "containers": [
                    {"$setElementOrder/env": [{"name": "B"}],
                     "env": [{"name": "B", "value": "3"}, {"$patch": "delete", "name": "A"}],
                     "name": "helloworld", "ports": null},
                    {"image": "busybox:1.36", "name": "sidecar"}]}}}}),
        ),
    ];
    for (name, original, modified, want) in cases {
        let current = live(original);
        let got = patch("Deployment", original, modified, &current)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(Value::Object(got.clone()), want, "{name}");
        // The apiserver takes the live object to the manifest for every managed field.
        let after = applied("Deployment", &current, &got);
        assert_eq!(
            after["metadata"].get("labels"),
            modified["metadata"].get("labels"),
            "{name}"
        );
        assert_eq!(
            after["spec"]["replicas"],
            modified["spec"]
                .get("replicas")
                .cloned()
                .unwrap_or(json!(1)),
            "{name}"
        );
        let containers = after["spec"]["template"]["spec"]["containers"]
            .as_array()
            .expect("containers");
        let want_containers = modified["spec"]["template"]["spec"]["containers"]
            .as_array()
            .expect("containers");
        assert_eq!(containers.len(), want_containers.len(), "{name}: {after}");
        for (got, want) in containers.iter().zip(want_containers) {
            assert_eq!(got["name"], want["name"], "{name}");
            assert_eq!(got.get("env"), want.get("env"), "{name}");
            assert_eq!(got.get("ports"), want.get("ports"), "{name}");
        }
        // Defaults the server added are kept.
        assert_eq!(containers[0]["imagePullPolicy"], "IfNotPresent", "{name}");
        assert_eq!(after["status"], current["status"], "{name}");
    }
}

#[test]
fn managed_fields_converge_and_others_are_kept() {
    struct Case {
        name: &'static str,
        original: Value,
        modified: Value,
        current: Value,
        want_patch: Value,
        want_after: Value,
    }
    let cases = [
        Case {
            name: "a field set by someone else and never applied is kept",
            original: json!({"kind": "Deployment", "spec": {"paused": false}}),
            modified: json!({"kind": "Deployment", "spec": {"paused": false}}),
            current: json!({"kind": "Deployment", "spec": {"paused": false, "replicas": 5}}),
            want_patch: json!({}),
            want_after: json!({"kind": "Deployment", "spec": {"paused": false, "replicas": 5}}),
        },
        Case {
            name: "a field dropped from the manifest is deleted even if someone changed it",
            original: json!({"kind": "Deployment", "spec": {"replicas": 2}}),
            modified: json!({"kind": "Deployment", "spec": {}}),
            current: json!({"kind": "Deployment", "spec": {"replicas": 5}}),
            want_patch: json!({"spec": {"replicas": null}}),
            want_after: json!({"kind": "Deployment", "spec": {}}),
        },
        Case {
            name: "a field changed by someone else is set back",
            original: json!({"kind": "Deployment", "spec": {"replicas": 2}}),
            modified: json!({"kind": "Deployment", "spec": {"replicas": 2}}),
            current: json!({"kind": "Deployment", "spec": {"replicas": 5}}),
            want_patch: json!({"spec": {"replicas": 2}}),
            want_after: json!({"kind": "Deployment", "spec": {"replicas": 2}}),
        },
        Case {
            name: "without a last-applied configuration nothing is deleted",
            original: json!({}),
            modified: json!({"kind": "ConfigMap", "data": {"a": "1"}}),
            current: json!({"kind": "ConfigMap", "data": {"a": "0", "b": "2"}}),
            want_patch: json!({"data": {"a": "1"}}),
            want_after: json!({"kind": "ConfigMap", "data": {"a": "1", "b": "2"}}),
        },
        Case {
            name: "a map entry removed from the manifest, one added by others kept",
            original: json!({"kind": "ConfigMap", "metadata": {"labels": {"a": "1", "b": "2"}}}),
            modified: json!({"kind": "ConfigMap", "metadata": {"labels": {"a": "1"}}}),
            current: json!({"kind": "ConfigMap", "metadata": {"labels": {"a": "1", "b": "2", "c": "3"}}}),
            want_patch: json!({"metadata": {"labels": {"b": null}}}),
            want_after: json!({"kind": "ConfigMap", "metadata": {"labels": {"a": "1", "c": "3"}}}),
        },
        Case {
            name: "a list without a merge key is replaced whole",
            original: json!({"kind": "Pod", "spec": {"containers": [{"name": "a", "args": ["x", "y"]}]}}),
            modified: json!({"kind": "Pod", "spec": {"containers": [{"name": "a", "args": ["x"]}]}}),
            current: json!({"kind": "Pod", "spec": {"containers": [{"name": "a", "args": ["x", "y"]}]}}),
            want_patch: json!({"spec": {"$setElementOrder/containers": [{"name": "a"}],
                "containers": [{"name": "a", "args": ["x"]}]}}),
            want_after: json!({"kind": "Pod", "spec": {"containers": [{"name": "a", "args": ["x"]}]}}),
        },
        Case {
            name: "a container removed, one added by someone else kept",
            original: json!({"kind": "Pod", "spec": {"containers": [{"name": "a"}, {"name": "b"}]}}),
            modified: json!({"kind": "Pod", "spec": {"containers": [{"name": "a"}]}}),
            current: json!({"kind": "Pod", "spec": {"containers": [{"name": "a"}, {"name": "b"}, {"name": "c"}]}}),
            want_patch: json!({"spec": {"$setElementOrder/containers": [{"name": "a"}],
                "containers": [{"$patch": "delete", "name": "b"}]}}),
            want_after: json!({"kind": "Pod", "spec": {"containers": [{"name": "a"}, {"name": "c"}]}}),
        },
        Case {
            name: "containers reordered",
            original: json!({"kind": "Pod", "spec": {"containers": [{"name": "a"}, {"name": "b"}]}}),
            modified: json!({"kind": "Pod", "spec": {"containers": [{"name": "b"}, {"name": "a"}]}}),
            current: json!({"kind": "Pod", "spec": {"containers": [{"name": "a"}, {"name": "b"}]}}),
            want_patch: json!({"spec": {"$setElementOrder/containers": [{"name": "b"}, {"name": "a"}]}}),
            want_after: json!({"kind": "Pod", "spec": {"containers": [{"name": "b"}, {"name": "a"}]}}),
        },
        Case {
            name: "a new container before a changed one keeps the manifest's order",
            original: json!({"kind": "Pod", "spec": {"containers": [{"name": "b", "image": "1", "args": ["x"]}]}}),
            modified: json!({"kind": "Pod", "spec": {"containers": [{"name": "a"}, {"name": "b", "image": "1"}]}}),
            current: json!({"kind": "Pod", "spec": {"containers": [{"name": "b", "image": "1", "args": ["x"]}]}}),
            want_patch: json!({"spec": {"$setElementOrder/containers": [{"name": "a"}, {"name": "b"}],
                "containers": [{"name": "a"}, {"name": "b", "args": null}]}}),
            want_after: json!({"kind": "Pod", "spec": {"containers": [{"name": "a"}, {"name": "b", "image": "1"}]}}),
        },
        Case {
            name: "ports merge on containerPort, volume mounts on mountPath",
            original: json!({"kind": "Pod", "spec": {"containers": [{"name": "a",
                "ports": [{"containerPort": 80}, {"containerPort": 443}],
                "volumeMounts": [{"name": "v", "mountPath": "/a"}, {"name": "v", "mountPath": "/b"}]}]}}),
            modified: json!({"kind": "Pod", "spec": {"containers": [{"name": "a",
                "ports": [{"containerPort": 443}],
                "volumeMounts": [{"name": "v", "mountPath": "/b"}]}]}}),
            current: json!({"kind": "Pod", "spec": {"containers": [{"name": "a",
                "ports": [{"containerPort": 80, "protocol": "TCP"}, {"containerPort": 443, "protocol": "TCP"}],
                "volumeMounts": [{"name": "v", "mountPath": "/a"}, {"name": "v", "mountPath": "/b"}]}]}}),
            want_patch: json!({"spec": {"$setElementOrder/containers": [{"name": "a"}],
                "containers": [{"name": "a",
                    "$setElementOrder/ports": [{"containerPort": 443}],
                    "ports": [{"$patch": "delete", "containerPort": 80}],
                    "$setElementOrder/volumeMounts": [{"mountPath": "/b"}],
                    "volumeMounts": [{"$patch": "delete", "mountPath": "/a"}]}]}}),
            want_after: json!({"kind": "Pod", "spec": {"containers": [{"name": "a",
                "ports": [{"containerPort": 443, "protocol": "TCP"}],
                "volumeMounts": [{"name": "v", "mountPath": "/b"}]}]}}),
        },
        Case {
            name: "a finalizer removed from a merged primitive list",
            original: json!({"kind": "ConfigMap", "metadata": {"finalizers": ["a", "b"]}}),
            modified: json!({"kind": "ConfigMap", "metadata": {"finalizers": ["a"]}}),
            current: json!({"kind": "ConfigMap", "metadata": {"finalizers": ["a", "b", "c"]}}),
            want_patch: json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["b"],
                "$setElementOrder/finalizers": ["a"]}}),
            want_after: json!({"kind": "ConfigMap", "metadata": {"finalizers": ["a", "c"]}}),
        },
        Case {
            name: "a finalizer added to a merged primitive list",
            original: json!({"kind": "ConfigMap", "metadata": {"finalizers": ["a"]}}),
            modified: json!({"kind": "ConfigMap", "metadata": {"finalizers": ["a", "z"]}}),
            current: json!({"kind": "ConfigMap", "metadata": {"finalizers": ["a"]}}),
            want_patch: json!({"metadata": {"finalizers": ["z"], "$setElementOrder/finalizers": ["a", "z"]}}),
            want_after: json!({"kind": "ConfigMap", "metadata": {"finalizers": ["a", "z"]}}),
        },
        Case {
            name: "a strategy switch drops the defaulted rollingUpdate ($retainKeys)",
            original: json!({"kind": "Deployment", "spec": {"strategy": {"type": "RollingUpdate"}}}),
            modified: json!({"kind": "Deployment", "spec": {"strategy": {"type": "Recreate"}}}),
            current: json!({"kind": "Deployment", "spec": {"strategy": {"type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}}}}),
            want_patch: json!({"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate"}}}),
            want_after: json!({"kind": "Deployment", "spec": {"strategy": {"type": "Recreate"}}}),
        },
        Case {
            name: "a volume's source switched ($retainKeys in the element)",
            original: json!({"kind": "Pod", "spec": {"volumes": [{"name": "v", "emptyDir": {}}]}}),
            modified: json!({"kind": "Pod", "spec": {"volumes": [{"name": "v", "configMap": {"name": "c"}}]}}),
            current: json!({"kind": "Pod", "spec": {"volumes": [{"name": "v", "emptyDir": {}}]}}),
            want_patch: json!({"spec": {"$setElementOrder/volumes": [{"name": "v"}],
                "volumes": [{"$retainKeys": ["configMap", "name"], "configMap": {"name": "c"},
                    "emptyDir": null, "name": "v"}]}}),
            want_after: json!({"kind": "Pod", "spec": {"volumes": [{"name": "v", "configMap": {"name": "c"}}]}}),
        },
        Case {
            name: "a list the live object lacks is sent whole",
            original: json!({"kind": "Pod", "spec": {}}),
            modified: json!({"kind": "Pod", "spec": {"containers": [{"name": "a", "env": [{"name": "X", "value": "1"}]}]}}),
            current: json!({"kind": "Pod", "spec": {"containers": [{"name": "a"}]}}),
            want_patch: json!({"spec": {"$setElementOrder/containers": [{"name": "a"}],
                "containers": [{"name": "a", "env": [{"name": "X", "value": "1"}]}]}}),
            want_after: json!({"kind": "Pod", "spec": {"containers": [{"name": "a", "env": [{"name": "X", "value": "1"}]}]}}),
        },
        Case {
            name: "numbers compare by value",
            original: json!({"kind": "Service", "spec": {"ports": [{"port": 80}]}}),
            modified: json!({"kind": "Service", "spec": {"ports": [{"port": 80.0}]}}),
            current: json!({"kind": "Service", "spec": {"ports": [{"port": 80, "protocol": "TCP"}]}}),
            want_patch: json!({}),
            want_after: json!({"kind": "Service", "spec": {"ports": [{"port": 80, "protocol": "TCP"}]}}),
        },
    ];
    for c in cases {
        let kind = c.current["kind"].as_str().expect("cases name their kind");
        let got = patch(kind, &c.original, &c.modified, &c.current)
            .unwrap_or_else(|e| panic!("{}: {e}", c.name));
        assert_eq!(Value::Object(got.clone()), c.want_patch, "{}", c.name);
        assert_eq!(applied(kind, &c.current, &got), c.want_after, "{}", c.name);
    }
}

#[test]
fn lists_without_merge_keys_are_errors() {
    let modified = json!({"spec": {"containers": [{"image": "x"}]}});
    let current = json!({"spec": {"containers": [{"name": "a"}]}});
    assert_eq!(
        patch("Pod", &json!({}), &modified, &current),
        Err(Error::MissingMergeKey {
            path: "spec.containers[0]".into(),
            key: "name"
        })
    );
    let modified = json!({"spec": {"containers": ["a"]}});
    assert_eq!(
        patch("Pod", &json!({}), &modified, &current),
        Err(Error::NotAnObject {
            path: "spec.containers[0]".into(),
            key: "name"
        })
    );
}
