//! The connection to the apiserver: [`Client`], a tonic channel (TLS, bearer token)
//! shared by every [`crate::Api`].

use std::path::Path;
use std::time::Duration;

use rkube_proto::v1::resources_client::ResourcesClient;
use tonic::metadata::errors::InvalidMetadataValue;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::config::{self, ClientConfig};

/// Largest response the client accepts: a list of many thousands of objects exceeds
/// tonic's 4 MiB default.
const MAX_MESSAGE_BYTES: usize = 512 * 1024 * 1024;

/// What can go wrong setting up a [`Client`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid apiserver endpoint {endpoint:?}")]
    InvalidEndpoint {
        endpoint: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("apiserver endpoint {0:?} must start with https:// or http://")]
    UnsupportedScheme(String),
    #[error("https endpoint {0:?} needs the cluster CA (ca_pem)")]
    MissingCa(String),
    #[error("failed to configure TLS")]
    Tls(#[source] tonic::transport::Error),
    #[error("the token is not a valid header value")]
    InvalidToken(#[source] InvalidMetadataValue),
    #[error("failed to connect to {endpoint}")]
    Connect {
        endpoint: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("failed to load kubeconfig")]
    Kubeconfig(#[source] config::Error),
}

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct BearerAuth(Option<MetadataValue<Ascii>>);

impl Interceptor for BearerAuth {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// The gRPC stub the typed APIs call.
pub(crate) type Grpc = ResourcesClient<InterceptedService<Channel, BearerAuth>>;

/// A connection to the apiserver's internal gRPC API. Cheap to clone: clones share one
/// HTTP/2 connection, which tonic re-establishes when it breaks.
#[derive(Clone)]
pub struct Client {
    grpc: Grpc,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").finish_non_exhaustive()
    }
}

impl Client {
    /// Connects now, so that a wrong address or CA is reported here.
    ///
    /// # Errors
    /// [`Error::Connect`] when the apiserver cannot be reached or the TLS handshake fails.
    pub async fn connect(config: ClientConfig) -> Result<Self> {
        let endpoint = endpoint(&config)?;
        let channel = endpoint.connect().await.map_err(|source| Error::Connect {
            endpoint: config.endpoint.clone(),
            source,
        })?;
        Self::from_channel(channel, config.token.as_deref())
    }

    /// Connects on first use; failures then surface as transport errors of each call.
    pub fn connect_lazy(config: ClientConfig) -> Result<Self> {
        let channel = endpoint(&config)?.connect_lazy();
        Self::from_channel(channel, config.token.as_deref())
    }

    /// Connects with the current context of a kubeconfig file
    /// (see [`ClientConfig::from_kubeconfig`]).
    pub async fn from_kubeconfig(path: impl AsRef<Path>) -> Result<Self> {
        let config = ClientConfig::from_kubeconfig(path).map_err(Error::Kubeconfig)?;
        Self::connect(config).await
    }

    /// Wraps an existing channel (for example an in-process one in tests).
    pub fn from_channel(channel: Channel, token: Option<&str>) -> Result<Self> {
        let auth = token
            .map(|t| format!("Bearer {t}").parse::<MetadataValue<Ascii>>())
            .transpose()
            .map_err(Error::InvalidToken)?;
        let grpc = ResourcesClient::with_interceptor(channel, BearerAuth(auth))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        Ok(Client { grpc })
    }

    /// A handle on the gRPC stub (a clone: tonic clients take `&mut self`).
    pub(crate) fn grpc(&self) -> Grpc {
        self.grpc.clone()
    }
}

fn endpoint(config: &ClientConfig) -> Result<Endpoint> {
    let invalid = |source| Error::InvalidEndpoint {
        endpoint: config.endpoint.clone(),
        source,
    };
    if !config.endpoint.starts_with("https://") && !config.endpoint.starts_with("http://") {
        return Err(Error::UnsupportedScheme(config.endpoint.clone()));
    }
    let endpoint = Endpoint::from_shared(config.endpoint.clone())
        .map_err(invalid)?
        .connect_timeout(Duration::from_secs(10))
        .tcp_nodelay(true)
        .tcp_keepalive(Some(Duration::from_secs(30)))
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20))
        .keep_alive_while_idle(true);
    if config.endpoint.starts_with("https://") {
        let ca = config
            .ca_pem
            .as_ref()
            .ok_or_else(|| Error::MissingCa(config.endpoint.clone()))?;
        let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
        endpoint.tls_config(tls).map_err(Error::Tls)
    } else {
        Ok(endpoint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_the_endpoint() {
        let config = |endpoint: &str, ca: Option<&str>| ClientConfig {
            endpoint: endpoint.to_string(),
            ca_pem: ca.map(str::to_string),
            token: None,
        };
        assert!(endpoint(&config("http://127.0.0.1:1", None)).is_ok());
        assert!(matches!(
            endpoint(&config("https://127.0.0.1:6443", None)),
            Err(Error::MissingCa(_))
        ));
        assert!(matches!(
            endpoint(&config("unix:///run/x.sock", None)),
            Err(Error::UnsupportedScheme(_))
        ));
        assert!(matches!(
            endpoint(&config("http://not a uri", None)),
            Err(Error::InvalidEndpoint { .. })
        ));
    }

    #[tokio::test]
    async fn rejects_tokens_that_cannot_be_headers() {
        let config = ClientConfig {
            endpoint: "http://127.0.0.1:1".to_string(),
            ca_pem: None,
            token: Some("line\nbreak".to_string()),
        };
        assert!(matches!(
            Client::connect_lazy(config),
            Err(Error::InvalidToken(_))
        ));
    }
}
