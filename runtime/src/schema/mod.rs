//! Event schemas: one compiled JSON Schema validator per event type.
//!
//! Schemas default to draft 2020-12, assert `format`, and resolve `$ref`s only
//! against the `.json` files in their own folder: nothing is ever fetched.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use jsonschema::{Draft, Registry, Validator};
use serde_json::Value;

pub mod compat;
mod refs;

use crate::manifest::{Manifest, PartitionKey, Problem, closest, parse_partition_key};

/// One violation of an event schema.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Violation {
    /// JSON pointer to the offending value in the event data.
    pub pointer: String,
    pub message: String,
}

/// The compiled schema of one event type.
#[derive(Debug)]
pub struct EventSchema {
    pub event_type: String,
    pub path: PathBuf,
    validator: Validator,
}

impl EventSchema {
    /// Validates event data, returning every violation.
    pub fn validate(&self, data: &Value) -> Result<(), Vec<Violation>> {
        let violations: Vec<Violation> = self
            .validator
            .iter_errors(data)
            .map(|error| Violation {
                pointer: error.instance_path().to_string(),
                message: error.to_string(),
            })
            .collect();
        if violations.is_empty() {
            Ok(())
        } else {
            Err(violations)
        }
    }
}

/// The schemas of every event type in the manifest.
#[derive(Debug, Default, Clone)]
pub struct Schemas {
    by_type: HashMap<String, Arc<EventSchema>>,
}

impl Schemas {
    pub fn get(&self, event_type: &str) -> Option<&Arc<EventSchema>> {
        self.by_type.get(event_type)
    }

    /// Validates data against the schema of its event type.
    pub fn validate(&self, event_type: &str, data: &Value) -> Result<(), SchemaCheck> {
        match self.by_type.get(event_type) {
            Some(schema) => schema.validate(data).map_err(SchemaCheck::Invalid),
            None => Err(SchemaCheck::UnknownType(event_type.to_owned())),
        }
    }

    /// Compiles the schema of every event type, reporting each failure.
    pub fn compile(manifest: &Manifest) -> (Schemas, Vec<Problem>) {
        let mut schemas = Schemas::default();
        let mut problems = Vec::new();
        let mut registries: BTreeMap<PathBuf, Result<Registry<'static>, String>> = BTreeMap::new();
        // A folder that cannot be read is reported once, at the first event
        // whose schema it holds, rather than once for each event.
        let mut unreadable: BTreeSet<PathBuf> = BTreeSet::new();

        for (event_type, entry) in &manifest.events {
            let (Some(path), Some(dir)) = (
                manifest.schema_path(event_type),
                manifest.schema_dir(event_type),
            ) else {
                continue;
            };
            let at = |problem: Problem| problem.at(entry.file, entry.def.schema.span());
            let registry = registries
                .entry(dir.to_path_buf())
                .or_insert_with(|| local_registry(dir));
            let registry = match registry {
                Ok(registry) => registry,
                Err(message) => {
                    if unreadable.insert(dir.to_path_buf()) {
                        problems.push(at(Problem::error("schema-invalid", message.clone())));
                    }
                    continue;
                }
            };
            match compile_one(event_type, &path, registry) {
                Ok((schema, failed_examples)) => {
                    for message in failed_examples {
                        problems.push(at(Problem::error("schema-example-invalid", message).hint(
                            "fix the example or the schema; examples document valid events",
                        )));
                    }
                    undeclared_key_fields(manifest, event_type, &path, &mut problems);
                    schemas.by_type.insert(event_type.clone(), Arc::new(schema));
                }
                Err((code, message, hint)) => {
                    problems.push(at(Problem::error(code, message).hint(hint)));
                }
            }
        }
        (schemas, problems)
    }
}

