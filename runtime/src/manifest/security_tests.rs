//! Loading of producer credentials, `auth` and the HTTP limit settings.

use std::path::PathBuf;

use super::*;

/// Writes one manifest into a fresh folder and loads it with `env` as the
/// environment.
fn load_with_env(text: &str, purpose: Purpose, env: &[(&str, &str)]) -> Loaded {
    let dir = std::env::temp_dir().join(format!("switchyard-security-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let path: PathBuf = dir.join("manifest.toml");
    std::fs::write(&path, text).unwrap();
    let lookup = |name: &str| {
        env.iter()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| (*value).to_owned())
    };
    let loaded = load(&[path], purpose, &lookup);
    let _ = std::fs::remove_dir_all(&dir);
    loaded
}

fn codes(loaded: &Loaded) -> Vec<&'static str> {
    loaded.problems.iter().map(|p| p.code).collect()
}

/// An exchange, an event and two producers, without credentials.
const BASE: &str = r##"
[brokers.rabbit]
kind = "amqp"
url = "amqp://localhost"

[exchanges.events]
broker = "rabbit"

[queues.work]
broker = "rabbit"
bind = [{ exchange = "events", key = "#" }]
external_consumers = true

[events."order.placed"]
schema = "order.placed.json"
publish = { exchange = "events" }

[producers.orders]
http = "POST /orders"
event = "order.placed"

[producers.ping]
http = "POST /ping"
event = "order.placed"
auth = "none"
"##;

const TOKENS: &[(&str, &str)] = &[("ORDERS_TOKEN", "t-1"), ("PARTNER_KEY", "k-2")];

fn with_credentials(extra: &str) -> String {
    format!(
        r#"{BASE}
[credentials.orders-app]
bearer = "${{ORDERS_TOKEN}}"

[credentials.partner]
api_key = "${{PARTNER_KEY}}"
header = "X-Partner-Key"
{extra}"#
    )
}

#[test]
fn runtime_auth_applies_to_producers_without_own() {
    let text = format!(
        "[runtime]\nauth = [\"orders-app\", \"partner\"]\n{}",
        with_credentials("")
    );
    let loaded = load_with_env(&text, Purpose::Run, TOKENS);
    assert!(loaded.problems.is_empty(), "{}", loaded.render());
    let manifest = &loaded.manifest;
    let orders_auth = manifest.producer_auth("orders");
    let names: Vec<&str> = orders_auth
        .names()
        .iter()
        .map(|name| name.get_ref().as_str())
        .collect();
    assert_eq!(names, ["orders-app", "partner"]);
    assert_eq!(manifest.producer_auth("ping"), AuthDef::None);
    assert_eq!(manifest.credential_secrets["orders-app"].expose(), "t-1");
    assert_eq!(manifest.credential_secrets["partner"].expose(), "k-2");
}

#[test]
fn producers_open_without_auth() {
    let loaded = load_with_env(BASE, Purpose::Run, &[]);
    assert!(loaded.problems.is_empty(), "{}", loaded.render());
    assert_eq!(loaded.manifest.producer_auth("orders"), AuthDef::None);
}

#[test]
fn undefined_credential_reported_with_hint() {
    let text = format!(
        "[runtime]\nauth = [\"orders-ap\", \"partner\"]\n{}",
        with_credentials("")
    );
    let loaded = load_with_env(&text, Purpose::Check, TOKENS);
    assert_eq!(
        codes(&loaded),
        ["undefined-credential", "unused-credential"],
        "{}",
        loaded.render()
    );
    let hint = loaded.problems[0].hint.as_deref().unwrap_or_default();
    assert_eq!(hint, "did you mean `orders-app`?");
}

#[test]
fn empty_auth_list_rejected() {
    let text = with_credentials("").replace(
        "event = \"order.placed\"\n\n[producers.ping]",
        "event = \"order.placed\"\nauth = []\n\n[producers.ping]",
    );
    let loaded = load_with_env(&text, Purpose::Check, TOKENS);
    let found = codes(&loaded);
    assert!(found.contains(&"invalid-value"), "{}", loaded.render());
    let message = &loaded.problems[0].message;
    assert!(message.contains("producer `orders`"), "{message}");
}

#[test]
fn unknown_auth_word_rejected() {
    let text = BASE.replace("auth = \"none\"", "auth = \"off\"");
    let loaded = load_with_env(&text, Purpose::Check, &[]);
    assert_eq!(codes(&loaded), ["invalid-value"], "{}", loaded.render());
}

