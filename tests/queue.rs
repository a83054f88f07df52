//! The Queue controller against the real kube-apiserver and redis-server.

mod support;

use std::{process::Stdio, time::Duration};

use k8s_openapi::api::{apps::v1::StatefulSet, core::v1::Secret};
use kube::api::{DeleteParams, PostParams};
use redis::AsyncCommands;
use serde_json::json;
use streamq::api::{ConditionStatus, Queue};
use support::{fake_redis::fake_redis_6, redis_server::RedisServer, *};

/// A namespace with the Secret `redis-admin` for the shared redis-server, and
/// an operator that gives up a Queue's Redis cleanup after 5 s.
async fn setup(prefix: &str) -> (TestEnv, Operator) {
    let env = TestEnv::new(prefix).await;
    env.create_admin_secret().await;
    let op = Operator::start_with(&env.namespace, &["--queue-cleanup-timeout", "5s"], &[]);
    (env, op)
}

/// A connection as the user of a credentials Secret.
async fn connect_as(env: &TestEnv, secret: &str) -> redis::aio::MultiplexedConnection {
    connect(&env.secret_text(secret, "url").await).await
}

#[tokio::test]
async fn external_queue_provisions_streams_users_and_working_secrets() {
    let (env, _op) = setup("q-external").await;
    env.create(&external_queue("orders", json!({}))).await;
    let q = wait_provisioned(&env, "orders").await;
    let status = q.status.unwrap();
    let stream = format!("streamq:{{{}.orders}}", env.namespace);
    let dlq = format!("{stream}:dlq");
    assert_eq!(status.stream_key.as_deref(), Some(stream.as_str()));
    assert_eq!(status.dead_letter_stream_key.as_deref(), Some(dlq.as_str()));
    assert_eq!(status.producer_secret.as_deref(), Some("orders-producer"));
    assert_eq!(status.consumer_secret.as_deref(), Some("orders-consumer"));

    let mut admin = env.redis().await;
    for key in [&stream, &dlq] {
        let kind: String = cmd(&mut admin, &["TYPE", key]).await;
        assert_eq!(kind, "stream", "{key}");
    }
    let groups: Vec<redis::Value> = cmd(&mut admin, &["XINFO", "GROUPS", &stream]).await;
    assert!(
        groups.is_empty(),
        "the operator must leave no group of its own behind: {groups:?}"
    );

    // The producer may XADD to its stream and nothing else.
    let mut producer = connect_as(&env, "orders-producer").await;
    let _: String = producer.xadd(&stream, "*", &[("data", "hello")]).await.unwrap();
    for args in [
        vec!["XREADGROUP", "GROUP", "g", "c", "STREAMS", &stream, ">"],
        vec!["XADD", "other-key", "*", "data", "x"],
        vec!["XRANGE", &stream, "-", "+"],
        vec!["GET", &stream],
    ] {
        assert_noperm(&try_cmd(&mut producer, &args).await, &format!("producer: {args:?}"));
    }

    // The consumer may consume and dead-letter, but not produce or administer.
    let _: () = cmd(&mut admin, &["XGROUP", "CREATE", &stream, "g", "0"]).await;
    let mut consumer = connect_as(&env, "orders-consumer").await;
    let read: redis::Value = cmd(
        &mut consumer,
        &["XREADGROUP", "GROUP", "g", "c1", "COUNT", "1", "STREAMS", &stream, ">"],
    )
    .await;
    assert!(format!("{read:?}").contains("hello"), "{read:?}");
    let _: String = consumer.xadd(&dlq, "*", &[("data", "dead")]).await.unwrap();
    let _: i64 = consumer
        .hincr(format!("{stream}:stats:g"), "processed:c1", 1)
        .await
        .unwrap();
    let other = format!("{stream}-other");
    for args in [
        vec!["XADD", &stream, "*", "data", "x"],
        vec!["FLUSHALL"],
        vec!["CONFIG", "GET", "maxmemory"],
        vec!["XGROUP", "DESTROY", &stream, "g"],
        vec!["XADD", &other, "*", "d", "x"],
    ] {
        assert_noperm(&try_cmd(&mut consumer, &args).await, &format!("consumer: {args:?}"));
    }

    // The Secrets work with redis-cli -u as they are.
    for (secret, args) in [
        ("orders-producer", vec!["XADD", stream.as_str(), "*", "data", "cli"]),
        ("orders-consumer", vec!["XINFO", "STREAM", stream.as_str()]),
    ] {
        let url = env.secret_text(secret, "url").await;
        let out = std::process::Command::new("redis-cli")
            .args(["--no-auth-warning", "-u", &url])
            .args(&args)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && !stdout.contains("ERR") && !stdout.contains("NOPERM"),
            "{secret}: {stdout}"
        );
    }
    for key in ["url", "username", "password", "stream", "deadLetterStream"] {
        assert!(!env.secret_text("orders-consumer", key).await.is_empty(), "{key}");
    }
    // Status columns: length counts the two messages added.
    wait_for(&env.api::<Queue>(), "orders", "length 2", |q: &Queue| {
        q.status.as_ref().and_then(|s| s.length) == Some(2)
    })
    .await;
}

