//! Strategic merge patch (`application/strategic-merge-patch+json`), applied the way the
//! Kubernetes apiserver applies it.
//!
//! A strategic merge patch is a merge patch that knows, per field, whether a list is replaced
//! or merged element by element ([`super::merge_keys`]), and that understands
//! these directives:
//!
//! - `"$patch": "replace"` in a map replaces the map with the rest of the patch; as a list
//!   element it replaces the whole list with the other elements.
//! - `"$patch": "delete"` in a map empties it (Kubernetes leaves `{}`); as an element of a
//!   list merged on a key it removes the live elements with that key.
//! - `"$patch": "merge"` asks for the default behaviour.
//! - `"$setElementOrder/<list>": [...]` gives the final order of a merged list. Patch
//!   elements must appear in it in the same relative order; live elements it does not name
//!   keep their place relative to the others.
//! - `"$retainKeys": [...]` drops every live key of the map that is not listed.
//! - `"$deleteFromPrimitiveList/<list>": [...]` removes values from a merged primitive list.
//!
//! Without `$setElementOrder`, merged lists follow Kubernetes' ordering: patch elements keep
//! the patch's order, live elements not in the patch keep their live order, and each live
//! element is placed before the first patch element that comes after it in the live list.
//! An element that is new to the list therefore lands before the live elements that follow
//! the patch elements already placed.
//!
//! Directives never survive into the result, also inside values that are new to the object.

use std::fmt;

use serde_json::{Map, Value};

use super::merge_keys::{ListStrategy, Schema};
use super::{Error, Result};

const PATCH: &str = "$patch";
const RETAIN_KEYS: &str = "$retainKeys";
const SET_ELEMENT_ORDER: &str = "$setElementOrder/";
const DELETE_FROM_PRIMITIVE_LIST: &str = "$deleteFromPrimitiveList/";

/// Applies `patch` to `target`, whose list fields follow `schema`.
pub(super) fn apply(schema: &'static Schema, target: &Value, patch: &Value) -> Result<Value> {
    let Value::Object(patch) = patch else {
        return Err(Error::NotAnObject {
            what: "a strategic merge patch",
        });
    };
    let Value::Object(target) = target else {
        return Err(Error::NotAnObject {
            what: "the object to patch",
        });
    };
    let root = FieldPath::default();
    if let Some(value) = patch.get(PATCH) {
        if Directive::parse(value, &root)? == Directive::Delete {
            return Err(Error::DeleteWholeObject);
        }
    }
    merge_map(target.clone(), patch, Some(schema), &root).map(Value::Object)
}

/// The value of a `$patch` key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Directive {
    Merge,
    Replace,
    Delete,
}

impl Directive {
    fn parse(value: &Value, path: &FieldPath) -> Result<Self> {
        match value.as_str() {
            Some("merge") => Ok(Self::Merge),
            Some("replace") => Ok(Self::Replace),
            Some("delete") => Ok(Self::Delete),
            _ => Err(Error::UnknownPatchValue {
                path: path.to_string(),
                value: value.to_string(),
            }),
        }
    }

    /// The `$patch` directive of a map, if it has one.
    fn of(map: &Map<String, Value>, path: &FieldPath) -> Result<Option<Self>> {
        map.get(PATCH).map(|v| Self::parse(v, path)).transpose()
    }
}

/// Where in the object the merge is, for error messages:
/// `spec.template.spec.containers[name="web"].env`.
#[derive(Debug, Clone, Default)]
struct FieldPath(String);

impl FieldPath {
    fn field(&self, name: &str) -> Self {
        if self.0.is_empty() {
            Self(name.to_owned())
        } else {
            Self(format!("{}.{name}", self.0))
        }
    }

    fn index(&self, index: usize) -> Self {
        Self(format!("{}[{index}]", self.0))
    }

    fn keyed(&self, key: &str, value: &Value) -> Self {
        Self(format!("{}[{key}={value}]", self.0))
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str("<root>")
        } else {
            f.write_str(&self.0)
        }
    }
}

