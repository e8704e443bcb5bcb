//! Kubernetes Events about the objects components act on (`SuccessfulCreate`,
//! `NodeNotReady`, `Pulling`, `Unhealthy`…), so `kubectl describe` tells the story.
//!
//! [`EventRecorder::record`] never blocks its caller: events go through a bounded
//! channel to a background task that writes them through an [`EventSink`], folding
//! repeats of the same event into one object with a growing `count`, as client-go's
//! recorder does. [`EventRecorder::capturing`] keeps events in memory instead (tests).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use parking_lot::Mutex;
use tokio::sync::mpsc;
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

#[derive(Debug, Clone)]
enum Target {
    Disabled,
    Channel(mpsc::Sender<Event>),
    Capture(Arc<Mutex<Vec<Event>>>),
}

/// Writes Events for one component (`source.component`, `source.host`); cheap to clone.
#[derive(Debug, Clone)]
pub struct EventRecorder {
    target: Target,
    source: EventSource,
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
        let (sender, mut receiver) = mpsc::channel::<Event>(PENDING);
        tokio::spawn(async move {
            let mut written: HashMap<RepeatKey, Event> = HashMap::new();
            loop {
                let event = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    event = receiver.recv() => event,
                };
                let Some(event) = event else { return };
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
        }
    }

    /// A recorder that drops every event (unit tests).
    pub fn disabled() -> Self {
        EventRecorder {
            target: Target::Disabled,
            source: EventSource::default(),
        }
    }

    /// A recorder that keeps every event, in order, in the returned list (unit tests
    /// that check which events were recorded).
    pub fn capturing(source: EventSource) -> (Self, Arc<Mutex<Vec<Event>>>) {
        let events = Arc::new(Mutex::new(Vec::new()));
        let recorder = EventRecorder {
            target: Target::Capture(events.clone()),
            source,
        };
        (recorder, events)
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
                let _ = sender.try_send(event);
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
