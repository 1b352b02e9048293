//! Shipping through RabbitMQ (`--decision-ship amqp://…` on the sidecars,
//! `--decision-broker amqp://…` on the control plane): what both ends of the queue agree
//! on.
//!
//! The write side and the read side are separated by the broker. A sidecar publishes the
//! same batches it would post to the control plane (its spool's lines as written,
//! [`super::ship`]) to one durable **quorum queue** with publisher confirms, and counts a
//! batch as shipped (deleting segments by the same rule) once the broker confirmed it: a
//! quorum queue confirms only what a majority of its replicas wrote to disk. Control-plane
//! replicas consume the queue and acknowledge a delivery only after their store committed
//! it; what is unacknowledged when a connection drops is delivered again, and the store
//! keeps a line sent twice once (by instance and sequence number, checked by hash).
//!
//! The queue has a **single active consumer**: one replica reads while the others stand
//! by, so batches are checked in the order each sidecar published them (a batch that
//! skipped ahead would look like a gap). One queue carries about as much as one
//! PostgreSQL writer stores; the README's sizing says when to split.
//!
//! Over the sidecar API the shipper is the mTLS peer; through a broker it is not, so every
//! batch is **signed** with the sidecar's workload key (a detached JWS, [`crate::signing`],
//! `typ` [`BATCH_TYP`]) over the note [`batch_note`] (instance and the SHA-256 of the
//! body). The collector verifies it against the trust bundle before reading a line, and
//! takes the shipper's SPIFFE ID from it: whoever can publish to the queue can neither add
//! lines to a sidecar's log nor change them; replaying a batch adds nothing, and removing
//! one shows as a gap.

use lapin::options::{BasicQosOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, Connection, ConnectionProperties};

use crate::SpiffeId;
use crate::signing::{self, SignatureError};
use crate::tls::{TrustBundle, WorkloadIdentity};

/// The queue's name unless `--decision-queue` says otherwise.
pub const DEFAULT_QUEUE: &str = "palisade.decisions";

/// The `typ` of a batch signature (never accepted for anything else).
pub const BATCH_TYP: &str = "palisade-decision-batch+jws";

/// Message headers of a batch.
pub const INSTANCE_HEADER: &str = "palisade-instance";
pub const SHIPPER_HEADER: &str = "palisade-shipper";
pub const SIGNATURE_HEADER: &str = "palisade-signature";

/// What a batch signature signs: one field per line, like a checkpoint's note.
pub fn batch_note(instance: &str, body: &[u8]) -> Vec<u8> {
    format!(
        "palisade.dev/decision-batch/v1\n{instance}\n{}\n",
        super::hex(&super::line_hash(body))
    )
    .into_bytes()
}

/// The queue's arguments: a quorum queue read by one consumer at a time. Declared the same
/// by both sides (RabbitMQ refuses a declaration whose arguments differ).
fn queue_arguments() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
    args
}

/// Connects to `url`, opens a channel and declares `queue`. With `confirms`, the channel
/// is in confirm mode (the publishing side); `prefetch` bounds unacknowledged deliveries
/// (the consuming side).
pub async fn open(
    url: &str,
    queue: &str,
    confirms: bool,
    prefetch: u16,
) -> Result<(Connection, Channel), lapin::Error> {
    let connection = Connection::connect(url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    channel
        .queue_declare(
            ShortString::from(queue),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            queue_arguments(),
        )
        .await?;
    if confirms {
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
    }
    if prefetch > 0 {
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await?;
    }
    Ok((connection, channel))
}

/// Closes `connection`, waiting at most a second: closing one the broker already dropped
/// can wait for an answer that never comes.
pub async fn close(connection: Connection) {
    let closing = connection.close(200, "reconnecting".into());
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), closing).await;
}

/// The headers of a batch of `instance`'s lines, signed by `identity`; `None` if the key
/// cannot sign.
pub fn batch_headers(
    identity: &WorkloadIdentity,
    instance: &str,
    body: &[u8],
) -> Option<FieldTable> {
    let jws = signing::sign(
        identity,
        BATCH_TYP,
        crate::unix_now(),
        &batch_note(instance, body),
    )?;
    let mut headers = FieldTable::default();
    for (name, value) in [
        (INSTANCE_HEADER, instance),
        (SHIPPER_HEADER, identity.spiffe_id.as_str()),
        (SIGNATURE_HEADER, jws.as_str()),
    ] {
        headers.insert(name.into(), AMQPValue::LongString(value.into()));
    }
    Some(headers)
}

