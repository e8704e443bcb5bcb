//! `rkubectl scale --replicas=N`: a merge patch to the `scale` subresource.

use clap::Args;
use reqwest::Method;
use serde_json::json;

use super::client::Body;
use super::discovery;
use super::Ctx;

/// Arguments of `scale`.
#[derive(Debug, Args)]
pub struct ScaleArgs {
    /// `TYPE NAME…` or `TYPE/NAME…`.
    #[arg(required = true)]
    pub args: Vec<String>,
    /// The new number of replicas.
    #[arg(long, required = true)]
    pub replicas: i64,
}

/// Runs `scale`.
///
/// # Errors
/// On unknown types, missing names and server errors.
pub async fn run(ctx: &Ctx, args: ScaleArgs) -> anyhow::Result<()> {
    let discovery = ctx.discovery().await?;
    for tn in discovery::parse_args(&args.args)? {
        let r = discovery.resolve(&tn.type_arg)?;
        if tn.names.is_empty() {
            anyhow::bail!("resource(s) were provided, but no name was specified");
        }
        for name in &tn.names {
            let path = format!("{}/scale", r.object_path(&ctx.client.namespace, name));
            ctx.client
                .send(
                    Method::PATCH,
                    &path,
                    &[],
                    None,
                    Some(Body::json(
                        "application/merge-patch+json",
                        &json!({"spec": {"replicas": args.replicas}}),
                    )),
                )
                .await?;
            println!("{}/{name} scaled", r.qualified_singular());
        }
    }
    Ok(())
}
