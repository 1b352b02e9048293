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

use std::sync::Arc;

use arc_swap::ArcSwap;

use palisade_contract::jwt::{Jwks, JwksError};
use palisade_contract::{SpiffeId, TrustDomain};
use serde::Deserialize;

use crate::tokens::{TokenError, TokenKey, unverified_issuer};

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
#[derive(Debug, Clone)]
pub struct KubernetesVerifier {
    issuer: String,
    audience: String,
    keys: Jwks,
}

impl KubernetesVerifier {
    pub fn from_jwks_json(issuer: &str, audience: &str, jwks: &[u8]) -> Result<Self, JwksError> {
        Ok(Self {
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            keys: Jwks::from_json(jwks)?,
        })
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn verify(&self, token: &str, td: &TrustDomain) -> Result<BootstrapIdentity, TokenError> {
        let k8s = self.claims(token, &self.audience)?;
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

    /// The (namespace, service account) of a token for `audience` (the admin API's, which
    /// differs from bootstrap's so that a workload's bootstrap token is no admin credential).
    pub fn service_account(
        &self,
        token: &str,
        audience: &str,
    ) -> Result<(String, String), TokenError> {
        let k8s = self.claims(token, audience)?;
        Ok((k8s.namespace, k8s.serviceaccount.name))
    }

    /// Verified claims, whose `sub` must agree with the `kubernetes.io` claims.
    fn claims(&self, token: &str, audience: &str) -> Result<KubernetesInfo, TokenError> {
        let claims: KubernetesClaims = self.keys.verify(token, &self.issuer, &[audience])?;
        let k8s = claims.kubernetes;
        if claims.sub
            != format!(
                "system:serviceaccount:{}:{}",
                k8s.namespace, k8s.serviceaccount.name
            )
        {
            return Err(TokenError::BadIdentity);
        }
        Ok(k8s)
    }
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
