//! Pod volumes on the host, as kubelet's volume plugins lay them out: each volume is a
//! directory `<pods dir>/<pod uid>/volumes/<name>` (or a host path) that containers get
//! as bind mounts.
//!
//! - `emptyDir`: a directory; with `medium: Memory` a tmpfs, sized by `sizeLimit`.
//! - `hostPath`: the host's path after its `type` check (creating it for the
//!   `…OrCreate` types).
//! - `configMap` and `secret`: one file per key (or per `items` entry, at its `path`),
//!   written like kubelet's atomic writer: the files live in a timestamped directory
//!   `..<stamp>`, the symlink `..data` points at it, and every visible name is a symlink
//!   through `..data`. An update writes a new directory and renames a new `..data` over
//!   the old one, so a reader sees either all old or all new files.
//!
//! Everything here blocks; pod workers call it through `spawn_blocking`.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// Name of the symlink that points at the current data directory.
const DATA_LINK: &str = "..data";
/// Kubernetes' default file mode for configMap and secret volumes (0644).
pub const DEFAULT_MODE: u32 = 0o644;

/// What setting up or removing a volume can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("failed to {action} {path}")]
    Mount {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    /// kubelet's message for a failed `hostPath` type check.
    #[error("hostPath type check failed: {path} is not a {kind}")]
    HostPathType { path: PathBuf, kind: &'static str },
    #[error("hostPath type {0:?} is not known")]
    UnknownHostPathType(String),
    /// A key, item path or subPath that is absolute or climbs out of the volume.
    #[error("invalid path {0:?}: must be relative and must not contain '..'")]
    InvalidPath(String),
}

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Error + 'a {
    move |source| Error::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// One file of a configMap or secret volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileContent {
    /// Relative path inside the volume (a key, or an item's `path`).
    pub path: String,
    pub data: Vec<u8>,
    pub mode: u32,
}

/// The directory of pod `uid`'s volume `name`.
pub fn volume_dir(pods_dir: &Path, pod_uid: &str, name: &str) -> PathBuf {
    pods_dir.join(pod_uid).join("volumes").join(name)
}

/// A relative path that stays inside its directory (no `..`, not absolute, not empty).
///
/// # Errors
/// [`Error::InvalidPath`] otherwise.
pub fn checked_relative(path: &str) -> Result<PathBuf> {
    let p = Path::new(path);
    let ok = !path.is_empty()
        && p.components().all(|c| matches!(c, Component::Normal(_)))
        && !path.starts_with("..");
    if ok {
        Ok(p.to_path_buf())
    } else {
        Err(Error::InvalidPath(path.to_string()))
    }
}

/// Makes an `emptyDir` at `dir`: a directory (mode 0777, as kubelet), or a tmpfs of at
/// most `size_limit` bytes for `medium: Memory`. Idempotent.
///
/// # Errors
/// When the directory cannot be made or the tmpfs cannot be mounted.
pub fn set_up_empty_dir(dir: &Path, memory: bool, size_limit: Option<u64>) -> Result<()> {
    fs::create_dir_all(dir).map_err(io_err("create emptyDir", dir))?;
    if memory && !is_mount_point(dir)? {
        let data = size_limit.map(|bytes| format!("size={bytes}"));
        mount(
            Some("tmpfs"),
            dir,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            data.as_deref(),
        )
        .map_err(|source| Error::Mount {
            action: "mount tmpfs on",
            path: dir.to_path_buf(),
            source,
        })?;
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(0o777))
        .map_err(io_err("set the mode of", dir))
}

/// Whether `dir` is a mount point (its device differs from its parent's).
fn is_mount_point(dir: &Path) -> Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let own = fs::metadata(dir).map_err(io_err("inspect", dir))?;
    let parent_path = dir.parent().unwrap_or(Path::new("/"));
    let parent = fs::metadata(parent_path).map_err(io_err("inspect", parent_path))?;
    Ok(own.dev() != parent.dev())
}

