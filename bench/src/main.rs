//! Palisade's benchmark harness: Palisade against no proxy, on one machine, in one run.
//!
//! `palisade-bench run` starts the real binaries (control plane, two sidecars, an upstream
//! application) on loopback, drives them with its own load generator, and writes a results
//! table (Markdown and JSON). Scenarios so far:
//! - HTTP/1.1 with 1 KiB responses, direct (client -> app) and through Palisade (client ->
//!   outbound sidecar -> mTLS -> inbound sidecar evaluating an ALLOW policy -> app):
//!   throughput at fixed concurrency (closed loop), and latency percentiles at a fixed
//!   offered rate measured open loop (each request's latency counts from when it was due,
//!   so a slow response cannot hide the requests queued behind it).
//! - Sidecar footprint: resident memory idle and at peak, CPU seconds per 10,000 requests.
//! - Policy evaluation: time per decision with 10, 1,000 and 100,000 rules in the mesh.
//! - Policy propagation: time from an API change until 100 and 1,000 simulated sidecars
//!   (long polls on the configuration endpoint, over mTLS with a real sidecar's
//!   certificate) have received it.
//!
//! `--smoke` runs each scenario for a moment, so CI keeps the harness working; the numbers
//! of a smoke run mean nothing.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Parser)]
#[command(name = "palisade-bench", about = "Palisade's benchmark harness")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// The upstream application: 1 KiB responses over HTTP/1.1.
    App {
        #[arg(long)]
        listen: SocketAddr,
    },
    /// Run every scenario and write the results.
    Run {
        /// Where the palisade binaries are (target/release).
        #[arg(long)]
        bin_dir: PathBuf,
        /// Where results.md and results.json go.
        #[arg(long, default_value = "bench-results")]
        out: PathBuf,
        /// A moment per scenario (for CI); the numbers mean nothing.
        #[arg(long)]
        smoke: bool,
        /// Connections for the throughput runs.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// Offered rate for the latency runs (requests per second).
        #[arg(long, default_value_t = 2000)]
        rate: u64,
    },
}

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match Cli::parse().command {
        Cmd::App { listen } => runtime.block_on(app(listen)),
        Cmd::Run {
            bin_dir,
            out,
            smoke,
            concurrency,
            rate,
        } => runtime.block_on(run(&bin_dir, &out, smoke, concurrency, rate)),
    }
}

