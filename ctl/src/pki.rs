//! The cluster's PKI: CA, apiserver serving certificate, admin client certificate,
//! static bearer tokens and one kubeconfig per component, kept in one directory.
//!
//! [`ClusterPki::load_or_generate`] is what `rkube up` calls: the first time it generates
//! everything, later it reuses the files, so running `up` twice never rotates the CA.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

use crate::kubeconfig;

/// The server URL written into component kubeconfigs unless told otherwise.
pub const DEFAULT_SERVER: &str = "https://127.0.0.1:6443";
/// The name of the cluster, user and context in every kubeconfig rkube writes.
pub const CONTEXT_NAME: &str = "rkube";

/// File names inside the PKI directory.
pub const CA_CERT: &str = "ca.crt";
pub const CA_KEY: &str = "ca.key";
pub const APISERVER_CERT: &str = "apiserver.crt";
pub const APISERVER_KEY: &str = "apiserver.key";
pub const ADMIN_CERT: &str = "admin.crt";
pub const ADMIN_KEY: &str = "admin.key";
/// The apiserver's client certificate for the node agents' `NodeAgent` service (logs,
/// exec), as kubeadm's `apiserver-kubelet-client.crt`.
pub const KUBELET_CLIENT_CERT: &str = "apiserver-kubelet-client.crt";
pub const KUBELET_CLIENT_KEY: &str = "apiserver-kubelet-client.key";
/// The CN (user) of [`KUBELET_CLIENT_CERT`]; node agents accept only this client.
pub const KUBELET_CLIENT_USER: &str = "rkube-apiserver";
pub const TOKENS: &str = "tokens.csv";

/// Names the apiserver certificate is always valid for. `kubernetes*` and 10.96.0.1 are
/// how pods will reach the apiserver through its Service.
const BUILTIN_HOSTS: [&str; 8] = [
    "localhost",
    "127.0.0.1",
    "::1",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
    "10.96.0.1",
];

/// Why the PKI could not be generated or loaded.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("failed to write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("failed to generate {what}")]
    Generate {
        what: &'static str,
        #[source]
        source: rcgen::Error,
    },
    #[error("token file {path} has no token for user {user}")]
    MissingToken { path: PathBuf, user: &'static str },
    #[error("failed to write the kubeconfig of {component}")]
    Kubeconfig {
        component: &'static str,
        #[source]
        source: kubeconfig::Error,
    },
}

/// The result type of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A client of the apiserver that gets its own token and kubeconfig.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Component {
    Admin,
    Scheduler,
    ControllerManager,
    NodeAgent,
}

impl Component {
    /// Every component, in the order of the token file.
    pub const ALL: [Component; 4] = [
        Component::Admin,
        Component::Scheduler,
        Component::ControllerManager,
        Component::NodeAgent,
    ];

    /// The user name its token authenticates as.
    pub fn user(self) -> &'static str {
        match self {
            Component::Admin => "admin",
            Component::Scheduler => "system:kube-scheduler",
            Component::ControllerManager => "system:kube-controller-manager",
            // One shared node identity for now; per-node `system:node:<name>` users come
            // with node authorization.
            Component::NodeAgent => "rkube-nodeagent",
        }
    }

    /// The groups of its user (besides `system:authenticated`).
    pub fn groups(self) -> &'static [&'static str] {
        match self {
            Component::Admin => &["system:masters"],
            Component::Scheduler | Component::ControllerManager => &[],
            Component::NodeAgent => &["system:nodes"],
        }
    }

    /// The short name used for its uid and kubeconfig file.
    pub fn short_name(self) -> &'static str {
        match self {
            Component::Admin => "admin",
            Component::Scheduler => "scheduler",
            Component::ControllerManager => "controller-manager",
            Component::NodeAgent => "nodeagent",
        }
    }

    /// Its kubeconfig's file name, e.g. `scheduler.kubeconfig`.
    pub fn kubeconfig_file(self) -> String {
        format!("{}.kubeconfig", self.short_name())
    }
}

/// The cluster's PKI directory, with the CA certificate and every component's token
/// loaded.
#[derive(Debug, Clone)]
pub struct ClusterPki {
    dir: PathBuf,
    ca_pem: String,
    tokens: Vec<(Component, String)>,
}

