//! The container runtime as pod workers see it: the [`ContainerRuntime`] trait, the
//! values that cross it, and its implementations — [`LocalRuntime`] (the built-in
//! runtime) and [`fake::FakeRuntime`] (a recording fake for tests).
//!
//! The built-in runtime's parts: [`image`] (pull, verify, content-addressed layer store),
//! [`layer`] (tar unpacking with overlay whiteouts), [`rootfs`] (the overlay mount),
//! [`mountpoints`] (the shared layer holding the mount points),
//! [`container`] (the OCI spec of a container) and [`state`] (the files through which
//! the agent and its [`crate::shim`] helpers talk); [`exec`] runs commands in running
//! containers and [`logs`] reads their CRI logs; [`host_cgroups`] makes the host's cgroup
//! moves cheap; [`tmpfs`] keeps the runtime's bookkeeping (and, when asked, the
//! writable layers and logs) in memory; [`spawner`] forks the helpers from one
//! pre-started process; [`oneshot`] runs one container to its end (`RUN` of an image
//! build).

use std::future::Future;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::chrono::{DateTime, Utc};

pub mod container;
pub mod exec;
pub mod fake;
pub mod host_cgroups;
pub mod image;
pub mod layer;
pub mod local;
pub mod logs;
pub mod mountpoints;
pub mod oneshot;
pub mod rootfs;
pub mod seccomp;
pub mod spawner;
pub mod state;
pub mod tmpfs;

pub use local::{LocalRuntime, LocalRuntimeConfig, LogRotation};

/// What a runtime operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The registry or the image store refused the image; `message` is what they said.
    #[error("failed to pull image {image:?}: {message}")]
    ImagePull { image: String, message: String },
    /// The image is not present and the pull policy forbids pulling it.
    #[error("container image {image:?} is not present with pull policy of Never")]
    ImageNeverPull { image: String },
    #[error("container {id} not found")]
    ContainerNotFound { id: String },
    #[error("sandbox {id} not found")]
    SandboxNotFound { id: String },
    /// A command run in a container did not finish in time.
    #[error("command in container {id} timed out after {timeout:?}")]
    Timeout { id: String, timeout: Duration },
    /// The operation exists in the interface but this runtime does not implement it yet.
    #[error("{operation} is not implemented by the {runtime} runtime yet")]
    Unsupported {
        runtime: &'static str,
        operation: &'static str,
    },
    /// A runtime step failed; `source` says why.
    #[error("failed to {operation} {id}")]
    Failed {
        operation: &'static str,
        id: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// When to pull an image (`imagePullPolicy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

impl PullPolicy {
    /// The container's policy, defaulted as Kubernetes does: `Always` for a `:latest` or
    /// untagged image without a digest, `IfNotPresent` otherwise.
    pub fn of(policy: Option<&str>, image: &str) -> Self {
        match policy {
            Some("Always") => PullPolicy::Always,
            Some("Never") => PullPolicy::Never,
            Some("IfNotPresent") => PullPolicy::IfNotPresent,
            _ => {
                if image.contains('@') {
                    return PullPolicy::IfNotPresent;
                }
                let last = image.rsplit('/').next().unwrap_or(image);
                match last.split_once(':') {
                    None => PullPolicy::Always,
                    Some((_, "latest")) => PullPolicy::Always,
                    Some(_) => PullPolicy::IfNotPresent,
                }
            }
        }
    }
}

/// An image present on the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// The reference the pod asked for (`registry/repo:tag`).
    pub image: String,
    /// Its resolved identity, reported as `imageID` (`repo@sha256:…`).
    pub image_id: String,
}

/// What a pod sandbox is created from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxConfig {
    pub pod_uid: String,
    pub namespace: String,
    pub name: String,
    /// The UTS hostname of the pod (`spec.hostname`, default the pod name).
    pub hostname: String,
}

/// The runtime's handle on a pod sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SandboxId(pub String);

