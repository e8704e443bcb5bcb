//! `rkubectl logs`: a container's log through the apiserver (`…/pods/NAME/log`),
//! printed as it arrives (`-f` follows until the stream ends).

use std::io::Write as _;

use anyhow::Context as _;
use clap::Args;
use reqwest::Method;

use super::pods;
use super::Ctx;

/// Arguments of `logs`.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// `POD`, or `TYPE/NAME` (e.g. `deploy/web`: one of its pods).
    pub target: String,
    /// The container (default: the pod's default or first container).
    #[arg(short = 'c', long)]
    pub container: Option<String>,
    /// Keep streaming new lines.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Only the last N lines (-1: all).
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    pub tail: i64,
    /// The previous (terminated) instance of the container.
    #[arg(short = 'p', long)]
    pub previous: bool,
    /// Prefix each line with its RFC 3339 timestamp.
    #[arg(long)]
    pub timestamps: bool,
    /// Only lines newer than this many seconds.
    #[arg(long)]
    pub since_seconds: Option<i64>,
    /// At most this many bytes.
    #[arg(long)]
    pub limit_bytes: Option<i64>,
}

/// Runs `logs`.
///
/// # Errors
/// When the pod or container cannot be found or the server refuses.
pub async fn run(ctx: &Ctx, args: LogsArgs) -> anyhow::Result<()> {
    let pod = pods::pick_pod(ctx, &args.target).await?;
    let container = pods::pick_container(&pod, args.container.as_deref())?;
    let ns = pod["metadata"]["namespace"]
        .as_str()
        .unwrap_or(&ctx.client.namespace);
    let name = pod["metadata"]["name"].as_str().unwrap_or_default();
    let mut query = vec![("container", container)];
    if args.follow {
        query.push(("follow", "true".into()));
    }
    if args.tail >= 0 {
        query.push(("tailLines", args.tail.to_string()));
    }
    if args.previous {
        query.push(("previous", "true".into()));
    }
    if args.timestamps {
        query.push(("timestamps", "true".into()));
    }
    if let Some(s) = args.since_seconds {
        query.push(("sinceSeconds", s.to_string()));
    }
    if let Some(b) = args.limit_bytes {
        query.push(("limitBytes", b.to_string()));
    }
    let mut response = ctx
        .client
        .start(
            Method::GET,
            &format!("/api/v1/namespaces/{ns}/pods/{name}/log"),
            &query,
            Some("*/*"),
            None,
        )
        .await?;
    while let Some(chunk) = response.chunk().await.context("read log stream")? {
        let mut out = std::io::stdout().lock();
        out.write_all(&chunk).context("write output")?;
        out.flush().context("flush output")?;
    }
    Ok(())
}
