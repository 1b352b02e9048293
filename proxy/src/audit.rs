//! Audit events: one JSON line per authorization decision, to stdout or a file.
//!
//! Every field is written by serde_json, so whatever a caller puts in a path or header can
//! never break a line or forge another event. Writes go through a channel to one writer
//! task, so a slow disk never holds a request, and a full channel is counted, not waited on.

use std::path::PathBuf;

use prometheus::IntCounter;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

/// How many events may wait for the writer before new ones are dropped (and counted).
const QUEUE: usize = 16 * 1024;
/// Most bytes gathered into one write.
const BATCH_BYTES: usize = 256 * 1024;
/// Under load, the shortest time between two writes (a line after a quiet spell is
/// written at once).
const FLUSH_INTERVAL: std::time::Duration = std::time::Duration::from_millis(20);

pub use palisade_contract::decisions::record::{AmqpRecord as AmqpAudit, Record as AuditEvent};

/// Where audit lines go.
#[derive(Debug, Clone)]
pub enum AuditTarget {
    Stdout,
    File(PathBuf),
}

impl std::str::FromStr for AuditTarget {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(if s == "stdout" || s == "-" {
            AuditTarget::Stdout
        } else {
            AuditTarget::File(PathBuf::from(s))
        })
    }
}

/// The handle components log through: the durable spool when `--decision-dir` is given
/// ([`crate::decision_log`]), and the line stream (`--audit-log`) for people and log
/// collectors.
#[derive(Debug, Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Vec<u8>>,
    dropped: IntCounter,
    spool: Option<crate::decision_log::Spool>,
}

impl AuditLog {
    /// Starts the writer task.
    pub async fn start(target: AuditTarget, dropped: IntCounter) -> std::io::Result<Self> {
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(QUEUE);
        let mut out: Box<dyn tokio::io::AsyncWrite + Send + Unpin> = match target {
            AuditTarget::Stdout => Box::new(tokio::io::stdout()),
            AuditTarget::File(path) => Box::new(
                tokio::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .await?,
            ),
        };
        tokio::spawn(async move {
            // A file write is a trip through tokio's blocking pool (thread hand-offs, the
            // sidecar's largest cost in the profiles when every line, then every small
            // batch, made one). So: a line after a quiet spell is written at once, but
            // within FLUSH_INTERVAL of the last write the writer sleeps out the interval
            // (no wake-up per line) and then takes everything queued: under load, one
            // write per interval.
            let mut batch = Vec::with_capacity(64 * 1024);
            let mut last_write = tokio::time::Instant::now() - FLUSH_INTERVAL;
            // A full batch means lines are still queued: the next write goes at once, so
            // the writer's pace is never capped at BATCH_BYTES per interval.
            let mut backlog = false;
            while let Some(line) = rx.recv().await {
                batch.clear();
                batch.extend_from_slice(&line);
                let deadline = last_write + FLUSH_INTERVAL;
                if !backlog && tokio::time::Instant::now() < deadline {
                    tokio::time::sleep_until(deadline).await;
                }
                while batch.len() < BATCH_BYTES {
                    match rx.try_recv() {
                        Ok(more) => batch.extend_from_slice(&more),
                        Err(_) => break,
                    }
                }
                backlog = batch.len() >= BATCH_BYTES;
                if out.write_all(&batch).await.is_err() {
                    break;
                }
                let _ = out.flush().await;
                last_write = tokio::time::Instant::now();
            }
            let _ = out.flush().await;
        });
        Ok(Self {
            tx,
            dropped,
            spool: None,
        })
    }

    /// Decisions go to `spool` too, durably.
    pub fn with_spool(self, spool: crate::decision_log::Spool) -> Self {
        Self {
            spool: Some(spool),
            ..self
        }
    }

