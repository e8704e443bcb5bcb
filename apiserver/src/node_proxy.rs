//! Connections to the node agents' `NodeAgent` gRPC service (logs and exec), which the
//! REST API proxies `pods/log` and `pods/exec` to.
//!
//! Each agent serves on its Node's `InternalIP` and
//! `status.daemonEndpoints.kubeletEndpoint.port`, over TLS with a self-signed serving
//! certificate, and requires a client certificate signed by the cluster CA with CN
//! `rkube-apiserver` (`--kubelet-client-certificate`). Like the Kubernetes apiserver
//! without `--kubelet-certificate-authority`, the proxy does not verify the agent's
//! serving certificate; it still checks the handshake signatures. One lazily connected
//! tonic [`Channel`] is kept per node and replaced when the node's address changes.

use std::collections::HashMap;

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::Uri;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use serde_json::Value;
use tonic::transport::{Channel, Endpoint};
use tracing::debug;

use rkube_api::status::Status;
use rkube_proto::node::v1::node_agent_client::NodeAgentClient;

/// How long connecting to an agent (TCP and TLS) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the proxy's TLS client could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to read the kubelet client certificate or key")]
    Pem(#[source] crate::tls::Error),
    #[error("failed to build the kubelet client TLS configuration")]
    Config(#[source] rustls::Error),
}

/// The result type of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Where a node's agent listens, read from its Node object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgentAddress(pub SocketAddr);

impl AgentAddress {
    /// The first `InternalIP` of `status.addresses` and
    /// `status.daemonEndpoints.kubeletEndpoint.port`.
    ///
    /// # Errors
    /// A 400 `Status` when the node has no usable address or port, as Kubernetes
    /// reports a node it cannot reach.
    pub fn of_node(node: &Value) -> Result<Self, Box<Status>> {
        let name = node["metadata"]["name"].as_str().unwrap_or_default();
        let ip = node["status"]["addresses"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|a| a["type"] == "InternalIP")
            .find_map(|a| a["address"].as_str()?.parse::<IpAddr>().ok())
            .ok_or_else(|| {
                Box::new(Status::bad_request(format!(
                    "node {name} has no valid InternalIP address"
                )))
            })?;
        let port = node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"]
            .as_u64()
            .or_else(|| node["status"]["daemonEndpoints"]["kubeletEndpoint"]["port"].as_u64())
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0)
            .ok_or_else(|| {
                Box::new(Status::bad_request(format!(
                    "node {name} does not report its agent's port (status.daemonEndpoints.kubeletEndpoint.Port)"
                )))
            })?;
        Ok(AgentAddress(SocketAddr::new(ip, port)))
    }
}

/// Clients of the node agents, or a refusal when the apiserver has no client
/// certificate for them.
#[derive(Clone)]
pub struct NodeProxy {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    tls: Arc<ClientConfig>,
    /// One channel per node name, with the address it was made for.
    channels: Mutex<HashMap<String, (AgentAddress, Channel)>>,
}

impl NodeProxy {
    /// A proxy that answers every request with 503 (no client certificate configured).
    pub fn disabled() -> Self {
        NodeProxy { inner: None }
    }

    /// A proxy presenting the certificate chain in `cert` with the key in `key`.
    ///
    /// # Errors
    /// When a file cannot be read or holds no certificate or key, or rustls rejects them.
    pub fn new(cert: &Path, key: &Path) -> Result<Self> {
        let chain = crate::tls::read_certificates(cert).map_err(Error::Pem)?;
        let key = crate::tls::read_private_key(key).map_err(Error::Pem)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(Error::Config)?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyServerCertificate(provider)))
            .with_client_auth_cert(chain, key)
            .map_err(Error::Config)?;
        tls.alpn_protocols = vec![b"h2".to_vec()];
        Ok(NodeProxy {
            inner: Some(Arc::new(Inner {
                tls: Arc::new(tls),
                channels: Mutex::new(HashMap::new()),
            })),
        })
    }

    /// A proxy from the apiserver's flags: enabled when both
    /// `--kubelet-client-certificate` and `--kubelet-client-key` are set.
    ///
    /// # Errors
    /// As [`new`](Self::new).
    pub fn from_flags(cert: Option<&Path>, key: Option<&Path>) -> Result<Self> {
        match (cert, key) {
            (Some(cert), Some(key)) => Self::new(cert, key),
            _ => Ok(Self::disabled()),
        }
    }

    /// A client of the agent of `node` (a Node object), reusing the node's channel.
    ///
    /// # Errors
    /// 503 when the proxy is disabled; 400 when the node has no address or port.
    pub fn client(&self, node: &Value) -> Result<NodeAgentClient<Channel>, Box<Status>> {
        let inner = self.inner.as_ref().ok_or_else(|| {
            Box::new(Status::unavailable(
                "the apiserver has no client certificate for the node agents (--kubelet-client-certificate and --kubelet-client-key)",
            ))
        })?;
        let address = AgentAddress::of_node(node)?;
        let name = node["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let mut channels = inner.channels.lock();
        let channel = match channels.get(&name) {
            Some((cached, channel)) if *cached == address => channel.clone(),
            _ => {
                debug!(node = %name, address = %address.0, "new channel to node agent");
                let channel = inner.channel(address)?;
                channels.insert(name, (address, channel.clone()));
                channel
            }
        };
        Ok(NodeAgentClient::new(channel)
            .max_decoding_message_size(16 * 1024 * 1024)
            .max_encoding_message_size(16 * 1024 * 1024))
    }
}

