//! PodTopologySpread: `topologySpreadConstraints`. DoNotSchedule constraints filter
//! nodes whose domain would exceed `maxSkew` over the least loaded domain;
//! ScheduleAnyway constraints score nodes in less loaded domains higher.
//!
//! Only nodes that pass the pod's node affinity/selector (`nodeAffinityPolicy: Honor`,
//! the default) and, with `nodeTaintsPolicy: Honor`, whose taints the pod tolerates,
//! and that carry every constraint's topology key, count as domains.

use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::TopologySpreadConstraint;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;
use rkube_api::selector::LabelSelector;

use crate::framework::{
    Code, CycleState, FilterPlugin, Plugin, PreFilterPlugin, PreScorePlugin, ScorePlugin, Status,
    MAX_NODE_SCORE,
};
use crate::node_info::{tolerates, NodeInfo, PodInfo, Snapshot};

pub const NAME: &str = "PodTopologySpread";
pub const REASON: &str = "node(s) didn't match pod topology spread constraints";
pub const REASON_MISSING_LABEL: &str =
    "node(s) didn't match pod topology spread constraints (missing required label)";

/// One constraint, parsed.
#[derive(Debug, Clone)]
struct Constraint {
    max_skew: i64,
    topology_key: String,
    /// `None`: the selector is missing or invalid and selects no pod.
    selector: Option<LabelSelector>,
    min_domains: i64,
    honor_affinity: bool,
    honor_taints: bool,
}

impl Constraint {
    fn new(c: &TopologySpreadConstraint, pod: &PodInfo) -> Constraint {
        // matchLabelKeys: `key in (<the pod's value>)` joins the selector.
        let selector = c.label_selector.as_ref().and_then(|s| {
            let mut s = s.clone();
            for key in c.match_label_keys.iter().flatten() {
                if let Some(v) = pod.labels.get(key) {
                    s.match_expressions.get_or_insert_with(Vec::new).push(
                        LabelSelectorRequirement {
                            key: key.clone(),
                            operator: "In".to_string(),
                            values: Some(vec![v.clone()]),
                        },
                    );
                }
            }
            LabelSelector::from_k8s(&s).ok()
        });
        Constraint {
            max_skew: i64::from(c.max_skew),
            topology_key: c.topology_key.clone(),
            selector,
            min_domains: i64::from(c.min_domains.unwrap_or(1)),
            honor_affinity: c.node_affinity_policy.as_deref() != Some("Ignore"),
            honor_taints: c.node_taints_policy.as_deref() == Some("Honor"),
        }
    }

    fn selects(&self, pod: &PodInfo, namespace: &str) -> bool {
        pod.namespace == namespace
            && !pod.is_terminating()
            && self
                .selector
                .as_ref()
                .is_some_and(|s| s.matches(&pod.labels))
    }
}

fn constraints(pod: &PodInfo, when: &str) -> Vec<Constraint> {
    pod.spread_constraints
        .iter()
        .filter(|c| c.when_unsatisfiable == when)
        .map(|c| Constraint::new(c, pod))
        .collect()
}

/// Whether a node counts as a domain member for `c`.
fn eligible(c: &Constraint, pod: &PodInfo, node: &NodeInfo) -> bool {
    if c.honor_affinity && !pod.node_affinity.matches(node) {
        return false;
    }
    if c.honor_taints {
        let untolerated = node.taints().iter().any(|taint| {
            matches!(taint.effect.as_str(), "NoSchedule" | "NoExecute")
                && !pod.tolerations.iter().any(|t| tolerates(t, taint))
        });
        if untolerated {
            return false;
        }
    }
    true
}

/// Matching pods per domain value, per constraint.
fn count(
    constraints: &[Constraint],
    pod: &PodInfo,
    nodes: &[Arc<NodeInfo>],
) -> Vec<HashMap<String, i64>> {
    let mut counts = vec![HashMap::new(); constraints.len()];
    for node in nodes {
        let labels = node.labels();
        if !constraints
            .iter()
            .all(|c| labels.contains_key(&c.topology_key))
        {
            continue;
        }
        for (c, counts) in constraints.iter().zip(counts.iter_mut()) {
            if !eligible(c, pod, node) {
                continue;
            }
            let n = node
                .pods
                .iter()
                .filter(|p| c.selects(p, &pod.namespace))
                .count() as i64;
            *counts.entry(labels[&c.topology_key].clone()).or_insert(0) += n;
        }
    }
    counts
}

