//! The three-way strategic merge patch of client-side `apply`, computed the way kubectl
//! computes it.
//!
//! Three documents go in: the *original* (the last-applied configuration stored on the
//! live object, `{}` when there is none), the *modified* configuration (the manifest with
//! its new last-applied annotation) and the *current* (live) object. The patch is the
//! union of two diffs:
//!
//! - **delta**, from current to modified, ignoring deletions: every field the manifest
//!   sets to a value the live object does not have. Fields only the live object has
//!   (defaults, status, what others set) are left alone.
//! - **deletions**, from original to modified, ignoring changes and additions: every field
//!   the previous apply set and this manifest no longer has becomes `null`; an element of a
//!   list merged on a key becomes `{"$patch": "delete", <key>: …}`, a value of a merged
//!   primitive list goes into `$deleteFromPrimitiveList/<list>`.
//!
//! Lists follow the kind's strategic merge rules, which the apiserver's patch code owns
//! ([`merge_keys`]): lists without a merge strategy are replaced whole, merged lists are
//! diffed element by element and carry `$setElementOrder/<list>` (the manifest's order)
//! whenever they change. Maps whose Go type has the `retainKeys` strategy (a Deployment's
//! `spec.strategy`, each pod volume) carry `$retainKeys`, so that a switch of
//! `strategy.type` also drops the live `rollingUpdate`. An empty patch means `unchanged`.

use rkube_api::patch::merge_keys::{self, ListStrategy, Schema};
use serde_json::{Map, Value};

const PATCH: &str = "$patch";
const RETAIN_KEYS: &str = "$retainKeys";
const SET_ELEMENT_ORDER: &str = "$setElementOrder/";
const DELETE_FROM_PRIMITIVE_LIST: &str = "$deleteFromPrimitiveList/";

/// Why no patch could be computed: a configuration that strategic merge cannot diff.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// An element of a list merged on a key lacks the key.
    #[error("{path}: the list element has no merge key \"{key}\"")]
    MissingMergeKey { path: String, key: &'static str },

    /// A list merged on a key holds something other than objects.
    #[error("{path}: the elements of this list are merged on \"{key}\" and must be objects")]
    NotAnObject { path: String, key: &'static str },
}

/// The result type of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Computes the patch that takes `current` to `modified` for the fields the manifests
/// manage, deleting what `original` had and `modified` no longer has. `kind` selects the
/// list rules. Non-object inputs count as `{}`.
///
/// # Errors
/// When an element of a list merged on a key is not an object or lacks the key.
pub fn patch(
    kind: &str,
    original: &Value,
    modified: &Value,
    current: &Value,
) -> Result<Map<String, Value>> {
    let empty = Map::new();
    let as_map = |v: &'_ Value| -> Map<String, Value> {
        match v {
            Value::Object(m) => m.clone(),
            _ => empty.clone(),
        }
    };
    let (original, modified, current) = (as_map(original), as_map(modified), as_map(current));
    let root = At::root(kind);
    let delta = Diff {
        ignore_deletions: true,
        ignore_changes: false,
    }
    .maps(&current, &modified, &root)?;
    let deletions = Diff {
        ignore_deletions: false,
        ignore_changes: true,
    }
    .maps(&original, &modified, &root)?;
    Ok(merge_patches(deletions, &delta, &root))
}

/// Where in the object a diff is: the kind, the field names from the root (list elements
/// are transparent), and the schema of the value there.
#[derive(Debug, Clone)]
struct At<'a> {
    kind: &'a str,
    fields: Vec<String>,
    schema: Option<&'static Schema>,
}

impl<'a> At<'a> {
    fn root(kind: &'a str) -> Self {
        Self {
            kind,
            fields: Vec::new(),
            schema: Some(merge_keys::for_kind(kind)),
        }
    }

    /// The value of `field` (or, for a list, each of its elements).
    fn child(&self, field: &str) -> Self {
        let mut fields = self.fields.clone();
        fields.push(field.to_owned());
        Self {
            kind: self.kind,
            fields,
            schema: self.schema.and_then(|s| s.field(field)),
        }
    }