#[tokio::test]
async fn deleted_stream_and_acl_user_come_back_with_an_event() {
    let (env, _op) = setup("q-drift").await;
    env.create(&external_queue("jobs", json!({}))).await;
    wait_provisioned(&env, "jobs").await;
    let stream = format!("streamq:{{{}.jobs}}", env.namespace);
    let user = format!("streamq.{}.jobs.consumer", env.namespace);
    let mut admin = env.redis().await;
    let _: () = cmd(&mut admin, &["DEL", &stream]).await;
    let _: () = cmd(&mut admin, &["ACL", "DELUSER", &user]).await;

    let stream_event = wait_event(&env, "StreamRecreated").await;
    assert!(stream_event[0].contains(&stream), "{stream_event:?}");
    let user_event = wait_event(&env, "AclUserRecreated").await;
    assert!(user_event.iter().any(|n| n.contains(&user)), "{user_event:?}");
    let kind: String = cmd(&mut admin, &["TYPE", &stream]).await;
    assert_eq!(kind, "stream");
    // The recreated user has its old password: the consumer Secret still works.
    let mut consumer = connect_as(&env, "jobs-consumer").await;
    let _: redis::Value = cmd(&mut consumer, &["XINFO", "STREAM", &stream]).await;
}

/// The operator sends its Lua scripts by SHA1 (EVALSHA). A server that has
/// lost them (a restart, SCRIPT FLUSH) is given them again within the round:
/// the drift below is repaired only if the snapshot and maintenance scripts run.
#[tokio::test]
async fn a_server_that_lost_the_scripts_is_given_them_again() {
    let (env, _op) = setup("q-noscript").await;
    env.create(&external_queue("jobs", json!({}))).await;
    wait_provisioned(&env, "jobs").await;
    let stream = format!("streamq:{{{}.jobs}}", env.namespace);
    let mut admin = env.redis().await;
    let _: () = cmd(&mut admin, &["SCRIPT", "FLUSH"]).await;
    let _: () = cmd(&mut admin, &["DEL", &stream]).await;
    let event = wait_event(&env, "StreamRecreated").await;
    assert!(event[0].contains(&stream), "{event:?}");
    let kind: String = cmd(&mut admin, &["TYPE", &stream]).await;
    assert_eq!(kind, "stream");
}

