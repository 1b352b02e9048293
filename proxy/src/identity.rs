//! The sidecar's identity lifecycle: obtain a certificate, keep it fresh, fail closed.
//!
//! - At start-up, a cached certificate (when `--identity-dir` holds one that is still valid
//!   and chains to the bundle) is used at once; otherwise the sidecar generates a P-256 key,
//!   sends a CSR with its bootstrap token, and waits for the answer. The key never leaves
//!   the process (or its private cache directory).
//! - Renewal happens at 45-55 % of the remaining lifetime (jitter spreads a fleet's renewals
//!   out), over mTLS with the current certificate and a fresh key; no token is needed.
//! - Failures are retried with exponential backoff (with jitter) up to a cap. While the
//!   certificate is valid, mesh traffic goes on; once it expires the identity slot resolves
//!   to nothing, so every handshake fails and `/ready` says not ready. If a token file is
//!   configured (a Kubernetes projected token is refreshed by the kubelet), an expired
//!   sidecar bootstraps again with it.
//! - Each new certificate is swapped into the [`IdentitySlot`] that live TLS configurations
//!   read, so new connections use the new certificate; a connection opened with the old
//!   one drains before that one expires ([`crate::trust`]).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use palisade_contract::certs;
use palisade_contract::envelope;
use palisade_contract::identity_api::{
    CertificateResponse, ReattestRequest, control_plane_id, reattest_message,
};
use palisade_contract::private_files::{ensure_private_dir, write_atomic};
use palisade_contract::process::Stopping;
use palisade_contract::tls::{
    IdentitySlot, KeyUsage, SharedBundle, TrustBundle, WorkloadIdentity, shared_bundle,
};
use palisade_contract::{SpiffeId, TrustDomain};
use prometheus::{IntCounterVec, IntGauge, Opts, Registry};
use rcgen::{CertificateParams, DistinguishedName, KeyPair};
use ring::rand::{SecureRandom, SystemRandom};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

use tokio::sync::watch;
use zeroize::Zeroizing;

use crate::control_plane_client::{ControlPlaneClient, ControlPlaneError};
use crate::trust::{ConnectionTrust, Side};

const CACHE_CERT: &str = "cert.pem";
const CACHE_KEY: &str = "key.pem";
const CACHE_BUNDLE: &str = "bundle.pem";
/// Purpose bound into the cached key's envelope.
const CACHE_KEY_PURPOSE: &str = "workload";

#[derive(Debug, Clone)]
pub struct IdentitySettings {
    /// `host:port` of the control plane's sidecar-facing listener.
    pub control_plane: String,
    pub trust_domain: TrustDomain,
    /// The bootstrap token, read afresh at each bootstrap.
    pub token_file: Option<PathBuf>,
    /// Where the key, certificate and bundle are cached (mode 0600 files).
    pub cache_dir: Option<PathBuf>,
    /// When set, the cached key is kept as an envelope sealed with this KEK, and a cached
    /// key that is not is ignored (`--identity-key-encryption-key-file`).
    pub cache_kek: Option<Arc<palisade_contract::envelope::Kek>>,
    /// First retry delay after a failure; doubles up to `max_backoff`.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// Longest wait for the TCP connection to the control plane.
    pub connect_timeout: Duration,
    /// How long a mesh connection whose trust is lost may still finish what is in flight
    /// (`--connection-drain`; see [`crate::trust`]).
    pub connection_drain: Duration,
}

/// First retry delay after a failed certificate request (never above `--max-backoff`).
pub const INITIAL_BACKOFF: Duration = Duration::from_millis(200);

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error(transparent)]
    ControlPlane(#[from] ControlPlaneError),
    #[error("no valid certificate and no --token-file to bootstrap with")]
    NoCredentials,
    #[error("reading the token file {path}: {source}")]
    TokenFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the control plane's answer was not acceptable: {0}")]
    BadCertificate(String),
    #[error("generating a key or CSR failed: {0}")]
    KeyGeneration(String),
    #[error("re-attestation with the expired certificate was refused ({reattest}); {bootstrap}")]
    Recovery {
        reattest: String,
        bootstrap: Box<IdentityError>,
    },
}

