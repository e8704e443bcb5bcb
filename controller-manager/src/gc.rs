//! The garbage collector: deletes dependents whose owners are gone, and carries out
//! foreground and orphan deletion (the `foregroundDeletion` and `orphan` finalizers the
//! apiserver adds for `propagationPolicy: Foreground / Orphan`). Start at
//! [`GarbageCollector::run`].
//!
//! As in Kubernetes, the collector keeps a graph of ownerReferences across every kind it
//! is given (the manager gives it every kind the apiserver serves), built from informer
//! events, and works per object: a change to one object queues only the objects whose
//! fate it may change (itself, its dependents when it goes, its owners when they wait
//! for it). Each queued object is then looked at once:
//!
//! - an owner being deleted with the `orphan` finalizer has the ownerReferences to it
//!   removed from its dependents, then loses the finalizer;
//! - an owner being deleted with `foregroundDeletion` has its dependents queued, and
//!   loses the finalizer once no dependent with `blockOwnerDeletion` is left;
//! - a dependent is checked against its owners: an owner is present only if an object
//!   with the reference's uid exists in the dependent's namespace (or is cluster-scoped);
//!   an owner in another namespace is never an owner. A dependent without a present
//!   owner is deleted (in the foreground if an owner waits for it and it has dependents
//!   itself); references to gone or foreground-deleting owners next to a live owner are
//!   removed instead. An owner absent from the cache is confirmed absent with a live read
//!   before anything is deleted.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::{ClusterResourceScope, NamespaceResourceScope};
use parking_lot::Mutex;
use rkube_client::controller::{Change, Informer};
use rkube_client::{api, Api, Client, DeleteParams, Object, PropagationPolicy, Store, WorkQueue};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// The finalizer of an object waiting for its dependents to be deleted.
pub const FOREGROUND: &str = "foregroundDeletion";
/// The finalizer of an object whose dependents must be orphaned first.
pub const ORPHAN: &str = "orphan";

/// How often every object is looked at again, whatever the events said.
const RESYNC: Duration = Duration::from_secs(60);
/// Objects looked at concurrently.
const WORKERS: usize = 4;

/// What a collection step can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to delete {kind} {namespace}/{name}")]
    Delete {
        kind: &'static str,
        namespace: String,
        name: String,
        #[source]
        source: api::Error,
    },
    #[error("failed to update {kind} {namespace}/{name}")]
    Update {
        kind: &'static str,
        namespace: String,
        name: String,
        #[source]
        source: api::Error,
    },
    #[error("failed to read {kind} {namespace}/{name}")]
    Get {
        kind: &'static str,
        namespace: String,
        name: String,
        #[source]
        source: api::Error,
    },
}

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How to address objects of one scope: `Api::namespaced` or `Api::all`.
pub trait Scope {
    /// Whether objects of this scope live in a namespace.
    const NAMESPACED: bool;
    /// The `Api` reaching objects of `K` in `namespace` (ignored for cluster scope).
    fn api<K: Object + k8s_openapi::Resource<Scope = Self>>(
        client: Client,
        namespace: &str,
    ) -> Api<K>;
}

impl Scope for NamespaceResourceScope {
    const NAMESPACED: bool = true;
    fn api<K: Object + k8s_openapi::Resource<Scope = Self>>(
        client: Client,
        namespace: &str,
    ) -> Api<K> {
        Api::namespaced(client, namespace)
    }
}

impl Scope for ClusterResourceScope {
    const NAMESPACED: bool = false;
    fn api<K: Object + k8s_openapi::Resource<Scope = Self>>(
        client: Client,
        _namespace: &str,
    ) -> Api<K> {
        Api::all(client)
    }
}

