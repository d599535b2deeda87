//! Kafka end to end: the reference system with its Kafka part
//! (`shop.toml` + `streaming.toml`) on RabbitMQ and a tansu broker, and a
//! topic consumer fed records directly, through poison records and a
//! SIGKILL. Each test starts its own tansu process with in-memory storage.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use nix::sys::signal::Signal;
use serde_json::{Value, json};
use switchyard_tests::shop::{CONSUMER_LAG, HANDLED};
use switchyard_tests::{
    BrokerMode, KafkaRecord, LogLine, OutgoingRecord, Switchyard, Tansu, poll, rabbitmq, repo_root,
    run_plan, serial, shop_manifest, streaming_manifest,
};

/// Maximum wait for handlers and commits to catch up.
const TIMEOUT: Duration = Duration::from_secs(60);

/// Returns the event ids that the analytics handler logged for `consumer`,
/// in log order, taken from lines such as `user signed up: <id>`.
fn analytics_ids(lines: &[LogLine], consumer: &str) -> Vec<String> {
    lines
        .iter()
        .filter(|line| line.field("consumer") == Some(consumer))
        .filter_map(|line| {
            let message = line.message();
            if let Some(id) = message.strip_prefix("user signed up: ") {
                return Some(id.to_owned());
            }
            let rest = message.strip_prefix("sale recorded: order ")?;
            rest.split(' ').next().map(str::to_owned)
        })
        .collect()
}

fn ok(consumer: &str) -> [(&str, &str); 2] {
    [("consumer", consumer), ("outcome", "ok")]
}

/// Starts tansu, then switchyard with shop.toml and streaming.toml on
/// RabbitMQ and that tansu.
async fn start_shop_and_streaming(dir: &Path) -> anyhow::Result<(Tansu, Switchyard)> {
    let tansu = Tansu::start(dir).await?;
    let manifests = [shop_manifest(), streaming_manifest()];
    rabbitmq()
        .reset(&[manifests[0].as_path(), manifests[1].as_path()])
        .await?;
    let bootstrap = tansu.bootstrap();
    let process = Switchyard::start_with_env(
        dir,
        &manifests,
        BrokerMode::RabbitMq,
        &[("KAFKA_BOOTSTRAP", &bootstrap)],
    )
    .await?;
    Ok((tansu, process))
}

