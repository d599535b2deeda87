//! `switchyard explain`: the path of one event type through the topology,
//! worked out from the manifests alone. It names each exchange or topic the
//! event is published to, the bindings that match, the queues, the
//! consumers and their handlers, and where failed events go.

use std::fmt::Write as _;

use crate::manifest::{ConsumerDef, Manifest, QueueDef, binding_matches};
use crate::topology::{self, UNROUTABLE};

/// Returns the explanation of `event_type` as text, or an error naming the
/// defined event types. `key` replaces the routing key of every exchange
/// target.
pub fn explain(manifest: &Manifest, event_type: &str, key: Option<&str>) -> Result<String, String> {
    let Some(entry) = manifest.events.get(event_type) else {
        let known: Vec<&str> = manifest.events.keys().map(String::as_str).collect();
        return Err(format!(
            "event type `{event_type}` is not defined; defined types: {}",
            known.join(", ")
        ));
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "event `{event_type}`, schema `{}`",
        entry.def.schema.get_ref()
    );
    let mut consumers_reached = 0;

    for target in entry.def.publish.as_slice() {
        let exchange = target.exchange.get_ref();
        let routing_key = key.or(target.routing_key.as_deref()).unwrap_or(event_type);
        consumers_reached += explain_exchange(manifest, exchange, routing_key, &mut out);
    }
    for (topic, topic_entry, listed) in manifest.topics_of(event_type) {
        let key = match &listed.key {
            Some(key) => format!("key `{}`", key.get_ref()),
            None => "no key".to_owned(),
        };
        let _ = writeln!(
            out,
            "  published to topic `{topic}` (broker `{}`, {} partitions, {key})",
            topic_entry.def.broker.get_ref(),
            topic_entry.def.partitions
        );
        consumers_reached += explain_topic_consumers(manifest, topic, &mut out);
    }

    let published = !entry.def.publish.as_slice().is_empty()
        || manifest.topics.values().any(|topic| {
            topic
                .def
                .events
                .iter()
                .any(|e| e.event.get_ref() == event_type)
        });
    if !published {
        let _ = writeln!(
            out,
            "  published nowhere: the event has no `publish` target and no topic lists it"
        );
    } else if consumers_reached == 0 {
        let _ = writeln!(out, "  reaches no consumer of these manifests");
    }
    Ok(out)
}

/// Writes the queues that an exchange routes `routing_key` to, and their
/// consumers, and returns the number of consumers reached.
fn explain_exchange(
    manifest: &Manifest,
    exchange: &str,
    routing_key: &str,
    out: &mut String,
) -> usize {
    let Some(exchange_entry) = manifest.exchanges.get(exchange) else {
        let _ = writeln!(
            out,
            "  published to exchange `{exchange}`, which is not defined"
        );
        return 0;
    };
    let def = &exchange_entry.def;
    let _ = writeln!(
        out,
        "  published to exchange `{exchange}` ({}, broker `{}`) with routing key `{routing_key}`",
        def.kind.name(),
        def.broker.get_ref()
    );
    let matched = matching_queues(manifest, exchange, routing_key);
    if matched.is_empty() {
        let alternate = def
            .alternate_exchange
            .as_ref()
            .map(|alternate| alternate.get_ref().as_str())
            .unwrap_or(UNROUTABLE);
        let _ = writeln!(
            out,
            "    no binding matches, so the message goes to the alternate exchange `{alternate}`"
        );
        if alternate == UNROUTABLE && !manifest.exchanges.contains_key(UNROUTABLE) {
            let _ = writeln!(
                out,
                "      → queue `{UNROUTABLE}`, which switchyard declares to keep unroutable messages"
            );
            return 0;
        }
        return matching_queues(manifest, alternate, routing_key)
            .into_iter()
            .map(|(queue, def, binding)| {
                explain_queue(manifest, queue, def, &binding, "      ", out)
            })
            .sum();
    }
    matched
        .into_iter()
        .map(|(queue, def, binding)| explain_queue(manifest, queue, def, &binding, "    ", out))
        .sum()
}

