//! The node Lease (`kube-node-lease/<node>`, coordination.k8s.io/v1): renewed every few
//! seconds so the node lifecycle controller knows the node is alive.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference};
use k8s_openapi::chrono::Utc;
use rkube_client::{api, Api, Client};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// The namespace that holds node Leases.
pub const NAMESPACE: &str = "kube-node-lease";
/// How long a Lease stays valid without renewal, by default (kubelet's
/// `--node-lease-duration-seconds`).
pub const LEASE_DURATION_SECONDS: i32 = 40;

/// How often a Lease of `duration_seconds` is renewed: a quarter of its duration, as the
/// kubelet does, so that three renewals can be missed before it runs out.
pub fn renew_interval(duration_seconds: i32) -> Duration {
    Duration::from_millis(u64::try_from(duration_seconds.max(1)).unwrap_or(1) * 250)
}

/// What renewing the Lease can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to read lease {name}")]
    Get {
        name: String,
        #[source]
        source: api::Error,
    },
    #[error("failed to create lease {name}")]
    Create {
        name: String,
        #[source]
        source: api::Error,
    },
    #[error("failed to renew lease {name}")]
    Renew {
        name: String,
        #[source]
        source: api::Error,
    },
}

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Creates and renews this node's Lease.
#[derive(Debug, Clone)]
pub struct LeaseRenewer {
    leases: Api<Lease>,
    node: String,
    node_uid: String,
    duration_seconds: i32,
}

impl LeaseRenewer {
    /// A renewer for `node` whose Lease says it is valid for `duration_seconds`; the
    /// Lease is owned by the Node (uid `node_uid`) so that it goes away with it.
    pub fn new(client: Client, node: String, node_uid: String, duration_seconds: i32) -> Self {
        LeaseRenewer {
            leases: Api::namespaced(client, NAMESPACE),
            node,
            node_uid,
            duration_seconds,
        }
    }

    /// Renews the Lease now and then every `interval` until `shutdown`.
    pub async fn run(&self, interval: Duration, shutdown: CancellationToken) {
        loop {
            match self.renew().await {
                Ok(lease) => debug!(
                    node = %self.node,
                    resource_version = lease.metadata.resource_version.as_deref().unwrap_or(""),
                    "renewed lease"
                ),
                Err(err) => warn!(node = %self.node, error = %err, "failed to renew lease"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
        }
    }

    /// Sets the Lease's holder and renew time to now, creating it when missing.
    ///
    /// # Errors
    /// When the apiserver refuses the read or the write.
    pub async fn renew(&self) -> Result<Lease> {
        let existing = self
            .leases
            .get_opt(&self.node)
            .await
            .map_err(|source| Error::Get {
                name: self.node.clone(),
                source,
            })?;
        match existing {
            Some(mut lease) => {
                let spec = lease.spec.get_or_insert_with(Default::default);
                spec.holder_identity = Some(self.node.clone());
                spec.lease_duration_seconds = Some(self.duration_seconds);
                spec.renew_time = Some(MicroTime(Utc::now()));
                self.leases
                    .replace(&self.node, &lease)
                    .await
                    .map_err(|source| Error::Renew {
                        name: self.node.clone(),
                        source,
                    })
            }
            None => {
                let lease = self.new_lease();
                let created = self
                    .leases
                    .create(&lease)
                    .await
                    .map_err(|source| Error::Create {
                        name: self.node.clone(),
                        source,
                    })?;
                info!(node = %self.node, "created node lease");
                Ok(created)
            }
        }
    }

    fn new_lease(&self) -> Lease {
        let owner = (!self.node_uid.is_empty()).then(|| OwnerReference {
            api_version: "v1".into(),
            kind: "Node".into(),
            name: self.node.clone(),
            uid: self.node_uid.clone(),
            ..Default::default()
        });
        Lease {
            metadata: ObjectMeta {
                name: Some(self.node.clone()),
                namespace: Some(NAMESPACE.into()),
                owner_references: owner.map(|o| vec![o]),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(self.node.clone()),
                lease_duration_seconds: Some(self.duration_seconds),
                renew_time: Some(MicroTime(Utc::now())),
                ..Default::default()
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_is_renewed_every_quarter_of_its_duration() {
        for (seconds, want) in [(40, 10_000), (8, 2_000), (1, 250), (0, 250), (-5, 250)] {
            assert_eq!(
                renew_interval(seconds),
                Duration::from_millis(want),
                "{seconds} s"
            );
        }
    }
}
