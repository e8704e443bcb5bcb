//! Kubeconfig loading for `rkubectl` the way kubectl does it: `--kubeconfig`, else every
//! file of `$KUBECONFIG` (colon-separated) merged, else `~/.kube/config`; then the
//! context from `--context` or `current-context`. Also the `config` verb.
//!
//! Merging follows kubectl: for each named cluster, user and context, and for
//! `current-context`, the first file that sets it wins.

use std::path::{Path, PathBuf};

use base64::Engine;
use serde_json::{Map, Value};

/// Why a kubeconfig could not be loaded or used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to read kubeconfig {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to parse kubeconfig {path}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_yaml::Error,
    },
    #[error("failed to write kubeconfig {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no configuration has been provided, try setting KUBECONFIG")]
    Empty,
    #[error("context was not found for specified context: {0}")]
    NoContext(String),
    #[error("current-context is not set")]
    NoCurrentContext,
    #[error("cluster {0:?} of the context is not in the kubeconfig")]
    NoCluster(String),
    #[error("invalid base64 in {0}")]
    Base64(&'static str),
}

/// The result type of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The kubeconfig files in the order they are merged.
pub fn paths(explicit: Option<&Path>) -> Vec<PathBuf> {
    if let Some(p) = explicit {
        return vec![p.to_path_buf()];
    }
    if let Some(v) = std::env::var_os("KUBECONFIG").filter(|v| !v.is_empty()) {
        return std::env::split_paths(&v)
            .filter(|p| !p.as_os_str().is_empty())
            .collect();
    }
    std::env::var_os("HOME")
        .map(|home| vec![PathBuf::from(home).join(".kube").join("config")])
        .unwrap_or_default()
}

/// A merged kubeconfig, as JSON, with the files it came from.
#[derive(Debug, Clone)]
pub struct Kubeconfig {
    /// The merged document (`clusters`, `users`, `contexts`, `current-context`).
    pub merged: Value,
    /// The files, in merge order (missing ones included).
    pub files: Vec<PathBuf>,
}

/// Everything needed to talk to one cluster.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Resolved {
    pub context: String,
    pub server: String,
    pub namespace: Option<String>,
    pub ca_pem: Option<Vec<u8>>,
    pub insecure: bool,
    pub token: Option<String>,
    pub client_cert_pem: Option<Vec<u8>>,
    pub client_key_pem: Option<Vec<u8>>,
}

