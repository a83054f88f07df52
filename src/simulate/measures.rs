//! The measures of one run, simulated or real, defined once. The engine and the closed-loop
//! test on a real cluster both take them with a [`Meter`], so that the two compare field by
//! field.

use serde::Serialize;

/// The measures of one run; `streamq simulate --json` writes them under these names.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Measures {
    pub messages: u64,
    /// Waits from enqueue to processing start, by nearest rank; a message never started waited
    /// until the end.
    pub wait_p50_s: f64,
    pub wait_p95_s: f64,
    pub wait_p99_s: f64,
    pub wait_max_s: f64,
    /// The share of messages that waited at most the target.
    pub within_slo_pct: f64,
    /// The time during which the oldest waiting message was older than the target.
    pub slo_violation_s: f64,
    /// Every pod from its creation until it is gone, starting and draining pods included.
    pub replica_seconds: f64,
    /// Changes of spec.replicas.
    pub scale_events: u64,
    /// The most messages waiting at once.
    pub max_backlog: u64,
    /// Messages whose processing was cut short and that were delivered again.
    pub interrupted: u64,
}

impl Measures {
    /// As the reports give them: seconds and percentages to 3 decimals, replica-seconds to 1.
    pub fn rounded(&self) -> Self {
        let round = |x: f64, decimals: i32| {
            let scale = 10f64.powi(decimals);
            (x * scale).round() / scale
        };
        Self {
            wait_p50_s: round(self.wait_p50_s, 3),
            wait_p95_s: round(self.wait_p95_s, 3),
            wait_p99_s: round(self.wait_p99_s, 3),
            wait_max_s: round(self.wait_max_s, 3),
            within_slo_pct: round(self.within_slo_pct, 3),
            slo_violation_s: round(self.slo_violation_s, 3),
            replica_seconds: round(self.replica_seconds, 1),
            ..self.clone()
        }
    }

    /// Every measure under its JSON name, as a number, in the JSON's order.
    pub fn named(&self) -> [(&'static str, f64); 11] {
        [
            ("messages", self.messages as f64),
            ("wait_p50_s", self.wait_p50_s),
            ("wait_p95_s", self.wait_p95_s),
            ("wait_p99_s", self.wait_p99_s),
            ("wait_max_s", self.wait_max_s),
            ("within_slo_pct", self.within_slo_pct),
            ("slo_violation_s", self.slo_violation_s),
            ("replica_seconds", self.replica_seconds),
            ("scale_events", self.scale_events as f64),
            ("max_backlog", self.max_backlog as f64),
            ("interrupted", self.interrupted as f64),
        ]
    }
}

/// Takes the [`Measures`] of a run as it unfolds: the caller tells it how the run spent each
/// stretch of time and what happened, then the waits of the messages.
#[derive(Clone, Debug)]
pub struct Meter {
    target: f64,
    replica_seconds: f64,
    slo_violation_s: f64,
    max_backlog: u64,
    scale_events: u64,
    interrupted: u64,
}

impl Meter {
    /// A meter for a latency target of `target` seconds.
    pub fn new(target: f64) -> Self {
        Self {
            target,
            replica_seconds: 0.0,
            slo_violation_s: 0.0,
            max_backlog: 0,
            scale_events: 0,
            interrupted: 0,
        }
    }

    /// From `from` to `to`, `pods` pods existed and the oldest waiting message (if any) was
    /// enqueued at `oldest_waiting`. Integrated exactly: the state is constant in between.
    pub fn elapse(&mut self, from: f64, to: f64, pods: usize, oldest_waiting: Option<f64>) {
        let dt = to - from;
        if dt > 0.0 {
            self.replica_seconds += pods as f64 * dt;
            if let Some(oldest) = oldest_waiting {
                let late_from = from.max(oldest + self.target);
                self.slo_violation_s += (to - late_from).max(0.0);
            }
        }
    }

    /// `waiting` messages wait now.
    pub fn backlog(&mut self, waiting: u64) {
        self.max_backlog = self.max_backlog.max(waiting);
    }

    /// spec.replicas changed.
    pub fn scaled(&mut self) {
        self.scale_events += 1;
    }

    /// `messages` were taken from their consumer before they were done.
    pub fn interrupted(&mut self, messages: u64) {
        self.interrupted += messages;
    }

    /// The measures of a run that ended at `end`, given each message's enqueue and processing
    /// start times (`None`: never started).
    pub fn finish(self, end: f64, messages: impl IntoIterator<Item = (f64, Option<f64>)>) -> Measures {
        let mut waits: Vec<f64> = messages
            .into_iter()
            .map(|(enqueued, started)| started.unwrap_or(end) - enqueued)
            .collect();
        let messages = waits.len() as u64;
        let within = waits.iter().filter(|&&w| w <= self.target).count();
        waits.sort_unstable_by(f64::total_cmp);
        let nearest_rank = |q: f64| -> f64 {
            if waits.is_empty() {
                return 0.0;
            }
            let rank = ((q * waits.len() as f64).ceil() as usize).clamp(1, waits.len());
            waits[rank - 1]
        };
        Measures {
            messages,
            wait_p50_s: nearest_rank(0.50),
            wait_p95_s: nearest_rank(0.95),
            wait_p99_s: nearest_rank(0.99),
            wait_max_s: waits.last().copied().unwrap_or(0.0),
            within_slo_pct: if messages == 0 {
                100.0
            } else {
                within as f64 * 100.0 / messages as f64
            },
            slo_violation_s: self.slo_violation_s,
            replica_seconds: self.replica_seconds,
            scale_events: self.scale_events,
            max_backlog: self.max_backlog,
            interrupted: self.interrupted,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_are_taken_by_nearest_rank_and_unstarted_messages_wait_until_the_end() {
        let meter = Meter::new(5.0);
        let messages = (0..10).map(|i| (f64::from(i), (i < 9).then(|| f64::from(i) * 2.0)));
        let m = meter.finish(100.0, messages);
        // Waits 0, 1, …, 8, and 91 for the one never started.
        assert_eq!(
            (m.messages, m.wait_p50_s, m.wait_p95_s, m.wait_max_s),
            (10, 4.0, 91.0, 91.0)
        );
        assert_eq!(m.within_slo_pct, 60.0);
    }

    #[test]
    fn time_measures_integrate_each_stretch() {
        let mut meter = Meter::new(10.0);
        meter.elapse(0.0, 5.0, 2, None);
        // The oldest waiting message, enqueued at 0, is late from 10 s on.
        meter.elapse(5.0, 15.0, 3, Some(0.0));
        meter.elapse(15.0, 15.0, 100, Some(0.0));
        meter.backlog(4);
        meter.backlog(2);
        meter.scaled();
        meter.interrupted(3);
        let m = meter.finish(15.0, []);
        assert_eq!((m.replica_seconds, m.slo_violation_s), (40.0, 5.0));
        assert_eq!((m.max_backlog, m.scale_events, m.interrupted), (4, 1, 3));
        assert_eq!((m.messages, m.within_slo_pct, m.wait_max_s), (0, 100.0, 0.0));
    }
}
