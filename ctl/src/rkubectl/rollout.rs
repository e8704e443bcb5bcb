//! `rkubectl rollout status|history|undo|pause|resume|restart` for Deployments.
//!
//! `status` follows kubectl's deployment status viewer, and when a rollout is stuck
//! says why: pods the scheduler cannot place (their `PodScheduled` condition message),
//! containers waiting with a reason (`CrashLoopBackOff`, `ImagePullBackOff`), and a
//! `Progressing` condition that gave up (`ProgressDeadlineExceeded`).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{json, Value};

use super::client::Body;
use super::discovery::{self, ApiResource};
use super::Ctx;

/// The annotation holding a ReplicaSet's revision.
const REVISION: &str = "deployment.kubernetes.io/revision";
/// The annotation `rollout history` shows as CHANGE-CAUSE.
const CHANGE_CAUSE: &str = "kubernetes.io/change-cause";
/// The pod-template annotation `rollout restart` sets.
const RESTARTED_AT: &str = "kubectl.kubernetes.io/restartedAt";

/// The `rollout` subcommands.
#[derive(Debug, Subcommand)]
pub enum RolloutVerb {
    /// Watch a rollout until it completes, saying why it is stuck if it is.
    Status(StatusArgs),
    /// Show the revisions of a deployment.
    History(Target),
    /// Roll back to the previous revision, or to --to-revision.
    Undo(UndoArgs),
    /// Pause a deployment's rollout.
    Pause(Target),
    /// Resume a paused deployment.
    Resume(Target),
    /// Restart a deployment's pods with a rolling update.
    Restart(Target),
}

/// `TYPE NAME` or `TYPE/NAME`.
#[derive(Debug, Args)]
pub struct Target {
    #[arg(required = true, num_args = 1..=2)]
    pub args: Vec<String>,
}

/// Arguments of `rollout status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub target: Target,
    /// Keep watching until the rollout finishes (`--watch=false` prints once).
    #[arg(short = 'w', long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub watch: bool,
    /// Give up after this many seconds (0: never).
    #[arg(long, default_value_t = 0)]
    pub timeout_seconds: u64,
    /// Give up after this long, as kubectl's `--timeout` (`90s`, `2m`, `1h`; 0: never).
    #[arg(long, value_parser = parse_timeout)]
    pub timeout: Option<Duration>,
}

/// Parses kubectl's `--timeout`: `30s`, `2m`, `1h` or a bare number of seconds.
fn parse_timeout(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().map_err(|_| format!("invalid duration {s:?}"))?;
    match unit {
        "" | "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!("invalid duration {s:?}")),
    }
}

/// Arguments of `rollout undo`.
#[derive(Debug, Args)]
pub struct UndoArgs {
    #[command(flatten)]
    pub target: Target,
    /// The revision to roll back to (0: the previous one).
    #[arg(long, default_value_t = 0)]
    pub to_revision: i64,
}

