//! The scheduler's view of the cluster: nodes, the pods bound to them and the pods
//! *assumed* on them (placed by this scheduler, bind still in flight). A
//! [`Snapshot`] of it is taken at the start of every cycle.
//!
//! Assumed pods count like bound ones, so the next cycle sees the node's resources as
//! taken before the bind returns; [`Cache::forget_pod`] undoes an assumption when the
//! bind fails, and the pod's watch event with `spec.nodeName` confirms it.

use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, Node};
use parking_lot::Mutex;

use crate::node_info::{NamespaceLabels, NodeInfo, PodInfo, Snapshot};

/// What went wrong updating the cache.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("pod {0} is already in the cache")]
    AlreadyCached(String),
    #[error("pod {0} is not assumed")]
    NotAssumed(String),
}

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug)]
struct PodState {
    node: String,
    assumed: bool,
}

#[derive(Default)]
struct Inner {
    /// Node infos in a stable order; `index` maps a name to its slot. A slot may hold
    /// pods whose Node is not known yet (`node_known` false): those are left out of
    /// snapshots.
    nodes: Vec<Arc<NodeInfo>>,
    node_known: Vec<bool>,
    index: HashMap<String, usize>,
    pods: HashMap<String, PodState>,
    namespaces: Arc<NamespaceLabels>,
    /// Rebuilt only when something changed since the last snapshot.
    snapshot: Option<Snapshot>,
}

/// Thread-safe cache of nodes and pods.
#[derive(Default, Clone)]
pub struct Cache {
    inner: Arc<Mutex<Inner>>,
}

fn placeholder(name: &str) -> NodeInfo {
    let mut node = Node::default();
    node.metadata.name = Some(name.to_string());
    NodeInfo::new(Arc::new(node))
}

impl Inner {
    fn slot(&mut self, name: &str) -> usize {
        if let Some(i) = self.index.get(name) {
            return *i;
        }
        self.nodes.push(Arc::new(placeholder(name)));
        self.node_known.push(false);
        self.index.insert(name.to_string(), self.nodes.len() - 1);
        self.nodes.len() - 1
    }

    fn add_to_node(&mut self, node: &str, pod: Arc<PodInfo>) {
        let i = self.slot(node);
        Arc::make_mut(&mut self.nodes[i]).add_pod(pod);
        self.snapshot = None;
    }

    fn remove_from_node(&mut self, node: &str, key: &str) {
        if let Some(i) = self.index.get(node).copied() {
            Arc::make_mut(&mut self.nodes[i]).remove_pod(key);
            self.snapshot = None;
        }
    }
}

impl Cache {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or updates a Node.
    pub fn upsert_node(&self, node: Arc<Node>) {
        let name = node.metadata.name.clone().unwrap_or_default();
        let mut inner = self.inner.lock();
        let i = inner.slot(&name);
        Arc::make_mut(&mut inner.nodes[i]).set_node(node);
        inner.node_known[i] = true;
        inner.snapshot = None;
    }

    /// Removes a Node (its pods stay accounted until they go, as in Kubernetes).
    pub fn remove_node(&self, name: &str) {
        let mut inner = self.inner.lock();
        if let Some(i) = inner.index.get(name).copied() {
            inner.node_known[i] = false;
            inner.snapshot = None;
        }
    }

    /// Replaces the namespace labels (for `namespaceSelector`).
    pub fn set_namespaces(&self, namespaces: &[Arc<Namespace>]) {
        let labels: NamespaceLabels = namespaces
            .iter()
            .map(|ns| {
                (
                    ns.metadata.name.clone().unwrap_or_default(),
                    ns.metadata.labels.clone().unwrap_or_default(),
                )
            })
            .collect();
        let mut inner = self.inner.lock();
        inner.namespaces = Arc::new(labels);
        inner.snapshot = None;
    }

    /// Places `pod` on `node` before its bind is confirmed.
    ///
    /// # Errors
    /// [`Error::AlreadyCached`] when the pod is already in the cache.
    pub fn assume_pod(&self, pod: Arc<PodInfo>, node: &str) -> Result<()> {
        let mut inner = self.inner.lock();
        if inner.pods.contains_key(&pod.key) {
            return Err(Error::AlreadyCached(pod.key.clone()));
        }
        inner.pods.insert(
            pod.key.clone(),
            PodState {
                node: node.to_string(),
                assumed: true,
            },
        );
        inner.add_to_node(node, pod);
        Ok(())
    }

    /// Undoes [`assume_pod`](Self::assume_pod) after a failed bind.
    ///
    /// # Errors
    /// [`Error::NotAssumed`] when the pod is not (or no longer) assumed.
    pub fn forget_pod(&self, key: &str) -> Result<()> {
        let mut inner = self.inner.lock();
        match inner.pods.get(key) {
            Some(state) if state.assumed => {
                let node = state.node.clone();
                inner.pods.remove(key);
                inner.remove_from_node(&node, key);
                Ok(())
            }
            _ => Err(Error::NotAssumed(key.to_string())),
        }
    }

