use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;

use super::EmbeddedBroker;
use crate::broker::{Broker, BrokerError, Deliveries, Delivery, HeaderValue, Headers, Message};
use crate::topology::{BindingSpec, ExchangeKind, ExchangeSpec, QueueKind, QueueSpec};

/// How long a test waits for a delivery that must arrive.
const ARRIVAL_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a test waits to conclude that no delivery arrives.
const SILENCE: Duration = Duration::from_millis(50);

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

fn message(routing_key: &str, body: &str) -> Message {
    Message {
        routing_key: routing_key.to_owned(),
        body: Bytes::from(body.to_owned()),
        ..Message::default()
    }
}

fn body(delivery: &Delivery) -> &str {
    std::str::from_utf8(&delivery.message.body).expect("test bodies are UTF-8")
}

async fn next(deliveries: &mut Deliveries) -> Delivery {
    tokio::time::timeout(ARRIVAL_TIMEOUT, deliveries.next())
        .await
        .expect("a delivery arrives in time")
        .expect("the stream is open")
        .expect("the delivery is not an error")
}

async fn assert_silent(deliveries: &mut Deliveries) {
    if let Ok(item) = tokio::time::timeout(SILENCE, deliveries.next()).await {
        panic!("expected no delivery, got {item:?}");
    }
}

/// Declares `queues` and binds each to `exchange` with its routing key.
async fn declare_bound(
    broker: &EmbeddedBroker,
    exchange_spec: ExchangeSpec,
    queues: &[(&str, &str)],
) {
    broker.declare_exchange(&exchange_spec).await.unwrap();
    for &(name, routing_key) in queues {
        broker.declare_queue(&queue(name)).await.unwrap();
        broker
            .bind_queue(&binding(&exchange_spec.name, name, routing_key))
            .await
            .unwrap();
    }
}

async fn depth(broker: &EmbeddedBroker, name: &str) -> u32 {
    broker.queue_depth(name).await.unwrap()
}

/// Collects every ready message of a queue, acknowledging each.
async fn drain(broker: &EmbeddedBroker, name: &str) -> Vec<String> {
    let mut deliveries = broker.consume(name, "drain", 0).await.unwrap();
    let mut bodies = Vec::new();
    while let Ok(Some(delivery)) = tokio::time::timeout(SILENCE, deliveries.next()).await {
        let delivery = delivery.unwrap();
        bodies.push(body(&delivery).to_owned());
        delivery.ack().await.unwrap();
    }
    bodies
}

/// Declares a queue `work` whose rejected or expired messages go through the
/// fanout exchange `dlx` to the queue `dead`.
async fn declare_with_dead_letters(broker: &EmbeddedBroker, work: QueueSpec) {
    declare_bound(
        broker,
        exchange("dlx", ExchangeKind::Fanout),
        &[("dead", "")],
    )
    .await;
    let work = QueueSpec {
        dead_letter_exchange: Some("dlx".to_owned()),
        ..work
    };
    broker.declare_queue(&work).await.unwrap();
}

#[tokio::test]
async fn direct_routes_by_exact_key() {
    let broker = EmbeddedBroker::new();
    let queues = [("created", "user.created"), ("placed", "order.placed")];
    declare_bound(&broker, exchange("x", ExchangeKind::Direct), &queues).await;

    broker
        .publish("x", message("user.created", "1"))
        .await
        .unwrap();
    broker.publish("x", message("user.*", "2")).await.unwrap();

    assert_eq!(drain(&broker, "created").await, ["1"]);
    assert_eq!(depth(&broker, "placed").await, 0);
}

#[tokio::test]
async fn fanout_routes_to_every_queue() {
    let broker = EmbeddedBroker::new();
    let queues = [("a", "ignored"), ("b", "")];
    declare_bound(&broker, exchange("x", ExchangeKind::Fanout), &queues).await;

    broker.publish("x", message("any.key", "1")).await.unwrap();

    assert_eq!(drain(&broker, "a").await, ["1"]);
    assert_eq!(drain(&broker, "b").await, ["1"]);
}

#[tokio::test]
async fn topic_routes_by_pattern() {
    let broker = EmbeddedBroker::new();
    let queues = [("orders", "order.*"), ("all", "#"), ("placed", "*.placed")];
    declare_bound(&broker, exchange("events", ExchangeKind::Topic), &queues).await;
    // A second matching binding to one queue must not duplicate the message.
    broker
        .bind_queue(&binding("events", "all", "order.#"))
        .await
        .unwrap();

    broker
        .publish("events", message("order.placed", "1"))
        .await
        .unwrap();
    broker
        .publish("events", message("user.created", "2"))
        .await
        .unwrap();

    assert_eq!(drain(&broker, "orders").await, ["1"]);
    assert_eq!(drain(&broker, "all").await, ["1", "2"]);
    assert_eq!(drain(&broker, "placed").await, ["1"]);
}

