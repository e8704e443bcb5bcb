//! Kubernetes defaulting per kind, applied to the JSON of an object before validation.
//!
//! Each rule follows a Kubernetes defaulter (`SetDefaults_PodSpec`, `SetDefaults_Container`,
//! `SetDefaults_Deployment`, `SetDefaults_Service`, …): a field is filled only when it is
//! absent (or `null`), so applying the defaults twice changes nothing. Values of the wrong
//! JSON shape are left alone for validation to report.

use serde_json::{json, Map, Value};

use crate::resource::Resource;

/// Fills the fields Kubernetes defaults (e.g. a Deployment's strategy).
pub fn apply_defaults(resource: &Resource, obj: &mut Value) {
    match (resource.group, resource.kind) {
        ("", "Pod") => pod(obj),
        ("", "Service") => service(obj),
        ("", "Namespace") => namespace(obj),
        ("", "Secret") => secret(obj),
        ("", "Endpoints") => endpoints(obj),
        ("", "Node") => node(obj),
        ("apps", "Deployment") => deployment(obj),
        ("apps", "ReplicaSet") => replica_set(obj),
        ("apps", "DaemonSet") => daemon_set(obj),
        ("apps", "StatefulSet") => stateful_set(obj),
        _ => {}
    }
}

/// The object at `key`, created empty when absent or null; `None` when `value` is not an
/// object or `key` holds something else.
fn object_at<'a>(value: &'a mut Value, key: &str) -> Option<&'a mut Map<String, Value>> {
    let map = value.as_object_mut()?;
    let entry = map.entry(key).or_insert(Value::Null);
    if entry.is_null() {
        *entry = json!({});
    }
    entry.as_object_mut()
}

/// Sets `key` to `default` when it is absent or null.
fn set_default(map: &mut Map<String, Value>, key: &str, default: Value) {
    let entry = map.entry(key).or_insert(Value::Null);
    if entry.is_null() {
        *entry = default;
    }
}

/// Runs `f` on every object in the array at `key`, if there is one.
fn each(map: &mut Map<String, Value>, key: &str, mut f: impl FnMut(&mut Map<String, Value>)) {
    if let Some(items) = map.get_mut(key).and_then(Value::as_array_mut) {
        for item in items.iter_mut().filter_map(Value::as_object_mut) {
            f(item);
        }
    }
}

/// `SetDefaults_Pod` plus the pod spec: pod-only rules (service links, requests from
/// limits, host-network ports) then everything a template also gets.
fn pod(obj: &mut Value) {
    let Some(spec) = object_at(obj, "spec") else {
        return;
    };
    set_default(spec, "enableServiceLinks", json!(true));
    let host_network = spec.get("hostNetwork").and_then(Value::as_bool) == Some(true);
    for key in ["containers", "initContainers"] {
        each(spec, key, |container| {
            requests_from_limits(container);
            if host_network {
                each(container, "ports", |port| {
                    if port.get("hostPort").and_then(Value::as_i64).unwrap_or(0) == 0 {
                        if let Some(container_port) = port.get("containerPort").cloned() {
                            port.insert("hostPort".into(), container_port);
                        }
                    }
                });
            }
        });
    }
    pod_spec(spec);
}

/// A container's limits become its requests for resources it does not request.
fn requests_from_limits(container: &mut Map<String, Value>) {
    let Some(limits) = container
        .get("resources")
        .and_then(|r| r.get("limits"))
        .and_then(Value::as_object)
        .cloned()
    else {
        return;
    };
    let Some(resources) = container.get_mut("resources") else {
        return;
    };
    let Some(requests) = object_at(resources, "requests") else {
        return;
    };
    for (name, quantity) in limits {
        requests.entry(name).or_insert(quantity);
    }
}

/// `SetDefaults_PodSpec` and the defaulters of what it holds (containers, probes,
/// volumes), for pods and pod templates alike.
fn pod_spec(spec: &mut Map<String, Value>) {
    set_default(spec, "dnsPolicy", json!("ClusterFirst"));
    set_default(spec, "restartPolicy", json!("Always"));
    set_default(spec, "securityContext", json!({}));
    set_default(spec, "terminationGracePeriodSeconds", json!(30));
    set_default(spec, "schedulerName", json!("default-scheduler"));
    for key in ["containers", "initContainers", "ephemeralContainers"] {
        each(spec, key, container);
    }
    each(spec, "volumes", volume);
}

