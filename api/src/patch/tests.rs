//! Tests of the three patch types through the public functions.

use serde_json::{json, Value};

use super::*;
use crate::resource::RESOURCES;

fn resource(kind: &str) -> &'static Resource {
    RESOURCES
        .iter()
        .find(|r| r.kind == kind)
        .expect("test kinds are in the resource table")
}

/// Fails the test if any key of `value` is a patch directive.
fn assert_no_directives(value: &Value, path: &str, case: &str) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                assert!(
                    !key.starts_with('$'),
                    "{case}: directive {key} left at {path}"
                );
                assert_no_directives(v, &format!("{path}.{key}"), case);
            }
        }
        Value::Array(list) => {
            for (i, v) in list.iter().enumerate() {
                assert_no_directives(v, &format!("{path}[{i}]"), case);
            }
        }
        _ => {}
    }
}

fn smp(case: &str, kind: &str, target: &Value, patch: &Value) -> Value {
    let out = strategic_merge_patch(resource(kind), target, patch)
        .unwrap_or_else(|e| panic!("{case}: unexpected error: {e}"));
    assert_no_directives(&out, "", case);
    out
}

/// A Deployment as stored after a first `kubectl apply` and some defaulting.
fn deployment() -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "helloworld",
            "namespace": "default",
            "uid": "6c1d4e1c-0000-4000-8000-000000000001",
            "resourceVersion": "12",
            "generation": 1,
            "labels": {"app": "helloworld", "tier": "web"},
            "annotations": {
                "deployment.kubernetes.io/revision": "1",
                "kubectl.kubernetes.io/last-applied-configuration": "{\"run\":1}"
            }
        },
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "helloworld"}},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}
            },
            "template": {
                "metadata": {"labels": {"app": "helloworld"}},
                "spec": {
                    "containers": [{
                        "name": "helloworld",
                        "image": "img:1.0",
                        "imagePullPolicy": "IfNotPresent",
                        "env": [{"name": "A", "value": "1"}],
                        "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                        "resources": {},
                        "terminationMessagePath": "/dev/termination-log"
                    }],
                    "restartPolicy": "Always",
                    "dnsPolicy": "ClusterFirst",
                    "terminationGracePeriodSeconds": 30
                }
            }
        },
        "status": {
            "observedGeneration": 1,
            "replicas": 2,
            "conditions": [{"type": "Available", "status": "True"}]
        }
    })
}

fn pod(containers: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", "namespace": "default"},
        "spec": {"containers": containers}
    })
}

fn names(list: &Value) -> Vec<&str> {
    list.as_array()
        .expect("a list")
        .iter()
        .map(|c| c["name"].as_str().expect("named element"))
        .collect()
}

