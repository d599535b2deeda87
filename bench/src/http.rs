//! HTTP publish path: `POST /orders` on switchyard (validate, envelope,
//! confirmed publish) and on the Node.js order service (no confirms) under
//! the same wrk load, alternating with raw lapin publishes of a message of
//! the same size: as many publishers as wrk has connections, each waiting
//! for its confirm, and one publisher with a large window of confirms.

use std::time::{Duration, Instant};

use anyhow::bail;
use lapin::options::BasicGetOptions;
use tokio::process::Command;

use crate::figures::Figure;
use crate::process::{self, Process, ResidentPeak, resident_mib};
use crate::rabbit;
use crate::suite::{START_TIMEOUT, Suite};
use crate::wrk;

/// Queue that `bench/manifests/orders.toml` binds to `order.placed`.
const SWITCHYARD_QUEUE: &str = "orders";
/// The Node.js service publishes to an exchange of its own: switchyard's
/// `events` exchange has an alternate-exchange argument that the service's
/// plain `assertExchange` would conflict with.
const NODE_EXCHANGE: &str = "node-events";
const NODE_QUEUE: &str = "node-orders";
/// Length of the warm-up run of each server before the measured ones.
const WARM_UP: Duration = Duration::from_secs(3);
/// Messages of each raw lapin publish run.
const LAPIN_PUBLISHES: u32 = 20_000;
/// Confirm-mode channels of the raw lapin publishers that await each
/// confirm: as many as switchyard's default publish channel pool.
const LAPIN_CHANNELS: usize = 4;
/// Largest share of failed responses that still counts as a valid run.
const MAX_ERROR_SHARE: f64 = 0.001;

#[derive(Debug, Default)]
struct Samples {
    switchyard_rps: Vec<f64>,
    switchyard_p99: Vec<f64>,
    node_rps: Vec<f64>,
    node_p99: Vec<f64>,
    lapin_rate: Vec<f64>,
    lapin_each_rate: Vec<f64>,
    lapin_each_p99: Vec<f64>,
    switchyard_peak_mib: Vec<f64>,
    node_peak_mib: Vec<f64>,
}

pub async fn run(suite: &Suite) -> anyhow::Result<Vec<Figure>> {
    rabbit::declare_bound_queue(&suite.connection, NODE_EXCHANGE, NODE_QUEUE, "order.placed")
        .await?;
    let (switchyard, switchyard_url) = suite
        .start_switchyard_ready("http", "bench/manifests/orders.toml", &[])
        .await?;
    let (node, node_url) = start_node_service(suite).await?;

    // Idle memory once both are up and settled, before any load.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let switchyard_idle = resident_mib(switchyard.pid()).unwrap_or(f64::NAN);
    let node_idle = resident_mib(node.pid()).unwrap_or(f64::NAN);

    let script = suite.path("bench/wrk/post-order.lua");
    for url in [&switchyard_url, &node_url] {
        wrk::run(
            &format!("{url}/orders"),
            &script,
            suite.http_connections,
            WARM_UP,
        )
        .await?;
    }
    let message = published_message_size(suite).await?;
    purge_both(suite).await?;

    let mut samples = Samples::default();
    for run in 1..=suite.runs {
        let (report, peak) = load(suite, &switchyard, &switchyard_url).await?;
        samples.switchyard_rps.push(report.requests_per_second);
        samples.switchyard_p99.push(report.p99_ms);
        samples.switchyard_peak_mib.push(peak);

        let (node_report, peak) = load(suite, &node, &node_url).await?;
        samples.node_rps.push(node_report.requests_per_second);
        samples.node_p99.push(node_report.p99_ms);
        samples.node_peak_mib.push(peak);
        purge_both(suite).await?;

        let body = vec![b' '; message];
        let awaiting = rabbit::publish_each_confirmed(
            &suite.connection,
            "events",
            "order.placed",
            &body,
            suite.http_connections,
            LAPIN_CHANNELS,
            suite.http_duration,
        )
        .await?;
        samples.lapin_each_rate.push(awaiting.rate);
        samples.lapin_each_p99.push(awaiting.p99_ms);
        purge_both(suite).await?;

        let rate = rabbit::publish_confirmed(
            &suite.connection,
            "events",
            "order.placed",
            &body,
            LAPIN_PUBLISHES,
        )
        .await?;
        samples.lapin_rate.push(rate);
        purge_both(suite).await?;

        println!(
            "  http run {run}: switchyard {:.0} req/s p99 {:.2} ms, node {:.0} req/s p99 {:.2} ms, \
             lapin each confirmed {:.0}/s p99 {:.2} ms, lapin batched confirms {:.0}/s",
            report.requests_per_second,
            report.p99_ms,
            node_report.requests_per_second,
            node_report.p99_ms,
            awaiting.rate,
            awaiting.p99_ms,
            rate
        );
    }
    switchyard.stop().await?;
    node.stop().await?;

    let mut figures = figures(&samples);
    figures.push(Figure::versus(
        "rss_idle_vs_node",
        &[switchyard_idle],
        "MiB",
        "node_express_order_service",
        &[node_idle],
    ));
    Ok(figures)
}

