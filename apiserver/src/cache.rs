//! The watch cache: one etcd watch over the whole registry feeds an in-memory copy of
//! every object and a window of recent events per resource.
//!
//! Lists are served from the cache once it has caught up with etcd's current revision
//! (a consistent read), and every watcher of a resource shares the cache's single etcd
//! watch: a watcher resuming from a `resourceVersion` gets the buffered events after it,
//! then live ones. A `resourceVersion` older than the window is answered with 410 Gone,
//! as is one that etcd compaction has passed.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use etcd_client::{EventType as EtcdEventType, WatchOptions};
use parking_lot::RwLock;
use serde_json::Value;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use rkube_api::{object, resource::RESOURCES, Resource};

use crate::storage::{self, Storage, PREFIX};

/// What happened to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// An object as the cache holds it: parsed, serialised and indexed once.
#[derive(Debug)]
pub struct CachedObject {
    pub key: String,
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// The object with its `resourceVersion`.
    pub value: Value,
    /// `value` as JSON.
    pub json: Bytes,
    pub revision: i64,
}

impl CachedObject {
    /// Indexes and serialises an object once.
    pub fn new(key: String, value: Value, revision: i64) -> Self {
        let json = Bytes::from(serde_json::to_vec(&value).expect("a JSON value always serialises"));
        CachedObject {
            namespace: object::namespace(&value).unwrap_or_default().to_string(),
            name: object::name(&value).unwrap_or_default().to_string(),
            labels: object::labels(&value),
            key,
            value,
            json,
            revision,
        }
    }
}

/// One change, as every watcher of the resource sees it.
#[derive(Debug)]
pub struct Event {
    pub kind: EventType,
    pub object: Arc<CachedObject>,
    /// The object before the change (for selector transitions).
    pub prev: Option<Arc<CachedObject>>,
    pub revision: i64,
}

/// Why a watch or list could not be served from the cache.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("too old resource version: {requested} ({oldest})")]
    TooOld { requested: i64, oldest: i64 },
    #[error("Too large resource version: {requested}, current: {current}")]
    TooNew { requested: i64, current: i64 },
    #[error("the watch cache is not ready")]
    NotReady,
    #[error("could not read etcd's revision")]
    Storage(#[from] storage::Error),
}

struct ResourceState {
    objects: BTreeMap<String, Arc<CachedObject>>,
    events: VecDeque<Arc<Event>>,
    /// Every event with a revision above this one is in `events`.
    oldest: i64,
    tx: broadcast::Sender<Arc<Event>>,
}

impl ResourceState {
    fn new(start: i64) -> Self {
        ResourceState {
            objects: BTreeMap::new(),
            events: VecDeque::new(),
            oldest: start,
            tx: broadcast::channel(BROADCAST_CAPACITY).0,
        }
    }
}

struct State {
    /// The cache reflects etcd up to this revision.
    revision: i64,
    resources: HashMap<&'static str, ResourceState>,
}

const BROADCAST_CAPACITY: usize = 16 * 1024;

/// The shared watch cache, cheap to clone.
#[derive(Clone)]
pub struct WatchCache {
    shared: Arc<Shared>,
}

struct Shared {
    state: RwLock<State>,
    storage: Storage,
    capacity: usize,
    revision_tx: watch::Sender<i64>,
}

/// Which resource a registry key belongs to.
fn resource_of(key: &str) -> Option<&'static str> {
    let rest = key.strip_prefix(PREFIX)?;
    let plural = rest.split('/').next()?;
    RESOURCES
        .iter()
        .find(|r| r.plural == plural)
        .map(|r| r.plural)
}

