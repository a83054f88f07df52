//! The autoscaler in the operator, closed over the real kube-apiserver
//! (controller-manager, scheduler, kwok) and redis-server. The test plays the
//! workers: it reads and acknowledges with XREADGROUP/XACK.

mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use serde_json::json;
use streamq::api::Consumer;
use support::*;

async fn setup(prefix: &str, autoscaling: serde_json::Value) -> (TestEnv, Operator, String) {
    let env = TestEnv::new(prefix).await;
    let op = Operator::start(&env.namespace, &[]);
    env.ready_queue("jobs").await;
    env.create(&consumer("workers", "jobs", json!({"autoscaling": autoscaling})))
        .await;
    let stream = format!("streamq:{{{}.jobs}}", env.namespace);
    wait_ready(&env.api::<Consumer>(), "workers").await;
    (env, op, stream)
}

async fn xadd(env: &TestEnv, stream: &str, n: usize) {
    xadd_n(&mut env.redis().await, stream, n).await;
}

/// Plays the workers: delivers and acknowledges everything in the stream.
async fn drain(env: &TestEnv, stream: &str) {
    read_and_ack_all(&mut env.redis().await, stream, "workers", "test-worker").await;
}

/// The names of the Consumer's pods (`filter`: more `kubectl get` arguments).
fn pod_names(env: &TestEnv, filter: &[&str]) -> String {
    let mut args = vec!["get", "pods", "-l", "streamq.dev/consumer=workers"];
    args.extend_from_slice(filter);
    args.extend(["-o", "jsonpath={.items[*].metadata.name}"]);
    env.kubectl_ok(&args)
}

#[tokio::test]
async fn burst_scales_up_within_two_sample_intervals_then_drains_back_after_the_delay() {
    let (env, _op, stream) = setup(
        "as-burst",
        json!({"minReplicas": 1, "maxReplicas": 8, "targetLatency": "10s", "processingTime": "1s", "scaleDownDelay": "5s"}),
    )
    .await;
    let deployments = env.api::<Deployment>();
    wait_for(&deployments, "workers", "minReplicas", |d| replicas(d) == 1).await;

    let start = Instant::now();
    xadd(&env, &stream, 400).await;
    // 400 messages of ~1 s each, to start within 10 s: far more than 8 replicas.
    let scaled = wait_for_within(&deployments, "workers", "scaled up", Duration::from_secs(10), |d| {
        replicas(d) > 1
    })
    .await;
    let reaction = start.elapsed();
    println!("burst reaction: {reaction:?} to {} replicas", replicas(&scaled));
    assert!(
        reaction < Duration::from_secs(2) + Duration::from_millis(1500),
        "took {reaction:?}: more than two 1 s sample intervals"
    );
    let c = wait_for(
        &env.api::<Consumer>(),
        "workers",
        "status with lag and reason",
        |c: &Consumer| {
            c.status.as_ref().is_some_and(|s| {
                s.desired_replicas == Some(8) && s.lag.is_some_and(|l| l > 0) && s.last_scale_reason.is_some()
            })
        },
    )
    .await;
    let status = c.status.unwrap();
    println!(
        "status: lag {:?}, oldest {:?}, reason {:?}",
        status.lag, status.oldest_message_age, status.last_scale_reason
    );
    assert!(status.oldest_message_age.is_some());
    let reason = status.last_scale_reason.unwrap();
    assert!(
        reason.contains("lag") && reason.contains("→"),
        "the reason gives the numbers: {reason}"
    );

    // Workers ack everything: back to minReplicas, but not before scaleDownDelay.
    drain(&env, &stream).await;
    let drained = Instant::now();
    wait_for_within(
        &deployments,
        "workers",
        "back to minReplicas",
        Duration::from_secs(120),
        |d| replicas(d) == 1,
    )
    .await;
    let held = drained.elapsed();
    println!("scaled down {held:?} after the queue drained (scaleDownDelay 5s)");
    // The autoscaler counts the delay from its last sample with high demand,
    // which may precede the drain by up to one sample interval (1 s).
    assert!(
        held >= Duration::from_secs(5 - 1),
        "scaled down after {held:?}, before scaleDownDelay"
    );
}

