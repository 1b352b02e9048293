//! Mutual TLS by SPIFFE ID: trust bundles, peer verification and live certificate swaps.
//!
//! Palisade authenticates peers by the SPIFFE ID in their certificate, never by DNS name, so
//! the stock rustls verifiers do not fit: the server verifier always checks a DNS/IP name,
//! and neither refuses an expired root or a CA certificate used as a leaf. The verifiers
//! here do the chain check with rustls-webpki, then the SPIFFE rules from [`crate::certs`].
//!
//! Both the trust bundle and the workload's own certificate sit behind `ArcSwap`s that every
//! handshake reads, so a renewal or a bundle update takes effect on the next handshake while
//! established connections keep the keys they negotiated. A workload whose certificate has
//! expired presents nothing, so handshakes fail: Palisade fails closed, never to plaintext.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::{ArcSwap, ArcSwapOption};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, TrustAnchor, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, ServerConfig,
    SignatureScheme,
};
use webpki::EndEntityCert;
pub use webpki::KeyUsage;

use crate::certs::{self, CertError, CertSummary};
use crate::spiffe::{SpiffeId, TrustDomain};

/// The one crypto provider Palisade uses (see STACK.md: never let two get compiled in).
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A root certificate of a trust bundle, with the validity webpki does not check for us.
#[derive(Debug, Clone)]
struct Root {
    der: CertificateDer<'static>,
    summary: CertSummary,
}

impl Root {
    fn valid_at(&self, secs: i64) -> bool {
        self.summary.not_before <= secs && secs <= self.summary.not_after
    }
}

/// Why a trust bundle was refused.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error(transparent)]
    Cert(#[from] CertError),
    #[error("bundle certificate {index} ({subject}) is not a CA certificate")]
    NotCa { index: usize, subject: String },
    #[error("bundle certificate {index} cannot be used as a trust anchor: {error}")]
    BadAnchor { index: usize, error: String },
}

/// The root certificates a workload trusts for one trust domain. It may hold several roots at
/// once, which is how roots are rotated: add the new root, reissue, drop the old one.
#[derive(Debug, Clone)]
pub struct TrustBundle {
    trust_domain: TrustDomain,
    roots: Vec<Root>,
    /// The roots as webpki trust anchors, parsed once (same order as `roots`).
    anchors: Vec<TrustAnchor<'static>>,
}

impl TrustBundle {
    pub fn from_pem(trust_domain: TrustDomain, pem: &[u8]) -> Result<Self, BundleError> {
        Self::from_ders(trust_domain, certs::certs_from_pem(pem)?)
    }

    pub fn from_ders(
        trust_domain: TrustDomain,
        ders: Vec<CertificateDer<'static>>,
    ) -> Result<Self, BundleError> {
        let mut roots = Vec::with_capacity(ders.len());
        let mut anchors = Vec::with_capacity(ders.len());
        for (index, der) in ders.into_iter().enumerate() {
            let summary = certs::summarize(&der)?;
            if !summary.is_ca {
                return Err(BundleError::NotCa {
                    index,
                    subject: summary.subject,
                });
            }
            let anchor = webpki::anchor_from_trusted_cert(&der)
                .map_err(|e| BundleError::BadAnchor {
                    index,
                    error: e.to_string(),
                })?
                .to_owned();
            if !roots.iter().any(|r: &Root| r.der == der) {
                roots.push(Root { der, summary });
                anchors.push(anchor);
            }
        }
        if roots.is_empty() {
            return Err(CertError::NoCertificate.into());
        }
        Ok(Self {
            trust_domain,
            roots,
            anchors,
        })
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    pub fn roots(&self) -> impl Iterator<Item = &CertificateDer<'static>> {
        self.roots.iter().map(|r| &r.der)
    }

    pub fn root_summaries(&self) -> impl Iterator<Item = &CertSummary> {
        self.roots.iter().map(|r| &r.summary)
    }

    pub fn len(&self) -> usize {
        self.roots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.roots.is_empty()
    }

    pub fn to_pem(&self) -> String {
        certs::certs_to_pem(self.roots())
    }

    /// The [`root_id`] of each root, in bundle order: what a sidecar acknowledges it
    /// trusts, and what `palisade ca status` and `palisade check` compare.
    pub fn root_ids(&self) -> Vec<String> {
        self.roots().map(|r| root_id(r)).collect()
    }

