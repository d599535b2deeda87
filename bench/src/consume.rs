//! AMQP consume pipeline: a pre-loaded queue drained by switchyard (decode,
//! validate, no-op wasm handler, ack) with its default worker threads and
//! with one, by the Node.js consumer loop, and by raw lapin with per-message
//! and with batched acks, alternating.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::figures::Figure;
use crate::fixture::legacy_order_event;
use crate::process::{Process, ResidentPeak, counter_value};
use crate::rabbit::{self, AckMode};
use crate::suite::Suite;

/// Prefetch of every consumer in this scenario.
pub const PREFETCH: u16 = 100;
/// Size of each pre-loaded message in bytes.
const MESSAGE_BYTES: usize = 1024;
/// Deliveries per `multiple` ack of the batched raw lapin consumer.
const ACK_BATCH: u32 = 50;
/// Queue of the switchyard consumer, declared by `bench/manifests/pipeline.toml`.
const PIPELINE_QUEUE: &str = "pipeline";
/// Retry queue that switchyard declares beside the pipeline queue.
const PIPELINE_RETRY_QUEUE: &str = "pipeline.retry";
/// Queue the baselines drain, declared by the suite.
const BASELINE_QUEUE: &str = "baseline-consume";
/// Maximum wait for one drain.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(300);

/// The rates of one alternating run, in messages per second, and the peak
/// resident memory of switchyard and Node.js in MiB.
#[derive(Debug, Default)]
struct Samples {
    switchyard: Vec<f64>,
    /// Switchyard with `--workers 1`.
    switchyard_one_worker: Vec<f64>,
    node: Vec<f64>,
    lapin_per_message: Vec<f64>,
    lapin_batched: Vec<f64>,
    switchyard_peak_mib: Vec<f64>,
    node_peak_mib: Vec<f64>,
}

pub async fn run(suite: &Suite) -> anyhow::Result<Vec<Figure>> {
    let body = legacy_order_event(MESSAGE_BYTES);

    // One start of switchyard declares the pipeline queue and fills the
    // compiled-component cache, so every measured start is alike.
    let (process, _) = suite
        .start_switchyard_ready("consume-provision", "bench/manifests/pipeline.toml", &[])
        .await?;
    process.stop().await?;
    rabbit::declare_queue(&suite.connection, BASELINE_QUEUE).await?;
    rabbit::purge(&suite.connection, PIPELINE_QUEUE).await?;
    rabbit::purge(&suite.connection, BASELINE_QUEUE).await?;

    let mut samples = Samples::default();
    for run in 1..=suite.runs {
        preload(suite, PIPELINE_QUEUE, &body).await?;
        let (rate, peak) = drain_switchyard(suite, &[]).await?;
        samples.switchyard.push(rate);
        samples.switchyard_peak_mib.push(peak);

        preload(suite, PIPELINE_QUEUE, &body).await?;
        let (rate, _) = drain_switchyard(suite, &["--workers", "1"]).await?;
        samples.switchyard_one_worker.push(rate);

        preload(suite, BASELINE_QUEUE, &body).await?;
        let (rate, peak) = drain_node(suite).await?;
        samples.node.push(rate);
        samples.node_peak_mib.push(peak);

        preload(suite, BASELINE_QUEUE, &body).await?;
        let rate = drain_lapin(suite, AckMode::PerMessage).await?;
        samples.lapin_per_message.push(rate);

        preload(suite, BASELINE_QUEUE, &body).await?;
        let rate = drain_lapin(suite, AckMode::Multiple(ACK_BATCH)).await?;
        samples.lapin_batched.push(rate);

        println!(
            "  consume run {run}: switchyard {:.0}/s, with one worker {:.0}/s, node {:.0}/s, \
             lapin per-message ack {:.0}/s, lapin multiple ack {:.0}/s",
            samples.switchyard[run - 1],
            samples.switchyard_one_worker[run - 1],
            samples.node[run - 1],
            samples.lapin_per_message[run - 1],
            samples.lapin_batched[run - 1],
        );
    }
    // The pipeline queue is bound to `events` with `order.placed`, which the
    // HTTP scenario publishes to. Left in place, it would take a copy of
    // every publish there and grow from run to run.
    for queue in [PIPELINE_QUEUE, PIPELINE_RETRY_QUEUE, BASELINE_QUEUE] {
        rabbit::delete_queue(&suite.connection, queue).await?;
    }
    Ok(figures(&samples))
}