impl ClusterPki {
    /// Generates a new CA, certificates, tokens and kubeconfigs (pointing at
    /// [`DEFAULT_SERVER`]) into `dir`, replacing any that are there. The apiserver
    /// certificate is valid for localhost, 127.0.0.1, ::1, the in-cluster names and
    /// `hosts`. Keys, tokens and kubeconfigs are written with mode 0600.
    ///
    /// # Errors
    /// When a key or certificate cannot be generated or a file cannot be written.
    pub fn generate(dir: &Path, hosts: &[String]) -> Result<Self> {
        fs::create_dir_all(dir).map_err(|source| Error::Write {
            path: dir.to_path_buf(),
            source,
        })?;
        let ca_key = KeyPair::generate().map_err(gen_err("the CA key"))?;
        let ca_params = ca_params();
        let ca_cert = ca_params
            .self_signed(&ca_key)
            .map_err(gen_err("the CA certificate"))?;
        let ca_pem = ca_cert.pem();
        write_file(&dir.join(CA_KEY), &ca_key.serialize_pem(), 0o600)?;
        write_file(&dir.join(CA_CERT), &ca_pem, 0o644)?;
        let issuer = Issuer::new(ca_params, ca_key);

        let mut sans: Vec<String> = BUILTIN_HOSTS.iter().map(|h| h.to_string()).collect();
        for host in hosts {
            if !sans.contains(host) {
                sans.push(host.clone());
            }
        }
        let params = leaf_params(
            sans,
            name("rkube-apiserver", None),
            ExtendedKeyUsagePurpose::ServerAuth,
        )?;
        issue(
            dir,
            APISERVER_CERT,
            APISERVER_KEY,
            &params,
            &issuer,
            "the apiserver certificate",
        )?;

        let admin = Component::Admin;
        let params = leaf_params(
            Vec::new(),
            name(admin.user(), admin.groups().first().copied()),
            ExtendedKeyUsagePurpose::ClientAuth,
        )?;
        issue(
            dir,
            ADMIN_CERT,
            ADMIN_KEY,
            &params,
            &issuer,
            "the admin certificate",
        )?;
        issue_kubelet_client(dir, &issuer)?;

        let tokens: Vec<(Component, String)> = Component::ALL
            .iter()
            .map(|&c| (c, random_token()))
            .collect();
        write_file(&dir.join(TOKENS), &token_file(&tokens), 0o600)?;

        let pki = ClusterPki {
            dir: dir.to_path_buf(),
            ca_pem,
            tokens,
        };
        pki.write_kubeconfigs(DEFAULT_SERVER)?;
        Ok(pki)
    }

