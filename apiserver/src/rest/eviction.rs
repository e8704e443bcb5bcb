//! `POST …/pods/{name}/eviction`: the Eviction API, a policy-controlled graceful delete
//! of a pod (what `kubectl drain` uses).
//!
//! The body is a `policy/v1` (or `policy/v1beta1`) `Eviction` naming the pod, with
//! optional `deleteOptions`. The pod gets the `DisruptionTarget` condition (reason
//! `EvictionByEvictionAPI`) and is then deleted with those options, as a DELETE would:
//! a bound pod is marked with a deletionTimestamp and its grace period, an unbound or
//! finished one goes at once. The answer is a `Success` Status with code 201.
//!
//! rkube serves no PodDisruptionBudgets yet, so no eviction is refused with 429; the
//! clients' 429 handling (retry later) is the contract that will carry them.

use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{json, Value};

use rkube_api::{object, status::Status, Resource, Subresource};

use super::{json_response, Query};
use crate::registry::{check_preconditions, now_rfc3339, DeleteOptions, Registry, WriteOptions};

/// The pod condition an API-initiated eviction leaves behind.
const DISRUPTION_TARGET: &str = "DisruptionTarget";
const DISRUPTION_REASON: &str = "EvictionByEvictionAPI";
const DISRUPTION_MESSAGE: &str = "Eviction API: evicting";

/// How many times the condition's write is tried when other writers keep winning.
const ATTEMPTS: usize = 16;

/// Evicts the pod `namespace/name` as the Eviction `body` asks.
///
/// # Errors
/// 400 for a body that is not an Eviction of this pod or whose dry-run disagrees with
/// the query's; 404 when the pod does not exist; 409 when a precondition fails.
pub(super) async fn serve(
    reg: &Registry,
    pods: &'static Resource,
    namespace: &str,
    name: &str,
    body: &Value,
    q: &Query,
) -> Result<Response, Box<Status>> {
    let opts = delete_options(namespace, name, body, q)?;
    evict(reg, pods, namespace, name, &opts).await?;
    tracing::info!(
        namespace,
        pod = name,
        dry_run = !opts.dry_run.is_empty(),
        "evicted pod"
    );
    let mut done = Status::success(None);
    done.code = StatusCode::CREATED.as_u16();
    Ok(json_response(StatusCode::CREATED, &done.to_json(), &[]))
}

/// Checks that `body` is an Eviction of `namespace/name` and returns its delete
/// options, with the query's `dryRun` carried in.
fn delete_options(
    namespace: &str,
    name: &str,
    body: &Value,
    q: &Query,
) -> Result<DeleteOptions, Box<Status>> {
    let bad = |message: String| Box::new(Status::bad_request(message));
    if !body.is_object() {
        return Err(bad("the request body is not an Eviction object".into()));
    }
    let kind = body["kind"].as_str().unwrap_or_default();
    let api_version = body["apiVersion"].as_str().unwrap_or_default();
    if !kind.is_empty() && kind != "Eviction" {
        return Err(bad(format!(
            "the eviction subresource takes an Eviction, not a {kind}"
        )));
    }
    if !matches!(api_version, "" | "policy/v1" | "policy/v1beta1") {
        return Err(bad(format!(
            "Eviction is served in policy/v1 and policy/v1beta1, not in {api_version:?}"
        )));
    }
    if object::name(body).unwrap_or_default() != name {
        return Err(bad(
            "name in URL does not match name in Eviction object".into()
        ));
    }
    if object::namespace(body).is_some_and(|ns| !ns.is_empty() && ns != namespace) {
        return Err(bad(
            "the namespace of the provided object does not match the namespace sent on the request"
                .into(),
        ));
    }
    let mut opts: DeleteOptions = match body.get("deleteOptions") {
        None | Some(Value::Null) => DeleteOptions::default(),
        Some(d) => serde_json::from_value(d.clone())
            .map_err(|e| bad(format!("invalid deleteOptions: {e}")))?,
    };
    let query_dry_run: Vec<String> = q
        .get("dryRun")
        .filter(|v| !v.is_empty())
        .map(|v| vec![v.clone()])
        .unwrap_or_default();
    if opts.dry_run.is_empty() {
        opts.dry_run = query_dry_run;
    } else if !query_dry_run.is_empty() && query_dry_run != opts.dry_run {
        return Err(bad(format!(
            "Non-matching dry-run options in request and content: {query_dry_run:?} and {:?}",
            opts.dry_run
        )));
    }
    if let Some(other) = opts.dry_run.iter().find(|v| *v != "All") {
        return Err(bad(format!(
            "dryRun: Unsupported value: {other:?}: supported values: \"All\""
        )));
    }
    Ok(opts)
}

