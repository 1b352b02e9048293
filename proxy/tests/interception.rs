//! Transparent interception end to end: a pod network in a network namespace this test
//! makes (veth pair, the init step's iptables rules), payments' sidecar and application
//! inside it, orders' sidecar outside. Orders' registry names payments' *application*
//! port; the pod's rules send the connection to the sidecar's inbound port, and the
//! sidecar forwards to the port that was asked for (not `--app`'s).
//!
//! Needs root (network namespaces, iptables), `ip` and `iptables-restore`
//! (`scripts/services` installs them); without root the test says so and does nothing.

mod support;

use support::netns::PodNetwork;

use std::convert::Infallible;
use std::fs::File;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::TokioIo;
use nix::sched::{CloneFlags, setns};
use palisade_inject::iptables::Interception;
use tokio::net::{TcpListener, TcpStream};

/// An application answering every request with the port it listens on.
async fn app(port: u16) {
    let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    loop {
        let (tcp, _) = listener.accept().await.unwrap();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |_req| async move {
                Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(format!(
                    "app port {port}"
                )))))
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}

/// A pod: payments' application (answering on 8081) and a sidecar with the pod's listeners
/// and `args`, on a thread inside the network namespace with a runtime of its own, so
/// every socket they open is the pod's.
struct Pod {
    stop: tokio::sync::oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Pod {
    /// Returns once the sidecar is ready.
    fn start(
        net: &PodNetwork,
        cp_from_pod: SocketAddr,
        bundle: std::path::PathBuf,
        files: support::SidecarFiles,
        args: Vec<String>,
    ) -> Self {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let path = net.path();
        let thread = std::thread::spawn(move || {
            setns(File::open(path).unwrap(), CloneFlags::CLONE_NEWNET).unwrap();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                tokio::spawn(app(8081));
                let mut all: Vec<&str> = vec![
                    "--inbound-listen",
                    "0.0.0.0:15006",
                    "--outbound-listen",
                    "127.0.0.1:15001",
                    "--app",
                    "127.0.0.1:8080",
                ];
                all.extend(args.iter().map(String::as_str));
                let config = support::sidecar_config(cp_from_pod, bundle, &files, &all);
                let sidecar = palisade_proxy::start(&config).await.unwrap();
                support::wait_ready(&sidecar).await;
                ready_tx.send(()).unwrap();
                let _ = stop_rx.await;
                sidecar.shutdown().await;
            });
        });
        ready_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the pod's sidecar is ready");
        Pod { stop, thread }
    }

    fn stop(self) {
        let _ = self.stop.send(());
        self.thread.join().unwrap();
    }
}

