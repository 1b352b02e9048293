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
}

impl ApiClient {
    pub fn new(server: &str, token: Option<String>) -> Result<Self, ApiError> {
        let base = server.trim_end_matches('/').to_owned();
        if !base.starts_with("http://") {
            return Err(ApiError::Usage(format!(
                "--server {server:?} must be an http:// URL (the admin API listens on loopback by default)"
            )));
        }
        base.parse::<Uri>()
            .map_err(|e| ApiError::Usage(format!("--server {server:?}: {e}")))?;
        Ok(Self {
            base,
            token,
            http: Client::builder(TokioExecutor::new()).build_http(),
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
        let response = self
            .http
            .request(request)
            .await
            .map_err(|e| ApiError::Unreachable {
                server: self.base.clone(),
                detail: std::error::Error::source(&e)
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| e.to_string()),
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
