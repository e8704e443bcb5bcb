//! The node agent's own gRPC service (`rkube.node.v1.NodeAgent`), as root, against a
//! real etcd, apiserver, registry and busybox containers, through a TLS client that
//! presents the apiserver's kubelet client certificate: logs with tail, timestamps,
//! follow (ending when the container exits) and previous; a chatty container's log
//! rotated by size and still read in order; exec with both output streams and the exit
//! code, with stdin, with a TTY and a resize; `exec_sync` with its timeout; the working
//! set of a memory-hungry container; and callers without the right certificate refused.
//!
//! This binary has its own `main` (harness = false) because it doubles as the agent's
//! helper: the runtime re-executes it as `<this binary> shim …`.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Pod};
use rkube_client::Api;
use rkube_nodeagent::runtime::{
    ContainerId, ContainerRuntime, Error as RuntimeError, LocalRuntime, LocalRuntimeConfig,
    LogRotation,
};
use rkube_proto::node::v1::exec_input::Input;
use rkube_proto::node::v1::exec_output::Output;
use rkube_proto::node::v1::node_agent_client::NodeAgentClient;
use rkube_proto::node::v1::{
    ContainerRef, ExecInput, ExecStart, LogsRequest, StatsRequest, TerminalSize,
};
use rkube_tests::eventually;
use rkube_tests::node::{phase, pod, root_test_main, Agent, Cluster};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

fn main() -> std::process::ExitCode {
    root_test_main(
        "nodeagent_streams",
        &[("serves_logs_exec_and_stats_over_grpc", || {
            Box::pin(serves_logs_exec_and_stats_over_grpc())
        })],
    )
}

/// What an exec session sent back.
#[derive(Debug, Default)]
struct ExecResult {
    stdout: String,
    stderr: String,
    exit_code: i32,
    error: String,
}

struct Service {
    client: NodeAgentClient<Channel>,
    namespace: String,
}

impl Service {
    fn target(&self, pod: &str) -> Option<ContainerRef> {
        Some(ContainerRef {
            namespace: self.namespace.clone(),
            pod: pod.to_string(),
            pod_uid: String::new(),
            container: "main".into(),
        })
    }

    async fn logs(&self, request: LogsRequest) -> Result<String, tonic::Status> {
        let mut stream = self.client.clone().logs(request).await?.into_inner();
        let mut text = Vec::new();
        while let Some(chunk) = stream.message().await? {
            text.extend_from_slice(&chunk.data);
        }
        Ok(String::from_utf8_lossy(&text).into_owned())
    }

    /// Runs an exec session that sends `start`, then `inputs` one after another.
    async fn exec(&self, start: ExecStart, inputs: Vec<Input>) -> ExecResult {
        let (tx, rx) = futures::channel::mpsc::unbounded();
        tx.unbounded_send(ExecInput {
            input: Some(Input::Start(start)),
        })
        .expect("queue start");
        let mut outputs = self
            .client
            .clone()
            .exec(rx)
            .await
            .expect("exec call")
            .into_inner();
        let first_output = std::sync::Arc::new(tokio::sync::Notify::new());
        let started = first_output.clone();
        let feeder = tokio::spawn(async move {
            // Input goes once the command has shown that it runs (its first output), or
            // after a while for commands that say nothing before they read.
            let _ = tokio::time::timeout(Duration::from_secs(2), started.notified()).await;
            for input in inputs {
                let _ = tx.unbounded_send(ExecInput { input: Some(input) });
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            // Keep the request stream open until the session ends.
            tokio::time::sleep(Duration::from_secs(30)).await;
            drop(tx);
        });
        let mut result = ExecResult::default();
        let mut exited = false;
        let session = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(message) = outputs.message().await.expect("exec output") {
                assert!(!exited, "nothing follows the exit");
                first_output.notify_one();
                match message.output {
                    Some(Output::Stdout(bytes)) => {
                        result.stdout.push_str(&String::from_utf8_lossy(&bytes))
                    }
                    Some(Output::Stderr(bytes)) => {
                        result.stderr.push_str(&String::from_utf8_lossy(&bytes))
                    }
                    Some(Output::Exit(exit)) => {
                        result.exit_code = exit.exit_code;
                        result.error = exit.error;
                        exited = true;
                    }
                    None => {}
                }
            }
        })
        .await;
        feeder.abort();
        session.expect("the exec session ends within 30s");
        assert!(exited, "the session ends with an exit: {result:?}");
        result
    }
}

