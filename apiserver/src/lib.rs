//! `rkube-apiserver`: the Kubernetes-compatible REST API and rkube's internal gRPC API,
//! over etcd.
//!
//! Start with [`run`]: it connects [`storage`] to etcd, loads the [`cache`] (one etcd
//! watch feeding every list and watch), builds the [`registry`] (Kubernetes semantics
//! for every kind; per-kind rules in [`strategy`]) and serves it through [`rest`] (what
//! kubectl speaks) and [`grpc`] (what rkube's components speak) on one HTTPS port,
//! behind [`auth`]. Events expire through [`ttl`].

pub mod allocator;
pub mod auth;
pub mod cache;
pub mod config;
pub mod grpc;
pub mod node_proxy;
pub mod protobuf;
pub mod registry;
pub mod rest;
pub mod serve;
pub mod storage;
pub mod strategy;
pub mod tls;
pub mod ttl;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use config::Config;

/// Binds the configured address and serves until `shutdown`.
///
/// # Errors
/// When the address cannot be bound or etcd cannot be reached.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let listener = TcpListener::bind((config.bind_address, config.secure_port))
        .await
        .with_context(|| format!("bind {}:{}", config.bind_address, config.secure_port))?;
    run_with_listener(config, listener, shutdown).await
}

/// Serves on an already bound listener (tests bind port 0 first).
///
/// # Errors
/// When etcd cannot be reached or the TLS or token files cannot be read.
pub async fn run_with_listener(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let storage = storage::Storage::connect(&config.etcd_servers)
        .await
        .context("connect to etcd")?;
    let cache = cache::WatchCache::start(
        storage.clone(),
        config.watch_cache_events,
        shutdown.child_token(),
    )
    .await
    .context("load the watch cache")?;
    let allocator = allocator::Allocator::new(
        &config.service_cluster_ip_range,
        &config.service_node_port_range,
    )
    .context("parse service ranges")?;
    let registry = registry::Registry::new(storage.clone(), cache.clone(), allocator)
        .with_event_ttl(config.event_ttl);
    registry.ensure_system_namespaces().await?;
    if config.etcd_compaction_interval > 0 {
        let interval = Duration::from_secs(config.etcd_compaction_interval);
        tokio::spawn(compact(storage, cache, interval, shutdown.child_token()));
    }
    let authn = Arc::new(
        auth::Authenticator::new(
            config.token_auth_file.as_deref(),
            config.insecure_allow_anonymous,
        )
        .context("load the token file")?,
    );
    let tls = if config.insecure_plain_http {
        warn!("serving plain HTTP: for tests only");
        None
    } else {
        let cert = config
            .tls_cert_file
            .as_deref()
            .context("--tls-cert-file is required (or --insecure-plain-http)")?;
        let key = config
            .tls_private_key_file
            .as_deref()
            .context("--tls-private-key-file is required")?;
        Some(
            tls::server_config(cert, key, config.client_ca_file.as_deref())
                .context("load TLS configuration")?,
        )
    };
    let node_proxy = node_proxy::NodeProxy::from_flags(
        config.kubelet_client_certificate.as_deref(),
        config.kubelet_client_key.as_deref(),
    )
    .context("load the kubelet client certificate")?;
    let app = router(registry, authn, node_proxy);
    serve::serve(listener, tls, app, shutdown).await
}

/// The one router: gRPC under its service path, everything else REST.
pub fn router(
    registry: registry::Registry,
    authn: Arc<auth::Authenticator>,
    node_proxy: node_proxy::NodeProxy,
) -> axum::Router {
    let authorizer: Arc<dyn auth::Authorizer> = Arc::new(auth::AllowAll);
    let grpc = rkube_proto::v1::resources_server::ResourcesServer::new(grpc::GrpcApi {
        registry: registry.clone(),
        authorizer: authorizer.clone(),
    })
    .max_decoding_message_size(rest::MAX_BODY_BYTES + 64 * 1024)
    .max_encoding_message_size(usize::MAX);
    axum::Router::new()
        .route_service("/rkube.v1.Resources/{*method}", grpc)
        .fallback(rest::handle)
        .with_state(Arc::new(rest::ApiState {
            registry,
            authorizer,
            node_proxy,
        }))
        .layer(axum::middleware::from_fn_with_state(
            authn,
            serve::authenticate,
        ))
}

/// Compacts etcd's history every `interval`, up to the revision seen one interval
/// earlier (so recent watchers can still resume), as the Kubernetes apiserver does.
async fn compact(
    storage: storage::Storage,
    cache: cache::WatchCache,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut previous: Option<i64> = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        if let Some(rev) = previous {
            match storage.compact(rev).await {
                Ok(()) => {
                    cache.compacted(rev);
                    info!(revision = rev, "compacted etcd");
                }
                Err(e) => warn!(error = %e, "compaction failed"),
            }
        }
        previous = storage.current_revision().await.ok();
    }
}
