//! One pod's worker: brings the runtime in line with the pod spec (sandbox, init
//! containers in order, app containers, restart policy with CrashLoopBackOff), reports
//! status, and on deletion stops the containers gracefully and removes the pod.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, EnvVar, Pod, PodStatus};
use k8s_openapi::chrono::Utc;
use rkube_client::{api, Api, Client, DeleteParams};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::backoff::{CrashLoopBackOff, Decision};
use crate::runtime::{
    self, ContainerConfig, ContainerId, ContainerRuntime, ContainerState, PullPolicy, Resources,
    SandboxConfig, SandboxId, StopSignal,
};
use crate::status::{self, ContainerObservation, PodObservation, Waiting};

/// Grace period when neither the deletion nor the spec names one (Kubernetes' default).
pub const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(30);
/// How often a stopping container is looked at while its grace period runs.
const STOP_POLL: Duration = Duration::from_millis(100);

/// What writing to the apiserver can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to write the status of pod {pod}")]
    WriteStatus {
        pod: String,
        #[source]
        source: api::Error,
    },
    #[error("failed to delete pod {pod}")]
    Delete {
        pod: String,
        #[source]
        source: api::Error,
    },
}

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The writes a worker makes to the apiserver, behind a trait so that workers can be
/// unit-tested with a recording fake.
pub trait PodApi: Send + Sync + 'static {
    /// Writes `status` as the pod's status.
    fn write_status(
        &self,
        pod: &Pod,
        status: &PodStatus,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Removes the pod object for good (grace period 0), once its containers are gone.
    fn delete(&self, pod: &Pod) -> impl Future<Output = Result<()>> + Send;
}

/// [`PodApi`] through the apiserver.
#[derive(Debug, Clone)]
pub struct ClientPodApi {
    client: Client,
}

impl ClientPodApi {
    pub fn new(client: Client) -> Self {
        ClientPodApi { client }
    }

    fn api(&self, pod: &Pod) -> Api<Pod> {
        Api::namespaced(
            self.client.clone(),
            pod.metadata.namespace.as_deref().unwrap_or("default"),
        )
    }
}

impl PodApi for ClientPodApi {
    async fn write_status(&self, pod: &Pod, status: &PodStatus) -> Result<()> {
        let pods = self.api(pod);
        let name = pod.metadata.name.clone().unwrap_or_default();
        let error = |source| Error::WriteStatus {
            pod: key(pod),
            source,
        };
        let mut object = pod.clone();
        object.status = Some(status.clone());
        match pods.replace_status(&name, &object).await {
            Ok(_) => Ok(()),
            Err(err) if err.is_conflict() => {
                // Someone else wrote the pod since we saw it: write over the fresh copy.
                let mut fresh = pods.get(&name).await.map_err(error)?;
                fresh.status = Some(status.clone());
                pods.replace_status(&name, &fresh)
                    .await
                    .map(|_| ())
                    .map_err(error)
            }
            Err(err) => Err(error(err)),
        }
    }

    async fn delete(&self, pod: &Pod) -> Result<()> {
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            precondition_uid: pod.metadata.uid.clone(),
            ..Default::default()
        };
        let name = pod.metadata.name.clone().unwrap_or_default();
        match self.api(pod).delete(&name, &params).await {
            Ok(_) => Ok(()),
            Err(err) if err.is_not_found() => Ok(()),
            Err(source) => Err(Error::Delete {
                pod: key(pod),
                source,
            }),
        }
    }
}

/// The latest word on a pod, sent to its worker.
#[derive(Debug, Clone)]
pub struct PodUpdate {
    pub pod: Arc<Pod>,
    /// The pod object no longer exists in the apiserver.
    pub removed: bool,
}

/// `namespace/name` of a pod.
pub fn key(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or("default"),
        pod.metadata.name.as_deref().unwrap_or("")
    )
}

/// One container as the worker tracks it.
#[derive(Debug, Default)]
struct Tracked {
    obs: ContainerObservation,
    id: Option<ContainerId>,
    /// The instance before the current one, kept for its logs until the next restart.
    previous_id: Option<ContainerId>,
    attempts: u32,
    crash_backoff: CrashLoopBackOff,
    pull_backoff: CrashLoopBackOff,
    /// Wall-clock start of the current instance, to measure how long it ran.
    started: Option<Instant>,
}

/// Whether the worker goes on after a sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    Continue,
    Done,
}

/// The worker of one pod.
pub struct PodWorker<R, A> {
    runtime: Arc<R>,
    api: Arc<A>,
    host_ip: IpAddr,
    resync: Duration,
    key: String,
    sandbox: Option<SandboxId>,
    containers: HashMap<String, Tracked>,
    start_time: Option<k8s_openapi::chrono::DateTime<Utc>>,
    written: Option<PodStatus>,
}

