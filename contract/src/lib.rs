//! What Palisade's sidecar and control plane must agree on.
//!
//! - [`amqp_url`]: broker URLs, read alike by the sidecar and the injector.
//! - [`spiffe`]: SPIFFE IDs and trust domains, parsed by one set of rules everywhere.
//! - [`certs`]: reading certificates and PEM bundles, and what makes a valid workload leaf.
//! - [`tls`]: mTLS by SPIFFE ID (verifiers, trust bundles, live certificate swaps).
//! - [`identity_api`]: the certificate issuance and renewal protocol.
//! - [`config_api`]: how sidecars follow the mesh configuration.
//! - [`jwt`]: strict JWT and JWKS verification (bootstrap and end-user tokens alike).
//! - [`path`]: request path normalization (policies match the path that is forwarded).
//! - [`decisions`]: the decision log's format (hash chain, signed checkpoints) and its
//!   verification.
//! - [`documents`]: the kinds of document the mesh stores, and reading them (one walk, every
//!   problem with its location).
//! - [`policy`]: the authorization policy model and its evaluator.
//! - [`registry`]: services, their endpoints and the identity they must present.
//! - [`signing`]: detached signatures with a workload's key, verifiable with the bundle.
//! - [`private_files`]: writing keys and tokens to disk safely.
//! - [`process`]: configuration errors and shutdown signals, the same for both binaries.
//! - [`telemetry`]: log and metrics conventions shared by both binaries.

pub mod amqp_url;
pub mod certs;
pub mod config_api;
pub mod decisions;
pub mod documents;
pub mod envelope;
pub mod identity_api;
pub mod jwt;
pub mod path;
pub mod policy;
pub mod private_files;
pub mod process;
pub mod registry;
pub mod request;
pub mod signing;
pub mod spiffe;
pub mod telemetry;
pub mod tls;

pub use spiffe::{SpiffeId, TrustDomain};

/// Seconds since the Unix epoch (0 if the clock is before it): the one clock reading of
/// certificate, token and record times on both sides.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Now in RFC 3339 (UTC, as `time` formats it): the time field of audit and decision records.
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// A Unix time in seconds in the same RFC 3339 form (no fraction); `None` out of range.
pub fn rfc3339_at(unix_secs: i64) -> Option<String> {
    time::OffsetDateTime::from_unix_timestamp(unix_secs)
        .ok()?
        .format(&time::format_description::well_known::Rfc3339)
        .ok()
}

/// A request id unique across the mesh: 64 random bits drawn once per process, then a
/// counter (24 hex digits, the shape ids always had). Ids correlate log lines; they are
/// not secrets, so one system call per process instead of one per request (which the
/// profile showed on every request) loses nothing.
pub fn request_id() -> String {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};
    static PREFIX: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = *PREFIX.get_or_init(|| {
        use ring::rand::{SecureRandom, SystemRandom};
        let mut b = [0u8; 8];
        let _ = SystemRandom::new().fill(&mut b);
        u64::from_be_bytes(b)
    });
    // Every 2^32 requests the prefix moves on by one, so no id repeats in a process.
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{:016x}{:08x}", prefix.wrapping_add(n >> 32), n as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_24_hex_digits_and_never_repeat() {
        let ids: Vec<String> = (0..1000).map(|_| request_id()).collect();
        for id in &ids {
            assert_eq!(id.len(), 24, "{id}");
            assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
        }
        let distinct: std::collections::HashSet<&String> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len());
    }
}
