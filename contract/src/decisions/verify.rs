//! Checking a decision log: every line in its place, every link intact, every checkpoint
//! signed by the workload that wrote the lines (with the trust bundle alone). The same
//! checks serve a sidecar's spool read offline (`palisade audit verify --dir`) and, line by
//! line, the control plane's collector.
//!
//! What each kind of tampering looks like here: a changed byte breaks the JSON or the link
//! to the next line (`BrokenLink`); a removed line leaves a hole in the sequence
//! (`Missing`); two swapped lines are `Missing` then `OutOfOrder`; two different lines with
//! one sequence number are a `Fork`; lines of another writer spliced into a spool carry
//! another instance (`Foreign`), or break the chain if their instance was rewritten; a
//! forged or altered checkpoint fails its signature (`BadCheckpoint`); a log cut short
//! behind its latest checkpoint is `Truncated` (the spool keeps that checkpoint apart, in
//! `head`). A line read twice (the same bytes) is not a finding: shipping is at least once.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::Path;

use super::{CHECKPOINT_TYP, Digest, EntryKind, FORMAT, GENESIS, Line, checkpoint_note, line_hash};
use crate::signing;
use crate::tls::TrustBundle;

/// One thing wrong with a log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// Not a line of this format (a changed byte, a torn write, garbage).
    Malformed { location: String, why: String },
    /// These sequence numbers are absent.
    Missing { first: u64, last: u64 },
    /// This line's `prev` is not the hash of the line before it.
    BrokenLink { seq: u64 },
    /// This line comes after a later one.
    OutOfOrder { seq: u64 },
    /// Two different lines carry this sequence number.
    Fork { seq: u64 },
    /// A checkpoint whose signature does not hold.
    BadCheckpoint { seq: u64, why: String },
    /// Lines of a writer other than the spool's own.
    Foreign { instance: String },
    /// The latest checkpoint covers more lines than the log holds.
    Truncated { checkpointed: u64, present: u64 },
}

impl Finding {
    /// A short name for the kind of finding: `verify -o json`, the collector's stored
    /// findings and its metric label all use it.
    pub fn kind(&self) -> &'static str {
        match self {
            Finding::Malformed { .. } => "malformed",
            Finding::Missing { .. } => "missing",
            Finding::BrokenLink { .. } => "broken_link",
            Finding::OutOfOrder { .. } => "out_of_order",
            Finding::Fork { .. } => "fork",
            Finding::BadCheckpoint { .. } => "bad_checkpoint",
            Finding::Foreign { .. } => "foreign",
            Finding::Truncated { .. } => "truncated",
        }
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Finding::Malformed { location, why } => write!(f, "{location}: not a log line: {why}"),
            Finding::Missing { first, last } if first == last => {
                write!(f, "record {first} is missing")
            }
            Finding::Missing { first, last } => write!(f, "records {first} to {last} are missing"),
            Finding::BrokenLink { seq } => write!(
                f,
                "record {seq} does not link to the record before it (one of them was changed)"
            ),
            Finding::OutOfOrder { seq } => write!(f, "record {seq} is out of order"),
            Finding::Fork { seq } => write!(f, "two different records {seq} (a fork)"),
            Finding::BadCheckpoint { seq, why } => write!(f, "checkpoint {seq}: {why}"),
            Finding::Foreign { instance } => {
                write!(
                    f,
                    "records of instance {instance}, which did not write this spool"
                )
            }
            Finding::Truncated {
                checkpointed,
                present,
            } => write!(
                f,
                "truncated: the latest checkpoint covers {checkpointed} records, {present} are here"
            ),
        }
    }
}

/// What one writer's lines add up to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub instance: String,
    /// The SPIFFE ID its checkpoints are signed by.
    pub signer: Option<String>,
    pub decisions: u64,
    pub checkpoints: u64,
    pub first_time: Option<String>,
    pub last_time: Option<String>,
    /// Lines covered by the last valid checkpoint (its sequence number).
    pub signed_through: Option<u64>,
    /// Lines after the last valid checkpoint: chained, not yet signed.
    pub unsigned: u64,
    /// Decisions the writer declared it did not record (gap entries), and why.
    pub dropped: u64,
    pub drop_reasons: Vec<String>,
    pub findings: Vec<Finding>,
}

