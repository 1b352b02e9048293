//! The sidecar's admin port (default `0.0.0.0:15090`): `/live`, `/ready` and `/metrics`.
//!
//! It is plain HTTP and never subject to mesh policy, so Kubernetes probes and Prometheus
//! keep working under default deny. `/ready` is 200 only while the sidecar holds a valid
//! certificate: a sidecar that cannot take part in mTLS is taken out of rotation.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use palisade_contract::telemetry::encode_metrics;
use prometheus::Registry;
use tokio::net::TcpListener;

use crate::identity::IdentityManager;

#[derive(Debug, Clone)]
pub struct AdminState {
    pub identity: Arc<IdentityManager>,
    pub registry: Registry,
}

fn respond(state: &AdminState, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let text = |status: StatusCode, body: String| {
        Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
            .body(Full::new(Bytes::from(body)))
            .expect("static response parts are valid")
    };
    if req.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".into());
    }
    match req.uri().path() {
        "/live" => text(StatusCode::OK, "live\n".into()),
        "/ready" => match state.identity.slot().valid() {
            Some(id) => text(StatusCode::OK, format!("ready: {}\n", id.spiffe_id)),
            None => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: no valid certificate\n".into(),
            ),
        },
        "/metrics" => text(StatusCode::OK, encode_metrics(&state.registry)),
        _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
    }
}

/// Serves the admin endpoints on `listener` until `shutdown` resolves.
pub async fn serve(listener: TcpListener, state: AdminState, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => return,
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let response = respond(&state, &req);
                async move { Ok::<_, Infallible>(response) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(tcp), service);
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "admin connection error");
            }
        });
    }
}
