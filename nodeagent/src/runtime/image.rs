//! The image store: pulls images from OCI registries with `oci-client` (plain HTTP only
//! for registries configured as insecure), verifies every layer's digest, unpacks each
//! layer once per digest into `layers/sha256/<hex>` and records each image's layers and
//! config under `images/`.

use std::io::Read;
use std::path::{Path, PathBuf};

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::Reference;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tracing::{debug, info};

use super::{layer, ImageRef, PullPolicy};

/// What managing images can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid image reference {image:?}")]
    Reference {
        image: String,
        #[source]
        source: oci_client::ParseError,
    },
    #[error("registry refused {image:?}: {source}")]
    Registry {
        image: String,
        #[source]
        source: oci_client::errors::OciDistributionError,
    },
    #[error("layer {digest} of {image:?} has digest {actual}")]
    DigestMismatch {
        image: String,
        digest: String,
        actual: String,
    },
    #[error("unsupported layer media type {media_type:?} in {image:?}")]
    MediaType { image: String, media_type: String },
    #[error("invalid image config of {image:?}")]
    Config {
        image: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("failed to unpack layer {digest}")]
    Layer {
        digest: String,
        #[source]
        source: layer::Error,
    },
    #[error("i/o error on {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("unpacking was interrupted")]
    Join(#[source] tokio::task::JoinError),
}

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The parts of an image config that shape a container (`config` of the OCI image
/// configuration).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    #[serde(default)]
    pub entrypoint: Vec<String>,
    #[serde(default)]
    pub cmd: Vec<String>,
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub working_dir: String,
    #[serde(default)]
    pub user: String,
}

/// What the store knows about one pulled image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    pub image: String,
    /// `repository@sha256:…` of the manifest.
    pub image_id: String,
    /// Layer digests, bottom first.
    pub layers: Vec<String>,
    pub config: ImageConfig,
}

/// The content-addressed image store under one directory.
pub struct ImageStore {
    root: PathBuf,
    client: oci_client::Client,
}

impl std::fmt::Debug for ImageStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageStore")
            .field("root", &self.root)
            .finish()
    }
}

