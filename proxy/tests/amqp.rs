//! The AMQP proxy against the real RabbitMQ on 127.0.0.1:5672, with lapin as the client:
//! the application talks to its sidecar, the sidecar to the broker with its own
//! credentials, and every operation is authorized on the way.

mod support;

use std::time::Duration;

use lapin::options::{
    BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};
use palisade_proxy::RunningSidecar;
use support::{sidecar_files, start_ready};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BROKER: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

struct Setup {
    _dir: tempfile::TempDir,
    cp: palisade_control_plane::RunningControlPlane,
    sidecar: RunningSidecar,
    /// The consumer's sidecar (shop/payments), which verifies provenance.
    consumer: RunningSidecar,
    audit: std::path::PathBuf,
    exchange: String,
    queue: String,
    secret_queue: String,
    /// A direct connection to the broker, to check what really arrived.
    direct: Connection,
}

fn s(v: &str) -> ShortString {
    ShortString::from(v)
}

async fn setup() -> Setup {
    let id = palisade_control_plane::tokens::random_id().unwrap();
    let exchange = format!("palisade.test.{id}");
    let queue = format!("palisade.q.{id}");
    let secret_queue = format!("palisade.secret.{id}");
    let direct = Connection::connect(BROKER, ConnectionProperties::default())
        .await
        .expect("RabbitMQ at 127.0.0.1:5672 (see scripts/services)");
    let ch = direct.create_channel().await.unwrap();
    ch.exchange_declare(
        s(&exchange),
        ExchangeKind::Topic,
        ExchangeDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    for (q, binding) in [(&queue, "order.#"), (&secret_queue, "payment.#")] {
        ch.queue_declare(
            s(q),
            QueueDeclareOptions {
                auto_delete: false,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
        ch.queue_bind(
            s(q),
            s(&exchange),
            s(binding),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    }
    let policy = format!(
        r#"
apiVersion: palisade.dev/v1
kind: AuthorizationPolicy
metadata: {{ name: orders-amqp, namespace: shop }}
spec:
  selector: {{ service: orders }}
  rules:
    - from: [ {{ principals: ["spiffe://palisade.local/ns/shop/sa/orders"] }} ]
      to:
        - amqp: {{ operations: [publish], vhosts: ["/"], exchanges: ["{exchange}"], routingKeys: ["order.*"] }}
        - amqp: {{ operations: [consume, get], queues: ["{queue}"] }}
---
apiVersion: palisade.dev/v1
kind: AuthorizationPolicy
metadata: {{ name: payments-amqp, namespace: shop }}
spec:
  selector: {{ service: payments }}
  rules:
    - to: [ {{ amqp: {{ operations: [consume, get], queues: ["{queue}"] }} }} ]
"#
    );
    let dir = tempfile::tempdir().unwrap();
    let cp = support::control_plane(&dir.path().join("cp"), Duration::from_secs(3600)).await;
    let policy_file = dir.path().join("policy.yaml");
    std::fs::write(&policy_file, policy).unwrap();
    // The publisher (shop/orders) and the consumer (shop/payments), each with its sidecar.
    let mut sidecars = Vec::new();
    let mut audit_files = Vec::new();
    for sa in ["orders", "payments"] {
        let files = sidecar_files(&cp, dir.path(), sa).await;
        sidecars.push(
            start_ready(
                &cp,
                dir.path().join("cp/trust-bundle.pem"),
                &files,
                &[
                    "--amqp-listen",
                    "127.0.0.1:0",
                    "--amqp-upstream",
                    BROKER,
                    "--policy-file",
                    policy_file.to_str().unwrap(),
                ],
            )
            .await,
        );
        audit_files.push(files.audit);
    }
    let consumer = sidecars.pop().unwrap();
    let sidecar = sidecars.pop().unwrap();
    Setup {
        _dir: dir,
        cp,
        consumer,
        audit: audit_files.swap_remove(0),
        sidecar,
        exchange,
        queue,
        secret_queue,
        direct,
    }
}

impl Setup {
    /// The application's connection, through its sidecar, with credentials the broker
    /// would refuse: the sidecar's own are used.
    async fn app(&self) -> Connection {
        let uri = format!(
            "amqp://app:wrong-password@{}/%2f",
            self.sidecar.amqp_addr.unwrap()
        );
        Connection::connect(&uri, ConnectionProperties::default())
            .await
            .expect("through the sidecar")
    }

    /// The consumer application's connection, through its own sidecar.
    async fn consumer_app(&self) -> Connection {
        let uri = format!("amqp://{}/%2f", self.consumer.amqp_addr.unwrap());
        Connection::connect(&uri, ConnectionProperties::default())
            .await
            .expect("through the consumer's sidecar")
    }

    /// The next message in `queue`, read straight from the broker.
    async fn take(&self, queue: &str) -> Option<lapin::message::BasicGetMessage> {
        let ch = self.direct.create_channel().await.unwrap();
        for _ in 0..20 {
            if let Some(m) = ch
                .basic_get(s(queue), BasicGetOptions { no_ack: true })
                .await
                .unwrap()
            {
                return Some(m);
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        None
    }

    async fn stop(self) {
        let ch = self.direct.create_channel().await.unwrap();
        for q in [&self.queue, &self.secret_queue] {
            let _ = ch.queue_delete(s(q), QueueDeleteOptions::default()).await;
        }
        self.sidecar.shutdown().await;
        self.consumer.shutdown().await;
        self.cp.shutdown().await;
    }
}

/// A channel in confirm mode on `app`.
async fn confirming(app: &Connection) -> lapin::Channel {
    let ch = app.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    ch
}

/// Publishes and waits for the broker's confirm (or the channel's refusal).
async fn publish(
    ch: &lapin::Channel,
    exchange: &str,
    key: &str,
    body: &[u8],
    properties: BasicProperties,
) -> lapin::Result<lapin::Confirmation> {
    ch.basic_publish(
        s(exchange),
        s(key),
        BasicPublishOptions::default(),
        body,
        properties,
    )
    .await?
    .await
}

fn header(m: &lapin::message::BasicGetMessage, name: &str) -> Option<String> {
    match m
        .delivery
        .properties
        .headers()
        .as_ref()?
        .inner()
        .get(name)?
    {
        AMQPValue::LongString(v) => Some(String::from_utf8_lossy(v.as_bytes()).into_owned()),
        other => Some(format!("{other:?}")),
    }
}

#[tokio::test]
async fn publishes_are_authorized_stamped_and_denials_close_only_their_channel() {
    let t = setup().await;
    let app = t.app().await;
    let ch = confirming(&app).await;

    // Allowed, with a forged publisher header: it arrives stamped with the real one.
    let mut forged = FieldTable::default();
    forged.insert(
        s("x-palisade-publisher"),
        AMQPValue::LongString(LongString::from("spiffe://evil/ns/x/sa/y")),
    );
    let confirm = publish(
        &ch,
        &t.exchange,
        "order.created",
        b"first",
        BasicProperties::default().with_headers(forged),
    )
    .await
    .unwrap();
    assert!(confirm.is_ack());
    let m = t.take(&t.queue).await.expect("the allowed publish arrives");
    assert_eq!(m.delivery.data, b"first");
    assert_eq!(
        header(&m, "x-palisade-publisher").as_deref(),
        Some("spiffe://palisade.local/ns/shop/sa/orders")
    );

    // A second channel, to show it is unaffected by the denial on the first.
    let other = confirming(&app).await;

    // Denied routing key: 403 on that channel, nothing reaches any queue.
    let outcome = publish(
        &ch,
        &t.exchange,
        "payment.captured",
        b"nope",
        BasicProperties::default(),
    )
    .await;
    let err = outcome.expect_err("a denied publish fails");
    assert!(
        err.to_string().contains("ACCESS_REFUSED") || err.to_string().contains("403"),
        "{err}"
    );
    assert!(
        t.take(&t.queue).await.is_none(),
        "the denied message reached the queue"
    );
    assert!(
        t.take(&t.secret_queue).await.is_none(),
        "the denied message reached the queue bound to payment.#"
    );

    // The other channel keeps publishing with confirms.
    for i in 0..20 {
        let c = publish(
            &other,
            &t.exchange,
            "order.paid",
            format!("m{i}").as_bytes(),
            BasicProperties::default(),
        )
        .await
        .unwrap();
        assert!(c.is_ack(), "confirm {i}");
    }
    for i in 0..20 {
        let m = t
            .take(&t.queue)
            .await
            .expect("published on the other channel");
        assert_eq!(m.delivery.data, format!("m{i}").as_bytes());
    }

    // A routing key smuggled in CC is refused too.
    let again = confirming(&app).await;
    let mut cc = FieldTable::default();
    cc.insert(
        s("CC"),
        AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::LongString(
            LongString::from("payment.secret"),
        )])),
    );
    let smuggled = publish(
        &again,
        &t.exchange,
        "order.created",
        b"cc",
        BasicProperties::default().with_headers(cc),
    )
    .await;
    assert!(
        smuggled.is_err(),
        "a CC routing key outside the policy must be refused"
    );
    assert!(t.take(&t.secret_queue).await.is_none());
    assert!(t.take(&t.queue).await.is_none());

    // A re-opened channel works.
    let reopened = confirming(&app).await;
    let c = publish(
        &reopened,
        &t.exchange,
        "order.created",
        b"after",
        BasicProperties::default(),
    )
    .await
    .unwrap();
    assert!(c.is_ack());
    assert_eq!(t.take(&t.queue).await.unwrap().delivery.data, b"after");

    // Every decision is audited, with the AMQP detail.
    let denial = support::audit_where(&t.audit, |v| {
        v["decision"] == "deny" && v["amqp"]["routing_key"] == "payment.captured"
    })
    .await;
    assert_eq!(denial["protocol"], "amqp");
    assert_eq!(denial["amqp"]["exchange"], t.exchange.as_str());
    let (_, metrics) = support::admin_get(&t.sidecar, "/metrics").await;
    assert!(
        metrics.contains(
            r#"palisade_proxy_amqp_operations_total{decision="deny",operation="publish"} 2"#
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("palisade_proxy_amqp_channels 2"),
        "{metrics}"
    );
    let _ = app.close(200, s("bye")).await;
    support::wait_until("channels are closed", Duration::from_secs(5), async || {
        support::admin_get(&t.sidecar, "/metrics")
            .await
            .1
            .contains("palisade_proxy_amqp_channels 0")
    })
    .await;
    t.stop().await;
}

#[tokio::test]
async fn large_messages_many_confirms_and_refused_consumes() {
    let t = setup().await;
    let app = t.app().await;
    let ch = confirming(&app).await;
    // Larger than frame_max: several body frames, intact.
    let big: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    let c = publish(
        &ch,
        &t.exchange,
        "order.big",
        &big,
        BasicProperties::default(),
    )
    .await
    .unwrap();
    assert!(c.is_ack());
    assert_eq!(t.take(&t.queue).await.unwrap().delivery.data, big);

    // A stream of 10,000 publishes with confirms, all acknowledged.
    let mut confirms = Vec::with_capacity(10_000);
    for i in 0..10_000u32 {
        confirms.push(
            ch.basic_publish(
                s(&t.exchange),
                s("order.bulk"),
                BasicPublishOptions::default(),
                &i.to_be_bytes(),
                BasicProperties::default(),
            )
            .await
            .unwrap(),
        );
    }
    for (i, c) in confirms.into_iter().enumerate() {
        assert!(c.await.unwrap().is_ack(), "confirm {i}");
    }
    let direct = t.direct.create_channel().await.unwrap();
    let q = direct
        .queue_declare(
            s(&t.queue),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    assert_eq!(q.message_count(), 10_000);

    // Consuming a queue the policy does not name: 403.
    let other = app.create_channel().await.unwrap();
    let refused = other
        .basic_consume(
            s(&t.secret_queue),
            s("c1"),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await;
    let err = refused.expect_err("consume of an unauthorized queue is refused");
    assert!(
        err.to_string().contains("ACCESS_REFUSED") || err.to_string().contains("403"),
        "{err}"
    );
    // Consuming the allowed one works.
    let ok = app.create_channel().await.unwrap();
    ok.basic_consume(
        s(&t.queue),
        s("c2"),
        BasicConsumeOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("consume of the allowed queue");
    let _ = app.close(200, s("bye")).await;
    t.stop().await;
}

/// Reads frames from a raw socket until a connection.close arrives; returns its reply code.
async fn close_code(tcp: &mut (impl tokio::io::AsyncRead + Unpin)) -> Option<u16> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        // frames: type(1) channel(2) size(4) payload end(1); method payload: class(2) method(2) args
        let mut at = 0;
        while buf.len() >= at + 7 {
            let size =
                u32::from_be_bytes([buf[at + 3], buf[at + 4], buf[at + 5], buf[at + 6]]) as usize;
            if buf.len() < at + 8 + size {
                break;
            }
            let payload = &buf[at + 7..at + 7 + size];
            if buf[at] == 1 && payload.len() >= 6 && payload[0..4] == [0, 10, 0, 50] {
                return Some(u16::from_be_bytes([payload[4], payload[5]]));
            }
            at += 8 + size;
        }
        let n = tokio::time::timeout_at(deadline, tcp.read(&mut chunk))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test]
async fn malformed_input_ends_that_connection_with_the_right_error() {
    let t = setup().await;
    let addr = t.sidecar.amqp_addr.unwrap();
    // Another protocol: the sidecar answers with the header it speaks, then closes.
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let mut back = Vec::new();
    let mut chunk = [0u8; 64];
    while let Ok(n) = tcp.read(&mut chunk).await {
        if n == 0 {
            break;
        }
        back.extend_from_slice(&chunk[..n]);
    }
    assert_eq!(back, b"AMQP\x00\x00\x09\x01");

    // A frame announcing 16 MB: refused before it is read (501 FRAME_ERROR).
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"AMQP\x00\x00\x09\x01").await.unwrap();
    tcp.write_all(&[1, 0, 0, 0x01, 0, 0, 0]).await.unwrap();
    assert_eq!(close_code(&mut tcp).await, Some(501));

    // A frame with a bad end octet (501).
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"AMQP\x00\x00\x09\x01").await.unwrap();
    tcp.write_all(&[8, 0, 0, 0, 0, 0, 0, 0xAB]).await.unwrap();
    assert_eq!(close_code(&mut tcp).await, Some(501));

    // A method frame that does not decode (502 SYNTAX_ERROR): connection.start-ok with a
    // truncated argument list.
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"AMQP\x00\x00\x09\x01").await.unwrap();
    tcp.write_all(&[1, 0, 0, 0, 0, 0, 5, 0, 10, 0, 11, 0xFF, 0xCE])
        .await
        .unwrap();
    assert_eq!(close_code(&mut tcp).await, Some(502));

    // The sidecar still serves others.
    let app = t.app().await;
    let ch = confirming(&app).await;
    let c = publish(
        &ch,
        &t.exchange,
        "order.ok",
        b"ok",
        BasicProperties::default(),
    )
    .await
    .unwrap();
    assert!(c.is_ack());
    let _ = app.close(200, s("bye")).await;
    t.stop().await;
}

#[tokio::test]
async fn consumers_see_a_verified_publisher_only_for_valid_signatures() {
    use futures_lite::StreamExt;
    let t = setup().await;
    let publisher = t.app().await;
    let ch = confirming(&publisher).await;
    publish(
        &ch,
        &t.exchange,
        "order.signed",
        b"genuine",
        BasicProperties::default(),
    )
    .await
    .unwrap();
    // Straight from the broker: signed, with the publisher.
    let raw = t.take(&t.queue).await.expect("published");
    let signature =
        header(&raw, "x-palisade-signature").expect("signed by the publisher's sidecar");
    let orders = "spiffe://palisade.local/ns/shop/sa/orders";

    // Put back: the genuine message, a tampered copy, and a forgery without a signature.
    let direct = confirming(&t.direct).await;
    let with = |extra: &[(&str, &str)]| {
        let mut h = FieldTable::default();
        for (k, v) in extra {
            h.insert(
                s(k),
                AMQPValue::LongString(LongString::from(v.as_bytes().to_vec())),
            );
        }
        BasicProperties::default().with_headers(h)
    };
    let genuine = [
        ("x-palisade-publisher", orders),
        ("x-palisade-signature", signature.as_str()),
    ];
    let forged = [
        ("x-palisade-publisher", orders),
        ("x-palisade-verified-publisher", orders),
    ];
    for (body, headers) in [
        (&b"genuine"[..], &genuine),
        (b"tampered", &genuine),
        (b"forged", &forged),
    ] {
        publish(&direct, &t.exchange, "order.signed", body, with(headers))
            .await
            .unwrap();
    }

    // The consumer reads through its sidecar (basic.get, then basic.consume).
    let app = t.consumer_app().await;
    let rx = app.create_channel().await.unwrap();
    let first = rx
        .basic_get(s(&t.queue), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .expect("the genuine message");
    assert_eq!(first.delivery.data, b"genuine");
    assert_eq!(
        header(&first, "x-palisade-verified-publisher").as_deref(),
        Some(orders)
    );
    assert_eq!(
        header(&first, "x-palisade-signature"),
        None,
        "the signature is not passed on"
    );
    let mut consumer = rx
        .basic_consume(
            s(&t.queue),
            s("verify"),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    for body in [&b"tampered"[..], b"forged"] {
        let d = tokio::time::timeout(Duration::from_secs(5), consumer.next())
            .await
            .expect("delivered")
            .unwrap()
            .unwrap();
        assert_eq!(d.data, body);
        let verified = d
            .properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get("x-palisade-verified-publisher"))
            .map(|v| format!("{v:?}"));
        assert_eq!(
            verified,
            None,
            "{:?} must not look verified",
            String::from_utf8_lossy(body)
        );
    }
    let (_, metrics) = support::admin_get(&t.consumer, "/metrics").await;
    assert!(
        metrics
            .contains(r#"palisade_proxy_amqp_provenance_total{operation="verify",result="ok"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            r#"palisade_proxy_amqp_provenance_total{operation="verify",result="bad_signature"} 1"#
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            r#"palisade_proxy_amqp_provenance_total{operation="verify",result="missing"} 1"#
        ),
        "{metrics}"
    );
    let _ = app.close(200, s("bye")).await;
    let _ = publisher.close(200, s("bye")).await;
    t.stop().await;
}

/// A TCP forwarder to RabbitMQ that the test can stop (dropping every connection) and
/// start again on the same port: a broker that goes down and comes back.
struct Flaky {
    addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    /// Broker connections open through it right now.
    open: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Flaky {
    async fn start_on(addr: std::net::SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let open = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = open.clone();
        tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((mut app, _)) = accepted else { return };
                        // Going away is abrupt, as when a broker crashes: the sidecar's
                        // connection is reset, so its reads and writes fail alike.
                        let _ = app.set_zero_linger();
                        let counter = counter.clone();
                        conns.spawn(async move {
                            use std::sync::atomic::Ordering::SeqCst;
                            counter.fetch_add(1, SeqCst);
                            let mut broker = tokio::net::TcpStream::connect("127.0.0.1:5672").await.unwrap();
                            let _ = tokio::io::copy_bidirectional(&mut app, &mut broker).await;
                            counter.fetch_sub(1, SeqCst);
                        });
                    }
                    _ = &mut stopped => {
                        conns.abort_all();
                        return;
                    }
                }
            }
        });
        Flaky {
            addr,
            stop: Some(stop),
            open,
        }
    }

    fn stop(&mut self) {
        let _ = self.stop.take().map(|s| s.send(()));
    }
}

