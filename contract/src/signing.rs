//! Signatures made with a workload's own certificate key, checkable by anyone holding the
//! trust bundle: a compact detached JWS (RFC 7515, appendix F), ES256, with the certificate
//! chain in `x5c` and the signing time in `iat`. The payload is not carried; the verifier
//! rebuilds it from what was signed (a message, a decision-log checkpoint) and the chain is
//! checked as it was valid at the signing time, so a signature outlives the short-lived
//! certificate that made it.
//!
//! Two things are signed this way: published AMQP messages (the sidecar's provenance header)
//! and decision-log checkpoints ([`crate::decisions`]). Each names its own `typ`, so a
//! signature made for one is never accepted as the other.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use rustls::SignatureScheme;
use rustls_pki_types::CertificateDer;
use serde::{Deserialize, Serialize};

use crate::SpiffeId;
use crate::tls::{KeyUsage, TrustBundle, WorkloadIdentity};

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    alg: String,
    typ: String,
    iat: i64,
    x5c: Vec<String>,
}

/// Why a signature was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the signature is malformed")]
    Malformed,
    #[error("the signing certificate is not trusted: {0}")]
    Untrusted(String),
    #[error("signed by {signer}, not by {expected}")]
    WrongSigner { signer: String, expected: String },
    #[error("the signature does not match what it claims to sign")]
    BadSignature,
}

/// Who signed, and when (the `iat` the signature carries, checked against the chain).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signer {
    pub spiffe_id: SpiffeId,
    pub signed_at: i64,
}

fn signing_input(header_b64: &str, payload: &[u8]) -> String {
    format!("{header_b64}.{}", URL_SAFE_NO_PAD.encode(payload))
}

/// Signs `payload` as `identity` at `iat` (Unix seconds) for the use `typ`; `None` if the
/// key cannot sign ES256.
pub fn sign(identity: &WorkloadIdentity, typ: &str, iat: i64, payload: &[u8]) -> Option<String> {
    let header = Header {
        alg: "ES256".into(),
        typ: typ.into(),
        iat,
        x5c: identity.chain.iter().map(|c| STANDARD.encode(c)).collect(),
    };
    let header_b64 = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).ok()?);
    let input = signing_input(&header_b64, payload);
    let signer = identity
        .certified_key
        .key
        .choose_scheme(&[SignatureScheme::ECDSA_NISTP256_SHA256])?;
    let der = signer.sign(input.as_bytes()).ok()?;
    let fixed = der_to_fixed(&der)?;
    Some(format!("{header_b64}..{}", URL_SAFE_NO_PAD.encode(fixed)))
}

/// The `iat` a signature claims, before anything is verified (for a cheap freshness check).
pub fn claimed_time(jws: &str, typ: &str) -> Result<i64, SignatureError> {
    parse(jws, typ).map(|(header, _, _)| header.iat)
}

fn parse<'j>(jws: &'j str, typ: &str) -> Result<(Header, &'j str, Vec<u8>), SignatureError> {
    let (header_b64, rest) = jws.split_once("..").ok_or(SignatureError::Malformed)?;
    let header: Header = URL_SAFE_NO_PAD
        .decode(header_b64)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(SignatureError::Malformed)?;
    if header.alg != "ES256" || header.typ != typ || header.x5c.is_empty() {
        return Err(SignatureError::Malformed);
    }
    let signature = URL_SAFE_NO_PAD
        .decode(rest)
        .map_err(|_| SignatureError::Malformed)?;
    Ok((header, header_b64, signature))
}

/// Verifies `jws` (made for `typ`) over `payload` as made by `expected` (a SPIFFE ID): the
/// chain against `bundle` as it was when the signature says it was made, its leaf's SPIFFE
/// ID, then the signature with the leaf's key.
pub fn verify(
    bundle: &TrustBundle,
    jws: &str,
    typ: &str,
    expected: &str,
    payload: &[u8],
) -> Result<Signer, SignatureError> {
    let (header, header_b64, signature) = parse(jws, typ)?;
    let chain: Vec<CertificateDer<'static>> = header
        .x5c
        .iter()
        .map(|c| STANDARD.decode(c).map(CertificateDer::from))
        .collect::<Result<_, _>>()
        .map_err(|_| SignatureError::Malformed)?;
    let spiffe_id = bundle
        .verify_workload(
            &chain[0],
            &chain[1..],
            crate::tls::unix_time(header.iat),
            KeyUsage::client_auth(),
        )
        .map_err(|e| SignatureError::Untrusted(e.to_string()))?;
    if spiffe_id.as_str() != expected {
        return Err(SignatureError::WrongSigner {
            signer: spiffe_id.to_string(),
            expected: expected.to_owned(),
        });
    }
    let input = signing_input(header_b64, payload);
    let (_, leaf) =
        x509_parser::parse_x509_certificate(&chain[0]).map_err(|_| SignatureError::Malformed)?;
    let point = leaf.public_key().subject_public_key.data.to_vec();
    ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_FIXED, point)
        .verify(input.as_bytes(), &signature)
        .map_err(|_| SignatureError::BadSignature)?;
    Ok(Signer {
        spiffe_id,
        signed_at: header.iat,
    })
}

