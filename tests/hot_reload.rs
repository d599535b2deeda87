//! Hot reload of handler components through the real binary with
//! `up --embedded`. The tests cover a handler that appears after the start,
//! each way of saving a new version, files that must be rejected and a
//! deleted handler, and a handler in a subfolder. They also check guest
//! stdout and stderr in the log, and the warning about manifest changes.
//!
//! Each test runs one consumer, `signups`, on `user.created` events, with
//! the handler file `signups.wasm` in a temporary handlers folder. The file
//! alternates between two components whose log lines tell them apart: the
//! analytics handler logs `user signed up: <id>` and the chaos guest logs
//! `chaos guest called: event <id> attempt <n>`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use sha2::Digest as _;
use switchyard_tests::shop::{HANDLED, user_body};
use switchyard_tests::{BrokerMode, LogLine, Switchyard, component, poll, serial};
use tempfile::TempDir;

const RELOADS: &str = "switchyard_handler_reloads_total";
const HANDLER_INFO: &str = "switchyard_handler_info";
const CONSUMER: &str = "signups";
const HANDLER_FILE: &str = "signups.wasm";

/// Maximum wait for a reload, a handled event or a log line.
const TIMEOUT: Duration = Duration::from_secs(30);

/// Time after a save in which a second reload would show up: well over the
/// runtime's 250 ms debounce plus a compile from its cache.
const SETTLE: Duration = Duration::from_millis(1500);

/// A component that can be the `signups` handler.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Version {
    Analytics,
    Chaos,
}

impl Version {
    fn bytes(self) -> anyhow::Result<Vec<u8>> {
        let relative = match self {
            Version::Analytics => "handlers/analytics.wasm",
            Version::Chaos => "tests/guests/chaos.wasm",
        };
        Ok(std::fs::read(component(relative)?)?)
    }

    /// Returns the first 12 hex digits of the SHA-256 of the component, as
    /// `switchyard_handler_info` labels it.
    fn digest(self) -> anyhow::Result<String> {
        let hash = sha2::Sha256::digest(self.bytes()?);
        let hex: String = hash.iter().map(|byte| format!("{byte:02x}")).collect();
        Ok(hex[..12].to_owned())
    }

    /// Returns the version whose call logged `message`.
    fn from_message(message: &str) -> Option<Version> {
        if message.starts_with("user signed up: ") {
            Some(Version::Analytics)
        } else if message.starts_with("chaos guest called: ") {
            Some(Version::Chaos)
        } else {
            None
        }
    }
}

/// A `switchyard up --embedded` run on a temporary folder with the manifest
/// and the handlers folder.
struct Run {
    dir: TempDir,
    manifest: PathBuf,
    /// The handler file, relative to the handlers folder.
    handler: &'static str,
    process: Switchyard,
}

impl Run {
    fn handlers(&self) -> PathBuf {
        self.dir.path().join("handlers")
    }

    fn handler_path(&self) -> PathBuf {
        self.handlers().join(self.handler)
    }

    fn log_lines(&self) -> Vec<LogLine> {
        LogLine::parse_all(&self.process.stderr())
    }

    /// Returns the log lines whose message starts with `prefix`.
    fn lines_starting(&self, prefix: &str) -> Vec<LogLine> {
        self.log_lines()
            .into_iter()
            .filter(|line| line.message().starts_with(prefix))
            .collect()
    }

    /// Waits until a log line whose message starts with `prefix` appears
    /// `count` times, and returns those lines.
    async fn wait_for_lines(&self, prefix: &str, count: usize) -> anyhow::Result<Vec<LogLine>> {
        let found = poll(TIMEOUT, || async {
            let lines = self.lines_starting(prefix);
            (lines.len() >= count).then_some(lines)
        })
        .await;
        found.ok_or_else(|| {
            anyhow::anyhow!(
                "timed out after {TIMEOUT:?} waiting for {count} log lines starting with {prefix:?}; stderr:\n{}",
                self.process.stderr_tail(40)
            )
        })
    }

    /// Posts a `user.created` event and returns its id.
    async fn post_user(&self) -> anyhow::Result<String> {
        self.process.publish("/users", &user_body()).await
    }

    /// Waits until the handler logged its call for `event_id` and returns
    /// which version ran.
    async fn handled_by(&self, event_id: &str) -> anyhow::Result<Version> {
        let found = poll(TIMEOUT, || async {
            self.log_lines()
                .iter()
                .filter(|line| line.field("event_id") == Some(event_id))
                .find_map(|line| Version::from_message(line.message()))
        })
        .await;
        found.ok_or_else(|| {
            anyhow::anyhow!(
                "no handler logged a call for event {event_id} within {TIMEOUT:?}; stderr:\n{}",
                self.process.stderr_tail(40)
            )
        })
    }

