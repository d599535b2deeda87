//! Kafka through rdkafka (bundled librdkafka): topics created with the admin
//! client, an idempotent producer with `acks=all` that waits for each
//! delivery report, and consumer group members that commit only the offsets
//! of records the caller marked as done.
//!
//! Exchanges and queues do not exist here; those operations fail with
//! `BrokerError::Unsupported`, which the manifest checks rule out first.

mod admin;
mod reader;
mod security;

use std::collections::BTreeMap;
use std::ffi::{CStr, c_char, c_void};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use rdkafka::ClientConfig;
use rdkafka::admin::AdminClient;
use rdkafka::bindings::{rd_kafka_header_get_all, rd_kafka_headers_t, rd_kafka_resp_err_t};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedHeaders, Header, Headers as _, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};

use self::security::ErrorRecorder;
use super::{
    Broker, BrokerError, Deliveries, HeaderValue, Headers, Message, SubscribeOptions, TopicReader,
};
use crate::manifest::{SaslCredentials, TlsFiles};
use crate::topology::{BindingSpec, ExchangeSpec, QueueSpec, TopicSpec, TopicState};

/// Header of the CloudEvents Kafka binding that carries the content type.
const CONTENT_TYPE_HEADER: &str = "content-type";

/// How long a metadata request may take before the broker counts as
/// unreachable.
const METADATA_TIMEOUT: Duration = Duration::from_secs(5);

/// Settings of a Kafka connection beyond the manifest's client options.
#[derive(Clone, Debug)]
pub struct KafkaOptions {
    /// How long a produced record may wait for its delivery report.
    pub delivery_timeout: Duration,
    /// TLS files; with them every client connects with TLS.
    pub tls: Option<TlsFiles>,
    /// SASL credentials; with them every client authenticates.
    pub sasl: Option<SaslCredentials>,
}

impl Default for KafkaOptions {
    fn default() -> Self {
        KafkaOptions {
            delivery_timeout: Duration::from_secs(10),
            tls: None,
            sasl: None,
        }
    }
}

/// A connection to a Kafka cluster.
pub struct KafkaBroker {
    name: String,
    bootstrap: String,
    client_options: BTreeMap<String, String>,
    options: KafkaOptions,
    producer: FutureProducer<ErrorRecorder>,
    admin: Arc<AdminClient<DefaultClientContext>>,
    connected: Arc<AtomicBool>,
}

impl KafkaBroker {
    /// Creates the clients and checks that the cluster responds to a
    /// metadata request. `client_options` are librdkafka properties such as
    /// `security.protocol`; they apply to every client of this broker.
    pub async fn connect(
        name: &str,
        bootstrap: &str,
        client_options: &BTreeMap<String, String>,
        options: KafkaOptions,
    ) -> Result<KafkaBroker, BrokerError> {
        let unreachable = |reason: String| BrokerError::Unreachable {
            broker: name.to_owned(),
            reason,
        };
        // The security properties live only in this private map, which is
        // never logged, because it contains the SASL password.
        let mut client_options = client_options.clone();
        client_options.extend(security::properties(
            options.tls.as_ref(),
            options.sasl.as_ref(),
        ));
        let timeout_ms = options.delivery_timeout.as_millis().max(1).to_string();
        let (recorder, last_error) = ErrorRecorder::new(name);
        let producer: FutureProducer<ErrorRecorder> = client_config(bootstrap, &client_options)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.timeout.ms", &timeout_ms)
            .create_with_context(recorder)
            .map_err(|err| unreachable(format!("cannot create the producer: {err}")))?;
        let admin: AdminClient<DefaultClientContext> = client_config(bootstrap, &client_options)
            .create()
            .map_err(|err| unreachable(format!("cannot create the admin client: {err}")))?;

        if let Err(err) = fetch_metadata(&producer, None).await {
            let mut reason = format!("the metadata request to `{bootstrap}` failed: {err}");
            if let Some(last) = last_error.get() {
                reason.push_str(&format!("; the client reported: {last}"));
                if let Some(hint) = security::hint(name, &last) {
                    reason.push_str(&format!("; {hint}"));
                }
            }
            return Err(unreachable(reason));
        }

        let connected = Arc::new(AtomicBool::new(true));
        tokio::spawn(watch_connection(
            producer.clone(),
            Arc::downgrade(&connected),
        ));
        Ok(KafkaBroker {
            name: name.to_owned(),
            bootstrap: bootstrap.to_owned(),
            client_options,
            options,
            producer,
            admin: Arc::new(admin),
            connected,
        })
    }

    fn unsupported(&self, what: &str) -> BrokerError {
        BrokerError::Unsupported(format!(
            "broker `{}` is a Kafka broker and has no {what}",
            self.name
        ))
    }
}

