//! The decision log's format: what a sidecar writes for every authorization decision, and
//! what makes the log provably complete and unaltered. The sidecar writes it, the control
//! plane's collector and `palisade audit verify` check it, by the rules here.
//!
//! A log is a sequence of JSON lines, one per entry, each naming its writer (`instance`, a
//! random id the sidecar keeps in its decision directory, so the sequence goes on across
//! restarts), its place (`seq`, from 0, no gaps) and the SHA-256 of the line before it
//! (`prev`, hex, 64 zeros for the first): a hash chain, so changing, removing or reordering
//! a line breaks the link to the next.
//!
//! ```json
//! {"v":1,"instance":"8f3a…","seq":41,"prev":"5d1c…","time":"2026-12-01T21:00:00.1Z","kind":"decision","record":{…}}
//! {"v":1,"instance":"8f3a…","seq":42,"prev":"a07e…","time":"2026-12-01T21:00:10Z","kind":"checkpoint","signer":"spiffe://…","jws":"…"}
//! ```
//!
//! A **checkpoint** entry signs the chain so far with the workload's own key (a detached
//! ES256 JWS with the certificate chain, [`crate::signing`], `typ`
//! `palisade-checkpoint+jws`). What it signs is a note in the spirit of C2SP's
//! `tlog-checkpoint`, rebuilt by the verifier from the entry itself, one field per line:
//!
//! ```text
//! palisade.dev/decisions/v1
//! <instance>
//! <seq of the checkpoint = number of entries before it>
//! <prev of the checkpoint = hex SHA-256 of the entry before it>
//! <signer SPIFFE ID>
//! <time of the checkpoint>
//! ```
//!
//! A **gap** entry accounts for decisions the writer did not record because its spool
//! was full (`--decision-overflow drop`, or the refusals of `refuse`): their sequence
//! numbers `first..=last` are skipped and the gap line, numbered `last + 1` and linked to
//! the last line written before them, says how many and why. A verifier reports them as
//! dropped, not as missing, so a log shows exactly what it does not hold:
//!
//! ```json
//! {"v":1,"instance":"8f3a…","seq":57,"prev":"c3d9…","time":"…","kind":"gap","first":43,"last":56,"reason":"dropped: the decision spool was full"}
//! ```
//!
//! With the trust bundle alone, then, anyone can check that every entry up to a checkpoint
//! is the one the workload wrote: a changed byte, a removed, inserted or reordered entry
//! breaks the chain the signature covers. Entries after the last checkpoint are only
//! chained, and [`verify`] reports how many.

use ring::digest::{SHA256, digest};
use serde::{Deserialize, Serialize};

pub mod broker;
pub mod record;
pub mod ship;
pub mod trail;
pub mod verify;

/// The format version every line carries.
pub const FORMAT: u32 = 1;

/// The `typ` of a checkpoint's signature.
pub const CHECKPOINT_TYP: &str = "palisade-checkpoint+jws";

/// The `typ` of the signature on a retention prune record (the central store's).
pub const PRUNE_TYP: &str = "palisade-prune+jws";

/// What a prune record signs: that `instance`'s records before `next_seq`, older than
/// `cutoff_ms` (Unix milliseconds), were pruned by retention, and that the first record kept
/// links to `head` (hex SHA-256 of the last one pruned). With it a verifier resumes the chain
/// at `next_seq` and reports the records before it as pruned, not missing.
pub fn prune_note(instance: &str, next_seq: u64, head: &str, cutoff_ms: i64) -> String {
    format!("palisade.dev/decision-prune/v1\n{instance}\n{next_seq}\n{head}\n{cutoff_ms}\n")
}

/// The first line of a checkpoint note.
pub const CHECKPOINT_ORIGIN: &str = "palisade.dev/decisions/v1";

/// The spool directory's file holding the writer's instance id.
pub const INSTANCE_FILE: &str = "instance";

/// The spool directory's copy of its latest checkpoint line (replaced whole at each one).
pub const HEAD_FILE: &str = "head";

/// Whether `id` may name a writer: 1 to 64 ASCII letters, digits, `-` or `_` (what the
/// sidecar generates; it travels in file names and URLs as it is).
pub fn valid_instance(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The name of the segment file whose first line is `first_seq`: they sort in order.
pub fn segment_name(first_seq: u64) -> String {
    format!("segment-{first_seq:020}.jsonl")
}

/// The sequence number a segment file starts at, read from its name ([`segment_name`]).
pub fn segment_first_seq(path: &std::path::Path) -> Option<u64> {
    path.file_name()?
        .to_str()?
        .strip_prefix("segment-")?
        .strip_suffix(".jsonl")?
        .parse()
        .ok()
}

/// The segment files of a spool directory, in order.
pub fn segments(dir: &std::path::Path) -> std::io::Result<Vec<std::path::PathBuf>> {
    let mut out: Vec<std::path::PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| segment_first_seq(p).is_some())
        .collect();
    out.sort();
    Ok(out)
}

