//! Test case files (`*.test.toml`): their format and how they are read.
//!
//! ```toml
//! [[case]]
//! name = "placed order is confirmed"
//! event = "order.placed"
//! data = { orderId = "o-1" }        # or data_file = "orders/o-1.json"
//! routed = ["email-service"]        # queues and topics the event lands in
//!
//! [[case.handled]]
//! consumer = "email-service"
//! outcome = "ok"                    # ok, retry, reject or dead-letter
//! emits = [{ event = "email.sent", data = { template = "order-confirmation" } }]
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

/// The end of a case file's name.
pub const SUFFIX: &str = ".test.toml";

/// A case file as read from disk.
#[derive(Debug)]
pub struct CaseFile {
    pub path: PathBuf,
    pub cases: Vec<Case>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseFileDef {
    #[serde(rename = "case", default)]
    cases: Vec<CaseDef>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseDef {
    name: String,
    event: String,
    data: Option<Value>,
    data_file: Option<PathBuf>,
    #[serde(default = "default_valid")]
    valid: bool,
    schema_error: Option<String>,
    routed: Option<Vec<String>>,
    handled: Option<Vec<Handled>>,
}

fn default_valid() -> bool {
    true
}

/// One test case: an input event and what should happen to it.
#[derive(Debug)]
pub struct Case {
    pub name: String,
    /// Type of the input event.
    pub event: String,
    pub data: Value,
    /// Whether the input passes its schema. A case with `valid = false`
    /// checks that the producer would reject it, so nothing is published.
    pub valid: bool,
    /// Text that the schema error must contain.
    pub schema_error: Option<String>,
    /// Exact set of queues and topics the input lands in, if checked.
    pub routed: Option<Vec<String>>,
    /// Every handler call of the case, if checked. A call that no entry
    /// lists fails the case.
    pub handled: Option<Vec<Handled>>,
}

/// An expected handler call.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Handled {
    pub consumer: String,
    /// Type of the event handled; any type when missing.
    pub event: Option<String>,
    #[serde(default)]
    pub outcome: Outcome,
    /// Text that the reason of a retry, reject or dead letter must contain.
    pub reason: Option<String>,
    /// Events the call emits, in order, if checked.
    pub emits: Option<Vec<Emit>>,
}

/// An expected emitted event.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Emit {
    pub event: String,
    /// JSON that the emitted data must contain: every key of an object,
    /// every item of an array (same length), equal scalars.
    pub data: Option<Value>,
    /// JSON Schema file, relative to the case file, that the emitted data
    /// must match.
    pub schema: Option<PathBuf>,
}

/// The result of one handler call.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Handled and acknowledged; what it emitted was published.
    #[default]
    Ok,
    /// Failed; the consumer tries the event again after its backoff.
    Retry,
    /// Rejected by the handler and dead-lettered.
    Reject,
    /// Dead-lettered without a rejection: the last allowed attempt failed,
    /// or the consumer could not decode or validate the event.
    DeadLetter,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Outcome::Ok => "ok",
            Outcome::Retry => "retry",
            Outcome::Reject => "reject",
            Outcome::DeadLetter => "dead-letter",
        })
    }
}

/// Reads a case file. Errors name the file, and the line for TOML errors.
pub fn read(path: &Path) -> Result<CaseFile, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|err| format!("cannot read test cases `{}`: {err}", path.display()))?;
    let def: CaseFileDef = toml::from_str(&text)
        .map_err(|err| format!("invalid test cases in `{}`: {err}", path.display()))?;
    if def.cases.is_empty() {
        return Err(format!(
            "`{}` has no test cases; add a `[[case]]` table",
            path.display()
        ));
    }
    let folder = path.parent().unwrap_or_else(|| Path::new("."));
    let mut cases = Vec::with_capacity(def.cases.len());
    for case in def.cases {
        cases.push(resolve(case, folder, path)?);
    }
    Ok(CaseFile {
        path: path.to_owned(),
        cases,
    })
}

/// Reads the data file of a case and checks what a TOML parser cannot.
fn resolve(case: CaseDef, folder: &Path, path: &Path) -> Result<Case, String> {
    let named = |problem: &str| format!("case `{}` in `{}` {problem}", case.name, path.display());
    let data = match (case.data, &case.data_file) {
        (Some(data), None) => plain_json(data),
        (None, Some(file)) => {
            let file = folder.join(file);
            let text = std::fs::read_to_string(&file).map_err(|err| {
                named(&format!(
                    "cannot read `data_file` `{}`: {err}",
                    file.display()
                ))
            })?;
            serde_json::from_str(&text).map_err(|err| {
                named(&format!(
                    "has a `data_file` `{}` that is not valid JSON: {err}",
                    file.display()
                ))
            })?
        }
        (Some(_), Some(_)) => {
            return Err(named("has both `data` and `data_file`; keep one"));
        }
        (None, None) => {
            return Err(named(
                "has no input data; add `data = { ... }` or `data_file = \"FILE.json\"`",
            ));
        }
    };
    if case.valid && case.schema_error.is_some() {
        return Err(named("has `schema_error` but not `valid = false`"));
    }
    let mut handled = case.handled;
    for entry in handled.iter_mut().flatten() {
        for emit in entry.emits.iter_mut().flatten() {
            emit.data = emit.data.take().map(plain_json);
            emit.schema = emit.schema.take().map(|schema| folder.join(schema));
        }
    }
    Ok(Case {
        name: case.name,
        event: case.event,
        data,
        valid: case.valid,
        schema_error: case.schema_error,
        routed: case.routed,
        handled,
    })
}