impl WatchCache {
    /// Loads every object from etcd and starts following changes.
    ///
    /// # Errors
    /// When the initial list fails.
    pub async fn start(
        storage: Storage,
        capacity: usize,
        shutdown: CancellationToken,
    ) -> Result<Self, storage::Error> {
        let (revision_tx, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            state: RwLock::new(State {
                revision: 0,
                resources: HashMap::new(),
            }),
            storage,
            capacity: capacity.max(1),
            revision_tx,
        });
        let start = shared.relist().await?;
        let task_shared = shared.clone();
        tokio::spawn(async move { task_shared.follow(start, shutdown).await });
        Ok(WatchCache { shared })
    }

    /// The revision the cache has caught up to.
    pub fn revision(&self) -> i64 {
        self.shared.state.read().revision
    }

    /// Waits until the cache reflects every write etcd has acknowledged so far.
    ///
    /// etcd's progress notifications cannot be trusted for this (before 3.4.31 they may
    /// overtake events), so the cache writes a tick key and waits for its own watch to
    /// deliver it: every earlier write has then been delivered too.
    ///
    /// # Errors
    /// When etcd cannot be written or the cache does not catch up in time.
    pub async fn wait_fresh(&self) -> Result<i64, Error> {
        let current = self.shared.storage.tick().await?;
        self.wait_for(current, Duration::from_secs(5)).await
    }

    /// Waits until the cache has reached `revision`.
    pub async fn wait_for(&self, revision: i64, timeout: Duration) -> Result<i64, Error> {
        let mut rx = self.shared.revision_tx.subscribe();
        if *rx.borrow() >= revision {
            return Ok(*rx.borrow());
        }
        // A write of our own guarantees the watch moves past `revision` even when the
        // writes that led there were outside the registry.
        if let Err(e) = self.shared.storage.tick().await {
            warn!(error = %e, "tick write failed");
        }
        let waited = tokio::time::timeout(timeout, async {
            loop {
                if *rx.borrow_and_update() >= revision {
                    return true;
                }
                if rx.changed().await.is_err() {
                    return false;
                }
            }
        })
        .await;
        match waited {
            Ok(true) => Ok(self.revision()),
            Ok(false) => Err(Error::NotReady),
            Err(_) => Err(Error::TooNew {
                requested: revision,
                current: self.revision(),
            }),
        }
    }

    /// One object by key, as the cache has it.
    pub fn get(&self, resource: &Resource, key: &str) -> Option<Arc<CachedObject>> {
        self.shared
            .state
            .read()
            .resources
            .get(resource.plural)?
            .objects
            .get(key)
            .cloned()
    }

    /// The objects of a resource under `prefix` (a collection key prefix), in key order,
    /// and the cache revision they reflect.
    pub fn snapshot(&self, resource: &Resource, prefix: &str) -> (Vec<Arc<CachedObject>>, i64) {
        let state = self.shared.state.read();
        let objects = state
            .resources
            .get(resource.plural)
            .map(|rs| {
                rs.objects
                    .range(prefix.to_string()..)
                    .take_while(|(k, _)| k.starts_with(prefix))
                    .map(|(_, o)| o.clone())
                    .collect()
            })
            .unwrap_or_default();
        (objects, state.revision)
    }

    /// Starts a watch on a resource from `revision` (0: the current state first, as
    /// synthetic ADDED events).
    ///
    /// # Errors
    /// [`Error::TooOld`] (410) when events after `revision` are no longer kept.
    pub async fn watch(
        &self,
        resource: &'static Resource,
        revision: i64,
    ) -> Result<Subscription, Error> {
        if revision > self.revision() {
            self.wait_for(revision, Duration::from_secs(3)).await?;
        }
        let mut state = self.shared.state.write();
        let current = state.revision;
        let rs = state
            .resources
            .entry(resource.plural)
            .or_insert_with(|| ResourceState::new(current));
        let rx = rs.tx.subscribe();
        let backlog: VecDeque<Backlog> = if revision == 0 {
            rs.objects
                .values()
                .map(|o| Backlog::Initial(o.clone()))
                .collect()
        } else {
            if revision < rs.oldest {
                return Err(Error::TooOld {
                    requested: revision,
                    oldest: rs.oldest,
                });
            }
            // Events are in revision order; skip those the client has seen.
            let first = rs.events.partition_point(|e| e.revision <= revision);
            rs.events
                .range(first..)
                .map(|e| Backlog::Event(e.clone()))
                .collect()
        };
        Ok(Subscription {
            backlog,
            rx,
            cache: self.clone(),
        })
    }

    /// Forgets events up to `revision` (etcd compacted them).
    pub fn compacted(&self, revision: i64) {
        let mut state = self.shared.state.write();
        for rs in state.resources.values_mut() {
            while rs.events.front().is_some_and(|e| e.revision <= revision) {
                rs.events.pop_front();
            }
            rs.oldest = rs.oldest.max(revision);
        }
    }
}

