//! Workload rules: Deployment, ReplicaSet, DaemonSet and StatefulSet (replicas,
//! selectors that match their template, update strategies, immutable selectors).

use k8s_openapi::api::apps::v1::{
    DaemonSet, DaemonSetSpec, DaemonSetUpdateStrategy, Deployment, DeploymentSpec,
    DeploymentStrategy, ReplicaSet, ReplicaSetSpec, StatefulSet, StatefulSetSpec,
    StatefulSetUpdateStrategy,
};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::meta::{self, IMMUTABLE};
use super::pod::validate_pod_template;
use super::render::{go_map, go_selector, quote, Raw};
use super::{names, nonnegative, ErrorList, FieldError, Path};
use crate::resource::Resource;

/// A Deployment.
pub(super) fn validate_deployment(
    resource: &Resource,
    d: &Deployment,
    old: Option<&Deployment>,
) -> ErrorList {
    let mut errs = meta::validate_meta_for(resource, &d.metadata, old.map(|o| &o.metadata));
    let spec = d.spec.clone().unwrap_or_default();
    errs.extend(validate_deployment_spec(&spec, &Path::new("spec")));
    if let Some(old_spec) = old.map(|o| o.spec.clone().unwrap_or_default()) {
        errs.extend(immutable_selector(&spec.selector, &old_spec.selector));
    }
    errs
}

fn validate_deployment_spec(spec: &DeploymentSpec, path: &Path) -> ErrorList {
    let mut errs = Vec::new();
    errs.extend(nonnegative(
        spec.replicas.map(i64::from),
        &path.child("replicas"),
    ));
    errs.extend(validate_selector(
        &spec.selector,
        "empty selector is invalid for deployment",
        path,
    ));
    errs.extend(validate_replica_template(
        &spec.template,
        &spec.selector,
        "ReplicaSet",
        &path.child("template"),
    ));
    errs.extend(validate_deployment_strategy(
        spec.strategy.as_ref(),
        &path.child("strategy"),
    ));
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    errs.extend(nonnegative(
        Some(i64::from(min_ready)),
        &path.child("minReadySeconds"),
    ));
    errs.extend(nonnegative(
        spec.revision_history_limit.map(i64::from),
        &path.child("revisionHistoryLimit"),
    ));
    if let Some(deadline) = spec.progress_deadline_seconds {
        errs.extend(nonnegative(
            Some(i64::from(deadline)),
            &path.child("progressDeadlineSeconds"),
        ));
        if deadline <= min_ready {
            errs.push(FieldError::invalid(
                path.child("progressDeadlineSeconds"),
                deadline,
                "must be greater than minReadySeconds",
            ));
        }
    }
    errs
}

fn validate_deployment_strategy(strategy: Option<&DeploymentStrategy>, path: &Path) -> ErrorList {
    let mut errs = Vec::new();
    let default = DeploymentStrategy::default();
    let strategy = strategy.unwrap_or(&default);
    match strategy.type_.as_deref().unwrap_or("") {
        "Recreate" => {
            if strategy.rolling_update.is_some() {
                errs.push(FieldError::forbidden(
                    path.child("rollingUpdate"),
                    "may not be specified when strategy `type` is 'Recreate'",
                ));
            }
        }
        "RollingUpdate" => match &strategy.rolling_update {
            None => errs.push(FieldError::required(
                path.child("rollingUpdate"),
                "this should be defaulted and never be nil",
            )),
            Some(ru) => {
                let p = path.child("rollingUpdate");
                let unavailable = ru.max_unavailable.clone().unwrap_or(IntOrString::Int(0));
                let surge = ru.max_surge.clone().unwrap_or(IntOrString::Int(0));
                errs.extend(validate_int_or_percent(
                    &unavailable,
                    &p.child("maxUnavailable"),
                ));
                errs.extend(validate_int_or_percent(&surge, &p.child("maxSurge")));
                if int_or_percent_value(&unavailable) == 0 && int_or_percent_value(&surge) == 0 {
                    errs.push(FieldError::invalid(
                        p.child("maxUnavailable"),
                        &unavailable,
                        "may not be 0 when `maxSurge` is 0",
                    ));
                }
                errs.extend(not_more_than_100_percent(
                    &unavailable,
                    &p.child("maxUnavailable"),
                ));
            }
        },
        other => errs.push(FieldError::not_supported(
            path.child("type"),
            other,
            &["Recreate", "RollingUpdate"],
        )),
    }
    errs
}

