//! What the read loop, reclaim and the settle loop share: the messages in
//! flight, their last errors and the counters.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex, MutexGuard, PoisonError, atomic::Ordering},
};

use super::report::Counters;

/// State shared by the dispatcher, reclaim and the settle loop.
pub(super) struct Shared {
    /// Ids claimed by this worker and not settled yet (running, or done and
    /// waiting for their ack). A reclaim pass that sweeps one of them up
    /// must not start it a second time.
    in_flight: Mutex<HashSet<String>>,
    /// The last handler error per message id, for `streamq.error` when a
    /// message is dead-lettered at reclaim time.
    last_errors: Mutex<HashMap<String, String>>,
    pub(super) counters: Arc<Counters>,
}

/// Cap on remembered errors; beyond it an arbitrary one is dropped and its
/// dead-letter entry says the error is unknown.
const MAX_REMEMBERED_ERRORS: usize = 10_000;

impl Shared {
    pub(super) fn new(counters: Arc<Counters>) -> Self {
        Self {
            in_flight: Mutex::default(),
            last_errors: Mutex::default(),
            counters,
        }
    }

    /// Records `ids` as in flight, under one lock for the whole batch.
    pub(super) fn started<'a>(&self, ids: impl Iterator<Item = &'a str>) {
        let mut in_flight = lock(&self.in_flight);
        in_flight.extend(ids.map(str::to_owned));
        self.counters.in_flight.store(in_flight.len() as u64, Ordering::Relaxed);
    }

    pub(super) fn is_in_flight(&self, id: &str) -> bool {
        lock(&self.in_flight).contains(id)
    }

    pub(super) fn remember_error(&self, id: &str, error: &str) {
        let mut errors = lock(&self.last_errors);
        if errors.len() >= MAX_REMEMBERED_ERRORS
            && !errors.contains_key(id)
            && let Some(k) = errors.keys().next().cloned()
        {
            errors.remove(&k);
        }
        errors.insert(id.to_owned(), error.to_owned());
    }

    pub(super) fn take_error(&self, id: &str) -> Option<String> {
        lock(&self.last_errors).remove(id)
    }

    /// Drops what is remembered about `ids` (acked: no longer needed), under
    /// one lock for the whole batch.
    pub(super) fn forget_errors(&self, ids: &[&str]) {
        let mut errors = lock(&self.last_errors);
        if errors.is_empty() {
            return;
        }
        for id in ids {
            errors.remove(*id);
        }
    }

    /// Ends the in-flight time of `ids` (acked, dead-lettered or left
    /// pending), under one lock for the whole batch.
    pub(super) fn settled(&self, ids: impl IntoIterator<Item = impl AsRef<str>>) {
        let mut in_flight = lock(&self.in_flight);
        for id in ids {
            in_flight.remove(id.as_ref());
        }
        self.counters.in_flight.store(in_flight.len() as u64, Ordering::Relaxed);
    }
}

/// Locks `mutex` even if poisoned: a set or map left by a panicking holder
/// is still a valid one.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
