//! The CloudEvents 1.0 envelope and its encodings on AMQP 0-9-1 and Kafka.
//!
//! Publishing writes structured mode (an `application/cloudevents+json` body)
//! or binary mode: attributes in headers and the data alone in the body. The
//! header prefix is `cloudEvents_` on AMQP (the CloudEvents AMQP binding) and
//! `ce_` on Kafka (the Kafka binding). Consuming accepts all of them,
//! the `{"id", "type", "timestamp", "data"}` envelope of the services
//! switchyard replaces, and a bare JSON body whose type is the routing key.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde_json::{Map, Value};

use crate::broker::{HeaderValue, Headers, Message};

pub const SPEC_VERSION: &str = "1.0";
pub const STRUCTURED_CONTENT_TYPE: &str = "application/cloudevents+json";
pub const JSON_CONTENT_TYPE: &str = "application/json";
const AMQP_PREFIX: &str = "cloudEvents_";
const KAFKA_PREFIX: &str = "ce_";

/// One CloudEvents 1.0 event whose data is JSON.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub id: String,
    pub source: String,
    pub event_type: String,
    pub time: Option<String>,
    pub subject: Option<String>,
    pub data_content_type: Option<String>,
    pub data: Value,
    /// Extension attributes such as `traceparent`, as text.
    pub extensions: BTreeMap<String, String>,
}

impl Event {
    /// Creates an event with a new id and the current time.
    pub fn new(event_type: &str, source: &str, data: Value) -> Self {
        Event {
            id: uuid::Uuid::new_v4().to_string(),
            source: source.to_owned(),
            event_type: event_type.to_owned(),
            time: Some(now_rfc3339()),
            subject: None,
            data_content_type: Some(JSON_CONTENT_TYPE.to_owned()),
            data,
            extensions: BTreeMap::new(),
        }
    }
}

/// Returns the current UTC time in RFC 3339 form.
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Layout of an event in a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireFormat {
    Structured,
    /// Binary mode with `cloudEvents_*` headers, for AMQP.
    Binary,
    /// Binary mode with `ce_*` headers, for Kafka.
    KafkaBinary,
}

/// Reason a message could not be decoded as an event.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("body is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("CloudEvent is missing the required attribute `{0}`")]
    MissingAttribute(&'static str),
    #[error("CloudEvent attribute `{0}` must be a string")]
    InvalidAttribute(String),
    #[error("unsupported CloudEvents specversion `{0}`; switchyard reads 1.0")]
    UnsupportedVersion(String),
    #[error("event has no type: no CloudEvents `type`, no envelope `type` and no routing key")]
    NoType,
    #[error("binary-mode data with content type `{0}` is not JSON")]
    NotJson(String),
}

/// Encodes an event into a message with the given routing key.
pub fn encode(event: &Event, format: WireFormat, routing_key: &str) -> Message {
    match format {
        WireFormat::Structured => encode_structured(event, routing_key),
        WireFormat::Binary => encode_binary(event, AMQP_PREFIX, routing_key),
        WireFormat::KafkaBinary => encode_binary(event, KAFKA_PREFIX, routing_key),
    }
}

fn encode_structured(event: &Event, routing_key: &str) -> Message {
    let mut body = Map::new();
    body.insert("specversion".into(), SPEC_VERSION.into());
    body.insert("id".into(), event.id.clone().into());
    body.insert("source".into(), event.source.clone().into());
    body.insert("type".into(), event.event_type.clone().into());
    if let Some(time) = &event.time {
        body.insert("time".into(), time.clone().into());
    }
    if let Some(subject) = &event.subject {
        body.insert("subject".into(), subject.clone().into());
    }
    let content_type = event
        .data_content_type
        .as_deref()
        .unwrap_or(JSON_CONTENT_TYPE);
    body.insert("datacontenttype".into(), content_type.into());
    for (name, value) in &event.extensions {
        body.insert(name.clone(), value.clone().into());
    }
    body.insert("data".into(), event.data.clone());
    Message {
        routing_key: routing_key.to_owned(),
        content_type: Some(STRUCTURED_CONTENT_TYPE.to_owned()),
        message_id: Some(event.id.clone()),
        body: Bytes::from(serde_json::to_vec(&Value::Object(body)).unwrap_or_default()),
        ..Message::default()
    }
}

