//! `rkube-controller-manager` runs the controllers (ReplicaSet, Deployment, DaemonSet, endpoints, node lifecycle, node IPAM, namespaces, garbage collection).
//!
//! Not built yet: this crate is a placeholder in the workspace, filled by its own issue
//! (#4). It builds on `rkube-client` (list/watch/write through the apiserver's gRPC API).
