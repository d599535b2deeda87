//! Steady HTTP load on the reference system, `manifests/shop.toml`: orders
//! and sign-ups posted in turn at a fixed rate, with the process's resident
//! memory and queue depths sampled while the load runs.
//!
//! Every `email.sent` and `stock.reserved` that the handlers emit lands in
//! the `notifications` queue, which nothing consumes. The run purges it every
//! few seconds so that a long run does not fill the shared RabbitMQ node,
//! and counts what it removed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use reqwest::StatusCode;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::Switchyard;
use crate::metrics::Metrics;
use crate::shop::{self, DEAD_LETTERED, HANDLED, PUBLISHED};

/// How often the sending loop wakes up to send the requests that are due.
const TICK: Duration = Duration::from_millis(10);

/// How often memory and queue depths are sampled.
const SAMPLE_INTERVAL: Duration = Duration::from_millis(500);

/// How often the `notifications` queue is purged.
const PURGE_INTERVAL: Duration = Duration::from_secs(5);

/// The queues of the three shop consumers.
pub const CONSUMER_QUEUES: [&str; 3] = ["email-service", "inventory-service", "analytics-service"];

/// The queue that collects the events the handlers emit.
pub const NOTIFICATIONS: &str = "notifications";

/// Rate and length of one load run.
#[derive(Clone, Debug)]
pub struct LoadPlan {
    /// Requests per second; orders and users take turns.
    pub rate: u32,
    pub duration: Duration,
    /// Maximum requests waiting for a response. When all are in use, sending
    /// waits, and the run falls behind its rate instead of piling up
    /// requests; the report shows the rate reached.
    pub max_in_flight: usize,
    /// Ready messages in the three consumer queues combined at which the
    /// run stops sending, because the consumers fell behind. This keeps a
    /// run from filling the RabbitMQ node that other tests share.
    pub max_backlog: u32,
}

/// What one load run sent and saw.
#[derive(Debug, Default)]
pub struct LoadReport {
    pub sent: u64,
    pub accepted_orders: u64,
    pub accepted_users: u64,
    /// Responses other than 202, by status code.
    pub rejected: BTreeMap<u16, u64>,
    /// Requests that got no response at all.
    pub failed: u64,
    /// The first rejection or failure, for the failure message.
    pub first_error: Option<String>,
    /// Time from the first request to the last response.
    pub elapsed: Duration,
    /// Resident memory in bytes, one sample per `SAMPLE_INTERVAL` from the
    /// start of the load.
    pub memory: Vec<u64>,
    /// Maximum of the ready messages in the three consumer queues combined.
    pub max_backlog: u32,
    /// Messages purged from `notifications` during the run.
    pub notifications_purged: u64,
    /// Why sending stopped before `duration` ended, if it did.
    pub stopped_early: Option<String>,
}

impl LoadReport {
    pub fn accepted(&self) -> u64 {
        self.accepted_orders + self.accepted_users
    }

    /// Returns the accepted requests per second over the run.
    pub fn accepted_rate(&self) -> f64 {
        self.accepted() as f64 / self.elapsed.as_secs_f64().max(f64::EPSILON)
    }

    /// Returns the median resident memory of the first and second half of
    /// the samples, in bytes, after leaving out the first `warm_up` share
    /// of them (`0.1` leaves out the first tenth). The runtime grows its
    /// pools and caches in the first seconds, which is no leak.
    pub fn memory_halves(&self, warm_up: f64) -> Option<(u64, u64)> {
        let skip = (self.memory.len() as f64 * warm_up.clamp(0.0, 0.9)) as usize;
        let steady = &self.memory[skip..];
        if steady.len() < 4 {
            return None;
        }
        let (first, second) = steady.split_at(steady.len() / 2);
        Some((median(first), median(second)))
    }
}

fn median(values: &[u64]) -> u64 {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    sorted[sorted.len() / 2]
}

/// Result of one request.
enum Outcome {
    Accepted { order: bool },
    Rejected { status: StatusCode, body: String },
    Failed(String),
}

/// Posts orders and users to `process` at `plan.rate` for `plan.duration`
/// and samples memory and queue depths meanwhile. Waits for every response
/// but not for the handlers.
pub async fn post_at_rate(process: &Switchyard, plan: &LoadPlan) -> anyhow::Result<LoadReport> {
    anyhow::ensure!(plan.rate > 0, "load rate must be at least 1 request/s");
    // A pooled client. With a new connection per request, as the other
    // tests use, each closed connection keeps its port in TIME_WAIT for
    // 60 s, so Linux's default 28,232 ephemeral ports last for about 470
    // requests/s.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(plan.max_in_flight)
        .build()?;
    let (stop_sampling, stopped) = tokio::sync::watch::channel(false);
    let backlog = AtomicU32::new(0);

    let send = async {
        let report = send(process, &client, plan, &backlog).await;
        let _ = stop_sampling.send(true);
        report
    };
    let (report, samples) = tokio::join!(send, sample(process, stopped, &backlog));
    let mut report = report?;
    let samples = samples?;
    report.memory = samples.memory;
    report.max_backlog = samples.max_backlog;
    report.notifications_purged = samples.notifications_purged;
    Ok(report)
}

