//! The command line: argument parsing and the commands that are not the
//! long-running `up`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::handler::HandlerHost;
use crate::manifest::{self, ManifestFile, Problem, Purpose, Severity};
use crate::schema::Schemas;
use crate::system::{self, UpOptions};
use crate::telemetry::{self, LogFormat};
use crate::topology::Action;

/// Declarative event runtime: provisions RabbitMQ topology from TOML
/// manifests, validates events against JSON Schemas and runs WebAssembly
/// handlers.
#[derive(Debug, Parser)]
#[command(name = "switchyard", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Provision the topology and run producers and consumers until SIGINT or SIGTERM.
    Up(UpArgs),
    /// Validate manifests, schemas and handlers without connecting to any broker.
    Check(CheckArgs),
    /// Print the manifest's JSON Schema (draft-07, for editors).
    Schema,
    /// Show what provisioning would create, leave unchanged or conflict with,
    /// changing nothing. Exits 1 when there is a conflict.
    Plan(PlanArgs),
    /// Validate one event and publish it to its targets, waiting for the confirm.
    Publish(PublishArgs),
}

#[derive(Debug, Args)]
struct UpArgs {
    /// Manifest files; several form one topology.
    #[arg(required = true)]
    manifests: Vec<PathBuf>,
    /// Run every broker in this process instead of connecting to real ones.
    #[arg(long)]
    embedded: bool,
    /// HTTP address for producers, probes and metrics [default: the
    /// manifest's `runtime.listen`, else 127.0.0.1:3000].
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Log line format.
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
}

#[derive(Debug, Args)]
struct PlanArgs {
    /// Manifest files; several form one topology.
    #[arg(required = true)]
    manifests: Vec<PathBuf>,
}

