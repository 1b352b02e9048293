//! A mesh connection lives no longer than the trust it was opened with: against a real
//! control plane on loopback, certificates of a few seconds are left to expire (the control
//! plane is stopped) under steady load on connections opened before, and not one request
//! may succeed over any of them once the drain bound has passed.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use palisade_contract::tls::{
    ClientAuth, ExpectedServer, client_config, server_config, server_name_for,
};
use palisade_proxy::RunningSidecar;
use support::{control_plane, on_new_root, orders_with_registry, payments_with_hello, tcp_echo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const DRAIN: Duration = Duration::from_secs(1);

/// A TLS acceptor presenting `sidecar`'s certificate (HTTP/2 only) and a loopback listener
/// for it.
async fn h2_peer_as(
    sidecar: &RunningSidecar,
) -> (tokio_rustls::TlsAcceptor, TcpListener, SocketAddr) {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config(
        sidecar.identity.slot(),
        sidecar.identity.bundle(),
        ClientAuth::Required,
        &[b"h2"],
    )));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (acceptor, listener, addr)
}

/// An HTTP/2 server over mTLS presenting `sidecar`'s certificate that never checks it
/// again after the handshake: only the calling sidecar can end its connections.
async fn lenient_h2_server(sidecar: &RunningSidecar) -> SocketAddr {
    let (acceptor, listener, addr) = h2_peer_as(sidecar).await;
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(
                        http_body_util::Full::new(Bytes::from_static(b"lenient")),
                    ))
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    addr
}

/// When each attempt on one connection succeeded, and how many attempts there were.
#[derive(Default)]
struct Record {
    successes: Vec<Instant>,
    attempts: usize,
    /// When each attempt ended.
    tried: Vec<Instant>,
}

type Shared = Arc<Mutex<Record>>;

fn note(record: &Shared, ok: bool) {
    let mut r = record.lock().unwrap();
    r.attempts += 1;
    r.tried.push(Instant::now());
    if ok {
        r.successes.push(Instant::now());
    }
}

fn get(uri: &str, host: Option<&str>) -> Request<Empty<Bytes>> {
    let mut req = Request::get(uri);
    if let Some(host) = host {
        req = req.header("host", host);
    }
    req.body(Empty::new()).unwrap()
}

