//! The service proxy's rules as a pure function: Services + Endpoints → one nftables script.
//!
//! [`render`] writes a script that replaces `table ip rkube` in one transaction (`add
//! table` + `delete table` + the full table), so `nft -f -` applies it atomically. The
//! table follows kube-proxy's nftables mode in spirit:
//!
//! - `services` (jumped to from the nat prerouting and output hooks) looks up
//!   `daddr . proto . dport` in the `service-ips` verdict map, and, for destinations that
//!   are local to the node (`fib daddr type local`, so every node address works without
//!   listing them), `proto . dport` in `service-nodeports`;
//! - one chain per service port picks a ready endpoint at random (`numgen random mod N`)
//!   and DNATs to its `ip:targetPort` through an inline map; with `sessionAffinity:
//!   ClientIP` it first looks the client up in per-endpoint sets that remember it for
//!   `timeoutSeconds`, and then needs one chain per endpoint to update them;
//! - `nat-postrouting` masquerades what needs replies to come back through this node:
//!   traffic from outside the cluster CIDR to a ClusterIP and every NodePort connection
//!   (marked on the way in), a pod reaching itself through its Service (hairpin: the
//!   `hairpin` set of `ip . ip` pairs), and pods' traffic leaving the cluster CIDR;
//! - service ports without ready endpoints are rejected (TCP reset, else ICMP port
//!   unreachable) from the filter hooks, before anything would route them.
//!
//! The output is deterministic: services, ports and endpoints are sorted, so the same
//! input always gives the same script (and unchanged state can be detected by equality).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::sync::Arc;

use ipnetwork::Ipv4Network;
use k8s_openapi::api::core::v1::{Endpoints, Service};

/// The name of the table rkube owns in the `ip` family.
pub const TABLE: &str = "rkube";

/// The packet mark bit that asks `nat-postrouting` to masquerade.
pub const MASQUERADE_MARK: u32 = 0x4000;

/// kube-proxy's default `sessionAffinityConfig.clientIP.timeoutSeconds` (3 hours).
pub const DEFAULT_AFFINITY_TIMEOUT: u32 = 10_800;

/// The address ranges the rules depend on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ranges {
    /// Pod addresses of every node (egress masquerade, "from outside" detection).
    pub cluster_cidr: Ipv4Network,
    /// Service ClusterIPs; never masqueraded as egress.
    pub service_cidr: Ipv4Network,
}

/// The L4 protocols the proxy handles (SCTP service ports are skipped).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    fn parse(protocol: Option<&str>) -> Option<Protocol> {
        match protocol.unwrap_or("TCP") {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            _ => None,
        }
    }

    /// The nftables keyword.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// One port of one Service, with its ready endpoints resolved: what the rules are made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    pub namespace: String,
    pub service: String,
    /// The port's name (empty for the single unnamed port of a Service).
    pub port_name: String,
    pub protocol: Protocol,
    pub cluster_ip: Ipv4Addr,
    pub port: u16,
    pub node_port: Option<u16>,
    /// `Some(timeout seconds)` for `sessionAffinity: ClientIP`.
    pub affinity: Option<u32>,
    /// Ready endpoints (ip, targetPort), sorted and deduplicated.
    pub endpoints: Vec<(Ipv4Addr, u16)>,
}

impl ServicePort {
    /// `ns/name/proto/port`: unique per service port, and valid inside an nft chain name.
    fn id(&self) -> String {
        let port = if self.port_name.is_empty() {
            self.port.to_string()
        } else {
            self.port_name.clone()
        };
        format!(
            "{}/{}/{}/{}",
            self.namespace,
            self.service,
            self.protocol.as_str(),
            port
        )
    }
}

