//! The controller runner every rkube controller is built on: [`Informer`] (a shared,
//! watched cache of one kind) and [`Controller`] (a work queue of object keys fed by
//! informers, drained by workers that call `reconcile`).
//!
//! The shape is kube-runtime's:
//!
//! ```text
//! async fn reconcile(rs: Arc<ReplicaSet>, ctx: Arc<Ctx>) -> Result<Action, Error>;
//! fn error_policy(rs: Arc<ReplicaSet>, err: &Error, ctx: Arc<Ctx>) -> Action;
//!
//! Controller::new(&replicasets)
//!     .owns(&pods)                       // a pod event wakes its controlling ReplicaSet
//!     .resync_every(Duration::from_secs(300))
//!     .run(reconcile, error_policy, ctx, shutdown)
//!     .await;
//! ```
//!
//! Guarantees:
//! - one reconcile per object key at a time (the [`WorkQueue`] hands a key to one worker);
//! - a key changed while it is being reconciled is reconciled again afterwards;
//! - a failed reconcile is retried with the queue's per-key exponential back-off
//!   ([`WorkQueue::add_rate_limited`]) unless the error policy says otherwise; a
//!   successful one clears the back-off;
//! - workers start only once every informer the controller reads has listed once;
//! - every key is reconciled again every resync period, and after an informer relists.
//!
//! Reconcile is only called for objects present in the cache: a deleted object's key is
//! dropped (controllers that must react to deletions watch the dependents instead).

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info_span, warn, Instrument};

use crate::api::{Api, Object};
use crate::queue::WorkQueue;
use crate::store::{self, ObjectRef, Store};
use crate::watcher::{self, watcher, Event};

/// What the runner does with a key after reconcile (or the error policy) returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Action {
    kind: ActionKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ActionKind {
    Requeue(Duration),
    AwaitChange,
    Retry,
}

impl Action {
    /// Reconcile the object again after `delay`, even if nothing changes.
    pub fn requeue(delay: Duration) -> Self {
        Action {
            kind: ActionKind::Requeue(delay),
        }
    }

    /// Reconcile the object again only when it (or something it watches) changes.
    pub fn await_change() -> Self {
        Action {
            kind: ActionKind::AwaitChange,
        }
    }

    /// Retry after the key's rate-limited back-off (the usual answer of an error policy).
    pub fn retry() -> Self {
        Action {
            kind: ActionKind::Retry,
        }
    }

    /// The delay of [`Action::requeue`], if this is one.
    pub fn requeue_after(&self) -> Option<Duration> {
        match self.kind {
            ActionKind::Requeue(delay) => Some(delay),
            _ => None,
        }
    }

    /// Whether this is [`Action::retry`].
    pub fn is_retry(&self) -> bool {
        self.kind == ActionKind::Retry
    }
}

/// A change seen by an [`Informer`], as delivered to its subscribers.
#[derive(Debug, Clone)]
pub enum Change<K> {
    /// The object was added or modified; this is its new state.
    Applied(Arc<K>),
    /// The object was deleted; this is its last state.
    Deleted(Arc<K>),
    /// The informer (re)listed, or a subscriber fell behind: every object may have changed.
    Resynced,
}

/// A cache of one kind kept current by a watcher, shared by every controller that reads
/// that kind; each controller subscribes to its changes.
pub struct Informer<K> {
    store: Store<K>,
    changes: broadcast::Sender<Change<K>>,
}

impl<K> Clone for Informer<K> {
    fn clone(&self) -> Self {
        Informer {
            store: self.store.clone(),
            changes: self.changes.clone(),
        }
    }
}

impl<K> fmt::Debug for Informer<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Informer")
            .field("kind", &std::any::type_name::<K>())
            .finish()
    }
}

/// How many changes a slow subscriber may fall behind before it is told to resync.
const CHANGE_BUFFER: usize = 16 * 1024;

