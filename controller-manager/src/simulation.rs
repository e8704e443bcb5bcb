//! A simulated node agent for integration tests and the benchmark: it registers
//! nodes, renews their Leases, binds unscheduled pods to them (playing the scheduler),
//! marks bound pods Running and Ready (unless told not to), and finishes the deletion
//! of terminating pods, as a kubelet would.
//!
//! Start with [`SimulatedNodes::start`]. Controllers never use this module.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{
    Binding, Node, NodeCondition, NodeStatus, ObjectReference, Pod, PodCondition, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use parking_lot::Mutex;
use rkube_client::watcher::Event;
use rkube_client::{api, watcher, Api, Client, DeleteParams, WatcherConfig};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::pod::now;

/// Pods whose first container image contains this never become ready.
pub const NEVER_READY: &str = "never-ready";

/// The simulated nodes and their agent; dropping it does not stop it, cancel the token.
#[derive(Clone)]
pub struct SimulatedNodes {
    client: Client,
    nodes: Arc<Mutex<Vec<String>>>,
    /// Nodes whose lease is no longer renewed and whose pods are left alone.
    dead: Arc<Mutex<HashSet<String>>>,
    next: Arc<AtomicUsize>,
    ips: Arc<AtomicU32>,
    bind: Arc<AtomicBool>,
}

impl std::fmt::Debug for SimulatedNodes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimulatedNodes")
            .field("nodes", &self.nodes.lock().len())
            .finish()
    }
}

