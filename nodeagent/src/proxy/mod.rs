//! The service proxy: watches Services and Endpoints and keeps `table ip rkube` (ClusterIP,
//! NodePort, session affinity, hairpin, the pods' egress masquerade) in step with them.
//!
//! Start with [`reflect`], which gives the [`ServiceState`] (two reflector stores the
//! cluster DNS reads too) and the [`ServiceReflector`] task that feeds it; then
//! [`Proxy::run`] renders the whole table with [`ruleset::render`] whenever the state
//! changed (debounced: a burst of changes makes one apply) and applies it with an
//! [`apply::RulesetApplier`] — `nft -f -` in production, retried until it succeeds.
//! On shutdown the table stays: a restarting agent replaces it.

pub mod apply;
pub mod ruleset;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Endpoints, Service};
use rkube_client::{reflector, store, watcher, Api, Client, Store, WatcherConfig, Writer};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use self::apply::RulesetApplier;
use self::ruleset::Ranges;

/// The Services and Endpoints of the whole cluster, as last seen by the watch.
#[derive(Debug, Clone)]
pub struct ServiceState {
    pub services: Store<Service>,
    pub endpoints: Store<Endpoints>,
    /// Bumped after every applied watch event.
    pub changes: watch::Receiver<u64>,
}

impl ServiceState {
    /// Whether both stores hold a complete first list.
    pub fn is_ready(&self) -> bool {
        self.services.is_ready() && self.endpoints.is_ready()
    }
}

/// Feeds a [`ServiceState`] from the apiserver; see [`reflect`].
pub struct ServiceReflector {
    services: Api<Service>,
    endpoints: Api<Endpoints>,
    service_writer: Writer<Service>,
    endpoint_writer: Writer<Endpoints>,
    changes: watch::Sender<u64>,
}

/// The state and the task that keeps it current (run it with [`ServiceReflector::run`]).
pub fn reflect(client: Client) -> (ServiceReflector, ServiceState) {
    let (services, service_writer) = store::store();
    let (endpoints, endpoint_writer) = store::store();
    let (changes, changes_rx) = watch::channel(0);
    (
        ServiceReflector {
            services: Api::all(client.clone()),
            endpoints: Api::all(client),
            service_writer,
            endpoint_writer,
            changes,
        },
        ServiceState {
            services,
            endpoints,
            changes: changes_rx,
        },
    )
}

impl ServiceReflector {
    /// Watches until `shutdown`; watch errors are logged and retried by the watcher.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut services = reflector(
            self.service_writer,
            watcher(self.services, WatcherConfig::default()),
        )
        .boxed();
        let mut endpoints = reflector(
            self.endpoint_writer,
            watcher(self.endpoints, WatcherConfig::default()),
        )
        .boxed();
        loop {
            let event = tokio::select! {
                _ = shutdown.cancelled() => return,
                event = services.next() => event.map(|e| e.map(|_| ()).map_err(|e| ("services", e))),
                event = endpoints.next() => event.map(|e| e.map(|_| ()).map_err(|e| ("endpoints", e))),
            };
            match event {
                Some(Ok(())) => {
                    self.changes.send_modify(|generation| *generation += 1);
                }
                Some(Err((kind, error))) => {
                    warn!(kind, error = %error, "watch failed; retrying");
                }
                None => return,
            }
        }
    }
}

/// Keeps the node's nftables table in step with a [`ServiceState`].
pub struct Proxy {
    state: ServiceState,
    ranges: Ranges,
    applier: Arc<dyn RulesetApplier>,
    /// How long to gather changes before an apply.
    pub debounce: Duration,
    /// How long to wait before retrying a failed apply.
    pub retry: Duration,
    /// How often the table is written again even when nothing changed, so that a table
    /// removed or changed behind the agent's back comes back.
    pub resync: Duration,
}

impl Proxy {
    /// A proxy with a 100 ms debounce, 1 s between retries and a resync every minute.
    pub fn new(state: ServiceState, ranges: Ranges, applier: Arc<dyn RulesetApplier>) -> Self {
        Proxy {
            state,
            ranges,
            applier,
            debounce: Duration::from_millis(100),
            retry: Duration::from_secs(1),
            resync: Duration::from_secs(60),
        }
    }

