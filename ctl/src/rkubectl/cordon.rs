//! `rkubectl cordon|uncordon NODE…`: sets `spec.unschedulable` with a merge patch.

use clap::Args;
use reqwest::Method;
use serde_json::json;

use super::client::Body;
use super::Ctx;

/// Arguments of `cordon` and `uncordon`.
#[derive(Debug, Args)]
pub struct CordonArgs {
    /// The nodes (`NAME` or `node/NAME`).
    #[arg(required = true)]
    pub nodes: Vec<String>,
}

/// Runs `cordon` (`unschedulable` true) or `uncordon`.
///
/// # Errors
/// On server errors (e.g. an unknown node).
pub async fn run(ctx: &Ctx, args: CordonArgs, unschedulable: bool) -> anyhow::Result<()> {
    let word = if unschedulable {
        "cordoned"
    } else {
        "uncordoned"
    };
    for arg in &args.nodes {
        // `node/x` (or `no/x`, `nodes/x`) names a node as well.
        let node = match arg.split_once('/') {
            Some(("node" | "nodes" | "no", n)) => n,
            _ => arg.as_str(),
        };
        let path = format!("/api/v1/nodes/{node}");
        let current = ctx.client.get(&path, &[]).await?;
        if current["spec"]["unschedulable"].as_bool().unwrap_or(false) == unschedulable {
            println!("node/{node} already {word}");
            continue;
        }
        let value = if unschedulable {
            json!(true)
        } else {
            json!(null)
        };
        ctx.client
            .send(
                Method::PATCH,
                &path,
                &[],
                None,
                Some(Body::json(
                    "application/merge-patch+json",
                    &json!({"spec": {"unschedulable": value}}),
                )),
            )
            .await?;
        println!("node/{node} {word}");
    }
    Ok(())
}