#[derive(Debug)]
struct PreFilterState {
    constraints: Vec<Constraint>,
    counts: Vec<HashMap<String, i64>>,
    /// The smallest count per constraint (0 when fewer domains than `minDomains`).
    min: Vec<i64>,
}

#[derive(Debug)]
struct PreScoreState {
    constraints: Vec<Constraint>,
    counts: Vec<HashMap<String, i64>>,
    /// `ln(domains + 2)` per constraint: spreading over more domains weighs more.
    weights: Vec<f64>,
}

pub struct PodTopologySpread;

pub fn new() -> Arc<dyn Plugin> {
    Arc::new(PodTopologySpread)
}

impl Plugin for PodTopologySpread {
    fn name(&self) -> &'static str {
        NAME
    }
    fn as_pre_filter(&self) -> Option<&dyn PreFilterPlugin> {
        Some(self)
    }
    fn as_filter(&self) -> Option<&dyn FilterPlugin> {
        Some(self)
    }
    fn as_pre_score(&self) -> Option<&dyn PreScorePlugin> {
        Some(self)
    }
    fn as_score(&self) -> Option<&dyn ScorePlugin> {
        Some(self)
    }
}

impl PreFilterPlugin for PodTopologySpread {
    fn pre_filter(&self, state: &mut CycleState, pod: &PodInfo, snapshot: &Snapshot) -> Status {
        let constraints = constraints(pod, "DoNotSchedule");
        if constraints.is_empty() {
            return Status::skip();
        }
        let counts = count(&constraints, pod, snapshot.nodes());
        let min = constraints
            .iter()
            .zip(&counts)
            .map(|(c, counts)| {
                if (counts.len() as i64) < c.min_domains {
                    0
                } else {
                    counts.values().copied().min().unwrap_or(0)
                }
            })
            .collect();
        state.write(PreFilterState {
            constraints,
            counts,
            min,
        });
        Status::success()
    }
}

impl FilterPlugin for PodTopologySpread {
    /// skew = pods in the node's domain + 1 (if the pod matches its own selector) − the
    /// global minimum. Worked example: maxSkew 1, zones a: 2, b: 1 → a node in zone a
    /// gives 2 + 1 − 1 = 2 > 1 (rejected), zone b gives 1 + 1 − 1 = 1 (fits).
    fn filter(&self, state: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Status {
        let Some(s) = state.read::<PreFilterState>() else {
            return Status::new(
                Code::Error,
                "PreFilter state of PodTopologySpread is missing",
            );
        };
        let labels = node.labels();
        for (i, c) in s.constraints.iter().enumerate() {
            let Some(value) = labels.get(&c.topology_key) else {
                return Status::new(Code::UnschedulableAndUnresolvable, REASON_MISSING_LABEL);
            };
            let own = i64::from(c.selects(pod, &pod.namespace));
            let in_domain = s.counts[i].get(value).copied().unwrap_or(0);
            if in_domain + own - s.min[i] > c.max_skew {
                return Status::new(Code::Unschedulable, REASON);
            }
        }
        Status::success()
    }
}

impl PreScorePlugin for PodTopologySpread {
    fn pre_score(
        &self,
        state: &mut CycleState,
        pod: &PodInfo,
        _nodes: &[Arc<NodeInfo>],
        snapshot: &Snapshot,
    ) -> Status {
        let constraints = constraints(pod, "ScheduleAnyway");
        if constraints.is_empty() {
            return Status::skip();
        }
        let counts = count(&constraints, pod, snapshot.nodes());
        let weights = counts.iter().map(|c| ((c.len() + 2) as f64).ln()).collect();
        state.write(PreScoreState {
            constraints,
            counts,
            weights,
        });
        Status::success()
    }
}

impl ScorePlugin for PodTopologySpread {
    /// Σ (pods in the node's domain + maxSkew − 1) · weight; lower is better. Nodes
    /// without a constraint's key score 0 (and end up last after normalisation).
    fn score(&self, state: &CycleState, _: &PodInfo, node: &NodeInfo) -> Result<i64, Status> {
        let Some(s) = state.read::<PreScoreState>() else {
            return Err(Status::new(
                Code::Error,
                "PreScore state of PodTopologySpread is missing",
            ));
        };
        let labels = node.labels();
        let mut score = 0.0;
        for (i, c) in s.constraints.iter().enumerate() {
            let Some(value) = labels.get(&c.topology_key) else {
                return Ok(-1);
            };
            let n = s.counts[i].get(value).copied().unwrap_or(0);
            score += (n + c.max_skew - 1) as f64 * s.weights[i];
        }
        Ok(score.round() as i64)
    }

