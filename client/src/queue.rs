//! A rate-limited work queue of keys for controllers: [`WorkQueue`], after client-go's
//! `workqueue` (deduplicating queue + delays + per-key exponential back-off).
//!
//! Guarantees:
//! - a key is handed out to at most one worker at a time: a key added again while it is
//!   being processed is handed out again only after [`WorkQueue::done`];
//! - a key waiting in the queue is there once, however often it is added;
//! - [`WorkQueue::add_after`] and [`WorkQueue::add_rate_limited`] add the key later; an
//!   earlier pending delay wins over a later one;
//! - after [`WorkQueue::shutdown`], adds are ignored, delayed keys are dropped, keys
//!   already queued are still handed out and then [`WorkQueue::next`] returns `None`.
//!
//! A worker loop:
//!
//! ```text
//! while let Some(key) = queue.next().await {
//!     match reconcile(&key).await {
//!         Ok(()) => queue.forget(&key),
//!         Err(_) => queue.add_rate_limited(key.clone()),
//!     }
//!     queue.done(&key);
//! }
//! ```

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;

/// How [`WorkQueue::add_rate_limited`] spaces out retries: the larger of a per-key
/// exponential back-off and an overall token bucket (Kubernetes'
/// `DefaultControllerRateLimiter`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// The delay after a key's first failure; it doubles with each further failure.
    pub base_delay: Duration,
    /// The per-key delay never exceeds this.
    pub max_delay: Duration,
    /// Retries of all keys together are refilled at this rate…
    pub qps: f64,
    /// …and may burst up to this many.
    pub burst: u32,
}

impl Default for RateLimit {
    /// 5 ms doubling up to 1000 s per key; overall 10 retries/s with bursts of 100.
    fn default() -> Self {
        RateLimit {
            base_delay: Duration::from_millis(5),
            max_delay: Duration::from_secs(1000),
            qps: 10.0,
            burst: 100,
        }
    }
}

/// The state behind [`RateLimit`].
struct Limiter<T> {
    config: RateLimit,
    failures: HashMap<T, u32>,
    /// Token bucket: may go negative, then a retry waits for the debt to be refilled.
    tokens: f64,
    refilled_at: Instant,
}

impl<T: Hash + Eq + Clone> Limiter<T> {
    fn new(config: RateLimit, now: Instant) -> Self {
        Limiter {
            config,
            failures: HashMap::new(),
            tokens: f64::from(config.burst),
            refilled_at: now,
        }
    }

    /// How long to wait before retrying `key`, counting this as one more failure.
    fn when(&mut self, key: &T, now: Instant) -> Duration {
        let failures = self.failures.entry(key.clone()).or_insert(0);
        // base · 2^failures, computed in floating point so that it cannot overflow.
        let exponent = (*failures).min(64) as i32;
        let per_key = (self.config.base_delay.as_secs_f64() * 2f64.powi(exponent))
            .min(self.config.max_delay.as_secs_f64());
        *failures = failures.saturating_add(1);

        let elapsed = now
            .saturating_duration_since(self.refilled_at)
            .as_secs_f64();
        self.refilled_at = now;
        self.tokens = (self.tokens + elapsed * self.config.qps).min(f64::from(self.config.burst));
        self.tokens -= 1.0;
        let overall = if self.tokens < 0.0 && self.config.qps > 0.0 {
            -self.tokens / self.config.qps
        } else {
            0.0
        };
        Duration::from_secs_f64(per_key.max(overall))
    }
}

struct State<T> {
    /// Keys ready to be handed out, in order; each is also in `dirty`.
    queue: VecDeque<T>,
    /// Keys that need processing: queued, or re-added while being processed.
    dirty: HashSet<T>,
    /// Keys handed out and not yet `done`.
    processing: HashSet<T>,
    /// Keys to add later, by due time (the sequence number keeps equal times apart).
    delayed: BTreeMap<(Instant, u64), T>,
    delayed_at: HashMap<T, (Instant, u64)>,
    sequence: u64,
    shutting_down: bool,
    limiter: Limiter<T>,
}

impl<T: Hash + Eq + Clone> State<T> {
    /// Queues `key` unless it is already pending; returns whether a worker should wake.
    fn insert(&mut self, key: T) -> bool {
        if !self.dirty.insert(key.clone()) || self.processing.contains(&key) {
            return false;
        }
        self.queue.push_back(key);
        true
    }