#[tokio::test]
async fn retention_never_trims_unacknowledged_entries() {
    let (env, _op) = setup("q-retain").await;
    // Created before the Queue so no trim happens before the group exists.
    let stream = format!("streamq:{{{}.logs}}", env.namespace);
    let mut admin = env.redis().await;
    let _: () = cmd(&mut admin, &["XGROUP", "CREATE", &stream, "g", "0", "MKSTREAM"]).await;
    let added = xadd_n(&mut admin, &stream, 1000).await;
    // Deliver 600, acknowledge the first 300: 300 pending, 400 undelivered.
    let read: redis::streams::StreamReadReply = cmd(
        &mut admin,
        &["XREADGROUP", "GROUP", "g", "c", "COUNT", "600", "STREAMS", &stream, ">"],
    )
    .await;
    let mut ack = vec!["XACK", stream.as_str(), "g"];
    ack.extend(read.keys[0].ids[..300].iter().map(|e| e.id.as_str()));
    let _: i64 = cmd(&mut admin, &ack).await;
    let unacked = &added[300..];

    env.create(&external_queue("logs", json!({"retention": {"maxLength": 100}})))
        .await;
    wait_provisioned(&env, "logs").await;
    wait_for(
        &env.api::<Queue>(),
        "logs",
        "some acknowledged entries trimmed",
        |q: &Queue| q.status.as_ref().and_then(|s| s.length).is_some_and(|l| l < 1000),
    )
    .await;
    let remaining: redis::streams::StreamRangeReply = cmd(&mut admin, &["XRANGE", &stream, "-", "+"]).await;
    let remaining: std::collections::HashSet<String> = remaining.ids.into_iter().map(|e| e.id).collect();
    let lost: Vec<&String> = unacked.iter().filter(|id| !remaining.contains(*id)).collect();
    assert!(lost.is_empty(), "{} unacknowledged entries were trimmed", lost.len());
    println!("maxLength 100 with 700 unprocessed: {} entries kept", remaining.len());
}

#[tokio::test]
async fn retention_with_drop_unprocessed_is_a_hard_cap() {
    let (env, _op) = setup("q-cap").await;
    let stream = format!("streamq:{{{}.metrics}}", env.namespace);
    let mut admin = env.redis().await;
    let _: () = cmd(&mut admin, &["XGROUP", "CREATE", &stream, "g", "0", "MKSTREAM"]).await;
    xadd_n(&mut admin, &stream, 1000).await;
    env.create(&external_queue(
        "metrics",
        json!({"retention": {"maxLength": 100, "dropUnprocessed": true}}),
    ))
    .await;
    wait_for(&env.api::<Queue>(), "metrics", "length 100", |q: &Queue| {
        q.status.as_ref().and_then(|s| s.length) == Some(100)
    })
    .await;
    let len: u64 = admin.xlen(&stream).await.unwrap();
    assert_eq!(len, 100);
}

#[tokio::test]
async fn exhausted_messages_are_dead_lettered_with_metadata_and_acked() {
    let (env, _op) = setup("q-dlq").await;
    env.create(&external_queue(
        "mail",
        json!({"delivery": {"maxDeliveries": 2, "visibilityTimeout": "1s"}}),
    ))
    .await;
    wait_provisioned(&env, "mail").await;
    let stream = format!("streamq:{{{}.mail}}", env.namespace);
    let dlq = format!("{stream}:dlq");
    let mut admin = env.redis().await;
    let _: () = cmd(&mut admin, &["XGROUP", "CREATE", &stream, "g", "0"]).await;
    let id: String = admin
        .xadd(&stream, "*", &[("data", "poison"), ("tenant", "acme")])
        .await
        .unwrap();
    // Delivery 1 to c1, delivery 2 to c2 (XCLAIM counts as a delivery); neither acks.
    let _: redis::Value = cmd(&mut admin, &["XREADGROUP", "GROUP", "g", "c1", "STREAMS", &stream, ">"]).await;
    let _: redis::Value = cmd(&mut admin, &["XCLAIM", &stream, "g", "c2", "0", &id]).await;

    wait_for(&env.api::<Queue>(), "mail", "one dead letter", |q: &Queue| {
        q.status.as_ref().and_then(|s| s.dead_letter_length) == Some(1)
    })
    .await;
    let dead: redis::streams::StreamRangeReply = admin.xrange_all(&dlq).await.unwrap();
    let entry = &dead.ids[0];
    let get = |f: &str| {
        entry
            .get::<String>(f)
            .unwrap_or_else(|| panic!("dead letter lacks {f}: {entry:?}"))
    };
    assert_eq!(get("data"), "poison");
    assert_eq!(get("tenant"), "acme");
    assert_eq!(get("streamq.original-id"), id);
    assert_eq!(get("streamq.deliveries"), "2");
    assert_eq!(get("streamq.group"), "g");
    let pending: redis::streams::StreamPendingReply = admin.xpending(&stream, "g").await.unwrap();
    assert_eq!(
        pending.count(),
        0,
        "the dead-lettered message must be acked in its group"
    );
    let notes = wait_event(&env, "DeadLettered").await;
    assert!(notes[0].contains("moved 1 message"), "{notes:?}");
}

