//! RabbitMQ itself stopped and started under a running switchyard, with
//! producers posting throughout: nothing accepted with 202 is lost.
//!
//! These tests stop the shared local node, with `rabbitmqctl stop_app` or a
//! whole `rabbitmqctl stop`, so the outage hits every other user of that
//! node too. `cargo test` runs test binaries one after another, and the
//! tests here take turns, so they disturb no other test of this repository.
//! A guard starts the node again when a test fails half-way.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;
use switchyard_tests::shop::{DEAD_LETTERED, HANDLED, order_body, user_body};
use switchyard_tests::{
    BrokerMode, ChaosConsumer, LogLine, Switchyard, chaos_manifest, component, poll, rabbitmq,
    rabbitmqctl, serial, shop_manifest,
};

/// Time for the runtime to notice the stopped node, and to reconnect and
/// resume its consumers once it is back.
const OUTAGE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long an event whose handler outlasts the broker's consumer timeout
/// may take to be dead-lettered: two 10 s calls, each followed by a new
/// channel, then the dead letter.
const UNACKNOWLEDGED_TIMEOUT: Duration = Duration::from_secs(90);
/// Maximum wait for the backlog to be handled after the node is back.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);
/// Gap between two producer requests.
const POST_INTERVAL: Duration = Duration::from_millis(50);

/// Runs `rabbitmqctl` with `arguments`.
fn node_command(arguments: &[&str]) -> anyhow::Result<()> {
    rabbitmqctl(arguments).map_err(anyhow::Error::msg)?;
    Ok(())
}

/// How a test stops the local RabbitMQ node.
#[derive(Clone, Copy, Debug)]
enum Outage {
    /// `rabbitmqctl stop_app`: the Erlang VM stays up.
    StopApp,
    /// `rabbitmqctl stop`, then `rabbitmq-server -detached`: the whole node.
    WholeNode,
}

/// Maximum wait for a node started with `rabbitmq-server -detached`.
const NODE_START_TIMEOUT: Duration = Duration::from_secs(120);

/// The stopped local node. Dropping it starts the node again, so a failed
/// test leaves it running.
struct StoppedNode {
    outage: Outage,
    started: bool,
}

impl StoppedNode {
    fn stop(outage: Outage) -> anyhow::Result<StoppedNode> {
        match outage {
            Outage::StopApp => node_command(&["stop_app"])?,
            Outage::WholeNode => node_command(&["stop"])?,
        }
        Ok(StoppedNode {
            outage,
            started: false,
        })
    }

    fn start(mut self) -> anyhow::Result<()> {
        self.started = true;
        start_node(self.outage)
    }
}

impl Drop for StoppedNode {
    fn drop(&mut self) {
        if !self.started {
            let _ = start_node(self.outage);
        }
    }
}

/// Starts what `StoppedNode::stop` stopped and waits until the node serves.
fn start_node(outage: Outage) -> anyhow::Result<()> {
    match outage {
        Outage::StopApp => node_command(&["start_app"])?,
        Outage::WholeNode => {
            let status = std::process::Command::new("rabbitmq-server")
                .arg("-detached")
                .status()?;
            anyhow::ensure!(
                status.success(),
                "rabbitmq-server -detached failed: {status}"
            );
        }
    }
    // `await_startup` fails at once while the node's VM is not up yet.
    let started = Instant::now();
    loop {
        match node_command(&["await_startup"]) {
            Ok(()) => return Ok(()),
            Err(err) if started.elapsed() > NODE_START_TIMEOUT => {
                return Err(err.context(format!(
                    "RabbitMQ did not start within {NODE_START_TIMEOUT:?}"
                )));
            }
            Err(_) => std::thread::sleep(Duration::from_secs(1)),
        }
    }
}

/// Responses received by a producer that posts orders without pause.
#[derive(Debug, Default)]
struct Posted {
    accepted: BTreeSet<String>,
    unavailable: usize,
    other: Vec<String>,
}

/// Posts an order every `POST_INTERVAL` until `stop` is set.
fn post_orders(url: String, stop: Arc<Mutex<bool>>) -> tokio::task::JoinHandle<Posted> {
    tokio::spawn(async move {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("HTTP client builds");
        let mut posted = Posted::default();
        while !*stop.lock().expect("stop flag lock") {
            let response = client.post(&url).json(&order_body()).send().await;
            match response {
                Ok(response) if response.status() == StatusCode::ACCEPTED => {
                    let body: Value = response.json().await.unwrap_or_default();
                    let id = body["id"].as_str().unwrap_or_default().to_owned();
                    posted.accepted.insert(id);
                }
                Ok(response) if response.status() == StatusCode::SERVICE_UNAVAILABLE => {
                    posted.unavailable += 1;
                }
                Ok(response) => {
                    let status = response.status();
                    let text = response.text().await.unwrap_or_default();
                    posted.other.push(format!("{status}: {text}"));
                }
                Err(err) => posted.other.push(format!("request failed: {err}")),
            }
            tokio::time::sleep(POST_INTERVAL).await;
        }
        posted
    })
}

