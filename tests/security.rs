//! Producer authentication, the admin listener, request limits and secrets,
//! checked on the real binary and the local RabbitMQ.
//!
//! Most tests run a small manifest without consumers: an exchange, a queue
//! that keeps every published event, and three producers with different
//! `auth`. The last test runs the reference system with a bearer token and
//! a RabbitMQ password of its own, and looks for both in everything the
//! binary writes or serves.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use serde_json::{Value, json};
use switchyard_tests::shop;
use switchyard_tests::{
    BrokerMode, RunOptions, Switchyard, component, free_loopback_address, rabbitmq, rabbitmqctl,
    repo_root, serial, shop_manifest, switchyard_binary, unique_suffix,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const REJECTED: &str = "switchyard_http_requests_rejected_total";
const PUBLISHED: &str = "switchyard_events_published_total";

/// Queue of the test manifest that keeps every event its producers publish.
const INBOX: &str = "security-inbox";

const ORDERS_TOKEN: &str = "orders-token-7f3a";
const PARTNER_KEY: &str = "partner-key-91c2";

/// Writes the test manifest and its schema into `dir` and returns its path.
/// `runtime` is added to its `[runtime]` table.
///
/// `POST /orders` takes the runtime default, the bearer token
/// `orders-app`. `POST /users` takes the API key `partner` or the token,
/// and `POST /signups` takes no credentials.
fn write_manifest(dir: &Path, runtime: &str) -> anyhow::Result<PathBuf> {
    std::fs::write(dir.join("any.json"), r#"{"type": "object"}"#)?;
    let folder = toml_string(&dir.to_string_lossy());
    let text = format!(
        r##"[runtime]
name = "security-test"
schemas = {folder}
handlers = {folder}
auth = ["orders-app"]
{runtime}

[brokers.rabbit]
kind = "amqp"
url = "${{RABBITMQ_URL}}"

[exchanges.security-events]
broker = "rabbit"
type = "topic"

[queues.{INBOX}]
broker = "rabbit"
bind = [{{ exchange = "security-events", key = "#" }}]
external_consumers = true

[events."order.placed"]
schema = "any.json"
publish = {{ exchange = "security-events" }}

[events."user.created"]
schema = "any.json"
publish = {{ exchange = "security-events" }}

[producers.orders]
http = "POST /orders"
event = "order.placed"

[producers.users]
http = "POST /users"
event = "user.created"
auth = ["partner", "orders-app"]

[producers.signups]
http = "POST /signups"
event = "user.created"
auth = "none"

[credentials.orders-app]
bearer = "${{ORDERS_TOKEN}}"

[credentials.partner]
api_key = "${{PARTNER_KEY}}"
"##
    );
    let path = dir.join("security.toml");
    std::fs::write(&path, text)?;
    Ok(path)
}

fn toml_string(text: &str) -> String {
    toml::Value::String(text.to_owned()).to_string()
}

/// Returns the environment that gives the test manifest its secrets.
fn secrets_env() -> Vec<(String, String)> {
    vec![
        ("ORDERS_TOKEN".to_owned(), ORDERS_TOKEN.to_owned()),
        ("PARTNER_KEY".to_owned(), PARTNER_KEY.to_owned()),
    ]
}

/// Deletes what an earlier test left and starts the test manifest.
async fn start(dir: &Path, manifest: &Path, options: &RunOptions) -> anyhow::Result<Switchyard> {
    rabbitmq().reset(&[manifest]).await?;
    let manifests = [manifest.to_path_buf()];
    let mut process =
        Switchyard::spawn_with_options(dir, &manifests, BrokerMode::RabbitMq, options).await?;
    process.wait_ready().await?;
    Ok(process)
}

/// POSTs `body` to the process with the extra `headers`.
async fn post(
    process: &Switchyard,
    path: &str,
    headers: &[(&str, &str)],
    body: &Value,
) -> anyhow::Result<reqwest::Response> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let mut request = client
        .post(process.url(path))
        .header(CONTENT_TYPE, "application/json")
        .body(body.to_string());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    Ok(request.send().await?)
}

/// A response with its parts read out.
struct Answer {
    status: StatusCode,
    content_type: String,
    challenges: Vec<String>,
    body: String,
}

impl Answer {
    async fn read(response: reqwest::Response) -> anyhow::Result<Answer> {
        let headers = response.headers();
        let content_type = headers
            .get(CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let challenges = headers
            .get_all(WWW_AUTHENTICATE)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .map(str::to_owned)
            .collect();
        let status = response.status();
        let body = response.text().await?;
        Ok(Answer {
            status,
            content_type,
            challenges,
            body,
        })
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

async fn answer(
    process: &Switchyard,
    path: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<Answer> {
    Answer::read(post(process, path, headers, &json!({ "n": 1 })).await?).await
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[tokio::test]
async fn producer_credentials_checked() -> anyhow::Result<()> {
    let _serial = serial().await;
    let dir = tempfile::tempdir()?;
    let manifest = write_manifest(dir.path(), "")?;
    let options = RunOptions {
        env: secrets_env(),
        ..RunOptions::default()
    };
    let process = start(dir.path(), &manifest, &options).await?;
    let token = bearer(ORDERS_TOKEN);
    let wrong_token = bearer("orders-token-wrong");

    let missing = answer(&process, "/orders", &[]).await?;
    assert_eq!(missing.status, StatusCode::UNAUTHORIZED, "{}", missing.body);
    assert_eq!(missing.content_type, "application/problem+json");
    assert_eq!(missing.json()["status"], 401, "{}", missing.body);
    assert_eq!(missing.challenges, ["Bearer realm=\"security-test\""]);

    let invalid = answer(&process, "/orders", &[("authorization", &wrong_token)]).await?;
    assert_eq!(invalid.status, StatusCode::UNAUTHORIZED, "{}", invalid.body);
    assert_eq!(
        invalid.challenges,
        ["Bearer realm=\"security-test\", error=\"invalid_token\""]
    );

    // Credentials are checked before the content type.
    let response = process
        .post("/orders", "text/plain", b"not json".to_vec())
        .await?;
    assert_eq!(
        response.status(),
        StatusCode::UNAUTHORIZED,
        "text/plain without credentials"
    );

    // The partner's key is valid but `/orders` accepts only the token.
    let other = answer(&process, "/orders", &[("x-api-key", PARTNER_KEY)]).await?;
    assert_eq!(other.status, StatusCode::FORBIDDEN, "{}", other.body);
    assert_eq!(other.content_type, "application/problem+json");
    assert!(other.challenges.is_empty(), "{:?}", other.challenges);

    let accepted = answer(&process, "/orders", &[("authorization", &token)]).await?;
    assert_eq!(accepted.status, StatusCode::ACCEPTED, "{}", accepted.body);

    // `/users` accepts either credential and names both in its challenges.
    let missing = answer(&process, "/users", &[]).await?;
    assert_eq!(missing.status, StatusCode::UNAUTHORIZED, "{}", missing.body);
    assert_eq!(
        missing.challenges,
        [
            "Bearer realm=\"security-test\"",
            "ApiKey realm=\"security-test\", header=\"x-api-key\""
        ]
    );
    let wrong_key = answer(&process, "/users", &[("x-api-key", "partner-key-wrong")]).await?;
    assert_eq!(
        wrong_key.status,
        StatusCode::UNAUTHORIZED,
        "{}",
        wrong_key.body
    );
    let by_key = answer(&process, "/users", &[("x-api-key", PARTNER_KEY)]).await?;
    assert_eq!(by_key.status, StatusCode::ACCEPTED, "{}", by_key.body);
    let by_token = answer(&process, "/users", &[("authorization", &token)]).await?;
    assert_eq!(by_token.status, StatusCode::ACCEPTED, "{}", by_token.body);

    // `auth = "none"` opens one producer despite the runtime default.
    let open = answer(&process, "/signups", &[]).await?;
    assert_eq!(open.status, StatusCode::ACCEPTED, "{}", open.body);

    let metrics = process.metrics().await?;
    let orders =
        |status: &str| metrics.count(REJECTED, &[("producer", "orders"), ("status", status)]);
    assert_eq!(orders("401"), 3, "{}", metrics.describe(REJECTED));
    assert_eq!(orders("403"), 1, "{}", metrics.describe(REJECTED));
    let users_rejected = metrics.count(REJECTED, &[("producer", "users")]);
    assert_eq!(users_rejected, 2, "{}", metrics.describe(REJECTED));
    assert_eq!(
        metrics.count(PUBLISHED, &[]),
        4,
        "{}",
        metrics.describe(PUBLISHED)
    );
    process.stop_cleanly().await?;

    // Only the four accepted requests reached the queue.
    assert_eq!(rabbitmq().depth(INBOX).await?, 4, "events in {INBOX}");
    rabbitmq().reset(&[&manifest]).await?;
    Ok(())
}

/// Returns a JSON object whose arrays nest `depth` levels deep in all.
fn nested(depth: usize) -> Value {
    let mut value = json!(1);
    for _ in 1..depth {
        value = json!([value]);
    }
    json!({ "nested": value })
}

#[tokio::test]
async fn json_depth_limit_default_and_setting() -> anyhow::Result<()> {
    let _serial = serial().await;
    let token = bearer(ORDERS_TOKEN);
    let auth = [("authorization", token.as_str())];
    for (setting, limit) in [("", 64), ("json_depth_limit = 8", 8)] {
        let dir = tempfile::tempdir()?;
        let manifest = write_manifest(dir.path(), setting)?;
        let options = RunOptions {
            env: secrets_env(),
            ..RunOptions::default()
        };
        let process = start(dir.path(), &manifest, &options).await?;

        let at_limit = post(&process, "/orders", &auth, &nested(limit)).await?;
        let at_limit = Answer::read(at_limit).await?;
        assert_eq!(
            at_limit.status,
            StatusCode::ACCEPTED,
            "depth {limit}: {}",
            at_limit.body
        );

        let over = post(&process, "/orders", &auth, &nested(limit + 1)).await?;
        let over = Answer::read(over).await?;
        assert_eq!(
            over.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "depth {}: {}",
            limit + 1,
            over.body
        );
        assert_eq!(over.content_type, "application/problem+json");
        let problem = over.json();
        assert_eq!(problem["limit"], limit, "{problem}");
        assert_eq!(problem["setting"], "runtime.json_depth_limit", "{problem}");
        let detail = problem["detail"].as_str().unwrap_or_default();
        assert!(
            detail.contains(&format!("limit of {limit} levels")),
            "{detail}"
        );
        assert!(detail.contains("`runtime.json_depth_limit`"), "{detail}");

        process.stop_cleanly().await?;
        assert_eq!(
            rabbitmq().depth(INBOX).await?,
            1,
            "events in {INBOX} with limit {limit}"
        );
        rabbitmq().reset(&[&manifest]).await?;
    }
    Ok(())
}

/// Returns a JSON object of exactly `size` bytes.
fn padded_body(size: usize) -> Vec<u8> {
    let frame = br#"{"pad": ""}"#.len();
    let padding = "x".repeat(size - frame);
    let body = format!(r#"{{"pad": "{padding}"}}"#).into_bytes();
    assert_eq!(body.len(), size);
    body
}

#[tokio::test]
async fn body_limit_names_limit_and_setting() -> anyhow::Result<()> {
    let _serial = serial().await;
    let dir = tempfile::tempdir()?;
    let manifest = write_manifest(dir.path(), "body_limit = \"1KiB\"")?;
    let options = RunOptions {
        env: secrets_env(),
        ..RunOptions::default()
    };
    let process = start(dir.path(), &manifest, &options).await?;
    let client = reqwest::Client::new();
    let send = |body: Vec<u8>, authorized: bool| {
        let mut request = client
            .post(process.url("/orders"))
            .header(CONTENT_TYPE, "application/json")
            .body(body);
        if authorized {
            request = request.header(AUTHORIZATION, bearer(ORDERS_TOKEN));
        }
        request.send()
    };

    let at_limit = Answer::read(send(padded_body(1024), true).await?).await?;
    assert_eq!(
        at_limit.status,
        StatusCode::ACCEPTED,
        "1024 bytes: {}",
        at_limit.body
    );

    let over = Answer::read(send(padded_body(1025), true).await?).await?;
    assert_eq!(
        over.status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "1025 bytes: {}",
        over.body
    );
    assert_eq!(over.content_type, "application/problem+json");
    let problem = over.json();
    assert_eq!(problem["limit"], 1024, "{problem}");
    assert_eq!(problem["setting"], "runtime.body_limit", "{problem}");

    // Without credentials, the size of the body does not matter.
    let unauthorized = Answer::read(send(padded_body(64 * 1024), false).await?).await?;
    assert_eq!(
        unauthorized.status,
        StatusCode::UNAUTHORIZED,
        "64 KiB without a token: {}",
        unauthorized.body
    );

    let metrics = process.metrics().await?;
    let rejected = |status: &str| metrics.count(REJECTED, &[("status", status)]);
    assert_eq!(rejected("413"), 1, "{}", metrics.describe(REJECTED));
    assert_eq!(rejected("401"), 1, "{}", metrics.describe(REJECTED));
    process.stop_cleanly().await?;
    assert_eq!(rabbitmq().depth(INBOX).await?, 1, "events in {INBOX}");
    rabbitmq().reset(&[&manifest]).await?;
    Ok(())
}

#[tokio::test]
async fn admin_listener_serves_probes_alone() -> anyhow::Result<()> {
    let _serial = serial().await;
    let dir = tempfile::tempdir()?;
    let manifest = write_manifest(dir.path(), "")?;
    let admin = free_loopback_address()?;
    let options = RunOptions {
        env: secrets_env(),
        args: vec!["--admin-listen".to_owned(), admin.to_string()],
        admin_address: Some(admin),
        ..RunOptions::default()
    };
    let process = start(dir.path(), &manifest, &options).await?;
    let client = reqwest::Client::new();

    for path in ["/healthz", "/readyz", "/metrics"] {
        let on_admin = client.get(format!("http://{admin}{path}")).send().await?;
        assert_eq!(
            on_admin.status(),
            StatusCode::OK,
            "GET {path} on the admin address"
        );
        let on_producers = client.get(process.url(path)).send().await?;
        assert_eq!(
            on_producers.status(),
            StatusCode::NOT_FOUND,
            "GET {path} on the producer address"
        );
    }
    let metrics = client
        .get(format!("http://{admin}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    assert!(metrics.contains("switchyard_broker_connected"), "{metrics}");

    let token = bearer(ORDERS_TOKEN);
    let on_admin = client
        .post(format!("http://{admin}/orders"))
        .header(AUTHORIZATION, &token)
        .json(&json!({}))
        .send()
        .await?;
    assert_eq!(
        on_admin.status(),
        StatusCode::NOT_FOUND,
        "POST /orders on the admin address"
    );
    let accepted = answer(&process, "/orders", &[("authorization", &token)]).await?;
    assert_eq!(accepted.status, StatusCode::ACCEPTED, "{}", accepted.body);

    process.stop_cleanly().await?;
    rabbitmq().reset(&[&manifest]).await?;
    Ok(())
}

/// Reads from `stream` until the server closes it or `timeout` passes, and
/// returns what arrived and whether the server closed the connection.
async fn read_until_closed(
    stream: &mut (impl AsyncRead + Unpin),
    timeout: Duration,
) -> (String, bool) {
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                return (String::from_utf8_lossy(&received).into_owned(), true);
            }
            Ok(Ok(read)) => received.extend_from_slice(&buffer[..read]),
            Err(_) => return (String::from_utf8_lossy(&received).into_owned(), false),
        }
    }
}

#[tokio::test]
async fn slow_clients_cut_off() -> anyhow::Result<()> {
    let _serial = serial().await;
    let dir = tempfile::tempdir()?;
    let runtime = "header_timeout = \"1s\"\nbody_timeout = \"1s\"";
    let manifest = write_manifest(dir.path(), runtime)?;
    let options = RunOptions {
        env: secrets_env(),
        ..RunOptions::default()
    };
    let process = start(dir.path(), &manifest, &options).await?;
    let address = process.address();
    let timeout = Duration::from_secs(1);

    // Clients that stop in the middle of their headers.
    let started = Instant::now();
    let mut slow_headers = Vec::new();
    for _ in 0..20 {
        let mut stream = TcpStream::connect(address).await?;
        stream
            .write_all(b"POST /signups HTTP/1.1\r\nHost: switchyard\r\nContent-Type: appl")
            .await?;
        slow_headers.push(stream);
    }
    // A client that sends its headers and stops after 10 of 100 bytes.
    let mut slow_body = TcpStream::connect(address).await?;
    let head = format!(
        "POST /orders HTTP/1.1\r\nHost: switchyard\r\nAuthorization: Bearer {ORDERS_TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"n\": 1, "
    );
    slow_body.write_all(head.as_bytes()).await?;

    // A client that keeps its connection after a request and stays idle.
    let mut idle = TcpStream::connect(address).await?;
    let request = "POST /signups HTTP/1.1\r\nHost: switchyard\r\n\
                   Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}";
    idle.write_all(request.as_bytes()).await?;

    // Meanwhile, other clients are served.
    let served = answer(&process, "/signups", &[]).await?;
    assert_eq!(served.status, StatusCode::ACCEPTED, "{}", served.body);
    assert!(
        started.elapsed() < timeout,
        "a request took {:?} while slow clients were connected",
        started.elapsed()
    );

    let (response, closed) = read_until_closed(&mut slow_body, Duration::from_secs(10)).await;
    assert!(
        response.starts_with("HTTP/1.1 408"),
        "slow body got: {response}"
    );
    assert!(response.contains("application/problem+json"), "{response}");
    assert!(response.contains("`runtime.body_timeout`"), "{response}");
    assert!(closed, "the connection of the slow body stays open");
    let body_cut_after = started.elapsed();
    assert!(
        body_cut_after >= timeout,
        "slow body cut after {body_cut_after:?}"
    );

    for (index, stream) in slow_headers.iter_mut().enumerate() {
        let (response, closed) = read_until_closed(stream, Duration::from_secs(10)).await;
        assert!(closed, "slow headers {index}: connection still open");
        assert_eq!(response, "", "slow headers {index}: answered");
    }
    let headers_cut_after = started.elapsed();
    assert!(
        headers_cut_after >= timeout,
        "slow headers cut after {headers_cut_after:?}"
    );
    assert!(
        headers_cut_after < Duration::from_secs(10),
        "slow headers cut after {headers_cut_after:?}"
    );

    // The header deadline counts again from the end of each request.
    let (response, closed) = read_until_closed(&mut idle, Duration::from_secs(10)).await;
    assert!(
        response.starts_with("HTTP/1.1 202"),
        "idle client got: {response}"
    );
    assert!(closed, "the idle connection stays open");

    let served = answer(&process, "/signups", &[]).await?;
    assert_eq!(
        served.status,
        StatusCode::ACCEPTED,
        "after the cut: {}",
        served.body
    );
    process.stop_cleanly().await?;
    assert_eq!(rabbitmq().depth(INBOX).await?, 3, "events in {INBOX}");
    rabbitmq().reset(&[&manifest]).await?;
    Ok(())
}

/// A client that sends requests and reads none of the responses is cut off
/// once a response has waited `write_timeout` to be read. So it keeps
/// neither its connection nor the server busy.
#[tokio::test]
async fn client_that_stops_reading_cut_off() -> anyhow::Result<()> {
    let _serial = serial().await;
    let dir = tempfile::tempdir()?;
    // The header deadline is far away, so it cannot be what closes the
    // connection.
    let runtime = "header_timeout = \"60s\"\nwrite_timeout = \"1s\"";
    let manifest = write_manifest(dir.path(), runtime)?;
    let options = RunOptions {
        env: secrets_env(),
        ..RunOptions::default()
    };
    let process = start(dir.path(), &manifest, &options).await?;

    // A small receive buffer, so that unread responses back up soon. The
    // server's send buffer grows to 4 MiB on Linux by default, and the
    // requests below ask for more than that.
    let socket = TcpSocket::new_v4()?;
    socket.set_recv_buffer_size(4096)?;
    let (mut reader, mut writer) = socket.connect(process.address()).await?.into_split();
    const REQUESTS: usize = 40_000;
    let requests = "GET /metrics HTTP/1.1\r\nHost: switchyard\r\n\r\n".repeat(REQUESTS);
    let sender = tokio::spawn(async move {
        // The server may close the connection before it has read them all.
        let _ = writer.write_all(requests.as_bytes()).await;
        writer
    });
    tokio::time::sleep(Duration::from_secs(3)).await;

    let served = answer(&process, "/signups", &[]).await?;
    assert_eq!(served.status, StatusCode::ACCEPTED, "{}", served.body);

    let (received, closed) = read_until_closed(&mut reader, Duration::from_secs(10)).await;
    let answered = received.matches("HTTP/1.1 200").count();
    assert!(
        closed,
        "the connection of a client that read nothing for 3 s stays open \
         ({answered} responses, {} bytes read)",
        received.len()
    );
    assert!(
        answered < REQUESTS,
        "all {REQUESTS} requests were answered, so the server never waited on the client"
    );
    sender.abort();
    process.stop_cleanly().await?;
    rabbitmq().reset(&[&manifest]).await?;
    Ok(())
}

/// Runs the switchyard binary with `args` and `env` and returns its exit
/// code, stdout and stderr as one text.
async fn run_command(args: &[&str], env: &[(String, String)]) -> anyhow::Result<String> {
    let binary = tokio::task::spawn_blocking(switchyard_binary).await?;
    let output = tokio::process::Command::new(binary)
        .args(args)
        .envs(env.iter().map(|(name, value)| (name, value)))
        .env_remove("SWITCHYARD_LISTEN")
        .current_dir(repo_root())
        .output()
        .await?;
    Ok(format!(
        "exit: {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    ))
}

/// Everything one part of the run wrote or served, by a name for failure
/// messages.
type Outputs = Vec<(String, String)>;

/// One run of the reference system with secrets of its own.
struct ShopRun<'a> {
    dir: &'a Path,
    manifests: &'a [PathBuf],
    env: Vec<(String, String)>,
    /// The producers' bearer token.
    token: &'a str,
    /// The broker URL, with the RabbitMQ user's password.
    url: String,
    /// Address of the probes and `/metrics`.
    admin: std::net::SocketAddr,
}

/// Starts the reference system with the bearer token on every request of
/// the process's own client, without waiting for readiness.
async fn spawn_shop(run: &ShopRun<'_>) -> anyhow::Result<Switchyard> {
    let options = RunOptions {
        env: run.env.clone(),
        admin_address: Some(run.admin),
        headers: vec![("Authorization".to_owned(), bearer(run.token))],
        ..RunOptions::default()
    };
    let mode = BrokerMode::Url(run.url.clone());
    Switchyard::spawn_with_options(run.dir, run.manifests, mode, &options).await
}

/// Runs the reference system with a token and a RabbitMQ user of its own
/// and collects its outputs: the log at debug level, the responses to
/// rejected requests, `/readyz` and `/metrics` on the admin address.
async fn run_shop_with_secrets(run: &ShopRun<'_>) -> anyhow::Result<Outputs> {
    let token = run.token;
    let mut process = spawn_shop(run).await?;
    process.wait_ready().await?;
    shop::run_flow(&process).await?;

    let mut outputs = Outputs::new();
    // A wrong token that contains the right one, so that echoing the
    // presented token would show the secret too.
    let wrong = bearer(&format!("{token}-wrong"));
    for (name, headers) in [
        ("401 wrong token", vec![("authorization", wrong.as_str())]),
        ("401 no token", vec![]),
    ] {
        let response = post(&process, "/orders", &headers, &shop::order_body()).await?;
        let answer = Answer::read(response).await?;
        assert_eq!(
            answer.status,
            StatusCode::UNAUTHORIZED,
            "{name}: {}",
            answer.body
        );
        let text = format!("{:?}\n{}", answer.challenges, answer.body);
        outputs.push((name.to_owned(), text));
    }
    for path in ["/readyz", "/metrics"] {
        let body = process.get(path).await?.text().await?;
        outputs.push((format!("GET {path}"), body));
    }
    let stopped = process.stop_cleanly().await?;
    outputs.push(("log of up".to_owned(), stopped.stderr));
    Ok(outputs)
}

/// Runs the reference system with a wrong RabbitMQ password and collects
/// its log, `/readyz` and the 503 of a producer.
async fn run_shop_with_wrong_password(run: &ShopRun<'_>) -> anyhow::Result<Outputs> {
    let process = spawn_shop(run).await?;
    // Long enough for a few failed logins.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut outputs = Outputs::new();
    let readiness = process.get("/readyz").await?.text().await?;
    outputs.push(("GET /readyz, wrong password".to_owned(), readiness));
    let authorization = bearer(run.token);
    let headers = [("authorization", authorization.as_str())];
    let response = post(&process, "/orders", &headers, &shop::order_body()).await?;
    let answer = Answer::read(response).await?;
    assert_eq!(
        answer.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        answer.body
    );
    outputs.push(("503, wrong password".to_owned(), answer.body));
    let stopped = process.stop_cleanly().await?;
    outputs.push(("log of up, wrong password".to_owned(), stopped.stderr));
    Ok(outputs)
}

#[tokio::test]
async fn secrets_never_leak() -> anyhow::Result<()> {
    let _serial = serial().await;
    for handler in ["email", "inventory", "analytics"] {
        component(&format!("handlers/{handler}.wasm"))?;
    }
    let shop = shop_manifest();
    rabbitmq().reset(&[&shop]).await?;
    let vhost = rabbitmq().vhost.clone();
    let user = format!("{vhost}-secrets");
    let suffix = unique_suffix();
    let password = format!("pw-{suffix}");
    let token = format!("tok-{suffix}");
    rabbitmqctl(&["add_user", &user, &password]).map_err(anyhow::Error::msg)?;
    let granted = rabbitmqctl(&["set_permissions", "-p", &vhost, &user, ".*", ".*", ".*"])
        .map_err(anyhow::Error::msg);

    // shop.toml, plus a file that requires the token on every producer
    // and moves the probes and metrics to an admin address.
    let dir = tempfile::tempdir()?;
    let admin = free_loopback_address()?;
    let repo = repo_root();
    let auth_manifest = dir.path().join("auth.toml");
    std::fs::write(
        &auth_manifest,
        format!(
            "[runtime]\nauth = [\"shop-client\"]\nadmin_listen = \"${{ADMIN_LISTEN}}\"\n\
             schemas = {}\nhandlers = {}\n\n[credentials.shop-client]\nbearer = \"${{SHOP_TOKEN}}\"\n",
            toml_string(&repo.join("schemas").to_string_lossy()),
            toml_string(&repo.join("handlers").to_string_lossy()),
        ),
    )?;
    let manifests = [shop.clone(), auth_manifest.clone()];
    let url = format!("amqp://{user}:{password}@127.0.0.1:5672/{vhost}");
    let wrong_url = format!("amqp://{user}:wrong-{password}@127.0.0.1:5672/{vhost}");
    let env = |url: &str| {
        vec![
            ("RUST_LOG".to_owned(), "debug".to_owned()),
            ("RABBITMQ_URL".to_owned(), url.to_owned()),
            ("SHOP_TOKEN".to_owned(), token.clone()),
            ("ADMIN_LISTEN".to_owned(), admin.to_string()),
        ]
    };

    let outcome = async {
        granted?;
        let run = ShopRun {
            dir: dir.path(),
            manifests: &manifests,
            env: env(&url),
            token: &token,
            url: url.clone(),
            admin,
        };
        let mut outputs = run_shop_with_secrets(&run).await?;
        let wrong_run = ShopRun {
            env: env(&wrong_url),
            url: wrong_url.clone(),
            ..run
        };
        let wrong = run_shop_with_wrong_password(&wrong_run).await?;
        outputs.extend(wrong);

        let paths: Vec<String> = manifests
            .iter()
            .map(|path| path.to_string_lossy().into_owned())
            .collect();
        let with = |command: &[&str]| -> Vec<String> {
            let mut args: Vec<String> = command.iter().map(|arg| (*arg).to_owned()).collect();
            args.extend(paths.iter().cloned());
            args
        };
        let commands = [
            ("plan", with(&["plan"]), env(&url)),
            ("plan, wrong password", with(&["plan"]), env(&wrong_url)),
            ("check", with(&["check"]), env(&url)),
            ("asyncapi", with(&["asyncapi"]), env(&url)),
            (
                "publish, wrong password",
                {
                    let mut args = with(&[
                        "publish",
                        "--data",
                        r#"{"email": "ada@example.com", "name": "Ada"}"#,
                    ]);
                    args.push("user.created".to_owned());
                    args
                },
                env(&wrong_url),
            ),
        ];
        for (name, args, env) in commands {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            outputs.push((name.to_owned(), run_command(&args, &env).await?));
        }
        anyhow::Ok(outputs)
    }
    .await;
    rabbitmqctl(&["delete_user", &user]).map_err(anyhow::Error::msg)?;
    let outputs = outcome?;

    let plan = &outputs
        .iter()
        .find(|(name, _)| name == "plan")
        .expect("plan ran")
        .1;
    assert!(
        plan.contains("exit: Some(0)"),
        "plan with the right password failed: {plan}"
    );
    let log = &outputs
        .iter()
        .find(|(name, _)| name == "log of up")
        .expect("up ran")
        .1;
    assert!(log.contains("\"DEBUG\""), "no debug lines in the log of up");
    for (name, text) in &outputs {
        let leaked = |secret: &str| -> Vec<&str> {
            text.lines().filter(|line| line.contains(secret)).collect()
        };
        let password_lines = leaked(&password);
        assert!(
            password_lines.is_empty(),
            "the RabbitMQ password is in {name}: {password_lines:#?}"
        );
        let token_lines = leaked(&token);
        assert!(
            token_lines.is_empty(),
            "the producer token is in {name}: {token_lines:#?}"
        );
    }
    rabbitmq().reset(&[&shop]).await?;
    Ok(())
}
