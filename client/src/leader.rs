//! Leader election through a `coordination.k8s.io/v1` Lease, as client-go does it:
//! [`LeaderElector::run`] acquires the Lease (retrying every `retry_period`), runs a
//! future while it holds it, renews it, and cancels the future the moment the Lease is
//! lost (or could not be renewed for a whole `lease_duration`).
//!
//! Expiry is judged by the *local* time at which this replica last saw the Lease
//! record change, not by the `renewTime` written by another machine, so clock skew
//! between replicas does not matter (client-go's `observedTime`).

use std::future::Future;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::api::{self, Api};
use crate::client::Client;

/// What leader election can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to read lease {0}")]
    Get(String, #[source] api::Error),
    #[error("failed to write lease {0}")]
    Write(String, #[source] api::Error),
    #[error("lost the lease {0}")]
    Lost(String),
}

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Which Lease, who we are, and the timings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    /// This replica's `holderIdentity`; unique per process.
    pub identity: String,
    /// How long a Lease stays valid without renewal (`leaseDurationSeconds`).
    pub lease_duration: Duration,
    /// How often to try to acquire or renew.
    pub retry_period: Duration,
}

/// The last Lease record seen and when (local clock).
struct Observed {
    holder: Option<String>,
    renew_time: Option<MicroTime>,
    resource_version: Option<String>,
    at: Instant,
}

/// Acquires, renews and releases one Lease.
pub struct LeaderElector {
    api: Api<Lease>,
    config: LeaseConfig,
    observed: Mutex<Option<Observed>>,
}

impl LeaderElector {
    pub fn new(client: Client, config: LeaseConfig) -> Self {
        LeaderElector {
            api: Api::namespaced(client, &config.namespace),
            config,
            observed: Mutex::new(None),
        }
    }

    fn key(&self) -> String {
        format!("{}/{}", self.config.namespace, self.config.name)
    }

    fn lease_seconds(&self) -> i32 {
        i32::try_from(self.config.lease_duration.as_secs())
            .unwrap_or(i32::MAX)
            .max(1)
    }

    /// Notes the record and returns whether it is held by someone else and still valid.
    fn held_by_other(&self, lease: &Lease) -> bool {
        let spec = lease.spec.clone().unwrap_or_default();
        let now = Instant::now();
        let mut observed = self.observed.lock();
        let changed = observed.as_ref().is_none_or(|o| {
            o.holder != spec.holder_identity
                || o.renew_time != spec.renew_time
                || o.resource_version != lease.metadata.resource_version
        });
        if changed {
            *observed = Some(Observed {
                holder: spec.holder_identity.clone(),
                renew_time: spec.renew_time.clone(),
                resource_version: lease.metadata.resource_version.clone(),
                at: now,
            });
        }
        let at = observed.as_ref().map_or(now, |o| o.at);
        let duration = Duration::from_secs(
            u64::try_from(spec.lease_duration_seconds.unwrap_or(0)).unwrap_or(0),
        );
        let holder = spec.holder_identity.as_deref().unwrap_or("");
        !holder.is_empty() && holder != self.config.identity && at + duration > now
    }

