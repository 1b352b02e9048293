//! What a publish or a delivery carries about its publisher: `x-palisade-*` headers are
//! removed in every spelling, `x-palisade-publisher` and the signature set on a publish,
//! `x-palisade-verified-publisher` set on a delivery only for a valid signature.

use amq_protocol::frame::{AMQPContentHeader, AMQPFrame};
use amq_protocol::types::{AMQPValue, FieldTable, LongString, ShortString};

use crate::amqp::provenance;

use super::frames::encode;
use super::{Amqp, PUBLISHER_HEADER};

/// A content sequence from the application in progress on one channel.
pub(super) struct Outgoing {
    pub(super) remaining: u64,
    /// With signing: everything held until the body is complete.
    pub(super) held: Option<Held>,
}

/// A message held whole: its method, header and body frames, and the running body hash.
pub(super) struct Held {
    pub(super) method: Vec<u8>,
    pub(super) header: Option<AMQPContentHeader>,
    pub(super) exchange: String,
    pub(super) routing_key: String,
    pub(super) bodies: Vec<Vec<u8>>,
    pub(super) hash: ring::digest::Context,
    pub(super) remaining: u64,
}

impl Held {
    /// The message with its header restamped by `headers` (given the header, exchange,
    /// routing key and body hash), ready to write.
    pub(super) fn finish(
        self,
        ch: u16,
        headers: impl FnOnce(&AMQPContentHeader, &str, &str, &[u8]) -> Vec<(&'static str, String)>,
    ) -> Vec<u8> {
        let header = self.header.expect("held after its header");
        let digest = self.hash.finish();
        let set = headers(&header, &self.exchange, &self.routing_key, digest.as_ref());
        let mut out = self.method;
        out.extend(restamp(ch, &header, &set));
        for b in self.bodies {
            out.extend(b);
        }
        out
    }

    pub(super) fn new(method: Vec<u8>, exchange: String, routing_key: String) -> Self {
        Held {
            method,
            header: None,
            exchange,
            routing_key,
            bodies: Vec::new(),
            hash: ring::digest::Context::new(&ring::digest::SHA256),
            remaining: 0,
        }
    }
}

/// The header frame with `set` added and the provenance headers an application could forge
/// removed.
pub(super) fn restamp(ch: u16, header: &AMQPContentHeader, set: &[(&str, String)]) -> Vec<u8> {
    let mut headers = header.properties.headers().clone().unwrap_or_default();
    let mut kept = FieldTable::default();
    for (k, v) in headers.inner() {
        if !is_reserved_header(k.as_str()) {
            kept.insert(k.clone(), v.clone());
        }
    }
    headers = kept;
    for (k, v) in set {
        headers.insert(
            ShortString::from(*k),
            AMQPValue::LongString(LongString::from(v.clone().into_bytes())),
        );
    }
    encode(&AMQPFrame::Header(
        ch,
        AMQPContentHeader {
            class_id: header.class_id,
            body_size: header.body_size,
            properties: header.properties.clone().with_headers(headers),
        },
    ))
}

/// Whether a message header name is, in any spelling, one of the `x-palisade-` names the
/// sidecars set ([`PUBLISHER_HEADER`], the signature, the verified publisher). Field-table
/// keys are case-sensitive in AMQP, but applications look headers up loosely
/// (`X-Palisade-Verified-Publisher`, `x_palisade_verified_publisher`), so the whole prefix is
/// reserved with case and `_`/`-` folded.
pub(super) fn is_reserved_header(name: &str) -> bool {
    const PREFIX: &[u8] = b"x-palisade-";
    name.len() >= PREFIX.len()
        && name.as_bytes()[..PREFIX.len()]
            .iter()
            .zip(PREFIX)
            .all(|(a, b)| a.to_ascii_lowercase() == *b || (*a == b'_' && *b == b'-'))
}

pub(super) fn header_text(header: &AMQPContentHeader, name: &str) -> Option<String> {
    match header.properties.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongString(v) => String::from_utf8(v.as_bytes().to_vec()).ok(),
        AMQPValue::ShortString(v) => Some(v.as_str().to_owned()),
        _ => None,
    }
}

