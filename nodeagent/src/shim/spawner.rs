//! `shim spawner`: a helper started once per runtime that forks the other helpers on
//! request, so that starting a container or a sandbox does not execute the agent binary
//! again (loading, relocating and initialising it cost about 2 ms of every start).
//!
//! The runtime ([`crate::runtime::spawner`]) holds one end of a `SOCK_SEQPACKET` pair;
//! the spawner gets the other as `--control-fd`. A request is one message: the helper's
//! arguments (what follows `shim` on a command line), each ended by a NUL, with one
//! descriptor attached, the reply socket. The spawner forks; the child puts the reply
//! socket on its stderr, runs the command as `rkube-nodeagent shim <args>` would and
//! exits. Once the child is reaped the spawner writes a NUL and its status (`exit 0`,
//! `signal SIGKILL`) to the reply socket and closes it. The runtime thus reads what an
//! executed launcher would have printed, then how it ended.
//!
//! The spawner is single-threaded like every helper; it keeps nothing between requests
//! but the reply sockets of children not yet reaped. When the runtime's end closes (the
//! agent exited) it exits too; the helpers it started live on.

use std::collections::HashMap;
use std::io::{IoSliceMut, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::process::ExitCode;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::socket::{ControlMessageOwned, MsgFlags};
use nix::sys::wait::{WaitPidFlag, WaitStatus};
use nix::unistd::{ForkResult, Pid};

use super::{sys, Result};

/// The largest request the spawner reads; arguments are paths and ids, far below it.
pub const MAX_REQUEST: usize = 64 * 1024;

/// Arguments of `shim spawner`.
#[derive(Debug, clap::Args)]
pub struct SpawnerArgs {
    /// The descriptor of the request socket the runtime left open for this process.
    #[arg(long)]
    pub control_fd: RawFd,
}

/// One request: the helper's arguments and the socket to answer on.
struct Request {
    args: Vec<String>,
    reply: OwnedFd,
}

/// What one read of the control socket brought.
enum Received {
    Request(Request),
    /// A message without a reply socket: nobody to answer, so nothing to do.
    Malformed,
    /// The runtime closed its end.
    Closed,
}

/// Serves requests until the runtime closes its end of the control socket.
///
/// # Errors
/// When the control descriptor is not a socket, or polling or forking fails.
pub fn run(args: &SpawnerArgs) -> Result<()> {
    let control = take_control(args.control_fd)?;
    let mut chld = SigSet::empty();
    chld.add(Signal::SIGCHLD);
    chld.thread_block().map_err(sys("block SIGCHLD"))?;
    let children = SignalFd::with_flags(&chld, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(sys("create a signalfd"))?;
    let mut pending: HashMap<Pid, OwnedFd> = HashMap::new();
    loop {
        let (request_ready, child_ready) = {
            let mut fds = [
                PollFd::new(control.as_fd(), PollFlags::POLLIN),
                PollFd::new(children.as_fd(), PollFlags::POLLIN),
            ];
            match nix::poll::poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {}
                Err(Errno::EINTR) => continue,
                Err(source) => return Err(sys("wait for requests")(source)),
            }
            let ready = |fd: &PollFd| fd.revents().is_some_and(|r| !r.is_empty());
            (ready(&fds[0]), ready(&fds[1]))
        };
        if child_ready {
            while let Ok(Some(_)) = children.read_signal() {}
            reap(&mut pending);
        }
        if request_ready {
            match receive(&control)? {
                Received::Request(request) => {
                    spawn(request, &control, &children, &mut pending, &chld)?;
                }
                Received::Malformed => {}
                // The runtime is gone; children still starting answer nobody.
                Received::Closed => return Ok(()),
            }
        }
    }
}

#[allow(unsafe_code)]
fn take_control(fd: RawFd) -> Result<OwnedFd> {
    let stat = nix::sys::stat::fstat(
        // SAFETY: only borrowed for the check; ownership is taken below.
        unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) },
    )
    .map_err(sys("inspect the control descriptor"))?;
    if stat.st_mode & nix::libc::S_IFMT != nix::libc::S_IFSOCK {
        return Err(sys("use the control descriptor")(Errno::ENOTSOCK));
    }
    // SAFETY: the runtime passed this descriptor for this process alone to own; nothing
    // else in the process refers to it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Reads one request.
fn receive(control: &OwnedFd) -> Result<Received> {
    let mut buffer = vec![0u8; MAX_REQUEST];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let (bytes, fds) = loop {
        let mut iov = [IoSliceMut::new(&mut buffer)];
        match nix::sys::socket::recvmsg::<()>(
            control.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(message) => {
                let mut fds = Vec::new();
                for cmsg in message.cmsgs().map_err(sys("read a request"))? {
                    if let ControlMessageOwned::ScmRights(received) = cmsg {
                        fds.extend(received.into_iter().map(super::exec::owned_fd));
                    }
                }
                break (message.bytes, fds);
            }
            Err(Errno::EINTR) => continue,
            Err(source) => return Err(sys("read a request")(source)),
        }
    };
    if bytes == 0 && fds.is_empty() {
        return Ok(Received::Closed);
    }
    let Some(reply) = fds.into_iter().next() else {
        return Ok(Received::Malformed);
    };
    let args = buffer[..bytes]
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    Ok(Received::Request(Request { args, reply }))
}

