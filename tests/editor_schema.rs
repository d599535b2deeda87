//! The manifest's JSON Schema as editors read it: taplo, the TOML toolkit
//! behind Even Better TOML, validates the example manifests against
//! `schemas/manifest.schema.json` through their `#:schema` comment, and
//! rejects a manifest that breaks the schema.
//!
//! The test runs the `taplo` command of the npm package `@taplo/cli`, from
//! `~/.cache/switchyard/npm` where `.ci/run` installs it, or from the path
//! in `SWITCHYARD_TAPLO`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use switchyard_tests::repo_root;

/// Environment variable with the path of the `taplo` executable.
const TAPLO_VARIABLE: &str = "SWITCHYARD_TAPLO";

/// The command that installs taplo where this test looks by default.
const TAPLO_INSTALL: &str = "npm install --prefix ~/.cache/switchyard/npm @taplo/cli@0.7.0";

/// The comment that points editors at the schema, relative to `manifests/`.
const SCHEMA_COMMENT: &str = "#:schema ../schemas/manifest.schema.json";

fn taplo_path() -> PathBuf {
    if let Some(path) = std::env::var_os(TAPLO_VARIABLE) {
        return PathBuf::from(path);
    }
    let home = std::env::var_os("HOME").unwrap_or_default();
    PathBuf::from(home).join(".cache/switchyard/npm/node_modules/.bin/taplo")
}

/// Runs `taplo check` on one file, with no configuration file and no
/// schema catalog, so only the file's `#:schema` comment or `--schema`
/// chooses the schema and nothing is fetched from the network.
fn taplo_check(file: &Path, schema: Option<&Path>) -> Output {
    let taplo = taplo_path();
    assert!(
        taplo.is_file(),
        "taplo is missing at {}; install it with `{TAPLO_INSTALL}` (bash .ci/run does), \
         or set {TAPLO_VARIABLE} to a `taplo` executable",
        taplo.display()
    );
    let mut command = Command::new(&taplo);
    command
        .args(["check", "--no-auto-config", "--colors", "never"])
        .current_dir(repo_root());
    if let Some(schema) = schema {
        command
            .arg("--schema")
            .arg(format!("file://{}", schema.display()));
    }
    command
        .arg(file)
        .output()
        .unwrap_or_else(|err| panic!("cannot run {}: {err}", taplo.display()))
}

fn example_manifests() -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(repo_root().join("manifests"))
        .expect("manifests/ exists")
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
        // Test case files (`switchyard test`) are not manifests.
        .filter(|path| !path.to_string_lossy().ends_with(".test.toml"))
        .collect();
    paths.sort();
    assert!(!paths.is_empty(), "manifests/ holds no .toml file");
    paths
}

#[test]
fn example_manifests_name_schema() {
    for path in example_manifests() {
        let text = std::fs::read_to_string(&path).expect("manifest is readable");
        assert_eq!(
            text.lines().next(),
            Some(SCHEMA_COMMENT),
            "{} should start with `{SCHEMA_COMMENT}` so editors validate it",
            path.display()
        );
    }
}

#[test]
fn taplo_accepts_example_manifests() {
    for path in example_manifests() {
        let output = taplo_check(&path, None);
        assert!(
            output.status.success(),
            "taplo rejected {} against its #:schema:\n{}{}",
            path.display(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[test]
fn taplo_rejects_broken_manifest() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let schema = repo_root().join("schemas/manifest.schema.json");
    let cases = [
        (
            "unknown key",
            "[queues.orders]\nbroker = \"rabbit\"\ndead_leter = { exchange = \"dlx\" }\n",
            "dead_leter",
        ),
        (
            "wrong type",
            "[consumers.orders]\nqueue = \"orders\"\nhandler = \"orders.wasm\"\nprefetch = \"lots\"\n",
            "lots",
        ),
        (
            "unknown broker kind",
            "[brokers.rabbit]\nkind = \"mqtt\"\n",
            "mqtt",
        ),
    ];
    for (case, text, shown) in cases {
        let path = dir.path().join("broken.toml");
        std::fs::write(&path, text).expect("write the manifest");
        let output = taplo_check(&path, Some(&schema));
        let report = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            !output.status.success(),
            "{case}: taplo accepted it:\n{report}"
        );
        assert!(
            report.contains("schema validation failed"),
            "{case}: taplo failed for another reason:\n{report}"
        );
        assert!(
            report.contains(shown),
            "{case}: `{shown}` not shown:\n{report}"
        );
    }
}