enum Backlog {
    Initial(Arc<CachedObject>),
    Event(Arc<Event>),
}

/// What a [`Subscription`] yields.
pub enum Delivery {
    /// A change, or (for a watch from 0) an object of the initial state as ADDED.
    Event(EventType, Arc<CachedObject>, Option<Arc<CachedObject>>),
    /// The watcher fell too far behind (or the cache restarted): end the watch.
    Closed,
}

/// One watcher's feed of events.
pub struct Subscription {
    backlog: VecDeque<Backlog>,
    rx: broadcast::Receiver<Arc<Event>>,
    cache: WatchCache,
}

impl Subscription {
    /// The next event.
    pub async fn next(&mut self) -> Delivery {
        if let Some(item) = self.backlog.pop_front() {
            return match item {
                Backlog::Initial(o) => Delivery::Event(EventType::Added, o, None),
                Backlog::Event(e) => Delivery::Event(e.kind, e.object.clone(), e.prev.clone()),
            };
        }
        match self.rx.recv().await {
            Ok(e) => Delivery::Event(e.kind, e.object.clone(), e.prev.clone()),
            Err(_) => Delivery::Closed,
        }
    }

    /// Takes every event already delivered to this subscription, then the revision up
    /// to which nothing else is pending: a safe bookmark.
    pub fn drain_for_bookmark(&mut self) -> (Vec<Delivery>, i64) {
        let revision = self.cache.revision();
        let mut out = Vec::new();
        while let Some(item) = self.backlog.pop_front() {
            out.push(match item {
                Backlog::Initial(o) => Delivery::Event(EventType::Added, o, None),
                Backlog::Event(e) => Delivery::Event(e.kind, e.object.clone(), e.prev.clone()),
            });
        }
        loop {
            match self.rx.try_recv() {
                Ok(e) => out.push(Delivery::Event(e.kind, e.object.clone(), e.prev.clone())),
                Err(broadcast::error::TryRecvError::Empty) => break,
                Err(_) => {
                    out.push(Delivery::Closed);
                    break;
                }
            }
        }
        (out, revision)
    }
}

impl Shared {
    /// Reloads every object at one revision and resets every window. Watchers of the
    /// old state are closed (their channels are replaced).
    async fn relist(&self) -> Result<i64, storage::Error> {
        let mut items = Vec::new();
        let mut start: Option<String> = None;
        let mut revision = 0;
        loop {
            let page = self
                .storage
                .list(PREFIX, start.as_deref(), revision, 2000)
                .await?;
            revision = page.revision;
            let more = page.more;
            if let Some((last, _)) = page.items.last() {
                let mut next = last.clone();
                next.push('\0');
                start = Some(next);
            }
            items.extend(page.items);
            if !more {
                break;
            }
        }
        let mut resources: HashMap<&'static str, ResourceState> = RESOURCES
            .iter()
            .map(|r| (r.plural, ResourceState::new(revision)))
            .collect();
        for (key, stored) in items {
            let Some(plural) = resource_of(&key) else {
                continue;
            };
            let Some(rs) = resources.get_mut(plural) else {
                continue;
            };
            let obj = Arc::new(CachedObject::new(
                key.clone(),
                stored.value,
                stored.mod_revision,
            ));
            rs.objects.insert(key, obj);
        }
        let mut state = self.state.write();
        state.resources = resources;
        state.revision = revision;
        drop(state);
        self.revision_tx.send_replace(revision);
        info!(revision, "watch cache loaded");
        Ok(revision)
    }