#[tokio::test]
async fn deletion_policy_delete_removes_data_and_retain_keeps_it() {
    let (env, _op) = setup("q-delete").await;
    let queues = env.api::<Queue>();
    env.create(&external_queue("gone", json!({"deletionPolicy": "Delete"})))
        .await;
    env.create(&external_queue("kept", json!({"deletionPolicy": "Retain"})))
        .await;
    wait_provisioned(&env, "gone").await;
    wait_provisioned(&env, "kept").await;
    let mut admin = env.redis().await;
    let key = |q: &str| format!("streamq:{{{}.{q}}}", env.namespace);
    let _: i64 = admin
        .hincr(format!("{}:stats:g", key("gone")), "processed:c", 1)
        .await
        .unwrap();
    let _: String = admin.xadd(key("kept"), "*", &[("data", "keep me")]).await.unwrap();
    for q in ["gone", "kept"] {
        queues.delete(q, &DeleteParams::default()).await.unwrap();
    }
    for q in ["gone", "kept"] {
        wait_deleted(&queues, q).await;
    }
    let exists = |k: String| {
        let mut admin = admin.clone();
        async move { cmd::<u32>(&mut admin, &["EXISTS", &k]).await == 1 }
    };
    assert!(
        !exists(key("gone")).await
            && !exists(format!("{}:dlq", key("gone"))).await
            && !exists(format!("{}:stats:g", key("gone"))).await
    );
    assert!(exists(key("kept")).await && exists(format!("{}:dlq", key("kept"))).await);
    let users: Vec<String> = cmd(&mut admin, &["ACL", "USERS"]).await;
    assert!(
        !users
            .iter()
            .any(|u| u.starts_with(&format!("streamq.{}.", env.namespace))),
        "ACL users left: {users:?}"
    );
}