    /// Verifies a peer's chain for `usage` at `now` and returns its SPIFFE ID. The chain must
    /// end at a root of this bundle that is itself in date; the leaf must not be a CA, must
    /// carry exactly one SPIFFE ID, and that ID must be in this bundle's trust domain.
    pub fn verify_workload(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        usage: KeyUsage,
    ) -> Result<SpiffeId, rustls::Error> {
        // Usually every root is in date and the parsed anchors are used as they are; only
        // when some are not is a filtered list built.
        let secs = now.as_secs() as i64;
        let filtered: Vec<TrustAnchor<'static>>;
        let anchors: &[TrustAnchor<'static>] = if self.roots.iter().all(|r| r.valid_at(secs)) {
            &self.anchors
        } else {
            filtered = self
                .roots
                .iter()
                .zip(&self.anchors)
                .filter(|(r, _)| r.valid_at(secs))
                .map(|(_, a)| a.clone())
                .collect();
            &filtered
        };
        if anchors.is_empty() {
            return Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                rustls::OtherError(Arc::new(VerifyError::NoValidRoot)),
            )));
        }
        let cert = EndEntityCert::try_from(end_entity)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        cert.verify_for_usage(
            SUPPORTED_ALGS.all,
            anchors,
            intermediates,
            now,
            usage,
            None,
            None,
        )
        .map_err(webpki_error)?;
        let id = certs::workload_spiffe_id(end_entity).map_err(|e| other(VerifyError::Cert(e)))?;
        if id.trust_domain_str() != self.trust_domain.as_str() {
            return Err(other(VerifyError::ForeignTrustDomain {
                got: id.to_string(),
                want: self.trust_domain.to_string(),
            }));
        }
        Ok(id)
    }
}

/// Verifies that the key certified by `leaf` signed `message` (ECDSA P-256 SHA-256, the only
/// kind of key Palisade certifies).
pub fn verify_signed_by(
    leaf: &CertificateDer<'_>,
    message: &[u8],
    signature: &[u8],
) -> Result<(), String> {
    let cert = EndEntityCert::try_from(leaf).map_err(|e| format!("unreadable certificate: {e}"))?;
    cert.verify_signature(webpki::ring::ECDSA_P256_SHA256, message, signature)
        .map_err(|e| format!("the signature does not verify with the certificate's key: {e}"))
}

/// The verification time at `unix_secs` (a certificate checked as of a moment other than
/// now: when it expired, when a record was signed).
pub fn unix_time(unix_secs: i64) -> UnixTime {
    UnixTime::since_unix_epoch(std::time::Duration::from_secs(unix_secs.max(0) as u64))
}

/// Whether `text` is a [`root_id`]: 16 lower- or upper-case hex digits.
pub fn is_root_id(text: &str) -> bool {
    text.len() == 16 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A short name for a root certificate: the first 16 hex digits of the SHA-256 of its DER
/// (enough to tell a mesh's roots apart; it names, it does not authenticate).
pub fn root_id(der: &CertificateDer<'_>) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, der.as_ref());
    hex::encode(&digest.as_ref()[..8])
}

/// A bundle that can be replaced while connections are being verified against it.
pub type SharedBundle = Arc<ArcSwap<TrustBundle>>;

pub fn shared_bundle(bundle: TrustBundle) -> SharedBundle {
    Arc::new(ArcSwap::from_pointee(bundle))
}

/// Verification failures beyond what rustls names itself.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("no root of the trust bundle is currently valid")]
    NoValidRoot,
    #[error(transparent)]
    Cert(CertError),
    #[error("peer {got} is not in trust domain {want}")]
    ForeignTrustDomain { got: String, want: String },
    #[error("peer presented {got}, expected {want}")]
    UnexpectedPeer { got: String, want: String },
}

fn other(e: VerifyError) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(e))))
}

fn webpki_error(e: webpki::Error) -> rustls::Error {
    use webpki::Error as W;
    let ce = match e {
        W::BadDer | W::BadDerTime => CertificateError::BadEncoding,
        W::CertExpired { .. } => CertificateError::Expired,
        W::CertNotValidYet { .. } => CertificateError::NotValidYet,
        W::UnknownIssuer => CertificateError::UnknownIssuer,
        W::InvalidSignatureForPublicKey => CertificateError::BadSignature,
        W::CaUsedAsEndEntity => CertificateError::Other(rustls::OtherError(Arc::new(
            VerifyError::Cert(CertError::LeafIsCa),
        ))),
        other => CertificateError::Other(rustls::OtherError(Arc::new(WebpkiError(other)))),
    };
    rustls::Error::InvalidCertificate(ce)
}

#[derive(Debug)]
struct WebpkiError(webpki::Error);
impl std::fmt::Display for WebpkiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}
impl std::error::Error for WebpkiError {}

