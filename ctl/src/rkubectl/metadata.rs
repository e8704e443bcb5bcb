//! `rkubectl label` and `rkubectl annotate`: `key=value` sets, `key-` removes, and an
//! existing different value needs `--overwrite`. Written as a JSON merge patch.

use clap::Args;
use reqwest::Method;
use serde_json::{json, Map, Value};

use super::client::Body;
use super::discovery;
use super::Ctx;

/// Arguments of `label` and `annotate`.
#[derive(Debug, Args)]
pub struct MetadataArgs {
    /// `TYPE NAME` or `TYPE/NAME`, then `KEY=VALUE` or `KEY-` changes.
    #[arg(required = true)]
    pub args: Vec<String>,
    /// Allow changing a key that already has a different value.
    #[arg(long)]
    pub overwrite: bool,
}

/// Which metadata map a command changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Labels,
    Annotations,
}

impl Field {
    fn key(self) -> &'static str {
        match self {
            Field::Labels => "labels",
            Field::Annotations => "annotations",
        }
    }

    fn past(self) -> &'static str {
        match self {
            Field::Labels => "labeled",
            Field::Annotations => "annotated",
        }
    }
}

/// A parsed change: `Some(value)` sets, `None` removes.
type Change = (String, Option<String>);

/// Splits arguments into resource arguments and changes.
fn split(args: Vec<String>) -> (Vec<String>, Vec<Change>) {
    let mut resources = Vec::new();
    let mut changes = Vec::new();
    for a in args {
        if let Some((k, v)) = a.split_once('=') {
            changes.push((k.to_string(), Some(v.to_string())));
        } else if let Some(k) = a.strip_suffix('-').filter(|_| !resources.is_empty()) {
            changes.push((k.to_string(), None));
        } else {
            resources.push(a);
        }
    }
    (resources, changes)
}

/// The merge patch for `changes` against the current map, or an error when a key
/// would change without `overwrite`.
fn patch(
    field: Field,
    current: &Value,
    changes: &[Change],
    overwrite: bool,
) -> anyhow::Result<Value> {
    let mut map = Map::new();
    for (k, v) in changes {
        if let (Some(v), Some(old)) = (v, current[k].as_str()) {
            if old != v && !overwrite {
                anyhow::bail!("'{k}' already has a value ({old}), and --overwrite is false");
            }
        }
        map.insert(k.clone(), v.clone().map_or(Value::Null, Value::String));
    }
    Ok(json!({"metadata": {field.key(): map}}))
}

/// Runs `label` or `annotate`.
///
/// # Errors
/// On bad arguments, refused overwrites and server errors.
pub async fn run(ctx: &Ctx, args: MetadataArgs, field: Field) -> anyhow::Result<()> {
    let (resources, changes) = split(args.args);
    if changes.is_empty() {
        anyhow::bail!(
            "at least one {} update is required",
            &field.key()[..field.key().len() - 1]
        );
    }
    let discovery = ctx.discovery().await?;
    for tn in discovery::parse_args(&resources)? {
        let r = discovery.resolve(&tn.type_arg)?;
        if tn.names.is_empty() {
            anyhow::bail!("resource(s) were provided, but no name was specified");
        }
        for name in &tn.names {
            let path = r.object_path(&ctx.client.namespace, name);
            let current = ctx.client.get(&path, &[]).await?;
            let body = patch(
                field,
                &current["metadata"][field.key()],
                &changes,
                args.overwrite,
            )?;
            ctx.client
                .send(
                    Method::PATCH,
                    &path,
                    &[],
                    None,
                    Some(Body::json("application/merge-patch+json", &body)),
                )
                .await?;
            println!("{}/{name} {}", r.qualified_singular(), field.past());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_and_overwrite() {
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let (res, ch) = split(s(&["deploy", "x", "a=1", "b-"]));
        assert_eq!(res, s(&["deploy", "x"]));
        assert_eq!(ch, vec![("a".into(), Some("1".into())), ("b".into(), None)]);
        let current = json!({"a": "0", "b": "2"});
        assert!(patch(Field::Labels, &current, &ch, false).is_err());
        assert_eq!(
            patch(Field::Labels, &current, &ch, true).expect("patch"),
            json!({"metadata": {"labels": {"a": "1", "b": null}}})
        );
        let same = vec![("a".to_string(), Some("0".to_string()))];
        assert!(patch(Field::Annotations, &current, &same, false).is_ok());
    }
}
