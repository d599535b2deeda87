//! The command line: argument parsing and the commands that are not the
//! long-running `up`.

use std::fmt::Write as _;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};

use crate::handler::HandlerHost;
use crate::manifest::{self, ManifestFile, Problem, Purpose, Severity};
use crate::schema::Schemas;
use crate::schema::compat::Compatibility;
use crate::system::{self, UpOptions};
use crate::telemetry::{self, LogFormat};
use crate::topology::Action;

mod against;

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
    /// Show where an event type goes: exchanges and topics, matching
    /// bindings, queues, consumers, and where failures end up.
    Explain(ExplainArgs),
    /// Write an AsyncAPI 3.0 document (YAML) of the topology.
    Asyncapi(AsyncapiArgs),
    /// Run test cases (`*.test.toml`) on the embedded broker with the real
    /// handlers. Exits 1 when a case fails.
    Test(TestArgs),
}

#[derive(Debug, Args)]
struct TestArgs {
    /// Manifest files, then case files (names ending in `.test.toml`).
    /// Without case files, every `*.test.toml` beside the manifests runs.
    #[arg(required = true, value_name = "MANIFEST... [CASE_FILE...]")]
    paths: Vec<PathBuf>,
}

#[derive(Debug, Args)]
struct AsyncapiArgs {
    /// Manifest files; several form one topology.
    #[arg(required = true)]
    manifests: Vec<PathBuf>,
    /// File to write instead of stdout.
    #[arg(long, value_name = "FILE")]
    output: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct ExplainArgs {
    /// Manifest files, then the event type, such as `order.placed`.
    #[arg(required = true, num_args = 2.., value_name = "MANIFEST... EVENT_TYPE")]
    arguments: Vec<String>,
    /// Routing key to publish with, instead of each target's own.
    #[arg(long, value_name = "ROUTING_KEY")]
    key: Option<String>,
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
    /// HTTP address for `/healthz`, `/readyz` and `/metrics`, which the
    /// `--listen` address then no longer serves [default: the manifest's
    /// `runtime.admin_listen`, else the `--listen` address].
    #[arg(long, value_name = "ADDR")]
    admin_listen: Option<String>,
    /// Log line format.
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Threads that run handlers, consumers and HTTP requests [default: one
    /// per processor core]. On a small machine that also runs the broker,
    /// fewer threads than cores can be faster: see the README.
    #[arg(long, env = "SWITCHYARD_WORKERS", value_name = "N", value_parser = parse_workers)]
    workers: Option<NonZeroUsize>,
}

/// Parses `--workers`, whose value may come from `SWITCHYARD_WORKERS`, which
/// the error names too.
fn parse_workers(text: &str) -> Result<NonZeroUsize, String> {
    match text.trim().parse::<usize>() {
        Ok(count) => NonZeroUsize::new(count).ok_or_else(|| {
            "0 threads cannot run anything; give 1 or more, in `--workers` or `SWITCHYARD_WORKERS`"
                .to_owned()
        }),
        Err(_) => Err(
            "give a number of threads, such as 1 or 2, in `--workers` or `SWITCHYARD_WORKERS`"
                .to_owned(),
        ),
    }
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
    /// Older checkout of this repository: each event schema is compared
    /// with the same event's schema there.
    #[arg(long, value_name = "DIR")]
    against: Option<PathBuf>,
    /// Readers that schema changes must keep working for `--against`.
    #[arg(long, value_enum, default_value = "backward", requires = "against")]
    compat: Compatibility,
}

/// Runs the command line and returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Up(args) => up(args),
        Command::Check(args) => check(args),
        Command::Schema => {
            print_output(&manifest_schema());
            Ok(ExitCode::SUCCESS)
        }
        Command::Publish(args) => publish(args),
        Command::Plan(args) => plan(args),
        Command::Explain(args) => explain(args),
        Command::Asyncapi(args) => asyncapi(args),
        Command::Test(args) => test(args),
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
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(workers) = args.workers {
        builder.worker_threads(workers.get());
    }
    let runtime = builder.build()?;
    tracing::info!(
        workers = runtime.metrics().num_workers(),
        "async runtime started"
    );
    let result = runtime.block_on(system::up(UpOptions {
        manifests: args.manifests,
        embedded: args.embedded,
        listen: args.listen,
        admin_listen: args.admin_listen,
        log_format: args.log_format,
    }));
    keep_until_exit(runtime);
    match result {
        Ok(()) => Ok(ExitCode::SUCCESS),
        // A JSON log ends with a JSON record, not with the plain error line
        // that other commands print.
        Err(err) if args.log_format == LogFormat::Json => {
            tracing::error!(
                error = format!("{err:#}"),
                "switchyard stopped with an error"
            );
            Ok(ExitCode::FAILURE)
        }
        Err(err) => Err(err),
    }
}

/// Leaves the async runtime running until the process exits. lapin's I/O
/// thread can outlive its connection (after a failed connect, for one), and
/// it panics when it finds the runtime shutting down. The process ends right
/// after this anyway.
fn keep_until_exit(runtime: tokio::runtime::Runtime) {
    std::mem::forget(runtime);
}

fn plan(args: PlanArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Runtime::new()?;
    let result = runtime.block_on(system::plan(&args.manifests));
    keep_until_exit(runtime);
    let plans = result?;

    let mut conflicts = 0;
    let mut out = String::new();
    for (broker, steps) in &plans {
        let _ = writeln!(out, "broker `{broker}`");
        for step in steps {
            let (word, detail) = match &step.action {
                Action::Create => ("create", None),
                Action::Unchanged => ("unchanged", None),
                Action::Ensure => ("ensure", None),
                Action::Update(text) => ("update", Some(text)),
                Action::Conflict(text) => {
                    conflicts += 1;
                    ("conflict", Some(text))
                }
            };
            let _ = writeln!(out, "  {word:<10} {:<8} {}", step.kind, step.name);
            if let Some(detail) = detail {
                let _ = writeln!(out, "             {detail}");
            }
        }
        let count =
            |wanted: fn(&Action) -> bool| steps.iter().filter(|s| wanted(&s.action)).count();
        let _ = writeln!(
            out,
            "  {} to create, {} to update, {} unchanged, {} bindings to ensure, {} conflicts\n",
            count(|a| *a == Action::Create),
            count(|a| matches!(a, Action::Update(_))),
            count(|a| *a == Action::Unchanged),
            count(|a| *a == Action::Ensure),
            count(|a| matches!(a, Action::Conflict(_))),
        );
    }
    print_output(&out);
    Ok(if conflicts > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// The largest file that `publish --data @FILE` reads.
const PUBLISH_DATA_LIMIT: u64 = 16 * 1024 * 1024;

/// Reads the event data of `publish --data @FILE`, up to
/// [`PUBLISH_DATA_LIMIT`], so that a device such as `/dev/zero` cannot
/// fill the memory.
fn read_event_data(path: &str) -> anyhow::Result<String> {
    use std::io::Read as _;
    let cannot_read =
        |err: std::io::Error| anyhow::anyhow!("cannot read event data from `{path}`: {err}");
    let file = std::fs::File::open(path).map_err(cannot_read)?;
    let mut text = String::new();
    file.take(PUBLISH_DATA_LIMIT + 1)
        .read_to_string(&mut text)
        .map_err(cannot_read)?;
    if text.len() as u64 > PUBLISH_DATA_LIMIT {
        anyhow::bail!(
            "event data in `{path}` is larger than {} MiB; publish a smaller event",
            PUBLISH_DATA_LIMIT / (1024 * 1024)
        );
    }
    Ok(text)
}

fn publish(args: PublishArgs) -> anyhow::Result<ExitCode> {
    telemetry::init_logging(LogFormat::Text);
    let mut arguments = args.arguments;
    let event_type = arguments.pop().unwrap_or_default();
    let manifests: Vec<PathBuf> = arguments.into_iter().map(PathBuf::from).collect();
    let text = match args.data.strip_prefix('@') {
        Some(path) => read_event_data(path)?,
        None => args.data,
    };
    let data: serde_json::Value = serde_json::from_str(&text)
        .map_err(|err| anyhow::anyhow!("`--data` is not valid JSON: {err}"))?;

    let runtime = tokio::runtime::Runtime::new()?;
    let result = runtime.block_on(system::publish_once(&manifests, &event_type, data));
    keep_until_exit(runtime);
    let event = result?;
    print_output(&format!(
        "{}\n",
        serde_json::json!({ "id": event.id, "type": event.event_type })
    ));
    Ok(ExitCode::SUCCESS)
}

fn test(args: TestArgs) -> anyhow::Result<ExitCode> {
    // Failed handler calls would log warnings, but the report already lists
    // them, so only errors are logged.
    telemetry::init_logging_with_default(LogFormat::Text, "error");
    let (case_files, manifests): (Vec<PathBuf>, Vec<PathBuf>) =
        args.paths.into_iter().partition(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.ends_with(crate::cases::file::SUFFIX))
        });
    if manifests.is_empty() {
        // A usage error, so it exits 2 like the ones clap reports.
        let mut command = Cli::command();
        // Building gives the subcommand its full name for the usage line.
        command.build();
        let test = command
            .find_subcommand_mut("test")
            .expect("the command line has a `test` subcommand");
        test.error(
            clap::error::ErrorKind::MissingRequiredArgument,
            "no manifest given; name the manifests before the case files, such as \
             `switchyard test manifests/shop.toml manifests/shop.test.toml`",
        )
        .exit();
    }
    let runtime = tokio::runtime::Runtime::new()?;
    let summary = runtime.block_on(crate::cases::run(&manifests, &case_files))?;
    Ok(if summary.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn asyncapi(args: AsyncapiArgs) -> anyhow::Result<ExitCode> {
    let loaded = manifest::load(&args.manifests, Purpose::Check, &|name| {
        std::env::var(name).ok()
    });
    if loaded.has_errors() {
        anyhow::bail!("invalid manifest:\n{}", loaded.render());
    }
    let document = crate::asyncapi::document(&loaded.manifest).map_err(anyhow::Error::msg)?;
    let text = serde_saphyr::to_string(&document)
        .map_err(|err| anyhow::anyhow!("cannot write the document as YAML: {err}"))?;
    match &args.output {
        Some(path) => std::fs::write(path, &text)
            .map_err(|err| anyhow::anyhow!("cannot write `{}`: {err}", path.display()))?,
        None => print_output(&text),
    }
    Ok(ExitCode::SUCCESS)
}

fn explain(args: ExplainArgs) -> anyhow::Result<ExitCode> {
    let mut arguments = args.arguments;
    let event_type = arguments.pop().unwrap_or_default();
    let manifests: Vec<PathBuf> = arguments.into_iter().map(PathBuf::from).collect();
    // As `check` does: an unset `${VAR}` is only a warning here.
    let loaded = manifest::load(&manifests, Purpose::Check, &|name| std::env::var(name).ok());
    if loaded.has_errors() {
        anyhow::bail!("invalid manifest:\n{}", loaded.render());
    }
    let text = crate::explain::explain(&loaded.manifest, &event_type, args.key.as_deref())
        .map_err(anyhow::Error::msg)?;
    print_output(&text);
    Ok(ExitCode::SUCCESS)
}

/// Writes a command's output to stdout. A reader that went away, such as
/// `head` or `true`, ends the output quietly, as with other command-line
/// tools; `print!` would panic.
fn print_output(text: &str) {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    let written = stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush());
    if let Err(err) = written
        && err.kind() != std::io::ErrorKind::BrokenPipe
    {
        eprintln!("error: cannot write to stdout: {err}");
    }
}

fn check(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let loaded = manifest::load(&args.manifests, Purpose::Check, &|name| {
        std::env::var(name).ok()
    });
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
            let bytes = std::fs::read(&path).unwrap_or_default();
            let code = if crate::handler::is_component(&bytes) {
                "handler-wrong-world"
            } else {
                "handler-not-component"
            };
            problems.push(
                Problem::error(
                    code,
                    format!(
                        "handler `{}` of consumer `{name}` is not usable: {reason}",
                        path.display()
                    ),
                )
                .at(entry.file, entry.def.handler.span())
                .hint("build it as a component of the world in handlers/wit"),
            );
        }
    }