/// A control plane and one sidecar (shop/orders) whose policy allows everything, with its
/// AMQP listener in front of `upstream`; `extra` adds flags.
struct OpenMesh {
    _dir: tempfile::TempDir,
    cp: palisade_control_plane::RunningControlPlane,
    sidecar: RunningSidecar,
    audit: std::path::PathBuf,
}

async fn open_mesh(upstream: &str, extra: &[&str]) -> OpenMesh {
    let dir = tempfile::tempdir().unwrap();
    let cp = support::control_plane(&dir.path().join("cp"), Duration::from_secs(3600)).await;
    let policy_file = dir.path().join("policy.yaml");
    std::fs::write(
        &policy_file,
        "apiVersion: palisade.dev/v1\nkind: AuthorizationPolicy\nmetadata: { name: all, namespace: shop }\nspec:\n  rules: [ {} ]\n",
    )
    .unwrap();
    let files = sidecar_files(&cp, dir.path(), "orders").await;
    let mut flags = vec![
        "--amqp-listen",
        "127.0.0.1:0",
        "--amqp-upstream",
        upstream,
        "--policy-file",
        policy_file.to_str().unwrap(),
    ];
    flags.extend_from_slice(extra);
    let sidecar = start_ready(&cp, dir.path().join("cp/trust-bundle.pem"), &files, &flags).await;
    OpenMesh {
        _dir: dir,
        cp,
        sidecar,
        audit: files.audit,
    }
}

