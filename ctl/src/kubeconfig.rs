//! Kubeconfig files: writing one for a component, and merging a cluster's context into a
//! user's kubeconfig (and removing it again) the way kind does.
//!
//! Files are handled as [`serde_yaml::Value`], so every other cluster, user, context and
//! any field this module does not know survive a merge untouched.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine;
use serde_yaml::{Mapping, Value};

/// Why a kubeconfig could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to read kubeconfig {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("failed to parse kubeconfig {path}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_yaml::Error,
    },
    #[error("kubeconfig {path} is invalid: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("failed to serialize kubeconfig")]
    Serialize(#[source] serde_yaml::Error),
    #[error("failed to write kubeconfig {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The result type of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The kubeconfig path a launcher should merge into: the first path of `$KUBECONFIG`
/// when set and non-empty, else `$HOME/.kube/config`. `None` without either variable.
pub fn default_path() -> Option<PathBuf> {
    if let Some(first) = std::env::var_os("KUBECONFIG")
        .and_then(|v| std::env::split_paths(&v).find(|p| !p.as_os_str().is_empty()))
    {
        return Some(first);
    }
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".kube").join("config"))
}

/// Writes a fresh kubeconfig at `path` holding one cluster, user and context, all named
/// `name`, with `name` as the current context. The file is created with mode 0600.
///
/// # Errors
/// When the file cannot be written.
pub fn write_single(
    path: &Path,
    name: &str,
    server: &str,
    ca_pem: &str,
    token: &str,
) -> Result<()> {
    let mut config = empty_config();
    upsert_entries(&mut config, name, server, ca_pem, token, path)?;
    write(path, &config)
}

/// Merges a cluster, user and context named `name` into the kubeconfig at `path` and
/// makes it the current context; creates the file (and its directory) when absent.
///
/// Entries of the same name are replaced in place; everything else is kept as it was.
///
/// # Errors
/// When the file cannot be read, parsed or written, or is not a kubeconfig.
pub fn merge_into(path: &Path, name: &str, server: &str, ca_pem: &str, token: &str) -> Result<()> {
    let mut config = read(path)?.unwrap_or_else(empty_config);
    upsert_entries(&mut config, name, server, ca_pem, token, path)?;
    write(path, &config)
}

/// Removes the cluster, user and context named `name` from the kubeconfig at `path`,
/// and unsets `current-context` if it pointed there. Returns whether anything was
/// removed; a file without them (or a missing file) is left as it is.
///
/// # Errors
/// When the file cannot be read, parsed or written, or is not a kubeconfig.
pub fn remove_from(path: &Path, name: &str) -> Result<bool> {
    let Some(mut config) = read(path)? else {
        return Ok(false);
    };
    let map = as_mapping(&mut config, path)?;
    let mut changed = false;
    for list in ["clusters", "users", "contexts"] {
        if let Some(Value::Sequence(entries)) = map.get_mut(list) {
            let before = entries.len();
            entries.retain(|entry| entry_name(entry) != Some(name));
            changed |= entries.len() != before;
        }
    }
    if map.get("current-context").and_then(Value::as_str) == Some(name) {
        map.insert("current-context".into(), Value::String(String::new()));
        changed = true;
    }
    if changed {
        write(path, &config)?;
    }
    Ok(changed)
}

/// The name of the current context of the kubeconfig at `path`, if any.
///
/// # Errors
/// When the file cannot be read or parsed.
pub fn current_context(path: &Path) -> Result<Option<String>> {
    Ok(read(path)?.and_then(|config| {
        config
            .get("current-context")
            .and_then(Value::as_str)
            .filter(|c| !c.is_empty())
            .map(str::to_string)
    }))
}

fn empty_config() -> Value {
    let mut map = Mapping::new();
    map.insert("apiVersion".into(), "v1".into());
    map.insert("kind".into(), "Config".into());
    map.insert("preferences".into(), Value::Mapping(Mapping::new()));
    map.insert("clusters".into(), Value::Sequence(Vec::new()));
    map.insert("users".into(), Value::Sequence(Vec::new()));
    map.insert("contexts".into(), Value::Sequence(Vec::new()));
    map.insert("current-context".into(), Value::String(String::new()));
    Value::Mapping(map)
}

