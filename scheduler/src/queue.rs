//! The scheduling queue, Kubernetes' three parts:
//!
//! - **active**: pods ready to be tried, highest priority first, then oldest;
//! - **backoff**: pods that failed, waiting `initial · 2^(attempts−1)` (capped) before
//!   they become active again;
//! - **unschedulable**: pods no node fits, parked until a cluster event that may help
//!   ([`SchedulingQueue::on_cluster_event`]: node added or changed, pod bound or
//!   deleted…) or until they have waited [`UNSCHEDULABLE_TIMEOUT`]. An event moves only
//!   the pods rejected by a plugin that cares about it
//!   ([`crate::plugins::interested`]), a light form of Kubernetes' queueing hints.
//!
//! A pod that failed while a cluster event happened during its cycle goes to backoff
//! rather than unschedulable, so the event is not missed. Times are passed in (`now`)
//! so the behaviour can be tested without sleeping; [`SchedulingQueue::pop`] is the
//! blocking form the scheduler thread uses.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::node_info::PodInfo;

/// How long a pod stays in the unschedulable pool without an event (Kubernetes'
/// `podMaxInUnschedulablePodsDuration`).
pub const UNSCHEDULABLE_TIMEOUT: Duration = Duration::from_secs(300);

/// A pod in the queue, with its scheduling history.
#[derive(Debug, Clone)]
pub struct QueuedPod {
    pub info: Arc<PodInfo>,
    /// Scheduling attempts so far.
    pub attempts: u32,
    /// When the pod entered the queue the first time.
    pub initial: Instant,
    /// When the pod was last (re)queued: orders pods of equal priority.
    pub timestamp: Instant,
    /// The scheduling cycle in which the pod was last popped.
    pub cycle: u64,
    /// The plugins that rejected the pod in its last attempt (empty: any event may
    /// help).
    pub rejected_by: Vec<&'static str>,
}

/// A change in the cluster that may make parked pods schedulable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterEvent {
    NodeAdded,
    NodeChanged,
    /// A pod was bound to a node (affinity may now be satisfied).
    AssignedPodAdded,
    /// A bound pod went away (resources, ports, anti-affinity freed).
    AssignedPodDeleted,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    Active,
    Backoff,
    Unschedulable,
    /// Popped, being scheduled or bound.
    InFlight,
}

struct Entry {
    pod: QueuedPod,
    place: Place,
    /// Bumped whenever the pod moves; heap entries with an older generation are stale.
    generation: u64,
}

#[derive(PartialEq, Eq)]
struct ActiveKey {
    priority: i32,
    timestamp: Instant,
    generation: u64,
    key: String,
}

impl Ord for ActiveKey {
    /// Higher priority first, then older timestamp (BinaryHeap pops the maximum).
    fn cmp(&self, other: &Self) -> Ordering {
        self.priority
            .cmp(&other.priority)
            .then_with(|| other.timestamp.cmp(&self.timestamp))
            .then_with(|| other.key.cmp(&self.key))
    }
}

impl PartialOrd for ActiveKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

struct State {
    pods: HashMap<String, Entry>,
    active: BinaryHeap<ActiveKey>,
    backoff: BinaryHeap<Reverse<(Instant, u64, String)>>,
    generation: u64,
    cycle: u64,
    /// The cycle during which the last move request (cluster event) happened.
    move_request_cycle: u64,
    /// Keys of the pods in the unschedulable pool (so events need not scan the queue).
    parked: HashSet<String>,
    closed: bool,
}

/// The queue; shared by the watch handlers (producers) and the scheduling thread.
pub struct SchedulingQueue {
    state: Mutex<State>,
    ready: Condvar,
    initial_backoff: Duration,
    max_backoff: Duration,
}

impl SchedulingQueue {
    pub fn new(initial_backoff: Duration, max_backoff: Duration) -> Self {
        SchedulingQueue {
            state: Mutex::new(State {
                pods: HashMap::new(),
                active: BinaryHeap::new(),
                backoff: BinaryHeap::new(),
                generation: 0,
                cycle: 0,
                move_request_cycle: 0,
                parked: HashSet::new(),
                closed: false,
            }),
            ready: Condvar::new(),
            initial_backoff,
            max_backoff,
        }
    }

