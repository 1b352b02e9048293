//! The sidecar injector's admission webhook: `POST /inject` with an `AdmissionReview`,
//! answered by [`palisade_inject::admission::respond`] (the same code as `palisade
//! inject`). Served over TLS with the serving certificate the Kubernetes API server is
//! told to trust (the `caBundle` of the MutatingWebhookConfiguration), on its own port:
//! that certificate names a cluster DNS name, unlike the control plane's SPIFFE
//! certificate, and the API server presents no client certificate.

use std::path::Path;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use http::StatusCode;
use palisade_inject::Settings;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use serde_json::Value;

use crate::metrics::WebhookMetrics;
use crate::serving::error_response;

/// Largest AdmissionReview read (a pod with large inline env or annotations is still far
/// below; the API server's own request limit is 3 MiB).
pub const MAX_REVIEW_BYTES: usize = 4 * 1024 * 1024;

struct WebhookState {
    settings: Settings,
    metrics: WebhookMetrics,
}

pub fn router(settings: Settings, metrics: WebhookMetrics) -> Router {
    Router::new()
        .route("/inject", post(inject))
        .layer(DefaultBodyLimit::max(MAX_REVIEW_BYTES))
        .with_state(Arc::new(WebhookState { settings, metrics }))
}

async fn inject(State(state): State<Arc<WebhookState>>, body: Bytes) -> Response {
    let count = |result: &str| state.metrics.reviews.with_label_values(&[result]).inc();
    let review: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            count("invalid");
            return error_response(
                StatusCode::BAD_REQUEST,
                "the body is not JSON",
                vec![e.to_string()],
            );
        }
    };
    match palisade_inject::admission::respond(&review, &state.settings) {
        Ok(answer) => {
            let response = &answer["response"];
            count(if response.get("patch").is_some() {
                "injected"
            } else if response["allowed"] == true {
                "skipped"
            } else {
                "refused"
            });
            tracing::info!(
                uid = response["uid"].as_str().unwrap_or_default(),
                namespace = review["request"]["namespace"].as_str().unwrap_or_default(),
                allowed = response["allowed"].as_bool().unwrap_or_default(),
                injected = response.get("patch").is_some(),
                reason = response["auditAnnotations"]["palisade.dev/injection"]
                    .as_str()
                    .or(response["status"]["message"].as_str())
                    .unwrap_or_default(),
                "admission review"
            );
            axum::Json(answer).into_response()
        }
        Err(e) => {
            count("invalid");
            error_response(StatusCode::BAD_REQUEST, &e.to_string(), Vec::new())
        }
    }
}

/// TLS for the webhook port from PEM files: the serving chain and its key.
pub fn tls_config(cert: &Path, key: &Path) -> anyhow::Result<ServerConfig> {
    use anyhow::Context;
    let chain = palisade_contract::certs::certs_from_pem(
        &std::fs::read(cert).with_context(|| format!("reading {}", cert.display()))?,
    )
    .with_context(|| format!("{}: no certificate", cert.display()))?;
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(
        &std::fs::read(key).with_context(|| format!("reading {}", key.display()))?,
    )
    .with_context(|| format!("{}: no private key", key.display()))?;
    let mut config = ServerConfig::builder_with_provider(palisade_contract::tls::crypto_provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("the webhook certificate and key do not match")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// TLS for the webhook port with the control plane's own certificate (renewed with it),
/// which carries the webhook's DNS names; no client certificate is asked for (the API
/// server does not present one to webhooks by default).
pub fn own_tls_config(identity: Arc<palisade_contract::tls::IdentitySlot>) -> ServerConfig {
    let mut config = ServerConfig::builder_with_provider(palisade_contract::tls::crypto_provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .with_no_client_auth()
        .with_cert_resolver(identity);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config
}
