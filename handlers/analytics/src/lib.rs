//! Analytics handler: logs every `user.created` event as a sign-up and every
//! `order.placed` event as a sale. Other event types are ignored.

wit_bindgen::generate!({ path: "../wit", world: "handler" });

use serde::Deserialize;
use switchyard::handler::host;
use switchyard::handler::types::Level;

/// Data of `user.created`. Other fields of the event are ignored.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UserCreated {
    user_id: String,
}

/// Data of `order.placed`. Other fields of the event are ignored.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct OrderPlaced {
    order_id: String,
    customer_id: String,
    total: f64,
}

struct AnalyticsHandler;

impl Guest for AnalyticsHandler {
    fn handle(event: Event) -> Result<(), HandlerError> {
        match event.type_.as_str() {
            "user.created" => {
                let user: UserCreated = serde_json::from_slice(&event.data).map_err(|err| {
                    HandlerError::Reject(format!("invalid user.created data: {err}"))
                })?;
                host::log(Level::Info, &format!("user signed up: {}", user.user_id));
            }
            "order.placed" => {
                let order: OrderPlaced = serde_json::from_slice(&event.data).map_err(|err| {
                    HandlerError::Reject(format!("invalid order.placed data: {err}"))
                })?;
                host::log(
                    Level::Info,
                    &format!(
                        "sale recorded: order {} of customer {}, total {:.2}",
                        order.order_id, order.customer_id, order.total
                    ),
                );
            }
            other => host::log(Level::Debug, &format!("ignoring event type {other:?}")),
        }
        Ok(())
    }
}

export!(AnalyticsHandler);
