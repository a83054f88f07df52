//! The autoscaler in the operator, closed over the real kube-apiserver
//! (controller-manager, scheduler, kwok) and redis-server. The test plays the
//! workers: it reads and acknowledges with XREADGROUP/XACK.

mod support;

use std::time::{Duration, Instant};

use k8s_openapi::{
    ByteString,
    api::{apps::v1::Deployment, core::v1::Secret},
};
use kube::api::{ObjectMeta, PostParams};
use serde_json::json;
use streamq::api::{ConditionStatus, Consumer, Queue};
use support::{Operator, TestEnv, wait_for, wait_for_within};

async fn setup(prefix: &str, autoscaling: serde_json::Value) -> (TestEnv, Operator, String) {
    let env = TestEnv::new(prefix).await;
    let op = Operator::start(&env.namespace, &[]);
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some("redis-admin".into()),
            ..Default::default()
        },
        data: Some([("url".to_owned(), ByteString(env.redis_url.as_bytes().to_vec()))].into()),
        ..Default::default()
    };
    env.api::<Secret>()
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let queue: Queue = serde_json::from_value(json!({
        "apiVersion": "streamq.dev/v1alpha1", "kind": "Queue", "metadata": {"name": "jobs"},
        "spec": {"broker": {"external": {"urlSecretRef": {"name": "redis-admin", "key": "url"}}}},
    }))
    .unwrap();
    env.api::<Queue>().create(&PostParams::default(), &queue).await.unwrap();
    let consumer: Consumer = serde_json::from_value(json!({
        "apiVersion": "streamq.dev/v1alpha1", "kind": "Consumer", "metadata": {"name": "workers"},
        "spec": {"queueRef": {"name": "jobs"}, "autoscaling": autoscaling,
                 "template": {"spec": {"containers": [{"name": "w", "image": "example.com/w:1"}]}}},
    }))
    .unwrap();
    env.api::<Consumer>()
        .create(&PostParams::default(), &consumer)
        .await
        .unwrap();
    let stream = format!("streamq:{{{}.jobs}}", env.namespace);
    wait_for(&env.api::<Consumer>(), "workers", "Ready", |c: &Consumer| {
        c.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == ConditionStatus::True)
        })
    })
    .await;
    (env, op, stream)
}

async fn xadd(env: &TestEnv, stream: &str, n: usize) {
    let mut redis = env.redis().await;
    let mut pipe = redis::pipe();
    for i in 0..n {
        pipe.cmd("XADD").arg(stream).arg("*").arg("data").arg(i).ignore();
    }
    let _: () = pipe.query_async(&mut redis).await.unwrap();
}

/// Plays the workers: delivers and acknowledges everything in the stream.
async fn drain(env: &TestEnv, stream: &str) {
    let mut redis = env.redis().await;
    loop {
        let read: redis::streams::StreamReadReply = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg("workers")
            .arg("test-worker")
            .arg("COUNT")
            .arg(1000)
            .arg("STREAMS")
            .arg(stream)
            .arg(">")
            .query_async(&mut redis)
            .await
            .unwrap();
        let ids: Vec<String> = read
            .keys
            .iter()
            .flat_map(|k| k.ids.iter().map(|e| e.id.clone()))
            .collect();
        if ids.is_empty() {
            return;
        }
        let _: i64 = redis::cmd("XACK")
            .arg(stream)
            .arg("workers")
            .arg(&ids)
            .query_async(&mut redis)
            .await
            .unwrap();
    }
}

fn replicas(d: &Deployment) -> i32 {
    d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0)
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
    assert!(
        status.last_scale_reason.unwrap().contains("lag"),
        "the reason names the lag"
    );

    // Workers ack everything: back to minReplicas, but not before scaleDownDelay.
    drain(&env, &stream).await;
    let drained = Instant::now();
    wait_for_within(
        &deployments,
        "workers",
        "back to minReplicas",
        Duration::from_secs(40),
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
    let ids: Vec<String> = {
        let mut pipe = redis::pipe();
        for i in 0..10 {
            pipe.cmd("XADD").arg(&stream).arg("*").arg("data").arg(i);
        }
        pipe.query_async(&mut redis).await.unwrap()
    };
    // Deleting an entry in the middle makes Redis report the group's lag as NULL.
    let _: i64 = redis::cmd("XDEL")
        .arg(&stream)
        .arg(&ids[3])
        .query_async(&mut redis)
        .await
        .unwrap();
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