    /// One attempt to acquire or renew; `Ok(true)` when we hold the Lease afterwards.
    ///
    /// # Errors
    /// When the apiserver cannot be reached or refuses the write for a reason other
    /// than a lost race (conflict, already exists).
    pub async fn try_acquire_or_renew(&self) -> Result<bool> {
        let now = MicroTime(crate::time::now());
        let existing = self
            .api
            .get_opt(&self.config.name)
            .await
            .map_err(|e| Error::Get(self.key(), e))?;
        let Some(lease) = existing else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.config.name.clone()),
                    namespace: Some(self.config.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.config.identity.clone()),
                    lease_duration_seconds: Some(self.lease_seconds()),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&lease).await {
                Ok(created) => {
                    self.held_by_other(&created);
                    Ok(true)
                }
                Err(e) if e.is_already_exists() => Ok(false),
                Err(e) => Err(Error::Write(self.key(), e)),
            };
        };
        if self.held_by_other(&lease) {
            return Ok(false);
        }
        let mut updated = lease.clone();
        let spec = updated.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(&self.config.identity) {
            spec.acquire_time = Some(now.clone());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            spec.holder_identity = Some(self.config.identity.clone());
        }
        spec.renew_time = Some(now);
        spec.lease_duration_seconds = Some(self.lease_seconds());
        match self.api.replace(&self.config.name, &updated).await {
            Ok(written) => {
                self.held_by_other(&written);
                Ok(true)
            }
            Err(e) if e.is_conflict() => Ok(false),
            Err(e) => Err(Error::Write(self.key(), e)),
        }
    }

    /// Gives the Lease up if we hold it (empty holder, 1 s duration), so another
    /// replica takes over at once.
    ///
    /// # Errors
    /// When the Lease cannot be read or written.
    pub async fn release(&self) -> Result<()> {
        let Some(mut lease) = self
            .api
            .get_opt(&self.config.name)
            .await
            .map_err(|e| Error::Get(self.key(), e))?
        else {
            return Ok(());
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(&self.config.identity) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(crate::time::now()));
        match self.api.replace(&self.config.name, &lease).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_conflict() => Ok(()),
            Err(e) => Err(Error::Write(self.key(), e)),
        }
    }

    /// Waits for leadership, then runs `lead(token)` while renewing. Returns
    /// `Ok(None)` when `shutdown` fired first, `Ok(Some(output))` when `lead` finished
    /// (the Lease is then released), and [`Error::Lost`] when the Lease was lost: the
    /// token given to `lead` is cancelled and its future dropped.
    ///
    /// # Errors
    /// [`Error::Lost`]; acquisition errors are retried, not returned.
    pub async fn run<F, Fut, T>(&self, shutdown: CancellationToken, lead: F) -> Result<Option<T>>
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future<Output = T>,
    {
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => break,
                Ok(false) => debug!(lease = %self.key(), "lease held by another replica"),
                Err(e) => warn!(lease = %self.key(), error = %e, "could not acquire lease"),
            }
            tokio::select! {
                _ = tokio::time::sleep(self.config.retry_period) => {}
                _ = shutdown.cancelled() => return Ok(None),
            }
        }
        info!(lease = %self.key(), identity = %self.config.identity, "acquired lease");
        let leading = shutdown.child_token();
        let work = lead(leading.clone());
        tokio::pin!(work);
        let mut last_renewal = Instant::now();
        loop {
            tokio::select! {
                output = &mut work => {
                    if let Err(e) = self.release().await {
                        warn!(lease = %self.key(), error = %e, "could not release lease");
                    }
                    return Ok(Some(output));
                }
                _ = tokio::time::sleep(self.config.retry_period) => {
                    match self.try_acquire_or_renew().await {
                        Ok(true) => last_renewal = Instant::now(),
                        Ok(false) => {
                            leading.cancel();
                            warn!(lease = %self.key(), "lease taken by another replica");
                            return Err(Error::Lost(self.key()));
                        }
                        Err(e) => {
                            warn!(lease = %self.key(), error = %e, "could not renew lease");
                            if last_renewal.elapsed() >= self.config.lease_duration {
                                leading.cancel();
                                return Err(Error::Lost(self.key()));
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ClientConfig;

    fn lease(holder: Option<&str>, seconds: i32, rv: &str) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some("l".to_string()),
                resource_version: Some(rv.to_string()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: holder.map(str::to_string),
                lease_duration_seconds: Some(seconds),
                ..Default::default()
            }),
        }
    }

    #[tokio::test]
    async fn judges_leases_by_holder_and_local_observation() {
        let client =
            Client::connect_lazy(ClientConfig::new("http://127.0.0.1:1")).expect("lazy client");
        let elector = LeaderElector::new(
            client,
            LeaseConfig {
                namespace: "default".to_string(),
                name: "l".to_string(),
                identity: "me".to_string(),
                lease_duration: Duration::from_secs(15),
                retry_period: Duration::from_secs(2),
            },
        );
        let cases = [
            ("ours", lease(Some("me"), 3600, "1"), false),
            (
                "someone else's, fresh",
                lease(Some("other"), 3600, "2"),
                true,
            ),
            (
                "someone else's, zero duration",
                lease(Some("other"), 0, "3"),
                false,
            ),
            ("released (no holder)", lease(None, 3600, "4"), false),
        ];
        for (name, l, want) in cases {
            assert_eq!(elector.held_by_other(&l), want, "{name}");
        }
    }
}
