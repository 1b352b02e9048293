//! `GET /v1/audit`: the admin audit trail (newest first, paged with a cursor), and recording the actions that are not
//! configuration changes (tokens, CA rotation) in it.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use serde::{Deserialize, Serialize};

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
    /// `next` of the previous page (`mesh_version:seq`).
    pub cursor: Option<String>,
}

/// A page of the trail, newest first.
#[derive(Debug, Serialize)]
pub struct AuditPage {
    pub items: Vec<crate::store::AuditEntry>,
    /// The cursor of the next (older) page, absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

pub async fn audit(
    State(state): State<Arc<AdminState>>,
    Query(q): Query<AuditQuery>,
) -> Result<Json<AuditPage>, AdminError> {
    let before = match &q.cursor {
        None => None,
        Some(c) => Some(
            c.split_once(':')
                .and_then(|(v, s)| Some((v.parse().ok()?, s.parse().ok()?)))
                .ok_or_else(|| AdminError::Invalid {
                    error: "not a cursor this API made".into(),
                    details: Vec::new(),
                })?,
        ),
    };
    let limit = q.limit.unwrap_or(1000).clamp(1, 10_000);
    let filter = AuditFilter {
        since: q.since,
        principal: q.principal,
        kind: q.kind,
        namespace: q.namespace,
        limit: Some(limit),
        before,
    };
    let items = state
        .mesh
        .store()
        .audit_trail(&filter)
        .await
        .map_err(internal)?;
    let next = (items.len() as i64 == limit)
        .then(|| {
            items
                .last()
                .map(|e| format!("{}:{}", e.mesh_version, e.seq))
        })
        .flatten();
    Ok(Json(AuditPage { items, next }))
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
