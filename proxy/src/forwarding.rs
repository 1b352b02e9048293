//! What every HTTP message the sidecar forwards goes through, in either direction: hop-by-hop
//! headers removed (they describe one connection, not the message), identity headers a caller
//! could forge removed, and the responses the sidecar makes itself (400, 403, 502...).

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};

/// `--headers-with-underscores`: what the inbound sidecar does with a request header whose
/// name holds `_` (Envoy's `headers_with_underscores_action`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum UnderscoreHeaders {
    /// Removed before authorization and forwarding (nginx's default,
    /// `underscores_in_headers off`): CGI, WSGI and Rack servers read `x_user` and `x-user`
    /// as one name, so such a header could stand in for one the sidecar checked or set.
    #[default]
    Drop,
    /// The request is refused with 400.
    Reject,
    /// Forwarded. Even then, any spelling of a header the sidecar sets or strips (identity
    /// headers, the end-user token's header) is removed.
    Allow,
}

pub type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// A pooled plain HTTP/1.1 client (no TLS).
pub(crate) type PlainClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    hyper::body::Incoming,
>;

/// The client for plain HTTP: the inbound sidecar's to its application, and the outbound
/// sidecar's to destinations outside the mesh on intercepted connections.
pub(crate) fn plain_client(connect_timeout: std::time::Duration) -> PlainClient {
    let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(connect_timeout));
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

/// Whether `name` is a header a caller must not get through to the application: in any
/// spelling, one the sidecar sets (`x-forwarded-client-cert`, `x-palisade-*`); and any other
/// spelling of a header end-user tokens are read from (`token_headers`), which the sidecar
/// never verifies. Spellings: HTTP names are case-insensitive (the `http` crate stores them
/// in lower case), and CGI-style servers read `_` as `-`, so both are folded.
fn is_forged_header(name: &str, token_headers: &[HeaderName]) -> bool {
    if !name.contains('_') && !name.starts_with("x-") {
        return false;
    }
    // Byte by byte with `_` read as `-`: this runs for every header of every request.
    let folded = |b: u8| if b == b'_' { b'-' } else { b };
    let same = |a: &str, b: &str| {
        a.len() == b.len() && a.bytes().zip(b.bytes()).all(|(x, y)| folded(x) == y)
    };
    let prefix = "x-palisade-";
    same(name, "x-forwarded-client-cert")
        || (name.len() >= prefix.len() && same(&name[..prefix.len()], prefix))
        || token_headers
            .iter()
            .any(|t| name != t.as_str() && same(name, t.as_str()))
}

/// Drops identity headers a caller might forge, in every spelling, and respellings of the
/// headers end-user tokens come in (`token_headers`).
pub fn strip_identity_headers(headers: &mut HeaderMap, token_headers: &[HeaderName]) {
    let forged: Vec<HeaderName> = headers
        .keys()
        .filter(|k| is_forged_header(k.as_str(), token_headers))
        .cloned()
        .collect();
    for name in forged {
        headers.remove(name);
    }
}

/// Applies `--headers-with-underscores` to a request: `Err` names the header when the
/// request is to be refused (400).
pub fn underscore_headers(
    headers: &mut HeaderMap,
    action: UnderscoreHeaders,
) -> Result<(), String> {
    use UnderscoreHeaders as U;
    if action == U::Allow {
        return Ok(());
    }
    let named: Vec<HeaderName> = headers
        .keys()
        .filter(|k| k.as_str().contains('_'))
        .cloned()
        .collect();
    if let (U::Reject, Some(first)) = (action, named.first()) {
        return Err(format!(
            "header name {:?} holds an underscore",
            first.as_str().chars().take(64).collect::<String>()
        ));
    }
    for name in named {
        headers.remove(name);
    }
    Ok(())
}

/// How a request's body is framed, checked before anything else reads it (RFC 9112,
/// section 6). hyper decodes `chunked` and ignores any other coding, and keeps the
/// `Content-Length` text as the client wrote it; forwarded as it was, a backend could
/// read another body length than the sidecar did, or a compressed body as plain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Framing {
    /// The body's framing is unambiguous; what to forward is decided by [`canonical_framing`].
    Ok,
    /// 400: framing that two readers could take differently.
    Ambiguous(&'static str),
    /// 501: a transfer coding the sidecar does not implement.
    UnsupportedCoding,
}

/// Checks `Transfer-Encoding` and `Content-Length` as received.
pub fn check_framing(headers: &HeaderMap) -> Framing {
    let mut codings = Vec::new();
    for line in headers.get_all(header::TRANSFER_ENCODING) {
        let Ok(line) = line.to_str() else {
            return Framing::Ambiguous("unreadable Transfer-Encoding");
        };
        for coding in line.split(',').map(str::trim) {
            if coding.is_empty() {
                continue;
            }
            codings.push(coding.to_ascii_lowercase());
        }
    }
    if headers.contains_key(header::TRANSFER_ENCODING) {
        if codings.is_empty() {
            return Framing::Ambiguous("empty Transfer-Encoding");
        }
        if codings.iter().any(|c| c == "identity") {
            return Framing::Ambiguous("Transfer-Encoding: identity is obsolete");
        }
        if codings.iter().filter(|c| *c == "chunked").count() > 1 {
            return Framing::Ambiguous("Transfer-Encoding names chunked more than once");
        }
        if codings.last().map(String::as_str) != Some("chunked") {
            return Framing::Ambiguous("Transfer-Encoding must end with chunked");
        }
        if codings.len() > 1 {
            return Framing::UnsupportedCoding;
        }
    }
    let lengths: Vec<&HeaderValue> = headers.get_all(header::CONTENT_LENGTH).iter().collect();
    if !lengths.is_empty() && headers.contains_key(header::TRANSFER_ENCODING) {
        return Framing::Ambiguous("both Transfer-Encoding and Content-Length");
    }
    let mut length = None;
    for line in lengths {
        for value in line.as_bytes().split(|b| *b == b',') {
            let value = value.trim_ascii();
            if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
                return Framing::Ambiguous("Content-Length is not a number");
            }
            let parsed = std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.parse::<u64>().ok());
            match (length, parsed) {
                (_, None) => return Framing::Ambiguous("Content-Length is too large"),
                (Some(a), Some(b)) if a != b => {
                    return Framing::Ambiguous("Content-Length values differ");
                }
                (_, Some(b)) => length = Some(b),
            }
        }
    }
    Framing::Ok
}

