//! Where the built-in runtime keeps its bookkeeping: on a tmpfs, as containerd keeps its
//! bundles and runc its state under `/run`.
//!
//! A container's bundle (`config.json`, pid files, the helper's records, the mount point
//! of its root filesystem), a sandbox's files and libcontainer's state are a few dozen
//! small files per pod, written while the pod starts and deleted with it. On a disk file
//! system that is inode churn at the worst moment: on ext4 without a journal every new
//! inode walks past the recently deleted ones, which made inode allocation the agents'
//! largest single cost in a burst of pod starts. None of it outlives a reboot usefully
//! (the containers do not either), so [`prepare`] mounts a tmpfs on each of these
//! directories, and the agent does the same for the pod network's address file (which
//! describes the sandboxes). Images, container logs and the containers' writable
//! layers stay on disk.
//!
//! A directory that is already a tmpfs is kept; one that holds files (state of
//! containers started before, say by an agent without this) is left on disk, so that
//! nothing running is hidden.

use std::path::{Path, PathBuf};

use nix::mount::{mount, MsFlags};
use nix::sys::statfs::{statfs, TMPFS_MAGIC};

/// The size limit of each state tmpfs (it holds small files only).
const SIZE: &str = "size=256m,mode=0700";

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

/// Makes `dir` (created when missing) a tmpfs where [`prepare`] can, and logs the
/// outcome; state stays on disk when it cannot: slower, not broken.
pub fn keep_on_tmpfs(dir: &Path) {
    let prepared = std::fs::create_dir_all(dir)
        .map_err(|source| Error::Inspect {
            path: dir.to_path_buf(),
            source,
        })
        .and_then(|()| prepare(dir));
    match prepared {
        Ok(prepared) => tracing::debug!(path = %dir.display(), ?prepared, "state directory"),
        Err(err) => tracing::warn!(error = %err, "state stays on disk"),
    }
}

/// Makes `dir` (which must exist) a tmpfs, as the module doc says.
///
/// # Errors
/// When the directory cannot be read or the mount fails.
pub fn prepare(dir: &Path) -> Result<Prepared, Error> {
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
        Some(SIZE),
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
        let first = prepare(&empty);
        let second = prepare(&empty);
        let kept = prepare(&busy);
        let is_tmpfs = statfs(&empty).map(|fs| fs.filesystem_type() == TMPFS_MAGIC);
        // Unmount before asserting, so that a failure leaves nothing mounted.
        let _ = nix::mount::umount2(&empty, nix::mount::MntFlags::MNT_DETACH);
        assert_eq!(first.expect("first"), Prepared::Mounted);
        assert_eq!(second.expect("second"), Prepared::AlreadyTmpfs);
        assert!(is_tmpfs.expect("statfs"));
        assert_eq!(kept.expect("kept"), Prepared::KeptOnDisk);
        assert!(busy.join("meta.json").exists());
    }
}
