//! The endpoints controller: for every Service with a selector, an Endpoints object of
//! the same name listing the IPs of matching pods (ready and not-ready apart) and the
//! ports, with named target ports resolved per pod. Start at [`reconcile`].

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, ObjectReference, Pod, Service,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use rkube_api::selector::LabelSelector;
use rkube_client::controller::Action;
use rkube_client::{api, ObjectRef, Store};
use tracing::debug;

use crate::cluster::Writer;
use crate::pod;

/// What an endpoints reconcile can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to write endpoints {0}")]
    Write(String, #[source] api::Error),
}

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What the endpoints controller reads and writes.
pub struct Context {
    pub pods: Store<Pod>,
    pub endpoints: Store<Endpoints>,
    pub writer: Arc<dyn Writer<Endpoints>>,
}

/// The port of `pod` a service port targets: a number as is, a name looked up among
/// the pod's container ports (`None` if the pod has no such port).
fn target_port(pod: &Pod, target: Option<&IntOrString>, port: i32) -> Option<i32> {
    match target {
        None => Some(port),
        Some(IntOrString::Int(0)) => Some(port),
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(name)) => pod
            .spec
            .as_ref()?
            .containers
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .map(|p| p.container_port),
    }
}

/// A service port resolved for one pod: name, port number, protocol.
type ResolvedPort = (String, i32, String);
/// Ready and not-ready addresses.
type Addresses = (Vec<EndpointAddress>, Vec<EndpointAddress>);

/// The subsets for `service` given the pods in its namespace: pods grouped by their
/// resolved port list, addresses sorted by IP.
pub fn subsets(service: &Service, pods: &[Arc<Pod>]) -> Vec<EndpointSubset> {
    let Some(spec) = service.spec.as_ref() else {
        return Vec::new();
    };
    let Some(selector) = spec.selector.as_ref() else {
        return Vec::new();
    };
    let selector = LabelSelector::from_map(selector);
    let mut groups: BTreeMap<Vec<ResolvedPort>, Addresses> = BTreeMap::new();
    for p in pods {
        let labels = p.metadata.labels.clone().unwrap_or_default();
        if !selector.matches(&labels) || !pod::is_active(p) {
            continue;
        }
        let Some(ip) = p.status.as_ref().and_then(|s| s.pod_ip.clone()) else {
            continue;
        };
        let ports: Vec<ResolvedPort> = spec
            .ports
            .iter()
            .flatten()
            .filter_map(|sp| {
                let port = target_port(p, sp.target_port.as_ref(), sp.port)?;
                Some((
                    sp.name.clone().unwrap_or_default(),
                    port,
                    sp.protocol.clone().unwrap_or_else(|| "TCP".into()),
                ))
            })
            .collect();
        if ports.is_empty() && spec.ports.as_ref().is_some_and(|p| !p.is_empty()) {
            continue;
        }
        let address = EndpointAddress {
            ip,
            node_name: p.spec.as_ref().and_then(|s| s.node_name.clone()),
            target_ref: Some(ObjectReference {
                kind: Some("Pod".into()),
                name: p.metadata.name.clone(),
                namespace: p.metadata.namespace.clone(),
                uid: p.metadata.uid.clone(),
                ..Default::default()
            }),
            hostname: None,
        };
        let entry = groups.entry(ports).or_default();
        if pod::is_ready(p) {
            entry.0.push(address);
        } else {
            entry.1.push(address);
        }
    }
    groups
        .into_iter()
        .map(|(ports, (mut ready, mut not_ready))| {
            ready.sort_by(|a, b| a.ip.cmp(&b.ip));
            not_ready.sort_by(|a, b| a.ip.cmp(&b.ip));
            EndpointSubset {
                addresses: (!ready.is_empty()).then_some(ready),
                not_ready_addresses: (!not_ready.is_empty()).then_some(not_ready),
                ports: (!ports.is_empty()).then(|| {
                    ports
                        .into_iter()
                        .map(|(name, port, protocol)| EndpointPort {
                            name: (!name.is_empty()).then_some(name),
                            port,
                            protocol: Some(protocol),
                            app_protocol: None,
                        })
                        .collect()
                }),
            }
        })
        .collect()
}