async fn app(listen: SocketAddr) -> anyhow::Result<()> {
    let body = Bytes::from(vec![b'x'; 1024]);
    let listener = TcpListener::bind(listen).await?;
    loop {
        let (tcp, _) = listener.accept().await?;
        let _ = tcp.set_nodelay(true);
        let body = body.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |_req: Request<Incoming>| {
                let body = body.clone();
                async move { Ok::<_, Infallible>(Response::new(Full::new(body))) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}

/// Child processes, killed when dropped.
struct Procs(Vec<(String, Child)>);

impl Drop for Procs {
    fn drop(&mut self) {
        for (_, c) in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Procs {
    fn spawn(
        &mut self,
        name: &str,
        program: &Path,
        args: &[String],
        log: &Path,
    ) -> anyhow::Result<u32> {
        let child = Command::new(program)
            .args(args)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log)?)
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        let pid = child.id();
        self.0.push((name.to_owned(), child));
        Ok(pid)
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

async fn get_status(addr: SocketAddr, host: &str, path: &str) -> Option<u16> {
    let tcp = TcpStream::connect(addr).await.ok()?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .ok()?;
    tokio::spawn(conn);
    let req = Request::get(path)
        .header("host", host)
        .body(Empty::<Bytes>::new())
        .ok()?;
    let resp = sender.send_request(req).await.ok()?;
    let status = resp.status().as_u16();
    let _ = resp.into_body().collect().await;
    Some(status)
}

async fn wait_status(addr: SocketAddr, host: &str, path: &str, want: u16) -> anyhow::Result<()> {
    for _ in 0..200 {
        if get_status(addr, host, path).await == Some(want) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("{addr}{path} never answered {want}")
}

/// (resident KiB now, peak resident KiB) of a process.
fn memory(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// CPU seconds (user + system) a process has used.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the file, 12 and 13 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

/// A keep-alive HTTP/1.1 connection.
async fn connect(
    addr: SocketAddr,
) -> anyhow::Result<hyper::client::conn::http1::SendRequest<Empty<Bytes>>> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

async fn one(
    sender: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    host: &str,
) -> anyhow::Result<()> {
    sender.ready().await?;
    let req = Request::get("/item")
        .header("host", host)
        .body(Empty::new())?;
    let resp = sender.send_request(req).await?;
    if !resp.status().is_success() {
        bail!("status {}", resp.status());
    }
    resp.into_body().collect().await?;
    Ok(())
}

/// Closed loop: `concurrency` connections, each sending as fast as answered, for `duration`.
async fn throughput(
    addr: SocketAddr,
    host: &str,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<(f64, u64)> {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let mut sender = connect(addr).await?;
        let (stop, done, errors, host) =
            (stop.clone(), done.clone(), errors.clone(), host.to_owned());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match one(&mut sender, &host).await {
                    Ok(()) => done.fetch_add(1, Ordering::Relaxed),
                    Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let n = done.load(Ordering::Relaxed);
    Ok((
        n as f64 / started.elapsed().as_secs_f64(),
        errors.load(Ordering::Relaxed),
    ))
}

/// Open loop at `rate` requests per second for `duration`: latency from when each request
/// was due. Returns (p50, p99, p99.9) in milliseconds, and errors.
async fn latency(
    addr: SocketAddr,
    host: &str,
    rate: u64,
    duration: Duration,
) -> anyhow::Result<([f64; 3], u64)> {
    // Enough connections that the pool is never the bottleneck at this rate.
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    for _ in 0..64 {
        tx.send(connect(addr).await?).ok();
    }
    let pool = Arc::new(tokio::sync::Mutex::new(rx));
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let total = (rate as f64 * duration.as_secs_f64()) as u64;
    let started = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        let due = started + interval * i as u32;
        tokio::time::sleep_until(due).await;
        let (pool, tx, host) = (pool.clone(), tx.clone(), host.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut sender = pool
                .lock()
                .await
                .recv()
                .await
                .expect("pool never empties for good");
            let ok = one(&mut sender, &host).await.is_ok();
            let took = due.elapsed();
            let _ = tx.send(sender);
            (took, ok)
        }));
    }
    let mut samples = Vec::with_capacity(tasks.len());
    let mut errors = 0;
    for t in tasks {
        let (took, ok) = t.await?;
        if ok {
            samples.push(took.as_secs_f64() * 1000.0);
        } else {
            errors += 1;
        }
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| {
        samples
            .get(((samples.len() as f64 * p) as usize).min(samples.len().saturating_sub(1)))
            .copied()
            .unwrap_or(f64::NAN)
    };
    Ok(([pct(0.50), pct(0.99), pct(0.999)], errors))
}

/// `watchers` long polls on the configuration endpoint, then one policy applied through the
/// admin API: milliseconds until each poll answered with the new version, sorted.
async fn propagation(
    cp: SocketAddr,
    admin: SocketAddr,
    admin_token: &str,
    identity_dir: &Path,
    watchers: usize,
    round: usize,
) -> anyhow::Result<Vec<f64>> {
    use palisade_contract::tls::{
        ExpectedServer, IdentitySlot, TrustBundle, WorkloadIdentity, client_config,
        server_name_for, shared_bundle,
    };
    let td = palisade_contract::TrustDomain::parse("palisade.local")?;
    let identity = WorkloadIdentity::from_pem(
        &std::fs::read(identity_dir.join("cert.pem"))?,
        &std::fs::read(identity_dir.join("key.pem"))?,
    )?;
    let bundle =
        TrustBundle::from_pem(td.clone(), &std::fs::read(identity_dir.join("bundle.pem"))?)?;
    let slot = IdentitySlot::new();
    slot.set(identity);
    let server = palisade_contract::identity_api::control_plane_id(&td);
    let tls = Arc::new(client_config(
        Some(slot),
        shared_bundle(bundle),
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

/// Time per decision with `rules` rules spread over the mesh (10 per policy, one policy per
/// service, 100 services per namespace), the evaluated workload holding one policy.
fn policy_eval(rules: usize, iterations: u64) -> f64 {
    use palisade_contract::policy::{
        DefaultMode, PolicySet, Request as Authz, Workload, parse_documents,
    };
    let policies = rules.div_ceil(10);
    let mut all = Vec::with_capacity(policies);
    for p in 0..policies {
        let mut text = String::new();
        let (ns, svc) = (format!("ns{}", p / 100), format!("svc{}", p % 100));
        text.push_str(&format!(
            "apiVersion: palisade.dev/v1\nkind: AuthorizationPolicy\nmetadata: {{ name: p{p}, namespace: {ns} }}\n\
             spec:\n  selector: {{ service: {svc} }}\n  rules:\n"
        ));
        for r in 0..10 {
            text.push_str(&format!(
                "    - from: [ {{ principals: [\"spiffe://palisade.local/ns/{ns}/sa/caller{r}\"] }} ]\n      to: [ {{ methods: [\"GET\"], paths: [\"/items/{r}/*\"] }} ]\n"
            ));
        }
        all.extend(
            parse_documents(&text)
                .expect("generated policies are valid")
                .authorization,
        );
    }
    let set = PolicySet::new(&all, 1, DefaultMode::Deny);
    let source =
        palisade_contract::SpiffeId::parse("spiffe://palisade.local/ns/ns0/sa/caller9").unwrap();
    let headers = http::HeaderMap::new();
    let request = Authz {
        source: Some(&source),
        request_principal: None,
        claims: None,
        method: "GET",
        path: "/items/9/42",
        port: 8080,
        headers: &headers,
        l4: false,
        amqp: None,
    };
    let workload = Workload {
        namespace: "ns0",
        service: "svc0",
    };
    assert_eq!(
        set.evaluate(&workload, &request).verdict,
        palisade_contract::policy::Verdict::Allow
    );
    let started = Instant::now();
    for _ in 0..iterations {
        std::hint::black_box(set.evaluate(
            std::hint::black_box(&workload),
            std::hint::black_box(&request),
        ));
    }
    started.elapsed().as_nanos() as f64 / iterations as f64
}

async fn run(
    bin_dir: &Path,
    out: &Path,
    smoke: bool,
    concurrency: usize,
    rate: u64,
) -> anyhow::Result<()> {
    let dur = if smoke {
        Duration::from_millis(500)
    } else {
        Duration::from_secs(10)
    };
    let rate = if smoke { rate.min(200) } else { rate };
    let work = std::env::temp_dir().join(format!("palisade-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let mut procs = Procs(Vec::new());
    let bin = |name: &str| bin_dir.join(name);
    let me = std::env::current_exe()?;
    let mut results: Vec<Value> = Vec::new();
    let mut md = String::new();

    // Policy evaluation, in process.
    md.push_str("| policy evaluation | rules in the mesh | ns per decision |\n|---|---:|---:|\n");
    for rules in [10, 1_000, 100_000] {
        let iterations = if smoke { 10_000 } else { 2_000_000 };
        let ns = policy_eval(rules, iterations);
        md.push_str(&format!(
            "| HTTP request, allowed by rule 9 of 10 | {rules} | {ns:.0} |\n"
        ));
        results.push(json!({"scenario": "policy-eval", "rules": rules, "ns_per_decision": ns}));
    }

    // The mesh: control plane, the app, payments' sidecar in front of it, orders' sidecar.
    let (cp_sidecar, cp_admin, cp_metrics) = (free_port(), free_port(), free_port());
    let data = work.join("cp");
    procs.spawn(
        "control-plane",
        &bin("palisade-control-plane"),
        &[
            "--data-dir".into(),
            data.display().to_string(),
            "--sidecar-listen".into(),
            format!("127.0.0.1:{cp_sidecar}"),
            "--admin-listen".into(),
            format!("127.0.0.1:{cp_admin}"),
            "--metrics-listen".into(),
            format!("127.0.0.1:{cp_metrics}"),
        ],
        &work.join("cp.log"),
    )?;
    wait_status(
        format!("127.0.0.1:{cp_admin}").parse()?,
        "cp",
        "/healthz",
        200,
    )
    .await?;
    let app: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
    procs.spawn(
        "app",
        &me,
        &["app".into(), "--listen".into(), app.to_string()],
        &work.join("app.log"),
    )?;
    let policy = work.join("policy.yaml");
    std::fs::write(
        &policy,
        "apiVersion: palisade.dev/v1\nkind: AuthorizationPolicy\nmetadata: { name: bench, namespace: shop }\nspec:\n  selector: { service: payments }\n  rules:\n    - from: [ { principals: [\"spiffe://palisade.local/ns/shop/sa/orders\"] } ]\n      to: [ { methods: [\"GET\"], paths: [\"/item\"] } ]\n",
    )?;
    let mut sidecars: HashMap<&str, (u32, SocketAddr, SocketAddr)> = HashMap::new();
    let payments_inbound: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
    let registry = work.join("registry.yaml");
    std::fs::write(
        &registry,
        format!(
            "apiVersion: palisade.dev/v1\nkind: Service\nmetadata: {{ name: payments, namespace: shop }}\nspec: {{ identity: \"spiffe://palisade.local/ns/shop/sa/payments\", endpoints: [\"{payments_inbound}\"] }}\n"
        ),
    )?;
    for sa in ["payments", "orders"] {
        let token = Command::new(bin("palisade"))
            .args([
                "--server",
                &format!("http://127.0.0.1:{cp_admin}"),
                "--token-file",
            ])
            .arg(data.join("admin-token"))
            .args(["token", "create", "-n", "shop", "-s", sa])
            .output()?;
        if !token.status.success() {
            bail!("token create: {}", String::from_utf8_lossy(&token.stderr));
        }
        let token_file = work.join(format!("{sa}.token"));
        std::fs::write(&token_file, token.stdout)?;
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
        let outbound: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
        let inbound = if sa == "payments" {
            payments_inbound
        } else {
            format!("127.0.0.1:{}", free_port()).parse()?
        };
        let mut args: Vec<String> = vec![
            "--control-plane".into(),
            format!("127.0.0.1:{cp_sidecar}"),
            "--ca-bundle".into(),
            data.join("trust-bundle.pem").display().to_string(),
            "--token-file".into(),
            token_file.display().to_string(),
            "--admin-listen".into(),
            admin.to_string(),
            "--inbound-listen".into(),
            inbound.to_string(),
            "--outbound-listen".into(),
            outbound.to_string(),
            "--app".into(),
            app.to_string(),
            "--audit-log".into(),
            work.join(format!("{sa}-audit.jsonl")).display().to_string(),
            "--identity-dir".into(),
            work.join(format!("{sa}-id")).display().to_string(),
        ];
        if sa == "payments" {
            args.extend(["--policy-file".into(), policy.display().to_string()]);
        } else {
            args.extend(["--registry-file".into(), registry.display().to_string()]);
        }
        let pid = procs.spawn(
            sa,
            &bin("palisade-proxy"),
            &args,
            &work.join(format!("{sa}.log")),
        )?;
        wait_status(admin, "admin", "/ready", 200).await?;
        sidecars.insert(sa, (pid, admin, outbound));
    }
    let via = sidecars["orders"].2;
    wait_status(via, "payments", "/item", 200).await?;
    wait_status(app, "app", "/item", 200).await?;
    let idle: Vec<(u64, u64)> = ["orders", "payments"]
        .iter()
        .map(|s| memory(sidecars[s].0))
        .collect();

    md.push_str(&format!(
        "\n| HTTP/1.1, 1 KiB responses | throughput (req/s, {concurrency} connections) | p50 ms | p99 ms | p99.9 ms (open loop, {rate} req/s) | errors |\n|---|---:|---:|---:|---:|---:|\n"
    ));
    let mut cpu = 0.0;
    let mut palisade_requests = 0.0;
    for (name, addr, host) in [
        ("direct", app, "app"),
        ("palisade (2 sidecars, mTLS, policy)", via, "payments"),
    ] {
        let cpu_before: f64 = ["orders", "payments"]
            .iter()
            .map(|s| cpu_seconds(sidecars[s].0))
            .sum();
        let (rps, errors_t) = throughput(addr, host, concurrency, dur).await?;
        let cpu_after: f64 = ["orders", "payments"]
            .iter()
            .map(|s| cpu_seconds(sidecars[s].0))
            .sum();
        if host == "payments" {
            cpu = cpu_after - cpu_before;
            palisade_requests = rps * dur.as_secs_f64();
        }
        let ([p50, p99, p999], errors_l) = latency(addr, host, rate, dur).await?;
        md.push_str(&format!(
            "| {name} | {rps:.0} | {p50:.2} | {p99:.2} | {p999:.2} | {} |\n",
            errors_t + errors_l
        ));
        results.push(json!({"scenario": "http1", "path": name, "throughput_rps": rps, "p50_ms": p50, "p99_ms": p99, "p999_ms": p999, "errors": errors_t + errors_l}));
    }
    md.push_str("\n| sidecar footprint | idle RSS MiB | peak RSS MiB | CPU s per 10,000 requests (both sidecars) |\n|---|---:|---:|---:|\n");
    for (i, s) in ["orders", "payments"].iter().enumerate() {
        let (_, peak) = memory(sidecars[s].0);
        let per_10k = if palisade_requests > 0.0 {
            cpu / palisade_requests * 10_000.0
        } else {
            f64::NAN
        };
        md.push_str(&format!(
            "| {s} | {:.1} | {:.1} | {per_10k:.2} |\n",
            idle[i].0 as f64 / 1024.0,
            peak as f64 / 1024.0
        ));
        results.push(json!({"scenario": "footprint", "sidecar": s, "idle_rss_kib": idle[i].0, "peak_rss_kib": peak, "cpu_s_per_10k": per_10k}));
    }
    // Propagation: simulated sidecars (orders' certificate, many instances) wait on the
    // configuration long poll; one policy change; how long until each has it.
    md.push_str("\n| policy propagation (API change -> watcher has it) | watchers | p50 ms | p99 ms | max ms |\n|---|---:|---:|---:|---:|\n");
    let cp_sidecar_addr: SocketAddr = format!("127.0.0.1:{cp_sidecar}").parse()?;
    let admin_token = std::fs::read_to_string(data.join("admin-token"))?
        .trim()
        .to_owned();
    let counts: &[usize] = if smoke { &[10] } else { &[100, 1000] };
    for (round, &watchers) in counts.iter().enumerate() {
        let times = propagation(
            cp_sidecar_addr,
            format!("127.0.0.1:{cp_admin}").parse()?,
            &admin_token,
            &work.join("orders-id"),
            watchers,
            round,
        )
        .await?;
        let pct = |p: f64| times[((times.len() as f64 * p) as usize).min(times.len() - 1)];
        let (p50, p99, max) = (pct(0.5), pct(0.99), times[times.len() - 1]);
        md.push_str(&format!(
            "| one AuthorizationPolicy applied | {watchers} | {p50:.1} | {p99:.1} | {max:.1} |\n"
        ));
        results.push(json!({"scenario": "propagation", "watchers": watchers, "p50_ms": p50, "p99_ms": p99, "max_ms": max}));
    }
    drop(procs);
    std::fs::create_dir_all(out)?;
    std::fs::write(out.join("results.md"), &md)?;
    std::fs::write(
        out.join("results.json"),
        serde_json::to_string_pretty(&json!({"smoke": smoke, "results": results}))?,
    )?;
    println!("{md}");
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}
