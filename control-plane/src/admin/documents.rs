//! The mesh documents (policies, request authentication, services): list, get, put,
//! delete, apply and validate.
//!
//! Documents are addressed as `/v1/namespaces/{namespace}/{plural}/{name}` with `plural` one
//! of `authorizationpolicies`, `requestauthentications`, `services`, as Kubernetes does. Every
//! write is validated by the shared crate (what the sidecars will run), stored atomically with
//! the next mesh version, and recorded in the audit trail with the document before and after.
//! Optimistic concurrency: `If-Match: "<resourceVersion>"` on PUT and DELETE, `If-None-Match:
//! *` to create only; a stale version is 409, never a lost update.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use palisade_contract::documents::Kind;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::mesh_config::{Validated, validate};
use crate::store::{Actor, Change, Expect, Outcome, Resource};

use super::{AdminError, AdminState, Principal, change_error, internal, invalid, request_id};

/// The document kind a URL's plural names.
pub(super) fn kind_of(plural: &str) -> Result<Kind, AdminError> {
    Kind::from_resource(plural).ok_or_else(|| {
        let known: Vec<&str> = Kind::ALL.iter().map(|k| k.resource()).collect();
        AdminError::NotFound(format!(
            "unknown resource type {plural:?}: use {}",
            known.join(", ")
        ))
    })
}

/// `If-Match: "<n>"` / `If-None-Match: *`.
pub(super) fn expectation(headers: &HeaderMap) -> Result<Expect, AdminError> {
    if let Some(v) = headers.get(header::IF_MATCH) {
        let text = v.to_str().unwrap_or_default().trim().trim_matches('"');
        return text
            .parse()
            .map(Expect::Version)
            .map_err(|_| AdminError::Invalid {
                error: "If-Match must be a resourceVersion, e.g. \"42\"".into(),
                details: Vec::new(),
            });
    }
    if headers
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == b"*")
    {
        return Ok(Expect::Absent);
    }
    Ok(Expect::Any)
}

