//! The central decision log: every line the sidecars ship, stored once per (instance,
//! sequence number), with the fields the queries filter on pulled out into indexed columns
//! and the line itself kept whole, so the chain can be checked again from the store.
//!
//! Each writer (`instance`) has one row in `decision_instances`: the SPIFFE ID that ships
//! for it (bound at its first batch: no other workload may add to its chain), the next
//! sequence number expected and the hash of the last stored line. A batch commits in one
//! transaction that moves that row from the position it was checked against to the new
//! one, so two deliveries of one batch racing each other (a retry after a lost answer)
//! cannot both land: the second finds the position moved and is checked again.
//!
//! Retention prunes a writer's chain from its start: the lines before a sequence number
//! go, and a row of `decision_prunes` says where the stored chain now begins (the next
//! sequence number and the hash of the last line pruned), signed by the control plane
//! ([`palisade_contract::decisions::prune_note`]), so verification resumes there and
//! tells pruned records from missing ones.

use sqlx::{QueryBuilder, Row};

use super::{Backend, Store, StoreError};

/// Where a writer's chain stands in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstancePosition {
    pub instance: String,
    pub spiffe_id: String,
    pub next_seq: i64,
    /// Hex SHA-256 of the last stored line (`None` before the first).
    pub head: Option<String>,
}

/// One stored line with its indexed fields.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DecisionRow {
    pub instance: String,
    pub seq: i64,
    pub hash: String,
    /// `decision` or `checkpoint`.
    pub kind: String,
    /// Unix milliseconds.
    pub time_ms: i64,
    pub request_id: Option<String>,
    pub decision: Option<String>,
    pub direction: Option<String>,
    pub source: Option<String>,
    pub destination_service: Option<String>,
    pub destination: Option<String>,
    pub destination_namespace: Option<String>,
    pub protocol: Option<String>,
    pub method: Option<String>,
    pub path: Option<String>,
    pub policy: Option<String>,
    pub exchange: Option<String>,
    pub routing_key: Option<String>,
    /// The line as the sidecar wrote it.
    pub line: String,
}

/// An integrity finding, stored as its own event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FindingRow {
    pub instance: String,
    pub kind: String,
    pub detail: String,
    pub found_at: i64,
}

/// What `GET /v1/decisions` filters on; `None` matches everything.
#[derive(Debug, Clone, Default)]
pub struct DecisionFilter {
    /// Unix milliseconds, inclusive.
    pub since_ms: Option<i64>,
    /// Unix milliseconds, exclusive.
    pub until_ms: Option<i64>,
    pub source: Option<String>,
    pub destination: Option<String>,
    pub namespace: Option<String>,
    pub decision: Option<String>,
    pub policy: Option<String>,
    pub protocol: Option<String>,
    pub method: Option<String>,
    pub path_prefix: Option<String>,
    pub exchange: Option<String>,
    pub routing_key: Option<String>,
    pub request_id: Option<String>,
    /// Only rows after this one in newest-first order: `(time_ms, instance, seq)`.
    pub before: Option<(i64, String, i64)>,
    pub limit: i64,
}

/// A stored decision as the queries return it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredDecision {
    pub instance: String,
    pub seq: i64,
    pub time_ms: i64,
    pub line: String,
}

/// Where a writer's stored chain begins after retention pruned its oldest lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PruneRow {
    pub instance: String,
    /// The first sequence number still stored (every one before it was pruned).
    pub next_seq: i64,
    /// Hex SHA-256 of the last line pruned: what the first one kept links to.
    pub head: String,
    /// Lines older than this (Unix milliseconds) were pruned.
    pub cutoff_ms: i64,
    /// Lines pruned so far, in every pruning.
    pub pruned: i64,
    pub pruned_at: i64,
    /// The control plane's SPIFFE ID, and its signature over the prune note.
    pub signer: String,
    pub jws: String,
}

