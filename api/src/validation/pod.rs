//! Pod rules: the pod spec (containers, ports, env, volumes, resources, probes,
//! policies, tolerations), pod templates, and what a pod update may change.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EnvVar, Pod, PodSpec, PodTemplateSpec, Probe, ResourceRequirements,
    Toleration, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::meta::{self, validate_labels};
use super::render::Raw;
use super::{names, quantity, ErrorList, FieldError, Path, NEGATIVE};
use crate::resource::Resource;

const RESTART_POLICIES: &[&str] = &["Always", "OnFailure", "Never"];
const DNS_POLICIES: &[&str] = &["ClusterFirstWithHostNet", "ClusterFirst", "Default", "None"];
const PULL_POLICIES: &[&str] = &["Always", "IfNotPresent", "Never"];
const TERMINATION_MESSAGE_POLICIES: &[&str] = &["File", "FallbackToLogsOnError"];
/// Port protocols, sorted as Kubernetes lists them.
pub(super) const PROTOCOLS: &[&str] = &["SCTP", "TCP", "UDP"];
const TAINT_EFFECTS: &[&str] = &["NoSchedule", "PreferNoSchedule", "NoExecute"];
const HOST_PATH_TYPES: &[&str] = &[
    "",
    "DirectoryOrCreate",
    "Directory",
    "FileOrCreate",
    "File",
    "Socket",
    "CharDevice",
    "BlockDevice",
];
/// Volume sources in the order Kubernetes checks them.
const VOLUME_SOURCES: &[&str] = &[
    "hostPath",
    "emptyDir",
    "gitRepo",
    "gcePersistentDisk",
    "awsElasticBlockStore",
    "secret",
    "nfs",
    "iscsi",
    "glusterfs",
    "flocker",
    "persistentVolumeClaim",
    "rbd",
    "quobyte",
    "cinder",
    "cephfs",
    "flexVolume",
    "downwardAPI",
    "fc",
    "azureFile",
    "configMap",
    "vsphereVolume",
    "azureDisk",
    "photonPersistentDisk",
    "projected",
    "portworxVolume",
    "scaleIO",
    "storageos",
    "csi",
    "ephemeral",
    "image",
];
/// Fields a pod update may change, as Kubernetes words it.
const POD_UPDATE_MESSAGE: &str = "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)";

/// A Pod: metadata, spec, and on update the few spec fields that may change.
pub(super) fn validate_pod(resource: &Resource, pod: &Pod, old: Option<&Pod>) -> ErrorList {
    let mut errs = meta::validate_meta_for(resource, &pod.metadata, old.map(|o| &o.metadata));
    let spec_path = Path::new("spec");
    let default_spec = PodSpec::default();
    let spec = pod.spec.as_ref().unwrap_or(&default_spec);
    errs.extend(validate_pod_spec(spec, &[], &spec_path));
    if let Some(old) = old {
        let old_spec = old.spec.as_ref().unwrap_or(&default_spec);
        errs.extend(validate_pod_spec_update(spec, old_spec, &spec_path));
    }
    errs
}

/// A pod template inside a workload: its labels and annotations, then its pod spec.
/// `claim_volumes` are volume names the workload provides besides the spec's own (a
/// StatefulSet's volumeClaimTemplates).
pub(super) fn validate_pod_template(
    template: &PodTemplateSpec,
    claim_volumes: &[String],
    path: &Path,
) -> ErrorList {
    let mut errs = Vec::new();
    if let Some(meta) = &template.metadata {
        // Kubernetes reports template metadata at `template.labels`, not `template.metadata.labels`.
        errs.extend(validate_labels(meta.labels.as_ref(), &path.child("labels")));
        errs.extend(meta::validate_annotations(
            meta.annotations.as_ref(),
            &path.child("annotations"),
        ));
    }
    let default_spec = PodSpec::default();
    errs.extend(validate_pod_spec(
        template.spec.as_ref().unwrap_or(&default_spec),
        claim_volumes,
        &path.child("spec"),
    ));
    errs
}

/// The rules of a pod spec at `path`.
pub(super) fn validate_pod_spec(
    spec: &PodSpec,
    claim_volumes: &[String],
    path: &Path,
) -> ErrorList {
    let mut errs = Vec::new();
    let mut volumes = validate_volumes(
        spec.volumes.as_deref().unwrap_or_default(),
        &path.child("volumes"),
        &mut errs,
    );
    volumes.extend(claim_volumes.iter().cloned());
    let containers = &spec.containers;
    let init_containers = spec.init_containers.as_deref().unwrap_or_default();
    errs.extend(validate_containers(
        containers,
        &volumes,
        &path.child("containers"),
    ));
    errs.extend(validate_init_containers(
        init_containers,
        containers,
        &volumes,
        &path.child("initContainers"),
    ));
    errs.extend(validate_host_ports(
        containers.iter().chain(init_containers),
        path,
    ));

    match spec.restart_policy.as_deref().unwrap_or("") {
        "" => errs.push(FieldError::required(path.child("restartPolicy"), "")),
        p if RESTART_POLICIES.contains(&p) => {}
        p => errs.push(FieldError::not_supported(
            path.child("restartPolicy"),
            p,
            RESTART_POLICIES,
        )),
    }
    match spec.dns_policy.as_deref().unwrap_or("") {
        "" => errs.push(FieldError::required(path.child("dnsPolicy"), "")),
        p if DNS_POLICIES.contains(&p) => {}
        p => errs.push(FieldError::not_supported(
            path.child("dnsPolicy"),
            p,
            DNS_POLICIES,
        )),
    }
    errs.extend(validate_labels(
        spec.node_selector.as_ref(),
        &path.child("nodeSelector"),
    ));
    for (field, value) in [
        ("serviceAccountName", &spec.service_account_name),
        ("nodeName", &spec.node_name),
    ] {
        if let Some(v) = value.as_deref().filter(|v| !v.is_empty()) {
            for msg in names::is_dns1123_subdomain(v) {
                errs.push(FieldError::invalid(path.child(field), v, msg));
            }
        }
    }
    if let Some(seconds) = spec.active_deadline_seconds {
        if !(1..=i64::from(u32::MAX)).contains(&seconds) {
            errs.push(FieldError::invalid(
                path.child("activeDeadlineSeconds"),
                seconds,
                names::inclusive_range_error(1, i64::from(u32::MAX)),
            ));
        }
    }
    if let Some(seconds) = spec.termination_grace_period_seconds.filter(|s| *s < 0) {
        errs.push(FieldError::invalid(
            path.child("terminationGracePeriodSeconds"),
            seconds,
            NEGATIVE,
        ));
    }
    for (field, value) in [("hostname", &spec.hostname), ("subdomain", &spec.subdomain)] {
        if let Some(v) = value.as_deref().filter(|v| !v.is_empty()) {
            for msg in names::is_dns1123_label(v) {
                errs.push(FieldError::invalid(path.child(field), v, msg));
            }
        }
    }
    errs.extend(validate_tolerations(
        spec.tolerations.as_deref().unwrap_or_default(),
        &path.child("tolerations"),
    ));
    errs
}

