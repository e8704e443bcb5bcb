//! `rkubectl set image`: changes container images in a pod template (or a pod) and
//! writes the object back with its resourceVersion, so a concurrent change conflicts.

use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::Value;

use super::client::Body;
use super::discovery;
use super::Ctx;

/// The `set` subcommands.
#[derive(Debug, Subcommand)]
pub enum SetVerb {
    /// Update the images of containers: `set image deploy/x web=nginx:1.27 [c2=img…]`
    /// (`*=img` sets every container).
    Image(ImageArgs),
}

/// Arguments of `set image`.
#[derive(Debug, Args)]
pub struct ImageArgs {
    /// `TYPE NAME` or `TYPE/NAME`, then `CONTAINER=IMAGE` pairs.
    #[arg(required = true)]
    pub args: Vec<String>,
}

/// Runs a `set` subcommand.
///
/// # Errors
/// On bad arguments, unknown containers and server errors.
pub async fn run(ctx: &Ctx, verb: SetVerb) -> anyhow::Result<()> {
    let SetVerb::Image(args) = verb;
    let (images, targets): (Vec<String>, Vec<String>) =
        args.args.into_iter().partition(|a| a.contains('='));
    if images.is_empty() {
        anyhow::bail!("at least one image update is required");
    }
    let images: Vec<(String, String)> = images
        .iter()
        .filter_map(|a| {
            a.split_once('=')
                .map(|(c, i)| (c.to_string(), i.to_string()))
        })
        .collect();
    let discovery = ctx.discovery().await?;
    for tn in discovery::parse_args(&targets)? {
        let r = discovery.resolve(&tn.type_arg)?;
        for name in &tn.names {
            let path = r.object_path(&ctx.client.namespace, name);
            let mut obj = ctx.client.get(&path, &[]).await?;
            set_images(&mut obj, &r.kind, &images)?;
            ctx.client
                .send(
                    Method::PUT,
                    &path,
                    &[],
                    None,
                    Some(Body::json("application/json", &obj)),
                )
                .await?;
            println!("{}/{name} image updated", r.qualified_singular());
        }
    }
    Ok(())
}

/// The pod spec inside an object of `kind`.
fn pod_spec<'a>(obj: &'a mut Value, kind: &str) -> Option<&'a mut Value> {
    match kind {
        "Pod" => obj.get_mut("spec"),
        "CronJob" => obj.pointer_mut("/spec/jobTemplate/spec/template/spec"),
        _ => obj.pointer_mut("/spec/template/spec"),
    }
}

/// Sets `container=image` pairs (`*` meaning every container) in containers and
/// init containers.
fn set_images(obj: &mut Value, kind: &str, images: &[(String, String)]) -> anyhow::Result<()> {
    let Some(spec) = pod_spec(obj, kind) else {
        anyhow::bail!("a {kind} has no pod template");
    };
    for (container, image) in images {
        let mut found = false;
        for list in ["initContainers", "containers"] {
            for c in spec[list].as_array_mut().into_iter().flatten() {
                if container == "*" || c["name"].as_str() == Some(container) {
                    c["image"] = image.clone().into();
                    found = true;
                }
            }
        }
        if !found {
            anyhow::bail!("unable to find container named {container:?}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn images_change_in_the_pod_template() {
        let mut d = json!({"spec": {"template": {"spec": {"containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "y"}]}}}});
        set_images(&mut d, "Deployment", &[("b".into(), "z".into())]).expect("set");
        assert_eq!(d["spec"]["template"]["spec"]["containers"][1]["image"], "z");
        assert_eq!(d["spec"]["template"]["spec"]["containers"][0]["image"], "x");
        set_images(&mut d, "Deployment", &[("*".into(), "w".into())]).expect("set");
        assert_eq!(d["spec"]["template"]["spec"]["containers"][0]["image"], "w");
        assert!(set_images(&mut d, "Deployment", &[("c".into(), "z".into())]).is_err());
        let mut p = json!({"spec": {"containers": [{"name": "a", "image": "x"}]}});
        set_images(&mut p, "Pod", &[("a".into(), "q".into())]).expect("set");
        assert_eq!(p["spec"]["containers"][0]["image"], "q");
    }
}
