//! `rkubectl apply -f` (kubectl's client-side apply: create with the last-applied
//! annotation, else a three-way strategic merge patch; printing
//! `created|configured|unchanged`) and `rkubectl create -f`.
//!
//! An update reads the live object, takes the configuration the previous apply stored
//! on it ([`last_applied`]) and sends the patch [`three_way`] computes from it, the
//! manifest and the live object, so fields and list entries deleted from the manifest
//! are deleted from the object while fields others set are kept. The annotation has the
//! format kubectl writes, so `kubectl apply` and `rkubectl apply` take turns freely.

mod last_applied;
mod three_way;

use clap::Args;
use reqwest::Method;
use serde_json::Value;

use super::client::{self, Body};
use super::discovery::ApiResource;
use super::manifest::{self, Manifest};
use super::{error_text, Ctx, Reported};

/// The field manager rkubectl applies as (kubectl's is `kubectl-client-side-apply`).
pub const FIELD_MANAGER: &str = "rkubectl-client-side-apply";

/// How often an update is tried when the object changes between read and patch.
const MAX_ATTEMPTS: u32 = 5;

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
            let namespace = resource.namespaced.then_some(namespace.as_str());
            let modified = last_applied::modified(&m.object, namespace)
                .map_err(|e| anyhow::anyhow!("error when applying {:?}: {e}", m.source))?;
            let verb = apply(ctx, resource, namespace, name, m, &modified).await?;
            Ok((qualified, name.to_string(), verb))
        }
    }
}

/// Creates the object, or patches it to the manifest, retrying when the object
/// changed between read and patch. Returns the verb to print.
async fn apply(
    ctx: &Ctx,
    resource: &ApiResource,
    namespace: Option<&str>,
    name: &str,
    m: &Manifest,
    modified: &Value,
) -> anyhow::Result<&'static str> {
    let path = resource.object_path(namespace.unwrap_or_default(), name);
    let mut attempt = 1;
    loop {
        let live = match ctx.client.get(&path, &[]).await {
            Ok(live) => live,
            Err(e) if e.is_not_found() => {
                ctx.client
                    .send(
                        Method::POST,
                        &resource.collection_path(namespace),
                        &query(),
                        None,
                        Some(Body::json("application/json", modified)),
                    )
                    .await
                    .map_err(|e| e.with_context(format!("error when creating {:?}", m.source)))?;
                return Ok("created");
            }
            Err(e) => return Err(e.into()),
        };
        match update(ctx, resource, &path, m, modified, &live).await {
            Err(e) if attempt < MAX_ATTEMPTS && is_conflict(&e) => {
                tracing::debug!(%path, attempt, "object changed while applying, retrying");
                attempt += 1;
            }
            result => return result,
        }
    }
}

/// Patches `live` to `modified`, or leaves it when the patch is empty.
async fn update(
    ctx: &Ctx,
    resource: &ApiResource,
    path: &str,
    m: &Manifest,
    modified: &Value,
    live: &Value,
) -> anyhow::Result<&'static str> {
    let original = match last_applied::original(live) {
        Ok(Some(original)) => original,
        Ok(None) => {
            eprintln!(
                "Warning: {}/{} has no {} annotation, so fields deleted from the manifest \
                 cannot be told apart from fields set by others and are kept; this apply adds \
                 the annotation.",
                resource.qualified_plural(),
                live["metadata"]["name"].as_str().unwrap_or_default(),
                last_applied::ANNOTATION
            );
            Value::Object(Default::default())
        }
        Err(e) => anyhow::bail!("error when applying {:?}: {e}", m.source),
    };
    let patch = three_way::patch(&resource.kind, &original, modified, live)
        .map_err(|e| anyhow::anyhow!("error when computing the patch for {:?}: {e}", m.source))?;
    if patch.is_empty() {
        return Ok("unchanged");
    }
    ctx.client
        .send(
            Method::PATCH,
            path,
            &query(),
            None,
            Some(Body::json(
                "application/strategic-merge-patch+json",
                &Value::Object(patch),
            )),
        )
        .await
        .map_err(|e| e.with_context(format!("error when applying patch to {:?}", m.source)))?;
    Ok("configured")
}

fn query() -> [(&'static str, String); 2] {
    [
        ("fieldManager", FIELD_MANAGER.into()),
        ("fieldValidation", "Strict".into()),
    ]
}

/// Whether the server answered 409 Conflict.
fn is_conflict(e: &anyhow::Error) -> bool {
    e.downcast_ref::<client::Error>()
        .and_then(client::Error::status)
        .is_some_and(|s| s.code == 409)
}
