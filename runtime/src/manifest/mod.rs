//! The manifest: its model, loading with `${VAR}` interpolation, and the
//! checks that tie its references together. Knows no broker connection.

mod check;
mod grants;
mod interpolate;
mod model;
mod parse;
mod problem;
mod routes;
mod security;
#[cfg(test)]
mod security_tests;
mod values;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

pub use check::{PartitionKey, parse_partition_key, parse_route};
pub use interpolate::{MissingVariable, expand};
pub use model::*;
pub use problem::{Problem, ProblemRecord, Severity, SourceFile, closest, record, render};
pub use routes::binding_matches;
pub use security::{KAFKA_SECURITY_PROPERTIES, SaslCredentials, TlsFiles};
pub use values::{ByteSize, HumanDuration, Secret};

/// What the manifests are loaded for; decides how strict some checks are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// `switchyard check`: a missing `${VAR}` is a warning (CI rarely has
    /// the secrets) and a missing handler file is an error.
    Check,
    /// `switchyard up` and the commands that connect: a missing `${VAR}` is
    /// an error and a missing handler only holds back its consumer.
    Run,
    /// `switchyard up --embedded`: as `Run`, except that the brokers'
    /// connection settings go unused, so a missing `${VAR}` or an invalid
    /// URL there is a warning.
    Embedded,
}

/// A definition together with the index of the file that contains it.
#[derive(Debug)]
pub struct Entry<T> {
    pub file: usize,
    /// Byte range of the entry's name in that file, such as `work` in
    /// `[queues.work]`.
    pub name_span: Option<std::ops::Range<usize>>,
    /// Byte range of the value of each key written in the entry, by dotted
    /// path such as `limits.timeout`. Keys left to their default are absent.
    pub key_spans: BTreeMap<String, std::ops::Range<usize>>,
    pub def: T,
}

/// All manifests given together, merged into one topology.
#[derive(Debug, Default)]
pub struct Manifest {
    pub files: Vec<SourceFile>,
    pub name: String,
    pub listen: Option<String>,
    /// File and span of `runtime.listen`, for problems with its value.
    listen_at: Option<(usize, std::ops::Range<usize>)>,
    pub drain_timeout: Duration,
    pub body_limit: u64,
    /// Address of the server for `/healthz`, `/readyz` and `/metrics`, when
    /// they are not served on `listen`.
    pub admin_listen: Option<String>,
    /// File and span of `runtime.admin_listen`, for problems with its value.
    admin_listen_at: Option<(usize, std::ops::Range<usize>)>,
    pub json_depth_limit: u32,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub write_timeout: Duration,
    /// `runtime.auth`: the credentials of producers without an `auth` of
    /// their own.
    pub auth: Option<Entry<Spanned<AuthDef>>>,
    pub cache_dir: Option<PathBuf>,
    pub brokers: BTreeMap<String, Entry<BrokerDef>>,
    pub exchanges: BTreeMap<String, Entry<ExchangeDef>>,
    pub queues: BTreeMap<String, Entry<QueueDef>>,
    pub topics: BTreeMap<String, Entry<TopicDef>>,
    pub events: BTreeMap<String, Entry<EventDef>>,
    pub producers: BTreeMap<String, Entry<ProducerDef>>,
    pub consumers: BTreeMap<String, Entry<ConsumerDef>>,
    pub credentials: BTreeMap<String, Entry<CredentialDef>>,
    /// Entries that are defined but did not parse, as `(kind, name)`.
    pub broken: Vec<(&'static str, String)>,
    /// Expanded `url` of each AMQP broker and `bootstrap` of each Kafka
    /// broker, by broker name.
    pub broker_urls: BTreeMap<String, String>,
    /// Expanded client `options` of each Kafka broker, by broker name.
    pub broker_options: BTreeMap<String, BTreeMap<String, String>>,
    /// Expanded `bearer` or `api_key` of each credential, by credential
    /// name. A credential whose value did not expand is missing.
    pub credential_secrets: BTreeMap<String, Secret>,
    /// Expanded and resolved `tls` files of each broker that has a `tls`
    /// table, by broker name.
    pub broker_tls: BTreeMap<String, TlsFiles>,
    /// Expanded `sasl` credentials of each Kafka broker that has them, by
    /// broker name.
    pub broker_sasl: BTreeMap<String, SaslCredentials>,
    schema_dirs: Vec<PathBuf>,
    handler_dirs: Vec<PathBuf>,
}

/// The result of loading: the model (possibly partial) and every problem.
#[derive(Debug)]
pub struct Loaded {
    pub manifest: Manifest,
    pub problems: Vec<Problem>,
}

impl Loaded {
    pub fn has_errors(&self) -> bool {
        self.problems.iter().any(Problem::is_error)
    }

