//! Layer tars made reproducibly: entries sorted by path, mtimes fixed at 0, owners as
//! given (root by default), so identical inputs give byte-identical layers; plus gzip
//! compression with a fixed header.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

/// What making a layer can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path} is outside the build context")]
    OutsideContext { path: String },
    #[error("{path}: no such file or directory in the build context")]
    Missing { path: String },
    #[error("i/o error on {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to write the layer tar")]
    Write(#[source] std::io::Error),
}

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Owner of the files a COPY/ADD writes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Owner {
    pub uid: u64,
    pub gid: u64,
}

#[derive(Debug, Clone)]
enum Body {
    Dir,
    File(PathBuf),
    Data(Vec<u8>),
    Symlink(PathBuf),
    Hardlink(String),
}

#[derive(Debug, Clone)]
struct Entry {
    mode: u32,
    owner: Owner,
    body: Body,
}

/// The entries of one layer, keyed by their path in the image (no leading `/`).
#[derive(Debug, Default)]
pub struct LayerBuilder {
    entries: BTreeMap<String, Entry>,
}

/// Joins `dest` (absolute, or relative to `workdir`) into a normalised image path
/// without a leading `/` (empty for the root).
pub fn image_path(workdir: &str, dest: &str) -> String {
    let joined = if dest.starts_with('/') {
        PathBuf::from(dest)
    } else {
        Path::new(if workdir.is_empty() { "/" } else { workdir }).join(dest)
    };
    let mut parts: Vec<String> = Vec::new();
    for component in joined.components() {
        match component {
            Component::Normal(part) => parts.push(part.to_string_lossy().into_owned()),
            Component::ParentDir => {
                parts.pop();
            }
            _ => {}
        }
    }
    parts.join("/")
}

/// Resolves `source` inside `context`, refusing paths that leave it.
fn context_path(context: &Path, source: &str) -> Result<PathBuf> {
    let mut path = context.to_path_buf();
    for component in Path::new(source).components() {
        match component {
            Component::Normal(part) => path.push(part),
            Component::ParentDir => {
                return Err(Error::OutsideContext {
                    path: source.to_string(),
                })
            }
            _ => {}
        }
    }
    Ok(path)
}

impl LayerBuilder {
    /// True when nothing was added.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Adds the directories leading to `path` (root-owned, 0755) unless present.
    fn parents(&mut self, path: &str) {
        let mut prefix = String::new();
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        for part in parts.iter().take(parts.len().saturating_sub(1)) {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
            self.entries.entry(prefix.clone()).or_insert(Entry {
                mode: 0o755,
                owner: Owner::default(),
                body: Body::Dir,
            });
        }
    }

    fn insert(&mut self, path: String, entry: Entry) {
        if path.is_empty() {
            return;
        }
        self.parents(&path);
        self.entries.insert(path, entry);
    }

    /// Adds `COPY`/`ADD` sources from `context` at `dest` (an image path from
    /// [`image_path`]); `dest_is_dir` when the destination ends in `/` or several sources
    /// are copied. With `extract`, local tar archives (plain or gzip) are unpacked into
    /// `dest` (what `ADD` does).
    ///
    /// # Errors
    /// A source that is missing or outside the context, or unreadable.
    pub fn add_sources(
        &mut self,
        context: &Path,
        sources: &[String],
        dest: &str,
        dest_is_dir: bool,
        owner: Owner,
        extract: bool,
    ) -> Result<()> {
        for source in sources {
            let path = context_path(context, source)?;
            let meta = std::fs::symlink_metadata(&path).map_err(|err| {
                if err.kind() == std::io::ErrorKind::NotFound {
                    Error::Missing {
                        path: source.clone(),
                    }
                } else {
                    io(&path)(err)
                }
            })?;
            if meta.is_dir() {
                if !dest.is_empty() {
                    self.insert(
                        dest.to_string(),
                        Entry {
                            mode: meta.permissions().mode() & 0o7777,
                            owner,
                            body: Body::Dir,
                        },
                    );
                }
                self.add_tree(&path, dest, owner)?;
            } else if extract && is_archive(&path)? {
                self.add_archive(&path, dest)?;
            } else {
                let target = if dest_is_dir {
                    let name = path
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    join(dest, &name)
                } else {
                    dest.to_string()
                };
                self.add_path(&path, &meta, target, owner)?;
            }
        }
        Ok(())
    }

