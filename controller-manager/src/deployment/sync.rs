//! Finding the new and old ReplicaSets of a Deployment (creating the new one, keeping
//! revisions in order), scaling them, cleaning up history: Kubernetes' `sync.go`.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, ReplicaSetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use rkube_api::selector::LabelSelector;
use rkube_client::controller::Action;
use rkube_client::DeleteParams;
use tracing::{debug, info};

use super::{
    equal_ignore_hash, pod_template_hash, progress, replicas, revision_of, rolling, rs_replicas,
    Context, Error, Result, DESIRED_REPLICAS, MAX_REPLICAS, POD_TEMPLATE_HASH, REVISION,
    REVISION_HISTORY, ROLLBACK_TO,
};
use crate::events::EventType;
use crate::pod;

/// Annotations of a Deployment that are not copied to its ReplicaSets.
const NOT_COPIED: &[&str] = &[
    "kubectl.kubernetes.io/last-applied-configuration",
    REVISION,
    REVISION_HISTORY,
    DESIRED_REPLICAS,
    MAX_REPLICAS,
    ROLLBACK_TO,
];

/// The ReplicaSets `d` controls after adopting matching orphans and releasing owned
/// ReplicaSets that no longer match.
pub async fn claim_replicasets(
    d: &mut Deployment,
    selector: &LabelSelector,
    ctx: &Context,
) -> Result<Vec<ReplicaSet>> {
    let uid = d.metadata.uid.clone().unwrap_or_default();
    let namespace = d.metadata.namespace.clone();
    let deleting = d.metadata.deletion_timestamp.is_some();
    let mut owned = Vec::new();
    for rs in ctx.replicasets.state() {
        if rs.metadata.namespace != namespace {
            continue;
        }
        let labels = rs.metadata.labels.clone().unwrap_or_default();
        let matches = selector.matches(&labels);
        let name = rs.metadata.name.clone().unwrap_or_default();
        match pod::controller_of(&rs.metadata) {
            Some(owner) if owner.uid == uid => {
                if matches || deleting {
                    owned.push((*rs).clone());
                } else {
                    let mut released = (*rs).clone();
                    if let Some(refs) = released.metadata.owner_references.as_mut() {
                        refs.retain(|o| o.uid != uid);
                    }
                    info!(replicaset = %name, "releasing replica set that no longer matches");
                    ctx.rs_writer
                        .replace(&released)
                        .await
                        .map_err(|e| Error::UpdateReplicaSet(name, e))?;
                }
            }
            Some(_) => {}
            None if matches && !deleting && rs.metadata.deletion_timestamp.is_none() => {
                let mut adopted = (*rs).clone();
                adopted
                    .metadata
                    .owner_references
                    .get_or_insert_with(Vec::new)
                    .push(pod::controller_ref("apps/v1", "Deployment", &d.metadata));
                info!(replicaset = %name, "adopting orphan replica set");
                let stored = ctx
                    .rs_writer
                    .replace(&adopted)
                    .await
                    .map_err(|e| Error::UpdateReplicaSet(name, e))?;
                owned.push(stored);
            }
            None => {}
        }
    }
    Ok(owned)
}

/// The ReplicaSet whose template is the Deployment's (the oldest, if several), and the
/// others.
pub fn split_new_and_old(
    d: &Deployment,
    rs_list: &[ReplicaSet],
) -> (Option<ReplicaSet>, Vec<ReplicaSet>) {
    let template = d
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default();
    let mut matching: Vec<&ReplicaSet> = rs_list
        .iter()
        .filter(|rs| {
            rs.spec
                .as_ref()
                .and_then(|s| s.template.as_ref())
                .is_some_and(|t| equal_ignore_hash(t, &template))
        })
        .collect();
    matching.sort_by_key(|rs| {
        (
            rs.metadata.creation_timestamp.clone(),
            rs.metadata.name.clone(),
        )
    });
    let new = matching.first().map(|rs| (*rs).clone());
    let new_uid = new.as_ref().and_then(|rs| rs.metadata.uid.clone());
    let old = rs_list
        .iter()
        .filter(|rs| rs.metadata.uid != new_uid || new_uid.is_none())
        .cloned()
        .collect();
    (new, old)
}

