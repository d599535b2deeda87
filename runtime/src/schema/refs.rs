//! `$ref`s from a schema file to other documents, found by reading the
//! schema without resolving it, to name a reference that cannot resolve.

use std::path::Path;

use serde_json::Value;

/// Returns the first `$ref` of a schema that names a document other than a
/// `.json` file in `dir`. Only such files are in the registry that `$ref`s
/// resolve against, and nothing is fetched, so such a reference fails.
///
/// NOTE: a reference resolved against an absolute `$id` of another schema
/// in the folder is reported too, although the registry may resolve it. The
/// callers use this only to explain a failure that already happened.
pub(super) fn unresolved_ref(schema: &Value, dir: &Path) -> Option<String> {
    let mut refs = Vec::new();
    collect_document_refs(schema, &mut refs);
    refs.into_iter().find(|reference| {
        let name = reference.strip_prefix("./").unwrap_or(reference);
        let local = !name.contains('/') && !name.contains(':') && name.ends_with(".json");
        !(local && dir.join(name).is_file())
    })
}

/// Collects the document part, before any `#`, of every `$ref` that names
/// another document.
fn collect_document_refs(value: &Value, refs: &mut Vec<String>) {
    match value {
        Value::Object(object) => {
            if let Some(Value::String(reference)) = object.get("$ref") {
                let document = reference.split('#').next().unwrap_or_default();
                if !document.is_empty() {
                    refs.push(document.to_owned());
                }
            }
            for child in object.values() {
                collect_document_refs(child, refs);
            }
        }
        Value::Array(items) => {
            for item in items {
                collect_document_refs(item, refs);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::unresolved_ref;

    #[test]
    fn local_and_fragment_refs_resolve() {
        let dir = tempfile_dir();
        std::fs::write(dir.join("ids.json"), "{}").unwrap();
        let schema = json!({
            "properties": {
                "a": { "$ref": "ids.json" },
                "b": { "$ref": "./ids.json#/$defs/id" },
                "c": { "$ref": "#/$defs/local" }
            }
        });
        assert_eq!(unresolved_ref(&schema, &dir), None);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn missing_and_remote_refs_named() {
        let dir = tempfile_dir();
        let missing = json!({ "items": [{ "$ref": "ids.json" }] });
        assert_eq!(unresolved_ref(&missing, &dir).as_deref(), Some("ids.json"));
        let remote = json!({ "$ref": "https://example.com/ids.json#/x" });
        assert_eq!(
            unresolved_ref(&remote, &dir).as_deref(),
            Some("https://example.com/ids.json")
        );
        let nested = json!({ "$ref": "common/ids.json" });
        assert_eq!(
            unresolved_ref(&nested, &dir).as_deref(),
            Some("common/ids.json")
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("switchyard-refs-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