    fn list_strategy(&self, field: &str) -> ListStrategy {
        self.schema
            .map_or(ListStrategy::Replace, |s| s.list_strategy(field))
    }

    /// Whether the map here has the `retainKeys` patch strategy (for a list: each of its
    /// elements). These are the `patchStrategy:"retainKeys"` tags of the k8s.io/api types
    /// that the kinds of [`merge_keys`] use.
    fn retains_keys(&self) -> bool {
        let fields: Vec<&str> = self.fields.iter().map(String::as_str).collect();
        matches!(
            (self.kind, fields.as_slice()),
            ("Deployment", ["spec", "strategy"])
                | ("Pod", ["spec", "volumes"])
                | (
                    "Deployment" | "ReplicaSet" | "DaemonSet" | "StatefulSet",
                    ["spec", "template", "spec", "volumes"],
                )
        )
    }

    fn path(&self) -> String {
        if self.fields.is_empty() {
            "<root>".to_owned()
        } else {
            self.fields.join(".")
        }
    }
}

/// One two-way diff: what to leave out of the patch.
#[derive(Debug, Clone, Copy)]
struct Diff {
    /// Fields in the old document and not in the new one are not deleted (delta).
    ignore_deletions: bool,
    /// Fields added or changed in the new document are not set (deletions).
    ignore_changes: bool,
}

impl Diff {
    /// The patch that turns the map `old` into `new`, within this diff's limits.
    fn maps(
        self,
        old: &Map<String, Value>,
        new: &Map<String, Value>,
        at: &At<'_>,
    ) -> Result<Map<String, Value>> {
        let mut patch = Map::new();
        for (key, new_value) in new {
            let Some(old_value) = old.get(key) else {
                if !self.ignore_changes {
                    patch.insert(key.clone(), new_value.clone());
                }
                continue;
            };
            match (old_value, new_value) {
                (Value::Object(old_map), Value::Object(new_map)) => {
                    let child = at.child(key);
                    let mut value = self.maps(old_map, new_map, &child)?;
                    if child.retains_keys() {
                        retain_keys(&mut value, old_map, new_map);
                    }
                    if !value.is_empty() {
                        patch.insert(key.clone(), Value::Object(value));
                    }
                }
                (Value::Array(old_list), Value::Array(new_list)) => {
                    self.lists(key, old_list, new_list, at, &mut patch)?;
                }
                _ => {
                    if !self.ignore_changes && !same(old_value, new_value) {
                        patch.insert(key.clone(), new_value.clone());
                    }
                }
            }
        }
        if !self.ignore_deletions {
            for key in old.keys() {
                if !new.contains_key(key) {
                    patch.insert(key.clone(), Value::Null);
                }
            }
        }
        Ok(patch)
    }

    /// Diffs the list in `key` of the map at `at` into `patch`.
    fn lists(
        self,
        key: &str,
        old: &[Value],
        new: &[Value],
        at: &At<'_>,
        patch: &mut Map<String, Value>,
    ) -> Result<()> {
        let strategy = at.list_strategy(key);
        if strategy == ListStrategy::Replace {
            if !self.ignore_changes && !same_list(old, new) {
                patch.insert(key.to_owned(), Value::Array(new.to_vec()));
            }
            return Ok(());
        }
        if old.is_empty() {
            // Nothing to merge with: the new list goes in whole.
            if !new.is_empty() && !self.ignore_changes {
                patch.insert(key.to_owned(), Value::Array(new.to_vec()));
            }
            return Ok(());
        }
        let (list, deletions, order) = match strategy {
            ListStrategy::MergeOnKey(merge_key) => {
                let (list, order) = self.lists_of_maps(old, new, merge_key, &at.child(key))?;
                (list, Vec::new(), order)
            }
            _ => self.lists_of_primitives(old, new),
        };
        if !list.is_empty() {
            patch.insert(key.to_owned(), Value::Array(list));
        }
        if !deletions.is_empty() {
            patch.insert(
                format!("{DELETE_FROM_PRIMITIVE_LIST}{key}"),
                Value::Array(deletions),
            );
        }
        if let Some(order) = order {
            patch.insert(format!("{SET_ELEMENT_ORDER}{key}"), Value::Array(order));
        }
        Ok(())
    }

