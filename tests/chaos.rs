//! Retries, rejection, traps and deadlines, driven by the chaos test guest
//! (`tests/guests/chaos.wasm`), on RabbitMQ and on the embedded broker.
//!
//! Calls are counted from the line the guest logs on every call, which
//! carries the event id, the attempt number and the calls its instance has
//! served.

use std::path::PathBuf;
use std::time::Duration;

use switchyard_tests::shop::{DEAD_LETTERED, HANDLED, order_body, user_body};
use switchyard_tests::{
    BrokerMode, ChaosCall, ChaosConsumer, Switchyard, chaos_manifest, component, rabbitmq, serial,
};
use tempfile::TempDir;

const TIMEOUT: Duration = Duration::from_secs(20);
const DURATION_SUM: &str = "switchyard_handler_duration_seconds_sum";
const DURATION_COUNT: &str = "switchyard_handler_duration_seconds_count";
const LIMIT_HITS: &str = "switchyard_handler_limit_hits_total";

struct ChaosRun {
    // Holds the manifest and the stderr capture until the test ends.
    _dir: TempDir,
    mode: BrokerMode,
    process: Switchyard,
}

async fn start(mode: BrokerMode, consumers: &[ChaosConsumer]) -> anyhow::Result<ChaosRun> {
    component("tests/guests/chaos.wasm")?;
    let dir = tempfile::tempdir()?;
    let manifest: PathBuf = chaos_manifest(dir.path(), consumers)?;
    if mode == BrokerMode::RabbitMq {
        rabbitmq().reset(&[&manifest]).await?;
    }
    let process = Switchyard::start(dir.path(), &[manifest], mode.clone()).await?;
    Ok(ChaosRun {
        _dir: dir,
        mode,
        process,
    })
}

/// Returns the calls of one event, in log order.
fn calls_of(calls: &[ChaosCall], event_id: &str) -> Vec<ChaosCall> {
    calls
        .iter()
        .filter(|call| call.event_id == event_id)
        .cloned()
        .collect()
}

fn attempts(calls: &[ChaosCall]) -> Vec<u32> {
    calls.iter().map(|call| call.attempt).collect()
}

fn instance_calls(calls: &[ChaosCall]) -> Vec<u32> {
    calls.iter().map(|call| call.instance_call).collect()
}

/// Milliseconds between two logged calls.
fn gap_ms(earlier: &ChaosCall, later: &ChaosCall) -> i128 {
    match (earlier.time, later.time) {
        (Some(earlier), Some(later)) => (later - earlier).whole_milliseconds(),
        _ => panic!("log lines without a timestamp: {earlier:?} {later:?}"),
    }
}

/// Stops the run and, on RabbitMQ, checks that `dead-letters` contains exactly
/// the one event with switchyard's headers, and that the consumer's queue
/// and retry queue are empty.
async fn finish(run: ChaosRun, consumer: &str, event_id: &str, attempt: i64) -> anyhow::Result<()> {
    run.process.stop_cleanly().await?;
    if run.mode != BrokerMode::RabbitMq {
        return Ok(());
    }

    let rabbit = rabbitmq();
    let letters = rabbit.drain("dead-letters").await?;
    assert_eq!(letters.len(), 1, "dead letters: {letters:#?}");

    let letter = &letters[0];
    assert_eq!(letter.json()?["id"], event_id, "dead-lettered event");
    assert_eq!(
        letter.header_int("x-switchyard-attempt"),
        Some(attempt),
        "{letter:#?}"
    );
    let named = letter.header_text("x-switchyard-consumer");
    assert_eq!(named.as_deref(), Some(consumer), "{letter:#?}");
    let reason = letter
        .header_text("x-switchyard-reason")
        .unwrap_or_default();
    assert!(
        !reason.is_empty(),
        "x-switchyard-reason missing: {letter:#?}"
    );

    assert_eq!(rabbit.depth(consumer).await?, 0, "queue {consumer}");
    assert_eq!(
        rabbit.depth(&format!("{consumer}.retry")).await?,
        0,
        "retry queue"
    );
    Ok(())
}

