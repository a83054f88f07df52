//! Scripted sample sequences through the whole autoscaler.

use std::time::Duration;

use super::*;

mod samples;

fn policy() -> Policy {
    Policy {
        min_replicas: 1,
        max_replicas: 100,
        concurrency: 1,
        target_latency: Duration::from_secs(30),
        scale_down_delay: Duration::from_secs(60),
        processing_time_hint: None,
        pod_startup: Duration::from_secs(15),
    }
}

/// A queue fed and served at scripted rates, sampled every second, with one worker reporting
/// stats (`streamq worker`) unless `worker_stats` is off.
struct Script {
    at: Duration,
    added: u64,
    read: u64,
    processed: u64,
    busy: Duration,
    lag: u64,
    pending: u64,
    replicas: u32,
    worker_stats: bool,
}

impl Script {
    fn new(replicas: u32) -> Self {
        Self {
            at: Duration::from_secs(1000),
            added: 5_000,
            read: 5_000,
            processed: 5_000,
            busy: Duration::ZERO,
            lag: 0,
            pending: 0,
            replicas,
            worker_stats: true,
        }
    }

    /// One second in which `arrivals` were added and `done` completed, each taking `processing`;
    /// afterwards `lag` wait and `pending` are in service.
    fn second(&mut self, arrivals: u64, done: u64, processing: Duration, lag: u64, pending: u64) -> Observation {
        self.at += Duration::from_secs(1);
        self.added += arrivals;
        // Delivered = completed + growth of pending.
        self.read = (self.read as i64 + done as i64 + pending as i64 - self.pending as i64) as u64;
        self.processed += done;
        self.busy += processing * u32::try_from(done).unwrap();
        self.lag = lag;
        self.pending = pending;
        self.observation()
    }

    fn observation(&self) -> Observation {
        // Worker 0 reports all the stats; pending entries are spread over the workers.
        let workers = u64::from(self.replicas.max(1));
        let consumers = (0..workers)
            .map(|i| ConsumerObservation {
                name: format!("worker-{i}"),
                pending: self.pending / workers + u64::from(i < self.pending % workers),
                idle: Duration::ZERO,
                processed: (self.worker_stats && i == 0).then_some(self.processed),
                busy: (self.worker_stats && i == 0).then_some(self.busy),
            })
            .collect();
        Observation {
            at: self.at,
            entries_added: self.added,
            entries_read: Some(self.read),
            lag: Some(self.lag),
            pending: self.pending,
            oldest_undelivered_age: (self.lag > 0).then_some(Duration::from_secs(1)),
            consumers,
            current_replicas: self.replicas,
            ready_replicas: self.replicas,
        }
    }

    /// Steady traffic for `secs` seconds, applying each decision; returns the last one.
    fn steady(&mut self, scaler: &mut Autoscaler, secs: u32, rate: u64, processing: Duration) -> Decision {
        let mut last = None;
        for _ in 0..secs {
            let obs = self.second(rate, rate, processing, 0, 0);
            let decision = scaler.observe(&obs);
            self.replicas = decision.replicas;
            last = Some(decision);
        }
        last.expect("at least one second")
    }
}

const MS200: Duration = Duration::from_millis(200);

#[test]
fn steady_state_is_sized_by_littles_law() {
    let mut scaler = Autoscaler::new(policy());
    let mut script = Script::new(30);
    let d = script.steady(&mut scaler, 120, 100, MS200);
    // 100/s × 0.2 s = 20.
    assert_eq!(d.replicas, 20, "{}", d.reason);
    assert_eq!(d.estimates.processing_time_source, ProcessingTimeSource::WorkerStats);
    assert_eq!(d.estimates.processing_time.as_millis(), 200);
    assert!((d.estimates.arrival_rate.unwrap() - 100.0).abs() < 1e-6);
    assert!((d.estimates.completion_rate.unwrap() - 100.0).abs() < 1e-6);
}