/// One kind in the graph: its cache and the writes the collector makes.
trait Kind: Send + Sync {
    fn kind(&self) -> &'static str;
    fn namespaced(&self) -> bool;
    fn metas(&self) -> Vec<ObjectMeta>;
    /// Live read of the uid of an object (None: absent).
    fn live_uid<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>>>;
    fn delete<'a>(
        &'a self,
        meta: &'a ObjectMeta,
        policy: PropagationPolicy,
    ) -> BoxFuture<'a, Result<()>>;
    /// Removes ownerReferences with these uids.
    fn drop_owners<'a>(
        &'a self,
        meta: &'a ObjectMeta,
        uids: &'a HashSet<String>,
    ) -> BoxFuture<'a, Result<()>>;
    fn remove_finalizer<'a>(
        &'a self,
        meta: &'a ObjectMeta,
        finalizer: &'a str,
    ) -> BoxFuture<'a, Result<()>>;
}

struct Typed<K> {
    store: Store<K>,
    client: Client,
}

fn ns_name(meta: &ObjectMeta) -> (String, String) {
    (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

impl<K> Typed<K>
where
    K: Object,
    K::Scope: Scope,
{
    fn api(&self, namespace: &str) -> Api<K> {
        <K::Scope as Scope>::api::<K>(self.client.clone(), namespace)
    }

    /// Re-reads the object and applies `change` to it; a vanished object is fine.
    async fn update(&self, meta: &ObjectMeta, change: impl Fn(&mut ObjectMeta)) -> Result<()> {
        let (namespace, name) = ns_name(meta);
        let api = self.api(&namespace);
        let err = |source| Error::Update {
            kind: K::KIND,
            namespace: namespace.clone(),
            name: name.clone(),
            source,
        };
        let Some(mut object) = api.get_opt(&name).await.map_err(err)? else {
            return Ok(());
        };
        if object.metadata().uid != meta.uid {
            return Ok(());
        }
        change(object.metadata_mut());
        match api.replace(&name, &object).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(err(e)),
        }
    }
}

impl<K> Kind for Typed<K>
where
    K: Object,
    K::Scope: Scope,
{
    fn kind(&self) -> &'static str {
        K::KIND
    }
    fn namespaced(&self) -> bool {
        <K::Scope as Scope>::NAMESPACED
    }
    fn metas(&self) -> Vec<ObjectMeta> {
        self.store
            .state()
            .iter()
            .map(|o| o.metadata().clone())
            .collect()
    }
    fn live_uid<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>>> {
        Box::pin(async move {
            let object = self
                .api(namespace)
                .get_opt(name)
                .await
                .map_err(|source| Error::Get {
                    kind: K::KIND,
                    namespace: namespace.to_string(),
                    name: name.to_string(),
                    source,
                })?;
            Ok(object.and_then(|o| o.metadata().uid.clone()))
        })
    }
    fn delete<'a>(
        &'a self,
        meta: &'a ObjectMeta,
        policy: PropagationPolicy,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let (namespace, name) = ns_name(meta);
            let params = DeleteParams {
                propagation_policy: Some(policy),
                precondition_uid: meta.uid.clone(),
                ..Default::default()
            };
            match self.api(&namespace).delete(&name, &params).await {
                Ok(_) => Ok(()),
                Err(e) if e.is_not_found() || e.is_conflict() => Ok(()),
                Err(source) => Err(Error::Delete {
                    kind: K::KIND,
                    namespace,
                    name,
                    source,
                }),
            }
        })
    }
    fn drop_owners<'a>(
        &'a self,
        meta: &'a ObjectMeta,
        uids: &'a HashSet<String>,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.update(meta, move |m| {
            if let Some(refs) = m.owner_references.as_mut() {
                refs.retain(|o| !uids.contains(&o.uid));
            }
        }))
    }
    fn remove_finalizer<'a>(
        &'a self,
        meta: &'a ObjectMeta,
        finalizer: &'a str,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.update(meta, move |m| {
            if let Some(finalizers) = m.finalizers.as_mut() {
                finalizers.retain(|f| f != finalizer);
            }
        }))
    }
}

/// A change of the graph, as an informer reports it (the `usize` is the kind's index).
#[derive(Debug)]
enum GraphEvent {
    Applied(usize, ObjectMeta),
    Deleted(ObjectMeta),
    /// The informer relisted or its subscriber fell behind: reread its cache.
    Resync(usize),
}

