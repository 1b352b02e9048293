//! The admin audit trail made tamper-evident ([`palisade_contract::decisions::trail`]):
//! entries are chained by the store as they are written (in the transaction that writes
//! them); [`TrailSigner`] signs the head with the control plane's own certificate every
//! few seconds and at shutdown; [`verify_trail`] walks entries and checkpoints for
//! `palisade audit verify`.

use std::sync::Arc;
use std::time::Duration;

use palisade_contract::decisions::trail::{self, CHECKPOINT_TYP, GENESIS};
use palisade_contract::identity_api::control_plane_id;
use palisade_contract::process::Stopping;
use palisade_contract::tls::{IdentitySlot, TrustBundle};
use serde_json::{Value, json};

use crate::store::{Store, StoreError, TrailCheckpoint};

/// How often a new head is signed.
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(10);

/// Entries read per page while verifying.
const PAGE: i64 = 5_000;

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("no valid certificate (or no ES256 key) to sign the trail's checkpoint with")]
    CannotSign,
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub struct TrailSigner {
    store: Store,
    slot: Arc<IdentitySlot>,
}

impl TrailSigner {
    pub fn new(store: Store, slot: Arc<IdentitySlot>) -> Self {
        Self { store, slot }
    }

    pub async fn run(self, mut stop: Stopping) {
        loop {
            if let Err(e) = self.checkpoint().await {
                tracing::warn!(error = %e, "checkpointing the admin audit trail failed; retried");
            }
            tokio::select! {
                () = &mut stop => break,
                () = tokio::time::sleep(CHECKPOINT_INTERVAL) => {}
            }
        }
        // The last changes before shutdown get their checkpoint too.
        if let Err(e) = self.checkpoint().await {
            tracing::warn!(error = %e, "checkpointing the admin audit trail at shutdown failed");
        }
    }

    /// Signs the head if no checkpoint covers it yet.
    pub async fn checkpoint(&self) -> Result<(), CheckpointError> {
        let Some((pos, head)) = self.store.trail_head().await? else {
            return Ok(());
        };
        if self.store.trail_signed_through().await? >= Some(pos) {
            return Ok(());
        }
        let identity = self.slot.valid().ok_or(CheckpointError::CannotSign)?;
        let time = crate::ca::unix_now();
        let signer = identity.spiffe_id.to_string();
        let note = trail::checkpoint_note(pos, &head, &signer, time);
        let jws =
            palisade_contract::signing::sign(&identity, CHECKPOINT_TYP, time, note.as_bytes())
                .ok_or(CheckpointError::CannotSign)?;
        let checkpoint = TrailCheckpoint {
            pos,
            head,
            time,
            signer,
            jws,
        };
        Ok(self.store.add_trail_checkpoint(&checkpoint).await?)
    }
}

