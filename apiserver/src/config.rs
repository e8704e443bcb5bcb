//! The apiserver's configuration: command-line flags, also built directly by tests.

use std::net::IpAddr;
use std::path::PathBuf;

/// Flags of `rkube-apiserver`.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "rkube-apiserver",
    version,
    about = "The rkube API server: Kubernetes REST and rkube gRPC over etcd"
)]
pub struct Config {
    /// etcd client URLs, comma separated.
    #[arg(
        long,
        env = "RKUBE_ETCD_SERVERS",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:2379"
    )]
    pub etcd_servers: Vec<String>,

    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub bind_address: IpAddr,

    /// Port for HTTPS (REST and gRPC on the same port).
    #[arg(long, default_value_t = 6443)]
    pub secure_port: u16,

    /// PEM serving certificate (chain).
    #[arg(long)]
    pub tls_cert_file: Option<PathBuf>,

    /// PEM private key of the serving certificate.
    #[arg(long)]
    pub tls_private_key_file: Option<PathBuf>,

    /// PEM CA bundle; client certificates signed by it authenticate as CN (user) and O (groups).
    #[arg(long)]
    pub client_ca_file: Option<PathBuf>,

    /// Static bearer tokens, CSV lines `token,user,uid,"group1,group2"`.
    #[arg(long)]
    pub token_auth_file: Option<PathBuf>,

    /// Serve plain HTTP instead of HTTPS. For tests only.
    #[arg(long)]
    pub insecure_plain_http: bool,

    /// Accept requests without credentials (as system:anonymous). For tests only.
    #[arg(long)]
    pub insecure_allow_anonymous: bool,

    /// CIDR from which Services get their ClusterIP.
    #[arg(long, default_value = "10.96.0.0/12")]
    pub service_cluster_ip_range: String,

    /// Port range for NodePort Services, `first-last`.
    #[arg(long, default_value = "30000-32767")]
    pub service_node_port_range: String,

    /// Seconds between compactions of etcd's history (0 disables).
    #[arg(long, default_value_t = 300)]
    pub etcd_compaction_interval: u64,

    /// How long Events are kept (e.g. `1h`, `90s`); etcd deletes them after that.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub event_ttl: std::time::Duration,

    /// Events each resource's watch cache keeps for watchers that resume.
    #[arg(long, default_value_t = 10_000)]
    pub watch_cache_events: usize,

    /// PEM client certificate for the node agents' logs and exec service (CN
    /// `rkube-apiserver`, signed by the cluster CA). Without it, `pods/log` and
    /// `pods/exec` answer 503.
    #[arg(long, requires = "kubelet_client_key")]
    pub kubelet_client_certificate: Option<PathBuf>,

    /// PEM private key of `--kubelet-client-certificate`.
    #[arg(long, requires = "kubelet_client_certificate")]
    pub kubelet_client_key: Option<PathBuf>,
}

impl Config {
    /// A configuration for tests: plain HTTP, anonymous access, the given etcd.
    pub fn for_tests(etcd: &str) -> Self {
        Config {
            etcd_servers: vec![etcd.to_string()],
            bind_address: IpAddr::from([127, 0, 0, 1]),
            secure_port: 0,
            tls_cert_file: None,
            tls_private_key_file: None,
            client_ca_file: None,
            token_auth_file: None,
            insecure_plain_http: true,
            insecure_allow_anonymous: true,
            service_cluster_ip_range: "10.96.0.0/12".into(),
            service_node_port_range: "30000-32767".into(),
            etcd_compaction_interval: 300,
            event_ttl: std::time::Duration::from_secs(3600),
            watch_cache_events: 10_000,
            kubelet_client_certificate: None,
            kubelet_client_key: None,
        }
    }
}
