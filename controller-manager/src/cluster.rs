//! The writes controllers make, behind the [`Writer`] trait: [`ApiWriter`] sends them
//! to the apiserver, [`Recorder`] (tests) records them as an ordered list of calls.
//!
//! Reconcilers read from informer caches and write through a `Writer`, so their
//! decisions can be checked call by call, as Kubernetes' controller tests do with
//! their fake clientsets (`expectCreateRS`, `expectUpdateStatus`…).

use std::sync::Arc;

use futures::future::BoxFuture;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{
    ConfigMap, Endpoints, Event, Namespace, Node, Pod, Secret, Service,
};
use parking_lot::Mutex;
use rkube_client::{api, Api, Client, DeleteParams, Object};

/// Writes of one kind. Object names are namespaced by the object itself (`create`,
/// `replace*`) or by the `namespace` argument (`delete`; `None` for cluster-scoped
/// kinds).
pub trait Writer<K>: Send + Sync {
    /// Creates `object` (its `metadata.namespace` says where).
    fn create(&self, object: &K) -> BoxFuture<'_, api::Result<K>>;
    /// Replaces spec and metadata of `object`, based on its resourceVersion.
    fn replace(&self, object: &K) -> BoxFuture<'_, api::Result<K>>;
    /// Replaces the status of `object`, based on its resourceVersion.
    fn replace_status(&self, object: &K) -> BoxFuture<'_, api::Result<K>>;
    /// Deletes an object.
    fn delete<'a>(
        &'a self,
        namespace: Option<&'a str>,
        name: &'a str,
        params: &'a DeleteParams,
    ) -> BoxFuture<'a, api::Result<K>>;
}

/// The real [`Writer`]: calls through `rkube-client`.
#[derive(Debug, Clone)]
pub struct ApiWriter {
    client: Client,
}

impl ApiWriter {
    pub fn new(client: Client) -> Self {
        ApiWriter { client }
    }
}

fn name_of<K: Object>(object: &K) -> String {
    object.metadata().name.clone().unwrap_or_default()
}

macro_rules! namespaced_writer {
    ($($kind:ty),*) => {$(
        impl Writer<$kind> for ApiWriter {
            fn create(&self, object: &$kind) -> BoxFuture<'_, api::Result<$kind>> {
                let ns = object.metadata.namespace.clone().unwrap_or_default();
                let object = object.clone();
                Box::pin(async move {
                    Api::<$kind>::namespaced(self.client.clone(), &ns).create(&object).await
                })
            }
            fn replace(&self, object: &$kind) -> BoxFuture<'_, api::Result<$kind>> {
                let ns = object.metadata.namespace.clone().unwrap_or_default();
                let object = object.clone();
                Box::pin(async move {
                    Api::<$kind>::namespaced(self.client.clone(), &ns)
                        .replace(&name_of(&object), &object)
                        .await
                })
            }
            fn replace_status(&self, object: &$kind) -> BoxFuture<'_, api::Result<$kind>> {
                let ns = object.metadata.namespace.clone().unwrap_or_default();
                let object = object.clone();
                Box::pin(async move {
                    Api::<$kind>::namespaced(self.client.clone(), &ns)
                        .replace_status(&name_of(&object), &object)
                        .await
                })
            }
            fn delete<'a>(
                &'a self,
                namespace: Option<&'a str>,
                name: &'a str,
                params: &'a DeleteParams,
            ) -> BoxFuture<'a, api::Result<$kind>> {
                Box::pin(async move {
                    Api::<$kind>::namespaced(self.client.clone(), namespace.unwrap_or_default())
                        .delete(name, params)
                        .await
                })
            }
        }
    )*};
}

macro_rules! cluster_writer {
    ($($kind:ty),*) => {$(
        impl Writer<$kind> for ApiWriter {
            fn create(&self, object: &$kind) -> BoxFuture<'_, api::Result<$kind>> {
                let object = object.clone();
                Box::pin(async move { Api::<$kind>::all(self.client.clone()).create(&object).await })
            }
            fn replace(&self, object: &$kind) -> BoxFuture<'_, api::Result<$kind>> {
                let object = object.clone();
                Box::pin(async move {
                    Api::<$kind>::all(self.client.clone()).replace(&name_of(&object), &object).await
                })
            }
            fn replace_status(&self, object: &$kind) -> BoxFuture<'_, api::Result<$kind>> {
                let object = object.clone();
                Box::pin(async move {
                    Api::<$kind>::all(self.client.clone())
                        .replace_status(&name_of(&object), &object)
                        .await
                })
            }
            fn delete<'a>(
                &'a self,
                _namespace: Option<&'a str>,
                name: &'a str,
                params: &'a DeleteParams,
            ) -> BoxFuture<'a, api::Result<$kind>> {
                Box::pin(async move { Api::<$kind>::all(self.client.clone()).delete(name, params).await })
            }
        }
    )*};
}