#[tokio::test]
async fn bad_broker_input_reports_a_clear_condition_and_recovers_once_fixed() {
    let env = TestEnv::new("q-bad").await;
    let op = Operator::start(&env.namespace, &[]);
    let (queues, secrets) = (env.api::<Queue>(), env.api::<Secret>());
    env.create(&external_queue("orders", json!({}))).await;

    let q = wait_condition(&queues, "orders", "Degraded", ConditionStatus::True, "SecretNotFound").await;
    assert!(
        q.condition("Ready")
            .unwrap()
            .message
            .contains("create it with key \"url\""),
        "{:?}",
        q.condition("Ready")
    );

    env.create(&secret("redis-admin", "uri", "x")).await;
    let q = wait_condition(&queues, "orders", "Degraded", ConditionStatus::True, "SecretKeyMissing").await;
    assert!(q.condition("Degraded").unwrap().message.contains("[\"uri\"]"));

    let replace = |value: String| {
        let secrets = secrets.clone();
        async move {
            secrets
                .replace(
                    "redis-admin",
                    &PostParams::default(),
                    &secret("redis-admin", "url", &value),
                )
                .await
                .unwrap()
        }
    };
    replace("htp://nonsense".into()).await;
    wait_condition(&queues, "orders", "Degraded", ConditionStatus::True, "InvalidURL").await;

    let wrong_password = "wrong-password-7f3a";
    let (_, endpoint) = streamq::redis::connection::parse_url(&env.redis_url).unwrap();
    replace(format!("redis://default:{wrong_password}@{}/0", endpoint.addr())).await;
    let q = wait_condition(
        &queues,
        "orders",
        "Degraded",
        ConditionStatus::True,
        "AuthenticationFailed",
    )
    .await;
    let all_status = serde_json::to_string(&q.status).unwrap();
    assert!(
        !all_status.contains(wrong_password),
        "a credential leaked into status: {all_status}"
    );

    let dead_port = free_port();
    replace(format!("redis://default:pw@127.0.0.1:{dead_port}/0")).await;
    let q = wait_condition(&queues, "orders", "Degraded", ConditionStatus::True, "Unreachable").await;
    assert!(
        q.condition("BrokerReady")
            .unwrap()
            .message
            .contains(&format!("127.0.0.1:{dead_port}"))
    );

    replace(env.redis_url.clone()).await;
    wait_provisioned(&env, "orders").await;
    let q = queues.get("orders").await.unwrap();
    assert_eq!(q.condition("Degraded").unwrap().status, ConditionStatus::False);

    // No credential anywhere a user or a log collector can see.
    let admin_password = url_password(&env.redis_url).unwrap();
    let notes = events(&env, "AuthenticationFailed").await.join("\n") + &events(&env, "Unreachable").await.join("\n");
    for secret in [wrong_password, admin_password.as_str()] {
        assert!(!notes.contains(secret), "a credential leaked into an Event");
        assert!(!op.logs().contains(secret), "a credential leaked into the operator log");
    }
}

#[tokio::test]
async fn the_younger_of_two_queues_on_one_stream_key_gets_conflict_and_touches_nothing() {
    let (env, _op) = setup("q-conflict").await;
    let queues = env.api::<Queue>();
    let key = format!("shared-{}", env.namespace);
    env.create(&external_queue("first", json!({"streamKey": key}))).await;
    wait_provisioned(&env, "first").await;
    // Creation timestamps have one-second resolution: create "second" once
    // the API server's clock (seen through a fresh object) has moved past it.
    let created = |q: &Queue| q.metadata.creation_timestamp.clone().unwrap().0.as_second();
    let first = queues.get("first").await.unwrap();
    wait_until(Duration::from_secs(5), "the API server clock to advance", || async {
        let probe = env.kubectl_ok(&[
            "create",
            "configmap",
            &unique_name("clock"),
            "-o",
            "jsonpath={.metadata.creationTimestamp}",
        ]);
        probe
            .trim()
            .parse::<k8s_openapi::jiff::Timestamp>()
            .unwrap()
            .as_second()
            > created(&first)
    })
    .await;
    let mut admin = env.redis().await;
    for i in 0..5 {
        let _: String = cmd(&mut admin, &["XADD", &key, "*", "n", &i.to_string()]).await;
    }
    // Its round trip that found the conflict also ran the retention script, which must
    // see that the claim is not this Queue's and leave the stream alone.
    let hard_cap = json!({"streamKey": key, "retention": {"maxLength": 1, "dropUnprocessed": true}});
    env.create(&external_queue("second", hard_cap)).await;
    let q = wait_condition(&queues, "second", "Degraded", ConditionStatus::True, "Conflict").await;
    let length: u64 = cmd(&mut admin, &["XLEN", &key]).await;
    assert_eq!(length, 5, "the younger Queue must not trim the older one's stream");
    assert!(
        q.condition("Degraded").unwrap().message.contains("first"),
        "{:?}",
        q.condition("Degraded")
    );
    let producer = format!("streamq.{}.second.producer", env.namespace);
    let user: redis::Value = cmd(&mut admin, &["ACL", "GETUSER", &producer]).await;
    assert_eq!(user, redis::Value::Nil, "the younger Queue must not create users");
    // The older one is unaffected.
    let first = queues.get("first").await.unwrap();
    assert_eq!(first.condition("Ready").unwrap().status, ConditionStatus::True);
    // Fixed by removing the older Queue: its cleanup releases the claim, the younger takes it.
    queues.delete("first", &DeleteParams::default()).await.unwrap();
    wait_provisioned(&env, "second").await;
}

