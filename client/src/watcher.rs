//! A never-ending list-then-watch stream of one kind: [`watcher()`] lists, watches from
//! the list's resourceVersion, resumes after disconnects and relists on 410 Gone.
//!
//! The stream is the kube-runtime shape:
//!
//! ```text
//! Init, InitApply(a), InitApply(b), …, InitDone, Apply(c), Delete(a), Apply(b), …
//! ```
//!
//! `Init` … `InitDone` bracket a complete list (read page by page); a consumer that
//! keeps state (see [`crate::store`]) replaces its state with the objects between them.
//! After a relist (410, or a continue token that expired) the bracket repeats. Between
//! brackets come `Apply` (added or modified) and `Delete` events, with no gap and no
//! duplicate across reconnects: each watch resumes from the last resourceVersion seen
//! (including bookmarks).
//!
//! Errors are reported as `Err` items and the stream goes on: the watcher backs off
//! exponentially (with jitter, capped) before its next attempt, and resets the delay
//! once the apiserver answers again. A 410 is not an error: it triggers a relist.

use std::collections::VecDeque;
use std::time::Duration;

use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use rand::Rng;
use rkube_api::status::Status;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::api::{self, Api, ListParams, Object, WatchEvent, WatchParams};

/// What the watcher reports when a call fails; it retries on its own after a back-off.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to list objects")]
    InitialListFailed(#[source] api::Error),
    #[error("failed to start watching objects")]
    WatchStartFailed(#[source] api::Error),
    #[error("watch stream failed")]
    WatchFailed(#[source] api::Error),
    #[error("apiserver ended the watch with {} {}: {}", .0.code, .0.reason, .0.message)]
    WatchError(Box<Status>),
}

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One item of a [`watcher()`] stream.
#[derive(Debug, Clone, PartialEq)]
pub enum Event<K> {
    /// A (re)list starts: the objects until [`Event::InitDone`] are the complete state.
    Init,
    /// An object of the list in progress.
    InitApply(K),
    /// The list is complete; watching starts.
    InitDone,
    /// An object was added or modified.
    Apply(K),
    /// An object was deleted (its last state).
    Delete(K),
}

/// Exponential back-off between failed attempts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// The first delay.
    pub initial: Duration,
    /// Delays never exceed this.
    pub max: Duration,
}

impl Default for Backoff {
    /// 500 ms, doubling up to 30 s.
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(30),
        }
    }
}

/// What to watch and how: selectors, page size, bookmarks, back-off.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub label_selector: Option<String>,
    pub field_selector: Option<String>,
    /// Items per list page; `None` lists everything in one call (default: 500).
    pub page_size: Option<u32>,
    /// Ask for BOOKMARK events so that a resumed watch starts from a recent
    /// resourceVersion even when nothing matched for a long time (default: true).
    pub bookmarks: bool,
    pub backoff: Backoff,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            label_selector: None,
            field_selector: None,
            page_size: Some(500),
            bookmarks: true,
            backoff: Backoff::default(),
        }
    }
}

impl Config {
    /// Watches only objects whose labels match `selector`.
    pub fn labels(mut self, selector: &str) -> Self {
        self.label_selector = Some(selector.to_string());
        self
    }

    /// Watches only objects whose fields match `selector`, e.g. `spec.nodeName=n1`.
    pub fn fields(mut self, selector: &str) -> Self {
        self.field_selector = Some(selector.to_string());
        self
    }

    /// Lists in pages of `size` items (`None`: one call).
    pub fn page_size(mut self, size: Option<u32>) -> Self {
        self.page_size = size;
        self
    }

    /// Sets the back-off between failed attempts.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }
}

/// Watches every object of `api` (its namespace, or all) that matches `config`.
///
/// The stream never ends; drop it to stop watching. See the [module docs](self) for the
/// order of events and how errors are handled.
pub fn watcher<K: Object>(
    api: Api<K>,
    config: Config,
) -> impl Stream<Item = Result<Event<K>>> + Send {
    futures::stream::unfold(Watcher::new(api, config), |mut watcher| async move {
        let item = watcher.next().await;
        Some((item, watcher))
    })
}

/// Where the watcher is between two events.
enum State<K> {
    /// Nothing listed yet, or the state must be listed again (410).
    Empty,
    /// A paged list is in progress.
    InitPage { continue_token: String },
    /// Listed or watched up to `resource_version`; a watch must be (re)started.
    Listed { resource_version: String },
    /// A watch is open.
    Watching {
        resource_version: String,
        stream: BoxStream<'static, api::Result<WatchEvent<K>>>,
        started: Instant,
        delivered: bool,
    },
}

/// A watch that ends this soon without delivering anything counts as a failure, so that
/// an apiserver that closes every watch at once is not hammered.
const MIN_QUIET_WATCH: Duration = Duration::from_secs(1);

struct Watcher<K> {
    api: Api<K>,
    config: Config,
    state: State<K>,
    /// Events of a list page, handed out before anything else.
    pending: VecDeque<Event<K>>,
    /// The next back-off delay, and whether to wait it before the next call.
    delay: Duration,
    wait: bool,
}

impl<K: Object> Watcher<K> {
    fn new(api: Api<K>, config: Config) -> Self {
        let delay = config.backoff.initial;
        Watcher {
            api,
            config,
            state: State::Empty,
            pending: VecDeque::new(),
            delay,
            wait: false,
        }
    }