fn figures(samples: &Samples) -> Vec<Figure> {
    vec![
        Figure::versus(
            "http_publish_vs_node",
            &samples.switchyard_rps,
            "req/s",
            "node_express_order_service",
            &samples.node_rps,
        ),
        Figure::versus(
            "http_publish_p99_vs_node",
            &samples.switchyard_p99,
            "ms",
            "node_express_order_service",
            &samples.node_p99,
        ),
        Figure::versus(
            "http_publish_vs_raw_lapin_confirms",
            &samples.switchyard_rps,
            "req/s",
            "raw_lapin_confirmed_publish",
            &samples.lapin_rate,
        ),
        Figure::versus(
            "http_publish_vs_raw_lapin_confirm_each",
            &samples.switchyard_rps,
            "req/s",
            "raw_lapin_publish_awaiting_each_confirm",
            &samples.lapin_each_rate,
        ),
        Figure::versus(
            "http_publish_p99_vs_raw_lapin_confirm_each",
            &samples.switchyard_p99,
            "ms",
            "raw_lapin_publish_awaiting_each_confirm",
            &samples.lapin_each_p99,
        ),
        Figure::versus(
            "rss_http_load_vs_node",
            &samples.switchyard_peak_mib,
            "MiB",
            "node_express_order_service",
            &samples.node_peak_mib,
        ),
    ]
}

async fn start_node_service(suite: &Suite) -> anyhow::Result<(Process, String)> {
    let port = process::free_port()?;
    let mut command: Command = suite.node_command("order-service.js");
    command
        .env("PORT", port.to_string())
        .env("EXCHANGE", NODE_EXCHANGE);
    let log = suite.logs.join("node-order-service.log");
    let mut node = Process::start("node order-service.js", command, &log)?;
    let base = format!("http://127.0.0.1:{port}");
    // Express returns 404 for `GET /`, which shows that it listens.
    let started = Instant::now();
    loop {
        if suite.client.get(&base).send().await.is_ok() {
            break;
        }
        node.check_running()?;
        if started.elapsed() > START_TIMEOUT {
            bail!("node order-service.js did not listen on {base} within {START_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok((node, base))
}

/// Runs wrk once against `base` while sampling the server's memory.
async fn load(suite: &Suite, server: &Process, base: &str) -> anyhow::Result<(wrk::Report, f64)> {
    let script = suite.path("bench/wrk/post-order.lua");
    let peak = ResidentPeak::start(server.pid());
    let report = wrk::run(
        &format!("{base}/orders"),
        &script,
        suite.http_connections,
        suite.http_duration,
    )
    .await?;
    let peak = peak.finish();
    if report.errors as f64 > report.requests as f64 * MAX_ERROR_SHARE {
        bail!(
            "{}: {} of {} responses were errors; see its log",
            server.name,
            report.errors,
            report.requests
        );
    }
    Ok((report, peak))
}

async fn purge_both(suite: &Suite) -> anyhow::Result<()> {
    rabbit::purge(&suite.connection, SWITCHYARD_QUEUE).await?;
    rabbit::purge(&suite.connection, NODE_QUEUE).await?;
    Ok(())
}

/// Returns the body size of one message that switchyard published to its
/// queue, so the raw lapin publishes carry as much.
async fn published_message_size(suite: &Suite) -> anyhow::Result<usize> {
    let channel = suite.connection.create_channel().await?;
    let message = channel
        .basic_get(SWITCHYARD_QUEUE.into(), BasicGetOptions { no_ack: true })
        .await?;
    let _ = channel.close(200, "OK".into()).await;
    match message {
        Some(message) => Ok(message.delivery.data.len()),
        None => bail!("switchyard published nothing to `{SWITCHYARD_QUEUE}` during the warm-up"),
    }
}
