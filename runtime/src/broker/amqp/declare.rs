//! Declarations and queue queries, each on a short-lived channel of its own:
//! RabbitMQ closes a channel on a failed declare (406 PRECONDITION_FAILED,
//! 404 NOT_FOUND), which must not take other work down with it.

use std::collections::BTreeMap;
use std::future::Future;

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::protocol::AMQPSoftError;
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, ExchangeKind as LapinExchangeKind};
use tracing::{debug, error, info};

use super::conflict::{self, Entity};
use super::errors;
use super::properties::short_string;
use super::session::{Session, Shared};
use crate::broker::BrokerError;
use crate::topology::{BindingSpec, ExchangeKind, ExchangeSpec, QueueSpec};

pub(super) async fn declare_exchange(
    shared: &Shared,
    session: &Session,
    spec: &ExchangeSpec,
) -> Result<(), BrokerError> {
    let name = short_string("exchange name", &spec.name)?;
    let mut arguments = FieldTable::default();
    if let Some(alternate) = &spec.alternate_exchange {
        short_string("alternate exchange name", alternate)?;
        arguments.insert("alternate-exchange".into(), long_string(alternate));
    }
    let options = ExchangeDeclareOptions {
        durable: spec.durable,
        ..ExchangeDeclareOptions::default()
    };
    let kind = lapin_exchange_kind(spec.kind);

    let entity = Entity {
        kind: "exchange",
        name: &spec.name,
        vhost: &shared.vhost,
    };
    on_own_channel(shared, session, entity, |channel| async move {
        channel
            .exchange_declare(name, kind, options, arguments)
            .await
    })
    .await?;

    debug!(broker = %shared.name, exchange = %spec.name, "declared exchange");
    shared
        .declared()
        .exchanges
        .insert(spec.name.clone(), spec.clone());
    Ok(())
}

pub(super) async fn declare_queue(
    shared: &Shared,
    session: &Session,
    spec: &QueueSpec,
) -> Result<(), BrokerError> {
    let name = short_string("queue name", &spec.name)?;
    let arguments = queue_arguments(spec)?;
    let options = QueueDeclareOptions {
        durable: spec.durable,
        ..QueueDeclareOptions::default()
    };

    let entity = Entity {
        kind: "queue",
        name: &spec.name,
        vhost: &shared.vhost,
    };
    on_own_channel(shared, session, entity, |channel| async move {
        channel.queue_declare(name, options, arguments).await
    })
    .await?;

    debug!(broker = %shared.name, queue = %spec.name, "declared queue");
    shared
        .declared()
        .queues
        .insert(spec.name.clone(), spec.clone());
    Ok(())
}

pub(super) async fn bind_queue(
    shared: &Shared,
    session: &Session,
    spec: &BindingSpec,
) -> Result<(), BrokerError> {
    let queue = short_string("queue name", &spec.queue)?;
    let exchange = short_string("exchange name", &spec.exchange)?;
    let routing_key = short_string("routing key", &spec.routing_key)?;

    let entity = Entity {
        kind: "binding of queue",
        name: &spec.queue,
        vhost: &shared.vhost,
    };
    on_own_channel(shared, session, entity, |channel| async move {
        let options = QueueBindOptions::default();
        channel
            .queue_bind(queue, exchange, routing_key, options, FieldTable::default())
            .await
    })
    .await?;

    debug!(
        broker = %shared.name,
        exchange = %spec.exchange,
        queue = %spec.queue,
        routing_key = %spec.routing_key,
        "bound queue"
    );
    shared.declared().add_binding(spec);
    Ok(())
}

/// Returns the number of ready messages through a passive declare, which
/// changes nothing. A missing queue is `NotFound`.
pub(super) async fn queue_depth(
    shared: &Shared,
    session: &Session,
    queue: &str,
) -> Result<u32, BrokerError> {
    let name = short_string("queue name", queue)?;
    let options = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let entity = Entity {
        kind: "queue",
        name: queue,
        vhost: &shared.vhost,
    };
    let declared = on_own_channel(shared, session, entity, |channel| async move {
        channel
            .queue_declare(name, options, FieldTable::default())
            .await
    })
    .await?;
    Ok(declared.message_count())
}

