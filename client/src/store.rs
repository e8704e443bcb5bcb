//! The reflector: an in-memory cache of one kind fed by a [`crate::watcher()`] stream,
//! written by one [`Writer`] and read through any number of [`Store`]s.
//!
//! ```text
//! let (store, writer) = store::store::<Pod>();
//! let events = reflector(writer, watcher(api, WatcherConfig::default()));
//! tokio::spawn(events.for_each(|_| async {}).instrument(info_span!("pod_reflector")));
//! store.wait_until_ready().await?;
//! let pod = store.get(&ObjectRef::new("web").within("default"));
//! ```
//!
//! Objects are shared as `Arc<K>`: clone before changing one.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use parking_lot::RwLock;
use tokio::sync::watch;

use crate::api::Object;
use crate::watcher::{self, Event};

/// What waiting on a [`Store`] can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the store's writer was dropped before the first list completed")]
    WriterDropped,
}

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The key of an object in a store: namespace (none for cluster-scoped kinds) and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectRef {
    pub namespace: Option<String>,
    pub name: String,
}

impl ObjectRef {
    /// A cluster-scoped object (add [`ObjectRef::within`] for a namespaced one).
    pub fn new(name: &str) -> Self {
        ObjectRef {
            namespace: None,
            name: name.to_string(),
        }
    }

    /// The same name in `namespace`.
    pub fn within(mut self, namespace: &str) -> Self {
        self.namespace = Some(namespace.to_string());
        self
    }

    /// The key of `object`.
    pub fn from_obj<K: Object>(object: &K) -> Self {
        let meta = object.metadata();
        ObjectRef {
            namespace: meta.namespace.clone(),
            name: meta.name.clone().unwrap_or_default(),
        }
    }
}

impl fmt::Display for ObjectRef {
    /// `namespace/name`, or `name` for cluster-scoped objects.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{ns}/{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

type Cache<K> = Arc<RwLock<HashMap<ObjectRef, Arc<K>>>>;

/// Read access to a cache; cheap to clone.
pub struct Store<K> {
    cache: Cache<K>,
    ready: watch::Receiver<bool>,
}

impl<K> Clone for Store<K> {
    fn clone(&self) -> Self {
        Store {
            cache: self.cache.clone(),
            ready: self.ready.clone(),
        }
    }
}

impl<K> fmt::Debug for Store<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("len", &self.cache.read().len())
            .field("ready", &*self.ready.borrow())
            .finish()
    }
}

impl<K: Object> Store<K> {
    /// The object with this key, as of the last event applied.
    pub fn get(&self, key: &ObjectRef) -> Option<Arc<K>> {
        self.cache.read().get(key).cloned()
    }

    /// Every object, in no particular order.
    pub fn state(&self) -> Vec<Arc<K>> {
        self.cache.read().values().cloned().collect()
    }

    /// The first object (in no particular order) for which `predicate` holds.
    pub fn find(&self, predicate: impl Fn(&K) -> bool) -> Option<Arc<K>> {
        self.cache.read().values().find(|k| predicate(k)).cloned()
    }

    pub fn len(&self) -> usize {
        self.cache.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.cache.read().is_empty()
    }

    /// Whether a first complete list has been applied.
    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// Waits until a first complete list has been applied: before that, an empty store
    /// does not mean that there are no objects.
    ///
    /// # Errors
    /// [`Error::WriterDropped`] when the writer went away before that.
    pub async fn wait_until_ready(&self) -> Result<()> {
        let mut ready = self.ready.clone();
        ready
            .wait_for(|ready| *ready)
            .await
            .map(|_| ())
            .map_err(|_| Error::WriterDropped)
    }
}

/// Write access to a cache: applies watcher events. There is one per cache.
pub struct Writer<K> {
    cache: Cache<K>,
    ready: watch::Sender<bool>,
    /// The list in progress between `Init` and `InitDone`.
    buffer: Option<HashMap<ObjectRef, Arc<K>>>,
}

impl<K> fmt::Debug for Writer<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Writer")
            .field("listing", &self.buffer.is_some())
            .finish_non_exhaustive()
    }
}

/// A new, empty cache: its reader and its writer.
pub fn store<K: Object>() -> (Store<K>, Writer<K>) {
    let writer = Writer::default();
    (writer.as_reader(), writer)
}

impl<K> Default for Writer<K> {
    fn default() -> Self {
        Writer {
            cache: Arc::new(RwLock::new(HashMap::new())),
            ready: watch::Sender::new(false),
            buffer: None,
        }
    }
}

