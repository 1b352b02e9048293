//! Shipping the spool to the control plane ([`palisade_contract::decisions::ship`]): read
//! what the writer has handed to the kernel, post it in batches over the sidecar's mTLS
//! connection to the control plane, and move on only when the control plane answers that
//! it stored the lines. Or, with `--decision-ship amqp://…`, publish the same batches,
//! each signed with the workload key, to a quorum queue the control planes read
//! ([`palisade_contract::decisions::broker`]), and move on when the broker confirmed them.
//!
//! At least once: the acknowledged position is kept in the spool's `shipped` file, so after
//! a reconnect or a restart the lines after it are sent again (the control plane stores a
//! line sent twice once). A segment is deleted only when every line of it is acknowledged
//! and a newer segment exists (the newest is the one being written). While the control
//! plane is unreachable the spool grows, and nothing is lost; the attempts back off from
//! half a second to 30 s. At shutdown the shipper waits for the writer's last lines and
//! sends them (for at most 3 s), so a pod deleted with its spool loses nothing that was
//! shippable.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use lapin::options::BasicPublishOptions;
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel, Connection};
use palisade_contract::decisions::broker;
use palisade_contract::decisions::ship::{
    BATCH_CONTENT_TYPE, MAX_BATCH_BYTES, MAX_BATCH_LINES, SHIPPED_FILE,
};
use palisade_contract::decisions::{segment_first_seq, segments};
use palisade_contract::private_files::write_atomic;
use palisade_contract::process::Stopping;
use palisade_contract::tls::IdentitySlot;
use tokio::sync::watch;

use crate::control_plane_client::ShipChannel;
use crate::metrics::SpoolMetrics;

/// Shortest time between two batches while lines trickle in (under load, full batches go
/// at once).
const PACE: Duration = Duration::from_millis(200);
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long shutdown waits to ship the last lines.
const LAST_SHIPPING: Duration = Duration::from_secs(3);
/// How long a broker has to confirm a batch before the connection is given up (a broker
/// in a memory or disk alarm blocks publishers without an answer).
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);

/// Where batches go.
pub enum Destination {
    ControlPlane(ShipChannel),
    Broker(Box<BrokerLink>),
}

/// A connection to the decision queue, opened when first needed and again after it failed.
pub struct BrokerLink {
    url: String,
    queue: String,
    /// The workload identity batches are signed with.
    slot: Arc<IdentitySlot>,
    open: Option<(Connection, Channel)>,
}

impl BrokerLink {
    pub fn new(url: String, queue: String, slot: Arc<IdentitySlot>) -> Self {
        Self {
            url,
            queue,
            slot,
            open: None,
        }
    }

    /// Publishes `batch` signed, and returns once the broker confirmed it.
    async fn publish(&mut self, instance: &str, batch: Vec<u8>) -> Result<(), String> {
        let identity = self
            .slot
            .valid()
            .ok_or("no valid workload certificate to sign the batch with yet")?;
        let headers = broker::batch_headers(&identity, instance, &batch)
            .ok_or("the workload key cannot sign ES256")?;
        let published = tokio::time::timeout(CONFIRM_TIMEOUT, async {
            if self
                .open
                .as_ref()
                .is_none_or(|(c, _)| !c.status().connected())
            {
                self.open = Some(
                    broker::open(&self.url, &self.queue, true, 0)
                        .await
                        .map_err(|e| {
                            format!("connecting to {}: {e}", broker::redacted(&self.url))
                        })?,
                );
            }
            let (_, channel) = self.open.as_ref().expect("opened above");
            let confirm = channel
                .basic_publish(
                    ShortString::from(""),
                    ShortString::from(self.queue.as_str()),
                    // Mandatory: a batch no queue took comes back, never vanishes.
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    &batch,
                    BasicProperties::default()
                        .with_delivery_mode(2)
                        .with_content_type(BATCH_CONTENT_TYPE.into())
                        .with_headers(headers),
                )
                .await
                .map_err(|e| format!("publishing a batch: {e}"))?
                .await
                .map_err(|e| format!("waiting for the broker's confirm: {e}"))?;
            let nack = confirm.is_nack();
            match (nack, confirm.take_message()) {
                (true, _) => Err("the broker refused the batch (nack)".to_owned()),
                (false, Some(_)) => Err(format!("no queue {} took the batch", self.queue)),
                (false, None) => Ok(()),
            }
        })
        .await
        .unwrap_or_else(|_| Err("the broker did not confirm the batch in 30 s".into()));
        if published.is_err() {
            // Start over on a new connection: whatever this one still had in flight is
            // sent again from the acknowledged position.
            if let Some((connection, _)) = self.open.take() {
                broker::close(connection).await;
            }
        }
        published
    }
}

