//! Following the mesh configuration the control plane stores ([`config_api`]).
//!
//! The sidecar keeps one long poll open (over mTLS with its own certificate) carrying the
//! version it has seen and the one it has applied. Each new configuration is validated with
//! the shared crate and compiled whole — authorization policies, request authentication,
//! the service registry — before anything is swapped; a configuration that fails is refused
//! whole, counted and logged, and the last good one stays in force (never half-applied,
//! never an empty allow-all). The last good configuration is written to the identity
//! directory, so a sidecar restarted while the control plane is down starts enforcing it at
//! once.
//!
//! The configuration also carries the trust bundle, and a bundle change is a mesh version of
//! its own: a root rotation reaches every sidecar within moments of each step. A sidecar
//! that takes its policies or registry from local files (`--policy-file`,
//! `--registry-file`) still follows the control plane, for the bundle only.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use palisade_contract::config_api::{ConfigQuery, MeshConfig};
use palisade_contract::documents::{PolicyDocuments, Problems, validate_values};
use palisade_contract::policy::{Authenticator, DefaultMode, PolicySet};
use palisade_contract::private_files::{ensure_private_dir, write_atomic};
use palisade_contract::process::Stopping;
use palisade_contract::registry::ServiceRegistry;
use prometheus::{IntCounter, IntGauge, Registry};

use crate::identity::IdentityManager;
use crate::policies::Policies;
use crate::runtime::ProxyRuntime;

/// File in the identity directory holding the last good configuration.
pub const CACHE_FILE: &str = "mesh-config.json";

/// Pause after a failed poll before the next (the control plane may be down).
const RETRY: Duration = Duration::from_secs(1);

/// A configuration compiled and ready to swap in.
pub struct Compiled {
    pub policies: Policies,
    pub registry: ServiceRegistry,
}

/// Validates and compiles a configuration; every problem is reported.
pub fn compile(config: &MeshConfig, default_mode: DefaultMode) -> Result<Compiled, Problems> {
    let docs = PolicyDocuments::from_documents(validate_values(&config.documents)?);
    let authentication = Authenticator::new(&docs.authentication)?;
    let version = u64::try_from(config.version).unwrap_or_default();
    Ok(Compiled {
        policies: Policies {
            authorization: PolicySet::new(&docs.authorization, version, default_mode),
            authentication,
        },
        registry: ServiceRegistry::new(docs.services),
    })
}

#[derive(Debug, Clone)]
struct WatchMetrics {
    applied: IntGauge,
    rejected: IntCounter,
}

/// What a sidecar takes from the mesh configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Follow {
    /// Documents (policies, registry) and the trust bundle.
    Everything,
    /// Only the trust bundle: the documents come from local files.
    BundleOnly,
}

pub struct ConfigWatch {
    follow: Follow,
    identity: Arc<IdentityManager>,
    policies: Arc<ArcSwap<Policies>>,
    registry: Arc<ArcSwap<ServiceRegistry>>,
    default_mode: DefaultMode,
    cache_dir: Option<PathBuf>,
    instance: String,
    metrics: WatchMetrics,
    /// The applied version, for the acknowledgement and `palisade_proxy_policy_version`.
    applied: std::sync::atomic::AtomicI64,
}

impl std::fmt::Debug for ConfigWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigWatch")
            .field("instance", &self.instance)
            .finish_non_exhaustive()
    }
}

impl ConfigWatch {
    #[allow(clippy::too_many_arguments)]
    /// Follows into the runtime's policies and registry (or, with [`Follow::BundleOnly`],
    /// only its trust bundle); caches in `cache_dir`.
    pub fn new(
        follow: Follow,
        runtime: &ProxyRuntime,
        default_mode: DefaultMode,
        cache_dir: Option<PathBuf>,
        metrics_registry: &Registry,
    ) -> prometheus::Result<Self> {
        let rejected = IntCounter::new(
            "palisade_proxy_config_rejected_total",
            "Mesh configurations refused because they did not validate (the last good one stays).",
        )?;
        metrics_registry.register(Box::new(rejected.clone()))?;
        Ok(Self {
            follow,
            identity: runtime.identity.clone(),
            policies: runtime.policies.clone(),
            registry: runtime.services.clone(),
            default_mode,
            cache_dir,
            instance: palisade_contract::request_id(),
            metrics: WatchMetrics {
                applied: runtime.metrics.policy_version.clone(),
                rejected,
            },
            applied: std::sync::atomic::AtomicI64::new(0),
        })
    }