/// Where a kind sits in the graph.
#[derive(Debug, Clone, Copy)]
struct KindInfo {
    api_version: &'static str,
    kind: &'static str,
    namespaced: bool,
}

/// One object in the graph.
#[derive(Debug, Clone)]
struct Node {
    kind: usize,
    meta: ObjectMeta,
}

impl Node {
    fn owner_uids(&self) -> impl Iterator<Item = &str> {
        self.meta
            .owner_references
            .iter()
            .flatten()
            .map(|o| o.uid.as_str())
    }

    fn deleting_with(&self, finalizer: &str) -> bool {
        self.meta.deletion_timestamp.is_some()
            && self
                .meta
                .finalizers
                .iter()
                .flatten()
                .any(|f| f == finalizer)
    }
}

/// What a dependent's ownerReference points at.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Owner {
    /// Exists and is not waiting for its dependents.
    Present,
    /// Exists and is being deleted in the foreground.
    Waiting,
    /// Does not exist where the dependent may name it.
    Absent,
    /// Not in the cache: read `name` of kind `kind` in `namespace` to know.
    Unknown { kind: usize, namespace: String },
    /// A kind outside the graph, or a namespaced owner of a cluster-scoped dependent:
    /// Kubernetes never collects through such a reference.
    Unresolvable,
}

/// Every object by uid, and every owner's dependents.
#[derive(Debug, Default)]
struct Graph {
    kinds: Vec<KindInfo>,
    nodes: HashMap<String, Node>,
    /// Owner uid → uids of objects with an ownerReference to it.
    dependents: HashMap<String, HashSet<String>>,
}

impl Graph {
    fn new(kinds: Vec<KindInfo>) -> Self {
        Graph {
            kinds,
            ..Default::default()
        }
    }

    fn kind_index(&self, api_version: &str, kind: &str) -> Option<usize> {
        self.kinds
            .iter()
            .position(|k| k.api_version == api_version && k.kind == kind)
    }