/// Where the next unshipped line is: its segment, byte offset and sequence number.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Cursor {
    segment: PathBuf,
    offset: u64,
    seq: u64,
}

pub struct Shipper {
    spool: super::Spool,
    dir: PathBuf,
    instance: String,
    destination: Destination,
    /// How many lines (a sequence number) the writer has handed to the kernel.
    written: watch::Receiver<u64>,
    /// The writer wrote its last lines (at shutdown).
    finished: watch::Receiver<bool>,
    metrics: SpoolMetrics,
    /// Acknowledged: every line before this is stored centrally.
    acked: u64,
    cursor: Option<Cursor>,
}

impl Shipper {
    pub fn new(spool: super::Spool, destination: Destination, metrics: SpoolMetrics) -> Self {
        let dir = spool.dir().to_owned();
        let acked = read_shipped(&dir);
        Self {
            instance: spool.instance(),
            written: spool.written(),
            finished: spool.finished(),
            spool,
            dir,
            destination,
            metrics,
            acked,
            cursor: None,
        }
    }

    pub async fn run(mut self, mut stop: Stopping) {
        let mut backoff = FIRST_BACKOFF;
        let mut failing = false;
        loop {
            let written = *self.written.borrow_and_update();
            self.metrics
                .unshipped
                .set(written.saturating_sub(self.acked) as i64);
            let wait = if written <= self.acked {
                self.metrics.oldest_unshipped.set(0);
                None
            } else {
                match self.ship_once().await {
                    Ok(full) => {
                        if failing {
                            tracing::info!("shipping decisions again");
                        }
                        failing = false;
                        backoff = FIRST_BACKOFF;
                        // A full batch means more is waiting: the next goes at once, not
                        // when the writer next writes (after a burst, that could be the
                        // next checkpoint, seconds away).
                        Some(if full { Duration::ZERO } else { PACE })
                    }
                    Err(e) => {
                        self.metrics.ship_errors.inc();
                        if !failing {
                            tracing::warn!(error = %e,
                                "shipping decisions failed; the spool keeps them and retries");
                        }
                        failing = true;
                        let wait = backoff;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        Some(wait)
                    }
                }
            };
            // Wait out the pause (or, with none, for new lines); the backlog gauge follows
            // the writer meanwhile, so an outage shows as it grows.
            let until = wait.map(|d| tokio::time::Instant::now() + d);
            loop {
                tokio::select! {
                    () = &mut stop => return self.last_lines().await,
                    () = tokio::time::sleep_until(until.unwrap_or_else(tokio::time::Instant::now)),
                        if until.is_some() => break,
                    changed = self.written.changed() => {
                        let written = *self.written.borrow_and_update();
                        self.metrics
                            .unshipped
                            .set(written.saturating_sub(self.acked) as i64);
                        if until.is_none() || changed.is_err() {
                            break;
                        }
                    }
                }
            }
        }
    }

    /// At shutdown: once the writer wrote its last lines (the final checkpoint), sends
    /// what is left, within `LAST_SHIPPING` (a pod's spool may go with the pod).
    async fn last_lines(mut self) {
        let deadline = tokio::time::Instant::now() + LAST_SHIPPING;
        let sent = tokio::time::timeout_at(deadline, async {
            let _ = self.finished.wait_for(|f| *f).await;
            while *self.written.borrow() > self.acked {
                if let Err(e) = self.ship_once().await {
                    // Retried until the deadline: a busy control plane may answer late.
                    tracing::debug!(error = %e, "shipping the last decisions failed");
                    tokio::time::sleep(PACE).await;
                }
            }
        })
        .await;
        if sent.is_err() {
            tracing::warn!(
                unshipped = self.written.borrow().saturating_sub(self.acked),
                "stopping with decisions not yet shipped; they are sent at the next start"
            );
        }
    }

