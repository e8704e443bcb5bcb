//! `shim run`: creates and starts one container with libcontainer from its OCI bundle
//! (the container's state directory), stays the parent of its init process, copies its
//! stdout and stderr into a CRI-format log, records when it started and how it exited
//! (exit code, OOM kill) in the state files, and finally deletes libcontainer's state
//! and the container's cgroups.
//!
//! `shim delete` deletes what libcontainer left behind when a helper died before it
//! could clean up.

use std::fs::File;
use std::io::{ErrorKind, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::chrono::Utc;
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::Container;
use libcontainer::syscall::syscall::SyscallType;
use nix::fcntl::{FcntlArg, OFlag};
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use super::log::{CriLog, RotatingFile, Stream};
use super::{detach, io, memory, sys, Error, Result};
use crate::runtime::state::{self, ContainerPaths, Exited, Started};

/// Arguments of `shim run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The container id (libcontainer's rules: letters, digits, `_+-.`).
    #[arg(long)]
    pub id: String,
    /// The OCI bundle, which is also the container's state directory.
    #[arg(long)]
    pub bundle: PathBuf,
    /// libcontainer's state root.
    #[arg(long)]
    pub root: PathBuf,
    /// The CRI-format log file.
    #[arg(long)]
    pub log: PathBuf,
    /// The container's cgroup path, relative to each hierarchy's root.
    #[arg(long)]
    pub cgroup: PathBuf,
    /// Rotate the log once it would grow past this many bytes.
    #[arg(long, default_value_t = super::log::DEFAULT_MAX_SIZE)]
    pub log_max_size: u64,
    /// How many log files to keep, the live one included.
    #[arg(long, default_value_t = super::log::DEFAULT_MAX_FILES)]
    pub log_max_files: usize,
    /// Mount the root file system (`<bundle>/rootfs`), an overlay with these options,
    /// in a mount namespace of the helper's own; without it the agent mounted it.
    #[arg(long)]
    pub overlay: Option<String>,
}

/// Arguments of `shim delete`.
#[derive(Debug, clap::Args)]
pub struct DeleteArgs {
    #[arg(long)]
    pub id: String,
    /// libcontainer's state root.
    #[arg(long)]
    pub root: PathBuf,
}

/// Runs the container to its end; the launcher returns as soon as it started.
///
/// # Errors
/// When the container cannot be created or started, or its exit cannot be recorded.
pub fn run(args: &RunArgs) -> Result<()> {
    let paths = ContainerPaths {
        dir: args.bundle.clone(),
    };
    let ready = detach(&paths.shim_log())?;
    let started = match start(args, &paths) {
        Ok(started) => started,
        Err(err) => {
            ready.fail(&err);
            return Err(err);
        }
    };
    ready.ok();
    let release_at = Instant::now() + memory::RELEASE_DELAY;
    let (container, stdout, stderr) = started;
    let pid = container
        .pid()
        .map(|pid| Pid::from_raw(pid.as_raw()))
        .ok_or(Error::Sys {
            operation: "find the container's process",
            source: nix::Error::ESRCH,
        })?;
    let status = copy_output(args, pid, stdout, stderr, release_at)?;
    let exit_code = match status {
        WaitStatus::Exited(_, code) => code,
        WaitStatus::Signaled(_, signal, _) => 128 + signal as i32,
        _ => 255,
    };
    let exited = Exited {
        exit_code,
        oom_killed: oom_kills(&args.cgroup) > 0,
        finished_at: Utc::now(),
    };
    state::write_json(&paths.exited(), &exited)?;
    // Reaped only now: until the record exists the pid cannot be reused, so the agent
    // never signals a stranger.
    nix::sys::wait::waitpid(Some(pid), None).map_err(sys("reap the container"))?;
    drop(container);
    remove_ended(args)
}

/// Mounts the container's overlay at `target` in a new mount namespace of this helper,
/// a copy of the node's that follows its later mounts (`rslave`) but shows none of its
/// own to the node: the container's is made from it, and the overlay goes away with
/// the helper.
fn mount_root_privately(target: &Path, options: &str) -> Result<()> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
        .map_err(sys("create a mount namespace"))?;
    nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        nix::mount::MsFlags::MS_REC | nix::mount::MsFlags::MS_SLAVE,
        None::<&str>,
    )
    .map_err(sys("make the mount namespace a slave"))?;
    crate::runtime::rootfs::mount_overlay(target, options).map_err(|source| Error::Io {
        path: target.to_path_buf(),
        source: std::io::Error::other(source),
    })
}