impl<R: ContainerRuntime, A: PodApi> PodWorker<R, A> {
    pub fn new(runtime: Arc<R>, api: Arc<A>, host_ip: IpAddr, resync: Duration, pod: &Pod) -> Self {
        PodWorker {
            runtime,
            api,
            host_ip,
            resync,
            key: key(pod),
            sandbox: None,
            containers: HashMap::new(),
            start_time: None,
            written: pod.status.clone(),
        }
    }

    /// Syncs on every update and every `resync` until the pod is gone or `shutdown`.
    /// On shutdown the containers keep running.
    pub async fn run(
        mut self,
        mut updates: watch::Receiver<PodUpdate>,
        shutdown: CancellationToken,
    ) {
        loop {
            let update = updates.borrow_and_update().clone();
            if self.sync(&update).await == Next::Done {
                return;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                changed = updates.changed() => {
                    if changed.is_err() {
                        // The dispatcher is gone: nothing will tell us about this pod again.
                        return;
                    }
                }
                _ = tokio::time::sleep(self.resync) => {}
            }
        }
    }

    /// One pass: terminate if deleted, else start what should run and report status.
    async fn sync(&mut self, update: &PodUpdate) -> Next {
        let pod = &update.pod;
        if update.removed || pod.metadata.deletion_timestamp.is_some() {
            let grace = if update.removed {
                Duration::ZERO
            } else {
                grace_period(pod)
            };
            self.terminate(grace).await;
            if !update.removed {
                if let Err(err) = self.api.delete(pod).await {
                    warn!(pod = %self.key, error = %err, "failed to remove pod; retrying");
                    return Next::Continue;
                }
                info!(pod = %self.key, "pod removed");
            }
            return Next::Done;
        }
        let Some(spec) = pod.spec.as_ref() else {
            return Next::Continue;
        };
        self.start_time.get_or_insert_with(Utc::now);
        self.refresh().await;
        let phase = self.written.as_ref().and_then(|s| s.phase.as_deref());
        if !matches!(phase, Some("Succeeded") | Some("Failed")) {
            self.converge(pod, spec).await;
        }
        self.report(pod, spec).await;
        Next::Continue
    }

    /// Reads the state of every current container from the runtime.
    async fn refresh(&mut self) {
        let now = Instant::now();
        for tracked in self.containers.values_mut() {
            let Some(id) = tracked.id.as_ref() else {
                continue;
            };
            match self.runtime.container_status(id).await {
                Ok(state) => {
                    let was_exited =
                        matches!(tracked.obs.state, Some(ContainerState::Exited { .. }));
                    if let ContainerState::Exited { exit_code, .. } = &state {
                        if !was_exited {
                            let ran = tracked
                                .started
                                .map(|s| now.saturating_duration_since(s))
                                .unwrap_or_default();
                            tracked.crash_backoff.exited(now, ran);
                            info!(pod = %self.key, container = %tracked.obs.name, exit_code, "container exited");
                        }
                    }
                    tracked.obs.state = Some(state);
                }
                Err(err) => {
                    warn!(pod = %self.key, container = %tracked.obs.name, error = %err, "failed to read container state")
                }
            }
        }
    }

    /// Creates the sandbox, runs init containers one at a time, then the app containers.
    async fn converge(&mut self, pod: &Pod, spec: &k8s_openapi::api::core::v1::PodSpec) {
        let sandbox = match &self.sandbox {
            Some(id) => id.clone(),
            None => {
                let config = SandboxConfig {
                    pod_uid: pod.metadata.uid.clone().unwrap_or_default(),
                    namespace: pod.metadata.namespace.clone().unwrap_or_default(),
                    name: pod.metadata.name.clone().unwrap_or_default(),
                    hostname: spec
                        .hostname
                        .clone()
                        .or_else(|| pod.metadata.name.clone())
                        .unwrap_or_default(),
                };
                match self.runtime.create_sandbox(&config).await {
                    Ok(id) => {
                        info!(pod = %self.key, sandbox = %id.0, "created sandbox");
                        self.sandbox = Some(id.clone());
                        id
                    }
                    Err(err) => {
                        warn!(pod = %self.key, error = %err, "failed to create sandbox");
                        return;
                    }
                }
            }
        };
        let policy = spec
            .restart_policy
            .as_deref()
            .unwrap_or("Always")
            .to_string();
        for init in spec.init_containers.iter().flatten() {
            let tracked = self
                .containers
                .entry(init.name.clone())
                .or_insert_with(|| Tracked {
                    obs: ContainerObservation::new(init),
                    ..Default::default()
                });
            match (&tracked.id, &tracked.obs.state) {
                (Some(_), Some(ContainerState::Exited { exit_code: 0, .. })) => continue,
                (Some(_), Some(ContainerState::Exited { .. })) if policy == "Never" => return,
                (Some(_), Some(ContainerState::Exited { .. })) | (None, _) => {
                    self.start(pod, &sandbox, init).await;
                    return;
                }
                (Some(_), _) => return,
            }
        }
        for container in &spec.containers {
            let tracked = self
                .containers
                .entry(container.name.clone())
                .or_insert_with(|| Tracked {
                    obs: ContainerObservation::new(container),
                    ..Default::default()
                });
            let wanted = match (&tracked.id, &tracked.obs.state) {
                (None, _) => true,
                (Some(_), Some(ContainerState::Exited { exit_code, .. })) => {
                    match policy.as_str() {
                        "Always" => true,
                        "OnFailure" => *exit_code != 0,
                        _ => false,
                    }
                }
                _ => false,
            };
            if wanted {
                self.start(pod, &sandbox, container).await;
            }
        }
    }

