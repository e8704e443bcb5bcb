//! Wiring: the shared informers and every controller on the controller runner.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use ipnetwork::IpNetwork;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{
    ConfigMap, Endpoints, Event, Namespace, Node, Pod, Secret, Service,
};
use rkube_client::controller::{owner_key, Controller, Informer};
use rkube_client::leader::{LeaderElector, LeaseConfig};
use rkube_client::{Api, Client, ClientConfig, ObjectRef, WatcherConfig};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::cluster::ApiWriter;
use crate::gc::GarbageCollector;
use crate::{daemonset, deployment, endpoints, namespace, node_ipam, node_lifecycle, replicaset};

/// Everything `run` needs.
#[derive(Debug, Clone)]
pub struct Config {
    /// How to reach the apiserver.
    pub client: ClientConfig,
    /// The range node pod CIDRs come from (10.244.0.0/16).
    pub cluster_cidr: IpNetwork,
    /// Prefix length of each node's pod CIDR (24).
    pub node_cidr_mask_size: u8,
    /// A node whose lease is older than this is Ready=Unknown and tainted unreachable.
    pub node_monitor_grace_period: Duration,
    /// Pods on an unreachable node are evicted after this, unless they tolerate the
    /// taint for a set time themselves.
    pub pod_eviction_timeout: Duration,
    /// Concurrent reconciles per controller.
    pub workers: usize,
    /// Leader election Lease name in kube-system, if several replicas may run.
    pub leader_elect_lease: Option<String>,
}

impl Config {
    /// Kubernetes' defaults for everything but the connection.
    pub fn new(client: ClientConfig) -> Self {
        Config {
            client,
            cluster_cidr: "10.244.0.0/16".parse().expect("a valid literal CIDR"),
            node_cidr_mask_size: 24,
            node_monitor_grace_period: Duration::from_secs(40),
            pod_eviction_timeout: Duration::from_secs(300),
            workers: 8,
            leader_elect_lease: None,
        }
    }
}

/// Runs every controller until `shutdown` is cancelled; with leader election, only
/// while this replica holds the Lease (losing it ends `run` with an error, so the
/// process restarts and rejoins the election).
///
/// # Errors
/// When the apiserver cannot be reached at start, or leadership is lost.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let client = Client::connect(config.client.clone())
        .await
        .context("connect to the apiserver")?;
    let Some(lease) = config.leader_elect_lease.clone() else {
        return run_with_client(config, client, shutdown).await;
    };
    let identity = format!(
        "{}_{}",
        std::env::var("HOSTNAME").unwrap_or_else(|_| "rkube-controller-manager".into()),
        std::process::id()
    );
    let elector = LeaderElector::new(
        client.clone(),
        LeaseConfig {
            namespace: "kube-system".into(),
            name: lease,
            identity: identity.clone(),
            lease_duration: Duration::from_secs(15),
            retry_period: Duration::from_secs(2),
        },
    );
    info!(%identity, "waiting for leadership");
    let outcome = elector
        .run(shutdown, |lead| async move {
            info!("became leader");
            run_with_client(config, client, lead).await
        })
        .await
        .context("leader election")?;
    outcome.unwrap_or(Ok(()))
}

fn informer<K: rkube_client::Object>(client: &Client, shutdown: &CancellationToken) -> Informer<K> {
    Informer::spawn(
        Api::all(client.clone()),
        WatcherConfig::default(),
        shutdown.clone(),
    )
}