/// Volumes: valid unique names and exactly one source each. Returns the valid names.
fn validate_volumes(volumes: &[Volume], path: &Path, errs: &mut ErrorList) -> BTreeSet<String> {
    let mut names_seen = BTreeSet::new();
    for (i, volume) in volumes.iter().enumerate() {
        let idx = path.index(i);
        let mut volume_errs = validate_volume_source(volume, &idx);
        if volume.name.is_empty() {
            volume_errs.push(FieldError::required(idx.child("name"), ""));
        } else {
            for msg in names::is_dns1123_label(&volume.name) {
                volume_errs.push(FieldError::invalid(idx.child("name"), &volume.name, msg));
            }
        }
        if names_seen.contains(&volume.name) {
            volume_errs.push(FieldError::duplicate(idx.child("name"), &volume.name));
        }
        if volume_errs.is_empty() {
            names_seen.insert(volume.name.clone());
        }
        errs.append(&mut volume_errs);
    }
    names_seen
}

fn validate_volume_source(volume: &Volume, path: &Path) -> ErrorList {
    let mut errs = Vec::new();
    let json = serde_json::to_value(volume).unwrap_or_default();
    let set: Vec<&str> = VOLUME_SOURCES
        .iter()
        .copied()
        .filter(|s| json.get(*s).is_some_and(|v| !v.is_null()))
        .collect();
    match set.split_first() {
        None => errs.push(FieldError::required(path, "must specify a volume type")),
        Some((_, extra)) => {
            for source in extra {
                errs.push(FieldError::forbidden(
                    path.child(source),
                    "may not specify more than 1 volume type",
                ));
            }
        }
    }
    if let Some(host_path) = &volume.host_path {
        let p = path.child("hostPath");
        if host_path.path.is_empty() {
            errs.push(FieldError::required(p.child("path"), ""));
        } else if host_path.path.split('/').any(|part| part == "..") {
            errs.push(FieldError::invalid(
                p.child("path"),
                &host_path.path,
                "must not contain '..'",
            ));
        }
        if let Some(t) = host_path
            .type_
            .as_deref()
            .filter(|t| !HOST_PATH_TYPES.contains(t))
        {
            errs.push(FieldError::not_supported(
                p.child("type"),
                t,
                HOST_PATH_TYPES,
            ));
        }
    }
    if let Some(secret) = &volume.secret {
        let p = path.child("secret");
        if secret.secret_name.as_deref().unwrap_or("").is_empty() {
            errs.push(FieldError::required(p.child("secretName"), ""));
        }
        errs.extend(validate_mode(secret.default_mode, &p.child("defaultMode")));
    }
    if let Some(config_map) = &volume.config_map {
        let p = path.child("configMap");
        if config_map.name.is_empty() {
            errs.push(FieldError::required(p.child("name"), ""));
        }
        errs.extend(validate_mode(
            config_map.default_mode,
            &p.child("defaultMode"),
        ));
    }
    if let Some(claim) = &volume.persistent_volume_claim {
        if claim.claim_name.is_empty() {
            errs.push(FieldError::required(
                path.child("persistentVolumeClaim").child("claimName"),
                "",
            ));
        }
    }
    if let Some(limit) = volume
        .empty_dir
        .as_ref()
        .and_then(|e| e.size_limit.as_ref())
    {
        errs.extend(validate_quantity(
            limit,
            &path.child("emptyDir").child("sizeLimit"),
        ));
    }
    errs
}

fn validate_mode(mode: Option<i32>, path: &Path) -> Option<FieldError> {
    mode.filter(|m| !(0..=0o777).contains(m)).map(|m| {
        FieldError::invalid(
            path,
            m,
            "must be a number between 0 and 0777 (octal), both inclusive",
        )
    })
}

fn validate_containers(
    containers: &[Container],
    volumes: &BTreeSet<String>,
    path: &Path,
) -> ErrorList {
    let mut errs = Vec::new();
    if containers.is_empty() {
        errs.push(FieldError::required(path, ""));
        return errs;
    }
    let mut seen = BTreeSet::new();
    for (i, container) in containers.iter().enumerate() {
        let idx = path.index(i);
        errs.extend(validate_container_common(container, volumes, &idx));
        if !container.name.is_empty() && !seen.insert(container.name.as_str()) {
            errs.push(FieldError::duplicate(idx.child("name"), &container.name));
        }
        if container.restart_policy.is_some() {
            errs.push(FieldError::forbidden(
                idx.child("restartPolicy"),
                "may not be set for non-init containers",
            ));
        }
        for (field, probe) in [
            ("livenessProbe", &container.liveness_probe),
            ("startupProbe", &container.startup_probe),
        ] {
            if let Some(threshold) = probe
                .as_ref()
                .and_then(|p| p.success_threshold)
                .filter(|t| *t != 1)
            {
                errs.push(FieldError::invalid(
                    idx.child(field).child("successThreshold"),
                    threshold,
                    "must be 1",
                ));
            }
        }
        if let Some(seconds) = container
            .readiness_probe
            .as_ref()
            .and_then(|p| p.termination_grace_period_seconds)
        {
            errs.push(FieldError::invalid(
                idx.child("readinessProbe")
                    .child("terminationGracePeriodSeconds"),
                seconds,
                "must not be set for readinessProbes",
            ));
        }
        for (field, probe) in [
            ("livenessProbe", &container.liveness_probe),
            ("readinessProbe", &container.readiness_probe),
            ("startupProbe", &container.startup_probe),
        ] {
            if let Some(probe) = probe {
                errs.extend(validate_probe(probe, &idx.child(field)));
            }
        }
    }
    errs
}