/// Merges the patch map into `original` and returns the result.
fn merge_map(
    mut original: Map<String, Value>,
    patch: &Map<String, Value>,
    schema: Option<&'static Schema>,
    path: &FieldPath,
) -> Result<Map<String, Value>> {
    match Directive::of(patch, path)? {
        Some(Directive::Delete) => return Ok(Map::new()),
        Some(Directive::Replace) => {
            let rest: Map<String, Value> = patch
                .iter()
                .filter(|(key, _)| *key != PATCH)
                .map(|(key, value)| (key.clone(), value.clone()))
                .collect();
            return merge_map(Map::new(), &rest, schema, path);
        }
        Some(Directive::Merge) | None => {}
    }

    if let Some(keys) = patch.get(RETAIN_KEYS) {
        retain_keys(&mut original, patch, keys, path)?;
    }

    let mut ordered = Vec::new();
    for (key, order) in patch {
        if let Some(field) = key.strip_prefix(SET_ELEMENT_ORDER) {
            if set_element_order(&mut original, patch, field, order, schema, path)? {
                ordered.push(field);
            }
        }
    }

    for (key, value) in patch {
        if key.starts_with('$') {
            let known = key == PATCH
                || key == RETAIN_KEYS
                || key.starts_with(SET_ELEMENT_ORDER)
                || key.starts_with(DELETE_FROM_PRIMITIVE_LIST);
            if known {
                continue;
            }
            return Err(Error::UnknownDirective {
                path: path.to_string(),
                directive: key.clone(),
            });
        }
        if !ordered.contains(&key.as_str()) {
            merge_field(&mut original, key, value, schema, path)?;
        }
    }

    for (key, values) in patch {
        if let Some(field) = key.strip_prefix(DELETE_FROM_PRIMITIVE_LIST) {
            delete_from_primitive_list(&mut original, field, key, values, path)?;
        }
    }
    Ok(original)
}

/// Merges the patch value of one field into `original`.
fn merge_field(
    original: &mut Map<String, Value>,
    key: &str,
    patch: &Value,
    schema: Option<&'static Schema>,
    path: &FieldPath,
) -> Result<()> {
    if patch.is_null() {
        original.remove(key);
        return Ok(());
    }
    let path = path.field(key);
    let child = schema.and_then(|s| s.field(key));
    let strategy = strategy_of(schema, key);
    let live = original.get_mut(key).map(std::mem::take);
    let merged = match (live, patch) {
        (Some(Value::Object(live)), Value::Object(patch)) => {
            Value::Object(merge_map(live, patch, child, &path)?)
        }
        (Some(Value::Array(live)), Value::Array(patch)) => {
            Value::Array(merge_list(live, patch, strategy, child, &path)?)
        }
        (_, patch) => fresh(patch, strategy, child, &path)?,
    };
    set(original, key, merged);
    Ok(())
}

fn strategy_of(schema: Option<&'static Schema>, field: &str) -> ListStrategy {
    schema.map_or(ListStrategy::Replace, |s| s.list_strategy(field))
}

/// Sets `key` without moving it if it exists.
fn set(map: &mut Map<String, Value>, key: &str, value: Value) {
    match map.get_mut(key) {
        Some(slot) => *slot = value,
        None => {
            map.insert(key.to_owned(), value);
        }
    }
}

/// A patch value with no live counterpart: merged into nothing, so that its directives
/// are applied and removed.
fn fresh(
    patch: &Value,
    strategy: ListStrategy,
    schema: Option<&'static Schema>,
    path: &FieldPath,
) -> Result<Value> {
    Ok(match patch {
        Value::Object(patch) => Value::Object(merge_map(Map::new(), patch, schema, path)?),
        Value::Array(patch) => Value::Array(merge_list(Vec::new(), patch, strategy, schema, path)?),
        scalar => scalar.clone(),
    })
}

/// Merges a patch list into a live list.
fn merge_list(
    original: Vec<Value>,
    patch: &[Value],
    strategy: ListStrategy,
    schema: Option<&'static Schema>,
    path: &FieldPath,
) -> Result<Vec<Value>> {
    match strategy {
        ListStrategy::Replace => replace_list(patch, schema, path),
        ListStrategy::MergePrimitives => merge_primitives(original, patch, path),
        ListStrategy::MergeOnKey(key) => merge_on_key(original, patch, key, schema, path),
    }
}