#[tokio::test]
async fn wakes_from_zero_on_the_first_message() {
    let (env, _op, stream) = setup(
        "as-wake",
        json!({"minReplicas": 0, "maxReplicas": 3, "targetLatency": "30s", "scaleDownDelay": "2s"}),
    )
    .await;
    let deployments = env.api::<Deployment>();
    let mut trials = vec![];
    for _ in 0..20 {
        wait_for(&deployments, "workers", "scaled to zero", |d| replicas(d) == 0).await;
        let start = Instant::now();
        xadd(&env, &stream, 1).await;
        wait_for_within(&deployments, "workers", "woken", Duration::from_secs(10), |d| {
            replicas(d) >= 1
        })
        .await;
        trials.push(start.elapsed());
        drain(&env, &stream).await;
    }
    trials.sort();
    let (median, max) = (trials[trials.len() / 2], trials[trials.len() - 1]);
    println!(
        "wake from zero over {} trials: median {median:?}, max {max:?}",
        trials.len()
    );
    assert!(median <= Duration::from_secs(2), "median {median:?} above the 2 s goal");
}

#[tokio::test]
async fn null_lag_after_xdel_is_counted_not_read_as_zero() {
    let (env, _op, stream) = setup(
        "as-null",
        json!({"minReplicas": 1, "maxReplicas": 3, "targetLatency": "30s", "processingTime": "100ms"}),
    )
    .await;
    let mut redis = env.redis().await;
    let ids = xadd_n(&mut redis, &stream, 10).await;
    // Deleting an entry in the middle makes Redis report the group's lag as NULL.
    let _: i64 = cmd(&mut redis, &["XDEL", &stream, &ids[3]]).await;
    let c = wait_for(&env.api::<Consumer>(), "workers", "lag 9, counted", |c: &Consumer| {
        c.status
            .as_ref()
            .is_some_and(|s| s.lag == Some(9) && s.lag_source.as_deref() == Some("counted"))
    })
    .await;
    println!(
        "NULL lag reported as {:?} ({:?})",
        c.status.as_ref().unwrap().lag,
        c.status.as_ref().unwrap().lag_source
    );
}

#[tokio::test]
async fn scale_down_keeps_the_workers_that_hold_pending_messages() {
    let (env, _op, stream) = setup(
        "as-safe",
        json!({"minReplicas": 1, "maxReplicas": 4, "targetLatency": "10s", "processingTime": "1s", "scaleDownDelay": "3s"}),
    )
    .await;
    let deployments = env.api::<Deployment>();
    xadd(&env, &stream, 200).await;
    wait_for(&deployments, "workers", "4 ready replicas", |d| {
        replicas(d) == 4 && d.status.as_ref().and_then(|s| s.ready_replicas) == Some(4)
    })
    .await;
    let pods = pod_names(&env, &[]);
    let pods: Vec<&str> = pods.split_whitespace().collect();
    assert_eq!(pods.len(), 4);
    // Two pods' workers each take one message and keep it; the rest is acknowledged.
    let mut redis = env.redis().await;
    for busy in &pods[..2] {
        let _: redis::Value = cmd(
            &mut redis,
            &[
                "XREADGROUP",
                "GROUP",
                "workers",
                busy,
                "COUNT",
                "1",
                "STREAMS",
                &stream,
                ">",
            ],
        )
        .await;
    }
    drain(&env, &stream).await;

    // Demand is gone, but two consumers hold messages: no fewer than 2 replicas,
    // and the ReplicaSet removed the idle pods (deletion cost 0), not the busy ones.
    let d = wait_for(&deployments, "workers", "2 replicas", |d| {
        replicas(d) == 2 && d.status.as_ref().and_then(|s| s.replicas) == Some(2)
    })
    .await;
    assert_eq!(replicas(&d), 2);
    let left = pod_names(&env, &["--field-selector=status.phase=Running"]);
    let mut left: Vec<&str> = left.split_whitespace().collect();
    left.sort();
    let mut busy = pods[..2].to_vec();
    busy.sort();
    assert_eq!(left, busy, "the busy workers must survive the scale-down");
    // Once they acknowledge, the Consumer goes down to minReplicas.
    drain_pending(&env, &stream, &busy).await;
    wait_for(&deployments, "workers", "minReplicas", |d| replicas(d) == 1).await;
    // The busy worker whose pod went away is removed from the group once it holds nothing.
    poll(TIMEOUT, "departed consumers to leave the group", || {
        let mut redis = redis.clone();
        let (env, stream) = (&env, &stream);
        async move {
            let consumers: Vec<std::collections::HashMap<String, redis::Value>> =
                cmd(&mut redis, &["XINFO", "CONSUMERS", stream, "workers"]).await;
            let running = pod_names(env, &[]);
            let departed: Vec<String> = consumers
                .iter()
                .map(|c| redis::from_redis_value::<String>(c["name"].clone()).unwrap())
                .filter(|n| n.starts_with("workers-") && !running.contains(n.as_str()))
                .collect();
            if departed.is_empty() {
                Ok(())
            } else {
                Err(format!("still in the group: {departed:?}"))
            }
        }
    })
    .await;
}

