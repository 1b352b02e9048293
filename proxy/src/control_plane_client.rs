//! The sidecar's client for the control plane's identity protocol
//! ([`palisade_contract::identity_api`]).
//!
//! Every call opens a fresh TLS connection that accepts only the control plane's SPIFFE ID,
//! verified against the sidecar's current trust bundle. Bootstrap calls present no client
//! certificate; renewals present the current one. Those calls are rare (about twice per
//! certificate lifetime), so no connection is kept for them.
//!
//! The decision shipper is the exception ([`ShipChannel`]): it posts a batch every 200 ms
//! or faster while decisions are made, and a handshake per batch (two ECDSA verifications,
//! one signature and an ECDH on each side) was most of what shipping cost the sidecar and,
//! at a thousand sidecars, five thousand handshakes a second for the control plane. Its
//! connection is kept, but never past the trust it was opened with: not once either side's
//! certificate of the handshake is within [`crate::trust::RETIRE_AHEAD`] of expiring, not
//! after the sidecar's certificate was renewed (the next batch presents the new one) and
//! not after the trust bundle changed. The control plane checks the client certificate's
//! validity on every request as well.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use palisade_contract::SpiffeId;
use palisade_contract::config_api::{self, ConfigQuery, MeshConfig};
use palisade_contract::decisions::ship::{BATCH_CONTENT_TYPE, SHIP_PATH, ShipAck};
use palisade_contract::identity_api::{
    CertificateRequest, CertificateResponse, ErrorBody, ISSUE_PATH, REATTEST_PATH, RENEW_PATH,
    ReattestRequest,
};
use palisade_contract::tls::{
    ExpectedServer, IdentitySlot, SharedBundle, TrustBundle, WorkloadIdentity, client_config,
    server_name_for,
};
use rustls::ClientConfig;
use rustls_pki_types::CertificateDer;
use tokio::time::Instant;
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
    /// What the authenticated handshakes present and verify with (a kept connection
    /// compares them with what it was opened with).
    identity: Arc<IdentitySlot>,
    bundle: SharedBundle,
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
            authenticated: Arc::new(client_config(
                Some(identity.clone()),
                bundle.clone(),
                expected,
                alpn,
            )),
            identity,
            bundle,
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
        let (mut sender, _) = self.connect(tls).await?;
        let body = body.map(|(content_type, bytes)| (content_type, Bytes::from(bytes)));
        let request = self.request(method, path, token, body)?;
        exchange(&mut sender, request).await
    }

    /// A new HTTP/1.1 connection; the certificate chain the control plane presented.
    async fn connect(
        &self,
        tls: &Arc<ClientConfig>,
    ) -> Result<(SendRequest<Full<Bytes>>, Vec<CertificateDer<'static>>), ControlPlaneError> {
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
        let peer_chain = stream
            .get_ref()
            .1
            .peer_certificates()
            .unwrap_or_default()
            .to_vec();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ControlPlaneError::Http(e.to_string()))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok((sender, peer_chain))
    }

    fn request(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<(&str, Bytes)>,
    ) -> Result<Request<Full<Bytes>>, ControlPlaneError> {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, self.addr.as_str());
        let body = match body {
            Some((content_type, bytes)) => {
                request = request.header(header::CONTENT_TYPE, content_type);
                bytes
            }
            None => Bytes::new(),
        };
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        request
            .body(Full::new(body))
            .map_err(|e| ControlPlaneError::Http(e.to_string()))
    }
}

/// Sends `request` and reads the status and the body (at most `MAX_RESPONSE_BYTES`).
async fn exchange(
    sender: &mut SendRequest<Full<Bytes>>,
    request: Request<Full<Bytes>>,
) -> Result<(StatusCode, Bytes), ControlPlaneError> {
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

/// The decision shipper's way to the control plane: one connection, kept between batches
/// for as long as the trust it was opened with holds (see the module docs).
#[derive(Debug)]
pub struct ShipChannel {
    client: ControlPlaneClient,
    kept: Option<Kept>,
}

/// A kept connection and the trust it was opened with.
struct Kept {
    sender: SendRequest<Full<Bytes>>,
    trust: KeptTrust,
}

impl std::fmt::Debug for Kept {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kept")
            .field("trust", &self.trust)
            .finish_non_exhaustive()
    }
}

/// What a kept connection was opened with.
#[derive(Debug)]
struct KeptTrust {
    /// The certificate its handshake presented.
    identity: Option<Arc<WorkloadIdentity>>,
    /// The bundle its handshake verified the control plane with.
    bundle: Arc<TrustBundle>,
    /// [`crate::trust::RETIRE_AHEAD`] before the first certificate of its handshake expires.
    retire_at: Instant,
}

