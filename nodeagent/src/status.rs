//! Pod status from what a pod worker observed: phase, conditions, container statuses and
//! QoS class, computed as kubelet does (`getPhase`, `generateAPIPodStatus`). Pure.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{
    Container, ContainerState as ApiState, ContainerStateRunning, ContainerStateTerminated,
    ContainerStateWaiting, ContainerStatus, HostIP, Pod, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::chrono::{DateTime, Utc};

use crate::runtime::ContainerState;

/// Why a container is not running, as shown in `state.waiting`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    pub reason: String,
    pub message: Option<String>,
}

/// What a worker knows about one container of its pod.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerObservation {
    pub name: String,
    /// The image of the spec.
    pub image: String,
    /// The resolved image identity, once pulled.
    pub image_id: Option<String>,
    /// The runtime's id of the current instance.
    pub container_id: Option<String>,
    /// The current instance's state.
    pub state: Option<ContainerState>,
    /// Set while the container waits (pulling, backing off…); overrides `state`.
    pub waiting: Option<Waiting>,
    /// How the previous instance ended.
    pub last_terminated: Option<ContainerState>,
    pub restart_count: i32,
    /// The startup probe's verdict on the current instance; `None` without one.
    pub startup_passed: Option<bool>,
    /// The readiness probe's verdict on the current instance; `None` without one.
    pub readiness_passed: Option<bool>,
}

impl ContainerObservation {
    /// A container not created yet.
    pub fn new(spec: &Container) -> Self {
        ContainerObservation {
            name: spec.name.clone(),
            image: spec.image.clone().unwrap_or_default(),
            ..Default::default()
        }
    }

    /// Exited with code 0.
    pub fn succeeded(&self) -> bool {
        self.waiting.is_none()
            && matches!(
                self.state,
                Some(ContainerState::Exited { exit_code: 0, .. })
            )
    }

    /// Running and not waiting to be restarted.
    pub fn running(&self) -> bool {
        self.waiting.is_none() && matches!(self.state, Some(ContainerState::Running { .. }))
    }

    /// Running and past its startup probe (if any): `started` in the status.
    pub fn started(&self) -> bool {
        self.running() && self.startup_passed.unwrap_or(true)
    }

    /// Started and passing its readiness probe (if any): `ready` in the status.
    pub fn ready(&self) -> bool {
        self.started() && self.readiness_passed.unwrap_or(true)
    }

    /// The exit code if the current instance exited.
    pub fn exit_code(&self) -> Option<i32> {
        match self.state {
            Some(ContainerState::Exited { exit_code, .. }) => Some(exit_code),
            _ => None,
        }
    }
}

/// What a worker knows about its pod.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodObservation {
    pub init_containers: Vec<ContainerObservation>,
    pub containers: Vec<ContainerObservation>,
    pub host_ip: Option<IpAddr>,
    /// The sandbox's IP once the pod network gave it one.
    pub pod_ip: Option<IpAddr>,
    pub start_time: Option<DateTime<Utc>>,
}

/// The pod's phase from its containers (kubelet's `getPhase`).
pub fn phase(pod: &Pod, obs: &PodObservation) -> &'static str {
    let policy = restart_policy(pod);
    for init in &obs.init_containers {
        if init.succeeded() {
            continue;
        }
        if policy == "Never" && init.exit_code().is_some_and(|c| c != 0) {
            return "Failed";
        }
        return "Pending";
    }
    let (mut running, mut waiting, mut stopped, mut succeeded) = (0, 0, 0, 0);
    for c in &obs.containers {
        match (&c.waiting, &c.state) {
            (None, Some(ContainerState::Running { .. })) => running += 1,
            (None, Some(ContainerState::Exited { exit_code, .. })) => {
                stopped += 1;
                if *exit_code == 0 {
                    succeeded += 1;
                }
            }
            (Some(_), Some(ContainerState::Exited { .. })) => stopped += 1,
            _ if c.last_terminated.is_some() => stopped += 1,
            _ => waiting += 1,
        }
    }
    if waiting > 0 {
        return "Pending";
    }
    if running > 0 {
        return "Running";
    }
    if stopped > 0 {
        return match policy {
            "Always" => "Running",
            "OnFailure" if stopped == succeeded => "Succeeded",
            "OnFailure" => "Running",
            _ if stopped == succeeded => "Succeeded",
            _ => "Failed",
        };
    }
    "Pending"
}