fn start(target: Option<ContainerRef>, command: &[&str]) -> ExecStart {
    ExecStart {
        container: target,
        command: command.iter().map(|s| s.to_string()).collect(),
        stdin: false,
        stdout: true,
        stderr: true,
        tty: false,
        size: None,
    }
}

async fn channel(
    port: u16,
    server_ca: &str,
    identity: Option<Identity>,
) -> anyhow::Result<NodeAgentClient<Channel>> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(server_ca))
        .domain_name("127.0.0.1");
    if let Some(identity) = identity {
        tls = tls.identity(identity);
    }
    let channel = Channel::from_shared(format!("https://127.0.0.1:{port}"))?
        .tls_config(tls)?
        .connect()
        .await?;
    Ok(NodeAgentClient::new(channel))
}

async fn running(pods: &Api<Pod>, name: &str) -> Pod {
    eventually(
        &format!("{name} Running"),
        Duration::from_secs(60),
        || async {
            let pod = pods.get_opt(name).await.ok().flatten()?;
            (phase(&pod).as_deref() == Some("Running")).then_some(pod)
        },
    )
    .await
}

async fn serves_logs_exec_and_stats_over_grpc() {
    let Cluster {
        etcd: _etcd,
        api,
        registry,
        image,
        admin,
    } = Cluster::start().await;
    let pid = std::process::id();
    let node = format!("na-streams-{pid}");
    let rotation = LogRotation {
        max_size: 4096,
        max_files: 3,
    };
    let agent = Agent::start_configured(
        tempfile::tempdir().expect("state dir"),
        &api,
        &node,
        &registry.addr,
        |config| config.log_rotation = rotation,
    )
    .expect("agent");
    let pods: Api<Pod> = Api::namespaced(admin.clone(), "default");
    let nodes: Api<Node> = Api::all(admin.clone());

    // The Node reports the service's port; the service's certificate is self-signed.
    let port = eventually("the kubelet port", Duration::from_secs(30), || async {
        let node = nodes.get_opt(&node).await.ok().flatten()?;
        let port = node.status?.daemon_endpoints?.kubelet_endpoint?.port;
        (port > 0).then_some(port)
    })
    .await;
    let port = u16::try_from(port).expect("a port");
    let server_ca = std::fs::read_to_string(agent.root.path().join("pki/nodeagent.crt"))
        .expect("the serving certificate");
    let pki = api.pki();
    let apiserver_identity = Identity::from_pem(
        std::fs::read(pki.kubelet_client_cert_path()).expect("kubelet client cert"),
        std::fs::read(pki.kubelet_client_key_path()).expect("kubelet client key"),
    );
    let service = Service {
        client: channel(port, &server_ca, Some(apiserver_identity))
            .await
            .expect("connect to the agent"),
        namespace: "default".into(),
    };

    // Callers without the apiserver's certificate are refused.
    let anonymous = channel(port, &server_ca, None).await.expect("connect");
    let refused = anonymous
        .clone()
        .stats(StatsRequest::default())
        .await
        .expect_err("no client certificate");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    let admin_identity = Identity::from_pem(
        std::fs::read(pki.admin_cert_path()).expect("admin cert"),
        std::fs::read(pki.admin_key_path()).expect("admin key"),
    );
    let admin_client = channel(port, &server_ca, Some(admin_identity))
        .await
        .expect("connect");
    let refused = admin_client
        .clone()
        .stats(StatsRequest::default())
        .await
        .expect_err("the admin is not the apiserver");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");

    // Logs: tail, timestamps, follow until the container exits.
    let talker = format!("talker-{pid}");
    pods.create(&pod(
        &talker,
        &node,
        &image,
        &[
            "sh",
            "-c",
            "echo one; sleep 1; echo two >&2; sleep 1; echo three; sleep 2; echo four",
        ],
        5,
    ))
    .await
    .expect("create pod");
    running(&pods, &talker).await;
    let request = |tail: Option<i64>, follow: bool, timestamps: bool| LogsRequest {
        container: service.target(&talker),
        follow,
        previous: false,
        timestamps,
        tail_lines: tail,
        since_seconds: None,
        since_time: None,
        limit_bytes: None,
    };
    let all = eventually("three lines logged", Duration::from_secs(10), || async {
        let text = service.logs(request(None, false, false)).await.ok()?;
        text.contains("three").then_some(text)
    })
    .await;
    assert_eq!(all, "one\ntwo\nthree\n");
    let tail = service
        .logs(request(Some(2), false, false))
        .await
        .expect("tail");
    assert_eq!(tail, "two\nthree\n");
    let stamped = service
        .logs(request(Some(1), false, true))
        .await
        .expect("timestamps");
    let (stamp, text) = stamped.split_once(' ').expect("a timestamp prefix");
    assert_eq!(text, "three\n");
    assert!(
        k8s_openapi::chrono::DateTime::parse_from_rfc3339(stamp).is_ok(),
        "{stamped}"
    );
    let limited = LogsRequest {
        limit_bytes: Some(6),
        ..request(None, false, false)
    };
    assert_eq!(service.logs(limited).await.expect("limit"), "one\ntw");
    let followed_at = Instant::now();
    let followed = tokio::time::timeout(
        Duration::from_secs(20),
        service.logs(request(None, true, false)),
    )
    .await
    .expect("follow ends when the container exits")
    .expect("follow");
    assert_eq!(followed, "one\ntwo\nthree\nfour\n");
    assert!(
        followed_at.elapsed() >= Duration::from_millis(500),
        "it followed"
    );

    let missing = service
        .logs(LogsRequest {
            container: Some(ContainerRef {
                container: "nope".into(),
                ..service.target(&talker).expect("target")
            }),
            ..Default::default()
        })
        .await
        .expect_err("no such container");
    assert_eq!(missing.code(), tonic::Code::NotFound);
    assert!(
        missing.message().contains("container \"nope\""),
        "{missing:?}"
    );

    // Exec: both streams and the exit code, stdin, a TTY and its resize.
    let sleeper = format!("sleeper-{pid}");
    pods.create(&pod(&sleeper, &node, &image, &["sleep", "1000"], 1))
        .await
        .expect("create pod");
    running(&pods, &sleeper).await;
    let target = service.target(&sleeper);
    let result = service
        .exec(
            start(
                target.clone(),
                &["sh", "-c", "echo out; echo err >&2; exit 3"],
            ),
            vec![],
        )
        .await;
    assert_eq!(result.stdout, "out\n", "{result:?}");
    assert_eq!(result.stderr, "err\n", "{result:?}");
    assert_eq!(result.exit_code, 3);
    assert!(result.error.is_empty(), "{result:?}");

    // Output the client did not ask for is dropped without stopping the command.
    let quiet = ExecStart {
        stdout: false,
        ..start(
            target.clone(),
            &["sh", "-c", "seq 1 50000; echo finished >&2"],
        )
    };
    let result = service.exec(quiet, vec![]).await;
    assert_eq!(result.stdout, "", "{result:?}");
    assert_eq!(result.stderr, "finished\n", "{result:?}");
    assert_eq!(result.exit_code, 0);

    let cat = ExecStart {
        stdin: true,
        ..start(target.clone(), &["cat"])
    };
    let result = service
        .exec(
            cat,
            vec![
                Input::Stdin(b"hello\n".to_vec()),
                Input::Stdin(b"world\n".to_vec()),
                Input::CloseStdin(true),
            ],
        )
        .await;
    assert_eq!(result.stdout, "hello\nworld\n", "{result:?}");
    assert_eq!(result.exit_code, 0);

    let tty = ExecStart {
        tty: true,
        stderr: false,
        size: Some(TerminalSize {
            width: 100,
            height: 30,
        }),
        ..start(target.clone(), &["sh", "-c", "tty; stty size"])
    };
    let result = service.exec(tty, vec![]).await;
    assert!(result.stdout.contains("/dev/pts/"), "{result:?}");
    assert!(result.stdout.contains("30 100"), "{result:?}");
    assert_eq!(result.exit_code, 0);
    let resized = ExecStart {
        tty: true,
        stdin: true,
        stderr: false,
        size: Some(TerminalSize {
            width: 80,
            height: 24,
        }),
        ..start(
            target.clone(),
            &["sh", "-c", "stty size; read line; stty size"],
        )
    };
    let result = service
        .exec(
            resized,
            vec![
                Input::Resize(TerminalSize {
                    width: 132,
                    height: 43,
                }),
                Input::Stdin(b"go\r".to_vec()),
            ],
        )
        .await;
    assert!(result.stdout.contains("24 80"), "{result:?}");
    assert!(result.stdout.contains("43 132"), "{result:?}");

    // A session the client abandons does not leave its command running.
    let (abandon, requests) = futures::channel::mpsc::unbounded();
    abandon
        .unbounded_send(ExecInput {
            input: Some(Input::Start(start(target.clone(), &["sleep", "777"]))),
        })
        .expect("queue start");
    let outputs = service
        .client
        .clone()
        .exec(requests)
        .await
        .expect("exec")
        .into_inner();
    let ps = || async {
        service
            .exec(start(target.clone(), &["ps"]), vec![])
            .await
            .stdout
    };
    eventually("sleep 777 runs", Duration::from_secs(10), || async {
        ps().await.contains("sleep 777").then_some(())
    })
    .await;
    drop(outputs);
    drop(abandon);
    eventually("sleep 777 killed", Duration::from_secs(10), || async {
        (!ps().await.contains("sleep 777")).then_some(())
    })
    .await;

    let nothing = service
        .exec(start(target.clone(), &["/no/such/binary"]), vec![])
        .await;
    assert!(!nothing.error.is_empty(), "{nothing:?}");
    let gone = service
        .exec(start(service.target("no-such-pod"), &["true"]), vec![])
        .await;
    assert!(gone.error.contains("not found"), "{gone:?}");

    // exec_sync, as probes use it: output, exit code, and the timeout.
    let runtime = LocalRuntime::new(LocalRuntimeConfig {
        root_dir: agent.root.path().to_path_buf(),
        insecure_registries: vec![registry.addr.clone()],
        shim_binary: std::env::current_exe().expect("this binary"),
        favor_dynamic_cgroups: true,
        state_on_tmpfs: false,
        ephemeral_storage_tmpfs: None,
    })
    .expect("runtime");
    let sleeper_id = ContainerId(
        agent
            .containers()
            .into_iter()
            .find(|id| id.starts_with("sleeper"))
            .expect("the sleeper's container"),
    );
    let output = runtime
        .exec_sync(
            &sleeper_id,
            &["sh".into(), "-c".into(), "echo hi; exit 2".into()],
            Duration::from_secs(10),
        )
        .await
        .expect("exec_sync");
    assert_eq!(output.exit_code, 2);
    assert_eq!(output.output, b"hi\n");
    let mut fastest = Duration::MAX;
    for _ in 0..3 {
        let began = Instant::now();
        let output = runtime
            .exec_sync(&sleeper_id, &["true".into()], Duration::from_secs(10))
            .await
            .expect("exec true");
        assert_eq!(output.exit_code, 0);
        fastest = fastest.min(began.elapsed());
    }
    println!("BENCH exec_sync_true {} ms", fastest.as_millis());
    let began = Instant::now();
    let timed_out = runtime
        .exec_sync(
            &sleeper_id,
            &["sleep".into(), "30".into()],
            Duration::from_secs(1),
        )
        .await
        .expect_err("timeout");
    assert!(
        matches!(timed_out, RuntimeError::Timeout { .. }),
        "{timed_out:?}"
    );
    assert!(began.elapsed() < Duration::from_secs(10));
    // The main process is undisturbed.
    let sleeper_pod = pods.get(&sleeper).await.expect("get");
    assert_eq!(phase(&sleeper_pod).as_deref(), Some("Running"));
    let statuses = sleeper_pod
        .status
        .and_then(|s| s.container_statuses)
        .unwrap_or_default();
    assert_eq!(statuses.first().map(|s| s.restart_count), Some(0));

    // Rotation: a chatty container's newest lines are still there, in order.
    let chatty = format!("chatty-{pid}");
    pods.create(&pod(
        &chatty,
        &node,
        &image,
        &[
            "sh",
            "-c",
            "i=0; while [ $i -lt 300 ]; do echo line-$i-padpadpadpadpadpadpadpadpadpadpad; \
             i=$((i+1)); done; echo done; sleep 1000",
        ],
        1,
    ))
    .await
    .expect("create pod");
    running(&pods, &chatty).await;
    let chatty_logs = eventually("the chatty pod done", Duration::from_secs(20), || async {
        let text = service
            .logs(LogsRequest {
                container: service.target(&chatty),
                ..Default::default()
            })
            .await
            .ok()?;
        text.ends_with("done\n").then_some(text)
    })
    .await;
    let lines: Vec<&str> = chatty_logs.lines().collect();
    assert!(
        lines.len() < 250,
        "old lines were rotated away: {}",
        lines.len()
    );
    let numbers: Vec<u32> = lines[..lines.len() - 1]
        .iter()
        .map(|l| {
            l.split('-')
                .nth(1)
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("a numbered line: {l:?}"))
        })
        .collect();
    assert_eq!(numbers.last(), Some(&299));
    assert!(
        numbers.windows(2).all(|w| w[1] == w[0] + 1),
        "consecutive across files"
    );
    let tail = service
        .logs(LogsRequest {
            container: service.target(&chatty),
            tail_lines: Some(2),
            ..Default::default()
        })
        .await
        .expect("tail");
    assert!(
        tail.starts_with("line-299-") && tail.ends_with("\ndone\n"),
        "{tail}"
    );
    let log_dir = std::fs::read_dir(agent.root.path().join("logs"))
        .expect("logs dir")
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().contains("chatty"))
        .expect("the chatty pod's logs")
        .join("main");
    let mut files: Vec<String> = std::fs::read_dir(&log_dir)
        .expect("log files")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files.len(), 3, "max 3 files: {files:?}");
    for file in &files {
        let size = std::fs::metadata(log_dir.join(file)).expect("stat").len();
        assert!(size <= 4096, "{file} is {size} bytes");
    }

    // Stats: a container holding ~24 MiB in memory.
    let hungry = format!("hungry-{pid}");
    pods.create(&pod(
        &hungry,
        &node,
        &image,
        &[
            "sh",
            "-c",
            // The trailing `true` keeps sh (and the string it holds) from exec'ing sleep.
            "x=$(head -c 25000000 /dev/zero | tr '\\0' a); echo ready; sleep 1000; true",
        ],
        1,
    ))
    .await
    .expect("create pod");
    running(&pods, &hungry).await;
    eventually("the hungry pod ready", Duration::from_secs(30), || async {
        let text = service
            .logs(LogsRequest {
                container: service.target(&hungry),
                ..Default::default()
            })
            .await
            .ok()?;
        text.contains("ready").then_some(())
    })
    .await;
    let stats = service
        .client
        .clone()
        .stats(StatsRequest {
            namespace: "default".into(),
            pod: hungry.clone(),
        })
        .await
        .expect("stats")
        .into_inner();
    assert!(
        k8s_openapi::chrono::DateTime::parse_from_rfc3339(&stats.timestamp).is_ok(),
        "{stats:?}"
    );
    assert_eq!(stats.pods.len(), 1, "{stats:?}");
    let pod_stats = &stats.pods[0];
    assert_eq!(pod_stats.name, hungry);
    assert_eq!(pod_stats.containers.len(), 1, "{stats:?}");
    let container = &pod_stats.containers[0];
    assert_eq!(container.name, "main");
    assert!(
        container.memory_working_set_bytes >= 20_000_000,
        "{container:?}"
    );
    assert!(container.memory_usage_bytes >= container.memory_working_set_bytes);
    assert!(container.cpu_usage_core_nanoseconds > 0, "{container:?}");
    assert_eq!(
        pod_stats.memory_working_set_bytes,
        container.memory_working_set_bytes
    );
    let every = service
        .client
        .clone()
        .stats(StatsRequest::default())
        .await
        .expect("stats of every pod")
        .into_inner();
    let names: Vec<&str> = every.pods.iter().map(|p| p.name.as_str()).collect();
    for name in [&sleeper, &chatty, &hungry] {
        assert!(names.contains(&name.as_str()), "{names:?}");
    }

    // Previous: a container that restarts keeps its last instance's log.
    let restarter = format!("restarter-{pid}");
    let mut spec = pod(
        &restarter,
        &node,
        &image,
        &["sh", "-c", "echo started-$(date +%s%N); sleep 1; exit 1"],
        1,
    );
    if let Some(spec) = spec.spec.as_mut() {
        spec.restart_policy = Some("OnFailure".into());
    }
    pods.create(&spec).await.expect("create pod");
    running(&pods, &restarter).await;
    let previous = |pod: &str| LogsRequest {
        container: service.target(pod),
        previous: true,
        ..Default::default()
    };
    let none = service
        .logs(previous(&restarter))
        .await
        .expect_err("no previous instance yet");
    assert_eq!(none.code(), tonic::Code::NotFound);
    assert!(
        none.message().contains(&format!(
            "previous terminated container \"main\" in pod \"{restarter}\""
        )),
        "{none:?}"
    );
    let (before, now) = eventually("a restart", Duration::from_secs(40), || async {
        let before = service.logs(previous(&restarter)).await.ok()?;
        let now = service
            .logs(LogsRequest {
                container: service.target(&restarter),
                ..Default::default()
            })
            .await
            .ok()?;
        (before.starts_with("started-") && now.starts_with("started-")).then_some((before, now))
    })
    .await;
    assert_ne!(before, now, "two different instances");

    for name in [&talker, &sleeper, &chatty, &hungry, &restarter] {
        let _ = pods.delete(name, &Default::default()).await;
    }
    agent.stop().await;
}
