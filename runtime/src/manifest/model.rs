//! The manifest as written: one TOML file, deserialised with positions kept
//! on every field that names another entity.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Deserialize;
use toml::Spanned;

use super::values::{ByteSize, HumanDuration};

/// One switchyard manifest file. Several files given together form one
/// topology: names are global and references may cross files.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ManifestFile {
    /// Settings of the runtime process.
    #[serde(default)]
    pub runtime: RuntimeSection,
    /// Broker connections, by name.
    #[serde(default)]
    pub brokers: BTreeMap<String, BrokerDef>,
    /// AMQP exchanges, by name.
    #[serde(default)]
    pub exchanges: BTreeMap<String, ExchangeDef>,
    /// AMQP queues, by name.
    #[serde(default)]
    pub queues: BTreeMap<String, QueueDef>,
    /// Kafka topics, by name.
    #[serde(default)]
    pub topics: BTreeMap<String, TopicDef>,
    /// Event types, by CloudEvents `type`.
    #[serde(default)]
    pub events: BTreeMap<String, EventDef>,
    /// HTTP endpoints that publish events, by name.
    #[serde(default)]
    pub producers: BTreeMap<String, ProducerDef>,
    /// Queue and topic consumers that run a WebAssembly handler, by name.
    #[serde(default)]
    pub consumers: BTreeMap<String, ConsumerDef>,
    /// Bearer tokens and API keys that HTTP producers accept, by name.
    #[serde(default)]
    pub credentials: BTreeMap<String, CredentialDef>,
}

/// Settings of the runtime process.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RuntimeSection {
    /// Name of this system, used as the CloudEvents `source` prefix.
    #[schemars(with = "Option<String>")]
    pub name: Option<Spanned<String>>,
    /// Address of the HTTP server for producers, probes and metrics, such as
    /// `127.0.0.1:3000`. `${VAR}` and `${VAR:-default}` are expanded.
    #[schemars(with = "Option<String>")]
    pub listen: Option<Spanned<String>>,
    /// Folder of the event JSON Schemas, relative to this manifest.
    /// Default `../schemas`.
    pub schemas: Option<String>,
    /// Folder of the handler components, relative to this manifest.
    /// Default `../handlers`.
    pub handlers: Option<String>,
    /// Folder for compiled handler components, relative to this manifest.
    /// Default `$XDG_CACHE_HOME/switchyard/components`, else
    /// `~/.cache/switchyard/components`.
    #[schemars(with = "Option<String>")]
    pub cache: Option<Spanned<String>>,
    /// How long shutdown waits for in-flight events, such as `30s`.
    #[schemars(with = "Option<String>")]
    pub drain_timeout: Option<Spanned<HumanDuration>>,
    /// Largest accepted HTTP request body, such as `1MiB`.
    #[schemars(with = "Option<String>")]
    pub body_limit: Option<Spanned<ByteSize>>,
    /// Address of a second HTTP server for `/healthz`, `/readyz` and
    /// `/metrics`, such as `127.0.0.1:9090`. When set, the producer server
    /// no longer serves them. Default: unset, so the `listen` server serves
    /// them. `${VAR}` and `${VAR:-default}` are expanded.
    #[schemars(with = "Option<String>")]
    pub admin_listen: Option<Spanned<String>>,
    /// Maximum nesting depth of arrays and objects in a producer request
    /// body, from 1 to 127. Default 64.
    #[schemars(with = "Option<u32>")]
    pub json_depth_limit: Option<Spanned<u32>>,
    /// Time a client has to send a request's line and headers, counted from
    /// the connection's start or the end of its previous request, such as
    /// `10s`. Default `10s`.
    #[schemars(with = "Option<String>")]
    pub header_timeout: Option<Spanned<HumanDuration>>,
    /// Time a client has to send a request's body once its headers arrived,
    /// such as `30s`. Default `30s`.
    #[schemars(with = "Option<String>")]
    pub body_timeout: Option<Spanned<HumanDuration>>,
    /// Time a response write may wait for the client to read, such as
    /// `30s`; a client that reads nothing for that long is disconnected.
    /// Default `30s`.
    #[schemars(with = "Option<String>")]
    pub write_timeout: Option<Spanned<HumanDuration>>,
    /// Credentials that every producer without an `auth` of its own accepts:
    /// names of `[credentials]` entries, or `"none"`. Default `"none"`, so
    /// such producers accept requests without credentials.
    #[schemars(with = "Option<AuthDef>")]
    pub auth: Option<Spanned<AuthDef>>,
}

