//! Email handler: turns `order.placed` and `user.created` events into
//! `email.sent` events.
//!
//! It does not talk to a mail server. It logs the mail at info and emits
//! `email.sent`, which names the template and the recipient.

wit_bindgen::generate!({ path: "../wit", world: "handler" });

use serde::Deserialize;
use serde_json::{Value, json};
use switchyard::handler::host;
use switchyard::handler::types::Level;

/// Data of `order.placed`. Only the fields this handler reads are declared.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct OrderPlaced {
    order_id: String,
    customer_id: String,
    items: Vec<OrderItem>,
    total: f64,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)] // Parsed so that a malformed item rejects the event.
struct OrderItem {
    product_id: String,
    quantity: u32,
}

/// Data of `user.created`. Other fields of the event are ignored.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UserCreated {
    user_id: String,
    email: String,
}

struct EmailHandler;

impl Guest for EmailHandler {
    fn handle(event: Event) -> Result<(), HandlerError> {
        match event.type_.as_str() {
            "order.placed" => send_order_confirmation(&event),
            "user.created" => send_welcome(&event),
            other => Err(HandlerError::Reject(format!(
                "unsupported event type {other:?}: the email handler accepts order.placed and user.created"
            ))),
        }
    }
}

fn send_order_confirmation(event: &Event) -> Result<(), HandlerError> {
    let order: OrderPlaced = parse_data(event)?;
    host::log(
        Level::Info,
        &format!(
            "order confirmation for order {} to customer {}: {} items, total {}",
            order.order_id,
            order.customer_id,
            order.items.len(),
            order.total
        ),
    );
    emit_email_sent(json!({
        "template": "order-confirmation",
        "to": order.customer_id,
        "orderId": order.order_id,
    }))
}

fn send_welcome(event: &Event) -> Result<(), HandlerError> {
    let user: UserCreated = parse_data(event)?;
    host::log(
        Level::Info,
        &format!("welcome email to {} for user {}", user.email, user.user_id),
    );
    emit_email_sent(json!({
        "template": "welcome",
        "to": user.email,
        "userId": user.user_id,
    }))
}

/// Parses the event data, rejecting the event when it is not valid JSON or
/// lacks a field. serde_json's message names the field and the position.
fn parse_data<T: for<'de> Deserialize<'de>>(event: &Event) -> Result<T, HandlerError> {
    serde_json::from_slice(&event.data)
        .map_err(|err| HandlerError::Reject(format!("invalid {} data: {err}", event.type_)))
}

/// Queues `email.sent`. The host rejects data that fails the event's schema,
/// which is a bug in this handler, so the error rejects the event instead of
/// retrying it.
fn emit_email_sent(data: Value) -> Result<(), HandlerError> {
    host::emit("email.sent", data.to_string().as_bytes())
        .map_err(|err| HandlerError::Reject(format!("emitting email.sent failed: {err}")))
}

export!(EmailHandler);
