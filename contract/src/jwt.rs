//! JSON Web Tokens, verified one strict way everywhere: bootstrap tokens at the control plane,
//! end-user tokens at the sidecar.
//!
//! jsonwebtoken's defaults are looser than Palisade needs: a token missing `iss` or `aud`
//! passes unless those are listed as required, `nbf` is not checked, and the leeway is 60 s.
//! [`strict_validation`] sets all of that deliberately. Keys come from a JWKS where only
//! asymmetric keys are ever loaded, each with the one algorithm it may be used with, and a
//! token naming an unknown `kid` is refused, never tried against another key.

use std::collections::HashMap;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde::de::DeserializeOwned;

/// Clock skew tolerated on `exp` and `nbf`, in seconds.
pub const LEEWAY_SECS: u64 = 5;

/// A validation that requires `exp`, `iss` and `aud` with the given values, checks `nbf`
/// when present, allows exactly one algorithm and only [`LEEWAY_SECS`] of skew.
pub fn strict_validation(alg: Algorithm, issuer: &str, audiences: &[&str]) -> Validation {
    let mut v = Validation::new(alg);
    v.set_required_spec_claims(&["exp", "iss", "aud"]);
    v.set_issuer(&[issuer]);
    v.set_audience(audiences);
    v.validate_exp = true;
    v.validate_nbf = true;
    v.validate_aud = true;
    v.leeway = LEEWAY_SECS;
    v
}

/// Why a token was refused. The variants are the reasons counted in metrics and told to the
/// caller; the detail goes to the log only.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token is not a well-formed JWT")]
    Malformed,
    #[error("token issuer is not trusted")]
    UnknownIssuer,
    #[error("token was signed by an unknown key")]
    UnknownKey,
    #[error("token signature or algorithm is not valid")]
    BadSignature,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
    #[error("token audience is not accepted")]
    WrongAudience,
    #[error("token claims are missing or malformed")]
    BadClaims,
    #[error("token names no valid identity")]
    BadIdentity,
    #[error("token header lists critical extensions (crit), which are not supported")]
    CriticalExtension,
    #[error("more than one token was presented")]
    Ambiguous,
}

impl TokenError {
    pub fn label(&self) -> &'static str {
        match self {
            TokenError::Malformed => "malformed",
            TokenError::UnknownIssuer => "unknown_issuer",
            TokenError::UnknownKey => "unknown_key",
            TokenError::BadSignature => "bad_signature",
            TokenError::Expired => "expired",
            TokenError::NotYetValid => "not_yet_valid",
            TokenError::WrongAudience => "wrong_audience",
            TokenError::BadClaims => "bad_claims",
            TokenError::BadIdentity => "bad_identity",
            TokenError::CriticalExtension => "critical_extension",
            TokenError::Ambiguous => "ambiguous",
        }
    }
}

impl From<jsonwebtoken::errors::Error> for TokenError {
    fn from(e: jsonwebtoken::errors::Error) -> Self {
        use jsonwebtoken::errors::ErrorKind as K;
        match e.kind() {
            K::InvalidToken | K::Base64(_) | K::Utf8(_) => TokenError::Malformed,
            K::InvalidSignature
            | K::InvalidAlgorithm
            | K::InvalidAlgorithmName
            | K::InvalidEcdsaKey
            | K::InvalidRsaKey(_)
            | K::InvalidKeyFormat
            | K::MissingAlgorithm => TokenError::BadSignature,
            K::ExpiredSignature => TokenError::Expired,
            K::ImmatureSignature => TokenError::NotYetValid,
            K::InvalidAudience => TokenError::WrongAudience,
            K::InvalidIssuer => TokenError::UnknownIssuer,
            _ => TokenError::BadClaims,
        }
    }
}

