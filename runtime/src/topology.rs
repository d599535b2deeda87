//! The desired state of a broker: exchanges, queues, bindings and topics
//! derived from the manifest, and their provisioning.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::broker::{Broker, BrokerError};
use crate::manifest::{ExchangeType, Manifest, QueueType};

/// The exchange types of AMQP 0-9-1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExchangeKind {
    Direct,
    Fanout,
    Topic,
    Headers,
}

impl ExchangeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ExchangeKind::Direct => "direct",
            ExchangeKind::Fanout => "fanout",
            ExchangeKind::Topic => "topic",
            ExchangeKind::Headers => "headers",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExchangeSpec {
    pub name: String,
    pub kind: ExchangeKind,
    pub durable: bool,
    /// Exchange that receives messages that no binding routes.
    pub alternate_exchange: Option<String>,
}

/// RabbitMQ's queue types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueKind {
    Classic,
    Quorum,
    Stream,
}

impl QueueKind {
    pub fn as_str(self) -> &'static str {
        match self {
            QueueKind::Classic => "classic",
            QueueKind::Quorum => "quorum",
            QueueKind::Stream => "stream",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueSpec {
    pub name: String,
    pub kind: QueueKind,
    pub durable: bool,
    /// `x-dead-letter-exchange`: where rejected and expired messages go.
    pub dead_letter_exchange: Option<String>,
    /// `x-dead-letter-routing-key`; without it a dead letter keeps its key.
    pub dead_letter_routing_key: Option<String>,
    /// `x-message-ttl`.
    pub message_ttl: Option<Duration>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BindingSpec {
    pub exchange: String,
    pub queue: String,
    /// A routing key, or for topic exchanges a pattern with `*` and `#`.
    pub routing_key: String,
}

/// A Kafka topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    pub replication_factor: i32,
    /// Topic configuration entries such as `retention.ms`.
    pub config: BTreeMap<String, String>,
}

/// An existing topic as the broker reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicState {
    pub partitions: i32,
    /// The current values of the configuration entries that were asked for;
    /// an entry the broker does not report is missing.
    pub config: BTreeMap<String, String>,
}

/// Returns the dead-letter topic of a topic: its `dead_letter` setting or
/// the topic's name followed by `.dead-letters`.
pub fn dead_letter_topic(manifest: &Manifest, topic: &str) -> String {
    manifest
        .topics
        .get(topic)
        .and_then(|t| t.def.dead_letter.clone())
        .unwrap_or_else(|| format!("{topic}.dead-letters"))
}

/// Name of the exchange and queue that keep what no binding routes.
pub const UNROUTABLE: &str = "unroutable";

/// Returns the name of the queue where a consumer's failed messages wait
/// for their retry delay.
pub fn retry_queue_name(queue: &str) -> String {
    format!("{queue}.retry")
}

/// Everything one broker should hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BrokerTopology {
    pub exchanges: Vec<ExchangeSpec>,
    pub queues: Vec<QueueSpec>,
    pub bindings: Vec<BindingSpec>,
    pub topics: Vec<TopicSpec>,
}

/// Derives the desired state of every broker from the manifest: its
/// exchanges, queues and bindings, plus the `unroutable` exchange and queue
/// that every exchange uses as its alternate, and one retry queue per
/// consumed queue.
pub fn desired(manifest: &Manifest) -> BTreeMap<String, BrokerTopology> {
    let mut brokers: BTreeMap<String, BrokerTopology> = manifest
        .brokers
        .keys()
        .map(|name| (name.clone(), BrokerTopology::default()))
        .collect();

    for (name, entry) in &manifest.exchanges {
        let def = &entry.def;
        let Some(topology) = brokers.get_mut(def.broker.get_ref()) else {
            continue;
        };
        let alternate = match &def.alternate_exchange {
            Some(alternate) => Some(alternate.get_ref().clone()),
            None if name == UNROUTABLE => None,
            None => Some(UNROUTABLE.to_owned()),
        };
        topology.exchanges.push(ExchangeSpec {
            name: name.clone(),
            kind: exchange_kind(def.kind),
            durable: def.durable,
            alternate_exchange: alternate,
        });
    }

    for (name, entry) in &manifest.queues {
        let def = &entry.def;
        let Some(topology) = brokers.get_mut(def.broker.get_ref()) else {
            continue;
        };
        topology.queues.push(QueueSpec {
            name: name.clone(),
            kind: queue_kind(def.kind),
            durable: def.durable,
            dead_letter_exchange: def
                .dead_letter
                .as_ref()
                .map(|d| d.exchange.get_ref().clone()),
            dead_letter_routing_key: def.dead_letter.as_ref().and_then(|d| d.routing_key.clone()),
            message_ttl: def.message_ttl.map(|ttl| ttl.0),
        });
        for binding in &def.bind {
            topology.bindings.push(BindingSpec {
                exchange: binding.exchange.get_ref().clone(),
                queue: name.clone(),
                routing_key: binding.key.get_ref().clone(),
            });
        }
    }

    for (name, entry) in &manifest.topics {
        let def = &entry.def;
        let Some(topology) = brokers.get_mut(def.broker.get_ref()) else {
            continue;
        };
        topology.topics.push(TopicSpec {
            name: name.clone(),
            partitions: def.partitions,
            replication_factor: def.replication_factor,
            config: def.config.clone(),
        });
    }

    add_unroutable(&mut brokers, manifest);
    add_retry_queues(&mut brokers, manifest);
    add_dead_letter_topics(&mut brokers, manifest);
    brokers
}

