//! The admin audit trail as read (newest first, paged) and the administrative events that
//! are not configuration changes (tokens, CA steps), chained like every entry.

use palisade_contract::decisions::trail;
use serde::Serialize;
use serde_json::Value;
use sqlx::Row;

use super::{Actor, Backend, Store, StoreError, decode};

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

impl Store {
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
        let _turn = self.write_turn().await;
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
}