#[test]
fn strategic_merge_patch_applies_kubectl_bodies_in_sequence() {
    // The bodies below are the ones recorded from kubectl 1.32 (kubectl-contract.md A5.3).
    let apply2 = json!({
        "metadata": {"annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{\"run\":2}"}},
        "spec": {"replicas": 3, "template": {"spec": {
            "$setElementOrder/containers": [{"name": "helloworld"}],
            "containers": [{
                "$setElementOrder/env": [{"name": "A"}],
                "env": [{"name": "A", "value": "2"}],
                "name": "helloworld"
            }]
        }}}
    });
    let apply3 = json!({
        "metadata": {
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{\"run\":3}"},
            "labels": null
        },
        "spec": {"template": {"spec": {
            "$setElementOrder/containers": [{"name": "helloworld"}, {"name": "sidecar"}],
            "containers": [
                {
                    "$setElementOrder/env": [{"name": "B"}],
                    "env": [{"name": "B", "value": "3"}, {"$patch": "delete", "name": "A"}],
                    "name": "helloworld",
                    "ports": null
                },
                {"image": "busybox:1.36", "name": "sidecar"}
            ]
        }}}
    });
    let set_image = json!({"spec": {"template": {"spec": {
        "$setElementOrder/containers": [{"name": "helloworld"}],
        "containers": [{"image": "img:1.1", "name": "helloworld"}]
    }}}});
    let restart = json!({"spec": {"template": {"metadata": {"annotations": {
        "kubectl.kubernetes.io/restartedAt": "2026-11-26T23:55:19Z"
    }}}}});

    let mut after2 = deployment();
    after2["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"] =
        json!("{\"run\":2}");
    after2["spec"]["replicas"] = json!(3);
    after2["spec"]["template"]["spec"]["containers"][0]["env"] =
        json!([{"name": "A", "value": "2"}]);

    let mut after3 = after2.clone();
    after3["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"] =
        json!("{\"run\":3}");
    let meta = after3["metadata"]
        .as_object_mut()
        .expect("metadata is an object");
    meta.remove("labels");
    let web = after3["spec"]["template"]["spec"]["containers"][0]
        .as_object_mut()
        .expect("container is an object");
    web.remove("ports");
    web.insert("env".into(), json!([{"name": "B", "value": "3"}]));
    after3["spec"]["template"]["spec"]["containers"]
        .as_array_mut()
        .expect("containers is a list")
        .push(json!({"image": "busybox:1.36", "name": "sidecar"}));

    let mut after_image = after3.clone();
    after_image["spec"]["template"]["spec"]["containers"][0]["image"] = json!("img:1.1");

    let mut after_restart = after_image.clone();
    after_restart["spec"]["template"]["metadata"]["annotations"] =
        json!({"kubectl.kubernetes.io/restartedAt": "2026-11-26T23:55:19Z"});

    let steps = [
        ("apply, 2nd run", apply2, after2),
        ("apply, 3rd run", apply3, after3),
        ("set image", set_image, after_image),
        ("rollout restart", restart, after_restart),
    ];
    let mut current = deployment();
    for (name, patch, want) in steps {
        current = smp(name, "Deployment", &current, &patch);
        assert_eq!(current, want, "{name}");
    }
}