/// `SetDefaults_Container` and its ports, probes and env.
fn container(c: &mut Map<String, Value>) {
    if c.get("imagePullPolicy").is_none_or(Value::is_null) {
        let image = c.get("image").and_then(Value::as_str).unwrap_or("");
        let policy = if image_tag(image) == "latest" {
            "Always"
        } else {
            "IfNotPresent"
        };
        c.insert("imagePullPolicy".into(), json!(policy));
    }
    set_default(c, "terminationMessagePath", json!("/dev/termination-log"));
    set_default(c, "terminationMessagePolicy", json!("File"));
    each(c, "ports", |port| {
        set_default(port, "protocol", json!("TCP"))
    });
    for probe_key in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if let Some(probe) = c.get_mut(probe_key).and_then(Value::as_object_mut) {
            set_default(probe, "timeoutSeconds", json!(1));
            set_default(probe, "periodSeconds", json!(10));
            set_default(probe, "successThreshold", json!(1));
            set_default(probe, "failureThreshold", json!(3));
            http_get(probe);
        }
    }
    if let Some(lifecycle) = c.get_mut("lifecycle").and_then(Value::as_object_mut) {
        for hook in ["postStart", "preStop"] {
            if let Some(handler) = lifecycle.get_mut(hook).and_then(Value::as_object_mut) {
                http_get(handler);
            }
        }
    }
    each(c, "env", |var| {
        if let Some(field_ref) = var
            .get_mut("valueFrom")
            .and_then(|v| v.get_mut("fieldRef"))
            .and_then(Value::as_object_mut)
        {
            set_default(field_ref, "apiVersion", json!("v1"));
        }
    });
}

/// `SetDefaults_HTTPGetAction`: path `/`, scheme HTTP.
fn http_get(handler: &mut Map<String, Value>) {
    if let Some(http) = handler.get_mut("httpGet").and_then(Value::as_object_mut) {
        set_default(http, "path", json!("/"));
        set_default(http, "scheme", json!("HTTP"));
    }
}

/// The tag of an image reference as Kubernetes' image parser sees it: `latest` when
/// there is neither tag nor digest, empty when there is only a digest.
fn image_tag(image: &str) -> &str {
    let (name, digest) = match image.split_once('@') {
        Some((name, _)) => (name, true),
        None => (image, false),
    };
    let last_segment = name.rsplit('/').next().unwrap_or(name);
    match last_segment.rsplit_once(':') {
        Some((_, tag)) => tag,
        None if digest => "",
        None => "latest",
    }
}

/// `SetDefaults_Volume` and the defaulters of its sources.
fn volume(v: &mut Map<String, Value>) {
    let has_source = v.iter().any(|(k, val)| k != "name" && !val.is_null());
    if !has_source {
        v.insert("emptyDir".into(), json!({}));
    }
    for source in ["secret", "configMap", "downwardAPI", "projected"] {
        if let Some(s) = v.get_mut(source).and_then(Value::as_object_mut) {
            set_default(s, "defaultMode", json!(420));
        }
    }
    if let Some(host_path) = v.get_mut("hostPath").and_then(Value::as_object_mut) {
        set_default(host_path, "type", json!(""));
    }
}

/// The pod template of a workload.
fn template(spec: &mut Map<String, Value>) {
    let Some(template) = spec.get_mut("template") else {
        return;
    };
    if let Some(pod_spec_map) = template.get_mut("spec").and_then(Value::as_object_mut) {
        pod_spec(pod_spec_map);
    }
}

/// `SetDefaults_Deployment`: 1 replica, RollingUpdate 25%/25%, 10 old ReplicaSets kept,
/// 600s to make progress.
fn deployment(obj: &mut Value) {
    let Some(spec) = object_at(obj, "spec") else {
        return;
    };
    set_default(spec, "replicas", json!(1));
    if let Some(strategy) = object_at_map(spec, "strategy") {
        set_default(strategy, "type", json!("RollingUpdate"));
        if strategy.get("type").and_then(Value::as_str) == Some("RollingUpdate") {
            if let Some(rolling) = object_at_map(strategy, "rollingUpdate") {
                set_default(rolling, "maxUnavailable", json!("25%"));
                set_default(rolling, "maxSurge", json!("25%"));
            }
        }
    }
    set_default(spec, "revisionHistoryLimit", json!(10));
    set_default(spec, "progressDeadlineSeconds", json!(600));
    template(spec);
}

