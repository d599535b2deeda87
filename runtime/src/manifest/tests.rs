use std::path::PathBuf;

use super::*;

fn no_env(_: &str) -> Option<String> {
    None
}

/// Writes manifests into a fresh folder and loads them.
fn load_texts(texts: &[&str], purpose: Purpose) -> Loaded {
    let dir = std::env::temp_dir().join(format!("switchyard-manifest-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let paths: Vec<PathBuf> = texts
        .iter()
        .enumerate()
        .map(|(i, text)| {
            let path = dir.join(format!("m{i}.toml"));
            std::fs::write(&path, text).unwrap();
            path
        })
        .collect();
    let loaded = load(&paths, purpose, &no_env);
    let _ = std::fs::remove_dir_all(&dir);
    loaded
}

fn codes(loaded: &Loaded) -> Vec<&'static str> {
    loaded.problems.iter().map(|p| p.code).collect()
}

fn position(loaded: &Loaded, index: usize) -> (usize, usize) {
    let problem = &loaded.problems[index];
    let file = &loaded.manifest.files[problem.file.unwrap()];
    file.line_column(problem.span.clone().unwrap().start)
}

const BASE: &str = r#"
[brokers.rabbit]
kind = "amqp"
url = "amqp://localhost"

[exchanges.events]
broker = "rabbit"

[exchanges.dlx]
broker = "rabbit"
type = "fanout"

[queues.work]
broker = "rabbit"
bind = [{ exchange = "events", key = "order.*" }]
dead_letter = { exchange = "dlx" }
external_consumers = true
"#;

#[test]
fn reference_manifest_loads_cleanly() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../manifests/shop.toml");
    let loaded = load(&[path], Purpose::Run, &no_env);
    assert!(loaded.problems.is_empty(), "{}", loaded.render());
    assert_eq!(loaded.manifest.consumers.len(), 3);
    assert_eq!(
        loaded.manifest.broker_urls["rabbit"],
        "amqp://guest:guest@127.0.0.1:5672/%2f"
    );
}

#[test]
fn unknown_key_reported_with_position() {
    let text =
        format!("{BASE}\n[consumers.c]\nqueue = \"work\"\nhandler = \"h.wasm\"\nprefetc = 3\n");
    let loaded = load_texts(&[&text], Purpose::Run);
    assert_eq!(codes(&loaded), ["unknown-key"]);
    assert!(
        loaded.problems[0].message.contains("prefetc"),
        "{}",
        loaded.render()
    );
    let line = text.lines().position(|l| l.starts_with("prefetc")).unwrap() + 1;
    assert_eq!(position(&loaded, 0), (line, 1));
}

#[test]
fn undefined_references_each_reported() {
    let text = r#"
[brokers.rabbit]
kind = "amqp"
url = "amqp://localhost"

[exchanges.events]
broker = "rabit"

[queues.work]
broker = "rabbit"
bind = [{ exchange = "event", key = "a" }]
dead_letter = { exchange = "dlx" }

[consumers.c]
queue = "wrk"
handler = "h.wasm"
"#;
    let loaded = load_texts(&[text], Purpose::Run);
    assert_eq!(
        codes(&loaded),
        [
            "undefined-broker",
            "undefined-exchange",
            "undefined-exchange",
            "undefined-queue"
        ]
    );
    assert_eq!(
        loaded.problems[0].hint.as_deref(),
        Some("did you mean `rabbit`?")
    );
    assert_eq!(position(&loaded, 0), (7, 10));
    assert_eq!(position(&loaded, 3), (15, 9));
}

#[test]
fn missing_variable_is_error_when_running() {
    let text = BASE.replace("amqp://localhost", "amqp://${RABBIT_HOST}");
    let loaded = load_texts(&[&text], Purpose::Run);
    assert_eq!(codes(&loaded), ["undefined-variable"]);
    assert!(loaded.has_errors());
}

#[test]
fn missing_variable_is_warning_in_check() {
    let text = BASE.replace("amqp://localhost", "amqp://${RABBIT_HOST}");
    let loaded = load_texts(&[&text], Purpose::Check);
    assert_eq!(codes(&loaded), ["undefined-variable"]);
    assert!(!loaded.has_errors());
}

/// `up --embedded` does not use the broker's URL, so a missing variable or
/// an invalid URL there is a warning, while a producer token it does use
/// still has to be set.
#[test]
fn embedded_ignores_broker_settings() {
    let text = BASE.replace("amqp://localhost", "${RABBIT_URL}");
    let loaded = load_texts(&[&text], Purpose::Embedded);
    assert_eq!(codes(&loaded), ["undefined-variable"]);
    assert!(!loaded.has_errors(), "{}", loaded.render());

    let text = BASE.replace("amqp://localhost", "not a URL");
    let loaded = load_texts(&[&text], Purpose::Embedded);
    assert_eq!(codes(&loaded), ["invalid-url"]);
    assert!(!loaded.has_errors(), "{}", loaded.render());

    let text = format!("{BASE}\n[credentials.app]\nbearer = \"${{APP_TOKEN}}\"\n");
    let loaded = load_texts(&[&text], Purpose::Embedded);
    assert!(loaded.has_errors(), "{}", loaded.render());
}

