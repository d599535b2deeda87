//! Kafka pipeline, on one tansu broker started for the scenario. A topic
//! with one partition, pre-loaded with binary-mode CloudEvents carrying
//! 1 KiB of JSON data, is drained by switchyard (decode, validate, no-op
//! wasm handler, offset commit) and by a raw rdkafka consumer that only
//! commits, alternating. Then `POST /orders` on switchyard, which produces
//! each order to a topic with `acks=all`, alternates with a raw rdkafka
//! producer writing records of the same size.

use std::time::Duration;

use anyhow::{Context, bail};
use rdkafka::ClientConfig;

use crate::consume::{DRAIN_TIMEOUT, handled_rate};
use crate::figures::Figure;
use crate::fixture::{order, padded};
use crate::suite::Suite;
use crate::tansu::{self, Tansu};
use crate::wrk;

/// Manifest whose `kafka-pipeline` consumer drains `PIPELINE_TOPIC`.
const PIPELINE_MANIFEST: &str = "bench/manifests/kafka-pipeline.toml";
/// Topic, consumer and consumer group of `PIPELINE_MANIFEST`.
const PIPELINE_TOPIC: &str = "kafka-pipeline";
const PIPELINE_CONSUMER: &str = "kafka-pipeline";
const PIPELINE_GROUP: &str = "switchyard-bench";
/// Manifest whose `POST /orders` produces to a topic of its own.
const ORDERS_MANIFEST: &str = "bench/manifests/kafka-orders.toml";
/// Topic and consumer group of the raw consumer, created by the driver.
const BASELINE_TOPIC: &str = "kafka-baseline";
const BASELINE_GROUP: &str = "raw-rdkafka";
/// Topic the raw producer writes to, created by the driver.
const PRODUCE_TOPIC: &str = "kafka-produce";
const EVENT_TYPE: &str = "order.placed";
/// Size of the JSON data of each record in bytes.
const DATA_BYTES: usize = 1024;
/// Length of the warm-up wrk run before the measured ones.
const WARM_UP: Duration = Duration::from_secs(3);
/// Largest share of failed responses that still counts as a valid run.
const MAX_ERROR_SHARE: f64 = 0.001;

/// The rates of the alternating runs, in records or requests per second,
/// and the p99 latency of `POST /orders` in milliseconds.
#[derive(Debug, Default)]
struct Samples {
    switchyard_consume: Vec<f64>,
    raw_consume: Vec<f64>,
    switchyard_http: Vec<f64>,
    switchyard_http_p99: Vec<f64>,
    raw_produce: Vec<f64>,
}

/// Starts tansu, runs the measurements and stops tansu. Without tansu
/// installed, a run that selected this scenario with `--only` fails, and a
/// run of every scenario skips it.
pub async fn run(suite: &Suite, selected: bool) -> anyhow::Result<Vec<Figure>> {
    let Some(binary) = tansu::binary() else {
        let message = "tansu, the Kafka-protocol broker of this scenario, is not installed; \
                       install it with `cargo install --locked tansu --features dynostore,libsql`, \
                       or set TANSU to its path";
        if selected {
            bail!("{message}");
        }
        println!("  skipped: {message}");
        return Ok(Vec::new());
    };
    let tansu = Tansu::start(&binary, &suite.logs.join("tansu.log")).await?;
    let measured = measure(suite, &tansu).await;
    let stopped = tansu.stop().await;
    let figures = measured?;
    stopped?;
    Ok(figures)
}

async fn measure(suite: &Suite, tansu: &Tansu) -> anyhow::Result<Vec<Figure>> {
    let config = tansu.config();
    let bootstrap = tansu.bootstrap();
    let env = [("KAFKA_BOOTSTRAP", bootstrap.as_str())];
    let data = order_data(DATA_BYTES);

    // One start of switchyard creates the pipeline topic and its
    // dead-letter topic and fills the compiled-component cache, so every
    // measured start is alike.
    let (process, _) = suite
        .start_switchyard_ready_with_env("kafka-provision", PIPELINE_MANIFEST, &[], &env)
        .await?;
    process.stop().await?;
    tansu::create_topic(&config, BASELINE_TOPIC, 1).await?;
    tansu::create_topic(&config, PRODUCE_TOPIC, 1).await?;

    let mut samples = Samples::default();
    for run in 1..=suite.runs {
        // Both topics were empty before the first run.
        let produced = i64::from(suite.messages) * i64::try_from(run)?;
        tansu::produce_events(&config, PIPELINE_TOPIC, EVENT_TYPE, &data, suite.messages).await?;
        let rate = drain_switchyard(suite, &env).await?;
        samples.switchyard_consume.push(rate);
        check_committed(&config, PIPELINE_TOPIC, PIPELINE_GROUP, produced).await?;

        tansu::produce_events(&config, BASELINE_TOPIC, EVENT_TYPE, &data, suite.messages).await?;
        let drain =
            tansu::consume_and_commit(&config, BASELINE_TOPIC, BASELINE_GROUP, suite.messages);
        let rate = tokio::time::timeout(DRAIN_TIMEOUT, drain)
            .await
            .context("the raw rdkafka consumer timed out")??;
        samples.raw_consume.push(rate);
        check_committed(&config, BASELINE_TOPIC, BASELINE_GROUP, produced).await?;

        println!(
            "  kafka consume run {run}: switchyard {:.0}/s, raw rdkafka consume + commit {:.0}/s",
            samples.switchyard_consume[run - 1],
            samples.raw_consume[run - 1],
        );
    }

    publish(suite, &config, &env, &data, &mut samples).await?;
    Ok(figures(&samples))
}