/// `SetDefaults_ReplicaSet`: 1 replica.
fn replica_set(obj: &mut Value) {
    let Some(spec) = object_at(obj, "spec") else {
        return;
    };
    set_default(spec, "replicas", json!(1));
    template(spec);
}

/// `SetDefaults_DaemonSet`: RollingUpdate with maxUnavailable 1 and maxSurge 0, 10
/// revisions kept.
fn daemon_set(obj: &mut Value) {
    let Some(spec) = object_at(obj, "spec") else {
        return;
    };
    if let Some(strategy) = object_at_map(spec, "updateStrategy") {
        set_default(strategy, "type", json!("RollingUpdate"));
        if strategy.get("type").and_then(Value::as_str) == Some("RollingUpdate") {
            if let Some(rolling) = object_at_map(strategy, "rollingUpdate") {
                set_default(rolling, "maxUnavailable", json!(1));
                set_default(rolling, "maxSurge", json!(0));
            }
        }
    }
    set_default(spec, "revisionHistoryLimit", json!(10));
    template(spec);
}

/// `SetDefaults_StatefulSet`: OrderedReady, RollingUpdate from partition 0, claims
/// retained, 1 replica, 10 revisions kept.
fn stateful_set(obj: &mut Value) {
    let Some(spec) = object_at(obj, "spec") else {
        return;
    };
    set_default(spec, "podManagementPolicy", json!("OrderedReady"));
    if let Some(strategy) = object_at_map(spec, "updateStrategy") {
        if strategy.get("type").is_none_or(Value::is_null) {
            strategy.insert("type".into(), json!("RollingUpdate"));
            set_default(strategy, "rollingUpdate", json!({}));
        }
        if strategy.get("type").and_then(Value::as_str) == Some("RollingUpdate") {
            if let Some(rolling) = strategy
                .get_mut("rollingUpdate")
                .and_then(Value::as_object_mut)
            {
                set_default(rolling, "partition", json!(0));
            }
        }
    }
    if let Some(retention) = object_at_map(spec, "persistentVolumeClaimRetentionPolicy") {
        set_default(retention, "whenDeleted", json!("Retain"));
        set_default(retention, "whenScaled", json!("Retain"));
    }
    set_default(spec, "replicas", json!(1));
    set_default(spec, "revisionHistoryLimit", json!(10));
    template(spec);
}

/// Like [`object_at`], on a map.
fn object_at_map<'a>(
    map: &'a mut Map<String, Value>,
    key: &str,
) -> Option<&'a mut Map<String, Value>> {
    let entry = map.entry(key).or_insert(Value::Null);
    if entry.is_null() {
        *entry = json!({});
    }
    entry.as_object_mut()
}

/// `SetDefaults_Service`, plus the single-stack IPv4 family the apiserver assigns.
fn service(obj: &mut Value) {
    let Some(spec) = object_at(obj, "spec") else {
        return;
    };
    set_default(spec, "sessionAffinity", json!("None"));
    match spec.get("sessionAffinity").and_then(Value::as_str) {
        Some("None") => {
            spec.remove("sessionAffinityConfig");
        }
        Some("ClientIP") => {
            let has_timeout = spec
                .get("sessionAffinityConfig")
                .and_then(|c| c.get("clientIP"))
                .and_then(|c| c.get("timeoutSeconds"))
                .is_some_and(|t| !t.is_null());
            if !has_timeout {
                spec.insert(
                    "sessionAffinityConfig".into(),
                    json!({"clientIP": {"timeoutSeconds": 10800}}),
                );
            }
        }
        _ => {}
    }
    set_default(spec, "type", json!("ClusterIP"));
    each(spec, "ports", |port| {
        set_default(port, "protocol", json!("TCP"));
        let unset = match port.get("targetPort") {
            None | Some(Value::Null) => true,
            Some(Value::Number(n)) => n.as_i64() == Some(0),
            Some(Value::String(s)) => s.is_empty(),
            Some(_) => false,
        };
        if unset {
            if let Some(p) = port.get("port").cloned() {
                port.insert("targetPort".into(), p);
            }
        }
    });
    let svc_type = spec
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let has_external_ips = spec
        .get("externalIPs")
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty());
    let externally_accessible = svc_type == "LoadBalancer"
        || svc_type == "NodePort"
        || (svc_type == "ClusterIP" && has_external_ips);
    if externally_accessible {
        set_default(spec, "externalTrafficPolicy", json!("Cluster"));
    }
    if matches!(svc_type.as_str(), "ClusterIP" | "NodePort" | "LoadBalancer") {
        set_default(spec, "internalTrafficPolicy", json!("Cluster"));
    }
    if svc_type == "LoadBalancer" {
        set_default(spec, "allocateLoadBalancerNodePorts", json!(true));
    }
    if svc_type != "ExternalName" {
        set_default(spec, "ipFamilyPolicy", json!("SingleStack"));
        set_default(spec, "ipFamilies", json!(["IPv4"]));
    }
}