#[tokio::test]
async fn streaming_end_to_end() -> anyhow::Result<()> {
    let _serial = serial().await;
    let dir = tempfile::tempdir()?;
    let (tansu, process) = start_shop_and_streaming(dir.path()).await?;

    let readiness: Value = process.get("/readyz").await?.json().await?;
    for check in [
        "broker:stream",
        "topology:stream",
        "topology:rabbit",
        "consumer:analytics-stream",
    ] {
        assert_eq!(
            readiness["checks"][check]["ok"], true,
            "{check} in {readiness}"
        );
    }

    let mut orders = BTreeMap::new();
    for n in 0..10 {
        let customer = format!("c-{}", n % 4);
        let body = json!({
            "customerId": customer,
            "items": [{ "productId": "p-1", "quantity": 1 }],
            "total": 10.0 + f64::from(n),
        });
        orders.insert(process.publish("/orders", &body).await?, customer);
    }
    let mut users = BTreeSet::new();
    for n in 0..10 {
        let body = json!({ "email": format!("u{n}@example.com"), "name": "U" });
        users.insert(process.publish("/users", &body).await?);
    }

    process
        .wait_for_count(HANDLED, &ok("analytics-stream"), 20, TIMEOUT)
        .await?;
    // The RabbitMQ side is unchanged by the Kafka part.
    process
        .wait_for_count(HANDLED, &ok("analytics-service"), 10, TIMEOUT)
        .await?;

    let lines = LogLine::parse_all(&process.stderr());
    let mut handled = analytics_ids(&lines, "analytics-stream");
    handled.sort();
    let mut expected: Vec<String> = orders.keys().chain(users.iter()).cloned().collect();
    expected.sort();
    assert_eq!(handled, expected, "events handled by analytics-stream");

    let records = tansu.read_all("analytics", 20, TIMEOUT).await?;
    assert_eq!(records.len(), 20, "records on topic analytics");
    let mut partitions_of_customer: BTreeMap<String, BTreeSet<i32>> = BTreeMap::new();
    for record in &records {
        assert_eq!(record.header("ce_specversion"), Some("1.0"), "{record:?}");
        assert_eq!(
            record.header("content-type"),
            Some("application/json"),
            "{record:?}"
        );
        let id = record.header("ce_id").context("record without ce_id")?;
        match record.header("ce_type") {
            Some("order.placed") => {
                let customer = &orders[id];
                assert_eq!(record.key.as_deref(), Some(customer.as_str()), "{record:?}");
                partitions_of_customer
                    .entry(customer.clone())
                    .or_default()
                    .insert(record.partition);
            }
            Some("user.created") => {
                assert!(users.contains(id), "unknown user id in {record:?}");
                assert_eq!(record.key.as_deref(), Some(id), "{record:?}");
            }
            other => panic!("unexpected ce_type {other:?} in {record:?}"),
        }
        let data: Value = serde_json::from_str(&record.payload)?;
        assert!(data.is_object(), "payload is the event data: {record:?}");
    }
    for (customer, partitions) in &partitions_of_customer {
        assert_eq!(partitions.len(), 1, "partitions of customer {customer}");
    }

    let committed = wait_for_commits(&tansu, "analytics", "analytics", &records).await?;
    let committed_total: i64 = committed.iter().map(|(_, offset)| offset).sum();
    assert_eq!(committed_total, 20, "committed offsets {committed:?}");

    // With every offset committed, librdkafka's next statistics put the lag
    // of each of the three partitions at 0.
    let labels = [("group", "analytics"), ("topic", "analytics")];
    process
        .wait_for_metrics(
            "the lag of all three partitions at 0",
            CONSUMER_LAG,
            TIMEOUT,
            |metrics| {
                metrics.series_count(CONSUMER_LAG, &labels) == 3
                    && metrics.value(CONSUMER_LAG, &labels) == 0.0
            },
        )
        .await?;
    process.stop_cleanly().await?;
    Ok(())
}

/// With the Kafka broker gone, an order still reaches RabbitMQ, its first
/// target, so the 503 names where the event went instead of saying that
/// nothing was published.
#[tokio::test]
async fn partial_publish_named_in_503() -> anyhow::Result<()> {
    let _serial = serial().await;
    let dir = tempfile::tempdir()?;
    let (tansu, process) = start_shop_and_streaming(dir.path()).await?;
    drop(tansu);

    let body = json!({
        "customerId": "c-1",
        "items": [{ "productId": "p-1", "quantity": 1 }],
        "total": 10.0,
    });
    let response = process.post_json("/orders", &body).await?;
    let status = response.status();
    let problem: Value = response.json().await?;
    assert_eq!(status, 503, "{problem}");
    let detail = problem["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("the event was already published to exchange `events` on broker `rabbit`"),
        "{detail}"
    );
    assert!(
        detail.contains("a retry publishes it there again"),
        "{detail}"
    );
    assert!(!detail.contains("nothing was published"), "{detail}");
    // The broker is gone, so the process is killed rather than stopped.
    Ok(())
}