impl Report {
    pub fn clean(&self) -> bool {
        self.findings.is_empty()
    }

    /// The report as `palisade audit verify -o json` prints it and the control plane's
    /// `GET /v1/decisions/integrity` answers it (one shape for the spool and the store).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "instance": self.instance,
            "signer": self.signer,
            "decisions": self.decisions,
            "checkpoints": self.checkpoints,
            "signedThrough": self.signed_through,
            "unsigned": self.unsigned,
            "dropped": self.dropped,
            "dropReasons": self.drop_reasons,
            "firstTime": self.first_time,
            "lastTime": self.last_time,
            "clean": self.clean(),
            "findings": self.findings.iter().map(|f| serde_json::json!({
                "kind": f.kind(),
                "message": f.to_string(),
            })).collect::<Vec<_>>(),
        })
    }
}

#[derive(Default)]
struct State {
    report: Report,
    next_seq: u64,
    head: Option<Digest>,
    seen: HashMap<u64, Digest>,
}

/// Feeds lines in the order they were written; [`Verifier::finish`] reports per writer.
pub struct Verifier<'b> {
    bundle: &'b TrustBundle,
    own_instance: Option<String>,
    instances: BTreeMap<String, State>,
    /// Malformed lines are charged to the writer of the line before them.
    last_instance: Option<String>,
    unattributed: Vec<Finding>,
}

impl<'b> Verifier<'b> {
    pub fn new(bundle: &'b TrustBundle) -> Self {
        Self {
            bundle,
            own_instance: None,
            instances: BTreeMap::new(),
            last_instance: None,
            unattributed: Vec::new(),
        }
    }

    /// Lines of any other instance are [`Finding::Foreign`].
    pub fn expect_instance(&mut self, instance: &str) {
        self.own_instance = Some(instance.to_owned());
        self.state(instance);
    }

    /// Goes on from where an earlier check of `instance` stopped: its next sequence number,
    /// the hash of its last line and the SPIFFE ID its checkpoints must be signed by (the
    /// collector checks each batch this way, from the position it stored).
    pub fn resume(&mut self, instance: &str, next_seq: u64, head: Option<Digest>, signer: &str) {
        let st = self.state(instance);
        st.next_seq = next_seq;
        st.head = head;
        st.report.signer = Some(signer.to_owned());
    }

    /// The next sequence number and the hash of the last line seen of `instance`.
    pub fn position(&self, instance: &str) -> Option<(u64, Option<Digest>)> {
        self.instances.get(instance).map(|s| (s.next_seq, s.head))
    }

    fn state(&mut self, instance: &str) -> &mut State {
        // Looked up first: the key is copied only for a writer not seen yet, not per line.
        if !self.instances.contains_key(instance) {
            self.instances.insert(
                instance.to_owned(),
                State {
                    report: Report {
                        instance: instance.to_owned(),
                        ..Report::default()
                    },
                    ..State::default()
                },
            );
        }
        self.instances.get_mut(instance).expect("inserted above")
    }

    fn charge(&mut self, finding: Finding) {
        match self.last_instance.clone().or(self.own_instance.clone()) {
            Some(i) => self.state(&i).report.findings.push(finding),
            None => self.unattributed.push(finding),
        }
    }

    /// One line (without its newline), found at `location` (for the report).
    pub fn line(&mut self, location: &str, bytes: &[u8]) {
        match serde_json::from_slice::<Line>(bytes) {
            Ok(line) => self.parsed(|| location.to_owned(), bytes, &line),
            Err(e) => self.charge(Finding::Malformed {
                location: location.to_owned(),
                why: e.to_string(),
            }),
        }
    }

