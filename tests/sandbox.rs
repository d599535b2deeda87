//! What a handler can reach: the sandbox test guest
//! (`tests/guests/sandbox.wasm`) prints every environment variable and
//! preopened folder it gets, for a consumer with grants and one without.

use std::path::{Path, PathBuf};
use std::time::Duration;

use switchyard_tests::shop::{HANDLED, user_body};
use switchyard_tests::{BrokerMode, LogLine, Switchyard, component, repo_root};

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