fn restart_policy(pod: &Pod) -> &str {
    pod.spec
        .as_ref()
        .and_then(|s| s.restart_policy.as_deref())
        .unwrap_or("Always")
}

/// The pod's QoS class: Guaranteed when every container's CPU and memory limits are set
/// and equal their requests, BestEffort when nothing is set, Burstable otherwise.
pub fn qos_class(pod: &Pod) -> &'static str {
    let Some(spec) = pod.spec.as_ref() else {
        return "BestEffort";
    };
    let all = spec
        .init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter());
    let (mut any_set, mut guaranteed) = (false, true);
    for c in all {
        let resources = c.resources.as_ref();
        let requests = resources.and_then(|r| r.requests.as_ref());
        let limits = resources.and_then(|r| r.limits.as_ref());
        for resource in ["cpu", "memory"] {
            let request = requests.and_then(|m| quantity(m, resource));
            let limit = limits.and_then(|m| quantity(m, resource));
            if request.is_some_and(|q| q != 0) || limit.is_some_and(|q| q != 0) {
                any_set = true;
            }
            match (request, limit) {
                (_, None) => guaranteed = false,
                (Some(r), Some(l)) if r != l => guaranteed = false,
                _ => {}
            }
        }
    }
    match (any_set, guaranteed) {
        (false, _) => "BestEffort",
        (true, true) => "Guaranteed",
        (true, false) => "Burstable",
    }
}

/// A resource quantity in milli-units; unparseable values count as unset.
pub fn quantity(map: &BTreeMap<String, Quantity>, resource: &str) -> Option<i128> {
    let q = map.get(resource)?;
    rkube_api::validation::quantity::parse(&q.0)
        .ok()
        .map(|q| q.milli_value())
}

/// The full status at `now`; conditions keep their `lastTransitionTime` from
/// `previous` while their status does not change.
pub fn pod_status(
    pod: &Pod,
    obs: &PodObservation,
    previous: Option<&PodStatus>,
    now: DateTime<Utc>,
) -> PodStatus {
    let phase = phase(pod, obs);
    let initialized = obs.init_containers.iter().all(|c| c.succeeded());
    let init_statuses: Vec<ContainerStatus> = obs
        .init_containers
        .iter()
        .map(|c| container_status(c, "PodInitializing"))
        .collect();
    let default_waiting = if initialized {
        "ContainerCreating"
    } else {
        "PodInitializing"
    };
    let statuses: Vec<ContainerStatus> = obs
        .containers
        .iter()
        .map(|c| container_status(c, default_waiting))
        .collect();

    let incomplete: Vec<&str> = obs
        .init_containers
        .iter()
        .filter(|c| !c.succeeded())
        .map(|c| c.name.as_str())
        .collect();
    let unready: Vec<&str> = statuses
        .iter()
        .filter(|s| !s.ready)
        .map(|s| s.name.as_str())
        .collect();
    let terminal = phase == "Succeeded" || phase == "Failed";
    let condition = |type_: &str, ok: bool, reason: Option<String>, message: Option<String>| {
        let status = if ok { "True" } else { "False" };
        let transition = previous
            .and_then(|p| p.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == type_))
            .filter(|c| c.status == status)
            .and_then(|c| c.last_transition_time.clone())
            .unwrap_or(Time(now));
        PodCondition {
            type_: type_.to_string(),
            status: status.to_string(),
            reason: if ok { None } else { reason },
            message: if ok { None } else { message },
            last_transition_time: Some(transition),
            ..Default::default()
        }
    };
    let (not_ready_reason, not_ready_message) = if terminal {
        (Some("PodCompleted".to_string()), None)
    } else {
        (
            Some("ContainersNotReady".to_string()),
            Some(format!(
                "containers with unready status: [{}]",
                unready.join(" ")
            )),
        )
    };
    let ready = unready.is_empty() && !terminal;
    let conditions = vec![
        condition(
            "Initialized",
            initialized,
            Some("ContainersNotInitialized".into()),
            Some(format!(
                "containers with incomplete status: [{}]",
                incomplete.join(" ")
            )),
        ),
        condition(
            "Ready",
            ready,
            not_ready_reason.clone(),
            not_ready_message.clone(),
        ),
        condition(
            "ContainersReady",
            ready,
            not_ready_reason,
            not_ready_message,
        ),
        condition("PodScheduled", true, None, None),
    ];
    let host_ip = obs.host_ip.map(|ip| ip.to_string());
    let pod_ip = obs.pod_ip.map(|ip| ip.to_string());
    PodStatus {
        pod_ip: pod_ip.clone(),
        pod_ips: pod_ip.map(|ip| vec![PodIP { ip }]),
        phase: Some(phase.to_string()),
        conditions: Some(conditions),
        host_ip: host_ip.clone(),
        host_ips: host_ip.map(|ip| vec![HostIP { ip }]),
        start_time: obs.start_time.map(Time),
        qos_class: Some(qos_class(pod).to_string()),
        init_container_statuses: (!init_statuses.is_empty()).then_some(init_statuses),
        container_statuses: Some(statuses),
        ..Default::default()
    }
}

