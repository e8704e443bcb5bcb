//! `rkubectl version`, `cluster-info` and `api-resources`.

use clap::Args;

use super::{printer, Ctx};

/// Arguments of `api-resources`.
#[derive(Debug, Args)]
pub struct ApiResourcesArgs {
    /// Only namespaced (true) or cluster-scoped (false) resources.
    #[arg(long)]
    pub namespaced: Option<bool>,
    /// Only resources of this API group (`""` for core).
    #[arg(long)]
    pub api_group: Option<String>,
    /// `name` prints only `plural.group`.
    #[arg(short = 'o', long)]
    pub output: Option<String>,
}

/// `version`: the client's and the server's `/version`.
///
/// # Errors
/// When `/version` cannot be read.
pub async fn version(ctx: &Ctx) -> anyhow::Result<()> {
    println!("Client Version: v{}", env!("CARGO_PKG_VERSION"));
    let v = ctx.client.get("/version", &[]).await?;
    println!(
        "Server Version: {}",
        v["gitVersion"].as_str().unwrap_or("unknown")
    );
    Ok(())
}

/// `cluster-info`: where the control plane is.
///
/// # Errors
/// Never; kept fallible like the other verbs.
pub fn cluster_info(ctx: &Ctx) -> anyhow::Result<()> {
    println!(
        "Kubernetes control plane is running at {}",
        ctx.client.server()
    );
    Ok(())
}

/// `api-resources`: every served resource, sorted by group then name.
///
/// # Errors
/// When discovery fails.
pub async fn api_resources(ctx: &Ctx, args: ApiResourcesArgs) -> anyhow::Result<()> {
    let mut resources: Vec<_> = ctx
        .discovery()
        .await?
        .resources
        .iter()
        .filter(|r| args.namespaced.is_none_or(|n| n == r.namespaced))
        .filter(|r| args.api_group.as_ref().is_none_or(|g| *g == r.group))
        .collect();
    resources.sort_by(|a, b| (&a.group, &a.plural).cmp(&(&b.group, &b.plural)));
    resources.dedup_by(|a, b| a.group == b.group && a.plural == b.plural);
    if args.output.as_deref() == Some("name") {
        for r in resources {
            println!("{}", r.qualified_plural());
        }
        return Ok(());
    }
    let mut rows = vec![["NAME", "SHORTNAMES", "APIVERSION", "NAMESPACED", "KIND"]
        .map(String::from)
        .to_vec()];
    for r in resources {
        rows.push(vec![
            r.plural.clone(),
            r.short_names.join(","),
            r.api_version(),
            r.namespaced.to_string(),
            r.kind.clone(),
        ]);
    }
    print!("{}", printer::columns(&rows));
    Ok(())
}
