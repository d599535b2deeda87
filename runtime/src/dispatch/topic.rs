//! Topic consumers: group members that handle their partitions one record
//! at a time, so per-partition order is kept even while a record is retried.
//! A failing record is retried in place with backoff, then written to the
//! dead-letter topic; its offset is committed only after one of those
//! succeeded.

use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{
    ATTEMPT_HEADER, CONSUMER_HEADER, Consumer, Disposition, REASON_HEADER, Services, TopicInput,
    backoff, decide, wait_for_handler,
};
use crate::broker::{HeaderValue, Record, SubscribeOptions, TopicReader};
use crate::handler::LoadedHandler;
use crate::telemetry;

/// Headers of a dead-lettered record with the position it was read from.
pub const TOPIC_HEADER: &str = "x-switchyard-topic";
pub const PARTITION_HEADER: &str = "x-switchyard-partition";
pub const OFFSET_HEADER: &str = "x-switchyard-offset";

/// Runs the consumer's group members until `shutdown`; each finishes the
/// record it is handling and commits before it leaves the group.
pub(super) async fn run(
    consumer: Consumer,
    input: TopicInput,
    handler: watch::Receiver<Option<LoadedHandler>>,
    services: Services,
    shutdown: CancellationToken,
) {
    let mut members = JoinSet::new();
    for index in 0..input.members.max(1) {
        members.spawn(run_member(
            consumer.clone(),
            input.clone(),
            index,
            handler.clone(),
            services.clone(),
            shutdown.clone(),
        ));
    }
    while members.join_next().await.is_some() {}
    services
        .readiness
        .set(format!("consumer:{}", consumer.name), false, "stopped");
}

/// Returns the longest time a member may spend on one record: every
/// attempt running to its deadline, with every backoff between them, twice
/// over, and at least librdkafka's default of five minutes. A member that
/// takes longer is considered stuck by the group.
fn max_poll_interval(consumer: &Consumer) -> Duration {
    let attempts = consumer.retry.max_attempts.max(1);
    let mut worst = consumer.context.limits.timeout.saturating_mul(attempts);
    for attempt in 1..attempts {
        worst = worst.saturating_add(consumer.retry.delay(attempt));
    }
    // Kafka accepts at most one day.
    worst
        .saturating_mul(2)
        .max(Duration::from_secs(300))
        .min(Duration::from_secs(86_400))
}

async fn run_member(
    consumer: Consumer,
    input: TopicInput,
    index: u32,
    mut handler: watch::Receiver<Option<LoadedHandler>>,
    services: Services,
    shutdown: CancellationToken,
) {
    let check = format!("consumer:{}", consumer.name);
    let options = SubscribeOptions {
        group: input.group.clone(),
        client_id: format!("switchyard-{}-{index}", consumer.name),
        max_poll_interval: max_poll_interval(&consumer),
    };
    let mut failures = 0u32;
    loop {
        if !wait_for_handler(&consumer, &mut handler, &services, &shutdown).await {
            return;
        }
        let reader = tokio::select! {
            _ = shutdown.cancelled() => return,
            reader = consumer.broker.subscribe(&input.topic, &options) => reader,
        };
        let mut reader = match reader {
            Ok(reader) => reader,
            Err(err) => {
                failures += 1;
                let delay = backoff(failures);
                tracing::warn!(consumer = %consumer.name, topic = %input.topic, error = %err,
                    retry_in = ?delay, "cannot join the consumer group");
                services
                    .readiness
                    .set(&check, false, format!("cannot consume: {err}"));
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(delay) => continue,
                }
            }
        };
        failures = 0;
        services.readiness.set(&check, true, "running");
        tracing::info!(consumer = %consumer.name, topic = %input.topic, group = %input.group,
            member = index, "topic consumer started");

        let end = read(
            &consumer,
            &input,
            reader.as_mut(),
            &handler,
            &services,
            &shutdown,
        )
        .await;
        reader.close().await;
        match end {
            ReadEnd::Shutdown => return,
            ReadEnd::HandlerGone => continue,
        }
    }
}

enum ReadEnd {
    Shutdown,
    HandlerGone,
}

