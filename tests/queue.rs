//! The Queue controller against the real kube-apiserver and redis-server.

mod support;

use std::time::Duration;

use k8s_openapi::api::{apps::v1::StatefulSet, core::v1::Secret, events::v1::Event};
use kube::{
    Api,
    api::{DeleteParams, ListParams, PostParams},
};
use redis::AsyncCommands;
use serde_json::json;
use streamq::api::{ConditionStatus, Queue};
use support::{Operator, TestEnv, wait_for};

/// Waits until the object is gone from the API server.
async fn wait_deleted<K>(api: &Api<K>, name: &str)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let Some(uid) = api.get_opt(name).await.unwrap().and_then(|o| o.meta().uid.clone()) else {
        return;
    };
    tokio::time::timeout(
        support::TIMEOUT,
        kube::runtime::wait::await_condition(api.clone(), name, kube::runtime::conditions::is_deleted(&uid)),
    )
    .await
    .unwrap_or_else(|_| panic!("{name} was not deleted within {:?}", support::TIMEOUT))
    .unwrap();
}

use support::{external_queue as external, queue, secret};

fn condition(q: &Queue, type_: &str) -> Option<(ConditionStatus, String, String)> {
    q.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status, c.reason.clone(), c.message.clone()))
}

async fn wait_condition(env: &TestEnv, name: &str, type_: &str, status: ConditionStatus, reason: &str) -> Queue {
    wait_for(
        &env.api::<Queue>(),
        name,
        &format!("{type_}={status:?} ({reason})"),
        |q: &Queue| condition(q, type_).is_some_and(|(s, r, _)| s == status && r == reason),
    )
    .await
}

async fn wait_ready(env: &TestEnv, name: &str) -> Queue {
    wait_condition(env, name, "Ready", ConditionStatus::True, "Provisioned").await
}

async fn setup(prefix: &str) -> (TestEnv, Operator) {
    let env = TestEnv::new(prefix).await;
    env.api::<Secret>()
        .create(&PostParams::default(), &secret("redis-admin", "url", &env.redis_url))
        .await
        .unwrap();
    let op = Operator::start_with(&env.namespace, &["--queue-cleanup-timeout", "5s"], &[]);
    (env, op)
}

async fn secret_value(env: &TestEnv, name: &str, key: &str) -> String {
    let s = env.api::<Secret>().get(name).await.unwrap();
    String::from_utf8(s.data.unwrap()[key].0.clone()).unwrap()
}

/// A connection as the user of a credentials Secret: its URL's user and
/// password, at the test's Redis address.
async fn connect_as(env: &TestEnv, secret: &str) -> redis::aio::MultiplexedConnection {
    let url = secret_value(env, secret, "url").await;
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection_with_config(&support::patient_redis())
        .await
        .unwrap()
}

async fn events(env: &TestEnv, reason: &str) -> Vec<String> {
    let events: Api<Event> = env.api();
    events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .map(|e| e.note.unwrap_or_default())
        .collect()
}

