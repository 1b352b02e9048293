//! Who gets which certificate: the rules between an authenticated request and the CA.
//!
//! - First issuance: a bootstrap token is verified, the CSR's signature is checked, a join
//!   token is consumed (once, atomically, in the store), then the CA signs a leaf for the
//!   token's SPIFFE ID. A bad CSR does not spend the token.
//! - Renewal: the caller's current certificate, already verified by the mTLS handshake,
//!   names the identity; the new certificate is for that identity only.
//! - Re-attestation: a sidecar whose certificate expired (the control plane was away for
//!   longer than the certificate's second half) proves it still holds that certificate's
//!   key by signing a fresh CSR with it. Accepted within `--reattest-grace` of the expiry,
//!   while the chain still leads to a root of the bundle (a rotation that dropped the root
//!   ends it), once per certificate (its serial is spent in the store, as a join token is).
//!   It gives the key's holder no identity it did not have, and only for a bounded while:
//!   join tokens stay single-use, so without it an expired sidecar needs an operator.
//! - The control plane's own identity is never issued to a caller.
//!
//! Every outcome is one structured log event (`target: palisade::identity`) and one count.

use std::sync::Arc;
use std::time::Instant;

use palisade_contract::identity_api::{
    REATTEST_CLOCK_SKEW_SECS, ReattestRequest, control_plane_id, reattest_message,
};
use palisade_contract::{SpiffeId, TrustDomain};

use crate::bootstrap::{BootstrapSource, BootstrapVerifier};
use crate::ca::{CaError, CertificateAuthority, CsrError, IssuedCertificate, parse_csr, unix_now};
use crate::metrics::CaMetrics;
use crate::store::{Consumed, Store, StoreError};
use crate::tokens::TokenError;

/// Why a certificate request was refused. [`IssueError::label`] is the metric label and
/// the reason logged; the caller sees the `Display` text, which holds no internal detail.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error("a bootstrap token is required (Authorization: Bearer <token>)")]
    MissingToken,
    #[error("bootstrap token rejected: {0}")]
    Token(TokenError),
    #[error("join token has already been used, or was never issued for this identity")]
    TokenReused,
    #[error("renewal requires a valid client certificate")]
    NoClientCertificate,
    #[error("re-attestation is off on this control plane (--reattest-grace 0s)")]
    ReattestOff,
    #[error("the certificate expired {ago}s ago, more than the re-attestation grace of {grace}s")]
    ReattestTooLate { ago: i64, grace: i64 },
    #[error(
        "this certificate was already renewed or re-attested: only one that expired unrenewed may be"
    )]
    ReattestReused,
    #[error("re-attestation refused: {0}")]
    ReattestInvalid(String),
    #[error(transparent)]
    Csr(CsrError),
    #[error("identity {0} is reserved for the control plane")]
    Reserved(SpiffeId),
    #[error("internal error")]
    Internal(String),
}

impl IssueError {
    /// The one place a refusal becomes an HTTP status (the sidecar API's answer, and the
    /// status of the decision's record).
    pub fn status(&self) -> axum::http::StatusCode {
        use axum::http::StatusCode;
        match self {
            IssueError::MissingToken
            | IssueError::Token(_)
            | IssueError::TokenReused
            | IssueError::NoClientCertificate
            | IssueError::ReattestOff
            | IssueError::ReattestTooLate { .. }
            | IssueError::ReattestReused
            | IssueError::ReattestInvalid(_) => StatusCode::UNAUTHORIZED,
            IssueError::Csr(_) => StatusCode::BAD_REQUEST,
            IssueError::Reserved(_) => StatusCode::FORBIDDEN,
            IssueError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn label(&self) -> &'static str {
        match self {
            IssueError::MissingToken => "missing_token",
            IssueError::Token(e) => e.label(),
            IssueError::TokenReused => "token_reused",
            IssueError::NoClientCertificate => "no_client_certificate",
            IssueError::ReattestOff => "reattest_off",
            IssueError::ReattestTooLate { .. } => "reattest_too_late",
            IssueError::ReattestReused => "reattest_reused",
            IssueError::ReattestInvalid(_) => "reattest_invalid",
            IssueError::Csr(CsrError::BadSignature) => "csr_bad_signature",
            IssueError::Csr(_) => "csr_invalid",
            IssueError::Reserved(_) => "reserved_identity",
            IssueError::Internal(_) => "internal",
        }
    }
}

impl From<StoreError> for IssueError {
    fn from(e: StoreError) -> Self {
        IssueError::Internal(e.to_string())
    }
}

impl From<CaError> for IssueError {
    fn from(e: CaError) -> Self {
        IssueError::Internal(e.to_string())
    }
}

#[derive(Debug)]
pub struct IdentityService {
    ca: Arc<CertificateAuthority>,
    verifier: BootstrapVerifier,
    store: Store,
    metrics: CaMetrics,
    reserved: SpiffeId,
    /// How long after expiry a certificate may be re-attested (zero: never).
    reattest_grace: std::time::Duration,
    /// Where each issuance, renewal and refusal is recorded (the decision log).
    decisions: Option<crate::own_decisions::OwnDecisions>,
}

impl IdentityService {
    pub fn new(
        ca: Arc<CertificateAuthority>,
        verifier: BootstrapVerifier,
        store: Store,
        metrics: CaMetrics,
        trust_domain: &TrustDomain,
    ) -> Self {
        Self {
            ca,
            verifier,
            store,
            metrics,
            reserved: control_plane_id(trust_domain),
            reattest_grace: std::time::Duration::ZERO,
            decisions: None,
        }
    }

