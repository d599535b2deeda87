//! A `switchyard up` child process on a free loopback port, with its stderr
//! in a file, and the HTTP calls the tests make to it.

use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;
use tokio::process::{Child, Command};

use crate::logs::{ChaosCall, LogLine};
use crate::metrics::Metrics;

/// Maximum wait for `/readyz` to return 200 after the start. Loading the
/// handler components is the slow part, most of all in a debug build.
const READY_TIMEOUT: Duration = Duration::from_secs(90);

/// Maximum wait for the process to exit after SIGTERM: the default drain
/// timeout of 30 s plus a margin.
const STOP_TIMEOUT: Duration = Duration::from_secs(45);

/// How often the `wait_for_*` helpers poll.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// `RABBITMQ_URL` for runs that must not reach any broker: nothing listens
/// on port 1.
const UNUSED_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:1/%2f";

/// Which broker a run uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BrokerMode {
    /// The local RabbitMQ, in this test binary's vhost.
    RabbitMq,
    /// `up --embedded`: every broker in-process, `RABBITMQ_URL` pointing
    /// nowhere.
    Embedded,
    /// RabbitMQ mode with this `RABBITMQ_URL`.
    Url(String),
}

impl BrokerMode {
    /// Returns a short name for failure messages.
    pub fn label(&self) -> &'static str {
        match self {
            BrokerMode::RabbitMq | BrokerMode::Url(_) => "rabbitmq",
            BrokerMode::Embedded => "embedded",
        }
    }
}

/// Settings of a `switchyard up` run besides its manifests and broker.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Environment variables, such as `KAFKA_BOOTSTRAP`.
    pub env: Vec<(String, String)>,
    /// Arguments after the manifests, such as `--admin-listen ADDR`.
    pub args: Vec<String>,
    /// Address where the run serves `/healthz`, `/readyz` and `/metrics`,
    /// when the manifest or `args` moves them off the `--listen` address.
    pub admin_address: Option<SocketAddr>,
    /// Headers sent with every request, such as `Authorization`.
    pub headers: Vec<(String, String)>,
}

/// The paths that an admin address serves instead of the `--listen` one.
const ADMIN_PATHS: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

/// A running `switchyard up`.
pub struct Switchyard {
    child: Child,
    address: SocketAddr,
    admin_address: Option<SocketAddr>,
    log_path: PathBuf,
    client: reqwest::Client,
}

/// How a `switchyard up` process ended.
#[derive(Debug)]
pub struct Stopped {
    pub status: ExitStatus,
    /// Time from SIGTERM to exit.
    pub stop_duration: Duration,
    /// Everything the process wrote to stderr.
    pub stderr: String,
}

impl Stopped {
    /// Returns the JSON log lines.
    pub fn log_lines(&self) -> Vec<LogLine> {
        LogLine::parse_all(&self.stderr)
    }

    /// Returns every chaos guest call in the log.
    pub fn chaos_calls(&self) -> Vec<ChaosCall> {
        self.log_lines()
            .iter()
            .filter_map(ChaosCall::from_line)
            .collect()
    }
}

impl Switchyard {
    /// Starts `switchyard up` on the manifests and waits until `/readyz`
    /// returns 200. `dir` receives the stderr capture.
    pub async fn start(
        dir: &Path,
        manifests: &[PathBuf],
        mode: BrokerMode,
    ) -> anyhow::Result<Self> {
        let mut process = Switchyard::spawn(dir, manifests, mode).await?;
        process.wait_ready().await?;
        Ok(process)
    }

    /// Starts `switchyard up` with extra environment variables, such as
    /// `KAFKA_BOOTSTRAP`, and waits until `/readyz` returns 200.
    pub async fn start_with_env(
        dir: &Path,
        manifests: &[PathBuf],
        mode: BrokerMode,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let mut process = Switchyard::spawn_with_env(dir, manifests, mode, env).await?;
        process.wait_ready().await?;
        Ok(process)
    }

    /// Starts `switchyard up` without waiting for readiness.
    pub async fn spawn(
        dir: &Path,
        manifests: &[PathBuf],
        mode: BrokerMode,
    ) -> anyhow::Result<Self> {
        Switchyard::spawn_with_env(dir, manifests, mode, &[]).await
    }