#[tokio::test]
async fn headers_routes_on_x_match() {
    let broker = EmbeddedBroker::new();
    broker
        .declare_exchange(&exchange("h", ExchangeKind::Headers))
        .await
        .unwrap();
    for (name, x_match) in [("all", "all"), ("any", "any")] {
        broker.declare_queue(&queue(name)).await.unwrap();
        let arguments: Headers = [
            ("x-match", HeaderValue::from(x_match)),
            ("format", HeaderValue::from("pdf")),
            ("type", HeaderValue::from("report")),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value))
        .collect();
        broker
            .bind_queue_with_arguments(&binding("h", name, ""), arguments)
            .await
            .unwrap();
    }
    let with_headers = |body: &str, headers: &[(&str, &str)]| Message {
        headers: headers
            .iter()
            .map(|&(name, value)| (name.to_owned(), HeaderValue::from(value)))
            .collect(),
        ..message("", body)
    };

    let both = [("format", "pdf"), ("type", "report")];
    broker
        .publish("h", with_headers("both", &both))
        .await
        .unwrap();
    let one_match = [("format", "pdf"), ("type", "log")];
    broker
        .publish("h", with_headers("one", &one_match))
        .await
        .unwrap();
    broker
        .publish("h", with_headers("none", &[]))
        .await
        .unwrap();

    assert_eq!(drain(&broker, "all").await, ["both"]);
    assert_eq!(drain(&broker, "any").await, ["both", "one"]);
}

#[tokio::test]
async fn headers_trait_binding_matches_all() {
    let broker = EmbeddedBroker::new();
    let queues = [("q", "ignored")];
    declare_bound(&broker, exchange("h", ExchangeKind::Headers), &queues).await;

    broker.publish("h", message("any", "1")).await.unwrap();

    assert_eq!(drain(&broker, "q").await, ["1"]);
}

#[tokio::test]
async fn headers_binding_rejects_bad_x_match() {
    let broker = EmbeddedBroker::new();
    broker
        .declare_exchange(&exchange("h", ExchangeKind::Headers))
        .await
        .unwrap();
    broker.declare_queue(&queue("q")).await.unwrap();
    let arguments: Headers = [("x-match".to_owned(), HeaderValue::from("most"))].into();

    let error = broker
        .bind_queue_with_arguments(&binding("h", "q", ""), arguments)
        .await
        .unwrap_err();

    assert!(matches!(error, BrokerError::Protocol(_)), "{error:?}");
    assert!(error.to_string().contains("`most`"), "{error}");
}

#[tokio::test]
async fn default_exchange_routes_by_queue_name() {
    let broker = EmbeddedBroker::new();
    broker.declare_queue(&queue("tasks")).await.unwrap();

    broker.publish("", message("tasks", "1")).await.unwrap();
    broker
        .publish("", message("no-such-queue", "2"))
        .await
        .unwrap();

    let mut deliveries = broker.consume("tasks", "c", 0).await.unwrap();
    let delivery = next(&mut deliveries).await;
    assert_eq!(body(&delivery), "1");
    assert_eq!(delivery.exchange, "");
    assert_eq!(delivery.message.routing_key, "tasks");
}

#[tokio::test]
async fn default_exchange_cannot_be_declared_or_bound() {
    let broker = EmbeddedBroker::new();
    broker.declare_queue(&queue("q")).await.unwrap();

    let declare = broker
        .declare_exchange(&exchange("", ExchangeKind::Direct))
        .await;
    let bind = broker.bind_queue(&binding("", "q", "q")).await;

    assert!(
        matches!(declare, Err(BrokerError::Protocol(_))),
        "{declare:?}"
    );
    assert!(matches!(bind, Err(BrokerError::Protocol(_))), "{bind:?}");
}

#[tokio::test]
async fn amq_prefix_is_reserved() {
    let broker = EmbeddedBroker::new();

    let new_exchange = broker
        .declare_exchange(&exchange("amq.custom", ExchangeKind::Topic))
        .await;
    let predeclared = broker
        .declare_exchange(&exchange("amq.topic", ExchangeKind::Topic))
        .await;
    let new_queue = broker.declare_queue(&queue("amq.q")).await;

    assert!(
        matches!(new_exchange, Err(BrokerError::Protocol(_))),
        "{new_exchange:?}"
    );
    assert!(predeclared.is_ok(), "{predeclared:?}");
    assert!(
        matches!(new_queue, Err(BrokerError::Protocol(_))),
        "{new_queue:?}"
    );
}

#[tokio::test]
async fn alternate_exchange_gets_unrouted() {
    let broker = EmbeddedBroker::new();
    declare_bound(
        &broker,
        exchange("ae", ExchangeKind::Fanout),
        &[("unroutable", "")],
    )
    .await;
    let events = ExchangeSpec {
        alternate_exchange: Some("ae".to_owned()),
        ..exchange("events", ExchangeKind::Topic)
    };
    declare_bound(&broker, events, &[("orders", "order.*")]).await;

    broker
        .publish("events", message("order.placed", "routed"))
        .await
        .unwrap();
    broker
        .publish("events", message("user.created", "unrouted"))
        .await
        .unwrap();

    assert_eq!(drain(&broker, "orders").await, ["routed"]);
    let mut deliveries = broker.consume("unroutable", "c", 0).await.unwrap();
    let delivery = next(&mut deliveries).await;
    assert_eq!(body(&delivery), "unrouted");
    assert_eq!(delivery.exchange, "events");
    assert_eq!(delivery.message.routing_key, "user.created");
}