/// Polls `/readyz` until it returns `status`.
async fn wait_for_status(process: &Switchyard, status: StatusCode) -> anyhow::Result<()> {
    let reached = poll(OUTAGE_TIMEOUT, || async {
        let response = process.get("/readyz").await.ok()?;
        (response.status() == status).then_some(())
    })
    .await;
    anyhow::ensure!(
        reached.is_some(),
        "/readyz did not return {status} within {OUTAGE_TIMEOUT:?}; stderr:\n{}",
        process.stderr_tail(40)
    );
    Ok(())
}

#[tokio::test]
async fn stop_app_loses_no_accepted_event() -> anyhow::Result<()> {
    let _serial = serial().await;
    outage_loses_no_accepted_event(Outage::StopApp).await
}

#[tokio::test]
async fn node_restart_loses_no_accepted_event() -> anyhow::Result<()> {
    let _serial = serial().await;
    outage_loses_no_accepted_event(Outage::WholeNode).await
}

/// Posts orders before, during and after `outage`, and checks that
/// `/readyz` follows the node and every order accepted with 202 is handled.
async fn outage_loses_no_accepted_event(outage: Outage) -> anyhow::Result<()> {
    for handler in ["email", "inventory", "analytics"] {
        component(&format!("handlers/{handler}.wasm"))?;
    }
    let manifest = shop_manifest();
    rabbitmq().reset(&[&manifest]).await?;
    let dir = tempfile::tempdir()?;
    let process = Switchyard::start(dir.path(), &[manifest], BrokerMode::RabbitMq).await?;

    let stop = Arc::new(Mutex::new(false));
    let producer = post_orders(process.url("/orders"), stop.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;

    let node = StoppedNode::stop(outage)?;
    let stopped_at = Instant::now();
    wait_for_status(&process, StatusCode::SERVICE_UNAVAILABLE).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    node.start()?;
    let outage_time = stopped_at.elapsed();
    wait_for_status(&process, StatusCode::OK).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    *stop.lock().expect("stop flag lock") = true;
    let posted = producer.await?;

    assert!(
        posted.other.is_empty(),
        "responses other than 202 and 503: {:#?}",
        posted.other
    );
    assert!(
        posted.accepted.len() >= 20,
        "too few orders accepted around a {outage_time:?} outage: {}",
        posted.accepted.len()
    );
    let accepted = posted.accepted.len() as u64;
    let labels = [("consumer", "email-service"), ("outcome", "ok")];
    process
        .wait_for_count(HANDLED, &labels, accepted, DRAIN_TIMEOUT)
        .await?;
    let stopped = process.stop_cleanly().await?;

    // Handled at least once: every accepted id appears on a line of the
    // email handler. A redelivery after the outage may add a second line.
    let handled: BTreeSet<String> = stopped
        .log_lines()
        .iter()
        .filter(|line| line.target == "switchyard::handler")
        .filter(|line| line.field("consumer") == Some("email-service"))
        .filter_map(|line| line.field("event_id").map(str::to_owned))
        .collect();
    let lost: Vec<&String> = posted.accepted.difference(&handled).collect();
    assert!(
        lost.is_empty(),
        "{} of {} accepted orders were never handled ({} answered 503): {lost:?}",
        lost.len(),
        posted.accepted.len(),
        posted.unavailable
    );
    eprintln!(
        "{outage:?} outage of {outage_time:?}: {} orders accepted, {} answered 503, none lost",
        posted.accepted.len(),
        posted.unavailable
    );
    Ok(())
}

/// The node's `consumer_timeout` and `channel_tick_interval`, lowered for a
/// test; dropping it puts back the values it found.
///
/// Both settings must stay set: RabbitMQ 3.10.8 fails to open any channel
/// while `channel_tick_interval` is unset.
struct LoweredConsumerTimeout {
    consumer_timeout: u64,
    channel_tick_interval: u64,
}

impl LoweredConsumerTimeout {
    /// Makes the node close a channel whose delivery stays unacknowledged
    /// for `timeout_ms`, checked every second, on channels opened from now.
    fn set(timeout_ms: u64) -> anyhow::Result<LoweredConsumerTimeout> {
        let guard = LoweredConsumerTimeout {
            consumer_timeout: rabbit_setting("consumer_timeout")?,
            channel_tick_interval: rabbit_setting("channel_tick_interval")?,
        };
        set_rabbit_setting("consumer_timeout", timeout_ms)?;
        set_rabbit_setting("channel_tick_interval", 1000)?;
        Ok(guard)
    }
}

impl Drop for LoweredConsumerTimeout {
    fn drop(&mut self) {
        let _ = set_rabbit_setting("consumer_timeout", self.consumer_timeout);
        let _ = set_rabbit_setting("channel_tick_interval", self.channel_tick_interval);
    }
}

/// Reads a whole-number setting of the `rabbit` application, which
/// `rabbitmqctl eval` prints as `{ok,N}`.
fn rabbit_setting(name: &str) -> anyhow::Result<u64> {
    let expression = format!("application:get_env(rabbit, {name}).");
    let output = rabbitmqctl(&["eval", &expression]).map_err(anyhow::Error::msg)?;
    let text = String::from_utf8_lossy(&output.stdout);
    text.trim()
        .strip_prefix("{ok,")
        .and_then(|rest| rest.strip_suffix('}'))
        .and_then(|number| number.parse().ok())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "RabbitMQ setting `{name}` is `{}`, not `{{ok,N}}`",
                text.trim()
            )
        })
}

