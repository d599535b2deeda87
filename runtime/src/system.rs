//! `switchyard up`: builds the running system from loaded manifests —
//! brokers, topology, handlers, consumers and HTTP — and stops it cleanly.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::broker::embedded::EmbeddedBroker;
use crate::broker::{Broker, BrokerError, Deferred};
use crate::dispatch::{
    self, Consumer, ConsumerMetrics, Destination, Input, PublishError, Publisher, QueueInput,
    RetryPolicy, Route, Services, TopicInput,
};
use crate::event::WireFormat;
use crate::handler::{CallContext, Grants, HandlerHost, Limits};
use crate::ingress::{self, Credential, Credentials, Ingress, Producer, RequestLimits, Scheme};
use crate::manifest::{self, BrokerKind, Encoding, Manifest, Purpose, SaslCredentials, TlsFiles};
use crate::reload::{self, Slots};
use crate::schema::Schemas;
use crate::telemetry::{self, LogFormat, Readiness};
use crate::topology;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:3000";

/// Options of `switchyard up`.
#[derive(Clone, Debug)]
pub struct UpOptions {
    pub manifests: Vec<PathBuf>,
    /// Replace every broker with the in-process embedded broker.
    pub embedded: bool,
    pub listen: Option<String>,
    /// Address of the server for the probes and `/metrics`; `None` serves
    /// them on `listen` unless the manifest sets `runtime.admin_listen`.
    pub admin_listen: Option<String>,
    /// Format of the logs. Text logs render the manifests' warnings with
    /// their source lines, and JSON logs write one record per warning.
    pub log_format: LogFormat,
}

/// Loads the manifests and their schemas for running, or fails with every
/// problem rendered. Warnings go to stderr, rendered with their source lines.
pub fn load_for_run(paths: &[PathBuf]) -> anyhow::Result<(Manifest, Schemas)> {
    let (manifest, schemas, warnings) = load_and_compile(paths, Purpose::Run)?;
    if !warnings.is_empty() {
        eprint!("{}", manifest::render(&warnings, &manifest.files));
    }
    Ok((manifest, schemas))
}

/// Loads the manifests with `${VAR}` from the environment and compiles their
/// schemas. Fails on any error, and returns the warnings.
pub(crate) fn load_and_compile(
    paths: &[PathBuf],
    purpose: Purpose,
) -> anyhow::Result<(Manifest, Schemas, Vec<manifest::Problem>)> {
    let loaded = manifest::load(paths, purpose, &|name| std::env::var(name).ok());
    if loaded.has_errors() {
        bail!("invalid manifest:\n{}", loaded.render());
    }
    let warnings = loaded.problems;
    let manifest = loaded.manifest;
    let (schemas, problems) = Schemas::compile(&manifest);
    if !problems.is_empty() {
        bail!(
            "invalid schema:\n{}",
            manifest::render(&problems, &manifest.files)
        );
    }
    Ok((manifest, schemas, warnings))
}

/// Writes the manifests' warnings at start: rendered with their source
/// lines among text logs, or as one warning record each among JSON logs,
/// so that every line of a JSON log stays one JSON object.
fn report_warnings(manifest: &Manifest, warnings: &[manifest::Problem], format: LogFormat) {
    if warnings.is_empty() {
        return;
    }
    if format == LogFormat::Text {
        eprint!("{}", manifest::render(warnings, &manifest.files));
        return;
    }
    for warning in warnings {
        let record = manifest::record(warning, &manifest.files);
        let at = match (&record.file, record.line, record.column) {
            (Some(file), Some(line), Some(column)) => format!("{file}:{line}:{column}"),
            (Some(file), _, _) => file.clone(),
            (None, _, _) => String::new(),
        };
        tracing::warn!(
            code = record.code,
            at,
            hint = record.hint.unwrap_or_default(),
            "{}",
            record.message
        );
    }
}

