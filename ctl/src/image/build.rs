//! The builder: runs a Dockerfile's steps into layers and an OCI image in the
//! [`Store`], reusing a step's layer from the build cache when its parent chain,
//! instruction and input content are unchanged.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use tracing::{debug, info};

use super::dockerfile::{self, Instruction, Step};
use super::layer::{self, LayerBuilder, Owner};
use super::push::PushOptions;
use super::store::{self, Descriptor, Layer, Manifest, Store};
use super::{pull, run};

/// What building can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Parse(#[from] dockerfile::Error),
    #[error("Dockerfile line {line}: {message}")]
    Step { line: usize, message: String },
    #[error("Dockerfile line {line}: {source}")]
    Layer {
        line: usize,
        #[source]
        source: layer::Error,
    },
    #[error("Dockerfile line {line}: RUN failed")]
    Run {
        line: usize,
        #[source]
        source: run::Error,
    },
    #[error("Dockerfile line {line}: cannot fetch the base image {image}")]
    Base {
        line: usize,
        image: String,
        #[source]
        source: Box<pull::Error>,
    },
    #[error("image store")]
    Store(#[from] store::Error),
    #[error("invalid image reference {0:?}")]
    Reference(String),
    #[error("the build was interrupted")]
    Join(#[source] tokio::task::JoinError),
}

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What to build.
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// The build context directory.
    pub context: PathBuf,
    /// The Dockerfile (default `<context>/Dockerfile`).
    pub dockerfile: Option<PathBuf>,
    /// Names to give the image (normalised with [`super::normalize`]).
    pub tags: Vec<String>,
    /// `--build-arg` values.
    pub build_args: BTreeMap<String, String>,
    /// How to reach the registry of a `FROM <image>` base.
    pub registry: PushOptions,
}

/// What a build made.
#[derive(Debug, Clone)]
pub struct BuildOutput {
    pub manifest: Descriptor,
    pub config: Descriptor,
    pub layers: Vec<Layer>,
    /// Steps that made a layer, and of those the ones taken from the cache.
    pub layer_steps: usize,
    pub cached_steps: usize,
    pub tags: Vec<String>,
}

/// Builds the image described by `options` into `store`.
///
/// # Errors
/// An unreadable or invalid Dockerfile, a missing source, an unsupported instruction
/// (each naming the line), or a store failure.
pub async fn build(store: &Store, options: BuildOptions) -> Result<BuildOutput> {
    let store = store.clone();
    let handle = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        // The steps run on this blocking thread; a base image is fetched on the runtime.
        let pull_base = |image: &str| handle.block_on(pull::pull(&store, image, &options.registry));
        build_blocking(&store, &options, &pull_base)
    })
    .await
    .map_err(Error::Join)?
}

/// Fetches a `FROM <image>` base (see [`pull::pull`]).
pub type PullBase<'a> = dyn Fn(&str) -> Result<pull::Base, pull::Error> + 'a;

/// Mutable image state while the steps run.
#[derive(Debug, Default)]
struct State {
    layers: Vec<Layer>,
    env: Vec<(String, String)>,
    args: BTreeMap<String, String>,
    labels: BTreeMap<String, String>,
    exposed: BTreeMap<String, Value>,
    entrypoint: Option<Vec<String>>,
    cmd: Option<Vec<String>>,
    workdir: String,
    user: String,
    history: Vec<Value>,
}

