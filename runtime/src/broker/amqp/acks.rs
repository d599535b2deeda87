//! Coalesced acknowledgements of one consumer channel.
//!
//! Every `basic.ack` is a frame for the broker to process and a round trip
//! through lapin's I/O loop, and on a small machine the broker and the
//! consumer share the cores. So acks wait here and go out as one frame with
//! `multiple` set, covering every settled delivery up to the first one still
//! in progress. They go out when half the prefetch window waits, or
//! [`ACK_DELAY`] after the first of them was recorded, whichever comes
//! first. A delivery is only covered once it was acked or rejected, so no
//! message is acknowledged before its handler finished.
//!
//! Deliveries that finished behind a slower earlier one are acknowledged one
//! by one once half the prefetch window waits that way, so a slow handler
//! call cannot stall the consumer. A delivery dropped without being settled
//! must stay unacknowledged until the channel closes. A `multiple` ack would
//! cover it, so after one every ack of the channel is sent on its own.
//!
//! The frames go out on the channel itself rather than through lapin's
//! `Acker`, which passes each ack to an internal task that spawns another.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use lapin::Channel;
use lapin::options::{BasicAckOptions, BasicRejectOptions};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::warn;

use super::errors;
use crate::broker::BrokerError;

/// Maximum time an ack waits for others to share its frame.
pub(super) const ACK_DELAY: Duration = Duration::from_millis(20);

/// Acked deliveries that make a frame go out when the channel has no
/// prefetch limit.
const UNLIMITED_PREFETCH_BATCH: usize = 1024;

/// The delayed sends of one broker's consumers, so that closing the broker
/// sends the waiting acks before the connection closes.
#[derive(Clone, Default)]
pub(super) struct DelayedAcks {
    tasks: TaskTracker,
    /// Cancelled when the broker closes: waiting acks go out at once.
    closing: CancellationToken,
}

