//! HTTP load with wrk: `POST /orders` at a fixed number of connections,
//! with requests per second and latency percentiles read from its report.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::process::Command;

/// wrk threads; wrk needs at most one per core.
const THREADS: u32 = 2;

/// Results of one wrk run.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    pub requests_per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub requests: u64,
    /// Responses with a status outside 200–399.
    pub errors: u64,
}

/// Runs wrk against `url` with `connections` for `duration`, using the
/// request script at `script`.
pub async fn run(
    url: &str,
    script: &Path,
    connections: u32,
    duration: Duration,
) -> anyhow::Result<Report> {
    let output = Command::new("wrk")
        .arg(format!("-t{THREADS}"))
        .arg(format!("-c{connections}"))
        .arg(format!("-d{}s", duration.as_secs().max(1)))
        .arg("--latency")
        .arg("-s")
        .arg(script)
        .arg(url)
        .output()
        .await
        .context("cannot run `wrk`; install it with `apt-get install wrk`")?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "wrk failed on {url}: {}{}",
            text,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    parse(&text).with_context(|| format!("cannot read the wrk report:\n{text}"))
}

/// Reads the requests per second, the 50th and 99th latency percentiles,
/// the request count and the non-2xx/3xx count from wrk 4's report.
pub fn parse(text: &str) -> anyhow::Result<Report> {
    let field = |prefix: &str| -> Option<&str> {
        text.lines()
            .map(str::trim)
            .find_map(|line| line.strip_prefix(prefix))
            .map(str::trim)
    };
    let requests_per_second = field("Requests/sec:")
        .context("missing `Requests/sec:`")?
        .parse()?;
    let p50_ms = duration_ms(field("50%").context("missing the 50% latency")?)?;
    let p99_ms = duration_ms(field("99%").context("missing the 99% latency")?)?;
    let requests = text
        .lines()
        .find(|line| line.contains("requests in"))
        .and_then(|line| line.split_whitespace().next())
        .context("missing `requests in`")?
        .parse()?;
    let errors = field("Non-2xx or 3xx responses:").map_or(Ok(0), str::parse)?;
    Ok(Report {
        requests_per_second,
        p50_ms,
        p99_ms,
        requests,
        errors,
    })
}

/// Converts wrk's `850.00us`, `4.12ms` or `1.02s` to milliseconds.
fn duration_ms(text: &str) -> anyhow::Result<f64> {
    let (number, factor) = if let Some(n) = text.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1000.0)
    } else {
        bail!("unknown duration `{text}`");
    };
    Ok(number.parse::<f64>()? * factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = "Running 10s test @ http://127.0.0.1:3100/orders
  2 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     4.52ms    2.10ms  40.12ms   80.00%
    Req/Sec     3.61k   250.00     4.10k    70.00%
  Latency Distribution
     50%    4.12ms
     75%    5.01ms
     90%    6.50ms
     99%   16.00ms
  71904 requests in 10.01s, 25.10MB read
  Non-2xx or 3xx responses: 12
Requests/sec:   7183.42
Transfer/sec:      2.51MB
";

    #[test]
    fn parse_reads_rate_percentiles_and_errors() {
        let report = parse(REPORT).unwrap();
        assert_eq!(report.requests_per_second, 7183.42);
        assert_eq!(report.p50_ms, 4.12);
        assert_eq!(report.p99_ms, 16.0);
        assert_eq!(report.requests, 71904);
        assert_eq!(report.errors, 12);
    }

    #[test]
    fn duration_units() {
        assert_eq!(duration_ms("850.00us").unwrap(), 0.85);
        assert_eq!(duration_ms("1.50s").unwrap(), 1500.0);
        assert!(duration_ms("3m").is_err());
    }
}