/// What libcontainer's `Container::delete` does for an ended container without hooks —
/// remove its cgroups and libcontainer's state directory — without resolving each
/// hierarchy's mount point through procfs again (2 ms of every container on cgroup v1,
/// most of its removal).
fn remove_ended(args: &RunArgs) -> Result<()> {
    let mountinfo_path = Path::new("/proc/self/mountinfo");
    let mountinfo = std::fs::read_to_string(mountinfo_path).map_err(io(mountinfo_path))?;
    let relative = args.cgroup.strip_prefix("/").unwrap_or(&args.cgroup);
    for hierarchy in crate::runtime::host_cgroups::hierarchies(&mountinfo) {
        remove_cgroup(&hierarchy.join(relative))?;
    }
    let state = args.root.join(&args.id);
    match std::fs::remove_dir_all(&state) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(io(&state)(source)),
    }
}

/// Removes one ended container's cgroup, killing what is left in it first (children
/// the kernel is still tearing down with the container's pid namespace), as
/// libcontainer does: a few tries, 10 to 40 ms apart.
fn remove_cgroup(dir: &Path) -> Result<()> {
    const TRIES: u32 = 4;
    for attempt in 1..=TRIES {
        if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
            for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                let _ = nix::sys::signal::kill(Pid::from_raw(pid), nix::sys::signal::SIGKILL);
            }
        }
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(source) if attempt == TRIES => return Err(io(dir)(source)),
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(10 * u64::from(attempt))),
        }
    }
    Ok(())
}