/// Declares everything declared so far on a new connection, before the
/// connection is put to use. Durable entities survive a broker restart, so
/// for them this changes nothing; others are re-created. Failures are
/// logged, because no caller waits.
pub(super) async fn redeclare(shared: &Shared, session: &Session) {
    let (exchanges, queues, bindings) = {
        let declared = shared.declared();
        (
            declared.exchanges.values().cloned().collect::<Vec<_>>(),
            declared.queues.values().cloned().collect::<Vec<_>>(),
            declared.bindings.clone(),
        )
    };
    if exchanges.is_empty() && queues.is_empty() && bindings.is_empty() {
        return;
    }

    let mut failures = 0;
    for spec in &exchanges {
        if let Err(error) = declare_exchange(shared, session, spec).await {
            error!(broker = %shared.name, exchange = %spec.name, %error, "re-declaring exchange failed");
            failures += 1;
        }
    }
    for spec in &queues {
        if let Err(error) = declare_queue(shared, session, spec).await {
            error!(broker = %shared.name, queue = %spec.name, %error, "re-declaring queue failed");
            failures += 1;
        }
    }
    for spec in &bindings {
        if let Err(error) = bind_queue(shared, session, spec).await {
            error!(
                broker = %shared.name,
                exchange = %spec.exchange,
                queue = %spec.queue,
                %error,
                "re-binding queue failed"
            );
            failures += 1;
        }
    }
    info!(
        broker = %shared.name,
        exchanges = exchanges.len(),
        queues = queues.len(),
        bindings = bindings.len(),
        failures,
        "declared topology on new connection"
    );
}

/// Declares `queue` again from the spec recorded when it was first declared,
/// with its recorded bindings and the exchanges they name, and returns the
/// number of bindings. Used when the queue was deleted on the broker while
/// switchyard ran. Returns `None` when this broker never declared the queue.
pub(super) async fn redeclare_queue(
    shared: &Shared,
    session: &Session,
    queue: &str,
) -> Result<Option<usize>, BrokerError> {
    let (spec, exchanges, bindings) = {
        let declared = shared.declared();
        let Some(spec) = declared.queues.get(queue).cloned() else {
            return Ok(None);
        };
        let bindings: Vec<BindingSpec> = declared
            .bindings
            .iter()
            .filter(|binding| binding.queue == queue)
            .cloned()
            .collect();
        let exchanges: BTreeMap<String, ExchangeSpec> = bindings
            .iter()
            .filter_map(|binding| declared.exchanges.get_key_value(&binding.exchange))
            .map(|(name, spec)| (name.clone(), spec.clone()))
            .collect();
        (spec, exchanges, bindings)
    };
    // Deleting a queue leaves its exchanges in place, so these declares
    // normally change nothing. They matter when the exchange went too.
    for exchange in exchanges.values() {
        declare_exchange(shared, session, exchange).await?;
    }
    declare_queue(shared, session, &spec).await?;
    for binding in &bindings {
        bind_queue(shared, session, binding).await?;
    }
    Ok(Some(bindings.len()))
}

/// Declares `exchange` again from the spec recorded when it was first
/// declared, with every recorded binding from it, and returns the number of
/// bindings. Used when the exchange was deleted on the broker while
/// switchyard ran, which removed its bindings too. Returns `None` when this
/// broker never declared the exchange.
pub(super) async fn redeclare_exchange(
    shared: &Shared,
    session: &Session,
    exchange: &str,
) -> Result<Option<usize>, BrokerError> {
    let (spec, bindings) = {
        let declared = shared.declared();
        let Some(spec) = declared.exchanges.get(exchange).cloned() else {
            return Ok(None);
        };
        let bindings: Vec<BindingSpec> = declared
            .bindings
            .iter()
            .filter(|binding| binding.exchange == exchange)
            .cloned()
            .collect();
        (spec, bindings)
    };
    declare_exchange(shared, session, &spec).await?;
    for binding in &bindings {
        bind_queue(shared, session, binding).await?;
    }
    Ok(Some(bindings.len()))
}