    /// The same for a line its caller has parsed already (the collector does, to sort a
    /// batch): `line` must be `bytes` read as a [`Line`]. `location` is made only for a
    /// finding that names it.
    pub fn parsed(&mut self, location: impl FnOnce() -> String, bytes: &[u8], line: &Line) {
        if line.v != FORMAT {
            return self.charge(Finding::Malformed {
                location: location(),
                why: format!("format version {} (this verifier reads {FORMAT})", line.v),
            });
        }
        if self.last_instance.as_deref() != Some(line.instance.as_str()) {
            self.last_instance = Some(line.instance.clone());
        }
        if let Some(own) = &self.own_instance
            && *own != line.instance
        {
            let st = self.state(&line.instance);
            if st.report.findings.is_empty() {
                st.report.findings.push(Finding::Foreign {
                    instance: line.instance.clone(),
                });
            }
        }
        let hash = line_hash(bytes);
        let bundle = self.bundle;
        let st = self.state(&line.instance);
        if line.seq < st.next_seq {
            match st.seen.get(&line.seq) {
                Some(h) if *h == hash => {}
                Some(_) => st.report.findings.push(Finding::Fork { seq: line.seq }),
                None => st
                    .report
                    .findings
                    .push(Finding::OutOfOrder { seq: line.seq }),
            }
            return;
        }
        // A gap entry right after the numbers it skipped accounts for them.
        let declared = line.kind == EntryKind::Gap
            && line.first == Some(st.next_seq)
            && line.last.map(|l| l + 1) == Some(line.seq);
        if line.seq > st.next_seq && !declared {
            st.report.findings.push(Finding::Missing {
                first: st.next_seq,
                last: line.seq - 1,
            });
        } else if !links_to(&line.prev, &st.head.unwrap_or(GENESIS)) {
            st.report
                .findings
                .push(Finding::BrokenLink { seq: line.seq });
        }
        st.seen.insert(line.seq, hash);
        st.head = Some(hash);
        st.next_seq = line.seq + 1;
        st.report
            .first_time
            .get_or_insert_with(|| line.time.clone());
        match &mut st.report.last_time {
            // Reuses the string's buffer: no allocation per line.
            Some(last) => last.clone_from(&line.time),
            None => st.report.last_time = Some(line.time.clone()),
        }
        match line.kind {
            EntryKind::Decision => {
                st.report.decisions += 1;
                st.report.unsigned += 1;
            }
            EntryKind::Gap => {
                st.report.unsigned += 1;
                if declared {
                    st.report.dropped += line.seq - line.first.unwrap_or(line.seq);
                    let reason = line.reason.clone().unwrap_or_default();
                    if !st.report.drop_reasons.contains(&reason) {
                        st.report.drop_reasons.push(reason);
                    }
                } else {
                    st.report.findings.push(Finding::Malformed {
                        location: format!("record {}", line.seq),
                        why: "a gap entry that does not follow the numbers it skips".into(),
                    });
                }
            }
            EntryKind::Checkpoint => {
                st.report.checkpoints += 1;
                match check_checkpoint(bundle, line) {
                    Ok(signer) => {
                        if let Some(before) = &st.report.signer
                            && *before != signer
                        {
                            st.report.findings.push(Finding::BadCheckpoint {
                                seq: line.seq,
                                why: format!("signed by {signer}, earlier ones by {before}"),
                            });
                        }
                        st.report.signer = Some(signer);
                        st.report.signed_through = Some(line.seq);
                        st.report.unsigned = 0;
                    }
                    Err(why) => {
                        st.report.unsigned += 1;
                        st.report
                            .findings
                            .push(Finding::BadCheckpoint { seq: line.seq, why });
                    }
                }
            }
        }
    }