    /// Posts an event and checks which version handled it.
    async fn expect_served_by(&self, expected: Version, step: &str) -> anyhow::Result<()> {
        let event_id = self.post_user().await?;
        let version = self.handled_by(&event_id).await?;
        assert_eq!(
            version, expected,
            "version that handled event {event_id} {step}"
        );
        Ok(())
    }

    /// Waits until `switchyard_handler_reloads_total{result}` reaches
    /// `count`, then checks that it stays there for [`SETTLE`].
    async fn expect_reloads(&self, result: &str, count: u64, step: &str) -> anyhow::Result<()> {
        let labels = [("handler", HANDLER_FILE), ("result", result)];
        self.process
            .wait_for_count(RELOADS, &labels, count, TIMEOUT)
            .await?;
        tokio::time::sleep(SETTLE).await;
        let metrics = self.process.metrics().await?;
        assert_eq!(
            metrics.count(RELOADS, &labels),
            count,
            "reloads with result {result} {step}:\n{}",
            metrics.describe(RELOADS)
        );
        Ok(())
    }

    /// Checks that `switchyard_handler_info` is 1 for `current` and, when
    /// given, 0 for `replaced`.
    async fn expect_info(&self, current: Version, replaced: Option<Version>) -> anyhow::Result<()> {
        let metrics = self.process.metrics().await?;
        let digest = current.digest()?;
        assert_eq!(
            metrics.value(
                HANDLER_INFO,
                &[("handler", HANDLER_FILE), ("digest", &digest)]
            ),
            1.0,
            "info of the loaded {current:?} ({digest}):\n{}",
            metrics.describe(HANDLER_INFO)
        );
        if let Some(replaced) = replaced {
            let digest = replaced.digest()?;
            assert_eq!(
                metrics.value(
                    HANDLER_INFO,
                    &[("handler", HANDLER_FILE), ("digest", &digest)]
                ),
                0.0,
                "info of the replaced {replaced:?} ({digest}):\n{}",
                metrics.describe(HANDLER_INFO)
            );
        }
        Ok(())
    }
}

/// Writes the manifest: the `user.created` event, its producer
/// `POST /users`, the queue `signups` with a dead-letter exchange, and the
/// consumer `signups` running `handler` from `<dir>/handlers`.
fn write_manifest(dir: &Path, handler: &str) -> anyhow::Result<PathBuf> {
    let handlers = dir.join("handlers");
    std::fs::create_dir_all(&handlers)?;
    let quote = |path: &Path| toml::Value::String(path.to_string_lossy().into_owned()).to_string();
    let text = format!(
        r#"[runtime]
name = "hot-reload-test"
handlers = {handlers}
schemas = {schemas}

[brokers.rabbit]
kind = "amqp"
url = "${{RABBITMQ_URL}}"

[exchanges.events]
broker = "rabbit"
type = "topic"

[exchanges.dlx]
broker = "rabbit"
type = "fanout"

[queues.dead-letters]
broker = "rabbit"
bind = [{{ exchange = "dlx" }}]

[queues.{CONSUMER}]
broker = "rabbit"
bind = [{{ exchange = "events", key = "user.created" }}]
dead_letter = {{ exchange = "dlx" }}

[events."user.created"]
schema = "user.created.json"
publish = {{ exchange = "events" }}

[producers.user-service]
http = "POST /users"
event = "user.created"
id_field = "userId"

[consumers.{CONSUMER}]
queue = "{CONSUMER}"
handler = "{handler}"
retry = {{ max_attempts = 3, backoff = "100ms" }}
config = {{ mode = "ok" }}
"#,
        handlers = quote(&handlers),
        schemas = quote(&switchyard_tests::repo_root().join("schemas")),
    );
    let path = dir.join("hot-reload.toml");
    std::fs::write(&path, text)?;
    Ok(path)
}

/// Starts switchyard with `initial` as the handler, or with no handler file
/// when `None`, and waits for `/readyz` only when there is a handler.
async fn start(initial: Option<Version>) -> anyhow::Result<Run> {
    start_with(initial, HANDLER_FILE).await
}