pub(super) fn with_etag(status: StatusCode, resource: &Resource) -> Response {
    let mut response = (status, Json(resource)).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("\"{}\"", resource.resource_version)) {
        response.headers_mut().insert(header::ETAG, v);
    }
    response
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListQuery {
    pub kind: Option<String>,
    pub namespace: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceList {
    pub mesh_version: i64,
    pub items: Vec<Resource>,
}

pub async fn list(
    State(state): State<Arc<AdminState>>,
    Query(q): Query<ListQuery>,
) -> Result<Json<ResourceList>, AdminError> {
    let (mesh_version, items) = state
        .mesh
        .store()
        .list(q.kind.as_deref(), q.namespace.as_deref())
        .await
        .map_err(internal)?;
    Ok(Json(ResourceList {
        mesh_version,
        items,
    }))
}

pub async fn get_one(
    State(state): State<Arc<AdminState>>,
    Path((namespace, plural, name)): Path<(String, String, String)>,
) -> Result<Response, AdminError> {
    let kind = kind_of(&plural)?;
    let resource = state
        .mesh
        .store()
        .get(kind.as_str(), &namespace, &name)
        .await
        .map_err(internal)?
        .ok_or_else(|| AdminError::NotFound(format!("{kind} {namespace}/{name} does not exist")))?;
    Ok(with_etag(StatusCode::OK, &resource))
}

pub async fn put_one(
    State(state): State<Arc<AdminState>>,
    principal: Principal,
    Path((namespace, plural, name)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: String,
) -> Result<Response, AdminError> {
    let kind = kind_of(&plural)?;
    let docs = validate(&body).map_err(invalid)?;
    let [doc] = docs.as_slice() else {
        return Err(AdminError::Invalid {
            error: "PUT takes exactly one document; use /v1/apply for several".into(),
            details: Vec::new(),
        });
    };
    if (doc.kind, doc.namespace.as_str(), doc.name.as_str()) != (kind, &namespace, &name) {
        return Err(AdminError::Invalid {
            error: format!(
                "the document is {} {}/{}, the URL names {kind} {namespace}/{name}",
                doc.kind, doc.namespace, doc.name
            ),
            details: Vec::new(),
        });
    }
    let change = Change {
        kind: kind.as_str().to_owned(),
        namespace: namespace.clone(),
        name: name.clone(),
        document: Some(doc.value.clone()),
        expect: expectation(&headers)?,
    };
    let outcome = apply_one(&state, &principal, &headers, change).await?;
    let stored = state
        .mesh
        .store()
        .get(kind.as_str(), &namespace, &name)
        .await
        .map_err(internal)?
        .ok_or_else(|| AdminError::Internal("a stored document vanished".into()))?;
    let status = if outcome.action == "created" {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(with_etag(status, &stored))
}

pub async fn delete_one(
    State(state): State<Arc<AdminState>>,
    principal: Principal,
    Path((namespace, plural, name)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Result<Json<Outcome>, AdminError> {
    let kind = kind_of(&plural)?;
    let change = Change {
        kind: kind.as_str().to_owned(),
        namespace,
        name,
        document: None,
        expect: expectation(&headers)?,
    };
    Ok(Json(apply_one(&state, &principal, &headers, change).await?))
}

/// Applies one change as `principal`, for this request.
pub(super) async fn apply_one(
    state: &AdminState,
    principal: &Principal,
    headers: &HeaderMap,
    change: Change,
) -> Result<Outcome, AdminError> {
    let rid = request_id(headers);
    let (_, mut outcomes) = state
        .mesh
        .apply(&[change], &actor(principal, &rid))
        .await
        .map_err(change_error)?;
    Ok(outcomes.remove(0))
}

/// Who is changing the configuration, for the audit trail: the caller, the request id, now.
fn actor<'a>(principal: &'a Principal, request_id: &'a str) -> Actor<'a> {
    Actor {
        principal: &principal.subject,
        request_id,
        now: crate::ca::unix_now(),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApplyQuery {
    #[serde(default)]
    pub dry_run: bool,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ApplyResult {
    /// The mesh version after the apply (the current one for a dry run).
    pub mesh_version: i64,
    pub dry_run: bool,
    pub results: Vec<ApplyItem>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ApplyItem {
    #[serde(flatten)]
    pub outcome: Outcome,
    /// For a dry run: the stored document and the one that would replace it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub before: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<Value>,
}

/// Creates or replaces every document of a multi-document input, all or nothing.
pub async fn apply(
    State(state): State<Arc<AdminState>>,
    principal: Principal,
    Query(q): Query<ApplyQuery>,
    headers: HeaderMap,
    body: String,
) -> Result<Json<ApplyResult>, AdminError> {
    let docs = validate(&body).map_err(invalid)?;
    if q.dry_run {
        let diff = state.mesh.diff(&docs).await.map_err(internal)?;
        return Ok(Json(ApplyResult {
            mesh_version: state.mesh.store().mesh_version().await.map_err(internal)?,
            dry_run: true,
            results: diff
                .into_iter()
                .zip(&docs)
                .map(|((outcome, current), doc)| ApplyItem {
                    after: (outcome.action != "unchanged").then(|| doc.value.clone()),
                    before: current
                        .filter(|_| outcome.action != "unchanged")
                        .map(|r| r.document),
                    outcome,
                })
                .collect(),
        }));
    }
    let rid = request_id(&headers);
    let (mesh_version, outcomes) = state
        .mesh
        .apply_documents(&docs, &actor(&principal, &rid))
        .await
        .map_err(change_error)?;
    Ok(Json(ApplyResult {
        mesh_version,
        dry_run: false,
        results: outcomes
            .into_iter()
            .map(|outcome| ApplyItem {
                outcome,
                before: None,
                after: None,
            })
            .collect(),
    }))
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ValidateResult {
    pub valid: bool,
    pub documents: Vec<DocumentRef>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DocumentRef {
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
}

/// Validates without storing: 200 with what the input holds, or 400 with every problem.
pub async fn validate_only(body: String) -> Result<Json<ValidateResult>, AdminError> {
    let docs = validate(&body).map_err(invalid)?;
    Ok(Json(ValidateResult {
        valid: true,
        documents: docs
            .into_iter()
            .map(|d: Validated| DocumentRef {
                kind: d.kind.as_str(),
                namespace: d.namespace,
                name: d.name,
            })
            .collect(),
    }))
}