fn validate_init_containers(
    init: &[Container],
    containers: &[Container],
    volumes: &BTreeSet<String>,
    path: &Path,
) -> ErrorList {
    let mut errs = Vec::new();
    let mut seen: BTreeSet<&str> = containers.iter().map(|c| c.name.as_str()).collect();
    for (i, container) in init.iter().enumerate() {
        let idx = path.index(i);
        errs.extend(validate_container_common(container, volumes, &idx));
        let restart_always = match container.restart_policy.as_deref() {
            None => false,
            Some("Always") => true,
            Some(other) => {
                errs.push(FieldError::not_supported(
                    idx.child("restartPolicy"),
                    other,
                    &["Always"],
                ));
                false
            }
        };
        if seen.contains(container.name.as_str()) {
            errs.push(FieldError::duplicate(idx.child("name"), &container.name));
        } else if !container.name.is_empty() {
            seen.insert(container.name.as_str());
        }
        let probes = [
            ("livenessProbe", &container.liveness_probe),
            ("readinessProbe", &container.readiness_probe),
            ("startupProbe", &container.startup_probe),
        ];
        for (field, probe) in probes {
            let Some(probe) = probe else { continue };
            if restart_always {
                errs.extend(validate_probe(probe, &idx.child(field)));
            } else {
                errs.push(FieldError::forbidden(
                    idx.child(field),
                    "may not be set for init containers without restartPolicy=Always",
                ));
            }
        }
    }
    errs
}

/// Rules every container kind shares: name, image, ports, env, mounts, policies, resources.
fn validate_container_common(
    container: &Container,
    volumes: &BTreeSet<String>,
    path: &Path,
) -> ErrorList {
    let mut errs = Vec::new();
    if container.name.is_empty() {
        errs.push(FieldError::required(path.child("name"), ""));
    } else {
        for msg in names::is_dns1123_label(&container.name) {
            errs.push(FieldError::invalid(
                path.child("name"),
                &container.name,
                msg,
            ));
        }
    }
    let image = container.image.as_deref().unwrap_or("");
    if image.is_empty() {
        errs.push(FieldError::required(path.child("image"), ""));
    } else if image.trim() != image {
        errs.push(FieldError::invalid(
            path.child("image"),
            image,
            "must not have leading or trailing whitespace",
        ));
    }
    errs.extend(validate_container_ports(
        container.ports.as_deref().unwrap_or_default(),
        &path.child("ports"),
    ));
    errs.extend(validate_env(
        container.env.as_deref().unwrap_or_default(),
        &path.child("env"),
    ));
    errs.extend(validate_volume_mounts(
        container.volume_mounts.as_deref().unwrap_or_default(),
        volumes,
        &path.child("volumeMounts"),
    ));
    match container.termination_message_policy.as_deref() {
        None => {}
        Some("") => errs.push(FieldError::required(
            path.child("terminationMessagePolicy"),
            "",
        )),
        Some(p) if TERMINATION_MESSAGE_POLICIES.contains(&p) => {}
        Some(p) => errs.push(FieldError::not_supported(
            path.child("terminationMessagePolicy"),
            p,
            TERMINATION_MESSAGE_POLICIES,
        )),
    }
    match container.image_pull_policy.as_deref() {
        None => {}
        Some("") => errs.push(FieldError::required(path.child("imagePullPolicy"), "")),
        Some(p) if PULL_POLICIES.contains(&p) => {}
        Some(p) => errs.push(FieldError::not_supported(
            path.child("imagePullPolicy"),
            p,
            PULL_POLICIES,
        )),
    }
    if let Some(resources) = &container.resources {
        errs.extend(validate_resources(resources, &path.child("resources")));
    }
    errs
}

fn validate_container_ports(ports: &[ContainerPort], path: &Path) -> ErrorList {
    let mut errs = Vec::new();
    let mut seen = BTreeSet::new();
    for (i, port) in ports.iter().enumerate() {
        let idx = path.index(i);
        if let Some(name) = port.name.as_deref().filter(|n| !n.is_empty()) {
            let msgs = names::is_valid_port_name(name);
            if !msgs.is_empty() {
                for msg in msgs {
                    errs.push(FieldError::invalid(idx.child("name"), name, msg));
                }
            } else if !seen.insert(name) {
                errs.push(FieldError::duplicate(idx.child("name"), name));
            }
        }
        if port.container_port == 0 {
            errs.push(FieldError::required(idx.child("containerPort"), ""));
        } else {
            for msg in names::is_valid_port_num(i64::from(port.container_port)) {
                errs.push(FieldError::invalid(
                    idx.child("containerPort"),
                    port.container_port,
                    msg,
                ));
            }
        }
        if let Some(host_port) = port.host_port.filter(|p| *p != 0) {
            for msg in names::is_valid_port_num(i64::from(host_port)) {
                errs.push(FieldError::invalid(idx.child("hostPort"), host_port, msg));
            }
        }
        errs.extend(validate_protocol(
            port.protocol.as_deref(),
            &idx.child("protocol"),
        ));
    }
    errs
}

