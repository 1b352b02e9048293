//! The decision collector: the control plane's end of shipping
//! ([`palisade_contract::decisions::ship`]). Each batch a sidecar posts is checked by the
//! same rules as `palisade audit verify` ([`Verifier`], resumed from where the instance's
//! chain stands in the store), stored once per (instance, sequence number), and only then
//! acknowledged.
//!
//! What the checks find is never a reason to refuse a batch: a gap, a broken link, a bad
//! checkpoint, a fork (a different line under a number already stored) or lines of another
//! writer are stored as integrity findings of their own, counted in
//! `palisade_decision_findings_total`, and the lines that continue the chain are stored
//! as usual, so one damaged line cannot stop a sidecar's shipping for good. What is
//! refused: a batch that is not lines at all, too large, or shipped for an instance whose
//! chain another workload owns (the first to ship an instance owns it, so no workload can
//! add to another's record).

pub mod broker;

use palisade_contract::SpiffeId;
use palisade_contract::decisions::record::Record;
use palisade_contract::decisions::ship::{MAX_BATCH_BYTES, MAX_BATCH_LINES, ShipAck};
use palisade_contract::decisions::verify::{Finding, Verifier};
use palisade_contract::decisions::{Digest, Line, hex, line_hash, valid_instance};
use palisade_contract::tls::SharedBundle;
use prometheus::{IntCounter, IntCounterVec, Opts, Registry};

use crate::store::{Committed, DecisionRow, FindingRow, InstancePosition, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("a batch must be newline-terminated JSON lines: {0}")]
    Malformed(String),
    #[error("a batch holds at most {MAX_BATCH_BYTES} bytes and {MAX_BATCH_LINES} lines")]
    TooLarge,
    #[error("instance {instance} is shipped by {owner}, not by {shipper}")]
    NotYours {
        instance: String,
        owner: String,
        shipper: String,
    },
    #[error("storing the batch failed: {0}")]
    Store(#[from] StoreError),
}

impl IngestError {
    /// The `reason` label of `palisade_decision_batches_refused_total`; `None` for a store
    /// failure (the batch is not refused, it is retried).
    fn refused_reason(&self) -> Option<&'static str> {
        match self {
            Self::Malformed(_) => Some("malformed"),
            Self::TooLarge => Some("too_large"),
            Self::NotYours { .. } => Some("not_yours"),
            Self::Store(_) => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct CollectorMetrics {
    stored: IntCounter,
    duplicates: IntCounter,
    findings: IntCounterVec,
    refused: IntCounterVec,
}

impl CollectorMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let stored = IntCounter::new(
            "palisade_decisions_stored_total",
            "Decision-log lines stored by the collector.",
        )?;
        let duplicates = IntCounter::new(
            "palisade_decisions_duplicate_total",
            "Decision-log lines received again and stored once (at-least-once shipping).",
        )?;
        let findings = IntCounterVec::new(
            Opts::new(
                "palisade_decision_findings_total",
                "Integrity findings in shipped decision logs, by kind (missing, broken_link, fork, bad_checkpoint, foreign, malformed).",
            ),
            &["kind"],
        )?;
        let refused = IntCounterVec::new(
            Opts::new(
                "palisade_decision_batches_refused_total",
                "Shipped decision batches refused unread, by reason (malformed, too_large, not_yours, signature: a broker delivery whose batch signature did not verify).",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(stored.clone()))?;
        registry.register(Box::new(duplicates.clone()))?;
        registry.register(Box::new(findings.clone()))?;
        registry.register(Box::new(refused.clone()))?;
        Ok(Self {
            stored,
            duplicates,
            findings,
            refused,
        })
    }
}

#[derive(Debug, Clone)]
pub struct Collector {
    store: Store,
    bundle: SharedBundle,
    metrics: CollectorMetrics,
}

/// How often a batch is checked again when another delivery moved the chain meanwhile.
const ATTEMPTS: usize = 3;

impl Collector {
    pub fn new(store: Store, bundle: SharedBundle, metrics: CollectorMetrics) -> Self {
        Self {
            store,
            bundle,
            metrics,
        }
    }