impl SimulatedNodes {
    /// Registers `count` nodes named `node-0`… and starts the agent.
    ///
    /// # Errors
    /// When a node cannot be created.
    pub async fn start(
        client: Client,
        count: usize,
        shutdown: CancellationToken,
    ) -> api::Result<Self> {
        let sim = SimulatedNodes {
            client,
            nodes: Arc::new(Mutex::new(Vec::new())),
            dead: Arc::new(Mutex::new(HashSet::new())),
            next: Arc::new(AtomicUsize::new(0)),
            ips: Arc::new(AtomicU32::new(1)),
            bind: Arc::new(AtomicBool::new(true)),
        };
        for i in 0..count {
            sim.add_node(&format!("node-{i}"), BTreeMap::new()).await?;
        }
        let agent = sim.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move { agent.run_pods(stop).await });
        let leases = sim.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move { leases.run_leases(stop).await });
        Ok(sim)
    }

    /// Whether unscheduled pods are bound (playing the scheduler); on by default.
    pub fn set_binding(&self, on: bool) {
        self.bind.store(on, Ordering::SeqCst);
    }

    /// Registers one more node with these labels; it becomes Ready.
    ///
    /// # Errors
    /// When the node cannot be created.
    pub async fn add_node(&self, name: &str, labels: BTreeMap<String, String>) -> api::Result<()> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let node = Node {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                labels: Some(labels),
                ..Default::default()
            },
            ..Default::default()
        };
        let created = match nodes.create(&node).await {
            Ok(created) => created,
            Err(err) if err.is_already_exists() => nodes.get(name).await?,
            Err(err) => return Err(err),
        };
        // The IPAM controller may write the node meanwhile: retry on conflicts.
        let mut current = created;
        for attempt in 0.. {
            let mut ready = current.clone();
            ready.status = Some(NodeStatus {
                conditions: Some(vec![NodeCondition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    reason: Some("KubeletReady".into()),
                    last_heartbeat_time: Some(Time(now())),
                    last_transition_time: Some(Time(now())),
                    ..Default::default()
                }]),
                ..Default::default()
            });
            match nodes.replace_status(name, &ready).await {
                Ok(_) => break,
                Err(err) if err.is_conflict() && attempt < 10 => current = nodes.get(name).await?,
                Err(err) => return Err(err),
            }
        }
        self.renew(name).await?;
        self.nodes.lock().push(name.to_string());
        Ok(())
    }

    /// Removes a node: no more pods go there and it is deleted from the API.
    ///
    /// # Errors
    /// When the node cannot be deleted.
    pub async fn remove_node(&self, name: &str) -> api::Result<()> {
        self.nodes.lock().retain(|n| n != name);
        let nodes: Api<Node> = Api::all(self.client.clone());
        nodes
            .delete(name, &DeleteParams::default())
            .await
            .map(|_| ())
    }

    /// Stops renewing a node's lease and acting for its pods, as if it lost power.
    pub fn kill_node(&self, name: &str) {
        self.nodes.lock().retain(|n| n != name);
        self.dead.lock().insert(name.to_string());
    }

    async fn renew(&self, name: &str) -> api::Result<()> {
        let leases: Api<Lease> = Api::namespaced(self.client.clone(), "kube-node-lease");
        let spec = LeaseSpec {
            holder_identity: Some(name.to_string()),
            lease_duration_seconds: Some(40),
            renew_time: Some(MicroTime(now())),
            ..Default::default()
        };
        match leases.get_opt(name).await? {
            Some(mut lease) => {
                lease.spec = Some(spec);
                leases.replace(name, &lease).await?;
            }
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(name.to_string()),
                        namespace: Some("kube-node-lease".into()),
                        ..Default::default()
                    },
                    spec: Some(spec),
                };
                leases.create(&lease).await?;
            }
        }
        Ok(())
    }

    async fn run_leases(&self, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            let names = self.nodes.lock().clone();
            for name in names {
                if let Err(err) = self.renew(&name).await {
                    debug!(node = %name, error = %err, "failed to renew lease");
                }
            }
        }
    }

    async fn run_pods(&self, shutdown: CancellationToken) {
        let pods: Api<Pod> = Api::all(self.client.clone());
        let mut events = watcher(pods.clone(), WatcherConfig::default()).boxed();
        let limit = Arc::new(Semaphore::new(64));
        loop {
            let event = tokio::select! {
                _ = shutdown.cancelled() => return,
                event = events.next() => event,
            };
            let Some(Ok(Event::Apply(pod) | Event::InitApply(pod))) = event else {
                continue;
            };
            let Ok(permit) = limit.clone().acquire_owned().await else {
                return;
            };
            let sim = self.clone();
            tokio::spawn(async move {
                if let Err(err) = sim.handle(pod).await {
                    debug!(error = %err, "simulated node agent call failed");
                }
                drop(permit);
            });
        }
    }

    async fn handle(&self, pod: Pod) -> api::Result<()> {
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &namespace);
        let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
        if node.as_ref().is_some_and(|n| self.dead.lock().contains(n)) {
            return Ok(());
        }
        if pod.metadata.deletion_timestamp.is_some() {
            let params = DeleteParams {
                grace_period_seconds: Some(0),
                ..Default::default()
            };
            return match pods.delete(&name, &params).await {
                Err(err) if !err.is_not_found() => Err(err),
                _ => Ok(()),
            };
        }
        let Some(node) = node else {
            if !self.bind.load(Ordering::SeqCst) {
                return Ok(());
            }
            let target = {
                let nodes = self.nodes.lock();
                if nodes.is_empty() {
                    return Ok(());
                }
                nodes[self.next.fetch_add(1, Ordering::SeqCst) % nodes.len()].clone()
            };
            let binding = Binding {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(namespace.clone()),
                    ..Default::default()
                },
                target: ObjectReference {
                    kind: Some("Node".into()),
                    name: Some(target),
                    ..Default::default()
                },
            };
            return match pods.bind(&name, &binding).await {
                Err(err) if !err.is_conflict() && !err.is_not_found() => Err(err),
                _ => Ok(()),
            };
        };
        let phase = pod.status.as_ref().and_then(|s| s.phase.clone());
        if phase.as_deref() == Some("Running") {
            return Ok(());
        }
        let never_ready = pod
            .spec
            .as_ref()
            .and_then(|s| s.containers.first())
            .and_then(|c| c.image.as_deref())
            .is_some_and(|image| image.contains(NEVER_READY));
        let ip = self.ips.fetch_add(1, Ordering::SeqCst);
        let mut running = pod.clone();
        running.status = Some(PodStatus {
            phase: Some("Running".into()),
            host_ip: Some("10.0.0.1".into()),
            pod_ip: Some(format!("10.244.{}.{}", (ip >> 8) & 0xff, ip & 0xff)),
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: if never_ready { "False" } else { "True" }.into(),
                last_transition_time: Some(Time(now())),
                ..Default::default()
            }]),
            start_time: Some(Time(now())),
            ..Default::default()
        });
        debug!(pod = %name, node = %node, "pod running");
        match pods.replace_status(&name, &running).await {
            Err(err) if !err.is_conflict() && !err.is_not_found() => Err(err),
            _ => Ok(()),
        }
    }
}