impl State {
    /// The state a base image starts from: its layers, config and history.
    fn from_base(base: pull::Base) -> Self {
        let config = &base.config["config"];
        let strings = |value: &Value| -> Option<Vec<String>> {
            value.as_array().map(|items| {
                items
                    .iter()
                    .filter_map(|i| i.as_str().map(String::from))
                    .collect()
            })
        };
        let text = |value: &Value| value.as_str().unwrap_or_default().to_string();
        State {
            env: strings(&config["Env"])
                .unwrap_or_default()
                .iter()
                .filter_map(|pair| pair.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            labels: config["Labels"]
                .as_object()
                .map(|labels| labels.iter().map(|(k, v)| (k.clone(), text(v))).collect())
                .unwrap_or_default(),
            exposed: config["ExposedPorts"]
                .as_object()
                .map(|ports| ports.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                .unwrap_or_default(),
            entrypoint: strings(&config["Entrypoint"]),
            cmd: strings(&config["Cmd"]),
            workdir: text(&config["WorkingDir"]),
            user: text(&config["User"]),
            history: base.config["history"]
                .as_array()
                .cloned()
                .unwrap_or_default(),
            layers: base.layers,
            args: BTreeMap::new(),
        }
    }

    fn vars(&self) -> BTreeMap<String, String> {
        let mut vars = self.args.clone();
        vars.extend(self.env.iter().cloned());
        vars
    }

    /// The chain of layers so far, for cache keys.
    fn chain(&self) -> String {
        self.layers
            .iter()
            .map(|l| l.diff_id.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// The blocking body of [`build`].
///
/// # Errors
/// As [`build`].
pub fn build_blocking(
    store: &Store,
    options: &BuildOptions,
    pull_base: &PullBase<'_>,
) -> Result<BuildOutput> {
    let started = Instant::now();
    let dockerfile = options
        .dockerfile
        .clone()
        .unwrap_or_else(|| options.context.join("Dockerfile"));
    let source = std::fs::read_to_string(&dockerfile).map_err(|source| Error::Read {
        path: dockerfile.clone(),
        source,
    })?;
    let steps = dockerfile::parse(&source)?;
    let tags = options
        .tags
        .iter()
        .map(|t| super::normalize(t).ok_or_else(|| Error::Reference(t.clone())))
        .collect::<Result<Vec<_>>>()?;

    let mut state = State::default();
    let mut global_args: BTreeMap<String, String> = BTreeMap::new();
    let mut seen_from = false;
    let (mut layer_steps, mut cached_steps) = (0, 0);
    for step in &steps {
        let line = step.line;
        let fail = |message: String| Error::Step { line, message };
        if !seen_from {
            match &step.instruction {
                Instruction::Arg { name, default } => {
                    if let Some(value) = options.build_args.get(name).or(default.as_ref()) {
                        global_args.insert(name.clone(), value.clone());
                    }
                    continue;
                }
                Instruction::From { image } => {
                    let image = dockerfile::expand(image, &global_args).map_err(fail)?;
                    if image != "scratch" {
                        let base = pull_base(&image).map_err(|source| Error::Base {
                            line,
                            image: image.clone(),
                            source: Box::new(source),
                        })?;
                        state = State::from_base(base);
                    }
                    seen_from = true;
                    continue;
                }
                _ => return Err(fail("the first instruction must be FROM (or ARG)".into())),
            }
        }
        let vars = state.vars();
        let expand = |text: &str| dockerfile::expand(text, &vars).map_err(fail);
        match &step.instruction {
            Instruction::From { .. } => {
                return Err(fail(
                    "multi-stage builds (a second FROM) are not supported".into(),
                ))
            }
            Instruction::Arg { name, default } => {
                let value = options
                    .build_args
                    .get(name)
                    .or(default.as_ref())
                    .or(global_args.get(name))
                    .cloned()
                    .unwrap_or_default();
                state.args.insert(name.clone(), value);
            }
            Instruction::Env(pairs) => {
                for (key, value) in pairs {
                    let value = expand(value)?;
                    state.env.retain(|(k, _)| k != key);
                    state.env.push((key.clone(), value));
                }
                state.history.push(history(step, true));
            }
            Instruction::Label(pairs) => {
                for (key, value) in pairs {
                    state.labels.insert(expand(key)?, expand(value)?);
                }
                state.history.push(history(step, true));
            }
            Instruction::Workdir(dir) => {
                let dir = expand(dir)?;
                state.workdir = format!("/{}", layer::image_path(&state.workdir, &dir));
                state.history.push(history(step, true));
            }
            Instruction::User(user) => {
                state.user = expand(user)?;
                state.history.push(history(step, true));
            }
            Instruction::Expose(ports) => {
                for port in ports {
                    let port = expand(port)?;
                    let (number, proto) = port.split_once('/').unwrap_or((&port, "tcp"));
                    if number.parse::<u16>().is_err() || !matches!(proto, "tcp" | "udp" | "sctp") {
                        return Err(fail(format!("invalid port {port:?}")));
                    }
                    state.exposed.insert(format!("{number}/{proto}"), json!({}));
                }
                state.history.push(history(step, true));
            }
            Instruction::Entrypoint(command) => {
                state.entrypoint = Some(command.argv());
                // Docker resets an inherited CMD when ENTRYPOINT is set.
                state.cmd = None;
                state.history.push(history(step, true));
            }
            Instruction::Cmd(command) => {
                state.cmd = Some(command.argv());
                state.history.push(history(step, true));
            }
            Instruction::Copy {
                add,
                sources,
                dest,
                chown,
            } => {
                let sources = sources
                    .iter()
                    .map(|s| expand(s))
                    .collect::<Result<Vec<_>>>()?;
                if let Some(remote) = sources.iter().find(|s| s.contains("://")) {
                    return Err(fail(format!("remote sources ({remote}) are not supported")));
                }
                let sources = layer::expand_globs(&options.context, &sources)
                    .map_err(|source| Error::Layer { line, source })?;
                let raw_dest = expand(dest)?;
                let dest_path = layer::image_path(&state.workdir, &raw_dest);
                let dest_is_dir = raw_dest.ends_with('/') || sources.len() > 1;
                let owner = match chown {
                    Some(spec) => parse_owner(&expand(spec)?).map_err(fail)?,
                    None => Owner::default(),
                };
                let mut builder = LayerBuilder::default();
                builder
                    .add_sources(
                        &options.context,
                        &sources,
                        &dest_path,
                        dest_is_dir,
                        owner,
                        *add,
                    )
                    .map_err(|source| Error::Layer { line, source })?;
                let tar = builder
                    .into_tar()
                    .map_err(|source| Error::Layer { line, source })?;
                let text = format!(
                    "{} {:?} {raw_dest} {owner:?}",
                    if *add { "ADD" } else { "COPY" },
                    sources
                );
                layer_steps += 1;
                if commit_layer(store, &mut state, &text, &tar, line)? {
                    cached_steps += 1;
                }
                state.history.push(history(step, false));
            }
            Instruction::Run(command) => {
                // Build args are visible to RUN as environment variables, as in Docker.
                let mut env: Vec<(String, String)> = state
                    .args
                    .iter()
                    .filter(|(k, _)| !state.env.iter().any(|(e, _)| e == *k))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                env.extend(state.env.iter().cloned());
                let spec = run::RunSpec {
                    argv: command.argv(),
                    env: env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
                    workdir: state.workdir.clone(),
                    user: state.user.clone(),
                };
                let text = format!(
                    "RUN {:?} env={:?} workdir={} user={}",
                    spec.argv, spec.env, spec.workdir, spec.user
                );
                layer_steps += 1;
                if run_cached(store, &mut state, &text, &spec, line)? {
                    cached_steps += 1;
                }
                state.history.push(history(step, false));
            }
        }
    }
    if !seen_from {
        return Err(Error::Step {
            line: steps.last().map_or(1, |s| s.line),
            message: "the Dockerfile has no FROM".into(),
        });
    }

    let config = image_config(&state);
    let config_bytes = serde_json::to_vec(&config).expect("a JSON value serializes");
    let config_descriptor = store.put_blob(store::CONFIG_MEDIA_TYPE, &config_bytes)?;
    let manifest = Manifest {
        schema_version: 2,
        media_type: store::MANIFEST_MEDIA_TYPE.to_string(),
        config: config_descriptor.clone(),
        layers: state.layers.iter().map(|l| l.descriptor.clone()).collect(),
    };
    let manifest_bytes = serde_json::to_vec(&manifest).expect("a manifest serializes");
    let manifest_descriptor = store.put_blob(store::MANIFEST_MEDIA_TYPE, &manifest_bytes)?;
    for tag in &tags {
        store.tag(tag, &manifest_descriptor)?;
    }
    info!(
        manifest = %manifest_descriptor.digest,
        layers = state.layers.len(),
        cached = cached_steps,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "built image"
    );
    Ok(BuildOutput {
        manifest: manifest_descriptor,
        config: config_descriptor,
        layers: state.layers,
        layer_steps,
        cached_steps,
        tags,
    })
}

/// Adds the layer `tar` made by the step `text`; returns true when the build cache
/// already had it (keyed by the parent chain, the instruction and the content digest).
fn commit_layer(
    store: &Store,
    state: &mut State,
    text: &str,
    tar: &[u8],
    line: usize,
) -> Result<bool> {
    let key = cache_key(&state.chain(), text, &store::sha256(tar));
    if let Some(layer) = store.cached(&key) {
        debug!(line, layer = %layer.descriptor.digest, "build cache hit");
        state.layers.push(layer);
        return Ok(true);
    }
    let layer = store_layer(store, tar, line)?;
    store.cache(&key, &layer)?;
    state.layers.push(layer);
    Ok(false)
}

/// Runs a RUN step unless the build cache has its layer (keyed by the parent chain and
/// the command with its environment); returns true on a cache hit.
fn run_cached(
    store: &Store,
    state: &mut State,
    text: &str,
    spec: &run::RunSpec,
    line: usize,
) -> Result<bool> {
    let key = cache_key(&state.chain(), text, "");
    if let Some(layer) = store.cached(&key) {
        debug!(line, layer = %layer.descriptor.digest, "build cache hit");
        state.layers.push(layer);
        return Ok(true);
    }
    let tar =
        run::run_step(store, &state.layers, spec).map_err(|source| Error::Run { line, source })?;
    let layer = store_layer(store, &tar, line)?;
    store.cache(&key, &layer)?;
    state.layers.push(layer);
    Ok(false)
}

fn cache_key(chain: &str, text: &str, content: &str) -> String {
    let mut hasher = Sha256::new();
    for part in [chain, text, content] {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    format!("{:x}", hasher.finalize())
}

fn store_layer(store: &Store, tar: &[u8], line: usize) -> Result<Layer> {
    let gz = layer::gzip(tar).map_err(|source| Error::Layer { line, source })?;
    let descriptor = store.put_blob(store::LAYER_GZIP_MEDIA_TYPE, &gz)?;
    debug!(line, layer = %descriptor.digest, "built layer");
    Ok(Layer {
        descriptor,
        diff_id: store::sha256(tar),
    })
}

fn history(step: &Step, empty: bool) -> Value {
    let mut entry = json!({
        "created": "1970-01-01T00:00:00Z",
        "created_by": step.text,
    });
    if empty {
        entry["empty_layer"] = json!(true);
    }
    entry
}

/// `uid[:gid]`, numeric (names would need the image's /etc/passwd).
fn parse_owner(spec: &str) -> Result<Owner, String> {
    let (uid, gid) = spec.split_once(':').unwrap_or((spec, spec));
    match (uid.parse(), gid.parse()) {
        (Ok(uid), Ok(gid)) => Ok(Owner { uid, gid }),
        _ => Err(format!(
            "--chown={spec}: only numeric uid[:gid] is supported"
        )),
    }
}

fn image_config(state: &State) -> Value {
    let mut config = Map::new();
    if !state.user.is_empty() {
        config.insert("User".into(), json!(state.user));
    }
    if !state.exposed.is_empty() {
        config.insert("ExposedPorts".into(), json!(state.exposed));
    }
    if !state.env.is_empty() {
        let env: Vec<String> = state.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        config.insert("Env".into(), json!(env));
    }
    if let Some(entrypoint) = &state.entrypoint {
        config.insert("Entrypoint".into(), json!(entrypoint));
    }
    if let Some(cmd) = &state.cmd {
        config.insert("Cmd".into(), json!(cmd));
    }
    if !state.workdir.is_empty() {
        config.insert("WorkingDir".into(), json!(state.workdir));
    }
    if !state.labels.is_empty() {
        config.insert("Labels".into(), json!(state.labels));
    }
    let diff_ids: Vec<&str> = state.layers.iter().map(|l| l.diff_id.as_str()).collect();
    json!({
        "created": "1970-01-01T00:00:00Z",
        "architecture": super::architecture(),
        "os": "linux",
        "config": config,
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
        "history": state.history,
    })
}

/// Reads the config of a stored image (for tests and `image ls`).
///
/// # Errors
/// When the manifest or config blob is missing or invalid.
pub fn read_image(store: &Store, manifest: &Descriptor) -> Result<(Manifest, Value)> {
    let manifest: Manifest = store.read_json(&manifest.digest)?;
    let config: Value = store.read_json(&manifest.config.digest)?;
    Ok((manifest, config))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context(dockerfile: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("Dockerfile"), dockerfile).expect("write");
        std::fs::write(dir.path().join("page.html"), "<h1>hi</h1>\n").expect("write");
        dir
    }

    fn no_pull(image: &str) -> Result<pull::Base, pull::Error> {
        Err(pull::Error::Reference(image.to_string()))
    }

    fn options(dir: &std::path::Path, args: &[(&str, &str)]) -> BuildOptions {
        BuildOptions {
            context: dir.to_path_buf(),
            dockerfile: None,
            tags: vec!["127.0.0.1:5000/t/x:1".into()],
            build_args: args
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn metadata_and_cache() {
        let dir = context(
            "ARG V=1\nFROM scratch\nARG V\nENV PATH=/bin GREETING=v$V\nWORKDIR /www\nCOPY page.html ./\nLABEL version=$V\nEXPOSE 80\nUSER 1000\nENTRYPOINT [\"/bin/httpd\"]\nCMD -f\n",
        );
        let store_dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(store_dir.path()).expect("store");
        let first =
            build_blocking(&store, &options(dir.path(), &[("V", "2")]), &no_pull).expect("build");
        assert_eq!((first.layer_steps, first.cached_steps), (1, 0));
        let (manifest, config) = read_image(&store, &first.manifest).expect("read");
        assert_eq!(manifest.layers.len(), 1);
        let c = &config["config"];
        assert_eq!(c["Env"], json!(["PATH=/bin", "GREETING=v2"]));
        assert_eq!(c["WorkingDir"], json!("/www"));
        assert_eq!(c["Labels"], json!({"version": "2"}));
        assert_eq!(c["ExposedPorts"], json!({"80/tcp": {}}));
        assert_eq!(c["User"], json!("1000"));
        assert_eq!(c["Entrypoint"], json!(["/bin/httpd"]));
        assert_eq!(c["Cmd"], json!(["/bin/sh", "-c", "-f"]));
        assert_eq!(
            config["rootfs"]["diff_ids"][0],
            json!(first.layers[0].diff_id)
        );
        let second =
            build_blocking(&store, &options(dir.path(), &[("V", "2")]), &no_pull).expect("build");
        assert_eq!((second.layer_steps, second.cached_steps), (1, 1));
        assert_eq!(second.manifest.digest, first.manifest.digest);
        assert_eq!(
            store.resolve("127.0.0.1:5000/t/x:1").expect("tag").digest,
            first.manifest.digest
        );
    }

    #[test]
    fn errors_name_the_line() {
        let cases = [
            (
                "FROM scratch\nCOPY missing.txt /x\n",
                "line 2",
                "missing.txt",
            ),
            ("FROM scratch\nEXPOSE http\n", "line 2", "invalid port"),
            ("ENV A=1\n", "line 1", "must be FROM"),
            ("FROM scratch\nFROM scratch\n", "line 2", "multi-stage"),
            ("FROM base:1\n", "line 1", "base image base:1"),
            (
                "FROM scratch\nCOPY --chown=www page.html /\n",
                "line 2",
                "numeric",
            ),
        ];
        let store_dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(store_dir.path()).expect("store");
        for (source, line, message) in cases {
            let dir = context(source);
            let err =
                build_blocking(&store, &options(dir.path(), &[]), &no_pull).expect_err(source);
            let text = err.to_string();
            assert!(
                text.contains(line) && text.contains(message),
                "{source:?}: {text}"
            );
        }
    }
}
