//! Scenario 7: time from an API change until simulated sidecars have it.

use crate::load::percentile;
use crate::run::setup::sidecar_tls;
use crate::run::{Report, Settings};
use anyhow::bail;
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// `watchers` long polls on the configuration endpoint, then one policy applied through the
/// admin API: milliseconds until each poll answered with the new version, sorted.
pub(crate) async fn propagation(
    cp: SocketAddr,
    admin: SocketAddr,
    admin_token: &str,
    identity_dir: &Path,
    watchers: usize,
    round: usize,
) -> anyhow::Result<Vec<f64>> {
    use palisade_contract::tls::{ExpectedServer, client_config, server_name_for};
    let (slot, bundle, server) = sidecar_tls(identity_dir)?;
    let tls = Arc::new(client_config(
        Some(slot),
        bundle,
        ExpectedServer::Exact(server.clone()),
        &[b"http/1.1"],
    ));
    let admin_call = |method: http::Method, path: &str, body: String| {
        let (token, path) = (admin_token.to_owned(), path.to_owned());
        async move {
            let tcp = TcpStream::connect(admin).await?;
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
            tokio::spawn(conn);
            let req = Request::builder()
                .method(method)
                .uri(path)
                .header("host", "cp")
                .header("authorization", format!("Bearer {token}"))
                .body(Full::new(Bytes::from(body)))?;
            let resp = sender.send_request(req).await?;
            let bytes = resp.into_body().collect().await?.to_bytes();
            anyhow::Ok(serde_json::from_slice::<Value>(&bytes).unwrap_or(Value::Null))
        }
    };
    let version =
        admin_call(http::Method::GET, "/v1/resources", String::new()).await?["meshVersion"]
            .as_i64()
            .unwrap_or(0);
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut polls = Vec::with_capacity(watchers);
    for i in 0..watchers {
        let (tls, server, ready) = (tls.clone(), server.clone(), ready_tx.clone());
        polls.push(tokio::spawn(async move {
            let tcp = TcpStream::connect(cp).await?;
            let stream = tokio_rustls::TlsConnector::from(tls)
                .connect(server_name_for(&server), tcp)
                .await?;
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(conn);
            let req = Request::get(format!(
                "/v1/config?version={version}&applied={version}&instance=bench-{round}-{i}"
            ))
            .header("host", "cp")
            .body(Empty::<Bytes>::new())?;
            let _ = ready.send(());
            let resp = sender.send_request(req).await?;
            let status = resp.status();
            let _ = resp.into_body().collect().await?;
            if status != http::StatusCode::OK {
                bail!("poll answered {status}");
            }
            anyhow::Ok(Instant::now())
        }));
    }
    for _ in 0..watchers {
        ready_rx.recv().await;
    }
    // Let the last requests reach the control plane and start waiting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let policy = format!(
        "apiVersion: palisade.dev/v1\nkind: AuthorizationPolicy\nmetadata: {{ name: bench-{round}, namespace: shop }}\nspec:\n  selector: {{ service: payments }}\n  rules: [ {{ to: [ {{ methods: [\"HEAD\"] }} ] }} ]\n"
    );
    let started = Instant::now();
    admin_call(http::Method::POST, "/v1/apply", policy).await?;
    let mut times = Vec::with_capacity(watchers);
    for p in polls {
        let arrived = p.await??;
        times.push(arrived.saturating_duration_since(started).as_secs_f64() * 1000.0);
    }
    times.sort_by(|a, b| a.total_cmp(b));
    Ok(times)
}

pub(crate) async fn propagation_scenario(
    s: &Settings,
    r: &mut Report,
    cp_sidecar: SocketAddr,
    cp_admin: SocketAddr,
    admin_token: &str,
    work: &Path,
) -> anyhow::Result<()> {
    r.md.push_str("\n| policy propagation (API change -> watcher has it) | watchers | p50 ms | p99 ms | max ms |\n|---|---:|---:|---:|---:|\n");
    let counts: &[usize] = if s.smoke { &[10] } else { &[100, 1000] };
    for (round, &watchers) in counts.iter().enumerate() {
        let times = propagation(
            cp_sidecar,
            cp_admin,
            admin_token,
            &work.join("orders-id"),
            watchers,
            round,
        )
        .await?;
        let (p50, p99, max) = (
            percentile(&times, 0.5),
            percentile(&times, 0.99),
            times[times.len() - 1],
        );
        r.md.push_str(&format!(
            "| one AuthorizationPolicy applied | {watchers} | {p50:.1} | {p99:.1} | {max:.1} |\n"
        ));
        r.results.push(json!({"scenario": "propagation", "watchers": watchers, "p50_ms": p50, "p99_ms": p99, "max_ms": max}));
        if watchers == 1000 {
            r.target(
                "propagation p99 under 1 s to 1,000 watchers",
                p99 < 1000.0,
                format!("{p99:.0} ms"),
            );
        }
    }
    Ok(())
}
