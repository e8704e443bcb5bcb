//! `make bench-controllers`: the controller-manager against a real apiserver and etcd,
//! with 100 simulated nodes whose agent binds pods and marks them Running and Ready.
//!
//! Prints one `BENCH <name> <value> <unit>` line per figure:
//! - `controllers.create_rate` (pods/s): pods created by the ReplicaSet controller per
//!   second while a 1,000-replica Deployment scales up from nothing;
//! - `controllers.deploy1000.available` (s): from creating that Deployment to all 1,000
//!   replicas available;
//! - `controllers.rollout1000` (s): a full rolling update of it (maxSurge 25%,
//!   maxUnavailable 25%), from the template change to the rollout being complete.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use rkube_client::controller::Informer;
use rkube_client::{Api, Client, WatcherConfig};
use rkube_controller_manager::simulation::SimulatedNodes;
use rkube_controller_manager::{run, Config};
use rkube_ctl::pki::Component;
use rkube_tests::{Etcd, TestApiserver};
use tokio_util::sync::CancellationToken;

const NODES: usize = 100;
const REPLICAS: i32 = 1_000;
const TIMEOUT: Duration = Duration::from_secs(600);

fn deployment(image: &str) -> anyhow::Result<Deployment> {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": "bench", "namespace": "default"},
        "spec": {
            "replicas": REPLICAS,
            "selector": {"matchLabels": {"app": "bench"}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}},
            "template": {
                "metadata": {"labels": {"app": "bench"}},
                "spec": {"containers": [{"name": "main", "image": image}]}
            }
        }
    }))
    .context("build deployment")
}

/// Waits until the Deployment's rollout is complete for its current generation.
async fn wait_complete(deployments: &Api<Deployment>, start: Instant) -> anyhow::Result<Duration> {
    loop {
        let d = deployments.get("bench").await.context("get deployment")?;
        let status = d.status.clone().unwrap_or_default();
        if status.observed_generation >= d.metadata.generation
            && status.updated_replicas == Some(REPLICAS)
            && status.replicas == Some(REPLICAS)
            && status.available_replicas == Some(REPLICAS)
        {
            return Ok(start.elapsed());
        }
        if start.elapsed() > TIMEOUT {
            bail!("deployment not complete after {TIMEOUT:?}: {status:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let etcd = Etcd::start().await.context("start etcd")?;
    let api = TestApiserver::start(&etcd)
        .await
        .context("start apiserver")?;
    let config = |component| api.client_config(component);
    let shutdown = CancellationToken::new();
    let client = Client::connect(config(Component::Admin))
        .await
        .context("connect")?;
    let _nodes = SimulatedNodes::start(client.clone(), NODES, shutdown.clone())
        .await
        .context("start simulated nodes")?;
    let manager = tokio::spawn(run(
        Config::new(config(Component::ControllerManager)),
        shutdown.clone(),
    ));

    let pods: Informer<Pod> = Informer::spawn(
        Api::namespaced(client.clone(), "default"),
        WatcherConfig::default(),
        shutdown.clone(),
    );
    pods.store().wait_until_ready().await.context("pod cache")?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");

    // Scale-up from nothing.
    let start = Instant::now();
    deployments
        .create(&deployment("bench:1")?)
        .await
        .context("create deployment")?;
    let store = pods.store();
    let created_in = loop {
        if store.len() >= REPLICAS as usize {
            break start.elapsed();
        }
        if start.elapsed() > TIMEOUT {
            bail!("only {} pods after {TIMEOUT:?}", store.len());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let available = wait_complete(&deployments, start).await?;

    // Full rolling update.
    let mut d = deployments.get("bench").await.context("get deployment")?;
    if let Some(spec) = d.spec.as_mut().and_then(|s| s.template.spec.as_mut()) {
        spec.containers[0].image = Some("bench:2".into());
    }
    let start = Instant::now();
    deployments
        .replace("bench", &d)
        .await
        .context("update image")?;
    // Wait for the new generation to be observed before judging completeness.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rollout = wait_complete(&deployments, start).await?;

    println!(
        "BENCH controllers.create_rate {:.1} pods/s",
        f64::from(REPLICAS) / created_in.as_secs_f64()
    );
    println!(
        "BENCH controllers.deploy1000.available {:.2} s",
        available.as_secs_f64()
    );
    println!(
        "BENCH controllers.rollout1000 {:.2} s",
        rollout.as_secs_f64()
    );

    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), manager).await;
    Ok(())
}
