//! JSON patch, merge patch and strategic merge patch: the bodies of a `PATCH` request.
//!
//! Each function takes the stored object and the request body, both as JSON, and returns
//! the patched object (the inputs are left untouched). Decoding, validation and
//! preconditions are the caller's job.
//!
//! - [`json_patch()`]: `application/json-patch+json`, RFC 6902 (`kubectl rollout undo`).
//! - [`merge_patch()`]: `application/merge-patch+json`, RFC 7386 (`label`, `annotate`, `scale`).
//! - [`strategic_merge_patch`]: `application/strategic-merge-patch+json` (client-side
//!   `apply`, `set image`, `edit`, `rollout restart`, `cordon`), whose list rules come
//!   from the kind ([`merge_keys`]).

pub mod merge_keys;
mod strategic;

use json_patch::{Patch, PatchOperation};
use serde_json::Value;

use crate::resource::Resource;

/// Why a patch could not be applied. The message is shown to the user in a `Status`,
/// so it says where in the object the problem is.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The patch or the object is not a JSON object where one is required.
    #[error("{what} must be a JSON object")]
    NotAnObject { what: &'static str },

    /// The body is not a JSON patch (an array of operations).
    #[error("invalid JSON patch: {0}")]
    InvalidJsonPatch(#[source] serde_json::Error),

    /// A JSON patch `test` operation found a different value.
    #[error("JSON patch operation {index} (test) failed: the value at \"{path}\" does not match")]
    JsonPatchTestFailed { index: usize, path: String },

    /// A JSON patch operation could not be applied (for example, its path does not exist).
    #[error("JSON patch operation {index} ({op}) failed at \"{path}\": {kind}")]
    JsonPatchOperation {
        index: usize,
        op: &'static str,
        path: String,
        #[source]
        kind: json_patch::PatchErrorKind,
    },

    /// A strategic merge patch has `"$patch": "delete"` at its top level.
    #[error("\"$patch\": \"delete\" at the top level of a patch would delete the whole object")]
    DeleteWholeObject,

    /// A `$patch` directive with a value other than `merge`, `replace` or `delete`.
    #[error(
        "{path}: unknown \"$patch\" value {value}; expected \"merge\", \"replace\" or \"delete\""
    )]
    UnknownPatchValue { path: String, value: String },

    /// A key starting with `$` that is not a strategic merge patch directive.
    #[error("{path}: unknown strategic merge patch directive \"{directive}\"")]
    UnknownDirective { path: String, directive: String },

    /// A directive whose value has the wrong shape.
    #[error("{path}: \"{directive}\" must be {expected}")]
    InvalidDirectiveValue {
        path: String,
        directive: String,
        expected: &'static str,
    },

    /// `"$patch": "delete"` as an element of a list that is not merged on a key.
    #[error(
        "{path}: \"$patch\": \"delete\" needs a list that is merged on a key, \
         but this list is replaced as a whole"
    )]
    DeleteWithoutMergeKey { path: String },

    /// An element of a list merged on a key lacks the key.
    #[error("{path}: the list element does not contain its merge key \"{key}\"")]
    MissingMergeKey { path: String, key: &'static str },

    /// A list merged on a key holds something other than objects.
    #[error("{path}: the elements of this list are merged on \"{key}\" and must be objects")]
    NotAnObjectInMergeList { path: String, key: &'static str },

    /// An object or list given in a list of primitives that is merged as a set.
    #[error(
        "{path}: this list holds primitive values; objects and lists cannot be merged into it"
    )]
    NotPrimitive { path: String },

    /// The patch list's elements are not in the order of its `$setElementOrder` list.
    #[error(
        "{path}: the elements of the patch list are not in the order given by \"{directive}\""
    )]
    OrderMismatch { path: String, directive: String },

    /// The patch sets a field that its map's `$retainKeys` would drop.
    #[error("{path}: the patch sets \"{field}\", which is not listed in \"$retainKeys\"")]
    NotInRetainKeys { path: String, field: String },
}

/// The result type of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Applies an RFC 6902 JSON patch (`add`, `remove`, `replace`, `move`, `copy`, `test`).
///
/// # Errors
///
/// [`Error::InvalidJsonPatch`] if `patch` is not an array of operations,
/// [`Error::JsonPatchTestFailed`] if a `test` operation does not match, and
/// [`Error::JsonPatchOperation`] if an operation's path cannot be resolved. Operations are
/// all-or-nothing: on error nothing is returned.
pub fn json_patch(target: &Value, patch: &Value) -> Result<Value> {
    let ops: Patch = serde_json::from_value(patch.clone()).map_err(Error::InvalidJsonPatch)?;
    let mut doc = target.clone();
    json_patch::patch(&mut doc, &ops).map_err(|e| {
        let op = ops.get(e.operation).map_or("unknown", op_name);
        let path = e.path.to_string();
        match e.kind {
            json_patch::PatchErrorKind::TestFailed => Error::JsonPatchTestFailed {
                index: e.operation,
                path,
            },
            kind => Error::JsonPatchOperation {
                index: e.operation,
                op,
                path,
                kind,
            },
        }
    })?;
    Ok(doc)
}

fn op_name(op: &PatchOperation) -> &'static str {
    match op {
        PatchOperation::Add(_) => "add",
        PatchOperation::Remove(_) => "remove",
        PatchOperation::Replace(_) => "replace",
        PatchOperation::Move(_) => "move",
        PatchOperation::Copy(_) => "copy",
        PatchOperation::Test(_) => "test",
    }
}

/// Applies an RFC 7386 merge patch: objects merge recursively, `null` deletes a key, and
/// every other value (lists included) replaces the old one.
///
/// # Errors
///
/// [`Error::NotAnObject`] if the patch is not a JSON object (a patch that replaces the
/// whole object is not a meaningful update of an API object).
pub fn merge_patch(target: &Value, patch: &Value) -> Result<Value> {
    if !patch.is_object() {
        return Err(Error::NotAnObject {
            what: "a merge patch",
        });
    }
    let mut doc = target.clone();
    json_patch::merge(&mut doc, patch);
    Ok(doc)
}

/// Applies a Kubernetes strategic merge patch to an object of `resource`'s kind.
///
/// Maps merge recursively and `null` deletes a key; lists are merged or replaced as the
/// kind's Go types say ([`merge_keys`]); the `$patch`, `$setElementOrder/…`,
/// `$retainKeys` and `$deleteFromPrimitiveList/…` directives are applied and removed.
/// Lists merged without `$setElementOrder` are ordered as Kubernetes orders them: patch
/// elements in the patch's order, each live-only element before the first patch element
/// that followed it in the live list (so a new element lands before live-only elements
/// that come after the patch's known ones).
///
/// # Errors
///
/// [`Error::NotAnObject`] if the object or the patch is not a JSON object, and the other
/// variants for malformed directives and lists that cannot be merged, each naming the path.
pub fn strategic_merge_patch(resource: &Resource, target: &Value, patch: &Value) -> Result<Value> {
    strategic::apply(merge_keys::for_kind(resource.kind), target, patch)
}

#[cfg(test)]
mod tests;
