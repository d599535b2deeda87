//! The state every scenario shares: the options, the vhost, a broker connection,
//! an HTTP client, and starting switchyard and Node.js processes.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::bail;
use lapin::Connection;
use tokio::process::Command;

use crate::process::{self, Process};

/// Maximum time from starting a process to its first HTTP response.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Settings shared by the scenarios.
pub struct Suite {
    /// Repository root: manifests and scripts are found relative to it.
    pub root: PathBuf,
    pub switchyard: PathBuf,
    /// Folder for the logs of every started process.
    pub logs: PathBuf,
    /// Runs of each side of every figure.
    pub runs: usize,
    /// Messages pre-loaded for each consume run, and records of each raw
    /// rdkafka produce run.
    pub messages: u32,
    /// Length of each wrk run.
    pub http_duration: Duration,
    /// Connections wrk keeps open.
    pub http_connections: u32,
    /// AMQP URL of the run's vhost.
    pub amqp_url: String,
    pub connection: Connection,
    pub client: reqwest::Client,
}

impl Suite {
    pub fn path(&self, relative: &str) -> PathBuf {
        self.root.join(relative)
    }

    /// Starts `switchyard up MANIFEST [extra]` on a free port of its own.
    /// Returns the process and its base URL without waiting for it.
    pub fn start_switchyard(
        &self,
        label: &str,
        manifest: &str,
        extra: &[&str],
    ) -> anyhow::Result<(Process, String)> {
        self.start_switchyard_with_env(label, manifest, extra, &[])
    }

    /// Starts switchyard as `start_switchyard` does, with the extra
    /// environment variables `env`, such as `KAFKA_BOOTSTRAP`.
    pub fn start_switchyard_with_env(
        &self,
        label: &str,
        manifest: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<(Process, String)> {
        let port = process::free_port()?;
        let mut command = Command::new(&self.switchyard);
        command
            .arg("up")
            .arg(self.path(manifest))
            .args(extra)
            .envs(env.iter().copied())
            .env("RABBITMQ_URL", &self.amqp_url)
            .env("SWITCHYARD_LISTEN", format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "warn")
            // With backtraces on, wasmtime 48 captures one for an error it
            // creates at every store drop, which costs several percent.
            .env_remove("RUST_BACKTRACE")
            .env_remove("RUST_LIB_BACKTRACE");
        let log = self.logs.join(format!("switchyard-{label}.log"));
        let process = Process::start(&format!("switchyard ({label})"), command, &log)?;
        Ok((process, format!("http://127.0.0.1:{port}")))
    }

    /// Starts switchyard and waits until `/readyz` returns 200.
    pub async fn start_switchyard_ready(
        &self,
        label: &str,
        manifest: &str,
        extra: &[&str],
    ) -> anyhow::Result<(Process, String)> {
        self.start_switchyard_ready_with_env(label, manifest, extra, &[])
            .await
    }

    /// Starts switchyard with the extra environment variables `env` and
    /// waits until `/readyz` returns 200.
    pub async fn start_switchyard_ready_with_env(
        &self,
        label: &str,
        manifest: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<(Process, String)> {
        let (mut process, base) = self.start_switchyard_with_env(label, manifest, extra, env)?;
        let ready = format!("{base}/readyz");
        let poll = Duration::from_millis(20);
        process::wait_for_ok(
            &mut process,
            &self.client,
            &ready,
            Instant::now(),
            poll,
            START_TIMEOUT,
        )
        .await?;
        Ok((process, base))
    }

    /// Returns a `node` command running `script` from the Node.js baselines.
    pub fn node_command(&self, script: &str) -> Command {
        let mut command = Command::new("node");
        command
            .arg(self.path("bench/node").join(script))
            .env("RABBITMQ_URL", &self.amqp_url);
        command
    }

    /// Reads switchyard's `/metrics`.
    pub async fn metrics(&self, base: &str) -> anyhow::Result<String> {
        let response = self.client.get(format!("{base}/metrics")).send().await?;
        if !response.status().is_success() {
            bail!("GET {base}/metrics returned {}", response.status());
        }
        Ok(response.text().await?)
    }

    /// Reads one counter from switchyard's `/metrics`, summed over the
    /// series whose labels include `labels`.
    pub async fn counter(
        &self,
        base: &str,
        name: &str,
        labels: &[(&str, &str)],
    ) -> anyhow::Result<f64> {
        let metrics = self.metrics(base).await?;
        Ok(process::counter_value(&metrics, name, labels))
    }
}

/// Returns `path` made absolute against the current folder.
pub fn absolute(path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_owned()
    } else {
        std::env::current_dir().unwrap_or_default().join(path)
    }
}
