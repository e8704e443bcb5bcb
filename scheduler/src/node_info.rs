//! What plugins look at: [`PodInfo`] (a pod with its requests, ports and affinity terms
//! parsed once), [`NodeInfo`] (a node with the pods on it and their summed requests)
//! and the per-cycle [`Snapshot`] of all nodes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{
    Container, Node, NodeSelectorRequirement, NodeSelectorTerm, Pod, PodAffinityTerm, Taint,
    Toleration, TopologySpreadConstraint,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use rkube_api::selector::{LabelSelector, Operator, Requirement};
use rkube_api::validation::quantity;

/// CPU request assumed for scoring when a container sets none (Kubernetes' 100m).
pub const DEFAULT_MILLI_CPU_REQUEST: i64 = 100;
/// Memory request assumed for scoring when a container sets none (200 MiB).
pub const DEFAULT_MEMORY_REQUEST: i64 = 200 * 1024 * 1024;

/// Label of a node's hostname topology.
pub const LABEL_HOSTNAME: &str = "kubernetes.io/hostname";

/// Amounts of the resources the scheduler accounts for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resource {
    pub milli_cpu: i64,
    /// Bytes.
    pub memory: i64,
    /// Bytes.
    pub ephemeral_storage: i64,
    /// Pods (only meaningful for allocatable).
    pub pods: i64,
    /// Extended resources (`example.com/gpu`), in whole units.
    pub scalar: BTreeMap<String, i64>,
}

impl Resource {
    /// Reads a `ResourceList` (`requests`, `allocatable`); unparsable quantities count
    /// as zero (the apiserver validates them, so this only guards against bugs).
    pub fn from_list(list: Option<&BTreeMap<String, Quantity>>) -> Resource {
        let mut r = Resource::default();
        for (name, q) in list.into_iter().flatten() {
            let Ok(parsed) = quantity::parse(&q.0) else {
                continue;
            };
            let whole = i64::try_from(parsed.value()).unwrap_or(i64::MAX);
            match name.as_str() {
                "cpu" => r.milli_cpu = i64::try_from(parsed.milli_value()).unwrap_or(i64::MAX),
                "memory" => r.memory = whole,
                "ephemeral-storage" => r.ephemeral_storage = whole,
                "pods" => r.pods = whole,
                other if is_extended(other) => {
                    r.scalar.insert(other.to_string(), whole);
                }
                _ => {}
            }
        }
        r
    }

    pub fn add(&mut self, other: &Resource) {
        self.milli_cpu += other.milli_cpu;
        self.memory += other.memory;
        self.ephemeral_storage += other.ephemeral_storage;
        self.pods += other.pods;
        for (k, v) in &other.scalar {
            *self.scalar.entry(k.clone()).or_default() += v;
        }
    }

    pub fn sub(&mut self, other: &Resource) {
        self.milli_cpu -= other.milli_cpu;
        self.memory -= other.memory;
        self.ephemeral_storage -= other.ephemeral_storage;
        self.pods -= other.pods;
        for (k, v) in &other.scalar {
            *self.scalar.entry(k.clone()).or_default() -= v;
        }
    }

    /// Each field becomes the larger of the two.
    pub fn set_max(&mut self, other: &Resource) {
        self.milli_cpu = self.milli_cpu.max(other.milli_cpu);
        self.memory = self.memory.max(other.memory);
        self.ephemeral_storage = self.ephemeral_storage.max(other.ephemeral_storage);
        self.pods = self.pods.max(other.pods);
        for (k, v) in &other.scalar {
            let e = self.scalar.entry(k.clone()).or_default();
            *e = (*e).max(*v);
        }
    }

    /// Whether nothing is requested.
    pub fn is_zero(&self) -> bool {
        self.milli_cpu == 0
            && self.memory == 0
            && self.ephemeral_storage == 0
            && self.scalar.values().all(|v| *v == 0)
    }
}

/// Extended resources: domain-prefixed names outside `kubernetes.io/` (and
/// `hugepages-*`, which Kubernetes also accounts as scalars).
fn is_extended(name: &str) -> bool {
    name.starts_with("hugepages-") || (name.contains('/') && !name.starts_with("kubernetes.io/"))
}

