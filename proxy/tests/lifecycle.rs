//! The sidecar's identity lifecycle against a real control plane on loopback: bootstrap,
//! renewal under a short TTL, live swaps, the control plane going away, restarts from the
//! cache, and retries until the control plane appears.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use palisade_contract::SpiffeId;
use palisade_contract::tls::{
    ClientAuth, ExpectedServer, IdentitySlot, SharedBundle, client_config, server_config,
    server_name_for,
};
use palisade_proxy::RunningSidecar;
use support::{
    SidecarFiles, admin_get, control_plane, mesh, sidecar_config, sidecar_files, start_ready,
    wait_ready, wait_until,
};

mod support;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

fn serial(slot: &IdentitySlot) -> String {
    slot.get().unwrap().serial.clone()
}

/// An mTLS echo server presenting `slot`, verifying clients against `bundle`.
async fn echo_server(slot: Arc<IdentitySlot>, bundle: SharedBundle) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(server_config(
        slot,
        bundle,
        ClientAuth::Required,
        &[],
    )));
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = [0u8; 64];
                while let Ok(n) = tls.read(&mut buf).await {
                    if n == 0 || tls.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

async fn connect(
    addr: SocketAddr,
    slot: Arc<IdentitySlot>,
    bundle: SharedBundle,
    expected: &SpiffeId,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let config = client_config(
        Some(slot),
        bundle,
        ExpectedServer::Exact(expected.clone()),
        &[],
    );
    let tcp = TcpStream::connect(addr).await?;
    let mut tls = TlsConnector::from(Arc::new(config))
        .connect(server_name_for(expected), tcp)
        .await?;
    echo(&mut tls, b"hello").await?;
    Ok(tls)
}

async fn echo(
    tls: &mut tokio_rustls::client::TlsStream<TcpStream>,
    msg: &[u8],
) -> std::io::Result<()> {
    tls.write_all(msg).await?;
    let mut buf = vec![0u8; msg.len()];
    tls.read_exact(&mut buf).await?;
    assert_eq!(buf, msg);
    Ok(())
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

#[tokio::test]
async fn a_sidecar_obtains_its_certificate_and_reports_ready() {
    let dir = tempfile::tempdir().unwrap();
    let cp = control_plane(&dir.path().join("cp"), Duration::from_secs(3600)).await;
    let files = sidecar_files(&cp, dir.path(), "orders").await;
    let bundle = dir.path().join("cp/trust-bundle.pem");
    let sidecar = palisade_proxy::start(&sidecar_config(cp.sidecar_addr, bundle, &files, &[]))
        .await
        .unwrap();
    assert_eq!(admin_get(&sidecar, "/live").await.0, 200);
    wait_ready(&sidecar).await;

    let (status, body) = admin_get(&sidecar, "/ready").await;
    assert_eq!(status, 200);
    assert!(
        body.contains("spiffe://palisade.local/ns/shop/sa/orders"),
        "{body}"
    );
    let identity = sidecar.identity.slot().get().unwrap();
    assert_eq!(
        identity.spiffe_id.as_str(),
        "spiffe://palisade.local/ns/shop/sa/orders"
    );
    let verified = sidecar
        .identity
        .bundle()
        .load()
        .verify_workload(
            &identity.chain[0],
            &identity.chain[1..],
            rustls_pki_types::UnixTime::now(),
            palisade_contract::tls::KeyUsage::client_auth(),
        )
        .unwrap();
    assert_eq!(verified, identity.spiffe_id);

    let (_, metrics) = admin_get(&sidecar, "/metrics").await;
    assert_eq!(
        metric(
            &metrics,
            "palisade_identity_certificate_expiry_timestamp_seconds"
        ),
        identity.not_after as f64
    );
    assert_eq!(
        metric(
            &metrics,
            "palisade_identity_certificate_requests_total{kind=\"bootstrap\",result=\"success\"}"
        ),
        1.0
    );
    // The key, certificate and bundle are cached privately.
    use std::os::unix::fs::PermissionsExt;
    for f in ["key.pem", "cert.pem", "bundle.pem"] {
        let mode = std::fs::metadata(files.cache.join(f))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{f}");
    }
    sidecar.shutdown().await;
    cp.shutdown().await;
}

#[tokio::test]
async fn renewal_keeps_open_connections_and_new_ones_use_the_new_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (cp, mut sidecars) =
        mesh(dir.path(), Duration::from_secs(4), &["orders", "payments"]).await;
    let (payments, orders) = (sidecars.pop().unwrap(), sidecars.pop().unwrap());
    let payments_id = payments.identity.spiffe_id().unwrap();

    let server = echo_server(payments.identity.slot(), payments.identity.bundle()).await;
    let mut open = connect(
        server,
        orders.identity.slot(),
        orders.identity.bundle(),
        &payments_id,
    )
    .await
    .unwrap();
    let first_server_cert = open.get_ref().1.peer_certificates().unwrap()[0].clone();
    let payments_serial = serial(&payments.identity.slot());
    let orders_serial = serial(&orders.identity.slot());

    // With a 4 s TTL both renew after about 2 s.
    wait_until(
        "both sidecars renewed",
        Duration::from_secs(10),
        async || {
            serial(&payments.identity.slot()) != payments_serial
                && serial(&orders.identity.slot()) != orders_serial
        },
    )
    .await;

    echo(&mut open, b"still here")
        .await
        .expect("the connection opened before renewal still works");
    let fresh = connect(
        server,
        orders.identity.slot(),
        orders.identity.bundle(),
        &payments_id,
    )
    .await
    .unwrap();
    let new_server_cert = fresh.get_ref().1.peer_certificates().unwrap()[0].clone();
    assert_ne!(new_server_cert, first_server_cert);
    assert_eq!(
        new_server_cert,
        payments.identity.slot().get().unwrap().chain[0]
    );

    let (_, metrics) = admin_get(&payments, "/metrics").await;
    assert!(
        metric(
            &metrics,
            "palisade_identity_certificate_requests_total{kind=\"renew\",result=\"success\"}"
        ) >= 1.0
    );
    orders.shutdown().await;
    payments.shutdown().await;
    cp.shutdown().await;
}

#[tokio::test]
async fn without_the_control_plane_a_sidecar_serves_until_expiry_then_fails_closed() {
    let dir = tempfile::tempdir().unwrap();
    let (cp, mut sidecars) =
        mesh(dir.path(), Duration::from_secs(4), &["orders", "payments"]).await;
    let (server, client) = (sidecars.pop().unwrap(), sidecars.pop().unwrap());
    let cp_addr = cp.sidecar_addr;
    cp.shutdown().await;

    let server_id = server.identity.spiffe_id().unwrap();
    let not_after = server.identity.slot().get().unwrap().not_after;
    let addr = echo_server(server.identity.slot(), server.identity.bundle()).await;
    // Still valid: still serving, still ready.
    assert_eq!(admin_get(&server, "/ready").await.0, 200);
    connect(
        addr,
        client.identity.slot(),
        client.identity.bundle(),
        &server_id,
    )
    .await
    .unwrap();

    wait_until(
        "the certificate expired",
        Duration::from_secs(10),
        async || {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs() as i64
                > not_after
        },
    )
    .await;
    let (status, body) = admin_get(&server, "/ready").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        connect(
            addr,
            client.identity.slot(),
            client.identity.bundle(),
            &server_id
        )
        .await
        .is_err(),
        "an expired sidecar must not complete a handshake"
    );
    let (_, metrics) = admin_get(&server, "/metrics").await;
    assert!(
        metric(
            &metrics,
            "palisade_identity_certificate_requests_total{kind=\"renew\",result=\"failure\"}"
        ) >= 1.0
    );

    // The control plane comes back (same data, same address) with re-attestation off: the
    // join token was spent on the first bootstrap, so the sidecar cannot get back in by
    // itself, and says so.
    let mut config = palisade_control_plane::Config::for_data_dir(dir.path().join("cp"));
    config.workload_ttl = Duration::from_secs(4);
    config.sidecar_listen = cp_addr;
    config.reattest_grace = Duration::ZERO;
    let cp = palisade_control_plane::start(&config).await.unwrap();
    let mut body = String::new();
    wait_until(
        "/ready says what the sidecar needs",
        Duration::from_secs(10),
        async || {
            body = admin_get(&server, "/ready").await.1;
            body.contains("give the sidecar a new token")
        },
    )
    .await;
    assert!(body.contains("certificate expired at"), "{body}");
    assert!(body.contains("re-attestation is off"), "{body}");
    assert!(body.contains("already been used"), "{body}");
    // A new token, and it recovers without a restart.
    let token = cp
        .create_join_token("shop", "payments", Duration::from_secs(300))
        .await
        .unwrap();
    std::fs::write(dir.path().join("payments.token"), token.token).unwrap();
    wait_ready(&server).await;
    client.shutdown().await;
    server.shutdown().await;
    cp.shutdown().await;
}

