//! Service and Endpoints rules: types, ports, cluster IPs, policies, addresses.

use std::collections::BTreeSet;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort, Endpoints, Service, ServicePort, ServiceSpec,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::meta::{self, IMMUTABLE};
use super::pod::{validate_port_num_or_name, validate_protocol};
use super::{names, ErrorList, FieldError, Path};
use crate::resource::Resource;

const SERVICE_TYPES: &[&str] = &["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"];
const SESSION_AFFINITIES: &[&str] = &["ClientIP", "None"];
const TRAFFIC_POLICIES: &[&str] = &["Cluster", "Local"];
const IP_FAMILY_POLICIES: &[&str] = &["PreferDualStack", "RequireDualStack", "SingleStack"];
const IP_FAMILIES: &[&str] = &["IPv4", "IPv6"];

/// A Service.
pub(super) fn validate(resource: &Resource, svc: &Service, old: Option<&Service>) -> ErrorList {
    let mut errs = meta::validate_meta_for(resource, &svc.metadata, old.map(|o| &o.metadata));
    let spec = svc.spec.clone().unwrap_or_default();
    errs.extend(validate_spec(&spec, &Path::new("spec")));
    if let Some(old_spec) = old.and_then(|o| o.spec.as_ref()) {
        let old_ip = old_spec.cluster_ip.as_deref().unwrap_or("");
        let new_ip = spec.cluster_ip.as_deref().unwrap_or("");
        let external = |s: &ServiceSpec| s.type_.as_deref() == Some("ExternalName");
        if !external(&spec) && !external(old_spec) && !old_ip.is_empty() && new_ip != old_ip {
            errs.push(FieldError::invalid("spec.clusterIP", new_ip, IMMUTABLE));
        }
    }
    errs
}

fn validate_spec(spec: &ServiceSpec, path: &Path) -> ErrorList {
    let mut errs = Vec::new();
    let svc_type = spec.type_.as_deref().unwrap_or("");
    let cluster_ip = spec.cluster_ip.as_deref().unwrap_or("");
    let headless = cluster_ip == "None";
    let ports = spec.ports.as_deref().unwrap_or_default();

    if !SERVICE_TYPES.contains(&svc_type) {
        errs.push(FieldError::not_supported(
            path.child("type"),
            svc_type,
            SERVICE_TYPES,
        ));
    }
    if svc_type == "ExternalName" {
        if !cluster_ip.is_empty() {
            errs.push(FieldError::forbidden(
                path.child("clusterIP"),
                "may not be set for ExternalName services",
            ));
        }
        match spec.external_name.as_deref().unwrap_or("") {
            "" => errs.push(FieldError::required(path.child("externalName"), "")),
            name => {
                let name = name.strip_suffix('.').unwrap_or(name);
                for msg in names::is_dns1123_subdomain(name) {
                    errs.push(FieldError::invalid(path.child("externalName"), name, msg));
                }
            }
        }
    } else if ports.is_empty() && !headless {
        errs.push(FieldError::required(path.child("ports"), ""));
    }

    let mut port_names = BTreeSet::new();
    for (i, port) in ports.iter().enumerate() {
        errs.extend(validate_service_port(
            port,
            ports.len() > 1,
            &mut port_names,
            &path.child("ports").index(i),
        ));
    }
    for (i, port) in ports.iter().enumerate() {
        let Some(node_port) = port.node_port.filter(|p| *p != 0) else {
            continue;
        };
        let p = path.child("ports").index(i).child("nodePort");
        if svc_type != "NodePort" && svc_type != "LoadBalancer" {
            errs.push(FieldError::forbidden(
                p,
                format!("may not be used when `type` is '{svc_type}'"),
            ));
        } else {
            for msg in names::is_valid_port_num(i64::from(node_port)) {
                errs.push(FieldError::invalid(&p, node_port, msg));
            }
        }
    }

    if !cluster_ip.is_empty() && !headless {
        for msg in names::is_valid_ip(cluster_ip) {
            errs.push(FieldError::invalid(
                path.child("clusterIPs").index(0),
                cluster_ip,
                msg,
            ));
        }
    }
    for (i, ip) in spec.cluster_ips.iter().flatten().enumerate() {
        if ip == "None" && i == 0 {
            continue;
        }
        if i == 0 && ip == cluster_ip {
            continue; // already checked as clusterIP
        }
        let p = path.child("clusterIPs").index(i);
        if ip == "None" {
            errs.push(FieldError::invalid(
                &p,
                ip,
                "'None' must be the first and only value",
            ));
        } else {
            for msg in names::is_valid_ip(ip) {
                errs.push(FieldError::invalid(&p, ip, msg));
            }
        }
    }
    if let (false, Some(first)) = (
        cluster_ip.is_empty(),
        spec.cluster_ips.as_ref().and_then(|ips| ips.first()),
    ) {
        if first != cluster_ip {
            let quoted: Vec<String> = spec
                .cluster_ips
                .iter()
                .flatten()
                .map(|ip| super::render::quote(ip))
                .collect();
            errs.push(FieldError::invalid(
                path.child("clusterIPs"),
                super::render::Raw(format!("[]string{{{}}}", quoted.join(", "))),
                "first value must match `clusterIP`",
            ));
        }
    }

    errs.extend(meta::validate_labels(
        spec.selector.as_ref(),
        &path.child("selector"),
    ));
    if let Some(affinity) = spec
        .session_affinity
        .as_deref()
        .filter(|a| !SESSION_AFFINITIES.contains(a))
    {
        errs.push(FieldError::not_supported(
            path.child("sessionAffinity"),
            affinity,
            SESSION_AFFINITIES,
        ));
    }
    for (field, value) in [
        ("internalTrafficPolicy", &spec.internal_traffic_policy),
        ("externalTrafficPolicy", &spec.external_traffic_policy),
    ] {
        if let Some(v) = value.as_deref().filter(|v| !TRAFFIC_POLICIES.contains(v)) {
            errs.push(FieldError::not_supported(
                path.child(field),
                v,
                TRAFFIC_POLICIES,
            ));
        }
    }
    if let Some(policy) = spec
        .ip_family_policy
        .as_deref()
        .filter(|p| !IP_FAMILY_POLICIES.contains(p))
    {
        errs.push(FieldError::not_supported(
            path.child("ipFamilyPolicy"),
            policy,
            IP_FAMILY_POLICIES,
        ));
    }
    for (i, family) in spec.ip_families.iter().flatten().enumerate() {
        if !IP_FAMILIES.contains(&family.as_str()) {
            errs.push(FieldError::not_supported(
                path.child("ipFamilies").index(i),
                family,
                IP_FAMILIES,
            ));
        }
    }
    errs
}