    /// Owners of these uids that wait for their dependents (a dependent's change may
    /// let them go).
    fn waiting_owners<'a>(&self, uids: impl Iterator<Item = &'a str>) -> Vec<String> {
        uids.filter(|o| {
            self.nodes
                .get(*o)
                .is_some_and(|n| n.deleting_with(FOREGROUND))
        })
        .map(str::to_string)
        .collect()
    }

    /// Records the new state of an object; returns the uids to look at.
    fn apply(&mut self, kind: usize, meta: ObjectMeta) -> Vec<String> {
        let Some(uid) = meta.uid.clone() else {
            return Vec::new();
        };
        let node = Node { kind, meta };
        let new_owners: HashSet<String> = node.owner_uids().map(str::to_string).collect();
        let old = self.nodes.insert(uid.clone(), node.clone());
        let old_owners: HashSet<String> = old
            .iter()
            .flat_map(|n| n.owner_uids())
            .map(str::to_string)
            .collect();
        for gone in old_owners.difference(&new_owners) {
            self.unlink(gone, &uid);
        }
        for owner in &new_owners {
            self.dependents
                .entry(owner.clone())
                .or_default()
                .insert(uid.clone());
        }
        let mut look = self.waiting_owners(old_owners.union(&new_owners).map(String::as_str));
        if !new_owners.is_empty() || node.deleting_with(FOREGROUND) || node.deleting_with(ORPHAN) {
            look.push(uid);
        }
        look
    }

    /// Forgets a deleted object; returns the uids to look at (its dependents, and its
    /// owners waiting for it).
    fn delete(&mut self, uid: &str) -> Vec<String> {
        let Some(node) = self.nodes.remove(uid) else {
            return Vec::new();
        };
        for owner in node.owner_uids() {
            self.unlink(owner, uid);
        }
        let mut look = self.waiting_owners(node.owner_uids());
        look.extend(self.dependents.get(uid).into_iter().flatten().cloned());
        look
    }

    /// Replaces every object of `kind` with `metas`; returns the uids to look at.
    fn resync(&mut self, kind: usize, metas: Vec<ObjectMeta>) -> Vec<String> {
        let present: HashSet<String> = metas.iter().filter_map(|m| m.uid.clone()).collect();
        let gone: Vec<String> = self
            .nodes
            .iter()
            .filter(|(uid, n)| n.kind == kind && !present.contains(*uid))
            .map(|(uid, _)| uid.clone())
            .collect();
        let mut look = Vec::new();
        for uid in gone {
            look.extend(self.delete(&uid));
        }
        for meta in metas {
            look.extend(self.apply(kind, meta));
        }
        look
    }

    fn unlink(&mut self, owner: &str, dependent: &str) {
        if let Some(deps) = self.dependents.get_mut(owner) {
            deps.remove(dependent);
            if deps.is_empty() {
                self.dependents.remove(owner);
            }
        }
    }

    /// The objects that may name `owner` as their owner: those in its namespace, or all
    /// of them for a cluster-scoped owner.
    fn dependents_of(&self, owner: &Node) -> Vec<Node> {
        let Some(uid) = owner.meta.uid.as_deref() else {
            return Vec::new();
        };
        let namespaced = self.kinds[owner.kind].namespaced;
        self.dependents
            .get(uid)
            .into_iter()
            .flatten()
            .filter_map(|d| self.nodes.get(d))
            .filter(|d| !namespaced || d.meta.namespace == owner.meta.namespace)
            .cloned()
            .collect()
    }

    /// What `reference`, held by `dependent`, points at according to the cache.
    fn owner(&self, dependent: &Node, reference: &OwnerReference) -> Owner {
        let Some(kind) = self.kind_index(&reference.api_version, &reference.kind) else {
            return Owner::Unresolvable;
        };
        let dependent_namespace = dependent.meta.namespace.clone().unwrap_or_default();
        let namespace = if self.kinds[kind].namespaced {
            if !self.kinds[dependent.kind].namespaced {
                return Owner::Unresolvable;
            }
            dependent_namespace
        } else {
            String::new()
        };
        match self.nodes.get(&reference.uid) {
            Some(owner) if owner.kind == kind => {
                if owner.meta.namespace.clone().unwrap_or_default() != namespace {
                    // uids are unique: nothing with this uid lives in our namespace.
                    Owner::Absent
                } else if owner.deleting_with(FOREGROUND) {
                    Owner::Waiting
                } else {
                    Owner::Present
                }
            }
            _ => Owner::Unknown { kind, namespace },
        }
    }
}

/// The collector over a set of informers: add every kind with
/// [`GarbageCollector::kind`], then [`GarbageCollector::run`].
pub struct GarbageCollector {
    kinds: Vec<Arc<dyn Kind>>,
    infos: Vec<KindInfo>,
    sources: Vec<Source>,
}

/// A kind's informer as the collector follows it.
struct Source {
    ready: BoxFuture<'static, bool>,
    /// Forwards the informer's changes (subscribed when the kind was added) until the
    /// informer or the receiver goes away.
    forward:
        Box<dyn FnOnce(usize, mpsc::UnboundedSender<GraphEvent>) -> BoxFuture<'static, ()> + Send>,
}

