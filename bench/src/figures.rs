//! Figures, their medians and ratios, the machine description, and the
//! summary as a table and as `summary.json`.

use std::path::Path;

use anyhow::Context;
use serde::Serialize;

/// One reported figure: switchyard's median and, where there is one, the
/// median of its baseline measured in the same runs.
#[derive(Clone, Debug, Serialize)]
pub struct Figure {
    pub name: String,
    pub value: f64,
    pub unit: String,
    pub baseline: Option<String>,
    pub baseline_value: Option<f64>,
    /// `value / baseline_value`. Above 1 is better for rates and worse for
    /// latencies, times and memory.
    pub ratio: Option<f64>,
}

impl Figure {
    /// Creates a figure with no baseline, such as a start-up time.
    pub fn alone(name: &str, samples: &[f64], unit: &str) -> Figure {
        Figure {
            name: name.to_owned(),
            value: median(samples),
            unit: unit.to_owned(),
            baseline: None,
            baseline_value: None,
            ratio: None,
        }
    }

    /// Creates a figure compared with the median of `baseline_samples`.
    pub fn versus(
        name: &str,
        samples: &[f64],
        unit: &str,
        baseline: &str,
        baseline_samples: &[f64],
    ) -> Figure {
        let value = median(samples);
        let baseline_value = median(baseline_samples);
        Figure {
            name: name.to_owned(),
            value,
            unit: unit.to_owned(),
            baseline: Some(baseline.to_owned()),
            baseline_value: Some(baseline_value),
            ratio: (baseline_value != 0.0).then(|| value / baseline_value),
        }
    }
}

/// Returns the median, the mean of the two middle values for an even count,
/// and NaN for no samples.
pub fn median(samples: &[f64]) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => sorted[n / 2],
        _ => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// The machine and software the figures were measured on.
#[derive(Debug, Serialize)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub memory_mib: u64,
    pub kernel: String,
    pub rabbitmq: String,
    /// Version of tansu, the Kafka-protocol broker of the Kafka scenario, as
    /// `tansu --version` prints it. Empty when tansu is not installed.
    pub kafka_broker: String,
    pub node: String,
    pub wrk: String,
    pub git_commit: String,
    pub started: String,
    /// `/proc/loadavg` when the suite started and when it finished: other
    /// processes on the machine skew every figure.
    pub load_at_start: String,
    pub load_at_end: String,
    pub runs_per_figure: usize,
}

impl Machine {
    pub fn describe(runs_per_figure: usize) -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|line| line.strip_prefix("model name"))
            .and_then(|rest| rest.split_once(':'))
            .map(|(_, name)| name.trim().to_owned())
            .unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory_kib: u64 = meminfo
            .lines()
            .find_map(|line| line.strip_prefix("MemTotal:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0);
        Machine {
            cpu,
            cores: std::thread::available_parallelism().map_or(0, usize::from),
            memory_mib: memory_kib / 1024,
            kernel: command_output("uname", &["-r"]),
            rabbitmq: rabbitmq_version(),
            kafka_broker: crate::tansu::version(),
            node: command_output("node", &["--version"]),
            wrk: command_output("wrk", &["--version"])
                .lines()
                .next()
                .unwrap_or_default()
                .to_owned(),
            git_commit: command_output("git", &["rev-parse", "--short", "HEAD"]),
            started: command_output("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]),
            load_at_start: load_average(),
            load_at_end: String::new(),
            runs_per_figure,
        }
    }
}

/// Returns the three load averages of `/proc/loadavg`.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn rabbitmq_version() -> String {
    command_output("rabbitmqctl", &["--quiet", "version"])
}

/// Returns the trimmed stdout of a command, or an empty string when it
/// cannot run. `wrk --version` prints its version and exits 1.
fn command_output(program: &str, args: &[&str]) -> String {
    std::process::Command::new(program)
        .args(args)
        .output()
        .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned())
        .unwrap_or_default()
}

#[derive(Serialize)]
struct Summary<'a> {
    machine: &'a Machine,
    figures: &'a [Figure],
}

/// Writes `{"machine": ..., "figures": [...]}` to `path`.
pub fn write_summary(path: &Path, machine: &Machine, figures: &[Figure]) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create `{}`", dir.display()))?;
    }
    let json = serde_json::to_string_pretty(&Summary { machine, figures })?;
    std::fs::write(path, json + "\n").with_context(|| format!("cannot write `{}`", path.display()))
}

/// Renders the figures as a plain-text table.
pub fn table(figures: &[Figure]) -> String {
    let mut out = format!(
        "{:<44} {:>12} {:<9} {:<34} {:>12} {:>7}\n",
        "figure", "switchyard", "unit", "baseline", "baseline", "ratio"
    );
    for figure in figures {
        let baseline_value = figure
            .baseline_value
            .map_or_else(String::new, |value| format!("{value:.2}"));
        let ratio = figure
            .ratio
            .map_or_else(String::new, |ratio| format!("{ratio:.2}"));
        out.push_str(&format!(
            "{:<44} {:>12.2} {:<9} {:<34} {:>12} {:>7}\n",
            figure.name,
            figure.value,
            figure.unit,
            figure.baseline.as_deref().unwrap_or(""),
            baseline_value,
            ratio
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn versus_divides_medians() {
        let figure = Figure::versus("x", &[10.0, 30.0, 20.0], "/s", "base", &[5.0, 10.0, 15.0]);
        assert_eq!(figure.value, 20.0);
        assert_eq!(figure.baseline_value, Some(10.0));
        assert_eq!(figure.ratio, Some(2.0));
    }
}
