//! ConfigMap and Secret rules: key syntax, total size, immutability, typed secrets.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};

use super::meta::{self, IMMUTABLE};
use super::{names, ErrorList, FieldError, Path};
use crate::resource::Resource;

/// The most bytes of data a ConfigMap or Secret may hold.
pub const MAX_SIZE: usize = 1024 * 1024;

const IMMUTABLE_WHEN_SET: &str = "field is immutable when `immutable` is set";

/// A ConfigMap.
pub(super) fn validate_config_map(
    resource: &Resource,
    cm: &ConfigMap,
    old: Option<&ConfigMap>,
) -> ErrorList {
    let mut errs = meta::validate_meta_for(resource, &cm.metadata, old.map(|o| &o.metadata));
    let data = cm.data.clone().unwrap_or_default();
    let binary = cm.binary_data.clone().unwrap_or_default();
    let mut size = 0;
    for (key, value) in &data {
        let path = Path::new("data").key(key);
        errs.extend(key_errors(key, &path));
        if binary.contains_key(key) {
            errs.push(FieldError::invalid(
                &path,
                key,
                "duplicate of key present in binaryData",
            ));
        }
        size += value.len();
    }
    for (key, value) in &binary {
        let path = Path::new("binaryData").key(key);
        errs.extend(key_errors(key, &path));
        if data.contains_key(key) {
            errs.push(FieldError::invalid(
                &path,
                key,
                "duplicate of key present in data",
            ));
        }
        size += value.0.len();
    }
    if size > MAX_SIZE {
        errs.push(FieldError::too_long("", MAX_SIZE));
    }
    if let Some(old) = old.filter(|o| o.immutable == Some(true)) {
        if cm.immutable != Some(true) {
            errs.push(FieldError::forbidden("immutable", IMMUTABLE_WHEN_SET));
        }
        if cm.data != old.data {
            errs.push(FieldError::forbidden("data", IMMUTABLE_WHEN_SET));
        }
        if cm.binary_data != old.binary_data {
            errs.push(FieldError::forbidden("binaryData", IMMUTABLE_WHEN_SET));
        }
    }
    errs
}

fn key_errors(key: &str, path: &Path) -> ErrorList {
    names::is_config_map_key(key)
        .into_iter()
        .map(|msg| FieldError::invalid(path, key, msg))
        .collect()
}

/// Keys a typed secret must carry.
fn required_keys(secret_type: &str) -> &'static [&'static str] {
    match secret_type {
        "kubernetes.io/dockercfg" => &[".dockercfg"],
        "kubernetes.io/dockerconfigjson" => &[".dockerconfigjson"],
        "kubernetes.io/tls" => &["tls.crt", "tls.key"],
        "kubernetes.io/ssh-auth" => &["ssh-privatekey"],
        _ => &[],
    }
}

/// A Secret (its data already base64-decoded by the type).
pub(super) fn validate_secret(
    resource: &Resource,
    secret: &Secret,
    old: Option<&Secret>,
) -> ErrorList {
    let mut errs = meta::validate_meta_for(resource, &secret.metadata, old.map(|o| &o.metadata));
    let data_path = Path::new("data");
    let empty = BTreeMap::new();
    let data = secret.data.as_ref().unwrap_or(&empty);
    let mut size = 0;
    for (key, value) in data {
        errs.extend(key_errors(key, &data_path.key(key)));
        size += value.0.len();
    }
    if size > MAX_SIZE {
        errs.push(FieldError::too_long(&data_path, MAX_SIZE));
    }
    let secret_type = secret.type_.as_deref().unwrap_or("");
    for key in required_keys(secret_type) {
        if !data.contains_key(*key) {
            errs.push(FieldError::required(data_path.key(key), ""));
        }
    }
    if secret_type == "kubernetes.io/service-account-token" {
        let annotations = secret.metadata.annotations.as_ref();
        if annotations
            .and_then(|a| a.get("kubernetes.io/service-account.name"))
            .is_none_or(String::is_empty)
        {
            errs.push(FieldError::required(
                "metadata.annotations[kubernetes.io/service-account.name]",
                "",
            ));
        }
    }
    if secret_type == "kubernetes.io/basic-auth"
        && !data.contains_key("username")
        && !data.contains_key("password")
    {
        errs.push(FieldError::required(data_path.key("username"), ""));
        errs.push(FieldError::required(data_path.key("password"), ""));
    }
    if let Some(old) = old {
        let old_type = old.type_.as_deref().unwrap_or("");
        if secret_type != old_type {
            errs.push(FieldError::invalid("type", secret_type, IMMUTABLE));
        }
        if old.immutable == Some(true) {
            if secret.immutable != Some(true) {
                errs.push(FieldError::forbidden("immutable", IMMUTABLE_WHEN_SET));
            }
            if secret.data != old.data {
                errs.push(FieldError::forbidden("data", IMMUTABLE_WHEN_SET));
            }
        }
    }
    errs
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    fn check(plural: &str, new: &Value, old: Option<&Value>) -> Vec<String> {
        let r = crate::resource::find("", "v1", plural).expect("core kind");
        super::super::validate(r, new, old)
            .into_iter()
            .map(|e| e.to_string())
            .collect()
    }

    #[test]
    fn config_map_rules() {
        let big = "x".repeat(super::MAX_SIZE + 1);
        let cm =
            |data: Value| json!({"metadata": {"name": "c", "namespace": "default"}, "data": data});
        let cases: Vec<(&str, Value, Vec<&str>)> = vec![
            ("valid", cm(json!({"app.properties": "a=b", "KEY_1": "v"})), vec![]),
            (
                "bad key",
                cm(json!({"a/b": "v"})),
                vec!["data[a/b]: Invalid value: \"a/b\": a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')"],
            ),
            ("dot key", cm(json!({".": "v"})), vec!["data[.]: Invalid value: \".\": must not be '.'"]),
            ("too big", cm(json!({"k": big})), vec![": Too long: must have at most 1048576 bytes"]),
        ];
        for (name, input, want) in cases {
            assert_eq!(check("configmaps", &input, None), want, "{name}");
        }
        let old = json!({"metadata": {"name": "c", "namespace": "default"}, "data": {"a": "1"}, "immutable": true});
        let changed = json!({"metadata": {"name": "c", "namespace": "default"}, "data": {"a": "2"}, "immutable": true});
        assert_eq!(
            check("configmaps", &changed, Some(&old)),
            vec!["data: Forbidden: field is immutable when `immutable` is set"]
        );
    }

    #[test]
    fn secret_rules() {
        let secret = |t: &str, data: Value| json!({"metadata": {"name": "s", "namespace": "default"}, "type": t, "data": data});
        let cases: Vec<(&str, Value, Vec<&str>)> = vec![
            ("valid", secret("Opaque", json!({"password": "c2VjcmV0"})), vec![]),
            (
                "bad key",
                secret("Opaque", json!({"a b": "eA=="})),
                vec!["data[a b]: Invalid value: \"a b\": a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')"],
            ),
            (
                "tls without key",
                secret("kubernetes.io/tls", json!({"tls.crt": "eA=="})),
                vec!["data[tls.key]: Required value"],
            ),
        ];
        for (name, input, want) in cases {
            assert_eq!(check("secrets", &input, None), want, "{name}");
        }
        let old = secret("Opaque", json!({}));
        let retyped = secret("kubernetes.io/ssh-auth", json!({"ssh-privatekey": "eA=="}));
        assert_eq!(
            check("secrets", &retyped, Some(&old)),
            vec!["type: Invalid value: \"kubernetes.io/ssh-auth\": field is immutable"]
        );
    }
}