    /// Queues every delayed key that is due.
    fn promote(&mut self, now: Instant) {
        while let Some(entry) = self.delayed.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let key = entry.remove();
            self.delayed_at.remove(&key);
            self.insert(key);
        }
    }
}

struct Inner<T> {
    state: Mutex<State<T>>,
    /// Wakes workers waiting in `next`.
    wake: Notify,
}

/// A deduplicating, delaying, rate-limited queue of keys; cheap to clone, shared by
/// all workers of a controller. See the [module docs](self) for its guarantees.
pub struct WorkQueue<T> {
    inner: Arc<Inner<T>>,
}

impl<T> Clone for WorkQueue<T> {
    fn clone(&self) -> Self {
        WorkQueue {
            inner: self.inner.clone(),
        }
    }
}

impl<T> fmt::Debug for WorkQueue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.inner.state.lock();
        f.debug_struct("WorkQueue")
            .field("queued", &state.queue.len())
            .field("processing", &state.processing.len())
            .field("delayed", &state.delayed.len())
            .field("shutting_down", &state.shutting_down)
            .finish()
    }
}

impl<T: Hash + Eq + Clone> Default for WorkQueue<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Hash + Eq + Clone> WorkQueue<T> {
    /// A queue with the default [`RateLimit`].
    pub fn new() -> Self {
        Self::with_rate_limit(RateLimit::default())
    }

    /// A queue whose retries follow `rate_limit`.
    pub fn with_rate_limit(rate_limit: RateLimit) -> Self {
        let state = State {
            queue: VecDeque::new(),
            dirty: HashSet::new(),
            processing: HashSet::new(),
            delayed: BTreeMap::new(),
            delayed_at: HashMap::new(),
            sequence: 0,
            shutting_down: false,
            limiter: Limiter::new(rate_limit, Instant::now()),
        };
        WorkQueue {
            inner: Arc::new(Inner {
                state: Mutex::new(state),
                wake: Notify::new(),
            }),
        }
    }

    /// Adds `key` now (a no-op if it is already queued).
    pub fn add(&self, key: T) {
        let wake = {
            let mut state = self.inner.state.lock();
            !state.shutting_down && state.insert(key)
        };
        if wake {
            self.inner.wake.notify_one();
        }
    }

    /// Adds `key` after `delay`, unless it is already due to be added sooner.
    pub fn add_after(&self, key: T, delay: Duration) {
        if delay.is_zero() {
            return self.add(key);
        }
        {
            let mut state = self.inner.state.lock();
            if state.shutting_down {
                return;
            }
            let due = Instant::now() + delay;
            if let Some(&(at, sequence)) = state.delayed_at.get(&key) {
                if at <= due {
                    return;
                }
                state.delayed.remove(&(at, sequence));
            }
            state.sequence += 1;
            let slot = (due, state.sequence);
            state.delayed.insert(slot, key.clone());
            state.delayed_at.insert(key, slot);
        }
        // A waiting worker must recompute when to wake up.
        self.inner.wake.notify_one();
    }

    /// Adds `key` after its back-off: call this when processing it failed.
    pub fn add_rate_limited(&self, key: T) {
        let delay = self.inner.state.lock().limiter.when(&key, Instant::now());
        self.add_after(key, delay);
    }

    /// Clears the failure count of `key`: call this when processing it succeeded.
    pub fn forget(&self, key: &T) {
        self.inner.state.lock().limiter.failures.remove(key);
    }

    /// How many times `key` was added with [`WorkQueue::add_rate_limited`] since it was
    /// last forgotten.
    pub fn num_requeues(&self, key: &T) -> u32 {
        let state = self.inner.state.lock();
        state.limiter.failures.get(key).copied().unwrap_or(0)
    }

