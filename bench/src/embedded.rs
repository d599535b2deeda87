//! Embedded broker end to end: `up --embedded` with the pipeline manifest,
//! `POST /orders` under wrk, each event routed in process to the no-op
//! handler and acknowledged.

use std::time::{Duration, Instant};

use anyhow::bail;

use crate::figures::Figure;
use crate::process::counter_value;
use crate::suite::Suite;
use crate::wrk;

/// Maximum wait after a wrk run for the consumer to catch up.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(120);

pub async fn run(suite: &Suite) -> anyhow::Result<Vec<Figure>> {
    let (process, base) = suite
        .start_switchyard_ready("embedded", "bench/manifests/pipeline.toml", &["--embedded"])
        .await?;
    let script = suite.path("bench/wrk/post-order.lua");
    let url = format!("{base}/orders");
    warm_up(suite, &url, &script, &base).await?;

    let mut rates = Vec::new();
    for run in 1..=suite.runs {
        let before = handled(suite, &base).await?;
        let started = Instant::now();
        let report = wrk::run(&url, &script, suite.http_connections, suite.http_duration).await?;
        let after = catch_up(suite, &base).await?;
        let rate = (after - before) / started.elapsed().as_secs_f64();
        println!(
            "  embedded run {run}: {rate:.0} events/s handled ({:.0} req/s, p99 {:.2} ms)",
            report.requests_per_second, report.p99_ms
        );
        rates.push(rate);
    }
    process.stop().await?;
    Ok(vec![Figure::alone(
        "embedded_end_to_end",
        &rates,
        "events/s",
    )])
}

/// Runs wrk for 2 s and waits for the consumer, so that connections, the
/// compile cache and the allocator pools are warm before the measured runs.
pub(crate) async fn warm_up(
    suite: &Suite,
    url: &str,
    script: &std::path::Path,
    base: &str,
) -> anyhow::Result<()> {
    wrk::run(url, script, suite.http_connections, Duration::from_secs(2)).await?;
    catch_up(suite, base).await?;
    Ok(())
}

async fn handled(suite: &Suite, base: &str) -> anyhow::Result<f64> {
    let labels = [("consumer", "pipeline"), ("outcome", "ok")];
    suite
        .counter(base, "switchyard_events_handled_total", &labels)
        .await
}

/// Waits until every published `order.placed` was handled, and returns the
/// handled count.
pub(crate) async fn catch_up(suite: &Suite, base: &str) -> anyhow::Result<f64> {
    let started = Instant::now();
    loop {
        let metrics = suite.metrics(base).await?;
        let published = counter_value(
            &metrics,
            "switchyard_events_published_total",
            &[("event_type", "order.placed")],
        );
        let handled = counter_value(
            &metrics,
            "switchyard_events_handled_total",
            &[("consumer", "pipeline")],
        );
        if handled >= published {
            return Ok(handled);
        }
        if started.elapsed() > CATCH_UP_TIMEOUT {
            bail!(
                "embedded consumer handled {handled} of {published} events within {CATCH_UP_TIMEOUT:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
