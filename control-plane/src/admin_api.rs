//! The administration API (default `127.0.0.1:15080`): what operators and the `palisade` CLI
//! talk to. Every route but `/healthz` needs a bearer admin token signed by the control
//! plane (audience `palisade-admin`), from loopback too; its `role` claim decides what the
//! caller may do: `viewer` reads, `editor` also writes mesh configuration, `admin` may do
//! everything (join tokens, CA rotation), `auditor` reads the audit trail.
//!
//! Which role each route needs is written once, in [`ROUTES`]: a middleware enforces it for
//! every route, the role-matrix test walks it, and a test compares it with the OpenAPI
//! document served at `/v1/openapi.json` (kept in the repository as `openapi.json`).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, FromRequestParts, MatchedPath, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use palisade_contract::SpiffeId;

use crate::admin_mesh;
use crate::admin_tokens::{AdminTokenError, AdminTokenIssuer, DEFAULT_ADMIN_TOKEN_TTL};
use crate::ca::{CaError, CaStatus, CertificateAuthority};
use crate::join_tokens::{DEFAULT_JOIN_TOKEN_TTL, JoinTokenError, JoinTokenIssuer};
use crate::mesh_config::MeshConfig;
use crate::sidecar_api::{bearer_token, error_response};
use crate::tokens::TokenKey;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Editor,
    Admin,
    Auditor,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Editor => "editor",
            Role::Admin => "admin",
            Role::Auditor => "auditor",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
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
        matches!(
            (self, needed),
            (Role::Admin, _)
                | (Role::Editor, Role::Editor | Role::Viewer)
                | (Role::Viewer, Role::Viewer)
                | (Role::Auditor, Role::Auditor)
        )
    }
}

/// Every way an admin request fails; [`IntoResponse`] below is the one place they become
/// statuses and JSON bodies. Internal detail is logged, never sent.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{0}")]
    Unauthenticated(&'static str),
    #[error("role {} may not do this", .0.name())]
    Forbidden(Role),
    #[error("{error}")]
    Invalid { error: String, details: Vec<String> },
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NotFound(String),
    #[error("internal error")]
    Internal(String),
    /// A request refused before a handler could read it, with the status the extractor
    /// chose (413 too large, 415 not JSON, 400 or 422 not the expected shape).
    #[error("{message}")]
    Rejected { status: StatusCode, message: String },
}

impl AdminError {
    /// A JSON body the extractor refused, keeping its status (a 2 MiB body is 413, not 400).
    pub fn from_json_rejection(r: axum::extract::rejection::JsonRejection, what: &str) -> Self {
        match r.status() {
            StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY => AdminError::Invalid {
                error: format!("invalid {what}"),
                details: vec![r.body_text()],
            },
            status => AdminError::Rejected {
                status,
                message: r.body_text(),
            },
        }
    }
}

/// Every error the admin API answers is the documented JSON (`{"error", "details"}`),
/// whoever made it: axum's extractors answer 400, 413, 415 and 422 in plain text, and the
/// router 404 and 405 with an empty body. Applied to the whole router, so no route or
/// layer can slip past it.
async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 4096)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    let error = if text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("error")
            .to_ascii_lowercase()
    } else {
        text
    };
    let mut json = error_response(status, &error, Vec::new());
    for name in [header::WWW_AUTHENTICATE, header::ALLOW] {
        if let Some(v) = parts.headers.get(&name) {
            json.headers_mut().insert(name, v.clone());
        }
    }
    json
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let status = match &self {
            AdminError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            AdminError::Forbidden(_) => StatusCode::FORBIDDEN,
            AdminError::Invalid { .. } => StatusCode::BAD_REQUEST,
            AdminError::Conflict(_) => StatusCode::CONFLICT,
            AdminError::NotFound(_) => StatusCode::NOT_FOUND,
            AdminError::Rejected { status, .. } => *status,
            AdminError::Internal(detail) => {
                tracing::error!(target: "palisade::admin", error = %detail, "admin request failed");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        let details = match &self {
            AdminError::Invalid { details, .. } => details.clone(),
            _ => Vec::new(),
        };
        let mut response = error_response(status, &self.to_string(), details);
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

pub struct AdminState {
    pub ca: Arc<CertificateAuthority>,
    pub token_key: Arc<TokenKey>,
    /// The record every local admin token is checked against (revocation).
    pub admin_tokens: AdminTokenIssuer,
    pub join_tokens: JoinTokenIssuer,
    pub mesh: Arc<MeshConfig>,
    /// Operators' tokens from an OIDC provider, when configured.
    pub oidc: Option<OidcAdmins>,
    /// With `--admin-tls`: SPIFFE IDs whose client certificate stands for a role.
    pub spiffe_admins: Vec<(SpiffeId, Role)>,
    /// Kubernetes ServiceAccounts whose tokens stand for a role, when configured.
    pub k8s_admins: Option<K8sAdmins>,
}

/// One `--admin-k8s-service-account NAMESPACE/NAME=ROLE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct K8sAdmin {
    pub namespace: String,
    pub service_account: String,
    pub role: Role,
}

impl std::str::FromStr for K8sAdmin {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{s:?} is not NAMESPACE/SERVICE_ACCOUNT=ROLE");
        let (account, role) = s.rsplit_once('=').ok_or_else(bad)?;
        let (namespace, service_account) = account.split_once('/').ok_or_else(bad)?;
        palisade_contract::spiffe::validate_namespace(namespace)
            .map_err(|e| format!("{namespace:?} is not a namespace: {e}"))?;
        if service_account.is_empty() || service_account.contains('/') {
            return Err(bad());
        }
        Ok(K8sAdmin {
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
            role: Role::parse(role)
                .ok_or_else(|| format!("{role:?} is not viewer, editor, admin or auditor"))?,
        })
    }
}