fn validate_service_port<'a>(
    port: &'a ServicePort,
    require_name: bool,
    seen: &mut BTreeSet<&'a str>,
    path: &Path,
) -> ErrorList {
    let mut errs = Vec::new();
    match port.name.as_deref().unwrap_or("") {
        "" if require_name => errs.push(FieldError::required(path.child("name"), "")),
        "" => {}
        name => {
            for msg in names::is_dns1123_label(name) {
                errs.push(FieldError::invalid(path.child("name"), name, msg));
            }
            if !seen.insert(name) {
                errs.push(FieldError::duplicate(path.child("name"), name));
            }
        }
    }
    for msg in names::is_valid_port_num(i64::from(port.port)) {
        errs.push(FieldError::invalid(path.child("port"), port.port, msg));
    }
    errs.extend(validate_protocol(
        port.protocol.as_deref(),
        &path.child("protocol"),
    ));
    let target = port
        .target_port
        .clone()
        .unwrap_or(IntOrString::Int(port.port));
    errs.extend(validate_port_num_or_name(
        &target,
        &path.child("targetPort"),
    ));
    errs
}

/// Endpoints: every subset has addresses, and addresses and ports are well formed.
pub(super) fn validate_endpoints(
    resource: &Resource,
    ep: &Endpoints,
    old: Option<&Endpoints>,
) -> ErrorList {
    let mut errs = meta::validate_meta_for(resource, &ep.metadata, old.map(|o| &o.metadata));
    let path = Path::new("subsets");
    for (i, subset) in ep.subsets.iter().flatten().enumerate() {
        let idx = path.index(i);
        let addresses = subset.addresses.as_deref().unwrap_or_default();
        let not_ready = subset.not_ready_addresses.as_deref().unwrap_or_default();
        if addresses.is_empty() && not_ready.is_empty() {
            errs.push(FieldError::required(
                &idx,
                "must specify `addresses` or `notReadyAddresses`",
            ));
        }
        for (field, list) in [("addresses", addresses), ("notReadyAddresses", not_ready)] {
            for (j, address) in list.iter().enumerate() {
                errs.extend(validate_endpoint_address(
                    address,
                    &idx.child(field).index(j),
                ));
            }
        }
        let ports = subset.ports.as_deref().unwrap_or_default();
        for (j, port) in ports.iter().enumerate() {
            errs.extend(validate_endpoint_port(
                port,
                ports.len() > 1,
                &idx.child("ports").index(j),
            ));
        }
    }
    errs
}