fn encode_binary(event: &Event, prefix: &str, routing_key: &str) -> Message {
    let mut headers = Headers::new();
    let mut put = |name: &str, value: &str| {
        headers.insert(format!("{prefix}{name}"), HeaderValue::from(value));
    };
    put("specversion", SPEC_VERSION);
    put("id", &event.id);
    put("source", &event.source);
    put("type", &event.event_type);
    if let Some(time) = &event.time {
        put("time", time);
    }
    if let Some(subject) = &event.subject {
        put("subject", subject);
    }
    for (name, value) in &event.extensions {
        put(name, value);
    }
    Message {
        routing_key: routing_key.to_owned(),
        headers,
        content_type: Some(
            event
                .data_content_type
                .clone()
                .unwrap_or_else(|| JSON_CONTENT_TYPE.to_owned()),
        ),
        message_id: Some(event.id.clone()),
        body: Bytes::from(serde_json::to_vec(&event.data).unwrap_or_default()),
        ..Message::default()
    }
}

/// Decodes a delivered message into an event, whatever envelope it uses.
pub fn decode(message: &Message) -> Result<Event, DecodeError> {
    // The header names are written out, so that no string is built per message.
    for (prefix, version_header) in [
        (AMQP_PREFIX, "cloudEvents_specversion"),
        (KAFKA_PREFIX, "ce_specversion"),
    ] {
        if message.headers.contains_key(version_header) {
            return decode_binary(message, prefix);
        }
    }
    let body: Value = serde_json::from_slice(&message.body)
        .map_err(|err| DecodeError::InvalidJson(err.to_string()))?;
    match body {
        Value::Object(object) if object.contains_key("specversion") => decode_structured(object),
        Value::Object(object) if is_legacy_envelope(&object) => decode_legacy(object, message),
        data => decode_bare(data, message),
    }
}

fn decode_binary(message: &Message, prefix: &str) -> Result<Event, DecodeError> {
    let mut attributes = BTreeMap::new();
    for (name, value) in &message.headers {
        if let Some(attribute) = name.strip_prefix(prefix) {
            attributes.insert(attribute.to_owned(), value.to_text());
        }
    }
    let version = attributes.remove("specversion").unwrap_or_default();
    if version != SPEC_VERSION {
        return Err(DecodeError::UnsupportedVersion(version));
    }
    let content_type = message.content_type.clone();
    if let Some(content_type) = &content_type
        && !is_json_content_type(content_type)
    {
        return Err(DecodeError::NotJson(content_type.clone()));
    }
    let data = if message.body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&message.body)
            .map_err(|err| DecodeError::InvalidJson(err.to_string()))?
    };
    let mut take = |name: &'static str| attributes.remove(name);
    Ok(Event {
        id: take("id").ok_or(DecodeError::MissingAttribute("id"))?,
        source: take("source").ok_or(DecodeError::MissingAttribute("source"))?,
        event_type: take("type").ok_or(DecodeError::MissingAttribute("type"))?,
        time: take("time"),
        subject: take("subject"),
        data_content_type: content_type,
        data,
        extensions: attributes,
    })
}

