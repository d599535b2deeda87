//! Manifests for tests of the chaos guest: the shop's events and producers
//! (`POST /orders` publishes `order.placed`, `POST /users` publishes
//! `user.created` to the topic exchange `events`), a fanout `dlx` with the
//! queue `dead-letters`, and one queue plus chaos consumer per
//! [`ChaosConsumer`].

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// A consumer that runs the chaos guest (`tests/guests/chaos.wasm`) on its
/// own queue, which is bound to `events` with one routing key.
#[derive(Clone, Debug)]
pub struct ChaosConsumer {
    /// Name of the consumer and of its queue.
    pub name: String,
    /// Binding key of the queue, such as `order.placed`.
    pub binding_key: String,
    /// `config.mode` of the chaos guest: ok, retry, reject, spin, trap,
    /// alloc, emit, connect or open.
    pub mode: String,
    /// Further `config` entries, such as `emit-type` for mode `emit`.
    pub config: Vec<(String, String)>,
    pub max_attempts: u32,
    pub backoff: String,
    pub timeout: String,
    pub concurrency: u32,
    pub prefetch: u16,
    /// `limits.emit_size`, when not the default.
    pub emit_size: Option<String>,
    /// `limits.calls_per_instance`, when not the default.
    pub calls_per_instance: Option<u32>,
    /// `grants` as a TOML inline table, such as `{ connect = ["127.0.0.1:80"] }`.
    pub grants: Option<String>,
}

impl ChaosConsumer {
    /// Creates a consumer with 3 attempts, a 100ms backoff, a 2s deadline,
    /// concurrency 4 and prefetch 16.
    pub fn new(name: &str, binding_key: &str, mode: &str) -> Self {
        ChaosConsumer {
            name: name.to_owned(),
            binding_key: binding_key.to_owned(),
            mode: mode.to_owned(),
            max_attempts: 3,
            backoff: "100ms".to_owned(),
            timeout: "2s".to_owned(),
            concurrency: 4,
            prefetch: 16,
            config: Vec::new(),
            emit_size: None,
            calls_per_instance: None,
            grants: None,
        }
    }

    /// Adds an entry to the consumer's `config` table.
    pub fn config(mut self, key: &str, value: &str) -> Self {
        self.config.push((key.to_owned(), value.to_owned()));
        self
    }

    pub fn emit_size(mut self, size: &str) -> Self {
        self.emit_size = Some(size.to_owned());
        self
    }

    pub fn calls_per_instance(mut self, calls: u32) -> Self {
        self.calls_per_instance = Some(calls);
        self
    }

    /// Sets `grants`, a TOML inline table.
    pub fn grants(mut self, table: &str) -> Self {
        self.grants = Some(table.to_owned());
        self
    }

    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts;
        self
    }

    pub fn timeout(mut self, timeout: &str) -> Self {
        self.timeout = timeout.to_owned();
        self
    }

    pub fn concurrency(mut self, concurrency: u32) -> Self {
        self.concurrency = concurrency;
        self
    }

    pub fn prefetch(mut self, prefetch: u16) -> Self {
        self.prefetch = prefetch;
        self
    }
}

/// Writes `chaos.toml` into `dir` with a queue and a chaos consumer for each
/// entry, and returns its path.
pub fn chaos_manifest(dir: &Path, consumers: &[ChaosConsumer]) -> anyhow::Result<PathBuf> {
    write(dir, "chaos.toml", &render(consumers, true))
}

/// Writes `queues.toml` into `dir`: the same topology as [`chaos_manifest`]
/// but without consumers, so events posted to it stay in their queues.
pub fn queues_only_manifest(dir: &Path, consumers: &[ChaosConsumer]) -> anyhow::Result<PathBuf> {
    write(dir, "queues.toml", &render(consumers, false))
}

fn write(dir: &Path, name: &str, text: &str) -> anyhow::Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, text)?;
    Ok(path)
}