/// Mode `retry` with 3 attempts and a 100ms backoff: three calls with
/// growing gaps, two `retry` outcomes, then a dead letter with attempt 3.
async fn retry_until_max_attempts(mode: BrokerMode) -> anyhow::Result<()> {
    let consumer = ChaosConsumer::new("retrier", "order.placed", "retry").max_attempts(3);
    let run = start(mode, &[consumer]).await?;
    let process = &run.process;
    let event_id = process.publish("/orders", &order_body()).await?;

    let labels = [("consumer", "retrier")];
    process
        .wait_for_count(DEAD_LETTERED, &labels, 1, TIMEOUT)
        .await?;
    // A pause lets a fourth call, which would be a bug, show up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let metrics = process.metrics().await?;
    let outcome =
        |outcome| metrics.count(HANDLED, &[("consumer", "retrier"), ("outcome", outcome)]);
    assert_eq!(
        outcome("retry"),
        2,
        "retry outcomes:\n{}",
        metrics.describe(HANDLED)
    );
    assert_eq!(outcome("dead_lettered"), 1, "dead_lettered outcomes");
    assert_eq!(outcome("ok"), 0, "ok outcomes");
    let labels = [("consumer", "retrier"), ("reason", "max_attempts")];
    assert_eq!(
        metrics.count(DEAD_LETTERED, &labels),
        1,
        "{}",
        metrics.describe(DEAD_LETTERED)
    );

    let calls = calls_of(&process.chaos_calls(), &event_id);
    assert_eq!(attempts(&calls), [1, 2, 3], "calls: {calls:#?}");
    // A guest that returns its own retry keeps its instance.
    assert_eq!(instance_calls(&calls), [1, 2, 3], "calls: {calls:#?}");
    // Backoff 100ms, doubled for the next delay; 10 ms of slack for clocks.
    assert!(
        gap_ms(&calls[0], &calls[1]) >= 90,
        "first retry too early: {calls:#?}"
    );
    assert!(
        gap_ms(&calls[1], &calls[2]) >= 190,
        "second retry too early: {calls:#?}"
    );
    finish(run, "retrier", &event_id, 3).await
}

/// Mode `reject`: one call, then a dead letter at once.
async fn reject_dead_letters_at_once(mode: BrokerMode) -> anyhow::Result<()> {
    let consumer = ChaosConsumer::new("rejecter", "order.placed", "reject").max_attempts(3);
    let run = start(mode, &[consumer]).await?;
    let process = &run.process;
    let event_id = process.publish("/orders", &order_body()).await?;

    let labels = [("consumer", "rejecter"), ("reason", "rejected")];
    process
        .wait_for_count(DEAD_LETTERED, &labels, 1, TIMEOUT)
        .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let metrics = process.metrics().await?;
    let outcome =
        |outcome| metrics.count(HANDLED, &[("consumer", "rejecter"), ("outcome", outcome)]);
    assert_eq!(
        outcome("retry"),
        0,
        "retry outcomes:\n{}",
        metrics.describe(HANDLED)
    );
    assert_eq!(outcome("dead_lettered"), 1, "dead_lettered outcomes");

    let calls = calls_of(&process.chaos_calls(), &event_id);
    assert_eq!(attempts(&calls), [1], "calls: {calls:#?}");
    finish(run, "rejecter", &event_id, 1).await
}

/// Mode `trap`: a trap counts as a retry, so 2 attempts give two calls and
/// a dead letter.
async fn trap_counts_as_retry(mode: BrokerMode) -> anyhow::Result<()> {
    let consumer = ChaosConsumer::new("trapper", "order.placed", "trap").max_attempts(2);
    let run = start(mode, &[consumer]).await?;
    let process = &run.process;
    let event_id = process.publish("/orders", &order_body()).await?;

    let labels = [("consumer", "trapper"), ("reason", "max_attempts")];
    process
        .wait_for_count(DEAD_LETTERED, &labels, 1, TIMEOUT)
        .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let metrics = process.metrics().await?;
    let outcome =
        |outcome| metrics.count(HANDLED, &[("consumer", "trapper"), ("outcome", outcome)]);
    assert_eq!(
        outcome("retry"),
        1,
        "retry outcomes:\n{}",
        metrics.describe(HANDLED)
    );
    assert_eq!(outcome("dead_lettered"), 1, "dead_lettered outcomes");

    let calls = calls_of(&process.chaos_calls(), &event_id);
    assert_eq!(attempts(&calls), [1, 2], "calls: {calls:#?}");
    // The instance that trapped is dropped, so the retry runs on a fresh one.
    assert_eq!(instance_calls(&calls), [1, 1], "calls: {calls:#?}");
    finish(run, "trapper", &event_id, 2).await
}

