//! RUN steps: the layers so far are unpacked once per digest (with the node agent's
//! unpacker, whiteouts included), overlaid with a fresh writable upper directory (the
//! node agent's [`Rootfs`]), the command runs inside as a container of the node agent's
//! runtime ([`LocalRuntime::run_oneshot`]: the `shim run` helper, a pod container's
//! namespaces, capabilities, masked paths and RuntimeDefault seccomp, a cgroup of its
//! own, the host's network) with its output printed as it runs, and the upper
//! directory's changes become the step's layer (overlay whiteouts and opaque
//! directories turned back into OCI whiteouts).
//!
//! The helper is this very binary re-executed as `<binary> shim run …`, so every binary
//! that builds images answers `shim` first (`rkubectl` does; see
//! [`rkube_nodeagent::shim::main_from_args`]).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use rkube_nodeagent::runtime::layer as unpacker;
use rkube_nodeagent::runtime::oneshot::{self, Oneshot};
use rkube_nodeagent::runtime::rootfs::Rootfs;
use rkube_nodeagent::runtime::{LocalRuntime, LocalRuntimeConfig};
use tracing::{debug, warn};

use super::layer::{self, LayerBuilder};
use super::store::{self, Layer, Store};

/// What running a step can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("RUN needs root (it mounts an overlay)")]
    NotRoot,
    #[error("RUN needs a layer with the command in it (COPY one in first)")]
    NoLayers,
    #[error("failed to unpack layer {digest}")]
    Unpack {
        digest: String,
        #[source]
        source: unpacker::Error,
    },
    #[error("failed to prepare the root filesystem")]
    Rootfs(#[source] rkube_nodeagent::runtime::rootfs::Error),
    #[error("cannot find this binary, which runs the container's helper")]
    ShimBinary(#[source] std::io::Error),
    #[error("failed to prepare the container runtime under {path}")]
    Runtime {
        path: PathBuf,
        #[source]
        source: rkube_nodeagent::runtime::Error,
    },
    #[error("failed to start a tokio runtime for the step")]
    Tokio(#[source] std::io::Error),
    #[error("failed to run {argv:?}")]
    Container {
        argv: Vec<String>,
        #[source]
        source: oneshot::Error,
    },
    #[error("the command {argv:?} failed with {status}")]
    Failed { argv: Vec<String>, status: String },
    #[error("user {0:?}: only numeric uid[:gid] is supported for RUN")]
    User(String),
    #[error("i/o error on {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] store::Error),
    #[error(transparent)]
    Layer(#[from] layer::Error),
}

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// How a RUN step runs its command.
#[derive(Debug, Clone)]
pub struct RunSpec {
    pub argv: Vec<String>,
    pub env: Vec<String>,
    pub workdir: String,
    pub user: String,
}

/// Unmounts and removes the step's overlay when dropped (also on failure).
struct Mounted {
    rootfs: Rootfs,
    dir: PathBuf,
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Err(err) = self.rootfs.remove() {
            warn!(error = %err, dir = %self.dir.display(), "failed to remove a RUN overlay");
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `spec` on top of `layers` and returns the tar of what it changed.
///
/// # Errors
/// Not root, no layers, an unpack or mount failure, or the command failing.
pub fn run_step(store: &Store, layers: &[Layer], spec: &RunSpec) -> Result<Vec<u8>> {
    if !nix::unistd::geteuid().is_root() {
        return Err(Error::NotRoot);
    }
    if layers.is_empty() {
        return Err(Error::NoLayers);
    }
    let mut dirs = Vec::with_capacity(layers.len());
    for layer in layers {
        dirs.push(unpacked(store, layer)?);
    }
    // Unique per process and step, so concurrent builds never share an overlay.
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir = store.root().join("tmp").join(format!(
        "run-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let mounted = Mounted {
        rootfs: Rootfs::under(&dir),
        dir: dir.clone(),
    };
    mounted.rootfs.mount(&dirs).map_err(Error::Rootfs)?;
    let workdir = if spec.workdir.is_empty() {
        "/".to_string()
    } else {
        spec.workdir.clone()
    };
    let inside = mounted.rootfs.merged.join(workdir.trim_start_matches('/'));
    std::fs::create_dir_all(&inside).map_err(io(&inside))?;

    let (uid, gid) = parse_user(&spec.user)?;
    let run = Oneshot {
        name: "build".into(),
        rootfs: mounted.rootfs.merged.clone(),
        args: spec.argv.clone(),
        env: spec.env.clone(),
        cwd: workdir,
        uid,
        gid,
    };
    debug!(argv = ?spec.argv, "running build step");
    let outcome = run_container(store, &run)?;
    if outcome.exit_code != 0 {
        return Err(Error::Failed {
            argv: spec.argv.clone(),
            status: if outcome.oom_killed {
                format!("exit code {} (killed: out of memory)", outcome.exit_code)
            } else {
                format!("exit code {}", outcome.exit_code)
            },
        });
    }
    let mut builder = LayerBuilder::default();
    diff(&mounted.rootfs.upper, "", &mut builder)?;
    // The tar reads the files from the upper directory: write it before unmounting.
    let tar = builder.into_tar()?;
    drop(mounted);
    Ok(tar)
}

/// `uid[:gid]` of USER (empty: root; gid 0 when only the uid is given).
///
/// # Errors
/// [`Error::User`] for a user name or anything else that is not a number.
fn parse_user(user: &str) -> Result<(u32, u32)> {
    if user.is_empty() {
        return Ok((0, 0));
    }
    let (uid, gid) = user.split_once(':').unwrap_or((user, "0"));
    match (uid.parse(), gid.parse()) {
        (Ok(uid), Ok(gid)) => Ok((uid, gid)),
        _ => Err(Error::User(user.to_string())),
    }
}

/// Runs `run` with the node agent's runtime (state under `<store>/runtime`, this binary
/// as the helper), printing its output to stderr as it comes; Ctrl-C kills it. Blocks:
/// call it on a blocking thread (a build's steps run on one) or outside tokio.
fn run_container(store: &Store, run: &Oneshot) -> Result<oneshot::Outcome> {
    let shim_binary = std::env::current_exe().map_err(Error::ShimBinary)?;
    let root_dir = store.root().join("runtime");
    let runtime = LocalRuntime::new(LocalRuntimeConfig {
        root_dir: root_dir.clone(),
        insecure_registries: Vec::new(),
        shim_binary,
        favor_dynamic_cgroups: false,
        state_on_tmpfs: false,
        ephemeral_storage_tmpfs: None,
    })
    .map_err(|source| Error::Runtime {
        path: root_dir,
        source,
    })?;
    let print = |bytes: &[u8]| {
        let mut stderr = std::io::stderr().lock();
        // Output the user cannot see is no reason to fail the build.
        let _ = stderr.write_all(bytes);
        let _ = stderr.flush();
    };
    let interrupted = async {
        if tokio::signal::ctrl_c().await.is_err() {
            // No signal handling: never interrupted.
            std::future::pending::<()>().await;
        }
    };
    let step = runtime.run_oneshot(run, print, interrupted);
    let outcome = match tokio::runtime::Handle::try_current() {
        Ok(handle) => handle.block_on(step),
        Err(_) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(Error::Tokio)?
            .block_on(step),
    };
    outcome.map_err(|source| Error::Container {
        argv: run.args.clone(),
        source,
    })
}

/// The unpacked directory of `layer` (unpacked once, under `<store>/layers/`).
fn unpacked(store: &Store, layer: &Layer) -> Result<PathBuf> {
    let hex = layer
        .descriptor
        .digest
        .strip_prefix("sha256:")
        .unwrap_or(&layer.descriptor.digest);
    let dir = store.root().join("layers/sha256").join(hex);
    if dir.exists() {
        return Ok(dir);
    }
    let tmp = store
        .root()
        .join("tmp")
        .join(format!("unpack-{}-{hex}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    let blob = store.read_blob(&layer.descriptor.digest)?;
    let unpack_error = |source| Error::Unpack {
        digest: layer.descriptor.digest.clone(),
        source,
    };
    if blob.starts_with(&[0x1f, 0x8b]) {
        unpacker::unpack(flate2::read::GzDecoder::new(blob.as_slice()), &tmp)
            .map_err(unpack_error)?;
    } else {
        unpacker::unpack(blob.as_slice(), &tmp).map_err(unpack_error)?;
    }
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent).map_err(io(parent))?;
    }
    if let Err(err) = std::fs::rename(&tmp, &dir) {
        // Another build unpacked the same layer first: use its copy.
        let _ = std::fs::remove_dir_all(&tmp);
        if !dir.exists() {
            return Err(io(&dir)(err));
        }
    }
    Ok(dir)
}

/// Adds the changes recorded in overlay upper directory `dir` (at image path `prefix`)
/// to `builder`: files, directories and links as they are, overlay whiteouts (0/0
/// character devices) as `.wh.` entries, opaque directories with `.wh..wh..opq`.
fn diff(dir: &Path, prefix: &str, builder: &mut LayerBuilder) -> Result<()> {
    let mut children: Vec<_> = std::fs::read_dir(dir)
        .map_err(io(dir))?
        .collect::<Result<_, _>>()
        .map_err(io(dir))?;
    children.sort_by_key(|e| e.file_name());
    for child in children {
        let path = child.path();
        let name = child.file_name().to_string_lossy().into_owned();
        let target = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        let meta = std::fs::symlink_metadata(&path).map_err(io(&path))?;
        if rkube_nodeagent::runtime::layer::is_whiteout(&meta) {
            builder.whiteout(&target);
            continue;
        }
        builder.add_host_entry(&path, &target)?;
        if meta.is_dir() {
            let opaque = xattr::get(&path, "trusted.overlay.opaque")
                .ok()
                .flatten()
                .is_some_and(|v| v == b"y");
            if opaque {
                builder.opaque(&target);
            }
            diff(&path, &target, builder)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_are_numeric_uid_and_optional_gid() {
        let cases = [
            ("", Some((0, 0))),
            ("1000", Some((1000, 0))),
            ("1000:1001", Some((1000, 1001))),
            ("0:0", Some((0, 0))),
            ("nobody", None),
            ("1000:staff", None),
            ("-1", None),
        ];
        for (user, want) in cases {
            assert_eq!(parse_user(user).ok(), want, "{user:?}");
        }
    }
}
