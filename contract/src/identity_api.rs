//! The identity protocol between a sidecar and the control plane (its sidecar-facing port,
//! 15012 by default, always over TLS).
//!
//! - `POST /v1/identity/issue` with `Authorization: Bearer <bootstrap JWT>`: first
//!   certificate. The JWT is a single-use join token or a Kubernetes projected ServiceAccount
//!   token; the SPIFFE ID comes from the verified token only.
//! - `POST /v1/identity/renew` over mTLS with the current, still-valid certificate: a fresh
//!   certificate for the same SPIFFE ID, no token needed (as SPIRE does).
//! - `POST /v1/identity/reattest`: a sidecar whose certificate expired while the control
//!   plane was away, and which still holds that certificate's key, proves so with a
//!   [`ReattestRequest`]: the expired chain and a fresh CSR, signed with the old key. The
//!   control plane accepts it within its `--reattest-grace` after the expiry, once per
//!   certificate, and only while the chain still leads to a root of its bundle.
//! - `GET /v1/trust-bundle`: the roots sidecars must trust (PEM).
//!
//! Bodies are JSON; every error is an [`ErrorBody`].

use serde::{Deserialize, Serialize};

use crate::spiffe::{SpiffeId, TrustDomain};

pub const ISSUE_PATH: &str = "/v1/identity/issue";
pub const RENEW_PATH: &str = "/v1/identity/renew";
pub const TRUST_BUNDLE_PATH: &str = "/v1/trust-bundle";
pub const REATTEST_PATH: &str = "/v1/identity/reattest";

/// How far a re-attestation's `signedAt` may be from the control plane's clock.
pub const REATTEST_CLOCK_SKEW_SECS: i64 = 300;

/// Default port of the control plane's sidecar-facing listener.
pub const DEFAULT_SIDECAR_PORT: u16 = 15012;

/// The namespace and service account of the control plane's own identity. No workload may
/// be issued this identity.
pub const CONTROL_PLANE_NAMESPACE: &str = "palisade-system";
pub const CONTROL_PLANE_SERVICE_ACCOUNT: &str = "control-plane";

/// The SPIFFE ID the control plane presents, which sidecars require.
pub fn control_plane_id(td: &TrustDomain) -> SpiffeId {
    td.workload_id(CONTROL_PLANE_NAMESPACE, CONTROL_PLANE_SERVICE_ACCOUNT)
        .expect("the control plane's namespace and service account are valid names")
}

/// Largest request body the control plane reads on these endpoints.
pub const MAX_REQUEST_BYTES: usize = 16 * 1024;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CertificateRequest {
    /// A PKCS#10 certificate signing request in PEM, signed by the sidecar's own key.
    pub csr: String,
}

/// A re-attestation: "I held this certificate's key when it expired, and I still do".
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReattestRequest {
    /// PEM: the expired certificate, leaf first, then any intermediates.
    pub certificate_chain: String,
    /// A PKCS#10 CSR (PEM) for the new key.
    pub csr: String,
    /// When the sidecar signed (seconds since the Unix epoch).
    pub signed_at: i64,
    /// Base64 (standard, padded) of the expired certificate's key's signature over
    /// [`reattest_message`]: ECDSA P-256 with SHA-256, ASN.1 DER.
    pub signature: String,
}

/// What a re-attestation signs: a fixed label, the time, and the SHA-256 of the CSR, so a
/// signature cannot be moved onto another request or another new key.
pub fn reattest_message(signed_at: i64, csr_pem: &str) -> Vec<u8> {
    let csr = ring::digest::digest(&ring::digest::SHA256, csr_pem.as_bytes());
    format!(
        "palisade-reattest-v1\n{signed_at}\n{}",
        hex::encode(csr.as_ref())
    )
    .into_bytes()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CertificateResponse {
    pub spiffe_id: SpiffeId,
    /// PEM: the leaf first, then any intermediates up to (not including) a root.
    pub certificate_chain: String,
    /// PEM: every root the sidecar must trust from now on.
    pub trust_bundle: String,
    /// Seconds since the Unix epoch.
    pub not_after: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorBody {
    pub error: String,
    /// Always present (an empty list when there is nothing more to say), as the admin API's
    /// OpenAPI document requires.
    #[serde(default)]
    pub details: Vec<String>,
}
