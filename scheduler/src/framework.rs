//! The scheduling framework: extension-point traits, [`Status`], [`CycleState`], the
//! plugin [`Registry`] and the [`Framework`] that runs one scheduling cycle.
//!
//! A cycle for one pod is, as in Kubernetes: PreFilter → Filter (in parallel over the
//! snapshot's nodes, stopping once enough feasible nodes are found, see
//! [`num_feasible_nodes_to_find`]) → PostFilter (only when nothing fits) → PreScore →
//! Score → NormalizeScore → weighted sum → pick the best node (random among ties) →
//! Reserve. Binding happens afterwards, asynchronously (see [`crate::scheduler`]).

use std::any::{Any, TypeId};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use rand::Rng;

use crate::config::Profile;
use crate::node_info::{NodeInfo, PodInfo, Snapshot};

/// Highest score a plugin gives a node after normalisation.
pub const MAX_NODE_SCORE: i64 = 100;

/// Below this many nodes every node is examined, whatever the percentage.
pub const MIN_FEASIBLE_NODES_TO_FIND: usize = 100;

/// The adaptive percentage never goes below this.
pub const MIN_FEASIBLE_NODES_PERCENTAGE_TO_FIND: usize = 5;

/// What went wrong building a [`Framework`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("plugin {0:?} is registered twice")]
    DuplicatePlugin(String),
    #[error("plugin {0:?} is not registered")]
    UnknownPlugin(String),
    #[error("plugin {plugin:?} has weight {weight}: score weights must be positive")]
    InvalidWeight { plugin: String, weight: i64 },
    #[error("profile {0:?} enables no filter plugin and no score plugin")]
    EmptyProfile(String),
}

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What a plugin's verdict means for the pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Code {
    /// The pod fits (or the step succeeded).
    Success,
    /// The pod does not fit now; preemption or a cluster change may help.
    Unschedulable,
    /// The pod does not fit and preempting pods on this node would not help.
    UnschedulableAndUnresolvable,
    /// The plugin failed; the pod is retried with backoff.
    Error,
    /// PreFilter/PreScore only: the plugin has nothing to do for this pod; its
    /// Filter/Score is skipped.
    Skip,
}

/// A plugin's verdict: a value, not an error (code, reasons, and the plugin that gave
/// it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub code: Code,
    pub reasons: Vec<String>,
    pub plugin: &'static str,
}

impl Status {
    /// Success, no reasons.
    pub fn success() -> Self {
        Status {
            code: Code::Success,
            reasons: Vec::new(),
            plugin: "",
        }
    }

    /// A status with one reason.
    pub fn new(code: Code, reason: impl Into<String>) -> Self {
        Status {
            code,
            reasons: vec![reason.into()],
            plugin: "",
        }
    }

    /// Skip (see [`Code::Skip`]).
    pub fn skip() -> Self {
        Status {
            code: Code::Skip,
            reasons: Vec::new(),
            plugin: "",
        }
    }

    /// Sets the plugin name (the framework does this for every status it collects).
    pub fn with_plugin(mut self, plugin: &'static str) -> Self {
        self.plugin = plugin;
        self
    }

    pub fn is_success(&self) -> bool {
        self.code == Code::Success
    }

    /// Unschedulable or UnschedulableAndUnresolvable.
    pub fn is_rejected(&self) -> bool {
        matches!(
            self.code,
            Code::Unschedulable | Code::UnschedulableAndUnresolvable
        )
    }

    /// The reasons joined with ", ".
    pub fn message(&self) -> String {
        self.reasons.join(", ")
    }
}

/// Per-cycle data shared between a pod's extension points, keyed by type (one value per
/// type: each plugin defines its own state struct).
#[derive(Default)]
pub struct CycleState {
    values: HashMap<TypeId, Box<dyn Any + Send + Sync>>,
    skip_filter: HashSet<&'static str>,
    skip_score: HashSet<&'static str>,
}

impl CycleState {
    pub fn new() -> Self {
        Self::default()
    }

    /// Stores `value`, replacing any earlier value of the same type.
    pub fn write<T: Any + Send + Sync>(&mut self, value: T) {
        self.values.insert(TypeId::of::<T>(), Box::new(value));
    }

