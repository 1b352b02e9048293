//! The control plane's own identity: a certificate from its own CA for
//! `spiffe://<td>/ns/palisade-system/sa/control-plane` (and the webhook's DNS names), with
//! the workload TTL, renewed with a fresh key at half its lifetime and at once when a
//! rotation changes the signing root, so the control plane follows the rules it imposes on
//! sidecars. Its listeners serve from [`OwnIdentity::slot`], which is swapped live.

use std::sync::Arc;
use std::time::Duration;

use palisade_contract::identity_api::control_plane_id;
use palisade_contract::tls::{IdentitySlot, WorkloadIdentity};
use rcgen::KeyPair;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::ca::CertificateAuthority;

pub struct OwnIdentity {
    ca: Arc<CertificateAuthority>,
    dns_names: Vec<String>,
    slot: Arc<IdentitySlot>,
}

impl OwnIdentity {
    /// Issues the first certificate, so a CA that cannot sign stops the start.
    pub fn issue(ca: Arc<CertificateAuthority>, dns_names: Vec<String>) -> anyhow::Result<Self> {
        let own = Self {
            ca,
            dns_names,
            slot: IdentitySlot::new(),
        };
        own.renew()?;
        Ok(own)
    }

    /// The certificate the listeners serve, swapped at each renewal.
    pub fn slot(&self) -> Arc<IdentitySlot> {
        self.slot.clone()
    }

    /// Renews at half-life, or when the signing root changes, until `stop` resolves.
    pub async fn run(self, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        let mut signer_changes = self.ca.watch_signer();
        loop {
            let wait = self
                .slot
                .get()
                .map(|id| half_life(id.not_before, id.not_after))
                .unwrap_or(Duration::from_secs(1));
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                _ = signer_changes.changed() => {}
                () = &mut stop => return,
            }
            if let Err(e) = self.renew() {
                tracing::error!(error = %e, "renewing the control plane's own certificate failed");
            }
        }
    }

    /// A fresh certificate, with a fresh key, from the CA.
    fn renew(&self) -> anyhow::Result<()> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let id = control_plane_id(self.ca.trust_domain());
        let issued = self
            .ca
            .issue_for_key(&id, &self.dns_names, &key, self.ca.workload_ttl())?;
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        self.slot
            .set(WorkloadIdentity::from_der(issued.chain, key_der)?);
        tracing::debug!(serial = %issued.serial, "control plane certificate renewed");
        Ok(())
    }
}

/// Time from now until half of the certificate's lifetime (counted from now) is left.
fn half_life(not_before: i64, not_after: i64) -> Duration {
    let now = palisade_contract::unix_now();
    let lifetime = (not_after - not_before.max(now)).max(2) as u64;
    Duration::from_secs(lifetime / 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_due_at_half_the_remaining_lifetime() {
        let now = palisade_contract::unix_now();
        assert_eq!(half_life(now, now + 3600), Duration::from_secs(1800));
        // Issued in the past: half of what is left from now.
        assert_eq!(half_life(now - 1000, now + 1000), Duration::from_secs(500));
        // Expired or about to: soon, never zero-length busy looping.
        assert_eq!(half_life(now - 10, now - 5), Duration::from_secs(1));
    }
}
