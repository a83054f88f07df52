//! ACL isolation between Queues, proven with real commands against the real
//! redis-server: two Queues A and B provisioned by the real operator on the
//! shared server, and the credentials A's Secrets hand out tried on every
//! key of both. Each refusal must be the server's NOPERM, not just "an error".

mod support;

use support::*;

/// Commands that only an administrator may run. FLUSHALL is sent for real
/// only after `ACL DRYRUN` has shown it would be refused: this test must not
/// be able to wipe the redis-server other tests share, even when it fails.
const ADMIN_COMMANDS: &[&[&str]] = &[
    &["ACL", "LIST"],
    &["ACL", "SETUSER", "streamq-acl-test-intruder", "on", "+@all", "~*"],
    &["CONFIG", "GET", "requirepass"],
    &["CONFIG", "SET", "maxmemory", "1"],
    &["KEYS", "*"],
    &["FLUSHALL"],
];

/// Every command a user could try on someone else's key, with its arguments.
fn attempts_on(key: &str) -> Vec<Vec<&str>> {
    let mut all: Vec<Vec<&str>> = [">", "0"]
        .map(|from| {
            vec![
                "XREADGROUP",
                "GROUP",
                "g",
                "intruder",
                "COUNT",
                "1",
                "STREAMS",
                key,
                from,
            ]
        })
        .into();
    all.extend([
        vec!["XACK", key, "g", "0-1"],
        vec!["XADD", key, "*", "data", "intruder"],
        vec!["XRANGE", key, "-", "+"],
        vec!["XREAD", "COUNT", "1", "STREAMS", key, "0"],
        vec!["XPENDING", key, "g"],
        vec!["XINFO", "STREAM", key],
        vec!["XTRIM", key, "MAXLEN", "0"],
        vec!["XDEL", key, "0-1"],
        vec!["DEL", key],
        vec!["GET", key],
        vec!["SET", key, "x"],
        vec!["HGETALL", key],
        vec!["HINCRBY", key, "processed:intruder", "1"],
        vec!["HSET", key, "busy_us:intruder", "1"],
    ]);
    all
}