/// A port protocol: required, and one of SCTP, TCP, UDP.
pub(super) fn validate_protocol(protocol: Option<&str>, path: &Path) -> Option<FieldError> {
    match protocol.unwrap_or("") {
        "" => Some(FieldError::required(path, "")),
        p if PROTOCOLS.contains(&p) => None,
        p => Some(FieldError::not_supported(path, p, PROTOCOLS)),
    }
}

/// Two containers may not claim the same host port and protocol.
fn validate_host_ports<'a>(
    containers: impl Iterator<Item = &'a Container>,
    path: &Path,
) -> ErrorList {
    let mut errs = Vec::new();
    let mut taken = BTreeSet::new();
    for (ci, container) in containers.enumerate() {
        for (pi, port) in container.ports.iter().flatten().enumerate() {
            let Some(host_port) = port.host_port.filter(|p| *p != 0) else {
                continue;
            };
            let key = format!("{host_port}/{}", port.protocol.as_deref().unwrap_or("TCP"));
            if !taken.insert(key.clone()) {
                errs.push(FieldError::duplicate(
                    path.child("containers").index(ci).child("ports").index(pi),
                    key,
                ));
            }
        }
    }
    errs
}

fn validate_env(env: &[EnvVar], path: &Path) -> ErrorList {
    let mut errs = Vec::new();
    for (i, var) in env.iter().enumerate() {
        let idx = path.index(i);
        if var.name.is_empty() {
            errs.push(FieldError::required(idx.child("name"), ""));
        }
        for msg in names::is_relaxed_env_var_name(&var.name) {
            errs.push(FieldError::invalid(idx.child("name"), &var.name, msg));
        }
        let Some(from) = &var.value_from else {
            continue;
        };
        let from_path = idx.child("valueFrom");
        let mut sources = 0;
        if let Some(field_ref) = &from.field_ref {
            sources += 1;
            let p = from_path.child("fieldRef");
            if field_ref.api_version.as_deref().unwrap_or("").is_empty() {
                errs.push(FieldError::required(p.child("apiVersion"), ""));
            }
            if field_ref.field_path.is_empty() {
                errs.push(FieldError::required(p.child("fieldPath"), ""));
            }
        }
        if let Some(resource_ref) = &from.resource_field_ref {
            sources += 1;
            if resource_ref.resource.is_empty() {
                errs.push(FieldError::required(
                    from_path.child("resourceFieldRef").child("resource"),
                    "",
                ));
            }
        }
        for (field, selector) in [
            (
                "configMapKeyRef",
                from.config_map_key_ref.as_ref().map(|s| (&s.name, &s.key)),
            ),
            (
                "secretKeyRef",
                from.secret_key_ref.as_ref().map(|s| (&s.name, &s.key)),
            ),
        ] {
            let Some((name, key)) = selector else {
                continue;
            };
            sources += 1;
            let p = from_path.child(field);
            if name.is_empty() {
                errs.push(FieldError::required(p.child("name"), ""));
            } else {
                for msg in names::is_dns1123_subdomain(name) {
                    errs.push(FieldError::invalid(p.child("name"), name, msg));
                }
            }
            if key.is_empty() {
                errs.push(FieldError::required(p.child("key"), ""));
            } else {
                for msg in names::is_config_map_key(key) {
                    errs.push(FieldError::invalid(p.child("key"), key, msg));
                }
            }
        }
        if sources == 0 {
            errs.push(FieldError::invalid(
                &from_path,
                "",
                "must specify one of: `fieldRef`, `resourceFieldRef`, `configMapKeyRef` or `secretKeyRef`",
            ));
        } else if var.value.as_deref().is_some_and(|v| !v.is_empty()) {
            errs.push(FieldError::invalid(
                &from_path,
                "",
                "may not be specified when `value` is not empty",
            ));
        } else if sources > 1 {
            errs.push(FieldError::invalid(
                &from_path,
                "",
                "may not have more than one field specified at a time",
            ));
        }
    }
    errs
}

fn validate_volume_mounts(
    mounts: &[VolumeMount],
    volumes: &BTreeSet<String>,
    path: &Path,
) -> ErrorList {
    let mut errs = Vec::new();
    let mut mount_points = BTreeSet::new();
    for (i, mount) in mounts.iter().enumerate() {
        let idx = path.index(i);
        if mount.name.is_empty() {
            errs.push(FieldError::required(idx.child("name"), ""));
        }
        if !volumes.contains(&mount.name) {
            errs.push(FieldError::not_found(idx.child("name"), &mount.name));
        }
        if mount.mount_path.is_empty() {
            errs.push(FieldError::required(idx.child("mountPath"), ""));
        }
        if !mount_points.insert(mount.mount_path.as_str()) {
            errs.push(FieldError::invalid(
                idx.child("mountPath"),
                &mount.mount_path,
                "must be unique",
            ));
        }
        if let Some(sub_path) = mount.sub_path.as_deref().filter(|s| !s.is_empty()) {
            if sub_path.starts_with('/') {
                errs.push(FieldError::invalid(
                    idx.child("subPath"),
                    sub_path,
                    "must be a relative path",
                ));
            }
            if sub_path.split('/').any(|part| part == "..") {
                errs.push(FieldError::invalid(
                    idx.child("subPath"),
                    sub_path,
                    "must not contain '..'",
                ));
            }
        }
    }
    errs
}

/// A resource name a container may request: `cpu`, `memory`, `ephemeral-storage`,
/// `hugepages-<size>`, or a domain-prefixed extended resource.
fn validate_resource_name(name: &str, path: &Path) -> ErrorList {
    let mut errs = meta::validate_label_name(name, path);
    if !name.contains('/') {
        let standard = matches!(name, "cpu" | "memory" | "ephemeral-storage")
            || name
                .strip_prefix("hugepages-")
                .is_some_and(|size| quantity::parse(size).is_ok());
        if !standard {
            errs.push(FieldError::invalid(
                path,
                name,
                "must be a standard resource for containers",
            ));
        }
    }
    errs
}

