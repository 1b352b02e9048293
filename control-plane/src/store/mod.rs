//! The control plane's persistent state, behind one interface with two backends: SQLite in
//! the data dir (the embedded default) and PostgreSQL (for several replicas).
//!
//! One file per concern: `migrations.rs` (the versioned schema), `tokens.rs` (join and
//! admin tokens), `resources.rs` (mesh documents and change batches), `audit.rs` and
//! `admin_trail.rs` (the admin audit trail and its hash chain), `workloads.rs`,
//! `decisions.rs` (the central decision log). Every statement runs on either backend
//! through [`on_pool`].

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};

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

// The chain-writing macros of admin_trail are used by resources and audit: declared first.
#[macro_use]
mod admin_trail;
mod audit;
mod decisions;
mod migrations;
mod resources;
mod tokens;
mod workloads;

pub use admin_trail::{TrailCheckpoint, TrailRow};
pub use audit::{AuditEntry, AuditFilter};
pub use decisions::{
    Committed, DecisionFilter, DecisionRow, FindingRow, InstancePosition, PruneRange, PruneRow,
    StoredDecision,
};
pub use resources::{Actor, Change, ChangeError, Expect, Outcome, Resource};
pub use tokens::{AdminTokenRecord, Consumed, JoinTokenRecord};
pub use workloads::{Workload, split_roots};

#[derive(Debug, Clone)]
pub struct Store {
    backend: Backend,
    /// Every write takes its turn here on SQLite ([`Store::write_turn`]), which has one
    /// writer at a time: left to SQLite's busy handler, writers waiting for the lock sleep
    /// and retry unfairly and give up after its timeout (5 s), which four collectors'
    /// batches did at 9.5 million stored rows ("database is locked"). A queue in the
    /// process is fair and never times out, and a policy change or a token waits for one
    /// batch, not for a busy handler to win against a stream of them.
    sqlite_writer: Arc<tokio::sync::Mutex<()>>,
}

impl Store {
    /// Opens (creating if needed) the SQLite database at `path`.
    pub async fn sqlite(path: &Path) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // 32 MiB of page cache per connection instead of SQLite's 2 MiB: the decision
            // log's indexes outgrow 2 MiB within the first 100,000 rows, and every insert
            // then reads its index pages back from the OS (BENCHMARKS.md, 2026-12-03).
            .pragma("cache_size", "-32768")
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
        let store = Self {
            backend,
            sqlite_writer: Arc::default(),
        };
        let dialect = match &store.backend {
            Backend::Sqlite(_) => migrations::Dialect::Sqlite,
            Backend::Postgres(_) => migrations::Dialect::Postgres,
        };
        on_pool!(store, pool => migrations::migrator(dialect).run(pool).await)?;
        Ok(store)
    }

    /// The caller's turn to write on SQLite (held until dropped); nothing on PostgreSQL,
    /// which writes concurrently. Every write of the store takes it first.
    async fn write_turn(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        match self.backend {
            Backend::Sqlite(_) => Some(self.sqlite_writer.lock().await),
            Backend::Postgres(_) => None,
        }
    }

    pub fn backend_name(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite(_) => "sqlite",
            Backend::Postgres(_) => "postgres",
        }
    }
}

/// Decodes a stored document (always written by this module as JSON).
fn decode(text: Option<String>) -> Result<Option<Value>, StoreError> {
    text.map(|t| serde_json::from_str(&t))
        .transpose()
        .map_err(|e| StoreError::Corrupt(e.to_string()))
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

    pub(crate) async fn sqlite_store(dir: &tempfile::TempDir) -> Store {
        Store::sqlite(&dir.path().join("palisade.db"))
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn rejects_unknown_url_scheme() {
        let err = Store::open_url("mysql://x").await.unwrap_err();
        assert!(matches!(err, StoreError::UnsupportedUrl(_)), "{err}");
    }
}
