//! Answers for names in the cluster domain, from the Services and Endpoints the proxy
//! watches: a pure function of a request and a [`Directory`].
//!
//! Names (with the default domain `cluster.local`):
//!
//! - `<svc>.<ns>.svc.cluster.local` → A: the ClusterIP; for a headless Service the ready
//!   endpoint addresses; an ExternalName Service answers a CNAME;
//! - `<host>.<svc>.<ns>.svc.cluster.local` → A: the ready endpoint whose `hostname` is
//!   `<host>` (or whose address written with dashes, `10-244-1-5`, is);
//! - `_<port>._<proto>.<svc>.<ns>.svc.cluster.local` → SRV for the named port;
//! - `<a-b-c-d>.<ns>.pod.cluster.local` → A: that address;
//! - the zone's own inner names (`cluster.local`, `svc.…`, `<ns>.svc.…`) exist but hold
//!   nothing (NOERROR, no answer); every other name in the domain is NXDOMAIN.
//!
//! Everything outside the domain is [`Answer::Forward`]ed by the server.

use std::net::Ipv4Addr;
use std::sync::Arc;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, CNAME, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use k8s_openapi::api::core::v1::{EndpointAddress, Endpoints, Service};

use crate::proxy::ServiceState;

/// The TTL of every record the server answers itself.
pub const TTL: u32 = 5;

/// Where the answers come from: the Services and Endpoints by namespace and name.
pub trait Directory: Send + Sync + 'static {
    fn service(&self, namespace: &str, name: &str) -> Option<Arc<Service>>;
    fn endpoints(&self, namespace: &str, name: &str) -> Option<Arc<Endpoints>>;
}

impl Directory for ServiceState {
    fn service(&self, namespace: &str, name: &str) -> Option<Arc<Service>> {
        self.services
            .get(&rkube_client::ObjectRef::new(name).within(namespace))
    }

    fn endpoints(&self, namespace: &str, name: &str) -> Option<Arc<Endpoints>> {
        self.endpoints
            .get(&rkube_client::ObjectRef::new(name).within(namespace))
    }
}

/// A name of the cluster domain, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterName {
    /// `<name>.<namespace>.svc.<domain>`
    Service { namespace: String, name: String },
    /// `<host>.<service>.<namespace>.svc.<domain>`
    Endpoint {
        namespace: String,
        service: String,
        host: String,
    },
    /// `_<port>._<protocol>.<service>.<namespace>.svc.<domain>`
    Srv {
        namespace: String,
        service: String,
        port: String,
        protocol: String,
    },
    /// `<a-b-c-d>.<namespace>.pod.<domain>`
    Pod { ip: Ipv4Addr },
    /// A name of the zone that holds no records itself (`<domain>`, `svc.<domain>`, …).
    Inner,
    /// In the domain, but no such name can exist.
    Unknown,
}

/// Parses `name` (any case, with or without the final dot) against `domain`; `None` when
/// the name is outside the domain.
pub fn parse(name: &str, domain: &str) -> Option<ClusterName> {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    if name == domain {
        return Some(ClusterName::Inner);
    }
    let rest = name.strip_suffix(&format!(".{domain}"))?;
    let mut labels: Vec<&str> = rest.split('.').collect();
    let kind = labels.pop()?;
    labels.reverse(); // Innermost first: namespace, then service, …
    let owned = |s: &&str| s.to_string();
    Some(match (kind, labels.as_slice()) {
        ("svc", []) | ("svc", [_]) | ("pod", []) | ("pod", [_]) => ClusterName::Inner,
        ("svc", [namespace, name]) => ClusterName::Service {
            namespace: owned(namespace),
            name: owned(name),
        },
        ("svc", [namespace, service, host]) if !host.starts_with('_') => ClusterName::Endpoint {
            namespace: owned(namespace),
            service: owned(service),
            host: owned(host),
        },
        ("svc", [namespace, service, protocol, port])
            if protocol.starts_with('_') && port.starts_with('_') =>
        {
            ClusterName::Srv {
                namespace: owned(namespace),
                service: owned(service),
                port: port[1..].to_string(),
                protocol: protocol[1..].to_string(),
            }
        }
        ("pod", [_namespace, dashed]) => match dashed.replace('-', ".").parse() {
            Ok(ip) => ClusterName::Pod { ip },
            Err(_) => ClusterName::Unknown,
        },
        _ => ClusterName::Unknown,
    })
}