#[derive(Debug, Clone)]
struct IdentityMetrics {
    expiry: IntGauge,
    renewals: IntCounterVec,
    bundle_roots: IntGauge,
}

impl IdentityMetrics {
    fn register(registry: &Registry) -> prometheus::Result<Self> {
        let expiry = IntGauge::new(
            "palisade_identity_certificate_expiry_timestamp_seconds",
            "When the sidecar's current certificate expires (Unix time).",
        )?;
        let renewals = IntCounterVec::new(
            Opts::new(
                "palisade_identity_certificate_requests_total",
                "Certificate requests to the control plane, by kind and result.",
            ),
            &["kind", "result"],
        )?;
        let bundle_roots = IntGauge::new(
            "palisade_identity_trust_bundle_roots",
            "Root certificates in the sidecar's trust bundle.",
        )?;
        registry.register(Box::new(expiry.clone()))?;
        registry.register(Box::new(renewals.clone()))?;
        registry.register(Box::new(bundle_roots.clone()))?;
        Ok(Self {
            expiry,
            renewals,
            bundle_roots,
        })
    }
}

#[derive(Debug)]
pub struct IdentityManager {
    settings: IdentitySettings,
    slot: Arc<IdentitySlot>,
    bundle: SharedBundle,
    client: ControlPlaneClient,
    metrics: IdentityMetrics,
    /// When the current certificate should be renewed.
    renew_at: Mutex<Option<SystemTime>>,
    /// Bumped whenever a root leaves the bundle: open connections re-verify their peer.
    roots_removed: watch::Sender<u64>,
    /// What the last failed attempt to obtain a certificate needs from an operator, for
    /// `/ready` and the log; cleared by a success.
    last_failure: Mutex<Option<String>>,
}

impl IdentityManager {
    pub fn new(
        settings: IdentitySettings,
        initial_bundle: TrustBundle,
        registry: &Registry,
    ) -> prometheus::Result<Arc<Self>> {
        let slot = IdentitySlot::new();
        let bundle = shared_bundle(initial_bundle);
        let client = ControlPlaneClient::new(
            settings.control_plane.clone(),
            control_plane_id(&settings.trust_domain),
            bundle.clone(),
            slot.clone(),
            settings.connect_timeout,
        );
        let metrics = IdentityMetrics::register(registry)?;
        metrics.bundle_roots.set(bundle.load().len() as i64);
        let manager = Arc::new(Self {
            settings,
            slot,
            bundle,
            client,
            metrics,
            renew_at: Mutex::new(None),
            roots_removed: watch::Sender::new(0),
            last_failure: Mutex::new(None),
        });
        manager.load_cache();
        Ok(manager)
    }

    /// The slot TLS configurations read the workload's certificate from.
    pub fn slot(&self) -> Arc<IdentitySlot> {
        self.slot.clone()
    }

    /// The trust bundle, updated with every certificate the control plane sends.
    pub fn bundle(&self) -> SharedBundle {
        self.bundle.clone()
    }

    /// The client for the control plane, which presents the current certificate.
    pub fn control_plane(&self) -> &ControlPlaneClient {
        &self.client
    }

    /// Takes a trust bundle pushed with the mesh configuration (root rotation reaches the
    /// sidecar before its next renewal). Refused when the current certificate would not
    /// verify against it: a sidecar must never lock itself out of its own mTLS.
    pub fn update_bundle(&self, pem: &str) -> Result<bool, IdentityError> {
        let bad = |e: &dyn std::fmt::Display| IdentityError::BadCertificate(e.to_string());
        let bundle = TrustBundle::from_pem(self.settings.trust_domain.clone(), pem.as_bytes())
            .map_err(|e| bad(&e))?;
        if bundle.to_pem() == self.bundle.load().to_pem() {
            return Ok(false);
        }
        if let Some(identity) = self.slot.get() {
            verify_against(&bundle, &identity).map_err(|e| bad(&e))?;
        }
        self.metrics.bundle_roots.set(bundle.len() as i64);
        tracing::info!(target: "palisade::identity", event = "bundle.updated",
            roots = bundle.len(), "trust bundle updated from the mesh configuration");
        self.store_bundle(bundle);
        Ok(true)
    }