#[tokio::test]
async fn redis_older_than_7_is_refused_with_a_clear_condition() {
    let env = TestEnv::new("q-old").await;
    let _op = Operator::start(&env.namespace, &[]);
    let port = fake_redis_6().await;
    env.create_admin_secret_for(&format!("redis://default:pw@127.0.0.1:{port}/0"))
        .await;
    env.create(&external_queue("old", json!({}))).await;
    let q = wait_condition(
        &env.api::<Queue>(),
        "old",
        "Degraded",
        ConditionStatus::True,
        "UnsupportedVersion",
    )
    .await;
    let message = &q.condition("Degraded").unwrap().message;
    assert!(
        message.contains("6.2.14") && message.contains("7.0 or newer"),
        "{message}"
    );
}

#[tokio::test]
async fn managed_redis_is_provisioned_runs_for_real_and_is_garbage_collected() {
    let env = TestEnv::new("q-managed").await;
    // The StatefulSet's pod is Running under kwok but runs no container. A
    // local redis-server started from the ConfigMap's very redis.conf stands
    // in for it, reached through the development-only address mapping.
    let port = free_port();
    let mapping = format!("{}/cache={}:{port}", env.namespace, "127.0.0.1");
    let _op = Operator::start_with(&env.namespace, &["--dev-redis-address", &mapping], &[]);
    let queues = env.api::<Queue>();
    env.create(&queue(
        "cache",
        json!({"broker": {"managed": {"appendfsync": "always", "storage": {"size": "1Gi"}}}}),
    ))
    .await;
    // No volume provisioner runs here: a static PersistentVolume for the claim.
    let pv = format!("pv-{}", env.namespace);
    kubectl_stdin(None, &["apply", "-f", "-"], &json!({
        "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": pv, "labels": {"streamq.dev/test": "true"}},
        "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"], "hostPath": {"path": format!("/tmp/{pv}")},
                 "claimRef": {"namespace": env.namespace, "name": "data-cache-redis-0"}, "persistentVolumeReclaimPolicy": "Delete"}
    }).to_string());
    let q = wait_condition(&queues, "cache", "Ready", ConditionStatus::False, "WaitingForRedis").await;
    assert_eq!(q.condition("Persistence").unwrap().reason, "AppendOnlyFile");

    let sets = env.api::<StatefulSet>();
    let sts = wait_for(&sets, "cache-redis", "the managed Redis StatefulSet", |_| true).await;
    let spec = sts.spec.unwrap();
    assert_eq!(spec.replicas, Some(1));
    let claim = &spec.volume_claim_templates.as_ref().unwrap()[0];
    assert_eq!(
        claim
            .spec
            .as_ref()
            .unwrap()
            .resources
            .as_ref()
            .unwrap()
            .requests
            .as_ref()
            .unwrap()["storage"]
            .0,
        "1Gi"
    );
    let container = &spec.template.spec.as_ref().unwrap().containers[0];
    assert!(container.readiness_probe.as_ref().unwrap().exec.is_some());
    let conf = env.kubectl_ok(&[
        "get",
        "configmap",
        "cache-redis-config",
        "-o",
        "jsonpath={.data.redis\\.conf}",
    ]);
    assert!(
        conf.contains("appendonly yes") && conf.contains("appendfsync always"),
        "{conf}"
    );
    env.kubectl_ok(&["get", "service", "cache-redis"]);
    let admin_password = env.secret_text("cache-redis-admin", "password").await;
    assert!(
        !conf.contains(&admin_password),
        "the ConfigMap must not hold the admin password"
    );

    let _redis = RedisServer::stand_in(&env.namespace, &conf, port);
    wait_provisioned(&env, "cache").await;
    let url = env.secret_text("cache-producer", "url").await;
    assert!(
        url.contains(&format!("cache-redis.{}.svc:6379", env.namespace)),
        "workers get the in-cluster address"
    );

    let gc = wait_deleted(&sets, "cache-redis");
    queues.delete("cache", &DeleteParams::default()).await.unwrap();
    gc.await;
}

