//! The apiserver's TLS setup: serving certificate, ALPN and optional client certificates.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("no PEM certificate in {path}")]
    NoCertificate { path: PathBuf },
    #[error("no PEM private key in {path}")]
    NoPrivateKey { path: PathBuf },
    #[error("failed to add the client CA certificates of {path}")]
    ClientCa {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("failed to build the client certificate verifier")]
    ClientVerifier(#[source] rustls::server::VerifierBuilderError),
    #[error("failed to build the TLS server configuration")]
    Config(#[source] rustls::Error),
}

/// The result type of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// ALPN protocols the apiserver offers: HTTP/2 (gRPC, kubectl) first, then HTTP/1.1.
pub const ALPN_PROTOCOLS: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Builds the rustls server configuration (ring provider, ALPN `h2` and `http/1.1`).
///
/// With a `client_ca`, client certificates signed by it are verified and accepted, but
/// not required: requests without one can still authenticate with a bearer token.
///
/// # Errors
/// When a file cannot be read, holds no certificate or key, or rustls rejects them.
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<Arc<ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = read_certificates(cert)?;
    let key = read_private_key(key)?;

    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(Error::Config)?;
    let builder = match client_ca {
        Some(ca) => builder.with_client_cert_verifier(client_verifier(ca, provider)?),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(Error::Config)?;
    config.alpn_protocols = ALPN_PROTOCOLS.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// A verifier that checks client certificates against the CA bundle in `ca`, and lets
/// clients without a certificate through.
fn client_verifier(
    ca: &Path,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>> {
    let mut roots = RootCertStore::empty();
    for cert in read_certificates(ca)? {
        roots.add(cert).map_err(|source| Error::ClientCa {
            path: ca.to_path_buf(),
            source,
        })?;
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .allow_unauthenticated()
        .build()
        .map_err(Error::ClientVerifier)
}

/// Reads every certificate of a PEM file; at least one must be there.
pub fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let pem = read(path)?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| Error::Read {
            path: path.to_path_buf(),
            source,
        })?;
    if certs.is_empty() {
        return Err(Error::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// Reads the first private key (PKCS#8, PKCS#1 or SEC1) of a PEM file.
pub fn read_private_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    let pem = read(path)?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|source| Error::Read {
            path: path.to_path_buf(),
            source,
        })?
        .ok_or_else(|| Error::NoPrivateKey {
            path: path.to_path_buf(),
        })
}

fn read(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).map_err(|source| Error::Read {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DnType, IsCa, Issuer, KeyPair};
    use rustls::{ClientConfig, ClientConnection, ServerConnection};

    struct Pems {
        _dir: tempfile::TempDir,
        ca: PathBuf,
        cert: PathBuf,
        key: PathBuf,
        client_chain: Vec<CertificateDer<'static>>,
        client_key: PrivateKeyDer<'static>,
    }

    fn write_pems() -> Pems {
        let dir = tempfile::tempdir().expect("create temp dir");
        let ca_key = KeyPair::generate().expect("generate CA key");
        let mut ca_params = CertificateParams::new(Vec::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key).expect("self-sign CA");
        let issuer = Issuer::new(ca_params, ca_key);

        let key = KeyPair::generate().expect("generate server key");
        let params = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
        let cert = params.signed_by(&key, &issuer).expect("sign server cert");

        let client_key = KeyPair::generate().expect("generate client key");
        let mut client_params = CertificateParams::new(Vec::new()).expect("client params");
        client_params
            .distinguished_name
            .push(DnType::CommonName, "alice");
        let client_cert = client_params
            .signed_by(&client_key, &issuer)
            .expect("sign client cert");

        let paths = Pems {
            ca: dir.path().join("ca.crt"),
            cert: dir.path().join("server.crt"),
            key: dir.path().join("server.key"),
            client_chain: vec![client_cert.der().clone()],
            client_key: PrivateKeyDer::Pkcs8(client_key.serialize_der().into()),
            _dir: dir,
        };
        fs::write(&paths.ca, ca_cert.pem()).expect("write CA");
        fs::write(&paths.cert, cert.pem()).expect("write cert");
        fs::write(&paths.key, key.serialize_pem()).expect("write key");
        paths
    }

    /// Runs a TLS handshake in memory and returns the server side of it.
    fn handshake(
        server: Arc<ServerConfig>,
        pems: &Pems,
        with_client_cert: bool,
    ) -> Result<ServerConnection, rustls::Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        for cert in read_certificates(&pems.ca).expect("read CA") {
            roots.add(cert).expect("add CA");
        }
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots);
        let mut client_config = if with_client_cert {
            builder
                .with_client_auth_cert(pems.client_chain.clone(), pems.client_key.clone_key())
                .expect("client cert")
        } else {
            builder.with_no_client_auth()
        };
        client_config.alpn_protocols = vec![b"h2".to_vec()];
        let name = "localhost".try_into().expect("server name");
        let mut client = ClientConnection::new(Arc::new(client_config), name)?;
        let mut server = ServerConnection::new(server)?;
        for _ in 0..20 {
            if !client.is_handshaking() && !server.is_handshaking() {
                return Ok(server);
            }
            let mut buf = Vec::new();
            client.write_tls(&mut buf).expect("client writes");
            server.read_tls(&mut buf.as_slice()).expect("server reads");
            server.process_new_packets()?;
            let mut buf = Vec::new();
            server.write_tls(&mut buf).expect("server writes");
            client.read_tls(&mut buf.as_slice()).expect("client reads");
            client.process_new_packets()?;
        }
        panic!("handshake did not finish");
    }

    #[test]
    fn serves_h2_with_optional_client_certificates() {
        let pems = write_pems();
        let config = server_config(&pems.cert, &pems.key, Some(&pems.ca)).expect("config");
        assert_eq!(
            config.alpn_protocols,
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        );

        let server = handshake(config.clone(), &pems, false).expect("handshake without cert");
        assert_eq!(server.alpn_protocol(), Some(&b"h2"[..]));
        assert!(server.peer_certificates().is_none());

        let server = handshake(config, &pems, true).expect("handshake with cert");
        let peer = server
            .peer_certificates()
            .expect("verified client certificate");
        assert_eq!(peer[0], pems.client_chain[0]);
    }

    #[test]
    fn without_client_ca_serves_anyone() {
        let pems = write_pems();
        let config = server_config(&pems.cert, &pems.key, None).expect("config");
        let server = handshake(config, &pems, false).expect("handshake");
        assert!(server.peer_certificates().is_none());
    }

    #[test]
    fn reports_missing_and_empty_files() {
        let pems = write_pems();
        let missing = pems.cert.with_file_name("nope.crt");
        assert!(matches!(
            server_config(&missing, &pems.key, None),
            Err(Error::Read { .. })
        ));
        // A key file holds no certificate, a certificate file no key.
        assert!(matches!(
            server_config(&pems.key, &pems.key, None),
            Err(Error::NoCertificate { .. })
        ));
        assert!(matches!(
            server_config(&pems.cert, &pems.cert, None),
            Err(Error::NoPrivateKey { .. })
        ));
    }
}
