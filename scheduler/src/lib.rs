//! `rkube-scheduler` places pending pods on nodes with the Kubernetes filter-and-score framework.
//!
//! Not built yet: this crate is a placeholder in the workspace, filled by its own issue
//! (#3). It builds on `rkube-client` (list/watch/write through the apiserver's gRPC API).