/// Warns about a topic's `data.` partition key that names a field the
/// event's schema does not declare: records without that field get no key,
/// so records of one entity lose their order.
fn undeclared_key_fields(
    manifest: &Manifest,
    event_type: &str,
    path: &Path,
    problems: &mut Vec<Problem>,
) {
    for (topic_name, topic, listed) in manifest.topics_of(event_type) {
        let Some(key) = &listed.key else {
            continue;
        };
        let Ok(PartitionKey::Data(fields)) = parse_partition_key(key.get_ref()) else {
            continue;
        };
        let Some(schema) = std::fs::read_to_string(path)
            .ok()
            .and_then(|text| serde_json::from_str::<Value>(&text).ok())
        else {
            return;
        };
        let Some((missing, declared)) = undeclared_field(&schema, &fields) else {
            continue;
        };
        let hint = match closest(missing, &declared) {
            Some(candidate) => format!("did you mean `{candidate}`?"),
            None => "declare the field in the event's schema, or correct the key".to_owned(),
        };
        problems.push(
            Problem::warning(
                "undeclared-key-field",
                format!(
                    "partition key `{}` of event `{event_type}` on topic `{topic_name}` names \
                     `{missing}`, which the event's schema does not declare, so records \
                     without it get no key and lose their order",
                    key.get_ref()
                ),
            )
            .at(topic.file, key.span())
            .hint(hint),
        );
    }
}

/// Follows `fields` through the `properties` of `schema`. Returns the first
/// field that a level with `properties` does not list, with the fields it
/// lists. A level without `properties`, such as a `$ref`, is not judged.
fn undeclared_field<'a>(schema: &Value, fields: &'a [String]) -> Option<(&'a str, Vec<String>)> {
    let mut current = schema;
    for field in fields {
        let properties = current.get("properties")?.as_object()?;
        match properties.get(field) {
            Some(next) => current = next,
            None => return Some((field, properties.keys().cloned().collect())),
        }
    }
    None
}

/// The reason data did not pass its schema.
#[derive(Debug, PartialEq, Eq)]
pub enum SchemaCheck {
    UnknownType(String),
    Invalid(Vec<Violation>),
}

impl std::fmt::Display for SchemaCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SchemaCheck::UnknownType(event_type) => {
                write!(
                    f,
                    "event type `{event_type}` is not defined in the manifest"
                )
            }
            SchemaCheck::Invalid(violations) => {
                let parts: Vec<String> = violations
                    .iter()
                    .map(|v| format!("{}: {}", display_pointer(&v.pointer), v.message))
                    .collect();
                write!(f, "data fails its schema: {}", parts.join("; "))
            }
        }
    }
}

fn display_pointer(pointer: &str) -> &str {
    if pointer.is_empty() { "/" } else { pointer }
}

fn file_url(path: &Path) -> String {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    format!("file://{}", absolute.display())
}

/// Builds a registry of every `.json` file in a schema folder, so local
/// `$ref`s resolve and nothing is retrieved from the network.
fn local_registry(dir: &Path) -> Result<Registry<'static>, String> {
    let entries = std::fs::read_dir(dir).map_err(|err| {
        format!(
            "cannot read schema folder `{}`: {err}; create it or set `runtime.schemas`",
            dir.display()
        )
    })?;
    let mut resources: Vec<(String, Value)> = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|ext| ext != "json") {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let Ok(value) = serde_json::from_str::<Value>(&text) else {
            continue;
        };
        resources.push((file_url(&path), value));
    }
    let prepare = |resources: Vec<(String, Value)>| {
        Registry::new()
            .extend(resources)
            .and_then(|builder| builder.prepare())
    };
    match prepare(resources.clone()) {
        Ok(registry) => Ok(registry),
        // One file with a `$ref` that cannot resolve fails the whole
        // registry. Leave such files out, so that only the events whose
        // schemas use them fail, each with its own problem.
        Err(err) => {
            resources.retain(|(_, value)| refs::unresolved_ref(value, dir).is_none());
            prepare(resources).map_err(|_| {
                format!(
                    "cannot index schemas in `{}`: {}",
                    dir.display(),
                    err.to_string().replace(&format!("{}/", file_url(dir)), "")
                )
            })
        }
    }
}