/// What to do with a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// The response to send.
    Local(Message),
    /// Not ours: relay it to the upstream resolvers.
    Forward,
}

/// The answer to `request` for the cluster domain `domain`.
pub fn answer(request: &Message, domain: &str, directory: &dyn Directory) -> Answer {
    if request.message_type() != MessageType::Query {
        return Answer::Local(reply(request, ResponseCode::FormErr));
    }
    if request.op_code() != OpCode::Query {
        return Answer::Local(reply(request, ResponseCode::NotImp));
    }
    let [query] = request.queries() else {
        return Answer::Local(reply(request, ResponseCode::FormErr));
    };
    let qname = query.name().to_ascii();
    let Some(parsed) = parse(&qname, domain) else {
        return Answer::Forward;
    };
    let qtype = query.query_type();
    let wants = |t: RecordType| qtype == t || qtype == RecordType::ANY;
    let name = query.name().clone();
    let domain = domain.trim_end_matches('.');
    let mut records = Vec::new();
    let exists = match parsed {
        ClusterName::Inner => true,
        ClusterName::Unknown => false,
        ClusterName::Pod { ip } => {
            if wants(RecordType::A) {
                records.push(Record::from_rdata(name, TTL, RData::A(A(ip))));
            }
            true
        }
        ClusterName::Service {
            namespace,
            name: service_name,
        } => match directory.service(&namespace, &service_name) {
            None => false,
            Some(service) => {
                let spec = service.spec.clone().unwrap_or_default();
                if spec.type_.as_deref() == Some("ExternalName") {
                    let target = spec
                        .external_name
                        .as_deref()
                        .and_then(|n| Name::from_ascii(format!("{n}.")).ok());
                    if let Some(target) = target {
                        if wants(RecordType::CNAME) || wants(RecordType::A) {
                            records.push(Record::from_rdata(
                                name,
                                TTL,
                                RData::CNAME(CNAME(target)),
                            ));
                        }
                    }
                } else if wants(RecordType::A) {
                    for ip in service_addresses(&service, directory, &namespace, &service_name) {
                        records.push(Record::from_rdata(name.clone(), TTL, RData::A(A(ip))));
                    }
                }
                true
            }
        },
        ClusterName::Endpoint {
            namespace,
            service,
            host,
        } => {
            let found: Vec<Ipv4Addr> = ready_addresses(directory, &namespace, &service)
                .into_iter()
                .filter(|a| {
                    a.hostname.as_deref() == Some(host.as_str()) || a.ip.replace('.', "-") == host
                })
                .filter_map(|a| a.ip.parse().ok())
                .collect();
            if wants(RecordType::A) {
                for ip in &found {
                    records.push(Record::from_rdata(name.clone(), TTL, RData::A(A(*ip))));
                }
            }
            !found.is_empty()
        }
        ClusterName::Srv {
            namespace,
            service: service_name,
            port,
            protocol,
        } => match directory.service(&namespace, &service_name) {
            None => false,
            Some(service) => {
                let spec = service.spec.clone().unwrap_or_default();
                let matching = spec.ports.iter().flatten().find(|p| {
                    p.name.as_deref() == Some(port.as_str())
                        && p.protocol
                            .as_deref()
                            .unwrap_or("TCP")
                            .eq_ignore_ascii_case(&protocol)
                });
                match matching {
                    None => false,
                    Some(service_port) => {
                        if wants(RecordType::SRV) {
                            srv_records(
                                &mut records,
                                &name,
                                &spec,
                                service_port,
                                directory,
                                (&namespace, &service_name),
                                domain,
                            );
                        }
                        true
                    }
                }
            }
        },
    };
    let mut response = reply(
        request,
        if exists {
            ResponseCode::NoError
        } else {
            ResponseCode::NXDomain
        },
    );
    response.set_authoritative(true);
    response.add_answers(records);
    Answer::Local(response)
}

