//! Join tokens and admin tokens as recorded. A join token is consumed with one conditional
//! `UPDATE`, so it is accepted once even when two replicas see it at the same moment; an
//! admin token's record (never the token) says who made it, its role and whether it is
//! revoked.

use serde::Serialize;
use sqlx::Row;

use super::{Backend, Store, StoreError};

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

/// What consuming a join token (or a certificate, for re-attestation) found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consumed {
    /// First use: the token is now spent.
    Fresh,
    /// Already used, never recorded, recorded for another identity, or past its expiry.
    Refused,
}

impl Consumed {
    /// `Fresh` when the spending statement changed exactly one row.
    fn from_rows(rows: u64) -> Self {
        if rows == 1 {
            Consumed::Fresh
        } else {
            Consumed::Refused
        }
    }
}

impl Store {
    pub async fn record_join_token(&self, record: &JoinTokenRecord) -> Result<(), StoreError> {
        let _turn = self.write_turn().await;
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
        let _turn = self.write_turn().await;
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
        Ok(Consumed::from_rows(rows))
    }

    /// Spends a certificate (by its serial) on one re-attestation, or on a renewal (after
    /// which it may not be re-attested): `Fresh` the first time, `Refused` ever after.
    pub async fn consume_expired_certificate(
        &self,
        serial: &str,
        spiffe_id: &str,
        now: i64,
        new_serial: &str,
    ) -> Result<Consumed, StoreError> {
        let _turn = self.write_turn().await;
        const SQL: &str = "INSERT INTO reattested_certificates
                             (serial, spiffe_id, reattested_at, new_serial)
                           VALUES ($1, $2, $3, $4) ON CONFLICT (serial) DO NOTHING";
        let rows = on_pool!(self, pool => sqlx::query(SQL)
            .bind(serial)
            .bind(spiffe_id)
            .bind(now)
            .bind(new_serial)
            .execute(pool)
            .await
            .map(|r| r.rows_affected()))?;
        Ok(Consumed::from_rows(rows))
    }

    pub async fn record_admin_token(&self, r: &AdminTokenRecord) -> Result<(), StoreError> {
        let _turn = self.write_turn().await;
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
        let _turn = self.write_turn().await;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::{postgres_store, sqlite_store};

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

    async fn an_expired_certificate_is_reattested_once(store: Store) {
        let id = "spiffe://td/ns/a/sa/b";
        let first = store
            .consume_expired_certificate("0a:0b", id, 10, "01")
            .await;
        assert_eq!(first.unwrap(), Consumed::Fresh);
        for _ in 0..2 {
            let again = store
                .consume_expired_certificate("0a:0b", id, 11, "02")
                .await;
            assert_eq!(again.unwrap(), Consumed::Refused);
        }
        let other = store
            .consume_expired_certificate("0a:0c", id, 12, "03")
            .await;
        assert_eq!(other.unwrap(), Consumed::Fresh);
    }

    #[tokio::test]
    async fn sqlite_an_expired_certificate_is_reattested_once() {
        let dir = tempfile::tempdir().unwrap();
        an_expired_certificate_is_reattested_once(sqlite_store(&dir).await).await;
    }

    #[tokio::test]
    async fn postgres_an_expired_certificate_is_reattested_once() {
        an_expired_certificate_is_reattested_once(postgres_store().await).await;
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
}