/// The service ports the rules cover: every port of every Service that has a ClusterIP
/// (headless and ExternalName Services have none), with the ready endpoints of the
/// Endpoints object of the same name whose port matches by name and protocol.
pub fn service_ports(services: &[Arc<Service>], endpoints: &[Arc<Endpoints>]) -> Vec<ServicePort> {
    let endpoints: BTreeMap<(&str, &str), &Endpoints> = endpoints
        .iter()
        .filter_map(|e| {
            Some((
                (
                    e.metadata.namespace.as_deref()?,
                    e.metadata.name.as_deref()?,
                ),
                e.as_ref(),
            ))
        })
        .collect();
    let mut ports = Vec::new();
    for service in services {
        let (Some(namespace), Some(name), Some(spec)) = (
            service.metadata.namespace.as_deref(),
            service.metadata.name.as_deref(),
            service.spec.as_ref(),
        ) else {
            continue;
        };
        if spec.type_.as_deref() == Some("ExternalName") {
            continue;
        }
        let Some(cluster_ip) = spec
            .cluster_ip
            .as_deref()
            .and_then(|ip| ip.parse::<Ipv4Addr>().ok())
        else {
            // Headless ("None"), not yet allocated, or IPv6: nothing to proxy.
            continue;
        };
        let affinity = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
            spec.session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .and_then(|t| u32::try_from(t).ok())
                .filter(|t| *t > 0)
                .unwrap_or(DEFAULT_AFFINITY_TIMEOUT)
        });
        let node_ports_wanted = matches!(
            spec.type_.as_deref(),
            Some("NodePort") | Some("LoadBalancer")
        );
        for port in spec.ports.iter().flatten() {
            let Some(protocol) = Protocol::parse(port.protocol.as_deref()) else {
                continue;
            };
            let Ok(number) = u16::try_from(port.port) else {
                continue;
            };
            let port_name = port.name.clone().unwrap_or_default();
            let node_port = port
                .node_port
                .filter(|_| node_ports_wanted)
                .and_then(|p| u16::try_from(p).ok())
                .filter(|p| *p != 0);
            let mut ready = Vec::new();
            if let Some(eps) = endpoints.get(&(namespace, name)) {
                for subset in eps.subsets.iter().flatten() {
                    let Some(target) = subset.ports.iter().flatten().find(|p| {
                        p.name.as_deref().unwrap_or_default() == port_name
                            && Protocol::parse(p.protocol.as_deref()) == Some(protocol)
                    }) else {
                        continue;
                    };
                    let Ok(target) = u16::try_from(target.port) else {
                        continue;
                    };
                    // Only `addresses` are ready; `notReadyAddresses` never get traffic.
                    for address in subset.addresses.iter().flatten() {
                        if let Ok(ip) = address.ip.parse::<Ipv4Addr>() {
                            ready.push((ip, target));
                        }
                    }
                }
            }
            ready.sort();
            ready.dedup();
            ports.push(ServicePort {
                namespace: namespace.to_string(),
                service: name.to_string(),
                port_name,
                protocol,
                cluster_ip,
                port: number,
                node_port,
                affinity,
                endpoints: ready,
            });
        }
    }
    ports.sort_by_cached_key(ServicePort::id);
    ports.dedup_by(|a, b| a.id() == b.id());
    ports
}