fn validate_endpoint_address(address: &EndpointAddress, path: &Path) -> ErrorList {
    let mut errs = Vec::new();
    let ip_path = path.child("ip");
    match address.ip.parse::<IpAddr>() {
        Err(_) => {
            for msg in names::is_valid_ip(&address.ip) {
                errs.push(FieldError::invalid(&ip_path, &address.ip, msg));
            }
        }
        Ok(ip) if ip.is_unspecified() => {
            errs.push(FieldError::invalid(
                &ip_path,
                &address.ip,
                "may not be unspecified (0.0.0.0)",
            ));
        }
        Ok(ip) if ip.is_loopback() => {
            errs.push(FieldError::invalid(
                &ip_path,
                &address.ip,
                "may not be in the loopback range (127.0.0.0/8, ::1/128)",
            ));
        }
        Ok(IpAddr::V4(v4)) if v4.is_link_local() => {
            errs.push(FieldError::invalid(
                &ip_path,
                &address.ip,
                "may not be in the link-local range (169.254.0.0/16, fe80::/10)",
            ));
        }
        Ok(_) => {}
    }
    if let Some(hostname) = address.hostname.as_deref().filter(|h| !h.is_empty()) {
        for msg in names::is_dns1123_label(hostname) {
            errs.push(FieldError::invalid(path.child("hostname"), hostname, msg));
        }
    }
    if let Some(node) = address.node_name.as_deref().filter(|n| !n.is_empty()) {
        for msg in names::is_dns1123_subdomain(node) {
            errs.push(FieldError::invalid(path.child("nodeName"), node, msg));
        }
    }
    errs
}

