//! Serving HTTP: the accept loop (TLS or, for tests, plain), one router for REST and
//! gRPC, authentication in front of both.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use tracing::{debug, info, warn};

use rkube_api::status::Status;

use crate::auth::Authenticator;
use crate::rest::status_response;

/// The verified client certificate of a TLS connection (DER), if the client sent one.
#[derive(Clone, Debug, Default)]
pub struct PeerCertificate(pub Option<Arc<Vec<u8>>>);

/// Authenticates every request; the user goes into the request's extensions, where an
/// authorizer (RBAC) will find it.
pub async fn authenticate(
    State(authn): State<Arc<Authenticator>>,
    mut req: Request,
    next: Next,
) -> Response {
    if crate::auth::is_public_path(req.uri().path()) {
        return next.run(req).await;
    }
    let authorization = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    let peer = req
        .extensions()
        .get::<PeerCertificate>()
        .and_then(|p| p.0.clone());
    match authn.authenticate(authorization.as_deref(), peer.as_deref().map(Vec::as_slice)) {
        Ok(user) => {
            debug!(user = %user.name, path = %req.uri().path(), "authenticated");
            req.extensions_mut().insert(user);
            next.run(req).await
        }
        Err(e) => {
            debug!(error = %e, path = %req.uri().path(), "unauthenticated request");
            status_response(&Status::unauthorized())
        }
    }
}

/// Accepts connections until `shutdown`, then drains them for a few seconds.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    app: axum::Router,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // kubectl and the components multiplex many watches over one HTTP/2 connection.
    builder.http2().max_concurrent_streams(1000);
    info!(address = %listener.local_addr()?, tls = acceptor.is_some(), "serving");
    loop {
        let (tcp, remote) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let app = app.clone();
        let builder = builder.clone();
        let acceptor = acceptor.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            match acceptor {
                Some(acceptor) => {
                    let tls =
                        match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp))
                            .await
                        {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                debug!(%remote, error = %e, "TLS handshake failed");
                                return;
                            }
                            Err(_) => return,
                        };
                    let peer = PeerCertificate(
                        tls.get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|certs| certs.first())
                            .map(|c| Arc::new(c.as_ref().to_vec())),
                    );
                    let svc = app.map_request(move |mut req: Request<hyper::body::Incoming>| {
                        req.extensions_mut().insert(peer.clone());
                        req
                    });
                    let conn = builder.serve_connection_with_upgrades(
                        TokioIo::new(tls),
                        TowerToHyperService::new(svc),
                    );
                    if let Err(e) = watcher.watch(conn.into_owned()).await {
                        debug!(%remote, error = %e, "connection ended with an error");
                    }
                }
                None => {
                    let svc = app.map_request(|mut req: Request<hyper::body::Incoming>| {
                        req.extensions_mut().insert(PeerCertificate(None));
                        req
                    });
                    let conn = builder.serve_connection_with_upgrades(
                        TokioIo::new(tcp),
                        TowerToHyperService::new(svc),
                    );
                    if let Err(e) = watcher.watch(conn.into_owned()).await {
                        debug!(%remote, error = %e, "connection ended with an error");
                    }
                }
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(Duration::from_secs(5), graceful.shutdown())
        .await
        .is_err()
    {
        info!("closing connections that did not finish in time");
    }
    Ok(())
}
