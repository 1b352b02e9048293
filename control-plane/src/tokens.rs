//! JSON Web Tokens: the ones the control plane signs, and the checks every token passes.
//!
//! The control plane signs two kinds of token with one ES256 key kept in the data dir
//! (`token-signing-key.pem`, mode 0600): single-use **join tokens** that bootstrap a
//! sidecar's identity, and **admin tokens** for the administration API. They carry distinct
//! audiences, so one can never be used as the other.
//!
//! Every token is checked by [`palisade_contract::jwt::strict_validation`], and the claim
//! structs below are typed, so a claim of the wrong JSON type fails to parse rather than
//! being skipped.

use crate::keys::{KeyStorage, PrivateKey, load_key};
use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use jsonwebtoken::{Algorithm, DecodingKey, Header};
use palisade_contract::identity_api::control_plane_id;
pub use palisade_contract::jwt::{LEEWAY_SECS, TokenError, strict_validation, unverified_issuer};
use palisade_contract::{SpiffeId, TrustDomain};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use crate::ca::{CaError, unix_now};

/// Audience of join tokens.
pub const JOIN_AUDIENCE: &str = "palisade-join";
/// Audience of admin API tokens.
pub const ADMIN_AUDIENCE: &str = "palisade-admin";

pub const TOKEN_KEY_FILE: &str = "token-signing-key.pem";
/// Purpose bound into the token key's envelope.
pub const TOKEN_KEY_PURPOSE: &str = "token";

/// The control plane's own token key.
pub struct TokenKey {
    key: PrivateKey,
    decoding: DecodingKey,
    kid: String,
    issuer: String,
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKey")
            .field("kid", &self.kid)
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinClaims {
    pub iss: String,
    pub aud: String,
    /// The SPIFFE ID the token entitles its bearer to.
    pub sub: String,
    pub exp: u64,
    pub nbf: u64,
    pub iat: u64,
    /// Unique token id; the control plane records it and accepts it once.
    pub jti: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdminClaims {
    pub iss: String,
    pub aud: String,
    pub sub: String,
    pub role: String,
    pub exp: u64,
    pub nbf: u64,
    pub iat: u64,
    pub jti: String,
}

impl TokenKey {
    /// Loads the key from the data dir (kept as `storage` says), creating it on first start.
    pub fn load_or_create(
        data_dir: &Path,
        td: &TrustDomain,
        storage: &KeyStorage,
    ) -> Result<Self, CaError> {
        let path = data_dir.join(TOKEN_KEY_FILE);
        if !path.exists() {
            storage.create(&path, TOKEN_KEY_PURPOSE)?;
        }
        let key = load_key(&path, TOKEN_KEY_PURPOSE, storage)?;
        let decoding = DecodingKey::from_ec_pem(key.public_key_pem().as_bytes()).map_err(|e| {
            CaError::BadMaterial {
                path: path.clone(),
                reason: e.to_string(),
            }
        })?;
        let digest = ring::digest::digest(&ring::digest::SHA256, key.public_key_raw());
        let kid = hex::encode(&digest.as_ref()[..8]);
        Ok(Self {
            key,
            decoding,
            kid,
            issuer: control_plane_id(td).to_string(),
        })
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The JWS compact serialization (RFC 7515 §7.1) of `claims`, signed ES256 through the
    /// key wherever it lives (a token signs only what it is given, so jsonwebtoken's own
    /// encoder, which wants the key's bytes, cannot be used).
    fn sign<T: Serialize>(&self, claims: &T) -> Result<String, CaError> {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        let part = |value: serde_json::Result<Vec<u8>>| {
            value
                .map(|json| B64URL.encode(json))
                .map_err(|e| CaError::Signing(e.to_string()))
        };
        let message = format!(
            "{}.{}",
            part(serde_json::to_vec(&header))?,
            part(serde_json::to_vec(claims))?
        );
        let signature = self.key.sign_fixed(message.as_bytes())?;
        Ok(format!("{message}.{}", B64URL.encode(signature)))
    }

    /// Mints a join token for `spiffe_id`, valid for `ttl`.
    pub fn mint_join(&self, spiffe_id: &SpiffeId, ttl: Duration) -> Result<JoinClaims, CaError> {
        let now = unix_now() as u64;
        Ok(JoinClaims {
            iss: self.issuer.clone(),
            aud: JOIN_AUDIENCE.into(),
            sub: spiffe_id.to_string(),
            exp: now + ttl.as_secs(),
            nbf: now,
            iat: now,
            jti: random_id()?,
        })
    }

    pub fn sign_join(&self, claims: &JoinClaims) -> Result<String, CaError> {
        self.sign(claims)
    }

    /// Signs an admin token; its claims say what to record ([`crate::admin_tokens`]: an
    /// admin token is accepted only while its `jti` is recorded and unrevoked).
    pub fn mint_admin(
        &self,
        subject: &str,
        role: &str,
        ttl: Duration,
    ) -> Result<(String, AdminClaims), CaError> {
        let now = unix_now() as u64;
        let claims = AdminClaims {
            iss: self.issuer.clone(),
            aud: ADMIN_AUDIENCE.into(),
            sub: subject.into(),
            role: role.into(),
            exp: now + ttl.as_secs(),
            nbf: now,
            iat: now,
            jti: random_id()?,
        };
        Ok((self.sign(&claims)?, claims))
    }

    pub fn verify_join(&self, token: &str) -> Result<JoinClaims, TokenError> {
        self.verify(token, JOIN_AUDIENCE)
    }

    pub fn verify_admin(&self, token: &str) -> Result<AdminClaims, TokenError> {
        self.verify(token, ADMIN_AUDIENCE)
    }

    fn verify<T: serde::de::DeserializeOwned>(
        &self,
        token: &str,
        audience: &str,
    ) -> Result<T, TokenError> {
        let header = palisade_contract::jwt::decode_header(token)?;
        if header.kid.as_deref() != Some(self.kid.as_str()) {
            return Err(TokenError::UnknownKey);
        }
        let validation = strict_validation(Algorithm::ES256, &self.issuer, &[audience]);
        Ok(jsonwebtoken::decode::<T>(token, &self.decoding, &validation)?.claims)
    }
}

/// 128 random bits, hex-encoded.
pub fn random_id() -> Result<String, CaError> {
    let mut bytes = [0u8; 16];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| CaError::Signing("no randomness available".into()))?;
    Ok(hex::encode(bytes))
}