#[test]
fn names_are_global_across_files() {
    let second = "[queues.work]\nbroker = \"rabbit\"\n";
    let loaded = load_texts(&[BASE, second], Purpose::Run);
    assert_eq!(codes(&loaded), ["duplicate-name"]);
    // The position of `work` in the second file's `[queues.work]`.
    assert_eq!(loaded.problems[0].file, Some(1));
    assert_eq!(position(&loaded, 0), (1, 9));
}

#[test]
fn references_cross_files() {
    let second = r#"
[events."order.placed"]
schema = "order.placed.json"
publish = { exchange = "events" }
"#;
    let loaded = load_texts(&[BASE, second], Purpose::Run);
    assert!(loaded.problems.is_empty(), "{}", loaded.render());
}

#[test]
fn consumer_queue_needs_dead_letter() {
    let text = r#"
[brokers.rabbit]
kind = "amqp"
url = "amqp://localhost"

[queues.work]
broker = "rabbit"

[consumers.c]
queue = "work"
handler = "h.wasm"
"#;
    let loaded = load_texts(&[text], Purpose::Run);
    assert_eq!(codes(&loaded), ["missing-dead-letter", "unfed-consumer"]);
}

#[test]
fn duplicate_routes_rejected() {
    let text = format!(
        "{BASE}\n[events.e]\nschema = \"e.json\"\n\n[producers.a]\nhttp = \"POST /x\"\nevent = \"e\"\n\n[producers.b]\nhttp = \"post /x\"\nevent = \"e\"\n"
    );
    let loaded = load_texts(&[&text], Purpose::Run);
    assert_eq!(codes(&loaded), ["duplicate-route", "unpublished-event"]);
}

#[test]
fn undefined_event_hint_quotes_dotted_name() {
    let text =
        format!("{BASE}\n[producers.p]\nhttp = \"POST /shipments\"\nevent = \"order.shipped\"\n");
    let loaded = load_texts(&[&text], Purpose::Run);
    assert_eq!(codes(&loaded), ["undefined-event"], "{}", loaded.render());
    assert_eq!(
        loaded.problems[0].hint.as_deref(),
        Some("define a `[events.\"order.shipped\"]` table")
    );
}

#[test]
fn listen_address_without_port_rejected() {
    let text =
        format!("[runtime]\nlisten = \"localhost\"\nadmin_listen = \"127.0.0.1:9090\"\n{BASE}");
    let loaded = load_texts(&[&text], Purpose::Check);
    assert_eq!(codes(&loaded), ["invalid-value"], "{}", loaded.render());
    assert_eq!(
        loaded.problems[0].message,
        "`runtime.listen` is `localhost`, which is not an IP address and port"
    );
    assert_eq!(position(&loaded, 0), (2, 10));

    // `up --listen` may replace it, and `up` checks the address it uses.
    let loaded = load_texts(&[&text], Purpose::Run);
    assert_eq!(codes(&loaded), Vec::<&str>::new(), "{}", loaded.render());
}

#[test]
fn values_the_broker_or_runtime_would_refuse_reported() {
    let long = "q".repeat(250);
    let text = format!(
        r#"{BASE}
[queues.{long}]
broker = "rabbit"
bind = [{{ exchange = "events", key = "order.*" }}]
dead_letter = {{ exchange = "dlx" }}
message_ttl = "100000d"

[consumers.c]
queue = "{long}"
handler = "h.wasm"
limits = {{ timeout = "0s", memory = "0B" }}
retry = {{ backoff = "10m", max_backoff = "1m" }}
"#
    );
    let loaded = load_texts(&[&text], Purpose::Run);
    let rendered = loaded.render();
    let mut found = codes(&loaded);
    found.sort_unstable();
    // No event reaches the queue, hence `unfed-consumer`.
    assert_eq!(
        found,
        [
            "backoff-over-max-backoff",
            "invalid-value",
            "invalid-value",
            "invalid-value",
            "name-too-long",
            "unfed-consumer",
        ],
        "{rendered}"
    );
    let text: Vec<String> = loaded
        .problems
        .iter()
        .map(|problem| {
            format!(
                "{} {}",
                problem.message,
                problem.hint.as_deref().unwrap_or("")
            )
        })
        .collect();
    for expected in [
        "queue name is 250 bytes long, and 256 with the `.retry` suffix of its retry queue, but AMQP 0-9-1 allows at most 255 shorten the queue name to 249 bytes or fewer",
        "is 8640000000000 ms, above RabbitMQ's limit of 4294967295 ms",
        "so every call would time out",
        "less than one WebAssembly page",
        "so every retry waits 1m",
    ] {
        assert!(
            text.iter().any(|problem| problem.contains(expected)),
            "{expected}:\n{rendered}"
        );
    }
}