    /// Adds or updates a pod bound to a node (from the watch); confirms an assumed pod.
    pub fn upsert_bound_pod(&self, pod: Arc<PodInfo>, node: &str) {
        let mut inner = self.inner.lock();
        if let Some(old) = inner.pods.remove(&pod.key) {
            inner.remove_from_node(&old.node, &pod.key);
        }
        inner.pods.insert(
            pod.key.clone(),
            PodState {
                node: node.to_string(),
                assumed: false,
            },
        );
        inner.add_to_node(node, pod);
    }

    /// Removes a pod (deleted, or finished).
    pub fn remove_pod(&self, key: &str) {
        let mut inner = self.inner.lock();
        if let Some(old) = inner.pods.remove(key) {
            inner.remove_from_node(&old.node, key);
        }
    }

    /// Whether the pod is bound or assumed.
    pub fn contains_pod(&self, key: &str) -> bool {
        self.inner.lock().pods.contains_key(key)
    }

    /// Whether the pod is assumed (bind in flight or not yet seen bound).
    pub fn is_assumed(&self, key: &str) -> bool {
        self.inner.lock().pods.get(key).is_some_and(|p| p.assumed)
    }

    /// Whether the Node object `name` is known.
    pub fn has_node(&self, name: &str) -> bool {
        let inner = self.inner.lock();
        inner.index.get(name).is_some_and(|i| inner.node_known[*i])
    }

    /// Names of the known nodes.
    pub fn node_names(&self) -> Vec<String> {
        let inner = self.inner.lock();
        inner
            .nodes
            .iter()
            .zip(&inner.node_known)
            .filter(|(_, known)| **known)
            .map(|(n, _)| n.name().to_string())
            .collect()
    }

    /// Keys of the pods seen bound (not merely assumed).
    pub fn bound_pod_keys(&self) -> Vec<String> {
        let inner = self.inner.lock();
        inner
            .pods
            .iter()
            .filter(|(_, p)| !p.assumed)
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Number of known nodes.
    pub fn node_count(&self) -> usize {
        self.inner.lock().node_known.iter().filter(|k| **k).count()
    }

    /// The cluster as of now. Cheap when nothing changed since the last call; otherwise
    /// one `Arc` clone per node.
    pub fn snapshot(&self) -> Snapshot {
        let mut inner = self.inner.lock();
        if let Some(s) = &inner.snapshot {
            return s.clone();
        }
        let nodes = inner
            .nodes
            .iter()
            .zip(&inner.node_known)
            .filter(|(_, known)| **known)
            .map(|(n, _)| n.clone())
            .collect();
        let snapshot = Snapshot::new(nodes, inner.namespaces.clone());
        inner.snapshot = Some(snapshot.clone());
        snapshot
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{node, pod};

    #[test]
    fn assume_forget_confirm() {
        let cache = Cache::new();
        cache.upsert_node(Arc::new(node("n1").cpu("2").obj()));
        let p = Arc::new(pod("p").cpu("1").info());
        cache.assume_pod(p.clone(), "n1").expect("assume");
        assert_eq!(cache.snapshot().nodes()[0].requested.milli_cpu, 1000);
        assert_eq!(
            cache.assume_pod(p.clone(), "n1"),
            Err(Error::AlreadyCached("default/p".into()))
        );
        assert!(cache.is_assumed("default/p"));

        cache.forget_pod("default/p").expect("forget");
        assert_eq!(cache.snapshot().nodes()[0].requested.milli_cpu, 0);
        assert!(cache.forget_pod("default/p").is_err());

        cache.assume_pod(p.clone(), "n1").expect("assume again");
        cache.upsert_bound_pod(p, "n1");
        assert!(!cache.is_assumed("default/p"));
        assert_eq!(cache.snapshot().nodes()[0].pods.len(), 1);
        cache.remove_pod("default/p");
        assert_eq!(cache.snapshot().nodes()[0].pods.len(), 0);
    }

    #[test]
    fn pods_before_their_node_and_snapshots() {
        let cache = Cache::new();
        cache.upsert_bound_pod(Arc::new(pod("early").cpu("1").info()), "n2");
        assert!(
            cache.snapshot().nodes().is_empty(),
            "unknown nodes are not in snapshots"
        );
        cache.upsert_node(Arc::new(node("n2").obj()));
        let snap = cache.snapshot();
        assert_eq!(snap.nodes()[0].requested.milli_cpu, 1000);
        // An older snapshot is not changed by later updates.
        cache.upsert_bound_pod(Arc::new(pod("late").cpu("1").info()), "n2");
        assert_eq!(snap.nodes()[0].requested.milli_cpu, 1000);
        assert_eq!(cache.snapshot().nodes()[0].requested.milli_cpu, 2000);
        cache.remove_node("n2");
        assert_eq!(cache.node_count(), 0);
    }
}
