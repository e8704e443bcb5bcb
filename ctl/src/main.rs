//! `rkube`: brings a lab cluster up, reports on it, and tears it down.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use rkube_ctl::lab::underlay::Cidr;
use rkube_ctl::lab::{self, LabConfig};

#[derive(Debug, Parser)]
#[command(name = "rkube", version, about = "The rkube lab launcher")]
struct Cli {
    #[command(subcommand)]
    command: Verb,
}

#[derive(Debug, Subcommand)]
enum Verb {
    /// Start a lab cluster: an underlay bridge and one network namespace per node, etcd,
    /// the apiserver, scheduler, controller-manager and a registry on the host, a node
    /// agent in each namespace; wait until every node is Ready and merge the `rkube`
    /// context into your kubeconfig. Starts only what is not running (and repairs what a
    /// crash left). Needs root for the namespaces.
    Up(UpArgs),
    /// Stop and remove everything `up` made (agents and their containers, namespaces,
    /// bridge, registry, control plane), the `rkube` context and the state directory.
    Down(StateArgs),
    /// Show each piece of the lab and its health.
    Status(StatusArgs),
    /// Generate (or reuse) a cluster PKI and the components' kubeconfigs in a directory,
    /// for control planes and nodes on real machines (see manifests/systemd).
    Pki(PkiArgs),
    /// Network diagnostics of the lab.
    Net(NetArgs),
}

#[derive(Debug, Args)]
struct NetArgs {
    #[command(subcommand)]
    command: NetVerb,
}

#[derive(Debug, Subcommand)]
enum NetVerb {
    /// For every ordered pair of lab nodes, walk the overlay path (Node annotations,
    /// FDB, neighbour, route, underlay ping, overlay ping, overlay MTU) and name the
    /// first broken hop; exits non-zero when any pair is broken. Waits up to 20 s for
    /// Ready nodes to publish their podCIDR and annotations first. Needs root.
    Check(StateArgs),
}

#[derive(Debug, Args)]
struct PkiArgs {
    /// Where the CA, certificates, tokens and kubeconfigs go (e.g. /etc/rkube).
    #[arg(long)]
    dir: PathBuf,
    /// The apiserver URL the kubeconfigs point at, e.g. https://10.0.0.10:6443.
    #[arg(long)]
    server: String,
    /// Extra names or addresses the apiserver certificate is valid for (repeatable;
    /// only when the PKI is generated).
    #[arg(long = "host")]
    hosts: Vec<String>,
}

#[derive(Debug, Args)]
struct StatusArgs {
    #[command(flatten)]
    state: StateArgs,
    /// Output format: `text` or `json`.
    #[arg(short = 'o', long = "output", default_value = "text", value_parser = ["text", "json"])]
    output: String,
}