/// Quotes a string as a TOML basic string.
pub(crate) fn toml_string(text: &str) -> String {
    toml::Value::String(text.to_owned()).to_string()
}

fn render(consumers: &[ChaosConsumer], with_consumers: bool) -> String {
    let repo = crate::repo_root();
    let handlers = toml_string(&repo.join("tests/guests").to_string_lossy());
    let schemas = toml_string(&repo.join("schemas").to_string_lossy());
    let mut text = format!(
        r#"[runtime]
name = "chaos-test"
handlers = {handlers}
schemas = {schemas}

[brokers.rabbit]
kind = "amqp"
url = "${{RABBITMQ_URL}}"

[exchanges.events]
broker = "rabbit"
type = "topic"

[exchanges.dlx]
broker = "rabbit"
type = "fanout"

[queues.dead-letters]
broker = "rabbit"
bind = [{{ exchange = "dlx" }}]

[events."order.placed"]
schema = "order.placed.json"
publish = {{ exchange = "events" }}

[events."user.created"]
schema = "user.created.json"
publish = {{ exchange = "events" }}

[producers.order-service]
http = "POST /orders"
event = "order.placed"
id_field = "orderId"

[producers.user-service]
http = "POST /users"
event = "user.created"
id_field = "userId"
"#
    );
    for consumer in consumers {
        let name = toml_string(&consumer.name);
        let key = toml_string(&consumer.binding_key);
        let _ = write!(
            text,
            r#"
[queues.{name}]
broker = "rabbit"
bind = [{{ exchange = "events", key = {key} }}]
dead_letter = {{ exchange = "dlx" }}
"#
        );
        if !with_consumers {
            continue;
        }
        let _ = write!(
            text,
            r#"
[consumers.{name}]
queue = {name}
handler = "chaos.wasm"
prefetch = {prefetch}
concurrency = {concurrency}
retry = {{ max_attempts = {attempts}, backoff = {backoff} }}
limits = {{ timeout = {timeout}, memory = "64MiB"{emit_size}{calls_per_instance} }}
config = {{ mode = {mode}{config} }}
{grants}"#,
            prefetch = consumer.prefetch,
            concurrency = consumer.concurrency,
            attempts = consumer.max_attempts,
            backoff = toml_string(&consumer.backoff),
            timeout = toml_string(&consumer.timeout),
            mode = toml_string(&consumer.mode),
            emit_size = consumer
                .emit_size
                .as_ref()
                .map(|size| format!(", emit_size = {}", toml_string(size)))
                .unwrap_or_default(),
            calls_per_instance = consumer
                .calls_per_instance
                .map(|calls| format!(", calls_per_instance = {calls}"))
                .unwrap_or_default(),
            config = consumer
                .config
                .iter()
                .map(|(key, value)| format!(", {} = {}", toml_string(key), toml_string(value)))
                .collect::<String>(),
            grants = consumer
                .grants
                .as_ref()
                .map(|table| format!("grants = {table}\n"))
                .unwrap_or_default(),
        );
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendered_manifest_is_valid_toml() {
        let consumers = [
            ChaosConsumer::new("retrier", "order.placed", "retry"),
            ChaosConsumer::new("steady", "user.created", "ok").concurrency(1),
        ];
        let table: toml::Table = render(&consumers, true).parse().unwrap();
        assert_eq!(
            table["consumers"]["retrier"]["config"]["mode"].as_str(),
            Some("retry")
        );
        assert_eq!(
            table["consumers"]["steady"]["concurrency"].as_integer(),
            Some(1)
        );
        assert_eq!(
            table["queues"]["steady"]["bind"][0]["key"].as_str(),
            Some("user.created")
        );

        let table: toml::Table = render(&consumers, false).parse().unwrap();
        assert!(table.get("consumers").is_none());
        assert!(table["queues"].get("retrier").is_some());
    }
}
