//! RabbitMQ for the benchmarks: the run's own vhost, pre-loading queues,
//! and the raw lapin baselines (consume and ack, publish with confirms).

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions, QueuePurgeOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};

/// Address of the RabbitMQ node the suite measures against.
pub const ADDRESS: &str = "127.0.0.1:5672";

/// Publishes awaited in one batch of confirms while pre-loading.
const CONFIRM_WINDOW: usize = 5_000;

/// A vhost created for this run, deleted by `delete`.
pub struct Vhost {
    pub name: String,
}

impl Vhost {
    /// Creates `name`, deleting a vhost of that name left by an earlier run
    /// first, and grants `guest` all permissions on it.
    pub fn create(name: &str) -> anyhow::Result<Vhost> {
        let _ = rabbitmqctl(&["delete_vhost", name]);
        rabbitmqctl(&["add_vhost", name])?;
        rabbitmqctl(&["set_permissions", "-p", name, "guest", ".*", ".*", ".*"])?;
        Ok(Vhost {
            name: name.to_owned(),
        })
    }

    /// Returns the AMQP URL of this vhost for the `guest` user.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@{ADDRESS}/{}", self.name)
    }

    pub fn delete(self) -> anyhow::Result<()> {
        rabbitmqctl(&["delete_vhost", &self.name])
    }
}