    /// A list of objects merged on `merge_key`: the changed and added elements in the new
    /// list's order, then a delete directive per removed element; and the new order
    /// (`$setElementOrder`) when there is a change to send or the order changed.
    fn lists_of_maps(
        self,
        old: &[Value],
        new: &[Value],
        merge_key: &'static str,
        at: &At<'_>,
    ) -> Result<(Vec<Value>, Option<Vec<Value>>)> {
        let old_keyed = keyed(old, merge_key, at)?;
        let new_keyed = keyed(new, merge_key, at)?;
        let mut list = Vec::new();
        for (id, element) in &new_keyed {
            match old_keyed.iter().find(|(old_id, _)| same(old_id, id)) {
                Some((_, old_element)) => {
                    let mut value = self.maps(old_element, element, at)?;
                    if at.retains_keys() {
                        retain_keys(&mut value, old_element, element);
                    }
                    if !value.is_empty() {
                        value.insert(merge_key.to_owned(), (*id).clone());
                        list.push(Value::Object(value));
                    }
                }
                None => {
                    if !self.ignore_changes {
                        list.push(Value::Object((*element).clone()));
                    }
                }
            }
        }
        if !self.ignore_deletions {
            for (id, _) in &old_keyed {
                if !new_keyed.iter().any(|(new_id, _)| same(new_id, id)) {
                    let mut delete = Map::new();
                    delete.insert(PATCH.to_owned(), Value::from("delete"));
                    delete.insert(merge_key.to_owned(), (*id).clone());
                    list.push(Value::Object(delete));
                }
            }
        }
        let order_same = old_keyed.len() == new_keyed.len()
            && old_keyed
                .iter()
                .zip(&new_keyed)
                .all(|((a, _), (b, _))| same(a, b));
        let send_order = (!self.ignore_changes && (!list.is_empty() || !order_same))
            || (!self.ignore_deletions && !list.is_empty());
        let order = send_order.then(|| {
            new_keyed
                .iter()
                .map(|(id, _)| {
                    let mut m = Map::new();
                    m.insert(merge_key.to_owned(), (*id).clone());
                    Value::Object(m)
                })
                .collect()
        });
        Ok((list, order))
    }

    /// A merged list of primitives: the added values (in the new order), the removed ones
    /// (`$deleteFromPrimitiveList`), and the new order when anything changed.
    fn lists_of_primitives(
        self,
        old: &[Value],
        new: &[Value],
    ) -> (Vec<Value>, Vec<Value>, Option<Vec<Value>>) {
        let mut added: Vec<Value> = Vec::new();
        if !self.ignore_changes {
            for v in new {
                if !old.iter().any(|o| same(o, v)) && !added.iter().any(|a| same(a, v)) {
                    added.push(v.clone());
                }
            }
        }
        let mut removed: Vec<Value> = Vec::new();
        if !self.ignore_deletions {
            for v in old {
                if !new.iter().any(|n| same(n, v)) && !removed.iter().any(|r| same(r, v)) {
                    removed.push(v.clone());
                }
            }
        }
        let send_order = (!self.ignore_deletions && !removed.is_empty())
            || (!self.ignore_changes && !same_list(old, new));
        (added, removed, send_order.then(|| new.to_vec()))
    }
}

/// The elements of a list merged on `merge_key`, with their keys.
fn keyed<'v>(
    list: &'v [Value],
    merge_key: &'static str,
    at: &At<'_>,
) -> Result<Vec<(&'v Value, &'v Map<String, Value>)>> {
    list.iter()
        .enumerate()
        .map(|(i, element)| {
            let path = || format!("{}[{i}]", at.path());
            let Value::Object(map) = element else {
                return Err(Error::NotAnObject {
                    path: path(),
                    key: merge_key,
                });
            };
            let id = map.get(merge_key).ok_or_else(|| Error::MissingMergeKey {
                path: path(),
                key: merge_key,
            })?;
            Ok((id, map))
        })
        .collect()
}

