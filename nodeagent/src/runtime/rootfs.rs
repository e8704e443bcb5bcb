//! A container's root filesystem: an overlay of its image's unpacked layers (read-only,
//! shared by every container of the image) plus a writable upper layer of its own.

use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};

/// What preparing or removing a root filesystem can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("an image needs at least one layer")]
    NoLayers,
    #[error("layer directory {path} contains a character overlayfs cannot take (':' or ',')")]
    BadLayerPath { path: PathBuf },
    #[error("failed to create {path}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to mount the overlay at {path}")]
    Mount {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("failed to unmount {path}")]
    Unmount {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("failed to remove {path}")]
    Remove {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Mounts an overlay with `options` (from [`Rootfs::overlay_options`]) at `target`.
///
/// The overlay is `volatile` where the kernel knows that option (5.10 and later): it
/// never syncs the upper filesystem, so its unmount does not wait for a journal commit
/// of the whole disk (5 to 15 ms of every container's removal). The writable layer is
/// thrown away with its container and a container does not survive a reboot, so
/// nothing is lost that would have been kept.
///
/// # Errors
/// When the mount fails (needs root).
pub fn mount_overlay(target: &Path, options: &str) -> Result<()> {
    let mount = |options: &str| {
        nix::mount::mount(
            Some("overlay"),
            target,
            Some("overlay"),
            MsFlags::empty(),
            Some(options),
        )
    };
    match mount(&format!("{options},volatile")) {
        // A kernel older than `volatile`.
        Err(nix::Error::EINVAL) => mount(options),
        other => other,
    }
    .map_err(|source| Error::Mount {
        path: target.to_path_buf(),
        source,
    })
}

/// The directories of one container's root filesystem: the mount point in its state
/// directory, the writable layer (and overlayfs' scratch directory) in a layer directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rootfs {
    /// Where the overlay is mounted: the container's `/`.
    pub merged: PathBuf,
    /// The writable layer.
    pub upper: PathBuf,
    /// overlayfs' scratch directory (same filesystem as `upper`).
    pub work: PathBuf,
}

impl Rootfs {
    /// The layout under `dir` (nothing is created).
    pub fn under(dir: &Path) -> Self {
        Rootfs::split(dir, dir)
    }

    /// The mount point under `dir`, the writable layer under `layer` (which may be on
    /// another file system than `dir`); nothing is created.
    pub fn split(dir: &Path, layer: &Path) -> Self {
        Rootfs {
            merged: dir.join("rootfs"),
            upper: layer.join("upper"),
            work: layer.join("work"),
        }
    }

    /// Mounts the overlay of `layers` (bottom first) with a fresh writable layer, in
    /// this process's mount namespace.
    ///
    /// # Errors
    /// When a directory cannot be created or the mount fails (needs root).
    pub fn mount(&self, layers: &[PathBuf]) -> Result<()> {
        let options = self.overlay_options(layers)?;
        self.prepare()?;
        mount_overlay(&self.merged, &options)
    }

    /// Creates the mount point and the writable layer, for [`mount_overlay`] to mount
    /// later, possibly in another mount namespace.
    ///
    /// # Errors
    /// When a directory cannot be created.
    pub fn prepare(&self) -> Result<()> {
        for dir in [&self.merged, &self.upper, &self.work] {
            std::fs::create_dir_all(dir).map_err(|source| Error::CreateDir {
                path: dir.clone(),
                source,
            })?;
        }
        Ok(())
    }

