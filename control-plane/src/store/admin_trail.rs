//! The admin audit trail's chain as stored ([`palisade_contract::decisions::trail`]): its
//! entries in the order written, and the checkpoints the control plane signed over it.

use sqlx::Row;

use super::{Backend, Store, StoreError};

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

/// One chained entry as stored (the fields its hash covers, its link and its hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrailRow {
    pub pos: i64,
    pub mesh_version: i64,
    pub seq: i64,
    pub time: i64,
    pub principal: String,
    pub request_id: String,
    pub action: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub before: Option<String>,
    pub after: Option<String>,
    pub prev: String,
    pub hash: String,
}

impl TrailRow {
    pub fn entry(&self) -> palisade_contract::decisions::trail::Entry<'_> {
        palisade_contract::decisions::trail::Entry {
            pos: self.pos,
            mesh_version: self.mesh_version,
            seq: self.seq,
            time: self.time,
            principal: &self.principal,
            request_id: &self.request_id,
            action: &self.action,
            kind: &self.kind,
            namespace: &self.namespace,
            name: &self.name,
            before: self.before.as_deref(),
            after: self.after.as_deref(),
        }
    }
}

/// A signed head of the trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrailCheckpoint {
    pub pos: i64,
    pub head: String,
    pub time: i64,
    pub signer: String,
    pub jws: String,
}

impl Store {
    /// The last chained entry: (pos, hash).
    pub async fn trail_head(&self) -> Result<Option<(i64, String)>, StoreError> {
        const SQL: &str =
            "SELECT pos, hash FROM admin_audit WHERE pos IS NOT NULL ORDER BY pos DESC LIMIT 1";
        on_pool!(self, pool => sqlx::query(SQL)
            .fetch_optional(pool)
            .await?
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .transpose())
    }

    /// Up to `limit` chained entries from `from` on, in order.
    pub async fn trail_entries(&self, from: i64, limit: i64) -> Result<Vec<TrailRow>, StoreError> {
        const SQL: &str = "SELECT pos, mesh_version, seq, time, principal, request_id, action,
                                  kind, namespace, name, before, after, prev, hash
                           FROM admin_audit WHERE pos >= $1 ORDER BY pos LIMIT $2";
        on_pool!(self, pool => sqlx::query(SQL)
            .bind(from)
            .bind(limit)
            .fetch_all(pool)
            .await?
            .into_iter()
            .map(|r| {
                Ok(TrailRow {
                    pos: r.try_get(0)?,
                    mesh_version: r.try_get(1)?,
                    seq: r.try_get(2)?,
                    time: r.try_get(3)?,
                    principal: r.try_get(4)?,
                    request_id: r.try_get(5)?,
                    action: r.try_get(6)?,
                    kind: r.try_get(7)?,
                    namespace: r.try_get(8)?,
                    name: r.try_get(9)?,
                    before: r.try_get(10)?,
                    after: r.try_get(11)?,
                    prev: r.try_get(12)?,
                    hash: r.try_get(13)?,
                })
            })
            .collect())
    }

    /// Entries written before the trail was chained (by an older version).
    pub async fn trail_unchained(&self) -> Result<i64, StoreError> {
        const SQL: &str = "SELECT COUNT(*) FROM admin_audit WHERE pos IS NULL";
        on_pool!(self, pool => Ok(sqlx::query(SQL).fetch_one(pool).await?.try_get(0)?))
    }

    pub async fn add_trail_checkpoint(&self, c: &TrailCheckpoint) -> Result<(), StoreError> {
        let _turn = self.write_turn().await;
        const SQL: &str = "INSERT INTO admin_audit_checkpoints (pos, head, time, signer, jws)
                           VALUES ($1, $2, $3, $4, $5) ON CONFLICT (pos) DO NOTHING";
        on_pool!(self, pool => sqlx::query(SQL)
            .bind(c.pos)
            .bind(&c.head)
            .bind(c.time)
            .bind(&c.signer)
            .bind(&c.jws)
            .execute(pool)
            .await
            .map(|_| ()))?;
        Ok(())
    }

    /// The last entry a checkpoint signed.
    pub async fn trail_signed_through(&self) -> Result<Option<i64>, StoreError> {
        const SQL: &str = "SELECT MAX(pos) FROM admin_audit_checkpoints";
        on_pool!(self, pool => Ok(sqlx::query(SQL).fetch_one(pool).await?.try_get(0)?))
    }

    /// Every checkpoint, oldest first.
    pub async fn trail_checkpoints(&self) -> Result<Vec<TrailCheckpoint>, StoreError> {
        const SQL: &str =
            "SELECT pos, head, time, signer, jws FROM admin_audit_checkpoints ORDER BY pos";
        on_pool!(self, pool => sqlx::query(SQL)
            .fetch_all(pool)
            .await?
            .into_iter()
            .map(|r| {
                Ok(TrailCheckpoint {
                    pos: r.try_get(0)?,
                    head: r.try_get(1)?,
                    time: r.try_get(2)?,
                    signer: r.try_get(3)?,
                    jws: r.try_get(4)?,
                })
            })
            .collect())
    }
}
