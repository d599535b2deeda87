//! `switchyard test`: the reference system's cases pass, a wrong expectation
//! fails with a diff that names the field, and each handler outcome (ok,
//! retry, reject, dead-letter) and a loop of emitted events is reported, and
//! each case starts in fresh handler instances.
//! No broker is needed: every case runs on the embedded broker.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use switchyard_tests::{ChaosConsumer, chaos_manifest, repo_root, switchyard_binary};

fn switchyard_test(paths: &[&Path]) -> Output {
    Command::new(switchyard_binary())
        .arg("test")
        .args(paths)
        .current_dir(repo_root())
        // The chaos manifest reads its broker URL from this variable; the
        // embedded broker ignores the value.
        .env_remove("RABBITMQ_URL")
        .output()
        .expect("switchyard runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn reference_manifests() -> [PathBuf; 2] {
    [
        repo_root().join("manifests/shop.toml"),
        repo_root().join("manifests/streaming.toml"),
    ]
}

fn write_case_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("case file written");
    path
}

#[test]
fn reference_cases_pass() {
    let [shop, streaming] = reference_manifests();
    let output = switchyard_test(&[&shop, &streaming]);
    let text = stdout(&output);
    assert!(
        output.status.success(),
        "exit {:?}\n{text}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(text.contains("running 6 test cases from 1 files"), "{text}");
    assert!(
        text.contains(
            "case shop.test.toml: placed order is confirmed, reserved and streamed ... ok"
        ),
        "{text}"
    );
    assert!(
        text.contains("test result: ok. 6 passed; 0 failed"),
        "{text}"
    );
}

#[test]
fn wrong_expectation_names_field() {
    let dir = tempfile::tempdir().unwrap();
    let cases = write_case_file(
        dir.path(),
        "wrong.test.toml",
        r#"
[[case]]
name = "quantity off by one"
event = "order.placed"
data = { orderId = "o-1", customerId = "c-1", total = 5.0, items = [{ productId = "p-1", quantity = 2 }] }

[[case.handled]]
consumer = "inventory-service"
emits = [{ event = "stock.reserved", data = { productId = "p-1", quantity = 3 } }]

[[case.handled]]
consumer = "email-service"

[[case.handled]]
consumer = "analytics-stream"
"#,
    );
    let [shop, streaming] = reference_manifests();
    let output = switchyard_test(&[&shop, &streaming, &cases]);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(
        text.contains("case wrong.test.toml: quantity off by one ... FAILED"),
        "{text}"
    );
    assert!(
        text.contains(
            "  handled[inventory-service].emits[0].data.quantity\n    expected: 3\n    found:    2\n"
        ),
        "{text}"
    );
    assert!(
        text.contains("`inventory-service` handled `order.placed`: ok"),
        "the report shows what happened:\n{text}"
    );
    assert!(
        text.contains("test result: FAILED. 0 passed; 1 failed"),
        "{text}"
    );
}

#[test]
fn outcomes_of_chaos_handlers() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = chaos_manifest(
        dir.path(),
        &[
            ChaosConsumer::new("asks-retry", "order.placed", "retry"),
            ChaosConsumer::new("asks-reject", "order.placed", "reject"),
            ChaosConsumer::new("traps", "order.placed", "trap").max_attempts(1),
            ChaosConsumer::new("echoes", "order.placed", "emit")
                .config("emit-type", "user.created"),
            ChaosConsumer::new("signups", "user.created", "ok"),
        ],
    )
    .unwrap();
    let cases = write_case_file(
        dir.path(),
        "chaos.test.toml",
        r#"
# The data passes both schemas, so `echoes` can emit it as user.created.
[[case]]
name = "every outcome"
event = "order.placed"
data = { orderId = "o-1", customerId = "c-1", total = 5.0, items = [{ productId = "p-1", quantity = 1 }], userId = "u-1", email = "ada@example.com" }
routed = ["asks-reject", "asks-retry", "echoes", "traps"]

[[case.handled]]
consumer = "asks-retry"
outcome = "retry"
reason = "asked to retry"

[[case.handled]]
consumer = "asks-reject"
outcome = "reject"
reason = "asked to reject"

[[case.handled]]
consumer = "traps"
outcome = "dead-letter"
reason = "failed 1 attempts"

[[case.handled]]
consumer = "echoes"
emits = [{ event = "user.created", data = { userId = "u-1" } }]

[[case.handled]]
consumer = "signups"
event = "user.created"
"#,
    );
    let output = switchyard_test(&[&manifest, &cases]);
    let text = stdout(&output);
    assert!(output.status.success(), "{text}");
    assert!(
        text.contains("test result: ok. 1 passed; 0 failed"),
        "{text}"
    );
}

const LOOP_CASE: &str = r#"
[[case]]
name = "handler that emits its own input"
event = "order.placed"
data = { orderId = "o-1", customerId = "c-1", total = 5.0, items = [{ productId = "p-1", quantity = 1 }] }
"#;

