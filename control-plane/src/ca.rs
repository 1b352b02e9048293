//! The mesh's certificate authority: signing workload certificates and keeping the trust
//! bundle.
//!
//! Two ways to hold the CA:
//! - **Managed** (default): on first start the control plane creates an ECDSA P-256 root in
//!   `<data-dir>/ca/` (key mode 0600) and reuses it afterwards. Roots are rotated in three
//!   operator-driven phases, each separated by at least one workload TTL so every sidecar
//!   has renewed in between (see the README):
//!   `prepare` creates the next root and adds it to the bundle; `activate` signs with it;
//!   `finish` drops the old root from the bundle.
//! - **Plugged in** (as Istio's plugged-in CA): the operator supplies the signing
//!   certificate and key, the root(s) for the bundle, and any intermediate chain. The signing
//!   certificate may be an intermediate; its chain is sent with every leaf.
//!
//! Whatever a CSR asks for, the leaf is built here from scratch: exactly one URI SAN (the
//! SPIFFE ID the caller proved), CA:false, digitalSignature, serverAuth + clientAuth, a
//! random serial, and a validity of at most the workload TTL, backdated by [`BACKDATE`].

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use palisade_contract::certs::{self, CertSummary};
use palisade_contract::private_files;
use palisade_contract::tls::{SharedBundle, TrustBundle, shared_bundle};
use palisade_contract::{SpiffeId, TrustDomain};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData,
    SanType, SerialNumber,
};
use ring::rand::{SecureRandom, SystemRandom};
use rustls_pki_types::{CertificateDer, UnixTime};
use serde::Serialize;

use crate::keys::{KeyStorage, PrivateKey, load_key};
use time::OffsetDateTime;

/// How far a leaf's `notBefore` is set in the past, for clocks that run slightly behind.
pub const BACKDATE: Duration = Duration::from_secs(60);
/// Lifetime of a root the control plane creates itself.
pub const ROOT_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    BadMaterial { path: PathBuf, reason: String },
    #[error(
        "CA self-check failed: a probe certificate signed by the CA does not verify against the trust bundle: {0}"
    )]
    SelfCheck(String),
    #[error("signing failed: {0}")]
    Signing(String),
    #[error("{0}")]
    Rotation(String),
    #[error(transparent)]
    Key(#[from] crate::keys::KeyError),
}

/// Why a CSR was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsrError {
    #[error("CSR is not a PEM-encoded PKCS#10 request we can read")]
    Unreadable,
    #[error("CSR signature does not verify")]
    BadSignature,
    #[error("CSR key must be ECDSA P-256")]
    UnsupportedKey,
}

/// The public key of a CSR whose signature has been verified. Nothing else of the CSR is
/// kept: the certificate's contents are decided by the CA.
#[derive(Debug)]
pub struct CsrPublicKey(rcgen::PublicKey);

pub fn parse_csr(pem: &str) -> Result<CsrPublicKey, CsrError> {
    let csr = CertificateSigningRequestParams::from_pem(pem).map_err(|e| match e {
        rcgen::Error::InvalidCertificationRequestSignature => CsrError::BadSignature,
        _ => CsrError::Unreadable,
    })?;
    if csr.public_key.algorithm() != &rcgen::PKCS_ECDSA_P256_SHA256 {
        return Err(CsrError::UnsupportedKey);
    }
    Ok(CsrPublicKey(csr.public_key))
}

