//! Compares what a case expects with what happened, naming each field that
//! differs.

use serde_json::Value;

use super::file::{Case, Emit, Handled};
use super::run::{Call, Observation};
use crate::event::Event;

/// One difference between a case and its run.
#[derive(Debug, PartialEq, Eq)]
pub struct Mismatch {
    /// Path of the expectation, such as `handled[email-service].outcome`.
    pub field: String,
    pub expected: String,
    pub found: String,
}

impl Mismatch {
    fn new(
        field: impl Into<String>,
        expected: impl Into<String>,
        found: impl Into<String>,
    ) -> Self {
        Mismatch {
            field: field.into(),
            expected: expected.into(),
            found: found.into(),
        }
    }
}

/// Returns every difference between the case and the observation.
pub fn compare(case: &Case, observation: &Observation) -> Vec<Mismatch> {
    let mut mismatches = Vec::new();
    if let Some(reason) = &observation.unsettled {
        mismatches.push(Mismatch::new(
            "run",
            "every queue and topic emptied",
            reason,
        ));
    }
    match (&observation.schema_error, case.valid) {
        (Some(error), true) => {
            mismatches.push(Mismatch::new("valid", "true", format!("false: {error}")));
            return mismatches;
        }
        (None, false) => {
            mismatches.push(Mismatch::new(
                "valid",
                "false (rejected by the schema of the event type)",
                "true",
            ));
        }
        (Some(error), false) => {
            if let Some(text) = &case.schema_error
                && !error.contains(text.as_str())
            {
                mismatches.push(Mismatch::new(
                    "schema_error",
                    format!("text containing {}", quote(text)),
                    quote(error),
                ));
            }
            return mismatches;
        }
        (None, true) => {}
    }

    if let Some(expected) = &case.routed {
        compare_routed(expected, observation, &mut mismatches);
    }
    if let Some(expected) = &case.handled {
        compare_handled(expected, &observation.calls, &mut mismatches);
    }
    mismatches
}

fn compare_routed(expected: &[String], observation: &Observation, mismatches: &mut Vec<Mismatch>) {
    let mut expected: Vec<&str> = expected.iter().map(String::as_str).collect();
    expected.sort_unstable();
    expected.dedup();
    let mut found: Vec<&str> = observation
        .routed
        .iter()
        .map(|landing| landing.name.as_str())
        .collect();
    found.sort_unstable();
    found.dedup();
    if expected != found {
        mismatches.push(Mismatch::new("routed", list(&expected), list(&found)));
    }
}

/// Pairs each expected call with the first call not yet paired that has
/// the same consumer (and event type, when given), then compares the pairs.
/// Calls that no expectation pairs with fail the case too.
fn compare_handled(expected: &[Handled], calls: &[Call], mismatches: &mut Vec<Mismatch>) {
    let mut paired = vec![false; calls.len()];
    for entry in expected {
        let label = label(entry);
        let found = calls.iter().enumerate().position(|(index, call)| {
            !paired[index]
                && call.consumer == entry.consumer
                && entry.event.as_ref().is_none_or(|t| *t == call.event_type)
        });
        let Some(index) = found else {
            mismatches.push(Mismatch::new(label, "a handler call", "no such call"));
            continue;
        };
        paired[index] = true;
        compare_call(&label, entry, &calls[index], mismatches);
    }
    for (call, _) in calls.iter().zip(&paired).filter(|(_, paired)| !**paired) {
        mismatches.push(Mismatch::new(
            "handled",
            "no other handler calls",
            format!(
                "`{}` handled `{}` ({})",
                call.consumer, call.event_type, call.outcome
            ),
        ));
    }
}

fn label(entry: &Handled) -> String {
    match &entry.event {
        Some(event_type) => format!("handled[{}, {event_type}]", entry.consumer),
        None => format!("handled[{}]", entry.consumer),
    }
}

fn compare_call(label: &str, entry: &Handled, call: &Call, mismatches: &mut Vec<Mismatch>) {
    if entry.outcome != call.outcome {
        let found = match &call.reason {
            Some(reason) => format!("{}: {reason}", call.outcome),
            None => call.outcome.to_string(),
        };
        mismatches.push(Mismatch::new(
            format!("{label}.outcome"),
            entry.outcome.to_string(),
            found,
        ));
        return;
    }
    if let Some(text) = &entry.reason {
        let reason = call.reason.as_deref().unwrap_or("");
        if !reason.contains(text.as_str()) {
            mismatches.push(Mismatch::new(
                format!("{label}.reason"),
                format!("text containing {}", quote(text)),
                quote(reason),
            ));
        }
    }
    if let Some(emits) = &entry.emits {
        compare_emits(label, emits, &call.emitted, mismatches);
    }
}

