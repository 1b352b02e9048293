//! The durable decision spool (`--decision-dir`): every decision appended to a hash-chained
//! log ([`palisade_contract::decisions`]) that reaches the operating system before the
//! outcome it describes leaves the sidecar, signed at intervals with the workload's key.
//!
//! **Group commit.** A path that decided appends its line to a shared buffer (a mutex, a
//! SHA-256 of ~600 bytes, encoded in place) and waits until the writer task has handed the
//! buffer to the kernel with one `write(2)`; every decision made meanwhile rides the same
//! call. Under load that is one system call per batch, not per request; at rest, one per
//! request, made by the writer task. (Making the writer yield once before it takes the
//! buffer, so that the tasks already ready on its thread join the batch, was measured and
//! did not help: BENCHMARKS.md.) An AMQP publish does not wait here at all: the relay
//! holds the allowed frames in its buffer for the broker until their lines are written
//! ([`Spool::append_json_now`], [`Spool::written_through`]). (A
//! memory-mapped segment would need no call at all, but
//! `unsafe` is forbidden in this workspace and a mapped file on a full disk fails with
//! SIGBUS instead of an error.)
//!
//! **What survives what.** Once `write(2)` returned the line is in the page cache: a
//! `kill -9` of the sidecar loses no decision whose response, close or publish outcome a
//! client saw (the outcome waits for the write). A machine crash loses at most the lines
//! written since the last `fdatasync`, run every `--decision-fsync-interval` (default 1 s)
//! and at shutdown. A line cut short by a crash mid-write is cut off at start and the chain
//! goes on from the last whole line.
//!
//! **Checkpoints.** Every `--decision-checkpoint-interval` (default 10 s) with new lines, and
//! at shutdown, the writer appends a checkpoint signed with the workload's current key and
//! also writes it to `head`, so a log cut short behind it shows in `palisade audit verify`.
//!
//! Layout: `instance` (this writer's id, kept across restarts so the sequence goes on),
//! `segment-<first seq>.jsonl` (append-only, a new one past `--decision-segment-max`), `head`.
//!
//! **Shipping** ([`ship`]): what reached the kernel is posted to the control plane, and a
//! segment is deleted once all of it is stored there.
//!
//! Not yet here (the decision-log issue's next steps): the size bound and overflow rule.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use palisade_contract::decisions::{
    Chain, HEAD_FILE, INSTANCE_FILE, Line, line_hash, segment_first_seq, segment_name, segments,
    valid_instance,
};
use palisade_contract::private_files::{ensure_private_dir, write_atomic};
use palisade_contract::process::Stopping;
use palisade_contract::tls::IdentitySlot;
use serde::Serialize;
use tokio::sync::{Notify, watch};

use crate::metrics::SpoolMetrics;

pub mod ship;

/// A new segment is started once the current one is past this size (the default of
/// `--decision-segment-max`).
pub const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;

/// `--decision-*`.
#[derive(Debug, Clone)]
pub struct DecisionLogSettings {
    pub dir: PathBuf,
    pub fsync_interval: Duration,
    pub checkpoint_interval: Duration,
    pub ship: DecisionShip,
    /// `--decision-spool-max`: bytes of segments past which the overflow rule applies.
    pub spool_max: u64,
    pub overflow: Overflow,
    /// `--decision-segment-max`: a new segment is started past this size (the shipper
    /// deletes a segment once all of it is stored centrally).
    pub segment_max: u64,
}

/// `--decision-overflow`: what happens once the spool holds `--decision-spool-max` bytes
/// (shipping fell behind).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Overflow {
    /// New requests get 503, new connections and publishes are refused (each counted; the
    /// refusals themselves go into a gap entry, so they cannot fill the disk either).
    Refuse,
    /// Traffic goes on; its decisions are not written, and a gap entry in the chain says
    /// how many and which sequence numbers, so verification shows exactly what is missing.
    Drop,
}

/// The reason of a refusal made because the spool is full (`--decision-overflow refuse`).
pub const LOG_FULL: &str = "the decision log is full (shipping to the control plane fell behind)";

/// The reason of the gap entries that account for allowed publishes `--amqp-audit-sample`
/// left out.
pub const SAMPLED: &str = "sampled out: --amqp-audit-sample records one allowed publish in N";

const DROPPED: &str = "dropped: the decision spool was full";
const REFUSED: &str = "refused: the decision spool was full";