/// A list without a merge strategy: the patch's elements, cleaned of directives.
fn replace_list(
    patch: &[Value],
    schema: Option<&'static Schema>,
    path: &FieldPath,
) -> Result<Vec<Value>> {
    let mut out = Vec::with_capacity(patch.len());
    for (i, element) in patch.iter().enumerate() {
        let path = path.index(i);
        if let Value::Object(map) = element {
            match Directive::of(map, &path)? {
                Some(Directive::Delete) => {
                    return Err(Error::DeleteWithoutMergeKey {
                        path: path.to_string(),
                    })
                }
                // The list is replaced anyway.
                Some(Directive::Replace) if map.len() == 1 => continue,
                Some(Directive::Merge) if map.len() == 1 => continue,
                _ => {}
            }
        }
        out.push(fresh(element, ListStrategy::Replace, schema, &path)?);
    }
    Ok(out)
}

/// A primitive list with `patchStrategy: merge`: the union, ordered as Kubernetes does.
fn merge_primitives(original: Vec<Value>, patch: &[Value], path: &FieldPath) -> Result<Vec<Value>> {
    let mut items = Vec::with_capacity(patch.len());
    let mut replace = false;
    for (i, element) in patch.iter().enumerate() {
        match element {
            Value::Object(map) => match Directive::of(map, &path.index(i))? {
                Some(Directive::Replace) if map.len() == 1 => replace = true,
                Some(Directive::Merge) if map.len() == 1 => {}
                _ => {
                    return Err(Error::NotPrimitive {
                        path: path.index(i).to_string(),
                    })
                }
            },
            Value::Array(_) => {
                return Err(Error::NotPrimitive {
                    path: path.index(i).to_string(),
                })
            }
            value => items.push(value.clone()),
        }
    }
    if replace {
        return Ok(items);
    }

    let mut merged: Vec<Value> = Vec::with_capacity(original.len() + items.len());
    for value in original.iter().chain(&items) {
        if !merged.iter().any(|m| same(m, value)) {
            merged.push(value.clone());
        }
    }
    let identity = |v: &Value| Some(v.clone());
    let (from_patch, live_only) = partition_by(merged, &items, identity);
    let from_patch = in_order_of(from_patch, &items, identity);
    Ok(interleave(live_only, from_patch, &original, identity))
}

/// A list of objects merged on `key`.
fn merge_on_key(
    mut original: Vec<Value>,
    patch: &[Value],
    key: &'static str,
    schema: Option<&'static Schema>,
    path: &FieldPath,
) -> Result<Vec<Value>> {
    let not_an_object = |path: FieldPath| Error::NotAnObjectInMergeList {
        path: path.to_string(),
        key,
    };
    let mut items: Vec<&Map<String, Value>> = Vec::with_capacity(patch.len());
    let mut replace = false;
    for (i, element) in patch.iter().enumerate() {
        let Value::Object(map) = element else {
            return Err(not_an_object(path.index(i)));
        };
        match Directive::of(map, &path.index(i))? {
            None => items.push(map),
            Some(Directive::Merge) if map.len() == 1 => {}
            Some(Directive::Merge) => items.push(map),
            Some(Directive::Replace) => replace = true,
            Some(Directive::Delete) => {
                let Some(value) = map.get(key) else {
                    return Err(Error::MissingMergeKey {
                        path: path.index(i).to_string(),
                        key,
                    });
                };
                original.retain(|live| live.get(key).is_none_or(|v| !same(v, value)));
            }
        }
    }
    if replace {
        return items
            .into_iter()
            .map(|item| Ok(Value::Object(merge_map(Map::new(), item, schema, path)?)))
            .collect();
    }

    // Live positions are taken after deletions, before the patch's elements are added.
    let live = original.clone();
    let mut merged = original;
    let mut patch_keys = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let Some(value) = item.get(key) else {
            return Err(Error::MissingMergeKey {
                path: path.index(i).to_string(),
                key,
            });
        };
        patch_keys.push(value);
        let element_path = path.keyed(key, value);
        let mut found = None;
        for (j, element) in merged.iter().enumerate() {
            let Value::Object(element) = element else {
                return Err(not_an_object(path.index(j)));
            };
            if element.get(key).is_some_and(|v| same(v, value)) {
                found = Some(j);
                break;
            }
        }
        match found {
            Some(j) => {
                if let Value::Object(element) = &mut merged[j] {
                    let live = std::mem::take(element);
                    *element = merge_map(live, item, schema, &element_path)?;
                }
            }
            None => merged.push(Value::Object(merge_map(
                Map::new(),
                item,
                schema,
                &element_path,
            )?)),
        }
    }

    let patch_keys: Vec<Value> = patch_keys.into_iter().cloned().collect();
    let identity = |v: &Value| v.get(key).cloned();
    let (from_patch, live_only) = partition_by(merged, &patch_keys, identity);
    let from_patch = in_order_of(from_patch, &patch_keys, identity);
    Ok(interleave(live_only, from_patch, &live, identity))
}