/// A handler that emits its own input is stopped by the emit depth, as in
/// `up`: 32 calls, then the next event is dead-lettered.
#[test]
fn emitted_loop_is_stopped_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = chaos_manifest(
        dir.path(),
        &[ChaosConsumer::new("loops", "order.placed", "emit").config("emit-type", "order.placed")],
    )
    .unwrap();
    let cases = write_case_file(dir.path(), "loop.test.toml", LOOP_CASE);
    let output = switchyard_test(&[&manifest, &cases]);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(
        text.contains("stopped: emitted events loop, and the event 32 handler calls deep"),
        "{text}"
    );
    // 33 calls, the first 20 of them shown.
    assert!(text.contains("... and 13 more handler calls"), "{text}");
}

/// Two handlers that each emit the input double the events at every step,
/// so the call limit stops the case before the emit depth does.
#[test]
fn branching_loop_stopped_by_call_limit() {
    let dir = tempfile::tempdir().unwrap();
    let emitter =
        |name| ChaosConsumer::new(name, "order.placed", "emit").config("emit-type", "order.placed");
    let manifest = chaos_manifest(dir.path(), &[emitter("left"), emitter("right")]).unwrap();
    let cases = write_case_file(dir.path(), "loop.test.toml", LOOP_CASE);
    let output = switchyard_test(&[&manifest, &cases]);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(text.contains("stopped after 1000 handler calls"), "{text}");
    assert!(text.contains("... and 980 more handler calls"), "{text}");
}

#[test]
fn unexpected_call_and_schema_mismatch() {
    let dir = tempfile::tempdir().unwrap();
    let cases = write_case_file(
        dir.path(),
        "mismatch.test.toml",
        r#"
[[case]]
name = "sign-up expected to reach nobody"
event = "user.created"
data = { userId = "u-1", email = "ada@example.com" }
handled = []

[[case]]
name = "invalid sign-up expected to pass"
event = "user.created"
data = { userId = "u-1" }

[[case]]
name = "valid sign-up expected to fail"
event = "user.created"
data = { userId = "u-1", email = "ada@example.com" }
valid = false
"#,
    );
    let [shop, _] = reference_manifests();
    let output = switchyard_test(&[&shop, &cases]);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(
        text.contains("    expected: no other handler calls\n    found:    `analytics-service` handled `user.created` (ok)"),
        "{text}"
    );
    assert!(
        text.contains("  valid\n    expected: true\n    found:    false:"),
        "{text}"
    );
    assert!(
        text.contains(
            "    expected: false (rejected by the schema of the event type)\n    found:    true"
        ),
        "{text}"
    );
    assert!(text.contains("0 passed; 3 failed"), "{text}");
}

#[test]
fn unknown_consumer_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let cases = write_case_file(
        dir.path(),
        "typo.test.toml",
        r#"
[[case]]
name = "typo in a consumer"
event = "user.created"
data = { userId = "u-1", email = "ada@example.com" }

[[case.handled]]
consumer = "email-servce"
"#,
    );
    let [shop, _] = reference_manifests();
    let output = switchyard_test(&[&shop, &cases]);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(
        text.contains("consumer `email-servce` is not defined in the manifests; defined consumers: analytics-service, email-service, inventory-service"),
        "{text}"
    );
}

#[test]
fn no_case_files_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = chaos_manifest(dir.path(), &[]).unwrap();
    let output = switchyard_test(&[&manifest]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("no test case files (`*.test.toml`) found in"),
        "{stderr}"
    );
}

/// Case files without a manifest are a usage error, which exits 2 with the
/// command's usage, as clap's own usage errors do.
#[test]
fn case_files_alone_are_usage_error() {
    let case = repo_root().join("manifests/shop.test.toml");
    let output = switchyard_test(&[&case]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("no manifest given; name the manifests before the case files"),
        "{stderr}"
    );
    assert!(stderr.contains("Usage: switchyard test"), "{stderr}");
}

/// Every case starts its handlers in fresh instances, so a handler's globals
/// cannot carry state from one case into the next. The chaos guest logs how
/// many calls its instance has served.
#[test]
fn each_case_starts_fresh_instances() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = chaos_manifest(
        dir.path(),
        &[ChaosConsumer::new("counter", "order.placed", "ok")],
    )
    .unwrap();
    let case = |id: &str| {
        format!(
            r#"
[[case]]
name = "order {id}"
event = "order.placed"
data = {{ orderId = "{id}", customerId = "c-1", total = 5.0, items = [{{ productId = "p-1", quantity = 1 }}] }}
"#
        )
    };
    let text = ["o-1", "o-2", "o-3"].map(case).concat();
    let cases = write_case_file(dir.path(), "counter.test.toml", &text);
    let output = Command::new(switchyard_binary())
        .arg("test")
        .args([&manifest, &cases])
        .env_remove("RABBITMQ_URL")
        // Guest log lines are logged at info.
        .env("RUST_LOG", "info")
        .output()
        .expect("switchyard runs");
    assert!(output.status.success(), "{}", stdout(&output));
    let logs = String::from_utf8_lossy(&output.stderr);
    let calls: Vec<&str> = logs
        .lines()
        .filter_map(|line| {
            line.split_once("chaos guest called: ")
                .map(|(_, call)| call)
        })
        .collect();
    assert_eq!(calls.len(), 3, "one call per case:\n{logs}");
    assert!(
        calls.iter().all(|call| call.ends_with("instance call 1")),
        "each case's call is the first of its instance: {calls:#?}"
    );
}