#[derive(Debug, Args)]
struct StateArgs {
    /// Cluster state directory (PKI, etcd data, logs, pid files) [default: $HOME/.rkube].
    #[arg(long, env = "RKUBE_STATE_DIR")]
    state_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct UpArgs {
    #[command(flatten)]
    state: StateArgs,
    /// Use these etcd client URLs (comma separated) instead of starting a local etcd.
    #[arg(long, env = "RKUBE_ETCD_SERVERS", value_delimiter = ',')]
    etcd_servers: Option<Vec<String>>,
    /// Client port of the local etcd.
    #[arg(long, default_value_t = 2379)]
    etcd_client_port: u16,
    /// Peer port of the local etcd.
    #[arg(long, default_value_t = 2380)]
    etcd_peer_port: u16,
    /// HTTPS port of the apiserver.
    #[arg(long, default_value_t = 6443)]
    secure_port: u16,
    /// How many nodes (node agents, each in its own network namespace); 0 for the
    /// control plane alone.
    #[arg(long, default_value_t = 1)]
    nodes: usize,
    /// CPU capacity each node reports (a whole number of CPUs, e.g. `2`) [default: the
    /// machine's].
    #[arg(long)]
    node_cpu: Option<String>,
    /// Memory capacity each node reports (e.g. `4Gi`) [default: the machine's].
    #[arg(long)]
    node_memory: Option<String>,
    /// The underlay network: the host bridge gets its first address, the nodes the
    /// following ones.
    #[arg(long, default_value_t = lab::DEFAULT_UNDERLAY, value_parser = parse_cidr)]
    underlay_cidr: Cidr,
    /// The pod network, split into one podCIDR per node.
    #[arg(long, default_value = lab::DEFAULT_CLUSTER_CIDR)]
    cluster_cidr: String,
    /// Port of the lab registry on the bridge address (with the default underlay images
    /// are `10.250.0.1:5000/NAME:TAG`); 0 picks a free one.
    #[arg(long, default_value_t = lab::DEFAULT_REGISTRY_PORT)]
    registry_port: u16,
}

fn parse_cidr(text: &str) -> Result<Cidr, String> {
    Cidr::parse(text).map_err(|e| e.to_string())
}

impl StateArgs {
    fn lab_config(&self) -> anyhow::Result<LabConfig> {
        let state_dir = match &self.state_dir {
            Some(dir) => dir.clone(),
            None => std::env::var_os("HOME")
                .map(|home| PathBuf::from(home).join(".rkube"))
                .context("find the state directory: set --state-dir or HOME")?,
        };
        Ok(LabConfig::new(state_dir))
    }
}

/// Runs `rkube net check` on the lab of `config`, prints the report and returns how many
/// pairs are broken.
async fn net_check(config: &LabConfig) -> anyhow::Result<usize> {
    let status = lab::status(config).await.context("read the lab status")?;
    if status.nodes.is_empty() {
        anyhow::bail!(
            "the lab in {} has no nodes (run `rkube up --nodes N`)",
            config.state_dir.display()
        );
    }
    let nodes: BTreeMap<String, String> = status
        .nodes
        .iter()
        .map(|node| (node.name.clone(), node.netns.clone()))
        .collect();
    let pki_dir = config.state_dir.join("pki");
    let pki = rkube_ctl::pki::ClusterPki::load(&pki_dir)
        .with_context(|| format!("load the cluster PKI from {}", pki_dir.display()))?;
    let ca =
        reqwest::Certificate::from_pem(pki.ca_pem().as_bytes()).context("read the cluster CA")?;
    let http = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
        .no_proxy()
        .timeout(std::time::Duration::from_secs(5))
        .build()
        .context("build the HTTP client")?;
    let url = format!("{}/api/v1/nodes", status.server);
    let fetch = || async {
        http.get(&url)
            .bearer_auth(pki.admin_token())
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .with_context(|| format!("list the Nodes at {url}"))?
            .json::<serde_json::Value>()
            .await
            .context("decode the NodeList")
    };
    // A node publishes its annotations a moment after it turns Ready.
    let node_list = rkube_ctl::netcheck::wait_for_publication(
        &nodes,
        fetch,
        rkube_ctl::netcheck::PUBLISH_WAIT,
        std::time::Duration::from_millis(250),
        &mut |line| eprintln!("{line}"),
    )
    .await?;
    // The probes run `ip` and `ping` and block; keep them off the runtime thread.
    let results =
        tokio::task::spawn_blocking(move || rkube_ctl::netcheck::check_lab(&nodes, &node_list))
            .await
            .context("run the network check")?;
    print!("{}", rkube_ctl::netcheck::render(&results));
    Ok(results.iter().filter(|r| r.broken.is_some()).count())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();

    match Cli::parse().command {
        Verb::Up(args) => {
            let mut config = args.state.lab_config()?;
            config.etcd_servers = args.etcd_servers;
            config.etcd_client_port = args.etcd_client_port;
            config.etcd_peer_port = args.etcd_peer_port;
            config.secure_port = args.secure_port;
            config.nodes = args.nodes;
            config.node_cpu = args.node_cpu;
            config.node_memory = args.node_memory;
            config.underlay = args.underlay_cidr;
            config.cluster_cidr = args.cluster_cidr;
            config.registry_port = args.registry_port;
            let started = std::time::Instant::now();
            let mut progress = |step: &str| {
                println!("[{:5.1}s] {step}", started.elapsed().as_secs_f64());
            };
            let report = lab::up_with_progress(&config, &mut progress)
                .await
                .context("bring the cluster up")?;
            if report.already_running {
                println!("rkube is already running at {}", report.server);
            } else {
                println!(
                    "started {} at {} in {:.1}s",
                    report.started.join(", "),
                    report.server,
                    started.elapsed().as_secs_f64()
                );
            }
            for node in &report.nodes {
                println!(
                    "node {} is Ready: {} in netns {}",
                    node.name, node.ip, node.netns
                );
            }
            println!("registry: {} (plain HTTP)", report.registry);
            println!("state directory: {}", config.state_dir.display());
            println!(
                "kubeconfig: {} (context \"{}\" is current)",
                report.kubeconfig.display(),
                rkube_ctl::pki::CONTEXT_NAME
            );
            println!("try: kubectl get nodes");
        }
        Verb::Down(args) => {
            let config = args.lab_config()?;
            let report = lab::down(&config).await.context("tear the cluster down")?;
            for (name, killed) in &report.stopped {
                let how = if *killed { " (SIGKILL)" } else { "" };
                println!("stopped {name}{how}");
            }
            for node in &report.nodes {
                println!("removed node {node} (containers, mounts, cgroups, namespace)");
            }
            if let Some(bridge) = &report.bridge {
                println!("removed bridge {bridge}");
            }
            if let Some(path) = &report.kubeconfig {
                println!(
                    "removed context \"{}\" from {}",
                    rkube_ctl::pki::CONTEXT_NAME,
                    path.display()
                );
            }
            if report.removed_state {
                println!("removed {}", config.state_dir.display());
            } else if report.stopped.is_empty() {
                println!("nothing was running");
            }
        }
        Verb::Pki(args) => {
            let pki = rkube_ctl::pki::ClusterPki::load_or_generate(&args.dir, &args.hosts)
                .with_context(|| format!("set up the PKI in {}", args.dir.display()))?;
            pki.write_kubeconfigs(&args.server)
                .context("write the kubeconfigs")?;
            println!(
                "PKI and kubeconfigs for {} in {}",
                args.server,
                args.dir.display()
            );
        }
        Verb::Net(NetArgs {
            command: NetVerb::Check(args),
        }) => {
            let config = args.lab_config()?;
            let broken = net_check(&config).await?;
            if broken > 0 {
                // The report says what is wrong; a failure exit status, no error chain.
                use std::io::Write;
                let _ = std::io::stdout().flush();
                eprintln!("{broken} node pair(s) broken");
                std::process::exit(1);
            }
        }
        Verb::Status(args) => {
            let config = args.state.lab_config()?;
            let report = lab::status(&config)
                .await
                .context("read the cluster status")?;
            if args.output == "json" {
                let json = serde_json::to_string_pretty(&report).context("serialize the status")?;
                println!("{json}");
                return Ok(());
            }
            for process in &report.processes {
                match process.pid {
                    Some(pid) => println!(
                        "{:<16} running (pid {pid}), log {}",
                        process.name,
                        process.log.display()
                    ),
                    None => println!("{:<16} stopped", process.name),
                }
            }
            let ready = if report.apiserver_ready {
                "ready"
            } else {
                "not ready"
            };
            println!("apiserver {} is {ready}", report.server);
            if let (Some(bridge), Some(underlay)) = (&report.bridge, &report.underlay) {
                println!("underlay {underlay} on bridge {bridge}");
            }
            for node in &report.nodes {
                let agent = match node.agent_pid {
                    Some(pid) => format!("agent running (pid {pid})"),
                    None => "agent stopped".to_string(),
                };
                let netns = if node.netns_exists { "" } else { " (missing)" };
                let ready = match node.ready {
                    Some(true) => "Ready",
                    Some(false) => "NotReady",
                    None => "unknown",
                };
                println!(
                    "node {:<10} {:<15} netns {}{netns}, {agent}, {ready}",
                    node.name, node.underlay_ip, node.netns
                );
            }
            if let Some(registry) = &report.registry {
                println!("registry {registry}");
            }
            if let Some(path) = &report.kubeconfig {
                println!("kubeconfig {}", path.display());
            }
        }
    }
    Ok(())
}
