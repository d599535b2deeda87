//! SIGTERM while events are in flight, on RabbitMQ: the process finishes
//! the calls it started, leaves the rest queued, exits 0, and a restarted
//! process handles every remaining event.
//!
//! A first process declares the queue, runs no consumer and takes the
//! POSTs, so the backlog exists at a known moment. Then the consuming
//! process starts with all of them queued and gets SIGTERM after its first
//! few events.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::json;
use switchyard_tests::shop::HANDLED;
use switchyard_tests::{
    BrokerMode, ChaosConsumer, Switchyard, chaos_manifest, component, poll, queues_only_manifest,
    rabbitmq, serial,
};

/// Orders posted before the consumer starts.
const ORDERS: usize = 400;

/// ok outcomes the consumer reaches before SIGTERM.
const HANDLED_BEFORE_STOP: u64 = 20;

#[tokio::test]
async fn sigterm_drains_and_restart_finishes() -> anyhow::Result<()> {
    let _serial = serial().await;
    component("tests/guests/chaos.wasm")?;
    let rabbit = rabbitmq();
    let dir = tempfile::tempdir()?;
    // One call at a time and a prefetch window of 16: at SIGTERM there is
    // one call running, up to 15 deliveries waiting in the process, and the
    // rest in the queue.
    let consumer = ChaosConsumer::new("orders", "order.placed", "ok")
        .concurrency(1)
        .prefetch(16);
    let consumers = [consumer];
    let producer_manifest = queues_only_manifest(dir.path(), &consumers)?;
    let consumer_manifest = chaos_manifest(dir.path(), &consumers)?;
    rabbit.reset(&[&consumer_manifest]).await?;

    // Backlog: every order is queued before any consumer runs.
    let producer =
        Switchyard::start(dir.path(), &[producer_manifest], BrokerMode::RabbitMq).await?;
    let mut posted = BTreeSet::new();
    for number in 0..ORDERS {
        let order = json!({
            "customerId": format!("c-{number}"),
            "items": [{ "productId": "p-1", "quantity": 1 }],
            "total": 1.0,
        });
        posted.insert(producer.publish("/orders", &order).await?);
    }
    producer.stop_cleanly().await?;
    assert_eq!(
        rabbit.depth("orders").await?,
        ORDERS as u32,
        "queued orders"
    );

    // First consuming process: SIGTERM after a few events.
    let first = Switchyard::start(
        dir.path(),
        std::slice::from_ref(&consumer_manifest),
        BrokerMode::RabbitMq,
    )
    .await?;
    let labels = [("consumer", "orders"), ("outcome", "ok")];
    let timeout = Duration::from_secs(30);
    first
        .wait_for_count(HANDLED, &labels, HANDLED_BEFORE_STOP, timeout)
        .await?;
    let stopped = first.stop_cleanly().await?;
    let first_calls = stopped.chaos_calls();
    let first_ids: BTreeSet<String> = first_calls
        .iter()
        .map(|call| call.event_id.clone())
        .collect();
    assert!(
        first_ids.len() < ORDERS,
        "the first process handled all {ORDERS} orders before SIGTERM arrived, so nothing \
         was in flight; raise ORDERS"
    );
    assert!(
        stopped.stop_duration < Duration::from_secs(10),
        "stopping took {:?} with one call of a fast handler in flight",
        stopped.stop_duration
    );
    // Every call that started finished and was acknowledged; every delivery
    // that had not started went back to the queue.
    let left = rabbit.depth("orders").await?;
    assert_eq!(
        left as usize + first_ids.len(),
        ORDERS,
        "{left} orders queued after the first process handled {} distinct ones",
        first_ids.len()
    );

    // Second process: handles the rest.
    let second = Switchyard::start(dir.path(), &[consumer_manifest], BrokerMode::RabbitMq).await?;
    let remaining = left as u64;
    second
        .wait_for_count(HANDLED, &labels, remaining, timeout)
        .await?;
    let stopped = second.stop_cleanly().await?;
    let second_calls = stopped.chaos_calls();
    eprintln!(
        "first process: {} calls on {} orders, then {left} left queued; second process: {} calls",
        first_calls.len(),
        first_ids.len(),
        second_calls.len()
    );

    let mut calls_per_event: BTreeMap<String, usize> = BTreeMap::new();
    for call in first_calls.iter().chain(&second_calls) {
        *calls_per_event.entry(call.event_id.clone()).or_default() += 1;
    }
    let handled: BTreeSet<String> = calls_per_event.keys().cloned().collect();
    let missing: Vec<_> = posted.difference(&handled).collect();
    assert!(
        missing.is_empty(),
        "{} orders never handled: {missing:?}",
        missing.len()
    );
    let unknown: Vec<_> = handled.difference(&posted).collect();
    assert!(
        unknown.is_empty(),
        "calls for events that were never posted: {unknown:?}"
    );

    let queued = poll(Duration::from_secs(5), || async {
        let depth = rabbit.depth("orders").await.ok()?;
        (depth == 0).then_some(())
    })
    .await;
    assert!(
        queued.is_some(),
        "orders still queued: {}",
        rabbit.depth("orders").await?
    );
    assert_eq!(rabbit.depth("orders.retry").await?, 0, "retry queue");
    assert_eq!(rabbit.depth("dead-letters").await?, 0, "dead letters");
    Ok(())
}