impl<K: Object> Informer<K> {
    /// Starts watching `api` (filtered by `config`) in a background task that stops when
    /// `shutdown` is cancelled.
    pub fn spawn(api: Api<K>, config: watcher::Config, shutdown: CancellationToken) -> Self {
        let (store, mut writer) = store::store();
        let (changes, _) = broadcast::channel(CHANGE_BUFFER);
        let sender = changes.clone();
        let task = async move {
            let mut events = watcher(api, config).boxed();
            loop {
                let event = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    event = events.next() => event,
                };
                let Some(event) = event else { return };
                match event {
                    Ok(event) => {
                        writer.apply_watcher_event(&event);
                        let change = match event {
                            Event::Apply(object) => Change::Applied(Arc::new(object)),
                            Event::Delete(object) => Change::Deleted(Arc::new(object)),
                            Event::InitDone => Change::Resynced,
                            Event::Init | Event::InitApply(_) => continue,
                        };
                        // No subscriber yet is fine: they read the store when they start.
                        let _ = sender.send(change);
                    }
                    Err(err) => warn!(kind = K::KIND, error = %err, "watch failed, retrying"),
                }
            }
        };
        tokio::spawn(task.instrument(info_span!("informer", kind = K::KIND)));
        Informer { store, changes }
    }

    /// An informer fed by hand (tests, fakes): apply events with the returned writer and
    /// publish them with [`Informer::publish`].
    pub fn manual() -> (Self, store::Writer<K>) {
        let (store, writer) = store::store();
        let (changes, _) = broadcast::channel(CHANGE_BUFFER);
        (Informer { store, changes }, writer)
    }

    /// Tells subscribers about a change (for informers made with [`Informer::manual`]).
    pub fn publish(&self, change: Change<K>) {
        let _ = self.changes.send(change);
    }

    /// The cache (read-only).
    pub fn store(&self) -> Store<K> {
        self.store.clone()
    }

    /// A receiver of every change from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Change<K>> {
        self.changes.subscribe()
    }
}

/// One source of keys: a subscription to an informer plus the mapping to keys.
struct Trigger {
    name: &'static str,
    /// Waits for the informer's first list.
    ready: Box<dyn Fn() -> futures::future::BoxFuture<'static, bool> + Send + Sync>,
    /// Runs until shutdown, adding keys to the queue.
    run: Box<
        dyn FnOnce(
                WorkQueue<ObjectRef>,
                CancellationToken,
            ) -> futures::future::BoxFuture<'static, ()>
            + Send,
    >,
}

/// A controller of kind `K`: see the [module docs](self).
pub struct Controller<K> {
    store: Store<K>,
    queue: WorkQueue<ObjectRef>,
    triggers: Vec<Trigger>,
    resync: Option<Duration>,
    workers: usize,
}

impl<K> fmt::Debug for Controller<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Controller")
            .field("kind", &std::any::type_name::<K>())
            .field(
                "triggers",
                &self.triggers.iter().map(|t| t.name).collect::<Vec<_>>(),
            )
            .field("resync", &self.resync)
            .field("workers", &self.workers)
            .finish()
    }
}

impl<K: Object> Controller<K> {
    /// A controller reconciling every object of `main`'s kind, woken by its changes.
    pub fn new(main: &Informer<K>) -> Self {
        let store = main.store();
        let this = Controller {
            store: store.clone(),
            queue: WorkQueue::new(),
            triggers: Vec::new(),
            resync: None,
            workers: 4,
        };
        this.watches(main, |object: &K| vec![ObjectRef::from_obj(object)])
    }

    /// Uses `queue` (for example one with a custom rate limit) instead of a default one.
    pub fn with_queue(mut self, queue: WorkQueue<ObjectRef>) -> Self {
        self.queue = queue;
        self
    }

    /// The queue of keys; adding a key here makes it reconciled.
    pub fn queue(&self) -> WorkQueue<ObjectRef> {
        self.queue.clone()
    }

    /// Wakes the controlling owner of kind `K` (controller ownerReference) of every
    /// changed object of `child`'s kind.
    pub fn owns<C: Object>(self, child: &Informer<C>) -> Self {
        self.watches(child, |object: &C| {
            owner_key::<K, C>(object).into_iter().collect()
        })
    }

    /// Wakes the keys `mapper` returns for every changed object of `other`'s kind (its
    /// new state for additions and updates, its last state for deletions).
    pub fn watches<C: Object>(
        mut self,
        other: &Informer<C>,
        mapper: impl Fn(&C) -> Vec<ObjectRef> + Send + Sync + 'static,
    ) -> Self {
        let other_store = other.store();
        let mut receiver = other.subscribe();
        let main_store = self.store.clone();
        let ready_store = other_store.clone();
        let ready = Box::new(move || {
            let store = ready_store.clone();
            Box::pin(async move { store.wait_until_ready().await.is_ok() })
                as futures::future::BoxFuture<'static, bool>
        });
        let run = Box::new(
            move |queue: WorkQueue<ObjectRef>, shutdown: CancellationToken| {
                Box::pin(async move {
                    loop {
                        let change = tokio::select! {
                            _ = shutdown.cancelled() => return,
                            change = receiver.recv() => change,
                        };
                        match change {
                            Ok(Change::Applied(object)) | Ok(Change::Deleted(object)) => {
                                for key in mapper(&object) {
                                    queue.add(key);
                                }
                            }
                            Ok(Change::Resynced) | Err(broadcast::error::RecvError::Lagged(_)) => {
                                // Everything may have changed: map every cached object, and
                                // wake every object of the main kind too (covers deletions
                                // the relist folded away).
                                for object in other_store.state() {
                                    for key in mapper(&object) {
                                        queue.add(key);
                                    }
                                }
                                for object in main_store.state() {
                                    queue.add(ObjectRef::from_obj(object.as_ref()));
                                }
                            }
                            Err(broadcast::error::RecvError::Closed) => return,
                        }
                    }
                }) as futures::future::BoxFuture<'static, ()>
            },
        );
        self.triggers.push(Trigger {
            name: C::KIND,
            ready,
            run,
        });
        self
    }