/// Runs the system until SIGINT or SIGTERM, then drains in-flight events.
pub async fn up(options: UpOptions) -> anyhow::Result<()> {
    let purpose = if options.embedded {
        Purpose::Embedded
    } else {
        Purpose::Run
    };
    let (manifest, schemas, warnings) = load_and_compile(&options.manifests, purpose)?;
    report_warnings(&manifest, &warnings, options.log_format);
    let metrics = telemetry::init_metrics().context("cannot install the metrics recorder")?;
    let readiness = Readiness::default();
    let shutdown = CancellationToken::new();
    let (fatal_tx, mut fatal_rx) = mpsc::unbounded_channel::<String>();

    // Every broker starts as a placeholder that returns "unreachable", so
    // HTTP can serve probes and 503s while connections are being made.
    let deferred: HashMap<String, Arc<Deferred>> = manifest
        .brokers
        .keys()
        .map(|name| (name.clone(), Arc::new(Deferred::new(name))))
        .collect();
    let brokers: HashMap<String, Arc<dyn Broker>> = deferred
        .iter()
        .map(|(name, broker)| (name.clone(), broker.clone() as Arc<dyn Broker>))
        .collect();
    let publisher = Publisher::new(brokers.clone(), routes(&manifest));

    // Handlers compile in the background: each consumer waits for its own
    // handler, and a missing file holds back only the consumers that use it.
    let host = HandlerHost::new()
        .map_err(|err| anyhow::anyhow!("{err}"))?
        .with_cache_dir(cache_dir(&manifest));
    let slots = Slots::new(
        manifest
            .consumers
            .keys()
            .filter_map(|c| manifest.handler_path(c)),
    );
    let _watcher = reload::watch(host.clone(), slots.clone(), &manifest.handler_dirs())
        .context("cannot watch the handler folders")?;
    let _manifest_watcher =
        reload::watch_manifests(&manifest.files).context("cannot watch the manifest files")?;
    let loading = {
        let host = host.clone();
        let slots = slots.clone();
        tokio::spawn(async move { reload::load_all(&host, &slots).await })
    };

    let services = Services {
        host,
        publisher: publisher.clone(),
        schemas: schemas.clone(),
        readiness: readiness.clone(),
    };
    let consumers = consumers(&manifest, &brokers, &schemas)?;

    // HTTP first, so `/readyz` can report what start-up is waiting for.
    let listen = options
        .listen
        .clone()
        .or_else(|| manifest.listen.clone())
        .unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
    let address = parse_address(&listen, "listen", "127.0.0.1:3000")?;
    let admin_listen = options
        .admin_listen
        .clone()
        .or_else(|| manifest.admin_listen.clone());
    let admin_address = admin_listen
        .as_deref()
        .map(|admin| parse_address(admin, "admin listen", "127.0.0.1:9090"))
        .transpose()?;
    if admin_address == Some(address) {
        bail!(
            "the admin listen address and the listen address are both `{address}`; give the admin server its own port, or leave `runtime.admin_listen` and `--admin-listen` out to serve everything on one"
        );
    }
    let listener = bind(address).await?;
    let admin_listener = match admin_address {
        Some(admin) => Some(bind(admin).await?),
        None => None,
    };
    // Port 0 lets the system choose; the log gives the port it chose.
    let address = listener.local_addr().unwrap_or(address);
    let admin_address = match &admin_listener {
        Some(listener) => listener.local_addr().ok().or(admin_address),
        None => admin_address,
    };
    let ingress = Ingress {
        publisher,
        schemas,
        readiness: readiness.clone(),
        metrics: Some(metrics),
        limits: RequestLimits {
            body: usize::try_from(manifest.body_limit).unwrap_or(usize::MAX),
            json_depth: usize::try_from(manifest.json_depth_limit).unwrap_or(usize::MAX),
            body_timeout: manifest.body_timeout,
        },
        credentials: Arc::new(credentials(&manifest)?),
        realm: manifest.name.clone(),
    };
    let app = ingress::router(
        ingress.clone(),
        producers(&manifest)?,
        admin_address.is_some(),
    );
    let timeouts = ingress::ConnectionTimeouts {
        header: manifest.header_timeout,
        write: manifest.write_timeout,
    };
    let mut http = tokio::task::JoinSet::new();
    http.spawn(ingress::serve(listener, app, timeouts, shutdown.clone()));
    if let Some(admin_listener) = admin_listener {
        let admin = ingress::admin_router(ingress);
        http.spawn(ingress::serve(
            admin_listener,
            admin,
            timeouts,
            shutdown.clone(),
        ));
    }
    match admin_address {
        Some(admin_address) => {
            tracing::info!(%address, %admin_address, manifests = ?options.manifests,
            embedded = options.embedded, "switchyard listening; probes and metrics on the admin address")
        }
        None => {
            tracing::info!(%address, manifests = ?options.manifests, embedded = options.embedded,
            "switchyard listening")
        }
    }

    // Each broker connects, provisions its topology and then starts its
    // consumers, independently of the others.
    let desired = topology::desired(&manifest);
    let embedded = Arc::new(EmbeddedBroker::new());
    let mut tasks = tokio::task::JoinSet::new();
    for (name, placeholder) in &deferred {
        let target: Target = if options.embedded {
            Target::Embedded(embedded.clone())
        } else {
            let url = manifest.broker_urls.get(name).cloned().unwrap_or_default();
            let def = &manifest.brokers[name].def;
            let confirm_timeout = def.confirm_timeout.map(|t| t.0);
            let security = Security::of(&manifest, name);
            match def.kind {
                BrokerKind::Amqp => Target::Amqp {
                    url,
                    confirm_timeout,
                    security,
                },
                BrokerKind::Kafka => Target::Kafka {
                    bootstrap: url,
                    client_options: manifest
                        .broker_options
                        .get(name)
                        .cloned()
                        .unwrap_or_default(),
                    delivery_timeout: confirm_timeout,
                    security,
                },
            }
        };
        let broker_consumers: Vec<Consumer> = consumers
            .iter()
            .filter(|c| manifest.consumer_broker(&c.name) == Some(name.as_str()))
            .cloned()
            .collect();
        let start = BrokerStart {
            name: name.clone(),
            target,
            placeholder: placeholder.clone(),
            topology: desired.get(name).cloned().unwrap_or_default(),
            consumers: broker_consumers,
            slots: slots.clone(),
            services: services.clone(),
            shutdown: shutdown.clone(),
            fatal: fatal_tx.clone(),
        };
        tasks.spawn(start.run());
    }

    let failure = tokio::select! {
        _ = stop_signal() => None,
        message = fatal_rx.recv() => message,
    };
    if failure.is_none() {
        tracing::info!(drain_timeout = ?manifest.drain_timeout, "stopping: no new work, draining events in flight");
    }
    shutdown.cancel();
    let drained = tokio::time::timeout(manifest.drain_timeout, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(drain_timeout = ?manifest.drain_timeout,
            "drain timeout passed with events in flight; they stay unacknowledged and the broker redelivers them");
    }
    loading.abort();
    while http.join_next().await.is_some() {}
    for broker in brokers.values() {
        broker.finish().await;
    }
    if let Some(message) = failure {
        bail!("{message}");
    }
    tracing::info!("switchyard stopped");
    Ok(())
}