/// A case file given as a manifest gets a hint about the file name that
/// `switchyard test` goes by.
#[test]
fn case_table_in_manifest_names_suffix() {
    let loaded = load_texts(&["[[case]]\nname = \"x\"\n"], Purpose::Check);
    let rendered = loaded.render();
    assert_eq!(codes(&loaded), ["unknown-key"], "{rendered}");
    assert!(
        rendered.contains("name it `<name>.test.toml`"),
        "{rendered}"
    );
}

/// A deadline shorter than the epoch tick cannot be kept for a handler that
/// computes, so it is a warning.
#[test]
fn deadline_below_tick_warned() {
    let text = format!(
        r#"{BASE}
[consumers.c]
queue = "work"
handler = "h.wasm"
limits = {{ timeout = "500us" }}
"#
    );
    let loaded = load_texts(&[&text], Purpose::Run);
    let rendered = loaded.render();
    // No event reaches the queue, hence also `unfed-consumer`.
    assert_eq!(
        codes(&loaded),
        ["deadline-below-tick", "unfed-consumer"],
        "{rendered}"
    );
    assert!(rendered.contains("every 10 ms"), "{rendered}");
}

/// A problem with a value points at the value, in an inline table and in a
/// subtable alike, not at the entry's name.
#[test]
fn value_problems_point_at_value() {
    let text = format!(
        r#"{BASE}
[consumers.c]
queue = "work"
handler = "h.wasm"
concurrency = 0
retry = {{ max_attempts = 0 }}

[consumers.c.limits]
timeout = "0s"
"#
    );
    let loaded = load_texts(&[&text], Purpose::Run);
    let rendered = loaded.render();
    let line_of = |prefix: &str| text.lines().position(|l| l.starts_with(prefix)).unwrap() + 1;
    let expected = [
        ("`concurrency = 0`", (line_of("concurrency"), 15)),
        ("`retry.max_attempts = 0`", (line_of("retry"), 26)),
        ("`limits.timeout = \"0s\"`", (line_of("timeout"), 11)),
    ];
    for (message, at) in expected {
        let index = loaded
            .problems
            .iter()
            .position(|problem| problem.message.contains(message))
            .unwrap_or_else(|| panic!("{message}:\n{rendered}"));
        assert_eq!(position(&loaded, index), at, "{message}:\n{rendered}");
    }
}

#[test]
fn empty_names_rejected() {
    let text = format!(
        "{BASE}\n[events.\"\"]\nschema = \"e.json\"\npublish = {{ exchange = \"events\" }}\n\n[queues.\" \"]\nbroker = \"rabbit\"\nexternal_consumers = true\n"
    );
    let loaded = load_texts(&[&text], Purpose::Run);
    let empty: Vec<&str> = loaded
        .problems
        .iter()
        .filter(|problem| problem.code == "empty-name")
        .map(|problem| problem.message.as_str())
        .collect();
    assert_eq!(
        empty,
        [
            "`[queues.\" \"]` has an empty name",
            "`[events.\"\"]` has an empty name"
        ],
        "{}",
        loaded.render()
    );
}

#[test]
fn names_over_the_broker_limits_rejected() {
    let exchange = "x".repeat(256);
    let event = format!("order.{}", "y".repeat(250));
    let topic = "t".repeat(250);
    let text = format!(
        r#"{BASE}
[exchanges.{exchange}]
broker = "rabbit"

[events."{event}"]
schema = "e.json"
publish = {{ exchange = "events" }}

[brokers.kafka]
kind = "kafka"
bootstrap = "127.0.0.1:9092"

[topics.{topic}]
broker = "kafka"
"#
    );
    let loaded = load_texts(&[&text], Purpose::Run);
    let messages: Vec<&str> = loaded
        .problems
        .iter()
        .filter(|problem| problem.code == "name-too-long")
        .map(|problem| problem.message.as_str())
        .collect();
    assert_eq!(
        messages,
        [
            "exchange name is 256 bytes long, but AMQP 0-9-1 allows at most 255",
            "event type is 256 bytes long, but it is the routing key of its publishes, and AMQP 0-9-1 allows at most 255",
            "topic name is 250 bytes long, but Kafka allows at most 249",
        ],
        "{}",
        loaded.render()
    );
}

#[test]
fn route_parameters_and_queries_rejected() {
    for path in [
        "/x/{a}",
        "/x/{*rest}",
        "/q?x=1",
        "/a#b",
        "/x/:id",
        "/files/*rest",
    ] {
        let text = format!(
            "{BASE}\n[events.e]\nschema = \"e.json\"\n\n[producers.a]\nhttp = \"POST {path}\"\nevent = \"e\"\n"
        );
        let loaded = load_texts(&[&text], Purpose::Run);
        let rendered = loaded.render();
        assert_eq!(
            codes(&loaded),
            ["invalid-route", "unpublished-event"],
            "{rendered}"
        );
        assert!(
            rendered.contains(&format!("invalid path `{path}`")),
            "{rendered}"
        );
    }
}