/// A quantity that parses and is not negative.
pub(super) fn validate_quantity(q: &Quantity, path: &Path) -> Option<FieldError> {
    match quantity::parse(&q.0) {
        Err(e) => Some(FieldError::invalid(path, &q.0, e.to_string())),
        Ok(parsed) if parsed.is_negative() => {
            Some(FieldError::invalid(path, parsed.to_string(), NEGATIVE))
        }
        Ok(_) => None,
    }
}

fn validate_resources(resources: &ResourceRequirements, path: &Path) -> ErrorList {
    let mut errs = Vec::new();
    let empty = BTreeMap::new();
    let limits = resources.limits.as_ref().unwrap_or(&empty);
    let requests = resources.requests.as_ref().unwrap_or(&empty);
    for (field, list) in [("limits", limits), ("requests", requests)] {
        for (name, q) in list {
            let p = path.child(field).key(name);
            errs.extend(validate_resource_name(name, &p));
            errs.extend(validate_quantity(q, &p));
        }
    }
    for (name, request) in requests {
        let (Some(limit), Ok(request)) = (limits.get(name), quantity::parse(&request.0)) else {
            continue;
        };
        let Ok(limit) = quantity::parse(&limit.0) else {
            continue;
        };
        // Huge pages cannot be overcommitted: request and limit must be equal.
        if name.starts_with("hugepages-") && request != limit {
            errs.push(FieldError::invalid(
                path.child("requests"),
                request.to_string(),
                format!("must be equal to {name} limit of {limit}"),
            ));
        } else if request > limit {
            errs.push(FieldError::invalid(
                path.child("requests"),
                request.to_string(),
                format!("must be less than or equal to {name} limit of {limit}"),
            ));
        }
    }
    errs
}

fn validate_probe(probe: &Probe, path: &Path) -> ErrorList {
    let mut errs = Vec::new();
    let mut handlers = 0;
    if let Some(exec) = &probe.exec {
        handlers += 1;
        if exec.command.as_ref().is_none_or(Vec::is_empty) {
            errs.push(FieldError::required(
                path.child("exec").child("command"),
                "",
            ));
        }
    }
    if let Some(http) = &probe.http_get {
        let p = path.child("httpGet");
        if handlers > 0 {
            errs.push(FieldError::forbidden(
                p,
                "may not specify more than 1 handler type",
            ));
        } else {
            handlers += 1;
            if http.path.as_deref().unwrap_or("").is_empty() {
                errs.push(FieldError::required(p.child("path"), ""));
            }
            errs.extend(validate_port_num_or_name(&http.port, &p.child("port")));
            if let Some(scheme) = http
                .scheme
                .as_deref()
                .filter(|s| !["HTTP", "HTTPS"].contains(s))
            {
                errs.push(FieldError::not_supported(
                    p.child("scheme"),
                    scheme,
                    &["HTTP", "HTTPS"],
                ));
            }
        }
    }
    if let Some(tcp) = &probe.tcp_socket {
        let p = path.child("tcpSocket");
        if handlers > 0 {
            errs.push(FieldError::forbidden(
                p,
                "may not specify more than 1 handler type",
            ));
        } else {
            handlers += 1;
            errs.extend(validate_port_num_or_name(&tcp.port, &p.child("port")));
        }
    }
    if let Some(grpc) = &probe.grpc {
        let p = path.child("grpc");
        if handlers > 0 {
            errs.push(FieldError::forbidden(
                p,
                "may not specify more than 1 handler type",
            ));
        } else {
            handlers += 1;
            for msg in names::is_valid_port_num(i64::from(grpc.port)) {
                errs.push(FieldError::invalid(p.child("port"), grpc.port, msg));
            }
        }
    }
    if handlers == 0 {
        errs.push(FieldError::required(path, "must specify a handler type"));
    }
    for (field, value) in [
        ("initialDelaySeconds", probe.initial_delay_seconds),
        ("timeoutSeconds", probe.timeout_seconds),
        ("periodSeconds", probe.period_seconds),
        ("successThreshold", probe.success_threshold),
        ("failureThreshold", probe.failure_threshold),
    ] {
        if let Some(v) = value.filter(|v| *v < 0) {
            errs.push(FieldError::invalid(path.child(field), v, NEGATIVE));
        }
    }
    if let Some(seconds) = probe.termination_grace_period_seconds.filter(|s| *s <= 0) {
        errs.push(FieldError::invalid(
            path.child("terminationGracePeriodSeconds"),
            seconds,
            "must be greater than 0",
        ));
    }
    errs
}

/// A port given as a number (1-65535) or an IANA service name.
pub(super) fn validate_port_num_or_name(port: &IntOrString, path: &Path) -> ErrorList {
    match port {
        IntOrString::Int(n) => names::is_valid_port_num(i64::from(*n))
            .into_iter()
            .map(|msg| FieldError::invalid(path, *n, msg))
            .collect(),
        IntOrString::String(s) => names::is_valid_port_name(s)
            .into_iter()
            .map(|msg| FieldError::invalid(path, s, msg))
            .collect(),
    }
}