/// Adds the dead-letter topic of every consumed topic, with the topic's
/// partitions and replication but none of its configuration.
fn add_dead_letter_topics(brokers: &mut BTreeMap<String, BrokerTopology>, manifest: &Manifest) {
    for entry in manifest.consumers.values() {
        let Some(topic) = &entry.def.topic else {
            continue;
        };
        let Some(def) = manifest.topics.get(topic.get_ref()).map(|t| &t.def) else {
            continue;
        };
        let Some(topology) = brokers.get_mut(def.broker.get_ref()) else {
            continue;
        };
        let name = dead_letter_topic(manifest, topic.get_ref());
        if topology.topics.iter().any(|t| t.name == name) {
            continue;
        }
        topology.topics.push(TopicSpec {
            name,
            partitions: def.partitions,
            replication_factor: def.replication_factor,
            config: BTreeMap::new(),
        });
    }
}

fn add_unroutable(brokers: &mut BTreeMap<String, BrokerTopology>, manifest: &Manifest) {
    for topology in brokers.values_mut() {
        let uses_unroutable = topology
            .exchanges
            .iter()
            .any(|e| e.alternate_exchange.as_deref() == Some(UNROUTABLE));
        if !uses_unroutable {
            continue;
        }
        if !manifest.exchanges.contains_key(UNROUTABLE) {
            topology.exchanges.push(ExchangeSpec {
                name: UNROUTABLE.to_owned(),
                kind: ExchangeKind::Fanout,
                durable: true,
                alternate_exchange: None,
            });
        }
        if !manifest.queues.contains_key(UNROUTABLE) {
            topology.queues.push(QueueSpec {
                name: UNROUTABLE.to_owned(),
                kind: QueueKind::Classic,
                durable: true,
                dead_letter_exchange: None,
                dead_letter_routing_key: None,
                message_ttl: None,
            });
            topology.bindings.push(BindingSpec {
                exchange: UNROUTABLE.to_owned(),
                queue: UNROUTABLE.to_owned(),
                routing_key: String::new(),
            });
        }
    }
}

fn add_retry_queues(brokers: &mut BTreeMap<String, BrokerTopology>, manifest: &Manifest) {
    for entry in manifest.consumers.values() {
        let Some(queue) = &entry.def.queue else {
            continue;
        };
        let queue = queue.get_ref();
        let Some(broker) = manifest.queue_broker(queue) else {
            continue;
        };
        let Some(topology) = brokers.get_mut(broker) else {
            continue;
        };
        let name = retry_queue_name(queue);
        if topology.queues.iter().any(|q| q.name == name) {
            continue;
        }
        // Expired messages return to the work queue through the default
        // exchange, which routes by queue name.
        // NOTE: RabbitMQ expires messages only at the head of a queue, so a
        // message with a long retry delay holds back shorter ones behind it
        // until it expires. Nothing is lost, but a retry can come late.
        // One queue per delay step would remove that wait.
        topology.queues.push(QueueSpec {
            name,
            kind: QueueKind::Classic,
            durable: true,
            dead_letter_exchange: Some(String::new()),
            dead_letter_routing_key: Some(queue.clone()),
            message_ttl: None,
        });
    }
}

fn exchange_kind(kind: ExchangeType) -> ExchangeKind {
    match kind {
        ExchangeType::Direct => ExchangeKind::Direct,
        ExchangeType::Fanout => ExchangeKind::Fanout,
        ExchangeType::Topic => ExchangeKind::Topic,
        ExchangeType::Headers => ExchangeKind::Headers,
    }
}

fn queue_kind(kind: QueueType) -> QueueKind {
    match kind {
        QueueType::Classic => QueueKind::Classic,
        QueueType::Quorum => QueueKind::Quorum,
        QueueType::Stream => QueueKind::Stream,
    }
}

