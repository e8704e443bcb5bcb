//! Deployment status and conditions: the counts `kubectl rollout status` reads, the
//! Available condition, and the Progressing condition with its deadline
//! (`ProgressDeadlineExceeded`). Kubernetes' `progress.go` and `syncDeploymentStatus`.

use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::chrono::{DateTime, Utc};
use rkube_client::controller::Action;
use tracing::info;

use super::rolling::max_unavailable;
use super::{replicas, Context, Error, Result};
use crate::events::EventType;

pub const PROGRESSING: &str = "Progressing";
pub const AVAILABLE: &str = "Available";
pub const NEW_RS_AVAILABLE: &str = "NewReplicaSetAvailable";
pub const NEW_RS_CREATED: &str = "NewReplicaSetCreated";
pub const FOUND_NEW_RS: &str = "FoundNewReplicaSet";
pub const RS_UPDATED: &str = "ReplicaSetUpdated";
pub const TIMED_OUT: &str = "ProgressDeadlineExceeded";
pub const PAUSED: &str = "DeploymentPaused";
pub const RESUMED: &str = "DeploymentResumed";
pub const MIN_AVAILABLE: &str = "MinimumReplicasAvailable";
pub const MIN_UNAVAILABLE: &str = "MinimumReplicasUnavailable";

fn rs_status(rs: &ReplicaSet) -> (i32, i32, i32) {
    let s = rs.status.clone().unwrap_or_default();
    (
        s.replicas,
        s.ready_replicas.unwrap_or(0),
        s.available_replicas.unwrap_or(0),
    )
}

/// The status `d` should have given its ReplicaSets (conditions other than Available
/// are carried over).
pub fn calculate_status(
    d: &Deployment,
    new: Option<&ReplicaSet>,
    old: &[ReplicaSet],
) -> Result<DeploymentStatus> {
    let all = old.iter().chain(new);
    let (mut total, mut ready, mut available) = (0, 0, 0);
    for rs in all {
        let (r, re, a) = rs_status(rs);
        total += r;
        ready += re;
        available += a;
    }
    let want = replicas(d);
    let previous = d.status.clone().unwrap_or_default();
    let mut status = DeploymentStatus {
        observed_generation: d.metadata.generation,
        replicas: Some(total),
        updated_replicas: Some(new.map_or(0, |rs| rs_status(rs).0)),
        ready_replicas: Some(ready),
        available_replicas: Some(available),
        unavailable_replicas: Some((want - available).max(0)),
        collision_count: previous.collision_count,
        conditions: previous.conditions.clone(),
    };
    let now = crate::pod::now();
    if available >= want - max_unavailable(d)? {
        set_condition(
            &mut status,
            condition(
                AVAILABLE,
                "True",
                MIN_AVAILABLE,
                "Deployment has minimum availability.",
                now,
            ),
        );
    } else {
        set_condition(
            &mut status,
            condition(
                AVAILABLE,
                "False",
                MIN_UNAVAILABLE,
                "Deployment does not have minimum availability.",
                now,
            ),
        );
    }
    Ok(status)
}

/// Every replica updated, available, and nothing else running, for the current spec.
pub fn is_complete(d: &Deployment, status: &DeploymentStatus) -> bool {
    let want = replicas(d);
    status.updated_replicas == Some(want)
        && status.replicas == Some(want)
        && status.available_replicas == Some(want)
        && status.observed_generation >= d.metadata.generation
}

/// Whether `new` shows progress over the recorded status: more updated, ready or
/// available pods, or fewer old ones.
fn is_progressing(d: &Deployment, new: &DeploymentStatus) -> bool {
    let old = d.status.clone().unwrap_or_default();
    let old_old = old.replicas.unwrap_or(0) - old.updated_replicas.unwrap_or(0);
    let new_old = new.replicas.unwrap_or(0) - new.updated_replicas.unwrap_or(0);
    new.updated_replicas > old.updated_replicas
        || new_old < old_old
        || new.ready_replicas > old.ready_replicas
        || new.available_replicas > old.available_replicas
}

fn deadline(d: &Deployment) -> Option<i64> {
    d.spec
        .as_ref()
        .and_then(|s| s.progress_deadline_seconds)
        .map(i64::from)
        .filter(|s| *s < i64::from(i32::MAX))
}

