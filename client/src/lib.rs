//! The component side of rkube's internal gRPC API: what the scheduler, the
//! controller-manager and the node agents build on (the kube-runtime analogue).
//!
//! Start with [`Client`] (one connection to the apiserver, TLS and bearer token, from a
//! [`ClientConfig`] or a kubeconfig) and [`Api<K>`] (typed get, list, create, replace,
//! delete, watch and bind for any k8s-openapi kind). Then, to keep state in sync:
//!
//! - [`watcher()`]: a never-ending list-then-watch stream that resumes after disconnects
//!   and relists on 410 Gone, as `Init`/`InitApply`/`InitDone`/`Apply`/`Delete` events;
//! - [`store`]: the reflector, a cache of one kind fed by a watcher ([`reflector`],
//!   [`Store`]);
//! - [`queue`]: a deduplicating, rate-limited [`WorkQueue`] of keys that hands each key
//!   to one worker at a time.
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use futures::StreamExt;
//! use tracing::Instrument;
//! use k8s_openapi::api::core::v1::Pod;
//! use rkube_client::{reflector, store, watcher, Api, Client, ClientConfig, WatcherConfig};
//!
//! let client = Client::connect(ClientConfig::from_kubeconfig("kubeconfig")?).await?;
//! let pods: Api<Pod> = Api::namespaced(client, "default");
//! let (store, writer) = store::store();
//! let events = reflector(writer, watcher(pods, WatcherConfig::default()));
//! tokio::spawn(events.for_each(|_| async {}).instrument(tracing::info_span!("pod_reflector")));
//! store.wait_until_ready().await?;
//! println!("{} pods", store.len());
//! # Ok(())
//! # }
//! ```
//!
//! Errors: each module has its own `Error`; [`api::Error`] carries the Kubernetes
//! `Status` the apiserver answered with (`is_not_found`, `is_conflict`…).

pub mod api;
pub mod client;
pub mod config;
pub mod controller;
pub mod events;
pub mod leader;
pub mod queue;
pub mod store;
pub mod time;
pub mod watcher;

pub use api::{
    Api, DeleteParams, ListParams, Object, ObjectList, PropagationPolicy, WatchEvent, WatchParams,
};
pub use client::Client;
pub use config::ClientConfig;
pub use queue::{RateLimit, WorkQueue};
pub use store::{reflector, ObjectRef, Store, Writer};
pub use watcher::{watcher, Config as WatcherConfig};
