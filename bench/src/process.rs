//! Child processes under measurement: starting them with their logs in
//! files, waiting for their HTTP endpoints, sampling their resident memory
//! and stopping them.

use std::fs::File;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

/// How long a stopped child may take to exit after SIGTERM before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// A running child process whose stdout and stderr go to a log file.
pub struct Process {
    pub name: String,
    child: Child,
}

impl Process {
    /// Starts `command` with stdout and stderr appended to `log`.
    pub fn start(name: &str, mut command: Command, log: &Path) -> anyhow::Result<Process> {
        if let Some(dir) = log.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = File::options()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("cannot open log file `{}`", log.display()))?;
        command
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .kill_on_drop(true);
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        Ok(Process {
            name: name.to_owned(),
            child,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    /// Fails when the process has exited already, naming its exit status.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited early with {status}; see its log", self.name);
        }
        Ok(())
    }

    /// Sends SIGTERM and waits for the exit, then SIGKILL after the timeout.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(pid) = self.child.id() {
            let pid = Pid::from_raw(i32::try_from(pid)?);
            let _ = kill(pid, Signal::SIGTERM);
        }
        match tokio::time::timeout(STOP_TIMEOUT, self.child.wait()).await {
            Ok(status) => {
                status?;
            }
            Err(_) => {
                eprintln!(
                    "warning: {} did not stop within {STOP_TIMEOUT:?}; killing it",
                    self.name
                );
                self.child.kill().await?;
            }
        }
        Ok(())
    }
}

/// Returns a loopback port that is free now.
pub fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// Polls `url` every `interval` until it returns 200, and returns the time
/// from `since` to that response.
pub async fn wait_for_ok(
    process: &mut Process,
    client: &reqwest::Client,
    url: &str,
    since: Instant,
    interval: Duration,
    timeout: Duration,
) -> anyhow::Result<Duration> {
    loop {
        if let Ok(response) = client.get(url).send().await
            && response.status() == reqwest::StatusCode::OK
        {
            return Ok(since.elapsed());
        }
        process.check_running()?;
        if since.elapsed() > timeout {
            bail!(
                "{} did not return 200 on {url} within {timeout:?}",
                process.name
            );
        }
        tokio::time::sleep(interval).await;
    }
}

/// Returns the resident set size of a process in MiB, from `/proc`.
pub fn resident_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

/// Samples a process's resident memory every 50 ms until dropped or
/// finished, keeping the maximum.
pub struct ResidentPeak {
    peak_kib: Arc<AtomicU64>,
    running: Arc<AtomicBool>,
}

impl ResidentPeak {
    pub fn start(pid: u32) -> ResidentPeak {
        let peak_kib = Arc::new(AtomicU64::new(0));
        let running = Arc::new(AtomicBool::new(true));
        let (peak, keep_going) = (peak_kib.clone(), running.clone());
        tokio::spawn(async move {
            while keep_going.load(Ordering::Relaxed) {
                if let Some(mib) = resident_mib(pid) {
                    peak.fetch_max((mib * 1024.0) as u64, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        ResidentPeak { peak_kib, running }
    }

    /// Stops sampling and returns the peak in MiB.
    pub fn finish(self) -> f64 {
        self.running.store(false, Ordering::Relaxed);
        self.peak_kib.load(Ordering::Relaxed) as f64 / 1024.0
    }
}

/// Returns the sum of the samples of a Prometheus counter whose labels
/// include every `label="value"` pair in `labels`, from `/metrics` text.
pub fn counter_value(metrics: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metrics
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let (label_text, value) = match rest.strip_prefix('{') {
                Some(rest) => rest.split_once('}')?,
                None => ("", rest),
            };
            let matches = labels
                .iter()
                .all(|(key, wanted)| label_text.contains(&format!("{key}=\"{wanted}\"")));
            matches.then(|| value.trim().parse::<f64>().ok()).flatten()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_value_matches_labels() {
        let text = "# TYPE switchyard_events_handled_total counter\n\
            switchyard_events_handled_total{consumer=\"pipeline\",outcome=\"ok\"} 1200\n\
            switchyard_events_handled_total{consumer=\"pipeline\",outcome=\"retry\"} 3\n\
            switchyard_events_handled_total_other{consumer=\"pipeline\",outcome=\"ok\"} 9\n";
        let ok = counter_value(
            text,
            "switchyard_events_handled_total",
            &[("consumer", "pipeline"), ("outcome", "ok")],
        );
        assert_eq!(ok, 1200.0);
        let all = counter_value(text, "switchyard_events_handled_total", &[]);
        assert_eq!(all, 1203.0);
    }
}
