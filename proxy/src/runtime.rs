//! What every path of the sidecar shares, built once at start and handed to each component
//! with its own settings (`Inbound::new(settings, &runtime)`, as linkerd2-proxy hands its
//! `ProxyRuntime` to each stack): the workload's identity, the policies in force, the
//! service registry, the decision log and the metrics. Each is a cheap handle; the paths
//! read them, the identity lifecycle and the configuration watcher replace what they hold.

use std::sync::Arc;

use arc_swap::ArcSwap;
use palisade_contract::registry::ServiceRegistry;

use crate::audit::AuditLog;
use crate::identity::IdentityManager;
use crate::metrics::ProxyMetrics;
use crate::policies::Policies;

#[derive(Clone)]
pub struct ProxyRuntime {
    pub identity: Arc<IdentityManager>,
    /// Read by the inbound, opaque TCP and AMQP paths, once per decision.
    pub policies: Arc<ArcSwap<Policies>>,
    /// Read by the outbound path to resolve destinations and their identities.
    pub services: Arc<ArcSwap<ServiceRegistry>>,
    pub audit: AuditLog,
    pub metrics: ProxyMetrics,
}

impl std::fmt::Debug for ProxyRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyRuntime").finish_non_exhaustive()
    }
}
