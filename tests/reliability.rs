//! Faults that leave the local RabbitMQ node running. switchyard is killed
//! with SIGKILL mid-stream, a queue is deleted under a running consumer,
//! two replicas share one manifest, `switchyard publish` has no broker to
//! reach, and the shop flow takes steady HTTP load.
//!
//! Each test counts what it sent, what was accepted, handled and
//! dead-lettered, and checks that nothing was lost. Tests that stop or
//! restart the broker itself are not here, because other test runs share
//! the node.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::{Value, json};
use switchyard_tests::load::{self, LoadPlan, LoadReport};
use switchyard_tests::shop::{self, DEAD_LETTERED, HANDLED, PUBLISHED};
use switchyard_tests::{
    BrokerMode, ChaosCall, ChaosConsumer, LogLine, ScopedVhost, Switchyard, chaos_manifest,
    component, poll, queues_only_manifest, rabbitmq, serial, shop_manifest, switchyard_binary,
};

/// Maximum wait for the handlers to finish a backlog of a few hundred events.
const TIMEOUT: Duration = Duration::from_secs(60);

/// Returns an `order.placed` request body without `orderId`.
fn order(number: usize) -> Value {
    json!({
        "customerId": format!("c-{number}"),
        "items": [{ "productId": "p-1", "quantity": 1 }],
        "total": 1.0,
    })
}

/// Returns the number of chaos guest calls per event id.
fn calls_per_event<'a>(calls: impl IntoIterator<Item = &'a ChaosCall>) -> BTreeMap<String, usize> {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for call in calls {
        *counts.entry(call.event_id.clone()).or_default() += 1;
    }
    counts
}

/// Writes the chaos manifest of `consumers` into `dir` and deletes what
/// earlier tests left of its topology in the test vhost.
async fn fresh_chaos_manifest(dir: &Path, consumers: &[ChaosConsumer]) -> anyhow::Result<PathBuf> {
    component("tests/guests/chaos.wasm")?;
    let manifest = chaos_manifest(dir, consumers)?;
    rabbitmq().reset(&[&manifest]).await?;
    Ok(manifest)
}

/// Deletes what earlier tests left of the shop topology in the test vhost
/// and starts `switchyard up` on `manifests/shop.toml`.
async fn start_fresh_shop(dir: &Path) -> anyhow::Result<Switchyard> {
    let manifest = shop_manifest();
    rabbitmq().reset(&[&manifest]).await?;
    Switchyard::start(dir, &[manifest], BrokerMode::RabbitMq).await
}

/// Posts `count` orders through a process that declares the queues of
/// `consumers` but runs no consumer, so that every order is queued when
/// the test starts a consumer. Returns the accepted event ids.
async fn queue_orders(
    dir: &Path,
    consumers: &[ChaosConsumer],
    count: usize,
) -> anyhow::Result<BTreeSet<String>> {
    let manifest = queues_only_manifest(dir, consumers)?;
    let producer = Switchyard::start(dir, &[manifest], BrokerMode::RabbitMq).await?;
    let mut accepted = BTreeSet::new();
    for number in 0..count {
        accepted.insert(producer.publish("/orders", &order(number)).await?);
    }
    producer.stop_cleanly().await?;
    Ok(accepted)
}