fn decode_structured(mut object: Map<String, Value>) -> Result<Event, DecodeError> {
    let mut text = |name: &'static str| -> Result<Option<String>, DecodeError> {
        match object.remove(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(value)) => Ok(Some(value)),
            Some(_) => Err(DecodeError::InvalidAttribute(name.to_owned())),
        }
    };
    let version = text("specversion")?.unwrap_or_default();
    if version != SPEC_VERSION {
        return Err(DecodeError::UnsupportedVersion(version));
    }
    let id = text("id")?.ok_or(DecodeError::MissingAttribute("id"))?;
    let source = text("source")?.ok_or(DecodeError::MissingAttribute("source"))?;
    let event_type = text("type")?.ok_or(DecodeError::MissingAttribute("type"))?;
    let time = text("time")?;
    let subject = text("subject")?;
    let data_content_type = text("datacontenttype")?;
    if let Some(content_type) = &data_content_type
        && !is_json_content_type(content_type)
    {
        return Err(DecodeError::NotJson(content_type.clone()));
    }
    let data = object.remove("data").unwrap_or(Value::Null);
    object.remove("data_base64");
    object.remove("dataschema");
    let extensions = object
        .into_iter()
        .map(|(name, value)| match value {
            Value::String(text) => (name, text),
            other => (name, other.to_string()),
        })
        .collect();
    Ok(Event {
        id,
        source,
        event_type,
        time,
        subject,
        data_content_type,
        data,
        extensions,
    })
}

/// Reports whether a body is the `{"id", "type", "timestamp", "data"}`
/// envelope that the original services wrote.
fn is_legacy_envelope(object: &Map<String, Value>) -> bool {
    object.get("type").is_some_and(Value::is_string)
        && object.contains_key("data")
        && object.keys().all(|key| {
            matches!(
                key.as_str(),
                "id" | "type" | "timestamp" | "data" | "source"
            )
        })
}

fn decode_legacy(mut object: Map<String, Value>, message: &Message) -> Result<Event, DecodeError> {
    let event_type = match object.remove("type") {
        Some(Value::String(event_type)) => event_type,
        _ => return Err(DecodeError::NoType),
    };
    let id = match object.remove("id") {
        Some(Value::String(id)) => id,
        Some(Value::Number(id)) => id.to_string(),
        _ => message_id_or_new(message),
    };
    let time = match object.remove("timestamp") {
        Some(Value::String(time)) => Some(time),
        Some(Value::Number(millis)) => millis.as_i64().and_then(rfc3339_from_millis),
        _ => None,
    };
    let source = match object.remove("source") {
        Some(Value::String(source)) => source,
        _ => format!("amqp://{}", message.routing_key),
    };
    Ok(Event {
        id,
        source,
        event_type,
        time,
        subject: None,
        data_content_type: Some(JSON_CONTENT_TYPE.to_owned()),
        data: object.remove("data").unwrap_or(Value::Null),
        extensions: BTreeMap::new(),
    })
}

fn decode_bare(data: Value, message: &Message) -> Result<Event, DecodeError> {
    if message.routing_key.is_empty() {
        return Err(DecodeError::NoType);
    }
    Ok(Event {
        id: message_id_or_new(message),
        source: format!("amqp://{}", message.routing_key),
        event_type: message.routing_key.clone(),
        time: None,
        subject: None,
        data_content_type: Some(JSON_CONTENT_TYPE.to_owned()),
        data,
        extensions: BTreeMap::new(),
    })
}

fn message_id_or_new(message: &Message) -> String {
    message
        .message_id
        .clone()
        .filter(|id| !id.is_empty())
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}

fn rfc3339_from_millis(millis: i64) -> Option<String> {
    let time =
        time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(millis) * 1_000_000).ok()?;
    time.format(&time::format_description::well_known::Rfc3339)
        .ok()
}

