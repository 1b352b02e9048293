//! Assembling the sidecar: the trust bundle and the identity lifecycle, the policies (from
//! files or the control plane), the shared runtime, then each component from its settings,
//! and the listeners bound before anything is served (so a taken port fails the start).

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use arc_swap::ArcSwap;
use palisade_contract::process::Tasks;
use palisade_contract::tls::TrustBundle;
use prometheus::Registry;
use tokio::net::TcpListener;

use crate::admin::{self, AdminState};
use crate::amqp::{self, Amqp};
use crate::audit::AuditLog;
use crate::config::{Config, Settings};
use crate::config_watch::{ConfigWatch, Follow};
use crate::control_plane_client::ShipChannel;
use crate::decision_log::ship::{BrokerLink, Destination, Shipper};
use crate::decision_log::{DecisionShip, Spool};
use crate::identity::IdentityManager;
use crate::inbound::{self, Inbound};
use crate::metrics::ProxyMetrics;
use crate::outbound::{self, Outbound};
use crate::policies::{Policies, load_policies, load_registry};
use crate::runtime::ProxyRuntime;

/// A started sidecar. Call [`Self::shutdown`] to stop it.
#[derive(Debug)]
pub struct RunningSidecar {
    pub admin_addr: SocketAddr,
    pub inbound_addr: SocketAddr,
    pub outbound_addr: SocketAddr,
    /// The AMQP listener, when `--amqp-listen` is given.
    pub amqp_addr: Option<SocketAddr>,
    /// The `--tcp-outbound` listeners, in the order given.
    pub tcp_outbound_addrs: Vec<SocketAddr>,
    /// The policies in force; replace to change decisions without a restart.
    pub policies: Arc<ArcSwap<Policies>>,
    pub identity: Arc<IdentityManager>,
    pub registry: Registry,
    /// Following the control plane's configuration (only its trust bundle when a policy
    /// or registry file is given).
    pub config_watch: Arc<ConfigWatch>,
    tasks: Tasks,
    writers: Tasks,
}

impl RunningSidecar {
    /// Stops the listeners (in-flight requests finish), then the decision writer.
    pub async fn shutdown(self) {
        self.tasks.shutdown().await;
        self.writers.shutdown().await;
    }
}

/// Validates `config` (every problem in the error) and starts the sidecar: for embedders
/// and tests; the binary validates first and calls [`start_with`].
pub async fn start(config: &Config) -> anyhow::Result<RunningSidecar> {
    let settings = config
        .settings()
        .map_err(|problems| anyhow::anyhow!(problems.join("; ")))?;
    start_with(settings).await
}

async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the {what} listener on {addr}"))
}

