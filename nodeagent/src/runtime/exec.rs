//! Running a command in a running container, agent side: starts the `shim exec` helper
//! (see [`crate::shim::exec`]) as a child with pipes for the command's stdin, stdout
//! and stderr — or, with a TTY, receives the pty master from it — and follows the
//! helper's [`ExecEvent`]s on a private control socket to learn the command's pid and
//! exit code. The container's main process and its `shim run` helper are not involved.

use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::sys::socket::{ControlMessageOwned, MsgFlags};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;
use tracing::debug;

use crate::shim::exec::{owned_fd, ExecEvent, CONTROL_SOCKET};

/// How long the helper may take to connect to the control socket.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What starting or following an exec can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("container is not running")]
    NotRunning,
    #[error("i/o error on {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("could not run {binary}")]
    Spawn {
        binary: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The command could not be started (no such executable, …): the helper's reason.
    #[error("{0}")]
    Start(String),
    #[error("the exec helper stopped without reporting ({0})")]
    HelperGone(String),
    #[error("failed to resize the terminal")]
    Resize(#[source] std::io::Error),
}

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A terminal's size in characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TerminalSize {
    pub width: u16,
    pub height: u16,
}

/// What to run and how to connect it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecRequest {
    pub command: Vec<String>,
    /// Give the command a stdin the caller writes to (else `/dev/null`).
    pub stdin: bool,
    /// Run it on a new terminal: stdout carries the terminal's output, no stderr.
    pub tty: bool,
    /// The terminal's initial size.
    pub size: Option<TerminalSize>,
}

/// Where a running exec helper is found: what [`start`] needs from the runtime.
#[derive(Debug, Clone)]
pub struct ExecTarget<'a> {
    pub shim: &'a Path,
    pub id: &'a str,
    pub bundle: &'a Path,
    pub libcontainer_root: &'a Path,
    /// Parent of the per-exec private directories.
    pub exec_root: &'a Path,
}

/// A command running in a container.
pub struct ExecProcess {
    /// The command's stdin (the terminal's input with a TTY), when asked for.
    pub stdin: Option<Pin<Box<dyn AsyncWrite + Send>>>,
    /// The command's stdout (the terminal's output with a TTY).
    pub stdout: Option<Pin<Box<dyn AsyncRead + Send>>>,
    /// The command's stderr (none with a TTY).
    pub stderr: Option<Pin<Box<dyn AsyncRead + Send>>>,
    terminal: Option<OwnedFd>,
    events: mpsc::UnboundedReceiver<ExecEvent>,
    pid: i32,
    exit_code: Option<i32>,
    child: tokio::process::Child,
    dir: PathBuf,
}

impl std::fmt::Debug for ExecProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecProcess")
            .field("pid", &self.pid)
            .field("tty", &self.terminal.is_some())
            .field("exit_code", &self.exit_code)
            .finish()
    }
}

impl ExecProcess {
    /// The command's host pid.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Sets the terminal's size (nothing without a TTY).
    ///
    /// # Errors
    /// When the ioctl fails.
    pub fn resize(&self, size: TerminalSize) -> Result<()> {
        if let Some(terminal) = &self.terminal {
            set_size(terminal, size)?;
        }
        Ok(())
    }

    /// A handle that resizes the terminal while the process is waited for (none
    /// without a TTY).
    pub fn resizer(&self) -> Option<Resizer> {
        self.terminal
            .as_ref()
            .and_then(|t| t.try_clone().ok())
            .map(Resizer)
    }

    /// Waits for the command to end; its exit code (128 + the signal when killed).
    ///
    /// # Errors
    /// When the helper stopped without reporting an exit.
    pub async fn wait(&mut self) -> Result<i32> {
        if let Some(code) = self.exit_code {
            return Ok(code);
        }
        loop {
            match self.events.recv().await {
                Some(ExecEvent::Exited { exit_code }) => {
                    self.exit_code = Some(exit_code);
                    let _ = self.child.wait().await;
                    return Ok(exit_code);
                }
                Some(ExecEvent::Failed { message }) => return Err(Error::HelperGone(message)),
                Some(ExecEvent::Started { .. }) => {}
                None => {
                    let status = self.child.wait().await;
                    return Err(Error::HelperGone(format!("{status:?}")));
                }
            }
        }
    }

    /// Kills the command (SIGKILL) unless it already ended.
    pub fn kill(&self) {
        if self.exit_code.is_none() {
            // The helper reaps the command only just before it reports the exit, so
            // until then the pid is the command's.
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid), Signal::SIGKILL);
        }
    }
}

