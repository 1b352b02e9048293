//! The sidecars following the configuration, as each control-plane replica last saw them.

use serde::Serialize;
use sqlx::Row;

use super::{Backend, Store, StoreError};

/// A sidecar as last seen by a control-plane replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Workload {
    pub spiffe_id: String,
    pub instance: String,
    pub applied_version: i64,
    pub certificate_expiry: i64,
    pub last_seen: i64,
    /// The roots it said it trusts ([`palisade_contract::tls::root_id`]).
    pub trusted_roots: Vec<String>,
}

impl Store {
    /// Records that a sidecar instance asked for its configuration.
    pub async fn workload_seen(&self, w: &Workload) -> Result<(), StoreError> {
        let _turn = self.write_turn().await;
        const SQL: &str = "INSERT INTO workloads
                             (spiffe_id, instance, applied_version, certificate_expiry, last_seen,
                              trusted_roots)
                           VALUES ($1, $2, $3, $4, $5, $6)
                           ON CONFLICT (spiffe_id, instance) DO UPDATE SET
                             applied_version = excluded.applied_version,
                             certificate_expiry = excluded.certificate_expiry,
                             last_seen = excluded.last_seen,
                             trusted_roots = excluded.trusted_roots";
        let roots = w.trusted_roots.join(",");
        on_pool!(self, pool => sqlx::query(SQL)
            .bind(&w.spiffe_id)
            .bind(&w.instance)
            .bind(w.applied_version)
            .bind(w.certificate_expiry)
            .bind(w.last_seen)
            .bind(&roots)
            .execute(pool)
            .await
            .map(|_| ()))?;
        Ok(())
    }

    /// Sidecars seen since `since` (unix seconds), by SPIFFE ID.
    pub async fn workloads(&self, since: i64) -> Result<Vec<Workload>, StoreError> {
        const SQL: &str =
            "SELECT spiffe_id, instance, applied_version, certificate_expiry, last_seen,
                    trusted_roots FROM workloads WHERE last_seen >= $1 ORDER BY spiffe_id, instance";
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
                    trusted_roots: split_roots(&r.try_get::<String, _>(5)?),
                })
            })
            .collect())
    }
}

/// The root names of a comma-separated list (empty: none).
pub fn split_roots(list: &str) -> Vec<String> {
    list.split(',')
        .filter(|r| !r.is_empty())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::{postgres_store, sqlite_store};

    async fn workloads_are_upserted(store: Store) {
        let mut w = Workload {
            spiffe_id: "spiffe://td/ns/shop/sa/a".into(),
            instance: "i1".into(),
            trusted_roots: vec!["00112233aabbccdd".into(), "ffeeddccbbaa9988".into()],
            applied_version: 1,
            certificate_expiry: 500,
            last_seen: 10,
        };
        store.workload_seen(&w).await.unwrap();
        w.applied_version = 2;
        w.last_seen = 20;
        w.trusted_roots.truncate(1);
        store.workload_seen(&w).await.unwrap();
        assert_eq!(store.workloads(0).await.unwrap(), vec![w.clone()]);
        assert!(store.workloads(21).await.unwrap().is_empty());
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
}