/// Operator-supplied CA material (all PEM files).
#[derive(Debug, Clone)]
pub struct PluggedInCa {
    /// The signing certificate (a root or an intermediate).
    pub cert: PathBuf,
    /// Its private key (PKCS#8 PEM).
    pub key: PathBuf,
    /// The root certificate(s) sidecars must trust; several during a rotation.
    pub roots: PathBuf,
    /// Intermediates between the signing certificate and the root, if any.
    pub chain: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct CaConfig {
    pub trust_domain: TrustDomain,
    pub data_dir: PathBuf,
    pub plugged_in: Option<PluggedInCa>,
    pub workload_ttl: Duration,
    /// How the signing key is kept at rest (`crate::keys`).
    pub key_storage: KeyStorage,
}

/// The key and certificate that sign leaves, and what is sent along with every leaf.
struct Signer {
    issuer: Issuer<'static, PrivateKey>,
    cert: CertificateDer<'static>,
    /// Certificates that follow the leaf in the served chain (intermediates, never a root).
    chain_tail: Vec<CertificateDer<'static>>,
    not_after: i64,
}

/// A freshly signed workload certificate.
#[derive(Debug, Clone)]
pub struct IssuedCertificate {
    pub spiffe_id: SpiffeId,
    /// Leaf first, then intermediates.
    pub chain: Vec<CertificateDer<'static>>,
    pub not_after: i64,
    pub serial: String,
}

impl IssuedCertificate {
    pub fn chain_pem(&self) -> String {
        certs::certs_to_pem(&self.chain)
    }
}

/// Where a managed CA is in a root rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum RotationPhase {
    /// One root, signing.
    Stable,
    /// A next root is in the bundle but not yet signing.
    Prepared,
    /// The next root signs; the previous root is still trusted for leaves not yet renewed.
    Activated,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RootInfo {
    /// [`palisade_contract::tls::root_id`]: how sidecars name it when they acknowledge it.
    pub id: String,
    pub subject: String,
    pub serial: String,
    pub not_before: i64,
    pub not_after: i64,
    /// Whether leaves are currently signed under this root.
    pub signing: bool,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CaStatus {
    pub trust_domain: String,
    pub mode: &'static str,
    pub rotation_phase: Option<RotationPhase>,
    pub workload_ttl_seconds: u64,
    pub roots: Vec<RootInfo>,
    /// How the signing key is kept at rest (`--ca-key-source`).
    pub key_protection: &'static str,
}

enum Mode {
    Managed { dir: PathBuf },
    PluggedIn,
}

pub struct CertificateAuthority {
    trust_domain: TrustDomain,
    data_dir: PathBuf,
    mode: Mode,
    signer: ArcSwap<Signer>,
    bundle: SharedBundle,
    workload_ttl: Duration,
    key_storage: KeyStorage,
    /// Serializes rotation steps, which read and write several files.
    rotation: std::sync::Mutex<()>,
    /// Bumped when another root starts signing, so certificates the control plane holds for
    /// itself are re-issued at once (a watch never loses a change, unlike a bare notify).
    signer_generation: tokio::sync::watch::Sender<u64>,
    /// Bumped when the bundle changes (a rotation step), so the mesh configuration that
    /// carries it is pushed to every sidecar at once, not with their next renewals.
    bundle_generation: tokio::sync::watch::Sender<u64>,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("trust_domain", &self.trust_domain)
            .field("roots", &self.bundle.load().len())
            .finish_non_exhaustive()
    }
}

// File names of a managed CA, under `<data-dir>/ca/`.
const ACTIVE_CERT: &str = "ca-cert.pem";
const ACTIVE_KEY: &str = "ca-key.pem";
const NEXT_CERT: &str = "next-cert.pem";
const NEXT_KEY: &str = "next-key.pem";
const PREVIOUS_CERT: &str = "previous-cert.pem";
/// Written to the data dir for operators and local sidecars; never read back.
pub const TRUST_BUNDLE_FILE: &str = "trust-bundle.pem";

impl CertificateAuthority {
    /// Loads the CA, creating a managed root on first start, then checks it by signing and
    /// verifying a probe certificate.
    pub fn load_or_create(config: &CaConfig) -> Result<Self, CaError> {
        ensure_private_dir(&config.data_dir)?;
        let (mode, signer, bundle) = match &config.plugged_in {
            Some(plugged) => {
                let (signer, bundle) =
                    load_plugged_in(&config.trust_domain, plugged, &config.key_storage)?;
                (Mode::PluggedIn, signer, bundle)
            }
            None => {
                let dir = config.data_dir.join("ca");
                ensure_private_dir(&dir)?;
                if !dir.join(ACTIVE_CERT).exists() {
                    let key = config
                        .key_storage
                        .create(&dir.join(ACTIVE_KEY), CA_KEY_PURPOSE)?;
                    let cert = new_root(&config.trust_domain, &key)?;
                    write_file(
                        &dir.join(ACTIVE_CERT),
                        certs::certs_to_pem([&cert]).as_bytes(),
                        false,
                    )?;
                    tracing::info!(dir = %dir.display(), "created a new root CA");
                }
                let signer = load_signer(
                    &dir.join(ACTIVE_CERT),
                    &dir.join(ACTIVE_KEY),
                    Vec::new(),
                    &config.key_storage,
                )?;
                let bundle = managed_bundle(&config.trust_domain, &dir)?;
                (Mode::Managed { dir }, signer, bundle)
            }
        };
        let ca = Self {
            trust_domain: config.trust_domain.clone(),
            data_dir: config.data_dir.clone(),
            mode,
            signer: ArcSwap::from_pointee(signer),
            bundle: shared_bundle(bundle),
            workload_ttl: config.workload_ttl,
            key_storage: config.key_storage.clone(),
            rotation: std::sync::Mutex::new(()),
            signer_generation: tokio::sync::watch::Sender::new(0),
            bundle_generation: tokio::sync::watch::Sender::new(0),
        };
        ca.self_check()?;
        ca.write_bundle_file()?;
        Ok(ca)
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    pub fn bundle(&self) -> SharedBundle {
        self.bundle.clone()
    }

    pub fn bundle_pem(&self) -> String {
        self.bundle.load().to_pem()
    }

    pub fn workload_ttl(&self) -> Duration {
        self.workload_ttl
    }

    /// A receiver that sees a change each time another root starts signing.
    pub fn watch_signer(&self) -> tokio::sync::watch::Receiver<u64> {
        self.signer_generation.subscribe()
    }

    /// Signs a workload certificate for `spiffe_id` over `public_key`, valid for the
    /// workload TTL (clamped to the signing certificate's own expiry).
    pub fn issue(
        &self,
        spiffe_id: &SpiffeId,
        public_key: &CsrPublicKey,
    ) -> Result<IssuedCertificate, CaError> {
        self.sign_leaf(spiffe_id, &[], &public_key.0, self.workload_ttl)
    }

    /// Signs a certificate for a key held by the control plane itself (its own identity),
    /// with `dns_names` besides the SPIFFE ID (the names the Kubernetes API server calls
    /// the admission webhook by).
    pub fn issue_for_key(
        &self,
        spiffe_id: &SpiffeId,
        dns_names: &[String],
        key: &KeyPair,
        ttl: Duration,
    ) -> Result<IssuedCertificate, CaError> {
        self.sign_leaf(spiffe_id, dns_names, key, ttl)
    }

    fn sign_leaf(
        &self,
        spiffe_id: &SpiffeId,
        dns_names: &[String],
        public_key: &impl PublicKeyData,
        ttl: Duration,
    ) -> Result<IssuedCertificate, CaError> {
        let signer = self.signer.load();
        let now = OffsetDateTime::now_utc();
        let mut not_after = now + ttl;
        let signer_not_after = OffsetDateTime::from_unix_timestamp(signer.not_after)
            .map_err(|e| CaError::Signing(e.to_string()))?;
        if not_after > signer_not_after {
            not_after = signer_not_after;
        }
        let mut params = CertificateParams::default();
        params.not_before = now - BACKDATE;
        params.not_after = not_after;
        params.serial_number = Some(random_serial()?);
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "palisade");
        let signing = |e: rcgen::Error| CaError::Signing(e.to_string());
        params.subject_alt_names = vec![SanType::URI(
            spiffe_id.as_str().try_into().map_err(signing)?,
        )];
        for name in dns_names {
            params
                .subject_alt_names
                .push(SanType::DnsName(name.as_str().try_into().map_err(signing)?));
        }
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let leaf = params
            .signed_by(public_key, &signer.issuer)
            .map_err(|e| CaError::Signing(e.to_string()))?;
        let leaf_der = leaf.der().clone();
        let serial = certs::summarize(&leaf_der)
            .map(|s| s.serial)
            .unwrap_or_default();
        let mut chain = Vec::with_capacity(1 + signer.chain_tail.len());
        chain.push(leaf_der);
        chain.extend(signer.chain_tail.iter().cloned());
        Ok(IssuedCertificate {
            spiffe_id: spiffe_id.clone(),
            chain,
            not_after: not_after.unix_timestamp(),
            serial,
        })
    }

