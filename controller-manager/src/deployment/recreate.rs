//! The Recreate strategy: scale every old ReplicaSet to zero, wait until their pods are
//! gone, then scale the new ReplicaSet up. Kubernetes' `recreate.go`.

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use rkube_client::controller::Action;

use super::sync::{cleanup, get_all_and_sync_revision, scale_replicaset};
use super::{pods_of, progress, replicas, rs_replicas, Context, Result};

/// One step of a Recreate rollout.
pub async fn rollout(d: &mut Deployment, rs_list: &[ReplicaSet], ctx: &Context) -> Result<Action> {
    // The new ReplicaSet is not created yet: no new pod may start before the old ones
    // are gone.
    let (new, mut old) = get_all_and_sync_revision(d, rs_list, false, ctx).await?;

    let mut scaled_down = false;
    for rs in old.iter_mut().filter(|rs| rs_replicas(rs) > 0) {
        scaled_down |= scale_replicaset(d, rs, 0, ctx).await?;
    }
    if scaled_down {
        return progress::sync_status(d, new.as_ref(), &old, true, ctx).await;
    }
    if old_pods_running(&old, ctx) {
        return progress::sync_status(d, new.as_ref(), &old, true, ctx).await;
    }

    let mut new = match new {
        Some(rs) => rs,
        None => {
            let (created, _) = get_all_and_sync_revision(d, rs_list, true, ctx).await?;
            created.expect("a new replica set is created when missing")
        }
    };
    scale_replicaset(d, &mut new, replicas(d), ctx).await?;
    if progress::is_complete(d, &progress::calculate_status(d, Some(&new), &old)?) {
        cleanup(d, &old, ctx).await?;
    }
    progress::sync_status(d, Some(&new), &old, true, ctx).await
}

/// Whether any pod of the old ReplicaSets still runs (or may: terminating pods count
/// until they are gone), or their status still reports replicas.
fn old_pods_running(old: &[ReplicaSet], ctx: &Context) -> bool {
    if old
        .iter()
        .any(|rs| rs.status.as_ref().is_some_and(|s| s.replicas > 0))
    {
        return true;
    }
    pods_of(ctx, old.iter()).iter().any(|p| {
        !matches!(
            p.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        )
    })
}