    /// Starts (or restarts) one container, honouring the crash and pull back-offs.
    async fn start(&mut self, pod: &Pod, sandbox: &SandboxId, spec: &Container) {
        let now = Instant::now();
        let key = self.key.clone();
        let Some(tracked) = self.containers.get_mut(&spec.name) else {
            return;
        };
        if tracked.id.is_some() {
            if let Decision::Wait { delay, .. } = tracked.crash_backoff.decide(now) {
                tracked.obs.waiting = Some(Waiting {
                    reason: "CrashLoopBackOff".into(),
                    message: Some(format!(
                        "back-off {}s restarting failed container={} pod={}_{}({})",
                        delay.as_secs(),
                        spec.name,
                        pod.metadata.name.as_deref().unwrap_or(""),
                        pod.metadata.namespace.as_deref().unwrap_or(""),
                        pod.metadata.uid.as_deref().unwrap_or(""),
                    )),
                });
                return;
            }
        }

        // Image.
        let image = spec.image.clone().unwrap_or_default();
        let pulling_after_failure = matches!(
            tracked.obs.waiting.as_ref().map(|w| w.reason.as_str()),
            Some("ErrImagePull") | Some("ImagePullBackOff")
        );
        if pulling_after_failure {
            if let Decision::Wait { .. } = tracked.pull_backoff.decide(now) {
                let last = tracked.obs.waiting.as_ref().and_then(|w| w.message.clone());
                tracked.obs.waiting = Some(Waiting {
                    reason: "ImagePullBackOff".into(),
                    message: Some(match last {
                        Some(m) if m.starts_with("Back-off") => m,
                        Some(m) => format!("Back-off pulling image {image:?}: {m}"),
                        None => format!("Back-off pulling image {image:?}"),
                    }),
                });
                return;
            }
        }
        let policy = PullPolicy::of(spec.image_pull_policy.as_deref(), &image);
        let image_ref = match self.runtime.pull_image(&image, policy).await {
            Ok(image_ref) => image_ref,
            Err(err) => {
                let reason = match err {
                    runtime::Error::ImageNeverPull { .. } => "ErrImageNeverPull",
                    _ => "ErrImagePull",
                };
                warn!(pod = %key, container = %spec.name, image = %image, error = %err, "failed to pull image");
                tracked.pull_backoff.exited(now, Duration::ZERO);
                tracked.obs.waiting = Some(Waiting {
                    reason: reason.into(),
                    message: Some(err.to_string()),
                });
                return;
            }
        };
        tracked.pull_backoff = CrashLoopBackOff::default();
        tracked.obs.image_id = Some(image_ref.image_id.clone());

        let env = match container_env(pod, spec, self.host_ip) {
            Ok(env) => env,
            Err(message) => {
                tracked.obs.waiting = Some(Waiting {
                    reason: "CreateContainerConfigError".into(),
                    message: Some(message),
                });
                return;
            }
        };
        let security = spec.security_context.as_ref();
        let pod_security = pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
        let config = ContainerConfig {
            name: spec.name.clone(),
            image: image_ref,
            command: spec.command.clone().unwrap_or_default(),
            args: spec.args.clone().unwrap_or_default(),
            env,
            working_dir: spec.working_dir.clone(),
            run_as_user: security
                .and_then(|s| s.run_as_user)
                .or_else(|| pod_security.and_then(|s| s.run_as_user)),
            run_as_group: security
                .and_then(|s| s.run_as_group)
                .or_else(|| pod_security.and_then(|s| s.run_as_group)),
            read_only_root_filesystem: security
                .and_then(|s| s.read_only_root_filesystem)
                .unwrap_or(false),
            resources: resources(spec),
            attempt: tracked.attempts,
        };
        let id = match self.runtime.create_container(sandbox, &config).await {
            Ok(id) => id,
            Err(err) => {
                warn!(pod = %key, container = %spec.name, error = %err, "failed to create container");
                tracked.obs.waiting = Some(Waiting {
                    reason: "CreateContainerError".into(),
                    message: Some(err.to_string()),
                });
                return;
            }
        };
        tracked.attempts += 1;
        // The instance before the previous one is no longer needed, not even for its logs.
        if let Some(old) = tracked.previous_id.take() {
            if let Err(err) = self.runtime.remove_container(&old).await {
                warn!(pod = %key, container = %spec.name, error = %err, "failed to remove old container");
            }
        }
        if let Some(previous) = tracked.id.replace(id.clone()) {
            tracked.previous_id = Some(previous);
            tracked.obs.last_terminated = tracked.obs.state.take();
            tracked.obs.restart_count += 1;
        }
        tracked.obs.container_id = Some(id.0.clone());
        tracked.obs.state = Some(ContainerState::Created);
        match self.runtime.start_container(&id).await {
            Ok(()) => {
                tracked.obs.waiting = None;
                tracked.started = Some(now);
                if let Ok(state) = self.runtime.container_status(&id).await {
                    if matches!(state, ContainerState::Exited { .. }) {
                        // Exited at once: the back-off counts this exit as any other.
                        tracked.crash_backoff.exited(now, Duration::ZERO);
                    }
                    tracked.obs.state = Some(state);
                }
                info!(pod = %key, container = %spec.name, id = %id.0, attempt = config.attempt, "started container");
            }
            Err(err) => {
                warn!(pod = %key, container = %spec.name, error = %err, "failed to start container");
                tracked.obs.waiting = Some(Waiting {
                    reason: "RunContainerError".into(),
                    message: Some(err.to_string()),
                });
            }
        }
    }

