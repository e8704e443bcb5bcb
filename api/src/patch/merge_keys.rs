//! Where strategic merge patch merges lists instead of replacing them, per kind.
//!
//! Kubernetes reads this from the `patchStrategy` and `patchMergeKey` struct tags of the
//! k8s.io/api types (as of v1.32). Here it is a small graph of the types that matter: each
//! [`Schema`] names its lists that merge and the fields whose values (or list elements) have
//! a schema of their own, so that the PodSpec rules serve a Pod at `spec` and every workload
//! at `spec.template.spec`. Lists that are not named here are replaced whole, which is also
//! what Kubernetes does for untagged lists: `args`, `command`, `tolerations`, `envFrom`,
//! `readinessGates`, node `taints`, Endpoints `subsets`, StatefulSet `volumeClaimTemplates`,
//! pod `containerStatuses`, and so on.

/// How a list field is patched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListStrategy {
    /// The patch's list replaces the live list (no `patchStrategy` tag).
    Replace,
    /// Elements are objects matched by this key; matched elements merge, others are added
    /// (`patchStrategy:"merge" patchMergeKey:"…"`).
    MergeOnKey(&'static str),
    /// Elements are primitives and the lists are set-unioned (`patchStrategy:"merge"` with
    /// no merge key, e.g. `metadata.finalizers`).
    MergePrimitives,
}

/// The patch-relevant shape of one API type.
#[derive(Debug)]
pub struct Schema {
    /// List fields that do not use [`ListStrategy::Replace`].
    lists: &'static [(&'static str, ListStrategy)],
    /// Fields whose value, or whose list elements, have rules of their own.
    fields: &'static [(&'static str, &'static Schema)],
}

impl Schema {
    /// How the list in `field` of this type is patched.
    pub fn list_strategy(&self, field: &str) -> ListStrategy {
        self.lists
            .iter()
            .find(|(name, _)| *name == field)
            .map_or(ListStrategy::Replace, |(_, strategy)| *strategy)
    }

    /// The schema of the value in `field` (of each element, for a list).
    pub fn field(&self, field: &str) -> Option<&'static Schema> {
        self.fields
            .iter()
            .find(|(name, _)| *name == field)
            .map(|(_, schema)| *schema)
    }
}

use ListStrategy::{MergeOnKey, MergePrimitives};

/// `ObjectMeta`, of every object and of pod templates.
static OBJECT_META: Schema = Schema {
    lists: &[
        ("finalizers", MergePrimitives),
        ("ownerReferences", MergeOnKey("uid")),
    ],
    fields: &[],
};

/// `Container`, also used for init and ephemeral containers.
static CONTAINER: Schema = Schema {
    lists: &[
        ("ports", MergeOnKey("containerPort")),
        ("env", MergeOnKey("name")),
        ("volumeMounts", MergeOnKey("mountPath")),
        ("volumeDevices", MergeOnKey("devicePath")),
    ],
    fields: &[],
};

/// `PodSpec`.
static POD_SPEC: Schema = Schema {
    lists: &[
        ("containers", MergeOnKey("name")),
        ("initContainers", MergeOnKey("name")),
        ("ephemeralContainers", MergeOnKey("name")),
        ("volumes", MergeOnKey("name")),
        ("imagePullSecrets", MergeOnKey("name")),
        ("hostAliases", MergeOnKey("ip")),
        ("topologySpreadConstraints", MergeOnKey("topologyKey")),
        ("resourceClaims", MergeOnKey("name")),
        ("schedulingGates", MergeOnKey("name")),
    ],
    fields: &[
        ("containers", &CONTAINER),
        ("initContainers", &CONTAINER),
        ("ephemeralContainers", &CONTAINER),
    ],
};

/// `PodStatus`.
static POD_STATUS: Schema = Schema {
    lists: &[
        ("conditions", MergeOnKey("type")),
        ("podIPs", MergeOnKey("ip")),
        ("hostIPs", MergeOnKey("ip")),
        ("resourceClaimStatuses", MergeOnKey("name")),
    ],
    fields: &[],
};

/// `PodTemplateSpec`.
static POD_TEMPLATE_SPEC: Schema = Schema {
    lists: &[],
    fields: &[("metadata", &OBJECT_META), ("spec", &POD_SPEC)],
};

/// The spec of Deployments, ReplicaSets, DaemonSets and StatefulSets (whose
/// `volumeClaimTemplates` has no patch strategy).
static WORKLOAD_SPEC: Schema = Schema {
    lists: &[],
    fields: &[("template", &POD_TEMPLATE_SPEC)],
};

/// `NodeSpec` (`taints` has no patch strategy).
static NODE_SPEC: Schema = Schema {
    lists: &[("podCIDRs", MergePrimitives)],
    fields: &[],
};

/// `NodeStatus`.
static NODE_STATUS: Schema = Schema {
    lists: &[
        ("conditions", MergeOnKey("type")),
        ("addresses", MergeOnKey("type")),
    ],
    fields: &[],
};

/// `ServiceSpec`.
static SERVICE_SPEC: Schema = Schema {
    lists: &[("ports", MergeOnKey("port"))],
    fields: &[],
};

