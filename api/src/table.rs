//! Server-side `Table` output (meta.k8s.io/v1) per kind: the columns and cells kubectl prints.
//!
//! Column names, types, formats and priorities follow the upstream printers
//! (`pkg/printers/internalversion`), and so do the cell values: a Pod's `Ready` is
//! `"1/2"`, its `Status` the same reason kubectl users know (`ContainerCreating`,
//! `CrashLoopBackOff`, `Init:0/1`, `Terminating`, …), ages are [`human_duration`]s. Like
//! the apiserver, rows always carry the priority-1 (`-o wide`) cells; kubectl hides them.
//! Kinds without a printer get `Name` and `Created At`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1 as metav1;
use serde_json::{json, Value};

use crate::object;
use crate::resource::Resource;
use crate::selector::LabelSelector;

/// One column of a Table (`columnDefinitions[]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Column {
    pub name: &'static str,
    /// `string`, `integer`, `date`, … (an OpenAPI type).
    pub type_: &'static str,
    /// `name` for the column holding the object's name, else empty.
    pub format: &'static str,
    pub description: &'static str,
    /// 0: always shown; 1: shown by `kubectl get -o wide`.
    pub priority: i32,
}

const fn col(name: &'static str, type_: &'static str, description: &'static str) -> Column {
    Column {
        name,
        type_,
        format: "",
        description,
        priority: 0,
    }
}

/// A priority-1 (`-o wide`) string column.
const fn wide(name: &'static str, description: &'static str) -> Column {
    Column {
        name,
        type_: "string",
        format: "",
        description,
        priority: 1,
    }
}

const NAME: Column = Column {
    name: "Name",
    type_: "string",
    format: "name",
    description:
        "The object's name, unique within its namespace (or cluster, for cluster-scoped kinds).",
    priority: 0,
};
const AGE: Column = col(
    "Age",
    "string",
    "Time since the object was created (metadata.creationTimestamp).",
);
const CONTAINERS: Column = wide("Containers", "Names of each container in the template.");
const IMAGES: Column = wide(
    "Images",
    "Images referenced by each container in the template.",
);
const SELECTOR: Column = wide(
    "Selector",
    "The label selector of the pods this object manages.",
);

const POD: &[Column] = &[
    NAME,
    col(
        "Ready",
        "string",
        "Ready containers out of all containers of the pod.",
    ),
    col(
        "Status",
        "string",
        "The aggregate status of the pod's containers.",
    ),
    col(
        "Restarts",
        "string",
        "Container restarts, and how long ago the last one happened.",
    ),
    AGE,
    wide("IP", "The pod's primary IP address."),
    wide("Node", "The node the pod is bound to."),
    wide(
        "Nominated Node",
        "The node the scheduler nominated after preempting pods for this one.",
    ),
    wide(
        "Readiness Gates",
        "Readiness gates whose condition is true, out of all gates.",
    ),
];
const DEPLOYMENT: &[Column] = &[
    NAME,
    col("Ready", "string", "Ready replicas out of desired replicas."),
    col(
        "Up-to-date",
        "string",
        "Replicas running the latest pod template.",
    ),
    col(
        "Available",
        "string",
        "Replicas ready for at least minReadySeconds.",
    ),
    AGE,
    CONTAINERS,
    IMAGES,
    SELECTOR,
];
const REPLICA_SET: &[Column] = &[
    NAME,
    col("Desired", "integer", "Desired replicas (spec.replicas)."),
    col(
        "Current",
        "integer",
        "Replicas that currently exist (status.replicas).",
    ),
    col("Ready", "integer", "Ready replicas (status.readyReplicas)."),
    AGE,
    CONTAINERS,
    IMAGES,
    SELECTOR,
];
const DAEMON_SET: &[Column] = &[
    NAME,
    col(
        "Desired",
        "integer",
        "Nodes that should run the daemon pod.",
    ),
    col(
        "Current",
        "integer",
        "Nodes running at least one daemon pod.",
    ),
    col("Ready", "integer", "Nodes whose daemon pod is ready."),
    col(
        "Up-to-date",
        "integer",
        "Nodes running the latest daemon pod template.",
    ),
    col(
        "Available",
        "integer",
        "Nodes whose daemon pod is available.",
    ),
    col(
        "Node Selector",
        "string",
        "The node selector of the pod template.",
    ),
    AGE,
    CONTAINERS,
    IMAGES,
    SELECTOR,
];
const STATEFUL_SET: &[Column] = &[
    NAME,
    col("Ready", "string", "Ready replicas out of desired replicas."),
    AGE,
    CONTAINERS,
    IMAGES,
];
const SERVICE: &[Column] = &[
    NAME,
    col(
        "Type",
        "string",
        "How the service is exposed (ClusterIP, NodePort, LoadBalancer, ExternalName).",
    ),
    col(
        "Cluster-IP",
        "string",
        "The virtual IP of the service inside the cluster.",
    ),
    col(
        "External-IP",
        "string",
        "Addresses the service is reachable at from outside the cluster.",
    ),
    col(
        "Port(s)",
        "string",
        "Service ports, with node ports, and protocols.",
    ),
    AGE,
    wide("Selector", "The labels of the pods that back the service."),
];
const ENDPOINTS: &[Column] = &[
    NAME,
    col(
        "Endpoints",
        "string",
        "Ready addresses and ports of the service's backends.",
    ),
    AGE,
];
const NODE: &[Column] = &[
    NAME,
    col(
        "Status",
        "string",
        "Whether the node is ready, and whether it is cordoned.",
    ),
    col(
        "Roles",
        "string",
        "The node's roles, from node-role.kubernetes.io/* labels.",
    ),
    AGE,
    col("Version", "string", "The version of the node agent."),
    wide("Internal-IP", "The node's first InternalIP address."),
    wide("External-IP", "The node's first ExternalIP address."),
    wide("OS-Image", "The operating system image of the node."),
    wide("Kernel-Version", "The kernel version of the node."),
    wide(
        "Container-Runtime",
        "The container runtime and its version.",
    ),
];
const NAMESPACE: &[Column] = &[
    NAME,
    col(
        "Status",
        "string",
        "The phase of the namespace (Active or Terminating).",
    ),
    AGE,
];
const EVENT: &[Column] = &[
    col("Last Seen", "string", "Time since the event last occurred."),
    col("Type", "string", "Normal or Warning."),
    col(
        "Reason",
        "string",
        "A short, machine-readable reason for the event.",
    ),
    col(
        "Object",
        "string",
        "The object the event is about, as kind/name.",
    ),
    wide(
        "Subobject",
        "The part of the object the event is about (fieldPath).",
    ),
    wide("Source", "The component that reported the event."),
    col(
        "Message",
        "string",
        "A human-readable description of the event.",
    ),
    wide("First Seen", "Time since the event first occurred."),
    wide("Count", "How many times the event occurred."),
    Column {
        priority: 1,
        ..NAME
    },
];
const CONFIG_MAP: &[Column] = &[
    NAME,
    col("Data", "string", "Number of data and binaryData keys."),
    AGE,
];
const SECRET: &[Column] = &[
    NAME,
    col("Type", "string", "The type of the secret."),
    col("Data", "string", "Number of data keys."),
    AGE,
];
const LEASE: &[Column] = &[
    NAME,
    col("Holder", "string", "The identity of the current holder."),
    AGE,
];
const DEFAULT: &[Column] = &[
    NAME,
    col(
        "Created At",
        "date",
        "When the object was created (metadata.creationTimestamp).",
    ),
];

/// Which printer renders a kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Printer {
    Pod,
    Deployment,
    ReplicaSet,
    DaemonSet,
    StatefulSet,
    Service,
    Endpoints,
    Node,
    Namespace,
    Event,
    ConfigMap,
    Secret,
    Lease,
    Default,
}

