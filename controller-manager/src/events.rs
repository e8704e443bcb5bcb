//! Kubernetes Events about the objects controllers act on (`SuccessfulCreate`,
//! `ScalingReplicaSet`, `NodeNotReady`…), so `kubectl describe` tells the story.
//!
//! The recorder is [`rkube_client::events::EventRecorder`] (shared with the node
//! agent); [`spawn`] starts one for the controller-manager that writes through a
//! [`Writer`], so tests see events in their `Recorder` like any other write.

use std::sync::Arc;

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{Event, EventSource};
use rkube_client::api;
use rkube_client::events::EventSink;
pub use rkube_client::events::{EventRecorder, EventType};
use tokio_util::sync::CancellationToken;

use crate::cluster::Writer;

/// The component name events of the controller-manager carry.
pub const COMPONENT: &str = "rkube-controller-manager";

/// A recorder writing through `writer` in a task that ends with `shutdown`.
pub fn spawn(writer: Arc<dyn Writer<Event>>, shutdown: CancellationToken) -> EventRecorder {
    let source = EventSource {
        component: Some(COMPONENT.to_string()),
        host: None,
    };
    EventRecorder::spawn(Arc::new(WriterSink(writer)), source, shutdown)
}

/// An [`EventSink`] over the controllers' [`Writer`].
struct WriterSink(Arc<dyn Writer<Event>>);

impl EventSink for WriterSink {
    fn create(&self, event: &Event) -> BoxFuture<'_, api::Result<Event>> {
        self.0.create(event)
    }

    fn replace(&self, event: &Event) -> BoxFuture<'_, api::Result<Event>> {
        self.0.replace(event)
    }
}