/// Loads the bundle, starts the identity lifecycle, the listeners and the admin port.
/// Returns at once: the sidecar reports ready when its first certificate arrives.
pub async fn start_with(settings: Settings) -> anyhow::Result<RunningSidecar> {
    let Settings {
        ca_bundle,
        identity: identity_settings,
        admin: admin_settings,
        inbound: inbound_settings,
        outbound: outbound_settings,
        amqp: amqp_settings,
        policy,
        audit_log,
        decisions,
        worker_threads: _,
    } = settings;
    let control_plane = identity_settings.control_plane.clone();
    let cache_dir = identity_settings.cache_dir.clone();

    // Trust and identity: the roots from the file until the control plane sends newer; the
    // certificate comes from the control plane (or the cache) and is renewed in `run`.
    let bundle_pem = std::fs::read(&ca_bundle)
        .with_context(|| format!("reading --ca-bundle {}", ca_bundle.display()))?;
    let bundle = TrustBundle::from_pem(identity_settings.trust_domain.clone(), &bundle_pem)
        .with_context(|| format!("loading --ca-bundle {}", ca_bundle.display()))?;
    let registry = Registry::new();
    registry.register(Box::new(
        prometheus::process_collector::ProcessCollector::for_self(),
    ))?;
    let identity = IdentityManager::new(identity_settings, bundle, &registry)?;

    // Policies and the registry: from the files, else followed from the control plane
    // (starting from the cached configuration, if any).
    let policies = Arc::new(ArcSwap::from_pointee(load_policies(&policy)?));
    let metrics = ProxyMetrics::register(&registry)?;
    metrics
        .policy_version
        .set(policies.load().authorization.version() as i64);
    let audit = AuditLog::start(audit_log, metrics.audit_dropped.clone())
        .await
        .context("opening the audit log")?;
    // The decision spool's writer outlives the listeners: it stops after they drained, so
    // the decisions of the last requests are written, checkpointed and synced.
    let mut writers = Tasks::new();
    let audit = match decisions {
        Some(settings) => {
            let ship = settings.ship.clone();
            let spool = Spool::open(settings, identity.slot(), metrics.spool.clone())?;
            let writer = spool.clone();
            writers.spawn(|stop| writer.run(stop));
            let destination = match ship {
                DecisionShip::ControlPlane => Some(Destination::ControlPlane(ShipChannel::new(
                    identity.control_plane().clone(),
                ))),
                DecisionShip::Broker { url, queue } => Some(Destination::Broker(Box::new(
                    BrokerLink::new(url, queue, identity.slot()),
                ))),
                DecisionShip::Off => None,
            };
            if let Some(destination) = destination {
                let shipper = Shipper::new(spool.clone(), destination, metrics.spool.clone());
                writers.spawn(|stop| shipper.run(stop));
            }
            audit.with_spool(spool)
        }
        None => audit,
    };
    let services = Arc::new(ArcSwap::from_pointee(load_registry(&policy)?));
    let runtime = ProxyRuntime {
        identity: identity.clone(),
        policies: policies.clone(),
        services,
        audit,
        metrics,
    };
    let follow = if policy.from_control_plane() {
        Follow::Everything
    } else {
        Follow::BundleOnly
    };
    let config_watch = Arc::new(ConfigWatch::new(
        follow,
        &runtime,
        policy.default_mode,
        cache_dir,
        &registry,
    )?);
    config_watch.load_cache();

    // Every listener is bound before anything is served: a taken port fails the start.
    let outbound_listener = bind(outbound_settings.listen, "outbound").await?;
    let inbound_listener = bind(inbound_settings.listen, "inbound").await?;
    let mut tcp_listeners = Vec::new();
    for target in &outbound_settings.tcp {
        let listener = TcpListener::bind(target.listen).await.with_context(|| {
            format!(
                "binding --tcp-outbound {} for {}",
                target.listen, target.service
            )
        })?;
        tcp_listeners.push((listener, target.clone()));
    }
    let amqp = match amqp_settings {
        Some(settings) => {
            let listener = bind(settings.listen, "AMQP").await?;
            Some((listener, Arc::new(Amqp::new(settings, &runtime)?)))
        }
        None => None,
    };
    let admin_listener = bind(admin_settings.listen, "admin").await?;
    let (inbound_addr, outbound_addr, admin_addr) = (
        inbound_listener.local_addr()?,
        outbound_listener.local_addr()?,
        admin_listener.local_addr()?,
    );
    let amqp_addr = match &amqp {
        Some((l, _)) => Some(l.local_addr()?),
        None => None,
    };
    let tcp_outbound_addrs = tcp_listeners
        .iter()
        .map(|(l, _)| l.local_addr())
        .collect::<Result<_, _>>()?;

    let app = inbound_settings.app;
    let inbound = Arc::new(Inbound::new(inbound_settings, &runtime));
    let outbound = Arc::new(Outbound::new(outbound_settings, &runtime));
    let mut tasks = Tasks::new();
    tasks.spawn(|stop| identity.clone().run(stop));
    tasks.spawn(|stop| config_watch.clone().run(stop));
    let admin_state = AdminState::new(admin_settings, identity.clone(), registry.clone());
    tasks.spawn(|stop| admin::serve(admin_listener, admin_state, stop));
    for (listener, target) in tcp_listeners {
        let outbound = outbound.clone();
        tasks.spawn(|stop| outbound::serve_tcp(listener, outbound, target, stop));
    }
    if let Some((listener, amqp)) = amqp {
        tasks.spawn(|stop| amqp::serve(listener, amqp, stop));
    }
    tasks.spawn(|stop| outbound::serve(outbound_listener, outbound, stop));
    tasks.spawn(|stop| inbound::serve(inbound_listener, inbound, stop));
    tracing::info!(%admin_addr, %inbound_addr, %outbound_addr, %app, %control_plane,
        "sidecar started");
    Ok(RunningSidecar {
        admin_addr,
        inbound_addr,
        outbound_addr,
        amqp_addr,
        tcp_outbound_addrs,
        policies,
        identity,
        registry,
        config_watch,
        tasks,
        writers,
    })
}
