//! The namespace controller: empties a Terminating namespace (every kind rkube
//! stores), then removes the `kubernetes` finalizer from `spec.finalizers`, after
//! which the apiserver removes the namespace. Start at [`reconcile`].

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Endpoints, Event, Namespace, Pod, Secret, Service};
use k8s_openapi::NamespaceResourceScope;
use rkube_client::controller::Action;
use rkube_client::{api, Api, Client, DeleteParams, ListParams, Object};
use tracing::info;

use crate::cluster::Writer;

/// What emptying a namespace can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to list {kind} in namespace {namespace}")]
    List {
        kind: &'static str,
        namespace: String,
        #[source]
        source: api::Error,
    },
    #[error("failed to delete {kind} {name}")]
    Delete {
        kind: &'static str,
        name: String,
        #[source]
        source: api::Error,
    },
    #[error("failed to remove the finalizer of namespace {0}")]
    Finalize(String, #[source] api::Error),
}

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The finalizer this controller owns.
pub const FINALIZER: &str = "kubernetes";

/// What the namespace controller reads and writes.
pub struct Context {
    pub client: Client,
    pub writer: Arc<dyn Writer<Namespace>>,
}

/// Deletes every object of kind `K` in `namespace`; returns how many are still there.
async fn delete_all<K>(client: &Client, namespace: &str) -> Result<usize>
where
    K: Object + k8s_openapi::Resource<Scope = NamespaceResourceScope>,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let list = api
        .list(&ListParams::default())
        .await
        .map_err(|source| Error::List {
            kind: K::KIND,
            namespace: namespace.to_string(),
            source,
        })?;
    let remaining = list.items.len();
    for object in list.items {
        if object.metadata().deletion_timestamp.is_some() {
            continue;
        }
        let name = object.metadata().name.clone().unwrap_or_default();
        let params = DeleteParams {
            propagation_policy: Some(rkube_client::PropagationPolicy::Background),
            ..Default::default()
        };
        match api.delete(&name, &params).await {
            Ok(_) => {}
            Err(err) if err.is_not_found() => {}
            Err(source) => {
                return Err(Error::Delete {
                    kind: K::KIND,
                    name,
                    source,
                })
            }
        }
    }
    Ok(remaining)
}

/// Empties a Terminating namespace, then finalizes it; waits (requeues) while objects
/// remain (pods on nodes finish terminating first).
pub async fn reconcile(ns: Arc<Namespace>, ctx: Arc<Context>) -> Result<Action> {
    if ns.metadata.deletion_timestamp.is_none() {
        return Ok(Action::await_change());
    }
    let finalizers = ns
        .spec
        .as_ref()
        .and_then(|s| s.finalizers.clone())
        .unwrap_or_default();
    if !finalizers.iter().any(|f| f == FINALIZER) {
        return Ok(Action::await_change());
    }
    let name = ns.metadata.name.clone().unwrap_or_default();
    let client = &ctx.client;
    // Workloads first, so their controllers do not recreate what is being deleted.
    let remaining = delete_all::<Deployment>(client, &name).await?
        + delete_all::<DaemonSet>(client, &name).await?
        + delete_all::<StatefulSet>(client, &name).await?
        + delete_all::<ReplicaSet>(client, &name).await?
        + delete_all::<Pod>(client, &name).await?
        + delete_all::<Service>(client, &name).await?
        + delete_all::<Endpoints>(client, &name).await?
        + delete_all::<ConfigMap>(client, &name).await?
        + delete_all::<Secret>(client, &name).await?
        + delete_all::<Lease>(client, &name).await?
        + delete_all::<Event>(client, &name).await?;
    if remaining > 0 {
        info!(namespace = %name, remaining, "waiting for namespace to empty");
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    let mut finalized = (*ns).clone();
    if let Some(spec) = finalized.spec.as_mut() {
        spec.finalizers = Some(finalizers.into_iter().filter(|f| f != FINALIZER).collect());
    }
    ctx.writer
        .replace(&finalized)
        .await
        .map_err(|e| Error::Finalize(name.clone(), e))?;
    info!(namespace = %name, "namespace emptied and finalized");
    Ok(Action::await_change())
}

/// Failures are retried with back-off.
pub fn error_policy(ns: Arc<Namespace>, err: &Error, _ctx: Arc<Context>) -> Action {
    let name = ns.metadata.name.as_deref().unwrap_or_default();
    crate::failure::report("namespace", &name, err);
    Action::retry()
}