impl Kubeconfig {
    /// Reads and merges `files`; missing files are skipped.
    ///
    /// # Errors
    /// When a file exists but cannot be read or parsed.
    pub fn load(files: Vec<PathBuf>) -> Result<Kubeconfig> {
        let mut docs = Vec::new();
        for path in &files {
            let text = match std::fs::read_to_string(path) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(source) => {
                    return Err(Error::Read {
                        path: path.clone(),
                        source,
                    })
                }
            };
            let doc: Value = serde_yaml::from_str(&text).map_err(|source| Error::Parse {
                path: path.clone(),
                source,
            })?;
            docs.push(doc);
        }
        Ok(Kubeconfig {
            merged: merge(&docs),
            files,
        })
    }

    /// The current context's name (`None` when unset or empty).
    pub fn current_context(&self) -> Option<&str> {
        self.merged["current-context"]
            .as_str()
            .filter(|s| !s.is_empty())
    }

    fn named<'a>(&'a self, list: &str, name: &str) -> Option<&'a Value> {
        self.merged[list]
            .as_array()?
            .iter()
            .find(|e| e["name"].as_str() == Some(name))
    }

    /// Resolves `context` (or the current context) to a server and credentials.
    ///
    /// # Errors
    /// When the context or its cluster is missing, or embedded data is not base64.
    pub fn resolve(&self, context: Option<&str>) -> Result<Resolved> {
        if self.merged["contexts"]
            .as_array()
            .is_none_or(|a| a.is_empty())
            && context.is_none()
        {
            return Err(Error::Empty);
        }
        let name = match context {
            Some(c) => c.to_string(),
            None => self
                .current_context()
                .ok_or(Error::NoCurrentContext)?
                .to_string(),
        };
        let ctx = self
            .named("contexts", &name)
            .ok_or_else(|| Error::NoContext(name.clone()))?;
        let ctx = &ctx["context"];
        let cluster_name = ctx["cluster"].as_str().unwrap_or_default();
        let cluster = &self
            .named("clusters", cluster_name)
            .ok_or_else(|| Error::NoCluster(cluster_name.to_string()))?["cluster"];
        let user = ctx["user"]
            .as_str()
            .and_then(|u| self.named("users", u))
            .map(|u| u["user"].clone())
            .unwrap_or(Value::Null);
        Ok(Resolved {
            context: name,
            server: cluster["server"].as_str().unwrap_or_default().to_string(),
            namespace: ctx["namespace"]
                .as_str()
                .filter(|s| !s.is_empty())
                .map(str::to_string),
            ca_pem: data_or_file(
                cluster,
                "certificate-authority-data",
                "certificate-authority",
            )?,
            insecure: cluster["insecure-skip-tls-verify"].as_bool() == Some(true),
            token: match user["token"].as_str() {
                Some(t) => Some(t.to_string()),
                None => match user["tokenFile"].as_str() {
                    Some(f) => Some(
                        std::fs::read_to_string(f)
                            .map_err(|source| Error::Read {
                                path: f.into(),
                                source,
                            })?
                            .trim()
                            .to_string(),
                    ),
                    None => None,
                },
            },
            client_cert_pem: data_or_file(&user, "client-certificate-data", "client-certificate")?,
            client_key_pem: data_or_file(&user, "client-key-data", "client-key")?,
        })
    }

    /// Sets `current-context` to `name` in the first file that sets a current context
    /// (else the first file), as kubectl does.
    ///
    /// # Errors
    /// When `name` is not a context, or the file cannot be read or written.
    pub fn use_context(&self, name: &str) -> Result<()> {
        if self.named("contexts", name).is_none() {
            return Err(Error::NoContext(name.to_string()));
        }
        let mut target = None;
        for path in &self.files {
            if let Ok(text) = std::fs::read_to_string(path) {
                let doc: Value = serde_yaml::from_str(&text).unwrap_or(Value::Null);
                if doc["current-context"]
                    .as_str()
                    .is_some_and(|s| !s.is_empty())
                {
                    target = Some(path.clone());
                    break;
                }
            }
        }
        let Some(path) = target.or_else(|| self.files.first().cloned()) else {
            return Err(Error::Empty);
        };
        let text = std::fs::read_to_string(&path).map_err(|source| Error::Read {
            path: path.clone(),
            source,
        })?;
        let mut doc: serde_yaml::Value =
            serde_yaml::from_str(&text).map_err(|source| Error::Parse {
                path: path.clone(),
                source,
            })?;
        if let serde_yaml::Value::Mapping(m) = &mut doc {
            m.insert("current-context".into(), name.into());
        }
        let out = serde_yaml::to_string(&doc).map_err(|source| Error::Parse {
            path: path.clone(),
            source,
        })?;
        std::fs::write(&path, out).map_err(|source| Error::Write { path, source })
    }
}

fn data_or_file(section: &Value, data: &str, file: &'static str) -> Result<Option<Vec<u8>>> {
    if let Some(d) = section[data].as_str() {
        return base64::engine::general_purpose::STANDARD
            .decode(d.trim())
            .map(Some)
            .map_err(|_| Error::Base64(file));
    }
    match section[file].as_str() {
        Some(f) => std::fs::read(f).map(Some).map_err(|source| Error::Read {
            path: f.into(),
            source,
        }),
        None => Ok(None),
    }
}