#[tokio::test]
async fn sigkill_mid_stream_loses_nothing() -> anyhow::Result<()> {
    const ORDERS: usize = 500;
    const HANDLED_BEFORE_KILL: u64 = 40;
    const PREFETCH: u16 = 32;
    let _serial = serial().await;
    let rabbit = rabbitmq();
    let dir = tempfile::tempdir()?;
    let consumers = [ChaosConsumer::new("orders", "order.placed", "ok")
        .concurrency(2)
        .prefetch(PREFETCH)];
    let manifest = fresh_chaos_manifest(dir.path(), &consumers).await?;

    let accepted = queue_orders(dir.path(), &consumers, ORDERS).await?;
    assert_eq!(accepted.len(), ORDERS, "distinct accepted event ids");
    assert_eq!(
        rabbit.depth("orders").await?,
        ORDERS as u32,
        "queued orders"
    );

    // First run: killed while deliveries are in flight and prefetched.
    let first = Switchyard::start(
        dir.path(),
        std::slice::from_ref(&manifest),
        BrokerMode::RabbitMq,
    )
    .await?;
    let ok = [("consumer", "orders"), ("outcome", "ok")];
    let before_kill = first
        .wait_for_count(HANDLED, &ok, HANDLED_BEFORE_KILL, TIMEOUT)
        .await?;
    let killed = first.stop_with(Signal::SIGKILL).await?;
    assert!(
        !killed.status.success(),
        "SIGKILL ended switchyard with {}",
        killed.status
    );
    let first_calls = killed.chaos_calls();
    let first_ids: BTreeSet<&String> = first_calls.iter().map(|call| &call.event_id).collect();
    assert!(
        first_ids.len() < ORDERS,
        "the first run handled all {ORDERS} orders before SIGKILL; raise ORDERS"
    );

    // Second run: the broker redelivers what the first run left unacknowledged.
    let second = Switchyard::start(dir.path(), &[manifest], BrokerMode::RabbitMq).await?;
    let all_seen = poll(TIMEOUT, || async {
        let calls = second.chaos_calls();
        let seen = calls_per_event(first_calls.iter().chain(&calls));
        accepted
            .iter()
            .all(|id| seen.contains_key(id))
            .then_some(())
    })
    .await;
    let second_calls = second.chaos_calls();
    let seen = calls_per_event(first_calls.iter().chain(&second_calls));
    let lost: Vec<&String> = accepted
        .iter()
        .filter(|id| !seen.contains_key(*id))
        .collect();
    assert!(
        all_seen.is_some(),
        "{} accepted orders were never handled, the first: {:?}; stderr:\n{}",
        lost.len(),
        &lost[..lost.len().min(10)],
        second.stderr_tail(30)
    );
    let drained = poll(Duration::from_secs(10), || async {
        (rabbit.depth("orders").await.ok()? == 0).then_some(())
    })
    .await;
    assert!(
        drained.is_some(),
        "orders still queued: {}",
        rabbit.depth("orders").await?
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after_restart = second.metrics().await?;
    second.stop_cleanly().await?;

    let unknown: Vec<&String> = seen.keys().filter(|id| !accepted.contains(*id)).collect();
    let twice: Vec<&String> = seen
        .iter()
        .filter(|(_, calls)| **calls > 1)
        .map(|(id, _)| id)
        .collect();
    let dead_letters = rabbit.depth("dead-letters").await?;
    let dead_lettered_metric =
        before_kill.count(DEAD_LETTERED, &[]) + after_restart.count(DEAD_LETTERED, &[]);
    eprintln!(
        "SIGKILL mid-stream: sent {ORDERS}, accepted {}, handled {} ({} in the first run, {} \
         calls in the second, {} twice), dead-lettered {dead_letters}, lost {}",
        accepted.len(),
        seen.len(),
        first_ids.len(),
        second_calls.len(),
        twice.len(),
        lost.len()
    );

    assert!(lost.is_empty(), "lost orders: {lost:?}");
    assert!(
        unknown.is_empty(),
        "calls for events that were never posted: {unknown:?}"
    );
    // Only a delivery that was called but not yet acknowledged at the kill
    // is handled twice, and at most `prefetch` deliveries are unacknowledged.
    assert!(
        twice.len() <= usize::from(PREFETCH),
        "{} orders handled twice, more than the prefetch window of {PREFETCH}: {twice:?}",
        twice.len()
    );
    assert_eq!(
        after_restart.count(HANDLED, &ok),
        second_calls.len() as u64,
        "ok outcomes of the second run against its handler calls"
    );
    assert_eq!(dead_letters, 0, "messages in `dead-letters`");
    assert_eq!(dead_lettered_metric, 0, "dead letters counted in /metrics");
    assert_eq!(rabbit.depth("orders.retry").await?, 0, "retry queue");
    Ok(())
}

/// Message of the warning that the AMQP consumer logs when it declares a
/// deleted queue again.
const REDECLARED: &str = "queue was deleted on the broker; declared it again with its bindings";

#[tokio::test]
async fn deleted_queue_redeclared_and_consumed() -> anyhow::Result<()> {
    const ORDERS_AFTER: usize = 20;
    let _serial = serial().await;
    let rabbit = rabbitmq();
    let dir = tempfile::tempdir()?;
    let consumers = [ChaosConsumer::new("orders", "order.placed", "ok")];
    let manifest = fresh_chaos_manifest(dir.path(), &consumers).await?;
    let process = Switchyard::start(dir.path(), &[manifest], BrokerMode::RabbitMq).await?;

    let ok = [("consumer", "orders"), ("outcome", "ok")];
    let mut posted = BTreeSet::new();
    posted.insert(process.publish("/orders", &order(0)).await?);
    process.wait_for_count(HANDLED, &ok, 1, TIMEOUT).await?;

    rabbit.delete_queue("orders").await?;
    let warning = poll(TIMEOUT, || async {
        LogLine::parse_all(&process.stderr())
            .into_iter()
            .find(|line| line.message() == REDECLARED)
    })
    .await;
    let Some(warning) = warning else {
        panic!(
            "no warning `{REDECLARED}` after the queue was deleted; stderr:\n{}",
            process.stderr_tail(30)
        );
    };
    assert_eq!(warning.level, "WARN", "level of {warning:?}");
    assert_eq!(warning.field("queue"), Some("orders"), "{warning:?}");
    assert_eq!(
        warning.fields.get("bindings").and_then(Value::as_u64),
        Some(1),
        "{warning:?}"
    );
    let restarted = poll(TIMEOUT, || async {
        let readiness: Value = process.get("/readyz").await.ok()?.json().await.ok()?;
        (readiness["checks"]["consumer:orders"]["ok"] == true).then_some(())
    })
    .await;
    assert!(
        restarted.is_some(),
        "consumer `orders` not running again; stderr:\n{}",
        process.stderr_tail(30)
    );

    // The binding came back with the queue, so new orders reach it.
    for number in 1..=ORDERS_AFTER {
        posted.insert(process.publish("/orders", &order(number)).await?);
    }
    let total = (ORDERS_AFTER + 1) as u64;
    process.wait_for_count(HANDLED, &ok, total, TIMEOUT).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let metrics = process.metrics().await?;
    let stopped = process.stop_cleanly().await?;

    let calls = calls_per_event(&stopped.chaos_calls());
    let handled: BTreeSet<String> = calls.keys().cloned().collect();
    let lost: Vec<&String> = posted.difference(&handled).collect();
    eprintln!(
        "deleted queue: sent {}, accepted {}, handled {}, dead-lettered {}, lost {}",
        ORDERS_AFTER + 1,
        posted.len(),
        handled.len(),
        metrics.count(DEAD_LETTERED, &[]),
        lost.len()
    );
    assert!(lost.is_empty(), "orders never handled: {lost:?}");
    assert_eq!(metrics.count(HANDLED, &ok), total, "ok outcomes");
    assert!(
        calls.values().all(|count| *count == 1),
        "calls per order: {calls:?}"
    );
    assert_eq!(rabbit.depth("unroutable").await?, 0, "unroutable messages");
    assert_eq!(rabbit.depth("dead-letters").await?, 0, "dead letters");
    Ok(())
}

#[tokio::test]
async fn replicas_handle_each_event_once() -> anyhow::Result<()> {
    const ORDERS: usize = 200;
    let _serial = serial().await;
    let rabbit = rabbitmq();
    let dir = tempfile::tempdir()?;
    let consumers = [ChaosConsumer::new("orders", "order.placed", "ok")];
    let manifest = fresh_chaos_manifest(dir.path(), &consumers).await?;
    let manifests = [manifest];
    let first = Switchyard::start(dir.path(), &manifests, BrokerMode::RabbitMq).await?;
    let second = Switchyard::start(dir.path(), &manifests, BrokerMode::RabbitMq).await?;
    let replicas = [first, second];

    // Both replicas take requests and both consume.
    let mut posted = BTreeSet::new();
    for number in 0..ORDERS {
        let replica = &replicas[number % 2];
        posted.insert(replica.publish("/orders", &order(number)).await?);
    }
    let ok = [("consumer", "orders"), ("outcome", "ok")];
    let done = poll(TIMEOUT, || async {
        let mut handled = 0;
        for replica in &replicas {
            handled += replica.metrics().await.ok()?.count(HANDLED, &ok);
        }
        (handled >= ORDERS as u64).then_some(())
    })
    .await;
    assert!(
        done.is_some(),
        "the replicas did not handle {ORDERS} orders"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut handled_by = Vec::new();
    let mut all_calls = Vec::new();
    for replica in replicas {
        let metrics = replica.metrics().await?;
        let stopped = replica.stop_cleanly().await?;
        let calls = stopped.chaos_calls();
        assert_eq!(
            metrics.count(HANDLED, &ok),
            calls.len() as u64,
            "ok outcomes against handler calls of one replica"
        );
        handled_by.push(calls.len());
        all_calls.extend(calls);
    }
    let calls = calls_per_event(&all_calls);
    let handled: BTreeSet<String> = calls.keys().cloned().collect();
    let lost: Vec<&String> = posted.difference(&handled).collect();
    let twice: Vec<(&String, &usize)> = calls.iter().filter(|(_, count)| **count > 1).collect();
    eprintln!(
        "two replicas: sent {ORDERS}, accepted {}, handled {} ({} and {}), twice {}, lost {}",
        posted.len(),
        handled.len(),
        handled_by[0],
        handled_by[1],
        twice.len(),
        lost.len()
    );
    assert!(lost.is_empty(), "orders never handled: {lost:?}");
    assert!(twice.is_empty(), "orders handled more than once: {twice:?}");
    assert_eq!(handled, posted, "handled event ids against posted ones");
    assert!(handled_by[0] > 0, "the first replica handled nothing");
    assert!(handled_by[1] > 0, "the second replica handled nothing");
    assert_eq!(rabbit.depth("orders").await?, 0, "orders left queued");
    assert_eq!(rabbit.depth("dead-letters").await?, 0, "dead letters");
    Ok(())
}

/// Output of one `switchyard publish` run.
struct PublishRun {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    duration: Duration,
}

/// Runs `switchyard publish manifests/shop.toml order.placed` with
/// `RABBITMQ_URL` set to `url`.
async fn publish_cli(url: &str) -> anyhow::Result<PublishRun> {
    let binary = tokio::task::spawn_blocking(switchyard_binary).await?;
    let data = json!({
        "orderId": "o-cli-1",
        "customerId": "c-42",
        "items": [{ "productId": "p-7", "quantity": 1 }],
        "total": 9.99,
    });
    let started = Instant::now();
    let run = tokio::process::Command::new(binary)
        .arg("publish")
        .arg(shop_manifest())
        .args(["order.placed", "--data", &data.to_string()])
        .env("RABBITMQ_URL", url)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(TIMEOUT, run)
        .await
        .map_err(|_| anyhow::anyhow!("`switchyard publish` did not exit within {TIMEOUT:?}"))??;
    Ok(PublishRun {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        duration: started.elapsed(),
    })
}

#[tokio::test]
async fn publish_cli_fails_without_broker() -> anyhow::Result<()> {
    let _serial = serial().await;
    // Nothing listens on a port that was free a moment ago.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    // This one accepts connections and never sends a byte, like a broker
    // that hangs.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let silent_address = silent.local_addr()?;
    let holder = tokio::spawn(async move {
        let mut open_sockets = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            open_sockets.push(socket);
        }
    });

    let cases = [("closed port", closed), ("silent listener", silent_address)];
    for (case, address) in cases {
        let url = format!("amqp://guest:secret-password@{address}/%2f");
        let run = publish_cli(&url).await?;
        eprintln!(
            "publish with a {case}: exit {:?} after {:?}: {}",
            run.code,
            run.duration,
            run.stderr.trim()
        );
        assert_eq!(run.code, Some(1), "exit code with a {case}: {}", run.stderr);
        assert!(
            run.stdout.is_empty(),
            "stdout with a {case}: {}",
            run.stdout
        );
        assert!(
            run.stderr.contains("event not published"),
            "stderr with a {case}: {}",
            run.stderr
        );
        assert!(
            run.stderr.contains("correct its `url`"),
            "no fix named in stderr with a {case}: {}",
            run.stderr
        );
        assert!(
            run.stderr.contains("cannot connect to broker `rabbit`"),
            "stderr with a {case}: {}",
            run.stderr
        );
        assert!(
            !run.stderr.contains("secret-password"),
            "password in stderr with a {case}: {}",
            run.stderr
        );
        assert!(
            !run.stderr.contains("panicked"),
            "panic with a {case}: {}",
            run.stderr
        );
    }
    holder.abort();
    Ok(())
}

/// `publish` declares nothing, so on an empty vhost it names `up` as the
/// fix.
#[tokio::test]
async fn publish_cli_before_up_names_fix() -> anyhow::Result<()> {
    let vhost = ScopedVhost::create("publish-before-up")?;
    let url = format!("amqp://guest:guest@127.0.0.1:5672/{}", vhost.name);
    let run = publish_cli(&url).await?;
    assert_eq!(run.code, Some(1), "exit code: {}", run.stderr);
    assert!(
        run.stderr.contains("exchange `events` not found"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("run `switchyard up` with these manifests once first"),
        "{}",
        run.stderr
    );
    Ok(())
}

#[tokio::test]
async fn publish_cli_confirms_to_queues() -> anyhow::Result<()> {
    let _serial = serial().await;
    let rabbit = rabbitmq();
    let dir = tempfile::tempdir()?;
    // `publish` declares nothing, so a run of `up` declares the topology.
    let process = start_fresh_shop(dir.path()).await?;
    process.stop_cleanly().await?;

    let run = publish_cli(&rabbit.url()).await?;
    assert_eq!(run.code, Some(0), "exit code: {}", run.stderr);
    let printed: Value = serde_json::from_str(run.stdout.trim())?;
    assert_eq!(printed["type"], "order.placed", "stdout: {}", run.stdout);
    let id = printed["id"].as_str().unwrap_or_default();
    for queue in ["email-service", "inventory-service"] {
        let messages = rabbit.drain(queue).await?;
        assert_eq!(messages.len(), 1, "messages in `{queue}`");
        let event = messages[0].json()?;
        assert_eq!(event["id"], id, "event in `{queue}`");
    }
    Ok(())
}

/// Rejected producer requests, by producer and status.
const HTTP_REJECTED: &str = "switchyard_http_requests_rejected_total";

/// Returns a JSON document of `levels` nested arrays.
fn nested_arrays(levels: usize) -> Vec<u8> {
    let mut text = "[".repeat(levels);
    text.push_str(&"]".repeat(levels));
    text.into_bytes()
}

#[tokio::test]
async fn bad_input_keeps_process_serving() -> anyhow::Result<()> {
    let _serial = serial().await;
    let rabbit = rabbitmq();
    let dir = tempfile::tempdir()?;
    let process = start_fresh_shop(dir.path()).await?;

    // Producer requests: content type, body, expected status.
    let mut large = br#"{"customerId": ""#.to_vec();
    large.extend(std::iter::repeat_n(b'x', 2 * 1024 * 1024));
    large.extend(br#""}"#);
    let requests: Vec<(&str, &str, Vec<u8>, u16)> = vec![
        (
            "malformed JSON",
            "application/json",
            b"{\"customerId\": ".to_vec(),
            400,
        ),
        (
            "invalid UTF-8",
            "application/json",
            b"{\"customerId\": \"\xff\xfe\"}".to_vec(),
            400,
        ),
        ("empty body", "application/json", Vec::new(), 400),
        (
            "200 nested arrays",
            "application/json",
            nested_arrays(200),
            422,
        ),
        (
            "schema violation",
            "application/json",
            b"{\"customerId\": 7}".to_vec(),
            422,
        ),
        ("text/plain", "text/plain", b"customer c-42".to_vec(), 415),
        ("no content type", "", b"{}".to_vec(), 415),
        ("2 MiB body", "application/json", large, 413),
    ];
    let mut expected_rejections: BTreeMap<u16, u64> = BTreeMap::new();
    for (case, content_type, body, status) in &requests {
        let response = process.post("/orders", content_type, body.clone()).await?;
        assert_eq!(response.status().as_u16(), *status, "status for {case}");
        *expected_rejections.entry(*status).or_default() += 1;
        let health = process.get("/healthz").await?;
        assert!(health.status().is_success(), "/healthz after {case}");
    }

    // Messages a misbehaving service could send straight to a queue.
    let structured =
        lapin::BasicProperties::default().with_content_type("application/cloudevents+json".into());
    let without_type = json!({
        "specversion": "1.0",
        "id": "no-type-1",
        "source": "/tests/bad-input",
        "data": { "orderId": "o-1" },
    });
    let messages: Vec<(&str, Vec<u8>, lapin::BasicProperties)> = vec![
        (
            "invalid UTF-8 in a structured event",
            b"{\"specversion\": \"1.0\", \"id\": \"\xff\"}".to_vec(),
            structured.clone(),
        ),
        (
            "structured event without `type`",
            without_type.to_string().into_bytes(),
            structured,
        ),
        (
            "empty body without properties",
            Vec::new(),
            lapin::BasicProperties::default(),
        ),
        (
            "200 nested arrays without properties",
            nested_arrays(200),
            lapin::BasicProperties::default(),
        ),
    ];
    for (_, body, properties) in &messages {
        rabbit
            .publish("", "email-service", body, properties.clone())
            .await?;
    }
    let labels = [("consumer", "email-service")];
    process
        .wait_for_count(DEAD_LETTERED, &labels, messages.len() as u64, TIMEOUT)
        .await?;

    // A valid order after all of it is still handled.
    process.publish("/orders", &shop::order_body()).await?;
    let ok = [("consumer", "inventory-service"), ("outcome", "ok")];
    process.wait_for_count(HANDLED, &ok, 1, TIMEOUT).await?;
    let metrics = process.metrics().await?;
    let stopped = process.stop_cleanly().await?;

    for (status, count) in &expected_rejections {
        let labels = [
            ("producer", "order-service"),
            ("status", &status.to_string()[..]),
        ];
        assert_eq!(
            metrics.count(HTTP_REJECTED, &labels),
            *count,
            "rejections with status {status}:\n{}",
            metrics.describe(HTTP_REJECTED)
        );
    }
    assert_eq!(
        metrics.count(PUBLISHED, &[("event_type", "order.placed")]),
        1,
        "confirmed publishes of order.placed"
    );
    let letters = rabbit.drain("dead-letters").await?;
    assert_eq!(letters.len(), messages.len(), "dead letters: {letters:#?}");
    for (case, body, _) in &messages {
        let letter = letters.iter().find(|letter| &letter.body == body);
        let Some(letter) = letter else {
            panic!("no dead letter for {case}; got {letters:#?}");
        };
        let reason = letter
            .header_text("x-switchyard-reason")
            .unwrap_or_default();
        eprintln!("dead letter for {case}: {reason}");
        assert!(!reason.is_empty(), "no reason for {case}: {letter:#?}");
    }
    let panics: Vec<&str> = stopped
        .stderr
        .lines()
        .filter(|line| line.contains("panicked"))
        .collect();
    assert!(panics.is_empty(), "panics: {panics:?}");
    eprintln!(
        "bad input: {} requests rejected {expected_rejections:?}, {} messages dead-lettered, \
         then 1 order accepted and handled",
        requests.len(),
        messages.len()
    );
    Ok(())
}

/// Runs the shop flow under `plan`, waits for the handlers to finish, and
/// checks that every accepted event was handled by each consumer bound to
/// it, and that nothing was retried, dead-lettered or left queued. The
/// median resident memory of the second half of the run may exceed that of
/// the first half by a quarter, or by 32 MiB when that is more.
async fn run_shop_load(plan: LoadPlan, drain_timeout: Duration) -> anyhow::Result<()> {
    let _serial = serial().await;
    let rabbit = rabbitmq();
    let dir = tempfile::tempdir()?;
    let process = start_fresh_shop(dir.path()).await?;

    let report = load::post_at_rate(&process, &plan).await?;
    describe_load(&plan, &report);
    if let Some(reason) = &report.stopped_early {
        // Leave no backlog on the shared node.
        for queue in load::CONSUMER_QUEUES
            .into_iter()
            .chain([load::NOTIFICATIONS])
        {
            rabbit.purge(queue).await?;
        }
        process.stop().await?;
        anyhow::bail!("load run stopped early: {reason}");
    }
    let metrics = load::wait_until_handled(&process, &report, drain_timeout).await?;
    let notifications_left = rabbit.depth(load::NOTIFICATIONS).await?;
    let stopped = process.stop_cleanly().await?;
    let errors: Vec<LogLine> = stopped
        .log_lines()
        .into_iter()
        .filter(|line| line.level == "ERROR")
        .collect();

    assert_eq!(
        report.first_error, None,
        "rejected {:?}, failed {}",
        report.rejected, report.failed
    );
    assert_eq!(report.accepted(), report.sent, "accepted requests");
    for (consumer, expected) in load::expected_handled(&report) {
        let ok = metrics.count(HANDLED, &[("consumer", consumer), ("outcome", "ok")]);
        assert_eq!(ok, expected, "ok outcomes of {consumer}");
    }
    let retried = metrics.count(HANDLED, &[("outcome", "retry")]);
    assert_eq!(retried, 0, "retries:\n{}", metrics.describe(HANDLED));
    assert_eq!(load::dead_lettered(&metrics), 0, "dead letters in /metrics");
    assert_eq!(rabbit.depth("dead-letters").await?, 0, "dead letters");
    for queue in load::CONSUMER_QUEUES {
        assert_eq!(rabbit.depth(queue).await?, 0, "messages left in `{queue}`");
    }
    assert_eq!(
        report.notifications_purged + u64::from(notifications_left),
        load::emitted_notifications(&metrics),
        "notifications purged and left against emitted events"
    );
    assert!(errors.is_empty(), "error log lines: {errors:?}");

    let (first, second) = report
        .memory_halves(0.2)
        .expect("a load run of several seconds has enough memory samples");
    let slack = (first / 4).max(32 * 1024 * 1024);
    assert!(
        second <= first + slack,
        "resident memory grew from a median of {} MiB in the first half to {} MiB in the \
         second, more than the {} MiB allowed",
        first >> 20,
        second >> 20,
        slack >> 20
    );
    Ok(())
}

fn describe_load(plan: &LoadPlan, report: &LoadReport) {
    let mebibytes = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    let (first, second) = report.memory_halves(0.2).unwrap_or_default();
    eprintln!(
        "load at {}/s for {:?}: sent {}, accepted {} ({} orders, {} users) at {:.0}/s over {:?}, \
         rejected {:?}, failed {}, max backlog {}, notifications purged {}; resident memory \
         median {:.1} MiB in the first half, {:.1} MiB in the second, max {:.1} MiB",
        plan.rate,
        plan.duration,
        report.sent,
        report.accepted(),
        report.accepted_orders,
        report.accepted_users,
        report.accepted_rate(),
        report.elapsed,
        report.rejected,
        report.failed,
        report.max_backlog,
        report.notifications_purged,
        mebibytes(first),
        mebibytes(second),
        mebibytes(report.memory.iter().copied().max().unwrap_or_default()),
    );
}

#[tokio::test]
async fn sustained_load_short_run() -> anyhow::Result<()> {
    let plan = LoadPlan {
        rate: 50,
        duration: Duration::from_secs(24),
        max_in_flight: 32,
        max_backlog: 5_000,
    };
    run_shop_load(plan, TIMEOUT * 2).await
}

/// Runs the long load: 2,000 requests/s for 5 minutes, or the rate in
/// `SWITCHYARD_LOAD_RATE`. The README's Tests section gives the command,
/// which uses a release build for a rate that high.
#[tokio::test]
#[ignore = "runs for more than 5 minutes; run it with --ignored"]
async fn sustained_load_long_run() -> anyhow::Result<()> {
    let rate = match std::env::var("SWITCHYARD_LOAD_RATE") {
        Ok(text) => text.parse().map_err(|err| {
            anyhow::anyhow!(
                "SWITCHYARD_LOAD_RATE `{text}` is not a whole number of requests per second: {err}"
            )
        })?,
        Err(_) => 2_000,
    };
    let plan = LoadPlan {
        rate,
        duration: Duration::from_secs(300),
        max_in_flight: 256,
        // About 50 s of load, an estimated 60 MB of messages on the broker.
        max_backlog: 100_000,
    };
    run_shop_load(plan, Duration::from_secs(600)).await
}

/// In `up`, a handler that emits its own input stops after 32 calls: the
/// next event of the chain is dead-lettered with the loop as its reason,
/// and the queue empties.
#[tokio::test]
async fn emit_loop_dead_lettered_in_up() -> anyhow::Result<()> {
    let _serial = serial().await;
    let rabbit = rabbitmq();
    let dir = tempfile::tempdir()?;
    let consumers = [ChaosConsumer::new("loops", "order.placed", "emit")
        .config("emit-type", "order.placed")
        .concurrency(1)];
    let manifest = fresh_chaos_manifest(dir.path(), &consumers).await?;
    let process = Switchyard::start(dir.path(), &[manifest], BrokerMode::RabbitMq).await?;
    process.publish("/orders", &order(1)).await?;

    let loop_label = [("consumer", "loops"), ("reason", "emit_depth")];
    let metrics = process
        .wait_for_count(DEAD_LETTERED, &loop_label, 1, TIMEOUT)
        .await?;
    let ok = [("consumer", "loops"), ("outcome", "ok")];
    assert_eq!(
        metrics.count(HANDLED, &ok),
        32,
        "{}",
        metrics.describe(HANDLED)
    );
    // Nothing more arrives once the chain ends.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let metrics = process.metrics().await?;
    assert_eq!(
        metrics.count(HANDLED, &ok),
        32,
        "{}",
        metrics.describe(HANDLED)
    );
    process.stop_cleanly().await?;

    assert_eq!(rabbit.depth("loops").await?, 0, "loops queue");
    let letters = rabbit.drain("dead-letters").await?;
    assert_eq!(letters.len(), 1, "dead letters: {letters:#?}");
    let reason = letters[0]
        .header_text("x-switchyard-reason")
        .unwrap_or_default();
    assert!(reason.contains("emitted events loop"), "{reason}");
    Ok(())
}
