//! The Node object: built from [`MachineInfo`], registered once, then its status
//! (conditions and heartbeat times) written every few seconds.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    DaemonEndpoint, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeStatus,
    NodeSystemInfo,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::chrono::{DateTime, Utc};
use rkube_client::{api, Api, Client};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::machine::MachineInfo;

/// The version the Node reports as `nodeInfo.kubeletVersion`.
pub const KUBELET_VERSION: &str = "v1.32.0-rkube";
/// The version the Node reports as `nodeInfo.containerRuntimeVersion`.
pub const RUNTIME_VERSION: &str = "rkube://0.1.0";
/// Pods a node accepts, as kubelet's default `maxPods`.
pub const MAX_PODS: u32 = 110;

/// What registering or updating the Node can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to create node {name}")]
    Create {
        name: String,
        #[source]
        source: api::Error,
    },
    #[error("failed to read node {name}")]
    Get {
        name: String,
        #[source]
        source: api::Error,
    },
    #[error("failed to update node {name}")]
    Update {
        name: String,
        #[source]
        source: api::Error,
    },
    #[error("failed to write the status of node {name}")]
    UpdateStatus {
        name: String,
        #[source]
        source: api::Error,
    },
}

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Registers this node and keeps its status fresh.
#[derive(Debug, Clone)]
pub struct NodeRegistrar {
    nodes: Api<Node>,
    name: String,
    machine: MachineInfo,
    kubelet_port: Option<u16>,
}

impl NodeRegistrar {
    pub fn new(client: Client, name: String, machine: MachineInfo) -> Self {
        NodeRegistrar {
            nodes: Api::all(client),
            name,
            machine,
            kubelet_port: None,
        }
    }

    /// Reports `port` as `status.daemonEndpoints.kubeletEndpoint.port`: where the
    /// agent's own service (logs, exec, stats) listens.
    pub fn with_kubelet_port(mut self, port: u16) -> Self {
        self.kubelet_port = Some(port);
        self
    }

    /// Creates the Node, or adopts the existing one (setting our labels), then writes its
    /// status. Returns the Node as stored.
    ///
    /// # Errors
    /// When the apiserver refuses a write.
    pub async fn register(&self) -> Result<Node> {
        let wanted = desired_node(&self.name, &self.machine);
        let node = match self.nodes.create(&wanted).await {
            Ok(node) => {
                info!(node = %self.name, "registered node");
                node
            }
            Err(err) if err.is_already_exists() => {
                let mut node = self
                    .nodes
                    .get(&self.name)
                    .await
                    .map_err(|source| Error::Get {
                        name: self.name.clone(),
                        source,
                    })?;
                let labels = node.metadata.labels.get_or_insert_with(BTreeMap::new);
                let before = labels.clone();
                labels.extend(node_labels(&self.name, &self.machine));
                if *labels != before {
                    node = self
                        .nodes
                        .replace(&self.name, &node)
                        .await
                        .map_err(|source| Error::Update {
                            name: self.name.clone(),
                            source,
                        })?;
                }
                info!(node = %self.name, "node already registered; adopted it");
                node
            }
            Err(source) => {
                return Err(Error::Create {
                    name: self.name.clone(),
                    source,
                })
            }
        };
        // The controller-manager's node IPAM may set `spec.podCIDR` between the create
        // and this write (409 Conflict): read the Node again and retry, as kubelet does.
        let mut node = node;
        for _ in 0..5 {
            match self.update_status(node.clone()).await {
                Err(Error::UpdateStatus { source, .. }) if source.is_conflict() => {
                    node = self
                        .nodes
                        .get(&self.name)
                        .await
                        .map_err(|source| Error::Get {
                            name: self.name.clone(),
                            source,
                        })?;
                }
                result => return result,
            }
        }
        self.update_status(node).await
    }

    /// Writes the node status every `interval` until `shutdown`; failures are logged and
    /// retried at the next tick.
    pub async fn run(&self, interval: Duration, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
            let result = match self.nodes.get(&self.name).await {
                Ok(node) => self.update_status(node).await.map(|_| ()),
                Err(source) => Err(Error::Get {
                    name: self.name.clone(),
                    source,
                }),
            };
            match result {
                Ok(()) => debug!(node = %self.name, "node status updated"),
                Err(err) => warn!(node = %self.name, error = %err, "failed to update node status"),
            }
        }
    }

    async fn update_status(&self, mut node: Node) -> Result<Node> {
        let previous = node.status.take();
        let mut status = node_status(&self.machine, previous.as_ref(), Utc::now());
        if let Some(port) = self.kubelet_port {
            status.daemon_endpoints = Some(NodeDaemonEndpoints {
                kubelet_endpoint: Some(DaemonEndpoint {
                    port: i32::from(port),
                }),
            });
        }
        node.status = Some(status);
        self.nodes
            .replace_status(&self.name, &node)
            .await
            .map_err(|source| Error::UpdateStatus {
                name: self.name.clone(),
                source,
            })
    }
}

