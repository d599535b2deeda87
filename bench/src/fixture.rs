//! The event every consume benchmark uses; shared with `benches/per_event.rs`.

/// Returns an `order.placed` event in the envelope of the original services,
/// `{"id", "type", "timestamp", "data"}`, padded with a `note` field in its
/// data to `bytes` long (or a little over when `bytes` is small).
pub fn legacy_order_event(bytes: usize) -> Vec<u8> {
    let event = serde_json::json!({
        "id": "evt_bench_1",
        "type": "order.placed",
        "timestamp": "2026-01-01T00:00:00.000Z",
        "data": order()
    });
    padded(event, "/data/note", bytes)
}

/// Returns the data of a valid `order.placed` event with an empty `note`
/// field to pad.
pub fn order() -> serde_json::Value {
    serde_json::json!({
        "orderId": "ord_1",
        "customerId": "cus_1",
        "items": [{ "productId": "p1", "quantity": 2 }],
        "total": 42.5,
        "note": ""
    })
}

/// Serializes `value` after filling the string at the JSON pointer `note`
/// with `x` until the JSON text is `bytes` long (or a little over when
/// `bytes` is small).
pub fn padded(mut value: serde_json::Value, note: &str, bytes: usize) -> Vec<u8> {
    let unpadded = serde_json::to_vec(&value)
        .expect("a JSON value serializes")
        .len();
    if let Some(field) = value.pointer_mut(note) {
        *field = "x".repeat(bytes.saturating_sub(unpadded)).into();
    }
    serde_json::to_vec(&value).expect("a JSON value serializes")
}
