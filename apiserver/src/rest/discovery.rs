//! Discovery (`/api`, `/apis`, aggregated and legacy), `/version` and OpenAPI v3: what
//! kubectl reads before anything else. All generated from the resource table.

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use rkube_api::{resource::RESOURCES, Resource, Subresource};

/// The content type of aggregated discovery (kubectl matches it exactly).
pub const AGGREGATED_CONTENT_TYPE: &str =
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

/// `/version`: minor "32" so that the kubectl dispatcher keeps kubectl 1.32.
pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": "32",
        "gitVersion": concat!("v1.32.0-rkube.", env!("CARGO_PKG_VERSION")),
        "gitCommit": "rkube",
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "rust",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, if std::env::consts::ARCH == "x86_64" { "amd64" } else { std::env::consts::ARCH }),
    })
}

fn verbs(r: &Resource) -> Vec<&'static str> {
    vec![
        "create",
        "delete",
        "deletecollection",
        "get",
        "list",
        "patch",
        "update",
        "watch",
    ]
    .into_iter()
    .filter(|v| *v != "deletecollection" || r.kind != "Namespace")
    .collect()
}

fn sub_kind(r: &Resource, s: Subresource) -> (String, &'static str, &'static str) {
    match s {
        Subresource::Scale => ("autoscaling".into(), "v1", "Scale"),
        Subresource::Binding => ("".into(), "v1", "Binding"),
        Subresource::Log | Subresource::Exec => ("".into(), "v1", "Pod"),
        Subresource::Eviction => ("policy".into(), "v1", "Eviction"),
        Subresource::Status => (r.group.to_string(), r.version, r.kind),
    }
}

fn sub_verbs(s: Subresource) -> Vec<&'static str> {
    match s {
        Subresource::Status | Subresource::Scale => vec!["get", "patch", "update"],
        Subresource::Binding | Subresource::Eviction => vec!["create"],
        Subresource::Log => vec!["get"],
        Subresource::Exec => vec!["create", "get"],
    }
}

fn aggregated_group(group: &str) -> Value {
    let resources: Vec<Value> = RESOURCES
        .iter()
        .filter(|r| r.group == group)
        .map(|r| {
            json!({
                "resource": r.plural,
                "responseKind": {"group": r.group, "version": r.version, "kind": r.kind},
                "scope": if r.namespaced() { "Namespaced" } else { "Cluster" },
                "singularResource": r.singular,
                "shortNames": r.short_names,
                "categories": r.categories,
                "verbs": verbs(r),
                "subresources": r.subresources.iter().map(|s| {
                    let (g, v, k) = sub_kind(r, *s);
                    json!({"subresource": s.name(), "responseKind": {"group": g, "version": v, "kind": k}, "verbs": sub_verbs(*s)})
                }).collect::<Vec<_>>(),
            })
        })
        .collect();
    let version = RESOURCES
        .iter()
        .find(|r| r.group == group)
        .map_or("v1", |r| r.version);
    json!({"metadata": {"name": group}, "versions": [{"version": version, "freshness": "Current", "resources": resources}]})
}

/// Aggregated discovery: the core group for `/api`, the others for `/apis`.
pub fn aggregated(core: bool) -> Value {
    let items: Vec<Value> = rkube_api::resource::groups()
        .into_iter()
        .filter(|g| g.is_empty() == core)
        .map(aggregated_group)
        .collect();
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items})
}

/// Legacy `/api`.
pub fn api_versions() -> Value {
    json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": ""}]})
}

fn api_group(group: &str) -> Value {
    let version = RESOURCES
        .iter()
        .find(|r| r.group == group)
        .map_or("v1", |r| r.version);
    let gv = json!({"groupVersion": format!("{group}/{version}"), "version": version});
    json!({"kind": "APIGroup", "apiVersion": "v1", "name": group, "versions": [gv.clone()], "preferredVersion": gv})
}

/// Legacy `/apis`.
pub fn api_group_list() -> Value {
    let groups: Vec<Value> = rkube_api::resource::groups()
        .into_iter()
        .filter(|g| !g.is_empty())
        .map(api_group)
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// Legacy `/apis/<group>`, if the group exists.
pub fn group(group: &str) -> Option<Value> {
    RESOURCES
        .iter()
        .any(|r| r.group == group)
        .then(|| api_group(group))
}

/// Legacy `APIResourceList` for one group-version, if it exists.
pub fn resource_list(group: &str, version: &str) -> Option<Value> {
    let rs: Vec<&Resource> = RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
        .collect();
    if rs.is_empty() {
        return None;
    }
    let mut resources = Vec::new();
    for r in rs {
        resources.push(json!({
            "name": r.plural, "singularName": r.singular, "namespaced": r.namespaced(), "kind": r.kind,
            "verbs": verbs(r), "shortNames": r.short_names, "categories": r.categories,
        }));
        for s in r.subresources {
            let (g, v, k) = sub_kind(r, *s);
            resources.push(json!({
                "name": format!("{}/{}", r.plural, s.name()), "singularName": "", "namespaced": r.namespaced(),
                "group": g, "version": v, "kind": k, "verbs": sub_verbs(*s),
            }));
        }
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}),
    )
}

