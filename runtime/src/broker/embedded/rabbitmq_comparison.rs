//! Compares the embedded broker's routing with a real RabbitMQ: the same
//! topology is declared on both, the same messages are published, and every
//! queue must end up with the same messages. It runs in a virtual host of its
//! own, created and deleted with `rabbitmqctl`.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};

use super::EmbeddedBroker;
use super::routing::TOPIC_CASES;
use crate::broker::{Broker, HeaderValue, Headers, Message};
use crate::topology::{BindingSpec, ExchangeKind, ExchangeSpec, QueueKind, QueueSpec};

const VHOST: &str = "sy-embedded-test";
const URI: &str = "amqp://guest:guest@127.0.0.1:5672/sy-embedded-test";

fn rabbitmqctl(args: &[&str]) -> Result<(), String> {
    let output = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .map_err(|error| format!("cannot run `rabbitmqctl`: {error}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`rabbitmqctl {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// The test's virtual host, deleted again when the test ends or fails.
struct Vhost;

impl Vhost {
    fn create() -> Self {
        // A vhost left over from an interrupted run would keep its queues.
        let _ = rabbitmqctl(&["delete_vhost", VHOST]);
        rabbitmqctl(&["add_vhost", VHOST]).expect("create the test vhost");
        rabbitmqctl(&["set_permissions", "-p", VHOST, "guest", ".*", ".*", ".*"])
            .expect("grant guest the test vhost");
        Vhost
    }
}

impl Drop for Vhost {
    fn drop(&mut self) {
        if let Err(error) = rabbitmqctl(&["delete_vhost", VHOST]) {
            eprintln!("{error}");
        }
    }
}

/// One topology and message set, applied to RabbitMQ and to an embedded
/// broker side by side.
struct Pair {
    channel: Channel,
    embedded: EmbeddedBroker,
}

impl Pair {
    async fn declare_exchange(&self, name: &str, kind: ExchangeKind) {
        let lapin_kind = match kind {
            ExchangeKind::Direct => lapin::ExchangeKind::Direct,
            ExchangeKind::Fanout => lapin::ExchangeKind::Fanout,
            ExchangeKind::Topic => lapin::ExchangeKind::Topic,
            ExchangeKind::Headers => lapin::ExchangeKind::Headers,
        };
        self.channel
            .exchange_declare(
                name.into(),
                lapin_kind,
                ExchangeDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("declare the exchange on RabbitMQ");
        let spec = ExchangeSpec {
            name: name.to_owned(),
            kind,
            durable: false,
            alternate_exchange: None,
        };
        self.embedded.declare_exchange(&spec).await.unwrap();
    }

    async fn declare_bound_queue(&self, exchange: &str, queue: &str, key: &str, args: Headers) {
        self.channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("declare the queue on RabbitMQ");
        self.channel
            .queue_bind(
                queue.into(),
                exchange.into(),
                key.into(),
                QueueBindOptions::default(),
                field_table(&args),
            )
            .await
            .expect("bind the queue on RabbitMQ");
        let spec = QueueSpec {
            name: queue.to_owned(),
            kind: QueueKind::Classic,
            durable: false,
            dead_letter_exchange: None,
            dead_letter_routing_key: None,
            message_ttl: None,
        };
        self.embedded.declare_queue(&spec).await.unwrap();
        let binding = BindingSpec {
            exchange: exchange.to_owned(),
            queue: queue.to_owned(),
            routing_key: key.to_owned(),
        };
        self.embedded
            .bind_queue_with_arguments(&binding, args)
            .await
            .unwrap();
    }

    /// Publishes message number `index`, whose body is that number.
    async fn publish(&self, exchange: &str, key: &str, headers: Headers, index: usize) {
        let body = index.to_string();
        let properties = BasicProperties::default().with_headers(field_table(&headers));
        self.channel
            .basic_publish(
                exchange.into(),
                key.into(),
                BasicPublishOptions::default(),
                body.as_bytes(),
                properties,
            )
            .await
            .expect("publish to RabbitMQ");
        let message = Message {
            routing_key: key.to_owned(),
            headers,
            body: Bytes::from(body),
            ..Message::default()
        };
        self.embedded.publish(exchange, message).await.unwrap();
    }

    /// Returns the message numbers in `queue` on RabbitMQ and on the embedded
    /// broker, removing them from both.
    async fn take(&self, queue: &str) -> (BTreeSet<usize>, BTreeSet<usize>) {
        let mut rabbitmq = BTreeSet::new();
        let no_ack = BasicGetOptions { no_ack: true };
        while let Some(message) = self
            .channel
            .basic_get(queue.into(), no_ack)
            .await
            .expect("get from RabbitMQ")
        {
            rabbitmq.insert(parse_index(&message.delivery.data));
        }

        let mut embedded = BTreeSet::new();
        let depth = self.embedded.queue_depth(queue).await.unwrap();
        let mut deliveries = self.embedded.consume(queue, "take", 0).await.unwrap();
        for _ in 0..depth {
            let delivery = tokio::time::timeout(Duration::from_secs(1), deliveries.next())
                .await
                .expect("a queued message is delivered")
                .unwrap()
                .unwrap();
            embedded.insert(parse_index(&delivery.message.body));
            delivery.ack().await.unwrap();
        }
        (rabbitmq, embedded)
    }
}

fn parse_index(body: &[u8]) -> usize {
    std::str::from_utf8(body)
        .ok()
        .and_then(|text| text.parse().ok())
        .expect("the body is a message number")
}

fn field_table(headers: &Headers) -> FieldTable {
    let mut table = FieldTable::default();
    for (name, value) in headers {
        let value = match value {
            HeaderValue::String(text) => AMQPValue::LongString(text.as_str().into()),
            HeaderValue::Int(number) => AMQPValue::LongLongInt(*number),
            HeaderValue::Bool(flag) => AMQPValue::Boolean(*flag),
        };
        table.insert(name.as_str().into(), value);
    }
    table
}

fn headers(pairs: &[(&str, &str)]) -> Headers {
    pairs
        .iter()
        .map(|&(name, value)| (name.to_owned(), HeaderValue::from(value)))
        .collect()
}

fn distinct<'a>(values: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    values.collect::<BTreeSet<_>>().into_iter().collect()
}

#[tokio::test]
#[ignore = "needs RabbitMQ at 127.0.0.1:5672 and `rabbitmqctl` on this machine"]
async fn routing_matches_rabbitmq() {
    let _vhost = Vhost::create();
    let connection = Connection::connect(URI, ConnectionProperties::default())
        .await
        .expect("connect to RabbitMQ at 127.0.0.1:5672 as guest");
    let channel = connection.create_channel().await.expect("open a channel");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("enable publisher confirms");
    let pair = Pair {
        channel,
        embedded: EmbeddedBroker::new(),
    };

    compare_topic(&pair).await;
    compare_headers(&pair).await;
}

/// Binds one queue per binding key of `TOPIC_CASES` and publishes every
/// routing key of `TOPIC_CASES`, so every binding key meets every routing key.
async fn compare_topic(pair: &Pair) {
    let binding_keys = distinct(TOPIC_CASES.iter().map(|case| case.0));
    let routing_keys = distinct(TOPIC_CASES.iter().map(|case| case.1));
    pair.declare_exchange("topics", ExchangeKind::Topic).await;
    for (index, binding_key) in binding_keys.iter().enumerate() {
        let queue = format!("topic-{index}");
        pair.declare_bound_queue("topics", &queue, binding_key, Headers::new())
            .await;
    }
    for (index, routing_key) in routing_keys.iter().enumerate() {
        pair.publish("topics", routing_key, Headers::new(), index)
            .await;
    }
    pair.channel
        .wait_for_confirms()
        .await
        .expect("RabbitMQ confirms every publish");

    let mut differences = Vec::new();
    let mut rabbitmq_routes = BTreeSet::new();
    for (queue_index, binding_key) in binding_keys.iter().enumerate() {
        let (rabbitmq, embedded) = pair.take(&format!("topic-{queue_index}")).await;
        for (key_index, routing_key) in routing_keys.iter().enumerate() {
            let by_rabbitmq = rabbitmq.contains(&key_index);
            if by_rabbitmq != embedded.contains(&key_index) {
                differences.push(format!(
                    "binding key `{binding_key}`, routing key `{routing_key}`: RabbitMQ \
                     routes: {by_rabbitmq}"
                ));
            }
            if by_rabbitmq {
                rabbitmq_routes.insert((*binding_key, *routing_key));
            }
        }
    }
    assert!(differences.is_empty(), "{}", differences.join("\n"));
    println!(
        "topic routing agrees with RabbitMQ on {} (binding key, routing key) pairs",
        binding_keys.len() * routing_keys.len()
    );

    // The table's expectations must be RabbitMQ's own.
    for &(binding_key, routing_key, expected) in TOPIC_CASES {
        assert_eq!(
            rabbitmq_routes.contains(&(binding_key, routing_key)),
            expected,
            "TOPIC_CASES entry `{binding_key}`, `{routing_key}`"
        );
    }
}

async fn compare_headers(pair: &Pair) {
    let bindings = [
        headers(&[("x-match", "all"), ("format", "pdf"), ("type", "report")]),
        headers(&[("x-match", "any"), ("format", "pdf"), ("type", "report")]),
        headers(&[("format", "pdf")]),
        headers(&[("x-match", "all")]),
        headers(&[("x-match", "any")]),
        headers(&[("x-match", "all"), ("x-tenant", "a")]),
        headers(&[("x-match", "all-with-x"), ("x-tenant", "a")]),
        headers(&[
            ("x-match", "any-with-x"),
            ("x-tenant", "a"),
            ("type", "log"),
        ]),
    ];
    let messages = [
        headers(&[]),
        headers(&[("format", "pdf")]),
        headers(&[("format", "pdf"), ("type", "report")]),
        headers(&[("format", "pdf"), ("type", "log")]),
        headers(&[("format", "txt"), ("type", "report"), ("x-tenant", "a")]),
        headers(&[("x-tenant", "b")]),
    ];
    pair.declare_exchange("headers", ExchangeKind::Headers)
        .await;
    for (index, arguments) in bindings.iter().enumerate() {
        let queue = format!("headers-{index}");
        pair.declare_bound_queue("headers", &queue, "", arguments.clone())
            .await;
    }
    for (index, message_headers) in messages.iter().enumerate() {
        pair.publish("headers", "", message_headers.clone(), index)
            .await;
    }
    pair.channel
        .wait_for_confirms()
        .await
        .expect("RabbitMQ confirms every publish");

    for (index, arguments) in bindings.iter().enumerate() {
        let (rabbitmq, embedded) = pair.take(&format!("headers-{index}")).await;
        assert_eq!(
            embedded, rabbitmq,
            "binding arguments {arguments:?}: message numbers routed (embedded, RabbitMQ)"
        );
    }
}