/// A broker connection.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BrokerDef {
    /// Broker protocol: `amqp` for RabbitMQ or another AMQP 0-9-1 broker,
    /// `kafka` for Kafka or a Kafka-compatible broker.
    pub kind: BrokerKind,
    /// Connection URL of an `amqp` broker, such as
    /// `amqp://user:pass@host:5672/%2f`. `${VAR}` and `${VAR:-default}` are
    /// expanded.
    #[schemars(with = "Option<String>")]
    pub url: Option<Spanned<String>>,
    /// Bootstrap servers of a `kafka` broker, such as
    /// `kafka-1:9092,kafka-2:9092`. `${VAR}` and `${VAR:-default}` are
    /// expanded.
    #[schemars(with = "Option<String>")]
    pub bootstrap: Option<Spanned<String>>,
    /// Client properties of a `kafka` broker, as librdkafka names them, such
    /// as `"client.id" = "switchyard"` or
    /// `"ssl.key.password" = "${KAFKA_KEY_PASSWORD}"`. Values are expanded
    /// like `url`. The properties that `tls` and `sasl` set, such as
    /// `security.protocol`, must not be repeated here, nor those that
    /// switchyard sets itself, such as `acks` and `auto.offset.reset`
    /// (`check` names them). `client.id` names the producer and the admin
    /// client, while consumers name theirs after the consumer.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, String>")]
    pub options: BTreeMap<String, Spanned<String>>,
    /// How long a publish waits for the broker's confirm (AMQP) or delivery
    /// report (Kafka), such as `30s`. Default `5s` for `amqp` and `10s` for
    /// `kafka`.
    #[schemars(with = "Option<String>")]
    pub confirm_timeout: Option<HumanDuration>,
    /// TLS settings. An `amqp` broker with this table needs an `amqps://`
    /// URL. A `kafka` broker with this table connects with TLS
    /// (`security.protocol` `SSL`, or `SASL_SSL` with `sasl`). `tls = {}`
    /// trusts the system's CA certificates only.
    pub tls: Option<TlsDef>,
    /// SASL authentication of a `kafka` broker. An `amqp` broker takes its
    /// user and password in the URL.
    pub sasl: Option<SaslDef>,
}

/// TLS files of a broker connection, each a PEM file. Paths are relative to
/// this manifest's folder; `${VAR}` and `${VAR:-default}` are expanded.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsDef {
    /// CA certificates that the broker's certificate must chain to, such as
    /// `certs/ca.pem`. An `amqp` broker trusts them besides the system's CA
    /// certificates, a `kafka` broker instead of them.
    #[schemars(with = "Option<String>")]
    pub ca: Option<Spanned<String>>,
    /// Client certificate, for brokers that require one. Needs `key`.
    #[schemars(with = "Option<String>")]
    pub cert: Option<Spanned<String>>,
    /// Unencrypted private key of the client certificate (PKCS#8, PKCS#1 or
    /// SEC1). Needs `cert`.
    #[schemars(with = "Option<String>")]
    pub key: Option<Spanned<String>>,
}

/// SASL authentication of a Kafka broker.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SaslDef {
    /// SASL mechanism.
    pub mechanism: SaslMechanism,
    /// User name. `${VAR}` and `${VAR:-default}` are expanded.
    #[schemars(with = "String")]
    pub username: Spanned<String>,
    /// Password; write it as `${VAR}`, such as `${KAFKA_PASSWORD}`.
    #[schemars(with = "String")]
    pub password: Spanned<String>,
}