#[test]
fn strategic_merge_patch_follows_kubernetes_semantics() {
    let containers_ab = json!([
        {"name": "a", "image": "a:1"},
        {"name": "b", "image": "b:1"}
    ]);
    let cases: Vec<(&str, &str, Value, Value, Value)> = vec![
        (
            "containers merge by name",
            "Pod",
            pod(containers_ab.clone()),
            json!({"spec": {"containers": [{"name": "b", "image": "b:2"}]}}),
            pod(json!([{"name": "a", "image": "a:1"}, {"name": "b", "image": "b:2"}])),
        ),
        (
            "a new container goes before live-only ones (Kubernetes order without $setElementOrder)",
            "Pod",
            pod(containers_ab.clone()),
            json!({"spec": {"containers": [{"name": "c", "image": "c:1"}]}}),
            pod(json!([
                {"name": "c", "image": "c:1"},
                {"name": "a", "image": "a:1"},
                {"name": "b", "image": "b:1"}
            ])),
        ),
        (
            "patch order wins over live order for patched elements",
            "Pod",
            pod(json!([{"name": "a"}, {"name": "b", "image": "b"}, {"name": "c"}])),
            json!({"spec": {"containers": [{"name": "c", "image": "c"}, {"name": "a", "image": "a"}]}}),
            pod(json!([
                {"name": "b", "image": "b"},
                {"name": "c", "image": "c"},
                {"name": "a", "image": "a"}
            ])),
        ),
        (
            "$patch: delete removes an env entry",
            "Pod",
            pod(json!([{"name": "a", "env": [{"name": "X", "value": "1"}, {"name": "Y", "value": "2"}]}])),
            json!({"spec": {"containers": [{"name": "a", "env": [{"name": "X", "$patch": "delete"}]}]}}),
            pod(json!([{"name": "a", "env": [{"name": "Y", "value": "2"}]}])),
        ),
        (
            "$patch: delete removes every element with the key",
            "Pod",
            pod(json!([{"name": "a", "env": [{"name": "X"}, {"name": "Y"}, {"name": "X", "value": "dup"}]}])),
            json!({"spec": {"containers": [{"name": "a", "env": [{"name": "X", "$patch": "delete"}]}]}}),
            pod(json!([{"name": "a", "env": [{"name": "Y"}]}])),
        ),
        (
            "$setElementOrder reorders and adds",
            "Pod",
            pod(json!([{"name": "a"}, {"name": "b"}])),
            json!({"spec": {
                "$setElementOrder/containers": [{"name": "a"}, {"name": "c"}, {"name": "b"}],
                "containers": [{"name": "c", "image": "c"}]
            }}),
            pod(json!([{"name": "a"}, {"name": "c", "image": "c"}, {"name": "b"}])),
        ),
        (
            "$setElementOrder without a patch list reorders the live list",
            "Pod",
            pod(json!([{"name": "a"}, {"name": "b"}, {"name": "c"}])),
            json!({"spec": {"$setElementOrder/containers": [{"name": "c"}, {"name": "a"}, {"name": "b"}]}}),
            pod(json!([{"name": "c"}, {"name": "a"}, {"name": "b"}])),
        ),
        (
            "$setElementOrder keeps live-only elements at their live place",
            "Pod",
            pod(json!([{"name": "a"}, {"name": "s"}, {"name": "b"}])),
            json!({"spec": {"$setElementOrder/containers": [{"name": "b"}, {"name": "a"}]}}),
            pod(json!([{"name": "s"}, {"name": "b"}, {"name": "a"}])),
        ),
        (
            "$setElementOrder may name elements the list does not have",
            "Pod",
            pod(json!([{"name": "a"}, {"name": "b"}])),
            json!({"spec": {"$setElementOrder/containers": [{"name": "b"}, {"name": "x"}, {"name": "a"}]}}),
            pod(json!([{"name": "b"}, {"name": "a"}])),
        ),
        (
            "null deletes keys at any depth and is ignored when absent",
            "Pod",
            json!({"metadata": {"name": "p", "labels": {"a": "1", "b": "2"}},
                   "spec": {"nodeSelector": {"disk": "ssd"},
                            "containers": [{"name": "a", "resources": {"limits": {"cpu": "1"}}}]}}),
            json!({"metadata": {"labels": {"a": null, "zzz": null}},
                   "spec": {"nodeSelector": null, "containers": [{"name": "a", "resources": null}]}}),
            json!({"metadata": {"name": "p", "labels": {"b": "2"}},
                   "spec": {"containers": [{"name": "a"}]}}),
        ),
        (
            "Service ports merge on port",
            "Service",
            json!({"spec": {"ports": [
                {"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"},
                {"name": "https", "port": 443, "targetPort": 8443, "protocol": "TCP"}
            ]}}),
            json!({"spec": {"ports": [{"port": 80, "targetPort": 9090}]}}),
            json!({"spec": {"ports": [
                {"name": "http", "port": 80, "targetPort": 9090, "protocol": "TCP"},
                {"name": "https", "port": 443, "targetPort": 8443, "protocol": "TCP"}
            ]}}),
        ),
        (
            "container ports merge on containerPort",
            "Pod",
            pod(json!([{"name": "a", "ports": [
                {"containerPort": 80, "name": "http"},
                {"containerPort": 81, "name": "admin"}
            ]}])),
            json!({"spec": {"containers": [{"name": "a", "ports": [{"containerPort": 81, "name": "metrics"}]}]}}),
            pod(json!([{"name": "a", "ports": [
                {"containerPort": 80, "name": "http"},
                {"containerPort": 81, "name": "metrics"}
            ]}])),
        ),
        (
            "merge keys compare numbers by value",
            "Service",
            json!({"spec": {"ports": [{"port": 80, "name": "http"}]}}),
            json!({"spec": {"ports": [{"port": 80.0, "targetPort": 81}]}}),
            // Matched, so merged; the patch's scalar then wins.
            json!({"spec": {"ports": [{"port": 80.0, "name": "http", "targetPort": 81}]}}),
        ),
        (
            "workload pod templates use the PodSpec rules",
            "StatefulSet",
            json!({"spec": {"template": {"spec": {"volumes": [{"name": "a", "emptyDir": {}}]}},
                            "volumeClaimTemplates": [{"metadata": {"name": "x"}}]}}),
            json!({"spec": {"template": {"spec": {"volumes": [{"name": "b", "emptyDir": {}}]}},
                            "volumeClaimTemplates": [{"metadata": {"name": "y"}}]}}),
            json!({"spec": {"template": {"spec": {"volumes": [
                                {"name": "b", "emptyDir": {}}, {"name": "a", "emptyDir": {}}]}},
                            "volumeClaimTemplates": [{"metadata": {"name": "y"}}]}}),
        ),
        (
            "lists without a strategy are replaced whole",
            "Pod",
            json!({"spec": {"tolerations": [{"key": "a"}, {"key": "b"}],
                            "containers": [{"name": "a", "args": ["x", "y"], "command": ["sh"],
                                            "envFrom": [{"configMapRef": {"name": "m"}}]}]}}),
            json!({"spec": {"tolerations": [{"key": "c"}],
                            "containers": [{"name": "a", "args": ["z"], "command": ["bash"],
                                            "envFrom": [{"secretRef": {"name": "s"}}]}]}}),
            json!({"spec": {"tolerations": [{"key": "c"}],
                            "containers": [{"name": "a", "args": ["z"], "command": ["bash"],
                                            "envFrom": [{"secretRef": {"name": "s"}}]}]}}),
        ),
        (
            "node taints are replaced whole, node conditions merge on type",
            "Node",
            json!({"spec": {"taints": [{"key": "a", "effect": "NoSchedule"}]},
                   "status": {"conditions": [{"type": "Ready", "status": "False"},
                                             {"type": "MemoryPressure", "status": "False"}]}}),
            json!({"spec": {"taints": [{"key": "b", "effect": "NoExecute"}], "unschedulable": true},
                   "status": {"conditions": [{"type": "Ready", "status": "True"}]}}),
            json!({"spec": {"taints": [{"key": "b", "effect": "NoExecute"}], "unschedulable": true},
                   "status": {"conditions": [{"type": "Ready", "status": "True"},
                                             {"type": "MemoryPressure", "status": "False"}]}}),
        ),
        (
            "$patch: replace on a map",
            "Pod",
            json!({"spec": {"nodeSelector": {"zone": "a", "disk": "hdd"}}}),
            json!({"spec": {"nodeSelector": {"$patch": "replace", "disk": "ssd"}}}),
            json!({"spec": {"nodeSelector": {"disk": "ssd"}}}),
        ),
        (
            "$patch: replace on a list",
            "Pod",
            pod(containers_ab.clone()),
            json!({"spec": {"containers": [{"$patch": "replace"}, {"name": "only", "image": "o"}]}}),
            pod(json!([{"name": "only", "image": "o"}])),
        ),
        (
            "$patch: replace with no other element empties the list",
            "Pod",
            pod(containers_ab.clone()),
            json!({"spec": {"containers": [{"$patch": "replace"}]}}),
            pod(json!([])),
        ),
        (
            "$patch: delete on a map leaves it empty, as Kubernetes does",
            "Pod",
            json!({"spec": {"securityContext": {"runAsUser": 1000}, "hostname": "h"}}),
            json!({"spec": {"securityContext": {"$patch": "delete"}}}),
            json!({"spec": {"securityContext": {}, "hostname": "h"}}),
        ),
        (
            "$patch: merge is the default",
            "Pod",
            json!({"spec": {"nodeSelector": {"zone": "a"}}}),
            json!({"spec": {"nodeSelector": {"$patch": "merge", "disk": "ssd"}}}),
            json!({"spec": {"nodeSelector": {"zone": "a", "disk": "ssd"}}}),
        ),
        (
            "$retainKeys drops unlisted live keys",
            "Deployment",
            json!({"spec": {"strategy": {"type": "RollingUpdate",
                                         "rollingUpdate": {"maxSurge": 1}}}}),
            json!({"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate"}}}),
            json!({"spec": {"strategy": {"type": "Recreate"}}}),
        ),
        (
            "$retainKeys inside a merged list element",
            "Pod",
            json!({"spec": {"volumes": [{"name": "data", "emptyDir": {}}]}}),
            json!({"spec": {"volumes": [{"$retainKeys": ["hostPath", "name"],
                                         "name": "data", "hostPath": {"path": "/x"}}]}}),
            json!({"spec": {"volumes": [{"name": "data", "hostPath": {"path": "/x"}}]}}),
        ),
        (
            "finalizers are set-unioned",
            "ConfigMap",
            json!({"metadata": {"finalizers": ["a", "b"]}}),
            json!({"metadata": {"finalizers": ["b", "c"]}}),
            json!({"metadata": {"finalizers": ["a", "b", "c"]}}),
        ),
        (
            "a new finalizer goes before live-only ones (Kubernetes order)",
            "Pod",
            json!({"metadata": {"finalizers": ["a", "b"]}}),
            json!({"metadata": {"finalizers": ["c", "a"]}}),
            json!({"metadata": {"finalizers": ["c", "a", "b"]}}),
        ),
        (
            "$deleteFromPrimitiveList removes values",
            "Pod",
            json!({"metadata": {"finalizers": ["a", "b", "c", "b"]}}),
            json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["b", "zz"]}}),
            json!({"metadata": {"finalizers": ["a", "c"]}}),
        ),
        (
            "kubectl's add-and-delete of a primitive list",
            "Node",
            json!({"spec": {"podCIDRs": ["10.0.1.0/24", "10.0.2.0/24", "10.0.3.0/24", "10.0.4.0/24"]}}),
            json!({"spec": {
                "$setElementOrder/podCIDRs": ["10.0.1.0/24", "10.0.2.0/24", "10.0.5.0/24"],
                "$deleteFromPrimitiveList/podCIDRs": ["10.0.3.0/24"],
                "podCIDRs": ["10.0.5.0/24"]
            }}),
            json!({"spec": {"podCIDRs": ["10.0.1.0/24", "10.0.2.0/24", "10.0.5.0/24", "10.0.4.0/24"]}}),
        ),
        (
            "owner references merge on uid",
            "ReplicaSet",
            json!({"metadata": {"ownerReferences": [{"uid": "u1", "name": "d", "controller": true}]}}),
            json!({"metadata": {"ownerReferences": [{"uid": "u1", "blockOwnerDeletion": true}]}}),
            json!({"metadata": {"ownerReferences": [
                {"uid": "u1", "name": "d", "controller": true, "blockOwnerDeletion": true}]}}),
        ),
        (
            "values new to the object are cleaned of directives",
            "Pod",
            pod(json!([{"name": "a"}])),
            json!({"spec": {
                "initContainers": [{
                    "name": "init",
                    "$setElementOrder/env": [{"name": "X"}],
                    "env": [{"name": "X", "value": "1"}, {"name": "Y", "$patch": "delete"}],
                    "securityContext": {"$patch": "replace", "privileged": false, "runAsUser": null}
                }],
                "nodeSelector": {"$retainKeys": ["disk"], "disk": "ssd"}
            }}),
            json!({"metadata": {"name": "p", "namespace": "default"},
                   "apiVersion": "v1", "kind": "Pod",
                   "spec": {
                       "containers": [{"name": "a"}],
                       "initContainers": [{
                           "name": "init",
                           "env": [{"name": "X", "value": "1"}],
                           "securityContext": {"privileged": false}
                       }],
                       "nodeSelector": {"disk": "ssd"}
                   }}),
        ),
        (
            "a value of another type replaces the live one",
            "ConfigMap",
            json!({"data": {"a": "1"}, "metadata": {"name": "m"}}),
            json!({"data": "oops", "metadata": {"name": ["x"]}}),
            json!({"data": "oops", "metadata": {"name": ["x"]}}),
        ),
        (
            "$patch: replace at the top level",
            "ConfigMap",
            json!({"apiVersion": "v1", "kind": "ConfigMap", "data": {"a": "1"}}),
            json!({"$patch": "replace", "apiVersion": "v1", "kind": "ConfigMap", "data": {"b": "2"}}),
            json!({"apiVersion": "v1", "kind": "ConfigMap", "data": {"b": "2"}}),
        ),
    ];
    for (name, kind, target, patch, want) in cases {
        assert_eq!(smp(name, kind, &target, &patch), want, "{name}");
    }
}

