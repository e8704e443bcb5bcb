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
//!   pod's volumes on the host.
//!
//! [`shim`] is the single-threaded helper the built-in runtime re-executes the agent
//! binary as (`rkube-nodeagent shim …`) to run each container with libcontainer.
//!
//! The runtime is a trait so that workers are unit-tested against
//! [`runtime::fake::FakeRuntime`], a recording fake, without root.

pub mod agent;
pub mod backoff;
pub mod lease;
pub mod machine;
pub mod node;
pub mod pod_worker;
pub mod pod_workers;
pub mod runtime;
pub mod shim;
pub mod status;
pub mod volume;

pub use agent::{run, Config};
