//! Assembling the sidecar: trust bundle, identity lifecycle, policies, the inbound listener
//! and the admin port. (The outbound listener and AMQP proxy join here as they arrive.)

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use arc_swap::ArcSwap;
use palisade_contract::path::PathOptions;
use palisade_contract::policy::{Authenticator, PolicySet, parse_documents};
use palisade_contract::registry::{ServiceRegistry, parse_services};
use palisade_contract::tls::TrustBundle;
use prometheus::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::admin::{self, AdminState};
use crate::audit::AuditLog;
use crate::config::Config;
use crate::config_watch::ConfigWatch;
use crate::identity::{IdentityManager, IdentitySettings};
use palisade_contract::process::until_stopped;

use crate::inbound::{self, Inbound, Policies};
use crate::metrics::ProxyMetrics;
use crate::outbound::{self, Outbound};
use crate::server::Limits;

/// The registry from `--registry-file` (every problem reported), or an empty one.
fn load_registry(config: &Config) -> anyhow::Result<ServiceRegistry> {
    let entries = match &config.registry_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading --registry-file {}", path.display()))?;
            parse_services(&text).map_err(|problems| {
                anyhow::anyhow!("--registry-file {}: {problems}", path.display())
            })?
        }
        None => Vec::new(),
    };
    Ok(ServiceRegistry::new(entries))
}

/// The policy set and the end-user authenticator from `--policy-file` (every problem
/// reported), or empty ones.
fn load_policies(config: &Config) -> anyhow::Result<Policies> {
    let docs = match &config.policy_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading --policy-file {}", path.display()))?;
            parse_documents(&text).map_err(|problems| {
                anyhow::anyhow!(
                    "--policy-file {}:\n  {}",
                    path.display(),
                    problems
                        .0
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("\n  ")
                )
            })?
        }
        None => Default::default(),
    };
    let authenticator = Authenticator::new(&docs.authentication)
        .map_err(|problems| anyhow::anyhow!("--policy-file: {problems}"))?;
    Ok(Policies {
        authorization: PolicySet::new(&docs.authorization, 1, config.default_mode),
        authentication: authenticator,
    })
}

