//! A tansu broker process (a Kafka-protocol broker) per test, and the
//! rdkafka clients the tests use to look at it. Most tests use its
//! in-memory storage. The SASL login test uses SQLite, which keeps users.
//!
//! tansu is installed by `bash .ci/run` with
//! `cargo install --locked tansu --features dynostore,libsql`.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use tokio::process::{Child, Command};

/// Maximum wait for tansu to accept connections after its start.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running tansu broker on a free loopback port, killed on drop.
pub struct Tansu {
    child: Child,
    port: u16,
    log_path: PathBuf,
}

/// A record to produce: headers and payload.
#[derive(Clone, Debug, Default)]
pub struct OutgoingRecord {
    pub headers: Vec<(String, String)>,
    pub payload: Vec<u8>,
}

impl OutgoingRecord {
    /// Returns a binary-mode CloudEvent: `ce_*` headers, the JSON data as
    /// the payload.
    pub fn binary_event(id: &str, event_type: &str, data: &serde_json::Value) -> OutgoingRecord {
        let headers = [
            ("ce_specversion", "1.0"),
            ("ce_id", id),
            ("ce_source", "/switchyard-tests"),
            ("ce_type", event_type),
            ("content-type", "application/json"),
        ];
        OutgoingRecord {
            headers: headers
                .iter()
                .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
                .collect(),
            payload: data.to_string().into_bytes(),
        }
    }
}

/// One record read back from a topic.
#[derive(Clone, Debug)]
pub struct KafkaRecord {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    pub headers: Vec<(String, String)>,
    pub payload: String,
}

impl KafkaRecord {
    /// Returns the value of the first header called `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// Returns the tansu binary: `TANSU` if set, else `tansu` on `PATH`, else
/// `~/.cargo/bin/tansu`.
fn tansu_binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("TANSU") {
        return Ok(PathBuf::from(path));
    }
    let on_path = std::env::var_os("PATH").into_iter().flat_map(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("tansu"))
            .collect::<Vec<_>>()
    });
    let in_cargo =
        std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo/bin/tansu"));
    on_path.chain(in_cargo).find(|path| path.is_file()).context(
        "tansu, the Kafka-protocol broker of the Kafka tests, is not installed; install it \
             with `cargo install --locked tansu --features dynostore,libsql` (bash .ci/run does), or \
             set TANSU to its path",
    )
}