    /// Reconciles every object again every `period`.
    pub fn resync_every(mut self, period: Duration) -> Self {
        self.resync = Some(period);
        self
    }

    /// How many keys are reconciled concurrently (default 4; always one per key).
    pub fn workers(mut self, workers: usize) -> Self {
        self.workers = workers.max(1);
        self
    }

    /// Runs until `shutdown` is cancelled: waits for every informer's first list, then
    /// reconciles keys as they come.
    pub async fn run<Ctx, E, R, Fut>(
        self,
        reconcile: R,
        error_policy: impl Fn(Arc<K>, &E, Arc<Ctx>) -> Action + Send + Sync + 'static,
        ctx: Arc<Ctx>,
        shutdown: CancellationToken,
    ) where
        Ctx: Send + Sync + 'static,
        E: fmt::Display + Send + 'static,
        R: Fn(Arc<K>, Arc<Ctx>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Action, E>> + Send + 'static,
    {
        let Controller {
            store,
            queue,
            triggers,
            resync,
            workers,
        } = self;

        let waits: Vec<_> = triggers.iter().map(|t| (t.name, (t.ready)())).collect();
        for (source, wait) in waits {
            let ready = tokio::select! {
                _ = shutdown.cancelled() => return,
                ready = wait => ready,
            };
            if !ready {
                warn!(
                    kind = K::KIND,
                    source, "informer stopped before its first list"
                );
                return;
            }
        }
        let mut tasks = tokio::task::JoinSet::new();
        for trigger in triggers {
            tasks.spawn((trigger.run)(queue.clone(), shutdown.clone()));
        }
        for object in store.state() {
            queue.add(ObjectRef::from_obj(object.as_ref()));
        }
        if let Some(period) = resync {
            let queue = queue.clone();
            let store = store.clone();
            let shutdown = shutdown.clone();
            tasks.spawn(async move {
                let mut ticks = tokio::time::interval(period);
                ticks.tick().await;
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = ticks.tick() => {}
                    }
                    for object in store.state() {
                        queue.add(ObjectRef::from_obj(object.as_ref()));
                    }
                }
            });
        }
        {
            let queue = queue.clone();
            let shutdown = shutdown.clone();
            tasks.spawn(async move {
                shutdown.cancelled().await;
                queue.shutdown();
            });
        }

        let reconcile = Arc::new(reconcile);
        let error_policy = Arc::new(error_policy);
        let mut workers_set = tokio::task::JoinSet::new();
        for worker in 0..workers {
            let queue = queue.clone();
            let store = store.clone();
            let reconcile = reconcile.clone();
            let error_policy = error_policy.clone();
            let ctx = ctx.clone();
            workers_set.spawn(
                async move {
                    while let Some(key) = queue.next().await {
                        let Some(object) = store.get(&key) else {
                            debug!(object = %key, "object gone, nothing to reconcile");
                            queue.forget(&key);
                            queue.done(&key);
                            continue;
                        };
                        let span = info_span!("reconcile", kind = K::KIND, object = %key);
                        let result = reconcile(object.clone(), ctx.clone())
                            .instrument(span)
                            .await;
                        let action = match result {
                            Ok(action) => {
                                queue.forget(&key);
                                action
                            }
                            Err(err) => {
                                let action = error_policy(object, &err, ctx.clone());
                                debug!(kind = K::KIND, object = %key, error = %err, "reconcile failed");
                                action
                            }
                        };
                        match action.kind {
                            ActionKind::Requeue(delay) => queue.add_after(key.clone(), delay),
                            ActionKind::Retry => queue.add_rate_limited(key.clone()),
                            ActionKind::AwaitChange => {}
                        }
                        queue.done(&key);
                    }
                }
                .instrument(info_span!("worker", kind = K::KIND, worker)),
            );
        }
        while workers_set.join_next().await.is_some() {}
        tasks.abort_all();
    }
}

