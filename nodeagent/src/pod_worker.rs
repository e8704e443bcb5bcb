//! One pod's worker: brings the runtime in line with the pod spec (sandbox, init
//! containers in order, app containers, restart policy with CrashLoopBackOff), runs
//! lifecycle hooks and [`probe`](crate::probe)s (a failed liveness or startup probe
//! restarts the container, readiness gates `Ready`), records kubelet's events, reports
//! status, and on deletion stops the containers gracefully and removes the pod.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    ConfigMap, Container, EnvVar, KeyToPath, Pod, PodSpec, PodStatus, Secret, Volume,
};
use k8s_openapi::chrono::Utc;
use rkube_client::events::{BusyGuard, EventRecorder, EventType};
use rkube_client::{api, Api, Client, DeleteParams};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::{debug, info, warn};

use crate::backoff::{CrashLoopBackOff, Decision};
use crate::probe::{self, NetTarget, ProbeKind, ProbeResult, Timing};
use crate::runtime::{
    self, ContainerConfig, ContainerId, ContainerRuntime, ContainerState, Mount, PullPolicy,
    Resources, SandboxConfig, SandboxId, StopSignal,
};
use crate::start_slots::{Slot, StartSlots};
use crate::status::{self, ContainerObservation, PodObservation, Waiting};
use crate::volume::{self, FileContent};

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
    #[error("failed to read {kind} {namespace}/{name}")]
    Read {
        kind: &'static str,
        namespace: String,
        name: String,
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
    /// The ConfigMap `namespace/name`, `None` when it does not exist.
    fn config_map(
        &self,
        namespace: &str,
        name: &str,
    ) -> impl Future<Output = Result<Option<ConfigMap>>> + Send;
    /// The Secret `namespace/name`, `None` when it does not exist.
    fn secret(
        &self,
        namespace: &str,
        name: &str,
    ) -> impl Future<Output = Result<Option<Secret>>> + Send;
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

    async fn config_map(&self, namespace: &str, name: &str) -> Result<Option<ConfigMap>> {
        read_optional(
            Api::namespaced(self.client.clone(), namespace),
            "ConfigMap",
            namespace,
            name,
        )
        .await
    }

    async fn secret(&self, namespace: &str, name: &str) -> Result<Option<Secret>> {
        read_optional(
            Api::namespaced(self.client.clone(), namespace),
            "Secret",
            namespace,
            name,
        )
        .await
    }
}

/// Reads one object, `None` when it does not exist.
async fn read_optional<K>(
    api: Api<K>,
    kind: &'static str,
    namespace: &str,
    name: &str,
) -> Result<Option<K>>
where
    K: rkube_client::Object,
{
    match api.get(name).await {
        Ok(object) => Ok(Some(object)),
        Err(err) if err.is_not_found() => Ok(None),
        Err(source) => Err(Error::Read {
            kind,
            namespace: namespace.to_string(),
            name: name.to_string(),
            source,
        }),
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
    /// Stops every prober of the current instance when dropped (also with the worker).
    probers: Option<DropGuard>,
    /// Stops the startup prober alone (once the startup probe passed).
    startup_prober: Option<CancellationToken>,
    /// Consecutive (successes, failures) of each probe of the current instance.
    probe_runs: HashMap<ProbeKind, (u32, u32)>,
}

impl Tracked {
    /// Stops the probers of the current instance and forgets their counts.
    fn stop_probers(&mut self) {
        // Dropping the guard cancels the token every prober watches.
        self.probers = None;
        self.startup_prober = None;
        self.probe_runs.clear();
    }
}

/// Whether the worker goes on after a sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    Continue,
    Done,
}

/// A pod volume ready on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
struct HostVolume {
    path: PathBuf,
    /// configMap and secret volumes are always mounted read-only, as in Kubernetes.
    read_only: bool,
}

/// The worker of one pod.
pub struct PodWorker<R, A> {
    runtime: Arc<R>,
    api: Arc<A>,
    host_ip: IpAddr,
    resync: Duration,
    /// Where pods' volumes live; this pod's are under `<pods_dir>/<uid>/volumes`.
    pods_dir: PathBuf,
    uid: String,
    volumes: HashMap<String, HostVolume>,
    key: String,
    sandbox: Option<SandboxId>,
    containers: HashMap<String, Tracked>,
    start_time: Option<k8s_openapi::chrono::DateTime<Utc>>,
    written: Option<PodStatus>,
    events: EventRecorder,
    /// Probers send every attempt here; the worker syncs at once on each.
    probe_sender: mpsc::UnboundedSender<ProbeResult>,
    probe_results: mpsc::UnboundedReceiver<ProbeResult>,
    /// Results taken from the channel by the run loop, applied by the next sync.
    pending_probes: Vec<ProbeResult>,
    /// The sandbox's network namespace and IP (podIP), once known.
    net: NetTarget,
    /// The last volume set-up error an event was recorded for.
    mount_error: Option<String>,
    /// The agent's start slots; `None`: pods come up without waiting for one.
    start_slots: Option<StartSlots>,
    /// The slot this pod holds while it first comes up, with the mark that holds the
    /// agent's events back meanwhile (see [`rkube_client::events`]).
    start_slot: Option<(Slot, BusyGuard)>,
}

/// `spec.containers{name}`: an event's `fieldPath` for a container of the pod.
fn field_path(pod: &Pod, name: &str) -> String {
    let init = pod
        .spec
        .as_ref()
        .and_then(|s| s.init_containers.as_ref())
        .is_some_and(|list| list.iter().any(|c| c.name == name));
    if init {
        format!("spec.initContainers{{{name}}}")
    } else {
        format!("spec.containers{{{name}}}")
    }
}

/// Records a kubelet event about container `name` of `pod`.
fn container_event(
    events: &EventRecorder,
    pod: &Pod,
    name: &str,
    kind: EventType,
    reason: &str,
    message: String,
) {
    events.record_at(pod, Some(&field_path(pod, name)), kind, reason, message);
}

/// `name_namespace(uid)`, as kubelet names a pod in messages.
fn pod_label(pod: &Pod) -> String {
    format!(
        "{}_{}({})",
        pod.metadata.name.as_deref().unwrap_or(""),
        pod.metadata.namespace.as_deref().unwrap_or(""),
        pod.metadata.uid.as_deref().unwrap_or(""),
    )
}

impl<R: ContainerRuntime, A: PodApi> PodWorker<R, A> {
    pub fn new(
        runtime: Arc<R>,
        api: Arc<A>,
        host_ip: IpAddr,
        resync: Duration,
        pods_dir: PathBuf,
        events: EventRecorder,
        pod: &Pod,
    ) -> Self {
        let (probe_sender, probe_results) = mpsc::unbounded_channel();
        PodWorker {
            events,
            probe_sender,
            probe_results,
            pending_probes: Vec::new(),
            net: NetTarget::default(),
            mount_error: None,
            start_slots: None,
            start_slot: None,
            runtime,
            api,
            host_ip,
            resync,
            pods_dir,
            uid: pod.metadata.uid.clone().unwrap_or_default(),
            volumes: HashMap::new(),
            key: key(pod),
            sandbox: None,
            containers: HashMap::new(),
            // Continuous across agent restarts: the start time already reported stays.
            start_time: pod
                .status
                .as_ref()
                .and_then(|s| s.start_time.as_ref())
                .map(|t| t.0),
            written: pod.status.clone(),
        }
    }

