//! The administration API (default `127.0.0.1:15080`): what operators and the `palisade` CLI
//! talk to. Every route but `/healthz` needs a bearer admin token signed by the control
//! plane (audience `palisade-admin`), from loopback too; its `role` claim decides what the
//! caller may do: `viewer` reads, `editor` also writes mesh configuration, `admin` may do
//! everything (join tokens, CA rotation), `auditor` reads the audit trail.
//!
//! This issue brings the identity routes; the policy routes arrive with the control-plane
//! issue on the same router and the same authentication.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use palisade_contract::TrustDomain;
use serde::{Deserialize, Serialize};

use crate::ca::{CaError, CaStatus, CertificateAuthority, unix_now};
use crate::sidecar_api::{bearer_token, error_response};
use crate::store::{JoinTokenRecord, Store};
use crate::tokens::TokenKey;

/// Longest a join token may live.
pub const MAX_JOIN_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);
/// Join token lifetime when the request names none.
pub const DEFAULT_JOIN_TOKEN_TTL: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Editor,
    Admin,
    Auditor,
}

impl Role {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "viewer" => Some(Role::Viewer),
            "editor" => Some(Role::Editor),
            "admin" => Some(Role::Admin),
            "auditor" => Some(Role::Auditor),
            _ => None,
        }
    }

    /// Whether a caller with this role may do what `needed` allows.
    pub fn allows(self, needed: Role) -> bool {
        match (self, needed) {
            (Role::Admin, _) => true,
            (Role::Editor, Role::Editor | Role::Viewer) => true,
            (Role::Viewer, Role::Viewer) => true,
            (Role::Auditor, Role::Auditor) => true,
            _ => false,
        }
    }
}

pub struct AdminState {
    pub ca: Arc<CertificateAuthority>,
    pub token_key: Arc<TokenKey>,
    pub store: Store,
    pub trust_domain: TrustDomain,
    /// Called after a rotation step changes which root signs, so the control plane's own
    /// serving certificate follows.
    pub on_signer_change: Box<dyn Fn() + Send + Sync>,
}

/// An authenticated caller of the admin API.
#[derive(Debug, Clone)]
pub struct Principal {
    pub subject: String,
    pub role: Role,
}

impl Principal {
    fn require(&self, needed: Role) -> Result<(), Response> {
        if self.role.allows(needed) {
            Ok(())
        } else {
            Err(error_response(
                StatusCode::FORBIDDEN,
                &format!("role {:?} may not do this", self.role).to_lowercase(),
                Vec::new(),
            ))
        }
    }
}

impl FromRequestParts<Arc<AdminState>> for Principal {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AdminState>,
    ) -> Result<Self, Self::Rejection> {
        let unauthorized = |msg: &str| {
            let mut r = error_response(StatusCode::UNAUTHORIZED, msg, Vec::new());
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            r
        };
        let token =
            bearer_token(&parts.headers).ok_or_else(|| unauthorized("missing bearer token"))?;
        let claims = state.token_key.verify_admin(token).map_err(|e| {
            tracing::info!(target: "palisade::admin", reason = e.label(), "admin token refused");
            unauthorized("invalid bearer token")
        })?;
        let role =
            Role::parse(&claims.role).ok_or_else(|| unauthorized("token has an unknown role"))?;
        Ok(Principal {
            subject: claims.sub,
            role,
        })
    }
}