    /// Backoff after `attempts` failed attempts. Worked example with 1 s initial, 10 s
    /// max: attempts 1 → 1 s, 2 → 2 s, 3 → 4 s, 4 → 8 s, 5 and more → 10 s.
    pub fn backoff_duration(&self, attempts: u32) -> Duration {
        let doublings = attempts.saturating_sub(1).min(31);
        self.initial_backoff
            .saturating_mul(1u32 << doublings)
            .min(self.max_backoff)
    }

    fn backoff_expiry(&self, pod: &QueuedPod) -> Instant {
        pod.timestamp + self.backoff_duration(pod.attempts)
    }

    /// Puts an entry in `place` (pushing the matching heap entry).
    fn place(&self, s: &mut State, mut pod: QueuedPod, place: Place, now: Instant) {
        s.generation += 1;
        let generation = s.generation;
        let key = pod.info.key.clone();
        match place {
            Place::Active => {
                s.active.push(ActiveKey {
                    priority: pod.info.priority,
                    timestamp: pod.timestamp,
                    generation,
                    key: key.clone(),
                });
                self.ready.notify_one();
            }
            Place::Backoff => {
                s.backoff.push(Reverse((
                    self.backoff_expiry(&pod),
                    generation,
                    key.clone(),
                )));
                self.ready.notify_one();
            }
            Place::Unschedulable => pod.timestamp = now,
            Place::InFlight => {}
        }
        if place == Place::Unschedulable {
            s.parked.insert(key.clone());
        } else {
            s.parked.remove(&key);
        }
        s.pods.insert(
            key,
            Entry {
                pod,
                place,
                generation,
            },
        );
    }

    /// Adds a new pending pod, or updates one already queued. An update of a parked
    /// pod (unschedulable) that changes its spec or labels moves it back (active, or
    /// backoff while backing off), since it may now fit; status-only updates (such as
    /// the scheduler's own condition) do not.
    pub fn add_or_update(&self, info: Arc<PodInfo>, now: Instant) {
        let mut s = self.state.lock();
        let key = info.key.clone();
        match s.pods.get_mut(&key) {
            None => {
                let pod = QueuedPod {
                    info,
                    attempts: 0,
                    initial: now,
                    timestamp: now,
                    cycle: 0,
                    rejected_by: Vec::new(),
                };
                self.place(&mut s, pod, Place::Active, now);
            }
            Some(entry) => {
                let changed = entry.pod.info.pod.spec != info.pod.spec
                    || entry.pod.info.labels != info.labels;
                entry.pod.info = info;
                if entry.place == Place::Unschedulable && changed {
                    let pod = entry.pod.clone();
                    let to = self.active_or_backoff(&pod, now);
                    self.place(&mut s, pod, to, now);
                }
            }
        }
    }

    fn active_or_backoff(&self, pod: &QueuedPod, now: Instant) -> Place {
        if pod.attempts > 0 && self.backoff_expiry(pod) > now {
            Place::Backoff
        } else {
            Place::Active
        }
    }

    /// Forgets a pod (deleted, or bound by someone else).
    pub fn delete(&self, key: &str) {
        let mut s = self.state.lock();
        s.pods.remove(key);
        s.parked.remove(key);
    }

