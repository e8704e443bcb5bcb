//! Per-kind rules of the registry: what create and update reset, how deletion proceeds
//! (finalizers, pods' grace periods, namespaces' termination) and which allocations a
//! Service holds. Everything kind-specific in the write path is here, in one place.

use serde_json::{json, Value};

use rkube_api::{object, status::Status, validation::ErrorType, validation::FieldError, Resource};

use crate::allocator::{self, Allocator};
use crate::registry::{now_rfc3339, DeleteOptions};

/// What a delete does.
#[derive(Debug, PartialEq)]
pub enum DeletePlan {
    /// Remove the key now.
    Remove,
    /// Store this object (marked with a deletionTimestamp) and let its owner finish.
    Mark(Value),
}

/// Resets what users cannot set on create (status of workloads, a pod's phase…).
pub fn prepare_for_create(resource: &Resource, obj: &mut Value) {
    let Some(map) = obj.as_object_mut() else {
        return;
    };
    match (resource.group, resource.kind) {
        ("", "Pod") => {
            map.insert("status".into(), json!({"phase": "Pending"}));
        }
        ("", "Namespace") => {
            map.insert("status".into(), json!({"phase": "Active"}));
            let spec = map.entry("spec").or_insert_with(|| json!({}));
            if spec.get("finalizers").is_none() {
                spec["finalizers"] = json!(["kubernetes"]);
            }
        }
        ("", "Service") => {
            map.insert("status".into(), json!({"loadBalancer": {}}));
        }
        ("apps", _) => {
            map.insert("status".into(), json!({}));
        }
        _ => {}
    }
}

/// Kind rules for an update (the registry already kept identity and status).
pub fn prepare_for_update(resource: &Resource, new: &mut Value, old: &Value) {
    if (resource.group, resource.kind) == ("", "Service") {
        // A ClusterIP, once allocated, stays unless the update names one.
        let old_ip = old["spec"]["clusterIP"].clone();
        if new["spec"]["clusterIP"].as_str().is_none_or(str::is_empty) && !old_ip.is_null() {
            new["spec"]["clusterIP"] = old_ip;
            new["spec"]["clusterIPs"] = old["spec"]["clusterIPs"].clone();
        }
        // NodePorts the update leaves out are kept, matched by port and protocol.
        if allocator::wants_node_ports(new) {
            let old_ports = old["spec"]["ports"].as_array().cloned().unwrap_or_default();
            if let Some(ports) = new["spec"]["ports"].as_array_mut() {
                for port in ports.iter_mut() {
                    if port
                        .get("nodePort")
                        .is_some_and(|p| p.as_i64().unwrap_or(0) > 0)
                    {
                        continue;
                    }
                    let found = old_ports.iter().find(|o| {
                        o["port"] == port["port"]
                            && o["protocol"].as_str().unwrap_or("TCP")
                                == port["protocol"].as_str().unwrap_or("TCP")
                    });
                    if let Some(np) = found
                        .and_then(|o| o.get("nodePort"))
                        .filter(|p| !p.is_null())
                    {
                        port["nodePort"] = np.clone();
                    }
                }
            }
        }
    }
    if (resource.group, resource.kind) == ("", "Namespace")
        && object::deletion_timestamp(old).is_some()
    {
        new["status"]["phase"] = json!("Terminating");
    }
}