/// Runs `operation` on a channel of its own within the operation timeout.
/// The channel closes in the background when `operation` drops it, unless
/// the broker closed it already because the operation failed.
async fn on_own_channel<T, F, Fut>(
    shared: &Shared,
    session: &Session,
    entity: Entity<'_>,
    operation: F,
) -> Result<T, BrokerError>
where
    F: FnOnce(Channel) -> Fut,
    Fut: Future<Output = Result<T, lapin::Error>>,
{
    let attempt = async {
        let channel = session.open_channel().await?;
        operation(channel)
            .await
            .map_err(|error| declare_error(&error, entity))
    };
    shared.within_operation_timeout(attempt).await
}

fn declare_error(error: &lapin::Error, entity: Entity<'_>) -> BrokerError {
    if let Some((_, text)) = errors::reply(error) {
        if errors::is_soft_error(error, AMQPSoftError::PRECONDITIONFAILED) {
            return conflict::conflict(entity, text);
        }
        if errors::is_soft_error(error, AMQPSoftError::NOTFOUND)
            && let Some((kind, name)) = errors::not_found_entity(text)
        {
            return BrokerError::NotFound { kind, name };
        }
    }
    errors::broker_error(error)
}

fn queue_arguments(spec: &QueueSpec) -> Result<FieldTable, BrokerError> {
    let mut arguments = FieldTable::default();
    arguments.insert("x-queue-type".into(), long_string(spec.kind.as_str()));
    if let Some(exchange) = &spec.dead_letter_exchange {
        short_string("dead-letter exchange name", exchange)?;
        arguments.insert("x-dead-letter-exchange".into(), long_string(exchange));
    }
    if let Some(routing_key) = &spec.dead_letter_routing_key {
        short_string("dead-letter routing key", routing_key)?;
        arguments.insert("x-dead-letter-routing-key".into(), long_string(routing_key));
    }
    if let Some(ttl) = spec.message_ttl {
        let milliseconds = i64::try_from(ttl.as_millis()).map_err(|_| {
            BrokerError::Protocol(format!(
                "message TTL {ttl:?} of queue `{}` is too large",
                spec.name
            ))
        })?;
        arguments.insert("x-message-ttl".into(), AMQPValue::LongLongInt(milliseconds));
    }
    Ok(arguments)
}

fn long_string(text: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(text))
}

fn lapin_exchange_kind(kind: ExchangeKind) -> LapinExchangeKind {
    match kind {
        ExchangeKind::Direct => LapinExchangeKind::Direct,
        ExchangeKind::Fanout => LapinExchangeKind::Fanout,
        ExchangeKind::Topic => LapinExchangeKind::Topic,
        ExchangeKind::Headers => LapinExchangeKind::Headers,
    }
}

/// Reports whether an exchange exists through a passive declare, which
/// changes nothing.
pub(super) async fn exchange_exists(
    shared: &Shared,
    session: &Session,
    exchange: &str,
) -> Result<bool, BrokerError> {
    if exchange.is_empty() {
        return Ok(true);
    }
    let name = short_string("exchange name", exchange)?;
    let options = ExchangeDeclareOptions {
        passive: true,
        ..ExchangeDeclareOptions::default()
    };
    let entity = Entity {
        kind: "exchange",
        name: exchange,
        vhost: &shared.vhost,
    };
    let result = on_own_channel(shared, session, entity, |channel| async move {
        channel
            .exchange_declare(
                name,
                LapinExchangeKind::Direct,
                options,
                FieldTable::default(),
            )
            .await
    })
    .await;
    match result {
        Ok(()) => Ok(true),
        Err(BrokerError::NotFound { .. }) => Ok(false),
        Err(other) => Err(other),
    }
}

/// Reports whether a queue exists through a passive declare.
pub(super) async fn queue_exists(
    shared: &Shared,
    session: &Session,
    queue: &str,
) -> Result<bool, BrokerError> {
    match queue_depth(shared, session, queue).await {
        Ok(_) => Ok(true),
        Err(BrokerError::NotFound { .. }) => Ok(false),
        Err(other) => Err(other),
    }
}
