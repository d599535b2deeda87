//! Cross-reference checks: every name a manifest refers to is defined, on
//! the right broker, and every route is declared once.

use std::collections::BTreeMap;
use std::time::Duration;

use toml::Spanned;

use super::{AuthDef, BrokerKind, Entry, Manifest, Problem, Purpose, closest};

/// RabbitMQ's default `consumer_timeout`: 1800000 ms on RabbitMQ 3.10.8.
const RABBITMQ_CONSUMER_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// The longest queue or exchange name that AMQP 0-9-1 allows, in bytes.
const AMQP_NAME_LIMIT: usize = 255;

/// The longest topic name that Kafka allows, in bytes.
const KAFKA_TOPIC_LIMIT: usize = 249;

/// The longest `x-message-ttl` that RabbitMQ accepts: 2^32 - 1 ms, about
/// 49.7 days.
const RABBITMQ_TTL_LIMIT: Duration = Duration::from_millis(u32::MAX as u64);

/// The smallest linear memory a guest can have: one WebAssembly page.
const WASM_PAGE: u64 = 64 * 1024;

/// CloudEvents attributes that can serve as a Kafka partition key.
pub const KEY_ATTRIBUTES: [&str; 5] = ["id", "source", "subject", "type", "time"];

/// Reports every reference to an undefined or misplaced entity.
pub(super) fn references(manifest: &Manifest, purpose: Purpose, problems: &mut Vec<Problem>) {
    empty_names(manifest, problems);
    long_names(manifest, problems);
    brokers(manifest, problems);
    exchanges(manifest, problems);
    queues(manifest, problems);
    topics(manifest, problems);
    events(manifest, problems);
    producers(manifest, problems);
    consumers(manifest, purpose, problems);
    shared_queues(manifest, problems);
    credentials(manifest, problems);
    auth(manifest, problems);
    super::routes::routes(manifest, problems);
    literal_passwords(manifest, problems);
}

/// Reports entries named by an empty key, such as `[queues.""]`, or a key
/// of spaces only. RabbitMQ
/// would name such a queue itself, `""` is its default exchange, and a
/// CloudEvents type must not be empty.
fn empty_names(manifest: &Manifest, problems: &mut Vec<Problem>) {
    fn report<T>(
        kind: &str,
        example: &str,
        entries: &BTreeMap<String, Entry<T>>,
        problems: &mut Vec<Problem>,
    ) {
        // A name of spaces only is as good as none.
        if let Some((name, entry)) = entries.iter().find(|(name, _)| name.trim().is_empty()) {
            problems.push(
                Problem::error(
                    "empty-name",
                    format!("`[{kind}s.{}]` has an empty name", table_key(name)),
                )
                .at_entry(entry)
                .hint(format!("name it, such as `[{kind}s.{example}]`")),
            );
        }
    }
    report("broker", "rabbit", &manifest.brokers, problems);
    report("exchange", "events", &manifest.exchanges, problems);
    report("queue", "orders", &manifest.queues, problems);
    report("topic", "orders", &manifest.topics, problems);
    report("event", "\"order.placed\"", &manifest.events, problems);
    report("producer", "order-service", &manifest.producers, problems);
    report("consumer", "email-service", &manifest.consumers, problems);
    report("credential", "checkout", &manifest.credentials, problems);
}

/// Reports exchange names and event types that the broker would refuse for
/// their length: AMQP 0-9-1 allows 255 bytes for an exchange name and for
/// a routing key, which is the event type, and Kafka 249 for a topic name.
/// Queue names are checked with their retry queue in `queue_limits`.
fn long_names(manifest: &Manifest, problems: &mut Vec<Problem>) {
    let amqp = "AMQP 0-9-1 allows";
    for (name, entry) in &manifest.exchanges {
        if name.len() > AMQP_NAME_LIMIT {
            problems.push(too_long("exchange name", name, amqp, AMQP_NAME_LIMIT).at_entry(entry));
        }
    }
    for (name, entry) in &manifest.events {
        if name.len() > AMQP_NAME_LIMIT && !entry.def.publish.as_slice().is_empty() {
            let rule = "it is the routing key of its publishes, and AMQP 0-9-1 allows";
            problems.push(too_long("event type", name, rule, AMQP_NAME_LIMIT).at_entry(entry));
        }
    }
    for (name, entry) in &manifest.topics {
        if name.len() > KAFKA_TOPIC_LIMIT {
            let problem = too_long("topic name", name, "Kafka allows", KAFKA_TOPIC_LIMIT);
            problems.push(problem.at_entry(entry));
        }
    }
}

