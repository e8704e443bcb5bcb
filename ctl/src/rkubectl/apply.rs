//! `rkubectl apply -f` (server-side apply: create or update, printing
//! `created|configured|unchanged`) and `rkubectl create -f`.

use clap::Args;
use reqwest::{Method, StatusCode};
use serde_json::Value;

use super::client::Body;
use super::manifest::{self, Manifest};
use super::{error_text, Ctx, Reported};

/// The field manager rkubectl applies as.
pub const FIELD_MANAGER: &str = "rkubectl";

/// Arguments of `apply` and `create`.
#[derive(Debug, Args)]
pub struct FileArgs {
    /// Files, directories or `-` (stdin) holding the manifests.
    #[arg(short = 'f', long = "filename", required = true)]
    pub filenames: Vec<String>,
    /// `name` prints only `kind.group/name`.
    #[arg(short = 'o', long = "output")]
    pub output: Option<String>,
}

/// Whether objects are applied or created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Apply,
    Create,
}

/// Runs `apply` or `create`: every object is tried, failures are printed, and the
/// command fails if any did.
///
/// # Errors
/// When the manifests cannot be read, or any object failed.
pub async fn run(ctx: &Ctx, args: FileArgs, mode: Mode) -> anyhow::Result<()> {
    let manifests = manifest::read_all(&args.filenames)?;
    let mut failed = false;
    for m in manifests {
        match one(ctx, &m, mode).await {
            Ok((qualified, name, verb)) => {
                if args.output.as_deref() == Some("name") {
                    println!("{qualified}/{name}");
                } else {
                    println!("{qualified}/{name} {verb}");
                }
            }
            Err(e) => {
                eprintln!("{}", error_text(&e));
                failed = true;
            }
        }
    }
    if failed {
        return Err(Reported.into());
    }
    Ok(())
}

async fn one(
    ctx: &Ctx,
    m: &Manifest,
    mode: Mode,
) -> anyhow::Result<(String, String, &'static str)> {
    let discovery = ctx.discovery().await?;
    let api_version = m.object["apiVersion"].as_str().unwrap_or_default();
    let kind = m.object["kind"].as_str().unwrap_or_default();
    let resource = discovery
        .for_kind(api_version, kind)
        .map_err(|e| anyhow::anyhow!("unable to recognize \"{}\": {e}", m.source))?;
    let namespace = m.object["metadata"]["namespace"]
        .as_str()
        .unwrap_or(&ctx.client.namespace)
        .to_string();
    let name = m.object["metadata"]["name"].as_str().unwrap_or_default();
    let qualified = resource.qualified_singular();
    match mode {
        Mode::Create => {
            let (_, created) = ctx
                .client
                .send(
                    Method::POST,
                    &resource.collection_path(Some(&namespace)),
                    &[
                        ("fieldManager", "rkubectl-create".into()),
                        ("fieldValidation", "Strict".into()),
                    ],
                    None,
                    Some(Body::json("application/json", &m.object)),
                )
                .await
                .map_err(|e| e.with_context(format!("error when creating {:?}", m.source)))?;
            let name = created["metadata"]["name"]
                .as_str()
                .unwrap_or(name)
                .to_string();
            Ok((qualified, name, "created"))
        }
        Mode::Apply => {
            if name.is_empty() {
                anyhow::bail!(
                    "error when retrieving current configuration of {:?}: resource name may not be empty",
                    m.source
                );
            }
            let path = resource.object_path(&namespace, name);
            let before = match ctx.client.get(&path, &[]).await {
                Ok(v) => rv(&v),
                Err(e) if e.is_not_found() => None,
                Err(e) => return Err(e.into()),
            };
            let (code, after) = ctx
                .client
                .send(
                    Method::PATCH,
                    &path,
                    &[
                        ("fieldManager", FIELD_MANAGER.into()),
                        ("force", "true".into()),
                        ("fieldValidation", "Strict".into()),
                    ],
                    None,
                    Some(Body::json("application/apply-patch+yaml", &m.object)),
                )
                .await
                .map_err(|e| {
                    e.with_context(format!("error when applying patch to {:?}", m.source))
                })?;
            let verb = if code == StatusCode::CREATED || before.is_none() {
                "created"
            } else if rv(&after) == before {
                "unchanged"
            } else {
                "configured"
            };
            Ok((qualified, name.to_string(), verb))
        }
    }
}

fn rv(v: &Value) -> Option<String> {
    v["metadata"]["resourceVersion"]
        .as_str()
        .map(str::to_string)
}