/// The new ReplicaSet (created when `create` and missing) and the old ones, with the
/// new one's revision moved above every old one (this is what renumbers revisions
/// when `kubectl rollout undo` brings an old template back: history `1, 2` becomes
/// `2, 3`) and the Deployment's revision annotation following it.
pub async fn get_all_and_sync_revision(
    d: &mut Deployment,
    rs_list: &[ReplicaSet],
    create: bool,
    ctx: &Context,
) -> Result<(Option<ReplicaSet>, Vec<ReplicaSet>)> {
    let (existing, old) = split_new_and_old(d, rs_list);
    let max_old = old
        .iter()
        .map(|rs| revision_of(&rs.metadata))
        .max()
        .unwrap_or(0);
    let new_revision = max_old + 1;
    let new = match existing {
        Some(rs) => Some(sync_existing_new_rs(d, rs, new_revision, ctx).await?),
        None if create => Some(create_new_rs(d, &old, new_revision, ctx).await?),
        None => None,
    };
    if let Some(rs) = &new {
        let revision = revision_of(&rs.metadata).to_string();
        let annotations = d.metadata.annotations.get_or_insert_with(BTreeMap::new);
        if annotations.get(REVISION) != Some(&revision) {
            annotations.insert(REVISION.into(), revision);
            *d = ctx
                .deployment_writer
                .replace(d)
                .await
                .map_err(Error::UpdateDeployment)?;
        }
    }
    Ok((new, old))
}

/// Copies the Deployment's annotations (change-cause…) onto `rs` and sets the revision;
/// returns whether anything changed.
fn set_new_rs_annotations(d: &Deployment, rs: &mut ReplicaSet, revision: i64) -> bool {
    let before = rs.metadata.annotations.clone();
    let annotations = rs.metadata.annotations.get_or_insert_with(BTreeMap::new);
    for (k, v) in d.metadata.annotations.iter().flatten() {
        if !NOT_COPIED.contains(&k.as_str()) {
            annotations.insert(k.clone(), v.clone());
        }
    }
    let old_revision = annotations
        .get(REVISION)
        .and_then(|r| r.parse::<i64>().ok())
        .unwrap_or(0);
    if old_revision < revision {
        if old_revision > 0 {
            let history = match annotations.get(REVISION_HISTORY) {
                Some(h) if !h.is_empty() => format!("{h},{old_revision}"),
                _ => old_revision.to_string(),
            };
            annotations.insert(REVISION_HISTORY.into(), history);
        }
        annotations.insert(REVISION.into(), revision.to_string());
    }
    rs.metadata.annotations != before
}

async fn sync_existing_new_rs(
    d: &Deployment,
    rs: ReplicaSet,
    new_revision: i64,
    ctx: &Context,
) -> Result<ReplicaSet> {
    let mut updated = rs.clone();
    let mut changed = set_new_rs_annotations(d, &mut updated, new_revision);
    let min_ready = d.spec.as_ref().and_then(|s| s.min_ready_seconds);
    if let Some(spec) = updated.spec.as_mut() {
        if spec.min_ready_seconds != min_ready {
            spec.min_ready_seconds = min_ready;
            changed = true;
        }
    }
    if !changed {
        return Ok(rs);
    }
    let name = rs.metadata.name.clone().unwrap_or_default();
    info!(replicaset = %name, revision = new_revision, "updating revision of new replica set");
    ctx.rs_writer
        .replace(&updated)
        .await
        .map_err(|e| Error::UpdateReplicaSet(name, e))
}