    /// Replaces the bundle; when that removes a root, every open mesh connection checks
    /// that its peer still chains to one that is left.
    fn store_bundle(&self, bundle: TrustBundle) {
        let removed = {
            let old = self.bundle.load();
            old.roots().any(|r| !bundle.roots().any(|n| n == r))
        };
        self.bundle.store(Arc::new(bundle));
        if removed {
            self.roots_removed.send_modify(|n| *n += 1);
        }
    }

    /// The trust of a mesh connection just opened as `side`, whose handshake used `own`
    /// (read before it) and at which the peer presented `peer_chain`.
    pub fn connection_trust(
        &self,
        own: Option<&WorkloadIdentity>,
        peer_chain: &[rustls_pki_types::CertificateDer<'static>],
        side: Side,
    ) -> ConnectionTrust {
        ConnectionTrust::new(
            own,
            peer_chain,
            side,
            self.bundle.clone(),
            self.roots_removed.subscribe(),
            self.settings.connection_drain,
        )
    }

    /// Why the sidecar is not ready, in words an operator can act on: whether the
    /// certificate expired or never came, and what the last attempt needs.
    pub fn not_ready_reason(&self) -> String {
        let state = match self.slot.get() {
            Some(id) => format!(
                "certificate expired at {}",
                palisade_contract::rfc3339_at(id.not_after)
                    .unwrap_or_else(|| id.not_after.to_string())
            ),
            None => "no certificate yet".to_owned(),
        };
        match &*self.last_failure.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(failure) => format!("{state}; {failure}"),
            None => state,
        }
    }

    /// Ready means: a certificate that is valid right now.
    pub fn is_ready(&self) -> bool {
        self.slot.valid().is_some()
    }

    pub fn spiffe_id(&self) -> Option<SpiffeId> {
        self.slot.get().map(|id| id.spiffe_id.clone())
    }

