//! Readable conflicts from RabbitMQ's 406 PRECONDITION_FAILED replies to a
//! declare: which entity, which argument, the existing and the requested
//! value, and the way out.

use crate::broker::BrokerError;

/// The entity whose declaration failed.
#[derive(Clone, Copy, Debug)]
pub(super) struct Entity<'a> {
    /// `"queue"`, `"exchange"` or `"binding of queue"`.
    pub kind: &'static str,
    pub name: &'a str,
    pub vhost: &'a str,
}

/// One side of an inequivalent argument as RabbitMQ reports it.
#[derive(Debug, PartialEq, Eq)]
struct ArgumentValue {
    text: String,
    /// RabbitMQ's name of the AMQP type (`longstr`, `long`, …), when given.
    amqp_type: Option<String>,
}

/// A parsed "inequivalent arg" reply.
#[derive(Debug, PartialEq, Eq)]
struct Inequivalence {
    argument: String,
    received: Option<ArgumentValue>,
    current: Option<ArgumentValue>,
}

/// Builds the `Conflict` for a declare that the broker rejected with 406.
pub(super) fn conflict(entity: Entity<'_>, reply_text: &str) -> BrokerError {
    let message = match parse_inequivalence(reply_text) {
        Some(inequivalence) => describe(entity, &inequivalence),
        None => format!(
            "declaring {kind} `{name}` in vhost `{vhost}` failed: RabbitMQ replied \
             \"{reply_text}\". If the {kind} already exists with other settings, delete it \
             and let switchyard re-create it; otherwise change its definition.",
            kind = entity.kind,
            name = entity.name,
            vhost = entity.vhost,
        ),
    };
    BrokerError::Conflict(message)
}

fn describe(entity: Entity<'_>, inequivalence: &Inequivalence) -> String {
    let Entity { kind, name, vhost } = entity;
    let argument = &inequivalence.argument;
    let current = display_value(inequivalence.current.as_ref());
    let received = display_value(inequivalence.received.as_ref());
    let lost = match kind {
        "queue" => "the messages in it are lost",
        _ => "bindings that other applications made to it are lost",
    };
    let mut message = format!(
        "{kind} `{name}` in vhost `{vhost}` already exists with {argument} = {current}, but \
         switchyard declares it with {argument} = {received}. RabbitMQ cannot change this on an \
         existing {kind}. To fix it, delete the {kind} and let switchyard re-create it ({lost})"
    );
    if let Some(command) = policy_command(entity, inequivalence) {
        message.push_str(&format!(
            ", or keep the {kind}, stop declaring this argument and set the value with a \
             policy: {command}"
        ));
    }
    message.push('.');
    message
}

fn display_value(value: Option<&ArgumentValue>) -> String {
    match value {
        Some(value) => format!("`{}`", value.text),
        None => "none".to_owned(),
    }
}

/// Returns the `rabbitmqctl set_policy` command that sets the requested
/// value, when a policy key exists for the argument and the entity does not
/// have the argument already: an argument on the entity takes precedence
/// over a policy.
fn policy_command(entity: Entity<'_>, inequivalence: &Inequivalence) -> Option<String> {
    if inequivalence.current.is_some() {
        return None;
    }
    let received = inequivalence.received.as_ref()?;
    let key = policy_key(&inequivalence.argument)?;
    let value = match received.amqp_type.as_deref() {
        Some("long" | "signedint" | "short" | "byte") => received
            .text
            .parse::<i64>()
            .map(serde_json::Value::from)
            .ok()?,
        _ => serde_json::Value::from(received.text.as_str()),
    };
    let definition = serde_json::json!({ key: value }).to_string();
    let apply_to = match entity.kind {
        "queue" => "queues",
        _ => "exchanges",
    };
    Some(format!(
        "rabbitmqctl set_policy -p {vhost} {name} {pattern} {definition} --apply-to {apply_to}",
        vhost = shell_quote(entity.vhost),
        name = shell_quote(&format!("switchyard-{}", entity.name)),
        pattern = shell_quote(&format!("^{}$", regex_escape(entity.name))),
        definition = shell_quote(&definition),
    ))
}

/// Returns the policy key for an argument that a policy can set.
fn policy_key(argument: &str) -> Option<&'static str> {
    match argument {
        "x-dead-letter-exchange" => Some("dead-letter-exchange"),
        "x-dead-letter-routing-key" => Some("dead-letter-routing-key"),
        "x-message-ttl" => Some("message-ttl"),
        "x-expires" => Some("expires"),
        "x-max-length" => Some("max-length"),
        "alternate-exchange" => Some("alternate-exchange"),
        _ => None,
    }
}

/// Parses RabbitMQ's reply "PRECONDITION_FAILED - inequivalent arg 'ARG' for
/// queue 'NAME' in vhost 'VHOST': received VALUE but current is VALUE", where
/// VALUE is `none`, `'TEXT'` or `the value 'TEXT' of type 'TYPE'`.
fn parse_inequivalence(text: &str) -> Option<Inequivalence> {
    let rest = text.split_once("inequivalent arg '")?.1;
    let (argument, rest) = rest.split_once("' for ")?;
    let rest = rest.split_once("': received ")?.1;
    let (received, current) = rest.split_once(" but current is ")?;
    Some(Inequivalence {
        argument: argument.to_owned(),
        received: parse_value(received)?,
        current: parse_value(current)?,
    })
}

