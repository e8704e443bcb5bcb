//! The running scheduler: informers feeding the [`Cache`] and the
//! [`SchedulingQueue`], the scheduling thread (one pod at a time, synchronous CPU
//! work), and the asynchronous binding cycle (many binds in flight while the next pod
//! is scheduled), plus the pod's `PodScheduled` condition and events.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{
    Binding, EventSource, Namespace, Node, ObjectReference, Pod, PodCondition,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use rkube_client::events::{EventRecorder, EventType};
use rkube_client::watcher::Event as WatchEvent;
use rkube_client::{watcher, Api, Client, WatcherConfig};
use tokio::runtime::Handle;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

use crate::cache::Cache;
use crate::config::SchedulerConfig;
use crate::framework::{CycleState, Framework, ScheduleError};
use crate::node_info::PodInfo;
use crate::plugins;
use crate::queue::{ClusterEvent, QueuedPod, SchedulingQueue};

/// What went wrong starting the scheduler.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to build profile")]
    Profile(#[source] crate::framework::Error),
    #[error("the informers stopped before their first list completed")]
    InformersStopped,
    #[error("failed to start the scheduling thread")]
    Thread(#[source] std::io::Error),
}

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// At most this many binds in flight at once.
const MAX_BINDS_IN_FLIGHT: usize = 512;

/// Counters, readable while the scheduler runs (the benchmark reports them).
#[derive(Debug, Default)]
pub struct Metrics {
    pub scheduled: AtomicU64,
    pub bound: AtomicU64,
    pub bind_errors: AtomicU64,
    pub unschedulable: AtomicU64,
    /// Nodes examined by Filter, summed over successful cycles.
    pub evaluated_nodes: AtomicU64,
    /// Feasible (scored) nodes, summed over successful cycles.
    pub feasible_nodes: AtomicU64,
    /// All nodes, summed over successful cycles.
    pub total_nodes: AtomicU64,
}

/// The scheduler's shared state.
pub struct Scheduler {
    client: Client,
    cache: Cache,
    queue: Arc<SchedulingQueue>,
    frameworks: HashMap<String, Arc<Framework>>,
    metrics: Arc<Metrics>,
    /// `Scheduled` and `FailedScheduling`; held back while pods are being placed.
    events: EventRecorder,
    binds: Arc<Semaphore>,
    runtime: Handle,
}

impl Scheduler {
    /// The counters.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }
}

/// Runs the scheduler until `shutdown` is cancelled: starts the informers, waits for
/// their first list, then schedules. `metrics` receives the counters.
///
/// # Errors
/// An invalid profile, or informers that never synced.
pub async fn run_scheduler(
    client: Client,
    config: SchedulerConfig,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> Result<()> {
    let registry = plugins::in_tree_registry().map_err(Error::Profile)?;
    let mut frameworks = HashMap::new();
    for profile in &config.profiles {
        let fw = Framework::new(&registry, profile, config.percentage_of_nodes_to_score)
            .map_err(Error::Profile)?;
        frameworks.insert(profile.scheduler_name.clone(), Arc::new(fw));
    }
    // Its task ends when the scheduler (every clone of the recorder) is gone.
    let events = EventRecorder::spawn(
        Arc::new(client.clone()),
        EventSource {
            component: Some(crate::config::DEFAULT_SCHEDULER_NAME.to_string()),
            host: None,
        },
        CancellationToken::new(),
    );
    let scheduler = Arc::new(Scheduler {
        client: client.clone(),
        cache: Cache::new(),
        queue: Arc::new(SchedulingQueue::new(
            config.initial_backoff(),
            config.max_backoff(),
        )),
        frameworks,
        metrics,
        events,
        binds: Arc::new(Semaphore::new(MAX_BINDS_IN_FLIGHT)),
        runtime: Handle::current(),
    });

    let (synced_tx, mut synced_rx) = mpsc::channel::<&'static str>(3);
    let informers = [
        tokio::spawn(
            watch_nodes(scheduler.clone(), synced_tx.clone(), shutdown.clone())
                .instrument(tracing::info_span!("node_informer")),
        ),
        tokio::spawn(
            watch_pods(scheduler.clone(), synced_tx.clone(), shutdown.clone())
                .instrument(tracing::info_span!("pod_informer")),
        ),
        tokio::spawn(
            watch_namespaces(scheduler.clone(), synced_tx, shutdown.clone())
                .instrument(tracing::info_span!("namespace_informer")),
        ),
    ];
    for _ in 0..3 {
        tokio::select! {
            synced = synced_rx.recv() => match synced {
                Some(kind) => debug!(kind, "informer synced"),
                None => return Err(Error::InformersStopped),
            },
            _ = shutdown.cancelled() => return Ok(()),
        }
    }
    info!(
        nodes = scheduler.cache.node_count(),
        "caches synced, scheduling"
    );

    let worker = scheduler.clone();
    let thread = std::thread::Builder::new()
        .name("scheduling".to_string())
        .spawn(move || {
            while let Some(pod) = worker.queue.pop() {
                worker.schedule_one(pod);
            }
        })
        .map_err(Error::Thread)?;

    shutdown.cancelled().await;
    scheduler.queue.close();
    let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    for informer in informers {
        informer.abort();
    }
    Ok(())
}

fn pod_node(pod: &Pod) -> Option<&str> {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .filter(|n| !n.is_empty())
}

fn is_terminal(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded") | Some("Failed")
    )
}

impl Scheduler {
    fn responsible_for(&self, pod: &Pod) -> bool {
        let name = pod
            .spec
            .as_ref()
            .and_then(|s| s.scheduler_name.as_deref())
            .unwrap_or(crate::config::DEFAULT_SCHEDULER_NAME);
        self.frameworks.contains_key(name)
    }

    fn on_pod(&self, pod: Pod) {
        let now = Instant::now();
        let info = Arc::new(PodInfo::new(Arc::new(pod)));
        let pod = &info.pod;
        if is_terminal(pod) {
            self.on_pod_deleted(&info);
            return;
        }
        if let Some(node) = pod_node(pod) {
            self.queue.delete(&info.key);
            let new = !self.cache.contains_pod(&info.key) || self.cache.is_assumed(&info.key);
            let node = node.to_string();
            self.cache.upsert_bound_pod(info, &node);
            if new && self.queue.has_unschedulable() {
                self.queue
                    .on_cluster_event(ClusterEvent::AssignedPodAdded, now);
            }
            return;
        }
        if !self.responsible_for(pod) {
            return;
        }
        if info.is_terminating() {
            self.queue.delete(&info.key);
            return;
        }
        if self.cache.is_assumed(&info.key) {
            return; // bind in flight
        }
        self.queue.add_or_update(info, now);
    }

    fn on_pod_deleted(&self, info: &PodInfo) {
        self.queue.delete(&info.key);
        if self.cache.contains_pod(&info.key) {
            self.cache.remove_pod(&info.key);
            if self.queue.has_unschedulable() {
                self.queue
                    .on_cluster_event(ClusterEvent::AssignedPodDeleted, Instant::now());
            }
        }
    }

    fn on_node(&self, node: Node) {
        let name = node.metadata.name.clone().unwrap_or_default();
        let event = if self.cache.has_node(&name) {
            ClusterEvent::NodeChanged
        } else {
            ClusterEvent::NodeAdded
        };
        self.cache.upsert_node(Arc::new(node));
        if self.queue.has_unschedulable() {
            self.queue.on_cluster_event(event, Instant::now());
        }
    }

    /// One scheduling cycle (on the scheduling thread); hands the bind to the runtime.
    fn schedule_one(self: &Arc<Self>, queued: QueuedPod) {
        // Events wait while pods are placed, until this one is bound (or not).
        let busy = self.events.busy();
        let pod = queued.info.clone();
        if self.cache.contains_pod(&pod.key) {
            self.queue.done(&pod.key);
            return;
        }
        let scheduler_name = pod
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.scheduler_name.as_deref())
            .unwrap_or(crate::config::DEFAULT_SCHEDULER_NAME);
        let Some(fw) = self.frameworks.get(scheduler_name).cloned() else {
            self.queue.done(&pod.key);
            return;
        };
        let snapshot = self.cache.snapshot();
        let mut state = CycleState::new();
        let result = fw.schedule(&mut state, &pod, &snapshot);
        let now = Instant::now();
        let result = match result {
            Ok(result) => result,
            Err(err) => {
                let message = err.message();
                self.metrics.unschedulable.fetch_add(1, Ordering::Relaxed);
                debug!(pod = %pod.key, attempts = queued.attempts, %message, "pod is unschedulable");
                let mut queued = queued;
                match err {
                    ScheduleError::Plugin(_) => self.queue.add_backoff(queued, now),
                    ScheduleError::NoNodes => {
                        queued.rejected_by.clear();
                        self.queue.add_unschedulable(queued, now);
                    }
                    ScheduleError::Unfit(fit) => {
                        queued.rejected_by = fit.rejecting_plugins();
                        self.queue.add_unschedulable(queued, now);
                    }
                }
                self.report_failure(pod, "Unschedulable", message);
                return;
            }
        };
        let m = &self.metrics;
        m.scheduled.fetch_add(1, Ordering::Relaxed);
        m.evaluated_nodes
            .fetch_add(result.evaluated_nodes as u64, Ordering::Relaxed);
        m.feasible_nodes
            .fetch_add(result.feasible_nodes as u64, Ordering::Relaxed);
        m.total_nodes
            .fetch_add(snapshot.nodes().len() as u64, Ordering::Relaxed);

        if let Err(e) = self.cache.assume_pod(pod.clone(), &result.node) {
            warn!(pod = %pod.key, error = %e, "could not assume pod");
            self.queue.done(&pod.key);
            return;
        }
        let status = fw.run_reserve(&state, &pod, &result.node);
        if !status.is_success() {
            let _ = self.cache.forget_pod(&pod.key);
            self.queue.add_backoff(queued, now);
            self.report_failure(pod, "SchedulerError", status.message());
            return;
        }

        let Ok(permit) = self.runtime.block_on(self.binds.clone().acquire_owned()) else {
            return; // semaphore closed: shutting down
        };
        let this = self.clone();
        let node = result.node;
        let span = tracing::debug_span!("bind", pod = %pod.key, node = %node);
        self.runtime.spawn(
            async move {
                this.bind(queued, fw, state, node).await;
                drop(permit);
                drop(busy);
            }
            .instrument(span),
        );
    }

    /// The binding cycle: POST pods/binding; forget and retry with backoff on failure.
    async fn bind(&self, queued: QueuedPod, fw: Arc<Framework>, state: CycleState, node: String) {
        let pod = queued.info.clone();
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &pod.namespace);
        let name = pod.pod.metadata.name.clone().unwrap_or_default();
        let binding = Binding {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(pod.namespace.clone()),
                uid: pod.pod.metadata.uid.clone(),
                ..Default::default()
            },
            target: ObjectReference {
                kind: Some("Node".to_string()),
                api_version: Some("v1".to_string()),
                name: Some(node.clone()),
                ..Default::default()
            },
        };
        match api.bind(&name, &binding).await {
            Ok(()) => {
                self.metrics.bound.fetch_add(1, Ordering::Relaxed);
                self.queue.done(&pod.key);
                debug!("bound pod");
                self.events.record(
                    pod.pod.as_ref(),
                    EventType::Normal,
                    "Scheduled",
                    format!("Successfully assigned {} to {node}", pod.key),
                );
            }
            Err(e) => {
                self.metrics.bind_errors.fetch_add(1, Ordering::Relaxed);
                warn!(error = %e, "bind failed");
                let _ = self.cache.forget_pod(&pod.key);
                fw.run_unreserve(&state, &pod, &node);
                if e.is_not_found() {
                    self.queue.delete(&pod.key);
                    return;
                }
                self.queue.add_backoff(queued, Instant::now());
                if !e.is_conflict() {
                    self.report_failure(pod, "SchedulerError", format!("binding rejected: {e}"));
                }
            }
        }
    }

    /// The `FailedScheduling` event and the `PodScheduled=False` condition.
    fn report_failure(&self, pod: Arc<PodInfo>, reason: &'static str, message: String) {
        self.events.record(
            pod.pod.as_ref(),
            EventType::Warning,
            "FailedScheduling",
            message.clone(),
        );
        let client = self.client.clone();
        let span = tracing::debug_span!("pod_condition", pod = %pod.key);
        self.runtime.spawn(
            async move {
                if let Err(e) = set_condition(client, &pod, reason, &message).await {
                    debug!(error = %e, "could not update PodScheduled condition");
                }
            }
            .instrument(span),
        );
    }
}