    /// Writes the status when it changed.
    async fn report(&mut self, pod: &Pod, spec: &k8s_openapi::api::core::v1::PodSpec) {
        let observe = |list: &[Container]| -> Vec<ContainerObservation> {
            list.iter()
                .map(|c| {
                    self.containers
                        .get(&c.name)
                        .map(|t| t.obs.clone())
                        .unwrap_or_else(|| ContainerObservation::new(c))
                })
                .collect()
        };
        let obs = PodObservation {
            init_containers: observe(spec.init_containers.as_deref().unwrap_or_default()),
            containers: observe(&spec.containers),
            host_ip: Some(self.host_ip),
            start_time: self.start_time,
        };
        let status = status::pod_status(pod, &obs, self.written.as_ref(), Utc::now());
        if self.written.as_ref() == Some(&status) {
            return;
        }
        match self.api.write_status(pod, &status).await {
            Ok(()) => {
                debug!(pod = %self.key, phase = status.phase.as_deref().unwrap_or(""), "wrote pod status");
                self.written = Some(status);
            }
            Err(err) => warn!(pod = %self.key, error = %err, "failed to write pod status"),
        }
    }

    /// Stops every container (SIGTERM, up to `grace`, then SIGKILL) and removes them and
    /// the sandbox.
    async fn terminate(&mut self, grace: Duration) {
        let running: Vec<(String, ContainerId)> = self
            .containers
            .iter()
            .filter_map(|(name, t)| t.id.clone().map(|id| (name.clone(), id)))
            .collect();
        let mut alive = Vec::new();
        for (name, id) in running {
            if matches!(
                self.runtime.container_status(&id).await,
                Ok(ContainerState::Running { .. })
            ) {
                alive.push((name, id));
            }
        }
        if !alive.is_empty() {
            info!(pod = %self.key, grace_seconds = grace.as_secs(), "stopping containers");
        }
        if !grace.is_zero() {
            for (name, id) in &alive {
                if let Err(err) = self.runtime.kill_container(id, StopSignal::Term).await {
                    warn!(pod = %self.key, container = %name, error = %err, "failed to send SIGTERM");
                }
            }
            let deadline = Instant::now() + grace;
            while !alive.is_empty() && Instant::now() < deadline {
                tokio::time::sleep(STOP_POLL.min(deadline - Instant::now())).await;
                let mut still = Vec::new();
                for (name, id) in alive {
                    if matches!(
                        self.runtime.container_status(&id).await,
                        Ok(ContainerState::Running { .. })
                    ) {
                        still.push((name, id));
                    }
                }
                alive = still;
            }
        }
        for (name, id) in &alive {
            warn!(pod = %self.key, container = %name, "grace period over; killing");
            if let Err(err) = self.runtime.kill_container(id, StopSignal::Kill).await {
                warn!(pod = %self.key, container = %name, error = %err, "failed to send SIGKILL");
            }
        }
        for tracked in self.containers.values_mut() {
            for id in [tracked.previous_id.take(), tracked.id.take()]
                .into_iter()
                .flatten()
            {
                if let Err(err) = self.runtime.remove_container(&id).await {
                    warn!(pod = %self.key, container = %tracked.obs.name, error = %err, "failed to remove container");
                }
            }
        }
        if let Some(sandbox) = self.sandbox.take() {
            if let Err(err) = self.runtime.remove_sandbox(&sandbox).await {
                warn!(pod = %self.key, error = %err, "failed to remove sandbox");
            }
        }
    }
}

