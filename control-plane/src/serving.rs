//! Serving HTTP over TLS, shared by the control plane's three TLS listeners (the sidecar
//! API, the admin API with `--admin-tls`, the injection webhook): the handshake bounded in
//! time, the peer's SPIFFE ID and certificate expiry put into each request (a kept-alive
//! connection can outlive the certificate, so each request checks again), graceful drain
//! on shutdown; and the pieces every route answers with (the JSON error body, the bearer
//! token of a request).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use palisade_contract::SpiffeId;
use palisade_contract::identity_api::ErrorBody;
use palisade_contract::process::accept;
use palisade_contract::tls::peer_spiffe_id;
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

/// The caller as the TLS layer saw it.
#[derive(Debug, Clone)]
pub(crate) struct Peer {
    pub(crate) addr: SocketAddr,
    spiffe_id: Option<SpiffeId>,
    /// When the client certificate expires: a keep-alive connection can outlive it, so each
    /// request checks again.
    pub(crate) cert_not_after: i64,
    /// The client certificate's serial (empty without one).
    pub(crate) cert_serial: String,
}

impl Peer {
    pub(crate) fn current_identity(&self) -> Option<&SpiffeId> {
        self.spiffe_id
            .as_ref()
            .filter(|_| crate::ca::unix_now() < self.cert_not_after)
    }
}

/// The token of an `Authorization: Bearer <token>` header (scheme case-insensitive).
pub(crate) fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let (scheme, token) = headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

pub(crate) fn error_response(status: StatusCode, error: &str, details: Vec<String>) -> Response {
    (
        status,
        Json(ErrorBody {
            error: error.to_owned(),
            details,
        }),
    )
        .into_response()
}

/// Serves `router` in plain HTTP on `listener` until `shutdown` resolves (the metrics port,
/// and the admin port without `--admin-tls`), then lets in-flight requests finish.
pub async fn serve_plain(
    listener: TcpListener,
    router: Router,
    what: &'static str,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    if let Err(e) = axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
    {
        tracing::error!(listener = what, error = %e, "listener failed");
    }
}

/// Serves `router` over TLS on `listener` until `shutdown` resolves, then lets in-flight
/// requests finish (for at most 10 s). A client gets `handshake_timeout` to complete the TLS
/// handshake and then to send each request's headers.
pub async fn serve_tls(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    router: Router,
    handshake_timeout: Duration,
    shutdown: impl Future<Output = ()>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(handshake_timeout);
    let builder = Arc::new(builder);
    tokio::pin!(shutdown);
    loop {
        let Some((tcp, addr)) = accept(&listener, &mut shutdown, "sidecar API").await else {
            break;
        };
        let acceptor = acceptor.clone();
        let router = router.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(peer = %addr, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(peer = %addr, "TLS handshake timed out");
                    return;
                }
            };
            let peer_certs = tls.get_ref().1.peer_certificates();
            let leaf = peer_certs
                .and_then(|c| c.first())
                .and_then(|c| palisade_contract::certs::summarize(c).ok());
            let peer = Peer {
                addr,
                spiffe_id: peer_spiffe_id(peer_certs),
                cert_not_after: leaf.as_ref().map_or(0, |s| s.not_after),
                cert_serial: leaf.map(|s| s.serial).unwrap_or_default(),
            };
            let service =
                router.map_request(move |mut req: http::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(peer.clone());
                    req.map(axum::body::Body::new)
                });
            let conn =
                builder.serve_connection(TokioIo::new(tls), TowerToHyperService::new(service));
            if let Err(e) = watcher.watch(conn.into_owned()).await {
                tracing::debug!(peer = %addr, error = %e, "connection ended with an error");
            }
        });
    }
    if tokio::time::timeout(Duration::from_secs(10), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after 10 s of draining; closing them");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_auth(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, value.parse().unwrap());
        h
    }

    #[test]
    fn bearer_scheme_is_case_insensitive_and_the_token_required() {
        assert_eq!(bearer_token(&with_auth("Bearer abc")), Some("abc"));
        assert_eq!(bearer_token(&with_auth("bearer abc ")), Some("abc"));
        assert_eq!(bearer_token(&with_auth("BEARER abc")), Some("abc"));
        assert_eq!(bearer_token(&with_auth("Basic abc")), None);
        assert_eq!(bearer_token(&with_auth("Bearer ")), None);
        assert_eq!(bearer_token(&with_auth("Bearerabc")), None);
        assert_eq!(bearer_token(&HeaderMap::new()), None);
    }
}