    /// Makes the next call wait, and lengthens the wait after that.
    fn back_off(&mut self) {
        self.wait = true;
    }

    fn succeeded(&mut self) {
        self.delay = self.config.backoff.initial;
    }

    async fn pause(&mut self) {
        if !std::mem::take(&mut self.wait) {
            return;
        }
        // Up to 20% less, so that many watchers that failed together spread out.
        let jitter = rand::rng().random_range(0.8..=1.0);
        let delay = self.delay.mul_f64(jitter);
        debug!(
            delay_ms = delay.as_millis() as u64,
            kind = K::KIND,
            "backing off"
        );
        tokio::time::sleep(delay).await;
        self.delay = (self.delay * 2).min(self.config.backoff.max);
    }

    fn list_params(&self, continue_token: Option<String>) -> ListParams {
        ListParams {
            label_selector: self.config.label_selector.clone(),
            field_selector: self.config.field_selector.clone(),
            limit: self.config.page_size,
            continue_token,
            resource_version: None,
        }
    }

    fn relist(&mut self, why: &str) {
        info!(kind = K::KIND, why, "relisting");
        self.pending.clear();
        self.state = State::Empty;
    }

    /// Lists one page; queues its events and moves to the next state.
    async fn list_page(&mut self, continue_token: Option<String>) -> Result<()> {
        let first = continue_token.is_none();
        let params = self.list_params(continue_token.clone());
        match self.api.list(&params).await {
            Ok(list) => {
                self.succeeded();
                if first {
                    self.pending.push_back(Event::Init);
                }
                self.pending
                    .extend(list.items.into_iter().map(Event::InitApply));
                self.state = match list.continue_token {
                    Some(continue_token) => State::InitPage { continue_token },
                    None => {
                        self.pending.push_back(Event::InitDone);
                        debug!(kind = K::KIND, rv = %list.resource_version, "listed");
                        State::Listed {
                            resource_version: list.resource_version,
                        }
                    }
                };
                Ok(())
            }
            Err(e) if !first && e.is_gone() => {
                // The continue token expired: start the list over.
                self.relist("continue token expired");
                Ok(())
            }
            Err(e) => {
                self.state = match continue_token {
                    Some(continue_token) => State::InitPage { continue_token },
                    None => State::Empty,
                };
                self.back_off();
                Err(Error::InitialListFailed(e))
            }
        }
    }

    async fn next(&mut self) -> Result<Event<K>> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Ok(event);
            }
            self.pause().await;
            match std::mem::replace(&mut self.state, State::Empty) {
                State::Empty => self.list_page(None).await?,
                State::InitPage { continue_token } => self.list_page(Some(continue_token)).await?,
                State::Listed { resource_version } => {
                    let params = WatchParams {
                        label_selector: self.config.label_selector.clone(),
                        field_selector: self.config.field_selector.clone(),
                        bookmarks: self.config.bookmarks,
                    };
                    match self.api.watch(&params, &resource_version).await {
                        Ok(stream) => {
                            debug!(kind = K::KIND, rv = %resource_version, "watching");
                            self.state = State::Watching {
                                resource_version,
                                stream,
                                started: Instant::now(),
                                delivered: false,
                            };
                        }
                        Err(e) if e.is_gone() => self.relist("resourceVersion expired"),
                        Err(e) => {
                            self.state = State::Listed { resource_version };
                            self.back_off();
                            return Err(Error::WatchStartFailed(e));
                        }
                    }
                }
                State::Watching {
                    mut resource_version,
                    mut stream,
                    started,
                    mut delivered,
                } => {
                    let event = match stream.next().await {
                        Some(Ok(event)) => event,
                        Some(Err(e)) if e.is_gone() => {
                            self.relist("resourceVersion expired");
                            continue;
                        }
                        Some(Err(e)) => {
                            warn!(kind = K::KIND, error = %e, "watch failed, resuming");
                            self.state = State::Listed { resource_version };
                            self.back_off();
                            return Err(Error::WatchFailed(e));
                        }
                        None => {
                            debug!(kind = K::KIND, rv = %resource_version, "watch ended, resuming");
                            if !delivered && started.elapsed() < MIN_QUIET_WATCH {
                                self.back_off();
                            }
                            self.state = State::Listed { resource_version };
                            continue;
                        }
                    };
                    let out = match event {
                        WatchEvent::Added(object) | WatchEvent::Modified(object) => {
                            advance(&mut resource_version, &object);
                            Some(Event::Apply(object))
                        }
                        WatchEvent::Deleted(object) => {
                            advance(&mut resource_version, &object);
                            Some(Event::Delete(object))
                        }
                        WatchEvent::Bookmark(rv) => {
                            resource_version = rv;
                            None
                        }
                        WatchEvent::Error(status) if status.code == 410 => {
                            self.relist("resourceVersion expired");
                            continue;
                        }
                        WatchEvent::Error(status) => {
                            self.state = State::Listed { resource_version };
                            self.back_off();
                            return Err(Error::WatchError(status));
                        }
                    };
                    delivered = true;
                    self.succeeded();
                    self.state = State::Watching {
                        resource_version,
                        stream,
                        started,
                        delivered,
                    };
                    if let Some(out) = out {
                        return Ok(out);
                    }
                }
            }
        }
    }
}

/// Moves the watch position to the object's resourceVersion.
fn advance<K: Object>(resource_version: &mut String, object: &K) {
    if let Some(rv) = &object.metadata().resource_version {
        resource_version.clone_from(rv);
    }
}