fn spawn(
    request: Request,
    control: &OwnedFd,
    children: &SignalFd,
    pending: &mut HashMap<Pid, OwnedFd>,
    chld: &SigSet,
) -> Result<()> {
    match super::fork()? {
        ForkResult::Parent { child } => {
            pending.insert(child, request.reply);
            Ok(())
        }
        ForkResult::Child => {
            // Only the reply socket may outlive the fork: a helper that kept another
            // request's reply socket would hold that request open for its whole life.
            let _ = nix::unistd::close(control.as_raw_fd());
            let _ = nix::unistd::close(children.as_fd().as_raw_fd());
            for fd in pending.values() {
                let _ = nix::unistd::close(fd.as_raw_fd());
            }
            let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_UNBLOCK, Some(chld), None);
            let code = child(request);
            std::process::exit(if code == ExitCode::SUCCESS { 0 } else { 1 });
        }
    }
}

/// The forked child: the reply socket as stderr, then the command.
fn child(request: Request) -> ExitCode {
    let redirected = std::fs::File::open("/dev/null")
        .map_err(|_| Errno::ENOENT)
        .and_then(|null| {
            nix::unistd::dup2_stdin(&null)?;
            nix::unistd::dup2_stdout(&null)?;
            nix::unistd::dup2_stderr(&request.reply)
        });
    drop(request.reply);
    if let Err(err) = redirected {
        // stderr may not be the reply socket: the runtime reads an empty message and
        // this status.
        eprintln!("rkube shim: failed to redirect the spawned helper's output: {err}");
        return ExitCode::FAILURE;
    }
    let args: Vec<String> = std::iter::once("shim".to_string())
        .chain(request.args)
        .collect();
    let program = std::env::args()
        .next()
        .unwrap_or_else(|| "rkube-nodeagent".into());
    if let Err(err) = set_command_line(std::iter::once(&program).chain(&args)) {
        eprintln!("rkube shim: could not name the spawned helper: {err}");
    }
    let parsed = <super::Cli as clap::Parser>::try_parse_from(args);
    match parsed {
        Ok(super::Cli {
            command: super::Command::Spawner(_),
        }) => {
            eprintln!("rkube shim: a spawner does not start spawners");
            ExitCode::FAILURE
        }
        Ok(cli) => super::main(cli.command),
        Err(err) => {
            let _ = err.print();
            ExitCode::FAILURE
        }
    }
}

/// Shows `args` as this process's command line (`/proc/<pid>/cmdline`, `ps`), as an
/// executed helper's would read; a forked child otherwise shows the spawner's. Like
/// systemd's `rename_process`, it points the kernel at a new memory area: with
/// `PR_SET_MM_MAP`, which needs no capability (CRIU's interface), or field by field,
/// which needs `CAP_SYS_RESOURCE`.
#[allow(unsafe_code)]
fn set_command_line<'a>(args: impl Iterator<Item = &'a String>) -> nix::Result<()> {
    use nix::libc::{c_int, c_ulong, prctl, PR_SET_MM, PR_SET_MM_ARG_END, PR_SET_MM_ARG_START};
    use nix::sys::mman::{MapFlags, ProtFlags};
    let text: Vec<u8> = args.flat_map(|a| a.bytes().chain([0])).collect();
    let length = std::num::NonZeroUsize::new(text.len()).ok_or(Errno::EINVAL)?;
    // SAFETY: a fresh private anonymous mapping that nothing else refers to; it is never
    // unmapped, since the kernel reads the command line from it from now on.
    let area = unsafe {
        nix::sys::mman::mmap_anonymous(
            None,
            length,
            ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
            MapFlags::MAP_PRIVATE,
        )
    }?;
    // SAFETY: `area` is `text.len()` writable bytes, and the two do not overlap.
    unsafe { std::ptr::copy_nonoverlapping(text.as_ptr(), area.as_ptr().cast::<u8>(), text.len()) };
    let start = area.as_ptr() as u64;
    let end = start + text.len() as u64;
    if let Some(mut map) = MmMap::current() {
        map.arg_start = start;
        map.arg_end = end;
        // SAFETY: the kernel reads `size_of::<MmMap>()` bytes of `map`, which outlives
        // the call; every address in it is this process's own, as /proc reported it.
        let set = unsafe {
            prctl(
                PR_SET_MM,
                nix::libc::PR_SET_MM_MAP,
                std::ptr::from_ref(&map) as c_ulong,
                std::mem::size_of::<MmMap>() as c_ulong,
                0 as c_ulong,
            )
        };
        if Errno::result(set).is_ok() {
            return Ok(());
        }
    }
    // SAFETY: PR_SET_MM with a single field only records the address given.
    let set = |field: c_int, value: u64| {
        Errno::result(unsafe {
            prctl(
                PR_SET_MM,
                field,
                value as c_ulong,
                0 as c_ulong,
                0 as c_ulong,
            )
        })
    };
    // The kernel wants start <= end at every step; which order keeps that depends on
    // where the new area lies relative to the old one.
    if set(PR_SET_MM_ARG_START, start).is_err() {
        set(PR_SET_MM_ARG_END, end)?;
        set(PR_SET_MM_ARG_START, start)?;
        return Ok(());
    }
    set(PR_SET_MM_ARG_END, end).map(drop)
}