#[tokio::test]
async fn a_restarted_sidecar_starts_from_its_cache_and_renews_without_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let cp = control_plane(&dir.path().join("cp"), Duration::from_secs(3600)).await;
    let bundle = dir.path().join("cp/trust-bundle.pem");
    let files = sidecar_files(&cp, dir.path(), "orders").await;
    let first = palisade_proxy::start(&sidecar_config(
        cp.sidecar_addr,
        bundle.clone(),
        &files,
        &[],
    ))
    .await
    .unwrap();
    wait_ready(&first).await;
    let first_serial = serial(&first.identity.slot());
    first.shutdown().await;

    // The join token is spent; the cache is what lets the sidecar come back.
    std::fs::remove_file(&files.token).unwrap();
    let second = palisade_proxy::start(&sidecar_config(cp.sidecar_addr, bundle, &files, &[]))
        .await
        .unwrap();
    assert_eq!(
        admin_get(&second, "/ready").await.0,
        200,
        "ready at once from the cache"
    );
    assert_eq!(serial(&second.identity.slot()), first_serial);
    second
        .identity
        .refresh()
        .await
        .expect("renewal over mTLS with the cached certificate");
    assert_ne!(serial(&second.identity.slot()), first_serial);
    second.shutdown().await;
    cp.shutdown().await;
}