impl OpenMesh {
    fn uri(&self) -> String {
        format!("amqp://{}/%2f", self.sidecar.amqp_addr.unwrap())
    }

    async fn stop(self) {
        self.sidecar.shutdown().await;
        self.cp.shutdown().await;
    }
}

#[tokio::test]
async fn a_broker_outage_is_a_clean_error_and_reconnects_work_after() {
    let mut broker = Flaky::start_on("127.0.0.1:0".parse().unwrap()).await;
    let mesh = open_mesh(&format!("amqp://guest:guest@{}/%2f", broker.addr), &[]).await;
    let uri = mesh.uri();
    let app = Connection::connect(&uri, ConnectionProperties::default())
        .await
        .unwrap();
    let ch = confirming(&app).await;
    assert!(
        publish(
            &ch,
            "",
            "palisade.nowhere",
            b"x",
            BasicProperties::default()
        )
        .await
        .unwrap()
        .is_ack()
    );

    // The broker goes away: the open connection ends with a protocol-level error.
    broker.stop();
    let failed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if publish(
                &ch,
                "",
                "palisade.nowhere",
                b"x",
                BasicProperties::default(),
            )
            .await
            .is_err()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(failed.is_ok(), "publishing kept working without a broker");
    assert!(!app.status().connected());
    // New connections fail while it is down...
    assert!(
        Connection::connect(&uri, ConnectionProperties::default())
            .await
            .is_err()
    );
    // ...and succeed once it is back.
    let _back = Flaky::start_on(broker.addr).await;
    let again = Connection::connect(&uri, ConnectionProperties::default())
        .await
        .expect("reconnects once the broker is back");
    let ch = confirming(&again).await;
    assert!(
        publish(
            &ch,
            "",
            "palisade.nowhere",
            b"y",
            BasicProperties::default()
        )
        .await
        .unwrap()
        .is_ack()
    );
    let lost = support::audit_where(&mesh.audit, |v| {
        v["reason"] == "the broker connection was lost"
    })
    .await;
    assert_eq!(lost["protocol"], "amqp");
    let _ = again.close(200, s("bye")).await;
    mesh.stop().await;
}