    /// Brings the pod up only in one of `slots` (see [`crate::start_slots`]).
    pub fn with_start_slots(mut self, slots: StartSlots) -> Self {
        self.start_slots = Some(slots);
        self
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
                break;
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                changed = updates.changed() => {
                    if changed.is_err() {
                        // The dispatcher is gone: nothing will tell us about this pod again.
                        break;
                    }
                }
                Some(result) = self.probe_results.recv() => self.pending_probes.push(result),
                _ = tokio::time::sleep(self.resync) => {}
            }
        }
        for tracked in self.containers.values_mut() {
            tracked.stop_probers();
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
            self.terminate(pod, grace).await;
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
            if self.apply_probe_results(pod, spec).await {
                self.refresh().await;
            }
            if let (None, Some(slots)) = (&self.sandbox, &self.start_slots) {
                // Busy from the moment it waits: a queue of pods keeps events back until
                // the last of them is up.
                let busy = self.events.busy();
                self.start_slot = Some((slots.take().await, busy));
            }
            self.converge(pod, spec).await;
            // Given back before the status is written: the next pod may begin.
            self.start_slot = None;
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
                            tracked.stop_probers();
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
    async fn converge(&mut self, pod: &Pod, spec: &PodSpec) {
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
                        self.read_sandbox_status(&id).await;
                        self.adopt(pod, &id).await;
                        id
                    }
                    Err(err) => {
                        warn!(pod = %self.key, error = %err, "failed to create sandbox");
                        return;
                    }
                }
            }
        };
        if self.net.pod_ip.is_none() {
            // The pod network may hand out the address after the sandbox exists.
            self.read_sandbox_status(&sandbox).await;
        }
        if let Err(message) = self.set_up_volumes(pod, spec).await {
            // kubelet's FailedMount: the containers wait until the volumes can be made.
            warn!(pod = %self.key, error = %message, "failed to set up volumes; retrying");
            if self.mount_error.as_deref() != Some(message.as_str()) {
                self.events
                    .record(pod, EventType::Warning, "FailedMount", message.clone());
                self.mount_error = Some(message);
            }
            return;
        }
        self.mount_error = None;
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

    /// Starts (or restarts) one container, honouring the crash and pull back-offs, then
    /// runs its postStart hook and starts its probers.
    async fn start(&mut self, pod: &Pod, sandbox: &SandboxId, spec: &Container) {
        let now = Instant::now();
        let key = self.key.clone();
        let events = self.events.clone();
        let event = |kind: EventType, reason: &str, message: String| {
            container_event(&events, pod, &spec.name, kind, reason, message)
        };
        let Some(tracked) = self.containers.get_mut(&spec.name) else {
            return;
        };
        let waiting_reason = tracked.obs.waiting.as_ref().map(|w| w.reason.clone());
        if tracked.id.is_some() {
            if let Decision::Wait { delay, .. } = tracked.crash_backoff.decide(now) {
                if waiting_reason.as_deref() != Some("CrashLoopBackOff") {
                    event(
                        EventType::Warning,
                        "BackOff",
                        format!(
                            "Back-off restarting failed container {} in pod {}",
                            spec.name,
                            pod_label(pod)
                        ),
                    );
                }
                tracked.obs.waiting = Some(Waiting {
                    reason: "CrashLoopBackOff".into(),
                    message: Some(format!(
                        "back-off {}s restarting failed container={} pod={}",
                        delay.as_secs(),
                        spec.name,
                        pod_label(pod),
                    )),
                });
                return;
            }
        }

        // Image.
        let image = spec.image.clone().unwrap_or_default();
        let pulling_after_failure = matches!(
            waiting_reason.as_deref(),
            Some("ErrImagePull") | Some("ImagePullBackOff")
        );
        if pulling_after_failure {
            if let Decision::Wait { .. } = tracked.pull_backoff.decide(now) {
                if waiting_reason.as_deref() != Some("ImagePullBackOff") {
                    event(
                        EventType::Normal,
                        "BackOff",
                        format!("Back-off pulling image {image:?}"),
                    );
                    event(
                        EventType::Warning,
                        "Failed",
                        "Error: ImagePullBackOff".into(),
                    );
                }
                // kubelet (1.32) keeps the pull error: `Back-off pulling image "x":
                // ErrImagePull: <the registry's message>`.
                let last = tracked.obs.waiting.as_ref().and_then(|w| w.message.clone());
                tracked.obs.waiting = Some(Waiting {
                    reason: "ImagePullBackOff".into(),
                    message: Some(match (waiting_reason.as_deref(), last) {
                        (_, Some(m)) if m.starts_with("Back-off") => m,
                        (Some(reason), Some(m)) => {
                            format!("Back-off pulling image {image:?}: {reason}: {m}")
                        }
                        _ => format!("Back-off pulling image {image:?}"),
                    }),
                });
                return;
            }
        }
        let policy = PullPolicy::of(spec.image_pull_policy.as_deref(), &image);
        // kubelet says "Pulling" only when it goes to the registry (always with
        // `Always`, else when the image is not on the node) and "already present"
        // otherwise; `Never` never pulls.
        let pulls = match policy {
            PullPolicy::Always => true,
            PullPolicy::IfNotPresent => !self.runtime.image_present(&image).await,
            PullPolicy::Never => false,
        };
        if pulls {
            event(
                EventType::Normal,
                "Pulling",
                format!("Pulling image {image:?}"),
            );
        }
        if self.start_slot.is_some() && pulls {
            // A round trip to the registry, a download perhaps: the start slot goes to
            // the next pod meanwhile, so pods whose images are here come up while this
            // one waits (as kubelet's pods wait only for their own pulls).
            self.start_slot = None;
        }
        let pull_started = std::time::Instant::now();
        let image_ref = match self.runtime.pull_image(&image, policy).await {
            Ok(image_ref) => image_ref,
            Err(err) => {
                let reason = match err {
                    runtime::Error::ImageNeverPull { .. } => "ErrImageNeverPull",
                    _ => "ErrImagePull",
                };
                warn!(pod = %key, container = %spec.name, image = %image, error = %err, "failed to pull image");
                event(
                    EventType::Warning,
                    "Failed",
                    format!("Failed to pull image {image:?}: {err}"),
                );
                event(EventType::Warning, "Failed", format!("Error: {reason}"));
                tracked.pull_backoff.exited(now, Duration::ZERO);
                tracked.obs.waiting = Some(Waiting {
                    reason: reason.into(),
                    message: Some(err.to_string()),
                });
                return;
            }
        };
        if pulls {
            event(
                EventType::Normal,
                "Pulled",
                format!(
                    "Successfully pulled image {image:?} in {:.3}s",
                    pull_started.elapsed().as_secs_f64()
                ),
            );
        } else {
            event(
                EventType::Normal,
                "Pulled",
                format!("Container image {image:?} already present on machine"),
            );
        }
        tracked.pull_backoff = CrashLoopBackOff::default();
        tracked.obs.image_id = Some(image_ref.image_id.clone());

        let config_error = |tracked: &mut Tracked, message: String| {
            let repeated = tracked.obs.waiting.as_ref().is_some_and(|w| {
                w.reason == "CreateContainerConfigError"
                    && w.message.as_deref() == Some(message.as_str())
            });
            if !repeated {
                event(EventType::Warning, "Failed", format!("Error: {message}"));
            }
            tracked.obs.waiting = Some(Waiting {
                reason: "CreateContainerConfigError".into(),
                message: Some(message),
            });
        };
        let env = match container_env(self.api.as_ref(), pod, spec, self.host_ip, self.net.pod_ip)
            .await
        {
            Ok(env) => env,
            Err(message) => {
                config_error(tracked, message);
                return;
            }
        };
        let mounts = match container_mounts(&self.volumes, spec).await {
            Ok(mounts) => mounts,
            Err(message) => {
                config_error(tracked, message);
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
            security: match crate::security::of(pod_security, security) {
                Ok(security) => security,
                Err(err) => return config_error(tracked, err.to_string()),
            },
            resources: resources(spec),
            mounts,
            attempt: tracked.attempts,
        };
        let id = match self.runtime.create_container(sandbox, &config).await {
            Ok(id) => id,
            Err(err) => {
                warn!(pod = %key, container = %spec.name, error = %err, "failed to create container");
                event(EventType::Warning, "Failed", format!("Error: {err}"));
                tracked.obs.waiting = Some(Waiting {
                    reason: "CreateContainerError".into(),
                    message: Some(err.to_string()),
                });
                return;
            }
        };
        event(
            EventType::Normal,
            "Created",
            format!("Created container: {}", spec.name),
        );
        tracked.attempts += 1;
        // The instance before the previous one is no longer needed, not even for its logs.
        if let Some(old) = tracked.previous_id.take() {
            if let Err(err) = self.runtime.remove_container(&old).await {
                warn!(pod = %key, container = %spec.name, error = %err, "failed to remove old container");
            }
        }
        tracked.stop_probers();
        if let Some(previous) = tracked.id.replace(id.clone()) {
            tracked.previous_id = Some(previous);
            tracked.obs.last_terminated = tracked.obs.state.take();
            tracked.obs.restart_count += 1;
        }
        tracked.obs.container_id = Some(id.0.clone());
        tracked.obs.state = Some(ContainerState::Created);
        tracked.obs.startup_passed = spec.startup_probe.as_ref().map(|_| false);
        tracked.obs.readiness_passed = spec.readiness_probe.as_ref().map(|_| false);
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
                event(
                    EventType::Normal,
                    "Started",
                    format!("Started container {}", spec.name),
                );
            }
            Err(err) => {
                warn!(pod = %key, container = %spec.name, error = %err, "failed to start container");
                event(EventType::Warning, "Failed", format!("Error: {err}"));
                tracked.obs.waiting = Some(Waiting {
                    reason: "RunContainerError".into(),
                    message: Some(err.to_string()),
                });
                return;
            }
        }
        if !matches!(tracked.obs.state, Some(ContainerState::Running { .. })) {
            return;
        }
        if let Some(hook) = spec.lifecycle.as_ref().and_then(|l| l.post_start.as_ref()) {
            // So may a hook.
            self.start_slot = None;
            let outcome = probe::run_hook(
                self.runtime.as_ref(),
                hook,
                spec,
                &id,
                &self.net,
                grace_period_of_spec(pod),
            )
            .await;
            if let Err(message) = outcome {
                warn!(pod = %key, container = %spec.name, error = %message, "postStart hook failed");
                event(
                    EventType::Warning,
                    "FailedPostStartHook",
                    hook_failure("PostStart", hook, spec, pod, &message),
                );
                event(
                    EventType::Normal,
                    "Killing",
                    format!(
                        "FailedPostStartHook: container {} will be killed and restarted",
                        spec.name
                    ),
                );
                self.stop_containers(
                    pod,
                    vec![(spec.name.clone(), id)],
                    grace_period_of_spec(pod),
                )
                .await;
                if let Some(tracked) = self.containers.get_mut(&spec.name) {
                    if let Some(id) = tracked.id.clone() {
                        if let Ok(state) = self.runtime.container_status(&id).await {
                            if matches!(state, ContainerState::Exited { .. }) {
                                tracked.crash_backoff.exited(Instant::now(), Duration::ZERO);
                            }
                            tracked.obs.state = Some(state);
                        }
                    }
                }
                return;
            }
        }
        self.start_probers(spec, &id);
    }

    /// Reads the sandbox's network namespace and IP.
    async fn read_sandbox_status(&mut self, sandbox: &SandboxId) {
        match self.runtime.sandbox_status(sandbox).await {
            Ok(status) => {
                self.net = NetTarget {
                    netns: status.netns,
                    pod_ip: status.ip,
                };
            }
            Err(err) => warn!(pod = %self.key, error = %err, "failed to read sandbox status"),
        }
    }

    /// Starts the probers of a running instance: the startup probe alone if there is
    /// one (it gates the others), else liveness and readiness.
    fn start_probers(&mut self, spec: &Container, id: &ContainerId) {
        let runtime = self.runtime.clone();
        let net = self.net.clone();
        let sender = self.probe_sender.clone();
        let Some(tracked) = self.containers.get_mut(&spec.name) else {
            return;
        };
        tracked.stop_probers();
        let token = CancellationToken::new();
        let spawn = |kind: ProbeKind, cancel: CancellationToken| {
            probe::spawn_prober(
                runtime.clone(),
                kind,
                spec.clone(),
                id.clone(),
                net.clone(),
                sender.clone(),
                cancel,
            )
        };
        if spec.startup_probe.is_some() && tracked.obs.startup_passed != Some(true) {
            let startup = token.child_token();
            spawn(ProbeKind::Startup, startup.clone());
            tracked.startup_prober = Some(startup);
        } else {
            spawn(ProbeKind::Liveness, token.child_token());
            spawn(ProbeKind::Readiness, token.child_token());
        }
        tracked.probers = Some(token.drop_guard());
    }

    /// Applies the probe results received since the last sync: counts them against the
    /// thresholds, records `Unhealthy`, sets started and ready, and kills containers
    /// whose liveness or startup probe failed. Returns whether it killed any.
    async fn apply_probe_results(&mut self, pod: &Pod, spec: &PodSpec) -> bool {
        let mut results = std::mem::take(&mut self.pending_probes);
        while let Ok(result) = self.probe_results.try_recv() {
            results.push(result);
        }
        let mut kills: Vec<(String, ContainerId, ProbeKind)> = Vec::new();
        let mut started: Vec<(Container, ContainerId)> = Vec::new();
        for result in results {
            let Some(container) = spec.containers.iter().find(|c| c.name == result.container)
            else {
                continue;
            };
            let Some(probe) = result.kind.of(container) else {
                continue;
            };
            let Some(tracked) = self.containers.get_mut(&result.container) else {
                continue;
            };
            let current = tracked.id.as_ref() == Some(&result.instance)
                && matches!(tracked.obs.state, Some(ContainerState::Running { .. }))
                && tracked.probers.is_some();
            if !current || kills.iter().any(|(_, id, _)| *id == result.instance) {
                continue;
            }
            let timing = Timing::of(probe);
            let runs = tracked.probe_runs.entry(result.kind).or_default();
            match &result.outcome {
                Ok(()) => *runs = (runs.0.saturating_add(1), 0),
                Err(message) => {
                    *runs = (0, runs.1.saturating_add(1));
                    container_event(
                        &self.events,
                        pod,
                        &container.name,
                        EventType::Warning,
                        "Unhealthy",
                        format!("{} probe failed: {message}", result.kind.title()),
                    );
                }
            }
            let (successes, failures) = *runs;
            let passed = successes >= timing.success_threshold;
            let failed = failures >= timing.failure_threshold;
            match result.kind {
                ProbeKind::Readiness => {
                    if passed {
                        tracked.obs.readiness_passed = Some(true);
                    } else if failed {
                        tracked.obs.readiness_passed = Some(false);
                    }
                }
                ProbeKind::Startup => {
                    if successes > 0 {
                        tracked.obs.startup_passed = Some(true);
                        if let Some(token) = tracked.startup_prober.take() {
                            token.cancel();
                        }
                        started.push((container.clone(), result.instance.clone()));
                    } else if failed {
                        kills.push((container.name.clone(), result.instance, result.kind));
                    }
                }
                ProbeKind::Liveness => {
                    if failed {
                        kills.push((container.name.clone(), result.instance, result.kind));
                    }
                }
            }
        }
        for (container, id) in started {
            info!(pod = %self.key, container = %container.name, "startup probe passed");
            self.start_probers(&container, &id);
        }
        let killed = !kills.is_empty();
        for (name, id, kind) in kills {
            let title = kind.title().to_lowercase();
            info!(pod = %self.key, container = %name, probe = %title, "probe failed; restarting container");
            container_event(
                &self.events,
                pod,
                &name,
                EventType::Normal,
                "Killing",
                format!("Container {name} failed {title} probe, will be restarted"),
            );
            if let Some(tracked) = self.containers.get_mut(&name) {
                tracked.stop_probers();
            }
            self.stop_containers(pod, vec![(name, id)], grace_period_of_spec(pod))
                .await;
        }
        killed
    }

    /// Takes over the containers an earlier agent left in `sandbox` (restart safety):
    /// per name the latest attempt becomes the current instance and the one before it
    /// the previous, so that running containers keep running and the restart count goes
    /// on. A fresh sandbox has none.
    async fn adopt(&mut self, pod: &Pod, sandbox: &SandboxId) {
        let found = match self.runtime.list_containers(sandbox).await {
            Ok(found) => found,
            Err(err) => {
                warn!(pod = %self.key, error = %err, "failed to list existing containers");
                return;
            }
        };
        let spec = pod.spec.as_ref();
        let specs: Vec<&Container> = spec
            .into_iter()
            .flat_map(|s| s.init_containers.iter().flatten().chain(&s.containers))
            .collect();
        let reported = |name: &str| {
            self.written
                .as_ref()
                .into_iter()
                .flat_map(|s| {
                    s.init_container_statuses
                        .iter()
                        .flatten()
                        .chain(s.container_statuses.iter().flatten())
                })
                .find(|c| c.name == name)
                .cloned()
        };
        let mut probing: Vec<(&Container, ContainerId)> = Vec::new();
        for container in specs {
            if self.containers.contains_key(&container.name) {
                continue;
            }
            let mut instances: Vec<&runtime::ContainerInfo> =
                found.iter().filter(|c| c.name == container.name).collect();
            instances.sort_by_key(|c| std::cmp::Reverse(c.attempt));
            let Some(latest) = instances.first() else {
                continue;
            };
            let mut tracked = Tracked {
                obs: ContainerObservation::new(container),
                id: Some(latest.id.clone()),
                previous_id: instances.get(1).map(|c| c.id.clone()),
                attempts: latest.attempt + 1,
                started: Some(Instant::now()),
                ..Default::default()
            };
            tracked.obs.container_id = Some(latest.id.0.clone());
            tracked.obs.restart_count = i32::try_from(latest.attempt).unwrap_or(i32::MAX);
            tracked.obs.image_id = reported(&container.name)
                .map(|c| c.image_id)
                .filter(|id| !id.is_empty());
            match self.runtime.container_status(&latest.id).await {
                Ok(state) => tracked.obs.state = Some(state),
                Err(err) => {
                    warn!(pod = %self.key, container = %container.name, error = %err, "failed to read adopted container state")
                }
            }
            if let Some(previous) = &tracked.previous_id {
                if let Ok(state) = self.runtime.container_status(previous).await {
                    tracked.obs.last_terminated = Some(state);
                }
            }
            info!(pod = %self.key, container = %container.name, id = %latest.id.0, "found existing container");
            // Probes start over: not ready until the readiness probe passes again; a
            // container reported started stays started (its startup probe is done).
            let was_started = reported(&container.name).and_then(|c| c.started) == Some(true);
            tracked.obs.startup_passed = container.startup_probe.as_ref().map(|_| was_started);
            tracked.obs.readiness_passed = container.readiness_probe.as_ref().map(|_| false);
            if matches!(tracked.obs.state, Some(ContainerState::Running { .. })) {
                probing.push((container, latest.id.clone()));
            }
            self.containers.insert(container.name.clone(), tracked);
        }
        for (container, id) in probing {
            self.start_probers(container, &id);
        }
    }

    /// Writes the status when it changed.
    async fn report(&mut self, pod: &Pod, spec: &PodSpec) {
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
            pod_ip: self.net.pod_ip,
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

    /// Stops every container (preStop hooks, SIGTERM, up to `grace`, then SIGKILL) and
    /// removes them and the sandbox.
    async fn terminate(&mut self, pod: &Pod, grace: Duration) {
        let running: Vec<(String, ContainerId)> = self
            .containers
            .iter_mut()
            .filter_map(|(name, t)| {
                t.stop_probers();
                t.id.clone().map(|id| (name.clone(), id))
            })
            .collect();
        let mut alive = Vec::new();
        for (name, id) in running {
            if matches!(
                self.runtime.container_status(&id).await,
                Ok(ContainerState::Running { .. })
            ) {
                container_event(
                    &self.events,
                    pod,
                    &name,
                    EventType::Normal,
                    "Killing",
                    format!("Stopping container {name}"),
                );
                alive.push((name, id));
            }
        }
        if !alive.is_empty() {
            info!(pod = %self.key, grace_seconds = grace.as_secs(), "stopping containers");
        }
        self.stop_containers(pod, alive, grace).await;
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
        self.volumes.clear();
        let (pods_dir, uid) = (self.pods_dir.clone(), self.uid.clone());
        let removed =
            tokio::task::spawn_blocking(move || volume::tear_down_pod(&pods_dir, &uid)).await;
        match removed {
            Ok(Ok(())) => {}
            Ok(Err(err)) => warn!(pod = %self.key, error = %err, "failed to remove volumes"),
            Err(err) => warn!(pod = %self.key, error = %err, "volume removal task failed"),
        }
    }

    /// Runs the preStop hooks of `containers` side by side, all within `grace`; a failed
    /// hook is a `FailedPreStopHook` event and the stop goes on.
    async fn run_pre_stop_hooks(
        &self,
        pod: &Pod,
        containers: &[(String, ContainerId)],
        grace: Duration,
    ) {
        let specs: Vec<&Container> = pod
            .spec
            .iter()
            .flat_map(|s| s.init_containers.iter().flatten().chain(&s.containers))
            .collect();
        let mut hooks = Vec::new();
        for (name, id) in containers {
            let Some(spec) = specs.iter().find(|c| c.name == *name) else {
                continue;
            };
            let Some(hook) = spec.lifecycle.as_ref().and_then(|l| l.pre_stop.as_ref()) else {
                continue;
            };
            hooks.push(async move {
                let runtime = self.runtime.as_ref();
                let outcome = probe::run_hook(runtime, hook, spec, id, &self.net, grace).await;
                if let Err(message) = outcome {
                    warn!(pod = %self.key, container = %name, error = %message, "preStop hook failed");
                    let message = hook_failure("PreStop", hook, spec, pod, &message);
                    container_event(
                        &self.events,
                        pod,
                        name,
                        EventType::Warning,
                        "FailedPreStopHook",
                        message,
                    );
                }
            });
        }
        if !hooks.is_empty() {
            let _ = tokio::time::timeout(grace, futures::future::join_all(hooks)).await;
        }
    }

    /// Stops running containers as kubelet does: their preStop hooks (at most `grace`),
    /// then SIGTERM, then SIGKILL for those still running when `grace` is over.
    async fn stop_containers(
        &self,
        pod: &Pod,
        mut alive: Vec<(String, ContainerId)>,
        grace: Duration,
    ) {
        let deadline = Instant::now() + grace;
        if !grace.is_zero() {
            self.run_pre_stop_hooks(pod, &alive, grace).await;
            for (name, id) in &alive {
                if let Err(err) = self.runtime.kill_container(id, StopSignal::Term).await {
                    warn!(pod = %self.key, container = %name, error = %err, "failed to send SIGTERM");
                }
            }
            loop {
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
                let now = Instant::now();
                if alive.is_empty() || now >= deadline {
                    break;
                }
                tokio::time::sleep(STOP_POLL.min(deadline - now)).await;
            }
        }
        for (name, id) in &alive {
            warn!(pod = %self.key, container = %name, "grace period over; killing");
            if let Err(err) = self.runtime.kill_container(id, StopSignal::Kill).await {
                warn!(pod = %self.key, container = %name, error = %err, "failed to send SIGKILL");
            }
        }
    }

    /// Makes every volume of the pod ready on the host; configMap and secret volumes are
    /// rewritten when their object changed. Returns kubelet-style messages.
    async fn set_up_volumes(
        &mut self,
        pod: &Pod,
        spec: &PodSpec,
    ) -> std::result::Result<(), String> {
        let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
        for vol in spec.volumes.iter().flatten() {
            let dir = volume::volume_dir(&self.pods_dir, &self.uid, &vol.name);
            let context = PlanContext {
                pod,
                namespace,
                host_ip: self.host_ip,
                pod_ip: self.net.pod_ip,
            };
            let plan = volume_plan(self.api.as_ref(), &context, vol, dir).await?;
            let (path, read_only) = match &plan {
                Plan::EmptyDir { dir, .. } | Plan::Files { dir, .. } => {
                    (dir.clone(), matches!(plan, Plan::Files { .. }))
                }
                Plan::HostPath { path, .. } => (path.clone(), false),
            };
            let ready = self.volumes.contains_key(&vol.name);
            if ready && !matches!(plan, Plan::Files { .. }) {
                continue;
            }
            let name = vol.name.clone();
            tokio::task::spawn_blocking(move || plan.apply())
                .await
                .map_err(|err| format!("volume {name:?}: {err}"))?
                .map_err(|err| {
                    format!(
                        "MountVolume.SetUp failed for volume {name:?} : {}",
                        error_chain(&err)
                    )
                })?;
            self.volumes
                .insert(vol.name.clone(), HostVolume { path, read_only });
        }
        Ok(())
    }
}