/// Admin tokens that are Kubernetes projected ServiceAccount tokens (for in-cluster jobs
/// such as applying a namespace's policies): verified with the cluster's keys (those of
/// bootstrap, refreshed with them) for their own audience, the role given per account.
/// Principals are `k8s:<namespace>/<name>`.
#[derive(Debug)]
pub struct K8sAdmins {
    pub verifier: Arc<arc_swap::ArcSwap<crate::bootstrap::KubernetesVerifier>>,
    pub audience: String,
    pub accounts: Vec<K8sAdmin>,
}

impl K8sAdmins {
    fn principal(&self, token: &str) -> Result<Principal, AdminError> {
        let (namespace, name) = self
            .verifier
            .load()
            .service_account(token, &self.audience)
            .map_err(|e| {
                tracing::info!(target: "palisade::admin", reason = e.label(), "Kubernetes admin token refused");
                AdminError::Unauthenticated("invalid bearer token")
            })?;
        let account = self
            .accounts
            .iter()
            .find(|a| a.namespace == namespace && a.service_account == name)
            .ok_or(AdminError::Unauthenticated(
                "this ServiceAccount has no role (--admin-k8s-service-account)",
            ))?;
        Ok(Principal {
            subject: format!("k8s:{namespace}/{name}"),
            role: account.role,
        })
    }
}

/// One `--admin-spiffe-id ID=ROLE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpiffeAdmin {
    pub id: SpiffeId,
    pub role: Role,
}

impl std::str::FromStr for SpiffeAdmin {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (id, role) = s
            .rsplit_once('=')
            .ok_or_else(|| format!("{s:?} is not SPIFFE_ID=ROLE"))?;
        Ok(SpiffeAdmin {
            id: SpiffeId::parse(id).map_err(|e| format!("{id:?} is not a SPIFFE ID: it {e}"))?,
            role: Role::parse(role)
                .ok_or_else(|| format!("{role:?} is not viewer, editor, admin or auditor"))?,
        })
    }
}

/// Admin tokens from an OIDC issuer: verified strictly (the shared JWT rules), the role
/// read from one claim. Principals are `oidc:<sub>` so they never pass for local ones.
#[derive(Debug)]
pub struct OidcAdmins {
    pub issuer: String,
    pub audience: String,
    pub role_claim: String,
    pub keys: palisade_contract::jwt::Jwks,
}

impl OidcAdmins {
    fn principal(&self, token: &str) -> Result<Principal, AdminError> {
        let claims: serde_json::Value = self
            .keys
            .verify(token, &self.issuer, &[self.audience.as_str()])
            .map_err(|e| {
                tracing::info!(target: "palisade::admin", reason = e.label(), "OIDC admin token refused");
                AdminError::Unauthenticated("invalid bearer token")
            })?;
        let sub = claims["sub"]
            .as_str()
            .filter(|s| !s.is_empty())
            .ok_or(AdminError::Unauthenticated("token has no subject"))?;
        let role = claims[self.role_claim.as_str()]
            .as_str()
            .and_then(Role::parse)
            .ok_or(AdminError::Unauthenticated("token has no known role"))?;
        Ok(Principal {
            subject: format!("oidc:{sub}"),
            role,
        })
    }
}