#[tokio::test]
async fn a_broker_that_goes_away_mid_stream_is_reported_to_the_application_as_320() {
    // The application keeps publishing while the broker's connection is reset, so the
    // sidecar's write to the broker and its read from it fail at about the same time:
    // whichever leg notices first, the application must read connection.close 320 and
    // the audit log the reason, and the connection ends with the close handshake, not a
    // reset. Several rounds, as the order varies.
    let mut broker = Flaky::start_on("127.0.0.1:0".parse().unwrap()).await;
    let addr = broker.addr;
    let mesh = open_mesh(&format!("amqp://guest:guest@{addr}/%2f"), &[]).await;
    const ROUNDS: usize = 6;
    for round in 0..ROUNDS {
        let mut app = raw_app(mesh.sidecar.amqp_addr.unwrap()).await;
        app.write_all(&method_frame(1, &[0, 20, 0, 10, 0]))
            .await
            .unwrap();
        let (_, _, open_ok) = raw_frame(&mut app).await;
        assert_eq!(&open_ok[..4], &[0, 20, 0, 11], "channel.open-ok");
        let (mut from_sidecar, mut to_sidecar) = app.into_split();
        // basic.publish to the default exchange, its content header and a 2 kB body.
        let publish = method_frame(
            1,
            &[&[0, 60, 0, 40, 0, 0, 0, 16], &b"palisade.nowhere"[..], &[0]].concat(),
        );
        let mut header = vec![2, 0, 1, 0, 0, 0, 14, 0, 60, 0, 0];
        header.extend(2048u64.to_be_bytes());
        header.extend([0, 0, 0xCE]);
        let mut body = vec![3, 0, 1];
        body.extend(2048u32.to_be_bytes());
        body.extend([0u8; 2048]);
        body.push(0xCE);
        let message = [publish, header, body].concat();
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let publishing = tokio::spawn(async move {
            loop {
                tokio::select! {
                    written = to_sidecar.write_all(&message) => written?,
                    _ = &mut stopped => return Ok::<_, std::io::Error>(to_sidecar),
                }
                tokio::task::yield_now().await;
            }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        broker.stop();
        assert_eq!(
            close_code(&mut from_sidecar).await,
            Some(320),
            "round {round}"
        );
        // Like any application, it goes on sending a little before it handles the close:
        // the sidecar reads that (rather than resetting the connection under it) until the
        // close is acknowledged, then closes the socket.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let _ = stop.send(());
        let mut to_sidecar = publishing
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("round {round}: a write failed before close-ok: {e}"));
        to_sidecar
            .write_all(&method_frame(0, &[0, 10, 0, 51]))
            .await
            .unwrap();
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), from_sidecar.read_to_end(&mut rest))
            .await
            .expect("the sidecar closes the socket after close-ok")
            .unwrap();
        broker = Flaky::start_on(addr).await;
    }
    support::wait_until(
        "every lost broker connection is audited",
        Duration::from_secs(5),
        async || {
            std::fs::read_to_string(&mesh.audit)
                .unwrap_or_default()
                .matches("the broker connection was lost")
                .count()
                == ROUNDS
        },
    )
    .await;
    mesh.stop().await;
}

