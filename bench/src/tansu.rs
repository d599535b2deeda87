//! Kafka for the benchmarks: a tansu broker (a Kafka-protocol broker with
//! in-memory storage) started for the run, and topic creation. It also has
//! the raw rdkafka baselines, a producer with `acks=all` and a consumer
//! group member that commits offsets as switchyard's topic consumers do.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio::process::Command;

use crate::process::{self, Process};

/// Maximum time from starting tansu to it accepting connections.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Maximum wait for the next record while consuming.
const RECORD_TIMEOUT: Duration = Duration::from_secs(30);
/// Maximum time of a committed-offset request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Records the raw producer keeps in flight before it waits for the
/// oldest delivery report; below librdkafka's default queue limit of
/// 100,000 messages.
const PRODUCE_WINDOW: usize = 10_000;
/// librdkafka's auto-commit interval in switchyard's topic consumers
/// (`runtime/src/broker/kafka/reader.rs`), copied by the raw consumer.
const AUTO_COMMIT_INTERVAL_MS: &str = "1000";

/// Returns the tansu binary: `TANSU` if set, else `tansu` on `PATH`, else
/// `~/.cargo/bin/tansu`, or `None` when none of them exists.
pub fn binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("TANSU") {
        return Some(PathBuf::from(path));
    }
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("tansu"))
                .collect()
        })
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(PathBuf::from(home).join(".cargo/bin/tansu"));
    }
    candidates.into_iter().find(|path| path.is_file())
}

/// Returns the first line that `tansu --version` prints, or an empty
/// string when tansu is not installed.
pub fn version() -> String {
    let Some(binary) = binary() else {
        return String::new();
    };
    std::process::Command::new(binary)
        .arg("--version")
        .output()
        .map(|output| {
            String::from_utf8_lossy(&output.stdout)
                .lines()
                .next()
                .unwrap_or_default()
                .trim()
                .to_owned()
        })
        .unwrap_or_default()
}

/// A tansu broker on a free loopback port, with its output in a log file.
pub struct Tansu {
    process: Process,
    port: u16,
}

impl Tansu {
    /// Starts `binary` with in-memory storage on a free loopback port and
    /// waits until it accepts connections.
    pub async fn start(binary: &Path, log: &Path) -> anyhow::Result<Tansu> {
        let port = process::free_port()?;
        let url = format!("tcp://127.0.0.1:{port}");
        let mut command = Command::new(binary);
        command
            .args(["broker", "--listener-url", &url])
            .args(["--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/"])
            .env("RUST_LOG", "warn");
        let mut process = Process::start("tansu", command, log)?;
        let started = Instant::now();
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            process.check_running()?;
            if started.elapsed() > START_TIMEOUT {
                bail!(
                    "tansu did not accept connections on 127.0.0.1:{port} within \
                     {START_TIMEOUT:?}; see `{}`",
                    log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Tansu { process, port })
    }

    /// Returns the bootstrap address, such as `127.0.0.1:40123`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Returns a client configuration with only the bootstrap address.
    pub fn config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", self.bootstrap());
        config
    }

    pub async fn stop(self) -> anyhow::Result<()> {
        self.process.stop().await
    }
}

/// Creates `topic` with `partitions` partitions and one replica.
pub async fn create_topic(
    config: &ClientConfig,
    topic: &str,
    partitions: i32,
) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = config.create()?;
    let new_topic = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let results = admin
        .create_topics([&new_topic], &AdminOptions::new())
        .await?;
    for result in results {
        result.map_err(|(name, code)| anyhow::anyhow!("cannot create topic `{name}`: {code}"))?;
    }
    Ok(())
}

/// Returns the record headers of a binary-mode CloudEvent with the given id
/// and type and JSON data.
fn cloudevent_headers(id: &str, event_type: &str) -> OwnedHeaders {
    let headers = [
        ("ce_specversion", "1.0"),
        ("ce_id", id),
        ("ce_source", "/switchyard-bench"),
        ("ce_type", event_type),
        ("content-type", "application/json"),
    ];
    headers.iter().fold(
        OwnedHeaders::new_with_capacity(headers.len()),
        |all, (key, value)| {
            all.insert(Header {
                key,
                value: Some(*value),
            })
        },
    )
}

