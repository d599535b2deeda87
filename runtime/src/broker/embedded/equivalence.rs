//! Equivalence checks for redeclarations: an entity declared again must have
//! the properties it was created with, as RabbitMQ requires.

use crate::broker::BrokerError;
use crate::topology::{ExchangeSpec, QueueSpec};

/// One property that differs between an existing entity and a declaration.
struct Difference {
    property: &'static str,
    existing: String,
    requested: String,
}

impl Difference {
    fn compare<T: PartialEq>(
        property: &'static str,
        existing: &T,
        requested: &T,
        render: impl Fn(&T) -> String,
    ) -> Option<Difference> {
        (existing != requested).then(|| Difference {
            property,
            existing: render(existing),
            requested: render(requested),
        })
    }
}

/// Fails a redeclaration with differences, in the spirit of RabbitMQ's
/// `406 PRECONDITION_FAILED - inequivalent arg` but naming every difference.
fn require_no_differences(
    kind: &str,
    name: &str,
    differences: Vec<Difference>,
) -> Result<(), BrokerError> {
    if differences.is_empty() {
        return Ok(());
    }
    let details: Vec<String> = differences
        .iter()
        .map(|difference| {
            format!(
                "{} is {} but the declaration requests {}",
                difference.property, difference.existing, difference.requested
            )
        })
        .collect();
    Err(BrokerError::Conflict(format!(
        "{kind} `{name}` already exists with other properties: {}; declare it with the \
         existing properties, or delete it and declare it again",
        details.join(", and ")
    )))
}

pub(super) fn check_exchange_equivalent(
    existing: &ExchangeSpec,
    requested: &ExchangeSpec,
) -> Result<(), BrokerError> {
    let differences = [
        Difference::compare("type", &existing.kind, &requested.kind, |kind| {
            format!("`{}`", kind.as_str())
        }),
        Difference::compare(
            "durable",
            &existing.durable,
            &requested.durable,
            |durable| format!("`{durable}`"),
        ),
        Difference::compare(
            "alternate-exchange",
            &existing.alternate_exchange,
            &requested.alternate_exchange,
            |name| render_optional(name.as_deref()),
        ),
    ];
    require_no_differences(
        "exchange",
        &existing.name,
        differences.into_iter().flatten().collect(),
    )
}

pub(super) fn check_queue_equivalent(
    existing: &QueueSpec,
    requested: &QueueSpec,
) -> Result<(), BrokerError> {
    let differences = [
        Difference::compare("x-queue-type", &existing.kind, &requested.kind, |kind| {
            format!("`{}`", kind.as_str())
        }),
        Difference::compare(
            "durable",
            &existing.durable,
            &requested.durable,
            |durable| format!("`{durable}`"),
        ),
        Difference::compare(
            "x-dead-letter-exchange",
            &existing.dead_letter_exchange,
            &requested.dead_letter_exchange,
            |name| render_optional(name.as_deref()),
        ),
        Difference::compare(
            "x-dead-letter-routing-key",
            &existing.dead_letter_routing_key,
            &requested.dead_letter_routing_key,
            |key| render_optional(key.as_deref()),
        ),
        Difference::compare(
            "x-message-ttl",
            &existing.message_ttl,
            &requested.message_ttl,
            |ttl| match ttl {
                Some(ttl) => format!("`{}`", humantime::format_duration(*ttl)),
                None => "not set".to_owned(),
            },
        ),
    ];
    require_no_differences(
        "queue",
        &existing.name,
        differences.into_iter().flatten().collect(),
    )
}

fn render_optional(value: Option<&str>) -> String {
    match value {
        Some(value) => format!("`{value}`"),
        None => "not set".to_owned(),
    }
}
