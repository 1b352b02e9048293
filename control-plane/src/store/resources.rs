//! The mesh documents: batches of changes applied all or nothing under one new mesh version
//! (optimistic concurrency by `resourceVersion`), each change leaving a chained entry in the
//! admin audit trail in the same transaction; listing, and the documents of a past version
//! replayed from the trail.

use palisade_contract::decisions::trail;
use serde::Serialize;
use serde_json::Value;
use sqlx::Row;

use super::{Backend, Store, StoreError, decode};

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
        let _turn = self.write_turn().await;
        on_pool!(self, pool => apply_batch!(pool, changes, actor))
    }

    /// The mesh version: bumped by every batch that changes something.
    /// A new mesh version without a document change: the trust bundle, which every
    /// sidecar's configuration carries, changed. Returns the new version.
    pub async fn bump_mesh_version(&self) -> Result<i64, StoreError> {
        let _turn = self.write_turn().await;
        const SQL: &str =
            "UPDATE mesh_version SET version = version + 1 WHERE id = 1 RETURNING version";
        Ok(on_pool!(self, pool => sqlx::query(SQL)
            .fetch_one(pool)
            .await
            .and_then(|r| r.try_get::<i64, _>(0)))?)
    }

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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::AuditFilter;
    use crate::store::tests::{postgres_store, sqlite_store};

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
}