#[test]
fn strategic_merge_patch_leaves_its_inputs_untouched() {
    let target = deployment();
    let patch = json!({"spec": {"replicas": 9, "template": {"spec": {"containers": [
        {"name": "helloworld", "env": [{"name": "A", "$patch": "delete"}]}]}}}});
    let (target_before, patch_before) = (target.clone(), patch.clone());
    let out = smp("inputs", "Deployment", &target, &patch);
    assert_eq!(
        names(&out["spec"]["template"]["spec"]["containers"]),
        ["helloworld"]
    );
    assert_eq!(
        out["spec"]["template"]["spec"]["containers"][0]["env"],
        json!([])
    );
    assert_eq!((target, patch), (target_before, patch_before));
}

#[test]
fn strategic_merge_patch_errors_name_the_path() {
    let containers =
        pod(json!([{"name": "a", "env": [{"name": "X"}], "ports": [{"containerPort": 80}]}]));
    let cases: Vec<(&str, &str, Value, Value, &str)> = vec![
        ("patch is not an object", "Pod", pod(json!([])), json!([1]),
         "a strategic merge patch must be a JSON object"),
        ("target is not an object", "Pod", json!("x"), json!({}),
         "the object to patch must be a JSON object"),
        ("top-level delete", "Pod", pod(json!([])), json!({"$patch": "delete"}),
         "\"$patch\": \"delete\" at the top level of a patch would delete the whole object"),
        ("unknown $patch value", "Pod", containers.clone(),
         json!({"spec": {"nodeSelector": {"$patch": "merge-all"}}}),
         "spec.nodeSelector: unknown \"$patch\" value \"merge-all\"; expected \"merge\", \"replace\" or \"delete\""),
        ("unknown directive", "Pod", containers.clone(),
         json!({"spec": {"$replaceAll/containers": []}}),
         "spec: unknown strategic merge patch directive \"$replaceAll/containers\""),
        ("missing merge key", "Pod", containers.clone(),
         json!({"spec": {"containers": [{"image": "x"}]}}),
         "spec.containers[0]: the list element does not contain its merge key \"name\""),
        ("a container port keyed on port, as a Service port would be", "Pod", containers.clone(),
         json!({"spec": {"containers": [{"name": "a", "ports": [{"port": 80}]}]}}),
         "spec.containers[name=\"a\"].ports[0]: the list element does not contain its merge key \"containerPort\""),
        ("delete without the merge key", "Pod", containers.clone(),
         json!({"spec": {"containers": [{"name": "a", "env": [{"$patch": "delete", "value": "1"}]}]}}),
         "spec.containers[name=\"a\"].env[0]: the list element does not contain its merge key \"name\""),
        ("merge list of strings", "Pod", containers.clone(),
         json!({"spec": {"containers": ["a"]}}),
         "spec.containers[0]: the elements of this list are merged on \"name\" and must be objects"),
        ("delete in a replaced list", "Pod", containers.clone(),
         json!({"spec": {"tolerations": [{"key": "a", "$patch": "delete"}]}}),
         "spec.tolerations[0]: \"$patch\": \"delete\" needs a list that is merged on a key, but this list is replaced as a whole"),
        ("object in a primitive list", "Pod", containers.clone(),
         json!({"metadata": {"finalizers": [{"name": "x"}]}}),
         "metadata.finalizers[0]: this list holds primitive values; objects and lists cannot be merged into it"),
        ("order mismatch", "Pod", containers.clone(),
         json!({"spec": {"$setElementOrder/containers": [{"name": "a"}, {"name": "b"}],
                         "containers": [{"name": "b"}, {"name": "a"}]}}),
         "spec.containers: the elements of the patch list are not in the order given by \"$setElementOrder/containers\""),
        ("patch element missing from the order", "Pod", containers.clone(),
         json!({"spec": {"$setElementOrder/containers": [{"name": "a"}],
                         "containers": [{"name": "c"}]}}),
         "spec.containers: the elements of the patch list are not in the order given by \"$setElementOrder/containers\""),
        ("order list element without the key", "Pod", containers.clone(),
         json!({"spec": {"$setElementOrder/containers": [{"image": "a"}]}}),
         "spec.$setElementOrder/containers[0]: the list element does not contain its merge key \"name\""),
        ("order is not a list", "Pod", containers.clone(),
         json!({"spec": {"$setElementOrder/containers": {"name": "a"}}}),
         "spec: \"$setElementOrder/containers\" must be a list"),
        ("retainKeys misses a patched key", "Deployment", deployment(),
         json!({"spec": {"strategy": {"$retainKeys": ["type"], "type": "RollingUpdate",
                                      "rollingUpdate": {"maxSurge": 2}}}}),
         "spec.strategy: the patch sets \"rollingUpdate\", which is not listed in \"$retainKeys\""),
        ("retainKeys is not a list of names", "Deployment", deployment(),
         json!({"spec": {"strategy": {"$retainKeys": [1]}}}),
         "spec.strategy: \"$retainKeys\" must be a list of field names"),
        ("deleteFromPrimitiveList is not a list", "Pod", containers.clone(),
         json!({"metadata": {"$deleteFromPrimitiveList/finalizers": "a"}}),
         "metadata: \"$deleteFromPrimitiveList/finalizers\" must be a list"),
    ];
    for (name, kind, target, patch, want) in cases {
        match strategic_merge_patch(resource(kind), &target, &patch) {
            Ok(out) => panic!("{name}: expected an error, got {out}"),
            Err(e) => assert_eq!(e.to_string(), want, "{name}"),
        }
    }
}

