//! Intercepted connections that are not HTTP (TLS to an outside service, a database
//! protocol): piped to their original destination as the application's own connection
//! would have gone, or refused under a registry-only outbound policy.

use std::net::SocketAddr;

use tokio::net::TcpStream;

use crate::audit::AuditEvent;
use crate::config::OutboundPolicy;

use super::Outbound;

impl Outbound {
    /// A redirected connection that is not HTTP, piped to its original destination (the
    /// sidecar's own connection is exempt from redirection), with one audit line.
    pub(super) async fn passthrough(&self, app: TcpStream, destination: SocketAddr) {
        let own = self.identity.spiffe_id();
        let mut event = AuditEvent::begin("outbound", "tcp");
        event.source = own.as_ref().map(ToString::to_string);
        event.destination = destination.to_string();
        if self.policy == OutboundPolicy::RegistryOnly {
            // Not HTTP, so not routable by the registry: refused by closing the connection
            // at once (TCP has no way to say more).
            event.decision = "deny";
            event.reason =
                Some("not HTTP to a mesh service, and the outbound policy is registry-only".into());
            self.audit.record(&event);
            return;
        }
        let upstream = match crate::net::connect_described(destination, "the destination").await {
            Ok(tcp) => tcp,
            Err(reason) => {
                event.decision = "error";
                event.reason = Some(reason);
                self.audit.record(&event);
                return;
            }
        };
        event.decision = "passthrough";
        self.audit.record(&event);
        crate::net::pipe(app, upstream).await;
    }
}
