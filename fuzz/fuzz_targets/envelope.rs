//! Fuzzes the consumer's first steps on a delivered message. AMQP
//! properties or a Kafka record become a `Message`, which `event::decode`
//! reads in any envelope: binary-mode headers, structured JSON, the legacy
//! envelope or bare JSON. The target then parses the `traceparent`
//! extension and validates the data against the reference system's
//! schemas. A decoded event must keep its attributes and data through
//! encoding in each wire format and decoding again.
//!
//! The input is text, so that seeds are readable and editable:
//!
//! ```text
//! amqp ROUTING-KEY           or: kafka [RECORD-KEY]
//! @content-type VALUE        AMQP properties (Kafka takes no `@` lines)
//! @message-id VALUE
//! @expiration VALUE
//! NAME: TYPE VALUE           an AMQP header; TYPE is listed in `amqp_value`
//! NAME: VALUE                a Kafka header, NAME as raw bytes; `NAME`
//!                            alone has no value
//!
//! BODY                       everything after the first empty line
//! ```

#![no_main]

use std::sync::OnceLock;

use lapin::BasicProperties;
use lapin::types::{
    AMQPValue, ByteArray, DecimalValue, FieldArray, FieldTable, LongString, ShortString,
};
use libfuzzer_sys::fuzz_target;
use rdkafka::bindings::{rd_kafka_header_add, rd_kafka_headers_t, rd_kafka_resp_err_t};
use rdkafka::message::{OwnedHeaders, OwnedMessage, Timestamp};
use switchyard::broker::Message;
use switchyard::broker::amqp::properties;
use switchyard::broker::kafka::record_message;
use switchyard::event::{self, Event, WireFormat};
use switchyard::manifest::{self, Purpose};
use switchyard::schema::Schemas;
use switchyard::trace::{TRACEPARENT, TraceParent};

/// Splits the input into its header lines and its body.
fn split_input(data: &[u8]) -> (Vec<&[u8]>, &[u8]) {
    let (head, body) = match data.windows(2).position(|pair| pair == b"\n\n") {
        Some(end) => (&data[..end], &data[end + 2..]),
        None => (data, &data[data.len()..]),
    };
    (head.split(|&byte| byte == b'\n').collect(), body)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Parses `TYPE VALUE` into an AMQP field value. A number that does not
/// parse is 0, so that mutated digits still reach the conversion.
fn amqp_value(typed: &[u8]) -> AMQPValue {
    let (kind, value) = match typed.iter().position(|&byte| byte == b' ') {
        Some(space) => (&typed[..space], &typed[space + 1..]),
        None => (typed, &typed[typed.len()..]),
    };
    let number = text(value);
    let number = number.trim();
    match kind {
        b"bool" => AMQPValue::Boolean(number == "true"),
        b"i8" => AMQPValue::ShortShortInt(number.parse().unwrap_or_default()),
        b"u8" => AMQPValue::ShortShortUInt(number.parse().unwrap_or_default()),
        b"i16" => AMQPValue::ShortInt(number.parse().unwrap_or_default()),
        b"u16" => AMQPValue::ShortUInt(number.parse().unwrap_or_default()),
        b"i32" => AMQPValue::LongInt(number.parse().unwrap_or_default()),
        b"u32" => AMQPValue::LongUInt(number.parse().unwrap_or_default()),
        b"i64" => AMQPValue::LongLongInt(number.parse().unwrap_or_default()),
        b"timestamp" => AMQPValue::Timestamp(number.parse().unwrap_or_default()),
        b"f32" => AMQPValue::Float(number.parse().unwrap_or_default()),
        b"f64" => AMQPValue::Double(number.parse().unwrap_or_default()),
        // `decimal SCALE VALUE`
        b"decimal" => {
            let (scale, value) = number.split_once(' ').unwrap_or((number, "0"));
            AMQPValue::DecimalValue(DecimalValue {
                scale: scale.parse().unwrap_or_default(),
                value: value.parse().unwrap_or_default(),
            })
        }
        b"short-string" => match ShortString::try_new(text(value)) {
            Ok(short) => AMQPValue::ShortString(short),
            Err(_) => AMQPValue::LongString(LongString::from(value)),
        },
        b"bytes" => AMQPValue::ByteArray(ByteArray::from(value)),
        // Nested values, such as RabbitMQ's `x-death` header.
        b"array" => AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::LongString(
            LongString::from(value),
        )])),
        b"table" => {
            let mut table = FieldTable::default();
            table.insert("count".into(), AMQPValue::LongLongInt(1));
            AMQPValue::FieldTable(table)
        }
        b"void" => AMQPValue::Void,
        // `long-string` and anything else: the whole rest as raw bytes.
        _ => AMQPValue::LongString(LongString::from(value)),
    }
}

