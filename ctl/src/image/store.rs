//! The local image store: an OCI image layout directory (`oci-layout`, `index.json`
//! naming each image by `org.opencontainers.image.ref.name`, `blobs/sha256/…`) plus the
//! build cache (`cache/<key>` → the layer a step made).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What the store can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("i/o error on {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid JSON in {path}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("invalid digest {0:?}")]
    Digest(String),
    #[error("image {0:?} is not in the local store (build it first)")]
    NotFound(String),
}

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Media type of OCI image manifests.
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// Media type of OCI image configs.
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
/// Media type of gzip-compressed layers.
pub const LAYER_GZIP_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// A content descriptor (`mediaType`, `digest`, `size`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub annotations: std::collections::BTreeMap<String, String>,
}

/// An OCI image manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    pub media_type: String,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

/// A layer a build step made: its blob and the digest of its uncompressed tar.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layer {
    pub descriptor: Descriptor,
    pub diff_id: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Index {
    schema_version: u32,
    manifests: Vec<Descriptor>,
}

/// One named image of the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tagged {
    pub reference: String,
    pub manifest: Descriptor,
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

/// The default store directory: `$RKUBE_IMAGE_STORE`, else
/// `$XDG_DATA_HOME/rkube/images`, else `~/.local/share/rkube/images`.
pub fn default_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("RKUBE_IMAGE_STORE") {
        return PathBuf::from(dir);
    }
    let data = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("/var/lib"));
    data.join("rkube/images")
}

/// The local OCI layout store.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    /// Opens (creating) the store at `root`.
    ///
    /// # Errors
    /// When the directories cannot be created.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        for dir in ["blobs/sha256", "cache", "tmp"] {
            let path = root.join(dir);
            std::fs::create_dir_all(&path).map_err(io(&path))?;
        }
        let layout = root.join("oci-layout");
        if !layout.exists() {
            write_atomically(&root, &layout, br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        }
        Ok(Store { root })
    }

    /// The store's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The path of blob `digest` (`sha256:…`).
    ///
    /// # Errors
    /// A digest that is not `sha256:<hex>`.
    pub fn blob_path(&self, digest: &str) -> Result<PathBuf> {
        let hex = digest
            .strip_prefix("sha256:")
            .filter(|h| h.len() == 64 && h.chars().all(|c| c.is_ascii_hexdigit()))
            .ok_or_else(|| Error::Digest(digest.to_string()))?;
        Ok(self.root.join("blobs/sha256").join(hex))
    }

    /// True when blob `digest` is present.
    pub fn has_blob(&self, digest: &str) -> bool {
        self.blob_path(digest).is_ok_and(|p| p.exists())
    }

    /// Stores `bytes` as a blob; returns its descriptor.
    ///
    /// # Errors
    /// When the blob cannot be written.
    pub fn put_blob(&self, media_type: &str, bytes: &[u8]) -> Result<Descriptor> {
        let digest = sha256(bytes);
        let path = self.blob_path(&digest)?;
        if !path.exists() {
            write_atomically(&self.root, &path, bytes)?;
        }
        Ok(Descriptor {
            media_type: media_type.to_string(),
            digest,
            size: bytes.len() as u64,
            annotations: Default::default(),
        })
    }

    /// Reads blob `digest`.
    ///
    /// # Errors
    /// When it is missing or unreadable.
    pub fn read_blob(&self, digest: &str) -> Result<Vec<u8>> {
        let path = self.blob_path(digest)?;
        std::fs::read(&path).map_err(io(&path))
    }

    /// Reads and parses the JSON blob `digest`.
    ///
    /// # Errors
    /// When it is missing or not the expected JSON.
    pub fn read_json<T: serde::de::DeserializeOwned>(&self, digest: &str) -> Result<T> {
        let bytes = self.read_blob(digest)?;
        serde_json::from_slice(&bytes).map_err(|source| Error::Json {
            path: self.blob_path(digest).unwrap_or_default(),
            source,
        })
    }

    fn read_index(&self) -> Result<Index> {
        let path = self.root.join("index.json");
        match std::fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map_err(|source| Error::Json { path, source })
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(Index {
                schema_version: 2,
                manifests: Vec::new(),
            }),
            Err(err) => Err(io(&path)(err)),
        }
    }

    /// Names the manifest `manifest` as `reference` (replacing an older image of that name).
    ///
    /// # Errors
    /// When `index.json` cannot be read or written.
    pub fn tag(&self, reference: &str, manifest: &Descriptor) -> Result<()> {
        let mut index = self.read_index()?;
        index
            .manifests
            .retain(|d| d.annotations.get(REF_NAME).map(String::as_str) != Some(reference));
        let mut descriptor = manifest.clone();
        descriptor
            .annotations
            .insert(REF_NAME.to_string(), reference.to_string());
        index.manifests.push(descriptor);
        index.manifests.sort_by(|a, b| {
            a.annotations
                .get(REF_NAME)
                .cmp(&b.annotations.get(REF_NAME))
        });
        let path = self.root.join("index.json");
        let bytes = serde_json::to_vec_pretty(&index).map_err(|source| Error::Json {
            path: path.clone(),
            source,
        })?;
        write_atomically(&self.root, &path, &bytes)
    }

    /// The images of the store, by name.
    ///
    /// # Errors
    /// When `index.json` cannot be read.
    pub fn list(&self) -> Result<Vec<Tagged>> {
        Ok(self
            .read_index()?
            .manifests
            .into_iter()
            .filter_map(|mut d| {
                let reference = d.annotations.remove(REF_NAME)?;
                Some(Tagged {
                    reference,
                    manifest: d,
                })
            })
            .collect())
    }

    /// The manifest descriptor named `reference`.
    ///
    /// # Errors
    /// [`Error::NotFound`] when no image has that name.
    pub fn resolve(&self, reference: &str) -> Result<Descriptor> {
        self.list()?
            .into_iter()
            .find(|t| t.reference == reference)
            .map(|t| t.manifest)
            .ok_or_else(|| Error::NotFound(reference.to_string()))
    }

    /// The layer cached under `key`, if its blob is still present.
    pub fn cached(&self, key: &str) -> Option<Layer> {
        let bytes = std::fs::read(self.root.join("cache").join(key)).ok()?;
        let layer: Layer = serde_json::from_slice(&bytes).ok()?;
        self.has_blob(&layer.descriptor.digest).then_some(layer)
    }

    /// Records that the step with cache `key` made `layer`.
    ///
    /// # Errors
    /// When the cache entry cannot be written.
    pub fn cache(&self, key: &str, layer: &Layer) -> Result<()> {
        let path = self.root.join("cache").join(key);
        let bytes = serde_json::to_vec(layer).map_err(|source| Error::Json {
            path: path.clone(),
            source,
        })?;
        write_atomically(&self.root, &path, &bytes)
    }
}

