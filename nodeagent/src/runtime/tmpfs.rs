//! Directories the runtime keeps in memory: tmpfs mounts under the agent's root dir.
//!
//! - **Bookkeeping**, always in the agent binary ([`STATE`]): a container's bundle
//!   (`config.json`, pid files, the helper's records, the mount point of its root
//!   filesystem), a sandbox's files, libcontainer's state and the pod network's address
//!   file, as containerd keeps its bundles and runc its state under `/run`. None of it
//!   outlives a reboot usefully (the containers do not either).
//! - **Ephemeral storage**, when asked (`--ephemeral-storage-tmpfs`, which `rkube up`
//!   gives its lab nodes): the containers' writable layers and their logs, which live
//!   no longer than the machine's uptime on a node that does not outlive it either.
//!   Pages written there are charged to the writing container's memory cgroup, as an
//!   `emptyDir` with `medium: Memory` is.
//!
//! Both are a few files created and deleted per pod, at the worst moment: in a burst of
//! pod starts. On a disk file system that is inode churn, and on ext4 without a journal
//! every new inode walks past the recently deleted ones: a build that deleted many
//! files a minute before made every pod start in a burst half as slow again. Images,
//! pod volumes and, unless asked, layers and logs stay on disk.
//!
//! A directory that is already a tmpfs is kept; one that holds files (state of
//! containers started before, say by an agent without this) is left on disk, so that
//! nothing running is hidden.

use std::path::{Path, PathBuf};

use nix::mount::{mount, MsFlags};
use nix::sys::statfs::{statfs, TMPFS_MAGIC};

/// How large a tmpfs may grow and who may enter its root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub size_bytes: u64,
    pub mode: u32,
}

/// The bookkeeping's limits: small files only, the agent's alone.
pub const STATE: Limits = Limits {
    size_bytes: 256 * 1024 * 1024,
    mode: 0o700,
};

impl Limits {
    /// Ephemeral storage of at most `size_bytes`, entered as a disk directory would be.
    pub fn ephemeral(size_bytes: u64) -> Self {
        Limits {
            size_bytes,
            mode: 0o755,
        }
    }

    fn options(self) -> String {
        format!("size={},mode={:o}", self.size_bytes, self.mode)
    }
}

/// Why a state directory could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to look at {path}")]
    Inspect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to mount a tmpfs on {path}")]
    Mount {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
}

/// What [`prepare`] did with one directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prepared {
    Mounted,
    AlreadyTmpfs,
    /// It holds state already; left on disk.
    KeptOnDisk,
}

/// Makes `dir` (created when missing) a tmpfs within `limits` where [`prepare`] can,
/// and logs the outcome; the directory stays on disk when it cannot: slower, not broken.
pub fn keep_on_tmpfs(dir: &Path, limits: Limits) {
    let prepared = std::fs::create_dir_all(dir)
        .map_err(|source| Error::Inspect {
            path: dir.to_path_buf(),
            source,
        })
        .and_then(|()| prepare(dir, limits));
    match prepared {
        Ok(prepared) => tracing::debug!(path = %dir.display(), ?prepared, "tmpfs directory"),
        Err(err) => tracing::warn!(error = %err, "directory stays on disk"),
    }
}

/// Makes `dir` (which must exist) a tmpfs within `limits`, as the module doc says.
///
/// # Errors
/// When the directory cannot be read or the mount fails.
pub fn prepare(dir: &Path, limits: Limits) -> Result<Prepared, Error> {
    let inspect = |source| Error::Inspect {
        path: dir.to_path_buf(),
        source,
    };
    let fs = statfs(dir).map_err(|errno| inspect(std::io::Error::from(errno)))?;
    if fs.filesystem_type() == TMPFS_MAGIC {
        return Ok(Prepared::AlreadyTmpfs);
    }
    if std::fs::read_dir(dir).map_err(inspect)?.next().is_some() {
        return Ok(Prepared::KeptOnDisk);
    }
    mount(
        Some("tmpfs"),
        dir,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(limits.options().as_str()),
    )
    .map_err(|source| Error::Mount {
        path: dir.to_path_buf(),
        source,
    })?;
    Ok(Prepared::Mounted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_directory_becomes_a_tmpfs_once_and_one_with_state_stays_on_disk() {
        use std::os::unix::fs::PermissionsExt;
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: mounting needs root");
            return;
        }
        let root = tempfile::tempdir().expect("temp dir");
        let empty = root.path().join("empty");
        let busy = root.path().join("busy");
        std::fs::create_dir_all(&empty).expect("mkdir");
        std::fs::create_dir_all(&busy).expect("mkdir");
        std::fs::write(busy.join("meta.json"), "{}").expect("write");
        let first = prepare(&empty, Limits::ephemeral(8 * 1024 * 1024));
        let second = prepare(&empty, STATE);
        let kept = prepare(&busy, STATE);
        let mounted = statfs(&empty);
        let mode = std::fs::metadata(&empty).map(|m| m.permissions().mode() & 0o7777);
        // Unmount before asserting, so that a failure leaves nothing mounted.
        let _ = nix::mount::umount2(&empty, nix::mount::MntFlags::MNT_DETACH);
        assert_eq!(first.expect("first"), Prepared::Mounted);
        assert_eq!(second.expect("second"), Prepared::AlreadyTmpfs);
        let mounted = mounted.expect("statfs");
        assert_eq!(mounted.filesystem_type(), TMPFS_MAGIC);
        assert_eq!(
            mounted.blocks() as u64 * mounted.block_size() as u64,
            8 * 1024 * 1024,
            "the first limits hold"
        );
        assert_eq!(mode.expect("stat"), 0o755);
        assert_eq!(kept.expect("kept"), Prepared::KeptOnDisk);
        assert!(busy.join("meta.json").exists());
    }

    #[test]
    fn limits_become_mount_options() {
        assert_eq!(STATE.options(), "size=268435456,mode=700");
        assert_eq!(
            Limits::ephemeral(1 << 30).options(),
            "size=1073741824,mode=755"
        );
    }
}