fn validate_tolerations(tolerations: &[Toleration], path: &Path) -> ErrorList {
    let mut errs = Vec::new();
    for (i, toleration) in tolerations.iter().enumerate() {
        let idx = path.index(i);
        let key = toleration.key.as_deref().unwrap_or("");
        let operator = toleration.operator.as_deref().unwrap_or("");
        let value = toleration.value.as_deref().unwrap_or("");
        let effect = toleration.effect.as_deref().unwrap_or("");
        if !key.is_empty() {
            errs.extend(meta::validate_label_name(key, &idx.child("key")));
        }
        if key.is_empty() && operator != "Exists" {
            errs.push(FieldError::invalid(
                idx.child("operator"),
                operator,
                "operator must be Exists when `key` is empty, which means \"match all values and all keys\"",
            ));
        }
        if toleration.toleration_seconds.is_some() && effect != "NoExecute" {
            errs.push(FieldError::invalid(
                idx.child("effect"),
                effect,
                "effect must be 'NoExecute' when `tolerationSeconds` is set",
            ));
        }
        match operator {
            "Equal" | "" => {
                let msgs = names::is_label_value(value);
                if !msgs.is_empty() {
                    errs.push(FieldError::invalid(
                        idx.child("operator"),
                        value,
                        msgs.join(";"),
                    ));
                }
            }
            "Exists" => {
                if !value.is_empty() {
                    errs.push(FieldError::invalid(
                        idx.child("operator"),
                        Raw(format!(
                            "core.Toleration{{Key:{}, Operator:\"Exists\", Value:{}, Effect:{}}}",
                            super::render::quote(key),
                            super::render::quote(value),
                            super::render::quote(effect)
                        )),
                        "value must be empty when `operator` is 'Exists'",
                    ));
                }
            }
            other => errs.push(FieldError::not_supported(
                idx.child("operator"),
                other,
                &["Equal", "Exists"],
            )),
        }
        if !effect.is_empty() {
            errs.extend(validate_taint_effect(effect, &idx.child("effect")));
        }
    }
    errs
}

/// A taint effect: NoSchedule, PreferNoSchedule or NoExecute.
pub(super) fn validate_taint_effect(effect: &str, path: &Path) -> Option<FieldError> {
    match effect {
        "" => Some(FieldError::required(path, "")),
        e if TAINT_EFFECTS.contains(&e) => None,
        e => Some(FieldError::not_supported(path, e, TAINT_EFFECTS)),
    }
}