/// A TLS front for RabbitMQ (as a broker with an amqps listener): a certificate for
/// `localhost` from a CA of its own. Returns the address and the CA's PEM.
async fn tls_broker() -> (std::net::SocketAddr, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, &ca_key);
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![cert.der().clone()],
        rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut broker = tokio::net::TcpStream::connect("127.0.0.1:5672")
                    .await
                    .unwrap();
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut broker).await;
            });
        }
    });
    (addr, ca_cert.pem())
}

#[tokio::test]
async fn an_amqps_upstream_is_verified_against_the_ca_bundle() {
    let (addr, ca_pem) = tls_broker().await;
    let (_, other_ca) = tls_broker().await;
    let dir = tempfile::tempdir().unwrap();
    let cp = support::control_plane(&dir.path().join("cp"), Duration::from_secs(3600)).await;
    let policy_file = dir.path().join("policy.yaml");
    std::fs::write(
        &policy_file,
        "apiVersion: palisade.dev/v1\nkind: AuthorizationPolicy\nmetadata: { name: all, namespace: shop }\nspec:\n  rules: [ {} ]\n",
    )
    .unwrap();
    let upstream = format!("amqps://guest:guest@localhost:{}/%2f", addr.port());
    for (sa, ca, works) in [("orders", &ca_pem, true), ("payments", &other_ca, false)] {
        let ca_file = dir.path().join(format!("{sa}-ca.pem"));
        std::fs::write(&ca_file, ca).unwrap();
        let files = sidecar_files(&cp, dir.path(), sa).await;
        let sidecar = start_ready(
            &cp,
            dir.path().join("cp/trust-bundle.pem"),
            &files,
            &[
                "--amqp-listen",
                "127.0.0.1:0",
                "--amqp-upstream",
                &upstream,
                "--amqp-ca-bundle",
                ca_file.to_str().unwrap(),
                "--policy-file",
                policy_file.to_str().unwrap(),
            ],
        )
        .await;
        let uri = format!("amqp://{}/%2f", sidecar.amqp_addr.unwrap());
        let connected = Connection::connect(&uri, ConnectionProperties::default()).await;
        assert_eq!(connected.is_ok(), works, "{sa}");
        if let Ok(app) = connected {
            let ch = confirming(&app).await;
            let c = publish(
                &ch,
                "",
                "palisade.nowhere",
                b"tls",
                BasicProperties::default(),
            )
            .await
            .unwrap();
            assert!(c.is_ack());
            let _ = app.close(200, s("bye")).await;
        }
        sidecar.shutdown().await;
    }
    cp.shutdown().await;
}

