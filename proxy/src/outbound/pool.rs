//! Connections to peer sidecars: TCP and mTLS to one of a service's endpoints with secure
//! naming (the peer must present the SPIFFE ID the registry names), and a pool of HTTP/2
//! connections per destination service, one per worker thread, as Envoy keeps a pool per
//! worker: with a single connection, every stream of the mesh hop went through one
//! connection task on each side, and the benchmark left a fifth of the CPU idle.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http::{HeaderMap, Method, Request, Response, Uri, Version};
use http_body_util::BodyExt as _;
use hyper::body::Body as _;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use palisade_contract::registry::ServiceEntry;
use palisade_contract::tls::{ExpectedServer, VerifyError, client_config, server_name_for};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::forwarding::ProxyBody;
use crate::server::Activity;
use crate::trust::{ConnectionTrust, Retirement, Side};

use super::{ForwardError, Outbound};

impl Outbound {
    /// TCP and then mTLS to one of `entry`'s endpoints (in turn), or, for a service listed
    /// without endpoints, to `redirected` (the address the application connected to),
    /// offering `alpn`; the server must present `entry.identity` (secure naming). With the
    /// connection comes the trust it was opened with, which it must not outlive.
    pub(crate) async fn dial(
        &self,
        entry: &ServiceEntry,
        redirected: Option<SocketAddr>,
        alpn: Vec<u8>,
    ) -> Result<(TlsStream<TcpStream>, ConnectionTrust), ForwardError> {
        let key = format!("{}/{}", entry.namespace, entry.name);
        let unreachable = |detail: String| ForwardError::Unreachable {
            service: key.clone(),
            detail,
        };
        let endpoint = if entry.endpoints.is_empty() {
            redirected.map(|a| a.to_string()).ok_or_else(|| {
                unreachable(
                    "the service lists no endpoints, so it is reachable only on intercepted \
                     connections (its address as the destination)"
                        .into(),
                )
            })?
        } else {
            let i = self.next_endpoint.fetch_add(1, Ordering::Relaxed);
            entry.endpoints[i % entry.endpoints.len()].clone()
        };
        let tcp = crate::net::connect(endpoint.as_str(), self.connect_timeout)
            .await
            .map_err(|e| unreachable(format!("{endpoint}: {e}")))?;
        // Our certificate for this handshake (or a later one, renewed meanwhile).
        let own = self.identity.slot().valid();
        let tls_config = client_config(
            Some(self.identity.slot()),
            self.identity.bundle(),
            ExpectedServer::Exact(entry.identity.clone()),
            &[alpn.as_slice()],
        );
        let tls = match tokio::time::timeout(
            self.connect_timeout,
            TlsConnector::from(Arc::new(tls_config)).connect(server_name_for(&entry.identity), tcp),
        )
        .await
        {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                self.metrics.handshake("outbound", "failure");
                return Err(match unexpected_peer(&e) {
                    Some((got, want)) => ForwardError::SecureNaming {
                        service: key,
                        want,
                        got,
                    },
                    None => unreachable(format!("{endpoint}: TLS: {e}")),
                });
            }
            Err(_) => {
                self.metrics.handshake("outbound", "timeout");
                return Err(unreachable(format!("{endpoint}: TLS handshake timed out")));
            }
        };
        self.metrics.handshake("outbound", "success");
        let trust = self.identity.connection_trust(
            own.as_deref(),
            tls.get_ref().1.peer_certificates().unwrap_or_default(),
            Side::Client,
        );
        Ok((tls, trust))
    }

    /// A live connection to `entry` (at `redirected` when it lists no endpoints), from the
    /// pool or new. Only connections whose trust is still good are handed out.
    pub(super) async fn connection(
        &self,
        entry: &ServiceEntry,
        redirected: Option<SocketAddr>,
    ) -> Result<Pooled, ForwardError> {
        let key = pool_key(entry, redirected);
        {
            let mut pool = self.pool.lock().await;
            let senders = pool.entry(key.clone()).or_default();
            senders.retain(Pooled::usable);
            if senders.len() >= self.connections_per_service {
                let i = self.next_connection.fetch_add(1, Ordering::Relaxed);
                return Ok(senders[i % senders.len()].clone());
            }
        }
        let (tls, mut trust) = self.dial(entry, redirected, b"h2".to_vec()).await?;
        let endpoint = tls
            .get_ref()
            .0
            .peer_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
            .handshake(TokioIo::new(tls))
            .await
            .map_err(|e| ForwardError::Unreachable {
                service: key.clone(),
                detail: format!("{endpoint}: HTTP/2: {e}"),
            })?;
        let open = self.metrics.open_connection("outbound");
        let retirement = Retirement::new(&trust);
        let activity = Arc::new(Activity::new());
        let pooled = Pooled {
            sender,
            retirement: retirement.clone(),
            activity: activity.clone(),
        };
        // Nine tenths of --idle-timeout: with the same setting mesh-wide, this end closes an
        // idle connection first, so the peer never closes one a request is on its way into.
        let idle_timeout = self.limits.idle_timeout.mul_f64(0.9);
        tokio::spawn(async move {
            let _open = open;
            tokio::pin!(conn);
            let ended = tokio::select! {
                ended = conn.as_mut() => ended,
                // Closed by us before the peer's idle timeout (the same flag, mesh-wide)
                // closes it under a request on its way.
                () = activity.idle_for(idle_timeout) => {
                    retirement.retire();
                    return;
                }
                lost = trust.lost() => {
                    // No new requests (the pool no longer hands it out); what is in flight
                    // gets the drain bound, then the socket is closed.
                    retirement.retire();
                    tracing::info!(target: "palisade::identity", event = "connection.drained",
                        reason = %lost, drain = ?trust.drain(),
                        "draining a mesh connection that lost its trust");
                    match tokio::time::timeout(trust.drain(), conn).await {
                        Ok(ended) => ended,
                        Err(_) => return,
                    }
                }
            };
            if let Err(e) = ended {
                tracing::debug!(error = %e, "outbound connection ended with an error");
            }
        });
        let mut pool = self.pool.lock().await;
        let senders = pool.entry(key).or_default();
        // Requests that all found the pool short dialled at once: keep what fits.
        if senders.len() < self.connections_per_service {
            senders.push(pooled.clone());
        }
        Ok(pooled)
    }
}