    /// Sends one batch from the cursor; `Ok(true)` when it was full (more is waiting).
    async fn ship_once(&mut self) -> Result<bool, String> {
        let cursor = match self.cursor.clone() {
            Some(c) => c,
            None => locate(&self.dir, self.acked).map_err(|e| e.to_string())?,
        };
        let (batch, lines, end) = read_batch(&self.dir, &cursor).map_err(|e| e.to_string())?;
        if lines == 0 {
            self.cursor = Some(end);
            return Ok(false);
        }
        if let Some(written) = first_line_time(&batch) {
            self.metrics.oldest_unshipped.set(written);
        }
        let sent_through = cursor.seq + lines;
        // Where the receiving end says the chain goes on: the control plane answers with
        // what it expects next; a broker's confirm means the whole batch is kept.
        let next_seq = match &mut self.destination {
            Destination::ControlPlane(channel) => {
                channel
                    .ship(&self.instance, batch)
                    .await
                    .map_err(|e| e.to_string())?
                    .next_seq
            }
            Destination::Broker(link) => {
                link.publish(&self.instance, batch).await?;
                sent_through
            }
        };
        let full = lines as usize >= MAX_BATCH_LINES
            || end.offset - cursor.offset >= (MAX_BATCH_BYTES / 2) as u64;
        self.cursor = if next_seq == sent_through {
            Some(end)
        } else {
            // The control plane expects another line next (it lost what it had, or this
            // spool was shipped from elsewhere): find it again.
            tracing::warn!(
                expected = next_seq,
                sent_through,
                "the control plane's position differs from the batch just sent"
            );
            None
        };
        let newly = next_seq.saturating_sub(self.acked);
        self.metrics.shipped.inc_by(newly);
        self.acked = next_seq;
        write_atomic(
            &self.dir.join(SHIPPED_FILE),
            format!("{}\n", self.acked).as_bytes(),
            false,
        )
        .map_err(|e| format!("recording the shipped position: {e}"))?;
        self.delete_shipped_segments();
        Ok(full)
    }

    /// Deletes every segment whose lines are all acknowledged, never the newest. The
    /// cursor may be at the end of one of them (a batch that ended exactly at a segment's
    /// end): it is then found again, in the next segment.
    fn delete_shipped_segments(&mut self) {
        let Ok(all) = segments(&self.dir) else {
            return;
        };
        for pair in all.windows(2) {
            let next_first = segment_first_seq(&pair[1]).unwrap_or(0);
            if next_first > self.acked {
                break;
            }
            let len = std::fs::metadata(&pair[0]).map_or(0, |m| m.len());
            match std::fs::remove_file(&pair[0]) {
                Ok(()) => {
                    self.spool.released(len);
                    if self.cursor.as_ref().is_some_and(|c| c.segment == pair[0]) {
                        self.cursor = None;
                    }
                }
                Err(e) => tracing::warn!(error = %e, segment = %pair[0].display(),
                    "deleting a shipped decision segment failed"),
            }
        }
    }
}

