//! The inbound path: what reaches the application through its sidecar.
//!
//! accept -> TLS with a required client certificate (verified against the trust bundle; one
//! SPIFFE ID or no handshake) -> HTTP/1.1 or HTTP/2 (limits on headers, streams, resets and
//! slow clients) -> method and path checks (400) -> authorization (403, default deny) ->
//! identity headers (the caller's `x-forwarded-client-cert` and `x-palisade-*` are dropped,
//! ours is set) -> the application over plain HTTP/1.1 on loopback, bodies streamed both
//! ways. Every request leaves one audit line and is counted.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::{Body as _, Incoming};
use palisade_contract::SpiffeId;
use palisade_contract::path::{PathOptions, normalize};
use palisade_contract::policy::{
    Authenticator, PolicySet, Request as AuthzRequest, Verdict, Workload,
};
use palisade_contract::process::accept;
use palisade_contract::tls::{ClientAuth, peer_spiffe_id, server_config};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::audit::{AuditEvent, AuditLog};
use crate::config::UnderscoreHeaders;
use crate::forwarding::{
    ProxyBody, canonical_framing, framing_refusal, local_response, strip_hop_by_hop,
    strip_identity_headers, underscore_headers, unsupported,
};
use crate::identity::IdentityManager;
use crate::metrics::HttpMetrics;
use crate::server::{Limits, http_server, serve_http};
use crate::tcp;

/// The service policies select a workload by: `--service`, else its service account.
pub fn service_name(configured: Option<&str>, own: Option<&SpiffeId>) -> String {
    configured
        .map(str::to_owned)
        .or_else(|| {
            own.and_then(SpiffeId::namespace_and_service_account)
                .map(|(_, sa)| sa.to_owned())
        })
        .unwrap_or_default()
}

/// What the inbound path enforces, swapped whole when it changes.
#[derive(Debug, Default)]
pub struct Policies {
    pub authorization: PolicySet,
    pub authentication: Authenticator,
}

/// Everything the inbound path needs; shared by all connections.
pub struct Inbound {
    pub identity: Arc<IdentityManager>,
    pub policies: Arc<ArcSwap<Policies>>,
    /// The service this sidecar protects (policies select it by this name); by default the
    /// service account of its own SPIFFE ID.
    pub service: Option<String>,
    /// The application's plain-HTTP address.
    pub app: SocketAddr,
    pub audit: AuditLog,
    pub metrics: HttpMetrics,
    pub path_options: PathOptions,
    pub limits: Limits,
    /// Application ports served as opaque TCP ([`crate::tcp`]).
    pub opaque_ports: Vec<u16>,
    /// `--headers-with-underscores`.
    pub headers_with_underscores: UnderscoreHeaders,
    client: crate::forwarding::PlainClient,
}

impl std::fmt::Debug for Inbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbound")
            .field("service", &self.service)
            .field("app", &self.app)
            .finish_non_exhaustive()
    }
}

