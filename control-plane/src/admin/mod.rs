//! The administration API (default `127.0.0.1:15080`): what operators and the `palisade` CLI
//! talk to. Every route but `/healthz` needs a bearer admin token signed by the control
//! plane (audience `palisade-admin`), from loopback too; its `role` claim decides what the
//! caller may do: `viewer` reads, `editor` also writes mesh configuration, `admin` may do
//! everything (join tokens, CA rotation), `auditor` reads the audit trail and the decision log.
//!
//! Which role each route needs is written once, in [`ROUTES`]: a middleware enforces it for
//! every route, the role-matrix test walks it, and a test compares it with the OpenAPI
//! document served at `/v1/openapi.json` (kept in the repository as `openapi.json`).
//!
//! One file per concern: `auth.rs` (who is calling, and roles), `error.rs` (the JSON
//! errors), `state.rs`, and one file per resource: `documents.rs`, `simulate.rs`,
//! `workloads.rs`, `audit.rs`, `decisions.rs`, `join_tokens.rs`, `admin_tokens.rs`, `ca.rs`. This file holds
//! the router, the role table and the OpenAPI document.

mod admin_tokens;
mod audit;
mod auth;
mod ca;
mod decisions;
mod documents;
mod error;
mod join_tokens;
mod simulate;
mod state;
mod workloads;

pub use audit::AuditQuery;
use audit::audit_event;
pub use auth::{K8sAdmin, K8sAdmins, OidcAdmins, Principal, Role, SpiffeAdmin};
pub use error::AdminError;
use error::{change_error, internal, invalid};
pub use state::AdminState;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

/// Every route of the API but `/healthz`, with the role it needs: the one place roles are
/// decided.
pub const ROUTES: &[(&str, &str, Role)] = &[
    ("POST", "/v1/join-tokens", Role::Admin),
    ("POST", "/v1/admin-tokens", Role::Admin),
    ("GET", "/v1/admin-tokens", Role::Admin),
    ("DELETE", "/v1/admin-tokens/{id}", Role::Admin),
    ("GET", "/v1/trust-bundle", Role::Viewer),
    ("GET", "/v1/ca", Role::Viewer),
    ("POST", "/v1/ca/rotation/{step}", Role::Admin),
    ("GET", "/v1/resources", Role::Viewer),
    (
        "GET",
        "/v1/namespaces/{namespace}/{plural}/{name}",
        Role::Viewer,
    ),
    (
        "PUT",
        "/v1/namespaces/{namespace}/{plural}/{name}",
        Role::Editor,
    ),
    (
        "DELETE",
        "/v1/namespaces/{namespace}/{plural}/{name}",
        Role::Editor,
    ),
    ("POST", "/v1/apply", Role::Editor),
    ("POST", "/v1/validate", Role::Viewer),
    ("POST", "/v1/simulate", Role::Viewer),
    ("GET", "/v1/workloads", Role::Viewer),
    ("GET", "/v1/audit", Role::Auditor),
    ("GET", "/v1/decisions", Role::Auditor),
    ("GET", "/v1/decisions/integrity", Role::Auditor),
    ("GET", "/v1/openapi.json", Role::Viewer),
];

/// The OpenAPI 3 document of this API.
pub const OPENAPI: &str = include_str!("../../openapi.json");

/// Largest request body (an apply of many documents).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

pub fn router(state: Arc<AdminState>) -> Router {
    let ns_doc = "/v1/namespaces/{namespace}/{plural}/{name}";
    let authenticated = Router::new()
        .route("/v1/join-tokens", post(join_tokens::create_join_token))
        .route(
            "/v1/admin-tokens",
            post(admin_tokens::create_admin_token).get(admin_tokens::list_admin_tokens),
        )
        .route(
            "/v1/admin-tokens/{id}",
            axum::routing::delete(admin_tokens::revoke_admin_token),
        )
        .route("/v1/trust-bundle", get(ca::trust_bundle))
        .route("/v1/ca", get(ca::ca_status))
        .route("/v1/ca/rotation/{step}", post(ca::rotate))
        .route("/v1/resources", get(documents::list))
        .route(
            ns_doc,
            get(documents::get_one)
                .put(documents::put_one)
                .delete(documents::delete_one),
        )
        .route("/v1/apply", post(documents::apply))
        .route("/v1/validate", post(documents::validate_only))
        .route("/v1/simulate", post(simulate::simulate))
        .route("/v1/workloads", get(workloads::workloads))
        .route("/v1/audit", get(audit::audit))
        .route("/v1/decisions", get(decisions::decisions))
        .route("/v1/decisions/integrity", get(decisions::integrity))
        .route(
            "/v1/openapi.json",
            get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }),
        )
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::authorize,
        ));
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .merge(authenticated)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::map_response(error::json_errors))
        .with_state(state)
}

/// Readiness: the database answers (a replica that lost PostgreSQL can neither issue
/// renewals' records nor serve current configuration, so traffic should go elsewhere).
async fn ready(State(state): State<Arc<AdminState>>) -> Response {
    match tokio::time::timeout(
        std::time::Duration::from_secs(2),
        state.mesh.store().mesh_version(),
    )
    .await
    {
        Ok(Ok(version)) => {
            (StatusCode::OK, format!("ready (mesh version {version})\n")).into_response()
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "not ready: the database does not answer");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "the database does not answer\n",
            )
                .into_response()
        }
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "the database did not answer in 2 s\n",
        )
            .into_response(),
    }
}

/// A request id for the audit trail: the caller's `x-request-id` when it sends a sane one.
fn request_id(headers: &HeaderMap) -> String {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 64 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
        .or_else(|| crate::tokens::random_id().ok())
        .unwrap_or_default()
}