    /// Renders every problem for a terminal.
    pub fn render(&self) -> String {
        render(&self.problems, &self.manifest.files)
    }
}

pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_BODY_LIMIT: u64 = 1024 * 1024;
pub const DEFAULT_JSON_DEPTH_LIMIT: u32 = 64;
/// Largest `runtime.json_depth_limit`: serde_json stops parsing at 128
/// levels of nesting, so 127 is the deepest body it reads.
pub const MAX_JSON_DEPTH_LIMIT: u32 = 127;
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(30);

impl Manifest {
    /// Returns each topic that lists `event_type`, by name, with its entry
    /// for the event.
    pub fn topics_of<'a>(
        &'a self,
        event_type: &'a str,
    ) -> impl Iterator<Item = (&'a String, &'a Entry<TopicDef>, &'a TopicEventDef)> + 'a {
        self.topics.iter().filter_map(move |(name, topic)| {
            let listed = topic
                .def
                .events
                .iter()
                .find(|listed| listed.event.get_ref() == event_type)?;
            Some((name, topic, listed))
        })
    }

    /// Returns the path of an event's schema file.
    pub fn schema_path(&self, event: &str) -> Option<PathBuf> {
        let entry = self.events.get(event)?;
        Some(self.schema_dirs[entry.file].join(entry.def.schema.get_ref()))
    }

    /// Returns the schema folder of the file that defines `event`.
    pub fn schema_dir(&self, event: &str) -> Option<&Path> {
        let entry = self.events.get(event)?;
        Some(&self.schema_dirs[entry.file])
    }

    /// Returns the path of a consumer's handler component.
    pub fn handler_path(&self, consumer: &str) -> Option<PathBuf> {
        let entry = self.consumers.get(consumer)?;
        Some(self.handler_dirs[entry.file].join(entry.def.handler.get_ref()))
    }

    /// Returns the folders a consumer's handler may read, as pairs of the
    /// path the handler opens and the host folder, resolved against the
    /// folder of the consumer's manifest.
    pub fn granted_dirs(&self, consumer: &str) -> Vec<(String, PathBuf)> {
        let Some(entry) = self.consumers.get(consumer) else {
            return Vec::new();
        };
        let folder = self.files[entry.file].folder();
        entry
            .def
            .grants
            .read_dirs
            .iter()
            .map(|(guest, host)| (guest.clone(), folder.join(host.get_ref())))
            .collect()
    }

    /// Returns the folders of the consumers' handler files, without repeats.
    pub fn handler_dirs(&self) -> Vec<PathBuf> {
        // The folder of each handler file, so that a handler in a subfolder
        // of `runtime.handlers` is watched too.
        let mut dirs: Vec<PathBuf> = self
            .consumers
            .keys()
            .filter_map(|consumer| self.handler_path(consumer))
            .filter_map(|path| path.parent().map(Path::to_path_buf))
            .collect();
        dirs.sort();
        dirs.dedup();
        dirs
    }

    /// Returns the broker that holds a queue.
    pub fn queue_broker(&self, queue: &str) -> Option<&str> {
        self.queues
            .get(queue)
            .map(|q| q.def.broker.get_ref().as_str())
    }

    /// Returns the broker that has a topic.
    pub fn topic_broker(&self, topic: &str) -> Option<&str> {
        self.topics
            .get(topic)
            .map(|t| t.def.broker.get_ref().as_str())
    }

    /// Returns the broker that a consumer reads from, through its queue or
    /// its topic.
    pub fn consumer_broker(&self, consumer: &str) -> Option<&str> {
        let def = &self.consumers.get(consumer)?.def;
        match (&def.queue, &def.topic) {
            (Some(queue), _) => self.queue_broker(queue.get_ref()),
            (None, Some(topic)) => self.topic_broker(topic.get_ref()),
            (None, None) => None,
        }
    }

    /// Returns the broker that holds an exchange.
    pub fn exchange_broker(&self, exchange: &str) -> Option<&str> {
        self.exchanges
            .get(exchange)
            .map(|e| e.def.broker.get_ref().as_str())
    }

    /// Returns the `auth` that applies to a producer: its own, else the
    /// runtime's, else `"none"`.
    pub fn producer_auth(&self, producer: &str) -> AuthDef {
        let own = self
            .producers
            .get(producer)
            .and_then(|entry| entry.def.auth.as_ref());
        let runtime = self.auth.as_ref().map(|entry| &entry.def);
        own.or(runtime)
            .map(|auth| auth.get_ref().clone())
            .unwrap_or(AuthDef::None)
    }
}

/// Loads and checks manifest files. Reports every problem it can find; the
/// model holds whatever parsed.
pub fn load(
    paths: &[PathBuf],
    purpose: Purpose,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Loaded {
    let mut manifest = Manifest {
        drain_timeout: DEFAULT_DRAIN_TIMEOUT,
        body_limit: DEFAULT_BODY_LIMIT,
        json_depth_limit: DEFAULT_JSON_DEPTH_LIMIT,
        header_timeout: DEFAULT_HEADER_TIMEOUT,
        body_timeout: DEFAULT_BODY_TIMEOUT,
        write_timeout: DEFAULT_WRITE_TIMEOUT,
        ..Manifest::default()
    };
    let mut problems = Vec::new();
    let mut runtime_origin: BTreeMap<&'static str, usize> = BTreeMap::new();

    for path in paths {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(err) => {
                problems.push(
                    Problem::error(
                        "manifest-unreadable",
                        format!("cannot read manifest `{}`: {err}", path.display()),
                    )
                    .hint("check the path; manifests are TOML files such as `manifests/shop.toml`"),
                );
                continue;
            }
        };
        let index = manifest.files.len();
        manifest.files.push(SourceFile {
            path: path.clone(),
            text,
        });
        let file = &manifest.files[index];

        let parsed = parse::parse(index, &file.text);
        problems.extend(parsed.problems);
        manifest.broken.extend(parsed.broken);
        merge(
            &mut manifest,
            index,
            parsed.manifest,
            &parsed.names,
            &mut runtime_origin,
            &mut problems,
        );
    }

    if manifest.name.is_empty() {
        manifest.name = "switchyard".to_owned();
    }
    expand_variables(&mut manifest, purpose, lookup, &mut problems);
    check_amqp_urls(&manifest, purpose, lookup, &mut problems);
    check::references(&manifest, purpose, &mut problems);
    security::check(&manifest, &mut problems);
    grants::check(&manifest, lookup, &mut problems);
    Loaded { manifest, problems }
}

fn merge(
    manifest: &mut Manifest,
    index: usize,
    parsed: ManifestFile,
    names: &NameSpans,
    runtime_origin: &mut BTreeMap<&'static str, usize>,
    problems: &mut Vec<Problem>,
) {
    let folder = manifest.files[index].folder().to_path_buf();
    let runtime = parsed.runtime;
    let schemas = runtime.schemas.as_deref().unwrap_or("../schemas");
    let handlers = runtime.handlers.as_deref().unwrap_or("../handlers");
    manifest.schema_dirs.push(folder.join(schemas));
    manifest.handler_dirs.push(folder.join(handlers));

    // `span` is where the setting's value is, when it is set here.
    let mut set_once = |key: &'static str, span: Option<std::ops::Range<usize>>| -> bool {
        let Some(span) = span else {
            return false;
        };
        if let Some(first) = runtime_origin.get(key) {
            problems.push(
                Problem::error(
                    "duplicate-runtime-setting",
                    format!(
                        "`runtime.{key}` is set in `{}` and again here",
                        manifest.files[*first].path.display()
                    ),
                )
                .at(index, span)
                .hint("set each runtime setting in one manifest only"),
            );
            return false;
        }
        runtime_origin.insert(key, index);
        true
    };
    if set_once("name", runtime.name.as_ref().map(Spanned::span)) {
        manifest.name = runtime.name.map(Spanned::into_inner).unwrap_or_default();
    }
    if set_once("listen", runtime.listen.as_ref().map(Spanned::span)) {
        manifest.listen_at = runtime.listen.as_ref().map(|l| (index, l.span()));
        manifest.listen = runtime.listen.map(Spanned::into_inner);
    }
    if set_once(
        "drain_timeout",
        runtime.drain_timeout.as_ref().map(Spanned::span),
    ) {
        manifest.drain_timeout = runtime
            .drain_timeout
            .map(|d| d.into_inner().0)
            .unwrap_or_default();
    }
    if set_once("body_limit", runtime.body_limit.as_ref().map(Spanned::span)) {
        manifest.body_limit = runtime
            .body_limit
            .map(|b| b.into_inner().0)
            .unwrap_or_default();
    }
    if set_once("cache", runtime.cache.as_ref().map(Spanned::span)) {
        manifest.cache_dir = runtime.cache.map(|c| folder.join(c.into_inner()));
    }
    if set_once(
        "admin_listen",
        runtime.admin_listen.as_ref().map(Spanned::span),
    ) {
        manifest.admin_listen_at = runtime.admin_listen.as_ref().map(|l| (index, l.span()));
        manifest.admin_listen = runtime.admin_listen.map(Spanned::into_inner);
    }
    // `set_once` borrows `problems` until its last call, so the problems of
    // out-of-range values wait here.
    let mut out_of_range = Vec::new();
    if let Some(limit) = runtime.json_depth_limit
        && set_once("json_depth_limit", Some(limit.span()))
    {
        if (1..=MAX_JSON_DEPTH_LIMIT).contains(limit.get_ref()) {
            manifest.json_depth_limit = limit.into_inner();
        } else {
            out_of_range.push(
                Problem::error(
                    "invalid-value",
                    format!(
                        "`runtime.json_depth_limit = {}` is out of range",
                        limit.get_ref()
                    ),
                )
                .at(index, limit.span())
                .hint(format!(
                    "set a depth from 1 to {MAX_JSON_DEPTH_LIMIT}; the default is {DEFAULT_JSON_DEPTH_LIMIT}"
                )),
            );
        }
    }
    for (key, value, target) in [
        (
            "header_timeout",
            runtime.header_timeout,
            &mut manifest.header_timeout,
        ),
        (
            "body_timeout",
            runtime.body_timeout,
            &mut manifest.body_timeout,
        ),
        (
            "write_timeout",
            runtime.write_timeout,
            &mut manifest.write_timeout,
        ),
    ] {
        let Some(value) = value else {
            continue;
        };
        if !set_once(key, Some(value.span())) {
            continue;
        }
        if value.get_ref().0.is_zero() {
            out_of_range.push(
                Problem::error("invalid-value", format!("`runtime.{key}` is zero"))
                    .at(index, value.span())
                    .hint("set a duration above zero, such as `10s`"),
            );
        } else {
            *target = value.into_inner().0;
        }
    }
    if set_once("auth", runtime.auth.as_ref().map(Spanned::span)) {
        manifest.auth = runtime.auth.map(|auth| Entry {
            file: index,
            name_span: None,
            key_spans: BTreeMap::new(),
            def: auth,
        });
    }
    problems.extend(out_of_range);