/// Returns a client configuration with the bootstrap servers and the
/// manifest's client options.
fn client_config(bootstrap: &str, client_options: &BTreeMap<String, String>) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", bootstrap);
    for (key, value) in client_options {
        config.set(key, value);
    }
    config
}

/// Requests cluster metadata on a blocking thread, because librdkafka's
/// metadata call blocks until the response or the timeout.
async fn fetch_metadata(
    producer: &FutureProducer<ErrorRecorder>,
    topic: Option<&str>,
) -> Result<rdkafka::metadata::Metadata, KafkaError> {
    let producer = producer.clone();
    let topic = topic.map(str::to_owned);
    tokio::task::spawn_blocking(move || {
        producer
            .client()
            .fetch_metadata(topic.as_deref(), METADATA_TIMEOUT)
    })
    .await
    .unwrap_or(Err(KafkaError::Canceled))
}

/// Asks the cluster for metadata every few seconds and records whether it
/// responded, until the broker is dropped.
async fn watch_connection(
    producer: FutureProducer<ErrorRecorder>,
    connected: std::sync::Weak<AtomicBool>,
) {
    loop {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let responded = fetch_metadata(&producer, None).await.is_ok();
        let Some(flag) = connected.upgrade() else {
            return;
        };
        let before = flag.swap(responded, Ordering::Relaxed);
        if before && !responded {
            tracing::warn!("Kafka cluster does not respond to metadata requests");
        } else if !before && responded {
            tracing::info!("Kafka cluster responds again");
        }
    }
}

/// Converts a message's headers and content type into Kafka record headers.
fn record_headers(message: &Message) -> OwnedHeaders {
    let mut headers = OwnedHeaders::new_with_capacity(message.headers.len() + 1);
    for (key, value) in &message.headers {
        let text = value.to_text();
        headers = headers.insert(Header {
            key,
            value: Some(text.as_bytes()),
        });
    }
    if let Some(content_type) = &message.content_type {
        headers = headers.insert(Header {
            key: CONTENT_TYPE_HEADER,
            value: Some(content_type.as_bytes()),
        });
    }
    headers
}

/// Record headers whose librdkafka headers object can be read directly:
/// the consumer's `BorrowedHeaders` and `OwnedHeaders`.
pub trait NativeHeaders {
    fn as_borrowed_headers(&self) -> &BorrowedHeaders;
}

impl NativeHeaders for BorrowedHeaders {
    fn as_borrowed_headers(&self) -> &BorrowedHeaders {
        self
    }
}

impl NativeHeaders for OwnedHeaders {
    fn as_borrowed_headers(&self) -> &BorrowedHeaders {
        self.as_borrowed()
    }
}

/// Converts a consumed record into a message. Header names and values that
/// are not UTF-8 are kept with replacement characters.
pub fn record_message<M>(record: &M) -> Message
where
    M: rdkafka::Message,
    M::Headers: NativeHeaders,
{
    let mut headers = Headers::new();
    let mut content_type = None;
    if let Some(record_headers) = record.headers() {
        for (name, value) in header_entries(record_headers.as_borrowed_headers()) {
            let value = String::from_utf8_lossy(value.unwrap_or_default()).into_owned();
            if name == CONTENT_TYPE_HEADER {
                content_type = Some(value);
            } else {
                headers.insert(name, HeaderValue::String(value));
            }
        }
    }
    Message {
        routing_key: String::new(),
        key: record.key().map(Bytes::copy_from_slice),
        message_id: headers.get("ce_id").map(HeaderValue::to_text),
        headers,
        content_type,
        expiration: None,
        body: Bytes::copy_from_slice(record.payload().unwrap_or_default()),
    }
}

/// Reads each header as its name, with bytes that are not UTF-8 replaced,
/// and its value.
///
/// rdkafka 0.39's `Headers::get` and `Headers::iter` panic on a header name
/// that is not UTF-8 (they unwrap `CStr::to_str`), and any producer can
/// write such a name, so the names are read through librdkafka's C API.
fn header_entries(headers: &BorrowedHeaders) -> Vec<(String, Option<&[u8]>)> {
    // NOTE: this relies on how rdkafka 0.39 builds a `&BorrowedHeaders`: it
    // casts the `rd_kafka_headers_t` pointer to one (`from_native_ptr`,
    // `OwnedHeaders::as_borrowed`), and its own private `as_native_ptr`
    // casts it back the same way.
    let native = std::ptr::from_ref(headers).cast::<rd_kafka_headers_t>();
    let mut entries = Vec::with_capacity(headers.count());
    for index in 0..headers.count() {
        let mut name: *const c_char = std::ptr::null();
        let mut value: *const c_void = std::ptr::null();
        let mut size = 0;
        // SAFETY: `native` points to the headers that `headers` borrows, and
        // the output pointers are valid for writes.
        let error =
            unsafe { rd_kafka_header_get_all(native, index, &mut name, &mut value, &mut size) };
        if error != rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
            break;
        }
        // SAFETY: on success librdkafka sets `name` to a NUL-terminated
        // string and `value` to null or `size` bytes, both owned by the
        // headers, which outlive the returned borrow.
        let name = unsafe { CStr::from_ptr(name) }
            .to_string_lossy()
            .into_owned();
        let value = (!value.is_null())
            .then(|| unsafe { std::slice::from_raw_parts(value.cast::<u8>(), size) });
        entries.push((name, value));
    }
    entries
}

