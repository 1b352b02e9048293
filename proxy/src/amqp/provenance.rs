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
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use palisade_contract::SpiffeId;
use palisade_contract::signing::{self, SignatureError};
use palisade_contract::tls::{TrustBundle, WorkloadIdentity};
use ring::digest::{SHA256, digest};
use serde::Serialize;

pub const SIGNATURE_HEADER: &str = "x-palisade-signature";
pub const VERIFIED_HEADER: &str = "x-palisade-verified-publisher";
const TYP: &str = "palisade-provenance+jws";

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

impl Payload<'_> {
    fn bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a payload always serializes")
    }
}

/// What a message is signed over, besides the publisher and time.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    pub exchange: &'a str,
    pub routing_key: &'a str,
    /// SHA-256 of the body (computed as the body frames pass).
    pub body_sha256: &'a [u8],
}

impl<'a> Message<'a> {
    fn payload(self, publisher: &'a str, iat: i64) -> Payload<'a> {
        Payload {
            publisher,
            ex: self.exchange,
            rk: self.routing_key,
            iat,
            sha256: URL_SAFE_NO_PAD.encode(self.body_sha256),
        }
    }
}

/// SHA-256 of `body` in one go (for tests and small bodies).
pub fn body_digest(body: &[u8]) -> Vec<u8> {
    digest(&SHA256, body).as_ref().to_vec()
}

use palisade_contract::unix_now as now;

/// Signs `message` as `identity`; `None` if the key cannot sign ES256.
pub fn sign(identity: &WorkloadIdentity, message: Message<'_>) -> Option<String> {
    let iat = now();
    let payload = message.payload(identity.spiffe_id.as_str(), iat).bytes();
    signing::sign(identity, TYP, iat, &payload)
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
    let iat = signing::claimed_time(jws, TYP)?;
    let now = now();
    if iat > now + 60 || iat < now - max_age.as_secs() as i64 {
        return Err(ProvenanceError::Stale);
    }
    let payload = message.payload(publisher, iat).bytes();
    Ok(signing::verify(bundle, jws, TYP, publisher, &payload)?.spiffe_id)
}

impl From<SignatureError> for ProvenanceError {
    fn from(e: SignatureError) -> Self {
        match e {
            SignatureError::Malformed => ProvenanceError::Malformed,
            SignatureError::Untrusted(why) => ProvenanceError::Untrusted(why),
            SignatureError::WrongSigner { signer, expected } => ProvenanceError::WrongPublisher {
                signer,
                claimed: expected,
            },
            SignatureError::BadSignature => ProvenanceError::BadSignature,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issued(spiffe_id: &str) -> (TrustBundle, WorkloadIdentity) {
        palisade_contract::signing::test_identity(spiffe_id)
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
}