#[tokio::test]
async fn alternate_exchange_chain_and_loop() {
    let broker = EmbeddedBroker::new();
    let with_alternate = |name: &str, alternate: &str| ExchangeSpec {
        alternate_exchange: Some(alternate.to_owned()),
        ..exchange(name, ExchangeKind::Direct)
    };
    // `a` and `b` name each other as alternate. `c` is reached only through `d`.
    declare_bound(&broker, with_alternate("a", "b"), &[("qa", "ka")]).await;
    declare_bound(&broker, with_alternate("b", "a"), &[("qb", "kb")]).await;
    declare_bound(&broker, with_alternate("d", "c"), &[]).await;
    declare_bound(&broker, exchange("c", ExchangeKind::Fanout), &[("qc", "")]).await;

    broker.publish("a", message("kb", "via b")).await.unwrap();
    broker
        .publish("a", message("nothing", "looped"))
        .await
        .unwrap();
    broker.publish("d", message("any", "via c")).await.unwrap();

    assert_eq!(drain(&broker, "qb").await, ["via b"]);
    assert_eq!(drain(&broker, "qa").await, Vec::<String>::new());
    assert_eq!(drain(&broker, "qc").await, ["via c"]);
}

#[tokio::test]
async fn missing_alternate_exchange_drops() {
    let broker = EmbeddedBroker::new();
    let events = ExchangeSpec {
        alternate_exchange: Some("not-declared".to_owned()),
        ..exchange("events", ExchangeKind::Topic)
    };
    declare_bound(&broker, events, &[("orders", "order.*")]).await;

    let result = broker.publish("events", message("user.created", "1")).await;

    assert!(result.is_ok(), "{result:?}");
    assert_eq!(depth(&broker, "orders").await, 0);
}

#[tokio::test]
async fn unroutable_message_is_dropped() {
    let broker = EmbeddedBroker::new();
    declare_bound(&broker, exchange("x", ExchangeKind::Direct), &[("q", "k")]).await;

    let result = broker.publish("x", message("other", "1")).await;

    assert!(result.is_ok(), "{result:?}");
    assert_eq!(depth(&broker, "q").await, 0);
}

#[tokio::test]
async fn publish_to_missing_exchange() {
    let broker = EmbeddedBroker::new();

    let error = broker.publish("nope", message("k", "1")).await.unwrap_err();

    assert!(
        matches!(&error, BrokerError::NotFound { kind: "exchange", name } if name == "nope"),
        "{error:?}"
    );
    assert_eq!(error.to_string(), "exchange `nope` not found");
}

#[tokio::test]
async fn missing_queue_is_not_found() {
    let broker = EmbeddedBroker::new();
    broker
        .declare_exchange(&exchange("x", ExchangeKind::Direct))
        .await
        .unwrap();

    let consume = broker.consume("nope", "c", 1).await.err();
    let depth = broker.queue_depth("nope").await.err();
    let bind = broker.bind_queue(&binding("x", "nope", "k")).await.err();

    for error in [consume, depth, bind] {
        assert!(
            matches!(&error, Some(BrokerError::NotFound { kind: "queue", name }) if name == "nope"),
            "{error:?}"
        );
    }
}

#[tokio::test]
async fn bind_to_missing_exchange() {
    let broker = EmbeddedBroker::new();
    broker.declare_queue(&queue("q")).await.unwrap();

    let error = broker
        .bind_queue(&binding("nope", "q", "k"))
        .await
        .unwrap_err();

    assert!(
        matches!(&error, BrokerError::NotFound { kind: "exchange", name } if name == "nope"),
        "{error:?}"
    );
}

#[tokio::test]
async fn queue_depth_counts_ready_only() {
    let broker = EmbeddedBroker::new();
    broker.declare_queue(&queue("q")).await.unwrap();
    for i in 0..3 {
        broker
            .publish("", message("q", &i.to_string()))
            .await
            .unwrap();
    }
    assert_eq!(depth(&broker, "q").await, 3);

    let mut deliveries = broker.consume("q", "c", 1).await.unwrap();
    let delivery = next(&mut deliveries).await;

    assert_eq!(depth(&broker, "q").await, 2);
    delivery.ack().await.unwrap();
    next(&mut deliveries).await;
    assert_eq!(depth(&broker, "q").await, 1);
}