/// First retry delay after a failed certificate request.
pub const INITIAL_BACKOFF: Duration = Duration::from_millis(200);

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
    /// Following the control plane's configuration (when no policy or registry file is
    /// given).
    pub config_watch: Option<Arc<ConfigWatch>>,
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
    let policies = Arc::new(ArcSwap::from_pointee(load_policies(config)?));
    let metrics = ProxyMetrics::register(&registry)?;
    metrics
        .policy_version
        .set(policies.load().authorization.version() as i64);
    let audit = AuditLog::start(config.audit_log.clone(), metrics.audit_dropped.clone())
        .await
        .context("opening the audit log")?;
    let services = Arc::new(ArcSwap::from_pointee(load_registry(config)?));
    // Without policy or registry files, the configuration comes from the control plane
    // (starting from the cached one, if any).
    let config_watch = if config.policy_file.is_none() && config.registry_file.is_none() {
        let watch = Arc::new(ConfigWatch::new(
            identity.clone(),
            policies.clone(),
            services.clone(),
            config.default_mode,
            config.identity_dir.clone(),
            metrics.policy_version.clone(),
            &registry,
        )?);
        watch.load_cache();
        Some(watch)
    } else {
        None
    };
    let outbound_listener = TcpListener::bind(config.outbound_listen)
        .await
        .with_context(|| {
            format!(
                "binding the outbound listener on {}",
                config.outbound_listen
            )
        })?;
    let outbound_addr = outbound_listener.local_addr()?;
    let limits = Limits {
        header_timeout: config.header_timeout,
        max_header_bytes: config.max_header_bytes,
        max_streams: config.max_streams,
        max_headers: config.max_headers,
        max_connections: config.max_connections,
        idle_timeout: config.idle_timeout,
    };
    let outbound = Arc::new(Outbound::new(
        identity.clone(),
        services,
        audit.clone(),
        metrics.clone(),
        limits.clone(),
        config.worker_threads(),
        config.outbound_policy,
    ));
    let inbound_listener = TcpListener::bind(config.inbound_listen)
        .await
        .with_context(|| format!("binding the inbound listener on {}", config.inbound_listen))?;
    let inbound_addr = inbound_listener.local_addr()?;
    let inbound = Arc::new(Inbound::new(
        identity.clone(),
        policies.clone(),
        config.service.clone(),
        config.app,
        audit,
        metrics,
        PathOptions {
            allow_encoded_slashes: config.allow_encoded_slashes,
        },
        limits,
        config.opaque_ports.clone(),
        config.headers_with_underscores,
    ));
    let mut tcp_listeners = Vec::new();
    let mut tcp_outbound_addrs = Vec::new();
    for target in &config.tcp_outbound {
        let listener = TcpListener::bind(target.listen).await.with_context(|| {
            format!(
                "binding --tcp-outbound {} for {}",
                target.listen, target.service
            )
        })?;
        tcp_outbound_addrs.push(listener.local_addr()?);
        tcp_listeners.push((listener, target.clone()));
    }
    let amqp = match config.amqp_listen {
        Some(addr) => {
            let password = match &config.amqp_password_file {
                Some(p) => Some(
                    std::fs::read_to_string(p)
                        .with_context(|| format!("reading --amqp-password-file {}", p.display()))?
                        .trim_end_matches(['\r', '\n'])
                        .to_owned(),
                ),
                None => None,
            };
            let ca = match &config.amqp_ca_bundle {
                Some(p) => Some(
                    std::fs::read(p)
                        .with_context(|| format!("reading --amqp-ca-bundle {}", p.display()))?,
                ),
                None => None,
            };
            let upstream =
                crate::amqp::Upstream::parse(&config.amqp_upstream, password, ca.as_deref())
                    .map_err(|e| anyhow::anyhow!("--amqp-upstream: {e}"))?;
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the AMQP listener on {addr}"))?;
            let amqp = Arc::new(crate::amqp::Amqp {
                identity: identity.clone(),
                policies: policies.clone(),
                service: config.service.clone(),
                upstream,
                audit: inbound.audit.clone(),
                metrics: inbound.metrics.clone(),
                audit_sample: config.amqp_audit_sample,
                allowed_publishes: std::sync::atomic::AtomicU64::new(0),
                provenance: crate::amqp::ProvenanceSettings {
                    sign: config.amqp_sign,
                    verify: config.amqp_verify,
                    max_message_bytes: config.amqp_max_signed_bytes,
                    max_age: config.amqp_signature_max_age,
                },
            });
            Some((listener, amqp))
        }
        None => None,
    };
    let amqp_addr = match &amqp {
        Some((l, _)) => Some(l.local_addr()?),
        None => None,
    };
    let admin_listener = TcpListener::bind(config.admin_listen)
        .await
        .with_context(|| format!("binding the admin listener on {}", config.admin_listen))?;
    let admin_addr = admin_listener.local_addr()?;

    let (stop, stopped) = watch::channel(false);
    let mut tasks = JoinSet::new();
    tasks.spawn(identity.clone().run(stopped.clone()));
    if let Some(watch) = &config_watch {
        tasks.spawn(watch.clone().run(stopped.clone()));
    }
    tasks.spawn(admin::serve(
        admin_listener,
        AdminState {
            identity: identity.clone(),
            registry: registry.clone(),
            app: config.app,
            probes: Arc::new(
                config
                    .app_probe
                    .iter()
                    .map(|p| (p.name.clone(), p.path.clone()))
                    .collect(),
            ),
        },
        until_stopped(&stopped),
    ));
    for (listener, target) in tcp_listeners {
        tasks.spawn(outbound::serve_tcp(
            listener,
            outbound.clone(),
            target,
            until_stopped(&stopped),
        ));
    }
    if let Some((listener, amqp)) = amqp {
        tasks.spawn(crate::amqp::serve(listener, amqp, until_stopped(&stopped)));
    }
    tasks.spawn(outbound::serve(
        outbound_listener,
        outbound,
        until_stopped(&stopped),
    ));
    tasks.spawn(inbound::serve(
        inbound_listener,
        inbound,
        until_stopped(&stopped),
    ));
    tracing::info!(%admin_addr, %inbound_addr, %outbound_addr, app = %config.app,
        control_plane = %config.control_plane, "sidecar started");
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
        stop,
        tasks,
    })
}