    /// Obtains and renews certificates until `stopping` resolves.
    pub async fn run(self: Arc<Self>, mut stopping: Stopping) {
        let mut backoff = self.settings.initial_backoff;
        loop {
            let wait = self.time_until_refresh();
            if !wait.is_zero() {
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = &mut stopping => return,
                }
            }
            match self.refresh().await {
                Ok(()) => {
                    backoff = self.settings.initial_backoff;
                    *self.last_failure.lock().unwrap_or_else(|p| p.into_inner()) = None;
                }
                Err(e) => {
                    let delay = jittered(backoff, 0.8, 1.2);
                    let valid = self.is_ready();
                    let needed = what_is_needed(&e, valid);
                    tracing::warn!(error = %e, retry_in = ?delay, valid, needed = needed.as_deref().unwrap_or("nothing: retrying"),
                        "could not obtain a certificate");
                    *self.last_failure.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some(needed.unwrap_or_else(|| e.to_string()));
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = &mut stopping => return,
                    }
                    backoff = (backoff * 2).min(self.settings.max_backoff);
                }
            }
        }
    }

    fn time_until_refresh(&self) -> Duration {
        if self.slot.valid().is_none() {
            return Duration::ZERO;
        }
        let renew_at = *self.renew_at.lock().unwrap_or_else(|p| p.into_inner());
        renew_at
            .and_then(|t| t.duration_since(SystemTime::now()).ok())
            .unwrap_or(Duration::ZERO)
    }

    /// One attempt: renew over mTLS while the certificate is valid, else bootstrap.
    pub async fn refresh(&self) -> Result<(), IdentityError> {
        let (key, csr) = new_key_and_csr()?;
        match self.slot.valid() {
            Some(current) => {
                let result = self.client.renew(csr).await;
                self.count("renew", result.is_ok());
                self.install(result?, key, Some(&current.spiffe_id))
            }
            None => {
                // Expired while the control plane was away: first try to prove we still
                // hold the key (no token spent), then bootstrap with the token.
                let reattest = match self.slot.get() {
                    Some(expired) => match self.reattest(&expired, &csr).await {
                        Ok(response) => {
                            return self.install(response, key, Some(&expired.spiffe_id));
                        }
                        Err(e) => Some(e.to_string()),
                    },
                    None => None,
                };
                let bootstrap = self.bootstrap(csr, key).await;
                match (bootstrap, reattest) {
                    (Err(bootstrap), Some(reattest)) => Err(IdentityError::Recovery {
                        reattest,
                        bootstrap: Box::new(bootstrap),
                    }),
                    (result, _) => result,
                }
            }
        }
    }

    /// A first certificate for the bootstrap token in `--token-file`.
    async fn bootstrap(&self, csr: String, key: KeyPair) -> Result<(), IdentityError> {
        let path = self
            .settings
            .token_file
            .as_ref()
            .ok_or(IdentityError::NoCredentials)?;
        let token = std::fs::read_to_string(path).map_err(|source| IdentityError::TokenFile {
            path: path.clone(),
            source,
        })?;
        let result = self.client.issue(token.trim(), csr).await;
        self.count("bootstrap", result.is_ok());
        self.install(result?, key, None)
    }

    /// Asks for a certificate for `expired`'s identity, proving with its key that we still
    /// hold it ([`palisade_contract::identity_api::ReattestRequest`]).
    async fn reattest(
        &self,
        expired: &WorkloadIdentity,
        csr: &str,
    ) -> Result<CertificateResponse, IdentityError> {
        use base64::Engine as _;
        let signed_at = unix_now();
        let message = reattest_message(signed_at, csr);
        let signature = expired
            .certified_key
            .key
            .choose_scheme(&[rustls::SignatureScheme::ECDSA_NISTP256_SHA256])
            .ok_or_else(|| IdentityError::KeyGeneration("the expired key cannot sign".into()))?
            .sign(&message)
            .map_err(|e| IdentityError::KeyGeneration(e.to_string()))?;
        let request = ReattestRequest {
            certificate_chain: expired.chain_pem(),
            csr: csr.to_owned(),
            signed_at,
            signature: base64::engine::general_purpose::STANDARD.encode(signature),
        };
        let result = self.client.reattest(&request).await;
        self.count("reattest", result.is_ok());
        Ok(result?)
    }

    fn count(&self, kind: &str, ok: bool) {
        self.metrics
            .renewals
            .with_label_values(&[kind, if ok { "success" } else { "failure" }])
            .inc();
    }

    /// Checks the control plane's answer, then swaps in the new bundle and certificate.
    fn install(
        &self,
        response: CertificateResponse,
        key: KeyPair,
        expected: Option<&SpiffeId>,
    ) -> Result<(), IdentityError> {
        let bad = |e: &dyn std::fmt::Display| IdentityError::BadCertificate(e.to_string());
        let bundle = TrustBundle::from_pem(
            self.settings.trust_domain.clone(),
            response.trust_bundle.as_bytes(),
        )
        .map_err(|e| bad(&e))?;
        let chain =
            certs::certs_from_pem(response.certificate_chain.as_bytes()).map_err(|e| bad(&e))?;
        let key_pem = key.serialize_pem();
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let identity = WorkloadIdentity::from_der(chain, key_der).map_err(|e| bad(&e))?;
        // The new certificate must be usable against the new bundle before it replaces
        // anything, and a renewal must keep the identity.
        verify_against(&bundle, &identity).map_err(|e| bad(&e))?;
        if let Some(want) = expected
            && &identity.spiffe_id != want
        {
            return Err(bad(&format!(
                "renewal returned {}, expected {want}",
                identity.spiffe_id
            )));
        }
        self.write_cache(&identity, &key_pem, &bundle);
        self.activate(identity, bundle);
        Ok(())
    }

    fn activate(&self, identity: WorkloadIdentity, bundle: TrustBundle) {
        let now = unix_now();
        let remaining = (identity.not_after - identity.not_before.max(now)).max(0) as f64;
        let renew_in = Duration::from_secs_f64(remaining * jittered_fraction(0.45, 0.55));
        *self.renew_at.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(SystemTime::now() + renew_in);
        self.metrics.expiry.set(identity.not_after);
        self.metrics.bundle_roots.set(bundle.len() as i64);
        tracing::info!(target: "palisade::identity", event = "certificate.installed",
            spiffe_id = %identity.spiffe_id, serial = %identity.serial,
            not_after = identity.not_after, renew_in = ?renew_in, roots = bundle.len(),
            "certificate installed");
        self.store_bundle(bundle);
        self.slot.set(identity);
    }

    fn write_cache(&self, identity: &WorkloadIdentity, key_pem: &str, bundle: &TrustBundle) {
        let Some(dir) = &self.settings.cache_dir else {
            return;
        };
        let key = match &self.settings.cache_kek {
            Some(kek) => match envelope::envelope(key_pem, CACHE_KEY_PURPOSE, kek.as_ref()) {
                Ok(sealed) => Zeroizing::new(sealed),
                Err(e) => {
                    tracing::warn!(error = %e, "could not seal the key; not caching it");
                    return;
                }
            },
            None => Zeroizing::new(key_pem.to_owned()),
        };
        let result = ensure_private_dir(dir)
            .and_then(|()| write_atomic(&dir.join(CACHE_KEY), key.as_bytes(), true))
            .and_then(|()| {
                write_atomic(&dir.join(CACHE_CERT), identity.chain_pem().as_bytes(), true)
            })
            .and_then(|()| write_atomic(&dir.join(CACHE_BUNDLE), bundle.to_pem().as_bytes(), true));
        if let Err(e) = result {
            tracing::warn!(dir = %dir.display(), error = %e, "could not cache the certificate");
        }
    }

    /// Starts from a cached certificate when it is still valid and chains to the bundle.
    fn load_cache(&self) {
        let Some(dir) = &self.settings.cache_dir else {
            return;
        };
        let read = |name: &str| std::fs::read(dir.join(name));
        let (Ok(chain), Ok(key), Ok(bundle_pem)) =
            (read(CACHE_CERT), read(CACHE_KEY), read(CACHE_BUNDLE))
        else {
            return;
        };
        let loaded = (|| -> Result<(WorkloadIdentity, TrustBundle, bool), String> {
            let bundle = TrustBundle::from_pem(self.settings.trust_domain.clone(), &bundle_pem)
                .map_err(|e| e.to_string())?;
            let key = self.cached_key(&dir.join(CACHE_KEY), &key)?;
            let identity =
                WorkloadIdentity::from_pem(&chain, key.as_bytes()).map_err(|e| e.to_string())?;
            if identity.not_after < unix_now() {
                // Expired: kept (not used for mTLS) only to re-attest with, if it was good
                // when it expired.
                verify_at(&bundle, &identity, identity.not_after).map_err(|e| e.to_string())?;
                return Ok((identity, bundle, false));
            }
            verify_against(&bundle, &identity).map_err(|e| e.to_string())?;
            Ok((identity, bundle, true))
        })();
        match loaded {
            Ok((identity, bundle, true)) => {
                tracing::info!(dir = %dir.display(), "starting from the cached certificate");
                self.activate(identity, bundle);
            }
            Ok((identity, bundle, false)) => {
                tracing::warn!(dir = %dir.display(), not_after = identity.not_after,
                    "the cached certificate expired; re-attesting with its key");
                self.store_bundle(bundle);
                self.slot.set(identity);
            }
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "ignoring the cached certificate")
            }
        }
    }

    /// The cached key's PEM: opened from its envelope with the KEK when one is set, and
    /// only then (a plain key where a sealed one is expected could have been put there by
    /// whoever can write the directory); a sealed key without a KEK is refused too.
    fn cached_key(&self, path: &Path, bytes: &[u8]) -> Result<Zeroizing<String>, String> {
        match (&self.settings.cache_kek, envelope::looks_sealed(bytes)) {
            (Some(kek), true) => {
                envelope::open_envelope(bytes, path, CACHE_KEY_PURPOSE, kek.as_ref())
                    .map_err(|e| e.to_string())
            }
            (Some(_), false) => Err(format!(
                "{}: the cached key is not sealed, but --identity-key-encryption-key-file is set",
                path.display()
            )),
            (None, true) => Err(format!(
                "{}: the cached key is sealed: give --identity-key-encryption-key-file",
                path.display()
            )),
            (None, false) => Ok(Zeroizing::new(String::from_utf8_lossy(bytes).into_owned())),
        }
    }
}