static SUPPORTED_ALGS: WebPkiSupportedAlgorithms = WebPkiSupportedAlgorithms {
    all: &[
        webpki::ring::ECDSA_P256_SHA256,
        webpki::ring::ECDSA_P384_SHA384,
        webpki::ring::ED25519,
        webpki::ring::RSA_PKCS1_2048_8192_SHA256,
        webpki::ring::RSA_PSS_2048_8192_SHA256_LEGACY_KEY,
    ],
    mapping: &[
        (
            SignatureScheme::ECDSA_NISTP256_SHA256,
            &[webpki::ring::ECDSA_P256_SHA256],
        ),
        (
            SignatureScheme::ECDSA_NISTP384_SHA384,
            &[webpki::ring::ECDSA_P384_SHA384],
        ),
        (SignatureScheme::ED25519, &[webpki::ring::ED25519]),
        (
            SignatureScheme::RSA_PSS_SHA256,
            &[webpki::ring::RSA_PSS_2048_8192_SHA256_LEGACY_KEY],
        ),
        (
            SignatureScheme::RSA_PKCS1_SHA256,
            &[webpki::ring::RSA_PKCS1_2048_8192_SHA256],
        ),
    ],
};

/// Which server identity a client accepts.
#[derive(Debug, Clone)]
pub enum ExpectedServer {
    /// Exactly this SPIFFE ID (secure naming).
    Exact(SpiffeId),
    /// Any workload of the bundle's trust domain (used only where the caller checks the
    /// identity itself afterwards).
    AnyInTrustDomain,
}

/// Client side: verifies the server's chain against the bundle and its SPIFFE ID against
/// what the client expects. The TLS server name is ignored; SPIFFE IDs are the names.
#[derive(Debug)]
pub struct SpiffeServerVerifier {
    bundle: SharedBundle,
    expected: ExpectedServer,
}

impl SpiffeServerVerifier {
    pub fn new(bundle: SharedBundle, expected: ExpectedServer) -> Self {
        Self { bundle, expected }
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let id = self.bundle.load().verify_workload(
            end_entity,
            intermediates,
            now,
            KeyUsage::server_auth(),
        )?;
        if let ExpectedServer::Exact(want) = &self.expected
            && &id != want
        {
            return Err(other(VerifyError::UnexpectedPeer {
                got: id.to_string(),
                want: want.to_string(),
            }));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &SUPPORTED_ALGS)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &SUPPORTED_ALGS)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        SUPPORTED_ALGS.supported_schemes()
    }
}

/// Whether a server demands a client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// mTLS: no certificate, no connection (the sidecar's inbound port).
    Required,
    /// A certificate is verified when offered; connections without one are allowed and the
    /// application decides (the control plane, where bootstrap comes before any certificate).
    Optional,
}

/// Server side: verifies a client's chain against the bundle and that it names exactly one
/// SPIFFE ID of the trust domain.
#[derive(Debug)]
pub struct SpiffeClientVerifier {
    bundle: SharedBundle,
    auth: ClientAuth,
}

impl SpiffeClientVerifier {
    pub fn new(bundle: SharedBundle, auth: ClientAuth) -> Self {
        Self { bundle, auth }
    }
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.auth == ClientAuth::Required
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.bundle.load().verify_workload(
            end_entity,
            intermediates,
            now,
            KeyUsage::client_auth(),
        )?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &SUPPORTED_ALGS)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &SUPPORTED_ALGS)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        SUPPORTED_ALGS.supported_schemes()
    }
}

