//! What a handler can reach: the sandbox test guest
//! (`tests/guests/sandbox.wasm`) prints every environment variable and
//! preopened folder it gets, for a consumer with grants and one without.
//! The chaos guest tries connections and files that it was not granted, and
//! the tests check that each is denied, logged and counted.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use switchyard_tests::shop::{DEAD_LETTERED, HANDLED, order_body, user_body};
use switchyard_tests::{
    BrokerMode, ChaosConsumer, LogLine, Metrics, Stopped, Switchyard, chaos_manifest, component,
    repo_root,
};

const TIMEOUT: Duration = Duration::from_secs(30);

/// Writes a manifest with two consumers of `user.created` that run the
/// sandbox guest: `granted`, with one variable and one folder, and `plain`.
fn write_manifest(dir: &Path) -> anyhow::Result<PathBuf> {
    let handlers = dir.join("handlers");
    std::fs::create_dir_all(&handlers)?;
    std::fs::copy(
        component("tests/guests/sandbox.wasm")?,
        handlers.join("sandbox.wasm"),
    )?;
    std::fs::create_dir_all(dir.join("reference"))?;
    std::fs::write(dir.join("reference/rates.txt"), "1.0")?;
    let schemas = toml::Value::String(repo_root().join("schemas").to_string_lossy().into_owned());
    let mut text = format!(
        r#"[runtime]
name = "sandbox-test"
handlers = "handlers"
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

[events."user.created"]
schema = "user.created.json"
publish = {{ exchange = "events" }}

[producers.user-service]
http = "POST /users"
event = "user.created"
id_field = "userId"

[consumers.granted]
queue = "granted"
handler = "sandbox.wasm"
grants = {{ env = ["SANDBOX_GRANTED", "SANDBOX_UNSET"], read_dirs = {{ "/reference" = "reference" }} }}

[consumers.plain]
queue = "plain"
handler = "sandbox.wasm"
"#
    );
    for queue in ["granted", "plain"] {
        text.push_str(&format!(
            r#"
[queues.{queue}]
broker = "rabbit"
bind = [{{ exchange = "events", key = "user.created" }}]
dead_letter = {{ exchange = "dlx" }}
"#
        ));
    }
    let path = dir.join("sandbox.toml");
    std::fs::write(&path, text)?;
    Ok(path)
}

/// Returns the guest's stdout lines of one consumer.
fn printed_by<'a>(lines: &'a [LogLine], consumer: &str) -> Vec<&'a str> {
    lines
        .iter()
        .filter(|line| line.field("stream") == Some("stdout"))
        .filter(|line| line.field("consumer") == Some(consumer))
        .map(LogLine::message)
        .collect()
}

#[tokio::test]
async fn grants_reach_only_their_consumer() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let manifest = write_manifest(dir.path())?;
    let env = [("SANDBOX_GRANTED", "visible"), ("SANDBOX_SECRET", "hidden")];
    let process =
        Switchyard::start_with_env(dir.path(), &[manifest], BrokerMode::Embedded, &env).await?;
    process.publish("/users", &user_body()).await?;
    for consumer in ["granted", "plain"] {
        let labels = [("consumer", consumer), ("outcome", "ok")];
        process.wait_for_count(HANDLED, &labels, 1, TIMEOUT).await?;
    }
    let stopped = process.stop_cleanly().await?;
    let lines = stopped.log_lines();

    // Flags 1 is `read` alone: no `write`, no `mutate-directory`.
    let granted = printed_by(&lines, "granted");
    assert_eq!(
        granted,
        ["env SANDBOX_GRANTED=visible", "preopen /reference flags 1"],
        "what the granted consumer's handler got"
    );
    let plain = printed_by(&lines, "plain");
    assert!(
        plain.is_empty(),
        "the plain consumer's handler got {plain:?}"
    );

    assert!(
        stopped
            .stderr
            .contains("granted environment variable `SANDBOX_UNSET`, which is not set"),
        "no warning about the unset granted variable:\n{}",
        stopped.stderr
    );
    Ok(())
}

const DENIALS: &str = "switchyard_handler_denials_total";

/// Starts the chaos consumers on the embedded broker, posts one
/// `order.placed` and waits until each consumer has settled it: the ones in
/// `rejecting` by dead-lettering it as rejected, the others by handling it.
async fn run_chaos(
    dir: &Path,
    consumers: &[ChaosConsumer],
    rejecting: &[&str],
) -> anyhow::Result<Finished> {
    let manifest = chaos_manifest(dir, consumers)?;
    let process = Switchyard::start(dir, &[manifest], BrokerMode::Embedded).await?;
    process.publish("/orders", &order_body()).await?;
    for consumer in consumers {
        let name = consumer.name.as_str();
        if rejecting.contains(&name) {
            let labels = [("consumer", name), ("reason", "rejected")];
            process
                .wait_for_count(DEAD_LETTERED, &labels, 1, TIMEOUT)
                .await?;
        } else {
            let labels = [("consumer", name), ("outcome", "ok")];
            process.wait_for_count(HANDLED, &labels, 1, TIMEOUT).await?;
        }
    }
    let metrics = process.metrics().await?;
    let stopped = process.stop_cleanly().await?;
    Ok(Finished { metrics, stopped })
}