/// What a pruning would remove from one writer: its lines up to `last` (inclusive).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PruneRange {
    pub instance: String,
    pub last: i64,
    /// Hex SHA-256 of line `last`.
    pub head: String,
    pub count: i64,
}

/// What committing a batch found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Committed {
    Stored,
    /// The instance's position moved since it was read (another delivery landed first).
    Moved,
}

const COLUMNS: &str = "instance, seq, hash, kind, time_ms, request_id, decision, direction, source, \
     destination_service, destination, destination_namespace, protocol, method, path, policy, \
     exchange, routing_key, line";

/// Rows per INSERT statement (19 binds each; SQLite allows 32,766 per statement).
const ROWS_PER_INSERT: usize = 500;

/// Rows with a path prefix up to which a query on SQLite reads them all off the path index
/// (see [`Store::decisions`]).
const PREFIX_PROBE: i64 = 2_000;

/// An [`InstancePosition`] from a row of `SELECT instance, spiffe_id, next_seq, head`
/// (a macro: the row type differs per backend).
macro_rules! position {
    ($r:expr) => {
        InstancePosition {
            instance: $r.try_get(0)?,
            spiffe_id: $r.try_get(1)?,
            next_seq: $r.try_get(2)?,
            head: $r.try_get(3)?,
        }
    };
}

/// A [`FindingRow`] from a row of `SELECT instance, kind, detail, found_at`.
macro_rules! finding {
    ($r:expr) => {
        FindingRow {
            instance: $r.try_get(0)?,
            kind: $r.try_get(1)?,
            detail: $r.try_get(2)?,
            found_at: $r.try_get(3)?,
        }
    };
}

impl Store {
    /// Where `instance`'s chain stands, if anything of it is stored.
    pub async fn decision_position(
        &self,
        instance: &str,
    ) -> Result<Option<InstancePosition>, StoreError> {
        const SQL: &str = "SELECT instance, spiffe_id, next_seq, head FROM decision_instances
                           WHERE instance = $1";
        on_pool!(self, pool => sqlx::query(SQL)
            .bind(instance)
            .fetch_optional(pool)
            .await?
            .map(|r| Ok(position!(r)))
            .transpose())
    }

    /// The stored hashes of `instance`'s lines `first..=last` (to recognise a line sent
    /// again, or a different line under a stored number: a fork).
    pub async fn decision_hashes(
        &self,
        instance: &str,
        first: i64,
        last: i64,
    ) -> Result<std::collections::HashMap<i64, String>, StoreError> {
        const SQL: &str = "SELECT seq, hash FROM decisions
                           WHERE instance = $1 AND seq >= $2 AND seq <= $3";
        on_pool!(self, pool => sqlx::query(SQL)
            .bind(instance)
            .bind(first)
            .bind(last)
            .fetch_all(pool)
            .await?
            .into_iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect())
    }

