//! `GET /v1/workloads`: the sidecars following the configuration.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use serde::{Deserialize, Serialize};

use super::{AdminError, AdminState, internal};

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadQuery {
    /// Only sidecars seen within this many seconds (default 3600).
    pub seen_within: Option<i64>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadList {
    pub mesh_version: i64,
    pub items: Vec<crate::store::Workload>,
}

pub async fn workloads(
    State(state): State<Arc<AdminState>>,
    Query(q): Query<WorkloadQuery>,
) -> Result<Json<WorkloadList>, AdminError> {
    let since = crate::ca::unix_now() - q.seen_within.unwrap_or(3600).max(0);
    Ok(Json(WorkloadList {
        mesh_version: state.mesh.store().mesh_version().await.map_err(internal)?,
        items: state
            .mesh
            .store()
            .workloads(since)
            .await
            .map_err(internal)?,
    }))
}