impl Inner {
    /// A lazily connecting channel whose connector speaks TLS with the client
    /// certificate; the URI only carries the address.
    fn channel(&self, address: AgentAddress) -> Result<Channel, Box<Status>> {
        let endpoint = Endpoint::from_shared(format!("http://{}", address.0))
            .map_err(|e| Box::new(Status::internal(format!("node agent address: {e}"))))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(false);
        let connector = tokio_rustls::TlsConnector::from(self.tls.clone());
        let target = address.0;
        Ok(
            endpoint.connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
                let connector = connector.clone();
                async move {
                    let tcp = tokio::net::TcpStream::connect(target).await?;
                    tcp.set_nodelay(true)?;
                    let tls = connector
                        .connect(ServerName::IpAddress(target.ip().into()), tcp)
                        .await?;
                    Ok::<_, io::Error>(TokioIo::new(tls))
                }
            })),
        )
    }
}

/// The agent's gRPC error as the REST `Status` Kubernetes gives for the kubelet's
/// answer: what the agent could not find (a container not started, no previous
/// instance) is the client's 400; an agent that cannot be reached is 503.
pub fn status_from_grpc(status: &tonic::Status) -> Status {
    use tonic::Code;
    let message = status.message().to_string();
    match status.code() {
        Code::NotFound | Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            Status::bad_request(message)
        }
        Code::Unavailable => Status::unavailable(format!(
            "unable to reach the node agent: {}",
            if message.is_empty() {
                "unavailable"
            } else {
                &message
            }
        )),
        Code::DeadlineExceeded => Status::timeout(message),
        Code::Unauthenticated | Code::PermissionDenied => Status::internal(format!(
            "the node agent refused the apiserver's client certificate: {message}"
        )),
        _ => Status::internal(format!("node agent error: {message}")),
    }
}

/// Accepts any serving certificate (node agents use self-signed ones) but checks that
/// the peer holds its key.
#[derive(Debug)]
struct AnyServerCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyServerCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn agent_address_comes_from_internal_ip_and_kubelet_port() {
        let node = json!({
            "metadata": {"name": "n1"},
            "status": {
                "addresses": [
                    {"type": "Hostname", "address": "n1"},
                    {"type": "InternalIP", "address": "10.1.2.3"},
                ],
                "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            },
        });
        assert_eq!(
            AgentAddress::of_node(&node).expect("address"),
            AgentAddress("10.1.2.3:10250".parse().expect("socket address"))
        );

        let cases = [
            (
                "no InternalIP",
                json!({"metadata": {"name": "n1"}, "status": {"addresses": [{"type": "Hostname", "address": "n1"}], "daemonEndpoints": {"kubeletEndpoint": {"Port": 1}}}}),
                "node n1 has no valid InternalIP address",
            ),
            (
                "no port",
                json!({"metadata": {"name": "n1"}, "status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.1"}]}}),
                "node n1 does not report its agent's port (status.daemonEndpoints.kubeletEndpoint.Port)",
            ),
            (
                "port zero",
                json!({"metadata": {"name": "n1"}, "status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.1"}], "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}}}}),
                "node n1 does not report its agent's port (status.daemonEndpoints.kubeletEndpoint.Port)",
            ),
        ];
        for (name, node, want) in cases {
            let status = AgentAddress::of_node(&node).expect_err(name);
            assert_eq!(
                (status.code, status.message.as_str()),
                (400, want),
                "{name}"
            );
        }
    }

    #[test]
    fn grpc_errors_map_to_kubernetes_statuses() {
        use tonic::Code;
        let cases = [
            (
                Code::NotFound,
                "container \"main\" in pod \"p\" is waiting to start: ContainerCreating",
                400,
                "BadRequest",
            ),
            (Code::InvalidArgument, "bad", 400, "BadRequest"),
            (
                Code::Unavailable,
                "connection refused",
                503,
                "ServiceUnavailable",
            ),
            (Code::DeadlineExceeded, "slow", 504, "Timeout"),
            (Code::Unauthenticated, "who", 500, "InternalError"),
            (Code::Internal, "boom", 500, "InternalError"),
        ];
        for (code, message, want_code, want_reason) in cases {
            let status = status_from_grpc(&tonic::Status::new(code, message));
            assert_eq!(
                (status.code, status.reason.as_str()),
                (want_code, want_reason),
                "{code:?}"
            );
            assert!(
                status.message.contains(message),
                "{code:?}: {}",
                status.message
            );
        }
    }

    #[test]
    fn disabled_proxy_answers_503() {
        let status = NodeProxy::disabled()
            .client(&json!({}))
            .expect_err("disabled");
        assert_eq!(status.code, 503);
        assert!(status.message.contains("--kubelet-client-certificate"));
    }
}
