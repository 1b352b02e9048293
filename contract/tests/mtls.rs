//! Real TLS handshakes over loopback between the SPIFFE verifiers, with certificates made
//! here by rcgen: good ones, and each kind of bad one a peer might present.

use std::sync::Arc;
use std::time::Duration;

use palisade_contract::tls::{
    ClientAuth, ExpectedServer, IdentitySlot, SharedBundle, TrustBundle, WorkloadIdentity,
    client_config, server_config, server_name_for, shared_bundle,
};
use palisade_contract::{SpiffeId, TrustDomain};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

fn td() -> TrustDomain {
    TrustDomain::parse("palisade.local").unwrap()
}

fn id(sa: &str) -> SpiffeId {
    td().workload_id("shop", sa).unwrap()
}

struct Ca {
    cert: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

fn ca(name: &str, not_after_days: i64) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::from_secs(7 * 86400);
    params.not_after = now + time::Duration::days(not_after_days);
    let cert = params.self_signed(&key).unwrap().der().clone();
    Ca {
        issuer: Issuer::new(params, key),
        cert,
    }
}

#[derive(Clone)]
struct LeafSpec {
    uris: Vec<String>,
    is_ca: bool,
    not_after: OffsetDateTime,
}

impl LeafSpec {
    fn for_id(id: &SpiffeId) -> Self {
        Self {
            uris: vec![id.to_string()],
            is_ca: false,
            not_after: OffsetDateTime::now_utc() + Duration::from_secs(3600),
        }
    }
}

fn leaf(ca: &Ca, spec: LeafSpec) -> WorkloadIdentity {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.subject_alt_names = spec
        .uris
        .iter()
        .map(|u| SanType::URI(u.as_str().try_into().unwrap()))
        .collect();
    params.is_ca = if spec.is_ca {
        IsCa::Ca(BasicConstraints::Unconstrained)
    } else {
        IsCa::ExplicitNoCa
    };
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.not_before = OffsetDateTime::now_utc() - Duration::from_secs(7200);
    params.not_after = spec.not_after;
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    // Build the identity by hand: WorkloadIdentity::from_der refuses bad leaves, and these
    // tests need to present bad leaves.
    let chain = vec![cert.der().clone()];
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let provider = palisade_contract::tls::crypto_provider();
    let certified =
        rustls::sign::CertifiedKey::from_der(chain.clone(), key_der, &provider).unwrap();
    WorkloadIdentity {
        spiffe_id: id("placeholder"),
        chain,
        certified_key: Arc::new(certified),
        not_before: 0,
        not_after: i64::MAX,
        serial: String::new(),
    }
}

fn slot_with(identity: WorkloadIdentity) -> Arc<IdentitySlot> {
    let slot = IdentitySlot::new();
    slot.set(identity);
    slot
}

fn bundle_of(cas: &[&Ca]) -> SharedBundle {
    shared_bundle(
        TrustBundle::from_ders(td(), cas.iter().map(|c| c.cert.clone()).collect()).unwrap(),
    )
}

/// A server that echoes one line per connection, with mandatory client certificates; it
/// reports the client's SPIFFE ID (or the handshake error) for each connection.
async fn echo_server(
    slot: Arc<IdentitySlot>,
    bundle: SharedBundle,
) -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<Result<String, String>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(server_config(
        slot,
        bundle,
        ClientAuth::Required,
        &[],
    )));
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match acceptor.accept(tcp).await {
                    Ok(mut tls) => {
                        let peer = palisade_contract::tls::peer_spiffe_id(
                            tls.get_ref().1.peer_certificates(),
                        );
                        let _ = tx.send(Ok(peer.map(|p| p.to_string()).unwrap_or_default()));
                        let mut buf = [0u8; 64];
                        while let Ok(n) = tls.read(&mut buf).await {
                            if n == 0 || tls.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                    }
                }
            });
        }
    });
    (addr, rx)
}

