//! `shim exec`: runs one command in a running container with libcontainer's tenant
//! builder, so that it joins the container's namespaces and cgroup with the privileges
//! of the container's own process (its `config.json` process, with the arguments
//! replaced), then waits for it and reports how it ended.
//!
//! The agent starts this helper as a child (not detached) and talks to it over a Unix
//! socket (`--dir`/`control.sock`) that the agent listens on: the helper sends
//! [`ExecEvent`]s as JSON lines — [`ExecEvent::Started`] (with the pty master attached
//! as `SCM_RIGHTS` when `--tty`), then [`ExecEvent::Exited`], or [`ExecEvent::Failed`]
//! when the command could not be started. Without a TTY the command inherits the
//! helper's stdin, stdout and stderr, which are pipes the agent holds; with one,
//! libcontainer hands the pty master over a console socket (`--dir`/`console.sock`)
//! and the helper passes it on to the agent, which reads, writes and resizes it.
//!
//! The helper never writes to its stderr while the command may run (that is the
//! command's stderr): failures travel on the control socket.

use std::io::{IoSlice, IoSliceMut, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;
use libcontainer::workload::default::get_executor;
use libcontainer::workload::{Executor, ExecutorError, ExecutorValidationError};
use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags};
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use super::{io, sys, Error, Result};

/// The control socket under `--dir`.
pub const CONTROL_SOCKET: &str = "control.sock";
/// The console socket under `--dir` (TTY only).
pub const CONSOLE_SOCKET: &str = "console.sock";
/// The process description under `--dir`.
const PROCESS_FILE: &str = "process.json";

/// Arguments of `shim exec`.
#[derive(Debug, clap::Args)]
pub struct ExecArgs {
    /// The container id.
    #[arg(long)]
    pub id: String,
    /// The container's bundle, whose `config.json` process is the template.
    #[arg(long)]
    pub bundle: PathBuf,
    /// libcontainer's state root.
    #[arg(long)]
    pub root: PathBuf,
    /// A private directory holding the control socket the agent listens on.
    #[arg(long)]
    pub dir: PathBuf,
    /// Run the command on a new terminal.
    #[arg(long)]
    pub tty: bool,
    /// The terminal's initial width, set before the command starts.
    #[arg(long, requires = "height")]
    pub width: Option<u16>,
    /// The terminal's initial height.
    #[arg(long, requires = "width")]
    pub height: Option<u16>,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

/// What the helper tells the agent, one JSON object per line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExecEvent {
    /// The command runs as host process `pid`; with a TTY the pty master is attached.
    Started { pid: i32 },
    /// It ended with `exit_code` (128 + the signal when killed).
    Exited { exit_code: i32 },
    /// It could not be started.
    Failed { message: String },
}

/// Runs the command and reports on the control socket. Only a failure to reach the
/// agent at all is returned as an error (and printed on stderr).
///
/// # Errors
/// When the control socket cannot be connected.
pub fn run(args: &ExecArgs) -> Result<()> {
    let control_path = args.dir.join(CONTROL_SOCKET);
    let mut control = UnixStream::connect(&control_path).map_err(io(&control_path))?;
    let (pid, master) = match start(args) {
        Ok(started) => started,
        Err(err) => {
            let _ = send(
                &mut control,
                &ExecEvent::Failed {
                    message: chain(&err),
                },
                None,
            );
            return Ok(());
        }
    };
    // The agent may be gone (the client hung up); the command still gets reaped.
    let _ = send(
        &mut control,
        &ExecEvent::Started { pid: pid.as_raw() },
        master.as_ref(),
    );
    drop(master);
    let exit_code = loop {
        match nix::sys::wait::waitpid(pid, None) {
            Ok(WaitStatus::Exited(_, code)) => break code,
            Ok(WaitStatus::Signaled(_, signal, _)) => break 128 + signal as i32,
            Ok(_) | Err(nix::Error::EINTR) => continue,
            Err(source) => {
                let err = sys("wait for the command")(source);
                let _ = send(
                    &mut control,
                    &ExecEvent::Failed {
                        message: chain(&err),
                    },
                    None,
                );
                return Ok(());
            }
        }
    };
    let _ = send(&mut control, &ExecEvent::Exited { exit_code }, None);
    Ok(())
}

/// The error and its causes on one line.
fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Starts the command in the container; returns its pid and, with a TTY, the pty master.
fn start(args: &ExecArgs) -> Result<(Pid, Option<OwnedFd>)> {
    let process_path = args.dir.join(PROCESS_FILE);
    write_process(&args.bundle, &process_path, &args.command, args.tty)?;
    let console_path = args.dir.join(CONSOLE_SOCKET);
    let console = if args.tty {
        Some(UnixListener::bind(&console_path).map_err(io(&console_path))?)
    } else {
        None
    };
    let libcontainer = |operation| {
        move |source| Error::Libcontainer {
            operation,
            id: args.id.clone(),
            source: Box::new(source),
        }
    };
    let pid = ContainerBuilder::new(args.id.clone(), SyscallType::default())
        .with_root_path(&args.root)
        .map_err(libcontainer("set the state root of"))?
        .with_console_socket(args.tty.then_some(&console_path))
        .with_executor(SizedTerminal {
            size: args.width.zip(args.height).filter(|_| args.tty),
        })
        .as_tenant()
        // libcontainer wants a console socket only for detached terminals; the helper
        // still waits for the process, which is its child either way.
        .with_detach(args.tty)
        .with_process(Some(&process_path))
        .build()
        .map_err(libcontainer("exec in"))?;
    let pid = Pid::from_raw(pid.as_raw());
    let master = match console {
        Some(listener) => Some(receive_master(&listener, &console_path)?),
        None => None,
    };
    Ok((pid, master))
}

