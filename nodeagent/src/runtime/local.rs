//! The built-in runtime: images from OCI registries into a content-addressed store
//! ([`super::image`]), pod sandboxes held by a `shim pause` process, and containers run
//! by one `shim run` helper each (see [`crate::shim`]): the agent only prepares the
//! bundle (overlay root from [`super::rootfs`], `config.json` from [`super::container`]),
//! has the helper forked by its [`super::spawner`] (or executes it when the spawner
//! cannot) and from then on talks to it through the files of [`super::state`] and
//! signals. libcontainer never runs in the agent.
//!
//! Layout under the root directory: `sandboxes/<id>/`, `containers/<id>/` (bundle and
//! state), `logs/<sandbox>/<container>/<attempt>.log` (rotated to `<attempt>.log.<n>`),
//! `exec/` (one private directory per exec session), `lc/` (libcontainer's state),
//! `layers/<id>/` (writable layers) and `mountpoints/` (see [`super::mountpoints`]).
//! Cgroups are `/rkube/<container id>` in every hierarchy (v1) or in the unified one.

use std::ffi::OsStr;
use std::net::IpAddr;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::libc;
use nix::sys::signal::Signal;
use sha2::{Digest, Sha256};

use super::container::SandboxNamespaces;
use super::exec::{self, ExecProcess, ExecRequest, ExecTarget};
use super::host_cgroups;
use super::image::ImageStore;
use super::mountpoints;
use super::rootfs::Rootfs;
use super::spawner::{self, Spawner};
use super::state::{
    self, ContainerMeta, ContainerPaths, Exited, SandboxMeta, SandboxPaths, Started,
};
use super::tmpfs;
use super::Mount;
use super::{
    ContainerConfig, ContainerId, ContainerInfo, ContainerRuntime, ContainerState, Error,
    ExecOutput, ImageRef, PullPolicy, Result, SandboxConfig, SandboxId, SandboxStatus, StopSignal,
};
use crate::network::NetworkHandle;

/// How long removal waits for a killed container's helper to record the exit.
const EXIT_WAIT: Duration = Duration::from_secs(10);

/// Where the built-in runtime keeps its state, which registries it trusts over HTTP and
/// which binary it re-executes as the `shim` helper.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalRuntimeConfig {
    pub root_dir: PathBuf,
    pub insecure_registries: Vec<String>,
    /// A binary that runs the helper when called as `<binary> shim <command>`: the agent
    /// itself in production.
    pub shim_binary: PathBuf,
    /// Remount the host's cgroup2 hierarchy with `favordynmods` so that container
    /// starts do not wait for the kernel's cgroup lock (see [`host_cgroups`]); the
    /// agent does unless told not to.
    pub favor_dynamic_cgroups: bool,
    /// Keep the runtime's bookkeeping (bundles, sandbox files, libcontainer's state) on
    /// tmpfs mounts (see [`tmpfs`]).
    pub state_on_tmpfs: bool,
    /// Keep the containers' writable layers (`layers/`) and logs (`logs/`) each on a
    /// tmpfs of this many bytes (see [`tmpfs`]) instead of on disk.
    pub ephemeral_storage_tmpfs: Option<u64>,
}

/// A helper that reported a failure (its stderr), or a step around it that failed.
#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    #[error("could not run {binary}")]
    Spawn {
        binary: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("shim {command} failed: {message}")]
    Failed {
        command: &'static str,
        message: String,
    },
    #[error("the sandbox's pause process {pid} is gone")]
    PauseGone { pid: i32 },
    #[error("image {image:?} is not in the image store")]
    ImageMissing { image: String },
    #[error("i/o error on {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to signal process {pid}")]
    Signal {
        pid: i32,
        #[source]
        source: std::io::Error,
    },
    #[error("the blocking task was interrupted")]
    Join(#[source] tokio::task::JoinError),
    #[error("shim {command} was started, but how it ended is unknown")]
    Spawner {
        command: &'static str,
        #[source]
        source: spawner::Error,
    },
    #[error("the pod network is not up yet (waiting for the node's podCIDR)")]
    NetworkNotReady,
    #[error("failed to attach the sandbox to the pod network")]
    Network(#[source] Box<crate::network::Error>),
}

/// The built-in runtime.
#[derive(Debug)]
pub struct LocalRuntime {
    images: ImageStore,
    root: PathBuf,
    shim: PathBuf,
    spawner: Spawner,
    log_rotation: LogRotation,
    /// The pod network sandboxes are attached to; `None`: loopback-only pods.
    network: Option<NetworkHandle>,
}

/// When the helpers rotate container logs: past `max_size` bytes, keeping `max_files`
/// files (the live one included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogRotation {
    pub max_size: u64,
    pub max_files: usize,
}

