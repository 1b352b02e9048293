//! The control plane's persistent state, behind one interface with two backends: SQLite in
//! the data dir (the embedded default) and PostgreSQL (for several replicas).
//!
//! Join tokens are recorded when they are created and consumed with one conditional
//! `UPDATE`, so a token is accepted once even when two replicas see it at the same moment.
//! Migrations are versioned with sqlx's migrator and embedded in the binary.

use std::borrow::Cow;
use std::path::Path;
use std::str::FromStr;

use palisade_contract::decisions::trail;
use serde::Serialize;
use serde_json::Value;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use sqlx::{Row, SqlSafeStr};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database migration: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error("unsupported database URL {0:?}: use sqlite://PATH or postgres://...")]
    UnsupportedUrl(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

/// Versioned schema. Append new versions; never edit a released one.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "join tokens",
        "CREATE TABLE join_tokens (
            jti TEXT PRIMARY KEY,
            spiffe_id TEXT NOT NULL,
            created_by TEXT NOT NULL,
            created_at BIGINT NOT NULL,
            expires_at BIGINT NOT NULL,
            used_at BIGINT,
            used_by_serial TEXT
        )",
    ),
    (
        2,
        "mesh configuration, its version and the admin audit trail",
        // One row holds the mesh version; every change takes it with an UPDATE first, which
        // serializes writers on both backends (a row lock in PostgreSQL, the write lock in
        // SQLite) so the resourceVersion checks below it can never race.
        "CREATE TABLE mesh_version (id INTEGER PRIMARY KEY, version BIGINT NOT NULL);
         INSERT INTO mesh_version (id, version) VALUES (1, 0);
         CREATE TABLE resources (
            kind TEXT NOT NULL,
            namespace TEXT NOT NULL,
            name TEXT NOT NULL,
            document TEXT NOT NULL,
            resource_version BIGINT NOT NULL,
            updated_at BIGINT NOT NULL,
            updated_by TEXT NOT NULL,
            PRIMARY KEY (kind, namespace, name)
         );
         CREATE TABLE admin_audit (
            mesh_version BIGINT NOT NULL,
            seq BIGINT NOT NULL,
            time BIGINT NOT NULL,
            principal TEXT NOT NULL,
            request_id TEXT NOT NULL,
            action TEXT NOT NULL,
            kind TEXT NOT NULL,
            namespace TEXT NOT NULL,
            name TEXT NOT NULL,
            before TEXT,
            after TEXT,
            PRIMARY KEY (mesh_version, seq)
         );
         CREATE TABLE workloads (
            spiffe_id TEXT NOT NULL,
            instance TEXT NOT NULL,
            applied_version BIGINT NOT NULL,
            certificate_expiry BIGINT NOT NULL,
            last_seen BIGINT NOT NULL,
            PRIMARY KEY (spiffe_id, instance)
         )",
    ),
    (
        3,
        "admin tokens",
        // Only the token's id is kept, never the token: a token is accepted while its row
        // exists, is unexpired and is not revoked (checked on every call).
        "CREATE TABLE admin_tokens (
            jti TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            role TEXT NOT NULL,
            created_by TEXT NOT NULL,
            created_at BIGINT NOT NULL,
            expires_at BIGINT NOT NULL,
            revoked_at BIGINT,
            revoked_by TEXT
        )",
    ),
    (
        4,
        "the central decision log",
        // `decisions` keeps each shipped line whole (`line`) beside the columns queries
        // filter on; each filter's index ends in the newest-first order (time, instance,
        // seq), so a page is read off the index in order instead of sorting every match.
        "CREATE TABLE decision_instances (
            instance TEXT PRIMARY KEY,
            spiffe_id TEXT NOT NULL,
            next_seq BIGINT NOT NULL,
            head TEXT,
            updated_at BIGINT NOT NULL
         );
         CREATE TABLE decisions (
            instance TEXT NOT NULL,
            seq BIGINT NOT NULL,
            hash TEXT NOT NULL,
            kind TEXT NOT NULL,
            time_ms BIGINT NOT NULL,
            request_id TEXT,
            decision TEXT,
            direction TEXT,
            source TEXT,
            destination_service TEXT,
            destination TEXT,
            destination_namespace TEXT,
            protocol TEXT,
            method TEXT,
            path TEXT,
            policy TEXT,
            exchange TEXT,
            routing_key TEXT,
            line TEXT NOT NULL,
            PRIMARY KEY (instance, seq)
         );
         CREATE INDEX decisions_newest ON decisions (time_ms, instance, seq);
         CREATE INDEX decisions_by_source ON decisions (source, time_ms, instance, seq);
         CREATE INDEX decisions_by_destination
            ON decisions (destination_service, time_ms, instance, seq);
         CREATE INDEX decisions_by_namespace
            ON decisions (destination_namespace, time_ms, instance, seq);
         CREATE INDEX decisions_by_decision ON decisions (decision, time_ms, instance, seq);
         CREATE INDEX decisions_by_path ON decisions (path);
         CREATE INDEX decisions_by_request ON decisions (request_id);
         CREATE TABLE decision_findings (
            instance TEXT NOT NULL,
            kind TEXT NOT NULL,
            detail TEXT NOT NULL,
            found_at BIGINT NOT NULL
         );
         CREATE INDEX decision_findings_newest ON decision_findings (found_at)",
    ),
    (
        5,
        "decision-log retention",
        // One row per writer whose oldest records were pruned: where its stored chain now
        // begins, and the control plane's signature over that (see store/decisions.rs).
        "CREATE TABLE decision_prunes (
            instance TEXT PRIMARY KEY,
            next_seq BIGINT NOT NULL,
            head TEXT NOT NULL,
            cutoff_ms BIGINT NOT NULL,
            pruned BIGINT NOT NULL,
            pruned_at BIGINT NOT NULL,
            signer TEXT NOT NULL,
            jws TEXT NOT NULL
         )",
    ),
    (
        6,
        "the admin audit trail hash-chained and checkpointed",
        // `pos` orders the trail as written (contract::decisions::trail); entries from
        // before this migration have none and are reported as not chained.
        "ALTER TABLE admin_audit ADD COLUMN pos BIGINT;
         ALTER TABLE admin_audit ADD COLUMN prev TEXT;
         ALTER TABLE admin_audit ADD COLUMN hash TEXT;
         CREATE UNIQUE INDEX admin_audit_pos ON admin_audit (pos);
         CREATE TABLE admin_audit_checkpoints (
            pos BIGINT PRIMARY KEY,
            head TEXT NOT NULL,
            time BIGINT NOT NULL,
            signer TEXT NOT NULL,
            jws TEXT NOT NULL
         )",
    ),
];