#[tokio::test]
async fn prefetch_limits_unacked() {
    let broker = EmbeddedBroker::new();
    broker.declare_queue(&queue("q")).await.unwrap();
    for i in 0..5 {
        broker
            .publish("", message("q", &i.to_string()))
            .await
            .unwrap();
    }
    let mut deliveries = broker.consume("q", "c", 2).await.unwrap();

    let first = next(&mut deliveries).await;
    let second = next(&mut deliveries).await;
    assert_silent(&mut deliveries).await;
    assert_eq!(depth(&broker, "q").await, 3);

    first.ack().await.unwrap();
    let third = next(&mut deliveries).await;
    assert_eq!(body(&third), "2");
    assert_silent(&mut deliveries).await;

    second.ack().await.unwrap();
    third.ack().await.unwrap();
    assert_eq!(body(&next(&mut deliveries).await), "3");
    assert_eq!(body(&next(&mut deliveries).await), "4");
}

#[tokio::test]
async fn prefetch_zero_is_unlimited() {
    let broker = EmbeddedBroker::new();
    broker.declare_queue(&queue("q")).await.unwrap();
    for i in 0..100 {
        broker
            .publish("", message("q", &i.to_string()))
            .await
            .unwrap();
    }
    let mut deliveries = broker.consume("q", "c", 0).await.unwrap();

    let mut unacked = Vec::new();
    for _ in 0..100 {
        unacked.push(next(&mut deliveries).await);
    }

    assert_eq!(depth(&broker, "q").await, 0);
}

#[tokio::test]
async fn competing_consumers_take_turns() {
    let broker = EmbeddedBroker::new();
    broker.declare_queue(&queue("q")).await.unwrap();
    let mut first = broker.consume("q", "first", 10).await.unwrap();
    let mut second = broker.consume("q", "second", 10).await.unwrap();

    for i in 0..6 {
        broker
            .publish("", message("q", &i.to_string()))
            .await
            .unwrap();
    }

    let mut first_bodies = Vec::new();
    let mut second_bodies = Vec::new();
    for _ in 0..3 {
        first_bodies.push(body(&next(&mut first).await).to_owned());
        second_bodies.push(body(&next(&mut second).await).to_owned());
    }
    assert_eq!(first_bodies, ["0", "2", "4"]);
    assert_eq!(second_bodies, ["1", "3", "5"]);
}

#[tokio::test]
async fn competing_consumers_skip_full_prefetch() {
    let broker = EmbeddedBroker::new();
    broker.declare_queue(&queue("q")).await.unwrap();
    let mut busy = broker.consume("q", "busy", 1).await.unwrap();
    let mut free = broker.consume("q", "free", 10).await.unwrap();

    for i in 0..4 {
        broker
            .publish("", message("q", &i.to_string()))
            .await
            .unwrap();
    }

    assert_eq!(body(&next(&mut busy).await), "0");
    assert_silent(&mut busy).await;
    for expected in ["1", "2", "3"] {
        assert_eq!(body(&next(&mut free).await), expected);
    }
}

#[tokio::test]
async fn ack_removes_message() {
    let broker = EmbeddedBroker::new();
    broker.declare_queue(&queue("q")).await.unwrap();
    broker.publish("", message("q", "1")).await.unwrap();

    let mut deliveries = broker.consume("q", "c", 1).await.unwrap();
    let delivery = next(&mut deliveries).await;
    assert!(!delivery.redelivered);
    delivery.ack().await.unwrap();
    drop(deliveries);

    assert_eq!(depth(&broker, "q").await, 0);
}

#[tokio::test]
async fn reject_requeue_redelivers_first() {
    let broker = EmbeddedBroker::new();
    broker.declare_queue(&queue("q")).await.unwrap();
    broker.publish("", message("q", "1")).await.unwrap();
    broker.publish("", message("q", "2")).await.unwrap();
    let mut deliveries = broker.consume("q", "c", 1).await.unwrap();

    let delivery = next(&mut deliveries).await;
    assert_eq!(body(&delivery), "1");
    delivery.reject(true).await.unwrap();

    let again = next(&mut deliveries).await;
    assert_eq!(body(&again), "1");
    assert!(again.redelivered);
    again.ack().await.unwrap();
    let second = next(&mut deliveries).await;
    assert_eq!(body(&second), "2");
    assert!(!second.redelivered);
}

#[tokio::test]
async fn reject_dead_letters_with_headers() {
    let broker = EmbeddedBroker::new();
    declare_with_dead_letters(&broker, queue("work")).await;
    let original = Message {
        headers: [("x-switchyard-attempt".to_owned(), HeaderValue::Int(3))].into(),
        ..message("order.placed", "1")
    };
    broker
        .publish(
            "",
            Message {
                routing_key: "work".to_owned(),
                ..original
            },
        )
        .await
        .unwrap();
    let mut work = broker.consume("work", "c", 1).await.unwrap();

    next(&mut work).await.reject(false).await.unwrap();

    assert_eq!(depth(&broker, "work").await, 0);
    let mut dead = broker.consume("dead", "d", 1).await.unwrap();
    let delivery = next(&mut dead).await;
    let headers = &delivery.message.headers;
    assert_eq!(body(&delivery), "1");
    assert_eq!(delivery.exchange, "dlx");
    assert_eq!(delivery.message.routing_key, "work");
    assert_eq!(
        headers.get("x-switchyard-attempt"),
        Some(&HeaderValue::Int(3))
    );
    assert_eq!(
        headers.get("x-first-death-reason"),
        Some(&HeaderValue::from("rejected"))
    );
    assert_eq!(
        headers.get("x-first-death-queue"),
        Some(&HeaderValue::from("work"))
    );
    assert_eq!(
        headers.get("x-first-death-exchange"),
        Some(&HeaderValue::from(""))
    );
    assert_eq!(
        headers.get("x-last-death-reason"),
        Some(&HeaderValue::from("rejected"))
    );
}