/// The kernel's `struct prctl_mm_map` (linux/prctl.h).
#[repr(C)]
struct MmMap {
    start_code: u64,
    end_code: u64,
    start_data: u64,
    end_data: u64,
    start_brk: u64,
    brk: u64,
    start_stack: u64,
    arg_start: u64,
    arg_end: u64,
    env_start: u64,
    env_end: u64,
    auxv: *mut u64,
    auxv_size: u32,
    /// `u32::MAX`: keep the executable.
    exe_fd: u32,
}

impl MmMap {
    /// This process's layout as `/proc/self/stat` gives it, with the current break.
    #[allow(unsafe_code)]
    fn current() -> Option<MmMap> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields after `(comm)` start at field 3 (state); proc(5) numbers them from 1.
        let rest: Vec<u64> = stat
            .rsplit_once(')')?
            .1
            .split_whitespace()
            .map(|f| f.parse().unwrap_or(0))
            .collect();
        let field = |n: usize| rest.get(n - 3).copied();
        // SAFETY: sbrk(0) only reads the current break.
        let brk = unsafe { nix::libc::sbrk(0) } as u64;
        Some(MmMap {
            start_code: field(26)?,
            end_code: field(27)?,
            start_data: field(45)?,
            end_data: field(46)?,
            start_brk: field(47)?,
            brk,
            start_stack: field(28)?,
            arg_start: field(48)?,
            arg_end: field(49)?,
            env_start: field(50)?,
            env_end: field(51)?,
            auxv: std::ptr::null_mut(),
            auxv_size: 0,
            exe_fd: u32::MAX,
        })
    }
}

/// Answers every reaped child's request with its status.
fn reap(pending: &mut HashMap<Pid, OwnedFd>) {
    loop {
        let (pid, status) = match nix::sys::wait::waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => (pid, format!("exit {code}")),
            Ok(WaitStatus::Signaled(pid, signal, _)) => (pid, format!("signal {signal}")),
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(_) => return,
        };
        if let Some(reply) = pending.remove(&pid) {
            let mut reply = std::fs::File::from(reply);
            // The runtime may have given up on this request; nothing to do then.
            let _ = reply.write_all(format!("\0{status}").as_bytes());
        }
    }
}

/// How a spawned helper's launcher ended, as the reply carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// What the launcher printed on stderr.
    pub message: String,
    /// `exit <code>` or `signal <name>`.
    pub status: String,
}

impl Reply {
    /// Splits a whole reply; `None` when the status is missing (the spawner died).
    pub fn parse(bytes: &[u8]) -> Option<Reply> {
        let at = bytes.iter().rposition(|b| *b == 0)?;
        Some(Reply {
            message: String::from_utf8_lossy(&bytes[..at]).trim().to_string(),
            status: String::from_utf8_lossy(&bytes[at + 1..]).into_owned(),
        })
    }

    /// Whether the launcher exited with status 0.
    pub fn success(&self) -> bool {
        self.status == "exit 0"
    }
}

/// Encodes a request's arguments as the spawner reads them: each ended by a NUL;
/// `None` for an empty argument, one with a NUL or one that is not UTF-8.
pub fn encode_args<'a, I: IntoIterator<Item = &'a std::ffi::OsStr>>(args: I) -> Option<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    let mut out = Vec::new();
    for arg in args {
        let bytes = arg.as_bytes();
        if bytes.is_empty() || bytes.contains(&0) || std::str::from_utf8(bytes).is_err() {
            return None;
        }
        out.extend_from_slice(bytes);
        out.push(0);
    }
    (out.len() <= MAX_REQUEST).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_split_into_message_and_status() {
        let reply = Reply::parse(b"rkube shim: no such image\n\0exit 1").expect("status");
        assert_eq!(reply.message, "rkube shim: no such image");
        assert!(!reply.success());
        let ok = Reply::parse(b"\0exit 0").expect("status");
        assert!(ok.success());
        assert_eq!(ok.message, "");
        assert_eq!(Reply::parse(b"cut short"), None);
    }

    #[test]
    fn arguments_are_nul_ended_and_refused_when_they_cannot_travel() {
        let args = ["run", "--id", "a_b"].map(std::ffi::OsStr::new);
        assert_eq!(encode_args(args).expect("encoded"), b"run\0--id\0a_b\0");
        assert_eq!(encode_args([std::ffi::OsStr::new("")]), None);
        use std::os::unix::ffi::OsStrExt;
        assert_eq!(encode_args([std::ffi::OsStr::from_bytes(b"\xff")]), None);
    }
}