/// Runs a `rollout` subcommand.
///
/// # Errors
/// On unsupported kinds, server errors, a failed or timed-out rollout.
pub async fn run(ctx: &Ctx, verb: RolloutVerb) -> anyhow::Result<()> {
    let target = match &verb {
        RolloutVerb::Status(a) => &a.target,
        RolloutVerb::Undo(a) => &a.target,
        RolloutVerb::History(t)
        | RolloutVerb::Pause(t)
        | RolloutVerb::Resume(t)
        | RolloutVerb::Restart(t) => t,
    };
    let discovery = ctx.discovery().await?;
    let [tn] = discovery::parse_args(&target.args)?
        .try_into()
        .map_err(|_| anyhow::anyhow!("rollout takes exactly one resource"))?;
    let resource = discovery.resolve(&tn.type_arg)?;
    if resource.kind != "Deployment" {
        anyhow::bail!("no rollout support for {}", resource.qualified_plural());
    }
    let [name] = tn.names.as_slice() else {
        anyhow::bail!("rollout takes exactly one name");
    };
    let path = resource.object_path(&ctx.client.namespace, name);
    let shown = format!("{}/{name}", resource.qualified_singular());
    match verb {
        RolloutVerb::Status(a) => status(ctx, &path, name, &a).await,
        RolloutVerb::History(_) => history(ctx, &path, &shown).await,
        RolloutVerb::Undo(a) => undo(ctx, &path, &shown, a.to_revision).await,
        RolloutVerb::Pause(_) => pause(ctx, resource, &path, &shown, name, true).await,
        RolloutVerb::Resume(_) => pause(ctx, resource, &path, &shown, name, false).await,
        RolloutVerb::Restart(_) => {
            let now = jiff::Timestamp::now().to_string();
            merge_patch(
                ctx,
                &path,
                json!({"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: now}}}}}),
            )
            .await?;
            println!("{shown} restarted");
            Ok(())
        }
    }
}

async fn merge_patch(ctx: &Ctx, path: &str, body: Value) -> anyhow::Result<Value> {
    Ok(ctx
        .client
        .send(
            Method::PATCH,
            path,
            &[],
            None,
            Some(Body::json("application/merge-patch+json", &body)),
        )
        .await?
        .1)
}

async fn pause(
    ctx: &Ctx,
    resource: &ApiResource,
    path: &str,
    shown: &str,
    name: &str,
    paused: bool,
) -> anyhow::Result<()> {
    let d = ctx.client.get(path, &[]).await?;
    let word = if paused { "paused" } else { "resumed" };
    if d["spec"]["paused"].as_bool().unwrap_or(false) == paused {
        anyhow::bail!(
            "{} {name:?} is {}",
            resource.qualified_plural(),
            if paused {
                "already paused"
            } else {
                "not paused"
            }
        );
    }
    merge_patch(
        ctx,
        path,
        json!({"spec": {"paused": if paused { json!(true) } else { json!(null) }}}),
    )
    .await?;
    println!("{shown} {word}");
    Ok(())
}

/// The label selector string of a deployment (`matchLabels` only, which is what
/// ReplicaSets and pods of a deployment carry).
fn selector(d: &Value) -> String {
    let mut parts: Vec<String> = d["spec"]["selector"]["matchLabels"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
        .collect();
    parts.sort();
    parts.join(",")
}

/// The deployment's ReplicaSets (owned by it), sorted by revision.
async fn replica_sets(ctx: &Ctx, d: &Value) -> anyhow::Result<Vec<(i64, Value)>> {
    let ns = d["metadata"]["namespace"]
        .as_str()
        .unwrap_or(&ctx.client.namespace);
    let uid = d["metadata"]["uid"].as_str().unwrap_or_default();
    let list = ctx
        .client
        .get(
            &format!("/apis/apps/v1/namespaces/{ns}/replicasets"),
            &[("labelSelector", selector(d))],
        )
        .await?;
    let mut out: Vec<(i64, Value)> = list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|rs| {
            rs["metadata"]["ownerReferences"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|o| o["uid"].as_str() == Some(uid))
        })
        .filter_map(|rs| {
            let rev = rs["metadata"]["annotations"][REVISION]
                .as_str()?
                .parse()
                .ok()?;
            Some((rev, rs.clone()))
        })
        .collect();
    out.sort_by_key(|(rev, _)| *rev);
    Ok(out)
}

async fn history(ctx: &Ctx, path: &str, shown: &str) -> anyhow::Result<()> {
    let d = ctx.client.get(path, &[]).await?;
    println!("{shown} ");
    let mut rows = vec![vec!["REVISION".to_string(), "CHANGE-CAUSE".to_string()]];
    for (rev, rs) in replica_sets(ctx, &d).await? {
        rows.push(vec![
            rev.to_string(),
            rs["metadata"]["annotations"][CHANGE_CAUSE]
                .as_str()
                .unwrap_or("<none>")
                .to_string(),
        ]);
    }
    println!("{}", super::printer::columns(&rows));
    Ok(())
}

/// A pod template without the `pod-template-hash` label the ReplicaSet controller adds.
fn template_of(rs: &Value) -> Value {
    let mut t = rs["spec"]["template"].clone();
    if let Some(labels) = t["metadata"]["labels"].as_object_mut() {
        labels.remove("pod-template-hash");
    }
    t
}

async fn undo(ctx: &Ctx, path: &str, shown: &str, to_revision: i64) -> anyhow::Result<()> {
    let d = ctx.client.get(path, &[]).await?;
    if d["spec"]["paused"].as_bool() == Some(true) {
        anyhow::bail!("you cannot rollback a paused deployment; resume it first with 'rkubectl rollout resume' and try again");
    }
    let sets = replica_sets(ctx, &d).await?;
    let target = if to_revision > 0 {
        sets.iter().find(|(rev, _)| *rev == to_revision)
    } else {
        // The previous revision: the highest below the current (highest) one.
        sets.iter().rev().nth(1)
    };
    let Some((rev, rs)) = target else {
        if to_revision > 0 {
            anyhow::bail!("unable to find specified revision {to_revision} in history");
        }
        anyhow::bail!("no rollout history found for {shown}");
    };
    let template = template_of(rs);
    if template == d["spec"]["template"] {
        println!("{shown} skipped rollback (current template already matches revision {rev})");
        return Ok(());
    }
    let mut updated = d.clone();
    updated["spec"]["template"] = template;
    ctx.client
        .send(
            Method::PUT,
            path,
            &[],
            None,
            Some(Body::json("application/json", &updated)),
        )
        .await?;
    println!("{shown} rolled back");
    Ok(())
}

/// What `rollout status` concludes from a deployment: done, or a progress line.
#[derive(Debug, PartialEq, Eq)]
enum Progress {
    Done(String),
    Waiting(String),
    Failed(String),
}

fn progress(d: &Value, name: &str) -> Progress {
    let status = &d["status"];
    let int = |v: &Value| v.as_i64().unwrap_or(0);
    let generation = int(&d["metadata"]["generation"]);
    if generation > int(&status["observedGeneration"]) {
        return Progress::Waiting("Waiting for deployment spec update to be observed...".into());
    }
    let progressing = status["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Progressing");
    if progressing.is_some_and(|c| c["reason"] == "ProgressDeadlineExceeded") {
        return Progress::Failed(format!(
            "deployment {name:?} exceeded its progress deadline"
        ));
    }
    let replicas = d["spec"]["replicas"].as_i64().unwrap_or(1);
    let updated = int(&status["updatedReplicas"]);
    let total = int(&status["replicas"]);
    let available = int(&status["availableReplicas"]);
    if updated < replicas {
        return Progress::Waiting(format!("Waiting for deployment {name:?} rollout to finish: {updated} out of {replicas} new replicas have been updated..."));
    }
    if total > updated {
        return Progress::Waiting(format!("Waiting for deployment {name:?} rollout to finish: {} old replicas are pending termination...", total - updated));
    }
    if available < updated {
        return Progress::Waiting(format!("Waiting for deployment {name:?} rollout to finish: {available} of {updated} updated replicas are available..."));
    }
    Progress::Done(format!("deployment {name:?} successfully rolled out"))
}

/// Why the pods of a rollout are not ready: unschedulable pods and waiting
/// containers, one line each.
fn stuck_reasons(pods: &Value) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for pod in pods["items"].as_array().into_iter().flatten() {
        if !pod["metadata"]["deletionTimestamp"].is_null() {
            continue;
        }
        let name = pod["metadata"]["name"].as_str().unwrap_or_default();
        for c in pod["status"]["conditions"].as_array().into_iter().flatten() {
            if c["type"] == "PodScheduled" && c["status"] == "False" {
                out.insert(format!(
                    "pod {name} is Pending: {}",
                    c["message"]
                        .as_str()
                        .or(c["reason"].as_str())
                        .unwrap_or("not scheduled")
                ));
            }
        }
        for list in ["initContainerStatuses", "containerStatuses"] {
            for cs in pod["status"][list].as_array().into_iter().flatten() {
                let waiting = &cs["state"]["waiting"];
                let Some(reason) = waiting["reason"].as_str() else {
                    continue;
                };
                if reason == "ContainerCreating" || reason == "PodInitializing" {
                    continue;
                }
                let mut line = format!(
                    "pod {name} container {} is waiting: {reason}",
                    cs["name"].as_str().unwrap_or_default()
                );
                if let Some(m) = waiting["message"].as_str().filter(|m| !m.is_empty()) {
                    line.push_str(&format!(" ({m})"));
                }
                out.insert(line);
            }
        }
    }
    out
}

async fn status(ctx: &Ctx, path: &str, name: &str, args: &StatusArgs) -> anyhow::Result<()> {
    let timeout = args
        .timeout
        .unwrap_or(Duration::from_secs(args.timeout_seconds));
    let deadline = (!timeout.is_zero()).then(|| Instant::now() + timeout);
    let mut last_line = String::new();
    let mut told = BTreeSet::new();
    loop {
        let d = ctx.client.get(path, &[]).await?;
        match progress(&d, name) {
            Progress::Done(line) => {
                println!("{line}");
                return Ok(());
            }
            Progress::Failed(line) => anyhow::bail!("{line}"),
            Progress::Waiting(line) => {
                if line != last_line {
                    println!("{line}");
                    last_line = line;
                }
            }
        }
        let ns = d["metadata"]["namespace"]
            .as_str()
            .unwrap_or(&ctx.client.namespace);
        let pods = ctx
            .client
            .get(
                &format!("/api/v1/namespaces/{ns}/pods"),
                &[("labelSelector", selector(&d))],
            )
            .await?;
        for reason in stuck_reasons(&pods) {
            if told.insert(reason.clone()) {
                println!("  {reason}");
            }
        }
        if !args.watch {
            return Ok(());
        }
        if deadline.is_some_and(|t| Instant::now() >= t) {
            anyhow::bail!("timed out waiting for the condition");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeout_reads_like_kubectl() {
        assert_eq!(parse_timeout("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_timeout("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_timeout("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_timeout("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_timeout("0s"), Ok(Duration::ZERO));
        assert!(parse_timeout("5x").is_err());
        assert!(parse_timeout("s").is_err());
    }

    #[test]
    fn progress_follows_kubectl() {
        let d = |gen: i64, observed: i64, mut status: Value| {
            status["observedGeneration"] = json!(observed);
            json!({"metadata": {"generation": gen}, "spec": {"replicas": 3}, "status": status})
        };
        let cases = [
            (
                "unobserved",
                d(2, 1, json!({})),
                "spec update to be observed",
            ),
            (
                "updating",
                d(1, 1, json!({"updatedReplicas": 1, "replicas": 3})),
                "1 out of 3 new replicas",
            ),
            (
                "old pods",
                d(1, 1, json!({"updatedReplicas": 3, "replicas": 4})),
                "1 old replicas are pending",
            ),
            (
                "availability",
                d(
                    1,
                    1,
                    json!({"updatedReplicas": 3, "replicas": 3, "availableReplicas": 2}),
                ),
                "2 of 3 updated replicas are available",
            ),
        ];
        for (name, dep, want) in cases {
            match progress(&dep, "web") {
                Progress::Waiting(line) => assert!(line.contains(want), "{name}: {line}"),
                other => panic!("{name}: {other:?}"),
            }
        }
        let done = d(
            1,
            1,
            json!({"updatedReplicas": 3, "replicas": 3, "availableReplicas": 3}),
        );
        assert_eq!(
            progress(&done, "web"),
            Progress::Done("deployment \"web\" successfully rolled out".into())
        );
        let stuck = d(
            1,
            1,
            json!({"conditions": [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}]}),
        );
        assert!(matches!(progress(&stuck, "web"), Progress::Failed(_)));
    }

    #[test]
    fn stuck_pods_say_why() {
        let pods = json!({"items": [
            {"metadata": {"name": "a"}, "status": {"conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/2 nodes are available: 2 Insufficient cpu."}]}},
            {"metadata": {"name": "b"}, "status": {"containerStatuses": [{"name": "web", "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 10s"}}}]}},
            {"metadata": {"name": "c"}, "status": {"containerStatuses": [{"name": "web", "state": {"waiting": {"reason": "ContainerCreating"}}}]}},
        ]});
        let got: Vec<String> = stuck_reasons(&pods).into_iter().collect();
        assert_eq!(
            got,
            vec![
                "pod a is Pending: 0/2 nodes are available: 2 Insufficient cpu.".to_string(),
                "pod b container web is waiting: CrashLoopBackOff (back-off 10s)".to_string(),
            ]
        );
    }

    #[test]
    fn templates_lose_the_hash_label() {
        let rs = json!({"spec": {"template": {"metadata": {"labels": {"app": "a", "pod-template-hash": "x"}}}}});
        assert_eq!(
            template_of(&rs),
            json!({"metadata": {"labels": {"app": "a"}}})
        );
        let d = json!({"spec": {"selector": {"matchLabels": {"b": "2", "a": "1"}}}});
        assert_eq!(selector(&d), "a=1,b=2");
    }
}