#[tokio::test]
async fn a_sealed_identity_cache_holds_no_key_and_opens_only_with_its_kek() {
    let dir = tempfile::tempdir().unwrap();
    let cp = control_plane(&dir.path().join("cp"), Duration::from_secs(3600)).await;
    let bundle = dir.path().join("cp/trust-bundle.pem");
    let files = sidecar_files(&cp, dir.path(), "orders").await;
    let kek_file = |name: &str| {
        let path = dir.path().join(name);
        std::fs::write(
            &path,
            palisade_control_plane::keys::Kek::generate_base64().as_bytes(),
        )
        .unwrap();
        path.display().to_string()
    };
    let (kek, other) = (kek_file("kek"), kek_file("other-kek"));
    let sealed = ["--identity-key-encryption-key-file", kek.as_str()];
    let start = async |extra: &[&str]| {
        palisade_proxy::start(&sidecar_config(
            cp.sidecar_addr,
            bundle.clone(),
            &files,
            extra,
        ))
        .await
        .unwrap()
    };
    let first = start(&sealed).await;
    wait_ready(&first).await;
    let first_serial = serial(&first.identity.slot());
    first.shutdown().await;
    let on_disk = std::fs::read_to_string(files.cache.join("key.pem")).unwrap();
    assert!(
        palisade_contract::envelope::looks_sealed(on_disk.as_bytes())
            && !on_disk.contains("PRIVATE KEY"),
        "{on_disk}"
    );

    // The join token is spent: only the cache can bring the sidecar back (at once, at
    // start, as the last step shows), and only with its KEK.
    std::fs::remove_file(&files.token).unwrap();
    let not_ready = async |extra: &[&str], why: &str| {
        let sidecar = start(extra).await;
        assert_eq!(admin_get(&sidecar, "/ready").await.0, 503, "{why}");
        sidecar.shutdown().await;
    };
    let with_other = ["--identity-key-encryption-key-file", other.as_str()];
    not_ready(&with_other, "the cache opened with another KEK").await;
    not_ready(&[], "a sealed cache opened without a KEK").await;
    // The same key in plain where a sealed one is expected is not taken either (anyone
    // who can write the directory could have put it there).
    let key_path = files.cache.join("key.pem");
    let opened = palisade_contract::envelope::open_envelope(
        on_disk.as_bytes(),
        &key_path,
        "workload",
        &palisade_contract::envelope::Kek::from_file(std::path::Path::new(&kek)).unwrap(),
    )
    .unwrap();
    std::fs::write(&key_path, opened.as_bytes()).unwrap();
    not_ready(&sealed, "a plain key was taken").await;

    std::fs::write(&key_path, &on_disk).unwrap();
    let second = start(&sealed).await;
    assert_eq!(
        admin_get(&second, "/ready").await.0,
        200,
        "ready from the cache"
    );
    assert_eq!(serial(&second.identity.slot()), first_serial);
    second.shutdown().await;
    cp.shutdown().await;
}