/// A pod's effective requests, as Kubernetes computes them: the larger of the regular
/// containers' sum (plus sidecars) and each init container's need at the time it runs,
/// plus the pod overhead.
///
/// Worked example: containers 200m + 300m, a sidecar (restartable init container)
/// 100m declared before an init container of 700m: the init container runs next to the
/// sidecar, so it needs 100m + 700m = 800m; the steady state needs 200m + 300m + 100m =
/// 600m; the pod requests max(800m, 600m) = 800m.
///
/// `non_zero` applies the scoring defaults (100m CPU, 200 MiB memory) to containers
/// that request nothing.
pub fn pod_requests(pod: &Pod, non_zero: bool) -> Resource {
    let Some(spec) = &pod.spec else {
        return Resource::default();
    };
    let container = |c: &Container| {
        let mut r = Resource::from_list(c.resources.as_ref().and_then(|r| r.requests.as_ref()));
        if non_zero {
            if r.milli_cpu == 0 {
                r.milli_cpu = DEFAULT_MILLI_CPU_REQUEST;
            }
            if r.memory == 0 {
                r.memory = DEFAULT_MEMORY_REQUEST;
            }
        }
        r
    };
    let mut sum = Resource::default();
    for c in &spec.containers {
        sum.add(&container(c));
    }
    let mut sidecars = Resource::default();
    let mut init_max = Resource::default();
    for c in spec.init_containers.iter().flatten() {
        let req = container(c);
        if c.restart_policy.as_deref() == Some("Always") {
            sidecars.add(&req);
            init_max.set_max(&sidecars);
        } else {
            let mut during = req;
            during.add(&sidecars);
            init_max.set_max(&during);
        }
    }
    sum.add(&sidecars);
    sum.set_max(&init_max);
    if let Some(overhead) = &spec.overhead {
        sum.add(&Resource::from_list(Some(overhead)));
    }
    sum
}

/// A host port a pod uses.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostPort {
    pub protocol: String,
    /// `0.0.0.0` when unset (all addresses).
    pub ip: String,
    pub port: i32,
}

impl HostPort {
    /// Whether two uses of a host port collide: same protocol and port, and the same
    /// address or either one on all addresses.
    pub fn conflicts(&self, other: &HostPort) -> bool {
        self.port == other.port
            && self.protocol == other.protocol
            && (self.ip == other.ip || self.ip == "0.0.0.0" || other.ip == "0.0.0.0")
    }
}

fn host_ports(pod: &Pod) -> Vec<HostPort> {
    let Some(spec) = &pod.spec else {
        return Vec::new();
    };
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            let port = p.host_port.filter(|p| *p > 0)?;
            Some(HostPort {
                protocol: p.protocol.clone().unwrap_or_else(|| "TCP".to_string()),
                ip: p
                    .host_ip
                    .clone()
                    .filter(|ip| !ip.is_empty())
                    .unwrap_or_else(|| "0.0.0.0".to_string()),
                port,
            })
        })
        .collect()
}

/// Labels of namespaces by name, for `namespaceSelector`.
pub type NamespaceLabels = HashMap<String, BTreeMap<String, String>>;

/// A pod (anti-)affinity term, parsed: which pods it selects and over which topology.
#[derive(Debug, Clone)]
pub struct AffinityTerm {
    /// `None` when the selector is missing or invalid: the term selects no pod.
    pub selector: Option<LabelSelector>,
    /// Namespaces named explicitly (or the pod's own when neither these nor a
    /// namespace selector are given).
    pub namespaces: BTreeSet<String>,
    pub namespace_selector: Option<LabelSelector>,
    pub topology_key: String,
    /// Preference weight (1 for required terms).
    pub weight: i64,
}

impl AffinityTerm {
    fn new(term: &PodAffinityTerm, pod: &Pod, own_namespace: &str, weight: i64) -> AffinityTerm {
        // matchLabelKeys / mismatchLabelKeys add `key in (value)` / `key notin (value)`
        // with the incoming pod's own label values.
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        let selector = term.label_selector.as_ref().and_then(|s| {
            let mut s = s.clone();
            let exprs = s.match_expressions.get_or_insert_with(Vec::new);
            for (keys, op) in [(&term.match_label_keys, "In"), (&term.mismatch_label_keys, "NotIn")] {
                for key in keys.iter().flatten() {
                    if let Some(v) = labels.get(key) {
                        exprs.push(k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement {
                            key: key.clone(),
                            operator: op.to_string(),
                            values: Some(vec![v.clone()]),
                        });
                    }
                }
            }
            LabelSelector::from_k8s(&s).ok()
        });
        let mut namespaces: BTreeSet<String> = term.namespaces.iter().flatten().cloned().collect();
        let namespace_selector = term
            .namespace_selector
            .as_ref()
            .and_then(|s| LabelSelector::from_k8s(s).ok());
        if namespaces.is_empty() && namespace_selector.is_none() {
            namespaces.insert(own_namespace.to_string());
        }
        AffinityTerm {
            selector,
            namespaces,
            namespace_selector,
            topology_key: term.topology_key.clone(),
            weight,
        }
    }

