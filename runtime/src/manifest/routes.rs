//! Checks of the routes between events, exchanges, queues and consumers:
//! binding keys that RabbitMQ would not read as intended, and warnings for
//! events, queues and consumers that the declared routes leave unconnected.

use std::collections::BTreeSet;

use super::check::table_key;
use super::{Entry, ExchangeType, Manifest, Problem, QueueDef};

/// Maximum length of an AMQP routing or binding key in bytes: the key is a
/// `shortstr`, whose length is one octet.
const MAX_KEY_BYTES: usize = 255;

/// Reports every route problem of the manifest.
pub(super) fn routes(manifest: &Manifest, problems: &mut Vec<Problem>) {
    binding_keys(manifest, problems);
    // An entry that did not parse, text lost to a syntax error or a name
    // that does not resolve may be the missing link of a route, so the
    // warnings below would be guesses until that error is fixed.
    let incomplete = problems.iter().any(|problem| breaks_routes(problem.code));
    if !manifest.broken.is_empty() || incomplete {
        return;
    }
    unpublished_events(manifest, problems);
    unrouted_events(manifest, problems);
    unread_queues(manifest, problems);
    unfed_consumers(manifest, problems);
}

/// Reports whether a problem leaves the routes between entries unknown.
fn breaks_routes(code: &str) -> bool {
    code.starts_with("undefined-") && code != "undefined-variable"
        || matches!(
            code,
            "invalid-toml"
                | "invalid-binding-key"
                | "wrong-broker-kind"
                | "cross-broker-reference"
                | "ambiguous-source"
        )
}

/// Reports binding keys that are too long, topic patterns with a wildcard
/// inside a word, and wildcards bound to a direct exchange.
fn binding_keys(manifest: &Manifest, problems: &mut Vec<Problem>) {
    for (name, entry) in &manifest.queues {
        for binding in &entry.def.bind {
            let key = binding.key.get_ref();
            let exchange = binding.exchange.get_ref();
            let at = |problem: Problem| problem.at(entry.file, binding.key.span());
            if key.len() > MAX_KEY_BYTES {
                problems.push(at(Problem::error(
                    "invalid-binding-key",
                    format!(
                        "the binding key of queue `{name}` to exchange `{exchange}` is {} bytes long",
                        key.len()
                    ),
                )
                .hint(format!(
                    "AMQP keys have at most {MAX_KEY_BYTES} bytes; shorten the key"
                ))));
                continue;
            }
            let Some(kind) = manifest.exchanges.get(exchange).map(|e| e.def.kind) else {
                continue;
            };
            match kind {
                ExchangeType::Topic => {
                    if let Err(word) = check_topic_pattern(key) {
                        problems.push(at(Problem::error(
                            "invalid-binding-key",
                            format!(
                                "binding key `{key}` of queue `{name}` is not a valid topic pattern: \
                                 the word `{word}` mixes a wildcard with other characters"
                            ),
                        )
                        .hint(format!(
                            "`*` and `#` are wildcards only as whole words between dots: write `*` \
                             for exactly one word or `#` for zero or more words, such as `{}`",
                            suggest_pattern(key)
                        ))));
                    }
                }
                ExchangeType::Direct if key.contains(['*', '#']) => {
                    problems.push(at(Problem::warning(
                        "wildcard-on-direct-exchange",
                        format!(
                            "binding key `{key}` of queue `{name}` contains a wildcard, but exchange \
                             `{exchange}` is a direct exchange, which matches keys literally"
                        ),
                    )
                    .hint(format!(
                        "set `type = \"topic\"` on `[exchanges.{}]` to match patterns, or bind \
                         the exact routing key",
                        table_key(exchange)
                    ))));
                }
                ExchangeType::Direct | ExchangeType::Fanout | ExchangeType::Headers => {}
            }
        }
    }
}

/// Checks that `*` and `#` appear in a topic binding key only as whole
/// words, and returns the first word where they do not.
fn check_topic_pattern(key: &str) -> Result<(), &str> {
    match key
        .split('.')
        .find(|word| word.len() > 1 && word.contains(['*', '#']))
    {
        Some(word) => Err(word),
        None => Ok(()),
    }
}

