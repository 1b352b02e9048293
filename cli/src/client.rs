//! A small client for the administration API: JSON in and out, and errors a person can act
//! on (unreachable server, bad credentials, missing role, refused input).

use bytes::Bytes;
use http::{Method, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Usage(String),
    #[error(
        "cannot reach the control plane at {server}: {detail} (is it running? check --server / PALISADE_SERVER)"
    )]
    Unreachable { server: String, detail: String },
    #[error("not authenticated: {0} (pass --token-file or set PALISADE_TOKEN)")]
    Unauthenticated(String),
    #[error("permission denied: {0}")]
    Forbidden(String),
    #[error("{status}: {message}")]
    Refused { status: StatusCode, message: String },
}

pub struct ApiClient {
    base: String,
    token: Option<String>,
    http: Client<HttpConnector, Full<Bytes>>,
    /// For `https://` servers (the control plane with `--admin-tls`).
    tls: Option<Tls>,
}

/// mTLS to the control plane's admin port: its certificate must name the control plane's
/// SPIFFE ID under the bundle's roots; ours, when given, is an operator's mesh certificate.
#[derive(Clone)]
pub struct Tls {
    config: std::sync::Arc<rustls::ClientConfig>,
    server_name: rustls::pki_types::ServerName<'static>,
    addr: String,
}

/// Where the TLS material comes from (flags).
pub struct TlsFiles<'a> {
    pub ca_bundle: Option<&'a std::path::Path>,
    pub cert: Option<&'a std::path::Path>,
    pub key: Option<&'a std::path::Path>,
    pub trust_domain: &'a str,
}

fn read(path: &std::path::Path, flag: &str) -> Result<Vec<u8>, ApiError> {
    std::fs::read(path)
        .map_err(|e| ApiError::Usage(format!("reading {flag} {}: {e}", path.display())))
}

impl Tls {
    fn new(authority: &str, files: &TlsFiles<'_>) -> Result<Self, ApiError> {
        use palisade_contract::tls::{
            ExpectedServer, IdentitySlot, TrustBundle, WorkloadIdentity, client_config,
            server_name_for, shared_bundle,
        };
        let usage = |m: String| ApiError::Usage(m);
        let td = palisade_contract::TrustDomain::parse(files.trust_domain)
            .map_err(|e| usage(format!("--trust-domain: {e}")))?;
        let bundle_path = files.ca_bundle.ok_or_else(|| {
            usage("an https:// server needs --ca-bundle (the mesh's trust bundle)".into())
        })?;
        let bundle = TrustBundle::from_pem(td.clone(), &read(bundle_path, "--ca-bundle")?)
            .map_err(|e| usage(format!("--ca-bundle: {e}")))?;
        let identity = match (files.cert, files.key) {
            (Some(cert), Some(key)) => {
                let slot = IdentitySlot::new();
                slot.set(
                    WorkloadIdentity::from_pem(&read(cert, "--cert")?, &read(key, "--key")?)
                        .map_err(|e| usage(format!("--cert/--key: {e}")))?,
                );
                Some(slot)
            }
            (None, None) => None,
            _ => return Err(usage("--cert and --key go together".into())),
        };
        let server = palisade_contract::identity_api::control_plane_id(&td);
        let config = client_config(
            identity,
            shared_bundle(bundle),
            ExpectedServer::Exact(server.clone()),
            &[b"http/1.1"],
        );
        Ok(Self {
            config: std::sync::Arc::new(config),
            server_name: server_name_for(&server),
            addr: authority.to_owned(),
        })
    }

    async fn send(
        &self,
        request: Request<Full<Bytes>>,
    ) -> Result<http::Response<hyper::body::Incoming>, String> {
        let tcp = tokio::net::TcpStream::connect(&self.addr)
            .await
            .map_err(|e| e.to_string())?;
        let tls = tokio_rustls::TlsConnector::from(self.config.clone())
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())
    }
}

impl ApiClient {
    pub fn new(
        server: &str,
        token: Option<String>,
        tls_files: &TlsFiles<'_>,
    ) -> Result<Self, ApiError> {
        let base = server.trim_end_matches('/').to_owned();
        let uri = base
            .parse::<Uri>()
            .map_err(|e| ApiError::Usage(format!("--server {server:?}: {e}")))?;
        let tls = match uri.scheme_str() {
            Some("http") => None,
            Some("https") => {
                let authority = uri
                    .authority()
                    .ok_or_else(|| ApiError::Usage(format!("--server {server:?} has no host")))?;
                let authority = if authority.port().is_some() {
                    authority.to_string()
                } else {
                    format!("{authority}:443")
                };
                Some(Tls::new(&authority, tls_files)?)
            }
            _ => {
                return Err(ApiError::Usage(format!(
                    "--server {server:?} must be an http:// or https:// URL"
                )));
            }
        };
        Ok(Self {
            base,
            token,
            http: Client::builder(TokioExecutor::new()).build_http(),
            tls,
        })
    }

