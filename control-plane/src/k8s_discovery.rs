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

use bytes::Bytes;
use http::{Request, Uri, header};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::ServerName;
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::bootstrap::KubernetesVerifier;

pub const REFRESH_INTERVAL: Duration = Duration::from_secs(600);
const TIMEOUT: Duration = Duration::from_secs(10);
const MAX_DOCUMENT_BYTES: usize = 512 * 1024;

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
    tls: Arc<ClientConfig>,
    token_file: Option<PathBuf>,
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
        let mut roots = RootCertStore::empty();
        let certs = palisade_contract::certs::certs_from_pem(ca_pem)
            .map_err(|e| DiscoveryError::Config(format!("cluster CA: {e}")))?;
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| DiscoveryError::Config(format!("cluster CA: {e}")))?;
        }
        let mut tls =
            ClientConfig::builder_with_provider(palisade_contract::tls::crypto_provider())
                .with_safe_default_protocol_versions()
                .map_err(|e| DiscoveryError::Config(e.to_string()))?
                .with_root_certificates(roots)
                .with_no_client_auth();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            issuer: issuer.trim_end_matches('/').to_owned(),
            audience: audience.to_owned(),
            tls: Arc::new(tls),
            token_file,
        })
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
        let fail = |reason: String| DiscoveryError::Fetch {
            url: url.to_owned(),
            reason,
        };
        let uri: Uri = url.parse().map_err(|e| fail(format!("bad URL: {e}")))?;
        if uri.scheme_str() != Some("https") {
            return Err(fail("only https:// is accepted".into()));
        }
        let host = uri.host().ok_or_else(|| fail("no host".into()))?.to_owned();
        let port = uri.port_u16().unwrap_or(443);
        let token = match &self.token_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| fail(format!("reading {}: {e}", path.display())))?
                    .trim()
                    .to_owned(),
            ),
            None => None,
        };
        let request = async {
            let tcp = TcpStream::connect((host.as_str(), port))
                .await
                .map_err(|e| fail(e.to_string()))?;
            let name = ServerName::try_from(host.trim_matches(['[', ']']).to_owned())
                .map_err(|e| fail(e.to_string()))?;
            let tls = TlsConnector::from(self.tls.clone())
                .connect(name, tcp)
                .await
                .map_err(|e| fail(format!("TLS: {e}")))?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .map_err(|e| fail(e.to_string()))?;
            tokio::spawn(conn);
            let mut req = Request::get(uri.path_and_query().map_or("/", |p| p.as_str()))
                .header(header::HOST, uri.authority().map_or("", |a| a.as_str()))
                .header(header::ACCEPT, "application/json");
            if let Some(token) = &token {
                req = req.header(header::AUTHORIZATION, format!("Bearer {token}"));
            }
            let response = sender
                .send_request(
                    req.body(Empty::<Bytes>::new())
                        .map_err(|e| fail(e.to_string()))?,
                )
                .await
                .map_err(|e| fail(e.to_string()))?;
            if !response.status().is_success() {
                return Err(fail(format!("HTTP {}", response.status())));
            }
            Ok(Limited::new(response.into_body(), MAX_DOCUMENT_BYTES)
                .collect()
                .await
                .map_err(|e| fail(e.to_string()))?
                .to_bytes())
        };
        tokio::time::timeout(TIMEOUT, request)
            .await
            .map_err(|_| fail(format!("timed out after {TIMEOUT:?}")))?
    }
}