    /// Stores `rows` and `findings` and moves the instance from `from` (its position when
    /// the batch was checked; `None`: nothing stored yet) to `to`, in one transaction.
    pub async fn commit_decisions(
        &self,
        from: Option<&InstancePosition>,
        to: &InstancePosition,
        rows: &[DecisionRow],
        findings: &[FindingRow],
    ) -> Result<Committed, StoreError> {
        let _turn = self.write_turn().await;
        macro_rules! commit {
            ($pool:expr) => {{
                let mut tx = $pool.begin().await?;
                let moved = match from {
                    Some(from) => sqlx::query(
                        "UPDATE decision_instances SET next_seq = $1, head = $2, updated_at = $3
                         WHERE instance = $4 AND next_seq = $5",
                    )
                    .bind(to.next_seq)
                    .bind(&to.head)
                    .bind(crate::ca::unix_now())
                    .bind(&to.instance)
                    .bind(from.next_seq)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected(),
                    None => sqlx::query(
                        "INSERT INTO decision_instances (instance, spiffe_id, next_seq, head, updated_at)
                         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (instance) DO NOTHING",
                    )
                    .bind(&to.instance)
                    .bind(&to.spiffe_id)
                    .bind(to.next_seq)
                    .bind(&to.head)
                    .bind(crate::ca::unix_now())
                    .execute(&mut *tx)
                    .await?
                    .rows_affected(),
                };
                if moved != 1 {
                    tx.rollback().await?;
                    return Ok(Committed::Moved);
                }
                for chunk in rows.chunks(ROWS_PER_INSERT) {
                    let mut q = QueryBuilder::new(format!("INSERT INTO decisions ({COLUMNS}) "));
                    q.push_values(chunk, |mut b, r| {
                        b.push_bind(&r.instance)
                            .push_bind(r.seq)
                            .push_bind(&r.hash)
                            .push_bind(&r.kind)
                            .push_bind(r.time_ms)
                            .push_bind(&r.request_id)
                            .push_bind(&r.decision)
                            .push_bind(&r.direction)
                            .push_bind(&r.source)
                            .push_bind(&r.destination_service)
                            .push_bind(&r.destination)
                            .push_bind(&r.destination_namespace)
                            .push_bind(&r.protocol)
                            .push_bind(&r.method)
                            .push_bind(&r.path)
                            .push_bind(&r.policy)
                            .push_bind(&r.exchange)
                            .push_bind(&r.routing_key)
                            .push_bind(&r.line);
                    });
                    // A line already stored under its number stays as it was (the
                    // collector recorded a fork if it differed).
                    q.push(" ON CONFLICT (instance, seq) DO NOTHING");
                    q.build().execute(&mut *tx).await?;
                }
                for f in findings {
                    sqlx::query(
                        "INSERT INTO decision_findings (instance, kind, detail, found_at)
                         VALUES ($1, $2, $3, $4)",
                    )
                    .bind(&f.instance)
                    .bind(&f.kind)
                    .bind(&f.detail)
                    .bind(f.found_at)
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
                Ok(Committed::Stored)
            }};
        }
        match &self.backend {
            Backend::Sqlite(pool) => commit!(pool),
            Backend::Postgres(pool) => commit!(pool),
        }
    }

    /// Refreshes the query planner's statistics of the decision table (`ANALYZE`), as
    /// PostgreSQL's autovacuum does after enough rows changed. Without statistics a table
    /// loaded moments ago is planned as if it held a handful of rows (a filter's matches
    /// gathered and sorted instead of read off the newest-first index: 140 ms instead of
    /// 0.15 ms at 100,000 rows). Keep autovacuum on in production; the benchmark calls this
    /// after its bulk load.
    pub async fn analyze_decisions(&self) -> Result<(), StoreError> {
        on_pool!(self, pool => sqlx::query("ANALYZE decisions").execute(pool).await.map(drop))?;
        Ok(())
    }

    /// Stored decisions (not checkpoints), newest first.
    pub async fn decisions(&self, f: &DecisionFilter) -> Result<Vec<StoredDecision>, StoreError> {
        // A path prefix is a range, not LIKE: no wildcard characters to escape, and the
        // index on the column serves it. Which index serves the page best depends on how
        // many rows have the prefix. PostgreSQL's planner estimates that from its histogram
        // of the column; SQLite's cannot (no STAT4) and took the path index for a prefix
        // 110,000 of 10 million rows have, gathered and sorted them all (1.5 s at p99). So
        // on SQLite, count up to PREFIX_PROBE of them first: fewer, and the path index finds
        // them all at once; as many or more, and the prefix is a filter on the newest-first
        // scan (`path || ''` is not the indexed column), which meets them often enough to
        // fill a page soon (52 ms at p99 over 10 million). On PostgreSQL the probe made the
        // same query slower (p99 73 -> 117 ms), so it is left to the planner (BENCHMARKS.md,
        // 2026-12-04).
        let prefix = f
            .path_prefix
            .as_ref()
            .map(|p| (p.clone(), format!("{p}\u{10ffff}")));
        let common_prefix = match (&self.backend, &prefix) {
            (Backend::Sqlite(pool), Some((from, to))) => {
                let matches: i64 = sqlx::query_scalar(
                    "SELECT COUNT(*) FROM (SELECT 1 FROM decisions
                     WHERE path >= $1 AND path < $2 LIMIT $3) AS probe",
                )
                .bind(from)
                .bind(to)
                .bind(PREFIX_PROBE)
                .fetch_one(pool)
                .await?;
                matches >= PREFIX_PROBE
            }
            _ => false,
        };
        macro_rules! query {
            ($pool:expr) => {{
                let mut q = QueryBuilder::new(
                    "SELECT instance, seq, time_ms, line FROM decisions WHERE kind = 'decision'",
                );
                if let Some(v) = f.since_ms {
                    q.push(" AND time_ms >= ").push_bind(v);
                }
                if let Some(v) = f.until_ms {
                    q.push(" AND time_ms < ").push_bind(v);
                }
                for (column, value) in [
                    ("source", &f.source),
                    ("destination_service", &f.destination),
                    ("destination_namespace", &f.namespace),
                    ("decision", &f.decision),
                    ("policy", &f.policy),
                    ("protocol", &f.protocol),
                    ("method", &f.method),
                    ("exchange", &f.exchange),
                    ("routing_key", &f.routing_key),
                    ("request_id", &f.request_id),
                ] {
                    if let Some(v) = value {
                        q.push(format!(" AND {column} = ")).push_bind(v.clone());
                    }
                }
                if let Some((from, to)) = &prefix {
                    let column = if common_prefix {
                        "(path || '')"
                    } else {
                        "path"
                    };
                    q.push(format!(" AND {column} >= ")).push_bind(from.clone());
                    q.push(format!(" AND {column} < ")).push_bind(to.clone());
                }
                if let Some((t, i, s)) = &f.before {
                    q.push(" AND (time_ms < ").push_bind(*t);
                    q.push(" OR (time_ms = ").push_bind(*t);
                    q.push(" AND (instance < ").push_bind(i.clone());
                    q.push(" OR (instance = ").push_bind(i.clone());
                    q.push(" AND seq < ").push_bind(*s).push(")))) ");
                }
                q.push(" ORDER BY time_ms DESC, instance DESC, seq DESC LIMIT ")
                    .push_bind(f.limit.clamp(1, 1000));
                q.build()
                    .fetch_all($pool)
                    .await?
                    .into_iter()
                    .map(|r| {
                        Ok(StoredDecision {
                            instance: r.try_get(0)?,
                            seq: r.try_get(1)?,
                            time_ms: r.try_get(2)?,
                            line: r.try_get(3)?,
                        })
                    })
                    .collect()
            }};
        }
        match &self.backend {
            Backend::Sqlite(pool) => query!(pool),
            Backend::Postgres(pool) => query!(pool),
        }
    }