/// Checks (and for the `…OrCreate` types makes) a `hostPath` as its `type` says, the
/// way kubelet does; `""` checks nothing.
///
/// # Errors
/// [`Error::HostPathType`] when the path is not of the type, or the creation failed.
pub fn check_host_path(path: &Path, typ: &str) -> Result<()> {
    let meta = || fs::metadata(path);
    let not = |kind| Error::HostPathType {
        path: path.to_path_buf(),
        kind,
    };
    match typ {
        "" => Ok(()),
        "DirectoryOrCreate" => {
            if !path.exists() {
                fs::create_dir_all(path).map_err(io_err("create hostPath", path))?;
                fs::set_permissions(path, fs::Permissions::from_mode(0o755))
                    .map_err(io_err("set the mode of", path))?;
            }
            meta()
                .is_ok_and(|m| m.is_dir())
                .then_some(())
                .ok_or_else(|| not("directory"))
        }
        "Directory" => meta()
            .is_ok_and(|m| m.is_dir())
            .then_some(())
            .ok_or_else(|| not("directory")),
        "FileOrCreate" => {
            if !path.exists() {
                fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(path)
                    .map_err(io_err("create hostPath", path))?;
                fs::set_permissions(path, fs::Permissions::from_mode(0o644))
                    .map_err(io_err("set the mode of", path))?;
            }
            meta()
                .is_ok_and(|m| m.is_file())
                .then_some(())
                .ok_or_else(|| not("file"))
        }
        "File" => meta()
            .is_ok_and(|m| m.is_file())
            .then_some(())
            .ok_or_else(|| not("file")),
        "Socket" => meta()
            .is_ok_and(|m| m.file_type().is_socket())
            .then_some(())
            .ok_or_else(|| not("socket file")),
        "CharDevice" => meta()
            .is_ok_and(|m| m.file_type().is_char_device())
            .then_some(())
            .ok_or_else(|| not("character device")),
        "BlockDevice" => meta()
            .is_ok_and(|m| m.file_type().is_block_device())
            .then_some(())
            .ok_or_else(|| not("block device")),
        other => Err(Error::UnknownHostPathType(other.to_string())),
    }
}

