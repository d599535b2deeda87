//! Classification of lapin errors into `BrokerError`. Reconnect and retry
//! decisions use the AMQP reply code and lapin's error kind, not message text.

use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::{Error, ErrorKind};

use crate::broker::BrokerError;

/// Returns the AMQP reply code and text that closed a channel or connection,
/// if the error came from the broker.
pub(super) fn reply(error: &Error) -> Option<(u16, &str)> {
    match error.kind() {
        ErrorKind::ProtocolError(amqp) => Some((amqp.get_id(), amqp.get_message().as_str())),
        _ => None,
    }
}

/// Reports whether the broker closed the channel with the given soft error.
pub(super) fn is_soft_error(error: &Error, expected: AMQPSoftError) -> bool {
    matches!(
        error.kind(),
        ErrorKind::ProtocolError(amqp) if *amqp.kind() == AMQPErrorKind::Soft(expected)
    )
}

/// Reports whether the error is the loss of the connection (or of a channel
/// because of it), which a retry after reconnecting can fix.
pub(super) fn is_connection_loss(error: &Error) -> bool {
    match error.kind() {
        ErrorKind::IOError(_)
        | ErrorKind::MissingHeartbeatError
        | ErrorKind::InvalidConnectionState(_)
        | ErrorKind::InvalidChannelState(..)
        | ErrorKind::InvalidChannel(_) => true,
        ErrorKind::ProtocolError(amqp) => matches!(amqp.kind(), AMQPErrorKind::Hard(_)),
        _ => false,
    }
}

/// Converts a lapin error from any operation into a `BrokerError`: a lost
/// connection or channel is `Closed` (transient), anything else `Protocol`.
pub(super) fn broker_error(error: &Error) -> BrokerError {
    let text = match reply(error) {
        Some((_, text)) => text.to_owned(),
        None => error.to_string(),
    };
    if is_connection_loss(error) {
        BrokerError::Closed(text)
    } else {
        BrokerError::Protocol(text)
    }
}

/// Returns the fix for a connection that the broker refused while logging
/// in: wrong credentials, a virtual host that does not exist, or a user
/// without permissions on it.
pub(super) fn login_hint(error: &Error, broker: &str) -> Option<String> {
    let (code, text) = reply(error)?;
    match code {
        ACCESS_REFUSED | NOT_ALLOWED if text.contains("access to vhost") => Some(format!(
            "the user of broker `{broker}` has no permissions on the virtual host in its URL; \
             grant them, such as with `rabbitmqctl set_permissions -p VHOST USER '.*' '.*' '.*'`"
        )),
        ACCESS_REFUSED => Some(format!(
            "check the user and password in the URL of broker `{broker}`; RabbitMQ's `guest` \
             user can log in only from the broker's own host"
        )),
        NOT_ALLOWED if text.contains("vhost") => Some(format!(
            "the virtual host in the path of the URL of broker `{broker}` does not exist; \
             create it (`rabbitmqctl add_vhost NAME`) or fix the path, where `/%2f` is the \
             default virtual host `/`"
        )),
        _ => None,
    }
}

/// AMQP reply code of a refused login or permission.
const ACCESS_REFUSED: u16 = 403;
/// AMQP reply code of a refused connection to a virtual host.
const NOT_ALLOWED: u16 = 530;

/// Extracts the entity kind and name from a RabbitMQ NOT_FOUND text such as
/// "NOT_FOUND - no exchange 'events' in vhost '/'".
pub(super) fn not_found_entity(text: &str) -> Option<(&'static str, String)> {
    let rest = text.split_once(" - no ")?.1;
    let (kind, rest) = if let Some(rest) = rest.strip_prefix("exchange '") {
        ("exchange", rest)
    } else if let Some(rest) = rest.strip_prefix("queue '") {
        ("queue", rest)
    } else {
        return None;
    };
    let name = rest.split_once("' in vhost '")?.0;
    Some((kind, name.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_found_entity_parses_exchange() {
        let text = "NOT_FOUND - no exchange 'events' in vhost 'shop'";
        assert_eq!(
            not_found_entity(text),
            Some(("exchange", "events".to_owned()))
        );
    }

    #[test]
    fn not_found_entity_parses_queue() {
        let text = "NOT_FOUND - no queue 'it's' in vhost '/'";
        assert_eq!(not_found_entity(text), Some(("queue", "it's".to_owned())));
    }

    #[test]
    fn not_found_entity_rejects_other_text() {
        assert_eq!(not_found_entity("NOT_FOUND - something else"), None);
    }
}