fn printer(resource: &Resource) -> Printer {
    match (resource.group, resource.kind) {
        ("", "Pod") => Printer::Pod,
        ("", "Service") => Printer::Service,
        ("", "Endpoints") => Printer::Endpoints,
        ("", "Node") => Printer::Node,
        ("", "Namespace") => Printer::Namespace,
        ("", "Event") => Printer::Event,
        ("", "ConfigMap") => Printer::ConfigMap,
        ("", "Secret") => Printer::Secret,
        ("apps", "Deployment") => Printer::Deployment,
        ("apps", "ReplicaSet") => Printer::ReplicaSet,
        ("apps", "DaemonSet") => Printer::DaemonSet,
        ("apps", "StatefulSet") => Printer::StatefulSet,
        ("coordination.k8s.io", "Lease") => Printer::Lease,
        _ => Printer::Default,
    }
}

/// The columns of `resource`'s Table, wide ones included.
pub fn columns(resource: &Resource) -> Vec<Column> {
    let columns = match printer(resource) {
        Printer::Pod => POD,
        Printer::Deployment => DEPLOYMENT,
        Printer::ReplicaSet => REPLICA_SET,
        Printer::DaemonSet => DAEMON_SET,
        Printer::StatefulSet => STATEFUL_SET,
        Printer::Service => SERVICE,
        Printer::Endpoints => ENDPOINTS,
        Printer::Node => NODE,
        Printer::Namespace => NAMESPACE,
        Printer::Event => EVENT,
        Printer::ConfigMap => CONFIG_MAP,
        Printer::Secret => SECRET,
        Printer::Lease => LEASE,
        Printer::Default => DEFAULT,
    };
    columns.to_vec()
}

/// The `columnDefinitions` array of a Table for `resource`.
pub fn column_definitions(resource: &Resource) -> Value {
    columns(resource)
        .iter()
        .map(|c| {
            json!({
                "name": c.name, "type": c.type_, "format": c.format,
                "description": c.description, "priority": c.priority,
            })
        })
        .collect()
}

/// The cells of `obj`'s row, one per column of [`columns`]; ages are measured at `now`.
pub fn row_cells(resource: &Resource, obj: &Value, now: Timestamp) -> Vec<Value> {
    let name = || Value::from(object::name(obj).unwrap_or_default());
    let age = || Value::from(since(meta_time(obj, "creationTimestamp"), now));
    match printer(resource) {
        Printer::Pod => pod_cells(obj, now),
        Printer::Deployment => {
            let (names, images) = containers(obj);
            let selector = match spec_selector(obj) {
                None => String::new(),
                Some(Err(())) => "<invalid>".to_string(),
                Some(Ok(s)) => s.to_string(),
            };
            vec![
                name(),
                ratio(int(obj, "/status/readyReplicas"), replicas(obj)),
                int(obj, "/status/updatedReplicas").into(),
                int(obj, "/status/availableReplicas").into(),
                age(),
                names.into(),
                images.into(),
                selector.into(),
            ]
        }
        Printer::ReplicaSet => {
            let (names, images) = containers(obj);
            vec![
                name(),
                replicas(obj).into(),
                int(obj, "/status/replicas").into(),
                int(obj, "/status/readyReplicas").into(),
                age(),
                names.into(),
                images.into(),
                format_label_selector(obj).into(),
            ]
        }
        Printer::DaemonSet => {
            let (names, images) = containers(obj);
            let node_selector = obj.pointer("/spec/template/spec/nodeSelector");
            vec![
                name(),
                int(obj, "/status/desiredNumberScheduled").into(),
                int(obj, "/status/currentNumberScheduled").into(),
                int(obj, "/status/numberReady").into(),
                int(obj, "/status/updatedNumberScheduled").into(),
                int(obj, "/status/numberAvailable").into(),
                format_labels(&string_map(node_selector)).into(),
                age(),
                names.into(),
                images.into(),
                format_label_selector(obj).into(),
            ]
        }
        Printer::StatefulSet => {
            let (names, images) = containers(obj);
            vec![
                name(),
                ratio(int(obj, "/status/readyReplicas"), replicas(obj)),
                age(),
                names.into(),
                images.into(),
            ]
        }
        Printer::Service => service_cells(obj, name(), age()),
        Printer::Endpoints => vec![name(), format_endpoints(obj).into(), age()],
        Printer::Node => node_cells(obj, name(), age()),
        Printer::Namespace => vec![name(), text(obj, "/status/phase").into(), age()],
        Printer::Event => event_cells(obj, name(), now),
        Printer::ConfigMap => {
            let keys = count_keys(obj, "/data") + count_keys(obj, "/binaryData");
            vec![name(), keys.into(), age()]
        }
        Printer::Secret => {
            // `stringData` is write-only and merged into `data`; count the union in case it was not.
            let keys: BTreeSet<&String> = ["/data", "/stringData"]
                .iter()
                .filter_map(|p| obj.pointer(p).and_then(Value::as_object))
                .flat_map(|m| m.keys())
                .collect();
            vec![name(), text(obj, "/type").into(), keys.len().into(), age()]
        }
        Printer::Lease => vec![name(), text(obj, "/spec/holderIdentity").into(), age()],
        Printer::Default => {
            let created = meta_time(obj, "creationTimestamp")
                .and_then(parse_time)
                .map_or_else(
                    || "<unknown>".to_string(),
                    |t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
                );
            vec![name(), created.into()]
        }
    }
}

/// Kubernetes' `HumanDuration`: about two significant figures, e.g. `"45s"`, `"5m30s"`,
/// `"42m"`, `"3h10m"`, `"20h"`, `"3d4h"`, `"90d"`, `"2y45d"`, `"9y"`.
pub fn human_duration(d: Duration) -> String {
    let seconds = d.as_secs();
    if seconds < 2 * 60 {
        return format!("{seconds}s");
    }
    let minutes = seconds / 60;
    if minutes < 10 {
        return with_remainder(minutes, "m", seconds % 60, "s");
    }
    if minutes < 3 * 60 {
        return format!("{minutes}m");
    }
    let hours = seconds / 3600;
    if hours < 8 {
        return with_remainder(hours, "h", minutes % 60, "m");
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    let days = hours / 24;
    if hours < 24 * 8 {
        return with_remainder(days, "d", hours % 24, "h");
    }
    if hours < 24 * 365 * 2 {
        return format!("{days}d");
    }
    let years = days / 365;
    if hours < 24 * 365 * 8 {
        return with_remainder(years, "y", days % 365, "d");
    }
    format!("{years}y")
}

/// `"5m"` when the remainder is zero, else `"5m30s"`.
fn with_remainder(big: u64, big_unit: &str, small: u64, small_unit: &str) -> String {
    if small == 0 {
        format!("{big}{big_unit}")
    } else {
        format!("{big}{big_unit}{small}{small_unit}")
    }
}

/// The age of an RFC 3339 time stamp at `now`: `"<unknown>"` when missing or unreadable,
/// `"0s"` for up to a second in the future (clock skew), `"<invalid>"` beyond that.
pub fn since(timestamp: Option<&str>, now: Timestamp) -> String {
    match timestamp.and_then(parse_time) {
        Some(t) => signed_human_duration(now.duration_since(t)),
        None => "<unknown>".to_string(),
    }
}

fn signed_human_duration(d: SignedDuration) -> String {
    match u64::try_from(d.as_secs()) {
        Ok(secs) => human_duration(Duration::from_secs(secs)),
        Err(_) if d.as_secs() >= -1 => "0s".to_string(),
        Err(_) => "<invalid>".to_string(),
    }
}

fn parse_time(s: &str) -> Option<Timestamp> {
    s.parse().ok()
}

fn meta_time<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    object::meta_str(obj, field).filter(|s| !s.is_empty())
}

