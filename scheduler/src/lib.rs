//! `rkube-scheduler` places pending pods on nodes with the Kubernetes filter-and-score
//! framework.
//!
//! Start with [`framework`] (extension points, [`framework::Status`],
//! [`framework::CycleState`], the [`framework::Framework`] that runs one cycle), then a
//! plugin such as [`plugins::node_affinity`]. Around them:
//!
//! - [`node_info`]: what plugins see — [`node_info::PodInfo`], [`node_info::NodeInfo`],
//!   the per-cycle [`node_info::Snapshot`];
//! - [`cache`]: nodes, bound and assumed pods, and snapshots of them;
//! - [`queue`]: active, backoff and unschedulable pods;
//! - [`scheduler`]: informers, the scheduling thread and the asynchronous binder;
//! - [`config`]: the configuration file (profiles, weights, percentage of nodes to
//!   score, leader election).
//!
//! [`run`] is what the binary calls: connect, optionally win the leader Lease, schedule
//! until the shutdown token is cancelled.

pub mod cache;
pub mod config;
pub mod framework;
pub mod node_info;
pub mod plugins;
pub mod queue;
pub mod scheduler;
#[cfg(test)]
pub(crate) mod testing;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rkube_client::leader::{LeaderElector, LeaseConfig};
use rkube_client::{Client, ClientConfig};
use tokio_util::sync::CancellationToken;
use tracing::info;

pub use config::SchedulerConfig;
pub use scheduler::{run_scheduler, Metrics};

/// Everything [`run`] needs.
#[derive(Debug, Clone)]
pub struct Config {
    pub client: ClientConfig,
    pub scheduler: SchedulerConfig,
    /// This replica's identity in the leader Lease (hostname and a random suffix).
    pub identity: String,
}

/// Runs the scheduler until `shutdown` is cancelled; with leader election, only while
/// this replica holds the Lease (and returns an error when it loses it, so that the
/// process restarts clean, as Kubernetes' scheduler does).
///
/// # Errors
/// Connection, configuration, or lost leadership.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let client = Client::connect(config.client.clone())
        .await
        .context("connect to apiserver")?;
    let metrics = Arc::new(Metrics::default());
    let election = &config.scheduler.leader_election;
    if !election.leader_elect {
        return run_scheduler(client, config.scheduler.clone(), metrics, shutdown)
            .await
            .context("run scheduler");
    }
    let lease = LeaseConfig {
        namespace: election.resource_namespace.clone(),
        name: election.resource_name.clone(),
        identity: config.identity.clone(),
        lease_duration: Duration::from_secs(election.lease_duration_seconds),
        retry_period: Duration::from_secs(election.retry_period_seconds),
    };
    let elector = LeaderElector::new(client.clone(), lease);
    let scheduler_config = config.scheduler.clone();
    let outcome = elector
        .run(shutdown, |leading| async move {
            info!("became leader, scheduling");
            run_scheduler(client, scheduler_config, metrics, leading).await
        })
        .await
        .context("hold leader lease")?;
    match outcome {
        Some(result) => result.context("run scheduler"),
        None => Ok(()),
    }
}
