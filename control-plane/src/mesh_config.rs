//! The mesh configuration: validated documents in the store, the mesh version, and the
//! sidecars following it.
//!
//! Writes go through [`MeshConfig::apply`], which validates with the shared crate (so the
//! control plane can never accept what a sidecar would refuse), stores the batch atomically
//! and wakes every waiting sidecar poll. With several replicas on PostgreSQL, a change made
//! through another replica is noticed by polling the version row every
//! [`FOLLOW_INTERVAL`]: one indexed single-row read per replica, and a bound on how late a
//! sidecar connected to this replica hears of it (LISTEN/NOTIFY would save those reads, but
//! needs a dedicated connection per replica and still a poll to recover from a dropped one).

use std::sync::Arc;
use std::time::Duration;

use palisade_contract::config_api::{self, LONG_POLL};
use palisade_contract::documents::{Kind, Problem, Problems, validate_values};
use serde_json::Value;
use tokio::sync::watch;

use crate::ca::CertificateAuthority;
use crate::store::{Actor, Change, ChangeError, Expect, Outcome, Resource, Store, StoreError};

/// How often a replica reads the mesh version to notice changes made through others.
pub const FOLLOW_INTERVAL: Duration = Duration::from_millis(250);

/// Most documents in one apply.
pub const MAX_BATCH: usize = 500;

pub struct MeshConfig {
    store: Store,
    ca: Arc<CertificateAuthority>,
    version: watch::Sender<i64>,
    closed: watch::Sender<bool>,
}

impl std::fmt::Debug for MeshConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshConfig")
            .field("version", &*self.version.borrow())
            .finish_non_exhaustive()
    }
}

/// A validated document with its identity, ready to be stored.
#[derive(Debug, Clone)]
pub struct Validated {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
    pub value: Value,
}

/// Parses and validates YAML or JSON input (one or several documents): every problem with
/// its location, nothing returned unless all are valid. Two documents with the same kind,
/// namespace and name in one input are a problem too.
pub fn validate(input: &str) -> Result<Vec<Validated>, Problems> {
    let values = palisade_contract::documents::parse_values(input)?;
    if values.len() > MAX_BATCH {
        return Err(Problems(vec![Problem {
            location: "input".into(),
            message: format!(
                "has {} documents; at most {MAX_BATCH} at once",
                values.len()
            ),
        }]));
    }
    let docs = validate_values(&values)?;
    let mut out: Vec<Validated> = Vec::with_capacity(docs.len());
    let mut problems = Vec::new();
    for (i, (doc, value)) in docs.iter().zip(values).enumerate() {
        let (namespace, name) = doc.key();
        let validated = Validated {
            kind: doc.kind(),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            value,
        };
        if out.iter().any(|v| {
            (v.kind, &v.namespace, &v.name)
                == (validated.kind, &validated.namespace, &validated.name)
        }) {
            problems.push(Problem {
                location: format!("[{i}]"),
                message: format!(
                    "{} {}/{} appears more than once",
                    validated.kind, validated.namespace, validated.name
                ),
            });
        }
        out.push(validated);
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(Problems(problems))
    }
}