/// Builds the message that the AMQP consumer would build from a delivery.
/// Names longer than 255 bytes are dropped, as an AMQP frame cannot carry
/// them.
fn amqp_message(routing_key: &[u8], lines: &[&[u8]], body: &[u8]) -> Message {
    let short = |bytes: &[u8]| ShortString::try_new(text(bytes)).ok();
    let mut properties = BasicProperties::default();
    let mut headers = FieldTable::default();
    for line in lines {
        if let Some(property) = line.strip_prefix(b"@") {
            let (name, value) = split_at_space(property);
            let Some(value) = short(value) else { continue };
            properties = match name {
                b"content-type" => properties.with_content_type(value),
                b"message-id" => properties.with_message_id(value),
                b"expiration" => properties.with_expiration(value),
                _ => properties,
            };
        } else if let Some((name, typed)) = split_header(line)
            && let Some(name) = short(name)
        {
            headers.insert(name, amqp_value(typed));
        }
    }
    if !headers.inner().is_empty() {
        properties = properties.with_headers(headers);
    }
    let routing_key = short(routing_key).unwrap_or_default();
    properties::message(&routing_key, &properties, body.to_vec())
}

/// Builds the message that the Kafka consumer would build from a record.
/// Header names are raw bytes, as a foreign producer can write them.
fn kafka_message(record_key: Option<&[u8]>, lines: &[&[u8]], body: &[u8]) -> Message {
    let headers = OwnedHeaders::new();
    for line in lines {
        let (name, value) = match split_header(line) {
            Some((name, value)) => (name, Some(value)),
            None => (*line, None),
        };
        add_raw_header(&headers, name, value);
    }
    let record = OwnedMessage::new(
        Some(body.to_vec()),
        record_key.map(<[u8]>::to_vec),
        "fuzz".to_owned(),
        Timestamp::NotAvailable,
        0,
        0,
        Some(headers),
    );
    record_message(&record)
}

/// Adds a header through librdkafka's C API, which takes any bytes as the
/// name, unlike `OwnedHeaders::insert`, which takes a `&str`. `None` adds a
/// header without a value.
fn add_raw_header(headers: &OwnedHeaders, name: &[u8], value: Option<&[u8]>) {
    let native = std::ptr::from_ref(headers.as_borrowed())
        .cast::<rd_kafka_headers_t>()
        .cast_mut();
    let (value, value_size) = match value {
        Some(value) => (value.as_ptr().cast(), value.len()),
        None => (std::ptr::null(), 0),
    };
    // SAFETY: `native` is the headers object that `headers` owns, and
    // librdkafka copies the name and the value.
    let error = unsafe {
        rd_kafka_header_add(
            native,
            name.as_ptr().cast(),
            isize::try_from(name.len()).expect("input length fits isize"),
            value,
            isize::try_from(value_size).expect("input length fits isize"),
        )
    };
    assert_eq!(error, rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR);
}

fn split_at_space(line: &[u8]) -> (&[u8], &[u8]) {
    match line.iter().position(|&byte| byte == b' ') {
        Some(space) => (&line[..space], &line[space + 1..]),
        None => (line, &line[line.len()..]),
    }
}

/// Splits `NAME: VALUE` at the first `: `.
fn split_header(line: &[u8]) -> Option<(&[u8], &[u8])> {
    let colon = line.windows(2).position(|pair| pair == b": ")?;
    Some((&line[..colon], &line[colon + 2..]))
}

/// Returns the schemas of the reference system, compiled on first use.
fn schemas() -> &'static Schemas {
    static SCHEMAS: OnceLock<Schemas> = OnceLock::new();
    SCHEMAS.get_or_init(|| {
        let folder = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests");
        let paths = [folder.join("shop.toml"), folder.join("streaming.toml")];
        let loaded = manifest::load(&paths, Purpose::Check, &|_| None);
        let (schemas, problems) = Schemas::compile(&loaded.manifest);
        assert!(problems.is_empty(), "reference schemas: {problems:?}");
        schemas
    })
}

/// Checks that the attributes and data of a decoded event come back
/// unchanged from each wire format.
fn assert_round_trip(event: &Event) {
    for format in [
        WireFormat::Structured,
        WireFormat::Binary,
        WireFormat::KafkaBinary,
    ] {
        let message = event::encode(event, format, &event.event_type);
        let again = event::decode(&message).unwrap_or_else(|err| {
            panic!("{format:?} encoding of {event:?} does not decode: {err}")
        });
        assert_eq!(again.id, event.id, "{format:?}");
        assert_eq!(again.source, event.source, "{format:?}");
        assert_eq!(again.event_type, event.event_type, "{format:?}");
        assert_eq!(again.time, event.time, "{format:?}");
        assert_eq!(again.subject, event.subject, "{format:?}");
        assert_eq!(again.data, event.data, "{format:?}");
        assert_eq!(
            again.extensions.get(TRACEPARENT),
            event.extensions.get(TRACEPARENT),
            "{format:?}"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let (lines, body) = split_input(data);
    let Some((first, lines)) = lines.split_first() else {
        return;
    };
    let (transport, argument) = split_at_space(first);
    let message = match transport {
        b"amqp" => amqp_message(argument, lines, body),
        b"kafka" => {
            let record_key = (first.len() > transport.len()).then_some(argument);
            kafka_message(record_key, lines, body)
        }
        _ => return,
    };

    let Ok(event) = event::decode(&message) else {
        return;
    };
    if let Some(value) = event.extensions.get(TRACEPARENT)
        && let Some(parent) = TraceParent::parse(value)
    {
        assert_eq!(
            TraceParent::parse(&parent.to_string()),
            Some(parent),
            "traceparent {value:?}"
        );
    }
    let _ = schemas().validate(&event.event_type, &event.data);
    assert_round_trip(&event);
});
