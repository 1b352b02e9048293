//! Shipping a sidecar's decision log to the control plane: what both sides of the sidecar
//! API agree on.
//!
//! The sidecar posts the lines of its spool exactly as written (`application/x-ndjson`,
//! each ending in a newline, one instance per batch, in sequence order) to [`SHIP_PATH`]
//! over mTLS. The control plane checks them with the same rules as `palisade audit verify`
//! ([`super::verify`]), commits them, and only then answers with [`ShipAck`]: the sequence
//! number it expects next from that instance. The sidecar keeps that number in its spool
//! directory ([`SHIPPED_FILE`]), sends from it after a reconnect or a restart, and deletes a
//! segment only once every line of it is acknowledged. Lines sent twice (a lost
//! acknowledgement) are recognised by their hash and stored once: delivery is at least
//! once, storage exactly once.

use serde::{Deserialize, Serialize};

/// The sidecar API route batches are posted to.
pub const SHIP_PATH: &str = "/v1/decisions/batches";

/// Content type of a batch: the spool's lines as they are.
pub const BATCH_CONTENT_TYPE: &str = "application/x-ndjson";

/// Most bytes in one batch (the control plane refuses more with 413).
pub const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;

/// Most lines in one batch.
pub const MAX_BATCH_LINES: usize = 10_000;

/// The spool directory's file holding the next sequence number not yet acknowledged.
pub const SHIPPED_FILE: &str = "shipped";

/// The control plane's answer to a committed batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ShipAck {
    pub instance: String,
    /// Every line before this sequence number is stored.
    pub next_seq: u64,
    /// Integrity findings in this batch (also stored, as their own events).
    #[serde(default)]
    pub findings: Vec<String>,
}