    let files = &manifest.files;
    insert_all(
        &mut manifest.brokers,
        "broker",
        parsed.brokers,
        index,
        files,
        names,
        problems,
    );
    insert_all(
        &mut manifest.exchanges,
        "exchange",
        parsed.exchanges,
        index,
        files,
        names,
        problems,
    );
    insert_all(
        &mut manifest.queues,
        "queue",
        parsed.queues,
        index,
        files,
        names,
        problems,
    );
    insert_all(
        &mut manifest.topics,
        "topic",
        parsed.topics,
        index,
        files,
        names,
        problems,
    );
    insert_all(
        &mut manifest.events,
        "event",
        parsed.events,
        index,
        files,
        names,
        problems,
    );
    insert_all(
        &mut manifest.producers,
        "producer",
        parsed.producers,
        index,
        files,
        names,
        problems,
    );
    insert_all(
        &mut manifest.consumers,
        "consumer",
        parsed.consumers,
        index,
        files,
        names,
        problems,
    );
    insert_all(
        &mut manifest.credentials,
        "credential",
        parsed.credentials,
        index,
        files,
        names,
        problems,
    );
}

/// Positions in the entries of one file, by `(kind, name)`.
type NameSpans = BTreeMap<(&'static str, String), parse::EntrySpans>;

fn insert_all<T>(
    target: &mut BTreeMap<String, Entry<T>>,
    kind: &'static str,
    defs: BTreeMap<String, T>,
    index: usize,
    files: &[SourceFile],
    names: &NameSpans,
    problems: &mut Vec<Problem>,
) {
    for (name, def) in defs {
        let spans = names.get(&(kind, name.clone())).cloned();
        let entry = Entry {
            file: index,
            name_span: spans.as_ref().map(|spans| spans.name.clone()),
            key_spans: spans.map(|spans| spans.keys).unwrap_or_default(),
            def,
        };
        if let Some(existing) = target.get(&name) {
            problems.push(
                Problem::error(
                    "duplicate-name",
                    format!(
                        "{kind} `{name}` is defined here and in `{}`",
                        files[existing.file].path.display()
                    ),
                )
                .at_entry(&entry)
                .hint("names are global across all manifests given together; rename one"),
            );
            continue;
        }
        target.insert(name, entry);
    }
}

fn expand_variables(
    manifest: &mut Manifest,
    purpose: Purpose,
    lookup: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<Problem>,
) {
    // `secret` is true for a credential's token or key, whose hint leaves
    // out the default because a default would be accepted whenever the
    // variable is unset or empty.
    // `connection` is true for the settings of a broker connection, which
    // the embedded broker does not use.
    let mut expand_one = |raw: &str,
                          file: usize,
                          span: Option<std::ops::Range<usize>>,
                          secret: bool,
                          connection: bool| {
        let at = |problem: Problem| match span.clone() {
            Some(span) => problem.at(file, span),
            None => problem.in_file(file),
        };
        match expand(raw, lookup) {
            Ok((value, missing)) => {
                for variable in missing {
                    let message = format!("environment variable `{}` is not set", variable.name);
                    let problem = match purpose {
                        Purpose::Check => Problem::warning("undefined-variable", message),
                        Purpose::Embedded if connection => Problem::warning(
                            "undefined-variable",
                            format!("{message}; the embedded broker does not use the setting"),
                        ),
                        Purpose::Run | Purpose::Embedded => {
                            Problem::error("undefined-variable", message)
                        }
                    };
                    let hint = if secret {
                        format!("set `{}` to the secret", variable.name)
                    } else {
                        format!(
                            "set `{name}` or give a default: `${{{name}:-value}}`",
                            name = variable.name
                        )
                    };
                    problems.push(at(problem.hint(hint)));
                }
                Some(value)
            }
            Err(message) => {
                problems.push(at(Problem::error("invalid-interpolation", message)));
                None
            }
        }
    };

    for (name, entry) in &manifest.brokers {
        let address = entry.def.url.as_ref().or(entry.def.bootstrap.as_ref());
        if let Some(address) = address
            && let Some(value) = expand_one(
                address.get_ref(),
                entry.file,
                Some(address.span()),
                false,
                true,
            )
        {
            manifest.broker_urls.insert(name.clone(), value);
        }
        let mut options = BTreeMap::new();
        for (key, value) in &entry.def.options {
            if let Some(value) =
                expand_one(value.get_ref(), entry.file, Some(value.span()), false, true)
            {
                options.insert(key.clone(), value);
            }
        }
        manifest.broker_options.insert(name.clone(), options);

        let mut expand_field = |value: &Spanned<String>| {
            expand_one(value.get_ref(), entry.file, Some(value.span()), false, true)
        };
        if let Some(tls) = &entry.def.tls {
            let folder = manifest.files[entry.file].folder();
            let files = TlsFiles {
                ca: security::resolve_path(tls.ca.as_ref().and_then(&mut expand_field), folder),
                cert: security::resolve_path(tls.cert.as_ref().and_then(&mut expand_field), folder),
                key: security::resolve_path(tls.key.as_ref().and_then(&mut expand_field), folder),
            };
            manifest.broker_tls.insert(name.clone(), files);
        }
        if let Some(sasl) = &entry.def.sasl {
            let username = expand_field(&sasl.username);
            let password = expand_field(&sasl.password);
            if let (Some(username), Some(password)) = (username, password) {
                let credentials = SaslCredentials {
                    mechanism: sasl.mechanism,
                    username,
                    password,
                };
                manifest.broker_sasl.insert(name.clone(), credentials);
            }
        }
    }
    // Pushed after `expand_one`, which borrows `problems`, is done. Only
    // `check` reports them, because `up --listen` and `--admin-listen`
    // replace the manifest's addresses and `up` reports an address it uses.
    let mut invalid_addresses = Vec::new();
    if let (Some(listen), Some((file, span))) =
        (manifest.listen.clone(), manifest.listen_at.clone())
    {
        manifest.listen = expand_one(&listen, file, Some(span.clone()), false, false);
        if let Some(problem) =
            address_problem(manifest.listen.as_deref(), "listen", "127.0.0.1:3000")
        {
            invalid_addresses.push(problem.at(file, span));
        }
    }
    if let (Some(listen), Some((file, span))) = (
        manifest.admin_listen.clone(),
        manifest.admin_listen_at.clone(),
    ) {
        manifest.admin_listen = expand_one(&listen, file, Some(span.clone()), false, false);
        if let Some(problem) = address_problem(
            manifest.admin_listen.as_deref(),
            "admin_listen",
            "127.0.0.1:9090",
        ) {
            invalid_addresses.push(problem.at(file, span));
        }
    }
    let mut secrets = Vec::new();
    for (name, entry) in &manifest.credentials {
        let Some(value) = entry.def.secret() else {
            continue;
        };
        if let Some(secret) =
            expand_one(value.get_ref(), entry.file, Some(value.span()), true, false)
        {
            secrets.push((name.clone(), entry.file, value, secret));
        }
    }
    if purpose == Purpose::Check {
        problems.extend(invalid_addresses);
    }
    for (name, file, value, secret) in secrets {
        if !secret.is_empty() {
            manifest
                .credential_secrets
                .insert(name, Secret::new(secret));
            continue;
        }
        // A missing variable was reported already.
        let all_set = expand(value.get_ref(), lookup).is_ok_and(|(_, missing)| missing.is_empty());
        if all_set {
            problems.push(
                Problem::error(
                    "invalid-value",
                    format!("the secret of credential `{name}` is empty"),
                )
                .at(file, value.span())
                .hint("set the variable it names to the token or key; it must not be empty"),
            );
        }
    }
}

/// Reports a `runtime.listen` or `runtime.admin_listen` value that is not
/// an IP address and port, which `up` could not listen on. An empty value
/// comes from a missing variable, which is reported already.
fn address_problem(address: Option<&str>, setting: &str, example: &str) -> Option<Problem> {
    let address = address.filter(|address| !address.is_empty())?;
    if address.parse::<std::net::SocketAddr>().is_ok() {
        return None;
    }
    Some(
        Problem::error(
            "invalid-value",
            format!("`runtime.{setting}` is `{address}`, which is not an IP address and port"),
        )
        .hint(format!("write an IP address and port, such as `{example}`")),
    )
}

/// Reports an `amqp` broker URL that is empty or does not parse, so that
/// `check` finds it and `up` stops before connecting instead of retrying a URL
/// that can never work. A message that shows the URL redacts its password.
fn check_amqp_urls(
    manifest: &Manifest,
    purpose: Purpose,
    lookup: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<Problem>,
) {
    for (name, entry) in &manifest.brokers {
        if entry.def.kind != BrokerKind::Amqp {
            continue;
        }
        let (Some(written), Some(url)) = (&entry.def.url, manifest.broker_urls.get(name)) else {
            continue;
        };
        // A missing variable was reported already.
        let all_set =
            expand(written.get_ref(), lookup).is_ok_and(|(_, missing)| missing.is_empty());
        if !all_set {
            continue;
        }
        let message = if url.trim().is_empty() {
            format!("the URL of broker `{name}` is empty")
        } else {
            match crate::broker::amqp::parse_url(name, url) {
                Ok(_) => continue,
                Err(error) => error.to_string(),
            }
        };
        let problem = match purpose {
            Purpose::Embedded => Problem::warning(
                "invalid-url",
                format!("{message}; the embedded broker does not use it"),
            ),
            Purpose::Check | Purpose::Run => Problem::error("invalid-url", message),
        };
        problems.push(problem.at(entry.file, written.span()).hint(
            "write an AMQP URL such as `amqp://user:password@host:5672/%2f`, or set the \
                     variable that the URL names to one",
        ));
    }
}

#[cfg(test)]
mod tests;
