//! `rkube-controller-manager`: the controllers that make declared state real —
//! ReplicaSets, Deployments, DaemonSets, endpoints, node lifecycle, node IPAM,
//! namespaces and garbage collection.
//!
//! Start with [`run`]: it connects informers (shared watched caches, from
//! [`rkube_client::controller`]) and starts every controller on the one controller
//! runner. Each controller module has a `reconcile(obj, ctx) -> Result<Action>` and an
//! `error_policy` that reports through [`failure`]; reads come from informer caches,
//! writes go through [`cluster::Writer`] so decisions can be unit-tested against a
//! recording fake.

pub mod cluster;
pub mod daemonset;
pub mod deployment;
pub mod endpoints;
pub mod events;
pub mod failure;
pub mod gc;
pub mod namespace;
pub mod node_ipam;
pub mod node_lifecycle;
pub mod pod;
pub mod replicaset;
pub mod simulation;

mod manager;

pub use manager::{run, Config};