impl std::fmt::Debug for GarbageCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GarbageCollector")
            .field(
                "kinds",
                &self.infos.iter().map(|k| k.kind).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl GarbageCollector {
    /// A collector over no kinds yet.
    pub fn new() -> Self {
        GarbageCollector {
            kinds: Vec::new(),
            infos: Vec::new(),
            sources: Vec::new(),
        }
    }

    /// Adds a kind (namespaced or cluster-scoped) to the graph.
    pub fn kind<K>(mut self, informer: &Informer<K>, client: Client) -> Self
    where
        K: Object,
        K::Scope: Scope,
    {
        let typed = Typed {
            store: informer.store(),
            client,
        };
        self.infos.push(KindInfo {
            api_version: K::API_VERSION,
            kind: K::KIND,
            namespaced: typed.namespaced(),
        });
        self.kinds.push(Arc::new(typed));
        let mut changes = informer.subscribe();
        let store = informer.store();
        self.sources.push(Source {
            ready: Box::pin(async move { store.wait_until_ready().await.is_ok() }),
            forward: Box::new(move |kind, events| {
                Box::pin(async move {
                    loop {
                        let event = match changes.recv().await {
                            Ok(Change::Applied(o)) => {
                                GraphEvent::Applied(kind, o.metadata().clone())
                            }
                            Ok(Change::Deleted(o)) => GraphEvent::Deleted(o.metadata().clone()),
                            Ok(Change::Resynced) | Err(broadcast::error::RecvError::Lagged(_)) => {
                                GraphEvent::Resync(kind)
                            }
                            Err(broadcast::error::RecvError::Closed) => return,
                        };
                        if events.send(event).is_err() {
                            return;
                        }
                    }
                })
            }),
        });
        self
    }

    /// The kinds in the graph, as `(apiVersion, kind)`.
    pub fn kinds(&self) -> Vec<(&'static str, &'static str)> {
        self.infos.iter().map(|k| (k.api_version, k.kind)).collect()
    }

    /// Follows the informers and collects until `shutdown` is cancelled.
    pub async fn run(self, shutdown: CancellationToken) {
        let (sender, mut events) = mpsc::unbounded_channel();
        let mut tasks = tokio::task::JoinSet::new();
        for (kind, source) in self.sources.into_iter().enumerate() {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                ok = source.ready => if !ok { return },
            }
            tasks.spawn((source.forward)(kind, sender.clone()));
        }
        drop(sender);
        let collector = Arc::new(Collector {
            kinds: self.kinds,
            graph: Mutex::new(Graph::new(self.infos)),
            queue: WorkQueue::new(),
        });
        collector.resync_all();
        for _ in 0..WORKERS {
            let collector = collector.clone();
            tasks.spawn(async move { collector.work().await });
        }
        let mut resync = tokio::time::interval(RESYNC);
        resync.tick().await;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = resync.tick() => collector.resync_all(),
                event = events.recv() => match event {
                    Some(event) => collector.observe(event),
                    None => break,
                },
            }
        }
        collector.queue.shutdown();
        tasks.abort_all();
    }
}

impl Default for GarbageCollector {
    fn default() -> Self {
        Self::new()
    }
}

/// The running collector: the graph and a queue of uids to look at.
struct Collector {
    kinds: Vec<Arc<dyn Kind>>,
    graph: Mutex<Graph>,
    queue: WorkQueue<String>,
}

impl Collector {
    fn enqueue(&self, uids: Vec<String>) {
        for uid in uids {
            self.queue.add(uid);
        }
    }

    fn observe(&self, event: GraphEvent) {
        let look = {
            let mut graph = self.graph.lock();
            match event {
                GraphEvent::Applied(kind, meta) => graph.apply(kind, meta),
                GraphEvent::Deleted(meta) => meta
                    .uid
                    .as_deref()
                    .map(|uid| graph.delete(uid))
                    .unwrap_or_default(),
                GraphEvent::Resync(kind) => graph.resync(kind, self.kinds[kind].metas()),
            }
        };
        self.enqueue(look);
    }

    fn resync_all(&self) {
        for kind in 0..self.kinds.len() {
            self.observe(GraphEvent::Resync(kind));
        }
    }

    async fn work(&self) {
        while let Some(uid) = self.queue.next().await {
            match self.process(&uid).await {
                Ok(()) => self.queue.forget(&uid),
                Err(err) => {
                    warn!(%uid, error = %err, "garbage collection failed, retrying");
                    self.queue.add_rate_limited(uid.clone());
                }
            }
            self.queue.done(&uid);
        }
    }