    fn add_path(
        &mut self,
        path: &Path,
        meta: &std::fs::Metadata,
        target: String,
        owner: Owner,
    ) -> Result<()> {
        let mode = meta.permissions().mode() & 0o7777;
        let body = if meta.file_type().is_symlink() {
            Body::Symlink(std::fs::read_link(path).map_err(io(path))?)
        } else if meta.is_dir() {
            Body::Dir
        } else {
            Body::File(path.to_path_buf())
        };
        self.insert(target, Entry { mode, owner, body });
        Ok(())
    }

    fn add_tree(&mut self, dir: &Path, dest: &str, owner: Owner) -> Result<()> {
        let mut children: Vec<_> = std::fs::read_dir(dir)
            .map_err(io(dir))?
            .collect::<Result<_, _>>()
            .map_err(io(dir))?;
        children.sort_by_key(|e| e.file_name());
        for child in children {
            let path = child.path();
            let meta = std::fs::symlink_metadata(&path).map_err(io(&path))?;
            let target = join(dest, &child.file_name().to_string_lossy());
            self.add_path(&path, &meta, target.clone(), owner)?;
            if meta.is_dir() {
                self.add_tree(&path, &target, owner)?;
            }
        }
        Ok(())
    }

    fn add_archive(&mut self, path: &Path, dest: &str) -> Result<()> {
        let bytes = std::fs::read(path).map_err(io(path))?;
        let reader: Box<dyn Read> = if bytes.starts_with(&[0x1f, 0x8b]) {
            Box::new(flate2::read::GzDecoder::new(bytes.as_slice()))
        } else {
            Box::new(bytes.as_slice())
        };
        let mut archive = tar::Archive::new(reader);
        for entry in archive.entries().map_err(io(path))? {
            let mut entry = entry.map_err(io(path))?;
            let name = entry
                .path()
                .map_err(io(path))?
                .to_string_lossy()
                .into_owned();
            let target = image_path("/", &join(dest, &name));
            let header = entry.header();
            let mode = header.mode().map_err(io(path))? & 0o7777;
            let owner = Owner {
                uid: header.uid().map_err(io(path))?,
                gid: header.gid().map_err(io(path))?,
            };
            let link = entry.link_name().map_err(io(path))?.map(|l| l.into_owned());
            let body = match (header.entry_type(), link) {
                (tar::EntryType::Directory, _) => Body::Dir,
                (tar::EntryType::Symlink, Some(link)) => Body::Symlink(link),
                (tar::EntryType::Link, Some(link)) => {
                    Body::Hardlink(image_path("/", &join(dest, &link.to_string_lossy())))
                }
                (tar::EntryType::Regular | tar::EntryType::Continuous, _) => {
                    let mut data = Vec::new();
                    entry.read_to_end(&mut data).map_err(io(path))?;
                    Body::Data(data)
                }
                // Devices, fifos: not something a build context carries.
                _ => continue,
            };
            self.insert(target, Entry { mode, owner, body });
        }
        Ok(())
    }

    /// Adds a deletion marker (`.wh.<name>`) for `path` (what RUN's `rm` becomes).
    pub fn whiteout(&mut self, path: &str) {
        let (dir, name) = match path.rsplit_once('/') {
            Some((dir, name)) => (dir.to_string(), name),
            None => (String::new(), path),
        };
        self.insert(
            join(&dir, &format!(".wh.{name}")),
            Entry {
                mode: 0o644,
                owner: Owner::default(),
                body: Body::Data(Vec::new()),
            },
        );
    }

    /// Marks directory `dir` opaque (`.wh..wh..opq`): nothing below it in lower layers
    /// shows through.
    pub fn opaque(&mut self, dir: &str) {
        self.insert(
            join(dir, ".wh..wh..opq"),
            Entry {
                mode: 0o644,
                owner: Owner::default(),
                body: Body::Data(Vec::new()),
            },
        );
    }

