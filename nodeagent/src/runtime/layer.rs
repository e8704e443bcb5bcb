//! Unpacking one image layer (a tar stream) into a directory that overlayfs can use as
//! a lower layer: OCI whiteouts `.wh.NAME` become overlay whiteouts (a 0/0 character
//! device), `.wh..wh..opq` marks its directory opaque (`trusted.overlay.opaque=y`), and
//! entries that would land outside the directory are rejected.

use std::io::Read;
use std::path::{Component, Path, PathBuf};

/// The OCI whiteout prefix.
const WHITEOUT_PREFIX: &str = ".wh.";
/// The OCI opaque-directory marker.
const OPAQUE_MARKER: &str = ".wh..wh..opq";
/// The overlayfs xattr that makes a directory opaque.
const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// What unpacking a layer can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to read the layer archive")]
    Read(#[source] std::io::Error),
    #[error("layer entry {path:?} escapes the layer")]
    PathEscape { path: PathBuf },
    #[error("failed to unpack layer entry {path:?}")]
    Unpack {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to create whiteout {path:?}")]
    Whiteout {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("failed to mark {path:?} opaque")]
    Opaque {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Unpacks the (uncompressed) tar stream `archive` into `dest`, which must exist.
/// Ownership, permissions and xattrs are preserved (needs root for foreign owners).
///
/// # Errors
/// On a malformed archive, an entry escaping `dest` (through `..`, an absolute link or a
/// symlinked parent), or a failing filesystem call.
pub fn unpack(archive: impl Read, dest: &Path) -> Result<()> {
    let mut archive = tar::Archive::new(archive);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(nix::unistd::Uid::effective().is_root());
    archive.set_unpack_xattrs(true);
    archive.set_overwrite(true);
    let dest = dest.canonicalize().map_err(|source| Error::Unpack {
        path: dest.to_path_buf(),
        source,
    })?;
    for entry in archive.entries().map_err(Error::Read)? {
        let mut entry = entry.map_err(Error::Read)?;
        let raw = entry.path().map_err(Error::Read)?.into_owned();
        let relative = normalize(&raw).ok_or_else(|| Error::PathEscape { path: raw.clone() })?;
        let Some(file_name) = relative.file_name().and_then(|n| n.to_str()) else {
            continue; // the layer root itself ("./")
        };
        if file_name == OPAQUE_MARKER {
            let dir = checked_parent(&dest, &relative)?;
            std::fs::create_dir_all(&dir).map_err(|source| Error::Opaque {
                path: raw.clone(),
                source,
            })?;
            xattr::set(&dir, OPAQUE_XATTR, b"y").map_err(|source| Error::Opaque {
                path: raw.clone(),
                source,
            })?;
        } else if let Some(hidden) = file_name.strip_prefix(WHITEOUT_PREFIX) {
            let dir = checked_parent(&dest, &relative)?;
            std::fs::create_dir_all(&dir).map_err(|source| Error::Unpack {
                path: raw.clone(),
                source,
            })?;
            let target = dir.join(hidden);
            if target.symlink_metadata().is_ok() {
                remove(&target).map_err(|source| Error::Unpack {
                    path: raw.clone(),
                    source,
                })?;
            }
            nix::sys::stat::mknod(
                &target,
                nix::sys::stat::SFlag::S_IFCHR,
                nix::sys::stat::Mode::empty(),
                nix::sys::stat::makedev(0, 0),
            )
            .map_err(|source| Error::Whiteout { path: raw, source })?;
        } else {
            if entry.header().entry_type().is_hard_link() {
                let link = entry.link_name().map_err(Error::Read)?.unwrap_or_default();
                if normalize(&link).is_none() {
                    return Err(Error::PathEscape {
                        path: link.into_owned(),
                    });
                }
            }
            // `unpack_in` refuses `..` and parents that resolve outside `dest`.
            let inside = entry.unpack_in(&dest).map_err(|source| {
                if source.to_string().contains("outside of") {
                    Error::PathEscape { path: raw.clone() }
                } else {
                    Error::Unpack {
                        path: raw.clone(),
                        source,
                    }
                }
            })?;
            if !inside {
                return Err(Error::PathEscape { path: raw });
            }
        }
    }
    Ok(())
}

/// Whether `meta` (from `symlink_metadata`) is an overlay whiteout, as [`unpack`] makes
/// them: a character device 0/0.
pub fn is_whiteout(meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    meta.file_type().is_char_device() && meta.rdev() == 0
}

/// `path` without leading `/` and `.`, or `None` when a `..` would climb out.
fn normalize(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// The parent directory of `relative` in `dest`, refused when an existing symlink would
/// take it outside `dest`.
fn checked_parent(dest: &Path, relative: &Path) -> Result<PathBuf> {
    let parent = dest.join(relative.parent().unwrap_or(Path::new("")));
    let mut existing = parent.as_path();
    // The deepest existing ancestor must resolve inside `dest`.
    loop {
        if let Ok(resolved) = existing.canonicalize() {
            if !resolved.starts_with(dest) {
                return Err(Error::PathEscape {
                    path: relative.to_path_buf(),
                });
            }
            break;
        }
        match existing.parent() {
            Some(p) => existing = p,
            None => break,
        }
    }
    Ok(parent)
}

fn remove(path: &Path) -> std::io::Result<()> {
    if path.symlink_metadata()?.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileTypeExt;

    use super::*;

    /// A tar archive of `(path, kind)` entries; paths are written raw so that `..` can be
    /// tested.
    fn archive(entries: &[(&str, Kind)]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, kind) in entries {
            let mut header = tar::Header::new_gnu();
            let name = &mut header.as_gnu_mut().expect("gnu header").name;
            name[..path.len()].copy_from_slice(path.as_bytes());
            header.set_mode(0o755);
            header.set_uid(0);
            header.set_gid(0);
            header.set_mtime(0);
            let data: &[u8] = match kind {
                Kind::File(data) => {
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_size(data.len() as u64);
                    data.as_bytes()
                }
                Kind::Dir => {
                    header.set_entry_type(tar::EntryType::Directory);
                    header.set_size(0);
                    &[]
                }
                Kind::Symlink(target) => {
                    header.set_entry_type(tar::EntryType::Symlink);
                    header.set_link_name(target).expect("link name");
                    header.set_size(0);
                    &[]
                }
            };
            header.set_cksum();
            builder.append(&header, data).expect("append");
        }
        builder.into_inner().expect("finish")
    }

    enum Kind {
        File(&'static str),
        Dir,
        Symlink(&'static str),
    }

    #[test]
    fn unpacks_files_directories_and_symlinks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tar = archive(&[
            ("./bin/", Kind::Dir),
            ("./bin/hello", Kind::File("hi\n")),
            ("bin/sh", Kind::Symlink("/bin/busybox")),
        ]);
        unpack(tar.as_slice(), dir.path()).expect("unpack");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("bin/hello")).expect("read"),
            "hi\n"
        );
        assert_eq!(
            std::fs::read_link(dir.path().join("bin/sh")).expect("link"),
            Path::new("/bin/busybox")
        );
    }

    #[test]
    fn rejects_paths_escaping_the_layer() {
        let outside = tempfile::tempdir().expect("tempdir");
        let cases = [
            ("dot-dot", vec![("../escaped", Kind::File("x"))]),
            ("dot-dot whiteout", vec![("../.wh.escaped", Kind::File(""))]),
            (
                "through a symlink",
                vec![
                    ("link", Kind::Symlink("LEAK")),
                    ("link/escaped", Kind::File("x")),
                ],
            ),
        ];
        for (name, mut entries) in cases {
            let dir = tempfile::tempdir().expect("tempdir");
            let target = outside.path().to_str().expect("utf-8 path").to_string();
            // Symlinks point at the outside directory.
            let leaked: &'static str = Box::leak(target.into_boxed_str());
            for (_, kind) in entries.iter_mut() {
                if let Kind::Symlink(t) = kind {
                    if *t == "LEAK" {
                        *t = leaked;
                    }
                }
            }
            let err = unpack(archive(&entries).as_slice(), dir.path()).expect_err(name);
            assert!(matches!(err, Error::PathEscape { .. }), "{name}: {err:?}");
            assert!(
                std::fs::read_dir(outside.path())
                    .expect("read")
                    .next()
                    .is_none(),
                "{name}: wrote outside"
            );
        }
    }

    #[test]
    fn whiteouts_become_overlay_whiteouts_and_opaque_dirs() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped: whiteouts need root (mknod, trusted xattrs)");
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("etc/gone")).expect("mkdir");
        let tar = archive(&[
            ("etc/.wh.gone", Kind::File("")),
            ("var/cache/.wh..wh..opq", Kind::File("")),
        ]);
        unpack(tar.as_slice(), dir.path()).expect("unpack");
        let meta = std::fs::symlink_metadata(dir.path().join("etc/gone")).expect("whiteout");
        assert!(meta.file_type().is_char_device());
        use std::os::unix::fs::MetadataExt;
        assert_eq!(meta.rdev(), 0);
        let opaque = xattr::get(dir.path().join("var/cache"), OPAQUE_XATTR).expect("xattr");
        assert_eq!(opaque.as_deref(), Some(&b"y"[..]));
        assert!(!dir.path().join("var/cache/.wh..wh..opq").exists());
    }
}