/// Rewrites the framing headers of a checked request into one canonical form for the next
/// hop: `Content-Length` as a plain decimal of the length hyper read (no leading zeros, no
/// repeats), or none, in which case the client side frames the body itself (chunked).
pub fn canonical_framing(headers: &mut HeaderMap, exact_length: Option<u64>) {
    let had_length = headers.remove(header::CONTENT_LENGTH).is_some();
    headers.remove(header::TRANSFER_ENCODING);
    if had_length && let Some(n) = exact_length {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
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

#[cfg(test)]
mod tests {
    use super::*;

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
        h.insert(
            "x_forwarded_client_cert",
            HeaderValue::from_static("By=evil"),
        );
        h.insert("x_palisade_publisher", HeaderValue::from_static("evil"));
        h.insert("x-jwt_assertion", HeaderValue::from_static("forged"));
        h.insert("x_kept_too", HeaderValue::from_static("yes"));
        strip_hop_by_hop(&mut h);
        h.insert(
            "x-jwt-assertion",
            HeaderValue::from_static("kept: verified elsewhere"),
        );
        let token = HeaderName::from_static("x-jwt-assertion");
        strip_identity_headers(&mut h, &[token]);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort();
        assert_eq!(left, ["x-jwt-assertion", "x-kept", "x_kept_too"]);
    }

    #[test]
    fn headers_with_underscores_are_dropped_rejected_or_allowed() {
        use UnderscoreHeaders as U;
        let headers = || {
            let mut h = HeaderMap::new();
            h.insert("x_user", HeaderValue::from_static("admin"));
            h.insert("x-user", HeaderValue::from_static("guest"));
            h
        };
        let mut h = headers();
        assert_eq!(underscore_headers(&mut h, U::Drop), Ok(()));
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["x-user"]);
        let mut h = headers();
        assert!(
            underscore_headers(&mut h, U::Reject)
                .unwrap_err()
                .contains("x_user")
        );
        let mut h = headers();
        assert_eq!(underscore_headers(&mut h, U::Allow), Ok(()));
        assert_eq!(h.len(), 2);
    }

    fn framing(lines: &[(&'static str, &'static str)]) -> Framing {
        let mut h = HeaderMap::new();
        for (name, value) in lines {
            h.append(*name, HeaderValue::from_static(value));
        }
        check_framing(&h)
    }

    #[test]
    fn framing_is_canonical_or_refused() {
        use Framing::*;
        assert_eq!(framing(&[]), Ok);
        assert_eq!(framing(&[("content-length", "3")]), Ok);
        assert_eq!(framing(&[("content-length", "0003")]), Ok);
        assert_eq!(framing(&[("content-length", "3, 3")]), Ok);
        assert_eq!(framing(&[("transfer-encoding", "chunked")]), Ok);
        assert_eq!(framing(&[("transfer-encoding", "Chunked")]), Ok);
        for ambiguous in [
            vec![
                ("transfer-encoding", "chunked"),
                ("transfer-encoding", "chunked"),
            ],
            vec![("transfer-encoding", "chunked, chunked")],
            vec![("transfer-encoding", "identity, chunked")],
            vec![("transfer-encoding", "chunked, identity")],
            vec![("transfer-encoding", "chunked, gzip")],
            vec![("transfer-encoding", "")],
            vec![("transfer-encoding", "chunked"), ("content-length", "3")],
            vec![("content-length", "3"), ("content-length", "4")],
            vec![("content-length", "3, 4")],
            vec![("content-length", "-3")],
            vec![("content-length", "+3")],
            vec![("content-length", "0x3")],
            vec![("content-length", "99999999999999999999999")],
        ] {
            assert!(matches!(framing(&ambiguous), Ambiguous(_)), "{ambiguous:?}");
        }
        assert_eq!(
            framing(&[("transfer-encoding", "gzip, chunked")]),
            UnsupportedCoding
        );
        assert_eq!(
            framing(&[
                ("transfer-encoding", "gzip"),
                ("transfer-encoding", "chunked")
            ]),
            UnsupportedCoding
        );
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0003"));
        canonical_framing(&mut h, Some(3));
        assert_eq!(h[header::CONTENT_LENGTH], "3");
        let mut h = HeaderMap::new();
        canonical_framing(&mut h, Some(0));
        assert!(
            h.is_empty(),
            "no Content-Length is added where there was none"
        );
    }
}
