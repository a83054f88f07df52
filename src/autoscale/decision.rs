//! What the autoscaler answers: the replicas, why, and the estimates behind them.

use std::time::Duration;

use super::{Reason, Sizing};

/// What to do, and why.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// The replicas the Deployment should have.
    pub replicas: u32,
    /// The rule that decided and the numbers it was decided from; its `Display` is the text of
    /// status.lastScaleReason and of the scaling Events.
    pub reason: Reason,
    /// True when the autoscaler had nothing fresh to decide on: leave the Deployment as it is.
    /// `replicas` is then the last count the autoscaler knew of.
    pub hold: bool,
    /// What the sizing asked for in this sample, clamped to min/max, before the scale-down rules.
    pub recommended: Option<u32>,
    /// The sizing's intermediate values, when a sizing was made.
    pub sizing: Option<Sizing>,
    pub estimates: Estimates,
}

/// The estimates a decision was made from; the operator writes them to status.
#[derive(Clone, Debug, PartialEq)]
pub struct Estimates {
    /// Messages added per second, smoothed ([`super::estimate::ARRIVAL_TAU`]).
    pub arrival_rate: Option<f64>,
    /// Messages acknowledged per second, smoothed ([`super::estimate::COMPLETION_TAU`]).
    pub completion_rate: Option<f64>,
    /// Processing time of one message used for sizing.
    pub processing_time: Duration,
    pub processing_time_source: ProcessingTimeSource,
    /// The lag used (exact or estimated).
    pub lag: Option<u64>,
    pub lag_source: LagSource,
    /// Messages waiting: lag plus pending entries beyond the consumers' concurrency.
    pub backlog: Option<u64>,
}

/// Where the processing time used by a decision came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProcessingTimeSource {
    /// Measured from the worker stats hash (handler time ÷ messages).
    WorkerStats,
    /// Measured from Redis alone (messages in service × time ÷ completions).
    Redis,
    /// `processingTime` from the spec: nothing measured yet.
    Hint,
    /// Nothing measured and no hint: [`super::DEFAULT_PROCESSING_TIME`].
    Default,
}

/// How the lag used by a decision was obtained.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LagSource {
    /// As reported by Redis (or counted by the sampler).
    Exact,
    /// Redis reported NULL: entries-added − entries-read, an upper bound.
    Estimated,
    /// Neither: the backlog is unknown.
    Unknown,
}