/// What to do on the host for one volume.
#[derive(Debug)]
enum Plan {
    EmptyDir {
        dir: PathBuf,
        memory: bool,
        size_limit: Option<u64>,
    },
    HostPath {
        path: PathBuf,
        typ: String,
    },
    Files {
        dir: PathBuf,
        files: Vec<FileContent>,
        /// On a tmpfs, as kubelet keeps secret and downwardAPI volumes off the disk.
        memory: bool,
    },
}

impl Plan {
    fn apply(self) -> volume::Result<()> {
        match self {
            Plan::EmptyDir {
                dir,
                memory,
                size_limit,
            } => volume::set_up_empty_dir(&dir, memory, size_limit),
            Plan::HostPath { path, typ } => volume::check_host_path(&path, &typ),
            Plan::Files { dir, files, memory } => {
                if memory {
                    // Only root mounts; a non-root agent (unit tests) keeps a plain
                    // directory.
                    let root = nix::unistd::Uid::effective().is_root();
                    volume::set_up_empty_dir(&dir, root, None)?;
                }
                volume::write_atomically(&dir, &files).map(|_| ())
            }
        }
    }
}

/// What volume plans are made for.
struct PlanContext<'a> {
    pod: &'a Pod,
    namespace: &'a str,
    host_ip: IpAddr,
    pod_ip: Option<IpAddr>,
}

/// Reads what a volume needs (its ConfigMap or Secret, the pod itself for downwardAPI)
/// and says how to lay it out.
async fn volume_plan<A: PodApi>(
    api: &A,
    context: &PlanContext<'_>,
    vol: &Volume,
    dir: PathBuf,
) -> std::result::Result<Plan, String> {
    let namespace = context.namespace;
    if let Some(source) = &vol.downward_api {
        let files = downward_api_files(context, source)?;
        return Ok(Plan::Files {
            dir,
            files,
            memory: true,
        });
    }
    if let Some(empty) = &vol.empty_dir {
        let size_limit = empty.size_limit.as_ref().and_then(|q| {
            rkube_api::validation::quantity::parse(&q.0)
                .ok()
                .map(|q| u64::try_from(q.milli_value() / 1000).unwrap_or(u64::MAX))
        });
        return Ok(Plan::EmptyDir {
            dir,
            memory: empty.medium.as_deref() == Some("Memory"),
            size_limit,
        });
    }
    if let Some(host) = &vol.host_path {
        return Ok(Plan::HostPath {
            path: PathBuf::from(&host.path),
            typ: host.type_.clone().unwrap_or_default(),
        });
    }
    if let Some(source) = &vol.config_map {
        let optional = source.optional.unwrap_or(false);
        let data: std::collections::BTreeMap<String, Vec<u8>> = match api
            .config_map(namespace, &source.name)
            .await
            .map_err(|e| error_chain(&e))?
        {
            Some(map) => map
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.into_bytes()))
                .chain(
                    map.binary_data
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, v)| (k, v.0)),
                )
                .collect(),
            None if optional => Default::default(),
            None => return Err(format!("configmap {:?} not found", source.name)),
        };
        let files = volume_files(
            "configmap",
            &data,
            source.items.as_deref(),
            source.default_mode,
            optional,
        )?;
        return Ok(Plan::Files {
            dir,
            files,
            memory: false,
        });
    }
    if let Some(source) = &vol.secret {
        let optional = source.optional.unwrap_or(false);
        let name = source.secret_name.clone().unwrap_or_default();
        let data: std::collections::BTreeMap<String, Vec<u8>> = match api
            .secret(namespace, &name)
            .await
            .map_err(|e| error_chain(&e))?
        {
            Some(secret) => secret
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect(),
            None if optional => Default::default(),
            None => return Err(format!("secret {name:?} not found")),
        };
        let files = volume_files(
            "secret",
            &data,
            source.items.as_deref(),
            source.default_mode,
            optional,
        )?;
        return Ok(Plan::Files {
            dir,
            files,
            memory: true,
        });
    }
    Err(format!(
        "volume {:?}: only emptyDir, hostPath, configMap, secret and downwardAPI volumes are supported by this node agent yet",
        vol.name
    ))
}

