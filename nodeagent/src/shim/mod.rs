//! The `shim` helper: the agent binary re-executed as `rkube-nodeagent shim <command>`,
//! single-threaded and without tokio, because libcontainer must never run inside the
//! agent's multi-threaded process (it changes the working directory, marks the caller
//! non-dumpable and forks with a raw clone).
//!
//! - [`container`]: `shim run` creates and starts a container with libcontainer, stays
//!   its parent, writes its output to a CRI-format [`log`] and its exit to the state
//!   files of [`crate::runtime::state`], then deletes the libcontainer state and cgroup;
//!   `shim delete` cleans up after a helper that died.
//!   A second after its container started, it hands back what creating it needed
//!   ([`memory`]).
//! - [`pause`]: `shim pause` holds a pod sandbox's network, IPC and UTS namespaces.
//! - [`exec`]: `shim exec` runs a command in a running container (a child of the agent,
//!   not detached) and reports its exit on a control socket.
//! - [`spawner`]: `shim spawner`, started once per runtime, forks `run`, `pause` and
//!   `delete` helpers on request instead of the agent executing its binary for each.
//!
//! Long-lived helpers [`detach`]: the process the agent started (the launcher) exits as
//! soon as the helper reports that it is ready (status 0) or failed (status 1, the
//! reason on stderr), while the helper itself lives on in its own session, outliving
//! an agent restart.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use nix::fcntl::OFlag;
use nix::unistd::ForkResult;

pub mod container;
pub mod exec;
pub mod log;
pub mod memory;
pub mod pause;
pub mod spawner;

/// What a helper can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to {operation}")]
    Sys {
        operation: &'static str,
        #[source]
        source: nix::Error,
    },
    #[error("i/o error on {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to {operation} container {id}")]
    Libcontainer {
        operation: &'static str,
        id: String,
        #[source]
        source: Box<libcontainer::error::LibcontainerError>,
    },
    #[error(transparent)]
    State(#[from] crate::runtime::state::Error),
}

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn sys(operation: &'static str) -> impl FnOnce(nix::Error) -> Error {
    move |source| Error::Sys { operation, source }
}

pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The helper's commands (`rkube-nodeagent shim <command>`).
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Create and start a container from its OCI bundle and stay its parent.
    Run(container::RunArgs),
    /// Delete what libcontainer left of a container whose helper died.
    Delete(container::DeleteArgs),
    /// Hold new network, IPC and UTS namespaces for a pod sandbox.
    Pause(pause::PauseArgs),
    /// Run a command in a running container and report how it ended.
    Exec(exec::ExecArgs),
    /// Fork helpers on the runtime's requests (started once per runtime).
    Spawner(spawner::SpawnerArgs),
}

/// `shim <command>` on its own, for binaries that embed the helper (the tests).
#[derive(Debug, Parser)]
#[command(name = "shim")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Runs the helper from a full argument list whose first element is `shim`.
pub fn main_from_args<I: IntoIterator<Item = OsString>>(args: I) -> ExitCode {
    main(Cli::parse_from(args).command)
}

/// Runs one helper command. Never call it from a multi-threaded process.
pub fn main(command: Command) -> ExitCode {
    let result = match command {
        Command::Run(args) => container::run(&args),
        Command::Delete(args) => container::delete(&args),
        Command::Pause(args) => pause::run(&args),
        Command::Exec(args) => exec::run(&args),
        Command::Spawner(args) => spawner::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            report(&err);
            ExitCode::FAILURE
        }
    }
}

/// Prints `err` and its causes to stderr (the launcher's, or the helper's log file).
fn report(err: &dyn std::error::Error) {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    eprintln!("rkube shim: {text}");
}

/// The detached helper's promise to tell its launcher how starting went.
#[derive(Debug)]
pub struct Ready(Option<OwnedFd>);

impl Ready {
    /// Tells the launcher that the helper is ready: it exits with status 0.
    pub fn ok(mut self) {
        self.send(b"ok");
    }

    /// Tells the launcher why the helper failed: it prints that and exits with status 1.
    pub fn fail(mut self, err: &dyn std::error::Error) {
        report(err);
        let mut text = err.to_string();
        let mut source = err.source();
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        self.send(text.as_bytes());
    }

    fn send(&mut self, message: &[u8]) {
        if let Some(fd) = self.0.take() {
            // The launcher may be gone already (killed with the agent); nothing to do then.
            let _ = std::fs::File::from(fd).write_all(message);
        }
    }
}

/// Splits the helper from the process the agent started. In the launcher (the parent)
/// this never returns: it waits for the helper's [`Ready`] message and exits with it. In
/// the helper (the child) it returns after starting a new session and sending stdin to
/// `/dev/null` and stdout and stderr to `log`, so that the agent, which reads the
/// launcher's stderr to its end, is not kept waiting by the helper.
///
/// # Errors
/// When the pipe, the fork, the new session or the redirection fails.
pub fn detach(log: &Path) -> Result<Ready> {
    let (reader, writer) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(sys("create a pipe"))?;
    if let ForkResult::Parent { .. } = fork()? {
        drop(writer);
        let mut message = String::new();
        let read = std::fs::File::from(reader).read_to_string(&mut message);
        match (read, message.as_str()) {
            (Ok(_), "ok") => std::process::exit(0),
            (Ok(_), "") | (Err(_), _) => eprintln!(
                "rkube shim: the helper stopped before it was ready; see {}",
                log.display()
            ),
            (Ok(_), text) => eprintln!("{text}"),
        }
        std::process::exit(1);
    }
    drop(reader);
    nix::unistd::setsid().map_err(sys("start a new session"))?;
    let null = std::fs::File::open("/dev/null").map_err(io(Path::new("/dev/null")))?;
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(io(log))?;
    nix::unistd::dup2_stdin(&null).map_err(sys("redirect stdin"))?;
    nix::unistd::dup2_stdout(&out).map_err(sys("redirect stdout"))?;
    nix::unistd::dup2_stderr(&out).map_err(sys("redirect stderr"))?;
    Ok(Ready(Some(writer)))
}

#[allow(unsafe_code)]
fn fork() -> Result<ForkResult> {
    // SAFETY: the helper is single-threaded (no tokio, no threads started before this),
    // so the child may run any code after the fork.
    unsafe { nix::unistd::fork() }.map_err(sys("fork the helper"))
}