#[tokio::test]
async fn reject_without_dead_letter_exchange_drops() {
    let broker = EmbeddedBroker::new();
    broker.declare_queue(&queue("q")).await.unwrap();
    broker.publish("", message("q", "1")).await.unwrap();
    let mut deliveries = broker.consume("q", "c", 1).await.unwrap();

    next(&mut deliveries).await.reject(false).await.unwrap();

    assert_silent(&mut deliveries).await;
    assert_eq!(depth(&broker, "q").await, 0);
}

#[tokio::test]
async fn dead_letter_routing_key_replaces_key() {
    let broker = EmbeddedBroker::new();
    declare_bound(
        &broker,
        exchange("dlx", ExchangeKind::Direct),
        &[("dead", "failed")],
    )
    .await;
    let work = QueueSpec {
        dead_letter_exchange: Some("dlx".to_owned()),
        dead_letter_routing_key: Some("failed".to_owned()),
        ..queue("work")
    };
    broker.declare_queue(&work).await.unwrap();
    broker.publish("", message("work", "1")).await.unwrap();
    let mut deliveries = broker.consume("work", "c", 1).await.unwrap();

    next(&mut deliveries).await.reject(false).await.unwrap();

    let mut dead = broker.consume("dead", "d", 1).await.unwrap();
    assert_eq!(next(&mut dead).await.message.routing_key, "failed");
}

#[tokio::test]
async fn message_expiration_dead_letters_unconsumed() {
    let broker = EmbeddedBroker::new();
    declare_with_dead_letters(&broker, queue("work")).await;
    let expiring = Message {
        expiration: Some(Duration::from_millis(30)),
        ..message("work", "expiring")
    };
    broker.publish("", expiring).await.unwrap();
    broker
        .publish("", message("work", "lasting"))
        .await
        .unwrap();
    let mut dead = broker.consume("dead", "d", 1).await.unwrap();

    // No consumer reads `work`, so the expiry task alone moves the message.
    let delivery = next(&mut dead).await;

    assert_eq!(body(&delivery), "expiring");
    assert_eq!(delivery.message.expiration, None);
    assert_eq!(
        delivery.message.headers.get("x-first-death-reason"),
        Some(&HeaderValue::from("expired"))
    );
    assert_eq!(depth(&broker, "work").await, 1);
}

#[tokio::test]
async fn expiry_behind_the_head() {
    let broker = EmbeddedBroker::new();
    declare_with_dead_letters(&broker, queue("work")).await;
    broker
        .publish("", message("work", "lasting"))
        .await
        .unwrap();
    let expiring = Message {
        expiration: Some(Duration::from_millis(20)),
        ..message("work", "expiring")
    };
    broker.publish("", expiring).await.unwrap();
    let mut dead = broker.consume("dead", "d", 1).await.unwrap();

    assert_eq!(body(&next(&mut dead).await), "expiring");
    assert_eq!(depth(&broker, "work").await, 1);
}

#[tokio::test]
async fn queue_ttl_dead_letters_unconsumed() {
    let broker = EmbeddedBroker::new();
    let work = QueueSpec {
        message_ttl: Some(Duration::from_millis(30)),
        ..queue("work")
    };
    declare_with_dead_letters(&broker, work).await;
    broker.publish("", message("work", "1")).await.unwrap();
    broker.publish("", message("work", "2")).await.unwrap();
    let mut dead = broker.consume("dead", "d", 10).await.unwrap();

    assert_eq!(body(&next(&mut dead).await), "1");
    assert_eq!(body(&next(&mut dead).await), "2");
    assert_eq!(depth(&broker, "work").await, 0);
}

#[tokio::test]
async fn zero_ttl_needs_free_consumer() {
    let broker = EmbeddedBroker::new();
    let work = QueueSpec {
        message_ttl: Some(Duration::ZERO),
        ..queue("work")
    };
    declare_with_dead_letters(&broker, work).await;
    let mut deliveries = broker.consume("work", "c", 1).await.unwrap();

    broker
        .publish("", message("work", "delivered"))
        .await
        .unwrap();
    broker
        .publish("", message("work", "expired"))
        .await
        .unwrap();

    // RabbitMQ delivers a message with a TTL of 0 only to a consumer that can
    // take it at once, and dead-letters it otherwise.
    assert_eq!(body(&next(&mut deliveries).await), "delivered");
    let mut dead = broker.consume("dead", "d", 1).await.unwrap();
    assert_eq!(body(&next(&mut dead).await), "expired");
    assert_silent(&mut deliveries).await;
}