/// Inserts or replaces the three entries named `name` and sets the current context.
fn upsert_entries(
    config: &mut Value,
    name: &str,
    server: &str,
    ca_pem: &str,
    token: &str,
    path: &Path,
) -> Result<()> {
    let ca_data = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    let cluster = entry(
        name,
        "cluster",
        [
            ("server", server.to_string()),
            ("certificate-authority-data", ca_data),
        ],
    );
    let user = entry(name, "user", [("token", token.to_string())]);
    let context = entry(
        name,
        "context",
        [("cluster", name.to_string()), ("user", name.to_string())],
    );

    let map = as_mapping(config, path)?;
    for (list, new) in [
        ("clusters", cluster),
        ("users", user),
        ("contexts", context),
    ] {
        let entries = match map
            .entry(list.into())
            .or_insert(Value::Sequence(Vec::new()))
        {
            // kubectl writes `clusters: null` for an empty list.
            slot @ Value::Null => {
                *slot = Value::Sequence(Vec::new());
                slot.as_sequence_mut().expect("just set to a sequence")
            }
            Value::Sequence(entries) => entries,
            _ => {
                return Err(Error::Invalid {
                    path: path.to_path_buf(),
                    reason: format!("{list} is not a list"),
                })
            }
        };
        match entries.iter_mut().find(|e| entry_name(e) == Some(name)) {
            Some(existing) => *existing = new,
            None => entries.push(new),
        }
    }
    map.insert("current-context".into(), Value::String(name.to_string()));
    Ok(())
}

/// `{name: <name>, <kind>: {fields…}}`, the shape of every kubeconfig list entry.
fn entry<const N: usize>(name: &str, kind: &str, fields: [(&str, String); N]) -> Value {
    let mut inner = Mapping::new();
    for (key, value) in fields {
        inner.insert(key.into(), Value::String(value));
    }
    let mut outer = Mapping::new();
    outer.insert("name".into(), Value::String(name.to_string()));
    outer.insert(kind.into(), Value::Mapping(inner));
    Value::Mapping(outer)
}

fn entry_name(entry: &Value) -> Option<&str> {
    entry.get("name").and_then(Value::as_str)
}

fn as_mapping<'a>(config: &'a mut Value, path: &Path) -> Result<&'a mut Mapping> {
    config.as_mapping_mut().ok_or_else(|| Error::Invalid {
        path: path.to_path_buf(),
        reason: "top level is not a mapping".to_string(),
    })
}

