//! Opaque TCP out (`--tcp-outbound LISTEN=SERVICE:PORT`): the application connects to
//! LISTEN on loopback; the sidecar resolves SERVICE in the registry, opens mTLS to one of its
//! endpoints (secure naming as for HTTP), asks for PORT in the handshake's ALPN (see
//! [`crate::inbound`]) and pipes bytes. One audit event per connection (protocol `tcp`).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use palisade_contract::SpiffeId;
use palisade_contract::process::accept;
use tokio::net::{TcpListener, TcpStream};

use tokio_rustls::client::TlsStream;

use super::{ForwardError, Outbound};
use crate::audit::AuditEvent;
use crate::inbound::alpn_for;
use crate::net::pipe;
use crate::trust::ConnectionTrust;

/// One `--tcp-outbound` mapping: a loopback listener for a service's port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpOutbound {
    pub listen: SocketAddr,
    /// As the registry resolves it: `name` or `name.namespace`.
    pub service: String,
    pub port: u16,
}

impl std::str::FromStr for TcpOutbound {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let usage = || format!("{s:?} is not LISTEN=SERVICE:PORT (e.g. 127.0.0.1:15432=db:5432)");
        let (listen, target) = s.split_once('=').ok_or_else(usage)?;
        let (service, port) = target.rsplit_once(':').ok_or_else(usage)?;
        let listen = listen.parse().map_err(|_| usage())?;
        let port = port.parse().ok().filter(|p| *p != 0).ok_or_else(usage)?;
        if service.is_empty() {
            return Err(usage());
        }
        Ok(TcpOutbound {
            listen,
            service: service.to_owned(),
            port,
        })
    }
}

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
            Ok(_) => event.decision = "forward".into(),
            Err(e) => {
                event.decision = "error".into();
                event.reason = Some(e.to_string());
            }
        }
        self.metrics
            .connection("outbound", &event.destination, &event.decision);
        self.audit.decided(&event).await;
        if let Ok((tls, trust)) = dialled {
            let _open = self.metrics.open_connection("outbound");
            let (sent, received) = pipe(tls, app, trust.closes_opaque()).await;
            self.metrics.tcp_bytes("outbound", sent, received);
        }
    }

    async fn dial_opaque(
        &self,
        target: &TcpOutbound,
        own_namespace: Option<&str>,
        event: &mut AuditEvent,
    ) -> Result<(TlsStream<TcpStream>, ConnectionTrust), ForwardError> {
        if !self.audit.admits() {
            return Err(ForwardError::LogFull);
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_outbound_flag() {
        assert_eq!(
            "127.0.0.1:15432=db.shop:5432".parse::<TcpOutbound>(),
            Ok(TcpOutbound {
                listen: "127.0.0.1:15432".parse().unwrap(),
                service: "db.shop".into(),
                port: 5432
            })
        );
        for bad in [
            "db:5432",
            "127.0.0.1:1=db",
            "127.0.0.1:1=:5432",
            "x=db:5432",
            "127.0.0.1:1=db:0",
        ] {
            assert!(bad.parse::<TcpOutbound>().is_err(), "{bad}");
        }
    }
}
