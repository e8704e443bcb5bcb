//! Where the apiserver is and how to trust and authenticate to it: [`ClientConfig`],
//! directly or from a kubeconfig file.

use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine;
use serde::Deserialize;

/// What can go wrong reading a kubeconfig.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to read {}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to parse kubeconfig")]
    Parse(#[source] serde_yaml::Error),
    #[error("kubeconfig has no context {0:?}")]
    NoContext(String),
    #[error("kubeconfig has no cluster {0:?}")]
    NoCluster(String),
    #[error("kubeconfig has no user {0:?}")]
    NoUser(String),
    #[error("certificate-authority-data of cluster {cluster:?} is not valid base64")]
    CaData {
        cluster: String,
        #[source]
        source: base64::DecodeError,
    },
    #[error("the CA certificate of cluster {0:?} is not UTF-8 PEM")]
    CaNotPem(String),
    #[error("user {0:?} authenticates with a client certificate; rkube-client supports bearer tokens only")]
    ClientCertificateUnsupported(String),
}

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How to reach the apiserver.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ClientConfig {
    /// `https://127.0.0.1:6443`, or `http://…` for tests against a plain-HTTP server.
    pub endpoint: String,
    /// PEM of the CA that signed the apiserver's serving certificate (required for https).
    pub ca_pem: Option<String>,
    /// Bearer token sent as `authorization: Bearer <token>` on every call.
    pub token: Option<String>,
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConfig")
            .field("endpoint", &self.endpoint)
            .field("ca_pem", &self.ca_pem.as_ref().map(|_| "<pem>"))
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

#[derive(Deserialize)]
struct Kubeconfig {
    #[serde(rename = "current-context", default)]
    current_context: String,
    #[serde(default)]
    clusters: Vec<NamedCluster>,
    #[serde(default)]
    contexts: Vec<NamedContext>,
    #[serde(default)]
    users: Vec<NamedUser>,
}

#[derive(Deserialize)]
struct NamedCluster {
    name: String,
    cluster: Cluster,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct Cluster {
    server: String,
    certificate_authority_data: Option<String>,
    certificate_authority: Option<PathBuf>,
}

#[derive(Deserialize)]
struct NamedContext {
    name: String,
    context: Context,
}

#[derive(Deserialize)]
struct Context {
    cluster: String,
    #[serde(default)]
    user: String,
}

#[derive(Deserialize)]
struct NamedUser {
    name: String,
    #[serde(default)]
    user: User,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
struct User {
    token: Option<String>,
    #[serde(rename = "tokenFile")]
    token_file: Option<PathBuf>,
    client_certificate_data: Option<String>,
    client_certificate: Option<PathBuf>,
}

impl ClientConfig {
    /// A configuration for `endpoint` without CA or token (plain-HTTP tests).
    pub fn new(endpoint: impl Into<String>) -> Self {
        ClientConfig {
            endpoint: endpoint.into(),
            ..Default::default()
        }
    }

    /// Reads the current context of a kubeconfig file: the cluster's `server` and
    /// `certificate-authority-data` (or `certificate-authority` file), the user's `token`
    /// (or `tokenFile`). Relative file paths are relative to the kubeconfig's directory.
    pub fn from_kubeconfig(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let yaml = read(path)?;
        Self::from_kubeconfig_str(&yaml, path.parent())
    }

    /// Like [`ClientConfig::from_kubeconfig`], from YAML text; `base_dir` resolves
    /// relative file paths.
    pub fn from_kubeconfig_str(yaml: &str, base_dir: Option<&Path>) -> Result<Self> {
        let config: Kubeconfig = serde_yaml::from_str(yaml).map_err(Error::Parse)?;
        let context = config
            .contexts
            .iter()
            .find(|c| c.name == config.current_context)
            .ok_or_else(|| Error::NoContext(config.current_context.clone()))?;
        let cluster = config
            .clusters
            .iter()
            .find(|c| c.name == context.context.cluster)
            .ok_or_else(|| Error::NoCluster(context.context.cluster.clone()))?;
        let resolve = |p: &Path| match base_dir {
            Some(dir) if p.is_relative() => dir.join(p),
            _ => p.to_path_buf(),
        };

        let ca_pem = if let Some(data) = &cluster.cluster.certificate_authority_data {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(data.trim())
                .map_err(|source| Error::CaData {
                    cluster: cluster.name.clone(),
                    source,
                })?;
            Some(String::from_utf8(bytes).map_err(|_| Error::CaNotPem(cluster.name.clone()))?)
        } else if let Some(file) = &cluster.cluster.certificate_authority {
            Some(read(&resolve(file))?)
        } else {
            None
        };

        let token = if context.context.user.is_empty() {
            None
        } else {
            let user = config
                .users
                .iter()
                .find(|u| u.name == context.context.user)
                .ok_or_else(|| Error::NoUser(context.context.user.clone()))?;
            if let Some(token) = &user.user.token {
                Some(token.clone())
            } else if let Some(file) = &user.user.token_file {
                Some(read(&resolve(file))?.trim().to_string())
            } else if user.user.client_certificate_data.is_some()
                || user.user.client_certificate.is_some()
            {
                return Err(Error::ClientCertificateUnsupported(user.name.clone()));
            } else {
                None
            }
        };

        Ok(ClientConfig {
            endpoint: cluster.cluster.server.clone(),
            ca_pem,
            token,
        })
    }
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

    fn kubeconfig(cluster_extra: &str, user: &str) -> String {
        format!(
            "apiVersion: v1
kind: Config
current-context: lab
clusters:
- name: other
  cluster:
    server: https://10.0.0.1:6443
- name: rkube
  cluster:
    server: https://127.0.0.1:6443
{cluster_extra}
contexts:
- name: other
  context: {{cluster: other, user: nobody}}
- name: lab
  context:
    cluster: rkube
    user: admin
users:
- name: admin
  user:
{user}
"
        )
    }

    #[test]
    fn reads_the_current_context() {
        let data = base64::engine::general_purpose::STANDARD.encode(PEM);
        let yaml = kubeconfig(
            &format!("    certificate-authority-data: {data}"),
            "    token: s3cret",
        );
        let config = ClientConfig::from_kubeconfig_str(&yaml, None).expect("valid kubeconfig");
        assert_eq!(config.endpoint, "https://127.0.0.1:6443");
        assert_eq!(config.ca_pem.as_deref(), Some(PEM));
        assert_eq!(config.token.as_deref(), Some("s3cret"));
        assert!(
            !format!("{config:?}").contains("s3cret"),
            "Debug leaks the token"
        );
    }

    #[test]
    fn resolves_files_relative_to_the_kubeconfig() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("ca.crt"), PEM).expect("write ca");
        std::fs::write(dir.path().join("token"), "tok\n").expect("write token");
        let yaml = kubeconfig("    certificate-authority: ca.crt", "    tokenFile: token");
        let path = dir.path().join("config");
        std::fs::write(&path, yaml).expect("write kubeconfig");
        let config = ClientConfig::from_kubeconfig(&path).expect("valid kubeconfig");
        assert_eq!(config.ca_pem.as_deref(), Some(PEM));
        assert_eq!(config.token.as_deref(), Some("tok"));
    }

    #[test]
    fn reports_what_is_missing() {
        let yaml = kubeconfig("", "    token: t").replace("cluster: rkube", "cluster: gone");
        assert!(matches!(
            ClientConfig::from_kubeconfig_str(&yaml, None),
            Err(Error::NoCluster(c)) if c == "gone"
        ));
        let yaml = kubeconfig("    certificate-authority-data: '%%%'", "    token: t");
        assert!(matches!(
            ClientConfig::from_kubeconfig_str(&yaml, None),
            Err(Error::CaData { .. })
        ));
        let yaml = kubeconfig("", "    client-certificate-data: abc");
        assert!(matches!(
            ClientConfig::from_kubeconfig_str(&yaml, None),
            Err(Error::ClientCertificateUnsupported(_))
        ));
        assert!(matches!(
            ClientConfig::from_kubeconfig("/nonexistent/kubeconfig"),
            Err(Error::Read { .. })
        ));
    }
}
