//! Creating join tokens: validate the requested identity and lifetime, sign, record.
//! One function serves the admin API and embedders (tests, the local demo).

use std::sync::Arc;
use std::time::Duration;

use palisade_contract::identity_api::control_plane_id;
use palisade_contract::{SpiffeId, TrustDomain};
use serde::{Deserialize, Serialize};

use crate::ca::unix_now;
use crate::store::{JoinTokenRecord, Store};
use crate::tokens::TokenKey;

/// Longest a join token may live.
pub const MAX_JOIN_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);
/// Join token lifetime when the request names none.
pub const DEFAULT_JOIN_TOKEN_TTL: Duration = Duration::from_secs(600);

#[derive(Debug, thiserror::Error)]
pub enum JoinTokenError {
    /// The request itself is wrong; the message says how.
    #[error("{0}")]
    Invalid(String),
    #[error("internal error: {0}")]
    Internal(String),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinToken {
    pub token: String,
    pub spiffe_id: String,
    pub expires_at: i64,
}

#[derive(Debug, Clone)]
pub struct JoinTokenIssuer {
    pub trust_domain: TrustDomain,
    pub key: Arc<TokenKey>,
    pub store: Store,
}

impl JoinTokenIssuer {
    /// Signs and records a single-use join token for `namespace`/`service_account`.
    pub async fn create(
        &self,
        namespace: &str,
        service_account: &str,
        ttl: Duration,
        created_by: &str,
    ) -> Result<JoinToken, JoinTokenError> {
        let spiffe_id: SpiffeId = self
            .trust_domain
            .workload_id(namespace, service_account)
            .map_err(|e| JoinTokenError::Invalid(e.to_string()))?;
        if spiffe_id == control_plane_id(&self.trust_domain) {
            return Err(JoinTokenError::Invalid(format!(
                "{spiffe_id} is reserved for the control plane"
            )));
        }
        if ttl.is_zero() || ttl > MAX_JOIN_TOKEN_TTL {
            return Err(JoinTokenError::Invalid(format!(
                "the lifetime must be between 1s and {}s",
                MAX_JOIN_TOKEN_TTL.as_secs()
            )));
        }
        let internal = |e: &dyn std::fmt::Display| JoinTokenError::Internal(e.to_string());
        let claims = self
            .key
            .mint_join(&spiffe_id, ttl)
            .map_err(|e| internal(&e))?;
        let token = self.key.sign_join(&claims).map_err(|e| internal(&e))?;
        self.store
            .record_join_token(&JoinTokenRecord {
                jti: claims.jti.clone(),
                spiffe_id: spiffe_id.to_string(),
                created_by: created_by.to_owned(),
                created_at: unix_now(),
                expires_at: claims.exp as i64,
            })
            .await
            .map_err(|e| internal(&e))?;
        tracing::info!(target: "palisade::admin", event = "join_token.created",
            principal = created_by, spiffe_id = %spiffe_id, jti = %claims.jti,
            expires_at = claims.exp, "join token created");
        Ok(JoinToken {
            token,
            spiffe_id: spiffe_id.to_string(),
            expires_at: claims.exp as i64,
        })
    }
}