/// `--decision-ship`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecisionShip {
    /// To the control plane, over the sidecar API (mTLS); segments deleted once stored.
    ControlPlane,
    /// To a RabbitMQ queue (`amqp://` or `amqps://`), each batch signed, with publisher
    /// confirms; segments deleted once confirmed ([`palisade_contract::decisions::broker`]).
    Broker { url: String, queue: String },
    /// Not shipped.
    Off,
}

impl DecisionShip {
    /// Reads `control-plane`, `off` or a broker URL (the queue is `--decision-queue`).
    pub fn parse(s: &str, queue: &str) -> Result<Self, String> {
        match s {
            "control-plane" => Ok(Self::ControlPlane),
            "off" => Ok(Self::Off),
            url if url.starts_with("amqp://") || url.starts_with("amqps://") => Ok(Self::Broker {
                url: url.to_owned(),
                queue: queue.to_owned(),
            }),
            other => Err(format!(
                "--decision-ship {other:?}: expected control-plane, off, or an amqp:// or amqps:// URL"
            )),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("the decision directory {dir}: {source}")]
    Io {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("the decision directory {dir} holds {found}'s log, not {instance}'s")]
    Foreign {
        dir: PathBuf,
        found: String,
        instance: String,
    },
    #[error("the decision log's writer has stopped")]
    Stopped,
}

struct State {
    chain: Chain,
    /// Lines appended and not yet handed to the kernel.
    buf: Vec<u8>,
    /// The sequence number after the last line in `buf` (skipped numbers of a gap not yet
    /// written are past it).
    through: u64,
    /// Lines since the last checkpoint.
    unsigned: u64,
    /// Decisions not written since the spool filled up: the first skipped number, why.
    gap: Option<(u64, &'static str)>,
}

impl State {
    /// Writes the gap entry for the numbers skipped so far, if any.
    fn close_gap(&mut self, time: &str) {
        if let Some((first, reason)) = self.gap.take() {
            let line = self.chain.gap(time, first, reason);
            self.buf.extend_from_slice(&line);
            self.through = self.chain.next_seq();
            self.unsigned += 1;
        }
    }
}

/// The spool; cheap to clone.
#[derive(Clone)]
pub struct Spool {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<State>,
    /// How many lines (a sequence number) have reached the kernel.
    written: watch::Sender<u64>,
    wake: Notify,
    dir: PathBuf,
    identity: Arc<IdentitySlot>,
    settings: DecisionLogSettings,
    /// Taken before `state` by whoever writes, so batches reach the file in chain order.
    file: Mutex<Segment>,
    /// The writer task has stopped: an append writes its line itself.
    closed: std::sync::atomic::AtomicBool,
    /// Bytes in the segments (written, not yet deleted by the shipper).
    bytes: std::sync::atomic::AtomicU64,
    /// The file system holding the spool has less than `LOW_SPACE_BYTES` free: the spool
    /// counts as full, whatever its own size.
    low_space: std::sync::atomic::AtomicBool,
    /// Bytes written since free space was last looked at.
    unchecked: std::sync::atomic::AtomicU64,
    /// The writer's last batch and checkpoint are written (what the shipper waits for at
    /// shutdown, to send them too).
    finished: watch::Sender<bool>,
    metrics: SpoolMetrics,
}

struct Segment {
    file: File,
    bytes: u64,
    /// The buffer the last batch was written from, emptied: swapped with the state's for
    /// the next batch, so a batch costs no allocation (and no large free, which makes
    /// glibc's allocator consolidate its heap).
    spare: Vec<u8>,
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool")
            .field("dir", &self.inner.dir)
            .finish_non_exhaustive()
    }
}

impl Spool {
    /// Opens (or creates) the spool in `settings.dir` and resumes its chain. A directory that
    /// cannot be created or written is an error here, at start.
    pub fn open(
        settings: DecisionLogSettings,
        identity: Arc<IdentitySlot>,
        metrics: SpoolMetrics,
    ) -> Result<Self, SpoolError> {
        let dir = settings.dir.clone();
        let io = |source| SpoolError::Io {
            dir: dir.clone(),
            source,
        };
        ensure_private_dir(&dir).map_err(io)?;
        let free = free_bytes(&dir).map_err(io)?;
        if free < MIN_FREE_BYTES {
            return Err(io(std::io::Error::other(format!(
                "only {free} bytes are free there (at least {MIN_FREE_BYTES} are needed to start)"
            ))));
        }
        let instance_path = dir.join(INSTANCE_FILE);
        let instance = match std::fs::read_to_string(&instance_path) {
            Ok(id) => id.trim().to_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let id = palisade_contract::request_id();
                write_atomic(&instance_path, format!("{id}\n").as_bytes(), true).map_err(io)?;
                id
            }
            Err(e) => return Err(io(e)),
        };
        if !valid_instance(&instance) {
            return Err(io(std::io::Error::other(format!(
                "{} holds {instance:?}, not an instance id (1 to 64 letters, digits, - or _)",
                instance_path.display()
            ))));
        }
        let (chain, segment) = match segments(&dir).map_err(io)?.pop() {
            Some(last) => resume(&dir, &last, &instance)?,
            None => {
                let path = dir.join(segment_name(0));
                (Chain::new(instance), open_segment(&path).map_err(io)?)
            }
        };
        let next = chain.next_seq();
        let mut bytes = 0;
        for path in segments(&dir).map_err(io)? {
            bytes += std::fs::metadata(&path).map_err(io)?.len();
        }
        metrics.bytes.set(bytes as i64);
        Ok(Self {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    chain,
                    buf: Vec::with_capacity(64 * 1024),
                    through: next,
                    unsigned: 0,
                    gap: None,
                }),
                bytes: std::sync::atomic::AtomicU64::new(bytes),
                low_space: std::sync::atomic::AtomicBool::new(false),
                unchecked: std::sync::atomic::AtomicU64::new(0),
                written: watch::Sender::new(next),
                wake: Notify::new(),
                dir,
                identity,
                settings,
                file: Mutex::new(segment),
                closed: std::sync::atomic::AtomicBool::new(false),
                finished: watch::Sender::new(false),
                metrics,
            }),
        })
    }

    /// How many lines (a sequence number) have reached the kernel, as it changes.
    pub fn written(&self) -> watch::Receiver<u64> {
        self.inner.written.subscribe()
    }

    /// Turns true once the writer wrote, signed and synced its last lines.
    pub fn finished(&self) -> watch::Receiver<bool> {
        self.inner.finished.subscribe()
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    pub fn instance(&self) -> String {
        self.lock().chain.instance().to_owned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends `record` and returns once its line has reached the kernel.
    pub async fn append<R: Serialize>(&self, time: &str, record: &R) -> Result<u64, SpoolError> {
        let json = serde_json::to_vec(record).expect("a record always serializes");
        self.append_json(time, &json, false).await
    }

    /// Whether the spool holds `--decision-spool-max` bytes or more, or its file system is
    /// nearly out of space.
    pub fn full(&self) -> bool {
        self.inner.bytes.load(std::sync::atomic::Ordering::Relaxed) >= self.inner.settings.spool_max
            || self
                .inner
                .low_space
                .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Looks at the free space of the spool's file system (the writer does, every fsync
    /// interval and after each `CHECK_SPACE_EVERY` bytes written).
    fn check_space(&self) {
        self.inner
            .unchecked
            .store(0, std::sync::atomic::Ordering::Relaxed);
        let low = free_bytes(&self.inner.dir).map_or(true, |free| free < LOW_SPACE_BYTES);
        let was = self
            .inner
            .low_space
            .swap(low, std::sync::atomic::Ordering::Relaxed);
        if low != was {
            if low {
                tracing::error!(dir = %self.inner.dir.display(),
                    "the decision directory is nearly out of space; --decision-overflow applies");
            } else {
                tracing::info!(dir = %self.inner.dir.display(),
                    "the decision directory has space again");
            }
        }
    }

    /// Whether new work may be admitted: not when the spool is full and the rule is
    /// `refuse` (the caller refuses with [`LOG_FULL`] and counts it).
    pub fn admits(&self) -> bool {
        let admits = !(self.inner.settings.overflow == Overflow::Refuse && self.full());
        if !admits {
            self.inner.metrics.refused.inc();
        }
        admits
    }

    /// The spool's segments lost `n` bytes (the shipper deleted what the control plane
    /// stored).
    pub fn released(&self, n: u64) {
        self.inner
            .bytes
            .fetch_sub(n, std::sync::atomic::Ordering::Relaxed);
        self.inner.metrics.bytes.sub(n as i64);
    }

    /// Accounts for a decision sampling leaves out (`--amqp-audit-sample`): it keeps its
    /// sequence number and goes into a gap entry with the reason [`SAMPLED`] (written with
    /// the next record or checkpoint), so the log still shows how many were left out and
    /// where. Nothing waits: there is no line of its own to reach the kernel.
    pub fn sampled_out(&self) {
        let mut st = self.lock();
        if st.gap.is_some_and(|(_, r)| r != SAMPLED) {
            st.close_gap(&palisade_contract::now_rfc3339());
        }
        let seq = st.chain.skip();
        st.gap.get_or_insert((seq, SAMPLED));
    }

    /// The same for a record already encoded as JSON. `refusal`: the record of a refusal
    /// made because the spool is full, which then goes into a gap entry rather than onto
    /// the full disk. While the spool is full under `drop`, every record goes there; such
    /// an append returns at once, with the sequence number the record was given.
    pub async fn append_json(
        &self,
        time: &str,
        record: &[u8],
        refusal: bool,
    ) -> Result<u64, SpoolError> {
        let (seq, owed) = self.append_json_now(time, record, refusal)?;
        if let Some(through) = owed {
            self.written_through(through).await?;
        }
        Ok(seq)
    }

    /// [`Self::append_json`] without the wait: the record's sequence number, and how many
    /// lines must have reached the kernel (pass it to [`Self::written_through`]) before
    /// the outcome it describes may leave; `None` when there is nothing to wait for.
    pub fn append_json_now(
        &self,
        time: &str,
        record: &[u8],
        refusal: bool,
    ) -> Result<(u64, Option<u64>), SpoolError> {
        let next = {
            let mut st = self.lock();
            let overflow = self.inner.settings.overflow;
            if self.full() && (overflow == Overflow::Drop || refusal) {
                let reason = if refusal { REFUSED } else { DROPPED };
                // One gap entry per reason: a different one closes the open gap first.
                if st.gap.is_some_and(|(_, r)| r != reason) {
                    st.close_gap(time);
                }
                let seq = st.chain.skip();
                st.gap.get_or_insert((seq, reason));
                self.inner.metrics.dropped.inc();
                return Ok((seq, None));
            }
            st.close_gap(time);
            let State { chain, buf, .. } = &mut *st;
            chain.decision_json_into(buf, time, record);
            st.unsigned += 1;
            st.through = st.chain.next_seq();
            st.chain.next_seq()
        };
        if self.inner.closed.load(std::sync::atomic::Ordering::SeqCst) {
            // A decision made after the writer stopped (a connection outliving the
            // listeners): written here, never waited on forever.
            self.flush().map_err(|source| SpoolError::Io {
                dir: self.inner.dir.clone(),
                source,
            })?;
            return Ok((next - 1, None));
        }
        self.inner.wake.notify_one();
        Ok((next - 1, Some(next)))
    }

    /// Returns once the first `through` lines have reached the kernel.
    pub async fn written_through(&self, through: u64) -> Result<(), SpoolError> {
        if *self.inner.written.borrow() >= through {
            return Ok(());
        }
        let mut written = self.inner.written.subscribe();
        written
            .wait_for(|w| *w >= through)
            .await
            .map(|_| ())
            .map_err(|_| SpoolError::Stopped)
    }

    /// Writes what is buffered (one `write(2)`), then says how far the kernel has it.
    fn flush(&self) -> std::io::Result<()> {
        let mut segment = self.inner.file.lock().unwrap_or_else(|p| p.into_inner());
        let mut buf = std::mem::take(&mut segment.spare);
        let through = {
            let mut st = self.lock();
            if st.buf.is_empty() {
                segment.spare = buf;
                return Ok(());
            }
            std::mem::swap(&mut st.buf, &mut buf);
            st.through
        };
        if let Err(e) = segment.file.write_all(&buf) {
            if e.kind() == std::io::ErrorKind::StorageFull {
                // Whatever the last look at the free space said: new work gets the
                // overflow rule now.
                self.inner
                    .low_space
                    .store(true, std::sync::atomic::Ordering::Relaxed);
            }
            // Put the lines back in front of what came since: nothing is lost, the writer
            // retries, and the decisions waiting on them wait (no outcome without its line).
            let mut st = self.lock();
            let mut again = buf;
            again.extend_from_slice(&st.buf);
            st.buf = again;
            self.inner.metrics.write_errors.inc();
            return Err(e);
        }
        segment.bytes += buf.len() as u64;
        self.inner
            .bytes
            .fetch_add(buf.len() as u64, std::sync::atomic::Ordering::Relaxed);
        self.inner.metrics.bytes.add(buf.len() as i64);
        let unchecked = self
            .inner
            .unchecked
            .fetch_add(buf.len() as u64, std::sync::atomic::Ordering::Relaxed);
        if unchecked + buf.len() as u64 >= CHECK_SPACE_EVERY {
            self.check_space();
        }
        let before = *self.inner.written.borrow();
        self.inner.metrics.written.inc_by(through - before);
        buf.clear();
        if buf.capacity() > SPARE_BYTES {
            // A backlog made it large once; no need to keep that much.
            buf.shrink_to(SPARE_BYTES);
        }
        segment.spare = buf;
        if segment.bytes >= self.inner.settings.segment_max {
            let _ = segment.file.sync_data();
            let spare = std::mem::take(&mut segment.spare);
            *segment = open_segment(&self.inner.dir.join(segment_name(through)))?;
            segment.spare = spare;
        }
        drop(segment);
        self.inner.written.send_replace(through);
        Ok(())
    }

    /// Appends a checkpoint signed with the workload's key (when it has one and there is
    /// something new to sign) and makes it the `head`.
    fn checkpoint(&self) -> std::io::Result<()> {
        let Some(identity) = self.inner.identity.valid() else {
            return Ok(());
        };
        let line = {
            let mut st = self.lock();
            let time = palisade_contract::now_rfc3339();
            // A gap is written before the checkpoint that covers it, full spool or not (two
            // small lines).
            st.close_gap(&time);
            if st.unsigned == 0 {
                return Ok(());
            }
            let Some(line) = st.chain.signed_checkpoint(&identity, &time) else {
                tracing::error!("the workload key cannot sign a decision-log checkpoint");
                return Ok(());
            };
            st.buf.extend_from_slice(&line);
            st.through = st.chain.next_seq();
            st.unsigned = 0;
            line
        };
        self.flush()?;
        write_atomic(&self.inner.dir.join(HEAD_FILE), &line, false)
    }

    fn sync(&self) {
        let segment = self.inner.file.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = segment.file.sync_data() {
            tracing::warn!(error = %e, "fdatasync of the decision log failed");
        }
    }

    /// The writer: hands buffered lines to the kernel as soon as there are any, syncs and
    /// checkpoints on their intervals, and at `stop` writes, checkpoints and syncs a last
    /// time.
    pub async fn run(self, mut stop: Stopping) {
        let every = |period| tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        let mut fsync = every(self.inner.settings.fsync_interval);
        let mut checkpoint = every(self.inner.settings.checkpoint_interval);
        fsync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        checkpoint.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tokio::select! {
                () = self.inner.wake.notified() => {}
                _ = fsync.tick() => {
                    self.sync();
                    self.check_space();
                }
                _ = checkpoint.tick() => {
                    if let Err(e) = self.checkpoint() {
                        tracing::error!(error = %e, "writing a decision-log checkpoint failed");
                    }
                }
                () = &mut stop => break,
                () = tokio::time::sleep(Duration::from_millis(100)), if failing => {}
            }
            match self.flush() {
                Ok(()) => failing = false,
                Err(e) => {
                    if !failing {
                        tracing::error!(error = %e, dir = %self.inner.dir.display(),
                            "writing the decision log failed; decisions wait until it can be written");
                    }
                    failing = true;
                }
            }
        }
        // From here on an append writes its own line; then the last batch, signed.
        self.inner
            .closed
            .store(true, std::sync::atomic::Ordering::SeqCst);
        if let Err(e) = self.flush().and_then(|()| self.checkpoint()) {
            tracing::error!(error = %e, "the last decision-log write failed");
        }
        self.sync();
        self.inner.finished.send_replace(true);
    }
}

/// Below this much free space on its file system the spool counts as full (room left for
/// the lines of work already admitted, the gap entry and the checkpoints).
const LOW_SPACE_BYTES: u64 = 4 << 20;

/// The most a batch buffer keeps between batches.
const SPARE_BYTES: usize = 256 << 10;

/// Free space is looked at after this many bytes written (and every fsync interval).
const CHECK_SPACE_EVERY: u64 = 256 << 10;

/// A spool starts only with this much free space (a full disk is an error at start, the
/// overflow rule at run time).
const MIN_FREE_BYTES: u64 = LOW_SPACE_BYTES;

/// Bytes an unprivileged writer may still use on the file system holding `dir`.
fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    let stat = nix::sys::statvfs::statvfs(dir).map_err(std::io::Error::from)?;
    Ok(stat.blocks_available() as u64 * stat.fragment_size() as u64)
}