async fn connect(
    addr: std::net::SocketAddr,
    slot: Option<Arc<IdentitySlot>>,
    bundle: SharedBundle,
    expected: SpiffeId,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
    let config = client_config(slot, bundle, ExpectedServer::Exact(expected.clone()), &[]);
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut tls = TlsConnector::from(Arc::new(config))
        .connect(server_name_for(&expected), tcp)
        .await
        .map_err(|e| e.to_string())?;
    // In TLS 1.3 the server checks the client certificate after the client finishes; a
    // round trip shows whether the server accepted it.
    tls.write_all(b"ping").await.map_err(|e| e.to_string())?;
    let mut buf = [0u8; 4];
    tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
    assert_eq!(&buf, b"ping");
    Ok(tls)
}

#[tokio::test]
async fn mutual_tls_between_two_workloads_of_one_ca() {
    let root = ca("root", 365);
    let bundle = bundle_of(&[&root]);
    let (addr, mut seen) = echo_server(
        slot_with(leaf(&root, LeafSpec::for_id(&id("payments")))),
        bundle.clone(),
    )
    .await;
    let client = slot_with(leaf(&root, LeafSpec::for_id(&id("orders"))));
    connect(addr, Some(client), bundle, id("payments"))
        .await
        .unwrap();
    assert_eq!(
        seen.recv().await.unwrap().unwrap(),
        id("orders").to_string()
    );
}

#[tokio::test]
async fn server_with_the_wrong_spiffe_id_is_refused() {
    let root = ca("root", 365);
    let bundle = bundle_of(&[&root]);
    let (addr, _) = echo_server(
        slot_with(leaf(&root, LeafSpec::for_id(&id("impostor")))),
        bundle.clone(),
    )
    .await;
    let client = slot_with(leaf(&root, LeafSpec::for_id(&id("orders"))));
    let err = connect(addr, Some(client), bundle, id("payments"))
        .await
        .unwrap_err();
    assert!(err.contains("UnexpectedPeer"), "{err}");
    assert!(err.contains("impostor"), "{err}");
}

/// Presents `client` to a good server and returns the server-side handshake error.
async fn server_refuses(client: Option<WorkloadIdentity>, server_root: &Ca) -> String {
    let bundle = bundle_of(&[server_root]);
    let (addr, mut seen) = echo_server(
        slot_with(leaf(server_root, LeafSpec::for_id(&id("payments")))),
        bundle.clone(),
    )
    .await;
    let result = connect(addr, client.map(slot_with), bundle, id("payments")).await;
    assert!(result.is_err(), "the client should have been refused");
    seen.recv()
        .await
        .unwrap()
        .expect_err("server must refuse the handshake")
}

#[tokio::test]
async fn client_without_a_certificate_is_refused() {
    let root = ca("root", 365);
    let err = server_refuses(None, &root).await;
    assert!(err.to_lowercase().contains("certificate"), "{err}");
}

#[tokio::test]
async fn client_certificate_from_another_ca_is_refused() {
    let root = ca("root", 365);
    let other = ca("other", 365);
    let err = server_refuses(Some(leaf(&other, LeafSpec::for_id(&id("orders")))), &root).await;
    assert!(err.contains("UnknownIssuer"), "{err}");
}

#[tokio::test]
async fn expired_client_certificate_is_refused() {
    let root = ca("root", 365);
    let mut spec = LeafSpec::for_id(&id("orders"));
    spec.not_after = OffsetDateTime::now_utc() - Duration::from_secs(60);
    let err = server_refuses(Some(leaf(&root, spec)), &root).await;
    assert!(err.contains("Expired"), "{err}");
}

#[tokio::test]
async fn ca_certificate_used_as_a_leaf_is_refused() {
    let root = ca("root", 365);
    let mut spec = LeafSpec::for_id(&id("orders"));
    spec.is_ca = true;
    let err = server_refuses(Some(leaf(&root, spec)), &root).await;
    assert!(err.contains("LeafIsCa"), "{err}");
}

