//! The Consumer controller against the real kube-apiserver (with the
//! controller-manager, scheduler and kwok) and redis-server.

mod support;

use k8s_openapi::api::apps::v1::Deployment;
use serde_json::json;
use streamq::api::Consumer;
use support::*;

/// A Consumer whose template carries labels, arguments and env of its own.
fn templated(name: &str, queue: &str, extra: serde_json::Value) -> Consumer {
    let spec = json!({
        "concurrency": 3,
        "template": {
            "metadata": {"labels": {"team": "payments"}},
            "spec": {"containers": [{
                "name": "worker", "image": "example.com/worker:1", "args": ["worker", "--", "./handle"],
                "env": [{"name": "STREAMQ_CONCURRENCY", "value": "9"}, {"name": "LOG_LEVEL", "value": "debug"}],
            }]},
        },
    });
    consumer(name, queue, with_fields(spec, extra))
}

fn pod_template(d: &Deployment) -> &k8s_openapi::api::core::v1::PodTemplateSpec {
    &d.spec.as_ref().unwrap().template
}

#[tokio::test]
async fn deployment_carries_the_template_plus_the_env_contract_and_rolls_on_change() {
    let env = TestEnv::new("c-deploy").await;
    let _op = Operator::start(&env.namespace, &[]);
    let queue = env.ready_queue("orders").await;
    let consumers = env.api::<Consumer>();
    env.create(&templated("billing", "orders", json!({"replicas": 2})))
        .await;

    let deployments = env.api::<Deployment>();
    let d = wait_for(&deployments, "billing", "2 ready replicas", |d: &Deployment| {
        d.status.as_ref().and_then(|s| s.ready_replicas) == Some(2)
    })
    .await;
    let template = pod_template(&d);
    assert_eq!(
        template.metadata.as_ref().unwrap().labels.as_ref().unwrap()["team"],
        "payments"
    );
    let container = &template.spec.as_ref().unwrap().containers[0];
    assert_eq!(container.image.as_deref(), Some("example.com/worker:1"));
    assert_eq!(
        container.args.as_deref(),
        Some(&["worker".to_owned(), "--".into(), "./handle".into()][..])
    );
    let env_var = |name: &str| container.env.as_ref().unwrap().iter().find(|e| e.name == name).cloned();
    assert_eq!(
        env_var("STREAMQ_CONCURRENCY").unwrap().value.as_deref(),
        Some("9"),
        "the user's value wins"
    );
    assert_eq!(env_var("LOG_LEVEL").unwrap().value.as_deref(), Some("debug"));
    assert_eq!(
        env_var("STREAMQ_STREAM").unwrap().value,
        queue.status.as_ref().unwrap().stream_key
    );
    assert_eq!(env_var("STREAMQ_GROUP").unwrap().value.as_deref(), Some("billing"));
    let url = env_var("STREAMQ_REDIS_URL").unwrap();
    assert!(url.value.is_none());
    assert_eq!(url.value_from.unwrap().secret_key_ref.unwrap().name, "orders-consumer");

    // The group exists in Redis.
    let mut redis = env.redis().await;
    let groups: Vec<Vec<redis::Value>> = cmd(&mut redis, &["XINFO", "GROUPS", &queue.stream_key()]).await;
    assert!(format!("{groups:?}").contains("billing"), "{groups:?}");

    let c = wait_for(&consumers, "billing", "status with 2 ready", |c: &Consumer| {
        c.status
            .as_ref()
            .is_some_and(|s| s.ready_replicas == Some(2) && s.selector.is_some())
    })
    .await;
    assert_eq!(
        c.status.unwrap().selector.as_deref(),
        Some("streamq.dev/consumer=billing")
    );
    let pods = env.kubectl_ok(&[
        "get",
        "pods",
        "-l",
        "streamq.dev/consumer=billing",
        "-o",
        "jsonpath={.items[*].status.phase}",
    ]);
    assert_eq!(pods.split_whitespace().filter(|p| *p == "Running").count(), 2, "{pods}");

    // A template change rolls the Deployment.
    update(&consumers, "billing", |c: &mut Consumer| {
        c.spec.template.spec.as_mut().unwrap().containers[0].image = Some("example.com/worker:2".into());
    })
    .await;
    wait_for(&deployments, "billing", "rolled to worker:2", |d: &Deployment| {
        let image =
            pod_template(d).spec.as_ref().unwrap().containers[0].image.as_deref() == Some("example.com/worker:2");
        let rolled = d
            .status
            .as_ref()
            .is_some_and(|s| s.updated_replicas == Some(2) && s.ready_replicas == Some(2));
        image && rolled && d.status.as_ref().and_then(|s| s.observed_generation) == d.metadata.generation
    })
    .await;
}