/// What the admin sees of a Queue's keys: stream and dead-letter lengths,
/// pending count and the stats hash, to prove the refused commands changed nothing.
async fn footprint(admin: &mut ::redis::aio::MultiplexedConnection, q: &QueueCredentials) -> Vec<String> {
    let mut out = vec![];
    for args in [
        vec!["XLEN", q.stream.as_str()],
        vec!["XLEN", q.dead_letter.as_str()],
        vec!["XPENDING", q.stream.as_str(), "g"],
        vec!["HGETALL", &q.stats("g")],
        vec!["TYPE", &q.stats("g")],
    ] {
        out.push(format!("{:?}", try_cmd(admin, &args).await.unwrap()));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_queues_credentials_reach_only_their_own_keys() {
    let env = TestEnv::new("acl-iso").await;
    let _op = env.start_operator();
    env.create_admin_secret().await;
    for name in ["a", "b"] {
        env.create(&external_queue(name, serde_json::json!({}))).await;
    }
    wait_provisioned(&env, "a").await;
    wait_provisioned(&env, "b").await;
    let a = QueueCredentials::read(&env, "a").await;
    let b = QueueCredentials::read(&env, "b").await;
    assert_ne!(a.stream, b.stream);

    // The admin gives both streams a group and one message each, and B a
    // dead letter and a stats hash, so every refused command has something to hit.
    let mut admin = env.redis().await;
    for q in [&a, &b] {
        try_cmd(&mut admin, &["XGROUP", "CREATE", &q.stream, "g", "0"])
            .await
            .unwrap();
        try_cmd(&mut admin, &["XADD", &q.stream, "*", "data", "m"])
            .await
            .unwrap();
    }
    try_cmd(&mut admin, &["XADD", &b.dead_letter, "*", "data", "dead"])
        .await
        .unwrap();
    try_cmd(&mut admin, &["HSET", &b.stats("g"), "processed:w", "7"])
        .await
        .unwrap();
    let b_before = footprint(&mut admin, &b).await;

    // A's consumer on A's keys: everything a worker does works.
    let mut consumer = connect(&a.consumer_url).await;
    let read = try_cmd(
        &mut consumer,
        &[
            "XREADGROUP",
            "GROUP",
            "g",
            "w1",
            "COUNT",
            "1",
            "STREAMS",
            &a.stream,
            ">",
        ],
    )
    .await;
    assert_allowed(&read, "A consumer: XREADGROUP on A's stream");
    let reply: ::redis::streams::StreamReadReply = ::redis::from_redis_value(read.unwrap()).unwrap();
    let id = reply.keys[0].ids[0].id.clone();
    for (args, what) in [
        (vec!["XPENDING", &a.stream, "g"], "XPENDING on A's stream"),
        (vec!["XINFO", "GROUPS", &a.stream], "XINFO on A's stream"),
        (vec!["XACK", &a.stream, "g", &id], "XACK on A's stream"),
        (
            vec!["XADD", &a.dead_letter, "*", "data", "dead"],
            "XADD on A's dead-letter stream",
        ),
        (
            vec!["HINCRBY", &a.stats("g"), "processed:w1", "1"],
            "HINCRBY on A's stats",
        ),
        (vec!["HSET", &a.stats("g"), "busy_us:w1", "5"], "HSET on A's stats"),
        (vec!["HGETALL", &a.stats("g")], "HGETALL on A's stats"),
    ] {
        assert_allowed(&try_cmd(&mut consumer, &args).await, &format!("A consumer: {what}"));
    }
    assert_eq!(
        try_cmd(&mut admin, &["XLEN", &a.dead_letter]).await.unwrap(),
        ::redis::Value::Int(1),
        "A's consumer dead-lettered into A's dead-letter stream"
    );

    // A's consumer on B's keys: every command refused, on every key.
    for key in [&b.stream, &b.dead_letter, &b.stats("g")] {
        for args in attempts_on(key) {
            assert_noperm(&try_cmd(&mut consumer, &args).await, &format!("A consumer: {args:?}"));
        }
    }
    // Even on A's own keys the consumer reads only through its group, never
    // writes the stream and deletes nothing.
    for args in [
        vec!["XADD", a.stream.as_str(), "*", "data", "forged"],
        vec!["XRANGE", &a.stream, "-", "+"],
        vec!["XREAD", "COUNT", "1", "STREAMS", &a.stream, "0"],
        vec!["XTRIM", &a.stream, "MAXLEN", "0"],
        vec!["DEL", &a.stream],
        vec!["GET", &a.stream],
        vec!["XRANGE", &a.dead_letter, "-", "+"],
        vec!["DEL", &a.dead_letter],
        vec!["DEL", &a.stats("g")],
        vec!["XGROUP", "DESTROY", &a.stream, "g"],
        vec!["EVAL", "return redis.call('DEL', KEYS[1])", "1", &a.stream],
    ] {
        assert_noperm(&try_cmd(&mut consumer, &args).await, &format!("A consumer: {args:?}"));
    }

    // A's producer: XADD to A's stream, nothing else.
    let mut producer = connect(&a.producer_url).await;
    assert_allowed(
        &try_cmd(&mut producer, &["XADD", &a.stream, "*", "data", "p"]).await,
        "A producer: XADD on A's stream",
    );
    for args in [
        vec!["XRANGE", a.stream.as_str(), "-", "+"],
        vec!["XREVRANGE", &a.stream, "+", "-"],
        vec!["XREAD", "COUNT", "1", "STREAMS", &a.stream, "0"],
        vec!["XREADGROUP", "GROUP", "g", "p", "COUNT", "1", "STREAMS", &a.stream, ">"],
        vec!["XLEN", &a.stream],
        vec!["XACK", &a.stream, "g", "0-1"],
        vec!["XADD", &a.dead_letter, "*", "data", "x"],
        vec!["DEL", &a.stream],
    ] {
        assert_noperm(&try_cmd(&mut producer, &args).await, &format!("A producer: {args:?}"));
    }
    for key in [&b.stream, &b.dead_letter, &b.stats("g")] {
        for args in attempts_on(key) {
            assert_noperm(&try_cmd(&mut producer, &args).await, &format!("A producer: {args:?}"));
        }
    }

    // Neither may administer the server.
    for (role, url, conn) in [
        ("consumer", &a.consumer_url, &mut consumer),
        ("producer", &a.producer_url, &mut producer),
    ] {
        for args in ADMIN_COMMANDS {
            let user = url_user(url).unwrap();
            let mut dry = vec!["ACL", "DRYRUN", user.as_str()];
            dry.extend_from_slice(args);
            let verdict = try_cmd(&mut admin, &dry).await.unwrap();
            let verdict = match verdict {
                ::redis::Value::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
                other => format!("{other:?}"),
            };
            assert!(
                verdict.contains("no permissions"),
                "ACL DRYRUN says A's {role} could run {args:?}: {verdict}; not sending it"
            );
            assert_noperm(&try_cmd(conn, args).await, &format!("A {role}: {args:?}"));
        }
    }

    // Nothing of B moved.
    assert_eq!(footprint(&mut admin, &b).await, b_before, "B's keys were changed");
}