fn rabbitmqctl(args: &[&str]) -> anyhow::Result<()> {
    let output = Command::new("rabbitmqctl")
        .arg("--quiet")
        .args(args)
        .output()
        .context("cannot run `rabbitmqctl`; is RabbitMQ installed and on PATH?")?;
    if !output.status.success() {
        bail!(
            "`rabbitmqctl {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

pub async fn connect(url: &str) -> anyhow::Result<Connection> {
    Connection::connect(url, ConnectionProperties::default())
        .await
        .with_context(|| format!("cannot connect to RabbitMQ at {ADDRESS}; is it running?"))
}

/// Declares a durable classic queue without arguments.
pub async fn declare_queue(connection: &Connection, queue: &str) -> anyhow::Result<()> {
    let channel = connection.create_channel().await?;
    let options = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(queue.into(), options, FieldTable::default())
        .await?;
    channel.close(200, "OK".into()).await?;
    Ok(())
}

/// Declares a durable topic exchange and a durable queue bound to it with
/// `routing_key`.
pub async fn declare_bound_queue(
    connection: &Connection,
    exchange: &str,
    queue: &str,
    routing_key: &str,
) -> anyhow::Result<()> {
    declare_queue(connection, queue).await?;
    let channel = connection.create_channel().await?;
    let options = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    channel
        .exchange_declare(
            exchange.into(),
            ExchangeKind::Topic,
            options,
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            routing_key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    channel.close(200, "OK".into()).await?;
    Ok(())
}

/// Deletes every ready message of `queue` and returns how many there were.
pub async fn purge(connection: &Connection, queue: &str) -> anyhow::Result<u32> {
    let channel = connection.create_channel().await?;
    let count = channel
        .queue_purge(queue.into(), QueuePurgeOptions::default())
        .await?;
    channel.close(200, "OK".into()).await?;
    Ok(count)
}

/// Deletes `queue` with its messages and bindings.
pub async fn delete_queue(connection: &Connection, queue: &str) -> anyhow::Result<()> {
    let channel = connection.create_channel().await?;
    channel
        .queue_delete(queue.into(), QueueDeleteOptions::default())
        .await
        .with_context(|| format!("cannot delete queue `{queue}`"))?;
    channel.close(200, "OK".into()).await?;
    Ok(())
}

/// Publishes `count` persistent copies of `body` with publisher confirms,
/// awaiting the confirms in batches, and returns the publishes per second.
pub async fn publish_confirmed(
    connection: &Connection,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    count: u32,
) -> anyhow::Result<f64> {
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into());
    let started = Instant::now();
    let mut pending = Vec::with_capacity(CONFIRM_WINDOW);
    for _ in 0..count {
        let confirm = channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                body,
                properties.clone(),
            )
            .await?;
        pending.push(confirm);
        if pending.len() == CONFIRM_WINDOW {
            await_confirms(&mut pending).await?;
        }
    }
    await_confirms(&mut pending).await?;
    let rate = f64::from(count) / started.elapsed().as_secs_f64();
    channel.close(200, "OK".into()).await?;
    Ok(rate)
}

/// The rate and tail latency of [`publish_each_confirmed`].
pub struct ConfirmedPublishes {
    pub rate: f64,
    pub p99_ms: f64,
}

/// Publishes persistent copies of `body` for `duration` from `publishers`
/// tasks that each wait for their own confirm before the next publish, as
/// an HTTP handler that responds after the confirm does. The tasks share
/// `channels` confirm-mode channels. Returns the confirmed publishes per
/// second and the 99th percentile of publish-to-confirm latency.
pub async fn publish_each_confirmed(
    connection: &Connection,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    publishers: u32,
    channels: usize,
    duration: Duration,
) -> anyhow::Result<ConfirmedPublishes> {
    let mut opened = Vec::with_capacity(channels);
    for _ in 0..channels.max(1) {
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        opened.push(channel);
    }

    let properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into());
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for publisher in 0..publishers as usize {
        let channel = opened[publisher % opened.len()].clone();
        let (exchange, routing_key) = (exchange.to_owned(), routing_key.to_owned());
        let (body, properties) = (body.to_vec(), properties.clone());
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            while started.elapsed() < duration {
                let sent = Instant::now();
                let confirm = channel
                    .basic_publish(
                        exchange.as_str().into(),
                        routing_key.as_str().into(),
                        BasicPublishOptions::default(),
                        &body,
                        properties.clone(),
                    )
                    .await?
                    .await?;
                if !confirm.is_ack() {
                    bail!("the broker did not confirm a publish (basic.nack)");
                }
                latencies.push(sent.elapsed());
            }
            anyhow::Ok(latencies)
        });
    }

    let mut latencies = Vec::new();
    while let Some(result) = tasks.join_next().await {
        latencies.extend(result??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    for channel in opened {
        close_channel(channel).await;
    }
    if latencies.is_empty() {
        bail!("no publish was confirmed within {duration:?}");
    }
    latencies.sort_unstable();
    let p99 = latencies[(latencies.len() * 99).div_ceil(100) - 1];
    Ok(ConfirmedPublishes {
        rate: latencies.len() as f64 / elapsed,
        p99_ms: p99.as_secs_f64() * 1000.0,
    })
}

async fn await_confirms(pending: &mut Vec<lapin::PublisherConfirm>) -> anyhow::Result<()> {
    for confirm in futures::future::join_all(pending.drain(..)).await {
        if !confirm?.is_ack() {
            bail!("the broker did not confirm a pre-loaded message (basic.nack)");
        }
    }
    Ok(())
}

/// Acknowledgement strategy of the raw lapin consumer.
#[derive(Clone, Copy, Debug)]
pub enum AckMode {
    /// One `basic.ack` per delivery, each awaited before the next delivery.
    PerMessage,
    /// One `basic.ack` with `multiple` set for every `n` deliveries.
    Multiple(u32),
}

/// Consumes `count` messages from `queue` at `prefetch`, acknowledging as
/// `mode` sets, and returns the deliveries per second from the start of
/// the consumer to the last acknowledgement.
pub async fn consume_raw(
    connection: &Connection,
    queue: &str,
    count: u32,
    prefetch: u16,
    mode: AckMode,
) -> anyhow::Result<f64> {
    let channel = connection.create_channel().await?;
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    let started = Instant::now();
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            "raw-lapin".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut received = 0u32;
    while received < count {
        let delivery = tokio::time::timeout(Duration::from_secs(30), consumer.next())
            .await
            .context("no delivery for 30 s")?
            .context("consumer ended")??;
        received += 1;
        let ack_now = match mode {
            AckMode::PerMessage => Some(false),
            AckMode::Multiple(n) if received.is_multiple_of(n) || received == count => Some(true),
            AckMode::Multiple(_) => None,
        };
        if let Some(multiple) = ack_now {
            delivery.acker.ack(BasicAckOptions { multiple }).await?;
        }
    }
    let rate = f64::from(count) / started.elapsed().as_secs_f64();
    close_channel(channel).await;
    Ok(rate)
}

async fn close_channel(channel: Channel) {
    let _ = channel.close(200, "OK".into()).await;
}
