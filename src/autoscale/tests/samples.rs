//! Waking from zero, and what the autoscaler does with missing, stale or surprising samples.

use std::time::Duration;

use super::*;

#[test]
fn wakes_from_zero_on_the_first_message() {
    let mut scaler = Autoscaler::new(Policy {
        min_replicas: 0,
        ..policy()
    });
    let mut script = Script::new(0);
    for _ in 0..100 {
        let d = scaler.observe(&script.second(0, 0, MS200, 0, 0));
        assert_eq!(d.replicas, 0, "{}", d.reason);
    }
    // One message added, already counted in lag.
    let d = scaler.observe(&script.second(1, 0, MS200, 1, 0));
    assert!(d.replicas >= 1, "{}", d.reason);
    assert_eq!(d.reason.rule(), Some(&Rule::WakeFromZero), "{}", d.reason);
}

#[test]
fn wakes_from_zero_when_entries_were_added_even_if_lag_reads_zero() {
    let mut scaler = Autoscaler::new(Policy {
        min_replicas: 0,
        ..policy()
    });
    let mut script = Script::new(0);
    scaler.observe(&script.second(0, 0, MS200, 0, 0));
    let d = scaler.observe(&script.second(3, 0, MS200, 0, 0));
    assert!(d.replicas >= 1, "{}", d.reason);
}

#[test]
fn null_lag_is_estimated_and_never_scales_to_zero() {
    let mut scaler = Autoscaler::new(Policy {
        min_replicas: 0,
        ..policy()
    });
    let mut script = Script::new(2);
    script.steady(&mut scaler, 30, 5, MS200);
    for _ in 0..600 {
        let mut obs = script.second(0, 0, MS200, 0, 0);
        obs.lag = None;
        // Redis reports NULL lag; the counters say 40 entries were never read.
        obs.entries_added += 40;
        let d = scaler.observe(&obs);
        assert!(d.replicas >= 1, "{}", d.reason);
        assert_eq!(d.estimates.lag, Some(40));
        assert_eq!(d.estimates.lag_source, LagSource::Estimated);
        script.replicas = d.replicas;
    }
}

#[test]
fn null_lag_without_entries_read_holds() {
    let mut scaler = Autoscaler::new(Policy {
        min_replicas: 0,
        ..policy()
    });
    let mut script = Script::new(8);
    script.steady(&mut scaler, 30, 20, MS200);
    for _ in 0..600 {
        let mut obs = script.second(0, 0, MS200, 0, 0);
        obs.lag = None;
        obs.entries_read = None;
        let d = scaler.observe(&obs);
        assert_eq!(d.replicas, 8, "{}", d.reason);
        assert_eq!(d.estimates.lag_source, LagSource::Unknown);
        assert_eq!(
            d.reason.rule(),
            Some(&Rule::BacklogUnknown { current: 8 }),
            "{}",
            d.reason
        );
    }
}

#[test]
fn stopped_sampler_holds_and_restarts_the_scale_down_window() {
    let mut scaler = Autoscaler::new(Policy {
        min_replicas: 0,
        ..policy()
    });
    let mut script = Script::new(20);
    script.steady(&mut scaler, 120, 100, MS200);
    for s in 1..=300 {
        let d = scaler.no_data(script.at + Duration::from_secs(s));
        assert!(d.hold);
        assert_eq!(d.replicas, 20, "{}", d.reason);
    }
    let d = scaler.no_data(script.at + Duration::from_secs(301));
    assert_eq!(
        d.reason,
        Reason::NoData {
            since: Some(Duration::from_secs(301)),
            holding: 20
        }
    );
    assert_eq!(d.reason.to_string(), "no data from Redis since 301s; holding 20");
    // Samples resume with no traffic: the window of lower demand starts with them.
    script.at += Duration::from_secs(301);
    for second in 1..=60 {
        let d = scaler.observe(&script.second(0, 0, MS200, 0, 0));
        assert_eq!(d.replicas, 20, "second {second}: {}", d.reason);
    }
}