/// The string at a JSON pointer, `""` if absent.
fn text<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

/// The integer at a JSON pointer, 0 if absent.
fn int(v: &Value, pointer: &str) -> i64 {
    v.pointer(pointer).and_then(Value::as_i64).unwrap_or(0)
}

fn array<'a>(v: &'a Value, pointer: &str) -> &'a [Value] {
    v.pointer(pointer)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

fn count_keys(v: &Value, pointer: &str) -> usize {
    v.pointer(pointer)
        .and_then(Value::as_object)
        .map_or(0, |m| m.len())
}

fn ratio(a: i64, b: i64) -> Value {
    Value::from(format!("{a}/{b}"))
}

/// `spec.replicas` of a workload, defaulted to 1 as Kubernetes defaults it.
fn replicas(obj: &Value) -> i64 {
    obj.pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(1)
}

/// Container names and images of a workload's pod template, comma-separated.
fn containers(obj: &Value) -> (String, String) {
    let list = array(obj, "/spec/template/spec/containers");
    let join = |field: &str| {
        list.iter()
            .map(|c| text(c, field))
            .collect::<Vec<_>>()
            .join(",")
    };
    (join("/name"), join("/image"))
}

fn string_map(v: Option<&Value>) -> BTreeMap<String, String> {
    v.and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// `k=v,…` sorted by key, or `<none>`.
fn format_labels(labels: &BTreeMap<String, String>) -> String {
    if labels.is_empty() {
        return "<none>".to_string();
    }
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// `spec.selector` as a label selector: `None` when absent, `Err` when unusable.
fn spec_selector(obj: &Value) -> Option<Result<LabelSelector, ()>> {
    let raw = obj.pointer("/spec/selector").filter(|v| !v.is_null())?;
    Some(
        serde_json::from_value::<metav1::LabelSelector>(raw.clone())
            .map_err(drop)
            .and_then(|s| LabelSelector::from_k8s(&s).map_err(drop)),
    )
}

/// `spec.selector` as `kubectl get -o wide` shows it for ReplicaSets and DaemonSets.
fn format_label_selector(obj: &Value) -> String {
    match spec_selector(obj) {
        Some(Err(())) => "<error>".to_string(),
        Some(Ok(s)) if !s.is_empty() => s.to_string(),
        _ => "<none>".to_string(),
    }
}

fn pod_cells(pod: &Value, now: Timestamp) -> Vec<Value> {
    let init_specs = array(pod, "/spec/initContainers");
    // Sidecars (init containers with restartPolicy Always) count as pod containers.
    let restartable = |name: &str| {
        init_specs
            .iter()
            .any(|c| text(c, "/name") == name && text(c, "/restartPolicy") == "Always")
    };
    let total = array(pod, "/spec/containers").len()
        + init_specs
            .iter()
            .filter(|c| text(c, "/restartPolicy") == "Always")
            .count();
    let phase = text(pod, "/status/phase");
    let mut reason = match text(pod, "/status/reason") {
        "" => phase.to_string(),
        r => r.to_string(),
    };
    let conditions = array(pod, "/status/conditions");
    let condition_true = |kind: &str| {
        conditions
            .iter()
            .any(|c| text(c, "/type") == kind && text(c, "/status") == "True")
    };
    if conditions
        .iter()
        .any(|c| text(c, "/type") == "PodScheduled" && text(c, "/reason") == "SchedulingGated")
    {
        reason = "SchedulingGated".to_string();
    }

    let mut ready = 0;
    let mut restarts = Restarts::default();
    let mut sidecar_restarts = Restarts::default();
    let mut initializing = false;
    for (i, status) in array(pod, "/status/initContainerStatuses")
        .iter()
        .enumerate()
    {
        let container = ContainerStatus(status);
        restarts.add(&container);
        let sidecar = restartable(container.name());
        if sidecar {
            sidecar_restarts.add(&container);
        }
        let terminated = container.terminated();
        if terminated.is_some_and(|t| int(t, "/exitCode") == 0) {
            continue;
        }
        if sidecar && container.flag("started") {
            if container.flag("ready") {
                ready += 1;
            }
            continue;
        }
        reason = match (terminated, container.waiting_reason()) {
            (Some(t), _) => format!("Init:{}", terminated_reason(t)),
            (None, Some(waiting)) if waiting != "PodInitializing" => format!("Init:{waiting}"),
            _ => format!("Init:{i}/{}", init_specs.len()),
        };
        initializing = true;
        break;
    }

    if !initializing || condition_true("Initialized") {
        restarts = sidecar_restarts;
        let mut has_running = false;
        for status in array(pod, "/status/containerStatuses").iter().rev() {
            let container = ContainerStatus(status);
            restarts.add(&container);
            if let Some(waiting) = container.waiting_reason() {
                reason = waiting.to_string();
            } else if let Some(t) = container.terminated() {
                reason = terminated_reason(t);
            } else if container.flag("ready") && container.running() {
                has_running = true;
                ready += 1;
            }
        }
        // A pod whose last container completed while others still run is not "Completed".
        if reason == "Completed" && has_running {
            reason = if condition_true("Ready") {
                "Running"
            } else {
                "NotReady"
            }
            .to_string();
        }
    }

    if object::deletion_timestamp(pod).is_some() {
        if text(pod, "/status/reason") == "NodeLost" {
            reason = "Unknown".to_string();
        } else if !matches!(phase, "Succeeded" | "Failed") {
            reason = "Terminating".to_string();
        }
    }

    let restarts_text = match restarts.last {
        Some(last) if restarts.count != 0 => {
            format!(
                "{} ({} ago)",
                restarts.count,
                signed_human_duration(now.duration_since(last))
            )
        }
        _ => restarts.count.to_string(),
    };
    let none_if_empty = |s: &str| {
        if s.is_empty() {
            "<none>".to_string()
        } else {
            s.to_string()
        }
    };
    let ip = pod
        .pointer("/status/podIPs/0/ip")
        .and_then(Value::as_str)
        .unwrap_or_else(|| text(pod, "/status/podIP"));
    let gates = array(pod, "/spec/readinessGates");
    let gates_text = if gates.is_empty() {
        "<none>".to_string()
    } else {
        let passed = gates
            .iter()
            .filter(|g| {
                let kind = text(g, "/conditionType");
                conditions
                    .iter()
                    .find(|c| text(c, "/type") == kind)
                    .is_some_and(|c| text(c, "/status") == "True")
            })
            .count();
        format!("{passed}/{}", gates.len())
    };
    vec![
        object::name(pod).unwrap_or_default().into(),
        format!("{ready}/{total}").into(),
        reason.into(),
        restarts_text.into(),
        since(meta_time(pod, "creationTimestamp"), now).into(),
        none_if_empty(ip).into(),
        none_if_empty(text(pod, "/spec/nodeName")).into(),
        none_if_empty(text(pod, "/status/nominatedNodeName")).into(),
        gates_text.into(),
    ]
}

/// Restarts summed over containers, with the latest time one of them last terminated.
#[derive(Debug, Default, Clone, Copy)]
struct Restarts {
    count: i64,
    last: Option<Timestamp>,
}

impl Restarts {
    fn add(&mut self, c: &ContainerStatus<'_>) {
        self.count += int(c.0, "/restartCount");
        let finished =
            c.0.pointer("/lastState/terminated/finishedAt")
                .and_then(Value::as_str)
                .and_then(parse_time);
        if finished > self.last {
            self.last = finished;
        }
    }
}

/// A `containerStatuses[]` entry.
struct ContainerStatus<'a>(&'a Value);

impl ContainerStatus<'_> {
    fn name(&self) -> &str {
        text(self.0, "/name")
    }

    fn flag(&self, field: &str) -> bool {
        self.0.get(field).and_then(Value::as_bool).unwrap_or(false)
    }

    fn terminated(&self) -> Option<&Value> {
        self.0
            .pointer("/state/terminated")
            .filter(|v| v.is_object())
    }

    fn running(&self) -> bool {
        self.0
            .pointer("/state/running")
            .is_some_and(Value::is_object)
    }

    fn waiting_reason(&self) -> Option<&str> {
        self.0
            .pointer("/state/waiting/reason")
            .and_then(Value::as_str)
            .filter(|r| !r.is_empty())
    }
}