async fn wait_event(env: &TestEnv, reason: &str) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + support::TIMEOUT;
    loop {
        let found = events(env, reason).await;
        if !found.is_empty() {
            return found;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {reason} Event within {:?}",
            support::TIMEOUT
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn denied(result: redis::RedisResult<redis::Value>) -> bool {
    matches!(result, Err(e) if e.code() == Some("NOPERM"))
}

#[tokio::test]
async fn external_queue_provisions_streams_users_and_working_secrets() {
    let (env, _op) = setup("q-external").await;
    env.api::<Queue>()
        .create(&PostParams::default(), &external("orders", json!({})))
        .await
        .unwrap();
    let q = wait_ready(&env, "orders").await;
    let status = q.status.unwrap();
    let stream = format!("streamq:{{{}.orders}}", env.namespace);
    let dlq = format!("{stream}:dlq");
    assert_eq!(status.stream_key.as_deref(), Some(stream.as_str()));
    assert_eq!(status.dead_letter_stream_key.as_deref(), Some(dlq.as_str()));
    assert_eq!(status.producer_secret.as_deref(), Some("orders-producer"));
    assert_eq!(status.consumer_secret.as_deref(), Some("orders-consumer"));

    let mut admin = env.redis().await;
    for key in [&stream, &dlq] {
        let kind: String = redis::cmd("TYPE").arg(key).query_async(&mut admin).await.unwrap();
        assert_eq!(kind, "stream", "{key}");
    }
    let groups: Vec<redis::Value> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(&stream)
        .query_async(&mut admin)
        .await
        .unwrap();
    assert!(
        groups.is_empty(),
        "the operator must leave no group of its own behind: {groups:?}"
    );

    // The producer may XADD to its stream and nothing else.
    let mut producer = connect_as(&env, "orders-producer").await;
    let _: String = producer.xadd(&stream, "*", &[("data", "hello")]).await.unwrap();
    assert!(denied(
        redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg("g")
            .arg("c")
            .arg("STREAMS")
            .arg(&stream)
            .arg(">")
            .query_async(&mut producer)
            .await
    ));
    assert!(denied(
        redis::cmd("XADD")
            .arg("other-key")
            .arg("*")
            .arg("data")
            .arg("x")
            .query_async(&mut producer)
            .await
    ));
    assert!(denied(
        redis::cmd("XRANGE")
            .arg(&stream)
            .arg("-")
            .arg("+")
            .query_async(&mut producer)
            .await
    ));
    assert!(denied(redis::cmd("GET").arg(&stream).query_async(&mut producer).await));

    // The consumer may consume and dead-letter, but not produce or administer.
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&stream)
        .arg("g")
        .arg("0")
        .query_async(&mut admin)
        .await
        .unwrap();
    let mut consumer = connect_as(&env, "orders-consumer").await;
    let read: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("g")
        .arg("c1")
        .arg("COUNT")
        .arg(1)
        .arg("STREAMS")
        .arg(&stream)
        .arg(">")
        .query_async(&mut consumer)
        .await
        .unwrap();
    assert!(format!("{read:?}").contains("hello"), "{read:?}");
    let _: String = consumer.xadd(&dlq, "*", &[("data", "dead")]).await.unwrap();
    let _: i64 = consumer
        .hincr(format!("{stream}:stats:g"), "processed:c1", 1)
        .await
        .unwrap();
    assert!(denied(
        redis::cmd("XADD")
            .arg(&stream)
            .arg("*")
            .arg("data")
            .arg("x")
            .query_async(&mut consumer)
            .await
    ));
    assert!(denied(redis::cmd("FLUSHALL").query_async(&mut consumer).await));
    assert!(denied(
        redis::cmd("CONFIG")
            .arg("GET")
            .arg("maxmemory")
            .query_async(&mut consumer)
            .await
    ));
    assert!(denied(
        redis::cmd("XGROUP")
            .arg("DESTROY")
            .arg(&stream)
            .arg("g")
            .query_async(&mut consumer)
            .await
    ));
    assert!(denied(
        redis::cmd("XADD")
            .arg(format!("{stream}-other"))
            .arg("*")
            .arg("d")
            .arg("x")
            .query_async(&mut consumer)
            .await
    ));

    // The Secrets work with redis-cli -u as they are.
    for (secret, args) in [
        ("orders-producer", vec!["XADD", stream.as_str(), "*", "data", "cli"]),
        ("orders-consumer", vec!["XINFO", "STREAM", stream.as_str()]),
    ] {
        let url = secret_value(&env, secret, "url").await;
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
        assert!(!secret_value(&env, "orders-consumer", key).await.is_empty(), "{key}");
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
    env.api::<Queue>()
        .create(&PostParams::default(), &external("jobs", json!({})))
        .await
        .unwrap();
    wait_ready(&env, "jobs").await;
    let stream = format!("streamq:{{{}.jobs}}", env.namespace);
    let user = format!("streamq.{}.jobs.consumer", env.namespace);
    let mut admin = env.redis().await;
    let _: () = redis::cmd("DEL").arg(&stream).query_async(&mut admin).await.unwrap();
    let _: () = redis::cmd("ACL")
        .arg("DELUSER")
        .arg(&user)
        .query_async(&mut admin)
        .await
        .unwrap();

    let stream_event = wait_event(&env, "StreamRecreated").await;
    assert!(stream_event[0].contains(&stream), "{stream_event:?}");
    let user_event = wait_event(&env, "AclUserRecreated").await;
    assert!(user_event.iter().any(|n| n.contains(&user)), "{user_event:?}");
    let kind: String = redis::cmd("TYPE").arg(&stream).query_async(&mut admin).await.unwrap();
    assert_eq!(kind, "stream");
    // The recreated user has its old password: the consumer Secret still works.
    let mut consumer = connect_as(&env, "jobs-consumer").await;
    let _: redis::Value = redis::cmd("XINFO")
        .arg("STREAM")
        .arg(&stream)
        .query_async(&mut consumer)
        .await
        .unwrap();
}

#[tokio::test]
async fn retention_never_trims_unacknowledged_entries() {
    let (env, _op) = setup("q-retain").await;
    // Created before the Queue so no trim happens before the group exists.
    let stream = format!("streamq:{{{}.logs}}", env.namespace);
    let mut admin = env.redis().await;
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&stream)
        .arg("g")
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut admin)
        .await
        .unwrap();
    let mut pipe = redis::pipe();
    for i in 0..1000 {
        pipe.cmd("XADD").arg(&stream).arg("*").arg("data").arg(i).ignore();
    }
    let _: () = pipe.query_async(&mut admin).await.unwrap();
    // Deliver 600, acknowledge the first 300: 300 pending, 400 undelivered.
    let read: redis::streams::StreamReadReply = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("g")
        .arg("c")
        .arg("COUNT")
        .arg(600)
        .arg("STREAMS")
        .arg(&stream)
        .arg(">")
        .query_async(&mut admin)
        .await
        .unwrap();
    let ids: Vec<String> = read.keys[0].ids.iter().map(|e| e.id.clone()).collect();
    let _: i64 = redis::cmd("XACK")
        .arg(&stream)
        .arg("g")
        .arg(&ids[..300])
        .query_async(&mut admin)
        .await
        .unwrap();
    let all: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
        .arg(&stream)
        .arg("-")
        .arg("+")
        .query_async::<redis::streams::StreamRangeReply>(&mut admin)
        .await
        .unwrap()
        .ids
        .into_iter()
        .map(|e| (e.id, vec![]))
        .collect();
    let unacked: Vec<String> = all[300..].iter().map(|(id, _)| id.clone()).collect();

    env.api::<Queue>()
        .create(
            &PostParams::default(),
            &external("logs", json!({"retention": {"maxLength": 100}})),
        )
        .await
        .unwrap();
    wait_ready(&env, "logs").await;
    wait_for(
        &env.api::<Queue>(),
        "logs",
        "some acknowledged entries trimmed",
        |q: &Queue| q.status.as_ref().and_then(|s| s.length).is_some_and(|l| l < 1000),
    )
    .await;
    let remaining: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(&stream)
        .arg("-")
        .arg("+")
        .query_async(&mut admin)
        .await
        .unwrap();
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
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&stream)
        .arg("g")
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut admin)
        .await
        .unwrap();
    let mut pipe = redis::pipe();
    for i in 0..1000 {
        pipe.cmd("XADD").arg(&stream).arg("*").arg("data").arg(i).ignore();
    }
    let _: () = pipe.query_async(&mut admin).await.unwrap();
    env.api::<Queue>()
        .create(
            &PostParams::default(),
            &external(
                "metrics",
                json!({"retention": {"maxLength": 100, "dropUnprocessed": true}}),
            ),
        )
        .await
        .unwrap();
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
    env.api::<Queue>()
        .create(
            &PostParams::default(),
            &external(
                "mail",
                json!({"delivery": {"maxDeliveries": 2, "visibilityTimeout": "1s"}}),
            ),
        )
        .await
        .unwrap();
    wait_ready(&env, "mail").await;
    let stream = format!("streamq:{{{}.mail}}", env.namespace);
    let dlq = format!("{stream}:dlq");
    let mut admin = env.redis().await;
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&stream)
        .arg("g")
        .arg("0")
        .query_async(&mut admin)
        .await
        .unwrap();
    let id: String = admin
        .xadd(&stream, "*", &[("data", "poison"), ("tenant", "acme")])
        .await
        .unwrap();
    // Delivery 1 to c1, delivery 2 to c2 (XCLAIM counts as a delivery); neither acks.
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("g")
        .arg("c1")
        .arg("STREAMS")
        .arg(&stream)
        .arg(">")
        .query_async(&mut admin)
        .await
        .unwrap();
    let _: redis::Value = redis::cmd("XCLAIM")
        .arg(&stream)
        .arg("g")
        .arg("c2")
        .arg(0)
        .arg(&id)
        .query_async(&mut admin)
        .await
        .unwrap();

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
    queues
        .create(
            &PostParams::default(),
            &external("gone", json!({"deletionPolicy": "Delete"})),
        )
        .await
        .unwrap();
    queues
        .create(
            &PostParams::default(),
            &external("kept", json!({"deletionPolicy": "Retain"})),
        )
        .await
        .unwrap();
    wait_ready(&env, "gone").await;
    wait_ready(&env, "kept").await;
    let mut admin = env.redis().await;
    let key = |q: &str| format!("streamq:{{{}.{q}}}", env.namespace);
    let _: i64 = admin
        .hincr(format!("{}:stats:g", key("gone")), "processed:c", 1)
        .await
        .unwrap();
    let _: String = admin.xadd(key("kept"), "*", &[("data", "keep me")]).await.unwrap();
    let uids: Vec<String> = futures::future::join_all(["gone", "kept"].map(|q| queues.get(q)))
        .await
        .into_iter()
        .map(|q| q.unwrap().metadata.uid.unwrap())
        .collect();
    for q in ["gone", "kept"] {
        queues.delete(q, &DeleteParams::default()).await.unwrap();
    }
    for (q, uid) in ["gone", "kept"].iter().zip(&uids) {
        tokio::time::timeout(
            support::TIMEOUT,
            kube::runtime::wait::await_condition(queues.clone(), q, kube::runtime::conditions::is_deleted(uid)),
        )
        .await
        .unwrap_or_else(|_| panic!("{q} was not deleted"))
        .unwrap();
    }
    let exists = |k: String| {
        let mut admin = admin.clone();
        async move {
            redis::cmd("EXISTS")
                .arg(k)
                .query_async::<u32>(&mut admin)
                .await
                .unwrap()
                == 1
        }
    };
    assert!(
        !exists(key("gone")).await
            && !exists(format!("{}:dlq", key("gone"))).await
            && !exists(format!("{}:stats:g", key("gone"))).await
    );
    assert!(exists(key("kept")).await && exists(format!("{}:dlq", key("kept"))).await);
    let users: Vec<String> = redis::cmd("ACL").arg("USERS").query_async(&mut admin).await.unwrap();
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
    let _op = Operator::start(&env.namespace, &[]);
    let secrets = env.api::<Secret>();
    env.api::<Queue>()
        .create(&PostParams::default(), &external("orders", json!({})))
        .await
        .unwrap();

    let q = wait_condition(&env, "orders", "Degraded", ConditionStatus::True, "SecretNotFound").await;
    assert!(
        condition(&q, "Ready").unwrap().2.contains("create it with key \"url\""),
        "{:?}",
        condition(&q, "Ready")
    );

    secrets
        .create(&PostParams::default(), &secret("redis-admin", "uri", "x"))
        .await
        .unwrap();
    let q = wait_condition(&env, "orders", "Degraded", ConditionStatus::True, "SecretKeyMissing").await;
    assert!(condition(&q, "Degraded").unwrap().2.contains("[\"uri\"]"));

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
    wait_condition(&env, "orders", "Degraded", ConditionStatus::True, "InvalidURL").await;

    let wrong_password = "wrong-password-7f3a";
    let (_, endpoint) = streamq::redis::connection::parse_url(&env.redis_url).unwrap();
    replace(format!("redis://default:{wrong_password}@{}/0", endpoint.addr())).await;
    let q = wait_condition(
        &env,
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

    let dead_port = support::free_port();
    replace(format!("redis://default:pw@127.0.0.1:{dead_port}/0")).await;
    let q = wait_condition(&env, "orders", "Degraded", ConditionStatus::True, "Unreachable").await;
    assert!(
        condition(&q, "BrokerReady")
            .unwrap()
            .2
            .contains(&format!("127.0.0.1:{dead_port}"))
    );

    replace(env.redis_url.clone()).await;
    wait_ready(&env, "orders").await;
    let q = env.api::<Queue>().get("orders").await.unwrap();
    assert_eq!(condition(&q, "Degraded").unwrap().0, ConditionStatus::False);

    // No credential anywhere a user or a log collector can see.
    let (_, admin_endpoint) = streamq::redis::connection::parse_url(&env.redis_url).unwrap();
    let admin_password = env
        .redis_url
        .rsplit_once('@')
        .unwrap()
        .0
        .rsplit_once(':')
        .unwrap()
        .1
        .to_owned();
    let notes = events(&env, "AuthenticationFailed").await.join("\n") + &events(&env, "Unreachable").await.join("\n");
    for secret in [wrong_password, admin_password.as_str()] {
        assert!(!notes.contains(secret), "a credential leaked into an Event");
        assert!(
            !_op.logs().contains(secret),
            "a credential leaked into the operator log"
        );
    }
    let _ = admin_endpoint;
}