/// A stopped chaos run: its metrics just before the stop, and its output.
struct Finished {
    metrics: Metrics,
    stopped: Stopped,
}

impl Finished {
    fn denials(&self, consumer: &str, resource: &str) -> u64 {
        let labels = [("consumer", consumer), ("resource", resource)];
        self.metrics.count(DENIALS, &labels)
    }

    /// Returns the `attempt` field of each denial logged for `consumer`.
    fn logged_denials(&self, consumer: &str) -> Vec<String> {
        self.stopped
            .log_lines()
            .iter()
            .filter(|line| line.message().starts_with("handler denied"))
            .filter(|line| line.field("consumer") == Some(consumer))
            .map(|line| line.field("attempt").unwrap_or_default().to_owned())
            .collect()
    }

    /// Returns the reasons the handler gave for rejecting, for `consumer`.
    fn rejections(&self, consumer: &str) -> Vec<String> {
        self.stopped
            .log_lines()
            .iter()
            .filter(|line| line.message() == "handler rejected event")
            .filter(|line| line.field("consumer") == Some(consumer))
            .map(|line| line.field("reason").unwrap_or_default().to_owned())
            .collect()
    }
}

/// A handler connects only to a granted endpoint: the denied connection
/// never reaches the listener, and it is logged and counted.
#[tokio::test]
async fn connections_need_a_grant() -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?.to_string();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    let acceptor = tokio::spawn(async move {
        while let Ok((_stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
        }
    });

    let dir = tempfile::tempdir()?;
    let consumers = [
        ChaosConsumer::new("ungranted", "order.placed", "connect").config("address", &address),
        ChaosConsumer::new("granted", "order.placed", "connect")
            .config("address", &address)
            .grants(&format!("{{ connect = [\"{address}\"] }}")),
    ];
    let run = run_chaos(dir.path(), &consumers, &["ungranted"]).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    acceptor.abort();

    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "connections the listener accepted: only the granted consumer's should arrive"
    );
    assert_eq!(
        run.rejections("ungranted"),
        [format!("connect to {address} failed: access-denied")]
    );
    assert_eq!(
        run.logged_denials("ungranted"),
        [format!("TCP connect to {address}")]
    );
    assert_eq!(run.denials("ungranted", "network"), 1);
    assert_eq!(run.denials("granted", "network"), 0);
    assert!(run.logged_denials("granted").is_empty());
    Ok(())
}

/// A granted folder is readable and nothing more: writing in it or leaving
/// it with `..` is denied, logged and counted.
#[tokio::test]
async fn granted_folders_are_read_only() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    std::fs::create_dir_all(dir.path().join("reference"))?;
    std::fs::write(dir.path().join("reference/rates.txt"), "1.0")?;
    std::fs::write(dir.path().join("outside.txt"), "not granted")?;
    let grants = r#"{ read_dirs = { "/reference" = "reference" } }"#;
    let opener = |name: &str, path: &str| {
        ChaosConsumer::new(name, "order.placed", "open")
            .config("path", path)
            .grants(grants)
    };
    let consumers = [
        opener("reader", "rates.txt"),
        opener("writer", "new.txt").config("write", "true"),
        opener("escaper", "../outside.txt"),
    ];
    let run = run_chaos(dir.path(), &consumers, &["writer", "escaper"]).await?;

    assert!(run.logged_denials("reader").is_empty());
    assert_eq!(run.denials("reader", "filesystem"), 0);
    assert!(
        !dir.path().join("reference/new.txt").exists(),
        "the writer created a file in a read-only folder"
    );
    assert_eq!(
        run.rejections("writer"),
        ["open new.txt in /reference failed: not-permitted"]
    );
    assert_eq!(run.logged_denials("writer"), ["open `new.txt` for writing"]);
    assert_eq!(run.denials("writer", "filesystem"), 1);
    assert_eq!(
        run.rejections("escaper"),
        ["open ../outside.txt in /reference failed: not-permitted"]
    );
    assert_eq!(
        run.logged_denials("escaper"),
        ["open `../outside.txt` for reading"]
    );
    assert_eq!(run.denials("escaper", "filesystem"), 1);
    Ok(())
}