    /// The overlay mount options: `lowerdir` lists the top layer first.
    ///
    /// # Errors
    /// [`Error::NoLayers`], or a layer path overlayfs cannot parse.
    pub fn overlay_options(&self, layers: &[PathBuf]) -> Result<String> {
        if layers.is_empty() {
            return Err(Error::NoLayers);
        }
        let mut lower = Vec::with_capacity(layers.len());
        for layer in layers.iter().rev() {
            let text = layer.to_string_lossy();
            if text.contains(':') || text.contains(',') {
                return Err(Error::BadLayerPath {
                    path: layer.clone(),
                });
            }
            lower.push(text.into_owned());
        }
        Ok(format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.join(":"),
            self.upper.display(),
            self.work.display()
        ))
    }

    /// Unmounts the overlay (if mounted) and removes the writable layer.
    ///
    /// # Errors
    /// When the unmount or the removal fails.
    pub fn remove(&self) -> Result<()> {
        match nix::mount::umount2(&self.merged, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
            Err(source) => {
                return Err(Error::Unmount {
                    path: self.merged.clone(),
                    source,
                })
            }
        }
        for dir in [&self.merged, &self.upper, &self.work] {
            match std::fs::remove_dir_all(dir) {
                Ok(()) => {}
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(Error::Remove {
                        path: dir.clone(),
                        source,
                    })
                }
            }
        }
        // A layer directory of its own (see [`Rootfs::split`]) is empty now.
        if let Some(layer) = self.upper.parent() {
            if Some(layer) != self.merged.parent() {
                match std::fs::remove_dir(layer) {
                    Ok(()) => {}
                    Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                    Err(source) => {
                        return Err(Error::Remove {
                            path: layer.to_path_buf(),
                            source,
                        })
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_split_layout_keeps_the_writable_layer_apart() {
        let rootfs = Rootfs::split(Path::new("/run/c1"), Path::new("/disk/layers/c1"));
        assert_eq!(rootfs.merged, Path::new("/run/c1/rootfs"));
        assert_eq!(rootfs.upper, Path::new("/disk/layers/c1/upper"));
        assert_eq!(rootfs.work, Path::new("/disk/layers/c1/work"));
        assert_eq!(
            Rootfs::under(Path::new("/s/c1")).upper,
            Path::new("/s/c1/upper")
        );
    }

    #[test]
    fn lowerdir_lists_the_top_layer_first() {
        let rootfs = Rootfs::under(Path::new("/state/c1"));
        let layers = [PathBuf::from("/l/base"), PathBuf::from("/l/top")];
        assert_eq!(
            rootfs.overlay_options(&layers).expect("options"),
            "lowerdir=/l/top:/l/base,upperdir=/state/c1/upper,workdir=/state/c1/work"
        );
        assert!(matches!(rootfs.overlay_options(&[]), Err(Error::NoLayers)));
        assert!(matches!(
            rootfs.overlay_options(&[PathBuf::from("/l/a:b")]),
            Err(Error::BadLayerPath { .. })
        ));
    }

    /// Removes the rootfs even when an assertion fails.
    struct Cleanup(Rootfs);

    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = self.0.remove();
        }
    }

    #[test]
    fn overlay_merges_layers_and_honours_whiteouts() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped: mounting overlayfs needs root");
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let base = dir.path().join("base");
        let top = dir.path().join("top");
        std::fs::create_dir_all(base.join("etc")).expect("mkdir");
        std::fs::write(base.join("etc/kept"), "base").expect("write");
        std::fs::write(base.join("etc/deleted"), "base").expect("write");
        std::fs::create_dir_all(top.join("etc")).expect("mkdir");
        std::fs::write(top.join("etc/kept"), "top").expect("write");
        let archive = {
            // A whiteout made by the layer unpacker, as an image would carry it.
            let mut builder = tar::Builder::new(Vec::new());
            let mut header = tar::Header::new_gnu();
            header.set_path("etc/.wh.deleted").expect("path");
            header.set_size(0);
            header.set_mode(0o644);
            header.set_cksum();
            builder.append(&header, &[][..]).expect("append");
            builder.into_inner().expect("tar")
        };
        super::super::layer::unpack(archive.as_slice(), &top).expect("whiteout");

        let rootfs = Rootfs::under(&dir.path().join("container"));
        let guard = Cleanup(rootfs.clone());
        rootfs.mount(&[base, top]).expect("mount");
        let merged = &guard.0.merged;
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        let line = mountinfo
            .lines()
            .find(|line| line.split(' ').nth(4) == Some(&*merged.to_string_lossy()))
            .expect("the overlay in mountinfo");
        assert!(line.contains("volatile"), "not volatile: {line}");
        assert_eq!(
            std::fs::read_to_string(merged.join("etc/kept")).expect("read"),
            "top"
        );
        assert!(
            !merged.join("etc/deleted").exists(),
            "whiteout hides the base file"
        );
        std::fs::write(merged.join("new"), "w").expect("write through");
        assert!(
            guard.0.upper.join("new").exists(),
            "writes land in the upper layer"
        );
        guard.0.remove().expect("remove");
        assert!(!merged.exists());
    }
}
