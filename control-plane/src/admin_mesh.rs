//! The mesh-configuration routes of the admin API: documents (policies, request
//! authentication, services), apply and validate, simulate, workloads and the audit trail.
//!
//! Documents are addressed as `/v1/namespaces/{namespace}/{plural}/{name}` with `plural` one
//! of `authorizationpolicies`, `requestauthentications`, `services`, as Kubernetes does. Every
//! write is validated by the shared crate (what the sidecars will run), stored atomically with
//! the next mesh version, and recorded in the audit trail with the document before and after.
//! Optimistic concurrency: `If-Match: "<resourceVersion>"` on PUT and DELETE, `If-None-Match:
//! *` to create only; a stale version is 409, never a lost update.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use palisade_contract::SpiffeId;
use palisade_contract::path::{PathOptions, normalize};
use palisade_contract::policy::{
    Decision, DefaultMode, Explanation, PolicyDocuments, PolicySet, Problems, Request, Workload,
    validate_values,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::admin_api::{AdminError, AdminState, Principal};
use crate::mesh_config::{Validated, validate};
use crate::store::{Actor, AuditFilter, Change, ChangeError, Expect, Outcome, Resource};

/// The document kind a URL's plural names.
fn kind_of(plural: &str) -> Result<&'static str, AdminError> {
    match plural {
        "authorizationpolicies" => Ok("AuthorizationPolicy"),
        "requestauthentications" => Ok("RequestAuthentication"),
        "services" => Ok("Service"),
        other => Err(AdminError::NotFound(format!(
            "unknown resource type {other:?}: use authorizationpolicies, requestauthentications or services"
        ))),
    }
}

fn invalid(problems: Problems) -> AdminError {
    AdminError::Invalid {
        error: "invalid document".into(),
        details: problems.0.iter().map(ToString::to_string).collect(),
    }
}

fn change_error(e: ChangeError) -> AdminError {
    match e {
        ChangeError::Stale { .. } | ChangeError::Exists { .. } => {
            AdminError::Conflict(e.to_string())
        }
        ChangeError::Missing { .. } => AdminError::NotFound(e.to_string()),
        ChangeError::Store(e) => AdminError::Internal(e.to_string()),
    }
}

fn internal(e: impl std::fmt::Display) -> AdminError {
    AdminError::Internal(e.to_string())
}

fn now() -> i64 {
    crate::ca::unix_now()
}

/// A request id for the audit trail: the caller's `x-request-id` when it sends a sane one.
pub(crate) fn request_id(headers: &HeaderMap) -> String {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 64 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
        .or_else(|| crate::tokens::random_id().ok())
        .unwrap_or_default()
}

/// `If-Match: "<n>"` / `If-None-Match: *`.
fn expectation(headers: &HeaderMap) -> Result<Expect, AdminError> {
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

fn with_etag(status: StatusCode, resource: &Resource) -> Response {
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
        .get(kind, &namespace, &name)
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
        kind: kind.to_owned(),
        namespace: namespace.clone(),
        name: name.clone(),
        document: Some(doc.value.clone()),
        expect: expectation(&headers)?,
    };
    let outcome = apply_one(&state, &principal, &headers, change).await?;
    let stored = state
        .mesh
        .store()
        .get(kind, &namespace, &name)
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
        kind: kind.to_owned(),
        namespace,
        name,
        document: None,
        expect: expectation(&headers)?,
    };
    Ok(Json(apply_one(&state, &principal, &headers, change).await?))
}

