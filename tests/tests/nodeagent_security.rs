//! Container security defaults of the node agent's built-in runtime, as root, against a
//! real etcd, apiserver and registry (the busybox image of `rkube_tests::node`): each
//! pod prints what its container may do — its capability sets, seccomp mode and
//! no_new_privs from `/proc/self/status`, which of the masked paths are masked, whether it
//! can write `/proc/sys`, change the loopback MTU, set the hostname or create a user
//! namespace — and the test compares that with what its `securityContext` asks for.
//!
//! A default container holds containerd's default capability set (`a80425fb`), runs
//! under seccomp filter mode 2 and is refused `unshare(CLONE_NEWUSER)` — a call that
//! needs no capability, so the `EPERM` comes from the RuntimeDefault profile; the same
//! container with `seccompProfile: Unconfined` runs in mode 0 and creates the user
//! namespace. `capabilities.add: [NET_ADMIN]` allows `ip link set lo mtu 1400`, `drop:
//! [ALL]` leaves no capability, `allowPrivilegeEscalation: false` sets no_new_privs, a
//! privileged container holds every capability the kernel knows without seccomp or
//! masked paths, and a `Localhost` profile is refused with CreateContainerConfigError.
//!
//! Its own `main` (harness = false): the binary doubles as the agent's `shim` helper.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Capabilities, Pod, SeccompProfile, SecurityContext};
use rkube_client::{Api, DeleteParams};
use rkube_tests::eventually;
use rkube_tests::node::{entries, log_files, phase, pod, root_test_main, Agent, Cluster};

fn main() -> std::process::ExitCode {
    root_test_main(
        "nodeagent_security",
        &[(
            "containers_get_default_capabilities_masks_and_seccomp",
            || Box::pin(containers_get_default_capabilities_masks_and_seccomp()),
        )],
    )
}

/// What each container reports, one `key=value` per line.
const PROBE: &str = r#"
grep -E '^(CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs|Seccomp):' /proc/self/status | tr -d ' \t' | tr ':' '='
printf masked=; for p in /proc/acpi /proc/kcore /proc/keys /proc/latency_stats /proc/timer_list /proc/timer_stats /proc/sched_debug /proc/scsi /sys/firmware /sys/devices/virtual/powercap; do grep -q " $p " /proc/self/mountinfo && printf '%s,' $p; done; echo
if echo 0 > /proc/sys/kernel/domainname 2>/dev/null; then echo procsys=writable; else echo procsys=refused; fi
if ip link set lo mtu 1400 2>/dev/null; then echo mtu=ok; else echo mtu=refused; fi
if hostname probe-host 2>/dev/null; then echo hostname=ok; else echo hostname=refused; fi
unshare -U true 2>/tmp/unshare.err; echo unshare=$?
echo unshare_err=$(cat /tmp/unshare.err)
echo done=1
"#;

/// The paths the runtime masks, those of them this host has (a kernel may lack, say,
/// `/proc/kcore`), as the probe prints them.
fn masked_here() -> String {
    rkube_nodeagent::runtime::container::MASKED_PATHS
        .iter()
        .filter(|p| std::path::Path::new(p).exists())
        .map(|p| format!("{p},"))
        .collect()
}

/// containerd's (and Docker's) default capability set as a `/proc` mask.
const DEFAULT_CAPS: &str = "00000000a80425fb";
/// The default set plus `CAP_NET_ADMIN` (bit 12).
const DEFAULT_PLUS_NET_ADMIN: &str = "00000000a80435fb";
const NO_CAPS: &str = "0000000000000000";

fn profile(kind: &str) -> Option<SeccompProfile> {
    Some(SeccompProfile {
        type_: kind.into(),
        localhost_profile: (kind == "Localhost").then(|| "profiles/none.json".into()),
    })
}

fn probe_pod(name: &str, node: &str, image: &str, security: Option<SecurityContext>) -> Pod {
    let mut pod = pod(name, node, image, &["sh", "-c", PROBE], 2);
    if let Some(spec) = pod.spec.as_mut() {
        spec.containers[0].security_context = security;
    }
    pod
}