#[tokio::test]
async fn the_younger_of_two_queues_on_one_stream_key_gets_conflict_and_touches_nothing() {
    let (env, _op) = setup("q-conflict").await;
    let queues = env.api::<Queue>();
    let key = format!("shared-{}", env.namespace);
    queues
        .create(&PostParams::default(), &external("first", json!({"streamKey": key})))
        .await
        .unwrap();
    wait_ready(&env, "first").await;
    // Creation timestamps have one-second resolution: create "second" once
    // the API server's clock (seen through a fresh object) has moved past it.
    let created = |q: &Queue| q.metadata.creation_timestamp.clone().unwrap().0.as_second();
    let first = queues.get("first").await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let probe = env.kubectl_ok(&[
            "create",
            "configmap",
            &support::unique_name("clock"),
            "-o",
            "jsonpath={.metadata.creationTimestamp}",
        ]);
        if probe
            .trim()
            .parse::<k8s_openapi::jiff::Timestamp>()
            .unwrap()
            .as_second()
            > created(&first)
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the API server clock did not advance"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    queues
        .create(&PostParams::default(), &external("second", json!({"streamKey": key})))
        .await
        .unwrap();
    let q = wait_condition(&env, "second", "Degraded", ConditionStatus::True, "Conflict").await;
    assert!(
        condition(&q, "Degraded").unwrap().2.contains("first"),
        "{:?}",
        condition(&q, "Degraded")
    );
    let mut admin = env.redis().await;
    let user: redis::Value = redis::cmd("ACL")
        .arg("GETUSER")
        .arg(format!("streamq.{}.second.producer", env.namespace))
        .query_async(&mut admin)
        .await
        .unwrap();
    assert_eq!(user, redis::Value::Nil, "the younger Queue must not create users");
    // The older one is unaffected.
    let first = queues.get("first").await.unwrap();
    assert_eq!(condition(&first, "Ready").unwrap().0, ConditionStatus::True);
    // Fixed by removing the older Queue: its cleanup releases the claim, the younger takes it.
    queues.delete("first", &DeleteParams::default()).await.unwrap();
    wait_ready(&env, "second").await;
}

