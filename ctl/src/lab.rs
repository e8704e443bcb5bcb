//! The lab launcher behind `rkube up`, `rkube down` and `rkube status`: a control plane
//! (etcd and the apiserver) as detached local processes under one state directory.
//!
//! State directory layout:
//!
//! | path | what |
//! |---|---|
//! | `pki/` | CA, certificates, tokens, component kubeconfigs ([`crate::pki`]) |
//! | `etcd/` | the local etcd's data (absent with `--etcd-servers`) |
//! | `logs/<name>.log` | each process's stdout and stderr |
//! | `run/<name>.pid` | each process's pid |
//! | `kubeconfig-path` | the user kubeconfig `up` merged the `rkube` context into |
//! | `server` | the apiserver URL, for `status` |

use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::kubeconfig;
use crate::pki::{self, ClusterPki, Component, CONTEXT_NAME};

/// Marks a directory as an rkube state directory, so `down` never removes anything else.
const MARKER: &str = ".rkube-state";
/// How long `up` waits for a process to answer.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `down` waits after SIGTERM before SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(10);
/// Lines of a process log shown when it fails to start.
const LOG_TAIL_LINES: usize = 40;

/// Why a lab operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("failed to set up the cluster PKI")]
    Pki(#[from] pki::Error),
    #[error("failed to update the kubeconfig")]
    Kubeconfig(#[from] kubeconfig::Error),
    #[error("no kubeconfig path: set HOME or KUBECONFIG")]
    NoKubeconfigPath,
    #[error("{path} not found; build it with `cargo build --bins`")]
    MissingBinary { path: PathBuf },
    #[error("failed to start {name} ({binary})")]
    Spawn {
        name: &'static str,
        binary: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{name} exited ({status}) while starting; last lines of {log}:\n{tail}")]
    Exited {
        name: &'static str,
        status: std::process::ExitStatus,
        log: PathBuf,
        tail: String,
    },
    #[error("{name} did not become ready within {timeout:?}; last lines of {log}:\n{tail}")]
    NotReady {
        name: &'static str,
        timeout: Duration,
        log: PathBuf,
        tail: String,
    },
    #[error("failed to build an HTTP client")]
    HttpClient(#[source] reqwest::Error),
    #[error("failed to signal {name} (pid {pid})")]
    Signal {
        name: &'static str,
        pid: i32,
        #[source]
        source: nix::Error,
    },
    #[error("{name} (pid {pid}) is still running after SIGKILL")]
    Unkillable { name: &'static str, pid: i32 },
    #[error("{path} is not an rkube state directory (no {MARKER}); refusing to remove it")]
    NotAStateDir { path: PathBuf },
}

/// The result type of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Where and how the lab runs.
#[derive(Debug, Clone)]
pub struct LabConfig {
    /// The state directory (PKI, etcd data, logs, pid files).
    pub state_dir: PathBuf,
    /// External etcd client URLs; `None` starts a local etcd.
    pub etcd_servers: Option<Vec<String>>,
    /// Client port of the local etcd.
    pub etcd_client_port: u16,
    /// Peer port of the local etcd.
    pub etcd_peer_port: u16,
    /// HTTPS port of the apiserver.
    pub secure_port: u16,
    /// The etcd binary.
    pub etcd_binary: PathBuf,
    /// Directory holding `rkube-apiserver` (normally the one holding `rkube`).
    pub bin_dir: PathBuf,
    /// The kubeconfig to merge the `rkube` context into; `None` for the default
    /// (`$KUBECONFIG`'s first path or `$HOME/.kube/config`).
    pub kubeconfig: Option<PathBuf>,
}

impl LabConfig {
    /// The defaults for a state directory: local etcd on 2379/2380, apiserver on 6443,
    /// `rkube-apiserver` next to the running executable.
    pub fn new(state_dir: PathBuf) -> Self {
        let bin_dir = std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(Path::to_path_buf))
            .unwrap_or_else(|| PathBuf::from("."));
        LabConfig {
            state_dir,
            etcd_servers: None,
            etcd_client_port: 2379,
            etcd_peer_port: 2380,
            secure_port: 6443,
            etcd_binary: PathBuf::from("/usr/bin/etcd"),
            bin_dir,
            kubeconfig: None,
        }
    }

    /// The apiserver's URL.
    pub fn server_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.secure_port)
    }

    fn etcd_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.etcd_client_port)
    }

    fn pki_dir(&self) -> PathBuf {
        self.state_dir.join("pki")
    }

    fn pid_file(&self, name: &str) -> PathBuf {
        self.state_dir.join("run").join(format!("{name}.pid"))
    }

    fn log_file(&self, name: &str) -> PathBuf {
        self.state_dir.join("logs").join(format!("{name}.log"))
    }

    fn recorded_kubeconfig(&self) -> PathBuf {
        self.state_dir.join("kubeconfig-path")
    }

    fn recorded_server(&self) -> PathBuf {
        self.state_dir.join("server")
    }
}