/// Merges kubeconfig documents: the first occurrence of each named entry, and the
/// first non-empty `current-context`, win.
pub fn merge(docs: &[Value]) -> Value {
    let mut out = Map::new();
    out.insert("apiVersion".into(), "v1".into());
    out.insert("kind".into(), "Config".into());
    let mut current = None;
    for list in ["clusters", "users", "contexts"] {
        let mut merged: Vec<Value> = Vec::new();
        for doc in docs {
            for entry in doc[list].as_array().into_iter().flatten() {
                let name = entry["name"].as_str();
                if !merged.iter().any(|e| e["name"].as_str() == name) {
                    merged.push(entry.clone());
                }
            }
        }
        out.insert(list.into(), Value::Array(merged));
    }
    for doc in docs {
        if let Some(c) = doc["current-context"].as_str().filter(|s| !s.is_empty()) {
            current = Some(c.to_string());
            break;
        }
    }
    out.insert(
        "current-context".into(),
        Value::String(current.unwrap_or_default()),
    );
    Value::Object(out)
}

/// The merged config as `config view` prints it: embedded data replaced by
/// `DATA+OMITTED` and tokens by `REDACTED` unless `raw`.
pub fn view(config: &Kubeconfig, raw: bool) -> Value {
    let mut v = config.merged.clone();
    if raw {
        return v;
    }
    for (list, key) in [("clusters", "cluster"), ("users", "user")] {
        for entry in v[list].as_array_mut().into_iter().flatten() {
            if let Some(section) = entry[key].as_object_mut() {
                for (k, val) in section.iter_mut() {
                    if k.ends_with("-data") {
                        *val = "DATA+OMITTED".into();
                    } else if k == "token" {
                        *val = "REDACTED".into();
                    }
                }
            }
        }
    }
    v
}

/// `config get-contexts` as a table: CURRENT NAME CLUSTER AUTHINFO NAMESPACE.
pub fn contexts_table(config: &Kubeconfig) -> Vec<Vec<String>> {
    let mut rows = vec![["CURRENT", "NAME", "CLUSTER", "AUTHINFO", "NAMESPACE"]
        .map(String::from)
        .to_vec()];
    let current = config.current_context();
    for ctx in config.merged["contexts"].as_array().into_iter().flatten() {
        let name = ctx["name"].as_str().unwrap_or_default();
        let field = |k: &str| ctx["context"][k].as_str().unwrap_or_default().to_string();
        rows.push(vec![
            if Some(name) == current { "*" } else { "" }.to_string(),
            name.to_string(),
            field("cluster"),
            field("user"),
            field("namespace"),
        ]);
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc(current: &str, names: &[&str], server: &str) -> Value {
        json!({
            "current-context": current,
            "clusters": names.iter().map(|n| json!({"name": n, "cluster": {"server": server}})).collect::<Vec<_>>(),
            "users": names.iter().map(|n| json!({"name": n, "user": {"token": format!("t-{n}-{server}")}})).collect::<Vec<_>>(),
            "contexts": names.iter().map(|n| json!({"name": n, "context": {"cluster": n, "user": n, "namespace": "ns-".to_string() + n}})).collect::<Vec<_>>(),
        })
    }

    #[test]
    fn first_file_wins_per_entry_and_current_context() {
        let merged = merge(&[doc("", &["a"], "s1"), doc("b", &["a", "b"], "s2")]);
        let config = Kubeconfig {
            merged,
            files: vec![],
        };
        assert_eq!(config.current_context(), Some("b"));
        let a = config.resolve(Some("a")).expect("context a");
        assert_eq!(a.server, "s1");
        assert_eq!(a.token.as_deref(), Some("t-a-s1"));
        assert_eq!(a.namespace.as_deref(), Some("ns-a"));
        let b = config.resolve(None).expect("current context");
        assert_eq!(b.server, "s2");
        assert!(matches!(
            config.resolve(Some("zz")),
            Err(Error::NoContext(_))
        ));
    }

    #[test]
    fn view_redacts_unless_raw() {
        let config = Kubeconfig {
            merged: merge(&[
                json!({"users": [{"name": "u", "user": {"token": "secret", "client-key-data": "aGk="}}]}),
            ]),
            files: vec![],
        };
        let v = view(&config, false);
        assert_eq!(v["users"][0]["user"]["token"], "REDACTED");
        assert_eq!(v["users"][0]["user"]["client-key-data"], "DATA+OMITTED");
        assert_eq!(view(&config, true)["users"][0]["user"]["token"], "secret");
    }
}