    /// Checks, stores and acknowledges one batch of `instance`'s lines from `shipper`.
    pub async fn ingest(
        &self,
        shipper: &SpiffeId,
        instance: &str,
        body: &[u8],
    ) -> Result<ShipAck, IngestError> {
        let stored = self.ingest_checked(shipper, instance, body).await;
        if let Err(e) = &stored
            && let Some(reason) = e.refused_reason()
        {
            self.metrics.refused.with_label_values(&[reason]).inc();
        }
        stored
    }

    async fn ingest_checked(
        &self,
        shipper: &SpiffeId,
        instance: &str,
        body: &[u8],
    ) -> Result<ShipAck, IngestError> {
        if !valid_instance(instance) {
            return Err(IngestError::Malformed(format!(
                "{instance:?} is not an instance id (1 to 64 letters, digits, - or _)"
            )));
        }
        let lines = split_lines(body)?;
        for _ in 0..ATTEMPTS {
            let from = self.store.decision_position(instance).await?;
            if let Some(from) = &from
                && from.spiffe_id != shipper.as_str()
            {
                return Err(IngestError::NotYours {
                    instance: instance.to_owned(),
                    owner: from.spiffe_id.clone(),
                    shipper: shipper.to_string(),
                });
            }
            let checked = self.check(shipper, instance, from.as_ref(), &lines).await?;
            if lines.is_empty() && from.is_none() {
                // Nothing to store, no chain to start.
                return Ok(ShipAck {
                    instance: instance.to_owned(),
                    next_seq: 0,
                    findings: Vec::new(),
                });
            }
            match self
                .store
                .commit_decisions(from.as_ref(), &checked.to, &checked.rows, &checked.findings)
                .await?
            {
                Committed::Moved => continue,
                Committed::Stored => {
                    self.metrics.stored.inc_by(checked.rows.len() as u64);
                    self.metrics.duplicates.inc_by(checked.duplicates);
                    for f in &checked.found {
                        self.metrics.findings.with_label_values(&[f.kind()]).inc();
                    }
                    if !checked.found.is_empty() {
                        tracing::warn!(%instance, %shipper, findings = ?checked.found
                            .iter().map(ToString::to_string).collect::<Vec<_>>(),
                            "integrity findings in a shipped decision log");
                    }
                    return Ok(ShipAck {
                        instance: instance.to_owned(),
                        next_seq: checked.to.next_seq as u64,
                        findings: checked.found.iter().map(ToString::to_string).collect(),
                    });
                }
            }
        }
        Err(IngestError::Store(StoreError::Corrupt(format!(
            "instance {instance}'s chain kept moving while a batch was stored"
        ))))
    }