    /// Looks at one object: as an owner being deleted, then as a dependent.
    async fn process(&self, uid: &str) -> Result<()> {
        let Some(node) = self.graph.lock().nodes.get(uid).cloned() else {
            return Ok(());
        };
        if node.deleting_with(ORPHAN) {
            return self.orphan(&node).await;
        }
        if node.deleting_with(FOREGROUND) {
            return self.foreground(&node).await;
        }
        if node.meta.deletion_timestamp.is_none() && node.owner_uids().next().is_some() {
            self.attempt_to_delete(&node).await?;
        }
        Ok(())
    }

    /// Removes the references to `owner` from its dependents, then its finalizer.
    async fn orphan(&self, owner: &Node) -> Result<()> {
        let dependents = self.graph.lock().dependents_of(owner);
        let uid: HashSet<String> = owner.meta.uid.clone().into_iter().collect();
        for dependent in &dependents {
            self.kinds[dependent.kind]
                .drop_owners(&dependent.meta, &uid)
                .await?;
        }
        let kind = &self.kinds[owner.kind];
        info!(kind = kind.kind(), namespace = ?owner.meta.namespace, name = ?owner.meta.name, orphaned = dependents.len(), "orphaned dependents");
        kind.remove_finalizer(&owner.meta, ORPHAN).await
    }

    /// Queues the dependents of `owner` (they see it waiting and go), and lets it go
    /// once none of them blocks its deletion.
    async fn foreground(&self, owner: &Node) -> Result<()> {
        let dependents = self.graph.lock().dependents_of(owner);
        let uid = owner.meta.uid.as_deref().unwrap_or_default();
        let blocking = dependents
            .iter()
            .filter(|d| {
                d.meta
                    .owner_references
                    .iter()
                    .flatten()
                    .any(|o| o.uid == uid && o.block_owner_deletion == Some(true))
            })
            .count();
        self.enqueue(
            dependents
                .iter()
                .filter(|d| d.meta.deletion_timestamp.is_none())
                .filter_map(|d| d.meta.uid.clone())
                .collect(),
        );
        if blocking > 0 {
            debug!(name = ?owner.meta.name, blocking, "waiting for dependents");
            return Ok(());
        }
        let kind = &self.kinds[owner.kind];
        info!(kind = kind.kind(), namespace = ?owner.meta.namespace, name = ?owner.meta.name, "dependents gone, finishing foreground deletion");
        kind.remove_finalizer(&owner.meta, FOREGROUND).await
    }