    /// The value of type `T`, if a plugin wrote one in this cycle.
    pub fn read<T: Any + Send + Sync>(&self) -> Option<&T> {
        self.values
            .get(&TypeId::of::<T>())
            .and_then(|v| v.downcast_ref::<T>())
    }
}

/// A plugin: a name and the extension points it implements (each `as_*` returns
/// `Some(self)` for the points the plugin takes part in).
pub trait Plugin: Send + Sync {
    fn name(&self) -> &'static str;
    fn as_pre_filter(&self) -> Option<&dyn PreFilterPlugin> {
        None
    }
    fn as_filter(&self) -> Option<&dyn FilterPlugin> {
        None
    }
    fn as_post_filter(&self) -> Option<&dyn PostFilterPlugin> {
        None
    }
    fn as_pre_score(&self) -> Option<&dyn PreScorePlugin> {
        None
    }
    fn as_score(&self) -> Option<&dyn ScorePlugin> {
        None
    }
    fn as_reserve(&self) -> Option<&dyn ReservePlugin> {
        None
    }
}

/// Runs once per cycle before Filter: computes per-cycle state (stored in
/// [`CycleState`]), may reject the pod outright or return [`Code::Skip`].
pub trait PreFilterPlugin: Plugin {
    fn pre_filter(&self, state: &mut CycleState, pod: &PodInfo, snapshot: &Snapshot) -> Status;
}

/// Decides whether the pod may run on one node. Called concurrently for many nodes.
pub trait FilterPlugin: Plugin {
    fn filter(&self, state: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Status;
}

/// Runs when no node passed Filter (preemption in Kubernetes), with every node's status.
pub trait PostFilterPlugin: Plugin {
    fn post_filter(
        &self,
        state: &CycleState,
        pod: &PodInfo,
        diagnosis: &Diagnosis,
        snapshot: &Snapshot,
    ) -> Status;
}

/// Runs once per cycle before Score with the feasible nodes.
pub trait PreScorePlugin: Plugin {
    fn pre_score(
        &self,
        state: &mut CycleState,
        pod: &PodInfo,
        nodes: &[Arc<NodeInfo>],
        snapshot: &Snapshot,
    ) -> Status;
}

/// Ranks a feasible node; [`ScorePlugin::normalize_score`] then maps all the cycle's
/// scores into `0..=MAX_NODE_SCORE`.
pub trait ScorePlugin: Plugin {
    fn score(&self, state: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Result<i64, Status>;

    fn normalize_score(&self, _state: &CycleState, _pod: &PodInfo, _scores: &mut [i64]) -> Status {
        Status::success()
    }
}

/// Claims resources on the chosen node before binding; `unreserve` undoes it when a
/// later step fails.
pub trait ReservePlugin: Plugin {
    fn reserve(&self, state: &CycleState, pod: &PodInfo, node: &str) -> Status;
    fn unreserve(&self, state: &CycleState, pod: &PodInfo, node: &str);
}

/// Builds a plugin instance.
pub type Factory = fn() -> Arc<dyn Plugin>;

/// Plugin factories by name; refuses duplicates.
#[derive(Default, Clone)]
pub struct Registry {
    factories: BTreeMap<&'static str, Factory>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a factory.
    ///
    /// # Errors
    /// [`Error::DuplicatePlugin`] when `name` is already registered.
    pub fn register(&mut self, name: &'static str, factory: Factory) -> Result<()> {
        if self.factories.insert(name, factory).is_some() {
            return Err(Error::DuplicatePlugin(name.to_string()));
        }
        Ok(())
    }

    /// The registered names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.factories.keys().copied()
    }

