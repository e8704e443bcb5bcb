//! The RollingUpdate strategy: grow the new ReplicaSet and shrink the old ones while
//! staying within `replicas + maxSurge` pods and above `replicas - maxUnavailable`
//! available pods. Kubernetes' `rolling.go` and the arithmetic of its `deployment/util`.

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use rkube_client::controller::Action;

use super::sync::{cleanup, get_all_and_sync_revision, scale_replicaset};
use super::{progress, replicas, rs_replicas, Context, Error, Result, MAX_REPLICAS};

/// `value` as an absolute number of pods out of `total`: integers as they are,
/// percentages rounded up (`round_up`) or down.
///
/// Example: "25%" of 10 is 2.5 → 3 rounded up (maxSurge), 2 rounded down
/// (maxUnavailable).
pub fn scaled_value(value: &IntOrString, total: i32, round_up: bool) -> Result<i32> {
    match value {
        IntOrString::Int(v) => Ok(*v),
        IntOrString::String(s) => {
            let percent: i64 = s
                .strip_suffix('%')
                .and_then(|p| p.parse().ok())
                .ok_or_else(|| Error::InvalidIntOrPercent(s.clone()))?;
            let product = percent * i64::from(total);
            let value = if round_up {
                (product + 99).div_euclid(100)
            } else {
                product.div_euclid(100)
            };
            Ok(value as i32)
        }
    }
}

/// maxSurge and maxUnavailable as absolute numbers for `desired` replicas. Both zero
/// would make a rollout impossible, so maxUnavailable then becomes 1 (Kubernetes'
/// `ResolveFenceposts`).
///
/// Example: defaults 25%/25% with 10 replicas → surge 3 (2.5 up), unavailable 2 (2.5
/// down); with 1 replica → surge 1, unavailable 0.
pub fn resolve_fenceposts(
    max_surge: Option<&IntOrString>,
    max_unavailable: Option<&IntOrString>,
    desired: i32,
) -> Result<(i32, i32)> {
    let default = IntOrString::String("25%".into());
    let surge = scaled_value(max_surge.unwrap_or(&default), desired, true)?;
    let unavailable = scaled_value(max_unavailable.unwrap_or(&default), desired, false)?;
    if surge == 0 && unavailable == 0 {
        return Ok((0, 1));
    }
    Ok((surge, unavailable))
}

fn fenceposts(d: &Deployment) -> Result<Option<(i32, i32)>> {
    let strategy = d.spec.as_ref().and_then(|s| s.strategy.as_ref());
    if strategy.and_then(|s| s.type_.as_deref()) == Some("Recreate") {
        return Ok(None);
    }
    let rolling = strategy.and_then(|s| s.rolling_update.as_ref());
    resolve_fenceposts(
        rolling.and_then(|r| r.max_surge.as_ref()),
        rolling.and_then(|r| r.max_unavailable.as_ref()),
        replicas(d),
    )
    .map(Some)
}

/// Pods the Deployment may run above `spec.replicas` (0 for Recreate).
pub fn max_surge(d: &Deployment) -> Result<i32> {
    Ok(fenceposts(d)?.map_or(0, |(surge, _)| surge))
}

/// Pods that may be unavailable during the rollout, never more than `spec.replicas`
/// (0 for Recreate).
pub fn max_unavailable(d: &Deployment) -> Result<i32> {
    Ok(fenceposts(d)?.map_or(0, |(_, unavailable)| unavailable.min(replicas(d))))
}

/// The size the new ReplicaSet may grow to now (Kubernetes' `NewRSNewReplicas`).
///
/// Example: 10 replicas, maxSurge 3, old ReplicaSets at 10 and new at 0: 13 pods are
/// allowed, 10 exist, so the new ReplicaSet grows by min(3, 10 - 0) = 3. Once old pods
/// are scaled down to 8, the new one may grow to 13 - 8 = 5.
pub fn new_rs_new_replicas(d: &Deployment, all: &[ReplicaSet], new: &ReplicaSet) -> Result<i32> {
    let want = replicas(d);
    let Some((surge, _)) = fenceposts(d)? else {
        return Ok(want);
    };
    let current: i32 = all
        .iter()
        .filter(|rs| rs.metadata.uid.is_none() || rs.metadata.uid != new.metadata.uid)
        .map(rs_replicas)
        .sum::<i32>()
        + rs_replicas(new);
    let max_total = want + surge;
    if current >= max_total {
        return Ok(rs_replicas(new));
    }
    let scale_up = (max_total - current).min(want - rs_replicas(new));
    Ok(rs_replicas(new) + scale_up.max(0))
}