    /// Deletes `dependent` if none of its owners is present; drops references to gone
    /// or waiting owners if one is.
    async fn attempt_to_delete(&self, dependent: &Node) -> Result<()> {
        let owners: Vec<(OwnerReference, Owner)> = {
            let graph = self.graph.lock();
            dependent
                .meta
                .owner_references
                .iter()
                .flatten()
                .map(|r| (r.clone(), graph.owner(dependent, r)))
                .collect()
        };
        let mut solid = false;
        let mut dangling = HashSet::new();
        let mut waiting = HashSet::new();
        for (reference, owner) in owners {
            match owner {
                Owner::Present | Owner::Unresolvable => solid = true,
                Owner::Waiting => {
                    waiting.insert(reference.uid);
                }
                Owner::Absent => {
                    dangling.insert(reference.uid);
                }
                Owner::Unknown { kind, namespace } => {
                    // Absent (or another uid) in the cache: confirm with a live read.
                    let live = self.kinds[kind]
                        .live_uid(&namespace, &reference.name)
                        .await?;
                    if live.as_deref() == Some(reference.uid.as_str()) {
                        solid = true;
                    } else {
                        dangling.insert(reference.uid);
                    }
                }
            }
        }
        let kind = &self.kinds[dependent.kind];
        if dangling.is_empty() && waiting.is_empty() {
            return Ok(());
        }
        if solid {
            let drop: HashSet<String> = dangling.union(&waiting).cloned().collect();
            debug!(kind = kind.kind(), name = ?dependent.meta.name, "dropping references to gone owners");
            return kind.drop_owners(&dependent.meta, &drop).await;
        }
        // An owner waiting for its dependents waits for theirs too.
        let policy =
            if !waiting.is_empty() && !self.graph.lock().dependents_of(dependent).is_empty() {
                PropagationPolicy::Foreground
            } else {
                PropagationPolicy::Background
            };
        info!(kind = kind.kind(), namespace = ?dependent.meta.namespace, name = ?dependent.meta.name, ?policy, "owners gone, deleting");
        kind.delete(&dependent.meta, policy).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEPLOYMENT: usize = 0;
    const CONFIGMAP: usize = 1;
    const NODE: usize = 2;

    fn graph() -> Graph {
        Graph::new(vec![
            KindInfo {
                api_version: "apps/v1",
                kind: "Deployment",
                namespaced: true,
            },
            KindInfo {
                api_version: "v1",
                kind: "ConfigMap",
                namespaced: true,
            },
            KindInfo {
                api_version: "v1",
                kind: "Node",
                namespaced: false,
            },
        ])
    }

    fn meta(namespace: Option<&str>, name: &str, uid: &str) -> ObjectMeta {
        ObjectMeta {
            namespace: namespace.map(str::to_string),
            name: Some(name.to_string()),
            uid: Some(uid.to_string()),
            ..Default::default()
        }
    }

    fn owned_by(
        mut m: ObjectMeta,
        api_version: &str,
        kind: &str,
        name: &str,
        uid: &str,
    ) -> ObjectMeta {
        m.owner_references
            .get_or_insert_with(Vec::new)
            .push(OwnerReference {
                api_version: api_version.to_string(),
                kind: kind.to_string(),
                name: name.to_string(),
                uid: uid.to_string(),
                block_owner_deletion: Some(true),
                ..Default::default()
            });
        m
    }

    fn deleting(mut m: ObjectMeta, finalizer: &str) -> ObjectMeta {
        m.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            crate::pod::now(),
        ));
        m.finalizers = Some(vec![finalizer.to_string()]);
        m
    }

    fn sorted(mut v: Vec<String>) -> Vec<String> {
        v.sort();
        v.dedup();
        v
    }

    #[test]
    fn owners_resolve_by_uid_kind_and_namespace() {
        let mut g = graph();
        g.apply(DEPLOYMENT, meta(Some("a"), "web", "d1"));
        g.apply(NODE, meta(None, "n1", "n1"));
        let dep = |m: ObjectMeta| Node {
            kind: CONFIGMAP,
            meta: m,
        };
        let cm = |owner: (&str, &str, &str, &str)| {
            dep(owned_by(
                meta(Some("a"), "cm", "c1"),
                owner.0,
                owner.1,
                owner.2,
                owner.3,
            ))
        };
        let cases = [
            (
                "present",
                cm(("apps/v1", "Deployment", "web", "d1")),
                Owner::Present,
            ),
            (
                "cluster-scoped owner of a namespaced dependent",
                cm(("v1", "Node", "n1", "n1")),
                Owner::Present,
            ),
            (
                "not cached: read it",
                cm(("apps/v1", "Deployment", "api", "d2")),
                Owner::Unknown {
                    kind: DEPLOYMENT,
                    namespace: "a".into(),
                },
            ),
            (
                "kind outside the graph",
                cm(("batch/v1", "Job", "j", "j1")),
                Owner::Unresolvable,
            ),
            (
                "owner in another namespace",
                dep(owned_by(
                    meta(Some("b"), "cm", "c2"),
                    "apps/v1",
                    "Deployment",
                    "web",
                    "d1",
                )),
                Owner::Absent,
            ),
            (
                "namespaced owner of a cluster-scoped dependent",
                Node {
                    kind: NODE,
                    meta: owned_by(meta(None, "n2", "n2"), "apps/v1", "Deployment", "web", "d1"),
                },
                Owner::Unresolvable,
            ),
        ];
        for (name, dependent, want) in cases {
            let reference = dependent
                .meta
                .owner_references
                .as_ref()
                .expect("a reference")[0]
                .clone();
            assert_eq!(g.owner(&dependent, &reference), want, "{name}");
        }
        g.apply(
            DEPLOYMENT,
            deleting(meta(Some("a"), "web", "d1"), FOREGROUND),
        );
        let waiting = cm(("apps/v1", "Deployment", "web", "d1"));
        let reference = waiting.meta.owner_references.as_ref().expect("a reference")[0].clone();
        assert_eq!(g.owner(&waiting, &reference), Owner::Waiting);
    }

    #[test]
    fn changes_queue_only_the_objects_they_concern() {
        let mut g = graph();
        assert_eq!(
            g.apply(DEPLOYMENT, meta(Some("a"), "web", "d1")),
            Vec::<String>::new()
        );
        let cm = owned_by(
            meta(Some("a"), "cm", "c1"),
            "apps/v1",
            "Deployment",
            "web",
            "d1",
        );
        assert_eq!(
            g.apply(CONFIGMAP, cm.clone()),
            vec!["c1"],
            "a dependent is checked"
        );
        assert_eq!(
            g.apply(CONFIGMAP, meta(Some("a"), "plain", "c2")),
            Vec::<String>::new()
        );

        // The owner starts a foreground deletion: it is looked at, and a change of its
        // dependent wakes it again.
        assert_eq!(
            g.apply(
                DEPLOYMENT,
                deleting(meta(Some("a"), "web", "d1"), FOREGROUND)
            ),
            vec!["d1"]
        );
        assert_eq!(sorted(g.apply(CONFIGMAP, cm.clone())), vec!["c1", "d1"]);
        // Dropping the reference wakes the owner too.
        assert_eq!(g.apply(CONFIGMAP, meta(Some("a"), "cm", "c1")), vec!["d1"]);
        assert!(g.dependents_of(&g.nodes["d1"].clone()).is_empty());
        assert_eq!(sorted(g.apply(CONFIGMAP, cm)), vec!["c1", "d1"]);

        // The owner goes: its dependent is looked at.
        assert_eq!(g.delete("d1"), vec!["c1"]);
        // A dependent going wakes nobody once its owner is gone.
        assert_eq!(g.delete("c1"), Vec::<String>::new());
        assert!(g.dependents.is_empty(), "{:?}", g.dependents);
    }

    #[test]
    fn dependents_of_a_namespaced_owner_live_in_its_namespace() {
        let mut g = graph();
        g.apply(DEPLOYMENT, meta(Some("a"), "web", "d1"));
        g.apply(NODE, meta(None, "n1", "n1"));
        for (ns, uid) in [("a", "c1"), ("b", "c2")] {
            g.apply(
                CONFIGMAP,
                owned_by(
                    meta(Some(ns), "cm", uid),
                    "apps/v1",
                    "Deployment",
                    "web",
                    "d1",
                ),
            );
            g.apply(
                CONFIGMAP,
                owned_by(
                    meta(Some(ns), "by-node", &format!("{uid}-n")),
                    "v1",
                    "Node",
                    "n1",
                    "n1",
                ),
            );
        }
        let uids = |owner: &str| {
            let owner = g.nodes[owner].clone();
            sorted(
                g.dependents_of(&owner)
                    .into_iter()
                    .filter_map(|d| d.meta.uid)
                    .collect(),
            )
        };
        assert_eq!(uids("d1"), vec!["c1"]);
        assert_eq!(uids("n1"), vec!["c1-n", "c2-n"]);
    }

    #[test]
    fn resync_forgets_objects_no_longer_listed() {
        let mut g = graph();
        g.apply(DEPLOYMENT, meta(Some("a"), "web", "d1"));
        g.apply(
            CONFIGMAP,
            owned_by(
                meta(Some("a"), "cm", "c1"),
                "apps/v1",
                "Deployment",
                "web",
                "d1",
            ),
        );
        // The deployment's deletion was missed; the relist no longer has it.
        assert_eq!(g.resync(DEPLOYMENT, Vec::new()), vec!["c1"]);
        assert!(!g.nodes.contains_key("d1"));
        assert!(g.nodes.contains_key("c1"));
    }
}