/// Adds `$retainKeys` (the new map's non-null keys, sorted) to the patch of a map with the
/// `retainKeys` strategy when the patch changes something or the old map has keys the new
/// one lacks.
fn retain_keys(patch: &mut Map<String, Value>, old: &Map<String, Value>, new: &Map<String, Value>) {
    let mut keys: Vec<&String> = new
        .iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, _)| k)
        .collect();
    if keys.is_empty() {
        return;
    }
    let old_has_more = old
        .iter()
        .any(|(k, v)| !v.is_null() && !new.contains_key(k));
    if patch.is_empty() && !old_has_more {
        return;
    }
    keys.sort();
    patch.insert(
        RETAIN_KEYS.to_owned(),
        Value::Array(keys.into_iter().map(|k| Value::from(k.as_str())).collect()),
    );
}

/// Merges the delta patch into the deletions patch. The two never set the same field to
/// different things (one only deletes, the other only sets), so maps merge recursively,
/// lists merged on a key merge element by element, and anything else is taken from the
/// delta.
fn merge_patches(
    mut base: Map<String, Value>,
    over: &Map<String, Value>,
    at: &At<'_>,
) -> Map<String, Value> {
    for (key, value) in over {
        let is_field = !key.starts_with('$');
        let merged = match (base.remove(key), value) {
            (Some(Value::Object(b)), Value::Object(o)) if is_field => {
                Value::Object(merge_patches(b, o, &at.child(key)))
            }
            (Some(Value::Array(b)), Value::Array(o)) if is_field => match at.list_strategy(key) {
                ListStrategy::MergeOnKey(merge_key) => {
                    let order = over
                        .get(&format!("{SET_ELEMENT_ORDER}{key}"))
                        .or_else(|| base.get(&format!("{SET_ELEMENT_ORDER}{key}")))
                        .and_then(Value::as_array)
                        .cloned()
                        .unwrap_or_default();
                    Value::Array(merge_patch_lists(b, o, merge_key, &order, &at.child(key)))
                }
                _ => value.clone(),
            },
            _ => value.clone(),
        };
        base.insert(key.clone(), merged);
    }
    base
}

/// Merges two patch lists of a list merged on `merge_key`; the result has the elements
/// that set something in `order` (the `$setElementOrder` list), then the delete directives.
fn merge_patch_lists(
    base: Vec<Value>,
    over: &[Value],
    merge_key: &str,
    order: &[Value],
    at: &At<'_>,
) -> Vec<Value> {
    let is_delete = |v: &Value| v.get(PATCH).and_then(Value::as_str) == Some("delete");
    let mut merged = base;
    for element in over {
        let id = element.get(merge_key);
        let found = merged.iter().position(|m| {
            !is_delete(m) && id.is_some_and(|id| m.get(merge_key).is_some_and(|k| same(k, id)))
        });
        match (found, element) {
            (Some(i), Value::Object(o)) => {
                if let Value::Object(b) = std::mem::take(&mut merged[i]) {
                    merged[i] = Value::Object(merge_patches(b, o, at));
                }
            }
            _ => merged.push(element.clone()),
        }
    }
    let position = |v: &Value| {
        v.get(merge_key).and_then(|id| {
            order
                .iter()
                .position(|o| o.get(merge_key).is_some_and(|k| same(k, id)))
        })
    };
    let (mut deletes, mut sets): (Vec<Value>, Vec<Value>) = merged.into_iter().partition(is_delete);
    sets.sort_by_key(|v| position(v).unwrap_or(usize::MAX));
    sets.append(&mut deletes);
    sets
}

/// JSON equality as Go's decoder sees it: numbers compare by value (`80` equals `80.0`).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            x == y || matches!((x.as_f64(), y.as_f64()), (Some(x), Some(y)) if x == y)
        }
        (Value::Array(x), Value::Array(y)) => same_list(x, y),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

fn same_list(a: &[Value], b: &[Value]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| same(x, y))
}

#[cfg(test)]
mod tests;