    if let Some(dir) = &args.against {
        problems.extend(against::compare_schemas(
            &manifest,
            &args.manifests,
            dir,
            args.compat,
        ));
    }

    let errors = problems
        .iter()
        .filter(|p| p.severity == Severity::Error)
        .count();
    let warnings = problems.len() - errors;
    match args.format {
        OutputFormat::Json => {
            let records: Vec<_> = problems
                .iter()
                .map(|p| manifest::record(p, &manifest.files))
                .collect();
            print_output(&format!("{}\n", serde_json::json!({ "problems": records })));
        }
        OutputFormat::Text => {
            eprint!("{}", manifest::render(&problems, &manifest.files));
            eprintln!("{errors} error(s), {warnings} warning(s)");
        }
    }
    let failed = errors > 0 || (args.deny_warnings && warnings > 0);
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
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

    #[test]
    fn event_data_file_read_up_to_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("order.json");
        std::fs::write(&path, r#"{"orderId": "o-1"}"#).unwrap();
        let text = read_event_data(path.to_str().unwrap()).unwrap();
        assert_eq!(text, r#"{"orderId": "o-1"}"#);

        // An endless device stops at the limit instead of filling memory.
        let err = read_event_data("/dev/zero").unwrap_err().to_string();
        assert_eq!(
            err,
            "event data in `/dev/zero` is larger than 16 MiB; publish a smaller event"
        );
    }

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
    fn workers_must_be_a_positive_count() {
        let up = |workers: &str| {
            Cli::try_parse_from(["switchyard", "up", "m.toml", "--workers", workers])
        };
        let Ok(Cli {
            command: Command::Up(args),
        }) = up("1")
        else {
            panic!("`--workers 1` is accepted");
        };
        assert_eq!(args.workers.map(NonZeroUsize::get), Some(1));
        let error = up("0").expect_err("`--workers 0` is refused").to_string();
        assert!(error.contains("--workers"), "{error}");
        assert!(error.contains("SWITCHYARD_WORKERS"), "{error}");
        let error = up("two")
            .expect_err("`--workers two` is refused")
            .to_string();
        assert!(error.contains("give a number of threads"), "{error}");
    }

    #[test]
    fn manifest_schema_is_draft_07() {
        let schema: serde_json::Value = serde_json::from_str(&manifest_schema()).unwrap();
        assert_eq!(schema["$schema"], "http://json-schema.org/draft-07/schema#");
        assert!(schema["properties"]["consumers"].is_object());
    }
}