/// Turns TOML date-times, which arrive as one-key tables, into the
/// RFC 3339 strings that JSON events carry.
fn plain_json(value: Value) -> Value {
    const DATETIME_KEY: &str = "$__toml_private_datetime";
    match value {
        Value::Object(map) if map.len() == 1 && map.contains_key(DATETIME_KEY) => map
            .into_iter()
            .next()
            .map(|(_, v)| v)
            .unwrap_or(Value::Null),
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(key, value)| (key, plain_json(value)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(plain_json).collect()),
        other => other,
    }
}

/// Finds the case files beside the given manifests: every file whose name
/// ends in `.test.toml` in a folder that contains one of them, sorted.
pub fn discover(manifests: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    let mut folders: Vec<PathBuf> = manifests
        .iter()
        .map(|path| match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
            _ => PathBuf::from("."),
        })
        .collect();
    folders.sort();
    folders.dedup();

    let mut found = Vec::new();
    for folder in &folders {
        let entries = std::fs::read_dir(folder)
            .map_err(|err| format!("cannot list `{}`: {err}", folder.display()))?;
        for entry in entries {
            let entry =
                entry.map_err(|err| format!("cannot list `{}`: {err}", folder.display()))?;
            let path = entry.path();
            let is_case_file = path
                .file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.ends_with(SUFFIX));
            if is_case_file && path.is_file() {
                found.push(path);
            }
        }
    }
    found.sort();
    if found.is_empty() {
        let shown: Vec<String> = folders.iter().map(|f| f.display().to_string()).collect();
        return Err(format!(
            "no test case files (`*{SUFFIX}`) found in {}; write one beside the manifest, \
             or name case files on the command line",
            shown.join(", ")
        ));
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn reads_inline_and_file_data() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "order.json", r#"{"orderId": "o-2"}"#);
        let path = write(
            dir.path(),
            "shop.test.toml",
            r#"
[[case]]
name = "inline"
event = "order.placed"
data = { orderId = "o-1", placedAt = 2026-12-05T10:00:00Z }

[[case.handled]]
consumer = "email-service"
emits = [{ event = "email.sent", schema = "email.json" }]

[[case]]
name = "from file"
event = "order.placed"
data_file = "order.json"
valid = false
schema_error = "required"
"#,
        );
        let file = read(&path).unwrap();
        assert_eq!(file.cases.len(), 2);
        let inline = &file.cases[0];
        assert_eq!(inline.data["orderId"], "o-1");
        assert_eq!(inline.data["placedAt"], "2026-12-05T10:00:00Z");
        let handled = inline.handled.as_ref().unwrap();
        assert_eq!(handled[0].outcome, Outcome::Ok);
        let emit = &handled[0].emits.as_ref().unwrap()[0];
        assert_eq!(
            emit.schema.as_deref(),
            Some(dir.path().join("email.json").as_path())
        );
        let from_file = &file.cases[1];
        assert_eq!(from_file.data["orderId"], "o-2");
        assert!(!from_file.valid);
    }

    #[test]
    fn missing_data_names_case_and_fix() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "a.test.toml",
            "[[case]]\nname = \"no data\"\nevent = \"order.placed\"\n",
        );
        let error = read(&path).unwrap_err();
        assert!(error.contains("case `no data`"), "{error}");
        assert!(error.contains("data_file"), "{error}");
    }

    #[test]
    fn unknown_key_is_an_error_with_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "a.test.toml",
            "[[case]]\nname = \"x\"\nevent = \"e\"\ndata = {}\noutcome = \"ok\"\n",
        );
        let error = read(&path).unwrap_err();
        assert!(error.contains("unknown field `outcome`"), "{error}");
        assert!(error.contains("line 5"), "{error}");
    }

    #[test]
    fn unknown_outcome_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "a.test.toml",
            "[[case]]\nname = \"x\"\nevent = \"e\"\ndata = {}\n[[case.handled]]\nconsumer = \"c\"\noutcome = \"fine\"\n",
        );
        let error = read(&path).unwrap_err();
        assert!(error.contains("unknown variant `fine`"), "{error}");
    }

    #[test]
    fn discover_finds_case_files_beside_manifests() {
        let dir = tempfile::tempdir().unwrap();
        let manifest = write(dir.path(), "shop.toml", "");
        write(dir.path(), "b.test.toml", "");
        write(dir.path(), "a.test.toml", "");
        write(dir.path(), "notes.toml", "");
        let found = discover(&[manifest]).unwrap();
        let names: Vec<_> = found
            .iter()
            .map(|p| p.file_name().unwrap().to_str().unwrap())
            .collect();
        assert_eq!(names, ["a.test.toml", "b.test.toml"]);
    }

    #[test]
    fn discover_without_case_files_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let manifest = write(dir.path(), "shop.toml", "");
        let error = discover(&[manifest]).unwrap_err();
        assert!(error.contains("no test case files"), "{error}");
    }
}