/// Returns a loopback port that was free a moment ago.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Tansu {
    /// Starts tansu with in-memory storage on a free port; its output goes
    /// to a file in `dir`.
    pub async fn start(dir: &std::path::Path) -> anyhow::Result<Tansu> {
        let port = free_port()?;
        Tansu::start_with(dir, port, port, &[]).await
    }

    /// Starts tansu with in-memory storage on `port`, telling clients to
    /// connect to `advertised_port`, with extra arguments such as
    /// `--authentication`. A TLS proxy on `advertised_port` that forwards
    /// to `port` then carries every client connection.
    pub async fn start_with(
        dir: &std::path::Path,
        port: u16,
        advertised_port: u16,
        extra_args: &[&str],
    ) -> anyhow::Result<Tansu> {
        Tansu::spawn(dir, port, advertised_port, "memory://tansu/", extra_args).await
    }

    /// Like [`Tansu::start_with`], with SQLite storage in `dir/tansu.db`,
    /// which a later tansu started on the same `dir` opens again. Unlike
    /// the in-memory storage of tansu 0.6, it keeps SCRAM users.
    pub async fn start_sqlite(
        dir: &std::path::Path,
        port: u16,
        advertised_port: u16,
        extra_args: &[&str],
    ) -> anyhow::Result<Tansu> {
        Tansu::spawn(dir, port, advertised_port, "sqlite://tansu.db", extra_args).await
    }

    async fn spawn(
        dir: &std::path::Path,
        port: u16,
        advertised_port: u16,
        storage: &str,
        extra_args: &[&str],
    ) -> anyhow::Result<Tansu> {
        let binary = tansu_binary()?;
        let url = format!("tcp://127.0.0.1:{port}");
        let advertised_url = format!("tcp://127.0.0.1:{advertised_port}");
        let log_path = dir.join(format!("tansu-{port}.log"));
        let log = std::fs::File::create(&log_path)?;
        let child = Command::new(&binary)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &advertised_url,
            ])
            .args(["--storage-engine", storage])
            .args(extra_args)
            // A `sqlite://` path is relative to the working folder.
            .current_dir(dir)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start `{}`", binary.display()))?;
        let mut tansu = Tansu {
            child,
            port,
            log_path,
        };
        let log_path = &tansu.log_path;
        crate::process::wait_listening(&mut tansu.child, port, "tansu", log_path, START_TIMEOUT)
            .await?;
        Ok(tansu)
    }

    /// Stops tansu and waits until it exited.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.child.kill().await?;
        Ok(())
    }

    /// Creates or updates a SCRAM user with `tansu user create`, which sends
    /// AlterUserScramCredentials. `mechanism` is tansu's name: `scram256` or
    /// `scram512`. The command ignores the error code in tansu's response,
    /// so only a login shows whether the user was kept.
    pub async fn create_scram_user(
        &self,
        name: &str,
        password: &str,
        mechanism: &str,
    ) -> anyhow::Result<()> {
        let binary = tansu_binary()?;
        let broker = format!("tcp://127.0.0.1:{}", self.port);
        let output = Command::new(&binary)
            .args([
                "user",
                "create",
                "--broker",
                &broker,
                "--mechanism",
                mechanism,
            ])
            .args([name, password])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .output()
            .await
            .with_context(|| format!("cannot run `{} user create`", binary.display()))?;
        anyhow::ensure!(
            output.status.success(),
            "`tansu user create` for `{name}` failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(())
    }

    /// Returns what tansu wrote so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Returns the bootstrap address, such as `127.0.0.1:40123`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", self.bootstrap());
        config
    }

    /// Creates a topic with the admin client.
    pub async fn create_topic(&self, name: &str, partitions: i32) -> anyhow::Result<()> {
        use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
        let admin: AdminClient<_> = self.config().create()?;
        let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
        let results = admin.create_topics([&topic], &AdminOptions::new()).await?;
        for result in results {
            result.map_err(|(topic, code)| anyhow::anyhow!("cannot create `{topic}`: {code}"))?;
        }
        Ok(())
    }

    /// Produces records to one partition of `topic` in order, waiting for
    /// each delivery report before the next send.
    pub async fn produce(
        &self,
        topic: &str,
        partition: i32,
        records: &[OutgoingRecord],
    ) -> anyhow::Result<()> {
        let producer: FutureProducer = self.config().create()?;
        for outgoing in records {
            let mut headers = rdkafka::message::OwnedHeaders::new();
            for (name, value) in &outgoing.headers {
                headers = headers.insert(rdkafka::message::Header {
                    key: name,
                    value: Some(value.as_str()),
                });
            }
            let record = FutureRecord::<str, [u8]>::to(topic)
                .partition(partition)
                .payload(&outgoing.payload)
                .headers(headers);
            producer
                .send(record, Duration::from_secs(10))
                .await
                .map_err(|(err, _)| anyhow::anyhow!("cannot produce to `{topic}`: {err}"))?;
        }
        Ok(())
    }

    /// Reads every record of every partition of `topic` from the start,
    /// outside any consumer group, until `expected` records arrived or
    /// `timeout` passed.
    pub async fn read_all(
        &self,
        topic: &str,
        expected: usize,
        timeout: Duration,
    ) -> anyhow::Result<Vec<KafkaRecord>> {
        let config = self.config();
        let topic = topic.to_owned();
        tokio::task::spawn_blocking(move || read_all_blocking(config, &topic, expected, timeout))
            .await?
    }

    /// Returns the committed offset of each partition of `topic` for `group`;
    /// a partition with no commit is left out.
    pub async fn committed(&self, group: &str, topic: &str) -> anyhow::Result<Vec<(i32, i64)>> {
        let mut config = self.config();
        config.set("group.id", group);
        let topic = topic.to_owned();
        tokio::task::spawn_blocking(move || {
            let consumer: BaseConsumer = config.create()?;
            let partitions = partition_count(&consumer, &topic)?;
            let mut list = TopicPartitionList::new();
            for partition in 0..partitions {
                list.add_partition(&topic, partition);
            }
            let committed = consumer.committed_offsets(list, Duration::from_secs(10))?;
            Ok(committed
                .elements()
                .iter()
                .filter_map(|element| match element.offset() {
                    Offset::Offset(offset) => Some((element.partition(), offset)),
                    _ => None,
                })
                .collect())
        })
        .await?
    }
}

fn partition_count(consumer: &BaseConsumer, topic: &str) -> anyhow::Result<i32> {
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let partitions = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .map(|t| t.partitions().len())
        .with_context(|| format!("topic `{topic}` not found"))?;
    Ok(i32::try_from(partitions)?)
}

fn read_all_blocking(
    mut config: ClientConfig,
    topic: &str,
    expected: usize,
    timeout: Duration,
) -> anyhow::Result<Vec<KafkaRecord>> {
    config.set("group.id", "switchyard-tests-reader");
    config.set("enable.auto.commit", "false");
    let consumer: BaseConsumer = config.create()?;
    let partitions = partition_count(&consumer, topic)?;
    let mut list = TopicPartitionList::new();
    for partition in 0..partitions {
        list.add_partition_offset(topic, partition, Offset::Beginning)?;
    }
    consumer.assign(&list)?;
    let started = Instant::now();
    let mut records = Vec::new();
    while records.len() < expected && started.elapsed() < timeout {
        let Some(result) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let message = result?;
        let headers = message
            .headers()
            .map(|headers| {
                headers
                    .iter()
                    .map(|h| {
                        (
                            h.key.to_owned(),
                            String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        records.push(KafkaRecord {
            partition: message.partition(),
            offset: message.offset(),
            key: message
                .key()
                .map(|key| String::from_utf8_lossy(key).into_owned()),
            headers,
            payload: String::from_utf8_lossy(message.payload().unwrap_or_default()).into_owned(),
        });
    }
    Ok(records)
}