/// Creates and starts the container with its output on two pipes; records its pid.
fn start(args: &RunArgs, paths: &ContainerPaths) -> Result<(Container, OwnedFd, OwnedFd)> {
    state::write_pid(&paths.shim_pid(), std::process::id() as i32)?;
    if let Some(options) = &args.overlay {
        mount_root_privately(&args.bundle.join("rootfs"), options)?;
    }
    let (stdout, stdout_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(sys("create a pipe"))?;
    let (stderr, stderr_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(sys("create a pipe"))?;
    let null = File::open("/dev/null").map_err(io(Path::new("/dev/null")))?;
    let libcontainer = |operation| {
        move |source| Error::Libcontainer {
            operation,
            id: args.id.clone(),
            source: Box::new(source),
        }
    };
    let mut container = ContainerBuilder::new(args.id.clone(), SyscallType::default())
        .with_root_path(&args.root)
        .map_err(libcontainer("set the state root of"))?
        .with_stdin(null)
        .with_stdout(stdout_w)
        .with_stderr(stderr_w)
        .as_init(&args.bundle)
        .with_systemd(false)
        .with_detach(true)
        .build()
        .map_err(libcontainer("create"))?;
    container.start().map_err(libcontainer("start"))?;
    let pid = container.pid().ok_or(Error::Sys {
        operation: "find the container's process",
        source: nix::Error::ESRCH,
    })?;
    state::write_json(
        &paths.started(),
        &Started {
            pid: pid.as_raw(),
            started_at: Utc::now(),
        },
    )?;
    state::write_pid(&paths.pid(), pid.as_raw())?;
    Ok((container, stdout, stderr))
}

/// Copies the container's output into the log until its init process exits, then what
/// is left in the pipes; returns how it exited (without reaping it). Calls
/// [`memory::release`] once at `release_at` if the container still runs then.
fn copy_output(
    args: &RunArgs,
    pid: Pid,
    stdout: OwnedFd,
    stderr: OwnedFd,
    release_at: Instant,
) -> Result<WaitStatus> {
    /// How long one poll waits at most: the exit is checked after each.
    const POLL: Duration = Duration::from_millis(200);
    let log = args.log.as_path();
    let file = RotatingFile::open(log, args.log_max_size, args.log_max_files).map_err(io(log))?;
    let mut log_writer = CriLog::new(file);
    let mut pipes = [
        (Stream::Stdout, Some(File::from(stdout))),
        (Stream::Stderr, Some(File::from(stderr))),
    ];
    let mut buf = vec![0u8; 32 * 1024];
    let exited = WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT;
    let mut release_at = Some(release_at);
    let status = loop {
        if release_at.is_some_and(|at| Instant::now() >= at) {
            memory::release();
            release_at = None;
        }
        let open: Vec<usize> = (0..2).filter(|i| pipes[*i].1.is_some()).collect();
        if open.is_empty() {
            // Both streams closed: just wait for the exit, after the release when the
            // container still runs (it closed them itself).
            if release_at.take().is_some() {
                match nix::sys::wait::waitid(Id::Pid(pid), exited | WaitPidFlag::WNOHANG) {
                    Ok(WaitStatus::StillAlive) | Err(nix::Error::EINTR) => memory::release(),
                    Ok(status) => break status,
                    Err(source) => return Err(sys("wait for the container")(source)),
                }
            }
            break nix::sys::wait::waitid(Id::Pid(pid), exited)
                .map_err(sys("wait for the container"))?;
        }
        let mut fds: Vec<PollFd> = open
            .iter()
            .filter_map(|i| pipes[*i].1.as_ref())
            .map(|f| PollFd::new(f.as_fd(), PollFlags::POLLIN))
            .collect();
        let wait = release_at.map_or(POLL, |at| {
            at.saturating_duration_since(Instant::now()).min(POLL)
        });
        // Whole milliseconds, rounded up: a wait cut to 0 would spin until the release.
        let timeout =
            PollTimeout::from(u16::try_from(wait.as_micros().div_ceil(1000)).unwrap_or(u16::MAX));
        match nix::poll::poll(&mut fds, timeout) {
            Ok(_) | Err(nix::Error::EINTR) => {}
            Err(source) => return Err(sys("poll the container's output")(source)),
        }
        let readable: Vec<bool> = fds
            .iter()
            .map(|fd| fd.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        drop(fds);
        for (index, ready) in open.iter().zip(readable) {
            if ready {
                read_once(&mut pipes[*index], &mut buf, &mut log_writer, log)?;
            }
        }
        match nix::sys::wait::waitid(Id::Pid(pid), exited | WaitPidFlag::WNOHANG) {
            Ok(WaitStatus::StillAlive) | Err(nix::Error::EINTR) => {}
            Ok(status) => break status,
            Err(source) => return Err(sys("wait for the container")(source)),
        }
    };
    // Whatever is still buffered in the pipes; processes the container left behind may
    // hold them open, so read without blocking.
    for pipe in &mut pipes {
        if let Some(file) = &pipe.1 {
            nix::fcntl::fcntl(file, FcntlArg::F_SETFL(OFlag::O_NONBLOCK))
                .map_err(sys("drain the container's output"))?;
        }
        while pipe.1.is_some() {
            if !read_once(pipe, &mut buf, &mut log_writer, log)? {
                break;
            }
        }
    }
    log_writer.finish(Utc::now()).map_err(io(log))?;
    Ok(status)
}

/// Reads once from `pipe` into the log; false when nothing more is to be had now.
fn read_once<W: std::io::Write>(
    pipe: &mut (Stream, Option<File>),
    buf: &mut [u8],
    log_writer: &mut CriLog<W>,
    log: &Path,
) -> Result<bool> {
    let Some(file) = pipe.1.as_mut() else {
        return Ok(false);
    };
    match file.read(buf) {
        Ok(0) => {
            pipe.1 = None;
            Ok(false)
        }
        Ok(n) => {
            log_writer
                .write(pipe.0, &buf[..n], Utc::now())
                .map_err(io(log))?;
            Ok(true)
        }
        Err(err) if err.kind() == ErrorKind::WouldBlock || err.kind() == ErrorKind::Interrupted => {
            Ok(false)
        }
        Err(source) => Err(io(log)(source)),
    }
}

/// How often the OOM killer struck in the container's memory cgroup (0 when unknown):
/// `oom_kill` of `memory.events` on cgroup v2, of `memory.oom_control` on v1.
fn oom_kills(cgroup: &Path) -> u64 {
    let relative = cgroup.strip_prefix("/").unwrap_or(cgroup);
    let file = if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        Path::new("/sys/fs/cgroup")
            .join(relative)
            .join("memory.events")
    } else {
        Path::new("/sys/fs/cgroup/memory")
            .join(relative)
            .join("memory.oom_control")
    };
    std::fs::read_to_string(file)
        .ok()
        .and_then(|text| oom_kill_count(&text))
        .unwrap_or(0)
}

/// The `oom_kill N` entry of a cgroup memory events file.
fn oom_kill_count(text: &str) -> Option<u64> {
    text.lines().find_map(|line| match line.split_once(' ') {
        Some(("oom_kill", n)) => n.trim().parse().ok(),
        _ => None,
    })
}

/// Deletes libcontainer's state and cgroups of a container whose helper is gone.
///
/// # Errors
/// When libcontainer cannot load or delete the container.
pub fn delete(args: &DeleteArgs) -> Result<()> {
    let dir = args.root.join(&args.id);
    if !dir.exists() {
        return Ok(());
    }
    let libcontainer = |operation| {
        move |source| Error::Libcontainer {
            operation,
            id: args.id.clone(),
            source: Box::new(source),
        }
    };
    let mut container = Container::load(dir).map_err(libcontainer("load"))?;
    container.delete(true).map_err(libcontainer("delete"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oom_kill_count_reads_v1_and_v2_files() {
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n";
        let v2 = "low 0\nhigh 0\nmax 1\noom 1\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(oom_kill_count(v1), Some(2));
        assert_eq!(oom_kill_count(v2), Some(1));
        assert_eq!(oom_kill_count("oom 3\n"), None);
    }
}
