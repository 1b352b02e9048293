//! Who is calling: local admin tokens (recorded, unrevoked), OIDC tokens, Kubernetes
//! ServiceAccount tokens, or an operator's mesh certificate; and the role each route needs
//! ([`super::ROUTES`]), checked by one middleware.

use std::sync::Arc;

use axum::extract::{FromRequestParts, MatchedPath, State};
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::Response;
use palisade_contract::SpiffeId;
use serde::{Deserialize, Serialize};

use crate::serving::bearer_token;

use super::{AdminError, AdminState, ROUTES};

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

/// Authenticates the caller and checks the role [`ROUTES`] gives the matched route.
pub(super) async fn authorize(
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
                .get::<crate::serving::Peer>()
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