    /// Signs a probe leaf and verifies it the way a sidecar would, so a key that does not
    /// match its certificate, or a signer that does not chain to the bundle, stops start-up.
    fn self_check(&self) -> Result<(), CaError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| CaError::Signing(e.to_string()))?;
        let probe_id = self
            .trust_domain
            .workload_id("palisade-system", "ca-self-check")
            .map_err(|e| CaError::Signing(e.to_string()))?;
        let probe = self.sign_leaf(&probe_id, &[], &key, Duration::from_secs(300))?;
        self.bundle
            .load()
            .verify_workload(
                &probe.chain[0],
                &probe.chain[1..],
                UnixTime::now(),
                palisade_contract::tls::KeyUsage::client_auth(),
            )
            .map_err(|e| CaError::SelfCheck(e.to_string()))?;
        Ok(())
    }

    fn write_bundle_file(&self) -> Result<(), CaError> {
        write_file(
            &self.data_dir.join(TRUST_BUNDLE_FILE),
            self.bundle_pem().as_bytes(),
            false,
        )
    }

    pub fn status(&self) -> CaStatus {
        let signer = self.signer.load();
        let signing_root = self.signing_root_der(&signer);
        let bundle = self.bundle.load();
        let roots = bundle
            .roots()
            .zip(bundle.root_summaries())
            .map(|(der, s)| RootInfo {
                id: palisade_contract::tls::root_id(der),
                subject: s.subject.clone(),
                serial: s.serial.clone(),
                not_before: s.not_before,
                not_after: s.not_after,
                signing: Some(der) == signing_root.as_ref(),
            })
            .collect();
        CaStatus {
            trust_domain: self.trust_domain.to_string(),
            mode: match self.mode {
                Mode::Managed { .. } => "managed",
                Mode::PluggedIn => "plugged-in",
            },
            rotation_phase: match &self.mode {
                Mode::Managed { dir } => Some(rotation_phase(dir)),
                Mode::PluggedIn => None,
            },
            workload_ttl_seconds: self.workload_ttl.as_secs(),
            roots,
            key_protection: self.key_storage.source().protection(),
        }
    }

    /// The bundle root at the top of the signer's chain (the signer itself when it is a root).
    fn signing_root_der(&self, signer: &Signer) -> Option<CertificateDer<'static>> {
        let top = signer.chain_tail.last().unwrap_or(&signer.cert);
        let bundle = self.bundle.load();
        if bundle.roots().any(|r| r == top) {
            return Some(top.clone());
        }
        // The top of the chain is an intermediate: its issuer is the root.
        let top_issuer = x509_issuer(top)?;
        bundle
            .roots()
            .find(|r| x509_subject(r).as_deref() == Some(top_issuer.as_str()))
            .cloned()
    }

    /// Rotation, phase 1: create the next root and add it to the trust bundle.
    pub fn rotation_prepare(&self) -> Result<CaStatus, CaError> {
        let dir = self.managed_dir()?;
        let _guard = self.rotation.lock().unwrap_or_else(|p| p.into_inner());
        match rotation_phase(dir) {
            RotationPhase::Stable => {}
            RotationPhase::Prepared => {
                return Err(CaError::Rotation(
                    "a next root is already prepared; activate it".into(),
                ));
            }
            RotationPhase::Activated => {
                return Err(CaError::Rotation(
                    "the previous rotation is not finished; finish it first".into(),
                ));
            }
        }
        let key = self
            .key_storage
            .create(&dir.join(NEXT_KEY), CA_KEY_PURPOSE)?;
        let cert = new_root(&self.trust_domain, &key)?;
        write_file(
            &dir.join(NEXT_CERT),
            certs::certs_to_pem([&cert]).as_bytes(),
            false,
        )?;
        self.reload_bundle(dir)?;
        tracing::info!(
            event = "ca.rotation.prepared",
            "next root added to the trust bundle"
        );
        Ok(self.status())
    }

    /// Rotation, phase 2: sign with the next root. The old root stays in the bundle.
    pub fn rotation_activate(&self) -> Result<CaStatus, CaError> {
        let dir = self.managed_dir()?;
        let _guard = self.rotation.lock().unwrap_or_else(|p| p.into_inner());
        if rotation_phase(dir) != RotationPhase::Prepared {
            return Err(CaError::Rotation(
                "no next root is prepared; run prepare first".into(),
            ));
        }
        let next = load_signer(
            &dir.join(NEXT_CERT),
            &dir.join(NEXT_KEY),
            Vec::new(),
            &self.key_storage,
        )?;
        rename(&dir.join(ACTIVE_CERT), &dir.join(PREVIOUS_CERT))?;
        rename(&dir.join(NEXT_CERT), &dir.join(ACTIVE_CERT))?;
        rename(&dir.join(NEXT_KEY), &dir.join(ACTIVE_KEY))?;
        self.signer.store(Arc::new(next));
        self.reload_bundle(dir)?;
        self.self_check()?;
        self.signer_generation.send_modify(|g| *g += 1);
        tracing::info!(event = "ca.rotation.activated", "signing with the new root");
        Ok(self.status())
    }

    /// Rotation, phase 3: drop the previous root from the bundle. Leaves still signed under
    /// it stop being accepted, so run this only after every workload has renewed.
    pub fn rotation_finish(&self) -> Result<CaStatus, CaError> {
        let dir = self.managed_dir()?;
        let _guard = self.rotation.lock().unwrap_or_else(|p| p.into_inner());
        if rotation_phase(dir) != RotationPhase::Activated {
            return Err(CaError::Rotation(
                "no previous root to drop; the rotation is not activated".into(),
            ));
        }
        fs::remove_file(dir.join(PREVIOUS_CERT)).map_err(|source| CaError::Io {
            path: dir.join(PREVIOUS_CERT),
            source,
        })?;
        self.reload_bundle(dir)?;
        tracing::info!(
            event = "ca.rotation.finished",
            "previous root dropped from the trust bundle"
        );
        Ok(self.status())
    }

    fn managed_dir(&self) -> Result<&Path, CaError> {
        match &self.mode {
            Mode::Managed { dir } => Ok(dir),
            Mode::PluggedIn => Err(CaError::Rotation(
                "this control plane uses a plugged-in CA: rotate by editing the root file \
                 (add the new root, switch the signing certificate and key, then drop the old \
                 root) and restarting"
                    .into(),
            )),
        }
    }

    fn reload_bundle(&self, dir: &Path) -> Result<(), CaError> {
        self.bundle
            .store(Arc::new(managed_bundle(&self.trust_domain, dir)?));
        self.bundle_generation.send_modify(|g| *g += 1);
        self.write_bundle_file()
    }

    /// Changes whenever the trust bundle does.
    pub fn bundle_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.bundle_generation.subscribe()
    }
}

