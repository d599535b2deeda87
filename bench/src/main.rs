//! switchyard's benchmark suite: runs switchyard and its baselines side by
//! side on the same RabbitMQ node (and, for Kafka, the same tansu broker),
//! alternating, and writes the medians and
//! ratios as a table and as `summary.json`. `bench/run` builds everything
//! and calls this driver; see docs/benchmarks.md.

mod consume;
mod criterion;
mod embedded;
mod figures;
mod fixture;
mod http;
mod kafka;
mod process;
mod rabbit;
mod reload;
mod startup;
mod suite;
mod tansu;
mod wrk;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::figures::{Figure, Machine};
use crate::suite::Suite;

/// A group of figures measured together. A new broker gets its own
/// scenario here, with its baselines alternating inside it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// AMQP consume pipeline against Node.js and raw lapin.
    Consume,
    /// HTTP publish path against the Node.js order service and raw lapin.
    Http,
    /// Embedded broker end to end.
    Embedded,
    /// Start to ready and idle memory with three handlers.
    Startup,
    /// Hot-reload latency of a handler file, and throughput while reloading.
    Reload,
    /// Kafka consume pipeline and HTTP publish to Kafka against raw
    /// rdkafka, on a tansu broker that the scenario starts.
    Kafka,
}

#[derive(Debug, Parser)]
#[command(about = "Run switchyard's benchmarks against its baselines")]
struct Options {
    /// The switchyard binary to measure (a release build).
    #[arg(long)]
    switchyard: PathBuf,
    /// Repository root, where the manifests and Node.js baselines are.
    #[arg(long, default_value = ".")]
    root: PathBuf,
    /// Runs of switchyard and of each baseline per figure, alternating;
    /// each figure is the median.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Messages pre-loaded for each consume run, and records of each raw
    /// rdkafka produce run.
    #[arg(long, default_value_t = 20_000)]
    messages: u32,
    /// Seconds of each wrk run.
    #[arg(long, default_value_t = 10)]
    http_seconds: u64,
    /// Connections of each wrk run.
    #[arg(long, default_value_t = 32)]
    connections: u32,
    /// RabbitMQ vhost created for the run and deleted after it.
    #[arg(long, default_value = "switchyard-bench")]
    vhost: String,
    /// Criterion's output folder with the per-event estimates; without it
    /// the per-event figures are left out.
    #[arg(long)]
    criterion: Option<PathBuf>,
    /// Path of the summary JSON file.
    #[arg(long, default_value = "target/bench/summary.json")]
    output: PathBuf,
    /// Scenarios to run, comma-separated; default all.
    #[arg(long, value_delimiter = ',')]
    only: Vec<Scenario>,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let options = Options::parse();
    match run(options).await {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Runs the scenarios and writes the summary; returns false when a scenario
/// failed, after writing the figures of the others.
async fn run(options: Options) -> anyhow::Result<bool> {
    let mut machine = Machine::describe(options.runs);
    println!(
        "{} cores, {} MiB, RabbitMQ {}, Kafka broker {}, load {}",
        machine.cores,
        machine.memory_mib,
        machine.rabbitmq,
        machine.kafka_broker,
        machine.load_at_start
    );
    let vhost = rabbit::Vhost::create(&options.vhost)?;
    let amqp_url = vhost.url();
    let root = suite::absolute(&options.root);
    let suite = Suite {
        logs: root.join("target/bench/logs"),
        root,
        switchyard: suite::absolute(&options.switchyard),
        runs: options.runs.max(1),
        messages: options.messages,
        http_duration: Duration::from_secs(options.http_seconds),
        http_connections: options.connections,
        connection: rabbit::connect(&amqp_url).await?,
        amqp_url,
        client: reqwest::Client::new(),
    };

    let mut figures: Vec<Figure> = Vec::new();
    let mut all_ran = true;
    if let Some(dir) = &options.criterion {
        match criterion::figures(dir) {
            Ok(per_event) => figures.extend(per_event),
            Err(err) => {
                eprintln!("error: per-event figures: {err:#}");
                all_ran = false;
            }
        }
    }
    let scenarios = if options.only.is_empty() {
        Scenario::value_variants().to_vec()
    } else {
        options.only.clone()
    };
    for scenario in scenarios {
        println!("{scenario:?}:");
        let result = match scenario {
            Scenario::Consume => consume::run(&suite).await,
            Scenario::Http => http::run(&suite).await,
            Scenario::Embedded => embedded::run(&suite).await,
            Scenario::Startup => startup::run(&suite).await,
            Scenario::Reload => reload::run(&suite).await,
            Scenario::Kafka => kafka::run(&suite, !options.only.is_empty()).await,
        };
        match result {
            Ok(measured) => figures.extend(measured),
            Err(err) => {
                eprintln!("error: scenario {scenario:?} failed: {err:#}");
                all_ran = false;
            }
        }
    }

    let _ = suite.connection.close(200, "OK".into()).await;
    if let Err(err) = vhost.delete() {
        eprintln!("warning: cannot delete vhost `{}`: {err:#}", options.vhost);
    }
    machine.load_at_end = figures::load_average();
    let output = suite::absolute(&options.output);
    figures::write_summary(&output, &machine, &figures)?;
    println!("\n{}", figures::table(&figures));
    println!(
        "load average at start {}, at end {}",
        machine.load_at_start, machine.load_at_end
    );
    println!("wrote {}", output.display());
    Ok(all_ran)
}