/// Writes `files` into `dir` atomically (see the module docs). Returns whether anything
/// changed; writing the same content again changes nothing.
///
/// # Errors
/// When a path is invalid or a file system step fails.
pub fn write_atomically(dir: &Path, files: &[FileContent]) -> Result<bool> {
    let mut wanted: BTreeMap<PathBuf, &FileContent> = BTreeMap::new();
    for file in files {
        wanted.insert(checked_relative(&file.path)?, file);
    }
    fs::create_dir_all(dir).map_err(io_err("create volume", dir))?;
    let link = dir.join(DATA_LINK);
    let current = fs::read_link(&link).ok().map(|target| dir.join(target));
    if let Some(current) = &current {
        if same_content(current, &wanted) {
            return Ok(false);
        }
    }

    // 1. The new data directory, complete before anyone can see it.
    let stamp = unique_stamp();
    let data_name = format!("..{stamp}");
    let data_dir = dir.join(&data_name);
    fs::create_dir(&data_dir).map_err(io_err("create data directory", &data_dir))?;
    for (path, file) in &wanted {
        let target = data_dir.join(path);
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent).map_err(io_err("create directory", parent))?;
        }
        fs::write(&target, &file.data).map_err(io_err("write", &target))?;
        fs::set_permissions(&target, fs::Permissions::from_mode(file.mode & 0o7777))
            .map_err(io_err("set the mode of", &target))?;
    }
    fs::set_permissions(&data_dir, fs::Permissions::from_mode(0o755))
        .map_err(io_err("set the mode of", &data_dir))?;

    // 2. Swap `..data` in one rename.
    let tmp_link = dir.join("..data_tmp");
    let _ = fs::remove_file(&tmp_link);
    std::os::unix::fs::symlink(&data_name, &tmp_link).map_err(io_err("link", &tmp_link))?;
    fs::rename(&tmp_link, &link).map_err(io_err("swap", &link))?;

    // 3. Visible names: one symlink per top-level entry; stale ones go.
    let top: std::collections::BTreeSet<String> = wanted
        .keys()
        .filter_map(|p| p.components().next())
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    for name in &top {
        let visible = dir.join(name);
        if fs::symlink_metadata(&visible).is_err() {
            std::os::unix::fs::symlink(Path::new(DATA_LINK).join(name), &visible)
                .map_err(io_err("link", &visible))?;
        }
    }
    let entries = fs::read_dir(dir).map_err(io_err("list", dir))?;
    for entry in entries {
        let entry = entry.map_err(io_err("list", dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("..") && !top.contains(&name) {
            fs::remove_file(entry.path()).map_err(io_err("remove", &entry.path()))?;
        }
    }

    // 4. The old data directory is no longer reachable.
    if let Some(old) = current {
        if old != data_dir {
            fs::remove_dir_all(&old).map_err(io_err("remove", &old))?;
        }
    }
    Ok(true)
}

/// Whether `dir` holds exactly `wanted` (content and mode).
fn same_content(dir: &Path, wanted: &BTreeMap<PathBuf, &FileContent>) -> bool {
    let mut found = Vec::new();
    if collect_files(dir, dir, &mut found).is_err() || found.len() != wanted.len() {
        return false;
    }
    found.iter().all(|path| {
        let Some(file) = wanted.get(path) else {
            return false;
        };
        let full = dir.join(path);
        let mode = fs::metadata(&full).map(|m| m.permissions().mode() & 0o7777);
        fs::read(&full).is_ok_and(|d| d == file.data) && mode.is_ok_and(|m| m == file.mode & 0o7777)
    })
}

fn collect_files(base: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            collect_files(base, &path, out)?;
        } else if let Ok(rel) = path.strip_prefix(base) {
            out.push(rel.to_path_buf());
        }
    }
    Ok(())
}