#[tokio::test]
async fn client_with_two_uri_sans_is_refused() {
    let root = ca("root", 365);
    let mut spec = LeafSpec::for_id(&id("orders"));
    spec.uris.push(id("payments").to_string());
    let err = server_refuses(Some(leaf(&root, spec)), &root).await;
    assert!(err.contains("UriSanCount(2)"), "{err}");
}

#[tokio::test]
async fn client_with_a_malformed_spiffe_id_is_refused() {
    let root = ca("root", 365);
    let mut spec = LeafSpec::for_id(&id("orders"));
    spec.uris = vec!["spiffe://palisade.local/ns/../sa/x".into()];
    let err = server_refuses(Some(leaf(&root, spec)), &root).await;
    assert!(err.contains("BadSpiffeId(DotSegment)"), "{err}");
}

#[tokio::test]
async fn client_from_a_foreign_trust_domain_is_refused() {
    let root = ca("root", 365);
    let mut spec = LeafSpec::for_id(&id("orders"));
    spec.uris = vec!["spiffe://evil.example/ns/shop/sa/orders".into()];
    let err = server_refuses(Some(leaf(&root, spec)), &root).await;
    assert!(err.contains("ForeignTrustDomain"), "{err}");
}

#[tokio::test]
async fn expired_root_is_not_trusted() {
    // webpki does not check a trust anchor's own validity; the bundle does.
    let root = ca("old root", -1);
    let bundle = bundle_of(&[&root]);
    let (addr, _) = echo_server(
        slot_with(leaf(&root, LeafSpec::for_id(&id("payments")))),
        bundle.clone(),
    )
    .await;
    let client = slot_with(leaf(&root, LeafSpec::for_id(&id("orders"))));
    let err = connect(addr, Some(client), bundle, id("payments"))
        .await
        .unwrap_err();
    assert!(err.contains("NoValidRoot"), "{err}");
}

#[tokio::test]
async fn root_rotation_overlap_then_drop() {
    let old_root = ca("old", 365);
    let new_root = ca("new", 365);
    let bundle = bundle_of(&[&old_root, &new_root]);
    // The server already has a new-root certificate; clients have one of each.
    let (addr, mut seen) = echo_server(
        slot_with(leaf(&new_root, LeafSpec::for_id(&id("payments")))),
        bundle.clone(),
    )
    .await;
    let old_client = slot_with(leaf(&old_root, LeafSpec::for_id(&id("orders"))));
    let new_client = slot_with(leaf(&new_root, LeafSpec::for_id(&id("inventory"))));

    connect(
        addr,
        Some(old_client.clone()),
        bundle.clone(),
        id("payments"),
    )
    .await
    .unwrap();
    assert!(seen.recv().await.unwrap().is_ok());
    connect(
        addr,
        Some(new_client.clone()),
        bundle.clone(),
        id("payments"),
    )
    .await
    .unwrap();
    assert!(seen.recv().await.unwrap().is_ok());

    // Drop the old root from the live bundle both sides share.
    bundle.store(Arc::new(
        TrustBundle::from_ders(td(), vec![new_root.cert.clone()]).unwrap(),
    ));
    assert!(
        connect(addr, Some(old_client), bundle.clone(), id("payments"))
            .await
            .is_err()
    );
    assert!(
        seen.recv()
            .await
            .unwrap()
            .unwrap_err()
            .contains("UnknownIssuer")
    );
    connect(addr, Some(new_client), bundle, id("payments"))
        .await
        .unwrap();
    assert!(seen.recv().await.unwrap().is_ok());
}

