//! Topic routing of the embedded broker against RabbitMQ: one manifest with
//! one queue per binding pattern runs once on RabbitMQ and once with
//! `--embedded`, and each run publishes every routing key once.
//!
//! Both runs find out the same way which queue received which key. Each
//! queue has a consumer that runs the chaos guest in mode `ok`. The guest
//! logs every call with its consumer, which names the queue, and the event
//! id, which names the key. The expected table is RabbitMQ 3.10's behaviour, checked by
//! the RabbitMQ run: a routing key is split at every `.`, so `""` has no
//! words and `"a."` has the words `a` and `""`; `*` matches exactly one word,
//! empty or not; `#` matches zero or more words.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;
use switchyard_tests::{BrokerMode, Switchyard, component, poll, rabbitmq, repo_root, serial};

/// Routing keys, each published once.
const KEYS: [&str; 15] = [
    "a.b", "a", "a.b.c", "a.x.b", "a.x.y.b", "", "b", ".a", "a.", "a..b", "x.b", ".", "a.b.b", "*",
    "a.#",
];

/// Every key: what `#` matches.
const ALL: &[&str] = &KEYS;

/// Binding patterns and the keys RabbitMQ routes to each. `*` and `#` in a
/// routing key are ordinary characters.
const CASES: [(&str, &[&str]); 16] = [
    ("a.b", &["a.b"]),
    ("a.*", &["a.b", "a.", "a.#"]),
    (
        "a.#",
        &[
            "a.b", "a", "a.b.c", "a.x.b", "a.x.y.b", "a.", "a..b", "a.b.b", "a.#",
        ],
    ),
    ("#", ALL),
    ("*", &["a", "b", "*"]),
    ("*.b", &["a.b", "x.b"]),
    (
        "#.b",
        &["a.b", "a.x.b", "a.x.y.b", "b", "a..b", "x.b", "a.b.b"],
    ),
    ("a.#.b", &["a.b", "a.x.b", "a.x.y.b", "a..b", "a.b.b"]),
    ("a.*.b", &["a.x.b", "a..b", "a.b.b"]),
    ("", &[""]),
    ("a..b", &["a..b"]),
    (".a", &[".a"]),
    ("a.", &["a."]),
    ("#.#", ALL),
    ("*.*", &["a.b", ".a", "a.", "x.b", ".", "a.#"]),
    (
        "a.*.#",
        &[
            "a.b", "a.b.c", "a.x.b", "a.x.y.b", "a.", "a..b", "a.b.b", "a.#",
        ],
    ),
];

/// Keys received, by binding pattern.
type Routes = BTreeMap<&'static str, BTreeSet<&'static str>>;

fn quoted(text: &str) -> String {
    toml::Value::String(text.to_owned()).to_string()
}

fn queue_name(pattern_index: usize) -> String {
    format!("pattern-{pattern_index:02}")
}

/// Writes the manifest and the probe event schema into `dir`.
fn write_manifest(dir: &Path) -> anyhow::Result<PathBuf> {
    let schemas = dir.join("schemas");
    std::fs::create_dir_all(&schemas)?;
    let schema =
        json!({ "$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object" });
    std::fs::write(schemas.join("probe.json"), schema.to_string())?;

    let handlers = quoted(&repo_root().join("tests/guests").to_string_lossy());
    let mut text = format!(
        r#"[runtime]
name = "routing-test"
handlers = {handlers}
schemas = "schemas"

[brokers.rabbit]
kind = "amqp"
url = "${{RABBITMQ_URL}}"

[exchanges.routing]
broker = "rabbit"
type = "topic"

[exchanges.dlx]
broker = "rabbit"
type = "fanout"

[queues.dead-letters]
broker = "rabbit"
bind = [{{ exchange = "dlx" }}]
"#
    );
    for (index, (pattern, _)) in CASES.iter().enumerate() {
        let name = queue_name(index);
        let pattern = quoted(pattern);
        let _ = write!(
            text,
            r#"
[queues.{name}]
broker = "rabbit"
bind = [{{ exchange = "routing", key = {pattern} }}]
dead_letter = {{ exchange = "dlx" }}

[consumers.{name}]
queue = "{name}"
handler = "chaos.wasm"
concurrency = 4
config = {{ mode = "ok" }}
"#
        );
    }
    for (index, key) in KEYS.iter().enumerate() {
        let key = quoted(key);
        let _ = write!(
            text,
            r#"
[events."probe-{index:02}"]
schema = "probe.json"
publish = {{ exchange = "routing", routing_key = {key} }}

[producers.probe-{index:02}]
http = "POST /probe/{index:02}"
event = "probe-{index:02}"
"#
        );
    }
    let path = dir.join("routing.toml");
    std::fs::write(&path, text)?;
    Ok(path)
}