/// Sizes for every ReplicaSet in `all` after the Deployment was resized mid-rollout:
/// the difference between `replicas + maxSurge` and the current total is shared in
/// proportion to each ReplicaSet's size, with the rounding leftover going to the
/// largest (newest on ties when growing, oldest when shrinking). Kubernetes' `scale`.
///
/// Example: 10 replicas with maxSurge 3, old at 8 and new at 5 (13 pods). Scaled to 15:
/// 18 pods allowed, 5 to add. Old: 8 × 18 / 13 = 11.08 → 11 (+3); new: 5 × 18 / 13 = 6.92
/// → 7 (+2). Result: old 11, new 7.
pub fn proportional_sizes(d: &Deployment, all: &[ReplicaSet]) -> Result<Vec<i32>> {
    let want = replicas(d);
    let surge = max_surge(d)?;
    let current: i32 = all.iter().map(rs_replicas).sum();
    let allowed = want + surge;
    let to_add = allowed - current;
    let mut order: Vec<usize> = (0..all.len()).collect();
    let created = |i: usize| all[i].metadata.creation_timestamp.clone();
    if to_add > 0 {
        // Larger first; newer first on ties.
        order.sort_by(|&a, &b| {
            rs_replicas(&all[b])
                .cmp(&rs_replicas(&all[a]))
                .then_with(|| created(b).cmp(&created(a)))
        });
    } else {
        // Larger first; older first on ties.
        order.sort_by(|&a, &b| {
            rs_replicas(&all[b])
                .cmp(&rs_replicas(&all[a]))
                .then_with(|| created(a).cmp(&created(b)))
        });
    }
    let mut sizes: Vec<i32> = all.iter().map(rs_replicas).collect();
    let mut added = 0;
    for &i in &order {
        let rs = &all[i];
        if to_add == 0 || rs_replicas(rs) == 0 || added == to_add {
            continue;
        }
        let fraction = if want == 0 {
            -rs_replicas(rs)
        } else {
            let annotated = rs
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(MAX_REPLICAS))
                .and_then(|v| v.parse::<i32>().ok())
                .unwrap_or_else(|| {
                    d.status
                        .as_ref()
                        .and_then(|s| s.replicas)
                        .unwrap_or(current)
                        .max(1)
                });
            let scaled =
                f64::from(rs_replicas(rs)) * f64::from(allowed) / f64::from(annotated.max(1));
            scaled.round() as i32 - rs_replicas(rs)
        };
        let remaining = to_add - added;
        let share = if to_add > 0 {
            fraction.min(remaining)
        } else {
            fraction.max(remaining)
        };
        sizes[i] += share;
        added += share;
    }
    if let Some(&first) = order.first() {
        if to_add != 0 {
            sizes[first] = (sizes[first] + to_add - added).max(0);
        }
    }
    Ok(sizes)
}

/// How many old pods may go now without dropping below `replicas - maxUnavailable`
/// available pods, counting the new ReplicaSet's unavailable pods as already missing.
///
/// Example: 10 replicas, maxUnavailable 2 (min available 8), 13 pods in all, the new
/// ReplicaSet at 3 of which 1 available: 13 - 8 - (3 - 1) = 3 old pods may go.
pub fn max_scaled_down(
    d: &Deployment,
    all: &[ReplicaSet],
    new: Option<&ReplicaSet>,
) -> Result<i32> {
    let all_pods: i32 = all.iter().map(rs_replicas).sum();
    let min_available = replicas(d) - max_unavailable(d)?;
    let new_unavailable = new.map_or(0, |rs| rs_replicas(rs) - available(rs));
    Ok(all_pods - min_available - new_unavailable)
}

/// The available pods a ReplicaSet's status reports, at most as many as it wants: a
/// status written before the set was last scaled down still counts the pods being
/// removed, and counting them would let the next step remove more than maxUnavailable
/// allows (Kubernetes counts them; the cap only makes a step more careful).
fn available(rs: &ReplicaSet) -> i32 {
    rs.status
        .as_ref()
        .and_then(|s| s.available_replicas)
        .unwrap_or(0)
        .min(rs_replicas(rs))
}

/// One step of a rolling update: grow the new ReplicaSet, else shrink old ones, else
/// (when done) clean up history; always bring the status up to date.
pub async fn rollout(d: &mut Deployment, rs_list: &[ReplicaSet], ctx: &Context) -> Result<Action> {
    let (new, mut old) = get_all_and_sync_revision(d, rs_list, true, ctx).await?;
    let mut new = new.expect("a new replica set is created when missing");

    // Grow the new ReplicaSet.
    let all: Vec<ReplicaSet> = old.iter().cloned().chain([new.clone()]).collect();
    let want = replicas(d);
    let target = if rs_replicas(&new) > want {
        want
    } else {
        new_rs_new_replicas(d, &all, &new)?
    };
    if target != rs_replicas(&new) && scale_replicaset(d, &mut new, target, ctx).await? {
        return progress::sync_status(d, Some(&new), &old, true, ctx).await;
    }

    // Shrink the old ones.
    if scale_down_old(d, &mut old, &new, ctx).await? {
        return progress::sync_status(d, Some(&new), &old, true, ctx).await;
    }

    if progress::is_complete(d, &progress::calculate_status(d, Some(&new), &old)?) {
        cleanup(d, &old, ctx).await?;
    }
    progress::sync_status(d, Some(&new), &old, true, ctx).await
}

