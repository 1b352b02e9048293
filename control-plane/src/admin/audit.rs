//! `GET /v1/audit`: the admin audit trail, and recording the actions that are not
//! configuration changes (tokens, CA rotation) in it.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use serde::Deserialize;

use crate::store::AuditFilter;

use super::{AdminError, AdminState, Principal, internal, request_id};

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuditQuery {
    /// Unix seconds.
    pub since: Option<i64>,
    pub principal: Option<String>,
    pub kind: Option<String>,
    pub namespace: Option<String>,
    pub limit: Option<i64>,
}

pub async fn audit(
    State(state): State<Arc<AdminState>>,
    Query(q): Query<AuditQuery>,
) -> Result<Json<Vec<crate::store::AuditEntry>>, AdminError> {
    let filter = AuditFilter {
        since: q.since,
        principal: q.principal,
        kind: q.kind,
        namespace: q.namespace,
        limit: q.limit,
    };
    Ok(Json(
        state
            .mesh
            .store()
            .audit_trail(&filter)
            .await
            .map_err(internal)?,
    ))
}

/// Records a non-configuration administrative action in the audit trail.
#[allow(clippy::too_many_arguments)]
pub(super) async fn audit_event(
    state: &AdminState,
    principal: &Principal,
    headers: &axum::http::HeaderMap,
    action: &str,
    kind: &str,
    namespace: &str,
    name: &str,
    detail: serde_json::Value,
) -> Result<(), AdminError> {
    let request_id = request_id(headers);
    state
        .mesh
        .store()
        .record_admin_event(
            &crate::store::Actor {
                principal: &principal.subject,
                request_id: &request_id,
                now: crate::ca::unix_now(),
            },
            action,
            kind,
            namespace,
            name,
            &detail,
        )
        .await
        .map_err(|e| AdminError::Internal(e.to_string()))
}
