//! `switchyard plan` and `up` against the local RabbitMQ when a queue exists
//! already with other arguments than the manifest declares. `plan` lists
//! the conflict with both values and the way out, changes nothing and exits
//! 1. `up` stops with the same text before any consumer starts.

use std::path::{Path, PathBuf};

use anyhow::Context;
use lapin::options::{ExchangeDeclareOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use switchyard_tests::{BrokerMode, Switchyard, rabbitmq, repo_root, run_plan, serial};

const QUEUE: &str = "conflict-orders";
const EXCHANGE: &str = "conflict-events";

/// Writes a manifest whose queue `conflict-orders` has a dead-letter
/// exchange, with its schema, and returns the manifest's path.
fn write_manifest(dir: &Path) -> anyhow::Result<PathBuf> {
    let guests = repo_root().join("tests/guests");
    let manifest = format!(
        r#"[runtime]
schemas = "schemas"
handlers = {guests:?}

[brokers.rabbit]
kind = "amqp"
url = "${{RABBITMQ_URL}}"

[exchanges.{EXCHANGE}]
broker = "rabbit"
type = "topic"

[exchanges.conflict-dlx]
broker = "rabbit"
type = "fanout"

[queues.conflict-dead-letters]
broker = "rabbit"
bind = [{{ exchange = "conflict-dlx" }}]

[queues.{QUEUE}]
broker = "rabbit"
bind = [{{ exchange = "{EXCHANGE}", key = "order.*" }}]
dead_letter = {{ exchange = "conflict-dlx" }}

[events."order.placed"]
schema = "order.placed.json"
publish = {{ exchange = "{EXCHANGE}" }}

[consumers.orders]
queue = "{QUEUE}"
handler = "printer.wasm"
"#,
        guests = guests.display().to_string(),
    );
    let path = dir.join("manifest.toml");
    std::fs::write(&path, manifest)?;
    std::fs::create_dir_all(dir.join("schemas"))?;
    std::fs::write(
        dir.join("schemas/order.placed.json"),
        r#"{"type": "object", "required": ["orderId"]}"#,
    )?;
    Ok(path)
}

/// Declares `conflict-orders` as a durable queue without arguments, as an
/// older version of the manifest would have.
async fn declare_plain_queue() -> anyhow::Result<()> {
    let connection = rabbitmq().connect().await?;
    let channel = connection.create_channel().await?;
    let options = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(QUEUE.into(), options, FieldTable::default())
        .await
        .context("declare the plain queue")?;
    let _ = connection.close(200, "declared".into()).await;
    Ok(())
}

/// Reports whether an exchange exists, with a passive declare.
async fn exchange_exists(name: &str) -> anyhow::Result<bool> {
    let connection = rabbitmq().connect().await?;
    let channel = connection.create_channel().await?;
    let options = ExchangeDeclareOptions {
        passive: true,
        ..ExchangeDeclareOptions::default()
    };
    let exists = channel
        .exchange_declare(
            name.into(),
            lapin::ExchangeKind::Topic,
            options,
            FieldTable::default(),
        )
        .await
        .is_ok();
    let _ = connection.close(200, "checked".into()).await;
    Ok(exists)
}

#[tokio::test]
async fn queue_argument_conflict_in_plan_and_up() -> anyhow::Result<()> {
    let _serial = serial().await;
    let dir = tempfile::tempdir()?;
    let manifest = write_manifest(dir.path())?;
    rabbitmq().reset(&[manifest.as_path()]).await?;
    declare_plain_queue().await?;

    let url = rabbitmq().url();
    let plan = run_plan(std::slice::from_ref(&manifest), &[("RABBITMQ_URL", &url)]).await?;
    assert_eq!(plan.stderr, "", "plan writes its report to stdout");
    assert_eq!(plan.code, 1, "{}", plan.stdout);
    let output = plan.stdout;
    assert!(
        output.contains(&format!("  conflict   queue    {QUEUE}\n")),
        "{output}"
    );
    assert!(
        output.contains("  create     exchange conflict-events\n"),
        "{output}"
    );
    let lines: Vec<&str> = output.lines().collect();
    let conflict_line = lines
        .iter()
        .position(|line| line.contains(&format!("conflict   queue    {QUEUE}")))
        .context("no conflict line")?;
    let detail = lines
        .get(conflict_line + 1)
        .map(|line| line.trim())
        .context("no line after the conflict")?;
    assert!(
        detail.contains("x-dead-letter-exchange = none"),
        "existing value: {detail}"
    );
    assert!(
        detail.contains("x-dead-letter-exchange = `conflict-dlx`"),
        "wanted value: {detail}"
    );
    assert!(detail.contains("delete the queue"), "way out: {detail}");
    assert!(
        detail.contains("rabbitmqctl set_policy"),
        "policy alternative: {detail}"
    );
    assert!(output.contains("1 conflicts"), "{output}");
    // plan declares nothing new.
    assert!(
        !exchange_exists(EXCHANGE).await?,
        "plan created exchange {EXCHANGE}"
    );

    let started = Switchyard::start(
        dir.path(),
        std::slice::from_ref(&manifest),
        BrokerMode::RabbitMq,
    )
    .await;
    let Err(error) = started else {
        anyhow::bail!("switchyard up became ready despite the conflicting queue");
    };
    let error = format!("{error:#}");
    assert!(error.contains("exited with exit status: 1"), "{error}");
    assert!(
        error.contains("cannot provision the topology on broker `rabbit`"),
        "{error}"
    );
    assert!(
        error.contains(detail),
        "up and plan differ:\n{detail}\n{error}"
    );
    assert!(!error.contains("consumer started"), "{error}");
    // The tests log at `info`, which shows lapin's own channel errors, while
    // the default filter of `up` hides them. The error itself must be readable.
    let text_lines: Vec<&str> = error.lines().filter(|l| !l.starts_with('{')).collect();
    let text = text_lines.join("\n");
    assert!(!text.contains("PRECONDITION_FAILED"), "{text}");

    rabbitmq().reset(&[manifest.as_path()]).await?;
    Ok(())
}