async fn send(
    process: &Switchyard,
    client: &reqwest::Client,
    plan: &LoadPlan,
    backlog: &AtomicU32,
) -> anyhow::Result<LoadReport> {
    let orders_url = process.url("/orders");
    let users_url = process.url("/users");
    let order = shop::order_body().to_string();
    let user = shop::user_body().to_string();
    let permits = Arc::new(Semaphore::new(plan.max_in_flight.max(1)));
    let mut running = JoinSet::new();
    let mut report = LoadReport::default();

    let started = Instant::now();
    let mut ticker = tokio::time::interval(TICK);
    while started.elapsed() < plan.duration {
        let queued = backlog.load(Ordering::Relaxed);
        if queued > plan.max_backlog {
            report.stopped_early = Some(format!(
                "the consumers fell behind: {queued} messages were queued after {:.0?} at \
                 {} requests/s, more than the limit of {}. Lower the rate or run a release \
                 build (SWITCHYARD_BIN)",
                started.elapsed(),
                plan.rate,
                plan.max_backlog
            ));
            break;
        }
        while let Some(outcome) = running.try_join_next() {
            tally(&mut report, outcome?);
        }
        let due = (f64::from(plan.rate) * started.elapsed().as_secs_f64()) as u64;
        if report.sent >= due {
            ticker.tick().await;
            continue;
        }

        let permit = permits.clone().acquire_owned().await?;
        let is_order = report.sent % 2 == 0;
        let (url, body) = if is_order {
            (orders_url.clone(), order.clone())
        } else {
            (users_url.clone(), user.clone())
        };
        let request = client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        running.spawn(async move {
            let outcome = match request.send().await {
                Ok(response) if response.status() == StatusCode::ACCEPTED => {
                    Outcome::Accepted { order: is_order }
                }
                Ok(response) => Outcome::Rejected {
                    status: response.status(),
                    body: response.text().await.unwrap_or_default(),
                },
                Err(err) => Outcome::Failed(err.to_string()),
            };
            drop(permit);
            outcome
        });
        report.sent += 1;
    }
    while let Some(outcome) = running.join_next().await {
        tally(&mut report, outcome?);
    }
    report.elapsed = started.elapsed();
    Ok(report)
}

fn tally(report: &mut LoadReport, outcome: Outcome) {
    match outcome {
        Outcome::Accepted { order: true } => report.accepted_orders += 1,
        Outcome::Accepted { order: false } => report.accepted_users += 1,
        Outcome::Rejected { status, body } => {
            *report.rejected.entry(status.as_u16()).or_default() += 1;
            report
                .first_error
                .get_or_insert_with(|| format!("{status}: {body}"));
        }
        Outcome::Failed(error) => {
            report.failed += 1;
            report
                .first_error
                .get_or_insert_with(|| format!("request failed: {error}"));
        }
    }
}

#[derive(Default)]
struct Samples {
    memory: Vec<u64>,
    max_backlog: u32,
    notifications_purged: u64,
}

/// Samples memory and queue depths and purges `notifications` until `stop`
/// turns true. Stores each backlog sample in `backlog` for the sender.
async fn sample(
    process: &Switchyard,
    mut stop: tokio::sync::watch::Receiver<bool>,
    backlog: &AtomicU32,
) -> anyhow::Result<Samples> {
    let rabbit = crate::rabbitmq();
    let mut samples = Samples::default();
    let mut ticker = tokio::time::interval(SAMPLE_INTERVAL);
    let mut last_purge = Instant::now();
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => return Ok(samples),
        }
        samples.memory.push(process.resident_memory()?);
        let mut queued = 0;
        for queue in CONSUMER_QUEUES {
            queued += rabbit.depth(queue).await?;
        }
        backlog.store(queued, Ordering::Relaxed);
        samples.max_backlog = samples.max_backlog.max(queued);
        if last_purge.elapsed() >= PURGE_INTERVAL {
            samples.notifications_purged += u64::from(rabbit.purge(NOTIFICATIONS).await?);
            last_purge = Instant::now();
        }
    }
}

/// Waits until each shop consumer handled every accepted event bound to it:
/// email-service both kinds, inventory-service the orders and
/// analytics-service the users. Then pauses for a second, so that a late
/// duplicate shows, and returns a new scrape.
pub async fn wait_until_handled(
    process: &Switchyard,
    report: &LoadReport,
    timeout: Duration,
) -> anyhow::Result<Metrics> {
    let expected = expected_handled(report);
    process
        .wait_for_metrics(
            "every accepted event to be handled",
            HANDLED,
            timeout,
            |metrics| {
                expected.iter().all(|(consumer, count)| {
                    metrics.count(HANDLED, &[("consumer", consumer)]) >= *count
                })
            },
        )
        .await
        .context("the consumers did not handle every accepted event")?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    process.metrics().await
}

/// Returns the handler outcomes each shop consumer owes for the accepted
/// requests of `report`.
pub fn expected_handled(report: &LoadReport) -> [(&'static str, u64); 3] {
    [
        ("email-service", report.accepted()),
        ("inventory-service", report.accepted_orders),
        ("analytics-service", report.accepted_users),
    ]
}

/// Returns the number of events the handlers emitted into `notifications`,
/// from `/metrics`: one `email.sent` per email and one `stock.reserved`
/// per order item.
pub fn emitted_notifications(metrics: &Metrics) -> u64 {
    metrics.count(PUBLISHED, &[("event_type", "email.sent")])
        + metrics.count(PUBLISHED, &[("event_type", "stock.reserved")])
}

/// Returns the dead-lettered count of all consumers, from `/metrics`.
pub fn dead_lettered(metrics: &Metrics) -> u64 {
    metrics.count(DEAD_LETTERED, &[])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_halves_skip_warm_up() {
        let report = LoadReport {
            memory: vec![1, 50, 10, 11, 12, 20, 21, 22],
            ..LoadReport::default()
        };
        assert_eq!(report.memory_halves(0.25), Some((11, 21)));
        assert_eq!(report.memory_halves(0.9), None);
    }
}
