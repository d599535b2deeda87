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
