//! The closed loop on the real cluster: the real control plane and redis-server, the
//! real operator, a Queue and an autoscaled Consumer whose workers are real pods on the local
//! cluster's real node (the streamq image, `streamq worker --http` to this test's handler). It replays
//! bench/scenarios/e2e-step-burst.yaml, measures what the simulator measures from message
//! timestamps and pod lifetimes, and checks both against `streamq simulate`'s prediction for
//! the same scenario file, run in-process.
//!
//! Run it with `make e2e-autoscale` (about 6 minutes).

mod support;

use std::{
    collections::HashMap,
    sync::{Arc, OnceLock},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use k8s_openapi::api::{apps::v1::Deployment, core::v1::Secret};
use kube::api::PostParams;
use serde_json::json;
use streamq::{
    api::{ConditionStatus, Consumer},
    producer::{NewMessage, Producer},
    simulate::{self, Measures, PolicyChoice, policies::STREAMQ_SCALE_DOWN_DELAY, scenario::Scenario},
};
use support::{
    Operator,
    closed_loop::{ChangeLog, Handler, MessageTimes, PodLives, id_millis, measure},
    real_node::{harness_endpoint, pod_redis_url, real_env, shell_image, streamq_image},
    wait_for,
};

const SCENARIO: &str = "bench/scenarios/e2e-step-burst.yaml";
/// Real and simulated replica-seconds and p95 wait may differ by this fraction of the
/// simulated value.
const TOLERANCE: f64 = 0.25;
/// The measures checked within [`TOLERANCE`].
const CHECKED: [&str; 2] = ["wait_p95_s", "replica_seconds"];
/// What the real node itself takes to start a worker pod with one init container, creation →
/// Ready: 0.9–1.9 s besides the sleep on this 2-core machine, as the test prints. The scenario's
/// workers take `pod_startup` (a runtime that loads for seconds); an init container sleeps the rest.
const NODE_START: Duration = Duration::from_secs(2);

/// The replay uses the simulator's own realisation of the scenario (`Scenario::traffic`: the
/// Poisson arrival times and the service-time draw of every message, from the scenario's seed),
/// so the real run and the prediction see the very same traffic. What is compared is then the
/// system, not two samples of a random process: with a few thousand messages, two independent
/// Poisson realisations alone could move p95 wait by more than the tolerance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn step_burst_on_the_real_cluster_agrees_with_the_simulator() {
    let scenario = Scenario::load(&support::repo_root().join(SCENARIO)).expect("a valid scenario");
    let bounds = scenario.consumer;
    assert_eq!(
        bounds.initial_replicas, bounds.min_replicas,
        "a Consumer starts at minReplicas: the scenario must too"
    );
    let prediction = simulate::simulate(&scenario, PolicyChoice::Streamq, 5, true);
    let predicted = prediction
        .get("streamq")
        .expect("the streamq policy ran")
        .summary
        .measures
        .clone();
    let traffic = scenario.traffic();
    let startup = scenario.pod_startup.as_std();
    let duration = scenario.duration_secs();
    let target = scenario.slo.target_latency.as_secs_f64();

    // The handler: each message's payload is its index in the traffic, which gives its
    // service-time draw; the mean is the scenario's at the processing start.
    let epoch: Arc<OnceLock<SystemTime>> = Arc::new(OnceLock::new());
    let (harness_addr, harness_url) = harness_endpoint();
    let handler = Handler::start(harness_addr, {
        let (scenario, draws, epoch) = (scenario.clone(), traffic.draws.clone(), epoch.clone());
        move |payload, start| {
            let index: usize = std::str::from_utf8(payload)
                .ok()
                .and_then(|s| s.parse().ok())
                .expect("the payload is the message's index");
            let t = epoch
                .get()
                .and_then(|e| start.duration_since(*e).ok())
                .map_or(0.0, |d| d.as_secs_f64());
            Duration::from_secs_f64(scenario.mean_at(t) * draws[index])
        }
    })
    .await;

    let env = real_env("e2e-as").await;
    // The operator measures the pods' start-up; the scenario's is only its prior.
    let op = Operator::start_with(
        &env.namespace,
        &["--pod-startup", &scenario.pod_startup.to_string()],
        &[],
    );
    env.ready_queue_at("jobs", &pod_redis_url()).await;
    let workers = PodLives::start(env.client.clone(), &env.namespace, "workers");
    let replica_log = ChangeLog::start(env.api::<Deployment>(), "workers", |d: &Deployment| {
        d.spec.as_ref().and_then(|s| s.replicas)
    });
    let reason_log = ChangeLog::start(env.api::<Consumer>(), "workers", |c: &Consumer| {
        c.status.as_ref().and_then(|s| s.last_scale_reason.clone())
    });
    let start_up_sleep = startup.saturating_sub(NODE_START);
    // Exactly what the simulator's streamq policy is given: target, bounds, concurrency; the
    // scale-down delay is the CRD default the simulator assumes; no processing-time hint.
    let consumer: Consumer = serde_json::from_value(json!({
        "apiVersion": "streamq.dev/v1alpha1", "kind": "Consumer", "metadata": {"name": "workers"},
        "spec": {
            "queueRef": {"name": "jobs"},
            "concurrency": bounds.concurrency,
            "autoscaling": {
                "minReplicas": bounds.min_replicas,
                "maxReplicas": bounds.max_replicas,
                "targetLatency": scenario.slo.target_latency.to_string(),
                "scaleDownDelay": format!("{}s", STREAMQ_SCALE_DOWN_DELAY.as_secs()),
            },
            "template": {"spec": {
                "initContainers": [{
                    "name": "start-up", "image": shell_image(),
                    "command": ["/bin/sh", "-c", format!("sleep {}", start_up_sleep.as_secs())],
                }],
                "containers": [{
                    "name": "worker", "image": streamq_image(),
                    "args": ["worker", "--http", harness_url],
                }],
            }},
        },
    }))
    .unwrap();
    env.api::<Consumer>()
        .create(&PostParams::default(), &consumer)
        .await
        .unwrap();
    wait_for(&env.api::<Consumer>(), "workers", "Ready", |c: &Consumer| {
        c.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == ConditionStatus::True)
        })
    })
    .await;

    let producer_secret = env.api::<Secret>().get("jobs-producer").await.unwrap();
    let secret_key = |key: &str| {
        String::from_utf8(producer_secret.data.as_ref().unwrap()[key].0.clone()).expect("UTF-8 in the Secret")
    };
    let stream = secret_key("stream");
    let producer = Producer::connect(&secret_key("url"), stream.clone())
        .await
        .expect("the producer user can publish");
    let mut admin = env.redis().await;

    // The scenario starts with its initial replicas consuming.
    let initial = bounds.initial_replicas as usize;
    poll_until("the initial workers running", startup + support::TIMEOUT, || async {
        workers.ready() == initial && group_consumers(&mut admin.clone(), &stream).await >= initial
    })
    .await;

    // t = 0.
    let t0 = Instant::now();
    let t0_wall = SystemTime::now();
    epoch.set(t0_wall).unwrap();
    let arrivals = traffic.arrivals.clone();
    let publisher = tokio::spawn(async move {
        let mut ids = Vec::with_capacity(arrivals.len());
        let mut next = 0;
        while next < arrivals.len() {
            // The arrival process: publish each message at its arrival time.
            tokio::time::sleep_until((t0 + Duration::from_secs_f64(arrivals[next])).into()).await;
            let now = t0.elapsed().as_secs_f64();
            let due = next + arrivals[next..].partition_point(|&t| t <= now);
            let batch: Vec<NewMessage> = (next..due).map(|i| NewMessage::new(i.to_string())).collect();
            ids.extend(producer.publish_batch(&batch).await.expect("publish"));
            next = due;
        }
        ids
    });
    let ids = publisher.await.unwrap();
    let published = ids.len();
    println!("published {published} messages in {:.1} s", t0.elapsed().as_secs_f64());

    // Every message acknowledged.
    poll_until("every message acknowledged", Duration::from_secs(120), || async {
        let g = group(&mut admin.clone(), &stream).await;
        g.entries_read == Some(published) && g.pending == 0 && g.lag == Some(0)
    })
    .await;
    // The measured window is the scenario's duration, as in the simulator.
    tokio::time::sleep_until((t0 + Duration::from_secs_f64(duration)).into()).await;

    let pods = workers.pods();
    let changes = replica_log.changes();
    let handled = handler.handled();
    let rel = |t: Instant| {
        if t >= t0 {
            (t - t0).as_secs_f64()
        } else {
            -(t0 - t).as_secs_f64()
        }
    };
    let t0_unix = t0_wall.duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
    let messages: Vec<MessageTimes> = ids
        .iter()
        .map(|id| {
            let h = handled.get(id);
            MessageTimes {
                enqueued: id_millis(id) as f64 / 1000.0 - t0_unix,
                started: h.map(|h| h.first_start.duration_since(UNIX_EPOCH).unwrap().as_secs_f64() - t0_unix),
                deliveries: h.map_or(0, |h| h.deliveries),
            }
        })
        .collect();
    let lifetimes: Vec<(f64, Option<f64>)> = pods.iter().map(|p| (rel(p.created), p.gone.map(rel))).collect();
    let change_times: Vec<f64> = changes.iter().map(|(t, _)| rel(*t)).collect();
    let real = measure(&messages, &lifetimes, &change_times, target, duration);

    println!("{}", side_by_side(&scenario, &predicted, &real));
    println!(
        "replicas over time (s → spec.replicas): {}",
        changes
            .iter()
            .map(|(t, r)| format!("{:.1}→{r}", rel(*t)))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let startups: Vec<f64> = pods
        .iter()
        .filter_map(|p| p.ready.map(|r| (r - p.created).as_secs_f64()))
        .collect();
    // What the simulator does not model: from spec.replicas raised to the new pod seen
    // (ReplicaSet controller, scheduler, watch), before the scenario's start-up begins.
    let creation_delays: Vec<f64> = pods
        .iter()
        .filter_map(|p| {
            let created = rel(p.created);
            let raised = change_times.iter().copied().rfind(|&t| t <= created)?;
            (created > 0.0).then_some(created - raised)
        })
        .collect();
    let range = |v: &[f64]| {
        (
            v.iter().copied().fold(f64::INFINITY, f64::min),
            v.iter().copied().fold(0.0, f64::max),
        )
    };
    let (created_min, created_max) = range(&creation_delays);
    let (startup_min, startup_max) = range(&startups);
    println!(
        "{} pods; spec.replicas raised → pod seen: {created_min:.2}–{created_max:.2} s; \
         pod seen → Ready: {startup_min:.2}–{startup_max:.2} s (the init container sleeps {} s)",
        pods.len(),
        start_up_sleep.as_secs()
    );
    let measured = env.api::<Consumer>().get("workers").await.unwrap();
    println!(
        "the operator's measured pod start-up (status.podStartup): {:?}",
        measured.status.and_then(|s| s.pod_startup)
    );
    println!("the operator's scaling decisions (status.lastScaleReason, as the simulator's trace above):");
    for (t, reason) in reason_log.changes() {
        println!("  real: t={:.1}s {reason}", rel(t));
    }

    let errors = workers.errors();
    assert!(errors.is_empty(), "the pod watch failed:\n{}", errors.join("\n"));
    // A worker removed by a scale-down drains on SIGTERM and exits 0.
    for p in &pods {
        assert!(
            p.exit_code.is_none_or(|code| code == 0),
            "the worker of {} exited with {:?}",
            p.name,
            p.exit_code
        );
    }

    // No message lost: every one published was handled and acknowledged.
    assert_eq!(published, traffic.arrivals.len());
    let g = group(&mut admin, &stream).await;
    assert_eq!(
        (g.entries_read, g.pending, g.lag),
        (Some(published), 0, Some(0)),
        "published = acked"
    );
    let unhandled = ids
        .iter()
        .filter(|id| handled.get(*id).is_none_or(|h| h.completed == 0))
        .count();
    assert_eq!(unhandled, 0, "messages never completed by a handler");

    // The Consumer scaled up for the burst and back down after it: the tail's 2/s needs a few
    // replicas, not minReplicas, so "down" is to at most half the peak.
    let peak = changes.iter().map(|(_, r)| *r).max().unwrap_or(0);
    let initial = bounds.initial_replicas as i32;
    assert!(peak > initial, "never scaled up: {changes:?}");
    let last = changes.last().map_or(0, |(_, r)| *r);
    assert!(
        last <= peak / 2,
        "did not scale back down after the burst (peak {peak}, now {last}): {changes:?}"
    );

    let agree = |what: &str, real: f64, simulated: f64| {
        let diff = (real - simulated).abs() / simulated;
        assert!(
            diff <= TOLERANCE,
            "{what}: real {real:.2} vs simulated {simulated:.2}, {:.0} % apart (tolerance {:.0} %)",
            diff * 100.0,
            TOLERANCE * 100.0
        );
    };
    for ((name, simulated), (_, real)) in predicted.named().into_iter().zip(real.named()) {
        if CHECKED.contains(&name) {
            agree(name, real, simulated);
        }
    }
    drop(op);
}

