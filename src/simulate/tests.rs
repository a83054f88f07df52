//! Simulator tests on small scenarios (debug builds run them in well under a second each).

use super::{engine::VISIBILITY_TIMEOUT, *};

fn scenario(extra: &str) -> Scenario {
    let text = format!(
        "
name: small
duration: 600s
seed: 1
arrivals:
  - {{at: 0s, rate: 20}}
  - {{at: 200s, rate: 20}}
  - {{at: 200s, rate: 60}}
  - {{at: 300s, rate: 60}}
  - {{at: 300s, rate: 5}}
processing: {{distribution: exponential, mean: 200ms}}
pod_startup: 10s
consumer: {{concurrency: 1, min_replicas: 1, max_replicas: 30, initial_replicas: 4}}
slo: {{target_latency: 30s}}
{extra}"
    );
    Scenario::parse(&text).unwrap()
}

#[test]
fn same_seed_same_results() {
    let s = scenario("");
    let (a, b) = (
        simulate(&s, PolicyChoice::All, 5, false),
        simulate(&s, PolicyChoice::All, 5, false),
    );
    let json = |r: &ScenarioRun| serde_json::to_string(&r.runs.iter().map(|p| &p.summary).collect::<Vec<_>>()).unwrap();
    assert_eq!(json(&a), json(&b));
    assert_eq!(a.runs.len(), 4);
}

#[test]
fn json_has_exactly_the_documented_keys() {
    let s = scenario("");
    let run = run_wpa(&s, &s.traffic());
    let value = serde_json::to_value(&run.summary).unwrap();
    let keys: Vec<&str> = value.as_object().unwrap().keys().map(String::as_str).collect();
    let mut expected = vec![
        "scenario",
        "policy",
        "param",
        "messages",
        "wait_p50_s",
        "wait_p95_s",
        "wait_p99_s",
        "wait_max_s",
        "within_slo_pct",
        "slo_violation_s",
        "replica_seconds",
        "scale_events",
        "max_backlog",
        "interrupted",
    ];
    let mut keys = keys;
    keys.sort_unstable();
    expected.sort_unstable();
    assert_eq!(keys, expected);
}

#[test]
fn streamq_meets_the_target_without_interrupting() {
    let s = scenario("");
    let run = run_streamq(&s, &s.traffic(), false);
    assert_eq!(run.summary.measures.interrupted, 0);
    assert!(run.summary.measures.within_slo_pct >= 99.0, "{:?}", run.summary);
    assert!(run.summary.measures.messages > 10_000);
}

#[test]
fn replica_seconds_count_every_pod_that_exists() {
    // A fixed Deployment: KEDA cannot scale below 4 nor above 4.
    let s = scenario("").clone();
    let mut fixed = s.clone();
    fixed.consumer.min_replicas = 4;
    fixed.consumer.max_replicas = 4;
    let run = run_keda(&fixed, &fixed.traffic(), 5, "keda");
    assert_eq!(run.summary.measures.scale_events, 0);
    assert!(
        (run.summary.measures.replica_seconds - 2400.0).abs() < 1e-6,
        "{}",
        run.summary.measures.replica_seconds
    );
}

#[test]
fn arbitrary_scale_down_interrupts_and_redelivers_after_the_timeout() {
    // lagCount 1 scales up hard on the step, then down after the stabilization window while
    // pods are busy.
    let mut s = scenario("");
    s.arrivals.last_mut().unwrap().rate = 40.0;
    s.duration = crate::api::Duration::from_secs(1200);
    let run = run_keda(&s, &s.traffic(), 1, "keda");
    assert!(run.summary.measures.interrupted > 0, "{:?}", run.summary);
    // An interrupted message waits out the visibility timeout.
    assert!(
        run.summary.measures.wait_max_s >= VISIBILITY_TIMEOUT,
        "{:?}",
        run.summary
    );
}

#[test]
fn hpa_scale_up_is_limited_to_double_or_four_pods_per_period() {
    let s = scenario("");
    let mut keda = policies::Keda::new(&s, 5);
    // Lag 1000 asks for 200; from 2 the limit is max(2 × 2, 2 + 4) = 6, capped at 30 later.
    assert_eq!(keda.hpa_sync_for_test(0.0, 2, 1000), Some(6));
    // Within the same 15 s period the start of the period still counts: no further step.
    assert_eq!(keda.hpa_sync_for_test(10.0, 6, 1000), None);
    assert_eq!(keda.hpa_sync_for_test(15.0, 6, 1000), Some(12));
    assert_eq!(keda.hpa_sync_for_test(30.0, 12, 1000), Some(24));
    assert_eq!(keda.hpa_sync_for_test(45.0, 24, 1000), Some(30));
}

#[test]
fn hpa_scale_down_waits_for_the_stabilization_window_and_respects_tolerance() {
    let s = scenario("");
    let mut keda = policies::Keda::new(&s, 5);
    assert_eq!(keda.hpa_sync_for_test(0.0, 20, 100), None); // 100 ÷ 5 = 20: steady
    assert_eq!(keda.hpa_sync_for_test(15.0, 20, 105), None); // within the 0.1 tolerance
    for t in (30..300).step_by(15) {
        assert_eq!(keda.hpa_sync_for_test(f64::from(t), 20, 0), None, "t={t}");
    }
    assert_eq!(keda.hpa_sync_for_test(315.0, 20, 0), Some(1));
}

fn run_with(policy: &str, within: f64, replica_seconds: f64, param: u64) -> PolicyRun {
    let s = scenario("");
    let mut run = run_wpa(&s, &s.traffic());
    run.summary.policy = policy.into();
    run.summary.measures.within_slo_pct = within;
    run.summary.measures.replica_seconds = replica_seconds;
    run.summary.param = Some(param);
    run
}

#[test]
fn keda_best_is_the_cheapest_that_meets_the_slo_else_the_best_attainment() {
    let runs = [
        run_with("keda-best", 99.5, 900.0, 1),
        run_with("keda-best", 99.0, 500.0, 2),
        run_with("keda-best", 90.0, 100.0, 5),
    ];
    assert_eq!(pick_best(&runs), 1);
    let runs = [
        run_with("keda-best", 95.0, 900.0, 1),
        run_with("keda-best", 97.0, 500.0, 2),
        run_with("keda-best", 97.0, 100.0, 5),
    ];
    assert_eq!(pick_best(&runs), 1);
}

#[test]
fn infeasible_scenarios_report_a_drain_time() {
    let mut s = scenario("");
    s.consumer.max_replicas = 8; // 60/s × 0.2 s needs 12
    s.consumer.initial_replicas = 4;
    let run = run_streamq(&s, &s.traffic(), false);
    let drain = run.drain_s.expect("drained before the end");
    assert!(drain > 0.0 && drain < 300.0, "{drain}");
}
