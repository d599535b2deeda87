//! Per-event figures from the criterion benchmark `benches/per_event.rs`,
//! read from the estimates criterion writes.

use std::path::Path;

use anyhow::Context;

use crate::figures::Figure;

/// Benchmark ids of `benches/per_event.rs` and the figure each becomes.
const BENCHMARKS: &[(&str, &str)] = &[
    ("total", "per_event_total"),
    ("decode", "per_event_decode"),
    ("validate", "per_event_validate"),
    ("handler_call", "per_event_handler_call"),
    ("handler_call_fresh", "per_event_handler_call_fresh"),
    ("bookkeeping", "per_event_bookkeeping"),
];

/// Returns the criterion medians, in microseconds, from `dir` (criterion's
/// output folder, `$CARGO_TARGET_DIR/criterion`).
pub fn figures(dir: &Path) -> anyhow::Result<Vec<Figure>> {
    BENCHMARKS
        .iter()
        .map(|(id, name)| {
            let path = dir.join("per_event").join(id).join("new/estimates.json");
            let text = std::fs::read_to_string(&path).with_context(|| {
                format!(
                    "cannot read `{}`; did `cargo bench --bench per_event` run?",
                    path.display()
                )
            })?;
            let estimates: serde_json::Value = serde_json::from_str(&text)?;
            let nanoseconds = estimates["median"]["point_estimate"]
                .as_f64()
                .with_context(|| format!("`{}` has no median", path.display()))?;
            Ok(Figure::alone(name, &[nanoseconds / 1000.0], "µs"))
        })
        .collect()
}
