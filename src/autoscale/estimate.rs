//! Rates and processing time derived from two consecutive samples, and the
//! smoothing applied to them. The operator writes these to the Consumer's
//! status (`arrivalRate`, `completionRate`, `processingTime`).

use std::{collections::BTreeMap, time::Duration};

use super::{ConsumerObservation, Observation};

/// Time constant of the arrival-rate EWMA. Short, because the steady-state term of the sizing
/// must follow a burst within seconds; a Poisson stream of 20 msg/s sampled every second still
/// averages over ~200 messages, i.e. ±7 % noise. Backlog, not this rate, catches the first
/// seconds of a burst.
pub const ARRIVAL_TAU: Duration = Duration::from_secs(10);
/// Time constant of the completion-rate EWMA (status only; not used for sizing).
pub const COMPLETION_TAU: Duration = Duration::from_secs(10);
/// Time constant of the processing-time EWMA. Longer than the arrival one: processing times can
/// be heavy-tailed (a lognormal with sigma 1.5 has a coefficient of variation near 3), and a
/// wrong-but-stable estimate is corrected by the backlog term anyway, while a jittery one makes
/// every scale-down window hold its noisiest peak.
pub const PROCESSING_TAU: Duration = Duration::from_secs(30);

/// An exponentially weighted moving average over irregularly spaced samples.
///
/// Why an EWMA and not a window: samples arrive at whatever interval the sampler manages
/// (1 s nominal, longer under load), and an EWMA weighs them by elapsed time
/// (`alpha = 1 − e^(−Δt/τ)`) with O(1) state. The first sample initialises the average
/// directly so that it does not start biased towards zero.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Ewma {
    tau_secs: f64,
    value: Option<f64>,
}

impl Ewma {
    pub fn new(tau: Duration) -> Self {
        Self {
            tau_secs: tau.as_secs_f64().max(1e-9),
            value: None,
        }
    }

    /// Folds in `sample`, which covers the last `dt`.
    pub fn update(&mut self, sample: f64, dt: Duration) -> f64 {
        let value = match self.value {
            None => sample,
            Some(previous) => {
                let alpha = 1.0 - (-dt.as_secs_f64() / self.tau_secs).exp();
                previous + alpha * (sample - previous)
            }
        };
        self.value = Some(value);
        value
    }

    pub fn value(&self) -> Option<f64> {
        self.value
    }
}

/// Messages added per second between two samples: Δentries-added ÷ Δt.
pub fn arrival_rate(previous_added: u64, added: u64, dt: Duration) -> Option<f64> {
    let secs = dt.as_secs_f64();
    // A counter that went backwards means the stream was recreated: no rate for this interval.
    (secs > 0.0 && added >= previous_added).then(|| (added - previous_added) as f64 / secs)
}

/// Messages acknowledged between two samples: Δentries-read − Δpending (what was delivered and
/// did not stay pending was acknowledged). `None` when Redis reports no entries-read.
pub fn completions(previous_read: Option<u64>, read: Option<u64>, previous_pending: u64, pending: u64) -> Option<u64> {
    let (previous_read, read) = (previous_read?, read?);
    let delivered = read.checked_sub(previous_read)? as i128;
    let pending_change = pending as i128 - previous_pending as i128;
    // Negative when pending entries were deleted or claimed away: count no completions.
    Some(u64::try_from((delivered - pending_change).max(0)).unwrap_or(0))
}

/// Completions per second between two samples.
pub fn completion_rate(completions: u64, dt: Duration) -> Option<f64> {
    let secs = dt.as_secs_f64();
    (secs > 0.0).then(|| completions as f64 / secs)
}

/// The worker stats of one sample, by consumer name (a `BTreeMap` so that nothing depends on
/// hash order).
pub type WorkerStats = BTreeMap<String, (u64, Duration)>;

/// The consumers that report worker stats (`processed` and `busy`).
pub fn worker_stats(consumers: &[ConsumerObservation]) -> WorkerStats {
    consumers
        .iter()
        .filter_map(|c| Some((c.name.clone(), (c.processed?, c.busy?))))
        .collect()
}

/// Work done between two samples according to the worker stats: (busy seconds, messages
/// processed), summed over the consumers present in both samples. `None` when no consumer
/// reports stats in both. A counter that went backwards (a restarted worker reusing its name)
/// is skipped rather than read as a negative.
pub fn worker_work(previous: &WorkerStats, current: &WorkerStats) -> Option<(f64, u64)> {
    let mut matched = false;
    let (mut busy, mut processed) = (0.0, 0u64);
    for (name, (now_processed, now_busy)) in current {
        let Some((then_processed, then_busy)) = previous.get(name) else {
            continue;
        };
        matched = true;
        if now_processed >= then_processed && now_busy >= then_busy {
            processed += now_processed - then_processed;
            busy += (*now_busy - *then_busy).as_secs_f64();
        }
    }
    matched.then_some((busy, processed))
}

/// Messages being processed at one instant according to Redis alone: each consumer's pending
/// entries, at most `concurrency` of them (a worker that fetched more than it can run holds the
/// rest waiting, not in service).
pub fn in_service(consumers: &[ConsumerObservation], concurrency: u32) -> u64 {
    consumers.iter().map(|c| c.pending.min(u64::from(concurrency))).sum()
}

/// Entries fetched by workers but not in service (see [`in_service`]): they wait like lag does.
pub fn pending_waiting(consumers: &[ConsumerObservation], concurrency: u32) -> u64 {
    consumers
        .iter()
        .map(|c| c.pending.saturating_sub(u64::from(concurrency)))
        .sum()
}