#[test]
fn invalid_duration_names_value() {
    let text = format!(
        "{BASE}\n[consumers.c]\nqueue = \"work\"\nhandler = \"h.wasm\"\nlimits = {{ timeout = \"2 fortnights\" }}\n"
    );
    let loaded = load_texts(&[&text], Purpose::Run);
    assert_eq!(codes(&loaded), ["invalid-value"]);
    assert!(
        loaded.problems[0].message.contains("`2 fortnights`"),
        "{}",
        loaded.render()
    );
}

#[test]
fn independent_faults_all_reported() {
    let text = r#"
[brokers.rabbit]
kind = "amqp"
url = "amqp://localhost"
heartbeat = 5

[exchanges.events]
broker = "rabbit"
type = "topik"

[queues.work]
broker = "rabbit"
dead_letter = { exchange = "events" }

[consumers.c]
queue = "work"
handler = "h.wasm"
prefetch = "many"
"#;
    let loaded = load_texts(&[text], Purpose::Run);
    assert_eq!(
        codes(&loaded),
        ["unknown-key", "invalid-value", "invalid-value"]
    );
    let lines: Vec<usize> = (0..3).map(|i| position(&loaded, i).0).collect();
    assert_eq!(lines, [5, 9, 18]);
}

#[test]
fn unknown_table_suggests_closest() {
    let loaded = load_texts(&["[consumer.c]\nqueue = \"q\"\n"], Purpose::Run);
    assert_eq!(codes(&loaded), ["unknown-key"]);
    assert_eq!(
        loaded.problems[0].hint.as_deref(),
        Some("did you mean `[consumers]`?")
    );
}

#[test]
fn unrouted_event_warned() {
    let text = format!(
        "{BASE}\n[events.\"user.created\"]\nschema = \"u.json\"\npublish = {{ exchange = \"events\" }}\n\n[events.\"order.placed\"]\nschema = \"o.json\"\npublish = {{ exchange = \"events\" }}\n"
    );
    let loaded = load_texts(&[&text], Purpose::Check);
    assert_eq!(codes(&loaded), ["unrouted-event"]);
    assert!(
        loaded.problems[0].message.contains("`user.created`"),
        "{}",
        loaded.render()
    );
    assert!(!loaded.has_errors());
}

#[test]
fn reference_system_with_kafka_loads_cleanly() {
    let folder = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../manifests");
    let paths = [folder.join("shop.toml"), folder.join("streaming.toml")];
    let loaded = load(&paths, Purpose::Run, &no_env);
    assert!(loaded.problems.is_empty(), "{}", loaded.render());
    assert_eq!(loaded.manifest.consumers.len(), 4);
    assert_eq!(loaded.manifest.broker_urls["stream"], "127.0.0.1:9092");
    assert_eq!(
        loaded.manifest.consumer_broker("analytics-stream"),
        Some("stream")
    );
}

const KAFKA: &str = r#"
[brokers.stream]
kind = "kafka"
bootstrap = "127.0.0.1:9092"

[events."order.placed"]
schema = "order.placed.json"

[topics.orders]
broker = "stream"
partitions = 3
events = [{ event = "order.placed", key = "data.customerId" }]
"#;

#[test]
fn kafka_topic_and_consumer_load() {
    let text = format!("{KAFKA}\n[consumers.c]\ntopic = \"orders\"\nhandler = \"h.wasm\"\n");
    let loaded = load_texts(&[&text], Purpose::Run);
    assert!(loaded.problems.is_empty(), "{}", loaded.render());
    assert_eq!(loaded.manifest.topics["orders"].def.partitions, 3);
    assert_eq!(loaded.manifest.consumer_broker("c"), Some("stream"));
}

#[test]
fn queue_on_kafka_broker_rejected() {
    let text = format!("{KAFKA}\n[queues.q]\nbroker = \"stream\"\n");
    let loaded = load_texts(&[&text], Purpose::Run);
    assert_eq!(codes(&loaded), ["wrong-broker-kind"], "{}", loaded.render());
    assert!(loaded.problems[0].message.contains("queue `q`"));
    let line = text.lines().count();
    assert_eq!(position(&loaded, 0), (line, 10));
}

#[test]
fn topic_on_amqp_broker_rejected() {
    let text =
        format!("{BASE}\n[topics.t]\nbroker = \"rabbit\"\n[events.\"e\"]\nschema = \"e.json\"\n");
    let loaded = load_texts(&[&text], Purpose::Run);
    assert_eq!(codes(&loaded), ["wrong-broker-kind"], "{}", loaded.render());
    assert!(loaded.problems[0].message.contains("topic `t`"));
}

#[test]
fn kafka_broker_needs_bootstrap_not_url() {
    let text = "[brokers.stream]\nkind = \"kafka\"\nurl = \"amqp://x\"\n";
    let loaded = load_texts(&[text], Purpose::Run);
    assert_eq!(
        codes(&loaded),
        ["missing-key", "unknown-key"],
        "{}",
        loaded.render()
    );
    assert!(loaded.problems[0].message.contains("bootstrap"));
    assert!(loaded.problems[1].message.contains("`url`"));
}