/// Parses one VALUE; the outer `Option` is `None` when the text has none of
/// the known forms.
fn parse_value(text: &str) -> Option<Option<ArgumentValue>> {
    let text = text.trim();
    if text == "none" {
        return Some(None);
    }
    if let Some(rest) = text.strip_prefix("the value '") {
        let (value, amqp_type) = rest.rsplit_once("' of type '")?;
        let amqp_type = amqp_type.strip_suffix('\'')?;
        return Some(Some(ArgumentValue {
            text: value.to_owned(),
            amqp_type: Some(amqp_type.to_owned()),
        }));
    }
    let value = text.strip_prefix('\'')?.strip_suffix('\'')?;
    Some(Some(ArgumentValue {
        text: value.to_owned(),
        amqp_type: None,
    }))
}

/// Quotes `text` for a POSIX shell.
fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// Escapes the characters that are special in the regular expressions of
/// RabbitMQ policy patterns.
fn regex_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for character in text.chars() {
        if r"\.^$|?*+()[]{}".contains(character) {
            escaped.push('\\');
        }
        escaped.push(character);
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUEUE: Entity<'static> = Entity {
        kind: "queue",
        name: "email.service",
        vhost: "/",
    };

    fn conflict_text(entity: Entity<'_>, reply: &str) -> String {
        match conflict(entity, reply) {
            BrokerError::Conflict(message) => message,
            other => panic!("expected a conflict, got {other:?}"),
        }
    }

    #[test]
    fn parse_missing_current_value() {
        let reply = "PRECONDITION_FAILED - inequivalent arg 'x-dead-letter-exchange' for queue \
                     'q' in vhost '/': received the value 'dlx' of type 'longstr' but current is \
                     none";
        let parsed = parse_inequivalence(reply).expect("known form");
        assert_eq!(parsed.argument, "x-dead-letter-exchange");
        assert_eq!(
            parsed.received,
            Some(ArgumentValue {
                text: "dlx".to_owned(),
                amqp_type: Some("longstr".to_owned()),
            })
        );
        assert_eq!(parsed.current, None);
    }

    #[test]
    fn parse_plain_values() {
        let reply = "PRECONDITION_FAILED - inequivalent arg 'durable' for queue 'q' in vhost \
                     '/': received 'true' but current is 'false'";
        let parsed = parse_inequivalence(reply).expect("known form");
        assert_eq!(parsed.argument, "durable");
        assert_eq!(
            parsed.received.map(|value| value.text),
            Some("true".to_owned())
        );
        assert_eq!(
            parsed.current.map(|value| value.text),
            Some("false".to_owned())
        );
    }

    #[test]
    fn conflict_names_values_and_policy() {
        let reply = "PRECONDITION_FAILED - inequivalent arg 'x-message-ttl' for queue \
                     'email.service' in vhost '/': received the value '5000' of type 'long' but \
                     current is none";
        let message = conflict_text(QUEUE, reply);
        assert!(
            message.contains("queue `email.service` in vhost `/`"),
            "{message}"
        );
        assert!(message.contains("x-message-ttl = none"), "{message}");
        assert!(message.contains("x-message-ttl = `5000`"), "{message}");
        assert!(message.contains("delete the queue"), "{message}");
        assert!(
            message.contains(
                r#"rabbitmqctl set_policy -p '/' 'switchyard-email.service' '^email\.service$' '{"message-ttl":5000}' --apply-to queues"#
            ),
            "{message}"
        );
    }

    #[test]
    fn conflict_without_policy_when_argument_set() {
        let reply = "PRECONDITION_FAILED - inequivalent arg 'x-dead-letter-exchange' for queue \
                     'email.service' in vhost '/': received the value 'dlx' of type 'longstr' \
                     but current is the value 'old' of type 'longstr'";
        let message = conflict_text(QUEUE, reply);
        assert!(
            message.contains("x-dead-letter-exchange = `old`"),
            "{message}"
        );
        assert!(
            message.contains("x-dead-letter-exchange = `dlx`"),
            "{message}"
        );
        assert!(!message.contains("set_policy"), "{message}");
    }

    #[test]
    fn conflict_without_policy_for_queue_type() {
        let reply = "PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue 'q' in \
                     vhost '/': received the value 'quorum' of type 'longstr' but current is none";
        let message = conflict_text(QUEUE, reply);
        assert!(!message.contains("set_policy"), "{message}");
    }

    #[test]
    fn conflict_keeps_unknown_reply() {
        let reply = "PRECONDITION_FAILED - invalid property 'non-durable' for queue 'q'";
        let message = conflict_text(QUEUE, reply);
        assert!(message.contains(reply), "{message}");
        assert!(message.contains("queue `email.service`"), "{message}");
    }

    #[test]
    fn shell_quote_escapes_quote() {
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
