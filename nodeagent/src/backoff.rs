//! Kubernetes' CrashLoopBackOff: a crashed container is restarted at once the first time,
//! then only after 10 s, 20 s, 40 s… up to 5 min; the delay resets once a container has
//! run for 10 minutes.

use std::time::Duration;

use tokio::time::Instant;

/// The first delay.
pub const INITIAL: Duration = Duration::from_secs(10);
/// Delays never exceed this.
pub const MAX: Duration = Duration::from_secs(300);
/// A container that ran this long before exiting starts over at no delay.
pub const RESET_AFTER: Duration = Duration::from_secs(600);

/// The back-off state of one container of one pod.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CrashLoopBackOff {
    /// The delay that applies after the latest restart (`None`: none yet).
    delay: Option<Duration>,
    /// When the container last exited.
    exited_at: Option<Instant>,
}

/// What to do with an exited container that the restart policy wants back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Restart now.
    Restart,
    /// Wait `remaining`; the message says `back-off {delay}`.
    Wait {
        delay: Duration,
        remaining: Duration,
    },
}

impl CrashLoopBackOff {
    /// Records that the container exited at `now` after running for `ran`.
    pub fn exited(&mut self, now: Instant, ran: Duration) {
        if ran >= RESET_AFTER {
            self.delay = None;
        }
        self.exited_at = Some(now);
    }

    /// Whether to restart now. A restart moves the delay on (none → 10 s → 20 s … → 5 min).
    pub fn decide(&mut self, now: Instant) -> Decision {
        if let (Some(delay), Some(exited_at)) = (self.delay, self.exited_at) {
            let since = now.saturating_duration_since(exited_at);
            if since < delay {
                return Decision::Wait {
                    delay,
                    remaining: delay - since,
                };
            }
        }
        self.delay = Some(match self.delay {
            None => INITIAL,
            Some(delay) => (delay * 2).min(MAX),
        });
        Decision::Restart
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_ten_seconds_to_five_minutes_and_resets() {
        let t0 = Instant::now();
        let mut backoff = CrashLoopBackOff::default();
        // First crash: restart at once.
        backoff.exited(t0, Duration::from_secs(1));
        assert_eq!(backoff.decide(t0), Decision::Restart);

        let mut now = t0;
        for want in [10, 20, 40, 80, 160, 300, 300] {
            backoff.exited(now, Duration::from_secs(1));
            let delay = Duration::from_secs(want);
            assert_eq!(
                backoff.decide(now + Duration::from_secs(1)),
                Decision::Wait {
                    delay,
                    remaining: delay - Duration::from_secs(1)
                },
                "{want}s"
            );
            now += delay;
            assert_eq!(backoff.decide(now), Decision::Restart, "{want}s");
        }

        // Ten minutes of running: the next crash restarts at once again.
        backoff.exited(now, RESET_AFTER);
        assert_eq!(backoff.decide(now), Decision::Restart);
        backoff.exited(now, Duration::from_secs(1));
        assert!(matches!(
            backoff.decide(now),
            Decision::Wait { delay, .. } if delay == INITIAL
        ));
    }
}
