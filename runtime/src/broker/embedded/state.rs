//! The embedded broker's entities and every state change: declarations,
//! routing, queueing, dispatch to consumers, settlement, dead-lettering and
//! expiry. All of it runs under the broker's one lock and never awaits.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::sync::{Arc, Weak};

use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tracing::{debug, warn};

use super::EmbeddedAcker;
use super::Inner;
use super::equivalence::{check_exchange_equivalent, check_queue_equivalent};
use super::routing::{Exchange, split_words};
use crate::broker::{BrokerError, Delivery, HeaderValue, Headers, Message};
use crate::topology::{BindingSpec, ExchangeKind, ExchangeSpec, QueueSpec};

/// Exchanges every RabbitMQ virtual host starts with.
const PREDECLARED_EXCHANGES: &[(&str, ExchangeKind)] = &[
    ("amq.direct", ExchangeKind::Direct),
    ("amq.fanout", ExchangeKind::Fanout),
    ("amq.topic", ExchangeKind::Topic),
    ("amq.headers", ExchangeKind::Headers),
    ("amq.match", ExchangeKind::Headers),
];

/// Index of a queue in `State::queues`. Queues are never deleted, so an index
/// stays valid for the broker's lifetime.
pub(super) type QueueIndex = usize;

pub(super) struct State {
    exchanges: HashMap<String, Exchange>,
    queues: Vec<Queue>,
    queue_indexes: HashMap<String, QueueIndex>,
    /// Expiry times of queued messages, earliest first. An entry outlives its
    /// message when the message is delivered first; `expire_due` skips it.
    expiry: BinaryHeap<Reverse<(Instant, QueueIndex, u64)>>,
    /// Wakes the expiry task when an earlier expiry time is queued.
    pub(super) expiry_wakeup: Arc<Notify>,
    pub(super) expiry_task: Option<tokio::task::JoinHandle<()>>,
    /// Whether a publish outside a Tokio runtime was logged already.
    pub(super) logged_missing_runtime: bool,
    /// Queues that may have deliverable messages, dispatched by `settle`.
    dirty: Vec<QueueIndex>,
    next_consumer_id: u64,
    /// Handed to ackers, which must not keep the broker alive.
    broker: Weak<Inner>,
}

struct Queue {
    spec: QueueSpec,
    /// Ready messages in ascending `id` order.
    ready: VecDeque<QueuedMessage>,
    consumers: Vec<Consumer>,
    /// Position in `consumers` where the round-robin search for a consumer
    /// with free prefetch starts.
    next_consumer: usize,
    next_message_id: u64,
    is_dirty: bool,
}

struct Consumer {
    id: u64,
    tag: String,
    /// Maximum number of unacknowledged deliveries, or 0 for no limit.
    prefetch: u16,
    /// Unacknowledged deliveries by message id, including those still in the
    /// channel to the consumer's stream.
    unacked: BTreeMap<u64, QueuedMessage>,
    sender: mpsc::UnboundedSender<Delivery>,
}

impl Consumer {
    fn has_free_prefetch(&self) -> bool {
        self.prefetch == 0 || self.unacked.len() < usize::from(self.prefetch)
    }
}

/// A message in one queue, with its delivery state there.
struct QueuedMessage {
    /// Position in the queue's arrival order, also the delivery tag.
    id: u64,
    exchange: String,
    message: Message,
    redelivered: bool,
    expires_at: Option<Instant>,
    deaths: Vec<Death>,
}

impl QueuedMessage {
    /// Reports whether the message expired before `now`. A message with a
    /// time to live of 0 is not expired yet at the instant it was queued, so
    /// it can still go to a consumer with free prefetch, as in RabbitMQ.
    fn is_expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|expires_at| expires_at < now)
    }
}

/// A message on its way from an exchange to its queues.
struct RoutedMessage {
    exchange: String,
    message: Message,
    deaths: Vec<Death>,
}