    /// Adds the file, directory or symlink at `host` as `target`, keeping its mode and
    /// numeric owner (what RUN's changes become).
    ///
    /// # Errors
    /// When `host` cannot be read.
    pub fn add_host_entry(&mut self, host: &Path, target: &str) -> Result<()> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::symlink_metadata(host).map_err(io(host))?;
        let owner = Owner {
            uid: u64::from(meta.uid()),
            gid: u64::from(meta.gid()),
        };
        self.add_path(host, &meta, target.to_string(), owner)
    }

    /// Writes the layer as an uncompressed tar.
    ///
    /// # Errors
    /// When a source file cannot be read.
    pub fn into_tar(self) -> Result<Vec<u8>> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, entry) in self.entries {
            let mut header = tar::Header::new_gnu();
            header.set_mtime(0);
            header.set_uid(entry.owner.uid);
            header.set_gid(entry.owner.gid);
            header.set_mode(entry.mode);
            match entry.body {
                Body::Dir => {
                    header.set_entry_type(tar::EntryType::Directory);
                    header.set_size(0);
                    builder
                        .append_data(&mut header, format!("{path}/"), &[][..])
                        .map_err(Error::Write)?;
                }
                Body::File(host) => {
                    let data = std::fs::read(&host).map_err(io(&host))?;
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_size(data.len() as u64);
                    builder
                        .append_data(&mut header, &path, data.as_slice())
                        .map_err(Error::Write)?;
                }
                Body::Data(data) => {
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_size(data.len() as u64);
                    builder
                        .append_data(&mut header, &path, data.as_slice())
                        .map_err(Error::Write)?;
                }
                Body::Symlink(target) => {
                    header.set_entry_type(tar::EntryType::Symlink);
                    header.set_size(0);
                    builder
                        .append_link(&mut header, &path, &target)
                        .map_err(Error::Write)?;
                }
                Body::Hardlink(target) => {
                    header.set_entry_type(tar::EntryType::Link);
                    header.set_size(0);
                    builder
                        .append_link(&mut header, &path, &target)
                        .map_err(Error::Write)?;
                }
            }
        }
        builder.into_inner().map_err(Error::Write)
    }
}

fn join(dir: &str, name: &str) -> String {
    let dir = dir.trim_end_matches('/');
    if dir.is_empty() {
        name.trim_start_matches('/').to_string()
    } else {
        format!("{dir}/{}", name.trim_start_matches('/'))
    }
}

/// Expands `*` and `?` in the last component of each source against the context
/// (matches sorted by name); other sources are kept as they are.
///
/// # Errors
/// A pattern that matches nothing, or an unreadable directory.
pub fn expand_globs(context: &Path, sources: &[String]) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for source in sources {
        let (dir, pattern) = match source.rsplit_once('/') {
            Some((dir, pattern)) => (dir, pattern),
            None => ("", source.as_str()),
        };
        if !pattern.contains(['*', '?']) {
            out.push(source.clone());
            continue;
        }
        let base = context_path(context, dir)?;
        let mut matches: Vec<String> = std::fs::read_dir(&base)
            .map_err(io(&base))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|name| wildcard(pattern.as_bytes(), name.as_bytes()))
            .collect();
        if matches.is_empty() {
            return Err(Error::Missing {
                path: source.clone(),
            });
        }
        matches.sort();
        out.extend(matches.into_iter().map(|name| {
            if dir.is_empty() {
                name
            } else {
                format!("{dir}/{name}")
            }
        }));
    }
    Ok(out)
}

/// Shell-style matching of `*` (any run) and `?` (one character).
fn wildcard(pattern: &[u8], name: &[u8]) -> bool {
    match (pattern.first(), name.first()) {
        (None, None) => true,
        (Some(b'*'), _) => {
            wildcard(&pattern[1..], name) || (!name.is_empty() && wildcard(pattern, &name[1..]))
        }
        (Some(b'?'), Some(_)) => wildcard(&pattern[1..], &name[1..]),
        (Some(p), Some(n)) if p == n => wildcard(&pattern[1..], &name[1..]),
        _ => false,
    }
}

/// True when `path` looks like a tar archive (gzip magic, or `ustar` at offset 257).
fn is_archive(path: &Path) -> Result<bool> {
    let mut head = [0u8; 262];
    let mut file = std::fs::File::open(path).map_err(io(path))?;
    let mut read = 0;
    while read < head.len() {
        let n = file.read(&mut head[read..]).map_err(io(path))?;
        if n == 0 {
            break;
        }
        read += n;
    }
    Ok((read >= 2 && head[..2] == [0x1f, 0x8b]) || (read >= 262 && &head[257..262] == b"ustar"))
}

