//! What the caller samples from Redis and the Deployment.

use std::time::Duration;

/// Everything the autoscaler needs to know about one Consumer at one instant.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Observation {
    /// Time since an arbitrary fixed epoch (monotonic, caller-supplied).
    pub at: Duration,
    /// Cumulative XINFO STREAM entries-added.
    pub entries_added: u64,
    /// Cumulative group entries-read (None if Redis reports none).
    pub entries_read: Option<u64>,
    /// Undelivered entries; None = Redis reported NULL lag and no count was possible.
    pub lag: Option<u64>,
    /// Delivered, not acked (XINFO GROUPS pending).
    pub pending: u64,
    /// Age of the first entry after last-delivered-id, None when lag == 0.
    pub oldest_undelivered_age: Option<Duration>,
    /// XINFO CONSUMERS + worker stats.
    pub consumers: Vec<ConsumerObservation>,
    /// Deployment spec.replicas.
    pub current_replicas: u32,
    /// Deployment status.readyReplicas.
    pub ready_replicas: u32,
}

/// One consumer of the group.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ConsumerObservation {
    pub name: String,
    /// This consumer's pending entries.
    pub pending: u64,
    /// XINFO CONSUMERS idle.
    pub idle: Duration,
    /// Cumulative, from the worker stats hash, when `streamq worker` is used.
    pub processed: Option<u64>,
    /// Cumulative handler time, from the stats hash.
    pub busy: Option<Duration>,
}