/// One dead-lettering of a message, kept to detect dead-letter cycles.
#[derive(Clone, Copy)]
struct Death {
    queue: QueueIndex,
    reason: DeathReason,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DeathReason {
    Rejected,
    Expired,
}

impl DeathReason {
    /// Returns the reason as RabbitMQ writes it in `x-first-death-reason`.
    fn as_str(self) -> &'static str {
        match self {
            DeathReason::Rejected => "rejected",
            DeathReason::Expired => "expired",
        }
    }
}

/// The outcome a consumer gives one delivery.
#[derive(Clone, Copy, Debug)]
pub(super) enum Settlement {
    Ack,
    Requeue,
    DeadLetter,
}

impl State {
    pub(super) fn new(broker: Weak<Inner>) -> Self {
        let mut state = State {
            exchanges: HashMap::new(),
            queues: Vec::new(),
            queue_indexes: HashMap::new(),
            expiry: BinaryHeap::new(),
            expiry_wakeup: Arc::new(Notify::new()),
            expiry_task: None,
            logged_missing_runtime: false,
            dirty: Vec::new(),
            next_consumer_id: 0,
            broker,
        };
        for &(name, kind) in PREDECLARED_EXCHANGES {
            let spec = ExchangeSpec {
                name: name.to_owned(),
                kind,
                durable: true,
                alternate_exchange: None,
            };
            state.exchanges.insert(name.to_owned(), Exchange::new(spec));
        }
        state
    }

    pub(super) fn declare_exchange(&mut self, spec: &ExchangeSpec) -> Result<(), BrokerError> {
        if spec.name.is_empty() {
            return Err(BrokerError::Protocol(
                "cannot declare the default exchange ``: it always exists".to_owned(),
            ));
        }
        if let Some(existing) = self.exchanges.get(&spec.name) {
            return check_exchange_equivalent(&existing.spec, spec);
        }
        if spec.name.starts_with("amq.") {
            return Err(reserved_name("exchange", &spec.name));
        }
        self.exchanges
            .insert(spec.name.clone(), Exchange::new(spec.clone()));
        debug!(exchange = %spec.name, kind = spec.kind.as_str(), "declared exchange");
        Ok(())
    }

    pub(super) fn declare_queue(&mut self, spec: &QueueSpec) -> Result<(), BrokerError> {
        if spec.name.is_empty() {
            return Err(BrokerError::Protocol(
                "queue name is empty: the embedded broker does not generate queue names".to_owned(),
            ));
        }
        if let Some(&index) = self.queue_indexes.get(&spec.name) {
            return check_queue_equivalent(&self.queues[index].spec, spec);
        }
        if spec.name.starts_with("amq.") {
            return Err(reserved_name("queue", &spec.name));
        }
        self.queue_indexes
            .insert(spec.name.clone(), self.queues.len());
        self.queues.push(Queue {
            spec: spec.clone(),
            ready: VecDeque::new(),
            consumers: Vec::new(),
            next_consumer: 0,
            next_message_id: 0,
            is_dirty: false,
        });
        debug!(queue = %spec.name, "declared queue");
        Ok(())
    }

    /// Binds a queue. Binding again with the same key and arguments changes
    /// nothing.
    pub(super) fn bind_queue(
        &mut self,
        spec: &BindingSpec,
        arguments: Headers,
    ) -> Result<(), BrokerError> {
        if spec.exchange.is_empty() {
            return Err(BrokerError::Protocol(format!(
                "cannot bind queue `{}` to the default exchange ``: it routes to every \
                 queue by name already",
                spec.queue
            )));
        }
        let queue = self.queue_index(&spec.queue)?;
        let exchange = self
            .exchanges
            .get_mut(&spec.exchange)
            .ok_or_else(|| not_found("exchange", &spec.exchange))?;
        exchange
            .bind(queue, &spec.routing_key, arguments)
            .map_err(|reason| {
                BrokerError::Protocol(format!(
                    "cannot bind queue `{}` to headers exchange `{}`: {reason}",
                    spec.queue, spec.exchange
                ))
            })?;
        debug!(
            exchange = %spec.exchange,
            queue = %spec.queue,
            routing_key = %spec.routing_key,
            "bound queue"
        );
        Ok(())
    }