/// A terminated state's reason, or `Signal:N` / `ExitCode:N` when it has none.
fn terminated_reason(t: &Value) -> String {
    match text(t, "/reason") {
        "" if int(t, "/signal") != 0 => format!("Signal:{}", int(t, "/signal")),
        "" => format!("ExitCode:{}", int(t, "/exitCode")),
        r => r.to_string(),
    }
}

fn service_cells(svc: &Value, name: Value, age: Value) -> Vec<Value> {
    let kind = text(svc, "/spec/type");
    let cluster_ip = svc
        .pointer("/spec/clusterIPs/0")
        .and_then(Value::as_str)
        .or_else(|| svc.pointer("/spec/clusterIP").and_then(Value::as_str))
        .filter(|ip| !ip.is_empty())
        .unwrap_or("<none>");
    let external_ips: Vec<&str> = array(svc, "/spec/externalIPs")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let external = match kind {
        "ClusterIP" | "NodePort" if external_ips.is_empty() => "<none>".to_string(),
        "ClusterIP" | "NodePort" => external_ips.join(","),
        "LoadBalancer" => {
            let ingress: BTreeSet<&str> = array(svc, "/status/loadBalancer/ingress")
                .iter()
                .map(|i| match text(i, "/ip") {
                    "" => text(i, "/hostname"),
                    ip => ip,
                })
                .filter(|s| !s.is_empty())
                .collect();
            let all: Vec<&str> = ingress.into_iter().chain(external_ips).collect();
            if all.is_empty() {
                "<pending>".to_string()
            } else {
                all.join(",")
            }
        }
        "ExternalName" => text(svc, "/spec/externalName").to_string(),
        _ => "<unknown>".to_string(),
    };
    let ports: Vec<String> = array(svc, "/spec/ports")
        .iter()
        .map(|p| {
            let protocol = match text(p, "/protocol") {
                "" => "TCP",
                proto => proto,
            };
            match int(p, "/nodePort") {
                0 => format!("{}/{protocol}", int(p, "/port")),
                node_port => format!("{}:{node_port}/{protocol}", int(p, "/port")),
            }
        })
        .collect();
    let ports = if ports.is_empty() {
        "<none>".to_string()
    } else {
        ports.join(",")
    };
    let selector = format_labels(&string_map(svc.pointer("/spec/selector")));
    vec![
        name,
        kind.into(),
        cluster_ip.into(),
        external.into(),
        ports.into(),
        age,
        selector.into(),
    ]
}

/// Up to three `ip:port` endpoints, then ` + N more...`, as kubectl shows them.
fn format_endpoints(ep: &Value) -> String {
    const MAX: usize = 3;
    let subsets = array(ep, "/subsets");
    if subsets.is_empty() {
        return "<none>".to_string();
    }
    let mut shown: Vec<String> = Vec::new();
    let mut total = 0;
    for subset in subsets {
        let addresses: Vec<&str> = array(subset, "/addresses")
            .iter()
            .map(|a| text(a, "/ip"))
            .collect();
        let ports = array(subset, "/ports");
        if ports.is_empty() {
            // A headless service without ports lists bare addresses.
            total += addresses.len();
            shown.extend(
                addresses
                    .iter()
                    .take(MAX - shown.len().min(MAX))
                    .map(|ip| ip.to_string()),
            );
            continue;
        }
        for port in ports {
            total += addresses.len();
            let port = int(port, "/port");
            shown.extend(addresses.iter().take(MAX - shown.len().min(MAX)).map(|ip| {
                if ip.contains(':') {
                    format!("[{ip}]:{port}")
                } else {
                    format!("{ip}:{port}")
                }
            }));
        }
    }
    let list = shown.join(",");
    if total > MAX {
        format!("{list} + {} more...", total - MAX)
    } else {
        list
    }
}

fn node_cells(node: &Value, name: Value, age: Value) -> Vec<Value> {
    let ready = array(node, "/status/conditions")
        .iter()
        .rev()
        .find(|c| text(c, "/type") == "Ready");
    let mut status = vec![match ready {
        Some(c) if text(c, "/status") == "True" => "Ready",
        Some(_) => "NotReady",
        None => "Unknown",
    }];
    if node
        .pointer("/spec/unschedulable")
        .and_then(Value::as_bool)
        .unwrap_or(false)
    {
        status.push("SchedulingDisabled");
    }
    let roles: BTreeSet<String> = object::labels(node)
        .into_iter()
        .filter_map(|(k, v)| match k.strip_prefix("node-role.kubernetes.io/") {
            Some(role) if !role.is_empty() => Some(role.to_string()),
            Some(_) => None,
            None if k == "kubernetes.io/role" && !v.is_empty() => Some(v),
            None => None,
        })
        .collect();
    let roles = if roles.is_empty() {
        "<none>".to_string()
    } else {
        roles.into_iter().collect::<Vec<_>>().join(",")
    };
    let address = |kind: &str| {
        array(node, "/status/addresses")
            .iter()
            .find(|a| text(a, "/type") == kind)
            .map_or("<none>", |a| text(a, "/address"))
    };
    let info = |field: &str| match text(node, &format!("/status/nodeInfo/{field}")) {
        "" => "<unknown>",
        v => v,
    };
    vec![
        name,
        status.join(",").into(),
        roles.into(),
        age,
        text(node, "/status/nodeInfo/kubeletVersion").into(),
        address("InternalIP").into(),
        address("ExternalIP").into(),
        info("osImage").into(),
        info("kernelVersion").into(),
        info("containerRuntimeVersion").into(),
    ]
}