/// Requests every 20 ms until `until` on one kept-alive HTTP/1.1 connection over `io`,
/// recorded in a new [`Record`].
async fn load_http1<I>(io: I, host: &'static str, until: Instant) -> Shared
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let record = Shared::default();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .unwrap();
    tokio::spawn(conn);
    let r = record.clone();
    tokio::spawn(async move {
        while Instant::now() < until {
            let ok = match sender.send_request(get("/", Some(host))).await {
                Ok(resp) => {
                    let status = resp.status();
                    let _ = resp.into_body().collect().await;
                    status == StatusCode::OK
                }
                Err(_) => false,
            };
            note(&r, ok);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    record
}

/// [`load_http1`] from the application to its sidecar's outbound port (so over the
/// sidecar's pooled connection to `host`).
async fn load_via_pool(outbound: SocketAddr, host: &'static str, until: Instant) -> Shared {
    load_http1(TcpStream::connect(outbound).await.unwrap(), host, until).await
}

/// mTLS to `server`'s inbound listener as `client` (its certificate), offering `alpn`.
async fn mesh_tls(
    client: &RunningSidecar,
    server: &RunningSidecar,
    alpn: &[u8],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let want = server.identity.spiffe_id().unwrap();
    let config = client_config(
        Some(client.identity.slot()),
        client.identity.bundle(),
        ExpectedServer::Exact(want.clone()),
        &[alpn],
    );
    let tcp = TcpStream::connect(server.inbound_addr).await.unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(server_name_for(&want), tcp)
        .await
        .unwrap()
}

/// Requests every 20 ms until `until` on one mTLS connection straight to the inbound
/// listener, HTTP/1.1 or HTTP/2: the client never closes it, so only the inbound end can.
async fn load_direct(
    client: &RunningSidecar,
    server: &RunningSidecar,
    http2: bool,
    until: Instant,
) -> Shared {
    let record = Shared::default();
    let r = record.clone();
    if http2 {
        let tls = mesh_tls(client, server, b"h2").await;
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .unwrap();
        tokio::spawn(conn);
        tokio::spawn(async move {
            while Instant::now() < until {
                let ok = match sender.send_request(get("https://payments/", None)).await {
                    Ok(resp) => resp.status() == StatusCode::OK,
                    Err(_) => false,
                };
                note(&r, ok);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
    } else {
        return load_http1(
            mesh_tls(client, server, b"http/1.1").await,
            "payments",
            until,
        )
        .await;
    }
    record
}

/// A round trip every 20 ms until `until` on one opaque TCP connection through the
/// client sidecar's `--tcp-outbound` listener to an echo server behind the other sidecar.
async fn load_opaque(listen: SocketAddr, until: Instant) -> Shared {
    let record = Shared::default();
    let r = record.clone();
    let mut tcp = TcpStream::connect(listen).await.unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 4];
        while Instant::now() < until {
            let ok = tcp.write_all(b"ping").await.is_ok()
                && matches!(
                    tokio::time::timeout(Duration::from_millis(500), tcp.read_exact(&mut buf))
                        .await,
                    Ok(Ok(_))
                )
                && &buf == b"ping";
            note(&r, ok);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    record
}

/// A control plane issuing certificates for `ttl`, the `payments` sidecar (in front of a
/// hello application, with an opaque port to a TCP echo server) and the `orders` sidecar
/// (whose registry also names a lenient peer presenting payments' certificate, and whose
/// `--tcp-outbound` reaches the echo server), both draining for [`DRAIN`].
struct Mesh {
    _dir: tempfile::TempDir,
    cp: palisade_control_plane::RunningControlPlane,
    payments: RunningSidecar,
    orders: RunningSidecar,
}

async fn mesh(ttl: Duration) -> Mesh {
    let dir = tempfile::tempdir().unwrap();
    let cp = control_plane(&dir.path().join("cp"), ttl).await;
    let echo_port = tcp_echo().await.to_string();
    let drain = format!("{}ms", DRAIN.as_millis());
    let payments = payments_with_hello(
        &cp,
        dir.path(),
        &["--opaque-ports", &echo_port, "--connection-drain", &drain],
    )
    .await;
    let lenient = lenient_h2_server(&payments).await;
    let tcp_outbound = format!("127.0.0.1:0=payments:{echo_port}");
    let orders = orders_with_registry(
        &cp,
        dir.path(),
        &[("payments", payments.inbound_addr), ("lenient", lenient)],
        &[
            "--tcp-outbound",
            &tcp_outbound,
            "--connection-drain",
            &drain,
        ],
    )
    .await;
    Mesh {
        _dir: dir,
        cp,
        payments,
        orders,
    }
}

#[tokio::test]
async fn once_certificates_expire_no_connection_carries_a_request_after_the_drain() {
    let Mesh {
        _dir,
        cp,
        payments,
        orders,
    } = mesh(Duration::from_secs(6)).await;
    // No renewal from now on.
    cp.shutdown().await;
    let expiry = [&payments, &orders]
        .iter()
        .map(|s| s.identity.slot().get().unwrap().not_after)
        .max()
        .unwrap();
    let expires_in = Duration::from_secs(
        (expiry - palisade_contract::unix_now())
            .try_into()
            .expect("still valid"),
    );
    // The last of the certificates expires at `expiry` (whole seconds: up to a second
    // earlier on this clock), then the drain bound, with a little scheduling slack.
    let cutoff = Instant::now() + expires_in + DRAIN + Duration::from_millis(300);
    let until = cutoff + Duration::from_secs(2);

    let loads = [
        (
            "pooled HTTP/2 to the sidecar",
            load_via_pool(orders.outbound_addr, "payments", until).await,
        ),
        (
            "pooled HTTP/2 to a lenient peer",
            load_via_pool(orders.outbound_addr, "lenient", until).await,
        ),
        (
            "direct HTTP/1.1",
            load_direct(&orders, &payments, false, until).await,
        ),
        (
            "direct HTTP/2",
            load_direct(&orders, &payments, true, until).await,
        ),
        (
            "opaque TCP",
            load_opaque(orders.tcp_outbound_addrs[0], until).await,
        ),
    ];
    tokio::time::sleep_until((until + Duration::from_millis(200)).into()).await;
    for (what, record) in &loads {
        let r = record.lock().unwrap();
        let before = r.successes.iter().filter(|t| **t < cutoff).count();
        let after = r.successes.iter().filter(|t| **t >= cutoff).count();
        let tried_after = r.tried.iter().filter(|t| **t >= cutoff).count();
        eprintln!(
            "{what}: {before} succeeded before expiry plus drain, {after} of {tried_after} attempts after"
        );
        assert!(before > 0, "{what}: no request succeeded before the expiry");
        assert_eq!(
            after, 0,
            "{what}: {after} of {} attempts succeeded after expiry plus the drain bound",
            r.attempts
        );
    }
    orders.shutdown().await;
    payments.shutdown().await;
}

/// Waits until `check` holds for every sidecar; how long that took.
async fn time_until(
    what: &str,
    sidecars: &[&RunningSidecar],
    check: impl Fn(&RunningSidecar) -> bool,
) -> Duration {
    let started = Instant::now();
    while !sidecars.iter().all(|s| check(s)) {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    started.elapsed()
}

#[tokio::test]
async fn a_root_rotation_under_load_fails_nothing_and_ends_old_root_connections() {
    // Long enough that a renewal (at about half of it) cannot be what delivers a bundle.
    let m = mesh(Duration::from_secs(20)).await;
    let old_root = m.cp.ca.bundle().load().roots().next().unwrap().clone();
    let run_until = Instant::now() + Duration::from_secs(60);
    // Steady load through the orders sidecar's pool for the whole rotation; and connections
    // opened now, with certificates of the old root, that nothing but the sidecars closes.
    let steady = load_via_pool(m.orders.outbound_addr, "payments", run_until).await;
    let old = [
        (
            "direct HTTP/1.1",
            load_direct(&m.orders, &m.payments, false, run_until).await,
        ),
        (
            "direct HTTP/2",
            load_direct(&m.orders, &m.payments, true, run_until).await,
        ),
        (
            "opaque TCP",
            load_opaque(m.orders.tcp_outbound_addrs[0], run_until).await,
        ),
    ];
    let both = [&m.payments, &m.orders];
    let roots = |s: &RunningSidecar| s.identity.bundle().load().len();

    m.cp.ca.rotation_prepare().unwrap();
    let pushed = time_until("both sidecars trust the new root", &both, |s| roots(s) == 2).await;
    assert!(
        pushed < Duration::from_secs(3),
        "the new root took {pushed:?}"
    );

    // The control plane lists both roots; no sidecar trusts one it dropped.
    let token = m.cp.admin_token().unwrap();
    let (_, body) = support::http_get(m.cp.admin_addr, "/v1/ca", Some(&token)).await;
    let ca: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ca["roots"].as_array().unwrap().len(), 2, "{ca:#}");
    assert_eq!(
        ca["sidecars"]["trustingDroppedRoots"],
        serde_json::json!([]),
        "{ca:#}"
    );

    m.cp.ca.rotation_activate().unwrap();
    let on_new_root = on_new_root(&m.cp, &old_root);
    time_until(
        "both sidecars hold new-root certificates",
        &both,
        on_new_root,
    )
    .await;

    m.cp.ca.rotation_finish().unwrap();
    let finished = Instant::now();
    let dropped = time_until("both sidecars dropped the old root", &both, |s| {
        roots(s) == 1
    })
    .await;
    assert!(
        dropped < Duration::from_secs(3),
        "the old root stayed for {dropped:?}"
    );
    // The control plane hears it back: both sidecars acknowledge the bundle they hold.
    let token = m.cp.admin_token().unwrap();
    let mut ca = serde_json::Value::Null;
    for _ in 0..100 {
        let (status, body) = support::http_get(m.cp.admin_addr, "/v1/ca", Some(&token)).await;
        assert_eq!(status, 200, "{body}");
        ca = serde_json::from_str(&body).unwrap();
        let sidecars = &ca["sidecars"];
        if sidecars["seen"] == 2
            && sidecars["trustingDroppedRoots"] == serde_json::json!([])
            && sidecars["missingRoots"] == serde_json::json!([])
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(ca["sidecars"]["seen"], 2, "{ca:#}");
    assert_eq!(
        ca["sidecars"]["trustingDroppedRoots"],
        serde_json::json!([]),
        "{ca:#}"
    );
    assert_eq!(
        ca["sidecars"]["missingRoots"],
        serde_json::json!([]),
        "{ca:#}"
    );
    assert_eq!(ca["roots"].as_array().unwrap().len(), 1, "{ca:#}");
    let cutoff = finished + dropped + DRAIN + Duration::from_millis(300);
    tokio::time::sleep_until((cutoff + Duration::from_secs(2)).into()).await;

    for (what, record) in &old {
        let r = record.lock().unwrap();
        assert!(
            r.successes.iter().any(|t| *t < finished),
            "{what}: nothing succeeded before the rotation finished"
        );
        let after = r.successes.iter().filter(|t| **t >= cutoff).count();
        assert_eq!(
            after, 0,
            "{what}: {after} requests over an old-root connection after finish"
        );
    }
    let (successes, attempts) = {
        let r = steady.lock().unwrap();
        (r.successes.len(), r.attempts)
    };
    eprintln!(
        "new root applied by both sidecars in {pushed:?}, old root dropped in {dropped:?}; \
         {} of {} requests under load succeeded",
        successes, attempts
    );
    assert!(attempts > 100, "{attempts} requests");
    assert_eq!(
        successes,
        attempts,
        "{} of {attempts} requests failed during the rotation",
        attempts - successes
    );
    m.orders.shutdown().await;
    m.payments.shutdown().await;
    m.cp.shutdown().await;
}

#[tokio::test]
async fn requests_racing_the_peers_idle_close_are_sent_again_and_none_fails() {
    // payments closes connections idle for 1 s; orders sends each request just before,
    // at, or just after that moment, over eight pools (one connection each: --cores 1).
    let dir = tempfile::tempdir().unwrap();
    let cp = control_plane(&dir.path().join("cp"), Duration::from_secs(3600)).await;
    let payments = payments_with_hello(&cp, dir.path(), &["--idle-timeout", "1s"]).await;
    const POOLS: usize = 8;
    let names: Vec<String> = (0..POOLS).map(|i| format!("payments{i}")).collect();
    let services: Vec<(&str, SocketAddr)> = names
        .iter()
        .map(|n| (n.as_str(), payments.inbound_addr))
        .collect();
    let orders = orders_with_registry(&cp, dir.path(), &services, &["--cores", "1"]).await;
    let outbound = orders.outbound_addr;
    let mut loaders = Vec::new();
    for i in 0..POOLS {
        loaders.push(tokio::spawn(async move {
            let host = format!("payments{i}");
            let mut failures = Vec::new();
            // Pauses from 1,000 ms to 1,120 ms, offset per pool: the sidecar closes an
            // idle connection between 1 s and 1.1 s (it looks every tenth of the timeout),
            // so every request meets the connection within milliseconds of its close.
            for step in 0..12u64 {
                let pause = Duration::from_millis(1000 + ((step * 10 + i as u64 * 3) % 120));
                tokio::time::sleep(pause).await;
                let tcp = TcpStream::connect(outbound).await.unwrap();
                let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                    .await
                    .unwrap();
                tokio::spawn(conn);
                let resp = sender.send_request(get("/", Some(&host))).await.unwrap();
                let status = resp.status();
                let body = resp.into_body().collect().await.unwrap().to_bytes();
                if status != StatusCode::OK {
                    failures.push(format!(
                        "{status} after {pause:?}: {}",
                        String::from_utf8_lossy(&body)
                    ));
                }
            }
            failures
        }));
    }
    let mut failed = Vec::new();
    for loader in loaders {
        failed.extend(loader.await.unwrap());
    }
    assert!(
        failed.is_empty(),
        "{} of {} failed: {failed:?}",
        failed.len(),
        POOLS * 12
    );
    orders.shutdown().await;
    payments.shutdown().await;
    cp.shutdown().await;
}

/// An HTTP/2 peer presenting `sidecar`'s certificate that answers every stream of its first
/// `refusing` connections with `RST_STREAM(REFUSED_STREAM)` and serves later ones; with the
/// count of connections it accepted.
async fn refusing_peer(
    sidecar: &RunningSidecar,
    refusing: usize,
) -> (SocketAddr, Arc<AtomicUsize>) {
    let (acceptor, listener, addr) = h2_peer_as(sidecar).await;
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let refuse = count.fetch_add(1, Ordering::SeqCst) < refusing;
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut conn) = h2::server::handshake(tls).await else {
                    return;
                };
                while let Some(Ok((_req, mut respond))) = conn.accept().await {
                    if refuse {
                        respond.send_reset(h2::Reason::REFUSED_STREAM);
                    } else {
                        let resp = http::Response::new(());
                        let _ = respond.send_response(resp, true);
                    }
                }
            });
        }
    });
    (addr, accepted)
}

#[tokio::test]
async fn a_refused_request_is_sent_once_more_on_a_fresh_connection_unless_it_has_a_body() {
    let dir = tempfile::tempdir().unwrap();
    let cp = control_plane(&dir.path().join("cp"), Duration::from_secs(3600)).await;
    let payments = payments_with_hello(&cp, dir.path(), &[]).await;
    let (once, once_count) = refusing_peer(&payments, 1).await;
    let (always, always_count) = refusing_peer(&payments, usize::MAX).await;
    let (with_body, body_count) = refusing_peer(&payments, 1).await;
    let services = [("once", once), ("always", always), ("body", with_body)];
    let orders = orders_with_registry(&cp, dir.path(), &services, &["--cores", "1"]).await;
    let call = async |host: &str, body: Option<&'static str>| {
        let tcp = TcpStream::connect(orders.outbound_addr).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = Request::post("/")
            .header("host", host)
            .body(http_body_util::Full::new(Bytes::from(body.unwrap_or(""))))
            .unwrap();
        let req = if body.is_none() {
            let (mut parts, _) = req.into_parts();
            parts.method = http::Method::GET;
            Request::from_parts(parts, http_body_util::Full::new(Bytes::new()))
        } else {
            req
        };
        sender.send_request(req).await.unwrap().status()
    };
    // Refused on the first connection, answered on the second.
    assert_eq!(call("once", None).await, StatusCode::OK);
    assert_eq!(once_count.load(Ordering::SeqCst), 2);
    // Sent once more, never twice.
    assert_eq!(call("always", None).await, StatusCode::BAD_GATEWAY);
    assert_eq!(always_count.load(Ordering::SeqCst), 2);
    // A body already handed to the connection is not replayed.
    assert_eq!(
        call("body", Some("charge 10")).await,
        StatusCode::BAD_GATEWAY
    );
    assert_eq!(body_count.load(Ordering::SeqCst), 1);
    orders.shutdown().await;
    payments.shutdown().await;
    cp.shutdown().await;
}

