//! Resource mapping through the server's aggregated discovery (`/api`, `/apis`): what
//! `deploy`, `pods`, `deployments.apps` or a manifest's `apiVersion`/`kind` name, and the
//! URL of its collection; plus parsing of resource arguments (`deploy/x`, `pods,svc a b`).

use serde_json::Value;

use super::client::{self, Client};

/// The Accept header for aggregated discovery.
const DISCOVERY_ACCEPT: &str =
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json";

/// Why a resource could not be mapped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to read API discovery")]
    Fetch(#[source] client::Error),
    #[error("the server doesn't have a resource type \"{0}\"")]
    UnknownType(String),
    #[error("no matches for kind \"{kind}\" in version \"{api_version}\"")]
    UnknownKind { api_version: String, kind: String },
    #[error("arguments in resource/name form must have a single resource and name")]
    BadSlashArg,
    #[error("there is no need to specify a resource type as a separate argument when passing arguments in resource/name form (e.g. 'rkubectl get resource/<resource_name>' instead of 'rkubectl get resource resource/<resource_name>'")]
    MixedArgs,
    #[error("You must provide one or more resources by argument or filename.")]
    NoArgs,
}

/// The result type of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One resource type the server serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiResource {
    pub group: String,
    pub version: String,
    pub kind: String,
    pub plural: String,
    pub singular: String,
    pub short_names: Vec<String>,
    pub namespaced: bool,
    pub verbs: Vec<String>,
}

impl ApiResource {
    /// `apps/v1` or `v1`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The `-o name` prefix: `deployment.apps`, `pod`.
    pub fn qualified_singular(&self) -> String {
        if self.group.is_empty() {
            self.singular.clone()
        } else {
            format!("{}.{}", self.singular, self.group)
        }
    }

    /// The name in Status messages: `deployments.apps`, `pods`.
    pub fn qualified_plural(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// The collection URL path; `namespace` is ignored for cluster-scoped resources,
    /// and `None` lists across all namespaces.
    pub fn collection_path(&self, namespace: Option<&str>) -> String {
        let prefix = if self.group.is_empty() {
            format!("/api/{}", self.version)
        } else {
            format!("/apis/{}/{}", self.group, self.version)
        };
        match namespace {
            Some(ns) if self.namespaced => format!("{prefix}/namespaces/{ns}/{}", self.plural),
            _ => format!("{prefix}/{}", self.plural),
        }
    }

    /// One object's URL path.
    pub fn object_path(&self, namespace: &str, name: &str) -> String {
        format!("{}/{name}", self.collection_path(Some(namespace)))
    }
}

/// Every resource the server serves, in discovery order (preferred versions first).
#[derive(Debug, Clone, Default)]
pub struct Discovery {
    pub resources: Vec<ApiResource>,
}

impl Discovery {
    /// Reads `/api` and `/apis`.
    ///
    /// # Errors
    /// When either request fails.
    pub async fn fetch(client: &Client) -> Result<Discovery> {
        let mut d = Discovery::default();
        for path in ["/api", "/apis"] {
            let (_, doc) = client
                .send(
                    reqwest::Method::GET,
                    path,
                    &[],
                    Some(DISCOVERY_ACCEPT),
                    None,
                )
                .await
                .map_err(Error::Fetch)?;
            d.add_aggregated(&doc);
        }
        Ok(d)
    }