/// The files of a downwardAPI volume: each item's field or resource value at its path;
/// modes from the item, else `defaultMode`, else 0644.
fn downward_api_files(
    context: &PlanContext<'_>,
    source: &k8s_openapi::api::core::v1::DownwardAPIVolumeSource,
) -> std::result::Result<Vec<FileContent>, String> {
    let mut files = Vec::new();
    for item in source.items.iter().flatten() {
        let value = if let Some(field) = &item.field_ref {
            field_value(
                context.pod,
                &field.field_path,
                context.host_ip,
                context.pod_ip,
            )
            .ok_or_else(|| format!("unsupported fieldPath {:?}", field.field_path))?
        } else if let Some(resource) = &item.resource_field_ref {
            resource_value(context.pod, None, resource)?
        } else {
            return Err(format!("downwardAPI item {:?} has no source", item.path));
        };
        let mode = item
            .mode
            .or(source.default_mode)
            .and_then(|m| u32::try_from(m).ok())
            .unwrap_or(volume::DEFAULT_MODE);
        files.push(FileContent {
            path: item.path.clone(),
            data: value.into_bytes(),
            mode,
        });
    }
    Ok(files)
}

/// The files of a configMap or secret volume: every key, or just the `items` at their
/// paths; modes from the item, else `defaultMode`, else 0644.
fn volume_files(
    kind: &str,
    data: &std::collections::BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
    default_mode: Option<i32>,
    optional: bool,
) -> std::result::Result<Vec<FileContent>, String> {
    let mode = |m: Option<i32>| {
        m.or(default_mode)
            .and_then(|m| u32::try_from(m).ok())
            .unwrap_or(volume::DEFAULT_MODE)
    };
    match items {
        Some(items) if !items.is_empty() => {
            let mut files = Vec::new();
            for item in items {
                match data.get(&item.key) {
                    Some(bytes) => files.push(FileContent {
                        path: item.path.clone(),
                        data: bytes.clone(),
                        mode: mode(item.mode),
                    }),
                    None if optional => {}
                    None => {
                        return Err(format!(
                            "{kind} references non-existent config key: {}",
                            item.key
                        ))
                    }
                }
            }
            Ok(files)
        }
        _ => Ok(data
            .iter()
            .map(|(key, bytes)| FileContent {
                path: key.clone(),
                data: bytes.clone(),
                mode: mode(None),
            })
            .collect()),
    }
}

/// The container's `volumeMounts` as bind mounts of the pod's host volumes; a missing
/// `subPath` is made as a directory, as kubelet does.
async fn container_mounts(
    volumes: &HashMap<String, HostVolume>,
    spec: &Container,
) -> std::result::Result<Vec<Mount>, String> {
    let mut mounts = Vec::new();
    let mut sub_paths = Vec::new();
    for m in spec.volume_mounts.iter().flatten() {
        let Some(vol) = volumes.get(&m.name) else {
            return Err(format!(
                "cannot find volume {:?} to mount into container {:?}",
                m.name, spec.name
            ));
        };
        let host_path = match m.sub_path.as_deref().filter(|p| !p.is_empty()) {
            Some(sub) => {
                let rel = volume::checked_relative(sub).map_err(|e| e.to_string())?;
                let path = vol.path.join(rel);
                sub_paths.push(path.clone());
                path
            }
            None => vol.path.clone(),
        };
        mounts.push(Mount {
            host_path,
            container_path: m.mount_path.clone(),
            read_only: vol.read_only || m.read_only.unwrap_or(false),
        });
    }
    if !sub_paths.is_empty() {
        tokio::task::spawn_blocking(move || {
            for path in sub_paths {
                if std::fs::symlink_metadata(&path).is_err() {
                    std::fs::create_dir_all(&path).map_err(|e| {
                        format!("failed to create subPath directory {}: {e}", path.display())
                    })?;
                }
            }
            Ok::<(), String>(())
        })
        .await
        .map_err(|e| format!("subPath task failed: {e}"))??;
    }
    Ok(mounts)
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

/// The grace period of a container stopped while the pod stays (probe failure, failed
/// postStart hook): the spec's `terminationGracePeriodSeconds`, else 30 s.
fn grace_period_of_spec(pod: &Pod) -> Duration {
    let seconds = pod
        .spec
        .as_ref()
        .and_then(|s| s.termination_grace_period_seconds)
        .unwrap_or(DEFAULT_GRACE_PERIOD.as_secs() as i64);
    Duration::from_secs(seconds.max(0).unsigned_abs())
}

/// kubelet's message for a failed lifecycle hook.
fn hook_failure(
    which: &str,
    hook: &k8s_openapi::api::core::v1::LifecycleHandler,
    spec: &Container,
    pod: &Pod,
    message: &str,
) -> String {
    let what = if let Some(exec) = &hook.exec {
        format!(
            "Exec lifecycle hook ({:?})",
            exec.command.clone().unwrap_or_default()
        )
    } else if let Some(http) = &hook.http_get {
        format!(
            "HTTP lifecycle hook ({})",
            http.path.as_deref().unwrap_or("/")
        )
    } else {
        "Lifecycle hook".to_string()
    };
    format!(
        "{which} {what} for Container {:?} in Pod {:?} failed - error: {message}",
        spec.name,
        pod_label(pod)
    )
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

/// The container's environment as kubelet builds it: first every `envFrom` source (keys
/// that are not valid variable names are skipped, `prefix` prepended), then `env` in
/// order (literal values, `fieldRef`, `configMapKeyRef`, `secretKeyRef`); a later
/// variable replaces an earlier one of the same name in place.
///
/// A missing source or key that is not `optional` gives kubelet's message, reported as
/// `CreateContainerConfigError`; the worker tries again on its next sync.
async fn container_env<A: PodApi>(
    api: &A,
    pod: &Pod,
    spec: &Container,
    host_ip: IpAddr,
    pod_ip: Option<IpAddr>,
) -> std::result::Result<Vec<(String, String)>, String> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut env: Vec<(String, String)> = Vec::new();
    let set = |env: &mut Vec<(String, String)>, name: String, value: String| match env
        .iter_mut()
        .find(|(n, _)| *n == name)
    {
        Some(slot) => slot.1 = value,
        None => env.push((name, value)),
    };
    for source in spec.env_from.iter().flatten() {
        let prefix = source.prefix.as_deref().unwrap_or("");
        let (kind, name, optional) = match (&source.config_map_ref, &source.secret_ref) {
            (Some(r), _) => (EnvSource::ConfigMap, r.name.as_str(), r.optional),
            (None, Some(r)) => (EnvSource::Secret, r.name.as_str(), r.optional),
            (None, None) => continue,
        };
        let data = match kind.read(api, namespace, name).await? {
            Some(data) => data,
            None if optional.unwrap_or(false) => continue,
            None => return Err(kind.not_found(name)),
        };
        for (key, value) in data {
            let name = format!("{prefix}{key}");
            if is_env_var_name(&name) {
                set(&mut env, name, value);
            } else {
                debug!(container = %spec.name, variable = %name, "skipping invalid environment variable name from envFrom");
            }
        }
    }
    for EnvVar {
        name,
        value,
        value_from,
    } in spec.env.iter().flatten()
    {
        let value = match (value, value_from) {
            (_, Some(source)) => {
                if let Some(field) = &source.field_ref {
                    field_value(pod, &field.field_path, host_ip, pod_ip).ok_or_else(|| {
                        format!("env {name}: unsupported fieldPath {:?}", field.field_path)
                    })?
                } else if let Some(resource) = &source.resource_field_ref {
                    resource_value(pod, Some(&spec.name), resource)?
                } else if let Some((kind, source_name, key, optional)) = source
                    .config_map_key_ref
                    .as_ref()
                    .map(|s| (EnvSource::ConfigMap, &s.name, &s.key, s.optional))
                    .or_else(|| {
                        source
                            .secret_key_ref
                            .as_ref()
                            .map(|s| (EnvSource::Secret, &s.name, &s.key, s.optional))
                    })
                {
                    let optional = optional.unwrap_or(false);
                    let Some(data) = kind.read(api, namespace, source_name).await? else {
                        if optional {
                            continue;
                        }
                        return Err(kind.not_found(source_name));
                    };
                    match data.get(key) {
                        Some(value) => value.clone(),
                        None if optional => continue,
                        None => return Err(kind.missing_key(namespace, source_name, key)),
                    }
                } else {
                    return Err(format!("env {name}: valueFrom has no source"));
                }
            }
            (Some(value), None) => value.clone(),
            (None, None) => String::new(),
        };
        set(&mut env, name.clone(), value);
    }
    Ok(env)
}

/// Where `envFrom` and `valueFrom` key references read from.
#[derive(Debug, Clone, Copy)]
enum EnvSource {
    ConfigMap,
    Secret,
}

impl EnvSource {
    /// The object's data as strings, or `None` when it does not exist.
    async fn read<A: PodApi>(
        self,
        api: &A,
        namespace: &str,
        name: &str,
    ) -> std::result::Result<Option<std::collections::BTreeMap<String, String>>, String> {
        match self {
            EnvSource::ConfigMap => Ok(api
                .config_map(namespace, name)
                .await
                .map_err(|e| error_chain(&e))?
                .map(|map| map.data.unwrap_or_default())),
            EnvSource::Secret => Ok(api
                .secret(namespace, name)
                .await
                .map_err(|e| error_chain(&e))?
                .map(|secret| secret_strings(&secret))),
        }
    }

    /// kubelet's message for a missing object.
    fn not_found(self, name: &str) -> String {
        match self {
            EnvSource::ConfigMap => format!("configmap {name:?} not found"),
            EnvSource::Secret => format!("secret {name:?} not found"),
        }
    }

    /// kubelet's message for a missing key.
    fn missing_key(self, namespace: &str, name: &str, key: &str) -> String {
        let kind = match self {
            EnvSource::ConfigMap => "ConfigMap",
            EnvSource::Secret => "Secret",
        };
        format!("couldn't find key {key} in {kind} {namespace}/{name}")
    }
}

/// A Secret's data as strings (the bytes as they are; invalid UTF-8 replaced).
fn secret_strings(secret: &Secret) -> std::collections::BTreeMap<String, String> {
    secret
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), String::from_utf8_lossy(&v.0).into_owned()))
        .collect()
}

/// Kubernetes' `IsEnvVarName`: `[-._a-zA-Z][-._a-zA-Z0-9]*`.
fn is_env_var_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || matches!(c, '-' | '.' | '_'))
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
}

/// An error with its sources, for a status message.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut message = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