#[tokio::test]
async fn a_sidecar_retries_until_the_control_plane_appears() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("cp");
    // Create the CA first, so the sidecar has a bundle; then free the port.
    let cp = control_plane(&data, Duration::from_secs(3600)).await;
    let files = sidecar_files(&cp, dir.path(), "orders").await;
    cp.shutdown().await;
    let port = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();

    let sidecar = palisade_proxy::start(&sidecar_config(
        port,
        data.join("trust-bundle.pem"),
        &files,
        &[],
    ))
    .await
    .unwrap();
    wait_until("a failed attempt was counted", Duration::from_secs(5), async || {
        metric(&admin_get(&sidecar, "/metrics").await.1,
            "palisade_identity_certificate_requests_total{kind=\"bootstrap\",result=\"failure\"}") >= 1.0
    })
    .await;
    assert_eq!(admin_get(&sidecar, "/ready").await.0, 503);

    let mut config = palisade_control_plane::Config::for_data_dir(data);
    config.sidecar_listen = port;
    let cp = palisade_control_plane::start(&config).await.unwrap();
    wait_ready(&sidecar).await;
    sidecar.shutdown().await;
    cp.shutdown().await;
}

#[tokio::test]
async fn a_sidecar_refuses_a_control_plane_its_bundle_does_not_trust() {
    let dir = tempfile::tempdir().unwrap();
    let cp = control_plane(&dir.path().join("cp"), Duration::from_secs(3600)).await;
    let impostor = control_plane(&dir.path().join("impostor"), Duration::from_secs(3600)).await;
    let files = sidecar_files(&cp, dir.path(), "orders").await;
    // The sidecar trusts the real CA but is pointed at a control plane of another CA.
    let sidecar = palisade_proxy::start(&sidecar_config(
        impostor.sidecar_addr,
        dir.path().join("cp/trust-bundle.pem"),
        &files,
        &[],
    ))
    .await
    .unwrap();
    let err = sidecar.identity.refresh().await.unwrap_err();
    assert!(err.to_string().contains("TLS"), "{err}");
    assert_eq!(admin_get(&sidecar, "/ready").await.0, 503);
    // The token was never sent to the impostor, so it still works against the real one.
    let sidecar2 = palisade_proxy::start(&sidecar_config(
        cp.sidecar_addr,
        dir.path().join("cp/trust-bundle.pem"),
        &files,
        &[],
    ))
    .await
    .unwrap();
    wait_ready(&sidecar2).await;
    for s in [sidecar, sidecar2] {
        s.shutdown().await;
    }
    cp.shutdown().await;
    impostor.shutdown().await;
}

#[tokio::test]
async fn a_sidecar_refuses_to_start_with_an_unusable_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle.pem");
    let files = SidecarFiles {
        token: dir.path().join("token"),
        cache: dir.path().join("cache"),
        audit: dir.path().join("audit.jsonl"),
    };
    let free: SocketAddr = "127.0.0.1:9".parse().unwrap();
    for (contents, expected) in [
        ("not a PEM file", "no PEM certificate"),
        (
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            "not valid DER",
        ),
    ] {
        std::fs::write(&bundle, contents).unwrap();
        let err = palisade_proxy::start(&sidecar_config(free, bundle.clone(), &files, &[]))
            .await
            .unwrap_err();
        let message = format!("{err:#}");
        assert!(
            message.contains("--ca-bundle") && message.contains(expected),
            "{message}"
        );
    }
}