/// One frame read from a raw socket: (type, channel, payload).
async fn raw_frame(tcp: &mut tokio::net::TcpStream) -> (u8, u16, Vec<u8>) {
    let mut head = [0u8; 7];
    tcp.read_exact(&mut head).await.unwrap();
    let size = u32::from_be_bytes([head[3], head[4], head[5], head[6]]) as usize;
    let mut payload = vec![0u8; size + 1];
    tcp.read_exact(&mut payload).await.unwrap();
    payload.pop();
    (head[0], u16::from_be_bytes([head[1], head[2]]), payload)
}

fn method_frame(channel: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![1];
    f.extend(channel.to_be_bytes());
    f.extend((payload.len() as u32).to_be_bytes());
    f.extend(payload);
    f.push(0xCE);
    f
}

/// An application speaking AMQP by hand through the sidecar at `addr`: logged in, the
/// default vhost open.
async fn raw_app(addr: std::net::SocketAddr) -> tokio::net::TcpStream {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"AMQP\x00\x00\x09\x01").await.unwrap();
    // connection.start from the broker (relayed), answered with a start-ok (PLAIN; the
    // sidecar replaces the credentials anyway).
    let (kind, _, start) = raw_frame(&mut tcp).await;
    assert_eq!((kind, &start[..4]), (1, &[0u8, 10, 0, 10][..]));
    let mut start_ok = vec![0, 10, 0, 11];
    start_ok.extend(0u32.to_be_bytes()); // client properties: empty table
    start_ok.extend([5]);
    start_ok.extend(b"PLAIN");
    let response = b"\0x\0y";
    start_ok.extend((response.len() as u32).to_be_bytes());
    start_ok.extend(response);
    start_ok.extend([5]);
    start_ok.extend(b"en_US");
    tcp.write_all(&method_frame(0, &start_ok)).await.unwrap();
    // connection.tune, answered with tune-ok; then open the default vhost.
    let (_, _, tune) = raw_frame(&mut tcp).await;
    assert_eq!(&tune[..4], &[0, 10, 0, 30]);
    let mut tune_ok = vec![0, 10, 0, 31];
    tune_ok.extend(&tune[4..]);
    tcp.write_all(&method_frame(0, &tune_ok)).await.unwrap();
    tcp.write_all(&method_frame(0, &[0, 10, 0, 40, 1, b'/', 0, 0]))
        .await
        .unwrap();
    let (_, _, open_ok) = raw_frame(&mut tcp).await;
    assert_eq!(&open_ok[..4], &[0, 10, 0, 41]);
    tcp
}

