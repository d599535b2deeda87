//! The reference system, `manifests/shop.toml`, on the local RabbitMQ: the
//! real binary, the real handler components, and lapin to look into the
//! queues and to publish what other services would.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString};
use reqwest::StatusCode;
use serde_json::{Value, json};
use switchyard_tests::shop::{self, DEAD_LETTERED, HANDLED, PUBLISHED, QUEUE_DEPTH};
use switchyard_tests::{
    BrokerMode, RabbitMq, ReceivedMessage, Switchyard, component, rabbitmq, serial, shop_manifest,
};
use tempfile::TempDir;

const TIMEOUT: Duration = Duration::from_secs(30);

/// Queues of shop.toml that must be empty once every event was handled.
const DRAINED_QUEUES: [&str; 8] = [
    "email-service",
    "inventory-service",
    "analytics-service",
    "email-service.retry",
    "inventory-service.retry",
    "analytics-service.retry",
    "dead-letters",
    "unroutable",
];

/// Deletes what an earlier test left in the vhost and starts shop.toml.
async fn start_shop(dir: &TempDir) -> anyhow::Result<Switchyard> {
    for handler in ["email", "inventory", "analytics"] {
        component(&format!("handlers/{handler}.wasm"))?;
    }
    let manifest: PathBuf = shop_manifest();
    rabbitmq().reset(&[&manifest]).await?;
    Switchyard::start(dir.path(), &[manifest], BrokerMode::RabbitMq).await
}

async fn assert_drained(rabbit: &RabbitMq) -> anyhow::Result<()> {
    for queue in DRAINED_QUEUES {
        let depth = rabbit.depth(queue).await?;
        if depth > 0 {
            let messages = rabbit.drain(queue).await?;
            panic!("queue `{queue}` contains {depth} messages, expected none: {messages:#?}");
        }
    }
    Ok(())
}

/// Returns the structured CloudEvents in `notifications` by type, after
/// checking the envelope of each.
fn follow_ups(messages: &[ReceivedMessage]) -> anyhow::Result<Vec<(String, Value)>> {
    let mut events = Vec::new();
    for message in messages {
        assert_eq!(
            message.content_type.as_deref(),
            Some("application/cloudevents+json"),
            "content type of {message:?}"
        );
        let event = message.json()?;
        assert_eq!(event["specversion"], "1.0", "specversion of {event}");
        for attribute in ["id", "source", "type", "time", "datacontenttype"] {
            let value = event[attribute].as_str().unwrap_or_default();
            assert!(!value.is_empty(), "`{attribute}` missing in {event}");
        }
        let event_type = event["type"].as_str().unwrap_or_default().to_owned();
        assert_eq!(message.exchange, "events", "exchange of {event}");
        assert_eq!(message.routing_key, event_type, "routing key of {event}");
        events.push((event_type, event["data"].clone()));
    }
    Ok(events)
}

fn of_type<'a>(events: &'a [(String, Value)], event_type: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|(actual, _)| actual == event_type)
        .map(|(_, data)| data)
        .collect()
}

fn text_header(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}

#[tokio::test]
async fn shop_flow_on_rabbitmq() -> anyhow::Result<()> {
    let _serial = serial().await;
    let rabbit = rabbitmq();
    let dir = tempfile::tempdir()?;
    let process = start_shop(&dir).await?;

    let flow = shop::run_flow(&process).await?;
    process.stop_cleanly().await?;

    let notifications = rabbit.drain("notifications").await?;
    let events = follow_ups(&notifications)?;
    assert_eq!(events.len(), 4, "follow-up events: {events:#?}");
    let ids: BTreeSet<String> = notifications
        .iter()
        .map(|message| message.json().map(|event| event["id"].to_string()))
        .collect::<anyhow::Result<_>>()?;
    assert_eq!(ids.len(), 4, "follow-up event ids are not unique: {ids:?}");

    let emails = of_type(&events, "email.sent");
    assert_eq!(emails.len(), 2, "email.sent events: {emails:#?}");
    let confirmation = emails
        .iter()
        .find(|data| data["template"] == "order-confirmation")
        .expect("one email.sent is the order confirmation");
    assert_eq!(
        confirmation["orderId"],
        json!(flow.order_id),
        "runtime-filled orderId"
    );
    let welcome = emails
        .iter()
        .find(|data| data["template"] == "welcome")
        .expect("one email.sent is the welcome mail");
    assert_eq!(
        welcome["userId"],
        json!(flow.user_id),
        "runtime-filled userId"
    );
    assert_eq!(welcome["to"], "ada@example.com");

    let reserved = of_type(&events, "stock.reserved");
    let mut items: Vec<(String, i64)> = reserved
        .iter()
        .map(|data| {
            assert_eq!(data["orderId"], json!(flow.order_id), "order of {data}");
            let product = data["productId"].as_str().unwrap_or_default().to_owned();
            (product, data["quantity"].as_i64().unwrap_or_default())
        })
        .collect();
    items.sort();
    assert_eq!(items, [("p-7".to_owned(), 2), ("p-9".to_owned(), 1)]);

    assert_drained(rabbit).await
}