/// Writes the Endpoints of `service` when they differ from the cached ones.
pub async fn reconcile(service: Arc<Service>, ctx: Arc<Context>) -> Result<Action> {
    if service
        .spec
        .as_ref()
        .and_then(|s| s.selector.as_ref())
        .is_none()
        || service.metadata.deletion_timestamp.is_some()
    {
        return Ok(Action::await_change());
    }
    let namespace = service.metadata.namespace.clone().unwrap_or_default();
    let name = service.metadata.name.clone().unwrap_or_default();
    let pods: Vec<Arc<Pod>> = ctx
        .pods
        .state()
        .into_iter()
        .filter(|p| p.metadata.namespace.as_deref() == Some(namespace.as_str()))
        .collect();
    let subsets = subsets(&service, &pods);
    let existing = ctx.endpoints.get(&ObjectRef::new(&name).within(&namespace));
    let subsets_field = (!subsets.is_empty()).then_some(subsets);
    let result = match existing {
        Some(current) if current.subsets == subsets_field => return Ok(Action::await_change()),
        Some(current) => {
            let mut updated = (*current).clone();
            updated.subsets = subsets_field;
            ctx.writer.replace(&updated).await
        }
        None => {
            let endpoints = Endpoints {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(namespace.clone()),
                    labels: service.metadata.labels.clone(),
                    ..Default::default()
                },
                subsets: subsets_field,
            };
            ctx.writer.create(&endpoints).await
        }
    };
    match result {
        Ok(_) => {
            debug!(service = %name, "endpoints updated");
            Ok(Action::await_change())
        }
        Err(err) => Err(Error::Write(name, err)),
    }
}

/// Failures (conflicts with a stale cache, mostly) are retried with back-off.
pub fn error_policy(service: Arc<Service>, err: &Error, _ctx: Arc<Context>) -> Action {
    crate::failure::report("endpoints", &ObjectRef::from_obj(service.as_ref()), err);
    Action::retry()
}

/// The services in `pod`'s namespace whose selector matches it (what to wake when a
/// pod changes).
pub fn services_for_pod(services: &Store<Service>, pod: &Pod) -> Vec<ObjectRef> {
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    services
        .state()
        .iter()
        .filter(|s| s.metadata.namespace == pod.metadata.namespace)
        .filter(|s| {
            s.spec
                .as_ref()
                .and_then(|spec| spec.selector.as_ref())
                .is_some_and(|sel| LabelSelector::from_map(sel).matches(&labels))
        })
        .map(|s| ObjectRef::from_obj(s.as_ref()))
        .collect()
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{Container, ContainerPort, ServicePort, ServiceSpec};

    use super::*;
    use crate::pod::testing::*;

    fn service() -> Service {
        Service {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("default".into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                selector: Some([("app".to_string(), "web".to_string())].into()),
                ports: Some(vec![ServicePort {
                    name: Some("http".into()),
                    port: 80,
                    target_port: Some(IntOrString::String("web".into())),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            status: None,
        }
    }

    fn web_pod(name: &str, ip: &str, container_port: i32, ready: bool) -> Arc<Pod> {
        let mut p = if ready {
            running_ready(pod(name), 1)
        } else {
            pod(name)
        };
        p.metadata.labels = Some([("app".to_string(), "web".to_string())].into());
        p.status.get_or_insert_with(Default::default).pod_ip = Some(ip.into());
        p.spec.get_or_insert_with(Default::default).containers = vec![Container {
            name: "c".into(),
            ports: Some(vec![ContainerPort {
                name: Some("web".into()),
                container_port,
                ..Default::default()
            }]),
            ..Default::default()
        }];
        Arc::new(p)
    }

    #[test]
    fn named_ports_resolve_per_pod_and_readiness_splits_addresses() {
        let pods = vec![
            web_pod("b", "10.0.0.2", 8080, true),
            web_pod("a", "10.0.0.1", 8080, false),
            web_pod("c", "10.0.0.3", 9090, true),
        ];
        let subsets = subsets(&service(), &pods);
        assert_eq!(subsets.len(), 2, "{subsets:?}");
        let s8080 = &subsets[0];
        assert_eq!(s8080.ports.as_ref().map(|p| p[0].port), Some(8080));
        let ips = |a: &Option<Vec<EndpointAddress>>| {
            a.iter().flatten().map(|a| a.ip.clone()).collect::<Vec<_>>()
        };
        assert_eq!(ips(&s8080.addresses), ["10.0.0.2"]);
        assert_eq!(ips(&s8080.not_ready_addresses), ["10.0.0.1"]);
        assert_eq!(subsets[1].ports.as_ref().map(|p| p[0].port), Some(9090));
        assert_eq!(ips(&subsets[1].addresses), ["10.0.0.3"]);
    }
}