impl Default for LogRotation {
    fn default() -> Self {
        LogRotation {
            max_size: crate::shim::log::DEFAULT_MAX_SIZE,
            max_files: crate::shim::log::DEFAULT_MAX_FILES,
        }
    }
}

fn failed<'a, E: std::error::Error + Send + Sync + 'static>(
    operation: &'static str,
    id: &'a str,
) -> impl FnOnce(E) -> Error + 'a {
    move |source| Error::Failed {
        operation,
        id: id.to_string(),
        source: Box::new(source),
    }
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> ShimError + '_ {
    move |source| ShimError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl LocalRuntime {
    /// Prepares the state directories under `config.root_dir`.
    ///
    /// # Errors
    /// When the directories cannot be created.
    pub fn new(config: LocalRuntimeConfig) -> Result<Self> {
        let root = config.root_dir.clone();
        if config.favor_dynamic_cgroups {
            match host_cgroups::favor_dynamic_modifications() {
                Ok(host_cgroups::Outcome::Remounted(targets)) => {
                    tracing::info!(?targets, "remounted cgroup2 with favordynmods");
                }
                Ok(outcome) => tracing::debug!(?outcome, "cgroup2 favordynmods"),
                Err(err) => tracing::warn!(
                    error = %err,
                    "container starts will wait for the kernel's cgroup lock"
                ),
            }
        }
        let images = ImageStore::open(root.join("images"), config.insecure_registries)
            .map_err(failed("open image store", &root.display().to_string()))?;
        for dir in ["sandboxes", "containers", "logs", "lc", "layers"] {
            let path = root.join(dir);
            std::fs::create_dir_all(&path)
                .map_err(io_error(&path))
                .map_err(failed(
                    "prepare runtime directory",
                    &path.display().to_string(),
                ))?;
        }
        if config.state_on_tmpfs {
            for dir in ["sandboxes", "containers", "lc"] {
                tmpfs::keep_on_tmpfs(&root.join(dir), tmpfs::STATE);
            }
        }
        if let Some(size_bytes) = config.ephemeral_storage_tmpfs {
            for dir in ["layers", "logs"] {
                tmpfs::keep_on_tmpfs(&root.join(dir), tmpfs::Limits::ephemeral(size_bytes));
            }
        }
        Ok(LocalRuntime {
            images,
            root,
            spawner: Spawner::new(config.shim_binary.clone()),
            shim: config.shim_binary,
            log_rotation: LogRotation::default(),
            network: None,
        })
    }

    /// Rotates the logs of containers started from now on as `rotation` says.
    pub fn set_log_rotation(&mut self, rotation: LogRotation) {
        self.log_rotation = rotation;
    }

    /// Attaches every sandbox created from now on to the pod network behind `network`
    /// (its `eth0`, address and default route; `/etc/resolv.conf` and `/etc/hosts` in
    /// each container).
    pub fn set_network(&mut self, network: NetworkHandle) {
        self.network = Some(network);
    }

    /// Attaches the sandbox whose pause process is `pid` to the pod network and writes
    /// its `resolv.conf` and `hosts`; without a pod network, does nothing.
    async fn attach_network(
        &self,
        id: &SandboxId,
        config: &SandboxConfig,
        paths: &SandboxPaths,
    ) -> Result<(), ShimError> {
        let Some(handle) = &self.network else {
            return Ok(());
        };
        let network = handle.get().ok_or(ShimError::NetworkNotReady)?;
        let pid = state::read_pid(&paths.pid())
            .ok()
            .flatten()
            .ok_or(ShimError::PauseGone { pid: 0 })?;
        let netns = PathBuf::from(format!("/proc/{pid}/ns/net"));
        let ip = network
            .attach(&id.0, &netns)
            .await
            .map_err(|source| ShimError::Network(Box::new(source)))?;
        let resolv = network.resolv_conf(&config.namespace, handle.cluster_domain());
        let hosts = crate::network::hosts_file(Some(ip), &config.hostname);
        for (name, text) in [("resolv.conf", resolv), ("hosts", hosts)] {
            let path = paths.dir.join(name);
            std::fs::write(&path, text).map_err(io_error(&path))?;
        }
        Ok(())
    }

    /// `config` plus read-only mounts of the sandbox's `resolv.conf` and `hosts` at
    /// `/etc/resolv.conf` and `/etc/hosts`, where the sandbox has them and the
    /// container does not mount those paths itself.
    fn with_network_files(
        &self,
        config: &ContainerConfig,
        sandbox: &SandboxPaths,
    ) -> ContainerConfig {
        let mut config = config.clone();
        for (name, target) in [("resolv.conf", "/etc/resolv.conf"), ("hosts", "/etc/hosts")] {
            let host_path = sandbox.dir.join(name);
            if host_path.exists() && !config.mounts.iter().any(|m| m.container_path == target) {
                config.mounts.push(Mount {
                    host_path,
                    container_path: target.to_string(),
                    read_only: true,
                });
            }
        }
        config
    }

    /// The image store.
    pub fn images(&self) -> &ImageStore {
        &self.images
    }

    /// The CRI-format log file of container `id` (whether or not it exists).
    ///
    /// # Errors
    /// [`Error::ContainerNotFound`] when there is no such container.
    pub fn log_path(&self, id: &ContainerId) -> Result<PathBuf> {
        Ok(self.container_meta(id)?.log_path)
    }

    fn sandbox_paths(&self, id: &SandboxId) -> SandboxPaths {
        SandboxPaths {
            dir: self.root.join("sandboxes").join(&id.0),
        }
    }

    fn container_paths(&self, id: &ContainerId) -> ContainerPaths {
        ContainerPaths {
            dir: self.root.join("containers").join(&id.0),
        }
    }

    /// Container `id`'s root filesystem: mounted in its state directory, its writable
    /// layer under `layers/` (on disk even when the state is on tmpfs).
    fn container_rootfs(&self, id: &ContainerId) -> Rootfs {
        Rootfs::split(
            &self.container_paths(id).dir,
            &self.root.join("layers").join(&id.0),
        )
    }

    fn libcontainer_root(&self) -> PathBuf {
        self.root.join("lc")
    }

    fn container_meta(&self, id: &ContainerId) -> Result<ContainerMeta> {
        let paths = self.container_paths(id);
        state::read_json::<ContainerMeta>(&paths.meta())
            .map_err(failed("read container state", &id.0))?
            .ok_or_else(|| Error::ContainerNotFound { id: id.0.clone() })
    }

    /// Runs `<shim> shim <command> <args>` and waits for its launcher, which returns once
    /// the helper is ready: forked by the [`Spawner`], or executed when the spawner
    /// could not take the request.
    async fn shim(&self, command: &'static str, args: Vec<&OsStr>) -> Result<(), ShimError> {
        let reply = self
            .spawner
            .run(command, &args)
            .await
            .map_err(|source| ShimError::Spawner { command, source })?;
        if let Some(reply) = reply {
            if reply.success() {
                return Ok(());
            }
            return Err(ShimError::Failed {
                command,
                message: if reply.message.is_empty() {
                    reply.status
                } else {
                    reply.message
                },
            });
        }
        let mut cmd = Command::new(&self.shim);
        cmd.arg("shim")
            .arg(command)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let binary = self.shim.clone();
        let output = tokio::task::spawn_blocking(move || cmd.output())
            .await
            .map_err(ShimError::Join)?
            .map_err(|source| ShimError::Spawn { binary, source })?;
        if output.status.success() {
            return Ok(());
        }
        let message = String::from_utf8_lossy(&output.stderr).trim().to_string();
        Err(ShimError::Failed {
            command,
            message: if message.is_empty() {
                output.status.to_string()
            } else {
                message
            },
        })
    }

    async fn wait_for_exit(&self, paths: &ContainerPaths) -> Result<Option<Exited>, state::Error> {
        let deadline = Instant::now() + EXIT_WAIT;
        // The helper records the exit and then ends, so its end is the moment to look.
        if let Some(shim) = state::read_pid(&paths.shim_pid())? {
            wait_gone(shim, EXIT_WAIT).await;
        }
        loop {
            let exited = state::read_json::<Exited>(&paths.exited())?;
            if exited.is_some() || Instant::now() >= deadline {
                return Ok(exited);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// A file-name and libcontainer-safe id: letters, digits, `-`, `.` and `_` only.
pub(crate) fn sanitize(text: &str, max: usize) -> String {
    text.chars()
        .take(max)
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '-' | '.' | '_' => c,
            _ => '-',
        })
        .collect()
}

/// The sandbox id: a short hash of the pod's identity (libcontainer's notify socket
/// path must stay under 108 bytes) after a readable prefix.
fn sandbox_id(config: &SandboxConfig) -> SandboxId {
    let digest = Sha256::digest(format!(
        "{}/{}/{}",
        config.namespace, config.name, config.pod_uid
    ));
    let hex: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
    SandboxId(format!("{}-{hex}", sanitize(&config.name, 20)))
}

/// The container id: sandbox, container name and attempt.
fn container_id(sandbox: &SandboxId, config: &ContainerConfig) -> ContainerId {
    ContainerId(format!(
        "{}_{}_{}",
        sandbox.0,
        sanitize(&config.name, 20),
        config.attempt
    ))
}

/// Whether `pid` is a live process (not gone, not a zombie).
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name in parentheses, which may hold anything.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Waits until process `pid` is gone, at most `timeout`; returns whether it is. A pidfd
/// turns readable when its process exits, so this wakes at once instead of polling.
pub(crate) async fn wait_gone(pid: i32, timeout: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    let pidfd = match pidfd_open(pid) {
        Ok(Some(pidfd)) => pidfd,
        Ok(None) => return true,
        Err(_) => return poll_gone(pid, deadline).await,
    };
    match readable_pidfd(pidfd) {
        Some(fd) => tokio::time::timeout_at(deadline, fd.readable())
            .await
            .is_ok_and(|ready| ready.is_ok()),
        None => poll_gone(pid, deadline).await,
    }
}

/// `pidfd` registered with tokio for readability (its process's exit).
#[allow(unsafe_code)]
fn readable_pidfd(pidfd: OwnedFd) -> Option<tokio::io::unix::AsyncFd<OwnedFd>> {
    // SAFETY: an OwnedFd is an open descriptor that the AsyncFd owns from here on, and its
    // as_raw_fd always returns that same descriptor.
    unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE)
    }
    .ok()
}

