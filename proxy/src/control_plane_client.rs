//! The sidecar's client for the control plane's identity protocol
//! ([`palisade_contract::identity_api`]).
//!
//! Every call opens a fresh TLS connection that accepts only the control plane's SPIFFE ID,
//! verified against the sidecar's current trust bundle. Bootstrap calls present no client
//! certificate; renewals present the current one. Calls are rare (about twice per
//! certificate lifetime), so no connection is kept.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use palisade_contract::SpiffeId;
use palisade_contract::config_api::{self, ConfigQuery, MeshConfig};
use palisade_contract::decisions::ship::{BATCH_CONTENT_TYPE, SHIP_PATH, ShipAck};
use palisade_contract::identity_api::{
    CertificateRequest, CertificateResponse, ErrorBody, ISSUE_PATH, REATTEST_PATH, RENEW_PATH,
    ReattestRequest,
};
use palisade_contract::tls::{
    ExpectedServer, IdentitySlot, SharedBundle, client_config, server_name_for,
};
use rustls::ClientConfig;
use tokio_rustls::TlsConnector;

/// Time allowed for one call, connection and TLS handshake included.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest response body read.
const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ControlPlaneError {
    #[error("control plane at {addr} is unreachable: {source}")]
    Unreachable {
        addr: String,
        source: std::io::Error,
    },
    #[error("TLS with the control plane failed: {0}")]
    Tls(std::io::Error),
    #[error("control plane call timed out after {0:?}")]
    Timeout(Duration),
    #[error("HTTP error talking to the control plane: {0}")]
    Http(String),
    #[error("control plane refused ({status}): {}", body.error)]
    Refused { status: StatusCode, body: ErrorBody },
    #[error("control plane sent an unreadable response: {0}")]
    BadResponse(String),
}

#[derive(Debug, Clone)]
pub struct ControlPlaneClient {
    addr: String,
    expected: SpiffeId,
    /// Presents no certificate: for bootstrap with a token.
    anonymous: Arc<ClientConfig>,
    /// Presents the workload's current certificate: for renewal.
    authenticated: Arc<ClientConfig>,
    connect_timeout: Duration,
}