/// SASL mechanisms of Kafka brokers.
#[derive(Clone, Copy, Debug, Deserialize, JsonSchema, PartialEq, Eq)]
pub enum SaslMechanism {
    /// User name and password sent as they are: use it only with `tls`.
    #[serde(rename = "PLAIN")]
    Plain,
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
}

impl SaslMechanism {
    /// Returns the mechanism's name as Kafka and the manifest write it.
    pub fn as_str(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

/// Broker protocols.
#[derive(Clone, Copy, Debug, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BrokerKind {
    Amqp,
    Kafka,
}

impl BrokerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BrokerKind::Amqp => "amqp",
            BrokerKind::Kafka => "kafka",
        }
    }
}

/// The AMQP 0-9-1 exchange types.
#[derive(Clone, Copy, Debug, Default, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ExchangeType {
    Direct,
    Fanout,
    #[default]
    Topic,
    Headers,
}

impl ExchangeType {
    /// Returns the type's name as AMQP and the manifest write it.
    pub fn name(self) -> &'static str {
        match self {
            ExchangeType::Direct => "direct",
            ExchangeType::Fanout => "fanout",
            ExchangeType::Topic => "topic",
            ExchangeType::Headers => "headers",
        }
    }
}

/// An AMQP exchange.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExchangeDef {
    /// Name of the broker that has this exchange.
    #[schemars(with = "String")]
    pub broker: Spanned<String>,
    /// Exchange type. Default `topic`.
    #[serde(default, rename = "type")]
    pub kind: ExchangeType,
    /// Whether the exchange survives a broker restart. Default true.
    #[serde(default = "default_true")]
    pub durable: bool,
    /// Exchange that receives what no binding routes. Default: the
    /// broker's `unroutable` exchange, whose queue keeps those messages.
    #[schemars(with = "Option<String>")]
    pub alternate_exchange: Option<Spanned<String>>,
}

/// RabbitMQ's queue types.
#[derive(Clone, Copy, Debug, Default, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum QueueType {
    #[default]
    Classic,
    Quorum,
    Stream,
}

/// An AMQP queue.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QueueDef {
    /// Name of the broker that has this queue.
    #[schemars(with = "String")]
    pub broker: Spanned<String>,
    /// Queue type. Default `classic`.
    #[serde(default, rename = "type")]
    pub kind: QueueType,
    /// Whether the queue survives a broker restart. Default true.
    #[serde(default = "default_true")]
    pub durable: bool,
    /// Bindings from exchanges to this queue.
    #[serde(default)]
    pub bind: Vec<BindDef>,
    /// Dead-letter target for rejected and failed messages.
    pub dead_letter: Option<DeadLetterDef>,
    /// Time after which a message in this queue expires, such as `1h`.
    #[schemars(with = "Option<String>")]
    pub message_ttl: Option<HumanDuration>,
    /// Whether applications outside these manifests read this queue, so
    /// `check` does not warn that no consumer reads it. Default false.
    #[serde(default)]
    pub external_consumers: bool,
}

/// A binding of a queue to an exchange.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BindDef {
    /// Exchange to bind to.
    #[schemars(with = "String")]
    pub exchange: Spanned<String>,
    /// Routing key, or for a topic exchange a pattern where `*` matches one
    /// word and `#` zero or more words.
    #[schemars(with = "String")]
    #[serde(default = "empty_spanned")]
    pub key: Spanned<String>,
}

/// Dead-letter settings of a queue.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterDef {
    /// Exchange that receives dead letters.
    #[schemars(with = "String")]
    pub exchange: Spanned<String>,
    /// Routing key for dead letters. Default: the message's own key.
    pub routing_key: Option<String>,
}

