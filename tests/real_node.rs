//! The product as users run it, on the local cluster's real node (a kubelet
//! with containerd; tests/cluster/up): the chart's operator in pods, a
//! managed Queue's Redis pod on a PersistentVolumeClaim, the examples as
//! written, and workers that drain on scale-down. Pods go to the real node
//! because their namespace carries `streamq.dev/real-node=true`.

mod support;

use std::time::Duration;

use k8s_openapi::api::{apps::v1::Deployment, coordination::v1::Lease, core::v1::Pod};
use kube::{
    Api,
    api::{DeleteParams, ListParams, Patch, PatchParams},
};
use serde_json::json;
use streamq::api::{ConditionStatus, Consumer, Queue};
use support::{
    TestEnv,
    chart::Release,
    kubectl_ok, kubectl_stdin,
    real_node::{IMAGE_TAG, POD_TIMEOUT, pod_redis_url, real_env, real_node, shell_image},
    repo_root, wait_for_within,
};

async fn wait_queue_ready(env: &TestEnv, name: &str) -> Queue {
    let queues: Api<Queue> = Api::namespaced(env.client.clone(), &env.namespace);
    wait_for_within(&queues, name, "Ready", POD_TIMEOUT, |q| {
        q.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == ConditionStatus::True)
        })
    })
    .await
}

fn secret_value(env: &TestEnv, secret: &str, key: &str) -> String {
    let template = format!("go-template={{{{index .data \"{key}\" | base64decode}}}}");
    kubectl_ok(Some(&env.namespace), &["get", "secret", secret, "-o", &template])
}

/// Runs `script` in a pod of the `-shell` image with the Queue's producer
/// credentials, waits for it to finish, and returns its log.
async fn in_pod(env: &TestEnv, name: &str, credentials_secret: &str, script: &str) -> String {
    let ns = env.namespace.as_str();
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "containers": [{
                "name": "c",
                "image": shell_image(),
                "command": ["/bin/sh", "-ec", script],
                "env": [
                    {"name": "STREAMQ_REDIS_URL", "valueFrom": {"secretKeyRef": {"name": credentials_secret, "key": "url"}}},
                    {"name": "STREAMQ_STREAM", "valueFrom": {"secretKeyRef": {"name": credentials_secret, "key": "stream"}}},
                ],
            }],
        },
    });
    let out = kubectl_stdin(Some(ns), &["apply", "-f", "-"], &pod.to_string());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), ns);
    let done = wait_for_within(&pods, name, "Succeeded or Failed", POD_TIMEOUT, |p| {
        matches!(
            p.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        )
    })
    .await;
    let log = kubectl_ok(Some(ns), &["logs", name]);
    assert_eq!(
        done.status.and_then(|s| s.phase).as_deref(),
        Some("Succeeded"),
        "pod {name} failed:\n{log}"
    );
    log
}

/// `redis-cli` as the managed Redis' administrator, inside its pod.
fn managed_redis_cli(env: &TestEnv, queue: &str, args: &[&str]) -> String {
    let password = secret_value(env, &format!("{queue}-redis-admin"), "password");
    let pod = format!("{queue}-redis-0");
    let mut all = vec![
        "exec",
        pod.as_str(),
        "--",
        "redis-cli",
        "--no-auth-warning",
        "--user",
        "streamq-admin",
        "--pass",
        password.as_str(),
    ];
    all.extend_from_slice(args);
    kubectl_ok(Some(&env.namespace), &all).trim().to_owned()
}

