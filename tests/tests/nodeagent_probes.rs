//! Probes in the node agent with its built-in runtime, as root, against a real etcd,
//! apiserver and registry. Pods run in their own network namespace with loopback only
//! (no pod network), so every probe connects through the sandbox's namespace:
//!
//! - a liveness `httpGet` probe with a custom header against busybox `httpd`, whose
//!   file the container deletes after a few seconds (404), restarts the container
//!   (restartCount ≥ 1) and leaves `Unhealthy` and `Killing` events in the API;
//! - a readiness `tcpSocket` probe on a port that opens only after a few seconds keeps
//!   the running pod not Ready, then Ready.
//!
//! This binary has its own `main` (harness = false) because it doubles as the agent's
//! helper: the runtime re-executes it as `<this binary> shim …`.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, HTTPGetAction, HTTPHeader, Pod, Probe, TCPSocketAction};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use rkube_client::{Api, DeleteParams, ListParams};
use rkube_tests::eventually;
use rkube_tests::node::{phase, pod, root_test_main, Agent, Cluster};

fn main() -> std::process::ExitCode {
    root_test_main(
        "nodeagent_probes",
        &[("liveness_restarts_and_readiness_gates_ready", || {
            Box::pin(liveness_restarts_and_readiness_gates_ready())
        })],
    )
}

/// The status of the pod's condition `type_`.
fn condition(pod: &Pod, type_: &str) -> Option<String> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.status.clone())
}

fn container_ready(pod: &Pod) -> Option<bool> {
    Some(
        pod.status
            .as_ref()?
            .container_statuses
            .as_ref()?
            .first()?
            .ready,
    )
}

fn restart_count(pod: &Pod) -> i32 {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first())
        .map(|c| c.restart_count)
        .unwrap_or(0)
}

/// A probe that looks every second.
fn fast(probe: Probe) -> Probe {
    Probe {
        period_seconds: Some(1),
        timeout_seconds: Some(1),
        ..probe
    }
}