/// Starts switchyard as [`start`] does, with the handler file at `handler`
/// in the handlers folder.
async fn start_with(initial: Option<Version>, handler: &'static str) -> anyhow::Result<Run> {
    let dir = tempfile::tempdir()?;
    let manifest = write_manifest(dir.path(), handler)?;
    let path = dir.path().join("handlers").join(handler);
    if let Some(folder) = path.parent() {
        std::fs::create_dir_all(folder)?;
    }
    if let Some(version) = initial {
        std::fs::write(&path, version.bytes()?)?;
    }
    let mode = BrokerMode::Embedded;
    let process = match initial {
        Some(_) => Switchyard::start(dir.path(), std::slice::from_ref(&manifest), mode).await?,
        None => Switchyard::spawn(dir.path(), std::slice::from_ref(&manifest), mode).await?,
    };
    Ok(Run {
        dir,
        manifest,
        handler,
        process,
    })
}

/// Returns the `/readyz` status and body.
async fn readiness(run: &Run) -> anyhow::Result<(StatusCode, Value)> {
    let response = run.process.get("/readyz").await?;
    let status = response.status();
    Ok((status, response.json().await?))
}

#[tokio::test]
async fn missing_handler_waits_then_starts() -> anyhow::Result<()> {
    let _serial = serial().await;
    let mut run = start(None).await?;

    // The topology is provisioned without the handler, so producers work
    // and `/readyz` names the consumer that waits.
    let waiting = poll(TIMEOUT, || async {
        let (status, body) = readiness(&run).await.ok()?;
        let detail = body["checks"][format!("consumer:{CONSUMER}")]["detail"].as_str()?;
        let topology_ready = body["checks"]["topology:rabbit"]["ok"] == true;
        (topology_ready && detail.contains(HANDLER_FILE)).then_some((status, body))
    })
    .await;
    let (status, body) = waiting.ok_or_else(|| {
        anyhow::anyhow!(
            "/readyz never named the missing handler; stderr:\n{}",
            run.process.stderr_tail(40)
        )
    })?;
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "/readyz status: {body}"
    );
    assert_eq!(
        body["checks"][format!("consumer:{CONSUMER}")]["ok"],
        false,
        "{body}"
    );
    let missing = run.wait_for_lines("handler file not found", 1).await?;
    assert_eq!(missing.len(), 1, "warnings about the missing file");
    assert_eq!(missing[0].level, "WARN");
    assert_eq!(missing[0].field("handler"), Some(HANDLER_FILE));

    let mut event_ids = Vec::new();
    for _ in 0..3 {
        event_ids.push(run.post_user().await?);
    }
    tokio::time::sleep(SETTLE).await;
    let metrics = run.process.metrics().await?;
    assert_eq!(
        metrics.count(HANDLED, &[("consumer", CONSUMER)]),
        0,
        "events handled before the handler file exists"
    );

    std::fs::copy(component("handlers/analytics.wasm")?, run.handler_path())?;
    run.process.wait_ready().await?;
    let labels = [("consumer", CONSUMER), ("outcome", "ok")];
    run.process
        .wait_for_count(HANDLED, &labels, 3, TIMEOUT)
        .await?;
    for event_id in &event_ids {
        let version = run.handled_by(event_id).await?;
        assert_eq!(
            version,
            Version::Analytics,
            "handler of queued event {event_id}"
        );
    }

    // The first load is not a reload.
    let metrics = run.process.metrics().await?;
    assert_eq!(
        metrics.count(RELOADS, &[]),
        0,
        "{}",
        metrics.describe(RELOADS)
    );
    run.expect_info(Version::Analytics, None).await?;
    run.process.stop_cleanly().await?;
    Ok(())
}