/// [`wait_gone`] without a pidfd: looks every few milliseconds.
async fn poll_gone(pid: i32, deadline: tokio::time::Instant) -> bool {
    while alive(pid) {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    true
}

/// A pidfd for `pid`; `None` when there is no such process.
#[allow(unsafe_code)]
fn pidfd_open(pid: i32) -> Result<Option<OwnedFd>, ShimError> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::ESRCH) {
            return Ok(None);
        }
        return Err(ShimError::Signal { pid, source: err });
    }
    let fd = i32::try_from(fd).map_err(|_| ShimError::Signal {
        pid,
        source: std::io::Error::other("pidfd out of range"),
    })?;
    // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
    Ok(Some(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// Sends `signal` through `pidfd`; a process that already exited is not an error.
#[allow(unsafe_code)]
fn pidfd_send_signal(pidfd: &OwnedFd, pid: i32, signal: Signal) -> Result<(), ShimError> {
    use std::os::fd::AsRawFd;
    // SAFETY: a valid pidfd, a valid signal, no siginfo, no flags.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal as libc::c_int,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if rc < 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::ESRCH) {
            return Err(ShimError::Signal { pid, source: err });
        }
    }
    Ok(())
}

fn remove_dir(path: &Path) -> Result<(), ShimError> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(io_error(path)(source)),
    }
}

