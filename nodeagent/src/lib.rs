//! `rkube-nodeagent` runs the pods of one node with the built-in container runtime and the VXLAN overlay.
//!
//! Not built yet: this crate is a placeholder in the workspace, filled by its own issue
//! (#5). It builds on `rkube-client` (list/watch/write through the apiserver's gRPC API).
