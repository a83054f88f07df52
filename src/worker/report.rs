//! What a worker reports: the error that stops it, its live counters and the
//! summary of a run.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::redis::Error as StreamError;

/// Errors that stop a [`Worker`].
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("invalid worker configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Redis(#[from] StreamError),
}

/// What a run did, returned when the worker stops.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunSummary {
    /// Handler successes that were acked.
    pub acked: u64,
    /// Handler failures and timeouts (left pending or dead-lettered).
    pub failed: u64,
    pub dead_lettered: u64,
    /// Pending entries found trimmed from the stream, acked and dropped.
    pub trimmed: u64,
    /// Entries taken over from idle consumers.
    pub reclaimed: u64,
    /// Handlers still running when the grace period ended; left pending.
    pub abandoned: u64,
}

/// Live counters, readable while the worker runs (e.g. for metrics).
#[derive(Debug, Default)]
pub struct Counters {
    pub acked: AtomicU64,
    pub failed: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub trimmed: AtomicU64,
    pub reclaimed: AtomicU64,
    pub in_flight: AtomicU64,
}

impl Counters {
    pub(super) fn summary(&self, abandoned: u64) -> RunSummary {
        RunSummary {
            acked: self.acked.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            dead_lettered: self.dead_lettered.load(Ordering::Relaxed),
            trimmed: self.trimmed.load(Ordering::Relaxed),
            reclaimed: self.reclaimed.load(Ordering::Relaxed),
            abandoned,
        }
    }
}
