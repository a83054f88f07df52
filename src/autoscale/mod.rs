//! The autoscaler: pure, no I/O, no clock reads. Samples in, replicas and a [`Reason`] out. The
//! operator and `streamq simulate` call this same code.
//!
//! One [`Autoscaler`] per Consumer: the caller samples Redis and the Deployment into an
//! [`Observation`] (time included), calls [`Autoscaler::observe`] (or [`Autoscaler::no_data`]
//! when sampling failed), and applies [`Decision::replicas`] unless [`Decision::hold`] is set.
//! Each sample is sized to the SLO ([`sizing`]), and a rule (see [`Rule`]) turns that into
//! replicas. Missing, stale or unknown data never scales down, and never to zero.

mod decision;
pub mod estimate;
mod observation;
mod policy;
mod reason;
mod rule;
pub mod sizing;
pub mod startup;
mod window;

use std::time::Duration;

pub use decision::{Decision, Estimates, LagSource, ProcessingTimeSource};
pub use estimate::{Ewma, ProcessingTime, arrival_rate, completion_rate, completions};
pub use observation::{ConsumerObservation, Observation};
pub use policy::{Policy, PolicyError};
pub use reason::{Basis, Reason, Rule};
pub use sizing::{Sizing, SizingInput, size};
use window::ScaleDownWindow;

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

impl Sample {
    fn of(obs: &Observation, in_service: u64, worker_stats: estimate::WorkerStats) -> Self {
        Self {
            at: obs.at,
            entries_added: obs.entries_added,
            entries_read: obs.entries_read,
            pending: obs.pending,
            in_service,
            worker_stats,
        }
    }
}

/// How a sample relates to the previous one.
#[derive(Clone, Copy, Debug)]
enum Freshness {
    First,
    NotNewer,
    AfterGap(Duration),
    Fresh(Duration),
}

impl Freshness {
    fn of(previous: Option<Duration>, at: Duration) -> Self {
        match previous.map(|p| at.checked_sub(p).filter(|d| !d.is_zero())) {
            None => Freshness::First,
            Some(None) => Freshness::NotNewer,
            Some(Some(dt)) if dt > STALE_AFTER => Freshness::AfterGap(dt),
            Some(Some(dt)) => Freshness::Fresh(dt),
        }
    }
}

/// The lag: exact, or estimated from the counters when Redis reports NULL (after XDEL or
/// trimming). Never read a NULL as 0: that would scale a busy queue to zero.
fn lag_of(obs: &Observation) -> (Option<u64>, LagSource) {
    match (obs.lag, obs.entries_read) {
        (Some(lag), _) => (Some(lag), LagSource::Exact),
        (None, Some(read)) => (Some(obs.entries_added.saturating_sub(read)), LagSource::Estimated),
        (None, None) => (None, LagSource::Unknown),
    }
}

