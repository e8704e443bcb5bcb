//! `kubectl logs` and `kubectl exec` end to end, as root: the real `/usr/bin/kubectl`
//! against a test apiserver that proxies to a real node agent running busybox
//! containers from a real registry.
//!
//! This binary has its own `main` (harness = false) because it doubles as the agent's
//! helper: the runtime re-executes it as `<this binary> shim …`.

use std::process::Output;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use rkube_client::Api;
use rkube_tests::node::{phase, pod, root_test_main, Agent, Cluster};
use rkube_tests::terminal::run_in_terminal;
use rkube_tests::{eventually, TestApiserver};

fn main() -> std::process::ExitCode {
    root_test_main(
        "kubectl_streams_agent",
        &[("kubectl_logs_and_exec_reach_real_containers", || {
            Box::pin(kubectl_logs_and_exec_reach_real_containers())
        })],
    )
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

async fn kubectl(api: &TestApiserver, args: &[&str]) -> Output {
    tokio::task::block_in_place(|| api.kubectl(args))
}

async fn phase_is(pods: &Api<Pod>, name: &str, want: &str) {
    eventually(
        &format!("{name} {want}"),
        Duration::from_secs(60),
        || async {
            let pod = pods.get_opt(name).await.ok().flatten()?;
            (phase(&pod).as_deref() == Some(want)).then_some(())
        },
    )
    .await
}

async fn kubectl_logs_and_exec_reach_real_containers() {
    let Cluster {
        etcd: _etcd,
        api,
        registry,
        image,
        admin: client,
    } = Cluster::start().await;
    let pid = std::process::id();
    let node = format!("ks-agent-{pid}");
    let agent = Agent::start(&api, &node, &registry.addr).expect("agent");
    let pods: Api<Pod> = Api::namespaced(client, "default");

    let server = format!("server-{pid}");
    pods.create(&pod(
        &server,
        &node,
        &image,
        &["sh", "-c", "echo hello; echo world >&2; exec sleep 3600"],
        1,
    ))
    .await
    .expect("create pod");
    phase_is(&pods, &server, "Running").await;

    // Logs: both streams, then the tail.
    let logs = eventually("the pod's logs", Duration::from_secs(20), || async {
        let out = kubectl(&api, &["logs", &server]).await;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        (out.status.success() && stdout.contains("world")).then_some(stdout)
    })
    .await;
    assert_eq!(logs, "hello\nworld\n");
    let out = kubectl(&api, &["logs", &server, "--tail=1"]).await;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "world\n",
        "{}",
        text(&out)
    );

    // exec: output streams and the exit code.
    let out = kubectl(
        &api,
        &[
            "exec",
            &server,
            "--",
            "sh",
            "-c",
            "echo out; echo err >&2; exit 3",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("err\n"), "{stderr}");
    assert!(
        stderr.contains("command terminated with exit code 3"),
        "{stderr}"
    );

    // exec -i: stdin reaches the command and its end closes it.
    let out = tokio::task::block_in_place(|| {
        api.kubectl_stdin(&["exec", "-i", &server, "--", "cat"], "piped in\n")
    });
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "piped in\n");

    // exec -it: a real terminal of the size kubectl reports.
    let out = tokio::task::block_in_place(|| {
        run_in_terminal(
            &api.kubectl_command(&["exec", "-it", &server, "--", "sh"]),
            "#",
            &["stty size; tty", "exit"],
            Duration::from_secs(30),
        )
    });
    let screen = text(&out);
    assert!(out.status.success(), "{screen}");
    assert!(screen.contains("30 100"), "{screen}");
    assert!(screen.contains("/dev/pts/"), "{screen}");

    // logs -f ends when the container exits.
    let short = format!("short-{pid}");
    pods.create(&pod(
        &short,
        &node,
        &image,
        &["sh", "-c", "echo first; sleep 3; echo second"],
        1,
    ))
    .await
    .expect("create pod");
    phase_is(&pods, &short, "Running").await;
    let out = kubectl(&api, &["logs", "-f", &short]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "first\nsecond\n");
    phase_is(&pods, &short, "Succeeded").await;

    for name in [&server, &short] {
        let _ = kubectl(&api, &["delete", "pod", name, "--wait=false"]).await;
    }
    agent.stop().await;
}