type CompileError = (&'static str, String, String);

/// Compiles one schema and validates its `examples` against it, returning
/// a message for each example that fails.
fn compile_one(
    event_type: &str,
    path: &Path,
    registry: &Registry<'static>,
) -> Result<(EventSchema, Vec<String>), CompileError> {
    let text = std::fs::read_to_string(path).map_err(|err| {
        let hint = match err.kind() {
            std::io::ErrorKind::NotFound => {
                "create the file or correct `schema`; paths are relative to the schemas folder"
            }
            std::io::ErrorKind::IsADirectory => {
                "name a JSON Schema file in `schema`, not a folder; paths are relative to the schemas folder"
            }
            _ => "make the file readable by switchyard, or correct `schema`",
        };
        (
            "schema-not-found",
            format!(
                "cannot read schema `{}` of event `{event_type}`: {err}",
                path.display()
            ),
            hint.to_owned(),
        )
    })?;
    let schema: Value = serde_json::from_str(&text).map_err(|err| {
        (
            "schema-invalid",
            format!("schema `{}` is not valid JSON: {err}", path.display()),
            "fix the JSON syntax".to_owned(),
        )
    })?;
    // A schema without `$schema` is read as draft 2020-12, so it is
    // checked against that draft's meta-schema.
    let (meta_result, draft) = if schema.get("$schema").is_some() {
        (jsonschema::meta::validate(&schema), None)
    } else {
        (
            jsonschema::draft202012::meta::validate(&schema),
            Some(Draft::Draft202012),
        )
    };
    meta_result.map_err(|err| {
        (
            "schema-invalid",
            format!(
                "schema `{}` does not conform to its meta-schema at `{}`: {err}",
                path.display(),
                display_pointer(&err.instance_path().to_string())
            ),
            "fix the schema keyword named here".to_owned(),
        )
    })?;
    let mut options = jsonschema::options()
        .should_validate_formats(true)
        .with_base_uri(file_url(path))
        .with_registry(registry)
        .offline();
    if let Some(draft) = draft {
        options = options.with_draft(draft);
    }
    let validator = options.build(&schema).map_err(|err| {
        let folder = path.parent().unwrap_or_else(|| Path::new("."));
        if let Some(reference) = refs::unresolved_ref(&schema, folder) {
            return (
                "schema-ref-unresolved",
                format!(
                    "schema `{}` refers to `{reference}`, which is not a `.json` file in `{}`",
                    path.display(),
                    folder.display()
                ),
                "add the file to that folder or correct the `$ref`. References resolve only to \
                 files in the schemas folder and are never fetched"
                    .to_owned(),
            );
        }
        (
            "schema-invalid",
            format!("cannot compile schema `{}`: {err}", path.display()),
            "fix the schema keyword that the message names".to_owned(),
        )
    })?;
    let compiled = EventSchema {
        event_type: event_type.to_owned(),
        path: path.to_path_buf(),
        validator,
    };
    let examples = schema.get("examples").and_then(Value::as_array);
    let mut failed = Vec::new();
    for (index, example) in examples.into_iter().flatten().enumerate() {
        if let Err(violations) = compiled.validate(example) {
            for violation in violations {
                failed.push(format!(
                    "example {index} of schema `{}` fails it at `{}`: {}",
                    path.display(),
                    display_pointer(&violation.pointer),
                    violation.message
                ));
            }
        }
    }
    Ok((compiled, failed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{self, Purpose};

    /// Writes a manifest with one event and its schema, and compiles it.
    fn compile_with_schema(schema: &str) -> (Schemas, Vec<Problem>) {
        let dir = std::env::temp_dir().join(format!("switchyard-schema-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(dir.join("schemas")).unwrap();
        std::fs::create_dir_all(dir.join("manifests")).unwrap();
        std::fs::write(dir.join("schemas/e.json"), schema).unwrap();
        let manifest_path = dir.join("manifests/m.toml");
        std::fs::write(&manifest_path, "[events.e]\nschema = \"e.json\"\n").unwrap();
        let loaded = manifest::load(&[manifest_path], Purpose::Check, &|_| None);
        let compiled = Schemas::compile(&loaded.manifest);
        let _ = std::fs::remove_dir_all(&dir);
        compiled
    }

    #[test]
    fn schema_path_to_a_folder_named_in_hint() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("schemas/e.json")).unwrap();
        std::fs::create_dir_all(dir.path().join("manifests")).unwrap();
        let manifest_path = dir.path().join("manifests/m.toml");
        std::fs::write(&manifest_path, "[events.e]\nschema = \"e.json\"\n").unwrap();
        let loaded = manifest::load(&[manifest_path], Purpose::Check, &|_| None);
        let (_, problems) = Schemas::compile(&loaded.manifest);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].code, "schema-not-found");
        assert_eq!(
            problems[0].hint.as_deref(),
            Some(
                "name a JSON Schema file in `schema`, not a folder; paths are relative to the schemas folder"
            )
        );
    }

    #[test]
    fn missing_schema_folder_reported_once() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("manifests")).unwrap();
        let manifest_path = dir.path().join("manifests/m.toml");
        std::fs::write(
            &manifest_path,
            "[events.a]\nschema = \"a.json\"\n\n[events.b]\nschema = \"b.json\"\n",
        )
        .unwrap();
        let loaded = manifest::load(&[manifest_path], Purpose::Check, &|_| None);
        let (_, problems) = Schemas::compile(&loaded.manifest);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].message.starts_with("cannot read schema folder"),
            "{problems:?}"
        );
    }

    #[test]
    fn failing_example_reported() {
        let schema = r#"{"type": "object", "required": ["id"],
            "properties": {"id": {"type": "string"}},
            "examples": [{"id": "a"}, {"id": 7}]}"#;
        let (_, problems) = compile_with_schema(schema);
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].code, "schema-example-invalid");
        assert!(
            problems[0].message.contains("example 1"),
            "{}",
            problems[0].message
        );
        assert!(
            problems[0].message.contains("`/id`"),
            "{}",
            problems[0].message
        );
    }

    #[test]
    fn email_format_asserted() {
        let schema =
            r#"{"type": "object", "properties": {"email": {"type": "string", "format": "email"}}}"#;
        let (schemas, problems) = compile_with_schema(schema);
        assert!(problems.is_empty(), "{problems:?}");
        let valid = serde_json::json!({"email": "ada@example.com"});
        let invalid = serde_json::json!({"email": "not an address"});
        assert!(schemas.validate("e", &valid).is_ok());
        assert!(schemas.validate("e", &invalid).is_err());
    }

    #[test]
    fn remote_reference_not_fetched() {
        let schema = r#"{"$ref": "https://example.com/schema.json"}"#;
        let (_, problems) = compile_with_schema(schema);
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].code, "schema-ref-unresolved");
        assert!(
            problems[0]
                .message
                .contains("refers to `https://example.com/schema.json`"),
            "{}",
            problems[0].message
        );
    }

    #[test]
    fn schema_without_draft_checked_against_2020_12() {
        let schema = r#"{"type": "object", "properties": {"a": {"type": "text"}}}"#;
        let (_, problems) = compile_with_schema(schema);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].code, "schema-invalid");
        assert!(
            problems[0]
                .message
                .contains("meta-schema at `/properties/a/type`"),
            "{}",
            problems[0].message
        );
    }

    #[test]
    fn unresolved_reference_fails_only_its_event() {
        let dir = std::env::temp_dir().join(format!("switchyard-schema-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(dir.join("schemas")).unwrap();
        std::fs::write(dir.join("schemas/good.json"), r#"{"type": "object"}"#).unwrap();
        std::fs::write(dir.join("schemas/bad.json"), r#"{"$ref": "missing.json"}"#).unwrap();
        let manifest_path = dir.join("m.toml");
        let text = "[runtime]\nschemas = \"schemas\"\n\n[events.good]\nschema = \"good.json\"\n\n[events.bad]\nschema = \"bad.json\"\n";
        std::fs::write(&manifest_path, text).unwrap();
        let loaded = manifest::load(&[manifest_path], Purpose::Check, &|_| None);
        let (schemas, problems) = Schemas::compile(&loaded.manifest);
        let _ = std::fs::remove_dir_all(&dir);
        let codes: Vec<&str> = problems.iter().map(|p| p.code).collect();
        assert_eq!(codes, ["schema-ref-unresolved"], "{problems:?}");
        assert!(problems[0].message.contains("`missing.json`"));
        assert!(schemas.get("good").is_some(), "good.json did not compile");
    }
}
