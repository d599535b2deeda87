//! What operators watch, checked on the real binary and the local RabbitMQ.
//! The tests cover readiness and connection metrics through a broker
//! outage, the fields of per-event log lines, W3C trace context from the
//! HTTP request to the emitted events, the prefetch gauge, credentials
//! kept out of the log, and manifest warnings as JSON log records.

use std::path::PathBuf;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use switchyard_tests::shop::{self, DEAD_LETTERED, HANDLED};
use switchyard_tests::{
    BrokerLink, BrokerMode, ChaosConsumer, LogLine, Switchyard, chaos_manifest, component, poll,
    rabbitmq, rabbitmqctl, repo_root, serial, shop_manifest, unique_suffix,
};

const TIMEOUT: Duration = Duration::from_secs(30);
/// Time for the runtime to notice a cut link, reconnect after it is
/// restored, and subscribe its consumers again. It includes the reconnect
/// backoff of both the connection and the consumers.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(90);

const CONNECTED: &str = "switchyard_broker_connected";
const RECONNECTS: &str = "switchyard_broker_reconnects_total";
const PREFETCH_UTILIZATION: &str = "switchyard_consumer_prefetch_utilization_ratio";
const IN_FLIGHT: &str = "switchyard_events_in_flight";

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const TRACESTATE: &str = "vendor=opaque-value";

/// Deletes what an earlier test left in the vhost and returns shop.toml.
async fn reset_shop() -> anyhow::Result<PathBuf> {
    for handler in ["email", "inventory", "analytics"] {
        component(&format!("handlers/{handler}.wasm"))?;
    }
    let manifest = shop_manifest();
    rabbitmq().reset(&[&manifest]).await?;
    Ok(manifest)
}

/// Polls `/readyz` until its status is `status` and its body passes
/// `check`, and returns the body.
async fn wait_for_readiness(
    process: &Switchyard,
    status: StatusCode,
    timeout: Duration,
    check: impl Fn(&Value) -> bool,
) -> anyhow::Result<Value> {
    let body = poll(timeout, || async {
        let response = process.get("/readyz").await.ok()?;
        if response.status() != status {
            return None;
        }
        let body = response.json::<Value>().await.ok()?;
        check(&body).then_some(body)
    })
    .await;
    body.ok_or_else(|| {
        anyhow::anyhow!(
            "/readyz did not return {status} within {timeout:?}; stderr:\n{}",
            process.stderr_tail(40)
        )
    })
}

#[tokio::test]
async fn readiness_follows_broker_connection() -> anyhow::Result<()> {
    let _serial = serial().await;
    let manifest = reset_shop().await?;
    let dir = tempfile::tempdir()?;
    let mut link = BrokerLink::open().await?;
    let url = link.amqp_url(&rabbitmq().vhost);
    let process = Switchyard::start(dir.path(), &[manifest], BrokerMode::Url(url)).await?;
    let broker = [("broker", "rabbit")];

    let metrics = process.metrics().await?;
    assert_eq!(metrics.value(CONNECTED, &broker), 1.0, "connected at start");
    assert_eq!(metrics.count(RECONNECTS, &broker), 0, "reconnects at start");

    link.cut().await;
    let readiness =
        wait_for_readiness(&process, StatusCode::SERVICE_UNAVAILABLE, TIMEOUT, |body| {
            body["checks"]["broker:rabbit"]["ok"] == false
        })
        .await?;
    assert_eq!(readiness["ready"], false, "{readiness}");
    let detail = readiness["checks"]["broker:rabbit"]["detail"]
        .as_str()
        .unwrap_or_default();
    assert!(
        detail.contains("connection lost"),
        "broker check detail during the outage: {readiness}"
    );
    let metrics = process.metrics().await?;
    assert_eq!(
        metrics.value(CONNECTED, &broker),
        0.0,
        "connected during the outage"
    );

    link.restore().await?;
    let readiness =
        wait_for_readiness(&process, StatusCode::OK, RECOVERY_TIMEOUT, |_| true).await?;
    assert_eq!(readiness["ready"], true, "{readiness}");
    let metrics = process.metrics().await?;
    assert_eq!(metrics.value(CONNECTED, &broker), 1.0, "connected again");
    assert_eq!(metrics.count(RECONNECTS, &broker), 1, "reconnects");

    // Producers and consumers work again: the whole flow, counted exactly.
    shop::run_flow(&process).await?;
    process.stop_cleanly().await?;
    Ok(())
}

