//! Conversion between switchyard's `Message` and AMQP 0-9-1 message properties.

use std::time::Duration;

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use tracing::debug;

use crate::broker::{BrokerError, HeaderValue, Headers, Message};

/// AMQP delivery mode 2: the broker writes the message to disk in durable queues.
const PERSISTENT: u8 = 2;

/// Converts `value` to an AMQP short string, which contains at most 255 bytes
/// (exchange and queue names, routing keys, header names, most properties).
/// `field` names the value in the error.
pub(super) fn short_string(field: &str, value: &str) -> Result<ShortString, BrokerError> {
    ShortString::try_new(value).map_err(|_| {
        BrokerError::Protocol(format!(
            "{field} `{value}` is {} bytes long, but AMQP 0-9-1 allows at most 255",
            value.len()
        ))
    })
}

/// Builds the properties of a persistent message: headers as a field table,
/// content type, message id and per-message TTL in milliseconds.
pub(super) fn basic_properties(message: &Message) -> Result<BasicProperties, BrokerError> {
    let mut properties = BasicProperties::default().with_delivery_mode(PERSISTENT);
    if !message.headers.is_empty() {
        properties = properties.with_headers(field_table(&message.headers)?);
    }
    if let Some(content_type) = &message.content_type {
        properties = properties.with_content_type(short_string("content type", content_type)?);
    }
    if let Some(message_id) = &message.message_id {
        properties = properties.with_message_id(short_string("message id", message_id)?);
    }
    if let Some(expiration) = message.expiration {
        let milliseconds = expiration.as_millis().to_string();
        properties = properties.with_expiration(milliseconds.into());
    }
    Ok(properties)
}

/// Converts headers to a field table: strings become long strings, integers
/// long-long integers and booleans booleans.
fn field_table(headers: &Headers) -> Result<FieldTable, BrokerError> {
    let mut table = FieldTable::default();
    for (name, value) in headers {
        let value = match value {
            HeaderValue::String(text) => AMQPValue::LongString(LongString::from(text.as_str())),
            HeaderValue::Int(number) => AMQPValue::LongLongInt(*number),
            HeaderValue::Bool(flag) => AMQPValue::Boolean(*flag),
        };
        table.insert(short_string("header name", name)?, value);
    }
    Ok(table)
}

/// Converts a delivered message back to a `Message`.
pub fn message(routing_key: &ShortString, properties: &BasicProperties, body: Vec<u8>) -> Message {
    Message {
        routing_key: routing_key.to_string(),
        key: None,
        headers: properties
            .headers()
            .as_ref()
            .map(headers)
            .unwrap_or_default(),
        content_type: properties.content_type().as_ref().map(ToString::to_string),
        message_id: properties.message_id().as_ref().map(ToString::to_string),
        expiration: properties.expiration().as_ref().and_then(parse_expiration),
        body: body.into(),
    }
}

/// Converts a field table to headers. Integer types become `Int`, text types
/// `String` and booleans `Bool`. Floats and decimals become their decimal
/// text. Nested tables and arrays (such as RabbitMQ's `x-death`) and void
/// values have no `HeaderValue` form and are left out.
fn headers(table: &FieldTable) -> Headers {
    let mut headers = Headers::new();
    for (name, value) in table {
        match header_value(value) {
            Some(value) => {
                headers.insert(name.to_string(), value);
            }
            None => debug!(header = %name, "left out a header with a nested or void value"),
        }
    }
    headers
}

fn header_value(value: &AMQPValue) -> Option<HeaderValue> {
    let value = match value {
        AMQPValue::Boolean(flag) => HeaderValue::Bool(*flag),
        AMQPValue::ShortShortInt(number) => HeaderValue::Int(i64::from(*number)),
        AMQPValue::ShortShortUInt(number) => HeaderValue::Int(i64::from(*number)),
        AMQPValue::ShortInt(number) => HeaderValue::Int(i64::from(*number)),
        AMQPValue::ShortUInt(number) => HeaderValue::Int(i64::from(*number)),
        AMQPValue::LongInt(number) => HeaderValue::Int(i64::from(*number)),
        AMQPValue::LongUInt(number) => HeaderValue::Int(i64::from(*number)),
        AMQPValue::LongLongInt(number) => HeaderValue::Int(*number),
        AMQPValue::Timestamp(seconds) => HeaderValue::Int(i64::try_from(*seconds).ok()?),
        AMQPValue::Float(number) => HeaderValue::String(number.to_string()),
        AMQPValue::Double(number) => HeaderValue::String(number.to_string()),
        AMQPValue::DecimalValue(decimal) => {
            HeaderValue::String(decimal_text(decimal.value, decimal.scale))
        }
        AMQPValue::ShortString(text) => HeaderValue::String(text.to_string()),
        AMQPValue::LongString(text) => HeaderValue::String(text.to_string()),
        AMQPValue::ByteArray(bytes) => {
            HeaderValue::String(String::from_utf8_lossy(bytes.as_slice()).into_owned())
        }
        AMQPValue::FieldArray(_) | AMQPValue::FieldTable(_) | AMQPValue::Void => return None,
    };
    Some(value)
}

