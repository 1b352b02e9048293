//! `POST /v1/join-tokens`: single-use bootstrap tokens for workload identities.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use crate::join_tokens::{DEFAULT_JOIN_TOKEN_TTL, JoinTokenError};

use super::{AdminError, AdminState, Principal, audit_event};

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JoinTokenRequest {
    pub namespace: String,
    pub service_account: String,
    /// Lifetime in seconds (default 600, at most 86400).
    #[serde(default)]
    pub ttl_seconds: Option<u64>,
}

pub(super) async fn create_join_token(
    State(state): State<Arc<AdminState>>,
    principal: Principal,
    headers: axum::http::HeaderMap,
    body: Result<Json<JoinTokenRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, AdminError> {
    let Json(request) =
        body.map_err(|r| AdminError::from_json_rejection(r, "join token request"))?;
    let ttl = request
        .ttl_seconds
        .map_or(DEFAULT_JOIN_TOKEN_TTL, Duration::from_secs);
    let token = state
        .join_tokens
        .create(
            &request.namespace,
            &request.service_account,
            ttl,
            &principal.subject,
        )
        .await
        .map_err(|e| match e {
            JoinTokenError::Invalid(detail) => AdminError::Invalid {
                error: "invalid join token request".into(),
                details: vec![detail],
            },
            JoinTokenError::Internal(detail) => AdminError::Internal(detail),
        })?;
    // The token itself is a credential: the trail records whom it is for, never the token.
    audit_event(
        &state,
        &principal,
        &headers,
        "created",
        "JoinToken",
        &request.namespace,
        &request.service_account,
        serde_json::json!({"spiffeId": token.spiffe_id, "expiresAt": token.expires_at}),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(token)).into_response())
}
