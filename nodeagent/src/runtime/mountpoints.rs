//! The mount-point layer: a read-only layer with the directories and files that a
//! container's mounts go on (`/proc`, `/dev`, `/sys`, and the `/etc` files the pod
//! network bind-mounts), made once and put on top of the image's layers — Docker's
//! "init layer".
//!
//! Without it libcontainer creates these in every container's writable layer: on a
//! disk file system that is half a dozen new inodes per start (and a copy-up of
//! `/etc`), each of which ext4 without a journal allocates by walking past every
//! recently deleted inode. With it they already exist and nothing is created.
//!
//! An entry is left out where the image has something else at that path (a symlink
//! `/etc`, say), so that the layer never hides what the image put there; the image's
//! own `/etc/hosts` is only covered when the container mounts its own over it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};

/// Directories every container mounts a file system on.
const DIRECTORIES: [&str; 3] = ["proc", "dev", "sys"];

/// Files the runtime bind-mounts when the container has them among its mounts.
pub const FILES: [&str; 3] = ["etc/hosts", "etc/hostname", "etc/resolv.conf"];

/// What the image has at a path, as its top-most layer that mentions it says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InImage {
    Absent,
    Directory,
    File,
    Other,
}

/// The mount-point layer under `store` for a container of the image with `layers`
/// (bottom first) that bind-mounts `mounted_files` (container paths such as
/// `/etc/hosts`); made on first use. `None` when nothing is left to put in it.
///
/// # Errors
/// When the layer cannot be written.
pub fn layer(
    store: &Path,
    layers: &[PathBuf],
    mounted_files: &[&Path],
) -> std::io::Result<Option<PathBuf>> {
    let top_first: Vec<&Path> = layers.iter().rev().map(PathBuf::as_path).collect();
    let mut entries: Vec<(&str, bool)> = DIRECTORIES
        .iter()
        .filter(|dir| {
            matches!(
                in_image(&top_first, dir),
                InImage::Absent | InImage::Directory
            )
        })
        .map(|dir| (*dir, true))
        .collect();
    for file in FILES {
        let mounted = mounted_files
            .iter()
            .any(|m| m.strip_prefix("/").is_ok_and(|m| m == Path::new(file)));
        let parent_fits = Path::new(file)
            .parent()
            .and_then(Path::to_str)
            .is_some_and(|p| {
                matches!(
                    in_image(&top_first, p),
                    InImage::Absent | InImage::Directory
                )
            });
        let file_fits = matches!(in_image(&top_first, file), InImage::Absent | InImage::File);
        if mounted && parent_fits && file_fits {
            entries.push((file, false));
        }
    }
    if entries.is_empty() {
        return Ok(None);
    }
    let key = entries
        .iter()
        .map(|(path, dir)| format!("{path}{}", if *dir { "/" } else { "" }))
        .collect::<Vec<_>>()
        .join("\n");
    let name = hex(&Sha256::digest(key.as_bytes()))[..16].to_string();
    let dir = store.join(name);
    if dir.is_dir() {
        return Ok(Some(dir));
    }
    // Built beside its final place and renamed there, so a half-made layer is never used.
    static MADE: AtomicU64 = AtomicU64::new(0);
    let made = store.join(format!(
        ".making-{}-{}",
        std::process::id(),
        MADE.fetch_add(1, Ordering::Relaxed)
    ));
    let result = fill(&made, &entries).and_then(|()| std::fs::rename(&made, &dir));
    match result {
        Ok(()) => Ok(Some(dir)),
        // Another container of the same kind made it first.
        Err(_) if dir.is_dir() => {
            let _ = std::fs::remove_dir_all(&made);
            Ok(Some(dir))
        }
        Err(err) => {
            let _ = std::fs::remove_dir_all(&made);
            Err(err)
        }
    }
}

/// Creates `entries` (path, is a directory) under a new directory `root`.
fn fill(root: &Path, entries: &[(&str, bool)]) -> std::io::Result<()> {
    std::fs::create_dir_all(root)?;
    for (path, is_dir) in entries {
        let target = root.join(path);
        if *is_dir {
            std::fs::create_dir_all(&target)?;
        } else {
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::File::create(&target)?;
        }
    }
    set_modes(root)
}