    /// Whether `pod` is selected: in one of the term's namespaces and matching its label
    /// selector.
    pub fn matches(&self, pod: &PodInfo, namespaces: &NamespaceLabels) -> bool {
        let Some(selector) = &self.selector else {
            return false;
        };
        let in_namespace = self.namespaces.contains(&pod.namespace)
            || self.namespace_selector.as_ref().is_some_and(|s| {
                s.is_empty()
                    || namespaces
                        .get(&pod.namespace)
                        .is_some_and(|labels| s.matches(labels))
            });
        in_namespace && selector.matches(&pod.labels)
    }
}

/// A node selector term, parsed: label requirements and `metadata.name` requirements.
#[derive(Debug, Clone)]
pub struct NodeSelectorTermMatcher {
    labels: Vec<Requirement>,
    fields: Vec<Requirement>,
    /// An invalid or empty term matches nothing.
    valid: bool,
}

impl NodeSelectorTermMatcher {
    pub fn new(term: &NodeSelectorTerm) -> Self {
        let convert = |reqs: &Option<Vec<NodeSelectorRequirement>>| -> Option<Vec<Requirement>> {
            reqs.iter()
                .flatten()
                .map(|r| {
                    let op = match r.operator.as_str() {
                        "In" => Operator::In,
                        "NotIn" => Operator::NotIn,
                        "Exists" => Operator::Exists,
                        "DoesNotExist" => Operator::DoesNotExist,
                        "Gt" => Operator::GreaterThan,
                        "Lt" => Operator::LessThan,
                        _ => return None,
                    };
                    Requirement::new(&r.key, op, r.values.iter().flatten().cloned()).ok()
                })
                .collect()
        };
        let labels = convert(&term.match_expressions);
        let fields = convert(&term.match_fields);
        let valid = labels.is_some()
            && fields.is_some()
            && (labels.as_ref().is_some_and(|l| !l.is_empty())
                || fields.as_ref().is_some_and(|f| !f.is_empty()));
        NodeSelectorTermMatcher {
            labels: labels.unwrap_or_default(),
            fields: fields.unwrap_or_default(),
            valid,
        }
    }

    /// Whether `node` satisfies every requirement of the term.
    pub fn matches(&self, node: &NodeInfo) -> bool {
        if !self.valid {
            return false;
        }
        if !self.labels.iter().all(|r| r.matches(node.labels())) {
            return false;
        }
        if self.fields.is_empty() {
            return true;
        }
        let fields = BTreeMap::from([("metadata.name".to_string(), node.name().to_string())]);
        self.fields
            .iter()
            .all(|r| r.key() == "metadata.name" && r.matches(&fields))
    }
}

/// The node-level constraints of a pod: `nodeSelector` and required node affinity.
#[derive(Debug, Clone, Default)]
pub struct RequiredNodeAffinity {
    pub node_selector: BTreeMap<String, String>,
    /// ORed terms; `None` when the pod has no required node affinity.
    pub terms: Option<Vec<NodeSelectorTermMatcher>>,
}

impl RequiredNodeAffinity {
    /// Whether `node` satisfies both the node selector and the affinity terms.
    pub fn matches(&self, node: &NodeInfo) -> bool {
        let labels = node.labels();
        self.node_selector
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self
                .terms
                .as_ref()
                .is_none_or(|terms| terms.iter().any(|t| t.matches(node)))
    }
}