    /// The spool's latest checkpoint, kept apart from the segments: the log must hold it,
    /// so a log cut short behind it shows.
    pub fn head(&mut self, location: &str, bytes: &[u8]) {
        let line: Line = match serde_json::from_slice::<Line>(bytes) {
            Ok(l) if l.kind == EntryKind::Checkpoint => l,
            Ok(_) => {
                return self.charge(Finding::Malformed {
                    location: location.to_owned(),
                    why: "not a checkpoint".into(),
                });
            }
            Err(e) => {
                return self.charge(Finding::Malformed {
                    location: location.to_owned(),
                    why: e.to_string(),
                });
            }
        };
        let hash = line_hash(bytes);
        let bundle = self.bundle;
        let st = self.state(&line.instance);
        if let Err(why) = check_checkpoint(bundle, &line) {
            st.report.findings.push(Finding::BadCheckpoint {
                seq: line.seq,
                why: format!("{location}: {why}"),
            });
            return;
        }
        match st.seen.get(&line.seq) {
            Some(h) if *h == hash => {}
            Some(_) => st.report.findings.push(Finding::Fork { seq: line.seq }),
            None if line.seq >= st.next_seq => st.report.findings.push(Finding::Truncated {
                checkpointed: line.seq,
                present: st.next_seq,
            }),
            None => st.report.findings.push(Finding::Missing {
                first: line.seq,
                last: line.seq,
            }),
        }
    }

    /// One report per writer seen (the spool's own first), and findings no writer could be
    /// charged with.
    pub fn finish(self) -> (Vec<Report>, Vec<Finding>) {
        let own = self.own_instance;
        let mut reports: Vec<Report> = self.instances.into_values().map(|s| s.report).collect();
        reports.sort_by_key(|r| Some(&r.instance) != own.as_ref());
        (reports, self.unattributed)
    }
}

/// The signer of a valid checkpoint line, or why it is not one.
fn check_checkpoint(bundle: &TrustBundle, line: &Line) -> Result<String, String> {
    let (Some(signer), Some(jws)) = (&line.signer, &line.jws) else {
        return Err("no signer or signature".into());
    };
    let note = checkpoint_note(&line.instance, line.seq, &line.prev, signer, &line.time);
    signing::verify(bundle, jws, CHECKPOINT_TYP, signer, note.as_bytes())
        .map(|s| s.spiffe_id.to_string())
        .map_err(|e| e.to_string())
}