/// The busy consumers acknowledge what they hold.
async fn drain_pending(env: &TestEnv, stream: &str, consumers: &[&str]) {
    let mut redis = env.redis().await;
    for c in consumers {
        let pending: redis::streams::StreamPendingCountReply =
            cmd(&mut redis, &["XPENDING", stream, "workers", "-", "+", "10", c]).await;
        let mut ack = vec!["XACK", stream, "workers"];
        ack.extend(pending.ids.iter().map(|p| p.id.as_str()));
        if ack.len() > 3 {
            let _: i64 = cmd(&mut redis, &ack).await;
        }
    }
}

#[tokio::test]
async fn an_operator_restarted_mid_burst_makes_no_wrong_decision() {
    let (env, op, stream) = setup(
        "as-restart",
        json!({"minReplicas": 1, "maxReplicas": 6, "targetLatency": "10s", "processingTime": "1s", "scaleDownDelay": "5s"}),
    )
    .await;
    let deployments = env.api::<Deployment>();
    xadd(&env, &stream, 300).await;
    wait_for(&deployments, "workers", "6 replicas", |d| replicas(d) == 6).await;
    signal(op.pid(), "KILL");
    drop(op);
    let _restarted = Operator::start(&env.namespace, &[]);

    // Watch the Deployment for 8 samples of the new operator: the backlog is
    // still there, so nothing may scale it down for lack of history.
    use futures::StreamExt;
    let mut seen = vec![];
    let stream_of_changes = kube::runtime::watcher(
        deployments.clone(),
        kube::runtime::watcher::Config::default().fields("metadata.name=workers"),
    );
    let watch = kube::runtime::WatchStreamExt::applied_objects(stream_of_changes).for_each(|d| {
        if let Ok(d) = d {
            seen.push(replicas(&d));
        }
        futures::future::ready(())
    });
    let _ = tokio::time::timeout(Duration::from_secs(8), watch).await;
    assert!(!seen.is_empty());
    assert!(
        seen.iter().all(|r| *r == 6),
        "replicas changed after the restart with the backlog unchanged: {seen:?}"
    );
    // And the new operator does keep the status current.
    wait_for(
        &env.api::<Consumer>(),
        "workers",
        "lag reported by the restarted operator",
        |c: &Consumer| {
            c.status
                .as_ref()
                .is_some_and(|s| s.lag == Some(300) && s.desired_replicas == Some(6))
        },
    )
    .await;
}