    /// Waits for a key to process; `None` once the queue is shut down and drained.
    ///
    /// The caller owns the key until it calls [`WorkQueue::done`].
    pub async fn next(&self) -> Option<T> {
        loop {
            // Register for wake-ups before looking, so that none is missed in between.
            let woken = self.inner.wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();

            let due = {
                let mut state = self.inner.state.lock();
                state.promote(Instant::now());
                if let Some(key) = state.queue.pop_front() {
                    state.dirty.remove(&key);
                    state.processing.insert(key.clone());
                    let more = !state.queue.is_empty();
                    drop(state);
                    if more {
                        self.inner.wake.notify_one();
                    }
                    return Some(key);
                }
                if state.shutting_down {
                    return None;
                }
                state.delayed.first_key_value().map(|((at, _), _)| *at)
            };
            match due {
                Some(at) => {
                    tokio::select! {
                        _ = &mut woken => {}
                        _ = tokio::time::sleep_until(at) => {}
                    }
                }
                None => woken.await,
            }
        }
    }

    /// Marks `key` as processed; if it was added meanwhile, it is queued again.
    pub fn done(&self, key: &T) {
        let wake = {
            let mut state = self.inner.state.lock();
            state.processing.remove(key);
            if state.dirty.contains(key) {
                state.queue.push_back(key.clone());
                true
            } else {
                false
            }
        };
        if wake {
            self.inner.wake.notify_one();
        }
    }

