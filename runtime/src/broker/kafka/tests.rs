//! Tests of the record conversion; tests against a real Kafka-protocol
//! broker are in the `tests` crate.

use rdkafka::message::{Header, OwnedHeaders, OwnedMessage, Timestamp};

use super::*;

#[test]
fn record_headers_carry_content_type() {
    let mut message = Message {
        content_type: Some("application/json".to_owned()),
        ..Message::default()
    };
    message
        .headers
        .insert("ce_id".to_owned(), HeaderValue::from("e-1"));
    message
        .headers
        .insert("x-switchyard-attempt".to_owned(), HeaderValue::Int(3));
    let headers = record_headers(&message);
    let pairs: Vec<(String, String)> = headers
        .iter()
        .map(|h| {
            (
                h.key.to_owned(),
                String::from_utf8(h.value.unwrap().to_vec()).unwrap(),
            )
        })
        .collect();
    assert!(pairs.contains(&("ce_id".to_owned(), "e-1".to_owned())));
    assert!(pairs.contains(&("x-switchyard-attempt".to_owned(), "3".to_owned())));
    assert!(pairs.contains(&("content-type".to_owned(), "application/json".to_owned())));
}

#[test]
fn record_message_round_trip() {
    let headers = OwnedHeaders::new()
        .insert(Header {
            key: "ce_type",
            value: Some("order.placed"),
        })
        .insert(Header {
            key: "ce_id",
            value: Some("e-9"),
        })
        .insert(Header {
            key: "content-type",
            value: Some("application/json"),
        })
        .insert(Header {
            key: "binary",
            value: Some(&[0xff_u8, 0x41][..]),
        });
    let record = OwnedMessage::new(
        Some(b"{\"a\":1}".to_vec()),
        Some(b"customer-7".to_vec()),
        "analytics".to_owned(),
        Timestamp::NotAvailable,
        2,
        41,
        Some(headers),
    );
    let message = record_message(&record);
    assert_eq!(message.body.as_ref(), b"{\"a\":1}");
    assert_eq!(message.key.as_deref(), Some(&b"customer-7"[..]));
    assert_eq!(message.content_type.as_deref(), Some("application/json"));
    assert_eq!(message.message_id.as_deref(), Some("e-9"));
    assert_eq!(
        message.headers.get("ce_type"),
        Some(&HeaderValue::from("order.placed"))
    );
    assert!(!message.headers.contains_key("content-type"));
    assert_eq!(
        message.headers.get("binary"),
        Some(&HeaderValue::from("\u{fffd}A"))
    );
}

/// Adds a header through librdkafka's C API, which accepts any bytes as the
/// name, as a record from a foreign producer can carry them.
fn add_raw_header(headers: &OwnedHeaders, name: &[u8], value: &[u8]) {
    let native = std::ptr::from_ref(headers.as_borrowed())
        .cast::<rdkafka::bindings::rd_kafka_headers_t>()
        .cast_mut();
    // SAFETY: `native` is the headers object that `headers` owns, and
    // librdkafka copies both byte strings.
    let error = unsafe {
        rdkafka::bindings::rd_kafka_header_add(
            native,
            name.as_ptr().cast(),
            isize::try_from(name.len()).unwrap(),
            value.as_ptr().cast(),
            isize::try_from(value.len()).unwrap(),
        )
    };
    assert_eq!(
        error,
        rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
    );
}

#[test]
fn header_name_not_utf8_replaced() {
    let headers = OwnedHeaders::new().insert(Header {
        key: "ce_id",
        value: Some("e-1"),
    });
    add_raw_header(&headers, b"x-\xff\xfe", b"v");
    add_raw_header(&headers, b"content-type", b"application/json");
    let record = OwnedMessage::new(
        Some(b"{}".to_vec()),
        None,
        "analytics".to_owned(),
        Timestamp::NotAvailable,
        0,
        0,
        Some(headers),
    );
    let message = record_message(&record);
    assert_eq!(
        message.headers.get("x-\u{fffd}\u{fffd}"),
        Some(&HeaderValue::from("v"))
    );
    assert_eq!(
        message.headers.get("ce_id"),
        Some(&HeaderValue::from("e-1"))
    );
    assert_eq!(message.content_type.as_deref(), Some("application/json"));
    assert_eq!(message.headers.len(), 2);
}