    /// Records one decision: in the spool (returning once its line reached the kernel, so
    /// the caller may then let the outcome leave), and on the stream.
    /// The event is encoded once, for both.
    pub async fn decided(&self, event: &AuditEvent) {
        if let Some(through) = self.decided_owed(event) {
            // Boxed: the spool's wait would otherwise make every path's request future
            // larger, spool or not.
            let written: std::pin::Pin<Box<dyn Future<Output = ()> + Send + '_>> =
                Box::pin(self.settle(through));
            written.await;
        }
    }

    /// [`Self::decided`] without the wait: what to pass to [`Self::settle`] before the
    /// outcome leaves (`None`: nothing to wait for). For a path that holds its outcome in
    /// a buffer of its own, as the AMQP relay holds the frames it has for the broker, so
    /// that the publishes read together wait for one write of the spool, not one each.
    pub fn decided_owed(&self, event: &AuditEvent) -> Option<u64> {
        let mut line = encode(event)?;
        let owed = self.spool.as_ref().and_then(|spool| {
            spool
                .append_json_now(
                    &event.time,
                    &line,
                    event.reason.as_deref() == Some(crate::decision_log::LOG_FULL),
                )
                .map_err(|e| tracing::error!(error = %e, "a decision could not be recorded"))
                .ok()
                .and_then(|(_, owed)| owed)
        });
        line.push(b'\n');
        self.stream(line);
        owed
    }

    /// Returns once the spool has the lines [`Self::decided_owed`] said are owed.
    pub async fn settle(&self, through: u64) {
        if let Some(spool) = &self.spool
            && let Err(e) = spool.written_through(through).await
        {
            tracing::error!(error = %e, "a decision could not be recorded");
        }
    }

    /// A decision sampling leaves out: accounted for in the spool's chain (a gap entry
    /// with the reason), not written.
    pub fn sampled_out(&self) {
        if let Some(spool) = &self.spool {
            spool.sampled_out();
        }
    }

    /// Whether new work may be admitted: `false` only when the decision spool is full and
    /// `--decision-overflow refuse` applies; the caller then refuses with
    /// [`crate::decision_log::LOG_FULL`] as its reason (counted here).
    pub fn admits(&self) -> bool {
        self.spool.as_ref().is_none_or(|s| s.admits())
    }

    /// The stream copy only (best effort: a full queue drops the line and counts it).
    pub fn record(&self, event: &AuditEvent) {
        if let Some(mut line) = encode(event) {
            line.push(b'\n');
            self.stream(line);
        }
    }

    fn stream(&self, line: Vec<u8>) {
        if self.tx.try_send(line).is_err() {
            self.dropped.inc();
        }
    }
}

fn encode(event: &AuditEvent) -> Option<Vec<u8>> {
    serde_json::to_vec(event)
        .map_err(|e| tracing::error!(error = %e, "audit event could not be encoded"))
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn lines(path: &std::path::Path, want: usize) -> Vec<serde_json::Value> {
        for _ in 0..200 {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            if text.lines().count() >= want {
                return text
                    .lines()
                    .map(|l| serde_json::from_str(l).expect("every line is JSON"))
                    .collect();
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        panic!("fewer than {want} audit lines were written");
    }

    #[tokio::test]
    async fn a_burst_lands_whole_and_in_order_and_a_later_line_follows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let dropped = IntCounter::new("dropped", "dropped").unwrap();
        let log = AuditLog::start(AuditTarget::File(path.clone()), dropped.clone())
            .await
            .unwrap();
        let mut event = AuditEvent::begin("inbound", "http1");
        // Several full batches (each line is a few hundred bytes): none dropped, none
        // reordered.
        for i in 0..5000 {
            event.path = format!("/burst/{i}");
            log.record(&event);
        }
        let written = lines(&path, 5000).await;
        assert_eq!(dropped.get(), 0);
        for (i, line) in written.iter().enumerate() {
            assert_eq!(line["path"], format!("/burst/{i}"));
        }
        event.path = "/after".into();
        log.record(&event);
        let written = lines(&path, 5001).await;
        assert_eq!(written[5000]["path"], "/after");
    }
}
