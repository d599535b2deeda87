//! Tests against the RabbitMQ at 127.0.0.1:5672 (user guest, password guest).
//! The tests of one test binary share a vhost of their own, which the last
//! test to finish deletes. Each test that force-closes connections uses a
//! vhost of its own, because it closes every connection in that vhost.

use std::process::Command;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
use tokio::net::{TcpListener, TcpStream};

use super::acks::ACK_DELAY;
use super::{AmqpBroker, AmqpOptions};
use crate::broker::{Broker, BrokerError, Deliveries, Delivery, HeaderValue, Message};
use crate::topology::{BindingSpec, ExchangeKind, ExchangeSpec, QueueKind, QueueSpec};

const VHOST_PREFIX: &str = "switchyard-amqp-test-";
const RECEIVE_TIMEOUT: Duration = Duration::from_secs(10);

// ---- vhost management ----------------------------------------------------

/// Runs `rabbitmqctl` and returns its standard output.
fn rabbitmqctl(arguments: &[&str]) -> String {
    let output = Command::new("rabbitmqctl")
        .args(arguments)
        .output()
        .unwrap_or_else(|error| {
            panic!("cannot run rabbitmqctl {arguments:?}: {error}. These tests need RabbitMQ")
        });
    assert!(
        output.status.success(),
        "rabbitmqctl {arguments:?} failed: {}{}. These tests need RabbitMQ on 127.0.0.1:5672",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn create_vhost(name: &str) {
    rabbitmqctl(&["add_vhost", name]);
    rabbitmqctl(&["set_permissions", "-p", name, "guest", ".*", ".*", ".*"]);
}

/// Deletes a vhost, reporting a failure instead of panicking, because it runs
/// in `Drop` while a failed test may be panicking already.
fn delete_vhost(name: &str) {
    match Command::new("rabbitmqctl")
        .args(["delete_vhost", name])
        .output()
    {
        Ok(output) if output.status.success() => {}
        Ok(output) => eprintln!(
            "deleting test vhost `{name}` failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ),
        Err(error) => eprintln!("deleting test vhost `{name}` failed: {error}"),
    }
}

/// Deletes the test vhosts of test processes that no longer run (killed
/// before their last test finished).
fn delete_stale_vhosts() {
    for name in rabbitmqctl(&["list_vhosts", "--quiet", "--no-table-headers"]).lines() {
        let Some(suffix) = name.trim().strip_prefix(VHOST_PREFIX) else {
            continue;
        };
        let Some(pid) = suffix.split('-').next() else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            delete_vhost(name.trim());
        }
    }
}

struct SharedVhost {
    name: Option<String>,
    leases: usize,
    created: u32,
}

static SHARED_VHOST: Mutex<SharedVhost> = Mutex::new(SharedVhost {
    name: None,
    leases: 0,
    created: 0,
});

/// A lease on the vhost that the tests of this process share. The vhost is
/// created by the first lease and deleted when the last lease is dropped.
struct VhostLease {
    name: String,
}

impl VhostLease {
    fn acquire() -> Self {
        let mut shared = SHARED_VHOST.lock().unwrap_or_else(PoisonError::into_inner);
        if shared.name.is_none() {
            delete_stale_vhosts();
            let name = format!("{VHOST_PREFIX}{}-{}", std::process::id(), shared.created);
            create_vhost(&name);
            shared.created += 1;
            shared.name = Some(name);
        }
        shared.leases += 1;
        let name = shared.name.clone().expect("vhost created above");
        Self { name }
    }

    fn url(&self) -> String {
        vhost_url(&self.name)
    }
}

impl Drop for VhostLease {
    fn drop(&mut self) {
        let mut shared = SHARED_VHOST.lock().unwrap_or_else(PoisonError::into_inner);
        shared.leases -= 1;
        if shared.leases == 0 {
            delete_vhost(&self.name);
            shared.name = None;
        }
    }
}

/// A vhost for one test alone, deleted when dropped.
struct OwnVhost {
    name: String,
}

impl OwnVhost {
    fn create(purpose: &str) -> Self {
        let name = format!("{VHOST_PREFIX}{}-{purpose}", std::process::id());
        create_vhost(&name);
        Self { name }
    }
}

impl Drop for OwnVhost {
    fn drop(&mut self) {
        delete_vhost(&self.name);
    }
}

fn vhost_url(vhost: &str) -> String {
    format!("amqp://guest:guest@127.0.0.1:5672/{vhost}")
}

// ---- helpers ---------------------------------------------------------------

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

/// Sends logs to the test output; `RUST_LOG` selects them, as in the binary.
fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

async fn connect(url: &str) -> AmqpBroker {
    init_logging();
    AmqpBroker::connect("rabbit", url, AmqpOptions::default())
        .await
        .expect("connect to RabbitMQ on 127.0.0.1:5672")
}

fn exchange(name: &str, kind: ExchangeKind) -> ExchangeSpec {
    ExchangeSpec {
        name: name.to_owned(),
        kind,
        durable: true,
        alternate_exchange: None,
    }
}

fn queue(name: &str) -> QueueSpec {
    QueueSpec {
        name: name.to_owned(),
        kind: QueueKind::Classic,
        durable: true,
        dead_letter_exchange: None,
        dead_letter_routing_key: None,
        message_ttl: None,
    }
}

fn binding(exchange: &str, queue: &str, routing_key: &str) -> BindingSpec {
    BindingSpec {
        exchange: exchange.to_owned(),
        queue: queue.to_owned(),
        routing_key: routing_key.to_owned(),
    }
}

fn text_message(routing_key: &str, body: &str) -> Message {
    Message {
        routing_key: routing_key.to_owned(),
        body: body.as_bytes().to_vec().into(),
        ..Message::default()
    }
}

async fn next_delivery(deliveries: &mut Deliveries) -> Delivery {
    tokio::time::timeout(RECEIVE_TIMEOUT, deliveries.next())
        .await
        .expect("a delivery within the receive timeout")
        .expect("the consumer stream to be open")
        .expect("a delivery, not an error")
}

/// Deletes a queue with a connection of its own, as another application would.
async fn delete_queue(url: &str, name: &str) {
    let connection = lapin::Connection::connect(url, lapin::ConnectionProperties::default())
        .await
        .expect("connect for queue delete");
    let channel = connection.create_channel().await.expect("open channel");
    channel
        .queue_delete(name.into(), QueueDeleteOptions::default())
        .await
        .expect("delete queue");
    let _ = connection.close(200, "OK".into()).await;
}

async fn delete_exchange(url: &str, name: &str) {
    let connection = lapin::Connection::connect(url, lapin::ConnectionProperties::default())
        .await
        .expect("connect for exchange delete");
    let channel = connection.create_channel().await.expect("open channel");
    channel
        .exchange_delete(name.into(), ExchangeDeleteOptions::default())
        .await
        .expect("delete exchange");
    let _ = connection.close(200, "OK".into()).await;
}

/// Waits until `queue` contains `expected` ready messages.
async fn wait_for_depth(broker: &AmqpBroker, queue: &str, expected: u32) {
    let deadline = Instant::now() + RECEIVE_TIMEOUT;
    loop {
        let depth = broker.queue_depth(queue).await.expect("queue depth");
        if depth == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "queue `{queue}` has {depth} messages, expected {expected}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---- tests -----------------------------------------------------------------

#[tokio::test]
async fn round_trip_preserves_message() {
    let vhost = VhostLease::acquire();
    let broker = connect(&vhost.url()).await;
    let events = unique("events");
    let orders = unique("orders");
    broker
        .declare_exchange(&exchange(&events, ExchangeKind::Topic))
        .await
        .expect("declare exchange");
    broker
        .declare_queue(&queue(&orders))
        .await
        .expect("declare queue");
    broker
        .bind_queue(&binding(&events, &orders, "order.*"))
        .await
        .expect("bind queue");

    let mut sent = text_message("order.placed", r#"{"id":1}"#);
    sent.headers
        .insert("text".to_owned(), HeaderValue::from("hello"));
    sent.headers
        .insert("count".to_owned(), HeaderValue::Int(-3));
    sent.headers
        .insert("flag".to_owned(), HeaderValue::Bool(true));
    sent.content_type = Some("application/json".to_owned());
    sent.message_id = Some("message-1".to_owned());
    broker
        .publish(&events, sent.clone())
        .await
        .expect("publish");

    let mut deliveries = broker
        .consume(&orders, "round-trip", 10)
        .await
        .expect("consume");
    let delivery = next_delivery(&mut deliveries).await;
    assert_eq!(delivery.exchange, events);
    assert_eq!(delivery.message, sent);
    assert!(!delivery.redelivered);
    delivery.ack().await.expect("ack");
    wait_for_depth(&broker, &orders, 0).await;
}

#[tokio::test]
async fn prefetch_limits_unacked_deliveries() {
    let vhost = VhostLease::acquire();
    let broker = connect(&vhost.url()).await;
    let work = unique("work");
    broker
        .declare_queue(&queue(&work))
        .await
        .expect("declare queue");
    for index in 0..10 {
        broker
            .publish("", text_message(&work, &index.to_string()))
            .await
            .expect("publish");
    }

    let mut deliveries = broker.consume(&work, "prefetch", 3).await.expect("consume");
    let mut unacked = Vec::new();
    for _ in 0..3 {
        unacked.push(next_delivery(&mut deliveries).await);
    }
    let fourth = tokio::time::timeout(Duration::from_millis(500), deliveries.next()).await;
    assert!(fourth.is_err(), "a fourth delivery arrived with prefetch 3");
    assert_eq!(broker.queue_depth(&work).await.expect("queue depth"), 7);

    unacked
        .pop()
        .expect("three deliveries")
        .ack()
        .await
        .expect("ack");
    let next = next_delivery(&mut deliveries).await;
    assert_eq!(next.message.body.as_ref(), b"3");
}

/// Publishes `count` messages whose bodies are their indexes, and returns
/// the deliveries of a consumer with prefetch `count`.
async fn deliver_all(broker: &AmqpBroker, work: &str, count: u16) -> (Deliveries, Vec<Delivery>) {
    broker
        .declare_queue(&queue(work))
        .await
        .expect("declare queue");
    for index in 0..count {
        broker
            .publish("", text_message(work, &index.to_string()))
            .await
            .expect("publish");
    }
    let mut deliveries = broker.consume(work, "acks", count).await.expect("consume");
    let mut received = Vec::new();
    for _ in 0..count {
        received.push(next_delivery(&mut deliveries).await);
    }
    (deliveries, received)
}

#[tokio::test]
async fn out_of_order_settles_every_delivery() {
    let vhost = VhostLease::acquire();
    let broker = connect(&vhost.url()).await;
    let work = unique("acks-reverse");
    let (mut deliveries, received) = deliver_all(&broker, &work, 60).await;

    // Newest first, so most acks wait behind an unsettled delivery; every
    // tenth is rejected, which without a dead-letter exchange drops it.
    for (index, delivery) in received.into_iter().enumerate().rev() {
        if index % 10 == 0 {
            delivery.reject(false).await.expect("reject");
        } else {
            delivery.ack().await.expect("ack");
        }
    }

    // A double or missing ack would close the channel or leave messages
    // unacknowledged: the consumer must still receive, and nothing returns.
    broker
        .publish("", text_message(&work, "after"))
        .await
        .expect("publish");
    let next = next_delivery(&mut deliveries).await;
    assert_eq!(next.message.body.as_ref(), b"after");
    next.ack().await.expect("ack");
    drop(deliveries);
    wait_for_depth(&broker, &work, 0).await;
}

#[tokio::test]
async fn concurrent_acks_settle_every_delivery() {
    let vhost = VhostLease::acquire();
    let broker = connect(&vhost.url()).await;
    let work = unique("acks-concurrent");
    let (deliveries, received) = deliver_all(&broker, &work, 200).await;

    let mut tasks = tokio::task::JoinSet::new();
    for delivery in received {
        tasks.spawn(async move {
            let pause = u64::from(delivery.message.body[0] % 4);
            tokio::time::sleep(Duration::from_millis(pause)).await;
            delivery.ack().await
        });
    }
    while let Some(result) = tasks.join_next().await {
        result.expect("ack task").expect("ack");
    }
    drop(deliveries);
    wait_for_depth(&broker, &work, 0).await;
}

/// Returns how many messages of `queue` in `vhost` are delivered and not
/// acknowledged, as the broker counts them.
fn unacknowledged(vhost: &str, queue: &str) -> u32 {
    let listing = rabbitmqctl(&[
        "list_queues",
        "-p",
        vhost,
        "name",
        "messages_unacknowledged",
        "--quiet",
        "--no-table-headers",
    ]);
    listing
        .lines()
        .filter_map(|line| line.split_once('\t'))
        .find(|(name, _)| *name == queue)
        .and_then(|(_, count)| count.trim().parse().ok())
        .unwrap_or_else(|| panic!("no queue `{queue}` in `rabbitmqctl list_queues`: {listing}"))
}

/// Delivers 10 messages at prefetch 10 and acks the first 3. A frame goes
/// out once 5 acks wait, so these 3 wait for their delay.
async fn deliver_and_ack_three(broker: &AmqpBroker, work: &str) -> (Deliveries, Vec<Delivery>) {
    let (deliveries, mut received) = deliver_all(broker, work, 10).await;
    for delivery in received.drain(..3) {
        delivery.ack().await.expect("ack");
    }
    (deliveries, received)
}

#[tokio::test]
async fn waiting_acks_reach_a_consumer_at_rest() {
    let vhost = VhostLease::acquire();
    let broker = connect(&vhost.url()).await;
    let work = unique("acks-at-rest");
    let (_deliveries, received) = deliver_and_ack_three(&broker, &work).await;
    let deadline = Instant::now() + RECEIVE_TIMEOUT;
    loop {
        let count = unacknowledged(&vhost.name, &work);
        if count == 7 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "`{work}` has {count} unacknowledged messages, expected 7"
        );
        tokio::time::sleep(ACK_DELAY).await;
    }
    for delivery in received {
        delivery.ack().await.expect("ack");
    }
}

#[tokio::test]
async fn waiting_acks_sent_before_close() {
    let vhost = VhostLease::acquire();
    let broker = connect(&vhost.url()).await;
    let work = unique("acks-close");
    let (deliveries, received) = deliver_and_ack_three(&broker, &work).await;
    // Closed well within the ack delay: the 3 acks must still go out first,
    // and only the 7 unsettled messages return to the queue.
    broker.close().await;
    drop((deliveries, received));

    let other = connect(&vhost.url()).await;
    wait_for_depth(&other, &work, 7).await;
}

#[tokio::test]
async fn dropped_delivery_alone_is_redelivered() {
    let vhost = VhostLease::acquire();
    let broker = connect(&vhost.url()).await;
    let work = unique("acks-dropped");
    let (deliveries, mut received) = deliver_all(&broker, &work, 5).await;

    let dropped = received.remove(1);
    drop(dropped);
    for delivery in received {
        delivery.ack().await.expect("ack");
    }
    drop(deliveries);
    wait_for_depth(&broker, &work, 1).await;

    let mut again = broker.consume(&work, "again", 5).await.expect("consume");
    let redelivered = next_delivery(&mut again).await;
    assert_eq!(redelivered.message.body.as_ref(), b"1");
    assert!(redelivered.redelivered);
}

#[tokio::test]
async fn reject_dead_letters_through_dlx() {
    let vhost = VhostLease::acquire();
    let broker = connect(&vhost.url()).await;
    let dlx = unique("dlx");
    let dead_letters = unique("dead-letters");
    let work = unique("work");
    broker
        .declare_exchange(&exchange(&dlx, ExchangeKind::Fanout))
        .await
        .expect("declare dlx");
    broker
        .declare_queue(&queue(&dead_letters))
        .await
        .expect("declare dead-letter queue");
    broker
        .bind_queue(&binding(&dlx, &dead_letters, ""))
        .await
        .expect("bind dead-letter queue");
    let mut work_spec = queue(&work);
    work_spec.dead_letter_exchange = Some(dlx.clone());
    broker
        .declare_queue(&work_spec)
        .await
        .expect("declare work queue");

    broker
        .publish("", text_message(&work, "poison"))
        .await
        .expect("publish");
    let mut deliveries = broker
        .consume(&work, "reject", 10)
        .await
        .expect("consume work");
    next_delivery(&mut deliveries)
        .await
        .reject(false)
        .await
        .expect("reject");

    let mut dead = broker
        .consume(&dead_letters, "dead", 10)
        .await
        .expect("consume dead letters");
    let delivery = next_delivery(&mut dead).await;
    assert_eq!(delivery.message.body.as_ref(), b"poison");
    assert_eq!(delivery.message.routing_key, work);
    assert_eq!(
        delivery.message.headers.get("x-first-death-reason"),
        Some(&HeaderValue::from("rejected"))
    );
    assert_eq!(broker.queue_depth(&work).await.expect("queue depth"), 0);
}

#[tokio::test]
async fn expired_message_returns_to_work_queue() {
    let vhost = VhostLease::acquire();
    let broker = connect(&vhost.url()).await;
    let work = unique("work");
    let retry = unique("retry");
    broker
        .declare_queue(&queue(&work))
        .await
        .expect("declare work queue");
    let mut retry_spec = queue(&retry);
    retry_spec.dead_letter_exchange = Some(String::new());
    retry_spec.dead_letter_routing_key = Some(work.clone());
    broker
        .declare_queue(&retry_spec)
        .await
        .expect("declare retry queue");

    let mut message = text_message(&retry, "try again");
    message.expiration = Some(Duration::from_millis(200));
    let published = Instant::now();
    broker
        .publish("", message)
        .await
        .expect("publish to retry queue");

    let mut deliveries = broker.consume(&work, "retry", 10).await.expect("consume");
    let delivery = next_delivery(&mut deliveries).await;
    assert!(
        published.elapsed() >= Duration::from_millis(200),
        "delivered before expiry"
    );
    assert_eq!(delivery.message.body.as_ref(), b"try again");
    assert_eq!(delivery.message.routing_key, work);
    assert_eq!(
        delivery.message.headers.get("x-first-death-reason"),
        Some(&HeaderValue::from("expired"))
    );
}

#[tokio::test]
async fn queue_conflict_is_readable() {
    let vhost = VhostLease::acquire();
    let broker = connect(&vhost.url()).await;
    let name = unique("email");
    broker
        .declare_queue(&queue(&name))
        .await
        .expect("declare plain queue");

    let mut with_dead_letters = queue(&name);
    with_dead_letters.dead_letter_exchange = Some("dlx".to_owned());
    let error = broker
        .declare_queue(&with_dead_letters)
        .await
        .expect_err("arguments differ");
    let BrokerError::Conflict(message) = &error else {
        panic!("expected a conflict, got {error:?}");
    };
    assert!(message.contains(&format!("queue `{name}`")), "{message}");
    assert!(
        message.contains("x-dead-letter-exchange = none"),
        "{message}"
    );
    assert!(
        message.contains("x-dead-letter-exchange = `dlx`"),
        "{message}"
    );
    assert!(message.contains("delete the queue"), "{message}");
    assert!(message.contains("rabbitmqctl set_policy"), "{message}");
    assert!(!message.contains("406"), "{message}");
    assert!(!error.is_transient());

    // The conflict closed only its own channel.
    broker
        .publish("", text_message(&name, "still works"))
        .await
        .expect("publish after conflict");
    wait_for_depth(&broker, &name, 1).await;
}

#[tokio::test]
async fn exchange_conflict_is_readable() {
    let vhost = VhostLease::acquire();
    let broker = connect(&vhost.url()).await;
    let name = unique("events");
    broker
        .declare_exchange(&exchange(&name, ExchangeKind::Topic))
        .await
        .expect("declare exchange");

    let error = broker
        .declare_exchange(&exchange(&name, ExchangeKind::Fanout))
        .await
        .expect_err("type differs");
    let message = error.to_string();
    assert!(message.contains(&format!("exchange `{name}`")), "{message}");
    assert!(message.contains("type = `topic`"), "{message}");
    assert!(message.contains("type = `fanout`"), "{message}");
    assert!(!message.contains("set_policy"), "{message}");
}

#[tokio::test]
async fn redeclaring_same_queue_is_ok() {
    let vhost = VhostLease::acquire();
    let broker = connect(&vhost.url()).await;
    let mut spec = queue(&unique("same"));
    spec.dead_letter_exchange = Some("dlx".to_owned());
    spec.message_ttl = Some(Duration::from_secs(60));
    broker.declare_queue(&spec).await.expect("first declare");
    broker
        .declare_queue(&spec)
        .await
        .expect("equal declare changes nothing");
}

#[tokio::test]
async fn quorum_queue_round_trip() {
    let vhost = VhostLease::acquire();
    let broker = connect(&vhost.url()).await;
    let mut spec = queue(&unique("quorum"));
    spec.kind = QueueKind::Quorum;
    broker
        .declare_queue(&spec)
        .await
        .expect("declare quorum queue");
    broker
        .publish("", text_message(&spec.name, "q"))
        .await
        .expect("publish");
    let mut deliveries = broker
        .consume(&spec.name, "quorum", 5)
        .await
        .expect("consume");
    next_delivery(&mut deliveries)
        .await
        .ack()
        .await
        .expect("ack");
}

#[tokio::test]
async fn alternate_exchange_receives_unroutable() {
    let vhost = VhostLease::acquire();
    let broker = connect(&vhost.url()).await;
    let alternate = unique("unroutable-x");
    let unroutable = unique("unroutable");
    let events = unique("events");
    broker
        .declare_exchange(&exchange(&alternate, ExchangeKind::Fanout))
        .await
        .expect("declare AE");
    broker
        .declare_queue(&queue(&unroutable))
        .await
        .expect("declare unroutable queue");
    broker
        .bind_queue(&binding(&alternate, &unroutable, ""))
        .await
        .expect("bind unroutable queue");
    let mut events_spec = exchange(&events, ExchangeKind::Topic);
    events_spec.alternate_exchange = Some(alternate.clone());
    broker
        .declare_exchange(&events_spec)
        .await
        .expect("declare exchange with AE");

    broker
        .publish(&events, text_message("nobody.listens", "lost?"))
        .await
        .expect("publish");
    let mut deliveries = broker
        .consume(&unroutable, "ae", 10)
        .await
        .expect("consume");
    let delivery = next_delivery(&mut deliveries).await;
    assert_eq!(delivery.exchange, events);
    assert_eq!(delivery.message.routing_key, "nobody.listens");
}

#[tokio::test]
async fn unroutable_without_alternate_is_error() {
    let vhost = VhostLease::acquire();
    let broker = connect(&vhost.url()).await;
    let error = broker
        .publish("", text_message(&unique("no-such-queue"), "x"))
        .await
        .expect_err("no queue has this name");
    assert!(matches!(error, BrokerError::Unroutable { .. }), "{error:?}");
    assert!(!error.is_transient());
}

#[tokio::test]
async fn publish_to_missing_exchange_fails() {
    let vhost = VhostLease::acquire();
    let broker = connect(&vhost.url()).await;
    let missing = unique("missing");
    let started = Instant::now();
    let error = broker
        .publish(&missing, text_message("k", "x"))
        .await
        .expect_err("the exchange does not exist");
    assert!(
        matches!(&error, BrokerError::NotFound { kind: "exchange", name } if *name == missing),
        "{error:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );

    // The 404 closed a publish channel; the next publishes use new channels.
    let work = unique("work");
    broker
        .declare_queue(&queue(&work))
        .await
        .expect("declare queue");
    for _ in 0..8 {
        broker
            .publish("", text_message(&work, "ok"))
            .await
            .expect("publish after 404");
    }
}

#[tokio::test]
async fn concurrent_publishes_survive_missing_exchange() {
    let vhost = VhostLease::acquire();
    let broker = std::sync::Arc::new(connect(&vhost.url()).await);
    let work = unique("work");
    broker
        .declare_queue(&queue(&work))
        .await
        .expect("declare queue");

    let mut tasks = Vec::new();
    for index in 0..200 {
        let broker = broker.clone();
        let work = work.clone();
        tasks.push(tokio::spawn(async move {
            if index % 50 == 0 {
                let error = broker
                    .publish("no-such-exchange", text_message("k", "x"))
                    .await;
                assert!(
                    matches!(error, Err(BrokerError::NotFound { .. })),
                    "{error:?}"
                );
                return;
            }
            broker
                .publish("", text_message(&work, "ok"))
                .await
                .expect("publish next to a 404");
        }));
    }
    for task in tasks {
        task.await.expect("publish task");
    }
    // Publishes that shared a channel with a 404 are sent again; one that the
    // broker had routed before closing the channel then arrives twice.
    let deadline = Instant::now() + RECEIVE_TIMEOUT;
    loop {
        let depth = broker.queue_depth(&work).await.expect("queue depth");
        if depth >= 196 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {depth} of 196 messages arrived"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn missing_queue_depth_is_not_found() {
    let vhost = VhostLease::acquire();
    let broker = connect(&vhost.url()).await;
    let missing = unique("missing");
    let error = broker
        .queue_depth(&missing)
        .await
        .expect_err("no such queue");
    assert!(
        matches!(&error, BrokerError::NotFound { kind: "queue", name } if *name == missing),
        "{error:?}"
    );
}

#[tokio::test]
async fn consume_missing_queue_is_not_found() {
    let vhost = VhostLease::acquire();
    let broker = connect(&vhost.url()).await;
    let error = broker
        .consume(&unique("missing"), "tag", 1)
        .await
        .err()
        .expect("no such queue");
    assert!(
        matches!(error, BrokerError::NotFound { kind: "queue", .. }),
        "{error:?}"
    );
}

#[tokio::test]
async fn consumer_stream_ends_on_queue_delete() {
    let vhost = VhostLease::acquire();
    let broker = connect(&vhost.url()).await;
    let work = unique("work");
    broker
        .declare_queue(&queue(&work))
        .await
        .expect("declare queue");
    let mut deliveries = broker.consume(&work, "deleted", 10).await.expect("consume");

    delete_queue(&vhost.url(), &work).await;
    let end = tokio::time::timeout(RECEIVE_TIMEOUT, deliveries.next())
        .await
        .expect("the stream to end within the receive timeout");
    assert!(end.is_none(), "expected the end of the stream, got {end:?}");
    assert!(broker.is_connected());
}

#[tokio::test]
async fn consume_redeclares_deleted_queue() {
    let vhost = VhostLease::acquire();
    let broker = connect(&vhost.url()).await;
    let events = unique("events");
    let work = unique("work");
    broker
        .declare_exchange(&exchange(&events, ExchangeKind::Topic))
        .await
        .expect("declare exchange");
    broker
        .declare_queue(&queue(&work))
        .await
        .expect("declare queue");
    broker
        .bind_queue(&binding(&events, &work, "order.*"))
        .await
        .expect("bind queue");
    let mut deliveries = broker.consume(&work, "first", 10).await.expect("consume");
    delete_queue(&vhost.url(), &work).await;
    let end = tokio::time::timeout(RECEIVE_TIMEOUT, deliveries.next())
        .await
        .expect("the stream to end within the receive timeout");
    assert!(end.is_none(), "expected the end of the stream, got {end:?}");

    let mut deliveries = broker
        .consume(&work, "second", 10)
        .await
        .expect("consume after the queue was deleted");
    broker
        .publish(&events, text_message("order.placed", "after delete"))
        .await
        .expect("publish through the re-declared binding");
    let delivery = next_delivery(&mut deliveries).await;
    assert_eq!(delivery.message.body.as_ref(), b"after delete");
    delivery.ack().await.expect("ack");
}

#[tokio::test]
async fn publish_redeclares_deleted_exchange() {
    let vhost = VhostLease::acquire();
    let broker = connect(&vhost.url()).await;
    let dlx = unique("dlx");
    let letters = unique("letters");
    broker
        .declare_exchange(&exchange(&dlx, ExchangeKind::Fanout))
        .await
        .expect("declare exchange");
    broker
        .declare_queue(&queue(&letters))
        .await
        .expect("declare queue");
    broker
        .bind_queue(&binding(&dlx, &letters, ""))
        .await
        .expect("bind queue");
    delete_exchange(&vhost.url(), &dlx).await;

    broker
        .publish(&dlx, text_message("any", "after delete"))
        .await
        .expect("publish to the re-declared exchange");
    wait_for_depth(&broker, &letters, 1).await;

    let missing = unique("never-declared");
    let error = broker
        .publish(&missing, text_message("any", "lost"))
        .await
        .expect_err("an exchange this broker never declared stays missing");
    assert!(
        matches!(
            error,
            BrokerError::NotFound {
                kind: "exchange",
                ..
            }
        ),
        "{error:?}"
    );
}

#[tokio::test]
async fn wrong_password_is_redacted() {
    let vhost = VhostLease::acquire();
    let url = format!("amqp://guest:wrong-secret@127.0.0.1:5672/{}", vhost.name);
    let error = AmqpBroker::connect("rabbit", &url, AmqpOptions::default())
        .await
        .expect_err("the password is wrong");
    let message = error.to_string();
    assert!(
        matches!(error, BrokerError::Unreachable { .. }),
        "{error:?}"
    );
    assert!(
        !message.contains("wrong-secret"),
        "password leaked: {message}"
    );
    assert!(
        message.contains("guest:***@"),
        "redacted URL missing: {message}"
    );
    assert!(
        message.contains("check the user and password in the URL of broker `rabbit`"),
        "no hint: {message}"
    );

    let broker = AmqpBroker::new("rabbit", &url, AmqpOptions::default()).expect("valid URL");
    let debug = format!("{broker:?}");
    assert!(!debug.contains("wrong-secret"), "password leaked: {debug}");
}

/// A missing virtual host and one without the user's permissions each get
/// an error that names the cause and the fix.
#[tokio::test]
async fn refused_vhost_names_the_fix() {
    let missing = format!("{VHOST_PREFIX}{}-never-created", std::process::id());
    let error = AmqpBroker::connect("rabbit", &vhost_url(&missing), AmqpOptions::default())
        .await
        .expect_err("the vhost does not exist");
    let message = error.to_string();
    assert!(
        message.contains("does not exist; create it (`rabbitmqctl add_vhost NAME`)"),
        "{message}"
    );

    let vhost = OwnVhost::create("no-permissions");
    rabbitmqctl(&["clear_permissions", "-p", &vhost.name, "guest"]);
    let error = AmqpBroker::connect("rabbit", &vhost_url(&vhost.name), AmqpOptions::default())
        .await
        .expect_err("guest has no permissions on the vhost");
    let message = error.to_string();
    assert!(
        message.contains("has no permissions on the virtual host in its URL")
            && message.contains("rabbitmqctl set_permissions"),
        "{message}"
    );
}

/// Forwards connections from a loopback port to RabbitMQ, so that a test can
/// make the broker appear and disappear without touching RabbitMQ itself.
struct Proxy {
    port: u16,
    tasks: tokio::task::JoinSet<()>,
}

impl Proxy {
    /// Reserves a free loopback port without listening on it yet.
    async fn reserve() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let port = listener.local_addr().expect("local address").port();
        Self {
            port,
            tasks: tokio::task::JoinSet::new(),
        }
    }

    fn url(&self, vhost: &str) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/{vhost}", self.port)
    }

    async fn start(&mut self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port))
            .await
            .expect("bind the reserved port");
        self.tasks.spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((mut client, _)) = listener.accept().await {
                connections.spawn(async move {
                    if let Ok(mut server) = TcpStream::connect("127.0.0.1:5672").await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
    }

    /// Stops listening and drops every forwarded connection.
    async fn stop(&mut self) {
        self.tasks.shutdown().await;
    }
}

fn fast_reconnect_options() -> AmqpOptions {
    AmqpOptions {
        confirm_timeout: Duration::from_secs(1),
        reconnect_initial_delay: Duration::from_millis(100),
        reconnect_max_delay: Duration::from_millis(400),
        ..AmqpOptions::default()
    }
}

#[tokio::test]
async fn background_connect_waits_for_broker() {
    init_logging();
    let vhost = VhostLease::acquire();
    let mut proxy = Proxy::reserve().await;
    let broker = AmqpBroker::new("rabbit", &proxy.url(&vhost.name), fast_reconnect_options())
        .expect("valid URL");
    broker.connect_in_background();

    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!broker.is_connected());
    let error = broker.queue_depth("any").await.expect_err("not connected");
    assert!(
        matches!(error, BrokerError::Unreachable { .. }),
        "{error:?}"
    );
    assert!(error.is_transient());

    proxy.start().await;
    tokio::time::timeout(Duration::from_secs(20), broker.connected())
        .await
        .expect("connected once the port accepts connections");
    let work = unique("work");
    broker
        .declare_queue(&queue(&work))
        .await
        .expect("declare after connecting");
}

/// Takes the broker away for a while, deletes a queue meanwhile, and checks
/// that the broker reconnects, declares the queue again and publishes.
#[tokio::test]
async fn reconnects_and_redeclares_after_outage() {
    init_logging();
    let vhost = VhostLease::acquire();
    let mut proxy = Proxy::reserve().await;
    proxy.start().await;
    let broker = AmqpBroker::connect("rabbit", &proxy.url(&vhost.name), fast_reconnect_options())
        .await
        .expect("connect through the proxy");
    let work = unique("work");
    broker
        .declare_queue(&queue(&work))
        .await
        .expect("declare queue");
    let mut deliveries = broker.consume(&work, "outage", 10).await.expect("consume");

    proxy.stop().await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while broker.is_connected() {
        assert!(
            Instant::now() < deadline,
            "the broker did not notice the outage"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let error = broker
        .publish("", text_message(&work, "lost"))
        .await
        .expect_err("no broker during the outage");
    assert!(error.is_transient(), "{error:?}");
    let end = tokio::time::timeout(RECEIVE_TIMEOUT, deliveries.next())
        .await
        .expect("the consumer stream to react within the receive timeout");
    assert!(matches!(end, Some(Err(_)) | None), "{end:?}");
    delete_queue(&vhost.url(), &work).await;

    proxy.start().await;
    tokio::time::timeout(Duration::from_secs(20), broker.connected())
        .await
        .expect("reconnected once the port accepts connections again");
    wait_for_depth(&broker, &work, 0).await;
    broker
        .publish("", text_message(&work, "back"))
        .await
        .expect("publish after the outage");
    wait_for_depth(&broker, &work, 1).await;
}

/// Forces the connection closed with `rabbitmqctl close_all_connections`, as
/// a broker restart would, and checks that publishing and consuming go on.
#[tokio::test]
async fn forced_close_recovers() {
    let vhost = OwnVhost::create("recovery");
    let url = vhost_url(&vhost.name);
    let broker = connect(&url).await;
    let work = unique("work");
    broker
        .declare_queue(&queue(&work))
        .await
        .expect("declare queue");
    let mut deliveries = broker
        .consume(&work, "recovery", 10)
        .await
        .expect("consume");
    broker
        .publish("", text_message(&work, "before"))
        .await
        .expect("publish before close");
    next_delivery(&mut deliveries)
        .await
        .ack()
        .await
        .expect("ack before close");

    rabbitmqctl(&[
        "close_all_connections",
        "-p",
        &vhost.name,
        "switchyard recovery test",
    ]);

    // Right after the close, a publish either waits for the new connection or
    // fails with a transient error.
    match broker.publish("", text_message(&work, "during")).await {
        Ok(()) => println!("publish right after the close: confirmed on the new connection"),
        Err(error) => {
            println!("publish right after the close: {error}");
            assert!(error.is_transient(), "{error:?}");
        }
    }

    // A later publish succeeds.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match broker.publish("", text_message(&work, "after")).await {
            Ok(()) => break,
            Err(error) => {
                assert!(error.is_transient(), "{error:?}");
                assert!(
                    Instant::now() < deadline,
                    "no publish succeeded after the close: {error}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    assert!(broker.is_connected());

    // The consumer stream ends, after an error or without; a new consumer
    // receives what was published after the close.
    let mut ended = false;
    let mut bodies = Vec::new();
    while bodies.last().map(String::as_str) != Some("after") {
        match tokio::time::timeout(RECEIVE_TIMEOUT, deliveries.next()).await {
            Ok(Some(Ok(delivery))) => {
                bodies.push(String::from_utf8_lossy(&delivery.message.body).into_owned());
                delivery.ack().await.expect("ack on the new connection");
            }
            Ok(Some(Err(error))) => {
                println!("consumer reported: {error}");
                assert!(error.is_transient(), "{error:?}");
            }
            Ok(None) => {
                println!("consumer ended after the close; subscribing again");
                ended = true;
                deliveries = broker
                    .consume(&work, "recovery-2", 10)
                    .await
                    .expect("consume again");
            }
            Err(_) => panic!("no delivery after the close; received {bodies:?}"),
        }
    }
    assert!(ended, "the consumer of the closed connection went on");
    println!("received after the close: {bodies:?}");
}

/// Opens channels without pause while the connection is forced closed, which
/// can leave lapin's recovery stuck, and checks that the broker still
/// publishes afterwards, on a recovered or a new connection.
#[tokio::test]
async fn forced_close_during_channel_opens_recovers() {
    let vhost = OwnVhost::create("recovery-busy");
    let url = vhost_url(&vhost.name);
    let broker = std::sync::Arc::new(connect(&url).await);
    let work = unique("work");
    broker
        .declare_queue(&queue(&work))
        .await
        .expect("declare queue");

    let mut busy = Vec::new();
    for _ in 0..4 {
        let broker = broker.clone();
        let work = work.clone();
        busy.push(tokio::spawn(async move {
            loop {
                let _ = broker.queue_depth(&work).await;
                // A failed open returns without waiting; let the test run.
                tokio::task::yield_now().await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    rabbitmqctl(&[
        "close_all_connections",
        "-p",
        &vhost.name,
        "switchyard recovery test",
    ]);
    tokio::time::sleep(Duration::from_secs(1)).await;
    for task in &busy {
        task.abort();
    }

    let started = Instant::now();
    let deadline = started + Duration::from_secs(40);
    loop {
        match broker.publish("", text_message(&work, "after")).await {
            Ok(()) => break,
            Err(error) => {
                assert!(error.is_transient(), "{error:?}");
                assert!(
                    Instant::now() < deadline,
                    "no publish succeeded after the close: {error}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    println!(
        "first publish after the close confirmed after {:?}",
        started.elapsed()
    );
}

/// Queues that the original services created carry no `x-queue-type`;
/// declaring them as classic queues must not conflict.
#[tokio::test]
async fn classic_queue_without_type_is_equivalent() {
    let vhost = VhostLease::acquire();
    let broker = connect(&vhost.url()).await;
    let name = unique("legacy");
    let connection =
        lapin::Connection::connect(&vhost.url(), lapin::ConnectionProperties::default())
            .await
            .expect("connect as another application");
    let channel = connection.create_channel().await.expect("open channel");
    let options = lapin::options::QueueDeclareOptions {
        durable: true,
        ..lapin::options::QueueDeclareOptions::default()
    };
    channel
        .queue_declare(
            name.as_str().into(),
            options,
            lapin::types::FieldTable::default(),
        )
        .await
        .expect("declare a queue without arguments");
    let _ = connection.close(200, "OK".into()).await;

    broker
        .declare_queue(&queue(&name))
        .await
        .expect("declare the same queue as classic");
}

/// Measures confirmed publishes per second: 64 tasks publish 20,000
/// persistent 1 KiB messages to one durable queue. Run it on its own, ideally
/// in a release build:
/// `cargo test --release -p switchyard --lib broker::amqp::tests::publish_throughput -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "benchmark; prints a rate and asserts nothing about it"]
async fn publish_throughput() {
    const TASKS: usize = 64;
    const MESSAGES: usize = 20_000;
    let vhost = VhostLease::acquire();
    for publish_channels in [1, 4, 8] {
        let options = AmqpOptions {
            publish_channels,
            ..AmqpOptions::default()
        };
        let broker = std::sync::Arc::new(
            AmqpBroker::connect("rabbit", &vhost.url(), options)
                .await
                .expect("connect"),
        );
        let work = unique("throughput");
        broker
            .declare_queue(&queue(&work))
            .await
            .expect("declare queue");
        let body = vec![b'x'; 1024];

        let started = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..TASKS {
            let broker = broker.clone();
            let message = text_message(&work, "");
            let message = Message {
                body: body.clone().into(),
                ..message
            };
            tasks.push(tokio::spawn(async move {
                for _ in 0..MESSAGES / TASKS {
                    broker.publish("", message.clone()).await.expect("publish");
                }
            }));
        }
        for task in tasks {
            task.await.expect("publish task");
        }
        let elapsed = started.elapsed();
        let published = MESSAGES / TASKS * TASKS;
        println!(
            "{publish_channels} publish channels: {published} confirmed publishes in {elapsed:.2?}, {:.0}/s",
            published as f64 / elapsed.as_secs_f64()
        );
        delete_queue(&vhost.url(), &work).await;
    }
}