    /// Starts `switchyard up` with extra environment variables, without
    /// waiting for readiness.
    pub async fn spawn_with_env(
        dir: &Path,
        manifests: &[PathBuf],
        mode: BrokerMode,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let options = RunOptions {
            env: env
                .iter()
                .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
                .collect(),
            ..RunOptions::default()
        };
        Switchyard::spawn_with_options(dir, manifests, mode, &options).await
    }

    /// Starts `switchyard up` with `options`, without waiting for
    /// readiness.
    pub async fn spawn_with_options(
        dir: &Path,
        manifests: &[PathBuf],
        mode: BrokerMode,
        options: &RunOptions,
    ) -> anyhow::Result<Self> {
        static RUNS: AtomicU32 = AtomicU32::new(0);
        let run = RUNS.fetch_add(1, Ordering::Relaxed);
        let log_path = dir.join(format!("switchyard-{run}.stderr"));
        let stderr = std::fs::File::create(&log_path)
            .with_context(|| format!("cannot create `{}`", log_path.display()))?;
        let address = free_loopback_address()?;

        let binary = tokio::task::spawn_blocking(crate::switchyard_binary).await?;
        let mut command = Command::new(binary);
        command
            .arg("up")
            .args(manifests)
            .args(["--listen", &address.to_string(), "--log-format", "json"])
            .args(&options.args)
            .env(
                "RUST_LOG",
                std::env::var("SWITCHYARD_TEST_LOG").unwrap_or("info".into()),
            )
            .env_remove("SWITCHYARD_LISTEN")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .envs(options.env.iter().map(|(name, value)| (name, value)))
            .kill_on_drop(true);
        match &mode {
            BrokerMode::RabbitMq => {
                command.env("RABBITMQ_URL", crate::rabbitmq().url());
            }
            BrokerMode::Embedded => {
                command
                    .arg("--embedded")
                    .env("RABBITMQ_URL", UNUSED_AMQP_URL);
            }
            BrokerMode::Url(url) => {
                command.env("RABBITMQ_URL", url);
            }
        }
        let child = command
            .spawn()
            .with_context(|| format!("cannot start `{}`", binary.display()))?;
        // A new connection per request: after a 413 the server closes the
        // connection without reading the body, and a pooled connection
        // would fail the next request.
        let mut headers = reqwest::header::HeaderMap::new();
        for (name, value) in &options.headers {
            headers.append(
                reqwest::header::HeaderName::from_bytes(name.as_bytes())?,
                reqwest::header::HeaderValue::from_str(value)?,
            );
        }
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(0)
            .default_headers(headers)
            .build()?;
        Ok(Switchyard {
            child,
            address,
            admin_address: options.admin_address,
            log_path,
            client,
        })
    }

