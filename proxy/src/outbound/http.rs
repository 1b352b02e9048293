//! One HTTP request from the application: resolve its host in the registry, then forward it
//! over a pooled mTLS connection to the destination's sidecar (HTTP/2), or, for an
//! intercepted connection to a destination outside the registry, as plain HTTP to where it
//! was going (unless the outbound policy is registry-only). One audit line per request.

use std::net::SocketAddr;
use std::time::Instant;

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::{Body as _, Incoming};

use crate::audit::AuditEvent;
use crate::config::OutboundPolicy;
use crate::forwarding::{
    ProxyBody, canonical_framing, framing_refusal, local_response, strip_hop_by_hop, unsupported,
};

use super::pool::pool_key;
use super::{ForwardError, Outbound};

impl Outbound {
    /// `redirected`: the original destination, when the pod's interception rules sent
    /// this connection here.
    pub(super) async fn handle(
        &self,
        req: Request<Incoming>,
        redirected: Option<SocketAddr>,
    ) -> Response<ProxyBody> {
        let started = Instant::now();
        let own = self.identity.spiffe_id();
        let mut event = AuditEvent::begin(
            "outbound",
            if req.version() == Version::HTTP_2 {
                "http2"
            } else {
                "http1"
            },
        );
        event.source = own.as_ref().map(ToString::to_string);
        event.method = req.method().as_str().chars().take(32).collect();
        event.path = req.uri().path().chars().take(256).collect();
        let request_id = event.request_id.clone();
        if let Some(refusal) = framing_refusal(&req, &request_id, &mut event) {
            event.status = refusal.status().as_u16();
            self.metrics.request(
                "outbound",
                "",
                event.decision,
                event.status,
                started.elapsed(),
            );
            self.audit.record(&event);
            return refusal;
        }
        let response = match self
            .forward(
                req,
                own.as_ref().and_then(|id| id.namespace()),
                redirected,
                &mut event,
            )
            .await
        {
            Ok(r) => {
                if event.decision == "error" {
                    event.decision = "forward";
                }
                r
            }
            Err(e) => {
                if matches!(e, ForwardError::SecureNaming { .. }) {
                    tracing::warn!(target: "palisade::audit", error = %e, "secure naming violation");
                }
                event.reason = Some(e.to_string());
                local_response(
                    match e {
                        ForwardError::Unsupported(_) => StatusCode::NOT_IMPLEMENTED,
                        ForwardError::OutsideRegistry(_) => {
                            event.decision = "deny";
                            StatusCode::FORBIDDEN
                        }
                        _ => StatusCode::BAD_GATEWAY,
                    },
                    &format!("palisade: {e}"),
                    &request_id,
                )
            }
        };
        event.status = response.status().as_u16();
        let peer = event.destination.clone();
        self.metrics.request(
            "outbound",
            &peer,
            event.decision,
            event.status,
            started.elapsed(),
        );
        self.audit.record(&event);
        response
    }

    async fn forward(
        &self,
        req: Request<Incoming>,
        own_namespace: Option<&str>,
        redirected: Option<SocketAddr>,
        event: &mut AuditEvent,
    ) -> Result<Response<ProxyBody>, ForwardError> {
        if let Some(why) = unsupported(&req) {
            return Err(ForwardError::Unsupported(why));
        }
        let host = req
            .uri()
            .authority()
            .map(|a| a.as_str().to_owned())
            .or_else(|| {
                req.headers()
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(str::to_owned)
            })
            .ok_or(ForwardError::NoHost)?;
        let resolved = self
            .registry
            .load()
            .resolve(&host, own_namespace.unwrap_or_default());
        let entry = match (resolved, redirected) {
            (Some(entry), _) => entry,
            // Not a mesh service, on an intercepted connection: where the application was
            // going anyway (as Istio's ALLOW_ANY outbound mode), unless refused.
            (None, Some(destination)) => {
                if self.policy == OutboundPolicy::RegistryOnly {
                    event.destination = destination.to_string();
                    return Err(ForwardError::OutsideRegistry(
                        host.chars().take(253).collect(),
                    ));
                }
                return self.forward_plain(req, destination, event).await;
            }
            (None, None) => {
                return Err(ForwardError::UnknownService(
                    host.chars().take(253).collect(),
                ));
            }
        };
        event.destination_service = entry.name.clone();
        event.destination = entry.identity.to_string();
        let mut sender = self.connection(&entry, redirected).await?;
        let (mut parts, body) = req.into_parts();
        canonical_framing(&mut parts.headers, body.size_hint().exact());
        retarget(&mut parts, "https", &host, Version::HTTP_2)?;
        parts.headers.remove(header::HOST);
        if let Ok(v) = HeaderValue::from_str(&event.request_id) {
            parts.headers.entry("x-request-id").or_insert(v);
        }
        let request = Request::from_parts(parts, body.boxed());
        let sent = async {
            sender.ready().await?;
            sender.send_request(request).await
        };
        match sent.await {
            Ok(response) => {
                let (mut parts, body) = response.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                parts.version = Version::HTTP_11;
                Ok(Response::from_parts(parts, body.boxed()))
            }
            Err(e) => {
                // A pooled connection is broken: forget it so the next request reconnects.
                if let Some(senders) = self
                    .pool
                    .lock()
                    .await
                    .get_mut(&pool_key(&entry, redirected))
                {
                    senders.retain(|s| !s.is_closed());
                }
                Err(ForwardError::Unreachable {
                    service: entry.name.clone(),
                    detail: e.to_string(),
                })
            }
        }
    }

    /// Plain HTTP to `destination`, outside the mesh, with the request's own `Host`.
    async fn forward_plain(
        &self,
        req: Request<Incoming>,
        destination: SocketAddr,
        event: &mut AuditEvent,
    ) -> Result<Response<ProxyBody>, ForwardError> {
        event.decision = "passthrough";
        event.destination = destination.to_string();
        let (mut parts, body) = req.into_parts();
        canonical_framing(&mut parts.headers, body.size_hint().exact());
        if let Some(authority) = parts.uri.authority().cloned()
            && let Ok(v) = HeaderValue::from_str(authority.as_str())
        {
            parts.headers.insert(header::HOST, v);
        }
        retarget(
            &mut parts,
            "http",
            &destination.to_string(),
            Version::HTTP_11,
        )?;
        match self.plain.request(Request::from_parts(parts, body)).await {
            Ok(response) => {
                let (mut parts, body) = response.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                Ok(Response::from_parts(parts, body.boxed()))
            }
            Err(e) => {
                event.decision = "error";
                Err(ForwardError::Unreachable {
                    service: destination.to_string(),
                    detail: e.to_string(),
                })
            }
        }
    }
}

/// Points a request at `scheme://authority` (same path and query) for the next hop's
/// protocol version, without this hop's hop-by-hop headers.
fn retarget(
    parts: &mut http::request::Parts,
    scheme: &str,
    authority: &str,
    version: Version,
) -> Result<(), ForwardError> {
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    parts.uri = Uri::builder()
        .scheme(scheme)
        .authority(authority)
        .path_and_query(path)
        .build()
        .map_err(|_| ForwardError::NoHost)?;
    parts.version = version;
    strip_hop_by_hop(&mut parts.headers);
    Ok(())
}
