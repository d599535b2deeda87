//! The in-process broker behind `switchyard up --embedded` and tests that need
//! no external service. It implements what switchyard uses of RabbitMQ 3.x:
//! direct, fanout, topic and headers exchanges, the default exchange,
//! alternate exchanges, FIFO queues with prefetch, competing consumers,
//! requeue, dead-lettering and message TTL. It keeps everything in memory and
//! has no connection to lose. It also has Kafka-like topics with consumer
//! groups, described in `log.rs`.
//!
//! Differences from RabbitMQ that a caller could notice:
//! - Every queue type (classic, quorum, stream) behaves as a classic queue.
//! - Expired messages are dead-lettered wherever they are in the queue, not
//!   only at its head.
//! - Dropping a consumer's `Deliveries` stream requeues its unacknowledged
//!   deliveries, as closing a RabbitMQ channel does.
//! - Dead letters carry the `x-first-death-*` and `x-last-death-*` headers
//!   (`reason`, `queue`, `exchange`) of RabbitMQ 3.13, but no `x-death` table.
//!
//! NOTE: `BindingSpec` has no binding arguments, so a headers-exchange binding
//! made through `Broker::bind_queue` matches every message, as an `x-match`
//! of `all` with no conditions does. `EmbeddedBroker::bind_queue_with_arguments`
//! takes the arguments.

mod equivalence;
mod log;
#[cfg(test)]
mod rabbitmq_comparison;
mod routing;

pub use routing::topic_matches;
mod state;
#[cfg(test)]
mod tests;

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll};

use async_trait::async_trait;
use futures::Stream;
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tracing::warn;

use self::state::{QueueIndex, Settlement, State};
use crate::broker::{
    Acker, Broker, BrokerError, Deliveries, Delivery, Headers, Message, SubscribeOptions,
    TopicReader,
};
use crate::topology::{BindingSpec, ExchangeSpec, QueueSpec, TopicSpec, TopicState};

/// An in-memory broker with RabbitMQ's routing and queueing semantics. Clones
/// share one broker.
#[derive(Clone)]
pub struct EmbeddedBroker {
    inner: Arc<Inner>,
}

/// The shared broker. All state sits behind one `std::sync::Mutex` that is
/// never held across an `.await`, so that ackers and streams can also settle
/// and requeue from `Drop`, where nothing can be awaited.
struct Inner {
    state: Mutex<State>,
    /// A copy of `State::expiry_wakeup`, reachable without the lock.
    expiry_wakeup: Arc<Notify>,
    topics: Arc<log::Topics>,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic under the lock is a bug in this module. The state it left is
        // still memory-safe, and failing every later call would hide the bug.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Lets the expiry task see that the broker is gone and stop.
        self.expiry_wakeup.notify_one();
    }
}

impl Default for EmbeddedBroker {
    fn default() -> Self {
        Self::new()
    }
}

impl EmbeddedBroker {
    /// Creates an empty broker with RabbitMQ's predeclared `amq.*` exchanges.
    /// The first publish starts its expiry task on the current Tokio runtime.
    pub fn new() -> Self {
        let inner = Arc::new_cyclic(|weak| {
            let state = State::new(weak.clone());
            let expiry_wakeup = state.expiry_wakeup.clone();
            Inner {
                state: Mutex::new(state),
                expiry_wakeup,
                topics: Arc::default(),
            }
        });
        EmbeddedBroker { inner }
    }

    /// Binds a queue with binding arguments, which headers exchanges match
    /// against message headers (`x-match` is `all`, `any`, `all-with-x` or
    /// `any-with-x`). `Broker::bind_queue` binds with no arguments.
    pub async fn bind_queue_with_arguments(
        &self,
        spec: &BindingSpec,
        arguments: Headers,
    ) -> Result<(), BrokerError> {
        self.inner.lock().bind_queue(spec, arguments)
    }

    /// Starts the expiry task unless it runs already. It runs on the runtime
    /// of the caller, so a broker moved to another runtime starts a new one
    /// when the old runtime shuts down.
    fn ensure_expiry_task(&self, state: &mut State) {
        let is_running = state
            .expiry_task
            .as_ref()
            .is_some_and(|task| !task.is_finished());
        if is_running {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                let broker = Arc::downgrade(&self.inner);
                let wakeup = self.inner.expiry_wakeup.clone();
                state.expiry_task = Some(runtime.spawn(run_expiry(broker, wakeup)));
            }
            Err(error) => {
                if !state.logged_missing_runtime {
                    state.logged_missing_runtime = true;
                    warn!(
                        %error,
                        "cannot start the embedded broker's expiry task outside a Tokio \
                         runtime, so messages with a time to live do not expire"
                    );
                }
            }
        }
    }
}