/// The complete nftables script for `ports`: feed it to `nft -f -`.
pub fn render(ranges: &Ranges, ports: &[ServicePort]) -> String {
    let cluster = ranges.cluster_cidr;
    let mut out = String::with_capacity(512 + ports.len() * 1024);
    let mut service_ips = Vec::new();
    let mut node_ports = Vec::new();
    let mut no_endpoint_ips = Vec::new();
    let mut no_endpoint_node_ports = Vec::new();
    for port in ports {
        let id = port.id();
        let proto = port.protocol.as_str();
        if port.endpoints.is_empty() {
            no_endpoint_ips.push(format!(
                "{} . {proto} . {} : goto reject-service",
                port.cluster_ip, port.port
            ));
            if let Some(node_port) = port.node_port {
                no_endpoint_node_ports.push(format!("{proto} . {node_port} : goto reject-service"));
            }
        } else {
            service_ips.push(format!(
                "{} . {proto} . {} : goto svc-{id}",
                port.cluster_ip, port.port
            ));
            if let Some(node_port) = port.node_port {
                node_ports.push(format!("{proto} . {node_port} : goto ext-{id}"));
            }
        }
    }

    let _ = writeln!(out, "add table ip {TABLE}");
    let _ = writeln!(out, "delete table ip {TABLE}");
    let _ = writeln!(out, "table ip {TABLE} {{");
    map(
        &mut out,
        "service-ips",
        "ipv4_addr . inet_proto . inet_service : verdict",
        &service_ips,
    );
    map(
        &mut out,
        "service-nodeports",
        "inet_proto . inet_service : verdict",
        &node_ports,
    );
    map(
        &mut out,
        "no-endpoint-services",
        "ipv4_addr . inet_proto . inet_service : verdict",
        &no_endpoint_ips,
    );
    map(
        &mut out,
        "no-endpoint-nodeports",
        "inet_proto . inet_service : verdict",
        &no_endpoint_node_ports,
    );
    // Hairpin: a connection DNATed back to its own source is masqueraded in
    // nat-postrouting (nft cannot compare saddr with daddr, so a set of `ip . ip` pairs).
    let endpoint_ips: BTreeSet<Ipv4Addr> = ports
        .iter()
        .flat_map(|p| p.endpoints.iter().map(|(ip, _)| *ip))
        .collect();
    let pairs: Vec<String> = endpoint_ips
        .iter()
        .map(|ip| format!("{ip} . {ip}"))
        .collect();
    let _ = write!(out, "\tset hairpin {{\n\t\ttype ipv4_addr . ipv4_addr\n");
    if !pairs.is_empty() {
        let _ = writeln!(out, "\t\telements = {{ {} }}", pairs.join(",\n\t\t\t"));
    }
    out.push_str("\t}\n");
    for port in ports {
        if let Some(timeout) = port.affinity {
            for (ip, target) in &port.endpoints {
                let _ = writeln!(
                    out,
                    "\tset affinity-{}/{ip}/{target} {{ type ipv4_addr; flags dynamic,timeout; timeout {timeout}s; }}",
                    port.id()
                );
            }
        }
    }

    let mark = MASQUERADE_MARK;
    let _ = write!(
        out,
        "\
\tchain nat-prerouting {{
\t\ttype nat hook prerouting priority dstnat; policy accept;
\t\tjump services
\t}}
\tchain nat-output {{
\t\ttype nat hook output priority -100; policy accept;
\t\tjump services
\t}}
\tchain nat-postrouting {{
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\tmeta mark & {mark:#010x} == {mark:#010x} meta mark set meta mark ^ {mark:#010x} masquerade fully-random
\t\tct status dnat ip saddr . ip daddr @hairpin masquerade
\t\tip saddr {cluster} ip daddr != {cluster} ip daddr != {service} masquerade
\t}}
\tchain filter-input {{
\t\ttype filter hook input priority -110; policy accept;
\t\tct state new fib daddr type local meta l4proto . th dport vmap @no-endpoint-nodeports
\t\tct state new ip daddr . meta l4proto . th dport vmap @no-endpoint-services
\t}}
\tchain filter-forward {{
\t\ttype filter hook forward priority -110; policy accept;
\t\tct state new ip daddr . meta l4proto . th dport vmap @no-endpoint-services
\t}}
\tchain filter-output {{
\t\ttype filter hook output priority -110; policy accept;
\t\tct state new ip daddr . meta l4proto . th dport vmap @no-endpoint-services
\t}}
\tchain reject-service {{
\t\tmeta l4proto tcp reject with tcp reset
\t\treject
\t}}
\tchain mark-for-masquerade {{
\t\tmeta mark set meta mark | {mark:#010x}
\t}}
\tchain services {{
\t\tip daddr . meta l4proto . th dport vmap @service-ips
\t\tip daddr != 127.0.0.0/8 fib daddr type local meta l4proto . th dport vmap @service-nodeports
\t}}
",
        service = ranges.service_cidr,
    );

    for port in ports.iter().filter(|p| !p.endpoints.is_empty()) {
        let id = port.id();
        let proto = port.protocol.as_str();
        if port.node_port.is_some() {
            let _ = writeln!(
                out,
                "\tchain ext-{id} {{\n\t\tjump mark-for-masquerade\n\t\tgoto svc-{id}\n\t}}"
            );
        }
        let _ = writeln!(out, "\tchain svc-{id} {{");
        let _ = writeln!(out, "\t\tip saddr != {cluster} jump mark-for-masquerade");
        if port.affinity.is_some() {
            for (ip, target) in &port.endpoints {
                let _ = writeln!(
                    out,
                    "\t\tip saddr @affinity-{id}/{ip}/{target} goto ep-{id}/{ip}/{target}"
                );
            }
        }
        if port.affinity.is_none() {
            // No per-client state: pick and DNAT in one rule.
            match port.endpoints.as_slice() {
                [(ip, target)] => {
                    let _ = writeln!(out, "\t\tmeta l4proto {proto} dnat to {ip}:{target}\n\t}}");
                }
                endpoints => {
                    let choices: Vec<String> = endpoints
                        .iter()
                        .enumerate()
                        .map(|(i, (ip, target))| format!("{i} : {ip} . {target}"))
                        .collect();
                    let _ = writeln!(
                        out,
                        "\t\tmeta l4proto {proto} dnat ip addr . port to numgen random mod {} map {{ {} }}\n\t}}",
                        endpoints.len(),
                        choices.join(", ")
                    );
                }
            }
            continue;
        }
        let choices: Vec<String> = port
            .endpoints
            .iter()
            .enumerate()
            .map(|(i, (ip, target))| format!("{i} : goto ep-{id}/{ip}/{target}"))
            .collect();
        let _ = writeln!(
            out,
            "\t\tnumgen random mod {} vmap {{ {} }}\n\t}}",
            port.endpoints.len(),
            choices.join(", ")
        );
        for (ip, target) in &port.endpoints {
            let _ = writeln!(out, "\tchain ep-{id}/{ip}/{target} {{");
            let _ = writeln!(
                out,
                "\t\tupdate @affinity-{id}/{ip}/{target} {{ ip saddr }}"
            );
            let _ = writeln!(out, "\t\tmeta l4proto {proto} dnat to {ip}:{target}\n\t}}");
        }
    }
    out.push_str("}\n");
    out
}