#[test]
fn invalid_partition_key_reported() {
    let text = KAFKA.replace("data.customerId", "data..id");
    let loaded = load_texts(&[&text], Purpose::Run);
    assert_eq!(
        codes(&loaded),
        ["invalid-partition-key"],
        "{}",
        loaded.render()
    );
    let text = KAFKA.replace("data.customerId", "customerId");
    let loaded = load_texts(&[&text], Purpose::Run);
    assert_eq!(
        codes(&loaded),
        ["invalid-partition-key"],
        "{}",
        loaded.render()
    );
    let hint = loaded.problems[0].hint.clone().unwrap_or_default();
    assert!(hint.contains("data.customerId"), "hint: {hint}");
}

#[test]
fn consumer_with_queue_and_topic_rejected() {
    let text = format!(
        "{BASE}{}\n[consumers.c]\nqueue = \"work\"\ntopic = \"orders\"\nhandler = \"h.wasm\"\n",
        KAFKA.replace(
            "[events.\"order.placed\"]\nschema = \"order.placed.json\"\n",
            ""
        )
    );
    let loaded = load_texts(&[&text], Purpose::Run);
    assert!(
        codes(&loaded).contains(&"ambiguous-source"),
        "{}",
        loaded.render()
    );
}

#[test]
fn consumer_without_source_rejected() {
    let text = format!("{BASE}\n[consumers.c]\nhandler = \"h.wasm\"\n");
    let loaded = load_texts(&[&text], Purpose::Run);
    assert_eq!(codes(&loaded), ["missing-key"], "{}", loaded.render());
}

#[test]
fn literal_sasl_password_warned() {
    let text = KAFKA.replace(
        "bootstrap = \"127.0.0.1:9092\"",
        "bootstrap = \"127.0.0.1:9092\"\noptions = { \"sasl.password\" = \"hunter2\" }",
    );
    let loaded = load_texts(&[&text], Purpose::Run);
    assert_eq!(codes(&loaded), ["literal-password"], "{}", loaded.render());
    let text = KAFKA.replace(
        "bootstrap = \"127.0.0.1:9092\"",
        "bootstrap = \"127.0.0.1:9092\"\noptions = { \"sasl.password\" = \"${KAFKA_PASSWORD:-x}\" }",
    );
    let loaded = load_texts(&[&text], Purpose::Run);
    assert!(loaded.problems.is_empty(), "{}", loaded.render());
}

#[test]
fn grants_checked() {
    let grants = "grants = { env = [\"SWITCHYARD_TEST_UNSET\"], read_dirs = { \"/data\" = \"no-such-folder\" }, connect = [\"redis:6379\", \"redis\", \"[::1]:0\"] }";
    let text = ROUTED.replace(
        "handler = \"h.wasm\"",
        &format!("handler = \"h.wasm\"\n{grants}"),
    );
    let loaded = load_texts(&[&text], Purpose::Run);
    assert_eq!(
        codes(&loaded),
        [
            "granted-variable-unset",
            "granted-folder-not-found",
            "granted-endpoint-invalid",
            "granted-endpoint-invalid"
        ],
        "{}",
        loaded.render()
    );
    assert_eq!(loaded.problems[0].severity, Severity::Warning);
    assert_eq!(loaded.problems[1].severity, Severity::Error);
    // Each points into the `grants` line, at its value.
    let line = text.lines().position(|l| l.starts_with("grants")).unwrap() + 1;
    let column = |needle: &str| grants.find(needle).unwrap() + 1;
    assert_eq!(position(&loaded, 0), (line, column("\"SWITCHYARD")));
    assert_eq!(position(&loaded, 1), (line, column("\"no-such")));
    assert_eq!(position(&loaded, 2), (line, column("\"redis\"")));
    let rendered = loaded.render();
    assert!(
        rendered.contains("endpoint `redis`, which is not `host:port`"),
        "{rendered}"
    );
    assert!(rendered.contains("`0` is not a port number"), "{rendered}");
}

/// A topic exchange `events` with a dead-letter exchange, the queue `work`
/// bound to `order.*`, an event routed to it and a consumer that reads it.
const ROUTED: &str = r#"
[brokers.rabbit]
kind = "amqp"
url = "amqp://localhost"

[exchanges.events]
broker = "rabbit"
type = "topic"

[exchanges.dlx]
broker = "rabbit"
type = "fanout"

[queues.dead-letters]
broker = "rabbit"
bind = [{ exchange = "dlx" }]

[queues.work]
broker = "rabbit"
bind = [{ exchange = "events", key = "order.*" }]
dead_letter = { exchange = "dlx" }

[events."order.placed"]
schema = "order.placed.json"
publish = { exchange = "events" }

[consumers.c]
queue = "work"
handler = "h.wasm"
"#;

#[test]
fn routed_manifest_has_no_warnings() {
    let loaded = load_texts(&[ROUTED], Purpose::Run);
    assert!(loaded.problems.is_empty(), "{}", loaded.render());
}