/// Waits until the group's committed offset of every partition is past the
/// last record read from it, and returns the committed offsets.
async fn wait_for_commits(
    tansu: &Tansu,
    group: &str,
    topic: &str,
    records: &[KafkaRecord],
) -> anyhow::Result<Vec<(i32, i64)>> {
    let mut ends: BTreeMap<i32, i64> = BTreeMap::new();
    for record in records {
        let end = ends.entry(record.partition).or_default();
        *end = (*end).max(record.offset + 1);
    }
    let started = std::time::Instant::now();
    loop {
        let committed = tansu.committed(group, topic).await?;
        let done = ends.iter().all(|(partition, end)| {
            committed
                .iter()
                .any(|(p, offset)| p == partition && offset >= end)
        });
        if done {
            return Ok(committed);
        }
        anyhow::ensure!(
            started.elapsed() < TIMEOUT,
            "offsets of group `{group}` not committed after {TIMEOUT:?}: committed {committed:?}, \
             ends {ends:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Writes a manifest with one single-partition topic `signups` of
/// `user.created`, read by the analytics handler, using the repository's
/// schemas and handlers.
fn signups_manifest(dir: &Path) -> anyhow::Result<PathBuf> {
    let root = repo_root();
    let text = format!(
        r#"
[runtime]
name = "signups"
schemas = "{schemas}"
handlers = "{handlers}"

[brokers.stream]
kind = "kafka"
bootstrap = "${{KAFKA_BOOTSTRAP}}"

[events."user.created"]
schema = "user.created.json"

[topics.signups]
broker = "stream"
partitions = 1
events = [{{ event = "user.created", key = "data.userId" }}]

[producers.signup]
http = "POST /signups"
event = "user.created"
id_field = "userId"

[consumers.signups]
topic = "signups"
handler = "analytics.wasm"
retry = {{ max_attempts = 2, backoff = "100ms" }}
"#,
        schemas = root.join("schemas").display(),
        handlers = root.join("handlers").display(),
    );
    let path = dir.join("signups.toml");
    std::fs::write(&path, text)?;
    Ok(path)
}

/// Starts switchyard on the signups manifest against `tansu`.
async fn start_signups(dir: &Path, tansu: &Tansu, manifest: &Path) -> anyhow::Result<Switchyard> {
    let bootstrap = tansu.bootstrap();
    let env = [("KAFKA_BOOTSTRAP", bootstrap.as_str())];
    let manifests = [manifest.to_path_buf()];
    Switchyard::start_with_env(dir, &manifests, BrokerMode::RabbitMq, &env).await
}

fn user(id: &str) -> Value {
    json!({ "userId": id, "email": format!("{id}@example.com"), "name": "N" })
}

#[tokio::test]
async fn poison_record_dead_lettered_in_order() -> anyhow::Result<()> {
    let _serial = serial().await;
    let dir = tempfile::tempdir()?;
    let tansu = Tansu::start(dir.path()).await?;
    let manifest = signups_manifest(dir.path())?;
    let process = start_signups(dir.path(), &tansu, &manifest).await?;

    let mut poison = OutgoingRecord::binary_event("e-2", "user.created", &json!({}));
    poison.payload = b"{not json".to_vec();
    let invalid = OutgoingRecord::binary_event("e-3", "user.created", &json!({ "userId": "u-x" }));
    let structured = OutgoingRecord {
        headers: vec![("content-type".into(), "application/cloudevents+json".into())],
        payload: json!({
            "specversion": "1.0", "id": "e-4", "source": "/elsewhere",
            "type": "user.created", "data": user("u-2"),
        })
        .to_string()
        .into_bytes(),
    };
    let records = [
        OutgoingRecord::binary_event("e-1", "user.created", &user("u-1")),
        poison,
        invalid,
        structured,
        OutgoingRecord::binary_event("e-5", "user.created", &user("u-3")),
    ];
    tansu.produce("signups", 0, &records).await?;

    process
        .wait_for_count(HANDLED, &ok("signups"), 3, TIMEOUT)
        .await?;
    let lines = LogLine::parse_all(&process.stderr());
    assert_eq!(
        analytics_ids(&lines, "signups"),
        ["u-1", "u-2", "u-3"],
        "handled in partition order"
    );

    let dead = tansu.read_all("signups.dead-letters", 2, TIMEOUT).await?;
    assert_eq!(dead.len(), 2, "dead letters: {dead:?}");
    let by_offset: BTreeMap<&str, &KafkaRecord> = dead
        .iter()
        .map(|r| (r.header("x-switchyard-offset").unwrap_or("?"), r))
        .collect();
    let undecodable = by_offset.get("1").context("no dead letter of offset 1")?;
    let reason = undecodable
        .header("x-switchyard-reason")
        .unwrap_or_default();
    assert!(reason.contains("not valid JSON"), "reason: {reason}");
    assert_eq!(undecodable.payload, "{not json", "payload kept as it was");
    assert_eq!(undecodable.header("ce_id"), Some("e-2"));
    let schema = by_offset.get("2").context("no dead letter of offset 2")?;
    let reason = schema.header("x-switchyard-reason").unwrap_or_default();
    assert!(reason.contains("email"), "reason names the field: {reason}");
    for record in &dead {
        assert_eq!(record.header("x-switchyard-consumer"), Some("signups"));
        assert_eq!(record.header("x-switchyard-topic"), Some("signups"));
    }

    let all = tansu.read_all("signups", 5, TIMEOUT).await?;
    let committed = wait_for_commits(&tansu, "signups", "signups", &all).await?;
    assert_eq!(committed, [(0, 5)], "committed offsets");
    process.stop_cleanly().await?;
    Ok(())
}

#[tokio::test]
async fn sigkill_mid_stream_skips_nothing() -> anyhow::Result<()> {
    const TOTAL: usize = 800;
    let _serial = serial().await;
    let dir = tempfile::tempdir()?;
    let tansu = Tansu::start(dir.path()).await?;
    let manifest = signups_manifest(dir.path())?;

    // The first run creates the topic; the records go in while it runs.
    let first = start_signups(dir.path(), &tansu, &manifest).await?;
    let ids: Vec<String> = (0..TOTAL).map(|n| format!("u-{n:04}")).collect();
    let records: Vec<OutgoingRecord> = ids
        .iter()
        .map(|id| OutgoingRecord::binary_event(&format!("e-{id}"), "user.created", &user(id)))
        .collect();
    tansu.produce("signups", 0, &records).await?;
    first
        .wait_for_count(HANDLED, &ok("signups"), 100, TIMEOUT)
        .await?;
    let stopped = first.stop_with(Signal::SIGKILL).await?;
    let before = analytics_ids(&stopped.log_lines(), "signups");
    assert!(
        before.len() < TOTAL,
        "all {TOTAL} records were handled before the kill; the test needs more records"
    );

    let second = start_signups(dir.path(), &tansu, &manifest).await?;
    let unseen = |after: &[String]| -> Vec<String> {
        let seen: BTreeSet<&String> = before.iter().chain(after.iter()).collect();
        ids.iter()
            .filter(|id| !seen.contains(id))
            .cloned()
            .collect()
    };
    // Records handled after the last commit of the first run are handled
    // again, so the counter overstates progress. The log lists the ids seen.
    let complete = poll(TIMEOUT * 2, || async {
        let after = analytics_ids(&LogLine::parse_all(&second.stderr()), "signups");
        unseen(&after).is_empty().then_some(after)
    })
    .await;
    let Some(after) = complete else {
        let after = analytics_ids(&LogLine::parse_all(&second.stderr()), "signups");
        let missing = unseen(&after);
        panic!(
            "{} records never handled, the first: {:?}; stderr:\n{}",
            missing.len(),
            &missing[..missing.len().min(10)],
            second.stderr_tail(30)
        );
    };

    // Within each run the partition is handled in order.
    for run in [&before, &after] {
        let mut sorted = run.clone();
        sorted.sort();
        assert_eq!(*run, sorted, "handling order within one run");
    }
    second.stop_cleanly().await?;
    Ok(())
}

/// Runs the Python peer (confluent-kafka) and returns its stdout.
async fn python_peer(arguments: &[&str]) -> anyhow::Result<String> {
    let script = repo_root().join("tests/interop/kafka_peer.py");
    let output = tokio::process::Command::new("python3")
        .arg(&script)
        .args(arguments)
        .output()
        .await
        .context("cannot run python3")?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    anyhow::ensure!(
        !stderr.contains("No module named 'confluent_kafka'"),
        "the Python package confluent-kafka is missing; install it with \
         `python3 -m pip install confluent-kafka` (bash .ci/run does)"
    );
    anyhow::ensure!(
        output.status.success(),
        "kafka_peer.py {arguments:?} failed with {}: {stderr}",
        output.status
    );
    Ok(String::from_utf8(output.stdout)?)
}

#[tokio::test]
async fn python_client_interoperates() -> anyhow::Result<()> {
    let _serial = serial().await;
    let dir = tempfile::tempdir()?;
    let tansu = Tansu::start(dir.path()).await?;
    let manifest = signups_manifest(dir.path())?;
    let process = start_signups(dir.path(), &tansu, &manifest).await?;

    // What the other client produces, switchyard handles.
    let bootstrap = tansu.bootstrap();
    python_peer(&["produce", &bootstrap, "signups", "u-py"]).await?;
    process
        .wait_for_count(HANDLED, &ok("signups"), 2, TIMEOUT)
        .await?;
    let lines = LogLine::parse_all(&process.stderr());
    assert_eq!(
        analytics_ids(&lines, "signups"),
        ["u-py", "u-py-structured"],
        "records of the Python peer"
    );

    // What switchyard produces, the other client reads with ce_ headers.
    let id = process
        .publish(
            "/signups",
            &json!({ "email": "http@example.com", "name": "H" }),
        )
        .await?;
    let output = python_peer(&["consume", &bootstrap, "signups", "3"]).await?;
    let records: Vec<Value> = output
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let ours = records
        .iter()
        .find(|r| r["headers"]["ce_id"] == id.as_str())
        .with_context(|| format!("record {id} not read by the Python peer: {output}"))?;
    assert_eq!(ours["headers"]["ce_type"], "user.created", "{ours}");
    assert_eq!(ours["headers"]["ce_specversion"], "1.0", "{ours}");
    assert_eq!(ours["headers"]["ce_source"], "/signups/signup", "{ours}");
    assert_eq!(
        ours["headers"]["content-type"], "application/json",
        "{ours}"
    );
    assert_eq!(ours["key"], id.as_str(), "key is data.userId: {ours}");
    let data: Value = serde_json::from_str(ours["value"].as_str().unwrap_or_default())?;
    assert_eq!(data["userId"], id.as_str(), "{ours}");
    assert_eq!(data["email"], "http@example.com", "{ours}");
    process.stop_cleanly().await?;
    Ok(())
}

/// Runs `switchyard plan` on the reference system against `tansu` and the
/// local RabbitMQ, and returns its exit code and output.
async fn plan(tansu: &Tansu) -> anyhow::Result<(i32, String)> {
    let bootstrap = tansu.bootstrap();
    let url = rabbitmq().url();
    let env = [
        ("KAFKA_BOOTSTRAP", bootstrap.as_str()),
        ("RABBITMQ_URL", url.as_str()),
    ];
    let output = run_plan(&[shop_manifest(), streaming_manifest()], &env).await?;
    Ok((output.code, format!("{}{}", output.stdout, output.stderr)))
}

#[tokio::test]
async fn plan_reports_topic_drift() -> anyhow::Result<()> {
    let _serial = serial().await;
    let dir = tempfile::tempdir()?;
    let tansu = Tansu::start(dir.path()).await?;

    let (code, output) = plan(&tansu).await?;
    assert_eq!(code, 0, "{output}");
    assert!(
        output.contains("create     topic    analytics\n"),
        "{output}"
    );
    assert!(
        output.contains("create     topic    analytics.dead-letters\n"),
        "{output}"
    );

    // Fewer partitions and no retention setting: both can change in place.
    tansu.create_topic("analytics", 1).await?;
    let (code, output) = plan(&tansu).await?;
    assert_eq!(code, 0, "{output}");
    assert!(
        output.contains("update     topic    analytics\n"),
        "{output}"
    );
    assert!(output.contains("partitions: 1 -> 3"), "{output}");
    assert!(output.contains("-> 604800000"), "{output}");

    // A topic with more partitions than the manifest is a conflict.
    tansu.create_topic("analytics.dead-letters", 5).await?;
    let (code, output) = plan(&tansu).await?;
    assert_eq!(code, 1, "{output}");
    assert!(
        output.contains("conflict   topic    analytics.dead-letters\n"),
        "{output}"
    );
    assert!(output.contains("has 5 partitions"), "{output}");
    Ok(())
}