/// A status whose only merging list is `conditions` (workloads, Service, Namespace).
static CONDITIONS_STATUS: Schema = Schema {
    lists: &[("conditions", MergeOnKey("type"))],
    fields: &[],
};

static POD: Schema = Schema {
    lists: &[],
    fields: &[
        ("metadata", &OBJECT_META),
        ("spec", &POD_SPEC),
        ("status", &POD_STATUS),
    ],
};

static NODE: Schema = Schema {
    lists: &[],
    fields: &[
        ("metadata", &OBJECT_META),
        ("spec", &NODE_SPEC),
        ("status", &NODE_STATUS),
    ],
};

static SERVICE: Schema = Schema {
    lists: &[],
    fields: &[
        ("metadata", &OBJECT_META),
        ("spec", &SERVICE_SPEC),
        ("status", &CONDITIONS_STATUS),
    ],
};

static WORKLOAD: Schema = Schema {
    lists: &[],
    fields: &[
        ("metadata", &OBJECT_META),
        ("spec", &WORKLOAD_SPEC),
        ("status", &CONDITIONS_STATUS),
    ],
};

/// Every other kind: Namespace, Endpoints, ConfigMap, Secret, Event, Lease.
static OTHER: Schema = Schema {
    lists: &[],
    fields: &[("metadata", &OBJECT_META), ("status", &CONDITIONS_STATUS)],
};

/// The root schema of objects of `kind`.
pub fn for_kind(kind: &str) -> &'static Schema {
    match kind {
        "Pod" => &POD,
        "Node" => &NODE,
        "Service" => &SERVICE,
        "Deployment" | "ReplicaSet" | "DaemonSet" | "StatefulSet" => &WORKLOAD,
        _ => &OTHER,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ListStrategy::Replace;

    /// Walks `path` (field names; list elements are transparent) from the root of `kind`.
    fn strategy_at(kind: &str, path: &str) -> ListStrategy {
        let mut fields: Vec<&str> = path.split('.').collect();
        let list = fields.pop().expect("split yields at least one item");
        let mut schema = Some(for_kind(kind));
        for field in fields {
            schema = schema.and_then(|s| s.field(field));
        }
        schema.map_or(Replace, |s| s.list_strategy(list))
    }

    #[test]
    fn strategies_follow_the_kubernetes_tags() {
        let cases = [
            ("Pod", "spec.containers", MergeOnKey("name")),
            ("Pod", "spec.containers.ports", MergeOnKey("containerPort")),
            ("Pod", "spec.initContainers.env", MergeOnKey("name")),
            (
                "Pod",
                "spec.ephemeralContainers.volumeMounts",
                MergeOnKey("mountPath"),
            ),
            (
                "Pod",
                "spec.containers.volumeDevices",
                MergeOnKey("devicePath"),
            ),
            ("Pod", "spec.containers.args", Replace),
            ("Pod", "spec.containers.command", Replace),
            ("Pod", "spec.containers.envFrom", Replace),
            ("Pod", "spec.tolerations", Replace),
            ("Pod", "spec.volumes", MergeOnKey("name")),
            ("Pod", "spec.imagePullSecrets", MergeOnKey("name")),
            ("Pod", "spec.hostAliases", MergeOnKey("ip")),
            (
                "Pod",
                "spec.topologySpreadConstraints",
                MergeOnKey("topologyKey"),
            ),
            ("Pod", "spec.resourceClaims", MergeOnKey("name")),
            ("Pod", "status.conditions", MergeOnKey("type")),
            ("Pod", "status.podIPs", MergeOnKey("ip")),
            ("Pod", "status.containerStatuses", Replace),
            ("Pod", "metadata.finalizers", MergePrimitives),
            ("Pod", "metadata.ownerReferences", MergeOnKey("uid")),
            ("Service", "spec.ports", MergeOnKey("port")),
            ("Service", "status.conditions", MergeOnKey("type")),
            ("Node", "spec.taints", Replace),
            ("Node", "spec.podCIDRs", MergePrimitives),
            ("Node", "status.addresses", MergeOnKey("type")),
            ("Node", "status.conditions", MergeOnKey("type")),
            ("Endpoints", "subsets", Replace),
            ("Namespace", "status.conditions", MergeOnKey("type")),
            ("ConfigMap", "metadata.finalizers", MergePrimitives),
            (
                "Deployment",
                "spec.template.spec.containers",
                MergeOnKey("name"),
            ),
            (
                "Deployment",
                "spec.template.spec.containers.ports",
                MergeOnKey("containerPort"),
            ),
            (
                "Deployment",
                "spec.template.metadata.finalizers",
                MergePrimitives,
            ),
            ("Deployment", "status.conditions", MergeOnKey("type")),
            (
                "ReplicaSet",
                "spec.template.spec.volumes",
                MergeOnKey("name"),
            ),
            (
                "DaemonSet",
                "spec.template.spec.initContainers",
                MergeOnKey("name"),
            ),
            (
                "StatefulSet",
                "spec.template.spec.containers.env",
                MergeOnKey("name"),
            ),
            ("StatefulSet", "spec.volumeClaimTemplates", Replace),
            ("Deployment", "spec.containers", Replace),
        ];
        for (kind, path, want) in cases {
            assert_eq!(strategy_at(kind, path), want, "{kind} {path}");
        }
    }
}