/// Verifies a sidecar's decision directory: its segments in order, against its `instance`
/// and `head` files.
pub fn verify_dir(
    dir: &Path,
    bundle: &TrustBundle,
) -> std::io::Result<(Vec<Report>, Vec<Finding>)> {
    let mut verifier = Verifier::new(bundle);
    match std::fs::read_to_string(dir.join(super::INSTANCE_FILE)) {
        Ok(id) => verifier.expect_instance(id.trim()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    for path in super::segments(dir)? {
        let bytes = std::fs::read(&path)?;
        let name = path.display().to_string();
        let mut lines = bytes.split(|b| *b == b'\n').enumerate().peekable();
        while let Some((i, line)) = lines.next() {
            let last = lines.peek().is_none();
            if last && line.is_empty() {
                break;
            }
            let location = format!("{name}:{}", i + 1);
            if last {
                // No newline: a write the sidecar did not finish (it was killed mid-line).
                verifier.charge(Finding::Malformed {
                    location,
                    why: "an unfinished last line".into(),
                });
                break;
            }
            verifier.line(&location, line);
        }
    }
    let head = dir.join(super::HEAD_FILE);
    match std::fs::read(&head) {
        Ok(bytes) => verifier.head(&head.display().to_string(), bytes.trim_ascii_end()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    Ok(verifier.finish())
}

/// Whether `prev` (as written: lower-case hex) names `head`, without encoding `head`.
fn links_to(prev: &str, head: &Digest) -> bool {
    let mut written = [0u8; 32];
    prev.len() == 64
        && !prev.bytes().any(|b| b.is_ascii_uppercase())
        && ::hex::decode_to_slice(prev, &mut written).is_ok()
        && written == *head
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_is_the_lower_case_hex_of_the_head_and_nothing_else() {
        let head = line_hash(b"x");
        let written = crate::decisions::hex(&head);
        assert!(links_to(&written, &head));
        assert!(
            !links_to(&written.to_ascii_uppercase(), &head),
            "as written, lower case"
        );
        assert!(!links_to(&written[..62], &head));
        assert!(!links_to(&format!("{written}00"), &head));
        assert!(!links_to(&crate::decisions::hex(&GENESIS), &head));
        assert!(!links_to(&"zz".repeat(32), &head));
    }
    use crate::decisions::Chain;
    use crate::tls::WorkloadIdentity;

    const ME: &str = "spiffe://palisade.local/ns/shop/sa/orders";

    /// A log of `n` decisions with a checkpoint after every third, ending with one.
    fn log(identity: &WorkloadIdentity, instance: &str, n: usize) -> Vec<Vec<u8>> {
        let mut chain = Chain::new(instance);
        let mut lines = Vec::new();
        let checkpoint = |chain: &mut Chain, lines: &mut Vec<Vec<u8>>| {
            let time = "2026-12-01T21:00:00Z";
            let note = chain.next_checkpoint_note(ME, time);
            let jws =
                signing::sign(identity, CHECKPOINT_TYP, 1_764_622_800, note.as_bytes()).unwrap();
            lines.push(chain.checkpoint(time, ME, &jws));
        };
        for i in 0..n {
            lines.push(chain.decision("2026-12-01T21:00:00Z", &serde_json::json!({"i": i})));
            if i % 3 == 2 {
                checkpoint(&mut chain, &mut lines);
            }
        }
        checkpoint(&mut chain, &mut lines);
        lines
    }

    fn check(bundle: &TrustBundle, lines: &[Vec<u8>], head: Option<&[u8]>) -> Report {
        let mut v = Verifier::new(bundle);
        v.expect_instance("i1");
        for (n, l) in lines.iter().enumerate() {
            v.line(&format!("line {}", n + 1), l.trim_ascii_end());
        }
        if let Some(h) = head {
            v.head("head", h.trim_ascii_end());
        }
        let (mut reports, rest) = v.finish();
        assert!(rest.is_empty(), "{rest:?}");
        reports.remove(0)
    }

    #[test]
    fn a_clean_log_passes_and_says_what_it_holds() {
        let (bundle, identity) = signing::test_identity(ME);
        let lines = log(&identity, "i1", 7);
        let r = check(&bundle, &lines, lines.last().map(Vec::as_slice));
        assert!(r.clean(), "{:?}", r.findings);
        assert_eq!((r.decisions, r.checkpoints), (7, 3));
        assert_eq!(r.signer.as_deref(), Some(ME));
        assert_eq!((r.signed_through, r.unsigned), (Some(9), 0));
        // Read twice (at-least-once shipping): still clean.
        let twice: Vec<Vec<u8>> = lines.iter().chain(&lines[2..5]).cloned().collect();
        assert!(check(&bundle, &twice, None).clean());
    }

    #[test]
    fn declared_gaps_are_dropped_not_missing_and_cannot_be_forged() {
        let (bundle, identity) = signing::test_identity(ME);
        let mut chain = Chain::new("i1");
        let mut lines = vec![chain.decision("t", &serde_json::json!({"i": 0}))];
        let first = chain.skip();
        chain.skip();
        chain.skip();
        lines.push(chain.gap("t", first, "dropped: the decision spool was full"));
        lines.push(chain.decision("t", &serde_json::json!({"i": 4})));
        let note = chain.next_checkpoint_note(ME, "t");
        let jws = signing::sign(&identity, CHECKPOINT_TYP, 1_764_622_800, note.as_bytes()).unwrap();
        lines.push(chain.checkpoint("t", ME, &jws));
        let r = check(&bundle, &lines, None);
        assert!(r.clean(), "{:?}", r.findings);
        assert_eq!((r.decisions, r.dropped), (2, 3));
        assert_eq!(r.drop_reasons, ["dropped: the decision spool was full"]);

        // Records removed and a gap entry put in their place: the next link breaks.
        let mut honest = Chain::new("i1");
        let mut original: Vec<Vec<u8>> = (0..4)
            .map(|i| honest.decision("t", &serde_json::json!({ "i": i })))
            .collect();
        let mut forger = Chain::new("i1");
        let kept = forger.decision("t", &serde_json::json!({"i": 0}));
        assert_eq!(kept, original[0]);
        let first = forger.skip();
        forger.skip();
        let forged = forger.gap("t", first, "dropped");
        original.splice(1..4, [forged]);
        original.push(honest.decision("t", &serde_json::json!({"i": 4})));
        let r = check(&bundle, &original, None);
        assert_eq!(r.findings, [Finding::BrokenLink { seq: 4 }], "{r:?}");
    }

    #[test]
    fn every_kind_of_tampering_is_named() {
        let (bundle, identity) = signing::test_identity(ME);
        let lines = log(&identity, "i1", 7);
        let head = lines.last().cloned().unwrap();
        let findings = |lines: &[Vec<u8>]| check(&bundle, lines, Some(&head)).findings;

        // One byte of a record changed (inside a string: still JSON).
        let mut changed = lines.clone();
        let at = changed[1].windows(3).position(|w| w == b"\"i\"").unwrap() + 1;
        changed[1][at] = b'j';
        assert_eq!(findings(&changed), [Finding::BrokenLink { seq: 2 }]);
        // ... or the byte breaks the JSON.
        let mut garbled = lines.clone();
        garbled[1][0] = b'x';
        let f = findings(&garbled);
        assert!(matches!(f[0], Finding::Malformed { .. }), "{f:?}");
        assert!(f.contains(&Finding::Missing { first: 1, last: 1 }), "{f:?}");

        // A record deleted.
        let mut deleted = lines.clone();
        deleted.remove(4);
        assert_eq!(findings(&deleted), [Finding::Missing { first: 4, last: 4 }]);

        // Two swapped.
        let mut swapped = lines.clone();
        swapped.swap(4, 5);
        assert_eq!(
            findings(&swapped),
            [
                Finding::Missing { first: 4, last: 4 },
                Finding::OutOfOrder { seq: 4 }
            ]
        );

        // The tail truncated behind the latest checkpoint.
        let truncated = &lines[..6];
        assert_eq!(
            findings(truncated),
            [Finding::Truncated {
                checkpointed: 9,
                present: 6
            }]
        );

        // Another instance's records spliced in: as they are, or relabelled.
        let other = log(&identity, "i2", 2);
        let mut spliced = lines.clone();
        spliced.insert(3, other[0].clone());
        let r = {
            let mut v = Verifier::new(&bundle);
            v.expect_instance("i1");
            for l in &spliced {
                v.line("x", l.trim_ascii_end());
            }
            v.finish().0
        };
        assert!(r[0].clean() && !r[1].clean(), "{r:?}");
        assert_eq!(
            r[1].findings[0],
            Finding::Foreign {
                instance: "i2".into()
            }
        );
        let mut relabelled = lines.clone();
        relabelled.insert(
            3,
            String::from_utf8(other[1].clone())
                .unwrap()
                .replace("\"i2\"", "\"i1\"")
                .replace("\"seq\":1", "\"seq\":3")
                .into_bytes(),
        );
        let f = findings(&relabelled);
        assert!(f.contains(&Finding::BrokenLink { seq: 3 }), "{f:?}");

        // A forged checkpoint: signed by another CA's workload, or altered.
        let (_, forger) = signing::test_identity(ME);
        let forged = log(&forger, "i1", 7);
        let mut with_forged = lines.clone();
        with_forged[3] = forged[3].clone();
        let f = findings(&with_forged);
        assert!(
            matches!(&f[0], Finding::BadCheckpoint { seq: 3, why } if why.contains("not trusted")),
            "{f:?}"
        );
        let mut altered = lines.clone();
        let text = String::from_utf8(altered[3].clone()).unwrap();
        altered[3] = text
            .replace("2026-12-01T21:00:00Z", "2026-12-01T22:00:00Z")
            .into_bytes();
        let f = findings(&altered);
        assert!(
            matches!(&f[0], Finding::BadCheckpoint { seq: 3, .. }),
            "{f:?}"
        );

        // Two different records with one sequence number.
        let mut forked = lines.clone();
        forked.push(changed[1].clone());
        let f = findings(&forked);
        assert!(f.contains(&Finding::Fork { seq: 1 }), "{f:?}");
    }
}