/// The processes the lab runs, in start order.
const ETCD: &str = "etcd";
const APISERVER: &str = "rkube-apiserver";
const SCHEDULER: &str = "rkube-scheduler";
const CONTROLLER_MANAGER: &str = "rkube-controller-manager";
const PROCESSES: [&str; 4] = [ETCD, APISERVER, SCHEDULER, CONTROLLER_MANAGER];

/// The control-plane components that talk to the apiserver with their own credentials.
const COMPONENTS: [(&str, Component); 2] = [
    (SCHEDULER, Component::Scheduler),
    (CONTROLLER_MANAGER, Component::ControllerManager),
];

/// What `up` did.
#[derive(Debug, Clone)]
pub struct UpReport {
    /// Everything was already running; nothing was started.
    pub already_running: bool,
    /// The processes started by this call.
    pub started: Vec<&'static str>,
    /// The kubeconfig holding the `rkube` context.
    pub kubeconfig: PathBuf,
    /// The apiserver URL.
    pub server: String,
}

/// Brings the control plane up (or finds it up), and merges the `rkube` context into
/// the user's kubeconfig.
///
/// # Errors
/// When the PKI, a process or the kubeconfig cannot be set up, or a process does not
/// become ready in time (the error carries the tail of its log).
pub async fn up(config: &LabConfig) -> Result<UpReport> {
    let apiserver_binary = config.bin_dir.join(APISERVER);
    if !apiserver_binary.is_file() {
        return Err(Error::MissingBinary {
            path: apiserver_binary,
        });
    }
    for dir in [
        config.state_dir.clone(),
        config.state_dir.join("logs"),
        config.state_dir.join("run"),
    ] {
        fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
    }
    let marker = config.state_dir.join(MARKER);
    fs::write(&marker, "rkube lab state directory\n").map_err(io_err("write", &marker))?;

    let pki = ClusterPki::load_or_generate(&config.pki_dir(), &[])?;
    let server = config.server_url();
    pki.write_kubeconfigs(&server)?;
    let record = config.recorded_server();
    fs::write(&record, &server).map_err(io_err("write", &record))?;
    let http = http_client(pki.ca_pem())?;
    let mut started = Vec::new();

    let etcd_servers = match &config.etcd_servers {
        Some(servers) => servers.clone(),
        None => {
            if running_pid(config, ETCD).is_none() {
                let child = spawn(config, ETCD, &config.etcd_binary, etcd_args(config))?;
                let health = format!("{}/health", config.etcd_url());
                wait_ready(config, ETCD, child, &http, &health).await?;
                started.push(ETCD);
            }
            vec![config.etcd_url()]
        }
    };

    if running_pid(config, APISERVER).is_none() {
        let args = apiserver_args(config, &pki, &etcd_servers);
        let child = spawn(config, APISERVER, &apiserver_binary, args)?;
        wait_ready(config, APISERVER, child, &http, &format!("{server}/readyz")).await?;
        started.push(APISERVER);
    }

    for (name, component) in COMPONENTS {
        if running_pid(config, name).is_none() {
            let binary = config.bin_dir.join(name);
            let args = vec![
                OsString::from("--kubeconfig"),
                pki.kubeconfig_path(component).into_os_string(),
            ];
            let child = spawn(config, name, &binary, args)?;
            wait_started(config, name, child).await?;
            started.push(name);
        }
    }

    let kubeconfig = match &config.kubeconfig {
        Some(path) => path.clone(),
        None => kubeconfig::default_path().ok_or(Error::NoKubeconfigPath)?,
    };
    kubeconfig::merge_into(
        &kubeconfig,
        CONTEXT_NAME,
        &server,
        pki.ca_pem(),
        pki.token(Component::Admin),
    )?;
    let record = config.recorded_kubeconfig();
    fs::write(&record, kubeconfig.as_os_str().as_encoded_bytes())
        .map_err(io_err("write", &record))?;

    Ok(UpReport {
        already_running: started.is_empty(),
        started,
        kubeconfig,
        server,
    })
}