/// A Kafka topic.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TopicDef {
    /// Name of the `kafka` broker that has this topic.
    #[schemars(with = "String")]
    pub broker: Spanned<String>,
    /// Number of partitions. Default 1.
    #[serde(default = "default_partitions")]
    pub partitions: i32,
    /// Copies of each partition on different brokers. Default 1.
    #[serde(default = "default_replication_factor")]
    pub replication_factor: i32,
    /// Topic configuration, as Kafka names it, such as
    /// `"retention.ms" = "604800000"` or `"cleanup.policy" = "compact"`.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    /// Events published to this topic, each with its partition key.
    #[serde(default)]
    pub events: Vec<TopicEventDef>,
    /// Topic that receives the records its consumers fail on.
    /// Default: this topic's name followed by `.dead-letters`.
    pub dead_letter: Option<String>,
}

/// An event type published to a topic.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TopicEventDef {
    /// Event type.
    #[schemars(with = "String")]
    pub event: Spanned<String>,
    /// Partition key of each record: a CloudEvents attribute (`id`,
    /// `source`, `subject`, `type`, `time`) or a field of the event data, such as
    /// `data.customerId`. Records with the same key keep their order.
    /// Default: no key, so records spread over the partitions.
    #[schemars(with = "Option<String>")]
    pub key: Option<Spanned<String>>,
}

/// Wire encoding of CloudEvents attributes on AMQP.
#[derive(Clone, Copy, Debug, Default, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// One `application/cloudevents+json` body holding attributes and data.
    #[default]
    Structured,
    /// Attributes in `cloudEvents_*` headers, data alone in the body.
    Binary,
}

/// An event type.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EventDef {
    /// JSON Schema file of the event data, relative to the schemas folder.
    #[schemars(with = "String")]
    pub schema: Spanned<String>,
    /// Publish targets of this event type: one table or a list.
    #[serde(default)]
    pub publish: OneOrMany<PublishDef>,
    /// Wire encoding on AMQP. Default `structured`.
    #[serde(default)]
    pub encoding: Encoding,
}

/// A publish target of an event type.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PublishDef {
    /// Exchange to publish to.
    #[schemars(with = "String")]
    pub exchange: Spanned<String>,
    /// Routing key. Default: the event type.
    pub routing_key: Option<String>,
}

/// One table or a list of tables.
#[derive(Debug, JsonSchema)]
#[serde(untagged)]
pub enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

impl<T> Default for OneOrMany<T> {
    fn default() -> Self {
        OneOrMany::Many(Vec::new())
    }
}

// Written by hand because serde's untagged enums buffer their input, which
// loses the positions that `Spanned` fields need.
impl<'de, T: Deserialize<'de>> Deserialize<'de> for OneOrMany<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor<T>(std::marker::PhantomData<T>);

        impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for Visitor<T> {
            type Value = OneOrMany<T>;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a table or an array of tables")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Self::Value, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(OneOrMany::One)
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                seq: A,
            ) -> Result<Self::Value, A::Error> {
                Vec::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))
                    .map(OneOrMany::Many)
            }
        }

        deserializer.deserialize_any(Visitor(std::marker::PhantomData))
    }
}

impl<T> OneOrMany<T> {
    pub fn as_slice(&self) -> &[T] {
        match self {
            OneOrMany::One(one) => std::slice::from_ref(one),
            OneOrMany::Many(many) => many,
        }
    }
}

/// An HTTP endpoint that publishes one event type.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProducerDef {
    /// Method and path, such as `POST /orders`.
    #[schemars(with = "String")]
    pub http: Spanned<String>,
    /// Event type published for each accepted request.
    #[schemars(with = "String")]
    pub event: Spanned<String>,
    /// Data field that receives the event id when the request leaves it out,
    /// such as `orderId`.
    pub id_field: Option<String>,
    /// Credentials this producer accepts: names of `[credentials]` entries,
    /// or `"none"` for requests without credentials. Default: the runtime's
    /// `auth`.
    #[schemars(with = "Option<AuthDef>")]
    pub auth: Option<Spanned<AuthDef>>,
}