impl KeptTrust {
    /// Whether a connection opened with this trust may carry another request, now that the
    /// sidecar's identity is `identity` and its bundle `bundle`.
    fn holds(
        &self,
        identity: Option<&Arc<WorkloadIdentity>>,
        bundle: &Arc<TrustBundle>,
        now: Instant,
    ) -> bool {
        let same_identity = match (&self.identity, identity) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        same_identity && Arc::ptr_eq(&self.bundle, bundle) && now < self.retire_at
    }
}

impl ShipChannel {
    pub fn new(client: ControlPlaneClient) -> Self {
        Self { client, kept: None }
    }

    /// Posts a batch of `instance`'s decision-log lines; the answer says up to where the
    /// control plane has stored them ([`palisade_contract::decisions::ship`]). A batch
    /// that fails on a kept connection (the control plane closed it meanwhile) is sent
    /// once more on a new one: batches are idempotent (the store keeps each line once).
    pub async fn ship(
        &mut self,
        instance: &str,
        lines: Vec<u8>,
    ) -> Result<ShipAck, ControlPlaneError> {
        let path = format!("{SHIP_PATH}?instance={instance}");
        let lines = Bytes::from(lines);
        let attempt = async {
            let mut reused = self.reusable().await;
            loop {
                let fresh = reused.is_none();
                let mut kept = match reused.take() {
                    Some(kept) => kept,
                    None => self.open().await?,
                };
                let body = Some((BATCH_CONTENT_TYPE, lines.clone()));
                let request = self.client.request(Method::POST, &path, None, body)?;
                match exchange(&mut kept.sender, request).await {
                    Ok(answer) => {
                        self.kept = Some(kept);
                        return Ok(answer);
                    }
                    Err(e) if fresh => return Err(e),
                    // The control plane closed the kept connection meanwhile: once more,
                    // on a new one.
                    Err(_) => {}
                }
            }
        };
        let (status, bytes) = tokio::time::timeout(CALL_TIMEOUT, attempt)
            .await
            .map_err(|_| ControlPlaneError::Timeout(CALL_TIMEOUT))??;
        json_answer(status, &bytes)
    }

    /// The kept connection, if its trust holds and it is still open.
    async fn reusable(&mut self) -> Option<Kept> {
        let mut kept = self.kept.take()?;
        let holds = kept.trust.holds(
            self.client.identity.get().as_ref(),
            &self.client.bundle.load_full(),
            Instant::now(),
        );
        (holds && kept.sender.ready().await.is_ok()).then_some(kept)
    }

    async fn open(&mut self) -> Result<Kept, ControlPlaneError> {
        // Read before the handshake, as the handshake reads them: a renewal during it
        // only makes the connection's real trust later than recorded.
        let identity = self.client.identity.get();
        let bundle = self.client.bundle.load_full();
        let (sender, peer_chain) = self.client.connect(&self.client.authenticated).await?;
        let deadline = crate::trust::handshake_deadline(identity.as_deref(), &peer_chain);
        Ok(Kept {
            sender,
            trust: KeptTrust {
                identity,
                bundle,
                retire_at: crate::trust::retire_at(deadline),
            },
        })
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

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_contract::TrustDomain;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, SanType};
    use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

    fn identity() -> Arc<WorkloadIdentity> {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = vec![SanType::URI(
            "spiffe://palisade.local/ns/shop/sa/orders"
                .try_into()
                .unwrap(),
        )];
        let cert = params.self_signed(&key).unwrap();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Arc::new(WorkloadIdentity::from_der(vec![cert.der().clone()], key).unwrap())
    }

    fn bundle() -> Arc<TrustBundle> {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let root = params.self_signed(&key).unwrap();
        let domain: TrustDomain = "palisade.local".parse().unwrap();
        Arc::new(TrustBundle::from_ders(domain, vec![root.der().clone()]).unwrap())
    }

    /// A kept connection carries another batch only with the certificate and the bundle it
    /// was opened with, and not past its retirement.
    #[test]
    fn a_kept_connection_is_given_up_on_renewal_a_new_bundle_or_its_deadline() {
        let (id, roots) = (identity(), bundle());
        let now = Instant::now();
        let trust = KeptTrust {
            identity: Some(id.clone()),
            bundle: roots.clone(),
            retire_at: now + Duration::from_secs(60),
        };
        assert!(trust.holds(Some(&id), &roots, now));
        assert!(!trust.holds(Some(&identity()), &roots, now), "renewed");
        assert!(!trust.holds(None, &roots, now), "no identity any more");
        assert!(!trust.holds(Some(&id), &bundle(), now), "another bundle");
        assert!(
            !trust.holds(Some(&id), &roots, now + Duration::from_secs(60)),
            "at its retirement"
        );
    }
}
