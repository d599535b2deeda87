//! RabbitMQ for tests: one vhost per test binary, and lapin helpers that
//! publish, read queues and delete what a manifest declared.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::Context;
use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeleteOptions,
    QueueDeclareOptions, QueueDeleteOptions, QueuePurgeOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use serde_json::Value;

/// Address of the RabbitMQ node the tests use.
pub const ADDRESS: &str = "127.0.0.1:5672";

/// Maximum wait for one `rabbitmqctl` command. Each takes about a second.
const RABBITMQCTL_TIMEOUT: Duration = Duration::from_secs(60);

/// The vhost of this test binary on the local RabbitMQ node.
#[derive(Debug)]
pub struct RabbitMq {
    pub vhost: String,
}

/// Returns this test binary's vhost, creating it on the first call.
///
/// The name contains the process id, so two runs of the same test binary at
/// once (two checkouts, say) do not share a vhost. A vhost stays after its
/// run for inspection and is deleted by the next run of the same test
/// binary, once its process has exited.
///
/// Panics with what is missing when RabbitMQ is not reachable or
/// `rabbitmqctl` fails.
pub fn rabbitmq() -> &'static RabbitMq {
    static RABBITMQ: OnceLock<Result<RabbitMq, String>> = OnceLock::new();
    match RABBITMQ.get_or_init(create_vhost) {
        Ok(rabbitmq) => rabbitmq,
        Err(message) => panic!("{message}"),
    }
}

fn create_vhost() -> Result<RabbitMq, String> {
    let address: SocketAddr = ADDRESS.parse().expect("ADDRESS is a socket address");
    TcpStream::connect_timeout(&address, Duration::from_secs(3)).map_err(|err| {
        format!(
            "RabbitMQ is not reachable at {ADDRESS} ({err}); these tests need a local \
             RabbitMQ with the guest user: start it with `rabbitmq-server -detached` \
             (`bash .ci/run` installs and starts it)"
        )
    })?;

    let prefix = vhost_prefix();
    delete_stale_vhosts(&prefix)?;
    let vhost = format!("{prefix}{}", std::process::id());
    rabbitmqctl(&["add_vhost", &vhost])?;
    rabbitmqctl(&["set_permissions", "-p", &vhost, "guest", ".*", ".*", ".*"])?;
    Ok(RabbitMq { vhost })
}

/// Deletes the vhosts named `<prefix><pid>` or `<prefix><pid>-<suffix>`
/// (see `ScopedVhost`) whose process no longer runs.
fn delete_stale_vhosts(prefix: &str) -> Result<(), String> {
    let output = rabbitmqctl(&["list_vhosts", "name"])?;
    let listing = String::from_utf8_lossy(&output.stdout).into_owned();
    for vhost in listing.lines().map(str::trim) {
        let Some(rest) = vhost.strip_prefix(prefix) else {
            continue;
        };
        let pid = rest.split_once('-').map_or(rest, |(pid, _)| pid);
        let running = pid
            .parse::<u32>()
            .is_ok_and(|pid| std::path::Path::new("/proc").join(pid.to_string()).exists());
        if !running {
            // Another run may delete it first, which is fine.
            let _ = rabbitmqctl(&["delete_vhost", vhost]);
        }
    }
    Ok(())
}

/// Returns `switchyard-test-<test binary>-`, such as
/// `switchyard-test-e2e_rabbitmq-`, without cargo's hash suffix.
fn vhost_prefix() -> String {
    let exe = std::env::current_exe().unwrap_or_default();
    let stem = exe
        .file_stem()
        .map(|stem| stem.to_string_lossy().into_owned())
        .unwrap_or_default();
    let binary = match stem.rsplit_once('-') {
        Some((name, hash)) if hash.len() == 16 && hash.chars().all(|c| c.is_ascii_hexdigit()) => {
            name.to_owned()
        }
        _ => stem,
    };
    let safe: String = binary
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("switchyard-test-{safe}-")
}