/// Marks the pod as a disruption target, then deletes it with `opts`.
async fn evict(
    reg: &Registry,
    pods: &'static Resource,
    namespace: &str,
    name: &str,
    opts: &DeleteOptions,
) -> Result<(), Box<Status>> {
    let pinned = opts.preconditions.resource_version.is_some();
    for _attempt in 0..ATTEMPTS {
        let current = reg.read(pods, Some(namespace), name).await?;
        check_preconditions(
            pods,
            name,
            &current.value,
            current.mod_revision,
            &opts.preconditions,
        )?;
        let mut delete = opts.clone();
        let dry_run = !opts.dry_run.is_empty();
        if let Some(marked) =
            with_disruption_target(&current.value, &now_rfc3339()).filter(|_| !dry_run)
        {
            let written = reg
                .write_update(
                    pods,
                    Some(namespace),
                    name,
                    current,
                    marked,
                    Some(Subresource::Status),
                    &WriteOptions::default(),
                )
                .await;
            match written {
                // The caller's resourceVersion precondition held for the object we
                // changed; the delete must find our write, not a later one.
                Ok(w) if pinned => {
                    delete.preconditions.resource_version =
                        object::resource_version(&w.object).map(String::from);
                }
                Ok(_) => {}
                Err(s) if s.code == 409 && !pinned => continue,
                Err(s) => return Err(s),
            }
        }
        return reg
            .delete(pods, Some(namespace), name, &delete)
            .await
            .map(|_| ());
    }
    Err(Box::new(Status::conflict(pods.group, pods.plural, name)))
}

