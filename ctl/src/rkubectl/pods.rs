//! Resolving what `logs` and `exec` run against: `POD`, `pod/NAME`, or a controller
//! (`deploy/x`, `rs/x`, …) whose pods are found by its selector (a running one
//! preferred), then the container (`-c`, the `kubectl.kubernetes.io/default-container`
//! annotation, or the first, with a note when there are several).

use serde_json::Value;

use super::Ctx;

/// The annotation naming a pod's default container.
const DEFAULT_CONTAINER: &str = "kubectl.kubernetes.io/default-container";

/// The pod `arg` names.
///
/// # Errors
/// On unknown types, objects without a selector or pods, and server errors.
pub async fn pick_pod(ctx: &Ctx, arg: &str) -> anyhow::Result<Value> {
    let ns = ctx.client.namespace.clone();
    let Some((type_arg, name)) = arg.split_once('/') else {
        return Ok(ctx
            .client
            .get(&format!("/api/v1/namespaces/{ns}/pods/{arg}"), &[])
            .await?);
    };
    let discovery = ctx.discovery().await?;
    let r = discovery.resolve(type_arg)?;
    let obj = ctx.client.get(&r.object_path(&ns, name), &[]).await?;
    if r.kind == "Pod" {
        return Ok(obj);
    }
    let selector = selector_of(&obj).ok_or_else(|| {
        anyhow::anyhow!(
            "cannot find the pods of {}/{name}: it has no selector",
            r.qualified_singular()
        )
    })?;
    let pods = ctx
        .client
        .get(
            &format!("/api/v1/namespaces/{ns}/pods"),
            &[("labelSelector", selector)],
        )
        .await?;
    let mut items = pods["items"].as_array().cloned().unwrap_or_default();
    // Running pods first, then by name, so the choice is stable.
    items.sort_by_key(|p| {
        (
            p["status"]["phase"] != "Running",
            !p["metadata"]["deletionTimestamp"].is_null(),
            p["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        )
    });
    items
        .into_iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("no pods found for {}/{name}", r.qualified_singular()))
}

/// `matchLabels` of `spec.selector` (or a Service's plain `spec.selector` map) as a
/// label selector string.
fn selector_of(obj: &Value) -> Option<String> {
    let sel = &obj["spec"]["selector"];
    let map = sel["matchLabels"].as_object().or(sel.as_object())?;
    let mut parts: Vec<String> = map
        .iter()
        .filter_map(|(k, v)| v.as_str().map(|v| format!("{k}={v}")))
        .collect();
    parts.sort();
    (!parts.is_empty()).then(|| parts.join(","))
}

/// The container to use: `flag`, else the default-container annotation, else the
/// first one (saying so on stderr when there are several, as kubectl does).
///
/// # Errors
/// When `flag` names no container of the pod.
pub fn pick_container(pod: &Value, flag: Option<&str>) -> anyhow::Result<String> {
    let names: Vec<String> = pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(
            pod["spec"]["initContainers"]
                .as_array()
                .into_iter()
                .flatten(),
        )
        .filter_map(|c| c["name"].as_str().map(str::to_string))
        .collect();
    let pod_name = pod["metadata"]["name"].as_str().unwrap_or_default();
    if let Some(c) = flag {
        if names.iter().any(|n| n == c) {
            return Ok(c.to_string());
        }
        anyhow::bail!("container {c} is not valid for pod {pod_name}");
    }
    if let Some(c) = pod["metadata"]["annotations"][DEFAULT_CONTAINER].as_str() {
        if names.iter().any(|n| n == c) {
            return Ok(c.to_string());
        }
    }
    let first = names
        .first()
        .ok_or_else(|| anyhow::anyhow!("pod {pod_name} has no containers"))?;
    let regular = pod["spec"]["containers"].as_array().map_or(0, Vec::len);
    if regular > 1 {
        eprintln!("Defaulted container {first:?} out of: {}", names.join(", "));
    }
    Ok(first.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn containers_and_selectors() {
        let pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}, {"name": "b"}]}});
        assert_eq!(pick_container(&pod, None).expect("default"), "a");
        assert_eq!(pick_container(&pod, Some("b")).expect("flag"), "b");
        assert!(pick_container(&pod, Some("z")).is_err());
        let annotated = json!({"metadata": {"name": "p", "annotations": {DEFAULT_CONTAINER: "b"}},
            "spec": {"containers": [{"name": "a"}, {"name": "b"}]}});
        assert_eq!(pick_container(&annotated, None).expect("annotation"), "b");
        let d = json!({"spec": {"selector": {"matchLabels": {"b": "2", "a": "1"}}}});
        assert_eq!(selector_of(&d).as_deref(), Some("a=1,b=2"));
        let svc = json!({"spec": {"selector": {"app": "web"}}});
        assert_eq!(selector_of(&svc).as_deref(), Some("app=web"));
        assert_eq!(selector_of(&json!({"spec": {}})), None);
    }
}