impl Amqp {
    /// A held delivery with its provenance checked: the application sees
    /// `x-palisade-verified-publisher` only for a valid signature, and never the signature
    /// itself or a forged verified header.
    pub(super) fn verified(&self, ch: u16, held: Held) -> Vec<u8> {
        held.finish(ch, |header, exchange, routing_key, digest| {
            let publisher = header_text(header, PUBLISHER_HEADER);
            let outcome = match (
                header_text(header, provenance::SIGNATURE_HEADER),
                &publisher,
            ) {
                (Some(jws), Some(publisher)) => provenance::verify(
                    &self.identity.bundle().load(),
                    &jws,
                    publisher,
                    provenance::Message {
                        exchange,
                        routing_key,
                        body_sha256: digest,
                    },
                    self.provenance.max_age,
                ),
                _ => Err(provenance::ProvenanceError::Missing),
            };
            let mut set = Vec::with_capacity(2);
            if let Some(p) = publisher {
                // Kept as information; only the verified header is to be trusted.
                set.push((PUBLISHER_HEADER, p));
            }
            match outcome {
                Ok(id) => {
                    self.metrics.provenance("verify", "ok");
                    set.push((provenance::VERIFIED_HEADER, id.to_string()));
                }
                Err(e) => {
                    self.metrics.provenance("verify", e.label());
                    tracing::debug!(target: "palisade::provenance", reason = %e, %exchange,
                        %routing_key, "message without a verified publisher");
                }
            }
            set
        })
    }

    /// A held publish, stamped with the publisher and its signature, ready for the broker.
    pub(super) fn signed(&self, ch: u16, held: Held) -> Vec<u8> {
        held.finish(ch, |_, exchange, routing_key, digest| {
            let mut set = Vec::with_capacity(2);
            if let Some(identity) = self.identity.slot().get() {
                set.push((PUBLISHER_HEADER, identity.spiffe_id.to_string()));
                let message = provenance::Message {
                    exchange,
                    routing_key,
                    body_sha256: digest,
                };
                match provenance::sign(&identity, message) {
                    Some(jws) => {
                        set.push((provenance::SIGNATURE_HEADER, jws));
                        self.metrics.provenance("sign", "ok");
                    }
                    None => self.metrics.provenance("sign", "failed"),
                }
            }
            set
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_of_a_reserved_header_is_reserved() {
        for name in [
            "x-palisade-verified-publisher",
            "X-Palisade-Verified-Publisher",
            "x_palisade_verified_publisher",
            "X-PALISADE-SIGNATURE",
            "x-palisade-anything",
        ] {
            assert!(is_reserved_header(name), "{name}");
        }
        for name in [
            "x-palisade",
            "x-palisadex-a",
            "palisade-signature",
            "CC",
            "",
        ] {
            assert!(!is_reserved_header(name), "{name}");
        }
        let mut headers = FieldTable::default();
        for name in [
            "X-Palisade-Verified-Publisher",
            "x_palisade_publisher",
            "kept",
        ] {
            headers.insert(name.into(), AMQPValue::LongString("spoof".into()));
        }
        let header = AMQPContentHeader {
            class_id: 60,
            body_size: 0,
            properties: amq_protocol::protocol::BasicProperties::default().with_headers(headers),
        };
        let bytes = restamp(1, &header, &[]);
        let (_, parsed) = amq_protocol::frame::parse_frame(bytes.as_slice()).unwrap();
        let AMQPFrame::Header(_, h) = parsed else {
            panic!("a header frame")
        };
        let names: Vec<String> = h
            .properties
            .headers()
            .as_ref()
            .unwrap()
            .inner()
            .keys()
            .map(|k| k.to_string())
            .collect();
        assert_eq!(names, ["kept"]);
    }
}