/// Parses the address of `setting`, such as `listen`; the error shows
/// `example`, a valid address.
fn parse_address(text: &str, setting: &str, example: &str) -> anyhow::Result<SocketAddr> {
    text.parse().with_context(|| {
        format!(
            "invalid {setting} address `{text}`; write an IP address and port such as `{example}`"
        )
    })
}

async fn bind(address: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot listen on `{address}`; is another process using it?"))
}

/// Returns the manifests' credentials with their expanded secrets.
fn credentials(manifest: &Manifest) -> anyhow::Result<Credentials> {
    let mut credentials = Vec::new();
    for (name, entry) in &manifest.credentials {
        let secret = manifest.credential_secrets.get(name).with_context(|| {
            format!("credential `{name}` has no value; set the variable it names")
        })?;
        let scheme = if entry.def.bearer.is_some() {
            Scheme::Bearer
        } else {
            let header = entry
                .def
                .header
                .as_ref()
                .map_or(manifest::DEFAULT_API_KEY_HEADER, |header| header.get_ref());
            let header = header.parse().with_context(|| {
                format!("the `header` of credential `{name}` is not a valid HTTP header name")
            })?;
            Scheme::ApiKey(header)
        };
        credentials.push(Credential::new(name, scheme, secret));
    }
    Ok(Credentials::new(credentials))
}