/// A SHA-256 digest of one line.
pub type Digest = [u8; 32];

/// `prev` of the first line.
pub const GENESIS: Digest = [0; 32];

/// The hash that links the next line to `line` (its bytes, without the newline).
pub fn line_hash(line: &[u8]) -> Digest {
    let mut out = [0; 32];
    out.copy_from_slice(digest(&SHA256, line).as_ref());
    out
}

/// Lower-case hex, as `prev` is written.
pub fn hex(digest: &Digest) -> String {
    ::hex::encode(digest)
}

/// What kind of entry a line is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    /// One authorization decision (`record`).
    Decision,
    /// A signature over the chain so far (`signer`, `jws`).
    Checkpoint,
    /// Decisions the writer did not record (its spool was full): their sequence numbers
    /// `first..=last` are skipped, and this line, right after them, says why (`reason`).
    Gap,
}

impl EntryKind {
    /// As a line spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::Decision => "decision",
            EntryKind::Checkpoint => "checkpoint",
            EntryKind::Gap => "gap",
        }
    }
}

/// One line as read back.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Line {
    pub v: u32,
    pub instance: String,
    pub seq: u64,
    pub prev: String,
    pub time: String,
    pub kind: EntryKind,
    /// The record as written (kept raw: checking the chain never needs its fields, and a
    /// reader that does parses it once into what it needs).
    #[serde(default)]
    pub record: Option<Box<serde_json::value::RawValue>>,
    #[serde(default)]
    pub signer: Option<String>,
    #[serde(default)]
    pub jws: Option<String>,
    #[serde(default)]
    pub first: Option<u64>,
    #[serde(default)]
    pub last: Option<u64>,
    #[serde(default)]
    pub reason: Option<String>,
}

/// One line as written, but for the record, which is spliced in already encoded.
#[derive(Serialize, Default)]
struct LineOut<'a> {
    v: u32,
    instance: &'a str,
    seq: u64,
    prev: &'a str,
    time: &'a str,
    kind: Option<EntryKind>,
    #[serde(skip_serializing_if = "Option::is_none")]
    signer: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    jws: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    first: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
}

/// The note a checkpoint at `seq` (whose `prev` is `prev`) signs.
pub fn checkpoint_note(instance: &str, seq: u64, prev: &str, signer: &str, time: &str) -> String {
    format!("{CHECKPOINT_ORIGIN}\n{instance}\n{seq}\n{prev}\n{signer}\n{time}\n")
}

/// The writer's end of a chain: the next sequence number and the hash of the last line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    instance: String,
    next_seq: u64,
    head: Digest,
}

impl Chain {
    /// A chain with no line yet.
    pub fn new(instance: impl Into<String>) -> Self {
        Self::resume(instance, 0, GENESIS)
    }

    /// A chain whose last line was `next_seq - 1`, hashing to `head`.
    pub fn resume(instance: impl Into<String>, next_seq: u64, head: Digest) -> Self {
        Self {
            instance: instance.into(),
            next_seq,
            head,
        }
    }

    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// The number of lines so far (the sequence number of the next one).
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    pub fn head(&self) -> Digest {
        self.head
    }

    /// The next line for a decision `record`, with its newline; the chain moves on.
    pub fn decision<R: Serialize>(&mut self, time: &str, record: &R) -> Vec<u8> {
        let json = serde_json::to_vec(record).expect("a record always serializes");
        self.decision_json(time, &json)
    }

    /// The same for a record already encoded as JSON (one encoding serves the spool and the
    /// audit stream, and stays outside the writer's lock).
    pub fn decision_json(&mut self, time: &str, record: &[u8]) -> Vec<u8> {
        self.push(time, EntryKind::Decision, Some(record), LineOut::default())
    }

    /// The same, appended to `out` (the spool's buffer: no line of its own to allocate
    /// and copy).
    pub fn decision_json_into(&mut self, out: &mut Vec<u8>, time: &str, record: &[u8]) {
        self.push_into(
            out,
            time,
            EntryKind::Decision,
            Some(record),
            LineOut::default(),
        );
    }

    /// The note the next line would sign as a checkpoint by `signer` at `time`.
    pub fn next_checkpoint_note(&self, signer: &str, time: &str) -> String {
        checkpoint_note(
            &self.instance,
            self.next_seq,
            &hex(&self.head),
            signer,
            time,
        )
    }

    /// The next line for a checkpoint: `jws` signs [`Self::next_checkpoint_note`].
    pub fn checkpoint(&mut self, time: &str, signer: &str, jws: &str) -> Vec<u8> {
        self.push(
            time,
            EntryKind::Checkpoint,
            None,
            LineOut {
                signer: Some(signer),
                jws: Some(jws),
                ..LineOut::default()
            },
        )
    }