impl ImageStore {
    /// Opens (creating) the store at `root`; `insecure` registries (`host:port`) are
    /// reached over plain HTTP.
    ///
    /// # Errors
    /// When the directories cannot be created.
    pub fn open(root: PathBuf, insecure: Vec<String>) -> Result<Self> {
        for dir in ["layers/sha256", "images", "tmp"] {
            let path = root.join(dir);
            std::fs::create_dir_all(&path).map_err(io(&path))?;
        }
        // oci-client's TLS comes without a crypto provider: use ring, as every rkube
        // component does (an error only means one is installed already).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = oci_client::Client::new(ClientConfig {
            protocol: ClientProtocol::HttpsExcept(insecure),
            ..Default::default()
        });
        Ok(ImageStore { root, client })
    }

    /// The directory holding the unpacked layer `digest` (`sha256:…`).
    pub fn layer_dir(&self, digest: &str) -> PathBuf {
        self.root.join("layers").join(digest.replacen(':', "/", 1))
    }

    /// Whether `image` has a record in the store (a stat; [`Self::get`] reads it).
    pub fn contains(&self, image: &str) -> bool {
        self.record_path(image).is_file()
    }

    /// The record of `image`, if it was pulled.
    ///
    /// # Errors
    /// When the record exists but cannot be read.
    pub fn get(&self, image: &str) -> Result<Option<ImageRecord>> {
        let path = self.record_path(image);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|source| Error::Config {
                    image: image.to_string(),
                    source,
                }),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(io(&path)(err)),
        }
    }

    /// Makes `image` present according to `policy`.
    ///
    /// # Errors
    /// [`super::Error::ImageNeverPull`] when absent under `Never`;
    /// [`super::Error::ImagePull`] with the registry's message otherwise.
    pub async fn ensure(&self, image: &str, policy: PullPolicy) -> super::Result<ImageRef> {
        let present = self.get(image).map_err(|err| pull_error(image, &err))?;
        let record = match (policy, present) {
            (PullPolicy::Never, None) => {
                return Err(super::Error::ImageNeverPull {
                    image: image.to_string(),
                })
            }
            (PullPolicy::Never | PullPolicy::IfNotPresent, Some(record)) => record,
            (_, _) => self
                .pull(image)
                .await
                .map_err(|err| pull_error(image, &err))?,
        };
        Ok(ImageRef {
            image: record.image,
            image_id: record.image_id,
        })
    }

    /// Pulls `image`: manifest, config, and every layer not yet in the store.
    ///
    /// # Errors
    /// When the registry refuses, a digest does not match or a layer cannot be unpacked.
    pub async fn pull(&self, image: &str) -> Result<ImageRecord> {
        let reference: Reference = image.parse().map_err(|source| Error::Reference {
            image: image.to_string(),
            source,
        })?;
        let registry = |source| Error::Registry {
            image: image.to_string(),
            source,
        };
        let (manifest, digest, config) = self
            .client
            .pull_manifest_and_config(&reference, &RegistryAuth::Anonymous)
            .await
            .map_err(registry)?;
        let config = parse_config(image, &config)?;
        let mut layers = Vec::new();
        for descriptor in &manifest.layers {
            self.ensure_layer(image, &reference, descriptor).await?;
            layers.push(descriptor.digest.clone());
        }
        let record = ImageRecord {
            image: image.to_string(),
            image_id: format!(
                "{}/{}@{digest}",
                reference.resolve_registry(),
                reference.repository()
            ),
            layers,
            config,
        };
        let path = self.record_path(image);
        let bytes = serde_json::to_vec_pretty(&record).map_err(|source| Error::Config {
            image: image.to_string(),
            source,
        })?;
        write_atomically(&path, &bytes)?;
        info!(image, image_id = %record.image_id, "pulled image");
        Ok(record)
    }

    async fn ensure_layer(
        &self,
        image: &str,
        reference: &Reference,
        descriptor: &OciDescriptor,
    ) -> Result<()> {
        let digest = descriptor.digest.clone();
        let dir = self.layer_dir(&digest);
        if dir.exists() {
            debug!(image, layer = %digest, "layer already unpacked");
            return Ok(());
        }
        let gzip = match descriptor.media_type.as_str() {
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip" => true,
            "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.docker.image.rootfs.diff.tar" => false,
            other => {
                return Err(Error::MediaType {
                    image: image.to_string(),
                    media_type: other.to_string(),
                })
            }
        };
        let tmp = tempfile_in(&self.root.join("tmp"))?;
        let blob = tmp.join("blob");
        let mut file = tokio::fs::File::create(&blob).await.map_err(io(&blob))?;
        self.client
            .pull_blob(reference, descriptor, &mut file)
            .await
            .map_err(|source| Error::Registry {
                image: image.to_string(),
                source,
            })?;
        file.flush().await.map_err(io(&blob))?;
        drop(file);

        let image = image.to_string();
        let layers_dir = dir.clone();
        let joined = tokio::task::spawn_blocking(move || -> Result<()> {
            let actual = sha256_file(&blob)?;
            if actual != digest {
                return Err(Error::DigestMismatch {
                    image,
                    digest,
                    actual,
                });
            }
            let unpacked = tmp.join("rootfs");
            std::fs::create_dir(&unpacked).map_err(io(&unpacked))?;
            let file = std::fs::File::open(&blob).map_err(io(&blob))?;
            let reader: Box<dyn Read> = if gzip {
                Box::new(flate2::read::GzDecoder::new(std::io::BufReader::new(file)))
            } else {
                Box::new(std::io::BufReader::new(file))
            };
            layer::unpack(reader, &unpacked).map_err(|source| Error::Layer {
                digest: digest.clone(),
                source,
            })?;
            if let Some(parent) = layers_dir.parent() {
                std::fs::create_dir_all(parent).map_err(io(parent))?;
            }
            // Another pull may have won the race; either copy is the same content.
            match std::fs::rename(&unpacked, &layers_dir) {
                Ok(()) => {}
                Err(_) if layers_dir.exists() => {}
                Err(err) => return Err(io(&layers_dir)(err)),
            }
            let _ = std::fs::remove_dir_all(&tmp);
            info!(layer = %digest, "unpacked layer");
            Ok(())
        })
        .await
        .map_err(Error::Join)?;
        joined
    }

    fn record_path(&self, image: &str) -> PathBuf {
        let name: String = Sha256::digest(image.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        self.root.join("images").join(format!("{name}.json"))
    }
}

fn pull_error(image: &str, err: &Error) -> super::Error {
    let mut message = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(s) = source {
        // Some errors (ours with `{source}`, oci-client's) already print their cause.
        let text = s.to_string();
        if !message.contains(&text) {
            message = format!("{message}: {text}");
        }
        source = s.source();
    }
    super::Error::ImagePull {
        image: image.to_string(),
        message,
    }
}