impl Drop for ExecProcess {
    fn drop(&mut self) {
        // An abandoned exec (the client went away) does not keep running.
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

static NEXT: AtomicU64 = AtomicU64::new(0);

/// Starts `request` in the container `target` names; returns once the command runs.
///
/// # Errors
/// When the helper cannot be started, or it reports that the command could not be.
pub async fn start(target: &ExecTarget<'_>, request: &ExecRequest) -> Result<ExecProcess> {
    let dir = target.exec_root.join(format!(
        "{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    match start_in(target, request, &dir).await {
        Ok(process) => Ok(process),
        Err(err) => {
            let _ = std::fs::remove_dir_all(&dir);
            Err(err)
        }
    }
}

async fn start_in(
    target: &ExecTarget<'_>,
    request: &ExecRequest,
    dir: &Path,
) -> Result<ExecProcess> {
    let control = dir.join(CONTROL_SOCKET);
    let listener = tokio::net::UnixListener::bind(&control).map_err(io(&control))?;
    let mut cmd = tokio::process::Command::new(target.shim);
    cmd.arg("shim")
        .arg("exec")
        .arg("--id")
        .arg(target.id)
        .arg("--bundle")
        .arg(target.bundle)
        .arg("--root")
        .arg(target.libcontainer_root)
        .arg("--dir")
        .arg(dir);
    if request.tty {
        cmd.arg("--tty");
        if let Some(size) = request.size {
            cmd.arg("--width")
                .arg(size.width.to_string())
                .arg("--height")
                .arg(size.height.to_string());
        }
    }
    cmd.arg("--").args(&request.command);
    let piped = |wanted: bool| {
        if wanted {
            Stdio::piped()
        } else {
            Stdio::null()
        }
    };
    cmd.stdin(piped(request.stdin && !request.tty))
        .stdout(piped(!request.tty))
        .stderr(piped(!request.tty));
    let mut child = cmd.spawn().map_err(|source| Error::Spawn {
        binary: target.shim.to_path_buf(),
        source,
    })?;
    // Taken first: `Child::wait` closes a stdin it still holds.
    let stdin = child.stdin.take();
    let accepted = tokio::select! {
        accepted = tokio::time::timeout(CONNECT_TIMEOUT, listener.accept()) => accepted,
        status = child.wait() => {
            return Err(Error::HelperGone(format!("{status:?}")));
        }
    };
    let stream = match accepted {
        Ok(Ok((stream, _))) => stream,
        Ok(Err(source)) => return Err(io(&control)(source)),
        Err(_) => {
            let _ = child.start_kill();
            return Err(Error::HelperGone("it did not connect".into()));
        }
    };
    let stream = stream.into_std().map_err(io(&control))?;
    stream.set_nonblocking(false).map_err(io(&control))?;
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let (fd_tx, mut fds) = mpsc::unbounded_channel();
    tokio::task::spawn_blocking(move || read_events(stream, events_tx, fd_tx));
    let pid = match events.recv().await {
        Some(ExecEvent::Started { pid }) => pid,
        Some(ExecEvent::Failed { message }) => return Err(Error::Start(message)),
        Some(ExecEvent::Exited { .. }) | None => {
            let status = child.wait().await;
            return Err(Error::HelperGone(format!("{status:?}")));
        }
    };
    debug!(pid, tty = request.tty, "exec started");
    let mut process = ExecProcess {
        stdin: None,
        stdout: None,
        stderr: None,
        terminal: None,
        events,
        pid,
        exit_code: None,
        child,
        dir: dir.to_path_buf(),
    };
    if request.tty {
        let master = fds
            .try_recv()
            .map_err(|_| Error::Start("the helper sent no terminal".into()))?;
        if let Some(size) = request.size {
            set_size(&master, size)?;
        }
        let file = std::fs::File::from(master);
        let reader = file.try_clone().map_err(io(dir))?;
        let writer = file.try_clone().map_err(io(dir))?;
        process.terminal = Some(file.into());
        process.stdout = Some(Box::pin(Terminal(tokio::fs::File::from_std(reader))));
        if request.stdin {
            process.stdin = Some(Box::pin(tokio::fs::File::from_std(writer)));
        }
    } else {
        let child = &mut process.child;
        if let Some(stdin) = stdin {
            process.stdin = Some(Box::pin(stdin));
        }
        if let Some(stdout) = child.stdout.take() {
            process.stdout = Some(Box::pin(stdout));
        }
        if let Some(stderr) = child.stderr.take() {
            process.stderr = Some(Box::pin(stderr));
        }
    }
    Ok(process)
}

/// Reads the helper's JSON lines (and any descriptors attached to them) until it closes
/// the socket.
fn read_events(
    stream: std::os::unix::net::UnixStream,
    events: mpsc::UnboundedSender<ExecEvent>,
    fds: mpsc::UnboundedSender<OwnedFd>,
) {
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let mut space = nix::cmsg_space!([RawFd; 2]);
        let mut iov = [IoSliceMut::new(&mut buf)];
        let received = match nix::sys::socket::recvmsg::<()>(
            stream.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(message) => {
                if let Ok(cmsgs) = message.cmsgs() {
                    for cmsg in cmsgs {
                        if let ControlMessageOwned::ScmRights(received) = cmsg {
                            for fd in received {
                                // Sent before the event that announces it.
                                let _ = fds.send(owned_fd(fd));
                            }
                        }
                    }
                }
                message.bytes
            }
            Err(nix::Error::EINTR) => continue,
            Err(_) => 0,
        };
        if received == 0 {
            return;
        }
        pending.extend_from_slice(&buf[..received]);
        while let Some(newline) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=newline).collect();
            match serde_json::from_slice::<ExecEvent>(&line) {
                Ok(event) => {
                    if events.send(event).is_err() {
                        return;
                    }
                }
                Err(err) => debug!(error = %err, "ignoring a malformed exec event"),
            }
        }
    }
}

