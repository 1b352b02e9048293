//! Scenario 8: the central decision log, in process. Collector ingest into SQLite and
//! PostgreSQL (batches as sidecars ship them: chained lines with a signed checkpoint, from
//! several instances at once), then `GET /v1/decisions`'s queries with the usual filters
//! over what was stored, and the spool's bytes per record and recovery time after a kill
//! (opening a full 64 MiB segment).

use std::sync::Arc;
use std::time::{Duration, Instant};

use palisade_contract::decisions::record::Record;
use palisade_contract::decisions::{CHECKPOINT_TYP, Chain};
use palisade_contract::signing;
use palisade_contract::tls::shared_bundle;
use palisade_control_plane::collector::{Collector, CollectorMetrics};
use palisade_control_plane::store::{DecisionFilter, Store};
use serde_json::json;

use crate::load::percentile;
use crate::run::{Report, Settings};

const SHIPPERS: usize = 4;
const BATCH: usize = 5_000;

/// One instance's batches: `BATCH` decisions then a checkpoint, `batches` times, all
/// dated now.
fn batches(
    instance: &str,
    identity: &palisade_contract::tls::WorkloadIdentity,
    spiffe: &str,
    batches: usize,
) -> Vec<Vec<u8>> {
    let mut chain = Chain::new(instance);
    (0..batches)
        .map(|b| batch(&mut chain, identity, spiffe, b, |_| None))
        .collect()
}

/// Batch `b` of `chain`: `BATCH` decisions then a checkpoint. `time_of(n)` dates decision
/// `n` of the chain (`None`: now).
fn batch(
    chain: &mut Chain,
    identity: &palisade_contract::tls::WorkloadIdentity,
    spiffe: &str,
    b: usize,
    time_of: impl Fn(usize) -> Option<String>,
) -> Vec<u8> {
    let sources = ["orders", "cart", "checkout", "rogue"];
    let mut body = Vec::with_capacity(BATCH * 450);
    for i in 0..BATCH {
        let n = b * BATCH + i;
        let mut r = Record::begin("inbound", "http2");
        if let Some(t) = time_of(n) {
            r.time = t;
        }
        r.decision = if n.is_multiple_of(20) {
            "deny"
        } else {
            "allow"
        }
        .into();
        r.source = Some(format!(
            "spiffe://palisade.local/ns/shop/sa/{}",
            sources[n % sources.len()]
        ));
        r.destination_service = "payments".into();
        r.destination = spiffe.into();
        r.method = if n.is_multiple_of(3) { "POST" } else { "GET" }.into();
        r.path = format!("/items/{}", n % 1000);
        r.status = if n.is_multiple_of(20) { 403 } else { 200 };
        r.policy = Some("shop/payments-charge".into());
        r.rule = Some(0);
        r.policy_version = 7;
        let record = serde_json::to_vec(&r).expect("a record encodes");
        body.extend(chain.decision_json(&r.time, &record));
    }
    let time = palisade_contract::now_rfc3339();
    let note = chain.next_checkpoint_note(spiffe, &time);
    let jws = signing::sign(
        identity,
        CHECKPOINT_TYP,
        palisade_contract::unix_now(),
        note.as_bytes(),
    )
    .expect("the test key signs");
    body.extend(chain.checkpoint(&time, spiffe, &jws));
    body
}

