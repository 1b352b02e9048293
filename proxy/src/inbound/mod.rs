//! The inbound path: what reaches the application through its sidecar.
//!
//! accept -> TLS with a required client certificate (verified against the trust bundle; one
//! SPIFFE ID or no handshake; the connection drains once that trust is lost, `trust.rs`)
//! -> HTTP/1.1 or HTTP/2 (limits on headers, streams, resets and
//! slow clients) -> method and path checks (400) -> authorization (403, default deny) ->
//! identity headers (the caller's `x-forwarded-client-cert` and `x-palisade-*` are dropped,
//! ours is set) -> the application over plain HTTP/1.1 on loopback, bodies streamed both
//! ways. Every request leaves one audit line and is counted.
//!
//! This file holds the connection stages (accept, TLS, peer identity, detection by ALPN);
//! `http.rs` the request phases, `opaque.rs` the opaque TCP ports.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use palisade_contract::SpiffeId;
use palisade_contract::path::PathOptions;
use palisade_contract::process::accept;
use palisade_contract::tls::{ClientAuth, peer_spiffe_id, server_config};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::audit::AuditLog;
use crate::forwarding::UnderscoreHeaders;
use crate::identity::IdentityManager;
use crate::metrics::ProxyMetrics;
pub use crate::policies::{Policies, service_name};
use crate::runtime::ProxyRuntime;
use crate::server::{Limits, http_server, serve_http};
use crate::trust::Side;

mod http;
mod opaque;

pub use opaque::{alpn_for, port_from_alpn};

/// The inbound path's part of the configuration.
#[derive(Debug, Clone)]
pub struct InboundSettings {
    pub listen: SocketAddr,
    /// The application's plain-HTTP address.
    pub app: SocketAddr,
    /// The service this sidecar protects (policies select it by this name); by default the
    /// service account of its own SPIFFE ID.
    pub service: Option<String>,
    pub path_options: PathOptions,
    pub limits: Limits,
    /// Application ports served as opaque TCP (`opaque.rs`).
    pub opaque_ports: Vec<u16>,
    /// `--headers-with-underscores`.
    pub headers_with_underscores: UnderscoreHeaders,
    /// Longest wait for the TCP connection to the application.
    pub connect_timeout: Duration,
}

/// Everything the inbound path needs; shared by all connections.
pub struct Inbound {
    pub identity: Arc<IdentityManager>,
    pub policies: Arc<ArcSwap<Policies>>,
    pub audit: AuditLog,
    pub metrics: ProxyMetrics,
    pub settings: InboundSettings,
    client: crate::forwarding::PlainClient,
}

impl std::fmt::Debug for Inbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbound")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Inbound {
    pub fn new(settings: InboundSettings, runtime: &ProxyRuntime) -> Self {
        Self {
            identity: runtime.identity.clone(),
            policies: runtime.policies.clone(),
            audit: runtime.audit.clone(),
            metrics: runtime.metrics.clone(),
            client: crate::forwarding::plain_client(settings.connect_timeout),
            settings,
        }
    }
}

/// Serves the inbound listener until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    inbound: Arc<Inbound>,
    shutdown: impl Future<Output = ()>,
) {
    // HTTP, and opaque TCP for the configured ports (the client names the port in ALPN).
    let mut alpn: Vec<Vec<u8>> = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    alpn.extend(inbound.settings.opaque_ports.iter().map(|p| alpn_for(*p)));
    let alpn: Vec<&[u8]> = alpn.iter().map(Vec::as_slice).collect();
    let tls = Arc::new(server_config(
        inbound.identity.slot(),
        inbound.identity.bundle(),
        ClientAuth::Required,
        &alpn,
    ));
    let acceptor = TlsAcceptor::from(tls);
    let connections = Arc::new(tokio::sync::Semaphore::new(
        inbound.settings.limits.max_connections,
    ));
    let builder = Arc::new(http_server(&inbound.settings.limits));
    let own_port = listener.local_addr().map(|a| a.port()).ok();
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = connections.clone().acquire_owned() => p.expect("semaphore never closes"),
            () = &mut shutdown => return,
        };
        let Some((tcp, addr)) = accept(&listener, &mut shutdown, "inbound").await else {
            return;
        };
        // The header timeout runs from accept: TLS, detection and the first request's head
        // must all be in by then, or the connection (and its slot) is given back.
        let first_request_by = tokio::time::Instant::now() + inbound.settings.limits.header_timeout;
        // A connection iptables redirected here (transparent interception) was addressed
        // to an application port: requests on it go to that port.
        let asked_port = crate::transparent::original_dst(&tcp)
            .ok()
            .map(|d| d.port())
            .filter(|p| Some(*p) != own_port);
        let (acceptor, inbound, builder) = (acceptor.clone(), inbound.clone(), builder.clone());
        tokio::spawn(async move {
            let _permit = permit;
            // Our certificate for this handshake: this one, or one renewed meanwhile (which
            // expires later), so the connection's deadline is never late.
            let own = inbound.identity.slot().valid();
            let handshake = tokio::time::timeout_at(first_request_by, acceptor.accept(tcp)).await;
            let tls = match handshake {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    inbound.metrics.handshake("inbound", "failure");
                    tracing::debug!(peer = %addr, error = %e, "inbound TLS handshake refused");
                    return;
                }
                Err(_) => {
                    inbound.metrics.handshake("inbound", "timeout");
                    return;
                }
            };
            let Some(peer) = peer_spiffe_id(tls.get_ref().1.peer_certificates()) else {
                inbound.metrics.handshake("inbound", "failure");
                return;
            };
            inbound.metrics.handshake("inbound", "success");
            let trust = inbound.identity.connection_trust(
                own.as_deref(),
                tls.get_ref().1.peer_certificates().unwrap_or_default(),
                Side::Server,
            );
            if let Some(port) = tls.get_ref().1.alpn_protocol().and_then(port_from_alpn) {
                inbound.serve_opaque(&peer, port, tls, trust).await;
                return;
            }
            let _open = inbound.metrics.open_connection("inbound");
            let peer = Arc::new(peer);
            let handle = {
                let inbound = inbound.clone();
                move |req| {
                    let (inbound, peer) = (inbound.clone(), peer.clone());
                    async move { inbound.handle(&peer, asked_port, req).await }
                }
            };
            let limits = &inbound.settings.limits;
            let served = serve_http(&builder, tls, limits, first_request_by, Some(trust), handle);
            if let Err(e) = served.await {
                tracing::debug!(peer = %addr, error = %e, "inbound connection ended with an error");
            }
        });
    }
}

impl Inbound {
    pub(crate) fn service_name(&self, own: Option<&SpiffeId>) -> String {
        service_name(self.settings.service.as_deref(), own)
    }
}