fn api_state(state: &ContainerState, container_id: Option<&str>) -> ApiState {
    match state {
        ContainerState::Created => ApiState {
            waiting: Some(ContainerStateWaiting {
                reason: Some("ContainerCreating".into()),
                message: None,
            }),
            ..Default::default()
        },
        ContainerState::Running { started_at } => ApiState {
            running: Some(ContainerStateRunning {
                started_at: Some(Time(*started_at)),
            }),
            ..Default::default()
        },
        ContainerState::Exited {
            exit_code,
            reason,
            started_at,
            finished_at,
        } => ApiState {
            terminated: Some(ContainerStateTerminated {
                exit_code: *exit_code,
                reason: Some(reason.clone()),
                started_at: started_at.map(Time),
                finished_at: Some(Time(*finished_at)),
                container_id: container_id.map(str::to_string),
                ..Default::default()
            }),
            ..Default::default()
        },
    }
}

fn container_status(c: &ContainerObservation, default_waiting: &str) -> ContainerStatus {
    let container_id = c.container_id.as_ref().map(|id| format!("rkube://{id}"));
    let waiting = |reason: &str, message: Option<String>| ApiState {
        waiting: Some(ContainerStateWaiting {
            reason: Some(reason.to_string()),
            message,
        }),
        ..Default::default()
    };
    let (state, last) = match (&c.waiting, &c.state) {
        // Waiting to restart: the exit just seen is the last state.
        (Some(w), Some(exited @ ContainerState::Exited { .. })) => {
            (waiting(&w.reason, w.message.clone()), Some(exited.clone()))
        }
        (Some(w), _) => (
            waiting(&w.reason, w.message.clone()),
            c.last_terminated.clone(),
        ),
        (None, Some(state)) => (
            api_state(state, container_id.as_deref()),
            c.last_terminated.clone(),
        ),
        (None, None) => (waiting(default_waiting, None), c.last_terminated.clone()),
    };
    ContainerStatus {
        name: c.name.clone(),
        image: c.image.clone(),
        image_id: c.image_id.clone().unwrap_or_default(),
        container_id,
        state: Some(state),
        last_state: last.map(|s| api_state(&s, None)),
        ready: c.ready(),
        started: Some(c.started()),
        restart_count: c.restart_count,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{PodSpec, ResourceRequirements};

    use super::*;

    fn pod(policy: &str, resources: &[(Option<&str>, Option<&str>)]) -> Pod {
        let containers = resources
            .iter()
            .enumerate()
            .map(|(i, (request, limit))| {
                let map = |v: &Option<&str>| {
                    v.map(|v| {
                        [("cpu", v), ("memory", v)]
                            .into_iter()
                            .map(|(k, v)| (k.to_string(), Quantity(v.to_string())))
                            .collect::<BTreeMap<_, _>>()
                    })
                };
                Container {
                    name: format!("c{i}"),
                    image: Some("busybox".into()),
                    resources: Some(ResourceRequirements {
                        requests: map(request),
                        limits: map(limit),
                        ..Default::default()
                    }),
                    ..Default::default()
                }
            })
            .collect();
        Pod {
            spec: Some(PodSpec {
                restart_policy: Some(policy.into()),
                containers,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn running() -> ContainerObservation {
        ContainerObservation {
            name: "c".into(),
            state: Some(ContainerState::Running {
                started_at: Utc::now(),
            }),
            ..Default::default()
        }
    }

    fn exited(code: i32) -> ContainerObservation {
        ContainerObservation {
            name: "c".into(),
            state: Some(ContainerState::Exited {
                exit_code: code,
                reason: ContainerState::exit_reason(code).into(),
                started_at: None,
                finished_at: Utc::now(),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn phase_follows_kubelet() {
        let backing_off = ContainerObservation {
            waiting: Some(Waiting {
                reason: "CrashLoopBackOff".into(),
                message: None,
            }),
            ..exited(1)
        };
        let cases = [
            (
                "nothing started",
                "Always",
                vec![],
                vec![ContainerObservation::default()],
                "Pending",
            ),
            ("running", "Always", vec![], vec![running()], "Running"),
            (
                "exited 0, Never",
                "Never",
                vec![],
                vec![exited(0)],
                "Succeeded",
            ),
            (
                "exited 1, Never",
                "Never",
                vec![],
                vec![exited(1)],
                "Failed",
            ),
            (
                "exited 1, OnFailure",
                "OnFailure",
                vec![],
                vec![exited(1)],
                "Running",
            ),
            (
                "exited 0, OnFailure",
                "OnFailure",
                vec![],
                vec![exited(0)],
                "Succeeded",
            ),
            (
                "exited 0, Always",
                "Always",
                vec![],
                vec![exited(0)],
                "Running",
            ),
            ("crash loop", "Always", vec![], vec![backing_off], "Running"),
            (
                "init running",
                "Always",
                vec![running()],
                vec![ContainerObservation::default()],
                "Pending",
            ),
            (
                "init failed, Never",
                "Never",
                vec![exited(2)],
                vec![ContainerObservation::default()],
                "Failed",
            ),
            (
                "init failed, Always",
                "Always",
                vec![exited(2)],
                vec![ContainerObservation::default()],
                "Pending",
            ),
            (
                "init done",
                "Always",
                vec![exited(0)],
                vec![running()],
                "Running",
            ),
        ];
        for (name, policy, init, containers, want) in cases {
            let obs = PodObservation {
                init_containers: init,
                containers,
                ..Default::default()
            };
            assert_eq!(phase(&pod(policy, &[]), &obs), want, "{name}");
        }
    }

    #[test]
    fn qos_class_from_requests_and_limits() {
        let cases = [
            ("nothing", vec![(None, None)], "BestEffort"),
            ("limits only", vec![(None, Some("1"))], "Guaranteed"),
            ("equal", vec![(Some("1"), Some("1"))], "Guaranteed"),
            (
                "request below limit",
                vec![(Some("500m"), Some("1"))],
                "Burstable",
            ),
            ("requests only", vec![(Some("1"), None)], "Burstable"),
            (
                "one of two",
                vec![(Some("1"), Some("1")), (None, None)],
                "Burstable",
            ),
        ];
        for (name, resources, want) in cases {
            assert_eq!(qos_class(&pod("Always", &resources)), want, "{name}");
        }
    }

    #[test]
    fn status_reports_conditions_and_keeps_transition_times() {
        let t0 = Utc::now();
        let mut obs = PodObservation {
            containers: vec![ContainerObservation {
                container_id: Some("abc".into()),
                restart_count: 1,
                last_terminated: exited(1).state,
                ..running()
            }],
            host_ip: Some("10.0.0.5".parse().expect("ip")),
            pod_ip: Some("10.88.0.7".parse().expect("ip")),
            start_time: Some(t0),
            ..Default::default()
        };
        let pod = pod("Always", &[]);
        let status = pod_status(&pod, &obs, None, t0);
        assert_eq!(status.phase.as_deref(), Some("Running"));
        assert_eq!(status.host_ip.as_deref(), Some("10.0.0.5"));
        assert_eq!(status.pod_ip.as_deref(), Some("10.88.0.7"));
        assert_eq!(
            status.pod_ips,
            Some(vec![PodIP {
                ip: "10.88.0.7".into()
            }])
        );
        assert_eq!(status.qos_class.as_deref(), Some("BestEffort"));
        let conditions = status.conditions.clone().expect("conditions");
        let types: Vec<(&str, &str)> = conditions
            .iter()
            .map(|c| (c.type_.as_str(), c.status.as_str()))
            .collect();
        assert_eq!(
            types,
            [
                ("Initialized", "True"),
                ("Ready", "True"),
                ("ContainersReady", "True"),
                ("PodScheduled", "True")
            ]
        );
        let cs = &status.container_statuses.as_ref().expect("statuses")[0];
        assert!(cs.ready);
        assert_eq!(cs.restart_count, 1);
        assert_eq!(cs.container_id.as_deref(), Some("rkube://abc"));
        assert!(cs.state.as_ref().and_then(|s| s.running.as_ref()).is_some());
        let last = cs.last_state.as_ref().and_then(|s| s.terminated.as_ref());
        assert_eq!(last.map(|t| t.exit_code), Some(1));

        // The container crashes: Ready turns False with a new transition time.
        let t1 = t0 + k8s_openapi::chrono::Duration::seconds(5);
        obs.containers[0].state = exited(1).state;
        obs.containers[0].waiting = Some(Waiting {
            reason: "CrashLoopBackOff".into(),
            message: Some("back-off 10s".into()),
        });
        let later = pod_status(&pod, &obs, Some(&status), t1);
        let find = |s: &PodStatus, t: &str| {
            s.conditions
                .as_ref()
                .and_then(|cs| cs.iter().find(|c| c.type_ == t).cloned())
                .expect("condition")
        };
        assert_eq!(find(&later, "Ready").status, "False");
        assert_eq!(find(&later, "Ready").last_transition_time, Some(Time(t1)));
        assert_eq!(
            find(&later, "PodScheduled").last_transition_time,
            Some(Time(t0))
        );
        let cs = &later.container_statuses.as_ref().expect("statuses")[0];
        let waiting = cs.state.as_ref().and_then(|s| s.waiting.as_ref());
        assert_eq!(
            waiting.and_then(|w| w.reason.as_deref()),
            Some("CrashLoopBackOff")
        );
        assert!(!cs.ready);
    }

    #[test]
    fn probes_gate_started_and_ready() {
        let cases = [
            ("no probes", None, None, true, true),
            ("startup pending", Some(false), None, false, false),
            (
                "started, readiness pending",
                Some(true),
                Some(false),
                true,
                false,
            ),
            ("started and ready", Some(true), Some(true), true, true),
            ("readiness only, failing", None, Some(false), true, false),
        ];
        for (name, startup, readiness, started, ready) in cases {
            let obs = PodObservation {
                containers: vec![ContainerObservation {
                    startup_passed: startup,
                    readiness_passed: readiness,
                    ..running()
                }],
                ..Default::default()
            };
            let status = pod_status(&pod("Always", &[]), &obs, None, Utc::now());
            let cs = &status.container_statuses.as_ref().expect("statuses")[0];
            assert_eq!(cs.started, Some(started), "{name}");
            assert_eq!(cs.ready, ready, "{name}");
            let condition = |t: &str| {
                status
                    .conditions
                    .iter()
                    .flatten()
                    .find(|c| c.type_ == t)
                    .map(|c| c.status.clone())
            };
            let want = if ready { "True" } else { "False" };
            assert_eq!(condition("Ready").as_deref(), Some(want), "{name}");
            assert_eq!(
                condition("ContainersReady").as_deref(),
                Some(want),
                "{name}"
            );
        }
        // A container that is not running is neither started nor ready.
        let obs = PodObservation {
            containers: vec![ContainerObservation {
                startup_passed: Some(true),
                readiness_passed: Some(true),
                ..exited(1)
            }],
            ..Default::default()
        };
        let status = pod_status(&pod("Always", &[]), &obs, None, Utc::now());
        let cs = &status.container_statuses.as_ref().expect("statuses")[0];
        assert_eq!((cs.started, cs.ready), (Some(false), false));
    }
}
