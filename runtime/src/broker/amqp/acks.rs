//! Coalesced acknowledgements of one consumer channel.
//!
//! Sending and awaiting one `basic.ack` per delivery limits a consumer to
//! one round trip through lapin's I/O loop per message. Here, deliveries that
//! finish while another ack is being sent wait for it to return, and then
//! one `basic.ack` with `multiple` set covers every finished delivery up to
//! the first one still in progress. A delivery is only ever covered once it
//! was acked or rejected, so no message is acknowledged before its handler
//! finished.
//!
//! Deliveries that finished behind a slower earlier one are acknowledged one
//! by one once half the prefetch window waits that way, so a slow handler
//! call cannot stall the consumer. A delivery dropped without being settled
//! must stay unacknowledged until the channel closes. A `multiple` ack would
//! cover it, so after one every ack of the channel is sent on its own.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use lapin::options::{BasicAckOptions, BasicRejectOptions};

use super::consumer::settled;
use crate::broker::BrokerError;

/// Deliveries of one channel that no ack frame has covered yet.
pub(super) struct AckBatch {
    state: Mutex<State<lapin::Acker>>,
}

impl AckBatch {
    /// `prefetch` is the channel's prefetch count; 0 means unlimited.
    pub(super) fn new(prefetch: u16) -> Arc<AckBatch> {
        let held_limit = match prefetch {
            0 => UNLIMITED_PREFETCH_HELD_LIMIT,
            n => usize::from(n / 2).max(1),
        };
        Arc::new(AckBatch {
            state: Mutex::new(State::new(held_limit)),
        })
    }

    /// Records a new delivery; tags must arrive in increasing order, as a
    /// channel delivers them.
    pub(super) fn delivered(&self, tag: u64) {
        self.lock().pending.insert(tag, Slot::Unsettled);
    }

    /// Acknowledges a delivery. Returns once an ack frame covering it was
    /// sent, or at once when another call is sending frames now: that call
    /// sends this ack before it returns.
    pub(super) async fn ack(
        self: &Arc<Self>,
        tag: u64,
        acker: lapin::Acker,
    ) -> Result<(), BrokerError> {
        if !self.settle(tag, Slot::Acked(acker)) {
            return Ok(());
        }
        self.flush().await
    }

    /// Rejects a delivery at once, then sends the acks it held back.
    pub(super) async fn reject(
        self: &Arc<Self>,
        tag: u64,
        acker: lapin::Acker,
        requeue: bool,
    ) -> Result<(), BrokerError> {
        // The reject goes out before the delivery counts as settled, so no
        // `multiple` ack can reach the broker ahead of it and cover it.
        let rejected = settled(acker.reject(BasicRejectOptions { requeue }).await);
        if !self.settle(tag, Slot::Rejected) {
            return rejected;
        }
        let flushed = self.flush().await;
        rejected.and(flushed)
    }

    /// Records how a delivery was settled and returns whether the caller
    /// claimed the flush; otherwise the call flushing now sends it.
    fn settle(&self, tag: u64, slot: Slot<lapin::Acker>) -> bool {
        let mut state = self.lock();
        state.settle(tag, slot);
        state.start_flush()
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
                settled(frame.acker.ack(options).await)?;
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<lapin::Acker>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Clears `flushing` when a flush ends by an error or cancellation, so a
/// later settle starts the next flush.
struct FlushGuard<'a>(&'a AckBatch);

impl Drop for FlushGuard<'_> {
    fn drop(&mut self) {
        self.0.lock().flushing = false;
    }
}

/// Completed deliveries held behind an unsettled one when the channel has
/// no prefetch limit.
const UNLIMITED_PREFETCH_HELD_LIMIT: usize = 1024;

/// The state of a delivery that no ack frame covered yet.
#[derive(Debug)]
enum Slot<A> {
    Unsettled,
    /// Acked by the caller; `A` sends the frame.
    Acked(A),
    /// Rejected with its own frame already, so a `multiple` ack may cover it.
    Rejected,
}