/// The trail checked: every entry's hash and link, every checkpoint's signature (by the
/// control plane of `bundle`'s trust domain) and head, and whether the latest checkpoint's
/// entries are all still there. The report says what it found, never stops early.
pub async fn verify_trail(store: &Store, bundle: &TrustBundle) -> Result<Value, StoreError> {
    let mut findings: Vec<Value> = Vec::new();
    let mut found =
        |kind: &str, message: String| findings.push(json!({"kind": kind, "message": message}));
    let checkpoints = store.trail_checkpoints().await?;
    let expected = control_plane_id(bundle.trust_domain());
    // The hash each checkpoint says its entry has, checked as the walk reaches it.
    let mut signed: std::collections::BTreeMap<i64, &TrailCheckpoint> = Default::default();
    for c in &checkpoints {
        let note = trail::checkpoint_note(c.pos, &c.head, &c.signer, c.time);
        match palisade_contract::signing::verify(
            bundle,
            &c.jws,
            CHECKPOINT_TYP,
            expected.as_str(),
            note.as_bytes(),
        ) {
            Ok(_) => {
                signed.insert(c.pos, c);
            }
            Err(e) => found(
                "bad_checkpoint",
                format!("the checkpoint at entry {} does not verify: {e}", c.pos),
            ),
        }
    }
    let (mut entries, mut next, mut prev) = (0i64, 1i64, GENESIS.to_owned());
    let mut first_time = None;
    let mut last_time = None;
    loop {
        let page = store.trail_entries(next, PAGE).await?;
        for row in &page {
            if row.pos != next {
                found(
                    "missing",
                    format!("entries {next} to {} are missing", row.pos - 1),
                );
            }
            let hash = trail::entry_hash(&row.prev, &row.entry());
            if row.prev != prev {
                found(
                    "broken_link",
                    format!(
                        "entry {} does not link to the entry before it (one of them was changed, or entries were removed or reordered)",
                        row.pos
                    ),
                );
            }
            if hash != row.hash {
                found(
                    "changed",
                    format!(
                        "entry {} ({} {} {}/{} by {}) is not what was written",
                        row.pos, row.action, row.kind, row.namespace, row.name, row.principal
                    ),
                );
            }
            if let Some(c) = signed.get(&row.pos)
                && c.head != hash
            {
                found(
                    "changed",
                    format!("entry {} differs from what the checkpoint signed", row.pos),
                );
            }
            first_time.get_or_insert(row.time);
            last_time = Some(row.time);
            entries += 1;
            prev = hash;
            next = row.pos + 1;
        }
        if (page.len() as i64) < PAGE {
            break;
        }
    }
    let signed_through = signed.keys().next_back().copied().unwrap_or(0);
    if signed_through >= next {
        found(
            "truncated",
            format!(
                "the trail ends at entry {} but a checkpoint signed {signed_through} entries",
                next - 1
            ),
        );
    }
    let unchained = store.trail_unchained().await?;
    let clean = findings.is_empty();
    Ok(json!({
        "entries": entries,
        "checkpoints": checkpoints.len(),
        "signedThrough": signed_through,
        "unsigned": (next - 1 - signed_through).max(0),
        "unchained": unchained,
        "firstTime": first_time,
        "lastTime": last_time,
        "clean": clean,
        "findings": findings,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Actor, Change, Expect};

    fn change(name: &str, value: i64) -> Change {
        Change {
            kind: "AuthorizationPolicy".into(),
            namespace: "shop".into(),
            name: name.into(),
            document: Some(json!({"v": value})),
            expect: Expect::Any,
        }
    }

    /// A trail of four entries (two batches and an event), checkpointed; the signer and
    /// the bundle that trusts it.
    async fn trail(store: &Store) -> (TrailSigner, TrustBundle) {
        let td = palisade_contract::TrustDomain::parse("palisade.local").unwrap();
        let (ca, identity) =
            palisade_contract::signing::test_identity_pem(control_plane_id(&td).as_str());
        let bundle = TrustBundle::from_pem(td, ca.as_bytes()).unwrap();
        let slot = IdentitySlot::new();
        slot.set(identity);
        let alice = Actor {
            principal: "alice",
            request_id: "r1",
            now: 100,
        };
        store
            .apply(&[change("a", 1), change("b", 1)], &alice)
            .await
            .unwrap();
        store.apply(&[change("a", 2)], &alice).await.unwrap();
        store
            .record_admin_event(&alice, "created", "JoinToken", "shop", "orders", &json!({}))
            .await
            .unwrap();
        let signer = TrailSigner::new(store.clone(), slot);
        signer.checkpoint().await.unwrap();
        (signer, bundle)
    }

    fn kinds(report: &Value) -> Vec<String> {
        report["findings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["kind"].as_str().unwrap().to_owned())
            .collect()
    }

    async fn every_change_to_the_trail_is_named(open: impl AsyncFn() -> Store) {
        let store = open().await;
        let (signer, bundle) = trail(&store).await;
        let report = verify_trail(&store, &bundle).await.unwrap();
        assert_eq!(
            (
                &report["entries"],
                &report["signedThrough"],
                &report["clean"]
            ),
            (&json!(4), &json!(4), &json!(true)),
            "{report:#}"
        );
        // A later change is chained, not yet signed, and clean; signed at the next round.
        let bob = Actor {
            principal: "bob",
            request_id: "r2",
            now: 200,
        };
        store.apply(&[change("c", 1)], &bob).await.unwrap();
        let report = verify_trail(&store, &bundle).await.unwrap();
        assert_eq!(
            (&report["unsigned"], &report["clean"]),
            (&json!(1), &json!(true))
        );
        signer.checkpoint().await.unwrap();
        let report = verify_trail(&store, &bundle).await.unwrap();
        assert_eq!(report["signedThrough"], 5);

        let tampered: [(&[&'static str], &str); 5] = [
            (
                &["UPDATE admin_audit SET principal = 'mallory' WHERE pos = 2"],
                "changed",
            ),
            (&["DELETE FROM admin_audit WHERE pos = 2"], "missing"),
            (
                &[
                    "UPDATE admin_audit SET pos = 100 WHERE pos = 2",
                    "UPDATE admin_audit SET pos = 2 WHERE pos = 3",
                    "UPDATE admin_audit SET pos = 3 WHERE pos = 100",
                ],
                "broken_link",
            ),
            (&["DELETE FROM admin_audit WHERE pos >= 4"], "truncated"),
            (
                &["UPDATE admin_audit_checkpoints SET head = 'forged' WHERE pos = 4"],
                "bad_checkpoint",
            ),
        ];
        for (sql, kind) in tampered {
            let store = open().await;
            let (_, bundle) = trail(&store).await;
            for statement in sql {
                store.tamper_for_tests(statement).await;
            }
            let report = verify_trail(&store, &bundle).await.unwrap();
            assert_eq!(report["clean"], false, "{sql:?}: {report:#}");
            assert!(
                kinds(&report).iter().any(|k| k == kind),
                "{sql:?}: {report:#}"
            );
        }
    }

    #[tokio::test]
    async fn sqlite_every_change_to_the_trail_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let n = std::sync::atomic::AtomicUsize::new(0);
        every_change_to_the_trail_is_named(async || {
            let i = n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Store::sqlite(&dir.path().join(format!("db{i}")))
                .await
                .unwrap()
        })
        .await;
    }

    #[tokio::test]
    async fn postgres_every_change_to_the_trail_is_named() {
        every_change_to_the_trail_is_named(crate::store::tests::postgres_store).await;
    }
}
