//! Publishing with publisher confirms on a pool of confirm-mode channels.

use std::time::Duration;

use lapin::message::BasicReturnMessage;
use lapin::options::BasicPublishOptions;
use lapin::protocol::AMQPSoftError;
use lapin::types::ShortString;
use lapin::{BasicProperties, Confirmation};
use tracing::{debug, error, warn};

use super::properties::{basic_properties, short_string};
use super::session::Shared;
use super::{declare, errors};
use crate::broker::{BrokerError, Message};

/// How many times one publish is sent again on a new channel after the broker
/// closed its channel with an error that names no exchange of this publish.
/// Such an error is usually caused by another publish on the same channel,
/// but a few are caused by this one (a message over the broker's size limit),
/// so the retries are bounded.
const MAX_CHANNEL_RETRIES: u32 = 10;

/// Publishes `message` as mandatory and persistent, and waits for its
/// publisher confirm, all within `confirm_timeout`, which includes the wait
/// for a new connection after a connection loss. A message whose confirm was
/// lost with its connection or channel is sent again, so it may reach the
/// broker twice: delivery is at least once.
pub(super) async fn publish(
    shared: &Shared,
    exchange: &str,
    message: Message,
) -> Result<(), BrokerError> {
    let request = PublishRequest {
        exchange: short_string("exchange name", exchange)?,
        routing_key: short_string("routing key", &message.routing_key)?,
        properties: basic_properties(&message)?,
        message,
    };
    let published = publish_within_timeout(shared, &request).await;
    let Err(BrokerError::NotFound {
        kind: "exchange", ..
    }) = &published
    else {
        return published;
    };
    // An exchange of the topology deleted on the broker: declare it again,
    // with its bindings, and publish once more. Without this, dead letters
    // sent to a deleted dead-letter exchange would be lost.
    let session = shared.session()?;
    let Some(bindings) = declare::redeclare_exchange(shared, &session, exchange).await? else {
        return published;
    };
    warn!(broker = %shared.name, exchange, bindings,
        "exchange was deleted on the broker; declared it again with its bindings");
    publish_within_timeout(shared, &request).await
}

/// Publishes until confirmed or failed for good, within `confirm_timeout`.
async fn publish_within_timeout(
    shared: &Shared,
    request: &PublishRequest,
) -> Result<(), BrokerError> {
    let timeout = shared.options.confirm_timeout;
    match tokio::time::timeout(timeout, publish_with_retry(shared, request)).await {
        Ok(result) => result,
        Err(_) => Err(BrokerError::ConfirmTimeout {
            exchange: request.exchange.to_string(),
            timeout,
        }),
    }
}

struct PublishRequest {
    exchange: ShortString,
    routing_key: ShortString,
    properties: BasicProperties,
    message: Message,
}

/// The pause between checks for a new connection after a connection loss.
const RECONNECT_POLL: Duration = Duration::from_millis(20);

/// Publishes until confirmed or failed for good; the caller's timeout bounds
/// the retries. After a connection loss it waits for the supervisor's new
/// connection and sends again. A publish channel that the broker closed
/// because of another publish's error (such as a 404 for another exchange)
/// is replaced.
async fn publish_with_retry(shared: &Shared, request: &PublishRequest) -> Result<(), BrokerError> {
    let mut channel_retries = 0;
    loop {
        let session = shared.session()?;
        let publisher = match session.publish_channel().await {
            Ok(publisher) => publisher,
            Err(error) if errors::is_connection_loss(&error) => {
                debug!(broker = %shared.name, %error, "opening a publish channel failed; waiting for a new connection");
                wait_until_connected(shared).await;
                continue;
            }
            Err(error) => return Err(errors::broker_error(&error)),
        };
        let error = match publish_once(&publisher.channel, &publisher.publishing, request).await {
            Ok(confirmation) => return confirmation_result(shared, request, confirmation),
            Err(error) => error,
        };

        if error.is_amqp_soft_error() {
            if names_exchange(&error, request) {
                return Err(own_channel_error(&error, request));
            }
            if channel_retries >= MAX_CHANNEL_RETRIES {
                return Err(errors::broker_error(&error));
            }
            channel_retries += 1;
            debug!(broker = %shared.name, %error, "publish channel closed by another publish; publishing again");
            continue;
        }
        if !errors::is_connection_loss(&error) {
            return Err(errors::broker_error(&error));
        }
        debug!(broker = %shared.name, %error, "publish failed; waiting for a new connection");
        wait_until_connected(shared).await;
    }
}