/// The value of a downward-API `fieldPath`; `pod_ip` is the sandbox's, else the
/// reported one.
fn field_value(pod: &Pod, path: &str, host_ip: IpAddr, pod_ip: Option<IpAddr>) -> Option<String> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let reported_ip = || {
        pod.status
            .as_ref()
            .and_then(|s| s.pod_ip.clone())
            .unwrap_or_default()
    };
    Some(match path {
        "metadata.labels" => format_map(meta.labels.as_ref()),
        "metadata.annotations" => format_map(meta.annotations.as_ref()),
        "status.hostIPs" => host_ip.to_string(),
        "status.podIPs" => pod_ip.map(|ip| ip.to_string()).unwrap_or_else(reported_ip),
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.hostIP" => host_ip.to_string(),
        "status.podIP" => pod_ip.map(|ip| ip.to_string()).unwrap_or_else(reported_ip),
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

/// Labels or annotations as a downwardAPI file shows them: one `key="value"` line per
/// entry, sorted by key, values quoted with escapes.
fn format_map(map: Option<&std::collections::BTreeMap<String, String>>) -> String {
    map.into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v:?}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The value of a downward-API `resourceFieldRef` (`limits.cpu`, `requests.memory`…)
/// divided by its divisor and rounded up, as kubelet computes it. An unset limit is the
/// node's capacity.
fn resource_value(
    pod: &Pod,
    default_container: Option<&str>,
    source: &k8s_openapi::api::core::v1::ResourceFieldSelector,
) -> std::result::Result<String, String> {
    let name = source
        .container_name
        .as_deref()
        .filter(|n| !n.is_empty())
        .or(default_container)
        .ok_or_else(|| {
            format!(
                "resourceFieldRef {:?}: containerName is required",
                source.resource
            )
        })?;
    let container = pod
        .spec
        .iter()
        .flat_map(|s| s.init_containers.iter().flatten().chain(&s.containers))
        .find(|c| c.name == name)
        .ok_or_else(|| format!("resourceFieldRef: container {name:?} not found"))?;
    let (kind, resource) = source
        .resource
        .split_once('.')
        .ok_or_else(|| format!("unsupported container resource : {:?}", source.resource))?;
    let resources = container.resources.as_ref();
    let limits = resources.and_then(|r| r.limits.as_ref());
    let requests = resources.and_then(|r| r.requests.as_ref());
    let milli = match kind {
        "limits" => limits
            .and_then(|m| status::quantity(m, resource))
            .or_else(|| node_capacity_milli(resource)),
        "requests" => requests
            .and_then(|m| status::quantity(m, resource))
            .or_else(|| limits.and_then(|m| status::quantity(m, resource)))
            .or(Some(0)),
        _ => None,
    }
    .ok_or_else(|| format!("unsupported container resource : {:?}", source.resource))?;
    let divisor = source
        .divisor
        .as_ref()
        .and_then(|q| rkube_api::validation::quantity::parse(&q.0).ok())
        .map(|q| q.milli_value())
        .filter(|d| *d > 0)
        .unwrap_or(1000);
    let value = (milli + divisor - 1) / divisor;
    Ok(value.to_string())
}

/// The node's capacity of `resource` in milli-units (CPUs; memory from /proc/meminfo).
fn node_capacity_milli(resource: &str) -> Option<i128> {
    match resource {
        "cpu" => std::thread::available_parallelism()
            .ok()
            .map(|n| i128::try_from(n.get()).unwrap_or(1) * 1000),
        "memory" => std::fs::read_to_string("/proc/meminfo")
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<i128>().ok())
            .map(|kb| kb * 1024 * 1000),
        _ => None,
    }
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
        config_maps: Mutex<HashMap<String, ConfigMap>>,
        secrets: Mutex<HashMap<String, Secret>>,
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

        async fn config_map(&self, namespace: &str, name: &str) -> Result<Option<ConfigMap>> {
            Ok(self
                .config_maps
                .lock()
                .get(&format!("{namespace}/{name}"))
                .cloned())
        }

        async fn secret(&self, namespace: &str, name: &str) -> Result<Option<Secret>> {
            Ok(self
                .secrets
                .lock()
                .get(&format!("{namespace}/{name}"))
                .cloned())
        }
    }

    impl RecordingApi {
        fn add_config_map(&self, name: &str, data: &[(&str, &str)]) {
            let map = ConfigMap {
                data: Some(
                    data.iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..Default::default()
            };
            self.config_maps
                .lock()
                .insert(format!("default/{name}"), map);
        }

        fn add_secret(&self, name: &str, data: &[(&str, &str)]) {
            let secret = Secret {
                data: Some(
                    data.iter()
                        .map(|(k, v)| {
                            (
                                k.to_string(),
                                k8s_openapi::ByteString(v.as_bytes().to_vec()),
                            )
                        })
                        .collect(),
                ),
                ..Default::default()
            };
            self.secrets
                .lock()
                .insert(format!("default/{name}"), secret);
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

    /// A worker on the fake runtime; its pods directory lives as long as the `TempDir`.
    fn worker(
        pod: &TestPod,
    ) -> (
        PodWorker<FakeRuntime, RecordingApi>,
        Arc<FakeRuntime>,
        Arc<RecordingApi>,
        PodsDir,
    ) {
        let runtime = Arc::new(FakeRuntime::new());
        let api = Arc::new(RecordingApi::default());
        let pods = PodsDir(tempfile::tempdir().expect("pods dir"));
        let worker = PodWorker::new(
            runtime.clone(),
            api.clone(),
            "10.0.0.5".parse().expect("ip"),
            Duration::from_secs(1),
            pods.path().to_path_buf(),
            EventRecorder::disabled(),
            &pod.0,
        );
        (worker, runtime, api, pods)
    }

    /// The workers' pods directory; on drop it unmounts the tmpfs volumes (secret,
    /// downwardAPI) a test run as root left, before the directory goes.
    struct PodsDir(tempfile::TempDir);

    impl PodsDir {
        fn path(&self) -> &std::path::Path {
            self.0.path()
        }
    }

    impl Drop for PodsDir {
        fn drop(&mut self) {
            for pod in std::fs::read_dir(self.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                let volumes = pod.path().join("volumes");
                for vol in std::fs::read_dir(&volumes).into_iter().flatten().flatten() {
                    let _ = nix::mount::umount2(&vol.path(), nix::mount::MntFlags::MNT_DETACH);
                }
            }
        }
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

    #[tokio::test]
    async fn a_pod_comes_up_only_in_a_free_start_slot_and_gives_it_back() {
        let pod = TestPod::new("web").container("app");
        let (worker, runtime, api, _pods) = worker(&pod);
        let slots = StartSlots::new(1);
        let mut worker = worker.with_start_slots(slots.clone());
        let taken = slots.take().await;
        let update = pod.update();
        let syncing = async {
            worker.sync(&update).await;
            worker
        };
        tokio::pin!(syncing);
        // Another pod holds the only slot: nothing of this one is made.
        let waited = tokio::time::timeout(Duration::from_millis(50), &mut syncing).await;
        assert!(waited.is_err(), "the sync went ahead without a slot");
        assert_eq!(runtime.calls(), []);
        drop(taken);
        let mut worker = syncing.await;
        assert_eq!(runtime.sandbox_count(), 1);
        assert_eq!(api.last_status().phase.as_deref(), Some("Running"));
        // The slot came back: the next pod takes it at once, and a pod already up
        // syncs without one.
        let next = tokio::time::timeout(Duration::from_millis(50), slots.take())
            .await
            .expect("the slot was given back");
        tokio::time::timeout(Duration::from_secs(5), worker.sync(&pod.update()))
            .await
            .expect("a pod that is up syncs without a slot");
        drop(next);
    }

    #[tokio::test]
    async fn a_pod_gives_its_start_slot_back_while_its_image_downloads() {
        let pod = TestPod::new("web").container("app");
        let (worker, runtime, api, _pods) = worker(&pod);
        let slots = StartSlots::new(1);
        let mut worker = worker.with_start_slots(slots.clone());
        let image = container("app").image.expect("an image");
        let download = runtime.image_missing(&image);
        let update = pod.update();
        let syncing = async {
            worker.sync(&update).await;
            worker
        };
        tokio::pin!(syncing);
        // First the pod (which took the only slot) gets as far as the pull…
        let pulling = async {
            while !runtime.calls().contains(&Call::PullImage(image.clone())) {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        };
        let reached = async {
            tokio::select! {
                biased;
                _ = &mut syncing => panic!("the sync ended while its image was downloading"),
                () = pulling => {}
            }
        };
        tokio::time::timeout(Duration::from_secs(5), reached)
            .await
            .expect("the pod went to pull its image");
        // …then, while it waits for the download, another pod may take the slot.
        let waiting = async {
            tokio::select! {
                biased;
                _ = &mut syncing => panic!("the sync ended while its image was downloading"),
                slot = slots.take() => slot,
            }
        };
        let taken = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the slot was given back during the download");
        assert_eq!(runtime.container_count(), 0);
        drop(taken);
        download.notify_one();
        let _worker = tokio::time::timeout(Duration::from_secs(5), syncing)
            .await
            .expect("the pod came up once its image was there");
        assert_eq!(api.last_status().phase.as_deref(), Some("Running"));
    }

    #[tokio::test(start_paused = true)]
    async fn runs_init_containers_in_order_then_app_containers() {
        let pod = TestPod::new("web")
            .init_container("init-a")
            .init_container("init-b")
            .container("app");
        let (mut worker, runtime, api, _pods) = worker(&pod);
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
        let (mut worker, runtime, api, _pods) = worker(&pod);
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
            let (mut worker, runtime, api, _pods) = worker(&pod);
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
        let (mut worker, runtime, api, _pods) = worker(&pod);
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
        let (mut worker, runtime, api, _pods) = worker(&pod);
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
        assert_eq!(
            message,
            "Back-off pulling image \"reg.local/busybox:1\": ErrImagePull: \
             failed to pull image \"reg.local/busybox:1\": manifest unknown"
        );
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
        let (mut worker, runtime, api, _pods) = worker(&pod);
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
        let (mut worker, runtime, api, _pods) = worker(&pod);
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

    #[tokio::test]
    async fn resources_and_env_from_the_spec() {
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
            field_env("POD", "metadata.name"),
            field_env("IP", "status.podIP"),
            EnvVar {
                name: "MEM_MI".into(),
                value: None,
                value_from: Some(k8s_openapi::api::core::v1::EnvVarSource {
                    resource_field_ref: Some(k8s_openapi::api::core::v1::ResourceFieldSelector {
                        resource: "limits.memory".into(),
                        divisor: Some(k8s_openapi::apimachinery::pkg::api::resource::Quantity(
                            "1Mi".into(),
                        )),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
            },
        ]);
        let mut pod = TestPod::new("envy");
        pod.spec().containers.push(c.clone());
        let ip: IpAddr = "10.0.0.5".parse().expect("ip");
        let pod_ip: Option<IpAddr> = Some("10.88.0.9".parse().expect("ip"));
        let api = RecordingApi::default();
        assert_eq!(
            container_env(&api, &pod.0, &c, ip, pod_ip).await,
            Ok(vec![
                ("A".into(), "1".into()),
                ("POD".into(), "envy".into()),
                ("IP".into(), "10.88.0.9".into()),
                ("MEM_MI".into(), "64".into()),
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
        assert_eq!(
            container_env(&api, &pod.0, &c, ip, pod_ip).await,
            Err("secret \"\" not found".to_string())
        );
    }

    /// `name` from the downward-API field `path`.
    fn field_env(name: &str, path: &str) -> EnvVar {
        key_ref_env(
            name,
            k8s_openapi::api::core::v1::EnvVarSource {
                field_ref: Some(k8s_openapi::api::core::v1::ObjectFieldSelector {
                    field_path: path.into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
    }

    fn key_ref_env(name: &str, source: k8s_openapi::api::core::v1::EnvVarSource) -> EnvVar {
        EnvVar {
            name: name.into(),
            value: None,
            value_from: Some(source),
        }
    }

    fn config_map_key(name: &str, key: &str, optional: Option<bool>) -> EnvVar {
        key_ref_env(
            &format!("CM_{}", key.to_uppercase()),
            k8s_openapi::api::core::v1::EnvVarSource {
                config_map_key_ref: Some(k8s_openapi::api::core::v1::ConfigMapKeySelector {
                    name: name.into(),
                    key: key.into(),
                    optional,
                }),
                ..Default::default()
            },
        )
    }

    fn secret_key(name: &str, key: &str, optional: Option<bool>) -> EnvVar {
        key_ref_env(
            &format!("SECRET_{}", key.to_uppercase()),
            k8s_openapi::api::core::v1::EnvVarSource {
                secret_key_ref: Some(k8s_openapi::api::core::v1::SecretKeySelector {
                    name: name.into(),
                    key: key.into(),
                    optional,
                }),
                ..Default::default()
            },
        )
    }

    #[tokio::test(start_paused = true)]
    async fn env_from_config_maps_and_secrets_reaches_the_runtime() {
        use k8s_openapi::api::core::v1::{ConfigMapEnvSource, EnvFromSource, SecretEnvSource};
        let mut pod = TestPod::new("env").container("app");
        let app = &mut pod.spec().containers[0];
        app.env_from = Some(vec![
            EnvFromSource {
                config_map_ref: Some(ConfigMapEnvSource {
                    name: "settings".into(),
                    optional: None,
                }),
                prefix: Some("CFG_".into()),
                ..Default::default()
            },
            EnvFromSource {
                secret_ref: Some(SecretEnvSource {
                    name: "creds".into(),
                    optional: None,
                }),
                ..Default::default()
            },
            EnvFromSource {
                config_map_ref: Some(ConfigMapEnvSource {
                    name: "absent".into(),
                    optional: Some(true),
                }),
                ..Default::default()
            },
        ]);
        app.env = Some(vec![
            config_map_key("settings", "mode", None),
            secret_key("creds", "token", None),
            config_map_key("settings", "missing-key", Some(true)),
            secret_key("absent", "token", Some(true)),
            // Overrides the value envFrom gave it, in its place.
            EnvVar {
                name: "CFG_mode".into(),
                value: Some("override".into()),
                value_from: None,
            },
        ]);
        let (mut worker, runtime, api, _pods) = worker(&pod);
        api.add_config_map(
            "settings",
            &[("mode", "fast"), ("1st", "made valid by the prefix")],
        );
        api.add_secret(
            "creds",
            &[
                ("token", "s3cret"),
                ("user", "admin"),
                ("2nd", "not a variable name"),
            ],
        );

        worker.sync(&pod.update()).await;
        let config = runtime.last_config("app").expect("app was created");
        let env: Vec<(&str, &str)> = config
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            env,
            [
                ("CFG_1st", "made valid by the prefix"),
                ("CFG_mode", "override"),
                ("token", "s3cret"),
                ("user", "admin"),
                ("CM_MODE", "fast"),
                ("SECRET_TOKEN", "s3cret"),
            ]
        );
        assert_eq!(api.last_status().phase.as_deref(), Some("Running"));
    }

    #[tokio::test(start_paused = true)]
    async fn missing_sources_give_create_container_config_error_until_they_exist() {
        let cases: [(&str, EnvVar, &str); 4] = [
            (
                "config map",
                config_map_key("settings", "mode", None),
                "configmap \"settings\" not found",
            ),
            (
                "secret",
                secret_key("creds", "token", Some(false)),
                "secret \"creds\" not found",
            ),
            (
                "config map key",
                config_map_key("other", "mode", None),
                "couldn't find key mode in ConfigMap default/other",
            ),
            (
                "secret key",
                secret_key("keyless", "token", None),
                "couldn't find key token in Secret default/keyless",
            ),
        ];
        for (name, var, message) in cases {
            let mut pod = TestPod::new("cfg").container("app");
            pod.spec().containers[0].env = Some(vec![var]);
            let (mut worker, runtime, api, _pods) = worker(&pod);
            api.add_config_map("other", &[("unrelated", "x")]);
            api.add_secret("keyless", &[("unrelated", "x")]);

            worker.sync(&pod.update()).await;
            let status = api.last_status();
            assert_eq!(
                waiting_reason(&status, "app").as_deref(),
                Some("CreateContainerConfigError"),
                "{name}"
            );
            let got = container_status(&status, "app")
                .state
                .as_ref()
                .and_then(|s| s.waiting.as_ref())
                .and_then(|w| w.message.clone());
            assert_eq!(got.as_deref(), Some(message), "{name}");
            assert_eq!(status.phase.as_deref(), Some("Pending"), "{name}");
            assert_eq!(runtime.container_count(), 0, "{name}");

            // Once the data is there, the next sync creates the container.
            api.add_config_map("settings", &[("mode", "fast")]);
            api.add_config_map("other", &[("mode", "slow")]);
            api.add_secret("creds", &[("token", "t")]);
            api.add_secret("keyless", &[("token", "t")]);
            worker.sync(&pod.update()).await;
            assert_eq!(runtime.container_count(), 1, "{name}");
            assert_eq!(
                api.last_status().phase.as_deref(),
                Some("Running"),
                "{name}"
            );
        }
    }

    fn volume(name: &str) -> Volume {
        Volume {
            name: name.into(),
            ..Default::default()
        }
    }

    fn volume_mount(name: &str, path: &str) -> k8s_openapi::api::core::v1::VolumeMount {
        k8s_openapi::api::core::v1::VolumeMount {
            name: name.into(),
            mount_path: path.into(),
            ..Default::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn volumes_are_laid_out_mounted_updated_and_removed_with_the_pod() {
        use k8s_openapi::api::core::v1::{
            ConfigMapVolumeSource, EmptyDirVolumeSource, HostPathVolumeSource, SecretVolumeSource,
        };
        let host = tempfile::tempdir().expect("host dir");
        let host_dir = host.path().join("made-by-kubelet");
        let mut pod = TestPod::new("vols").container("app");
        pod.spec().volumes = Some(vec![
            Volume {
                config_map: Some(ConfigMapVolumeSource {
                    name: "settings".into(),
                    items: Some(vec![KeyToPath {
                        key: "mode".into(),
                        path: "conf/mode.txt".into(),
                        mode: Some(0o600),
                    }]),
                    default_mode: Some(0o640),
                    ..Default::default()
                }),
                ..volume("cfg")
            },
            Volume {
                secret: Some(SecretVolumeSource {
                    secret_name: Some("creds".into()),
                    default_mode: Some(0o400),
                    ..Default::default()
                }),
                ..volume("creds")
            },
            Volume {
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..volume("scratch")
            },
            Volume {
                host_path: Some(HostPathVolumeSource {
                    path: host_dir.display().to_string(),
                    type_: Some("DirectoryOrCreate".into()),
                }),
                ..volume("host")
            },
        ]);
        pod.spec().containers[0].volume_mounts = Some(vec![
            volume_mount("cfg", "/etc/cfg"),
            volume_mount("creds", "/var/run/creds"),
            k8s_openapi::api::core::v1::VolumeMount {
                sub_path: Some("logs".into()),
                ..volume_mount("scratch", "/var/log/app")
            },
            k8s_openapi::api::core::v1::VolumeMount {
                read_only: Some(true),
                ..volume_mount("host", "/host")
            },
        ]);
        let (mut worker, runtime, api, pods) = worker(&pod);
        api.add_config_map("settings", &[("mode", "fast"), ("unused", "x")]);
        api.add_secret("creds", &[("token", "s3cret")]);

        worker.sync(&pod.update()).await;
        let volumes = pods.path().join("uid-vols").join("volumes");
        let mode_of = |p: &std::path::Path| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777
        };
        let mode_file = volumes.join("cfg/conf/mode.txt");
        assert_eq!(std::fs::read_to_string(&mode_file).expect("cfg"), "fast");
        assert_eq!(mode_of(&mode_file), 0o600);
        assert!(!volumes.join("cfg/unused").exists(), "only the items");
        let token = volumes.join("creds/token");
        assert_eq!(std::fs::read_to_string(&token).expect("token"), "s3cret");
        assert_eq!(mode_of(&token), 0o400);
        if nix::unistd::Uid::effective().is_root() {
            // As kubelet: secrets on a tmpfs, configMaps on the disk.
            let fs_type = |p: &std::path::Path| {
                nix::sys::statfs::statfs(p)
                    .expect("statfs")
                    .filesystem_type()
            };
            assert_eq!(
                fs_type(&volumes.join("creds")),
                nix::sys::statfs::TMPFS_MAGIC
            );
            assert_ne!(fs_type(&volumes.join("cfg")), nix::sys::statfs::TMPFS_MAGIC);
        }
        assert!(host_dir.is_dir(), "DirectoryOrCreate made it");
        assert!(volumes.join("scratch/logs").is_dir(), "subPath made");

        let mounts = runtime.last_config("app").expect("app").mounts;
        let want = [
            (volumes.join("cfg"), "/etc/cfg", true),
            (volumes.join("creds"), "/var/run/creds", true),
            (volumes.join("scratch/logs"), "/var/log/app", false),
            (host_dir.clone(), "/host", true),
        ];
        let got: Vec<(PathBuf, &str, bool)> = mounts
            .iter()
            .map(|m| (m.host_path.clone(), m.container_path.as_str(), m.read_only))
            .collect();
        assert_eq!(got, want);

        // The ConfigMap changes: the file changes in place.
        api.add_config_map("settings", &[("mode", "slow")]);
        worker.sync(&pod.update()).await;
        assert_eq!(std::fs::read_to_string(&mode_file).expect("cfg"), "slow");

        worker.sync(&pod.deleting(0).update()).await;
        assert!(!pods.path().join("uid-vols").exists(), "volumes removed");
        assert!(host_dir.is_dir(), "host paths are left alone");
    }

    #[tokio::test(start_paused = true)]
    async fn missing_volume_sources_keep_containers_waiting() {
        use k8s_openapi::api::core::v1::{ConfigMapVolumeSource, HostPathVolumeSource};
        let mut pod = TestPod::new("wait").container("app");
        pod.spec().volumes = Some(vec![Volume {
            config_map: Some(ConfigMapVolumeSource {
                name: "later".into(),
                ..Default::default()
            }),
            ..volume("cfg")
        }]);
        pod.spec().containers[0].volume_mounts = Some(vec![volume_mount("cfg", "/etc/cfg")]);
        let (mut first, runtime, api, _pods) = worker(&pod);
        first.sync(&pod.update()).await;
        assert_eq!(runtime.container_count(), 0);
        assert_eq!(api.last_status().phase.as_deref(), Some("Pending"));
        api.add_config_map("later", &[("k", "v")]);
        first.sync(&pod.update()).await;
        assert_eq!(runtime.container_count(), 1);

        // A hostPath of the wrong type and a mount of an unknown volume.
        let mut pod = TestPod::new("bad").container("app");
        pod.spec().volumes = Some(vec![Volume {
            host_path: Some(HostPathVolumeSource {
                path: "/proc/self/status".into(),
                type_: Some("Directory".into()),
            }),
            ..volume("host")
        }]);
        let (mut second, runtime, _api, _pods) = worker(&pod);
        second.sync(&pod.update()).await;
        assert_eq!(runtime.container_count(), 0);

        let mut pod = TestPod::new("unknown").container("app");
        pod.spec().containers[0].volume_mounts = Some(vec![volume_mount("nope", "/x")]);
        let (mut third, runtime, api, _pods) = worker(&pod);
        third.sync(&pod.update()).await;
        assert_eq!(runtime.container_count(), 0);
        let status = api.last_status();
        assert_eq!(
            waiting_reason(&status, "app").as_deref(),
            Some("CreateContainerConfigError")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_worker_adopts_running_containers_instead_of_restarting_them() {
        let pod = TestPod::new("keep").init_container("init").container("app");
        let (mut first, runtime, api, pods) = worker(&pod);
        runtime.set_behavior(
            "init",
            Behavior {
                exit_on_start: Some(0),
                ..Default::default()
            },
        );
        first.sync(&pod.update()).await;
        first.sync(&pod.update()).await;
        let before = api.last_status();
        assert_eq!(before.phase.as_deref(), Some("Running"));
        let app_id = container_status(&before, "app").container_id.clone();
        drop(first);

        // The agent restarts: a new worker on the same runtime, given the pod as stored.
        let mut stored = TestPod(pod.0.clone());
        stored.0.status = Some(before.clone());
        runtime.clear_calls();
        let api = Arc::new(RecordingApi::default());
        let mut second = PodWorker::new(
            runtime.clone(),
            api.clone(),
            "10.0.0.5".parse().expect("ip"),
            Duration::from_secs(1),
            pods.path().to_path_buf(),
            EventRecorder::disabled(),
            &stored.0,
        );
        second.sync(&stored.update()).await;
        let calls = runtime.calls();
        assert!(
            !calls.iter().any(|c| matches!(
                c,
                Call::CreateContainer(..) | Call::StartContainer(_) | Call::KillContainer(..)
            )),
            "{calls:?}"
        );
        assert_eq!(runtime.container_count(), 2);
        // Nothing changed, so nothing was written.
        assert!(api.writes.lock().is_empty(), "{:?}", api.writes.lock());

        // When the adopted container exits, the worker restarts it as attempt 1.
        assert!(runtime.exit("app", 1));
        second.sync(&stored.update()).await;
        let status = api.last_status();
        let app = container_status(&status, "app");
        assert_eq!(app.restart_count, 1);
        assert_ne!(app.container_id, app_id);
        assert_eq!(app.image_id, "reg.local/busybox:1@sha256:fake");
        assert!(runtime
            .calls()
            .contains(&Call::CreateContainer("app".into(), 1)));
        assert!(!runtime
            .calls()
            .contains(&Call::CreateContainer("init".into(), 1)));
    }

    /// The events a capturing recorder kept, in order.
    type Captured = Arc<Mutex<Vec<k8s_openapi::api::core::v1::Event>>>;

    /// A worker whose events are captured, in order.
    fn worker_with_events(
        pod: &TestPod,
    ) -> (
        PodWorker<FakeRuntime, RecordingApi>,
        Arc<FakeRuntime>,
        Arc<RecordingApi>,
        PodsDir,
        Captured,
    ) {
        let runtime = Arc::new(FakeRuntime::new());
        let api = Arc::new(RecordingApi::default());
        let pods = PodsDir(tempfile::tempdir().expect("pods dir"));
        let (events, captured) =
            EventRecorder::capturing(k8s_openapi::api::core::v1::EventSource {
                component: Some("rkube-nodeagent".into()),
                host: Some("n1".into()),
            });
        let worker = PodWorker::new(
            runtime.clone(),
            api.clone(),
            "10.0.0.5".parse().expect("ip"),
            Duration::from_secs(1),
            pods.path().to_path_buf(),
            events,
            &pod.0,
        );
        (worker, runtime, api, pods, captured)
    }

    fn exec_probe(command: &[&str]) -> k8s_openapi::api::core::v1::Probe {
        k8s_openapi::api::core::v1::Probe {
            exec: Some(k8s_openapi::api::core::v1::ExecAction {
                command: Some(command.iter().map(|c| c.to_string()).collect()),
            }),
            ..Default::default()
        }
    }

    fn failing(output: &str) -> runtime::ExecOutput {
        runtime::ExecOutput {
            exit_code: 1,
            output: output.as_bytes().to_vec(),
        }
    }

    fn passing() -> runtime::ExecOutput {
        runtime::ExecOutput::default()
    }

    /// (reason, message) of the captured events.
    fn reasons(events: &Mutex<Vec<k8s_openapi::api::core::v1::Event>>) -> Vec<(String, String)> {
        events
            .lock()
            .iter()
            .map(|e| {
                (
                    e.reason.clone().unwrap_or_default(),
                    e.message.clone().unwrap_or_default(),
                )
            })
            .collect()
    }

    fn condition(status: &PodStatus, type_: &str) -> String {
        status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == type_)
            .map(|c| c.status.clone())
            .expect("condition")
    }

    /// Lets the probers (spawned tasks) run for `seconds` of paused time.
    async fn advance(seconds: u64) {
        tokio::time::sleep(Duration::from_secs(seconds)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn failed_liveness_probe_kills_and_restarts_with_events_in_order() {
        let mut pod = TestPod::new("live").container("app");
        pod.spec().termination_grace_period_seconds = Some(5);
        pod.spec().containers[0].liveness_probe = Some(k8s_openapi::api::core::v1::Probe {
            failure_threshold: Some(2),
            ..exec_probe(&["check"])
        });
        let (mut worker, runtime, api, _pods, events) = worker_with_events(&pod);
        runtime.set_exec_result("app", failing("unhealthy"));
        worker.sync(&pod.update()).await;
        assert_eq!(api.last_status().phase.as_deref(), Some("Running"));

        // One failure is below the threshold: nothing happens.
        advance(1).await;
        worker.sync(&pod.update()).await;
        assert!(!runtime
            .calls()
            .iter()
            .any(|c| matches!(c, Call::KillContainer(..))));
        assert_eq!(container_status(&api.last_status(), "app").restart_count, 0);

        // The second failure kills the container; the same sync restarts it.
        advance(10).await;
        worker.sync(&pod.update()).await;
        let status = api.last_status();
        let app = container_status(&status, "app");
        assert_eq!(app.restart_count, 1);
        assert!(app
            .state
            .as_ref()
            .and_then(|s| s.running.as_ref())
            .is_some());
        let last = app.last_state.as_ref().and_then(|s| s.terminated.as_ref());
        assert_eq!(last.map(|t| t.exit_code), Some(143));
        let calls = runtime.calls();
        let term = calls
            .iter()
            .position(|c| *c == Call::KillContainer("app".into(), StopSignal::Term))
            .expect("SIGTERM");
        let recreate = calls
            .iter()
            .position(|c| *c == Call::CreateContainer("app".into(), 1))
            .expect("recreated");
        assert!(term < recreate, "{calls:?}");

        let got = reasons(&events);
        let order: Vec<&str> = got.iter().map(|(r, _)| r.as_str()).collect();
        assert_eq!(
            order,
            [
                "Pulled",
                "Created",
                "Started",
                "Unhealthy",
                "Unhealthy",
                "Killing",
                "Pulled",
                "Created",
                "Started"
            ]
        );
        assert_eq!(
            got[0].1, got[6].1,
            "the image was on the node both times: no Pulling"
        );
        assert_eq!(
            got[6].1,
            "Container image \"reg.local/busybox:1\" already present on machine"
        );
        assert_eq!(got[3].1, "Liveness probe failed: unhealthy");
        assert_eq!(
            got[5].1,
            "Container app failed liveness probe, will be restarted"
        );
        let unhealthy = events.lock()[3].clone();
        assert_eq!(unhealthy.type_.as_deref(), Some("Warning"));
        assert_eq!(
            unhealthy.involved_object.field_path.as_deref(),
            Some("spec.containers{app}")
        );
        assert_eq!(
            unhealthy.source.as_ref().and_then(|s| s.host.as_deref()),
            Some("n1")
        );

        // The new instance is probed afresh: its probe results start from zero.
        runtime.set_exec_result("app", passing());
        advance(30).await;
        worker.sync(&pod.update()).await;
        assert_eq!(container_status(&api.last_status(), "app").restart_count, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn readiness_probe_gates_ready_with_success_and_failure_thresholds() {
        let mut pod = TestPod::new("ready").container("app").container("plain");
        pod.spec().containers[0].readiness_probe = Some(k8s_openapi::api::core::v1::Probe {
            success_threshold: Some(2),
            failure_threshold: Some(3),
            ..exec_probe(&["ready?"])
        });
        let (mut worker, runtime, api, _pods, events) = worker_with_events(&pod);
        runtime.set_exec_result("app", failing("not yet"));
        worker.sync(&pod.update()).await;
        let status = api.last_status();
        assert_eq!(status.phase.as_deref(), Some("Running"));
        assert!(!container_status(&status, "app").ready);
        assert!(container_status(&status, "plain").ready, "no probe: ready");
        assert_eq!(condition(&status, "Ready"), "False");
        assert_eq!(condition(&status, "ContainersReady"), "False");

        let steps = [
            // (result, ready after it)
            (true, false),
            (true, true),
            (false, true),
            (false, true),
            (false, false),
            (true, false),
            (true, true),
        ];
        advance(1).await; // the first probe (failing) ran at once
        worker.sync(&pod.update()).await;
        for (i, (ok, ready)) in steps.into_iter().enumerate() {
            runtime.set_exec_result("app", if ok { passing() } else { failing("down") });
            advance(10).await;
            worker.sync(&pod.update()).await;
            let status = api.last_status();
            assert_eq!(container_status(&status, "app").ready, ready, "step {i}");
            let want = if ready { "True" } else { "False" };
            assert_eq!(condition(&status, "Ready"), want, "step {i}");
            assert_eq!(condition(&status, "ContainersReady"), want, "step {i}");
        }
        // Readiness never restarts a container.
        assert!(!runtime
            .calls()
            .iter()
            .any(|c| matches!(c, Call::KillContainer(..))));
        assert!(reasons(&events)
            .iter()
            .any(|(r, m)| r == "Unhealthy" && m == "Readiness probe failed: down"));
    }

    #[tokio::test(start_paused = true)]
    async fn startup_probe_holds_liveness_and_readiness_until_it_passes() {
        let mut pod = TestPod::new("slow").container("app");
        let app = &mut pod.spec().containers[0];
        app.startup_probe = Some(k8s_openapi::api::core::v1::Probe {
            failure_threshold: Some(30),
            ..exec_probe(&["started?"])
        });
        app.liveness_probe = Some(exec_probe(&["alive?"]));
        app.readiness_probe = Some(exec_probe(&["ready?"]));
        let (mut worker, runtime, api, _pods, _events) = worker_with_events(&pod);
        runtime.set_exec_result("app", failing("starting"));
        worker.sync(&pod.update()).await;
        for _ in 0..5 {
            advance(10).await;
            worker.sync(&pod.update()).await;
        }
        let execs = |runtime: &FakeRuntime| -> Vec<String> {
            runtime
                .calls()
                .into_iter()
                .filter_map(|c| match c {
                    Call::Exec(_, command) => command.first().cloned(),
                    _ => None,
                })
                .collect()
        };
        let before = execs(&runtime);
        assert!(before.len() >= 5, "{before:?}");
        assert!(before.iter().all(|c| c == "started?"), "{before:?}");
        let status = api.last_status();
        let app = container_status(&status, "app");
        assert_eq!((app.started, app.ready), (Some(false), false));
        assert_eq!(app.restart_count, 0, "below the startup failure threshold");

        runtime.set_exec_result("app", passing());
        advance(10).await;
        worker.sync(&pod.update()).await;
        let app_status = api.last_status();
        assert_eq!(container_status(&app_status, "app").started, Some(true));
        advance(1).await;
        worker.sync(&pod.update()).await;
        let after = execs(&runtime);
        let new: Vec<&String> = after[before.len()..].iter().collect();
        assert!(new.iter().any(|c| *c == "alive?"), "{new:?}");
        assert!(new.iter().any(|c| *c == "ready?"), "{new:?}");
        let status = api.last_status();
        assert!(container_status(&status, "app").ready);
        assert_eq!(condition(&status, "Ready"), "True");
        // The startup probe stops once it passed.
        advance(30).await;
        let later = execs(&runtime);
        assert!(
            !later[after.len()..].iter().any(|c| c == "started?"),
            "{later:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn failed_startup_probe_restarts_the_container() {
        let mut pod = TestPod::new("never").container("app");
        pod.spec().containers[0].startup_probe = Some(k8s_openapi::api::core::v1::Probe {
            failure_threshold: Some(1),
            ..exec_probe(&["started?"])
        });
        let (mut worker, runtime, api, _pods, events) = worker_with_events(&pod);
        runtime.set_exec_result("app", failing("no"));
        worker.sync(&pod.update()).await;
        advance(1).await;
        worker.sync(&pod.update()).await;
        assert_eq!(container_status(&api.last_status(), "app").restart_count, 1);
        assert!(reasons(&events).contains(&(
            "Killing".to_string(),
            "Container app failed startup probe, will be restarted".to_string()
        )));
    }

    #[tokio::test(start_paused = true)]
    async fn failed_post_start_hook_kills_the_container_which_restarts() {
        use k8s_openapi::api::core::v1::{ExecAction, Lifecycle, LifecycleHandler};
        let mut pod = TestPod::new("hooked").container("app");
        pod.spec().termination_grace_period_seconds = Some(2);
        pod.spec().containers[0].lifecycle = Some(Lifecycle {
            post_start: Some(LifecycleHandler {
                exec: Some(ExecAction {
                    command: Some(vec!["setup".into()]),
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        let (mut worker, runtime, api, _pods, events) = worker_with_events(&pod);
        runtime.set_exec_result("app", failing("setup failed"));
        worker.sync(&pod.update()).await;
        let calls = runtime.calls();
        let start = calls
            .iter()
            .position(|c| *c == Call::StartContainer("app".into()))
            .expect("started");
        let hook = calls
            .iter()
            .position(|c| *c == Call::Exec("app".into(), vec!["setup".into()]))
            .expect("hook ran");
        let term = calls
            .iter()
            .position(|c| *c == Call::KillContainer("app".into(), StopSignal::Term))
            .expect("killed");
        assert!(start < hook && hook < term, "{calls:?}");
        let got = reasons(&events);
        let failed = got
            .iter()
            .find(|(r, _)| r == "FailedPostStartHook")
            .expect("FailedPostStartHook event");
        assert!(failed.1.contains("setup failed"), "{failed:?}");
        let status = api.last_status();
        let app = container_status(&status, "app");
        assert!(app
            .state
            .as_ref()
            .and_then(|s| s.terminated.as_ref())
            .is_some());
        assert!(!app.ready);

        // The hook passes now: the restart keeps running.
        runtime.set_exec_result("app", passing());
        worker.sync(&pod.update()).await;
        let status = api.last_status();
        let app = container_status(&status, "app");
        assert_eq!(app.restart_count, 1);
        assert!(app
            .state
            .as_ref()
            .and_then(|s| s.running.as_ref())
            .is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn pre_stop_hook_runs_before_sigterm_on_deletion() {
        use k8s_openapi::api::core::v1::{ExecAction, Lifecycle, LifecycleHandler};
        let mut pod = TestPod::new("stopping").container("app");
        pod.spec().containers[0].lifecycle = Some(Lifecycle {
            pre_stop: Some(LifecycleHandler {
                exec: Some(ExecAction {
                    command: Some(vec!["drain".into()]),
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        let (mut worker, runtime, api, _pods, events) = worker_with_events(&pod);
        worker.sync(&pod.update()).await;
        runtime.clear_calls();
        assert_eq!(worker.sync(&pod.deleting(10).update()).await, Next::Done);
        let calls = runtime.calls();
        assert_eq!(
            &calls[..2],
            [
                Call::Exec("app".into(), vec!["drain".into()]),
                Call::KillContainer("app".into(), StopSignal::Term),
            ],
            "{calls:?}"
        );
        assert!(api.deleted());
        assert!(reasons(&events)
            .contains(&("Killing".to_string(), "Stopping container app".to_string())));
    }

    #[tokio::test(start_paused = true)]
    async fn pod_ip_is_reported_and_given_to_the_environment() {
        let mut pod = TestPod::new("ip").container("app");
        pod.spec().containers[0].env = Some(vec![field_env("MY_IP", "status.podIP")]);
        let (mut worker, runtime, api, _pods) = worker(&pod);
        worker.sync(&pod.update()).await;
        let status = api.last_status();
        // The fake hands the first sandbox 10.88.0.1.
        assert_eq!(status.pod_ip.as_deref(), Some("10.88.0.1"));
        assert_eq!(
            status.pod_ips,
            Some(vec![k8s_openapi::api::core::v1::PodIP {
                ip: "10.88.0.1".into()
            }])
        );
        assert_eq!(status.host_ip.as_deref(), Some("10.0.0.5"));
        let env = runtime.last_config("app").expect("created").env;
        assert_eq!(env, [("MY_IP".to_string(), "10.88.0.1".to_string())]);
    }

    #[tokio::test(start_paused = true)]
    async fn downward_api_volume_files_follow_labels_and_annotations() {
        use k8s_openapi::api::core::v1::{
            DownwardAPIVolumeFile, DownwardAPIVolumeSource, ObjectFieldSelector,
            ResourceFieldSelector, ResourceRequirements,
        };
        use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
        let field = |path: &str, field_path: &str| DownwardAPIVolumeFile {
            path: path.into(),
            field_ref: Some(ObjectFieldSelector {
                field_path: field_path.into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut pod = TestPod::new("downward").container("app");
        pod.0.metadata.labels = Some(
            [("tier", "web"), ("app", "shop")]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        pod.0.metadata.annotations = Some(
            [("note", "say \"hi\"")]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        pod.spec().containers[0].resources = Some(ResourceRequirements {
            limits: Some([("cpu".to_string(), Quantity("250m".into()))].into()),
            ..Default::default()
        });
        pod.spec().volumes = Some(vec![Volume {
            downward_api: Some(DownwardAPIVolumeSource {
                default_mode: Some(0o600),
                items: Some(vec![
                    field("labels", "metadata.labels"),
                    field("annotations", "metadata.annotations"),
                    DownwardAPIVolumeFile {
                        mode: Some(0o644),
                        ..field("meta/name", "metadata.name")
                    },
                    field("namespace", "metadata.namespace"),
                    field("uid", "metadata.uid"),
                    field("node", "spec.nodeName"),
                    field("ip", "status.podIP"),
                    field("tier", "metadata.labels['tier']"),
                    DownwardAPIVolumeFile {
                        path: "cpu_limit_millis".into(),
                        resource_field_ref: Some(ResourceFieldSelector {
                            container_name: Some("app".into()),
                            resource: "limits.cpu".into(),
                            divisor: Some(Quantity("1m".into())),
                        }),
                        ..Default::default()
                    },
                    DownwardAPIVolumeFile {
                        path: "cpu_limit".into(),
                        resource_field_ref: Some(ResourceFieldSelector {
                            container_name: Some("app".into()),
                            resource: "limits.cpu".into(),
                            divisor: None,
                        }),
                        ..Default::default()
                    },
                ]),
            }),
            ..volume("info")
        }]);
        pod.spec().containers[0].volume_mounts = Some(vec![volume_mount("info", "/etc/info")]);
        let (mut worker, runtime, _api, pods) = worker(&pod);
        worker.sync(&pod.update()).await;
        let dir = pods.path().join("uid-downward/volumes/info");
        let read = |p: &str| std::fs::read_to_string(dir.join(p)).expect(p);
        let mode_of = |p: &str| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(dir.join(p))
                .expect(p)
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(read("labels"), "app=\"shop\"\ntier=\"web\"");
        assert_eq!(read("annotations"), "note=\"say \\\"hi\\\"\"");
        assert_eq!(read("meta/name"), "downward");
        assert_eq!(read("namespace"), "default");
        assert_eq!(read("uid"), "uid-downward");
        assert_eq!(read("node"), "n1");
        assert_eq!(read("ip"), "10.88.0.1");
        assert_eq!(read("tier"), "web");
        assert_eq!(read("cpu_limit_millis"), "250");
        assert_eq!(read("cpu_limit"), "1", "rounded up");
        assert_eq!(mode_of("labels"), 0o600);
        assert_eq!(mode_of("meta/name"), 0o644);
        let mounts = runtime.last_config("app").expect("app").mounts;
        assert_eq!(mounts[0].host_path, dir);
        assert!(mounts[0].read_only);

        // Labels change: the file is rewritten in place.
        pod.0
            .metadata
            .labels
            .as_mut()
            .expect("labels")
            .insert("tier".into(), "api".into());
        worker.sync(&pod.update()).await;
        assert_eq!(read("labels"), "app=\"shop\"\ntier=\"api\"");
        assert_eq!(read("tier"), "api");
        assert_eq!(
            runtime.container_count(),
            1,
            "no restart for a label change"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn pulling_is_said_only_when_the_registry_is_asked() {
        let present = "Container image \"reg.local/busybox:1\" already present on machine";
        let cases = [
            (
                "IfNotPresent, on the node",
                "IfNotPresent",
                true,
                vec!["Pulled"],
            ),
            (
                "IfNotPresent, absent",
                "IfNotPresent",
                false,
                vec!["Pulling", "Pulled"],
            ),
            (
                "Always, on the node",
                "Always",
                true,
                vec!["Pulling", "Pulled"],
            ),
            ("Never, on the node", "Never", true, vec!["Pulled"]),
        ];
        for (name, policy, on_node, want) in cases {
            let mut pod = TestPod::new("img").container("app");
            pod.spec().containers[0].image_pull_policy = Some(policy.into());
            let (mut worker, runtime, api, _pods, events) = worker_with_events(&pod);
            if !on_node {
                runtime.image_missing(&image()).notify_one();
            }
            worker.sync(&pod.update()).await;
            assert_eq!(
                api.last_status().phase.as_deref(),
                Some("Running"),
                "{name}"
            );
            let got = reasons(&events);
            let pulls: Vec<&(String, String)> =
                got.iter().filter(|(r, _)| r.starts_with("Pull")).collect();
            let reasons: Vec<&str> = pulls.iter().map(|(r, _)| r.as_str()).collect();
            assert_eq!(reasons, want, "{name}: {got:?}");
            let pulled = &pulls.last().expect("a Pulled event").1;
            if want.len() == 1 {
                assert_eq!(pulled, present, "{name}");
            } else {
                assert!(
                    pulled.starts_with("Successfully pulled image"),
                    "{name}: {pulled}"
                );
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn pull_failures_back_offs_and_mount_failures_are_events() {
        use k8s_openapi::api::core::v1::ConfigMapVolumeSource;
        let pod = TestPod::new("img").container("app");
        let (mut worker, runtime, _api, _pods, events) = worker_with_events(&pod);
        runtime.fail_pull(&image(), "manifest unknown");
        for _ in 0..4 {
            worker.sync(&pod.update()).await;
        }
        let got = reasons(&events);
        let want_prefix = [
            ("Pulling", "Pulling image \"reg.local/busybox:1\""),
            (
                "Failed",
                "Failed to pull image \"reg.local/busybox:1\": failed to pull image \"reg.local/busybox:1\": manifest unknown",
            ),
            ("Failed", "Error: ErrImagePull"),
        ];
        for (i, (reason, message)) in want_prefix.iter().enumerate() {
            assert_eq!(
                (got[i].0.as_str(), got[i].1.as_str()),
                (*reason, *message),
                "{got:?}"
            );
        }
        // Backing off is said once per back-off, not on every sync.
        let back_offs = got
            .iter()
            .filter(|(r, m)| {
                r == "BackOff" && m == "Back-off pulling image \"reg.local/busybox:1\""
            })
            .count();
        assert_eq!(back_offs, 1, "{got:?}");
        assert!(got.contains(&("Failed".into(), "Error: ImagePullBackOff".into())));

        // A volume that cannot be made: one FailedMount about the pod, not a container.
        let mut pod = TestPod::new("mount").container("app");
        pod.spec().volumes = Some(vec![Volume {
            config_map: Some(ConfigMapVolumeSource {
                name: "absent".into(),
                ..Default::default()
            }),
            ..volume("cfg")
        }]);
        let (mut worker, _runtime, _api, _pods, events) = worker_with_events(&pod);
        worker.sync(&pod.update()).await;
        worker.sync(&pod.update()).await;
        let mounts: Vec<_> = events
            .lock()
            .iter()
            .filter(|e| e.reason.as_deref() == Some("FailedMount"))
            .cloned()
            .collect();
        assert_eq!(mounts.len(), 1);
        assert_eq!(mounts[0].type_.as_deref(), Some("Warning"));
        assert_eq!(mounts[0].involved_object.field_path, None);
        assert!(
            mounts[0]
                .message
                .as_deref()
                .is_some_and(|m| m.contains("configmap \"absent\" not found")),
            "{mounts:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_result_wakes_the_worker_without_waiting_for_the_resync() {
        let mut pod = TestPod::new("wake").container("app");
        pod.spec().containers[0].liveness_probe = Some(k8s_openapi::api::core::v1::Probe {
            failure_threshold: Some(1),
            ..exec_probe(&["check"])
        });
        let runtime = Arc::new(FakeRuntime::new());
        let api = Arc::new(RecordingApi::default());
        let pods = tempfile::tempdir().expect("pods dir");
        let worker = PodWorker::new(
            runtime.clone(),
            api.clone(),
            "10.0.0.5".parse().expect("ip"),
            Duration::from_secs(3600),
            pods.path().to_path_buf(),
            EventRecorder::disabled(),
            &pod.0,
        );
        runtime.set_exec_result("app", failing("dead"));
        let (_updates, receiver) = watch::channel(pod.update());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(worker.run(receiver, shutdown.clone()));
        advance(2).await;
        assert!(
            runtime
                .calls()
                .contains(&Call::CreateContainer("app".into(), 1)),
            "{:?}",
            runtime.calls()
        );
        assert_eq!(container_status(&api.last_status(), "app").restart_count, 1);
        shutdown.cancel();
        task.await.expect("worker ends");
    }

    #[tokio::test(start_paused = true)]
    async fn an_adopted_started_container_skips_its_startup_probe() {
        let mut pod = TestPod::new("adopt").container("app");
        let app = &mut pod.spec().containers[0];
        app.startup_probe = Some(exec_probe(&["started?"]));
        app.liveness_probe = Some(exec_probe(&["alive?"]));
        let (mut first, runtime, api, pods) = worker(&pod);
        first.sync(&pod.update()).await;
        advance(1).await;
        first.sync(&pod.update()).await;
        let before = api.last_status();
        assert_eq!(container_status(&before, "app").started, Some(true));
        drop(first);
        advance(1).await;

        let mut stored = TestPod(pod.0.clone());
        stored.0.status = Some(before);
        runtime.clear_calls();
        let mut second = PodWorker::new(
            runtime.clone(),
            Arc::new(RecordingApi::default()),
            "10.0.0.5".parse().expect("ip"),
            Duration::from_secs(1),
            pods.path().to_path_buf(),
            EventRecorder::disabled(),
            &stored.0,
        );
        second.sync(&stored.update()).await;
        advance(1).await;
        let execs: Vec<Call> = runtime
            .calls()
            .into_iter()
            .filter(|c| matches!(c, Call::Exec(..)))
            .collect();
        assert_eq!(execs, [Call::Exec("app".into(), vec!["alive?".into()])]);
    }
}