/// How much output [`ContainerRuntime::exec_sync`] keeps (exec probes and hooks).
const EXEC_SYNC_OUTPUT_LIMIT: usize = 10 * 1024;

impl LocalRuntime {
    /// Starts `request` in the running container `id` (see [`exec`]); the streaming
    /// exec of the agent's service and the base of `exec_sync`.
    ///
    /// # Errors
    /// [`Error::ContainerNotFound`], or [`Error::Failed`] when the container does not
    /// run or the command cannot be started.
    pub async fn exec(&self, id: &ContainerId, request: &ExecRequest) -> Result<ExecProcess> {
        if !matches!(
            self.container_status(id).await?,
            ContainerState::Running { .. }
        ) {
            return Err(failed("exec in", &id.0)(exec::Error::NotRunning));
        }
        let paths = self.container_paths(id);
        let libcontainer_root = self.libcontainer_root();
        let exec_root = self.root.join("exec");
        let target = ExecTarget {
            shim: &self.shim,
            id: &id.0,
            bundle: &paths.dir,
            libcontainer_root: &libcontainer_root,
            exec_root: &exec_root,
        };
        exec::start(&target, request)
            .await
            .map_err(failed("exec in", &id.0))
    }

    /// The containers of the pod `namespace/name` with `uid` on this node, each with its
    /// record, newest attempt last; empty when the pod has no sandbox here.
    ///
    /// # Errors
    /// When the state directory cannot be read.
    pub async fn pod_containers(
        &self,
        namespace: &str,
        name: &str,
        uid: &str,
    ) -> Result<Vec<(ContainerId, ContainerMeta)>> {
        let sandbox = sandbox_id(&SandboxConfig {
            pod_uid: uid.to_string(),
            namespace: namespace.to_string(),
            name: name.to_string(),
            hostname: String::new(),
        });
        let mut found = Vec::new();
        for info in self.list_containers(&sandbox).await? {
            if let Ok(meta) = self.container_meta(&info.id) {
                found.push((info.id, meta));
            }
        }
        found.sort_by_key(|(_, meta)| meta.attempt);
        Ok(found)
    }