#[test]
fn json_patch_applies_rfc6902_operations() {
    let target = json!({
        "metadata": {"name": "d", "annotations": {"a": "1", "b": "2"}},
        "spec": {"replicas": 1, "template": {"spec": {"containers": [{"name": "c", "image": "v1"}]}}}
    });
    let cases = [
        (
            "replace",
            json!([{"op": "replace", "path": "/spec/replicas", "value": 4}]),
            json!({"metadata": {"name": "d", "annotations": {"a": "1", "b": "2"}},
                   "spec": {"replicas": 4, "template": {"spec": {"containers": [{"name": "c", "image": "v1"}]}}}}),
        ),
        (
            "add to a map and append to a list",
            json!([
                {"op": "add", "path": "/metadata/labels", "value": {"x": "y"}},
                {"op": "add", "path": "/spec/template/spec/containers/-", "value": {"name": "s"}}
            ]),
            json!({"metadata": {"name": "d", "annotations": {"a": "1", "b": "2"}, "labels": {"x": "y"}},
                   "spec": {"replicas": 1, "template": {"spec": {"containers": [
                       {"name": "c", "image": "v1"}, {"name": "s"}]}}}}),
        ),
        (
            "remove",
            json!([{"op": "remove", "path": "/metadata/annotations/a"}]),
            json!({"metadata": {"name": "d", "annotations": {"b": "2"}},
                   "spec": {"replicas": 1, "template": {"spec": {"containers": [{"name": "c", "image": "v1"}]}}}}),
        ),
        (
            "a passing test, then replace (kubectl rollout undo)",
            json!([
                {"op": "test", "path": "/spec/template/spec/containers/0/image", "value": "v1"},
                {"op": "replace", "path": "/spec/template", "value": {"spec": {"containers": [{"name": "c", "image": "v0"}]}}},
                {"op": "replace", "path": "/metadata/annotations", "value": {"deployment.kubernetes.io/revision": "3"}}
            ]),
            json!({"metadata": {"name": "d", "annotations": {"deployment.kubernetes.io/revision": "3"}},
                   "spec": {"replicas": 1, "template": {"spec": {"containers": [{"name": "c", "image": "v0"}]}}}}),
        ),
        (
            "move and copy",
            json!([
                {"op": "move", "from": "/metadata/annotations/a", "path": "/metadata/annotations/c"},
                {"op": "copy", "from": "/metadata/name", "path": "/metadata/generateName"}
            ]),
            json!({"metadata": {"name": "d", "generateName": "d", "annotations": {"b": "2", "c": "1"}},
                   "spec": {"replicas": 1, "template": {"spec": {"containers": [{"name": "c", "image": "v1"}]}}}}),
        ),
        ("no operations", json!([]), target.clone()),
    ];
    for (name, patch, want) in cases {
        let got = json_patch(&target, &patch).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(got, want, "{name}");
    }
}

