//! Parsing Kubernetes REST paths into what they name.

use rkube_api::{resource, Resource};

/// What a request path names.
#[derive(Debug, PartialEq)]
pub enum Route {
    Version,
    Health,
    /// `/api` (core discovery).
    Api,
    /// `/apis`.
    Apis,
    /// `/apis/<group>`.
    Group(String),
    /// `/api/v1` or `/apis/<group>/<version>`.
    GroupVersion(String, String),
    OpenApiV3,
    OpenApiV3Doc(String),
    OpenApiV2,
    Resource(Target),
    NotFound,
}

/// A resource path: a collection, an object or a subresource of one.
#[derive(Debug, PartialEq)]
pub struct Target {
    pub resource: &'static Resource,
    /// The namespace in the path (`None` for cluster-scoped kinds and for lists across
    /// all namespaces).
    pub namespace: Option<String>,
    pub name: Option<String>,
    /// The segment after the name, e.g. `status`.
    pub subresource: Option<String>,
}

/// Parses a path (without the query string).
pub fn parse(path: &str) -> Route {
    let segs: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    match segs.as_slice() {
        ["version"] => Route::Version,
        ["healthz" | "livez" | "readyz", ..] => Route::Health,
        ["api"] => Route::Api,
        ["apis"] => Route::Apis,
        ["openapi", "v3"] => Route::OpenApiV3,
        ["openapi", "v3", rest @ ..] => Route::OpenApiV3Doc(rest.join("/")),
        ["openapi", "v2"] => Route::OpenApiV2,
        ["api", version] => Route::GroupVersion(String::new(), (*version).into()),
        ["api", version, rest @ ..] => target("", version, rest),
        ["apis", group] => Route::Group((*group).into()),
        ["apis", group, version] => Route::GroupVersion((*group).into(), (*version).into()),
        ["apis", group, version, rest @ ..] => target(group, version, rest),
        _ => Route::NotFound,
    }
}

fn target(group: &str, version: &str, rest: &[&str]) -> Route {
    let namespaced_resource =
        |plural: &str| resource::find(group, version, plural).filter(|r| r.namespaced());
    // `namespaces/<ns>/<plural>/…` names a namespaced resource; anything else under
    // `namespaces` is the Namespace object itself (and its subresources).
    if let ["namespaces", ns, plural, tail @ ..] = rest {
        if let Some(r) = namespaced_resource(plural) {
            return with_tail(r, Some((*ns).to_string()), tail);
        }
    }
    match rest {
        [plural, tail @ ..] => match resource::find(group, version, plural) {
            Some(r) => with_tail(r, None, tail),
            None => Route::NotFound,
        },
        [] => Route::NotFound,
    }
}

fn with_tail(r: &'static Resource, namespace: Option<String>, tail: &[&str]) -> Route {
    let (name, subresource) = match tail {
        [] => (None, None),
        [name] => (Some((*name).to_string()), None),
        [name, sub] => (Some((*name).to_string()), Some((*sub).to_string())),
        _ => return Route::NotFound,
    };
    Route::Resource(Target {
        resource: r,
        namespace,
        name,
        subresource,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Resource, namespace, name, subresource.
    type Parts = (String, Option<String>, Option<String>, Option<String>);

    fn t(route: Route) -> Option<Parts> {
        match route {
            Route::Resource(t) => {
                Some((t.resource.plural.into(), t.namespace, t.name, t.subresource))
            }
            _ => None,
        }
    }

    #[test]
    fn paths_name_what_kubernetes_means() {
        let s = |x: &str| Some(x.to_string());
        let cases = [
            ("/api/v1/pods", Some(("pods".into(), None, None, None))),
            (
                "/api/v1/namespaces/default/pods",
                Some(("pods".into(), s("default"), None, None)),
            ),
            (
                "/api/v1/namespaces/default/pods/web/status",
                Some(("pods".into(), s("default"), s("web"), s("status"))),
            ),
            (
                "/api/v1/namespaces",
                Some(("namespaces".into(), None, None, None)),
            ),
            (
                "/api/v1/namespaces/team",
                Some(("namespaces".into(), None, s("team"), None)),
            ),
            (
                "/api/v1/namespaces/team/finalize",
                Some(("namespaces".into(), None, s("team"), s("finalize"))),
            ),
            (
                "/api/v1/nodes/n1/status",
                Some(("nodes".into(), None, s("n1"), s("status"))),
            ),
            (
                "/apis/apps/v1/namespaces/d/deployments/x/scale",
                Some(("deployments".into(), s("d"), s("x"), s("scale"))),
            ),
            (
                "/apis/apps/v1/deployments",
                Some(("deployments".into(), None, None, None)),
            ),
            ("/apis/apps/v1/namespaces/d/pods", None),
            ("/api/v1/namespaces/d/pods/a/b/c", None),
        ];
        for (path, want) in cases {
            assert_eq!(t(parse(path)), want, "{path}");
        }
        assert_eq!(parse("/version"), Route::Version);
        assert_eq!(parse("/apis/apps"), Route::Group("apps".into()));
        assert_eq!(
            parse("/api/v1"),
            Route::GroupVersion("".into(), "v1".into())
        );
        assert_eq!(
            parse("/openapi/v3/apis/apps/v1"),
            Route::OpenApiV3Doc("apis/apps/v1".into())
        );
        assert_eq!(parse("/nope"), Route::NotFound);
    }
}