/// Connects to every broker once and compares its topology with the
/// manifests, changing nothing.
pub async fn plan(paths: &[PathBuf]) -> anyhow::Result<Vec<(String, Vec<topology::Step>)>> {
    let (manifest, _) = load_for_run(paths)?;
    let desired = topology::desired(&manifest);
    let mut plans = Vec::new();
    for (name, wanted) in &desired {
        let broker = connect_once(&manifest, name).await?;
        let steps = topology::plan(broker.as_ref(), wanted)
            .await
            .with_context(|| format!("cannot read the topology of broker `{name}`"))?;
        plans.push((name.clone(), steps));
    }
    Ok(plans)
}

/// Connects to a broker of the manifest once, without retries.
async fn connect_once(manifest: &Manifest, name: &str) -> anyhow::Result<Arc<dyn Broker>> {
    let def = &manifest.brokers[name].def;
    let url = manifest.broker_urls.get(name).cloned().unwrap_or_default();
    let confirm_timeout = def.confirm_timeout.map(|t| t.0);
    let security = Security::of(manifest, name);
    let broker: Arc<dyn Broker> = match def.kind {
        BrokerKind::Amqp => Arc::new(connect_amqp(name, &url, confirm_timeout, &security).await?),
        BrokerKind::Kafka => {
            let client_options = manifest
                .broker_options
                .get(name)
                .cloned()
                .unwrap_or_default();
            let broker =
                connect_kafka(name, &url, &client_options, confirm_timeout, &security).await?;
            Arc::new(broker)
        }
    };
    Ok(broker)
}

/// The TLS files and SASL credentials of one broker.
#[derive(Clone, Debug, Default)]
struct Security {
    tls: Option<TlsFiles>,
    sasl: Option<SaslCredentials>,
}

impl Security {
    fn of(manifest: &Manifest, broker: &str) -> Self {
        Security {
            tls: manifest.broker_tls.get(broker).cloned(),
            sasl: manifest.broker_sasl.get(broker).cloned(),
        }
    }
}

async fn connect_amqp(
    name: &str,
    url: &str,
    confirm_timeout: Option<Duration>,
    security: &Security,
) -> Result<crate::broker::amqp::AmqpBroker, crate::broker::BrokerError> {
    let mut options = crate::broker::amqp::AmqpOptions::default();
    if let Some(timeout) = confirm_timeout {
        options.confirm_timeout = timeout;
    }
    options.tls = security.tls.clone();
    crate::broker::amqp::AmqpBroker::connect(name, url, options).await
}

async fn connect_kafka(
    name: &str,
    bootstrap: &str,
    client_options: &std::collections::BTreeMap<String, String>,
    delivery_timeout: Option<Duration>,
    security: &Security,
) -> Result<crate::broker::kafka::KafkaBroker, crate::broker::BrokerError> {
    let mut options = crate::broker::kafka::KafkaOptions::default();
    if let Some(timeout) = delivery_timeout {
        options.delivery_timeout = timeout;
    }
    options.tls = security.tls.clone();
    options.sasl = security.sasl.clone();
    crate::broker::kafka::KafkaBroker::connect(name, bootstrap, client_options, options).await
}