fn migrator() -> Migrator {
    Migrator::with_migrations(
        MIGRATIONS
            .iter()
            .map(|(version, description, sql)| {
                Migration::new(
                    *version,
                    Cow::Borrowed(*description),
                    MigrationType::Simple,
                    sql.into_sql_str(),
                    false,
                )
            })
            .collect(),
    )
}

#[derive(Debug, Clone)]
enum Backend {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs the same statement on whichever backend is in use.
macro_rules! on_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match &$store.backend {
            Backend::Sqlite($pool) => $body,
            Backend::Postgres($pool) => $body,
        }
    };
}

mod admin_trail;
mod decisions;
pub use admin_trail::{TrailCheckpoint, TrailRow};
pub use decisions::{
    Committed, DecisionFilter, DecisionRow, FindingRow, InstancePosition, PruneRange, PruneRow,
    StoredDecision,
};

#[derive(Debug, Clone)]
pub struct Store {
    backend: Backend,
}

/// A join token as recorded at creation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinTokenRecord {
    pub jti: String,
    pub spiffe_id: String,
    pub created_by: String,
    pub created_at: i64,
    pub expires_at: i64,
}

/// An admin token as recorded at creation (the token itself is never stored).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AdminTokenRecord {
    #[serde(rename = "id")]
    pub jti: String,
    pub name: String,
    pub role: String,
    pub created_by: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub revoked_at: Option<i64>,
    pub revoked_by: Option<String>,
}

/// What consuming a join token found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consumed {
    /// First use: the token is now spent.
    Fresh,
    /// Already used, never recorded, recorded for another identity, or past its expiry.
    Refused,
}

impl Store {
    /// Opens (creating if needed) the SQLite database at `path`.
    pub async fn sqlite(path: &Path) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(std::time::Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        Self::migrated(Backend::Sqlite(pool)).await
    }

    pub async fn postgres(options: PgConnectOptions) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .connect_with(options)
            .await?;
        Self::migrated(Backend::Postgres(pool)).await
    }

    /// Opens the database a `--database-url` names (`postgres://...` or `sqlite://PATH`).
    pub async fn open_url(url: &str) -> Result<Self, StoreError> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Self::postgres(PgConnectOptions::from_str(url)?).await
        } else if let Some(path) = url.strip_prefix("sqlite://") {
            Self::sqlite(Path::new(path)).await
        } else {
            Err(StoreError::UnsupportedUrl(url.to_owned()))
        }
    }

    async fn migrated(backend: Backend) -> Result<Self, StoreError> {
        let store = Self { backend };
        on_pool!(store, pool => migrator().run(pool).await)?;
        Ok(store)
    }

    pub fn backend_name(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite(_) => "sqlite",
            Backend::Postgres(_) => "postgres",
        }
    }

    pub async fn record_join_token(&self, record: &JoinTokenRecord) -> Result<(), StoreError> {
        const SQL: &str =
            "INSERT INTO join_tokens (jti, spiffe_id, created_by, created_at, expires_at)
                           VALUES ($1, $2, $3, $4, $5)";
        on_pool!(self, pool => sqlx::query(SQL)
            .bind(&record.jti)
            .bind(&record.spiffe_id)
            .bind(&record.created_by)
            .bind(record.created_at)
            .bind(record.expires_at)
            .execute(pool)
            .await
            .map(|_| ()))?;
        Ok(())
    }

    /// Spends a join token: succeeds once per recorded, unexpired token, and only for the
    /// identity it was recorded for. The `jti` alone is not enough: a token carrying a
    /// recorded `jti` with another `sub` must not spend that record for another identity.
    pub async fn consume_join_token(
        &self,
        jti: &str,
        spiffe_id: &str,
        now: i64,
        serial: &str,
    ) -> Result<Consumed, StoreError> {
        const SQL: &str = "UPDATE join_tokens SET used_at = $1, used_by_serial = $2
                           WHERE jti = $3 AND spiffe_id = $4 AND used_at IS NULL
                             AND expires_at > $1";
        let rows = on_pool!(self, pool => sqlx::query(SQL)
            .bind(now)
            .bind(serial)
            .bind(jti)
            .bind(spiffe_id)
            .execute(pool)
            .await
            .map(|r| r.rows_affected()))?;
        Ok(if rows == 1 {
            Consumed::Fresh
        } else {
            Consumed::Refused
        })
    }

    pub async fn record_admin_token(&self, r: &AdminTokenRecord) -> Result<(), StoreError> {
        const SQL: &str = "INSERT INTO admin_tokens
            (jti, name, role, created_by, created_at, expires_at, revoked_at, revoked_by)
            VALUES ($1, $2, $3, $4, $5, $6, NULL, NULL)";
        on_pool!(self, pool => sqlx::query(SQL)
            .bind(&r.jti)
            .bind(&r.name)
            .bind(&r.role)
            .bind(&r.created_by)
            .bind(r.created_at)
            .bind(r.expires_at)
            .execute(pool)
            .await
            .map(|_| ()))?;
        Ok(())
    }

    /// Every recorded admin token, newest first.
    pub async fn admin_tokens(&self) -> Result<Vec<AdminTokenRecord>, StoreError> {
        const SQL: &str = "SELECT jti, name, role, created_by, created_at, expires_at,
                                  revoked_at, revoked_by
                           FROM admin_tokens ORDER BY created_at DESC, jti";
        let rows = on_pool!(self, pool => sqlx::query(SQL).fetch_all(pool).await.and_then(|rows| {
            rows.iter()
                .map(|r| {
                    Ok(AdminTokenRecord {
                        jti: r.try_get(0)?,
                        name: r.try_get(1)?,
                        role: r.try_get(2)?,
                        created_by: r.try_get(3)?,
                        created_at: r.try_get(4)?,
                        expires_at: r.try_get(5)?,
                        revoked_at: r.try_get(6)?,
                        revoked_by: r.try_get(7)?,
                    })
                })
                .collect::<Result<Vec<_>, sqlx::Error>>()
        }))?;
        Ok(rows)
    }

    /// Whether the admin token `jti` may be used at `now`: recorded, unexpired, unrevoked.
    pub async fn admin_token_active(&self, jti: &str, now: i64) -> Result<bool, StoreError> {
        const SQL: &str = "SELECT COUNT(*) FROM admin_tokens
                           WHERE jti = $1 AND revoked_at IS NULL AND expires_at > $2";
        let n: i64 = on_pool!(self, pool => sqlx::query(SQL)
            .bind(jti)
            .bind(now)
            .fetch_one(pool)
            .await
            .and_then(|r| r.try_get(0)))?;
        Ok(n > 0)
    }

    /// Revokes the unrevoked admin tokens whose id or name is `id_or_name`; returns them.
    pub async fn revoke_admin_tokens(
        &self,
        id_or_name: &str,
        by: &str,
        now: i64,
    ) -> Result<Vec<AdminTokenRecord>, StoreError> {
        const SQL: &str = "UPDATE admin_tokens SET revoked_at = $1, revoked_by = $2
                           WHERE (jti = $3 OR name = $3) AND revoked_at IS NULL";
        let targets: Vec<AdminTokenRecord> = self
            .admin_tokens()
            .await?
            .into_iter()
            .filter(|t| (t.jti == id_or_name || t.name == id_or_name) && t.revoked_at.is_none())
            .collect();
        on_pool!(self, pool => sqlx::query(SQL)
            .bind(now)
            .bind(by)
            .bind(id_or_name)
            .execute(pool)
            .await
            .map(|_| ()))?;
        Ok(targets)
    }

    /// Whether a join token has been used (None when it was never recorded).
    pub async fn join_token_used(&self, jti: &str) -> Result<Option<bool>, StoreError> {
        const SQL: &str = "SELECT used_at FROM join_tokens WHERE jti = $1";
        let used: Option<Option<i64>> = on_pool!(self, pool => sqlx::query(SQL)
            .bind(jti)
            .fetch_optional(pool)
            .await
            .and_then(|row| row.map(|r| r.try_get::<Option<i64>, _>(0)).transpose()))?;
        Ok(used.map(|u| u.is_some()))
    }
}

