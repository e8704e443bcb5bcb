//! `rkubectl` (the kubectl-style CLI) and `rkube` (the lab launcher).
//!
//! Start with [`lab`] (what `rkube up/down/status` do), which builds on [`pki`] (the
//! cluster CA, serving certificate and tokens written into the cluster's state
//! directory) and [`kubeconfig`] (merging the cluster's context into the user's
//! kubeconfig).

pub mod image;
pub mod kubeconfig;
pub mod lab;
pub mod netcheck;
pub mod pki;
pub mod rkubectl;