/// Mode `spin` with a 300ms deadline: each call is stopped near 300ms, and
/// a consumer of another queue handles its event while the guest spins.
async fn spin_stopped_by_deadline(mode: BrokerMode) -> anyhow::Result<()> {
    let consumers = [
        ChaosConsumer::new("spinner", "order.placed", "spin")
            .timeout("300ms")
            .max_attempts(2),
        ChaosConsumer::new("steady", "user.created", "ok"),
    ];
    let run = start(mode, &consumers).await?;
    let process = &run.process;
    let spin_id = process.publish("/orders", &order_body()).await?;
    let first = process
        .wait_for_chaos_calls("the first spinner call", TIMEOUT, |calls| {
            calls.iter().any(|call| call.event_id == spin_id)
        })
        .await?;
    let spin_started = calls_of(&first, &spin_id).remove(0);

    let steady_id = process.publish("/users", &user_body()).await?;
    let ok = [("consumer", "steady"), ("outcome", "ok")];
    process.wait_for_count(HANDLED, &ok, 1, TIMEOUT).await?;
    let labels = [("consumer", "spinner"), ("reason", "max_attempts")];
    process
        .wait_for_count(DEAD_LETTERED, &labels, 1, TIMEOUT)
        .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let metrics = process.metrics().await?;

    let calls = process.chaos_calls();
    let steady = calls_of(&calls, &steady_id);
    assert_eq!(steady.len(), 1, "steady calls: {steady:#?}");
    let offset = gap_ms(&spin_started, &steady[0]);
    assert!(
        offset < 300,
        "the steady consumer ran {offset} ms after the spinning call started, \
         after its 300ms deadline, so the spin held it up: {calls:#?}"
    );

    let spins = calls_of(&calls, &spin_id);
    assert_eq!(attempts(&spins), [1, 2], "spinner calls: {spins:#?}");
    let outcome =
        |outcome| metrics.count(HANDLED, &[("consumer", "spinner"), ("outcome", outcome)]);
    assert_eq!(
        outcome("retry"),
        1,
        "retry outcomes:\n{}",
        metrics.describe(HANDLED)
    );
    assert_eq!(outcome("dead_lettered"), 1, "dead_lettered outcomes");
    let spinner = [("consumer", "spinner")];
    assert_eq!(
        metrics.count(DURATION_COUNT, &spinner),
        2,
        "spinner calls timed"
    );
    let deadline = [("consumer", "spinner"), ("limit", "deadline")];
    assert_eq!(
        metrics.count(LIMIT_HITS, &deadline),
        2,
        "deadline hits:\n{}",
        metrics.describe(LIMIT_HITS)
    );
    let seconds = metrics.value(DURATION_SUM, &spinner);
    // Two calls of at least the deadline each, and not much longer.
    assert!(
        (0.58..2.0).contains(&seconds),
        "spinner calls took {seconds} s in all; expected about 2 x 0.3 s"
    );
    finish(run, "spinner", &spin_id, 2).await
}

/// Checks that a call stopped by a limit is a failed attempt, counted by
/// limit: two attempts, one `retry` outcome, then a dead letter with attempt 2.
async fn limit_hit_counts_as_retry(
    consumer: ChaosConsumer,
    path: &str,
    body: &serde_json::Value,
    limit: &str,
) -> anyhow::Result<()> {
    let name = consumer.name.clone();
    let run = start(BrokerMode::RabbitMq, &[consumer.max_attempts(2)]).await?;
    let process = &run.process;
    let event_id = process.publish(path, body).await?;

    let labels = [("consumer", name.as_str()), ("reason", "max_attempts")];
    process
        .wait_for_count(DEAD_LETTERED, &labels, 1, TIMEOUT)
        .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let metrics = process.metrics().await?;
    let hits = [("consumer", name.as_str()), ("limit", limit)];
    assert_eq!(
        metrics.count(LIMIT_HITS, &hits),
        2,
        "limit hits:\n{}\nstderr:\n{}",
        metrics.describe(LIMIT_HITS),
        process.stderr_tail(20)
    );
    let retried = [("consumer", name.as_str()), ("outcome", "retry")];
    assert_eq!(metrics.count(HANDLED, &retried), 1, "retry outcomes");
    let calls = calls_of(&process.chaos_calls(), &event_id);
    assert_eq!(attempts(&calls), [1, 2], "calls: {calls:#?}");
    // After a trap or a limit hit, the next call gets a fresh instance.
    assert_eq!(instance_calls(&calls), [1, 1], "calls: {calls:#?}");
    finish(run, &name, &event_id, 2).await
}

