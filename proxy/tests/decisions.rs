//! The durable decision log end to end: a sidecar process killed with SIGKILL under load
//! loses no decision whose response reached the client, its spool, continued after the
//! restart, verifies clean with the trust bundle alone, and every decision in it reaches
//! the control plane's store exactly once.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::Response;
use hyper_util::rt::TokioIo;
use palisade_contract::TrustDomain;
use palisade_contract::decisions::verify::verify_dir;
use palisade_contract::decisions::{Line, segments};
use palisade_contract::tls::TrustBundle;
use support::{SidecarFiles, control_plane, sidecar_files, start_ready, wait_until};
use tokio::net::{TcpListener, TcpStream};

/// An application answering 200 to everything.
async fn app() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from("ok"))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    addr
}

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// The flags every sidecar process of these tests gets: its control plane, trust, token,
/// identity cache, and the outbound listener the test calls (the others on any port).
fn process_flags(
    cp: SocketAddr,
    bundle: &Path,
    files: &SidecarFiles,
    outbound: SocketAddr,
) -> Vec<String> {
    let path = |p: &Path| p.display().to_string();
    [
        "--control-plane".into(),
        cp.to_string(),
        "--ca-bundle".into(),
        path(bundle),
        "--token-file".into(),
        path(&files.token),
        "--identity-dir".into(),
        path(&files.cache),
        "--admin-listen".into(),
        "127.0.0.1:0".into(),
        "--inbound-listen".into(),
        "127.0.0.1:0".into(),
        "--outbound-listen".into(),
        outbound.to_string(),
    ]
    .into()
}

/// The orders sidecar as its own process, with its decision directory.
fn orders_process(
    cp: SocketAddr,
    bundle: &Path,
    files: &SidecarFiles,
    outbound: SocketAddr,
    registry: &Path,
    decisions: &Path,
    log: &Path,
) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Command::new(env!("CARGO_BIN_EXE_palisade-proxy"))
        .args(process_flags(cp, bundle, files, outbound))
        .args(["--registry-file", &registry.display().to_string()])
        .args(["--decision-dir", &decisions.display().to_string()])
        .args(["--audit-log", &files.audit.display().to_string()])
        .args(["--decision-checkpoint-interval", "200ms"])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

/// GET /item through the orders sidecar over one kept-alive connection until it fails;
/// every 200 that arrives is counted.
async fn client(outbound: SocketAddr, received: Arc<AtomicU64>, stop: Arc<AtomicBool>) {
    let Ok(tcp) = TcpStream::connect(outbound).await else {
        return;
    };
    let Ok((mut sender, conn)) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await
    else {
        return;
    };
    tokio::spawn(conn);
    while !stop.load(Ordering::SeqCst) {
        let req = http::Request::builder()
            .uri("/item")
            .header(http::header::HOST, "payments")
            .body(Empty::<Bytes>::new())
            .unwrap();
        // An HTTP/1 connection takes the next request only once the last exchange is
        // done on its side too.
        if sender.ready().await.is_err() {
            return;
        }
        let Ok(response) = sender.send_request(req).await else {
            return;
        };
        let status = response.status();
        if response.into_body().collect().await.is_err() {
            return;
        }
        if status == 200 {
            received.fetch_add(1, Ordering::SeqCst);
        }
    }
}

async fn status_through(outbound: SocketAddr) -> Option<u16> {
    let tcp = TcpStream::connect(outbound).await.ok()?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .ok()?;
    tokio::spawn(conn);
    let req = http::Request::builder()
        .uri("/item")
        .header(http::header::HOST, "payments")
        .body(Empty::<Bytes>::new())
        .unwrap();
    Some(sender.send_request(req).await.ok()?.status().as_u16())
}

/// Decision records in the spool that answered 200.
fn forwarded_in_spool(dir: &Path) -> u64 {
    spool_lines(dir)
        .iter()
        .filter(|l| {
            l.record.as_ref().is_some_and(|r| {
                serde_json::from_str::<serde_json::Value>(r.get()).unwrap()["status"] == 200
            })
        })
        .count() as u64
}

/// An unlabelled sample in a sidecar's `/metrics` text.
fn sidecar_metric(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {metrics}"))
}

fn spool_lines(dir: &Path) -> Vec<Line> {
    let mut out = Vec::new();
    for segment in segments(dir).unwrap() {
        for line in std::fs::read_to_string(segment).unwrap().lines() {
            out.push(serde_json::from_str(line).unwrap());
        }
    }
    out
}