/// Consumers holding at least one pending entry: removing one of them would strand its
/// messages until they are claimed.
pub fn consumers_with_pending(obs: &Observation) -> u32 {
    u32::try_from(obs.consumers.iter().filter(|c| c.pending > 0).count()).unwrap_or(u32::MAX)
}

/// The processing time of one message, smoothed, from whichever source the samples offer.
///
/// Both sources measure *work* and *completions* per interval, and the estimate is the ratio of
/// their EWMAs, not an EWMA of per-interval ratios: intervals with few completions then weigh
/// little instead of adding noise, and an idle stretch (both zero) leaves the estimate as it was,
/// so it survives a scale to zero.
/// - worker stats: busy = Δ(handler time), completions = Δprocessed.
/// - Redis alone (Little's law on the service stage): busy = messages in service (mean of the two
///   samples) × Δt, completions = Δentries-read − Δpending.
#[derive(Clone, Debug)]
pub struct ProcessingTime {
    busy: Ewma,
    done: Ewma,
    completions_seen: u64,
}

/// Completions needed before the measured processing time replaces the hint: fewer is noise.
pub const MEASURED_AFTER_COMPLETIONS: u64 = 10;

impl Default for ProcessingTime {
    fn default() -> Self {
        Self {
            busy: Ewma::new(PROCESSING_TAU),
            done: Ewma::new(PROCESSING_TAU),
            completions_seen: 0,
        }
    }
}

impl ProcessingTime {
    /// Folds in one interval: `busy_secs` of work and `completions` finished over `dt`.
    pub fn update(&mut self, busy_secs: f64, completions: u64, dt: Duration) {
        let secs = dt.as_secs_f64();
        if secs <= 0.0 {
            return;
        }
        // Before the first completion, keep nothing: work without completions (a first long
        // message in flight) would otherwise start the ratio at infinity.
        if self.completions_seen == 0 && completions == 0 {
            return;
        }
        self.completions_seen = self.completions_seen.saturating_add(completions);
        self.busy.update(busy_secs / secs, dt);
        self.done.update(completions as f64 / secs, dt);
    }

    /// The measured processing time, once enough completions were seen.
    pub fn measured(&self) -> Option<Duration> {
        if self.completions_seen < MEASURED_AFTER_COMPLETIONS {
            return None;
        }
        let (busy, done) = (self.busy.value()?, self.done.value()?);
        (done > 0.0 && busy.is_finite()).then(|| Duration::from_secs_f64((busy / done).clamp(0.0, 86_400.0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn consumer(name: &str, pending: u64, processed: Option<u64>, busy_ms: Option<u64>) -> ConsumerObservation {
        ConsumerObservation {
            name: name.into(),
            pending,
            idle: Duration::ZERO,
            processed,
            busy: busy_ms.map(Duration::from_millis),
        }
    }

    #[test]
    fn ewma_starts_at_the_first_sample_and_moves_by_elapsed_time() {
        let mut e = Ewma::new(Duration::from_secs(10));
        assert_eq!(e.update(100.0, Duration::from_secs(1)), 100.0);
        let after = e.update(0.0, Duration::from_secs(10));
        // One time constant moves 1 − 1/e ≈ 63 % of the way.
        assert!((after - 100.0 / std::f64::consts::E).abs() < 1e-9, "{after}");
    }

    #[test]
    fn arrival_rate_is_added_entries_per_second() {
        assert_eq!(arrival_rate(100, 300, Duration::from_secs(2)), Some(100.0));
        assert_eq!(arrival_rate(300, 100, Duration::from_secs(2)), None);
        assert_eq!(arrival_rate(1, 2, Duration::ZERO), None);
    }

    #[test]
    fn completions_are_reads_that_did_not_stay_pending() {
        // 50 delivered, pending grew by 10: 40 acknowledged.
        assert_eq!(completions(Some(100), Some(150), 5, 15), Some(40));
        // Pending shrank: the earlier deliveries were acknowledged too.
        assert_eq!(completions(Some(100), Some(100), 15, 5), Some(10));
        assert_eq!(completions(None, Some(100), 0, 0), None);
    }

    #[test]
    fn worker_work_sums_consumers_present_in_both_samples() {
        let before = worker_stats(&[
            consumer("a", 0, Some(10), Some(2_000)),
            consumer("gone", 0, Some(5), Some(1_000)),
        ]);
        let after = worker_stats(&[
            consumer("a", 0, Some(20), Some(4_000)),
            consumer("new", 0, Some(3), Some(600)),
        ]);
        assert_eq!(worker_work(&before, &after), Some((2.0, 10)));
        assert_eq!(worker_work(&before, &WorkerStats::new()), None);
    }

    #[test]
    fn in_service_counts_at_most_concurrency_per_consumer() {
        let consumers = [consumer("a", 5, None, None), consumer("b", 1, None, None)];
        assert_eq!(in_service(&consumers, 2), 3);
        assert_eq!(pending_waiting(&consumers, 2), 3);
    }

    #[test]
    fn processing_time_is_work_over_completions_and_survives_idle() {
        let mut p = ProcessingTime::default();
        let s = Duration::from_secs(1);
        for _ in 0..20 {
            p.update(2.0, 10, s); // 2 busy seconds per second, 10 done per second: 200 ms
        }
        assert_eq!(p.measured().map(|d| d.as_millis()), Some(200));
        for _ in 0..600 {
            p.update(0.0, 0, s);
        }
        assert_eq!(p.measured().map(|d| d.as_millis()), Some(200));
    }

    #[test]
    fn processing_time_needs_a_few_completions() {
        let mut p = ProcessingTime::default();
        p.update(5.0, 0, Duration::from_secs(1));
        p.update(1.0, 3, Duration::from_secs(1));
        assert_eq!(p.measured(), None);
    }
}
