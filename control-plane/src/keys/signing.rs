//! The one way the control plane signs with its own keys: [`PrivateKey`], ECDSA P-256 over
//! SHA-256, whether the key is held in this process's memory (read from a plain file or
//! opened from an envelope) or in a PKCS#11 token that never lets it out.
//!
//! The CA signs certificates through it (it implements rcgen's [`SigningKey`]) and the token
//! key signs JWTs through it, so neither knows where its key lives. A key in memory is a
//! `p256` signing key, whose secret scalar is zeroed when it is dropped.

use p256::ecdsa::signature::Signer as _;
use p256::pkcs8::{DecodePrivateKey as _, EncodePrivateKey as _, EncodePublicKey as _, LineEnding};
use rcgen::{PublicKeyData, SignatureAlgorithm, SigningKey};
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use super::KeyError;

/// A key held outside this process (a PKCS#11 token) that signs on request: ECDSA P-256 over
/// SHA-256 of the message, returned as `r || s`.
pub trait ExternalKey: Send + Sync {
    fn sign(&self, message: &[u8]) -> Result<[u8; 64], KeyError>;
}

/// A P-256 private key the control plane signs with, wherever it is kept.
pub struct PrivateKey {
    inner: Inner,
    /// The public key as an uncompressed SEC1 point (65 bytes).
    public: Vec<u8>,
}

enum Inner {
    Memory(p256::ecdsa::SigningKey),
    External(Box<dyn ExternalKey>),
}

impl std::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrivateKey")
            .field("in_token", &self.in_token())
            .field("public", &hex::encode(&self.public))
            .finish_non_exhaustive()
    }
}

impl PrivateKey {
    /// A new random key, in memory.
    pub fn generate() -> Self {
        let rng = SystemRandom::new();
        loop {
            let mut scalar = Zeroizing::new([0u8; 32]);
            rng.fill(scalar.as_mut())
                .expect("the system random source works");
            // Rejection sampling: all but ~2^-32 of 256-bit strings are valid scalars.
            if let Ok(key) = p256::ecdsa::SigningKey::from_slice(scalar.as_ref()) {
                return Self::in_memory(key);
            }
        }
    }

    fn in_memory(key: p256::ecdsa::SigningKey) -> Self {
        let public = key
            .verifying_key()
            .to_encoded_point(false)
            .as_bytes()
            .to_vec();
        Self {
            inner: Inner::Memory(key),
            public,
        }
    }

    /// A key held outside, in a token, whose public key is `public` (uncompressed SEC1).
    pub(super) fn external(key: Box<dyn ExternalKey>, public: Vec<u8>) -> Self {
        Self {
            inner: Inner::External(key),
            public,
        }
    }

    /// From a PKCS#8 PEM (what `file` keys and envelopes hold).
    pub fn from_pkcs8_pem(pem: &str) -> Result<Self, String> {
        let key = p256::ecdsa::SigningKey::from_pkcs8_pem(pem)
            .map_err(|e| format!("not a PKCS#8 PEM ECDSA P-256 private key: {e}"))?;
        Ok(Self::in_memory(key))
    }

    /// The PKCS#8 PEM of a key in memory; `None` for a key in a token, which cannot leave it.
    pub fn to_pkcs8_pem(&self) -> Option<Zeroizing<String>> {
        match &self.inner {
            Inner::Memory(key) => Some(
                key.to_pkcs8_pem(LineEnding::LF)
                    .expect("a P-256 key encodes as PKCS#8"),
            ),
            Inner::External(_) => None,
        }
    }

    /// The secret scalar of a key in memory (to import it into a token).
    pub(super) fn secret_scalar(&self) -> Option<Zeroizing<Vec<u8>>> {
        match &self.inner {
            Inner::Memory(key) => Some(Zeroizing::new(key.to_bytes().to_vec())),
            Inner::External(_) => None,
        }
    }

    /// Whether the key is in a token (and signs there).
    pub fn in_token(&self) -> bool {
        matches!(self.inner, Inner::External(_))
    }

    /// The public key, uncompressed SEC1 (`04 || x || y`).
    pub fn public_key_raw(&self) -> &[u8] {
        &self.public
    }

    /// The public key as a SubjectPublicKeyInfo PEM.
    pub fn public_key_pem(&self) -> String {
        p256::PublicKey::from_sec1_bytes(&self.public)
            .expect("the public key is a valid P-256 point")
            .to_public_key_pem(LineEnding::LF)
            .expect("a P-256 public key encodes")
    }

    /// ECDSA P-256 over SHA-256 of `message`: `r || s`, 32 bytes each (the JWS form).
    pub fn sign_fixed(&self, message: &[u8]) -> Result<[u8; 64], KeyError> {
        match &self.inner {
            Inner::Memory(key) => {
                let signature: p256::ecdsa::Signature = key.sign(message);
                Ok(signature.to_bytes().into())
            }
            Inner::External(key) => key.sign(message),
        }
    }
}

impl PublicKeyData for PrivateKey {
    fn der_bytes(&self) -> &[u8] {
        &self.public
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

impl SigningKey for PrivateKey {
    /// The DER `ECDSA-Sig-Value` X.509 wants.
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        let fixed = self.sign_fixed(message).map_err(|e| {
            tracing::error!(error = %e, "signing with the CA key failed");
            rcgen::Error::RemoteKeyError
        })?;
        let signature =
            p256::ecdsa::Signature::from_slice(&fixed).map_err(|_| rcgen::Error::RemoteKeyError)?;
        Ok(signature.to_der().as_bytes().to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::{ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA256_FIXED, UnparsedPublicKey};

    #[test]
    fn a_key_signs_what_its_public_key_verifies_and_round_trips_as_pkcs8() {
        let key = PrivateKey::generate();
        let signature = key.sign_fixed(b"message").unwrap();
        let public = UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, key.public_key_raw());
        public.verify(b"message", &signature).unwrap();
        assert!(public.verify(b"other", &signature).is_err());
        let pem = key.to_pkcs8_pem().unwrap();
        let again = PrivateKey::from_pkcs8_pem(&pem).unwrap();
        assert_eq!(again.public_key_raw(), key.public_key_raw());
        assert!(PrivateKey::from_pkcs8_pem("-----BEGIN PRIVATE KEY-----\n").is_err());
    }

    #[test]
    fn keys_rcgen_made_still_load() {
        // Every key written before this module existed was made by rcgen (ring's PKCS#8).
        let old = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let key = PrivateKey::from_pkcs8_pem(&old.serialize_pem()).unwrap();
        assert_eq!(key.public_key_raw(), old.public_key_raw());
    }

    #[test]
    fn certificates_it_signs_verify() {
        let key = PrivateKey::generate();
        let mut params = rcgen::CertificateParams::new(vec!["example.test".into()]).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        let der = cert.der();
        let (_, parsed) = x509_parser::parse_x509_certificate(der).unwrap();
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, key.public_key_raw())
            .verify(
                parsed.tbs_certificate.as_ref(),
                &parsed.signature_value.data,
            )
            .unwrap();
        assert_eq!(
            parsed.public_key().subject_public_key.data.as_ref(),
            key.public_key_raw()
        );
    }
}