#[test]
fn unread_queue_warned() {
    let text = format!(
        "{ROUTED}\n[queues.audit]\nbroker = \"rabbit\"\nbind = [{{ exchange = \"events\", key = \"#\" }}]\n"
    );
    let loaded = load_texts(&[&text], Purpose::Run);
    assert_eq!(codes(&loaded), ["unread-queue"], "{}", loaded.render());
    assert_eq!(
        loaded.problems[0].message,
        "no consumer reads queue `audit`"
    );
    assert!(!loaded.has_errors());

    let external = text.replace(
        "key = \"#\" }]\n",
        "key = \"#\" }]\nexternal_consumers = true\n",
    );
    let loaded = load_texts(&[&external], Purpose::Run);
    assert!(loaded.problems.is_empty(), "{}", loaded.render());
}

#[test]
fn unfed_consumer_warned() {
    let text = ROUTED.replace("key = \"order.*\"", "key = \"user.*\"");
    let loaded = load_texts(&[&text], Purpose::Run);
    assert_eq!(
        codes(&loaded),
        ["unrouted-event", "unfed-consumer"],
        "{}",
        loaded.render()
    );
    assert!(
        loaded.problems[1]
            .message
            .contains("consumer `c` reads queue `work`, which receives no declared event"),
        "{}",
        loaded.render()
    );
}

#[test]
fn dead_letter_consumer_not_warned() {
    let text =
        format!("{ROUTED}\n[consumers.dead]\nqueue = \"dead-letters\"\nhandler = \"h.wasm\"\n");
    let loaded = load_texts(&[&text], Purpose::Run);
    // Only the missing dead-letter exchange of the dead-letter queue itself.
    assert_eq!(
        codes(&loaded),
        ["missing-dead-letter"],
        "{}",
        loaded.render()
    );
}

#[test]
fn unpublished_event_warned() {
    let text = format!("{ROUTED}\n[events.\"order.shipped\"]\nschema = \"o.json\"\n");
    let loaded = load_texts(&[&text], Purpose::Run);
    assert_eq!(codes(&loaded), ["unpublished-event"], "{}", loaded.render());
}

#[test]
fn wildcard_inside_word_rejected() {
    let text = ROUTED.replace("key = \"order.*\"", "key = \"order.*ed\"");
    let loaded = load_texts(&[&text], Purpose::Run);
    assert_eq!(
        codes(&loaded),
        ["invalid-binding-key"],
        "{}",
        loaded.render()
    );
    let problem = &loaded.problems[0];
    assert!(
        problem.message.contains("`order.*ed`"),
        "{}",
        problem.message
    );
    assert!(problem.message.contains("`*ed`"), "{}", problem.message);
    let hint = problem.hint.as_deref().unwrap_or_default();
    assert!(hint.contains("`order.*`"), "{hint}");
    assert!(problem.is_error());
}

#[test]
fn long_binding_key_rejected() {
    let long = "a".repeat(256);
    let text = ROUTED.replace("key = \"order.*\"", &format!("key = \"{long}\""));
    let loaded = load_texts(&[&text], Purpose::Run);
    assert!(
        codes(&loaded).starts_with(&["invalid-binding-key"]),
        "{}",
        loaded.render()
    );
    assert!(loaded.problems[0].message.contains("256 bytes"));
}

#[test]
fn wildcard_on_direct_exchange_warned() {
    let text = ROUTED.replace("type = \"topic\"", "type = \"direct\"");
    let loaded = load_texts(&[&text], Purpose::Run);
    assert!(
        codes(&loaded).contains(&"wildcard-on-direct-exchange"),
        "{}",
        loaded.render()
    );
}

#[test]
fn route_warnings_wait_for_broken_entries() {
    // The consumer does not parse, so whether it reads `work` is unknown.
    let text = ROUTED.replace(
        "handler = \"h.wasm\"",
        "handler = \"h.wasm\"\nprefetch = \"all\"",
    );
    let loaded = load_texts(&[&text], Purpose::Run);
    assert_eq!(codes(&loaded), ["invalid-value"], "{}", loaded.render());
}

#[test]
fn rendered_source_hides_passwords() {
    let url = ROUTED.replace("amqp://localhost", "amqp://app:s3cret@localhost/%2f");
    let loaded = load_texts(&[&url], Purpose::Run);
    assert_eq!(codes(&loaded), ["literal-password"], "{}", loaded.render());
    let rendered = loaded.render();
    assert!(!rendered.contains("s3cret"), "{rendered}");
    assert!(
        rendered.contains("amqp://app:******@localhost/%2f"),
        "{rendered}"
    );

    // The user name comes first, and an equal password must still go.
    let same = ROUTED.replace("amqp://localhost", "amqp://guest:guest@localhost/%2f");
    let rendered = load_texts(&[&same], Purpose::Run).render();
    assert!(
        rendered.contains("amqp://guest:*****@localhost/%2f"),
        "{rendered}"
    );

    let option = KAFKA.replace(
        "bootstrap = \"127.0.0.1:9092\"",
        "bootstrap = \"127.0.0.1:9092\"\noptions = { \"sasl.password\" = \"hunter2\" }",
    );
    let loaded = load_texts(&[&option], Purpose::Run);
    let rendered = loaded.render();
    assert!(!rendered.contains("hunter2"), "{rendered}");
    assert!(rendered.contains("\"*******\""), "{rendered}");
}

