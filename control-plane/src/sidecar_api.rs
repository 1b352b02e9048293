//! The sidecar-facing listener (default port 15012): TLS always, client certificates
//! optional. A sidecar without a certificate may only bootstrap (`issue`, with a token);
//! renewal needs the certificate the handshake verified.
//!
//! accept -> TLS handshake (bounded in time) -> peer SPIFFE ID into the request's
//! extensions -> axum routes -> [`IdentityService`].

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Extension, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use palisade_contract::SpiffeId;
use palisade_contract::config_api::{CONFIG_PATH, ConfigQuery};
use palisade_contract::identity_api::{
    CertificateRequest, CertificateResponse, ErrorBody, ISSUE_PATH, MAX_REQUEST_BYTES, RENEW_PATH,
    TRUST_BUNDLE_PATH,
};
use palisade_contract::process::accept;
use palisade_contract::tls::peer_spiffe_id;
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::ca::IssuedCertificate;
use crate::issuance::{IdentityService, IssueError};
use crate::mesh_config::MeshConfig;

/// The caller as the TLS layer saw it.
#[derive(Debug, Clone)]
pub(crate) struct Peer {
    addr: SocketAddr,
    spiffe_id: Option<SpiffeId>,
    /// When the client certificate expires: a keep-alive connection can outlive it, so each
    /// request checks again.
    cert_not_after: i64,
}

impl Peer {
    pub(crate) fn current_identity(&self) -> Option<&SpiffeId> {
        self.spiffe_id
            .as_ref()
            .filter(|_| crate::ca::unix_now() < self.cert_not_after)
    }
}

pub fn router(service: Arc<IdentityService>, mesh: Arc<MeshConfig>) -> Router {
    Router::new()
        .route(ISSUE_PATH, post(issue))
        .route(RENEW_PATH, post(renew))
        .route(TRUST_BUNDLE_PATH, get(trust_bundle))
        .route(CONFIG_PATH, get(config))
        .layer(Extension(mesh))
        .layer(DefaultBodyLimit::max(MAX_REQUEST_BYTES))
        .with_state(service)
}

/// The configuration long poll ([`palisade_contract::config_api`]): mTLS only; the
/// certificate says which namespace's documents the caller gets.
async fn config(
    Extension(peer): Extension<Peer>,
    Extension(mesh): Extension<Arc<MeshConfig>>,
    query: Result<Query<ConfigQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Some(id) = peer.current_identity() else {
        return error_response(
            StatusCode::UNAUTHORIZED,
            "the configuration needs a valid client certificate",
            Vec::new(),
        );
    };
    let Query(q) = match query {
        Ok(q) => q,
        Err(e) => return error_response(StatusCode::BAD_REQUEST, "bad query", vec![e.body_text()]),
    };
    let Some(namespace) = id.namespace() else {
        return error_response(StatusCode::FORBIDDEN, "not a workload identity", Vec::new());
    };
    let seen = crate::store::Workload {
        spiffe_id: id.to_string(),
        instance: q.instance.chars().take(64).collect(),
        applied_version: q.applied,
        certificate_expiry: peer.cert_not_after,
        last_seen: crate::ca::unix_now(),
    };
    if let Err(e) = mesh.store().workload_seen(&seen).await {
        tracing::warn!(error = %e, "recording a sidecar's poll failed");
    }
    match mesh.wait_for_newer(namespace, q.version).await {
        Ok(Some(config)) => Json(config).into_response(),
        Ok(None) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => {
            tracing::error!(error = %e, "reading the mesh configuration failed");
            error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal error",
                Vec::new(),
            )
        }
    }
}

async fn issue(
    State(service): State<Arc<IdentityService>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    body: Result<Json<CertificateRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Json(request) = match body {
        Ok(b) => b,
        Err(rejection) => return bad_body(rejection),
    };
    let token = bearer_token(&headers);
    let result = service
        .issue(token, &request.csr, &peer.addr.to_string())
        .await;
    respond(&service, result)
}

async fn renew(
    State(service): State<Arc<IdentityService>>,
    Extension(peer): Extension<Peer>,
    body: Result<Json<CertificateRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Json(request) = match body {
        Ok(b) => b,
        Err(rejection) => return bad_body(rejection),
    };
    let result = service
        .renew(
            peer.current_identity(),
            &request.csr,
            &peer.addr.to_string(),
        )
        .await;
    respond(&service, result)
}

async fn trust_bundle(State(service): State<Arc<IdentityService>>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/x-pem-file")],
        service.ca().bundle_pem(),
    )
        .into_response()
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

fn bad_body(rejection: axum::extract::rejection::JsonRejection) -> Response {
    error_response(
        rejection.status(),
        "request body must be JSON: {\"csr\": \"<PEM>\"}",
        vec![rejection.body_text()],
    )
}

fn respond(service: &IdentityService, result: Result<IssuedCertificate, IssueError>) -> Response {
    match result {
        Ok(cert) => Json(CertificateResponse {
            certificate_chain: cert.chain_pem(),
            spiffe_id: cert.spiffe_id,
            trust_bundle: service.ca().bundle_pem(),
            not_after: cert.not_after,
        })
        .into_response(),
        Err(e) => error_response(status_of(&e), &e.to_string(), Vec::new()),
    }
}

/// The one place a refusal becomes an HTTP status.
fn status_of(e: &IssueError) -> StatusCode {
    match e {
        IssueError::MissingToken
        | IssueError::Token(_)
        | IssueError::TokenReused
        | IssueError::NoClientCertificate => StatusCode::UNAUTHORIZED,
        IssueError::Csr(_) => StatusCode::BAD_REQUEST,
        IssueError::Reserved(_) => StatusCode::FORBIDDEN,
        IssueError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
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
            let peer = Peer {
                addr,
                spiffe_id: peer_spiffe_id(peer_certs),
                cert_not_after: peer_certs
                    .and_then(|c| c.first())
                    .and_then(|c| palisade_contract::certs::summarize(c).ok())
                    .map_or(0, |s| s.not_after),
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