/// A pod, parsed once for the scheduler: requests, ports, labels and affinity terms.
#[derive(Debug, Clone)]
pub struct PodInfo {
    pub pod: Arc<Pod>,
    /// `namespace/name`.
    pub key: String,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub requests: Resource,
    /// Requests with the scoring defaults for containers that request nothing.
    pub non_zero_requests: Resource,
    pub host_ports: Vec<HostPort>,
    pub required_affinity: Vec<AffinityTerm>,
    pub required_anti_affinity: Vec<AffinityTerm>,
    pub preferred_affinity: Vec<AffinityTerm>,
    pub preferred_anti_affinity: Vec<AffinityTerm>,
    pub node_affinity: RequiredNodeAffinity,
    pub preferred_node_affinity: Vec<(i64, NodeSelectorTermMatcher)>,
    pub tolerations: Vec<Toleration>,
    pub spread_constraints: Vec<TopologySpreadConstraint>,
    pub priority: i32,
}

impl PodInfo {
    pub fn new(pod: Arc<Pod>) -> PodInfo {
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let spec = pod.spec.as_ref();
        let affinity = spec.and_then(|s| s.affinity.as_ref());
        let pa = affinity.and_then(|a| a.pod_affinity.as_ref());
        let paa = affinity.and_then(|a| a.pod_anti_affinity.as_ref());
        let na = affinity.and_then(|a| a.node_affinity.as_ref());
        let required = |terms: Option<&Vec<PodAffinityTerm>>| -> Vec<AffinityTerm> {
            terms
                .into_iter()
                .flatten()
                .map(|t| AffinityTerm::new(t, &pod, &namespace, 1))
                .collect()
        };
        let preferred = |terms: Option<
            &Vec<k8s_openapi::api::core::v1::WeightedPodAffinityTerm>,
        >| {
            terms
                .into_iter()
                .flatten()
                .map(|w| {
                    AffinityTerm::new(&w.pod_affinity_term, &pod, &namespace, i64::from(w.weight))
                })
                .collect::<Vec<_>>()
        };
        PodInfo {
            key: format!("{namespace}/{name}"),
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            requests: pod_requests(&pod, false),
            non_zero_requests: pod_requests(&pod, true),
            host_ports: host_ports(&pod),
            required_affinity: required(pa.and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .as_ref()
            })),
            required_anti_affinity: required(paa.and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .as_ref()
            })),
            preferred_affinity: preferred(pa.and_then(|a| {
                a.preferred_during_scheduling_ignored_during_execution
                    .as_ref()
            })),
            preferred_anti_affinity: preferred(paa.and_then(|a| {
                a.preferred_during_scheduling_ignored_during_execution
                    .as_ref()
            })),
            node_affinity: RequiredNodeAffinity {
                node_selector: spec
                    .and_then(|s| s.node_selector.clone())
                    .unwrap_or_default(),
                terms: na
                    .and_then(|n| {
                        n.required_during_scheduling_ignored_during_execution
                            .as_ref()
                    })
                    .map(|s| {
                        s.node_selector_terms
                            .iter()
                            .map(NodeSelectorTermMatcher::new)
                            .collect()
                    }),
            },
            preferred_node_affinity: na
                .and_then(|n| {
                    n.preferred_during_scheduling_ignored_during_execution
                        .as_ref()
                })
                .into_iter()
                .flatten()
                .map(|p| {
                    (
                        i64::from(p.weight),
                        NodeSelectorTermMatcher::new(&p.preference),
                    )
                })
                .collect(),
            tolerations: spec.and_then(|s| s.tolerations.clone()).unwrap_or_default(),
            spread_constraints: spec
                .and_then(|s| s.topology_spread_constraints.clone())
                .unwrap_or_default(),
            priority: spec.and_then(|s| s.priority).unwrap_or(0),
            namespace,
            pod,
        }
    }

    /// Whether the pod has any (anti-)affinity term, required or preferred.
    pub fn has_affinity(&self) -> bool {
        !self.required_affinity.is_empty()
            || !self.required_anti_affinity.is_empty()
            || !self.preferred_affinity.is_empty()
            || !self.preferred_anti_affinity.is_empty()
    }

    /// Whether the pod is being deleted.
    pub fn is_terminating(&self) -> bool {
        self.pod.metadata.deletion_timestamp.is_some()
    }
}

/// Whether `toleration` tolerates `taint` (Kubernetes' `ToleratesTaint`): same effect
/// (or any effect when unset), and `Exists` on the key (or any key when unset) or
/// `Equal` key and value.
pub fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    if let Some(effect) = toleration.effect.as_deref().filter(|e| !e.is_empty()) {
        if effect != taint.effect {
            return false;
        }
    }
    let key = toleration.key.as_deref().unwrap_or("");
    if !key.is_empty() && key != taint.key {
        return false;
    }
    match toleration.operator.as_deref().unwrap_or("Equal") {
        "Exists" => true,
        "Equal" | "" => {
            !key.is_empty()
                && toleration.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("")
        }
        _ => false,
    }
}