/// The protected header of a token, refused when it names critical extensions.
///
/// RFC 7515, section 4.1.11: a recipient that does not understand every extension listed in
/// `crit` must refuse the token. Palisade understands none, so any `crit` (even an empty
/// list, which the RFC forbids outright) is refused. jsonwebtoken's `Header` has no `crit`
/// field and would silently drop it, so the header's JSON is read here first. Every
/// verifier (join, admin, Kubernetes and end-user tokens) goes through this function.
pub fn decode_header(token: &str) -> Result<jsonwebtoken::Header, TokenError> {
    use base64::Engine;
    let encoded = token.split('.').next().ok_or(TokenError::Malformed)?;
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(encoded)
        .map_err(|_| TokenError::Malformed)?;
    let fields: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&json).map_err(|_| TokenError::Malformed)?;
    if fields.contains_key("crit") {
        return Err(TokenError::CriticalExtension);
    }
    jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)
}

/// Reads the issuer of a token without trusting it, to pick the verifier that will check
/// the token properly.
pub fn unverified_issuer(token: &str) -> Result<String, TokenError> {
    #[derive(Deserialize)]
    struct Iss {
        iss: String,
    }
    let claims: Iss = jsonwebtoken::dangerous::insecure_decode(token)
        .map(|t| t.claims)
        .map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::Json(_) => TokenError::BadClaims,
            _ => TokenError::Malformed,
        })?;
    Ok(claims.iss)
}

/// The usable keys of a JWKS, by `kid`.
#[derive(Clone)]
pub struct Jwks {
    keys: HashMap<String, (DecodingKey, Algorithm)>,
    /// The only key of a one-key JWKS, for tokens without a `kid`.
    sole_key: Option<(DecodingKey, Algorithm)>,
}

impl std::fmt::Debug for Jwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwks")
            .field("kids", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwksError {
    #[error("JWKS is not valid JSON: {0}")]
    Json(String),
    #[error("JWKS has no usable asymmetric key (RSA, EC P-256/P-384 or Ed25519)")]
    NoUsableKey,
}

impl Jwks {
    pub fn from_json(jwks: &[u8]) -> Result<Self, JwksError> {
        let set: JwkSet =
            serde_json::from_slice(jwks).map_err(|e| JwksError::Json(e.to_string()))?;
        let mut keys = HashMap::new();
        let mut usable = Vec::new();
        for jwk in &set.keys {
            let Some((key, alg)) = usable_key(jwk) else {
                tracing::warn!(kid = ?jwk.common.key_id, "ignoring a JWKS key that is symmetric, unsupported or malformed");
                continue;
            };
            if let Some(kid) = &jwk.common.key_id {
                keys.insert(kid.clone(), (key.clone(), alg));
            }
            usable.push((key, alg));
        }
        if usable.is_empty() {
            return Err(JwksError::NoUsableKey);
        }
        let sole_key = if usable.len() == 1 {
            usable.pop()
        } else {
            None
        };
        Ok(Self { keys, sole_key })
    }

    /// Verifies `token` against these keys, for `issuer` and any of `audiences`, and returns
    /// its claims.
    pub fn verify<T: DeserializeOwned>(
        &self,
        token: &str,
        issuer: &str,
        audiences: &[&str],
    ) -> Result<T, TokenError> {
        let header = decode_header(token)?;
        let (key, alg) = match &header.kid {
            Some(kid) => self.keys.get(kid).ok_or(TokenError::UnknownKey)?,
            None => self.sole_key.as_ref().ok_or(TokenError::UnknownKey)?,
        };
        let validation = strict_validation(*alg, issuer, audiences);
        Ok(jsonwebtoken::decode::<T>(token, key, &validation)?.claims)
    }
}

/// The algorithm a JWK may be used with, from its `alg` when given, else from its key type.
fn usable_key(jwk: &Jwk) -> Option<(DecodingKey, Algorithm)> {
    let by_type = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => Algorithm::ES256,
            EllipticCurve::P384 => Algorithm::ES384,
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => {
            Algorithm::EdDSA
        }
        // Symmetric ("oct") keys and anything else are never used.
        _ => return None,
    };
    let alg = match jwk.common.key_algorithm {
        Some(ka) => {
            let named: Algorithm = ka.to_string().parse().ok()?;
            if named.family() != by_type.family() {
                return None;
            }
            named
        }
        None => by_type,
    };
    let key = DecodingKey::from_jwk(jwk).ok()?;
    Some((key, alg))
}

