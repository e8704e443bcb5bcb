//! `rkubectl image build|push|ls`: images of your own, built from a Dockerfile into the
//! local store and pushed to an OCI registry (see [`crate::image`]).

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Subcommand};

use crate::image::{self, BuildOptions, PushOptions, Store};

/// Where the local image store lives (shared by every `image` subcommand).
#[derive(Debug, Args)]
pub struct StoreArgs {
    /// The local image store (an OCI image layout directory); default
    /// `$XDG_DATA_HOME/rkube/images` or `~/.local/share/rkube/images`.
    #[arg(long, env = "RKUBE_IMAGE_STORE", global = true)]
    pub image_store: Option<PathBuf>,
}

/// `rkubectl image …`.
#[derive(Debug, Subcommand)]
pub enum ImageVerb {
    /// Build an image from a Dockerfile.
    Build(BuildArgs),
    /// Push a built image to its registry.
    Push(PushArgs),
    /// List the images in the local store.
    Ls(LsArgs),
}

/// Arguments of `image build`.
#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Name (and tag) of the image, e.g. `127.0.0.1:5000/hello:1.0.0`; repeatable.
    #[arg(short = 't', long = "tag", required = true)]
    pub tags: Vec<String>,
    /// The Dockerfile (default `DIR/Dockerfile`).
    #[arg(short = 'f', long = "file")]
    pub file: Option<PathBuf>,
    /// A build-time variable, `KEY=VALUE`; repeatable.
    #[arg(long = "build-arg")]
    pub build_args: Vec<String>,
    /// Use plain HTTP for the registry of a `FROM <image>` base.
    #[arg(long)]
    pub insecure: bool,
    /// A registry (`host:port`) reached over plain HTTP; repeatable (loopback
    /// registries always are).
    #[arg(
        long = "insecure-registry",
        env = "RKUBE_INSECURE_REGISTRIES",
        value_delimiter = ','
    )]
    pub insecure_registries: Vec<String>,
    /// The build context directory.
    pub dir: PathBuf,
    #[command(flatten)]
    pub store: StoreArgs,
}

/// Arguments of `image push`.
#[derive(Debug, Args)]
pub struct PushArgs {
    /// The image to push, as it was tagged by `image build`.
    pub reference: String,
    /// Use plain HTTP for the registry.
    #[arg(long)]
    pub insecure: bool,
    /// A registry (`host:port`) reached over plain HTTP; repeatable (loopback
    /// registries always are).
    #[arg(
        long = "insecure-registry",
        env = "RKUBE_INSECURE_REGISTRIES",
        value_delimiter = ','
    )]
    pub insecure_registries: Vec<String>,
    #[command(flatten)]
    pub store: StoreArgs,
}

/// Arguments of `image ls`.
#[derive(Debug, Args)]
pub struct LsArgs {
    #[command(flatten)]
    pub store: StoreArgs,
}

fn open_store(args: &StoreArgs) -> anyhow::Result<Store> {
    let root = args
        .image_store
        .clone()
        .unwrap_or_else(image::store::default_root);
    Store::open(&root).with_context(|| format!("open image store {}", root.display()))
}

/// Runs `image build|push|ls`.
///
/// # Errors
/// A failed build (naming the Dockerfile line), an unknown image or a registry error.
pub async fn run(verb: ImageVerb) -> anyhow::Result<()> {
    match verb {
        ImageVerb::Build(args) => {
            let store = open_store(&args.store)?;
            let mut build_args = BTreeMap::new();
            for pair in &args.build_args {
                let (key, value) = pair
                    .split_once('=')
                    .with_context(|| format!("--build-arg {pair:?}: expected KEY=VALUE"))?;
                build_args.insert(key.to_string(), value.to_string());
            }
            let started = std::time::Instant::now();
            let output = image::build(
                &store,
                BuildOptions {
                    context: args.dir.clone(),
                    dockerfile: args.file.clone(),
                    tags: args.tags.clone(),
                    build_args,
                    registry: PushOptions {
                        insecure: args.insecure,
                        insecure_registries: args.insecure_registries.clone(),
                    },
                },
            )
            .await
            .with_context(|| format!("build {}", args.dir.display()))?;
            println!(
                "built {} ({} layers, {} of {} layer steps cached) in {:.2}s",
                output.manifest.digest,
                output.layers.len(),
                output.cached_steps,
                output.layer_steps,
                started.elapsed().as_secs_f64()
            );
            for tag in &output.tags {
                println!("tagged {tag}");
            }
            Ok(())
        }
        ImageVerb::Push(args) => {
            let store = open_store(&args.store)?;
            let report = image::push(
                &store,
                &args.reference,
                &PushOptions {
                    insecure: args.insecure,
                    insecure_registries: args.insecure_registries.clone(),
                },
            )
            .await
            .with_context(|| format!("push {}", args.reference))?;
            println!(
                "pushed {}@{} ({} blobs uploaded, {} already present)",
                args.reference, report.digest, report.pushed_blobs, report.skipped_blobs
            );
            Ok(())
        }
        ImageVerb::Ls(args) => {
            let store = open_store(&args.store)?;
            println!("{:<50} {:<20} {:>10}", "IMAGE", "DIGEST", "SIZE");
            for tagged in store.list().context("list images")? {
                let (manifest, _) = image::build::read_image(&store, &tagged.manifest)
                    .with_context(|| format!("read {}", tagged.reference))?;
                let size: u64 =
                    manifest.layers.iter().map(|l| l.size).sum::<u64>() + manifest.config.size;
                let digest = tagged.manifest.digest.trim_start_matches("sha256:");
                println!(
                    "{:<50} {:<20} {:>10}",
                    tagged.reference,
                    digest.get(..12).unwrap_or(digest),
                    human_size(size)
                );
            }
            Ok(())
        }
    }
}

fn human_size(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 20 => format!("{:.1}MiB", b as f64 / f64::from(1 << 20)),
        b if b >= 1 << 10 => format!("{:.1}KiB", b as f64 / f64::from(1 << 10)),
        b => format!("{b}B"),
    }
}