#[tokio::test]
async fn each_save_style_reloads_once() -> anyhow::Result<()> {
    let _serial = serial().await;
    let run = start(Some(Version::Analytics)).await?;
    run.expect_served_by(Version::Analytics, "at start").await?;
    run.expect_info(Version::Analytics, None).await?;

    // `cp` onto the file: truncate and write in place.
    std::fs::copy(component("tests/guests/chaos.wasm")?, run.handler_path())?;
    run.expect_reloads("ok", 1, "after cp").await?;
    run.expect_served_by(Version::Chaos, "after cp").await?;
    run.expect_info(Version::Chaos, Some(Version::Analytics))
        .await?;

    // Rename save: write a temporary file in the same folder, then rename
    // it over the handler, as editors and `mv` do.
    let temporary = run.handlers().join(".signups.wasm.tmp");
    std::fs::write(&temporary, Version::Analytics.bytes()?)?;
    std::fs::rename(&temporary, run.handler_path())?;
    run.expect_reloads("ok", 2, "after rename").await?;
    run.expect_served_by(Version::Analytics, "after rename")
        .await?;
    run.expect_info(Version::Analytics, Some(Version::Chaos))
        .await?;

    // Delete, then create the file again right away.
    std::fs::remove_file(run.handler_path())?;
    std::fs::write(run.handler_path(), Version::Chaos.bytes()?)?;
    run.expect_reloads("ok", 3, "after delete and create")
        .await?;
    run.expect_served_by(Version::Chaos, "after delete and create")
        .await?;
    run.expect_info(Version::Chaos, Some(Version::Analytics))
        .await?;

    // Writing the same bytes again is no new version.
    std::fs::write(run.handler_path(), Version::Chaos.bytes()?)?;
    run.expect_reloads("ok", 3, "after rewriting the same bytes")
        .await?;

    let metrics = run.process.metrics().await?;
    let rejected = [("handler", HANDLER_FILE), ("result", "rejected")];
    assert_eq!(
        metrics.count(RELOADS, &rejected),
        0,
        "{}",
        metrics.describe(RELOADS)
    );
    let reloaded = run.lines_starting("handler reloaded");
    assert_eq!(reloaded.len(), 3, "`handler reloaded` log lines");
    run.process.stop_cleanly().await?;
    Ok(())
}

/// A handler in a subfolder of the handlers folder is watched as well.
#[tokio::test]
async fn handler_in_subfolder_reloads() -> anyhow::Result<()> {
    let _serial = serial().await;
    let run = start_with(Some(Version::Analytics), "current/signups.wasm").await?;
    run.expect_served_by(Version::Analytics, "at start").await?;

    std::fs::copy(component("tests/guests/chaos.wasm")?, run.handler_path())?;
    run.expect_reloads("ok", 1, "after cp into the subfolder")
        .await?;
    run.expect_served_by(Version::Chaos, "after cp into the subfolder")
        .await?;
    run.process.stop_cleanly().await?;
    Ok(())
}

/// A file that must be rejected and a phrase of the reason logged for it.
struct InvalidFile {
    case: &'static str,
    bytes: Vec<u8>,
    reason: &'static str,
}

fn invalid_files() -> anyhow::Result<Vec<InvalidFile>> {
    let chaos = Version::Chaos.bytes()?;
    Ok(vec![
        InvalidFile {
            case: "half-written component",
            bytes: chaos[..chaos.len() / 2].to_vec(),
            // Its header is a component's, so the error comes from the parser.
            reason: "",
        },
        InvalidFile {
            case: "empty file",
            bytes: Vec::new(),
            reason: "file is empty",
        },
        InvalidFile {
            case: "not WebAssembly",
            bytes: b"#!/bin/sh\necho not a component\n".to_vec(),
            reason: "not WebAssembly",
        },
        InvalidFile {
            case: "core module",
            // The header of a core module (layer 0, version 1), which is a
            // whole valid empty module.
            bytes: b"\0asm\x01\0\0\0".to_vec(),
            reason: "core WebAssembly module",
        },
        InvalidFile {
            case: "component of another world",
            // The header of a component (version 0x0d, layer 1), which is a
            // whole valid component that exports nothing.
            bytes: b"\0asm\x0d\0\x01\0".to_vec(),
            reason: "does not match the handler world",
        },
    ])
}

#[tokio::test]
async fn invalid_files_rejected_old_keeps_serving() -> anyhow::Result<()> {
    let _serial = serial().await;
    let run = start(Some(Version::Analytics)).await?;
    let cases = invalid_files()?;

    for (index, file) in cases.iter().enumerate() {
        let case = file.case;
        std::fs::write(run.handler_path(), &file.bytes)?;
        run.expect_reloads("rejected", index as u64 + 1, case)
            .await?;

        let warnings = run.lines_starting("handler rejected");
        assert_eq!(warnings.len(), index + 1, "rejection warnings after {case}");
        let warning = &warnings[index];
        assert_eq!(warning.level, "WARN", "{case}");
        assert_eq!(warning.field("handler"), Some(HANDLER_FILE), "{case}");
        let reason = warning.field("reason").unwrap_or_default();
        assert!(!reason.is_empty(), "{case}: warning without a reason");
        assert!(reason.contains(file.reason), "{case}: reason {reason:?}");

        run.expect_served_by(Version::Analytics, &format!("after the {case}"))
            .await?;
    }
    run.expect_info(Version::Analytics, None).await?;

    // A valid version after the rejected ones is picked up.
    std::fs::write(run.handler_path(), Version::Chaos.bytes()?)?;
    run.expect_reloads("ok", 1, "after the valid write").await?;
    run.expect_served_by(Version::Chaos, "after the valid write")
        .await?;
    run.expect_info(Version::Chaos, Some(Version::Analytics))
        .await?;

    let metrics = run.process.metrics().await?;
    let rejected = [("handler", HANDLER_FILE), ("result", "rejected")];
    assert_eq!(
        metrics.count(RELOADS, &rejected),
        cases.len() as u64,
        "{}",
        metrics.describe(RELOADS)
    );
    run.process.stop_cleanly().await?;
    Ok(())
}