/// A server that speaks just enough RESP to pass for Redis 6.2.
async fn fake_redis_6() -> u16 {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (read, mut write) = socket.into_split();
                let mut lines = BufReader::new(read).lines();
                // Each command is an array: *N, then $len/arg line pairs.
                while let Ok(Some(header)) = lines.next_line().await {
                    let Some(n) = header.strip_prefix('*').and_then(|n| n.parse::<usize>().ok()) else {
                        continue;
                    };
                    let mut args = vec![];
                    for _ in 0..n {
                        let _len = lines.next_line().await;
                        args.push(lines.next_line().await.ok().flatten().unwrap_or_default());
                    }
                    let reply = if args.first().is_some_and(|a| a.eq_ignore_ascii_case("INFO")) {
                        let body = "# Server\r\nredis_version:6.2.14\r\n";
                        format!("${}\r\n{body}\r\n", body.len())
                    } else {
                        "+OK\r\n".to_owned()
                    };
                    if write.write_all(reply.as_bytes()).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    port
}

#[tokio::test]
async fn redis_older_than_7_is_refused_with_a_clear_condition() {
    let env = TestEnv::new("q-old").await;
    let _op = Operator::start(&env.namespace, &[]);
    let port = fake_redis_6().await;
    env.api::<Secret>()
        .create(
            &PostParams::default(),
            &secret("redis-admin", "url", &format!("redis://default:pw@127.0.0.1:{port}/0")),
        )
        .await
        .unwrap();
    env.api::<Queue>()
        .create(&PostParams::default(), &external("old", json!({})))
        .await
        .unwrap();
    let q = wait_condition(&env, "old", "Degraded", ConditionStatus::True, "UnsupportedVersion").await;
    let message = condition(&q, "Degraded").unwrap().2;
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
    let port = support::free_port();
    let mapping = format!("{}/cache={}:{port}", env.namespace, "127.0.0.1");
    let _op = Operator::start_with(&env.namespace, &["--dev-redis-address", &mapping], &[]);
    let queues = env.api::<Queue>();
    queues
        .create(
            &PostParams::default(),
            &queue(
                "cache",
                json!({"broker": {"managed": {"appendfsync": "always", "storage": {"size": "1Gi"}}}}),
            ),
        )
        .await
        .unwrap();
    // No volume provisioner runs here: a static PersistentVolume for the claim.
    let pv = format!("pv-{}", env.namespace);
    support::kubectl_stdin(None, &["apply", "-f", "-"], &json!({
        "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": pv, "labels": {"streamq.dev/test": "true"}},
        "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"], "hostPath": {"path": format!("/tmp/{pv}")},
                 "claimRef": {"namespace": env.namespace, "name": "data-cache-redis-0"}, "persistentVolumeReclaimPolicy": "Delete"}
    }).to_string());
    let q = wait_condition(&env, "cache", "Ready", ConditionStatus::False, "WaitingForRedis").await;
    assert_eq!(condition(&q, "Persistence").unwrap().1, "AppendOnlyFile");

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
    let admin_password = secret_value(&env, "cache-redis-admin", "password").await;
    assert!(
        !conf.contains(&admin_password),
        "the ConfigMap must not hold the admin password"
    );

    let dir = std::env::temp_dir().join(format!("redis-{}", env.namespace));
    std::fs::create_dir_all(&dir).unwrap();
    let conf_path = dir.join("redis.conf");
    // The pod mounts its volume at /data; here that is the temporary directory.
    std::fs::write(&conf_path, conf.replace("dir /data", &format!("dir {}", dir.display()))).unwrap();
    let mut redis_server = std::process::Command::new("redis-server")
        .arg(&conf_path)
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start redis-server");
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _guard = Kill(
        redis_server
            .try_wait()
            .map(|_| ())
            .map_or_else(|_| unreachable!(), |_| redis_server),
    );

    wait_ready(&env, "cache").await;
    let url = secret_value(&env, "cache-producer", "url").await;
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
    let dead_port = support::free_port();
    env.api::<Secret>()
        .create(
            &PostParams::default(),
            &secret(
                "redis-admin",
                "url",
                &format!("redis://default:pw@127.0.0.1:{dead_port}/0"),
            ),
        )
        .await
        .unwrap();
    let queues = env.api::<Queue>();
    queues
        .create(&PostParams::default(), &external("orphan", json!({})))
        .await
        .unwrap();
    wait_condition(&env, "orphan", "Degraded", ConditionStatus::True, "Unreachable").await;
    let gone = wait_deleted(&queues, "orphan");
    queues.delete("orphan", &DeleteParams::default()).await.unwrap();
    let q = wait_condition(&env, "orphan", "Ready", ConditionStatus::False, "CleanupPending").await;
    assert!(
        condition(&q, "Ready").unwrap().2.contains("retrying for up to 5s"),
        "{:?}",
        condition(&q, "Ready")
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
    env.api::<Queue>()
        .create(&PostParams::default(), &external("jobs", json!({})))
        .await
        .unwrap();
    let q = wait_ready(&env, "jobs").await;
    let stream = q.status.unwrap().stream_key.unwrap();
    let producer_url = secret_value(&env, "jobs-producer", "url").await;
    let consumer_url = secret_value(&env, "jobs-consumer", "url").await;
    let mut admin = env.redis().await;
    // Group creation is the Consumer controller's job; here the test does it.
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&stream)
        .arg("g")
        .arg("0")
        .query_async(&mut admin)
        .await
        .unwrap();

    let publish = std::process::Command::new(env!("CARGO_BIN_EXE_streamq"))
        .args(["publish", "--url", &producer_url, "--stream", &stream, "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = publish.stdin.as_ref().unwrap();
        for i in 0..200 {
            writeln!(stdin, "message {i}").unwrap();
        }
    }
    let out = publish.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "publish failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mut worker = std::process::Command::new(env!("CARGO_BIN_EXE_streamq"))
        .args(["worker", "--", "sh", "-c", "cat > /dev/null"])
        .env("STREAMQ_REDIS_URL", &consumer_url)
        .env("STREAMQ_STREAM", &stream)
        .env("STREAMQ_GROUP", "g")
        .env("STREAMQ_CONSUMER", "w1")
        .env("STREAMQ_CONCURRENCY", "8")
        .env("STREAMQ_DEAD_LETTER_STREAM", format!("{stream}:dlq"))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = tokio::time::Instant::now() + support::TIMEOUT;
    loop {
        let pending: redis::streams::StreamPendingReply = admin.xpending(&stream, "g").await.unwrap();
        let groups: Vec<std::collections::HashMap<String, redis::Value>> = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(&stream)
            .query_async(&mut admin)
            .await
            .unwrap();
        let lag: i64 = redis::from_redis_value(groups[0]["lag"].clone()).unwrap_or(-1);
        if lag == 0 && pending.count() == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the worker did not drain the stream: lag {lag}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    support::signal(worker.id(), "TERM");
    let status = worker.wait().unwrap();
    assert!(status.success(), "worker exited with {status}");
    let processed: Option<u64> = admin.hget(format!("{stream}:stats:g"), "processed:w1").await.unwrap();
    assert_eq!(processed, Some(200), "the worker accounts its work in the stats hash");
}
