//! Objects that expire: Events live `--event-ttl` (one hour by default, as in
//! Kubernetes) and then go, deleted by etcd itself through a lease attached when they are
//! written (created or updated).
//!
//! A lease per event would double the writes, so [`Leases`] shares one among all the
//! objects written within a short window: a lease granted for `ttl` plus the window
//! serves every write until `ttl` would outlast it. An object then lives at least `ttl`
//! and at most `ttl` plus the window, which is 5% of `ttl` and at most a minute. A write
//! whose lease etcd no longer knows is tried once more with a new one.

use std::time::Duration;

use etcd_client::LeaseClient;
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::storage;

/// The longest window over which one lease is shared.
const MAX_REUSE: Duration = Duration::from_secs(60);

/// The etcd leases objects with a time to live are written with.
pub struct Leases {
    client: LeaseClient,
    /// The lease being shared and when it runs out.
    current: Mutex<Option<(i64, Instant)>>,
}

/// How long a lease shared for `ttl` may be handed out: 5% of `ttl`, at most a minute.
pub fn reuse_window(ttl: Duration) -> Duration {
    (ttl / 20).min(MAX_REUSE)
}

/// Whether a lease running out at `expires` keeps an object written `now` for `ttl`.
fn lasts(expires: Instant, now: Instant, ttl: Duration) -> bool {
    now + ttl <= expires
}

impl Leases {
    pub fn new(client: &etcd_client::Client) -> Self {
        Leases {
            client: client.lease_client(),
            current: Mutex::new(None),
        }
    }

    /// A lease that keeps what is written with it now for at least `ttl`.
    ///
    /// # Errors
    /// When etcd grants no lease.
    pub async fn for_ttl(&self, ttl: Duration) -> storage::Result<i64> {
        let mut current = self.current.lock().await;
        let now = Instant::now();
        if let Some((id, expires)) = *current {
            if lasts(expires, now, ttl) {
                return Ok(id);
            }
        }
        let lifetime = ttl + reuse_window(ttl);
        let seconds = lifetime.as_secs_f64().ceil() as i64;
        let granted = self.client.clone().grant(seconds.max(1), None).await?;
        // Counted from before the request: etcd's clock started a little later.
        *current = Some((granted.id(), now + lifetime));
        Ok(granted.id())
    }

    /// Stops handing out `lease`, which etcd no longer knows (revoked by hand, say).
    pub async fn forget(&self, lease: i64) {
        let mut current = self.current.lock().await;
        if current.is_some_and(|(id, _)| id == lease) {
            *current = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_is_five_percent_of_the_ttl_and_at_most_a_minute() {
        let cases = [
            ("an hour", 3600, 60),
            ("ten minutes", 600, 30),
            ("twenty seconds", 20, 1),
        ];
        for (name, ttl, want) in cases {
            assert_eq!(
                reuse_window(Duration::from_secs(ttl)),
                Duration::from_secs(want),
                "{name}"
            );
        }
    }

    #[test]
    fn a_lease_is_shared_while_it_outlasts_the_ttl() {
        let now = Instant::now();
        let ttl = Duration::from_secs(3600);
        let expires = now + ttl + reuse_window(ttl);
        assert!(lasts(expires, now, ttl), "just granted");
        assert!(
            lasts(expires, now + Duration::from_secs(60), ttl),
            "window end"
        );
        assert!(
            !lasts(expires, now + Duration::from_secs(61), ttl),
            "past the window, an object would live less than the ttl"
        );
    }
}
