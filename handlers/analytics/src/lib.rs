//! Analytics handler: logs every `user.created` event as a sign-up. Other
//! event types are ignored.

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

struct AnalyticsHandler;

impl Guest for AnalyticsHandler {
    fn handle(event: Event) -> Result<(), HandlerError> {
        if event.type_ != "user.created" {
            host::log(
                Level::Debug,
                &format!("ignoring event type {:?}", event.type_),
            );
            return Ok(());
        }

        let user: UserCreated = serde_json::from_slice(&event.data)
            .map_err(|err| HandlerError::Reject(format!("invalid user.created data: {err}")))?;
        host::log(Level::Info, &format!("user signed up: {}", user.user_id));
        Ok(())
    }
}

export!(AnalyticsHandler);
