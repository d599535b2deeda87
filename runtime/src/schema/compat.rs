//! Compatibility of two versions of an event schema, in the sense schema
//! registries give it for JSON Schema: backward means consumers using the
//! new schema can read events written with the old one, forward the
//! reverse, full both.
//!
//! The comparison is structural and conservative: it walks `properties`,
//! `items` and `additionalProperties` and compares the keywords that
//! constrain a value. NOTE: `$ref`, `allOf`/`anyOf`/`oneOf` and `if`/`then`
//! are compared as whole values, so a change inside them is reported as a
//! possible break.

use serde_json::{Map, Value};

/// The readers that must keep working after a schema change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Compatibility {
    /// New consumers read events written with the old schema.
    Backward,
    /// Old consumers read events written with the new schema.
    Forward,
    /// Both.
    Full,
}

/// One incompatible change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// JSON pointer into the schema's instances, such as `/items/0/quantity`
    /// written as `/items/*/quantity` for array elements.
    pub pointer: String,
    pub message: String,
}

/// Returns every change from `old` to `new` that breaks `mode`.
pub fn compare(old: &Value, new: &Value, mode: Compatibility) -> Vec<Finding> {
    let mut findings = Vec::new();
    if matches!(mode, Compatibility::Backward | Compatibility::Full) {
        // Every old event must pass the new schema.
        widened_or_equal(old, new, "", "old", "new", &mut findings);
    }
    if matches!(mode, Compatibility::Forward | Compatibility::Full) {
        // Every new event must pass the old schema.
        widened_or_equal(new, old, "", "new", "old", &mut findings);
    }
    findings.sort_by(|a, b| a.pointer.cmp(&b.pointer).then(a.message.cmp(&b.message)));
    findings.dedup();
    findings
}

/// Reports each way in which `reader` rejects a value that `writer` accepts.
fn widened_or_equal(
    writer: &Value,
    reader: &Value,
    pointer: &str,
    writer_name: &str,
    reader_name: &str,
    findings: &mut Vec<Finding>,
) {
    let (Some(writer), Some(reader)) = (writer.as_object(), reader.as_object()) else {
        if writer != reader && reader == &Value::Bool(false) {
            push(
                findings,
                pointer,
                format!("the {reader_name} schema rejects every value"),
            );
        }
        return;
    };
    let mut report = |message: String| push(findings, pointer, message);

    types(writer, reader, writer_name, reader_name, &mut report);
    enums(writer, reader, writer_name, reader_name, &mut report);
    lower_bounds(writer, reader, writer_name, reader_name, &mut report);
    upper_bounds(writer, reader, writer_name, reader_name, &mut report);
    for keyword in [
        "pattern",
        "format",
        "const",
        "multipleOf",
        "$ref",
        "allOf",
        "anyOf",
        "oneOf",
        "not",
        "if",
        "then",
        "else",
    ] {
        let (w, r) = (writer.get(keyword), reader.get(keyword));
        if r.is_some() && w != r {
            report(format!(
                "`{keyword}` is {} in the {writer_name} schema but {} in the {reader_name} schema",
                show(w),
                show(r)
            ));
        }
    }
    required(writer, reader, writer_name, reader_name, &mut report);
    closed_properties(writer, reader, writer_name, reader_name, &mut report);

    // Recurse into what both versions describe.
    let empty = Map::new();
    let writer_properties = writer
        .get("properties")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let reader_properties = reader
        .get("properties")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    for (name, reader_schema) in reader_properties {
        let child = format!("{pointer}/{}", escape(name));
        match writer_properties.get(name) {
            Some(writer_schema) => widened_or_equal(
                writer_schema,
                reader_schema,
                &child,
                writer_name,
                reader_name,
                findings,
            ),
            None => {
                // The writer may send this property with any value when its
                // schema leaves additional properties open.
                if let Some(additional) = writer.get("additionalProperties")
                    && additional.is_object()
                {
                    widened_or_equal(
                        additional,
                        reader_schema,
                        &child,
                        writer_name,
                        reader_name,
                        findings,
                    );
                }
            }
        }
    }
    if let (Some(w), Some(r)) = (writer.get("items"), reader.get("items")) {
        widened_or_equal(
            w,
            r,
            &format!("{pointer}/*"),
            writer_name,
            reader_name,
            findings,
        );
    }
}

fn push(findings: &mut Vec<Finding>, pointer: &str, message: String) {
    let pointer = if pointer.is_empty() {
        "/".to_owned()
    } else {
        pointer.to_owned()
    };
    findings.push(Finding { pointer, message });
}

fn escape(name: &str) -> String {
    name.replace('~', "~0").replace('/', "~1")
}

fn show(value: Option<&Value>) -> String {
    match value {
        Some(value) => format!("`{value}`"),
        None => "absent".to_owned(),
    }
}

