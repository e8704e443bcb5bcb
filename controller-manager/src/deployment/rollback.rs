//! Rollbacks requested with the `deprecated.deployment.rollback.to` annotation (the
//! apps/v1 form of the old `spec.rollbackTo`): copy the template of the ReplicaSet with
//! that revision (0: the previous one) into the Deployment. Kubernetes' `rollback.go`.
//!
//! `kubectl rollout undo` does not use this: it patches the template itself, and
//! [`super::sync::get_all_and_sync_revision`] then gives the reused ReplicaSet the
//! newest revision.

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use rkube_client::controller::Action;
use tracing::info;

use super::sync::split_new_and_old;
use super::{
    equal_ignore_hash, revision_of, Context, Error, Result, POD_TEMPLATE_HASH, ROLLBACK_TO,
};
use crate::events::EventType;

/// The revision a rollback was requested to, if one was.
pub fn requested(d: &Deployment) -> Option<i64> {
    d.metadata
        .annotations
        .as_ref()?
        .get(ROLLBACK_TO)
        .map(|r| r.parse().unwrap_or(0))
}

/// The ReplicaSet to roll back to: the given revision, or (0) the newest revision below
/// the current one.
pub fn target<'a>(
    d: &Deployment,
    rs_list: &'a [ReplicaSet],
    revision: i64,
) -> Option<&'a ReplicaSet> {
    if revision > 0 {
        return rs_list
            .iter()
            .find(|rs| revision_of(&rs.metadata) == revision);
    }
    let (new, old) = split_new_and_old(d, rs_list);
    let current = new.map_or(0, |rs| revision_of(&rs.metadata));
    let previous = old
        .iter()
        .map(|rs| revision_of(&rs.metadata))
        .filter(|r| *r < current || current == 0)
        .max()?;
    rs_list
        .iter()
        .find(|rs| revision_of(&rs.metadata) == previous)
}

/// Performs a requested rollback (or reports why it cannot) and clears the request.
pub async fn rollback(d: &mut Deployment, rs_list: &[ReplicaSet], ctx: &Context) -> Result<Action> {
    let revision = requested(d).unwrap_or(0);
    let mut updated = d.clone();
    if let Some(annotations) = updated.metadata.annotations.as_mut() {
        annotations.remove(ROLLBACK_TO);
    }
    match target(d, rs_list, revision) {
        None => {
            let message = if revision == 0 {
                "Unable to find last revision.".to_string()
            } else {
                format!("Unable to find the revision to rollback to: {revision}")
            };
            ctx.events.record(
                d,
                EventType::Warning,
                "DeploymentRollbackRevisionNotFound",
                message,
            );
        }
        Some(rs) => {
            let mut template = rs
                .spec
                .as_ref()
                .and_then(|s| s.template.clone())
                .unwrap_or_default();
            if let Some(labels) = template.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
                labels.remove(POD_TEMPLATE_HASH);
            }
            let spec = updated.spec.get_or_insert_with(Default::default);
            if equal_ignore_hash(&spec.template, &template) {
                ctx.events.record(
                    d,
                    EventType::Warning,
                    "DeploymentRollbackTemplateUnchanged",
                    format!("The rollback revision contains the same template as current deployment \"{}\"", d.metadata.name.as_deref().unwrap_or("")),
                );
            } else {
                spec.template = template;
                let to = revision_of(&rs.metadata);
                info!(revision = to, "rolling back");
                ctx.events.record(
                    d,
                    EventType::Normal,
                    "DeploymentRollback",
                    format!(
                        "Rolled back deployment \"{}\" to revision {to}",
                        d.metadata.name.as_deref().unwrap_or("")
                    ),
                );
            }
        }
    }
    *d = ctx
        .deployment_writer
        .replace(&updated)
        .await
        .map_err(Error::UpdateDeployment)?;
    Ok(Action::await_change())
}
