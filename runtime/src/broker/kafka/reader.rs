//! A consumer group member that commits only what its caller marked done.

use std::time::Duration;

use async_trait::async_trait;
use rdkafka::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use super::record_message;
use crate::broker::{BrokerError, Record, SubscribeOptions, TopicReader};

/// How often librdkafka commits the offsets stored by `commit`.
const AUTO_COMMIT_INTERVAL: Duration = Duration::from_secs(1);

pub(super) struct KafkaReader {
    broker: String,
    topic: String,
    consumer: StreamConsumer,
}

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
            .set("max.poll.interval.ms", &max_poll_ms);
        let consumer: StreamConsumer = config.create().map_err(|err| BrokerError::Unreachable {
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