/// A node and what is (assumed to be) running on it.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    node: Arc<Node>,
    empty_labels: BTreeMap<String, String>,
    pub allocatable: Resource,
    /// Sum of the pods' requests.
    pub requested: Resource,
    /// Sum of the pods' requests with scoring defaults.
    pub non_zero_requested: Resource,
    pub pods: Vec<Arc<PodInfo>>,
    /// Pods with any (anti-)affinity term.
    pub pods_with_affinity: usize,
    /// Pods with required anti-affinity terms.
    pub pods_with_required_anti_affinity: usize,
    pub used_ports: Vec<HostPort>,
}

impl NodeInfo {
    pub fn new(node: Arc<Node>) -> NodeInfo {
        let allocatable = Resource::from_list(
            node.status
                .as_ref()
                .and_then(|s| s.allocatable.as_ref().or(s.capacity.as_ref())),
        );
        NodeInfo {
            node,
            empty_labels: BTreeMap::new(),
            allocatable,
            requested: Resource::default(),
            non_zero_requested: Resource::default(),
            pods: Vec::new(),
            pods_with_affinity: 0,
            pods_with_required_anti_affinity: 0,
            used_ports: Vec::new(),
        }
    }

    pub fn node(&self) -> &Node {
        &self.node
    }

    pub fn name(&self) -> &str {
        self.node.metadata.name.as_deref().unwrap_or("")
    }

    pub fn labels(&self) -> &BTreeMap<String, String> {
        self.node
            .metadata
            .labels
            .as_ref()
            .unwrap_or(&self.empty_labels)
    }

    pub fn taints(&self) -> &[Taint] {
        self.node
            .spec
            .as_ref()
            .and_then(|s| s.taints.as_deref())
            .unwrap_or(&[])
    }

    /// Replaces the Node object, keeping the pods.
    pub fn set_node(&mut self, node: Arc<Node>) {
        let pods = std::mem::take(&mut self.pods);
        *self = NodeInfo::new(node);
        for pod in pods {
            self.add_pod(pod);
        }
    }

    pub fn add_pod(&mut self, pod: Arc<PodInfo>) {
        self.requested.add(&pod.requests);
        self.non_zero_requested.add(&pod.non_zero_requests);
        if pod.has_affinity() {
            self.pods_with_affinity += 1;
        }
        if !pod.required_anti_affinity.is_empty() {
            self.pods_with_required_anti_affinity += 1;
        }
        self.used_ports.extend(pod.host_ports.iter().cloned());
        self.pods.push(pod);
    }

    /// Removes the pod with `key`; returns whether it was there.
    pub fn remove_pod(&mut self, key: &str) -> bool {
        let Some(i) = self.pods.iter().position(|p| p.key == key) else {
            return false;
        };
        let pod = self.pods.swap_remove(i);
        self.requested.sub(&pod.requests);
        self.non_zero_requested.sub(&pod.non_zero_requests);
        if pod.has_affinity() {
            self.pods_with_affinity -= 1;
        }
        if !pod.required_anti_affinity.is_empty() {
            self.pods_with_required_anti_affinity -= 1;
        }
        for port in &pod.host_ports {
            if let Some(j) = self.used_ports.iter().position(|p| p == port) {
                self.used_ports.swap_remove(j);
            }
        }
        true
    }
}

/// The cluster as one cycle sees it: immutable, cheap to clone (shared `Arc`s).
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    nodes: Arc<Vec<Arc<NodeInfo>>>,
    namespaces: Arc<NamespaceLabels>,
}

impl Snapshot {
    pub fn new(nodes: Vec<Arc<NodeInfo>>, namespaces: Arc<NamespaceLabels>) -> Snapshot {
        Snapshot {
            nodes: Arc::new(nodes),
            namespaces,
        }
    }

    pub fn nodes(&self) -> &[Arc<NodeInfo>] {
        &self.nodes
    }

    /// Labels of every namespace, for `namespaceSelector`.
    pub fn namespaces(&self) -> &NamespaceLabels {
        &self.namespaces
    }
}