pub fn router(state: Arc<AdminState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/v1/join-tokens", post(create_join_token))
        .route("/v1/trust-bundle", get(trust_bundle))
        .route("/v1/ca", get(ca_status))
        .route("/v1/ca/rotation/{step}", post(rotate))
        .layer(DefaultBodyLimit::max(64 * 1024))
        .with_state(state)
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JoinTokenRequest {
    pub namespace: String,
    pub service_account: String,
    /// Lifetime in seconds (default 600, at most 86400).
    #[serde(default)]
    pub ttl_seconds: Option<u64>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinTokenResponse {
    pub token: String,
    pub spiffe_id: String,
    pub expires_at: i64,
}

async fn create_join_token(
    State(state): State<Arc<AdminState>>,
    principal: Principal,
    body: Result<Json<JoinTokenRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    if let Err(r) = principal.require(Role::Admin) {
        return r;
    }
    let Json(request) = match body {
        Ok(b) => b,
        Err(rejection) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                "invalid join token request",
                vec![rejection.body_text()],
            );
        }
    };
    let spiffe_id = match state
        .trust_domain
        .workload_id(&request.namespace, &request.service_account)
    {
        Ok(id) => id,
        Err(e) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                "invalid join token request",
                vec![e.to_string()],
            );
        }
    };
    if spiffe_id == palisade_contract::identity_api::control_plane_id(&state.trust_domain) {
        return error_response(
            StatusCode::BAD_REQUEST,
            "invalid join token request",
            vec![format!("{spiffe_id} is reserved for the control plane")],
        );
    }
    let ttl = Duration::from_secs(
        request
            .ttl_seconds
            .unwrap_or(DEFAULT_JOIN_TOKEN_TTL.as_secs()),
    );
    if ttl.is_zero() || ttl > MAX_JOIN_TOKEN_TTL {
        return error_response(
            StatusCode::BAD_REQUEST,
            "invalid join token request",
            vec![format!(
                "ttlSeconds must be between 1 and {}",
                MAX_JOIN_TOKEN_TTL.as_secs()
            )],
        );
    }
    let result = async {
        let claims = state.token_key.mint_join(&spiffe_id, ttl)?;
        let token = state.token_key.sign_join(&claims)?;
        state
            .store
            .record_join_token(&JoinTokenRecord {
                jti: claims.jti.clone(),
                spiffe_id: spiffe_id.to_string(),
                created_by: principal.subject.clone(),
                created_at: unix_now(),
                expires_at: claims.exp as i64,
            })
            .await
            .map_err(|e| CaError::Signing(e.to_string()))?;
        Ok::<_, CaError>((token, claims))
    }
    .await;
    match result {
        Ok((token, claims)) => {
            tracing::info!(target: "palisade::admin", event = "join_token.created",
                principal = %principal.subject, spiffe_id = %spiffe_id, jti = %claims.jti,
                expires_at = claims.exp, "join token created");
            (
                StatusCode::CREATED,
                Json(JoinTokenResponse {
                    token,
                    spiffe_id: spiffe_id.to_string(),
                    expires_at: claims.exp as i64,
                }),
            )
                .into_response()
        }
        Err(e) => internal(e),
    }
}

async fn trust_bundle(State(state): State<Arc<AdminState>>, principal: Principal) -> Response {
    if let Err(r) = principal.require(Role::Viewer) {
        return r;
    }
    (
        [(header::CONTENT_TYPE, "application/x-pem-file")],
        state.ca.bundle_pem(),
    )
        .into_response()
}

async fn ca_status(State(state): State<Arc<AdminState>>, principal: Principal) -> Response {
    if let Err(r) = principal.require(Role::Viewer) {
        return r;
    }
    Json(state.ca.status()).into_response()
}

async fn rotate(
    State(state): State<Arc<AdminState>>,
    principal: Principal,
    axum::extract::Path(step): axum::extract::Path<String>,
) -> Response {
    if let Err(r) = principal.require(Role::Admin) {
        return r;
    }
    let result: Result<CaStatus, CaError> = match step.as_str() {
        "prepare" => state.ca.rotation_prepare(),
        "activate" => state
            .ca
            .rotation_activate()
            .inspect(|_| (state.on_signer_change)()),
        "finish" => state.ca.rotation_finish(),
        other => {
            return error_response(
                StatusCode::NOT_FOUND,
                &format!("unknown rotation step {other:?}: use prepare, activate or finish"),
                Vec::new(),
            );
        }
    };
    match result {
        Ok(status) => {
            tracing::info!(target: "palisade::admin", event = "ca.rotation", step = %step,
                principal = %principal.subject, "CA rotation step done");
            Json(status).into_response()
        }
        Err(CaError::Rotation(msg)) => error_response(StatusCode::CONFLICT, &msg, Vec::new()),
        Err(e) => internal(e),
    }
}

fn internal(e: CaError) -> Response {
    tracing::error!(target: "palisade::admin", error = %e, "admin request failed");
    error_response(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal error",
        Vec::new(),
    )
}