#[tokio::test]
async fn invalid_requests_rejected_on_rabbitmq() -> anyhow::Result<()> {
    let _serial = serial().await;
    let rabbit = rabbitmq();
    let dir = tempfile::tempdir()?;
    let process = start_shop(&dir).await?;

    shop::check_invalid_requests(&process).await?;
    let handled = process.metrics().await?.count(HANDLED, &[]);
    assert_eq!(handled, 0, "handler outcomes after invalid requests only");
    process.stop_cleanly().await?;

    assert_drained(rabbit).await?;
    assert_eq!(rabbit.depth("notifications").await?, 0, "notifications");
    Ok(())
}

#[tokio::test]
async fn poison_messages_dead_lettered() -> anyhow::Result<()> {
    let _serial = serial().await;
    let rabbit = rabbitmq();
    let dir = tempfile::tempdir()?;
    let process = start_shop(&dir).await?;

    // All three go straight to the queue through the default exchange, as
    // a misbehaving service would send them.
    let not_json = b"\x00order #1, not JSON".to_vec();
    rabbit
        .publish("", "email-service", &not_json, BasicProperties::default())
        .await?;
    let invalid_order = json!({
        "specversion": "1.0",
        "id": "invalid-order-1",
        "source": "/tests/poison",
        "type": "order.placed",
        "datacontenttype": "application/json",
        "data": { "orderId": "o-1", "items": [] },
    })
    .to_string()
    .into_bytes();
    let properties =
        BasicProperties::default().with_content_type("application/cloudevents+json".into());
    rabbit
        .publish("", "email-service", &invalid_order, properties)
        .await?;
    // Bare JSON takes its type from the routing key, here the queue name
    // `email-service`, which is no event type of the manifest.
    let untyped = br#"{"orderId": "o-2"}"#.to_vec();
    let properties = BasicProperties::default().with_content_type("application/json".into());
    rabbit
        .publish("", "email-service", &untyped, properties)
        .await?;

    let labels = [("consumer", "email-service")];
    let metrics = process
        .wait_for_count(DEAD_LETTERED, &labels, 3, TIMEOUT)
        .await?;
    let reasons = [("undecodable", 1), ("schema", 1), ("unknown_type", 1)];
    for (reason, count) in reasons {
        let labels = [("consumer", "email-service"), ("reason", reason)];
        let actual = metrics.count(DEAD_LETTERED, &labels);
        assert_eq!(
            actual,
            count,
            "dead letters with reason {reason}:\n{}",
            metrics.describe(DEAD_LETTERED)
        );
    }
    let dead = metrics.count(
        HANDLED,
        &[("consumer", "email-service"), ("outcome", "dead_lettered")],
    );
    assert_eq!(
        dead,
        3,
        "dead_lettered outcomes:\n{}",
        metrics.describe(HANDLED)
    );
    let ok = metrics.count(HANDLED, &[("outcome", "ok")]);
    assert_eq!(ok, 0, "ok outcomes");
    assert_eq!(
        metrics.count(PUBLISHED, &[("event_type", "email.sent")]),
        0,
        "email.sent"
    );
    process.stop_cleanly().await?;

    let letters = rabbit.drain("dead-letters").await?;
    assert_eq!(letters.len(), 3, "dead letters: {letters:#?}");
    for body in [&not_json, &invalid_order, &untyped] {
        let letter = letters
            .iter()
            .find(|letter| &letter.body == body)
            .unwrap_or_else(|| panic!("no dead letter has the original body; got {letters:#?}"));
        let reason = letter
            .header_text("x-switchyard-reason")
            .unwrap_or_default();
        assert!(
            !reason.is_empty(),
            "x-switchyard-reason missing: {letter:#?}"
        );
        let consumer = letter.header_text("x-switchyard-consumer");
        assert_eq!(consumer.as_deref(), Some("email-service"), "{letter:#?}");
        assert!(
            letter.header_int("x-switchyard-attempt").is_some(),
            "x-switchyard-attempt missing or not an integer: {letter:#?}"
        );
    }
    assert_eq!(rabbit.depth("email-service").await?, 0, "email-service");
    assert_eq!(rabbit.depth("notifications").await?, 0, "notifications");
    Ok(())
}