#[tokio::test]
async fn shorter_ttl_wins() {
    let broker = EmbeddedBroker::new();
    let work = QueueSpec {
        message_ttl: Some(Duration::from_secs(60)),
        ..queue("work")
    };
    declare_with_dead_letters(&broker, work).await;
    let expiring = Message {
        expiration: Some(Duration::from_millis(20)),
        ..message("work", "1")
    };
    broker.publish("", expiring).await.unwrap();
    let mut dead = broker.consume("dead", "d", 1).await.unwrap();

    assert_eq!(body(&next(&mut dead).await), "1");
}

#[tokio::test]
async fn expired_while_unacked_dead_letters_on_requeue() {
    let broker = EmbeddedBroker::new();
    declare_with_dead_letters(&broker, queue("work")).await;
    let expiring = Message {
        expiration: Some(Duration::from_millis(20)),
        ..message("work", "1")
    };
    broker.publish("", expiring).await.unwrap();
    let mut work = broker.consume("work", "c", 1).await.unwrap();
    let delivery = next(&mut work).await;

    tokio::time::sleep(Duration::from_millis(40)).await;
    delivery.reject(true).await.unwrap();

    assert_silent(&mut work).await;
    let mut dead = broker.consume("dead", "d", 1).await.unwrap();
    assert_eq!(body(&next(&mut dead).await), "1");
}

#[tokio::test]
async fn retry_queue_delays_redelivery() {
    let broker = EmbeddedBroker::new();
    // `work` dead-letters into `retry`, whose TTL sends messages back.
    broker
        .declare_exchange(&exchange("retry-x", ExchangeKind::Fanout))
        .await
        .unwrap();
    let work = QueueSpec {
        dead_letter_exchange: Some("retry-x".to_owned()),
        ..queue("work")
    };
    let retry = QueueSpec {
        dead_letter_exchange: Some(String::new()),
        dead_letter_routing_key: Some("work".to_owned()),
        message_ttl: Some(Duration::from_millis(30)),
        ..queue("retry")
    };
    broker.declare_queue(&work).await.unwrap();
    broker.declare_queue(&retry).await.unwrap();
    broker
        .bind_queue(&binding("retry-x", "retry", ""))
        .await
        .unwrap();
    broker.publish("", message("work", "1")).await.unwrap();
    let mut deliveries = broker.consume("work", "c", 1).await.unwrap();

    for _ in 0..3 {
        let delivery = next(&mut deliveries).await;
        assert_eq!(body(&delivery), "1");
        let rejected_at = tokio::time::Instant::now();
        delivery.reject(false).await.unwrap();
        let again = next(&mut deliveries).await;
        assert!(rejected_at.elapsed() >= Duration::from_millis(30));
        let headers = &again.message.headers;
        let header = |name: &str| headers.get(name).map(HeaderValue::to_text);
        assert_eq!(header("x-first-death-queue").as_deref(), Some("work"));
        assert_eq!(header("x-last-death-queue").as_deref(), Some("retry"));
        assert_eq!(header("x-last-death-reason").as_deref(), Some("expired"));
        assert_eq!(again.exchange, "");
        again.reject(true).await.unwrap();
    }
}

