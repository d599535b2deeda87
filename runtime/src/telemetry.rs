//! Logs, metrics and readiness.
//!
//! Metric names are part of switchyard's contract; they are listed once
//! here and documented in the README.

use std::collections::BTreeMap;
use std::io::IsTerminal as _;
use std::sync::{Arc, Mutex};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde::Serialize;
use tracing::field::{Field, Visit};
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

pub const EVENTS_PUBLISHED: &str = "switchyard_events_published_total";
pub const EVENTS_HANDLED: &str = "switchyard_events_handled_total";
pub const EVENTS_DEAD_LETTERED: &str = "switchyard_events_dead_lettered_total";
pub const HANDLER_DURATION: &str = "switchyard_handler_duration_seconds";
pub const HANDLER_RELOADS: &str = "switchyard_handler_reloads_total";
pub const EVENTS_IN_FLIGHT: &str = "switchyard_events_in_flight";
pub const HTTP_REJECTED: &str = "switchyard_http_requests_rejected_total";
pub const BROKER_CONNECTED: &str = "switchyard_broker_connected";
pub const BROKER_RECONNECTS: &str = "switchyard_broker_reconnects_total";
pub const PREFETCH_UTILIZATION: &str = "switchyard_consumer_prefetch_utilization_ratio";
pub const LIMIT_HITS: &str = "switchyard_handler_limit_hits_total";
pub const HANDLER_DENIALS: &str = "switchyard_handler_denials_total";
pub const QUEUE_DEPTH: &str = "switchyard_queue_depth";
pub const CONSUMER_LAG: &str = "switchyard_consumer_lag";

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Default log filter. lapin logs each channel closed by the broker and each
/// failed connection at error level. switchyard reports both with context.
const DEFAULT_FILTER: &str = "info,lapin::channel=off,lapin::io_loop=off";

/// Installs the global tracing subscriber; the filter comes from `RUST_LOG`,
/// default `info` without lapin's channel and I/O loop errors.
pub fn init_logging(format: LogFormat) {
    init_logging_with_default(format, DEFAULT_FILTER);
}

/// Installs the log subscriber with `default_filter` in place of the
/// default, for when `RUST_LOG` is not set.
pub fn init_logging_with_default(format: LogFormat, default_filter: &str) {
    let from_env = std::env::var("RUST_LOG")
        .ok()
        .filter(|value| !value.is_empty())
        .map(|value| (tracing_subscriber::EnvFilter::try_new(&value), value));
    let (filter, invalid) = match from_env {
        Some((Ok(filter), _)) => (filter, None),
        Some((Err(err), value)) => (
            tracing_subscriber::EnvFilter::new(default_filter),
            Some((value, err)),
        ),
        None => (tracing_subscriber::EnvFilter::new(default_filter), None),
    };
    // Colours only for a terminal, so that a log file or collector gets
    // plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .fmt_fields(JsonFields::new())
            .event_format(JsonLines)
            .try_init(),
    };
    if let Some((value, err)) = invalid {
        tracing::warn!(
            "RUST_LOG `{value}` is not a valid log filter ({err}), so the default `{default_filter}` applies; \
             write directives such as `info` or `switchyard=debug,lapin=warn`"
        );
    }
}

/// The `--log-format json` line: one object with `timestamp`, `level`,
/// `target` and `fields`. `fields` contains the event's own fields and those of
/// every span around it, so a per-event line carries the consumer, queue and
/// event ids as plain fields that log search can filter on.
struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        context: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let mut fields = serde_json::Map::new();
        if let Some(scope) = context.event_scope() {
            for span in scope.from_root() {
                let extensions = span.extensions();
                let Some(recorded) = extensions.get::<FormattedFields<N>>() else {
                    continue;
                };
                // `JsonFields` stores a span's fields as one JSON object.
                if let Ok(serde_json::Value::Object(span_fields)) =
                    serde_json::from_str(recorded.fields.as_str())
                {
                    fields.extend(span_fields);
                }
            }
        }
        event.record(&mut JsonVisitor(&mut fields));
        let metadata = event.metadata();
        let line = serde_json::json!({
            "timestamp": crate::event::now_rfc3339(),
            "level": metadata.level().as_str(),
            "target": metadata.target(),
            "fields": fields,
        });
        writeln!(writer, "{line}")
    }
}

/// Collects an event's fields as JSON values.
struct JsonVisitor<'a>(&'a mut serde_json::Map<String, serde_json::Value>);

impl Visit for JsonVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.into());
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_owned(), value.into());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), value.into());
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().to_owned(), value.into());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_owned(), value.into());
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0
            .insert(field.name().to_owned(), value.to_string().into());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().to_owned(), format!("{value:?}").into());
    }
}

/// Installs the Prometheus recorder and returns the handle that renders
/// `/metrics`.
pub fn init_metrics() -> anyhow::Result<PrometheusHandle> {
    let buckets = [
        0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
        0.5, 1.0, 2.5, 5.0, 10.0,
    ];
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(HANDLER_DURATION.to_owned()), &buckets)?
        .install_recorder()?;
    metrics::describe_counter!(EVENTS_PUBLISHED, "Publishes confirmed by the broker.");
    metrics::describe_counter!(
        EVENTS_HANDLED,
        "Handler outcomes: ok, retry or dead_lettered."
    );
    metrics::describe_counter!(
        EVENTS_DEAD_LETTERED,
        "Events sent to a dead-letter exchange."
    );
    metrics::describe_histogram!(
        HANDLER_DURATION,
        metrics::Unit::Seconds,
        "Wall time of one handler call."
    );
    metrics::describe_counter!(HANDLER_RELOADS, "Handler reloads by result.");
    metrics::describe_gauge!(EVENTS_IN_FLIGHT, "Events being handled now.");
    metrics::describe_counter!(HTTP_REJECTED, "Producer requests answered with an error.");
    metrics::describe_gauge!(BROKER_CONNECTED, "1 while the broker connection is up.");
    metrics::describe_counter!(
        BROKER_RECONNECTS,
        "Broker connections restored after a loss."
    );
    metrics::describe_counter!(
        LIMIT_HITS,
        "Handler calls stopped by a limit: deadline, memory or emit_size."
    );
    metrics::describe_counter!(
        HANDLER_DENIALS,
        "Accesses the sandbox denied a handler, by resource: network or filesystem."
    );
    metrics::describe_gauge!(
        PREFETCH_UTILIZATION,
        "Unsettled deliveries of a queue consumer divided by its prefetch."
    );
    metrics::describe_gauge!(
        QUEUE_DEPTH,
        "Ready messages in a queue, read from the broker every 5 s."
    );
    metrics::describe_gauge!(
        CONSUMER_LAG,
        "Records of a Kafka partition after the group's committed offset."
    );
    Ok(handle)
}

/// State of one readiness check.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Check {
    pub ok: bool,
    pub detail: String,
}

/// Readiness checks by name, such as `broker:rabbit` or `consumer:email-service`.
#[derive(Clone, Debug, Default)]
pub struct Readiness {
    checks: Arc<Mutex<BTreeMap<String, Check>>>,
}

impl Readiness {
    pub fn set(&self, name: impl Into<String>, ok: bool, detail: impl Into<String>) {
        let check = Check {
            ok,
            detail: detail.into(),
        };
        self.lock().insert(name.into(), check);
    }

    /// Returns whether every check passes, and all checks.
    pub fn snapshot(&self) -> (bool, BTreeMap<String, Check>) {
        let checks = self.lock().clone();
        let ready = !checks.is_empty() && checks.values().all(|check| check.ok);
        (ready, checks)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Check>> {
        self.checks
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}