/// When the Progressing condition was last updated plus the deadline, if a rollout is
/// under way and can time out.
fn timeout_at(d: &Deployment, status: &DeploymentStatus) -> Option<DateTime<Utc>> {
    let seconds = deadline(d)?;
    let progressing = find(status, PROGRESSING)?;
    if progressing.reason.as_deref() == Some(NEW_RS_AVAILABLE)
        || progressing.reason.as_deref() == Some(TIMED_OUT)
    {
        return None;
    }
    let from = progressing.last_update_time.as_ref()?.0;
    Some(from + k8s_openapi::chrono::Duration::seconds(seconds))
}

/// Writes the status computed from the ReplicaSets; with `rollout`, also moves the
/// Progressing condition (complete, progressing, or past its deadline) and comes back
/// when the deadline would pass.
pub async fn sync_status(
    d: &mut Deployment,
    new: Option<&ReplicaSet>,
    old: &[ReplicaSet],
    rollout: bool,
    ctx: &Context,
) -> Result<Action> {
    let mut status = calculate_status(d, new, old)?;
    let now = crate::pod::now();
    let paused = d.spec.as_ref().and_then(|s| s.paused) == Some(true);
    let rs_name = new
        .and_then(|rs| rs.metadata.name.clone())
        .unwrap_or_default();
    let mut timed_out_now = false;
    if rollout && deadline(d).is_some() && !paused {
        let current = find(&status, PROGRESSING).cloned();
        if is_complete(d, &status) {
            set_condition(
                &mut status,
                condition(
                    PROGRESSING,
                    "True",
                    NEW_RS_AVAILABLE,
                    &format!("ReplicaSet \"{rs_name}\" has successfully progressed."),
                    now,
                ),
            );
        } else if is_progressing(d, &status) {
            let mut c = condition(
                PROGRESSING,
                "True",
                RS_UPDATED,
                &format!("ReplicaSet \"{rs_name}\" is progressing."),
                now,
            );
            if let Some(current) = current.filter(|c| c.status == "True") {
                c.last_transition_time = current.last_transition_time;
            }
            // Progress moves the deadline: update even with the same status and reason.
            remove_condition(&mut status, PROGRESSING);
            set_condition(&mut status, c);
        } else if timeout_at(d, &status).is_some_and(|at| at <= now) {
            set_condition(
                &mut status,
                condition(
                    PROGRESSING,
                    "False",
                    TIMED_OUT,
                    &format!("ReplicaSet \"{rs_name}\" has timed out progressing."),
                    now,
                ),
            );
            timed_out_now = true;
        }
    }
    if d.status.as_ref() != Some(&status) {
        let mut updated = d.clone();
        updated.status = Some(status.clone());
        *d = ctx
            .deployment_writer
            .replace_status(&updated)
            .await
            .map_err(Error::UpdateStatus)?;
        if timed_out_now {
            info!(replicaset = %rs_name, "rollout exceeded its progress deadline");
            ctx.events.record(
                d,
                EventType::Warning,
                TIMED_OUT,
                format!("ReplicaSet \"{rs_name}\" has timed out progressing."),
            );
        }
    }
    // Come back when the deadline passes if nothing else happens (Kubernetes'
    // `requeueStuckDeployment`).
    if rollout && !paused && !is_complete(d, &status) {
        if let Some(at) = timeout_at(d, &status) {
            let wait = (at - now).num_milliseconds().max(0) as u64 + 1000;
            return Ok(Action::requeue(Duration::from_millis(wait)));
        }
    }
    Ok(Action::await_change())
}

/// Records on the Progressing condition that `name` was just created.
pub async fn new_rs_created(d: &mut Deployment, name: &str, ctx: &Context) -> Result<()> {
    if deadline(d).is_none() {
        return Ok(());
    }
    let mut updated = d.clone();
    let status = updated.status.get_or_insert_with(Default::default);
    remove_condition(status, PROGRESSING);
    set_condition(
        status,
        condition(
            PROGRESSING,
            "True",
            NEW_RS_CREATED,
            &format!("Created new replica set \"{name}\""),
            crate::pod::now(),
        ),
    );
    *d = ctx
        .deployment_writer
        .replace_status(&updated)
        .await
        .map_err(Error::UpdateStatus)?;
    Ok(())
}