#[async_trait]
impl Broker for KafkaBroker {
    async fn declare_exchange(&self, spec: &ExchangeSpec) -> Result<(), BrokerError> {
        Err(self.unsupported(&format!("exchanges (exchange `{}`)", spec.name)))
    }

    async fn declare_queue(&self, spec: &QueueSpec) -> Result<(), BrokerError> {
        Err(self.unsupported(&format!("queues (queue `{}`)", spec.name)))
    }

    async fn bind_queue(&self, spec: &BindingSpec) -> Result<(), BrokerError> {
        Err(self.unsupported(&format!("bindings (queue `{}`)", spec.queue)))
    }

    async fn publish(&self, exchange: &str, _message: Message) -> Result<(), BrokerError> {
        Err(self.unsupported(&format!("exchanges (exchange `{exchange}`)")))
    }

    async fn consume(
        &self,
        queue: &str,
        _consumer_tag: &str,
        _prefetch: u16,
    ) -> Result<Deliveries, BrokerError> {
        Err(self.unsupported(&format!("queues (queue `{queue}`)")))
    }

    async fn queue_depth(&self, queue: &str) -> Result<u32, BrokerError> {
        Err(self.unsupported(&format!("queues (queue `{queue}`)")))
    }

    async fn exchange_exists(&self, _name: &str) -> Result<bool, BrokerError> {
        Ok(false)
    }

    async fn queue_exists(&self, _name: &str) -> Result<bool, BrokerError> {
        Ok(false)
    }

    async fn create_topic(&self, spec: &TopicSpec) -> Result<(), BrokerError> {
        admin::create_topic(&self.admin, spec).await
    }

    async fn add_partitions(&self, spec: &TopicSpec) -> Result<(), BrokerError> {
        admin::add_partitions(&self.admin, spec).await
    }

    async fn describe_topic(&self, spec: &TopicSpec) -> Result<Option<TopicState>, BrokerError> {
        let metadata = fetch_metadata(&self.producer, Some(&spec.name))
            .await
            .map_err(|err| BrokerError::Unreachable {
                broker: self.name.clone(),
                reason: format!("cannot read the metadata of topic `{}`: {err}", spec.name),
            })?;
        let Some(topic) = metadata.topics().iter().find(|t| t.name() == spec.name) else {
            return Ok(None);
        };
        match topic.error().map(RDKafkaErrorCode::from) {
            None => {}
            Some(RDKafkaErrorCode::UnknownTopicOrPartition) => return Ok(None),
            Some(code) => {
                return Err(BrokerError::Protocol(format!(
                    "cannot read topic `{}`: {code}",
                    spec.name
                )));
            }
        }
        let partitions = i32::try_from(topic.partitions().len()).unwrap_or(i32::MAX);
        let config = admin::topic_config(&self.admin, spec).await?;
        Ok(Some(TopicState { partitions, config }))
    }

    async fn produce(&self, topic: &str, message: Message) -> Result<(), BrokerError> {
        let headers = record_headers(&message);
        let mut record = FutureRecord::<[u8], [u8]>::to(topic)
            .payload(&message.body[..])
            .headers(headers);
        if let Some(key) = &message.key {
            record = record.key(&key[..]);
        }
        match self
            .producer
            .send(record, self.options.delivery_timeout)
            .await
        {
            Ok(_) => Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::UnknownTopicOrPartition), _)) => {
                Err(BrokerError::NotFound {
                    kind: "topic",
                    name: topic.to_owned(),
                })
            }
            Err((err, _)) => Err(BrokerError::NotDelivered {
                topic: topic.to_owned(),
                reason: err.to_string(),
            }),
        }
    }

    async fn subscribe(
        &self,
        topic: &str,
        options: &SubscribeOptions,
    ) -> Result<Box<dyn TopicReader>, BrokerError> {
        let reader = reader::KafkaReader::subscribe(
            &self.name,
            client_config(&self.bootstrap, &self.client_options),
            topic,
            options,
        )?;
        Ok(Box::new(reader))
    }

    fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }
}

impl Drop for KafkaBroker {
    fn drop(&mut self) {
        // Records still queued in the producer get a short chance to be
        // delivered; every caller of `produce` already waited for its own.
        let _ = self.producer.flush(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests;
