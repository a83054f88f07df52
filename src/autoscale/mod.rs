//! The autoscaler: pure, no I/O, no clock reads. Samples in, `(desired
//! replicas, reason)` out. The operator and `streamq simulate` call this same code.
//!
//! One [`Autoscaler`] per Consumer. The caller samples Redis and the Deployment into an
//! [`Observation`] (time included: this module never reads a clock), calls
//! [`Autoscaler::observe`], and applies [`Decision::replicas`] unless [`Decision::hold`] says to
//! leave the Deployment alone. When sampling failed it calls [`Autoscaler::no_data`].
//!
//! The rules, in order:
//! 1. Size to the SLO ([`sizing`]): Little's law for the steady state plus the capacity to drain
//!    the backlog, projected over the pod start-up, within what remains of the target.
//! 2. Scale up at once to that size, capped at `max_replicas`.
//! 3. Scale down only to the highest size recommended over the last `scale_down_delay`, only
//!    when every sample of that window was fresh, and only by a step larger than the deadband;
//!    never below the consumers holding pending messages.
//! 4. Scale to zero (when `min_replicas` is 0) only after `scale_down_delay` with no arrivals,
//!    an exact lag of 0 and nothing pending. Wake from zero on the first message.
//! 5. Missing, stale or unknown data never scales down, and never to zero.

pub mod estimate;
pub mod sizing;

use std::{collections::VecDeque, time::Duration};

pub use estimate::{Ewma, ProcessingTime, arrival_rate, completion_rate, completions};
pub use sizing::{Sizing, SizingInput, size};

/// The processing time assumed before any is measured and without a hint. Deliberately long:
/// guessing too long costs extra replicas until the first completions are measured (seconds),
/// guessing too short costs the latency target for a whole pod start-up.
pub const DEFAULT_PROCESSING_TIME: Duration = Duration::from_secs(1);
/// A gap between samples longer than this means the data in between is missing: rates over it
/// are averages that may hide anything, so the autoscaler does not scale down on them.
/// 15 samples at the sampler's default 1 s interval.
pub const STALE_AFTER: Duration = Duration::from_secs(15);
/// A scale-down smaller than this fraction of the current replicas (and at least one replica)
/// is not worth the churn: within it, the noise of the estimates would move replicas back and
/// forth.
pub const SCALE_DOWN_DEADBAND: f64 = 0.05;

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

/// What the user asked for: `Consumer.spec.autoscaling` and `concurrency`.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    pub min_replicas: u32,
    pub max_replicas: u32,
    pub concurrency: u32,
    pub target_latency: Duration,
    pub scale_down_delay: Duration,
    /// Used only until the processing time is measured.
    pub processing_time_hint: Option<Duration>,
    /// Expected time from replicas raised to consuming (measured by the operator or a flag).
    pub pod_startup: Duration,
}

/// A policy the autoscaler cannot honour as written. The CRD's validation rejects these; the
/// autoscaler still accepts them (see [`Autoscaler::new`]) so that it never panics.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("minReplicas ({min}) is greater than maxReplicas ({max})")]
    MinAboveMax { min: u32, max: u32 },
    #[error("maxReplicas must be at least 1")]
    ZeroMaxReplicas,
    #[error("concurrency must be at least 1")]
    ZeroConcurrency,
    #[error("targetLatency must be greater than 0")]
    ZeroTargetLatency,
}

impl Policy {
    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.max_replicas == 0 {
            return Err(PolicyError::ZeroMaxReplicas);
        }
        if self.min_replicas > self.max_replicas {
            return Err(PolicyError::MinAboveMax {
                min: self.min_replicas,
                max: self.max_replicas,
            });
        }
        if self.concurrency == 0 {
            return Err(PolicyError::ZeroConcurrency);
        }
        if self.target_latency.is_zero() {
            return Err(PolicyError::ZeroTargetLatency);
        }
        Ok(())
    }

    /// The policy with invalid values made usable: max ≥ max(min, 1), concurrency ≥ 1, target > 0.
    fn sanitized(mut self) -> Self {
        self.max_replicas = self.max_replicas.max(self.min_replicas).max(1);
        self.concurrency = self.concurrency.max(1);
        if self.target_latency.is_zero() {
            self.target_latency = Duration::from_millis(1);
        }
        self
    }
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
    /// Nothing measured and no hint: [`DEFAULT_PROCESSING_TIME`].
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