    /// Waits until `/readyz` returns 200. Fails early, with the process's
    /// stderr in the message, when the process exits.
    pub async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let started = Instant::now();
        let mut last = String::from("no response yet");
        while started.elapsed() < READY_TIMEOUT {
            if let Some(status) = self.child.try_wait()? {
                let stderr = self.stderr();
                bail!(
                    "switchyard exited with {status} before it was ready: {}\nstderr:\n{stderr}",
                    fatal_error(&stderr).unwrap_or_default()
                );
            }
            match self.client.get(self.endpoint_url("/readyz")).send().await {
                Ok(response) if response.status() == reqwest::StatusCode::OK => return Ok(()),
                Ok(response) => {
                    let status = response.status();
                    last = format!("{status} {}", response.text().await.unwrap_or_default());
                }
                Err(err) => last = format!("request failed: {err}"),
            }
            tokio::time::sleep(POLL_INTERVAL * 2).await;
        }
        bail!(
            "switchyard was not ready after {READY_TIMEOUT:?}; last /readyz: {last}\nstderr:\n{}",
            self.stderr_tail(60)
        )
    }

    /// Returns the URL of a path on the process's HTTP address.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    /// Returns the process's `--listen` address.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Returns the URL of a path on the address that serves it: the admin
    /// address for the probes and `/metrics` when the run has one, else
    /// the `--listen` address.
    pub fn endpoint_url(&self, path: &str) -> String {
        match self.admin_address {
            Some(admin) if ADMIN_PATHS.contains(&path) => format!("http://{admin}{path}"),
            _ => self.url(path),
        }
    }

    /// Sends a GET request, to the admin address for the probes and
    /// `/metrics` when the run has one.
    pub async fn get(&self, path: &str) -> anyhow::Result<reqwest::Response> {
        let response = self.client.get(self.endpoint_url(path)).send().await;
        response.with_context(|| format!("GET {path} failed"))
    }

    /// POSTs a JSON body with `Content-Type: application/json`.
    pub async fn post_json(&self, path: &str, body: &Value) -> anyhow::Result<reqwest::Response> {
        self.post(path, "application/json", body.to_string().into_bytes())
            .await
    }

    /// POSTs raw bytes with the given content type.
    pub async fn post(
        &self,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> anyhow::Result<reqwest::Response> {
        let request = self
            .client
            .post(self.url(path))
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body);
        request
            .send()
            .await
            .with_context(|| format!("POST {path} failed"))
    }

    /// POSTs a JSON body, expects 202 and returns the event id.
    pub async fn publish(&self, path: &str, body: &Value) -> anyhow::Result<String> {
        let response = self.post_json(path, body).await?;
        let status = response.status();
        let text = response.text().await?;
        anyhow::ensure!(
            status == reqwest::StatusCode::ACCEPTED,
            "POST {path} returned {status}, expected 202: {text}"
        );
        let accepted: Value = serde_json::from_str(&text).with_context(|| {
            format!("POST {path} returned 202 with a body that is not JSON: {text}")
        })?;
        accepted["id"]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("POST {path} returned 202 without an `id`: {text}"))
    }

    /// Scrapes and parses `/metrics`.
    pub async fn metrics(&self) -> anyhow::Result<Metrics> {
        let response = self.get("/metrics").await?;
        let status = response.status();
        let text = response.text().await?;
        anyhow::ensure!(
            status.is_success(),
            "GET /metrics returned {status}: {text}"
        );
        Metrics::parse(&text)
    }

    /// Polls `/metrics` until `done` holds, and returns that scrape. On
    /// timeout the error shows the series of `shown_metric` and the stderr
    /// tail.
    pub async fn wait_for_metrics(
        &self,
        description: &str,
        shown_metric: &str,
        timeout: Duration,
        done: impl Fn(&Metrics) -> bool,
    ) -> anyhow::Result<Metrics> {
        let started = Instant::now();
        loop {
            let metrics = self.metrics().await?;
            if done(&metrics) {
                return Ok(metrics);
            }
            if started.elapsed() > timeout {
                bail!(
                    "timed out after {timeout:?} waiting for {description}; metrics:\n{}stderr:\n{}",
                    metrics.describe(shown_metric),
                    self.stderr_tail(40)
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Waits until the counter `name` with `labels` reaches at least `count`.
    pub async fn wait_for_count(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        count: u64,
        timeout: Duration,
    ) -> anyhow::Result<Metrics> {
        let description = format!("`{name}` {labels:?} to reach {count}");
        self.wait_for_metrics(&description, name, timeout, |metrics| {
            metrics.value(name, labels) >= count as f64
        })
        .await
    }

    /// Returns the process id, or `None` after the process was reaped.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Returns the resident set size of the process in bytes, read from
    /// `VmRSS` in `/proc/<pid>/status` (Linux only).
    pub fn resident_memory(&self) -> anyhow::Result<u64> {
        let pid = self.pid().context("switchyard already exited")?;
        let path = format!("/proc/{pid}/status");
        let status =
            std::fs::read_to_string(&path).with_context(|| format!("cannot read `{path}`"))?;
        let kibibytes = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|value| value.trim().strip_suffix("kB"))
            .and_then(|value| value.trim().parse::<u64>().ok())
            .with_context(|| format!("`{path}` has no `VmRSS: <n> kB` line"))?;
        Ok(kibibytes * 1024)
    }

    /// Returns everything the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Returns the last `lines` lines of stderr.
    pub fn stderr_tail(&self, lines: usize) -> String {
        let text = self.stderr();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Returns every chaos guest call logged so far.
    pub fn chaos_calls(&self) -> Vec<ChaosCall> {
        LogLine::parse_all(&self.stderr())
            .iter()
            .filter_map(ChaosCall::from_line)
            .collect()
    }

    /// Polls the log until `done` holds for the chaos calls so far.
    pub async fn wait_for_chaos_calls(
        &self,
        description: &str,
        timeout: Duration,
        done: impl Fn(&[ChaosCall]) -> bool,
    ) -> anyhow::Result<Vec<ChaosCall>> {
        poll(timeout, || async {
            let calls = self.chaos_calls();
            done(&calls).then_some(calls)
        })
        .await
        .with_context(|| {
            format!(
                "timed out after {timeout:?} waiting for {description}; stderr:\n{}",
                self.stderr_tail(40)
            )
        })
    }

    /// Sends SIGTERM and waits for the exit; kills the process and fails
    /// when it does not exit within 45 s.
    pub async fn stop(self) -> anyhow::Result<Stopped> {
        self.stop_with(Signal::SIGTERM).await
    }

    /// Sends `signal` and waits for the exit; kills the process and fails
    /// when it does not exit within 45 s.
    pub async fn stop_with(mut self, signal: Signal) -> anyhow::Result<Stopped> {
        let pid = self.child.id().context("switchyard already exited")?;
        let pid = Pid::from_raw(i32::try_from(pid)?);
        kill(pid, signal).with_context(|| format!("cannot send {signal} to switchyard"))?;
        let sent = Instant::now();
        let status = match tokio::time::timeout(STOP_TIMEOUT, self.child.wait()).await {
            Ok(status) => status?,
            Err(_) => {
                let _ = self.child.kill().await;
                bail!(
                    "switchyard did not exit within {STOP_TIMEOUT:?} of {signal}; stderr:\n{}",
                    self.stderr_tail(60)
                );
            }
        };
        Ok(Stopped {
            status,
            stop_duration: sent.elapsed(),
            stderr: self.stderr(),
        })
    }

    /// Stops the process with SIGTERM and fails unless it exits 0.
    pub async fn stop_cleanly(self) -> anyhow::Result<Stopped> {
        self.stop_cleanly_with(Signal::SIGTERM).await
    }

    /// Stops the process with `signal` and fails unless it exits 0.
    pub async fn stop_cleanly_with(self, signal: Signal) -> anyhow::Result<Stopped> {
        let stopped = self.stop_with(signal).await?;
        if !stopped.status.success() {
            let text = stopped.stderr.lines().rev().take(60).collect::<Vec<_>>();
            let tail: Vec<&str> = text.into_iter().rev().collect();
            bail!(
                "switchyard exited with {} after {signal}, expected 0; stderr:\n{}",
                stopped.status,
                tail.join("\n")
            );
        }
        Ok(stopped)
    }
}

/// Calls `check` every 50 ms until it returns a value, or `None` after
/// `timeout`.
pub async fn poll<T, F, Fut>(timeout: Duration, check: F) -> Option<T>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = check().await {
            return Some(value);
        }
        if started.elapsed() > timeout {
            return None;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Returns a loopback address whose port was free a moment ago. Another
/// process could take it before switchyard binds it; the bind error then
/// names the address.
pub fn free_loopback_address() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").context("cannot bind a loopback port")?;
    Ok(listener.local_addr()?)
}

/// Returns the error that stopped switchyard, from the last record of its
/// JSON log, as plain text: in the record it is a JSON string, with its
/// quotes and line breaks escaped.
fn fatal_error(stderr: &str) -> Option<String> {
    LogLine::parse_all(stderr)
        .into_iter()
        .rev()
        .find(|line| line.message() == "switchyard stopped with an error")
        .and_then(|line| line.field("error").map(str::to_owned))
}

/// Waits until a child process accepts TCP connections on a loopback port.
/// Fails with what the process wrote to `log_path` when it exits first or
/// when `timeout` passes.
pub(crate) async fn wait_listening(
    child: &mut Child,
    port: u16,
    program: &str,
    log_path: &Path,
    timeout: Duration,
) -> anyhow::Result<()> {
    let output = || std::fs::read_to_string(log_path).unwrap_or_default();
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            bail!(
                "{program} exited with {status} at start; output:\n{}",
                output()
            );
        }
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(());
        }
        if started.elapsed() > timeout {
            bail!(
                "{program} did not listen on port {port} within {timeout:?}; output:\n{}",
                output()
            );
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}
