//! Inventory handler: reserves stock for every item of an `order.placed`
//! event by emitting one `stock.reserved` event per item. Other event types
//! are ignored.

wit_bindgen::generate!({ path: "../wit", world: "handler" });

use serde::Deserialize;
use serde_json::json;
use switchyard::handler::host;
use switchyard::handler::types::Level;

/// Data of `order.placed`. Only the fields this handler reads are declared.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct OrderPlaced {
    order_id: String,
    items: Vec<OrderItem>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct OrderItem {
    product_id: String,
    quantity: u32,
}

struct InventoryHandler;

impl Guest for InventoryHandler {
    fn handle(event: Event) -> Result<(), HandlerError> {
        if event.type_ != "order.placed" {
            host::log(
                Level::Debug,
                &format!("ignoring event type {:?}", event.type_),
            );
            return Ok(());
        }
        reserve_stock(&event)
    }
}

fn reserve_stock(event: &Event) -> Result<(), HandlerError> {
    let order: OrderPlaced = serde_json::from_slice(&event.data)
        .map_err(|err| HandlerError::Reject(format!("invalid order.placed data: {err}")))?;

    for item in &order.items {
        let data = json!({
            "orderId": order.order_id,
            "productId": item.product_id,
            "quantity": item.quantity,
        });
        // The host rejects data that fails the schema of stock.reserved,
        // which is a bug in this handler, so the event is rejected, not retried.
        host::emit("stock.reserved", data.to_string().as_bytes()).map_err(|err| {
            HandlerError::Reject(format!("emitting stock.reserved failed: {err}"))
        })?;
    }

    host::log(
        Level::Info,
        &format!(
            "reserved stock for {} items of order {}",
            order.items.len(),
            order.order_id
        ),
    );
    Ok(())
}

export!(InventoryHandler);
