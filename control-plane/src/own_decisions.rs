//! The control plane's own decisions in the decision log: every certificate issued, renewed
//! or refused is a record of a chain this process writes (instance `cp-<random>`, one per
//! process start, signed with the control plane's own identity), stored with the sidecars'
//! chains and checked by the same `palisade audit verify`.
//!
//! A record is committed to the store before the answer it describes leaves (the issuance
//! waits for it), and a checkpoint signed with the control plane's certificate follows
//! every `CHECKPOINT_INTERVAL` with new records, and at shutdown. The chain is kept under
//! one async lock across the commit, so the store always holds it in order.

use std::sync::Arc;
use std::time::Duration;

use palisade_contract::SpiffeId;
use palisade_contract::decisions::record::Record;
use palisade_contract::decisions::{Chain, Line, hex};
use palisade_contract::process::Stopping;
use palisade_contract::tls::IdentitySlot;
use tokio::sync::Mutex;

use crate::collector::row;
use crate::store::{Committed, InstancePosition, Store, StoreError};

/// How often a checkpoint signs what was recorded since the last one.
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(10);

struct State {
    chain: Chain,
    /// Where the store has the chain (`None` before its first line).
    position: Option<InstancePosition>,
    unsigned: u64,
}

#[derive(Clone)]
pub struct OwnDecisions {
    store: Store,
    identity: Arc<IdentitySlot>,
    spiffe_id: SpiffeId,
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for OwnDecisions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwnDecisions").finish_non_exhaustive()
    }
}

impl OwnDecisions {
    pub fn new(store: Store, identity: Arc<IdentitySlot>, spiffe_id: SpiffeId) -> Self {
        let instance = format!("cp-{}", palisade_contract::request_id());
        Self {
            store,
            identity,
            spiffe_id,
            state: Arc::new(Mutex::new(State {
                chain: Chain::new(instance),
                position: None,
                unsigned: 0,
            })),
        }
    }

    /// Records `record`, committed to the store when this returns.
    pub async fn record(&self, record: &Record) -> Result<(), StoreError> {
        let json = serde_json::to_vec(record).expect("a record encodes");
        let mut st = self.state.lock().await;
        let saved = st.chain.clone();
        let line = st.chain.decision_json(&record.time, &json);
        if let Err(e) = self.commit(&mut st, &line).await {
            // Not stored: the chain goes back, so the next record takes this number.
            st.chain = saved;
            return Err(e);
        }
        st.unsigned += 1;
        Ok(())
    }

    /// Stores `line`, the chain's newest, and moves the stored position to it.
    async fn commit(&self, st: &mut State, line: &[u8]) -> Result<(), StoreError> {
        let bytes = &line[..line.len() - 1];
        let parsed: Line = serde_json::from_slice(bytes).expect("the chain makes lines");
        let to = InstancePosition {
            instance: st.chain.instance().to_owned(),
            spiffe_id: self.spiffe_id.to_string(),
            next_seq: st.chain.next_seq() as i64,
            head: Some(hex(&st.chain.head())),
        };
        match self
            .store
            .commit_decisions(st.position.as_ref(), &to, &[row(&parsed, bytes)], &[])
            .await?
        {
            Committed::Stored => {
                st.position = Some(to);
                Ok(())
            }
            Committed::Moved => Err(StoreError::Corrupt(format!(
                "the control plane's decision chain {} was moved by someone else",
                st.chain.instance()
            ))),
        }
    }

    /// Signs the chain so far, if anything is unsigned.
    async fn checkpoint(&self) {
        let Some(identity) = self.identity.valid() else {
            return;
        };
        let mut st = self.state.lock().await;
        if st.unsigned == 0 {
            return;
        }
        let time = palisade_contract::now_rfc3339();
        let saved = st.chain.clone();
        let Some(line) = st.chain.signed_checkpoint(&identity, &time) else {
            tracing::error!("the control plane's key cannot sign a decision-log checkpoint");
            return;
        };
        match self.commit(&mut st, &line).await {
            Ok(()) => st.unsigned = 0,
            Err(e) => {
                st.chain = saved;
                tracing::error!(error = %e, "storing a decision-log checkpoint failed");
            }
        }
    }

    /// Checkpoints on the interval, and a last time at `stop`.
    pub async fn run(self, mut stop: Stopping) {
        let mut every = tokio::time::interval(CHECKPOINT_INTERVAL);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = every.tick() => self.checkpoint().await,
                () = &mut stop => break,
            }
        }
        self.checkpoint().await;
    }
}