    pub fn applied_version(&self) -> i64 {
        self.applied.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Starts from the cached configuration, if there is a valid one. Returns its version.
    pub fn load_cache(&self) -> Option<i64> {
        if self.follow == Follow::BundleOnly {
            return None;
        }
        let path = self.cache_dir.as_ref()?.join(CACHE_FILE);
        let bytes = std::fs::read(&path).ok()?;
        let config: MeshConfig = match serde_json::from_slice(&bytes) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "ignoring the cached configuration");
                return None;
            }
        };
        match self.apply(&config, false) {
            Ok(()) => {
                tracing::info!(path = %path.display(), version = config.version,
                    "enforcing the cached mesh configuration until the control plane answers");
                Some(config.version)
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "ignoring the cached configuration");
                None
            }
        }
    }

    /// Compiles `config` and swaps it in whole, or refuses it whole.
    pub fn apply(&self, config: &MeshConfig, write_cache: bool) -> Result<(), Problems> {
        let compiled = match self.follow {
            Follow::Everything => Some(compile(config, self.default_mode)?),
            Follow::BundleOnly => None,
        };
        if let Err(e) = self.identity.update_bundle(&config.trust_bundle) {
            // The policies are still good; the bundle comes again with the next certificate.
            tracing::warn!(error = %e, "keeping the current trust bundle");
        }
        let Some(compiled) = compiled else {
            self.applied
                .store(config.version, std::sync::atomic::Ordering::Release);
            return Ok(());
        };
        self.policies.store(Arc::new(compiled.policies));
        self.registry.store(Arc::new(compiled.registry));
        self.applied
            .store(config.version, std::sync::atomic::Ordering::Release);
        self.metrics.applied.set(config.version);
        tracing::info!(target: "palisade::config", version = config.version,
            documents = config.documents.len(), "mesh configuration applied");
        if write_cache && let Some(dir) = &self.cache_dir {
            let written = serde_json::to_vec(config)
                .map_err(std::io::Error::other)
                .and_then(|bytes| {
                    ensure_private_dir(dir)?;
                    write_atomic(&dir.join(CACHE_FILE), &bytes, true)
                });
            if let Err(e) = written {
                tracing::warn!(dir = %dir.display(), error = %e, "could not cache the configuration");
            }
        }
        Ok(())
    }

    /// Follows the control plane until `stopping` resolves.
    pub async fn run(self: Arc<Self>, mut stopping: Stopping) {
        let mut seen = self.applied_version();
        loop {
            if !self.identity.is_ready() {
                // No certificate, no mTLS: wait for the identity lifecycle.
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(100)) => continue,
                    () = &mut stopping => return,
                }
            }
            let query = ConfigQuery {
                version: seen,
                applied: self.applied_version(),
                instance: self.instance.clone(),
                roots: self.identity.bundle().load().root_ids().join(","),
            };
            let polled = tokio::select! {
                p = self.identity.control_plane().config(&query) => p,
                () = &mut stopping => return,
            };
            match polled {
                Ok(None) => {}
                Ok(Some(config)) => {
                    seen = config.version;
                    if let Err(problems) = self.apply(&config, true) {
                        self.metrics.rejected.inc();
                        tracing::error!(target: "palisade::config", version = config.version,
                            error = %problems, "refusing the mesh configuration; the last good one stays");
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "configuration poll failed; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(RETRY) => {}
                        () = &mut stopping => return,
                    }
                }
            }
        }
    }
}
