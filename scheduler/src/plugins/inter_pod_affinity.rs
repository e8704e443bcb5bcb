//! InterPodAffinity: required pod affinity and anti-affinity of the incoming pod, the
//! required anti-affinity of pods already placed (symmetry), and preferred terms of
//! both for scoring. Any topology key; namespaces and namespaceSelector.
//!
//! PreFilter counts, per topology pair (`zone=a`), the existing pods that the incoming
//! pod's terms select and the existing pods whose anti-affinity selects the incoming
//! pod; Filter then only looks the node's labels up in those counts.

use std::collections::HashMap;
use std::sync::Arc;

use crate::framework::{
    Code, CycleState, FilterPlugin, Plugin, PreFilterPlugin, PreScorePlugin, ScorePlugin, Status,
    MAX_NODE_SCORE,
};
use crate::node_info::{NodeInfo, PodInfo, Snapshot};

pub const NAME: &str = "InterPodAffinity";
pub const REASON_AFFINITY: &str = "node(s) didn't match pod affinity rules";
pub const REASON_ANTI_AFFINITY: &str = "node(s) didn't match pod anti-affinity rules";
pub const REASON_EXISTING_ANTI_AFFINITY: &str =
    "node(s) didn't satisfy existing pods anti-affinity rules";

/// Weight of an existing pod's *required* affinity term when scoring the incoming pod
/// it selects (Kubernetes' `hardPodAffinityWeight` default).
pub const HARD_POD_AFFINITY_WEIGHT: i64 = 1;

/// Counts by topology key, then value.
#[derive(Debug, Default, Clone)]
pub struct TopologyCounts(HashMap<String, HashMap<String, i64>>);

impl TopologyCounts {
    fn add(&mut self, key: &str, value: &str, n: i64) {
        *self
            .0
            .entry(key.to_string())
            .or_default()
            .entry(value.to_string())
            .or_default() += n;
    }

    fn get(&self, key: &str, value: &str) -> i64 {
        self.0
            .get(key)
            .and_then(|m| m.get(value))
            .copied()
            .unwrap_or(0)
    }

    /// Whether a node with these labels sits in a topology pair with a positive count.
    fn hits(&self, labels: &std::collections::BTreeMap<String, String>) -> bool {
        self.0.iter().any(|(key, values)| {
            labels
                .get(key)
                .is_some_and(|v| values.get(v).is_some_and(|n| *n > 0))
        })
    }

    fn is_empty(&self) -> bool {
        self.0.values().all(|m| m.values().all(|n| *n == 0))
    }
}

/// PreFilter's result.
#[derive(Debug, Default)]
struct PreFilterState {
    /// Existing pods whose required anti-affinity selects the incoming pod.
    existing_anti_affinity: TopologyCounts,
    /// Existing pods matching all of the incoming pod's required affinity terms.
    affinity: TopologyCounts,
    /// Existing pods matching one of the incoming pod's required anti-affinity terms.
    anti_affinity: TopologyCounts,
    /// The incoming pod matches all its own required affinity terms.
    self_affine: bool,
}

/// PreScore's result: the score of each topology pair.
#[derive(Debug, Default)]
struct PreScoreState(TopologyCounts);

pub struct InterPodAffinity;

pub fn new() -> Arc<dyn Plugin> {
    Arc::new(InterPodAffinity)
}

