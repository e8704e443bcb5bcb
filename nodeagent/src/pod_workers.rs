//! The set of pod workers: watches the pods bound to this node (`spec.nodeName`) and
//! hands every change to the pod's worker, starting one per new pod uid.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{EventSource, Pod};
use rkube_client::events::EventRecorder;
use rkube_client::watcher::Event;
use rkube_client::{watcher, Api, Client, WatcherConfig};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn, Instrument};

use crate::pod_worker::{key, ClientPodApi, PodApi, PodUpdate, PodWorker};
use crate::runtime::ContainerRuntime;
use crate::start_slots::StartSlots;

/// `source.component` of the events the node agent records.
pub const EVENT_COMPONENT: &str = "rkube-nodeagent";

/// Watches this node's pods and runs their workers.
pub struct PodWorkers<R, A = ClientPodApi> {
    pods: Api<Pod>,
    runtime: Arc<R>,
    api: Arc<A>,
    node: String,
    host_ip: IpAddr,
    resync: Duration,
    /// Where pods' volumes live (`<root>/pods`).
    pods_dir: PathBuf,
    /// Kubelet-style events about the pods (`source.component` rkube-nodeagent).
    events: EventRecorder,
    /// How many pods come up at once; `None`: no bound.
    start_slots: Option<StartSlots>,
}

impl<R: ContainerRuntime> PodWorkers<R> {
    pub fn new(
        client: Client,
        runtime: Arc<R>,
        node: String,
        host_ip: IpAddr,
        resync: Duration,
        pods_dir: PathBuf,
    ) -> Self {
        // The recorder's task ends when the last worker holding it is gone.
        let events = EventRecorder::spawn(
            Arc::new(client.clone()),
            EventSource {
                component: Some(EVENT_COMPONENT.to_string()),
                host: Some(node.clone()),
            },
            CancellationToken::new(),
        );
        PodWorkers {
            pods: Api::all(client.clone()),
            runtime,
            api: Arc::new(ClientPodApi::new(client)),
            events,
            node,
            host_ip,
            resync,
            pods_dir,
            start_slots: None,
        }
    }
}

impl<R, A> PodWorkers<R, A> {
    /// Pods come up in `slots` (see [`crate::start_slots`]).
    pub fn with_start_slots(mut self, slots: StartSlots) -> Self {
        self.start_slots = Some(slots);
        self
    }
}

impl<R: ContainerRuntime, A: PodApi> PodWorkers<R, A> {
    /// Runs until `shutdown`; the workers stop with it and leave containers running.
    pub async fn run(self, shutdown: CancellationToken) {
        let config = WatcherConfig::default().fields(&format!("spec.nodeName={}", self.node));
        let mut events = watcher(self.pods.clone(), config).boxed();
        let mut workers: HashMap<String, watch::Sender<PodUpdate>> = HashMap::new();
        let mut tasks: JoinSet<String> = JoinSet::new();
        let mut listed: Option<HashSet<String>> = None;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                    if let Ok(uid) = done {
                        workers.remove(&uid);
                    }
                }
                event = events.next() => match event {
                    None => break,
                    Some(Err(err)) => warn!(error = %err, "pod watch failed; retrying"),
                    Some(Ok(Event::Init)) => listed = Some(HashSet::new()),
                    Some(Ok(Event::InitApply(pod))) => {
                        if let (Some(seen), Some(uid)) = (listed.as_mut(), pod.metadata.uid.clone()) {
                            seen.insert(uid);
                        }
                        self.dispatch(&mut workers, &mut tasks, pod, false, &shutdown);
                    }
                    Some(Ok(Event::InitDone)) => {
                        // Pods that vanished while we were not watching are gone.
                        if let Some(seen) = listed.take() {
                            for (uid, sender) in &workers {
                                if !seen.contains(uid) {
                                    let pod = sender.borrow().pod.clone();
                                    sender.send_replace(PodUpdate { pod, removed: true });
                                }
                            }
                        }
                    }
                    Some(Ok(Event::Apply(pod))) => self.dispatch(&mut workers, &mut tasks, pod, false, &shutdown),
                    Some(Ok(Event::Delete(pod))) => self.dispatch(&mut workers, &mut tasks, pod, true, &shutdown),
                }
            }
        }
        // Without their senders the workers stop at their next wake-up.
        drop(workers);
        while tasks.join_next().await.is_some() {}
    }

    fn dispatch(
        &self,
        workers: &mut HashMap<String, watch::Sender<PodUpdate>>,
        tasks: &mut JoinSet<String>,
        pod: Pod,
        removed: bool,
        shutdown: &CancellationToken,
    ) {
        let Some(uid) = pod.metadata.uid.clone() else {
            return;
        };
        let update = PodUpdate {
            pod: Arc::new(pod),
            removed,
        };
        if let Some(sender) = workers.get(&uid) {
            sender.send_replace(update);
            return;
        }
        if removed {
            return;
        }
        let pod_key = key(&update.pod);
        info!(pod = %pod_key, uid = %uid, "starting pod worker");
        let mut worker = PodWorker::new(
            self.runtime.clone(),
            self.api.clone(),
            self.host_ip,
            self.resync,
            self.pods_dir.clone(),
            self.events.clone(),
            &update.pod,
        );
        if let Some(slots) = &self.start_slots {
            worker = worker.with_start_slots(slots.clone());
        }
        let (sender, receiver) = watch::channel(update);
        workers.insert(uid.clone(), sender);
        let token = shutdown.child_token();
        tasks.spawn(
            async move {
                worker.run(receiver, token).await;
                uid
            }
            .instrument(tracing::info_span!("pod_worker", pod = %pod_key)),
        );
    }
}
