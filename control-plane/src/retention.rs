//! Decision-log retention (`--decision-retention`, 90 days by default): the stored lines
//! older than the retention period are pruned, writer by writer, from the start of each
//! chain, and each pruning leaves a record signed with the control plane's own key of
//! where that writer's stored chain now begins ([`palisade_contract::decisions::prune_note`]).
//! `palisade audit verify` resumes each chain there, so what retention removed shows as
//! pruned (how many, before when, signed by whom), and anything else missing still shows
//! as missing: a row deleted by hand has no signed record behind it.
//!
//! A chain is pruned from its start only (up to the last line before its first line that
//! is still within the period), so what stays links up; lines a little older than the
//! cutoff may outlive it by that much. Without a valid certificate to sign with, nothing is
//! pruned: records are kept rather than removed without an account of it.

use std::sync::Arc;
use std::time::Duration;

use palisade_contract::decisions::{PRUNE_TYP, prune_note};
use palisade_contract::process::Stopping;
use palisade_contract::tls::IdentitySlot;
use prometheus::{IntCounter, Registry};

use crate::store::{PruneRow, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum PruneError {
    #[error("no valid certificate to sign the prune record with; nothing pruned")]
    CannotSign,
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub struct Retention {
    store: Store,
    slot: Arc<IdentitySlot>,
    retention: Duration,
    pruned: IntCounter,
}

impl Retention {
    pub fn new(
        store: Store,
        slot: Arc<IdentitySlot>,
        retention: Duration,
        registry: &Registry,
    ) -> prometheus::Result<Self> {
        let pruned = IntCounter::new(
            "palisade_decisions_pruned_total",
            "Stored decision-log lines pruned by --decision-retention (each pruning signed).",
        )?;
        registry.register(Box::new(pruned.clone()))?;
        Ok(Self {
            store,
            slot,
            retention,
            pruned,
        })
    }

    /// Prunes now, then every tenth of the retention period (at least a second, at most an
    /// hour), until `stop`.
    pub async fn run(self, mut stop: Stopping) {
        let every = (self.retention / 10).clamp(Duration::from_secs(1), Duration::from_secs(3600));
        loop {
            match self.prune(crate::ca::unix_now() * 1000).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(lines = n, "pruned decision-log lines past retention"),
                Err(e) => tracing::warn!(error = %e, "pruning the decision log failed; retried"),
            }
            tokio::select! {
                () = &mut stop => return,
                () = tokio::time::sleep(every) => {}
            }
        }
    }

    /// Prunes every chain's lines older than the retention period before `now_ms`; how
    /// many lines went.
    pub async fn prune(&self, now_ms: i64) -> Result<u64, PruneError> {
        let cutoff_ms = now_ms - self.retention.as_millis() as i64;
        let mut total = 0;
        for position in self.store.decision_instances().await? {
            let Some(range) = self
                .store
                .prune_range(&position.instance, cutoff_ms)
                .await?
            else {
                continue;
            };
            let identity = self.slot.valid().ok_or(PruneError::CannotSign)?;
            let next_seq = range.last + 1;
            let note = prune_note(&range.instance, next_seq as u64, &range.head, cutoff_ms);
            let jws = palisade_contract::signing::sign(
                &identity,
                PRUNE_TYP,
                crate::ca::unix_now(),
                note.as_bytes(),
            )
            .ok_or(PruneError::CannotSign)?;
            let before = self.store.decision_prune(&range.instance).await?;
            self.store
                .commit_prune(&PruneRow {
                    instance: range.instance.clone(),
                    next_seq,
                    head: range.head.clone(),
                    cutoff_ms,
                    pruned: before.map_or(0, |p| p.pruned) + range.count,
                    pruned_at: crate::ca::unix_now(),
                    signer: identity.spiffe_id.to_string(),
                    jws,
                })
                .await?;
            self.pruned.inc_by(range.count as u64);
            total += range.count as u64;
        }
        Ok(total)
    }
}
