//! `rkubectl get`: tables printed by the server (`-o wide`, `-A`, `--show-labels`),
//! `-o yaml|json|name|jsonpath=…`, selectors, several kinds at once, names, and `-w`.

use std::io::Write as _;

use anyhow::Context as _;
use clap::Args;
use reqwest::Method;
use serde_json::Value;

use super::client::TABLE_ACCEPT;
use super::discovery::{self, ApiResource};
use super::printer::{self, Output, TableOptions};
use super::Ctx;

/// Arguments of `get`.
#[derive(Debug, Args)]
pub struct GetArgs {
    /// `TYPE[,TYPE…] [NAME…]` or `TYPE/NAME…`.
    #[arg(required = true)]
    pub args: Vec<String>,
    /// Output format: wide, yaml, json, name or jsonpath=TEMPLATE.
    #[arg(short = 'o', long = "output")]
    pub output: Option<Output>,
    /// Label selector, e.g. `app=web,tier!=db`.
    #[arg(short = 'l', long)]
    pub selector: Option<String>,
    /// Field selector, e.g. `spec.nodeName=n1`.
    #[arg(long)]
    pub field_selector: Option<String>,
    /// List across all namespaces.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    /// Keep watching and print changes.
    #[arg(short = 'w', long)]
    pub watch: bool,
    /// Show labels as the last column.
    #[arg(long)]
    pub show_labels: bool,
    /// Omit the table header.
    #[arg(long)]
    pub no_headers: bool,
}

struct Request<'a> {
    resource: &'a ApiResource,
    names: Vec<String>,
}

/// Runs `get`.
///
/// # Errors
/// On unknown types and server errors (the first one ends the command, as kubectl).
pub async fn run(ctx: &Ctx, args: GetArgs) -> anyhow::Result<()> {
    let discovery = ctx.discovery().await?;
    let mut requests = Vec::new();
    for tn in discovery::parse_args(&args.args)? {
        requests.push(Request {
            resource: discovery.resolve(&tn.type_arg)?,
            names: tn.names,
        });
    }
    let output = args.output.clone().unwrap_or(Output::Table);
    let mut query: Vec<(&str, String)> = Vec::new();
    if let Some(l) = &args.selector {
        query.push(("labelSelector", l.clone()));
    }
    if let Some(f) = &args.field_selector {
        query.push(("fieldSelector", f.clone()));
    }
    let namespace = (!args.all_namespaces).then_some(ctx.client.namespace.as_str());
    let several = requests.len() > 1 || requests.iter().any(|r| r.names.len() > 1);

    if matches!(output, Output::Table | Output::Wide) {
        let mut printed_any = false;
        let mut last_table = None;
        for req in &requests {
            let opts = TableOptions {
                wide: output == Output::Wide,
                all_namespaces: args.all_namespaces && req.resource.namespaced,
                show_labels: args.show_labels,
                no_headers: args.no_headers,
                kind_prefix: (requests.len() > 1).then(|| req.resource.qualified_singular()),
            };
            let tables = if req.names.is_empty() {
                vec![table(ctx, &req.resource.collection_path(namespace), &query).await?]
            } else {
                let mut t = Vec::new();
                for name in &req.names {
                    let ns = namespace.unwrap_or(&ctx.client.namespace);
                    t.push(table(ctx, &req.resource.object_path(ns, name), &[]).await?);
                }
                t
            };
            let mut rows = Vec::new();
            let defs = tables
                .first()
                .and_then(|t| t["columnDefinitions"].as_array().cloned())
                .unwrap_or_default();
            for (i, t) in tables.iter().enumerate() {
                let opts = TableOptions {
                    no_headers: opts.no_headers || i > 0,
                    ..opts.clone()
                };
                rows.extend(printer::table_rows(t, &defs, &opts));
            }
            let has_rows = tables
                .iter()
                .any(|t| t["rows"].as_array().is_some_and(|r| !r.is_empty()));
            if has_rows {
                if printed_any {
                    println!();
                }
                print!("{}", printer::columns(&rows));
                printed_any = true;
            }
            last_table = tables.into_iter().last().map(|t| (t, defs, opts));
        }
        if !printed_any && !args.watch {
            match namespace {
                Some(ns) if requests.iter().any(|r| r.resource.namespaced) => {
                    eprintln!("No resources found in {ns} namespace.")
                }
                _ => eprintln!("No resources found"),
            }
        }
        if args.watch {
            let [req] = requests.as_slice() else {
                anyhow::bail!("you may only specify a single resource type with --watch");
            };
            let (t, defs, opts) = last_table.context("nothing to watch")?;
            let rv = t["metadata"]["resourceVersion"]
                .as_str()
                .or_else(|| t["rows"][0]["object"]["metadata"]["resourceVersion"].as_str())
                .unwrap_or("0")
                .to_string();
            watch(ctx, req, namespace, query, rv, &defs, &opts, &output).await?;
        }
        return Ok(());
    }

    let mut objects = Vec::new();
    let mut names = Vec::new();
    for req in &requests {
        let r = req.resource;
        let mut found = Vec::new();
        if req.names.is_empty() {
            let list = ctx
                .client
                .get(&r.collection_path(namespace), &query)
                .await?;
            found.extend(list["items"].as_array().cloned().unwrap_or_default());
        } else {
            let ns = namespace.unwrap_or(&ctx.client.namespace);
            for name in &req.names {
                found.push(ctx.client.get(&r.object_path(ns, name), &[]).await?);
            }
        }
        for mut o in found {
            o["apiVersion"] = r.api_version().into();
            o["kind"] = r.kind.clone().into();
            names.push(format!(
                "{}/{}",
                r.qualified_singular(),
                o["metadata"]["name"].as_str().unwrap_or_default()
            ));
            objects.push(o);
        }
    }
    let single = !several && requests.iter().all(|r| !r.names.is_empty());
    let data = printer::list_or_single(objects, single);
    print!("{}", printer::objects(&output, &data, &names)?);
    if args.watch {
        let [req] = requests.as_slice() else {
            anyhow::bail!("you may only specify a single resource type with --watch");
        };
        let rv = data["metadata"]["resourceVersion"]
            .as_str()
            .filter(|s| !s.is_empty())
            .unwrap_or("0")
            .to_string();
        watch(
            ctx,
            req,
            namespace,
            query,
            rv,
            &[],
            &TableOptions::default(),
            &output,
        )
        .await?;
    }
    Ok(())
}