/// A name for a new data directory that sorts by time and never repeats in a process.
fn unique_stamp() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!(
        "{}_{:09}_{}",
        now.as_secs(),
        now.subsec_nanos(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Removes all volumes of pod `uid`: unmounts tmpfs emptyDirs first, then deletes the
/// pod's directory. Host paths are never touched.
///
/// # Errors
/// When an unmount or the removal fails.
pub fn tear_down_pod(pods_dir: &Path, pod_uid: &str) -> Result<()> {
    let pod_dir = pods_dir.join(pod_uid);
    let volumes = pod_dir.join("volumes");
    if let Ok(entries) = fs::read_dir(&volumes) {
        for entry in entries.flatten() {
            let path = entry.path();
            if entry.file_type().is_ok_and(|t| t.is_dir()) && is_mount_point(&path)? {
                umount2(&path, MntFlags::MNT_DETACH).map_err(|source| Error::Mount {
                    action: "unmount",
                    path: path.clone(),
                    source,
                })?;
            }
        }
    }
    match fs::remove_dir_all(&pod_dir) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(io_err("remove pod directory", &pod_dir)(err)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, data: &str, mode: u32) -> FileContent {
        FileContent {
            path: path.into(),
            data: data.as_bytes().to_vec(),
            mode,
        }
    }

    fn mode_of(path: &Path) -> u32 {
        fs::metadata(path).expect("metadata").permissions().mode() & 0o7777
    }

    #[test]
    fn atomic_writer_links_through_data_and_updates_in_place() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("cfg");
        let first = [file("a", "1", 0o644), file("sub/b", "2", 0o600)];
        assert!(write_atomically(&dir, &first).expect("write"));
        assert_eq!(fs::read_to_string(dir.join("a")).expect("a"), "1");
        assert_eq!(fs::read_to_string(dir.join("sub/b")).expect("b"), "2");
        assert_eq!(mode_of(&dir.join("sub/b")), 0o600);
        assert_eq!(
            fs::read_link(dir.join("a")).expect("link"),
            Path::new("..data/a")
        );
        let old_target = fs::read_link(dir.join(DATA_LINK)).expect("..data");
        assert!(
            !write_atomically(&dir, &first).expect("rewrite"),
            "unchanged"
        );

        let second = [file("a", "updated", 0o644), file("c", "3", 0o644)];
        assert!(write_atomically(&dir, &second).expect("update"));
        assert_eq!(fs::read_to_string(dir.join("a")).expect("a"), "updated");
        assert_eq!(fs::read_to_string(dir.join("c")).expect("c"), "3");
        assert!(
            fs::symlink_metadata(dir.join("sub")).is_err(),
            "stale name removed"
        );
        assert!(!dir.join(&old_target).exists(), "old data removed");
    }

    #[test]
    fn escaping_paths_are_refused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        for bad in ["../x", "/etc/passwd", "a/../../x", ""] {
            assert!(
                matches!(
                    write_atomically(tmp.path(), &[file(bad, "x", 0o644)]),
                    Err(Error::InvalidPath(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn host_path_types_are_checked_like_kubelet() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("made");
        check_host_path(&dir, "DirectoryOrCreate").expect("create dir");
        assert!(dir.is_dir());
        check_host_path(&dir, "Directory").expect("is dir");
        let err = check_host_path(&dir, "File").expect_err("not a file");
        assert_eq!(
            err.to_string(),
            format!(
                "hostPath type check failed: {} is not a file",
                dir.display()
            )
        );
        let f = tmp.path().join("f");
        check_host_path(&f, "FileOrCreate").expect("create file");
        assert!(f.is_file());
        check_host_path(&f, "File").expect("is file");
        assert!(check_host_path(&f, "Directory").is_err());
        assert!(check_host_path(&tmp.path().join("absent"), "Directory").is_err());
        assert!(check_host_path(&f, "Socket").is_err());
        check_host_path(&tmp.path().join("absent"), "").expect("no check");
        assert!(matches!(
            check_host_path(&f, "Bogus"),
            Err(Error::UnknownHostPathType(_))
        ));
    }

    #[test]
    fn empty_dir_on_disk_is_removed_with_the_pod() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = volume_dir(tmp.path(), "uid-1", "scratch");
        set_up_empty_dir(&dir, false, None).expect("emptyDir");
        assert_eq!(mode_of(&dir), 0o777);
        fs::write(dir.join("x"), "x").expect("write");
        tear_down_pod(tmp.path(), "uid-1").expect("tear down");
        assert!(!tmp.path().join("uid-1").exists());
        tear_down_pod(tmp.path(), "uid-1").expect("idempotent");
    }

    #[test]
    fn memory_empty_dir_is_a_sized_tmpfs_unmounted_with_the_pod() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped: mounting tmpfs needs root");
            return;
        }
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = volume_dir(tmp.path(), "uid-2", "mem");
        set_up_empty_dir(&dir, true, Some(1 << 20)).expect("tmpfs");
        // From here on the mount is undone even when an assertion fails.
        struct Unmount(PathBuf);
        impl Drop for Unmount {
            fn drop(&mut self) {
                let _ = umount2(&self.0, MntFlags::MNT_DETACH);
            }
        }
        let _guard = Unmount(dir.clone());
        assert!(is_mount_point(&dir).expect("inspect"));
        set_up_empty_dir(&dir, true, Some(1 << 20)).expect("idempotent");
        let stat = nix::sys::statvfs::statvfs(&dir).expect("statvfs");
        let size = stat.blocks() as u64 * stat.fragment_size() as u64;
        assert_eq!(size, 1 << 20);
        tear_down_pod(tmp.path(), "uid-2").expect("tear down");
        assert!(!tmp.path().join("uid-2").exists());
    }
}