fn rotation_phase(dir: &Path) -> RotationPhase {
    if dir.join(NEXT_CERT).exists() {
        RotationPhase::Prepared
    } else if dir.join(PREVIOUS_CERT).exists() {
        RotationPhase::Activated
    } else {
        RotationPhase::Stable
    }
}

/// A managed CA's bundle: the active root, plus the next or previous root during a rotation.
fn managed_bundle(td: &TrustDomain, dir: &Path) -> Result<TrustBundle, CaError> {
    let mut ders = Vec::new();
    for name in [ACTIVE_CERT, NEXT_CERT, PREVIOUS_CERT] {
        let path = dir.join(name);
        if path.exists() {
            ders.extend(read_certs(&path)?);
        }
    }
    TrustBundle::from_ders(td.clone(), ders).map_err(|e| CaError::BadMaterial {
        path: dir.to_path_buf(),
        reason: e.to_string(),
    })
}

fn load_plugged_in(
    td: &TrustDomain,
    plugged: &PluggedInCa,
    storage: &KeyStorage,
) -> Result<(Signer, TrustBundle), CaError> {
    let roots = read_certs(&plugged.roots)?;
    let bundle =
        TrustBundle::from_ders(td.clone(), roots.clone()).map_err(|e| CaError::BadMaterial {
            path: plugged.roots.clone(),
            reason: e.to_string(),
        })?;
    let chain = match &plugged.chain {
        Some(path) => read_certs(path)?,
        None => Vec::new(),
    };
    let signing_cert = read_certs(&plugged.cert)?
        .into_iter()
        .next()
        .ok_or_else(|| CaError::BadMaterial {
            path: plugged.cert.clone(),
            reason: "no certificate".into(),
        })?;
    // After the leaf come the signing certificate (unless it is itself a root) and the
    // intermediates above it; roots are already in every bundle and are not sent.
    let tail = std::iter::once(signing_cert)
        .chain(chain)
        .filter(|c| !roots.contains(c))
        .fold(Vec::new(), |mut tail, c| {
            if !tail.contains(&c) {
                tail.push(c);
            }
            tail
        });
    let signer = load_signer(&plugged.cert, &plugged.key, tail, storage)?;
    Ok((signer, bundle))
}

