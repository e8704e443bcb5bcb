//! One container run to completion from a root filesystem the caller prepared (a `RUN`
//! step of `rkubectl image build`): the same `shim run` helper, OCI defaults
//! (capabilities, masked paths, RuntimeDefault seccomp, `/proc`, `/dev`, `/sys`), state
//! files and cgroup (`/rkube/<id>`) as a pod's container, but in the caller's network
//! namespace (as `docker build` does by default), with its output streamed from the CRI
//! log while it runs, and everything it made removed afterwards — bundle, log,
//! libcontainer state, cgroup and the mount points it had to create in the root
//! filesystem — also when it fails or is cancelled.
//!
//! Start with [`LocalRuntime::run_oneshot`].

use std::future::Future;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use oci_spec::runtime::{LinuxNamespaceType, Spec};

use super::container::{self, SandboxNamespaces};
use super::image::ImageConfig;
use super::local::{sanitize, wait_gone};
use super::logs::{LogOptions, LogStream};
use super::state::{self, ContainerMeta, ContainerPaths};
use super::{
    ContainerConfig, ContainerId, ContainerRuntime, ContainerState, ImageRef, LocalRuntime,
    Resources, Security, StopSignal,
};

/// The `sandbox` recorded for one-shot containers: no pod sandbox is named like this
/// (those end in a hash), so listing a pod's containers never finds one.
pub const ONESHOT_SANDBOX: &str = "oneshot";

/// How often the output is passed on while the command runs.
const OUTPUT_INTERVAL: Duration = Duration::from_millis(100);

/// How much of the output [`Outcome::output`] keeps (the end of it).
pub const OUTPUT_LIMIT: usize = 1 << 20;