/// Applies `$setElementOrder/<field>`: merges the field's list (if the patch has one) and
/// puts it in the given order. Returns whether the field has been merged here.
fn set_element_order(
    original: &mut Map<String, Value>,
    patch: &Map<String, Value>,
    field: &str,
    order: &Value,
    schema: Option<&'static Schema>,
    path: &FieldPath,
) -> Result<bool> {
    let directive = || format!("{SET_ELEMENT_ORDER}{field}");
    let field_path = path.field(field);
    if field.is_empty() {
        return Err(Error::UnknownDirective {
            path: path.to_string(),
            directive: directive(),
        });
    }
    let Value::Array(order) = order else {
        return Err(Error::InvalidDirectiveValue {
            path: path.to_string(),
            directive: directive(),
            expected: "a list",
        });
    };
    let strategy = strategy_of(schema, field);
    let key = match strategy {
        // A replaced list already has the patch's order.
        ListStrategy::Replace => return Ok(false),
        ListStrategy::MergePrimitives => None,
        ListStrategy::MergeOnKey(key) => Some(key),
    };
    let identity = |v: &'_ Value| -> Option<Value> {
        match key {
            Some(key) => v.get(key).cloned(),
            None => Some(v.clone()),
        }
    };
    let mut wanted = Vec::with_capacity(order.len());
    for (i, element) in order.iter().enumerate() {
        let Some(id) = identity(element) else {
            return Err(Error::MissingMergeKey {
                path: path.field(&directive()).index(i).to_string(),
                key: key.unwrap_or_default(),
            });
        };
        wanted.push(id);
    }

    let patch_list = match patch.get(field) {
        None => None,
        Some(Value::Null) => return Ok(false),
        Some(Value::Array(list)) => Some(list),
        Some(_) => {
            return Err(Error::InvalidDirectiveValue {
                path: field_path.to_string(),
                directive: directive(),
                expected: "the field it orders to be a list",
            })
        }
    };

    if let Some(list) = patch_list {
        // Elements of the patch (other than directives) must be in the order list, in
        // the same relative order.
        let mut wanted_iter = wanted.iter();
        for element in list {
            let is_directive = element.as_object().is_some_and(|m| m.contains_key(PATCH));
            if is_directive {
                continue;
            }
            // An element without its merge key is reported by the merge itself.
            let Some(id) = identity(element) else {
                continue;
            };
            if !wanted_iter.any(|w| same(w, &id)) {
                return Err(Error::OrderMismatch {
                    path: field_path.to_string(),
                    directive: directive(),
                });
            }
        }
    }

    let live = match original.get(field) {
        Some(Value::Array(live)) => Some(live.clone()),
        _ => None,
    };
    let child = schema.and_then(|s| s.field(field));
    let merged = match (&live, patch_list) {
        (Some(live), Some(list)) => merge_list(live.clone(), list, strategy, child, &field_path)?,
        (Some(live), None) => live.clone(),
        (None, Some(list)) => merge_list(Vec::new(), list, strategy, child, &field_path)?,
        (None, None) => return Ok(true),
    };
    let (from_patch, live_only) = partition_by(merged, &wanted, identity);
    let from_patch = in_order_of(from_patch, &wanted, identity);
    let live = live.unwrap_or_default();
    let ordered = interleave(live_only, from_patch, &live, identity);
    set(original, field, Value::Array(ordered));
    Ok(true)
}