/// The table to paste: the simulator's prediction and the real run, measure by measure.
fn side_by_side(scenario: &Scenario, simulated: &Measures, real: &Measures) -> String {
    let mut out = format!(
        "closed loop, scenario {} ({} s), policy streamq; * = checked within {:.0} %\n\
         | measure           | simulated |      real |   diff |\n\
         |-------------------|----------:|----------:|-------:|\n",
        scenario.name,
        scenario.duration_secs(),
        TOLERANCE * 100.0
    );
    for ((name, sim), (_, real)) in simulated.named().into_iter().zip(real.named()) {
        let diff = if sim == 0.0 {
            if real == 0.0 {
                "0 %".to_owned()
            } else {
                "—".to_owned()
            }
        } else {
            format!("{:+.0} %", (real - sim) / sim * 100.0)
        };
        let name = if CHECKED.contains(&name) {
            format!("{name} *")
        } else {
            name.to_owned()
        };
        out.push_str(&format!("| {name:<17} | {sim:>9.2} | {real:>9.2} | {diff:>6} |\n"));
    }
    out
}

/// Polls `cond` every 100 ms until it holds, or fails the test after `timeout`.
async fn poll_until<F, Fut>(what: &str, timeout: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !cond().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn group(admin: &mut redis::aio::MultiplexedConnection, stream: &str) -> redis::streams::StreamInfoGroup {
    let reply: redis::streams::StreamInfoGroupsReply = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(stream)
        .query_async(admin)
        .await
        .unwrap();
    reply
        .groups
        .into_iter()
        .find(|g| g.name == "workers")
        .expect("the operator created the group")
}

async fn group_consumers(admin: &mut redis::aio::MultiplexedConnection, stream: &str) -> usize {
    let consumers: Vec<HashMap<String, redis::Value>> = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg(stream)
        .arg("workers")
        .query_async(admin)
        .await
        .unwrap();
    consumers.len()
}