/// Runs `script` (bash) in the pod as its application would: as another user than the
/// sidecar's, so the pod's rules redirect its connections.
async fn as_app(net: &PodNetwork, script: String) -> std::process::Output {
    let call = tokio::process::Command::new("ip")
        .args(["netns", "exec", &net.name])
        .args([
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
        ])
        .args(["bash", "-c", &script])
        .output();
    let out = tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .expect("the call ends")
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The init step's rules in `net`; the sidecar here runs as this test's user (root), which
/// is therefore the exempt one, as uid 1337 is in a pod.
fn intercept(net: &PodNetwork) {
    let rules = Interception {
        proxy_uid: nix::unistd::Uid::effective().as_raw(),
        proxy_gid: nix::unistd::Gid::effective().as_raw(),
        ..Interception::default()
    }
    .rules()
    .unwrap();
    net.exec(&["iptables-restore", "--noflush"], Some(&rules));
}

/// A control plane whose sidecar port the pod reaches, and that address.
async fn control_plane(
    dir: &std::path::Path,
    net: &PodNetwork,
) -> (palisade_control_plane::RunningControlPlane, SocketAddr) {
    let mut cp_config = palisade_control_plane::Config::for_data_dir(dir.join("cp"));
    cp_config.sidecar_listen = "0.0.0.0:0".parse().unwrap();
    let cp = palisade_control_plane::start(&cp_config).await.unwrap();
    let cp_from_pod = format!("{}:{}", net.host_ip, cp.sidecar_addr.port())
        .parse()
        .unwrap();
    (cp, cp_from_pod)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_to_the_application_port_is_intercepted_and_reaches_that_port() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: network namespaces and iptables need root");
        return;
    }
    let net = PodNetwork::new("e", 214);
    intercept(&net);
    let dir = tempfile::tempdir().unwrap();
    let (cp, cp_from_pod) = control_plane(dir.path(), &net).await;
    let bundle = dir.path().join("cp/trust-bundle.pem");
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        "apiVersion: palisade.dev/v1\nkind: AuthorizationPolicy\nmetadata: { name: p, namespace: shop }\n\
         spec:\n  selector: { service: payments }\n  rules: [ { from: [ { principals: [\"spiffe://palisade.local/ns/shop/sa/orders\"] } ] } ]\n",
    )
    .unwrap();
    // Orders, outside the pod, serves on an address the pod can reach and lets payments in.
    let orders_policy = dir.path().join("orders-policy.yaml");
    std::fs::write(
        &orders_policy,
        "apiVersion: palisade.dev/v1\nkind: AuthorizationPolicy\nmetadata: { name: p, namespace: shop }\n\
         spec:\n  selector: { service: orders }\n  rules: [ { from: [ { principals: [\"spiffe://palisade.local/ns/shop/sa/payments\"] } ] } ]\n",
    )
    .unwrap();
    tokio::spawn(app(18091));
    // Payments knows orders without endpoints, as in Kubernetes: at whatever address the
    // application connects to.
    let pod_registry = dir.path().join("pod-registry.yaml");
    std::fs::write(
        &pod_registry,
        "apiVersion: palisade.dev/v1\nkind: Service\nmetadata: { name: orders, namespace: shop }\n\
         spec: { identity: \"spiffe://palisade.local/ns/shop/sa/orders\" }\n",
    )
    .unwrap();
    let payments_files = support::sidecar_files(&cp, dir.path(), "payments").await;
    let payments_audit = payments_files.audit.clone();
    // A service outside the mesh that does not speak HTTP (here: answers what it reads,
    // uppercased), which the application inside the pod will call by its address.
    let outside = std::net::TcpListener::bind(format!("{}:7777", net.host_ip)).unwrap();
    let outside_addr = outside.local_addr().unwrap();
    let echo = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let (mut s, _) = outside.accept().unwrap();
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).unwrap();
        s.write_all(&buf.to_ascii_uppercase()).unwrap();
    });

    // The pod: a thread in the namespace with a runtime of its own, so every socket its
    // sidecar and application open is the pod's.
    let pod = Pod::start(
        &net,
        cp_from_pod,
        bundle.clone(),
        payments_files,
        vec![
            "--policy-file".into(),
            policy.display().to_string(),
            "--registry-file".into(),
            pod_registry.display().to_string(),
        ],
    );
    // The application (another user than the sidecar's, as in a pod) opens a plain TCP
    // connection to the outside service: the pod's rules send it to the sidecar's
    // outbound port, which finds it is not HTTP and passes it through to where it was
    // going.
    let out = as_app(
        &net,
        format!(
            "exec 3<>/dev/tcp/{}/{}; printf '\\x16hi!!' >&3; head -c 5 <&3",
            outside_addr.ip(),
            outside_addr.port()
        ),
    )
    .await;
    assert_eq!(out.stdout, b"\x16HI!!", "passed through, both ways");
    echo.join().unwrap();

    // Plain HTTP to a host outside the mesh (not in the registry): forwarded to where it
    // was going, with its own Host, instead of a 502.
    let web = TcpListener::bind(format!("{}:7778", net.host_ip))
        .await
        .unwrap();
    let web_addr = web.local_addr().unwrap();
    tokio::spawn(async move {
        let (tcp, _) = web.accept().await.unwrap();
        let service = hyper::service::service_fn(|req: http::Request<hyper::body::Incoming>| {
            let host = req.headers()["host"].to_str().unwrap().to_owned();
            let path = req.uri().path().to_owned();
            async move {
                Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(format!(
                    "outside {host}{path}"
                )))))
            }
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(tcp), service)
            .await;
    });
    let out = as_app(&net, format!(
        "exec 3<>/dev/tcp/{}/{}; printf 'GET /hello HTTP/1.1\\r\\nHost: api.example\\r\\nConnection: close\\r\\n\\r\\n' >&3; cat <&3",
        web_addr.ip(),
        web_addr.port()
    ))
    .await;
    let response = String::from_utf8_lossy(&out.stdout);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        response.ends_with("outside api.example/hello"),
        "{response}"
    );
    // Each passthrough has its audit line (written by the pod's audit writer, shortly).
    for (what, needles) in [
        (
            "the HTTP passthrough is audited",
            vec![
                format!(r#""destination":"{web_addr}""#),
                r#""method":"GET""#.into(),
            ],
        ),
        (
            "the TCP passthrough is audited",
            vec![format!(r#""destination":"{outside_addr}""#)],
        ),
    ] {
        support::wait_until(what, Duration::from_secs(5), async || {
            std::fs::read_to_string(&payments_audit)
                .unwrap_or_default()
                .lines()
                .any(|l| {
                    l.contains(r#""decision":"passthrough""#)
                        && needles.iter().all(|n| l.contains(n.as_str()))
                })
        })
        .await;
    }

    // Orders, outside the pod, knows payments by its application port.
    let registry = dir.path().join("registry.yaml");
    std::fs::write(
        &registry,
        format!(
            "apiVersion: palisade.dev/v1\nkind: Service\nmetadata: {{ name: payments, namespace: shop }}\n\
             spec: {{ identity: \"spiffe://palisade.local/ns/shop/sa/payments\", endpoints: [\"{}:8081\"] }}\n",
            net.pod_ip
        ),
    )
    .unwrap();
    let orders_files = support::sidecar_files(&cp, dir.path(), "orders").await;
    let orders = support::start_ready(
        &cp,
        bundle,
        &orders_files,
        &[
            "--registry-file",
            registry.to_str().unwrap(),
            "--inbound-listen",
            &format!("{}:0", net.host_ip),
            "--app",
            "127.0.0.1:18091",
            "--policy-file",
            orders_policy.to_str().unwrap(),
        ],
    )
    .await;
    let tcp = TcpStream::connect(orders.outbound_addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get("/charge")
        .header("host", "payments")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        (status.as_u16(), String::from_utf8_lossy(&body).as_ref()),
        (200, "app port 8081"),
        "mTLS through the intercepted port, forwarded to the port asked for"
    );

    // The pod's application calls orders, a mesh service listed without endpoints, at
    // its address: the sidecar dials that address over mTLS, checks that orders answers
    // as orders, and orders' sidecar lets payments in.
    let out = as_app(&net, format!(
        "exec 3<>/dev/tcp/{}/{}; printf 'GET /ship HTTP/1.1\\r\\nHost: orders\\r\\nConnection: close\\r\\n\\r\\n' >&3; cat <&3",
        orders.inbound_addr.ip(),
        orders.inbound_addr.port()
    ))
    .await;
    let response = String::from_utf8_lossy(&out.stdout);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with("app port 18091"), "{response}");
    support::wait_until(
        "orders audits payments' call",
        Duration::from_secs(5),
        async || {
            std::fs::read_to_string(&orders_files.audit)
                .unwrap_or_default()
                .lines()
                .any(|l| {
                    l.contains(r#""decision":"allow""#)
                        && l.contains("/ship")
                        && l.contains("sa/payments")
                })
        },
    )
    .await;

    orders.shutdown().await;
    pod.stop();
    cp.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_only_refuses_what_is_outside_the_registry() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: network namespaces and iptables need root");
        return;
    }
    let net = PodNetwork::new("r", 215);
    intercept(&net);
    let dir = tempfile::tempdir().unwrap();
    let (cp, cp_from_pod) = control_plane(dir.path(), &net).await;
    let files = support::sidecar_files(&cp, dir.path(), "payments").await;
    let audit = files.audit.clone();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        "apiVersion: palisade.dev/v1\nkind: AuthorizationPolicy\nmetadata: { name: p, namespace: shop }\n\
         spec: { selector: { service: payments } }\n",
    )
    .unwrap();
    // Outside services the application would reach with allow-any.
    let outside = std::net::TcpListener::bind(format!("{}:7781", net.host_ip)).unwrap();
    outside.set_nonblocking(true).unwrap();
    let outside_addr = outside.local_addr().unwrap();
    let pod = Pod::start(
        &net,
        cp_from_pod,
        dir.path().join("cp/trust-bundle.pem"),
        files,
        vec![
            "--policy-file".into(),
            policy.display().to_string(),
            "--outbound-policy".into(),
            "registry-only".into(),
        ],
    );

    // Plain HTTP to a host outside the registry: a 403 that says why, not forwarded.
    let out = as_app(
        &net,
        format!(
            "exec 3<>/dev/tcp/{}/{}; printf 'GET / HTTP/1.1\\r\\nHost: api.example\\r\\nConnection: close\\r\\n\\r\\n' >&3; cat <&3",
            outside_addr.ip(),
            outside_addr.port()
        ),
    )
    .await;
    let response = String::from_utf8_lossy(&out.stdout);
    assert!(response.starts_with("HTTP/1.1 403"), "{response}");
    assert!(response.contains("registry-only"), "{response}");
    // Anything else: closed at once, nothing sent on.
    let out = as_app(
        &net,
        format!(
            "exec 3<>/dev/tcp/{}/{}; printf '\\x16hi!!' >&3; head -c 5 <&3; echo \"read $?\"",
            outside_addr.ip(),
            outside_addr.port()
        ),
    )
    .await;
    // (The close is an end of file or, with the application's bytes unread, a reset.)
    let read = String::from_utf8_lossy(&out.stdout);
    assert!(
        read.starts_with("read "),
        "closed without a byte, not {read:?}"
    );
    assert!(
        matches!(outside.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the outside service was never connected to"
    );
    support::wait_until(
        "both refusals are audited",
        Duration::from_secs(5),
        async || {
            let text = std::fs::read_to_string(&audit).unwrap_or_default();
            let denied: Vec<&str> = text
                .lines()
                .filter(|l| {
                    l.contains(r#""decision":"deny""#) && l.contains(&outside_addr.to_string())
                })
                .collect();
            denied.iter().any(|l| l.contains(r#""method":"GET""#))
                && denied.iter().any(|l| l.contains(r#""protocol":"tcp""#))
        },
    )
    .await;
    pod.stop();
    cp.shutdown().await;
}
