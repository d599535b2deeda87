//! `switchyard check` on the cases in `tests/check`. Each case folder
//! contains a `manifest.toml` with one kind of problem and `expected.txt`,
//! the text output that `check` writes to stderr followed by its exit code.
//! The folders `schemas` and `handlers` contain the files that the cases
//! refer to.
//!
//! `check` runs with the case folder as its working directory and an empty
//! environment, so paths and `${VAR}` warnings do not depend on the machine.
//! After an intended change of the output, rewrite every `expected.txt` with
//! `SWITCHYARD_BLESS=1 cargo test -p switchyard-tests --test check` and
//! review the difference.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;
use switchyard_tests::{repo_root, switchyard_binary};

/// Environment variable that rewrites the expected files instead of
/// comparing with them.
const BLESS_VARIABLE: &str = "SWITCHYARD_BLESS";

/// How one run of `switchyard check` ended.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn cases_dir() -> PathBuf {
    repo_root().join("tests/check")
}

fn case_dir(case: &str) -> PathBuf {
    cases_dir().join(case)
}

/// Runs `switchyard check manifest.toml ARGS` in a case folder.
fn check(case: &str, args: &[&str]) -> Run {
    let dir = case_dir(case);
    let output = Command::new(switchyard_binary())
        .arg("check")
        .arg("manifest.toml")
        .args(args)
        .current_dir(&dir)
        .env_clear()
        .output()
        .unwrap_or_else(|err| panic!("cannot run switchyard check in {}: {err}", dir.display()));
    Run {
        code: output
            .status
            .code()
            .unwrap_or_else(|| panic!("switchyard check in {case} was killed")),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Returns the names of the case folders, sorted: those with a manifest.
fn cases() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(cases_dir())
        .expect("tests/check exists")
        .flatten()
        .filter(|entry| entry.path().join("manifest.toml").is_file())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Parses `--format json` output into its problems.
fn problems(run: &Run) -> Vec<Value> {
    let output: Value = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|err| panic!("stdout is not JSON ({err}):\n{}", run.stdout));
    output["problems"]
        .as_array()
        .unwrap_or_else(|| panic!("no `problems` array in {output}"))
        .clone()
}

#[test]
fn text_output_matches_expected_files() {
    let bless = std::env::var_os(BLESS_VARIABLE).is_some_and(|value| value == "1");
    let mut mismatches = Vec::new();
    for case in cases() {
        let run = check(&case, &[]);
        assert_eq!(run.stdout, "", "{case}: text output belongs on stderr");
        let actual = format!("{}exit code: {}\n", run.stderr, run.code);
        let path = case_dir(&case).join("expected.txt");
        if bless {
            std::fs::write(&path, &actual)
                .unwrap_or_else(|err| panic!("cannot write {}: {err}", path.display()));
            continue;
        }
        let expected = std::fs::read_to_string(&path).unwrap_or_default();
        if expected != actual {
            mismatches.push(format!(
                "--- {case}: expected ({})\n{expected}--- {case}: actual\n{actual}",
                path.display()
            ));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} case(s) differ from their expected.txt; if the change is intended, run \
         `{BLESS_VARIABLE}=1 cargo test -p switchyard-tests --test check` and review \
         the diff\n\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
}

#[test]
fn every_case_has_expected_file() {
    // While blessing, the test above writes the files at the same time.
    if std::env::var_os(BLESS_VARIABLE).is_some_and(|value| value == "1") {
        return;
    }
    for case in cases() {
        let path = case_dir(&case).join("expected.txt");
        assert!(
            path.is_file(),
            "{} is missing; create it with `{BLESS_VARIABLE}=1 cargo test -p switchyard-tests --test check`",
            path.display()
        );
    }
}

/// Each case reports the problem its folder is named after, and no other.
#[test]
fn case_reports_its_own_code() {
    let codes_by_case = [
        (
            "conflicting-option",
            // One option that switchyard sets itself, one that `tls` sets.
            &["conflicting-option", "conflicting-option"][..],
        ),
        ("duplicate-key", &["duplicate-key"][..]),
        ("duplicate-route", &["duplicate-route"][..]),
        ("handler-core-module", &["handler-not-component"][..]),
        ("handler-not-found", &["handler-not-found"][..]),
        ("handler-other-world", &["handler-wrong-world"][..]),
        ("handler-unknown-import", &["handler-wrong-world"][..]),
        ("invalid-binding-key", &["invalid-binding-key"][..]),
        ("invalid-calls-per-instance", &["invalid-value"][..]),
        ("invalid-concurrency", &["invalid-value"][..]),
        ("invalid-duration", &["invalid-value"][..]),
        ("invalid-enum", &["invalid-value"][..]),
        ("invalid-route", &["invalid-route"][..]),
        ("invalid-size", &["invalid-value"][..]),
        ("invalid-toml", &["invalid-toml"][..]),
        ("invalid-type", &["invalid-value"][..]),
        ("invalid-url", &["invalid-url"][..]),
        ("literal-password", &["literal-password"][..]),
        // A literal bearer token, and an API key with a default.
        (
            "literal-token",
            &["literal-password", "literal-password"][..],
        ),
        ("literal-sasl-password", &["literal-password"][..]),
        (
            "missing-dead-letter",
            // Without it, no queue dead-letters to `dlx`, so the queue bound
            // to `dlx` is an ordinary queue that no consumer reads.
            &["missing-dead-letter", "unread-queue"][..],
        ),
        ("missing-key", &["missing-key"][..]),
        ("schema-example-invalid", &["schema-example-invalid"][..]),
        ("schema-invalid", &["schema-invalid"][..]),
        ("schema-not-found", &["schema-not-found"][..]),
        ("sasl-without-tls", &["sasl-without-tls"][..]),
        ("schema-ref-unresolved", &["schema-ref-unresolved"][..]),
        ("tls-file-invalid", &["tls-file-invalid"][..]),
        ("tls-file-not-found", &["tls-file-not-found"][..]),
        ("tls-missing-key", &["missing-key"][..]),
        ("tls-without-amqps", &["tls-without-amqps"][..]),
        ("undefined-broker", &["undefined-broker"][..]),
        (
            "undefined-credential",
            // `check` runs without environment, so the token's variable is
            // unset, and the credential that is defined is accepted nowhere.
            &[
                "undefined-variable",
                "undefined-credential",
                "unused-credential",
            ][..],
        ),
        ("undefined-event", &["undefined-event"][..]),
        ("undefined-exchange", &["undefined-exchange"][..]),
        ("undefined-queue", &["undefined-queue"][..]),
        ("undeclared-key-field", &["undeclared-key-field"][..]),
        ("undefined-variable", &["undefined-variable"][..]),
        ("unfed-consumer", &["unfed-consumer"][..]),
        ("unknown-key", &["unknown-key"][..]),
        ("unknown-table", &["unknown-key"][..]),
        (
            "unpublished-event",
            // An error for the event a producer accepts, a warning for the
            // other.
            &["unpublished-event", "unpublished-event"][..],
        ),
        ("shared-queue", &["shared-queue"][..]),
        ("unread-queue", &["unread-queue"][..]),
        ("unrouted-event", &["unrouted-event"][..]),
        (
            "wildcard-on-direct-exchange",
            // The literal key `order.*` matches no routing key, so the
            // event and the consumer are warned about too.
            &[
                "wildcard-on-direct-exchange",
                "unrouted-event",
                "unfed-consumer",
            ][..],
        ),
    ];
    for (case, expected) in codes_by_case {
        let run = check(case, &["--format", "json"]);
        let found = problems(&run);
        let codes: Vec<&str> = found.iter().filter_map(|p| p["code"].as_str()).collect();
        assert_eq!(codes, expected, "{case}: {}", run.stdout);
    }
    let listed: Vec<&str> = codes_by_case.iter().map(|(case, _)| *case).collect();
    for case in cases() {
        assert!(
            case == "valid" || case == "three-faults" || listed.contains(&case.as_str()),
            "case {case} is not in this test's table; add it with the code it reports"
        );
    }
}

#[test]
fn three_faults_three_lines() {
    let run = check("three-faults", &["--format", "json"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    let found = problems(&run);
    // Problems come in phase order: parsing, then references.
    let mut lines_and_codes: Vec<(u64, &str)> = found
        .iter()
        .map(|p| {
            (
                p["line"].as_u64().unwrap_or(0),
                p["code"].as_str().unwrap_or(""),
            )
        })
        .collect();
    lines_and_codes.sort();
    assert_eq!(
        lines_and_codes,
        [
            (22, "invalid-value"),
            (27, "undefined-exchange"),
            (36, "unknown-key")
        ],
        "{}",
        run.stdout
    );
}

#[test]
fn json_records_have_every_field() {
    let run = check("undefined-queue", &["--format", "json"]);
    assert_eq!(run.stderr, "", "json output leaves stderr empty");
    let found = problems(&run);
    assert_eq!(found.len(), 1, "{}", run.stdout);
    let problem = &found[0];
    assert_eq!(problem["severity"], "error");
    assert_eq!(problem["code"], "undefined-queue");
    assert_eq!(problem["message"], "queue `order` is not defined");
    assert_eq!(problem["file"], "manifest.toml");
    assert_eq!(problem["line"], 36);
    assert_eq!(problem["column"], 9);
    assert_eq!(problem["hint"], "did you mean `orders`?");
}

#[test]
fn json_lists_nothing_for_valid_manifest() {
    let run = check("valid", &["--format", "json"]);
    assert_eq!(run.code, 0, "{}", run.stdout);
    assert!(problems(&run).is_empty(), "{}", run.stdout);
}

#[test]
fn exit_codes() {
    let cases = [
        ("valid", &[][..], 0),
        ("valid", &["--deny-warnings"][..], 0),
        ("unread-queue", &[][..], 0),
        ("unread-queue", &["--deny-warnings"][..], 1),
        ("undefined-variable", &["--format", "json"][..], 0),
        (
            "undefined-variable",
            &["--deny-warnings", "--format", "json"][..],
            1,
        ),
        ("undefined-queue", &[][..], 1),
        ("three-faults", &["--format", "json"][..], 1),
        ("valid", &["--format", "yaml"][..], 2),
        ("valid", &["--compat", "forward"][..], 2),
        ("valid", &["--no-such-option"][..], 2),
    ];
    for (case, args, code) in cases {
        let run = check(case, args);
        assert_eq!(
            run.code,
            code,
            "`check manifest.toml {}` in {case}:\n{}{}",
            args.join(" "),
            run.stdout,
            run.stderr
        );
    }
}

#[test]
fn no_manifest_is_usage_error() {
    let output = Command::new(switchyard_binary())
        .arg("check")
        .env_clear()
        .output()
        .expect("the switchyard binary runs");
    assert_eq!(output.status.code(), Some(2));
}

/// `--against` compares with the schemas of an older checkout, found at the
/// same relative manifest path.
#[test]
fn against_reports_breaking_change() {
    let (old, new) = breaking_checkouts();

    let run = check_against(new.path(), Path::new("case/manifest.toml"), old.path());
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    let found = problems(&run);
    assert_eq!(found.len(), 1, "{}", run.stdout);
    assert_eq!(found[0]["code"], "incompatible-schema");
    let message = found[0]["message"].as_str().unwrap_or_default();
    assert!(message.contains("`order.placed`"), "{message}");
    assert!(message.contains("total"), "{message}");
}

/// The older manifest is found from the root of the new one's Git checkout,
/// whatever the working directory and whether the path is absolute.
#[test]
fn against_any_working_dir() {
    let (old, new) = breaking_checkouts();
    let elsewhere = tempfile::tempdir().expect("temporary folder");
    std::fs::create_dir(new.path().join(".git")).expect("create .git folder");

    let absolute = new.path().join("case/manifest.toml");
    let runs = [
        (
            new.path().to_path_buf(),
            PathBuf::from("case/manifest.toml"),
        ),
        (new.path().join("case"), PathBuf::from("manifest.toml")),
        (
            new.path().join("case"),
            PathBuf::from("../case/manifest.toml"),
        ),
        (elsewhere.path().to_path_buf(), absolute.clone()),
        (new.path().to_path_buf(), absolute),
    ];
    for (working_dir, manifest) in runs {
        let run = check_against(&working_dir, &manifest, old.path());
        let context = format!("in {}: {}", working_dir.display(), run.stdout);
        assert_eq!(run.code, 1, "{context}{}", run.stderr);
        let codes: Vec<Value> = problems(&run).iter().map(|p| p["code"].clone()).collect();
        assert_eq!(codes, ["incompatible-schema"], "{context}");
    }
}

/// Without a `.git` folder above it, a manifest outside the working
/// directory cannot be placed in the older checkout, and `check` reports an
/// error instead of comparing nothing.
#[test]
fn against_outside_checkout_rejected() {
    let (old, new) = breaking_checkouts();
    let elsewhere = tempfile::tempdir().expect("temporary folder");

    let manifest = new.path().join("case/manifest.toml");
    let run = check_against(elsewhere.path(), &manifest, old.path());
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    let found = problems(&run);
    assert_eq!(found.len(), 1, "{}", run.stdout);
    assert_eq!(found[0]["code"], "against-manifest-outside-checkout");
    assert_eq!(found[0]["severity"], "error");
    let message = found[0]["message"].as_str().unwrap_or_default();
    assert!(message.contains("manifest.toml"), "{message}");
}

/// A folder that contains none of the manifests is no older checkout, so it
/// is an error rather than a pass with nothing compared.
#[test]
fn against_folder_without_manifests_rejected() {
    let (_, new) = breaking_checkouts();
    let empty = tempfile::tempdir().expect("temporary folder");
    let run = check_against(new.path(), Path::new("case/manifest.toml"), empty.path());
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    let found = problems(&run);
    assert_eq!(found.len(), 1, "{}", run.stdout);
    assert_eq!(found[0]["code"], "against-manifest-not-found");
    assert_eq!(found[0]["severity"], "error");
}

/// A manifest added since the older checkout is a warning, and the events
/// of the others are still compared.
#[test]
fn against_new_manifest_warned_others_compared() {
    let (old, new) = breaking_checkouts();
    std::fs::write(new.path().join("case/extra.toml"), "").expect("write manifest");
    let run = check_all_against(
        new.path(),
        &[
            Path::new("case/manifest.toml"),
            Path::new("case/extra.toml"),
        ],
        old.path(),
    );
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    let mut codes: Vec<String> = problems(&run)
        .iter()
        .map(|problem| format!("{} {}", problem["severity"], problem["code"]))
        .collect();
    codes.sort();
    assert_eq!(
        codes,
        [
            "\"error\" \"incompatible-schema\"",
            "\"warning\" \"against-manifest-not-found\""
        ],
        "{}",
        run.stdout
    );
}

/// An older schema that is missing or not JSON is an error naming the file,
/// not a comparison skipped in silence.
#[test]
fn against_unusable_old_schema_reported() {
    let cases = [
        (Some("{\"type\": \"object\","), "against-schema-invalid"),
        (None, "against-schema-unreadable"),
    ];
    for (old_text, code) in cases {
        let (old, new) = breaking_checkouts();
        let schema = old.path().join("schemas/order.placed.json");
        match old_text {
            Some(text) => std::fs::write(&schema, text).expect("write schema"),
            None => std::fs::remove_file(&schema).expect("remove schema"),
        }

        let run = check_against(new.path(), Path::new("case/manifest.toml"), old.path());
        assert_eq!(run.code, 1, "{code}: {}{}", run.stdout, run.stderr);
        let found = problems(&run);
        assert_eq!(found.len(), 1, "{code}: {}", run.stdout);
        assert_eq!(found[0]["code"], code);
        let message = found[0]["message"].as_str().unwrap_or_default();
        assert!(message.contains("order.placed.json"), "{code}: {message}");
        assert!(message.contains("`order.placed`"), "{code}: {message}");
    }
}

/// An older manifest that is not valid TOML defines no events to compare
/// with, so `check` warns about it.
#[test]
fn against_invalid_old_manifest_warned() {
    let (old, new) = breaking_checkouts();
    std::fs::write(old.path().join("case/manifest.toml"), "[events\n").expect("write manifest");

    let run = check_against(new.path(), Path::new("case/manifest.toml"), old.path());
    let found = problems(&run);
    assert_eq!(found.len(), 1, "{}", run.stdout);
    assert_eq!(found[0]["code"], "against-manifest-invalid");
    assert_eq!(found[0]["severity"], "warning");
    let message = found[0]["message"].as_str().unwrap_or_default();
    assert!(message.contains("manifest.toml"), "{message}");
}

/// Writes an older and a newer checkout of the `valid` case, in that order.
/// The newer order schema also requires `total`, a breaking change.
fn breaking_checkouts() -> (tempfile::TempDir, tempfile::TempDir) {
    let valid = case_dir("valid").join("manifest.toml");
    let old = tempfile::tempdir().expect("temporary folder");
    let new = tempfile::tempdir().expect("temporary folder");
    write_checkout(old.path(), &valid, "[\"orderId\"]");
    write_checkout(new.path(), &valid, "[\"orderId\", \"total\"]");
    (old, new)
}

/// Runs `switchyard check MANIFEST --format json --against OLD` in
/// `working_dir`.
fn check_against(working_dir: &Path, manifest: &Path, old: &Path) -> Run {
    check_all_against(working_dir, &[manifest], old)
}

/// Runs `switchyard check MANIFEST... --format json --against OLD` in
/// `working_dir`.
fn check_all_against(working_dir: &Path, manifests: &[&Path], old: &Path) -> Run {
    let output = Command::new(switchyard_binary())
        .arg("check")
        .args(manifests)
        .args(["--format", "json", "--against"])
        .arg(old)
        .current_dir(working_dir)
        .env_clear()
        .output()
        .expect("the switchyard binary runs");
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Writes a checkout with the `valid` case's manifest at `case/manifest.toml`
/// and an order schema with the given `required` list.
fn write_checkout(root: &Path, manifest: &Path, required: &str) {
    let case = root.join("case");
    std::fs::create_dir_all(&case).expect("create case folder");
    std::fs::create_dir_all(root.join("schemas")).expect("create schemas folder");
    let text = std::fs::read_to_string(manifest).expect("read the valid manifest");
    // The case's handler folder is relative, so name the guests' folder in full.
    let guests = repo_root().join("tests/guests");
    let text = text.replace(
        "\"../../guests\"",
        &format!("{:?}", guests.display().to_string()),
    );
    std::fs::write(case.join("manifest.toml"), text).expect("write manifest");
    let schema = format!(
        r#"{{"type": "object", "required": {required},
            "properties": {{"orderId": {{"type": "string"}}, "total": {{"type": "number"}}}}}}"#
    );
    std::fs::write(root.join("schemas/order.placed.json"), schema).expect("write schema");
}

#[test]
fn check_never_connects_to_broker() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    let port = listener.local_addr().expect("local address").port();
    let output = Command::new(switchyard_binary())
        .args(["check", "manifest.toml"])
        .current_dir(case_dir("valid"))
        .env_clear()
        .env("RABBITMQ_URL", format!("amqp://127.0.0.1:{port}/%2f"))
        .output()
        .expect("the switchyard binary runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    listener
        .set_nonblocking(true)
        .expect("make the listener non-blocking");
    let accepted = listener.accept();
    assert!(
        accepted
            .as_ref()
            .is_err_and(|err| err.kind() == std::io::ErrorKind::WouldBlock),
        "check connected to the broker address: {accepted:?}"
    );
}

/// A reader that closes the pipe early, as `head` or `true` do, ends the
/// output quietly instead of making switchyard panic.
#[test]
fn closed_stdout_ends_output_quietly() {
    let commands: [&[&str]; 2] = [
        &["schema"],
        &["check", "manifests/shop.toml", "--format", "json"],
    ];
    for args in commands {
        let mut child = Command::new(switchyard_binary())
            .args(args)
            .current_dir(repo_root())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the switchyard binary runs");
        // Closing the read end before switchyard writes makes its write fail.
        drop(child.stdout.take());
        let output = child.wait_with_output().expect("switchyard exits");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}:\n{stderr}");
        assert_eq!(output.status.code(), Some(0), "{args:?}:\n{stderr}");
    }
}
