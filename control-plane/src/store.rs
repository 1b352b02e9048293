//! The control plane's persistent state, behind one interface with two backends: SQLite in
//! the data dir (the embedded default) and PostgreSQL (for several replicas).
//!
//! Join tokens are recorded when they are created and consumed with one conditional
//! `UPDATE`, so a token is accepted once even when two replicas see it at the same moment.
//! Migrations are versioned with sqlx's migrator and embedded in the binary.

use std::borrow::Cow;
use std::path::Path;
use std::str::FromStr;

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
}

/// Versioned schema. Append new versions; never edit a released one.
const MIGRATIONS: &[(i64, &str, &str)] = &[(
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
)];

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

/// What consuming a join token found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consumed {
    /// First use: the token is now spent.
    Fresh,
    /// Already used, never recorded, or past its expiry.
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

    /// Spends a join token: succeeds once per recorded, unexpired token.
    pub async fn consume_join_token(
        &self,
        jti: &str,
        now: i64,
        serial: &str,
    ) -> Result<Consumed, StoreError> {
        const SQL: &str = "UPDATE join_tokens SET used_at = $1, used_by_serial = $2
                           WHERE jti = $3 AND used_at IS NULL AND expires_at > $1";
        let rows = on_pool!(self, pool => sqlx::query(SQL)
            .bind(now)
            .bind(serial)
            .bind(jti)
            .execute(pool)
            .await
            .map(|r| r.rows_affected()))?;
        Ok(if rows == 1 {
            Consumed::Fresh
        } else {
            Consumed::Refused
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Each test gets its own PostgreSQL schema, so tests run in parallel and leave the
    /// shared `test` database clean.
    pub(crate) async fn postgres_store() -> Store {
        let url = std::env::var("PALISADE_TEST_POSTGRES")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        let schema = format!("t_{}", crate::tokens::random_id().unwrap());
        let admin = PgPool::connect(&url)
            .await
            .expect("PostgreSQL at 127.0.0.1:5432 (see .ci/run)");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
            .execute(&admin)
            .await
            .unwrap();
        let options = PgConnectOptions::from_str(&url)
            .unwrap()
            .options([("search_path", schema.as_str())]);
        Store::postgres(options).await.unwrap()
    }

    async fn sqlite_store(dir: &tempfile::TempDir) -> Store {
        Store::sqlite(&dir.path().join("palisade.db"))
            .await
            .unwrap()
    }

    async fn join_token_is_single_use(store: Store) {
        let now = 1_000_000;
        let record = JoinTokenRecord {
            jti: "abc".into(),
            spiffe_id: "spiffe://td/ns/a/sa/b".into(),
            created_by: "admin".into(),
            created_at: now,
            expires_at: now + 600,
        };
        store.record_join_token(&record).await.unwrap();
        assert_eq!(store.join_token_used("abc").await.unwrap(), Some(false));
        assert_eq!(
            store
                .consume_join_token("abc", now + 1, "01")
                .await
                .unwrap(),
            Consumed::Fresh
        );
        assert_eq!(
            store
                .consume_join_token("abc", now + 2, "02")
                .await
                .unwrap(),
            Consumed::Refused
        );
        assert_eq!(store.join_token_used("abc").await.unwrap(), Some(true));
        // Never recorded.
        assert_eq!(
            store.consume_join_token("nope", now, "03").await.unwrap(),
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
            store.consume_join_token("old", now, "04").await.unwrap(),
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
                    .consume_join_token("race", 20, &i.to_string())
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
        store.consume_join_token("keep", 2, "01").await.unwrap();
        drop(store);
        let reopened = sqlite_store(&dir).await;
        assert_eq!(reopened.join_token_used("keep").await.unwrap(), Some(true));
    }

    #[tokio::test]
    async fn rejects_unknown_url_scheme() {
        let err = Store::open_url("mysql://x").await.unwrap_err();
        assert!(matches!(err, StoreError::UnsupportedUrl(_)), "{err}");
    }
}
