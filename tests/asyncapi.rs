//! `switchyard asyncapi` on the example manifests, validated with the
//! official AsyncAPI parser (npm `@asyncapi/parser`) through
//! `tests/asyncapi/validate.mjs`, and checked for the channels, operations
//! and payloads the topology implies.
//!
//! The parser is read from `~/.cache/switchyard/npm/node_modules`, where
//! `.ci/run` installs it, or from the folder in `SWITCHYARD_NODE_MODULES`.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;
use switchyard_tests::{repo_root, switchyard_binary};

/// Environment variable with the `node_modules` folder that contains the parser.
const NODE_MODULES_VARIABLE: &str = "SWITCHYARD_NODE_MODULES";

/// The command that installs the parser where this test looks by default.
const PARSER_INSTALL: &str = "npm install --prefix ~/.cache/switchyard/npm @asyncapi/parser@3.6.6";

fn node_modules() -> PathBuf {
    if let Some(path) = std::env::var_os(NODE_MODULES_VARIABLE) {
        return PathBuf::from(path);
    }
    let home = std::env::var_os("HOME").unwrap_or_default();
    PathBuf::from(home).join(".cache/switchyard/npm/node_modules")
}

/// Writes the document of `manifests` (relative to the repository root)
/// into a temporary folder and returns its path and the YAML text.
fn generate(dir: &tempfile::TempDir, manifests: &[&str]) -> (PathBuf, String) {
    let path = dir.path().join("asyncapi.yaml");
    let output = Command::new(switchyard_binary())
        .arg("asyncapi")
        .args(manifests)
        .arg("--output")
        .arg(&path)
        .current_dir(repo_root())
        .env_clear()
        .output()
        .expect("switchyard asyncapi runs");
    assert!(
        output.status.success(),
        "switchyard asyncapi {manifests:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = std::fs::read_to_string(&path).expect("the document was written");
    (path, text)
}

#[test]
fn example_manifests_pass_the_parser() {
    let modules = node_modules();
    assert!(
        modules.join("@asyncapi/parser").is_dir(),
        "@asyncapi/parser is missing from {}; install it with `{PARSER_INSTALL}` \
         (bash .ci/run does), or set {NODE_MODULES_VARIABLE} to a node_modules folder that has it",
        modules.display()
    );
    let script = repo_root().join("tests/asyncapi/validate.mjs");
    for manifests in [
        &["manifests/shop.toml"][..],
        &["manifests/shop.toml", "manifests/streaming.toml"][..],
    ] {
        let dir = tempfile::tempdir().expect("temporary folder");
        let (path, text) = generate(&dir, manifests);
        let output = Command::new("node")
            .arg(&script)
            .arg(&modules)
            .arg(&path)
            .output()
            .expect("node runs; install Node.js to run this test");
        let diagnostics = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "the parser rejected the document of {manifests:?}:\n{diagnostics}{}\ndocument:\n{text}",
            String::from_utf8_lossy(&output.stderr)
        );
        let warnings: Vec<&str> = diagnostics
            .lines()
            .filter(|line| line.contains("\"severity\":1"))
            .collect();
        assert!(
            warnings.is_empty(),
            "parser warnings for {manifests:?}: {warnings:#?}"
        );
    }
}

#[test]
fn document_describes_the_topology() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let (_, text) = generate(&dir, &["manifests/shop.toml", "manifests/streaming.toml"]);
    let document: Value = serde_saphyr::from_str(&text).expect("the document is YAML");

    assert_eq!(document["asyncapi"], "3.0.0");
    let channels = &document["channels"];
    let events = &channels["exchange.events"];
    assert_eq!(events["bindings"]["amqp"]["exchange"]["type"], "topic");
    let queue = &channels["queue.inventory-service"];
    assert_eq!(queue["bindings"]["amqp"]["is"], "queue");
    let queue_messages: Vec<&String> = queue["messages"]
        .as_object()
        .expect("queue messages")
        .keys()
        .collect();
    assert_eq!(
        queue_messages,
        ["order.placed"],
        "events routed to inventory-service"
    );
    let topic = &channels["topic.analytics"];
    assert_eq!(topic["bindings"]["kafka"]["partitions"], 3);

    let operations = &document["operations"];
    assert_eq!(operations["order-service.events"]["action"], "send");
    // Every order is written to the Kafka topic too.
    let to_topic = &operations["order-service.analytics"];
    assert_eq!(to_topic["action"], "send");
    assert_eq!(to_topic["channel"]["$ref"], "#/channels/topic.analytics");
    assert!(
        to_topic["summary"]
            .as_str()
            .is_some_and(|summary| summary.contains("keyed by `data.customerId`")),
        "{to_topic:?}"
    );
    assert_eq!(document["servers"]["rabbit"]["pathname"], "/%2f");
    assert_eq!(operations["inventory-service"]["action"], "receive");
    assert_eq!(operations["analytics-stream"]["action"], "receive");

    let payload = &document["components"]["messages"]["order.placed"]["payload"];
    assert_eq!(
        payload["schemaFormat"],
        "application/schema+json;version=draft-07"
    );
    assert_eq!(
        payload["schema"]["$schema"],
        "http://json-schema.org/draft-07/schema#"
    );
    assert_eq!(payload["schema"]["title"], "order.placed");

    let servers = serde_json::to_string(&document["servers"]).expect("servers serialize");
    assert!(
        !servers.contains("guest:"),
        "credentials in servers: {servers}"
    );
}