#[test]
fn json_patch_errors() {
    let target = json!({"metadata": {"name": "d"}, "spec": {"replicas": 1}});
    let cases = [
        (
            "failing test",
            json!([
                {"op": "replace", "path": "/spec/replicas", "value": 2},
                {"op": "test", "path": "/metadata/name", "value": "other"}
            ]),
            "JSON patch operation 1 (test) failed: the value at \"/metadata/name\" does not match",
        ),
        (
            "remove a missing path",
            json!([{"op": "remove", "path": "/metadata/labels"}]),
            "JSON patch operation 0 (remove) failed at \"/metadata/labels\": path is invalid",
        ),
        (
            "replace through a missing parent",
            json!([{"op": "replace", "path": "/status/replicas", "value": 1}]),
            "JSON patch operation 0 (replace) failed at \"/status/replicas\": path is invalid",
        ),
    ];
    for (name, patch, want) in cases {
        match json_patch(&target, &patch) {
            Ok(out) => panic!("{name}: expected an error, got {out}"),
            Err(e) => assert_eq!(e.to_string(), want, "{name}"),
        }
    }

    let malformed = [
        ("not a list", json!({"op": "add", "path": "/a", "value": 1})),
        ("unknown op", json!([{"op": "frobnicate", "path": "/a"}])),
        ("missing value", json!([{"op": "add", "path": "/a"}])),
    ];
    for (name, patch) in malformed {
        let err = json_patch(&target, &patch).expect_err(name);
        assert!(matches!(err, Error::InvalidJsonPatch(_)), "{name}: {err}");
    }
    let err = json_patch(
        &target,
        &json!([{"op": "test", "path": "/spec/replicas", "value": 5}]),
    )
    .expect_err("failing test");
    assert!(
        matches!(err, Error::JsonPatchTestFailed { index: 0, .. }),
        "typed test failure: {err:?}"
    );
}

