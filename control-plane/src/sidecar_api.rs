//! The sidecar-facing listener (default port 15012): TLS always, client certificates
//! optional. A sidecar without a certificate may only bootstrap (`issue`, with a token);
//! renewal needs the certificate the handshake verified.
//!
//! accept -> TLS handshake (bounded in time) -> peer SPIFFE ID into the request's
//! extensions -> axum routes -> [`IdentityService`]. The TLS serving itself is
//! [`crate::serving`], shared with the admin API and the webhook.

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Extension, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use palisade_contract::config_api::{CONFIG_PATH, ConfigQuery};
use palisade_contract::identity_api::{
    CertificateRequest, CertificateResponse, ISSUE_PATH, MAX_REQUEST_BYTES, REATTEST_PATH,
    RENEW_PATH, ReattestRequest, TRUST_BUNDLE_PATH,
};

use palisade_contract::decisions::ship::{MAX_BATCH_BYTES, SHIP_PATH};

use crate::ca::IssuedCertificate;
use crate::collector::{Collector, IngestError};
use crate::issuance::{IdentityService, IssueError};
use crate::mesh_config::MeshConfig;
use crate::serving::{Peer, bearer_token, error_response};

pub fn router(
    service: Arc<IdentityService>,
    mesh: Arc<MeshConfig>,
    collector: Arc<Collector>,
) -> Router {
    // Batches of the decision log are larger than anything else a sidecar sends.
    let decisions = Router::new()
        .route(SHIP_PATH, post(ship_decisions))
        .layer(Extension(collector))
        .layer(DefaultBodyLimit::max(MAX_BATCH_BYTES));
    Router::new()
        .route(ISSUE_PATH, post(issue))
        .route(RENEW_PATH, post(renew))
        .route(REATTEST_PATH, post(reattest))
        .route(TRUST_BUNDLE_PATH, get(trust_bundle))
        .route(CONFIG_PATH, get(config))
        .layer(Extension(mesh))
        .layer(DefaultBodyLimit::max(MAX_REQUEST_BYTES))
        .merge(decisions)
        .with_state(service)
}

#[derive(Debug, serde::Deserialize)]
struct ShipQuery {
    instance: String,
}

/// A batch of a sidecar's decision log ([`palisade_contract::decisions::ship`]): mTLS only;
/// acknowledged once stored.
async fn ship_decisions(
    Extension(peer): Extension<Peer>,
    Extension(collector): Extension<Arc<Collector>>,
    query: Result<Query<ShipQuery>, axum::extract::rejection::QueryRejection>,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let Some(id) = peer.current_identity() else {
        return error_response(
            StatusCode::UNAUTHORIZED,
            "shipping decisions needs a valid client certificate",
            Vec::new(),
        );
    };
    let Query(q) = match query {
        Ok(q) => q,
        Err(e) => return error_response(StatusCode::BAD_REQUEST, "bad query", vec![e.body_text()]),
    };
    let body = match body {
        Ok(b) => b,
        Err(e) => return error_response(e.status(), "unreadable batch", vec![e.body_text()]),
    };
    match collector.ingest(id, &q.instance, &body).await {
        Ok(ack) => Json(ack).into_response(),
        Err(e) => {
            let status = match &e {
                IngestError::Malformed(_) => StatusCode::BAD_REQUEST,
                IngestError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
                IngestError::NotYours { .. } => StatusCode::FORBIDDEN,
                IngestError::Store(_) => {
                    tracing::error!(error = %e, "storing shipped decisions failed");
                    StatusCode::SERVICE_UNAVAILABLE
                }
            };
            error_response(status, &e.to_string(), Vec::new())
        }
    }
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
        // At most a few roots of 16 hex digits each: anything else is not a root list.
        trusted_roots: crate::store::split_roots(&q.roots)
            .into_iter()
            .filter(|r| palisade_contract::tls::is_root_id(r))
            .take(8)
            .collect(),
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
            &peer.cert_serial,
            &request.csr,
            &peer.addr.to_string(),
        )
        .await;
    respond(&service, result)
}

async fn reattest(
    State(service): State<Arc<IdentityService>>,
    Extension(peer): Extension<Peer>,
    body: Result<Json<ReattestRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Json(request) = match body {
        Ok(b) => b,
        Err(rejection) => {
            return error_response(
                rejection.status(),
                "request body must be JSON: {\"certificateChain\", \"csr\", \"signedAt\", \"signature\"}",
                vec![rejection.body_text()],
            );
        }
    };
    let result = service.reattest(&request, &peer.addr.to_string()).await;
    respond(&service, result)
}

async fn trust_bundle(State(service): State<Arc<IdentityService>>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/x-pem-file")],
        service.ca().bundle_pem(),
    )
        .into_response()
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
        Err(e) => error_response(e.status(), &e.to_string(), Vec::new()),
    }
}