/// Dead-letters expired messages until the broker is dropped: it sleeps until
/// the earliest expiry time, or until a publish queues an earlier one.
async fn run_expiry(broker: Weak<Inner>, wakeup: Arc<Notify>) {
    loop {
        let next = {
            let Some(inner) = broker.upgrade() else {
                return;
            };
            inner.lock().expire_due(Instant::now())
        };
        match next {
            Some(deadline) => {
                tokio::select! {
                    () = tokio::time::sleep_until(deadline) => {}
                    () = wakeup.notified() => {}
                }
            }
            None => wakeup.notified().await,
        }
    }
}

#[async_trait]
impl Broker for EmbeddedBroker {
    async fn declare_exchange(&self, spec: &ExchangeSpec) -> Result<(), BrokerError> {
        self.inner.lock().declare_exchange(spec)
    }

    async fn declare_queue(&self, spec: &QueueSpec) -> Result<(), BrokerError> {
        self.inner.lock().declare_queue(spec)
    }

    async fn bind_queue(&self, spec: &BindingSpec) -> Result<(), BrokerError> {
        self.inner.lock().bind_queue(spec, Headers::new())
    }

    /// Returns once the message is in every queue it routes to, which is the
    /// embedded broker's publisher confirm.
    async fn publish(&self, exchange: &str, message: Message) -> Result<(), BrokerError> {
        let mut state = self.inner.lock();
        self.ensure_expiry_task(&mut state);
        state.publish(exchange, message)
    }

    async fn consume(
        &self,
        queue: &str,
        consumer_tag: &str,
        prefetch: u16,
    ) -> Result<Deliveries, BrokerError> {
        let (sender, receiver) = mpsc::unbounded_channel();
        let (queue, consumer) = self
            .inner
            .lock()
            .consume(queue, consumer_tag, prefetch, sender)?;
        Ok(Box::pin(ConsumerStream {
            receiver,
            broker: self.inner.clone(),
            queue,
            consumer,
        }))
    }

    async fn queue_depth(&self, queue: &str) -> Result<u32, BrokerError> {
        self.inner.lock().queue_depth(queue)
    }

    async fn exchange_exists(&self, name: &str) -> Result<bool, BrokerError> {
        Ok(self.inner.lock().has_exchange(name))
    }

    async fn queue_exists(&self, name: &str) -> Result<bool, BrokerError> {
        Ok(self.inner.lock().has_queue(name))
    }

    async fn create_topic(&self, spec: &TopicSpec) -> Result<(), BrokerError> {
        self.inner.topics.create(spec)
    }

    async fn add_partitions(&self, spec: &TopicSpec) -> Result<(), BrokerError> {
        self.inner.topics.add_partitions(spec)
    }

    async fn describe_topic(&self, spec: &TopicSpec) -> Result<Option<TopicState>, BrokerError> {
        Ok(self.inner.topics.describe(spec))
    }

    async fn produce(&self, topic: &str, message: Message) -> Result<(), BrokerError> {
        self.inner.topics.append(topic, message)
    }

    async fn subscribe(
        &self,
        topic: &str,
        options: &SubscribeOptions,
    ) -> Result<Box<dyn TopicReader>, BrokerError> {
        self.inner.topics.subscribe(topic, options)
    }

    fn is_connected(&self) -> bool {
        true
    }
}

/// The deliveries of one consumer. The broker pushes at most `prefetch`
/// unacknowledged deliveries into its channel; dropping the stream cancels
/// the consumer and requeues them.
struct ConsumerStream {
    receiver: mpsc::UnboundedReceiver<Delivery>,
    broker: Arc<Inner>,
    queue: QueueIndex,
    consumer: u64,
}

impl Stream for ConsumerStream {
    type Item = Result<Delivery, BrokerError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.receiver.poll_recv(cx).map(|delivery| delivery.map(Ok))
    }
}

impl Drop for ConsumerStream {
    fn drop(&mut self) {
        // This runs before the receiver is dropped, so the broker stops sending
        // first. Deliveries left in the channel are requeued with the rest.
        self.broker
            .lock()
            .cancel_consumer(self.queue, self.consumer);
    }
}

/// Settles one delivery. It keeps a weak reference to the broker, so a
/// delivery kept after the broker and its consumer are gone fails to settle
/// instead of keeping the broker alive.
struct EmbeddedAcker {
    broker: Weak<Inner>,
    queue: QueueIndex,
    consumer: u64,
    message: u64,
}

impl EmbeddedAcker {
    fn settle(&self, settlement: Settlement) -> Result<(), BrokerError> {
        let broker = self.broker.upgrade().ok_or_else(|| {
            BrokerError::Closed("the embedded broker of this delivery was dropped".to_owned())
        })?;
        broker
            .lock()
            .settle_delivery(self.queue, self.consumer, self.message, settlement)
    }
}

#[async_trait]
impl Acker for EmbeddedAcker {
    async fn ack(self: Box<Self>) -> Result<(), BrokerError> {
        self.settle(Settlement::Ack)
    }

    async fn reject(self: Box<Self>, requeue: bool) -> Result<(), BrokerError> {
        let settlement = if requeue {
            Settlement::Requeue
        } else {
            Settlement::DeadLetter
        };
        self.settle(settlement)
    }
}