#[tokio::test]
async fn the_pool_closes_its_idle_connections_before_the_peer_would() {
    // orders' --idle-timeout is 1 s: its pool closes a connection idle for 0.9 s, before a
    // peer with the same setting would (payments keeps the default 5 minutes here, so any
    // close seen is orders' own).
    let dir = tempfile::tempdir().unwrap();
    let cp = control_plane(&dir.path().join("cp"), Duration::from_secs(3600)).await;
    let payments = payments_with_hello(&cp, dir.path(), &[]).await;
    let orders = orders_with_registry(
        &cp,
        dir.path(),
        &[("payments", payments.inbound_addr)],
        &["--idle-timeout", "1s", "--cores", "1"],
    )
    .await;
    let open = async |s: &RunningSidecar, direction: &str| {
        let (_, metrics) = support::admin_get(s, "/metrics").await;
        let series = format!("palisade_proxy_open_connections{{direction=\"{direction}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(series.as_str()))
            .map_or(0.0, |v| v.parse::<f64>().unwrap())
    };
    let call = async || {
        let tcp = TcpStream::connect(orders.outbound_addr).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .unwrap();
        tokio::spawn(conn);
        let resp = sender
            .send_request(get("/", Some("payments")))
            .await
            .unwrap();
        let status = resp.status();
        resp.into_body().collect().await.unwrap();
        status
    };
    assert_eq!(call().await, StatusCode::OK);
    assert_eq!(open(&orders, "outbound").await, 1.0);
    // Used within the idle time, it stays.
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(call().await, StatusCode::OK);
        assert_eq!(open(&orders, "outbound").await, 1.0);
    }
    let idle = Instant::now();
    support::wait_until(
        "orders closed its idle connection",
        Duration::from_secs(5),
        async || open(&payments, "inbound").await == 0.0,
    )
    .await;
    let closed_after = idle.elapsed();
    assert!(
        closed_after >= Duration::from_millis(800),
        "{closed_after:?}"
    );
    assert_eq!(open(&orders, "outbound").await, 0.0);
    // And the next call opens a new one.
    assert_eq!(call().await, StatusCode::OK);
    orders.shutdown().await;
    payments.shutdown().await;
    cp.shutdown().await;
}