/// Reports whether a content type carries JSON (`application/json`,
/// `application/*+json`, `text/json`), ignoring parameters.
pub fn is_json_content_type(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json" || essence == "text/json" || essence.ends_with("+json")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn order() -> Event {
        let mut event = Event::new(
            "order.placed",
            "/shop/order-service",
            json!({"orderId": "o-1"}),
        );
        event
            .extensions
            .insert("traceparent".into(), "00-abc-def-01".into());
        event
    }

    #[test]
    fn structured_round_trip() {
        let event = order();
        let message = encode(&event, WireFormat::Structured, "order.placed");
        assert_eq!(
            message.content_type.as_deref(),
            Some(STRUCTURED_CONTENT_TYPE)
        );
        assert_eq!(decode(&message).unwrap(), event);
    }

    #[test]
    fn binary_round_trip() {
        let event = order();
        let message = encode(&event, WireFormat::Binary, "order.placed");
        assert_eq!(
            message.headers.get("cloudEvents_type"),
            Some(&HeaderValue::from("order.placed"))
        );
        assert_eq!(&message.body[..], br#"{"orderId":"o-1"}"#);
        assert_eq!(decode(&message).unwrap(), event);
    }

    #[test]
    fn kafka_binary_round_trip() {
        let event = order();
        let message = encode(&event, WireFormat::KafkaBinary, "");
        assert_eq!(
            message.headers.get("ce_type"),
            Some(&HeaderValue::from("order.placed"))
        );
        assert_eq!(
            message.headers.get("ce_traceparent"),
            Some(&HeaderValue::from("00-abc-def-01"))
        );
        assert!(!message.headers.contains_key("cloudEvents_type"));
        assert_eq!(message.content_type.as_deref(), Some(JSON_CONTENT_TYPE));
        assert_eq!(decode(&message).unwrap(), event);
    }

    #[test]
    fn bare_kafka_record_has_no_type() {
        let message = Message {
            body: Bytes::from_static(br#"{"orderId":"o-1"}"#),
            ..Message::default()
        };
        assert_eq!(decode(&message), Err(DecodeError::NoType));
    }

    #[test]
    fn legacy_envelope_decoded() {
        let message = Message {
            routing_key: "order.placed".into(),
            body: Bytes::from_static(
                br#"{"id":"42","type":"order.placed","timestamp":1700000000000,"data":{"orderId":"o-9"}}"#,
            ),
            ..Message::default()
        };
        let event = decode(&message).unwrap();
        assert_eq!(event.id, "42");
        assert_eq!(event.event_type, "order.placed");
        assert_eq!(event.time.as_deref(), Some("2023-11-14T22:13:20Z"));
        assert_eq!(event.data, json!({"orderId": "o-9"}));
    }

    #[test]
    fn bare_body_takes_type_from_routing_key() {
        let message = Message {
            routing_key: "user.created".into(),
            message_id: Some("m-1".into()),
            body: Bytes::from_static(br#"{"userId":"u-1"}"#),
            ..Message::default()
        };
        let event = decode(&message).unwrap();
        assert_eq!(event.event_type, "user.created");
        assert_eq!(event.id, "m-1");
    }

    #[test]
    fn malformed_bodies_rejected() {
        let mut message = Message {
            routing_key: "order.placed".into(),
            body: Bytes::from_static(b"{not json"),
            ..Message::default()
        };
        assert!(matches!(decode(&message), Err(DecodeError::InvalidJson(_))));

        message.body = Bytes::from_static(br#"{"specversion":"1.0","source":"s","type":"t"}"#);
        assert_eq!(decode(&message), Err(DecodeError::MissingAttribute("id")));

        message.body =
            Bytes::from_static(br#"{"specversion":"0.3","id":"1","source":"s","type":"t"}"#);
        assert!(matches!(
            decode(&message),
            Err(DecodeError::UnsupportedVersion(_))
        ));

        message.body = Bytes::from_static(&[0xff, 0xfe, 0x00]);
        assert!(matches!(decode(&message), Err(DecodeError::InvalidJson(_))));
    }

    #[test]
    fn json_content_types_recognised() {
        assert!(is_json_content_type("application/json; charset=utf-8"));
        assert!(is_json_content_type("application/cloudevents+json"));
        assert!(!is_json_content_type("text/plain"));
    }
}