/// Kubernetes' `reconcileOldReplicaSets`: first scale away old pods that are not
/// available anyway (they do not count towards availability), then available ones as
/// far as maxUnavailable allows. Returns whether anything was scaled.
async fn scale_down_old(
    d: &Deployment,
    old: &mut [ReplicaSet],
    new: &ReplicaSet,
    ctx: &Context,
) -> Result<bool> {
    let old_pods: i32 = old.iter().map(rs_replicas).sum();
    if old_pods == 0 {
        return Ok(false);
    }
    let all: Vec<ReplicaSet> = old.iter().cloned().chain([new.clone()]).collect();
    let max_down = max_scaled_down(d, &all, Some(new))?;
    if max_down <= 0 {
        return Ok(false);
    }
    let plan = scale_down_plan(d, old, new, max_down)?;
    let mut scaled = false;
    for (index, size) in plan {
        scaled |= scale_replicaset(d, &mut old[index], size, ctx).await?;
    }
    Ok(scaled)
}

/// The new sizes of old ReplicaSets (index, size) for one scale-down step, oldest
/// first: unhealthy pods (spec - available) up to `max_down`, then available pods down
/// to `replicas - maxUnavailable` available in all.
///
/// Example: 10 replicas, maxUnavailable 2, old at 10 (all available), new at 3 (3
/// available): 13 available, min 8, so 5 old pods go → old at 5.
pub fn scale_down_plan(
    d: &Deployment,
    old: &[ReplicaSet],
    new: &ReplicaSet,
    max_down: i32,
) -> Result<Vec<(usize, i32)>> {
    let mut order: Vec<usize> = (0..old.len()).collect();
    order.sort_by_key(|&i| {
        (
            old[i].metadata.creation_timestamp.clone(),
            old[i].metadata.name.clone(),
        )
    });
    let mut sizes: Vec<i32> = old.iter().map(rs_replicas).collect();
    let mut plan = Vec::new();

    // Unhealthy pods first.
    let mut cleaned = 0;
    for &i in &order {
        if cleaned >= max_down {
            break;
        }
        let unhealthy = sizes[i] - available(&old[i]);
        if sizes[i] == 0 || unhealthy <= 0 {
            continue;
        }
        let down = unhealthy.min(max_down - cleaned);
        sizes[i] -= down;
        cleaned += down;
    }

    // Then available pods, as far as availability allows.
    let min_available = replicas(d) - max_unavailable(d)?;
    let available_now: i32 = old
        .iter()
        .zip(&sizes)
        .map(|(rs, _)| available(rs))
        .sum::<i32>()
        + available(new);
    if available_now > min_available {
        let mut total = available_now - min_available;
        for &i in &order {
            if total == 0 {
                break;
            }
            if sizes[i] == 0 {
                continue;
            }
            let down = sizes[i].min(total);
            sizes[i] -= down;
            total -= down;
        }
    }
    for &i in &order {
        if sizes[i] != rs_replicas(&old[i]) {
            plan.push((i, sizes[i]));
        }
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    fn int(v: i32) -> IntOrString {
        IntOrString::Int(v)
    }
    fn pct(v: &str) -> IntOrString {
        IntOrString::String(v.into())
    }

    #[test]
    fn fenceposts_round_like_kubernetes() {
        let cases = [
            ("25%/25% of 10", pct("25%"), pct("25%"), 10, (3, 2)),
            ("25%/25% of 1", pct("25%"), pct("25%"), 1, (1, 0)),
            ("25%/25% of 4", pct("25%"), pct("25%"), 4, (1, 1)),
            ("0/0 becomes 0/1", int(0), int(0), 5, (0, 1)),
            ("0%/0% becomes 0/1", pct("0%"), pct("0%"), 5, (0, 1)),
            ("absolute", int(2), int(1), 5, (2, 1)),
            ("30%/30% of 1000", pct("30%"), pct("30%"), 1000, (300, 300)),
            ("1%/1% of 150", pct("1%"), pct("1%"), 150, (2, 1)),
        ];
        for (name, surge, unavailable, desired, want) in cases {
            let got = resolve_fenceposts(Some(&surge), Some(&unavailable), desired).expect(name);
            assert_eq!(got, want, "{name}");
        }
        assert!(scaled_value(&pct("x%"), 10, true).is_err());
    }

    #[test]
    fn max_unavailable_is_capped_by_replicas() {
        let d = deployment(2, int(1), int(5));
        assert_eq!(max_unavailable(&d).expect("valid"), 2);
    }

    #[test]
    fn new_replica_set_grows_within_max_surge() {
        let d = deployment(10, int(3), int(2));
        let old = replicaset(&d, "old", "web:1", 10, 10, 1);
        let new = replicaset(&d, "new", "web:2", 0, 0, 2);
        let all = vec![old.clone(), new.clone()];
        assert_eq!(new_rs_new_replicas(&d, &all, &new).expect("valid"), 3);
        let old = replicaset(&d, "old", "web:1", 8, 8, 1);
        let new = replicaset(&d, "new", "web:2", 3, 0, 2);
        let all = vec![old, new.clone()];
        assert_eq!(new_rs_new_replicas(&d, &all, &new).expect("valid"), 5);
        // Never beyond replicas.
        let new = replicaset(&d, "new", "web:2", 9, 0, 2);
        let old = replicaset(&d, "old", "web:1", 0, 0, 1);
        assert_eq!(
            new_rs_new_replicas(&d, &[old, new.clone()], &new).expect("valid"),
            10
        );
    }

    #[test]
    fn old_replica_sets_shrink_within_max_unavailable() {
        let d = deployment(10, int(3), int(2));
        let old = replicaset(&d, "old", "web:1", 10, 10, 1);
        let new = replicaset(&d, "new", "web:2", 3, 1, 2);
        let all = vec![old.clone(), new.clone()];
        // 13 pods, min available 8, new has 2 unavailable: 3 may go.
        assert_eq!(max_scaled_down(&d, &all, Some(&new)).expect("valid"), 3);
        // 11 available (10 old + 1 new), 8 needed: 3 old go.
        assert_eq!(
            scale_down_plan(&d, &[old], &new, 3).expect("valid"),
            vec![(0, 7)]
        );
    }

    #[test]
    fn pods_an_old_set_is_removing_do_not_count_as_available() {
        // 6 replicas, maxUnavailable 1 (min available 5). The old set was scaled 6 → 5
        // and its status still says 6 available; the new set has 1 of 2 available.
        let d = deployment(6, int(2), int(1));
        let old = replicaset(&d, "old", "web:1", 5, 6, 1);
        let new = replicaset(&d, "new", "web:2", 2, 1, 2);
        // 5 + 1 available, not 6 + 1: one more old pod may go, not two (which would
        // leave 4 + 1 = 5 - 1 available pods once the first removal lands).
        assert_eq!(
            scale_down_plan(&d, &[old], &new, 3).expect("valid"),
            vec![(0, 4)]
        );
    }

    #[test]
    fn unhealthy_old_pods_go_first_oldest_set_first() {
        let d = deployment(10, int(0), int(1));
        let oldest = replicaset(&d, "oldest", "web:0", 2, 0, 1);
        let old = replicaset(&d, "old", "web:1", 8, 8, 2);
        let new = replicaset(&d, "new", "web:2", 0, 0, 3);
        // 10 pods, 9 must stay available, new has none unavailable: 1 may go.
        let all = vec![oldest.clone(), old.clone(), new.clone()];
        let max_down = max_scaled_down(&d, &all, Some(&new)).expect("valid");
        assert_eq!(max_down, 1);
        // The unhealthy pod of the oldest set goes; the 8 available ones stay as 8 < 9
        // means none of them may go.
        let plan = scale_down_plan(&d, &[oldest, old], &new, max_down).expect("valid");
        assert_eq!(plan, vec![(0, 1)]);
    }

    #[test]
    fn scaling_mid_rollout_is_proportional() {
        // The worked example of `proportional_sizes`.
        let mut d = deployment(15, int(3), int(2));
        d.status = Some(Default::default());
        let mut old = replicaset(&d, "old", "web:1", 8, 8, 1);
        let mut new = replicaset(&d, "new", "web:2", 5, 0, 2);
        for rs in [&mut old, &mut new] {
            rs.metadata
                .annotations
                .get_or_insert_with(Default::default)
                .insert(MAX_REPLICAS.into(), "13".into());
        }
        assert_eq!(
            proportional_sizes(&d, &[new.clone(), old.clone()]).expect("valid"),
            vec![7, 11]
        );
        // Scaling down to 5: 8 allowed, 5 to remove. Old 8×8/13 = 4.9 → 5 (-3), new
        // 5×8/13 = 3.1 → 3 (-2).
        let d = deployment(5, int(3), int(2));
        assert_eq!(
            proportional_sizes(&d, &[new, old]).expect("valid"),
            vec![3, 5]
        );
    }
}