/// The OpenAPI v3 path key of a group-version (`api/v1`, `apis/apps/v1`).
fn openapi_key(r: &Resource) -> String {
    r.gv_path().trim_start_matches('/').to_string()
}

/// `/openapi/v3/<key>`: one document per group-version, each kind with its operations
/// and the `fieldValidation` parameter on PATCH that makes kubectl validate server-side.
pub fn openapi_document(key: &str) -> Option<Value> {
    let rs: Vec<&Resource> = RESOURCES.iter().filter(|r| openapi_key(r) == key).collect();
    if rs.is_empty() {
        return None;
    }
    let mut paths = serde_json::Map::new();
    for r in rs {
        let gvk = json!({"group": r.group, "version": r.version, "kind": r.kind});
        let base = if r.namespaced() {
            format!("{}/namespaces/{{namespace}}/{}", r.gv_path(), r.plural)
        } else {
            format!("{}/{}", r.gv_path(), r.plural)
        };
        let params = |extra: &[&str]| -> Value {
            let mut ps: Vec<Value> = extra
                .iter()
                .map(|n| json!({"name": n, "in": "query", "schema": {"type": "string"}}))
                .collect();
            ps.push(json!({"name": "dryRun", "in": "query", "schema": {"type": "string"}}));
            Value::Array(ps)
        };
        let op = |id: &str, extra: &[&str]| -> Value {
            json!({"operationId": id, "x-kubernetes-group-version-kind": gvk, "parameters": params(extra),
                   "responses": {"200": {"description": "OK"}}})
        };
        paths.insert(
            base.clone(),
            json!({
                "get": op(&format!("list{}", r.kind), &["labelSelector", "fieldSelector", "limit", "continue", "resourceVersion", "watch"]),
                "post": op(&format!("create{}", r.kind), &["fieldManager", "fieldValidation"]),
            }),
        );
        paths.insert(
            format!("{base}/{{name}}"),
            json!({
                "get": op(&format!("read{}", r.kind), &[]),
                "put": op(&format!("replace{}", r.kind), &["fieldManager", "fieldValidation"]),
                "patch": {
                    "operationId": format!("patch{}", r.kind),
                    "x-kubernetes-group-version-kind": gvk,
                    "parameters": params(&["fieldManager", "fieldValidation", "force"]),
                    "requestBody": {"content": {
                        "application/json-patch+json": {"schema": {"type": "object"}},
                        "application/merge-patch+json": {"schema": {"type": "object"}},
                        "application/apply-patch+yaml": {"schema": {"type": "object"}}
                    }},
                    "responses": {"200": {"description": "OK"}}
                },
                "delete": op(&format!("delete{}", r.kind), &["gracePeriodSeconds", "propagationPolicy"]),
            }),
        );
    }
    Some(
        json!({"openapi": "3.0.0", "info": {"title": "rkube", "version": "v1.32.0"}, "paths": paths}),
    )
}

/// `/openapi/v3`: every group-version with a hash of its document.
pub fn openapi_index() -> Value {
    let mut paths = serde_json::Map::new();
    for r in RESOURCES {
        let key = openapi_key(r);
        if paths.contains_key(&key) {
            continue;
        }
        let doc = openapi_document(&key).unwrap_or_default();
        let digest = Sha256::digest(doc.to_string().as_bytes());
        let hash: String = digest.iter().take(16).map(|b| format!("{b:02X}")).collect();
        paths.insert(
            key.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{key}?hash={hash}")}),
        );
    }
    json!({"paths": paths})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovery_lists_every_resource() {
        let core = aggregated(true);
        assert_eq!(core["items"].as_array().map(Vec::len), Some(1));
        assert_eq!(core["items"][0]["metadata"]["name"], "");
        let apps = aggregated(false);
        let deploy = apps["items"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| {
                g["versions"][0]["resources"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .find(|r| r["resource"] == "deployments")
            .expect("deployments listed");
        assert_eq!(deploy["shortNames"], json!(["deploy"]));
        assert_eq!(deploy["subresources"][1]["responseKind"]["kind"], "Scale");
        assert!(resource_list("apps", "v1").is_some());
        assert!(resource_list("apps", "v2").is_none());
        assert_eq!(version()["minor"], "32");
    }

    #[test]
    fn openapi_has_field_validation_on_every_patch() {
        let index = openapi_index();
        let keys: Vec<&String> = index["paths"].as_object().expect("paths").keys().collect();
        assert!(
            keys.iter().any(|k| *k == "api/v1") && keys.iter().any(|k| *k == "apis/apps/v1"),
            "{keys:?}"
        );
        let doc = openapi_document("apis/apps/v1").expect("apps doc");
        let patch =
            &doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"];
        assert_eq!(
            patch["x-kubernetes-group-version-kind"]["kind"],
            "Deployment"
        );
        assert!(patch["parameters"]
            .as_array()
            .expect("params")
            .iter()
            .any(|p| p["name"] == "fieldValidation"));
        assert!(patch["requestBody"]["content"]
            .get("application/strategic-merge-patch+json")
            .is_none());
        assert!(openapi_document("apis/nope/v1").is_none());
    }
}