/// One stored mesh document.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Resource {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    /// The document as it was applied (a generic value: what was validated is what is kept).
    pub document: Value,
    /// The mesh version of its last change; `If-Match` compares against it.
    pub resource_version: i64,
    pub updated_at: i64,
    pub updated_by: String,
}

/// What a write expects to find, for optimistic concurrency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Whatever is there (apply).
    Any,
    /// Nothing (create only).
    Absent,
    /// This resourceVersion (`If-Match`).
    Version(i64),
}

/// One change in a batch: a document to put, or (`document: None`) one to delete.
#[derive(Debug, Clone)]
pub struct Change {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub document: Option<Value>,
    pub expect: Expect,
}

/// Who made a batch of changes, and when.
#[derive(Debug, Clone)]
pub struct Actor<'a> {
    pub principal: &'a str,
    pub request_id: &'a str,
    pub now: i64,
}

/// What a batch did to one resource.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Outcome {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    /// `created`, `updated`, `unchanged` or `deleted`.
    pub action: &'static str,
}

/// Why a batch was not written (nothing of it was).
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    #[error(
        "{kind} {namespace}/{name} was changed since version {expected} (it is at {actual}); read it again and retry"
    )]
    Stale {
        kind: String,
        namespace: String,
        name: String,
        expected: i64,
        actual: i64,
    },
    #[error("{kind} {namespace}/{name} already exists")]
    Exists {
        kind: String,
        namespace: String,
        name: String,
    },
    #[error("{kind} {namespace}/{name} does not exist")]
    Missing {
        kind: String,
        namespace: String,
        name: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for ChangeError {
    fn from(e: sqlx::Error) -> Self {
        ChangeError::Store(StoreError::Database(e))
    }
}

/// One entry of the admin audit trail.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditEntry {
    pub mesh_version: i64,
    /// The entry's place within its mesh version (with it, the trail's order and cursor).
    pub seq: i64,
    pub time: i64,
    pub principal: String,
    pub request_id: String,
    pub action: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub before: Option<Value>,
    pub after: Option<Value>,
}

/// Which audit entries to return.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub since: Option<i64>,
    pub principal: Option<String>,
    pub kind: Option<String>,
    pub namespace: Option<String>,
    pub limit: Option<i64>,
    /// Only entries older than this one, `(mesh_version, seq)` (the next page).
    pub before: Option<(i64, i64)>,
}

/// A sidecar as last seen by a control-plane replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Workload {
    pub spiffe_id: String,
    pub instance: String,
    pub applied_version: i64,
    pub certificate_expiry: i64,
    pub last_seen: i64,
}