/// Applies one change as `principal`, for this request.
async fn apply_one(
    state: &AdminState,
    principal: &Principal,
    headers: &HeaderMap,
    change: Change,
) -> Result<Outcome, AdminError> {
    let rid = request_id(headers);
    let (_, mut outcomes) = state
        .mesh
        .apply(
            &[change],
            &Actor {
                principal: &principal.subject,
                request_id: &rid,
                now: now(),
            },
        )
        .await
        .map_err(change_error)?;
    Ok(outcomes.remove(0))
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
        .apply_documents(
            &docs,
            &Actor {
                principal: &principal.subject,
                request_id: &rid,
                now: now(),
            },
        )
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
                kind: d.kind,
                namespace: d.namespace,
                name: d.name,
            })
            .collect(),
    }))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SimulateRequest {
    /// The caller's SPIFFE ID.
    pub source: SpiffeId,
    /// The destination workload.
    pub namespace: String,
    pub service: String,
    pub http: Option<SimulatedHttp>,
    /// An opaque TCP connection to this port, instead of `http`.
    pub tcp_port: Option<u16>,
    /// An AMQP operation by the workload itself (`source` is its identity, `namespace` and
    /// `service` name it), instead of `http`.
    pub amqp: Option<SimulatedAmqp>,
    /// The end user (`iss/sub`) and claims of a verified JWT, if the request carries one.
    pub request_principal: Option<String>,
    pub claims: Option<Value>,
    /// Documents (YAML or JSON) to evaluate as if applied: they replace stored documents
    /// of the same kind, namespace and name. Nothing is stored.
    pub proposed: Option<String>,
    /// What the sidecar does for workloads no ALLOW policy selects.
    #[serde(default)]
    pub default_mode: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SimulatedHttp {
    pub method: String,
    pub path: String,
    #[serde(default)]
    pub headers: HashMap<String, String>,
    #[serde(default = "default_port")]
    pub port: u16,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SimulatedAmqp {
    /// `publish`, `consume`, `get`, `exchange.declare`, ...
    pub operation: String,
    #[serde(default = "default_vhost")]
    pub vhost: String,
    pub exchange: Option<String>,
    /// For a publish: the routing key, then any `CC`/`BCC` keys; every one must be allowed.
    #[serde(default)]
    pub routing_keys: Vec<String>,
    pub queue: Option<String>,
}

fn default_vhost() -> String {
    "/".into()
}

fn default_port() -> u16 {
    8080
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SimulateResult {
    /// What the sidecar would log: `allow`, `deny`, `audit`, `dry-run-deny`.
    pub decision: &'static str,
    pub mesh_version: i64,
    /// The path the sidecar would match and forward.
    pub normalized_path: Option<String>,
    pub detail: Decision,
    pub candidates: Vec<Explanation>,
}

pub async fn simulate(
    State(state): State<Arc<AdminState>>,
    body: Result<Json<SimulateRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<SimulateResult>, AdminError> {
    let Json(req) = body.map_err(|r| AdminError::from_json_rejection(r, "simulate request"))?;
    let bad = |error: String| AdminError::Invalid {
        error,
        details: Vec::new(),
    };
    let default_mode = match req.default_mode.as_deref() {
        None | Some("deny") => DefaultMode::Deny,
        Some("allow") => DefaultMode::Allow,
        Some("audit") => DefaultMode::Audit,
        Some(other) => {
            return Err(bad(format!(
                "defaultMode {other:?} is not deny, allow or audit"
            )));
        }
    };
    let (mesh_version, stored) = state
        .mesh
        .store()
        .list(Some("AuthorizationPolicy"), None)
        .await
        .map_err(internal)?;
    let mut values: Vec<(String, String, Value)> = stored
        .into_iter()
        .map(|r| (r.namespace, r.name, r.document))
        .collect();
    if let Some(proposed) = &req.proposed {
        for doc in validate(proposed).map_err(invalid)? {
            if doc.kind != "AuthorizationPolicy" {
                continue;
            }
            values.retain(|(ns, name, _)| (ns, name) != (&doc.namespace, &doc.name));
            values.push((doc.namespace, doc.name, doc.value));
        }
    }
    let all: Vec<Value> = values.into_iter().map(|(_, _, v)| v).collect();
    let docs = PolicyDocuments::from_documents(validate_values(&all).map_err(invalid)?);
    let set = PolicySet::new(&docs.authorization, mesh_version as u64, default_mode);
    let workload = Workload {
        namespace: &req.namespace,
        service: &req.service,
    };
    let headers: http::HeaderMap = req
        .http
        .as_ref()
        .map(|h| {
            h.headers
                .iter()
                .filter_map(|(k, v)| {
                    Some((
                        http::HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes()).ok()?,
                        http::HeaderValue::from_str(v).ok()?,
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    if let Some(amqp) = &req.amqp {
        if req.http.is_some() || req.tcp_port.is_some() {
            return Err(bad("give exactly one of http, tcpPort and amqp".into()));
        }
        return Ok(Json(simulate_amqp(
            &set,
            &workload,
            &req,
            amqp,
            mesh_version,
        )));
    }
    let (request, normalized_path);
    match (&req.http, req.tcp_port) {
        (Some(h), None) => {
            if !h.method.bytes().all(|b| b.is_ascii_uppercase()) || h.method.is_empty() {
                return Err(bad(format!(
                    "method {:?} is not an upper-case token (the sidecar answers 400)",
                    h.method
                )));
            }
            let target = normalize(&h.path, PathOptions::default())
                .map_err(|e| bad(format!("path {:?}: {e} (the sidecar answers 400)", h.path)))?;
            normalized_path = Some(target.policy_path().into_owned());
            request = Request {
                source: Some(&req.source),
                request_principal: req.request_principal.as_deref(),
                claims: req.claims.as_ref(),
                method: &h.method,
                path: normalized_path.as_deref().unwrap_or("/"),
                port: h.port,
                headers: &headers,
                l4: false,
                amqp: None,
            };
        }
        (None, Some(port)) => {
            normalized_path = None;
            request = Request::connection(Some(&req.source), port);
        }
        _ => return Err(bad("give exactly one of http, tcpPort and amqp".into())),
    }
    let detail = set.evaluate(&workload, &request);
    let candidates = set.explain(&workload, &request);
    Ok(Json(SimulateResult {
        decision: detail.label(),
        mesh_version,
        normalized_path: normalized_path.clone(),
        candidates,
        detail,
    }))
}

/// An AMQP operation: each routing key is a decision of its own (as the sidecar makes them);
/// the first refused one is the answer, else the last allowed one.
fn simulate_amqp(
    set: &PolicySet,
    workload: &Workload<'_>,
    req: &SimulateRequest,
    amqp: &SimulatedAmqp,
    mesh_version: i64,
) -> SimulateResult {
    let keys: Vec<Option<&str>> = if amqp.routing_keys.is_empty() {
        vec![None]
    } else {
        amqp.routing_keys.iter().map(|k| Some(k.as_str())).collect()
    };
    let mut answer = None;
    for key in keys {
        let request = Request::amqp(
            Some(&req.source),
            palisade_contract::policy::AmqpRequest {
                operation: &amqp.operation,
                vhost: &amqp.vhost,
                exchange: amqp.exchange.as_deref(),
                routing_key: key,
                queue: amqp.queue.as_deref(),
            },
        );
        let detail = set.evaluate(workload, &request);
        let refused = detail.verdict == palisade_contract::policy::Verdict::Deny;
        answer = Some((detail, set.explain(workload, &request)));
        if refused {
            break;
        }
    }
    let (detail, candidates) = answer.expect("at least one decision");
    SimulateResult {
        decision: detail.label(),
        mesh_version,
        normalized_path: None,
        candidates,
        detail,
    }
}

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
    let since = now() - q.seen_within.unwrap_or(3600).max(0);
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