/// Validates one event and publishes it to every target of its type,
/// connecting to each broker once, without retries.
pub async fn publish_once(
    paths: &[PathBuf],
    event_type: &str,
    data: serde_json::Value,
) -> anyhow::Result<crate::event::Event> {
    let (manifest, schemas) = load_for_run(paths)?;
    if !manifest.events.contains_key(event_type) {
        let known: Vec<&str> = manifest.events.keys().map(String::as_str).collect();
        bail!(
            "event type `{event_type}` is not defined; defined types: {}",
            known.join(", ")
        );
    }
    if let Err(check) = schemas.validate(event_type, &data) {
        bail!("event not published: {check}");
    }

    let routes = routes(&manifest);
    let mut brokers: HashMap<String, Arc<dyn Broker>> = HashMap::new();
    for route in routes.get(event_type).into_iter().flatten() {
        if !brokers.contains_key(&route.broker) {
            let address = match manifest.brokers.get(&route.broker).map(|b| b.def.kind) {
                Some(BrokerKind::Kafka) => "bootstrap",
                _ => "url",
            };
            let broker = connect_once(&manifest, &route.broker)
                .await
                .with_context(|| {
                    format!(
                        "event not published (start broker `{}` or correct its `{address}` \
                         in the manifest)",
                        route.broker
                    )
                })?;
            brokers.insert(route.broker.clone(), broker);
        }
    }

    let source = format!("/{}/cli", manifest.name);
    let event = crate::event::Event::new(event_type, &source, data);
    Publisher::new(brokers, routes)
        .publish(&event)
        .await
        .map_err(|err| match err {
            PublishError::Partial { .. } => anyhow::anyhow!("event only partly published: {err}"),
            PublishError::Broker(BrokerError::NotFound { .. }) => anyhow::anyhow!(
                "event not published: {err}; `publish` does not declare the topology, so run \
                 `switchyard up` with these manifests once first"
            ),
            other => anyhow::Error::new(other).context("event not published"),
        })?;
    Ok(event)
}

/// Returns the compiled-component cache folder: `runtime.cache`, else
/// `$XDG_CACHE_HOME/switchyard/components`, else `~/.cache/...`, else a
/// folder under the system's temporary folder.
pub(crate) fn cache_dir(manifest: &Manifest) -> PathBuf {
    if let Some(dir) = &manifest.cache_dir {
        return dir.clone();
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("switchyard").join("components")
}

async fn stop_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler succeeds on Unix");
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

enum Target {
    Embedded(Arc<EmbeddedBroker>),
    Amqp {
        url: String,
        confirm_timeout: Option<Duration>,
        security: Security,
    },
    Kafka {
        bootstrap: String,
        client_options: std::collections::BTreeMap<String, String>,
        delivery_timeout: Option<Duration>,
        security: Security,
    },
}

/// The start-up of one broker: connect, provision, start consumers.
struct BrokerStart {
    name: String,
    target: Target,
    placeholder: Arc<Deferred>,
    topology: topology::BrokerTopology,
    consumers: Vec<Consumer>,
    slots: Slots,
    services: Services,
    shutdown: CancellationToken,
    fatal: mpsc::UnboundedSender<String>,
}

impl BrokerStart {
    async fn run(self) {
        let check = format!("broker:{}", self.name);
        let topology_check = format!("topology:{}", self.name);
        let readiness = &self.services.readiness;
        readiness.set(&check, false, "connecting");
        metrics::gauge!(telemetry::BROKER_CONNECTED, "broker" => self.name.clone()).set(0.0);
        readiness.set(&topology_check, false, "not provisioned yet");
        for consumer in &self.consumers {
            readiness.set(
                format!("consumer:{}", consumer.name),
                false,
                "waiting for its broker",
            );
        }

        let broker = tokio::select! {
            _ = self.shutdown.cancelled() => return,
            broker = connect(&self.name, &self.target, &self.services.readiness) => broker,
        };
        self.placeholder.set(broker.clone());
        readiness.set(&check, true, "connected");
        tokio::spawn(watch_connection(
            self.name.clone(),
            broker.clone(),
            readiness.clone(),
            self.shutdown.clone(),
        ));

        loop {
            match topology::provision(broker.as_ref(), &self.topology).await {
                Ok(()) => break,
                Err(errors) if errors.iter().all(|err| err.is_transient()) => {
                    tracing::warn!(broker = %self.name, error = %errors[0], "provisioning failed; retrying");
                    readiness.set(&topology_check, false, errors[0].to_string());
                    tokio::select! {
                        _ = self.shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(2)) => continue,
                    }
                }
                Err(errors) => {
                    let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
                    let message = format!(
                        "cannot provision the topology on broker `{}`:\n{}",
                        self.name,
                        text.join("\n")
                    );
                    readiness.set(
                        &topology_check,
                        false,
                        "conflict with the broker's existing topology",
                    );
                    let _ = self.fatal.send(message);
                    return;
                }
            }
        }
        readiness.set(&topology_check, true, "provisioned");
        tracing::info!(broker = %self.name, exchanges = self.topology.exchanges.len(),
            queues = self.topology.queues.len(), bindings = self.topology.bindings.len(),
            topics = self.topology.topics.len(), "topology provisioned");

        if !self.topology.queues.is_empty() {
            tokio::spawn(sample_queue_depths(
                self.name.clone(),
                broker.clone(),
                self.topology
                    .queues
                    .iter()
                    .map(|queue| queue.name.clone())
                    .collect(),
                self.shutdown.clone(),
            ));
        }

        let mut running = tokio::task::JoinSet::new();
        for mut consumer in self.consumers {
            consumer.broker = broker.clone();
            let path = consumer.handler_path.clone();
            let Some(handler) = path.and_then(|path| self.slots.subscribe(&path)) else {
                continue;
            };
            running.spawn(dispatch::run_consumer(
                consumer,
                handler,
                self.services.clone(),
                self.shutdown.clone(),
            ));
        }
        while running.join_next().await.is_some() {}
    }
}