async fn create_new_rs(
    d: &mut Deployment,
    old: &[ReplicaSet],
    revision: i64,
    ctx: &Context,
) -> Result<ReplicaSet> {
    let spec = d.spec.clone().unwrap_or_default();
    let collision_count = d.status.as_ref().and_then(|s| s.collision_count);
    let hash = pod_template_hash(&spec.template, collision_count);
    let d_name = d.metadata.name.clone().unwrap_or_default();
    let name = format!("{d_name}-{hash}");

    let mut template = spec.template.clone();
    template
        .metadata
        .get_or_insert_with(Default::default)
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(POD_TEMPLATE_HASH.into(), hash.clone());
    let mut selector = spec.selector.clone();
    selector
        .match_labels
        .get_or_insert_with(BTreeMap::new)
        .insert(POD_TEMPLATE_HASH.into(), hash.clone());
    let labels = template.metadata.as_ref().and_then(|m| m.labels.clone());

    let mut rs = ReplicaSet {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: d.metadata.namespace.clone(),
            labels,
            owner_references: Some(vec![pod::controller_ref(
                "apps/v1",
                "Deployment",
                &d.metadata,
            )]),
            ..Default::default()
        },
        spec: Some(ReplicaSetSpec {
            replicas: Some(0),
            min_ready_seconds: spec.min_ready_seconds,
            selector,
            template: Some(template),
        }),
        status: None,
    };
    let all: Vec<ReplicaSet> = old.to_vec();
    let new_replicas = rolling::new_rs_new_replicas(d, &all, &rs)?;
    if let Some(s) = rs.spec.as_mut() {
        s.replicas = Some(new_replicas);
    }
    set_new_rs_annotations(d, &mut rs, revision);
    set_replicas_annotations(&mut rs, replicas(d), replicas(d) + rolling::max_surge(d)?);

    match ctx.rs_writer.create(&rs).await {
        Ok(created) => {
            info!(replicaset = %name, replicas = new_replicas, revision, "created new replica set");
            if new_replicas > 0 {
                ctx.events.record(
                    d,
                    EventType::Normal,
                    "ScalingReplicaSet",
                    format!("Scaled up replica set {name} from 0 to {new_replicas}"),
                );
            }
            progress::new_rs_created(d, &name, ctx).await?;
            Ok(created)
        }
        Err(err) if err.is_already_exists() => {
            // Ours, with the same template, and the cache has not seen it yet: retry
            // later. Someone else's, or another template: a hash collision.
            let key = rkube_client::ObjectRef::new(&name)
                .within(d.metadata.namespace.as_deref().unwrap_or_default());
            match ctx.replicasets.get(&key) {
                None => Err(Error::CacheBehind(name)),
                Some(existing)
                    if pod::controller_of(&existing.metadata)
                        .is_some_and(|o| Some(&o.uid) == d.metadata.uid.as_ref())
                        && existing
                            .spec
                            .as_ref()
                            .and_then(|s| s.template.as_ref())
                            .is_some_and(|t| equal_ignore_hash(t, &spec.template)) =>
                {
                    Ok((*existing).clone())
                }
                Some(_) => {
                    let mut bumped = d.clone();
                    let status = bumped.status.get_or_insert_with(Default::default);
                    status.collision_count = Some(collision_count.unwrap_or(0) + 1);
                    *d = ctx
                        .deployment_writer
                        .replace_status(&bumped)
                        .await
                        .map_err(Error::UpdateStatus)?;
                    Err(Error::HashCollision(name))
                }
            }
        }
        Err(err) => {
            ctx.events.record(
                d,
                EventType::Warning,
                "FailedCreate",
                format!("Failed to create new replica set {name}: {err}"),
            );
            Err(Error::CreateReplicaSet(name, err))
        }
    }
}

