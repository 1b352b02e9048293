//! The inbound path: what reaches the application through its sidecar.
//!
//! accept -> TLS with a required client certificate (verified against the trust bundle; one
//! SPIFFE ID or no handshake) -> HTTP/1.1 or HTTP/2 (limits on headers, streams, resets and
//! slow clients) -> method and path checks (400) -> authorization (403, default deny) ->
//! identity headers (the caller's `x-forwarded-client-cert` and `x-palisade-*` are dropped,
//! ours is set) -> the application over plain HTTP/1.1 on loopback, bodies streamed both
//! ways. Every request leaves one audit line and is counted.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use palisade_contract::SpiffeId;
use palisade_contract::path::{PathOptions, normalize};
use palisade_contract::policy::{
    Authenticator, PolicySet, Request as AuthzRequest, Verdict, Workload,
};
use palisade_contract::tls::{ClientAuth, peer_spiffe_id, server_config};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::audit::{AuditEvent, AuditLog, now_rfc3339};
use crate::forwarding::{
    ProxyBody, local_response, request_id, strip_hop_by_hop, strip_identity_headers,
};
use crate::identity::IdentityManager;
use crate::metrics::HttpMetrics;

/// Limits on what a peer may send; each is a flag of the sidecar.
#[derive(Debug, Clone)]
pub struct Limits {
    /// TLS handshake, and then each request's headers (HTTP/1), must arrive within this.
    pub header_timeout: Duration,
    /// Largest HTTP/1 request head, and HTTP/2 header list, in bytes.
    pub max_header_bytes: usize,
    /// Most HTTP/2 streams open at once on one connection.
    pub max_streams: u32,
    /// Most connections open at once; more wait in the kernel's accept queue.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            max_header_bytes: 64 * 1024,
            max_streams: 256,
            max_connections: 10_000,
        }
    }
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
    client: Client<HttpConnector, Incoming>,
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
    ) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .timer(TokioTimer::new())
            .build(connector);
        Self {
            identity,
            policies,
            service,
            app,
            audit,
            metrics,
            path_options,
            limits,
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
    let tls = Arc::new(server_config(
        inbound.identity.slot(),
        inbound.identity.bundle(),
        ClientAuth::Required,
        &[b"h2", b"http/1.1"],
    ));
    let acceptor = TlsAcceptor::from(tls);
    let connections = Arc::new(tokio::sync::Semaphore::new(inbound.limits.max_connections));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(inbound.limits.header_timeout)
        .max_buf_size(inbound.limits.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(inbound.limits.max_streams)
        .max_header_list_size(inbound.limits.max_header_bytes as u32)
        .max_pending_accept_reset_streams(Some(64))
        .max_local_error_reset_streams(Some(256));
    let builder = Arc::new(builder);
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = connections.clone().acquire_owned() => p.expect("semaphore never closes"),
            () = &mut shutdown => return,
        };
        let (tcp, addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "inbound accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            () = &mut shutdown => return,
        };
        let _ = tcp.set_nodelay(true);
        let (acceptor, inbound, builder) = (acceptor.clone(), inbound.clone(), builder.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let handshake =
                tokio::time::timeout(inbound.limits.header_timeout, acceptor.accept(tcp)).await;
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
            let _open = inbound.metrics.open_connection("inbound");
            let peer = Arc::new(peer);
            let service = {
                let inbound = inbound.clone();
                service_fn(move |req| {
                    let (inbound, peer) = (inbound.clone(), peer.clone());
                    async move { Ok::<_, Infallible>(inbound.handle(&peer, req).await) }
                })
            };
            if let Err(e) = builder.serve_connection(TokioIo::new(tls), service).await {
                tracing::debug!(peer = %addr, error = %e, "inbound connection ended with an error");
            }
        });
    }
}

impl Inbound {
    async fn handle(&self, peer: &SpiffeId, req: Request<Incoming>) -> Response<ProxyBody> {
        let started = Instant::now();
        let request_id = request_id();
        let own = self.identity.spiffe_id();
        let service = self
            .service
            .clone()
            .or_else(|| {
                own.as_ref()
                    .and_then(|id| id.namespace_and_service_account())
                    .map(|(_, sa)| sa.to_owned())
            })
            .unwrap_or_default();
        let mut event = AuditEvent {
            time: now_rfc3339(),
            request_id: request_id.clone(),
            decision: "error",
            direction: "inbound",
            source: Some(peer.to_string()),
            request_principal: None,
            destination_service: service,
            destination: own.as_ref().map(ToString::to_string).unwrap_or_default(),
            protocol: if req.version() == Version::HTTP_2 {
                "http2"
            } else {
                "http1"
            },
            method: req.method().as_str().chars().take(32).collect(),
            path: String::new(),
            status: 0,
            policy: None,
            rule: None,
            policy_version: self.policies.load().authorization.version(),
            reason: None,
            dry_run: Vec::new(),
            audit_policy: None,
        };
        let response = self
            .decide_and_forward(peer, own.as_ref(), req, &request_id, &mut event)
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
        req: Request<Incoming>,
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

        let (own_ns, port) = match own.and_then(SpiffeId::namespace) {
            Some(ns) => (ns, self.app.port()),
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
        event.request_principal = end_user.as_ref().map(|u| u.principal.clone());
        let decision = policies.authorization.evaluate(
            &workload,
            &AuthzRequest {
                source: Some(peer),
                request_principal: end_user.as_ref().map(|u| u.principal.as_str()),
                claims: end_user.as_ref().map(|u| &u.claims),
                method: req.method().as_str(),
                path: &target.path,
                port,
                headers: req.headers(),
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
            .authority(self.app.to_string())
            .path_and_query(target.to_target())
            .build()
        {
            Ok(uri) => uri,
            Err(_) => {
                return local_response(StatusCode::BAD_REQUEST, "bad request: target", request_id);
            }
        };
        parts.version = Version::HTTP_11;
        strip_hop_by_hop(&mut parts.headers);
        strip_identity_headers(&mut parts.headers);
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
                tracing::warn!(app = %self.app, error = %e, "the application did not answer");
                event.reason = Some("the application did not answer".into());
                local_response(StatusCode::BAD_GATEWAY, "upstream unavailable", request_id)
            }
        }
    }
}
