//! The event every consume benchmark uses; shared with `benches/per_event.rs`.

/// Returns an `order.placed` event in the envelope of the original services,
/// `{"id", "type", "timestamp", "data"}`, padded with a `note` field in its
/// data to `bytes` long (or a little over when `bytes` is small).
pub fn legacy_order_event(bytes: usize) -> Vec<u8> {
    let mut event = serde_json::json!({
        "id": "evt_bench_1",
        "type": "order.placed",
        "timestamp": "2026-01-01T00:00:00.000Z",
        "data": {
            "orderId": "ord_1",
            "customerId": "cus_1",
            "items": [{ "productId": "p1", "quantity": 2 }],
            "total": 42.5,
            "note": ""
        }
    });
    let unpadded = serde_json::to_vec(&event)
        .expect("a JSON value serializes")
        .len();
    event["data"]["note"] = "x".repeat(bytes.saturating_sub(unpadded)).into();
    serde_json::to_vec(&event).expect("a JSON value serializes")
}
