//! Handler instances kept between calls.
//!
//! A call in a fresh store and instance costs about three times as much as
//! one on an existing instance: 8.2 µs against 2.9 µs for a no-op handler
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
/// grants and limits, which are part of the store. Generic only so that the
/// tests can keep plain values.
pub(super) struct WarmInstances<T = Warm> {
    idle: Mutex<HashMap<Arc<str>, Vec<Idle<T>>>>,
}

struct Idle<T> {
    since: Instant,
    instance: T,
}

impl<T> Default for WarmInstances<T> {
    fn default() -> Self {
        WarmInstances {
            idle: Mutex::default(),
        }
    }
}

impl<T> WarmInstances<T> {
    /// Takes the consumer's most recently used idle instance, if any.
    pub fn take(&self, consumer: &str) -> Option<T> {
        let idle = lock(&self.idle).get_mut(consumer)?.pop()?;
        Some(idle.instance)
    }

    /// Keeps an instance for the consumer's next call, and drops the
    /// consumer's instances that waited longer than [`IDLE_LIMIT`]. A
    /// consumer never has more idle instances than calls it ran at once
    /// (its `concurrency`).
    pub fn give_back(&self, consumer: &Arc<str>, instance: T) {
        self.give_back_at(consumer, instance, Instant::now());
    }

    fn give_back_at(&self, consumer: &Arc<str>, instance: T, now: Instant) {
        let expired: Vec<Idle<T>> = {
            let mut idle = lock(&self.idle);
            let waiting = idle.entry(consumer.clone()).or_default();
            // `take` pops from the end, so the front waited longest.
            let count = waiting
                .iter()
                .take_while(|old| now.saturating_duration_since(old.since) > IDLE_LIMIT)
                .count();
            let expired = waiting.drain(..count).collect();
            waiting.push(Idle {
                since: now,
                instance,
            });
            expired
        };
        // Dropping a store returns its slots, outside the lock.
        drop(expired);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn consumer(name: &str) -> Arc<str> {
        Arc::from(name)
    }

    #[test]
    fn take_returns_the_most_recently_used_instance_first() {
        let instances = WarmInstances::default();
        let start = Instant::now();
        let orders = consumer("orders");
        instances.give_back_at(&orders, 1, start);
        instances.give_back_at(&orders, 2, start + Duration::from_secs(1));
        assert_eq!(instances.take("orders"), Some(2));
        assert_eq!(instances.take("orders"), Some(1));
        assert_eq!(instances.take("orders"), None);
    }

    #[test]
    fn consumers_do_not_share_instances() {
        let instances = WarmInstances::default();
        instances.give_back(&consumer("orders"), 1);
        assert_eq!(instances.take("audit"), None);
        assert_eq!(instances.take("orders"), Some(1));
    }

    #[test]
    fn idle_instances_dropped_at_give_back() {
        let instances = WarmInstances::default();
        let start = Instant::now();
        let orders = consumer("orders");
        // A burst left three instances; the oldest two then waited past the
        // limit while one instance served the calls that followed.
        instances.give_back_at(&orders, "burst-1", start);
        instances.give_back_at(&orders, "burst-2", start + Duration::from_secs(1));
        instances.give_back_at(&orders, "steady", start + Duration::from_secs(2));
        let later = start + IDLE_LIMIT + Duration::from_millis(500);
        let steady = instances.take("orders").unwrap();
        instances.give_back_at(&orders, steady, later);

        assert_eq!(instances.take("orders"), Some("steady"));
        assert_eq!(
            instances.take("orders"),
            Some("burst-2"),
            "an instance idle for less than the limit stays"
        );
        assert_eq!(instances.take("orders"), None, "burst-1 waited too long");
    }

    #[test]
    fn instance_idle_exactly_limit_stays() {
        let instances = WarmInstances::default();
        let start = Instant::now();
        let orders = consumer("orders");
        instances.give_back_at(&orders, 1, start);
        instances.give_back_at(&orders, 2, start + IDLE_LIMIT);
        assert_eq!(instances.take("orders"), Some(2));
        assert_eq!(instances.take("orders"), Some(1));
    }
}