/// Connects to a broker, retrying with capped exponential backoff and
/// jitter while it is unreachable.
async fn connect(name: &str, target: &Target, readiness: &Readiness) -> Arc<dyn Broker> {
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let result: Result<Arc<dyn Broker>, crate::broker::BrokerError> = match target {
            Target::Embedded(broker) => return broker.clone(),
            Target::Amqp {
                url,
                confirm_timeout,
                security,
            } => connect_amqp(name, url, *confirm_timeout, security)
                .await
                .map(|broker| Arc::new(broker) as Arc<dyn Broker>),
            Target::Kafka {
                bootstrap,
                client_options,
                delivery_timeout,
                security,
            } => connect_kafka(name, bootstrap, client_options, *delivery_timeout, security)
                .await
                .map(|broker| Arc::new(broker) as Arc<dyn Broker>),
        };
        match result {
            Ok(broker) => {
                tracing::info!(broker = name, attempt, "broker connected");
                return broker;
            }
            Err(err) => {
                let delay = reconnect_delay(attempt);
                tracing::warn!(broker = name, attempt, error = %err, retry_in = ?delay,
                    "cannot connect to broker");
                readiness.set(format!("broker:{name}"), false, err.to_string());
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// How often `watch_connection` reads a broker's connection state.
const CONNECTION_CHECK_INTERVAL: Duration = Duration::from_millis(250);

/// How often the ready messages of each queue are read for
/// `switchyard_queue_depth`.
const QUEUE_DEPTH_INTERVAL: Duration = Duration::from_secs(5);

/// Publishes the ready messages of each queue of a broker as a gauge, read
/// every [`QUEUE_DEPTH_INTERVAL`] until shutdown. A queue whose depth cannot
/// be read keeps its last value.
async fn sample_queue_depths(
    broker_name: String,
    broker: Arc<dyn Broker>,
    queues: Vec<String>,
    shutdown: CancellationToken,
) {
    let gauges: Vec<(String, metrics::Gauge)> = queues
        .into_iter()
        .map(|queue| {
            let gauge = metrics::gauge!(telemetry::QUEUE_DEPTH,
                "broker" => broker_name.clone(), "queue" => queue.clone());
            (queue, gauge)
        })
        .collect();
    loop {
        for (queue, gauge) in &gauges {
            if !broker.is_connected() {
                break;
            }
            match broker.queue_depth(queue).await {
                Ok(depth) => gauge.set(f64::from(depth)),
                Err(err) => {
                    tracing::debug!(broker = %broker_name, queue, error = %err, "cannot read queue depth");
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(QUEUE_DEPTH_INTERVAL) => {}
        }
    }
}

/// Follows a connected broker's connection state until shutdown: the
/// `broker:<name>` readiness check, the connected gauge, and a count of the
/// losses the broker recovered from. The brokers reconnect by themselves, so
/// this only observes.
///
/// NOTE: the state is sampled every `CONNECTION_CHECK_INTERVAL`, so a loss
/// and recovery within one interval is not counted.
async fn watch_connection(
    name: String,
    broker: Arc<dyn Broker>,
    readiness: Readiness,
    shutdown: CancellationToken,
) {
    let check = format!("broker:{name}");
    let gauge = metrics::gauge!(telemetry::BROKER_CONNECTED, "broker" => name.clone());
    let reconnects = metrics::counter!(telemetry::BROKER_RECONNECTS, "broker" => name.clone());
    // Publish the series at 0, so that it exists before the first loss.
    reconnects.increment(0);
    let mut was_connected = broker.is_connected();
    gauge.set(if was_connected { 1.0 } else { 0.0 });
    let mut lost_at = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(CONNECTION_CHECK_INTERVAL) => {}
        }
        let connected = broker.is_connected();
        if connected == was_connected {
            continue;
        }
        was_connected = connected;
        if connected {
            gauge.set(1.0);
            reconnects.increment(1);
            readiness.set(&check, true, "connected");
            tracing::info!(broker = %name, down_for = ?lost_at.elapsed(), "broker connection restored");
        } else {
            gauge.set(0.0);
            lost_at = tokio::time::Instant::now();
            readiness.set(&check, false, "connection lost; reconnecting");
            tracing::warn!(broker = %name, "broker connection lost; reconnecting");
        }
    }
}

fn reconnect_delay(attempt: u32) -> Duration {
    let base = Duration::from_millis(500).saturating_mul(2u32.saturating_pow(attempt.min(6)));
    base.min(Duration::from_secs(30))
        .mul_f64(rand::random_range(0.5..1.0))
}

/// Returns the publish targets of every event type: the exchanges in its
/// `publish` list, then every topic that lists it.
pub(crate) fn routes(manifest: &Manifest) -> HashMap<String, Vec<Route>> {
    let mut routes: HashMap<String, Vec<Route>> = manifest
        .events
        .iter()
        .map(|(event_type, entry)| {
            let format = match entry.def.encoding {
                Encoding::Structured => WireFormat::Structured,
                Encoding::Binary => WireFormat::Binary,
            };
            let targets = entry
                .def
                .publish
                .as_slice()
                .iter()
                .filter_map(|target| {
                    let exchange = target.exchange.get_ref();
                    Some(Route {
                        broker: manifest.exchange_broker(exchange)?.to_owned(),
                        destination: Destination::Exchange {
                            exchange: exchange.clone(),
                            routing_key: target.routing_key.clone(),
                            format,
                        },
                    })
                })
                .collect();
            (event_type.clone(), targets)
        })
        .collect();
    for (topic, entry) in &manifest.topics {
        for target in &entry.def.events {
            let key = target
                .key
                .as_ref()
                .and_then(|key| manifest::parse_partition_key(key.get_ref()).ok());
            routes
                .entry(target.event.get_ref().clone())
                .or_default()
                .push(Route {
                    broker: entry.def.broker.get_ref().clone(),
                    destination: Destination::Topic {
                        topic: topic.clone(),
                        key,
                    },
                });
        }
    }
    routes
}

/// Returns what a consumer reads. The manifest checks have made sure that
/// the consumer names exactly one existing queue or topic.
fn consumer_input(
    manifest: &Manifest,
    name: &str,
    def: &manifest::ConsumerDef,
) -> anyhow::Result<Input> {
    if let Some(queue) = &def.queue {
        let queue = queue.get_ref();
        let queue_def = &manifest.queues[queue].def;
        let dead_letter = queue_def
            .dead_letter
            .as_ref()
            .context("consumer queue without dead-letter exchange")?;
        return Ok(Input::Queue(QueueInput {
            queue: queue.clone(),
            retry_queue: topology::retry_queue_name(queue),
            dead_letter_exchange: dead_letter.exchange.get_ref().clone(),
            dead_letter_routing_key: dead_letter.routing_key.clone(),
        }));
    }
    let topic = def
        .topic
        .as_ref()
        .with_context(|| format!("consumer `{name}` has neither a queue nor a topic"))?
        .get_ref();
    let partitions = manifest.topics[topic].def.partitions.max(1);
    Ok(Input::Topic(TopicInput {
        topic: topic.clone(),
        group: def.group.clone().unwrap_or_else(|| name.to_owned()),
        dead_letter_topic: topology::dead_letter_topic(manifest, topic),
        members: def.concurrency.min(u32::try_from(partitions).unwrap_or(1)),
    }))
}

fn producers(manifest: &Manifest) -> anyhow::Result<Vec<Producer>> {
    let mut producers = Vec::new();
    for (name, entry) in &manifest.producers {
        let (method, path) = manifest::parse_route(entry.def.http.get_ref())
            .map_err(|message| anyhow::anyhow!("producer `{name}`: {message}"))?;
        producers.push(Producer {
            name: name.clone(),
            method: method.parse().context("invalid HTTP method")?,
            path,
            event_type: entry.def.event.get_ref().clone(),
            id_field: entry.def.id_field.clone(),
            source: format!("/{}/{name}", manifest.name),
            accepted_credentials: match manifest.producer_auth(name) {
                manifest::AuthDef::None => None,
                manifest::AuthDef::Credentials(names) => Some(
                    names
                        .iter()
                        .map(|credential| credential.get_ref().clone())
                        .collect(),
                ),
            },
        });
    }
    Ok(producers)
}

/// Resolves a consumer's grants: the values of its environment variables
/// now, its folders and its endpoints. A granted variable that is not set is left out;
/// loading the manifest warned about it.
fn grants(manifest: &Manifest, consumer: &str, def: &manifest::GrantsDef) -> Grants {
    let env = def
        .env
        .iter()
        .filter_map(|name| {
            let name = name.get_ref();
            std::env::var(name).ok().map(|value| (name.clone(), value))
        })
        .collect();
    Grants {
        env,
        read_dirs: manifest.granted_dirs(consumer),
        // Loading the manifest reported endpoints that do not parse.
        connect: def
            .connect
            .iter()
            .filter_map(|endpoint| endpoint.get_ref().parse().ok())
            .collect(),
    }
}

pub(crate) fn consumers(
    manifest: &Manifest,
    brokers: &HashMap<String, Arc<dyn Broker>>,
    schemas: &Schemas,
) -> anyhow::Result<Vec<Consumer>> {
    let mut consumers = Vec::new();
    for (name, entry) in &manifest.consumers {
        let def = &entry.def;
        let input = consumer_input(manifest, name, def)?;
        let broker_name = manifest
            .consumer_broker(name)
            .with_context(|| format!("consumer `{name}` has no broker"))?;
        consumers.push(Consumer {
            name: Arc::from(name.as_str()),
            input,
            broker: brokers[broker_name].clone(),
            prefetch: def.prefetch,
            concurrency: def.concurrency,
            retry: RetryPolicy {
                max_attempts: def.retry.max_attempts,
                backoff: def.retry.backoff.0,
                max_backoff: def.retry.max_backoff.0,
            },
            context: CallContext {
                consumer: Arc::from(name.as_str()),
                config: Arc::new(def.config.clone()),
                schemas: schemas.clone(),
                limits: Limits {
                    timeout: def.limits.timeout.0,
                    memory: def.limits.memory.0,
                    emit_size: def.limits.emit_size.0,
                    calls_per_instance: def.limits.calls_per_instance,
                },
                grants: Arc::new(grants(manifest, name, &def.grants)),
            },
            source: format!("/{}/{name}", manifest.name),
            handler_path: manifest.handler_path(name),
            metrics: ConsumerMetrics::new(name),
        });
    }
    Ok(consumers)
}