async fn liveness_restarts_and_readiness_gates_ready() {
    let Cluster {
        etcd: _etcd,
        api,
        registry,
        image,
        admin,
    } = Cluster::start().await;
    let pid = std::process::id();
    let node = format!("na-probes-{pid}");
    let agent = Agent::start(&api, &node, &registry.addr).expect("agent");
    let pods: Api<Pod> = Api::namespaced(admin.clone(), "default");
    let events: Api<Event> = Api::namespaced(admin.clone(), "default");

    // Liveness: httpd serves /healthz until the container deletes it (404 after 4 s).
    let live = format!("live-{pid}");
    let mut spec = pod(
        &live,
        &node,
        &image,
        &[
            "sh",
            "-c",
            "mkdir -p /www && echo ok > /www/healthz && httpd -f -p 8080 -h /www & \
             sleep 4; rm -f /www/healthz; sleep 1000",
        ],
        2,
    );
    let pod_spec = spec.spec.as_mut().expect("spec");
    pod_spec.restart_policy = Some("Always".into());
    pod_spec.containers[0].liveness_probe = Some(fast(Probe {
        http_get: Some(HTTPGetAction {
            path: Some("/healthz".into()),
            port: IntOrString::Int(8080),
            http_headers: Some(vec![HTTPHeader {
                name: "X-Rkube-Probe".into(),
                value: "liveness".into(),
            }]),
            ..Default::default()
        }),
        initial_delay_seconds: Some(1),
        failure_threshold: Some(2),
        ..Default::default()
    }));

    // Readiness: the port opens after 6 s.
    let ready = format!("ready-{pid}");
    let mut spec_ready = pod(
        &ready,
        &node,
        &image,
        &[
            "sh",
            "-c",
            "sleep 6; mkdir -p /www && httpd -f -p 9090 -h /www",
        ],
        2,
    );
    spec_ready.spec.as_mut().expect("spec").containers[0].readiness_probe = Some(fast(Probe {
        tcp_socket: Some(TCPSocketAction {
            port: IntOrString::Int(9090),
            host: None,
        }),
        ..Default::default()
    }));

    pods.create(&spec).await.expect("create liveness pod");
    pods.create(&spec_ready)
        .await
        .expect("create readiness pod");

    // The readiness pod runs but is not Ready while nothing listens.
    let running = eventually(
        "the readiness pod Running",
        Duration::from_secs(60),
        || async {
            let pod = pods.get_opt(&ready).await.ok().flatten()?;
            (phase(&pod).as_deref() == Some("Running")).then_some(pod)
        },
    )
    .await;
    assert_eq!(condition(&running, "Ready").as_deref(), Some("False"));
    assert_eq!(
        condition(&running, "ContainersReady").as_deref(),
        Some("False")
    );
    assert_eq!(container_ready(&running), Some(false));
    eventually(
        "the readiness pod Ready",
        Duration::from_secs(30),
        || async {
            let pod = pods.get_opt(&ready).await.ok().flatten()?;
            (condition(&pod, "Ready").as_deref() == Some("True")
                && container_ready(&pod) == Some(true))
            .then_some(())
        },
    )
    .await;

    // The liveness pod is restarted once its probe gets 404 twice.
    let restarted = eventually(
        "the liveness pod restarted",
        Duration::from_secs(60),
        || async {
            let pod = pods.get_opt(&live).await.ok().flatten()?;
            (restart_count(&pod) >= 1).then_some(pod)
        },
    )
    .await;
    let status = &restarted
        .status
        .as_ref()
        .expect("status")
        .container_statuses
        .as_ref()
        .expect("statuses")[0];
    assert!(
        status
            .last_state
            .as_ref()
            .and_then(|s| s.terminated.as_ref())
            .is_some(),
        "{status:?}"
    );
    let reasons = eventually(
        "Unhealthy and Killing events",
        Duration::from_secs(20),
        || async {
            let list = events.list(&ListParams::default()).await.ok()?;
            let mine: Vec<Event> = list
                .items
                .into_iter()
                .filter(|e| e.involved_object.name.as_deref() == Some(live.as_str()))
                .collect();
            let has = |reason: &str| mine.iter().any(|e| e.reason.as_deref() == Some(reason));
            (has("Unhealthy") && has("Killing")).then_some(mine)
        },
    )
    .await;
    let unhealthy = reasons
        .iter()
        .find(|e| e.reason.as_deref() == Some("Unhealthy"))
        .expect("Unhealthy");
    assert_eq!(
        unhealthy.message.as_deref(),
        Some("Liveness probe failed: HTTP probe failed with statuscode: 404")
    );
    assert_eq!(unhealthy.type_.as_deref(), Some("Warning"));
    assert_eq!(
        unhealthy.involved_object.field_path.as_deref(),
        Some("spec.containers{main}")
    );
    let source = unhealthy.source.as_ref().expect("source");
    assert_eq!(source.component.as_deref(), Some("rkube-nodeagent"));
    assert_eq!(source.host.as_deref(), Some(node.as_str()));
    let killing = reasons
        .iter()
        .find(|e| e.reason.as_deref() == Some("Killing"))
        .expect("Killing");
    assert_eq!(
        killing.message.as_deref(),
        Some("Container main failed liveness probe, will be restarted")
    );
    for reason in ["Pulled", "Created", "Started"] {
        assert!(
            reasons.iter().any(|e| e.reason.as_deref() == Some(reason)),
            "{reason} in {reasons:?}"
        );
    }

    for name in [&live, &ready] {
        pods.delete(name, &DeleteParams::default())
            .await
            .expect("delete pod");
    }
    for name in [&live, &ready] {
        eventually("the pod removed", Duration::from_secs(30), || async {
            matches!(pods.get_opt(name).await, Ok(None)).then_some(())
        })
        .await;
    }
    agent.stop().await;
}