/// SRV records for one named port: the Service's own name for a ClusterIP, else one
/// per ready endpoint (named by hostname, or by the dashed address).
fn srv_records(
    records: &mut Vec<Record>,
    name: &Name,
    spec: &k8s_openapi::api::core::v1::ServiceSpec,
    service_port: &k8s_openapi::api::core::v1::ServicePort,
    directory: &dyn Directory,
    (namespace, service): (&str, &str),
    domain: &str,
) {
    let headless = spec.cluster_ip.as_deref().is_none_or(|ip| ip == "None");
    let Ok(port) = u16::try_from(service_port.port) else {
        return;
    };
    let target = |host: Option<&str>| {
        let fqdn = match host {
            Some(host) => format!("{host}.{service}.{namespace}.svc.{domain}."),
            None => format!("{service}.{namespace}.svc.{domain}."),
        };
        Name::from_ascii(fqdn).ok()
    };
    if !headless {
        if let Some(target) = target(None) {
            records.push(Record::from_rdata(
                name.clone(),
                TTL,
                RData::SRV(SRV::new(0, 100, port, target)),
            ));
        }
        return;
    }
    for endpoint in directory.endpoints(namespace, service).iter() {
        for subset in endpoint.subsets.iter().flatten() {
            let Some(endpoint_port) = subset
                .ports
                .iter()
                .flatten()
                .find(|p| p.name == service_port.name)
            else {
                continue;
            };
            let Ok(port) = u16::try_from(endpoint_port.port) else {
                continue;
            };
            for address in subset.addresses.iter().flatten() {
                let host = address
                    .hostname
                    .clone()
                    .unwrap_or_else(|| address.ip.replace('.', "-"));
                if let Some(target) = target(Some(&host)) {
                    records.push(Record::from_rdata(
                        name.clone(),
                        TTL,
                        RData::SRV(SRV::new(0, 100, port, target)),
                    ));
                }
            }
        }
    }
}

/// The A addresses of a Service: its ClusterIP, or, headless, its ready endpoints.
fn service_addresses(
    service: &Service,
    directory: &dyn Directory,
    namespace: &str,
    name: &str,
) -> Vec<Ipv4Addr> {
    let cluster_ip = service.spec.as_ref().and_then(|s| s.cluster_ip.as_deref());
    match cluster_ip {
        Some(ip) if ip != "None" => ip.parse().into_iter().collect(),
        _ => {
            let mut ips: Vec<Ipv4Addr> = ready_addresses(directory, namespace, name)
                .into_iter()
                .filter_map(|a| a.ip.parse().ok())
                .collect();
            ips.sort();
            ips.dedup();
            ips
        }
    }
}

/// The ready addresses of the Endpoints `namespace/name`.
fn ready_addresses(directory: &dyn Directory, namespace: &str, name: &str) -> Vec<EndpointAddress> {
    directory
        .endpoints(namespace, name)
        .map(|e| {
            e.subsets
                .iter()
                .flatten()
                .flat_map(|s| s.addresses.iter().flatten().cloned())
                .collect()
        })
        .unwrap_or_default()
}