/// The estimates a decision was made from; the operator writes them to status.
#[derive(Clone, Debug, PartialEq)]
pub struct Estimates {
    /// Messages added per second, smoothed ([`estimate::ARRIVAL_TAU`]).
    pub arrival_rate: Option<f64>,
    /// Messages acknowledged per second, smoothed ([`estimate::COMPLETION_TAU`]).
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

/// What to do, and why.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// The replicas the Deployment should have.
    pub replicas: u32,
    /// The numbers the decision was made from, in words.
    pub reason: String,
    /// True when the autoscaler had nothing fresh to decide on: leave the Deployment as it is.
    /// `replicas` is then the last count the autoscaler knew of.
    pub hold: bool,
    /// What the sizing asked for in this sample, clamped to min/max, before the scale-down rules.
    pub recommended: Option<u32>,
    /// The sizing's intermediate values, when a sizing was made.
    pub sizing: Option<Sizing>,
    pub estimates: Estimates,
}

/// What is kept of the previous fresh sample.
#[derive(Clone, Debug)]
struct Sample {
    at: Duration,
    entries_added: u64,
    entries_read: Option<u64>,
    pending: u64,
    in_service: u64,
    worker_stats: estimate::WorkerStats,
}

/// The autoscaler of one Consumer.
#[derive(Clone, Debug)]
pub struct Autoscaler {
    policy: Policy,
    arrivals: Ewma,
    completions: Ewma,
    processing: ProcessingTime,
    previous: Option<Sample>,
    /// Recommendations of the fresh samples within the last `scale_down_delay`.
    history: VecDeque<(Duration, u32)>,
    /// Since when every sample was fresh (no gap, no failure): scale-down needs a full window.
    fresh_since: Option<Duration>,
    /// The last time messages arrived or anything waited or was pending.
    last_activity: Option<Duration>,
    /// The last replica count decided (or observed, before the first decision).
    last_replicas: Option<u32>,
    /// Whether the last decision used a measured processing time (not the hint or default).
    measured: bool,
}

impl Autoscaler {
    /// An autoscaler for `policy`. An invalid policy (see [`Policy::validate`]) is made usable
    /// rather than refused: the CRD rejects those, and the autoscaler must not panic.
    pub fn new(policy: Policy) -> Self {
        Self {
            policy: policy.sanitized(),
            arrivals: Ewma::new(estimate::ARRIVAL_TAU),
            completions: Ewma::new(estimate::COMPLETION_TAU),
            processing: ProcessingTime::default(),
            previous: None,
            history: VecDeque::new(),
            fresh_since: None,
            last_activity: None,
            last_replicas: None,
            measured: false,
        }
    }