#[test]
fn merge_patch_follows_rfc7386() {
    let target = json!({
        "metadata": {"name": "d", "labels": {"app": "web", "env": "dev"}},
        "spec": {"replicas": 1, "template": {"spec": {"containers": [{"name": "a"}, {"name": "b"}]}}}
    });
    let cases = [
        (
            "kubectl label",
            json!({"metadata": {"labels": {"env": "prod"}}}),
            json!({"metadata": {"name": "d", "labels": {"app": "web", "env": "prod"}},
                   "spec": {"replicas": 1, "template": {"spec": {"containers": [{"name": "a"}, {"name": "b"}]}}}}),
        ),
        (
            "kubectl label env- (null deletes)",
            json!({"metadata": {"labels": {"env": null, "absent": null}}}),
            json!({"metadata": {"name": "d", "labels": {"app": "web"}},
                   "spec": {"replicas": 1, "template": {"spec": {"containers": [{"name": "a"}, {"name": "b"}]}}}}),
        ),
        (
            "null deletes a whole map",
            json!({"metadata": {"labels": null}, "spec": {"replicas": 5}}),
            json!({"metadata": {"name": "d"},
                   "spec": {"replicas": 5, "template": {"spec": {"containers": [{"name": "a"}, {"name": "b"}]}}}}),
        ),
        (
            "lists are replaced, unlike a strategic merge",
            json!({"spec": {"template": {"spec": {"containers": [{"name": "c"}]}}}}),
            json!({"metadata": {"name": "d", "labels": {"app": "web", "env": "dev"}},
                   "spec": {"replicas": 1, "template": {"spec": {"containers": [{"name": "c"}]}}}}),
        ),
        ("empty patch", json!({}), target.clone()),
    ];
    for (name, patch, want) in cases {
        let got = merge_patch(&target, &patch).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(got, want, "{name}");
    }
    let err = merge_patch(&target, &json!([{"op": "add"}])).expect_err("array patch");
    assert_eq!(err.to_string(), "a merge patch must be a JSON object");
}
