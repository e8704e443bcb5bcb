//! ClusterIP and NodePort allocation for Services.
//!
//! An allocation is a claim key in etcd (see [`crate::storage::claim_key`]) written in the
//! same transaction as the Service, so allocations survive restarts and never collide
//! across apiserver replicas. This module only decides which claims a Service needs and
//! picks free candidates; the registry retries with a new candidate when a claim is taken.

use std::net::{IpAddr, Ipv4Addr};

use ipnetwork::Ipv4Network;
use rand::Rng;
use serde_json::Value;

use crate::storage::claim_key;

/// Why the allocator was configured wrongly.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid service CIDR {0:?}")]
    Cidr(String),
    #[error("invalid node port range {0:?} (want first-last)")]
    PortRange(String),
}

/// The ranges Services allocate from.
#[derive(Debug, Clone)]
pub struct Allocator {
    pub service_cidr: Ipv4Network,
    pub node_ports: (u16, u16),
}

impl Allocator {
    /// Parses the `--service-cluster-ip-range` and `--service-node-port-range` flags.
    ///
    /// # Errors
    /// When either is malformed.
    pub fn new(cidr: &str, ports: &str) -> Result<Self, Error> {
        let service_cidr: Ipv4Network = cidr.parse().map_err(|_| Error::Cidr(cidr.into()))?;
        if service_cidr.size() < 8 {
            return Err(Error::Cidr(cidr.into()));
        }
        let (first, last) = ports
            .split_once('-')
            .and_then(|(a, b)| Some((a.trim().parse::<u16>().ok()?, b.trim().parse::<u16>().ok()?)))
            .filter(|(a, b)| a <= b)
            .ok_or_else(|| Error::PortRange(ports.into()))?;
        Ok(Allocator {
            service_cidr,
            node_ports: (first, last),
        })
    }

    /// The range as users write it, for messages.
    pub fn node_port_range(&self) -> String {
        format!("{}-{}", self.node_ports.0, self.node_ports.1)
    }

    /// Whether `ip` can be a ClusterIP (inside the range, not its network or broadcast address).
    pub fn ip_in_range(&self, ip: Ipv4Addr) -> bool {
        self.service_cidr.contains(ip)
            && ip != self.service_cidr.network()
            && ip != self.service_cidr.broadcast()
    }

    /// A random candidate ClusterIP (the first host address is kept for the
    /// `kubernetes` Service, as Kubernetes does).
    pub fn random_ip(&self) -> Ipv4Addr {
        let base = u32::from(self.service_cidr.network());
        let size = self.service_cidr.size();
        let offset = rand::rng().random_range(2..size - 1);
        Ipv4Addr::from(base + offset)
    }

    /// A random candidate NodePort.
    pub fn random_port(&self) -> u16 {
        rand::rng().random_range(self.node_ports.0..=self.node_ports.1)
    }
}

/// Whether a Service of this type gets node ports.
pub fn wants_node_ports(svc: &Value) -> bool {
    matches!(
        svc["spec"]["type"].as_str(),
        Some("NodePort") | Some("LoadBalancer")
    )
}

/// The claim keys a Service holds.
pub fn claims(svc: &Value) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(ip) = svc["spec"]["clusterIP"].as_str() {
        if ip.parse::<IpAddr>().is_ok() {
            out.push(claim_key("clusterip", ip));
        }
    }
    if wants_node_ports(svc) {
        for port in svc["spec"]["ports"].as_array().into_iter().flatten() {
            if let Some(np) = port["nodePort"].as_i64().filter(|p| *p > 0) {
                let proto = port["protocol"]
                    .as_str()
                    .unwrap_or("TCP")
                    .to_ascii_lowercase();
                out.push(claim_key("nodeport", &format!("{proto}-{np}")));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_flags() {
        let a = Allocator::new("10.96.0.0/12", "30000-32767").expect("valid");
        assert_eq!(a.node_ports, (30000, 32767));
        assert!(a.ip_in_range("10.96.0.10".parse().expect("ip")));
        assert!(!a.ip_in_range("10.96.0.0".parse().expect("ip")));
        assert!(!a.ip_in_range("10.112.0.1".parse().expect("ip")));
        for _ in 0..1000 {
            let ip = a.random_ip();
            assert!(
                a.ip_in_range(ip) && ip != "10.96.0.1".parse::<Ipv4Addr>().expect("ip"),
                "{ip}"
            );
            let p = a.random_port();
            assert!((30000..=32767).contains(&p));
        }
        for (bad_cidr, bad_ports) in [
            ("x", "1-2"),
            ("10.0.0.0/30", "1-2"),
            ("10.0.0.0/24", "5-1"),
            ("10.0.0.0/24", "7"),
        ] {
            assert!(
                Allocator::new(bad_cidr, bad_ports).is_err(),
                "{bad_cidr} {bad_ports}"
            );
        }
    }

    #[test]
    fn claims_follow_the_spec() {
        let svc = json!({"spec": {"type": "NodePort", "clusterIP": "10.96.0.5",
            "ports": [{"port": 80, "nodePort": 30080, "protocol": "TCP"}, {"port": 53, "nodePort": 30053, "protocol": "UDP"}]}});
        assert_eq!(
            claims(&svc),
            vec![
                "/registry/claims/clusterip/10.96.0.5",
                "/registry/claims/nodeport/tcp-30080",
                "/registry/claims/nodeport/udp-30053",
            ]
        );
        let headless = json!({"spec": {"type": "ClusterIP", "clusterIP": "None", "ports": [{"port": 80, "nodePort": 30080}]}});
        assert!(claims(&headless).is_empty());
    }
}