impl<K: Object> Writer<K> {
    /// Another reader of this cache.
    pub fn as_reader(&self) -> Store<K> {
        Store {
            cache: self.cache.clone(),
            ready: self.ready.subscribe(),
        }
    }

    /// Applies one watcher event. A relist is buffered and swapped in whole at
    /// `InitDone`, so readers never see a half-listed state.
    pub fn apply_watcher_event(&mut self, event: &Event<K>) {
        match event {
            Event::Init => self.buffer = Some(HashMap::new()),
            Event::InitApply(object) => {
                if let Some(buffer) = self.buffer.as_mut() {
                    buffer.insert(ObjectRef::from_obj(object), Arc::new(object.clone()));
                }
            }
            Event::InitDone => {
                if let Some(buffer) = self.buffer.take() {
                    *self.cache.write() = buffer;
                }
                self.ready.send_replace(true);
            }
            Event::Apply(object) => {
                let key = ObjectRef::from_obj(object);
                self.cache.write().insert(key, Arc::new(object.clone()));
            }
            Event::Delete(object) => {
                self.cache.write().remove(&ObjectRef::from_obj(object));
            }
        }
    }
}

/// Applies every event of `stream` to `writer`, passing the events on unchanged.
///
/// Poll the returned stream (for example in a spawned task) to keep the cache current.
pub fn reflector<K, S>(mut writer: Writer<K>, stream: S) -> impl Stream<Item = S::Item>
where
    K: Object,
    S: Stream<Item = watcher::Result<Event<K>>>,
{
    stream.map(move |event| {
        if let Ok(event) = &event {
            writer.apply_watcher_event(event);
        }
        event
    })
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{ConfigMap, Node};

    use super::*;

    fn cm(ns: &str, name: &str, value: &str) -> ConfigMap {
        let mut cm = ConfigMap::default();
        cm.metadata.namespace = Some(ns.to_string());
        cm.metadata.name = Some(name.to_string());
        cm.data = Some([("v".to_string(), value.to_string())].into());
        cm
    }

    fn value(store: &Store<ConfigMap>, ns: &str, name: &str) -> Option<String> {
        let cm = store.get(&ObjectRef::new(name).within(ns))?;
        cm.data.as_ref()?.get("v").cloned()
    }

    #[tokio::test]
    async fn applies_events_and_swaps_relists_whole() {
        let (store, mut writer) = store::<ConfigMap>();
        assert!(!store.is_ready());
        writer.apply_watcher_event(&Event::Init);
        writer.apply_watcher_event(&Event::InitApply(cm("a", "x", "1")));
        writer.apply_watcher_event(&Event::InitApply(cm("b", "x", "2")));
        assert!(store.is_empty(), "a list in progress is not visible");
        writer.apply_watcher_event(&Event::InitDone);
        store.wait_until_ready().await.expect("ready");
        assert_eq!(value(&store, "a", "x").as_deref(), Some("1"));
        assert_eq!(
            value(&store, "b", "x").as_deref(),
            Some("2"),
            "keyed by namespace"
        );

        writer.apply_watcher_event(&Event::Apply(cm("a", "x", "3")));
        writer.apply_watcher_event(&Event::Delete(cm("b", "x", "2")));
        assert_eq!(value(&store, "a", "x").as_deref(), Some("3"));
        assert_eq!(store.len(), 1);

        // A relist replaces everything, including objects deleted while disconnected.
        writer.apply_watcher_event(&Event::Init);
        writer.apply_watcher_event(&Event::InitApply(cm("c", "y", "4")));
        assert_eq!(value(&store, "a", "x").as_deref(), Some("3"));
        writer.apply_watcher_event(&Event::InitDone);
        assert_eq!(store.len(), 1);
        assert_eq!(value(&store, "c", "y").as_deref(), Some("4"));
        assert!(store
            .find(|c| c.metadata.namespace.as_deref() == Some("c"))
            .is_some());
    }

    #[tokio::test]
    async fn wait_fails_when_the_writer_goes_away() {
        let (store, writer) = store::<Node>();
        drop(writer);
        assert!(matches!(
            store.wait_until_ready().await,
            Err(Error::WriterDropped)
        ));
    }

    #[test]
    fn object_refs_print_like_kubectl_keys() {
        assert_eq!(ObjectRef::new("n1").to_string(), "n1");
        assert_eq!(
            ObjectRef::new("web").within("default").to_string(),
            "default/web"
        );
    }
}