#[tokio::test]
async fn legacy_envelope_handled() -> anyhow::Result<()> {
    let _serial = serial().await;
    let rabbit = rabbitmq();
    let dir = tempfile::tempdir()?;
    let process = start_shop(&dir).await?;

    // The envelope of the services that switchyard replaces.
    let legacy = json!({
        "id": "legacy-1",
        "type": "order.placed",
        "timestamp": 1_700_000_000_000_i64,
        "data": {
            "orderId": "o-legacy-1",
            "customerId": "c-7",
            "items": [{ "productId": "p-3", "quantity": 3 }],
            "total": 9.5,
        },
    });
    let properties = BasicProperties::default().with_content_type("application/json".into());
    let body = legacy.to_string().into_bytes();
    rabbit
        .publish("events", "order.placed", &body, properties)
        .await?;

    let ok = |consumer| [("consumer", consumer), ("outcome", "ok")];
    process
        .wait_for_count(HANDLED, &ok("email-service"), 1, TIMEOUT)
        .await?;
    process
        .wait_for_count(HANDLED, &ok("inventory-service"), 1, TIMEOUT)
        .await?;
    let metrics = process
        .wait_for_count(PUBLISHED, &[("event_type", "stock.reserved")], 1, TIMEOUT)
        .await?;
    assert_eq!(
        metrics.count(HANDLED, &ok("analytics-service")),
        0,
        "analytics-service"
    );
    assert_eq!(metrics.count(DEAD_LETTERED, &[]), 0, "dead letters");
    process.stop_cleanly().await?;

    let events = follow_ups(&rabbit.drain("notifications").await?)?;
    let emails = of_type(&events, "email.sent");
    assert_eq!(emails.len(), 1, "email.sent events: {emails:#?}");
    assert_eq!(emails[0]["orderId"], "o-legacy-1");
    let reserved = of_type(&events, "stock.reserved");
    assert_eq!(reserved.len(), 1, "stock.reserved events: {reserved:#?}");
    assert_eq!(reserved[0]["orderId"], "o-legacy-1");
    assert_eq!(reserved[0]["quantity"], 3);
    assert_drained(rabbit).await
}