    /// Accepts re-attestations of certificates expired for less than `grace`.
    pub fn with_reattest_grace(self, grace: std::time::Duration) -> Self {
        Self {
            reattest_grace: grace,
            ..self
        }
    }

    /// Records every decision of this service in the control plane's own chain.
    pub fn with_decisions(self, decisions: crate::own_decisions::OwnDecisions) -> Self {
        Self {
            decisions: Some(decisions),
            ..self
        }
    }

    pub fn ca(&self) -> &Arc<CertificateAuthority> {
        &self.ca
    }

    /// First issuance, authenticated by a bootstrap token.
    pub async fn issue(
        &self,
        token: Option<&str>,
        csr_pem: &str,
        peer: &str,
    ) -> Result<IssuedCertificate, IssueError> {
        let started = Instant::now();
        let result = self.issue_inner(token, csr_pem).await;
        self.record(result.as_ref().map(|(c, m)| (c, *m)), peer, started);
        self.decided("issue", None, result.as_ref().map(|(c, _)| c), peer)
            .await?;
        result.map(|(c, _)| c)
    }

    async fn issue_inner(
        &self,
        token: Option<&str>,
        csr_pem: &str,
    ) -> Result<(IssuedCertificate, &'static str), IssueError> {
        let token = token.ok_or(IssueError::MissingToken)?;
        let identity = self.verifier.verify(token).map_err(IssueError::Token)?;
        self.check_not_reserved(&identity.spiffe_id)?;
        let key = parse_csr(csr_pem).map_err(IssueError::Csr)?;
        let cert = self.ca.issue(&identity.spiffe_id, &key)?;
        if let BootstrapSource::JoinToken { jti } = &identity.source
            && self
                .store
                .consume_join_token(jti, identity.spiffe_id.as_str(), unix_now(), &cert.serial)
                .await?
                != Consumed::Fresh
        {
            return Err(IssueError::TokenReused);
        }
        Ok((cert, identity.source.label()))
    }

    /// Renewal, authenticated by the caller's current certificate (serial `peer_serial`).
    /// The renewed certificate is spent for re-attestation: once its holder has a newer
    /// one, a copy of it (a backup of the identity directory, say) cannot be brought back
    /// after it expires. Only a certificate that expired unrenewed can be re-attested.
    pub async fn renew(
        &self,
        peer_id: Option<&SpiffeId>,
        peer_serial: &str,
        csr_pem: &str,
        peer: &str,
    ) -> Result<IssuedCertificate, IssueError> {
        let started = Instant::now();
        let result = async {
            let id = peer_id.ok_or(IssueError::NoClientCertificate)?;
            self.check_not_reserved(id)?;
            let key = parse_csr(csr_pem).map_err(IssueError::Csr)?;
            let cert = self.ca.issue(id, &key)?;
            // Renewing twice with one certificate (a lost answer) is fine: already spent.
            self.store
                .consume_expired_certificate(peer_serial, id.as_str(), unix_now(), &cert.serial)
                .await?;
            Ok((cert, "renewal"))
        }
        .await;
        self.record(result.as_ref().map(|(c, m)| (c, *m)), peer, started);
        self.decided("renew", peer_id, result.as_ref().map(|(c, _)| c), peer)
            .await?;
        result.map(|(c, _)| c)
    }

    /// A new certificate for the identity of an expired one whose key signed `request`.
    pub async fn reattest(
        &self,
        request: &ReattestRequest,
        peer: &str,
    ) -> Result<IssuedCertificate, IssueError> {
        let started = Instant::now();
        let result = self.reattest_inner(request).await;
        self.record(result.as_ref().map(|(c, m)| (c, *m)), peer, started);
        let caller = result.as_ref().ok().map(|(c, _)| &c.spiffe_id);
        self.decided("reattest", caller, result.as_ref().map(|(c, _)| c), peer)
            .await?;
        result.map(|(c, _)| c)
    }