/// A ReplicaSet.
pub(super) fn validate_replica_set(
    resource: &Resource,
    rs: &ReplicaSet,
    old: Option<&ReplicaSet>,
) -> ErrorList {
    let mut errs = meta::validate_meta_for(resource, &rs.metadata, old.map(|o| &o.metadata));
    let spec = rs.spec.clone().unwrap_or_default();
    errs.extend(validate_replica_set_spec(&spec, &Path::new("spec")));
    if let Some(old_spec) = old.map(|o| o.spec.clone().unwrap_or_default()) {
        errs.extend(immutable_selector(&spec.selector, &old_spec.selector));
    }
    errs
}

fn validate_replica_set_spec(spec: &ReplicaSetSpec, path: &Path) -> ErrorList {
    let mut errs = Vec::new();
    errs.extend(nonnegative(
        spec.replicas.map(i64::from),
        &path.child("replicas"),
    ));
    errs.extend(nonnegative(
        spec.min_ready_seconds.map(i64::from),
        &path.child("minReadySeconds"),
    ));
    // Kubernetes words the ReplicaSet message like the Deployment one.
    errs.extend(validate_selector(
        &spec.selector,
        "empty selector is invalid for deployment",
        path,
    ));
    match &spec.template {
        None => errs.push(FieldError::required(path.child("template"), "")),
        Some(template) => {
            errs.extend(validate_replica_template(
                template,
                &spec.selector,
                "ReplicaSet",
                &path.child("template"),
            ));
        }
    }
    errs
}

/// A DaemonSet.
pub(super) fn validate_daemon_set(
    resource: &Resource,
    ds: &DaemonSet,
    old: Option<&DaemonSet>,
) -> ErrorList {
    let mut errs = meta::validate_meta_for(resource, &ds.metadata, old.map(|o| &o.metadata));
    let spec = ds.spec.clone().unwrap_or_default();
    errs.extend(validate_daemon_set_spec(&spec, &Path::new("spec")));
    if let Some(old_spec) = old.map(|o| o.spec.clone().unwrap_or_default()) {
        errs.extend(immutable_selector(&spec.selector, &old_spec.selector));
    }
    errs
}

fn validate_daemon_set_spec(spec: &DaemonSetSpec, path: &Path) -> ErrorList {
    let mut errs = Vec::new();
    errs.extend(validate_selector(
        &spec.selector,
        "empty selector is invalid for daemonset",
        path,
    ));
    errs.extend(validate_replica_template(
        &spec.template,
        &spec.selector,
        "DaemonSet",
        &path.child("template"),
    ));
    errs.extend(nonnegative(
        spec.min_ready_seconds.map(i64::from),
        &path.child("minReadySeconds"),
    ));
    errs.extend(validate_daemon_set_strategy(
        spec.update_strategy.as_ref(),
        &path.child("updateStrategy"),
    ));
    errs.extend(nonnegative(
        spec.revision_history_limit.map(i64::from),
        &path.child("revisionHistoryLimit"),
    ));
    errs
}

