//! `rkubectl drain NODE`: cordon the node, then evict (or, where the server has no
//! eviction subresource, delete) its pods, refusing DaemonSet-managed pods unless
//! `--ignore-daemonsets` and unmanaged pods unless `--force`, and wait until they are
//! gone.

use std::time::{Duration, Instant};

use clap::Args;
use reqwest::Method;
use serde_json::{json, Value};

use super::client::Body;
use super::Ctx;

/// Arguments of `drain`.
#[derive(Debug, Args)]
pub struct DrainArgs {
    /// The node (`NAME` or `node/NAME`).
    pub node: String,
    /// Leave DaemonSet-managed pods where they are.
    #[arg(long)]
    pub ignore_daemonsets: bool,
    /// Also delete pods no controller manages (they are not recreated).
    #[arg(long)]
    pub force: bool,
    /// Also delete pods using emptyDir volumes (their data is lost).
    #[arg(long)]
    pub delete_emptydir_data: bool,
    /// Seconds each pod gets to terminate (-1: the pod's own).
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    pub grace_period: i64,
    /// Give up after this many seconds (0: never).
    #[arg(long, default_value_t = 0)]
    pub timeout_seconds: u64,
}

/// What drain does with one pod.
#[derive(Debug, PartialEq, Eq)]
enum Plan {
    Evict,
    /// Skipped, with the warning to print.
    Skip(&'static str),
    /// Refused, with the reason (the whole drain fails).
    Refuse(&'static str),
}

fn plan(pod: &Value, args: &DrainArgs) -> Plan {
    if pod["metadata"]["annotations"]["kubernetes.io/config.mirror"].is_string() {
        return Plan::Skip("ignoring mirror Pods");
    }
    let phase = pod["status"]["phase"].as_str().unwrap_or_default();
    let finished = phase == "Succeeded" || phase == "Failed";
    let controller = pod["metadata"]["ownerReferences"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|o| o["controller"] == true);
    if controller.is_some_and(|c| c["kind"] == "DaemonSet") {
        return if args.ignore_daemonsets {
            Plan::Skip("ignoring DaemonSet-managed Pods")
        } else {
            Plan::Refuse("cannot delete DaemonSet-managed Pods (use --ignore-daemonsets to ignore)")
        };
    }
    if controller.is_none() && !finished && !args.force {
        return Plan::Refuse(
            "cannot delete Pods that declare no controller (use --force to override)",
        );
    }
    let empty_dir = pod["spec"]["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|v| v.get("emptyDir").is_some());
    if empty_dir && !finished && !args.delete_emptydir_data {
        return Plan::Refuse(
            "cannot delete Pods with local storage (use --delete-emptydir-data to override)",
        );
    }
    Plan::Evict
}

/// Runs `drain`.
///
/// # Errors
/// When pods are refused, the node is unknown, or waiting times out.
pub async fn run(ctx: &Ctx, args: DrainArgs) -> anyhow::Result<()> {
    let node = args
        .node
        .split_once('/')
        .map_or(args.node.as_str(), |(_, n)| n)
        .to_string();
    let path = format!("/api/v1/nodes/{node}");
    let current = ctx.client.get(&path, &[]).await?;
    if current["spec"]["unschedulable"] != true {
        ctx.client
            .send(
                Method::PATCH,
                &path,
                &[],
                None,
                Some(Body::json(
                    "application/merge-patch+json",
                    &json!({"spec": {"unschedulable": true}}),
                )),
            )
            .await?;
        println!("node/{node} cordoned");
    } else {
        println!("node/{node} already cordoned");
    }
    let pods = ctx
        .client
        .get(
            "/api/v1/pods",
            &[("fieldSelector", format!("spec.nodeName={node}"))],
        )
        .await?;
    let mut evict = Vec::new();
    let mut refused: Vec<(&str, String)> = Vec::new();
    let mut skipped: Vec<(&str, String)> = Vec::new();
    for pod in pods["items"].as_array().into_iter().flatten() {
        let key = format!(
            "{}/{}",
            pod["metadata"]["namespace"].as_str().unwrap_or_default(),
            pod["metadata"]["name"].as_str().unwrap_or_default()
        );
        match plan(pod, &args) {
            Plan::Evict => evict.push(pod.clone()),
            Plan::Skip(why) => skipped.push((why, key)),
            Plan::Refuse(why) => refused.push((why, key)),
        }
    }
    if !refused.is_empty() {
        let mut msg = String::from("unable to drain node because of these errors:");
        for (why, key) in &refused {
            msg.push_str(&format!("\n  {why}: {key}"));
        }
        anyhow::bail!("{msg}");
    }
    for (why, key) in &skipped {
        eprintln!("Warning: {why}: {key}");
    }
    let grace = (args.grace_period >= 0).then_some(args.grace_period);
    let mut waiting = Vec::new();
    for pod in &evict {
        let ns = pod["metadata"]["namespace"].as_str().unwrap_or_default();
        let name = pod["metadata"]["name"].as_str().unwrap_or_default();
        println!("evicting pod {ns}/{name}");
        let pod_path = format!("/api/v1/namespaces/{ns}/pods/{name}");
        let eviction = json!({"apiVersion": "policy/v1", "kind": "Eviction",
            "metadata": {"name": name, "namespace": ns},
            "deleteOptions": {"gracePeriodSeconds": grace}});
        let evicted = ctx
            .client
            .send(
                Method::POST,
                &format!("{pod_path}/eviction"),
                &[],
                None,
                Some(Body::json("application/json", &eviction)),
            )
            .await;
        match evicted {
            Ok(_) => {}
            // No eviction subresource here: delete, as kubectl does without policy/v1.
            Err(e) if e.is_not_found() || e.status().is_some_and(|s| s.code == 405) => {
                match ctx
                    .client
                    .send(
                        Method::DELETE,
                        &pod_path,
                        &[],
                        None,
                        Some(Body::json(
                            "application/json",
                            &json!({"gracePeriodSeconds": grace}),
                        )),
                    )
                    .await
                {
                    Ok(_) => {}
                    Err(e) if e.is_not_found() => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Err(e) => return Err(e.into()),
        }
        waiting.push((
            pod_path,
            name.to_string(),
            pod["metadata"]["uid"].as_str().map(str::to_string),
        ));
    }
    let deadline = (args.timeout_seconds > 0)
        .then(|| Instant::now() + Duration::from_secs(args.timeout_seconds));
    for (pod_path, name, uid) in waiting {
        loop {
            match ctx.client.get(&pod_path, &[]).await {
                Err(e) if e.is_not_found() => break,
                Ok(p) if p["metadata"]["uid"].as_str().map(str::to_string) != uid => break,
                Ok(_) => {}
                Err(e) => return Err(e.into()),
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                anyhow::bail!("drain did not complete within {}s", args.timeout_seconds);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        println!("pod/{name} evicted");
    }
    println!("node/{node} drained");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(ignore_daemonsets: bool, force: bool) -> DrainArgs {
        DrainArgs {
            node: "n".into(),
            ignore_daemonsets,
            force,
            delete_emptydir_data: false,
            grace_period: -1,
            timeout_seconds: 0,
        }
    }

    #[test]
    fn plans() {
        let owned = |kind: &str| json!({"metadata": {"ownerReferences": [{"kind": kind, "name": "x", "controller": true}]}});
        let bare = json!({"metadata": {}});
        let done = json!({"metadata": {}, "status": {"phase": "Succeeded"}});
        let cases = [
            (
                "rs pod",
                owned("ReplicaSet"),
                args(false, false),
                Plan::Evict,
            ),
            (
                "ds refused",
                owned("DaemonSet"),
                args(false, false),
                Plan::Refuse(
                    "cannot delete DaemonSet-managed Pods (use --ignore-daemonsets to ignore)",
                ),
            ),
            (
                "ds ignored",
                owned("DaemonSet"),
                args(true, false),
                Plan::Skip("ignoring DaemonSet-managed Pods"),
            ),
            (
                "bare refused",
                bare.clone(),
                args(false, false),
                Plan::Refuse(
                    "cannot delete Pods that declare no controller (use --force to override)",
                ),
            ),
            ("bare forced", bare, args(false, true), Plan::Evict),
            ("finished bare", done, args(false, false), Plan::Evict),
        ];
        for (name, pod, a, want) in cases {
            assert_eq!(plan(&pod, &a), want, "{name}");
        }
    }
}
