//! The garbage collector: deletes dependents whose owners are gone, and carries out
//! foreground and orphan deletion (the `foregroundDeletion` and `orphan` finalizers the
//! apiserver adds for `propagationPolicy: Foreground / Orphan`). Start at
//! [`GarbageCollector::run`].
//!
//! Kubernetes' collector keeps a graph of ownerReferences across every kind; this one
//! covers the kinds that own things in rkube (Deployments, ReplicaSets, DaemonSets,
//! StatefulSets) and their dependents (those kinds and Pods). Unlike the other
//! controllers it is not keyed by one object: each pass looks at the whole graph from
//! the informer caches, and passes run when any of them changes (at most every 100 ms)
//! and every 5 s. An owner that looks absent in the cache is confirmed absent with a
//! live read before anything is deleted.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::NamespaceResourceScope;
use rkube_client::controller::{Change, Informer};
use rkube_client::{api, Api, Client, DeleteParams, Object, PropagationPolicy, Store};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// The finalizer of an object waiting for its dependents to be deleted.
pub const FOREGROUND: &str = "foregroundDeletion";
/// The finalizer of an object whose dependents must be orphaned first.
pub const ORPHAN: &str = "orphan";

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

/// One kind in the graph: its cache and the writes the collector makes.
trait Kind: Send + Sync {
    fn api_version(&self) -> &'static str;
    fn kind(&self) -> &'static str;
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
    K: Object + k8s_openapi::Resource<Scope = NamespaceResourceScope>,
{
    /// Re-reads the object and applies `change` to it; a vanished object is fine.
    async fn update(&self, meta: &ObjectMeta, change: impl Fn(&mut ObjectMeta)) -> Result<()> {
        let (namespace, name) = ns_name(meta);
        let api: Api<K> = Api::namespaced(self.client.clone(), &namespace);
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
    K: Object + k8s_openapi::Resource<Scope = NamespaceResourceScope>,
{
    fn api_version(&self) -> &'static str {
        K::API_VERSION
    }
    fn kind(&self) -> &'static str {
        K::KIND
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
            let api: Api<K> = Api::namespaced(self.client.clone(), namespace);
            let object = api.get_opt(name).await.map_err(|source| Error::Get {
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
            let api: Api<K> = Api::namespaced(self.client.clone(), &namespace);
            let params = DeleteParams {
                propagation_policy: Some(policy),
                precondition_uid: meta.uid.clone(),
                ..Default::default()
            };
            match api.delete(&name, &params).await {
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

/// The collector over a set of informers.
pub struct GarbageCollector {
    kinds: Vec<Arc<dyn Kind>>,
    wake: Arc<Notify>,
    subscriptions: Vec<BoxFuture<'static, ()>>,
    readiness: Vec<BoxFuture<'static, bool>>,
}

impl std::fmt::Debug for GarbageCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GarbageCollector")
            .field(
                "kinds",
                &self.kinds.iter().map(|k| k.kind()).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl GarbageCollector {
    pub fn new() -> Self {
        GarbageCollector {
            kinds: Vec::new(),
            wake: Arc::new(Notify::new()),
            subscriptions: Vec::new(),
            readiness: Vec::new(),
        }
    }

    /// Adds a kind to the graph; its changes trigger a pass.
    pub fn kind<K>(mut self, informer: &Informer<K>, client: Client) -> Self
    where
        K: Object + k8s_openapi::Resource<Scope = NamespaceResourceScope>,
    {
        self.kinds.push(Arc::new(Typed {
            store: informer.store(),
            client,
        }));
        let mut changes = informer.subscribe();
        let wake = self.wake.clone();
        self.subscriptions.push(Box::pin(async move {
            loop {
                match changes.recv().await {
                    Ok(Change::Applied(_) | Change::Deleted(_) | Change::Resynced)
                    | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => wake.notify_one(),
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        }));
        let store = informer.store();
        self.readiness.push(Box::pin(
            async move { store.wait_until_ready().await.is_ok() },
        ));
        self
    }

    /// Runs passes until `shutdown` is cancelled.
    pub async fn run(self, shutdown: CancellationToken) {
        for ready in self.readiness {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                ok = ready => if !ok { return },
            }
        }
        let mut tasks = tokio::task::JoinSet::new();
        for subscription in self.subscriptions {
            tasks.spawn(subscription);
        }
        loop {
            if let Err(err) = pass(&self.kinds).await {
                warn!(error = %err, "garbage collection pass failed");
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tasks.abort_all();
    }
}

impl Default for GarbageCollector {
    fn default() -> Self {
        Self::new()
    }
}

/// One look at the whole graph.
async fn pass(kinds: &[Arc<dyn Kind>]) -> Result<()> {
    // Every object by uid, with its kind.
    let mut by_uid: HashMap<String, (usize, ObjectMeta)> = HashMap::new();
    let mut by_name: HashMap<(&'static str, String, String), String> = HashMap::new();
    for (i, kind) in kinds.iter().enumerate() {
        for meta in kind.metas() {
            let (ns, name) = ns_name(&meta);
            if let Some(uid) = meta.uid.clone() {
                by_name.insert((kind.kind(), ns, name), uid.clone());
                by_uid.insert(uid, (i, meta));
            }
        }
    }
    // Dependents per owner uid.
    let mut dependents: HashMap<String, Vec<(usize, ObjectMeta)>> = HashMap::new();
    for (i, meta) in by_uid.values() {
        for owner in meta.owner_references.iter().flatten() {
            dependents
                .entry(owner.uid.clone())
                .or_default()
                .push((*i, meta.clone()));
        }
    }

    for (uid, (i, meta)) in &by_uid {
        let kind = &kinds[*i];
        let finalizers = meta.finalizers.clone().unwrap_or_default();
        let deps = dependents.get(uid).cloned().unwrap_or_default();
        if meta.deletion_timestamp.is_some() && finalizers.iter().any(|f| f == ORPHAN) {
            let owner: HashSet<String> = [uid.clone()].into();
            for (j, dep) in &deps {
                kinds[*j].drop_owners(dep, &owner).await?;
            }
            info!(kind = kind.kind(), object = ?meta.name, orphaned = deps.len(), "orphaned dependents");
            kind.remove_finalizer(meta, ORPHAN).await?;
            continue;
        }
        if meta.deletion_timestamp.is_some() && finalizers.iter().any(|f| f == FOREGROUND) {
            // Dependents that block the owner's deletion go first, in the foreground too.
            let blocking: Vec<&(usize, ObjectMeta)> = deps
                .iter()
                .filter(|(_, d)| {
                    d.owner_references
                        .iter()
                        .flatten()
                        .any(|o| &o.uid == uid && o.block_owner_deletion == Some(true))
                })
                .collect();
            if blocking.is_empty() {
                info!(kind = kind.kind(), object = ?meta.name, "dependents gone, finishing foreground deletion");
                kind.remove_finalizer(meta, FOREGROUND).await?;
            } else {
                for (j, dep) in blocking {
                    if dep.deletion_timestamp.is_none() {
                        kinds[*j].delete(dep, PropagationPolicy::Foreground).await?;
                    }
                }
            }
            continue;
        }
        // A dependent whose owners are all gone is deleted; dangling references next to
        // live owners are dropped.
        let refs = meta.owner_references.clone().unwrap_or_default();
        if refs.is_empty() {
            continue;
        }
        let mut dangling = HashSet::new();
        for owner in &refs {
            let Some(owner_kind) = kinds
                .iter()
                .find(|k| k.kind() == owner.kind && k.api_version() == owner.api_version)
            else {
                continue; // a kind outside the graph: never collected
            };
            let ns = meta.namespace.clone().unwrap_or_default();
            if by_name.get(&(owner_kind.kind(), ns.clone(), owner.name.clone())) == Some(&owner.uid)
            {
                continue;
            }
            // Absent (or another uid) in the cache: confirm with a live read.
            let live = owner_kind.live_uid(&ns, &owner.name).await?;
            if live.as_ref() != Some(&owner.uid) {
                dangling.insert(owner.uid.clone());
            }
        }
        if dangling.is_empty() {
            continue;
        }
        if dangling.len() == refs.len() {
            if meta.deletion_timestamp.is_none() {
                debug!(kind = kind.kind(), object = ?meta.name, "owners gone, deleting");
                kind.delete(meta, PropagationPolicy::Background).await?;
            }
        } else {
            kind.drop_owners(meta, &dangling).await?;
        }
    }
    Ok(())
}