    fn build(&self, name: &str) -> Result<Arc<dyn Plugin>> {
        self.factories
            .get(name)
            .map(|f| f())
            .ok_or_else(|| Error::UnknownPlugin(name.to_string()))
    }
}

/// Why each rejected node was rejected.
#[derive(Debug, Clone, Default)]
pub struct Diagnosis {
    /// Statuses of rejected nodes, by node name.
    pub node_statuses: HashMap<String, Status>,
    /// Set when PreFilter rejected the pod for every node.
    pub pre_filter: Option<Status>,
}

/// No node fits: the numbers and reasons that make up Kubernetes' message.
#[derive(Debug, Clone)]
pub struct FitError {
    pub num_all_nodes: usize,
    pub diagnosis: Diagnosis,
}

impl FitError {
    /// Kubernetes' aggregated message: `0/3 nodes are available: 1 Insufficient cpu, 2
    /// node(s) didn't match pod anti-affinity rules.` — reasons counted over nodes and
    /// sorted by text.
    pub fn message(&self) -> String {
        if let Some(status) = &self.diagnosis.pre_filter {
            return format!(
                "0/{} nodes are available: {}.",
                self.num_all_nodes,
                status.message()
            );
        }
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for status in self.diagnosis.node_statuses.values() {
            for reason in &status.reasons {
                *counts.entry(reason.as_str()).or_default() += 1;
            }
        }
        let mut parts: Vec<String> = counts.iter().map(|(r, n)| format!("{n} {r}")).collect();
        parts.sort();
        if parts.is_empty() {
            return format!("0/{} nodes are available.", self.num_all_nodes);
        }
        format!(
            "0/{} nodes are available: {}.",
            self.num_all_nodes,
            parts.join(", ")
        )
    }
}

impl FitError {
    /// The plugins that rejected some node (or the pod, in PreFilter), sorted.
    pub fn rejecting_plugins(&self) -> Vec<&'static str> {
        let mut plugins: Vec<&'static str> = self
            .diagnosis
            .node_statuses
            .values()
            .chain(self.diagnosis.pre_filter.iter())
            .map(|s| s.plugin)
            .collect();
        plugins.sort_unstable();
        plugins.dedup();
        plugins
    }
}

/// Where the cycle put the pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleResult {
    pub node: String,
    /// Nodes examined by Filter.
    pub evaluated_nodes: usize,
    /// Feasible nodes found (and scored).
    pub feasible_nodes: usize,
}

/// Why a cycle produced no node.
#[derive(Debug, Clone)]
pub enum ScheduleError {
    /// The cluster has no node.
    NoNodes,
    /// No node fits.
    Unfit(Box<FitError>),
    /// A plugin failed.
    Plugin(Status),
}

impl ScheduleError {
    /// The message for the pod's condition and event.
    pub fn message(&self) -> String {
        match self {
            ScheduleError::NoNodes => "no nodes available to schedule pods".to_string(),
            ScheduleError::Unfit(fit) => fit.message(),
            ScheduleError::Plugin(status) => {
                format!("running {} plugin: {}", status.plugin, status.message())
            }
        }
    }
}

/// Kubernetes' `numFeasibleNodesToFind`: how many feasible nodes to look for before
/// scoring. `percentage` 0 means adaptive.
///
/// Adaptive: `50 - nodes/125` percent, at least 5 percent, and never fewer than 100
/// nodes. Worked example: 5,000 nodes → 50 - 40 = 10 % → 500 nodes; 1,000 nodes →
/// 42 % → 420; 200 nodes → 48 % → 96, raised to 100; 10,000 nodes → -30 → 5 % → 500.
pub fn num_feasible_nodes_to_find(num_all_nodes: usize, percentage: u32) -> usize {
    if num_all_nodes < MIN_FEASIBLE_NODES_TO_FIND || percentage >= 100 {
        return num_all_nodes;
    }
    let percentage = if percentage == 0 {
        let adaptive = 50i64 - (num_all_nodes as i64) / 125;
        adaptive.max(MIN_FEASIBLE_NODES_PERCENTAGE_TO_FIND as i64) as usize
    } else {
        percentage as usize
    };
    let wanted = num_all_nodes * percentage / 100;
    wanted.max(MIN_FEASIBLE_NODES_TO_FIND)
}

struct Weighted {
    plugin: Arc<dyn Plugin>,
    weight: i64,
}

