//! The runtime's side of [`crate::shim::spawner`]: one `shim spawner` process, started
//! on first use, forks each `run`, `pause` and `delete` helper, so that a start does not
//! execute the agent binary again. When the spawner cannot take a request (it could not
//! be started, or died), [`Spawner::run`] says so without having run anything, and the
//! caller executes the helper as before.

use std::ffi::OsStr;
use std::io::IoSlice;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::process::Stdio;

use nix::fcntl::{FcntlArg, FdFlag};
use nix::sys::socket::{AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType};
use tokio::io::AsyncReadExt;

pub use crate::shim::spawner::Reply;

/// What asking the spawner can fail with once it took the request.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("could not read the spawned helper's reply")]
    Read(#[source] std::io::Error),
    #[error("the spawner stopped before the helper's launcher ended")]
    Gone,
}

/// Starts helpers through a `shim spawner` process of `binary`.
#[derive(Debug)]
pub struct Spawner {
    binary: PathBuf,
    process: parking_lot::Mutex<Option<Process>>,
}

#[derive(Debug)]
struct Process {
    control: OwnedFd,
    child: tokio::process::Child,
}

impl Spawner {
    /// A spawner of `binary`'s helpers; its process starts with the first request.
    pub fn new(binary: PathBuf) -> Self {
        Spawner {
            binary,
            process: parking_lot::Mutex::new(None),
        }
    }

    /// Has `shim <command> <args>` run by a forked helper and returns how its launcher
    /// ended. `Ok(None)`: the spawner did not take the request and nothing ran.
    ///
    /// # Errors
    /// When the spawner took the request but its reply was lost: the helper may or
    /// may not have started.
    pub async fn run(&self, command: &str, args: &[&OsStr]) -> Result<Option<Reply>, Error> {
        let Some(request) = crate::shim::spawner::encode_args(
            std::iter::once(OsStr::new(command)).chain(args.iter().copied()),
        ) else {
            return Ok(None);
        };
        let Ok((ours, theirs)) = nix::sys::socket::socketpair(
            AddressFamily::Unix,
            SockType::Stream,
            None,
            SockFlag::SOCK_CLOEXEC,
        ) else {
            return Ok(None);
        };
        if !self.hand_over(&request, &theirs) {
            return Ok(None);
        }
        drop(theirs);
        let mut reply = Vec::new();
        let stream = std::os::unix::net::UnixStream::from(ours);
        stream.set_nonblocking(true).map_err(Error::Read)?;
        let mut stream = tokio::net::UnixStream::from_std(stream).map_err(Error::Read)?;
        stream.read_to_end(&mut reply).await.map_err(Error::Read)?;
        Reply::parse(&reply).map(Some).ok_or(Error::Gone)
    }

    /// Sends one request with its reply socket; false when no spawner took it.
    fn hand_over(&self, request: &[u8], reply: &OwnedFd) -> bool {
        let mut process = self.process.lock();
        if let Some(running) = process.as_mut() {
            if !matches!(running.child.try_wait(), Ok(None)) {
                tracing::warn!("the helper spawner exited; starting another");
                *process = None;
            }
        }
        if process.is_none() {
            match start(&self.binary) {
                Ok(started) => *process = Some(started),
                Err(err) => {
                    tracing::warn!(error = %err, "could not start the helper spawner");
                    return false;
                }
            }
        }
        let Some(running) = process.as_ref() else {
            return false;
        };
        let fds = [reply.as_raw_fd()];
        let sent = nix::sys::socket::sendmsg::<()>(
            running.control.as_raw_fd(),
            &[IoSlice::new(request)],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
            None,
        );
        match sent {
            Ok(_) => true,
            Err(err) => {
                tracing::warn!(error = %err, "the helper spawner did not take a request");
                *process = None;
                false
            }
        }
    }
}

/// Starts `binary shim spawner` with the far end of a new control socket.
#[allow(unsafe_code)]
fn start(binary: &std::path::Path) -> std::io::Result<Process> {
    let (control, theirs) = nix::sys::socket::socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?;
    let fd = theirs.as_raw_fd();
    let mut cmd = tokio::process::Command::new(binary);
    cmd.arg("shim")
        .arg("spawner")
        .arg("--control-fd")
        .arg(fd.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .kill_on_drop(false);
    // SAFETY: runs in the forked child before exec and only calls fcntl, which is
    // async-signal-safe; `fd` stays open in the parent until after the spawn.
    unsafe {
        cmd.pre_exec(move || {
            let fd = BorrowedFd::borrow_raw(fd);
            nix::fcntl::fcntl(fd, FcntlArg::F_SETFD(FdFlag::empty()))?;
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    drop(theirs);
    tracing::debug!(pid = child.id(), "started the helper spawner");
    Ok(Process { control, child })
}
