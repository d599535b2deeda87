//! `check --against DIR`: compares every event schema with the same event's
//! schema in an older checkout of the repository.

use std::path::{Path, PathBuf};

use crate::manifest::{self, Manifest, Problem, Purpose};
use crate::schema::compat::{self, Compatibility};

/// Compares every event schema with the same event's schema in the older
/// checkout at `dir`. Each manifest is found there at its path relative to
/// the root of its own checkout (see `checkout_relative`). An event that the
/// older manifests do not define is new and is not compared.
pub(super) fn compare_schemas(
    manifest: &Manifest,
    paths: &[PathBuf],
    dir: &Path,
    mode: Compatibility,
) -> Vec<Problem> {
    let mut old_paths = Vec::new();
    for path in paths {
        // Resolving symbolic links and `..` makes the path comparable with
        // the checkout's root, and keeps `DIR/<relative path>` inside DIR. A
        // manifest that cannot be resolved was reported as unreadable when it
        // was loaded.
        let Ok(full) = std::fs::canonicalize(path) else {
            return Vec::new();
        };
        match checkout_relative(&full) {
            Ok(relative) => old_paths.push(dir.join(relative)),
            Err(problem) => return vec![problem],
        }
    }
    let (found, missing): (Vec<PathBuf>, Vec<PathBuf>) =
        old_paths.into_iter().partition(|path| path.exists());
    if found.is_empty() {
        // Not one manifest there: DIR is not an older checkout of them.
        return vec![
            Problem::error(
                "against-manifest-not-found",
                format!(
                    "none of the manifests is in `{}`, so no schema was compared",
                    dir.display()
                ),
            )
            .hint("pass the root of an older checkout of this repository to `--against`"),
        ];
    }
    // A manifest that the older checkout lacks is new: its events are
    // compared if another manifest defined them before.
    let mut problems: Vec<Problem> = missing
        .iter()
        .map(|path| {
            Problem::warning(
                "against-manifest-not-found",
                format!(
                    "`{}` does not exist, so only the events of the other manifests were compared",
                    path.display()
                ),
            )
            .hint("a manifest added since that checkout has nothing to compare with")
        })
        .collect();
    let old = manifest::load(&found, Purpose::Check, &|_| None);

    problems.extend(unparsed_old_manifests(&old));
    for (event_type, entry) in &manifest.events {
        let (Some(new_path), Some(old_path)) = (
            manifest.schema_path(event_type),
            old.manifest.schema_path(event_type),
        ) else {
            continue;
        };
        // A new schema that cannot be read or parsed is reported by the
        // schema compilation that `check` runs before this.
        let Some(new_schema) = std::fs::read_to_string(&new_path)
            .ok()
            .and_then(|text| serde_json::from_str(&text).ok())
        else {
            continue;
        };
        let old_schema = match read_old_schema(event_type, &old_path) {
            Ok(schema) => schema,
            Err(problem) => {
                problems.push(problem.at(entry.file, entry.def.schema.span()));
                continue;
            }
        };
        for finding in compat::compare(&old_schema, &new_schema, mode) {
            problems.push(
                Problem::error(
                    "incompatible-schema",
                    format!(
                        "event `{event_type}` at `{}`: {} (old `{}`, new `{}`)",
                        finding.pointer,
                        finding.message,
                        old_path.display(),
                        new_path.display()
                    ),
                )
                .at(entry.file, entry.def.schema.span())
                .hint("keep the change compatible, or publish the new shape as a new event type"),
            );
        }
    }
    problems
}

/// Returns the canonical path of a manifest relative to the root of its
/// checkout: the nearest folder above it that contains `.git` (a folder, or
/// the file of a Git worktree). A manifest outside any Git checkout is taken
/// relative to the working directory, which must then contain it.
fn checkout_relative(full: &Path) -> Result<PathBuf, Problem> {
    if let Some(root) = full
        .ancestors()
        .skip(1)
        .find(|dir| dir.join(".git").exists())
        && let Ok(relative) = full.strip_prefix(root)
    {
        return Ok(relative.to_path_buf());
    }
    let working = std::env::current_dir().and_then(std::fs::canonicalize);
    if let Ok(working) = &working
        && let Ok(relative) = full.strip_prefix(working)
    {
        return Ok(relative.to_path_buf());
    }
    Err(Problem::error(
        "against-manifest-outside-checkout",
        format!(
            "cannot tell where manifest `{}` is in the older checkout: no folder above it \
             contains `.git`, and it is outside the working directory",
            full.display()
        ),
    )
    .hint(
        "run `check` from the root of the checkout that contains the manifest, so that \
         its path relative to that root is its path under `--against`",
    ))
}

/// Reads and parses the schema of `event_type` in the older checkout.
fn read_old_schema(event_type: &str, path: &Path) -> Result<serde_json::Value, Problem> {
    let text = std::fs::read_to_string(path).map_err(|err| {
        Problem::error(
            "against-schema-unreadable",
            format!(
                "cannot read the older schema `{}` of event `{event_type}`, so it was not \
                 compared: {err}",
                path.display()
            ),
        )
        .hint(
            "pass the root of a complete older checkout to `--against`, such as one made \
             with `git worktree add`",
        )
    })?;
    serde_json::from_str(&text).map_err(|err| {
        Problem::error(
            "against-schema-invalid",
            format!(
                "the older schema `{}` of event `{event_type}` is not valid JSON, so it was \
                 not compared: {err}",
                path.display()
            ),
        )
        .hint("pass an older checkout in which this schema is valid JSON to `--against`")
    })
}

/// Warns about each older manifest that is not valid TOML, because the events
/// it defines cannot be found and so are not compared.
fn unparsed_old_manifests(old: &manifest::Loaded) -> Vec<Problem> {
    old.problems
        .iter()
        .filter(|problem| problem.code == "invalid-toml")
        .map(|problem| {
            let file = problem
                .file
                .and_then(|index| old.manifest.files.get(index))
                .map(|file| file.path.display().to_string())
                .unwrap_or_default();
            Problem::warning(
                "against-manifest-invalid",
                format!(
                    "the older manifest `{file}` is not valid TOML, so the schemas of the \
                     events it defines were not compared: {}",
                    problem.message
                ),
            )
            .hint("pass an older checkout in which this manifest is valid to `--against`")
        })
        .collect()
}