/// Returns the JSON types a schema allows, or `None` for any type.
fn type_set(schema: &Map<String, Value>) -> Option<Vec<String>> {
    match schema.get("type")? {
        Value::String(one) => Some(vec![one.clone()]),
        Value::Array(many) => Some(
            many.iter()
                .filter_map(|t| t.as_str().map(str::to_owned))
                .collect(),
        ),
        _ => None,
    }
}

fn types(
    writer: &Map<String, Value>,
    reader: &Map<String, Value>,
    writer_name: &str,
    reader_name: &str,
    report: &mut impl FnMut(String),
) {
    let Some(reader_types) = type_set(reader) else {
        return;
    };
    let accepts = |t: &str| {
        reader_types
            .iter()
            .any(|r| r == t || (r == "number" && t == "integer"))
    };
    match type_set(writer) {
        None => report(format!(
            "type is unrestricted in the {writer_name} schema but {:?} in the {reader_name} schema",
            reader_types
        )),
        Some(writer_types) => {
            let rejected: Vec<&String> = writer_types.iter().filter(|t| !accepts(t)).collect();
            if !rejected.is_empty() {
                report(format!(
                    "type narrowed from {writer_types:?} in the {writer_name} schema to {reader_types:?} in the {reader_name} schema"
                ));
            }
        }
    }
}