/// Fills a Service's ClusterIP and NodePorts (new candidates on every call), or reports
/// requested ones that are out of range.
///
/// # Errors
/// Field errors naming the bad address or port.
pub fn allocate(
    resource: &Resource,
    alloc: &Allocator,
    svc: &mut Value,
    old: Option<&Value>,
) -> Result<(), Vec<FieldError>> {
    if (resource.group, resource.kind) != ("", "Service") {
        return Ok(());
    }
    let mut errors = Vec::new();
    let svc_type = svc["spec"]["type"]
        .as_str()
        .unwrap_or("ClusterIP")
        .to_string();
    if svc_type != "ExternalName" {
        match svc["spec"]["clusterIP"].as_str().unwrap_or("") {
            "" => {
                let ip = alloc.random_ip().to_string();
                svc["spec"]["clusterIP"] = json!(ip);
                svc["spec"]["clusterIPs"] = json!([ip]);
            }
            "None" => {
                svc["spec"]["clusterIPs"] = json!(["None"]);
            }
            ip => {
                let unchanged = old.is_some_and(|o| o["spec"]["clusterIP"].as_str() == Some(ip));
                match ip.parse::<std::net::Ipv4Addr>() {
                    Ok(addr) if unchanged || alloc.ip_in_range(addr) => {
                        svc["spec"]["clusterIPs"] = json!([ip]);
                    }
                    _ => errors.push(FieldError {
                        kind: ErrorType::Invalid,
                        field: "spec.clusterIPs".into(),
                        value: Some(format!("[]string{{\"{ip}\"}}")),
                        detail: format!(
                            "failed to allocate IP {ip}: the provided IP ({ip}) is not in the valid range. The range of valid IPs is {}",
                            alloc.service_cidr
                        ),
                    }),
                }
            }
        }
    }
    if allocator::wants_node_ports(svc) {
        let (first, last) = alloc.node_ports;
        let mut taken: Vec<(String, i64)> = Vec::new();
        if let Some(ports) = svc["spec"]["ports"].as_array_mut() {
            for (i, port) in ports.iter_mut().enumerate() {
                let proto = port["protocol"].as_str().unwrap_or("TCP").to_string();
                match port["nodePort"].as_i64().filter(|p| *p > 0) {
                    Some(np) if np < i64::from(first) || np > i64::from(last) => errors.push(FieldError {
                        kind: ErrorType::Invalid,
                        field: format!("spec.ports[{i}].nodePort"),
                        value: Some(np.to_string()),
                        detail: format!(
                            "provided port is not in the valid range. The range of valid ports is {}",
                            alloc.node_port_range()
                        ),
                    }),
                    Some(np) => {
                        if taken.contains(&(proto.clone(), np)) {
                            errors.push(FieldError {
                                kind: ErrorType::Duplicate,
                                field: format!("spec.ports[{i}]"),
                                value: Some(format!("{{\"nodePort\": {np}, \"protocol\": {proto:?}}}")),
                                detail: String::new(),
                            });
                        }
                        taken.push((proto, np));
                    }
                    None => {
                        let mut np = i64::from(alloc.random_port());
                        while taken.contains(&(proto.clone(), np)) {
                            np = i64::from(alloc.random_port());
                        }
                        port["nodePort"] = json!(np);
                        taken.push((proto, np));
                    }
                }
            }
        }
    } else if let Some(ports) = svc["spec"]["ports"].as_array_mut() {
        for port in ports {
            if let Some(map) = port.as_object_mut() {
                map.remove("nodePort");
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// The allocation claims an object holds.
pub fn claims(resource: &Resource, obj: &Value) -> Vec<String> {
    if (resource.group, resource.kind) == ("", "Service") {
        allocator::claims(obj)
    } else {
        Vec::new()
    }
}

/// When a claim was taken by someone else: field errors if the user asked for that
/// value (it is theirs to change), `None` if it was our random pick (try another).
pub fn claim_conflict(
    resource: &Resource,
    requested: &Value,
    claim: &str,
) -> Option<Vec<FieldError>> {
    if (resource.group, resource.kind) != ("", "Service") {
        return None;
    }
    if let Some(ip) = requested["spec"]["clusterIP"]
        .as_str()
        .filter(|ip| !ip.is_empty() && *ip != "None")
    {
        if claim.ends_with(&format!("/clusterip/{ip}")) {
            return Some(vec![FieldError {
                kind: ErrorType::Invalid,
                field: "spec.clusterIPs".into(),
                value: Some(format!("[]string{{\"{ip}\"}}")),
                detail: format!("failed to allocate IP {ip}: provided IP is already allocated"),
            }]);
        }
    }
    for (i, port) in requested["spec"]["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        if let Some(np) = port["nodePort"].as_i64().filter(|p| *p > 0) {
            let proto = port["protocol"]
                .as_str()
                .unwrap_or("TCP")
                .to_ascii_lowercase();
            if claim.ends_with(&format!("/nodeport/{proto}-{np}")) {
                return Some(vec![FieldError {
                    kind: ErrorType::Invalid,
                    field: format!("spec.ports[{i}].nodePort"),
                    value: Some(np.to_string()),
                    detail: "provided port is already allocated".into(),
                }]);
            }
        }
    }
    None
}

/// Namespaces every cluster needs cannot be deleted.
pub fn refuse_delete(resource: &Resource, name: &str) -> Option<Status> {
    if (resource.group, resource.kind) == ("", "Namespace")
        && matches!(name, "default" | "kube-system" | "kube-public")
    {
        return Some(Status::forbidden(format!(
            "namespaces \"{name}\" is forbidden: this namespace may not be deleted"
        )));
    }
    None
}

fn finalizers_of(resource: &Resource, obj: &Value) -> usize {
    let mut n = object::finalizers(obj).len();
    if (resource.group, resource.kind) == ("", "Namespace") {
        n += obj["spec"]["finalizers"].as_array().map_or(0, Vec::len);
    }
    n
}

/// Whether an object marked for deletion has nothing left holding it.
pub fn ready_to_remove(resource: &Resource, obj: &Value) -> bool {
    if object::deletion_timestamp(obj).is_none() || finalizers_of(resource, obj) > 0 {
        return false;
    }
    if (resource.group, resource.kind) == ("", "Pod") {
        // A pod waits for its node agent, which confirms with a zero grace period.
        return obj["metadata"]["deletionGracePeriodSeconds"].as_i64() == Some(0);
    }
    true
}

/// Decides what a DELETE does to `obj`.
pub fn plan_delete(resource: &Resource, obj: &Value, opts: &DeleteOptions) -> DeletePlan {
    let mut marked = obj.clone();
    let already = object::deletion_timestamp(obj).is_some();
    // Propagation policies that need the garbage collector leave a finalizer for it.
    let policy_finalizer = match opts.propagation_policy.as_deref() {
        Some("Foreground") => Some("foregroundDeletion"),
        Some("Orphan") => Some("orphan"),
        _ => None,
    };
    if let Some(f) = policy_finalizer {
        let list = object::metadata_mut(&mut marked)
            .entry("finalizers")
            .or_insert_with(|| json!([]));
        if let Some(arr) = list.as_array_mut() {
            if !arr.iter().any(|v| v == f) {
                arr.push(json!(f));
            }
        }
    }
    let has_finalizers = !object::finalizers(&marked).is_empty();
    if (resource.group, resource.kind) == ("", "Pod") {
        let grace = pod_grace_period(obj, opts);
        let unbound = obj["spec"]["nodeName"].as_str().is_none_or(str::is_empty);
        let terminal = matches!(
            obj["status"]["phase"].as_str(),
            Some("Succeeded") | Some("Failed")
        );
        let effective = if unbound || terminal { 0 } else { grace };
        let current = obj["metadata"]["deletionGracePeriodSeconds"].as_i64();
        if effective == 0 && !has_finalizers {
            return DeletePlan::Remove;
        }
        if !already || current.is_some_and(|c| effective < c) {
            let when = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(effective);
            mark(
                &mut marked,
                when.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
                effective,
            );
        }
        return DeletePlan::Mark(marked);
    }
    if (resource.group, resource.kind) == ("", "Namespace") {
        if !already {
            mark(&mut marked, now_rfc3339(), 0);
        }
        marked["status"]["phase"] = json!("Terminating");
        if finalizers_of(resource, &marked) == 0 {
            return DeletePlan::Remove;
        }
        return DeletePlan::Mark(marked);
    }
    if !has_finalizers {
        return DeletePlan::Remove;
    }
    if !already {
        mark(&mut marked, now_rfc3339(), 0);
    }
    DeletePlan::Mark(marked)
}

fn mark(obj: &mut Value, when: String, grace: i64) {
    let meta = object::metadata_mut(obj);
    meta.insert("deletionTimestamp".into(), json!(when));
    meta.insert("deletionGracePeriodSeconds".into(), json!(grace));
}

fn pod_grace_period(pod: &Value, opts: &DeleteOptions) -> i64 {
    opts.grace_period_seconds
        .or_else(|| pod["spec"]["terminationGracePeriodSeconds"].as_i64())
        .unwrap_or(30)
        .max(0)
}

/// Sets a condition in `status.conditions` (by type), as the scheduler and kubelet do.
pub fn set_condition(
    obj: &mut Value,
    kind: &str,
    status: &str,
    reason: Option<&str>,
    message: Option<&str>,
) {
    let now = now_rfc3339();
    let mut condition =
        json!({"type": kind, "status": status, "lastTransitionTime": now, "lastProbeTime": null});
    if let Some(r) = reason {
        condition["reason"] = json!(r);
    }
    if let Some(m) = message {
        condition["message"] = json!(m);
    }
    if !obj["status"].is_object() {
        obj["status"] = json!({});
    }
    let conditions = &mut obj["status"]["conditions"];
    if !conditions.is_array() {
        *conditions = json!([]);
    }
    if let Some(list) = conditions.as_array_mut() {
        match list.iter_mut().find(|c| c["type"] == kind) {
            Some(existing) => *existing = condition,
            None => list.push(condition),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rkube_api::resource::find;

    fn opts(grace: Option<i64>, policy: Option<&str>) -> DeleteOptions {
        DeleteOptions {
            grace_period_seconds: grace,
            propagation_policy: policy.map(String::from),
            ..Default::default()
        }
    }

    #[test]
    fn pod_deletion_follows_the_grace_period() {
        let pods = find("", "v1", "pods").expect("pods");
        let bound = json!({"metadata": {"name": "p"}, "spec": {"nodeName": "n1", "terminationGracePeriodSeconds": 10}, "status": {"phase": "Running"}});
        let unbound =
            json!({"metadata": {"name": "p"}, "spec": {}, "status": {"phase": "Pending"}});
        let done = json!({"metadata": {"name": "p"}, "spec": {"nodeName": "n1"}, "status": {"phase": "Succeeded"}});
        assert_eq!(
            plan_delete(pods, &unbound, &opts(None, None)),
            DeletePlan::Remove
        );
        assert_eq!(
            plan_delete(pods, &done, &opts(None, None)),
            DeletePlan::Remove
        );
        assert_eq!(
            plan_delete(pods, &bound, &opts(Some(0), None)),
            DeletePlan::Remove
        );
        match plan_delete(pods, &bound, &opts(None, None)) {
            DeletePlan::Mark(m) => {
                assert_eq!(m["metadata"]["deletionGracePeriodSeconds"], 10);
                assert!(m["metadata"]["deletionTimestamp"].is_string());
                assert!(!ready_to_remove(pods, &m));
                let mut confirmed = m.clone();
                confirmed["metadata"]["deletionGracePeriodSeconds"] = json!(0);
                assert!(ready_to_remove(pods, &confirmed));
            }
            other => panic!("want Mark, got {other:?}"),
        }
    }

    #[test]
    fn finalizers_hold_deletion() {
        let cms = find("", "v1", "configmaps").expect("configmaps");
        let plain = json!({"metadata": {"name": "c"}});
        assert_eq!(
            plan_delete(cms, &plain, &opts(None, Some("Background"))),
            DeletePlan::Remove
        );
        let held = json!({"metadata": {"name": "c", "finalizers": ["x/y"]}});
        let DeletePlan::Mark(m) = plan_delete(cms, &held, &opts(None, None)) else {
            panic!("finalizer must hold")
        };
        assert!(m["metadata"]["deletionTimestamp"].is_string());
        let DeletePlan::Mark(f) = plan_delete(cms, &plain, &opts(None, Some("Foreground"))) else {
            panic!("foreground must hold")
        };
        assert_eq!(f["metadata"]["finalizers"], json!(["foregroundDeletion"]));
        let mut released = m.clone();
        released["metadata"]["finalizers"] = json!([]);
        assert!(ready_to_remove(cms, &released));
    }

    #[test]
    fn namespaces_terminate() {
        let ns = find("", "v1", "namespaces").expect("namespaces");
        let mut obj = json!({"metadata": {"name": "team"}, "spec": {}});
        prepare_for_create(ns, &mut obj);
        assert_eq!(obj["spec"]["finalizers"], json!(["kubernetes"]));
        let DeletePlan::Mark(m) = plan_delete(ns, &obj, &opts(None, None)) else {
            panic!("namespaces terminate first")
        };
        assert_eq!(m["status"]["phase"], "Terminating");
        assert!(refuse_delete(ns, "default").is_some());
        assert!(refuse_delete(ns, "team").is_none());
    }

    #[test]
    fn services_get_addresses_and_ports() {
        let svcs = find("", "v1", "services").expect("services");
        let alloc = Allocator::new("10.96.0.0/12", "30000-32767").expect("valid");
        let mut svc =
            json!({"spec": {"type": "NodePort", "ports": [{"port": 80, "protocol": "TCP"}]}});
        allocate(svcs, &alloc, &mut svc, None).expect("allocates");
        assert!(svc["spec"]["clusterIP"]
            .as_str()
            .is_some_and(|ip| ip.starts_with("10.")));
        let np = svc["spec"]["ports"][0]["nodePort"]
            .as_i64()
            .expect("node port");
        assert!((30000..=32767).contains(&np));
        assert_eq!(claims(svcs, &svc).len(), 2);
        let mut bad = json!({"spec": {"type": "NodePort", "clusterIP": "192.168.0.1", "ports": [{"port": 80, "nodePort": 80}]}});
        let errs = allocate(svcs, &alloc, &mut bad, None).expect_err("out of range");
        let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, vec!["spec.clusterIPs", "spec.ports[0].nodePort"]);
        let requested =
            json!({"spec": {"clusterIP": "10.96.0.9", "ports": [{"port": 80, "nodePort": 30001}]}});
        assert!(claim_conflict(svcs, &requested, "/registry/claims/clusterip/10.96.0.9").is_some());
        assert!(claim_conflict(svcs, &requested, "/registry/claims/nodeport/tcp-30001").is_some());
        assert!(claim_conflict(svcs, &requested, "/registry/claims/nodeport/tcp-30002").is_none());
    }
}