/// Every sidecar decision in the control plane's store (`GET /v1/decisions`, page by
/// page), as (instance, seq, status).
async fn central_decisions(admin: SocketAddr, token: &str) -> Vec<(String, i64, u64)> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = "/v1/decisions?limit=1000".to_owned();
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let (status, body) = support::http_get(admin, &path, Some(token)).await;
        assert_eq!(status, 200, "{body}");
        let page: serde_json::Value = serde_json::from_str(&body).unwrap();
        for item in page["items"].as_array().unwrap() {
            // The sidecars' decisions, not the control plane's own (its issuances).
            if item["record"]["direction"] == "control-plane" {
                continue;
            }
            out.push((
                item["instance"].as_str().unwrap().to_owned(),
                item["seq"].as_i64().unwrap(),
                item["record"]["status"].as_u64().unwrap_or_default(),
            ));
        }
        match page["next"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return out,
        }
    }
}

/// The central store holds `made` decisions of one instance, each once.
fn stored_once(central: &[(String, i64, u64)], made: usize) {
    let mut seqs: Vec<i64> = central.iter().map(|(_, seq, _)| *seq).collect();
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs.len(), made, "each decision once");
    assert_eq!(central.len(), made, "nothing stored twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_sidecar_loses_no_decision_a_client_saw_and_its_log_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let cp = control_plane(&dir.path().join("cp"), Duration::from_secs(3600)).await;
    let bundle = dir.path().join("cp/trust-bundle.pem");
    let app = app().await;
    let payments_files = sidecar_files(&cp, dir.path(), "payments").await;
    let payments = start_ready(
        &cp,
        bundle.clone(),
        &payments_files,
        &["--app", &app.to_string(), "--default-mode", "allow"],
    )
    .await;
    let registry = dir.path().join("registry.yaml");
    std::fs::write(
        &registry,
        format!(
            "apiVersion: palisade.dev/v1\nkind: Service\nmetadata: {{ name: payments, namespace: shop }}\nspec: {{ identity: \"spiffe://palisade.local/ns/shop/sa/payments\", endpoints: [\"{}\"] }}\n",
            payments.inbound_addr
        ),
    )
    .unwrap();
    let files = sidecar_files(&cp, dir.path(), "orders").await;
    let (outbound, decisions, log) = (
        free_port(),
        dir.path().join("orders-decisions"),
        dir.path().join("orders.log"),
    );
    let start = || {
        orders_process(
            cp.sidecar_addr,
            &bundle,
            &files,
            outbound,
            &registry,
            &decisions,
            &log,
        )
    };
    let mut orders = start();
    wait_until("orders forwards", Duration::from_secs(20), async || {
        status_through(outbound).await == Some(200)
    })
    .await;

    // Load from 8 connections, then SIGKILL mid-stream.
    let received = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..8)
        .map(|_| tokio::spawn(client(outbound, received.clone(), stop.clone())))
        .collect();
    wait_until("load is flowing", Duration::from_secs(20), async || {
        received.load(Ordering::SeqCst) > 300
    })
    .await;
    orders.kill().unwrap();
    orders.wait().unwrap();
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.unwrap();
    }
    // One answered before the load, the rest during it.
    let seen = received.load(Ordering::SeqCst) + 1;
    let recorded = forwarded_in_spool(&decisions);
    assert!(
        recorded >= seen,
        "the clients received {seen} responses, the spool holds {recorded} forwarded decisions"
    );

    // Restarted on the same directory: the chain goes on; a clean stop signs it.
    let mut orders = start();
    wait_until(
        "orders forwards again",
        Duration::from_secs(20),
        async || status_through(outbound).await == Some(200),
    )
    .await;
    // While it runs, what it decided reaches the store (the decisions from before the kill
    // too, resent from the acknowledged position).
    let token = std::fs::read_to_string(&cp.admin_token_path).unwrap();
    let token = token.trim();
    let before_stop = spool_lines(&decisions)
        .iter()
        .filter(|l| l.record.is_some())
        .count();
    let waited = std::time::Instant::now();
    wait_until(
        "the store has the spool's decisions",
        Duration::from_secs(20),
        async || central_decisions(cp.admin_addr, token).await.len() >= before_stop,
    )
    .await;
    eprintln!(
        "{before_stop} decisions stored centrally {:?} after the restarted sidecar answered",
        waited.elapsed()
    );
    let status = Command::new("kill")
        .args(["-TERM", &orders.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(orders.wait().unwrap().success());
    assert!(forwarded_in_spool(&decisions) > recorded);
    let td = TrustDomain::parse("palisade.local").unwrap();
    let bundle = TrustBundle::from_pem(td, &std::fs::read(&bundle).unwrap()).unwrap();
    let (reports, rest) = verify_dir(&decisions, &bundle).unwrap();
    assert!(rest.is_empty(), "{rest:?}");

    // Central: every decision of the spool, once (the kill lost acknowledgements, so some
    // batches went twice), the last ones shipped at the clean stop.
    let central = central_decisions(cp.admin_addr, token).await;
    let in_spool: Vec<(String, i64)> = spool_lines(&decisions)
        .into_iter()
        .filter(|l| l.record.is_some())
        .map(|l| (l.instance, l.seq as i64))
        .collect();
    let mut keys: Vec<(String, i64)> = central.iter().map(|(i, s, _)| (i.clone(), *s)).collect();
    keys.sort();
    let distinct = keys.len();
    keys.dedup();
    assert_eq!(distinct, keys.len(), "no decision is stored twice");
    let mut expected = in_spool.clone();
    expected.sort();
    assert_eq!(
        keys,
        expected,
        "the store holds exactly the spool's decisions; the sidecar said: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let forwarded = central
        .iter()
        .filter(|(_, _, status)| *status == 200)
        .count() as u64;
    assert!(
        forwarded >= seen,
        "the clients saw {seen} responses, the store holds {forwarded}"
    );
    let shipped: u64 = std::fs::read_to_string(decisions.join("shipped"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(
        shipped,
        spool_lines(&decisions).len() as u64,
        "everything acknowledged"
    );
    assert_eq!(reports.len(), 1, "{reports:?}");
    let report = &reports[0];
    assert!(report.clean(), "{:?}", report.findings);
    assert_eq!(report.unsigned, 0, "the clean stop signed everything");
    assert_eq!(
        report.signer.as_deref(),
        Some("spiffe://palisade.local/ns/shop/sa/orders")
    );
    payments.shutdown().await;
    cp.shutdown().await;
}

/// GETs through `sidecar`'s outbound listener to a host no registry knows (each one a
/// decision: 502) until `stop` says so; the statuses.
async fn until_status(sidecar: SocketAddr, mut stop: impl FnMut(u16) -> bool) -> Vec<u16> {
    let tcp = TcpStream::connect(sidecar).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut statuses = Vec::new();
    loop {
        let req = http::Request::builder()
            .uri("/fill")
            .header(http::header::HOST, "nowhere")
            .body(Empty::<Bytes>::new())
            .unwrap();
        // An HTTP/1 connection takes the next request only once the last exchange is
        // done on its side too.
        if sender.ready().await.is_err() {
            statuses.push(0);
            return statuses;
        }
        let Ok(response) = sender.send_request(req).await else {
            // The connection ended (the caller's assertions say whether that is right).
            statuses.push(0);
            return statuses;
        };
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        statuses.push(status);
        if stop(status) {
            if status == 503 {
                let body = String::from_utf8_lossy(&body);
                assert!(body.contains("the decision log is full"), "{body}");
            }
            return statuses;
        }
        assert!(statuses.len() < 100_000, "the spool never filled");
    }
}

#[tokio::test]
async fn a_full_spool_refuses_with_the_reason_or_drops_into_a_gap_verify_reports() {
    let dir = tempfile::tempdir().unwrap();
    let cp = control_plane(&dir.path().join("cp"), Duration::from_secs(3600)).await;
    let bundle_path = dir.path().join("cp/trust-bundle.pem");
    let td = TrustDomain::parse("palisade.local").unwrap();
    let bundle = TrustBundle::from_pem(td, &std::fs::read(&bundle_path).unwrap()).unwrap();
    for (name, overflow) in [("refusing", "refuse"), ("dropping", "drop")] {
        let files = sidecar_files(&cp, dir.path(), name).await;
        let spool = dir.path().join(format!("{name}-decisions"));
        let sidecar = start_ready(
            &cp,
            bundle_path.clone(),
            &files,
            &[
                "--decision-dir",
                spool.to_str().unwrap(),
                "--decision-spool-max",
                "1MiB",
                "--decision-overflow",
                overflow,
                "--decision-ship",
                "off",
            ],
        )
        .await;
        let (_, metrics) = support::admin_get(&sidecar, "/metrics").await;
        let counter = |metrics: &str, name: &str| -> u64 {
            metrics
                .lines()
                .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
                .unwrap_or_default()
        };
        assert_eq!(
            counter(&metrics, "palisade_proxy_decision_log_full_refusals_total"),
            0
        );
        if overflow == "refuse" {
            // Filled up, then 503 with the reason, for every new request.
            let statuses = until_status(sidecar.outbound_addr, |s| s == 503).await;
            assert!(statuses[..statuses.len() - 1].iter().all(|s| *s == 502));
            let again = until_status(sidecar.outbound_addr, |_| true).await;
            assert_eq!(again, [503]);
            let (_, metrics) = support::admin_get(&sidecar, "/metrics").await;
            assert_eq!(
                counter(&metrics, "palisade_proxy_decision_log_full_refusals_total"),
                2
            );
            sidecar.shutdown().await;
            let (reports, _) = verify_dir(&spool, &bundle).unwrap();
            let r = &reports[0];
            assert!(r.clean(), "{:?}", r.findings);
            assert_eq!(r.dropped, 2, "the two refusals, in a gap: {r:?}");
        } else {
            // Traffic goes on; once full, decisions go into a gap, counted.
            let mut full_after = None;
            let spool_dir = spool.clone();
            let statuses = until_status(sidecar.outbound_addr, |_| {
                let size: u64 = segments(&spool_dir)
                    .unwrap()
                    .iter()
                    .map(|p| std::fs::metadata(p).unwrap().len())
                    .sum();
                if size >= 1 << 20 && full_after.is_none() {
                    full_after = Some(0);
                }
                match &mut full_after {
                    Some(n) if *n == 50 => true,
                    Some(n) => {
                        *n += 1;
                        false
                    }
                    None => false,
                }
            })
            .await;
            assert!(statuses.iter().all(|s| *s == 502), "drop never refuses");
            let (_, metrics) = support::admin_get(&sidecar, "/metrics").await;
            let dropped = counter(&metrics, "palisade_proxy_decision_records_dropped_total");
            assert!((50..=51).contains(&dropped), "{dropped}");
            sidecar.shutdown().await;
            // The shutdown's checkpoint wrote the gap: verify names exactly those.
            let (reports, _) = verify_dir(&spool, &bundle).unwrap();
            let r = &reports[0];
            assert!(r.clean(), "{:?}", r.findings);
            assert_eq!(r.dropped, dropped);
            assert_eq!(r.decisions + r.dropped, statuses.len() as u64);
        }
    }
    cp.shutdown().await;
}

/// The sidecar as its own process, its decision directory on a tmpfs of `size` mounted in
/// a mount namespace of its own (nothing leaks into the test's); when it exits, the spool
/// is copied to `copy`. Returns the `sh` wrapper and the file its pid is written to.
#[allow(clippy::too_many_arguments)]
fn on_small_tmpfs(
    cp: SocketAddr,
    bundle: &Path,
    files: &SidecarFiles,
    outbound: SocketAddr,
    size: &str,
    mount: &Path,
    copy: &Path,
    pid_file: &Path,
) -> Child {
    std::fs::create_dir_all(mount).unwrap();
    std::fs::create_dir_all(copy).unwrap();
    let script = format!(
        "exec 1>&2; mount -t tmpfs -o size={size},mode=0700 tmpfs {mount} || exit 99; \
         \"$0\" \"$@\" & echo $! > {pid}; wait $!; status=$?; cp -a {mount}/. {copy}/; exit $status",
        mount = mount.display(),
        copy = copy.display(),
        pid = pid_file.display(),
    );
    Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .arg(env!("CARGO_BIN_EXE_palisade-proxy"))
        .args(process_flags(cp, bundle, files, outbound))
        .args(["--decision-dir", &mount.join("spool").display().to_string()])
        .args(["--decision-ship", "off", "--audit-log", "/dev/null"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_an_error_at_start_and_the_overflow_rule_at_run_time() {
    let dir = tempfile::tempdir().unwrap();
    let cp = control_plane(&dir.path().join("cp"), Duration::from_secs(3600)).await;
    let bundle_path = dir.path().join("cp/trust-bundle.pem");

    // 2 MiB free at start: refused, saying why.
    let files = sidecar_files(&cp, dir.path(), "cramped").await;
    let child = on_small_tmpfs(
        cp.sidecar_addr,
        &bundle_path,
        &files,
        free_port(),
        "2m",
        &dir.path().join("small"),
        &dir.path().join("small-copy"),
        &dir.path().join("small.pid"),
    );
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(
        out.status.code(),
        Some(99),
        "mounting the tmpfs failed: {stderr}"
    );
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("bytes are free there"), "{stderr}");

    // 8 MiB: it starts; once the disk is nearly full, new requests get 503 with the reason,
    // and the log written until then verifies, the refusals in a gap.
    let files = sidecar_files(&cp, dir.path(), "filling").await;
    let outbound = free_port();
    let (mount, copy, pid_file) = (
        dir.path().join("tmpfs"),
        dir.path().join("tmpfs-copy"),
        dir.path().join("tmpfs.pid"),
    );
    let mut child = on_small_tmpfs(
        cp.sidecar_addr,
        &bundle_path,
        &files,
        outbound,
        "8m",
        &mount,
        &copy,
        &pid_file,
    );
    wait_until("the sidecar answers", Duration::from_secs(20), async || {
        status_through(outbound).await.is_some()
    })
    .await;
    let statuses = until_status(outbound, |s| s == 503).await;
    let pid = std::fs::read_to_string(&pid_file).unwrap();
    let killed = Command::new("kill")
        .args(["-TERM", pid.trim()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(status.success(), "{stderr}");
    assert_eq!(statuses.last(), Some(&503), "{statuses:?} {stderr}");
    assert!(
        statuses.len() > 1000,
        "{} requests before the disk filled: {stderr}",
        statuses.len()
    );
    assert!(stderr.contains("nearly out of space"), "{stderr}");
    let td = TrustDomain::parse("palisade.local").unwrap();
    let bundle = TrustBundle::from_pem(td, &std::fs::read(&bundle_path).unwrap()).unwrap();
    let (reports, rest) = verify_dir(&copy.join("spool"), &bundle).unwrap();
    assert!(rest.is_empty(), "{rest:?}");
    let r = &reports[0];
    assert!(r.clean(), "{:?}", r.findings);
    assert_eq!(r.dropped, 1, "the one refusal: {r:?}");
    // The answered probes before the load, too.
    assert!(r.decisions + r.dropped > statuses.len() as u64);
    assert_eq!(r.unsigned, 0, "the shutdown's checkpoint fit");
    cp.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_made_while_the_control_plane_is_down_arrive_once_it_is_back() {
    let started = palisade_contract::unix_now() as u64;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("cp");
    let mut config = palisade_control_plane::Config::for_data_dir(data.clone());
    config.sidecar_listen = format!("127.0.0.1:{}", support::free_port())
        .parse()
        .unwrap();
    let cp = palisade_control_plane::start(&config).await.unwrap();
    let bundle = data.join("trust-bundle.pem");
    let token = std::fs::read_to_string(&cp.admin_token_path).unwrap();
    let files = sidecar_files(&cp, dir.path(), "orders").await;
    let spool = dir.path().join("orders-decisions");
    let orders = start_ready(
        &cp,
        bundle,
        &files,
        &["--decision-dir", spool.to_str().unwrap()],
    )
    .await;
    let spooled = || {
        spool_lines(&spool)
            .iter()
            .filter(|l| l.record.is_some())
            .count()
    };
    let mut made = until_status(orders.outbound_addr, |_| true).await.len();
    wait_until(
        "the first decision is stored",
        Duration::from_secs(10),
        async || central_decisions(cp.admin_addr, token.trim()).await.len() == made,
    )
    .await;

    // Down: the sidecar goes on deciding (the 502s of an unknown host), its spool grows.
    cp.shutdown().await;
    let mut n = 0;
    made += until_status(orders.outbound_addr, |_| {
        n += 1;
        n == 500
    })
    .await
    .len();
    assert_eq!(spooled(), made);
    let (_, metrics) = support::admin_get(&orders, "/metrics").await;
    let unshipped = sidecar_metric(&metrics, "palisade_proxy_decision_records_unshipped");
    assert!(unshipped >= 500, "{unshipped} lines wait");
    // The age of the backlog shows: the time the oldest unshipped line was written.
    let oldest = async || {
        let (_, metrics) = support::admin_get(&orders, "/metrics").await;
        sidecar_metric(
            &metrics,
            "palisade_proxy_decision_oldest_unshipped_timestamp_seconds",
        )
    };
    wait_until(
        "the oldest unshipped line is dated",
        Duration::from_secs(20),
        async || oldest().await > 0,
    )
    .await;
    let dated = oldest().await;
    assert!(
        dated >= started && dated <= palisade_contract::unix_now() as u64,
        "{dated}"
    );

    // Back on the same address and data: everything arrives (within the shipper's backoff),
    // each once.
    let cp = palisade_control_plane::start(&config).await.unwrap();
    let back = std::time::Instant::now();
    wait_until(
        "the backlog is stored",
        Duration::from_secs(40),
        async || central_decisions(cp.admin_addr, token.trim()).await.len() >= made,
    )
    .await;
    eprintln!(
        "{made} decisions stored {:?} after the control plane came back",
        back.elapsed()
    );
    wait_until(
        "nothing is left unshipped",
        Duration::from_secs(10),
        async || oldest().await == 0,
    )
    .await;
    stored_once(&central_decisions(cp.admin_addr, token.trim()).await, made);
    orders.shutdown().await;
    cp.shutdown().await;
}

/// Shipping goes on across segment boundaries: with 4 KiB segments (some seven lines each)
/// a batch often ends exactly at a segment's end, whose deletion once left the shipper on
/// a file that was gone, failing every attempt from then on. Every decision arrives once,
/// and only the newest segments are left in the spool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipping_goes_on_across_many_segments_and_deletes_each_once_stored() {
    let dir = tempfile::tempdir().unwrap();
    let cp = control_plane(&dir.path().join("cp"), Duration::from_secs(3600)).await;
    let token = std::fs::read_to_string(&cp.admin_token_path).unwrap();
    let files = sidecar_files(&cp, dir.path(), "orders").await;
    let spool = dir.path().join("orders-decisions");
    let orders = start_ready(
        &cp,
        dir.path().join("cp/trust-bundle.pem"),
        &files,
        &[
            "--decision-dir",
            spool.to_str().unwrap(),
            "--decision-segment-max",
            "4KiB",
        ],
    )
    .await;
    let mut made = 0;
    // In rounds, each waiting until stored, so that batches end at many different places.
    for round in 1..=6 {
        let mut n = 0;
        made += until_status(orders.outbound_addr, |_| {
            n += 1;
            n == 7 * round
        })
        .await
        .len();
        wait_until("the round is stored", Duration::from_secs(10), async || {
            central_decisions(cp.admin_addr, token.trim()).await.len() == made
        })
        .await;
    }
    stored_once(&central_decisions(cp.admin_addr, token.trim()).await, made);
    let (_, metrics) = support::admin_get(&orders, "/metrics").await;
    assert_eq!(
        sidecar_metric(&metrics, "palisade_proxy_decision_ship_errors_total"),
        0,
        "{metrics}"
    );
    let left = segments(&spool).unwrap().len();
    assert!(
        made > 100 && left <= 2,
        "{made} decisions, {left} segments left"
    );
    orders.shutdown().await;
    cp.shutdown().await;
}

/// A kept shipping connection that dies under a batch (here: the relay in front of the
/// control plane drops its connections as soon as they send again, so the connection
/// still looks open when the batch goes) costs no failed attempt: the batch goes at once
/// on a new connection, no ship error is counted, and the decision is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_on_a_dead_kept_connection_is_resent_at_once_on_a_new_one() {
    let dir = tempfile::tempdir().unwrap();
    let cp = control_plane(&dir.path().join("cp"), Duration::from_secs(3600)).await;
    let (token, relay, orders) = orders_behind_relay(&cp, dir.path()).await;
    let mut made = until_status(orders.outbound_addr, |_| true).await.len();
    wait_until(
        "the first decision is stored",
        Duration::from_secs(10),
        async || central_decisions(cp.admin_addr, token.trim()).await.len() == made,
    )
    .await;
    relay.cut.fetch_add(1, Ordering::SeqCst);
    let before = relay.accepted.load(Ordering::SeqCst);
    made += until_status(orders.outbound_addr, |_| true).await.len();
    wait_until(
        "the decision after the cut is stored",
        Duration::from_secs(10),
        async || central_decisions(cp.admin_addr, token.trim()).await.len() == made,
    )
    .await;
    assert!(
        relay.accepted.load(Ordering::SeqCst) > before,
        "the batch went on a new connection"
    );
    let (_, metrics) = support::admin_get(&orders, "/metrics").await;
    assert_eq!(
        sidecar_metric(&metrics, "palisade_proxy_decision_ship_errors_total"),
        0
    );
    stored_once(&central_decisions(cp.admin_addr, token.trim()).await, made);
    orders.shutdown().await;
    cp.shutdown().await;
}

/// The orders sidecar with its spool in `dir/orders-decisions` (and `extra` flags), on the
/// control plane whose data is `dir/cp`: the admin token, the spool, the sidecar.
async fn orders_with_spool(
    cp: &palisade_control_plane::RunningControlPlane,
    dir: &Path,
    extra: &[&str],
) -> (String, std::path::PathBuf, palisade_proxy::RunningSidecar) {
    let token = std::fs::read_to_string(&cp.admin_token_path).unwrap();
    let files = sidecar_files(cp, dir, "orders").await;
    let spool = dir.join("orders-decisions");
    let mut flags = vec!["--decision-dir", spool.to_str().unwrap()];
    flags.extend(extra);
    let orders = start_ready(cp, dir.join("cp/trust-bundle.pem"), &files, &flags).await;
    (token, spool, orders)
}

/// The orders sidecar with its spool, reaching the control plane (data in `dir/cp`)
/// through a [`relay`]: the admin token, the relay, the sidecar.
async fn orders_behind_relay(
    cp: &palisade_control_plane::RunningControlPlane,
    dir: &Path,
) -> (String, Relay, palisade_proxy::RunningSidecar) {
    let token = std::fs::read_to_string(&cp.admin_token_path).unwrap();
    let files = sidecar_files(cp, dir, "orders").await;
    let relay = relay(cp.sidecar_addr).await;
    let spool = dir.join("orders-decisions");
    let config = support::sidecar_config(
        relay.addr,
        dir.join("cp/trust-bundle.pem"),
        &files,
        &["--decision-dir", spool.to_str().unwrap()],
    );
    let orders = palisade_proxy::start(&config).await.unwrap();
    support::wait_ready(&orders).await;
    (token, relay, orders)
}

/// A TCP relay in front of the control plane.
struct Relay {
    addr: SocketAddr,
    /// Connections accepted so far.
    accepted: Arc<AtomicU64>,
    /// Raised by a test: every connection accepted before is dropped the next time its
    /// client sends something (it looks open until then).
    cut: Arc<AtomicU64>,
}

async fn relay(to: SocketAddr) -> Relay {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let relay = Relay {
        addr: listener.local_addr().unwrap(),
        accepted: Arc::new(AtomicU64::new(0)),
        cut: Arc::new(AtomicU64::new(0)),
    };
    let (accepted, cut) = (relay.accepted.clone(), relay.cut.clone());
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            accepted.fetch_add(1, Ordering::SeqCst);
            let (cut, epoch) = (cut.clone(), cut.load(Ordering::SeqCst));
            tokio::spawn(async move {
                let Ok(upstream) = TcpStream::connect(to).await else {
                    return;
                };
                let (mut client_r, mut client_w) = client.into_split();
                let (mut upstream_r, mut upstream_w) = upstream.into_split();
                let up = async {
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        let n = client_r.read(&mut buf).await.unwrap_or(0);
                        if n == 0 || cut.load(Ordering::SeqCst) != epoch {
                            return;
                        }
                        if upstream_w.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                };
                let down = tokio::io::copy(&mut upstream_r, &mut client_w);
                // Whichever ends first ends both: dropping the halves closes the sockets.
                tokio::select! {
                    () = up => {}
                    _ = down => {}
                }
            });
        }
    });
    relay
}

/// The shipper keeps its connection to the control plane between batches: a TLS handshake
/// per batch (one every 200 ms or faster while decisions are made) was most of what
/// shipping cost a sidecar, and would be thousands a second for the control plane of a
/// large mesh. Each decision here waits until it is stored, so each is a batch of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipper_keeps_its_connection_to_the_control_plane_between_batches() {
    let dir = tempfile::tempdir().unwrap();
    let cp = control_plane(&dir.path().join("cp"), Duration::from_secs(3600)).await;
    let (token, relay, orders) = orders_behind_relay(&cp, dir.path()).await;
    let connections = relay.accepted.clone();
    let batches = 10;
    let mut made = 0;
    let mut opened = Vec::new();
    for _ in 0..batches {
        let before = connections.load(Ordering::SeqCst);
        made += until_status(orders.outbound_addr, |_| true).await.len();
        wait_until(
            "the decision is stored",
            Duration::from_secs(10),
            async || central_decisions(cp.admin_addr, token.trim()).await.len() == made,
        )
        .await;
        opened.push(connections.load(Ordering::SeqCst) - before);
    }
    // The first batch may open the connection; the others ride on it (a configuration
    // long poll ending meanwhile may open one more).
    let after_first: u64 = opened[1..].iter().sum();
    assert!(
        after_first <= 1,
        "connections opened per batch: {opened:?} ({batches} batches)"
    );
    stored_once(&central_decisions(cp.admin_addr, token.trim()).await, made);
    orders.shutdown().await;
    cp.shutdown().await;
}

/// A vhost of its own, so closing its connections touches no other test's.
const BROKER_VHOST: &str = "palisade-decisions-test";

fn rabbitmqctl(args: &[&str]) -> String {
    let out = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("rabbitmqctl (scripts/services installs RabbitMQ)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?}: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// Closes every connection of the test's vhost; how many it closed.
fn close_all_connections() -> u64 {
    let out = rabbitmqctl(&[
        "close_all_connections",
        "--vhost",
        BROKER_VHOST,
        "closed by the decisions test",
    ]);
    out.lines()
        .find_map(|l| l.strip_prefix("Closed ")?.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("{out}"))
}

/// A relay to the broker that holds every chunk from it for `delay`: the sidecar's batches
/// wait that long for their confirms, so the broker's closes find one in flight.
async fn slow_relay_to_broker(delay: Duration) -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(broker) = TcpStream::connect("127.0.0.1:5672").await else {
                continue;
            };
            let (mut from_client, mut to_client) = client.into_split();
            let (mut from_broker, mut to_broker) = broker.into_split();
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut from_client, &mut to_broker).await;
            });
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n @ 1..) = from_broker.read(&mut buf).await {
                    tokio::time::sleep(delay).await;
                    if to_client.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_the_broker_connections_closed_mid_stream_lose_and_duplicate_nothing() {
    use lapin::options::{BasicPublishOptions, QueueDeleteOptions};
    use lapin::types::{AMQPValue, FieldTable, ShortString};
    use palisade_contract::decisions::broker;

    rabbitmqctl(&["add_vhost", BROKER_VHOST]);
    rabbitmqctl(&[
        "set_permissions",
        "-p",
        BROKER_VHOST,
        "guest",
        ".*",
        ".*",
        ".*",
    ]);
    let url = format!("amqp://guest:guest@127.0.0.1:5672/{BROKER_VHOST}");
    let relay = slow_relay_to_broker(Duration::from_millis(250)).await;
    let sidecar_url = format!("amqp://guest:guest@{relay}/{BROKER_VHOST}");
    let queue = format!(
        "decisions-{}",
        palisade_control_plane::tokens::random_id().unwrap()
    );

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("cp");
    let mut config = palisade_control_plane::Config::for_data_dir(data.clone());
    config.decision_broker = Some(url.clone());
    config.decision_queue = queue.clone();
    let cp = palisade_control_plane::start(&config).await.unwrap();
    let (token, _, orders) = orders_with_spool(
        &cp,
        dir.path(),
        &["--decision-ship", &sidecar_url, "--decision-queue", &queue],
    )
    .await;

    // Whoever can publish to the queue cannot add to a log: a batch with a forged
    // signature is refused (and does not block the queue).
    let (conn, channel) = broker::open(&url, &queue, true, 0).await.unwrap();
    let mut forged = FieldTable::default();
    for (k, v) in [
        (broker::INSTANCE_HEADER, "forged"),
        (
            broker::SHIPPER_HEADER,
            "spiffe://palisade.local/ns/shop/sa/orders",
        ),
        (broker::SIGNATURE_HEADER, "eyJhbGciOiJFUzI1NiJ9..AAAA"),
    ] {
        forged.insert(k.into(), AMQPValue::LongString(v.into()));
    }
    let body = br#"{"v":1,"instance":"forged","seq":0}"#.to_vec();
    channel
        .basic_publish(
            ShortString::from(""),
            ShortString::from(queue.as_str()),
            BasicPublishOptions::default(),
            &[body, b"\n".to_vec()].concat(),
            lapin::BasicProperties::default().with_headers(forged),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    conn.close(200, "done".into()).await.unwrap();

    // Load, while the broker closes every connection of the vhost three times: the
    // sidecar's publisher and the control plane's consumer both start over.
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        let outbound = orders.outbound_addr;
        tokio::spawn(async move { until_status(outbound, |_| stop.load(Ordering::SeqCst)).await })
    };
    let mut closed = 0;
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(1200)).await;
        closed += tokio::task::spawn_blocking(close_all_connections)
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    let made = load.await.unwrap().len();
    eprintln!("{made} decisions, {closed} connections closed");
    assert!(
        closed >= 3,
        "the closes met the connections ({closed} closed)"
    );
    assert!(made > 100, "{made} decisions under load");

    wait_until(
        "every decision is stored through the broker",
        Duration::from_secs(60),
        async || central_decisions(cp.admin_addr, token.trim()).await.len() >= made,
    )
    .await;
    stored_once(&central_decisions(cp.admin_addr, token.trim()).await, made);
    let (_, integrity) =
        support::http_get(cp.admin_addr, "/v1/decisions/integrity", Some(token.trim())).await;
    let integrity: serde_json::Value = serde_json::from_str(&integrity).unwrap();
    for instance in integrity["instances"].as_array().unwrap() {
        assert_eq!(instance["findings"], serde_json::json!([]), "{instance}");
    }
    let (_, metrics) = support::admin_get(&orders, "/metrics").await;
    let ship_errors = sidecar_metric(&metrics, "palisade_proxy_decision_ship_errors_total");
    assert!(ship_errors >= 1, "a close met a batch in flight");
    let (_, metrics) = support::http_get(cp.metrics_addr, "/metrics", None).await;
    assert!(
        metrics.contains(r#"palisade_decision_batches_refused_total{reason="signature"} 1"#),
        "{metrics}"
    );
    assert!(
        !metrics.contains("palisade_decision_findings_total{"),
        "no integrity findings: {metrics}"
    );

    orders.shutdown().await;
    cp.shutdown().await;
    let (conn, channel) = broker::open(&url, &queue, false, 0).await.unwrap();
    channel
        .queue_delete(
            ShortString::from(queue.as_str()),
            QueueDeleteOptions::default(),
        )
        .await
        .unwrap();
    conn.close(200, "done".into()).await.unwrap();
}