/// The autoscaler of one Consumer.
#[derive(Clone, Debug)]
pub struct Autoscaler {
    policy: Policy,
    arrivals: Ewma,
    completions: Ewma,
    processing: ProcessingTime,
    previous: Option<Sample>,
    window: ScaleDownWindow,
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
        let policy = policy.sanitized();
        Self {
            window: ScaleDownWindow::new(policy.scale_down_delay),
            policy,
            arrivals: Ewma::new(estimate::ARRIVAL_TAU),
            completions: Ewma::new(estimate::COMPLETION_TAU),
            processing: ProcessingTime::default(),
            previous: None,
            last_activity: None,
            last_replicas: None,
            measured: false,
        }
    }

    /// The spec changed. Measurements are kept; the new bounds apply from the next sample.
    pub fn set_policy(&mut self, policy: Policy) {
        self.policy = policy.sanitized();
        self.window.set_delay(self.policy.scale_down_delay);
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The sampler failed at `at`: hold. The scale-down window restarts, so that replicas are
    /// only removed after a full `scale_down_delay` of fresh samples.
    pub fn no_data(&mut self, at: Duration) -> Decision {
        self.window.clear();
        let replicas = self.last_replicas.unwrap_or(self.policy.min_replicas.max(1));
        let since = self.previous.as_ref().map(|previous| at.saturating_sub(previous.at));
        Decision {
            replicas,
            reason: Reason::NoData {
                since,
                holding: replicas,
            },
            hold: true,
            recommended: None,
            sizing: None,
            estimates: self.estimates(None, LagSource::Unknown, None),
        }
    }

    /// A fresh sample: update the estimates and decide.
    pub fn observe(&mut self, obs: &Observation) -> Decision {
        let concurrency = self.policy.concurrency;
        let (lag, lag_source) = lag_of(obs);
        let backlog = lag.map(|lag| lag + estimate::pending_waiting(&obs.consumers, concurrency));
        let in_service = estimate::in_service(&obs.consumers, concurrency);
        let worker_stats = estimate::worker_stats(&obs.consumers);

        let previous = self.previous.take();
        let arrived = previous.as_ref().is_some_and(|p| obs.entries_added > p.entries_added);
        let freshness = Freshness::of(previous.as_ref().map(|p| p.at), obs.at);
        if let Freshness::NotNewer = freshness {
            // Keep the previous sample and hold.
            self.previous = previous;
            return self.hold_not_newer(obs.current_replicas, lag, lag_source, backlog);
        }
        if let (Freshness::Fresh(dt), Some(previous)) = (freshness, previous.as_ref()) {
            self.learn(previous, obs, in_service, &worker_stats, dt);
        }
        self.previous = Some(Sample::of(obs, in_service, worker_stats));

        let fresh = matches!(freshness, Freshness::Fresh(_));
        if !fresh {
            // First sample, or the first after a gap: the window of lower demand starts now.
            self.window.restart(obs.at);
        }
        let active = arrived || backlog.is_none_or(|b| b > 0) || obs.pending > 0;
        if active || self.last_activity.is_none() || !fresh {
            // Unknown history counts as activity: scale to zero only after a full idle window.
            self.last_activity = Some(obs.at);
        }

        let estimates = self.estimates(lag, lag_source, backlog);
        self.note_measured(estimates.processing_time_source);
        let sizing = size(&SizingInput {
            arrival_rate: estimates.arrival_rate.unwrap_or(0.0),
            processing_time: estimates.processing_time,
            concurrency,
            backlog: backlog.unwrap_or(0),
            ready_replicas: obs.ready_replicas,
            current_replicas: obs.current_replicas,
            target_latency: self.policy.target_latency,
            pod_startup: self.policy.pod_startup,
        });
        // Zero is decided by the rule, not the sizing: the window remembers demand of at least 1.
        let recommended = u32::try_from(sizing.replicas)
            .unwrap_or(u32::MAX)
            .clamp(self.policy.min_replicas.max(1), self.policy.max_replicas);
        self.window.record(obs.at, recommended);

        let situation = rule::Situation {
            current: obs.current_replicas,
            recommended,
            min_replicas: self.policy.min_replicas,
            scale_down_delay: self.policy.scale_down_delay,
            lag,
            lag_source,
            backlog,
            pending: obs.pending,
            arrived,
            fresh,
            idle_for: obs.at.saturating_sub(self.last_activity.unwrap_or(obs.at)),
            window_full: fresh && self.window.is_full(obs.at),
            fresh_for: self.window.fresh_for(obs.at),
            window_max: self.window.highest().unwrap_or(recommended),
            busy_consumers: estimate::consumers_with_pending(obs).min(self.policy.max_replicas),
        };
        let (replicas, rule) = rule::choose(&situation);
        self.last_replicas = Some(replicas);
        Decision {
            replicas,
            reason: Reason::Decided {
                basis: Basis {
                    lag,
                    lag_source,
                    pending: obs.pending,
                    arrival_rate: estimates.arrival_rate,
                    processing_time: estimates.processing_time,
                    processing_time_source: estimates.processing_time_source,
                    target_latency: self.policy.target_latency,
                },
                replicas,
                rule,
                after_gap: match freshness {
                    Freshness::AfterGap(dt) => Some(dt),
                    _ => None,
                },
            },
            hold: false,
            recommended: Some(recommended),
            sizing: Some(sizing),
            estimates,
        }
    }

    /// A sample older than (or as old as) the last one: hold at what the Deployment has.
    fn hold_not_newer(
        &mut self,
        current: u32,
        lag: Option<u64>,
        lag_source: LagSource,
        backlog: Option<u64>,
    ) -> Decision {
        self.last_replicas = Some(current);
        Decision {
            replicas: current,
            reason: Reason::NotNewer { lag, holding: current },
            hold: true,
            recommended: None,
            sizing: None,
            estimates: self.estimates(lag, lag_source, backlog),
        }
    }

    /// Folds the interval `dt` since `previous` into the rates and the processing time.
    fn learn(
        &mut self,
        previous: &Sample,
        obs: &Observation,
        in_service: u64,
        worker_stats: &estimate::WorkerStats,
        dt: Duration,
    ) {
        if let Some(rate) = arrival_rate(previous.entries_added, obs.entries_added, dt) {
            self.arrivals.update(rate, dt);
        }
        let redis_completions = completions(previous.entries_read, obs.entries_read, previous.pending, obs.pending);
        let worker = estimate::worker_work(&previous.worker_stats, worker_stats);
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

    /// The recommendations made before the processing time was first measured were sized on a
    /// guess: they are not demand the scale-down window should remember.
    fn note_measured(&mut self, source: ProcessingTimeSource) {
        let measured = matches!(source, ProcessingTimeSource::WorkerStats | ProcessingTimeSource::Redis);
        if measured && !self.measured {
            self.window.forget_recommendations();
        }
        self.measured = measured;
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
}

#[cfg(test)]
mod tests;