/// Produces `count` binary-mode CloudEvents of `event_type` with `data` as
/// the payload to partition 0 of `topic`, each with its own `ce_id`. The
/// producer has switchyard's settings (`acks=all`, idempotence) and keeps
/// up to `PRODUCE_WINDOW` records in flight. Returns the records per second
/// from the first send to the last delivery report.
pub async fn produce_events(
    config: &ClientConfig,
    topic: &str,
    event_type: &str,
    data: &[u8],
    count: u32,
) -> anyhow::Result<f64> {
    let producer: FutureProducer = config
        .clone()
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .create()?;
    let started = Instant::now();
    let mut pending: VecDeque<DeliveryFuture> = VecDeque::with_capacity(PRODUCE_WINDOW);
    for index in 0..count {
        if pending.len() == PRODUCE_WINDOW
            && let Some(oldest) = pending.pop_front()
        {
            check_delivery(topic, oldest).await?;
        }
        let id = format!("evt_bench_{index}");
        let record = FutureRecord::<(), [u8]>::to(topic)
            .partition(0)
            .payload(data)
            .headers(cloudevent_headers(&id, event_type));
        let delivery = producer
            .send_result(record)
            .map_err(|(err, _)| anyhow::anyhow!("cannot produce to topic `{topic}`: {err}"))?;
        pending.push_back(delivery);
    }
    for delivery in pending {
        check_delivery(topic, delivery).await?;
    }
    Ok(f64::from(count) / started.elapsed().as_secs_f64())
}

async fn check_delivery(topic: &str, delivery: DeliveryFuture) -> anyhow::Result<()> {
    match delivery.await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((err, _))) => bail!("a record to topic `{topic}` was not delivered: {err}"),
        Err(_) => {
            bail!("the producer dropped a record to topic `{topic}` before its delivery report")
        }
    }
}

/// Consumes `count` records of `topic` as a member of `group` and commits
/// their offsets with switchyard's policy. The offset of each record is
/// stored after it was read, librdkafka commits the stored offsets every
/// second, and a synchronous commit follows the last record. Returns the
/// records per second from the first record to the last stored offset, so
/// the group join is left out, as it is for switchyard.
pub async fn consume_and_commit(
    config: &ClientConfig,
    topic: &str,
    group: &str,
    count: u32,
) -> anyhow::Result<f64> {
    let consumer: StreamConsumer = config
        .clone()
        .set("group.id", group)
        .set("client.id", "raw-rdkafka-bench")
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", AUTO_COMMIT_INTERVAL_MS)
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("allow.auto.create.topics", "false")
        .create()?;
    consumer.subscribe(&[topic])?;
    let mut first: Option<Instant> = None;
    for received in 0..count {
        let record = tokio::time::timeout(RECORD_TIMEOUT, consumer.recv())
            .await
            .with_context(|| {
                format!("no record from topic `{topic}` for {RECORD_TIMEOUT:?} after {received}")
            })??;
        first.get_or_insert_with(Instant::now);
        consumer.store_offset(record.topic(), record.partition(), record.offset())?;
    }
    let elapsed = first.map_or(Duration::ZERO, |at| at.elapsed());
    let rate = f64::from(count.saturating_sub(1)) / elapsed.as_secs_f64();
    // The final commit and leaving the group block until tansu responds.
    tokio::task::spawn_blocking(
        move || match consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => Ok(()),
            Err(err) => Err(err),
        },
    )
    .await?
    .context("the final offset commit of the raw consumer failed")?;
    Ok(rate)
}

/// Returns the committed offset of `group` on partition 0 of `topic`, or 0
/// without a commit.
///
/// NOTE: this does not compare with the end offset from
/// `fetch_watermarks`, because tansu 0.6 with in-memory storage returned
/// 1736 there after 2000 records were produced and all 2000 consumed.
pub async fn committed_offset(
    config: &ClientConfig,
    topic: &str,
    group: &str,
) -> anyhow::Result<i64> {
    let mut config = config.clone();
    config.set("group.id", group);
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = config.create()?;
        let mut partitions = TopicPartitionList::new();
        partitions.add_partition(&topic, 0);
        let committed = consumer.committed_offsets(partitions, REQUEST_TIMEOUT)?;
        match committed.elements().first().map(|element| element.offset()) {
            Some(Offset::Offset(offset)) => Ok(offset),
            _ => Ok(0),
        }
    })
    .await?
}
