//! The rkube object model, shared by every component.
//!
//! Pure code only: no tokio, no I/O. Objects are Kubernetes objects (k8s-openapi types,
//! API version 1.32) and travel as `serde_json::Value` through generic code.
//!
//! Start with [`resource`]: the resource table describes each supported kind once
//! (group, version, kind, plural, scope, subresources), and generic code (storage, REST,
//! gRPC, CLI) is driven by it. Then:
//! - [`object`]: reading and writing the metadata of untyped objects;
//! - [`codec`]: typed decoding, unknown-field detection and defaulting per kind;
//! - [`validation`]: Kubernetes validation rules, as field errors;
//! - [`selector`] and [`fields`]: label and field selectors;
//! - [`patch`]: JSON patch, merge patch and strategic merge patch;
//! - [`table`]: server-side `Table` columns per kind;
//! - [`status`]: the Kubernetes `Status` error object.

pub mod codec;
pub mod defaults;
pub mod fields;
pub mod object;
pub mod patch;
pub mod resource;
pub mod selector;
pub mod status;
pub mod table;
pub mod validation;

pub use resource::{Resource, Scope, Subresource};