/// The chart's two operator pods run the real image on the real node, become
/// Ready through their probes and elect one leader; the leader provisions a
/// managed Queue whose Redis keeps its append-only file on a PVC, and
/// deleting that Redis pod loses no acknowledged message.
#[tokio::test]
async fn chart_operator_and_managed_queue_on_the_real_node() {
    let env = real_env("real-managed").await;
    let ns = env.namespace.as_str();
    let release = Release::install(
        &env,
        &[&format!("image.tag={IMAGE_TAG}"), "replicaCount=2", "logFormat=text"],
    );
    wait_operator_ready(&env, &release, 2).await;
    let operators = kubectl_ok(
        Some(ns),
        &["get", "pod", "-l", "app.kubernetes.io/name=streamq", "-o", "name"],
    );
    let operator_pods: Vec<&str> = operators.lines().map(|l| l.trim_start_matches("pod/")).collect();
    assert_eq!(operator_pods.len(), 2, "{operators}");
    let node = real_node();
    for pod in &operator_pods {
        let on = kubectl_ok(Some(ns), &["get", "pod", pod, "-o", "jsonpath={.spec.nodeName}"]);
        assert_eq!(on, node, "operator pod {pod} is not on the real node");
    }
    let leases: Api<Lease> = Api::namespaced(env.client.clone(), ns);
    let lease = wait_for_within(&leases, "streamq-operator", "a holder", POD_TIMEOUT, |l| {
        l.spec.as_ref().and_then(|s| s.holder_identity.as_ref()).is_some()
    })
    .await;
    let holder = lease.spec.and_then(|s| s.holder_identity).unwrap_or_default();
    assert!(
        operator_pods.iter().any(|p| holder.starts_with(p)),
        "holder {holder} is none of {operator_pods:?}"
    );

    let queue = json!({
        "apiVersion": "streamq.dev/v1alpha1", "kind": "Queue",
        "metadata": {"name": "orders"},
        "spec": {"broker": {"managed": {"appendfsync": "always", "storage": {"size": "100Mi", "storageClassName": "standard"}}}},
    });
    let out = kubectl_stdin(Some(ns), &["apply", "-f", "-"], &queue.to_string());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_queue_ready(&env, "orders").await;
    let pvc = kubectl_ok(
        Some(ns),
        &["get", "pvc", "data-orders-redis-0", "-o", "jsonpath={.status.phase}"],
    );
    assert_eq!(pvc, "Bound");
    let aof = kubectl_ok(Some(ns), &["exec", "orders-redis-0", "--", "ls", "/data/appendonlydir"]);
    assert!(aof.contains(".aof"), "no append-only file on the claim: {aof}");

    let published = in_pod(&env, "publish", "orders-producer", "seq 1 1000 | streamq publish -").await;
    assert!(published.contains("published 1000 messages"), "{published}");
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), ns);
    let before = pods.get("orders-redis-0").await.unwrap().metadata.uid;
    pods.delete("orders-redis-0", &DeleteParams::default()).await.unwrap();
    wait_for_within(&pods, "orders-redis-0", "recreated and Ready", POD_TIMEOUT, |p| {
        p.metadata.uid != before
            && p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
    })
    .await;
    wait_queue_ready(&env, "orders").await;
    let stream = secret_value(&env, "orders-producer", "stream");
    let length: u64 = managed_redis_cli(&env, "orders", &["XLEN", &stream]).parse().unwrap();
    println!(
        "managed Queue, Redis pod deleted: published 1000, acknowledged 1000, in the stream after restart {length}, lost {}",
        1000 - length.min(1000)
    );
    assert_eq!(length, 1000, "acknowledged messages were lost with the Redis pod");
    drop(release);
}

