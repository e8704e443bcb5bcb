//! The resource table: every kind rkube serves, described once.

/// Whether objects of a kind live in a namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Namespaced,
    Cluster,
}

/// Subresources a kind may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subresource {
    /// `…/status`: writes only the status of the object.
    Status,
    /// `…/scale`: an `autoscaling/v1` `Scale` view of `spec.replicas`.
    Scale,
    /// `pods/…/binding`: binds a pod to a node.
    Binding,
    /// `pods/…/log`.
    Log,
    /// `pods/…/exec`.
    Exec,
    /// `pods/…/eviction`: a `policy/v1` `Eviction`, a graceful delete of the pod.
    Eviction,
}

impl Subresource {
    /// The path segment after the object's name.
    pub fn name(self) -> &'static str {
        match self {
            Subresource::Status => "status",
            Subresource::Scale => "scale",
            Subresource::Binding => "binding",
            Subresource::Log => "log",
            Subresource::Exec => "exec",
            Subresource::Eviction => "eviction",
        }
    }

    /// Looks a subresource up by its path segment.
    pub fn from_name(name: &str) -> Option<Self> {
        [
            Self::Status,
            Self::Scale,
            Self::Binding,
            Self::Log,
            Self::Exec,
            Self::Eviction,
        ]
        .into_iter()
        .find(|s| s.name() == name)
    }
}

/// One kind of object the API serves.
#[derive(Debug, PartialEq, Eq)]
pub struct Resource {
    /// API group; `""` is the core group.
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    /// The plural, lower-case name used in paths and etcd keys.
    pub plural: &'static str,
    pub singular: &'static str,
    pub scope: Scope,
    pub short_names: &'static [&'static str],
    pub categories: &'static [&'static str],
    pub subresources: &'static [Subresource],
}

impl Resource {
    /// `v1` for the core group, `apps/v1` otherwise.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The kind of the list, e.g. `PodList`.
    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }

    pub fn namespaced(&self) -> bool {
        self.scope == Scope::Namespaced
    }

    pub fn has(&self, sub: Subresource) -> bool {
        self.subresources.contains(&sub)
    }

    /// `deployments.apps` for group resources, `pods` for the core group: the name
    /// Kubernetes uses in error messages.
    pub fn group_resource(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// The URL prefix of the group-version: `/api/v1` or `/apis/apps/v1`.
    pub fn gv_path(&self) -> String {
        if self.group.is_empty() {
            format!("/api/{}", self.version)
        } else {
            format!("/apis/{}/{}", self.group, self.version)
        }
    }
}

use Subresource::{Binding, Eviction, Exec, Log, Scale, Status};

/// Every kind rkube serves, in discovery order.
pub static RESOURCES: &[Resource] = &[
    Resource {
        group: "",
        version: "v1",
        kind: "Namespace",
        plural: "namespaces",
        singular: "namespace",
        scope: Scope::Cluster,
        short_names: &["ns"],
        categories: &[],
        subresources: &[Status],
    },
    Resource {
        group: "",
        version: "v1",
        kind: "Node",
        plural: "nodes",
        singular: "node",
        scope: Scope::Cluster,
        short_names: &["no"],
        categories: &[],
        subresources: &[Status],
    },
    Resource {
        group: "",
        version: "v1",
        kind: "Pod",
        plural: "pods",
        singular: "pod",
        scope: Scope::Namespaced,
        short_names: &["po"],
        categories: &["all"],
        subresources: &[Status, Binding, Log, Exec, Eviction],
    },
    Resource {
        group: "",
        version: "v1",
        kind: "Service",
        plural: "services",
        singular: "service",
        scope: Scope::Namespaced,
        short_names: &["svc"],
        categories: &["all"],
        subresources: &[Status],
    },
    Resource {
        group: "",
        version: "v1",
        kind: "Endpoints",
        plural: "endpoints",
        singular: "endpoints",
        scope: Scope::Namespaced,
        short_names: &["ep"],
        categories: &[],
        subresources: &[],
    },
    Resource {
        group: "",
        version: "v1",
        kind: "ConfigMap",
        plural: "configmaps",
        singular: "configmap",
        scope: Scope::Namespaced,
        short_names: &["cm"],
        categories: &[],
        subresources: &[],
    },
    Resource {
        group: "",
        version: "v1",
        kind: "Secret",
        plural: "secrets",
        singular: "secret",
        scope: Scope::Namespaced,
        short_names: &[],
        categories: &[],
        subresources: &[],
    },
    Resource {
        group: "",
        version: "v1",
        kind: "Event",
        plural: "events",
        singular: "event",
        scope: Scope::Namespaced,
        short_names: &["ev"],
        categories: &[],
        subresources: &[],
    },
    Resource {
        group: "apps",
        version: "v1",
        kind: "Deployment",
        plural: "deployments",
        singular: "deployment",
        scope: Scope::Namespaced,
        short_names: &["deploy"],
        categories: &["all"],
        subresources: &[Status, Scale],
    },
    Resource {
        group: "apps",
        version: "v1",
        kind: "ReplicaSet",
        plural: "replicasets",
        singular: "replicaset",
        scope: Scope::Namespaced,
        short_names: &["rs"],
        categories: &["all"],
        subresources: &[Status, Scale],
    },
    Resource {
        group: "apps",
        version: "v1",
        kind: "DaemonSet",
        plural: "daemonsets",
        singular: "daemonset",
        scope: Scope::Namespaced,
        short_names: &["ds"],
        categories: &["all"],
        subresources: &[Status],
    },
    Resource {
        group: "apps",
        version: "v1",
        kind: "StatefulSet",
        plural: "statefulsets",
        singular: "statefulset",
        scope: Scope::Namespaced,
        short_names: &["sts"],
        categories: &["all"],
        subresources: &[Status, Scale],
    },
    Resource {
        group: "coordination.k8s.io",
        version: "v1",
        kind: "Lease",
        plural: "leases",
        singular: "lease",
        scope: Scope::Namespaced,
        short_names: &[],
        categories: &[],
        subresources: &[],
    },
];

/// Finds a resource by group, version and plural (as in a URL).
pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static Resource> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// Finds a resource by `apiVersion` and `kind` (as in a manifest).
pub fn by_kind(api_version: &str, kind: &str) -> Option<&'static Resource> {
    RESOURCES
        .iter()
        .find(|r| r.kind == kind && r.api_version() == api_version)
}

/// The distinct API groups, in table order (the core group `""` first).
pub fn groups() -> Vec<&'static str> {
    let mut groups: Vec<&'static str> = Vec::new();
    for r in RESOURCES {
        if !groups.contains(&r.group) {
            groups.push(r.group);
        }
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_agree() {
        for r in RESOURCES {
            assert_eq!(find(r.group, r.version, r.plural), Some(r), "{}", r.kind);
            assert_eq!(by_kind(&r.api_version(), r.kind), Some(r), "{}", r.kind);
        }
        assert_eq!(
            find("apps", "v1", "deployments").map(|r| r.group_resource()),
            Some("deployments.apps".into())
        );
        assert_eq!(
            find("", "v1", "pods").map(|r| r.gv_path()),
            Some("/api/v1".into())
        );
        assert!(find("apps", "v1", "pods").is_none());
    }

    #[test]
    fn short_names_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for r in RESOURCES {
            for s in r.short_names {
                assert!(seen.insert(*s), "duplicate short name {s}");
            }
        }
    }
}