/// Alternates wrk runs of `POST /orders` on switchyard, which produces each
/// order to Kafka, with raw rdkafka producing `suite.messages` records.
async fn publish(
    suite: &Suite,
    config: &ClientConfig,
    env: &[(&str, &str)],
    data: &[u8],
    samples: &mut Samples,
) -> anyhow::Result<()> {
    let (process, base) = suite
        .start_switchyard_ready_with_env("kafka-orders", ORDERS_MANIFEST, &[], env)
        .await?;
    let url = format!("{base}/orders");
    let script = suite.path("bench/wrk/post-order-1k.lua");
    wrk::run(&url, &script, suite.http_connections, WARM_UP).await?;
    for run in 1..=suite.runs {
        let report = wrk::run(&url, &script, suite.http_connections, suite.http_duration).await?;
        if report.errors as f64 > report.requests as f64 * MAX_ERROR_SHARE {
            bail!(
                "{}: {} of {} responses were errors; see its log",
                process.name,
                report.errors,
                report.requests
            );
        }
        samples.switchyard_http.push(report.requests_per_second);
        samples.switchyard_http_p99.push(report.p99_ms);

        let rate =
            tansu::produce_events(config, PRODUCE_TOPIC, EVENT_TYPE, data, suite.messages).await?;
        samples.raw_produce.push(rate);
        println!(
            "  kafka publish run {run}: switchyard {:.0} req/s p99 {:.2} ms, \
             raw rdkafka produce acks=all {rate:.0}/s",
            report.requests_per_second, report.p99_ms,
        );
    }
    process.stop().await
}

fn figures(samples: &Samples) -> Vec<Figure> {
    vec![
        Figure::versus(
            "kafka_pipeline_vs_raw_rdkafka",
            &samples.switchyard_consume,
            "msg/s",
            "raw_rdkafka_consume_commit",
            &samples.raw_consume,
        ),
        Figure::versus(
            "kafka_http_publish_vs_raw_rdkafka_produce",
            &samples.switchyard_http,
            "req/s",
            "raw_rdkafka_produce_acks_all",
            &samples.raw_produce,
        ),
        Figure::alone("kafka_http_publish_p99", &samples.switchyard_http_p99, "ms"),
    ]
}

/// Starts switchyard on the pre-loaded pipeline topic and returns the rate
/// from its first to its last handled event.
async fn drain_switchyard(suite: &Suite, env: &[(&str, &str)]) -> anyhow::Result<f64> {
    let (mut process, base) =
        suite.start_switchyard_with_env("kafka-pipeline", PIPELINE_MANIFEST, &[], env)?;
    let rate = handled_rate(
        suite,
        &mut process,
        &base,
        PIPELINE_CONSUMER,
        suite.messages,
    )
    .await?;
    process.stop().await?;
    Ok(rate)
}

/// Fails unless `group` committed offset `expected` of `topic`: every
/// record produced so far. Each run produces new records and the group
/// resumes from its committed offset, so an offset left behind would make
/// the next run read old records.
async fn check_committed(
    config: &ClientConfig,
    topic: &str,
    group: &str,
    expected: i64,
) -> anyhow::Result<()> {
    let committed = tansu::committed_offset(config, topic, group).await?;
    if committed != expected {
        bail!(
            "consumer group `{group}` committed offset {committed} of topic `{topic}`, \
             but {expected} records were produced to it"
        );
    }
    Ok(())
}

/// Returns the JSON data of a valid `order.placed` event, padded with a
/// `note` field to `bytes` long (or a little over when `bytes` is small).
fn order_data(bytes: usize) -> Vec<u8> {
    padded(order(), "/note", bytes)
}

#[cfg(test)]
mod tests {
    use super::order_data;

    #[test]
    fn order_data_has_requested_length() {
        let data = order_data(1024);
        assert_eq!(data.len(), 1024);
        let value: serde_json::Value = serde_json::from_slice(&data).unwrap();
        assert_eq!(value["customerId"], "cus_1");
    }
}