/// Why a delivery is not a batch the collector reads.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("the message has no {0} header (or it is not a string)")]
    Missing(&'static str),
    #[error("the shipper {0:?} is not a SPIFFE ID")]
    Shipper(String),
    #[error("the batch signature: {0}")]
    Signature(#[from] SignatureError),
}

/// A delivered batch's instance and shipper, once its signature is verified against
/// `bundle` (as the bundle stood when the batch was signed).
pub fn verify_batch(
    bundle: &TrustBundle,
    headers: Option<&FieldTable>,
    body: &[u8],
) -> Result<(String, SpiffeId), BatchError> {
    let text = |name: &'static str| {
        headers
            .and_then(|h| h.inner().get(name))
            .and_then(|v| match v {
                AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok(),
                _ => None,
            })
            .map(str::to_owned)
            .ok_or(BatchError::Missing(name))
    };
    let instance = text(INSTANCE_HEADER)?;
    let shipper = text(SHIPPER_HEADER)?;
    let jws = text(SIGNATURE_HEADER)?;
    let signer = signing::verify(
        bundle,
        &jws,
        BATCH_TYP,
        &shipper,
        &batch_note(&instance, body),
    )?;
    Ok((instance, signer.spiffe_id))
}

/// `url` without its password, for logs and errors.
pub fn redacted(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((user, host)) => {
                let user = user.split(':').next().unwrap_or_default();
                format!("{scheme}://{user}:…@{host}")
            }
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_not_logged() {
        assert_eq!(
            redacted("amqp://guest:secret@127.0.0.1:5672/%2f"),
            "amqp://guest:…@127.0.0.1:5672/%2f"
        );
        assert_eq!(redacted("amqp://127.0.0.1:5672"), "amqp://127.0.0.1:5672");
    }

    #[test]
    fn a_signed_batch_names_its_shipper_and_any_change_is_refused() {
        let id = "spiffe://palisade.test/ns/shop/sa/orders";
        let (bundle, identity) = signing::test_identity(id);
        let body = b"{\"seq\":0}\n".to_vec();
        let headers = batch_headers(&identity, "inst-1", &body).unwrap();
        let (instance, shipper) = verify_batch(&bundle, Some(&headers), &body).unwrap();
        assert_eq!((instance.as_str(), shipper.as_str()), ("inst-1", id));

        // The body changed, the instance changed, another shipper claimed, no headers.
        assert!(matches!(
            verify_batch(&bundle, Some(&headers), b"{\"seq\":1}\n"),
            Err(BatchError::Signature(SignatureError::BadSignature))
        ));
        let mut moved = headers.clone();
        moved.insert(
            INSTANCE_HEADER.into(),
            AMQPValue::LongString("inst-2".into()),
        );
        assert!(matches!(
            verify_batch(&bundle, Some(&moved), &body),
            Err(BatchError::Signature(SignatureError::BadSignature))
        ));
        let mut claimed = headers.clone();
        claimed.insert(
            SHIPPER_HEADER.into(),
            AMQPValue::LongString("spiffe://palisade.test/ns/shop/sa/admin".into()),
        );
        assert!(matches!(
            verify_batch(&bundle, Some(&claimed), &body),
            Err(BatchError::Signature(SignatureError::WrongSigner { .. }))
        ));
        assert_eq!(
            verify_batch(&bundle, None, &body),
            Err(BatchError::Missing(INSTANCE_HEADER))
        );

        // Signed by a CA the bundle does not hold.
        let (_, stranger) = signing::test_identity(id);
        let foreign = batch_headers(&stranger, "inst-1", &body).unwrap();
        assert!(matches!(
            verify_batch(&bundle, Some(&foreign), &body),
            Err(BatchError::Signature(SignatureError::Untrusted(_)))
        ));
    }
}
