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

#[test]
fn security_properties_for_tls_and_sasl() {
    let tls = TlsFiles {
        ca: Some("/certs/ca.pem".into()),
        cert: Some("/certs/client.pem".into()),
        key: Some("/certs/client.key".into()),
    };
    let sasl = SaslCredentials {
        mechanism: crate::manifest::SaslMechanism::ScramSha512,
        username: "switchyard".to_owned(),
        password: "hunter2".to_owned(),
    };
    let properties = security::properties(Some(&tls), Some(&sasl));
    let expected = [
        ("security.protocol", "SASL_SSL"),
        ("ssl.ca.location", "/certs/ca.pem"),
        ("ssl.certificate.location", "/certs/client.pem"),
        ("ssl.key.location", "/certs/client.key"),
        ("sasl.mechanism", "SCRAM-SHA-512"),
        ("sasl.username", "switchyard"),
        ("sasl.password", "hunter2"),
    ];
    for (key, value) in expected {
        assert_eq!(
            properties.get(key).map(String::as_str),
            Some(value),
            "{key}"
        );
    }
    assert_eq!(properties.len(), expected.len(), "{properties:?}");
}

#[test]
fn security_protocol_per_combination() {
    let tls = TlsFiles::default();
    let sasl = SaslCredentials {
        mechanism: crate::manifest::SaslMechanism::Plain,
        username: "u".to_owned(),
        password: "p".to_owned(),
    };
    let cases = [
        (Some(&tls), None, Some("SSL")),
        (None, Some(&sasl), Some("SASL_PLAINTEXT")),
        (None, None, None),
    ];
    for (tls, sasl, expected) in cases {
        let properties = security::properties(tls, sasl);
        let protocol = properties.get("security.protocol").map(String::as_str);
        assert_eq!(protocol, expected, "tls {tls:?}, sasl {sasl:?}");
    }
}

/// librdkafka is built with OpenSSL, so it accepts TLS and SCRAM settings
/// when creating a client (it rejects them at creation when built without).
#[test]
fn client_accepts_ssl_and_scram() {
    let mut options = BTreeMap::new();
    options.insert("security.protocol".to_owned(), "SASL_SSL".to_owned());
    options.insert("sasl.mechanism".to_owned(), "SCRAM-SHA-256".to_owned());
    options.insert("sasl.username".to_owned(), "u".to_owned());
    options.insert("sasl.password".to_owned(), "p".to_owned());
    let created: Result<FutureProducer, _> = client_config("127.0.0.1:1", &options).create();
    assert!(created.is_ok(), "{:?}", created.err());
}

/// Error texts in librdkafka 2.12's wording, with the hint each one gets.
/// The first is copied from a run against tansu 0.6.0 behind stunnel.
#[test]
fn security_hint_per_error_text() {
    let cases = [
        (
            "Global error: Authentication (Local: Authentication failure): \
             sasl_ssl://127.0.0.1:33645/bootstrap: SASL PLAIN mechanism handshake failed: \
             Local: Broker transport failure: broker's supported mechanisms: (n/a)",
            "did not accept the SASL mechanism",
        ),
        (
            "ssl://127.0.0.1:1/bootstrap: SSL handshake failed: error:0A000086:SSL \
             routines::certificate verify failed",
            "set `tls.ca` of broker `stream`",
        ),
        (
            "sasl_ssl://127.0.0.1:1/bootstrap: SASL authentication error: Authentication \
             failed during authentication due to invalid credentials with SASL mechanism \
             SCRAM-SHA-256",
            "rejected the SASL credentials",
        ),
    ];
    for (error, expected) in cases {
        let hint = security::hint("stream", error).unwrap_or_default();
        assert!(hint.contains(expected), "{error}\nhint: {hint}");
    }
    assert_eq!(
        security::hint("stream", "sasl_ssl://127.0.0.1:1/bootstrap: timed out"),
        None
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