#[derive(Debug, Args)]
struct PublishArgs {
    /// Manifest files, then the event type, such as `order.placed`.
    #[arg(required = true, num_args = 2.., value_name = "MANIFEST... EVENT_TYPE")]
    arguments: Vec<String>,
    /// Event data as JSON, or `@FILE` to read it from a file.
    #[arg(long, value_name = "JSON|@FILE")]
    data: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum OutputFormat {
    Text,
    Json,
}

#[derive(Debug, Args)]
struct CheckArgs {
    /// Manifest files; several form one topology.
    #[arg(required = true)]
    manifests: Vec<PathBuf>,
    /// `text` writes problems to stderr with source lines; `json` writes
    /// `{"problems": [...]}` to stdout.
    #[arg(long, value_enum, default_value = "text")]
    format: OutputFormat,
    /// Exit 1 when there are warnings, not only errors.
    #[arg(long)]
    deny_warnings: bool,
}

/// Runs the command line and returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Up(args) => up(args),
        Command::Check(args) => check(args),
        Command::Schema => {
            print!("{}", manifest_schema());
            Ok(ExitCode::SUCCESS)
        }
        Command::Publish(args) => publish(args),
        Command::Plan(args) => plan(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn up(args: UpArgs) -> anyhow::Result<ExitCode> {
    telemetry::init_logging(args.log_format);
    let runtime = tokio::runtime::Runtime::new()?;
    let result = runtime.block_on(system::up(UpOptions {
        manifests: args.manifests,
        embedded: args.embedded,
        listen: args.listen,
    }));
    keep_until_exit(runtime);
    result.map(|()| ExitCode::SUCCESS)
}

/// Leaves the async runtime running until the process exits. lapin's I/O
/// thread can outlive its connection (a failed connect, for one) and panics
/// when it finds the runtime shutting down; the process ends right after
/// this anyway.
fn keep_until_exit(runtime: tokio::runtime::Runtime) {
    std::mem::forget(runtime);
}

fn plan(args: PlanArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Runtime::new()?;
    let result = runtime.block_on(system::plan(&args.manifests));
    keep_until_exit(runtime);
    let plans = result?;

    let mut conflicts = 0;
    for (broker, steps) in &plans {
        println!("broker `{broker}`");
        for step in steps {
            let (word, detail) = match &step.action {
                Action::Create => ("create", None),
                Action::Unchanged => ("unchanged", None),
                Action::Ensure => ("ensure", None),
                Action::Conflict(text) => {
                    conflicts += 1;
                    ("conflict", Some(text))
                }
            };
            println!("  {word:<10} {:<8} {}", step.kind, step.name);
            if let Some(detail) = detail {
                println!("             {detail}");
            }
        }
        let count = |wanted: fn(&Action) -> bool| steps.iter().filter(|s| wanted(&s.action)).count();
        println!(
            "  {} to create, {} unchanged, {} bindings to ensure, {} conflicts\n",
            count(|a| *a == Action::Create),
            count(|a| *a == Action::Unchanged),
            count(|a| *a == Action::Ensure),
            count(|a| matches!(a, Action::Conflict(_))),
        );
    }
    Ok(if conflicts > 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

fn publish(args: PublishArgs) -> anyhow::Result<ExitCode> {
    telemetry::init_logging(LogFormat::Text);
    let mut arguments = args.arguments;
    let event_type = arguments.pop().unwrap_or_default();
    let manifests: Vec<PathBuf> = arguments.into_iter().map(PathBuf::from).collect();
    let text = match args.data.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|err| anyhow::anyhow!("cannot read event data from `{path}`: {err}"))?,
        None => args.data,
    };
    let data: serde_json::Value = serde_json::from_str(&text)
        .map_err(|err| anyhow::anyhow!("`--data` is not valid JSON: {err}"))?;

    let runtime = tokio::runtime::Runtime::new()?;
    let result = runtime.block_on(system::publish_once(&manifests, &event_type, data));
    keep_until_exit(runtime);
    let event = result?;
    println!("{}", serde_json::json!({ "id": event.id, "type": event.event_type }));
    Ok(ExitCode::SUCCESS)
}

fn check(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let loaded = manifest::load(&args.manifests, Purpose::Check, &|name| std::env::var(name).ok());
    let mut problems = loaded.problems;
    let manifest = loaded.manifest;

    let (_, schema_problems) = Schemas::compile(&manifest);
    problems.extend(schema_problems);

    let host = HandlerHost::new().map_err(|err| anyhow::anyhow!("{err}"))?;
    for (name, entry) in &manifest.consumers {
        let Some(path) = manifest.handler_path(name) else {
            continue;
        };
        if !path.exists() {
            continue;
        }
        if let Err(reason) = host.load_file(&path) {
            problems.push(
                Problem::error(
                    "handler-invalid",
                    format!("handler `{}` of consumer `{name}` is not usable: {reason}", path.display()),
                )
                .at(entry.file, entry.def.handler.span())
                .hint("build it as a component of the world in handlers/wit"),
            );
        }
    }

    let errors = problems.iter().filter(|p| p.severity == Severity::Error).count();
    let warnings = problems.len() - errors;
    match args.format {
        OutputFormat::Json => {
            let records: Vec<_> = problems.iter().map(|p| manifest::record(p, &manifest.files)).collect();
            println!("{}", serde_json::json!({ "problems": records }));
        }
        OutputFormat::Text => {
            eprint!("{}", manifest::render(&problems, &manifest.files));
            eprintln!("{errors} error(s), {warnings} warning(s)");
        }
    }
    let failed = errors > 0 || (args.deny_warnings && warnings > 0);
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

/// Returns the manifest's JSON Schema as draft-07, which editors' TOML
/// tooling reads.
pub fn manifest_schema() -> String {
    let generator = schemars::generate::SchemaSettings::draft07().into_generator();
    let schema = generator.into_root_schema_for::<ManifestFile>();
    let mut text = serde_json::to_string_pretty(&schema).unwrap_or_default();
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `schemas/manifest.schema.json` is what editors read; it must be
    /// exactly what `switchyard schema` prints. Refresh it with
    /// `cargo run -p switchyard -- schema > schemas/manifest.schema.json`.
    #[test]
    fn committed_manifest_schema_current() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../schemas/manifest.schema.json");
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == manifest_schema(),
            "{} is out of date; run `cargo run -p switchyard -- schema > schemas/manifest.schema.json`",
            path.display()
        );
    }

    #[test]
    fn manifest_schema_is_draft_07() {
        let schema: serde_json::Value = serde_json::from_str(&manifest_schema()).unwrap();
        assert_eq!(schema["$schema"], "http://json-schema.org/draft-07/schema#");
        assert!(schema["properties"]["consumers"].is_object());
    }
}