/// When the batch's first line was written (Unix seconds), from its `time`.
fn first_line_time(batch: &[u8]) -> Option<i64> {
    let first = batch.split(|b| *b == b'\n').next()?;
    let line: palisade_contract::decisions::Line = serde_json::from_slice(first).ok()?;
    time::OffsetDateTime::parse(&line.time, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(time::OffsetDateTime::unix_timestamp)
}

fn read_shipped(dir: &Path) -> u64 {
    std::fs::read_to_string(dir.join(SHIPPED_FILE))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// The cursor at line `seq`: in the last segment starting at or before it (or the first
/// segment, when the lines before it are gone).
fn locate(dir: &Path, seq: u64) -> std::io::Result<Cursor> {
    let all = segments(dir)?;
    let Some(segment) = all
        .iter()
        .rev()
        .find(|p| segment_first_seq(p).is_some_and(|f| f <= seq))
        .or(all.first())
        .cloned()
    else {
        return Err(std::io::Error::other("the decision spool has no segment"));
    };
    let first = segment_first_seq(&segment).unwrap_or(0);
    let mut cursor = Cursor {
        segment,
        offset: 0,
        seq: first,
    };
    if first >= seq {
        return Ok(cursor);
    }
    // Skip the lines before `seq`.
    let mut bytes = Vec::new();
    File::open(&cursor.segment)?.read_to_end(&mut bytes)?;
    for line in bytes.split_inclusive(|b| *b == b'\n') {
        if cursor.seq == seq || !line.ends_with(b"\n") {
            break;
        }
        cursor.offset += line.len() as u64;
        cursor.seq += 1;
    }
    Ok(cursor)
}

/// Whole lines from the cursor, at most a batch; where they end. At the end of a segment
/// with a newer one beside it, the cursor moves to the newer one.
fn read_batch(dir: &Path, cursor: &Cursor) -> std::io::Result<(Vec<u8>, u64, Cursor)> {
    let mut file = File::open(&cursor.segment)?;
    file.seek(SeekFrom::Start(cursor.offset))?;
    let mut bytes = Vec::new();
    file.take(MAX_BATCH_BYTES as u64).read_to_end(&mut bytes)?;
    let mut lines = 0u64;
    let mut len = 0usize;
    for line in bytes.split_inclusive(|b| *b == b'\n') {
        if !line.ends_with(b"\n") || lines as usize >= MAX_BATCH_LINES {
            break;
        }
        len += line.len();
        lines += 1;
    }
    bytes.truncate(len);
    let mut end = Cursor {
        segment: cursor.segment.clone(),
        offset: cursor.offset + len as u64,
        seq: cursor.seq + lines,
    };
    if lines == 0 {
        // Nothing more here: a newer segment means this one is finished.
        let newer = segments(dir)?.into_iter().find(|p| {
            segment_first_seq(p).is_some_and(|f| f >= cursor.seq) && *p != cursor.segment
        });
        if let Some(next) = newer {
            end = Cursor {
                seq: segment_first_seq(&next).unwrap_or(cursor.seq),
                segment: next,
                offset: 0,
            };
        }
    }
    Ok((bytes, lines, end))
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_contract::decisions::{Chain, segment_name};

    /// Two segments of 3 and 2 lines.
    fn spool(dir: &Path) {
        let mut chain = Chain::new("i1");
        let mut first = Vec::new();
        for i in 0..3 {
            first.extend(chain.decision("t", &serde_json::json!({ "i": i })));
        }
        std::fs::write(dir.join(segment_name(0)), first).unwrap();
        let mut second = Vec::new();
        for i in 3..5 {
            second.extend(chain.decision("t", &serde_json::json!({ "i": i })));
        }
        // The newest segment's last line is still being written.
        second.extend_from_slice(b"{\"v\":1,\"inst");
        std::fs::write(dir.join(segment_name(3)), second).unwrap();
    }

    #[test]
    fn batches_are_whole_lines_in_order_across_segments() {
        let dir = tempfile::tempdir().unwrap();
        spool(dir.path());
        let at = locate(dir.path(), 1).unwrap();
        assert_eq!(
            (at.seq, at.segment.clone()),
            (1, dir.path().join(segment_name(0)))
        );
        let (batch, lines, end) = read_batch(dir.path(), &at).unwrap();
        assert_eq!(lines, 2);
        assert!(batch.ends_with(b"\n"));
        assert!(String::from_utf8(batch).unwrap().contains("\"seq\":1,"));
        // The end of the first segment moves on to the second...
        let (_, lines, next) = read_batch(dir.path(), &end).unwrap();
        assert_eq!((lines, next.seq, next.offset), (0, 3, 0));
        // ... whose unfinished last line is not sent.
        let (batch, lines, end) = read_batch(dir.path(), &next).unwrap();
        assert_eq!((lines, end.seq), (2, 5));
        assert_eq!(String::from_utf8(batch).unwrap().lines().count(), 2);
        // Located directly, past the segment boundary.
        assert_eq!(locate(dir.path(), 4).unwrap().seq, 4);
        assert_eq!(locate(dir.path(), 3).unwrap().offset, 0);
    }
}