/// `kubernetes.io/hostname`, `kubernetes.io/os` and `kubernetes.io/arch`, plus the beta
/// aliases that older manifests select on.
pub fn node_labels(name: &str, machine: &MachineInfo) -> BTreeMap<String, String> {
    [
        ("kubernetes.io/hostname", name),
        ("kubernetes.io/os", "linux"),
        ("kubernetes.io/arch", machine.architecture.as_str()),
        ("beta.kubernetes.io/os", "linux"),
        ("beta.kubernetes.io/arch", machine.architecture.as_str()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// The Node this agent registers (without status).
pub fn desired_node(name: &str, machine: &MachineInfo) -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(node_labels(name, machine)),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// The node status at `now`: capacity from the machine, conditions whose
/// `lastTransitionTime` is kept from `previous` while their status does not change.
pub fn node_status(
    machine: &MachineInfo,
    previous: Option<&NodeStatus>,
    now: DateTime<Utc>,
) -> NodeStatus {
    let capacity: BTreeMap<String, Quantity> = [
        ("cpu", machine.cpus.to_string()),
        ("memory", format!("{}Ki", machine.memory_bytes / 1024)),
        ("pods", MAX_PODS.to_string()),
        (
            "ephemeral-storage",
            format!("{}Ki", machine.ephemeral_storage_bytes / 1024),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), Quantity(v)))
    .collect();
    let condition = |type_: &str, status: &str, reason: &str, message: &str| {
        let transition = previous
            .and_then(|p| p.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == type_))
            .filter(|c| c.status == status)
            .and_then(|c| c.last_transition_time.clone())
            .unwrap_or(Time(now));
        NodeCondition {
            type_: type_.to_string(),
            status: status.to_string(),
            reason: Some(reason.to_string()),
            message: Some(message.to_string()),
            last_heartbeat_time: Some(Time(now)),
            last_transition_time: Some(transition),
        }
    };
    NodeStatus {
        allocatable: Some(capacity.clone()),
        capacity: Some(capacity),
        conditions: Some(vec![
            condition(
                "MemoryPressure",
                "False",
                "KubeletHasSufficientMemory",
                "kubelet has sufficient memory available",
            ),
            condition(
                "DiskPressure",
                "False",
                "KubeletHasNoDiskPressure",
                "kubelet has no disk pressure",
            ),
            condition(
                "PIDPressure",
                "False",
                "KubeletHasSufficientPID",
                "kubelet has sufficient PID available",
            ),
            condition(
                "Ready",
                "True",
                "KubeletReady",
                "kubelet is posting ready status",
            ),
        ]),
        addresses: Some(vec![
            NodeAddress {
                type_: "InternalIP".into(),
                address: machine.internal_ip.to_string(),
            },
            NodeAddress {
                type_: "Hostname".into(),
                address: machine.hostname.clone(),
            },
        ]),
        node_info: Some(NodeSystemInfo {
            architecture: machine.architecture.clone(),
            boot_id: machine.boot_id.clone(),
            container_runtime_version: RUNTIME_VERSION.into(),
            kernel_version: machine.kernel_version.clone(),
            kube_proxy_version: String::new(),
            kubelet_version: KUBELET_VERSION.into(),
            machine_id: machine.machine_id.clone(),
            operating_system: "linux".into(),
            os_image: machine.os_image.clone(),
            system_uuid: machine.system_uuid.clone(),
        }),
        ..previous.cloned().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use k8s_openapi::chrono::TimeZone;

    use super::*;

    fn machine() -> MachineInfo {
        MachineInfo {
            hostname: "host-a".into(),
            cpus: 4,
            memory_bytes: 8 * 1024 * 1024 * 1024,
            ephemeral_storage_bytes: 100 * 1024 * 1024 * 1024,
            internal_ip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 5)),
            kernel_version: "6.1.0".into(),
            os_image: "Debian GNU/Linux 12 (bookworm)".into(),
            architecture: "amd64".into(),
            machine_id: "m".into(),
            boot_id: "b".into(),
            system_uuid: "u".into(),
        }
    }

    fn ready(status: &NodeStatus) -> &NodeCondition {
        status
            .conditions
            .as_ref()
            .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
            .expect("a Ready condition")
    }

    #[test]
    fn status_reports_capacity_info_and_ready() {
        let t0 = Utc
            .with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
            .single()
            .expect("valid date");
        let status = node_status(&machine(), None, t0);
        let capacity = status.capacity.as_ref().expect("capacity");
        assert_eq!(capacity["cpu"].0, "4");
        assert_eq!(capacity["memory"].0, "8388608Ki");
        assert_eq!(capacity["pods"].0, "110");
        assert_eq!(capacity["ephemeral-storage"].0, "104857600Ki");
        assert_eq!(status.allocatable, status.capacity);
        let info = status.node_info.as_ref().expect("nodeInfo");
        assert_eq!(info.kubelet_version, "v1.32.0-rkube");
        assert_eq!(info.container_runtime_version, "rkube://0.1.0");
        assert_eq!(info.architecture, "amd64");
        let addresses = status.addresses.as_ref().expect("addresses");
        assert_eq!(addresses[0].type_, "InternalIP");
        assert_eq!(addresses[0].address, "10.0.0.5");
        assert_eq!(addresses[1].address, "host-a");
        assert_eq!(ready(&status).status, "True");

        // A later heartbeat keeps the transition time and moves the heartbeat.
        let t1 = t0 + k8s_openapi::chrono::Duration::seconds(10);
        let later = node_status(&machine(), Some(&status), t1);
        assert_eq!(ready(&later).last_transition_time, Some(Time(t0)));
        assert_eq!(ready(&later).last_heartbeat_time, Some(Time(t1)));
    }

    #[test]
    fn labels_name_hostname_os_and_arch() {
        let labels = node_labels("n1", &machine());
        assert_eq!(labels["kubernetes.io/hostname"], "n1");
        assert_eq!(labels["kubernetes.io/os"], "linux");
        assert_eq!(labels["kubernetes.io/arch"], "amd64");
    }
}
