//! TaintToleration: a node's NoSchedule and NoExecute taints must be tolerated; nodes
//! with fewer untolerated PreferNoSchedule taints score higher.

use std::sync::Arc;

use crate::framework::{
    default_normalize, Code, CycleState, FilterPlugin, Plugin, ScorePlugin, Status,
};
use crate::node_info::{tolerates, NodeInfo, PodInfo};

pub const NAME: &str = "TaintToleration";

pub struct TaintToleration;

pub fn new() -> Arc<dyn Plugin> {
    Arc::new(TaintToleration)
}

impl Plugin for TaintToleration {
    fn name(&self) -> &'static str {
        NAME
    }
    fn as_filter(&self) -> Option<&dyn FilterPlugin> {
        Some(self)
    }
    fn as_score(&self) -> Option<&dyn ScorePlugin> {
        Some(self)
    }
}

impl FilterPlugin for TaintToleration {
    fn filter(&self, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Status {
        let untolerated = node.taints().iter().find(|taint| {
            matches!(taint.effect.as_str(), "NoSchedule" | "NoExecute")
                && !pod.tolerations.iter().any(|t| tolerates(t, taint))
        });
        match untolerated {
            None => Status::success(),
            Some(taint) => Status::new(
                Code::UnschedulableAndUnresolvable,
                format!(
                    "node(s) had untolerated taint {{{}: {}}}",
                    taint.key,
                    taint.value.as_deref().unwrap_or("")
                ),
            ),
        }
    }
}

impl ScorePlugin for TaintToleration {
    /// The number of PreferNoSchedule taints the pod does not tolerate (tolerations
    /// with an empty or PreferNoSchedule effect count); fewer is better.
    fn score(&self, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Result<i64, Status> {
        let relevant: Vec<_> = pod
            .tolerations
            .iter()
            .filter(|t| {
                matches!(
                    t.effect.as_deref(),
                    None | Some("") | Some("PreferNoSchedule")
                )
            })
            .collect();
        Ok(node
            .taints()
            .iter()
            .filter(|taint| taint.effect == "PreferNoSchedule")
            .filter(|taint| !relevant.iter().any(|t| tolerates(t, taint)))
            .count() as i64)
    }

    fn normalize_score(&self, _: &CycleState, _: &PodInfo, scores: &mut [i64]) -> Status {
        default_normalize(scores, true);
        Status::success()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{node, pod};

    #[test]
    fn filter() {
        let cases = [
            ("no taints", pod("p"), node("n"), Ok(())),
            (
                "untolerated NoSchedule",
                pod("p"),
                node("n").taint("dedicated", "gpu", "NoSchedule"),
                Err("node(s) had untolerated taint {dedicated: gpu}"),
            ),
            (
                "tolerated",
                pod("p").toleration("dedicated", "gpu", "NoSchedule"),
                node("n").taint("dedicated", "gpu", "NoSchedule"),
                Ok(()),
            ),
            (
                "wrong value",
                pod("p").toleration("dedicated", "cpu", "NoSchedule"),
                node("n").taint("dedicated", "gpu", "NoSchedule"),
                Err("node(s) had untolerated taint {dedicated: gpu}"),
            ),
            (
                "NoExecute too",
                pod("p"),
                node("n").taint("k", "v", "NoExecute"),
                Err("node(s) had untolerated taint {k: v}"),
            ),
            (
                "PreferNoSchedule does not filter",
                pod("p"),
                node("n").taint("k", "v", "PreferNoSchedule"),
                Ok(()),
            ),
            (
                "Exists without key tolerates everything",
                pod("p").spec_json(serde_json::json!({"tolerations": [{"operator": "Exists"}]})),
                node("n").taint("k", "v", "NoSchedule"),
                Ok(()),
            ),
        ];
        for (name, p, n, want) in cases {
            let got = TaintToleration.filter(&CycleState::new(), &p.info(), &n.info());
            match want {
                Ok(()) => assert!(got.is_success(), "{name}: {got:?}"),
                Err(reason) => {
                    assert_eq!(got.code, Code::UnschedulableAndUnresolvable, "{name}");
                    assert_eq!(got.reasons, vec![reason.to_string()], "{name}");
                }
            }
        }
    }

    #[test]
    fn score_prefers_fewer_soft_taints() {
        let p = pod("p").toleration("a", "1", "PreferNoSchedule").info();
        let nodes = [
            node("clean").info(),
            node("tolerated").taint("a", "1", "PreferNoSchedule").info(),
            node("one").taint("b", "1", "PreferNoSchedule").info(),
            node("two")
                .taint("b", "1", "PreferNoSchedule")
                .taint("c", "1", "PreferNoSchedule")
                .info(),
        ];
        let mut scores: Vec<i64> = nodes
            .iter()
            .map(|n| {
                TaintToleration
                    .score(&CycleState::new(), &p, n)
                    .expect("score")
            })
            .collect();
        assert_eq!(scores, vec![0, 0, 1, 2]);
        TaintToleration.normalize_score(&CycleState::new(), &p, &mut scores);
        assert_eq!(scores, vec![100, 100, 50, 0]);
    }
}