fn validate_daemon_set_strategy(
    strategy: Option<&DaemonSetUpdateStrategy>,
    path: &Path,
) -> ErrorList {
    let mut errs = Vec::new();
    let default = DaemonSetUpdateStrategy::default();
    let strategy = strategy.unwrap_or(&default);
    match strategy.type_.as_deref().unwrap_or("") {
        "OnDelete" => {}
        "RollingUpdate" => match &strategy.rolling_update {
            None => errs.push(FieldError::required(path.child("rollingUpdate"), "")),
            Some(ru) => {
                let p = path.child("rollingUpdate");
                let unavailable = ru.max_unavailable.clone().unwrap_or(IntOrString::Int(0));
                let surge = ru.max_surge.clone().unwrap_or(IntOrString::Int(0));
                errs.extend(validate_int_or_percent(
                    &unavailable,
                    &p.child("maxUnavailable"),
                ));
                errs.extend(validate_int_or_percent(&surge, &p.child("maxSurge")));
                errs.extend(not_more_than_100_percent(
                    &unavailable,
                    &p.child("maxUnavailable"),
                ));
                errs.extend(not_more_than_100_percent(&surge, &p.child("maxSurge")));
                match (
                    int_or_percent_value(&unavailable) != 0,
                    int_or_percent_value(&surge) != 0,
                ) {
                    (true, true) => errs.push(FieldError::invalid(
                        p.child("maxSurge"),
                        &surge,
                        "may not be set when maxUnavailable is non-zero",
                    )),
                    (false, false) => {
                        errs.push(FieldError::required(
                            p.child("maxUnavailable"),
                            "cannot be 0 when maxSurge is 0",
                        ));
                    }
                    _ => {}
                }
            }
        },
        other => errs.push(FieldError::not_supported(
            path.child("type"),
            other,
            &["RollingUpdate", "OnDelete"],
        )),
    }
    errs
}

/// A StatefulSet.
pub(super) fn validate_stateful_set(
    resource: &Resource,
    sts: &StatefulSet,
    old: Option<&StatefulSet>,
) -> ErrorList {
    let mut errs = meta::validate_meta_for(resource, &sts.metadata, old.map(|o| &o.metadata));
    let spec = sts.spec.clone().unwrap_or_default();
    errs.extend(validate_stateful_set_spec(&spec, &Path::new("spec")));
    if let Some(old_spec) = old.map(|o| o.spec.clone().unwrap_or_default()) {
        // Only these fields may change; everything else (selector, serviceName,
        // volumeClaimTemplates, podManagementPolicy) is fixed.
        let mut fixed = spec.clone();
        fixed.replicas = old_spec.replicas;
        fixed.ordinals.clone_from(&old_spec.ordinals);
        fixed.template.clone_from(&old_spec.template);
        fixed.update_strategy.clone_from(&old_spec.update_strategy);
        fixed.revision_history_limit = old_spec.revision_history_limit;
        fixed
            .persistent_volume_claim_retention_policy
            .clone_from(&old_spec.persistent_volume_claim_retention_policy);
        fixed.min_ready_seconds = old_spec.min_ready_seconds;
        if fixed != old_spec {
            errs.push(FieldError::forbidden(
                "spec",
                "updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', 'revisionHistoryLimit', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden",
            ));
        }
    }
    errs
}