impl MeshConfig {
    pub async fn new(store: Store, ca: Arc<CertificateAuthority>) -> Result<Self, StoreError> {
        let current = store.mesh_version().await?;
        Ok(Self {
            store,
            ca,
            version: watch::Sender::new(current),
            closed: watch::Sender::new(false),
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The newest mesh version this replica knows of.
    pub fn version(&self) -> i64 {
        *self.version.borrow()
    }

    /// Ends every waiting poll (at shutdown): they answer "no change" at once.
    pub fn close(&self) {
        self.closed.send_replace(true);
    }

    fn publish(&self, version: i64) {
        self.version.send_if_modified(|current| {
            let newer = version > *current;
            if newer {
                *current = version;
            }
            newer
        });
    }

    /// Follows changes made through other replicas, and this replica's trust bundle, until
    /// `stop` resolves, then releases the sidecars waiting for a change.
    ///
    /// A bundle change (a rotation step) is a mesh version of its own: every sidecar's long
    /// poll answers with the new bundle within moments, instead of each sidecar learning
    /// of it with its next certificate (up to half a certificate lifetime later), and
    /// `palisade check` shows a sidecar that has not applied it as behind.
    pub async fn follow(self: Arc<Self>, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        let mut bundle = self.ca.bundle_changes();
        loop {
            tokio::select! {
                () = tokio::time::sleep(FOLLOW_INTERVAL) => {}
                Ok(()) = bundle.changed() => {
                    match self.store.bump_mesh_version().await {
                        Ok(v) => {
                            tracing::info!(target: "palisade::admin", version = v,
                                "trust bundle changed: pushing it to the sidecars");
                            self.publish(v);
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "could not push the changed trust bundle; retrying");
                            bundle.mark_changed();
                            tokio::time::sleep(FOLLOW_INTERVAL).await;
                        }
                    }
                    continue;
                }
                () = &mut stop => break,
            }
            match self.store.mesh_version().await {
                Ok(v) => self.publish(v),
                Err(e) => tracing::warn!(error = %e, "reading the mesh version failed"),
            }
        }
        // Shutting down: release the sidecars' long polls so draining does not wait.
        self.close();
    }

    /// Stores a batch (see [`Store::apply`]) and wakes the sidecars waiting for it.
    pub async fn apply(
        &self,
        changes: &[Change],
        actor: &Actor<'_>,
    ) -> Result<(i64, Vec<Outcome>), ChangeError> {
        let (version, outcomes) = self.store.apply(changes, actor).await?;
        self.publish(version);
        tracing::info!(target: "palisade::admin", version, principal = actor.principal,
            request_id = actor.request_id, changed = outcomes.iter().filter(|o| o.action != "unchanged").count(),
            "mesh configuration changed");
        Ok((version, outcomes))
    }

    /// Puts every validated document (apply semantics: create or replace).
    pub async fn apply_documents(
        &self,
        docs: &[Validated],
        actor: &Actor<'_>,
    ) -> Result<(i64, Vec<Outcome>), ChangeError> {
        let changes: Vec<Change> = docs
            .iter()
            .map(|d| Change {
                kind: d.kind.as_str().to_owned(),
                namespace: d.namespace.clone(),
                name: d.name.clone(),
                document: Some(d.value.clone()),
                expect: Expect::Any,
            })
            .collect();
        self.apply(&changes, actor).await
    }

    /// What applying `docs` would do, without doing it: each document's action and the
    /// stored document it would replace.
    pub async fn diff(
        &self,
        docs: &[Validated],
    ) -> Result<Vec<(Outcome, Option<Resource>)>, StoreError> {
        let mut out = Vec::with_capacity(docs.len());
        for d in docs {
            let current = self
                .store
                .get(d.kind.as_str(), &d.namespace, &d.name)
                .await?;
            let action = match &current {
                None => "created",
                Some(r) if r.document == d.value => "unchanged",
                Some(_) => "updated",
            };
            out.push((
                Outcome {
                    kind: d.kind.as_str().to_owned(),
                    namespace: d.namespace.clone(),
                    name: d.name.clone(),
                    action,
                },
                current,
            ));
        }
        Ok(out)
    }

    /// The configuration for a sidecar in `namespace` once the mesh version is newer than
    /// `seen`, or `None` after [`LONG_POLL`] without a change.
    pub async fn wait_for_newer(
        &self,
        namespace: &str,
        seen: i64,
    ) -> Result<Option<config_api::MeshConfig>, StoreError> {
        let mut rx = self.version.subscribe();
        let mut closed = self.closed.subscribe();
        let changed = tokio::select! {
            changed = tokio::time::timeout(LONG_POLL, rx.wait_for(|v| *v > seen)) => matches!(changed, Ok(Ok(_))),
            _ = closed.wait_for(|c| *c) => false,
        };
        if !changed {
            return Ok(None);
        }
        self.config_for(namespace).await.map(Some)
    }

    /// The configuration for a sidecar in `namespace`, now.
    pub async fn config_for(&self, namespace: &str) -> Result<config_api::MeshConfig, StoreError> {
        let (version, resources) = self.store.list(None, None).await?;
        Ok(config_api::MeshConfig {
            version,
            documents: resources
                .into_iter()
                .filter(|r| config_api::concerns(&r.kind, &r.namespace, namespace))
                .map(|r| r.document)
                .collect(),
            trust_bundle: self.ca.bundle_pem(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_in_one_input_are_a_problem() {
        let doc = "apiVersion: palisade.dev/v1\nkind: AuthorizationPolicy\nmetadata: { name: a, namespace: shop }\nspec: {}\n";
        let twice = format!("{doc}---\n{doc}");
        let problems = validate(&twice).unwrap_err().0;
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(
            problems[0].to_string(),
            "[1]: AuthorizationPolicy shop/a appears more than once"
        );
        assert_eq!(validate(doc).unwrap()[0].name, "a");
    }

    #[test]
    fn a_batch_has_a_size_limit() {
        let many: String = (0..=MAX_BATCH)
            .map(|i| format!("apiVersion: palisade.dev/v1\nkind: AuthorizationPolicy\nmetadata: {{ name: p{i}, namespace: shop }}\nspec: {{}}\n---\n"))
            .collect();
        let problems = validate(&many).unwrap_err().0;
        assert_eq!(
            problems[0].to_string(),
            format!(
                "input: has {} documents; at most {MAX_BATCH} at once",
                MAX_BATCH + 1
            )
        );
    }
}
