//! Kubernetes Events about the objects components act on (`SuccessfulCreate`,
//! `NodeNotReady`, `Pulling`, `Unhealthy`…), so `kubectl describe` tells the story.
//!
//! [`EventRecorder::record`] never blocks its caller: events go through a bounded
//! channel to a background task that writes them through an [`EventSink`], folding
//! repeats of the same event into one object with a growing `count`, as client-go's
//! recorder does. [`EventRecorder::capturing`] keeps events in memory instead (tests).
//!
//! Events yield to the work they describe: while a component says it is busy
//! ([`EventRecorder::busy`], say while pods come up on a node), its events wait, each at
//! most [`MAX_HOLD`] after it was recorded, and are written once the work is done. They
//! are diagnostics; half of the writes of a burst of pod starts are its events, and a
//! pod should not come up later for the story of its own start.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use parking_lot::Mutex;
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::{api, Api, Client, Object};

/// Whether an event reports normal operation or something a human may need to see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

impl EventType {
    /// The `type` field's value.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

/// Where recorded events are written: the apiserver ([`Client`]) or a test's fake.
pub trait EventSink: Send + Sync + 'static {
    /// Creates `event` in its namespace.
    fn create(&self, event: &Event) -> BoxFuture<'_, api::Result<Event>>;
    /// Replaces a stored event (a repeat with a higher `count`).
    fn replace(&self, event: &Event) -> BoxFuture<'_, api::Result<Event>>;
}

impl EventSink for Client {
    fn create(&self, event: &Event) -> BoxFuture<'_, api::Result<Event>> {
        let event = event.clone();
        Box::pin(async move {
            let namespace = event.metadata.namespace.clone().unwrap_or_default();
            Api::<Event>::namespaced(self.clone(), &namespace)
                .create(&event)
                .await
        })
    }

    fn replace(&self, event: &Event) -> BoxFuture<'_, api::Result<Event>> {
        let event = event.clone();
        Box::pin(async move {
            let namespace = event.metadata.namespace.clone().unwrap_or_default();
            let name = event.metadata.name.clone().unwrap_or_default();
            Api::<Event>::namespaced(self.clone(), &namespace)
                .replace(&name, &event)
                .await
        })
    }
}

/// Keeps event names unique when two are recorded in the same nanosecond.
static SEQUENCE: AtomicU64 = AtomicU64::new(0);

/// Repeats of one event are folded only while fewer than this many distinct events are
/// remembered.
const REMEMBERED: usize = 4096;

/// How many events may wait to be written before new ones are dropped.
const PENDING: usize = 1024;

/// The longest an event waits for its component to stop being busy.
pub const MAX_HOLD: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
enum Target {
    Disabled,
    Channel(mpsc::Sender<(Event, Instant)>),
    Capture(Arc<Mutex<Vec<Event>>>),
}

/// Writes Events for one component (`source.component`, `source.host`); cheap to clone.
#[derive(Debug, Clone)]
pub struct EventRecorder {
    target: Target,
    source: EventSource,
    busy: Arc<Busy>,
}

/// How much work a component has in hand that its events wait for.
#[derive(Debug, Default)]
struct Busy {
    count: AtomicUsize,
    idle: Notify,
}

impl Busy {
    fn is_busy(&self) -> bool {
        self.count.load(Ordering::SeqCst) > 0
    }

    /// Returns once nothing is in hand.
    async fn idle(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            // Registered before the check, so a guard dropped in between still wakes us.
            notified.as_mut().enable();
            if !self.is_busy() {
                return;
            }
            notified.await;
        }
    }
}

/// Work in hand (see [`EventRecorder::busy`]); dropping it says the work is done.
#[derive(Debug)]
pub struct BusyGuard(Arc<Busy>);

impl Drop for BusyGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// What identifies repeats of one event: object uid, field path, reason, message.
type RepeatKey = (String, String, String, String);

