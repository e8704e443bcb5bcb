//! `rkube-nodeagent`: the node agent. It registers its Node, keeps the node Lease and
//! status fresh, and runs the pods bound to the node through a container runtime.
//!
//! Start with [`agent::run`], which wires everything together from a [`Config`]:
//!
//! - [`machine`]: what the host is (CPUs, memory, disk, kernel, addresses);
//! - [`node`]: the Node object built from it, registration and the status heartbeat;
//! - [`lease`]: the node Lease in `kube-node-lease`, renewed every few seconds;
//! - [`pod_workers`]: watches the pods bound to the node and runs one [`pod_worker`] per
//!   pod; the worker drives a [`runtime::ContainerRuntime`] (restart policy,
//!   [`backoff`], graceful deletion) and reports [`status`]; [`volume`] lays out the
//!   pod's volumes on the host; [`start_slots`] bounds how many pods come up at once.
//! - [`network`]: the pod network: a bridge per node, a veth and a persisted address per
//!   pod sandbox, and the flannel-style VXLAN overlay to the other nodes.
//! - [`proxy`]: the service proxy, Services and Endpoints as one nftables table
//!   (ClusterIP, NodePort, session affinity, hairpin, the pods' egress masquerade);
//!   [`dns`]: the cluster DNS server on the bridge address, answering from the same watch.
//!
//! [`server`] serves the agent's own gRPC service (container logs, exec, [`stats`]) to
//! the apiserver over TLS.
//!
//! [`shim`] is the single-threaded helper the built-in runtime re-executes the agent
//! binary as (`rkube-nodeagent shim …`, forked by one `shim spawner`) to run each
//! container with libcontainer.
//!
//! The runtime is a trait so that workers are unit-tested against
//! [`runtime::fake::FakeRuntime`], a recording fake, without root.

pub mod agent;
pub mod backoff;
pub mod dns;
pub mod lease;
pub mod machine;
pub mod network;
pub mod node;
pub mod pod_worker;
pub mod pod_workers;
pub mod probe;
pub mod proxy;
pub mod runtime;
pub mod security;
pub mod server;
pub mod shim;
pub mod start_slots;
pub mod stats;
pub mod status;
pub mod volume;

pub use agent::{run, Config};