/// The `name-too-long` problem of `what`, such as `exchange name`, whose
/// limit `rule` explains. The name is left out: the problem points at it.
fn too_long(what: &str, name: &str, rule: &str, limit: usize) -> Problem {
    Problem::error(
        "name-too-long",
        format!(
            "{what} is {} bytes long, but {rule} at most {limit}",
            name.len()
        ),
    )
    .hint(format!("shorten the {what} to {limit} bytes or fewer"))
}

/// Writes `name` as a key of a TOML table header: bare when TOML allows
/// it, quoted otherwise, so that `order.placed` stays one key.
pub(super) fn table_key(name: &str) -> String {
    let bare = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if bare {
        name.to_owned()
    } else {
        toml::Value::String(name.to_owned()).to_string()
    }
}

/// Reports `name` when it is not a key of `defined`, with the closest key as a hint.
fn require<T>(
    broken: &[(&'static str, String)],
    problems: &mut Vec<Problem>,
    file: usize,
    name: &Spanned<String>,
    kind: &str,
    defined: &BTreeMap<String, Entry<T>>,
) -> bool {
    if defined.contains_key(name.get_ref()) {
        return true;
    }
    if broken
        .iter()
        .any(|(k, n)| *k == kind && n == name.get_ref())
    {
        // Its own parse problem is reported already.
        return false;
    }
    let table = format!("[{kind}s.{}]", table_key(name.get_ref()));
    let hint = match closest(name.get_ref(), defined.keys()) {
        Some(candidate) => format!("did you mean `{candidate}`?"),
        None if defined.is_empty() => format!("define a `{table}` table"),
        None => format!(
            "define `{table}` or use one of: {}",
            defined
                .keys()
                .map(String::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    problems.push(
        Problem::error(
            undefined_code(kind),
            format!("{kind} `{}` is not defined", name.get_ref()),
        )
        .at(file, name.span())
        .hint(hint),
    );
    false
}

fn undefined_code(kind: &str) -> &'static str {
    match kind {
        "broker" => "undefined-broker",
        "exchange" => "undefined-exchange",
        "queue" => "undefined-queue",
        "event" => "undefined-event",
        "topic" => "undefined-topic",
        "credential" => "undefined-credential",
        _ => "undefined-reference",
    }
}

/// Reports an exchange on another broker than the entity that uses it.
fn same_broker(
    manifest: &Manifest,
    problems: &mut Vec<Problem>,
    file: usize,
    exchange: &Spanned<String>,
    broker: &str,
    user: &str,
) {
    if let Some(other) = manifest.exchange_broker(exchange.get_ref())
        && other != broker
    {
        problems.push(
            Problem::error(
                "cross-broker-reference",
                format!(
                    "exchange `{}` is on broker `{other}` but {user} is on broker `{broker}`",
                    exchange.get_ref()
                ),
            )
            .at(file, exchange.span())
            .hint("an AMQP binding or dead-letter target must be on the same broker"),
        );
    }
}

/// Reports a broker reference to a broker of another protocol, such as a
/// queue on a Kafka broker.
fn broker_kind(
    manifest: &Manifest,
    problems: &mut Vec<Problem>,
    file: usize,
    broker: &Spanned<String>,
    expected: BrokerKind,
    user: &str,
) {
    let Some(entry) = manifest.brokers.get(broker.get_ref()) else {
        return;
    };
    if entry.def.kind == expected {
        return;
    }
    let hint = match expected {
        BrokerKind::Amqp => "exchanges and queues live on an `amqp` broker; use a topic on Kafka",
        BrokerKind::Kafka => "topics live on a `kafka` broker; use exchanges and queues on AMQP",
    };
    problems.push(
        Problem::error(
            "wrong-broker-kind",
            format!(
                "{user} is on broker `{}`, which is of kind `{}`, not `{}`",
                broker.get_ref(),
                entry.def.kind.as_str(),
                expected.as_str()
            ),
        )
        .at(file, broker.span())
        .hint(hint),
    );
}

/// Reports a missing address and keys that belong to the other protocol.
fn brokers(manifest: &Manifest, problems: &mut Vec<Problem>) {
    for (name, entry) in &manifest.brokers {
        let def = &entry.def;
        let (needed, example, foreign) = match def.kind {
            BrokerKind::Amqp => (
                def.url.is_none(),
                "url = \"${RABBITMQ_URL}\"",
                def.bootstrap
                    .as_ref()
                    .map(|b| ("bootstrap", b.span()))
                    .or_else(|| {
                        def.options
                            .values()
                            .next()
                            .map(|value| ("options", value.span()))
                    }),
            ),
            BrokerKind::Kafka => (
                def.bootstrap.is_none(),
                "bootstrap = \"${KAFKA_BOOTSTRAP}\"",
                def.url.as_ref().map(|u| ("url", u.span())),
            ),
        };
        let kind = def.kind.as_str();
        if needed {
            let key = example.split(' ').next().unwrap_or_default();
            problems.push(
                Problem::error(
                    "missing-key",
                    format!("broker `{name}` of kind `{kind}` has no `{key}`"),
                )
                .at_entry(entry)
                .hint(format!("add `{example}` to `[brokers.{name}]`")),
            );
        }
        if let Some((key, span)) = foreign {
            problems.push(
                Problem::error(
                    "unknown-key",
                    format!("`{key}` does not apply to broker `{name}` of kind `{kind}`"),
                )
                .at(entry.file, span)
                .hint(match def.kind {
                    BrokerKind::Amqp => {
                        "an `amqp` broker takes `url`; `bootstrap` and `options` are for `kafka`"
                    }
                    BrokerKind::Kafka => {
                        "a `kafka` broker takes `bootstrap` and `options`; `url` is for `amqp`"
                    }
                }),
            );
        }
    }
}

fn exchanges(manifest: &Manifest, problems: &mut Vec<Problem>) {
    for (name, entry) in &manifest.exchanges {
        let def = &entry.def;
        let broker_defined = require(
            &manifest.broken,
            problems,
            entry.file,
            &def.broker,
            "broker",
            &manifest.brokers,
        );
        if broker_defined {
            let user = format!("exchange `{name}`");
            broker_kind(
                manifest,
                problems,
                entry.file,
                &def.broker,
                BrokerKind::Amqp,
                &user,
            );
        }
        if let Some(alternate) = &def.alternate_exchange
            && require(
                &manifest.broken,
                problems,
                entry.file,
                alternate,
                "exchange",
                &manifest.exchanges,
            )
            && broker_defined
        {
            let user = format!("exchange `{name}`");
            same_broker(
                manifest,
                problems,
                entry.file,
                alternate,
                def.broker.get_ref(),
                &user,
            );
        }
    }
}

/// Reports a queue name or message TTL that RabbitMQ would refuse when the
/// topology is declared.
fn queue_limits(
    manifest: &Manifest,
    problems: &mut Vec<Problem>,
    name: &str,
    entry: &Entry<super::QueueDef>,
) {
    // A consumer of the queue gets a retry queue named after it.
    let consumed = manifest.consumers.values().any(|consumer| {
        consumer
            .def
            .queue
            .as_ref()
            .is_some_and(|queue| queue.get_ref() == name)
    });
    let suffix = crate::topology::retry_queue_name("").len();
    let longest = if consumed {
        name.len() + suffix
    } else {
        name.len()
    };
    if longest > AMQP_NAME_LIMIT {
        // The name itself is left out: the problem points at it, and it
        // is long.
        let message = if consumed {
            format!(
                "queue name is {} bytes long, and {longest} with the `.retry` suffix of its retry queue, but AMQP 0-9-1 allows at most {AMQP_NAME_LIMIT}",
                name.len()
            )
        } else {
            format!(
                "queue name is {longest} bytes long, but AMQP 0-9-1 allows at most {AMQP_NAME_LIMIT}"
            )
        };
        let room = AMQP_NAME_LIMIT - (longest - name.len());
        problems.push(
            Problem::error("name-too-long", message)
                .at_entry(entry)
                .hint(format!("shorten the queue name to {room} bytes or fewer")),
        );
    }
    if let Some(ttl) = &entry.def.message_ttl
        && ttl.0 > RABBITMQ_TTL_LIMIT
    {
        problems.push(
            Problem::error(
                "invalid-value",
                format!(
                    "`message_ttl` of queue `{name}` is {} ms, above RabbitMQ's limit of {} ms (about 49.7 days)",
                    ttl.0.as_millis(),
                    RABBITMQ_TTL_LIMIT.as_millis()
                ),
            )
            .at_key(entry, "message_ttl")
            .hint("set `message_ttl` to 49 days or less, or leave it out so messages do not expire"),
        );
    }
}

fn queues(manifest: &Manifest, problems: &mut Vec<Problem>) {
    for (name, entry) in &manifest.queues {
        let def = &entry.def;
        let user = format!("queue `{name}`");
        // With its broker undefined, the queue is on no broker, so the
        // same-broker checks below would only repeat that error.
        let broker_defined = require(
            &manifest.broken,
            problems,
            entry.file,
            &def.broker,
            "broker",
            &manifest.brokers,
        );
        if broker_defined {
            broker_kind(
                manifest,
                problems,
                entry.file,
                &def.broker,
                BrokerKind::Amqp,
                &user,
            );
        }
        for binding in &def.bind {
            if require(
                &manifest.broken,
                problems,
                entry.file,
                &binding.exchange,
                "exchange",
                &manifest.exchanges,
            ) && broker_defined
            {
                same_broker(
                    manifest,
                    problems,
                    entry.file,
                    &binding.exchange,
                    def.broker.get_ref(),
                    &user,
                );
            }
        }
        queue_limits(manifest, problems, name, entry);
        if let Some(dead_letter) = &def.dead_letter
            && require(
                &manifest.broken,
                problems,
                entry.file,
                &dead_letter.exchange,
                "exchange",
                &manifest.exchanges,
            )
            && broker_defined
        {
            same_broker(
                manifest,
                problems,
                entry.file,
                &dead_letter.exchange,
                def.broker.get_ref(),
                &user,
            );
        }
    }
}

fn topics(manifest: &Manifest, problems: &mut Vec<Problem>) {
    for (name, entry) in &manifest.topics {
        let def = &entry.def;
        let user = format!("topic `{name}`");
        if require(
            &manifest.broken,
            problems,
            entry.file,
            &def.broker,
            "broker",
            &manifest.brokers,
        ) {
            broker_kind(
                manifest,
                problems,
                entry.file,
                &def.broker,
                BrokerKind::Kafka,
                &user,
            );
        }
        for (key, value) in [
            ("partitions", def.partitions),
            ("replication_factor", def.replication_factor),
        ] {
            if value < 1 {
                problems.push(
                    Problem::error(
                        "invalid-value",
                        format!("topic `{name}` has `{key} = {value}`"),
                    )
                    .at_key(entry, key)
                    .hint(format!("set `{key}` to 1 or more")),
                );
            }
        }
        let mut listed: BTreeMap<&str, ()> = BTreeMap::new();
        for target in &def.events {
            require(
                &manifest.broken,
                problems,
                entry.file,
                &target.event,
                "event",
                &manifest.events,
            );
            if listed.insert(target.event.get_ref(), ()).is_some() {
                problems.push(
                    Problem::error(
                        "duplicate-route",
                        format!(
                            "event `{}` is listed twice in topic `{name}`",
                            target.event.get_ref()
                        ),
                    )
                    .at(entry.file, target.event.span())
                    .hint("list each event once per topic"),
                );
            }
            if let Some(key) = &target.key
                && let Err(message) = parse_partition_key(key.get_ref())
            {
                problems.push(
                    Problem::error("invalid-partition-key", message)
                        .at(entry.file, key.span())
                        .hint(format!(
                            "use one of {} or `data.` followed by a field path, such as `data.customerId`",
                            KEY_ATTRIBUTES.map(|a| format!("`{a}`")).join(", ")
                        )),
                );
            }
        }
    }
}

/// The source of a Kafka record's partition key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PartitionKey {
    /// A CloudEvents attribute such as `id` or `subject`.
    Attribute(String),
    /// A field of the event data, as a path of object keys.
    Data(Vec<String>),
}

/// Parses a topic event's `key`, such as `subject` or `data.customer.id`.
pub fn parse_partition_key(key: &str) -> Result<PartitionKey, String> {
    if KEY_ATTRIBUTES.contains(&key) {
        return Ok(PartitionKey::Attribute(key.to_owned()));
    }
    let Some(path) = key.strip_prefix("data.") else {
        return Err(format!("invalid partition key `{key}`"));
    };
    let fields: Vec<String> = path.split('.').map(str::to_owned).collect();
    if fields.iter().any(String::is_empty) {
        return Err(format!(
            "invalid partition key `{key}`: a field path has no empty parts"
        ));
    }
    Ok(PartitionKey::Data(fields))
}

fn events(manifest: &Manifest, problems: &mut Vec<Problem>) {
    for entry in manifest.events.values() {
        for target in entry.def.publish.as_slice() {
            require(
                &manifest.broken,
                problems,
                entry.file,
                &target.exchange,
                "exchange",
                &manifest.exchanges,
            );
        }
    }
}

/// Parses a producer's `http` value such as `POST /orders`.
pub fn parse_route(route: &str) -> Result<(String, String), String> {
    let mut parts = route.split_whitespace();
    let (Some(method), Some(path), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err(format!(
            "invalid route `{route}`; write a method and a path, such as `POST /orders`"
        ));
    };
    let method = method.to_ascii_uppercase();
    if !matches!(method.as_str(), "POST" | "PUT" | "PATCH") {
        return Err(format!(
            "invalid method `{method}` in route `{route}`; a producer accepts a body, so use POST, PUT or PATCH"
        ));
    }
    if !path.starts_with('/') {
        return Err(format!(
            "invalid path `{path}` in route `{route}`; a path starts with `/`"
        ));
    }
    if let Some(problem) = path_problem(path) {
        return Err(format!(
            "invalid path `{path}` in route `{route}`: {problem}"
        ));
    }
    if matches!(path, "/healthz" | "/readyz" | "/metrics") {
        return Err(format!(
            "path `{path}` is reserved for the runtime's own endpoints"
        ));
    }
    Ok((method, path.to_owned()))
}

/// Says why a producer path cannot be served as written, if it cannot.
/// A producer serves one fixed path: the router would read `{name}` as a
/// path parameter, and a request path never contains its query or
/// fragment.
fn path_problem(path: &str) -> Option<&'static str> {
    if path.contains(['{', '}']) {
        return Some(
            "a producer serves one fixed path, so it cannot have `{...}` parameters; write the path in full",
        );
    }
    if path.contains(['?', '#']) {
        return Some(
            "a request's query or fragment is not part of its path; remove the part from `?` or `#` on",
        );
    }
    if path
        .split('/')
        .any(|segment| segment.starts_with([':', '*']))
    {
        return Some(
            "a path segment cannot start with `:` or `*`; the router reserves them for parameters",
        );
    }
    None
}

fn producers(manifest: &Manifest, problems: &mut Vec<Problem>) {
    let mut routes: BTreeMap<(String, String), &str> = BTreeMap::new();
    for (name, entry) in &manifest.producers {
        let def = &entry.def;
        require(
            &manifest.broken,
            problems,
            entry.file,
            &def.event,
            "event",
            &manifest.events,
        );
        match parse_route(def.http.get_ref()) {
            Ok(route) => {
                if let Some(first) = routes.insert(route.clone(), name) {
                    problems.push(
                        Problem::error(
                            "duplicate-route",
                            format!(
                                "route `{} {}` is already served by producer `{first}`",
                                route.0, route.1
                            ),
                        )
                        .at(entry.file, def.http.span())
                        .hint("give each producer its own method and path"),
                    );
                }
            }
            Err(message) => {
                problems
                    .push(Problem::error("invalid-route", message).at(entry.file, def.http.span()));
            }
        }
    }
}

/// Warns about a queue that consumers with different handlers read. They
/// compete for its messages, so each handler gets only some of the events.
fn shared_queues(manifest: &Manifest, problems: &mut Vec<Problem>) {
    let mut first_reader: BTreeMap<&str, (&str, &str)> = BTreeMap::new();
    for (name, entry) in &manifest.consumers {
        let Some(queue) = &entry.def.queue else {
            continue;
        };
        let handler = entry.def.handler.get_ref().as_str();
        let Some((other, other_handler)) = first_reader.get(queue.get_ref().as_str()).copied()
        else {
            first_reader.insert(queue.get_ref(), (name, handler));
            continue;
        };
        if other_handler == handler {
            continue;
        }
        problems.push(
            Problem::warning(
                "shared-queue",
                format!(
                    "consumers `{other}` and `{name}` both read queue `{}` with different \
                     handlers, so each handler gets only some of its events",
                    queue.get_ref()
                ),
            )
            .at(entry.file, queue.span())
            .hint(
                "give each consumer a queue of its own, bound to the same events, so that \
                 every handler gets every event",
            ),
        );
    }
}

fn consumers(manifest: &Manifest, purpose: Purpose, problems: &mut Vec<Problem>) {
    for (name, entry) in &manifest.consumers {
        let def = &entry.def;
        match (&def.queue, &def.topic) {
            (Some(queue), None) => consumer_queue(manifest, problems, name, entry.file, queue),
            (None, Some(topic)) => {
                require(
                    &manifest.broken,
                    problems,
                    entry.file,
                    topic,
                    "topic",
                    &manifest.topics,
                );
            }
            (Some(_), Some(topic)) => problems.push(
                Problem::error(
                    "ambiguous-source",
                    format!("consumer `{name}` has both `queue` and `topic`"),
                )
                .at(entry.file, topic.span())
                .hint("a consumer reads one queue or one topic; define two consumers to read both"),
            ),
            (None, None) => problems.push(
                Problem::error(
                    "missing-key",
                    format!("consumer `{name}` has neither `queue` nor `topic`"),
                )
                .at_entry(entry)
                .hint("add `queue = \"...\"` for RabbitMQ or `topic = \"...\"` for Kafka"),
            ),
        }
        if def.group.is_some() && def.topic.is_none() {
            problems.push(
                Problem::error(
                    "unknown-key",
                    format!("consumer `{name}` has a `group` but reads no topic"),
                )
                .at_entry(entry)
                .hint("`group` names a Kafka consumer group; queue consumers share their queue instead"),
            );
        }
        if def.retry.max_attempts == 0 {
            problems.push(
                Problem::error(
                    "invalid-value",
                    format!("consumer `{name}` has `retry.max_attempts = 0`"),
                )
                .at_key(entry, "retry.max_attempts")
                .hint("set at least 1: the number of handler calls for one event"),
            );
        }
        if def.concurrency == 0 {
            problems.push(
                Problem::error(
                    "invalid-value",
                    format!("consumer `{name}` has `concurrency = 0`"),
                )
                .at_key(entry, "concurrency")
                .hint("set at least 1: the number of handler calls running at once"),
            );
        }
        if def.limits.timeout.0.is_zero() {
            problems.push(
                Problem::error(
                    "invalid-value",
                    format!("consumer `{name}` has `limits.timeout = \"0s\"`, so every call would time out"),
                )
                .at_key(entry, "limits.timeout")
                .hint("set the deadline of one handler call above zero, such as `2s`"),
            );
        }
        let timeout = def.limits.timeout.0;
        if !timeout.is_zero() && timeout < crate::handler::EPOCH_TICK {
            problems.push(
                Problem::warning(
                    "deadline-below-tick",
                    format!(
                        "consumer `{name}` has `limits.timeout = \"{}\"`, but a handler that computes is checked against its deadline every {} ms, so it can run that long",
                        def.limits.timeout,
                        crate::handler::EPOCH_TICK.as_millis()
                    ),
                )
                .at_key(entry, "limits.timeout")
                .hint(format!(
                    "set `limits.timeout` to {} ms or more",
                    crate::handler::EPOCH_TICK.as_millis()
                )),
            );
        }
        if def.limits.memory.0 < WASM_PAGE {
            problems.push(
                Problem::error(
                    "invalid-value",
                    format!(
                        "consumer `{name}` has a `limits.memory` of {} bytes, less than one WebAssembly page ({WASM_PAGE} bytes), so every call would fail",
                        def.limits.memory.0
                    ),
                )
                .at_key(entry, "limits.memory")
                .hint("set at least the memory the handler needs, such as `64MiB`"),
            );
        }
        if def.retry.backoff.0 > def.retry.max_backoff.0 {
            problems.push(
                Problem::warning(
                    "backoff-over-max-backoff",
                    format!(
                        "consumer `{name}` has `retry.backoff = \"{}\"` above `retry.max_backoff = \"{}\"`, so every retry waits {}",
                        def.retry.backoff, def.retry.max_backoff, def.retry.max_backoff
                    ),
                )
                .at_key(entry, "retry.backoff")
                .hint("lower `retry.backoff` or raise `retry.max_backoff`"),
            );
        }
        if def.limits.calls_per_instance == 0 {
            problems.push(
                Problem::error(
                    "invalid-value",
                    format!("consumer `{name}` has `limits.calls_per_instance = 0`"),
                )
                .at_key(entry, "limits.calls_per_instance")
                .hint("set at least 1: the calls one handler instance serves; 1 gives each call a fresh instance"),
            );
        }
        // RabbitMQ closes the channel of a delivery left unacknowledged for
        // its consumer_timeout and delivers the message again, so a handler
        // allowed to run longer is called again and again.
        if def.queue.is_some() && def.limits.timeout.0 >= RABBITMQ_CONSUMER_TIMEOUT {
            problems.push(
                Problem::warning(
                    "deadline-over-consumer-timeout",
                    format!(
                        "consumer `{name}` has a handler deadline (`limits.timeout`) of {}, not below RabbitMQ's default consumer_timeout of 30 minutes",
                        def.limits.timeout
                    ),
                )
                .at_key(entry, "limits.timeout")
                .hint("shorten `limits.timeout`, or raise `consumer_timeout` on the broker above it"),
            );
        }
        let path = manifest.handler_path(name).unwrap_or_default();
        if purpose == Purpose::Check && !path.exists() {
            problems.push(
                Problem::error(
                    "handler-not-found",
                    format!("handler file `{}` does not exist", path.display()),
                )
                .at(entry.file, def.handler.span())
                .hint(
                    "build the handler into that path, or correct `handler` or `runtime.handlers`",
                ),
            );
        }
    }
}

fn consumer_queue(
    manifest: &Manifest,
    problems: &mut Vec<Problem>,
    name: &str,
    file: usize,
    queue: &Spanned<String>,
) {
    if !require(
        &manifest.broken,
        problems,
        file,
        queue,
        "queue",
        &manifest.queues,
    ) {
        return;
    }
    let def = &manifest.queues[queue.get_ref()].def;
    if def.dead_letter.is_none() {
        problems.push(
            Problem::error(
                "missing-dead-letter",
                format!(
                    "consumer `{name}` reads queue `{}`, which has no dead-letter exchange",
                    queue.get_ref()
                ),
            )
            .at(file, queue.span())
            .hint(format!(
                "add `dead_letter = {{ exchange = \"...\" }}` to `[queues.{}]` so failed events are kept",
                table_key(queue.get_ref())
            )),
        );
    }
}

/// Reports a credential without exactly one secret, and a `header` that does
/// not apply or is not a valid header name.
fn credentials(manifest: &Manifest, problems: &mut Vec<Problem>) {
    for (name, entry) in &manifest.credentials {
        let def = &entry.def;
        match (&def.bearer, &def.api_key) {
            (None, None) => problems.push(
                Problem::error(
                    "missing-key",
                    format!("credential `{name}` has neither `bearer` nor `api_key`"),
                )
                .at_entry(entry)
                .hint("add `bearer = \"${API_TOKEN}\"` or `api_key = \"${API_KEY}\"`"),
            ),
            (Some(_), Some(api_key)) => problems.push(
                Problem::error(
                    "ambiguous-credential",
                    format!("credential `{name}` has both `bearer` and `api_key`"),
                )
                .at(entry.file, api_key.span())
                .hint("a credential is one token or one key; define a second credential for the other"),
            ),
            _ => {}
        }
        let Some(header) = &def.header else {
            continue;
        };
        if def.api_key.is_none() {
            problems.push(
                Problem::error(
                    "unknown-key",
                    format!(
                        "`header` does not apply to credential `{name}`, which has no `api_key`"
                    ),
                )
                .at(entry.file, header.span())
                .hint("remove `header`: a bearer token always comes in `Authorization`"),
            );
        } else if !is_header_name(header.get_ref()) {
            problems.push(
                Problem::error(
                    "invalid-value",
                    format!(
                        "`{}` in credential `{name}` is not a valid HTTP header name",
                        header.get_ref()
                    ),
                )
                .at(entry.file, header.span())
                .hint("use letters, digits and `-`, such as `X-Api-Key`"),
            );
        }
    }
}

/// Returns whether `name` is an HTTP field name: a non-empty RFC 9110 token.
fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Reports an `auth` that names an undefined credential or accepts nothing,
/// and warns about a credential that no producer accepts.
fn auth(manifest: &Manifest, problems: &mut Vec<Problem>) {
    let mut settings = Vec::new();
    if let Some(entry) = &manifest.auth {
        settings.push((entry.file, &entry.def, "`runtime.auth`".to_owned()));
    }
    for (name, entry) in &manifest.producers {
        if let Some(auth) = &entry.def.auth {
            settings.push((entry.file, auth, format!("the `auth` of producer `{name}`")));
        }
    }
    for (file, auth, setting) in settings {
        let AuthDef::Credentials(names) = auth.get_ref() else {
            continue;
        };
        if names.is_empty() {
            problems.push(
                Problem::error(
                    "invalid-value",
                    format!("{setting} is an empty list, which no request can pass"),
                )
                .at(file, auth.span())
                .hint("list the credentials to accept, or write `auth = \"none\"` to accept requests without credentials"),
            );
        }
        for name in names {
            require(
                &manifest.broken,
                problems,
                file,
                name,
                "credential",
                &manifest.credentials,
            );
        }
    }

    for (name, entry) in &manifest.credentials {
        let accepted = manifest.producers.keys().any(|producer| {
            manifest
                .producer_auth(producer)
                .names()
                .iter()
                .any(|accepted| accepted.get_ref() == name)
        });
        if !accepted {
            problems.push(
                Problem::warning(
                    "unused-credential",
                    format!("no producer accepts credential `{name}`"),
                )
                .at_entry(entry)
                .hint(format!(
                    "add `\"{name}\"` to `runtime.auth` or to a producer's `auth`, or remove the credential"
                )),
            );
        }
    }
}

/// Warns about a password written into a broker URL, a secret Kafka option
/// or a SASL password, outside any `${VAR}` reference, and about a
/// credential whose token or key is written in the manifest, literally or
/// as a default. Defaults in broker URLs, such as
/// `${URL:-amqp://guest:guest@…}`, are left alone: they are local
/// development values.
fn literal_passwords(manifest: &Manifest, problems: &mut Vec<Problem>) {
    for (name, entry) in &manifest.credentials {
        let (key, what) = match (&entry.def.bearer, &entry.def.api_key) {
            (Some(_), _) => ("bearer", "token"),
            (None, Some(_)) => ("api_key", "API key"),
            (None, None) => continue,
        };
        let Some(value) = entry.def.secret() else {
            continue;
        };
        let message = match written_secret(value.get_ref()) {
            Some(WrittenSecret::Literal) => {
                format!("the {what} of credential `{name}` is written in the manifest")
            }
            Some(WrittenSecret::Default) => format!(
                "the {what} of credential `{name}` has a default in the manifest, which is accepted whenever its variable is unset or empty"
            ),
            None => continue,
        };
        let suffix = if key == "bearer" { "TOKEN" } else { "API_KEY" };
        let variable = format!("{}_{suffix}", name.to_ascii_uppercase().replace('-', "_"));
        problems.push(
            Problem::warning("literal-password", message)
                .at(entry.file, value.span())
                .hint(format!(
                    "read it from the environment without a default, such as `{key} = \"${{{variable}}}\"`"
                )),
        );
    }
    for (name, entry) in &manifest.brokers {
        if let Some(url) = &entry.def.url
            && has_literal_password(url.get_ref())
        {
            problems.push(
                Problem::warning(
                    "literal-password",
                    format!("the URL of broker `{name}` contains a password"),
                )
                .at(entry.file, url.span())
                .hint("read it from the environment, such as `url = \"${RABBITMQ_URL}\"`"),
            );
        }
        for (key, value) in &entry.def.options {
            let secret = key.ends_with("password") || key.ends_with(".key.pem");
            if secret && !value.get_ref().contains("${") {
                problems.push(
                    Problem::warning(
                        "literal-password",
                        format!("option `{key}` of broker `{name}` is written in the manifest"),
                    )
                    .at(entry.file, value.span())
                    .hint(format!(
                        "read it from the environment, such as `\"{key}\" = \"${{KAFKA_PASSWORD}}\"`"
                    )),
                );
            }
        }
        if let Some(sasl) = &entry.def.sasl
            && !sasl.password.get_ref().contains("${")
        {
            problems.push(
                Problem::warning(
                    "literal-password",
                    format!("the SASL password of broker `{name}` is written in the manifest"),
                )
                .at(entry.file, sasl.password.span())
                .hint("read it from the environment, such as `password = \"${KAFKA_PASSWORD}\"`"),
            );
        }
    }
}

/// A way of writing a secret in the manifest other than `${VAR}` alone.
#[derive(Debug, PartialEq, Eq)]
enum WrittenSecret {
    /// Text outside any `${...}` reference, such as `s3cret` or `tok-${SUFFIX}`.
    Literal,
    /// A `${VAR:-default}` reference, whose default the manifest contains.
    Default,
}

fn written_secret(text: &str) -> Option<WrittenSecret> {
    if !outside_references(text).is_empty() {
        return Some(WrittenSecret::Literal);
    }
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        let inner = &rest[start + 2..];
        let end = inner.find('}').unwrap_or(inner.len());
        if inner[..end].contains(":-") {
            return Some(WrittenSecret::Default);
        }
        rest = &inner[end..];
    }
    None
}

/// Returns the text outside every `${...}` reference.
fn outside_references(text: &str) -> String {
    let mut outside = String::new();
    let mut depth = 0;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '$' && chars.peek() == Some(&'{') {
            depth += 1;
            chars.next();
        } else if c == '}' && depth > 0 {
            depth -= 1;
        } else if depth == 0 {
            outside.push(c);
        }
    }
    outside
}