#[tokio::test]
async fn deleting_a_queue_whose_redis_is_gone_says_why_then_gives_up_with_an_event() {
    let env = TestEnv::new("q-orphan").await;
    let _op = Operator::start_with(&env.namespace, &["--queue-cleanup-timeout", "5s"], &[]);
    let dead_port = free_port();
    env.create_admin_secret_for(&format!("redis://default:pw@127.0.0.1:{dead_port}/0"))
        .await;
    let queues = env.api::<Queue>();
    env.create(&external_queue("orphan", json!({}))).await;
    wait_condition(&queues, "orphan", "Degraded", ConditionStatus::True, "Unreachable").await;
    let gone = wait_deleted(&queues, "orphan");
    queues.delete("orphan", &DeleteParams::default()).await.unwrap();
    let q = wait_condition(&queues, "orphan", "Ready", ConditionStatus::False, "CleanupPending").await;
    assert!(
        q.condition("Ready").unwrap().message.contains("retrying for up to 5s"),
        "{:?}",
        q.condition("Ready")
    );
    gone.await;
    let notes = wait_event(&env, "CleanupAbandoned").await;
    assert!(notes[0].contains("may remain"), "{notes:?}");
}

/// The Queue's real credentials, end to end: `streamq publish` as the
/// producer user and `streamq worker` as the consumer user drain a stream.
#[tokio::test]
async fn publish_and_worker_run_with_the_queues_restricted_users() {
    let (env, _op) = setup("q-e2e").await;
    env.create(&external_queue("jobs", json!({}))).await;
    let q = wait_provisioned(&env, "jobs").await;
    let stream = q.status.unwrap().stream_key.unwrap();
    let producer_url = env.secret_text("jobs-producer", "url").await;
    let consumer_url = env.secret_text("jobs-consumer", "url").await;
    let mut admin = env.redis().await;
    // Group creation is the Consumer controller's job; here the test does it.
    let _: () = cmd(&mut admin, &["XGROUP", "CREATE", &stream, "g", "0"]).await;

    let lines: String = (0..200).map(|i| format!("message {i}\n")).collect();
    let out = publish(&producer_url, &stream, &["-"], &[], Some(lines.as_bytes()));
    stdout_ok("streamq publish", out);

    let mut worker = streamq_cmd(&["worker", "--", "sh", "-c", "cat > /dev/null"])
        .env("STREAMQ_REDIS_URL", &consumer_url)
        .env("STREAMQ_STREAM", &stream)
        .env("STREAMQ_GROUP", "g")
        .env("STREAMQ_CONSUMER", "w1")
        .env("STREAMQ_CONCURRENCY", "8")
        .env("STREAMQ_DEAD_LETTER_STREAM", format!("{stream}:dlq"))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_drained_on(&admin, &stream, "g", TIMEOUT).await;
    signal(worker.id(), "TERM");
    let status = worker.wait().unwrap();
    assert!(status.success(), "worker exited with {status}");
    let processed: Option<u64> = admin.hget(format!("{stream}:stats:g"), "processed:w1").await.unwrap();
    assert_eq!(processed, Some(200), "the worker accounts its work in the stats hash");
}