impl DelayedAcks {
    /// Sends every waiting ack now and waits until they are sent.
    pub(super) async fn send_now(&self) {
        self.closing.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

/// Deliveries of one channel that no ack frame has covered yet.
pub(super) struct AckBatch {
    /// Also keeps the channel open until the last waiting ack is sent.
    channel: Channel,
    delayed: DelayedAcks,
    state: Mutex<State>,
}

impl AckBatch {
    /// `prefetch` is the channel's prefetch count; 0 means unlimited.
    pub(super) fn new(channel: Channel, prefetch: u16, delayed: DelayedAcks) -> Arc<AckBatch> {
        let batch = match prefetch {
            0 => UNLIMITED_PREFETCH_BATCH,
            n => usize::from(n / 2).max(1),
        };
        Arc::new(AckBatch {
            channel,
            delayed,
            state: Mutex::new(State::new(batch)),
        })
    }

    /// Records a new delivery; tags must arrive in increasing order, as a
    /// channel delivers them.
    pub(super) fn delivered(&self, tag: u64) {
        self.lock().pending.insert(tag, Slot::Unsettled);
    }

    /// Acknowledges a delivery. The frame covering it goes out within
    /// [`ACK_DELAY`], or before this call returns when this ack fills a
    /// batch.
    ///
    /// Fails when the channel is closed already: the broker then redelivers
    /// the message.
    pub(super) async fn ack(self: &Arc<Self>, tag: u64) -> Result<(), BrokerError> {
        if !self.channel.status().connected() {
            self.abandon(tag);
            return Err(channel_closed());
        }
        let (claimed, delay) = {
            let mut state = self.lock();
            state.settle(tag, Slot::Acked);
            if state.is_full() {
                (state.start_flush(), false)
            } else {
                (false, !std::mem::replace(&mut state.delay_running, true))
            }
        };
        if delay {
            self.start_delay();
        }
        if claimed { self.flush().await } else { Ok(()) }
    }

    /// Rejects a delivery at once, then sends the acks it held back.
    pub(super) async fn reject(
        self: &Arc<Self>,
        tag: u64,
        requeue: bool,
    ) -> Result<(), BrokerError> {
        // The reject goes out before the delivery counts as settled, so no
        // `multiple` ack can reach the broker ahead of it and cover it.
        let rejected = self
            .channel
            .basic_reject(tag, BasicRejectOptions { requeue })
            .await
            .map_err(|error| self.frame_error(&error));
        let claimed = {
            let mut state = self.lock();
            state.settle(tag, Slot::Rejected);
            state.start_flush()
        };
        if !claimed {
            return rejected;
        }
        let flushed = self.flush().await;
        rejected.and(flushed)
    }

    /// Leaves a delivery unacknowledged for good: the broker redelivers it
    /// when the channel closes.
    ///
    /// NOTE: acks held back behind this delivery go out with the next ack or
    /// reject of the channel. When none comes, the broker redelivers them too
    /// when the channel closes.
    pub(super) fn abandon(&self, tag: u64) {
        self.lock().abandon(tag);
    }

    /// Starts a task that sends the waiting acks after [`ACK_DELAY`], or at
    /// once when the broker closes.
    fn start_delay(self: &Arc<Self>) {
        let batch = Arc::clone(self);
        self.delayed.tasks.spawn(async move {
            tokio::select! {
                () = tokio::time::sleep(ACK_DELAY) => {}
                () = batch.delayed.closing.cancelled() => {}
            }
            let claimed = {
                let mut state = batch.lock();
                state.delay_running = false;
                state.start_flush()
            };
            if claimed && let Err(error) = batch.flush().await {
                warn!(channel = batch.channel.id(), %error,
                    "cannot send waiting acknowledgements; the broker redelivers those messages");
            }
        });
    }

    /// Sends frames until nothing is left to send. Only one call at a time
    /// runs this, marked by `State::flushing`.
    async fn flush(self: &Arc<Self>) -> Result<(), BrokerError> {
        let guard = FlushGuard(self);
        loop {
            let frames = {
                let mut state = self.lock();
                let frames = state.take_frames();
                if frames.is_empty() {
                    // Cleared under the same lock as the check, so a settle
                    // that finds `flushing` set has its ack sent by this loop.
                    state.flushing = false;
                    std::mem::forget(guard);
                    return Ok(());
                }
                frames
            };
            for frame in frames {
                let options = BasicAckOptions {
                    multiple: frame.multiple,
                };
                self.channel
                    .basic_ack(frame.tag, options)
                    .await
                    .map_err(|error| self.frame_error(&error))?;
            }
        }
    }

    fn frame_error(&self, error: &lapin::Error) -> BrokerError {
        if self.channel.status().connected() {
            errors::broker_error(error)
        } else {
            channel_closed()
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn channel_closed() -> BrokerError {
    BrokerError::Closed(
        "the delivery's channel closed before it was settled; the broker redelivers the message"
            .to_owned(),
    )
}

/// Clears `flushing` when a flush ends by an error or cancellation, so a
/// later settle starts the next flush.
struct FlushGuard<'a>(&'a AckBatch);

impl Drop for FlushGuard<'_> {
    fn drop(&mut self) {
        self.0.lock().flushing = false;
    }
}

/// The state of a delivery that no ack frame covered yet.
#[derive(Debug, PartialEq, Eq)]
enum Slot {
    Unsettled,
    Acked,
    /// Rejected with its own frame already, so a `multiple` ack may cover it.
    Rejected,
}

/// One `basic.ack` to send.
#[derive(Debug, PartialEq, Eq)]
struct Frame {
    tag: u64,
    multiple: bool,
}

/// The bookkeeping of an `AckBatch`, apart from the channel so that it can
/// be tested without a broker.
#[derive(Debug)]
struct State {
    /// By delivery tag.
    pending: BTreeMap<u64, Slot>,
    /// Acked slots in `pending`.
    held: usize,
    /// How many acked slots make a frame go out at once.
    batch: usize,
    /// Whether a call is sending frames; others leave their acks to it.
    flushing: bool,
    /// Whether a task will send the waiting acks after [`ACK_DELAY`].
    delay_running: bool,
    /// Set once a delivery was abandoned: from then on every ack is sent on
    /// its own.
    singles_only: bool,
}

impl State {
    fn new(batch: usize) -> Self {
        State {
            pending: BTreeMap::new(),
            held: 0,
            batch,
            flushing: false,
            delay_running: false,
            singles_only: false,
        }
    }

    fn settle(&mut self, tag: u64, slot: Slot) {
        if slot == Slot::Acked {
            self.held += 1;
        }
        self.pending.insert(tag, slot);
    }

    fn abandon(&mut self, tag: u64) {
        self.pending.remove(&tag);
        self.singles_only = true;
    }

    /// Whether the acks waiting now should go out without delay.
    fn is_full(&self) -> bool {
        self.held >= self.batch || self.singles_only
    }

    /// Claims the flush for the caller; false when another call has it.
    fn start_flush(&mut self) -> bool {
        !std::mem::replace(&mut self.flushing, true)
    }

    /// Removes what can be acknowledged now and returns the frames for it:
    /// one `multiple` ack for the settled deliveries before the first
    /// unsettled one, and single acks for the ones behind it once a batch
    /// of them wait.
    fn take_frames(&mut self) -> Vec<Frame> {
        let mut frames = Vec::new();
        let mut last_acked = None;
        while let Some(entry) = self.pending.first_entry() {
            if *entry.get() == Slot::Unsettled {
                break;
            }
            let (tag, slot) = entry.remove_entry();
            if slot == Slot::Acked {
                self.held -= 1;
                if self.singles_only {
                    frames.push(Frame {
                        tag,
                        multiple: false,
                    });
                } else {
                    last_acked = Some(tag);
                }
            }
        }
        if let Some(tag) = last_acked {
            frames.push(Frame {
                tag,
                multiple: true,
            });
        }
        if self.held > 0 && (self.singles_only || self.held >= self.batch) {
            frames.extend(self.take_held());
        }
        frames
    }

    /// Removes every acked slot behind an unsettled one, as single acks.
    fn take_held(&mut self) -> Vec<Frame> {
        let tags: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, slot)| **slot == Slot::Acked)
            .map(|(tag, _)| *tag)
            .collect();
        self.held = 0;
        for tag in &tags {
            self.pending.remove(tag);
        }
        tags.into_iter()
            .map(|tag| Frame {
                tag,
                multiple: false,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Returns a state with deliveries 1..=count.
    fn delivered(count: u64, batch: usize) -> State {
        let mut state = State::new(batch);
        for tag in 1..=count {
            state.pending.insert(tag, Slot::Unsettled);
        }
        state
    }

    fn ack(state: &mut State, tag: u64) {
        state.settle(tag, Slot::Acked);
    }

    fn single(tag: u64) -> Frame {
        Frame {
            tag,
            multiple: false,
        }
    }

    fn multiple(tag: u64) -> Frame {
        Frame {
            tag,
            multiple: true,
        }
    }

    #[test]
    fn settled_prefix_is_one_multiple_ack() {
        let mut state = delivered(5, 10);
        for tag in [1, 2, 3] {
            ack(&mut state, tag);
        }
        assert_eq!(state.take_frames(), vec![multiple(3)]);
        assert_eq!(state.take_frames(), vec![]);
        assert_eq!(state.pending.len(), 2);
    }

    #[test]
    fn ack_behind_unsettled_waits_for_it() {
        let mut state = delivered(4, 10);
        ack(&mut state, 2);
        ack(&mut state, 3);
        assert_eq!(state.take_frames(), vec![]);
        ack(&mut state, 1);
        assert_eq!(state.take_frames(), vec![multiple(3)]);
        assert_eq!(state.held, 0);
    }

    #[test]
    fn rejected_delivery_is_covered_but_never_the_target() {
        let mut state = delivered(3, 10);
        ack(&mut state, 1);
        state.settle(2, Slot::Rejected);
        assert_eq!(state.take_frames(), vec![multiple(1)]);
        ack(&mut state, 3);
        assert_eq!(state.take_frames(), vec![multiple(3)]);
    }

    #[test]
    fn prefix_of_only_rejected_sends_nothing() {
        let mut state = delivered(2, 10);
        state.settle(1, Slot::Rejected);
        assert_eq!(state.take_frames(), vec![]);
        assert!(matches!(state.pending.get(&2), Some(Slot::Unsettled)));
    }

    #[test]
    fn held_acks_go_out_singly_at_the_limit() {
        let mut state = delivered(5, 3);
        ack(&mut state, 2);
        ack(&mut state, 3);
        assert_eq!(state.take_frames(), vec![]);
        ack(&mut state, 5);
        assert_eq!(state.take_frames(), vec![single(2), single(3), single(5)]);
        ack(&mut state, 1);
        assert_eq!(state.take_frames(), vec![multiple(1)]);
        ack(&mut state, 4);
        assert_eq!(state.take_frames(), vec![multiple(4)]);
        assert!(state.pending.is_empty());
    }

    #[test]
    fn abandoned_delivery_switches_to_single_acks() {
        let mut state = delivered(4, 10);
        ack(&mut state, 1);
        ack(&mut state, 3);
        state.abandon(2);
        assert_eq!(state.take_frames(), vec![single(1), single(3)]);
        ack(&mut state, 4);
        assert_eq!(state.take_frames(), vec![single(4)]);
    }

    #[test]
    fn acks_wait_until_a_batch_is_full() {
        let mut state = delivered(4, 3);
        ack(&mut state, 1);
        ack(&mut state, 2);
        assert!(!state.is_full());
        state.settle(3, Slot::Rejected);
        assert!(!state.is_full(), "a reject is sent on its own");
        ack(&mut state, 4);
        assert!(state.is_full());
        assert_eq!(state.take_frames(), vec![multiple(4)]);
        assert!(!state.is_full());
    }

    #[test]
    fn abandoned_delivery_sends_acks_at_once() {
        let mut state = delivered(3, 10);
        state.abandon(1);
        assert!(state.is_full());
        ack(&mut state, 2);
        assert_eq!(state.take_frames(), vec![single(2)]);
    }

    #[test]
    fn flush_is_claimed_once() {
        let mut state = delivered(1, 10);
        assert!(state.start_flush());
        assert!(!state.start_flush());
        state.flushing = false;
        assert!(state.start_flush());
    }
}