fn validate_stateful_set_spec(spec: &StatefulSetSpec, path: &Path) -> ErrorList {
    let mut errs = Vec::new();
    match spec.pod_management_policy.as_deref().unwrap_or("") {
        "" => errs.push(FieldError::required(path.child("podManagementPolicy"), "")),
        "OrderedReady" | "Parallel" => {}
        other => errs.push(FieldError::invalid(
            path.child("podManagementPolicy"),
            other,
            "must be 'OrderedReady' or 'Parallel'",
        )),
    }
    errs.extend(validate_stateful_set_strategy(
        spec.update_strategy.as_ref(),
        &path.child("updateStrategy"),
    ));
    errs.extend(nonnegative(
        spec.replicas.map(i64::from),
        &path.child("replicas"),
    ));
    errs.extend(nonnegative(
        spec.min_ready_seconds.map(i64::from),
        &path.child("minReadySeconds"),
    ));
    errs.extend(nonnegative(
        spec.revision_history_limit.map(i64::from),
        &path.child("revisionHistoryLimit"),
    ));
    errs.extend(validate_selector(
        &spec.selector,
        "empty selector is not valid for statefulset.",
        path,
    ));
    let claims: Vec<String> = spec
        .volume_claim_templates
        .iter()
        .flatten()
        .filter_map(|c| c.metadata.name.clone())
        .collect();
    let template_path = path.child("template");
    errs.extend(selector_matches_template(
        &spec.selector,
        &spec.template,
        &template_path,
    ));
    errs.extend(validate_pod_template(
        &spec.template,
        &claims,
        &template_path,
    ));
    errs.extend(restart_always(&spec.template, &template_path));
    if let Some(seconds) = spec
        .template
        .spec
        .as_ref()
        .and_then(|s| s.active_deadline_seconds)
    {
        errs.push(FieldError::invalid(
            template_path.child("spec").child("activeDeadlineSeconds"),
            seconds,
            "must not be specified",
        ));
    }
    errs
}

fn validate_stateful_set_strategy(
    strategy: Option<&StatefulSetUpdateStrategy>,
    path: &Path,
) -> ErrorList {
    let mut errs = Vec::new();
    let default = StatefulSetUpdateStrategy::default();
    let strategy = strategy.unwrap_or(&default);
    let rolling = strategy.rolling_update.as_ref();
    match strategy.type_.as_deref().unwrap_or("") {
        "" => errs.push(FieldError::required(path, "")),
        "OnDelete" => {
            if rolling.is_some() {
                errs.push(FieldError::invalid(
                    path.child("rollingUpdate"),
                    Raw(go_rolling_update(strategy)),
                    "only allowed for updateStrategy 'RollingUpdate'",
                ));
            }
        }
        "RollingUpdate" => {
            let partition = rolling.and_then(|r| r.partition).map(i64::from);
            errs.extend(nonnegative(
                partition,
                &path.child("rollingUpdate").child("partition"),
            ));
        }
        other => errs.push(FieldError::invalid(
            path,
            Raw(format!(
                "apps.StatefulSetUpdateStrategy{{Type:{}, RollingUpdate:{}}}",
                quote(other),
                go_rolling_update(strategy)
            )),
            "must be 'RollingUpdate' or 'OnDelete'",
        )),
    }
    errs
}

fn go_rolling_update(strategy: &StatefulSetUpdateStrategy) -> String {
    match &strategy.rolling_update {
        None => "(*apps.RollingUpdateStatefulSetStrategy)(nil)".into(),
        Some(r) => format!(
            "&apps.RollingUpdateStatefulSetStrategy{{Partition:{}}}",
            r.partition.unwrap_or(0)
        ),
    }
}

/// The selector's own syntax, and that it selects something.
fn validate_selector(selector: &LabelSelector, empty_message: &str, spec_path: &Path) -> ErrorList {
    let path = spec_path.child("selector");
    let mut errs = meta::validate_label_selector(selector, &path);
    if meta::selector_is_empty(selector) {
        errs.push(FieldError::invalid(
            &path,
            go_selector(selector),
            empty_message,
        ));
    }
    errs
}

/// `template.metadata.labels` must be selected by a non-empty selector.
fn selector_matches_template(
    selector: &LabelSelector,
    template: &PodTemplateSpec,
    path: &Path,
) -> Option<FieldError> {
    let labels = template.metadata.as_ref().and_then(|m| m.labels.as_ref());
    (!meta::selector_is_empty(selector) && !meta::selector_matches(selector, labels)).then(|| {
        FieldError::invalid(
            path.child("metadata").child("labels"),
            go_map(labels),
            "`selector` does not match template `labels`",
        )
    })
}