/// The `config` part of an OCI image configuration.
fn parse_config(image: &str, json: &str) -> Result<ImageConfig> {
    #[derive(Deserialize)]
    struct Outer {
        #[serde(default)]
        config: Option<Inner>,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Inner {
        entrypoint: Option<Vec<String>>,
        cmd: Option<Vec<String>>,
        env: Option<Vec<String>>,
        working_dir: Option<String>,
        user: Option<String>,
    }
    let outer: Outer = serde_json::from_str(json).map_err(|source| Error::Config {
        image: image.to_string(),
        source,
    })?;
    let inner = outer.config;
    Ok(inner
        .map(|c| ImageConfig {
            entrypoint: c.entrypoint.unwrap_or_default(),
            cmd: c.cmd.unwrap_or_default(),
            env: c.env.unwrap_or_default(),
            working_dir: c.working_dir.unwrap_or_default(),
            user: c.user.unwrap_or_default(),
        })
        .unwrap_or_default())
}

/// `sha256:<hex>` of a file's content.
fn sha256_file(path: &Path) -> Result<String> {
    let mut file = std::fs::File::open(path).map_err(io(path))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).map_err(io(path))?;
    let hex: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(format!("sha256:{hex}"))
}

/// A fresh directory under `parent` (removed by the caller on success).
fn tempfile_in(parent: &Path) -> Result<PathBuf> {
    let name = format!(
        "pull-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default()
    );
    let dir = parent.join(name);
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    Ok(dir)
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    // A name of its own per write: two pulls of one image may write the same file at once.
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("{}.{n}.tmp", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_error_message_names_each_cause_once() {
        let err = Error::Registry {
            image: "r/x:1".into(),
            source: oci_client::errors::OciDistributionError::ImageManifestNotFoundError(
                "manifest unknown".into(),
            ),
        };
        let super::super::Error::ImagePull { message, .. } = pull_error("r/x:1", &err) else {
            panic!("an ImagePull error");
        };
        assert_eq!(message.matches("manifest unknown").count(), 1, "{message}");
        assert!(
            message.starts_with("registry refused \"r/x:1\": "),
            "{message}"
        );

        let err = Error::Layer {
            digest: "sha256:ab".into(),
            source: layer::Error::Read(std::io::Error::other("disk full")),
        };
        let super::super::Error::ImagePull { message, .. } = pull_error("r/x:1", &err) else {
            panic!("an ImagePull error");
        };
        assert!(
            message.starts_with("failed to unpack layer sha256:ab: "),
            "{message}"
        );
        assert!(message.contains("disk full"), "{message}");
    }

    #[test]
    fn contains_tells_whether_a_record_was_stored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ImageStore::open(dir.path().to_path_buf(), Vec::new()).expect("store");
        let image = "reg.local/busybox:1";
        assert!(!store.contains(image));
        let record = ImageRecord {
            image: image.into(),
            image_id: "reg.local/busybox@sha256:ab".into(),
            layers: Vec::new(),
            config: ImageConfig::default(),
        };
        let bytes = serde_json::to_vec(&record).expect("json");
        write_atomically(&store.record_path(image), &bytes).expect("write");
        assert!(store.contains(image));
        assert!(!store.contains("reg.local/busybox:2"));
        assert_eq!(store.get(image).expect("get"), Some(record));
    }

    #[test]
    fn parses_image_config() {
        let json = r#"{"architecture":"amd64","config":{"Entrypoint":["/bin/sh"],"Cmd":["-c","echo hi"],"Env":["PATH=/bin"],"WorkingDir":"/w","User":"1000:1000"}}"#;
        let config = parse_config("x", json).expect("config");
        assert_eq!(config.entrypoint, ["/bin/sh"]);
        assert_eq!(config.cmd, ["-c", "echo hi"]);
        assert_eq!(config.env, ["PATH=/bin"]);
        assert_eq!(config.working_dir, "/w");
        assert_eq!(config.user, "1000:1000");
        assert_eq!(
            parse_config("x", "{}").expect("empty"),
            ImageConfig::default()
        );
        assert!(parse_config("x", "not json").is_err());
    }

    #[tokio::test]
    async fn never_policy_without_the_image_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ImageStore::open(dir.path().to_path_buf(), vec![]).expect("open");
        let err = store
            .ensure("127.0.0.1:1/nothing:1", PullPolicy::Never)
            .await
            .expect_err("absent");
        assert!(
            matches!(err, super::super::Error::ImageNeverPull { .. }),
            "{err}"
        );
        // IfNotPresent pulls, and an unreachable registry is an ErrImagePull with a message.
        let err = store
            .ensure("127.0.0.1:1/nothing:1", PullPolicy::IfNotPresent)
            .await
            .expect_err("unreachable");
        assert!(
            matches!(err, super::super::Error::ImagePull { .. }),
            "{err}"
        );
    }
}
