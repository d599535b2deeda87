//! `switchyard test`: runs test cases written in TOML against the manifests,
//! on the embedded broker with the real handler components, and prints a
//! line per case and a diff for each failure.

mod compare;
pub mod file;
mod run;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use self::compare::Mismatch;
use self::file::{Case, CaseFile};
use self::run::{Harness, Observation};
use crate::manifest::{self, Purpose};
use crate::system;

/// Handler calls listed in a failure report; a looping case makes many.
const REPORTED_CALLS: usize = 20;

/// Totals of a test run.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub passed: usize,
    pub failed: usize,
}

/// Runs the cases of `case_files`, or of every case file beside the
/// manifests when none is given, and prints the results on stdout.
pub async fn run(manifests: &[PathBuf], case_files: &[PathBuf]) -> anyhow::Result<Summary> {
    // As `check` does: an unset `${VAR}` is only a warning, because no
    // broker is contacted. Warnings are not printed, since the cases replace
    // every broker with the embedded one.
    let (manifest, schemas, _warnings) = system::load_and_compile(manifests, Purpose::Check)?;

    let paths = if case_files.is_empty() {
        file::discover(manifests).map_err(anyhow::Error::msg)?
    } else {
        case_files.to_vec()
    };
    let files: Vec<CaseFile> = paths
        .iter()
        .map(|path| file::read(path))
        .collect::<Result<_, _>>()
        .map_err(anyhow::Error::msg)?;

    let harness = Harness::new(manifest, schemas)?;
    let total: usize = files.iter().map(|f| f.cases.len()).sum();
    println!("running {total} test cases from {} files", files.len());

    let mut summary = Summary::default();
    let mut failures = String::new();
    for file in &files {
        let shown = display_name(&file.path);
        for case in &file.cases {
            let result = run_case(&harness, case).await;
            match result {
                Ok(()) => {
                    summary.passed += 1;
                    println!("case {shown}: {} ... ok", case.name);
                }
                Err(report) => {
                    summary.failed += 1;
                    println!("case {shown}: {} ... FAILED", case.name);
                    let _ = write!(failures, "\n---- {shown}: {} ----\n{report}", case.name);
                }
            }
        }
    }
    if summary.failed > 0 {
        print!("\nfailures:\n{failures}");
    }
    let verdict = if summary.failed == 0 { "ok" } else { "FAILED" };
    println!(
        "\ntest result: {verdict}. {} passed; {} failed",
        summary.passed, summary.failed
    );
    Ok(summary)
}

/// Runs one case and returns the failure report when it fails.
async fn run_case(harness: &Harness, case: &Case) -> Result<(), String> {
    if let Some(problem) = unknown_names(harness.manifest(), case) {
        return Err(format!("  {problem}\n"));
    }
    let observation = harness
        .run(&case.event, case.data.clone())
        .await
        .map_err(|err| format!("  cannot run the case: {err:#}\n"))?;
    let mismatches = compare::compare(case, &observation);
    if mismatches.is_empty() {
        return Ok(());
    }
    Err(report(&mismatches, &observation))
}

/// Names an event type or consumer of the case that the manifests do not
/// define, so a typo does not pass as "no such call".
fn unknown_names(manifest: &manifest::Manifest, case: &Case) -> Option<String> {
    let known_events = || {
        let names: Vec<&str> = manifest.events.keys().map(String::as_str).collect();
        names.join(", ")
    };
    if !manifest.events.contains_key(&case.event) {
        return Some(format!(
            "event type `{}` is not defined in the manifests; defined types: {}",
            case.event,
            known_events()
        ));
    }
    for entry in case.handled.iter().flatten() {
        if !manifest.consumers.contains_key(&entry.consumer) {
            let names: Vec<&str> = manifest.consumers.keys().map(String::as_str).collect();
            return Some(format!(
                "consumer `{}` is not defined in the manifests; defined consumers: {}",
                entry.consumer,
                names.join(", ")
            ));
        }
        let types = entry
            .event
            .iter()
            .chain(entry.emits.iter().flatten().map(|e| &e.event));
        for event_type in types {
            if !manifest.events.contains_key(event_type) {
                return Some(format!(
                    "event type `{event_type}` is not defined in the manifests; defined types: {}",
                    known_events()
                ));
            }
        }
    }
    None
}

/// Formats the mismatches, then what the run did, so the expectation can
/// be corrected from the report alone.
fn report(mismatches: &[Mismatch], observation: &Observation) -> String {
    let mut text = String::new();
    for mismatch in mismatches {
        let _ = writeln!(text, "  {}", mismatch.field);
        let _ = writeln!(text, "    expected: {}", mismatch.expected);
        let _ = writeln!(text, "    found:    {}", mismatch.found);
    }
    text.push_str("  what happened:\n");
    if let Some(error) = &observation.schema_error {
        let _ = writeln!(text, "    the input failed its schema: {error}");
        return text;
    }
    let routed: Vec<String> = observation
        .routed
        .iter()
        .map(|landing| match landing.count {
            1 => format!("{} {}", landing.kind, landing.name),
            n => format!("{} {} ({n} copies)", landing.kind, landing.name),
        })
        .collect();
    if routed.is_empty() {
        text.push_str("    the input reached no queue or topic\n");
    } else {
        let _ = writeln!(text, "    the input reached {}", routed.join(", "));
    }
    for call in observation.calls.iter().take(REPORTED_CALLS) {
        let _ = write!(
            text,
            "    `{}` handled `{}`: {}",
            call.consumer, call.event_type, call.outcome
        );
        if let Some(reason) = &call.reason {
            let _ = write!(text, " ({reason})");
        }
        text.push('\n');
        for event in &call.emitted {
            let _ = writeln!(text, "      emitted `{}` {}", event.event_type, event.data);
        }
    }
    if observation.calls.len() > REPORTED_CALLS {
        let _ = writeln!(
            text,
            "    ... and {} more handler calls",
            observation.calls.len() - REPORTED_CALLS
        );
    }
    text
}

/// Shows a case file by its file name.
fn display_name(path: &Path) -> String {
    path.file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}