#[tokio::test]
async fn fixed_replicas_follow_spec_and_kubectl_scale() {
    let env = TestEnv::new("c-scale").await;
    let _op = Operator::start(&env.namespace, &[]);
    env.ready_queue("orders").await;
    env.create(&templated("billing", "orders", json!({"replicas": 1})))
        .await;
    let deployments = env.api::<Deployment>();
    wait_for(&deployments, "billing", "1 replica", |d: &Deployment| {
        d.spec.as_ref().unwrap().replicas == Some(1)
    })
    .await;
    env.kubectl_ok(&["scale", "consumer", "billing", "--replicas=3"]);
    wait_for(&deployments, "billing", "3 ready replicas", |d: &Deployment| {
        d.spec.as_ref().unwrap().replicas == Some(3) && d.status.as_ref().and_then(|s| s.ready_replicas) == Some(3)
    })
    .await;
    wait_for(
        &env.api::<Consumer>(),
        "billing",
        "status.replicas 3",
        |c: &Consumer| {
            c.status
                .as_ref()
                .is_some_and(|s| s.replicas == Some(3) && s.desired_replicas == Some(3))
        },
    )
    .await;
    let out = env.kubectl_ok(&["get", "sqc", "billing"]);
    assert!(
        out.lines().nth(1).unwrap().split_whitespace().collect::<Vec<_>>()[1..4] == ["orders", "3", "3"],
        "{out}"
    );
}

#[tokio::test]
async fn a_consumer_of_a_missing_queue_says_so_and_recovers() {
    let env = TestEnv::new("c-noqueue").await;
    let _op = Operator::start(&env.namespace, &[]);
    env.create(&templated("billing", "later", json!({}))).await;
    let c = wait_for(&env.api::<Consumer>(), "billing", "QueueNotFound", |c: &Consumer| {
        c.condition("Degraded").is_some_and(|d| d.reason == "QueueNotFound")
    })
    .await;
    let message = &c.condition("Ready").unwrap().message;
    assert!(message.contains("later") && message.contains("create it"), "{message}");
    env.ready_queue("later").await;
    wait_for(
        &env.api::<Deployment>(),
        "billing",
        "a Deployment once the Queue exists",
        |_| true,
    )
    .await;
}

#[tokio::test]
async fn start_from_latest_skips_what_is_already_in_the_stream() {
    let env = TestEnv::new("c-latest").await;
    let _op = Operator::start(&env.namespace, &[]);
    let queue = env.ready_queue("orders").await;
    let mut redis = env.redis().await;
    let old: String = cmd(&mut redis, &["XADD", &queue.stream_key(), "*", "data", "old"]).await;
    for (name, start) in [("fresh", "Latest"), ("all", "Earliest")] {
        env.create(&templated(name, "orders", json!({"startFrom": start})))
            .await;
    }
    for name in ["fresh", "all"] {
        wait_for(&env.api::<Deployment>(), name, "Deployment", |_| true).await;
    }
    let groups: Vec<std::collections::HashMap<String, redis::Value>> =
        cmd(&mut redis, &["XINFO", "GROUPS", &queue.stream_key()]).await;
    let last_delivered = |g: &str| {
        let group = groups
            .iter()
            .find(|m| m["name"] == redis::Value::BulkString(g.as_bytes().to_vec()))
            .unwrap();
        redis::from_redis_value::<String>(group["last-delivered-id"].clone()).unwrap()
    };
    assert_eq!(last_delivered("fresh"), old, "Latest starts after the existing entry");
    assert_eq!(last_delivered("all"), "0-0", "Earliest starts at the beginning");
}

/// The groups on `stream`, by name.
async fn group_names(redis: &mut redis::aio::MultiplexedConnection, stream: &str) -> Vec<String> {
    let groups: Vec<std::collections::HashMap<String, redis::Value>> = cmd(redis, &["XINFO", "GROUPS", stream]).await;
    groups
        .iter()
        .filter_map(|g| redis::from_redis_value::<String>(g["name"].clone()).ok())
        .collect()
}

/// The sampler's sight of a group spares the round its XGROUP CREATE; a
/// group removed behind the operator's back must still come back. With no
/// resync due for an hour, only the sampler's wake-up can bring it back,
/// and only the sampler's figures can reach the status.
#[tokio::test]
async fn a_group_destroyed_in_redis_is_created_again() {
    let env = TestEnv::new("c-regroup").await;
    let _op = Operator::start_with(&env.namespace, &["--resync-interval", "600s"], &[]);
    let queue = env.ready_queue("jobs").await;
    let autoscaled = json!({"autoscaling": {"minReplicas": 0, "maxReplicas": 2, "targetLatency": "20s"}});
    env.create(&consumer("workers", "jobs", autoscaled)).await;
    let sampled = wait_for(&env.api::<Consumer>(), "workers", "a sampled lag", |c| {
        c.status
            .as_ref()
            .is_some_and(|s| s.lag_source.as_deref() == Some("exact"))
    })
    .await;
    let (stream, group) = (queue.stream_key(), sampled.group());
    let mut redis = env.redis().await;
    assert!(group_names(&mut redis, &stream).await.contains(&group));
    let destroyed: i64 = cmd(&mut redis, &["XGROUP", "DESTROY", &stream, &group]).await;
    assert_eq!(destroyed, 1);
    // Within 10 s: the figures' own wake-up (the lag is unknown without the
    // group) cannot come sooner than 15 s after the write awaited above.
    poll(std::time::Duration::from_secs(10), "the group created again", || {
        let (mut redis, stream, group) = (redis.clone(), stream.clone(), group.clone());
        async move {
            let now = group_names(&mut redis, &stream).await;
            if now.contains(&group) {
                Ok(())
            } else {
                Err(format!("groups on {stream}: {now:?}"))
            }
        }
    })
    .await;
}