#[test]
fn a_gap_between_samples_holds() {
    let mut scaler = Autoscaler::new(Policy {
        min_replicas: 0,
        ..policy()
    });
    let mut script = Script::new(20);
    script.steady(&mut scaler, 120, 100, MS200);
    script.at += Duration::from_secs(600);
    let d = scaler.observe(&script.second(0, 0, MS200, 0, 0));
    assert_eq!(d.replicas, 20, "{}", d.reason);
    assert!(
        matches!(d.reason, Reason::Decided { after_gap: Some(gap), .. } if gap == Duration::from_secs(601)),
        "{}",
        d.reason
    );
    assert!(
        d.reason.to_string().ends_with(" [601s since the previous sample]"),
        "{}",
        d.reason
    );
    // The window of lower demand starts with the first sample after the gap.
    for second in 1..=59 {
        let d = scaler.observe(&script.second(0, 0, MS200, 0, 0));
        assert_eq!(d.replicas, 20, "second {second}: {}", d.reason);
    }
}

#[test]
fn processing_time_jump_is_followed() {
    let mut scaler = Autoscaler::new(policy());
    let mut script = Script::new(20);
    let d = script.steady(&mut scaler, 120, 100, MS200);
    assert_eq!(d.replicas, 20);
    // Messages now take twice as long; the measurement follows within a few time constants.
    let d = script.steady(&mut scaler, 150, 100, Duration::from_millis(400));
    assert!(d.estimates.processing_time.as_millis() >= 395, "{}", d.reason);
    assert_eq!(d.replicas, 40, "{}", d.reason);
}

#[test]
fn hint_is_only_a_prior_until_measured() {
    let mut scaler = Autoscaler::new(Policy {
        processing_time_hint: Some(Duration::from_secs(1)),
        ..policy()
    });
    let mut script = Script::new(1);
    let first = scaler.observe(&script.second(0, 0, MS200, 50, 0));
    assert_eq!(first.estimates.processing_time_source, ProcessingTimeSource::Hint);
    // 50 waiting × 1 s ÷ 14 s → 4.
    assert_eq!(first.replicas, 4, "{}", first.reason);
    let d = script.steady(&mut scaler, 120, 10, MS200);
    assert_eq!(d.estimates.processing_time_source, ProcessingTimeSource::WorkerStats);
    assert_eq!(d.estimates.processing_time.as_millis(), 200);
}

#[test]
fn without_worker_stats_processing_time_comes_from_redis() {
    let mut scaler = Autoscaler::new(policy());
    let mut script = Script::new(10);
    script.worker_stats = false;
    // 20 completions per second with 4 messages always in service: 4 ÷ 20/s = 200 ms.
    for _ in 0..120 {
        let obs = script.second(20, 20, MS200, 0, 4);
        let d = scaler.observe(&obs);
        script.replicas = d.replicas.max(4);
    }
    let d = scaler.observe(&script.second(20, 20, MS200, 0, 4));
    assert_eq!(d.estimates.processing_time_source, ProcessingTimeSource::Redis);
    assert_eq!(d.estimates.processing_time.as_millis(), 200);
}

#[test]
fn first_sample_never_scales_down() {
    let mut scaler = Autoscaler::new(policy());
    let d = scaler.observe(&Script::new(40).observation());
    assert_eq!(d.replicas, 40, "{}", d.reason);
    assert_eq!(
        d.reason.rule(),
        Some(&Rule::FirstAfterGap { current: 40 }),
        "{}",
        d.reason
    );
}

#[test]
fn invalid_policies_are_reported_and_survived() {
    let bad = Policy {
        min_replicas: 5,
        max_replicas: 2,
        concurrency: 0,
        ..policy()
    };
    assert_eq!(bad.validate(), Err(PolicyError::MinAboveMax { min: 5, max: 2 }));
    let mut scaler = Autoscaler::new(bad);
    let d = scaler.observe(&Script::new(1).observation());
    assert_eq!(d.replicas, 5, "{}", d.reason);
    assert_eq!(policy().validate(), Ok(()));
}