fn open_segment(path: &Path) -> std::io::Result<Segment> {
    let file = OpenOptions::new().create(true).append(true).open(path)?;
    let bytes = file.metadata()?.len();
    Ok(Segment {
        file,
        bytes,
        spare: Vec::new(),
    })
}

/// The chain as the last segment leaves it: an unfinished last line (a crash mid-write) is
/// cut off, and the sequence goes on from the last whole one.
fn resume(dir: &Path, last: &Path, instance: &str) -> Result<(Chain, Segment), SpoolError> {
    let io = |source| SpoolError::Io {
        dir: dir.to_owned(),
        source,
    };
    let mut bytes = Vec::new();
    File::open(last)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(io)?;
    let whole = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    if whole < bytes.len() {
        tracing::warn!(segment = %last.display(), bytes = bytes.len() - whole,
            "cutting off an unfinished last line of the decision log");
        let f = OpenOptions::new().write(true).open(last).map_err(io)?;
        f.set_len(whole as u64).map_err(io)?;
    }
    let lines = &bytes[..whole];
    let last_line = lines[..lines.len().saturating_sub(1)]
        .rsplit(|b| *b == b'\n')
        .next()
        .filter(|l| !l.is_empty());
    let chain = match last_line {
        None => {
            let first = segment_first_seq(last).unwrap_or(0);
            if first != 0 {
                return Err(io(std::io::Error::other(format!(
                    "{} is empty, so where the chain stands is unknown",
                    last.display()
                ))));
            }
            Chain::new(instance)
        }
        Some(line) => {
            let parsed: Line = serde_json::from_slice(line).map_err(|e| {
                io(std::io::Error::other(format!(
                    "the last line of {} is not a log line: {e}",
                    last.display()
                )))
            })?;
            if parsed.instance != instance {
                return Err(SpoolError::Foreign {
                    dir: dir.to_owned(),
                    found: parsed.instance,
                    instance: instance.to_owned(),
                });
            }
            Chain::resume(instance, parsed.seq + 1, line_hash(line))
        }
    };
    let mut segment = open_segment(last).map_err(io)?;
    segment.file.seek(SeekFrom::End(0)).map_err(io)?;
    Ok((chain, segment))
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_contract::decisions::verify::verify_dir;
    use palisade_contract::process::Tasks;

    fn metrics() -> SpoolMetrics {
        crate::metrics::ProxyMetrics::register(&prometheus::Registry::new())
            .unwrap()
            .spool
    }

    /// A trust bundle and an identity slot holding a workload certificate it trusts.
    fn signed_slot() -> (palisade_contract::tls::TrustBundle, Arc<IdentitySlot>) {
        let me = "spiffe://palisade.local/ns/shop/sa/orders";
        let (bundle, identity) = palisade_contract::signing::test_identity(me);
        let slot = IdentitySlot::new();
        slot.set(identity);
        (bundle, slot)
    }

    fn settings(dir: &Path) -> DecisionLogSettings {
        DecisionLogSettings {
            dir: dir.to_owned(),
            fsync_interval: Duration::from_millis(50),
            checkpoint_interval: Duration::from_secs(3600),
            ship: DecisionShip::Off,
            spool_max: 1 << 30,
            overflow: Overflow::Refuse,
            segment_max: SEGMENT_BYTES,
        }
    }

    /// Sampled-out decisions keep their numbers and are declared in gap entries: verify
    /// reports them (with the reason) and the log is clean; a different gap reason in
    /// between closes the open one.
    #[tokio::test]
    async fn sampled_out_decisions_are_declared_in_the_chain() {
        let (bundle, slot) = signed_slot();
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(settings(dir.path()), slot, metrics()).unwrap();
        let mut tasks = Tasks::new();
        let writer = spool.clone();
        tasks.spawn(|stop| writer.run(stop));
        for round in 0..3 {
            for _ in 0..9 {
                spool.sampled_out();
            }
            let seq = spool
                .append(
                    "2026-12-01T00:00:00Z",
                    &serde_json::json!({ "round": round }),
                )
                .await
                .unwrap();
            // Nine numbers skipped, one gap line, then this record.
            assert_eq!(seq, round * 11 + 10);
        }
        spool.sampled_out();
        tasks.shutdown().await;
        let (reports, rest) = verify_dir(dir.path(), &bundle).unwrap();
        assert!(rest.is_empty());
        let r = &reports[0];
        assert!(r.clean(), "{:?}", r.findings);
        assert_eq!((r.decisions, r.dropped), (3, 28), "{r:?}");
        assert_eq!(r.drop_reasons, [SAMPLED]);
    }

    #[tokio::test]
    async fn decisions_are_written_before_append_returns_and_the_chain_survives_a_restart() {
        let (bundle, slot) = signed_slot();
        let dir = tempfile::tempdir().unwrap();
        let counted = metrics();
        let spool = Spool::open(settings(dir.path()), slot.clone(), counted.clone()).unwrap();
        let mut tasks = Tasks::new();
        let writer = spool.clone();
        tasks.spawn(|stop| writer.run(stop));
        let appends: Vec<_> = (0..50)
            .map(|i| {
                let spool = spool.clone();
                tokio::spawn(async move {
                    spool
                        .append("2026-12-01T00:00:00Z", &serde_json::json!({ "i": i }))
                        .await
                        .unwrap()
                })
            })
            .collect();
        let mut seqs = Vec::new();
        for a in appends {
            seqs.push(a.await.unwrap());
        }
        seqs.sort_unstable();
        assert_eq!(seqs, (0..50).collect::<Vec<_>>());
        // Every append that returned is in the file already (no shutdown, no sync needed).
        let on_disk = std::fs::read_to_string(dir.path().join(segment_name(0))).unwrap();
        assert_eq!(on_disk.lines().count(), 50);
        assert_eq!(counted.written.get(), 50);
        assert_eq!(counted.bytes.get(), on_disk.len() as i64);
        tasks.shutdown().await;
        // Shutdown signed what was written: 50 decisions and one checkpoint, clean.
        let (reports, rest) = verify_dir(dir.path(), &bundle).unwrap();
        assert!(rest.is_empty());
        assert!(reports[0].clean(), "{:?}", reports[0].findings);
        assert_eq!((reports[0].decisions, reports[0].checkpoints), (50, 1));
        let instance = spool.instance();
        drop(spool);

        // A torn last line (a crash mid-write) is cut off; the chain goes on.
        let segment = dir.path().join(segment_name(0));
        let mut f = OpenOptions::new().append(true).open(&segment).unwrap();
        f.write_all(b"{\"v\":1,\"inst").unwrap();
        let spool = Spool::open(settings(dir.path()), slot, metrics()).unwrap();
        assert_eq!(spool.instance(), instance);
        let mut tasks = Tasks::new();
        let writer = spool.clone();
        tasks.spawn(|stop| writer.run(stop));
        let record = serde_json::json!({"after": "restart"});
        let seq = spool.append("2026-12-01T00:00:01Z", &record).await.unwrap();
        assert_eq!(seq, 51);
        tasks.shutdown().await;
        let (reports, _) = verify_dir(dir.path(), &bundle).unwrap();
        assert!(reports[0].clean(), "{:?}", reports[0].findings);
        assert_eq!((reports[0].decisions, reports[0].checkpoints), (51, 2));
    }

    #[tokio::test]
    async fn an_append_returns_only_once_its_line_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(settings(dir.path()), IdentitySlot::new(), metrics()).unwrap();
        let record = serde_json::json!({"decision": "deny"});
        // No writer yet: the decision is buffered, and the caller must not act on it.
        let waiting = tokio::time::timeout(
            Duration::from_millis(100),
            spool.append("2026-12-01T00:00:00Z", &record),
        )
        .await;
        assert!(
            waiting.is_err(),
            "an append returned before its line was written"
        );
        let segment = dir.path().join(segment_name(0));
        assert_eq!(std::fs::read(&segment).unwrap().len(), 0);
        let mut tasks = Tasks::new();
        let writer = spool.clone();
        tasks.spawn(|stop| writer.run(stop));
        assert_eq!(
            spool.append("2026-12-01T00:00:01Z", &record).await.unwrap(),
            1
        );
        // Both lines (the abandoned wait's decision too) are in the file once it returned.
        assert_eq!(
            std::fs::read_to_string(&segment).unwrap().lines().count(),
            2
        );
        tasks.shutdown().await;
        // After the writer stopped (listeners drained, a connection still deciding): the
        // line is written at once, not waited on forever.
        let late = spool.append("2026-12-01T00:00:02Z", &record);
        let seq = tokio::time::timeout(Duration::from_secs(5), late).await;
        assert_eq!(seq.expect("no hang").unwrap(), 2);
        assert_eq!(
            std::fs::read_to_string(&segment).unwrap().lines().count(),
            3
        );
    }

    #[tokio::test]
    async fn a_full_spool_drops_into_a_gap_or_refuses_and_verify_shows_exactly_that() {
        let (bundle, slot) = signed_slot();
        let dir = tempfile::tempdir().unwrap();
        let counted = metrics();
        let line = serde_json::json!({"decision": "allow", "path": "/x"});
        let mut s = settings(dir.path());
        s.spool_max = 2000;
        s.overflow = Overflow::Drop;
        let spool = Spool::open(s, slot.clone(), counted.clone()).unwrap();
        let mut tasks = Tasks::new();
        let writer = spool.clone();
        tasks.spawn(|stop| writer.run(stop));
        let mut written = 0;
        while !spool.full() {
            spool.append("t", &line).await.unwrap();
            written += 1;
        }
        // Full, under drop: traffic goes on (appends return at once), nothing is written.
        let size = std::fs::metadata(dir.path().join(segment_name(0)))
            .unwrap()
            .len();
        for _ in 0..7 {
            spool.append("t", &line).await.unwrap();
        }
        assert!(spool.admits(), "drop never refuses");
        assert_eq!(
            std::fs::metadata(dir.path().join(segment_name(0)))
                .unwrap()
                .len(),
            size
        );
        assert_eq!(counted.dropped.get(), 7);
        // Space returns (the shipper deleted segments): the gap is written before the next
        // decision, and the chain verifies, the 7 reported as dropped.
        spool.released(size);
        spool.append("t", &line).await.unwrap();
        tasks.shutdown().await;
        let (reports, _) = verify_dir(dir.path(), &bundle).unwrap();
        let r = &reports[0];
        assert!(r.clean(), "{:?}", r.findings);
        assert_eq!((r.decisions, r.dropped), (written + 1, 7));
        assert_eq!(r.drop_reasons, [DROPPED]);

        // Under refuse: nothing new is admitted (counted), and the refusals' own records
        // go into a gap instead of onto the full disk.
        let dir = tempfile::tempdir().unwrap();
        let counted = metrics();
        let mut s = settings(dir.path());
        s.spool_max = 2000;
        let spool = Spool::open(s, slot, counted.clone()).unwrap();
        let mut tasks = Tasks::new();
        let writer = spool.clone();
        tasks.spawn(|stop| writer.run(stop));
        while spool.admits() {
            spool.append("t", &line).await.unwrap();
        }
        assert_eq!(counted.refused.get(), 1);
        let refusal = serde_json::to_vec(&serde_json::json!({"reason": LOG_FULL})).unwrap();
        for _ in 0..3 {
            spool.append_json("t", &refusal, true).await.unwrap();
        }
        // An admitted decision still in flight when the spool filled is written.
        spool.append("t", &line).await.unwrap();
        tasks.shutdown().await;
        let (reports, _) = verify_dir(dir.path(), &bundle).unwrap();
        let r = &reports[0];
        assert!(r.clean(), "{:?}", r.findings);
        assert_eq!(r.dropped, 3);
        assert_eq!(r.drop_reasons, [REFUSED]);
    }

    #[test]
    fn an_unwritable_or_foreign_directory_is_refused_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, "x").unwrap();
        let err = Spool::open(settings(&file), IdentitySlot::new(), metrics()).unwrap_err();
        assert!(
            err.to_string().starts_with("the decision directory"),
            "{err}"
        );
        // Another writer's log under this instance file.
        let spool_dir = dir.path().join("spool");
        let mut chain = Chain::new("someone-else");
        std::fs::create_dir(&spool_dir).unwrap();
        std::fs::write(spool_dir.join(INSTANCE_FILE), "me\n").unwrap();
        std::fs::write(
            spool_dir.join(segment_name(0)),
            chain.decision("t", &serde_json::json!({})),
        )
        .unwrap();
        let err = Spool::open(settings(&spool_dir), IdentitySlot::new(), metrics()).unwrap_err();
        assert!(matches!(err, SpoolError::Foreign { .. }), "{err}");
        // An instance file that is no instance id (it goes into file names and URLs).
        std::fs::write(spool_dir.join(INSTANCE_FILE), "me&you\n").unwrap();
        let err = Spool::open(settings(&spool_dir), IdentitySlot::new(), metrics()).unwrap_err();
        assert!(err.to_string().contains("not an instance id"), "{err}");
    }
}
