//! AMQP publishes of 1 KiB messages through lapin, the same client for every path: straight
//! to RabbitMQ, or through a sidecar's AMQP proxy (which authorizes every publish and, when
//! signing is on, signs each message with the workload key).
//!
//! One connection, one channel, as RabbitMQ's PerfTest does by default. With confirms,
//! up to [`CONFIRM_WINDOW`] publishes wait for their confirm at a time, and a message
//! counts once confirmed. Without, a message counts once lapin has written it, and the run
//! ends with a round trip on the channel so that everything counted has reached the broker.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use lapin::options::{
    BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions, QueueDeclareOptions,
    QueuePurgeOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Connection, ConnectionProperties};

/// The queue publishes go to (through the default exchange), kept short by the broker.
pub const QUEUE: &str = "palisade.bench";
/// Publishes in flight waiting for their confirms.
pub const CONFIRM_WINDOW: usize = 128;

/// Declares the bench queue on the broker directly: at most 10,000 messages, the oldest
/// dropped, so a long run does not fill the broker's memory.
pub async fn prepare(broker: &str) -> anyhow::Result<()> {
    let conn = Connection::connect(broker, ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongInt(10_000));
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString("drop-head".into()),
    );
    ch.queue_declare(
        ShortString::from(QUEUE),
        QueueDeclareOptions {
            auto_delete: false,
            ..Default::default()
        },
        args,
    )
    .await?;
    ch.queue_purge(ShortString::from(QUEUE), QueuePurgeOptions::default())
        .await?;
    conn.close(200, "done".into()).await?;
    Ok(())
}

/// Publishes for `duration` through `url`; messages per second.
pub async fn publish_rate(url: &str, confirms: bool, duration: Duration) -> anyhow::Result<f64> {
    let (done, elapsed) = publish(url, confirms, duration).await?;
    Ok(done as f64 / elapsed.as_secs_f64())
}

/// Publishes for `duration` through `url`: how many messages counted, and in what time.
pub async fn publish(
    url: &str,
    confirms: bool,
    duration: Duration,
) -> anyhow::Result<(u64, Duration)> {
    let conn = Connection::connect(url, ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    if confirms {
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
    }
    let body = vec![b'x'; 1024];
    let mut waiting = VecDeque::with_capacity(CONFIRM_WINDOW);
    let mut done = 0u64;
    let started = Instant::now();
    while started.elapsed() < duration {
        let confirm = ch
            .basic_publish(
                ShortString::from(""),
                ShortString::from(QUEUE),
                BasicPublishOptions::default(),
                &body,
                BasicProperties::default(),
            )
            .await?;
        if confirms {
            waiting.push_back(confirm);
            if waiting.len() == CONFIRM_WINDOW {
                let c = waiting.pop_front().expect("window is full").await?;
                anyhow::ensure!(c.is_ack(), "the broker refused a publish: {c:?}");
                done += 1;
            }
        } else {
            done += 1;
        }
    }
    for c in waiting {
        anyhow::ensure!(c.await?.is_ack(), "the broker refused a publish");
        done += 1;
    }
    // A round trip: the broker answers only after every frame before it.
    ch.basic_qos(1, BasicQosOptions::default()).await?;
    let elapsed = started.elapsed();
    conn.close(200, "done".into()).await?;
    Ok((done, elapsed))
}