/// One profile's plugins, ordered per extension point, ready to run cycles.
pub struct Framework {
    scheduler_name: String,
    percentage_of_nodes_to_score: u32,
    pre_filter: Vec<Arc<dyn Plugin>>,
    filter: Vec<Arc<dyn Plugin>>,
    post_filter: Vec<Arc<dyn Plugin>>,
    pre_score: Vec<Arc<dyn Plugin>>,
    score: Vec<Weighted>,
    reserve: Vec<Arc<dyn Plugin>>,
    /// Where the next cycle starts filtering, so that successive pods see different
    /// nodes first (Kubernetes' `nextStartNodeIndex`).
    next_start: AtomicUsize,
    /// Worker threads used by Filter and Score.
    parallelism: usize,
}

impl std::fmt::Debug for Framework {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names = |v: &[Arc<dyn Plugin>]| v.iter().map(|p| p.name()).collect::<Vec<_>>();
        f.debug_struct("Framework")
            .field("scheduler_name", &self.scheduler_name)
            .field("filter", &names(&self.filter))
            .field(
                "score",
                &self
                    .score
                    .iter()
                    .map(|w| (w.plugin.name(), w.weight))
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// Below this many nodes to examine, Filter runs on the calling thread only: starting
/// threads costs more than it saves.
const PARALLEL_THRESHOLD: usize = 256;

impl Framework {
    /// Builds the profile's plugins from `registry`.
    ///
    /// # Errors
    /// Unknown plugin names, non-positive weights, or a profile with nothing to run.
    pub fn new(
        registry: &Registry,
        profile: &Profile,
        percentage_of_nodes_to_score: u32,
    ) -> Result<Self> {
        let mut fw = Framework {
            scheduler_name: profile.scheduler_name.clone(),
            percentage_of_nodes_to_score,
            pre_filter: Vec::new(),
            filter: Vec::new(),
            post_filter: Vec::new(),
            pre_score: Vec::new(),
            score: Vec::new(),
            reserve: Vec::new(),
            next_start: AtomicUsize::new(0),
            parallelism: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
                .min(16),
        };
        for enabled in profile.enabled_plugins() {
            let plugin = registry.build(&enabled.name)?;
            if plugin.as_pre_filter().is_some() {
                fw.pre_filter.push(plugin.clone());
            }
            if plugin.as_filter().is_some() {
                fw.filter.push(plugin.clone());
            }
            if plugin.as_post_filter().is_some() {
                fw.post_filter.push(plugin.clone());
            }
            if plugin.as_pre_score().is_some() {
                fw.pre_score.push(plugin.clone());
            }
            if plugin.as_score().is_some() {
                if enabled.weight <= 0 {
                    return Err(Error::InvalidWeight {
                        plugin: enabled.name.clone(),
                        weight: enabled.weight,
                    });
                }
                fw.score.push(Weighted {
                    plugin: plugin.clone(),
                    weight: enabled.weight,
                });
            }
            if plugin.as_reserve().is_some() {
                fw.reserve.push(plugin.clone());
            }
        }
        if fw.filter.is_empty() && fw.score.is_empty() {
            return Err(Error::EmptyProfile(profile.scheduler_name.clone()));
        }
        Ok(fw)
    }

    /// The `schedulerName` pods use to pick this profile.
    pub fn scheduler_name(&self) -> &str {
        &self.scheduler_name
    }

    /// Sets how many threads Filter and Score may use (1 = the calling thread only).
    pub fn set_parallelism(&mut self, threads: usize) {
        self.parallelism = threads.max(1);
    }

    /// Runs one scheduling cycle up to (not including) Reserve.
    ///
    /// # Errors
    /// [`ScheduleError`] when the cluster is empty, nothing fits, or a plugin failed.
    pub fn schedule(
        &self,
        state: &mut CycleState,
        pod: &PodInfo,
        snapshot: &Snapshot,
    ) -> Result<ScheduleResult, ScheduleError> {
        let nodes = snapshot.nodes();
        if nodes.is_empty() {
            return Err(ScheduleError::NoNodes);
        }
        let fit_error = |diagnosis| {
            ScheduleError::Unfit(Box::new(FitError {
                num_all_nodes: nodes.len(),
                diagnosis,
            }))
        };

        for plugin in &self.pre_filter {
            let p = plugin
                .as_pre_filter()
                .expect("listed as a PreFilter plugin");
            let status = p
                .pre_filter(state, pod, snapshot)
                .with_plugin(plugin.name());
            match status.code {
                Code::Success => {}
                Code::Skip => {
                    state.skip_filter.insert(plugin.name());
                }
                Code::Error => return Err(ScheduleError::Plugin(status)),
                Code::Unschedulable | Code::UnschedulableAndUnresolvable => {
                    return Err(fit_error(Diagnosis {
                        pre_filter: Some(status),
                        ..Default::default()
                    }));
                }
            }
        }

        let (feasible, diagnosis, evaluated) = self.find_feasible(state, pod, nodes)?;
        if feasible.is_empty() {
            for plugin in &self.post_filter {
                let p = plugin
                    .as_post_filter()
                    .expect("listed as a PostFilter plugin");
                let status = p.post_filter(state, pod, &diagnosis, snapshot);
                tracing::debug!(plugin = plugin.name(), code = ?status.code, "post-filter ran");
            }
            return Err(fit_error(diagnosis));
        }
        if feasible.len() == 1 {
            return Ok(ScheduleResult {
                node: feasible[0].name().to_string(),
                evaluated_nodes: evaluated,
                feasible_nodes: 1,
            });
        }

        let totals = self.prioritize(state, pod, &feasible, snapshot)?;
        let best = select_host(&totals);
        Ok(ScheduleResult {
            node: feasible[best].name().to_string(),
            evaluated_nodes: evaluated,
            feasible_nodes: feasible.len(),
        })
    }

    /// Runs every Filter plugin on one node; the first rejection wins.
    pub fn run_filters(&self, state: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Status {
        for plugin in &self.filter {
            if state.skip_filter.contains(plugin.name()) {
                continue;
            }
            let p = plugin.as_filter().expect("listed as a Filter plugin");
            let status = p.filter(state, pod, node);
            if !status.is_success() {
                return status.with_plugin(plugin.name());
            }
        }
        Status::success()
    }

    /// Filters nodes from `next_start` round the ring until enough feasible nodes are
    /// found. Returns the feasible nodes (in ring order), the rejected nodes' statuses
    /// and how many nodes were examined.
    fn find_feasible(
        &self,
        state: &CycleState,
        pod: &PodInfo,
        nodes: &[Arc<NodeInfo>],
    ) -> Result<(Vec<Arc<NodeInfo>>, Diagnosis, usize), ScheduleError> {
        let n = nodes.len();
        let wanted = num_feasible_nodes_to_find(n, self.percentage_of_nodes_to_score);
        let start = self.next_start.load(Ordering::Relaxed) % n;
        let at = |i: usize| &nodes[(start + i) % n];

        // Workers take chunks of ring positions from `cursor` and stop once `found`
        // reaches `wanted`; results carry the ring position so that the outcome is the
        // first `wanted` feasible nodes in ring order whatever the thread interleaving.
        let cursor = AtomicUsize::new(0);
        let found = AtomicUsize::new(0);
        let threads = if n >= PARALLEL_THRESHOLD {
            self.parallelism
        } else {
            1
        };
        let chunk = (n / (threads * 8)).clamp(16, 256);
        let work = || {
            let mut ok = Vec::new();
            let mut rejected = Vec::new();
            loop {
                if found.load(Ordering::Relaxed) >= wanted {
                    break;
                }
                let from = cursor.fetch_add(chunk, Ordering::Relaxed);
                if from >= n {
                    break;
                }
                for i in from..(from + chunk).min(n) {
                    let status = self.run_filters(state, pod, at(i));
                    if status.is_success() {
                        ok.push(i);
                        found.fetch_add(1, Ordering::Relaxed);
                    } else {
                        rejected.push((i, status));
                    }
                }
            }
            (ok, rejected)
        };
        let mut results = Vec::with_capacity(threads);
        if threads == 1 {
            results.push(work());
        } else {
            std::thread::scope(|s| {
                let handles: Vec<_> = (1..threads).map(|_| s.spawn(work)).collect();
                results.push(work());
                for h in handles {
                    results.push(h.join().expect("filter worker does not panic"));
                }
            });
        }

        let mut ok: Vec<usize> = Vec::new();
        let mut rejected: Vec<(usize, Status)> = Vec::new();
        for (o, r) in results {
            ok.extend(o);
            rejected.extend(r);
        }
        ok.sort_unstable();
        if let Some(s) = rejected.iter().find(|(_, s)| s.code == Code::Error) {
            return Err(ScheduleError::Plugin(s.1.clone()));
        }
        // Examined = everything up to the last feasible node kept (or everything when
        // fewer than `wanted` were found).
        let evaluated = if ok.len() >= wanted {
            ok.truncate(wanted);
            ok.last().map_or(n, |last| last + 1)
        } else {
            n
        };
        self.next_start
            .store((start + evaluated) % n, Ordering::Relaxed);
        let mut diagnosis = Diagnosis::default();
        for (i, status) in rejected {
            if i < evaluated {
                diagnosis
                    .node_statuses
                    .insert(at(i).name().to_string(), status);
            }
        }
        let feasible = ok.into_iter().map(|i| at(i).clone()).collect();
        Ok((feasible, diagnosis, evaluated))
    }

    /// PreScore, Score, NormalizeScore and the weighted sum, per feasible node.
    fn prioritize(
        &self,
        state: &mut CycleState,
        pod: &PodInfo,
        nodes: &[Arc<NodeInfo>],
        snapshot: &Snapshot,
    ) -> Result<Vec<i64>, ScheduleError> {
        for plugin in &self.pre_score {
            let p = plugin.as_pre_score().expect("listed as a PreScore plugin");
            let status = p
                .pre_score(state, pod, nodes, snapshot)
                .with_plugin(plugin.name());
            match status.code {
                Code::Success => {}
                Code::Skip => {
                    state.skip_score.insert(plugin.name());
                }
                _ => return Err(ScheduleError::Plugin(status)),
            }
        }
        let state = &*state;
        let mut totals = vec![0i64; nodes.len()];
        for weighted in &self.score {
            if state.skip_score.contains(weighted.plugin.name()) {
                continue;
            }
            let p = weighted
                .plugin
                .as_score()
                .expect("listed as a Score plugin");
            let mut scores = Vec::with_capacity(nodes.len());
            for node in nodes {
                match p.score(state, pod, node) {
                    Ok(s) => scores.push(s),
                    Err(status) => {
                        return Err(ScheduleError::Plugin(
                            status.with_plugin(weighted.plugin.name()),
                        ))
                    }
                }
            }
            let status = p.normalize_score(state, pod, &mut scores);
            if !status.is_success() {
                return Err(ScheduleError::Plugin(
                    status.with_plugin(weighted.plugin.name()),
                ));
            }
            for (total, score) in totals.iter_mut().zip(scores) {
                *total += score * weighted.weight;
            }
        }
        Ok(totals)
    }

    /// Runs Reserve plugins; on failure, unreserves the ones that ran and returns the
    /// status.
    pub fn run_reserve(&self, state: &CycleState, pod: &PodInfo, node: &str) -> Status {
        for (i, plugin) in self.reserve.iter().enumerate() {
            let p = plugin.as_reserve().expect("listed as a Reserve plugin");
            let status = p.reserve(state, pod, node);
            if !status.is_success() {
                for done in self.reserve[..=i].iter().rev() {
                    done.as_reserve()
                        .expect("listed as a Reserve plugin")
                        .unreserve(state, pod, node);
                }
                return status.with_plugin(plugin.name());
            }
        }
        Status::success()
    }

    /// Runs every Reserve plugin's `unreserve` (after a failed bind), in reverse order.
    pub fn run_unreserve(&self, state: &CycleState, pod: &PodInfo, node: &str) {
        for plugin in self.reserve.iter().rev() {
            plugin
                .as_reserve()
                .expect("listed as a Reserve plugin")
                .unreserve(state, pod, node);
        }
    }
}

/// The index of the highest total, chosen uniformly at random among ties (reservoir
/// sampling: the k-th tie replaces the choice with probability 1/k).
pub fn select_host(totals: &[i64]) -> usize {
    let mut rng = rand::rng();
    let mut best = 0;
    let mut ties = 0u32;
    for (i, &score) in totals.iter().enumerate() {
        if i == 0 || score > totals[best] {
            best = i;
            ties = 1;
        } else if score == totals[best] {
            ties += 1;
            if rng.random_range(0..ties) == 0 {
                best = i;
            }
        }
    }
    best
}

/// Kubernetes' default normalisation: scale so that the highest score becomes
/// [`MAX_NODE_SCORE`]; with `reverse`, the lowest raw score gets the highest result.
/// Worked example: raw [2, 4, 0], reverse → [50, 0, 100] (100 - 100·2/4 = 50).
pub fn default_normalize(scores: &mut [i64], reverse: bool) {
    let max = scores.iter().copied().max().unwrap_or(0);
    if max == 0 {
        if reverse {
            scores.iter_mut().for_each(|s| *s = MAX_NODE_SCORE);
        }
        return;
    }
    for s in scores.iter_mut() {
        *s = MAX_NODE_SCORE * *s / max;
        if reverse {
            *s = MAX_NODE_SCORE - *s;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adaptive_number_of_nodes_to_find() {
        let cases = [
            ("few nodes: all", 50, 0, 50),
            ("under the minimum: all", 99, 0, 99),
            ("200 nodes: 48% is 96, raised to 100", 200, 0, 100),
            ("1000 nodes: 42%", 1000, 0, 420),
            ("5000 nodes: 10%", 5000, 0, 500),
            ("10000 nodes: floor of 5%", 10000, 0, 500),
            ("explicit 30%", 5000, 30, 1500),
            ("explicit 100%", 5000, 100, 5000),
            ("explicit 1% raised to 100", 5000, 1, 100),
        ];
        for (name, nodes, pct, want) in cases {
            assert_eq!(num_feasible_nodes_to_find(nodes, pct), want, "{name}");
        }
    }

    #[test]
    fn normalizes_like_kubernetes() {
        let mut s = vec![2, 4, 0];
        default_normalize(&mut s, false);
        assert_eq!(s, vec![50, 100, 0]);
        let mut s = vec![2, 4, 0];
        default_normalize(&mut s, true);
        assert_eq!(s, vec![50, 0, 100]);
        let mut s = vec![0, 0];
        default_normalize(&mut s, true);
        assert_eq!(s, vec![100, 100]);
    }

    #[test]
    fn select_host_takes_the_maximum_and_spreads_ties() {
        assert_eq!(select_host(&[1, 5, 3]), 1);
        let mut seen = HashSet::new();
        for _ in 0..200 {
            seen.insert(select_host(&[7, 2, 7, 7]));
        }
        assert_eq!(seen, HashSet::from([0, 2, 3]));
    }

    #[test]
    fn fit_error_message_counts_and_sorts_reasons() {
        let mut diagnosis = Diagnosis::default();
        let anti = "node(s) didn't match pod anti-affinity rules";
        diagnosis.node_statuses.insert(
            "a".into(),
            Status::new(Code::Unschedulable, "Insufficient cpu"),
        );
        diagnosis
            .node_statuses
            .insert("b".into(), Status::new(Code::Unschedulable, anti));
        diagnosis
            .node_statuses
            .insert("c".into(), Status::new(Code::Unschedulable, anti));
        let err = FitError {
            num_all_nodes: 3,
            diagnosis,
        };
        assert_eq!(
            err.message(),
            "0/3 nodes are available: 1 Insufficient cpu, 2 node(s) didn't match pod anti-affinity rules."
        );
    }

    #[test]
    fn registry_refuses_duplicates() {
        let mut registry = Registry::new();
        registry
            .register(
                crate::plugins::node_name::NAME,
                crate::plugins::node_name::new,
            )
            .expect("first registration");
        assert!(matches!(
            registry.register(
                crate::plugins::node_name::NAME,
                crate::plugins::node_name::new
            ),
            Err(Error::DuplicatePlugin(_))
        ));
    }
    fn default_framework(percentage: u32) -> Framework {
        let registry = crate::plugins::in_tree_registry().expect("registry");
        Framework::new(&registry, &Profile::new("default-scheduler"), percentage)
            .expect("framework")
    }

    #[test]
    fn full_cycle_with_the_default_plugins() {
        use crate::testing::{node, pod, snapshot};
        let fw = default_framework(0);
        let snap = snapshot(vec![
            node("small").cpu("2").info(),
            node("big").cpu("8").info(),
            node("tainted")
                .cpu("16")
                .taint("k", "v", "NoSchedule")
                .info(),
        ]);
        let cases = [
            ("resources rule out the small node; least allocated prefers big", pod("p").cpu("3"), Ok("big")),
            ("a nodeSelector wins", pod("p").node_selector("kubernetes.io/hostname", "small"), Ok("small")),
            (
                "nothing fits",
                pod("p").cpu("10"),
                Err("0/3 nodes are available: 1 node(s) had untolerated taint {k: v}, 2 Insufficient cpu."),
            ),
        ];
        for (name, p, want) in cases {
            let got = fw
                .schedule(&mut CycleState::new(), &p.info(), &snap)
                .map(|r| r.node)
                .map_err(|e| e.message());
            assert_eq!(
                got,
                want.map(str::to_string).map_err(str::to_string),
                "{name}"
            );
        }
        let empty = snapshot(Vec::new());
        assert!(matches!(
            fw.schedule(&mut CycleState::new(), &pod("p").info(), &empty),
            Err(ScheduleError::NoNodes)
        ));
    }

    #[test]
    fn examines_just_enough_nodes_and_rotates() {
        use crate::testing::{node, pod, snapshot};
        let nodes: Vec<_> = (0..1000)
            .map(|i| node(&format!("n{i:04}")).info())
            .collect();
        let snap = snapshot(nodes);
        for threads in [1, 4] {
            let mut fw = default_framework(0);
            fw.set_parallelism(threads);
            let first = fw
                .schedule(&mut CycleState::new(), &pod("p").info(), &snap)
                .expect("fits");
            assert_eq!(
                (first.evaluated_nodes, first.feasible_nodes),
                (420, 420),
                "threads {threads}"
            );
            assert_eq!(
                fw.next_start.load(Ordering::Relaxed),
                420,
                "threads {threads}"
            );
            fw.schedule(&mut CycleState::new(), &pod("p").info(), &snap)
                .expect("fits");
            assert_eq!(
                fw.next_start.load(Ordering::Relaxed),
                840,
                "threads {threads}"
            );
            let third = fw
                .schedule(&mut CycleState::new(), &pod("p").info(), &snap)
                .expect("fits");
            assert_eq!(third.feasible_nodes, 420, "wraps around the ring");
        }
        let fw = default_framework(100);
        let all = fw
            .schedule(&mut CycleState::new(), &pod("p").info(), &snap)
            .expect("fits");
        assert_eq!(all.feasible_nodes, 1000);
    }

    #[test]
    fn rejected_nodes_are_counted_with_their_reasons_in_parallel() {
        use crate::testing::{node, pod, snapshot};
        // 600 nodes, only every third one has the label: Filter runs on threads.
        let nodes: Vec<_> = (0..600)
            .map(|i| {
                let n = node(&format!("n{i:04}"));
                if i % 3 == 0 {
                    n.label("disk", "ssd").info()
                } else {
                    n.info()
                }
            })
            .collect();
        let snap = snapshot(nodes);
        let mut fw = default_framework(100);
        fw.set_parallelism(3);
        let got = fw
            .schedule(
                &mut CycleState::new(),
                &pod("p").node_selector("disk", "ssd").info(),
                &snap,
            )
            .expect("fits");
        assert_eq!(got.feasible_nodes, 200);
        let err = fw
            .schedule(
                &mut CycleState::new(),
                &pod("p").node_selector("disk", "nvme").info(),
                &snap,
            )
            .expect_err("nothing fits");
        assert_eq!(
            err.message(),
            "0/600 nodes are available: 600 node(s) didn't match Pod's node affinity/selector."
        );
    }
}
