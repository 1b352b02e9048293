//! The versioned schema, embedded in the binary and run by sqlx's migrator at every open.

use std::borrow::Cow;

use sqlx::SqlSafeStr;
use sqlx::migrate::{Migration, MigrationType, Migrator};

/// Versioned schema. Append new versions; never edit a released one. The SQL is the same
/// on both backends except where [`PER_BACKEND`] says otherwise.
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
    (
        7,
        "the roots each sidecar trusts",
        // contract::tls::root_id of each, comma-separated; empty for a sidecar that has
        // not said.
        "ALTER TABLE workloads ADD COLUMN trusted_roots TEXT NOT NULL DEFAULT ''",
    ),
    (
        8,
        "expired certificates re-attested (each at most once)",
        "CREATE TABLE reattested_certificates (
            serial TEXT PRIMARY KEY,
            spiffe_id TEXT NOT NULL,
            reattested_at BIGINT NOT NULL,
            new_serial TEXT NOT NULL
         )",
    ),
    (
        9,
        "the decision log's text compares byte by byte",
        // Written per backend: see PER_BACKEND.
        "",
    ),
];

/// The backend a migration runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Dialect {
    Sqlite,
    Postgres,
}

/// Versions whose SQL differs per backend: (version, SQLite, PostgreSQL).
///
/// 9: a path prefix is queried as a range (`path >= p AND path < p || U+10FFFF`) and the
/// cursor compares instance ids, which is only right when text sorts byte by byte. SQLite's
/// default collation (BINARY) does; PostgreSQL's is the database's locale, and under a
/// linguistic one (`en_US.UTF-8`, an ICU locale: what most installations have) `/Items/9`
/// falls inside the range of the prefix `/items/`. `COLLATE "C"` makes PostgreSQL answer
/// as SQLite does whatever the database's locale, and its comparisons are `memcmp` instead
/// of the locale's (`strcoll` or ICU): cheaper on every index insert. Changing a column's
/// collation rebuilds the indexes on it, once, at upgrade.
const PER_BACKEND: &[(i64, &str, &str)] = &[(
    9,
    "SELECT 1",
    r#"ALTER TABLE decision_instances ALTER COLUMN instance TYPE TEXT COLLATE "C";
       ALTER TABLE decisions
         ALTER COLUMN instance TYPE TEXT COLLATE "C",
         ALTER COLUMN kind TYPE TEXT COLLATE "C",
         ALTER COLUMN request_id TYPE TEXT COLLATE "C",
         ALTER COLUMN decision TYPE TEXT COLLATE "C",
         ALTER COLUMN direction TYPE TEXT COLLATE "C",
         ALTER COLUMN source TYPE TEXT COLLATE "C",
         ALTER COLUMN destination_service TYPE TEXT COLLATE "C",
         ALTER COLUMN destination TYPE TEXT COLLATE "C",
         ALTER COLUMN destination_namespace TYPE TEXT COLLATE "C",
         ALTER COLUMN protocol TYPE TEXT COLLATE "C",
         ALTER COLUMN method TYPE TEXT COLLATE "C",
         ALTER COLUMN path TYPE TEXT COLLATE "C",
         ALTER COLUMN policy TYPE TEXT COLLATE "C",
         ALTER COLUMN exchange TYPE TEXT COLLATE "C",
         ALTER COLUMN routing_key TYPE TEXT COLLATE "C";
       ALTER TABLE decision_findings ALTER COLUMN instance TYPE TEXT COLLATE "C";
       ALTER TABLE decision_prunes ALTER COLUMN instance TYPE TEXT COLLATE "C""#,
)];

pub(super) fn migrator(dialect: Dialect) -> Migrator {
    Migrator::with_migrations(
        MIGRATIONS
            .iter()
            .map(|(version, description, sql)| {
                let sql = PER_BACKEND.iter().find(|(v, ..)| v == version).map_or(
                    *sql,
                    |(_, sqlite, postgres)| match dialect {
                        Dialect::Sqlite => sqlite,
                        Dialect::Postgres => postgres,
                    },
                );
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
