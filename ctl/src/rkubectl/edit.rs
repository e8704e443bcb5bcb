//! `rkubectl edit`: the object as YAML in `$KUBE_EDITOR`/`$EDITOR` (default `vi`),
//! then written back with PUT (its resourceVersion makes a concurrent change a
//! Conflict instead of a lost update).

use std::process::Command;

use anyhow::Context as _;
use clap::Args;
use reqwest::Method;
use serde_json::Value;

use super::client::Body;
use super::discovery;
use super::Ctx;

/// Arguments of `edit`.
#[derive(Debug, Args)]
pub struct EditArgs {
    /// `TYPE NAME` or `TYPE/NAME`.
    #[arg(required = true, num_args = 1..=2)]
    pub args: Vec<String>,
}

const HEADER: &str = "# Please edit the object below. Lines beginning with a '#' will be ignored,\n# and an empty file will abort the edit.\n#\n";

/// Runs `edit`.
///
/// # Errors
/// When the editor fails, the YAML is invalid, or the server refuses the update.
pub async fn run(ctx: &Ctx, args: EditArgs) -> anyhow::Result<()> {
    let discovery = ctx.discovery().await?;
    let [tn] = discovery::parse_args(&args.args)?
        .try_into()
        .map_err(|_| anyhow::anyhow!("edit takes exactly one resource"))?;
    let r = discovery.resolve(&tn.type_arg)?;
    let [name] = tn.names.as_slice() else {
        anyhow::bail!("edit takes exactly one name");
    };
    let path = r.object_path(&ctx.client.namespace, name);
    let mut original = ctx.client.get(&path, &[]).await?;
    original["apiVersion"] = r.api_version().into();
    original["kind"] = r.kind.clone().into();
    let text = format!(
        "{HEADER}{}",
        serde_yaml::to_string(&original).context("serialize object")?
    );
    let dir = std::env::temp_dir();
    let file = dir.join(format!("rkubectl-edit-{}-{name}.yaml", std::process::id()));
    std::fs::write(&file, &text).with_context(|| format!("write {}", file.display()))?;
    let editor = std::env::var("KUBE_EDITOR")
        .or_else(|_| std::env::var("EDITOR"))
        .unwrap_or_else(|_| "vi".into());
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!("{editor} \"$1\""))
        .arg("sh")
        .arg(&file)
        .status()
        .with_context(|| format!("run editor {editor:?}"))?;
    let edited = std::fs::read_to_string(&file).with_context(|| format!("read {}", file.display()));
    if !status.success() {
        anyhow::bail!(
            "editor {editor:?} failed ({status}); your changes are in {}",
            file.display()
        );
    }
    let edited = edited?;
    let body: String = edited
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect();
    if body.trim().is_empty() {
        let _ = std::fs::remove_file(&file);
        println!("Edit cancelled, no changes made.");
        return Ok(());
    }
    let updated: Value = serde_yaml::from_str(&body)
        .with_context(|| format!("parse edited YAML (kept in {})", file.display()))?;
    if updated == original {
        let _ = std::fs::remove_file(&file);
        println!("Edit cancelled, no changes made.");
        return Ok(());
    }
    match ctx
        .client
        .send(
            Method::PUT,
            &path,
            &[("fieldValidation", "Strict".into())],
            None,
            Some(Body::json("application/json", &updated)),
        )
        .await
    {
        Ok(_) => {
            let _ = std::fs::remove_file(&file);
            println!("{}/{name} edited", r.qualified_singular());
            Ok(())
        }
        Err(e) => {
            eprintln!(
                "A copy of your changes has been stored to {:?}",
                file.display().to_string()
            );
            Err(e.into())
        }
    }
}
