//! Checks on the reference system, `manifests/shop.toml`, that hold on
//! every broker: the order and sign-up flow seen through `/metrics`, and
//! the responses to invalid producer requests.

use std::time::Duration;

use anyhow::Context;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::Switchyard;
use crate::metrics::Metrics;

pub const PUBLISHED: &str = "switchyard_events_published_total";
pub const HANDLED: &str = "switchyard_events_handled_total";
pub const DEAD_LETTERED: &str = "switchyard_events_dead_lettered_total";
pub const DURATION_COUNT: &str = "switchyard_handler_duration_seconds_count";
pub const QUEUE_DEPTH: &str = "switchyard_queue_depth";
pub const CONSUMER_LAG: &str = "switchyard_consumer_lag";

/// Maximum wait for the handlers to finish the flow's events.
const FLOW_TIMEOUT: Duration = Duration::from_secs(30);

/// Returns an `order.placed` request body with two items and no `orderId`,
/// which the runtime fills in.
pub fn order_body() -> Value {
    json!({
        "customerId": "c-42",
        "items": [
            { "productId": "p-7", "quantity": 2 },
            { "productId": "p-9", "quantity": 1 },
        ],
        "total": 29.97,
    })
}

/// Returns a `user.created` request body without `userId`.
pub fn user_body() -> Value {
    json!({ "email": "ada@example.com", "name": "Ada" })
}

/// The event ids of one run of the flow and the final scrape.
#[derive(Debug)]
pub struct ShopFlow {
    pub order_id: String,
    pub user_id: String,
    pub metrics: Metrics,
}

/// Posts one order and one user, waits until every handler finished, and
/// checks the counters. Each handler ran once, with outcome `ok`, per event
/// it is bound to. Nothing was retried or dead-lettered. The handlers
/// published one `email.sent` per event and one `stock.reserved` per order
/// item.
pub async fn run_flow(process: &Switchyard) -> anyhow::Result<ShopFlow> {
    let order_id = process.publish("/orders", &order_body()).await?;
    let user_id = process.publish("/users", &user_body()).await?;

    let expected_handled = [
        ("email-service", 2),
        ("inventory-service", 1),
        ("analytics-service", 1),
    ];
    process
        .wait_for_metrics(
            "every handler to finish",
            HANDLED,
            FLOW_TIMEOUT,
            |metrics| {
                expected_handled.iter().all(|(consumer, count)| {
                    metrics.count(HANDLED, &[("consumer", consumer), ("outcome", "ok")]) >= *count
                }) && metrics.count(PUBLISHED, &[("event_type", "stock.reserved")]) >= 2
            },
        )
        .await?;
    // A second scrape after a pause catches a duplicate call or a late
    // retry that the first scrape came too early to see.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let metrics = process.metrics().await?;

    for (consumer, count) in expected_handled {
        let ok = metrics.count(HANDLED, &[("consumer", consumer), ("outcome", "ok")]);
        assert_eq!(
            ok,
            count,
            "ok outcomes of {consumer}:\n{}",
            metrics.describe(HANDLED)
        );
        let calls = metrics.count(DURATION_COUNT, &[("consumer", consumer)]);
        assert_eq!(calls, count, "handler calls of {consumer}");
    }
    let retried = metrics.count(HANDLED, &[("outcome", "retry")]);
    assert_eq!(retried, 0, "retries:\n{}", metrics.describe(HANDLED));
    let dead = metrics.count(HANDLED, &[("outcome", "dead_lettered")]);
    assert_eq!(
        dead,
        0,
        "dead letters:\n{}",
        metrics.describe(DEAD_LETTERED)
    );

    let published = [
        ("order.placed", 1),
        ("user.created", 1),
        ("email.sent", 2),
        ("stock.reserved", 2),
    ];
    for (event_type, count) in published {
        let labels = [("event_type", event_type), ("broker", "rabbit")];
        assert_eq!(
            metrics.count(PUBLISHED, &labels),
            count,
            "confirmed publishes of {event_type}:\n{}",
            metrics.describe(PUBLISHED)
        );
    }
    Ok(ShopFlow {
        order_id,
        user_id,
        metrics,
    })
}