/// With `calls_per_instance = 3` and one call at a time, seven events run
/// on three instances: the guest's own call counter goes 1, 2, 3 and starts
/// again in each fresh instance.
#[tokio::test]
async fn instance_replaced_after_calls_per_instance() -> anyhow::Result<()> {
    let _serial = serial().await;
    let consumer = ChaosConsumer::new("steady", "user.created", "ok")
        .concurrency(1)
        .calls_per_instance(3);
    let run = start(BrokerMode::Embedded, &[consumer]).await?;
    let process = &run.process;
    let mut user_ids = Vec::new();
    for _ in 0..7 {
        user_ids.push(process.publish("/users", &user_body()).await?);
    }
    let ok = [("consumer", "steady"), ("outcome", "ok")];
    process.wait_for_count(HANDLED, &ok, 7, TIMEOUT).await?;

    let calls = process.chaos_calls();
    assert_eq!(
        instance_calls(&calls),
        [1, 2, 3, 1, 2, 3, 1],
        "calls: {calls:#?}"
    );
    let mut handled: Vec<&str> = calls.iter().map(|call| call.event_id.as_str()).collect();
    handled.sort_unstable();
    user_ids.sort_unstable();
    assert_eq!(handled, user_ids, "each event handled once");
    run.process.stop_cleanly().await?;
    Ok(())
}

/// Mode `leak` leaves 8 MiB allocated at each call, so an instance reaches
/// the 64 MiB memory limit after a few calls. That call runs again in a
/// fresh instance: every event is handled ok on its first attempt, no limit
/// hit is counted, and a warning names the cause and the fix.
#[tokio::test]
async fn leaking_instance_replaced_without_failure() -> anyhow::Result<()> {
    let _serial = serial().await;
    let consumer = ChaosConsumer::new("leaker", "user.created", "leak").concurrency(1);
    let run = start(BrokerMode::Embedded, &[consumer]).await?;
    let process = &run.process;
    let mut user_ids = Vec::new();
    for _ in 0..10 {
        user_ids.push(process.publish("/users", &user_body()).await?);
    }
    let ok = [("consumer", "leaker"), ("outcome", "ok")];
    process.wait_for_count(HANDLED, &ok, 10, TIMEOUT).await?;

    let metrics = process.metrics().await?;
    let retried = [("consumer", "leaker"), ("outcome", "retry")];
    assert_eq!(metrics.count(HANDLED, &retried), 0, "retry outcomes");
    let memory_hits = [("consumer", "leaker"), ("limit", "memory")];
    assert_eq!(
        metrics.count(LIMIT_HITS, &memory_hits),
        0,
        "memory limit hits"
    );

    let calls = process.chaos_calls();
    let repeated: Vec<&String> = user_ids
        .iter()
        .filter(|id| calls_of(&calls, id).len() > 1)
        .collect();
    assert_eq!(repeated.len(), 1, "events called twice: {calls:#?}");
    let repeated_calls = calls_of(&calls, repeated[0]);
    assert_eq!(repeated_calls.len(), 2, "calls: {repeated_calls:#?}");
    assert!(
        repeated_calls[0].instance_call > 1,
        "the first call was on a used instance: {repeated_calls:#?}"
    );
    assert_eq!(
        repeated_calls[1].instance_call, 1,
        "the second call was on a fresh instance: {repeated_calls:#?}"
    );
    assert_eq!(
        attempts(&repeated_calls),
        [1, 1],
        "both calls are attempt 1"
    );
    let stderr = process.stderr();
    assert!(
        stderr.contains("reached its memory limit after serving other calls"),
        "no warning about the memory limit:\n{stderr}"
    );
    assert!(
        stderr.contains("lower `limits.calls_per_instance`"),
        "the warning lacks the fix:\n{stderr}"
    );
    run.process.stop_cleanly().await?;
    Ok(())
}