/// Declares a broker's desired state: exchanges, then queues, then bindings,
/// and creates missing topics. Keeps going after a conflict so that all of
/// them are reported at once.
pub async fn provision(
    broker: &dyn Broker,
    topology: &BrokerTopology,
) -> Result<(), Vec<BrokerError>> {
    let mut errors = Vec::new();
    for topic in &topology.topics {
        if let Err(err) = provision_topic(broker, topic).await {
            errors.push(err);
        }
    }
    for exchange in &topology.exchanges {
        if let Err(err) = broker.declare_exchange(exchange).await {
            errors.push(err);
        }
    }
    for queue in &topology.queues {
        if let Err(err) = broker.declare_queue(queue).await {
            errors.push(err);
        }
    }
    if errors.iter().any(|err| err.is_transient()) {
        return Err(errors);
    }
    for binding in &topology.bindings {
        if let Err(err) = broker.bind_queue(binding).await {
            errors.push(err);
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// Creates a missing topic, and adds partitions to one that has fewer than
/// the manifest. A topic with more partitions or other configuration values
/// is left as it is with a warning. Kafka cannot remove partitions, and
/// configuration drift is for an operator to settle.
async fn provision_topic(broker: &dyn Broker, topic: &TopicSpec) -> Result<(), BrokerError> {
    let Some(state) = broker.describe_topic(topic).await? else {
        return broker.create_topic(topic).await;
    };
    if state.partitions < topic.partitions {
        tracing::info!(topic = %topic.name, from = state.partitions, to = topic.partitions,
            "adding partitions to topic");
        // The topic works with fewer partitions, so a broker that cannot add
        // them (tansu 0.6 has no CreatePartitions) does not stop the start.
        if let Err(err) = broker.add_partitions(topic).await {
            if err.is_transient() {
                return Err(err);
            }
            tracing::warn!(topic = %topic.name, error = %err,
                "cannot add partitions; the topic keeps its partitions");
        }
    } else if state.partitions > topic.partitions {
        tracing::warn!(topic = %topic.name, existing = state.partitions, wanted = topic.partitions,
            "topic has more partitions than the manifest asks for; Kafka cannot remove partitions");
    }
    for difference in config_differences(topic, &state) {
        tracing::warn!(topic = %topic.name, %difference,
            "topic configuration differs from the manifest; `switchyard plan` lists it");
    }
    Ok(())
}

/// Lists the configuration entries of a topic whose value on the broker
/// differs from the manifest, as `key: existing -> wanted`.
fn config_differences(topic: &TopicSpec, state: &TopicState) -> Vec<String> {
    topic
        .config
        .iter()
        .filter(|(key, wanted)| state.config.get(*key) != Some(*wanted))
        .map(|(key, wanted)| {
            let existing = state.config.get(key).map_or("(unset)", String::as_str);
            format!("{key}: {existing} -> {wanted}")
        })
        .collect()
}

/// Action that provisioning would take on one entity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Create,
    Unchanged,
    /// The broker can change the entity in place, such as a topic's
    /// configuration or partition count; the text names the differences.
    Update(String),
    /// The broker cannot change the entity in place; the text names the
    /// existing and the wanted values and the way out.
    Conflict(String),
    /// Declared again on every start, because AMQP 0-9-1 cannot list
    /// bindings without the management plugin; binding twice is harmless.
    Ensure,
}

/// One line of a plan: an entity and its action.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    pub kind: &'static str,
    pub name: String,
    pub action: Action,
}

/// Compares the desired state with what the broker has, changing nothing.
///
/// An existing exchange or queue is declared again with the wanted
/// properties, which changes nothing when they are equal and fails with a
/// conflict when they differ.
pub async fn plan(
    broker: &dyn Broker,
    topology: &BrokerTopology,
) -> Result<Vec<Step>, BrokerError> {
    let mut steps = Vec::new();
    for exchange in &topology.exchanges {
        let action = if broker.exchange_exists(&exchange.name).await? {
            compare(broker.declare_exchange(exchange).await)?
        } else {
            Action::Create
        };
        steps.push(Step {
            kind: "exchange",
            name: exchange.name.clone(),
            action,
        });
    }
    for queue in &topology.queues {
        let action = if broker.queue_exists(&queue.name).await? {
            compare(broker.declare_queue(queue).await)?
        } else {
            Action::Create
        };
        steps.push(Step {
            kind: "queue",
            name: queue.name.clone(),
            action,
        });
    }
    for topic in &topology.topics {
        steps.push(Step {
            kind: "topic",
            name: topic.name.clone(),
            action: plan_topic(broker, topic).await?,
        });
    }
    for binding in &topology.bindings {
        let new_end = steps.iter().any(|step| {
            step.action == Action::Create
                && ((step.kind == "exchange" && step.name == binding.exchange)
                    || (step.kind == "queue" && step.name == binding.queue))
        });
        steps.push(Step {
            kind: "binding",
            name: format!(
                "{} -> {} ({:?})",
                binding.exchange, binding.queue, binding.routing_key
            ),
            action: if new_end {
                Action::Create
            } else {
                Action::Ensure
            },
        });
    }
    Ok(steps)
}

async fn plan_topic(broker: &dyn Broker, topic: &TopicSpec) -> Result<Action, BrokerError> {
    let Some(state) = broker.describe_topic(topic).await? else {
        return Ok(Action::Create);
    };
    if state.partitions > topic.partitions {
        return Ok(Action::Conflict(format!(
            "topic `{}` has {} partitions and the manifest asks for {}; Kafka cannot remove \
             partitions, so raise `partitions` to {} or delete and re-create the topic",
            topic.name, state.partitions, topic.partitions, state.partitions
        )));
    }
    let mut changes = Vec::new();
    if state.partitions < topic.partitions {
        changes.push(format!(
            "partitions: {} -> {}",
            state.partitions, topic.partitions
        ));
    }
    changes.extend(config_differences(topic, &state));
    if changes.is_empty() {
        Ok(Action::Unchanged)
    } else {
        Ok(Action::Update(changes.join(", ")))
    }
}

fn compare(result: Result<(), BrokerError>) -> Result<Action, BrokerError> {
    match result {
        Ok(()) => Ok(Action::Unchanged),
        Err(BrokerError::Conflict(text)) => Ok(Action::Conflict(text)),
        Err(other) => Err(other),
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::broker::embedded::EmbeddedBroker;
    use crate::manifest::{Purpose, load};

    fn reference_system() -> Manifest {
        let folder = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../manifests");
        let paths = [folder.join("shop.toml"), folder.join("streaming.toml")];
        let loaded = load(&paths, Purpose::Run, &|_| None);
        assert!(loaded.problems.is_empty(), "{}", loaded.render());
        loaded.manifest
    }

    #[test]
    fn streaming_topics_with_dead_letter_topic() {
        let desired = desired(&reference_system());
        let stream = &desired["stream"];
        assert!(stream.exchanges.is_empty());
        assert!(stream.queues.is_empty());
        let names: Vec<&str> = stream.topics.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["analytics", "analytics.dead-letters"]);
        assert_eq!(stream.topics[0].partitions, 3);
        assert_eq!(stream.topics[0].config["retention.ms"], "604800000");
        assert!(stream.topics[1].config.is_empty());
        assert!(desired["rabbit"].topics.is_empty());
    }

    #[tokio::test]
    async fn topic_plan_create_update_conflict() {
        let broker = EmbeddedBroker::new();
        let mut topology = desired(&reference_system()).remove("stream").unwrap();
        let actions = |steps: Vec<Step>| -> Vec<Action> {
            steps.into_iter().map(|step| step.action).collect()
        };

        let steps = plan(&broker, &topology).await.unwrap();
        assert_eq!(actions(steps), [Action::Create, Action::Create]);
        provision(&broker, &topology).await.unwrap();
        let steps = plan(&broker, &topology).await.unwrap();
        assert_eq!(actions(steps), [Action::Unchanged, Action::Unchanged]);

        topology.topics[0].partitions = 5;
        topology.topics[0]
            .config
            .insert("retention.ms".into(), "1000".into());
        let steps = plan(&broker, &topology).await.unwrap();
        assert_eq!(
            steps[0].action,
            Action::Update("partitions: 3 -> 5, retention.ms: 604800000 -> 1000".into())
        );

        topology.topics[0].partitions = 2;
        let steps = plan(&broker, &topology).await.unwrap();
        let Action::Conflict(text) = &steps[0].action else {
            panic!("expected a conflict, got {:?}", steps[0].action);
        };
        assert!(text.contains("has 3 partitions"), "{text}");
        assert!(text.contains("raise `partitions` to 3"), "{text}");
    }

    #[tokio::test]
    async fn provision_adds_partitions() {
        let broker = EmbeddedBroker::new();
        let mut topology = desired(&reference_system()).remove("stream").unwrap();
        provision(&broker, &topology).await.unwrap();
        topology.topics[0].partitions = 6;
        provision(&broker, &topology).await.unwrap();
        let state = broker.describe_topic(&topology.topics[0]).await.unwrap();
        assert_eq!(state.map(|s| s.partitions), Some(6));
    }
}