/// The `key=value` lines a finished pod's container printed.
fn report(agent: &Agent, name: &str) -> BTreeMap<String, String> {
    let logs = log_files(&agent.root.path().join("logs"));
    let prefix: String = name.chars().take(20).collect();
    let mut found = BTreeMap::new();
    for path in logs.iter().filter(|p| {
        p.components().any(|c| {
            c.as_os_str()
                .to_string_lossy()
                .starts_with(&format!("{prefix}-"))
        })
    }) {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        for line in text.lines() {
            let Some((_, out)) = line.split_once(" stdout F ") else {
                continue;
            };
            if let Some((key, value)) = out.split_once('=') {
                found.insert(key.to_string(), value.to_string());
            }
        }
    }
    assert_eq!(
        found.get("done").map(String::as_str),
        Some("1"),
        "{name} printed its report: {found:?} from {logs:?}"
    );
    found
}

/// What the containers' helpers logged (their errors), for failure messages.
fn helper_logs(agent: &Agent) -> String {
    let containers = agent.root.path().join("containers");
    entries(&containers)
        .into_iter()
        .map(|id| {
            let text =
                std::fs::read_to_string(containers.join(&id).join("shim.log")).unwrap_or_default();
            format!("{id}: {text}")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// What a privileged container holds: every capability this process (like the agent
/// it runs in-process) may hand on, its bounding set.
fn all_caps_mask() -> String {
    let status = std::fs::read_to_string("/proc/self/status").expect("own status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .expect("CapBnd")
        .trim()
        .to_string()
}

async fn containers_get_default_capabilities_masks_and_seccomp() {
    let Cluster {
        etcd: _etcd,
        api,
        registry,
        image,
        admin,
    } = Cluster::start().await;
    let pid = std::process::id();
    let node = format!("na-security-{pid}");
    let agent = Agent::start(&api, &node, &registry.addr).expect("agent");
    let pods: Api<Pod> = Api::namespaced(admin.clone(), "default");

    let caps = |add: &[&str], drop: &[&str]| {
        Some(Capabilities {
            add: Some(add.iter().map(|s| s.to_string()).collect()),
            drop: Some(drop.iter().map(|s| s.to_string()).collect()),
        })
    };
    let cases: Vec<(String, Option<SecurityContext>)> = vec![
        (format!("sdef-{pid}"), None),
        (
            format!("sunc-{pid}"),
            Some(SecurityContext {
                seccomp_profile: profile("Unconfined"),
                ..Default::default()
            }),
        ),
        (
            format!("snet-{pid}"),
            Some(SecurityContext {
                capabilities: caps(&["NET_ADMIN"], &[]),
                allow_privilege_escalation: Some(false),
                ..Default::default()
            }),
        ),
        (
            format!("sdrop-{pid}"),
            Some(SecurityContext {
                capabilities: caps(&[], &["ALL"]),
                ..Default::default()
            }),
        ),
        (
            format!("spriv-{pid}"),
            Some(SecurityContext {
                privileged: Some(true),
                ..Default::default()
            }),
        ),
    ];
    for (name, security) in &cases {
        pods.create(&probe_pod(name, &node, &image, security.clone()))
            .await
            .expect("create pod");
    }
    let local = format!("sloc-{pid}");
    pods.create(&probe_pod(
        &local,
        &node,
        &image,
        Some(SecurityContext {
            seccomp_profile: profile("Localhost"),
            ..Default::default()
        }),
    ))
    .await
    .expect("create pod");

    for (name, _) in &cases {
        let deadline = std::time::Instant::now() + Duration::from_secs(90);
        let finished = loop {
            let pod = pods.get_opt(name).await.ok().flatten();
            if let Some(pod) =
                pod.filter(|p| matches!(phase(p).as_deref(), Some("Succeeded") | Some("Failed")))
            {
                break pod;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{name} did not finish; helper logs: {}",
                helper_logs(&agent)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(
            phase(&finished).as_deref(),
            Some("Succeeded"),
            "{name}: {:?}",
            finished.status
        );
    }

    let get =
        |report: &BTreeMap<String, String>, key: &str| report.get(key).cloned().unwrap_or_default();

    // Default: containerd's capabilities, seccomp filter, masked and read-only /proc.
    let default = report(&agent, &cases[0].0);
    for set in ["CapPrm", "CapEff", "CapBnd"] {
        assert_eq!(get(&default, set), DEFAULT_CAPS, "{set}: {default:?}");
    }
    assert_eq!(get(&default, "CapInh"), NO_CAPS, "{default:?}");
    assert_eq!(get(&default, "CapAmb"), NO_CAPS, "{default:?}");
    assert_eq!(get(&default, "Seccomp"), "2", "{default:?}");
    assert_eq!(get(&default, "NoNewPrivs"), "0", "{default:?}");
    let masked = masked_here();
    assert!(
        masked.contains("/proc/keys,"),
        "the host has /proc/keys: {masked}"
    );
    assert_eq!(get(&default, "masked"), masked, "{default:?}");
    assert_eq!(get(&default, "procsys"), "refused", "{default:?}");
    assert_eq!(get(&default, "mtu"), "refused", "{default:?}");
    assert_eq!(get(&default, "hostname"), "refused", "{default:?}");
    // unshare(CLONE_NEWUSER) needs no capability: only the profile refuses it.
    assert_ne!(get(&default, "unshare"), "0", "{default:?}");
    assert!(
        get(&default, "unshare_err").contains("Operation not permitted"),
        "{default:?}"
    );

    // Unconfined: same capabilities, no filter, and the user namespace is created.
    let unconfined = report(&agent, &cases[1].0);
    assert_eq!(get(&unconfined, "CapEff"), DEFAULT_CAPS, "{unconfined:?}");
    assert_eq!(get(&unconfined, "Seccomp"), "0", "{unconfined:?}");
    assert_eq!(get(&unconfined, "unshare"), "0", "{unconfined:?}");
    assert_eq!(get(&unconfined, "masked"), masked, "{unconfined:?}");

    // NET_ADMIN added: the MTU changes; escalation refused: no_new_privs.
    let net = report(&agent, &cases[2].0);
    assert_eq!(get(&net, "CapEff"), DEFAULT_PLUS_NET_ADMIN, "{net:?}");
    assert_eq!(get(&net, "mtu"), "ok", "{net:?}");
    assert_eq!(get(&net, "NoNewPrivs"), "1", "{net:?}");
    assert_eq!(get(&net, "Seccomp"), "2", "{net:?}");

    // drop ALL: nothing left, not even in the bounding set.
    let dropped = report(&agent, &cases[3].0);
    for set in ["CapPrm", "CapEff", "CapBnd"] {
        assert_eq!(get(&dropped, set), NO_CAPS, "{set}: {dropped:?}");
    }
    assert_eq!(get(&dropped, "Seccomp"), "2", "{dropped:?}");

    // Privileged: every capability, no seccomp, nothing masked, /proc/sys writable.
    let privileged = report(&agent, &cases[4].0);
    let all = all_caps_mask();
    for set in ["CapPrm", "CapEff", "CapBnd"] {
        assert_eq!(get(&privileged, set), all, "{set}: {privileged:?}");
    }
    assert_eq!(get(&privileged, "Seccomp"), "0", "{privileged:?}");
    assert_eq!(get(&privileged, "masked"), "", "{privileged:?}");
    assert_eq!(get(&privileged, "procsys"), "writable", "{privileged:?}");
    assert_eq!(get(&privileged, "mtu"), "ok", "{privileged:?}");
    assert_eq!(get(&privileged, "hostname"), "ok", "{privileged:?}");

    // A Localhost profile cannot be loaded here: the container is never created.
    let waiting = eventually(
        "the Localhost pod waiting with a reason",
        Duration::from_secs(30),
        || async {
            let pod = pods.get_opt(&local).await.ok().flatten()?;
            let statuses = pod.status?.container_statuses?;
            statuses
                .first()?
                .state
                .as_ref()?
                .waiting
                .clone()
                .filter(|w| w.reason.is_some())
        },
    )
    .await;
    assert_eq!(
        waiting.reason.as_deref(),
        Some("CreateContainerConfigError"),
        "{waiting:?}"
    );
    assert!(
        waiting
            .message
            .as_deref()
            .unwrap_or_default()
            .contains("Localhost"),
        "{waiting:?}"
    );

    for name in cases.iter().map(|(n, _)| n).chain([&local]) {
        pods.delete(name, &DeleteParams::default())
            .await
            .expect("delete pod");
    }
    eventually(
        "containers and sandboxes removed",
        Duration::from_secs(60),
        || async {
            (agent.containers().is_empty()
                && entries(&agent.root.path().join("sandboxes")).is_empty())
            .then_some(())
        },
    )
    .await;
    agent.stop().await;
}