/// What a pod update may change: container images, a lower activeDeadlineSeconds,
/// added tolerations, and a negative grace period raised to 1. Everything else in the
/// spec is fixed once the pod exists.
fn validate_pod_spec_update(new: &PodSpec, old: &PodSpec, path: &Path) -> ErrorList {
    let mut errs = Vec::new();
    if new.containers.len() != old.containers.len() {
        errs.push(FieldError::forbidden(
            path.child("containers"),
            "pod updates may not add or remove containers",
        ));
        return errs;
    }
    let new_init = new.init_containers.as_deref().unwrap_or_default();
    let old_init = old.init_containers.as_deref().unwrap_or_default();
    if new_init.len() != old_init.len() {
        errs.push(FieldError::forbidden(
            path.child("initContainers"),
            "pod updates may not add or remove containers",
        ));
        return errs;
    }
    if let Some(seconds) = new.active_deadline_seconds {
        if !(0..=i64::from(i32::MAX)).contains(&seconds) {
            errs.push(FieldError::invalid(
                path.child("activeDeadlineSeconds"),
                seconds,
                names::inclusive_range_error(0, i64::from(i32::MAX)),
            ));
            return errs;
        }
        if old.active_deadline_seconds.is_some_and(|o| o < seconds) {
            errs.push(FieldError::invalid(
                path.child("activeDeadlineSeconds"),
                seconds,
                "must be less than or equal to previous value",
            ));
            return errs;
        }
    } else if old.active_deadline_seconds.is_some() {
        errs.push(FieldError::invalid(
            path.child("activeDeadlineSeconds"),
            None::<i64>,
            "must not update from a positive integer to nil value",
        ));
    }
    let new_tolerations = new.tolerations.as_deref().unwrap_or_default();
    for old_toleration in old.tolerations.iter().flatten() {
        let kept = new_tolerations.iter().any(|t| {
            let mut t = t.clone();
            t.toleration_seconds = old_toleration.toleration_seconds;
            &t == old_toleration
        });
        if !kept {
            errs.push(FieldError::forbidden(
                path.child("tolerations"),
                "existing toleration can not be modified except its tolerationSeconds",
            ));
            break;
        }
    }

    // Put every field that may change back to its old value; what is left must be equal.
    let mut munged = new.clone();
    for (c, o) in munged.containers.iter_mut().zip(&old.containers) {
        c.image.clone_from(&o.image);
    }
    if let Some(init) = munged.init_containers.as_mut() {
        for (c, o) in init.iter_mut().zip(old_init) {
            c.image.clone_from(&o.image);
        }
    }
    munged.active_deadline_seconds = old.active_deadline_seconds;
    munged.tolerations.clone_from(&old.tolerations);
    if old.termination_grace_period_seconds.is_some_and(|s| s < 0)
        && new.termination_grace_period_seconds == Some(1)
    {
        munged.termination_grace_period_seconds = old.termination_grace_period_seconds;
    }
    if munged != *old {
        errs.push(FieldError::forbidden(path, POD_UPDATE_MESSAGE));
    }
    errs
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pods() -> &'static Resource {
        crate::resource::find("", "v1", "pods").expect("pods")
    }

    /// A valid, defaulted pod with one container; `edit` changes it.
    fn pod(edit: impl FnOnce(&mut serde_json::Value)) -> serde_json::Value {
        let mut v = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"containers": [{"name": "web", "image": "nginx:1.25", "ports": [{"containerPort": 80, "name": "http"}]}]}
        });
        crate::defaults::apply_defaults(pods(), &mut v);
        edit(&mut v);
        v
    }

    fn check(input: &serde_json::Value, old: Option<&serde_json::Value>) -> Vec<String> {
        super::super::validate(pods(), input, old)
            .into_iter()
            .map(|e| e.to_string())
            .collect()
    }

    #[test]
    fn pod_spec_rules() {
        let c0 = "spec.containers[0]";
        let cases: Vec<(&str, serde_json::Value, Vec<String>)> = vec![
            ("valid", pod(|_| {}), vec![]),
            ("no containers", pod(|p| p["spec"]["containers"] = json!([])), vec!["spec.containers: Required value".into()]),
            ("no image", pod(|p| p["spec"]["containers"][0]["image"] = json!("")), vec![format!("{c0}.image: Required value")]),
            (
                "bad container name",
                pod(|p| p["spec"]["containers"][0]["name"] = json!("Web")),
                vec![format!("{c0}.name: Invalid value: \"Web\": a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')")],
            ),
            (
                "duplicate container across init",
                pod(|p| p["spec"]["initContainers"] = json!([{"name": "web", "image": "busybox", "imagePullPolicy": "IfNotPresent", "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File"}])),
                vec!["spec.initContainers[0].name: Duplicate value: \"web\"".into()],
            ),
            (
                "port out of range",
                pod(|p| p["spec"]["containers"][0]["ports"][0]["containerPort"] = json!(70000)),
                vec![format!("{c0}.ports[0].containerPort: Invalid value: 70000: must be between 1 and 65535, inclusive")],
            ),
            (
                "bad protocol",
                pod(|p| p["spec"]["containers"][0]["ports"][0]["protocol"] = json!("HTTP")),
                vec![format!("{c0}.ports[0].protocol: Unsupported value: \"HTTP\": supported values: \"SCTP\", \"TCP\", \"UDP\"")],
            ),
            (
                "long port name",
                pod(|p| p["spec"]["containers"][0]["ports"][0]["name"] = json!("a-very-long-port-name")),
                vec![format!("{c0}.ports[0].name: Invalid value: \"a-very-long-port-name\": must be no more than 15 characters")],
            ),
            (
                "duplicate port name",
                pod(|p| p["spec"]["containers"][0]["ports"] = json!([{"containerPort": 80, "name": "http", "protocol": "TCP"}, {"containerPort": 81, "name": "http", "protocol": "TCP"}])),
                vec![format!("{c0}.ports[1].name: Duplicate value: \"http\"")],
            ),
            (
                "env with equals",
                pod(|p| p["spec"]["containers"][0]["env"] = json!([{"name": "A=B", "value": "x"}])),
                vec![format!("{c0}.env[0].name: Invalid value: \"A=B\": a valid environment variable name must consist only of printable ASCII characters other than '='")],
            ),
            (
                "env valueFrom two sources",
                pod(|p| p["spec"]["containers"][0]["env"] = json!([{"name": "A", "valueFrom": {"configMapKeyRef": {"name": "c", "key": "k"}, "secretKeyRef": {"name": "s", "key": "k"}}}])),
                vec![format!("{c0}.env[0].valueFrom: Invalid value: \"\": may not have more than one field specified at a time")],
            ),
            (
                "env valueFrom with value",
                pod(|p| p["spec"]["containers"][0]["env"] = json!([{"name": "A", "value": "v", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}])),
                vec![format!("{c0}.env[0].valueFrom: Invalid value: \"\": may not be specified when `value` is not empty")],
            ),
            (
                "env valueFrom empty",
                pod(|p| p["spec"]["containers"][0]["env"] = json!([{"name": "A", "valueFrom": {}}])),
                vec![format!("{c0}.env[0].valueFrom: Invalid value: \"\": must specify one of: `fieldRef`, `resourceFieldRef`, `configMapKeyRef` or `secretKeyRef`")],
            ),
            (
                "mount of a missing volume",
                pod(|p| p["spec"]["containers"][0]["volumeMounts"] = json!([{"name": "data", "mountPath": "/data"}])),
                vec![format!("{c0}.volumeMounts[0].name: Not found: \"data\"")],
            ),
            (
                "duplicate volume",
                pod(|p| p["spec"]["volumes"] = json!([{"name": "a", "emptyDir": {}}, {"name": "a", "emptyDir": {}}])),
                vec!["spec.volumes[1].name: Duplicate value: \"a\"".into()],
            ),
            (
                "two volume sources",
                pod(|p| p["spec"]["volumes"] = json!([{"name": "a", "emptyDir": {}, "hostPath": {"path": "/tmp", "type": ""}}])),
                vec!["spec.volumes[0].emptyDir: Forbidden: may not specify more than 1 volume type".into()],
            ),
            (
                "configMap volume without name",
                pod(|p| p["spec"]["volumes"] = json!([{"name": "a", "configMap": {"defaultMode": 420}}])),
                vec!["spec.volumes[0].configMap.name: Required value".into()],
            ),
            (
                "bad restart policy",
                pod(|p| p["spec"]["restartPolicy"] = json!("Sometimes")),
                vec!["spec.restartPolicy: Unsupported value: \"Sometimes\": supported values: \"Always\", \"OnFailure\", \"Never\"".into()],
            ),
            (
                "bad dns policy",
                pod(|p| p["spec"]["dnsPolicy"] = json!("Google")),
                vec!["spec.dnsPolicy: Unsupported value: \"Google\": supported values: \"ClusterFirstWithHostNet\", \"ClusterFirst\", \"Default\", \"None\"".into()],
            ),
            (
                "negative grace period",
                pod(|p| p["spec"]["terminationGracePeriodSeconds"] = json!(-1)),
                vec!["spec.terminationGracePeriodSeconds: Invalid value: -1: must be greater than or equal to 0".into()],
            ),
            (
                "bad node selector",
                pod(|p| p["spec"]["nodeSelector"] = json!({"disk": "ssd!"})),
                vec!["spec.nodeSelector: Invalid value: \"ssd!\": a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')".into()],
            ),
            (
                "toleration bad operator and effect",
                pod(|p| p["spec"]["tolerations"] = json!([{"key": "k", "operator": "Maybe", "effect": "Never"}])),
                vec![
                    "spec.tolerations[0].operator: Unsupported value: \"Maybe\": supported values: \"Equal\", \"Exists\"".into(),
                    "spec.tolerations[0].effect: Unsupported value: \"Never\": supported values: \"NoSchedule\", \"PreferNoSchedule\", \"NoExecute\"".into(),
                ],
            ),
            (
                "toleration without key must use Exists",
                pod(|p| p["spec"]["tolerations"] = json!([{"operator": "Equal", "value": "v"}])),
                vec!["spec.tolerations[0].operator: Invalid value: \"Equal\": operator must be Exists when `key` is empty, which means \"match all values and all keys\"".into()],
            ),
        ];
        for (name, input, want) in cases {
            assert_eq!(check(&input, None), want, "{name}");
        }
    }

    #[test]
    fn resources_and_probes() {
        let c0 = "spec.containers[0]";
        let cases: Vec<(&str, serde_json::Value, Vec<String>)> = vec![
            (
                "valid resources",
                json!({"limits": {"cpu": "1", "memory": "128Mi"}, "requests": {"cpu": "500m", "memory": "64Mi"}}),
                vec![],
            ),
            (
                "garbage quantity",
                json!({"limits": {"cpu": "lots"}}),
                vec![format!("{c0}.resources.limits[cpu]: Invalid value: \"lots\": quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'")],
            ),
            (
                "negative quantity",
                json!({"requests": {"memory": "-1Mi"}}),
                vec![format!("{c0}.resources.requests[memory]: Invalid value: \"-1Mi\": must be greater than or equal to 0")],
            ),
            (
                "request above limit",
                json!({"limits": {"cpu": "1"}, "requests": {"cpu": "1500m"}}),
                vec![format!("{c0}.resources.requests: Invalid value: \"1500m\": must be less than or equal to cpu limit of 1")],
            ),
            (
                "unknown resource",
                json!({"limits": {"gpu": "1"}}),
                vec![format!("{c0}.resources.limits[gpu]: Invalid value: \"gpu\": must be a standard resource for containers")],
            ),
            ("extended resource", json!({"limits": {"example.com/gpu": "1"}}), vec![]),
        ];
        for (name, resources, want) in cases {
            let input = pod(|p| p["spec"]["containers"][0]["resources"] = resources);
            assert_eq!(check(&input, None), want, "{name}");
        }

        let probe_defaults = json!({"timeoutSeconds": 1, "periodSeconds": 10, "successThreshold": 1, "failureThreshold": 3});
        let with = |extra: serde_json::Value| {
            let mut p = probe_defaults.clone();
            if let (Some(p), Some(extra)) = (p.as_object_mut(), extra.as_object()) {
                p.extend(extra.clone());
            }
            p
        };
        let probes: Vec<(&str, &str, serde_json::Value, Vec<String>)> = vec![
            ("valid http", "livenessProbe", with(json!({"httpGet": {"path": "/", "port": "http", "scheme": "HTTP"}})), vec![]),
            (
                "no handler",
                "readinessProbe",
                with(json!({})),
                vec![format!("{c0}.readinessProbe: Required value: must specify a handler type")],
            ),
            (
                "two handlers",
                "livenessProbe",
                with(json!({"exec": {"command": ["true"]}, "tcpSocket": {"port": 80}})),
                vec![format!("{c0}.livenessProbe.tcpSocket: Forbidden: may not specify more than 1 handler type")],
            ),
            (
                "bad port",
                "startupProbe",
                with(json!({"tcpSocket": {"port": 0}})),
                vec![format!("{c0}.startupProbe.tcpSocket.port: Invalid value: 0: must be between 1 and 65535, inclusive")],
            ),
            (
                "liveness success threshold",
                "livenessProbe",
                with(json!({"exec": {"command": ["true"]}, "successThreshold": 2})),
                vec![format!("{c0}.livenessProbe.successThreshold: Invalid value: 2: must be 1")],
            ),
        ];
        for (name, field, probe, want) in probes {
            let input = pod(|p| p["spec"]["containers"][0][field] = probe);
            assert_eq!(check(&input, None), want, "{name}");
        }
    }

    #[test]
    fn pod_updates() {
        let old = pod(|p| p["metadata"]["uid"] = json!("u1"));
        let forbidden = format!("spec: Forbidden: {POD_UPDATE_MESSAGE}");
        let cases: Vec<(&str, serde_json::Value, Vec<String>)> = vec![
            ("unchanged", old.clone(), vec![]),
            (
                "image change",
                pod(|p| {
                    p["metadata"]["uid"] = json!("u1");
                    p["spec"]["containers"][0]["image"] = json!("nginx:1.26");
                }),
                vec![],
            ),
            (
                "label change",
                pod(|p| {
                    p["metadata"]["uid"] = json!("u1");
                    p["metadata"]["labels"] = json!({"a": "b"});
                }),
                vec![],
            ),
            (
                "added toleration",
                pod(|p| {
                    p["metadata"]["uid"] = json!("u1");
                    p["spec"]["tolerations"] = json!([{"key": "k", "operator": "Exists"}]);
                }),
                vec![],
            ),
            (
                "port change",
                pod(|p| {
                    p["metadata"]["uid"] = json!("u1");
                    p["spec"]["containers"][0]["ports"][0]["containerPort"] = json!(8080);
                }),
                vec![forbidden.clone()],
            ),
            (
                "container added",
                pod(|p| {
                    p["metadata"]["uid"] = json!("u1");
                    let mut side = p["spec"]["containers"][0].clone();
                    side["name"] = json!("side");
                    if let Some(containers) = p["spec"]["containers"].as_array_mut() {
                        containers.push(side);
                    }
                }),
                vec![
                    "spec.containers: Forbidden: pod updates may not add or remove containers"
                        .into(),
                ],
            ),
            (
                "deadline raised",
                {
                    let mut p = old.clone();
                    p["spec"]["activeDeadlineSeconds"] = json!(10);
                    p
                },
                vec![],
            ),
        ];
        for (name, new, want) in cases {
            assert_eq!(check(&new, Some(&old)), want, "{name}");
        }
        let mut with_deadline = old.clone();
        with_deadline["spec"]["activeDeadlineSeconds"] = json!(10);
        let mut raised = with_deadline.clone();
        raised["spec"]["activeDeadlineSeconds"] = json!(20);
        assert_eq!(
            check(&raised, Some(&with_deadline)),
            vec!["spec.activeDeadlineSeconds: Invalid value: 20: must be less than or equal to previous value".to_string()]
        );
    }
}