impl Outbound {
    /// Sends `request` over a pooled connection to `entry`. A request the peer certainly
    /// did not process is sent once more over another connection, as Envoy and Linkerd do:
    /// one the connection never took (it was closing: idle timeout, drain, a broken
    /// socket), one refused with `REFUSED_STREAM`, and, when it has no body and an
    /// idempotent method (RFC 9110 §9.2.2), one failed by the peer's GOAWAY (h2 reports a
    /// stream above the GOAWAY's last stream id the same way as one cut below it, so only a
    /// request that may be repeated is).
    pub(super) async fn send_pooled(
        &self,
        entry: &ServiceEntry,
        redirected: Option<SocketAddr>,
        request: Request<ProxyBody>,
    ) -> Result<Response<ProxyBody>, ForwardError> {
        let replay = Replay::of(&request);
        let mut request = request;
        let mut retried = false;
        loop {
            let mut pooled = self.connection(entry, redirected).await?;
            let busy = pooled.activity.begin_ours();
            let (error, unsent) = match pooled.sender.ready().await {
                Err(e) => (e, Some(request)),
                Ok(()) => match pooled.sender.try_send_request(request).await {
                    Ok(response) => {
                        // In flight until its body has been read or dropped.
                        return Ok(response.map(|body| {
                            body.map_frame(move |frame| {
                                let _ = &busy;
                                frame
                            })
                            .boxed()
                        }));
                    }
                    Err(mut e) => {
                        let unsent = e.take_message();
                        (e.into_error(), unsent)
                    }
                },
            };
            let again = match (unsent, refusal(&error)) {
                (Some(unsent), _) => {
                    pooled.retirement.retire();
                    Some(unsent)
                }
                (None, Some(Refusal::Stream)) => {
                    // Often a peer at its stream limit or on its way out: a fresh connection.
                    pooled.retirement.retire();
                    replay.as_ref().map(Replay::request)
                }
                (None, Some(Refusal::GoAway)) => {
                    pooled.retirement.retire();
                    replay
                        .as_ref()
                        .filter(|r| r.method.is_idempotent())
                        .map(Replay::request)
                }
                (None, None) => None,
            };
            match again {
                Some(next) if !retried => {
                    tracing::debug!(service = %entry.name, error = %error,
                        "the peer did not take the request; sending it once more");
                    retried = true;
                    request = next;
                }
                _ => {
                    return Err(ForwardError::Unreachable {
                        service: entry.name.clone(),
                        detail: error.to_string(),
                    });
                }
            }
        }
    }
}