#[tokio::test]
async fn a_root_rotation_reaches_live_sidecars_without_breaking_mtls() {
    let dir = tempfile::tempdir().unwrap();
    let (cp, mut sidecars) =
        mesh(dir.path(), Duration::from_secs(3), &["orders", "payments"]).await;
    let (payments, orders) = (sidecars.pop().unwrap(), sidecars.pop().unwrap());
    let payments_id = payments.identity.spiffe_id().unwrap();
    let server = echo_server(payments.identity.slot(), payments.identity.bundle()).await;
    let dial = async || {
        connect(
            server,
            orders.identity.slot(),
            orders.identity.bundle(),
            &payments_id,
        )
        .await
    };
    let mut opened_first = dial().await.unwrap();
    let old_root = cp.ca.bundle().load().roots().next().unwrap().clone();
    let roots = |s: &RunningSidecar| s.identity.bundle().load().len();

    cp.ca.rotation_prepare().unwrap();
    wait_until(
        "both sidecars trust two roots",
        Duration::from_secs(10),
        async || roots(&orders) == 2 && roots(&payments) == 2,
    )
    .await;

    cp.ca.rotation_activate().unwrap();
    let on_new_root = support::on_new_root(&cp, &old_root);
    wait_until(
        "both sidecars hold new-root certificates",
        Duration::from_secs(10),
        async || on_new_root(&orders) && on_new_root(&payments),
    )
    .await;
    dial().await.expect("mTLS during the overlap");

    cp.ca.rotation_finish().unwrap();
    wait_until(
        "both sidecars dropped the old root",
        Duration::from_secs(10),
        async || roots(&orders) == 1 && roots(&payments) == 1,
    )
    .await;
    dial().await.expect("mTLS after the rotation");
    echo(&mut opened_first, b"survived")
        .await
        .expect("a connection from before the rotation");
    let (_, metrics) = admin_get(&orders, "/metrics").await;
    assert_eq!(
        metric(&metrics, "palisade_identity_trust_bundle_roots"),
        1.0
    );
    orders.shutdown().await;
    payments.shutdown().await;
    cp.shutdown().await;
}

#[tokio::test]
async fn after_an_outage_longer_than_its_certificate_a_sidecar_reattests_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let ttl = Duration::from_secs(3);
    let (cp, mut sidecars) = mesh(dir.path(), ttl, &["payments"]).await;
    let sidecar = sidecars.pop().unwrap();
    let cp_addr = cp.sidecar_addr;
    let restart_cp = async || {
        let mut config = palisade_control_plane::Config::for_data_dir(dir.path().join("cp"));
        config.workload_ttl = ttl;
        config.sidecar_listen = cp_addr;
        palisade_control_plane::start(&config).await.unwrap()
    };
    let expire = async |s: &RunningSidecar| {
        let not_after = s.identity.slot().get().unwrap().not_after;
        wait_until(
            "the certificate expired",
            Duration::from_secs(10),
            async || palisade_contract::unix_now() > not_after,
        )
        .await;
        assert_eq!(admin_get(s, "/ready").await.0, 503);
    };
    // A running sidecar: the control plane is away past its certificate's expiry.
    cp.shutdown().await;
    let first = serial(&sidecar.identity.slot());
    expire(&sidecar).await;
    let cp = restart_cp().await;
    let back = std::time::Instant::now();
    wait_ready(&sidecar).await;
    let running = back.elapsed();
    assert_ne!(serial(&sidecar.identity.slot()), first);

    // A sidecar restarted while expired: it re-attests with the certificate in its cache.
    let files = SidecarFiles {
        token: dir.path().join("payments.token"),
        cache: dir.path().join("payments-identity"),
        audit: dir.path().join("payments-audit.jsonl"),
    };
    sidecar.shutdown().await;
    cp.shutdown().await;
    tokio::time::sleep(ttl + Duration::from_secs(1)).await;
    let cp = restart_cp().await;
    let bundle = dir.path().join("cp/trust-bundle.pem");
    let started = std::time::Instant::now();
    let restarted = start_ready(&cp, bundle, &files, &[]).await;
    let from_cache = started.elapsed();
    eprintln!(
        "recovered {running:?} after the control plane came back (running), {from_cache:?} (restarted from its cache)"
    );
    let (_, metrics) = admin_get(&restarted, "/metrics").await;
    assert_eq!(
        metric(
            &metrics,
            "palisade_identity_certificate_requests_total{kind=\"reattest\",result=\"success\"}"
        ),
        1.0,
        "{metrics}"
    );
    restarted.shutdown().await;
    cp.shutdown().await;
}