/// Reads and handles records until shutdown or until the handler goes away.
async fn read(
    consumer: &Consumer,
    input: &TopicInput,
    reader: &mut dyn TopicReader,
    handler: &watch::Receiver<Option<LoadedHandler>>,
    services: &Services,
    shutdown: &CancellationToken,
) -> ReadEnd {
    let mut failures = 0u32;
    loop {
        let next = tokio::select! {
            _ = shutdown.cancelled() => return ReadEnd::Shutdown,
            next = reader.next() => next,
        };
        let record = match next {
            Ok(record) => record,
            Err(err) => {
                failures += 1;
                let delay = backoff(failures);
                tracing::warn!(consumer = %consumer.name, topic = %input.topic, error = %err,
                    retry_in = ?delay, "reading the topic failed");
                tokio::select! {
                    _ = shutdown.cancelled() => return ReadEnd::Shutdown,
                    _ = tokio::time::sleep(delay) => continue,
                }
            }
        };
        failures = 0;
        if handler.borrow().is_none() {
            // The record is not committed, so it is read again.
            return ReadEnd::HandlerGone;
        }

        consumer.metrics.in_flight.increment(1.0);
        let settled = handle(consumer, input, &record, handler, services, shutdown).await;
        consumer.metrics.in_flight.decrement(1.0);
        if !settled {
            return ReadEnd::Shutdown;
        }
        if let Err(err) = reader.commit(&record) {
            // The record is handled again after the next rebalance or restart.
            tracing::warn!(consumer = %consumer.name, topic = %record.topic,
                partition = record.partition, offset = record.offset, error = %err,
                "cannot store the offset of a handled record");
        }
    }
}

/// Handles one record until it succeeded or was dead-lettered, retrying in
/// place. Returns false when shutdown interrupted it before either.
///
/// Each attempt runs in a span of its own, so the event's fields, recorded
/// once the record is decoded, appear once on each log line.
async fn handle(
    consumer: &Consumer,
    input: &TopicInput,
    record: &Record,
    handler: &watch::Receiver<Option<LoadedHandler>>,
    services: &Services,
    shutdown: &CancellationToken,
) -> bool {
    let mut previous = 0u32;
    loop {
        let span = tracing::info_span!(
            "event",
            consumer = %consumer.name,
            topic = %record.topic,
            partition = record.partition,
            offset = record.offset,
            event_id = tracing::field::Empty,
            event_type = tracing::field::Empty,
            trace_id = tracing::field::Empty,
        );
        let step = attempt(
            consumer, input, record, handler, services, shutdown, previous,
        )
        .instrument(span)
        .await;
        match step {
            Step::Settled(settled) => return settled,
            Step::Retried(attempt) => previous = attempt,
        }
    }
}

/// The result of one attempt at a record.
enum Step {
    /// Handled or dead-lettered (true), or interrupted by shutdown (false).
    Settled(bool),
    /// Failed and waited out its backoff; the number of calls so far.
    Retried(u32),
}

/// Runs one attempt at a record: the handler call, then the backoff of a
/// retry or the dead letter. `previous` counts the calls before it.
async fn attempt(
    consumer: &Consumer,
    input: &TopicInput,
    record: &Record,
    handler: &watch::Receiver<Option<LoadedHandler>>,
    services: &Services,
    shutdown: &CancellationToken,
    previous: u32,
) -> Step {
    // A reload between attempts takes effect for the next attempt.
    let Some(loaded) = handler.borrow().clone() else {
        return Step::Settled(false);
    };
    let decided = decide(consumer, services, &loaded, &record.message, previous).await;
    // Released before the backoff, so that after a reload the old version's
    // instances do not wait for this record's next attempt.
    drop(loaded);
    let disposition = match decided {
        Ok(disposition) => disposition,
        Err(err) => {
            tracing::warn!(error = %err,
                "publishing emitted events failed; the record will be retried");
            super::Disposition::Retry {
                attempt: previous + 1,
            }
        }
    };
    let settled = match disposition {
        Disposition::Ack => {
            consumer.metrics.handled_ok.increment(1);
            true
        }
        Disposition::Retry { attempt } if attempt >= consumer.retry.max_attempts => {
            let reason = format!("failed {attempt} attempts; last failure was a retry");
            dead_letter(
                consumer,
                input,
                record,
                reason,
                "max_attempts",
                attempt,
                shutdown,
            )
            .await
        }
        Disposition::Retry { attempt } => {
            metrics::counter!(telemetry::EVENTS_HANDLED, "consumer" => consumer.name.to_string(), "outcome" => "retry")
                .increment(1);
            let delay = consumer.retry.delay(attempt);
            tracing::info!(attempt, retry_in = ?delay, "retrying record; its partition waits");
            return tokio::select! {
                _ = shutdown.cancelled() => Step::Settled(false),
                _ = tokio::time::sleep(delay) => Step::Retried(attempt),
            };
        }
        Disposition::DeadLetter {
            reason,
            label,
            attempt,
        } => dead_letter(consumer, input, record, reason, label, attempt, shutdown).await,
    };
    Step::Settled(settled)
}