    /// The state directory of container `id` (its bundle and state files).
    pub fn container_dir(&self, id: &ContainerId) -> PathBuf {
        self.container_paths(id).dir
    }
}

impl ContainerRuntime for LocalRuntime {
    async fn image_present(&self, image: &str) -> bool {
        self.images.contains(image)
    }

    async fn pull_image(&self, image: &str, policy: PullPolicy) -> Result<ImageRef> {
        self.images.ensure(image, policy).await
    }

    async fn create_sandbox(&self, config: &SandboxConfig) -> Result<SandboxId> {
        let id = sandbox_id(config);
        let paths = self.sandbox_paths(&id);
        if let Ok(Some(pid)) = state::read_pid(&paths.pid()) {
            if alive(pid) {
                return Ok(id);
            }
        }
        // A sandbox whose pause process is gone is started afresh.
        remove_dir(&paths.dir).map_err(failed("create sandbox", &id.0))?;
        std::fs::create_dir_all(&paths.dir)
            .map_err(io_error(&paths.dir))
            .map_err(failed("create sandbox", &id.0))?;
        state::write_json(
            &paths.meta(),
            &SandboxMeta {
                hostname: config.hostname.clone(),
            },
        )
        .map_err(failed("create sandbox", &id.0))?;
        let args = vec![
            OsStr::new("--dir"),
            paths.dir.as_os_str(),
            OsStr::new("--hostname"),
            OsStr::new(&config.hostname),
        ];
        if let Err(err) = self.shim("pause", args).await {
            let _ = remove_dir(&paths.dir);
            return Err(failed("create sandbox", &id.0)(err));
        }
        if let Err(err) = self.attach_network(&id, config, &paths).await {
            // Without its network the sandbox is useless: take it down again.
            let _ = self.remove_sandbox(&id).await;
            return Err(failed("create sandbox", &id.0)(err));
        }
        Ok(id)
    }

    async fn sandbox_status(&self, id: &SandboxId) -> Result<SandboxStatus> {
        let paths = self.sandbox_paths(id);
        let pid = state::read_pid(&paths.pid()).map_err(failed("inspect sandbox", &id.0))?;
        match pid {
            Some(pid) if alive(pid) => Ok(SandboxStatus {
                netns: Some(PathBuf::from(format!("/proc/{pid}/ns/net"))),
                ip: self
                    .network
                    .as_ref()
                    .and_then(NetworkHandle::get)
                    .and_then(|network| network.address(&id.0))
                    .map(IpAddr::V4),
            }),
            _ => Err(Error::SandboxNotFound { id: id.0.clone() }),
        }
    }

    async fn remove_sandbox(&self, id: &SandboxId) -> Result<()> {
        let paths = self.sandbox_paths(id);
        if let Some(pid) = state::read_pid(&paths.pid()).map_err(failed("remove sandbox", &id.0))? {
            if let Some(pidfd) = pidfd_open(pid).map_err(failed("remove sandbox", &id.0))? {
                pidfd_send_signal(&pidfd, pid, Signal::SIGKILL)
                    .map_err(failed("remove sandbox", &id.0))?;
            }
        }
        if let Some(network) = self.network.as_ref().and_then(NetworkHandle::get) {
            network
                .detach(&id.0)
                .await
                .map_err(failed("detach sandbox from the pod network", &id.0))?;
        }
        remove_dir(&self.root.join("logs").join(&id.0)).map_err(failed("remove sandbox", &id.0))?;
        remove_dir(&paths.dir).map_err(failed("remove sandbox", &id.0))
    }