/// The credentials an HTTP producer accepts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthDef {
    /// `"none"`: requests need no credentials.
    None,
    /// Names of `[credentials]` entries; a request must present one of them.
    Credentials(Vec<Spanned<String>>),
}

impl AuthDef {
    /// Returns the credential names, none for `"none"`.
    pub fn names(&self) -> &[Spanned<String>] {
        match self {
            AuthDef::None => &[],
            AuthDef::Credentials(names) => names,
        }
    }
}

// Written by hand, like `OneOrMany`, so the names keep their positions.
impl<'de> Deserialize<'de> for AuthDef {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;

        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = AuthDef;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("`\"none\"` or an array of credential names")
            }

            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Self::Value, E> {
                if text == "none" {
                    Ok(AuthDef::None)
                } else {
                    Err(E::invalid_value(serde::de::Unexpected::Str(text), &self))
                }
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                seq: A,
            ) -> Result<Self::Value, A::Error> {
                Vec::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))
                    .map(AuthDef::Credentials)
            }
        }

        deserializer.deserialize_any(Visitor)
    }
}

impl JsonSchema for AuthDef {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "AuthDef".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "`\"none\"`, or the names of the `[credentials]` entries that are accepted.",
            "anyOf": [
                { "type": "string", "enum": ["none"] },
                { "type": "array", "items": { "type": "string" } }
            ]
        })
    }
}

/// A credential that HTTP producers accept: a bearer token or an API key.
/// Give exactly one of `bearer` and `api_key`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CredentialDef {
    /// Token that a request sends as `Authorization: Bearer <token>`. Write
    /// it as `${VAR}` so the secret stays out of the manifest.
    #[schemars(with = "Option<String>")]
    pub bearer: Option<Spanned<String>>,
    /// Key that a request sends in the `header` header. Write it as
    /// `${VAR}` so the secret stays out of the manifest.
    #[schemars(with = "Option<String>")]
    pub api_key: Option<Spanned<String>>,
    /// Request header that carries an `api_key`. Default `X-Api-Key`.
    #[schemars(with = "Option<String>")]
    pub header: Option<Spanned<String>>,
}

/// Request header of an API key when the credential names none.
pub const DEFAULT_API_KEY_HEADER: &str = "X-Api-Key";

impl CredentialDef {
    /// Returns the value as written: `bearer`, else `api_key`.
    pub fn secret(&self) -> Option<&Spanned<String>> {
        self.bearer.as_ref().or(self.api_key.as_ref())
    }
}

/// A consumer: reads a queue or a topic and calls a handler for each event.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsumerDef {
    /// Queue to consume. Give either `queue` or `topic`.
    #[schemars(with = "Option<String>")]
    pub queue: Option<Spanned<String>>,
    /// Kafka topic to consume in a consumer group. Give either `queue` or
    /// `topic`.
    #[schemars(with = "Option<String>")]
    pub topic: Option<Spanned<String>>,
    /// Consumer group of a topic consumer. Default: the consumer's name.
    pub group: Option<String>,
    /// Handler component file, relative to the handlers folder, such as
    /// `email.wasm`.
    #[schemars(with = "String")]
    pub handler: Spanned<String>,
    /// Maximum unacknowledged deliveries of a queue consumer. Default 32.
    #[serde(default = "default_prefetch")]
    pub prefetch: u16,
    /// Maximum handler calls running at once. Default 8. A topic consumer
    /// runs this many group members, at most one per partition, and each
    /// member handles its partitions' records one at a time, in order.
    #[serde(default = "default_concurrency")]
    pub concurrency: u32,
    /// Retry policy for failed handler calls.
    #[serde(default)]
    pub retry: RetryDef,
    /// Resource limits of the handler and its calls.
    #[serde(default)]
    pub limits: LimitsDef,
    /// Host resources the handler may use besides clocks, random numbers and
    /// its log. Default: none.
    #[serde(default)]
    pub grants: GrantsDef,
    /// Values the handler reads with the host's `config` function.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
}