#[test]
fn reason_states_the_numbers() {
    let mut scaler = Autoscaler::new(policy());
    let mut script = Script::new(20);
    script.steady(&mut scaler, 30, 100, MS200);
    let d = scaler.observe(&script.second(100, 100, MS200, 3000, 0));
    let Reason::Decided {
        basis,
        replicas,
        rule,
        after_gap,
    } = &d.reason
    else {
        panic!("not decided on the sample: {}", d.reason);
    };
    assert_eq!(
        (basis.lag, basis.lag_source, basis.pending),
        (Some(3000), LagSource::Exact, 0)
    );
    assert!((basis.arrival_rate.unwrap() - 100.0).abs() < 1e-6, "{basis:?}");
    assert_eq!(basis.processing_time, MS200);
    assert_eq!(basis.processing_time_source, ProcessingTimeSource::WorkerStats);
    assert_eq!(basis.target_latency, Duration::from_secs(30));
    assert_eq!(
        (*replicas, rule, *after_gap),
        (d.replicas, &Rule::ScaleUp { from: 20 }, None)
    );
    assert_eq!(
        d.reason.to_string(),
        format!(
            "lag 3000, pending 0, arrival 100/s, processing 200ms (measured by workers), target 30s → {} (scale up from 20)",
            d.replicas
        )
    );
}

#[test]
fn backlog_scales_up_at_once_to_drain_within_the_target() {
    let mut scaler = Autoscaler::new(policy());
    let mut script = Script::new(20);
    script.steady(&mut scaler, 60, 100, MS200);
    // 2800 waiting: 2800 × 0.2 s ÷ (30 − 15 − 1) s = 40 slots, in one decision.
    let d = scaler.observe(&script.second(100, 100, MS200, 2800, 0));
    assert_eq!(d.replicas, 40, "{}", d.reason);
}

#[test]
fn scale_up_is_capped_at_max_replicas() {
    let mut scaler = Autoscaler::new(Policy {
        max_replicas: 10,
        ..policy()
    });
    let mut script = Script::new(5);
    script.steady(&mut scaler, 10, 20, MS200);
    let d = scaler.observe(&script.second(20, 20, MS200, 100_000, 0));
    assert_eq!(d.replicas, 10, "{}", d.reason);
}

#[test]
fn scale_down_waits_for_the_delay_and_takes_the_window_maximum() {
    let mut scaler = Autoscaler::new(policy());
    let mut script = Script::new(20);
    script.steady(&mut scaler, 120, 100, MS200);
    assert_eq!(script.replicas, 20);
    // Demand falls to a quarter: nothing happens for the whole delay...
    for second in 1..=60 {
        let d = scaler.observe(&script.second(25, 25, MS200, 0, 0));
        assert_eq!(d.replicas, 20, "second {second}: {}", d.reason);
        assert!(
            matches!(d.reason.rule(), Some(Rule::DemandInWindow { current: 20, .. })),
            "second {second}: {}",
            d.reason
        );
    }
    // ...then replicas follow the highest recommendation of the last 60 s, which still
    // includes the decaying arrival rate, and finally settle at 25 × 0.2 = 5.
    let d = script.steady(&mut scaler, 1, 25, MS200);
    assert!(
        matches!(d.reason.rule(), Some(Rule::ScaleDown { from: 20, delay }) if *delay == Duration::from_secs(60)),
        "{}",
        d.reason
    );
    let d = script.steady(&mut scaler, 29, 25, MS200);
    assert!(d.replicas < 20, "{}", d.reason);
    let d = script.steady(&mut scaler, 300, 25, MS200);
    assert_eq!(d.replicas, 5, "{}", d.reason);
}

#[test]
fn a_short_dip_does_not_scale_down() {
    let mut scaler = Autoscaler::new(policy());
    let mut script = Script::new(20);
    script.steady(&mut scaler, 120, 100, MS200);
    for _ in 0..30 {
        let d = scaler.observe(&script.second(0, 0, MS200, 0, 0));
        assert_eq!(d.replicas, 20, "{}", d.reason);
    }
    let d = script.steady(&mut scaler, 60, 100, MS200);
    assert_eq!(d.replicas, 20, "{}", d.reason);
}