/// Every route of the API but `/healthz`, with the role it needs: the one place roles are
/// decided.
pub const ROUTES: &[(&str, &str, Role)] = &[
    ("POST", "/v1/join-tokens", Role::Admin),
    ("POST", "/v1/admin-tokens", Role::Admin),
    ("GET", "/v1/admin-tokens", Role::Admin),
    ("DELETE", "/v1/admin-tokens/{id}", Role::Admin),
    ("GET", "/v1/trust-bundle", Role::Viewer),
    ("GET", "/v1/ca", Role::Viewer),
    ("POST", "/v1/ca/rotation/{step}", Role::Admin),
    ("GET", "/v1/resources", Role::Viewer),
    (
        "GET",
        "/v1/namespaces/{namespace}/{plural}/{name}",
        Role::Viewer,
    ),
    (
        "PUT",
        "/v1/namespaces/{namespace}/{plural}/{name}",
        Role::Editor,
    ),
    (
        "DELETE",
        "/v1/namespaces/{namespace}/{plural}/{name}",
        Role::Editor,
    ),
    ("POST", "/v1/apply", Role::Editor),
    ("POST", "/v1/validate", Role::Viewer),
    ("POST", "/v1/simulate", Role::Viewer),
    ("GET", "/v1/workloads", Role::Viewer),
    ("GET", "/v1/audit", Role::Auditor),
    ("GET", "/v1/openapi.json", Role::Viewer),
];

/// The OpenAPI 3 document of this API.
pub const OPENAPI: &str = include_str!("../openapi.json");

/// Authenticates the caller and checks the role [`ROUTES`] gives the matched route.
async fn authorize(
    State(state): State<Arc<AdminState>>,
    matched: MatchedPath,
    request: axum::extract::Request,
    next: Next,
) -> Result<Response, AdminError> {
    let (mut parts, body) = request.into_parts();
    let principal = Principal::from_request_parts(&mut parts, &state).await?;
    let needed = ROUTES
        .iter()
        .find(|(method, path, _)| *path == matched.as_str() && *method == parts.method.as_str())
        .map(|(_, _, role)| *role)
        // A route missing from the table is for admins only (and fails the tests).
        .unwrap_or(Role::Admin);
    principal.require(needed)?;
    parts.extensions.insert(principal);
    Ok(next
        .run(axum::extract::Request::from_parts(parts, body))
        .await)
}

/// An authenticated caller of the admin API.
#[derive(Debug, Clone)]
pub struct Principal {
    pub subject: String,
    pub role: Role,
}

impl Principal {
    fn require(&self, needed: Role) -> Result<(), AdminError> {
        if self.role.allows(needed) {
            Ok(())
        } else {
            Err(AdminError::Forbidden(self.role))
        }
    }
}

impl FromRequestParts<Arc<AdminState>> for Principal {
    type Rejection = AdminError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AdminState>,
    ) -> Result<Self, Self::Rejection> {
        if let Some(p) = parts.extensions.get::<Principal>() {
            return Ok(p.clone());
        }
        let Some(token) = bearer_token(&parts.headers) else {
            // No token: a client certificate naming an admin SPIFFE ID (with --admin-tls).
            let peer = parts
                .extensions
                .get::<crate::sidecar_api::Peer>()
                .and_then(|p| p.current_identity());
            return match peer.and_then(|id| state.spiffe_admins.iter().find(|(a, _)| a == id)) {
                Some((id, role)) => Ok(Principal {
                    subject: id.to_string(),
                    role: *role,
                }),
                None => Err(AdminError::Unauthenticated("missing bearer token")),
            };
        };
        if let Some(oidc) = &state.oidc
            && palisade_contract::jwt::unverified_issuer(token)
                .ok()
                .as_deref()
                == Some(oidc.issuer.as_str())
        {
            return oidc.principal(token);
        }
        if let Some(k8s) = &state.k8s_admins
            && palisade_contract::jwt::unverified_issuer(token)
                .ok()
                .as_deref()
                == Some(k8s.verifier.load().issuer())
        {
            return k8s.principal(token);
        }
        let claims = state.token_key.verify_admin(token).map_err(|e| {
            tracing::info!(target: "palisade::admin", reason = e.label(), "admin token refused");
            AdminError::Unauthenticated("invalid bearer token")
        })?;
        let role = Role::parse(&claims.role)
            .ok_or(AdminError::Unauthenticated("token has an unknown role"))?;
        // A valid signature is not enough: the token must still be recorded and unrevoked.
        let active = state
            .admin_tokens
            .active(&claims.jti)
            .await
            .map_err(|e| AdminError::Internal(e.to_string()))?;
        if !active {
            tracing::info!(target: "palisade::admin", reason = "revoked_or_unknown",
                id = %claims.jti, "admin token refused");
            return Err(AdminError::Unauthenticated(
                "the token was revoked, or is not known to this control plane",
            ));
        }
        Ok(Principal {
            subject: claims.sub,
            role,
        })
    }
}

