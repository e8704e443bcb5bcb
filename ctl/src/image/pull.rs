//! Base images for `FROM <image>`: the manifest (for this platform), config and every
//! layer blob not yet in the local store are fetched with `oci-client`, each layer's
//! digest checked, so later steps stack on the base's layers unchanged.

use oci_client::secrets::RegistryAuth;
use oci_client::Reference;
use serde_json::Value;
use tracing::{debug, info};

use super::push::{client, PushOptions};
use super::store::{self, Descriptor, Layer, Store};

/// What fetching a base image can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid image reference {0:?}")]
    Reference(String),
    #[error("registry refused {what} of {image}")]
    Registry {
        image: String,
        what: String,
        #[source]
        source: oci_client::errors::OciDistributionError,
    },
    #[error("invalid config of {image}: {message}")]
    Config { image: String, message: String },
    #[error("layer {digest} of {image} has digest {actual}")]
    DigestMismatch {
        image: String,
        digest: String,
        actual: String,
    },
    #[error(transparent)]
    Store(#[from] store::Error),
}

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A base image: its layers (bottom first) and its image config.
#[derive(Debug, Clone)]
pub struct Base {
    pub layers: Vec<Layer>,
    pub config: Value,
}

/// Fetches `image` into `store` (blobs already present are not fetched again).
///
/// # Errors
/// An invalid reference, a registry error, a config without matching `diff_ids`, or a
/// layer whose content does not match its digest.
pub async fn pull(store: &Store, image: &str, options: &PushOptions) -> Result<Base> {
    let name = super::normalize(image).ok_or_else(|| Error::Reference(image.into()))?;
    let reference: Reference = name.parse().map_err(|_| Error::Reference(image.into()))?;
    let client = client(reference.resolve_registry(), options);
    let registry_error = |what: String| {
        let image = name.clone();
        move |source| Error::Registry {
            image,
            what,
            source,
        }
    };
    let (manifest, digest, config) = client
        .pull_manifest_and_config(&reference, &RegistryAuth::Anonymous)
        .await
        .map_err(registry_error("the manifest".into()))?;
    let config: Value = serde_json::from_str(&config).map_err(|err| Error::Config {
        image: name.clone(),
        message: err.to_string(),
    })?;
    let diff_ids: Vec<String> = config["rootfs"]["diff_ids"]
        .as_array()
        .map(|ids| {
            ids.iter()
                .filter_map(|id| id.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    if diff_ids.len() != manifest.layers.len() {
        return Err(Error::Config {
            image: name.clone(),
            message: format!(
                "{} diff_ids for {} layers",
                diff_ids.len(),
                manifest.layers.len()
            ),
        });
    }
    let mut layers = Vec::with_capacity(diff_ids.len());
    for (descriptor, diff_id) in manifest.layers.iter().zip(diff_ids) {
        if store.has_blob(&descriptor.digest) {
            debug!(image = %name, layer = %descriptor.digest, "base layer present");
        } else {
            let mut data: Vec<u8> = Vec::new();
            client
                .pull_blob(&reference, descriptor, &mut data)
                .await
                .map_err(registry_error(format!("layer {}", descriptor.digest)))?;
            let actual = store::sha256(&data);
            if actual != descriptor.digest {
                return Err(Error::DigestMismatch {
                    image: name.clone(),
                    digest: descriptor.digest.clone(),
                    actual,
                });
            }
            store.put_blob(&descriptor.media_type, &data)?;
        }
        layers.push(Layer {
            descriptor: Descriptor {
                media_type: descriptor.media_type.clone(),
                digest: descriptor.digest.clone(),
                size: u64::try_from(descriptor.size).unwrap_or_default(),
                annotations: Default::default(),
            },
            diff_id,
        });
    }
    info!(image = %name, digest = %digest, layers = layers.len(), "pulled base image");
    Ok(Base { layers, config })
}
