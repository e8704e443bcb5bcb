//! `rkubectl`, the kubectl-style CLI. It speaks the apiserver's Kubernetes REST API
//! over HTTPS exactly as kubectl does (aggregated discovery, server-side Tables, watch,
//! PATCH types, Status errors), so columns, validation and errors come from the server.
//!
//! The verbs are an enum ([`Verb`]), one module per verb; [`client`], [`config`],
//! [`discovery`], [`manifest`], [`printer`] and [`jsonpath`] are what they share.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tokio::sync::OnceCell;

pub mod apply;
pub mod client;
pub mod config;
pub mod config_verb;
pub mod cordon;
pub mod delete;
pub mod describe;
pub mod discovery;
pub mod drain;
pub mod edit;
pub mod exec;
pub mod get;
pub mod image;
pub mod info;
pub mod jsonpath;
pub mod logs;
pub mod manifest;
pub mod metadata;
pub mod pods;
pub mod printer;
pub mod rollout;
pub mod scale;
pub mod set;

use client::Client;
use discovery::Discovery;

/// rkubectl controls an rkube cluster, the way kubectl controls Kubernetes.
#[derive(Debug, Parser)]
#[command(name = "rkubectl", version)]
pub struct Cli {
    /// Path to the kubeconfig file to use (else $KUBECONFIG, else ~/.kube/config).
    #[arg(long, global = true)]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use.
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// The namespace of the request.
    #[arg(short = 'n', long, global = true)]
    pub namespace: Option<String>,
    #[command(subcommand)]
    pub verb: Verb,
}

/// What rkubectl does.
#[derive(Debug, Subcommand)]
pub enum Verb {
    /// Display one or many resources.
    Get(get::GetArgs),
    /// Apply a configuration to resources from files or stdin (client-side apply).
    Apply(apply::FileArgs),
    /// Create resources from files or stdin.
    Create(apply::FileArgs),
    /// Delete resources by file, type and name, label selector or --all.
    Delete(delete::DeleteArgs),
    /// Set a new size for a deployment, replica set or stateful set.
    Scale(scale::ScaleArgs),
    /// Set specific features on objects.
    #[command(subcommand)]
    Set(set::SetVerb),
    /// Manage the rollout of a deployment.
    #[command(subcommand)]
    Rollout(rollout::RolloutVerb),
    /// Update the labels on a resource.
    Label(metadata::MetadataArgs),
    /// Update the annotations on a resource.
    Annotate(metadata::MetadataArgs),
    /// Print the logs of a container.
    Logs(logs::LogsArgs),
    /// Run a command in a container.
    Exec(exec::ExecArgs),
    /// Show details of objects, with their events.
    Describe(describe::DescribeArgs),
    /// Edit an object in $KUBE_EDITOR or $EDITOR and write it back.
    Edit(edit::EditArgs),
    /// Cordon a node and evict its pods.
    Drain(drain::DrainArgs),
    /// Mark nodes as unschedulable.
    Cordon(cordon::CordonArgs),
    /// Mark nodes as schedulable.
    Uncordon(cordon::CordonArgs),
    /// Display the addresses of the control plane.
    ClusterInfo,
    /// Print the supported API resources on the server.
    ApiResources(info::ApiResourcesArgs),
    /// Print the client and server version information.
    Version,
    /// Modify kubeconfig files.
    #[command(subcommand)]
    Config(config_verb::ConfigVerb),
    /// Build images from Dockerfiles and push them to registries.
    #[command(subcommand)]
    Image(image::ImageVerb),
}

/// A failure that has already been printed (as kubectl does for each object of a
/// multi-object command); the process exits 1 without another message.
#[derive(Debug, thiserror::Error)]
#[error("one or more operations failed")]
pub struct Reported;

/// The command ran and exits with this code, having printed what it had to (as
/// `exec` does with the remote command's exit code).
#[derive(Debug, thiserror::Error)]
#[error("exit code {0}")]
pub struct Exit(pub i32);

/// What a verb runs with: the kubeconfig and its resolved context, an API client and
/// (fetched once, when needed) discovery.
pub struct Ctx {
    pub kubeconfig: config::Kubeconfig,
    pub resolved: config::Resolved,
    pub client: Client,
    discovery: OnceCell<Discovery>,
}

impl Ctx {
    /// Discovery, fetched on first use.
    ///
    /// # Errors
    /// When `/api` or `/apis` cannot be read.
    pub async fn discovery(&self) -> anyhow::Result<&Discovery> {
        Ok(self
            .discovery
            .get_or_try_init(|| Discovery::fetch(&self.client))
            .await?)
    }
}

/// Runs one command and returns the process exit code, printing errors like kubectl.
pub async fn run(cli: Cli) -> i32 {
    match run_verb(cli).await {
        Ok(()) => 0,
        Err(e) => {
            if let Some(Exit(code)) = e.downcast_ref::<Exit>() {
                return *code;
            }
            report(&e);
            1
        }
    }
}

fn report(e: &anyhow::Error) {
    if e.downcast_ref::<Reported>().is_some() {
        return;
    }
    eprintln!("{}", error_text(e));
}

/// How an error reads on stderr: a server Status as kubectl prints it, anything else
/// as `error: …`.
pub fn error_text(e: &anyhow::Error) -> String {
    for cause in e.chain() {
        if let Some(client::Error::Status(s)) = cause.downcast_ref::<client::Error>() {
            return s.to_string();
        }
    }
    format!("error: {e:#}")
}

async fn run_verb(cli: Cli) -> anyhow::Result<()> {
    if let Verb::Image(v) = cli.verb {
        return image::run(v).await;
    }
    let kubeconfig = config::Kubeconfig::load(config::paths(cli.kubeconfig.as_deref()))?;
    if let Verb::Config(v) = cli.verb {
        return config_verb::run(&kubeconfig, v);
    }
    let resolved = kubeconfig.resolve(cli.context.as_deref())?;
    let client = Client::new(&resolved, cli.namespace).context("create API client")?;
    let ctx = Ctx {
        kubeconfig,
        resolved,
        client,
        discovery: OnceCell::new(),
    };
    match cli.verb {
        Verb::Get(a) => get::run(&ctx, a).await,
        Verb::Apply(a) => apply::run(&ctx, a, apply::Mode::Apply).await,
        Verb::Create(a) => apply::run(&ctx, a, apply::Mode::Create).await,
        Verb::Delete(a) => delete::run(&ctx, a).await,
        Verb::Scale(a) => scale::run(&ctx, a).await,
        Verb::Set(v) => set::run(&ctx, v).await,
        Verb::Rollout(v) => rollout::run(&ctx, v).await,
        Verb::Label(a) => metadata::run(&ctx, a, metadata::Field::Labels).await,
        Verb::Annotate(a) => metadata::run(&ctx, a, metadata::Field::Annotations).await,
        Verb::Logs(a) => logs::run(&ctx, a).await,
        Verb::Exec(a) => exec::run(&ctx, a).await,
        Verb::Describe(a) => describe::run(&ctx, a).await,
        Verb::Edit(a) => edit::run(&ctx, a).await,
        Verb::Drain(a) => drain::run(&ctx, a).await,
        Verb::Cordon(a) => cordon::run(&ctx, a, true).await,
        Verb::Uncordon(a) => cordon::run(&ctx, a, false).await,
        Verb::ClusterInfo => info::cluster_info(&ctx),
        Verb::ApiResources(a) => info::api_resources(&ctx, a).await,
        Verb::Version => info::version(&ctx).await,
        Verb::Config(_) | Verb::Image(_) => unreachable!("handled above"),
    }
}