fn validate_endpoint_port(port: &EndpointPort, require_name: bool, path: &Path) -> ErrorList {
    let mut errs = Vec::new();
    match port.name.as_deref().unwrap_or("") {
        "" if require_name => errs.push(FieldError::required(path.child("name"), "")),
        "" => {}
        name => {
            for msg in names::is_dns1123_label(name) {
                errs.push(FieldError::invalid(path.child("name"), name, msg));
            }
        }
    }
    for msg in names::is_valid_port_num(i64::from(port.port)) {
        errs.push(FieldError::invalid(path.child("port"), port.port, msg));
    }
    errs.extend(validate_protocol(
        port.protocol.as_deref(),
        &path.child("protocol"),
    ));
    errs
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    fn resource(plural: &str) -> &'static crate::Resource {
        crate::resource::find("", "v1", plural).expect("core kind")
    }

    fn service(edit: impl FnOnce(&mut Value)) -> Value {
        let mut v = json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}
        });
        crate::defaults::apply_defaults(resource("services"), &mut v);
        edit(&mut v);
        v
    }

    fn check(plural: &str, new: &Value, old: Option<&Value>) -> Vec<String> {
        super::super::validate(resource(plural), new, old)
            .into_iter()
            .map(|e| e.to_string())
            .collect()
    }

    #[test]
    fn service_rules() {
        let cases: Vec<(&str, Value, Vec<&str>)> = vec![
            ("valid", service(|_| {}), vec![]),
            ("no ports", service(|s| s["spec"]["ports"] = json!([])), vec!["spec.ports: Required value"]),
            ("headless without ports", service(|s| {
                s["spec"]["ports"] = json!([]);
                s["spec"]["clusterIP"] = json!("None");
            }), vec![]),
            (
                "bad type",
                service(|s| s["spec"]["type"] = json!("Internal")),
                vec!["spec.type: Unsupported value: \"Internal\": supported values: \"ClusterIP\", \"ExternalName\", \"LoadBalancer\", \"NodePort\""],
            ),
            (
                "port zero",
                service(|s| s["spec"]["ports"][0]["port"] = json!(0)),
                vec!["spec.ports[0].port: Invalid value: 0: must be between 1 and 65535, inclusive"],
            ),
            (
                "unnamed ports",
                service(|s| s["spec"]["ports"] = json!([{"port": 80, "protocol": "TCP", "targetPort": 80}, {"port": 81, "protocol": "TCP", "targetPort": 81}])),
                vec!["spec.ports[0].name: Required value", "spec.ports[1].name: Required value"],
            ),
            (
                "duplicate port names",
                service(|s| s["spec"]["ports"] = json!([{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 80}, {"name": "http", "port": 81, "protocol": "TCP", "targetPort": 81}])),
                vec!["spec.ports[1].name: Duplicate value: \"http\""],
            ),
            (
                "bad target port name",
                service(|s| s["spec"]["ports"][0]["targetPort"] = json!("HTTP")),
                vec![
                    "spec.ports[0].targetPort: Invalid value: \"HTTP\": must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)",
                    "spec.ports[0].targetPort: Invalid value: \"HTTP\": must contain at least one letter (a-z)",
                ],
            ),
            (
                "node port on cluster ip",
                service(|s| s["spec"]["ports"][0]["nodePort"] = json!(30080)),
                vec!["spec.ports[0].nodePort: Forbidden: may not be used when `type` is 'ClusterIP'"],
            ),
            (
                "bad cluster ip",
                service(|s| s["spec"]["clusterIP"] = json!("10.0.0.300")),
                vec!["spec.clusterIPs[0]: Invalid value: \"10.0.0.300\": must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"],
            ),
            (
                "external name without name",
                service(|s| {
                    s["spec"]["type"] = json!("ExternalName");
                    s["spec"]["ports"] = json!([]);
                }),
                vec!["spec.externalName: Required value"],
            ),
            (
                "bad session affinity",
                service(|s| s["spec"]["sessionAffinity"] = json!("Sticky")),
                vec!["spec.sessionAffinity: Unsupported value: \"Sticky\": supported values: \"ClientIP\", \"None\""],
            ),
            (
                "service name must be a DNS-1035 label",
                service(|s| s["metadata"]["name"] = json!("1web")),
                vec!["metadata.name: Invalid value: \"1web\": a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')"],
            ),
        ];
        for (name, input, want) in cases {
            assert_eq!(check("services", &input, None), want, "{name}");
        }

        let old = service(|s| s["spec"]["clusterIP"] = json!("10.96.0.10"));
        let moved = service(|s| s["spec"]["clusterIP"] = json!("10.96.0.11"));
        assert_eq!(
            check("services", &moved, Some(&old)),
            vec!["spec.clusterIP: Invalid value: \"10.96.0.11\": field is immutable"]
        );
        assert_eq!(check("services", &old, Some(&old)), Vec::<String>::new());
    }

    #[test]
    fn endpoints_rules() {
        let ep = |subsets: Value| json!({"metadata": {"name": "web", "namespace": "default"}, "subsets": subsets});
        let cases: Vec<(&str, Value, Vec<&str>)> = vec![
            ("valid", ep(json!([{"addresses": [{"ip": "10.244.1.5"}], "ports": [{"port": 80, "protocol": "TCP"}]}])), vec![]),
            ("no addresses", ep(json!([{"ports": [{"port": 80, "protocol": "TCP"}]}])), vec!["subsets[0]: Required value: must specify `addresses` or `notReadyAddresses`"]),
            (
                "bad ip",
                ep(json!([{"addresses": [{"ip": "nope"}]}])),
                vec!["subsets[0].addresses[0].ip: Invalid value: \"nope\": must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"],
            ),
            (
                "loopback",
                ep(json!([{"notReadyAddresses": [{"ip": "127.0.0.1"}]}])),
                vec!["subsets[0].notReadyAddresses[0].ip: Invalid value: \"127.0.0.1\": may not be in the loopback range (127.0.0.0/8, ::1/128)"],
            ),
            (
                "bad port",
                ep(json!([{"addresses": [{"ip": "10.244.1.5"}], "ports": [{"port": 0, "protocol": "TCP"}]}])),
                vec!["subsets[0].ports[0].port: Invalid value: 0: must be between 1 and 65535, inclusive"],
            ),
        ];
        for (name, input, want) in cases {
            assert_eq!(check("endpoints", &input, None), want, "{name}");
        }
    }
}