fn event_cells(ev: &Value, name: Value, now: Timestamp) -> Vec<Value> {
    let stamp = |pointer: &str| {
        ev.pointer(pointer)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    let first = match stamp("/firstTimestamp") {
        Some(t) => since(Some(t), now),
        None => since(stamp("/eventTime"), now),
    };
    let mut last = match stamp("/lastTimestamp") {
        Some(t) => since(Some(t), now),
        None => first.clone(),
    };
    let mut count = int(ev, "/count");
    if let Some(series) = ev.get("series").filter(|s| s.is_object()) {
        last = since(stamp("/series/lastObservedTime"), now);
        count = int(series, "/count");
    } else if count == 0 {
        // Events of the newer API report singletons without a count.
        count = 1;
    }
    let kind = text(ev, "/involvedObject/kind").to_lowercase();
    let object = match text(ev, "/involvedObject/name") {
        "" => kind,
        n => format!("{kind}/{n}"),
    };
    let first_non_empty = |a: &'static str, b: &'static str| match text(ev, a) {
        "" => text(ev, b),
        v => v,
    };
    let component = first_non_empty("/source/component", "/reportingComponent");
    let instance = first_non_empty("/source/host", "/reportingInstance");
    let source = if instance.is_empty() {
        component.to_string()
    } else {
        format!("{component}, {instance}")
    };
    vec![
        last.into(),
        text(ev, "/type").into(),
        text(ev, "/reason").into(),
        object.into(),
        text(ev, "/involvedObject/fieldPath").into(),
        source.into(),
        text(ev, "/message").trim().into(),
        first.into(),
        count.into(),
        name,
    ]
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::resource::RESOURCES;

    fn kind(kind: &str) -> &'static Resource {
        RESOURCES
            .iter()
            .find(|r| r.kind == kind)
            .unwrap_or_else(|| panic!("no kind {kind}"))
    }

    fn now() -> Timestamp {
        "2026-01-01T12:00:00Z".parse().expect("valid time stamp")
    }

    /// An object created one hour before [`now`].
    fn meta(name: &str) -> Value {
        json!({"name": name, "namespace": "default", "creationTimestamp": "2026-01-01T11:00:00Z"})
    }

    fn cells(k: &str, obj: &Value) -> Vec<Value> {
        let cells = row_cells(kind(k), obj, now());
        assert_eq!(
            cells.len(),
            columns(kind(k)).len(),
            "{k}: one cell per column"
        );
        cells
    }

    #[test]
    fn human_durations() {
        let cases = [
            (0, "0s"),
            (8, "8s"),
            (119, "119s"),
            (120, "2m"),
            (150, "2m30s"),
            (599, "9m59s"),
            (600, "10m"),
            (179 * 60 + 59, "179m"),
            (3 * 3600, "3h"),
            (3 * 3600 + 600, "3h10m"),
            (8 * 3600 + 59, "8h"),
            (47 * 3600, "47h"),
            (48 * 3600, "2d"),
            (51 * 3600, "2d3h"),
            (8 * 86400, "8d"),
            (729 * 86400, "729d"),
            (730 * 86400, "2y"),
            (775 * 86400, "2y45d"),
            (8 * 365 * 86400, "8y"),
            (20 * 365 * 86400, "20y"),
        ];
        for (secs, want) in cases {
            assert_eq!(human_duration(Duration::from_secs(secs)), want, "{secs}s");
        }
        assert_eq!(human_duration(Duration::from_millis(1999)), "1s");
    }

    #[test]
    fn ages() {
        let cases = [
            (Some("2026-01-01T11:59:52Z"), "8s"),
            (Some("2025-12-29T09:00:00Z"), "3d3h"),
            (Some("2026-01-01T12:00:01Z"), "0s"),
            (Some("2026-01-01T12:00:05Z"), "<invalid>"),
            (Some("yesterday"), "<unknown>"),
            (None, "<unknown>"),
        ];
        for (stamp, want) in cases {
            assert_eq!(since(stamp, now()), want, "{stamp:?}");
        }
    }

    #[test]
    fn every_kind_has_named_columns_and_one_cell_each() {
        for r in RESOURCES {
            let defs = column_definitions(r);
            let defs = defs.as_array().expect("an array");
            assert_eq!(defs.len(), columns(r).len(), "{}", r.kind);
            assert!(
                defs.iter().any(|d| d["format"] == "name"),
                "{}: a name column",
                r.kind
            );
            for d in defs {
                for field in ["name", "type", "format", "description", "priority"] {
                    assert!(d.get(field).is_some(), "{}: {field}", r.kind);
                }
            }
            assert_eq!(
                row_cells(r, &json!({}), now()).len(),
                defs.len(),
                "{}",
                r.kind
            );
        }
        let pod = column_definitions(kind("Pod"));
        assert_eq!(
            pod[0],
            json!({"name": "Name", "type": "string", "format": "name", "description": NAME.description, "priority": 0})
        );
        assert_eq!(pod[5]["name"], "IP");
        assert_eq!(pod[5]["priority"], 1);
    }

    #[test]
    fn column_names_follow_upstream() {
        let names = |k: &str| {
            columns(kind(k))
                .iter()
                .map(|c| (c.name, c.priority))
                .collect::<Vec<_>>()
        };
        let cases: [(&str, &[(&str, i32)]); 6] = [
            (
                "Pod",
                &[
                    ("Name", 0),
                    ("Ready", 0),
                    ("Status", 0),
                    ("Restarts", 0),
                    ("Age", 0),
                    ("IP", 1),
                    ("Node", 1),
                    ("Nominated Node", 1),
                    ("Readiness Gates", 1),
                ],
            ),
            (
                "Deployment",
                &[
                    ("Name", 0),
                    ("Ready", 0),
                    ("Up-to-date", 0),
                    ("Available", 0),
                    ("Age", 0),
                    ("Containers", 1),
                    ("Images", 1),
                    ("Selector", 1),
                ],
            ),
            (
                "Service",
                &[
                    ("Name", 0),
                    ("Type", 0),
                    ("Cluster-IP", 0),
                    ("External-IP", 0),
                    ("Port(s)", 0),
                    ("Age", 0),
                    ("Selector", 1),
                ],
            ),
            (
                "Node",
                &[
                    ("Name", 0),
                    ("Status", 0),
                    ("Roles", 0),
                    ("Age", 0),
                    ("Version", 0),
                    ("Internal-IP", 1),
                    ("External-IP", 1),
                    ("OS-Image", 1),
                    ("Kernel-Version", 1),
                    ("Container-Runtime", 1),
                ],
            ),
            (
                "Event",
                &[
                    ("Last Seen", 0),
                    ("Type", 0),
                    ("Reason", 0),
                    ("Object", 0),
                    ("Subobject", 1),
                    ("Source", 1),
                    ("Message", 0),
                    ("First Seen", 1),
                    ("Count", 1),
                    ("Name", 1),
                ],
            ),
            ("Namespace", &[("Name", 0), ("Status", 0), ("Age", 0)]),
        ];
        for (k, want) in cases {
            assert_eq!(names(k), want, "{k}");
        }
    }

    fn running(name: &str, restarts: i64, last_finished: Option<&str>) -> Value {
        let mut c = json!({"name": name, "ready": true, "restartCount": restarts, "state": {"running": {"startedAt": "2026-01-01T11:00:00Z"}}});
        if let Some(t) = last_finished {
            c["lastState"] = json!({"terminated": {"exitCode": 1, "finishedAt": t}});
        }
        c
    }

    #[test]
    fn pod_cells_per_state() {
        let spec =
            json!({"containers": [{"name": "web"}, {"name": "sidecar"}], "nodeName": "node-1"});
        let pod = |status: Value| json!({"metadata": meta("web-1"), "spec": spec.clone(), "status": status});
        let running_pod = pod(json!({
            "phase": "Running", "podIP": "10.244.1.5", "podIPs": [{"ip": "10.244.1.5"}],
            "conditions": [{"type": "Ready", "status": "True"}],
            "containerStatuses": [running("web", 0, None), running("sidecar", 0, None)],
        }));
        let crashlooping = pod(json!({
            "phase": "Running",
            "containerStatuses": [
                running("web", 0, None),
                {"name": "sidecar", "ready": false, "restartCount": 3,
                 "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                 "lastState": {"terminated": {"exitCode": 1, "reason": "Error", "finishedAt": "2026-01-01T11:58:00Z"}}},
            ],
        }));
        let creating = pod(json!({
            "phase": "Pending",
            "containerStatuses": [
                {"name": "web", "ready": false, "restartCount": 0, "state": {"waiting": {"reason": "ContainerCreating"}}},
                {"name": "sidecar", "ready": false, "restartCount": 0, "state": {"waiting": {"reason": "ContainerCreating"}}},
            ],
        }));
        let mut terminating = running_pod.clone();
        terminating["metadata"]["deletionTimestamp"] = json!("2026-01-01T11:59:00Z");
        let completed = pod(json!({
            "phase": "Succeeded",
            "containerStatuses": [
                {"name": "web", "ready": false, "restartCount": 0, "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}},
                {"name": "sidecar", "ready": false, "restartCount": 0, "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}},
            ],
        }));
        let mut completed_deleted = completed.clone();
        completed_deleted["metadata"]["deletionTimestamp"] = json!("2026-01-01T11:59:00Z");
        let half_completed = pod(json!({
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "False"}],
            "containerStatuses": [
                running("web", 0, None),
                {"name": "sidecar", "ready": false, "restartCount": 0, "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}},
            ],
        }));
        let killed = pod(json!({
            "phase": "Failed",
            "containerStatuses": [
                running("web", 0, None),
                {"name": "sidecar", "ready": false, "restartCount": 0, "state": {"terminated": {"exitCode": 137, "signal": 9}}},
            ],
        }));
        let restarted = pod(json!({
            "phase": "Running", "podIPs": [{"ip": "10.244.1.6"}],
            "containerStatuses": [running("web", 2, Some("2026-01-01T11:50:00Z")), running("sidecar", 1, Some("2026-01-01T11:57:30Z"))],
        }));
        let unscheduled = json!({"metadata": meta("p"), "spec": {"containers": [{"name": "c"}]}, "status": {"phase": "Pending"}});
        let gated = json!({"metadata": meta("p"), "spec": {"containers": [{"name": "c"}]},
            "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False", "reason": "SchedulingGated"}]}});
        let mut lost = running_pod.clone();
        lost["metadata"]["deletionTimestamp"] = json!("2026-01-01T11:59:00Z");
        lost["status"]["reason"] = json!("NodeLost");
        let evicted = pod(json!({"phase": "Failed", "reason": "Evicted"}));

        let cases: Vec<(&str, &Value, [&str; 9])> = vec![
            (
                "running",
                &running_pod,
                [
                    "web-1",
                    "2/2",
                    "Running",
                    "0",
                    "60m",
                    "10.244.1.5",
                    "node-1",
                    "<none>",
                    "<none>",
                ],
            ),
            (
                "crashlooping",
                &crashlooping,
                [
                    "web-1",
                    "1/2",
                    "CrashLoopBackOff",
                    "3 (2m ago)",
                    "60m",
                    "<none>",
                    "node-1",
                    "<none>",
                    "<none>",
                ],
            ),
            (
                "creating",
                &creating,
                [
                    "web-1",
                    "0/2",
                    "ContainerCreating",
                    "0",
                    "60m",
                    "<none>",
                    "node-1",
                    "<none>",
                    "<none>",
                ],
            ),
            (
                "terminating",
                &terminating,
                [
                    "web-1",
                    "2/2",
                    "Terminating",
                    "0",
                    "60m",
                    "10.244.1.5",
                    "node-1",
                    "<none>",
                    "<none>",
                ],
            ),
            (
                "completed",
                &completed,
                [
                    "web-1",
                    "0/2",
                    "Completed",
                    "0",
                    "60m",
                    "<none>",
                    "node-1",
                    "<none>",
                    "<none>",
                ],
            ),
            (
                "completed and deleted",
                &completed_deleted,
                [
                    "web-1",
                    "0/2",
                    "Completed",
                    "0",
                    "60m",
                    "<none>",
                    "node-1",
                    "<none>",
                    "<none>",
                ],
            ),
            (
                "one container completed",
                &half_completed,
                [
                    "web-1", "1/2", "NotReady", "0", "60m", "<none>", "node-1", "<none>", "<none>",
                ],
            ),
            (
                "killed by signal",
                &killed,
                [
                    "web-1", "1/2", "Signal:9", "0", "60m", "<none>", "node-1", "<none>", "<none>",
                ],
            ),
            (
                "restarted",
                &restarted,
                [
                    "web-1",
                    "2/2",
                    "Running",
                    "3 (2m30s ago)",
                    "60m",
                    "10.244.1.6",
                    "node-1",
                    "<none>",
                    "<none>",
                ],
            ),
            (
                "unscheduled",
                &unscheduled,
                [
                    "p", "0/1", "Pending", "0", "60m", "<none>", "<none>", "<none>", "<none>",
                ],
            ),
            (
                "scheduling gated",
                &gated,
                [
                    "p",
                    "0/1",
                    "SchedulingGated",
                    "0",
                    "60m",
                    "<none>",
                    "<none>",
                    "<none>",
                    "<none>",
                ],
            ),
            (
                "node lost",
                &lost,
                [
                    "web-1",
                    "2/2",
                    "Unknown",
                    "0",
                    "60m",
                    "10.244.1.5",
                    "node-1",
                    "<none>",
                    "<none>",
                ],
            ),
            (
                "evicted",
                &evicted,
                [
                    "web-1", "0/2", "Evicted", "0", "60m", "<none>", "node-1", "<none>", "<none>",
                ],
            ),
        ];
        for (name, obj, want) in cases {
            assert_eq!(cells("Pod", obj), want.map(Value::from).to_vec(), "{name}");
        }
    }

    #[test]
    fn pod_init_containers_and_readiness_gates() {
        let spec = json!({
            "initContainers": [{"name": "migrate"}, {"name": "proxy", "restartPolicy": "Always"}],
            "containers": [{"name": "web"}],
            "readinessGates": [{"conditionType": "example.com/lb"}, {"conditionType": "example.com/dns"}],
        });
        let pod = |status: Value| json!({"metadata": meta("web"), "spec": spec.clone(), "status": status});
        let waiting_init = pod(json!({"phase": "Pending",
            "initContainerStatuses": [{"name": "migrate", "restartCount": 0, "state": {"waiting": {"reason": "PodInitializing"}}}]}));
        let failing_init = pod(json!({"phase": "Pending",
            "initContainerStatuses": [{"name": "migrate", "restartCount": 4, "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                                       "lastState": {"terminated": {"exitCode": 1, "finishedAt": "2026-01-01T11:59:00Z"}}}]}));
        let init_error = pod(json!({"phase": "Pending",
            "initContainerStatuses": [{"name": "migrate", "restartCount": 0, "state": {"terminated": {"exitCode": 2}}}]}));
        let sidecar_starting = pod(json!({"phase": "Pending",
        "initContainerStatuses": [
            {"name": "migrate", "restartCount": 0, "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}},
            {"name": "proxy", "restartCount": 0, "started": false, "state": {"running": {}}},
        ]}));
        let all_running = pod(json!({"phase": "Running",
            "conditions": [{"type": "Initialized", "status": "True"}, {"type": "Ready", "status": "True"},
                           {"type": "example.com/lb", "status": "True"}, {"type": "example.com/dns", "status": "False"}],
            "initContainerStatuses": [
                {"name": "migrate", "restartCount": 0, "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}},
                {"name": "proxy", "restartCount": 1, "started": true, "ready": true, "state": {"running": {}},
                 "lastState": {"terminated": {"exitCode": 1, "finishedAt": "2026-01-01T11:00:00Z"}}},
            ],
            "containerStatuses": [running("web", 0, None)]}));
        let cases: Vec<(&str, &Value, [&str; 4])> = vec![
            (
                "waiting for the first init container",
                &waiting_init,
                ["0/2", "Init:0/2", "0", "0/2"],
            ),
            (
                "init container crashlooping",
                &failing_init,
                ["0/2", "Init:CrashLoopBackOff", "4 (60s ago)", "0/2"],
            ),
            (
                "init container failed",
                &init_error,
                ["0/2", "Init:ExitCode:2", "0", "0/2"],
            ),
            (
                "sidecar not started",
                &sidecar_starting,
                ["0/2", "Init:1/2", "0", "0/2"],
            ),
            (
                "sidecar and app running",
                &all_running,
                ["2/2", "Running", "1 (60m ago)", "1/2"],
            ),
        ];
        for (name, obj, want) in cases {
            let got = cells("Pod", obj);
            assert_eq!([&got[1], &got[2], &got[3], &got[8]], want, "{name}");
        }
    }

    #[test]
    fn workload_cells() {
        let template = json!({"spec": {"containers": [{"name": "web", "image": "hello:1.0"}, {"name": "log", "image": "busybox"}]}});
        let deployment = json!({
            "metadata": meta("helloworld"),
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "helloworld"}}, "template": template.clone()},
            "status": {"readyReplicas": 2, "updatedReplicas": 3, "availableReplicas": 2},
        });
        let new_deployment = json!({"metadata": meta("fresh"), "spec": {"selector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["a", "b"]}]}}});
        let replica_set = json!({
            "metadata": meta("helloworld-5d4f"),
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "helloworld", "pod-template-hash": "5d4f"}}, "template": template.clone()},
            "status": {"replicas": 2, "readyReplicas": 1},
        });
        let daemon_set = json!({
            "metadata": meta("agent"),
            "spec": {"selector": {"matchLabels": {"app": "agent"}}, "template": {"spec": {"nodeSelector": {"kubernetes.io/os": "linux"}, "containers": [{"name": "a", "image": "agent:1"}]}}},
            "status": {"desiredNumberScheduled": 2, "currentNumberScheduled": 2, "numberReady": 1, "updatedNumberScheduled": 2, "numberAvailable": 1},
        });
        let stateful_set = json!({"metadata": meta("db"), "spec": {"replicas": 3, "template": template}, "status": {"readyReplicas": 3}});
        let cases: Vec<(&str, Value, Value)> = vec![
            (
                "Deployment",
                deployment,
                json!([
                    "helloworld",
                    "2/3",
                    3,
                    2,
                    "60m",
                    "web,log",
                    "hello:1.0,busybox",
                    "app=helloworld"
                ]),
            ),
            (
                "Deployment",
                new_deployment,
                json!(["fresh", "0/1", 0, 0, "60m", "", "", "app in (a,b)"]),
            ),
            (
                "Deployment",
                json!({"metadata": meta("bad"), "spec": {"selector": {"matchLabels": {"-": "x"}}}}),
                json!(["bad", "0/1", 0, 0, "60m", "", "", "<invalid>"]),
            ),
            (
                "ReplicaSet",
                replica_set,
                json!([
                    "helloworld-5d4f",
                    2,
                    2,
                    1,
                    "60m",
                    "web,log",
                    "hello:1.0,busybox",
                    "app=helloworld,pod-template-hash=5d4f"
                ]),
            ),
            (
                "ReplicaSet",
                json!({"metadata": meta("empty")}),
                json!(["empty", 1, 0, 0, "60m", "", "", "<none>"]),
            ),
            (
                "DaemonSet",
                daemon_set,
                json!([
                    "agent",
                    2,
                    2,
                    1,
                    2,
                    1,
                    "kubernetes.io/os=linux",
                    "60m",
                    "a",
                    "agent:1",
                    "app=agent"
                ]),
            ),
            (
                "StatefulSet",
                stateful_set,
                json!(["db", "3/3", "60m", "web,log", "hello:1.0,busybox"]),
            ),
        ];
        for (k, obj, want) in cases {
            assert_eq!(Value::from(cells(k, &obj)), want, "{k}");
        }
    }

    #[test]
    fn service_and_endpoints_cells() {
        let svc = |spec: Value, status: Value| json!({"metadata": meta("web"), "spec": spec, "status": status});
        let cases: Vec<(&str, Value, Value)> = vec![
            (
                "node ports",
                svc(
                    json!({"type": "NodePort", "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"], "selector": {"app": "web"},
                           "ports": [{"port": 80, "nodePort": 30080, "protocol": "TCP"}, {"port": 443, "protocol": "TCP"}, {"port": 53, "protocol": "UDP", "nodePort": 30053}]}),
                    json!({}),
                ),
                json!([
                    "web",
                    "NodePort",
                    "10.96.0.10",
                    "<none>",
                    "80:30080/TCP,443/TCP,53:30053/UDP",
                    "60m",
                    "app=web"
                ]),
            ),
            (
                "cluster IP with external IPs",
                svc(
                    json!({"type": "ClusterIP", "clusterIP": "10.96.0.11", "externalIPs": ["192.0.2.1", "192.0.2.2"], "ports": [{"port": 8080}]}),
                    json!({}),
                ),
                json!([
                    "web",
                    "ClusterIP",
                    "10.96.0.11",
                    "192.0.2.1,192.0.2.2",
                    "8080/TCP",
                    "60m",
                    "<none>"
                ]),
            ),
            (
                "headless without ports",
                svc(
                    json!({"type": "ClusterIP", "clusterIP": "None", "clusterIPs": ["None"]}),
                    json!({}),
                ),
                json!([
                    "web",
                    "ClusterIP",
                    "None",
                    "<none>",
                    "<none>",
                    "60m",
                    "<none>"
                ]),
            ),
            (
                "pending load balancer",
                svc(
                    json!({"type": "LoadBalancer", "clusterIP": "10.96.0.12", "ports": [{"port": 80, "nodePort": 31000, "protocol": "TCP"}]}),
                    json!({}),
                ),
                json!([
                    "web",
                    "LoadBalancer",
                    "10.96.0.12",
                    "<pending>",
                    "80:31000/TCP",
                    "60m",
                    "<none>"
                ]),
            ),
            (
                "load balancer",
                svc(
                    json!({"type": "LoadBalancer", "externalIPs": ["192.0.2.9"]}),
                    json!({"loadBalancer": {"ingress": [{"hostname": "lb.example.com"}, {"ip": "198.51.100.1"}]}}),
                ),
                json!([
                    "web",
                    "LoadBalancer",
                    "<none>",
                    "198.51.100.1,lb.example.com,192.0.2.9",
                    "<none>",
                    "60m",
                    "<none>"
                ]),
            ),
            (
                "external name",
                svc(
                    json!({"type": "ExternalName", "externalName": "db.example.com"}),
                    json!({}),
                ),
                json!([
                    "web",
                    "ExternalName",
                    "<none>",
                    "db.example.com",
                    "<none>",
                    "60m",
                    "<none>"
                ]),
            ),
        ];
        for (name, obj, want) in cases {
            assert_eq!(Value::from(cells("Service", &obj)), want, "{name}");
        }

        let ep = |subsets: Value| json!({"metadata": meta("web"), "subsets": subsets});
        let addresses =
            |ips: &[&str]| Value::from(ips.iter().map(|ip| json!({"ip": ip})).collect::<Vec<_>>());
        let cases: Vec<(&str, Value, &str)> = vec![
            ("none", ep(json!([])), "<none>"),
            (
                "no subsets field",
                json!({"metadata": meta("web")}),
                "<none>",
            ),
            (
                "two",
                ep(
                    json!([{"addresses": addresses(&["10.0.0.1", "10.0.0.2"]), "ports": [{"port": 80}]}]),
                ),
                "10.0.0.1:80,10.0.0.2:80",
            ),
            (
                "two ports",
                ep(
                    json!([{"addresses": addresses(&["10.0.0.1", "10.0.0.2"]), "ports": [{"port": 80}, {"port": 443}]}]),
                ),
                "10.0.0.1:80,10.0.0.2:80,10.0.0.1:443 + 1 more...",
            ),
            (
                "many subsets",
                ep(
                    json!([{"addresses": addresses(&["10.0.0.1", "10.0.0.2"]), "ports": [{"port": 80}]}, {"addresses": addresses(&["10.0.1.1", "10.0.1.2", "10.0.1.3"]), "ports": [{"port": 80}]}]),
                ),
                "10.0.0.1:80,10.0.0.2:80,10.0.1.1:80 + 2 more...",
            ),
            (
                "headless",
                ep(json!([{"addresses": addresses(&["10.0.0.1"])}])),
                "10.0.0.1",
            ),
            (
                "ipv6",
                ep(json!([{"addresses": addresses(&["fd00::1"]), "ports": [{"port": 80}]}])),
                "[fd00::1]:80",
            ),
        ];
        for (name, obj, want) in cases {
            assert_eq!(cells("Endpoints", &obj)[1], want, "{name}");
        }
    }

    #[test]
    fn node_cells_per_state() {
        let node = |labels: Value, unschedulable: bool, conditions: Value| {
            json!({
                "metadata": {"name": "node-1", "creationTimestamp": "2025-12-31T12:00:00Z", "labels": labels},
                "spec": {"unschedulable": unschedulable},
                "status": {
                    "conditions": conditions,
                    "addresses": [{"type": "Hostname", "address": "node-1"}, {"type": "InternalIP", "address": "10.0.0.11"}],
                    "nodeInfo": {"kubeletVersion": "v1.32.0-rkube", "osImage": "Debian GNU/Linux 12", "kernelVersion": "6.1.0", "containerRuntimeVersion": "rkube://0.1.0"},
                },
            })
        };
        let ready = json!([{"type": "MemoryPressure", "status": "False"}, {"type": "Ready", "status": "True"}]);
        let not_ready = json!([{"type": "Ready", "status": "False"}]);
        let unknown = json!([{"type": "Ready", "status": "Unknown"}]);
        let roles = json!({"node-role.kubernetes.io/control-plane": "", "node-role.kubernetes.io/worker": "", "kubernetes.io/role": "edge", "node-role.kubernetes.io/": "x"});
        let cases: Vec<(&str, Value, [&str; 2])> = vec![
            (
                "ready",
                node(json!({}), false, ready.clone()),
                ["Ready", "<none>"],
            ),
            (
                "not ready",
                node(json!({}), false, not_ready),
                ["NotReady", "<none>"],
            ),
            (
                "condition unknown",
                node(json!({}), false, unknown),
                ["NotReady", "<none>"],
            ),
            (
                "no conditions yet",
                node(json!({}), false, json!([])),
                ["Unknown", "<none>"],
            ),
            (
                "cordoned",
                node(roles, true, ready),
                ["Ready,SchedulingDisabled", "control-plane,edge,worker"],
            ),
        ];
        for (name, obj, [status, roles]) in cases {
            let got = cells("Node", &obj);
            let want = json!([
                "node-1",
                status,
                roles,
                "24h",
                "v1.32.0-rkube",
                "10.0.0.11",
                "<none>",
                "Debian GNU/Linux 12",
                "6.1.0",
                "rkube://0.1.0"
            ]);
            assert_eq!(Value::from(got), want, "{name}");
        }
        let bare = cells("Node", &json!({"metadata": {"name": "n"}}));
        assert_eq!(
            Value::from(bare),
            json!([
                "n",
                "Unknown",
                "<none>",
                "<unknown>",
                "",
                "<none>",
                "<none>",
                "<unknown>",
                "<unknown>",
                "<unknown>"
            ])
        );
    }

    #[test]
    fn event_cells_per_shape() {
        let core = json!({
            "metadata": {"name": "web-1.17a2b", "namespace": "default"},
            "involvedObject": {"kind": "Pod", "name": "web-1", "namespace": "default", "fieldPath": "spec.containers{web}"},
            "reason": "BackOff", "type": "Warning", "message": "Back-off restarting failed container\n",
            "source": {"component": "kubelet", "host": "node-1"},
            "firstTimestamp": "2026-01-01T11:00:00Z", "lastTimestamp": "2026-01-01T11:58:00Z", "count": 7,
        });
        let new_api = json!({
            "metadata": {"name": "e2"}, "involvedObject": {"kind": "Node"},
            "reason": "Scheduled", "type": "Normal", "message": "ok",
            "reportingComponent": "default-scheduler", "eventTime": "2026-01-01T11:59:30.000000Z",
        });
        let series = json!({
            "metadata": {"name": "e3"}, "involvedObject": {"kind": "Deployment", "name": "helloworld"},
            "reason": "ScalingReplicaSet", "type": "Normal", "message": "Scaled up",
            "firstTimestamp": "2026-01-01T10:00:00Z", "count": 2,
            "series": {"count": 5, "lastObservedTime": "2026-01-01T11:59:50.000000Z"},
        });
        let cases: Vec<(&str, Value, Value)> = vec![
            (
                "core event",
                core,
                json!([
                    "2m",
                    "Warning",
                    "BackOff",
                    "pod/web-1",
                    "spec.containers{web}",
                    "kubelet, node-1",
                    "Back-off restarting failed container",
                    "60m",
                    7,
                    "web-1.17a2b"
                ]),
            ),
            (
                "new api singleton",
                new_api,
                json!([
                    "30s",
                    "Normal",
                    "Scheduled",
                    "node",
                    "",
                    "default-scheduler",
                    "ok",
                    "30s",
                    1,
                    "e2"
                ]),
            ),
            (
                "series",
                series,
                json!([
                    "10s",
                    "Normal",
                    "ScalingReplicaSet",
                    "deployment/helloworld",
                    "",
                    "",
                    "Scaled up",
                    "120m",
                    5,
                    "e3"
                ]),
            ),
        ];
        for (name, obj, want) in cases {
            assert_eq!(Value::from(cells("Event", &obj)), want, "{name}");
        }
    }

    #[test]
    fn small_kind_cells() {
        let cases: Vec<(&str, Value, Value)> = vec![
            (
                "Namespace",
                json!({"metadata": meta("team-a"), "status": {"phase": "Active"}}),
                json!(["team-a", "Active", "60m"]),
            ),
            (
                "ConfigMap",
                json!({"metadata": meta("cfg"), "data": {"a": "1", "b": "2"}, "binaryData": {"c": "AA=="}}),
                json!(["cfg", 3, "60m"]),
            ),
            (
                "ConfigMap",
                json!({"metadata": meta("empty")}),
                json!(["empty", 0, "60m"]),
            ),
            (
                "Secret",
                json!({"metadata": meta("tls"), "type": "kubernetes.io/tls", "data": {"tls.crt": "", "tls.key": ""}}),
                json!(["tls", "kubernetes.io/tls", 2, "60m"]),
            ),
            (
                "Secret",
                json!({"metadata": meta("s"), "type": "Opaque", "data": {"a": ""}, "stringData": {"a": "x", "b": "y"}}),
                json!(["s", "Opaque", 2, "60m"]),
            ),
            (
                "Lease",
                json!({"metadata": meta("kube-scheduler"), "spec": {"holderIdentity": "host-1_abc"}}),
                json!(["kube-scheduler", "host-1_abc", "60m"]),
            ),
            (
                "Lease",
                json!({"metadata": {"name": "node-1"}, "spec": {}}),
                json!(["node-1", "", "<unknown>"]),
            ),
        ];
        for (k, obj, want) in cases {
            assert_eq!(Value::from(cells(k, &obj)), want, "{k}");
        }
    }

    #[test]
    fn default_table_for_unknown_kinds() {
        let job = Resource {
            group: "batch",
            version: "v1",
            kind: "Job",
            plural: "jobs",
            singular: "job",
            scope: crate::resource::Scope::Namespaced,
            short_names: &[],
            categories: &[],
            subresources: &[],
        };
        let names: Vec<_> = columns(&job).iter().map(|c| (c.name, c.type_)).collect();
        assert_eq!(names, [("Name", "string"), ("Created At", "date")]);
        let obj = json!({"metadata": {"name": "j", "creationTimestamp": "2026-01-01T11:00:00.5Z"}});
        assert_eq!(
            row_cells(&job, &obj, now()),
            [json!("j"), json!("2026-01-01T11:00:00Z")]
        );
        assert_eq!(
            row_cells(&job, &json!({}), now()),
            [json!(""), json!("<unknown>")]
        );
    }
}