/// Directories 0755 and files 0644, whatever the umask; the layer's root too.
fn set_modes(root: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut pending = vec![root.to_path_buf()];
    while let Some(path) = pending.pop() {
        let mode = if path.is_dir() {
            for entry in std::fs::read_dir(&path)? {
                pending.push(entry?.path());
            }
            0o755
        } else {
            0o644
        };
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

/// What the merged image has at `path`: the top-most layer holding it (or its
/// whiteout) decides.
fn in_image(top_first: &[&Path], path: &str) -> InImage {
    for layer in top_first {
        match std::fs::symlink_metadata(layer.join(path)) {
            Ok(meta) => {
                let kind = meta.file_type();
                return if super::layer::is_whiteout(&meta) {
                    InImage::Absent
                } else if kind.is_dir() {
                    InImage::Directory
                } else if kind.is_file() {
                    InImage::File
                } else {
                    InImage::Other
                };
            }
            Err(_) => continue,
        }
    }
    InImage::Absent
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(dir: &Path) -> Vec<String> {
        let mut found = Vec::new();
        let mut pending = vec![dir.to_path_buf()];
        while let Some(path) = pending.pop() {
            for entry in std::fs::read_dir(&path).expect("read") {
                let path = entry.expect("entry").path();
                let rel = path.strip_prefix(dir).expect("inside");
                if path.is_dir() {
                    found.push(format!("{}/", rel.display()));
                    pending.push(path);
                } else {
                    found.push(rel.display().to_string());
                }
            }
        }
        found.sort();
        found
    }

    #[test]
    fn holds_the_mount_points_and_only_the_files_the_container_mounts() {
        let image = tempfile::tempdir().expect("image");
        std::fs::create_dir_all(image.path().join("etc")).expect("etc");
        let store = tempfile::tempdir().expect("store");
        let layers = [image.path().to_path_buf()];
        let made = layer(store.path(), &layers, &[Path::new("/etc/hosts")])
            .expect("layer")
            .expect("something to hold");
        assert_eq!(
            entries(&made),
            ["dev/", "etc/", "etc/hosts", "proc/", "sys/"]
        );
        // Made once: the same container shape gets the same directory.
        let again = layer(store.path(), &layers, &[Path::new("/etc/hosts")]).expect("layer");
        assert_eq!(again.as_deref(), Some(made.as_path()));
        // Without bind-mounted files the image's own /etc/hosts stays visible.
        let plain = layer(store.path(), &layers, &[])
            .expect("layer")
            .expect("dirs");
        assert_eq!(entries(&plain), ["dev/", "proc/", "sys/"]);
        assert_ne!(plain, made);
    }

    #[test]
    fn never_hides_something_else_the_image_has_there() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped: a whiteout is a device node, which needs root");
            return;
        }
        let base = tempfile::tempdir().expect("base");
        let top = tempfile::tempdir().expect("top");
        // The base layer's /etc is a symlink; the top layer whites out /proc.
        std::os::unix::fs::symlink("private/etc", base.path().join("etc")).expect("symlink");
        std::fs::write(base.path().join("sys"), b"a file").expect("file");
        std::fs::create_dir_all(base.path().join("proc")).expect("proc");
        nix::sys::stat::mknod(
            &top.path().join("proc"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o600),
            0,
        )
        .expect("whiteout (needs root)");
        let store = tempfile::tempdir().expect("store");
        let layers = [base.path().to_path_buf(), top.path().to_path_buf()];
        let made = layer(
            store.path(),
            &layers,
            &[Path::new("/etc/hosts"), Path::new("/etc/resolv.conf")],
        )
        .expect("layer")
        .expect("something to hold");
        // /proc was whited out: absent, so it is made; /sys is a file and /etc a
        // symlink in the image: left alone.
        assert_eq!(entries(&made), ["dev/", "proc/"]);
    }
}