async fn table(ctx: &Ctx, path: &str, query: &[(&str, String)]) -> anyhow::Result<Value> {
    Ok(ctx
        .client
        .send(Method::GET, path, query, Some(TABLE_ACCEPT), None)
        .await?
        .1)
}

/// Follows a watch and prints each event's row (tables) or object (other formats),
/// until the server closes the stream.
#[allow(clippy::too_many_arguments)]
async fn watch(
    ctx: &Ctx,
    req: &Request<'_>,
    namespace: Option<&str>,
    mut query: Vec<(&str, String)>,
    rv: String,
    defs: &[Value],
    opts: &TableOptions,
    output: &Output,
) -> anyhow::Result<()> {
    if let [name] = req.names.as_slice() {
        query.push(("fieldSelector", format!("metadata.name={name}")));
    } else if !req.names.is_empty() {
        anyhow::bail!("watch is only supported on individual resources and resource collections");
    }
    query.push(("resourceVersion", rv));
    query.push(("watch", "true".into()));
    let table_output = matches!(output, Output::Table | Output::Wide);
    let accept = table_output.then_some(TABLE_ACCEPT);
    let mut response = ctx
        .client
        .start(
            Method::GET,
            &req.resource.collection_path(namespace),
            &query,
            accept,
            None,
        )
        .await?;
    let mut defs = defs.to_vec();
    let opts = TableOptions {
        no_headers: true,
        ..opts.clone()
    };
    let mut buf: Vec<u8> = Vec::new();
    while let Some(chunk) = response.chunk().await.context("read watch stream")? {
        buf.extend_from_slice(&chunk);
        while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            let Ok(event) = serde_json::from_slice::<Value>(&line) else {
                continue;
            };
            let object = &event["object"];
            match event["type"].as_str() {
                Some("ERROR") => {
                    anyhow::bail!("{}", object["message"].as_str().unwrap_or("watch failed"))
                }
                Some("BOOKMARK") => continue,
                _ => {}
            }
            let text = if table_output && object["kind"] == "Table" {
                if let Some(d) = object["columnDefinitions"]
                    .as_array()
                    .filter(|d| !d.is_empty())
                {
                    if defs.is_empty() {
                        defs = d.clone();
                    }
                }
                printer::columns(&printer::table_rows(object, &defs, &opts))
            } else {
                let mut o = object.clone();
                o["apiVersion"] = req.resource.api_version().into();
                o["kind"] = req.resource.kind.clone().into();
                let name = format!(
                    "{}/{}",
                    req.resource.qualified_singular(),
                    o["metadata"]["name"].as_str().unwrap_or_default()
                );
                let out = if table_output { &Output::Name } else { output };
                let mut s = printer::objects(out, &o, &[name])?;
                if matches!(out, Output::Yaml) {
                    s.insert_str(0, "---\n");
                }
                s
            };
            let mut stdout = std::io::stdout().lock();
            stdout.write_all(text.as_bytes()).context("write output")?;
            stdout.flush().context("flush output")?;
        }
    }
    Ok(())
}