/// The pod with `DisruptionTarget=True` (reason `EvictionByEvictionAPI`) in its status
/// conditions, or `None` when it already says so. The transition time moves only when
/// the condition's status does.
fn with_disruption_target(pod: &Value, now: &str) -> Option<Value> {
    let mut pod = pod.clone();
    let wanted = json!({
        "type": DISRUPTION_TARGET,
        "status": "True",
        "reason": DISRUPTION_REASON,
        "message": DISRUPTION_MESSAGE,
        "lastTransitionTime": now,
    });
    if !pod["status"].is_object() {
        pod["status"] = json!({});
    }
    if !pod["status"]["conditions"].is_array() {
        pod["status"]["conditions"] = json!([]);
    }
    let conditions = pod["status"]["conditions"]
        .as_array_mut()
        .expect("conditions were made an array above");
    match conditions
        .iter_mut()
        .find(|c| c["type"] == DISRUPTION_TARGET)
    {
        Some(c) if c["status"] == "True" && c["reason"] == DISRUPTION_REASON => return None,
        Some(c) => {
            let since = if c["status"] == "True" {
                c["lastTransitionTime"].clone()
            } else {
                json!(now)
            };
            *c = wanted;
            c["lastTransitionTime"] = since;
        }
        None => conditions.push(wanted),
    }
    Some(pod)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Preconditions;
    use crate::rest::query_of as query;

    fn eviction(name: &str) -> Value {
        json!({"apiVersion": "policy/v1", "kind": "Eviction",
               "metadata": {"name": name, "namespace": "d"}})
    }

    #[test]
    fn bodies_must_name_the_pod() {
        let none = Query::new();
        let mut v1beta1 = eviction("p");
        v1beta1["apiVersion"] = json!("policy/v1beta1");
        let no_type = json!({"metadata": {"name": "p"}});
        for (what, body) in [
            ("v1", eviction("p")),
            ("v1beta1", v1beta1),
            ("no type meta", no_type),
        ] {
            assert!(delete_options("d", "p", &body, &none).is_ok(), "{what}");
        }
        let mut other_ns = eviction("p");
        other_ns["metadata"]["namespace"] = json!("e");
        let mut other_kind = eviction("p");
        other_kind["kind"] = json!("Pod");
        let mut other_group = eviction("p");
        other_group["apiVersion"] = json!("v1");
        let cases = [
            ("other name", eviction("q"), "name in URL does not match name in Eviction object"),
            ("no name", json!({"kind": "Eviction"}), "name in URL does not match name in Eviction object"),
            ("other namespace", other_ns, "the namespace of the provided object does not match the namespace sent on the request"),
            ("other kind", other_kind, "the eviction subresource takes an Eviction, not a Pod"),
            ("other group", other_group, "Eviction is served in policy/v1 and policy/v1beta1, not in \"v1\""),
            ("not an object", json!([]), "the request body is not an Eviction object"),
        ];
        for (what, body, want) in cases {
            let status = delete_options("d", "p", &body, &none).expect_err(what);
            assert_eq!(
                (status.code, status.reason.as_str()),
                (400, "BadRequest"),
                "{what}"
            );
            assert_eq!(status.message, want, "{what}");
        }
    }

    #[test]
    fn delete_options_come_from_the_body_and_the_query() {
        let mut body = eviction("p");
        body["deleteOptions"] = json!({"kind": "DeleteOptions", "apiVersion": "v1",
            "gracePeriodSeconds": 7, "preconditions": {"uid": "u1"}});
        let opts = delete_options("d", "p", &body, &Query::new()).expect("valid");
        assert_eq!(opts.grace_period_seconds, Some(7));
        assert_eq!(opts.preconditions.uid.as_deref(), Some("u1"));
        assert!(opts.dry_run.is_empty());

        let opts = delete_options("d", "p", &body, &query(&[("dryRun", "All")])).expect("valid");
        assert_eq!(opts.dry_run, vec!["All".to_string()]);

        body["deleteOptions"]["dryRun"] = json!(["All"]);
        assert!(delete_options("d", "p", &body, &query(&[("dryRun", "All")])).is_ok());
        let mismatch = delete_options("d", "p", &body, &query(&[("dryRun", "Nope")]))
            .expect_err("dry-run options disagree");
        assert_eq!(mismatch.code, 400);
        assert!(
            mismatch.message.starts_with("Non-matching dry-run options"),
            "{}",
            mismatch.message
        );

        body["deleteOptions"] = json!({"gracePeriodSeconds": "soon"});
        let bad = delete_options("d", "p", &body, &Query::new()).expect_err("not a number");
        assert!(
            bad.message.starts_with("invalid deleteOptions"),
            "{}",
            bad.message
        );
    }

    #[test]
    fn preconditions_name_what_differs() {
        let pods = rkube_api::resource::find("", "v1", "pods").expect("pods");
        let pod = json!({"metadata": {"name": "p", "uid": "u1"}});
        let ok = Preconditions {
            uid: Some("u1".into()),
            resource_version: Some("5".into()),
        };
        assert!(check_preconditions(pods, "p", &pod, 5, &ok).is_ok());
        let uid = Preconditions {
            uid: Some("u2".into()),
            resource_version: None,
        };
        let status = check_preconditions(pods, "p", &pod, 5, &uid).expect_err("uid differs");
        assert_eq!(status.code, 409);
        assert_eq!(
            status.message,
            "Operation cannot be fulfilled on pods \"p\": Precondition failed: UID in precondition: u2, UID in object meta: u1"
        );
        let rv = Preconditions {
            uid: None,
            resource_version: Some("4".into()),
        };
        let status = check_preconditions(pods, "p", &pod, 5, &rv).expect_err("rv differs");
        assert!(
            status
                .message
                .ends_with("ResourceVersion in precondition: 4, ResourceVersion in object meta: 5"),
            "{}",
            status.message
        );
    }

    #[test]
    fn discovery_lists_the_subresource_for_kubectl_drain() {
        // kubectl drain looks in the core v1 resources for `pods/eviction` of kind
        // Eviction with a group and version, and evicts in that group-version.
        let core = super::super::discovery::resource_list("", "v1").expect("core v1");
        let eviction = core["resources"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["name"] == "pods/eviction")
            .expect("pods/eviction listed");
        assert_eq!(
            (
                &eviction["group"],
                &eviction["version"],
                &eviction["kind"],
                &eviction["verbs"]
            ),
            (
                &json!("policy"),
                &json!("v1"),
                &json!("Eviction"),
                &json!(["create"])
            )
        );
        let aggregated = super::super::discovery::aggregated(true);
        let pods = aggregated["items"][0]["versions"][0]["resources"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["resource"] == "pods")
            .expect("pods listed");
        let sub = pods["subresources"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|s| s["subresource"] == "eviction")
            .expect("eviction listed");
        assert_eq!(
            sub["responseKind"],
            json!({"group": "policy", "version": "v1", "kind": "Eviction"})
        );
        assert_eq!(sub["verbs"], json!(["create"]));
    }

    #[test]
    fn evicting_is_creating_the_subresource() {
        let path = "/api/v1/namespaces/d/pods/p/eviction";
        let super::super::path::Route::Resource(target) = super::super::path::parse(path) else {
            panic!("{path} is a resource path");
        };
        let attrs = super::super::request_attributes(
            &axum::http::Method::POST,
            &target,
            &Query::new(),
            path,
        );
        assert_eq!(
            (
                attrs.verb.as_str(),
                attrs.resource.as_str(),
                attrs.subresource.as_str(),
                attrs.name.as_str()
            ),
            ("create", "pods", "eviction", "p")
        );
    }

    #[test]
    fn the_disruption_condition_is_added_once() {
        let ready = json!({"type": "Ready", "status": "True", "lastTransitionTime": "t0"});
        let pod = json!({"metadata": {"name": "p"}, "status": {"phase": "Running", "conditions": [ready]}});
        let marked = with_disruption_target(&pod, "t1").expect("added");
        assert_eq!(
            marked["status"]["conditions"],
            json!([ready, {"type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI",
                           "message": "Eviction API: evicting", "lastTransitionTime": "t1"}])
        );
        assert_eq!(
            with_disruption_target(&marked, "t2"),
            None,
            "already a target"
        );

        let no_status = json!({"metadata": {"name": "p"}});
        let marked = with_disruption_target(&no_status, "t1").expect("added");
        assert_eq!(
            marked["status"]["conditions"][0]["reason"],
            "EvictionByEvictionAPI"
        );

        let mut other = marked.clone();
        other["status"]["conditions"][0]["reason"] = json!("PreemptionByScheduler");
        let moved = with_disruption_target(&other, "t3").expect("reason changes");
        assert_eq!(
            moved["status"]["conditions"][0]["reason"],
            "EvictionByEvictionAPI"
        );
        assert_eq!(
            moved["status"]["conditions"][0]["lastTransitionTime"], "t1",
            "the status stayed True"
        );
        let mut off = marked;
        off["status"]["conditions"][0]["status"] = json!("False");
        let on = with_disruption_target(&off, "t4").expect("status changes");
        assert_eq!(on["status"]["conditions"][0]["lastTransitionTime"], "t4");
    }
}