/// Resizes an exec's terminal (a descriptor of its pty master).
#[derive(Debug)]
pub struct Resizer(OwnedFd);

impl Resizer {
    /// Sets the terminal's size.
    ///
    /// # Errors
    /// When the ioctl fails.
    pub fn resize(&self, size: TerminalSize) -> Result<()> {
        set_size(&self.0, size)
    }
}

/// TIOCSWINSZ on the pty master.
fn set_size(terminal: &impl std::os::fd::AsFd, size: TerminalSize) -> Result<()> {
    rustix::termios::tcsetwinsize(
        terminal,
        rustix::termios::Winsize {
            ws_row: size.height,
            ws_col: size.width,
            ws_xpixel: 0,
            ws_ypixel: 0,
        },
    )
    .map_err(|errno| Error::Resize(errno.into()))
}

/// A pty master read as a stream: EIO (every slave closed, the command ended) is its end.
struct Terminal(tokio::fs::File);

impl AsyncRead for Terminal {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match Pin::new(&mut self.0).poll_read(cx, buf) {
            Poll::Ready(Err(err)) if err.raw_os_error() == Some(nix::libc::EIO) => {
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

/// Output collected by [`collect_output`], cut at `limit` bytes.
#[derive(Debug, Default)]
pub struct CappedOutput {
    pub bytes: Vec<u8>,
    pub limit: usize,
}

impl CappedOutput {
    /// Appends what fits under the limit; the rest is dropped.
    pub fn push(&mut self, data: &[u8]) {
        let room = self.limit.saturating_sub(self.bytes.len());
        self.bytes.extend_from_slice(&data[..data.len().min(room)]);
    }
}

/// Reads `stdout` and `stderr` to their ends into one buffer, interleaved as they
/// arrive, keeping at most `limit` bytes.
pub async fn collect_output(
    stdout: Option<Pin<Box<dyn AsyncRead + Send>>>,
    stderr: Option<Pin<Box<dyn AsyncRead + Send>>>,
    limit: usize,
) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut output = CappedOutput {
        bytes: Vec::new(),
        limit,
    };
    let mut streams = [stdout, stderr];
    let mut bufs = [vec![0u8; 4096], vec![0u8; 4096]];
    loop {
        let [a, b] = &mut streams;
        let [buf_a, buf_b] = &mut bufs;
        let read = match (a.as_mut(), b.as_mut()) {
            (None, None) => break,
            (Some(a), None) => (0, a.read(buf_a).await),
            (None, Some(b)) => (1, b.read(buf_b).await),
            (Some(a), Some(b)) => tokio::select! {
                n = a.read(buf_a) => (0, n),
                n = b.read(buf_b) => (1, n),
            },
        };
        match read {
            (index, Ok(0)) | (index, Err(_)) => streams[index] = None,
            (index, Ok(n)) => output.push(&bufs[index][..n]),
        }
    }
    output.bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capped_output_keeps_the_first_bytes() {
        let mut output = CappedOutput {
            bytes: Vec::new(),
            limit: 5,
        };
        output.push(b"abc");
        output.push(b"defg");
        output.push(b"h");
        assert_eq!(output.bytes, b"abcde");
    }

    #[tokio::test]
    async fn output_of_both_streams_is_collected() {
        let out: Pin<Box<dyn AsyncRead + Send>> = Box::pin(&b"out\n"[..]);
        let err: Pin<Box<dyn AsyncRead + Send>> = Box::pin(&b"err\n"[..]);
        let text = collect_output(Some(out), Some(err), 1024).await;
        assert_eq!(text.len(), 8);
        let text = String::from_utf8(text).expect("utf-8");
        assert!(text.contains("out\n") && text.contains("err\n"), "{text}");
    }
}