    /// Integrity findings, newest first.
    pub async fn decision_findings(&self, limit: i64) -> Result<Vec<FindingRow>, StoreError> {
        const SQL: &str = "SELECT instance, kind, detail, found_at FROM decision_findings
                           ORDER BY found_at DESC LIMIT $1";
        on_pool!(self, pool => sqlx::query(SQL)
            .bind(limit.clamp(1, 10_000))
            .fetch_all(pool)
            .await?
            .into_iter()
            .map(|r| Ok(finding!(r)))
            .collect())
    }

    /// Every writer with lines in the store, by instance id.
    pub async fn decision_instances(&self) -> Result<Vec<InstancePosition>, StoreError> {
        const SQL: &str = "SELECT instance, spiffe_id, next_seq, head FROM decision_instances
                           ORDER BY instance";
        on_pool!(self, pool => sqlx::query(SQL)
            .fetch_all(pool)
            .await?
            .into_iter()
            .map(|r| Ok(position!(r)))
            .collect())
    }

    /// Up to `limit` stored lines of `instance` from sequence number `from` on, in order.
    pub async fn decision_lines(
        &self,
        instance: &str,
        from: i64,
        limit: i64,
    ) -> Result<Vec<(i64, String)>, StoreError> {
        const SQL: &str = "SELECT seq, line FROM decisions WHERE instance = $1 AND seq >= $2
                           ORDER BY seq LIMIT $3";
        on_pool!(self, pool => sqlx::query(SQL)
            .bind(instance)
            .bind(from)
            .bind(limit)
            .fetch_all(pool)
            .await?
            .into_iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect())
    }