    /// Routes a message and queues it. A message that reaches no queue is
    /// dropped, as RabbitMQ drops it without the `mandatory` flag.
    pub(super) fn publish(&mut self, exchange: &str, message: Message) -> Result<(), BrokerError> {
        let targets = self.route(exchange, &message)?;
        if targets.is_empty() {
            debug!(
                exchange,
                routing_key = %message.routing_key,
                "dropped a message that no binding routes"
            );
            return Ok(());
        }
        let routed = RoutedMessage {
            exchange: exchange.to_owned(),
            message,
            deaths: Vec::new(),
        };
        let now = Instant::now();
        self.enqueue_all(&targets, routed, now);
        self.settle(now);
        Ok(())
    }

    pub(super) fn consume(
        &mut self,
        queue: &str,
        consumer_tag: &str,
        prefetch: u16,
        sender: mpsc::UnboundedSender<Delivery>,
    ) -> Result<(QueueIndex, u64), BrokerError> {
        let index = self.queue_index(queue)?;
        let id = self.next_consumer_id;
        self.next_consumer_id += 1;
        let tag = if consumer_tag.is_empty() {
            format!("amq.ctag-embedded-{id}")
        } else {
            consumer_tag.to_owned()
        };
        debug!(queue, consumer_tag = %tag, prefetch, "started consumer");
        self.queues[index].consumers.push(Consumer {
            id,
            tag,
            prefetch,
            unacked: BTreeMap::new(),
            sender,
        });
        self.mark_dirty(index);
        self.settle(Instant::now());
        Ok((index, id))
    }

    /// Removes a consumer and returns its unacknowledged deliveries to the
    /// queue, marked redelivered.
    pub(super) fn cancel_consumer(&mut self, queue: QueueIndex, consumer: u64) {
        let queue_state = &mut self.queues[queue];
        let Some(position) = queue_state.consumers.iter().position(|c| c.id == consumer) else {
            return;
        };
        let removed = queue_state.consumers.remove(position);
        if position < queue_state.next_consumer {
            queue_state.next_consumer -= 1;
        }
        debug!(
            queue = %queue_state.spec.name,
            consumer_tag = %removed.tag,
            requeued = removed.unacked.len(),
            "cancelled consumer"
        );
        let unacked = removed.unacked.into_values().collect();
        let now = Instant::now();
        self.requeue(queue, unacked, now);
        self.settle(now);
    }

    pub(super) fn settle_delivery(
        &mut self,
        queue: QueueIndex,
        consumer: u64,
        message_id: u64,
        settlement: Settlement,
    ) -> Result<(), BrokerError> {
        let queue_state = &mut self.queues[queue];
        let Some(consumer_state) = queue_state.consumers.iter_mut().find(|c| c.id == consumer)
        else {
            return Err(BrokerError::Closed(format!(
                "the consumer of this delivery on queue `{}` was cancelled and its \
                 unacknowledged deliveries were requeued",
                queue_state.spec.name
            )));
        };
        let message = consumer_state.unacked.remove(&message_id).ok_or_else(|| {
            BrokerError::Protocol(format!(
                "delivery {message_id} on queue `{}` was already acknowledged or rejected",
                queue_state.spec.name
            ))
        })?;
        let now = Instant::now();
        match settlement {
            Settlement::Ack => {}
            Settlement::Requeue => self.requeue(queue, vec![message], now),
            Settlement::DeadLetter => {
                self.dead_letter(queue, message, DeathReason::Rejected, now);
            }
        }
        self.mark_dirty(queue);
        self.settle(now);
        Ok(())
    }

    pub(super) fn has_exchange(&self, name: &str) -> bool {
        name.is_empty() || self.exchanges.contains_key(name)
    }