/// `SetDefaults_Namespace` and its status: the `kubernetes.io/metadata.name` label and
/// phase Active.
fn namespace(obj: &mut Value) {
    let name = obj
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .map(str::to_string);
    if let Some(name) = name {
        if let Some(labels) = object_at(obj, "metadata").and_then(|m| object_at_map(m, "labels")) {
            labels.insert("kubernetes.io/metadata.name".into(), json!(name));
        }
    }
    if let Some(status) = object_at(obj, "status") {
        set_default(status, "phase", json!("Active"));
    }
}

/// `SetDefaults_Secret` (type Opaque), and `stringData` merged into `data` as the
/// apiserver does when it converts a written Secret.
fn secret(obj: &mut Value) {
    let Some(map) = obj.as_object_mut() else {
        return;
    };
    set_default(map, "type", json!("Opaque"));
    let Some(Value::Object(string_data)) = map.remove("stringData") else {
        return;
    };
    let Some(data) = object_at_map(map, "data") else {
        return;
    };
    for (key, value) in string_data {
        if let Value::String(s) = value {
            data.insert(key, json!(base64_encode(s.as_bytes())));
        }
    }
}

/// Standard base64 with padding, as Secret data is written.
fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// `SetDefaults_Endpoints`: ports default to TCP.
fn endpoints(obj: &mut Value) {
    let Some(map) = obj.as_object_mut() else {
        return;
    };
    each(map, "subsets", |subset| {
        each(subset, "ports", |port| {
            set_default(port, "protocol", json!("TCP"))
        })
    });
}