/// Decodes a stored document (always written by this module as JSON).
fn decode(text: Option<String>) -> Result<Option<Value>, StoreError> {
    text.map(|t| serde_json::from_str(&t))
        .transpose()
        .map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// The admin trail's last chained entry in a transaction: (pos, hash), or (0, genesis).
macro_rules! trail_tail {
    ($tx:expr) => {{
        match sqlx::query(
            "SELECT pos, hash FROM admin_audit WHERE pos IS NOT NULL ORDER BY pos DESC LIMIT 1",
        )
        .fetch_optional($tx)
        .await?
        {
            Some(r) => (r.try_get::<i64, _>(0)?, r.try_get::<String, _>(1)?),
            None => (0, trail::GENESIS.to_owned()),
        }
    }};
}

/// Inserts `entry` chained after `prev` in a transaction; its hash (the next `prev`).
macro_rules! insert_trail_entry {
    ($tx:expr, $entry:expr, $prev:expr) => {{
        let e: &trail::Entry<'_> = $entry;
        let hash = trail::entry_hash($prev, e);
        sqlx::query(
            "INSERT INTO admin_audit
               (mesh_version, seq, time, principal, request_id, action, kind, namespace, name,
                before, after, pos, prev, hash)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
        )
        .bind(e.mesh_version)
        .bind(e.seq)
        .bind(e.time)
        .bind(e.principal)
        .bind(e.request_id)
        .bind(e.action)
        .bind(e.kind)
        .bind(e.namespace)
        .bind(e.name)
        .bind(e.before)
        .bind(e.after)
        .bind(e.pos)
        .bind($prev)
        .bind(&hash)
        .execute($tx)
        .await?;
        hash
    }};
}

/// Runs one batch inside a transaction on either backend (the SQL is the same).
macro_rules! apply_batch {
    ($pool:expr, $changes:expr, $actor:expr) => {{
        let mut tx = $pool.begin().await?;
        let version: i64 =
            sqlx::query("UPDATE mesh_version SET version = version + 1 WHERE id = 1 RETURNING version")
                .fetch_one(&mut *tx)
                .await?
                .try_get(0)?;
        // The trail's tail, read after the version row is locked by the update above, so
        // no other writer extends the chain meanwhile.
        let (mut pos, mut prev) = trail_tail!(&mut *tx);
        let mut outcomes = Vec::new();
        let mut seq: i64 = 0;
        for c in $changes {
            let row = sqlx::query(
                "SELECT document, resource_version FROM resources
                 WHERE kind = $1 AND namespace = $2 AND name = $3",
            )
            .bind(&c.kind)
            .bind(&c.namespace)
            .bind(&c.name)
            .fetch_optional(&mut *tx)
            .await?;
            let current: Option<(String, i64)> = match row {
                Some(r) => Some((r.try_get(0)?, r.try_get(1)?)),
                None => None,
            };
            let who = || (c.kind.clone(), c.namespace.clone(), c.name.clone());
            match (c.expect, &current) {
                (Expect::Version(expected), Some((_, actual))) if expected != *actual => {
                    let (kind, namespace, name) = who();
                    return Err(ChangeError::Stale { kind, namespace, name, expected, actual: *actual });
                }
                (Expect::Version(_), None) => {
                    let (kind, namespace, name) = who();
                    return Err(ChangeError::Missing { kind, namespace, name });
                }
                (Expect::Absent, Some(_)) => {
                    let (kind, namespace, name) = who();
                    return Err(ChangeError::Exists { kind, namespace, name });
                }
                _ => {}
            }
            let new_text = c.document.as_ref().map(Value::to_string);
            let before_value = decode(current.as_ref().map(|(d, _)| d.clone()))?;
            let action = match (&current, &c.document) {
                (None, None) => {
                    let (kind, namespace, name) = who();
                    return Err(ChangeError::Missing { kind, namespace, name });
                }
                (Some(_), None) => "deleted",
                (None, Some(_)) => "created",
                (Some(_), Some(doc)) if before_value.as_ref() == Some(doc) => "unchanged",
                (Some(_), Some(_)) => "updated",
            };
            outcomes.push(Outcome {
                kind: c.kind.clone(),
                namespace: c.namespace.clone(),
                name: c.name.clone(),
                action,
            });
            if action == "unchanged" {
                continue;
            }
            match &new_text {
                Some(text) => {
                    sqlx::query(
                        "INSERT INTO resources
                           (kind, namespace, name, document, resource_version, updated_at, updated_by)
                         VALUES ($1, $2, $3, $4, $5, $6, $7)
                         ON CONFLICT (kind, namespace, name) DO UPDATE SET
                           document = excluded.document,
                           resource_version = excluded.resource_version,
                           updated_at = excluded.updated_at,
                           updated_by = excluded.updated_by",
                    )
                    .bind(&c.kind)
                    .bind(&c.namespace)
                    .bind(&c.name)
                    .bind(text)
                    .bind(version)
                    .bind($actor.now)
                    .bind($actor.principal)
                    .execute(&mut *tx)
                    .await?;
                }
                None => {
                    sqlx::query("DELETE FROM resources WHERE kind = $1 AND namespace = $2 AND name = $3")
                        .bind(&c.kind)
                        .bind(&c.namespace)
                        .bind(&c.name)
                        .execute(&mut *tx)
                        .await?;
                }
            }
            seq += 1;
            pos += 1;
            let entry = trail::Entry {
                pos,
                mesh_version: version,
                seq,
                time: $actor.now,
                principal: $actor.principal,
                request_id: $actor.request_id,
                action,
                kind: &c.kind,
                namespace: &c.namespace,
                name: &c.name,
                before: current.as_ref().map(|(d, _)| d.as_str()),
                after: new_text.as_deref(),
            };
            prev = insert_trail_entry!(&mut *tx, &entry, &prev);
        }
        if seq == 0 {
            // Nothing changed: no new mesh version.
            tx.rollback().await?;
            let current: i64 = sqlx::query("SELECT version FROM mesh_version WHERE id = 1")
                .fetch_one($pool)
                .await?
                .try_get(0)?;
            return Ok((current, outcomes));
        }
        tx.commit().await?;
        Ok((version, outcomes))
    }};
}

impl Store {
    /// Applies a batch of changes atomically: all or nothing. A batch that changes
    /// something takes the next mesh version (every changed resource gets it as its
    /// resourceVersion) and leaves one audit entry per changed resource; a batch that changes
    /// nothing leaves the version alone. Returns the mesh version after the batch.
    pub async fn apply(
        &self,
        changes: &[Change],
        actor: &Actor<'_>,
    ) -> Result<(i64, Vec<Outcome>), ChangeError> {
        on_pool!(self, pool => apply_batch!(pool, changes, actor))
    }

    /// The mesh version: bumped by every batch that changes something.
    pub async fn mesh_version(&self) -> Result<i64, StoreError> {
        const SQL: &str = "SELECT version FROM mesh_version WHERE id = 1";
        Ok(on_pool!(self, pool => sqlx::query(SQL)
            .fetch_one(pool)
            .await
            .and_then(|r| r.try_get::<i64, _>(0)))?)
    }

    /// Stored resources, optionally of one kind and one namespace, ordered by kind,
    /// namespace and name; with the mesh version they were read at.
    pub async fn list(
        &self,
        kind: Option<&str>,
        namespace: Option<&str>,
    ) -> Result<(i64, Vec<Resource>), StoreError> {
        macro_rules! read {
            ($pool:expr) => {{
                let mut tx = $pool.begin().await?;
                let version: i64 = sqlx::query("SELECT version FROM mesh_version WHERE id = 1")
                    .fetch_one(&mut *tx)
                    .await?
                    .try_get(0)?;
                let rows = sqlx::query(
                    "SELECT kind, namespace, name, document, resource_version, updated_at, updated_by
                     FROM resources
                     WHERE ($1 IS NULL OR kind = $1) AND ($2 IS NULL OR namespace = $2)
                     ORDER BY kind, namespace, name",
                )
                .bind(kind)
                .bind(namespace)
                .fetch_all(&mut *tx)
                .await?;
                tx.commit().await?;
                let mut out = Vec::with_capacity(rows.len());
                for r in rows {
                    out.push(Resource {
                        kind: r.try_get(0)?,
                        namespace: r.try_get(1)?,
                        name: r.try_get(2)?,
                        document: decode(Some(r.try_get(3)?))?.unwrap_or_default(),
                        resource_version: r.try_get(4)?,
                        updated_at: r.try_get(5)?,
                        updated_by: r.try_get(6)?,
                    });
                }
                Ok::<_, StoreError>((version, out))
            }};
        }
        on_pool!(self, pool => read!(pool))
    }

    pub async fn get(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Resource>, StoreError> {
        let (_, all) = self.list(Some(kind), Some(namespace)).await?;
        Ok(all.into_iter().find(|r| r.name == name))
    }

    /// Records an administrative action that is not a configuration change (a join token
    /// created, a CA rotation step) in the audit trail, at the current mesh version, after
    /// that version's changes (its `seq` is the time in nanoseconds).
    pub async fn record_admin_event(
        &self,
        actor: &Actor<'_>,
        action: &str,
        kind: &str,
        namespace: &str,
        name: &str,
        detail: &Value,
    ) -> Result<(), StoreError> {
        let seq = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i64);
        let detail = detail.to_string();
        macro_rules! record {
            ($pool:expr) => {{
                let mut tx = $pool.begin().await?;
                // Locks the version row (as a change batch does), so the chain's tail
                // read next is the tail this entry extends.
                let version: i64 = sqlx::query(
                    "UPDATE mesh_version SET version = version WHERE id = 1 RETURNING version",
                )
                .fetch_one(&mut *tx)
                .await?
                .try_get(0)?;
                let (pos, prev) = trail_tail!(&mut *tx);
                let entry = trail::Entry {
                    pos: pos + 1,
                    mesh_version: version,
                    seq,
                    time: actor.now,
                    principal: actor.principal,
                    request_id: actor.request_id,
                    action,
                    kind,
                    namespace,
                    name,
                    before: None,
                    after: Some(&detail),
                };
                insert_trail_entry!(&mut *tx, &entry, &prev);
                tx.commit().await?;
                Ok::<_, StoreError>(())
            }};
        }
        on_pool!(self, pool => record!(pool))
    }

    /// The documents of `kind` as they stood at mesh version `version`, as (namespace,
    /// name, document): replayed from the audit trail, which holds every change with the
    /// document after it (what `simulate` needs to explain a decision under the version
    /// that made it, not the current one).
    pub async fn documents_at(
        &self,
        kind: &str,
        version: i64,
    ) -> Result<Vec<(String, String, Value)>, StoreError> {
        const SQL: &str = "SELECT namespace, name, after FROM admin_audit
                           WHERE kind = $1 AND mesh_version <= $2
                             AND action IN ('created', 'updated', 'deleted')
                           ORDER BY mesh_version, seq";
        let rows: Vec<(String, String, Option<String>)> = on_pool!(self, pool => sqlx::query(SQL)
            .bind(kind)
            .bind(version)
            .fetch_all(pool)
            .await?
            .into_iter()
            .map(|r| Ok::<_, StoreError>((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
            .collect::<Result<_, _>>())?;
        let mut at = std::collections::BTreeMap::new();
        for (namespace, name, after) in rows {
            at.insert((namespace, name), decode(after)?);
        }
        Ok(at
            .into_iter()
            .filter_map(|((namespace, name), doc)| Some((namespace, name, doc?)))
            .collect())
    }

    /// The admin audit trail, newest first (so the latest changes are on the first page
    /// however long the trail is); `before` pages on.
    pub async fn audit_trail(&self, f: &AuditFilter) -> Result<Vec<AuditEntry>, StoreError> {
        const SQL: &str = "SELECT mesh_version, seq, time, principal, request_id, action, kind,
                                  namespace, name, before, after
                           FROM admin_audit
                           WHERE ($1 IS NULL OR time >= $1) AND ($2 IS NULL OR principal = $2)
                             AND ($3 IS NULL OR kind = $3) AND ($4 IS NULL OR namespace = $4)
                             AND ($6 IS NULL OR mesh_version < $6
                                  OR (mesh_version = $6 AND seq < $7))
                           ORDER BY mesh_version DESC, seq DESC
                           LIMIT $5";
        let (before_version, before_seq) = f.before.unzip();
        on_pool!(self, pool => sqlx::query(SQL)
            .bind(f.since)
            .bind(&f.principal)
            .bind(&f.kind)
            .bind(&f.namespace)
            .bind(f.limit.unwrap_or(1000).clamp(1, 10_000))
            .bind(before_version)
            .bind(before_seq)
            .fetch_all(pool)
            .await?
            .into_iter()
            .map(|r| {
                Ok(AuditEntry {
                    mesh_version: r.try_get(0)?,
                    seq: r.try_get(1)?,
                    time: r.try_get(2)?,
                    principal: r.try_get(3)?,
                    request_id: r.try_get(4)?,
                    action: r.try_get(5)?,
                    kind: r.try_get(6)?,
                    namespace: r.try_get(7)?,
                    name: r.try_get(8)?,
                    before: decode(r.try_get(9)?)?,
                    after: decode(r.try_get(10)?)?,
                })
            })
            .collect())
    }

    /// Records that a sidecar instance asked for its configuration.
    pub async fn workload_seen(&self, w: &Workload) -> Result<(), StoreError> {
        const SQL: &str = "INSERT INTO workloads
                             (spiffe_id, instance, applied_version, certificate_expiry, last_seen)
                           VALUES ($1, $2, $3, $4, $5)
                           ON CONFLICT (spiffe_id, instance) DO UPDATE SET
                             applied_version = excluded.applied_version,
                             certificate_expiry = excluded.certificate_expiry,
                             last_seen = excluded.last_seen";
        on_pool!(self, pool => sqlx::query(SQL)
            .bind(&w.spiffe_id)
            .bind(&w.instance)
            .bind(w.applied_version)
            .bind(w.certificate_expiry)
            .bind(w.last_seen)
            .execute(pool)
            .await
            .map(|_| ()))?;
        Ok(())
    }

    /// Sidecars seen since `since` (unix seconds), by SPIFFE ID.
    pub async fn workloads(&self, since: i64) -> Result<Vec<Workload>, StoreError> {
        const SQL: &str =
            "SELECT spiffe_id, instance, applied_version, certificate_expiry, last_seen
                           FROM workloads WHERE last_seen >= $1 ORDER BY spiffe_id, instance";
        on_pool!(self, pool => sqlx::query(SQL)
            .bind(since)
            .fetch_all(pool)
            .await?
            .into_iter()
            .map(|r| {
                Ok(Workload {
                    spiffe_id: r.try_get(0)?,
                    instance: r.try_get(1)?,
                    applied_version: r.try_get(2)?,
                    certificate_expiry: r.try_get(3)?,
                    last_seen: r.try_get(4)?,
                })
            })
            .collect())
    }
}

/// For tests: a database URL for a new, empty schema in the PostgreSQL the tests use
/// (`PALISADE_TEST_POSTGRES`, default `postgres://postgres@127.0.0.1:5432/test`), so tests
/// run in parallel and leave the shared database clean.
pub async fn fresh_postgres_schema() -> String {
    let url = std::env::var("PALISADE_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let schema = format!("t_{}", crate::tokens::random_id().expect("randomness"));
    let admin = PgPool::connect(&url)
        .await
        .expect("PostgreSQL at 127.0.0.1:5432 (see .ci/run)");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .execute(&admin)
        .await
        .expect("creating a test schema");
    admin.close().await;
    format!("{url}?options=-c%20search_path%3D{schema}")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Each test gets its own PostgreSQL schema, so tests run in parallel and leave the
    /// shared `test` database clean.
    pub(crate) async fn postgres_store() -> Store {
        Store::open_url(&fresh_postgres_schema().await)
            .await
            .unwrap()
    }

    async fn sqlite_store(dir: &tempfile::TempDir) -> Store {
        Store::sqlite(&dir.path().join("palisade.db"))
            .await
            .unwrap()
    }

    const B: &str = "spiffe://td/ns/a/sa/b";

    async fn join_token_is_single_use(store: Store) {
        let now = 1_000_000;
        let other = JoinTokenRecord {
            jti: "bound".into(),
            spiffe_id: B.into(),
            created_by: "admin".into(),
            created_at: now,
            expires_at: now + 600,
        };
        store.record_join_token(&other).await.unwrap();
        // A recorded jti presented for another identity spends nothing.
        assert_eq!(
            store
                .consume_join_token("bound", "spiffe://td/ns/a/sa/admin", now + 1, "00")
                .await
                .unwrap(),
            Consumed::Refused
        );
        assert_eq!(store.join_token_used("bound").await.unwrap(), Some(false));
        let record = JoinTokenRecord {
            jti: "abc".into(),
            spiffe_id: B.into(),
            created_by: "admin".into(),
            created_at: now,
            expires_at: now + 600,
        };
        store.record_join_token(&record).await.unwrap();
        assert_eq!(store.join_token_used("abc").await.unwrap(), Some(false));
        assert_eq!(
            store
                .consume_join_token("abc", B, now + 1, "01")
                .await
                .unwrap(),
            Consumed::Fresh
        );
        assert_eq!(
            store
                .consume_join_token("abc", B, now + 2, "02")
                .await
                .unwrap(),
            Consumed::Refused
        );
        assert_eq!(store.join_token_used("abc").await.unwrap(), Some(true));
        // Never recorded.
        assert_eq!(
            store
                .consume_join_token("nope", B, now, "03")
                .await
                .unwrap(),
            Consumed::Refused
        );
        assert_eq!(store.join_token_used("nope").await.unwrap(), None);
        // Recorded but expired.
        let old = JoinTokenRecord {
            jti: "old".into(),
            expires_at: now - 1,
            ..record
        };
        store.record_join_token(&old).await.unwrap();
        assert_eq!(
            store.consume_join_token("old", B, now, "04").await.unwrap(),
            Consumed::Refused
        );
    }

    async fn concurrent_consumers_get_one_success(store: Store) {
        let record = JoinTokenRecord {
            jti: "race".into(),
            spiffe_id: "spiffe://td/ns/a/sa/b".into(),
            created_by: "admin".into(),
            created_at: 10,
            expires_at: i64::MAX,
        };
        store.record_join_token(&record).await.unwrap();
        let attempts = (0..8).map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .consume_join_token("race", B, 20, &i.to_string())
                    .await
                    .unwrap()
            })
        });
        let mut fresh = 0;
        for attempt in attempts {
            if attempt.await.unwrap() == Consumed::Fresh {
                fresh += 1;
            }
        }
        assert_eq!(fresh, 1);
    }

    async fn admin_tokens_are_active_until_revoked_or_expired(store: Store) {
        let record = |jti: &str, name: &str, expires_at: i64| AdminTokenRecord {
            jti: jti.into(),
            name: name.into(),
            role: "viewer".into(),
            created_by: "admin".into(),
            created_at: 10,
            expires_at,
            revoked_at: None,
            revoked_by: None,
        };
        store
            .record_admin_token(&record("a", "ci", 1000))
            .await
            .unwrap();
        store
            .record_admin_token(&record("b", "old", 50))
            .await
            .unwrap();
        assert!(store.admin_token_active("a", 100).await.unwrap());
        assert!(
            !store.admin_token_active("b", 100).await.unwrap(),
            "expired"
        );
        assert!(
            !store.admin_token_active("nope", 100).await.unwrap(),
            "never recorded"
        );
        let revoked = store.revoke_admin_tokens("ci", "ops", 200).await.unwrap();
        assert_eq!(revoked.len(), 1);
        assert_eq!(revoked[0].jti, "a");
        assert!(
            !store.admin_token_active("a", 201).await.unwrap(),
            "revoked"
        );
        assert!(
            store
                .revoke_admin_tokens("a", "ops", 202)
                .await
                .unwrap()
                .is_empty()
        );
        let all = store.admin_tokens().await.unwrap();
        let a = all.iter().find(|t| t.jti == "a").unwrap();
        assert_eq!(
            (a.revoked_at, a.revoked_by.as_deref()),
            (Some(200), Some("ops"))
        );
        assert_eq!(all.len(), 2);
    }

    #[tokio::test]
    async fn sqlite_admin_tokens_are_active_until_revoked_or_expired() {
        let dir = tempfile::tempdir().unwrap();
        admin_tokens_are_active_until_revoked_or_expired(sqlite_store(&dir).await).await;
    }

    #[tokio::test]
    async fn postgres_admin_tokens_are_active_until_revoked_or_expired() {
        admin_tokens_are_active_until_revoked_or_expired(postgres_store().await).await;
    }

    #[tokio::test]
    async fn sqlite_join_token_is_single_use() {
        let dir = tempfile::tempdir().unwrap();
        join_token_is_single_use(sqlite_store(&dir).await).await;
    }

    #[tokio::test]
    async fn postgres_join_token_is_single_use() {
        join_token_is_single_use(postgres_store().await).await;
    }

    #[tokio::test]
    async fn sqlite_concurrent_consumers_get_one_success() {
        let dir = tempfile::tempdir().unwrap();
        concurrent_consumers_get_one_success(sqlite_store(&dir).await).await;
    }

    #[tokio::test]
    async fn postgres_concurrent_consumers_get_one_success() {
        concurrent_consumers_get_one_success(postgres_store().await).await;
    }

    #[tokio::test]
    async fn sqlite_data_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = sqlite_store(&dir).await;
        let record = JoinTokenRecord {
            jti: "keep".into(),
            spiffe_id: "spiffe://td/ns/a/sa/b".into(),
            created_by: "admin".into(),
            created_at: 1,
            expires_at: i64::MAX,
        };
        store.record_join_token(&record).await.unwrap();
        store.consume_join_token("keep", B, 2, "01").await.unwrap();
        drop(store);
        let reopened = sqlite_store(&dir).await;
        assert_eq!(reopened.join_token_used("keep").await.unwrap(), Some(true));
    }

    fn put(name: &str, value: i64, expect: Expect) -> Change {
        Change {
            kind: "AuthorizationPolicy".into(),
            namespace: "shop".into(),
            name: name.into(),
            document: Some(serde_json::json!({"v": value})),
            expect,
        }
    }

    fn actor(principal: &str) -> Actor<'_> {
        Actor {
            principal,
            request_id: "r1",
            now: 100,
        }
    }

    async fn versions_conflicts_and_the_audit_trail(store: Store) {
        assert_eq!(store.mesh_version().await.unwrap(), 0);
        let (v1, out) = store
            .apply(
                &[put("a", 1, Expect::Absent), put("b", 1, Expect::Any)],
                &actor("alice"),
            )
            .await
            .unwrap();
        assert_eq!(v1, 1);
        assert_eq!(
            out.iter().map(|o| o.action).collect::<Vec<_>>(),
            ["created", "created"]
        );
        let a = store
            .get("AuthorizationPolicy", "shop", "a")
            .await
            .unwrap()
            .unwrap();
        assert_eq!((a.resource_version, a.updated_by.as_str()), (1, "alice"));

        // Create-only on something that exists, and a stale If-Match: refused, nothing written.
        let err = store
            .apply(&[put("a", 2, Expect::Absent)], &actor("bob"))
            .await
            .unwrap_err();
        assert!(matches!(err, ChangeError::Exists { .. }), "{err}");
        let err = store
            .apply(
                &[
                    put("b", 2, Expect::Version(1)),
                    put("a", 2, Expect::Version(0)),
                ],
                &actor("bob"),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                ChangeError::Stale {
                    expected: 0,
                    actual: 1,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(
            store.mesh_version().await.unwrap(),
            1,
            "a refused batch changes nothing"
        );
        let b = store
            .get("AuthorizationPolicy", "shop", "b")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(b.document["v"], 1, "the batch was refused whole");

        // Re-applying the same document changes nothing and takes no version.
        let (v, out) = store
            .apply(&[put("a", 1, Expect::Any)], &actor("bob"))
            .await
            .unwrap();
        assert_eq!((v, out[0].action), (1, "unchanged"));

        let (v2, _) = store
            .apply(&[put("a", 2, Expect::Version(1))], &actor("bob"))
            .await
            .unwrap();
        assert_eq!(v2, 2);
        let delete = Change {
            document: None,
            ..put("b", 0, Expect::Version(1))
        };
        let (v3, out) = store
            .apply(std::slice::from_ref(&delete), &actor("carol"))
            .await
            .unwrap();
        assert_eq!((v3, out[0].action), (3, "deleted"));
        let err = store.apply(&[delete], &actor("carol")).await.unwrap_err();
        assert!(matches!(err, ChangeError::Missing { .. }), "{err}");

        let (version, all) = store.list(None, None).await.unwrap();
        assert_eq!(version, 3);
        assert_eq!(
            all.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
            ["a"]
        );
        assert!(
            store
                .list(Some("Service"), None)
                .await
                .unwrap()
                .1
                .is_empty()
        );
        assert!(store.list(None, Some("other")).await.unwrap().1.is_empty());

        let trail = store.audit_trail(&AuditFilter::default()).await.unwrap();
        let summary: Vec<(i64, &str, &str, &str)> = trail
            .iter()
            .map(|e| {
                (
                    e.mesh_version,
                    e.principal.as_str(),
                    e.action.as_str(),
                    e.name.as_str(),
                )
            })
            .collect();
        // Newest first.
        assert_eq!(
            summary,
            [
                (3, "carol", "deleted", "b"),
                (2, "bob", "updated", "a"),
                (1, "alice", "created", "b"),
                (1, "alice", "created", "a"),
            ]
        );
        assert_eq!(trail[1].before.as_ref().unwrap()["v"], 1);
        assert_eq!(trail[1].after.as_ref().unwrap()["v"], 2);
        assert_eq!(trail[0].after, None);
        // Pages: two, then the two older ones (within one mesh version too).
        let page = |before| {
            let store = store.clone();
            async move {
                store
                    .audit_trail(&AuditFilter {
                        limit: Some(2),
                        before,
                        ..Default::default()
                    })
                    .await
                    .unwrap()
            }
        };
        let first = page(None).await;
        let last = first.last().unwrap();
        let second = page(Some((last.mesh_version, last.seq))).await;
        let names: Vec<(&str, &str)> = first
            .iter()
            .chain(&second)
            .map(|e| (e.principal.as_str(), e.name.as_str()))
            .collect();
        assert_eq!(
            names,
            [("carol", "b"), ("bob", "a"), ("alice", "b"), ("alice", "a")]
        );
        let bobs = store
            .audit_trail(&AuditFilter {
                principal: Some("bob".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(bobs.len(), 1);
    }

    async fn concurrent_writers_with_one_version_get_one_success(store: Store) {
        store
            .apply(&[put("c", 0, Expect::Any)], &actor("setup"))
            .await
            .unwrap();
        let writers = (0..8).map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .apply(&[put("c", i + 1, Expect::Version(1))], &actor("w"))
                    .await
            })
        });
        let mut won = 0;
        for w in writers {
            match w.await.unwrap() {
                Ok(_) => won += 1,
                Err(ChangeError::Stale { .. }) => {}
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(
            won, 1,
            "exactly one writer of version 1 wins; the others get a conflict"
        );
        assert_eq!(store.mesh_version().await.unwrap(), 2);
    }

    async fn workloads_are_upserted(store: Store) {
        let mut w = Workload {
            spiffe_id: "spiffe://td/ns/shop/sa/a".into(),
            instance: "i1".into(),
            applied_version: 1,
            certificate_expiry: 500,
            last_seen: 10,
        };
        store.workload_seen(&w).await.unwrap();
        w.applied_version = 2;
        w.last_seen = 20;
        store.workload_seen(&w).await.unwrap();
        assert_eq!(store.workloads(0).await.unwrap(), vec![w.clone()]);
        assert!(store.workloads(21).await.unwrap().is_empty());
    }

    /// The documents of each past version, replayed from the trail: created, updated,
    /// deleted, and another kind's changes left out.
    async fn documents_stand_as_they_did_at_each_version(store: Store) {
        let deleted = |name: &str| Change {
            document: None,
            expect: Expect::Any,
            ..put(name, 0, Expect::Any)
        };
        let names = |docs: Vec<(String, String, Value)>| -> Vec<(String, Value)> {
            docs.into_iter().map(|(_, n, d)| (n, d)).collect()
        };
        let apply =
            async |changes: &[Change]| store.apply(changes, &actor("alice")).await.unwrap().0;
        assert_eq!(
            apply(&[put("a", 1, Expect::Any), put("b", 1, Expect::Any)]).await,
            1
        );
        assert_eq!(apply(&[put("a", 2, Expect::Any)]).await, 2);
        let other = Change {
            kind: "ServiceEntry".into(),
            ..put("c", 1, Expect::Any)
        };
        assert_eq!(apply(&[deleted("b"), other]).await, 3);
        let at = async |v: i64| names(store.documents_at("AuthorizationPolicy", v).await.unwrap());
        assert_eq!(at(0).await, []);
        assert_eq!(
            at(1).await,
            [
                ("a".into(), serde_json::json!({"v": 1})),
                ("b".into(), serde_json::json!({"v": 1}))
            ]
        );
        assert_eq!(
            at(2).await,
            [
                ("a".into(), serde_json::json!({"v": 2})),
                ("b".into(), serde_json::json!({"v": 1}))
            ]
        );
        assert_eq!(at(3).await, [("a".into(), serde_json::json!({"v": 2}))]);
    }

    #[tokio::test]
    async fn sqlite_documents_stand_as_they_did_at_each_version() {
        let dir = tempfile::tempdir().unwrap();
        documents_stand_as_they_did_at_each_version(sqlite_store(&dir).await).await;
    }

    #[tokio::test]
    async fn postgres_documents_stand_as_they_did_at_each_version() {
        documents_stand_as_they_did_at_each_version(postgres_store().await).await;
    }

    #[tokio::test]
    async fn sqlite_versions_conflicts_and_the_audit_trail() {
        let dir = tempfile::tempdir().unwrap();
        versions_conflicts_and_the_audit_trail(sqlite_store(&dir).await).await;
    }

    #[tokio::test]
    async fn postgres_versions_conflicts_and_the_audit_trail() {
        versions_conflicts_and_the_audit_trail(postgres_store().await).await;
    }

    #[tokio::test]
    async fn sqlite_concurrent_writers_with_one_version_get_one_success() {
        let dir = tempfile::tempdir().unwrap();
        concurrent_writers_with_one_version_get_one_success(sqlite_store(&dir).await).await;
    }

    #[tokio::test]
    async fn postgres_concurrent_writers_with_one_version_get_one_success() {
        concurrent_writers_with_one_version_get_one_success(postgres_store().await).await;
    }

    #[tokio::test]
    async fn sqlite_workloads_are_upserted() {
        let dir = tempfile::tempdir().unwrap();
        workloads_are_upserted(sqlite_store(&dir).await).await;
    }

    #[tokio::test]
    async fn postgres_workloads_are_upserted() {
        workloads_are_upserted(postgres_store().await).await;
    }

    #[tokio::test]
    async fn rejects_unknown_url_scheme() {
        let err = Store::open_url("mysql://x").await.unwrap_err();
        assert!(matches!(err, StoreError::UnsupportedUrl(_)), "{err}");
    }
}
