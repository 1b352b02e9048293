//! Assembling the sidecar: trust bundle, identity lifecycle and admin port. The data-plane
//! listeners join here as they arrive.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use palisade_contract::tls::TrustBundle;
use prometheus::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::admin::{self, AdminState};
use crate::config::Config;
use crate::identity::{IdentityManager, IdentitySettings};

/// First retry delay after a failed certificate request.
pub const INITIAL_BACKOFF: Duration = Duration::from_millis(200);

/// A started sidecar. Call [`Self::shutdown`] to stop it.
#[derive(Debug)]
pub struct RunningSidecar {
    pub admin_addr: SocketAddr,
    pub identity: Arc<IdentityManager>,
    pub registry: Registry,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl RunningSidecar {
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Loads the bundle, starts the identity lifecycle and the admin port. Returns at once: the
/// sidecar reports ready when its first certificate arrives.
pub async fn start(config: &Config) -> anyhow::Result<RunningSidecar> {
    let bundle_pem = std::fs::read(&config.ca_bundle)
        .with_context(|| format!("reading --ca-bundle {}", config.ca_bundle.display()))?;
    let bundle = TrustBundle::from_pem(config.trust_domain.clone(), &bundle_pem)
        .with_context(|| format!("loading --ca-bundle {}", config.ca_bundle.display()))?;
    let registry = Registry::new();
    registry.register(Box::new(
        prometheus::process_collector::ProcessCollector::for_self(),
    ))?;
    let identity = IdentityManager::new(
        IdentitySettings {
            control_plane: config.control_plane.clone(),
            trust_domain: config.trust_domain.clone(),
            token_file: config.token_file.clone(),
            cache_dir: config.identity_dir.clone(),
            initial_backoff: INITIAL_BACKOFF.min(config.max_backoff),
            max_backoff: config.max_backoff,
        },
        bundle,
        &registry,
    )?;
    let admin_listener = TcpListener::bind(config.admin_listen)
        .await
        .with_context(|| format!("binding the admin listener on {}", config.admin_listen))?;
    let admin_addr = admin_listener.local_addr()?;

    let (stop, stopped) = watch::channel(false);
    let mut tasks = JoinSet::new();
    tasks.spawn(identity.clone().run(stopped.clone()));
    let mut admin_stop = stopped.clone();
    tasks.spawn(admin::serve(
        admin_listener,
        AdminState {
            identity: identity.clone(),
            registry: registry.clone(),
        },
        async move {
            let _ = admin_stop.wait_for(|s| *s).await;
        },
    ));
    tracing::info!(%admin_addr, control_plane = %config.control_plane, "sidecar started");
    Ok(RunningSidecar {
        admin_addr,
        identity,
        registry,
        stop,
        tasks,
    })
}