fn expected_routes() -> Routes {
    CASES
        .iter()
        .map(|(pattern, keys)| (*pattern, keys.iter().copied().collect()))
        .collect()
}

/// Runs the manifest on one broker, publishes every key once and returns
/// which queue got which key.
async fn observe(mode: BrokerMode) -> anyhow::Result<Routes> {
    let dir = tempfile::tempdir()?;
    let manifest = write_manifest(dir.path())?;
    if mode == BrokerMode::RabbitMq {
        rabbitmq().reset(&[&manifest]).await?;
    }
    let process = Switchyard::start(dir.path(), &[manifest], mode.clone()).await?;

    let mut key_of_event = BTreeMap::new();
    for (index, key) in KEYS.iter().enumerate() {
        let body = json!({ "key": key });
        let event_id = process
            .publish(&format!("/probe/{index:02}"), &body)
            .await?;
        key_of_event.insert(event_id, *key);
    }

    // Wait for as many calls as the table predicts (the RabbitMQ run checks
    // the table), then a little longer so that extra deliveries show up. A
    // broker that delivers fewer leaves the wait at the timeout, and the
    // comparison shows what is missing.
    let predicted: usize = CASES.iter().map(|(_, keys)| keys.len()).sum();
    let _ = poll(Duration::from_secs(20), || async {
        (process.chaos_calls().len() >= predicted).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(700)).await;

    let calls = process.chaos_calls();
    let mut routes: Routes = CASES
        .iter()
        .map(|(pattern, _)| (*pattern, BTreeSet::new()))
        .collect();
    for call in &calls {
        let index: usize = call
            .consumer
            .strip_prefix("pattern-")
            .and_then(|index| index.parse().ok())
            .unwrap_or_else(|| panic!("call from an unknown consumer: {call:?}"));
        let pattern = CASES[index].0;
        let key = key_of_event[&call.event_id];
        assert_eq!(
            call.attempt,
            1,
            "{} retried key {key:?} on pattern {pattern:?}",
            mode.label()
        );
        let first = routes
            .get_mut(pattern)
            .expect("every pattern has an entry")
            .insert(key);
        assert!(
            first,
            "{} delivered key {key:?} twice to pattern {pattern:?}",
            mode.label()
        );
    }
    process.stop_cleanly().await?;
    Ok(routes)
}

/// Lists every pattern whose keys differ, with both sides.
fn differences(expected: &Routes, actual: &Routes) -> String {
    let mut text = String::new();
    for (pattern, wanted) in expected {
        let got = &actual[pattern];
        if wanted != got {
            let missing: Vec<_> = wanted.difference(got).collect();
            let extra: Vec<_> = got.difference(wanted).collect();
            let _ = writeln!(
                text,
                "pattern {pattern:?}: missing keys {missing:?}, extra keys {extra:?}"
            );
        }
    }
    text
}

#[tokio::test]
async fn embedded_topic_routing_matches_rabbitmq() -> anyhow::Result<()> {
    let _serial = serial().await;
    component("tests/guests/chaos.wasm")?;
    let expected = expected_routes();

    let on_rabbitmq = observe(BrokerMode::RabbitMq).await?;
    let table_errors = differences(&expected, &on_rabbitmq);
    assert!(
        table_errors.is_empty(),
        "RabbitMQ routed differently from the table in this test (fix the table):\n{table_errors}"
    );

    let embedded = observe(BrokerMode::Embedded).await?;
    let routing_errors = differences(&on_rabbitmq, &embedded);
    assert!(
        routing_errors.is_empty(),
        "the embedded broker routed differently from RabbitMQ:\n{routing_errors}"
    );
    Ok(())
}