    pub(super) fn has_queue(&self, name: &str) -> bool {
        self.queue_indexes.contains_key(name)
    }

    pub(super) fn queue_depth(&self, queue: &str) -> Result<u32, BrokerError> {
        let index = self.queue_index(queue)?;
        let depth = self.queues[index].ready.len();
        Ok(u32::try_from(depth).unwrap_or(u32::MAX))
    }

    /// Dead-letters every ready message whose time to live ran out before
    /// `now`, and returns the next expiry time.
    pub(super) fn expire_due(&mut self, now: Instant) -> Option<Instant> {
        while let Some(&Reverse((expires_at, queue, id))) = self.expiry.peek() {
            if expires_at >= now {
                break;
            }
            self.expiry.pop();
            let ready = &mut self.queues[queue].ready;
            let Ok(position) = ready.binary_search_by_key(&id, |message| message.id) else {
                continue;
            };
            if ready[position].is_expired(now)
                && let Some(message) = ready.remove(position)
            {
                self.dead_letter(queue, message, DeathReason::Expired, now);
            }
        }
        self.settle(now);
        self.expiry
            .peek()
            .map(|Reverse((expires_at, _, _))| *expires_at)
    }

    fn queue_index(&self, name: &str) -> Result<QueueIndex, BrokerError> {
        self.queue_indexes
            .get(name)
            .copied()
            .ok_or_else(|| not_found("queue", name))
    }

    /// Returns the queues a message published to `exchange` reaches, each
    /// once, following alternate exchanges while nothing matches.
    fn route(&self, exchange: &str, message: &Message) -> Result<Vec<QueueIndex>, BrokerError> {
        if exchange.is_empty() {
            return Ok(self
                .queue_indexes
                .get(&message.routing_key)
                .copied()
                .into_iter()
                .collect());
        }
        let mut current = self
            .exchanges
            .get(exchange)
            .ok_or_else(|| not_found("exchange", exchange))?;
        let key_words = split_words(&message.routing_key);
        let mut visited = vec![exchange];
        let mut targets = Vec::new();
        loop {
            current.collect_matches(message, &key_words, &mut targets);
            if !targets.is_empty() {
                break;
            }
            let Some(alternate) = current.spec.alternate_exchange.as_deref() else {
                break;
            };
            if visited.contains(&alternate) {
                break;
            }
            visited.push(alternate);
            match self.exchanges.get(alternate) {
                Some(next) => current = next,
                None => {
                    warn!(
                        exchange = %current.spec.name,
                        alternate_exchange = alternate,
                        "alternate exchange not found; the message is dropped"
                    );
                    break;
                }
            }
        }
        targets.sort_unstable();
        targets.dedup();
        Ok(targets)
    }

    fn enqueue_all(&mut self, targets: &[QueueIndex], routed: RoutedMessage, now: Instant) {
        let Some((&last, others)) = targets.split_last() else {
            return;
        };
        for &queue in others {
            let copy = RoutedMessage {
                exchange: routed.exchange.clone(),
                message: routed.message.clone(),
                deaths: routed.deaths.clone(),
            };
            self.enqueue(queue, copy, now);
        }
        self.enqueue(last, routed, now);
    }

    fn enqueue(&mut self, queue: QueueIndex, routed: RoutedMessage, now: Instant) {
        let queue_state = &mut self.queues[queue];
        let id = queue_state.next_message_id;
        queue_state.next_message_id += 1;
        // With both a per-message and a per-queue time to live, the shorter one
        // applies, as in RabbitMQ.
        let ttl = match (routed.message.expiration, queue_state.spec.message_ttl) {
            (Some(message_ttl), Some(queue_ttl)) => Some(message_ttl.min(queue_ttl)),
            (message_ttl, queue_ttl) => message_ttl.or(queue_ttl),
        };
        let expires_at = ttl.map(|ttl| now + ttl);
        queue_state.ready.push_back(QueuedMessage {
            id,
            exchange: routed.exchange,
            message: routed.message,
            redelivered: false,
            expires_at,
            deaths: routed.deaths,
        });
        if let Some(expires_at) = expires_at {
            let is_earliest = self
                .expiry
                .peek()
                .is_none_or(|Reverse((earliest, _, _))| expires_at < *earliest);
            self.expiry.push(Reverse((expires_at, queue, id)));
            if is_earliest {
                self.expiry_wakeup.notify_one();
            }
        }
        self.mark_dirty(queue);
    }

