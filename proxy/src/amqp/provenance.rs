//! Verifiable publisher provenance for AMQP messages.
//!
//! mTLS proves who talks to the broker, not who published a message a consumer reads later.
//! The publisher's sidecar therefore signs each message it lets through: a compact detached
//! JWS (RFC 7515, appendix F) in the `x-palisade-signature` header, made with the
//! workload's own certificate key (ES256), carrying the certificate chain in `x5c`. The
//! signed payload is not sent; the verifier rebuilds it from the message:
//!
//! ```json
//! {"pub":"<publisher SPIFFE ID>","ex":"<exchange>","rk":"<routing key>","iat":<unix secs>,"sha256":"<base64url of SHA-256(body)>"}
//! ```
//!
//! The consumer's sidecar verifies the chain against its trust bundle (at the signing time,
//! which may not be in the future nor older than the maximum age), that the leaf's SPIFFE ID
//! is the claimed publisher, and the signature; only then does the application see
//! `x-palisade-verified-publisher`. A message re-routed by the broker (dead-lettering, an
//! alternate exchange) no longer verifies: its exchange or routing key changed.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use palisade_contract::SpiffeId;
use palisade_contract::tls::{KeyUsage, TrustBundle, WorkloadIdentity};
use ring::digest::{SHA256, digest};
use rustls::SignatureScheme;
use rustls_pki_types::{CertificateDer, UnixTime};
use serde::{Deserialize, Serialize};

pub const SIGNATURE_HEADER: &str = "x-palisade-signature";
pub const VERIFIED_HEADER: &str = "x-palisade-verified-publisher";
const TYP: &str = "palisade-provenance+jws";

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    alg: String,
    typ: String,
    iat: i64,
    x5c: Vec<String>,
}

/// The reconstructed payload; field order is the wire order.
#[derive(Debug, Serialize)]
struct Payload<'a> {
    #[serde(rename = "pub")]
    publisher: &'a str,
    ex: &'a str,
    rk: &'a str,
    iat: i64,
    sha256: String,
}

/// What a message is signed over, besides the publisher and time.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    pub exchange: &'a str,
    pub routing_key: &'a str,
    /// SHA-256 of the body (computed as the body frames pass).
    pub body_sha256: &'a [u8],
}

/// SHA-256 of `body` in one go (for tests and small bodies).
pub fn body_digest(body: &[u8]) -> Vec<u8> {
    digest(&SHA256, body).as_ref().to_vec()
}

use palisade_contract::unix_now as now;

fn signing_input(header_b64: &str, payload: &Payload<'_>) -> String {
    let payload = serde_json::to_vec(payload).expect("a payload always serializes");
    format!("{header_b64}.{}", URL_SAFE_NO_PAD.encode(payload))
}

/// Signs `message` as `identity`; `None` if the key cannot sign ES256.
pub fn sign(identity: &WorkloadIdentity, message: Message<'_>) -> Option<String> {
    let iat = now();
    let header = Header {
        alg: "ES256".into(),
        typ: TYP.into(),
        iat,
        x5c: identity.chain.iter().map(|c| STANDARD.encode(c)).collect(),
    };
    let header_b64 = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).ok()?);
    let input = signing_input(
        &header_b64,
        &Payload {
            publisher: identity.spiffe_id.as_str(),
            ex: message.exchange,
            rk: message.routing_key,
            iat,
            sha256: URL_SAFE_NO_PAD.encode(message.body_sha256),
        },
    );
    let signer = identity
        .certified_key
        .key
        .choose_scheme(&[SignatureScheme::ECDSA_NISTP256_SHA256])?;
    let der = signer.sign(input.as_bytes()).ok()?;
    let fixed = der_to_fixed(&der)?;
    Some(format!("{header_b64}..{}", URL_SAFE_NO_PAD.encode(fixed)))
}

/// Why a signature was not accepted (counted by this label).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProvenanceError {
    #[error("no signature")]
    Missing,
    #[error("the signature is malformed")]
    Malformed,
    #[error("the signing certificate is not trusted: {0}")]
    Untrusted(String),
    #[error("signed by {signer}, but the message claims {claimed}")]
    WrongPublisher { signer: String, claimed: String },
    #[error("the signature is too old or from the future")]
    Stale,
    #[error("the signature does not match the message")]
    BadSignature,
}

impl ProvenanceError {
    pub fn label(&self) -> &'static str {
        match self {
            ProvenanceError::Missing => "missing",
            ProvenanceError::Malformed => "malformed",
            ProvenanceError::Untrusted(_) => "untrusted",
            ProvenanceError::WrongPublisher { .. } => "wrong_publisher",
            ProvenanceError::Stale => "stale",
            ProvenanceError::BadSignature => "bad_signature",
        }
    }
}

