//! Encrypted broker links against real servers. Each test makes its own CA
//! and certificates with rcgen and its own vhost. For AMQP it starts stunnel4
//! on a free loopback port in front of the local RabbitMQ, so `amqps://`
//! reaches RabbitMQ through a TLS server that the test controls. For Kafka
//! it starts tansu behind stunnel4, with tansu advertising stunnel's port.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::Value;
use switchyard_tests::shop::{self, HANDLED};
use switchyard_tests::{
    BrokerMode, IssuedCertificate, PlanOutput, ScopedVhost, Stunnel, Switchyard, Tansu, TestCa,
    free_port, repo_root, run_plan, serial, shop_manifest, streaming_manifest,
};

/// Address of the local RabbitMQ node that stunnel forwards to.
const RABBITMQ_ADDRESS: &str = "127.0.0.1:5672";

/// Maximum wait for the Kafka consumer to handle the events of a flow.
const KAFKA_TIMEOUT: Duration = Duration::from_secs(60);

/// Maximum wait for `/readyz` to name a failed TLS connection.
const READINESS_TIMEOUT: Duration = Duration::from_secs(30);

/// A test's folder: the CA and certificates, the manifests, and the logs.
struct Fixture {
    dir: tempfile::TempDir,
    ca: TestCa,
    server: IssuedCertificate,
    client: IssuedCertificate,
    /// A second CA that signed nothing the servers use.
    other_ca: TestCa,
}