/// `SetDefaults_NodeStatus`: allocatable is the capacity unless reported.
fn node(obj: &mut Value) {
    let Some(status) = obj.get_mut("status").and_then(Value::as_object_mut) else {
        return;
    };
    if let Some(capacity) = status.get("capacity").filter(|c| c.is_object()).cloned() {
        set_default(status, "allocatable", capacity);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resource(group: &str, plural: &str) -> &'static Resource {
        crate::resource::find(group, "v1", plural).expect("known kind")
    }

    fn defaulted(group: &str, plural: &str, mut v: Value) -> Value {
        apply_defaults(resource(group, plural), &mut v);
        v
    }

    #[test]
    fn pod_defaults() {
        let pod = defaulted(
            "",
            "pods",
            json!({"spec": {
                "containers": [
                    {"name": "a", "image": "nginx", "ports": [{"containerPort": 80}],
                     "livenessProbe": {"httpGet": {"port": 80}},
                     "resources": {"limits": {"cpu": "1"}, "requests": {"memory": "1Mi"}}},
                    {"name": "b", "image": "registry:5000/app:1.2"},
                    {"name": "c", "image": "app@sha256:abc"}
                ],
                "volumes": [{"name": "v"}, {"name": "s", "secret": {"secretName": "x"}}]
            }}),
        );
        let spec = &pod["spec"];
        let cases = [
            (
                "restartPolicy",
                spec["restartPolicy"].clone(),
                json!("Always"),
            ),
            (
                "dnsPolicy",
                spec["dnsPolicy"].clone(),
                json!("ClusterFirst"),
            ),
            (
                "schedulerName",
                spec["schedulerName"].clone(),
                json!("default-scheduler"),
            ),
            (
                "grace",
                spec["terminationGracePeriodSeconds"].clone(),
                json!(30),
            ),
            (
                "securityContext",
                spec["securityContext"].clone(),
                json!({}),
            ),
            (
                "serviceLinks",
                spec["enableServiceLinks"].clone(),
                json!(true),
            ),
            (
                "untagged pulls always",
                spec["containers"][0]["imagePullPolicy"].clone(),
                json!("Always"),
            ),
            (
                "tagged pulls if absent",
                spec["containers"][1]["imagePullPolicy"].clone(),
                json!("IfNotPresent"),
            ),
            (
                "digest pulls if absent",
                spec["containers"][2]["imagePullPolicy"].clone(),
                json!("IfNotPresent"),
            ),
            (
                "message path",
                spec["containers"][0]["terminationMessagePath"].clone(),
                json!("/dev/termination-log"),
            ),
            (
                "message policy",
                spec["containers"][0]["terminationMessagePolicy"].clone(),
                json!("File"),
            ),
            (
                "port protocol",
                spec["containers"][0]["ports"][0]["protocol"].clone(),
                json!("TCP"),
            ),
            (
                "probe",
                spec["containers"][0]["livenessProbe"].clone(),
                json!({"httpGet": {"port": 80, "path": "/", "scheme": "HTTP"}, "timeoutSeconds": 1, "periodSeconds": 10, "successThreshold": 1, "failureThreshold": 3}),
            ),
            (
                "requests from limits",
                spec["containers"][0]["resources"]["requests"].clone(),
                json!({"cpu": "1", "memory": "1Mi"}),
            ),
            (
                "empty volume",
                spec["volumes"][0].clone(),
                json!({"name": "v", "emptyDir": {}}),
            ),
            (
                "secret mode",
                spec["volumes"][1]["secret"]["defaultMode"].clone(),
                json!(420),
            ),
        ];
        for (name, got, want) in cases {
            assert_eq!(got, want, "{name}");
        }
        let again = defaulted("", "pods", pod.clone());
        assert_eq!(again, pod, "defaulting twice changes nothing");
    }

    #[test]
    fn workload_defaults() {
        let template =
            json!({"template": {"spec": {"containers": [{"name": "a", "image": "a:1"}]}}});
        let d = defaulted("apps", "deployments", json!({"spec": template.clone()}));
        let rs = defaulted("apps", "replicasets", json!({"spec": template.clone()}));
        let ds = defaulted("apps", "daemonsets", json!({"spec": template.clone()}));
        let sts = defaulted("apps", "statefulsets", json!({"spec": template.clone()}));
        let cases = [
            ("deploy replicas", d["spec"]["replicas"].clone(), json!(1)),
            (
                "deploy strategy",
                d["spec"]["strategy"].clone(),
                json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}}),
            ),
            (
                "deploy history",
                d["spec"]["revisionHistoryLimit"].clone(),
                json!(10),
            ),
            (
                "deploy deadline",
                d["spec"]["progressDeadlineSeconds"].clone(),
                json!(600),
            ),
            (
                "deploy template",
                d["spec"]["template"]["spec"]["restartPolicy"].clone(),
                json!("Always"),
            ),
            ("rs replicas", rs["spec"]["replicas"].clone(), json!(1)),
            (
                "rs template",
                rs["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"].clone(),
                json!("IfNotPresent"),
            ),
            (
                "ds strategy",
                ds["spec"]["updateStrategy"].clone(),
                json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}}),
            ),
            (
                "ds history",
                ds["spec"]["revisionHistoryLimit"].clone(),
                json!(10),
            ),
            (
                "sts policy",
                sts["spec"]["podManagementPolicy"].clone(),
                json!("OrderedReady"),
            ),
            (
                "sts strategy",
                sts["spec"]["updateStrategy"].clone(),
                json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 0}}),
            ),
            ("sts replicas", sts["spec"]["replicas"].clone(), json!(1)),
            (
                "sts retention",
                sts["spec"]["persistentVolumeClaimRetentionPolicy"].clone(),
                json!({"whenDeleted": "Retain", "whenScaled": "Retain"}),
            ),
        ];
        for (name, got, want) in cases {
            assert_eq!(got, want, "{name}");
        }
        let recreate = defaulted(
            "apps",
            "deployments",
            json!({"spec": {"strategy": {"type": "Recreate"}}}),
        );
        assert_eq!(
            recreate["spec"]["strategy"],
            json!({"type": "Recreate"}),
            "Recreate gets no rollingUpdate"
        );
        let kept = defaulted("apps", "deployments", json!({"spec": {"replicas": 0}}));
        assert_eq!(kept["spec"]["replicas"], json!(0), "explicit zero is kept");
    }

    #[test]
    fn service_and_other_defaults() {
        let svc = defaulted(
            "",
            "services",
            json!({"spec": {"ports": [{"port": 80}, {"port": 443, "targetPort": "https"}]}}),
        );
        let node_port = defaulted(
            "",
            "services",
            json!({"spec": {"type": "NodePort", "ports": [{"port": 80}]}}),
        );
        let external = defaulted(
            "",
            "services",
            json!({"spec": {"type": "ExternalName", "externalName": "example.com"}}),
        );
        let sticky = defaulted(
            "",
            "services",
            json!({"spec": {"sessionAffinity": "ClientIP"}}),
        );
        let ns = defaulted("", "namespaces", json!({"metadata": {"name": "team"}}));
        let secret = defaulted(
            "",
            "secrets",
            json!({"stringData": {"user": "admin", "k": "ab"}}),
        );
        let node = defaulted("", "nodes", json!({"status": {"capacity": {"cpu": "2"}}}));
        let ep = defaulted(
            "",
            "endpoints",
            json!({"subsets": [{"ports": [{"port": 80}]}]}),
        );
        let cases = [
            ("type", svc["spec"]["type"].clone(), json!("ClusterIP")),
            (
                "affinity",
                svc["spec"]["sessionAffinity"].clone(),
                json!("None"),
            ),
            (
                "protocol",
                svc["spec"]["ports"][0]["protocol"].clone(),
                json!("TCP"),
            ),
            (
                "target port",
                svc["spec"]["ports"][0]["targetPort"].clone(),
                json!(80),
            ),
            (
                "named target port kept",
                svc["spec"]["ports"][1]["targetPort"].clone(),
                json!("https"),
            ),
            (
                "internal policy",
                svc["spec"]["internalTrafficPolicy"].clone(),
                json!("Cluster"),
            ),
            (
                "no external policy on ClusterIP",
                svc["spec"]["externalTrafficPolicy"].clone(),
                Value::Null,
            ),
            (
                "families",
                svc["spec"]["ipFamilies"].clone(),
                json!(["IPv4"]),
            ),
            (
                "family policy",
                svc["spec"]["ipFamilyPolicy"].clone(),
                json!("SingleStack"),
            ),
            (
                "nodeport external policy",
                node_port["spec"]["externalTrafficPolicy"].clone(),
                json!("Cluster"),
            ),
            (
                "external name has no policies",
                external["spec"]["internalTrafficPolicy"].clone(),
                Value::Null,
            ),
            (
                "external name has no families",
                external["spec"]["ipFamilies"].clone(),
                Value::Null,
            ),
            (
                "client ip timeout",
                sticky["spec"]["sessionAffinityConfig"].clone(),
                json!({"clientIP": {"timeoutSeconds": 10800}}),
            ),
            (
                "namespace phase",
                ns["status"]["phase"].clone(),
                json!("Active"),
            ),
            (
                "namespace label",
                ns["metadata"]["labels"]["kubernetes.io/metadata.name"].clone(),
                json!("team"),
            ),
            ("secret type", secret["type"].clone(), json!("Opaque")),
            (
                "secret string data",
                secret["data"].clone(),
                json!({"user": "YWRtaW4=", "k": "YWI="}),
            ),
            (
                "string data removed",
                secret["stringData"].clone(),
                Value::Null,
            ),
            (
                "allocatable",
                node["status"]["allocatable"].clone(),
                json!({"cpu": "2"}),
            ),
            (
                "endpoint protocol",
                ep["subsets"][0]["ports"][0]["protocol"].clone(),
                json!("TCP"),
            ),
        ];
        for (name, got, want) in cases {
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn odd_shapes_do_not_panic() {
        for r in crate::resource::RESOURCES {
            for v in [
                json!(null),
                json!([]),
                json!({"spec": 3}),
                json!({"spec": {"containers": "x", "template": 1}}),
            ] {
                let mut v = v;
                apply_defaults(r, &mut v);
            }
        }
    }

    #[test]
    fn image_tags() {
        let cases = [
            ("nginx", "latest"),
            ("nginx:1.25", "1.25"),
            ("localhost:5000/app", "latest"),
            ("localhost:5000/app:v2", "v2"),
            ("app@sha256:abc", ""),
            ("app:v1@sha256:abc", "v1"),
        ];
        for (image, want) in cases {
            assert_eq!(image_tag(image), want, "{image}");
        }
    }
}
