//! Runs one test case on a fresh embedded broker with the real handler
//! components, and records what happened.
//!
//! The input is validated and published as a producer would publish it.
//! Then every consumer takes one message at a time, in name order, until no
//! queue or topic has anything left. Each message goes through the same
//! decode, validate and handler call as in `switchyard up`, and the events a
//! handler emits are published and routed on. A failed call is recorded as
//! a retry and not tried again, so a case does not wait for a backoff.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures::{FutureExt, StreamExt};
use serde_json::Value;

use super::file::Outcome;
use crate::broker::embedded::EmbeddedBroker;
use crate::broker::{Broker, Deliveries, SubscribeOptions, TopicReader};
use crate::dispatch::{
    self, Consumer, Destination, Disposition, Input, MAX_EMIT_DEPTH, Publisher, Services,
};
use crate::event::Event;
use crate::handler::{HandlerHost, LoadedHandler};
use crate::manifest::Manifest;
use crate::schema::Schemas;
use crate::system;
use crate::telemetry::Readiness;
use crate::topology;

/// Handler calls after which a case counts as looping: emitted events
/// that keep causing more events.
const MAX_CALLS: usize = 1000;

/// The record of what happened to the input event of a case.
#[derive(Debug, Default)]
pub struct Observation {
    /// The schema error that rejected the input; nothing was published.
    pub schema_error: Option<String>,
    /// Queues and topics the input landed in, sorted.
    pub routed: Vec<Landing>,
    /// Handler calls in the order they ran.
    pub calls: Vec<Call>,
    /// The reason the case stopped before every queue was empty.
    pub unsettled: Option<String>,
}

/// A queue or topic that received the input.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Landing {
    pub kind: &'static str,
    pub name: String,
    /// Copies of the input in it: more than one when several bindings or
    /// routes deliver it.
    pub count: u32,
}

/// One handler call.
#[derive(Debug)]
pub struct Call {
    pub consumer: String,
    pub event_type: String,
    pub outcome: Outcome,
    pub reason: Option<String>,
    /// Events the handler emitted, in order; empty unless the outcome is ok.
    pub emitted: Vec<Event>,
    /// Whether the event was dead-lettered because its chain of emitted
    /// events grew too deep, which stops the case.
    pub looped: bool,
}

/// The manifests, schemas and compiled handlers shared by every case.
pub struct Harness {
    manifest: Manifest,
    schemas: Schemas,
    host: HandlerHost,
    handlers: HashMap<String, LoadedHandler>,
}

impl Harness {
    /// Compiles the handler of every consumer. A handler that is missing or
    /// not a component of the handler world is an error naming both.
    pub fn new(manifest: Manifest, schemas: Schemas) -> anyhow::Result<Self> {
        let host = HandlerHost::new()
            .map_err(|err| anyhow::anyhow!("{err}"))?
            .with_cache_dir(system::cache_dir(&manifest));
        let mut handlers = HashMap::new();
        for name in manifest.consumers.keys() {
            let path = manifest
                .handler_path(name)
                .with_context(|| format!("consumer `{name}` has no handler"))?;
            let loaded = host.load_file(&path).map_err(|reason| {
                anyhow::anyhow!(
                    "cannot load handler `{}` of consumer `{name}`: {reason}",
                    path.display()
                )
            })?;
            handlers.insert(name.clone(), loaded);
        }
        Ok(Harness {
            manifest,
            schemas,
            host,
            handlers,
        })
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Publishes one event on a new embedded broker and handles everything
    /// that follows from it.
    pub async fn run(&self, event_type: &str, data: Value) -> anyhow::Result<Observation> {
        let mut observation = Observation::default();
        if let Err(check) = self.schemas.validate(event_type, &data) {
            observation.schema_error = Some(check.to_string());
            return Ok(observation);
        }

        let embedded = Arc::new(EmbeddedBroker::new());
        let brokers: HashMap<String, Arc<dyn Broker>> = self
            .manifest
            .brokers
            .keys()
            .map(|name| (name.clone(), embedded.clone() as Arc<dyn Broker>))
            .collect();
        let desired = topology::desired(&self.manifest);
        for (name, wanted) in &desired {
            topology::provision(embedded.as_ref(), wanted)
                .await
                .map_err(|errors| {
                    let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
                    anyhow::anyhow!(
                        "cannot provision the topology of broker `{name}` on the embedded broker:\n{}",
                        text.join("\n")
                    )
                })?;
        }
        let routes = system::routes(&self.manifest);
        let publisher = Publisher::new(brokers.clone(), routes.clone());
        let services = Services {
            host: self.host.clone(),
            publisher: publisher.clone(),
            schemas: self.schemas.clone(),
            readiness: Readiness::default(),
        };

        let source = format!("/{}/test", self.manifest.name);
        let input = Event::new(event_type, &source, data);
        publisher
            .publish(&input)
            .await
            .with_context(|| format!("cannot publish the input event `{event_type}`"))?;

        // No consumer is attached yet, so every copy of the input is still
        // ready in its queue.
        for wanted in desired.values() {
            for queue in &wanted.queues {
                let count = embedded.queue_depth(&queue.name).await?;
                if count > 0 {
                    observation.routed.push(Landing {
                        kind: "queue",
                        name: queue.name.clone(),
                        count,
                    });
                }
            }
        }
        for route in routes.get(event_type).into_iter().flatten() {
            if let Destination::Topic { topic, .. } = &route.destination {
                observation.routed.push(Landing {
                    kind: "topic",
                    name: topic.clone(),
                    count: 1,
                });
            }
        }
        observation.routed.sort();

        let consumers = system::consumers(&self.manifest, &brokers, &self.schemas)?;
        let mut readers = Vec::with_capacity(consumers.len());
        for consumer in consumers {
            readers.push(Reader::attach(consumer, embedded.as_ref()).await?);
        }
        // Instances kept from earlier cases would let a handler's globals
        // make the result depend on the order of the cases.
        let handlers: HashMap<String, LoadedHandler> = self
            .handlers
            .iter()
            .map(|(name, handler)| (name.clone(), handler.without_instances()))
            .collect();
        self.drain(&handlers, &mut readers, &services, &mut observation)
            .await?;
        Ok(observation)
    }

    /// Lets each consumer take one message in turn until none is left.
    async fn drain(
        &self,
        handlers: &HashMap<String, LoadedHandler>,
        readers: &mut [Reader],
        services: &Services,
        observation: &mut Observation,
    ) -> anyhow::Result<()> {
        loop {
            let mut progressed = false;
            for reader in readers.iter_mut() {
                let Some(call) = reader.handle_next(handlers, services).await? else {
                    continue;
                };
                progressed = true;
                let looped = call.looped;
                observation.calls.push(call);
                if looped {
                    observation.unsettled = Some(format!(
                        "stopped: emitted events loop, and the event {MAX_EMIT_DEPTH} handler \
                         calls deep was dead-lettered"
                    ));
                    return Ok(());
                }
                if observation.calls.len() >= MAX_CALLS {
                    observation.unsettled = Some(format!(
                        "stopped after {MAX_CALLS} handler calls: emitted events keep causing \
                         more events"
                    ));
                    return Ok(());
                }
            }
            if !progressed {
                return Ok(());
            }
        }
    }
}

/// A consumer attached to the embedded broker.
struct Reader {
    consumer: Consumer,
    source: Source,
}

enum Source {
    Queue(Deliveries),
    Topic(Box<dyn TopicReader>),
}

impl Reader {
    async fn attach(consumer: Consumer, broker: &EmbeddedBroker) -> anyhow::Result<Self> {
        let source = match &consumer.input {
            Input::Queue(input) => {
                let tag = format!("switchyard-test-{}", consumer.name);
                Source::Queue(broker.consume(&input.queue, &tag, 1).await?)
            }
            Input::Topic(input) => {
                let options = SubscribeOptions {
                    group: input.group.clone(),
                    client_id: format!("switchyard-test-{}", consumer.name),
                    max_poll_interval: Duration::from_secs(300),
                };
                Source::Topic(broker.subscribe(&input.topic, &options).await?)
            }
        };
        Ok(Reader { consumer, source })
    }