/// Renders an AMQP decimal (`value` × 10^-`scale`) as decimal text.
fn decimal_text(value: u32, scale: u8) -> String {
    let digits = value.to_string();
    let scale = usize::from(scale);
    if scale == 0 {
        return digits;
    }
    let padded = format!("{digits:0>width$}", width = scale + 1);
    let (integer, fraction) = padded.split_at(padded.len() - scale);
    format!("{integer}.{fraction}")
}

/// Parses the `expiration` property, which RabbitMQ defines as milliseconds
/// in decimal text. Any other text has no duration and is ignored.
fn parse_expiration(text: &ShortString) -> Option<Duration> {
    text.as_str().parse().ok().map(Duration::from_millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_message() -> Message {
        let mut headers = Headers::new();
        headers.insert("text".to_owned(), HeaderValue::from("hello"));
        headers.insert("count".to_owned(), HeaderValue::Int(-42));
        headers.insert("flag".to_owned(), HeaderValue::Bool(true));
        Message {
            routing_key: "order.placed".to_owned(),
            key: None,
            headers,
            content_type: Some("application/json".to_owned()),
            message_id: Some("id-1".to_owned()),
            expiration: Some(Duration::from_millis(1500)),
            body: b"{}".to_vec().into(),
        }
    }

    #[test]
    fn properties_round_trip() {
        let sent = sample_message();
        let properties = basic_properties(&sent).expect("valid message");
        let received = message(&"order.placed".into(), &properties, b"{}".to_vec());
        assert_eq!(received, sent);
    }

    #[test]
    fn properties_are_persistent() {
        let properties = basic_properties(&Message::default()).expect("valid message");
        assert_eq!(*properties.delivery_mode(), Some(PERSISTENT));
        assert_eq!(*properties.headers(), None);
        assert_eq!(*properties.expiration(), None);
    }

    #[test]
    fn headers_use_amqp_types() {
        let properties = basic_properties(&sample_message()).expect("valid message");
        let table = properties.headers().clone().expect("headers set");
        let types: Vec<_> = table
            .inner()
            .iter()
            .map(|(name, value)| (name.to_string(), value.get_type()))
            .collect();
        use lapin::types::AMQPType;
        assert_eq!(
            types,
            [
                ("count".to_owned(), AMQPType::LongLongInt),
                ("flag".to_owned(), AMQPType::Boolean),
                ("text".to_owned(), AMQPType::LongString),
            ]
        );
    }

    #[test]
    fn expiration_is_milliseconds_text() {
        let message = Message {
            expiration: Some(Duration::from_secs(2)),
            ..Message::default()
        };
        let properties = basic_properties(&message).expect("valid message");
        assert_eq!(
            properties.expiration().as_ref().map(ShortString::as_str),
            Some("2000")
        );
    }

    #[test]
    fn overlong_routing_key_is_error() {
        let key = "k".repeat(256);
        let error = short_string("routing key", &key).expect_err("256 bytes is too long");
        assert!(error.to_string().contains("256 bytes"), "{error}");
    }

    #[test]
    fn overlong_header_name_is_error() {
        let mut message = Message::default();
        message
            .headers
            .insert("h".repeat(300), HeaderValue::Bool(true));
        let error = basic_properties(&message).expect_err("300 bytes is too long");
        assert!(error.to_string().contains("header name"), "{error}");
    }

    #[test]
    fn foreign_header_types_convert() {
        let mut table = FieldTable::default();
        table.insert("short".into(), AMQPValue::ShortInt(-7));
        table.insert("unsigned".into(), AMQPValue::LongUInt(7));
        table.insert("old-string".into(), AMQPValue::ShortString("s".into()));
        table.insert("double".into(), AMQPValue::Double(1.5));
        table.insert(
            "nested".into(),
            AMQPValue::FieldTable(FieldTable::default()),
        );
        let converted = headers(&table);
        assert_eq!(converted.get("short"), Some(&HeaderValue::Int(-7)));
        assert_eq!(converted.get("unsigned"), Some(&HeaderValue::Int(7)));
        assert_eq!(converted.get("old-string"), Some(&HeaderValue::from("s")));
        assert_eq!(converted.get("double"), Some(&HeaderValue::from("1.5")));
        assert_eq!(converted.get("nested"), None);
    }

    #[test]
    fn decimal_text_places_point() {
        assert_eq!(decimal_text(12345, 2), "123.45");
        assert_eq!(decimal_text(5, 3), "0.005");
        assert_eq!(decimal_text(7, 0), "7");
    }
}