/// Waits until the supervisor has installed a connected connection. The
/// caller's timeout bounds the wait.
async fn wait_until_connected(shared: &Shared) {
    tokio::time::sleep(RECONNECT_POLL).await;
    while !shared.is_connected() {
        tokio::time::sleep(RECONNECT_POLL).await;
    }
}

async fn publish_once(
    channel: &lapin::Channel,
    publishing: &tokio::sync::Mutex<()>,
    request: &PublishRequest,
) -> Result<Confirmation, lapin::Error> {
    let options = BasicPublishOptions {
        mandatory: true,
        ..BasicPublishOptions::default()
    };
    let confirm = {
        let _publishing = publishing.lock().await;
        channel
            .basic_publish(
                request.exchange.clone(),
                request.routing_key.clone(),
                options,
                &request.message.body,
                request.properties.clone(),
            )
            .await?
    };
    confirm.await
}

fn confirmation_result(
    shared: &Shared,
    request: &PublishRequest,
    confirmation: Confirmation,
) -> Result<(), BrokerError> {
    match confirmation {
        Confirmation::Ack(None) => Ok(()),
        Confirmation::Ack(Some(returned)) if is_returned_request(&returned, request) => {
            Err(BrokerError::Unroutable {
                exchange: request.exchange.to_string(),
                routing_key: request.routing_key.to_string(),
            })
        }
        Confirmation::Ack(Some(returned)) => {
            // NOTE: lapin hands a returned message to the first pending confirm
            // when a `multiple` ack covers several publishes, so the return can
            // reach another publish than the one the broker returned. That
            // publish may have reported success, and this log line is then the
            // only trace of the unroutable message.
            error!(
                broker = %shared.name,
                exchange = %returned.delivery.exchange,
                routing_key = %returned.delivery.routing_key,
                message_id = ?returned.delivery.properties.message_id(),
                "broker returned an unroutable message from a concurrent publish"
            );
            Ok(())
        }
        Confirmation::Nack(_) => Err(BrokerError::NotConfirmed {
            exchange: request.exchange.to_string(),
            reason: "the broker rejected the message (basic.nack)".to_owned(),
        }),
        Confirmation::NotRequested => Err(BrokerError::Protocol(
            "publish channel is not in confirm mode".to_owned(),
        )),
    }
}

fn is_returned_request(returned: &BasicReturnMessage, request: &PublishRequest) -> bool {
    let delivery = &returned.delivery;
    delivery.exchange == request.exchange
        && delivery.routing_key == request.routing_key
        && delivery.properties.message_id() == request.properties.message_id()
        && delivery.data == request.message.body
}

/// Reports whether the broker's reply text is about the exchange of this
/// publish, as in "NOT_FOUND - no exchange 'NAME' in vhost '/'" or
/// "ACCESS_REFUSED - access to exchange 'NAME' in vhost '/' refused".
fn names_exchange(error: &lapin::Error, request: &PublishRequest) -> bool {
    let Some((_, text)) = errors::reply(error) else {
        return false;
    };
    text.contains(&format!("exchange '{}'", request.exchange))
}

/// Converts a channel error caused by this publish: a missing exchange is
/// `NotFound`, anything else (such as missing write permission) `Protocol`.
fn own_channel_error(error: &lapin::Error, request: &PublishRequest) -> BrokerError {
    if errors::is_soft_error(error, AMQPSoftError::NOTFOUND) {
        return BrokerError::NotFound {
            kind: "exchange",
            name: request.exchange.to_string(),
        };
    }
    errors::broker_error(error)
}