/// Pods of a replicated workload restart always: `restartPolicy` may only be `Always`.
fn restart_always(template: &PodTemplateSpec, path: &Path) -> Option<FieldError> {
    let policy = template
        .spec
        .as_ref()
        .and_then(|s| s.restart_policy.as_deref())
        .unwrap_or("");
    (policy != "Always").then(|| {
        FieldError::not_supported(
            path.child("spec").child("restartPolicy"),
            policy,
            &["Always"],
        )
    })
}

/// The template of a Deployment, ReplicaSet or DaemonSet (`owner` names the kind in
/// the activeDeadlineSeconds message).
fn validate_replica_template(
    template: &PodTemplateSpec,
    selector: &LabelSelector,
    owner: &str,
    path: &Path,
) -> ErrorList {
    let mut errs = Vec::new();
    errs.extend(selector_matches_template(selector, template, path));
    errs.extend(validate_pod_template(template, &[], path));
    errs.extend(restart_always(template, path));
    if let Some(seconds) = template
        .spec
        .as_ref()
        .and_then(|s| s.active_deadline_seconds)
    {
        errs.push(FieldError::invalid(
            path.child("spec").child("activeDeadlineSeconds"),
            seconds,
            format!("activeDeadlineSeconds in {owner} is not Supported"),
        ));
    }
    errs
}

/// `spec.selector` may not change once set.
fn immutable_selector(new: &LabelSelector, old: &LabelSelector) -> Option<FieldError> {
    (new != old).then(|| FieldError::invalid("spec.selector", go_selector(new), IMMUTABLE))
}

/// A count or a percentage, never negative.
fn validate_int_or_percent(value: &IntOrString, path: &Path) -> ErrorList {
    match value {
        IntOrString::String(s) => names::is_valid_percent(s)
            .into_iter()
            .map(|msg| FieldError::invalid(path, value, msg))
            .collect(),
        IntOrString::Int(i) => nonnegative(Some(i64::from(*i)), path).into_iter().collect(),
    }
}

/// The number in `25` or `25%` (0 for anything else).
fn int_or_percent_value(value: &IntOrString) -> i64 {
    match value {
        IntOrString::Int(i) => i64::from(*i),
        IntOrString::String(s) => s
            .strip_suffix('%')
            .and_then(|n| n.parse().ok())
            .unwrap_or(0),
    }
}