/// How a peer said it did not process a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// `RST_STREAM(REFUSED_STREAM)`: never processed (RFC 9113 §8.7).
    Stream,
    /// The peer's GOAWAY ended the stream.
    GoAway,
}

fn refusal(error: &hyper::Error) -> Option<Refusal> {
    let mut source = std::error::Error::source(error);
    while let Some(e) = source {
        if let Some(h2) = e.downcast_ref::<h2::Error>() {
            return match (h2.is_remote(), h2.is_reset(), h2.is_go_away(), h2.reason()) {
                (true, true, _, Some(h2::Reason::REFUSED_STREAM)) => Some(Refusal::Stream),
                (true, _, true, _) => Some(Refusal::GoAway),
                _ => None,
            };
        }
        source = e.source();
    }
    None
}

/// A request without a body, kept to be sent again.
#[derive(Debug)]
struct Replay {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
}

impl Replay {
    /// Only a request whose body is known to be empty can be rebuilt once it was sent.
    fn of(request: &Request<ProxyBody>) -> Option<Self> {
        request.body().is_end_stream().then(|| Self {
            method: request.method().clone(),
            uri: request.uri().clone(),
            version: request.version(),
            headers: request.headers().clone(),
        })
    }

    fn request(&self) -> Request<ProxyBody> {
        let mut request = Request::new(crate::forwarding::full(bytes::Bytes::new()));
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        *request.version_mut() = self.version;
        *request.headers_mut() = self.headers.clone();
        request
    }
}

/// A pooled HTTP/2 connection: its sender, and whether its trust still lets it take new
/// requests.
#[derive(Debug, Clone)]
pub(crate) struct Pooled {
    pub sender: SendRequest<ProxyBody>,
    pub retirement: Arc<Retirement>,
    /// The requests in flight on it (until their response bodies end), for the idle close.
    pub activity: Arc<Activity>,
}

impl Pooled {
    /// Open, and not retired (its trust holds, and no request found it refusing work).
    pub fn usable(&self) -> bool {
        !self.sender.is_closed() && self.retirement.usable()
    }
}

/// The pool a connection to `entry` belongs to: per service, and per address for a
/// service reached at its intercepted destination (each port of it is its own pool).
pub(super) fn pool_key(entry: &ServiceEntry, redirected: Option<SocketAddr>) -> String {
    match redirected {
        Some(addr) if entry.endpoints.is_empty() => {
            format!("{}/{}@{addr}", entry.namespace, entry.name)
        }
        _ => format!("{}/{}", entry.namespace, entry.name),
    }
}

/// `(presented, expected)` when a TLS error is a secure-naming mismatch.
fn unexpected_peer(e: &std::io::Error) -> Option<(String, String)> {
    let inner = e.get_ref()?.downcast_ref::<rustls::Error>()?;
    let rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other)) = inner else {
        return None;
    };
    match other.0.downcast_ref::<VerifyError>()? {
        VerifyError::UnexpectedPeer { got, want } => Some((got.clone(), want.clone())),
        _ => None,
    }
}
