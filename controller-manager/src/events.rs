//! Kubernetes Events about the objects controllers act on (`SuccessfulCreate`,
//! `ScalingReplicaSet`, `NodeNotReady`…), so `kubectl describe` tells the story.
//!
//! [`EventRecorder::record`] never blocks a reconcile: events go through a bounded
//! channel to a background task that writes them, folding repeats of the same event
//! into one object with a growing `count`, as client-go's recorder does.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use rkube_client::Object;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::cluster::Writer;

/// Whether an event reports normal operation or something a human may need to see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

/// Keeps event names unique when two are recorded in the same nanosecond.
static SEQUENCE: AtomicU64 = AtomicU64::new(0);

/// Repeats of one event are folded only while fewer than this many distinct events are
/// remembered.
const REMEMBERED: usize = 4096;

/// Writes Events for one component (`source.component`); cheap to clone.
#[derive(Debug, Clone)]
pub struct EventRecorder {
    sender: Option<mpsc::Sender<Event>>,
}

impl EventRecorder {
    /// A recorder writing through `writer` in a task that ends with `shutdown`.
    pub fn spawn(writer: Arc<dyn Writer<Event>>, shutdown: CancellationToken) -> Self {
        let (sender, mut receiver) = mpsc::channel::<Event>(1024);
        tokio::spawn(async move {
            let mut written: HashMap<(String, String, String), Event> = HashMap::new();
            loop {
                let event = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    event = receiver.recv() => event,
                };
                let Some(event) = event else { return };
                let key = (
                    event.involved_object.uid.clone().unwrap_or_default(),
                    event.reason.clone().unwrap_or_default(),
                    event.message.clone().unwrap_or_default(),
                );
                let result = match written.get(&key) {
                    Some(previous) => {
                        let mut repeat = previous.clone();
                        repeat.count = Some(previous.count.unwrap_or(1) + 1);
                        repeat.last_timestamp = event.last_timestamp.clone();
                        match writer.replace(&repeat).await {
                            Ok(stored) => Ok(stored),
                            Err(_) => writer.create(&event).await,
                        }
                    }
                    None => writer.create(&event).await,
                };
                match result {
                    Ok(stored) => {
                        if written.len() >= REMEMBERED {
                            written.clear();
                        }
                        written.insert(key, stored);
                    }
                    Err(err) => warn!(error = %err, "failed to write event"),
                }
            }
        });
        EventRecorder {
            sender: Some(sender),
        }
    }

    /// A recorder that drops every event (unit tests).
    pub fn disabled() -> Self {
        EventRecorder { sender: None }
    }

    /// Records an event about `object`; dropped when too many are pending.
    pub fn record<K: Object>(&self, object: &K, kind: EventType, reason: &str, message: String) {
        let Some(sender) = &self.sender else { return };
        let meta = object.metadata();
        let now = Time(crate::pod::now());
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
                ..Default::default()
            },
            reason: Some(reason.to_string()),
            message: Some(message),
            type_: Some(
                match kind {
                    EventType::Normal => "Normal",
                    EventType::Warning => "Warning",
                }
                .to_string(),
            ),
            source: Some(EventSource {
                component: Some("rkube-controller-manager".to_string()),
                host: None,
            }),
            first_timestamp: Some(now.clone()),
            last_timestamp: Some(now),
            count: Some(1),
            reporting_component: Some("rkube-controller-manager".to_string()),
            ..Default::default()
        };
        let _ = sender.try_send(event);
    }
}