/// The grace period of a deleted pod: the deletion's, else the spec's, else 30 s.
fn grace_period(pod: &Pod) -> Duration {
    let seconds = pod
        .metadata
        .deletion_grace_period_seconds
        .or_else(|| {
            pod.spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds)
        })
        .unwrap_or(DEFAULT_GRACE_PERIOD.as_secs() as i64);
    Duration::from_secs(seconds.max(0).unsigned_abs())
}

/// CPU shares, CFS quota and memory limit from the container's requests and limits.
fn resources(spec: &Container) -> Resources {
    let requests = spec.resources.as_ref().and_then(|r| r.requests.as_ref());
    let limits = spec.resources.as_ref().and_then(|r| r.limits.as_ref());
    let cpu_request = requests
        .and_then(|m| status::quantity(m, "cpu"))
        .or_else(|| limits.and_then(|m| status::quantity(m, "cpu")));
    let cpu_limit = limits.and_then(|m| status::quantity(m, "cpu"));
    let memory_limit = limits.and_then(|m| status::quantity(m, "memory"));
    Resources {
        // kubelet's MilliCPUToShares: 1024 shares per CPU, at least 2.
        cpu_shares: cpu_request.map(|m| u64::try_from(m * 1024 / 1000).unwrap_or(u64::MAX).max(2)),
        // kubelet's MilliCPUToQuota with a 100 ms period: 100 µs per milliCPU, at least 1 ms.
        cpu_quota: cpu_limit.map(|m| i64::try_from(m * 100).unwrap_or(i64::MAX).max(1000)),
        memory_limit: memory_limit.map(|m| i64::try_from(m / 1000).unwrap_or(i64::MAX)),
    }
}

/// The container's environment: literal values and `fieldRef`s; the sources that need
/// other objects (ConfigMaps, Secrets, resources) are refused with a message.
fn container_env(
    pod: &Pod,
    spec: &Container,
    host_ip: IpAddr,
) -> std::result::Result<Vec<(String, String)>, String> {
    if spec.env_from.as_ref().is_some_and(|e| !e.is_empty()) {
        return Err("envFrom is not supported by this node agent yet".into());
    }
    let mut env = Vec::new();
    for EnvVar {
        name,
        value,
        value_from,
    } in spec.env.iter().flatten()
    {
        let value = match (value, value_from) {
            (_, Some(source)) => {
                let Some(field) = source.field_ref.as_ref() else {
                    return Err(format!(
                        "env {name}: only value and valueFrom.fieldRef are supported by this node agent yet"
                    ));
                };
                field_value(pod, &field.field_path, host_ip).ok_or_else(|| {
                    format!("env {name}: unsupported fieldPath {:?}", field.field_path)
                })?
            }
            (Some(value), None) => value.clone(),
            (None, None) => String::new(),
        };
        env.push((name.clone(), value));
    }
    Ok(env)
}