/// What `down` did.
#[derive(Debug, Clone, Default)]
pub struct DownReport {
    /// The processes stopped, with whether SIGKILL was needed.
    pub stopped: Vec<(&'static str, bool)>,
    /// The kubeconfig the `rkube` context was removed from, if it was there.
    pub kubeconfig: Option<PathBuf>,
    /// Whether the state directory existed and was removed.
    pub removed_state: bool,
}

/// Stops every lab process (SIGTERM, then SIGKILL after [`STOP_GRACE`]), removes the
/// `rkube` context from the kubeconfig `up` wrote it to, and removes the state
/// directory.
///
/// # Errors
/// When a process cannot be signalled, the kubeconfig cannot be updated, or the state
/// directory is not one `up` made.
pub async fn down(config: &LabConfig) -> Result<DownReport> {
    let mut report = DownReport::default();
    if config.state_dir.exists() && !config.state_dir.join(MARKER).exists() {
        return Err(Error::NotAStateDir {
            path: config.state_dir.clone(),
        });
    }
    for name in PROCESSES.iter().rev() {
        if let Some(pid) = running_pid(config, name) {
            let killed = stop(name, pid).await?;
            report.stopped.push((name, killed));
        }
    }

    let recorded = fs::read(config.recorded_kubeconfig())
        .ok()
        .map(|bytes| PathBuf::from(OsString::from(String::from_utf8_lossy(&bytes).trim())));
    let kubeconfig = recorded
        .or_else(|| config.kubeconfig.clone())
        .or_else(kubeconfig::default_path);
    if let Some(path) = kubeconfig {
        if kubeconfig::remove_from(&path, CONTEXT_NAME)? {
            report.kubeconfig = Some(path);
        }
    }

    if config.state_dir.exists() {
        fs::remove_dir_all(&config.state_dir).map_err(io_err("remove", &config.state_dir))?;
        report.removed_state = true;
    }
    Ok(report)
}

/// The state of one lab process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessStatus {
    pub name: &'static str,
    /// Its pid while it runs.
    pub pid: Option<i32>,
    pub log: PathBuf,
}

/// The lab's processes, and whether the apiserver answers `/readyz`.
#[derive(Debug, Clone)]
pub struct StatusReport {
    pub processes: Vec<ProcessStatus>,
    pub apiserver_ready: bool,
    pub server: String,
}

/// Reports which lab processes run and whether the apiserver is ready.
///
/// # Errors
/// When an HTTP client cannot be built from the cluster CA.
pub async fn status(config: &LabConfig) -> Result<StatusReport> {
    let processes = PROCESSES
        .iter()
        .map(|name| ProcessStatus {
            name,
            pid: running_pid(config, name).map(Pid::as_raw),
            log: config.log_file(name),
        })
        .collect();
    let server = fs::read_to_string(config.recorded_server())
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| config.server_url());
    let apiserver_ready = match ClusterPki::load(&config.pki_dir()) {
        Ok(pki) => {
            let http = http_client(pki.ca_pem())?;
            ready(&http, &format!("{server}/readyz")).await
        }
        Err(_) => false,
    };
    Ok(StatusReport {
        processes,
        apiserver_ready,
        server,
    })
}

fn etcd_args(config: &LabConfig) -> Vec<OsString> {
    let client = config.etcd_url();
    let peer = format!("http://127.0.0.1:{}", config.etcd_peer_port);
    let mut args: Vec<OsString> = [
        "--name",
        "rkube",
        "--listen-client-urls",
        &client,
        "--advertise-client-urls",
        &client,
        "--listen-peer-urls",
        &peer,
        "--initial-advertise-peer-urls",
        &peer,
        "--initial-cluster",
        &format!("rkube={peer}"),
        "--data-dir",
    ]
    .iter()
    .map(OsString::from)
    .collect();
    args.push(config.state_dir.join("etcd").into_os_string());
    args
}

fn apiserver_args(config: &LabConfig, pki: &ClusterPki, etcd_servers: &[String]) -> Vec<OsString> {
    vec![
        "--etcd-servers".into(),
        etcd_servers.join(",").into(),
        "--secure-port".into(),
        config.secure_port.to_string().into(),
        "--tls-cert-file".into(),
        pki.apiserver_cert_path().into_os_string(),
        "--tls-private-key-file".into(),
        pki.apiserver_key_path().into_os_string(),
        "--client-ca-file".into(),
        pki.ca_cert_path().into_os_string(),
        "--token-auth-file".into(),
        pki.token_file_path().into_os_string(),
    ]
}