/// Largest request body (an apply of many documents).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

pub fn router(state: Arc<AdminState>) -> Router {
    let ns_doc = "/v1/namespaces/{namespace}/{plural}/{name}";
    let authenticated = Router::new()
        .route("/v1/join-tokens", post(create_join_token))
        .route(
            "/v1/admin-tokens",
            post(create_admin_token).get(list_admin_tokens),
        )
        .route(
            "/v1/admin-tokens/{id}",
            axum::routing::delete(revoke_admin_token),
        )
        .route("/v1/trust-bundle", get(trust_bundle))
        .route("/v1/ca", get(ca_status))
        .route("/v1/ca/rotation/{step}", post(rotate))
        .route("/v1/resources", get(admin_mesh::list))
        .route(
            ns_doc,
            get(admin_mesh::get_one)
                .put(admin_mesh::put_one)
                .delete(admin_mesh::delete_one),
        )
        .route("/v1/apply", post(admin_mesh::apply))
        .route("/v1/validate", post(admin_mesh::validate_only))
        .route("/v1/simulate", post(admin_mesh::simulate))
        .route("/v1/workloads", get(admin_mesh::workloads))
        .route("/v1/audit", get(admin_mesh::audit))
        .route(
            "/v1/openapi.json",
            get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }),
        )
        .route_layer(middleware::from_fn_with_state(state.clone(), authorize));
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .merge(authenticated)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::map_response(json_errors))
        .with_state(state)
}

/// Readiness: the database answers (a replica that lost PostgreSQL can neither issue
/// renewals' records nor serve current configuration, so traffic should go elsewhere).
async fn ready(State(state): State<Arc<AdminState>>) -> Response {
    match tokio::time::timeout(
        std::time::Duration::from_secs(2),
        state.mesh.store().mesh_version(),
    )
    .await
    {
        Ok(Ok(version)) => {
            (StatusCode::OK, format!("ready (mesh version {version})\n")).into_response()
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "not ready: the database does not answer");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "the database does not answer\n",
            )
                .into_response()
        }
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "the database did not answer in 2 s\n",
        )
            .into_response(),
    }
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

/// Records a non-configuration administrative action in the audit trail.
#[allow(clippy::too_many_arguments)]
async fn audit_event(
    state: &AdminState,
    principal: &Principal,
    headers: &axum::http::HeaderMap,
    action: &str,
    kind: &str,
    namespace: &str,
    name: &str,
    detail: serde_json::Value,
) -> Result<(), AdminError> {
    let request_id = admin_mesh::request_id(headers);
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

async fn create_join_token(
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

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AdminTokenRequest {
    pub name: String,
    pub role: String,
    /// Lifetime in seconds (default 3600, at most 90 days).
    #[serde(default)]
    pub ttl_seconds: Option<u64>,
}

impl From<AdminTokenError> for AdminError {
    fn from(e: AdminTokenError) -> Self {
        match e {
            AdminTokenError::Invalid(detail) => AdminError::Invalid {
                error: "invalid admin token request".into(),
                details: vec![detail],
            },
            AdminTokenError::Conflict(m) => AdminError::Conflict(m),
            AdminTokenError::NotFound(m) => AdminError::NotFound(m),
            AdminTokenError::Internal(m) => AdminError::Internal(m),
        }
    }
}

async fn create_admin_token(
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

async fn list_admin_tokens(
    State(state): State<Arc<AdminState>>,
) -> Result<Json<serde_json::Value>, AdminError> {
    let items = state.admin_tokens.list().await?;
    Ok(Json(serde_json::json!({ "items": items })))
}

async fn revoke_admin_token(
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

async fn trust_bundle(State(state): State<Arc<AdminState>>) -> Result<Response, AdminError> {
    Ok((
        [(header::CONTENT_TYPE, "application/x-pem-file")],
        state.ca.bundle_pem(),
    )
        .into_response())
}

async fn ca_status(State(state): State<Arc<AdminState>>) -> Result<Json<CaStatus>, AdminError> {
    Ok(Json(state.ca.status()))
}

async fn rotate(
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
