//! Handler instances kept between calls.
//!
//! A fresh store and instance cost tens of microseconds, which is most of a
//! call to a handler that does little. A call on an existing instance costs
//! about one microsecond. So each instance serves up to `calls_per_instance`
//! calls of one consumer and waits here between them. The instances belong
//! to one handler version. When a reload replaces it, they are dropped with
//! the last clone of the old [`LoadedHandler`](super::LoadedHandler), once
//! its calls in flight have finished.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use wasmtime::Store;

use super::CallState;
use super::bindings;

/// A store, its instance once the first call made it, and the calls it
/// served.
pub(super) struct Warm {
    pub store: Store<CallState>,
    pub instance: Option<bindings::Handler>,
    pub calls: u32,
}

impl Warm {
    pub fn new(store: Store<CallState>) -> Self {
        Warm {
            store,
            instance: None,
            calls: 0,
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

    /// Keeps an instance for the consumer's next call. A consumer never has
    /// more idle instances than calls it ran at once (its `concurrency`).
    pub fn give_back(&self, consumer: &Arc<str>, warm: Warm) {
        lock(&self.idle)
            .entry(consumer.clone())
            .or_default()
            .push(warm);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}
