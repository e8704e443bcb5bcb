//! Small builders for unit tests: `pod("web").cpu("500m").label("app", "web")`,
//! `node("n1").cpu("2").label("zone", "a")`.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{
    Container, ContainerPort, Node, NodeSpec, NodeStatus, Pod, PodSpec, ResourceRequirements,
    Taint, Toleration,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use serde_json::json;

use crate::node_info::{NamespaceLabels, NodeInfo, PodInfo, Snapshot};

pub struct PodBuilder(pub Pod);

pub fn pod(name: &str) -> PodBuilder {
    PodBuilder(Pod {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some("default".to_string()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "c".to_string(),
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: None,
    })
}

impl PodBuilder {
    fn spec(&mut self) -> &mut PodSpec {
        self.0.spec.as_mut().expect("builder pods have a spec")
    }

    fn request(mut self, resource: &str, value: &str) -> Self {
        let c = &mut self.spec().containers[0];
        c.resources
            .get_or_insert_with(ResourceRequirements::default)
            .requests
            .get_or_insert_with(BTreeMap::new)
            .insert(resource.to_string(), Quantity(value.to_string()));
        self
    }

    pub fn cpu(self, v: &str) -> Self {
        self.request("cpu", v)
    }

    pub fn memory(self, v: &str) -> Self {
        self.request("memory", v)
    }

    pub fn namespace(mut self, ns: &str) -> Self {
        self.0.metadata.namespace = Some(ns.to_string());
        self
    }

    pub fn label(mut self, k: &str, v: &str) -> Self {
        self.0
            .metadata
            .labels
            .get_or_insert_with(BTreeMap::new)
            .insert(k.to_string(), v.to_string());
        self
    }

    pub fn node_name(mut self, n: &str) -> Self {
        self.spec().node_name = Some(n.to_string());
        self
    }

    pub fn node_selector(mut self, k: &str, v: &str) -> Self {
        self.spec()
            .node_selector
            .get_or_insert_with(BTreeMap::new)
            .insert(k.to_string(), v.to_string());
        self
    }

    pub fn host_port(mut self, port: i32) -> Self {
        self.spec().containers[0].ports = Some(vec![ContainerPort {
            container_port: port,
            host_port: Some(port),
            ..Default::default()
        }]);
        self
    }

    pub fn toleration(mut self, key: &str, value: &str, effect: &str) -> Self {
        self.spec()
            .tolerations
            .get_or_insert_with(Vec::new)
            .push(Toleration {
                key: Some(key.to_string()),
                operator: Some("Equal".to_string()),
                value: Some(value.to_string()),
                effect: Some(effect.to_string()),
                ..Default::default()
            });
        self
    }

    /// Merges a JSON fragment into `spec.affinity` / `spec` (for affinity and spread).
    pub fn spec_json(mut self, fragment: serde_json::Value) -> Self {
        let mut spec = serde_json::to_value(self.spec().clone()).expect("spec serialises");
        if let (Some(spec), Some(fragment)) = (spec.as_object_mut(), fragment.as_object()) {
            for (k, v) in fragment {
                spec.insert(k.clone(), v.clone());
            }
        }
        *self.spec() = serde_json::from_value(spec).expect("valid spec fragment");
        self
    }

    /// Required pod anti-affinity against pods labelled `key=value` over `topology`.
    pub fn anti_affinity(self, key: &str, value: &str, topology: &str) -> Self {
        self.spec_json(json!({"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": {key: value}}, "topologyKey": topology}]}}}))
    }

    /// Required pod affinity to pods labelled `key=value` over `topology`.
    pub fn affinity(self, key: &str, value: &str, topology: &str) -> Self {
        self.spec_json(
            json!({"affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": {key: value}}, "topologyKey": topology}]}}}),
        )
    }

    pub fn info(self) -> PodInfo {
        PodInfo::new(Arc::new(self.0))
    }
}

pub struct NodeBuilder(pub Node);

pub fn node(name: &str) -> NodeBuilder {
    NodeBuilder(Node {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(BTreeMap::from([(
                "kubernetes.io/hostname".to_string(),
                name.to_string(),
            )])),
            ..Default::default()
        },
        spec: Some(NodeSpec::default()),
        status: Some(NodeStatus {
            allocatable: Some(BTreeMap::from([
                ("cpu".to_string(), Quantity("4".to_string())),
                ("memory".to_string(), Quantity("8Gi".to_string())),
                ("pods".to_string(), Quantity("110".to_string())),
            ])),
            ..Default::default()
        }),
    })
}

impl NodeBuilder {
    fn allocatable(mut self, k: &str, v: &str) -> Self {
        self.0
            .status
            .as_mut()
            .and_then(|s| s.allocatable.as_mut())
            .expect("builder nodes have allocatable")
            .insert(k.to_string(), Quantity(v.to_string()));
        self
    }

    pub fn cpu(self, v: &str) -> Self {
        self.allocatable("cpu", v)
    }

    pub fn memory(self, v: &str) -> Self {
        self.allocatable("memory", v)
    }

    pub fn max_pods(self, v: &str) -> Self {
        self.allocatable("pods", v)
    }

    pub fn label(mut self, k: &str, v: &str) -> Self {
        self.0
            .metadata
            .labels
            .get_or_insert_with(BTreeMap::new)
            .insert(k.to_string(), v.to_string());
        self
    }

    pub fn taint(mut self, key: &str, value: &str, effect: &str) -> Self {
        self.0
            .spec
            .get_or_insert_with(NodeSpec::default)
            .taints
            .get_or_insert_with(Vec::new)
            .push(Taint {
                key: key.to_string(),
                value: Some(value.to_string()),
                effect: effect.to_string(),
                time_added: None,
            });
        self
    }

    pub fn unschedulable(mut self) -> Self {
        self.0
            .spec
            .get_or_insert_with(NodeSpec::default)
            .unschedulable = Some(true);
        self
    }

    pub fn obj(self) -> Node {
        self.0
    }

    /// The node with `pods` placed on it.
    pub fn with(self, pods: Vec<PodBuilder>) -> NodeInfo {
        let mut info = NodeInfo::new(Arc::new(self.0));
        for p in pods {
            info.add_pod(Arc::new(p.info()));
        }
        info
    }

    pub fn info(self) -> NodeInfo {
        self.with(Vec::new())
    }
}

/// A snapshot of `nodes`.
pub fn snapshot(nodes: Vec<NodeInfo>) -> Snapshot {
    Snapshot::new(
        nodes.into_iter().map(Arc::new).collect(),
        Arc::new(NamespaceLabels::new()),
    )
}