fn figures(samples: &Samples) -> Vec<Figure> {
    vec![
        Figure::versus(
            "amqp_pipeline_vs_node",
            &samples.switchyard,
            "msg/s",
            "node_amqplib_consumer",
            &samples.node,
        ),
        Figure::versus(
            "amqp_pipeline_vs_raw_lapin",
            &samples.switchyard,
            "msg/s",
            "raw_lapin_multiple_ack_50",
            &samples.lapin_batched,
        ),
        Figure::versus(
            "amqp_pipeline_one_worker_vs_raw_lapin",
            &samples.switchyard_one_worker,
            "msg/s",
            "raw_lapin_multiple_ack_50",
            &samples.lapin_batched,
        ),
        Figure::versus(
            "amqp_pipeline_vs_raw_lapin_per_message_ack",
            &samples.switchyard,
            "msg/s",
            "raw_lapin_per_message_ack",
            &samples.lapin_per_message,
        ),
        Figure::versus(
            "rss_amqp_consume_load_vs_node",
            &samples.switchyard_peak_mib,
            "MiB",
            "node_amqplib_consumer",
            &samples.node_peak_mib,
        ),
    ]
}

async fn preload(suite: &Suite, queue: &str, body: &[u8]) -> anyhow::Result<()> {
    rabbit::publish_confirmed(&suite.connection, "", queue, body, suite.messages).await?;
    Ok(())
}

/// Starts switchyard with the `extra` arguments on the pre-loaded pipeline
/// queue and returns the rate of `handled_rate` and the peak resident memory.
async fn drain_switchyard(suite: &Suite, extra: &[&str]) -> anyhow::Result<(f64, f64)> {
    let (mut process, base) =
        suite.start_switchyard("consume", "bench/manifests/pipeline.toml", extra)?;
    let peak = ResidentPeak::start(process.pid());
    let rate = handled_rate(suite, &mut process, &base, PIPELINE_QUEUE, suite.messages).await?;
    let peak = peak.finish();
    process.stop().await?;
    Ok((rate, peak))
}

/// Polls switchyard's `/metrics` every 10 ms until `consumer` has handled
/// `target` events successfully. Returns the rate from the first poll that
/// saw a handled event to the one that saw all of them.
pub async fn handled_rate(
    suite: &Suite,
    process: &mut Process,
    base: &str,
    consumer: &str,
    target: u32,
) -> anyhow::Result<f64> {
    let target = f64::from(target);
    let started = Instant::now();
    let mut first: Option<(Instant, f64)> = None;
    loop {
        if started.elapsed() > DRAIN_TIMEOUT {
            bail!("switchyard did not handle {target} events within {DRAIN_TIMEOUT:?}");
        }
        process.check_running()?;
        tokio::time::sleep(Duration::from_millis(10)).await;
        let Ok(metrics) = suite.metrics(base).await else {
            continue;
        };
        let handled = counter_value(
            &metrics,
            "switchyard_events_handled_total",
            &[("consumer", consumer), ("outcome", "ok")],
        );
        let now = Instant::now();
        match first {
            None if handled > 0.0 => first = Some((now, handled)),
            Some((at, count)) if handled >= target => {
                return Ok((target - count) / (now - at).as_secs_f64());
            }
            _ => {}
        }
    }
}

/// Runs the Node.js consumer loop on the baseline queue and returns the rate
/// it printed and its peak resident memory.
async fn drain_node(suite: &Suite) -> anyhow::Result<(f64, f64)> {
    let mut command = suite.node_command("consume.js");
    command
        .arg(BASELINE_QUEUE)
        .arg(suite.messages.to_string())
        .arg(PREFETCH.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = command
        .spawn()
        .context("cannot run `node`; is Node.js installed?")?;
    let peak = ResidentPeak::start(child.id().unwrap_or(0));
    let output = tokio::time::timeout(DRAIN_TIMEOUT, child.wait_with_output())
        .await
        .context("node consume.js timed out")??;
    let peak = peak.finish();
    if !output.status.success() {
        bail!(
            "node consume.js failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let report: serde_json::Value =
        serde_json::from_slice(&output.stdout).context("node consume.js printed no JSON report")?;
    let rate = report["per_second"]
        .as_f64()
        .context("node consume.js report has no `per_second`")?;
    Ok((rate, peak))
}

async fn drain_lapin(suite: &Suite, mode: AckMode) -> anyhow::Result<f64> {
    let drain = rabbit::consume_raw(
        &suite.connection,
        BASELINE_QUEUE,
        suite.messages,
        PREFETCH,
        mode,
    );
    tokio::time::timeout(DRAIN_TIMEOUT, drain)
        .await
        .context("raw lapin consumer timed out")?
}

#[cfg(test)]
mod tests {
    use crate::fixture::legacy_order_event;

    #[test]
    fn legacy_order_event_has_requested_length() {
        let event = legacy_order_event(1024);
        assert_eq!(event.len(), 1024);
        let value: serde_json::Value = serde_json::from_slice(&event).unwrap();
        assert_eq!(value["type"], "order.placed");
    }
}