    /// Keeps only the queued (not in-flight) pods whose key satisfies `keep` (after a
    /// relist).
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        let mut s = self.state.lock();
        let gone: Vec<String> = s
            .pods
            .iter()
            .filter(|(k, e)| e.place != Place::InFlight && !keep(k))
            .map(|(k, _)| k.clone())
            .collect();
        for key in gone {
            s.pods.remove(&key);
            s.parked.remove(&key);
        }
    }

    /// Whether any pod is parked as unschedulable (cluster events only matter then).
    pub fn has_unschedulable(&self) -> bool {
        !self.state.lock().parked.is_empty()
    }

    /// Whether the pod is queued or in flight.
    pub fn contains(&self, key: &str) -> bool {
        self.state.lock().pods.contains_key(key)
    }

    /// Moves due backoff pods to active, and pods parked longer than
    /// [`UNSCHEDULABLE_TIMEOUT`] back to active or backoff.
    pub fn flush(&self, now: Instant) {
        let mut s = self.state.lock();
        self.flush_locked(&mut s, now);
    }

    fn flush_locked(&self, s: &mut State, now: Instant) {
        while let Some(Reverse((at, generation, key))) = s.backoff.peek().cloned() {
            if at > now {
                break;
            }
            s.backoff.pop();
            let current = s
                .pods
                .get(&key)
                .filter(|e| e.generation == generation && e.place == Place::Backoff)
                .map(|e| e.pod.clone());
            if let Some(pod) = current {
                self.place(s, pod, Place::Active, now);
            }
        }
        let expired: Vec<QueuedPod> = s
            .parked
            .iter()
            .filter_map(|k| s.pods.get(k))
            .filter(|e| now.duration_since(e.pod.timestamp) >= UNSCHEDULABLE_TIMEOUT)
            .map(|e| e.pod.clone())
            .collect();
        for pod in expired {
            let to = self.active_or_backoff(&pod, now);
            self.place(s, pod, to, now);
        }
    }

    /// A cluster event that may make parked pods schedulable: every unschedulable pod
    /// rejected by a plugin interested in `event` moves to active (or backoff if still
    /// backing off).
    pub fn on_cluster_event(&self, event: ClusterEvent, now: Instant) {
        let mut s = self.state.lock();
        s.move_request_cycle = s.cycle;
        let parked: Vec<QueuedPod> = s
            .parked
            .iter()
            .filter_map(|k| s.pods.get(k))
            .filter(|e| {
                e.pod.rejected_by.is_empty()
                    || e.pod
                        .rejected_by
                        .iter()
                        .any(|plugin| crate::plugins::interested(plugin, event))
            })
            .map(|e| e.pod.clone())
            .collect();
        for pod in parked {
            let to = self.active_or_backoff(&pod, now);
            self.place(&mut s, pod, to, now);
        }
    }

    /// The next pod to schedule, without waiting.
    pub fn try_pop(&self, now: Instant) -> Option<QueuedPod> {
        let mut s = self.state.lock();
        self.try_pop_locked(&mut s, now)
    }

    fn try_pop_locked(&self, s: &mut State, now: Instant) -> Option<QueuedPod> {
        self.flush_locked(s, now);
        while let Some(top) = s.active.pop() {
            let Some(entry) = s.pods.get_mut(&top.key) else {
                continue;
            };
            if entry.generation != top.generation || entry.place != Place::Active {
                continue;
            }
            s.cycle += 1;
            entry.place = Place::InFlight;
            entry.pod.attempts += 1;
            entry.pod.cycle = s.cycle;
            return Some(entry.pod.clone());
        }
        None
    }

    /// Waits for the next pod; `None` once the queue is closed.
    pub fn pop(&self) -> Option<QueuedPod> {
        let mut s = self.state.lock();
        loop {
            if s.closed {
                return None;
            }
            if let Some(pod) = self.try_pop_locked(&mut s, Instant::now()) {
                return Some(pod);
            }
            // Sleep until the earliest backoff expiry, or a second (for the
            // unschedulable timeout), or a notification.
            let wait = s
                .backoff
                .peek()
                .map(|Reverse((at, _, _))| at.saturating_duration_since(Instant::now()))
                .unwrap_or(Duration::from_secs(1))
                .min(Duration::from_secs(1));
            self.ready.wait_for(&mut s, wait);
        }
    }

    /// The pod was placed (or given up on): it leaves the queue.
    pub fn done(&self, key: &str) {
        let mut s = self.state.lock();
        if s.pods.get(key).is_some_and(|e| e.place == Place::InFlight) {
            s.pods.remove(key);
        }
    }

    /// A popped pod did not fit: parked as unschedulable, or sent to backoff when a
    /// cluster event happened since it was popped (it may fit now).
    pub fn add_unschedulable(&self, pod: QueuedPod, now: Instant) {
        let mut s = self.state.lock();
        let Some(entry) = s.pods.get(&pod.info.key) else {
            return; // deleted meanwhile
        };
        let mut pod = pod;
        pod.info = entry.pod.info.clone(); // the latest version seen during the cycle
        pod.timestamp = now;
        let to = if s.move_request_cycle >= pod.cycle {
            Place::Backoff
        } else {
            Place::Unschedulable
        };
        self.place(&mut s, pod, to, now);
    }

    /// A popped pod failed for another reason (plugin or bind error): backoff.
    pub fn add_backoff(&self, pod: QueuedPod, now: Instant) {
        let mut s = self.state.lock();
        let Some(entry) = s.pods.get(&pod.info.key) else {
            return; // deleted meanwhile
        };
        let mut pod = pod;
        pod.info = entry.pod.info.clone();
        pod.timestamp = now;
        self.place(&mut s, pod, Place::Backoff, now);
    }

    /// Wakes [`pop`](Self::pop) for good: it returns `None` from now on.
    pub fn close(&self) {
        self.state.lock().closed = true;
        self.ready.notify_all();
    }

    /// (active, backoff, unschedulable, in flight) counts.
    pub fn lengths(&self) -> (usize, usize, usize, usize) {
        let s = self.state.lock();
        let mut n = (0, 0, 0, 0);
        for e in s.pods.values() {
            match e.place {
                Place::Active => n.0 += 1,
                Place::Backoff => n.1 += 1,
                Place::Unschedulable => n.2 += 1,
                Place::InFlight => n.3 += 1,
            }
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::pod;

    fn info(name: &str, priority: i32) -> Arc<PodInfo> {
        Arc::new(
            pod(name)
                .spec_json(serde_json::json!({"priority": priority}))
                .info(),
        )
    }

    fn queue() -> SchedulingQueue {
        SchedulingQueue::new(Duration::from_secs(1), Duration::from_secs(10))
    }

    #[test]
    fn backoff_doubles_up_to_the_maximum() {
        let q = queue();
        let got: Vec<u64> = (1..=6).map(|a| q.backoff_duration(a).as_secs()).collect();
        assert_eq!(got, vec![1, 2, 4, 8, 10, 10]);
    }

    #[test]
    fn active_order_is_priority_then_age() {
        let q = queue();
        let t = Instant::now();
        q.add_or_update(info("old-low", 0), t);
        q.add_or_update(info("high", 10), t + Duration::from_millis(1));
        q.add_or_update(info("new-low", 0), t + Duration::from_millis(2));
        let order: Vec<String> = std::iter::from_fn(|| q.try_pop(t + Duration::from_millis(3)))
            .map(|p| p.info.key.clone())
            .collect();
        assert_eq!(
            order,
            vec!["default/high", "default/old-low", "default/new-low"]
        );
    }

    #[test]
    fn unschedulable_pods_wait_for_an_event_and_respect_backoff() {
        let q = queue();
        let t = Instant::now();
        q.add_or_update(info("p", 0), t);
        let p = q.try_pop(t).expect("active");
        q.add_unschedulable(p, t);
        assert_eq!(q.lengths(), (0, 0, 1, 0));
        assert!(
            q.try_pop(t + Duration::from_secs(30)).is_none(),
            "parked until an event"
        );

        // An event within the backoff (1 s after one attempt) sends it to backoff…
        q.on_cluster_event(ClusterEvent::NodeAdded, t + Duration::from_millis(500));
        assert_eq!(q.lengths(), (0, 1, 0, 0));
        assert!(q.try_pop(t + Duration::from_millis(900)).is_none());
        // …and it becomes active when the backoff expires.
        let p = q
            .try_pop(t + Duration::from_millis(1001))
            .expect("after backoff");
        assert_eq!(p.attempts, 2);

        // Second failure: 2 s backoff; an event after it moves the pod straight to active.
        q.add_unschedulable(p, t + Duration::from_secs(2));
        q.on_cluster_event(ClusterEvent::NodeAdded, t + Duration::from_secs(10));
        assert_eq!(q.lengths(), (1, 0, 0, 0));
    }

    #[test]
    fn event_during_the_cycle_sends_the_pod_to_backoff() {
        let q = queue();
        let t = Instant::now();
        q.add_or_update(info("p", 0), t);
        let p = q.try_pop(t).expect("active");
        q.on_cluster_event(ClusterEvent::NodeAdded, t); // a node was added while p was being scheduled
        q.add_unschedulable(p, t);
        assert_eq!(q.lengths(), (0, 1, 0, 0));
    }

    #[test]
    fn unschedulable_timeout_and_updates_and_deletes() {
        let q = queue();
        let t = Instant::now();
        q.add_or_update(info("p", 0), t);
        q.add_unschedulable(q.try_pop(t).expect("pop"), t);
        q.flush(t + UNSCHEDULABLE_TIMEOUT);
        assert_eq!(
            q.lengths(),
            (1, 0, 0, 0),
            "timed out of the unschedulable pool"
        );

        q.add_unschedulable(
            q.try_pop(t + UNSCHEDULABLE_TIMEOUT).expect("pop"),
            t + UNSCHEDULABLE_TIMEOUT,
        );
        let later = t + UNSCHEDULABLE_TIMEOUT + Duration::from_secs(5);
        q.add_or_update(info("p", 0), later);
        assert_eq!(
            q.lengths(),
            (0, 0, 1, 0),
            "an identical update (status only) does not"
        );
        q.add_or_update(Arc::new(pod("p").label("tier", "web").info()), later);
        assert_eq!(q.lengths(), (1, 0, 0, 0), "a label change moves it back");

        q.delete("default/p");
        assert!(q.try_pop(t + UNSCHEDULABLE_TIMEOUT * 2).is_none());
        assert!(!q.contains("default/p"));
    }

    #[test]
    fn blocking_pop_wakes_on_add_and_close() {
        let q = Arc::new(queue());
        let q2 = q.clone();
        let handle = std::thread::spawn(move || q2.pop().map(|p| p.info.key.clone()));
        std::thread::sleep(Duration::from_millis(20));
        q.add_or_update(info("p", 0), Instant::now());
        assert_eq!(handle.join().expect("join"), Some("default/p".to_string()));
        let q3 = q.clone();
        let handle = std::thread::spawn(move || q3.pop().is_none());
        std::thread::sleep(Duration::from_millis(20));
        q.close();
        assert!(handle.join().expect("join"));
    }

    #[test]
    fn events_move_only_pods_they_may_help() {
        let q = queue();
        let t = Instant::now();
        for (name, plugin) in [
            ("cpu", "NodeResourcesFit"),
            ("affinity", "InterPodAffinity"),
            ("taint", "TaintToleration"),
        ] {
            q.add_or_update(info(name, 0), t);
            let mut p = q.try_pop(t).expect("pop");
            p.rejected_by = vec![plugin];
            q.add_unschedulable(p, t);
        }
        let later = t + Duration::from_secs(60);
        q.on_cluster_event(ClusterEvent::AssignedPodAdded, later);
        let moved: Vec<String> = std::iter::from_fn(|| q.try_pop(later))
            .map(|p| p.info.key.clone())
            .collect();
        assert_eq!(moved, vec!["default/affinity"]);
        q.on_cluster_event(ClusterEvent::AssignedPodDeleted, later);
        let moved: Vec<String> = std::iter::from_fn(|| q.try_pop(later))
            .map(|p| p.info.key.clone())
            .collect();
        assert_eq!(moved, vec!["default/cpu"]);
        q.on_cluster_event(ClusterEvent::NodeChanged, later);
        let moved: Vec<String> = std::iter::from_fn(|| q.try_pop(later))
            .map(|p| p.info.key.clone())
            .collect();
        assert_eq!(moved, vec!["default/taint"]);
    }
}
