//! The shop demo's services. None of them knows about certificates, tokens or policies:
//! each talks plain HTTP and AMQP to its own sidecar on loopback, which is the point.
//!
//! - `payments`: `POST /charge` charges (in memory); `GET /stats`.
//! - `orders`: `POST /orders` calls `payments` through its sidecar, then publishes
//!   `order.created` to the topic exchange `shop.events` through its sidecar.
//! - `inventory`: declares `shop.events` and its queue, consumes `order.created` and
//!   `audit.#` through its sidecar, and accepts an order only if its sidecar verified that
//!   `orders` published it; `GET /stats` says what it saw.
//! - `rogue`: a compromised workload; runs its four attempts once and prints the outcomes
//!   as JSON lines.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use clap::{Parser, Subcommand};
use futures_lite::StreamExt;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};

const EXCHANGE: &str = "shop.events";
const ORDERS_ID: &str = "spiffe://palisade.local/ns/shop/sa/orders";

#[derive(Debug, Parser)]
#[command(name = "palisade-shop", about = "The shop demo's services")]
struct Cli {
    /// Check the arguments and exit (used to validate docker-compose.yml).
    #[arg(long, global = true, hide = true)]
    check: bool,
    #[command(subcommand)]
    service: Service,
}

#[derive(Debug, Subcommand)]
enum Service {
    /// Charges, in memory.
    Payments {
        #[arg(long)]
        listen: SocketAddr,
    },
    /// Takes orders: charges through payments, then announces them.
    Orders {
        #[arg(long)]
        listen: SocketAddr,
        /// Where HTTP to payments goes (host:port): its sidecar's outbound listener, or with
        /// transparent interception (Kubernetes) payments' own address, which the pod's
        /// rules send through the sidecar anyway.
        #[arg(long)]
        sidecar_http: String,
        /// Where AMQP goes (host:port): its sidecar's AMQP listener, or with interception
        /// the broker's address.
        #[arg(long)]
        sidecar_amqp: String,
    },
    /// Consumes order events; trusts only verified ones.
    Inventory {
        #[arg(long)]
        listen: SocketAddr,
        /// Where AMQP goes (host:port), as for orders.
        #[arg(long)]
        sidecar_amqp: String,
    },
    /// Reads JSON on standard input and prints the value at PATH (keys and indices separated
    /// by dots; `len:PATH` prints an array's length). For the demo script, so that it
    /// needs no JSON tool of its own.
    Json { path: String },
    /// Tries what a compromised workload would; prints each outcome as a JSON line.
    Rogue {
        #[arg(long)]
        sidecar_http: String,
        #[arg(long)]
        sidecar_amqp: String,
        /// payments' sidecar inbound port (host:port), to try without a mesh certificate.
        #[arg(long)]
        payments_inbound: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_paths() {
        let v = json!({"a": [{"b": "x"}, {"b": 2}], "t": true});
        assert_eq!(json_path(&v, "a.0.b"), "x");
        assert_eq!(json_path(&v, "a.1.b"), "2");
        assert_eq!(json_path(&v, "len:a"), "2");
        assert_eq!(json_path(&v, "t"), "true");
        assert_eq!(json_path(&v, "missing.path"), "");
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if cli.check {
        return Ok(());
    }
    match cli.service {
        Service::Payments { listen } => payments(listen).await,
        Service::Orders {
            listen,
            sidecar_http,
            sidecar_amqp,
        } => orders(listen, sidecar_http, sidecar_amqp).await,
        Service::Inventory {
            listen,
            sidecar_amqp,
        } => inventory(listen, sidecar_amqp).await,
        Service::Json { path } => {
            let input: Value = serde_json::from_reader(std::io::stdin()).context("reading JSON")?;
            println!("{}", json_path(&input, &path));
            Ok(())
        }
        Service::Rogue {
            sidecar_http,
            sidecar_amqp,
            payments_inbound,
        } => rogue(sidecar_http, sidecar_amqp, &payments_inbound).await,
    }
}

/// The value at `path` (see `Service::Json`), or an empty string.
fn json_path(v: &Value, path: &str) -> String {
    let (len, path) = match path.strip_prefix("len:") {
        Some(p) => (true, p),
        None => (false, path),
    };
    let mut node = v;
    for key in path.split('.').filter(|k| !k.is_empty()) {
        node = match key.parse::<usize>() {
            Ok(i) => &node[i],
            Err(_) => &node[key],
        };
    }
    match (len, node) {
        (true, Value::Array(a)) => a.len().to_string(),
        (true, _) => String::new(),
        (false, Value::String(s)) => s.clone(),
        (false, Value::Null) => String::new(),
        (false, other) => other.to_string(),
    }
}

fn json_response(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        "application/json".parse().expect("static"),
    );
    r
}

/// Serves `handle` on `listen` (HTTP/1.1) forever.
async fn serve<F, Fut>(listen: SocketAddr, handle: F) -> anyhow::Result<()>
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<Full<Bytes>>> + Send,
{
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    loop {
        let (tcp, _) = listener.accept().await?;
        let handle = handle.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let handle = handle.clone();
                async move { Ok::<_, Infallible>(handle(req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}

async fn payments(listen: SocketAddr) -> anyhow::Result<()> {
    // (charges so far, the caller of the last one as the sidecar vouched for it)
    let charges = Arc::new(Mutex::new((0u64, String::new())));
    serve(listen, move |req: Request<Incoming>| {
        let charges = charges.clone();
        async move {
            match (req.method(), req.uri().path()) {
                (&Method::POST, "/charge") => {
                    let caller = req
                        .headers()
                        .get("x-forwarded-client-cert")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_owned();
                    let n = {
                        let mut c = charges.lock().expect("not poisoned");
                        c.0 += 1;
                        c.1 = caller.clone();
                        c.0
                    };
                    json_response(
                        StatusCode::OK,
                        json!({"charged": true, "charge": n, "caller": caller}),
                    )
                }
                (&Method::GET, "/stats") => {
                    let c = charges.lock().expect("not poisoned");
                    json_response(StatusCode::OK, json!({"charges": c.0, "last_caller": c.1}))
                }
                _ => json_response(StatusCode::NOT_FOUND, json!({"error": "not found"})),
            }
        }
    })
    .await
}

/// An HTTP call through the sidecar's outbound listener to `service`.
async fn call(
    sidecar: &str,
    service: &str,
    method: Method,
    path: &str,
) -> anyhow::Result<(StatusCode, String)> {
    let tcp = TcpStream::connect(sidecar).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, service)
        .body(Full::new(Bytes::new()))?;
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// An AMQP connection through the sidecar. The credentials are deliberately wrong: the
/// sidecar logs in to the broker with its own.
async fn amqp(sidecar: &str) -> anyhow::Result<Connection> {
    let uri = format!("amqp://app:not-the-broker-password@{sidecar}/%2f");
    for attempt in 0.. {
        match Connection::connect(&uri, ConnectionProperties::default()).await {
            Ok(c) => return Ok(c),
            Err(e) if attempt < 50 => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
    unreachable!()
}

fn s(v: &str) -> ShortString {
    ShortString::from(v)
}

async fn orders(
    listen: SocketAddr,
    sidecar_http: String,
    sidecar_amqp: String,
) -> anyhow::Result<()> {
    let connection = amqp(&sidecar_amqp).await?;
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let channel = Arc::new(channel);
    let next = Arc::new(Mutex::new(0u64));
    let sidecar_http: Arc<str> = sidecar_http.into();
    serve(listen, move |req: Request<Incoming>| {
        let (channel, next, sidecar_http) = (channel.clone(), next.clone(), sidecar_http.clone());
        async move {
            if (req.method(), req.uri().path()) != (&Method::POST, "/orders") {
                return json_response(StatusCode::NOT_FOUND, json!({"error": "not found"}));
            }
            let id = {
                let mut n = next.lock().expect("not poisoned");
                *n += 1;
                *n
            };
            match call(&sidecar_http, "payments", Method::POST, "/charge").await {
                Ok((StatusCode::OK, _)) => {}
                Ok((status, body)) => {
                    return json_response(StatusCode::BAD_GATEWAY, json!({"error": "payment refused", "status": status.as_u16(), "detail": body}));
                }
                Err(e) => return json_response(StatusCode::BAD_GATEWAY, json!({"error": e.to_string()})),
            }
            let event = json!({"order": id, "item": "teapot"}).to_string();
            let published = async {
                channel
                    .basic_publish(s(EXCHANGE), s("order.created"), BasicPublishOptions::default(), event.as_bytes(), BasicProperties::default())
                    .await?
                    .await
            };
            match published.await {
                Ok(c) if c.is_ack() => json_response(StatusCode::CREATED, json!({"order": id, "charged": true, "announced": true})),
                Ok(_) => json_response(StatusCode::BAD_GATEWAY, json!({"error": "the broker did not take the event"})),
                Err(e) => json_response(StatusCode::BAD_GATEWAY, json!({"error": e.to_string()})),
            }
        }
    })
    .await
}

#[derive(Debug, Default)]
struct InventoryStats {
    accepted: Vec<Value>,
    rejected: Vec<Value>,
    /// Non-order messages (audit.#): who the sidecar says published them.
    audit: Vec<Value>,
}

fn header(props: &BasicProperties, name: &str) -> Option<String> {
    match props.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongString(v) => Some(String::from_utf8_lossy(v.as_bytes()).into_owned()),
        _ => None,
    }
}

async fn inventory(listen: SocketAddr, sidecar_amqp: String) -> anyhow::Result<()> {
    let connection = amqp(&sidecar_amqp).await?;
    let channel = connection.create_channel().await?;
    channel
        .exchange_declare(
            s(EXCHANGE),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: false,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_declare(
            s("inventory.events"),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    for key in ["order.created", "audit.#"] {
        channel
            .queue_bind(
                s("inventory.events"),
                s(EXCHANGE),
                s(key),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    let mut consumer = channel
        .basic_consume(
            s("inventory.events"),
            s("inventory"),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let stats = Arc::new(Mutex::new(InventoryStats::default()));
    let seen = stats.clone();
    tokio::spawn(async move {
        while let Some(Ok(delivery)) = consumer.next().await {
            let verified = header(&delivery.properties, "x-palisade-verified-publisher");
            let claimed = header(&delivery.properties, "x-palisade-publisher");
            let entry = json!({
                "routing_key": delivery.routing_key.as_str(),
                "body": String::from_utf8_lossy(&delivery.data),
                "verified_publisher": verified,
                "claimed_publisher": claimed,
            });
            {
                let mut s = seen.lock().expect("not poisoned");
                if delivery.routing_key.as_str().starts_with("audit.") {
                    s.audit.push(entry);
                } else if verified.as_deref() == Some(ORDERS_ID) {
                    s.accepted.push(entry);
                } else {
                    s.rejected.push(entry);
                }
            }
            let _ = delivery.acker.ack(BasicAckOptions::default()).await;
        }
    });
    println!("inventory: consuming {EXCHANGE} order.created and audit.#");
    serve(listen, move |_req: Request<Incoming>| {
        let stats = stats.clone();
        async move {
            let s = stats.lock().expect("not poisoned");
            json_response(
                StatusCode::OK,
                json!({"accepted": s.accepted, "rejected": s.rejected, "audit": s.audit}),
            )
        }
    })
    .await
}

async fn rogue(
    sidecar_http: String,
    sidecar_amqp: String,
    payments_inbound: &str,
) -> anyhow::Result<()> {
    let report = |attempt: &str, outcome: Value| {
        println!("{}", json!({"attempt": attempt, "outcome": outcome}))
    };

    // 1. Call payments through its own sidecar: the mesh lets it connect, policy says no.
    match call(&sidecar_http, "payments", Method::POST, "/charge").await {
        Ok((status, body)) => report(
            "charge",
            json!({"status": status.as_u16(), "body": body.trim()}),
        ),
        Err(e) => report("charge", json!({"error": e.to_string()})),
    }

    let connection = amqp(&sidecar_amqp).await?;
    // 2. Publish a fake order.created: refused on that channel.
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let fake = async {
        channel
            .basic_publish(
                s(EXCHANGE),
                s("order.created"),
                BasicPublishOptions::default(),
                br#"{"order": 666, "item": "everything"}"#,
                BasicProperties::default(),
            )
            .await?
            .await
    };
    match fake.await {
        Ok(c) => report("fake-order", json!({"refused": false, "ack": c.is_ack()})),
        Err(e) => report(
            "fake-order",
            json!({"refused": true, "error": e.to_string()}),
        ),
    }

    // 3. Publish where it may, claiming to be orders: the header is replaced.
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let mut forged = FieldTable::default();
    forged.insert(
        s("x-palisade-publisher"),
        AMQPValue::LongString(LongString::from(ORDERS_ID)),
    );
    forged.insert(
        s("x-palisade-verified-publisher"),
        AMQPValue::LongString(LongString::from(ORDERS_ID)),
    );
    let spoof = async {
        channel
            .basic_publish(
                s(EXCHANGE),
                s("audit.rogue"),
                BasicPublishOptions::default(),
                b"I am orders, honest",
                BasicProperties::default().with_headers(forged),
            )
            .await?
            .await
    };
    match spoof.await {
        Ok(c) => report("forged-publisher", json!({"published": c.is_ack()})),
        Err(e) => report(
            "forged-publisher",
            json!({"published": false, "error": e.to_string()}),
        ),
    }
    let _ = connection.close(200, s("done")).await;

    // 4. Skip the sidecars: plain HTTP to payments' inbound port (mTLS only).
    let direct = async {
        let tcp = TcpStream::connect(payments_inbound).await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        tokio::spawn(conn);
        let req = Request::post("/charge")
            .header(http::header::HOST, "payments")
            .body(Full::new(Bytes::new()))?;
        let resp = sender.send_request(req).await?;
        anyhow::Ok(resp.status().as_u16())
    };
    match tokio::time::timeout(Duration::from_secs(5), direct).await {
        Ok(Ok(status)) => report("direct", json!({"refused": false, "status": status})),
        Ok(Err(e)) => report("direct", json!({"refused": true, "error": e.to_string()})),
        Err(_) => report("direct", json!({"refused": true, "error": "timed out"})),
    }
    Ok(())
}