    /// Loads a PKI directory that [`generate`](Self::generate) wrote.
    ///
    /// # Errors
    /// When a file is missing or unreadable, or the token file lacks a component.
    pub fn load(dir: &Path) -> Result<Self> {
        for file in [CA_KEY, APISERVER_CERT, APISERVER_KEY, ADMIN_CERT, ADMIN_KEY] {
            let path = dir.join(file);
            fs::metadata(&path).map_err(|source| Error::Read { path, source })?;
        }
        let ca_pem = read(&dir.join(CA_CERT))?;
        // PKI directories from before the node agents served logs and exec lack the
        // apiserver's kubelet client certificate: issue it from the existing CA.
        if !dir.join(KUBELET_CLIENT_CERT).exists() || !dir.join(KUBELET_CLIENT_KEY).exists() {
            let ca_key = KeyPair::from_pem(&read(&dir.join(CA_KEY))?)
                .map_err(gen_err("the CA key (parse)"))?;
            issue_kubelet_client(dir, &Issuer::new(ca_params(), ca_key))?;
        }
        let tokens_path = dir.join(TOKENS);
        let text = read(&tokens_path)?;
        let tokens = Component::ALL
            .iter()
            .map(|&c| {
                text.lines()
                    .filter_map(|line| {
                        let mut fields = line.split(',');
                        let token = fields.next()?.trim();
                        let user = fields.next()?.trim();
                        (user == c.user() && !token.is_empty()).then(|| (c, token.to_string()))
                    })
                    .next()
                    .ok_or(Error::MissingToken {
                        path: tokens_path.clone(),
                        user: c.user(),
                    })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(ClusterPki {
            dir: dir.to_path_buf(),
            ca_pem,
            tokens,
        })
    }

    /// Loads the PKI in `dir` if its CA exists, else generates one there.
    ///
    /// # Errors
    /// As [`load`](Self::load) or [`generate`](Self::generate).
    pub fn load_or_generate(dir: &Path, hosts: &[String]) -> Result<Self> {
        if dir.join(CA_CERT).exists() {
            Self::load(dir)
        } else {
            Self::generate(dir, hosts)
        }
    }

    /// (Re)writes every component's kubeconfig for the apiserver at `server`.
    ///
    /// # Errors
    /// When a kubeconfig cannot be written.
    pub fn write_kubeconfigs(&self, server: &str) -> Result<()> {
        for (component, token) in &self.tokens {
            kubeconfig::write_single(
                &self.kubeconfig_path(*component),
                CONTEXT_NAME,
                server,
                &self.ca_pem,
                token,
            )
            .map_err(|source| Error::Kubeconfig {
                component: component.short_name(),
                source,
            })?;
        }
        Ok(())
    }

    /// The directory holding the files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The bearer token of `component`.
    pub fn token(&self, component: Component) -> &str {
        self.tokens
            .iter()
            .find(|(c, _)| *c == component)
            .map(|(_, t)| t.as_str())
            .expect("generate and load give every component a token")
    }

    /// The admin's bearer token.
    pub fn admin_token(&self) -> &str {
        self.token(Component::Admin)
    }

    pub fn ca_cert_path(&self) -> PathBuf {
        self.dir.join(CA_CERT)
    }

    pub fn apiserver_cert_path(&self) -> PathBuf {
        self.dir.join(APISERVER_CERT)
    }

    pub fn apiserver_key_path(&self) -> PathBuf {
        self.dir.join(APISERVER_KEY)
    }

    pub fn admin_cert_path(&self) -> PathBuf {
        self.dir.join(ADMIN_CERT)
    }

    pub fn admin_key_path(&self) -> PathBuf {
        self.dir.join(ADMIN_KEY)
    }

    /// The apiserver's client certificate for the node agents
    /// (`--kubelet-client-certificate`).
    pub fn kubelet_client_cert_path(&self) -> PathBuf {
        self.dir.join(KUBELET_CLIENT_CERT)
    }

    /// Its private key (`--kubelet-client-key`).
    pub fn kubelet_client_key_path(&self) -> PathBuf {
        self.dir.join(KUBELET_CLIENT_KEY)
    }

    /// The static token file for `rkube-apiserver --token-auth-file`.
    pub fn token_file_path(&self) -> PathBuf {
        self.dir.join(TOKENS)
    }

    pub fn kubeconfig_path(&self, component: Component) -> PathBuf {
        self.dir.join(component.kubeconfig_file())
    }
}

fn gen_err(what: &'static str) -> impl Fn(rcgen::Error) -> Error {
    move |source| Error::Generate { what, source }
}

/// The CA's parameters. Issuing needs only its name and key usages, so they are rebuilt
/// here rather than parsed back from `ca.crt`.
fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = name("rkube-ca", Some("rkube"));
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    set_validity(&mut params);
    params
}

/// Parameters of a leaf certificate signed by the CA.
fn leaf_params(
    sans: Vec<String>,
    subject: DistinguishedName,
    usage: ExtendedKeyUsagePurpose,
) -> Result<CertificateParams> {
    let mut params = CertificateParams::new(sans).map_err(gen_err("certificate names"))?;
    params.distinguished_name = subject;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![usage];
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params);
    Ok(params)
}

/// Valid from the start of last year for ten years: a lab cluster never needs to rotate,
/// and a clock a little behind does not make certificates "not yet valid".
fn set_validity(params: &mut CertificateParams) {
    const SECONDS_PER_YEAR: u64 = 31_556_952;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let year = 1970 + i32::try_from(now / SECONDS_PER_YEAR).unwrap_or(0);
    params.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
    params.not_after = rcgen::date_time_ymd(year + 10, 1, 1);
}

/// A subject name: CN and at most one O (rcgen keeps one value per attribute type).
fn name(common_name: &str, organization: Option<&str>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    if let Some(o) = organization {
        dn.push(DnType::OrganizationName, o);
    }
    dn
}

/// Generates a key, has the CA sign `params` for it, writes both.
fn issue(
    dir: &Path,
    cert_file: &str,
    key_file: &str,
    params: &CertificateParams,
    issuer: &Issuer<'_, KeyPair>,
    what: &'static str,
) -> Result<()> {
    let key = KeyPair::generate().map_err(gen_err(what))?;
    let cert = params.signed_by(&key, issuer).map_err(gen_err(what))?;
    write_file(&dir.join(key_file), &key.serialize_pem(), 0o600)?;
    write_file(&dir.join(cert_file), &cert.pem(), 0o644)
}

/// The apiserver's client certificate for the node agents: CN `rkube-apiserver`, O
/// `system:masters`, client auth only.
fn issue_kubelet_client(dir: &Path, issuer: &Issuer<'_, KeyPair>) -> Result<()> {
    let params = leaf_params(
        Vec::new(),
        name(KUBELET_CLIENT_USER, Some("system:masters")),
        ExtendedKeyUsagePurpose::ClientAuth,
    )?;
    issue(
        dir,
        KUBELET_CLIENT_CERT,
        KUBELET_CLIENT_KEY,
        &params,
        issuer,
        "the apiserver's kubelet client certificate",
    )
}