/// Returns the queues bound to `exchange` with a binding that matches
/// `routing_key`, each with the binding key that matched.
pub(crate) fn matching_queues<'a>(
    manifest: &'a Manifest,
    exchange: &str,
    routing_key: &str,
) -> Vec<(&'a str, &'a QueueDef, String)> {
    let Some(kind) = manifest.exchanges.get(exchange).map(|e| e.def.kind) else {
        return Vec::new();
    };
    let mut matched = Vec::new();
    for (name, entry) in &manifest.queues {
        let binding = entry.def.bind.iter().find(|binding| {
            binding.exchange.get_ref() == exchange
                && binding_matches(kind, binding.key.get_ref(), routing_key)
        });
        if let Some(binding) = binding {
            matched.push((name.as_str(), &entry.def, binding.key.get_ref().clone()));
        }
    }
    matched
}

/// Writes one queue and the consumers that read it, and returns their number.
fn explain_queue(
    manifest: &Manifest,
    queue: &str,
    def: &QueueDef,
    binding: &str,
    indent: &str,
    out: &mut String,
) -> usize {
    let _ = writeln!(out, "{indent}→ queue `{queue}` (binding key `{binding}`)");
    let readers: Vec<(&String, &ConsumerDef)> = manifest
        .consumers
        .iter()
        .filter(|(_, c)| c.def.queue.as_ref().map(|q| q.get_ref().as_str()) == Some(queue))
        .map(|(name, c)| (name, &c.def))
        .collect();
    if readers.is_empty() {
        let reader = if def.external_consumers {
            "read by another application (`external_consumers = true`)"
        } else {
            "no consumer of these manifests reads it"
        };
        let _ = writeln!(out, "{indent}    {reader}");
    }
    for (name, consumer) in &readers {
        let _ = writeln!(
            out,
            "{indent}    consumer `{name}` runs `{}` (prefetch {}, concurrency {})",
            consumer.handler.get_ref(),
            consumer.prefetch,
            consumer.concurrency
        );
        let _ = match consumer.retry.max_attempts {
            1 => writeln!(out, "{indent}      on failure: one attempt only, no retry"),
            attempts => writeln!(
                out,
                "{indent}      on failure: up to {attempts} attempts, {} backoff doubling to {}, waiting in `{}`",
                consumer.retry.backoff,
                consumer.retry.max_backoff,
                topology::retry_queue_name(queue)
            ),
        };
        match &def.dead_letter {
            Some(dead_letter) => {
                let exchange = dead_letter.exchange.get_ref();
                let key = dead_letter
                    .routing_key
                    .as_deref()
                    .unwrap_or("the original routing key");
                let queues: Vec<String> = manifest
                    .queues
                    .iter()
                    .filter(|(_, q)| q.def.bind.iter().any(|b| b.exchange.get_ref() == exchange))
                    .map(|(name, _)| format!("`{name}`"))
                    .collect();
                let into = if queues.is_empty() {
                    "no queue".to_owned()
                } else {
                    queues.join(", ")
                };
                let _ = writeln!(
                    out,
                    "{indent}      then dead-lettered to exchange `{exchange}` with {key}, bound to {into}"
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "{indent}      then dead-lettered nowhere: the queue has no `dead_letter`"
                );
            }
        }
    }
    readers.len()
}

/// Writes the consumers of a topic and returns their number.
fn explain_topic_consumers(manifest: &Manifest, topic: &str, out: &mut String) -> usize {
    let readers: Vec<(&String, &ConsumerDef)> = manifest
        .consumers
        .iter()
        .filter(|(_, c)| c.def.topic.as_ref().map(|t| t.get_ref().as_str()) == Some(topic))
        .map(|(name, c)| (name, &c.def))
        .collect();
    if readers.is_empty() {
        let _ = writeln!(out, "    no consumer of these manifests reads it");
    }
    for (name, consumer) in &readers {
        let group = consumer.group.as_deref().unwrap_or(name);
        let _ = writeln!(
            out,
            "    consumer `{name}` in group `{group}` runs `{}`, one record at a time per partition",
            consumer.handler.get_ref()
        );
        let dead_letters = topology::dead_letter_topic(manifest, topic);
        let _ = match consumer.retry.max_attempts {
            1 => writeln!(
                out,
                "      on failure: one attempt only, then the dead-letter topic `{dead_letters}`"
            ),
            attempts => writeln!(
                out,
                "      on failure: up to {attempts} attempts in place, {} backoff doubling to {}, then the dead-letter topic `{dead_letters}`",
                consumer.retry.backoff, consumer.retry.max_backoff,
            ),
        };
    }
    readers.len()
}