/// Starts `binary` detached: its own process group (a Ctrl-C of `rkube up` does not
/// reach it), stdin closed, output appended to its log, pid in its pid file.
fn spawn(
    config: &LabConfig,
    name: &'static str,
    binary: &Path,
    args: Vec<OsString>,
) -> Result<Child> {
    let log_path = config.log_file(name);
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(io_err("open", &log_path))?;
    let log_err = log.try_clone().map_err(io_err("open", &log_path))?;
    let child = Command::new(binary)
        .args(args)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .process_group(0)
        .spawn()
        .map_err(|source| Error::Spawn {
            name,
            binary: binary.to_path_buf(),
            source,
        })?;
    let pid_path = config.pid_file(name);
    fs::write(&pid_path, format!("{}\n", child.id())).map_err(io_err("write", &pid_path))?;
    Ok(child)
}

/// Polls `url` until it answers 200, failing early if the child exits.
async fn wait_ready(
    config: &LabConfig,
    name: &'static str,
    mut child: Child,
    http: &reqwest::Client,
    url: &str,
) -> Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let _ = fs::remove_file(config.pid_file(name));
            let log = config.log_file(name);
            return Err(Error::Exited {
                name,
                status,
                tail: log_tail(&log),
                log,
            });
        }
        if ready(http, url).await {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let log = config.log_file(name);
            return Err(Error::NotReady {
                name,
                timeout: READY_TIMEOUT,
                tail: log_tail(&log),
                log,
            });
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// For components without a health endpoint: fails if the child exits within its first
/// second (bad flags, no credentials), with the tail of its log.
async fn wait_started(config: &LabConfig, name: &'static str, mut child: Child) -> Result<()> {
    tokio::time::sleep(Duration::from_secs(1)).await;
    if let Ok(Some(status)) = child.try_wait() {
        let _ = fs::remove_file(config.pid_file(name));
        let log = config.log_file(name);
        return Err(Error::Exited {
            name,
            status,
            tail: log_tail(&log),
            log,
        });
    }
    Ok(())
}

async fn ready(http: &reqwest::Client, url: &str) -> bool {
    matches!(http.get(url).send().await, Ok(resp) if resp.status() == reqwest::StatusCode::OK)
}

/// An HTTP client that trusts only the cluster CA and never goes through a proxy.
fn http_client(ca_pem: &str) -> Result<reqwest::Client> {
    let ca = reqwest::Certificate::from_pem(ca_pem.as_bytes()).map_err(Error::HttpClient)?;
    reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .build()
        .map_err(Error::HttpClient)
}

/// The last lines of a log file (or why it could not be read).
fn log_tail(path: &Path) -> String {
    match fs::read_to_string(path) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
        }
        Err(e) => format!("(cannot read the log: {e})"),
    }
}

/// The pid of `name` from its pid file, if that process still runs and is `name`
/// (a reused pid of some other program does not count).
fn running_pid(config: &LabConfig, name: &str) -> Option<Pid> {
    let text = fs::read_to_string(config.pid_file(name)).ok()?;
    let pid = Pid::from_raw(text.trim().parse().ok()?);
    (alive(pid) && is_program(pid, name)).then_some(pid)
}

/// Whether `pid` exists and is not a zombie.
fn alive(pid: Pid) -> bool {
    if kill(pid, None).is_err() {
        return false;
    }
    // `/proc/<pid>/stat` is `pid (comm) state …`; `comm` may hold spaces and parens.
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_some_and(|state| state != 'Z' && state != 'X'),
        Err(_) => true,
    }
}

/// Whether the program of `pid` is called `name` (by its argv\[0\] file name).
fn is_program(pid: Pid, name: &str) -> bool {
    match fs::read(format!("/proc/{pid}/cmdline")) {
        Ok(cmdline) => cmdline
            .split(|&b| b == 0)
            .next()
            .and_then(|argv0| argv0.rsplit(|&b| b == b'/').next())
            .is_some_and(|file| file == name.as_bytes()),
        Err(_) => true,
    }
}

/// SIGTERM, wait up to [`STOP_GRACE`], then SIGKILL. Returns whether SIGKILL was needed.
async fn stop(name: &'static str, pid: Pid) -> Result<bool> {
    let signal = |sig| match kill(pid, sig) {
        Ok(()) | Err(nix::Error::ESRCH) => Ok(()),
        Err(source) => Err(Error::Signal {
            name,
            pid: pid.as_raw(),
            source,
        }),
    };
    signal(Signal::SIGTERM)?;
    if wait_gone(pid, STOP_GRACE).await {
        return Ok(false);
    }
    signal(Signal::SIGKILL)?;
    if wait_gone(pid, Duration::from_secs(5)).await {
        Ok(true)
    } else {
        Err(Error::Unkillable {
            name,
            pid: pid.as_raw(),
        })
    }
}