    /// The spec changed. Measurements are kept; the new bounds apply from the next sample.
    pub fn set_policy(&mut self, policy: Policy) {
        self.policy = policy.sanitized();
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The processing time in force and where it comes from.
    fn processing_time(&self, worker_stats: bool) -> (Duration, ProcessingTimeSource) {
        match (self.processing.measured(), self.policy.processing_time_hint) {
            (Some(measured), _) if worker_stats => (measured, ProcessingTimeSource::WorkerStats),
            (Some(measured), _) => (measured, ProcessingTimeSource::Redis),
            (None, Some(hint)) => (hint, ProcessingTimeSource::Hint),
            (None, None) => (DEFAULT_PROCESSING_TIME, ProcessingTimeSource::Default),
        }
    }

    fn estimates(&self, lag: Option<u64>, lag_source: LagSource, backlog: Option<u64>) -> Estimates {
        let worker_stats = self.previous.as_ref().is_some_and(|p| !p.worker_stats.is_empty());
        let (processing_time, processing_time_source) = self.processing_time(worker_stats);
        Estimates {
            arrival_rate: self.arrivals.value(),
            completion_rate: self.completions.value(),
            processing_time,
            processing_time_source,
            lag,
            lag_source,
            backlog,
        }
    }

    /// The sampler failed at `at`: hold. The scale-down window restarts, so that replicas are
    /// only removed after a full `scale_down_delay` of fresh samples.
    pub fn no_data(&mut self, at: Duration) -> Decision {
        self.history.clear();
        self.fresh_since = None;
        let replicas = self.last_replicas.unwrap_or(self.policy.min_replicas.max(1));
        let since = match &self.previous {
            Some(previous) => format!("since {}", fmt_duration(at.saturating_sub(previous.at))),
            None => "yet".to_owned(),
        };
        Decision {
            replicas,
            reason: format!("no data from Redis {since}; holding {replicas}"),
            hold: true,
            recommended: None,
            sizing: None,
            estimates: self.estimates(None, LagSource::Unknown, None),
        }
    }

    /// A fresh sample: update the estimates and decide.
    pub fn observe(&mut self, obs: &Observation) -> Decision {
        let policy = self.policy.clone();
        let current = obs.current_replicas;

        // The lag: exact, or estimated from the counters when Redis reports NULL (after XDEL or
        // trimming). Never read a NULL as 0: that would scale a busy queue to zero.
        let (lag, lag_source) = match (obs.lag, obs.entries_read) {
            (Some(lag), _) => (Some(lag), LagSource::Exact),
            (None, Some(read)) => (Some(obs.entries_added.saturating_sub(read)), LagSource::Estimated),
            (None, None) => (None, LagSource::Unknown),
        };
        let backlog = lag.map(|lag| lag + estimate::pending_waiting(&obs.consumers, policy.concurrency));
        let in_service = estimate::in_service(&obs.consumers, policy.concurrency);
        let worker_stats = estimate::worker_stats(&obs.consumers);

        // How this sample relates to the previous one.
        let previous = self.previous.take();
        let gap = previous
            .as_ref()
            .map(|p| obs.at.checked_sub(p.at).filter(|d| !d.is_zero()));
        let arrived = previous.as_ref().is_some_and(|p| obs.entries_added > p.entries_added);
        let freshness = match gap {
            None => Freshness::First,
            Some(None) => Freshness::NotNewer,
            Some(Some(dt)) if dt > STALE_AFTER => Freshness::AfterGap(dt),
            Some(Some(dt)) => Freshness::Fresh(dt),
        };
        if let Freshness::NotNewer = freshness {
            // A sample older than (or as old as) the last one: keep the last one and hold.
            self.previous = previous;
            self.last_replicas = Some(current);
            let lag_text = fmt_count(lag);
            return Decision {
                replicas: current,
                reason: format!("sample not newer than the previous one (lag {lag_text}); holding {current}"),
                hold: true,
                recommended: None,
                sizing: None,
                estimates: self.estimates(lag, lag_source, backlog),
            };
        }

        if let (Freshness::Fresh(dt), Some(previous)) = (freshness, previous.as_ref()) {
            if let Some(rate) = arrival_rate(previous.entries_added, obs.entries_added, dt) {
                self.arrivals.update(rate, dt);
            }
            let redis_completions = completions(previous.entries_read, obs.entries_read, previous.pending, obs.pending);
            let worker = estimate::worker_work(&previous.worker_stats, &worker_stats);
            let done = redis_completions.or(worker.map(|(_, processed)| processed));
            if let Some(rate) = done.and_then(|done| completion_rate(done, dt)) {
                self.completions.update(rate, dt);
            }
            match (worker, redis_completions) {
                (Some((busy, processed)), _) => self.processing.update(busy, processed, dt),
                (None, Some(done)) => {
                    let mean_in_service = (previous.in_service + in_service) as f64 / 2.0;
                    self.processing.update(mean_in_service * dt.as_secs_f64(), done, dt);
                }
                (None, None) => {}
            }
        }
        self.previous = Some(Sample {
            at: obs.at,
            entries_added: obs.entries_added,
            entries_read: obs.entries_read,
            pending: obs.pending,
            in_service,
            worker_stats,
        });

        let fresh = matches!(freshness, Freshness::Fresh(_));
        if !fresh {
            // First sample, or the first after a gap: the window of lower demand starts now.
            self.history.clear();
            self.fresh_since = Some(obs.at);
        }
        let active = arrived || backlog.is_none_or(|b| b > 0) || obs.pending > 0;
        if active || self.last_activity.is_none() || !fresh {
            // Unknown history counts as activity: scale to zero only after a full idle window.
            self.last_activity = Some(obs.at);
        }

        let estimates = self.estimates(lag, lag_source, backlog);
        let measured = matches!(
            estimates.processing_time_source,
            ProcessingTimeSource::WorkerStats | ProcessingTimeSource::Redis
        );
        if measured && !self.measured {
            // The recommendations so far were sized on a guessed processing time: they are not
            // demand the scale-down window should remember. (The window's freshness is kept.)
            self.history.clear();
        }
        self.measured = measured;
        let sizing = size(&SizingInput {
            arrival_rate: estimates.arrival_rate.unwrap_or(0.0),
            processing_time: estimates.processing_time,
            concurrency: policy.concurrency,
            backlog: backlog.unwrap_or(0),
            ready_replicas: obs.ready_replicas,
            current_replicas: current,
            target_latency: policy.target_latency,
            pod_startup: policy.pod_startup,
        });

        // Recommendation: the sizing within [min_replicas (at least 1: zero is decided
        // separately below), max_replicas]. It is the demand the scale-down window remembers.
        let recommended = u32::try_from(sizing.replicas)
            .unwrap_or(u32::MAX)
            .clamp(policy.min_replicas.max(1), policy.max_replicas);
        self.history.push_back((obs.at, recommended));
        let window_start = obs.at.saturating_sub(policy.scale_down_delay);
        while self.history.front().is_some_and(|(at, _)| *at < window_start) {
            self.history.pop_front();
        }
        let window_max = self.history.iter().map(|(_, r)| *r).max().unwrap_or(recommended);
        // A scale-down never goes below the consumers holding pending messages now. This is a
        // floor at the moment of scaling, not demand: kept in the window, the busiest instant
        // of a minute (Poisson arrivals spread over idle pods) would hold replicas up forever.
        let busy_consumers = estimate::consumers_with_pending(obs).min(policy.max_replicas);
        let down_to = window_max.max(busy_consumers);
        let window_full = fresh && self.fresh_since.is_some_and(|since| since <= window_start);

        let numbers = format!(
            "lag {}{}, pending {}, arrival {}/s, processing {} ({}), target {}",
            fmt_count(lag),
            match lag_source {
                LagSource::Exact => "",
                LagSource::Estimated => " (estimated: Redis reports no lag)",
                LagSource::Unknown => " (Redis reports no lag and no entries-read)",
            },
            obs.pending,
            fmt_rate(estimates.arrival_rate),
            fmt_duration(estimates.processing_time),
            match estimates.processing_time_source {
                ProcessingTimeSource::WorkerStats => "measured by workers",
                ProcessingTimeSource::Redis => "measured from Redis",
                ProcessingTimeSource::Hint => "hint",
                ProcessingTimeSource::Default => "assumed",
            },
            fmt_duration(policy.target_latency),
        );
        let idle_for = obs.at.saturating_sub(self.last_activity.unwrap_or(obs.at));
        let zero_allowed = policy.min_replicas == 0
            && lag_source == LagSource::Exact
            && lag == Some(0)
            && obs.pending == 0
            && !arrived
            && window_full
            && idle_for >= policy.scale_down_delay;

        let (replicas, why) = if current == 0 {
            let wake = arrived || backlog.is_some_and(|b| b > 0) || obs.pending > 0;
            if wake || policy.min_replicas > 0 {
                (recommended, "scale up from zero".to_owned())
            } else {
                (0, "idle, staying at zero".to_owned())
            }
        } else if zero_allowed {
            (0, format!("idle for {}: scale to zero", fmt_duration(idle_for)))
        } else if recommended > current {
            (recommended, format!("scale up from {current}"))
        } else if recommended == current {
            (current, "steady".to_owned())
        } else if lag_source == LagSource::Unknown {
            (current, format!("backlog unknown: not scaling down below {current}"))
        } else if !window_full {
            let waited = self
                .fresh_since
                .map_or(Duration::ZERO, |since| obs.at.saturating_sub(since));
            let why = if fresh {
                format!(
                    "holding {current}: fresh samples for {} only, scale-down waits {}",
                    fmt_duration(waited),
                    fmt_duration(policy.scale_down_delay)
                )
            } else {
                format!("holding {current}: first sample after a gap, not scaling down")
            };
            (current, why)
        } else if window_max >= current {
            (
                current,
                format!(
                    "holding {current}: demand was {window_max} within the last {}",
                    fmt_duration(policy.scale_down_delay)
                ),
            )
        } else if down_to >= current {
            (
                current,
                format!("holding {current}: {busy_consumers} consumers hold pending messages"),
            )
        } else {
            let step = current - down_to;
            let deadband = (f64::from(current) * SCALE_DOWN_DEADBAND).ceil().max(1.0);
            if f64::from(step) < deadband {
                (current, format!("holding {current}: {down_to} is within the deadband"))
            } else {
                (
                    down_to,
                    format!(
                        "scale down from {current} after {} of lower demand",
                        fmt_duration(policy.scale_down_delay)
                    ),
                )
            }
        };
        self.last_replicas = Some(replicas);
        let gap_note = match freshness {
            Freshness::AfterGap(dt) => format!(" [{} since the previous sample]", fmt_duration(dt)),
            _ => String::new(),
        };
        Decision {
            replicas,
            reason: format!("{numbers} → {replicas} ({why}){gap_note}"),
            hold: false,
            recommended: Some(recommended),
            sizing: Some(sizing),
            estimates,
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Freshness {
    First,
    NotNewer,
    AfterGap(Duration),
    Fresh(Duration),
}

fn fmt_duration(d: Duration) -> String {
    // Millisecond precision is plenty for a reason; `api::Duration` prints it the way specs do.
    crate::api::Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)).to_string()
}

fn fmt_rate(rate: Option<f64>) -> String {
    match rate {
        Some(r) if r >= 10.0 => format!("{r:.0}"),
        Some(r) => format!("{r:.1}"),
        None => "?".to_owned(),
    }
}

fn fmt_count(n: Option<u64>) -> String {
    n.map_or_else(|| "?".to_owned(), |n| n.to_string())
}

#[cfg(test)]
mod tests;
