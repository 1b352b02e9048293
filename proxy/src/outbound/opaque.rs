//! Opaque TCP out (`--tcp-outbound LISTEN=SERVICE:PORT`): the application connects to
//! LISTEN on loopback; the sidecar resolves SERVICE in the registry, opens mTLS to one of its
//! endpoints (secure naming as for HTTP), asks for PORT in the handshake's ALPN (see
//! [`crate::inbound`]) and pipes bytes. One audit event per connection (protocol `tcp`).

use std::future::Future;
use std::sync::Arc;

use palisade_contract::SpiffeId;
use palisade_contract::process::accept;
use tokio::net::{TcpListener, TcpStream};

use tokio_rustls::client::TlsStream;

use super::{ForwardError, Outbound};
use crate::audit::AuditEvent;
use crate::config::TcpOutbound;
use crate::inbound::alpn_for;
use crate::net::pipe;

/// Serves one `--tcp-outbound` listener until `shutdown` resolves.
pub async fn serve_outbound(
    listener: TcpListener,
    outbound: Arc<Outbound>,
    target: TcpOutbound,
    shutdown: impl Future<Output = ()>,
) {
    let target = Arc::new(target);
    tokio::pin!(shutdown);
    loop {
        let Some((app, _)) = accept(&listener, &mut shutdown, "tcp-outbound").await else {
            return;
        };
        let (outbound, target) = (outbound.clone(), target.clone());
        tokio::spawn(async move { outbound.forward_opaque(app, &target).await });
    }
}

impl Outbound {
    /// One `--tcp-outbound` connection: resolve and dial (secure naming, the port asked for
    /// in ALPN), then one audit line and one count, then (when connected) the bytes piped.
    async fn forward_opaque(&self, app: TcpStream, target: &TcpOutbound) {
        let own = self.identity.spiffe_id();
        let mut event = AuditEvent::begin("outbound", "tcp");
        event.source = own.as_ref().map(ToString::to_string);
        event.path = format!(":{}", target.port);
        let own_namespace = own.as_ref().and_then(SpiffeId::namespace);
        let dialled = self.dial_opaque(target, own_namespace, &mut event).await;
        // Finish: the connection's one audit line and count, whatever the outcome.
        match &dialled {
            Ok(_) => event.decision = "forward",
            Err(e) => {
                event.decision = "error";
                event.reason = Some(e.to_string());
            }
        }
        self.metrics
            .connection("outbound", &event.destination, event.decision);
        self.audit.record(&event);
        if let Ok(tls) = dialled {
            let _open = self.metrics.open_connection("outbound");
            let (sent, received) = pipe(tls, app).await;
            self.metrics.tcp_bytes("outbound", sent, received);
        }
    }

    async fn dial_opaque(
        &self,
        target: &TcpOutbound,
        own_namespace: Option<&str>,
        event: &mut AuditEvent,
    ) -> Result<TlsStream<TcpStream>, ForwardError> {
        let entry = self
            .registry
            .load()
            .resolve(&target.service, own_namespace.unwrap_or_default())
            .ok_or_else(|| ForwardError::UnknownService(target.service.clone()))?;
        event.destination_service = entry.name.clone();
        event.destination = entry.identity.to_string();
        self.dial(&entry, None, alpn_for(target.port)).await
    }
}