    /// Puts messages, sorted by id, back at their original positions, which
    /// is the head of the queue unless other consumers hold older messages, as
    /// RabbitMQ does. Messages that expired meanwhile are dead-lettered.
    fn requeue(&mut self, queue: QueueIndex, messages: Vec<QueuedMessage>, now: Instant) {
        let mut returned = Vec::with_capacity(messages.len());
        for mut message in messages {
            if message.is_expired(now) {
                self.dead_letter(queue, message, DeathReason::Expired, now);
            } else {
                message.redelivered = true;
                returned.push(message);
            }
        }
        self.queues[queue].return_to_ready(returned);
        self.mark_dirty(queue);
    }

    /// Publishes a rejected or expired message to its queue's dead-letter
    /// exchange, or drops it when the queue has none.
    fn dead_letter(
        &mut self,
        queue: QueueIndex,
        queued: QueuedMessage,
        reason: DeathReason,
        now: Instant,
    ) {
        let spec = &self.queues[queue].spec;
        let Some(dead_letter_exchange) = spec.dead_letter_exchange.clone() else {
            debug!(
                queue = %spec.name,
                reason = reason.as_str(),
                "dropped a message from a queue without dead-letter exchange"
            );
            return;
        };
        let mut message = queued.message;
        if let Some(routing_key) = &spec.dead_letter_routing_key {
            message.routing_key = routing_key.clone();
        }
        // RabbitMQ removes the expiration so that the dead letter does not
        // expire again in the queue it is routed to.
        message.expiration = None;
        let first_death = [
            ("x-first-death-reason", reason.as_str()),
            ("x-first-death-queue", spec.name.as_str()),
            ("x-first-death-exchange", queued.exchange.as_str()),
        ];
        for (name, value) in first_death {
            message
                .headers
                .entry(name.to_owned())
                .or_insert_with(|| HeaderValue::from(value));
        }
        let last_death = [
            ("x-last-death-reason", reason.as_str()),
            ("x-last-death-queue", spec.name.as_str()),
            ("x-last-death-exchange", queued.exchange.as_str()),
        ];
        for (name, value) in last_death {
            message
                .headers
                .insert(name.to_owned(), HeaderValue::from(value));
        }
        let mut deaths = queued.deaths;
        deaths.push(Death { queue, reason });

        let targets = match self.route(&dead_letter_exchange, &message) {
            Ok(targets) => targets,
            Err(error) => {
                warn!(
                    queue = %spec.name,
                    dead_letter_exchange = %dead_letter_exchange,
                    %error,
                    "cannot dead-letter a message; it is dropped"
                );
                return;
            }
        };
        let targets: Vec<QueueIndex> = targets
            .into_iter()
            .filter(|&target| !self.is_dead_letter_cycle(&deaths, target))
            .collect();
        let routed = RoutedMessage {
            exchange: dead_letter_exchange,
            message,
            deaths,
        };
        self.enqueue_all(&targets, routed, now);
    }

    /// Reports whether dead-lettering into `target` would repeat a cycle of
    /// expiries with no rejection, which RabbitMQ breaks by dropping the
    /// message there instead of letting it circulate forever.
    fn is_dead_letter_cycle(&self, deaths: &[Death], target: QueueIndex) -> bool {
        let Some(last_visit) = deaths.iter().rposition(|death| death.queue == target) else {
            return false;
        };
        let is_cycle = deaths[last_visit..]
            .iter()
            .all(|death| death.reason != DeathReason::Rejected);
        if is_cycle {
            warn!(
                queue = %self.queues[target].spec.name,
                "dead-letter cycle without rejection; the message is dropped for this queue"
            );
        }
        is_cycle
    }