/// Writes a record to the dead-letter topic with the reason in headers,
/// retrying until the broker acknowledged it, because committing the record
/// without its dead letter would lose it. Returns false on shutdown.
async fn dead_letter(
    consumer: &Consumer,
    input: &TopicInput,
    record: &Record,
    reason: String,
    label: &'static str,
    attempt: u32,
    shutdown: &CancellationToken,
) -> bool {
    tracing::warn!(%reason, attempt, dead_letter_topic = %input.dead_letter_topic,
        "dead-lettering record");
    let mut copy = record.message.clone();
    let headers = &mut copy.headers;
    headers.insert(REASON_HEADER.into(), reason.into());
    headers.insert(CONSUMER_HEADER.into(), consumer.name.to_string().into());
    headers.insert(ATTEMPT_HEADER.into(), HeaderValue::Int(attempt.into()));
    headers.insert(TOPIC_HEADER.into(), record.topic.clone().into());
    headers.insert(
        PARTITION_HEADER.into(),
        HeaderValue::Int(record.partition.into()),
    );
    headers.insert(OFFSET_HEADER.into(), HeaderValue::Int(record.offset));

    let mut failures = 0u32;
    loop {
        match consumer
            .broker
            .produce(&input.dead_letter_topic, copy.clone())
            .await
        {
            Ok(()) => break,
            Err(err) => {
                failures += 1;
                let delay = backoff(failures);
                tracing::warn!(dead_letter_topic = %input.dead_letter_topic,
                    error = %err, retry_in = ?delay,
                    "cannot write dead letter; the partition waits until it can");
                tokio::select! {
                    _ = shutdown.cancelled() => return false,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
    let name = consumer.name.to_string();
    metrics::counter!(telemetry::EVENTS_HANDLED, "consumer" => name.clone(), "outcome" => "dead_lettered")
        .increment(1);
    metrics::counter!(telemetry::EVENTS_DEAD_LETTERED, "consumer" => name, "reason" => label)
        .increment(1);
    true
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use super::*;
    use crate::broker::embedded::EmbeddedBroker;
    use crate::dispatch::{Input, RetryPolicy};
    use crate::handler::{CallContext, Limits};
    use crate::schema::Schemas;

    fn consumer(timeout: Duration, max_attempts: u32) -> Consumer {
        Consumer {
            name: Arc::from("c"),
            input: Input::Topic(TopicInput {
                topic: "t".into(),
                group: "g".into(),
                dead_letter_topic: "t.dead-letters".into(),
                members: 1,
            }),
            broker: Arc::new(EmbeddedBroker::new()),
            prefetch: 1,
            concurrency: 1,
            retry: RetryPolicy {
                max_attempts,
                backoff: Duration::from_secs(1),
                max_backoff: Duration::from_secs(300),
            },
            context: CallContext {
                consumer: Arc::from("c"),
                config: Arc::new(BTreeMap::new()),
                schemas: Schemas::default(),
                limits: Limits {
                    timeout,
                    memory: 1 << 20,
                    emit_size: 1 << 20,
                    calls_per_instance: 1000,
                },
                grants: Arc::default(),
            },
            source: "/test/c".into(),
            handler_path: None,
            metrics: crate::dispatch::ConsumerMetrics::new("c"),
        }
    }

    #[test]
    fn poll_interval_has_five_minute_floor() {
        // 5 calls of 2 s and backoffs of 1 + 2 + 4 + 8 s: 25 s, doubled.
        let interval = max_poll_interval(&consumer(Duration::from_secs(2), 5));
        assert_eq!(interval, Duration::from_secs(300));
    }

    #[test]
    fn poll_interval_covers_slow_handler() {
        // 5 calls of 120 s and backoffs of 15 s: 615 s, doubled.
        let interval = max_poll_interval(&consumer(Duration::from_secs(120), 5));
        assert_eq!(interval, Duration::from_secs(1230));
    }

    #[test]
    fn poll_interval_capped_at_one_day() {
        let interval = max_poll_interval(&consumer(Duration::from_secs(3600), 100));
        assert_eq!(interval, Duration::from_secs(86_400));
    }
}
