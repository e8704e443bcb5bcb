//! Pushing a stored image to an OCI registry with `oci-client`: blobs the registry
//! already has are skipped, the manifest is pushed byte for byte (its digest is kept).

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::Reference;
use reqwest::header::HeaderValue;
use tracing::{debug, info};

use super::store::{self, Manifest, Store};

/// What pushing can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid image reference {0:?}")]
    Reference(String),
    #[error("image store")]
    Store(#[from] store::Error),
    #[error("registry refused {what} of {image}")]
    Registry {
        image: String,
        what: String,
        #[source]
        source: oci_client::errors::OciDistributionError,
    },
}

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How to reach registries.
#[derive(Debug, Clone, Default)]
pub struct PushOptions {
    /// Plain HTTP for every registry.
    pub insecure: bool,
    /// Registries (`host:port`) reached over plain HTTP; loopback registries always are.
    pub insecure_registries: Vec<String>,
}

/// What a push did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushReport {
    /// The manifest digest the registry now serves.
    pub digest: String,
    pub pushed_blobs: usize,
    pub skipped_blobs: usize,
}

/// True for `localhost`, `127.x` and `::1` registries (Docker treats them as insecure).
fn is_loopback(registry: &str) -> bool {
    let host = registry
        .rsplit_once(':')
        .filter(|(_, port)| port.chars().all(|c| c.is_ascii_digit()))
        .map_or(registry, |(host, _)| host);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// An `oci-client` for `registry` under `options`.
pub fn client(registry: &str, options: &PushOptions) -> oci_client::Client {
    // oci-client's TLS comes without a crypto provider: use ring, as every rkube
    // component does (an error only means one is installed already).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let protocol = if options.insecure {
        ClientProtocol::Http
    } else {
        let mut insecure = options.insecure_registries.clone();
        if is_loopback(registry) {
            insecure.push(registry.to_string());
        }
        ClientProtocol::HttpsExcept(insecure)
    };
    oci_client::Client::new(ClientConfig {
        protocol,
        ..Default::default()
    })
}

/// Pushes the stored image `reference` to the registry it names.
///
/// # Errors
/// An unknown image, an invalid reference or a registry error.
pub async fn push(store: &Store, reference: &str, options: &PushOptions) -> Result<PushReport> {
    let name = super::normalize(reference).ok_or_else(|| Error::Reference(reference.into()))?;
    let target: Reference = name
        .parse()
        .map_err(|_| Error::Reference(reference.into()))?;
    let descriptor = store.resolve(&name)?;
    let manifest_bytes = store.read_blob(&descriptor.digest)?;
    let manifest: Manifest = store.read_json(&descriptor.digest)?;
    let client = client(target.resolve_registry(), options);
    let registry_error = |what: String| {
        let image = name.clone();
        move |source| Error::Registry {
            image,
            what,
            source,
        }
    };
    client
        .store_auth_if_needed(target.resolve_registry(), &RegistryAuth::Anonymous)
        .await;
    let (mut pushed, mut skipped) = (0, 0);
    for blob in manifest
        .layers
        .iter()
        .chain(std::iter::once(&manifest.config))
    {
        let exists = client
            .blob_exists(&target, &blob.digest)
            .await
            .map_err(registry_error(format!("blob {}", blob.digest)))?;
        if exists {
            debug!(image = %name, blob = %blob.digest, "registry has blob");
            skipped += 1;
            continue;
        }
        let data = store.read_blob(&blob.digest)?;
        client
            .push_blob(&target, data, &blob.digest)
            .await
            .map_err(registry_error(format!("blob {}", blob.digest)))?;
        debug!(image = %name, blob = %blob.digest, size = blob.size, "pushed blob");
        pushed += 1;
    }
    client
        .push_manifest_raw(
            &target,
            manifest_bytes,
            HeaderValue::from_static(store::MANIFEST_MEDIA_TYPE),
        )
        .await
        .map_err(registry_error("the manifest".into()))?;
    info!(image = %name, digest = %descriptor.digest, pushed, skipped, "pushed image");
    Ok(PushReport {
        digest: descriptor.digest,
        pushed_blobs: pushed,
        skipped_blobs: skipped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_registries() {
        let cases = [
            ("127.0.0.1:5000", true),
            ("localhost:5000", true),
            ("localhost", true),
            ("[::1]:5000", true),
            ("10.0.0.1:5000", false),
            ("registry.example.com", false),
        ];
        for (registry, want) in cases {
            assert_eq!(is_loopback(registry), want, "{registry}");
        }
    }
}