/// What a failed attempt needs from an operator, when a retry alone cannot fix it: a
/// bootstrap refused for its token (a join token is single-use: once redeemed, a sidecar
/// whose certificate expired cannot bootstrap with it again), or no token at all.
fn what_is_needed(e: &IdentityError, valid: bool) -> Option<String> {
    if valid {
        return None;
    }
    match e {
        IdentityError::Recovery {
            reattest,
            bootstrap,
        } => what_is_needed(bootstrap, valid)
            .map(|needed| format!("re-attestation was refused ({reattest}); {needed}")),
        IdentityError::NoCredentials => {
            Some("no --token-file to bootstrap with: give the sidecar a bootstrap token".into())
        }
        IdentityError::TokenFile { path, source } => Some(format!(
            "the bootstrap token file {} cannot be read ({source}): give the sidecar a new token",
            path.display()
        )),
        IdentityError::ControlPlane(ControlPlaneError::Refused { status, body })
            if *status == http::StatusCode::UNAUTHORIZED =>
        {
            Some(format!(
                "the control plane refused the bootstrap token ({}): give the sidecar a new token (palisade token create) in its --token-file",
                body.error
            ))
        }
        _ => None,
    }
}

/// Whether peers trusting `bundle` would accept `identity` now.
fn verify_against(bundle: &TrustBundle, identity: &WorkloadIdentity) -> Result<(), rustls::Error> {
    verify_at(bundle, identity, unix_now())
}