    async fn check(
        &self,
        shipper: &SpiffeId,
        instance: &str,
        from: Option<&InstancePosition>,
        lines: &[&[u8]],
    ) -> Result<Checked, IngestError> {
        let next_seq = from.map_or(0, |p| p.next_seq as u64);
        let head = from.and_then(|p| p.head.as_deref()).and_then(unhex);
        let bundle = self.bundle.load();
        let mut verifier = Verifier::new(&bundle);
        verifier.expect_instance(instance);
        verifier.resume(instance, next_seq, head, shipper.as_str());

        // Lines below the stored position: sent again (same hash) or a fork.
        let parsed: Vec<Option<Line>> = lines
            .iter()
            .map(|l| serde_json::from_slice::<Line>(l).ok())
            .collect();
        let old: Vec<u64> = parsed
            .iter()
            .flatten()
            .filter(|l| l.instance == instance && l.seq < next_seq)
            .map(|l| l.seq)
            .collect();
        let stored = match (old.iter().min(), old.iter().max()) {
            (Some(first), Some(last)) => {
                self.store
                    .decision_hashes(instance, *first as i64, *last as i64)
                    .await?
            }
            _ => Default::default(),
        };
        let mut found = Vec::new();
        let mut rows = Vec::new();
        let mut duplicates = 0;
        for (i, (bytes, line)) in lines.iter().zip(&parsed).enumerate() {
            if let Some(line) = line
                && line.instance == instance
                && line.seq < next_seq
            {
                match stored.get(&(line.seq as i64)) {
                    Some(h) if *h == hex(&line_hash(bytes)) => duplicates += 1,
                    // Stored lines are never replaced; a differing one is a fork, and a
                    // number below the position that is not stored was pruned or missed.
                    Some(_) => found.push(Finding::Fork { seq: line.seq }),
                    None => duplicates += 1,
                }
                continue;
            }
            let before = verifier.position(instance);
            let location = || format!("batch line {}", i + 1);
            match line {
                // Parsed once, above, for the verifier too.
                Some(line) => verifier.parsed(location, bytes, line),
                None => verifier.line(&location(), bytes),
            }
            let after = verifier.position(instance);
            if let Some(line) = line
                && before != after
            {
                // The line continued the chain: the verifier's head is its hash.
                let hash = after.and_then(|(_, head)| head);
                rows.push(row_hashed(line, bytes, hash));
            }
        }
        let (reports, rest) = verifier.finish();
        found.extend(rest);
        for r in reports {
            found.extend(r.findings);
        }
        // The position after the last line that continued the chain.
        let (next, head) = match rows.last() {
            Some(r) => (r.seq as u64 + 1, unhex(&r.hash)),
            None => (next_seq, head),
        };
        let now = crate::ca::unix_now();
        let findings = found
            .iter()
            .map(|f| FindingRow {
                instance: instance.to_owned(),
                kind: f.kind().to_owned(),
                detail: f.to_string(),
                found_at: now,
            })
            .collect();
        Ok(Checked {
            to: InstancePosition {
                instance: instance.to_owned(),
                spiffe_id: shipper.to_string(),
                next_seq: next as i64,
                head: head.map(|h| hex(&h)),
            },
            rows,
            findings,
            found,
            duplicates,
        })
    }
}

struct Checked {
    to: InstancePosition,
    rows: Vec<DecisionRow>,
    findings: Vec<FindingRow>,
    found: Vec<Finding>,
    duplicates: u64,
}

fn split_lines(body: &[u8]) -> Result<Vec<&[u8]>, IngestError> {
    if body.len() > MAX_BATCH_BYTES {
        return Err(IngestError::TooLarge);
    }
    if body.is_empty() {
        return Ok(Vec::new());
    }
    let Some(body) = body.strip_suffix(b"\n") else {
        return Err(IngestError::Malformed(
            "the last line has no newline".into(),
        ));
    };
    let lines: Vec<&[u8]> = body.split(|b| *b == b'\n').collect();
    if lines.len() > MAX_BATCH_LINES {
        return Err(IngestError::TooLarge);
    }
    Ok(lines)
}

fn unhex(s: &str) -> Option<Digest> {
    let mut out = [0u8; 32];
    ::hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

/// The stored row of a line, its query fields taken from the record.
pub(crate) fn row(line: &Line, bytes: &[u8]) -> DecisionRow {
    row_hashed(line, bytes, None)
}

/// The same, with the line's hash when it is known already.
fn row_hashed(line: &Line, bytes: &[u8], hash: Option<Digest>) -> DecisionRow {
    let time_ms =
        time::OffsetDateTime::parse(&line.time, &time::format_description::well_known::Rfc3339)
            .map_or_else(
                |_| crate::ca::unix_now() * 1000,
                |t| (t.unix_timestamp_nanos() / 1_000_000) as i64,
            );
    let mut row = DecisionRow {
        instance: line.instance.clone(),
        seq: line.seq as i64,
        hash: hex(&hash.unwrap_or_else(|| line_hash(bytes))),
        kind: line.kind.as_str().to_owned(),
        time_ms,
        line: String::from_utf8_lossy(bytes).into_owned(),
        ..DecisionRow::default()
    };
    let Some(record) = line
        .record
        .as_ref()
        .and_then(|r| serde_json::from_str::<Record>(r.get()).ok())
    else {
        return row;
    };
    row.destination_namespace = SpiffeId::parse(&record.destination)
        .ok()
        .and_then(|id| id.namespace().map(str::to_owned));
    let amqp = record.amqp.as_ref();
    row.exchange = amqp.and_then(|a| a.exchange.clone());
    row.routing_key = amqp.and_then(|a| a.routing_key.clone());
    row.request_id = Some(record.request_id);
    row.decision = Some(record.decision.into_owned());
    row.direction = Some(record.direction.into_owned());
    row.source = record.source;
    row.destination_service = Some(record.destination_service).filter(|s| !s.is_empty());
    row.destination = Some(record.destination).filter(|s| !s.is_empty());
    row.protocol = Some(record.protocol.into_owned());
    row.method = Some(record.method).filter(|s| !s.is_empty());
    row.path = Some(record.path).filter(|s| !s.is_empty());
    row.policy = record.policy;
    row
}

/// Lines read from the store per query while verifying.
const VERIFY_PAGE: i64 = 10_000;

/// Every stored chain replayed through the contract's [`Verifier`] against `bundle`, with
/// the findings the collector stored at ingest (a fork or another workload's lines never
/// reach the chain, so only the collector saw them): `palisade audit verify` over the
/// store, in the shape `palisade audit verify --dir -o json` prints.
pub async fn verify_store(
    store: &Store,
    bundle: &palisade_contract::tls::TrustBundle,
) -> Result<serde_json::Value, StoreError> {
    let mut instances = Vec::new();
    let mut clean = true;
    for position in store.decision_instances().await? {
        // Where retention left the chain, if its signed record holds.
        let prune = store.decision_prune(&position.instance).await?;
        let (pruned, bad_prune) = match &prune {
            Some(p) => match prune_holds(bundle, p) {
                Ok(()) => (Some(p), None),
                Err(why) => (None, Some(why)),
            },
            None => (None, None),
        };
        let start = pruned.map_or(0, |p| p.next_seq);
        let mut verifier = Verifier::new(bundle);
        verifier.expect_instance(&position.instance);
        verifier.resume(
            &position.instance,
            start as u64,
            pruned.and_then(|p| unhex(&p.head)),
            &position.spiffe_id,
        );
        let mut from = start;
        loop {
            let page = store
                .decision_lines(&position.instance, from, VERIFY_PAGE)
                .await?;
            for (seq, line) in &page {
                verifier.line(&format!("stored record {seq}"), line.as_bytes());
            }
            match page.last() {
                Some((seq, _)) if page.len() as i64 == VERIFY_PAGE => from = seq + 1,
                _ => break,
            }
        }
        let (reports, _) = verifier.finish();
        let at_ingest = store.decision_findings_of(&position.instance).await?;
        for report in reports {
            let mut json = report.to_json();
            if report.instance == position.instance {
                json["pruned"] = pruned.map_or(serde_json::Value::Null, |p| {
                    serde_json::json!({
                        "records": p.pruned,
                        "before": p.cutoff_ms,
                        "from": p.next_seq,
                        "signer": p.signer,
                    })
                });
                if let Some(why) = &bad_prune {
                    if let Some(findings) = json["findings"].as_array_mut() {
                        findings.push(serde_json::json!({
                            "kind": "bad_prune",
                            "message": format!("the retention record does not hold ({why}): the records it claims were pruned count as missing"),
                        }));
                    }
                    json["clean"] = false.into();
                }
            }
            if report.instance == position.instance && !at_ingest.is_empty() {
                if let Some(findings) = json["findings"].as_array_mut() {
                    findings.extend(at_ingest.iter().map(|f| {
                        serde_json::json!({
                            "kind": f.kind,
                            "message": format!("at ingest: {}", f.detail),
                        })
                    }));
                }
                json["clean"] = false.into();
            }
            clean &= json["clean"] == true;
            instances.push(json);
        }
    }
    let admin_trail = crate::admin_trail::verify_trail(store, bundle).await?;
    clean &= admin_trail["clean"] == true;
    Ok(serde_json::json!({
        "clean": clean,
        "instances": instances,
        "adminTrail": admin_trail,
        "findings": [],
    }))
}

/// Whether a prune record is signed by the control plane of `bundle`'s trust domain over
/// what it says.
fn prune_holds(
    bundle: &palisade_contract::tls::TrustBundle,
    p: &crate::store::PruneRow,
) -> Result<(), String> {
    let expected = palisade_contract::identity_api::control_plane_id(bundle.trust_domain());
    let note = palisade_contract::decisions::prune_note(
        &p.instance,
        p.next_seq as u64,
        &p.head,
        p.cutoff_ms,
    );
    palisade_contract::signing::verify(
        bundle,
        &p.jws,
        palisade_contract::decisions::PRUNE_TYP,
        expected.as_str(),
        note.as_bytes(),
    )
    .map(drop)
    .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_contract::decisions::CHECKPOINT_TYP;
    use palisade_contract::decisions::Chain;
    use palisade_contract::signing;
    use palisade_contract::tls::{WorkloadIdentity, shared_bundle};
    use std::time::Duration;

    use crate::store::DecisionFilter;

    const ME: &str = "spiffe://palisade.local/ns/shop/sa/orders";
    const OTHER: &str = "spiffe://palisade.local/ns/shop/sa/payments";

    fn record(i: usize, decision: &'static str) -> serde_json::Value {
        let mut r = Record::begin("inbound", "http1");
        r.time = format!("2026-12-01T21:00:{:02}Z", i % 60);
        r.decision = decision.into();
        r.source = Some(OTHER.into());
        r.destination_service = "orders".into();
        r.destination = ME.into();
        r.method = "GET".into();
        r.path = format!("/items/{i}");
        r.request_id = format!("req-{i}");
        serde_json::to_value(r).unwrap()
    }

    /// `n` decisions (every fourth a deny), then a checkpoint; the lines.
    fn lines(
        chain: &mut Chain,
        identity: &WorkloadIdentity,
        from: usize,
        n: usize,
    ) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for i in from..from + n {
            let decision = if i % 4 == 0 { "deny" } else { "allow" };
            out.push(chain.decision(
                &format!("2026-12-01T21:00:{:02}Z", i % 60),
                &record(i, decision),
            ));
        }
        let time = "2026-12-01T21:01:00Z";
        let note = chain.next_checkpoint_note(ME, time);
        let jws = signing::sign(
            identity,
            CHECKPOINT_TYP,
            palisade_contract::unix_now(),
            note.as_bytes(),
        )
        .unwrap();
        out.push(chain.checkpoint(time, ME, &jws));
        out
    }

    fn collector(store: Store, bundle: palisade_contract::tls::TrustBundle) -> Collector {
        Collector::new(
            store,
            shared_bundle(bundle),
            CollectorMetrics::register(&Registry::new()).unwrap(),
        )
    }

    fn all(lines: &[Vec<u8>]) -> Vec<u8> {
        lines.concat()
    }

    async fn stored(store: &Store, filter: DecisionFilter) -> Vec<i64> {
        store
            .decisions(&DecisionFilter {
                limit: 1000,
                ..filter
            })
            .await
            .unwrap()
            .into_iter()
            .map(|d| d.seq)
            .collect()
    }

    async fn batches_are_stored_once_checked_and_queryable(store: Store) {
        let (bundle, identity) = signing::test_identity(ME);
        let me = SpiffeId::parse(ME).unwrap();
        let c = collector(store.clone(), bundle);
        let mut chain = Chain::new("i1");
        let first = lines(&mut chain, &identity, 0, 8);
        let ack = c.ingest(&me, "i1", &all(&first)).await.unwrap();
        assert_eq!(
            (ack.next_seq, ack.findings.len()),
            (9, 0),
            "{:?}",
            ack.findings
        );

        // Sent again whole (a lost acknowledgement), then with the next lines: stored once.
        let ack = c.ingest(&me, "i1", &all(&first)).await.unwrap();
        assert_eq!((ack.next_seq, ack.findings.len()), (9, 0));
        let second = lines(&mut chain, &identity, 8, 4);
        let overlap: Vec<Vec<u8>> = first[6..].iter().chain(&second).cloned().collect();
        let ack = c.ingest(&me, "i1", &all(&overlap)).await.unwrap();
        assert_eq!(
            (ack.next_seq, ack.findings.len()),
            (14, 0),
            "{:?}",
            ack.findings
        );
        let seqs = stored(&store, DecisionFilter::default()).await;
        assert_eq!(seqs.len(), 12, "12 decisions, each once: {seqs:?}");

        // Filters and the cursor, newest first.
        let denies = stored(
            &store,
            DecisionFilter {
                decision: Some("deny".into()),
                ..DecisionFilter::default()
            },
        )
        .await;
        assert_eq!(denies.len(), 3, "{denies:?}");
        let prefix = stored(
            &store,
            DecisionFilter {
                path_prefix: Some("/items/1".into()),
                namespace: Some("shop".into()),
                ..DecisionFilter::default()
            },
        )
        .await;
        // /items/1, /items/10, /items/11 (seq 1, 11, 12).
        assert_eq!(prefix, [12, 11, 1]);
        let page = store
            .decisions(&DecisionFilter {
                limit: 5,
                ..DecisionFilter::default()
            })
            .await
            .unwrap();
        let last = page.last().unwrap();
        let rest = stored(
            &store,
            DecisionFilter {
                before: Some((last.time_ms, last.instance.clone(), last.seq)),
                ..DecisionFilter::default()
            },
        )
        .await;
        assert_eq!(page.len() + rest.len(), 12);
        assert!(rest.iter().all(|s| !page.iter().any(|p| p.seq == *s)));

        // The store verifies clean, by the spool's rules.
        let bundle_now = c.bundle.load_full();
        let report = verify_store(&store, &bundle_now).await.unwrap();
        assert_eq!(report["clean"], true, "{report:#}");
        assert_eq!(report["instances"][0]["decisions"], 12);
        assert_eq!(report["instances"][0]["signer"], ME);

        // Another workload may not add to this instance's chain.
        let other = SpiffeId::parse(OTHER).unwrap();
        let err = c.ingest(&other, "i1", &all(&second)).await.unwrap_err();
        assert!(matches!(err, IngestError::NotYours { .. }), "{err}");

        // A different line under a stored number is a fork; a jump ahead is a gap; both are
        // stored as findings and the chain goes on.
        let mut forged = Chain::new("i1");
        let forged_lines = lines(&mut forged, &identity, 100, 2);
        let ack = c.ingest(&me, "i1", &all(&forged_lines[..1])).await.unwrap();
        assert_eq!(ack.findings, ["two different records 0 (a fork)"]);
        let mut later = Chain::resume("i1", 20, chain.head());
        let gap = lines(&mut later, &identity, 20, 1);
        let ack = c.ingest(&me, "i1", &all(&gap)).await.unwrap();
        assert_eq!(ack.next_seq, 22);
        assert!(
            ack.findings
                .iter()
                .any(|f| f == "records 14 to 19 are missing"),
            "{:?}",
            ack.findings
        );
        let kinds: Vec<String> = store
            .decision_findings(10)
            .await
            .unwrap()
            .into_iter()
            .map(|f| f.kind)
            .collect();
        assert!(
            kinds.contains(&"fork".to_owned()) && kinds.contains(&"missing".to_owned()),
            "{kinds:?}"
        );
        assert_eq!(stored(&store, DecisionFilter::default()).await.len(), 13);

        // The findings at ingest make the store's report unclean, and say what they were.
        let report = verify_store(&store, &bundle_now).await.unwrap();
        assert_eq!(report["clean"], false);
        let messages = report["instances"][0]["findings"].to_string();
        assert!(
            messages.contains("at ingest: two different records 0"),
            "{messages}"
        );
        // A stored record changed behind the collector's back: the chain names it.
        store
            .tamper_for_tests(
                "UPDATE decisions SET line = replace(line, '/items/3', '/items/9') WHERE seq = 3",
            )
            .await;
        let report = verify_store(&store, &bundle_now).await.unwrap();
        let messages = report["instances"][0]["findings"].to_string();
        assert!(
            messages.contains("record 4 does not link to the record before it"),
            "{messages}"
        );

        // Not an instance id, or not lines at all: refused, nothing stored.
        let err = c.ingest(&me, "i1&x=y", &all(&second)).await.unwrap_err();
        assert!(matches!(err, IngestError::Malformed(_)), "{err}");
        let err = c.ingest(&me, "i1", b"{\"v\":1").await.unwrap_err();
        assert!(matches!(err, IngestError::Malformed(_)), "{err}");
    }

    /// Retention prunes a chain's oldest lines with a signed record: the store still
    /// verifies clean and says how many were pruned; a record that does not hold (altered)
    /// turns them into missing ones; without a certificate nothing is pruned.
    async fn retention_prunes_with_a_signed_record_verify_tells_from_missing(store: Store) {
        let td = palisade_contract::TrustDomain::parse("palisade.local").unwrap();
        let cp_id = palisade_contract::identity_api::control_plane_id(&td);
        let (sidecar_ca, identity) = signing::test_identity_pem(ME);
        let (cp_ca, cp_identity) = signing::test_identity_pem(cp_id.as_str());
        let bundle =
            palisade_contract::tls::TrustBundle::from_pem(td, (sidecar_ca + &cp_ca).as_bytes())
                .unwrap();
        let me = SpiffeId::parse(ME).unwrap();
        let c = collector(store.clone(), bundle.clone());
        let mut chain = Chain::new("i1");
        c.ingest(&me, "i1", &all(&lines(&mut chain, &identity, 0, 8)))
            .await
            .unwrap();
        c.ingest(&me, "i1", &all(&lines(&mut chain, &identity, 8, 4)))
            .await
            .unwrap();
        // Lines 0..8 are from before 21:00:08; the first batch's checkpoint (seq 8) is not.
        let cutoff_ms = 1_796_158_808_000; // 2026-12-01T21:00:08Z
        let hour = Duration::from_secs(3600);
        let now_ms = cutoff_ms + 3_600_000;

        let unsigned = crate::retention::Retention::new(
            store.clone(),
            palisade_contract::tls::IdentitySlot::new(),
            hour,
            &Registry::new(),
        )
        .unwrap();
        assert!(matches!(
            unsigned.prune(now_ms).await,
            Err(crate::retention::PruneError::CannotSign)
        ));
        assert_eq!(stored(&store, DecisionFilter::default()).await.len(), 12);

        let slot = palisade_contract::tls::IdentitySlot::new();
        slot.set(cp_identity);
        let retention =
            crate::retention::Retention::new(store.clone(), slot, hour, &Registry::new()).unwrap();
        assert_eq!(retention.prune(now_ms).await.unwrap(), 8);
        assert_eq!(retention.prune(now_ms).await.unwrap(), 0, "pruned once");
        let mut kept = stored(&store, DecisionFilter::default()).await;
        kept.sort_unstable();
        assert_eq!(kept, [9, 10, 11, 12], "the second batch's decisions");

        let report = verify_store(&store, &bundle).await.unwrap();
        assert_eq!(report["clean"], true, "{report:#}");
        let i1 = &report["instances"][0];
        assert_eq!(i1["pruned"]["records"], 8, "{i1:#}");
        assert_eq!(i1["pruned"]["from"], 8);
        assert_eq!(i1["pruned"]["signer"], cp_id.as_str());

        // An altered record (the cutoff moved) no longer holds: what it covered is missing.
        store
            .tamper_for_tests("UPDATE decision_prunes SET cutoff_ms = cutoff_ms + 1")
            .await;
        let report = verify_store(&store, &bundle).await.unwrap();
        assert_eq!(report["clean"], false);
        let kinds: Vec<&str> = report["instances"][0]["findings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["kind"].as_str().unwrap())
            .collect();
        assert!(kinds.contains(&"bad_prune"), "{kinds:?}");
        assert!(kinds.contains(&"missing"), "{kinds:?}");
    }

    #[tokio::test]
    async fn sqlite_retention_prunes_with_a_signed_record_verify_tells_from_missing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::sqlite(&dir.path().join("db")).await.unwrap();
        retention_prunes_with_a_signed_record_verify_tells_from_missing(store).await;
    }

    #[tokio::test]
    async fn postgres_retention_prunes_with_a_signed_record_verify_tells_from_missing() {
        let store = crate::store::tests::postgres_store().await;
        retention_prunes_with_a_signed_record_verify_tells_from_missing(store).await;
    }

    #[tokio::test]
    async fn sqlite_batches_are_stored_once_checked_and_queryable() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::sqlite(&dir.path().join("db")).await.unwrap();
        batches_are_stored_once_checked_and_queryable(store).await;
    }

    #[tokio::test]
    async fn postgres_batches_are_stored_once_checked_and_queryable() {
        let store = crate::store::tests::postgres_store().await;
        batches_are_stored_once_checked_and_queryable(store).await;
    }
}