#[tokio::test]
async fn swapping_the_certificate_keeps_open_connections() {
    let root = ca("root", 365);
    let bundle = bundle_of(&[&root]);
    let server_slot = slot_with(leaf(&root, LeafSpec::for_id(&id("payments"))));
    let first_server_cert = server_slot.get().unwrap().chain[0].clone();
    let (addr, _) = echo_server(server_slot.clone(), bundle.clone()).await;
    let client = slot_with(leaf(&root, LeafSpec::for_id(&id("orders"))));
    let mut open = connect(addr, Some(client.clone()), bundle.clone(), id("payments"))
        .await
        .unwrap();

    server_slot.set(leaf(&root, LeafSpec::for_id(&id("payments"))));
    let second_server_cert = server_slot.get().unwrap().chain[0].clone();
    assert_ne!(first_server_cert, second_server_cert);

    // The old connection still works...
    open.write_all(b"more").await.unwrap();
    let mut buf = [0u8; 4];
    open.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"more");
    assert_eq!(
        open.get_ref().1.peer_certificates().unwrap()[0],
        first_server_cert
    );
    // ...and a new one sees the new certificate.
    let fresh = connect(addr, Some(client), bundle, id("payments"))
        .await
        .unwrap();
    assert_eq!(
        fresh.get_ref().1.peer_certificates().unwrap()[0],
        second_server_cert
    );
}

#[tokio::test]
async fn expired_identity_presents_nothing() {
    let root = ca("root", 365);
    let bundle = bundle_of(&[&root]);
    let mut expired = leaf(&root, LeafSpec::for_id(&id("payments")));
    expired.not_after = 1; // the slot's own view of validity
    let (addr, mut seen) = echo_server(slot_with(expired), bundle.clone()).await;
    let client = slot_with(leaf(&root, LeafSpec::for_id(&id("orders"))));
    assert!(
        connect(addr, Some(client), bundle, id("payments"))
            .await
            .is_err()
    );
    assert!(
        seen.recv().await.unwrap().is_err(),
        "server must not complete a handshake"
    );
}

#[test]
fn workload_identity_refuses_bad_leaves() {
    let root = ca("root", 365);
    let mut spec = LeafSpec::for_id(&id("orders"));
    spec.is_ca = true;
    let bad = leaf(&root, spec);
    let key = KeyPair::generate().unwrap();
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let err = WorkloadIdentity::from_der(bad.chain.clone(), key_der).unwrap_err();
    assert!(err.to_string().contains("CA certificate"), "{err}");

    let good = leaf(&root, LeafSpec::for_id(&id("orders")));
    let other_key = KeyPair::generate().unwrap();
    let err = WorkloadIdentity::from_der(
        good.chain.clone(),
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(other_key.serialize_der())),
    )
    .unwrap_err();
    assert!(
        matches!(err, palisade_contract::tls::IdentityError::KeyMismatch),
        "{err}"
    );
}

#[test]
fn bundle_refuses_non_ca_certificates_and_garbage() {
    let root = ca("root", 365);
    let l = leaf(&root, LeafSpec::for_id(&id("orders")));
    let err = TrustBundle::from_ders(td(), vec![l.chain[0].clone()]).unwrap_err();
    assert!(err.to_string().contains("not a CA certificate"), "{err}");
    assert!(TrustBundle::from_pem(td(), b"not pem at all").is_err());
    assert!(
        TrustBundle::from_pem(
            td(),
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
        )
        .is_err()
    );
}

#[tokio::test]
async fn sessions_are_never_resumed() {
    // A resumed session would carry the peer certificate of an earlier handshake; every
    // connection must present and verify the current certificate.
    let root = ca("root", 365);
    let bundle = bundle_of(&[&root]);
    let (addr, mut seen) = echo_server(
        slot_with(leaf(&root, LeafSpec::for_id(&id("payments")))),
        bundle.clone(),
    )
    .await;
    let client = slot_with(leaf(&root, LeafSpec::for_id(&id("orders"))));
    let config = Arc::new(client_config(
        Some(client),
        bundle,
        ExpectedServer::Exact(id("payments")),
        &[],
    ));
    for _ in 0..3 {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let mut tls = TlsConnector::from(config.clone())
            .connect(server_name_for(&id("payments")), tcp)
            .await
            .unwrap();
        tls.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await.unwrap();
        assert_eq!(
            tls.get_ref().1.handshake_kind(),
            Some(rustls::HandshakeKind::Full)
        );
        assert!(seen.recv().await.unwrap().is_ok());
    }
}