#[tokio::test]
async fn expiry_cycle_is_broken() {
    let broker = EmbeddedBroker::new();
    // `a` and `b` expire into each other through the default exchange, and
    // nothing ever rejects: RabbitMQ drops such a message after one round.
    for (name, target) in [("a", "b"), ("b", "a")] {
        let spec = QueueSpec {
            dead_letter_exchange: Some(String::new()),
            dead_letter_routing_key: Some(target.to_owned()),
            message_ttl: Some(Duration::from_millis(5)),
            ..queue(name)
        };
        broker.declare_queue(&spec).await.unwrap();
    }

    broker.publish("", message("a", "1")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;

    assert_eq!(depth(&broker, "a").await, 0);
    assert_eq!(depth(&broker, "b").await, 0);
}

#[test]
fn publish_outside_tokio_runtime() {
    let broker = EmbeddedBroker::new();

    futures::executor::block_on(async {
        broker.declare_queue(&queue("q")).await.unwrap();
        broker.publish("", message("q", "1")).await.unwrap();
    });

    let depth = futures::executor::block_on(depth(&broker, "q"));
    assert_eq!(depth, 1);
}

#[tokio::test]
async fn dropped_stream_requeues_unacked() {
    let broker = EmbeddedBroker::new();
    broker.declare_queue(&queue("q")).await.unwrap();
    for i in 0..4 {
        broker
            .publish("", message("q", &i.to_string()))
            .await
            .unwrap();
    }
    let mut deliveries = broker.consume("q", "c", 3).await.unwrap();
    let acked = next(&mut deliveries).await;
    let unacked = next(&mut deliveries).await;
    acked.ack().await.unwrap();

    // Acking "0" let the broker push "3", so "1", "2" and "3" are unacked.
    drop(deliveries);

    assert_eq!(depth(&broker, "q").await, 3);
    let mut again = broker.consume("q", "c2", 0).await.unwrap();
    for expected in ["1", "2", "3"] {
        let delivery = next(&mut again).await;
        assert_eq!(body(&delivery), expected);
        assert!(delivery.redelivered, "message {expected}");
    }
    let error = unacked.ack().await.unwrap_err();
    assert!(matches!(error, BrokerError::Closed(_)), "{error:?}");
}

#[tokio::test]
async fn requeue_merges_original_order() {
    let broker = EmbeddedBroker::new();
    broker.declare_queue(&queue("q")).await.unwrap();
    let mut first = broker.consume("q", "first", 2).await.unwrap();
    let second = broker.consume("q", "second", 2).await.unwrap();
    for i in 0..6 {
        broker
            .publish("", message("q", &i.to_string()))
            .await
            .unwrap();
    }
    // Round-robin: `first` has 0 and 2, `second` has 1 and 3.
    next(&mut first).await.ack().await.unwrap();
    // `first` now has 2 and 4, and 5 is ready.
    drop(first);
    // 2 and 4 go back around 5, and then 1 and 3 interleave with them.
    drop(second);

    let bodies = drain(&broker, "q").await;

    assert_eq!(bodies, ["1", "2", "3", "4", "5"]);
}

#[tokio::test]
async fn requeue_behind_older_message() {
    let broker = EmbeddedBroker::new();
    broker.declare_queue(&queue("q")).await.unwrap();
    let mut first = broker.consume("q", "first", 1).await.unwrap();
    let mut second = broker.consume("q", "second", 1).await.unwrap();
    for i in 0..3 {
        broker
            .publish("", message("q", &i.to_string()))
            .await
            .unwrap();
    }
    assert_eq!(body(&next(&mut first).await), "0");
    let message_1 = next(&mut second).await;
    assert_eq!(body(&message_1), "1");
    drop(first);

    message_1.reject(true).await.unwrap();

    // 0 is back ahead of 1, so `second` gets 0 first.
    let zero = next(&mut second).await;
    assert_eq!(body(&zero), "0");
    assert!(zero.redelivered);
    drop(second);
    assert_eq!(drain(&broker, "q").await, ["0", "1", "2"]);
}

#[tokio::test]
async fn dropped_acker_stays_unacked() {
    let broker = EmbeddedBroker::new();
    broker.declare_queue(&queue("q")).await.unwrap();
    broker.publish("", message("q", "1")).await.unwrap();
    broker.publish("", message("q", "2")).await.unwrap();
    let mut deliveries = broker.consume("q", "c", 1).await.unwrap();

    drop(next(&mut deliveries).await);

    assert_silent(&mut deliveries).await;
    assert_eq!(depth(&broker, "q").await, 1);
    drop(deliveries);
    assert_eq!(depth(&broker, "q").await, 2);
}

#[tokio::test]
async fn redeclare_identical_is_accepted() {
    let broker = EmbeddedBroker::new();
    let events = ExchangeSpec {
        alternate_exchange: Some("ae".to_owned()),
        ..exchange("events", ExchangeKind::Topic)
    };
    let work = QueueSpec {
        kind: QueueKind::Quorum,
        dead_letter_exchange: Some("dlx".to_owned()),
        message_ttl: Some(Duration::from_secs(5)),
        ..queue("work")
    };

    for _ in 0..2 {
        broker.declare_exchange(&events).await.unwrap();
        broker.declare_queue(&work).await.unwrap();
        broker
            .bind_queue(&binding("events", "work", "order.*"))
            .await
            .unwrap();
    }

    broker
        .publish("events", message("order.placed", "1"))
        .await
        .unwrap();
    assert_eq!(depth(&broker, "work").await, 1);
}

#[tokio::test]
async fn exchange_conflict_is_readable() {
    let broker = EmbeddedBroker::new();
    broker
        .declare_exchange(&exchange("events", ExchangeKind::Topic))
        .await
        .unwrap();
    let fanout = ExchangeSpec {
        alternate_exchange: Some("ae".to_owned()),
        ..exchange("events", ExchangeKind::Fanout)
    };

    let error = broker.declare_exchange(&fanout).await.unwrap_err();

    assert!(matches!(error, BrokerError::Conflict(_)), "{error:?}");
    assert_eq!(
        error.to_string(),
        "exchange `events` already exists with other properties: type is `topic` but the \
         declaration requests `fanout`, and alternate-exchange is not set but the declaration \
         requests `ae`; declare it with the existing properties, or delete it and declare it \
         again"
    );
}

#[tokio::test]
async fn queue_conflict_is_readable() {
    let broker = EmbeddedBroker::new();
    broker.declare_queue(&queue("work")).await.unwrap();
    let with_dead_letters = QueueSpec {
        dead_letter_exchange: Some("dlx".to_owned()),
        message_ttl: Some(Duration::from_millis(1500)),
        ..queue("work")
    };

    let error = broker.declare_queue(&with_dead_letters).await.unwrap_err();

    assert!(matches!(error, BrokerError::Conflict(_)), "{error:?}");
    let text = error.to_string();
    assert!(text.starts_with("queue `work` already exists"), "{text}");
    assert!(
        text.contains("x-dead-letter-exchange is not set but the declaration requests `dlx`"),
        "{text}"
    );
    assert!(
        text.contains("x-message-ttl is not set but the declaration requests `1s 500ms`"),
        "{text}"
    );
    assert!(!text.contains("durable"), "{text}");
}

#[tokio::test]
async fn handler_publishes_while_holding() {
    let broker = EmbeddedBroker::new();
    broker.declare_queue(&queue("in")).await.unwrap();
    broker.declare_queue(&queue("out")).await.unwrap();
    for i in 0..50 {
        broker
            .publish("", message("in", &i.to_string()))
            .await
            .unwrap();
    }
    let mut deliveries = broker.consume("in", "c", 10).await.unwrap();

    // Like a handler with concurrency: hold a batch, publish for each, then
    // acknowledge the batch.
    for _ in 0..5 {
        let mut batch = Vec::new();
        for _ in 0..10 {
            batch.push(next(&mut deliveries).await);
        }
        for delivery in &batch {
            let emitted = message("out", body(delivery));
            broker.publish("", emitted).await.unwrap();
            broker.publish("", message("in", "echo")).await.unwrap();
        }
        for delivery in batch {
            delivery.ack().await.unwrap();
        }
    }
    // The stream keeps the next ten echoes unacknowledged until it is dropped.
    drop(deliveries);

    assert_eq!(depth(&broker, "out").await, 50);
    assert_eq!(depth(&broker, "in").await, 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publish_and_consume() {
    const PUBLISHERS: usize = 4;
    const CONSUMERS: usize = 3;
    const PER_PUBLISHER: usize = 2_000;
    let broker = EmbeddedBroker::new();
    broker.declare_queue(&queue("q")).await.unwrap();

    let mut consumers = Vec::new();
    for c in 0..CONSUMERS {
        let mut deliveries = broker.consume("q", &format!("c{c}"), 16).await.unwrap();
        consumers.push(tokio::spawn(async move {
            let mut bodies = Vec::new();
            while let Ok(Some(delivery)) =
                tokio::time::timeout(Duration::from_millis(500), deliveries.next()).await
            {
                let delivery = delivery.unwrap();
                bodies.push(body(&delivery).to_owned());
                delivery.ack().await.unwrap();
            }
            bodies
        }));
    }
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|p| {
            let broker = broker.clone();
            tokio::spawn(async move {
                for i in 0..PER_PUBLISHER {
                    let body = format!("{p}-{i}");
                    broker.publish("", message("q", &body)).await.unwrap();
                }
            })
        })
        .collect();
    for publisher in publishers {
        publisher.await.unwrap();
    }

    let mut received = Vec::new();
    for consumer in consumers {
        let bodies = consumer.await.unwrap();
        assert!(!bodies.is_empty(), "every competing consumer gets messages");
        received.extend(bodies);
    }
    received.sort();
    let mut expected: Vec<String> = (0..PUBLISHERS)
        .flat_map(|p| (0..PER_PUBLISHER).map(move |i| format!("{p}-{i}")))
        .collect();
    expected.sort();
    assert_eq!(received.len(), expected.len());
    assert_eq!(received, expected);
    assert_eq!(depth(&broker, "q").await, 0);
}

/// Measures publish + consume + ack throughput. Run it in release mode:
/// `cargo test --release -p switchyard --lib embedded::tests::throughput -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check; run it in release mode"]
async fn throughput() {
    const MESSAGES: usize = 500_000;
    let broker = EmbeddedBroker::new();
    declare_bound(
        &broker,
        exchange("events", ExchangeKind::Topic),
        &[("q", "order.*")],
    )
    .await;
    let mut deliveries = broker.consume("q", "c", 100).await.unwrap();
    let started = std::time::Instant::now();

    let consumer = tokio::spawn(async move {
        for _ in 0..MESSAGES {
            next(&mut deliveries).await.ack().await.unwrap();
        }
    });
    let payload = Bytes::from(vec![b'x'; 256]);
    for _ in 0..MESSAGES {
        let message = Message {
            routing_key: "order.placed".to_owned(),
            body: payload.clone(),
            ..Message::default()
        };
        broker.publish("events", message).await.unwrap();
    }
    consumer.await.unwrap();

    let elapsed = started.elapsed();
    let rate = MESSAGES as f64 / elapsed.as_secs_f64();
    println!(
        "{MESSAGES} messages of 256 bytes published, consumed and acknowledged in \
         {elapsed:?}: {rate:.0} messages/s"
    );
}
