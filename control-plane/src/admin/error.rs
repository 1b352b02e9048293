//! Every way an admin request fails, and the one place failures become statuses and the
//! documented JSON body (`{"error", "details"}`); internal detail is logged, never sent.

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use palisade_contract::documents::Problems;

use crate::admin_tokens::AdminTokenError;
use crate::serving::error_response;
use crate::store::ChangeError;

use super::Role;

/// Every way an admin request fails; [`IntoResponse`] below is the one place they become
/// statuses and JSON bodies. Internal detail is logged, never sent.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{0}")]
    Unauthenticated(&'static str),
    #[error("role {} may not do this", .0.name())]
    Forbidden(Role),
    #[error("{error}")]
    Invalid { error: String, details: Vec<String> },
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NotFound(String),
    #[error("internal error")]
    Internal(String),
    /// A request refused before a handler could read it, with the status the extractor
    /// chose (413 too large, 415 not JSON, 400 or 422 not the expected shape).
    #[error("{message}")]
    Rejected { status: StatusCode, message: String },
}

impl AdminError {
    /// A JSON body the extractor refused, keeping its status (a 2 MiB body is 413, not 400).
    pub fn from_json_rejection(r: axum::extract::rejection::JsonRejection, what: &str) -> Self {
        match r.status() {
            StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY => AdminError::Invalid {
                error: format!("invalid {what}"),
                details: vec![r.body_text()],
            },
            status => AdminError::Rejected {
                status,
                message: r.body_text(),
            },
        }
    }
}

/// Every error the admin API answers is the documented JSON (`{"error", "details"}`),
/// whoever made it: axum's extractors answer 400, 413, 415 and 422 in plain text, and the
/// router 404 and 405 with an empty body. Applied to the whole router, so no route or
/// layer can slip past it.
pub(super) async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 4096)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    let error = if text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("error")
            .to_ascii_lowercase()
    } else {
        text
    };
    let mut json = error_response(status, &error, Vec::new());
    for name in [header::WWW_AUTHENTICATE, header::ALLOW] {
        if let Some(v) = parts.headers.get(&name) {
            json.headers_mut().insert(name, v.clone());
        }
    }
    json
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let status = match &self {
            AdminError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            AdminError::Forbidden(_) => StatusCode::FORBIDDEN,
            AdminError::Invalid { .. } => StatusCode::BAD_REQUEST,
            AdminError::Conflict(_) => StatusCode::CONFLICT,
            AdminError::NotFound(_) => StatusCode::NOT_FOUND,
            AdminError::Rejected { status, .. } => *status,
            AdminError::Internal(detail) => {
                tracing::error!(target: "palisade::admin", error = %detail, "admin request failed");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        let details = match &self {
            AdminError::Invalid { details, .. } => details.clone(),
            _ => Vec::new(),
        };
        let mut response = error_response(status, &self.to_string(), details);
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

impl From<AdminTokenError> for AdminError {
    fn from(e: AdminTokenError) -> Self {
        match e {
            AdminTokenError::Invalid(detail) => AdminError::Invalid {
                error: "invalid admin token request".into(),
                details: vec![detail],
            },
            AdminTokenError::Conflict(m) => AdminError::Conflict(m),
            AdminTokenError::NotFound(m) => AdminError::NotFound(m),
            AdminTokenError::Internal(m) => AdminError::Internal(m),
        }
    }
}

pub(super) fn invalid(problems: Problems) -> AdminError {
    AdminError::Invalid {
        error: "invalid document".into(),
        details: problems.0.iter().map(ToString::to_string).collect(),
    }
}

pub(super) fn change_error(e: ChangeError) -> AdminError {
    match e {
        ChangeError::Stale { .. } | ChangeError::Exists { .. } => {
            AdminError::Conflict(e.to_string())
        }
        ChangeError::Missing { .. } => AdminError::NotFound(e.to_string()),
        ChangeError::Store(e) => AdminError::Internal(e.to_string()),
    }
}

pub(super) fn internal(e: impl std::fmt::Display) -> AdminError {
    AdminError::Internal(e.to_string())
}