/// Stores `extra` more lines (untimed), from `SHIPPERS` instances of their own, dated
/// evenly over the day before the last hour: older than the timed rows, so the newest
/// pages are the same, but every filter now has a long history to skip.
async fn fill(
    collector: &Arc<Collector>,
    identity: &Arc<palisade_contract::tls::WorkloadIdentity>,
    spiffe: &str,
    extra: usize,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let per_shipper = extra.div_ceil(SHIPPERS * BATCH).max(1);
    let lines = per_shipper * BATCH;
    let from = palisade_contract::unix_now() - 25 * 3600;
    let step = (24 * 3600) as f64 / lines as f64;
    let me = palisade_contract::SpiffeId::parse(spiffe)?;
    let mut tasks = Vec::new();
    for i in 0..SHIPPERS {
        let (collector, me) = (collector.clone(), me.clone());
        let (identity, spiffe) = (identity.clone(), spiffe.to_owned());
        tasks.push(tokio::spawn(async move {
            let instance = format!("fill-{i}-{}", palisade_contract::request_id());
            let mut chain = Chain::new(&instance);
            for b in 0..per_shipper {
                let body = batch(&mut chain, &identity, &spiffe, b, |n| {
                    palisade_contract::rfc3339_at(from + (n as f64 * step) as i64)
                });
                collector.ingest(&me, &instance, &body).await?;
                if i == 0 && b % 50 == 49 {
                    eprintln!(
                        "decision store: about {} of {} fill rows stored",
                        (b + 1) * BATCH * SHIPPERS,
                        lines * SHIPPERS
                    );
                }
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(started.elapsed())
}

/// Lines per second stored, and the query latencies (p50, p99 in ms) of each filter.
async fn measure(
    store: Store,
    rows: usize,
    query_rows: usize,
    smoke: bool,
) -> anyhow::Result<(f64, Vec<(&'static str, f64, f64)>)> {
    let spiffe = "spiffe://palisade.local/ns/shop/sa/payments";
    let (bundle, identity) = signing::test_identity(spiffe);
    let identity = Arc::new(identity);
    let collector = Arc::new(Collector::new(
        store.clone(),
        shared_bundle(bundle),
        CollectorMetrics::register(&prometheus::Registry::new())?,
    ));
    let per_shipper = rows.div_ceil(SHIPPERS * BATCH).max(1);
    let work: Vec<(String, Vec<Vec<u8>>)> = (0..SHIPPERS)
        .map(|i| {
            let instance = format!("bench-{i}-{}", palisade_contract::request_id());
            let b = batches(&instance, &identity, spiffe, per_shipper);
            (instance, b)
        })
        .collect();
    let me = palisade_contract::SpiffeId::parse(spiffe)?;
    // "The last 10 minutes" of the queries below is counted from here: the timed rows are
    // written now, and filling to --decision-query-rows afterwards can take longer than 10
    // minutes (it did: 590 s for 10 million, and the query found nothing).
    let timed_from = palisade_contract::unix_now();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (instance, batches) in work {
        let (collector, me) = (collector.clone(), me.clone());
        tasks.push(tokio::spawn(async move {
            for b in batches {
                collector.ingest(&me, &instance, &b).await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let stored = (per_shipper * SHIPPERS * (BATCH + 1)) as f64;
    let rate = stored / started.elapsed().as_secs_f64();
    if query_rows > rows {
        let took = fill(&collector, &identity, spiffe, query_rows - rows).await?;
        eprintln!(
            "decision store: filled to {query_rows} rows in {:.0} s",
            took.as_secs_f64()
        );
    }
    // What autovacuum's analyze does after a bulk load (PostgreSQL's planner has no
    // statistics for a table loaded moments ago, and picks a plan for a handful of rows).
    store.analyze_decisions().await?;

    let queries: [(&'static str, DecisionFilter); 5] = [
        ("newest page", DecisionFilter::default()),
        (
            "decision=deny",
            DecisionFilter {
                decision: Some("deny".into()),
                ..DecisionFilter::default()
            },
        ),
        (
            "source",
            DecisionFilter {
                source: Some("spiffe://palisade.local/ns/shop/sa/rogue".into()),
                ..DecisionFilter::default()
            },
        ),
        (
            "namespace + last 10 min",
            DecisionFilter {
                namespace: Some("shop".into()),
                since_ms: Some((timed_from - 600) * 1000),
                ..DecisionFilter::default()
            },
        ),
        (
            "path prefix",
            DecisionFilter {
                path_prefix: Some("/items/99".into()),
                ..DecisionFilter::default()
            },
        ),
    ];
    let mut latencies = Vec::new();
    for (what, filter) in queries {
        let filter = DecisionFilter {
            limit: 100,
            ..filter
        };
        let mut ms = Vec::new();
        for _ in 0..if smoke { 5 } else { 100 } {
            let t = Instant::now();
            let page = store.decisions(&filter).await?;
            ms.push(t.elapsed().as_secs_f64() * 1e3);
            anyhow::ensure!(!page.is_empty(), "query {what} found nothing");
        }
        ms.sort_by(f64::total_cmp);
        latencies.push((what, percentile(&ms, 0.5), percentile(&ms, 0.99)));
    }
    Ok((rate, latencies))
}

/// Bytes per line of a realistic record, and the time to open (resume) a spool whose last
/// segment is full (what a restart after `kill -9` costs).
fn spool_figures() -> anyhow::Result<(f64, Duration)> {
    let dir = tempfile::tempdir()?;
    let spiffe = "spiffe://palisade.local/ns/shop/sa/payments";
    let (_, identity) = signing::test_identity(spiffe);
    let segment = palisade_proxy::decision_log::SEGMENT_BYTES as usize;
    let instance = "bench-recovery";
    std::fs::write(dir.path().join("instance"), format!("{instance}\n"))?;
    let one = batches(instance, &identity, spiffe, 1).concat();
    let per_line = one.len() as f64 / (BATCH + 1) as f64;
    // One chain long enough to fill a segment.
    let written = batches(instance, &identity, spiffe, segment / one.len() + 1).concat();
    std::fs::write(
        dir.path()
            .join(palisade_contract::decisions::segment_name(0)),
        &written,
    )?;
    let started = Instant::now();
    let registry = prometheus::Registry::new();
    let metrics = palisade_proxy::metrics::ProxyMetrics::register(&registry)?.spool;
    let settings = palisade_proxy::decision_log::DecisionLogSettings {
        dir: dir.path().to_owned(),
        fsync_interval: Duration::from_secs(1),
        checkpoint_interval: Duration::from_secs(10),
        ship: palisade_proxy::decision_log::DecisionShip::Off,
        spool_max: 1 << 30,
        overflow: palisade_proxy::decision_log::Overflow::Refuse,
        segment_max: palisade_proxy::decision_log::SEGMENT_BYTES,
    };
    let _spool = palisade_proxy::decision_log::Spool::open(
        settings,
        palisade_contract::tls::IdentitySlot::new(),
        metrics,
    )?;
    Ok((per_line, started.elapsed()))
}

/// Runs the scenario into `r`, with its targets.
pub(crate) async fn scenario(s: &Settings, r: &mut Report) -> anyhow::Result<()> {
    let rows = if s.smoke {
        2 * SHIPPERS * BATCH
    } else {
        s.decision_rows
    };
    let query_rows = if s.smoke {
        rows
    } else {
        s.decision_query_rows.unwrap_or(rows).max(rows)
    };
    r.md.push_str(&format!(
        "\n| central decision log ({rows} decisions timed, {SHIPPERS} shippers, batches of {BATCH} + a signed checkpoint; queries over {query_rows}) | stored lines/s | newest page p50/p99 ms | deny p50/p99 | source p50/p99 | namespace+10 min p50/p99 | path prefix p50/p99 |\n|---|---:|---:|---:|---:|---:|---:|\n"
    ));
    let dir = tempfile::tempdir()?;
    let backends = [
        (
            "SQLite",
            Store::sqlite(&dir.path().join("decisions.db")).await?,
        ),
        (
            "PostgreSQL",
            Store::open_url(&palisade_control_plane::store::fresh_postgres_schema().await).await?,
        ),
    ];
    let mut slowest_p99: f64 = 0.0;
    let mut slowest_rate = f64::INFINITY;
    for (name, store) in backends {
        let (rate, latencies) = measure(store, rows, query_rows, s.smoke).await?;
        let cells: Vec<String> = latencies
            .iter()
            .map(|(_, p50, p99)| format!("{p50:.1} / {p99:.1}"))
            .collect();
        r.md.push_str(&format!("| {name} | {rate:.0} | {} |\n", cells.join(" | ")));
        r.results.push(json!({
            "scenario": "decision-log", "backend": name, "rows": rows, "query_rows": query_rows, "stored_per_s": rate,
            "queries": latencies.iter().map(|(q, p50, p99)| json!({"query": q, "p50_ms": p50, "p99_ms": p99})).collect::<Vec<_>>(),
        }));
        slowest_rate = slowest_rate.min(rate);
        for (_, _, p99) in &latencies {
            slowest_p99 = slowest_p99.max(*p99);
        }
    }
    let (per_line, recovery) = spool_figures()?;
    r.md.push_str(&format!(
        "\n| decision spool | bytes per record (HTTP decision with policy) | opening a full 64 MiB segment after kill -9 |\n|---|---:|---:|\n| sidecar | {per_line:.0} | {:.0} ms |\n",
        recovery.as_secs_f64() * 1e3
    ));
    r.results.push(json!({"scenario": "decision-spool", "bytes_per_record": per_line, "recovery_ms": recovery.as_secs_f64() * 1e3}));
    r.target(
        "collector ingest at least 50,000 decisions/s (SQLite and PostgreSQL)",
        slowest_rate >= 50_000.0,
        format!("{slowest_rate:.0}/s (slower backend)"),
    );
    r.target(
        &format!("decision queries p99 under 100 ms over {query_rows} stored (target: 10 million)"),
        slowest_p99 < 100.0,
        format!("{slowest_p99:.1} ms (slowest query)"),
    );
    Ok(())
}