/// What the runtime knows of a running sandbox.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SandboxStatus {
    /// The sandbox's network namespace (`/proc/<pid>/ns/net` of its pause process);
    /// `None` when the runtime has no such file (the fake).
    pub netns: Option<PathBuf>,
    /// The pod's IP, once the pod network gave it one.
    pub ip: Option<IpAddr>,
}

/// What a command run to completion in a container produced (exec probes, hooks).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecOutput {
    pub exit_code: i32,
    /// stdout and stderr, interleaved as written, cut at a size the runtime chooses.
    pub output: Vec<u8>,
}

/// Resource limits of one container, already converted to kernel units.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resources {
    /// cgroup CPU shares from the CPU request (kubelet: milliCPU × 1024 / 1000, min 2).
    pub cpu_shares: Option<u64>,
    /// CFS quota in µs per 100 ms period from the CPU limit.
    pub cpu_quota: Option<i64>,
    /// Memory limit in bytes.
    pub memory_limit: Option<i64>,
}

/// What a container is created from: the pod's container spec with its image resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerConfig {
    pub name: String,
    pub image: ImageRef,
    /// `command` of the container spec; empty means the image's Entrypoint.
    pub command: Vec<String>,
    /// `args` of the container spec; empty means the image's Cmd (when no command).
    pub args: Vec<String>,
    /// Environment in order; these override the image's Env.
    pub env: Vec<(String, String)>,
    pub working_dir: Option<String>,
    pub run_as_user: Option<i64>,
    pub run_as_group: Option<i64>,
    pub read_only_root_filesystem: bool,
    /// Privileges: capabilities, seccomp, privileged mode.
    pub security: Security,
    pub resources: Resources,
    /// Volumes bind-mounted into the container, in `volumeMounts` order.
    pub mounts: Vec<Mount>,
    /// How many times this container was started before in this pod (0 first).
    pub attempt: u32,
}

impl ContainerConfig {
    /// A first attempt of `image` running `command`, with nothing else set.
    pub fn new(name: &str, image: ImageRef, command: &[&str]) -> Self {
        ContainerConfig {
            name: name.into(),
            image,
            command: command.iter().map(|c| c.to_string()).collect(),
            args: vec![],
            env: vec![],
            working_dir: None,
            run_as_user: None,
            run_as_group: None,
            read_only_root_filesystem: false,
            security: Security::default(),
            resources: Resources::default(),
            mounts: vec![],
            attempt: 0,
        }
    }
}

/// A container's privileges, from its `securityContext` (and the pod's).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Security {
    /// `privileged: true`: every capability, no seccomp, no masked or read-only paths.
    pub privileged: bool,
    /// `capabilities.add`, as Kubernetes names them (`NET_ADMIN`, `CAP_` optional).
    pub capabilities_add: Vec<String>,
    /// `capabilities.drop` (`ALL` drops every default capability).
    pub capabilities_drop: Vec<String>,
    /// `allowPrivilegeEscalation: false` sets no_new_privs.
    pub no_new_privileges: bool,
    /// The seccomp profile to apply.
    pub seccomp: SeccompProfile,
}

/// `seccompProfile.type`: the runtime's default profile unless the pod says otherwise.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum SeccompProfile {
    #[default]
    RuntimeDefault,
    Unconfined,
}

/// A host path bind-mounted into a container (a volume, or a `subPath` of one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub host_path: PathBuf,
    /// Absolute path inside the container (`mountPath`).
    pub container_path: String,
    pub read_only: bool,
}

/// The runtime's handle on a container.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ContainerId(pub String);

/// A container the runtime knows about, as listed by
/// [`ContainerRuntime::list_containers`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerInfo {
    pub id: ContainerId,
    /// The pod's container name.
    pub name: String,
    pub attempt: u32,
}

/// A signal the runtime can send to a container's main process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopSignal {
    /// SIGTERM: please stop.
    Term,
    /// SIGKILL: stop now.
    Kill,
}

