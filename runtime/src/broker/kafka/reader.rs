//! A consumer group member that commits only what its caller marked done.

use std::time::Duration;

use async_trait::async_trait;
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::{ClientConfig, ClientContext, Statistics};

use super::record_message;
use crate::broker::{BrokerError, Record, SubscribeOptions, TopicReader};
use crate::telemetry;

/// How often librdkafka commits the offsets stored by `commit`.
const AUTO_COMMIT_INTERVAL: Duration = Duration::from_secs(1);

/// How often librdkafka reports its statistics, which give the lag.
const STATISTICS_INTERVAL: Duration = Duration::from_secs(5);

pub(super) struct KafkaReader {
    broker: String,
    topic: String,
    consumer: StreamConsumer<LagContext>,
}

/// Publishes the lag of a member's partitions, from the statistics that
/// librdkafka reports every [`STATISTICS_INTERVAL`].
struct LagContext {
    group: String,
}

impl ClientContext for LagContext {
    fn stats(&self, statistics: Statistics) {
        for (topic, topic_stats) in &statistics.topics {
            for (partition, partition_stats) in &topic_stats.partitions {
                // Partition -1 is librdkafka's internal one. A negative lag
                // is unknown, as for a partition that this member does not read.
                if *partition < 0 || partition_stats.consumer_lag < 0 {
                    continue;
                }
                metrics::gauge!(telemetry::CONSUMER_LAG,
                    "group" => self.group.clone(),
                    "topic" => topic.clone(),
                    "partition" => partition.to_string())
                .set(partition_stats.consumer_lag as f64);
            }
        }
    }
}

impl ConsumerContext for LagContext {}

impl KafkaReader {
    /// Joins the group on `topic`. Offsets are stored only by `commit` and
    /// committed in the background and on close, so a record that was read
    /// but not marked is read again by the member that gets its partition next.
    pub(super) fn subscribe(
        broker: &str,
        mut config: ClientConfig,
        topic: &str,
        options: &SubscribeOptions,
    ) -> Result<KafkaReader, BrokerError> {
        let max_poll_ms = options.max_poll_interval.as_millis().max(1).to_string();
        config
            .set("group.id", &options.group)
            .set("client.id", &options.client_id)
            .set("enable.auto.commit", "true")
            .set(
                "auto.commit.interval.ms",
                AUTO_COMMIT_INTERVAL.as_millis().to_string(),
            )
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("allow.auto.create.topics", "false")
            .set("max.poll.interval.ms", &max_poll_ms)
            .set(
                "statistics.interval.ms",
                STATISTICS_INTERVAL.as_millis().to_string(),
            );
        let context = LagContext {
            group: options.group.clone(),
        };
        let consumer: StreamConsumer<LagContext> =
            config
                .create_with_context(context)
                .map_err(|err| BrokerError::Unreachable {
                    broker: broker.to_owned(),
                    reason: format!("cannot create a consumer for topic `{topic}`: {err}"),
                })?;
        consumer.subscribe(&[topic]).map_err(|err| {
            BrokerError::Protocol(format!("cannot subscribe to `{topic}`: {err}"))
        })?;
        Ok(KafkaReader {
            broker: broker.to_owned(),
            topic: topic.to_owned(),
            consumer,
        })
    }
}

#[async_trait]
impl TopicReader for KafkaReader {
    async fn next(&mut self) -> Result<Record, BrokerError> {
        match self.consumer.recv().await {
            Ok(record) => {
                use rdkafka::Message as _;
                Ok(Record {
                    topic: record.topic().to_owned(),
                    partition: record.partition(),
                    offset: record.offset(),
                    message: record_message(&record),
                })
            }
            Err(KafkaError::MessageConsumption(
                RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic,
            )) => Err(BrokerError::NotFound {
                kind: "topic",
                name: self.topic.clone(),
            }),
            Err(err) => Err(BrokerError::Closed(format!(
                "reading topic `{}` from broker `{}` failed: {err}",
                self.topic, self.broker
            ))),
        }
    }

    fn commit(&mut self, record: &Record) -> Result<(), BrokerError> {
        // librdkafka's single-offset store keeps `offset + 1`, the position
        // of the next record to read.
        self.consumer
            .store_offset(&record.topic, record.partition, record.offset)
            .map_err(|err| {
                BrokerError::Protocol(format!(
                    "cannot store offset {} of `{}` partition {}: {err}",
                    record.offset, record.topic, record.partition
                ))
            })
    }

    async fn close(self: Box<Self>) {
        // Both the final commit and dropping the consumer (which leaves the
        // group) block until the broker responds.
        let topic = self.topic.clone();
        let closed = tokio::task::spawn_blocking(move || {
            match self.consumer.commit_consumer_state(CommitMode::Sync) {
                Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
                Err(err) => {
                    tracing::warn!(topic = %self.topic, error = %err,
                        "final offset commit failed; the uncommitted records will be read again");
                }
            }
            drop(self);
        })
        .await;
        if closed.is_err() {
            tracing::warn!(%topic, "closing the consumer failed");
        }
    }
}