#[tokio::test]
async fn binary_and_bare_events_handled() -> anyhow::Result<()> {
    let _serial = serial().await;
    let rabbit = rabbitmq();
    let dir = tempfile::tempdir()?;
    let process = start_shop(&dir).await?;

    // Binary mode: attributes in `cloudEvents_*` headers, data in the body.
    let mut headers = FieldTable::default();
    headers.insert("cloudEvents_specversion".into(), text_header("1.0"));
    headers.insert("cloudEvents_id".into(), text_header("binary-1"));
    headers.insert("cloudEvents_source".into(), text_header("/tests/binary"));
    headers.insert("cloudEvents_type".into(), text_header("user.created"));
    let properties = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_headers(headers);
    let body = json!({ "userId": "u-binary", "email": "binary@example.com" });
    let body = body.to_string().into_bytes();
    rabbit
        .publish("events", "user.created", &body, properties)
        .await?;

    // Bare JSON: the routing key is the event type.
    let properties = BasicProperties::default().with_content_type("application/json".into());
    let body = json!({ "userId": "u-bare", "email": "bare@example.com" });
    let body = body.to_string().into_bytes();
    rabbit
        .publish("events", "user.created", &body, properties)
        .await?;

    let ok = |consumer| [("consumer", consumer), ("outcome", "ok")];
    process
        .wait_for_count(HANDLED, &ok("analytics-service"), 2, TIMEOUT)
        .await?;
    let metrics = process
        .wait_for_count(PUBLISHED, &[("event_type", "email.sent")], 2, TIMEOUT)
        .await?;
    assert_eq!(
        metrics.count(HANDLED, &ok("email-service")),
        2,
        "email-service"
    );
    assert_eq!(metrics.count(DEAD_LETTERED, &[]), 0, "dead letters");
    process.stop_cleanly().await?;

    let events = follow_ups(&rabbit.drain("notifications").await?)?;
    let mut users: Vec<&str> = of_type(&events, "email.sent")
        .iter()
        .map(|data| data["userId"].as_str().unwrap_or_default())
        .collect();
    users.sort();
    assert_eq!(users, ["u-bare", "u-binary"]);
    assert_drained(rabbit).await
}

#[tokio::test]
async fn unroutable_publish_kept() -> anyhow::Result<()> {
    let _serial = serial().await;
    let rabbit = rabbitmq();
    let dir = tempfile::tempdir()?;
    let process = start_shop(&dir).await?;

    // No binding of `events` matches this key, so the alternate exchange
    // `unroutable` keeps the message, and the queue's depth counts it.
    let body = br#"{"note": "nobody listens"}"#;
    rabbit
        .publish("events", "nobody.listens", body, BasicProperties::default())
        .await?;
    let labels = [("broker", "rabbit"), ("queue", "unroutable")];
    process
        .wait_for_count(QUEUE_DEPTH, &labels, 1, TIMEOUT)
        .await?;
    process.stop_cleanly().await?;
    let unroutable = rabbit.drain("unroutable").await?;
    assert_eq!(
        unroutable.len(),
        1,
        "messages in unroutable: {unroutable:#?}"
    );
    assert_eq!(unroutable[0].body, body, "body of the unroutable message");
    assert_eq!(unroutable[0].routing_key, "nobody.listens");
    Ok(())
}

#[tokio::test]
async fn unreachable_broker_returns_503() -> anyhow::Result<()> {
    let _serial = serial().await;
    let dir = tempfile::tempdir()?;
    // A port that was free a moment ago, so no AMQP server listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let url = format!("amqp://guest:guest@127.0.0.1:{port}/%2f");
    let manifest = shop_manifest();
    let process = Switchyard::spawn(dir.path(), &[manifest], BrokerMode::Url(url)).await?;

    let healthy = switchyard_tests::poll(TIMEOUT * 3, || async {
        let response = process.get("/healthz").await.ok()?;
        (response.status() == StatusCode::OK).then_some(())
    })
    .await;
    assert!(
        healthy.is_some(),
        "/healthz never returned 200; stderr:\n{}",
        process.stderr_tail(40)
    );

    let response = process.get("/readyz").await?;
    assert_eq!(
        response.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "/readyz"
    );
    let readiness: Value = response.json().await?;
    assert_eq!(readiness["ready"], false, "{readiness}");
    assert_eq!(
        readiness["checks"]["broker:rabbit"]["ok"], false,
        "{readiness}"
    );
    let detail = readiness["checks"]["broker:rabbit"]["detail"]
        .as_str()
        .unwrap_or_default();
    assert!(
        !detail.is_empty(),
        "broker check without detail: {readiness}"
    );

    let response = process.post_json("/orders", &shop::order_body()).await?;
    assert_eq!(
        response.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "POST /orders"
    );
    let retry_after = response.headers().get(reqwest::header::RETRY_AFTER);
    assert!(retry_after.is_some(), "503 without Retry-After");
    let metrics = process.metrics().await?;
    assert_eq!(metrics.count(PUBLISHED, &[]), 0, "confirmed publishes");

    // Still connecting when SIGTERM arrives is a clean stop too.
    process.stop_cleanly().await?;
    Ok(())
}
