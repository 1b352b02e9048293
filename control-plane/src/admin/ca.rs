//! The CA's routes: the trust bundle, its status, and root rotation steps.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

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

/// Sidecars seen within this long count in the CA status: each polls at least every
/// [`palisade_contract::config_api::LONG_POLL`].
const SEEN_WITHIN: i64 = 60;

/// The CA's status and how far the sidecars seen lately have followed its bundle.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct CaView {
    #[serde(flatten)]
    status: CaStatus,
    sidecars: SidecarRoots,
}

/// Which sidecars (`spiffe-id (instance)`) still trust a root the bundle dropped, and which
/// do not trust every root of it yet, among those seen in the last [`SEEN_WITHIN`] seconds.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct SidecarRoots {
    seen: usize,
    trusting_dropped_roots: Vec<String>,
    missing_roots: Vec<String>,
}

impl SidecarRoots {
    /// Compares what each of `seen` acknowledged with the bundle's `current` roots.
    fn of(current: &[&str], seen: &[crate::store::Workload]) -> Self {
        let name = |w: &crate::store::Workload| format!("{} ({})", w.spiffe_id, w.instance);
        let trusts =
            |w: &crate::store::Workload, root: &str| w.trusted_roots.iter().any(|t| t == root);
        Self {
            seen: seen.len(),
            trusting_dropped_roots: seen
                .iter()
                .filter(|w| {
                    w.trusted_roots
                        .iter()
                        .any(|r| !current.contains(&r.as_str()))
                })
                .map(name)
                .collect(),
            missing_roots: seen
                .iter()
                .filter(|w| current.iter().any(|r| !trusts(w, r)))
                .map(name)
                .collect(),
        }
    }
}

async fn view(state: &AdminState, status: CaStatus) -> Result<Json<CaView>, AdminError> {
    let current: Vec<&str> = status.roots.iter().map(|r| r.id.as_str()).collect();
    let seen = state
        .mesh
        .store()
        .workloads(crate::ca::unix_now() - SEEN_WITHIN)
        .await
        .map_err(|e| AdminError::Internal(e.to_string()))?;
    let sidecars = SidecarRoots::of(&current, &seen);
    Ok(Json(CaView { status, sidecars }))
}

pub(super) async fn ca_status(
    State(state): State<Arc<AdminState>>,
) -> Result<Json<CaView>, AdminError> {
    view(&state, state.ca.status()).await
}

pub(super) async fn rotate(
    State(state): State<Arc<AdminState>>,
    principal: Principal,
    headers: axum::http::HeaderMap,
    axum::extract::Path(step): axum::extract::Path<String>,
) -> Result<Json<CaView>, AdminError> {
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
    view(&state, status).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sidecars_are_named_by_what_they_trust_against_the_bundle() {
        let sidecar = |instance: &str, roots: &[&str]| crate::store::Workload {
            spiffe_id: "spiffe://td/ns/shop/sa/a".into(),
            instance: instance.into(),
            applied_version: 1,
            certificate_expiry: 0,
            last_seen: 0,
            trusted_roots: roots.iter().map(|r| r.to_string()).collect(),
        };
        let seen = [
            sidecar("current", &["new"]),
            sidecar("stale", &["old", "new"]),
            sidecar("behind", &["old"]),
            sidecar("silent", &[]),
        ];
        let view = SidecarRoots::of(&["new"], &seen);
        assert_eq!(view.seen, 4);
        let a = "spiffe://td/ns/shop/sa/a";
        assert_eq!(
            view.trusting_dropped_roots,
            [format!("{a} (stale)"), format!("{a} (behind)")]
        );
        assert_eq!(
            view.missing_roots,
            [format!("{a} (behind)"), format!("{a} (silent)")]
        );
    }
}