/// Sends invalid producer requests and checks each status, the problem
/// document, and that nothing was published.
pub async fn check_invalid_requests(process: &Switchyard) -> anyhow::Result<()> {
    let published_before = process.metrics().await?.count(PUBLISHED, &[]);

    // Two schema violations in one order: one error with a pointer each.
    let mut order = order_body();
    order["items"][0]["quantity"] = json!(0);
    order["total"] = json!(-1);
    let problem =
        expect_problem(process, "/orders", &order, StatusCode::UNPROCESSABLE_ENTITY).await?;
    assert_eq!(
        pointers(&problem),
        ["/items/0/quantity", "/total"],
        "{problem}"
    );

    let mut user = user_body();
    user["email"] = json!("not an email");
    let problem =
        expect_problem(process, "/users", &user, StatusCode::UNPROCESSABLE_ENTITY).await?;
    assert_eq!(pointers(&problem), ["/email"], "{problem}");

    let response = process
        .post("/orders", "application/json", b"{\"customerId\": ".to_vec())
        .await?;
    check_problem(response, StatusCode::BAD_REQUEST).await?;

    let response = process
        .post("/orders", "text/plain", b"customer c-42".to_vec())
        .await?;
    assert_eq!(
        response.status(),
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "text/plain body"
    );
    let response = process.post("/orders", "", b"{}".to_vec()).await?;
    let problem = check_problem(response, StatusCode::UNSUPPORTED_MEDIA_TYPE).await?;
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|detail| detail.starts_with("the request has no content type")),
        "{problem}"
    );

    // The default body limit is 1 MiB.
    let padding = "x".repeat(2 * 1024 * 1024);
    let large = json!({ "customerId": padding }).to_string().into_bytes();
    let response = process.post("/orders", "application/json", large).await?;
    assert_eq!(
        response.status(),
        StatusCode::PAYLOAD_TOO_LARGE,
        "2 MiB body"
    );

    let response = process.post_json("/no-such-route", &order_body()).await?;
    assert_eq!(response.status(), StatusCode::NOT_FOUND, "unknown route");
    let response = process.get("/orders").await?;
    assert_eq!(
        response.status(),
        StatusCode::METHOD_NOT_ALLOWED,
        "GET /orders"
    );
    assert_eq!(
        response.headers().get(reqwest::header::ALLOW),
        Some(&reqwest::header::HeaderValue::from_static("POST")),
        "methods that /orders allows"
    );

    let published_after = process.metrics().await?.count(PUBLISHED, &[]);
    assert_eq!(
        published_after, published_before,
        "confirmed publishes after invalid requests"
    );
    Ok(())
}

/// POSTs a body, expects `status` with a problem document, and returns it.
async fn expect_problem(
    process: &Switchyard,
    path: &str,
    body: &Value,
    status: StatusCode,
) -> anyhow::Result<Value> {
    let response = process.post_json(path, body).await?;
    check_problem(response, status).await
}

/// Checks the status and `application/problem+json` content type of a
/// response and returns its body.
async fn check_problem(response: reqwest::Response, status: StatusCode) -> anyhow::Result<Value> {
    let actual = response.status();
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let text = response.text().await?;
    assert_eq!(actual, status, "status of the response with body: {text}");
    assert_eq!(
        content_type, "application/problem+json",
        "content type of: {text}"
    );
    let problem: Value = serde_json::from_str(&text)
        .with_context(|| format!("problem document is not JSON: {text}"))?;
    assert_eq!(
        problem["status"],
        json!(status.as_u16()),
        "`status` member of {problem}"
    );
    Ok(problem)
}

/// Returns the sorted `pointer` of every entry of a problem's `errors`,
/// and checks that each entry has a message.
fn pointers(problem: &Value) -> Vec<String> {
    let errors = problem["errors"].as_array().cloned().unwrap_or_default();
    let mut pointers: Vec<String> = errors
        .iter()
        .map(|error| {
            let message = error["message"].as_str().unwrap_or_default();
            assert!(!message.is_empty(), "error without a message in {problem}");
            error["pointer"]
                .as_str()
                .unwrap_or("(no pointer)")
                .to_owned()
        })
        .collect();
    pointers.sort();
    pointers
}