/// Retry policy of a consumer.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryDef {
    /// Handler calls for one event before it is dead-lettered. Default 5.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Delay before the second call, doubled for each later one, such as
    /// `500ms`. Default `1s`.
    #[schemars(with = "String")]
    #[serde(default = "default_backoff")]
    pub backoff: HumanDuration,
    /// Maximum delay between two calls. Default `5m`.
    #[schemars(with = "String")]
    #[serde(default = "default_max_backoff")]
    pub max_backoff: HumanDuration,
}

impl Default for RetryDef {
    fn default() -> Self {
        RetryDef {
            max_attempts: default_max_attempts(),
            backoff: default_backoff(),
            max_backoff: default_max_backoff(),
        }
    }
}

/// Resource limits of the handler.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitsDef {
    /// Deadline of one call, such as `2s`. Default `2s`.
    #[schemars(with = "String")]
    #[serde(default = "default_timeout")]
    pub timeout: HumanDuration,
    /// Largest linear memory of the handler, such as `64MiB`. Default `64MiB`.
    #[schemars(with = "String")]
    #[serde(default = "default_memory")]
    pub memory: ByteSize,
    /// Largest total size of the event data that one call emits, such as
    /// `256KiB`. Default `1MiB`.
    #[schemars(with = "String")]
    #[serde(default = "default_emit_size")]
    pub emit_size: ByteSize,
    /// Calls one handler instance serves before a fresh instance replaces
    /// it. Default 1000. An instance is also replaced after a trap or a
    /// limit hit. 1 gives every call a fresh instance, which costs about
    /// 5 µs more per call for a no-op handler.
    #[serde(default = "default_calls_per_instance")]
    pub calls_per_instance: u32,
}

impl Default for LimitsDef {
    fn default() -> Self {
        LimitsDef {
            timeout: default_timeout(),
            memory: default_memory(),
            emit_size: default_emit_size(),
            calls_per_instance: default_calls_per_instance(),
        }
    }
}

/// Host resources a handler may use; nothing unless granted here.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GrantsDef {
    /// Environment variables of the switchyard process passed to the
    /// handler, by name, such as `["TZ"]`. Their values are read at start.
    #[schemars(with = "Vec<String>")]
    #[serde(default)]
    pub env: Vec<Spanned<String>>,
    /// Folders the handler may read, such as `{ "/reference" = "data/ref" }`:
    /// the path the handler opens, then the folder on the host, relative to
    /// the manifest's folder. Nothing in them can be written.
    #[schemars(with = "BTreeMap<String, String>")]
    #[serde(default)]
    pub read_dirs: BTreeMap<String, Spanned<String>>,
    /// Endpoints the handler may open TCP connections to, as `host:port`,
    /// such as `["redis:6379", "10.0.0.7:443"]`. Host names are looked up
    /// at each connection. A handler with endpoints may also look up names;
    /// every other socket use is denied.
    #[schemars(with = "Vec<String>")]
    #[serde(default)]
    pub connect: Vec<Spanned<String>>,
}

fn default_true() -> bool {
    true
}

fn empty_spanned() -> Spanned<String> {
    Spanned::new(0..0, String::new())
}

fn default_partitions() -> i32 {
    1
}

fn default_replication_factor() -> i32 {
    1
}

fn default_prefetch() -> u16 {
    32
}

fn default_concurrency() -> u32 {
    8
}

fn default_max_attempts() -> u32 {
    5
}

fn default_backoff() -> HumanDuration {
    HumanDuration::from_secs(1)
}

fn default_max_backoff() -> HumanDuration {
    HumanDuration::from_secs(300)
}

fn default_timeout() -> HumanDuration {
    HumanDuration::from_secs(2)
}

fn default_memory() -> ByteSize {
    ByteSize(64 * 1024 * 1024)
}

fn default_emit_size() -> ByteSize {
    ByteSize(1024 * 1024)
}

fn default_calls_per_instance() -> u32 {
    1000
}