/// Returns the key with each word that contains a wildcard replaced by that
/// wildcard alone, such as `order.*` for `order.*ed`.
fn suggest_pattern(key: &str) -> String {
    key.split('.')
        .map(|word| {
            if word.contains('#') {
                "#"
            } else if word.contains('*') {
                "*"
            } else {
                word
            }
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// Warns about events that have no AMQP publish target and that no Kafka
/// topic lists: publishing one sends it nowhere. An HTTP producer of such an
/// event is an error.
fn unpublished_events(manifest: &Manifest, problems: &mut Vec<Problem>) {
    for (event_type, entry) in &manifest.events {
        let on_topic = manifest.topics_of(event_type).next().is_some();
        if entry.def.publish.as_slice().is_empty() && !on_topic {
            // Every request to an HTTP producer of such an event would fail,
            // so that case is an error rather than a warning.
            if let Some((producer, def)) = manifest
                .producers
                .iter()
                .find(|(_, producer)| producer.def.event.get_ref() == event_type)
            {
                problems.push(
                    Problem::error(
                        "unpublished-event",
                        format!(
                            "producer `{producer}` accepts event `{event_type}`, which has no \
                             publish target and is in no topic's `events`, so every request \
                             would fail"
                        ),
                    )
                    .at(def.file, def.def.event.span())
                    .hint(format!(
                        "add `publish = {{ exchange = \"...\" }}` to `[events.\"{event_type}\"]`, \
                         or list it in a topic's `events`"
                    )),
                );
                continue;
            }
            problems.push(
                Problem::warning(
                    "unpublished-event",
                    format!("event `{event_type}` has no publish target and no topic lists it"),
                )
                .at(entry.file, entry.def.schema.span())
                .hint(format!(
                    "add `publish = {{ exchange = \"...\" }}` to `[events.\"{event_type}\"]`, or list \
                     it in a topic's `events`"
                )),
            );
        }
    }
}

/// Warns about events whose publish targets no binding routes to a queue.
/// They are kept in the `unroutable` queue, but no consumer receives them.
fn unrouted_events(manifest: &Manifest, problems: &mut Vec<Problem>) {
    for (event_type, entry) in &manifest.events {
        for target in entry.def.publish.as_slice() {
            let exchange = target.exchange.get_ref();
            let key = target.routing_key.as_deref().unwrap_or(event_type);
            if !manifest.exchanges.contains_key(exchange) {
                continue;
            }
            let routed = manifest
                .queues
                .values()
                .any(|queue| routes_to(manifest, &queue.def, exchange, key));
            if !routed {
                problems.push(
                    Problem::warning(
                        "unrouted-event",
                        format!(
                            "event `{event_type}` is published to exchange `{exchange}` with routing key `{key}`, which no binding routes to a queue"
                        ),
                    )
                    .at(entry.file, target.exchange.span())
                    .hint("bind a queue to it; until then these events wait in the `unroutable` queue"),
                );
            }
        }
    }
}

/// Warns about queues that no consumer of these manifests reads. Queues
/// bound to a dead-letter or alternate exchange are exempt: they keep
/// messages for an operator to inspect.
fn unread_queues(manifest: &Manifest, problems: &mut Vec<Problem>) {
    let read: BTreeSet<&str> = manifest
        .consumers
        .values()
        .filter_map(|consumer| consumer.def.queue.as_ref())
        .map(|queue| queue.get_ref().as_str())
        .collect();
    let parking = parking_exchanges(manifest);
    for (name, entry) in &manifest.queues {
        let def = &entry.def;
        let parks = def
            .bind
            .iter()
            .any(|binding| parking.contains(binding.exchange.get_ref().as_str()));
        if read.contains(name.as_str()) || def.external_consumers || parks {
            continue;
        }
        problems.push(
            Problem::warning(
                "unread-queue",
                format!("no consumer reads queue `{name}`"),
            )
            .at_entry(entry)
            .hint(format!(
                "add a consumer with `queue = \"{name}\"`, or set `external_consumers = true` on \
                 `[queues.{name}]` when another application reads it"
            )),
        );
    }
}

/// Warns about consumers whose queue no declared event reaches: no event
/// is published to an exchange bound to the queue with a matching key, and
/// the queue is bound to no dead-letter or alternate exchange.
fn unfed_consumers(manifest: &Manifest, problems: &mut Vec<Problem>) {
    let parking = parking_exchanges(manifest);
    for (name, entry) in &manifest.consumers {
        let Some(queue_name) = &entry.def.queue else {
            continue;
        };
        let Some(Entry { def: queue, .. }) = manifest.queues.get(queue_name.get_ref()) else {
            continue;
        };
        let parks = queue
            .bind
            .iter()
            .any(|binding| parking.contains(binding.exchange.get_ref().as_str()));
        let fed = manifest.events.iter().any(|(event_type, event)| {
            event.def.publish.as_slice().iter().any(|target| {
                let key = target.routing_key.as_deref().unwrap_or(event_type);
                routes_to(manifest, queue, target.exchange.get_ref(), key)
            })
        });
        if fed || parks {
            continue;
        }
        problems.push(
            Problem::warning(
                "unfed-consumer",
                format!(
                    "consumer `{name}` reads queue `{}`, which receives no declared event",
                    queue_name.get_ref()
                ),
            )
            .at(entry.file, queue_name.span())
            .hint(format!(
                "bind `[queues.{}]` to an exchange that an event publishes to, with a key that \
                 matches the event's routing key",
                table_key(queue_name.get_ref())
            )),
        );
    }
}

/// Returns the exchanges that receive messages no event publishes directly:
/// dead-letter exchanges of queues and alternate exchanges of exchanges.
fn parking_exchanges(manifest: &Manifest) -> BTreeSet<&str> {
    let dead_letter = manifest
        .queues
        .values()
        .filter_map(|queue| queue.def.dead_letter.as_ref())
        .map(|dead_letter| dead_letter.exchange.get_ref().as_str());
    let alternate = manifest
        .exchanges
        .values()
        .filter_map(|exchange| exchange.def.alternate_exchange.as_ref())
        .map(|alternate| alternate.get_ref().as_str());
    dead_letter.chain(alternate).collect()
}

/// Reports whether a message published to `exchange` with `routing_key`
/// reaches `queue` through one of its bindings.
fn routes_to(manifest: &Manifest, queue: &QueueDef, exchange: &str, routing_key: &str) -> bool {
    let Some(kind) = manifest.exchanges.get(exchange).map(|e| e.def.kind) else {
        return false;
    };
    queue.bind.iter().any(|binding| {
        binding.exchange.get_ref() == exchange
            && binding_matches(kind, binding.key.get_ref(), routing_key)
    })
}

/// Reports whether a binding with `binding_key` on an exchange of `kind`
/// takes a message with `routing_key`. A headers exchange is treated as
/// taking every message, because manifests bind headers exchanges without
/// header arguments.
pub fn binding_matches(kind: ExchangeType, binding_key: &str, routing_key: &str) -> bool {
    match kind {
        ExchangeType::Fanout | ExchangeType::Headers => true,
        ExchangeType::Direct => binding_key == routing_key,
        ExchangeType::Topic => crate::broker::embedded::topic_matches(binding_key, routing_key),
    }
}

#[cfg(test)]
mod tests {
    use super::{check_topic_pattern, suggest_pattern};

    #[test]
    fn topic_patterns_accepted() {
        for key in [
            "order.placed",
            "order.*",
            "#",
            "*.*.eu",
            "order.#",
            "",
            "a..b",
        ] {
            assert_eq!(check_topic_pattern(key), Ok(()), "{key}");
        }
    }

    #[test]
    fn wildcard_inside_word_rejected() {
        assert_eq!(check_topic_pattern("order.*ed"), Err("*ed"));
        assert_eq!(check_topic_pattern("order#"), Err("order#"));
        assert_eq!(check_topic_pattern("a.b.#*"), Err("#*"));
    }

    #[test]
    fn suggestion_keeps_whole_words() {
        assert_eq!(suggest_pattern("order.*ed"), "order.*");
        assert_eq!(suggest_pattern("order#"), "#");
        assert_eq!(suggest_pattern("eu.order*.placed"), "eu.*.placed");
    }
}