/// Verifies `jws` for a message claiming `publisher`; returns the verified SPIFFE ID.
pub fn verify(
    bundle: &TrustBundle,
    jws: &str,
    publisher: &str,
    message: Message<'_>,
    max_age: Duration,
) -> Result<SpiffeId, ProvenanceError> {
    let (header_b64, rest) = jws.split_once("..").ok_or(ProvenanceError::Malformed)?;
    let header: Header = URL_SAFE_NO_PAD
        .decode(header_b64)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(ProvenanceError::Malformed)?;
    if header.alg != "ES256" || header.typ != TYP || header.x5c.is_empty() {
        return Err(ProvenanceError::Malformed);
    }
    let signature = URL_SAFE_NO_PAD
        .decode(rest)
        .map_err(|_| ProvenanceError::Malformed)?;
    let now = now();
    if header.iat > now + 60 || header.iat < now - max_age.as_secs() as i64 {
        return Err(ProvenanceError::Stale);
    }
    let chain: Vec<CertificateDer<'static>> = header
        .x5c
        .iter()
        .map(|c| STANDARD.decode(c).map(CertificateDer::from))
        .collect::<Result<_, _>>()
        .map_err(|_| ProvenanceError::Malformed)?;
    // The certificate must have been valid when it signed.
    let signer = bundle
        .verify_workload(
            &chain[0],
            &chain[1..],
            UnixTime::since_unix_epoch(Duration::from_secs(header.iat.max(0) as u64)),
            KeyUsage::client_auth(),
        )
        .map_err(|e| ProvenanceError::Untrusted(e.to_string()))?;
    if signer.as_str() != publisher {
        return Err(ProvenanceError::WrongPublisher {
            signer: signer.to_string(),
            claimed: publisher.to_owned(),
        });
    }
    let input = signing_input(
        header_b64,
        &Payload {
            publisher,
            ex: message.exchange,
            rk: message.routing_key,
            iat: header.iat,
            sha256: URL_SAFE_NO_PAD.encode(message.body_sha256),
        },
    );
    let (_, leaf) =
        x509_parser::parse_x509_certificate(&chain[0]).map_err(|_| ProvenanceError::Malformed)?;
    let point = leaf.public_key().subject_public_key.data.to_vec();
    ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_FIXED, point)
        .verify(input.as_bytes(), &signature)
        .map_err(|_| ProvenanceError::BadSignature)?;
    Ok(signer)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A CA, and a workload identity it issued for `spiffe_id`.
    fn issued(spiffe_id: &str) -> (TrustBundle, WorkloadIdentity) {
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
        let td = palisade_contract::TrustDomain::parse("palisade.local").unwrap();
        let bundle = TrustBundle::from_pem(td, ca_cert.pem().as_bytes()).unwrap();
        let identity =
            WorkloadIdentity::from_pem(cert.pem().as_bytes(), key.serialize_pem().as_bytes())
                .unwrap();
        (bundle, identity)
    }

    #[test]
    fn a_signature_verifies_and_any_change_breaks_it() {
        let me = "spiffe://palisade.local/ns/shop/sa/orders";
        let (bundle, identity) = issued(me);
        let (one, two) = (body_digest(b"{\"id\": 1}"), body_digest(b"{\"id\": 2}"));
        let msg = Message {
            exchange: "shop.events",
            routing_key: "order.created",
            body_sha256: &one,
        };
        let jws = sign(&identity, msg).expect("an ES256 key signs");
        let day = Duration::from_secs(86_400);
        assert_eq!(verify(&bundle, &jws, me, msg, day).unwrap().as_str(), me);
        let changed = [
            Message {
                body_sha256: &two,
                ..msg
            },
            Message {
                routing_key: "order.paid",
                ..msg
            },
            Message {
                exchange: "other",
                ..msg
            },
        ];
        for m in changed {
            assert_eq!(
                verify(&bundle, &jws, me, m, day),
                Err(ProvenanceError::BadSignature)
            );
        }
        let other = "spiffe://palisade.local/ns/shop/sa/payments";
        assert!(matches!(
            verify(&bundle, &jws, other, msg, day),
            Err(ProvenanceError::WrongPublisher { .. })
        ));
        // A chain from another CA, and garbage.
        let (foreign, _) = issued(me);
        assert!(matches!(
            verify(&foreign, &jws, me, msg, day),
            Err(ProvenanceError::Untrusted(_))
        ));
        assert_eq!(
            verify(&bundle, "x..y", me, msg, day),
            Err(ProvenanceError::Malformed)
        );
        assert_eq!(
            verify(&bundle, "nope", me, msg, day),
            Err(ProvenanceError::Malformed)
        );
        // A tampered signature.
        let mut bad = jws.clone();
        let last = bad.pop().unwrap();
        bad.push(if last == 'A' { 'B' } else { 'A' });
        assert!(verify(&bundle, &bad, me, msg, day).is_err());
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