/// Writes `bytes` to `path` through a temporary file in the store's `tmp/`.
fn write_atomically(root: &Path, path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp_dir = root.join("tmp");
    std::fs::create_dir_all(&tmp_dir).map_err(io(&tmp_dir))?;
    let tmp = tmp_dir.join(format!(
        "{}.{}",
        std::process::id(),
        sha256(path.as_os_str().as_encoded_bytes())
            .trim_start_matches("sha256:")
            .get(..16)
            .unwrap_or_default()
    ));
    std::fs::write(&tmp, bytes).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_tags_and_cache() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        assert!(dir.path().join("oci-layout").exists());
        let blob = store.put_blob(CONFIG_MEDIA_TYPE, b"{}").expect("put");
        assert_eq!(store.read_blob(&blob.digest).expect("read"), b"{}");
        store.tag("r/a:1", &blob).expect("tag");
        store.tag("r/a:1", &blob).expect("retag");
        store.tag("r/b:1", &blob).expect("tag");
        let names: Vec<_> = store
            .list()
            .expect("list")
            .into_iter()
            .map(|t| t.reference)
            .collect();
        assert_eq!(names, vec!["r/a:1", "r/b:1"]);
        assert_eq!(store.resolve("r/a:1").expect("resolve").digest, blob.digest);
        assert!(matches!(store.resolve("r/c:1"), Err(Error::NotFound(_))));
        let layer = Layer {
            descriptor: blob.clone(),
            diff_id: blob.digest.clone(),
        };
        store.cache("k", &layer).expect("cache");
        assert_eq!(store.cached("k"), Some(layer));
        assert_eq!(store.cached("missing"), None);
        assert!(store.blob_path("sha256:../../x").is_err());
    }
}