/// An empty response to `request` with `code`.
pub fn reply(request: &Message, code: ResponseCode) -> Message {
    let mut response = Message::new();
    response
        .set_id(request.id())
        .set_message_type(MessageType::Response)
        .set_op_code(request.op_code())
        .set_recursion_desired(request.recursion_desired())
        .set_recursion_available(true)
        .set_response_code(code);
    response.add_queries(request.queries().iter().cloned());
    response
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use hickory_proto::op::Query;
    use k8s_openapi::api::core::v1::{EndpointPort, EndpointSubset, ServicePort, ServiceSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    #[derive(Default)]
    struct FakeDirectory {
        services: HashMap<(String, String), Arc<Service>>,
        endpoints: HashMap<(String, String), Arc<Endpoints>>,
    }

    impl Directory for FakeDirectory {
        fn service(&self, namespace: &str, name: &str) -> Option<Arc<Service>> {
            self.services
                .get(&(namespace.to_string(), name.to_string()))
                .cloned()
        }
        fn endpoints(&self, namespace: &str, name: &str) -> Option<Arc<Endpoints>> {
            self.endpoints
                .get(&(namespace.to_string(), name.to_string()))
                .cloned()
        }
    }

    fn meta(ns: &str, name: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(ns.to_string()),
            ..Default::default()
        }
    }

    fn directory() -> FakeDirectory {
        let mut d = FakeDirectory::default();
        let mut add =
            |ns: &str, name: &str, spec: ServiceSpec, addresses: &[(&str, Option<&str>)]| {
                d.services.insert(
                    (ns.to_string(), name.to_string()),
                    Arc::new(Service {
                        metadata: meta(ns, name),
                        spec: Some(spec),
                        ..Default::default()
                    }),
                );
                d.endpoints.insert(
                    (ns.to_string(), name.to_string()),
                    Arc::new(Endpoints {
                        metadata: meta(ns, name),
                        subsets: Some(vec![EndpointSubset {
                            addresses: Some(
                                addresses
                                    .iter()
                                    .map(|(ip, host)| EndpointAddress {
                                        ip: ip.to_string(),
                                        hostname: host.map(str::to_string),
                                        ..Default::default()
                                    })
                                    .collect(),
                            ),
                            not_ready_addresses: Some(vec![EndpointAddress {
                                ip: "10.244.9.9".to_string(),
                                ..Default::default()
                            }]),
                            ports: Some(vec![EndpointPort {
                                name: Some("http".to_string()),
                                port: 8080,
                                ..Default::default()
                            }]),
                        }]),
                    }),
                );
            };
        let port = ServicePort {
            name: Some("http".to_string()),
            port: 80,
            ..Default::default()
        };
        add(
            "default",
            "web",
            ServiceSpec {
                cluster_ip: Some("10.96.0.10".to_string()),
                ports: Some(vec![port.clone()]),
                ..Default::default()
            },
            &[("10.244.1.2", None)],
        );
        add(
            "db",
            "pg",
            ServiceSpec {
                cluster_ip: Some("None".to_string()),
                ports: Some(vec![port]),
                ..Default::default()
            },
            &[("10.244.1.4", Some("pg-0")), ("10.244.1.3", Some("pg-1"))],
        );
        add(
            "default",
            "ext",
            ServiceSpec {
                type_: Some("ExternalName".to_string()),
                external_name: Some("example.com".to_string()),
                ..Default::default()
            },
            &[],
        );
        d
    }

    fn request(name: &str, qtype: RecordType) -> Message {
        let mut m = Message::new();
        m.set_id(7).set_recursion_desired(true);
        m.add_query(Query::query(Name::from_ascii(name).expect("name"), qtype));
        m
    }

    fn rdata(answer: &Answer) -> (ResponseCode, Vec<String>) {
        match answer {
            Answer::Local(m) => {
                assert_eq!(m.id(), 7);
                assert_eq!(m.message_type(), MessageType::Response);
                assert!(m.answers().iter().all(|r| r.ttl() == TTL));
                (
                    m.response_code(),
                    m.answers().iter().map(|r| r.data().to_string()).collect(),
                )
            }
            Answer::Forward => panic!("forwarded"),
        }
    }

    #[test]
    fn parse_names() {
        let cases = vec![
            (
                "web.default.svc.cluster.local.",
                Some(ClusterName::Service {
                    namespace: "default".into(),
                    name: "web".into(),
                }),
            ),
            (
                "WEB.Default.svc.cluster.local",
                Some(ClusterName::Service {
                    namespace: "default".into(),
                    name: "web".into(),
                }),
            ),
            (
                "pg-0.pg.db.svc.cluster.local.",
                Some(ClusterName::Endpoint {
                    namespace: "db".into(),
                    service: "pg".into(),
                    host: "pg-0".into(),
                }),
            ),
            (
                "_http._tcp.web.default.svc.cluster.local.",
                Some(ClusterName::Srv {
                    namespace: "default".into(),
                    service: "web".into(),
                    port: "http".into(),
                    protocol: "tcp".into(),
                }),
            ),
            (
                "10-244-1-5.default.pod.cluster.local.",
                Some(ClusterName::Pod {
                    ip: "10.244.1.5".parse().expect("ip"),
                }),
            ),
            ("cluster.local.", Some(ClusterName::Inner)),
            ("svc.cluster.local.", Some(ClusterName::Inner)),
            ("default.svc.cluster.local.", Some(ClusterName::Inner)),
            ("a.b.c.d.e.svc.cluster.local.", Some(ClusterName::Unknown)),
            (
                "google.com.default.svc.cluster.local.",
                Some(ClusterName::Endpoint {
                    namespace: "default".into(),
                    service: "com".into(),
                    host: "google".into(),
                }),
            ),
            ("x.cluster.local.", Some(ClusterName::Unknown)),
            ("example.com.", None),
            ("notcluster.local.", None),
        ];
        for (name, want) in cases {
            assert_eq!(parse(name, "cluster.local"), want, "{name}");
        }
    }

    #[test]
    fn answers_from_the_directory() {
        let d = directory();
        let cases: Vec<(&str, RecordType, ResponseCode, Vec<&str>)> = vec![
            (
                "web.default.svc.cluster.local.",
                RecordType::A,
                ResponseCode::NoError,
                vec!["10.96.0.10"],
            ),
            (
                "web.default.svc.cluster.local.",
                RecordType::AAAA,
                ResponseCode::NoError,
                vec![],
            ),
            (
                "pg.db.svc.cluster.local.",
                RecordType::A,
                ResponseCode::NoError,
                vec!["10.244.1.3", "10.244.1.4"],
            ),
            (
                "pg-0.pg.db.svc.cluster.local.",
                RecordType::A,
                ResponseCode::NoError,
                vec!["10.244.1.4"],
            ),
            (
                "pg-7.pg.db.svc.cluster.local.",
                RecordType::A,
                ResponseCode::NXDomain,
                vec![],
            ),
            (
                "nope.default.svc.cluster.local.",
                RecordType::A,
                ResponseCode::NXDomain,
                vec![],
            ),
            (
                "google.com.default.svc.cluster.local.",
                RecordType::A,
                ResponseCode::NXDomain,
                vec![],
            ),
            (
                "web.other.svc.cluster.local.",
                RecordType::A,
                ResponseCode::NXDomain,
                vec![],
            ),
            (
                "default.svc.cluster.local.",
                RecordType::A,
                ResponseCode::NoError,
                vec![],
            ),
            (
                "ext.default.svc.cluster.local.",
                RecordType::A,
                ResponseCode::NoError,
                vec!["example.com."],
            ),
            (
                "_http._tcp.web.default.svc.cluster.local.",
                RecordType::SRV,
                ResponseCode::NoError,
                vec!["0 100 80 web.default.svc.cluster.local."],
            ),
            (
                "_http._tcp.pg.db.svc.cluster.local.",
                RecordType::SRV,
                ResponseCode::NoError,
                vec![
                    "0 100 8080 pg-1.pg.db.svc.cluster.local.",
                    "0 100 8080 pg-0.pg.db.svc.cluster.local.",
                ],
            ),
            (
                "_dns._udp.web.default.svc.cluster.local.",
                RecordType::SRV,
                ResponseCode::NXDomain,
                vec![],
            ),
            (
                "10-244-1-5.default.pod.cluster.local.",
                RecordType::A,
                ResponseCode::NoError,
                vec!["10.244.1.5"],
            ),
        ];
        for (name, qtype, code, want) in cases {
            let (got_code, mut got) = rdata(&answer(&request(name, qtype), "cluster.local", &d));
            let mut want: Vec<String> = want.into_iter().map(str::to_string).collect();
            got.sort();
            want.sort();
            assert_eq!((got_code, got), (code, want), "{name} {qtype}");
        }
        assert_eq!(
            answer(&request("example.com.", RecordType::A), "cluster.local", &d),
            Answer::Forward
        );
    }
}
