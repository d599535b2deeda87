//! Differential fuzzing of `binding_matches` against a reference model of
//! AMQP 0-9-1 topic matching written for clarity, not speed. `switchyard
//! explain` and the manifest's route checks call `binding_matches`, and its
//! topic matching is the embedded broker's.
//!
//! Input: the binding key, a newline, then the routing key. Bytes that are
//! not UTF-8 are replaced, as no AMQP key can contain them.

#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard::manifest::{ExchangeType, binding_matches};

/// Keys with more words are skipped, because the reference model backtracks
/// and takes exponential time in the number of `#` words.
const MAX_WORDS: usize = 10;

/// Splits a key into words as RabbitMQ does: the empty key has no words,
/// and every `.` separates two words, either of which may be empty.
fn words(key: &str) -> Vec<&str> {
    if key.is_empty() {
        Vec::new()
    } else {
        key.split('.').collect()
    }
}

/// Reports whether the pattern words match the key words: `*` takes exactly
/// one word, `#` takes zero or more, and any other word (`a*` included)
/// matches only an equal word.
fn reference_topic_match(pattern: &[&str], key: &[&str]) -> bool {
    match pattern.split_first() {
        None => key.is_empty(),
        Some((&"#", rest)) => {
            (0..=key.len()).any(|taken| reference_topic_match(rest, &key[taken..]))
        }
        Some((&"*", rest)) => !key.is_empty() && reference_topic_match(rest, &key[1..]),
        Some((literal, rest)) => {
            key.first() == Some(literal) && reference_topic_match(rest, &key[1..])
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (binding_key, routing_key) = text.split_once('\n').unwrap_or((&text, ""));
    let pattern = words(binding_key);
    let key = words(routing_key);
    if pattern.len() > MAX_WORDS || key.len() > MAX_WORDS {
        return;
    }

    let expected = reference_topic_match(&pattern, &key);
    assert_eq!(
        binding_matches(ExchangeType::Topic, binding_key, routing_key),
        expected,
        "topic binding key {binding_key:?}, routing key {routing_key:?}"
    );
    assert_eq!(
        binding_matches(ExchangeType::Direct, binding_key, routing_key),
        binding_key == routing_key,
        "direct binding key {binding_key:?}, routing key {routing_key:?}"
    );
    assert!(binding_matches(
        ExchangeType::Fanout,
        binding_key,
        routing_key
    ));
    assert!(binding_matches(
        ExchangeType::Headers,
        binding_key,
        routing_key
    ));
});
