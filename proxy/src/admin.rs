//! The sidecar's admin port (default `0.0.0.0:15090`): `/live`, `/ready`, `/metrics` and
//! `/app-health/<name>`.
//!
//! It is plain HTTP and never subject to mesh policy, so Kubernetes probes and Prometheus
//! keep working under default deny. `/ready` is 200 only while the sidecar holds a valid
//! certificate: a sidecar that cannot take part in mTLS is taken out of rotation.
//!
//! The application's own health checks cannot come through the inbound port: the kubelet
//! has no mesh certificate. As Istio rewrites probes to its agent, a probe is pointed at
//! `/app-health/<name>`, and the sidecar asks the application (`GET <path>` on `--app`) and
//! answers with the application's status. Only the paths configured with `--app-probe
//! NAME=PATH` can be reached this way, so the admin port is no way around policy.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use palisade_contract::process::accept;
use palisade_contract::telemetry::encode_metrics;
use prometheus::Registry;
use tokio::net::TcpListener;

use crate::identity::IdentityManager;

/// How long the application gets to answer a probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// The admin port's part of the configuration.
#[derive(Debug, Clone)]
pub struct AdminSettings {
    pub listen: SocketAddr,
    /// The application, and its health paths by probe name (`--app-probe`).
    pub app: SocketAddr,
    pub probes: HashMap<String, String>,
}

#[derive(Debug, Clone)]
pub struct AdminState {
    pub identity: Arc<IdentityManager>,
    pub registry: Registry,
    /// The application, and its health paths by probe name (`--app-probe`).
    pub app: SocketAddr,
    pub probes: Arc<HashMap<String, String>>,
}

impl AdminState {
    pub fn new(
        settings: AdminSettings,
        identity: Arc<IdentityManager>,
        registry: Registry,
    ) -> Self {
        Self {
            identity,
            registry,
            app: settings.app,
            probes: Arc::new(settings.probes),
        }
    }
}

/// One `--app-probe NAME=PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppProbe {
    pub name: String,
    pub path: String,
}

impl std::str::FromStr for AppProbe {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let usage = || format!("{s:?} is not NAME=PATH (e.g. live=/healthz)");
        let (name, path) = s.split_once('=').ok_or_else(usage)?;
        let name_ok = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !name_ok || !path.starts_with('/') || path.parse::<http::Uri>().is_err() {
            return Err(usage());
        }
        Ok(AppProbe {
            name: name.to_owned(),
            path: path.to_owned(),
        })
    }
}

/// Asks the application at `path` and answers with its status.
async fn probe_app(app: SocketAddr, name: &str, path: &str) -> (StatusCode, String) {
    let ask = async {
        let tcp = tokio::net::TcpStream::connect(app).await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(conn);
        let req = Request::get(path)
            .header(header::HOST, app.to_string())
            .header(header::USER_AGENT, "palisade-probe")
            .body(http_body_util::Empty::<Bytes>::new())
            .map_err(std::io::Error::other)?;
        let response = sender
            .send_request(req)
            .await
            .map_err(std::io::Error::other)?;
        Ok::<_, std::io::Error>(response.status())
    };
    match tokio::time::timeout(PROBE_TIMEOUT, ask).await {
        Ok(Ok(status)) => (status, format!("app probe {name}: {status}\n")),
        Ok(Err(e)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("app probe {name}: the application did not answer: {e}\n"),
        ),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("app probe {name}: the application did not answer in time\n"),
        ),
    }
}

async fn respond(state: &AdminState, req: &Request<Incoming>) -> Response<Full<Bytes>> {
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
                format!("not ready: {}\n", state.identity.not_ready_reason()),
            ),
        },
        "/metrics" => text(StatusCode::OK, encode_metrics(&state.registry)),
        path => match path
            .strip_prefix("/app-health/")
            .and_then(|name| Some((name, state.probes.get(name)?)))
        {
            Some((name, app_path)) => {
                let (status, body) = probe_app(state.app, name, app_path).await;
                text(status, body)
            }
            None => text(StatusCode::NOT_FOUND, "not found\n".into()),
        },
    }
}

/// Serves the admin endpoints on `listener` until `shutdown` resolves.
pub async fn serve(listener: TcpListener, state: AdminState, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        let Some((tcp, peer)) = accept(&listener, &mut shutdown, "admin").await else {
            return;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(respond(&state, &req).await) }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_probe_flag() {
        assert_eq!(
            "live=/healthz?full=1".parse::<AppProbe>(),
            Ok(AppProbe {
                name: "live".into(),
                path: "/healthz?full=1".into()
            })
        );
        for bad in ["live", "=/x", "live=healthz", "a/b=/x", "live=/a b"] {
            assert!(bad.parse::<AppProbe>().is_err(), "{bad}");
        }
    }
}