    async fn reattest_inner(
        &self,
        request: &ReattestRequest,
    ) -> Result<(IssuedCertificate, &'static str), IssueError> {
        use base64::Engine as _;
        let invalid = |why: String| IssueError::ReattestInvalid(why);
        if self.reattest_grace.is_zero() {
            return Err(IssueError::ReattestOff);
        }
        let chain = palisade_contract::certs::certs_from_pem(request.certificate_chain.as_bytes())
            .map_err(|e| invalid(format!("certificateChain: {e}")))?;
        let (leaf, intermediates) = chain
            .split_first()
            .ok_or_else(|| invalid("certificateChain holds no certificate".into()))?;
        let summary = palisade_contract::certs::summarize(leaf)
            .map_err(|e| invalid(format!("certificateChain: {e}")))?;
        let now = unix_now();
        if now <= summary.not_after {
            return Err(invalid(
                "the certificate has not expired: renew with it over mTLS instead".into(),
            ));
        }
        let grace = self.reattest_grace.as_secs() as i64;
        if now - summary.not_after > grace {
            return Err(IssueError::ReattestTooLate {
                ago: now - summary.not_after,
                grace,
            });
        }
        if (now - request.signed_at).abs() > REATTEST_CLOCK_SKEW_SECS {
            return Err(invalid(format!(
                "signedAt is {}s from this control plane's clock (at most {REATTEST_CLOCK_SKEW_SECS}s)",
                now - request.signed_at
            )));
        }
        // Issued by this CA, for a workload, under a root still in the bundle: as a handshake
        // would have checked it, at the last moment it was valid.
        let at = palisade_contract::tls::unix_time(summary.not_after);
        let id = self
            .ca
            .bundle()
            .load()
            .verify_workload(
                leaf,
                intermediates,
                at,
                palisade_contract::tls::KeyUsage::client_auth(),
            )
            .map_err(|e| invalid(format!("the certificate does not verify: {e}")))?;
        self.check_not_reserved(&id)?;
        let signature = base64::engine::general_purpose::STANDARD
            .decode(&request.signature)
            .map_err(|e| invalid(format!("signature is not base64: {e}")))?;
        palisade_contract::tls::verify_signed_by(
            leaf,
            &reattest_message(request.signed_at, &request.csr),
            &signature,
        )
        .map_err(invalid)?;
        let key = parse_csr(&request.csr).map_err(IssueError::Csr)?;
        let cert = self.ca.issue(&id, &key)?;
        if self
            .store
            .consume_expired_certificate(&summary.serial, id.as_str(), now, &cert.serial)
            .await?
            != Consumed::Fresh
        {
            return Err(IssueError::ReattestReused);
        }
        Ok((cert, "reattestation"))
    }

    /// The decision's record in the control plane's chain, stored before the answer goes
    /// out: an answer whose record could not be stored is not given (500).
    async fn decided(
        &self,
        method: &str,
        caller: Option<&SpiffeId>,
        result: Result<&IssuedCertificate, &IssueError>,
        peer: &str,
    ) -> Result<(), IssueError> {
        let Some(decisions) = &self.decisions else {
            return Ok(());
        };
        let mut r =
            palisade_contract::decisions::record::Record::begin("control-plane", "identity");
        r.source = caller.map(ToString::to_string);
        r.destination_service = "palisade-control-plane".into();
        r.destination = self.reserved.to_string();
        r.method = method.to_owned();
        match result {
            Ok(cert) => {
                r.decision = "allow".into();
                r.path = cert.spiffe_id.to_string();
                r.status = 200;
                r.reason = Some(format!(
                    "certificate {} until {}",
                    cert.serial, cert.not_after
                ));
            }
            Err(e) => {
                r.decision = if matches!(e, IssueError::Internal(_)) {
                    "error"
                } else {
                    "deny"
                }
                .into();
                r.status = e.status().as_u16();
                r.reason = Some(format!("{}: {e} (from {peer})", e.label()));
            }
        }
        decisions.record(&r).await.map_err(|e| {
            tracing::error!(error = %e, "recording an issuance decision failed");
            IssueError::Internal(format!("recording the decision: {e}"))
        })
    }

    fn check_not_reserved(&self, id: &SpiffeId) -> Result<(), IssueError> {
        if *id == self.reserved {
            return Err(IssueError::Reserved(id.clone()));
        }
        Ok(())
    }

    fn record(
        &self,
        result: Result<(&IssuedCertificate, &'static str), &IssueError>,
        peer: &str,
        started: Instant,
    ) {
        self.metrics
            .issue_duration
            .observe(started.elapsed().as_secs_f64());
        match result {
            Ok((cert, method)) => {
                self.metrics.issued.with_label_values(&[method]).inc();
                tracing::info!(
                    target: "palisade::identity",
                    event = if method == "renewal" { "certificate.renewed" } else { "certificate.issued" },
                    spiffe_id = %cert.spiffe_id,
                    serial = %cert.serial,
                    not_after = cert.not_after,
                    method,
                    peer,
                    "certificate signed"
                );
            }
            Err(e) => {
                self.metrics.refused.with_label_values(&[e.label()]).inc();
                let detail = match e {
                    IssueError::Internal(d) => d.clone(),
                    other => other.to_string(),
                };
                tracing::warn!(
                    target: "palisade::identity",
                    event = "certificate.refused",
                    reason = e.label(),
                    detail,
                    peer,
                    "certificate request refused"
                );
            }
        }
    }
}