/// Returns the `traceparent` parts: trace id and parent id.
fn trace_parts(traceparent: &str) -> (String, String) {
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "traceparent `{traceparent}`");
    assert_eq!(parts[0], "00", "version of `{traceparent}`");
    assert_eq!(parts[1].len(), 32, "trace id of `{traceparent}`");
    assert_eq!(parts[2].len(), 16, "parent id of `{traceparent}`");
    (parts[1].to_owned(), parts[2].to_owned())
}

#[tokio::test]
async fn trace_context_and_event_fields() -> anyhow::Result<()> {
    let _serial = serial().await;
    let manifest = reset_shop().await?;
    let dir = tempfile::tempdir()?;
    let env = [("RUST_LOG", "info,switchyard::dispatch=debug")];
    let process =
        Switchyard::start_with_env(dir.path(), &[manifest], BrokerMode::RabbitMq, &env).await?;

    let client = reqwest::Client::new();
    let response = client
        .post(process.url("/orders"))
        .header("traceparent", TRACEPARENT)
        .header("tracestate", TRACESTATE)
        .json(&shop::order_body())
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::ACCEPTED, "POST /orders");
    let accepted: Value = response.json().await?;
    let order_id = accepted["id"].as_str().unwrap_or_default().to_owned();
    // A request without trace context starts a trace of its own.
    let user_id = process.publish("/users", &shop::user_body()).await?;

    for (consumer, count) in [("email-service", 2), ("inventory-service", 1)] {
        let labels = [("consumer", consumer), ("outcome", "ok")];
        process
            .wait_for_count(HANDLED, &labels, count, TIMEOUT)
            .await?;
    }
    let stopped = process.stop_cleanly().await?;

    // The follow-ups of the order continue its trace with their own parent
    // ids; the welcome mail of the user carries a new, valid trace.
    let notifications = rabbitmq().drain("notifications").await?;
    let mut order_parents = Vec::new();
    let mut user_traces = Vec::new();
    for message in &notifications {
        let event = message.json()?;
        let traceparent = event["traceparent"].as_str().unwrap_or_default();
        let (trace_id, parent_id) = trace_parts(traceparent);
        let caused_by_order = event["data"]["orderId"] == order_id.as_str();
        if caused_by_order {
            assert_eq!(trace_id, TRACE_ID, "trace of {event}");
            assert_eq!(event["tracestate"], TRACESTATE, "tracestate of {event}");
            order_parents.push(parent_id);
        } else {
            assert_eq!(event["data"]["userId"], user_id.as_str(), "{event}");
            assert_ne!(trace_id, TRACE_ID, "trace of {event}");
            assert!(event.get("tracestate").is_none(), "tracestate of {event}");
            user_traces.push(trace_id);
        }
    }
    // One confirmation mail and two stock reservations.
    assert_eq!(order_parents.len(), 3, "follow-ups of the order");
    assert_eq!(user_traces.len(), 1, "follow-ups of the user");
    order_parents.sort();
    order_parents.dedup();
    assert_eq!(order_parents.len(), 3, "parent ids are not distinct");
    assert!(
        !order_parents.contains(&"00f067aa0ba902b7".to_owned()),
        "a follow-up reused the request's parent id"
    );

    // Every line about the order's handling names the consumer, the queue,
    // the event and the trace: the runtime's debug line and the handler's
    // own info line alike.
    let lines = stopped.log_lines();
    let about_order: Vec<&LogLine> = lines
        .iter()
        .filter(|line| line.field("event_id") == Some(order_id.as_str()))
        .collect();
    let returned: Vec<&&LogLine> = about_order
        .iter()
        .filter(|line| line.message() == "handler returned ok")
        .collect();
    assert_eq!(
        returned.len(),
        2,
        "`handler returned ok` lines of the order, by email-service and inventory-service: \
         {about_order:#?}"
    );
    let handler_lines = about_order
        .iter()
        .filter(|line| line.target == "switchyard::handler")
        .count();
    assert!(
        handler_lines >= 2,
        "the email and inventory handlers log about every order: {about_order:#?}"
    );
    for line in &about_order {
        let consumer = line.field("consumer").unwrap_or_default();
        assert!(consumer.ends_with("-service"), "consumer of {line:#?}");
        assert_eq!(line.field("queue"), Some(consumer), "queue of {line:#?}");
        assert_eq!(
            line.field("event_type"),
            Some("order.placed"),
            "event type of {line:#?}"
        );
        assert_eq!(
            line.field("trace_id"),
            Some(TRACE_ID),
            "trace id of {line:#?}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn prefetch_utilization_counts_held_deliveries() -> anyhow::Result<()> {
    let _serial = serial().await;
    component("tests/guests/chaos.wasm")?;
    let dir = tempfile::tempdir()?;
    // Two calls at once out of a prefetch window of four; each call spins
    // until its deadline, which gives the test seconds to scrape. A third
    // event waits for a free call.
    let spinner = ChaosConsumer::new("spinner", "order.placed", "spin")
        .timeout("4s")
        .concurrency(2)
        .prefetch(4)
        .max_attempts(1);
    let manifest = chaos_manifest(dir.path(), &[spinner])?;
    rabbitmq().reset(&[&manifest]).await?;
    let process = Switchyard::start(dir.path(), &[manifest], BrokerMode::RabbitMq).await?;
    let consumer = [("consumer", "spinner")];

    let idle = process.metrics().await?;
    assert_eq!(
        idle.value(PREFETCH_UTILIZATION, &consumer),
        0.0,
        "utilization before any event"
    );

    for _ in 0..3 {
        process.publish("/orders", &shop::order_body()).await?;
    }
    let busy = process
        .wait_for_metrics(
            "two events in flight",
            PREFETCH_UTILIZATION,
            TIMEOUT,
            |metrics| metrics.value(IN_FLIGHT, &consumer) == 2.0,
        )
        .await?;
    assert_eq!(
        busy.value(PREFETCH_UTILIZATION, &consumer),
        0.5,
        "two of four deliveries held while the third waits"
    );

    let labels = [("consumer", "spinner"), ("outcome", "dead_lettered")];
    let done = process.wait_for_count(HANDLED, &labels, 3, TIMEOUT).await?;
    assert_eq!(
        done.value(PREFETCH_UTILIZATION, &consumer),
        0.0,
        "utilization once all three were dead-lettered:\n{}",
        done.describe(DEAD_LETTERED)
    );
    process.stop_cleanly().await?;
    Ok(())
}

#[tokio::test]
async fn broker_password_never_logged() -> anyhow::Result<()> {
    let _serial = serial().await;
    let manifest = reset_shop().await?;
    let vhost = rabbitmq().vhost.clone();
    let user = format!("{vhost}-user");
    let password = format!("pw-{}", unique_suffix());
    rabbitmqctl(&["add_user", &user, &password]).map_err(anyhow::Error::msg)?;
    let granted = rabbitmqctl(&["set_permissions", "-p", &vhost, &user, ".*", ".*", ".*"])
        .map_err(anyhow::Error::msg);

    // Every log line of every target, at debug, through a full flow.
    let env = [("RUST_LOG", "debug")];
    let dir = tempfile::tempdir()?;
    let url = format!("amqp://{user}:{password}@127.0.0.1:5672/{vhost}");
    let outcome = async {
        granted?;
        let process = Switchyard::start_with_env(
            dir.path(),
            std::slice::from_ref(&manifest),
            BrokerMode::Url(url),
            &env,
        )
        .await?;
        shop::run_flow(&process).await?;
        let readiness = process.get("/readyz").await?.text().await?;
        let stopped = process.stop_cleanly().await?;
        anyhow::Ok((readiness, stopped.stderr))
    }
    .await;

    // A wrong password: the failed logins are logged and reported.
    let wrong = format!("wrong-{password}");
    let url = format!("amqp://{user}:{wrong}@127.0.0.1:5672/{vhost}");
    let rejected_login = async {
        let process =
            Switchyard::spawn_with_env(dir.path(), &[manifest], BrokerMode::Url(url), &env).await?;
        // Long enough for a few failed attempts.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let readiness = process.get("/readyz").await?.text().await?;
        let stopped = process.stop_cleanly().await?;
        anyhow::Ok((readiness, stopped.stderr))
    }
    .await;
    rabbitmqctl(&["delete_user", &user]).map_err(anyhow::Error::msg)?;

    let (readiness, stderr) = outcome?;
    assert!(!readiness.contains(&password), "/readyz: {readiness}");
    assert!(!stderr.is_empty(), "no log lines at debug");
    let leaked: Vec<&str> = stderr
        .lines()
        .filter(|line| line.contains(&password))
        .collect();
    assert!(leaked.is_empty(), "password in the log: {leaked:#?}");

    let (readiness, stderr) = rejected_login?;
    assert!(readiness.contains("broker:rabbit"), "/readyz: {readiness}");
    assert!(!readiness.contains(&password), "/readyz: {readiness}");
    let leaked: Vec<&str> = stderr
        .lines()
        .filter(|line| line.contains(&password))
        .collect();
    assert!(leaked.is_empty(), "wrong password in the log: {leaked:#?}");
    Ok(())
}

/// With `--log-format json`, each manifest warning is a log record of its
/// own, so that every line of the log is one JSON object.
#[tokio::test]
async fn manifest_warnings_are_json_records() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let schemas = repo_root().join("schemas");
    let manifest = dir.path().join("warned.toml");
    // A password written in the URL is a warning, not an error.
    std::fs::write(
        &manifest,
        format!(
            r#"[runtime]
name = "warned"
schemas = {schemas:?}

[brokers.rabbit]
kind = "amqp"
url = "amqp://app:s3cret@127.0.0.1:5672/%2f"

[exchanges.events]
broker = "rabbit"
type = "topic"

[queues.orders]
broker = "rabbit"
bind = [{{ exchange = "events", key = "order.placed" }}]
external_consumers = true

[events."order.placed"]
schema = "order.placed.json"
publish = {{ exchange = "events" }}
"#
        ),
    )?;
    let process = Switchyard::start(dir.path(), &[manifest], BrokerMode::Embedded).await?;
    let stopped = process.stop_cleanly().await?;

    let not_json: Vec<&str> = stopped
        .stderr
        .lines()
        .filter(|line| serde_json::from_str::<Value>(line).is_err())
        .collect();
    assert!(
        not_json.is_empty(),
        "lines that are not JSON: {not_json:#?}"
    );
    let lines = stopped.log_lines();
    let warning = lines
        .iter()
        .find(|line| line.field("code") == Some("literal-password"))
        .unwrap_or_else(|| panic!("no literal-password record:\n{}", stopped.stderr));
    assert_eq!(warning.level, "WARN");
    assert_eq!(
        warning.message(),
        "the URL of broker `rabbit` contains a password"
    );
    assert!(
        warning
            .field("at")
            .is_some_and(|at| at.ends_with("warned.toml:7:7")),
        "{warning:?}"
    );
    assert!(!stopped.stderr.contains("s3cret"), "{}", stopped.stderr);
    Ok(())
}