#[tokio::test]
async fn deleted_handler_keeps_serving() -> anyhow::Result<()> {
    let _serial = serial().await;
    let run = start(Some(Version::Analytics)).await?;

    std::fs::remove_file(run.handler_path())?;
    let warnings = run.wait_for_lines("handler file deleted", 1).await?;
    assert_eq!(warnings[0].level, "WARN");
    assert_eq!(warnings[0].field("handler"), Some(HANDLER_FILE));

    run.expect_served_by(Version::Analytics, "after the delete")
        .await?;
    run.expect_info(Version::Analytics, None).await?;
    let metrics = run.process.metrics().await?;
    assert_eq!(
        metrics.count(RELOADS, &[]),
        0,
        "{}",
        metrics.describe(RELOADS)
    );
    let (status, body) = readiness(&run).await?;
    assert_eq!(status, StatusCode::OK, "/readyz after the delete: {body}");
    run.process.stop_cleanly().await?;
    Ok(())
}

#[tokio::test]
async fn guest_output_logged_by_line() -> anyhow::Result<()> {
    let _serial = serial().await;
    let dir = tempfile::tempdir()?;
    let manifest = write_manifest(dir.path(), HANDLER_FILE)?;
    std::fs::copy(
        component("tests/guests/printer.wasm")?,
        dir.path().join("handlers").join(HANDLER_FILE),
    )?;
    let process = Switchyard::start(
        dir.path(),
        std::slice::from_ref(&manifest),
        BrokerMode::Embedded,
    )
    .await?;
    let run = Run {
        dir,
        manifest,
        handler: HANDLER_FILE,
        process,
    };

    let event_id = run.post_user().await?;
    let labels = [("consumer", CONSUMER), ("outcome", "ok")];
    run.process
        .wait_for_count(HANDLED, &labels, 1, TIMEOUT)
        .await?;
    // The discard warning is the last line of the call.
    run.wait_for_lines("handler output over the per-call log limit", 1)
        .await?;
    let metrics = run.process.metrics().await?;
    assert_eq!(
        metrics.count(HANDLED, &[("consumer", CONSUMER), ("outcome", "retry")]),
        0,
        "retried calls: the printer trapped?\n{}",
        run.process.stderr_tail(20)
    );

    let output: Vec<LogLine> = run
        .log_lines()
        .into_iter()
        .filter(|line| line.field("stream").is_some())
        .collect();
    for line in &output {
        assert_eq!(line.field("consumer"), Some(CONSUMER), "{line:?}");
        assert_eq!(line.field("event_id"), Some(event_id.as_str()), "{line:?}");
    }
    let texts: Vec<(&str, &str, &str)> = output
        .iter()
        .filter(|line| line.message().starts_with("printer: "))
        .map(|line| {
            let stream = line.field("stream").unwrap_or_default();
            (line.level.as_str(), stream, line.message())
        })
        .collect();
    assert_eq!(
        texts,
        [
            ("INFO", "stdout", "printer: first line"),
            ("INFO", "stdout", "printer: second line"),
            ("WARN", "stderr", "printer: to stderr"),
        ]
    );

    // The 1 MiB without a newline is logged in pieces up to a limit and
    // the rest is counted, so no byte goes missing without a trace.
    let pieces: Vec<&LogLine> = output
        .iter()
        .filter(|line| line.message().starts_with('y'))
        .collect();
    assert!(!pieces.is_empty(), "no piece of the long line was logged");
    for piece in &pieces {
        assert!(
            piece.message().len() <= 4096,
            "piece of {} bytes",
            piece.message().len()
        );
        assert!(
            piece.message().bytes().all(|byte| byte == b'y'),
            "piece with other bytes"
        );
    }
    let logged: usize = pieces.iter().map(|piece| piece.message().len()).sum();
    let discarded = run.lines_starting("handler output over the per-call log limit");
    assert_eq!(discarded.len(), 1, "discard warnings");
    assert_eq!(discarded[0].field("stream"), Some("stdout"));
    let discarded_bytes = discarded[0].fields["discarded_bytes"].as_u64().unwrap_or(0) as usize;
    assert_eq!(
        logged + discarded_bytes,
        1 << 20,
        "logged plus discarded bytes of the long line"
    );
    run.process.stop_cleanly().await?;
    Ok(())
}

