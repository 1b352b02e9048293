//! The CA's routes: the trust bundle, its status, and root rotation steps.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use crate::ca::{CaError, CaStatus};

use super::{AdminError, AdminState, Principal, audit_event};

pub(super) async fn trust_bundle(
    State(state): State<Arc<AdminState>>,
) -> Result<Response, AdminError> {
    Ok((
        [(header::CONTENT_TYPE, "application/x-pem-file")],
        state.ca.bundle_pem(),
    )
        .into_response())
}

pub(super) async fn ca_status(
    State(state): State<Arc<AdminState>>,
) -> Result<Json<CaStatus>, AdminError> {
    Ok(Json(state.ca.status()))
}

pub(super) async fn rotate(
    State(state): State<Arc<AdminState>>,
    principal: Principal,
    headers: axum::http::HeaderMap,
    axum::extract::Path(step): axum::extract::Path<String>,
) -> Result<Json<CaStatus>, AdminError> {
    let status = match step.as_str() {
        "prepare" => state.ca.rotation_prepare(),
        "activate" => state.ca.rotation_activate(),
        "finish" => state.ca.rotation_finish(),
        other => {
            return Err(AdminError::NotFound(format!(
                "unknown rotation step {other:?}: use prepare, activate or finish"
            )));
        }
    }
    .map_err(|e| match e {
        CaError::Rotation(msg) => AdminError::Conflict(msg),
        other => AdminError::Internal(other.to_string()),
    })?;
    tracing::info!(target: "palisade::admin", event = "ca.rotation", step = %step,
        principal = %principal.subject, "CA rotation step done");
    audit_event(
        &state,
        &principal,
        &headers,
        &format!("rotation-{step}"),
        "CertificateAuthority",
        palisade_contract::identity_api::CONTROL_PLANE_NAMESPACE,
        "ca",
        serde_json::to_value(&status).unwrap_or_default(),
    )
    .await?;
    Ok(Json(status))
}