/// The key of the controlling owner of kind `K` of `object`, if it has one.
pub fn owner_key<K: Object, C: Object>(object: &C) -> Option<ObjectRef> {
    let meta = object.metadata();
    let owner = meta
        .owner_references
        .as_ref()?
        .iter()
        .find(|o| o.controller == Some(true))?;
    if owner.kind != K::KIND || owner.api_version != K::API_VERSION {
        return None;
    }
    let key = ObjectRef::new(&owner.name);
    Some(match &meta.namespace {
        Some(ns) if !ns.is_empty() => key.within(ns),
        _ => key,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use k8s_openapi::api::apps::v1::ReplicaSet;
    use k8s_openapi::api::core::v1::Pod;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
    use parking_lot::Mutex;

    use super::*;

    fn rs(name: &str) -> ReplicaSet {
        ReplicaSet {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn pod(name: &str, owner: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                owner_references: Some(vec![OwnerReference {
                    api_version: "apps/v1".into(),
                    kind: "ReplicaSet".into(),
                    name: owner.into(),
                    uid: "u".into(),
                    controller: Some(true),
                    ..Default::default()
                }]),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn listed<K: Object>(objects: Vec<K>) -> (Informer<K>, store::Writer<K>) {
        let (informer, mut writer) = Informer::manual();
        writer.apply_watcher_event(&Event::Init);
        for object in objects {
            writer.apply_watcher_event(&Event::InitApply(object));
        }
        writer.apply_watcher_event(&Event::InitDone);
        (informer, writer)
    }

    #[test]
    fn owner_key_needs_a_controller_reference_of_the_kind() {
        let p = pod("p", "web");
        assert_eq!(
            owner_key::<ReplicaSet, Pod>(&p),
            Some(ObjectRef::new("web").within("default"))
        );
        assert_eq!(owner_key::<Pod, Pod>(&p), None);
        let mut not_controller = p.clone();
        if let Some(refs) = not_controller.metadata.owner_references.as_mut() {
            refs[0].controller = Some(false);
        }
        assert_eq!(owner_key::<ReplicaSet, Pod>(&not_controller), None);
    }

    #[tokio::test]
    async fn reconciles_listed_objects_and_owner_of_changed_children() {
        let (replicasets, _rs_writer) = listed(vec![rs("a"), rs("b")]);
        let (pods, mut pod_writer) = listed::<Pod>(vec![]);
        let seen = Arc::new(Mutex::new(Vec::<String>::new()));
        let shutdown = CancellationToken::new();
        let controller = Controller::new(&replicasets).owns(&pods).workers(1);
        let ctx = seen.clone();
        let run = tokio::spawn(controller.run(
            |rs: Arc<ReplicaSet>, seen: Arc<Mutex<Vec<String>>>| async move {
                seen.lock()
                    .push(rs.metadata.name.clone().unwrap_or_default());
                Ok::<_, std::convert::Infallible>(Action::await_change())
            },
            |_, _, _| Action::retry(),
            ctx,
            shutdown.clone(),
        ));
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut first = seen.lock().clone();
        first.sort();
        assert_eq!(first, vec!["a", "b"]);

        let p = pod("p", "b");
        pod_writer.apply_watcher_event(&Event::Apply(p.clone()));
        pods.publish(Change::Applied(Arc::new(p)));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(seen.lock().len(), 3);
        assert_eq!(seen.lock()[2], "b");
        shutdown.cancel();
        run.await.expect("runner ends on shutdown");
    }

    #[tokio::test(start_paused = true)]
    async fn failed_reconciles_are_retried_and_one_key_runs_once_at_a_time() {
        let (replicasets, _writer) = listed(vec![rs("a")]);
        let calls = Arc::new(AtomicUsize::new(0));
        let running = Arc::new(AtomicUsize::new(0));
        let shutdown = CancellationToken::new();
        let controller = Controller::new(&replicasets).workers(4);
        let queue = controller.queue();
        let ctx = Arc::new((calls.clone(), running.clone()));
        let run = tokio::spawn(controller.run(
            |_rs: Arc<ReplicaSet>, ctx: Arc<(Arc<AtomicUsize>, Arc<AtomicUsize>)>| async move {
                let (calls, running) = &*ctx;
                assert_eq!(
                    running.fetch_add(1, Ordering::SeqCst),
                    0,
                    "two reconciles of one key"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
                running.fetch_sub(1, Ordering::SeqCst);
                if calls.fetch_add(1, Ordering::SeqCst) < 2 {
                    Err("boom")
                } else {
                    Ok(Action::await_change())
                }
            },
            |_, _, _| Action::retry(),
            ctx,
            shutdown.clone(),
        ));
        for _ in 0..10 {
            queue.add(ObjectRef::new("a").within("default"));
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
        let total = calls.load(Ordering::SeqCst);
        assert!(total >= 3, "retried after failures: {total} calls");
        assert_eq!(
            queue.num_requeues(&ObjectRef::new("a").within("default")),
            0
        );
        shutdown.cancel();
        run.await.expect("runner ends on shutdown");
    }
}