impl Plugin for InterPodAffinity {
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

impl PreFilterPlugin for InterPodAffinity {
    fn pre_filter(&self, state: &mut CycleState, pod: &PodInfo, snapshot: &Snapshot) -> Status {
        let namespaces = snapshot.namespaces();
        let mut s = PreFilterState::default();
        let incoming_terms =
            !pod.required_affinity.is_empty() || !pod.required_anti_affinity.is_empty();
        for node in snapshot.nodes() {
            let labels = node.labels();
            if node.pods_with_required_anti_affinity > 0 {
                for existing in &node.pods {
                    for term in &existing.required_anti_affinity {
                        if let Some(value) = labels.get(&term.topology_key) {
                            if term.matches(pod, namespaces) {
                                s.existing_anti_affinity.add(&term.topology_key, value, 1);
                            }
                        }
                    }
                }
            }
            if !incoming_terms {
                continue;
            }
            for existing in &node.pods {
                if !pod.required_affinity.is_empty()
                    && pod
                        .required_affinity
                        .iter()
                        .all(|t| t.matches(existing, namespaces))
                {
                    for term in &pod.required_affinity {
                        if let Some(value) = labels.get(&term.topology_key) {
                            s.affinity.add(&term.topology_key, value, 1);
                        }
                    }
                }
                for term in &pod.required_anti_affinity {
                    if let Some(value) = labels.get(&term.topology_key) {
                        if term.matches(existing, namespaces) {
                            s.anti_affinity.add(&term.topology_key, value, 1);
                        }
                    }
                }
            }
        }
        s.self_affine = pod
            .required_affinity
            .iter()
            .all(|t| t.matches(pod, namespaces));
        let skip = !incoming_terms && s.existing_anti_affinity.is_empty();
        state.write(s);
        if skip {
            Status::skip()
        } else {
            Status::success()
        }
    }
}

impl FilterPlugin for InterPodAffinity {
    fn filter(&self, state: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Status {
        let Some(s) = state.read::<PreFilterState>() else {
            return Status::new(
                Code::Error,
                "PreFilter state of InterPodAffinity is missing",
            );
        };
        let labels = node.labels();
        if !pod.required_affinity.is_empty() {
            let satisfied = pod.required_affinity.iter().all(|term| {
                labels
                    .get(&term.topology_key)
                    .is_some_and(|v| s.affinity.get(&term.topology_key, v) > 0)
            });
            // The first pod of a group that selects itself may go anywhere the topology
            // keys exist: no pod matches anywhere yet.
            let first_of_group = s.affinity.is_empty() && s.self_affine;
            if !satisfied && !first_of_group {
                return Status::new(Code::UnschedulableAndUnresolvable, REASON_AFFINITY);
            }
        }
        let anti = pod.required_anti_affinity.iter().any(|term| {
            labels
                .get(&term.topology_key)
                .is_some_and(|v| s.anti_affinity.get(&term.topology_key, v) > 0)
        });
        if anti {
            return Status::new(Code::Unschedulable, REASON_ANTI_AFFINITY);
        }
        if s.existing_anti_affinity.hits(labels) {
            return Status::new(Code::Unschedulable, REASON_EXISTING_ANTI_AFFINITY);
        }
        Status::success()
    }
}

impl PreScorePlugin for InterPodAffinity {
    /// Adds up, per topology pair of each existing pod's node: the incoming pod's
    /// preferred affinity (+weight) and anti-affinity (−weight) terms that select the
    /// existing pod, and the existing pod's required affinity (+1), preferred affinity
    /// (+weight) and preferred anti-affinity (−weight) terms that select the incoming
    /// pod.
    fn pre_score(
        &self,
        state: &mut CycleState,
        pod: &PodInfo,
        _nodes: &[Arc<NodeInfo>],
        snapshot: &Snapshot,
    ) -> Status {
        let namespaces = snapshot.namespaces();
        let incoming =
            !pod.preferred_affinity.is_empty() || !pod.preferred_anti_affinity.is_empty();
        let mut scores = TopologyCounts::default();
        for node in snapshot.nodes() {
            if !incoming && node.pods_with_affinity == 0 {
                continue;
            }
            let labels = node.labels();
            let mut add = |key: &str, n: i64| {
                if let Some(value) = labels.get(key) {
                    scores.add(key, value, n);
                }
            };
            for existing in &node.pods {
                for t in &pod.preferred_affinity {
                    if t.matches(existing, namespaces) {
                        add(&t.topology_key, t.weight);
                    }
                }
                for t in &pod.preferred_anti_affinity {
                    if t.matches(existing, namespaces) {
                        add(&t.topology_key, -t.weight);
                    }
                }
                if !existing.has_affinity() {
                    continue;
                }
                for t in &existing.required_affinity {
                    if t.matches(pod, namespaces) {
                        add(&t.topology_key, HARD_POD_AFFINITY_WEIGHT);
                    }
                }
                for t in &existing.preferred_affinity {
                    if t.matches(pod, namespaces) {
                        add(&t.topology_key, t.weight);
                    }
                }
                for t in &existing.preferred_anti_affinity {
                    if t.matches(pod, namespaces) {
                        add(&t.topology_key, -t.weight);
                    }
                }
            }
        }
        if scores.0.is_empty() {
            return Status::skip();
        }
        state.write(PreScoreState(scores));
        Status::success()
    }
}

impl ScorePlugin for InterPodAffinity {
    fn score(&self, state: &CycleState, _: &PodInfo, node: &NodeInfo) -> Result<i64, Status> {
        let Some(PreScoreState(scores)) = state.read::<PreScoreState>() else {
            return Err(Status::new(
                Code::Error,
                "PreScore state of InterPodAffinity is missing",
            ));
        };
        let labels = node.labels();
        Ok(scores
            .0
            .iter()
            .filter_map(|(key, values)| labels.get(key).and_then(|v| values.get(v)))
            .sum())
    }

