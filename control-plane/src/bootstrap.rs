//! Bootstrap tokens: how a sidecar with no certificate yet proves who it is.
//!
//! Two sources, told apart by the token's (not yet trusted) issuer, then verified strictly
//! by the verifier for that issuer:
//! - **join tokens**, signed by the control plane itself (local and docker use), whose `sub`
//!   is the SPIFFE ID and whose `jti` the caller must consume exactly once;
//! - **Kubernetes projected ServiceAccount tokens**, verified against the configured issuer
//!   and its JWKS, audience `palisade` by default, identity from the `kubernetes.io` claims.
//!
//! The SPIFFE ID comes from the verified token only, never from the CSR.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey};
use palisade_contract::{SpiffeId, TrustDomain};
use serde::Deserialize;

use crate::tokens::{TokenError, TokenKey, strict_validation, unverified_issuer};

/// Who a verified bootstrap token says its bearer is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootstrapIdentity {
    pub spiffe_id: SpiffeId,
    pub source: BootstrapSource,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootstrapSource {
    /// A join token; its `jti` must be consumed before a certificate is issued.
    JoinToken { jti: String },
    /// A Kubernetes ServiceAccount token (the pod name, when the token is bound to one).
    Kubernetes { pod: Option<String> },
}

impl BootstrapSource {
    pub fn label(&self) -> &'static str {
        match self {
            BootstrapSource::JoinToken { .. } => "join_token",
            BootstrapSource::Kubernetes { .. } => "kubernetes",
        }
    }
}

/// Verifies Kubernetes projected ServiceAccount tokens of one cluster.
#[derive(Clone)]
pub struct KubernetesVerifier {
    issuer: String,
    audience: String,
    /// Usable keys by `kid`; symmetric keys are never loaded.
    keys: HashMap<String, (DecodingKey, Algorithm)>,
    /// The only key of a one-key JWKS, for tokens without a `kid`.
    sole_key: Option<(DecodingKey, Algorithm)>,
}

impl std::fmt::Debug for KubernetesVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubernetesVerifier")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("kids", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("JWKS is not valid JSON: {0}")]
    Json(String),
    #[error("JWKS has no usable asymmetric key (RSA, EC P-256/P-384 or Ed25519)")]
    NoUsableKey,
}

impl KubernetesVerifier {
    pub fn from_jwks_json(issuer: &str, audience: &str, jwks: &[u8]) -> Result<Self, JwksError> {
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
        Ok(Self {
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            keys,
            sole_key,
        })
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn verify(&self, token: &str, td: &TrustDomain) -> Result<BootstrapIdentity, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        let (key, alg) = match &header.kid {
            // An unknown kid is refused, never retried with another key.
            Some(kid) => self.keys.get(kid).ok_or(TokenError::UnknownKey)?,
            None => self.sole_key.as_ref().ok_or(TokenError::UnknownKey)?,
        };
        let validation = strict_validation(*alg, &self.issuer, &self.audience);
        let claims = jsonwebtoken::decode::<KubernetesClaims>(token, key, &validation)?.claims;
        let k8s = claims.kubernetes;
        if claims.sub
            != format!(
                "system:serviceaccount:{}:{}",
                k8s.namespace, k8s.serviceaccount.name
            )
        {
            return Err(TokenError::BadIdentity);
        }
        let spiffe_id = td
            .workload_id(&k8s.namespace, &k8s.serviceaccount.name)
            .map_err(|_| TokenError::BadIdentity)?;
        Ok(BootstrapIdentity {
            spiffe_id,
            source: BootstrapSource::Kubernetes {
                pod: k8s.pod.map(|p| p.name),
            },
        })
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

/// The claims of a projected ServiceAccount token that Palisade reads.
#[derive(Debug, Deserialize)]
struct KubernetesClaims {
    sub: String,
    #[serde(rename = "kubernetes.io")]
    kubernetes: KubernetesInfo,
}

#[derive(Debug, Deserialize)]
struct KubernetesInfo {
    namespace: String,
    serviceaccount: NamedObject,
    #[serde(default)]
    pod: Option<NamedObject>,
}

#[derive(Debug, Deserialize)]
struct NamedObject {
    name: String,
}

/// Verifies any bootstrap token the control plane accepts.
#[derive(Debug, Clone)]
pub struct BootstrapVerifier {
    trust_domain: TrustDomain,
    token_key: Arc<TokenKey>,
    /// Replaced whole when the cluster's keys are fetched again.
    kubernetes: Option<Arc<ArcSwap<KubernetesVerifier>>>,
}

impl BootstrapVerifier {
    pub fn new(
        trust_domain: TrustDomain,
        token_key: Arc<TokenKey>,
        kubernetes: Option<Arc<ArcSwap<KubernetesVerifier>>>,
    ) -> Self {
        Self {
            trust_domain,
            token_key,
            kubernetes,
        }
    }

    pub fn verify(&self, token: &str) -> Result<BootstrapIdentity, TokenError> {
        let issuer = unverified_issuer(token)?;
        if issuer == self.token_key.issuer() {
            let claims = self.token_key.verify_join(token)?;
            let spiffe_id = SpiffeId::parse(&claims.sub).map_err(|_| TokenError::BadIdentity)?;
            // A join token names a Kubernetes-style workload of this trust domain.
            match spiffe_id.namespace_and_service_account() {
                Some((ns, sa))
                    if spiffe_id.trust_domain_str() == self.trust_domain.as_str()
                        && self.trust_domain.workload_id(ns, sa).is_ok() => {}
                _ => return Err(TokenError::BadIdentity),
            }
            return Ok(BootstrapIdentity {
                spiffe_id,
                source: BootstrapSource::JoinToken { jti: claims.jti },
            });
        }
        match self.kubernetes.as_ref().map(|k| k.load()) {
            Some(k8s) if issuer == k8s.issuer() => k8s.verify(token, &self.trust_domain),
            _ => Err(TokenError::UnknownIssuer),
        }
    }
}