/// Whether peers trusting `bundle` would have accepted `identity` at `unix_secs`.
fn verify_at(
    bundle: &TrustBundle,
    identity: &WorkloadIdentity,
    unix_secs: i64,
) -> Result<(), rustls::Error> {
    bundle
        .verify_workload(
            &identity.chain[0],
            &identity.chain[1..],
            palisade_contract::tls::unix_time(unix_secs),
            KeyUsage::client_auth(),
        )
        .map(|_| ())
}

/// A fresh P-256 key and a CSR signed by it. The CSR names nothing: the control plane
/// decides the identity from the token or the current certificate.
fn new_key_and_csr() -> Result<(KeyPair, String), IdentityError> {
    let fail = |e: rcgen::Error| IdentityError::KeyGeneration(e.to_string());
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(fail)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    let csr = params.serialize_request(&key).map_err(fail)?;
    let pem = csr.pem().map_err(fail)?;
    Ok((key, pem))
}

use palisade_contract::unix_now;

/// A uniformly random fraction in `[low, high)`.
fn jittered_fraction(low: f64, high: f64) -> f64 {
    let mut b = [0u8; 4];
    let r = if SystemRandom::new().fill(&mut b).is_ok() {
        f64::from(u32::from_le_bytes(b)) / (f64::from(u32::MAX) + 1.0)
    } else {
        0.5
    };
    low + (high - low) * r
}

fn jittered(d: Duration, low: f64, high: f64) -> Duration {
    d.mul_f64(jittered_fraction(low, high))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_in_range() {
        for _ in 0..1000 {
            let f = jittered_fraction(0.45, 0.55);
            assert!((0.45..0.55).contains(&f), "{f}");
        }
    }

    #[test]
    fn csr_is_signed_by_a_fresh_p256_key() {
        let (key1, csr1) = new_key_and_csr().unwrap();
        let (key2, _) = new_key_and_csr().unwrap();
        assert_ne!(key1.public_key_raw(), key2.public_key_raw());
        let parsed = rcgen::CertificateSigningRequestParams::from_pem(&csr1).unwrap();
        assert_eq!(
            parsed.public_key.algorithm(),
            &rcgen::PKCS_ECDSA_P256_SHA256
        );
        assert!(parsed.params.subject_alt_names.is_empty());
    }
}