/// Gzips `tar` with a fixed header (no name, mtime 0), so equal tars give equal blobs.
///
/// # Errors
/// Compression failure (out of memory).
pub fn gzip(tar: &[u8]) -> Result<Vec<u8>> {
    let mut encoder = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::fast());
    encoder.write_all(tar).map_err(Error::Write)?;
    encoder.finish().map_err(Error::Write)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(tar: &[u8]) -> Vec<String> {
        let mut archive = tar::Archive::new(tar);
        archive
            .entries()
            .expect("entries")
            .map(|e| {
                let e = e.expect("entry");
                let path = e.path().expect("path").to_string_lossy().into_owned();
                path
            })
            .collect()
    }

    #[test]
    fn globs_expand_against_the_context() {
        let dir = tempfile::tempdir().expect("tempdir");
        for name in ["b.html", "a.html", "c.txt"] {
            std::fs::write(dir.path().join(name), name).expect("write");
        }
        type Case<'a> = (&'a [&'a str], Result<Vec<&'a str>, ()>);
        let cases: [Case<'_>; 4] = [
            (&["*.html"], Ok(vec!["a.html", "b.html"])),
            (&["?.txt", "x"], Ok(vec!["c.txt", "x"])),
            (&["./*.txt"], Ok(vec!["./c.txt"])),
            (&["*.png"], Err(())),
        ];
        for (sources, want) in cases {
            let sources: Vec<String> = sources.iter().map(|s| s.to_string()).collect();
            let got = expand_globs(dir.path(), &sources).map_err(|_| ());
            let want = want.map(|v| v.into_iter().map(String::from).collect::<Vec<_>>());
            assert_eq!(got, want, "{sources:?}");
        }
    }

    #[test]
    fn image_paths() {
        let cases = [
            ("/", "/bin/busybox", "bin/busybox"),
            ("/www", "hello.html", "www/hello.html"),
            ("/www", "./", "www"),
            ("", ".", ""),
            ("/a/b", "../c", "a/c"),
        ];
        for (workdir, dest, want) in cases {
            assert_eq!(image_path(workdir, dest), want, "{workdir} {dest}");
        }
    }

    #[test]
    fn copies_are_sorted_reproducible_and_stay_in_the_context() {
        let dir = tempfile::tempdir().expect("tempdir");
        let context = dir.path();
        std::fs::create_dir_all(context.join("site/sub")).expect("mkdir");
        std::fs::write(context.join("site/z.html"), "z").expect("write");
        std::fs::write(context.join("site/a.html"), "a").expect("write");
        std::fs::write(context.join("site/sub/b.txt"), "b").expect("write");
        let build = || {
            let mut layer = LayerBuilder::default();
            layer
                .add_sources(
                    context,
                    &["site".into()],
                    "www",
                    true,
                    Owner { uid: 5, gid: 6 },
                    false,
                )
                .expect("add");
            layer.into_tar().expect("tar")
        };
        let first = build();
        assert_eq!(first, build(), "identical inputs give identical layers");
        assert_eq!(
            names(&first),
            vec![
                "www/",
                "www/a.html",
                "www/sub/",
                "www/sub/b.txt",
                "www/z.html"
            ]
        );
        let mut archive = tar::Archive::new(first.as_slice());
        for entry in archive.entries().expect("entries") {
            let entry = entry.expect("entry");
            assert_eq!(entry.header().uid().expect("uid"), 5);
            assert_eq!(entry.header().mtime().expect("mtime"), 0);
        }
        let mut layer = LayerBuilder::default();
        let err = layer
            .add_sources(
                context,
                &["../etc/passwd".into()],
                "x",
                false,
                Owner::default(),
                false,
            )
            .expect_err("outside");
        assert!(matches!(err, Error::OutsideContext { .. }), "{err}");
        let err = layer
            .add_sources(
                context,
                &["nope".into()],
                "x",
                false,
                Owner::default(),
                false,
            )
            .expect_err("missing");
        assert!(matches!(err, Error::Missing { .. }), "{err}");
    }

    #[test]
    fn add_extracts_archives_and_whiteouts_mark_deletions() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut inner = LayerBuilder::default();
        std::fs::write(dir.path().join("f"), "data").expect("write");
        inner
            .add_sources(
                dir.path(),
                &["f".into()],
                "x/f",
                false,
                Owner::default(),
                false,
            )
            .expect("add");
        let archive = gzip(&inner.into_tar().expect("tar")).expect("gzip");
        std::fs::write(dir.path().join("a.tar.gz"), archive).expect("write");
        let mut layer = LayerBuilder::default();
        layer
            .add_sources(
                dir.path(),
                &["a.tar.gz".into()],
                "opt",
                true,
                Owner::default(),
                true,
            )
            .expect("add");
        layer.whiteout("etc/old");
        assert_eq!(
            names(&layer.into_tar().expect("tar")),
            vec!["etc/", "etc/.wh.old", "opt/", "opt/x/", "opt/x/f"]
        );
    }
}