/// Reports whether `user:password@` appears in the text outside `${...}`.
fn has_literal_password(url: &str) -> bool {
    literal_password(url).is_some()
}

/// Returns the password of `user:password@` in the text outside `${...}`.
pub(super) fn literal_password(url: &str) -> Option<String> {
    let outside = outside_references(url);
    let (_, rest) = outside.split_once("://")?;
    let authority = rest.split('/').next().unwrap_or_default();
    let (userinfo, _) = authority.rsplit_once('@')?;
    let (_, password) = userinfo.split_once(':')?;
    (!password.is_empty()).then(|| password.to_owned())
}

#[cfg(test)]
mod password_tests {
    use super::{WrittenSecret, has_literal_password, is_header_name, written_secret};

    #[test]
    fn written_secrets_detected() {
        let cases = [
            ("${API_TOKEN}", None),
            ("${A}${B}", None),
            ("s3cret", Some(WrittenSecret::Literal)),
            ("tok-${SUFFIX}", Some(WrittenSecret::Literal)),
            ("${API_TOKEN:-dev-token}", Some(WrittenSecret::Default)),
            ("${A}${B:-x}", Some(WrittenSecret::Default)),
        ];
        for (text, expected) in cases {
            assert_eq!(written_secret(text), expected, "{text}");
        }
    }

    #[test]
    fn header_names_checked() {
        assert!(is_header_name("X-Api-Key"));
        assert!(is_header_name("api_key"));
        assert!(!is_header_name(""));
        assert!(!is_header_name("X Api Key"));
        assert!(!is_header_name("X-Key:"));
    }

    #[test]
    fn literal_password_detected() {
        assert!(has_literal_password("amqp://app:s3cret@rabbit:5672/%2f"));
        assert!(has_literal_password("amqp://app:${PASS}x@rabbit/"));
    }

    #[test]
    fn interpolated_password_accepted() {
        assert!(!has_literal_password("${RABBITMQ_URL}"));
        assert!(!has_literal_password(
            "${RABBITMQ_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"
        ));
        assert!(!has_literal_password(
            "amqp://app:${RABBITMQ_PASSWORD}@rabbit:5672/%2f"
        ));
        assert!(!has_literal_password("amqp://rabbit:5672/%2f"));
        assert!(!has_literal_password("amqp://app@rabbit:5672/%2f"));
    }
}