    /// Keys ready to be handed out (not counting delayed or in-process ones).
    pub fn len(&self) -> usize {
        self.inner.state.lock().queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stops accepting keys and drops delayed ones; workers drain what is queued, then
    /// [`WorkQueue::next`] returns `None`.
    pub fn shutdown(&self) {
        {
            let mut state = self.inner.state.lock();
            state.shutting_down = true;
            state.delayed.clear();
            state.delayed_at.clear();
        }
        self.inner.wake.notify_waiters();
    }

    pub fn is_shutting_down(&self) -> bool {
        self.inner.state.lock().shutting_down
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::time::timeout;

    use super::*;

    /// Whether `next` hands out a key within `wait` (paused time: no real waiting).
    async fn next_within(queue: &WorkQueue<&'static str>, wait: Duration) -> Option<&'static str> {
        timeout(wait, queue.next()).await.ok().flatten()
    }

    #[tokio::test(start_paused = true)]
    async fn collapses_duplicates() {
        let queue = WorkQueue::new();
        queue.add("a");
        queue.add("b");
        queue.add("a");
        assert_eq!(queue.len(), 2);
        assert_eq!(queue.next().await, Some("a"));
        assert_eq!(queue.next().await, Some("b"));
        assert_eq!(next_within(&queue, Duration::from_secs(60)).await, None);
    }

    #[tokio::test(start_paused = true)]
    async fn never_hands_out_a_key_twice_at_once() {
        let queue = WorkQueue::new();
        queue.add("a");
        assert_eq!(queue.next().await, Some("a"));
        queue.add("a");
        queue.add("a");
        assert_eq!(queue.len(), 0, "a key being processed is not queued again");
        assert_eq!(next_within(&queue, Duration::from_secs(60)).await, None);
        queue.done(&"a");
        assert_eq!(queue.next().await, Some("a"), "re-added while processing");
        queue.done(&"a");
        assert_eq!(next_within(&queue, Duration::from_secs(60)).await, None);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_workers_never_share_a_key() {
        let queue = WorkQueue::<u32>::new();
        let in_flight = Arc::new(Mutex::new(HashSet::new()));
        let handled = Arc::new(AtomicUsize::new(0));
        let mut workers = Vec::new();
        for _ in 0..4 {
            let (queue, in_flight, handled) = (queue.clone(), in_flight.clone(), handled.clone());
            workers.push(tokio::spawn(async move {
                while let Some(key) = queue.next().await {
                    assert!(in_flight.lock().insert(key), "key {key} handed out twice");
                    tokio::time::sleep(Duration::from_millis(u64::from(key) + 1)).await;
                    in_flight.lock().remove(&key);
                    handled.fetch_add(1, Ordering::SeqCst);
                    queue.done(&key);
                }
            }));
        }
        for round in 0..50u32 {
            for key in 0..3 {
                queue.add(key);
            }
            tokio::time::sleep(Duration::from_millis(u64::from(round % 3))).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        queue.shutdown();
        for worker in workers {
            worker.await.expect("worker panicked");
        }
        let handled = handled.load(Ordering::SeqCst);
        assert!(
            (3..150).contains(&handled),
            "handled {handled}: duplicates should collapse"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn add_after_waits_and_the_earliest_delay_wins() {
        let queue = WorkQueue::new();
        let start = Instant::now();
        queue.add_after("a", Duration::from_secs(10));
        queue.add_after("a", Duration::from_secs(30));
        assert_eq!(
            next_within(&queue, Duration::from_millis(9_999)).await,
            None
        );
        assert_eq!(queue.next().await, Some("a"));
        assert_eq!(start.elapsed(), Duration::from_secs(10));
        queue.done(&"a");

        // A sooner delay replaces a later one; a worker already waiting notices.
        let start = Instant::now();
        queue.add_after("b", Duration::from_secs(60));
        let waiter = {
            let queue = queue.clone();
            tokio::spawn(async move { queue.next().await })
        };
        tokio::task::yield_now().await;
        queue.add_after("b", Duration::from_secs(5));
        assert_eq!(waiter.await.expect("waiter"), Some("b"));
        assert_eq!(start.elapsed(), Duration::from_secs(5));
        queue.done(&"b");
        assert_eq!(
            next_within(&queue, Duration::from_secs(120)).await,
            None,
            "no second b"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_grows_per_key_and_forget_resets_it() {
        let queue = WorkQueue::new();
        let mut delays = Vec::new();
        for _ in 0..4 {
            let start = Instant::now();
            queue.add_rate_limited("a");
            assert_eq!(queue.next().await, Some("a"));
            delays.push(start.elapsed());
            queue.done(&"a");
        }
        let ms = Duration::from_millis;
        assert_eq!(delays, [ms(5), ms(10), ms(20), ms(40)]);
        assert_eq!(queue.num_requeues(&"a"), 4);

        // Another key has its own count.
        let start = Instant::now();
        queue.add_rate_limited("b");
        assert_eq!(queue.next().await, Some("b"));
        assert_eq!(start.elapsed(), ms(5));
        queue.done(&"b");

        queue.forget(&"a");
        assert_eq!(queue.num_requeues(&"a"), 0);
        let start = Instant::now();
        queue.add_rate_limited("a");
        assert_eq!(queue.next().await, Some("a"));
        assert_eq!(start.elapsed(), ms(5));
    }

    #[test]
    fn limiter_caps_per_key_delay_and_applies_the_bucket() {
        let now = Instant::now();
        let mut limiter = Limiter::new(RateLimit::default(), now);
        // The overall bucket: 100 retries pass with only the per-key delay…
        for key in 0..100u32 {
            assert_eq!(
                limiter.when(&key, now),
                Duration::from_millis(5),
                "key {key}"
            );
        }
        // …then each further one waits for a token at 10 per second.
        assert_eq!(limiter.when(&100, now), Duration::from_millis(100));
        assert_eq!(limiter.when(&101, now), Duration::from_millis(200));
        // A second later ten tokens are back; the debt of two is repaid first.
        assert_eq!(
            limiter.when(&102, now + Duration::from_secs(1)),
            Duration::from_millis(5)
        );

        let mut limiter = Limiter::new(RateLimit::default(), now);
        let mut last = Duration::ZERO;
        for _ in 0..40 {
            last = limiter.when(&"hot", now + Duration::from_secs(3600));
        }
        assert_eq!(last, Duration::from_secs(1000), "capped at max_delay");
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_drains_then_ends() {
        let queue = WorkQueue::new();
        let idle = {
            let queue = queue.clone();
            tokio::spawn(async move { queue.next().await })
        };
        tokio::task::yield_now().await;
        queue.add("a");
        assert_eq!(idle.await.expect("idle worker"), Some("a"));
        queue.add("b");
        queue.add_after("c", Duration::from_secs(1));
        let waiting = {
            let queue = queue.clone();
            tokio::spawn(async move {
                let first = queue.next().await;
                let second = queue.next().await;
                (first, second)
            })
        };
        tokio::task::yield_now().await;
        queue.shutdown();
        queue.add("d");
        assert!(queue.is_shutting_down());
        assert_eq!(waiting.await.expect("worker"), (Some("b"), None));
        // A key being processed can still be finished.
        queue.done(&"a");
        assert_eq!(queue.next().await, None);
    }
}