    pub async fn get_json(&self, path: &str) -> Result<serde_json::Value, ApiError> {
        let body = self.send(Method::GET, path, None).await?;
        parse_json(&body)
    }

    pub async fn get_text(&self, path: &str) -> Result<String, ApiError> {
        let body = self.send(Method::GET, path, None).await?;
        Ok(String::from_utf8_lossy(&body).into_owned())
    }

    pub async fn post_json(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value, ApiError> {
        let body = self
            .send(Method::POST, path, Some(body.to_string().into_bytes()))
            .await?;
        parse_json(&body)
    }

    /// POSTs documents as they are (YAML or JSON).
    pub async fn post_documents(
        &self,
        path: &str,
        documents: String,
    ) -> Result<serde_json::Value, ApiError> {
        let body = self
            .send(Method::POST, path, Some(documents.into_bytes()))
            .await?;
        parse_json(&body)
    }

    pub async fn delete(&self, path: &str) -> Result<serde_json::Value, ApiError> {
        let body = self.send(Method::DELETE, path, None).await?;
        parse_json(&body)
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Bytes, ApiError> {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        if let Some(b) = &body {
            let json = b.first() == Some(&b'{');
            request = request.header(
                header::CONTENT_TYPE,
                if json {
                    "application/json"
                } else {
                    "application/yaml"
                },
            );
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ApiError::Usage(e.to_string()))?;
        let response = match &self.tls {
            Some(tls) => tls.send(request).await,
            None => self.http.request(request).await.map_err(|e| {
                std::error::Error::source(&e)
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| e.to_string())
            }),
        }
        .map_err(|detail| ApiError::Unreachable {
            server: self.base.clone(),
            detail,
        })?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| ApiError::Unreachable {
                server: self.base.clone(),
                detail: e.to_string(),
            })?
            .to_bytes();
        if status.is_success() {
            return Ok(bytes);
        }
        let message = error_message(&bytes);
        Err(match status {
            StatusCode::UNAUTHORIZED => ApiError::Unauthenticated(message),
            StatusCode::FORBIDDEN => ApiError::Forbidden(message),
            _ => ApiError::Refused { status, message },
        })
    }
}

/// The API's `{"error": ..., "details": [...]}` as one readable message.
fn error_message(body: &[u8]) -> String {
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(v) if v["error"].is_string() => {
            let mut msg = v["error"].as_str().unwrap_or_default().to_owned();
            for d in v["details"].as_array().into_iter().flatten() {
                msg.push_str("\n  - ");
                msg.push_str(d.as_str().unwrap_or_default());
            }
            msg
        }
        _ => String::from_utf8_lossy(body).chars().take(300).collect(),
    }
}

fn parse_json(body: &[u8]) -> Result<serde_json::Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::Refused {
        status: StatusCode::OK,
        message: format!("unreadable response: {e}"),
    })
}

/// An API path built from raw segments and query parameters, each percent-encoded, so a
/// value holding `&`, `#`, `/`, `?` or spaces stays one value (`--principal 'a&limit=1'` must
/// not add a parameter). Segments are joined after `/`.
pub fn api_path(segments: &[&str], query: &[(&str, &str)]) -> String {
    use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
    // RFC 3986 unreserved characters stay as they are; everything else is encoded.
    const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    let mut path = String::new();
    for s in segments {
        path.push('/');
        path.extend(utf8_percent_encode(s, SEGMENT));
    }
    if !query.is_empty() {
        let mut q = form_urlencoded::Serializer::new(String::new());
        q.extend_pairs(query);
        path.push('?');
        path.push_str(&q.finish());
    }
    path
}

#[cfg(test)]
mod tests {
    use super::api_path;

    #[test]
    fn every_segment_and_query_value_is_encoded() {
        assert_eq!(
            api_path(
                &["v1", "audit"],
                &[("limit", "1000"), ("principal", "a&limit=1")]
            ),
            "/v1/audit?limit=1000&principal=a%26limit%3D1"
        );
        assert_eq!(
            api_path(&["v1", "audit"], &[("principal", "a b#c?d/e+f")]),
            "/v1/audit?principal=a+b%23c%3Fd%2Fe%2Bf"
        );
        assert_eq!(
            api_path(&["v1", "namespaces", "shop", "x/../y"], &[]),
            "/v1/namespaces/shop/x%2F..%2Fy"
        );
        assert_eq!(api_path(&["v1", "ca"], &[]), "/v1/ca");
    }
}