/// 32 random bytes, hex.
fn random_token() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The Kubernetes static token file: `token,user,uid,"group1,group2"`.
fn token_file(tokens: &[(Component, String)]) -> String {
    tokens
        .iter()
        .map(|(c, token)| {
            let uid = format!("rkube-{}", c.short_name());
            match c.groups() {
                [] => format!("{token},{},{uid}\n", c.user()),
                groups => format!("{token},{},{uid},\"{}\"\n", c.user(), groups.join(",")),
            }
        })
        .collect()
}

fn read(path: &Path) -> Result<String> {
    fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes `contents` to `path` with `mode`, also when the file existed with another mode.
fn write_file(path: &Path, contents: &str, mode: u32) -> Result<()> {
    let write_err = |source| Error::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(write_err)?;
    file.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(write_err)?;
    file.write_all(contents.as_bytes()).map_err(write_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).expect("stat").permissions().mode() & 0o777
    }

    #[test]
    fn generate_writes_every_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let pki = ClusterPki::generate(dir.path(), &["node-1.lab".to_string()]).expect("generate");

        for file in [CA_KEY, APISERVER_KEY, ADMIN_KEY, KUBELET_CLIENT_KEY, TOKENS] {
            assert_eq!(mode(&dir.path().join(file)), 0o600, "{file}");
        }
        for file in [CA_CERT, APISERVER_CERT, ADMIN_CERT, KUBELET_CLIENT_CERT] {
            assert!(
                read(&dir.path().join(file))
                    .expect("read")
                    .contains("BEGIN CERTIFICATE"),
                "{file}"
            );
        }
        for component in Component::ALL {
            let path = pki.kubeconfig_path(component);
            assert_eq!(mode(&path), 0o600, "{component:?}");
            let text = read(&path).expect("read kubeconfig");
            assert!(text.contains(pki.token(component)), "{component:?}");
            assert!(text.contains(DEFAULT_SERVER), "{component:?}");
        }

        let tokens: Vec<&str> = Component::ALL.iter().map(|c| pki.token(*c)).collect();
        for token in &tokens {
            assert_eq!(token.len(), 64);
            assert!(token.chars().all(|c| c.is_ascii_hexdigit()));
        }
        let mut unique = tokens.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), tokens.len(), "tokens are distinct");

        let file = read(&pki.token_file_path()).expect("read tokens");
        assert!(file.contains(&format!(
            "{},admin,rkube-admin,\"system:masters\"",
            pki.admin_token()
        )));
        assert!(file.contains(",rkube-nodeagent,rkube-nodeagent,\"system:nodes\""));
    }

    #[test]
    fn load_or_generate_reuses_the_ca() {
        let dir = tempfile::tempdir().expect("temp dir");
        let first = ClusterPki::load_or_generate(dir.path(), &[]).expect("generate");
        let kubelet_client = read(&first.kubelet_client_cert_path()).expect("read");
        // A PKI from before the kubelet client certificate gets one on load.
        fs::remove_file(first.kubelet_client_key_path()).expect("remove key");
        let reloaded = ClusterPki::load(dir.path()).expect("load");
        let reissued = read(&reloaded.kubelet_client_cert_path()).expect("read");
        assert_ne!(kubelet_client, reissued, "a new certificate was issued");
        assert_eq!(mode(&reloaded.kubelet_client_key_path()), 0o600);
        let second = ClusterPki::load_or_generate(dir.path(), &[]).expect("load");
        assert_eq!(first.ca_pem(), second.ca_pem());
        for component in Component::ALL {
            assert_eq!(first.token(component), second.token(component));
        }
        second
            .write_kubeconfigs("https://127.0.0.1:7443")
            .expect("rewrite kubeconfigs");
        let text = read(&second.kubeconfig_path(Component::Admin)).expect("read");
        assert!(text.contains("https://127.0.0.1:7443"));
    }

    #[test]
    fn load_reports_missing_files_and_tokens() {
        let dir = tempfile::tempdir().expect("temp dir");
        assert!(matches!(
            ClusterPki::load(dir.path()),
            Err(Error::Read { .. })
        ));

        ClusterPki::generate(dir.path(), &[]).expect("generate");
        fs::write(dir.path().join(TOKENS), "abc,admin,rkube-admin\n").expect("write");
        match ClusterPki::load(dir.path()) {
            Err(Error::MissingToken { user, .. }) => assert_eq!(user, "system:kube-scheduler"),
            other => panic!("want a missing token, got {other:?}"),
        }
    }
}