fn compare_emits(
    label: &str,
    expected: &[Emit],
    emitted: &[Event],
    mismatches: &mut Vec<Mismatch>,
) {
    if expected.len() != emitted.len() {
        let types: Vec<&str> = emitted.iter().map(|e| e.event_type.as_str()).collect();
        mismatches.push(Mismatch::new(
            format!("{label}.emits"),
            format!("{} events", expected.len()),
            format!("{} events: {}", emitted.len(), list(&types)),
        ));
        return;
    }
    for (index, (emit, event)) in expected.iter().zip(emitted).enumerate() {
        let field = format!("{label}.emits[{index}]");
        if emit.event != event.event_type {
            mismatches.push(Mismatch::new(
                format!("{field}.event"),
                &emit.event,
                &event.event_type,
            ));
            continue;
        }
        if let Some(data) = &emit.data {
            contains(&format!("{field}.data"), data, &event.data, mismatches);
        }
        if let Some(path) = &emit.schema {
            match_schema(&format!("{field}.data"), path, &event.data, mismatches);
        }
    }
}

/// Checks that `found` contains `expected`: every key of an object, every
/// item of an array of the same length, and equal scalars. Numbers compare
/// by value, so `2` matches `2.0`.
fn contains(path: &str, expected: &Value, found: &Value, mismatches: &mut Vec<Mismatch>) {
    match (expected, found) {
        (Value::Object(expected), Value::Object(found)) => {
            for (key, value) in expected {
                let child = format!("{path}.{key}");
                match found.get(key) {
                    Some(actual) => contains(&child, value, actual, mismatches),
                    None => mismatches.push(Mismatch::new(child, value.to_string(), "(missing)")),
                }
            }
        }
        (Value::Array(expected), Value::Array(found)) if expected.len() == found.len() => {
            for (index, (value, actual)) in expected.iter().zip(found).enumerate() {
                contains(&format!("{path}[{index}]"), value, actual, mismatches);
            }
        }
        (Value::Number(expected), Value::Number(found)) if expected.as_f64() == found.as_f64() => {}
        (expected, found) if expected == found => {}
        (expected, found) => {
            mismatches.push(Mismatch::new(path, expected.to_string(), found.to_string()));
        }
    }
}

fn match_schema(
    path: &str,
    schema: &std::path::Path,
    data: &Value,
    mismatches: &mut Vec<Mismatch>,
) {
    let expected = format!("data matching `{}`", schema.display());
    let compiled = std::fs::read_to_string(schema)
        .map_err(|err| format!("cannot read the schema: {err}"))
        .and_then(|text| {
            serde_json::from_str::<Value>(&text)
                .map_err(|err| format!("the schema is not valid JSON: {err}"))
        })
        .and_then(|value| {
            jsonschema::validator_for(&value).map_err(|err| format!("invalid schema: {err}"))
        });
    let validator = match compiled {
        Ok(validator) => validator,
        Err(problem) => {
            mismatches.push(Mismatch::new(path, expected, problem));
            return;
        }
    };
    for error in validator.iter_errors(data) {
        let pointer = error.instance_path().to_string();
        mismatches.push(Mismatch::new(
            format!("{path}{pointer}"),
            expected.clone(),
            error.to_string(),
        ));
    }
}

fn quote(text: &str) -> String {
    format!("{text:?}")
}

fn list(items: &[&str]) -> String {
    format!("[{}]", items.join(", "))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn subset_names_the_differing_field() {
        let mut mismatches = Vec::new();
        contains(
            "data",
            &json!({"order": {"total": 42, "items": [{"id": "p-1"}]}}),
            &json!({"order": {"total": 41.5, "items": [{"id": "p-2", "n": 1}], "extra": true}}),
            &mut mismatches,
        );
        assert_eq!(
            mismatches,
            [
                Mismatch::new("data.order.items[0].id", "\"p-1\"", "\"p-2\""),
                Mismatch::new("data.order.total", "42", "41.5"),
            ]
        );
    }

    #[test]
    fn subset_accepts_equal_numbers_and_extra_keys() {
        let mut mismatches = Vec::new();
        contains(
            "data",
            &json!({"total": 2, "tags": ["a"]}),
            &json!({"total": 2.0, "tags": ["a"], "note": "x"}),
            &mut mismatches,
        );
        assert!(mismatches.is_empty(), "{mismatches:?}");
    }

    #[test]
    fn subset_reports_missing_key_and_array_length() {
        let mut mismatches = Vec::new();
        contains(
            "data",
            &json!({"to": "a", "tags": ["a", "b"]}),
            &json!({"tags": ["a"]}),
            &mut mismatches,
        );
        assert_eq!(
            mismatches,
            [
                Mismatch::new("data.tags", "[\"a\",\"b\"]", "[\"a\"]"),
                Mismatch::new("data.to", "\"a\"", "(missing)"),
            ]
        );
    }
}