impl Inbound {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        identity: Arc<IdentityManager>,
        policies: Arc<ArcSwap<Policies>>,
        service: Option<String>,
        app: SocketAddr,
        audit: AuditLog,
        metrics: HttpMetrics,
        path_options: PathOptions,
        limits: Limits,
        opaque_ports: Vec<u16>,
        headers_with_underscores: UnderscoreHeaders,
    ) -> Self {
        let client = crate::forwarding::plain_client();
        Self {
            identity,
            policies,
            service,
            app,
            audit,
            metrics,
            path_options,
            limits,
            opaque_ports,
            headers_with_underscores,
            client,
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
    alpn.extend(inbound.opaque_ports.iter().map(|p| tcp::alpn_for(*p)));
    let alpn: Vec<&[u8]> = alpn.iter().map(Vec::as_slice).collect();
    let tls = Arc::new(server_config(
        inbound.identity.slot(),
        inbound.identity.bundle(),
        ClientAuth::Required,
        &alpn,
    ));
    let acceptor = TlsAcceptor::from(tls);
    let connections = Arc::new(tokio::sync::Semaphore::new(inbound.limits.max_connections));
    let builder = Arc::new(http_server(&inbound.limits));
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
        let first_request_by = tokio::time::Instant::now() + inbound.limits.header_timeout;
        // A connection iptables redirected here (transparent interception) was addressed
        // to an application port: requests on it go to that port.
        let asked_port = crate::transparent::original_dst(&tcp)
            .ok()
            .map(|d| d.port())
            .filter(|p| Some(*p) != own_port);
        let (acceptor, inbound, builder) = (acceptor.clone(), inbound.clone(), builder.clone());
        tokio::spawn(async move {
            let _permit = permit;
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
            if let Some(port) = tls
                .get_ref()
                .1
                .alpn_protocol()
                .and_then(tcp::port_from_alpn)
            {
                inbound.serve_opaque(&peer, port, tls).await;
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
            let limits = &inbound.limits;
            if let Err(e) = serve_http(&builder, tls, limits, first_request_by, handle).await {
                tracing::debug!(peer = %addr, error = %e, "inbound connection ended with an error");
            }
        });
    }
}

impl Inbound {
    pub(crate) fn service_name(&self, own: Option<&SpiffeId>) -> String {
        service_name(self.service.as_deref(), own)
    }

    /// `asked_port`: the application port the connection was addressed to, when it was
    /// redirected here; otherwise requests go to `--app`.
    async fn handle(
        &self,
        peer: &SpiffeId,
        asked_port: Option<u16>,
        req: Request<Incoming>,
    ) -> Response<ProxyBody> {
        let started = Instant::now();
        let own = self.identity.spiffe_id();
        let service = self.service_name(own.as_ref());
        let mut event = AuditEvent::begin(
            "inbound",
            if req.version() == Version::HTTP_2 {
                "http2"
            } else {
                "http1"
            },
        );
        event.source = Some(peer.to_string());
        event.destination_service = service;
        event.destination = own.as_ref().map(ToString::to_string).unwrap_or_default();
        event.method = req.method().as_str().chars().take(32).collect();
        event.policy_version = self.policies.load().authorization.version();
        let request_id = event.request_id.clone();
        let response = self
            .decide_and_forward(peer, own.as_ref(), asked_port, req, &request_id, &mut event)
            .await;
        event.status = response.status().as_u16();
        self.metrics.request(
            "inbound",
            peer.as_str(),
            event.decision,
            event.status,
            started.elapsed(),
        );
        self.audit.record(&event);
        response
    }

    async fn decide_and_forward(
        &self,
        peer: &SpiffeId,
        own: Option<&SpiffeId>,
        asked_port: Option<u16>,
        mut req: Request<Incoming>,
        request_id: &str,
        event: &mut AuditEvent,
    ) -> Response<ProxyBody> {
        // Methods are case-sensitive tokens; a lower-case "get" is not GET and would slip
        // past rules written for GET.
        if !req
            .method()
            .as_str()
            .bytes()
            .all(|b| b.is_ascii_uppercase())
        {
            event.reason = Some("method is not an upper-case token".into());
            return local_response(
                StatusCode::BAD_REQUEST,
                "bad request: invalid method",
                request_id,
            );
        }
        if let Some(why) = unsupported(&req) {
            event.reason = Some(why.into());
            return local_response(StatusCode::NOT_IMPLEMENTED, why, request_id);
        }
        if let Some(refusal) = framing_refusal(&req, request_id, event) {
            return refusal;
        }
        // Before anything reads the headers, so authorization sees what the application will.
        if let Err(why) = underscore_headers(req.headers_mut(), self.headers_with_underscores) {
            event.reason = Some(why.clone());
            return local_response(
                StatusCode::BAD_REQUEST,
                &format!("bad request: {why}"),
                request_id,
            );
        }
        let raw_target = req
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        let target = match normalize(&raw_target, self.path_options) {
            Ok(t) => t,
            Err(e) => {
                event.path = raw_target.chars().take(256).collect();
                event.reason = Some(e.to_string());
                return local_response(
                    StatusCode::BAD_REQUEST,
                    &format!("bad request: {e}"),
                    request_id,
                );
            }
        };
        event.path = target.path.clone();

        let app = SocketAddr::new(self.app.ip(), asked_port.unwrap_or(self.app.port()));
        let (own_ns, port) = match own.and_then(SpiffeId::namespace) {
            Some(ns) => (ns, app.port()),
            None => {
                event.reason = Some("the sidecar has no identity".into());
                return local_response(StatusCode::SERVICE_UNAVAILABLE, "no identity", request_id);
            }
        };
        let policies = self.policies.load();
        let workload = Workload {
            namespace: own_ns,
            service: &event.destination_service,
        };
        // End-user authentication first: a token that is present must be valid (401, as
        // Envoy's jwt_authn answers); a missing one is left to authorization to judge.
        let end_user = match policies
            .authentication
            .authenticate(&workload, req.headers())
        {
            Ok(user) => user,
            Err(e) => {
                event.decision = "unauthenticated";
                event.reason = Some(format!("end-user token refused: {e}"));
                let mut response = local_response(
                    StatusCode::UNAUTHORIZED,
                    "Jwt verification fails",
                    request_id,
                );
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer error=\"invalid_token\""),
                );
                return response;
            }
        };
        let token_headers = policies.authentication.token_headers(&workload);
        event.request_principal = end_user.as_ref().map(|u| u.principal.clone());
        let policy_path = target.policy_path();
        let decision = policies.authorization.evaluate(
            &workload,
            &AuthzRequest {
                source: Some(peer),
                request_principal: end_user.as_ref().map(|u| u.principal.as_str()),
                claims: end_user.as_ref().map(|u| &u.claims),
                method: req.method().as_str(),
                path: &policy_path,
                port,
                headers: req.headers(),
                l4: false,
                amqp: None,
            },
        );
        event.apply_decision(&decision);
        self.metrics.decision(&decision);
        if decision.verdict == Verdict::Deny {
            return local_response(StatusCode::FORBIDDEN, "RBAC: access denied", request_id);
        }

        let (mut parts, body) = req.into_parts();
        let authority = parts.uri.authority().map(|a| a.as_str().to_owned());
        parts.uri = match Uri::builder()
            .scheme("http")
            .authority(app.to_string())
            .path_and_query(target.to_target())
            .build()
        {
            Ok(uri) => uri,
            Err(_) => {
                return local_response(StatusCode::BAD_REQUEST, "bad request: target", request_id);
            }
        };
        parts.version = Version::HTTP_11;
        canonical_framing(&mut parts.headers, body.size_hint().exact());
        strip_hop_by_hop(&mut parts.headers);
        strip_identity_headers(&mut parts.headers, &token_headers);
        if let Some(name) = end_user.as_ref().and_then(|u| u.strip_header.as_ref()) {
            parts.headers.remove(name);
        }
        if !parts.headers.contains_key(header::HOST)
            && let Some(v) = authority.and_then(|a| HeaderValue::from_str(&a).ok())
        {
            parts.headers.insert(header::HOST, v);
        }
        let xfcc = format!(
            "By={};URI={peer}",
            own.map(ToString::to_string).unwrap_or_default()
        );
        if let Ok(v) = HeaderValue::from_str(&xfcc) {
            parts.headers.insert("x-forwarded-client-cert", v);
        }
        if let Ok(v) = HeaderValue::from_str(request_id) {
            parts.headers.insert("x-request-id", v);
        }
        match self.client.request(Request::from_parts(parts, body)).await {
            Ok(response) => {
                let (mut parts, body) = response.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                Response::from_parts(parts, body.boxed())
            }
            Err(e) => {
                tracing::warn!(%app, error = %e, "the application did not answer");
                event.reason = Some("the application did not answer".into());
                local_response(StatusCode::BAD_GATEWAY, "upstream unavailable", request_id)
            }
        }
    }
}
