//! Fuzzes the manifest loader and checker on the path `switchyard check`
//! takes: the input is written as a manifest file, loaded and checked with
//! `Purpose::Check`, its event schemas are compiled, and every problem is
//! rendered as text and as a JSON record.
//!
//! The file lies in a temporary folder laid out like the repository, with
//! the repository's event schemas in `schemas/`, so manifests that name
//! `order.placed.json` compile a real schema. Unlike `check`, the target
//! loads no handler component, since fuzzed manifests name no real one.

#![no_main]

use std::path::{Component, Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use switchyard::manifest::{self, Manifest, Problem, Purpose};
use switchyard::schema::Schemas;

/// The temporary folder and the manifest path inside it.
struct Layout {
    root: PathBuf,
    manifest: PathBuf,
}

/// Creates `$TMPDIR/switchyard-fuzz-manifest-<pid>` with `manifests/`,
/// `handlers/` and a copy of the repository's `schemas/`. NOTE: the folder
/// is left behind when the fuzzer exits; the CI lane points `TMPDIR` at a
/// folder it deletes.
fn layout() -> &'static Layout {
    static LAYOUT: OnceLock<Layout> = OnceLock::new();
    LAYOUT.get_or_init(|| {
        let root =
            std::env::temp_dir().join(format!("switchyard-fuzz-manifest-{}", std::process::id()));
        for folder in ["manifests", "schemas", "handlers"] {
            std::fs::create_dir_all(root.join(folder)).expect("create the fuzzing folder");
        }
        let schemas = Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas");
        for entry in std::fs::read_dir(&schemas).expect("read the repository's schemas") {
            let path = entry.expect("list the repository's schemas").path();
            if let Some(name) = path.file_name() {
                std::fs::copy(&path, root.join("schemas").join(name)).expect("copy a schema");
            }
        }
        // `root` must contain no symbolic link, so that the lexical check in
        // `stays_inside` agrees with the file system.
        let root = root.canonicalize().expect("resolve the fuzzing folder");
        let manifest = root.join("manifests").join("fuzz.toml");
        Layout { root, manifest }
    })
}

/// Resolves `.` and `..` without touching the file system.
fn normalize(path: &Path) -> PathBuf {
    let mut normal = PathBuf::new();
    for component in path.components() {
        match component {
            Component::ParentDir => {
                normal.pop();
            }
            Component::CurDir => {}
            other => normal.push(other),
        }
    }
    normal
}

fn stays_inside(path: &Path, root: &Path) -> bool {
    normalize(path).starts_with(root)
}

/// Reports whether every schema file and folder that compiling would read
/// lies inside the fuzzing folder. A fuzzed manifest can name any path,
/// such as `/dev/zero`, which must not be read.
fn schemas_stay_inside(manifest: &Manifest, root: &Path) -> bool {
    manifest.events.keys().all(|event| {
        let file = manifest.schema_path(event);
        let folder = manifest.schema_dir(event);
        file.is_none_or(|file| stays_inside(&file, root))
            && folder.is_none_or(|folder| stays_inside(folder, root))
    })
}

/// Checks that a problem's position lies inside its file, on character
/// boundaries, as rendering requires.
fn assert_span_valid(problem: &Problem, manifest: &Manifest) {
    let (Some(index), Some(span)) = (problem.file, &problem.span) else {
        return;
    };
    let text = &manifest.files[index].text;
    assert!(
        span.start <= span.end && span.end <= text.len(),
        "span {span:?} of `{}` is outside the {} bytes of the file",
        problem.code,
        text.len()
    );
    assert!(
        text.is_char_boundary(span.start) && text.is_char_boundary(span.end),
        "span {span:?} of `{}` splits a character",
        problem.code
    );
}

/// Looks up environment variables for `${VAR}`: variables whose name starts
/// with `SET` have a value, all others are unset.
fn lookup(name: &str) -> Option<String> {
    name.starts_with("SET").then(|| format!("value-of-{name}"))
}

fuzz_target!(|data: &[u8]| {
    let layout = layout();
    std::fs::write(&layout.manifest, data).expect("write the fuzzed manifest");

    let loaded = manifest::load(
        std::slice::from_ref(&layout.manifest),
        Purpose::Check,
        &lookup,
    );
    let mut problems = loaded.problems;
    let manifest = loaded.manifest;
    if schemas_stay_inside(&manifest, &layout.root) {
        let (_, schema_problems) = Schemas::compile(&manifest);
        problems.extend(schema_problems);
    }

    for problem in &problems {
        assert_span_valid(problem, &manifest);
    }
    let text = manifest::render(&problems, &manifest.files);
    assert_eq!(text.is_empty(), problems.is_empty());
    let records: Vec<_> = problems
        .iter()
        .map(|problem| manifest::record(problem, &manifest.files))
        .collect();
    serde_json::to_string(&records).expect("problem records serialize");
});
