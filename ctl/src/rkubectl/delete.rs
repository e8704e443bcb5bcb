//! `rkubectl delete`: by `-f`, by type and names, by `-l` or `--all`; then waits until
//! the objects are gone (`--wait`, the default, as kubectl).

use std::time::{Duration, Instant};

use clap::{ArgAction, Args};
use reqwest::Method;
use serde_json::json;

use super::client::Body;
use super::discovery::{self, ApiResource};
use super::manifest;
use super::{error_text, Ctx, Reported};

/// Arguments of `delete`.
#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// `TYPE[,TYPE…] [NAME…]` or `TYPE/NAME…`.
    pub args: Vec<String>,
    /// Files, directories or `-` naming the objects to delete.
    #[arg(short = 'f', long = "filename")]
    pub filenames: Vec<String>,
    /// Delete the objects matching this label selector.
    #[arg(short = 'l', long)]
    pub selector: Option<String>,
    /// Delete all objects of the types in the namespace.
    #[arg(long)]
    pub all: bool,
    /// With -l or --all: in every namespace.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    /// Seconds the objects get to terminate gracefully (-1: the object's default).
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    pub grace_period: i64,
    /// Delete immediately (grace period 1).
    #[arg(long)]
    pub now: bool,
    /// With --grace-period=0: delete without waiting for the node.
    #[arg(long)]
    pub force: bool,
    /// Wait until the objects are gone.
    #[arg(long, default_value_t = true, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub wait: bool,
    /// How long to wait, e.g. `30s` or `2m` (0: forever).
    #[arg(long, default_value = "0s")]
    pub timeout: String,
    /// Treat not-found objects as deleted.
    #[arg(long)]
    pub ignore_not_found: bool,
}

struct Target<'a> {
    resource: &'a ApiResource,
    namespace: String,
    name: String,
}

/// Parses `30s`, `2m`, `1h` or a bare number of seconds.
fn parse_duration(s: &str) -> anyhow::Result<Duration> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| anyhow::anyhow!("invalid duration {s:?}"))?;
    Ok(Duration::from_secs(match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => anyhow::bail!("invalid duration {s:?}"),
    }))
}

/// Runs `delete`.
///
/// # Errors
/// When arguments are invalid, or any deletion failed.
pub async fn run(ctx: &Ctx, args: DeleteArgs) -> anyhow::Result<()> {
    let timeout = parse_duration(&args.timeout)?;
    let discovery = ctx.discovery().await?;
    let mut targets = Vec::new();
    for m in manifest::read_all(&args.filenames)? {
        let resource = discovery.for_kind(
            m.object["apiVersion"].as_str().unwrap_or_default(),
            m.object["kind"].as_str().unwrap_or_default(),
        )?;
        targets.push(Target {
            resource,
            namespace: m.object["metadata"]["namespace"]
                .as_str()
                .unwrap_or(&ctx.client.namespace)
                .to_string(),
            name: m.object["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        });
    }
    if !args.args.is_empty() {
        for tn in discovery::parse_args(&args.args)? {
            let resource = discovery.resolve(&tn.type_arg)?;
            if !tn.names.is_empty() {
                for name in tn.names {
                    targets.push(Target {
                        resource,
                        namespace: ctx.client.namespace.clone(),
                        name,
                    });
                }
                continue;
            }
            if args.selector.is_none() && !args.all {
                anyhow::bail!("resource(s) were provided, but no name was specified");
            }
            let ns = (!args.all_namespaces).then_some(ctx.client.namespace.as_str());
            let mut query = Vec::new();
            if let Some(l) = &args.selector {
                query.push(("labelSelector", l.clone()));
            }
            let list = ctx
                .client
                .get(&resource.collection_path(ns), &query)
                .await?;
            for item in list["items"].as_array().into_iter().flatten() {
                targets.push(Target {
                    resource,
                    namespace: item["metadata"]["namespace"]
                        .as_str()
                        .unwrap_or(&ctx.client.namespace)
                        .to_string(),
                    name: item["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                });
            }
        }
    } else if args.filenames.is_empty() {
        anyhow::bail!("You must provide one or more resources by argument or filename.");
    }
    if targets.is_empty() {
        eprintln!("No resources found");
        return Ok(());
    }
    let grace = if args.now {
        Some(1)
    } else if args.grace_period >= 0 {
        Some(args.grace_period)
    } else {
        None
    };
    if grace == Some(0) && !args.force {
        anyhow::bail!("--grace-period=0 must have --force specified");
    }
    let body = json!({"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": grace, "propagationPolicy": "Background"});
    let mut failed = false;
    let mut deleted = Vec::new();
    for t in &targets {
        let path = t.resource.object_path(&t.namespace, &t.name);
        match ctx
            .client
            .send(
                Method::DELETE,
                &path,
                &[],
                None,
                Some(Body::json("application/json", &body)),
            )
            .await
        {
            Ok((_, obj)) => {
                println!("{} \"{}\" deleted", t.resource.qualified_singular(), t.name);
                deleted.push((path, obj["metadata"]["uid"].as_str().map(str::to_string)));
            }
            Err(e) if e.is_not_found() && args.ignore_not_found => {}
            Err(e) => {
                eprintln!("{}", error_text(&e.into()));
                failed = true;
            }
        }
    }
    if args.wait {
        let deadline = (!timeout.is_zero()).then(|| Instant::now() + timeout);
        for (path, uid) in deleted {
            loop {
                match ctx.client.get(&path, &[]).await {
                    Err(e) if e.is_not_found() => break,
                    Ok(obj)
                        if uid.is_some() && obj["metadata"]["uid"].as_str() != uid.as_deref() =>
                    {
                        break
                    }
                    Ok(_) => {}
                    Err(e) => return Err(e.into()),
                }
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    anyhow::bail!("timed out waiting for {path} to be deleted");
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
    if failed {
        return Err(Reported.into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        for (s, want) in [("0s", 0), ("30s", 30), ("2m", 120), ("1h", 3600), ("7", 7)] {
            assert_eq!(
                parse_duration(s).expect(s),
                Duration::from_secs(want),
                "{s}"
            );
        }
        assert!(parse_duration("x").is_err());
        assert!(parse_duration("3d").is_err());
    }
}