/// Runs `rabbitmqctl --quiet` with `args` and returns its output, or an
/// error with the output when it fails or times out.
pub fn rabbitmqctl(args: &[&str]) -> Result<Output, String> {
    let mut child = Command::new("rabbitmqctl")
        .arg("--quiet")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|err| {
            format!(
                "cannot run `rabbitmqctl` ({err}); the tests create a vhost with it: \
                 install RabbitMQ (`apt-get install rabbitmq-server`) or run `bash .ci/run`"
            )
        })?;
    let started = Instant::now();
    while child.try_wait().map_err(|err| err.to_string())?.is_none() {
        if started.elapsed() > RABBITMQCTL_TIMEOUT {
            let _ = child.kill();
            return Err(format!(
                "`rabbitmqctl {}` timed out after {RABBITMQCTL_TIMEOUT:?}",
                args.join(" ")
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = child.wait_with_output().map_err(|err| err.to_string())?;
    if !output.status.success() {
        return Err(format!(
            "`rabbitmqctl {}` failed with {}: {}{}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(output)
}

/// A message read from a queue.
#[derive(Clone, Debug)]
pub struct ReceivedMessage {
    pub exchange: String,
    pub routing_key: String,
    pub content_type: Option<String>,
    pub message_id: Option<String>,
    /// AMQP headers converted to JSON values: strings, numbers, booleans,
    /// arrays and objects.
    pub headers: BTreeMap<String, Value>,
    pub body: Vec<u8>,
}

impl ReceivedMessage {
    /// Returns a header as text; numbers are written in decimal.
    pub fn header_text(&self, name: &str) -> Option<String> {
        match self.headers.get(name)? {
            Value::String(text) => Some(text.clone()),
            other => Some(other.to_string()),
        }
    }

    /// Returns an integer header.
    pub fn header_int(&self, name: &str) -> Option<i64> {
        self.headers.get(name)?.as_i64()
    }

    /// Parses the body as JSON.
    pub fn json(&self) -> anyhow::Result<Value> {
        serde_json::from_slice(&self.body).with_context(|| {
            format!(
                "body of the message with routing key `{}` is not JSON: {}",
                self.routing_key,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

impl RabbitMq {
    /// Returns the AMQP URL of the vhost, for `RABBITMQ_URL`.
    pub fn url(&self) -> String {
        // vhost_name() keeps to characters that need no percent-encoding.
        format!("amqp://guest:guest@{ADDRESS}/{}", self.vhost)
    }

    /// Opens a connection to the vhost.
    pub async fn connect(&self) -> anyhow::Result<Connection> {
        Connection::connect(&self.url(), ConnectionProperties::default())
            .await
            .with_context(|| format!("cannot connect to RabbitMQ vhost `{}`", self.vhost))
    }

    /// Deletes every queue and exchange that the manifests declare, with the
    /// retry queues and the `unroutable` exchange and queue that switchyard
    /// adds, so that a test starts from an empty vhost. Names that do not
    /// exist are skipped.
    pub async fn reset(&self, manifests: &[&Path]) -> anyhow::Result<()> {
        let mut queues = vec!["unroutable".to_owned()];
        let mut exchanges = vec!["unroutable".to_owned()];
        for path in manifests {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read manifest `{}`", path.display()))?;
            let table: toml::Table = text
                .parse()
                .with_context(|| format!("manifest `{}` is not valid TOML", path.display()))?;
            for name in table_keys(&table, "queues") {
                queues.push(format!("{name}.retry"));
                queues.push(name);
            }
            exchanges.extend(table_keys(&table, "exchanges"));
        }

        let connection = self.connect().await?;
        let mut channel = connection.create_channel().await?;
        for queue in &queues {
            let options = QueueDeleteOptions::default();
            if channel
                .queue_delete(queue.as_str().into(), options)
                .await
                .is_err()
            {
                // An error closes the channel; the next name needs a new one.
                channel = connection.create_channel().await?;
            }
        }
        for exchange in &exchanges {
            let options = ExchangeDeleteOptions::default();
            if channel
                .exchange_delete(exchange.as_str().into(), options)
                .await
                .is_err()
            {
                channel = connection.create_channel().await?;
            }
        }
        let _ = connection.close(200, "reset done".into()).await;
        Ok(())
    }

    /// Publishes one message and waits for the broker's confirm.
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> anyhow::Result<()> {
        let connection = self.connect().await?;
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let confirm = channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                body,
                properties,
            )
            .await
            .with_context(|| format!("cannot publish to exchange `{exchange}`"))?
            .await
            .with_context(|| format!("publish to exchange `{exchange}` was not confirmed"))?;
        anyhow::ensure!(
            confirm.is_ack(),
            "RabbitMQ nacked the publish to exchange `{exchange}`"
        );
        let _ = connection.close(200, "published".into()).await;
        Ok(())
    }

    /// Removes and returns every ready message of a queue.
    pub async fn drain(&self, queue: &str) -> anyhow::Result<Vec<ReceivedMessage>> {
        let connection = self.connect().await?;
        let channel = connection.create_channel().await?;
        let mut messages = Vec::new();
        while let Some(message) = get(&channel, queue).await? {
            messages.push(message);
        }
        let _ = connection.close(200, "drained".into()).await;
        Ok(messages)
    }

    /// Deletes a queue as an operator would, with its bindings and messages.
    /// RabbitMQ cancels the queue's consumers.
    pub async fn delete_queue(&self, queue: &str) -> anyhow::Result<()> {
        let connection = self.connect().await?;
        let channel = connection.create_channel().await?;
        channel
            .queue_delete(queue.into(), QueueDeleteOptions::default())
            .await
            .with_context(|| format!("cannot delete queue `{queue}` in the test vhost"))?;
        let _ = connection.close(200, "queue deleted".into()).await;
        Ok(())
    }

    /// Removes every ready message of a queue and returns how many there
    /// were.
    pub async fn purge(&self, queue: &str) -> anyhow::Result<u32> {
        let connection = self.connect().await?;
        let channel = connection.create_channel().await?;
        let purged = channel
            .queue_purge(queue.into(), QueuePurgeOptions::default())
            .await
            .with_context(|| format!("cannot purge queue `{queue}` in the test vhost"))?;
        let _ = connection.close(200, "queue purged".into()).await;
        Ok(purged)
    }

    /// Returns the number of ready messages in a queue; an error when the
    /// queue does not exist.
    pub async fn depth(&self, queue: &str) -> anyhow::Result<u32> {
        let connection = self.connect().await?;
        let channel = connection.create_channel().await?;
        let options = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let declared = channel
            .queue_declare(queue.into(), options, FieldTable::default())
            .await
            .with_context(|| format!("queue `{queue}` does not exist in the test vhost"))?;
        let _ = connection.close(200, "depth read".into()).await;
        Ok(declared.message_count())
    }
}

fn table_keys(table: &toml::Table, section: &str) -> Vec<String> {
    table
        .get(section)
        .and_then(toml::Value::as_table)
        .map(|entries| entries.keys().cloned().collect())
        .unwrap_or_default()
}

async fn get(channel: &Channel, queue: &str) -> anyhow::Result<Option<ReceivedMessage>> {
    let options = BasicGetOptions { no_ack: true };
    let message = channel
        .basic_get(queue.into(), options)
        .await
        .with_context(|| format!("cannot read queue `{queue}`"))?;
    let Some(message) = message else {
        return Ok(None);
    };
    let properties = &message.delivery.properties;
    let headers = properties
        .headers()
        .as_ref()
        .map(|table| {
            table
                .inner()
                .iter()
                .map(|(name, value)| (name.to_string(), json_value(value)))
                .collect()
        })
        .unwrap_or_default();
    Ok(Some(ReceivedMessage {
        exchange: message.delivery.exchange.to_string(),
        routing_key: message.delivery.routing_key.to_string(),
        content_type: properties.content_type().as_ref().map(ToString::to_string),
        message_id: properties.message_id().as_ref().map(ToString::to_string),
        headers,
        body: message.delivery.data.clone(),
    }))
}

/// Converts an AMQP field value to the closest JSON value.
fn json_value(value: &AMQPValue) -> Value {
    match value {
        AMQPValue::Boolean(flag) => Value::from(*flag),
        AMQPValue::ShortShortInt(number) => Value::from(*number),
        AMQPValue::ShortShortUInt(number) => Value::from(*number),
        AMQPValue::ShortInt(number) => Value::from(*number),
        AMQPValue::ShortUInt(number) => Value::from(*number),
        AMQPValue::LongInt(number) => Value::from(*number),
        AMQPValue::LongUInt(number) => Value::from(*number),
        AMQPValue::LongLongInt(number) => Value::from(*number),
        AMQPValue::Float(number) => Value::from(*number),
        AMQPValue::Double(number) => Value::from(*number),
        AMQPValue::Timestamp(seconds) => Value::from(*seconds),
        AMQPValue::ShortString(text) => Value::from(text.as_str()),
        AMQPValue::LongString(text) => Value::from(String::from_utf8_lossy(text.as_bytes())),
        AMQPValue::ByteArray(bytes) => Value::from(String::from_utf8_lossy(bytes.as_slice())),
        AMQPValue::FieldArray(items) => items.as_slice().iter().map(json_value).collect(),
        AMQPValue::FieldTable(table) => Value::Object(
            table
                .inner()
                .iter()
                .map(|(name, value)| (name.to_string(), json_value(value)))
                .collect(),
        ),
        AMQPValue::DecimalValue(decimal) => Value::from(format!("{decimal:?}")),
        AMQPValue::Void => Value::Null,
    }
}

/// A vhost of one test on the local RabbitMQ node, with permissions for the
/// `guest` user, deleted on drop.
#[derive(Debug)]
pub struct ScopedVhost {
    pub name: String,
}

impl ScopedVhost {
    /// Creates the vhost `switchyard-test-<binary>-<pid>-<suffix>`. One that
    /// a crashed run left behind is deleted by the next run's
    /// `rabbitmq()`, like that run's own vhost.
    pub fn create(suffix: &str) -> anyhow::Result<ScopedVhost> {
        let name = format!("{}{}-{suffix}", vhost_prefix(), std::process::id());
        rabbitmqctl(&["add_vhost", &name]).map_err(anyhow::Error::msg)?;
        rabbitmqctl(&["set_permissions", "-p", &name, "guest", ".*", ".*", ".*"])
            .map_err(anyhow::Error::msg)?;
        Ok(ScopedVhost { name })
    }
}

impl Drop for ScopedVhost {
    fn drop(&mut self) {
        if let Err(message) = rabbitmqctl(&["delete_vhost", &self.name]) {
            eprintln!("cannot delete test vhost `{}`: {message}", self.name);
        }
    }
}
