//! What every HTTP message the sidecar forwards goes through, in either direction: hop-by-hop
//! headers removed (they describe one connection, not the message), identity headers a caller
//! could forge removed, and the responses the sidecar makes itself (400, 403, 502...).

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};

pub type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// A pooled plain HTTP/1.1 client (no TLS).
pub(crate) type PlainClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    hyper::body::Incoming,
>;

/// The client for plain HTTP: the inbound sidecar's to its application, and the outbound
/// sidecar's to destinations outside the mesh on intercepted connections.
pub(crate) fn plain_client() -> PlainClient {
    let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(std::time::Duration::from_secs(5)));
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_idle_timeout(std::time::Duration::from_secs(90))
        .timer(hyper_util::rt::TokioTimer::new())
        .build(connector)
}

const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Drops hop-by-hop headers, including those a `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
}

/// Drops identity headers a caller might forge.
pub fn strip_identity_headers(headers: &mut HeaderMap) {
    let forged: Vec<HeaderName> = headers
        .keys()
        .filter(|k| {
            k.as_str() == "x-forwarded-client-cert" || k.as_str().starts_with("x-palisade-")
        })
        .cloned()
        .collect();
    for name in forged {
        headers.remove(name);
    }
}

/// Why the sidecar cannot carry this request, if it cannot: HTTP/1.1 upgrades (WebSocket...)
/// and CONNECT tunnels are not proxied yet. They are refused with 501 rather than passed on
/// without their `Upgrade` header, which would leave the client waiting for a 101 that can
/// never come.
pub fn unsupported(req: &http::Request<impl Sized>) -> Option<&'static str> {
    if req.method() == http::Method::CONNECT {
        return Some("CONNECT is not supported; use an opaque TCP port (--tcp-outbound)");
    }
    if req.headers().contains_key(header::UPGRADE) {
        return Some("HTTP upgrades (e.g. WebSocket) are not supported; use an opaque TCP port");
    }
    None
}

pub fn full(body: impl Into<Bytes>) -> ProxyBody {
    Full::new(body.into())
        .map_err(|never| match never {})
        .boxed()
}

/// A response the sidecar makes itself (400, 403, 502...).
pub fn local_response(status: StatusCode, body: &str, request_id: &str) -> Response<ProxyBody> {
    let mut response = Response::new(full(format!("{body}\n")));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    if let Ok(v) = HeaderValue::from_str(request_id) {
        headers.insert("x-request-id", v);
    }
    response
}

/// A request id unique across the mesh: 64 random bits drawn once per process, then a
/// counter (24 hex digits, the shape ids always had). Ids correlate log lines; they are
/// not secrets, so one system call per process instead of one per request (which the
/// profile showed on every request) loses nothing.
pub fn request_id() -> String {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};
    static PREFIX: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = *PREFIX.get_or_init(|| {
        use ring::rand::{SecureRandom, SystemRandom};
        let mut b = [0u8; 8];
        let _ = SystemRandom::new().fill(&mut b);
        u64::from_be_bytes(b)
    });
    // Every 2^32 requests the prefix moves on by one, so no id repeats in a process.
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{:016x}{:08x}", prefix.wrapping_add(n >> 32), n as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_24_hex_digits_and_never_repeat() {
        let ids: Vec<String> = (0..1000).map(|_| request_id()).collect();
        for id in &ids {
            assert_eq!(id.len(), 24, "{id}");
            assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
        }
        let distinct: std::collections::HashSet<&String> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len());
    }

    #[test]
    fn hop_by_hop_and_forged_identity_headers_are_dropped() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(
            "x-forwarded-client-cert",
            HeaderValue::from_static("By=evil"),
        );
        h.insert(
            "x-palisade-publisher",
            HeaderValue::from_static("spiffe://evil"),
        );
        h.insert("x-kept", HeaderValue::from_static("yes"));
        strip_hop_by_hop(&mut h);
        strip_identity_headers(&mut h);
        let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["x-kept"]);
    }
}