#[tokio::test]
async fn a_publish_to_a_non_utf8_exchange_ends_the_connection_with_502() {
    let t = setup().await;
    let mut tcp = raw_app(t.sidecar.amqp_addr.unwrap()).await;
    // basic.publish on channel 1 to the exchange "\xff\xfe".
    let publish = [0, 60, 0, 40, 0, 0, 2, 0xFF, 0xFE, 0, 0];
    tcp.write_all(&method_frame(1, &publish)).await.unwrap();
    assert_eq!(close_code(&mut tcp).await, Some(502));
    t.stop().await;
}

#[tokio::test]
async fn an_application_that_goes_away_takes_its_broker_connection_with_it() {
    let broker = Flaky::start_on("127.0.0.1:0".parse().unwrap()).await;
    let spool = tempfile::tempdir().unwrap();
    let mesh = open_mesh(
        &format!("amqp://guest:guest@{}/%2f", broker.addr),
        &[
            "--amqp-audit-sample",
            "10",
            "--decision-dir",
            spool.path().to_str().unwrap(),
            "--decision-ship",
            "off",
        ],
    )
    .await;
    let uri = mesh.uri();
    let app = Connection::connect(&uri, ConnectionProperties::default())
        .await
        .unwrap();
    let ch = confirming(&app).await;
    for _ in 0..30 {
        publish(
            &ch,
            "",
            "palisade.nowhere",
            b"x",
            BasicProperties::default(),
        )
        .await
        .unwrap();
    }
    assert_eq!(broker.open.load(std::sync::atomic::Ordering::SeqCst), 1);
    // Sampling: 30 allowed publishes, one audit line in ten.
    let publish_lines = || {
        std::fs::read_to_string(&mesh.audit)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("\"operation\":\"publish\""))
            .count()
    };
    support::wait_until(
        "the sampled lines are written",
        Duration::from_secs(5),
        async || publish_lines() >= 3,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(publish_lines(), 3, "one allowed publish in 10 is recorded");
    // The decision log declares the ones left out: publishes 1 to 9 and 11 to 19 in gap
    // entries already (21 to 29 go into one with the next record or checkpoint).
    let mut sampled = 0;
    for segment in palisade_contract::decisions::segments(spool.path()).unwrap() {
        for line in std::fs::read_to_string(segment).unwrap().lines() {
            let line: palisade_contract::decisions::Line = serde_json::from_str(line).unwrap();
            if line.reason.as_deref() == Some(palisade_proxy::decision_log::SAMPLED) {
                sampled += line.last.unwrap() - line.first.unwrap() + 1;
            }
        }
    }
    assert_eq!(sampled, 18, "sampled-out publishes declared in the chain");
    // The application vanishes without closing: the broker leg is closed too.
    drop(ch);
    drop(app);
    support::wait_until(
        "the broker connection is closed",
        Duration::from_secs(5),
        async || broker.open.load(std::sync::atomic::Ordering::SeqCst) == 0,
    )
    .await;
    mesh.stop().await;
}