/// Applies `$retainKeys`: keeps only the listed keys of the live map.
fn retain_keys(
    original: &mut Map<String, Value>,
    patch: &Map<String, Value>,
    keys: &Value,
    path: &FieldPath,
) -> Result<()> {
    let invalid = || Error::InvalidDirectiveValue {
        path: path.to_string(),
        directive: RETAIN_KEYS.to_owned(),
        expected: "a list of field names",
    };
    let Value::Array(keys) = keys else {
        return Err(invalid());
    };
    let keys: Vec<&str> = keys
        .iter()
        .map(|k| k.as_str().ok_or_else(invalid))
        .collect::<Result<_>>()?;
    for (key, value) in patch {
        if !key.starts_with('$') && !value.is_null() && !keys.contains(&key.as_str()) {
            return Err(Error::NotInRetainKeys {
                path: path.to_string(),
                field: key.clone(),
            });
        }
    }
    original.retain(|key, _| keys.contains(&key.as_str()));
    Ok(())
}

/// Applies `$deleteFromPrimitiveList/<field>`.
fn delete_from_primitive_list(
    original: &mut Map<String, Value>,
    field: &str,
    directive: &str,
    values: &Value,
    path: &FieldPath,
) -> Result<()> {
    if field.is_empty() {
        return Err(Error::UnknownDirective {
            path: path.to_string(),
            directive: directive.to_owned(),
        });
    }
    let Value::Array(values) = values else {
        return Err(Error::InvalidDirectiveValue {
            path: path.to_string(),
            directive: directive.to_owned(),
            expected: "a list",
        });
    };
    if let Some(Value::Array(list)) = original.get_mut(field) {
        list.retain(|v| !values.iter().any(|d| same(v, d)));
    }
    Ok(())
}

/// Splits `merged` into the elements named in `names` and the others, by `identity`.
fn partition_by<I>(merged: Vec<Value>, names: &[Value], identity: I) -> (Vec<Value>, Vec<Value>)
where
    I: Fn(&Value) -> Option<Value>,
{
    merged
        .into_iter()
        .partition(|v| identity(v).is_some_and(|id| names.iter().any(|n| same(n, &id))))
}

/// Sorts `elements` (stably) by where their identity first appears in `order`.
fn in_order_of<I>(mut elements: Vec<Value>, order: &[Value], identity: I) -> Vec<Value>
where
    I: Fn(&Value) -> Option<Value>,
{
    elements.sort_by_key(|v| identity(v).and_then(|id| order.iter().position(|o| same(o, &id))));
    elements
}

/// Kubernetes' ordering of a merged list: each live-only element goes before the next
/// element from the patch if it came before that element in the live list; otherwise
/// the patch element goes first. Both inputs keep their relative order.
fn interleave<I>(
    live_only: Vec<Value>,
    from_patch: Vec<Value>,
    live: &[Value],
    identity: I,
) -> Vec<Value>
where
    I: Fn(&Value) -> Option<Value>,
{
    let position = |v: &Value| {
        let id = identity(v)?;
        live.iter()
            .position(|l| identity(l).is_some_and(|lid| same(&lid, &id)))
    };
    let mut out = Vec::with_capacity(live_only.len() + from_patch.len());
    let mut live_only = live_only.into_iter().peekable();
    let mut from_patch = from_patch.into_iter().peekable();
    loop {
        let live_first = match (live_only.peek(), from_patch.peek()) {
            (None, None) => break,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (Some(l), Some(p)) => matches!((position(l), position(p)), (Some(a), Some(b)) if a < b),
        };
        let next = if live_first {
            live_only.next()
        } else {
            from_patch.next()
        };
        out.extend(next);
    }
    out
}

/// JSON equality as Go's decoder sees it: numbers compare by value (`80` equals `80.0`).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            x == y || matches!((x.as_f64(), y.as_f64()), (Some(x), Some(y)) if x == y)
        }
        _ => a == b,
    }
}