/// What running a one-shot container can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot build the OCI spec")]
    Spec(#[from] container::Error),
    #[error("failed to write the bundle of {id}")]
    Bundle {
        id: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(transparent)]
    Runtime(#[from] super::Error),
    #[error("failed to read the helper's records of {id}")]
    State {
        id: String,
        #[source]
        source: state::Error,
    },
    #[error("failed to read the output of {id}")]
    Output {
        id: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the helper of {id} stopped without recording how the command ended: {log}")]
    Lost { id: String, log: String },
    #[error("cancelled; container {id} was killed")]
    Cancelled { id: String },
    #[error("the blocking task was interrupted")]
    Join(#[source] tokio::task::JoinError),
}

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What to run, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Oneshot {
    /// A readable prefix of the container id (cut to 20 characters, made file-name safe);
    /// the id adds this process's pid and a counter.
    pub name: String,
    /// The root filesystem, prepared (mounted) by the caller; it stays theirs.
    pub rootfs: PathBuf,
    /// The command and its arguments (`argv[0]` is looked up in the `PATH` of `env`).
    pub args: Vec<String>,
    /// `KEY=value` pairs; `PATH` gets the pods' default when missing.
    pub env: Vec<String>,
    /// The working directory inside the root filesystem (`/` when empty).
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
}

/// How the command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The container's id (also its hostname and its cgroup's name).
    pub id: ContainerId,
    /// The exit code, or 128 + the signal that killed it.
    pub exit_code: i32,
    /// Whether the kernel's OOM killer ended it.
    pub oom_killed: bool,
    /// Its stdout and stderr, line by line as logged, at most the last
    /// [`OUTPUT_LIMIT`] bytes.
    pub output: Vec<u8>,
}

/// A fresh container id for `name`: unique in this process and among processes.
fn oneshot_id(name: &str) -> ContainerId {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let name = sanitize(name, 20);
    let name = if name.is_empty() { "oneshot" } else { &name };
    ContainerId(format!(
        "{name}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ))
}

/// The cgroup of container `id`, as for a pod's container.
fn cgroup_path(id: &ContainerId) -> PathBuf {
    PathBuf::from(format!("/rkube/{}", id.0))
}

/// The OCI spec of `run`: a pod container's ([`container::oci_spec`] with the default
/// [`Security`] and no limits) with its own PID, IPC, UTS, mount and cgroup namespaces
/// but the caller's network namespace, `id` as hostname and `/rkube/<id>` as cgroup.
///
/// # Errors
/// When the command is empty or the seccomp profile cannot be built.
pub fn oneshot_spec(run: &Oneshot, id: &ContainerId) -> Result<Spec> {
    let config = ContainerConfig {
        name: id.0.clone(),
        image: ImageRef {
            image: String::new(),
            image_id: String::new(),
        },
        command: run.args.clone(),
        args: Vec::new(),
        env: run
            .env
            .iter()
            .map(|pair| match pair.split_once('=') {
                Some((key, value)) => (key.to_string(), value.to_string()),
                None => (pair.clone(), String::new()),
            })
            .collect(),
        working_dir: Some(run.cwd.clone()).filter(|cwd| !cwd.is_empty()),
        run_as_user: Some(i64::from(run.uid)),
        run_as_group: Some(i64::from(run.gid)),
        read_only_root_filesystem: false,
        security: Security::default(),
        resources: Resources::default(),
        mounts: Vec::new(),
        attempt: 0,
    };
    let mut spec = container::oci_spec(
        &config,
        &ImageConfig::default(),
        &run.rootfs,
        &id.0,
        &SandboxNamespaces::default(),
    )?;
    if let Some(linux) = spec.linux_mut().as_mut() {
        if let Some(namespaces) = linux.namespaces_mut().as_mut() {
            namespaces.retain(|ns| ns.typ() != LinuxNamespaceType::Network);
        }
        linux.set_cgroups_path(Some(cgroup_path(id)));
    }
    Ok(spec)
}

/// The mount points that mounting at `destinations` would create in `rootfs`: for each,
/// its first path component that `rootfs` lacks (`/proc` of an image without one). The
/// walk stops at a symbolic link, which leads elsewhere.
pub fn mount_stubs<'a>(
    rootfs: &Path,
    destinations: impl IntoIterator<Item = &'a Path>,
) -> Vec<PathBuf> {
    let mut stubs: Vec<PathBuf> = Vec::new();
    for destination in destinations {
        let mut path = rootfs.to_path_buf();
        for component in destination.components() {
            let Component::Normal(part) = component else {
                continue;
            };
            path.push(part);
            match std::fs::symlink_metadata(&path) {
                Ok(meta) if meta.file_type().is_symlink() => break,
                Ok(_) => {}
                Err(_) => {
                    if !stubs.contains(&path) {
                        stubs.push(path.clone());
                    }
                    break;
                }
            }
        }
    }
    stubs
}

/// Removes the `stubs` that are still empty directories or empty files (what a mount
/// point is once its mount is gone), so that the root filesystem looks as the command
/// left it, as BuildKit's mount stub cleaner does. Best effort.
pub fn remove_stubs(stubs: &[PathBuf]) {
    for stub in stubs.iter().rev() {
        let Ok(meta) = std::fs::symlink_metadata(stub) else {
            continue;
        };
        let removed = if meta.is_dir() {
            std::fs::remove_dir(stub)
        } else if meta.is_file() && meta.len() == 0 {
            std::fs::remove_file(stub)
        } else {
            continue;
        };
        if let Err(err) = removed {
            tracing::debug!(path = %stub.display(), error = %err, "mount point kept");
        }
    }
}

/// The end of a stream of bytes, at most `limit` of them.
#[derive(Debug)]
struct Tail {
    bytes: Vec<u8>,
    limit: usize,
}

impl Tail {
    fn new(limit: usize) -> Self {
        Tail {
            bytes: Vec::new(),
            limit,
        }
    }

    fn push(&mut self, more: &[u8]) {
        self.bytes.extend_from_slice(more);
        if self.bytes.len() > self.limit {
            let cut = self.bytes.len() - self.limit;
            self.bytes.drain(..cut);
        }
    }
}

impl LocalRuntime {
    /// Runs `run` in a container of its own to its end and removes the container.
    /// Its output (stdout and stderr, one rendered line after the other) goes to
    /// `output` while it runs; when `cancel` completes first, the container is killed
    /// and [`Error::Cancelled`] returned. A non-zero exit is an [`Outcome`], not an
    /// error.
    ///
    /// # Errors
    /// When the spec or bundle cannot be made, the helper fails to start the container
    /// or dies without recording its exit, the output cannot be read, or the cleanup
    /// fails (a failure before the cleanup wins).
    pub async fn run_oneshot<F, C>(
        &self,
        run: &Oneshot,
        mut output: F,
        cancel: C,
    ) -> Result<Outcome>
    where
        F: FnMut(&[u8]),
        C: Future<Output = ()>,
    {
        let id = oneshot_id(&run.name);
        // A leftover of a process with the same pid goes first.
        self.remove_container(&id).await?;
        let spec = oneshot_spec(run, &id)?;
        let destinations: Vec<PathBuf> = spec
            .mounts()
            .iter()
            .flatten()
            .map(|m| m.destination().clone())
            .collect();
        let stubs = mount_stubs(&run.rootfs, destinations.iter().map(PathBuf::as_path));
        tracing::debug!(id = %id.0, args = ?run.args, "running one-shot container");
        let result = self.run_prepared(&id, spec, &mut output, cancel).await;
        let cleanup = self.remove_container(&id).await;
        remove_stubs(&stubs);
        match (result, cleanup) {
            (Err(err), cleanup) => {
                if let Err(cleanup) = cleanup {
                    tracing::warn!(id = %id.0, error = %cleanup, "failed to remove a one-shot container");
                }
                Err(err)
            }
            (Ok(_), Err(cleanup)) => Err(cleanup.into()),
            (Ok(outcome), Ok(())) => Ok(outcome),
        }
    }

    /// Writes the bundle, starts the helper and follows the output until the helper
    /// recorded the exit and ended.
    async fn run_prepared<F, C>(
        &self,
        id: &ContainerId,
        spec: Spec,
        output: &mut F,
        cancel: C,
    ) -> Result<Outcome>
    where
        F: FnMut(&[u8]),
        C: Future<Output = ()>,
    {
        let paths = ContainerPaths {
            dir: self.container_dir(id),
        };
        let meta = ContainerMeta {
            sandbox: ONESHOT_SANDBOX.to_string(),
            name: id.0.clone(),
            attempt: 0,
            // In the bundle: removed with it.
            log_path: paths.dir.join("output.log"),
            cgroup_path: cgroup_path(id),
            // The build mounted the root file system already.
            overlay: None,
        };
        let log_path = meta.log_path.clone();
        let bundle = paths.clone();
        let task_id = id.0.clone();
        tokio::task::spawn_blocking(move || -> Result<()> {
            let failed = |source: Box<dyn std::error::Error + Send + Sync>| Error::Bundle {
                id: task_id.clone(),
                source,
            };
            std::fs::create_dir_all(&bundle.dir).map_err(|e| failed(e.into()))?;
            spec.save(bundle.config()).map_err(|e| failed(e.into()))?;
            state::write_json(&bundle.meta(), &meta).map_err(|e| failed(e.into()))
        })
        .await
        .map_err(Error::Join)??;
        self.start_container(id).await?;
        let state_error = |source| Error::State {
            id: id.0.clone(),
            source,
        };
        let helper = state::read_pid(&paths.shim_pid())
            .map_err(state_error)?
            .ok_or_else(|| Error::Lost {
                id: id.0.clone(),
                log: "no shim.pid".into(),
            })?;
        let mut log = LogStream::new(&log_path, LogOptions::default());
        let mut tail = Tail::new(OUTPUT_LIMIT);
        let mut pass_on = |log: &mut LogStream| -> Result<()> {
            let bytes = log.read_new().map_err(|source| Error::Output {
                id: id.0.clone(),
                source,
            })?;
            if !bytes.is_empty() {
                output(&bytes);
                tail.push(&bytes);
            }
            Ok(())
        };
        tokio::pin!(cancel);
        loop {
            let gone = tokio::select! {
                gone = wait_gone(helper, OUTPUT_INTERVAL) => gone,
                () = &mut cancel => {
                    self.kill_container(id, StopSignal::Kill).await?;
                    return Err(Error::Cancelled { id: id.0.clone() });
                }
            };
            pass_on(&mut log)?;
            if gone {
                break;
            }
        }
        match self.container_status(id).await? {
            ContainerState::Exited {
                exit_code, reason, ..
            } if reason != "ContainerStatusUnknown" => Ok(Outcome {
                id: id.clone(),
                exit_code,
                oom_killed: reason == "OOMKilled",
                output: tail.bytes,
            }),
            _ => Err(Error::Lost {
                id: id.0.clone(),
                log: std::fs::read_to_string(paths.shim_log())
                    .unwrap_or_default()
                    .trim()
                    .to_string(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::container::{
        host_capabilities, ALL_CAPABILITIES, DEFAULT_CAPABILITIES, MASKED_PATHS,
    };
    use super::*;

    fn run() -> Oneshot {
        Oneshot {
            name: "build step/1".into(),
            rootfs: PathBuf::from("/store/tmp/run-1/rootfs"),
            args: vec!["/bin/sh".into(), "-c".into(), "make".into()],
            env: vec!["A=1".into(), "B=x=y".into()],
            cwd: "/src".into(),
            uid: 1000,
            gid: 1001,
        }
    }

    #[test]
    fn ids_are_safe_unique_and_name_the_process() {
        let a = oneshot_id("build step/1");
        let b = oneshot_id("build step/1");
        assert_ne!(a, b);
        let prefix = format!("build-step-1-{}-", std::process::id());
        assert!(a.0.starts_with(&prefix), "{}", a.0);
        assert!(oneshot_id("").0.starts_with("oneshot-"));
        assert!(oneshot_id(&"x".repeat(100)).0.len() < 50);
    }

    #[test]
    fn spec_is_a_pod_containers_in_the_callers_network() {
        let id = ContainerId("build-1-0".into());
        let spec = oneshot_spec(&run(), &id).expect("spec");
        let process = spec.process().as_ref().expect("process");
        assert_eq!(process.args().as_deref(), Some(&run().args[..]));
        let env = process.env().clone().unwrap_or_default();
        assert!(
            env.iter().any(|e| e.starts_with("PATH=/usr/local/sbin:")),
            "{env:?}"
        );
        assert!(env.contains(&"A=1".to_string()) && env.contains(&"B=x=y".to_string()));
        assert_eq!(process.cwd(), Path::new("/src"));
        assert_eq!((process.user().uid(), process.user().gid()), (1000, 1001));
        assert_eq!(spec.hostname().as_deref(), Some("build-1-0"));
        assert_eq!(
            spec.root().as_ref().map(|r| r.path().clone()),
            Some(run().rootfs)
        );

        let linux = spec.linux().as_ref().expect("linux");
        let namespaces: Vec<_> = linux
            .namespaces()
            .iter()
            .flatten()
            .map(|ns| (ns.typ(), ns.path().clone()))
            .collect();
        for typ in [
            LinuxNamespaceType::Pid,
            LinuxNamespaceType::Ipc,
            LinuxNamespaceType::Uts,
            LinuxNamespaceType::Mount,
        ] {
            assert!(namespaces.contains(&(typ, None)), "{typ:?}: {namespaces:?}");
        }
        assert!(
            !namespaces
                .iter()
                .any(|(typ, _)| *typ == LinuxNamespaceType::Network),
            "{namespaces:?}"
        );
        assert_eq!(
            linux.cgroups_path().as_deref(),
            Some(Path::new("/rkube/build-1-0"))
        );
        assert!(linux.seccomp().is_some(), "RuntimeDefault seccomp");
        let masked = linux.masked_paths().clone().unwrap_or_default();
        assert_eq!(masked.len(), MASKED_PATHS.len());

        // The default capabilities (within what this process may hand on), not more.
        let bounding: Vec<String> = process
            .capabilities()
            .as_ref()
            .and_then(|c| c.bounding().clone())
            .into_iter()
            .flatten()
            .map(|c| c.to_string())
            .collect();
        let available = host_capabilities();
        let want: Vec<&str> = ALL_CAPABILITIES
            .iter()
            .enumerate()
            .filter(|(i, name)| {
                DEFAULT_CAPABILITIES.contains(name)
                    && available.is_none_or(|mask| mask & (1 << i) != 0)
            })
            .map(|(_, name)| *name)
            .collect();
        assert_eq!(bounding.len(), want.len(), "{bounding:?}");
        for name in want {
            assert!(
                bounding.iter().any(|b| b.ends_with(name)),
                "{name} missing: {bounding:?}"
            );
        }

        let destinations: Vec<_> = spec
            .mounts()
            .iter()
            .flatten()
            .map(|m| m.destination().clone())
            .collect();
        for path in ["/proc", "/dev", "/sys"] {
            assert!(
                destinations.contains(&PathBuf::from(path)),
                "{destinations:?}"
            );
        }
    }

    #[test]
    fn an_empty_command_is_refused() {
        let run = Oneshot {
            args: Vec::new(),
            ..run()
        };
        assert!(matches!(
            oneshot_spec(&run, &ContainerId("x".into())),
            Err(Error::Spec(container::Error::NoCommand))
        ));
    }

    #[test]
    fn mount_stubs_are_the_first_missing_parts_and_only_empty_ones_go() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        std::fs::create_dir_all(root.join("dev")).expect("mkdir");
        std::os::unix::fs::symlink("/", root.join("sys")).expect("symlink");
        let destinations = [
            "/proc",
            "/dev",
            "/dev/pts",
            "/sys/fs/cgroup",
            "/proc/x",
            "/etc/hosts",
        ];
        let stubs = mount_stubs(root, destinations.iter().map(Path::new));
        assert_eq!(
            stubs,
            vec![root.join("proc"), root.join("dev/pts"), root.join("etc")]
        );

        // As a container leaves them: proc empty, dev/pts never made, etc holding a file.
        std::fs::create_dir(root.join("proc")).expect("mkdir");
        std::fs::create_dir(root.join("etc")).expect("mkdir");
        std::fs::write(root.join("etc/made-by-the-command"), "x").expect("write");
        remove_stubs(&stubs);
        assert!(!root.join("proc").exists());
        assert!(root.join("etc/made-by-the-command").exists());
        assert!(root.join("dev").exists() && root.join("sys").exists());
    }

    #[test]
    fn tail_keeps_the_end() {
        let mut tail = Tail::new(5);
        tail.push(b"abc");
        tail.push(b"defg");
        assert_eq!(tail.bytes, b"cdefg");
        tail.push(b"");
        assert_eq!(tail.bytes, b"cdefg");
    }
}
