//! What this workload enforces, as one value swapped whole when it changes: the
//! authorization policies and the end-user authentication rules. The inbound HTTP path, the
//! opaque TCP path and the AMQP proxy all read it (one `load` per decision), and the
//! configuration watcher (or the policy file) replaces it.

use palisade_contract::SpiffeId;
use palisade_contract::policy::{Authenticator, PolicySet};

/// The service policies select a workload by: `--service`, else its service account.
pub fn service_name(configured: Option<&str>, own: Option<&SpiffeId>) -> String {
    configured
        .map(str::to_owned)
        .or_else(|| {
            own.and_then(SpiffeId::namespace_and_service_account)
                .map(|(_, sa)| sa.to_owned())
        })
        .unwrap_or_default()
}

/// What the inbound path enforces, swapped whole when it changes.
#[derive(Debug, Default)]
pub struct Policies {
    pub authorization: PolicySet,
    pub authentication: Authenticator,
}