/// A memory bomb and a trapping handler on `order.placed` do not hold up
/// the consumer of `user.created`: each of its calls starts well within one
/// deadline (2 s) of the first failing call.
#[tokio::test]
async fn bomb_and_trap_do_not_delay_others() -> anyhow::Result<()> {
    let _serial = serial().await;
    let consumers = [
        ChaosConsumer::new("bomber", "order.placed", "alloc"),
        ChaosConsumer::new("trapper", "order.placed", "trap"),
        ChaosConsumer::new("steady", "user.created", "ok"),
    ];
    let run = start(BrokerMode::Embedded, &consumers).await?;
    let process = &run.process;
    let order_id = process.publish("/orders", &order_body()).await?;
    let mut user_ids = Vec::new();
    for _ in 0..5 {
        user_ids.push(process.publish("/users", &user_body()).await?);
    }
    let ok = [("consumer", "steady"), ("outcome", "ok")];
    process.wait_for_count(HANDLED, &ok, 5, TIMEOUT).await?;
    for consumer in ["bomber", "trapper"] {
        let labels = [("consumer", consumer), ("reason", "max_attempts")];
        process
            .wait_for_count(DEAD_LETTERED, &labels, 1, TIMEOUT)
            .await?;
    }

    let calls = process.chaos_calls();
    let failing = calls_of(&calls, &order_id);
    assert_eq!(failing.len(), 6, "bomber and trapper calls: {failing:#?}");
    let first_failure = &failing[0];
    for user_id in &user_ids {
        let steady = calls_of(&calls, user_id);
        assert_eq!(steady.len(), 1, "calls of {user_id}: {steady:#?}");
        let offset = gap_ms(first_failure, &steady[0]);
        assert!(
            offset < 2000,
            "the steady consumer ran {offset} ms after the first failing call: {calls:#?}"
        );
    }
    run.process.stop_cleanly().await?;
    Ok(())
}

#[tokio::test]
async fn memory_limit_counts_as_retry() -> anyhow::Result<()> {
    let _serial = serial().await;
    let allocator = ChaosConsumer::new("allocator", "order.placed", "alloc");
    limit_hit_counts_as_retry(allocator, "/orders", &order_body(), "memory").await
}

/// The emitted copy of the event data is larger than `emit_size`, so the
/// copy is never published.
#[tokio::test]
async fn emit_limit_counts_as_retry() -> anyhow::Result<()> {
    let _serial = serial().await;
    let emitter = ChaosConsumer::new("emitter", "user.created", "emit")
        .config("emit-type", "user.created")
        .emit_size("16B");
    limit_hit_counts_as_retry(emitter, "/users", &user_body(), "emit_size").await
}

#[tokio::test]
async fn retry_until_max_attempts_rabbitmq() -> anyhow::Result<()> {
    let _serial = serial().await;
    retry_until_max_attempts(BrokerMode::RabbitMq).await
}

#[tokio::test]
async fn retry_until_max_attempts_embedded() -> anyhow::Result<()> {
    let _serial = serial().await;
    retry_until_max_attempts(BrokerMode::Embedded).await
}

#[tokio::test]
async fn reject_dead_letters_at_once_rabbitmq() -> anyhow::Result<()> {
    let _serial = serial().await;
    reject_dead_letters_at_once(BrokerMode::RabbitMq).await
}

#[tokio::test]
async fn reject_dead_letters_at_once_embedded() -> anyhow::Result<()> {
    let _serial = serial().await;
    reject_dead_letters_at_once(BrokerMode::Embedded).await
}

#[tokio::test]
async fn trap_counts_as_retry_rabbitmq() -> anyhow::Result<()> {
    let _serial = serial().await;
    trap_counts_as_retry(BrokerMode::RabbitMq).await
}

#[tokio::test]
async fn trap_counts_as_retry_embedded() -> anyhow::Result<()> {
    let _serial = serial().await;
    trap_counts_as_retry(BrokerMode::Embedded).await
}

#[tokio::test]
async fn spin_stopped_by_deadline_rabbitmq() -> anyhow::Result<()> {
    let _serial = serial().await;
    spin_stopped_by_deadline(BrokerMode::RabbitMq).await
}

#[tokio::test]
async fn spin_stopped_by_deadline_embedded() -> anyhow::Result<()> {
    let _serial = serial().await;
    spin_stopped_by_deadline(BrokerMode::Embedded).await
}