impl EventRecorder {
    /// A recorder writing through `sink` in a task that ends with `shutdown` or when the
    /// last clone of the recorder is dropped. `source` names the component (and host).
    pub fn spawn(
        sink: Arc<dyn EventSink>,
        source: EventSource,
        shutdown: CancellationToken,
    ) -> Self {
        let (sender, mut receiver) = mpsc::channel::<(Event, Instant)>(PENDING);
        let busy = Arc::new(Busy::default());
        let work = busy.clone();
        tokio::spawn(async move {
            let mut written: HashMap<RepeatKey, Event> = HashMap::new();
            loop {
                let event = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    event = receiver.recv() => event,
                };
                let Some((event, recorded)) = event else {
                    return;
                };
                if work.is_busy() {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        () = work.idle() => {}
                        () = tokio::time::sleep_until(recorded + MAX_HOLD) => {}
                    }
                }
                let key = (
                    event.involved_object.uid.clone().unwrap_or_default(),
                    event.involved_object.field_path.clone().unwrap_or_default(),
                    event.reason.clone().unwrap_or_default(),
                    event.message.clone().unwrap_or_default(),
                );
                let result = match written.get(&key) {
                    Some(previous) => {
                        let mut repeat = previous.clone();
                        repeat.count = Some(previous.count.unwrap_or(1) + 1);
                        repeat.last_timestamp = event.last_timestamp.clone();
                        match sink.replace(&repeat).await {
                            Ok(stored) => Ok(stored),
                            Err(_) => sink.create(&event).await,
                        }
                    }
                    None => sink.create(&event).await,
                };
                match result {
                    Ok(stored) => {
                        if written.len() >= REMEMBERED {
                            written.clear();
                        }
                        written.insert(key, stored);
                    }
                    Err(err) => {
                        warn!(error = %err, reason = ?event.reason, "failed to write event")
                    }
                }
            }
        });
        EventRecorder {
            target: Target::Channel(sender),
            source,
            busy,
        }
    }

    /// A recorder that drops every event (unit tests).
    pub fn disabled() -> Self {
        EventRecorder {
            target: Target::Disabled,
            source: EventSource::default(),
            busy: Arc::default(),
        }
    }

    /// A recorder that keeps every event, in order, in the returned list (unit tests
    /// that check which events were recorded).
    pub fn capturing(source: EventSource) -> (Self, Arc<Mutex<Vec<Event>>>) {
        let events = Arc::new(Mutex::new(Vec::new()));
        let recorder = EventRecorder {
            target: Target::Capture(events.clone()),
            source,
            busy: Arc::default(),
        };
        (recorder, events)
    }

    /// Says the component has work in hand that its events should not slow: until the
    /// guard (and every other one) is dropped, events wait, each at most [`MAX_HOLD`].
    pub fn busy(&self) -> BusyGuard {
        self.busy.count.fetch_add(1, Ordering::SeqCst);
        BusyGuard(self.busy.clone())
    }

    /// Records an event about `object`; dropped when too many are pending.
    pub fn record<K: Object>(&self, object: &K, kind: EventType, reason: &str, message: String) {
        self.record_at(object, None, kind, reason, message);
    }

    /// Records an event about a part of `object` named by `field_path` (kubelet:
    /// `spec.containers{app}`); dropped when too many are pending.
    pub fn record_at<K: Object>(
        &self,
        object: &K,
        field_path: Option<&str>,
        kind: EventType,
        reason: &str,
        message: String,
    ) {
        if matches!(self.target, Target::Disabled) {
            return;
        }
        let meta = object.metadata();
        let now = Time(crate::time::now());
        let namespace = meta
            .namespace
            .clone()
            .filter(|ns| !ns.is_empty())
            .unwrap_or_else(|| "default".to_string());
        let event = Event {
            metadata: ObjectMeta {
                // client-go's naming: the object's name and a unique hexadecimal stamp.
                name: Some(format!(
                    "{}.{:x}",
                    meta.name.as_deref().unwrap_or("object"),
                    now.0.timestamp_nanos_opt().unwrap_or_default() as u64
                        + SEQUENCE.fetch_add(1, Ordering::Relaxed)
                )),
                namespace: Some(namespace),
                ..Default::default()
            },
            involved_object: ObjectReference {
                api_version: Some(K::API_VERSION.to_string()),
                kind: Some(K::KIND.to_string()),
                name: meta.name.clone(),
                namespace: meta.namespace.clone(),
                uid: meta.uid.clone(),
                resource_version: meta.resource_version.clone(),
                field_path: field_path.map(str::to_string),
            },
            reason: Some(reason.to_string()),
            message: Some(message),
            type_: Some(kind.as_str().to_string()),
            source: Some(self.source.clone()),
            first_timestamp: Some(now.clone()),
            last_timestamp: Some(now),
            count: Some(1),
            reporting_component: self.source.component.clone(),
            reporting_instance: self.source.host.clone(),
            ..Default::default()
        };
        match &self.target {
            Target::Disabled => {}
            Target::Channel(sender) => {
                let _ = sender.try_send((event, Instant::now()));
            }
            Target::Capture(events) => events.lock().push(event),
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::Pod;

    use super::*;

    #[derive(Default)]
    struct Fake {
        calls: Mutex<Vec<(&'static str, Event)>>,
    }

    impl EventSink for Fake {
        fn create(&self, event: &Event) -> BoxFuture<'_, api::Result<Event>> {
            self.calls.lock().push(("create", event.clone()));
            let event = event.clone();
            Box::pin(async move { Ok(event) })
        }
        fn replace(&self, event: &Event) -> BoxFuture<'_, api::Result<Event>> {
            self.calls.lock().push(("replace", event.clone()));
            let event = event.clone();
            Box::pin(async move { Ok(event) })
        }
    }

    fn pod() -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("ns".into()),
                uid: Some("u1".into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn source() -> EventSource {
        EventSource {
            component: Some("rkube-nodeagent".into()),
            host: Some("node-1".into()),
        }
    }

    #[tokio::test]
    async fn repeats_are_folded_into_one_event_with_a_count() {
        let sink = Arc::new(Fake::default());
        let shutdown = CancellationToken::new();
        let recorder = EventRecorder::spawn(sink.clone(), source(), shutdown.clone());
        let pod = pod();
        for _ in 0..2 {
            recorder.record_at(
                &pod,
                Some("spec.containers{app}"),
                EventType::Warning,
                "Unhealthy",
                "Liveness probe failed".into(),
            );
        }
        recorder.record(&pod, EventType::Normal, "Scheduled", "ok".into());
        for _ in 0..200 {
            if sink.calls.lock().len() == 3 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let calls = sink.calls.lock().clone();
        let verbs: Vec<&str> = calls.iter().map(|(v, _)| *v).collect();
        assert_eq!(verbs, ["create", "replace", "create"]);
        let (_, repeat) = &calls[1];
        assert_eq!(repeat.count, Some(2));
        assert_eq!(
            repeat.involved_object.field_path.as_deref(),
            Some("spec.containers{app}")
        );
        assert_eq!(repeat.source, Some(source()));
        assert_eq!(repeat.type_.as_deref(), Some("Warning"));
        assert_eq!(repeat.metadata.namespace.as_deref(), Some("ns"));
        assert_eq!(calls[2].1.involved_object.field_path, None);
        shutdown.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn events_wait_while_the_component_is_busy_at_most_max_hold() {
        let sink = Arc::new(Fake::default());
        let shutdown = CancellationToken::new();
        let recorder = EventRecorder::spawn(sink.clone(), source(), shutdown.clone());
        let pod = pod();
        let written = |sink: &Fake| sink.calls.lock().len();
        let step = Duration::from_millis(100);

        // Not busy: written at once.
        recorder.record(&pod, EventType::Normal, "Scheduled", "a".into());
        tokio::time::sleep(step).await;
        assert_eq!(written(&sink), 1);

        // Busy: held until the last guard goes.
        let first = recorder.busy();
        let second = recorder.busy();
        recorder.record(&pod, EventType::Normal, "Pulled", "b".into());
        recorder.record(&pod, EventType::Normal, "Created", "c".into());
        tokio::time::sleep(step).await;
        assert_eq!(written(&sink), 1, "held while busy");
        drop(first);
        tokio::time::sleep(step).await;
        assert_eq!(written(&sink), 1, "still busy");
        drop(second);
        tokio::time::sleep(step).await;
        assert_eq!(written(&sink), 3, "written once idle");

        // Busy for longer than MAX_HOLD: written after MAX_HOLD anyway.
        let _forever = recorder.busy();
        recorder.record(&pod, EventType::Normal, "Started", "d".into());
        tokio::time::sleep(MAX_HOLD - step).await;
        assert_eq!(written(&sink), 3, "held up to MAX_HOLD");
        tokio::time::sleep(2 * step).await;
        assert_eq!(written(&sink), 4, "written after MAX_HOLD");
        let reasons: Vec<String> = sink
            .calls
            .lock()
            .iter()
            .filter_map(|(_, e)| e.reason.clone())
            .collect();
        assert_eq!(reasons, ["Scheduled", "Pulled", "Created", "Started"]);
        shutdown.cancel();
    }

    #[test]
    fn capturing_keeps_events_in_order_and_disabled_drops_them() {
        let (recorder, events) = EventRecorder::capturing(source());
        let pod = pod();
        recorder.record(&pod, EventType::Normal, "Pulling", "a".into());
        recorder.record(&pod, EventType::Warning, "Failed", "b".into());
        let reasons: Vec<String> = events
            .lock()
            .iter()
            .filter_map(|e| e.reason.clone())
            .collect();
        assert_eq!(reasons, ["Pulling", "Failed"]);
        EventRecorder::disabled().record(&pod, EventType::Normal, "x", "y".into());
    }
}
