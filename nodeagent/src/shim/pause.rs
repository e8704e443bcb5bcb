//! `shim pause`: the process that holds a pod sandbox's namespaces. It unshares new
//! network, IPC and UTS namespaces, sets the pod's hostname, brings the loopback
//! interface up (the pod network has nothing else until pod networking exists), writes
//! its pid file and sleeps until it is killed. Containers join its namespaces through
//! `/proc/<pid>/ns/{net,ipc,uts}`.

use std::os::fd::AsRawFd;
use std::path::PathBuf;

use nix::libc;
use nix::sched::CloneFlags;

use super::{detach, sys, Error, Result};
use crate::runtime::state::{self, SandboxPaths};

/// Arguments of `shim pause`.
#[derive(Debug, clap::Args)]
pub struct PauseArgs {
    /// The sandbox's state directory.
    #[arg(long)]
    pub dir: PathBuf,
    /// The pod's hostname.
    #[arg(long)]
    pub hostname: String,
}

/// Runs the pause process; returns only on failure.
///
/// # Errors
/// When the namespaces cannot be made or the pid file written.
pub fn run(args: &PauseArgs) -> Result<()> {
    let paths = SandboxPaths {
        dir: args.dir.clone(),
    };
    let ready = detach(&paths.shim_log())?;
    if let Err(err) = enter_namespaces(&args.hostname)
        .and_then(|()| Ok(state::write_pid(&paths.pid(), std::process::id() as i32)?))
    {
        ready.fail(&err);
        return Err(err);
    }
    ready.ok();
    std::thread::sleep(super::memory::RELEASE_DELAY);
    super::memory::release();
    loop {
        nix::unistd::pause();
    }
}

fn enter_namespaces(hostname: &str) -> Result<()> {
    nix::sched::unshare(
        CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWUTS,
    )
    .map_err(sys("unshare the pod namespaces"))?;
    nix::unistd::sethostname(hostname).map_err(sys("set the pod hostname"))?;
    loopback_up()
}

/// Sets the `IFF_UP` flag of `lo` in the current network namespace.
#[allow(unsafe_code)]
fn loopback_up() -> Result<()> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").map_err(|source| Error::Io {
        path: PathBuf::from("lo"),
        source,
    })?;
    // SAFETY: ifreq is plain old data for which all zeroes is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in request.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads the name and writes the flags of a valid ifreq.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFFLAGS, &mut request) } < 0 {
        return Err(sys("read the flags of lo")(nix::Error::last()));
    }
    // SAFETY: SIOCGIFFLAGS filled in the flags member of the union.
    unsafe { request.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: SIOCSIFFLAGS reads a valid ifreq.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFFLAGS, &request) } < 0 {
        return Err(sys("bring lo up")(nix::Error::last()));
    }
    Ok(())
}