/// Reads and parses a kubeconfig; `None` when the file does not exist or is empty.
fn read(path: &Path) -> Result<Option<Value>> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(Error::Read {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let value: Value = serde_yaml::from_str(&text).map_err(|source| Error::Parse {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(match value {
        Value::Null => None,
        value => Some(value),
    })
}

/// Writes `config` to `path` (mode 0600) through a temporary file and a rename, so a
/// reader never sees half a kubeconfig.
fn write(path: &Path, config: &Value) -> Result<()> {
    let text = serde_yaml::to_string(config).map_err(Error::Serialize)?;
    let write_err = |source| Error::Write {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(write_err)?;
    }
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".rkube-tmp");
    let tmp = PathBuf::from(tmp_name);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(write_err)?;
    file.set_permissions(fs::Permissions::from_mode(0o600))
        .map_err(write_err)?;
    file.write_all(text.as_bytes()).map_err(write_err)?;
    file.sync_all().map_err(write_err)?;
    fs::rename(&tmp, path).map_err(write_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CA: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

    fn load(path: &Path) -> Value {
        serde_yaml::from_str(&fs::read_to_string(path).expect("read")).expect("parse")
    }

    fn names(config: &Value, list: &str) -> Vec<String> {
        config[list]
            .as_sequence()
            .map(|s| {
                s.iter()
                    .filter_map(entry_name)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    }

    const OTHER: &str = r#"apiVersion: v1
kind: Config
clusters:
- name: kind-dev
  cluster:
    server: https://127.0.0.1:40000
    certificate-authority-data: AAAA
    extensions:
    - name: keep-me
      extension: {x: 1}
- name: rkube
  cluster:
    server: https://old:1
contexts:
- name: kind-dev
  context: {cluster: kind-dev, user: kind-dev, namespace: work}
users:
- name: kind-dev
  user: {client-certificate-data: BBBB}
current-context: kind-dev
preferences: {colors: true}
x-unknown-top-level: kept
"#;

    #[test]
    fn merge_into_missing_file_creates_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("sub/.kube/config");
        merge_into(&path, "rkube", "https://127.0.0.1:6443", CA, "tok").expect("merge");

        let config = load(&path);
        assert_eq!(config["current-context"].as_str(), Some("rkube"));
        assert_eq!(
            config["clusters"][0]["cluster"]["server"].as_str(),
            Some("https://127.0.0.1:6443")
        );
        let ca = config["clusters"][0]["cluster"]["certificate-authority-data"]
            .as_str()
            .expect("ca data");
        let ca = base64::engine::general_purpose::STANDARD
            .decode(ca)
            .expect("base64");
        assert_eq!(ca, CA.as_bytes());
        assert_eq!(config["users"][0]["user"]["token"].as_str(), Some("tok"));
        assert_eq!(
            config["contexts"][0]["context"]["cluster"].as_str(),
            Some("rkube")
        );
        assert_eq!(
            config["contexts"][0]["context"]["user"].as_str(),
            Some("rkube")
        );
        let mode = fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(
            current_context(&path).expect("read"),
            Some("rkube".to_string())
        );
    }

    #[test]
    fn merge_keeps_other_entries_and_unknown_fields() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("config");
        fs::write(&path, OTHER).expect("write");
        merge_into(&path, "rkube", "https://127.0.0.1:6443", CA, "tok").expect("merge");

        let before: Value = serde_yaml::from_str(OTHER).expect("parse");
        let after = load(&path);
        assert_eq!(after["current-context"].as_str(), Some("rkube"));
        // The stale `rkube` cluster is replaced in place, not duplicated.
        assert_eq!(names(&after, "clusters"), ["kind-dev", "rkube"]);
        assert_eq!(
            after["clusters"][1]["cluster"]["server"].as_str(),
            Some("https://127.0.0.1:6443")
        );
        assert_eq!(names(&after, "contexts"), ["kind-dev", "rkube"]);
        assert_eq!(names(&after, "users"), ["kind-dev", "rkube"]);
        assert_eq!(after["clusters"][0], before["clusters"][0]);
        assert_eq!(after["contexts"][0], before["contexts"][0]);
        assert_eq!(after["users"][0], before["users"][0]);
        assert_eq!(after["preferences"], before["preferences"]);
        assert_eq!(after["x-unknown-top-level"].as_str(), Some("kept"));
    }

    #[test]
    fn merge_twice_is_idempotent() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("config");
        fs::write(&path, OTHER).expect("write");
        merge_into(&path, "rkube", "https://127.0.0.1:6443", CA, "tok").expect("merge");
        let once = fs::read_to_string(&path).expect("read");
        merge_into(&path, "rkube", "https://127.0.0.1:6443", CA, "tok").expect("merge again");
        assert_eq!(fs::read_to_string(&path).expect("read"), once);
    }

    #[test]
    fn remove_restores_the_other_entries() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("config");
        fs::write(&path, OTHER).expect("write");
        merge_into(&path, "rkube", "https://127.0.0.1:6443", CA, "tok").expect("merge");
        assert!(remove_from(&path, "rkube").expect("remove"));

        let after = load(&path);
        assert_eq!(names(&after, "clusters"), ["kind-dev"]);
        assert_eq!(names(&after, "contexts"), ["kind-dev"]);
        assert_eq!(names(&after, "users"), ["kind-dev"]);
        assert_eq!(current_context(&path).expect("read"), None);
        assert_eq!(after["x-unknown-top-level"].as_str(), Some("kept"));

        // Removing when the current context is another one leaves it alone.
        merge_into(&path, "other", "https://h:1", CA, "t").expect("merge other");
        let before = fs::read_to_string(&path).expect("read");
        assert!(!remove_from(&path, "rkube").expect("remove absent"));
        assert_eq!(
            fs::read_to_string(&path).expect("read"),
            before,
            "untouched"
        );
        assert_eq!(
            current_context(&path).expect("read"),
            Some("other".to_string())
        );

        // A missing file stays missing.
        let missing = dir.path().join("missing");
        assert!(!remove_from(&missing, "rkube").expect("remove from missing"));
        assert!(!missing.exists());
    }

    #[test]
    fn rejects_what_is_not_a_kubeconfig() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("config");
        fs::write(&path, "- a list\n").expect("write");
        assert!(matches!(
            merge_into(&path, "rkube", "https://h:1", CA, "t"),
            Err(Error::Invalid { .. })
        ));
        fs::write(&path, "clusters: {a: 1}\n").expect("write");
        assert!(matches!(
            merge_into(&path, "rkube", "https://h:1", CA, "t"),
            Err(Error::Invalid { .. })
        ));
        fs::write(&path, "clusters: [unclosed\n").expect("write");
        assert!(matches!(
            merge_into(&path, "rkube", "https://h:1", CA, "t"),
            Err(Error::Parse { .. })
        ));
    }

    #[test]
    fn write_single_holds_one_context() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("admin.kubeconfig");
        write_single(&path, "rkube", "https://127.0.0.1:6443", CA, "tok").expect("write");
        let config = load(&path);
        assert_eq!(names(&config, "contexts"), ["rkube"]);
        assert_eq!(config["kind"].as_str(), Some("Config"));
    }
}