/// [`run`] with an existing connection and no leader election.
///
/// # Errors
/// When the cluster CIDR settings are invalid.
pub async fn run_with_client(
    config: Config,
    client: Client,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let writer = Arc::new(ApiWriter::new(client.clone()));
    let events = crate::events::spawn(writer.clone(), shutdown.clone());
    let pods: Informer<Pod> = informer(&client, &shutdown);
    let replicasets: Informer<ReplicaSet> = informer(&client, &shutdown);
    let deployments: Informer<Deployment> = informer(&client, &shutdown);
    let daemonsets: Informer<DaemonSet> = informer(&client, &shutdown);
    let statefulsets: Informer<StatefulSet> = informer(&client, &shutdown);
    let nodes: Informer<Node> = informer(&client, &shutdown);
    let namespaces: Informer<Namespace> = informer(&client, &shutdown);
    let services: Informer<Service> = informer(&client, &shutdown);
    let endpoints_informer: Informer<Endpoints> = informer(&client, &shutdown);
    let leases: Informer<Lease> = Informer::spawn(
        Api::namespaced(client.clone(), node_lifecycle::LEASE_NAMESPACE),
        WatcherConfig::default(),
        shutdown.clone(),
    );
    let workers = config.workers;
    let mut tasks = tokio::task::JoinSet::new();

    // ReplicaSets.
    let rs_ctx = Arc::new(replicaset::Context {
        pods: pods.store(),
        pod_writer: writer.clone(),
        rs_writer: writer.clone(),
        expectations: Default::default(),
        events: events.clone(),
    });
    tasks.spawn(
        Controller::new(&replicasets)
            .owns(&pods)
            .workers(workers)
            .resync_every(Duration::from_secs(300))
            .run(
                replicaset::reconcile,
                replicaset::error_policy,
                rs_ctx,
                shutdown.clone(),
            ),
    );

    // Deployments.
    let d_ctx = Arc::new(deployment::Context {
        replicasets: replicasets.store(),
        pods: pods.store(),
        deployment_writer: writer.clone(),
        rs_writer: writer.clone(),
        events: events.clone(),
    });
    let rs_store = replicasets.store();
    tasks.spawn(
        Controller::new(&deployments)
            .owns(&replicasets)
            .watches(&pods, move |p: &Pod| {
                // A pod wakes the Deployment of its ReplicaSet (Recreate waits for old
                // pods to be gone).
                owner_key::<ReplicaSet, Pod>(p)
                    .and_then(|rs| rs_store.get(&rs))
                    .and_then(|rs| owner_key::<Deployment, ReplicaSet>(rs.as_ref()))
                    .into_iter()
                    .collect::<Vec<ObjectRef>>()
            })
            .workers(workers)
            .resync_every(Duration::from_secs(300))
            .run(
                deployment::reconcile,
                deployment::error_policy,
                d_ctx,
                shutdown.clone(),
            ),
    );

    // DaemonSets: any node change may change where daemons run.
    let ds_ctx = Arc::new(daemonset::Context {
        nodes: nodes.store(),
        pods: pods.store(),
        pod_writer: writer.clone(),
        ds_writer: writer.clone(),
        expectations: Default::default(),
        events: events.clone(),
    });
    let ds_store = daemonsets.store();
    tasks.spawn(
        Controller::new(&daemonsets)
            .owns(&pods)
            .watches(&nodes, move |_: &Node| {
                ds_store
                    .state()
                    .iter()
                    .map(|d| ObjectRef::from_obj(d.as_ref()))
                    .collect()
            })
            .workers(workers)
            .resync_every(Duration::from_secs(300))
            .run(
                daemonset::reconcile,
                daemonset::error_policy,
                ds_ctx,
                shutdown.clone(),
            ),
    );

    // Endpoints.
    let ep_ctx = Arc::new(endpoints::Context {
        pods: pods.store(),
        endpoints: endpoints_informer.store(),
        writer: writer.clone(),
    });
    let svc_store = services.store();
    tasks.spawn(
        Controller::new(&services)
            .watches(&pods, move |p: &Pod| {
                endpoints::services_for_pod(&svc_store, p)
            })
            .watches(&endpoints_informer, |e: &Endpoints| {
                vec![ObjectRef::from_obj(e)]
            })
            .workers(workers)
            .resync_every(Duration::from_secs(300))
            .run(
                endpoints::reconcile,
                endpoints::error_policy,
                ep_ctx,
                shutdown.clone(),
            ),
    );

    // Node IPAM.
    let ipam_ctx = Arc::new(node_ipam::Context {
        nodes: nodes.store(),
        writer: writer.clone(),
        cluster_cidr: config.cluster_cidr,
        mask: config.node_cidr_mask_size,
        events: events.clone(),
        in_flight: Default::default(),
    });
    // One worker: allocations must not race each other.
    tasks.spawn(Controller::new(&nodes).workers(1).run(
        node_ipam::reconcile,
        node_ipam::error_policy,
        ipam_ctx,
        shutdown.clone(),
    ));

    // Node lifecycle: looked at every second, and when a lease changes.
    let nl_ctx = Arc::new(node_lifecycle::Context {
        leases: leases.store(),
        pods: pods.store(),
        node_writer: writer.clone(),
        pod_writer: writer.clone(),
        events: events.clone(),
        grace: config.node_monitor_grace_period,
        eviction_timeout: config.pod_eviction_timeout,
    });
    tasks.spawn(
        Controller::new(&nodes)
            .watches(&leases, |l: &Lease| {
                l.metadata
                    .name
                    .as_deref()
                    .map(ObjectRef::new)
                    .into_iter()
                    .collect()
            })
            .workers(workers)
            .resync_every(Duration::from_secs(1))
            .run(
                node_lifecycle::reconcile,
                node_lifecycle::error_policy,
                nl_ctx,
                shutdown.clone(),
            ),
    );

    // Namespaces.
    let ns_ctx = Arc::new(namespace::Context {
        client: client.clone(),
        writer: writer.clone(),
    });
    tasks.spawn(Controller::new(&namespaces).workers(2).run(
        namespace::reconcile,
        namespace::error_policy,
        ns_ctx,
        shutdown.clone(),
    ));

    // Garbage collection, over every kind the apiserver serves: the shared informers
    // above, plus ones of its own for kinds no other controller reads.
    let configmaps: Informer<ConfigMap> = informer(&client, &shutdown);
    let secrets: Informer<Secret> = informer(&client, &shutdown);
    let events_informer: Informer<Event> = informer(&client, &shutdown);
    let all_leases: Informer<Lease> = informer(&client, &shutdown);
    let gc = GarbageCollector::new()
        .kind(&namespaces, client.clone())
        .kind(&nodes, client.clone())
        .kind(&pods, client.clone())
        .kind(&services, client.clone())
        .kind(&endpoints_informer, client.clone())
        .kind(&configmaps, client.clone())
        .kind(&secrets, client.clone())
        .kind(&events_informer, client.clone())
        .kind(&deployments, client.clone())
        .kind(&replicasets, client.clone())
        .kind(&daemonsets, client.clone())
        .kind(&statefulsets, client.clone())
        .kind(&all_leases, client.clone());
    let covered = gc.kinds();
    for r in rkube_api::resource::RESOURCES {
        if !covered
            .iter()
            .any(|(v, k)| *v == r.api_version() && *k == r.kind)
        {
            warn!(kind = r.kind, "kind served but not garbage collected");
        }
    }
    tasks.spawn(gc.run(shutdown.clone()));

    info!("controllers started");
    while tasks.join_next().await.is_some() {}
    Ok(())
}