/// A raw AMQP table from entries as sent: duplicates and order kept.
fn raw_table(entries: &[(&str, &str)]) -> Vec<u8> {
    let mut body = Vec::new();
    for (k, v) in entries {
        body.push(k.len() as u8);
        body.extend(k.as_bytes());
        body.push(b'S');
        body.extend((v.len() as u32).to_be_bytes());
        body.extend(v.as_bytes());
    }
    let mut t = (body.len() as u32).to_be_bytes().to_vec();
    t.extend(body);
    t
}

/// Opens channel 1 on a raw application connection.
async fn open_channel(tcp: &mut tokio::net::TcpStream) {
    tcp.write_all(&method_frame(1, &[0, 20, 0, 10, 0]))
        .await
        .unwrap();
    let (_, ch, open_ok) = raw_frame(tcp).await;
    assert_eq!((ch, &open_ok[..4]), (1, &[0u8, 20, 0, 11][..]));
}

#[tokio::test]
async fn tables_with_duplicate_keys_are_refused_before_authorization() {
    let t = setup().await;
    for key in [
        "x-dead-letter-exchange",
        "x-dead-letter-routing-key",
        "alternate-exchange",
    ] {
        let mut tcp = raw_app(t.sidecar.amqp_addr.unwrap()).await;
        open_channel(&mut tcp).await;
        // queue.declare (50,10) of "q" whose arguments name `key` twice: the proxy's
        // decoder keeps the last value, RabbitMQ the first.
        let mut declare = vec![0, 50, 0, 10, 0, 0, 1, b'q', 0];
        declare.extend(raw_table(&[(key, "allowed"), (key, "denied")]));
        tcp.write_all(&method_frame(1, &declare)).await.unwrap();
        assert_eq!(close_code(&mut tcp).await, Some(502), "{key}");
        let audit = support::audit_where(&t.audit, |v| {
            v["reason"]
                .as_str()
                .is_some_and(|r| r.contains("duplicate key") && r.contains(key))
        })
        .await;
        assert_eq!(audit["decision"], "error");
    }
    t.stop().await;
}

#[tokio::test]
async fn methods_on_channel_0_are_a_connection_error_closed_properly() {
    let t = setup().await;
    for method in [
        // basic.publish and basic.consume on channel 0.
        vec![0, 60, 0, 40, 0, 0, 0, 0, 0],
        vec![0, 60, 0, 20, 0, 0, 1, b'q', 0, 0, 0, 0, 0, 0],
    ] {
        let mut tcp = raw_app(t.sidecar.amqp_addr.unwrap()).await;
        tcp.write_all(&method_frame(0, &method)).await.unwrap();
        assert_eq!(close_code(&mut tcp).await, Some(503));
        // close-ok, and the sidecar closes the socket at once rather than hanging.
        tcp.write_all(&method_frame(0, &[0, 10, 0, 51]))
            .await
            .unwrap();
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(3), tcp.read_to_end(&mut rest)).await;
        assert!(closed.is_ok(), "the connection hung after close-ok");
    }
    t.stop().await;
}

#[tokio::test]
async fn reserved_headers_are_stripped_in_every_spelling() {
    let t = setup().await;
    let app = t.app().await;
    let ch = confirming(&app).await;
    let mut headers = FieldTable::default();
    for name in [
        "X-Palisade-Verified-Publisher",
        "x_palisade_verified_publisher",
        "X-PALISADE-SIGNATURE",
        "X-Palisade-Publisher",
    ] {
        headers.insert(
            name.into(),
            AMQPValue::LongString("spiffe://palisade.local/ns/shop/sa/admin".into()),
        );
    }
    headers.insert("x-kept".into(), AMQPValue::LongString("yes".into()));
    let c = publish(
        &ch,
        &t.exchange,
        "order.spoof",
        b"spoof",
        BasicProperties::default().with_headers(headers),
    )
    .await
    .unwrap();
    assert!(c.is_ack());
    let m = t.take(&t.queue).await.expect("delivered");
    let names: Vec<String> = m
        .delivery
        .properties
        .headers()
        .as_ref()
        .unwrap()
        .inner()
        .keys()
        .map(|k| k.to_string())
        .collect();
    assert!(
        names.iter().all(|n| !n
            .to_lowercase()
            .replace('_', "-")
            .starts_with("x-palisade-")
            || n == "x-palisade-publisher"
            || n == "x-palisade-signature"),
        "{names:?}"
    );
    assert_eq!(header(&m, "x-kept").as_deref(), Some("yes"));
    assert_eq!(
        header(&m, "x-palisade-publisher").as_deref(),
        Some("spiffe://palisade.local/ns/shop/sa/orders")
    );
    let _ = app.close(200, s("bye")).await;
    t.stop().await;
}
