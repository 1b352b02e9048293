//! Admin tokens with a lifecycle: created with a name, a role and a lifetime, listed,
//! revoked, and checked against their record on every call.
//!
//! A token is a JWT signed by the control plane's token key (so it is verified without a
//! lookup), but a valid signature is not enough: its `jti` must be recorded, unexpired and
//! unrevoked, so that revoking takes effect on the next call, on every replica (the record
//! is in the shared store). Only the `jti` is stored; the token itself is shown once, to its
//! creator, and never stored or logged. The initial admin token written to the data dir on
//! first start is recorded the same way (name `initial-admin`), so it can be retired with
//! `palisade admin-token revoke initial-admin` once named tokens exist.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::ca::unix_now;
use crate::store::{AdminTokenRecord, Store};
use crate::tokens::TokenKey;

/// Lifetime of a token created without `--ttl`: short, as a credential handed to a person
/// or a job should be.
pub const DEFAULT_ADMIN_TOKEN_TTL: Duration = Duration::from_secs(3600);
/// Longest lifetime a created token may have.
pub const MAX_ADMIN_TOKEN_TTL: Duration = Duration::from_secs(90 * 24 * 3600);
/// Lifetime of the initial admin token (enough to create named tokens, then retire it).
pub const INITIAL_ADMIN_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);
/// The name the initial admin token is recorded under.
pub const INITIAL_ADMIN_TOKEN_NAME: &str = "initial-admin";

#[derive(Debug, thiserror::Error)]
pub enum AdminTokenError {
    /// The request itself is wrong; the message says how.
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NotFound(String),
    #[error("internal error: {0}")]
    Internal(String),
}

/// A created token: the only time the token itself is seen.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AdminToken {
    pub token: String,
    pub id: String,
    pub name: String,
    pub role: String,
    pub expires_at: i64,
}

#[derive(Debug, Clone)]
pub struct AdminTokenIssuer {
    pub key: Arc<TokenKey>,
    pub store: Store,
}

fn internal(e: impl std::fmt::Display) -> AdminTokenError {
    AdminTokenError::Internal(e.to_string())
}

/// Names are what operators revoke by and what the audit trail shows as the principal: a
/// DNS-label-like word, so they cannot be mistaken for an id or carry markup.
fn check_name(name: &str) -> Result<(), AdminTokenError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(AdminTokenError::Invalid(format!(
            "name {:?} must be 1 to 63 lower-case letters, digits or '-', not starting with '-'",
            name.chars().take(80).collect::<String>()
        )))
    }
}

impl AdminTokenIssuer {
    /// Signs and records a token for `role` (already checked by the caller) named `name`.
    /// Names are unique among tokens still usable.
    pub async fn create(
        &self,
        name: &str,
        role: &str,
        ttl: Duration,
        created_by: &str,
    ) -> Result<AdminToken, AdminTokenError> {
        check_name(name)?;
        if ttl.is_zero() || ttl > MAX_ADMIN_TOKEN_TTL {
            return Err(AdminTokenError::Invalid(format!(
                "the lifetime must be between 1s and {}s",
                MAX_ADMIN_TOKEN_TTL.as_secs()
            )));
        }
        let now = unix_now();
        let taken = self
            .store
            .admin_tokens()
            .await
            .map_err(internal)?
            .into_iter()
            .any(|t| t.name == name && t.revoked_at.is_none() && t.expires_at > now);
        if taken {
            return Err(AdminTokenError::Conflict(format!(
                "a usable token named {name:?} exists; revoke it first or choose another name"
            )));
        }
        self.record(&[name, role, created_by], ttl).await
    }

    /// Mints and records a token: `[name, role, created_by]`, valid for `ttl`.
    async fn record(&self, who: &[&str; 3], ttl: Duration) -> Result<AdminToken, AdminTokenError> {
        let [name, role, created_by] = *who;
        let (token, claims) = self.key.mint_admin(name, role, ttl).map_err(internal)?;
        self.store
            .record_admin_token(&AdminTokenRecord {
                jti: claims.jti.clone(),
                name: name.to_owned(),
                role: role.to_owned(),
                created_by: created_by.to_owned(),
                created_at: claims.iat as i64,
                expires_at: claims.exp as i64,
                revoked_at: None,
                revoked_by: None,
            })
            .await
            .map_err(internal)?;
        tracing::info!(target: "palisade::admin", event = "admin_token.created",
            principal = created_by, name, role, id = %claims.jti,
            expires_at = claims.exp, "admin token created");
        Ok(AdminToken {
            token,
            id: claims.jti,
            name: name.to_owned(),
            role: role.to_owned(),
            expires_at: claims.exp as i64,
        })
    }

    /// The initial admin token for a fresh data dir.
    pub async fn create_initial(&self) -> Result<AdminToken, AdminTokenError> {
        self.record(
            &[INITIAL_ADMIN_TOKEN_NAME, "admin", "control-plane"],
            INITIAL_ADMIN_TOKEN_TTL,
        )
        .await
    }

    /// Records a token minted before tokens were recorded (the initial token of a data dir
    /// made by an older version), so it keeps working until it expires and can be revoked.
    pub async fn adopt(&self, token: &str) -> Result<(), AdminTokenError> {
        let Ok(claims) = self.key.verify_admin(token) else {
            return Ok(());
        };
        let known = self
            .store
            .admin_tokens()
            .await
            .map_err(internal)?
            .iter()
            .any(|t| t.jti == claims.jti);
        if known {
            return Ok(());
        }
        self.store
            .record_admin_token(&AdminTokenRecord {
                jti: claims.jti,
                name: claims.sub,
                role: claims.role,
                created_by: "control-plane".into(),
                created_at: claims.iat as i64,
                expires_at: claims.exp as i64,
                revoked_at: None,
                revoked_by: None,
            })
            .await
            .map_err(internal)
    }

    pub async fn list(&self) -> Result<Vec<AdminTokenRecord>, AdminTokenError> {
        self.store.admin_tokens().await.map_err(internal)
    }

    /// Revokes the usable tokens with this id or name (effective on the next call).
    pub async fn revoke(
        &self,
        id_or_name: &str,
        by: &str,
    ) -> Result<Vec<AdminTokenRecord>, AdminTokenError> {
        let revoked = self
            .store
            .revoke_admin_tokens(id_or_name, by, unix_now())
            .await
            .map_err(internal)?;
        if revoked.is_empty() {
            return Err(AdminTokenError::NotFound(format!(
                "no unrevoked admin token has the id or name {:?}",
                id_or_name.chars().take(80).collect::<String>()
            )));
        }
        for t in &revoked {
            tracing::info!(target: "palisade::admin", event = "admin_token.revoked",
                principal = by, name = %t.name, id = %t.jti, "admin token revoked");
        }
        Ok(revoked)
    }

    /// Whether the token with this `jti` may be used now.
    pub async fn active(&self, jti: &str) -> Result<bool, AdminTokenError> {
        self.store
            .admin_token_active(jti, unix_now())
            .await
            .map_err(internal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_words() {
        for ok in ["ci", "alice-laptop", "job-7", "a"] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-x", "Alice", "a b", "a/b", "a_b", &"x".repeat(64)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }
}