/// Sets `PodScheduled=False` with `reason` and `message` unless already so; retries on
/// conflict with a fresh read.
async fn set_condition(
    client: Client,
    pod: &PodInfo,
    reason: &str,
    message: &str,
) -> Result<(), rkube_client::api::Error> {
    let api: Api<Pod> = Api::namespaced(client, &pod.namespace);
    let name = pod.pod.metadata.name.clone().unwrap_or_default();
    for _ in 0..3 {
        let Some(mut current) = api.get_opt(&name).await? else {
            return Ok(());
        };
        if pod_node(&current).is_some() {
            return Ok(());
        }
        let status = current.status.get_or_insert_with(Default::default);
        let conditions = status.conditions.get_or_insert_with(Vec::new);
        let existing = conditions.iter_mut().find(|c| c.type_ == "PodScheduled");
        let now = Time(rkube_client::time::now());
        match existing {
            Some(c)
                if c.status == "False"
                    && c.reason.as_deref() == Some(reason)
                    && c.message.as_deref() == Some(message) =>
            {
                return Ok(())
            }
            Some(c) => {
                if c.status != "False" {
                    c.last_transition_time = Some(now);
                }
                c.status = "False".to_string();
                c.reason = Some(reason.to_string());
                c.message = Some(message.to_string());
            }
            None => conditions.push(PodCondition {
                type_: "PodScheduled".to_string(),
                status: "False".to_string(),
                reason: Some(reason.to_string()),
                message: Some(message.to_string()),
                last_transition_time: Some(now),
                ..Default::default()
            }),
        }
        match api.replace_status(&name, &current).await {
            Ok(_) => return Ok(()),
            Err(e) if e.is_conflict() => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Feeds every event of a watcher stream to `on_event` until shutdown; errors are logged
/// and the watcher retries by itself.
async fn follow<K, E, S>(
    mut stream: S,
    what: &'static str,
    shutdown: CancellationToken,
    mut on_event: impl FnMut(WatchEvent<K>),
) where
    E: std::fmt::Display,
    S: futures::Stream<Item = Result<WatchEvent<K>, E>> + Unpin,
{
    loop {
        let event = tokio::select! {
            e = stream.next() => e,
            _ = shutdown.cancelled() => return,
        };
        match event {
            None => return,
            Some(Err(e)) => warn!(error = %e, watch = what, "watch failed; retrying"),
            Some(Ok(event)) => on_event(event),
        }
    }
}

async fn watch_nodes(
    s: Arc<Scheduler>,
    synced: mpsc::Sender<&'static str>,
    shutdown: CancellationToken,
) {
    let api: Api<Node> = Api::all(s.client.clone());
    let stream = watcher(api, WatcherConfig::default()).boxed();
    let mut listed: HashSet<String> = HashSet::new();
    follow(stream, "nodes", shutdown, |event| match event {
        WatchEvent::Init => listed.clear(),
        WatchEvent::InitApply(node) => {
            listed.insert(node.metadata.name.clone().unwrap_or_default());
            s.on_node(node);
        }
        WatchEvent::InitDone => {
            // A relist replaces the state: nodes not listed are gone.
            for name in s.cache.node_names() {
                if !listed.contains(&name) {
                    s.cache.remove_node(&name);
                }
            }
            let _ = synced.try_send("nodes");
        }
        WatchEvent::Apply(node) => s.on_node(node),
        WatchEvent::Delete(node) => {
            s.cache
                .remove_node(node.metadata.name.as_deref().unwrap_or(""));
        }
    })
    .await;
}

async fn watch_pods(
    s: Arc<Scheduler>,
    synced: mpsc::Sender<&'static str>,
    shutdown: CancellationToken,
) {
    let api: Api<Pod> = Api::all(s.client.clone());
    let stream = watcher(api, WatcherConfig::default()).boxed();
    let mut listed: HashSet<String> = HashSet::new();
    follow(stream, "pods", shutdown, |event| match event {
        WatchEvent::Init => listed.clear(),
        WatchEvent::InitApply(pod) => {
            listed.insert(format!(
                "{}/{}",
                pod.metadata.namespace.as_deref().unwrap_or(""),
                pod.metadata.name.as_deref().unwrap_or("")
            ));
            s.on_pod(pod);
        }
        WatchEvent::Apply(pod) => s.on_pod(pod),
        WatchEvent::InitDone => {
            // A relist replaces the state: bound pods not listed are gone (assumed
            // pods stay: their bind may not have reached the apiserver yet).
            for key in s.cache.bound_pod_keys() {
                if !listed.contains(&key) {
                    s.cache.remove_pod(&key);
                }
            }
            s.queue.retain(|key| listed.contains(key));
            listed = HashSet::new();
            let _ = synced.try_send("pods");
        }
        WatchEvent::Delete(pod) => {
            s.on_pod_deleted(&PodInfo::new(Arc::new(pod)));
        }
    })
    .await;
}

async fn watch_namespaces(
    s: Arc<Scheduler>,
    synced: mpsc::Sender<&'static str>,
    shutdown: CancellationToken,
) {
    let api: Api<Namespace> = Api::all(s.client.clone());
    let (store, writer) = rkube_client::store::store();
    let stream = rkube_client::reflector(writer, watcher(api, WatcherConfig::default())).boxed();
    let mut synced_once = false;
    follow(stream, "namespaces", shutdown, |event| match event {
        WatchEvent::Init | WatchEvent::InitApply(_) => {}
        _ => {
            s.cache.set_namespaces(&store.state());
            if !synced_once {
                synced_once = true;
                let _ = synced.try_send("namespaces");
            }
        }
    })
    .await;
}