/// Purpose bound into the CA key's envelope.
pub const CA_KEY_PURPOSE: &str = "ca";

fn load_signer(
    cert_path: &Path,
    key_path: &Path,
    chain_tail: Vec<CertificateDer<'static>>,
    storage: &KeyStorage,
) -> Result<Signer, CaError> {
    let cert = read_certs(cert_path)?
        .into_iter()
        .next()
        .ok_or_else(|| CaError::BadMaterial {
            path: cert_path.to_path_buf(),
            reason: "no certificate".into(),
        })?;
    let summary: CertSummary = certs::summarize(&cert).map_err(|e| CaError::BadMaterial {
        path: cert_path.to_path_buf(),
        reason: e.to_string(),
    })?;
    if !summary.is_ca {
        return Err(CaError::BadMaterial {
            path: cert_path.to_path_buf(),
            reason: "not a CA certificate (basicConstraints CA:true is required)".into(),
        });
    }
    let now = unix_now();
    if summary.not_after <= now {
        return Err(CaError::BadMaterial {
            path: cert_path.to_path_buf(),
            reason: "the CA certificate has expired".into(),
        });
    }
    warn_if_readable_by_others(key_path);
    let key = load_key(key_path, CA_KEY_PURPOSE, storage)?;
    let issuer = Issuer::from_ca_cert_der(&cert, key).map_err(|e| CaError::BadMaterial {
        path: cert_path.to_path_buf(),
        reason: e.to_string(),
    })?;
    Ok(Signer {
        issuer,
        cert,
        chain_tail,
        not_after: summary.not_after,
    })
}