/// libcontainer's default workload, after giving the terminal its initial size: this
/// runs in the container's process just before it execs the command, so the command
/// never sees the terminal without its size (libcontainer ignores `consoleSize`).
#[derive(Clone)]
struct SizedTerminal {
    /// Width and height.
    size: Option<(u16, u16)>,
}

impl Executor for SizedTerminal {
    fn exec(&self, spec: &oci_spec::runtime::Spec) -> Result<(), ExecutorError> {
        if let Some((width, height)) = self.size {
            // The terminal is stdin by now; a failure only leaves the size unset.
            let _ = rustix::termios::tcsetwinsize(
                std::io::stdin(),
                rustix::termios::Winsize {
                    ws_row: height,
                    ws_col: width,
                    ws_xpixel: 0,
                    ws_ypixel: 0,
                },
            );
        }
        get_executor().exec(spec)
    }

    fn validate(&self, spec: &oci_spec::runtime::Spec) -> Result<(), ExecutorValidationError> {
        get_executor().validate(spec)
    }
}

/// Writes the container's own process with `command` as its arguments to `path`.
fn write_process(bundle: &Path, path: &Path, command: &[String], tty: bool) -> Result<()> {
    let config = bundle.join("config.json");
    let spec = oci_spec::runtime::Spec::load(&config).map_err(|source| Error::Io {
        path: config.clone(),
        source: std::io::Error::other(source),
    })?;
    let mut process = spec.process().clone().unwrap_or_default();
    process.set_args(Some(command.to_vec()));
    process.set_terminal(Some(tty));
    process.set_console_size(None);
    let text = serde_json::to_vec(&process).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source: std::io::Error::other(source),
    })?;
    std::fs::write(path, text).map_err(io(path))
}

/// Accepts libcontainer's connection on the console socket and takes the pty master
/// it sent (it connected and sent during `build`, so this does not block for long).
fn receive_master(listener: &UnixListener, path: &Path) -> Result<OwnedFd> {
    let (stream, _) = listener.accept().map_err(io(path))?;
    let mut buf = [0u8; 64];
    let mut iov = [IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let message = nix::sys::socket::recvmsg::<()>(
        stream.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(sys("receive the pty master"))?;
    let mut fds = Vec::new();
    for cmsg in message.cmsgs().map_err(sys("receive the pty master"))? {
        if let ControlMessageOwned::ScmRights(received) = cmsg {
            fds.extend(received);
        }
    }
    let mut owned = fds.into_iter().map(owned_fd);
    let master = owned.next().ok_or(Error::Sys {
        operation: "receive the pty master",
        source: nix::Error::EBADMSG,
    })?;
    // Any extra descriptor is closed as `owned` drops.
    Ok(master)
}

/// Takes ownership of a descriptor the kernel just installed for this process.
#[allow(unsafe_code)]
pub(crate) fn owned_fd(fd: RawFd) -> OwnedFd {
    // SAFETY: `fd` came from SCM_RIGHTS: the kernel installed it in this process and
    // nothing else refers to it yet.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Sends `event` as a JSON line, with `fd` attached when given.
fn send(control: &mut UnixStream, event: &ExecEvent, fd: Option<&OwnedFd>) -> Result<()> {
    let mut line = serde_json::to_vec(event).map_err(|source| Error::Io {
        path: PathBuf::from(CONTROL_SOCKET),
        source: std::io::Error::other(source),
    })?;
    line.push(b'\n');
    match fd {
        None => control
            .write_all(&line)
            .map_err(io(Path::new(CONTROL_SOCKET))),
        Some(fd) => {
            let fds = [fd.as_raw_fd()];
            let iov = [IoSlice::new(&line)];
            let cmsg = [ControlMessage::ScmRights(&fds)];
            let sent = nix::sys::socket::sendmsg::<()>(
                control.as_raw_fd(),
                &iov,
                &cmsg,
                MsgFlags::empty(),
                None,
            )
            .map_err(sys("send the pty master"))?;
            if sent < line.len() {
                control
                    .write_all(&line[sent..])
                    .map_err(io(Path::new(CONTROL_SOCKET)))?;
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_json_lines() {
        let text = serde_json::to_string(&ExecEvent::Exited { exit_code: 3 }).expect("encode");
        assert_eq!(text, r#"{"exited":{"exit_code":3}}"#);
        let back: ExecEvent = serde_json::from_str(r#"{"started":{"pid":42}}"#).expect("decode");
        assert_eq!(back, ExecEvent::Started { pid: 42 });
    }
}