impl ControlPlaneClient {
    /// `addr` is `host:port` of the control plane's sidecar-facing listener.
    pub fn new(
        addr: String,
        control_plane_id: SpiffeId,
        bundle: SharedBundle,
        identity: Arc<IdentitySlot>,
        connect_timeout: Duration,
    ) -> Self {
        let expected = ExpectedServer::Exact(control_plane_id.clone());
        let alpn: &[&[u8]] = &[b"http/1.1"];
        Self {
            anonymous: Arc::new(client_config(None, bundle.clone(), expected.clone(), alpn)),
            authenticated: Arc::new(client_config(Some(identity), bundle, expected, alpn)),
            addr,
            expected: control_plane_id,
            connect_timeout,
        }
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// First certificate, authenticated by a bootstrap token.
    pub async fn issue(
        &self,
        token: &str,
        csr_pem: String,
    ) -> Result<CertificateResponse, ControlPlaneError> {
        self.call(&self.anonymous, ISSUE_PATH, Some(token), csr_pem)
            .await
    }

    /// A fresh certificate for the identity of the current one.
    pub async fn renew(&self, csr_pem: String) -> Result<CertificateResponse, ControlPlaneError> {
        self.call(&self.authenticated, RENEW_PATH, None, csr_pem)
            .await
    }

    /// A fresh certificate for the identity of an expired one whose key signed `request`.
    pub async fn reattest(
        &self,
        request: &ReattestRequest,
    ) -> Result<CertificateResponse, ControlPlaneError> {
        let body =
            serde_json::to_vec(request).map_err(|e| ControlPlaneError::Http(e.to_string()))?;
        self.post(&self.anonymous, REATTEST_PATH, None, body).await
    }

    async fn call(
        &self,
        tls: &Arc<ClientConfig>,
        path: &str,
        token: Option<&str>,
        csr: String,
    ) -> Result<CertificateResponse, ControlPlaneError> {
        let body = serde_json::to_vec(&CertificateRequest { csr })
            .map_err(|e| ControlPlaneError::Http(e.to_string()))?;
        self.post(tls, path, token, body).await
    }

    async fn post(
        &self,
        tls: &Arc<ClientConfig>,
        path: &str,
        token: Option<&str>,
        body: Vec<u8>,
    ) -> Result<CertificateResponse, ControlPlaneError> {
        let (status, bytes) = tokio::time::timeout(
            CALL_TIMEOUT,
            self.send(tls, Method::POST, path, token, Some(body)),
        )
        .await
        .map_err(|_| ControlPlaneError::Timeout(CALL_TIMEOUT))??;
        json_answer(status, &bytes)
    }

    /// Posts a batch of `instance`'s decision-log lines; the answer says up to where the
    /// control plane has stored them ([`palisade_contract::decisions::ship`]).
    pub async fn ship_decisions(
        &self,
        instance: &str,
        lines: Vec<u8>,
    ) -> Result<ShipAck, ControlPlaneError> {
        let path = format!("{SHIP_PATH}?instance={instance}");
        let (status, bytes) = tokio::time::timeout(
            CALL_TIMEOUT,
            self.send_as(
                &self.authenticated,
                Method::POST,
                &path,
                None,
                Some((BATCH_CONTENT_TYPE, lines)),
            ),
        )
        .await
        .map_err(|_| ControlPlaneError::Timeout(CALL_TIMEOUT))??;
        json_answer(status, &bytes)
    }

    /// Waits for configuration newer than `query.version` ([`config_api`]): `None` when the
    /// control plane's long poll ended without a change.
    pub async fn config(
        &self,
        query: &ConfigQuery,
    ) -> Result<Option<MeshConfig>, ControlPlaneError> {
        let path = query.path();
        let limit = config_api::LONG_POLL + CALL_TIMEOUT;
        let (status, bytes) = tokio::time::timeout(
            limit,
            self.send(&self.authenticated, Method::GET, &path, None, None),
        )
        .await
        .map_err(|_| ControlPlaneError::Timeout(limit))??;
        if status == StatusCode::NO_CONTENT {
            return Ok(None);
        }
        json_answer(status, &bytes).map(Some)
    }

    /// One request with a JSON body (or none) on a fresh connection.
    async fn send(
        &self,
        tls: &Arc<ClientConfig>,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Bytes), ControlPlaneError> {
        let body = body.map(|b| ("application/json", b));
        self.send_as(tls, method, path, token, body).await
    }

    /// One request on a fresh connection, its body of the given content type; the status
    /// and the body (at most `MAX_RESPONSE_BYTES`).
    async fn send_as(
        &self,
        tls: &Arc<ClientConfig>,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<(&str, Vec<u8>)>,
    ) -> Result<(StatusCode, Bytes), ControlPlaneError> {
        let tcp = crate::net::connect(self.addr.as_str(), self.connect_timeout)
            .await
            .map_err(|source| ControlPlaneError::Unreachable {
                addr: self.addr.clone(),
                source,
            })?;
        let stream = TlsConnector::from(tls.clone())
            .connect(server_name_for(&self.expected), tcp)
            .await
            .map_err(ControlPlaneError::Tls)?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ControlPlaneError::Http(e.to_string()))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, self.addr.as_str());
        let body = match body {
            Some((content_type, bytes)) => {
                request = request.header(header::CONTENT_TYPE, content_type);
                bytes
            }
            None => Vec::new(),
        };
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| ControlPlaneError::Http(e.to_string()))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| ControlPlaneError::Http(e.to_string()))?;
        let status = response.status();
        let bytes = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|e| ControlPlaneError::BadResponse(e.to_string()))?
            .to_bytes();
        Ok((status, bytes))
    }
}

/// A JSON answer, or the control plane's refusal.
fn json_answer<T: serde::de::DeserializeOwned>(
    status: StatusCode,
    bytes: &[u8],
) -> Result<T, ControlPlaneError> {
    if !status.is_success() {
        let body = serde_json::from_slice(bytes).unwrap_or_else(|_| ErrorBody {
            error: String::from_utf8_lossy(bytes).chars().take(200).collect(),
            details: Vec::new(),
        });
        return Err(ControlPlaneError::Refused { status, body });
    }
    serde_json::from_slice(bytes).map_err(|e| ControlPlaneError::BadResponse(e.to_string()))
}