/// The sampler's figures for streams in every state it reads differently:
/// idle with counters and without (`XINFO GROUPS`, plus `XINFO STREAM`),
/// busy (the sample script), a missing group, a missing stream. Each must be
/// what Redis itself reports.
#[tokio::test]
async fn the_sampler_reads_idle_and_busy_streams_as_redis_reports_them() {
    use streamq::redis::sampler::{Carried, Targets, sample};
    let mut redis = redis_client::connect(&redis_url()).await;
    let tag = format!("sampler-{:08x}", rand::random::<u32>());
    let key = |name: &str| format!("streamq-test:{{{tag}}}:{name}");
    let (counted, uncounted, busy, no_group, missing) = (
        key("counted"),
        key("uncounted"),
        key("busy"),
        key("no-group"),
        key("missing"),
    );
    // Idle, with counters: one entry read, acknowledged, its consumer gone.
    xadd_n(&mut redis, &counted, 1).await;
    redis_client::cmd::<()>(&mut redis, &["XGROUP", "CREATE", &counted, "g", "0"]).await;
    read_and_ack_all(&mut redis, &counted, "g", "w").await;
    redis_client::cmd::<()>(&mut redis, &["XGROUP", "DELCONSUMER", &counted, "g", "w"]).await;
    // Idle, no counters: a group at `$` that never read (entries-read NULL).
    xadd_n(&mut redis, &uncounted, 2).await;
    redis_client::cmd::<()>(&mut redis, &["XGROUP", "CREATE", &uncounted, "g", "$"]).await;
    xadd_n(&mut redis, &busy, 3).await;
    redis_client::cmd::<()>(&mut redis, &["XGROUP", "CREATE", &busy, "g", "0"]).await;
    xadd_n(&mut redis, &no_group, 4).await;

    let g = vec!["g".to_owned()];
    let targets: Targets = [&counted, &uncounted, &busy, &no_group, &missing]
        .into_iter()
        .map(|s| (s.clone(), g.clone()))
        .collect();
    let mut carried = Carried::default();
    let samples = sample(&mut redis, &targets, &mut carried).await.expect("sample");
    let added = |s: &str| samples.get(s).map(|s| s.entries_added);
    assert_eq!(
        [&counted, &uncounted, &busy, &no_group, &missing].map(|s| added(s)),
        [Some(Some(1)), Some(Some(2)), Some(Some(3)), Some(Some(4)), Some(None)],
        "entries-added per stream (None inside: the stream is missing)"
    );
    let group = |s: &str| samples[s].groups.get("g").cloned();
    let c = group(&counted).expect("counted group");
    assert_eq!(
        (c.entries_read, c.lag, c.pending, c.consumers.len()),
        (Some(1), 0, 0, 0)
    );
    let u = group(&uncounted).expect("uncounted group");
    assert_eq!((u.entries_read, u.lag, u.oldest_undelivered_ms), (None, 0, None));
    let b = group(&busy).expect("busy group");
    assert_eq!((b.lag, b.lag_source), (3, "exact"));
    assert!(
        b.oldest_undelivered_ms.is_some() && samples[&busy].now_ms.is_some(),
        "a busy stream's oldest undelivered entry and the clock are read: {:?}",
        samples[&busy]
    );
    assert_eq!(group(&no_group), None);
    assert!(samples[&missing].groups.is_empty());

    // The uncounted stream's entries-added is carried over while it stays
    // quiet, and read again once its group's last-delivered-id moves: here
    // one more entry, skipped with SETID, so lag stays 0 and counters NULL.
    assert!(carried.holds(&uncounted), "{carried:?}");
    let again = sample(&mut redis, &targets, &mut carried).await.expect("sample");
    assert_eq!(again[&uncounted].entries_added, Some(2));
    xadd_n(&mut redis, &uncounted, 1).await;
    redis_client::cmd::<()>(&mut redis, &["XGROUP", "SETID", &uncounted, "g", "$"]).await;
    let moved = sample(&mut redis, &targets, &mut carried).await.expect("sample");
    let u = &moved[&uncounted];
    assert_eq!(
        (u.entries_added, u.groups["g"].entries_read, u.groups["g"].lag),
        (Some(3), None, 0)
    );
    redis_client::cmd::<()>(&mut redis, &["DEL", &counted, &uncounted, &busy, &no_group]).await;
}
