//! Handler instances kept between calls.
//!
//! A call in a fresh store and instance costs about three times as much as
//! one on an existing instance: 7.8 µs against 2.7 µs for a no-op handler
//! in the per-event benchmark (`bench/benches/per_event.rs`). So each
//! instance serves up to `calls_per_instance` calls of one consumer and
//! waits here between them. The instances belong
//! to one handler version. When a reload replaces it, they are dropped with
//! the last clone of the old [`LoadedHandler`](super::LoadedHandler), once
//! its calls in flight have finished.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use wasmtime::Store;

use super::CallState;
use super::bindings;

/// Maximum time an instance waits for its next call. Each idle instance
/// keeps slots of the pooling allocator. So the instances left over from a
/// burst of calls are dropped once their consumer has run this long with
/// fewer calls at once.
const IDLE_LIMIT: Duration = Duration::from_secs(60);

/// A store, its instance once the first call made it, and the calls it
/// served.
pub(super) struct Warm {
    pub store: Store<CallState>,
    pub instance: Option<bindings::Handler>,
    pub calls: u32,
    idle_since: Instant,
}

impl Warm {
    pub fn new(store: Store<CallState>) -> Self {
        Warm {
            store,
            instance: None,
            calls: 0,
            idle_since: Instant::now(),
        }
    }
}

/// Idle instances of one handler version, by consumer: consumers differ in
/// grants and limits, which are part of the store.
#[derive(Default)]
pub(super) struct WarmInstances {
    idle: Mutex<HashMap<Arc<str>, Vec<Warm>>>,
}

impl WarmInstances {
    /// Takes the consumer's most recently used idle instance, if any.
    pub fn take(&self, consumer: &str) -> Option<Warm> {
        lock(&self.idle).get_mut(consumer)?.pop()
    }

    /// Keeps an instance for the consumer's next call, and drops the
    /// consumer's instances that waited longer than [`IDLE_LIMIT`]. A
    /// consumer never has more idle instances than calls it ran at once
    /// (its `concurrency`).
    pub fn give_back(&self, consumer: &Arc<str>, mut warm: Warm) {
        warm.idle_since = Instant::now();
        let expired: Vec<Warm> = {
            let mut idle = lock(&self.idle);
            let waiting = idle.entry(consumer.clone()).or_default();
            // `take` pops from the end, so the front waited longest.
            let count = waiting
                .iter()
                .take_while(|old| old.idle_since.elapsed() > IDLE_LIMIT)
                .count();
            let expired = waiting.drain(..count).collect();
            waiting.push(warm);
            expired
        };
        // Dropping a store returns its slots, outside the lock.
        drop(expired);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}