    /// The next line: a checkpoint signed now with `identity` (its SPIFFE ID the signer), or
    /// `None` when its key cannot sign. What both writers (a sidecar's spool, the control
    /// plane's own chain) append.
    pub fn signed_checkpoint(
        &mut self,
        identity: &crate::tls::WorkloadIdentity,
        time: &str,
    ) -> Option<Vec<u8>> {
        let signer = identity.spiffe_id.to_string();
        let note = self.next_checkpoint_note(&signer, time);
        let jws =
            crate::signing::sign(identity, CHECKPOINT_TYP, crate::unix_now(), note.as_bytes())?;
        Some(self.checkpoint(time, &signer, &jws))
    }

    /// Gives the next sequence number to a decision that is not written (it goes into the
    /// next [`Self::gap`]); the link stays on the last written line.
    pub fn skip(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq - 1
    }

    /// The line that accounts for the skipped numbers `first..` (up to this line's own).
    pub fn gap(&mut self, time: &str, first: u64, reason: &str) -> Vec<u8> {
        let last = self.next_seq - 1;
        self.push(
            time,
            EntryKind::Gap,
            None,
            LineOut {
                first: Some(first),
                last: Some(last),
                reason: Some(reason),
                ..LineOut::default()
            },
        )
    }

    fn push(
        &mut self,
        time: &str,
        kind: EntryKind,
        record: Option<&[u8]>,
        extra: LineOut<'_>,
    ) -> Vec<u8> {
        let mut line = Vec::with_capacity(256 + record.map_or(0, <[u8]>::len));
        self.push_into(&mut line, time, kind, record, extra);
        line
    }

    /// Appends the next line to `out` (encoded in place: this runs once per decision on
    /// the sidecar's request path, into the spool's buffer).
    fn push_into(
        &mut self,
        out: &mut Vec<u8>,
        time: &str,
        kind: EntryKind,
        record: Option<&[u8]>,
        extra: LineOut<'_>,
    ) {
        let start = out.len();
        let mut prev = [0u8; 64];
        ::hex::encode_to_slice(self.head, &mut prev).expect("64 hex digits for 32 bytes");
        serde_json::to_writer(
            &mut *out,
            &LineOut {
                v: FORMAT,
                instance: &self.instance,
                seq: self.next_seq,
                prev: std::str::from_utf8(&prev).expect("hex is ASCII"),
                time,
                kind: Some(kind),
                ..extra
            },
        )
        .expect("a line always serializes");
        if let Some(record) = record {
            // `{...}` becomes `{...,"record":<record>}`.
            out.pop();
            out.extend_from_slice(b",\"record\":");
            out.extend_from_slice(record);
            out.push(b'}');
        }
        self.head = line_hash(&out[start..]);
        self.next_seq += 1;
        out.push(b'\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_spelled_as_serde_writes_them() {
        for kind in [EntryKind::Decision, EntryKind::Checkpoint, EntryKind::Gap] {
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.as_str());
        }
    }

    /// A line appended in place (the spool's buffer, with lines before it) is the line a
    /// chain at the same point makes on its own, and hashes the same.
    #[test]
    fn a_line_appended_in_place_is_the_same_line() {
        let mut a = Chain::new("i1");
        let mut b = a.clone();
        let mut buf = b"earlier line\n".to_vec();
        for i in 0..3 {
            let record = format!("{{\"n\":{i}}}");
            let line = a.decision_json("t", record.as_bytes());
            b.decision_json_into(&mut buf, "t", record.as_bytes());
            assert!(buf.ends_with(&line), "{}", String::from_utf8_lossy(&buf));
            assert_eq!((a.head(), a.next_seq()), (b.head(), b.next_seq()));
        }
        assert!(buf.starts_with(b"earlier line\n"));
    }

    #[test]
    fn each_line_links_to_the_one_before() {
        let mut chain = Chain::new("i1");
        let first = chain.decision("t0", &serde_json::json!({"decision": "allow"}));
        let second = chain.decision("t1", &serde_json::json!({"decision": "deny"}));
        let a: Line = serde_json::from_slice(&first).unwrap();
        let b: Line = serde_json::from_slice(&second).unwrap();
        assert_eq!((a.seq, a.prev.as_str()), (0, hex(&GENESIS).as_str()));
        assert_eq!(b.seq, 1);
        assert_eq!(b.prev, hex(&line_hash(&first[..first.len() - 1])));
        assert_eq!(chain.head(), line_hash(&second[..second.len() - 1]));
        assert_eq!(a.kind, EntryKind::Decision);
        let record: serde_json::Value = serde_json::from_str(a.record.unwrap().get()).unwrap();
        assert_eq!(record["decision"], "allow");
        let note = chain.next_checkpoint_note("spiffe://td/ns/a/sa/b", "t2");
        assert_eq!(
            note,
            format!(
                "palisade.dev/decisions/v1\ni1\n2\n{}\nspiffe://td/ns/a/sa/b\nt2\n",
                hex(&chain.head())
            )
        );
        let resumed = Chain::resume("i1", 2, chain.head());
        assert_eq!(resumed, chain);
    }
}