/// Token issuers for tests: an ES256 key with a JWKS that publishes it.
#[cfg(any(test, feature = "test-support"))]
pub mod testing {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use serde_json::{Value, json};

    pub struct TestIssuer {
        pub kid: String,
        pub key: jsonwebtoken::EncodingKey,
        /// `{"keys": [<this key>]}`.
        pub jwks: Value,
    }

    impl TestIssuer {
        /// A fresh P-256 key published under `kid`.
        pub fn new(kid: &str) -> Self {
            let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
                .expect("P-256 key generation");
            let raw = key.public_key_raw();
            let jwks = json!({"keys": [{
                "kty": "EC", "crv": "P-256", "kid": kid, "use": "sig",
                "x": URL_SAFE_NO_PAD.encode(&raw[1..33]),
                "y": URL_SAFE_NO_PAD.encode(&raw[33..65]),
            }]});
            Self {
                kid: kid.to_owned(),
                key: jsonwebtoken::EncodingKey::from_ec_pem(key.serialize_pem().as_bytes())
                    .expect("rcgen writes PKCS#8 PEM"),
                jwks,
            }
        }

        /// `claims` signed with this key, the header naming `kid` (which may be another's).
        pub fn sign_as(&self, kid: Option<&str>, claims: &Value) -> String {
            let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
            header.kid = kid.map(str::to_owned);
            jsonwebtoken::encode(&header, claims, &self.key).expect("encoding a token")
        }

        /// `claims` signed with this key under its own `kid`.
        pub fn sign(&self, claims: &Value) -> String {
            self.sign_as(Some(&self.kid), claims)
        }

        /// `claims` signed with this key under a protected header written as given (to
        /// carry fields jsonwebtoken's `Header` has no place for, such as `crit`).
        pub fn sign_with_header(&self, header: &Value, claims: &Value) -> String {
            let message = format!(
                "{}.{}",
                URL_SAFE_NO_PAD.encode(header.to_string()),
                URL_SAFE_NO_PAD.encode(claims.to_string())
            );
            let signature = jsonwebtoken::crypto::sign(
                message.as_bytes(),
                &self.key,
                jsonwebtoken::Algorithm::ES256,
            )
            .expect("signing");
            format!("{message}.{signature}")
        }
    }

    /// Seconds since the epoch, for `exp`, `nbf` and `iat`.
    pub fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_secs()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::testing::{TestIssuer, now};
    use super::*;

    #[test]
    fn critical_extensions_are_refused_and_a_plain_header_passes() {
        let issuer = TestIssuer::new("k1");
        let jwks = Jwks::from_json(issuer.jwks.to_string().as_bytes()).unwrap();
        let claims = json!({"iss": "i", "aud": "a", "sub": "s", "exp": now() + 60});
        let verify = |t: &str| jwks.verify::<serde_json::Value>(t, "i", &["a"]);
        let plain = issuer.sign_with_header(&json!({"alg": "ES256", "kid": "k1"}), &claims);
        assert_eq!(verify(&plain).unwrap()["sub"], "s");
        for crit in [json!(["x-unknown"]), json!([]), json!("b64"), json!(null)] {
            let header = json!({"alg": "ES256", "kid": "k1", "crit": crit});
            let token = issuer.sign_with_header(&header, &claims);
            assert_eq!(
                verify(&token).unwrap_err(),
                TokenError::CriticalExtension,
                "crit {crit}"
            );
        }
        assert_eq!(decode_header("not a token"), Err(TokenError::Malformed));
        assert_eq!(
            decode_header("e30.e30.x").map(|_| ()),
            Err(TokenError::Malformed)
        );
    }
}