#[tokio::test]
async fn manifest_change_warns_restart_needed() -> anyhow::Result<()> {
    let _serial = serial().await;
    let run = start(Some(Version::Analytics)).await?;
    let original = std::fs::read(&run.manifest)?;
    const CHANGED: &str = "manifest file changed";

    // Saving the same content is no change.
    std::fs::write(&run.manifest, &original)?;
    tokio::time::sleep(SETTLE).await;
    assert_eq!(
        run.lines_starting(CHANGED).len(),
        0,
        "warnings after saving the same content"
    );

    let mut edited = original.clone();
    edited.extend_from_slice(b"\n# an edit while running\n");
    std::fs::write(&run.manifest, &edited)?;
    let warnings = run.wait_for_lines(CHANGED, 1).await?;
    assert_eq!(warnings[0].level, "WARN");
    assert!(
        warnings[0].message().contains("restart"),
        "{:?}",
        warnings[0].message()
    );
    let manifest = run.manifest.to_string_lossy();
    assert_eq!(warnings[0].field("manifest"), Some(manifest.as_ref()));
    tokio::time::sleep(SETTLE).await;
    assert_eq!(
        run.lines_starting(CHANGED).len(),
        1,
        "warnings after one edit"
    );

    // Undoing the edit brings the file back to the running version.
    std::fs::write(&run.manifest, &original)?;
    run.wait_for_lines("manifest file matches the running version", 1)
        .await?;
    assert_eq!(
        run.lines_starting(CHANGED).len(),
        1,
        "warnings after undoing the edit"
    );

    // The running system is unchanged and still serves.
    run.expect_served_by(Version::Analytics, "after the manifest edits")
        .await?;
    run.process.stop_cleanly().await?;
    Ok(())
}

/// Posts 200 events 5 ms apart while the handler is replaced by a rename:
/// every event is handled exactly once, by one whole version or the other,
/// and nothing is retried or dead-lettered.
#[tokio::test]
async fn burst_across_reload_loses_nothing() -> anyhow::Result<()> {
    let _serial = serial().await;
    const EVENTS: usize = 200;
    const RELOAD_AFTER: usize = 60;
    let run = start(Some(Version::Analytics)).await?;

    let staged = run.dir.path().join("staged.wasm");
    std::fs::write(&staged, Version::Chaos.bytes()?)?;
    let mut event_ids = Vec::new();
    for index in 0..EVENTS {
        if index == RELOAD_AFTER {
            std::fs::rename(&staged, run.handler_path())?;
        }
        event_ids.push(run.post_user().await?);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let ok = [("consumer", CONSUMER), ("outcome", "ok")];
    run.process
        .wait_for_count(HANDLED, &ok, EVENTS as u64, TIMEOUT)
        .await?;
    run.expect_reloads("ok", 1, "after the burst").await?;
    let metrics = run.process.metrics().await?;
    assert_eq!(
        metrics.count(HANDLED, &[("consumer", CONSUMER)]),
        EVENTS as u64,
        "outcomes, all of them ok:\n{}",
        metrics.describe(HANDLED)
    );

    // One call line per event, each from a whole version.
    let lines = run.log_lines();
    let mut by_version = [0usize; 2];
    for event_id in &event_ids {
        let calls: Vec<Version> = lines
            .iter()
            .filter(|line| line.field("event_id") == Some(event_id.as_str()))
            .filter_map(|line| Version::from_message(line.message()))
            .collect();
        assert_eq!(calls.len(), 1, "calls for event {event_id}: {calls:?}");
        by_version[usize::from(calls[0] == Version::Chaos)] += 1;
    }
    let [old, new] = by_version;
    assert!(old >= 1, "no event was handled by the old version");
    assert!(new >= 1, "no event was handled by the new version");
    eprintln!("burst across a reload: {old} events by the old version, {new} by the new");
    run.process.stop_cleanly().await?;
    Ok(())
}