/// Marks a paused Deployment's Progressing condition Unknown/DeploymentPaused, and a
/// resumed one DeploymentResumed (which restarts the progress deadline).
pub async fn check_paused_conditions(d: &mut Deployment, ctx: &Context) -> Result<()> {
    if deadline(d).is_none() {
        return Ok(());
    }
    let paused = d.spec.as_ref().and_then(|s| s.paused) == Some(true);
    let status = d.status.clone().unwrap_or_default();
    let current = find(&status, PROGRESSING);
    let is_paused_condition = current.is_some_and(|c| c.reason.as_deref() == Some(PAUSED));
    let new = if paused && !is_paused_condition {
        condition(
            PROGRESSING,
            "Unknown",
            PAUSED,
            "Deployment is paused",
            crate::pod::now(),
        )
    } else if !paused && is_paused_condition {
        condition(
            PROGRESSING,
            "Unknown",
            RESUMED,
            "Deployment is resumed",
            crate::pod::now(),
        )
    } else {
        return Ok(());
    };
    let mut updated = d.clone();
    let status = updated.status.get_or_insert_with(Default::default);
    remove_condition(status, PROGRESSING);
    set_condition(status, new);
    *d = ctx
        .deployment_writer
        .replace_status(&updated)
        .await
        .map_err(Error::UpdateStatus)?;
    Ok(())
}

fn condition(
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
    now: DateTime<Utc>,
) -> DeploymentCondition {
    DeploymentCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_update_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
    }
}

fn find<'a>(status: &'a DeploymentStatus, type_: &str) -> Option<&'a DeploymentCondition> {
    status
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
}

fn remove_condition(status: &mut DeploymentStatus, type_: &str) {
    if let Some(conditions) = status.conditions.as_mut() {
        conditions.retain(|c| c.type_ != type_);
    }
}

/// Kubernetes' `SetDeploymentCondition`: the same status and reason is left alone;
/// the same status keeps its transition time.
pub fn set_condition(status: &mut DeploymentStatus, mut new: DeploymentCondition) {
    if let Some(current) = find(status, &new.type_) {
        if current.status == new.status && current.reason == new.reason {
            return;
        }
        if current.status == new.status {
            new.last_transition_time = current.last_transition_time.clone();
        }
    }
    let conditions = status.conditions.get_or_insert_with(Vec::new);
    conditions.retain(|c| c.type_ != new.type_);
    conditions.push(new);
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

    use super::super::testing::*;
    use super::*;

    #[test]
    fn status_counts_and_availability() {
        let d = deployment(10, IntOrString::Int(3), IntOrString::Int(2));
        let old = replicaset(&d, "old", "web:1", 7, 7, 1);
        let new = replicaset(&d, "new", "web:2", 3, 1, 2);
        let status = calculate_status(&d, Some(&new), &[old]).expect("valid");
        assert_eq!(status.replicas, Some(10));
        assert_eq!(status.updated_replicas, Some(3));
        assert_eq!(status.available_replicas, Some(8));
        assert_eq!(status.unavailable_replicas, Some(2));
        // 8 available >= 10 - 2.
        let available = find(&status, AVAILABLE).expect("condition");
        assert_eq!(
            (available.status.as_str(), available.reason.as_deref()),
            ("True", Some(MIN_AVAILABLE))
        );
        assert!(!is_complete(&d, &status));
    }

    #[test]
    fn timed_out_deadline_is_detected() {
        let mut d = deployment(1, IntOrString::Int(1), IntOrString::Int(0));
        if let Some(spec) = d.spec.as_mut() {
            spec.progress_deadline_seconds = Some(10);
        }
        let mut status = DeploymentStatus::default();
        let start = DateTime::<Utc>::UNIX_EPOCH;
        set_condition(
            &mut status,
            condition(PROGRESSING, "True", RS_UPDATED, "x", start),
        );
        assert_eq!(
            timeout_at(&d, &status),
            Some(start + k8s_openapi::chrono::Duration::seconds(10))
        );
        set_condition(
            &mut status,
            condition(PROGRESSING, "True", NEW_RS_AVAILABLE, "x", start),
        );
        assert_eq!(timeout_at(&d, &status), None);
    }
}