    /// Reversed scaling: `100 · (max + min − s) / max`; nodes marked −1 (missing key)
    /// get 0. Worked example: raw [2, 4, 6] → 100·(8−2)/6 = 100, 66, 33.
    fn normalize_score(&self, _: &CycleState, _: &PodInfo, scores: &mut [i64]) -> Status {
        let valid = scores.iter().filter(|s| **s >= 0);
        let max = valid.clone().copied().max().unwrap_or(0);
        let min = valid.copied().min().unwrap_or(0);
        for s in scores.iter_mut() {
            *s = if *s < 0 {
                0
            } else if max == 0 {
                MAX_NODE_SCORE
            } else {
                MAX_NODE_SCORE * (max + min - *s) / max
            };
        }
        Status::success()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{node, pod, snapshot, PodBuilder};
    use serde_json::json;

    fn spread(p: PodBuilder, key: &str, max_skew: i32, when: &str) -> PodBuilder {
        p.label("app", "web")
            .spec_json(json!({"topologySpreadConstraints": [
            {"maxSkew": max_skew, "topologyKey": key, "whenUnsatisfiable": when,
             "labelSelector": {"matchLabels": {"app": "web"}}}]}))
    }

    #[test]
    fn filter() {
        let web = |n: &str| pod(n).label("app", "web");
        // zone a: 2 web pods (n1), zone b: 1 web pod (n2), n3 in zone b empty, n4 no zone.
        let snap = snapshot(vec![
            node("n1")
                .label("zone", "a")
                .with(vec![web("w1"), web("w2")]),
            node("n2").label("zone", "b").with(vec![web("w3")]),
            node("n3").label("zone", "b").info(),
            node("n4").info(),
        ]);
        let cases = [
            (
                "maxSkew 1 rejects the fuller zone",
                spread(pod("p"), "zone", 1, "DoNotSchedule"),
                vec![
                    Code::Unschedulable,
                    Code::Success,
                    Code::Success,
                    Code::UnschedulableAndUnresolvable,
                ],
            ),
            (
                "maxSkew 2 allows both",
                spread(pod("p"), "zone", 2, "DoNotSchedule"),
                vec![
                    Code::Success,
                    Code::Success,
                    Code::Success,
                    Code::UnschedulableAndUnresolvable,
                ],
            ),
            (
                "ScheduleAnyway does not filter",
                spread(pod("p"), "zone", 1, "ScheduleAnyway"),
                vec![Code::Success; 4],
            ),
        ];
        for (name, p, want) in cases {
            let p = p.info();
            let mut state = CycleState::new();
            let pre = PodTopologySpread.pre_filter(&mut state, &p, &snap);
            let got: Vec<Code> = snap
                .nodes()
                .iter()
                .map(|n| {
                    if pre.code == Code::Skip {
                        Code::Success
                    } else {
                        PodTopologySpread.filter(&state, &p, n).code
                    }
                })
                .collect();
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn score_prefers_emptier_domains() {
        let web = |n: &str| pod(n).label("app", "web");
        let snap = snapshot(vec![
            node("n1").with(vec![web("w1"), web("w2")]),
            node("n2").with(vec![web("w3")]),
            node("n3").info(),
        ]);
        let p = spread(pod("p"), "kubernetes.io/hostname", 1, "ScheduleAnyway").info();
        let mut state = CycleState::new();
        assert!(PodTopologySpread
            .pre_score(&mut state, &p, snap.nodes(), &snap)
            .is_success());
        let mut scores: Vec<i64> = snap
            .nodes()
            .iter()
            .map(|n| PodTopologySpread.score(&state, &p, n).expect("score"))
            .collect();
        PodTopologySpread.normalize_score(&state, &p, &mut scores);
        assert!(scores[2] > scores[1] && scores[1] > scores[0], "{scores:?}");
        assert_eq!(scores[2], 100);
    }
}