/// Writes a verdict map with `elements` (none: an empty map).
fn map(out: &mut String, name: &str, type_: &str, elements: &[String]) {
    let _ = write!(out, "\tmap {name} {{\n\t\ttype {type_}\n");
    if !elements.is_empty() {
        let _ = writeln!(out, "\t\telements = {{ {} }}", elements.join(",\n\t\t\t"));
    }
    out.push_str("\t}\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ClientIPConfig, EndpointAddress, EndpointPort, EndpointSubset, ServicePort as Port,
        ServiceSpec, SessionAffinityConfig,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn meta(name: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some("default".to_string()),
            ..Default::default()
        }
    }

    fn svc(name: &str, ip: &str, ports: Vec<Port>) -> Service {
        Service {
            metadata: meta(name),
            spec: Some(ServiceSpec {
                cluster_ip: Some(ip.to_string()),
                ports: Some(ports),
                type_: Some("ClusterIP".to_string()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn port(name: Option<&str>, protocol: &str, number: i32) -> Port {
        Port {
            name: name.map(str::to_string),
            protocol: Some(protocol.to_string()),
            port: number,
            ..Default::default()
        }
    }

    /// One subset: ready and not-ready IPs, ports as (name, protocol, number).
    fn subset(
        ready: &[&str],
        not_ready: &[&str],
        ports: &[(Option<&str>, &str, i32)],
    ) -> EndpointSubset {
        let addresses = |ips: &[&str]| {
            Some(
                ips.iter()
                    .map(|ip| EndpointAddress {
                        ip: ip.to_string(),
                        ..Default::default()
                    })
                    .collect(),
            )
        };
        EndpointSubset {
            addresses: addresses(ready),
            not_ready_addresses: addresses(not_ready),
            ports: Some(
                ports
                    .iter()
                    .map(|(name, protocol, port)| EndpointPort {
                        name: name.map(str::to_string),
                        protocol: Some(protocol.to_string()),
                        port: *port,
                        ..Default::default()
                    })
                    .collect(),
            ),
        }
    }

    fn eps(name: &str, subsets: Vec<EndpointSubset>) -> Endpoints {
        Endpoints {
            metadata: meta(name),
            subsets: Some(subsets),
        }
    }

    fn ranges() -> Ranges {
        Ranges {
            cluster_cidr: "10.244.0.0/16".parse().expect("cidr"),
            service_cidr: "10.96.0.0/12".parse().expect("cidr"),
        }
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().expect("ip")
    }

    #[test]
    fn service_ports_resolve_ready_endpoints() {
        let web = svc("web", "10.96.0.10", vec![port(None, "TCP", 80)]);
        let mut headless = svc("db", "None", vec![port(None, "TCP", 5432)]);
        headless.spec.as_mut().expect("spec").cluster_ip = Some("None".to_string());
        let named = svc(
            "api",
            "10.96.0.20",
            vec![port(Some("http"), "TCP", 80), port(Some("dns"), "UDP", 53)],
        );
        let mut nodeport = svc("np", "10.96.0.30", vec![port(None, "TCP", 80)]);
        {
            let spec = nodeport.spec.as_mut().expect("spec");
            spec.type_ = Some("NodePort".to_string());
            spec.ports.as_mut().expect("ports")[0].node_port = Some(30080);
        }
        let mut sticky = svc("sticky", "10.96.0.40", vec![port(None, "TCP", 80)]);
        {
            let spec = sticky.spec.as_mut().expect("spec");
            spec.session_affinity = Some("ClientIP".to_string());
            spec.session_affinity_config = Some(SessionAffinityConfig {
                client_ip: Some(ClientIPConfig {
                    timeout_seconds: Some(60),
                }),
            });
        }
        let mut sticky_default = svc("sticky2", "10.96.0.41", vec![port(None, "TCP", 80)]);
        sticky_default.spec.as_mut().expect("spec").session_affinity = Some("ClientIP".to_string());
        let endpoints = vec![
            eps(
                "web",
                vec![subset(
                    &["10.244.1.3", "10.244.1.2"],
                    &["10.244.1.9"],
                    &[(None, "TCP", 8080)],
                )],
            ),
            eps(
                "db",
                vec![subset(&["10.244.1.5"], &[], &[(None, "TCP", 5432)])],
            ),
            eps(
                "api",
                vec![
                    subset(
                        &["10.244.2.1"],
                        &[],
                        &[(Some("http"), "TCP", 8080), (Some("dns"), "UDP", 5353)],
                    ),
                    subset(&["10.244.2.2"], &[], &[(Some("http"), "TCP", 9090)]),
                ],
            ),
            eps(
                "np",
                vec![subset(&["10.244.3.1"], &[], &[(None, "TCP", 80)])],
            ),
            eps(
                "sticky",
                vec![subset(&["10.244.4.1"], &[], &[(None, "TCP", 80)])],
            ),
        ];
        let services: Vec<Arc<Service>> = [web, headless, named, nodeport, sticky, sticky_default]
            .into_iter()
            .map(Arc::new)
            .collect();
        let endpoints: Vec<Arc<Endpoints>> = endpoints.into_iter().map(Arc::new).collect();
        let got = service_ports(&services, &endpoints);
        let find = |svc: &str, name: &str| {
            got.iter()
                .find(|p| p.service == svc && p.port_name == name)
                .unwrap_or_else(|| panic!("{svc}/{name} missing from {got:#?}"))
                .clone()
        };
        type Case = (&'static str, ServicePort, Vec<(Ipv4Addr, u16)>);
        let cases: Vec<Case> = vec![
            (
                "not-ready excluded, sorted",
                find("web", ""),
                vec![(ip("10.244.1.2"), 8080), (ip("10.244.1.3"), 8080)],
            ),
            (
                "named port across subsets",
                find("api", "http"),
                vec![(ip("10.244.2.1"), 8080), (ip("10.244.2.2"), 9090)],
            ),
            (
                "named udp port",
                find("api", "dns"),
                vec![(ip("10.244.2.1"), 5353)],
            ),
            ("no endpoints object", find("sticky2", ""), vec![]),
        ];
        for (name, port, want) in cases {
            assert_eq!(port.endpoints, want, "{name}");
        }
        assert!(
            got.iter().all(|p| p.service != "db"),
            "headless service skipped"
        );
        assert_eq!(got.len(), 6);
        assert_eq!(find("api", "dns").protocol, Protocol::Udp);
        assert_eq!(find("np", "").node_port, Some(30080));
        assert_eq!(find("web", "").node_port, None);
        assert_eq!(find("sticky", "").affinity, Some(60));
        assert_eq!(find("sticky2", "").affinity, Some(DEFAULT_AFFINITY_TIMEOUT));
        assert_eq!(find("web", "").affinity, None);
    }

    fn sp(endpoints: &[(&str, u16)]) -> ServicePort {
        ServicePort {
            namespace: "default".to_string(),
            service: "web".to_string(),
            port_name: String::new(),
            protocol: Protocol::Tcp,
            cluster_ip: ip("10.96.0.10"),
            port: 80,
            node_port: None,
            affinity: None,
            endpoints: endpoints.iter().map(|(i, p)| (ip(i), *p)).collect(),
        }
    }

    #[test]
    fn render_cases() {
        let one = sp(&[("10.244.1.2", 8080)]);
        let three = sp(&[
            ("10.244.1.2", 8080),
            ("10.244.1.3", 8080),
            ("10.244.1.4", 8080),
        ]);
        let mut node_port = one.clone();
        node_port.node_port = Some(30080);
        let mut node_port_empty = sp(&[]);
        node_port_empty.node_port = Some(30081);
        let mut sticky = three.clone();
        sticky.affinity = Some(60);
        let mut udp = one.clone();
        udp.protocol = Protocol::Udp;
        udp.port = 53;
        let cases: Vec<(&str, ServicePort, Vec<&str>, Vec<&str>)> = vec![
            (
                "no endpoints: rejected, not dnat'ed",
                sp(&[]),
                vec!["elements = { 10.96.0.10 . tcp . 80 : goto reject-service }"],
                vec!["chain svc-", "dnat to"],
            ),
            (
                "one endpoint",
                one.clone(),
                vec![
                    "10.96.0.10 . tcp . 80 : goto svc-default/web/tcp/80",
                    "meta l4proto tcp dnat to 10.244.1.2:8080",
                    "ip saddr != 10.244.0.0/16 jump mark-for-masquerade",
                    "elements = { 10.244.1.2 . 10.244.1.2 }",
                    "ct status dnat ip saddr . ip daddr @hairpin masquerade",
                ],
                vec!["reject-service }", "affinity-", "numgen", "chain ep-"],
            ),
            (
                "three endpoints",
                three.clone(),
                vec![
                    "meta l4proto tcp dnat ip addr . port to numgen random mod 3 map { 0 : 10.244.1.2 . 8080, 1 : 10.244.1.3 . 8080, 2 : 10.244.1.4 . 8080 }",
                ],
                vec!["chain ep-"],
            ),
            (
                "node port",
                node_port,
                vec![
                    "tcp . 30080 : goto ext-default/web/tcp/80",
                    "chain ext-default/web/tcp/80 {\n\t\tjump mark-for-masquerade\n\t\tgoto svc-default/web/tcp/80",
                ],
                vec![],
            ),
            (
                "node port without endpoints",
                node_port_empty,
                vec!["tcp . 30081 : goto reject-service"],
                vec!["ext-"],
            ),
            (
                "client ip affinity",
                sticky,
                vec![
                    "set affinity-default/web/tcp/80/10.244.1.3/8080 { type ipv4_addr; flags dynamic,timeout; timeout 60s; }",
                    "ip saddr @affinity-default/web/tcp/80/10.244.1.3/8080 goto ep-default/web/tcp/80/10.244.1.3/8080",
                    "update @affinity-default/web/tcp/80/10.244.1.4/8080 { ip saddr }",
                    "numgen random mod 3 vmap { 0 : goto ep-default/web/tcp/80/10.244.1.2/8080, 1 : goto ep-default/web/tcp/80/10.244.1.3/8080, 2 : goto ep-default/web/tcp/80/10.244.1.4/8080 }",
                    "chain ep-default/web/tcp/80/10.244.1.2/8080 {\n\t\tupdate @affinity-default/web/tcp/80/10.244.1.2/8080 { ip saddr }\n\t\tmeta l4proto tcp dnat to 10.244.1.2:8080",
                ],
                vec![],
            ),
            (
                "udp",
                udp,
                vec![
                    "10.96.0.10 . udp . 53 : goto svc-default/web/udp/53",
                    "meta l4proto udp dnat to 10.244.1.2:8080",
                ],
                vec!["meta l4proto tcp dnat"],
            ),
        ];
        for (name, port, want, unwanted) in cases {
            let script = render(&ranges(), &[port]);
            assert!(
                script.starts_with("add table ip rkube\ndelete table ip rkube\n"),
                "{name}"
            );
            for w in want {
                assert!(script.contains(w), "{name}: want {w:?} in\n{script}");
            }
            for u in unwanted {
                assert!(!script.contains(u), "{name}: unwanted {u:?} in\n{script}");
            }
        }
    }

    #[test]
    fn render_has_egress_masquerade_and_is_deterministic() {
        let a = vec![sp(&[("10.244.1.2", 8080)])];
        let script = render(&ranges(), &a);
        assert!(script.contains(
            "ip saddr 10.244.0.0/16 ip daddr != 10.244.0.0/16 ip daddr != 10.96.0.0/12 masquerade"
        ));
        assert_eq!(script, render(&ranges(), &a));
        // Input order does not matter: service_ports sorts.
        let s1 = Arc::new(svc("a", "10.96.0.1", vec![port(None, "TCP", 80)]));
        let s2 = Arc::new(svc("b", "10.96.0.2", vec![port(None, "TCP", 80)]));
        let forward = service_ports(&[s1.clone(), s2.clone()], &[]);
        let backward = service_ports(&[s2, s1], &[]);
        assert_eq!(render(&ranges(), &forward), render(&ranges(), &backward));
    }
}