    async fn follow(self: Arc<Self>, mut revision: i64, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            let options = WatchOptions::new()
                .with_prefix()
                .with_prev_key()
                .with_start_revision(revision + 1);
            let mut client = self.storage.client();
            let stream = tokio::select! {
                _ = shutdown.cancelled() => return,
                s = client.watch(PREFIX, Some(options)) => s,
            };
            let mut stream = match stream {
                Ok(s) => s,
                Err(e) => {
                    warn!(error = %e, "watch etcd failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            backoff = Duration::from_millis(100);
            loop {
                let message = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    m = stream.message() => m,
                };
                match message {
                    Ok(Some(resp)) => {
                        if resp.compact_revision() > 0 || resp.canceled() {
                            warn!(
                                compacted = resp.compact_revision(),
                                "etcd watch lost its place; reloading the cache"
                            );
                            match self.relist().await {
                                Ok(r) => revision = r,
                                Err(e) => warn!(error = %e, "reloading the watch cache failed"),
                            }
                            break;
                        }
                        revision = self.apply(&resp);
                    }
                    Ok(None) => break,
                    Err(e) => {
                        warn!(error = %e, "etcd watch stream failed; resuming");
                        break;
                    }
                }
            }
        }
    }

    /// Applies one etcd watch response; returns the new cache revision.
    fn apply(&self, resp: &etcd_client::WatchResponse) -> i64 {
        let mut state = self.state.write();
        let mut newest = state.revision;
        for event in resp.events() {
            let Some(kv) = event.kv() else { continue };
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let event_revision = kv.mod_revision();
            newest = newest.max(event_revision);
            let Some(plural) = resource_of(&key) else {
                continue;
            };
            let current = state.revision;
            let rs = state
                .resources
                .entry(plural)
                .or_insert_with(|| ResourceState::new(current));
            let change = match event.event_type() {
                EtcdEventType::Put => match storage::decode(kv.key(), kv.value(), event_revision) {
                    Ok(value) => {
                        let obj = Arc::new(CachedObject::new(key.clone(), value, event_revision));
                        let prev = rs.objects.insert(key, obj.clone());
                        let kind = if prev.is_some() {
                            EventType::Modified
                        } else {
                            EventType::Added
                        };
                        Some((kind, obj, prev))
                    }
                    Err(e) => {
                        warn!(key = %key, error = %e, "skipping corrupt object");
                        None
                    }
                },
                EtcdEventType::Delete => rs.objects.remove(&key).map(|prev| {
                    let mut value = prev.value.clone();
                    object::set_meta_str(
                        &mut value,
                        "resourceVersion",
                        Some(&event_revision.to_string()),
                    );
                    let obj = Arc::new(CachedObject::new(key.clone(), value, event_revision));
                    (EventType::Deleted, obj, Some(prev))
                }),
            };
            let Some((kind, obj, prev)) = change else {
                continue;
            };
            let event = Arc::new(Event {
                kind,
                object: obj,
                prev,
                revision: event_revision,
            });
            rs.events.push_back(event.clone());
            while rs.events.len() > self.capacity {
                if let Some(old) = rs.events.pop_front() {
                    rs.oldest = rs.oldest.max(old.revision);
                }
            }
            // No receivers is fine: nobody watches this resource right now.
            let _ = rs.tx.send(event);
        }
        state.revision = newest;
        drop(state);
        self.revision_tx.send_replace(newest);
        newest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_map_to_resources() {
        assert_eq!(resource_of("/registry/pods/default/a"), Some("pods"));
        assert_eq!(resource_of("/registry/nodes/n1"), Some("nodes"));
        assert_eq!(resource_of("/registry/claims/clusterip/10.96.0.1"), None);
        assert_eq!(resource_of("/other/pods/x"), None);
    }
}
