//! The outbound path: what the application sends to other services through its sidecar.
//!
//! app -> plain HTTP/1.1 (as an explicit proxy with absolute-form targets, or with a `Host`
//! naming the service) or HTTP/2 (prior knowledge) on loopback -> resolve the host in the
//! service registry -> pooled HTTP/2 connections over mTLS per destination service, which
//! must present the SPIFFE ID the registry names (secure naming: anything else is a 502
//! and an audit event) -> the destination's inbound sidecar, which authorizes.
//! The pool keeps one connection per worker thread (as Envoy keeps a pool per worker):
//! with a single connection, every stream of the mesh hop went through one connection
//! task on each side, and the benchmark left a fifth of the CPU idle at 21k req/s.
//! HTTP/1.1 semantics survive the HTTP/2 hop: hop-by-hop headers are per connection on
//! both sides, and `Host` travels as `:authority`.
//!
//! This file holds the listener (accept, and on intercepted connections, detection of
//! HTTP); `http.rs` the request phases, `pool.rs` dialling peers and the connection pool,
//! `passthrough.rs` intercepted non-HTTP traffic, `opaque.rs` the `--tcp-outbound` ports.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use arc_swap::ArcSwap;
use palisade_contract::process::accept;
use palisade_contract::registry::ServiceRegistry;
use tokio::net::TcpListener;
use tokio::sync::Mutex;

use crate::audit::AuditLog;
use crate::identity::IdentityManager;
use crate::metrics::ProxyMetrics;
use crate::runtime::ProxyRuntime;
use crate::server::{Limits, http_server, serve_http};

/// `--outbound-policy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutboundPolicy {
    /// Destinations outside the registry are passed through.
    AllowAny,
    /// Only registry services are reachable through interception.
    RegistryOnly,
}

/// The outbound path's part of the configuration.
#[derive(Debug, Clone)]
pub struct OutboundSettings {
    pub listen: SocketAddr,
    pub limits: Limits,
    /// HTTP/2 connections kept per destination service (one per worker thread).
    pub connections_per_service: usize,
    /// Whether destinations outside the registry are reachable.
    pub policy: OutboundPolicy,
    /// The `--tcp-outbound` listeners.
    pub tcp: Vec<TcpOutbound>,
    /// Longest wait for a TCP connection to a peer sidecar or a passthrough destination.
    pub connect_timeout: Duration,
}

pub struct Outbound {
    pub identity: Arc<IdentityManager>,
    pub registry: Arc<ArcSwap<ServiceRegistry>>,
    pub audit: AuditLog,
    pub metrics: ProxyMetrics,
    pub limits: Limits,
    connect_timeout: Duration,
    /// Up to `connections_per_service` HTTP/2 connections per destination service
    /// (`namespace/name`), used in turn.
    pool: Mutex<HashMap<String, Vec<pool::Pooled>>>,
    connections_per_service: usize,
    next_endpoint: AtomicUsize,
    next_connection: AtomicUsize,
    /// Plain HTTP to destinations outside the registry, on intercepted connections.
    plain: crate::forwarding::PlainClient,
    /// Whether those destinations are reachable at all.
    policy: OutboundPolicy,
}

impl std::fmt::Debug for Outbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbound").finish_non_exhaustive()
    }
}

mod http;
mod opaque;
mod passthrough;
mod pool;

pub use opaque::{TcpOutbound, serve_outbound as serve_tcp};

/// Why a request could not be forwarded.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ForwardError {
    #[error("no such service: {0}")]
    UnknownService(String),
    #[error("the request names no host")]
    NoHost,
    #[error("secure naming: {service} must present {want}, the endpoint presented {got}")]
    SecureNaming {
        service: String,
        want: String,
        got: String,
    },
    #[error("{0}")]
    Unsupported(&'static str),
    #[error("{0}")]
    AmbiguousFraming(&'static str),
    #[error("transfer codings other than chunked are not supported")]
    UnsupportedCoding,
    #[error("{0} is not a mesh service, and the outbound policy is registry-only")]
    OutsideRegistry(String),
    #[error("cannot reach {service}: {detail}")]
    Unreachable { service: String, detail: String },
    /// The decision spool is full and `--decision-overflow refuse` applies.
    #[error("{}", crate::decision_log::LOG_FULL)]
    LogFull,
}

impl Outbound {
    pub fn new(settings: OutboundSettings, runtime: &ProxyRuntime) -> Self {
        Self {
            identity: runtime.identity.clone(),
            registry: runtime.services.clone(),
            audit: runtime.audit.clone(),
            metrics: runtime.metrics.clone(),
            limits: settings.limits,
            connect_timeout: settings.connect_timeout,
            pool: Mutex::new(HashMap::new()),
            connections_per_service: settings.connections_per_service.max(1),
            next_endpoint: AtomicUsize::new(0),
            next_connection: AtomicUsize::new(0),
            plain: crate::forwarding::plain_client(settings.connect_timeout),
            policy: settings.policy,
        }
    }
}

/// Serves the outbound listener (plain HTTP from the application) until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    outbound: Arc<Outbound>,
    shutdown: impl Future<Output = ()>,
) {
    let builder = Arc::new(http_server(&outbound.limits));
    let own_port = listener.local_addr().map(|a| a.port()).ok();
    tokio::pin!(shutdown);
    loop {
        let Some((tcp, addr)) = accept(&listener, &mut shutdown, "outbound").await else {
            return;
        };
        // The header timeout runs from accept, through protocol detection.
        let first_request_by = tokio::time::Instant::now() + outbound.limits.header_timeout;
        let _ = tcp.set_nodelay(true);
        // Redirected here by the pod's interception rules: where the application meant to
        // go. (A connection made to this port itself is not redirected; comparing ports
        // also keeps a passthrough from ever dialling this listener.)
        let redirected = crate::transparent::original_dst(&tcp)
            .ok()
            .filter(|d| Some(d.port()) != own_port);
        let (outbound, builder) = (outbound.clone(), builder.clone());
        tokio::spawn(async move {
            if let Some(destination) = redirected
                && !crate::transparent::looks_like_http(&tcp).await
            {
                // TLS to an outside service, a database, anything not HTTP: passed through
                // to where it was going, as the application's own connection would have.
                outbound.passthrough(tcp, destination).await;
                return;
            }
            let handle = {
                let outbound = outbound.clone();
                move |req| {
                    let outbound = outbound.clone();
                    async move { outbound.handle(req, redirected).await }
                }
            };
            let limits = &outbound.limits;
            if let Err(e) = serve_http(&builder, tcp, limits, first_request_by, None, handle).await
            {
                tracing::debug!(peer = %addr, error = %e, "outbound connection ended with an error");
            }
        });
    }
}