#[tokio::test]
async fn migrating_the_keys_to_an_envelope_changes_nothing_a_sidecar_sees() {
    let outside = tempfile::tempdir().unwrap();
    let kek = outside.path().join("kek");
    std::fs::write(
        &kek,
        palisade_control_plane::keys::Kek::generate_base64().as_bytes(),
    )
    .unwrap();
    let kek = kek.to_str().unwrap();
    migrate_under_a_running_sidecar(
        &["--to", "envelope", "--to-key-encryption-key-file", kek],
        &["--key-encryption-key-file", kek],
        "envelope",
    )
    .await;
}

#[tokio::test]
async fn migrating_the_keys_into_a_pkcs11_token_changes_nothing_a_sidecar_sees() {
    let token = palisade_control_plane::keys::softhsm::TestToken::new("lifecycle");
    let settings = &token.settings;
    let module = settings.module.to_str().unwrap();
    let pin = settings.pin_file.to_str().unwrap();
    let flags = [
        "--pkcs11-module",
        module,
        "--pkcs11-token",
        &settings.label,
        "--pkcs11-pin-file",
        pin,
    ];
    migrate_under_a_running_sidecar(&["--to", "pkcs11"], &flags, "pkcs11").await;
}

/// Stops the control plane of a mesh with one sidecar, runs `keys [storage] migrate
/// [migrate]` on its data dir, starts it again with both keys from `source` (configured by
/// `storage`): same CA certificate, the running sidecar renews, the audit trail has it.
async fn migrate_under_a_running_sidecar(migrate: &[&str], storage: &[&str], source: &str) {
    use clap::Parser as _;
    let dir = tempfile::tempdir().unwrap();
    let ttl = Duration::from_secs(3);
    let (cp, mut sidecars) = mesh(dir.path(), ttl, &["payments"]).await;
    let sidecar = sidecars.pop().unwrap();
    let cp_addr = cp.sidecar_addr;
    let data = dir.path().join("cp");
    let ca_cert = std::fs::read(data.join("ca/ca-cert.pem")).unwrap();
    cp.shutdown().await;

    // Offline: plain files to the new source.
    let data_flag = ["--data-dir", data.to_str().unwrap()];
    let args = ["keys"]
        .iter()
        .chain(&data_flag)
        .chain(storage)
        .chain(&["migrate"])
        .chain(migrate);
    let cli = palisade_control_plane::keys_cli::KeysCli::parse_from(args);
    let done = cli.run().unwrap();
    assert_eq!(done.len(), 2, "{done:?}");
    for file in ["ca/ca-key.pem", "token-signing-key.pem"] {
        let text = std::fs::read_to_string(data.join(file)).unwrap();
        assert!(!text.contains("PRIVATE KEY"), "{file}");
    }

    let sources = ["--ca-key-source", source, "--token-key-source", source];
    let args = ["palisade-control-plane"]
        .iter()
        .chain(&data_flag)
        .chain(storage)
        .chain(&sources);
    let parsed = palisade_control_plane::Config::parse_from(args);
    let mut config = palisade_control_plane::Config::for_data_dir(data.clone());
    config.workload_ttl = ttl;
    config.sidecar_listen = cp_addr;
    config.ca_key_source = parsed.ca_key_source;
    config.token_key_source = parsed.token_key_source;
    config.key_encryption_key_file = parsed.key_encryption_key_file;
    config.pkcs11_module = parsed.pkcs11_module;
    config.pkcs11_token = parsed.pkcs11_token;
    config.pkcs11_pin_file = parsed.pkcs11_pin_file;
    let cp = palisade_control_plane::start(&config).await.unwrap();
    assert_eq!(std::fs::read(data.join("ca/ca-cert.pem")).unwrap(), ca_cert);
    // The running sidecar renews across the change, under the same root.
    let before = serial(&sidecar.identity.slot());
    wait_until("the sidecar renewed", Duration::from_secs(10), async || {
        sidecar.identity.is_ready() && serial(&sidecar.identity.slot()) != before
    })
    .await;
    // And the audit trail says what was done offline.
    let token = cp.admin_token().unwrap();
    let (status, body) =
        support::http_get(cp.admin_addr, "/v1/audit?limit=100", Some(&token)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body.matches("key-migrate").count(), 2, "{body}");
    assert_eq!(
        body.matches(&format!(r#""to":"{source}"#)).count(),
        2,
        "the audit trail names the new source: {body}"
    );
    assert!(
        !data
            .join(palisade_control_plane::keys::PENDING_AUDIT_FILE)
            .exists()
    );
    sidecar.shutdown().await;
    cp.shutdown().await;
}