fn set_rabbit_setting(name: &str, value: u64) -> anyhow::Result<()> {
    node_command(&[
        "eval",
        &format!("application:set_env(rabbit, {name}, {value})."),
    ])
}

/// With the broker's consumer timeout at 3 s, a handler deadline of 1 s
/// fires first: the event is retried and dead-lettered as usual and the
/// channel stays open. A consumer whose 10 s deadline outlasts the broker's
/// timeout loses its channel, and switchyard subscribes it again. The
/// broker then delivers its event again. Once the calls whose
/// acknowledgement failed reach `max_attempts`, the event is dead-lettered
/// as `unacknowledged`.
#[tokio::test]
async fn deadline_fires_before_consumer_timeout() -> anyhow::Result<()> {
    let _serial = serial().await;
    component("tests/guests/chaos.wasm")?;
    let dir = tempfile::tempdir()?;
    let consumers = [
        ChaosConsumer::new("quick", "order.placed", "spin")
            .timeout("1s")
            .max_attempts(2),
        ChaosConsumer::new("slow", "user.created", "spin")
            .timeout("10s")
            .max_attempts(2),
    ];
    let manifest = chaos_manifest(dir.path(), &consumers)?;
    rabbitmq().reset(&[&manifest]).await?;
    let _lowered = LoweredConsumerTimeout::set(3_000)?;
    let process = Switchyard::start(dir.path(), &[manifest], BrokerMode::RabbitMq).await?;

    let event_id = process.publish("/orders", &order_body()).await?;
    process.publish("/users", &user_body()).await?;
    let labels = [("consumer", "quick"), ("reason", "max_attempts")];
    process
        .wait_for_count(DEAD_LETTERED, &labels, 1, OUTAGE_TIMEOUT)
        .await?;
    let resubscribed = poll(OUTAGE_TIMEOUT, || async {
        let started = LogLine::parse_all(&process.stderr())
            .iter()
            .filter(|line| line.message() == "consumer started")
            .filter(|line| line.field("consumer") == Some("slow"))
            .count();
        (started >= 2).then_some(())
    })
    .await;
    let unacknowledged = [("consumer", "slow"), ("reason", "unacknowledged")];
    let stopped_looping = process
        .wait_for_count(DEAD_LETTERED, &unacknowledged, 1, UNACKNOWLEDGED_TIMEOUT)
        .await;
    let stopped = process.stop_cleanly().await?;
    let lines = stopped.log_lines();
    assert!(
        resubscribed.is_some(),
        "the slow consumer was not subscribed again after the broker's timeout; stderr:\n{}",
        stopped.stderr
    );
    if let Err(err) = stopped_looping {
        panic!(
            "the slow consumer's event was not dead-lettered as unacknowledged: {err:#}; stderr:\n{}",
            stopped.stderr
        );
    }

    let calls: Vec<u32> = stopped
        .chaos_calls()
        .iter()
        .filter(|call| call.event_id == event_id)
        .map(|call| call.attempt)
        .collect();
    assert_eq!(calls, [1, 2], "calls of the quick consumer's event");
    let quick_ended = lines.iter().any(|line| {
        line.field("consumer") == Some("quick")
            && line.message().starts_with("broker ended the consumer")
    });
    assert!(
        !quick_ended,
        "the broker closed the quick consumer's channel"
    );
    Ok(())
}