#[test]
fn credential_needs_exactly_one_secret() {
    let text = format!(
        "{BASE}\n[credentials.both]\nbearer = \"${{A}}\"\napi_key = \"${{B}}\"\n\
         [credentials.neither]\nheader = \"X-Key\"\n\
         [credentials.header-on-bearer]\nbearer = \"${{A}}\"\nheader = \"X-Key\"\n\
         [runtime]\nauth = [\"both\", \"neither\", \"header-on-bearer\"]\n"
    );
    let loaded = load_with_env(&text, Purpose::Check, &[("A", "a"), ("B", "b")]);
    let mut found = codes(&loaded);
    found.sort();
    assert_eq!(
        found,
        [
            "ambiguous-credential",
            "missing-key",
            "unknown-key",
            "unknown-key"
        ],
        "{}",
        loaded.render()
    );
}

#[test]
fn invalid_header_name_rejected() {
    let text = with_credentials("[runtime]\nauth = [\"partner\", \"orders-app\"]\n")
        .replace("X-Partner-Key", "X Partner Key");
    let loaded = load_with_env(&text, Purpose::Check, TOKENS);
    assert_eq!(codes(&loaded), ["invalid-value"], "{}", loaded.render());
}

#[test]
fn literal_and_default_tokens_warned_and_redacted() {
    let text = format!(
        "{BASE}\n[credentials.literal]\nbearer = \"tok-literal-1\"\n\
         [credentials.fallback]\napi_key = \"${{KEY:-key-default-2}}\"\n\
         [runtime]\nauth = [\"literal\", \"fallback\"]\n"
    );
    let loaded = load_with_env(&text, Purpose::Check, &[]);
    assert_eq!(
        codes(&loaded),
        ["literal-password", "literal-password"],
        "{}",
        loaded.render()
    );
    let rendered = loaded.render();
    assert!(!rendered.contains("tok-literal-1"), "{rendered}");
    assert!(!rendered.contains("key-default-2"), "{rendered}");
}

#[test]
fn missing_token_variable_is_error_when_running() {
    let text = with_credentials("[runtime]\nauth = [\"orders-app\", \"partner\"]\n");
    let loaded = load_with_env(&text, Purpose::Run, &[("PARTNER_KEY", "k")]);
    assert_eq!(
        codes(&loaded),
        ["undefined-variable"],
        "{}",
        loaded.render()
    );
    assert!(loaded.has_errors());
    let hint = loaded.problems[0].hint.as_deref().unwrap_or_default();
    assert_eq!(hint, "set `ORDERS_TOKEN` to the secret");
}

#[test]
fn empty_token_rejected() {
    let text = with_credentials("[runtime]\nauth = [\"orders-app\", \"partner\"]\n");
    let env = [("ORDERS_TOKEN", ""), ("PARTNER_KEY", "k")];
    let loaded = load_with_env(&text, Purpose::Run, &env);
    assert_eq!(codes(&loaded), ["invalid-value"], "{}", loaded.render());
    assert!(loaded.problems[0].message.contains("`orders-app`"));
}

#[test]
fn http_limits_loaded() {
    let text = format!(
        "[runtime]\nadmin_listen = \"${{ADMIN:-127.0.0.1:9}}\"\njson_depth_limit = 8\n\
         header_timeout = \"2s\"\nbody_timeout = \"500ms\"\n{BASE}"
    );
    let loaded = load_with_env(&text, Purpose::Run, &[("ADMIN", "127.0.0.1:9090")]);
    assert!(loaded.problems.is_empty(), "{}", loaded.render());
    let manifest = &loaded.manifest;
    assert_eq!(manifest.admin_listen.as_deref(), Some("127.0.0.1:9090"));
    assert_eq!(manifest.json_depth_limit, 8);
    assert_eq!(manifest.header_timeout, std::time::Duration::from_secs(2));
    assert_eq!(manifest.body_timeout, std::time::Duration::from_millis(500));
}

#[test]
fn http_limit_defaults() {
    let loaded = load_with_env(BASE, Purpose::Run, &[]);
    let manifest = &loaded.manifest;
    assert_eq!(manifest.admin_listen, None);
    assert_eq!(manifest.json_depth_limit, DEFAULT_JSON_DEPTH_LIMIT);
    assert_eq!(manifest.header_timeout, DEFAULT_HEADER_TIMEOUT);
    assert_eq!(manifest.body_timeout, DEFAULT_BODY_TIMEOUT);
}

#[test]
fn out_of_range_limits_rejected() {
    let cases = [
        "json_depth_limit = 0",
        "json_depth_limit = 128",
        "header_timeout = \"0s\"",
        "body_timeout = \"0ms\"",
    ];
    for setting in cases {
        let text = format!("[runtime]\n{setting}\n{BASE}");
        let loaded = load_with_env(&text, Purpose::Run, &[]);
        assert_eq!(
            codes(&loaded),
            ["invalid-value"],
            "{setting}: {}",
            loaded.render()
        );
        let problem = &loaded.problems[0];
        let file = &loaded.manifest.files[0];
        let (line, _) = file.line_column(problem.span.clone().unwrap().start);
        assert_eq!(line, 2, "{setting}: problem points at its value");
    }
}