impl Fixture {
    fn new() -> anyhow::Result<Fixture> {
        let dir = tempfile::tempdir()?;
        let certs = dir.path().join("certs");
        std::fs::create_dir(&certs)?;
        let ca = TestCa::create(&certs, "ca")?;
        let server = ca.issue_server("server")?;
        let client = ca.issue_client("client")?;
        let other_ca = TestCa::create(&certs, "other-ca")?;
        Ok(Fixture {
            dir,
            ca,
            server,
            client,
            other_ca,
        })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a copy of a manifest into the fixture's folder with `settings`
    /// (`tls`, `sasl`) added to `broker`, and with the schema and handler
    /// folders of the repository. Relative paths in `tls` resolve against
    /// the fixture's folder.
    fn manifest(
        &self,
        source: &Path,
        broker: &str,
        settings: toml::Table,
    ) -> anyhow::Result<PathBuf> {
        let text = std::fs::read_to_string(source)
            .with_context(|| format!("cannot read `{}`", source.display()))?;
        let mut manifest: toml::Table = text.parse()?;
        let runtime = manifest
            .entry("runtime")
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .context("`runtime` is a table")?;
        let repo = repo_root();
        for folder in ["schemas", "handlers"] {
            let path = repo.join(folder).display().to_string();
            runtime.insert(folder.to_owned(), toml::Value::String(path));
        }
        manifest["brokers"][broker]
            .as_table_mut()
            .with_context(|| format!("`{}` has no broker `{broker}`", source.display()))?
            .extend(settings);
        let name = source.file_name().context("the manifest has a file name")?;
        let path = self.path().join(name);
        std::fs::write(&path, toml::to_string(&manifest)?)?;
        Ok(path)
    }

    /// Starts stunnel in front of RabbitMQ with the fixture's server
    /// certificate. With `require_client_certificate`, stunnel requires a
    /// client certificate signed by the fixture's CA.
    async fn stunnel(&self, require_client_certificate: bool) -> anyhow::Result<Stunnel> {
        let client_ca = require_client_certificate.then_some(self.ca.cert.as_path());
        Stunnel::start(self.path(), &self.server, client_ca, RABBITMQ_ADDRESS).await
    }

    /// Writes shop.toml with `tls` on its broker `rabbit`.
    fn shop_manifest(&self, tls: toml::Table) -> anyhow::Result<PathBuf> {
        self.manifest(&shop_manifest(), "rabbit", broker_settings(tls, None))
    }

    /// Starts tansu with `extra_args` behind stunnel, which serves TLS with
    /// the fixture's server certificate. tansu advertises stunnel's port,
    /// so every client connection goes through TLS. tansu 0.6 accepts
    /// `--cert` and `--key` but serves plain text with them, which is why
    /// stunnel does the TLS.
    async fn kafka_behind_tls(&self, extra_args: &[&str]) -> anyhow::Result<(Tansu, Stunnel)> {
        let port = free_port()?;
        let forward_to = format!("127.0.0.1:{port}");
        let stunnel = Stunnel::start(self.path(), &self.server, None, &forward_to).await?;
        let tansu = Tansu::start_with(self.path(), port, stunnel.port(), extra_args).await?;
        Ok((tansu, stunnel))
    }

    /// Writes streaming.toml with `tls`, and `sasl` if given, on its broker
    /// `stream`.
    fn streaming_manifest(
        &self,
        tls: toml::Table,
        sasl: Option<toml::Table>,
    ) -> anyhow::Result<PathBuf> {
        self.manifest(&streaming_manifest(), "stream", broker_settings(tls, sasl))
    }
}

/// Returns the keys to add to a broker table: `tls`, and `sasl` if given.
fn broker_settings(tls: toml::Table, sasl: Option<toml::Table>) -> toml::Table {
    let mut settings = toml::Table::new();
    settings.insert("tls".to_owned(), toml::Value::Table(tls));
    if let Some(sasl) = sasl {
        settings.insert("sasl".to_owned(), toml::Value::Table(sasl));
    }
    settings
}

/// Returns a `sasl` table for the user `switchyard`.
fn sasl_table(mechanism: &str, password: &str) -> toml::Table {
    string_table(&[
        ("mechanism", mechanism),
        ("username", "switchyard"),
        ("password", password),
    ])
}

/// Returns a table of string values, such as a `tls` or `sasl` table.
fn string_table(entries: &[(&str, &str)]) -> toml::Table {
    entries
        .iter()
        .map(|(key, value)| ((*key).to_owned(), toml::Value::String((*value).to_owned())))
        .collect()
}

/// Returns the AMQP URL of `vhost` on a local port.
fn amqp_url(scheme: &str, port: u16, vhost: &ScopedVhost) -> String {
    format!(
        "{scheme}://{AMQP_CREDENTIALS}@127.0.0.1:{port}/{}",
        vhost.name
    )
}

/// Runs `switchyard plan` with `RABBITMQ_URL` and returns its output with
/// the time it took.
async fn plan(
    manifest: &Path,
    url: &str,
    env: &[(&str, &str)],
) -> anyhow::Result<(PlanOutput, Duration)> {
    plan_all(&[manifest.to_owned()], url, env).await
}

/// Runs `switchyard plan` on several manifests with `RABBITMQ_URL`.
async fn plan_all(
    manifests: &[PathBuf],
    url: &str,
    env: &[(&str, &str)],
) -> anyhow::Result<(PlanOutput, Duration)> {
    let mut all_env = vec![("RABBITMQ_URL", url)];
    all_env.extend_from_slice(env);
    let started = Instant::now();
    let output = run_plan(manifests, &all_env).await?;
    Ok((output, started.elapsed()))
}

/// User and password in every AMQP URL that `amqp_url` makes.
const AMQP_CREDENTIALS: &str = "guest:guest";

/// Checks that `plan` exited 1 with an error that contains each of
/// `texts` and not the broker password of `amqp_url`.
fn assert_rejected(output: &PlanOutput, texts: &[&str]) {
    assert_rejected_without(output, texts, AMQP_CREDENTIALS);
}

/// Checks that `plan` exited 1 with an error that contains each of
/// `texts` and not `secret`.
fn assert_rejected_without(output: &PlanOutput, texts: &[&str], secret: &str) {
    assert_eq!(
        output.code, 1,
        "exit code of plan; stderr:\n{}",
        output.stderr
    );
    for text in texts {
        assert!(
            output.stderr.contains(text),
            "plan's error lacks {text:?}:\n{}",
            output.stderr
        );
    }
    assert!(
        !output.stderr.contains(secret),
        "plan's error shows the password:\n{}",
        output.stderr
    );
}

/// Polls `/readyz` until the detail of `check` contains `text`, and returns
/// that detail.
async fn wait_for_readiness_detail(
    process: &Switchyard,
    check: &str,
    text: &str,
) -> anyhow::Result<String> {
    let started = Instant::now();
    let mut last = Value::Null;
    while started.elapsed() < READINESS_TIMEOUT {
        if let Ok(response) = process.get("/readyz").await {
            last = response.json().await.unwrap_or(Value::Null);
            if let Some(detail) = last["checks"][check]["detail"].as_str()
                && detail.contains(text)
            {
                return Ok(detail.to_owned());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!(
        "`{check}` in /readyz did not mention {text:?} within {READINESS_TIMEOUT:?}; last \
         /readyz: {last}\nstderr:\n{}",
        process.stderr_tail(30)
    )
}

#[tokio::test]
async fn amqps_flow_with_manifest_ca() -> anyhow::Result<()> {
    let _serial = serial().await;
    let fixture = Fixture::new()?;
    let vhost = ScopedVhost::create("amqps-flow")?;
    let stunnel = fixture.stunnel(false).await?;
    // A path relative to the manifest's folder.
    let manifest = fixture.shop_manifest(string_table(&[("ca", "certs/ca.pem")]))?;
    let url = amqp_url("amqps", stunnel.port(), &vhost);

    let process = Switchyard::start(fixture.path(), &[manifest], BrokerMode::Url(url)).await?;
    // stunnel serves nothing but TLS on its port, so every publish and
    // delivery of the flow went through TLS.
    shop::run_flow(&process).await?;
    let stopped = process.stop_cleanly().await?;
    assert!(
        !stopped.stderr.contains(AMQP_CREDENTIALS),
        "the broker password is in the log:\n{}",
        stopped.stderr
    );
    stunnel.stop().await
}

#[tokio::test]
async fn amqps_wrong_ca_rejected() -> anyhow::Result<()> {
    let _serial = serial().await;
    let fixture = Fixture::new()?;
    let vhost = ScopedVhost::create("wrong-ca")?;
    let stunnel = fixture.stunnel(false).await?;
    let ca = fixture.other_ca.cert.display().to_string();
    let manifest = fixture.shop_manifest(string_table(&[("ca", &ca)]))?;
    let url = amqp_url("amqps", stunnel.port(), &vhost);

    let (output, _) = plan(&manifest, &url, &[]).await?;
    let redacted = format!("amqps://guest:***@127.0.0.1:{}/", stunnel.port());
    let expected = [
        "broker `rabbit`",
        redacted.as_str(),
        "not signed by a trusted CA",
        "set `tls.ca` of broker `rabbit`",
    ];
    assert_rejected(&output, &expected);

    // `up` keeps retrying and names the cause in /readyz.
    let process =
        Switchyard::spawn(fixture.path(), &[manifest], BrokerMode::Url(url.clone())).await?;
    let detail =
        wait_for_readiness_detail(&process, "broker:rabbit", "not signed by a trusted CA").await?;
    assert!(
        !detail.contains(AMQP_CREDENTIALS),
        "/readyz shows the password: {detail}"
    );
    process.stop_cleanly().await?;
    stunnel.stop().await
}

#[tokio::test]
async fn plain_amqp_to_tls_port_rejected() -> anyhow::Result<()> {
    let _serial = serial().await;
    let fixture = Fixture::new()?;
    let vhost = ScopedVhost::create("plain-to-tls")?;
    let stunnel = fixture.stunnel(false).await?;
    let url = amqp_url("amqp", stunnel.port(), &vhost);

    let (output, took) = plan(&shop_manifest(), &url, &[]).await?;
    assert_rejected(&output, &["broker `rabbit`", "use an `amqps://` URL"]);
    // The connection attempt fails when stunnel resets it, well before the
    // 10 s connection timeout.
    assert!(
        took < Duration::from_secs(8),
        "plan took {took:?} to fail; stderr:\n{}",
        output.stderr
    );
    stunnel.stop().await
}

#[tokio::test]
async fn amqps_to_plain_port_rejected() -> anyhow::Result<()> {
    let _serial = serial().await;
    let fixture = Fixture::new()?;
    let vhost = ScopedVhost::create("tls-to-plain")?;
    let manifest = fixture.shop_manifest(string_table(&[("ca", "certs/ca.pem")]))?;
    // RabbitMQ's plain-text port.
    let url = amqp_url("amqps", 5672, &vhost);

    let (output, _) = plan(&manifest, &url, &[]).await?;
    let expected = [
        "broker `rabbit`",
        "did not answer with TLS",
        "use the broker's TLS port",
    ];
    assert_rejected(&output, &expected);
    Ok(())
}

#[tokio::test]
async fn amqps_tls_table_with_plain_url_rejected() -> anyhow::Result<()> {
    let _serial = serial().await;
    let fixture = Fixture::new()?;
    let manifest = fixture.shop_manifest(string_table(&[("ca", "certs/ca.pem")]))?;
    // Nothing needs to listen: the manifest is rejected before connecting.
    // The error quotes the URL as the manifest writes it, whose default
    // contains `guest:guest`, so the secret to look for is another one.
    let password = "amqp-password-5e02";
    let url = format!("amqp://guest:{password}@127.0.0.1:1/%2f");

    let (output, _) = plan(&manifest, &url, &[]).await?;
    assert_rejected_without(&output, &["tls-without-amqps", "`amqps://`"], password);
    Ok(())
}

#[tokio::test]
async fn client_certificate_accepted() -> anyhow::Result<()> {
    let _serial = serial().await;
    let fixture = Fixture::new()?;
    let vhost = ScopedVhost::create("client-cert")?;
    let stunnel = fixture.stunnel(true).await?;
    // The certificate and key paths come from the environment.
    let manifest = fixture.shop_manifest(string_table(&[
        ("ca", "certs/ca.pem"),
        ("cert", "${TEST_CLIENT_CERT}"),
        ("key", "${TEST_CLIENT_KEY}"),
    ]))?;
    let url = amqp_url("amqps", stunnel.port(), &vhost);
    let cert = fixture.client.cert.display().to_string();
    let key = fixture.client.key.display().to_string();
    let env = [
        ("TEST_CLIENT_CERT", cert.as_str()),
        ("TEST_CLIENT_KEY", key.as_str()),
    ];

    let process =
        Switchyard::start_with_env(fixture.path(), &[manifest], BrokerMode::Url(url), &env).await?;
    shop::run_flow(&process).await?;
    process.stop_cleanly().await?;
    let log = stunnel.output();
    assert!(
        log.contains("Certificate accepted"),
        "stunnel did not log an accepted client certificate:\n{log}"
    );
    stunnel.stop().await
}

#[tokio::test]
async fn client_certificate_missing_rejected() -> anyhow::Result<()> {
    let _serial = serial().await;
    let fixture = Fixture::new()?;
    let vhost = ScopedVhost::create("no-client-cert")?;
    let stunnel = fixture.stunnel(true).await?;
    let manifest = fixture.shop_manifest(string_table(&[("ca", "certs/ca.pem")]))?;
    let url = amqp_url("amqps", stunnel.port(), &vhost);

    let (output, _) = plan(&manifest, &url, &[]).await?;
    let expected = [
        "requires a client certificate",
        "set `tls.cert` and `tls.key`",
    ];
    assert_rejected(&output, &expected);
    stunnel.stop().await
}

#[tokio::test]
async fn client_certificate_of_other_ca_rejected() -> anyhow::Result<()> {
    let _serial = serial().await;
    let fixture = Fixture::new()?;
    let vhost = ScopedVhost::create("other-client-cert")?;
    let stunnel = fixture.stunnel(true).await?;
    let stranger = fixture.other_ca.issue_client("stranger")?;
    let cert = stranger.cert.display().to_string();
    let key = stranger.key.display().to_string();
    let manifest = fixture.shop_manifest(string_table(&[
        ("ca", "certs/ca.pem"),
        ("cert", &cert),
        ("key", &key),
    ]))?;
    let url = amqp_url("amqps", stunnel.port(), &vhost);

    let (output, _) = plan(&manifest, &url, &[]).await?;
    assert_rejected(&output, &["rejected the client certificate"]);
    stunnel.stop().await
}

/// Posts two orders and a user and waits until the Kafka consumer
/// `analytics-stream` handled all three.
async fn run_kafka_flow(process: &Switchyard) -> anyhow::Result<()> {
    process.publish("/orders", &shop::order_body()).await?;
    process.publish("/orders", &shop::order_body()).await?;
    process.publish("/users", &shop::user_body()).await?;
    let ok = [("consumer", "analytics-stream"), ("outcome", "ok")];
    process
        .wait_for_count(HANDLED, &ok, 3, KAFKA_TIMEOUT)
        .await?;
    Ok(())
}

#[tokio::test]
async fn kafka_ssl_flow() -> anyhow::Result<()> {
    let _serial = serial().await;
    let fixture = Fixture::new()?;
    let vhost = ScopedVhost::create("kafka-ssl")?;
    let (tansu, stunnel) = fixture.kafka_behind_tls(&[]).await?;
    let streaming = fixture.streaming_manifest(string_table(&[("ca", "certs/ca.pem")]), None)?;
    let bootstrap = format!("127.0.0.1:{}", stunnel.port());
    let url = amqp_url("amqp", 5672, &vhost);

    let manifests = [shop_manifest(), streaming];
    let env = [("KAFKA_BOOTSTRAP", bootstrap.as_str())];
    let process =
        Switchyard::start_with_env(fixture.path(), &manifests, BrokerMode::Url(url), &env).await?;
    run_kafka_flow(&process).await?;
    process.stop_cleanly().await?;
    stunnel.stop().await?;
    drop(tansu);
    Ok(())
}

/// tansu 0.6.0 with `--authentication` offers only SCRAM-SHA-512,
/// SCRAM-SHA-256 and OAUTHBEARER and closes the connection on a PLAIN
/// handshake: this checks how switchyard reports that.
#[tokio::test]
async fn kafka_sasl_plain_unsupported_reported() -> anyhow::Result<()> {
    let _serial = serial().await;
    let fixture = Fixture::new()?;
    let vhost = ScopedVhost::create("kafka-sasl")?;
    let (tansu, stunnel) = fixture.kafka_behind_tls(&["--authentication"]).await?;
    let sasl = sasl_table("PLAIN", "${TEST_KAFKA_PASSWORD}");
    let streaming =
        fixture.streaming_manifest(string_table(&[("ca", "certs/ca.pem")]), Some(sasl))?;
    let bootstrap = format!("127.0.0.1:{}", stunnel.port());
    let url = amqp_url("amqp", 5672, &vhost);
    let password = "kafka-password-7c1f";

    let manifests = [shop_manifest(), streaming];
    let env = [
        ("KAFKA_BOOTSTRAP", bootstrap.as_str()),
        ("TEST_KAFKA_PASSWORD", password),
    ];
    let (output, _) = plan_all(&manifests, &url, &env).await?;
    let expected = [
        "broker `stream`",
        "SASL PLAIN mechanism handshake failed",
        "set `sasl.mechanism` of broker `stream`",
    ];
    assert_rejected_without(&output, &expected, password);
    stunnel.stop().await?;
    drop(tansu);
    Ok(())
}

#[tokio::test]
async fn kafka_wrong_ca_rejected() -> anyhow::Result<()> {
    let _serial = serial().await;
    let fixture = Fixture::new()?;
    let vhost = ScopedVhost::create("kafka-wrong-ca")?;
    let (tansu, stunnel) = fixture.kafka_behind_tls(&[]).await?;
    let ca = fixture.other_ca.cert.display().to_string();
    let streaming = fixture.streaming_manifest(string_table(&[("ca", &ca)]), None)?;
    let bootstrap = format!("127.0.0.1:{}", stunnel.port());
    let url = amqp_url("amqp", 5672, &vhost);

    let manifests = [shop_manifest(), streaming];
    let env = [("KAFKA_BOOTSTRAP", bootstrap.as_str())];
    let (output, _) = plan_all(&manifests, &url, &env).await?;
    let expected = [
        "broker `stream`",
        "certificate verify failed",
        "set `tls.ca` of broker `stream`",
    ];
    assert_rejected(&output, &expected);
    stunnel.stop().await?;
    drop(tansu);
    Ok(())
}

/// tansu's in-memory storage (`DynoStore` in tansu-storage 0.6.0) cannot
/// hold a SCRAM user: it accepts AlterUserScramCredentials without storing
/// anything and finds no credential at login. This checks how switchyard
/// reports the failed login over `SASL_SSL`, with the password written in
/// the manifest.
#[tokio::test]
async fn kafka_scram_rejected_login_reported() -> anyhow::Result<()> {
    let _serial = serial().await;
    let fixture = Fixture::new()?;
    let vhost = ScopedVhost::create("kafka-scram")?;
    let (tansu, stunnel) = fixture.kafka_behind_tls(&["--authentication"]).await?;
    let password = "kafka-password-93ad";
    let sasl = sasl_table("SCRAM-SHA-256", password);
    let streaming =
        fixture.streaming_manifest(string_table(&[("ca", "certs/ca.pem")]), Some(sasl))?;
    let bootstrap = format!("127.0.0.1:{}", stunnel.port());
    let url = amqp_url("amqp", 5672, &vhost);

    let manifests = [shop_manifest(), streaming];
    let env = [("KAFKA_BOOTSTRAP", bootstrap.as_str())];
    assert_sasl_login_rejected(&fixture, &manifests, &url, &env, password).await?;
    stunnel.stop().await?;
    drop(tansu);
    Ok(())
}

/// The same rejected login as `kafka_scram_rejected_login_reported`, over
/// `SASL_PLAINTEXT` straight to tansu with `SCRAM-SHA-512` and the password
/// read from `${VAR}`.
#[tokio::test]
async fn kafka_sasl_plaintext_rejected_login_reported() -> anyhow::Result<()> {
    let _serial = serial().await;
    let fixture = Fixture::new()?;
    let vhost = ScopedVhost::create("kafka-sasl-plaintext")?;
    let port = free_port()?;
    let tansu = Tansu::start_with(fixture.path(), port, port, &["--authentication"]).await?;
    let sasl = sasl_table("SCRAM-SHA-512", "${TEST_KAFKA_PASSWORD}");
    // No `tls` table, so switchyard connects with `SASL_PLAINTEXT`.
    let mut settings = toml::Table::new();
    settings.insert("sasl".to_owned(), toml::Value::Table(sasl));
    let streaming = fixture.manifest(&streaming_manifest(), "stream", settings)?;
    let url = amqp_url("amqp", 5672, &vhost);
    let password = "kafka-password-4b8e";

    let manifests = [shop_manifest(), streaming];
    let bootstrap = tansu.bootstrap();
    let env = [
        ("KAFKA_BOOTSTRAP", bootstrap.as_str()),
        ("TEST_KAFKA_PASSWORD", password),
    ];
    assert_sasl_login_rejected(&fixture, &manifests, &url, &env, password).await?;
    drop(tansu);
    Ok(())
}

/// SCRAM logins that tansu accepts, over `SASL_SSL`, with the password read
/// from `${VAR}`. With SCRAM-SHA-512, switchyard provisions the topics,
/// publishes and consumes, and with SCRAM-SHA-256, `plan` succeeds. tansu's in-memory storage keeps no users. With
/// `--authentication`, tansu rejects every request but the login until a
/// client has logged in. So the user is created while tansu runs without
/// authentication on SQLite storage, and tansu then restarts with it on the
/// same file.
#[tokio::test]
async fn kafka_scram_login_accepted() -> anyhow::Result<()> {
    let _serial = serial().await;
    let fixture = Fixture::new()?;
    let vhost = ScopedVhost::create("kafka-scram-login")?;
    let password = "kafka-password-e51d";
    let port = free_port()?;
    let stunnel = Stunnel::start(
        fixture.path(),
        &fixture.server,
        None,
        &format!("127.0.0.1:{port}"),
    )
    .await?;
    let setup = Tansu::start_sqlite(fixture.path(), port, stunnel.port(), &[]).await?;
    for mechanism in ["scram512", "scram256"] {
        setup
            .create_scram_user("switchyard", password, mechanism)
            .await?;
    }
    setup.stop().await?;
    let tansu =
        Tansu::start_sqlite(fixture.path(), port, stunnel.port(), &["--authentication"]).await?;

    let sasl = sasl_table("SCRAM-SHA-512", "${TEST_KAFKA_PASSWORD}");
    let streaming =
        fixture.streaming_manifest(string_table(&[("ca", "certs/ca.pem")]), Some(sasl))?;
    let bootstrap = format!("127.0.0.1:{}", stunnel.port());
    let url = amqp_url("amqp", 5672, &vhost);
    let manifests = [shop_manifest(), streaming];
    let env = [
        ("KAFKA_BOOTSTRAP", bootstrap.as_str()),
        ("TEST_KAFKA_PASSWORD", password),
    ];
    let process =
        Switchyard::start_with_env(fixture.path(), &manifests, BrokerMode::Url(url), &env).await?;
    run_kafka_flow(&process).await?;
    let stopped = process.stop_cleanly().await?;
    assert!(
        !stopped.stderr.contains(password),
        "the log shows the SASL password:\n{}",
        stopped.stderr
    );

    let sasl = sasl_table("SCRAM-SHA-256", "${TEST_KAFKA_PASSWORD}");
    let streaming =
        fixture.streaming_manifest(string_table(&[("ca", "certs/ca.pem")]), Some(sasl))?;
    let url = amqp_url("amqp", 5672, &vhost);
    let (output, _) = plan_all(&[shop_manifest(), streaming], &url, &env).await?;
    assert_eq!(
        output.code, 0,
        "plan with SCRAM-SHA-256 failed:\n{}",
        output.stderr
    );
    assert!(
        !output.stderr.contains(password) && !output.stdout.contains(password),
        "plan shows the SASL password:\n{}{}",
        output.stdout,
        output.stderr
    );
    stunnel.stop().await?;
    drop(tansu);
    Ok(())
}

/// Checks that `plan` and `up` report the SASL login that tansu rejects at
/// broker `stream`, for a user it does not know, with the cause and the fix.
/// `plan` exits 1, and `up` keeps retrying and names the cause in /readyz.
/// `password` appears in none of their output, and the AMQP password not in
/// `plan`'s.
async fn assert_sasl_login_rejected(
    fixture: &Fixture,
    manifests: &[PathBuf],
    url: &str,
    env: &[(&str, &str)],
    password: &str,
) -> anyhow::Result<()> {
    let (output, _) = plan_all(manifests, url, env).await?;
    let expected = [
        "broker `stream`",
        "rejected the SASL credentials",
        "check `sasl.mechanism`, `sasl.username` and `sasl.password` of broker `stream`",
    ];
    for secret in [password, AMQP_CREDENTIALS] {
        assert_rejected_without(&output, &expected, secret);
    }
    // librdkafka quotes the SCRAM error that tansu sent, which shows that
    // tansu found no credential for the user.
    assert!(
        output.stderr.contains("unknown-user"),
        "plan's error lacks tansu's SCRAM error `unknown-user`:\n{}",
        output.stderr
    );

    let process = Switchyard::spawn_with_env(
        fixture.path(),
        manifests,
        BrokerMode::Url(url.to_owned()),
        env,
    )
    .await?;
    let detail =
        wait_for_readiness_detail(&process, "broker:stream", "rejected the SASL credentials")
            .await?;
    assert!(
        !detail.contains(password),
        "/readyz shows the SASL password: {detail}"
    );
    // librdkafka reports each failed login as an error, which `up` logs.
    let stopped = process.stop_cleanly().await?;
    assert!(
        stopped.stderr.contains("Kafka client error"),
        "the log has no Kafka client error:\n{}",
        stopped.stderr
    );
    assert!(
        !stopped.stderr.contains(password),
        "the log shows the SASL password:\n{}",
        stopped.stderr
    );
    Ok(())
}