    /// Handles the next message waiting for this consumer, if there is one.
    /// The embedded broker hands over a waiting message without yielding,
    /// so a pending read means there is none. The reads are unconstrained:
    /// once this task has used up tokio's cooperative budget, a constrained
    /// read would return pending even with a message waiting, which ended
    /// a case early when handler calls returned without yielding.
    async fn handle_next(
        &mut self,
        handlers: &HashMap<String, LoadedHandler>,
        services: &Services,
    ) -> anyhow::Result<Option<Call>> {
        let handler = &handlers[self.consumer.name.as_ref()];
        match &mut self.source {
            Source::Queue(deliveries) => {
                let next = tokio::task::unconstrained(deliveries.next());
                let Some(delivery) = next.now_or_never().flatten() else {
                    return Ok(None);
                };
                let delivery = delivery?;
                let call = handle(&self.consumer, services, handler, &delivery.message).await;
                delivery.ack().await?;
                Ok(Some(call))
            }
            Source::Topic(reader) => {
                let Some(record) = tokio::task::unconstrained(reader.next()).now_or_never() else {
                    return Ok(None);
                };
                let record = record?;
                let call = handle(&self.consumer, services, handler, &record.message).await;
                reader.commit(&record)?;
                Ok(Some(call))
            }
        }
    }
}

/// Runs the production decision on one message and publishes what the
/// handler emitted.
async fn handle(
    consumer: &Consumer,
    services: &Services,
    handler: &LoadedHandler,
    message: &crate::broker::Message,
) -> Call {
    let event_type = crate::event::decode(message)
        .map(|event| event.event_type)
        .unwrap_or_else(|_| "(undecodable)".to_owned());
    let verdict = dispatch::evaluate(consumer, services, handler, message, 0).await;
    let mut call = Call {
        consumer: consumer.name.to_string(),
        event_type,
        outcome: Outcome::Ok,
        reason: None,
        emitted: Vec::new(),
        looped: false,
    };
    match verdict.disposition {
        Disposition::Ack => {
            for follow_up in &verdict.follow_ups {
                if let Err(err) = services.publisher.publish(follow_up).await {
                    // `switchyard up` retries the input when its output
                    // cannot be published.
                    call.outcome = Outcome::Retry;
                    call.reason = Some(format!(
                        "publishing emitted event `{}` failed: {err}",
                        follow_up.event_type
                    ));
                    return call;
                }
            }
            call.emitted = verdict.follow_ups;
        }
        Disposition::Retry { .. } => {
            call.outcome = Outcome::Retry;
            call.reason = verdict.failure;
        }
        Disposition::DeadLetter { reason, label, .. } => {
            call.outcome = if label == "rejected" {
                Outcome::Reject
            } else {
                Outcome::DeadLetter
            };
            call.looped = label == "emit_depth";
            call.reason = Some(reason);
        }
    }
    call
}