/// A new root for `td` with a new key kept as `storage` says: the certificate (PEM) and
/// what to store in place of the key (what a CA kept outside the data dir, a Kubernetes
/// Secret, starts from).
pub fn new_root_stored(
    td: &TrustDomain,
    storage: &KeyStorage,
) -> Result<(String, zeroize::Zeroizing<String>), CaError> {
    let (key, contents) = storage.generate(CA_KEY_PURPOSE)?;
    let cert = new_root(td, &key)?;
    Ok((certs::certs_to_pem([&cert]), contents))
}

fn new_root(td: &TrustDomain, key: &PrivateKey) -> Result<CertificateDer<'static>, CaError> {
    let now = OffsetDateTime::now_utc();
    let mut params = CertificateParams::default();
    params.not_before = now - BACKDATE;
    params.not_after = now + ROOT_LIFETIME;
    let serial = random_serial()?;
    // Each root gets a distinct subject (from its random serial): during a rotation two roots
    // share the bundle, and chain building must never confuse them.
    let tag = hex::encode(&serial.to_bytes()[..6]);
    params.serial_number = Some(serial);
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::OrganizationName, "palisade");
    params
        .distinguished_name
        .push(DnType::CommonName, format!("Palisade root CA {td} {tag}"));
    // Path length 0: this root signs workload leaves only, never another CA.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params
        .self_signed(key)
        .map_err(|e| CaError::Signing(e.to_string()))?;
    Ok(cert.der().clone())
}

fn random_serial() -> Result<SerialNumber, CaError> {
    let mut bytes = [0u8; 16];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| CaError::Signing("no randomness for the serial number".into()))?;
    // Positive, and always 16 bytes long: 126 random bits.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

fn x509_subject(der: &CertificateDer<'_>) -> Option<String> {
    certs::summarize(der).ok().map(|s| s.subject)
}

fn x509_issuer(der: &CertificateDer<'_>) -> Option<String> {
    use x509_parser::prelude::FromDer;
    x509_parser::certificate::X509Certificate::from_der(der.as_ref())
        .ok()
        .map(|(_, c)| c.issuer().to_string())
}

pub(crate) use palisade_contract::unix_now;

fn read(path: &Path) -> Result<Vec<u8>, CaError> {
    fs::read(path).map_err(|source| CaError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, CaError> {
    certs::certs_from_pem(&read(path)?).map_err(|e| CaError::BadMaterial {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

fn rename(from: &Path, to: &Path) -> Result<(), CaError> {
    fs::rename(from, to).map_err(|source| CaError::Io {
        path: from.to_path_buf(),
        source,
    })
}

/// Creates a directory only its owner can read (mode 0700), if it does not exist.
pub fn ensure_private_dir(dir: &Path) -> Result<(), CaError> {
    private_files::ensure_private_dir(dir).map_err(|source| CaError::Io {
        path: dir.to_path_buf(),
        source,
    })
}

/// Writes a file atomically; `private` files get mode 0600.
pub fn write_file(path: &Path, contents: &[u8], private: bool) -> Result<(), CaError> {
    private_files::write_atomic(path, contents, private).map_err(|source| CaError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn warn_if_readable_by_others(path: &Path) {
    if private_files::readable_by_others(path) {
        tracing::warn!(path = %path.display(), "private key file is readable by other users; it should be mode 0600");
    }
}