/// Records the Deployment size a ReplicaSet was scaled for; returns whether anything
/// changed.
pub fn set_replicas_annotations(rs: &mut ReplicaSet, desired: i32, max: i32) -> bool {
    let annotations = rs.metadata.annotations.get_or_insert_with(BTreeMap::new);
    let mut changed = false;
    for (key, value) in [(DESIRED_REPLICAS, desired), (MAX_REPLICAS, max)] {
        let value = value.to_string();
        if annotations.get(key) != Some(&value) {
            annotations.insert(key.to_string(), value);
            changed = true;
        }
    }
    changed
}

/// Scales `rs` to `new_scale` (and refreshes its replicas annotations); returns whether
/// the size changed. `rs` is replaced by the stored object.
pub async fn scale_replicaset(
    d: &Deployment,
    rs: &mut ReplicaSet,
    new_scale: i32,
    ctx: &Context,
) -> Result<bool> {
    let old_scale = rs_replicas(rs);
    let size_changes = old_scale != new_scale;
    let mut updated = rs.clone();
    if let Some(spec) = updated.spec.as_mut() {
        spec.replicas = Some(new_scale);
    }
    let annotations_change = set_replicas_annotations(
        &mut updated,
        replicas(d),
        replicas(d) + rolling::max_surge(d)?,
    );
    if !size_changes && !annotations_change {
        return Ok(false);
    }
    let name = rs.metadata.name.clone().unwrap_or_default();
    *rs = ctx
        .rs_writer
        .replace(&updated)
        .await
        .map_err(|e| Error::UpdateReplicaSet(name.clone(), e))?;
    if size_changes {
        let direction = if new_scale > old_scale { "up" } else { "down" };
        info!(replicaset = %name, from = old_scale, to = new_scale, "scaled replica set");
        ctx.events.record(
            d,
            EventType::Normal,
            "ScalingReplicaSet",
            format!("Scaled {direction} replica set {name} from {old_scale} to {new_scale}"),
        );
    }
    Ok(size_changes)
}

/// Whether the Deployment was resized since its active ReplicaSets were last scaled
/// (their desired-replicas annotation differs from `spec.replicas`).
pub fn is_scaling_event(d: &Deployment, rs_list: &[ReplicaSet]) -> bool {
    let want = replicas(d).to_string();
    rs_list
        .iter()
        .filter(|rs| rs_replicas(rs) > 0)
        .filter_map(|rs| rs.metadata.annotations.as_ref()?.get(DESIRED_REPLICAS))
        .any(|desired| *desired != want)
}

/// Only brings the status up to date (a Deployment being deleted).
pub async fn sync_status_only(
    d: &mut Deployment,
    rs_list: &[ReplicaSet],
    ctx: &Context,
) -> Result<Action> {
    let (new, old) = get_all_and_sync_revision(d, rs_list, false, ctx).await?;
    progress::sync_status(d, new.as_ref(), &old, false, ctx).await
}

/// Scaling events and paused Deployments: resize the ReplicaSets without rolling out.
pub async fn sync(d: &mut Deployment, rs_list: &[ReplicaSet], ctx: &Context) -> Result<Action> {
    let (mut new, mut old) = get_all_and_sync_revision(d, rs_list, false, ctx).await?;
    scale(d, new.as_mut(), &mut old, ctx).await?;
    let paused = d.spec.as_ref().and_then(|s| s.paused) == Some(true);
    if paused && rollback_requested_none(d) {
        cleanup(d, &old, ctx).await?;
    }
    progress::sync_status(d, new.as_ref(), &old, false, ctx).await
}

fn rollback_requested_none(d: &Deployment) -> bool {
    super::rollback::requested(d).is_none()
}