#[test]
fn duplicate_runtime_setting_points_at_value() {
    let first = "[runtime]\nlisten = \"127.0.0.1:3000\"\n";
    let second = "[runtime]\nname = \"shop\"\nlisten = \"127.0.0.1:4000\"\n";
    let loaded = load_texts(&[first, second], Purpose::Run);
    assert_eq!(codes(&loaded), ["duplicate-runtime-setting"]);
    assert_eq!(loaded.problems[0].file, Some(1));
    assert_eq!(position(&loaded, 0), (3, 10));
}

#[test]
fn deadline_over_consumer_timeout_warned() {
    let text = ROUTED.replace(
        "handler = \"h.wasm\"",
        "handler = \"h.wasm\"\nlimits = { timeout = \"45m\" }",
    );
    let loaded = load_texts(&[&text], Purpose::Run);
    assert_eq!(
        codes(&loaded),
        ["deadline-over-consumer-timeout"],
        "{}",
        loaded.render()
    );
    assert_eq!(loaded.problems[0].severity, Severity::Warning);

    let text = ROUTED.replace(
        "handler = \"h.wasm\"",
        "handler = \"h.wasm\"\nlimits = { timeout = \"29m\" }",
    );
    let loaded = load_texts(&[&text], Purpose::Run);
    assert!(loaded.problems.is_empty(), "{}", loaded.render());
}

/// A self-signed certificate and its key, for the checks of TLS files.
const TEST_CERT: &str = include_str!("../../../tests/check/certs/client.pem");
const TEST_KEY: &str = include_str!("../../../tests/check/certs/client.key");