    /// The findings the collector stored for `instance`, oldest first.
    pub async fn decision_findings_of(
        &self,
        instance: &str,
    ) -> Result<Vec<FindingRow>, StoreError> {
        const SQL: &str = "SELECT instance, kind, detail, found_at FROM decision_findings
                           WHERE instance = $1 ORDER BY found_at";
        on_pool!(self, pool => sqlx::query(SQL)
            .bind(instance)
            .fetch_all(pool)
            .await?
            .into_iter()
            .map(|r| Ok(finding!(r)))
            .collect())
    }

    /// What pruning the lines older than `cutoff_ms` would remove from `instance`: a prefix
    /// of its chain, up to the last stored line before its first line that is not older
    /// (a chain is pruned from its start, so what is left still links up).
    pub async fn prune_range(
        &self,
        instance: &str,
        cutoff_ms: i64,
    ) -> Result<Option<PruneRange>, StoreError> {
        const SQL: &str = "SELECT seq, hash FROM decisions WHERE instance = $1 AND seq < COALESCE(
                               (SELECT MIN(seq) FROM decisions WHERE instance = $1 AND time_ms >= $2),
                               (SELECT MAX(seq) + 1 FROM decisions WHERE instance = $1))
                           ORDER BY seq DESC LIMIT 1";
        const COUNT: &str = "SELECT COUNT(*) FROM decisions WHERE instance = $1 AND seq <= $2";
        on_pool!(self, pool => {
            let Some(r) = sqlx::query(SQL)
                .bind(instance)
                .bind(cutoff_ms)
                .fetch_optional(pool)
                .await?
            else {
                return Ok(None);
            };
            let (last, head): (i64, String) = (r.try_get(0)?, r.try_get(1)?);
            let count: i64 = sqlx::query(COUNT)
                .bind(instance)
                .bind(last)
                .fetch_one(pool)
                .await?
                .try_get(0)?;
            Ok(Some(PruneRange {
                instance: instance.to_owned(),
                last,
                head,
                count,
            }))
        })
    }

    /// Deletes `instance`'s lines before `prune.next_seq` and records `prune`, in one
    /// transaction.
    pub async fn commit_prune(&self, prune: &PruneRow) -> Result<(), StoreError> {
        let _turn = self.write_turn().await;
        macro_rules! commit {
            ($pool:expr) => {{
                let mut tx = $pool.begin().await?;
                sqlx::query("DELETE FROM decisions WHERE instance = $1 AND seq < $2")
                    .bind(&prune.instance)
                    .bind(prune.next_seq)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(
                    "INSERT INTO decision_prunes
                        (instance, next_seq, head, cutoff_ms, pruned, pruned_at, signer, jws)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                     ON CONFLICT (instance) DO UPDATE SET next_seq = excluded.next_seq,
                        head = excluded.head, cutoff_ms = excluded.cutoff_ms,
                        pruned = excluded.pruned, pruned_at = excluded.pruned_at,
                        signer = excluded.signer, jws = excluded.jws",
                )
                .bind(&prune.instance)
                .bind(prune.next_seq)
                .bind(&prune.head)
                .bind(prune.cutoff_ms)
                .bind(prune.pruned)
                .bind(prune.pruned_at)
                .bind(&prune.signer)
                .bind(&prune.jws)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(())
            }};
        }
        match &self.backend {
            Backend::Sqlite(pool) => commit!(pool),
            Backend::Postgres(pool) => commit!(pool),
        }
    }

    /// Where retention left `instance`'s stored chain, if it pruned any of it.
    pub async fn decision_prune(&self, instance: &str) -> Result<Option<PruneRow>, StoreError> {
        const SQL: &str =
            "SELECT instance, next_seq, head, cutoff_ms, pruned, pruned_at, signer, jws
                           FROM decision_prunes WHERE instance = $1";
        on_pool!(self, pool => sqlx::query(SQL)
            .bind(instance)
            .fetch_optional(pool)
            .await?
            .map(|r| {
                Ok(PruneRow {
                    instance: r.try_get(0)?,
                    next_seq: r.try_get(1)?,
                    head: r.try_get(2)?,
                    cutoff_ms: r.try_get(3)?,
                    pruned: r.try_get(4)?,
                    pruned_at: r.try_get(5)?,
                    signer: r.try_get(6)?,
                    jws: r.try_get(7)?,
                })
            })
            .transpose())
    }

    /// For tests: runs `sql` as it is (to alter stored rows the way an intruder would).
    #[cfg(test)]
    pub async fn tamper_for_tests(&self, sql: &'static str) {
        on_pool!(self, pool => sqlx::query(sql).execute(pool).await.map(|_| ())).unwrap();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::sqlite_store;

    fn row(instance: &str, seq: i64, time_ms: i64, path: &str) -> DecisionRow {
        DecisionRow {
            instance: instance.into(),
            seq,
            hash: format!("{seq:064x}"),
            kind: "decision".into(),
            time_ms,
            path: Some(path.into()),
            line: format!("{{\"seq\":{seq}}}"),
            ..DecisionRow::default()
        }
    }

    fn position(instance: &str, next_seq: i64) -> InstancePosition {
        InstancePosition {
            instance: instance.into(),
            spiffe_id: "spiffe://palisade.local/ns/shop/sa/payments".into(),
            next_seq,
            head: None,
        }
    }

    /// A PostgreSQL database of its own whose default collation is ICU's `en-US` (a
    /// linguistic order, as most installations have), and what drops it.
    async fn icu_database() -> (String, impl AsyncFnOnce()) {
        let url = std::env::var("PALISADE_TEST_POSTGRES")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        let name = format!("t_icu_{}", crate::tokens::random_id().unwrap());
        let admin = sqlx::PgPool::connect(&url).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "CREATE DATABASE {name} TEMPLATE template0 ENCODING 'UTF8' LOCALE 'C.UTF-8' \
             LOCALE_PROVIDER icu ICU_LOCALE 'en-US'"
        )))
        .execute(&admin)
        .await
        .unwrap();
        let (base, _) = url.rsplit_once('/').unwrap();
        let db_url = format!("{base}/{name}");
        (db_url, async move || {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE {name} WITH (FORCE)"
            )))
            .execute(&admin)
            .await
            .unwrap();
        })
    }

    /// What the queries answer must not depend on the database's locale: a path prefix is
    /// a byte prefix and the newest-first order (and so the cursor) compares instance ids
    /// byte by byte, on SQLite and on a PostgreSQL whose default collation is linguistic.
    async fn text_compares_byte_by_byte(store: Store) {
        // Under en-US, "a" < "B" and "/Items/9" sorts between "/items/" and
        // "/items/" + U+10FFFF; byte by byte, "B" < "a" and "/Items/9" is no match.
        let a = [
            row("a", 0, 1_000, "/items/9"),
            row("a", 1, 1_000, "/Items/9"),
            row("a", 2, 1_000, "/items-9"),
            row("a", 3, 1_000, "/items/"),
            row("a", 4, 1_000, "/itemsx"),
        ];
        let b = [row("B", 0, 1_000, "/items/10")];
        for (instance, rows) in [("a", &a[..]), ("B", &b[..])] {
            let to = position(instance, rows.len() as i64);
            let stored = store.commit_decisions(None, &to, rows, &[]).await.unwrap();
            assert_eq!(stored, Committed::Stored);
        }
        let prefixed: Vec<(String, i64)> = store
            .decisions(&DecisionFilter {
                path_prefix: Some("/items/".into()),
                limit: 100,
                ..DecisionFilter::default()
            })
            .await
            .unwrap()
            .into_iter()
            .map(|d| (d.instance, d.seq))
            .collect();
        assert_eq!(
            prefixed,
            [("a".into(), 3), ("a".into(), 0), ("B".into(), 0)],
            "{}",
            store.backend_name()
        );
        // Page by page with the cursor: every row once, in byte order of the instance.
        let mut seen = Vec::new();
        let mut before = None;
        loop {
            let page = store
                .decisions(&DecisionFilter {
                    before: before.clone(),
                    limit: 2,
                    ..DecisionFilter::default()
                })
                .await
                .unwrap();
            let Some(last) = page.last() else { break };
            before = Some((last.time_ms, last.instance.clone(), last.seq));
            seen.extend(page.into_iter().map(|d| (d.instance, d.seq)));
        }
        let expected: Vec<(String, i64)> = (0..5)
            .rev()
            .map(|s| ("a".to_owned(), s))
            .chain([("B".to_owned(), 0)])
            .collect();
        assert_eq!(seen, expected, "{}", store.backend_name());
    }

    /// Both ways of serving a path prefix (below and above [`PREFIX_PROBE`] matches on
    /// SQLite; the planner's choice on PostgreSQL) give the same page: the newest rows with
    /// the prefix, and only those.
    async fn a_path_prefix_page_is_the_same_however_many_match(store: Store) {
        let common = PREFIX_PROBE + 50;
        let rows: Vec<DecisionRow> = (0..common + 20)
            .map(|n| {
                let path = if n < common {
                    format!("/many/{n}")
                } else {
                    format!("/rare/{n}")
                };
                // Interleaved in time: the rare ones are neither all newest nor all oldest.
                let time_ms = if n < common {
                    n * 2
                } else {
                    (n - common) * 100 + 1
                };
                row("c", n, time_ms, &path)
            })
            .collect();
        let to = position("c", rows.len() as i64);
        store.commit_decisions(None, &to, &rows, &[]).await.unwrap();
        for (prefix, expected) in [
            ("/many/", (common - 10..common).rev().collect::<Vec<i64>>()),
            ("/rare/", (common + 10..common + 20).rev().collect()),
        ] {
            let page: Vec<i64> = store
                .decisions(&DecisionFilter {
                    path_prefix: Some(prefix.into()),
                    limit: 10,
                    ..DecisionFilter::default()
                })
                .await
                .unwrap()
                .into_iter()
                .map(|d| d.seq)
                .collect();
            assert_eq!(page, expected, "{prefix} on {}", store.backend_name());
        }
    }

    #[tokio::test]
    async fn a_path_prefix_page_is_the_same_however_many_match_on_both_backends() {
        let dir = tempfile::tempdir().unwrap();
        a_path_prefix_page_is_the_same_however_many_match(sqlite_store(&dir).await).await;
        a_path_prefix_page_is_the_same_however_many_match(
            crate::store::tests::postgres_store().await,
        )
        .await;
    }

    #[tokio::test]
    async fn text_compares_byte_by_byte_on_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        text_compares_byte_by_byte(sqlite_store(&dir).await).await;
    }

    #[tokio::test]
    async fn text_compares_byte_by_byte_on_postgres_with_a_linguistic_locale() {
        let (url, drop_database) = icu_database().await;
        let store = Store::open_url(&url).await.unwrap();
        text_compares_byte_by_byte(store).await;
        drop_database().await;
    }
}