async fn wait_gone(pid: Pid, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if !alive(pid) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    !alive(pid)
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> Error {
    let path = path.to_path_buf();
    move |source| Error::Io {
        action,
        path,
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path) -> LabConfig {
        let mut config = LabConfig::new(dir.join("state"));
        config.kubeconfig = Some(dir.join("kubeconfig"));
        config
    }

    #[test]
    fn etcd_gets_matching_peer_flags() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = config(dir.path());
        config.etcd_client_port = 12379;
        config.etcd_peer_port = 12380;
        let args: Vec<String> = etcd_args(&config)
            .into_iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let flag = |name: &str| {
            let i = args.iter().position(|a| a == name).expect(name);
            args[i + 1].clone()
        };
        assert_eq!(flag("--listen-client-urls"), "http://127.0.0.1:12379");
        assert_eq!(flag("--listen-peer-urls"), "http://127.0.0.1:12380");
        assert_eq!(flag("--initial-cluster"), "rkube=http://127.0.0.1:12380");
        assert!(flag("--data-dir").ends_with("state/etcd"));
    }

    #[tokio::test]
    async fn spawned_process_is_tracked_and_stopped() {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = config(dir.path());
        fs::create_dir_all(config.state_dir.join("logs")).expect("mkdir");
        fs::create_dir_all(config.state_dir.join("run")).expect("mkdir");
        // `sleep` stands in for a server; it must be found by its program name.
        let mut child = spawn(&config, "sleep", Path::new("/bin/sleep"), vec!["30".into()])
            .expect("spawn sleep");
        // The child is ours at once, but it is `sleep` only once it has exec'd.
        let mut pid = running_pid(&config, "sleep");
        for _ in 0..100 {
            if pid.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            pid = running_pid(&config, "sleep");
        }
        let pid = pid.expect("running");
        assert_eq!(pid.as_raw() as u32, child.id());
        assert!(
            running_pid(&config, ETCD).is_none(),
            "no pid file, not running"
        );
        // A pid file pointing at another program does not count.
        fs::write(config.pid_file(ETCD), format!("{}\n", child.id())).expect("write");
        assert!(running_pid(&config, ETCD).is_none());

        // Reap the child concurrently so it does not linger as our zombie.
        let reaper = std::thread::spawn(move || child.wait());
        assert!(!stop("sleep", pid).await.expect("stop"), "SIGTERM suffices");
        reaper.join().expect("reaper").expect("wait");
        assert!(running_pid(&config, "sleep").is_none());
    }

    #[tokio::test]
    async fn down_refuses_foreign_directories_and_cleans_the_kubeconfig() {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = config(dir.path());
        fs::create_dir_all(&config.state_dir).expect("mkdir");
        fs::write(config.state_dir.join("precious"), "x").expect("write");
        assert!(matches!(
            down(&config).await,
            Err(Error::NotAStateDir { .. })
        ));
        assert!(config.state_dir.join("precious").exists());

        fs::write(config.state_dir.join(MARKER), "").expect("write marker");
        let kubeconfig = config.kubeconfig.clone().expect("set above");
        kubeconfig::merge_into(&kubeconfig, "other", "https://h:1", "ca", "t").expect("merge");
        kubeconfig::merge_into(&kubeconfig, CONTEXT_NAME, "https://h:2", "ca", "t").expect("merge");
        let report = down(&config).await.expect("down");
        assert!(report.removed_state);
        assert!(!config.state_dir.exists());
        assert_eq!(report.kubeconfig.as_deref(), Some(kubeconfig.as_path()));
        let text = fs::read_to_string(&kubeconfig).expect("read");
        assert!(text.contains("other") && !text.contains("https://h:2"));
    }

    #[tokio::test]
    async fn up_fails_with_the_log_tail_when_etcd_cannot_start() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = config(dir.path());
        // `false` exits at once, like an etcd whose port is taken.
        config.etcd_binary = PathBuf::from("/bin/false");
        config.bin_dir = dir.path().join("bin");
        match up(&config).await {
            Err(Error::MissingBinary { path }) => assert!(path.ends_with(APISERVER)),
            other => panic!("want a missing binary, got {other:?}"),
        }
        assert!(
            !config.state_dir.exists(),
            "nothing started without the apiserver"
        );
        fs::create_dir_all(&config.bin_dir).expect("mkdir");
        fs::write(config.bin_dir.join(APISERVER), "").expect("write stand-in binary");
        match up(&config).await {
            Err(Error::Exited { name, .. }) => assert_eq!(name, ETCD),
            other => panic!("want an early exit, got {other:?}"),
        }
        assert!(config.state_dir.join("pki").join(pki::CA_CERT).exists());
    }
}