namespaced_writer!(
    Pod,
    ReplicaSet,
    Deployment,
    DaemonSet,
    StatefulSet,
    Service,
    Endpoints,
    ConfigMap,
    Secret,
    Event,
    Lease
);
cluster_writer!(Node, Namespace);

/// A recording fake [`Writer`]: every call is appended to [`Recorder::calls`] as
/// `"<verb> <kind> <namespace>/<name>"` (`verb` is `create`, `update`, `update-status`
/// or `delete`), and the written objects are kept for inspection. Creates fill in
/// `generateName` and a uid, as the apiserver would.
#[derive(Debug, Default, Clone)]
pub struct Recorder {
    calls: Arc<Mutex<Vec<String>>>,
    objects: Arc<Mutex<Vec<serde_json::Value>>>,
    counter: Arc<Mutex<u64>>,
    fail_creates: bool,
}

impl Recorder {
    /// A recorder whose creates all fail with 422 Invalid (a broken pod template).
    pub fn failing_creates() -> Self {
        Recorder {
            fail_creates: true,
            ..Default::default()
        }
    }

    /// The calls so far, in order (events are left out: they are not decisions).
    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().clone()
    }

    /// The objects written so far, in order of the calls (deletes write none).
    pub fn objects(&self) -> Vec<serde_json::Value> {
        self.objects.lock().clone()
    }

    fn record<K: Object>(&self, verb: &str, object: &K) {
        if K::KIND == "Event" {
            return;
        }
        let meta = object.metadata();
        self.calls.lock().push(format!(
            "{verb} {} {}/{}",
            K::KIND,
            meta.namespace.as_deref().unwrap_or(""),
            meta.name.as_deref().unwrap_or("")
        ));
        if let Ok(value) = serde_json::to_value(object) {
            self.objects.lock().push(value);
        }
    }
}

impl<K: Object> Writer<K> for Recorder {
    fn create(&self, object: &K) -> BoxFuture<'_, api::Result<K>> {
        let mut object = object.clone();
        if self.fail_creates {
            self.record("create", &object);
            let status = rkube_api::status::Status::bad_request("pod template is invalid");
            return Box::pin(async move { Err(api::Error::Api(Box::new(status))) });
        }
        {
            let mut counter = self.counter.lock();
            *counter += 1;
            let meta = object.metadata_mut();
            if meta.name.as_deref().is_none_or(str::is_empty) {
                meta.name = Some(format!(
                    "{}{}",
                    meta.generate_name.clone().unwrap_or_default(),
                    *counter
                ));
            }
            meta.uid = Some(format!("uid-{}", *counter));
        }
        self.record("create", &object);
        Box::pin(async move { Ok(object) })
    }

    fn replace(&self, object: &K) -> BoxFuture<'_, api::Result<K>> {
        self.record("update", object);
        let object = object.clone();
        Box::pin(async move { Ok(object) })
    }

    fn replace_status(&self, object: &K) -> BoxFuture<'_, api::Result<K>> {
        self.record("update-status", object);
        let object = object.clone();
        Box::pin(async move { Ok(object) })
    }

    fn delete<'a>(
        &'a self,
        namespace: Option<&'a str>,
        name: &'a str,
        _params: &'a DeleteParams,
    ) -> BoxFuture<'a, api::Result<K>> {
        if K::KIND != "Event" {
            self.calls.lock().push(format!(
                "delete {} {}/{}",
                K::KIND,
                namespace.unwrap_or(""),
                name
            ));
        }
        Box::pin(async move {
            let mut object: K =
                serde_json::from_value(serde_json::json!({})).map_err(|source| {
                    api::Error::Decode {
                        kind: K::KIND,
                        source,
                    }
                })?;
            object.metadata_mut().name = Some(name.to_string());
            Ok(object)
        })
    }
}