/// The SPIFFE ID of a peer whose chain the handshake already verified.
pub fn peer_spiffe_id(peer_certs: Option<&[CertificateDer<'static>]>) -> Option<SpiffeId> {
    certs::workload_spiffe_id(peer_certs?.first()?).ok()
}

/// A workload's own certificate chain and key, as presented in handshakes.
#[derive(Debug)]
pub struct WorkloadIdentity {
    pub spiffe_id: SpiffeId,
    pub chain: Vec<CertificateDer<'static>>,
    pub certified_key: Arc<CertifiedKey>,
    /// Seconds since the Unix epoch.
    pub not_before: i64,
    /// Seconds since the Unix epoch.
    pub not_after: i64,
    pub serial: String,
}

/// Why a certificate and key could not become a workload identity.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error(transparent)]
    Cert(#[from] CertError),
    #[error("private key is not a usable PKCS#8 key: {0}")]
    BadKey(String),
    #[error("private key does not match the certificate")]
    KeyMismatch,
}

impl WorkloadIdentity {
    /// Builds an identity from a PEM chain (leaf first) and a PKCS#8 PEM private key.
    pub fn from_pem(chain_pem: &[u8], key_pem: &[u8]) -> Result<Self, IdentityError> {
        let chain = certs::certs_from_pem(chain_pem)?;
        let key = PrivateKeyDer::from_pem_slice(key_pem)
            .map_err(|e| IdentityError::BadKey(e.to_string()))?;
        Self::from_der(chain, key)
    }

    pub fn from_der(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self, IdentityError> {
        let leaf = chain.first().ok_or(CertError::NoCertificate)?;
        let spiffe_id = certs::workload_spiffe_id(leaf)?;
        let summary = certs::summarize(leaf)?;
        let provider = crypto_provider();
        let certified_key =
            CertifiedKey::from_der(chain.clone(), key, &provider).map_err(|e| match e {
                rustls::Error::InconsistentKeys(_) => IdentityError::KeyMismatch,
                other => IdentityError::BadKey(other.to_string()),
            })?;
        Ok(Self {
            spiffe_id,
            chain,
            certified_key: Arc::new(certified_key),
            not_before: summary.not_before,
            not_after: summary.not_after,
            serial: summary.serial,
        })
    }

    pub fn is_valid_at(&self, unix_secs: i64) -> bool {
        self.not_before <= unix_secs && unix_secs < self.not_after
    }

    pub fn chain_pem(&self) -> String {
        certs::certs_to_pem(&self.chain)
    }
}

/// The slot holding a workload's current identity. Handshakes read it; renewal swaps it.
/// It resolves to nothing once the certificate has expired, so TLS fails closed.
#[derive(Debug, Default)]
pub struct IdentitySlot {
    current: ArcSwapOption<WorkloadIdentity>,
}

impl IdentitySlot {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn set(&self, identity: WorkloadIdentity) {
        self.current.store(Some(Arc::new(identity)));
    }

    /// The identity, whether or not it is still valid.
    pub fn get(&self) -> Option<Arc<WorkloadIdentity>> {
        self.current.load_full()
    }

    /// The identity only while it is valid now.
    pub fn valid(&self) -> Option<Arc<WorkloadIdentity>> {
        self.current
            .load_full()
            .filter(|id| id.is_valid_at(now_unix()))
    }

    fn valid_key(&self) -> Option<Arc<CertifiedKey>> {
        self.valid().map(|id| id.certified_key.clone())
    }
}

impl rustls::server::ResolvesServerCert for IdentitySlot {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.valid_key()
    }
}

impl rustls::client::ResolvesClientCert for IdentitySlot {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.valid_key()
    }

    fn has_certs(&self) -> bool {
        self.valid().is_some()
    }
}

/// A TLS server config presenting `identity` and verifying clients against `bundle`.
///
/// Session resumption is off: a resumed session carries the peer certificate of the original
/// handshake, which may since have expired, been renewed, or lost its root in a rotation.
/// Every connection verifies the peer's current certificate against the current bundle.
pub fn server_config(
    identity: Arc<IdentitySlot>,
    bundle: SharedBundle,
    auth: ClientAuth,
    alpn: &[&[u8]],
) -> ServerConfig {
    let mut config = ServerConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .with_client_cert_verifier(Arc::new(SpiffeClientVerifier::new(bundle, auth)))
        .with_cert_resolver(identity);
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config
}

/// A TLS client config that accepts only `expected` and presents `identity` when it has one.
/// Session resumption is off, for the reason given at [`server_config`].
pub fn client_config(
    identity: Option<Arc<IdentitySlot>>,
    bundle: SharedBundle,
    expected: ExpectedServer,
    alpn: &[&[u8]],
) -> ClientConfig {
    let builder = ClientConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SpiffeServerVerifier::new(bundle, expected)));
    let mut config = match identity {
        Some(slot) => builder.with_client_cert_resolver(slot),
        None => builder.with_no_client_auth(),
    };
    config.resumption = rustls::client::Resumption::disabled();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config
}

/// A placeholder server name for SNI: Palisade verifies SPIFFE IDs, not names.
pub fn server_name_for(id: &SpiffeId) -> ServerName<'static> {
    let host = id
        .namespace_and_service_account()
        .map(|(ns, sa)| format!("{sa}.{ns}.{}", id.trust_domain_str()))
        .unwrap_or_else(|| id.trust_domain_str().to_owned());
    ServerName::try_from(host).unwrap_or_else(|_| ServerName::try_from("palisade.invalid").unwrap())
}