    fn mark_dirty(&mut self, queue: QueueIndex) {
        let queue_state = &mut self.queues[queue];
        if !queue_state.is_dirty {
            queue_state.is_dirty = true;
            self.dirty.push(queue);
        }
    }

    /// Dispatches every queue that changed, including queues that receive
    /// dead letters while another is dispatched.
    fn settle(&mut self, now: Instant) {
        while let Some(queue) = self.dirty.pop() {
            self.queues[queue].is_dirty = false;
            self.dispatch(queue, now);
        }
    }

    /// Delivers ready messages round-robin to consumers with free prefetch,
    /// dead-lettering expired ones on the way, as RabbitMQ never delivers an
    /// expired message.
    fn dispatch(&mut self, queue: QueueIndex, now: Instant) {
        loop {
            let queue_state = &mut self.queues[queue];
            if queue_state.ready.is_empty() {
                return;
            }
            let Some(position) = queue_state.next_consumer_with_free_prefetch() else {
                return;
            };
            let Some(message) = queue_state.ready.pop_front() else {
                return;
            };
            if message.is_expired(now) {
                self.dead_letter(queue, message, DeathReason::Expired, now);
                continue;
            }
            queue_state.next_consumer = (position + 1) % queue_state.consumers.len();
            let consumer = &mut queue_state.consumers[position];
            let delivery = Delivery {
                exchange: message.exchange.clone(),
                message: message.message.clone(),
                redelivered: message.redelivered,
                acker: Box::new(EmbeddedAcker {
                    broker: self.broker.clone(),
                    queue,
                    consumer: consumer.id,
                    message: message.id,
                }),
            };
            // A failed send means that the stream is being dropped, so the
            // message stays unacknowledged until `cancel_consumer` requeues it.
            let _ = consumer.sender.send(delivery);
            consumer.unacked.insert(message.id, message);
        }
    }
}

impl Queue {
    /// Merges messages sorted by id into `ready`, keeping it sorted, in time
    /// linear in the number of messages moved.
    fn return_to_ready(&mut self, returned: Vec<QueuedMessage>) {
        let is_older_than_ready = match (returned.last(), self.ready.front()) {
            (Some(newest), Some(oldest_ready)) => newest.id < oldest_ready.id,
            _ => true,
        };
        if is_older_than_ready {
            for message in returned.into_iter().rev() {
                self.ready.push_front(message);
            }
            return;
        }
        if returned.len() == 1 {
            // One message goes in by binary search, shifting only the messages
            // between its position and the nearer end.
            for message in returned {
                let position = self.ready.partition_point(|queued| queued.id < message.id);
                self.ready.insert(position, message);
            }
            return;
        }
        let mut existing = std::mem::take(&mut self.ready).into_iter().peekable();
        let mut returned = returned.into_iter().peekable();
        while let (Some(ready), Some(back)) = (existing.peek(), returned.peek()) {
            let next = if ready.id < back.id {
                existing.next()
            } else {
                returned.next()
            };
            self.ready.extend(next);
        }
        self.ready.extend(existing);
        self.ready.extend(returned);
    }

    fn next_consumer_with_free_prefetch(&self) -> Option<usize> {
        let count = self.consumers.len();
        (0..count)
            .map(|offset| (self.next_consumer + offset) % count)
            .find(|&position| self.consumers[position].has_free_prefetch())
    }
}

fn not_found(kind: &'static str, name: &str) -> BrokerError {
    BrokerError::NotFound {
        kind,
        name: name.to_owned(),
    }
}

fn reserved_name(kind: &str, name: &str) -> BrokerError {
    BrokerError::Protocol(format!(
        "cannot declare {kind} `{name}`: the `amq.` prefix is reserved for the broker"
    ))
}