    /// Adds the resources of an `APIGroupDiscoveryList`.
    pub fn add_aggregated(&mut self, doc: &Value) {
        for group in doc["items"].as_array().into_iter().flatten() {
            let g = group["metadata"]["name"].as_str().unwrap_or_default();
            for version in group["versions"].as_array().into_iter().flatten() {
                let v = version["version"].as_str().unwrap_or_default();
                for r in version["resources"].as_array().into_iter().flatten() {
                    let kind = r["responseKind"]["kind"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string();
                    let strings = |k: &str| -> Vec<String> {
                        r[k].as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(|s| s.as_str().map(str::to_string))
                            .collect()
                    };
                    self.resources.push(ApiResource {
                        group: g.to_string(),
                        version: v.to_string(),
                        plural: r["resource"].as_str().unwrap_or_default().to_string(),
                        singular: r["singularResource"]
                            .as_str()
                            .filter(|s| !s.is_empty())
                            .map_or_else(|| kind.to_lowercase(), str::to_string),
                        kind,
                        short_names: strings("shortNames"),
                        namespaced: r["scope"] == "Namespaced",
                        verbs: strings("verbs"),
                    });
                }
            }
        }
    }

    /// Resolves a type argument: plural, singular, short name or kind, optionally
    /// qualified by group (`deployments.apps`) or `plural.version.group`.
    ///
    /// # Errors
    /// When nothing matches.
    pub fn resolve(&self, arg: &str) -> Result<&ApiResource> {
        let lower = arg.to_lowercase();
        let (name, group) = match lower.split_once('.') {
            Some((n, g)) => (n.to_string(), Some(g.to_string())),
            None => (lower.clone(), None),
        };
        let matches = |r: &&ApiResource| {
            let names = r.plural == name
                || r.singular == name
                || r.kind.to_lowercase() == name
                || r.short_names.contains(&name);
            let group_ok = match &group {
                None => true,
                Some(g) => r.group == *g || format!("{}.{}", r.version, r.group) == *g,
            };
            names && group_ok
        };
        // Core resources win over same-named ones in groups (as `events` does).
        self.resources
            .iter()
            .filter(matches)
            .min_by_key(|r| !r.group.is_empty())
            .ok_or_else(|| Error::UnknownType(arg.to_string()))
    }

    /// The resource for a manifest's `apiVersion` and `kind`.
    ///
    /// # Errors
    /// When the server does not serve that kind.
    pub fn for_kind(&self, api_version: &str, kind: &str) -> Result<&ApiResource> {
        self.resources
            .iter()
            .find(|r| r.api_version() == api_version && r.kind == kind)
            .ok_or_else(|| Error::UnknownKind {
                api_version: api_version.to_string(),
                kind: kind.to_string(),
            })
    }
}

/// What resource arguments ask for: a type and the names of that type (empty: all).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeNames {
    pub type_arg: String,
    pub names: Vec<String>,
}

/// Parses `TYPE[,TYPE…] [NAME…]` or `TYPE/NAME…`, keeping the order, merging
/// consecutive `TYPE/NAME`s of the same type.
///
/// # Errors
/// On an empty list, a bad `TYPE/NAME` or both forms mixed.
pub fn parse_args(args: &[String]) -> Result<Vec<TypeNames>> {
    let Some(first) = args.first() else {
        return Err(Error::NoArgs);
    };
    if first.contains('/') {
        let mut out: Vec<TypeNames> = Vec::new();
        for a in args {
            let Some((t, n)) = a.split_once('/') else {
                return Err(Error::MixedArgs);
            };
            if t.is_empty() || n.is_empty() || n.contains('/') {
                return Err(Error::BadSlashArg);
            }
            match out.last_mut() {
                Some(last) if last.type_arg == t => last.names.push(n.to_string()),
                _ => out.push(TypeNames {
                    type_arg: t.to_string(),
                    names: vec![n.to_string()],
                }),
            }
        }
        return Ok(out);
    }
    if args[1..].iter().any(|a| a.contains('/')) {
        return Err(Error::MixedArgs);
    }
    Ok(first
        .split(',')
        .filter(|t| !t.is_empty())
        .map(|t| TypeNames {
            type_arg: t.to_string(),
            names: args[1..].to_vec(),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn discovery() -> Discovery {
        let mut d = Discovery::default();
        d.add_aggregated(&json!({"items": [{"metadata": {"name": ""}, "versions": [{"version": "v1", "resources": [
            {"resource": "pods", "responseKind": {"kind": "Pod"}, "scope": "Namespaced", "singularResource": "pod", "shortNames": ["po"]},
            {"resource": "events", "responseKind": {"kind": "Event"}, "scope": "Namespaced", "shortNames": ["ev"]},
            {"resource": "nodes", "responseKind": {"kind": "Node"}, "scope": "Cluster", "shortNames": ["no"]}]}]}]}));
        d.add_aggregated(&json!({"items": [
            {"metadata": {"name": "events.k8s.io"}, "versions": [{"version": "v1", "resources": [
                {"resource": "events", "responseKind": {"kind": "Event"}, "scope": "Namespaced"}]}]},
            {"metadata": {"name": "apps"}, "versions": [{"version": "v1", "resources": [
                {"resource": "deployments", "responseKind": {"kind": "Deployment"}, "scope": "Namespaced", "singularResource": "deployment", "shortNames": ["deploy"]}]}]}]}));
        d
    }

    #[test]
    fn resolves_names_like_kubectl() {
        let d = discovery();
        for (arg, plural, group) in [
            ("deploy", "deployments", "apps"),
            ("deployment", "deployments", "apps"),
            ("Deployment", "deployments", "apps"),
            ("deployments.apps", "deployments", "apps"),
            ("deployments.v1.apps", "deployments", "apps"),
            ("po", "pods", ""),
            ("events", "events", ""),
            ("events.events.k8s.io", "events", "events.k8s.io"),
            ("no", "nodes", ""),
        ] {
            let r = d.resolve(arg).expect(arg);
            assert_eq!(
                (r.plural.as_str(), r.group.as_str()),
                (plural, group),
                "{arg}"
            );
        }
        assert!(d.resolve("nope").is_err());
        let node = d.resolve("node").expect("node");
        assert_eq!(node.collection_path(Some("x")), "/api/v1/nodes");
        let deploy = d.for_kind("apps/v1", "Deployment").expect("kind");
        assert_eq!(
            deploy.object_path("d", "x"),
            "/apis/apps/v1/namespaces/d/deployments/x"
        );
        assert_eq!(deploy.qualified_singular(), "deployment.apps");
        assert_eq!(d.resolve("pods").expect("pods").qualified_singular(), "pod");
    }

    #[test]
    fn parses_resource_args() {
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let tn = |t: &str, n: &[&str]| TypeNames {
            type_arg: t.into(),
            names: s(n),
        };
        assert_eq!(
            parse_args(&s(&["deploy/x"])).expect("ok"),
            vec![tn("deploy", &["x"])]
        );
        assert_eq!(
            parse_args(&s(&["pods,svc"])).expect("ok"),
            vec![tn("pods", &[]), tn("svc", &[])]
        );
        assert_eq!(
            parse_args(&s(&["pods", "a", "b"])).expect("ok"),
            vec![tn("pods", &["a", "b"])]
        );
        assert_eq!(
            parse_args(&s(&["po/a", "po/b", "svc/c"])).expect("ok"),
            vec![tn("po", &["a", "b"]), tn("svc", &["c"])]
        );
        assert!(parse_args(&s(&["pods", "po/a"])).is_err());
        assert!(parse_args(&s(&["po/a", "b"])).is_err());
        assert!(parse_args(&s(&["po/"])).is_err());
        assert!(parse_args(&[]).is_err());
    }
}