    /// Min-max scaling to 0–100. Worked example: raw [-2, 0, 6] → (s + 2) · 100 / 8 →
    /// [0, 25, 100].
    fn normalize_score(&self, _: &CycleState, _: &PodInfo, scores: &mut [i64]) -> Status {
        let (min, max) = scores
            .iter()
            .fold((i64::MAX, i64::MIN), |(lo, hi), s| (lo.min(*s), hi.max(*s)));
        let range = max - min;
        for s in scores.iter_mut() {
            *s = if range > 0 {
                MAX_NODE_SCORE * (*s - min) / range
            } else {
                0
            };
        }
        Status::success()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framework::CycleState;
    use crate::testing::{node, pod, snapshot};
    use serde_json::json;

    fn run(p: &PodInfo, snap: &Snapshot) -> Vec<Status> {
        let mut state = CycleState::new();
        let pre = InterPodAffinity.pre_filter(&mut state, p, snap);
        snap.nodes()
            .iter()
            .map(|n| {
                if pre.code == Code::Skip {
                    Status::success()
                } else {
                    InterPodAffinity.filter(&state, p, n)
                }
            })
            .collect()
    }

    #[test]
    fn filter() {
        let zone = "topology.kubernetes.io/zone";
        let host = "kubernetes.io/hostname";
        // n1 (zone a) runs web; n2 (zone a) is empty; n3 (zone b) runs db with
        // anti-affinity against app=web in its zone.
        let cluster = || {
            snapshot(vec![
                node("n1")
                    .label(zone, "a")
                    .with(vec![pod("web-0").label("app", "web")]),
                node("n2").label(zone, "a").info(),
                node("n3").label(zone, "b").with(vec![pod("db")
                    .label("app", "db")
                    .anti_affinity("app", "web", zone)]),
            ])
        };
        let ok = Code::Success;
        let cases = [
            ("no terms", pod("p"), vec![ok, ok, ok]),
            (
                "anti-affinity on hostname keeps off n1 only",
                pod("p").anti_affinity("app", "web", host),
                vec![Code::Unschedulable, ok, ok],
            ),
            (
                "anti-affinity on zone keeps off zone a",
                pod("p").anti_affinity("app", "web", zone),
                vec![Code::Unschedulable, Code::Unschedulable, ok],
            ),
            (
                "affinity on zone allows zone a",
                pod("p").affinity("app", "web", zone),
                vec![ok, ok, Code::UnschedulableAndUnresolvable],
            ),
            (
                "existing anti-affinity repels a web pod from zone b",
                pod("web-1").label("app", "web"),
                vec![ok, ok, Code::Unschedulable],
            ),
            (
                "affinity to nothing, not self-matching",
                pod("p").affinity("app", "cache", zone),
                vec![Code::UnschedulableAndUnresolvable; 3],
            ),
            (
                "first pod of a self-affine group goes anywhere",
                pod("c-0").label("app", "cache").affinity("app", "cache", zone),
                vec![ok, ok, ok],
            ),
            (
                "another namespace is not selected by default",
                pod("p").namespace("other").anti_affinity("app", "web", zone),
                vec![ok, ok, ok],
            ),
            (
                "namespaceSelector {} selects all namespaces",
                pod("p").namespace("other").spec_json(json!({"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                    {"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": zone, "namespaceSelector": {}}]}}})),
                vec![Code::Unschedulable, Code::Unschedulable, ok],
            ),
        ];
        for (name, p, want) in cases {
            let got: Vec<Code> = run(&p.info(), &cluster())
                .into_iter()
                .map(|s| s.code)
                .collect();
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn reasons() {
        let snap = snapshot(vec![node("n1").with(vec![pod("w").label("app", "web")])]);
        let got = run(
            &pod("p")
                .anti_affinity("app", "web", "kubernetes.io/hostname")
                .info(),
            &snap,
        );
        assert_eq!(got[0].reasons, vec![REASON_ANTI_AFFINITY.to_string()]);
        let got = run(
            &pod("p")
                .affinity("app", "db", "kubernetes.io/hostname")
                .info(),
            &snap,
        );
        assert_eq!(got[0].reasons, vec![REASON_AFFINITY.to_string()]);
    }

    #[test]
    fn score_prefers_and_avoids() {
        let zone = "zone";
        let snap = snapshot(vec![
            node("a")
                .label(zone, "a")
                .with(vec![pod("w").label("app", "web")]),
            node("b")
                .label(zone, "b")
                .with(vec![pod("d").label("app", "db")]),
            node("c").label(zone, "c").info(),
        ]);
        let p = pod("p")
            .spec_json(json!({"affinity": {
                "podAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                    {"weight": 6, "podAffinityTerm": {"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": zone}}]},
                "podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                    {"weight": 2, "podAffinityTerm": {"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": zone}}]}}}))
            .info();
        let mut state = CycleState::new();
        let status = InterPodAffinity.pre_score(&mut state, &p, snap.nodes(), &snap);
        assert!(status.is_success());
        let mut scores: Vec<i64> = snap
            .nodes()
            .iter()
            .map(|n| InterPodAffinity.score(&state, &p, n).expect("score"))
            .collect();
        assert_eq!(scores, vec![6, -2, 0]);
        InterPodAffinity.normalize_score(&state, &p, &mut scores);
        assert_eq!(scores, vec![100, 0, 25]);
    }
}
