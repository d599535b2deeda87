//! Harness for the end-to-end tests. It builds the `switchyard` binary once
//! per test binary and gives each test binary its own RabbitMQ vhost. It
//! runs `switchyard up` on a free loopback port and reads what the process
//! did through HTTP, `/metrics`, its JSON log lines and lapin.
//!
//! Tests that talk to RabbitMQ expect it at `127.0.0.1:5672` with the
//! `guest` user and `rabbitmqctl` on `PATH` (`bash .ci/run` starts it). A test
//! that cannot reach it fails with a message naming what is missing.

mod binary;
pub mod deployment;
mod kafka;
pub mod load;
mod logs;
mod manifests;
mod metrics;
mod outage;
mod process;
mod rabbitmq;
pub mod shop;
mod tls;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

pub use binary::{PlanOutput, run_plan, switchyard_binary};
pub use kafka::{KafkaRecord, OutgoingRecord, Tansu, free_port};
pub use logs::{ChaosCall, LogLine};
pub use manifests::{ChaosConsumer, chaos_manifest, queues_only_manifest};
pub use metrics::Metrics;
pub use outage::BrokerLink;
pub use process::{BrokerMode, RunOptions, Stopped, Switchyard, free_loopback_address, poll};
pub use rabbitmq::{RabbitMq, ReceivedMessage, ScopedVhost, rabbitmq, rabbitmqctl};
pub use tls::{IssuedCertificate, Stunnel, TestCa};

/// Returns the repository root (the workspace folder).
///
/// `cargo test` sets `CARGO_MANIFEST_DIR` for the test process to the
/// checkout the tests run in. The value compiled in names the checkout this
/// library was built in, which differs when two checkouts share a target
/// folder, because cargo does not rebuild an unchanged library for a new
/// path. It is only the fallback for a test binary run without cargo.
pub fn repo_root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let package = std::env::var_os("CARGO_MANIFEST_DIR")
            .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
        package
            .parent()
            .expect("the tests package sits in a folder of the repository")
            .to_path_buf()
    })
}

/// Returns the path of the shop manifest, `manifests/shop.toml`.
pub fn shop_manifest() -> PathBuf {
    repo_root().join("manifests/shop.toml")
}

/// Returns the path of the Kafka part of the reference system,
/// `manifests/streaming.toml`.
pub fn streaming_manifest() -> PathBuf {
    repo_root().join("manifests/streaming.toml")
}

/// Returns the path of a committed component and fails with the build
/// command when it is missing. `relative` is relative to the repository
/// root, such as `handlers/email.wasm`.
pub fn component(relative: &str) -> anyhow::Result<PathBuf> {
    let path = repo_root().join(relative);
    anyhow::ensure!(
        path.is_file(),
        "component `{}` is missing; build it with `handlers/build.sh` (see handlers/README.md)",
        path.display()
    );
    Ok(path)
}

/// Returns hex digits that differ from run to run and process to process.
pub fn unique_suffix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!("{nanos:x}{:x}", std::process::id())
}

/// Serialises the tests of one test binary.
///
/// Tests in a binary share one vhost and often the same queue names, and
/// several measure retry delays and deadlines that a parallel test on the
/// same two cores would distort. Hold the guard for the whole test.
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}
