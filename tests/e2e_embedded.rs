//! The reference system, `manifests/shop.toml`, with `up --embedded`: every
//! broker in-process and `RABBITMQ_URL` pointing at a port where nothing
//! listens. Queues are not visible from outside, so the checks read
//! `/metrics`.

use nix::sys::signal::Signal;
use reqwest::StatusCode;
use serde_json::Value;
use switchyard_tests::shop::{self, HANDLED};
use switchyard_tests::{
    BrokerMode, Switchyard, component, serial, shop_manifest, streaming_manifest,
};
use tempfile::TempDir;

async fn start_shop(dir: &TempDir) -> anyhow::Result<Switchyard> {
    for handler in ["email", "inventory", "analytics"] {
        component(&format!("handlers/{handler}.wasm"))?;
    }
    Switchyard::start(dir.path(), &[shop_manifest()], BrokerMode::Embedded).await
}

#[tokio::test]
async fn shop_flow_embedded() -> anyhow::Result<()> {
    let _serial = serial().await;
    let dir = tempfile::tempdir()?;
    let process = start_shop(&dir).await?;

    let response = process.get("/readyz").await?;
    assert_eq!(response.status(), StatusCode::OK, "/readyz");
    let readiness: Value = response.json().await?;
    for check in [
        "consumer:email-service",
        "consumer:inventory-service",
        "consumer:analytics-service",
    ] {
        assert_eq!(
            readiness["checks"][check]["ok"], true,
            "{check} in {readiness}"
        );
    }

    shop::run_flow(&process).await?;
    // Ctrl-C in a terminal: SIGINT stops as cleanly as SIGTERM.
    process.stop_cleanly_with(Signal::SIGINT).await?;
    Ok(())
}

#[tokio::test]
async fn invalid_requests_rejected_embedded() -> anyhow::Result<()> {
    let _serial = serial().await;
    let dir = tempfile::tempdir()?;
    // `SWITCHYARD_WORKERS=1` runs the whole system on one worker thread.
    let env = [("SWITCHYARD_WORKERS", "1")];
    for handler in ["email", "inventory", "analytics"] {
        component(&format!("handlers/{handler}.wasm"))?;
    }
    let process =
        Switchyard::start_with_env(dir.path(), &[shop_manifest()], BrokerMode::Embedded, &env)
            .await?;

    shop::check_invalid_requests(&process).await?;
    let handled = process.metrics().await?.count(HANDLED, &[]);
    assert_eq!(handled, 0, "handler outcomes after invalid requests only");
    let stopped = process.stop_cleanly().await?;
    let lines = stopped.log_lines();
    let workers: Vec<Option<&serde_json::Value>> = lines
        .iter()
        .filter(|line| line.field("message") == Some("async runtime started"))
        .map(|line| line.fields.get("workers"))
        .collect();
    assert_eq!(workers, [Some(&serde_json::json!(1))], "{}", stopped.stderr);
    Ok(())
}

#[tokio::test]
async fn streaming_part_embedded() -> anyhow::Result<()> {
    let _serial = serial().await;
    let dir = tempfile::tempdir()?;
    let manifests = [shop_manifest(), streaming_manifest()];
    // KAFKA_BOOTSTRAP points nowhere: --embedded replaces the Kafka broker too.
    let env = [("KAFKA_BOOTSTRAP", "127.0.0.1:1")];
    let process =
        Switchyard::start_with_env(dir.path(), &manifests, BrokerMode::Embedded, &env).await?;

    shop::run_flow(&process).await?;
    let labels = [("consumer", "analytics-stream"), ("outcome", "ok")];
    let metrics = process
        .wait_for_count(HANDLED, &labels, 2, std::time::Duration::from_secs(30))
        .await?;
    assert_eq!(metrics.count(HANDLED, &labels), 2, "one per order and user");
    process.stop_cleanly().await?;
    Ok(())
}