    /// Renders and applies the table whenever the state changes, until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut changes = self.state.changes.clone();
        let mut applied: Option<String> = None;
        loop {
            // Wait for a change (or, after a failed apply, for the retry delay).
            let wait_for_change = async {
                loop {
                    if changes.changed().await.is_err() {
                        // The reflector is gone; nothing will change any more.
                        std::future::pending::<()>().await;
                    }
                    if self.state.is_ready() {
                        return;
                    }
                }
            };
            let retry_due = applied.is_none() && self.state.is_ready();
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = wait_for_change => {}
                _ = tokio::time::sleep(self.retry), if retry_due => {}
                _ = tokio::time::sleep(self.resync), if self.state.is_ready() => {
                    applied = None;
                }
            }
            // Gather the rest of a burst before rendering.
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(self.debounce) => {}
            }
            changes.borrow_and_update();
            let ports =
                ruleset::service_ports(&self.state.services.state(), &self.state.endpoints.state());
            let script = ruleset::render(&self.ranges, &ports);
            if applied.as_deref() == Some(script.as_str()) {
                debug!("ruleset unchanged");
                continue;
            }
            let applier = self.applier.clone();
            let attempt = script.clone();
            let started = std::time::Instant::now();
            let result = tokio::task::spawn_blocking(move || applier.apply(&attempt)).await;
            match result {
                Ok(Ok(())) => {
                    info!(
                        service_ports = ports.len(),
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "applied service rules"
                    );
                    applied = Some(script);
                }
                Ok(Err(error)) => {
                    warn!(error = %error, "failed to apply service rules; retrying");
                    applied = None;
                }
                Err(error) => {
                    warn!(error = %error, "service rules task failed; retrying");
                    applied = None;
                }
            }
        }
        info!("service proxy stopped; leaving the rules in place");
    }
}

/// Makes bridged IPv4 traffic pass the `ip` hooks in this network namespace
/// (`net.bridge.bridge-nf-call-iptables`), so that the reply of a pod that a Service sent
/// to a pod on the same bridge is un-DNATed by conntrack.
///
/// # Errors
/// When the sysctl does not exist (no `br_netfilter`) or cannot be written.
pub fn enable_bridge_netfilter() -> std::io::Result<()> {
    std::fs::write("/proc/sys/net/bridge/bridge-nf-call-iptables", "1")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::apply::RecordingApplier;
    use k8s_openapi::api::core::v1::{ServicePort as Port, ServiceSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use rkube_client::watcher::Event;

    fn service(name: &str, ip: &str) -> Service {
        Service {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                namespace: Some("default".to_string()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                cluster_ip: Some(ip.to_string()),
                ports: Some(vec![Port {
                    port: 80,
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// A state fed by hand: the writers and the change counter.
    fn state() -> (
        Writer<Service>,
        Writer<Endpoints>,
        watch::Sender<u64>,
        ServiceState,
    ) {
        let (services, service_writer) = store::store();
        let (endpoints, endpoint_writer) = store::store();
        let (changes, changes_rx) = watch::channel(0);
        (
            service_writer,
            endpoint_writer,
            changes,
            ServiceState {
                services,
                endpoints,
                changes: changes_rx,
            },
        )
    }

    fn ranges() -> Ranges {
        Ranges {
            cluster_cidr: "10.244.0.0/16".parse().expect("cidr"),
            service_cidr: "10.96.0.0/12".parse().expect("cidr"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_makes_one_apply_and_failures_are_retried() {
        let (mut services, mut endpoints, changes, state) = state();
        let applier = Arc::new(RecordingApplier::default());
        let proxy = Proxy::new(state, ranges(), applier.clone());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(proxy.run(shutdown.clone()));

        // Nothing is applied before both lists are complete.
        services.apply_watcher_event(&Event::Init);
        services.apply_watcher_event(&Event::InitDone);
        changes.send_modify(|g| *g += 1);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(
            applier.applied().is_empty(),
            "applied before endpoints were listed"
        );

        endpoints.apply_watcher_event(&Event::Init);
        endpoints.apply_watcher_event(&Event::InitDone);
        for i in 0..10 {
            services.apply_watcher_event(&Event::Apply(service(
                &format!("s{i}"),
                &format!("10.96.0.{}", i + 1),
            )));
            changes.send_modify(|g| *g += 1);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let applied = applier.applied();
        assert_eq!(applied.len(), 1, "one apply for the burst");
        assert!(
            applied[0].contains("10.96.0.10 . tcp . 80"),
            "{}",
            applied[0]
        );

        // A failing apply is retried until it succeeds.
        applier.set_failing(true);
        services.apply_watcher_event(&Event::Delete(service("s0", "10.96.0.1")));
        changes.send_modify(|g| *g += 1);
        tokio::time::sleep(Duration::from_millis(3500)).await;
        let failed = applier.applied().len();
        assert!(failed >= 3, "retried: {failed} attempts");
        applier.set_failing(false);
        tokio::time::sleep(Duration::from_secs(2)).await;
        let done = applier.applied().len();
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(
            applier.applied().len(),
            done,
            "no applies once it succeeded"
        );
        assert!(!applier.applied()[done - 1].contains("10.96.0.1 . tcp"));

        // The periodic resync writes the same table again.
        tokio::time::sleep(Duration::from_secs(60)).await;
        let applied = applier.applied();
        assert_eq!(applied.len(), done + 1, "one resync after a minute");
        assert_eq!(applied[done], applied[done - 1]);

        shutdown.cancel();
        task.await.expect("proxy task");
    }
}