/// `examples/` applied unchanged: the external Queue and the autoscaled
/// Consumer. Real worker pods, woken from zero, consume and ack what is
/// published; then a scale-down lets the removed pods finish their
/// in-flight messages: none lost, none left pending.
#[tokio::test]
async fn examples_as_written_and_a_graceful_scale_down() {
    let env = real_env("real-examples").await;
    let ns = env.namespace.as_str();
    let release = Release::install(&env, &[&format!("image.tag={IMAGE_TAG}"), "replicaCount=1"]);
    wait_operator_ready(&env, &release, 1).await;
    let pod_redis_url = pod_redis_url();
    kubectl_ok(
        Some(ns),
        &[
            "create",
            "secret",
            "generic",
            "redis-url",
            &format!("--from-literal=url={pod_redis_url}"),
        ],
    );
    kubectl_ok(Some(ns), &["apply", "-f", "examples/"]);
    wait_queue_ready(&env, "orders").await;

    in_pod(&env, "publish", "orders-producer", "seq 1 200 | streamq publish -").await;
    let consumers: Api<Consumer> = Api::namespaced(env.client.clone(), ns);
    let billing = wait_for_within(&consumers, "billing", "all 200 consumed and acked", POD_TIMEOUT, |c| {
        c.status
            .as_ref()
            .is_some_and(|s| s.lag == Some(0) && s.pending == Some(0) && s.ready_replicas.unwrap_or(0) >= 1)
    })
    .await;
    let stream = secret_value(&env, "orders-producer", "stream");
    let group_read = redis_group_entries_read(&env, &stream, "billing").await;
    assert_eq!(group_read, 200, "the group read {group_read} of 200");
    println!(
        "examples: 200 published, consumed by {} real worker pod(s)",
        billing.status.and_then(|s| s.ready_replicas).unwrap_or(0)
    );
    let startup = measured_pod_startup(&consumers, "billing").await;
    println!("examples: billing's measured pod start-up {startup:?}");

    // Slow handlers on 3 pods; scaled to 1 while every pod holds a message.
    let slow = json!({
        "apiVersion": "streamq.dev/v1alpha1", "kind": "Consumer",
        "metadata": {"name": "slow"},
        "spec": {
            "queueRef": {"name": "orders"}, "startFrom": "Latest", "replicas": 3, "concurrency": 1,
            "template": {"spec": {
                "terminationGracePeriodSeconds": 30,
                "containers": [{"name": "worker", "image": shell_image(),
                    "args": ["worker", "--grace", "25s", "--", "/bin/sh", "-c", "cat > /dev/null; sleep 4"]}],
            }},
        },
    });
    let out = kubectl_stdin(Some(ns), &["apply", "-f", "-"], &slow.to_string());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let deployments: Api<Deployment> = Api::namespaced(env.client.clone(), ns);
    wait_for_within(&deployments, "slow", "3 ready workers", POD_TIMEOUT, |d| {
        d.status.as_ref().and_then(|s| s.ready_replicas) == Some(3)
    })
    .await;
    in_pod(&env, "publish-slow", "orders-producer", "seq 1 12 | streamq publish -").await;
    wait_group(&env, &stream, "slow", "every worker busy", |_, pending| pending == 3).await;
    consumers
        .patch(
            "slow",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 1}})),
        )
        .await
        .unwrap();
    // A pod killed with work in hand would leave it pending for the 5-minute visibility timeout.
    wait_for_within(&deployments, "slow", "scaled to 1", POD_TIMEOUT, |d| {
        d.status.as_ref().and_then(|s| s.replicas) == Some(1)
    })
    .await;
    wait_group(&env, &stream, "slow", "drained after the scale-down", |lag, pending| {
        lag == 0 && pending == 0
    })
    .await;
    // entries-read counts from the stream's first entry: the group read
    // every entry the stream was ever given, the last 12 of them its own.
    assert_eq!(
        redis_group_entries_read(&env, &stream, "slow").await,
        stream_entries_added(&env, &stream).await
    );
    let dead = redis_admin(&env, &["XLEN", &format!("{stream}:dlq")]).await;
    assert_eq!(dead, 0, "messages were dead-lettered during the scale-down");
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), ns);
    let left = pods
        .list(&ListParams::default().labels("streamq.dev/consumer=slow"))
        .await
        .unwrap();
    println!(
        "scale-down 3 → 1 with 12 slow messages: 12 acked, 0 pending, 0 dead-lettered; pods left {}",
        left.items.len()
    );
}

/// The Consumer's `status.podStartup` once the operator measured it from a Ready pod.
async fn measured_pod_startup(consumers: &Api<Consumer>, name: &str) -> Duration {
    let measured = wait_for_within(consumers, name, "its pod start-up measured", POD_TIMEOUT, |c| {
        c.status.as_ref().is_some_and(|s| s.pod_startup.is_some())
    })
    .await;
    let text = measured.status.and_then(|s| s.pod_startup).unwrap_or_default();
    let startup = text
        .parse::<streamq::api::Duration>()
        .unwrap_or_else(|e| panic!("podStartup {text:?} is not a duration: {e}"))
        .as_std();
    // The API's times are to the second, so a fast pod may read 0s.
    assert!(startup < POD_TIMEOUT, "podStartup {text} is no pod's creation → Ready");
    startup
}