/// An ASN.1 DER ECDSA signature (SEQUENCE of two INTEGERs) as JWS's fixed r||s (64 bytes).
fn der_to_fixed(der: &[u8]) -> Option<[u8; 64]> {
    let (tag, body) = (der.first()?, der.get(2..)?);
    if *tag != 0x30 || usize::from(*der.get(1)?) != body.len() {
        return None;
    }
    let mut out = [0u8; 64];
    let mut rest = body;
    for half in out.chunks_mut(32) {
        if rest.first() != Some(&0x02) {
            return None;
        }
        let len = usize::from(*rest.get(1)?);
        let int = rest.get(2..2 + len)?;
        let int = match int {
            [0, tail @ ..] => tail,
            all => all,
        };
        if int.len() > 32 {
            return None;
        }
        half[32 - int.len()..].copy_from_slice(int);
        rest = &rest[2 + len..];
    }
    rest.is_empty().then_some(out)
}

/// For tests here and in the other crates: a CA, and a workload identity it issued.
#[cfg(any(test, feature = "test-support"))]
pub fn test_identity(spiffe_id: &str) -> (TrustBundle, WorkloadIdentity) {
    let (ca_pem, identity) = test_identity_pem(spiffe_id);
    let td = SpiffeId::parse(spiffe_id).unwrap().trust_domain();
    (
        TrustBundle::from_pem(td, ca_pem.as_bytes()).unwrap(),
        identity,
    )
}

/// The same, with the CA as PEM (for a bundle file).
#[cfg(any(test, feature = "test-support"))]
pub fn test_identity_pem(spiffe_id: &str) -> (String, WorkloadIdentity) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, SanType};
    let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut ca = CertificateParams::default();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, &ca_key);
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut leaf = CertificateParams::default();
    leaf.subject_alt_names = vec![SanType::URI(spiffe_id.try_into().unwrap())];
    leaf.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    let identity =
        WorkloadIdentity::from_pem(cert.pem().as_bytes(), key.serialize_pem().as_bytes()).unwrap();
    (ca_cert.pem(), identity)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_only_for_its_payload_its_use_and_its_bundle() {
        let me = "spiffe://palisade.local/ns/shop/sa/orders";
        let (bundle, identity) = test_identity(me);
        let jws = sign(&identity, "t+jws", 1_700_000_000, b"payload").unwrap();
        let signer = verify(&bundle, &jws, "t+jws", me, b"payload").unwrap();
        assert_eq!(
            (signer.spiffe_id.as_str(), signer.signed_at),
            (me, 1_700_000_000)
        );
        assert_eq!(claimed_time(&jws, "t+jws"), Ok(1_700_000_000));
        assert_eq!(
            verify(&bundle, &jws, "t+jws", me, b"payloaD"),
            Err(SignatureError::BadSignature)
        );
        assert_eq!(
            verify(&bundle, &jws, "other+jws", me, b"payload"),
            Err(SignatureError::Malformed)
        );
        let (foreign, _) = test_identity(me);
        assert!(matches!(
            verify(&foreign, &jws, "t+jws", me, b"payload"),
            Err(SignatureError::Untrusted(_))
        ));
        for garbage in ["x..y", "nope", ""] {
            assert_eq!(
                verify(&bundle, garbage, "t+jws", me, b"payload"),
                Err(SignatureError::Malformed)
            );
        }
        let mut bad = jws.clone();
        let last = bad.pop().unwrap();
        bad.push(if last == 'A' { 'B' } else { 'A' });
        assert!(verify(&bundle, &bad, "t+jws", me, b"payload").is_err());
        let other = "spiffe://palisade.local/ns/shop/sa/payments";
        assert!(matches!(
            verify(&bundle, &jws, "t+jws", other, b"payload"),
            Err(SignatureError::WrongSigner { .. })
        ));
    }

    #[test]
    fn der_signatures_become_fixed_width() {
        // r with a leading zero (high bit set), s short.
        let mut der = vec![0x30, 0x26, 0x02, 0x21, 0x00];
        der.extend([0x80; 32]);
        der.extend([0x02, 0x01, 0x07]);
        let fixed = der_to_fixed(&der).unwrap();
        assert_eq!(&fixed[..32], &[0x80; 32]);
        assert_eq!(&fixed[32..63], &[0u8; 31]);
        assert_eq!(fixed[63], 7);
        assert!(der_to_fixed(&[0x31, 0]).is_none());
        assert!(der_to_fixed(&der[..10]).is_none());
    }
}
