//! `switchyard explain` on the reference manifests, compared with the
//! expected output in `tests/explain/<case>.txt`: the text on stdout, then
//! stderr, then the exit code. After an intended change of the output,
//! rewrite the files with
//! `SWITCHYARD_BLESS=1 cargo test -p switchyard-tests --test explain` and
//! review the difference.

use std::process::Command;

use switchyard_tests::{ChaosConsumer, chaos_manifest, repo_root, switchyard_binary};

/// Environment variable that rewrites the expected files instead of
/// comparing with them.
const BLESS_VARIABLE: &str = "SWITCHYARD_BLESS";

/// Each case: its name and the arguments after `explain`, with manifest
/// paths relative to the repository root.
const CASES: [(&str, &[&str]); 6] = [
    (
        "order-placed",
        &[
            "manifests/shop.toml",
            "manifests/streaming.toml",
            "order.placed",
        ],
    ),
    ("user-created", &["manifests/shop.toml", "user.created"]),
    ("email-sent", &["manifests/shop.toml", "email.sent"]),
    (
        "unmatched-key",
        &[
            "manifests/shop.toml",
            "order.placed",
            "--key",
            "nobody.listens",
        ],
    ),
    ("undefined-event", &["manifests/shop.toml", "order.shipped"]),
    (
        "invalid-manifest",
        &["tests/check/undefined-queue/manifest.toml", "order.placed"],
    ),
];

/// Runs `switchyard explain ARGS` from the repository root with an empty
/// environment and returns stdout, stderr and the exit code as one text.
fn explain(args: &[&str]) -> String {
    let output = Command::new(switchyard_binary())
        .arg("explain")
        .args(args)
        .current_dir(repo_root())
        .env_clear()
        .output()
        .unwrap_or_else(|err| panic!("cannot run switchyard explain {args:?}: {err}"));
    let code = output
        .status
        .code()
        .unwrap_or_else(|| panic!("switchyard explain {args:?} was killed"));
    format!(
        "{}--- stderr\n{}--- exit code {code}\n",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn output_matches_expected_files() {
    let bless = std::env::var_os(BLESS_VARIABLE).is_some();
    let mut differences = Vec::new();
    for (case, args) in CASES {
        let actual = explain(args);
        let path = repo_root().join(format!("tests/explain/{case}.txt"));
        if bless {
            std::fs::write(&path, &actual)
                .unwrap_or_else(|err| panic!("cannot write {}: {err}", path.display()));
            continue;
        }
        let expected = std::fs::read_to_string(&path).unwrap_or_else(|err| {
            panic!(
                "cannot read {} ({err}); create it with {BLESS_VARIABLE}=1",
                path.display()
            )
        });
        if actual != expected {
            differences.push(format!(
                "case `{case}` ({}):\n--- expected\n{expected}--- actual\n{actual}",
                path.display()
            ));
        }
    }
    assert!(
        differences.is_empty(),
        "{} case(s) differ; if the change is intended, run with {BLESS_VARIABLE}=1:\n\n{}",
        differences.len(),
        differences.join("\n")
    );
}

#[test]
fn every_consumer_of_an_event_named() {
    let output = explain(&["manifests/shop.toml", "user.created"]);
    for consumer in ["email-service", "analytics-service"] {
        assert!(
            output.contains(&format!("consumer `{consumer}`")),
            "{consumer} missing from:\n{output}"
        );
    }
    assert!(
        !output.contains("inventory-service"),
        "inventory-service does not read user.created:\n{output}"
    );
    assert!(output.ends_with("--- exit code 0\n"), "{output}");
}

/// With `max_attempts = 1` there is no retry, so the output describes no
/// backoff.
#[test]
fn single_attempt_has_no_retry() {
    let dir = tempfile::tempdir().unwrap();
    let consumer = ChaosConsumer::new("once", "order.placed", "ok").max_attempts(1);
    let manifest = chaos_manifest(dir.path(), &[consumer]).unwrap();
    let output = explain(&[manifest.to_str().unwrap(), "order.placed"]);
    assert!(
        output.contains("on failure: one attempt only, no retry"),
        "{output}"
    );
    assert!(!output.contains("up to 1 attempts"), "{output}");
}