/// One `basic.ack` to send.
#[derive(Debug, PartialEq, Eq)]
struct Frame<A> {
    acker: A,
    multiple: bool,
}

/// The bookkeeping of an `AckBatch`, generic over the acker so that it can
/// be tested without a broker.
#[derive(Debug)]
struct State<A> {
    /// By delivery tag.
    pending: BTreeMap<u64, Slot<A>>,
    /// Acked slots in `pending` behind an unsettled one.
    held: usize,
    held_limit: usize,
    /// Whether a call is sending frames; others leave their acks to it.
    flushing: bool,
    /// Set once a delivery was abandoned: from then on every ack is sent on
    /// its own.
    singles_only: bool,
}

impl<A> State<A> {
    fn new(held_limit: usize) -> Self {
        State {
            pending: BTreeMap::new(),
            held: 0,
            held_limit,
            flushing: false,
            singles_only: false,
        }
    }

    fn settle(&mut self, tag: u64, slot: Slot<A>) {
        if matches!(slot, Slot::Acked(_)) {
            self.held += 1;
        }
        self.pending.insert(tag, slot);
    }

    fn abandon(&mut self, tag: u64) {
        self.pending.remove(&tag);
        self.singles_only = true;
    }

    /// Claims the flush for the caller; false when another call has it.
    fn start_flush(&mut self) -> bool {
        !std::mem::replace(&mut self.flushing, true)
    }

    /// Removes what can be acknowledged now and returns the frames for it:
    /// one `multiple` ack for the settled deliveries before the first
    /// unsettled one, and single acks for the ones behind it once
    /// `held_limit` of them wait.
    fn take_frames(&mut self) -> Vec<Frame<A>> {
        let mut frames = Vec::new();
        let mut last_acked = None;
        while let Some(entry) = self.pending.first_entry() {
            if matches!(entry.get(), Slot::Unsettled) {
                break;
            }
            if let Slot::Acked(acker) = entry.remove() {
                self.held -= 1;
                if self.singles_only {
                    frames.push(Frame {
                        acker,
                        multiple: false,
                    });
                } else {
                    last_acked = Some(acker);
                }
            }
        }
        if let Some(acker) = last_acked {
            frames.push(Frame {
                acker,
                multiple: true,
            });
        }
        if self.held > 0 && (self.singles_only || self.held >= self.held_limit) {
            frames.extend(self.take_held());
        }
        frames
    }

    /// Removes every acked slot behind an unsettled one, as single acks.
    fn take_held(&mut self) -> Vec<Frame<A>> {
        let tags: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, slot)| matches!(slot, Slot::Acked(_)))
            .map(|(tag, _)| *tag)
            .collect();
        self.held = 0;
        tags.into_iter()
            .filter_map(|tag| match self.pending.remove(&tag) {
                Some(Slot::Acked(acker)) => Some(Frame {
                    acker,
                    multiple: false,
                }),
                _ => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Returns a state with deliveries 1..=count, whose ackers are their tags.
    fn delivered(count: u64, held_limit: usize) -> State<u64> {
        let mut state = State::new(held_limit);
        for tag in 1..=count {
            state.pending.insert(tag, Slot::Unsettled);
        }
        state
    }

    fn ack(state: &mut State<u64>, tag: u64) {
        state.settle(tag, Slot::Acked(tag));
    }

    fn single(tag: u64) -> Frame<u64> {
        Frame {
            acker: tag,
            multiple: false,
        }
    }

    fn multiple(tag: u64) -> Frame<u64> {
        Frame {
            acker: tag,
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
    fn flush_is_claimed_once() {
        let mut state = delivered(1, 10);
        assert!(state.start_flush());
        assert!(!state.start_flush());
        state.flushing = false;
        assert!(state.start_flush());
    }
}