fn not_more_than_100_percent(value: &IntOrString, path: &Path) -> Option<FieldError> {
    match value {
        IntOrString::String(s) if s.ends_with('%') && int_or_percent_value(value) > 100 => Some(
            FieldError::invalid(path, value, "must not be greater than 100%"),
        ),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    fn resource(plural: &str) -> &'static crate::Resource {
        crate::resource::find("apps", "v1", plural).expect("apps kind")
    }

    /// A valid, defaulted workload of `kind`; `edit` changes it.
    fn workload(plural: &str, edit: impl FnOnce(&mut Value)) -> Value {
        let mut v = json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {
                "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "web", "image": "nginx:1.25"}]}}
            }
        });
        crate::defaults::apply_defaults(resource(plural), &mut v);
        edit(&mut v);
        v
    }

    fn check(plural: &str, new: &Value, old: Option<&Value>) -> Vec<String> {
        super::super::validate(resource(plural), new, old)
            .into_iter()
            .map(|e| e.to_string())
            .collect()
    }

    #[test]
    fn deployment_rules() {
        let cases: Vec<(&str, Value, Vec<&str>)> = vec![
            ("valid", workload("deployments", |_| {}), vec![]),
            (
                "negative replicas",
                workload("deployments", |d| d["spec"]["replicas"] = json!(-1)),
                vec!["spec.replicas: Invalid value: -1: must be greater than or equal to 0"],
            ),
            (
                "selector does not match",
                workload("deployments", |d| d["spec"]["template"]["metadata"]["labels"] = json!({"app": "db"})),
                vec!["spec.template.metadata.labels: Invalid value: map[string]string{\"app\":\"db\"}: `selector` does not match template `labels`"],
            ),
            (
                "empty selector",
                workload("deployments", |d| d["spec"]["selector"] = json!({})),
                vec!["spec.selector: Invalid value: v1.LabelSelector{MatchLabels:map[string]string(nil), MatchExpressions:[]v1.LabelSelectorRequirement(nil)}: empty selector is invalid for deployment"],
            ),
            (
                "restart policy never",
                workload("deployments", |d| d["spec"]["template"]["spec"]["restartPolicy"] = json!("Never")),
                vec!["spec.template.spec.restartPolicy: Unsupported value: \"Never\": supported values: \"Always\""],
            ),
            (
                "bad strategy type",
                workload("deployments", |d| d["spec"]["strategy"] = json!({"type": "BlueGreen"})),
                vec!["spec.strategy.type: Unsupported value: \"BlueGreen\": supported values: \"Recreate\", \"RollingUpdate\""],
            ),
            (
                "recreate with rolling update",
                workload("deployments", |d| d["spec"]["strategy"]["type"] = json!("Recreate")),
                vec!["spec.strategy.rollingUpdate: Forbidden: may not be specified when strategy `type` is 'Recreate'"],
            ),
            (
                "both zero",
                workload("deployments", |d| d["spec"]["strategy"]["rollingUpdate"] = json!({"maxSurge": 0, "maxUnavailable": 0})),
                vec!["spec.strategy.rollingUpdate.maxUnavailable: Invalid value: 0: may not be 0 when `maxSurge` is 0"],
            ),
            (
                "bad percent",
                workload("deployments", |d| d["spec"]["strategy"]["rollingUpdate"]["maxSurge"] = json!("abc")),
                vec!["spec.strategy.rollingUpdate.maxSurge: Invalid value: abc: a valid percent string must be a numeric string followed by an ending '%' (e.g. '1%',  or '93%', regex used for validation is '[0-9]+%')"],
            ),
            (
                "over 100 percent",
                workload("deployments", |d| d["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] = json!("150%")),
                vec!["spec.strategy.rollingUpdate.maxUnavailable: Invalid value: 150%: must not be greater than 100%"],
            ),
            (
                "negative minReadySeconds and history",
                workload("deployments", |d| {
                    d["spec"]["minReadySeconds"] = json!(-5);
                    d["spec"]["revisionHistoryLimit"] = json!(-1);
                }),
                vec![
                    "spec.minReadySeconds: Invalid value: -5: must be greater than or equal to 0",
                    "spec.revisionHistoryLimit: Invalid value: -1: must be greater than or equal to 0",
                ],
            ),
            (
                "deadline not above minReady",
                workload("deployments", |d| {
                    d["spec"]["minReadySeconds"] = json!(700);
                }),
                vec!["spec.progressDeadlineSeconds: Invalid value: 600: must be greater than minReadySeconds"],
            ),
            (
                "duplicate container in template",
                workload("deployments", |d| {
                    let c = d["spec"]["template"]["spec"]["containers"][0].clone();
                    if let Some(containers) = d["spec"]["template"]["spec"]["containers"].as_array_mut() {
                        containers.push(c);
                    }
                }),
                vec!["spec.template.spec.containers[1].name: Duplicate value: \"web\""],
            ),
        ];
        for (name, input, want) in cases {
            assert_eq!(check("deployments", &input, None), want, "{name}");
        }
    }

    #[test]
    fn selectors_are_immutable() {
        for plural in ["deployments", "replicasets", "daemonsets"] {
            let old = workload(plural, |_| {});
            let scaled = workload(plural, |w| {
                w["spec"]["template"]["spec"]["containers"][0]["image"] = json!("nginx:1.26")
            });
            assert_eq!(
                check(plural, &scaled, Some(&old)),
                Vec::<String>::new(),
                "{plural} template change"
            );
            let moved = workload(plural, |w| {
                w["spec"]["selector"] = json!({"matchLabels": {"app": "web", "v": "2"}});
                w["spec"]["template"]["metadata"]["labels"]["v"] = json!("2");
            });
            assert_eq!(
                check(plural, &moved, Some(&old)),
                vec!["spec.selector: Invalid value: v1.LabelSelector{MatchLabels:map[string]string{\"app\":\"web\", \"v\":\"2\"}, MatchExpressions:[]v1.LabelSelectorRequirement(nil)}: field is immutable"],
                "{plural}"
            );
        }
    }

    #[test]
    fn replica_set_daemon_set_stateful_set_rules() {
        let cases: Vec<(&str, &str, Value, Vec<&str>)> = vec![
            ("rs valid", "replicasets", workload("replicasets", |_| {}), vec![]),
            (
                "rs empty selector",
                "replicasets",
                workload("replicasets", |r| r["spec"]["selector"] = json!({"matchLabels": {}})),
                vec!["spec.selector: Invalid value: v1.LabelSelector{MatchLabels:map[string]string{}, MatchExpressions:[]v1.LabelSelectorRequirement(nil)}: empty selector is invalid for deployment"],
            ),
            ("ds valid", "daemonsets", workload("daemonsets", |_| {}), vec![]),
            (
                "ds surge and unavailable",
                "daemonsets",
                workload("daemonsets", |d| d["spec"]["updateStrategy"]["rollingUpdate"]["maxSurge"] = json!(1)),
                vec!["spec.updateStrategy.rollingUpdate.maxSurge: Invalid value: 1: may not be set when maxUnavailable is non-zero"],
            ),
            (
                "ds both zero",
                "daemonsets",
                workload("daemonsets", |d| d["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"] = json!(0)),
                vec!["spec.updateStrategy.rollingUpdate.maxUnavailable: Required value: cannot be 0 when maxSurge is 0"],
            ),
            (
                "ds bad strategy",
                "daemonsets",
                workload("daemonsets", |d| d["spec"]["updateStrategy"] = json!({"type": "Sometimes"})),
                vec!["spec.updateStrategy.type: Unsupported value: \"Sometimes\": supported values: \"RollingUpdate\", \"OnDelete\""],
            ),
            ("sts valid", "statefulsets", workload("statefulsets", |_| {}), vec![]),
            (
                "sts bad policy",
                "statefulsets",
                workload("statefulsets", |s| s["spec"]["podManagementPolicy"] = json!("Random")),
                vec!["spec.podManagementPolicy: Invalid value: \"Random\": must be 'OrderedReady' or 'Parallel'"],
            ),
            (
                "sts negative partition",
                "statefulsets",
                workload("statefulsets", |s| s["spec"]["updateStrategy"]["rollingUpdate"]["partition"] = json!(-1)),
                vec!["spec.updateStrategy.rollingUpdate.partition: Invalid value: -1: must be greater than or equal to 0"],
            ),
            (
                "sts mounts a claim template",
                "statefulsets",
                workload("statefulsets", |s| {
                    s["spec"]["volumeClaimTemplates"] = json!([{"metadata": {"name": "data"}, "spec": {"accessModes": ["ReadWriteOnce"]}}]);
                    s["spec"]["template"]["spec"]["containers"][0]["volumeMounts"] = json!([{"name": "data", "mountPath": "/data"}]);
                }),
                vec![],
            ),
        ];
        for (name, plural, input, want) in cases {
            assert_eq!(check(plural, &input, None), want, "{name}");
        }

        let old = workload("statefulsets", |_| {});
        let renamed = workload("statefulsets", |s| {
            s["spec"]["serviceName"] = json!("other")
        });
        assert_eq!(
            check("statefulsets", &renamed, Some(&old)),
            vec!["spec: Forbidden: updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', 'revisionHistoryLimit', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden"]
        );
        let scaled = workload("statefulsets", |s| s["spec"]["replicas"] = json!(3));
        assert_eq!(
            check("statefulsets", &scaled, Some(&old)),
            Vec::<String>::new()
        );
    }
}
