//! Fetching a cluster's ServiceAccount token keys by OIDC discovery: GET
//! `<issuer>/.well-known/openid-configuration`, check that its `issuer` is the configured one,
//! then GET its `jwks_uri`. Both over HTTPS only, verified against the cluster's CA (in a pod:
//! `/var/run/secrets/kubernetes.io/serviceaccount/ca.crt`), optionally with a bearer token
//! (the control plane's own ServiceAccount token), since API servers serve these documents
//! to authenticated callers unless anonymous discovery is allowed.
//!
//! The control plane fetches at start-up (start fails if it cannot: without keys no pod
//! could bootstrap) and again every [`REFRESH_INTERVAL`], keeping the last good keys when a
//! refresh fails, so the cluster's key rotation is followed.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use serde::Deserialize;

use crate::bootstrap::KubernetesVerifier;
use crate::kubernetes::HttpsClient;

pub const REFRESH_INTERVAL: Duration = Duration::from_secs(600);

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("{0}")]
    Config(String),
    #[error("fetching {url}: {reason}")]
    Fetch { url: String, reason: String },
    #[error("the discovery document names issuer {got:?}, not the configured {want:?}")]
    IssuerMismatch { got: String, want: String },
    #[error("JWKS from {url}: {reason}")]
    Keys { url: String, reason: String },
}

#[derive(Debug, Clone)]
pub struct Discovery {
    issuer: String,
    audience: String,
    http: HttpsClient,
}

#[derive(Deserialize)]
struct OpenIdConfiguration {
    issuer: String,
    jwks_uri: String,
}

impl Discovery {
    /// `ca_pem` holds the roots that sign the API server's certificate.
    pub fn new(
        issuer: &str,
        audience: &str,
        ca_pem: &[u8],
        token_file: Option<PathBuf>,
    ) -> Result<Self, DiscoveryError> {
        Ok(Self {
            issuer: issuer.trim_end_matches('/').to_owned(),
            audience: audience.to_owned(),
            http: HttpsClient::new(ca_pem, token_file).map_err(DiscoveryError::Config)?,
        })
    }

    /// Refetches the keys every [`REFRESH_INTERVAL`] into `current` until `stop` resolves;
    /// a failed fetch keeps the previous keys (and says so).
    pub async fn keep_fresh(
        self,
        current: Arc<ArcSwap<KubernetesVerifier>>,
        stop: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(stop);
        loop {
            tokio::select! {
                () = tokio::time::sleep(REFRESH_INTERVAL) => {}
                () = &mut stop => return,
            }
            match self.fetch().await {
                Ok(verifier) => current.store(Arc::new(verifier)),
                Err(e) => tracing::warn!(error = %e,
                    "refreshing the Kubernetes token keys failed; keeping the previous keys"),
            }
        }
    }

    /// Fetches the discovery document and the keys it points to.
    pub async fn fetch(&self) -> Result<KubernetesVerifier, DiscoveryError> {
        let config_url = format!("{}/.well-known/openid-configuration", self.issuer);
        let body = self.get(&config_url).await?;
        let config: OpenIdConfiguration =
            serde_json::from_slice(&body).map_err(|e| DiscoveryError::Fetch {
                url: config_url.clone(),
                reason: format!("not an OpenID configuration: {e}"),
            })?;
        if config.issuer.trim_end_matches('/') != self.issuer {
            return Err(DiscoveryError::IssuerMismatch {
                got: config.issuer,
                want: self.issuer.clone(),
            });
        }
        let jwks = self.get(&config.jwks_uri).await?;
        KubernetesVerifier::from_jwks_json(&self.issuer, &self.audience, &jwks).map_err(|e| {
            DiscoveryError::Keys {
                url: config.jwks_uri,
                reason: e.to_string(),
            }
        })
    }

    async fn get(&self, url: &str) -> Result<Bytes, DiscoveryError> {
        self.http
            .get_json(url)
            .await
            .map_err(|e| DiscoveryError::Fetch {
                url: url.to_owned(),
                reason: e.reason,
            })
    }
}
