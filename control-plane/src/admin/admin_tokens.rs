//! `/v1/admin-tokens`: creating, listing and revoking admin tokens
//! ([`crate::admin_tokens`] keeps their records).

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use crate::admin_tokens::DEFAULT_ADMIN_TOKEN_TTL;

use super::{AdminError, AdminState, Principal, Role, audit_event};

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AdminTokenRequest {
    pub name: String,
    pub role: String,
    /// Lifetime in seconds (default 3600, at most 90 days).
    #[serde(default)]
    pub ttl_seconds: Option<u64>,
}

pub(super) async fn create_admin_token(
    State(state): State<Arc<AdminState>>,
    principal: Principal,
    headers: axum::http::HeaderMap,
    body: Result<Json<AdminTokenRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, AdminError> {
    let invalid = |detail: String| AdminError::Invalid {
        error: "invalid admin token request".into(),
        details: vec![detail],
    };
    let Json(request) =
        body.map_err(|r| AdminError::from_json_rejection(r, "admin token request"))?;
    let role = Role::parse(&request.role).ok_or_else(|| {
        invalid(format!(
            "role {:?} is not viewer, editor, auditor or admin",
            request.role.chars().take(32).collect::<String>()
        ))
    })?;
    let ttl = request
        .ttl_seconds
        .map_or(DEFAULT_ADMIN_TOKEN_TTL, Duration::from_secs);
    let token = state
        .admin_tokens
        .create(&request.name, role.name(), ttl, &principal.subject)
        .await?;
    // The token itself is a credential: the trail records which one, never the token.
    audit_event(
        &state,
        &principal,
        &headers,
        "created",
        "AdminToken",
        palisade_contract::identity_api::CONTROL_PLANE_NAMESPACE,
        &token.name,
        serde_json::json!({"id": token.id, "role": token.role, "expiresAt": token.expires_at}),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(token)).into_response())
}

pub(super) async fn list_admin_tokens(
    State(state): State<Arc<AdminState>>,
) -> Result<Json<serde_json::Value>, AdminError> {
    let items = state.admin_tokens.list().await?;
    Ok(Json(serde_json::json!({ "items": items })))
}

pub(super) async fn revoke_admin_token(
    State(state): State<Arc<AdminState>>,
    principal: Principal,
    headers: axum::http::HeaderMap,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Json<serde_json::Value>, AdminError> {
    let revoked = state.admin_tokens.revoke(&id, &principal.subject).await?;
    for t in &revoked {
        audit_event(
            &state,
            &principal,
            &headers,
            "revoked",
            "AdminToken",
            palisade_contract::identity_api::CONTROL_PLANE_NAMESPACE,
            &t.name,
            serde_json::json!({"id": t.jti, "role": t.role}),
        )
        .await?;
    }
    Ok(Json(serde_json::json!({ "revoked": revoked })))
}