/// The value of a downward-API `fieldPath`.
fn field_value(pod: &Pod, path: &str, host_ip: IpAddr) -> Option<String> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    Some(match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.hostIP" => host_ip.to_string(),
        "status.podIP" => pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.clone())
            .unwrap_or_default(),
        _ => {
            let (map, key) = if let Some(rest) = path.strip_prefix("metadata.labels['") {
                (meta.labels.as_ref(), rest.strip_suffix("']")?)
            } else if let Some(rest) = path.strip_prefix("metadata.annotations['") {
                (meta.annotations.as_ref(), rest.strip_suffix("']")?)
            } else {
                return None;
            };
            map.and_then(|m| m.get(key).cloned()).unwrap_or_default()
        }
    })
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::PodSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
    use parking_lot::Mutex;

    use super::*;
    use crate::runtime::fake::{Behavior, Call, FakeRuntime};

    /// One write the worker made to the apiserver.
    #[derive(Debug, Clone, PartialEq)]
    enum Write {
        Status(Box<PodStatus>),
        Delete,
    }

    #[derive(Debug, Default)]
    struct RecordingApi {
        writes: Mutex<Vec<Write>>,
    }

    impl RecordingApi {
        fn last_status(&self) -> PodStatus {
            self.writes
                .lock()
                .iter()
                .rev()
                .find_map(|w| match w {
                    Write::Status(s) => Some((**s).clone()),
                    Write::Delete => None,
                })
                .expect("a status was written")
        }

        fn deleted(&self) -> bool {
            self.writes.lock().contains(&Write::Delete)
        }
    }

    impl PodApi for RecordingApi {
        async fn write_status(&self, _pod: &Pod, status: &PodStatus) -> Result<()> {
            self.writes
                .lock()
                .push(Write::Status(Box::new(status.clone())));
            Ok(())
        }

        async fn delete(&self, _pod: &Pod) -> Result<()> {
            self.writes.lock().push(Write::Delete);
            Ok(())
        }
    }

    /// `Pod::test`-style builder for the worker tests.
    struct TestPod(Pod);

    impl TestPod {
        fn new(name: &str) -> Self {
            TestPod(Pod {
                metadata: ObjectMeta {
                    name: Some(name.into()),
                    namespace: Some("default".into()),
                    uid: Some(format!("uid-{name}")),
                    ..Default::default()
                },
                spec: Some(PodSpec {
                    node_name: Some("n1".into()),
                    ..Default::default()
                }),
                ..Default::default()
            })
        }

        fn spec(&mut self) -> &mut PodSpec {
            self.0.spec.as_mut().expect("spec")
        }

        fn container(mut self, name: &str) -> Self {
            self.spec().containers.push(container(name));
            self
        }

        fn init_container(mut self, name: &str) -> Self {
            self.spec()
                .init_containers
                .get_or_insert_with(Vec::new)
                .push(container(name));
            self
        }

        fn restart_policy(mut self, policy: &str) -> Self {
            self.spec().restart_policy = Some(policy.into());
            self
        }

        fn deleting(mut self, grace_seconds: i64) -> Self {
            self.0.metadata.deletion_timestamp = Some(Time(Utc::now()));
            self.0.metadata.deletion_grace_period_seconds = Some(grace_seconds);
            self
        }

        fn update(&self) -> PodUpdate {
            PodUpdate {
                pod: Arc::new(self.0.clone()),
                removed: false,
            }
        }
    }

    fn container(name: &str) -> Container {
        Container {
            name: name.into(),
            image: Some("reg.local/busybox:1".into()),
            ..Default::default()
        }
    }

    fn worker(
        pod: &TestPod,
    ) -> (
        PodWorker<FakeRuntime, RecordingApi>,
        Arc<FakeRuntime>,
        Arc<RecordingApi>,
    ) {
        let runtime = Arc::new(FakeRuntime::new());
        let api = Arc::new(RecordingApi::default());
        let worker = PodWorker::new(
            runtime.clone(),
            api.clone(),
            "10.0.0.5".parse().expect("ip"),
            Duration::from_secs(1),
            &pod.0,
        );
        (worker, runtime, api)
    }

    fn image() -> String {
        "reg.local/busybox:1".to_string()
    }

    fn container_status<'a>(
        status: &'a PodStatus,
        name: &str,
    ) -> &'a k8s_openapi::api::core::v1::ContainerStatus {
        status
            .container_statuses
            .iter()
            .chain(status.init_container_statuses.iter())
            .flatten()
            .find(|c| c.name == name)
            .expect("container status")
    }

    fn waiting_reason(status: &PodStatus, name: &str) -> Option<String> {
        container_status(status, name)
            .state
            .as_ref()
            .and_then(|s| s.waiting.as_ref())
            .and_then(|w| w.reason.clone())
    }

    #[tokio::test(start_paused = true)]
    async fn runs_init_containers_in_order_then_app_containers() {
        let pod = TestPod::new("web")
            .init_container("init-a")
            .init_container("init-b")
            .container("app");
        let (mut worker, runtime, api) = worker(&pod);
        runtime.set_behavior(
            "init-a",
            Behavior {
                exit_on_start: Some(0),
                ..Default::default()
            },
        );
        runtime.set_behavior(
            "init-b",
            Behavior {
                exit_on_start: Some(0),
                ..Default::default()
            },
        );

        worker.sync(&pod.update()).await;
        assert_eq!(
            runtime.calls(),
            [
                Call::CreateSandbox("web".into()),
                Call::PullImage(image()),
                Call::CreateContainer("init-a".into(), 0),
                Call::StartContainer("init-a".into()),
            ]
        );
        assert_eq!(api.last_status().phase.as_deref(), Some("Pending"));
        runtime.clear_calls();

        worker.sync(&pod.update()).await;
        worker.sync(&pod.update()).await;
        assert_eq!(
            runtime.calls(),
            [
                Call::PullImage(image()),
                Call::CreateContainer("init-b".into(), 0),
                Call::StartContainer("init-b".into()),
                Call::PullImage(image()),
                Call::CreateContainer("app".into(), 0),
                Call::StartContainer("app".into()),
            ]
        );
        let status = api.last_status();
        assert_eq!(status.phase.as_deref(), Some("Running"));
        assert_eq!(status.qos_class.as_deref(), Some("BestEffort"));
        assert_eq!(status.host_ip.as_deref(), Some("10.0.0.5"));
        assert!(status.start_time.is_some());
        let app = container_status(&status, "app");
        assert!(app.ready);
        assert_eq!(app.image_id, "reg.local/busybox:1@sha256:fake");
        assert_eq!(app.container_id.as_deref(), Some("rkube://uid-web-app-0"));
        let ready = status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "Ready")
            .expect("Ready");
        assert_eq!(ready.status, "True");

        // Nothing changes: no calls but state reads, no new status write.
        let writes = api.writes.lock().len();
        runtime.clear_calls();
        worker.sync(&pod.update()).await;
        assert_eq!(runtime.calls(), []);
        assert_eq!(api.writes.lock().len(), writes);
    }

    #[tokio::test(start_paused = true)]
    async fn crashing_container_backs_off_ten_then_twenty_seconds() {
        let pod = TestPod::new("crash").container("app");
        let (mut worker, runtime, api) = worker(&pod);
        runtime.set_behavior(
            "app",
            Behavior {
                exit_on_start: Some(1),
                ..Default::default()
            },
        );

        worker.sync(&pod.update()).await; // first start, exits at once
        worker.sync(&pod.update()).await; // first crash: restarted at once
        let status = api.last_status();
        assert_eq!(container_status(&status, "app").restart_count, 1);

        worker.sync(&pod.update()).await; // second crash: back-off 10 s
        let status = api.last_status();
        assert_eq!(
            waiting_reason(&status, "app").as_deref(),
            Some("CrashLoopBackOff")
        );
        let app = container_status(&status, "app");
        let message = app
            .state
            .as_ref()
            .and_then(|s| s.waiting.as_ref())
            .and_then(|w| w.message.clone());
        assert!(message.is_some_and(|m| m.starts_with("back-off 10s")));
        let last = app
            .last_state
            .as_ref()
            .and_then(|s| s.terminated.as_ref())
            .expect("lastState");
        assert_eq!(last.exit_code, 1);
        assert_eq!(status.phase.as_deref(), Some("Running"));

        tokio::time::advance(Duration::from_secs(9)).await;
        worker.sync(&pod.update()).await;
        assert_eq!(container_status(&api.last_status(), "app").restart_count, 1);
        tokio::time::advance(Duration::from_secs(1)).await;
        worker.sync(&pod.update()).await;
        assert_eq!(container_status(&api.last_status(), "app").restart_count, 2);

        worker.sync(&pod.update()).await;
        let status = api.last_status();
        let app = container_status(&status, "app");
        let message = app
            .state
            .as_ref()
            .and_then(|s| s.waiting.as_ref())
            .and_then(|w| w.message.clone());
        assert!(
            message.is_some_and(|m| m.starts_with("back-off 20s")),
            "{app:?}"
        );

        // The attempts so far, and the dead instance before the previous one is removed.
        let creates: Vec<Call> = runtime
            .calls()
            .into_iter()
            .filter(|c| matches!(c, Call::CreateContainer(..) | Call::RemoveContainer(..)))
            .collect();
        assert_eq!(
            creates,
            [
                Call::CreateContainer("app".into(), 0),
                Call::CreateContainer("app".into(), 1),
                Call::CreateContainer("app".into(), 2),
                Call::RemoveContainer("app".into()),
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn restart_policy_decides_the_phase() {
        let cases = [
            ("Never", 1, "Failed", 1),
            ("Never", 0, "Succeeded", 1),
            ("OnFailure", 0, "Succeeded", 1),
            ("OnFailure", 1, "Running", 2),
            ("Always", 0, "Running", 2),
        ];
        for (policy, code, phase, starts) in cases {
            let pod = TestPod::new("job").container("app").restart_policy(policy);
            let (mut worker, runtime, api) = worker(&pod);
            runtime.set_behavior(
                "app",
                Behavior {
                    exit_on_start: Some(code),
                    ..Default::default()
                },
            );
            worker.sync(&pod.update()).await;
            worker.sync(&pod.update()).await;
            let name = format!("{policy} exit {code}");
            assert_eq!(api.last_status().phase.as_deref(), Some(phase), "{name}");
            let started = runtime
                .calls()
                .iter()
                .filter(|c| matches!(c, Call::StartContainer(_)))
                .count();
            assert_eq!(started, starts, "{name}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn failed_init_container_with_never_fails_the_pod() {
        let pod = TestPod::new("p")
            .init_container("init")
            .container("app")
            .restart_policy("Never");
        let (mut worker, runtime, api) = worker(&pod);
        runtime.set_behavior(
            "init",
            Behavior {
                exit_on_start: Some(3),
                ..Default::default()
            },
        );
        worker.sync(&pod.update()).await;
        worker.sync(&pod.update()).await;
        assert_eq!(api.last_status().phase.as_deref(), Some("Failed"));
        assert!(!runtime
            .calls()
            .contains(&Call::StartContainer("app".into())));
    }

    #[tokio::test(start_paused = true)]
    async fn failing_pull_reports_err_image_pull_then_back_off() {
        let pod = TestPod::new("img").container("app");
        let (mut worker, runtime, api) = worker(&pod);
        runtime.fail_pull(&image(), "manifest unknown");

        worker.sync(&pod.update()).await;
        let status = api.last_status();
        assert_eq!(
            waiting_reason(&status, "app").as_deref(),
            Some("ErrImagePull")
        );
        assert_eq!(status.phase.as_deref(), Some("Pending"));
        worker.sync(&pod.update()).await; // retried at once, fails again
        worker.sync(&pod.update()).await; // now backing off
        let status = api.last_status();
        assert_eq!(
            waiting_reason(&status, "app").as_deref(),
            Some("ImagePullBackOff")
        );
        let message = container_status(&status, "app")
            .state
            .as_ref()
            .and_then(|s| s.waiting.as_ref())
            .and_then(|w| w.message.clone())
            .unwrap_or_default();
        assert!(message.contains("manifest unknown"), "{message}");
        let pulls = runtime
            .calls()
            .iter()
            .filter(|c| matches!(c, Call::PullImage(_)))
            .count();
        assert_eq!(pulls, 2);

        runtime.allow_pull(&image());
        tokio::time::advance(Duration::from_secs(10)).await;
        worker.sync(&pod.update()).await;
        assert_eq!(api.last_status().phase.as_deref(), Some("Running"));
    }

    #[tokio::test(start_paused = true)]
    async fn deletion_sends_sigterm_waits_the_grace_period_then_sigkill() {
        let pod = TestPod::new("slow")
            .container("stubborn")
            .container("polite");
        let (mut worker, runtime, api) = worker(&pod);
        runtime.set_behavior(
            "stubborn",
            Behavior {
                ignores_sigterm: true,
                ..Default::default()
            },
        );
        worker.sync(&pod.update()).await;
        runtime.clear_calls();

        let started = Instant::now();
        let next = worker.sync(&pod.deleting(5).update()).await;
        assert_eq!(next, Next::Done);
        assert!(
            started.elapsed() >= Duration::from_secs(5),
            "waited the grace period"
        );
        let calls = runtime.calls();
        let term = |n: &str| Call::KillContainer(n.into(), StopSignal::Term);
        assert!(
            calls.contains(&term("stubborn")) && calls.contains(&term("polite")),
            "{calls:?}"
        );
        let kills: Vec<&Call> = calls
            .iter()
            .filter(|c| matches!(c, Call::KillContainer(_, StopSignal::Kill)))
            .collect();
        assert_eq!(
            kills,
            [&Call::KillContainer("stubborn".into(), StopSignal::Kill)]
        );
        assert_eq!(calls.last(), Some(&Call::RemoveSandbox("slow".into())));
        assert_eq!(runtime.container_count(), 0);
        assert_eq!(runtime.sandbox_count(), 0);
        assert!(api.deleted());
    }

    #[tokio::test(start_paused = true)]
    async fn deletion_of_a_pod_that_stops_at_once_does_not_wait() {
        let pod = TestPod::new("quick").container("app");
        let (mut worker, runtime, api) = worker(&pod);
        worker.sync(&pod.update()).await;
        let started = Instant::now();
        worker.sync(&pod.deleting(30).update()).await;
        assert!(started.elapsed() < Duration::from_secs(1));
        assert!(!runtime
            .calls()
            .iter()
            .any(|c| matches!(c, Call::KillContainer(_, StopSignal::Kill))));
        assert!(api.deleted());
    }

    #[test]
    fn resources_and_env_from_the_spec() {
        let mut c = container("app");
        c.resources = Some(k8s_openapi::api::core::v1::ResourceRequirements {
            requests: Some(
                [(
                    "cpu".to_string(),
                    k8s_openapi::apimachinery::pkg::api::resource::Quantity("250m".into()),
                )]
                .into(),
            ),
            limits: Some(
                [
                    (
                        "cpu".to_string(),
                        k8s_openapi::apimachinery::pkg::api::resource::Quantity("500m".into()),
                    ),
                    (
                        "memory".to_string(),
                        k8s_openapi::apimachinery::pkg::api::resource::Quantity("64Mi".into()),
                    ),
                ]
                .into(),
            ),
            ..Default::default()
        });
        assert_eq!(
            resources(&c),
            Resources {
                cpu_shares: Some(256),
                cpu_quota: Some(50_000),
                memory_limit: Some(64 * 1024 * 1024),
            }
        );
        c.env = Some(vec![
            EnvVar {
                name: "A".into(),
                value: Some("1".into()),
                value_from: None,
            },
            EnvVar {
                name: "POD".into(),
                value: None,
                value_from: Some(k8s_openapi::api::core::v1::EnvVarSource {
                    field_ref: Some(k8s_openapi::api::core::v1::ObjectFieldSelector {
                        field_path: "metadata.name".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
            },
        ]);
        let pod = TestPod::new("envy");
        let ip: IpAddr = "10.0.0.5".parse().expect("ip");
        assert_eq!(
            container_env(&pod.0, &c, ip),
            Ok(vec![
                ("A".into(), "1".into()),
                ("POD".into(), "envy".into())
            ])
        );
        c.env = Some(vec![EnvVar {
            name: "S".into(),
            value: None,
            value_from: Some(k8s_openapi::api::core::v1::EnvVarSource {
                secret_key_ref: Some(Default::default()),
                ..Default::default()
            }),
        }]);
        assert!(container_env(&pod.0, &c, ip).is_err());
    }
}