/// Writes `files` and one manifest into a fresh folder, loads the manifest
/// for running with `lookup`, and returns the result with the folder, which
/// is deleted again.
fn load_with_files(
    files: &[(&str, &str)],
    manifest: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> (Loaded, PathBuf) {
    let dir = std::env::temp_dir().join(format!("switchyard-manifest-{}", uuid::Uuid::new_v4()));
    for (name, text) in files {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("manifest.toml");
    std::fs::write(&path, manifest).unwrap();
    let loaded = load(&[path], Purpose::Run, lookup);
    let _ = std::fs::remove_dir_all(&dir);
    (loaded, dir)
}

const CERT_FILES: [(&str, &str); 3] = [
    ("certs/ca.pem", TEST_CERT),
    ("certs/client.pem", TEST_CERT),
    ("certs/client.key", TEST_KEY),
];

#[test]
fn tls_files_resolve_against_manifest_folder() {
    let text = KAFKA.replace(
        "bootstrap = \"127.0.0.1:9092\"",
        "bootstrap = \"127.0.0.1:9093\"\n\
         tls = { ca = \"certs/ca.pem\", cert = \"certs/client.pem\", key = \"certs/client.key\" }",
    );
    let (loaded, dir) = load_with_files(&CERT_FILES, &text, &no_env);
    assert!(loaded.problems.is_empty(), "{}", loaded.render());
    let files = &loaded.manifest.broker_tls["stream"];
    assert_eq!(files.ca, Some(dir.join("certs/ca.pem")));
    assert_eq!(files.cert, Some(dir.join("certs/client.pem")));
    assert_eq!(files.key, Some(dir.join("certs/client.key")));
}

#[test]
fn tls_file_path_from_variable() {
    let dir = std::env::temp_dir().join(format!("switchyard-ca-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, TEST_CERT).unwrap();
    let ca_text = ca.display().to_string();
    let lookup = |name: &str| (name == "CA_FILE").then(|| ca_text.clone());
    let text = KAFKA.replace(
        "bootstrap = \"127.0.0.1:9092\"",
        "bootstrap = \"127.0.0.1:9093\"\ntls = { ca = \"${CA_FILE}\" }",
    );
    let (loaded, _) = load_with_files(&[], &text, &lookup);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(loaded.problems.is_empty(), "{}", loaded.render());
    assert_eq!(loaded.manifest.broker_tls["stream"].ca, Some(ca));
}

#[test]
fn missing_tls_file_named_with_path() {
    let text = KAFKA.replace(
        "bootstrap = \"127.0.0.1:9092\"",
        "bootstrap = \"127.0.0.1:9093\"\ntls = { ca = \"certs/none.pem\" }",
    );
    let (loaded, dir) = load_with_files(&CERT_FILES, &text, &no_env);
    assert_eq!(
        codes(&loaded),
        ["tls-file-not-found"],
        "{}",
        loaded.render()
    );
    let expected = dir.join("certs/none.pem").display().to_string();
    assert!(
        loaded.problems[0].message.contains(&expected),
        "{}",
        loaded.problems[0].message
    );
}

#[test]
fn certificate_as_key_file_rejected() {
    let text = KAFKA.replace(
        "bootstrap = \"127.0.0.1:9092\"",
        "bootstrap = \"127.0.0.1:9093\"\n\
         tls = { cert = \"certs/client.pem\", key = \"certs/client.pem\" }",
    );
    let (loaded, _) = load_with_files(&CERT_FILES, &text, &no_env);
    assert_eq!(codes(&loaded), ["tls-file-invalid"], "{}", loaded.render());
    assert!(
        loaded.problems[0].message.contains("client key file"),
        "{}",
        loaded.problems[0].message
    );
}

#[test]
fn tls_on_plain_amqp_url_rejected() {
    let text = BASE.replace(
        "url = \"amqp://localhost\"",
        "url = \"amqp://localhost\"\ntls = {}",
    );
    let loaded = load_texts(&[&text], Purpose::Run);
    assert_eq!(codes(&loaded), ["tls-without-amqps"], "{}", loaded.render());
    let text = BASE.replace(
        "url = \"amqp://localhost\"",
        "url = \"amqps://localhost\"\ntls = {}",
    );
    let loaded = load_texts(&[&text], Purpose::Run);
    assert!(loaded.problems.is_empty(), "{}", loaded.render());
}

#[test]
fn sasl_on_amqp_rejected() {
    let text = BASE.replace(
        "url = \"amqp://localhost\"",
        "url = \"amqp://localhost\"\n\
         sasl = { mechanism = \"PLAIN\", username = \"u\", password = \"${P:-}\" }",
    );
    let loaded = load_texts(&[&text], Purpose::Run);
    assert_eq!(codes(&loaded), ["unknown-key"], "{}", loaded.render());
}

#[test]
fn sasl_credentials_expanded() {
    let lookup = |name: &str| match name {
        "KAFKA_USER" => Some("switchyard".to_owned()),
        "KAFKA_PASSWORD" => Some("hunter2".to_owned()),
        _ => None,
    };
    let text = KAFKA.replace(
        "bootstrap = \"127.0.0.1:9092\"",
        "bootstrap = \"127.0.0.1:9093\"\ntls = {}\nsasl = { mechanism = \"SCRAM-SHA-256\", \
         username = \"${KAFKA_USER}\", password = \"${KAFKA_PASSWORD}\" }",
    );
    let (loaded, _) = load_with_files(&[], &text, &lookup);
    assert!(loaded.problems.is_empty(), "{}", loaded.render());
    let sasl = &loaded.manifest.broker_sasl["stream"];
    assert_eq!(sasl.mechanism, SaslMechanism::ScramSha256);
    assert_eq!(sasl.username, "switchyard");
    assert_eq!(sasl.password, "hunter2");
    let debug = format!("{sasl:?}");
    assert!(!debug.contains("hunter2"), "password in Debug: {debug}");
}

/// The URLs come from a variable, as secrets do, so no `literal-password`
/// warning joins the error.
#[test]
fn invalid_amqp_url_rejected() {
    let cases = [
        // A URL without a scheme, such as a bare host and port.
        ("rabbit.internal:5672", "rabbit.internal:5672"),
        ("http://app:hunter2@rabbit.internal/", "app:***@"),
        ("amqp:app:hunter2@rabbit.internal", "***@rabbit.internal"),
        ("", "is empty"),
    ];
    let text = BASE.replace("amqp://localhost", "${RABBITMQ_URL}");
    for (url, shown) in cases {
        let lookup = |name: &str| (name == "RABBITMQ_URL").then(|| url.to_owned());
        let (loaded, _) = load_with_files(&[], &text, &lookup);
        assert_eq!(
            codes(&loaded),
            ["invalid-url"],
            "{url}: {}",
            loaded.render()
        );
        let message = &loaded.problems[0].message;
        assert!(message.contains("`rabbit`"), "{url}: {message}");
        assert!(message.contains(shown), "{url}: {message}");
        assert!(!message.contains("hunter2"), "{url}: {message}");
        assert_eq!(position(&loaded, 0), (4, 7), "{url}");
    }
}

#[test]
fn unset_url_variable_only_warned() {
    let text = BASE.replace("amqp://localhost", "${RABBITMQ_URL}");
    let loaded = load_texts(&[&text], Purpose::Check);
    assert_eq!(
        codes(&loaded),
        ["undefined-variable"],
        "{}",
        loaded.render()
    );
}

#[test]
fn empty_url_variable_takes_default() {
    let text = BASE.replace("amqp://localhost", "${RABBITMQ_URL:-amqp://localhost}");
    let lookup = |name: &str| (name == "RABBITMQ_URL").then(String::new);
    let (loaded, _) = load_with_files(&[], &text, &lookup);
    assert!(loaded.problems.is_empty(), "{}", loaded.render());
    assert_eq!(loaded.manifest.broker_urls["rabbit"], "amqp://localhost");
}
