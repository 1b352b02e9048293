//! The collector's reading side of a broker ([`palisade_contract::decisions::broker`]):
//! consume the decision queue, verify each batch's signature, store it through the same
//! [`Collector::ingest`] as the sidecar API, and acknowledge the delivery only after the
//! store committed it.
//!
//! What cannot be stored now (the database is down) is not acknowledged: the consumer
//! closes its connection, so the broker keeps every unacknowledged batch for the next
//! attempt (by this replica or a standby one), and comes back after a backoff. A delivery
//! that is not a batch at all (no valid signature, a malformed body, another workload's
//! instance) is rejected without requeueing, logged and counted; retrying could never store
//! it, and it must not block the queue.

use std::sync::Arc;
use std::time::Duration;

use futures_lite::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicRejectOptions};
use lapin::types::{FieldTable, ShortString};
use palisade_contract::decisions::broker::{close, open, redacted, verify_batch};
use palisade_contract::process::Stopping;

use super::{Collector, IngestError};

/// Batches delivered ahead of their acknowledgement.
const PREFETCH: u16 = 8;
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// `--decision-broker` and `--decision-queue`.
#[derive(Debug, Clone)]
pub struct BrokerSource {
    pub url: String,
    pub queue: String,
}

impl Collector {
    /// Consumes `source` until `stop`, reconnecting with backoff.
    pub async fn consume(self: Arc<Self>, source: BrokerSource, mut stop: Stopping) {
        let mut backoff = FIRST_BACKOFF;
        loop {
            let failed = tokio::select! {
                () = &mut stop => return,
                e = self.consume_once(&source, &mut backoff) => e,
            };
            tracing::warn!(error = %failed, queue = %source.queue,
                "reading decisions from the broker stopped; reconnecting");
            tokio::select! {
                () = &mut stop => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// One connection's life: returns why it ended.
    async fn consume_once(&self, source: &BrokerSource, backoff: &mut Duration) -> String {
        let (connection, channel) = match open(&source.url, &source.queue, false, PREFETCH).await {
            Ok(opened) => opened,
            Err(e) => return format!("connecting to {}: {e}", redacted(&source.url)),
        };
        let mut deliveries = match channel
            .basic_consume(
                ShortString::from(source.queue.as_str()),
                ShortString::from("palisade-collector"),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
        {
            Ok(c) => c,
            Err(e) => return format!("consuming {}: {e}", source.queue),
        };
        tracing::info!(queue = %source.queue, "reading decisions from the broker");
        let why = loop {
            let delivery = match deliveries.next().await {
                Some(Ok(d)) => d,
                Some(Err(e)) => break e.to_string(),
                None => break "the broker ended the consumer".to_owned(),
            };
            match self.take(&delivery).await {
                Ok(()) => {
                    *backoff = FIRST_BACKOFF;
                    if let Err(e) = delivery.ack(BasicAckOptions::default()).await {
                        break format!("acknowledging a batch: {e}");
                    }
                }
                Err(Retry(e)) => break e,
            }
        };
        // Unacknowledged deliveries go back to the queue with the connection.
        close(connection).await;
        why
    }

    /// Stores one delivery; a delivery that can never be stored is rejected here.
    async fn take(&self, delivery: &Delivery) -> Result<(), Retry> {
        let bundle = self.bundle.load();
        let refused = match verify_batch(
            &bundle,
            delivery.properties.headers().as_ref(),
            &delivery.data,
        ) {
            Err(e) => {
                self.metrics.refused.with_label_values(&["signature"]).inc();
                e.to_string()
            }
            Ok((instance, shipper)) => match self.ingest(&shipper, &instance, &delivery.data).await
            {
                Ok(_) => return Ok(()),
                Err(IngestError::Store(e)) => return Err(Retry(format!("storing a batch: {e}"))),
                Err(e) => e.to_string(),
            },
        };
        tracing::warn!(reason = %refused, "a delivery on the decision queue is not a batch the collector can store; rejected");
        delivery
            .reject(BasicRejectOptions { requeue: false })
            .await
            .map(drop)
            .map_err(|e| Retry(format!("rejecting a delivery: {e}")))
    }
}

/// A batch not stored now but storable later: the connection is closed so the broker
/// keeps it.
struct Retry(String);