/// Resizes the ReplicaSets after the Deployment was resized: all to one ReplicaSet when
/// only one runs; old ones to zero once the new one is saturated; otherwise, during a
/// rolling update, proportionally (see [`rolling::proportional_sizes`]).
pub async fn scale(
    d: &Deployment,
    new: Option<&mut ReplicaSet>,
    old: &mut [ReplicaSet],
    ctx: &Context,
) -> Result<()> {
    let want = replicas(d);
    let active_new = new.as_ref().is_some_and(|rs| rs_replicas(rs) > 0);
    let active_old = old.iter().filter(|rs| rs_replicas(rs) > 0).count();
    // One ReplicaSet running (or none): it takes the whole size.
    if usize::from(active_new) + active_old <= 1 {
        let target: Option<&mut ReplicaSet> = if active_new || (active_old == 0 && new.is_some()) {
            new
        } else if active_old == 1 {
            old.iter_mut().find(|rs| rs_replicas(rs) > 0)
        } else {
            old.iter_mut().max_by_key(|rs| revision_of(&rs.metadata))
        };
        if let Some(rs) = target {
            scale_replicaset(d, rs, want, ctx).await?;
        }
        return Ok(());
    }
    if let Some(new_rs) = new.as_ref() {
        if is_saturated(d, new_rs) {
            for rs in old.iter_mut().filter(|rs| rs_replicas(rs) > 0) {
                scale_replicaset(d, rs, 0, ctx).await?;
            }
            return Ok(());
        }
    }
    let rolling = d
        .spec
        .as_ref()
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.type_.as_deref())
        != Some("Recreate");
    if !rolling {
        return Ok(());
    }
    let mut all: Vec<&mut ReplicaSet> = Vec::new();
    if let Some(rs) = new {
        all.push(rs);
    }
    all.extend(old.iter_mut());
    let snapshot: Vec<ReplicaSet> = all.iter().map(|rs| (**rs).clone()).collect();
    let sizes = rolling::proportional_sizes(d, &snapshot)?;
    for (rs, size) in all.into_iter().zip(sizes) {
        debug!(replicaset = ?rs.metadata.name, size, "proportional size");
        scale_replicaset(d, rs, size, ctx).await?;
    }
    Ok(())
}

/// The new ReplicaSet has all the Deployment's replicas, available.
fn is_saturated(d: &Deployment, rs: &ReplicaSet) -> bool {
    let want = replicas(d);
    let desired = rs
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(DESIRED_REPLICAS))
        .and_then(|v| v.parse::<i32>().ok());
    rs_replicas(rs) == want
        && desired == Some(want)
        && rs
            .status
            .as_ref()
            .and_then(|s| s.available_replicas)
            .unwrap_or(0)
            == want
}

/// Deletes the oldest scaled-down ReplicaSets beyond `revisionHistoryLimit` (default 10).
pub async fn cleanup(d: &Deployment, old: &[ReplicaSet], ctx: &Context) -> Result<()> {
    let limit = d
        .spec
        .as_ref()
        .and_then(|s| s.revision_history_limit)
        .unwrap_or(10)
        .max(0) as usize;
    let mut cleanable: Vec<&ReplicaSet> = old
        .iter()
        .filter(|rs| {
            let status = rs.status.clone().unwrap_or_default();
            rs.metadata.deletion_timestamp.is_none()
                && rs_replicas(rs) == 0
                && status.replicas == 0
                && status.observed_generation >= rs.metadata.generation
        })
        .collect();
    if cleanable.len() <= limit {
        return Ok(());
    }
    cleanable.sort_by_key(|rs| {
        (
            revision_of(&rs.metadata),
            rs.metadata.creation_timestamp.clone(),
        )
    });
    let surplus = cleanable.len() - limit;
    for rs in cleanable.into_iter().take(surplus) {
        let name = rs.metadata.name.clone().unwrap_or_default();
        info!(replicaset = %name, "deleting old replica set beyond revision history limit");
        match ctx
            .rs_writer
            .delete(
                rs.metadata.namespace.as_deref(),
                &name,
                &DeleteParams::default(),
            )
            .await
        {
            Ok(_) => {}
            Err(err) if err.is_not_found() => {}
            Err(err) => return Err(Error::DeleteReplicaSet(name, err)),
        }
    }
    Ok(())
}