#[test]
fn deadband_keeps_small_scale_downs_from_flapping() {
    let mut scaler = Autoscaler::new(policy());
    let mut script = Script::new(56);
    script.steady(&mut scaler, 300, 280, MS200); // 280 × 0.2 = 56
    assert_eq!(script.replicas, 56);
    // 275/s needs 55: one replica less is within the 5 % deadband of 56 (3 replicas).
    let d = script.steady(&mut scaler, 300, 275, MS200);
    assert_eq!(d.replicas, 56, "{}", d.reason);
    assert_eq!(
        d.reason.rule(),
        Some(&Rule::WithinDeadband {
            current: 56,
            down_to: 55
        }),
        "{}",
        d.reason
    );
}

#[test]
fn never_scales_below_the_consumers_holding_pending_messages() {
    let mut scaler = Autoscaler::new(policy());
    let mut script = Script::new(10);
    script.steady(&mut scaler, 10, 10, MS200);
    let mut last = None;
    for _ in 0..200 {
        let mut obs = script.second(0, 0, MS200, 0, 0);
        for (i, consumer) in obs.consumers.iter_mut().enumerate() {
            // Seven consumers each hold a message that takes long.
            consumer.pending = u64::from(i < 7);
        }
        obs.pending = 7;
        let d = scaler.observe(&obs);
        script.replicas = d.replicas;
        obs.current_replicas = d.replicas;
        last = Some(d);
    }
    assert_eq!(script.replicas, 7);
    let last = last.unwrap();
    assert_eq!(
        last.reason.rule(),
        Some(&Rule::ConsumersHoldPending {
            current: 7,
            consumers: 7
        }),
        "{}",
        last.reason
    );
}

#[test]
fn scales_to_zero_after_the_delay_without_arrivals() {
    let mut scaler = Autoscaler::new(Policy {
        min_replicas: 0,
        ..policy()
    });
    let mut script = Script::new(3);
    script.steady(&mut scaler, 60, 10, MS200);
    let mut zero_at = None;
    for second in 1..=120 {
        let d = scaler.observe(&script.second(0, 0, MS200, 0, 0));
        script.replicas = d.replicas;
        if d.replicas == 0 {
            zero_at.get_or_insert(second);
            assert_eq!(
                d.reason.rule(),
                Some(&Rule::ScaleToZero {
                    idle_for: Duration::from_secs(60)
                }),
                "{}",
                d.reason
            );
            break;
        }
        assert!(d.replicas >= 1, "second {second}: {}", d.reason);
    }
    // The last arrival was at second 0, so the 60 s idle window is complete at second 60.
    assert_eq!(zero_at, Some(60));
}

#[test]
fn a_failed_sample_delays_scale_to_zero_by_one_window_only() {
    let mut scaler = Autoscaler::new(Policy {
        min_replicas: 0,
        ..policy()
    });
    let mut script = Script::new(3);
    script.steady(&mut scaler, 60, 10, MS200);
    script.at += Duration::from_secs(1);
    assert!(scaler.no_data(script.at).hold);
    let mut zero_at = None;
    for second in 1..=180 {
        let d = scaler.observe(&script.second(0, 0, MS200, 0, 0));
        script.replicas = d.replicas;
        if d.replicas == 0 {
            zero_at = Some(second);
            break;
        }
    }
    // The window starts again with the first sample after the failure and is full 60 s later.
    assert_eq!(zero_at, Some(61));
}

#[test]
fn min_replicas_one_never_scales_to_zero() {
    let mut scaler = Autoscaler::new(policy());
    let mut script = Script::new(3);
    script.steady(&mut scaler, 60, 10, MS200);
    let d = script.steady(&mut scaler, 600, 0, MS200);
    assert_eq!(d.replicas, 1, "{}", d.reason);
}