fn enums(
    writer: &Map<String, Value>,
    reader: &Map<String, Value>,
    writer_name: &str,
    reader_name: &str,
    report: &mut impl FnMut(String),
) {
    let Some(reader_values) = reader.get("enum").and_then(Value::as_array) else {
        return;
    };
    match writer.get("enum").and_then(Value::as_array) {
        None => report(format!(
            "`enum` is absent in the {writer_name} schema but limits values to {} in the {reader_name} schema",
            Value::Array(reader_values.clone())
        )),
        Some(writer_values) => {
            let missing: Vec<&Value> = writer_values
                .iter()
                .filter(|v| !reader_values.contains(v))
                .collect();
            if !missing.is_empty() {
                report(format!(
                    "`enum` of the {reader_name} schema no longer allows {}",
                    missing
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        }
    }
}

const LOWER_BOUNDS: [&str; 6] = [
    "minimum",
    "exclusiveMinimum",
    "minLength",
    "minItems",
    "minProperties",
    "minContains",
];
const UPPER_BOUNDS: [&str; 6] = [
    "maximum",
    "exclusiveMaximum",
    "maxLength",
    "maxItems",
    "maxProperties",
    "maxContains",
];

fn lower_bounds(
    writer: &Map<String, Value>,
    reader: &Map<String, Value>,
    writer_name: &str,
    reader_name: &str,
    report: &mut impl FnMut(String),
) {
    for keyword in LOWER_BOUNDS {
        let Some(r) = reader.get(keyword).and_then(Value::as_f64) else {
            continue;
        };
        match writer.get(keyword).and_then(Value::as_f64) {
            Some(w) if w >= r => {}
            w => report(format!(
                "`{keyword}` tightened from {} in the {writer_name} schema to {r} in the {reader_name} schema",
                w.map_or("absent".to_owned(), |w| w.to_string())
            )),
        }
    }
}

fn upper_bounds(
    writer: &Map<String, Value>,
    reader: &Map<String, Value>,
    writer_name: &str,
    reader_name: &str,
    report: &mut impl FnMut(String),
) {
    for keyword in UPPER_BOUNDS {
        let Some(r) = reader.get(keyword).and_then(Value::as_f64) else {
            continue;
        };
        match writer.get(keyword).and_then(Value::as_f64) {
            Some(w) if w <= r => {}
            w => report(format!(
                "`{keyword}` tightened from {} in the {writer_name} schema to {r} in the {reader_name} schema",
                w.map_or("absent".to_owned(), |w| w.to_string())
            )),
        }
    }
}

fn required(
    writer: &Map<String, Value>,
    reader: &Map<String, Value>,
    writer_name: &str,
    reader_name: &str,
    report: &mut impl FnMut(String),
) {
    let names = |schema: &Map<String, Value>| -> Vec<String> {
        schema
            .get("required")
            .and_then(Value::as_array)
            .map(|list| {
                list.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let writer_required = names(writer);
    for name in names(reader) {
        if !writer_required.contains(&name) {
            report(format!(
                "property `{name}` is required by the {reader_name} schema but optional in the {writer_name} schema"
            ));
        }
    }
}

fn closed_properties(
    writer: &Map<String, Value>,
    reader: &Map<String, Value>,
    writer_name: &str,
    reader_name: &str,
    report: &mut impl FnMut(String),
) {
    if reader.get("additionalProperties") != Some(&Value::Bool(false)) {
        return;
    }
    if writer.get("additionalProperties") != Some(&Value::Bool(false)) {
        report(format!(
            "`additionalProperties` is closed in the {reader_name} schema but open in the {writer_name} schema"
        ));
        return;
    }
    let empty = Map::new();
    let reader_properties = reader
        .get("properties")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    if let Some(writer_properties) = writer.get("properties").and_then(Value::as_object) {
        for name in writer_properties.keys() {
            if !reader_properties.contains_key(name) {
                report(format!(
                    "property `{name}` of the {writer_name} schema is not allowed by the closed {reader_name} schema"
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn order() -> Value {
        json!({
            "type": "object",
            "required": ["orderId", "items"],
            "properties": {
                "orderId": { "type": "string" },
                "note": { "type": "string" },
                "status": { "enum": ["new", "paid"] },
                "items": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": { "quantity": { "type": "integer", "minimum": 1 } }
                    }
                },
                "total": { "type": "number", "minimum": 0 }
            }
        })
    }

    /// Applies `change` to a copy of the order schema.
    fn changed(change: impl FnOnce(&mut Value)) -> Value {
        let mut schema = order();
        change(&mut schema);
        schema
    }

    fn pointers(findings: &[Finding]) -> Vec<&str> {
        findings.iter().map(|f| f.pointer.as_str()).collect()
    }

    #[test]
    fn compatibility_table() {
        use Compatibility::{Backward, Forward, Full};
        // (case, new schema, mode, pointers of the expected findings)
        let cases: Vec<(&str, Value, Compatibility, Vec<&str>)> = vec![
            ("unchanged", order(), Full, vec![]),
            (
                "new required property",
                changed(|s| s["required"] = json!(["orderId", "items", "note"])),
                Backward,
                vec!["/"],
            ),
            (
                "new required property read by old consumers",
                changed(|s| s["required"] = json!(["orderId", "items", "note"])),
                Forward,
                vec![],
            ),
            (
                "dropped requirement",
                changed(|s| s["required"] = json!(["orderId"])),
                Backward,
                vec![],
            ),
            (
                "dropped requirement read by old consumers",
                changed(|s| s["required"] = json!(["orderId"])),
                Forward,
                vec!["/"],
            ),
            (
                "narrowed type",
                changed(|s| s["properties"]["total"]["type"] = json!("integer")),
                Backward,
                vec!["/total"],
            ),
            (
                "widened type",
                changed(|s| {
                    s["properties"]["items"]["items"]["properties"]["quantity"]["type"] =
                        json!("number")
                }),
                Backward,
                vec![],
            ),
            (
                "widened type read by old consumers",
                changed(|s| {
                    s["properties"]["items"]["items"]["properties"]["quantity"]["type"] =
                        json!("number")
                }),
                Forward,
                vec!["/items/*/quantity"],
            ),
            (
                "narrowed enum",
                changed(|s| s["properties"]["status"]["enum"] = json!(["new"])),
                Backward,
                vec!["/status"],
            ),
            (
                "widened enum",
                changed(|s| s["properties"]["status"]["enum"] = json!(["new", "paid", "sent"])),
                Backward,
                vec![],
            ),
            (
                "tightened minimum",
                changed(|s| s["properties"]["total"]["minimum"] = json!(1)),
                Backward,
                vec!["/total"],
            ),
            (
                "loosened minimum",
                changed(|s| s["properties"]["total"]["minimum"] = json!(-1)),
                Backward,
                vec![],
            ),
            (
                "new maximum",
                changed(|s| s["properties"]["total"]["maximum"] = json!(1000)),
                Backward,
                vec!["/total"],
            ),
            (
                "closed additional properties",
                changed(|s| s["additionalProperties"] = json!(false)),
                Backward,
                vec!["/"],
            ),
            (
                "new optional property",
                changed(|s| s["properties"]["coupon"] = json!({ "type": "string" })),
                Full,
                vec![],
            ),
            (
                "new pattern",
                changed(|s| s["properties"]["orderId"]["pattern"] = json!("^o-")),
                Backward,
                vec!["/orderId"],
            ),
            (
                "full catches both directions",
                changed(|s| s["required"] = json!(["orderId"])),
                Full,
                vec!["/"],
            ),
        ];
        for (case, new, mode, expected) in cases {
            let findings = compare(&order(), &new, mode);
            assert_eq!(
                pointers(&findings),
                expected,
                "case `{case}`: {findings:#?}"
            );
        }
    }

    #[test]
    fn findings_name_both_versions() {
        let new = changed(|s| s["properties"]["total"]["minimum"] = json!(1));
        let findings = compare(&order(), &new, Compatibility::Backward);
        assert_eq!(findings.len(), 1);
        assert!(
            findings[0].message.contains("from 0 in the old schema"),
            "{}",
            findings[0].message
        );
        assert!(
            findings[0].message.contains("to 1 in the new schema"),
            "{}",
            findings[0].message
        );
    }
}