/// Waits until the chart's Deployment has `replicas` pods Ready (through their probes).
async fn wait_operator_ready(env: &TestEnv, release: &Release, replicas: i32) {
    let deployments: Api<Deployment> = Api::namespaced(env.client.clone(), &env.namespace);
    wait_for_within(
        &deployments,
        &release.fullname,
        "operator pods Ready",
        POD_TIMEOUT,
        |d| d.status.as_ref().and_then(|s| s.ready_replicas) == Some(replicas),
    )
    .await;
}

/// Polls `group`'s (lag, pending) in the host's Redis until `done` holds;
/// within 120 s, less than the 5-minute visibility timeout, so a message left
/// pending by a killed pod cannot be reclaimed in time and fails the wait.
async fn wait_group(env: &TestEnv, stream: &str, group: &str, what: &str, done: impl Fn(u64, u64) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let (lag, pending) = group_lag_pending(env, stream, group).await;
        if done(lag, pending) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{group}: {what} did not happen (lag {lag}, pending {pending})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn group_lag_pending(env: &TestEnv, stream: &str, group: &str) -> (u64, u64) {
    let g = group_info(env, stream, group).await;
    let int = |k: &str| match g.get(k) {
        Some(::redis::Value::Int(n)) => *n as u64,
        _ => u64::MAX,
    };
    (int("lag"), int("pending"))
}

async fn group_info(env: &TestEnv, stream: &str, group: &str) -> std::collections::HashMap<String, ::redis::Value> {
    let mut conn = support::redis_client::connect(&env.redis_url).await;
    let groups: Vec<std::collections::HashMap<String, ::redis::Value>> = ::redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(stream)
        .query_async(&mut conn)
        .await
        .unwrap();
    groups
        .into_iter()
        .find(|g| matches!(g.get("name"), Some(::redis::Value::BulkString(n)) if n == group.as_bytes()))
        .unwrap_or_else(|| panic!("no group {group} on {stream}"))
}

async fn redis_admin(env: &TestEnv, args: &[&str]) -> u64 {
    let mut conn = support::redis_client::connect(&env.redis_url).await;
    let mut cmd = ::redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query_async(&mut conn).await.unwrap()
}

/// `entries-added` of the stream: every entry it was ever given.
async fn stream_entries_added(env: &TestEnv, stream: &str) -> u64 {
    let mut conn = support::redis_client::connect(&env.redis_url).await;
    let info: std::collections::HashMap<String, ::redis::Value> = ::redis::cmd("XINFO")
        .arg("STREAM")
        .arg(stream)
        .query_async(&mut conn)
        .await
        .unwrap();
    match info.get("entries-added") {
        Some(::redis::Value::Int(n)) => *n as u64,
        other => panic!("entries-added of {stream}: {other:?}"),
    }
}

/// `entries-read` of `group`: how many entries it was handed.
async fn redis_group_entries_read(env: &TestEnv, stream: &str, group: &str) -> u64 {
    match group_info(env, stream, group).await.get("entries-read") {
        Some(::redis::Value::Int(n)) => *n as u64,
        other => panic!("entries-read of {group}: {other:?}"),
    }
}

#[test]
fn dockerfile_and_local_image_agree() {
    let dockerfile = std::fs::read_to_string(repo_root().join("Dockerfile")).unwrap();
    let runtime = &dockerfile[dockerfile.rfind("AS runtime").expect("a runtime stage")..];
    let build = std::fs::read_to_string(repo_root().join("tests/cluster/images/build")).unwrap();
    for (docker, local) in [
        ("USER 65532:65532", r#""User":"65532:65532""#),
        (
            r#"ENTRYPOINT ["/usr/local/bin/streamq"]"#,
            r#""Entrypoint":["/usr/local/bin/streamq"]"#,
        ),
        (r#"CMD ["run"]"#, r#""Cmd":["run"]"#),
        ("/usr/local/bin/streamq\n", ":/usr/local/bin/streamq:0755"),
    ] {
        assert!(
            runtime.contains(docker),
            "the Dockerfile's runtime stage lacks {docker}"
        );
        assert!(
            build.contains(local),
            "the locally built image lacks {local} (Dockerfile: {docker})"
        );
    }
}