    async fn create_container(
        &self,
        sandbox: &SandboxId,
        config: &ContainerConfig,
    ) -> Result<ContainerId> {
        let id = container_id(sandbox, config);
        let sandbox_paths = self.sandbox_paths(sandbox);
        let pid = state::read_pid(&sandbox_paths.pid())
            .map_err(failed("create container", &id.0))?
            .ok_or_else(|| Error::SandboxNotFound {
                id: sandbox.0.clone(),
            })?;
        if !alive(pid) {
            return Err(failed("create container", &id.0)(ShimError::PauseGone {
                pid,
            }));
        }
        let hostname = state::read_json::<SandboxMeta>(&sandbox_paths.meta())
            .map_err(failed("create container", &id.0))?
            .map(|meta| meta.hostname)
            .unwrap_or_default();
        let record = self
            .images
            .get(&config.image.image)
            .map_err(failed("create container", &id.0))?
            .ok_or_else(|| {
                failed("create container", &id.0)(ShimError::ImageMissing {
                    image: config.image.image.clone(),
                })
            })?;
        // A leftover of an earlier, failed attempt with the same id goes first.
        if self.container_paths(&id).dir.exists() {
            self.remove_container(&id).await?;
        }
        let paths = self.container_paths(&id);
        let rootfs = self.container_rootfs(&id);
        let namespaces = SandboxNamespaces {
            network: Some(PathBuf::from(format!("/proc/{pid}/ns/net"))),
            ipc: Some(PathBuf::from(format!("/proc/{pid}/ns/ipc"))),
            uts: Some(PathBuf::from(format!("/proc/{pid}/ns/uts"))),
        };
        let config = &self.with_network_files(config, &sandbox_paths);
        let mut spec = super::container::oci_spec(
            config,
            &record.config,
            &rootfs.merged,
            &hostname,
            &namespaces,
        )
        .map_err(failed("create container", &id.0))?;
        let cgroup_path = PathBuf::from(format!("/rkube/{}", id.0));
        if let Some(linux) = spec.linux_mut().as_mut() {
            linux.set_cgroups_path(Some(cgroup_path.clone()));
        }
        let log_path = self
            .root
            .join("logs")
            .join(&sandbox.0)
            .join(sanitize(&config.name, 63))
            .join(format!("{}.log", config.attempt));
        let mut meta = ContainerMeta {
            sandbox: sandbox.0.clone(),
            name: config.name.clone(),
            attempt: config.attempt,
            log_path,
            cgroup_path,
            overlay: None,
        };
        let mut layers: Vec<PathBuf> = record
            .layers
            .iter()
            .map(|digest| self.images.layer_dir(digest))
            .collect();
        let mounts = config.mounts.clone();
        let mountpoints_store = self.root.join("mountpoints");
        let task_id = id.0.clone();
        let prepared = tokio::task::spawn_blocking(move || -> Result<()> {
            if let Some(parent) = meta.log_path.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(io_error(parent))
                    .map_err(failed("create log directory", &task_id))?;
            }
            // Bind-mounted files (the pod network's /etc files, file volumes) whose
            // mount points the mount-point layer may hold.
            let files: Vec<&Path> = mounts
                .iter()
                .filter(|m| m.host_path.is_file())
                .map(|m| Path::new(&m.container_path))
                .collect();
            match mountpoints::layer(&mountpoints_store, &layers, &files) {
                Ok(Some(top)) => layers.push(top),
                Ok(None) => {}
                // Slower, not wrong: libcontainer creates the mount points itself.
                Err(err) => tracing::warn!(error = %err, "no mount-point layer"),
            }
            // The helper mounts the overlay in a mount namespace of its own: the
            // node's mount table does not grow by a long overlay line per container,
            // which libcontainer reads a dozen times for every container it starts.
            meta.overlay = Some(
                rootfs
                    .overlay_options(&layers)
                    .map_err(failed("mount root filesystem", &task_id))?,
            );
            rootfs
                .prepare()
                .map_err(failed("mount root filesystem", &task_id))?;
            spec.save(paths.config())
                .map_err(failed("write OCI config", &task_id))?;
            state::write_json(&paths.meta(), &meta)
                .map_err(failed("write container state", &task_id))
        })
        .await
        .map_err(ShimError::Join)
        .map_err(failed("create container", &id.0))?;
        if let Err(err) = prepared {
            let _ = self.container_rootfs(&id).remove();
            let _ = remove_dir(&self.container_paths(&id).dir);
            return Err(err);
        }
        Ok(id)
    }

    async fn list_containers(&self, sandbox: &SandboxId) -> Result<Vec<ContainerInfo>> {
        let dir = self.root.join("containers");
        let wanted = sandbox.0.clone();
        tokio::task::spawn_blocking(move || -> Result<Vec<ContainerInfo>> {
            let entries = std::fs::read_dir(&dir)
                .map_err(io_error(&dir))
                .map_err(failed("list containers of", &wanted))?;
            let mut found = Vec::new();
            for entry in entries {
                let entry = entry
                    .map_err(io_error(&dir))
                    .map_err(failed("list containers of", &wanted))?;
                let id = entry.file_name().to_string_lossy().into_owned();
                let paths = ContainerPaths { dir: entry.path() };
                // A directory without its record is a creation that never finished.
                let Ok(Some(meta)) = state::read_json::<ContainerMeta>(&paths.meta()) else {
                    continue;
                };
                if meta.sandbox == wanted {
                    found.push(ContainerInfo {
                        id: ContainerId(id),
                        name: meta.name,
                        attempt: meta.attempt,
                    });
                }
            }
            Ok(found)
        })
        .await
        .map_err(ShimError::Join)
        .map_err(failed("list containers of", &sandbox.0))?
    }

    async fn start_container(&self, id: &ContainerId) -> Result<()> {
        let meta = self.container_meta(id)?;
        let paths = self.container_paths(id);
        if paths.started().exists() {
            return Ok(());
        }
        let root = self.libcontainer_root();
        let max_size = self.log_rotation.max_size.to_string();
        let max_files = self.log_rotation.max_files.to_string();
        let mut args = vec![
            OsStr::new("--id"),
            OsStr::new(&id.0),
            OsStr::new("--bundle"),
            paths.dir.as_os_str(),
            OsStr::new("--root"),
            root.as_os_str(),
            OsStr::new("--log"),
            meta.log_path.as_os_str(),
            OsStr::new("--cgroup"),
            meta.cgroup_path.as_os_str(),
            OsStr::new("--log-max-size"),
            OsStr::new(&max_size),
            OsStr::new("--log-max-files"),
            OsStr::new(&max_files),
        ];
        if let Some(options) = &meta.overlay {
            args.extend([OsStr::new("--overlay"), OsStr::new(options)]);
        }
        self.shim("run", args)
            .await
            .map_err(failed("start container", &id.0))
    }

    async fn kill_container(&self, id: &ContainerId, signal: StopSignal) -> Result<()> {
        let paths = self.container_paths(id);
        if !paths.meta().exists() {
            return Err(Error::ContainerNotFound { id: id.0.clone() });
        }
        if paths.exited().exists() {
            return Ok(());
        }
        let Some(pid) = state::read_pid(&paths.pid()).map_err(failed("kill container", &id.0))?
        else {
            // Never started: nothing runs.
            return Ok(());
        };
        let Some(pidfd) = pidfd_open(pid).map_err(failed("kill container", &id.0))? else {
            return Ok(());
        };
        // The helper records the exit before it reaps the process, so while there is no
        // record the pidfd is the container's process and not a reused pid.
        if paths.exited().exists() {
            return Ok(());
        }
        let signal = match signal {
            StopSignal::Term => Signal::SIGTERM,
            StopSignal::Kill => Signal::SIGKILL,
        };
        pidfd_send_signal(&pidfd, pid, signal).map_err(failed("kill container", &id.0))
    }

    async fn remove_container(&self, id: &ContainerId) -> Result<()> {
        let paths = self.container_paths(id);
        if !paths.dir.exists() {
            return Ok(());
        }
        let meta = state::read_json::<ContainerMeta>(&paths.meta())
            .map_err(failed("remove container", &id.0))?;
        if paths.pid().exists() && !paths.exited().exists() {
            self.kill_container(id, StopSignal::Kill).await?;
            self.wait_for_exit(&paths)
                .await
                .map_err(failed("remove container", &id.0))?;
        }
        // The helper deletes libcontainer's state and the cgroups after recording the
        // exit, and its mount namespace holds the root file system: wait for it to
        // finish, and clean up after it when it died first.
        if let Some(shim) =
            state::read_pid(&paths.shim_pid()).map_err(failed("remove container", &id.0))?
        {
            wait_gone(shim, EXIT_WAIT).await;
        }
        let root = self.libcontainer_root();
        if root.join(&id.0).exists() {
            let args = vec![
                OsStr::new("--id"),
                OsStr::new(&id.0),
                OsStr::new("--root"),
                root.as_os_str(),
            ];
            self.shim("delete", args)
                .await
                .map_err(failed("remove container", &id.0))?;
        }
        let rootfs = self.container_rootfs(id);
        let dir = paths.dir.clone();
        let log = meta.map(|m| m.log_path);
        tokio::task::spawn_blocking(
            move || -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
                rootfs.remove()?;
                if let Some(log) = log {
                    // The live log and its rotated pieces.
                    let mut files = crate::shim::log::rotated_files(&log);
                    files.push(log);
                    for file in files {
                        match std::fs::remove_file(&file) {
                            Ok(()) => {}
                            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                            Err(source) => return Err(io_error(&file)(source).into()),
                        }
                    }
                }
                Ok(remove_dir(&dir)?)
            },
        )
        .await
        .map_err(ShimError::Join)
        .map_err(failed("remove container", &id.0))?
        .map_err(|source| Error::Failed {
            operation: "remove container",
            id: id.0.clone(),
            source,
        })
    }

    async fn container_status(&self, id: &ContainerId) -> Result<ContainerState> {
        self.container_meta(id)?;
        let paths = self.container_paths(id);
        let started = state::read_json::<Started>(&paths.started())
            .map_err(failed("read container state", &id.0))?;
        let mut exited = state::read_json::<Exited>(&paths.exited())
            .map_err(failed("read container state", &id.0))?;
        if exited.is_none() {
            let Some(started) = started.as_ref() else {
                return Ok(ContainerState::Created);
            };
            if alive(started.pid) {
                return Ok(ContainerState::Running {
                    started_at: started.started_at,
                });
            }
            exited = state::read_json::<Exited>(&paths.exited())
                .map_err(failed("read container state", &id.0))?;
            let helper = state::read_pid(&paths.shim_pid())
                .map_err(failed("read container state", &id.0))?;
            if exited.is_none() && helper.is_some_and(alive) {
                // Exited a moment ago; the helper is about to record it.
                return Ok(ContainerState::Running {
                    started_at: started.started_at,
                });
            }
            if exited.is_none() {
                // The helper died without recording the exit: the container is lost.
                return Ok(ContainerState::Exited {
                    exit_code: 137,
                    reason: "ContainerStatusUnknown".into(),
                    started_at: Some(started.started_at),
                    finished_at: k8s_openapi::chrono::Utc::now(),
                });
            }
        }
        let exited = exited.expect("checked above");
        Ok(ContainerState::Exited {
            exit_code: exited.exit_code,
            reason: if exited.oom_killed {
                "OOMKilled".into()
            } else {
                ContainerState::exit_reason(exited.exit_code).into()
            },
            started_at: started.map(|s| s.started_at),
            finished_at: exited.finished_at,
        })
    }

    async fn exec_sync(
        &self,
        id: &ContainerId,
        command: &[String],
        timeout: Duration,
    ) -> Result<ExecOutput> {
        let request = ExecRequest {
            command: command.to_vec(),
            stdin: false,
            tty: false,
            size: None,
        };
        let mut process = self.exec(id, &request).await?;
        let stdout = process.stdout.take();
        let stderr = process.stderr.take();
        let run = async {
            let output = exec::collect_output(stdout, stderr, EXEC_SYNC_OUTPUT_LIMIT).await;
            (output, process.wait().await)
        };
        let finished = tokio::time::timeout(timeout, run).await;
        match finished {
            Ok((output, Ok(exit_code))) => Ok(ExecOutput { exit_code, output }),
            Ok((_, Err(err))) => Err(failed("exec in", &id.0)(err)),
            Err(_) => {
                process.kill();
                Err(Error::Timeout {
                    id: id.0.clone(),
                    timeout,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::ImageRef;
    use super::*;

    fn container(name: &str, attempt: u32) -> ContainerConfig {
        let image = ImageRef {
            image: "busybox".into(),
            image_id: "busybox@sha256:x".into(),
        };
        ContainerConfig {
            attempt,
            ..ContainerConfig::new(name, image, &[])
        }
    }

    #[test]
    fn ids_are_short_safe_and_unique_per_pod_and_attempt() {
        let pod = |uid: &str| SandboxConfig {
            pod_uid: uid.into(),
            namespace: "default".into(),
            name: "a-very-long-pod-name-that-goes-on-and-on".into(),
            hostname: "h".into(),
        };
        let first = sandbox_id(&pod("uid-1"));
        assert_ne!(first, sandbox_id(&pod("uid-2")));
        assert_eq!(first, sandbox_id(&pod("uid-1")));
        let c0 = container_id(&first, &container("app", 0));
        let c1 = container_id(&first, &container("app", 1));
        assert_ne!(c0, c1);
        assert!(c1.0.len() <= 60, "{}", c1.0);
        assert!(c1
            .0
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c)));
        assert_eq!(sanitize("a/b c", 10), "a-b-c");
    }

    #[test]
    fn liveness_sees_this_process_and_not_a_free_pid() {
        assert!(alive(std::process::id() as i32));
        assert!(!alive(i32::MAX));
    }
}
