//! Removing what a lab node left behind. The node agent keeps its containers running
//! when it exits (on purpose: it survives its own restart), so tearing a node down means
//! killing the container processes, shims and pause processes recorded under the agent's
//! root dir and every process still inside the node's network namespace, unmounting
//! every mount under the root dir (root filesystems, volumes) and removing the
//! containers' cgroups under `rkube/`.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// What cleaning up a node's root dir did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cleanup {
    /// Processes sent SIGKILL.
    pub killed: Vec<i32>,
    /// Mount points unmounted.
    pub unmounted: Vec<PathBuf>,
    /// cgroup directories removed.
    pub cgroups: Vec<PathBuf>,
}

/// Kills every process the agent under `root` started (and, with `netns`, every process
/// in that network namespace), unmounts everything under `root` and removes the
/// containers' cgroups. Best effort: what cannot be removed is logged and shows up in
/// the checks of the caller (mounts left under the state dir stop its removal).
pub fn clean_agent_root(root: &Path, netns: Option<&Path>) -> Cleanup {
    let mut cleanup = Cleanup::default();
    let containers = entries(&root.join("containers"));
    let sandboxes = entries(&root.join("sandboxes"));
    let mut pids = Vec::new();
    for id in &containers {
        let dir = root.join("containers").join(id);
        pids.extend(read_pid(&dir.join("container.pid")));
        pids.extend(read_pid(&dir.join("shim.pid")));
    }
    for id in &sandboxes {
        pids.extend(read_pid(&root.join("sandboxes").join(id).join("pause.pid")));
    }
    let ids: Vec<&String> = containers.iter().chain(&sandboxes).collect();
    for id in &ids {
        for dir in cgroup_dirs(id) {
            pids.extend(cgroup_procs(&dir));
        }
    }
    if let Some(netns) = netns {
        pids.extend(pids_in_netns(netns));
    }
    pids.sort_unstable();
    pids.dedup();
    let me = std::process::id() as i32;
    pids.retain(|pid| *pid > 1 && *pid != me);
    for pid in &pids {
        if kill(Pid::from_raw(*pid), Signal::SIGKILL).is_ok() {
            tracing::debug!(pid, root = %root.display(), "killed a leftover process");
            cleanup.killed.push(*pid);
        }
    }
    wait_all_gone(&cleanup.killed, Duration::from_secs(5));

    cleanup.unmounted = unmount_under(root);

    for id in &ids {
        for dir in cgroup_dirs(id) {
            if dir.exists() && remove_cgroup(&dir) {
                cleanup.cgroups.push(dir);
            }
        }
    }
    cleanup
}

/// Unmounts (lazily, deepest first) every mount point at or under `dir`; returns them.
pub fn unmount_under(dir: &Path) -> Vec<PathBuf> {
    let mut done = Vec::new();
    // Stacked mounts show once per layer; a few rounds take them all.
    for _ in 0..4 {
        let mut mounts = mounts_under(dir);
        if mounts.is_empty() {
            break;
        }
        mounts.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
        for mount in mounts {
            match nix::mount::umount2(&mount, nix::mount::MntFlags::MNT_DETACH) {
                Ok(()) => done.push(mount),
                Err(err) => {
                    tracing::warn!(mount = %mount.display(), error = %err, "cannot unmount")
                }
            }
        }
    }
    done
}

/// Mount points at or under `dir` in this mount namespace.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    parse_mount_points(&mountinfo)
        .into_iter()
        .filter(|m| m.starts_with(&dir))
        .collect()
}

/// The mount points (fifth field, octal escapes decoded) of a mountinfo text.
fn parse_mount_points(mountinfo: &str) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(unescape_octal(field)))
        .collect()
}

/// Decodes the `\040`-style escapes the kernel uses for spaces, tabs, newlines and `\`.
fn unescape_octal(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let digits = &bytes[i + 1..i + 4];
            if digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                let value = digits
                    .iter()
                    .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                if let Ok(value) = u8::try_from(value) {
                    out.push(value);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The pids of every process whose network namespace is the one bound at `netns`.
pub fn pids_in_netns(netns: &Path) -> Vec<i32> {
    let Ok(target) = std::fs::metadata(netns) else {
        return Vec::new();
    };
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::metadata(format!("/proc/{pid}/ns/net"))
                .is_ok_and(|m| m.ino() == target.ino() && m.dev() == target.dev())
        })
        .collect()
}

/// Where the cgroup of container (or sandbox) `id` is, in every mounted hierarchy.
pub fn cgroup_dirs(id: &str) -> Vec<PathBuf> {
    let base = Path::new("/sys/fs/cgroup");
    if base.join("cgroup.controllers").exists() {
        return vec![base.join("rkube").join(id)];
    }
    entries(base)
        .into_iter()
        .map(|h| base.join(h).join("rkube").join(id))
        .filter(|dir| dir.exists())
        .collect()
}

fn cgroup_procs(dir: &Path) -> Vec<i32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .map(|text| text.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// Removes a cgroup directory (and empty children), retrying while its last
/// processes are being reaped.
fn remove_cgroup(dir: &Path) -> bool {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        for child in entries(dir) {
            let child = dir.join(child);
            if child.is_dir() {
                let _ = remove_cgroup(&child);
            }
        }
        match std::fs::remove_dir(dir) {
            Ok(()) => return true,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return true,
            Err(err) if Instant::now() >= deadline => {
                tracing::warn!(cgroup = %dir.display(), error = %err, "cannot remove cgroup");
                return false;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path)
        .ok()?
        .trim()
        .parse::<i32>()
        .ok()
        .filter(|pid| *pid > 1)
}

fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until none of `pids` exists any more (zombies count as gone).
fn wait_all_gone(pids: &[i32], timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if pids.iter().all(|pid| !super::alive(Pid::from_raw(*pid))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mountinfo_with_escapes() {
        let text = "36 35 98:0 /mnt1 /mnt/a\\040b rw,noatime master:1 - ext3 /dev/root rw\n\
                    37 35 0:5 / /proc rw - proc proc rw\n";
        assert_eq!(
            parse_mount_points(text),
            [PathBuf::from("/mnt/a b"), PathBuf::from("/proc")]
        );
        assert_eq!(unescape_octal("a\\134b\\011"), "a\\b\t");
        assert_eq!(unescape_octal("trailing\\04"), "trailing\\04");
    }

    #[test]
    fn cleaning_an_empty_root_does_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(clean_agent_root(dir.path(), None), Cleanup::default());
        assert!(mounts_under(dir.path()).is_empty());
    }

    #[test]
    fn kills_recorded_processes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut child = std::process::Command::new("/bin/sleep")
            .arg("30")
            .spawn()
            .expect("spawn sleep");
        let container = dir.path().join("containers").join("c1");
        std::fs::create_dir_all(&container).expect("mkdir");
        std::fs::write(container.join("shim.pid"), format!("{}\n", child.id())).expect("write");
        let reaper = std::thread::spawn(move || child.wait());
        let cleanup = clean_agent_root(dir.path(), None);
        let status = reaper.join().expect("join").expect("wait");
        assert!(!status.success(), "sleep was killed");
        assert_eq!(cleanup.killed.len(), 1);
    }
}