/// Where a container is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerState {
    /// Created, not started.
    Created,
    Running {
        started_at: DateTime<Utc>,
    },
    Exited {
        exit_code: i32,
        /// `Completed`, `Error` or `OOMKilled`.
        reason: String,
        started_at: Option<DateTime<Utc>>,
        finished_at: DateTime<Utc>,
    },
}

impl ContainerState {
    /// The Kubernetes reason for an exit code: `Completed` for 0, `Error` otherwise.
    pub fn exit_reason(exit_code: i32) -> &'static str {
        if exit_code == 0 {
            "Completed"
        } else {
            "Error"
        }
    }
}

/// The side effects a pod worker needs from a container runtime.
///
/// Implementations do their blocking work in `spawn_blocking`; every method is safe to
/// call again after a failure.
pub trait ContainerRuntime: Send + Sync + 'static {
    /// Whether `image` is in the node's image store already, so that an `IfNotPresent`
    /// pull need not ask the registry (`false` when the store cannot tell).
    fn image_present(&self, image: &str) -> impl Future<Output = bool> + Send;

    /// Makes `image` present on the node according to `policy`.
    fn pull_image(
        &self,
        image: &str,
        policy: PullPolicy,
    ) -> impl Future<Output = Result<ImageRef>> + Send;

    /// Creates the sandbox holding the pod's network, IPC and UTS namespaces.
    fn create_sandbox(
        &self,
        config: &SandboxConfig,
    ) -> impl Future<Output = Result<SandboxId>> + Send;

    /// The sandbox's network namespace and pod IP.
    fn sandbox_status(&self, id: &SandboxId) -> impl Future<Output = Result<SandboxStatus>> + Send;

    /// Removes a sandbox whose containers are all removed.
    fn remove_sandbox(&self, id: &SandboxId) -> impl Future<Output = Result<()>> + Send;

    /// Creates a container in `sandbox`; it does not run until started.
    fn create_container(
        &self,
        sandbox: &SandboxId,
        config: &ContainerConfig,
    ) -> impl Future<Output = Result<ContainerId>> + Send;

    /// The containers of `sandbox` that exist (running or not), in no particular order;
    /// an agent that restarted finds its containers again through this.
    fn list_containers(
        &self,
        sandbox: &SandboxId,
    ) -> impl Future<Output = Result<Vec<ContainerInfo>>> + Send;

    /// Starts a created container.
    fn start_container(&self, id: &ContainerId) -> impl Future<Output = Result<()>> + Send;

    /// Sends `signal` to the container's main process (nothing when it already exited).
    fn kill_container(
        &self,
        id: &ContainerId,
        signal: StopSignal,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Removes an exited container and its state.
    fn remove_container(&self, id: &ContainerId) -> impl Future<Output = Result<()>> + Send;

    /// The container's current state.
    fn container_status(
        &self,
        id: &ContainerId,
    ) -> impl Future<Output = Result<ContainerState>> + Send;

    /// Runs `command` in the running container and waits for it, at most `timeout`
    /// (then it is killed and [`Error::Timeout`] returned). For exec probes and hooks.
    fn exec_sync(
        &self,
        id: &ContainerId,
        command: &[String],
        timeout: Duration,
    ) -> impl Future<Output = Result<ExecOutput>> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_policy_defaults_like_kubernetes() {
        let cases = [
            ("explicit", Some("Never"), "busybox:1.0", PullPolicy::Never),
            ("untagged", None, "busybox", PullPolicy::Always),
            ("latest", None, "busybox:latest", PullPolicy::Always),
            ("tagged", None, "busybox:1.36", PullPolicy::IfNotPresent),
            (
                "port, untagged",
                None,
                "127.0.0.1:5000/busybox",
                PullPolicy::Always,
            ),
            (
                "port, tagged",
                None,
                "127.0.0.1:5000/busybox:1",
                PullPolicy::IfNotPresent,
            ),
            (
                "digest",
                None,
                "busybox@sha256:abc",
                PullPolicy::IfNotPresent,
            ),
        ];
        for (name, policy, image, want) in cases {
            assert_eq!(PullPolicy::of(policy, image), want, "{name}");
        }
    }
}
