//! `streamq worker` and `streamq::worker::Worker` against the real
//! redis-server. Worker processes connect as a consumer ACL user restricted
//! the way the operator restricts it (see `TestQueue::new`). Entries that
//! `streamq publish` would never write are the `malformed` module's.

mod support;

// A module of this binary rather than a binary of its own: linking is the slow part.
#[path = "worker/malformed.rs"]
mod malformed;

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use streamq::worker::{Message, Worker, WorkerConfig};
use support::{deliveries::Sink, redis_queue::*, *};

const T: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_command_per_message_with_env_and_stats() {
    let q = TestQueue::new("exec").await;
    let out = q.file("out");
    let handler = q.script(
        "h.sh",
        &format!(
            "echo \"$STREAMQ_MESSAGE_ID|$STREAMQ_DELIVERY_COUNT|$STREAMQ_HEADER_TENANT|$STREAMQ_HEADER_TRACE_ID|$(cat)|${{STREAMQ_REDIS_URL:-unset}}\" >> {}",
            out.display()
        ),
    );
    let id1 = q
        .publish("hello world", &[("tenant", "acme"), ("trace.id", "t-1")])
        .await;
    let id2 = q.publish("second", &[]).await;
    let _w = q.worker("c1", &["--concurrency", "2"], &[&handler]);
    wait_until(T, "both messages handled and acked", || async {
        read_lines(&out).len() == 2 && q.pending().await == 0 && q.group_progress().await == (2, 0)
    })
    .await;
    let lines = read_lines(&out);
    assert!(
        lines.contains(&format!("{id1}|1|acme|t-1|hello world|unset")),
        "{lines:?}"
    );
    assert!(lines.contains(&format!("{id2}|1|||second|unset")), "{lines:?}");
    let stats = q.stats().await;
    wait_until(T, "stats written", || async {
        q.stats().await.get("processed:c1") == Some(&2)
    })
    .await;
    assert!(stats.get("busy_us:c1").copied().unwrap_or(0) > 0, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restricted_user_is_really_restricted() {
    let q = TestQueue::new("acl").await;
    let mut conn = connect(&q.consumer_url).await;
    for args in [
        vec!["XRANGE", &q.stream, "-", "+"],
        vec!["XADD", &q.stream, "*", "data", "x"],
        vec!["EVAL", "return 1", "0"],
    ] {
        assert_noperm(&try_cmd(&mut conn, &args).await, &format!("{args:?}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_mid_message_redelivers_to_another_worker() {
    let q = TestQueue::new("kill").await;
    let started = q.file("started");
    let done = q.file("done");
    // First delivery hangs (and is killed); later ones record themselves.
    let handler = q.script(
        "h.sh",
        &format!(
            "if [ \"$STREAMQ_DELIVERY_COUNT\" = 1 ]; then echo \"$STREAMQ_MESSAGE_ID\" > {s}; exec sleep 60; fi\n\
             echo \"$STREAMQ_MESSAGE_ID $STREAMQ_DELIVERY_COUNT $(cat)\" >> {d}",
            s = started.display(),
            d = done.display()
        ),
    );
    let id = q.publish("payload", &[]).await;
    let mut a = q.worker("a", &["--visibility-timeout-ms", "1000"], &[&handler]);
    wait_until(T, "worker a started the message", || async { started.exists() }).await;
    a.kill_group();
    let killed_at = Instant::now();
    let _b = q.worker("b", &["--visibility-timeout-ms", "1000"], &[&handler]);
    wait_until(T, "redelivery to worker b", || async { !read_lines(&done).is_empty() }).await;
    assert!(
        killed_at.elapsed() >= Duration::from_millis(900),
        "redelivered before the visibility timeout"
    );
    assert_eq!(read_lines(&done), vec![format!("{id} 2 payload")]);
    wait_until(T, "ack", || async { q.pending().await == 0 }).await;
    assert!(q.dead_letters().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_message_is_dead_lettered_after_max_deliveries() {
    let q = TestQueue::new("poison").await;
    let runs = q.file("runs");
    let handler = q.script(
        "h.sh",
        &format!(
            "echo \"$STREAMQ_DELIVERY_COUNT\" >> {}; echo 'cannot parse order' >&2; exit 3",
            runs.display()
        ),
    );
    let id = q.publish("{bad json", &[("tenant", "acme")]).await;
    let good = q.publish("fine", &[]).await;
    let _w = q.worker(
        "c1",
        &[
            "--max-deliveries",
            "3",
            "--visibility-timeout-ms",
            "300",
            "--concurrency",
            "2",
        ],
        &[
            "sh",
            "-c",
            &format!("if [ \"$(cat)\" = fine ]; then exit 0; fi; exec {handler}"),
        ],
    );
    wait_until(T, "a dead-letter entry", || async {
        !q.dead_letters().await.is_empty()
    })
    .await;
    wait_until(T, "nothing pending", || async { q.pending().await == 0 }).await;
    assert_eq!(
        read_lines(&runs),
        vec!["1", "2", "3"],
        "exactly maxDeliveries deliveries"
    );
    let dead = q.dead_letters().await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    let fields = &dead[0].1;
    assert_eq!(fields["data"], "{bad json");
    assert_eq!(fields["tenant"], "acme");
    assert_eq!(fields["streamq.original-id"], id);
    assert_eq!(fields["streamq.deliveries"], "3");
    assert_eq!(fields["streamq.group"], q.group);
    let error = &fields["streamq.error"];
    assert!(
        error.contains("exit code 3") && error.contains("cannot parse order"),
        "{error}"
    );
    assert_ne!(dead[0].1["streamq.original-id"], good);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashed_last_delivery_is_dead_lettered_at_reclaim() {
    let q = TestQueue::new("crashdlq").await;
    let started = q.file("started");
    let handler = q.script("h.sh", &format!("touch {}; exec sleep 60", started.display()));
    let id = q.publish("stuck", &[]).await;
    let mut a = q.worker(
        "a",
        &["--max-deliveries", "1", "--visibility-timeout-ms", "300"],
        &[&handler],
    );
    wait_until(T, "handler started", || async { started.exists() }).await;
    a.kill_group();
    let _b = q.worker(
        "b",
        &["--max-deliveries", "1", "--visibility-timeout-ms", "300"],
        &["true"],
    );
    wait_until(T, "dead-lettered", || async { q.dead_letters().await.len() == 1 }).await;
    let dead = q.dead_letters().await;
    assert_eq!(dead[0].1["streamq.original-id"], id);
    assert_eq!(dead[0].1["streamq.deliveries"], "1");
    assert!(dead[0].1["streamq.error"].starts_with("unknown"), "{:?}", dead[0].1);
    wait_until(T, "nothing pending", || async { q.pending().await == 0 }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_in_flight_message_finish() {
    let q = TestQueue::new("term").await;
    let started = q.file("started");
    let done = q.file("done");
    let handler = q.script(
        "h.sh",
        &format!(
            "echo \"$STREAMQ_MESSAGE_ID\" >> {s}; sleep 2; echo \"$STREAMQ_MESSAGE_ID\" >> {d}",
            s = started.display(),
            d = done.display()
        ),
    );
    let id = q.publish("slow", &[]).await;
    let mut w = q.worker("c1", &["--grace", "10s"], &[&handler]);
    wait_until(T, "handler started", || async { started.exists() }).await;
    w.signal("TERM");
    let signalled = Instant::now();
    // Published after SIGTERM: must not be taken.
    q.publish("late", &[]).await;
    let status = w.wait_exit(Duration::from_secs(15)).await;
    assert!(status.success(), "exit {status:?}; log:\n{}", w.log());
    assert!(signalled.elapsed() < Duration::from_secs(10), "exited within grace");
    assert_eq!(read_lines(&done), vec![id.clone()], "in-flight finished");
    assert_eq!(read_lines(&started), vec![id], "nothing new started after SIGTERM");
    assert_eq!(q.pending().await, 0, "in-flight message acked");
    assert_eq!(q.group_progress().await, (1, 1), "late message still unread");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_after_grace_leaves_message_pending() {
    let q = TestQueue::new("grace").await;
    let started = q.file("started");
    let handler = q.script("h.sh", &format!("touch {}; exec sleep 60", started.display()));
    q.publish("very slow", &[]).await;
    let mut w = q.worker("c1", &["--grace", "500ms"], &[&handler]);
    wait_until(T, "handler started", || async { started.exists() }).await;
    w.signal("TERM");
    let signalled = Instant::now();
    let status = w.wait_exit(Duration::from_secs(10)).await;
    assert!(status.success(), "exit {status:?}; log:\n{}", w.log());
    assert!(signalled.elapsed() < Duration::from_secs(5));
    assert_eq!(q.pending().await, 1, "unfinished message stays pending");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_fails_clearly() {
    let q = TestQueue::new("bad").await;
    let base = |url: &str| {
        vec![
            ("STREAMQ_REDIS_URL".to_owned(), url.to_owned()),
            ("STREAMQ_STREAM".to_owned(), q.stream.clone()),
            ("STREAMQ_GROUP".to_owned(), q.group.clone()),
        ]
    };
    let run = |env: Vec<(String, String)>, args: &[&str]| {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let mut all = vec!["worker"];
        all.extend_from_slice(args);
        run_streamq(&all, &env, None)
    };

    let out = run(base("not a url"), &["--", "true"]);
    assert_clean_failure(&out, "invalid Redis URL");

    let wrong = with_credentials(&redis_url(), &q.user, "wrong-password");
    let out = run(base(&wrong), &["--", "true"]);
    assert_clean_failure(&out, "rejected the credentials");
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("wrong-password"),
        "password leaked"
    );

    let out = run(base("redis://127.0.0.1:1/0"), &["--", "true"]);
    assert_clean_failure(&out, "cannot connect to Redis");

    let mut env = base(&redis_url());
    env[2].1 = "no-such-group".into();
    let out = run(env, &["--", "true"]);
    assert_clean_failure(
        &out,
        &format!(
            "consumer group no-such-group does not exist on stream {}; is the Consumer reconciled?",
            q.stream
        ),
    );

    let mut env = base(&redis_url());
    env[1].1 = unique_name("missing-stream");
    let out = run(env, &["--", "true"]);
    assert_clean_failure(&out, "does not exist");

    let out = run(base(&redis_url()), &[]);
    assert_clean_failure(&out, "no handler");

    let out = run(base(&redis_url()), &["--", "/no/such/handler"]);
    assert_clean_failure(&out, "not found");

    let out = run(base(&redis_url()), &["--http", "ftp://x/"]);
    assert_clean_failure(&out, "invalid --http URL");

    let out = run(base(&redis_url()), &["--concurrency", "0", "--", "true"]);
    assert_clean_failure(&out, "concurrency");

    let out = run(vec![], &["--", "true"]);
    assert_clean_failure(&out, "--redis-url");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_mode_posts_payload_and_headers() {
    use axum::{Router, body::Bytes, http::HeaderMap, routing::post};
    let q = TestQueue::new("http").await;
    let seen: Arc<Mutex<Vec<(HeaderMap, Bytes)>>> = Arc::default();
    let app = {
        let seen = seen.clone();
        Router::new().route(
            "/work",
            post(move |headers: HeaderMap, body: Bytes| {
                let seen = seen.clone();
                async move {
                    let fail = headers.get("x-streamq-header-fail").is_some();
                    seen.lock().unwrap().push((headers, body));
                    if fail {
                        (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "nope")
                    } else {
                        (axum::http::StatusCode::OK, "ok")
                    }
                }
            }),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let ok = q.publish("hello", &[("tenant", "acme")]).await;
    let bad = q.publish("boom", &[("fail", "1")]).await;
    let url = format!("http://{addr}/work");
    let _w = q.worker(
        "h1",
        &[
            "--http",
            &url,
            "--max-deliveries",
            "2",
            "--visibility-timeout-ms",
            "300",
        ],
        &[],
    );
    wait_until(T, "failing message dead-lettered", || async {
        q.dead_letters().await.len() == 1
    })
    .await;
    wait_until(T, "all settled", || async { q.pending().await == 0 }).await;
    let seen = seen.lock().unwrap().clone();
    let first = seen
        .iter()
        .find(|(h, _)| h["x-streamq-message-id"] == ok.as_str())
        .expect("ok message POSTed");
    assert_eq!(first.1.as_ref(), b"hello");
    assert_eq!(first.0["x-streamq-header-tenant"], "acme");
    assert_eq!(first.0["x-streamq-delivery-count"], "1");
    let bad_posts = seen
        .iter()
        .filter(|(h, _)| h["x-streamq-message-id"] == bad.as_str())
        .count();
    assert_eq!(bad_posts, 2);
    let dead = q.dead_letters().await;
    assert!(dead[0].1["streamq.error"].contains("500"), "{:?}", dead[0].1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn library_worker_retries_failed_message_in_process() {
    let q = TestQueue::new("lib").await;
    let first = q.publish("flaky", &[]).await;
    let second = q.publish("solid", &[]).await;
    let calls: Arc<Mutex<Vec<(String, u64)>>> = Arc::default();
    let mut config = WorkerConfig::new(&q.consumer_url, &q.stream, &q.group, "lib-1");
    config.concurrency = 4;
    config.visibility_timeout = Duration::from_millis(300);
    config.dead_letter_stream = Some(q.dlq.clone());
    let worker = {
        let calls = calls.clone();
        Worker::new(config, move |msg: Message| {
            let calls = calls.clone();
            async move {
                calls.lock().unwrap().push((msg.id().to_owned(), msg.delivery_count()));
                if msg.data() == b"flaky" && msg.delivery_count() == 1 {
                    return Err("transient failure");
                }
                Ok(())
            }
        })
    };
    let worker = RunningWorker::start(worker);
    wait_until(T, "both acked", || async {
        q.pending().await == 0 && calls.lock().unwrap().len() == 3
    })
    .await;
    let summary = worker.stop().await.expect("worker ran");
    assert_eq!(summary.acked, 2);
    assert_eq!(summary.failed, 1);
    assert_eq!(summary.reclaimed, 1);
    let calls = calls.lock().unwrap().clone();
    assert!(
        calls.contains(&(first.clone(), 1)) && calls.contains(&(first, 2)),
        "{calls:?}"
    );
    assert!(calls.contains(&(second, 1)), "{calls:?}");
    assert_eq!(q.stats().await.get("processed:lib-1"), Some(&3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trimmed_pending_entry_is_acked_not_crashed_on() {
    let q = TestQueue::new("trim").await;
    let id = q.publish("will vanish", &[]).await;
    // A consumer that reads and dies; then the entry is trimmed away.
    let mut admin = admin().await;
    let _: ::redis::Value = cmd(
        &mut admin,
        &[
            "XREADGROUP",
            "GROUP",
            &q.group,
            "ghost",
            "COUNT",
            "1",
            "STREAMS",
            &q.stream,
            ">",
        ],
    )
    .await;
    let _: i64 = cmd(&mut admin, &["XDEL", &q.stream, &id]).await;
    assert_eq!(q.pending().await, 1);
    let mut config = WorkerConfig::new(&q.consumer_url, &q.stream, &q.group, "lib-trim");
    config.visibility_timeout = Duration::from_millis(200);
    let worker = Worker::new(config, |_msg: Message| async { Ok::<(), String>(()) });
    let counters = worker.counters();
    let worker = RunningWorker::start(worker);
    wait_until(T, "trimmed entry settled", || async {
        counters.trimmed.load(std::sync::atomic::Ordering::Relaxed) == 1 && q.pending().await == 0
    })
    .await;
    // Still alive and working.
    q.publish("after", &[]).await;
    wait_until(T, "next message acked", || async {
        counters.acked.load(std::sync::atomic::Ordering::Relaxed) == 1
    })
    .await;
    worker.stop().await.expect("worker ran");
}

/// At-least-once under crashes: 100,000 messages, 3 `streamq worker`
/// processes in HTTP mode POSTing to a counting server in this test, while
/// the test SIGKILLs a random worker every ~1.5 s and starts a fresh one.
/// HTTP mode rather than exec: a process per message would take minutes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_least_once_under_crashes() {
    const N: usize = 100_000;
    let q = TestQueue::new("crash").await;
    let sink = Sink::start(Duration::ZERO).await;

    // Publish with the producer library (admin user).
    let producer = streamq::producer::Producer::connect(&redis_url(), &q.stream)
        .await
        .unwrap();
    let mut published = Vec::with_capacity(N);
    for chunk in (0..N).collect::<Vec<_>>().chunks(5_000) {
        let batch: Vec<_> = chunk
            .iter()
            .map(|i| streamq::producer::NewMessage::new(i.to_string()))
            .collect();
        published.extend(producer.publish_batch(&batch).await.unwrap());
    }
    assert_eq!(published.len(), N);

    let args = [
        "--http",
        sink.url.as_str(),
        "--concurrency",
        "32",
        "--visibility-timeout-ms",
        "2000",
    ];
    let mut next = 0;
    let mut spawn = |q: &TestQueue| {
        next += 1;
        q.worker(&format!("w{next}"), &args, &[])
    };
    let mut workers: Vec<_> = (0..3).map(|_| spawn(&q)).collect();
    let start = Instant::now();
    let mut kills = 0;
    let mut last_kill = Instant::now();
    // A deadline on progress, not on the whole run: a loaded 2-core CI box is slow
    // but steady, while a real stall makes no progress at all for a minute.
    let mut progress = (-1, Instant::now());
    loop {
        let (read, lag) = q.group_progress().await;
        if read == N as i64 && lag == 0 && q.pending().await == 0 {
            break;
        }
        if read != progress.0 {
            progress = (read, Instant::now());
        }
        assert!(
            progress.1.elapsed() < Duration::from_secs(60) && start.elapsed() < Duration::from_secs(900),
            "not done: read {read}, lag {lag}, no progress for {:?}",
            progress.1.elapsed()
        );
        if last_kill.elapsed() > Duration::from_millis(1500) && lag > 0 {
            let victim = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos() as usize
                % workers.len();
            workers[victim].kill_group();
            workers[victim] = spawn(&q);
            kills += 1;
            last_kill = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let elapsed = start.elapsed();
    drop(workers);

    let seen = sink.snapshot().handled;
    let dead: Vec<String> = q
        .dead_letters()
        .await
        .into_iter()
        .map(|(_, f)| f["streamq.original-id"].clone())
        .collect();
    let missing: Vec<&String> = published
        .iter()
        .filter(|id| !seen.contains_key(*id) && !dead.contains(id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} messages neither handled nor dead-lettered",
        missing.len()
    );
    let acked = published
        .iter()
        .filter(|id| seen.contains_key(*id) && !dead.contains(id))
        .count();
    let duplicates: u32 = seen.values().map(|n| n - 1).sum();
    println!(
        "at_least_once_under_crashes: {N} published, {acked} handled+acked, {} dead-lettered, \
         {kills} workers killed, {duplicates} duplicate deliveries, {elapsed:.1?}",
        dead.len()
    );
    assert_eq!(acked + dead.len(), N);
    assert!(kills >= 1, "the test must kill at least one worker to mean anything");
}

/// A panicking library handler fails its message like an `Err` (here:
/// dead-lettered with the panic message) and the worker carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn library_handler_panic_fails_only_its_message() {
    let q = TestQueue::new("panic").await;
    let bad = q.publish("boom", &[]).await;
    let good = q.publish("fine", &[]).await;
    let mut config = WorkerConfig::new(&q.consumer_url, &q.stream, &q.group, "lib-panic");
    config.concurrency = 2;
    config.max_deliveries = 1;
    config.dead_letter_stream = Some(q.dlq.clone());
    let worker = Worker::new(config, |msg: Message| async move {
        if msg.data() == b"boom" {
            panic!("cannot handle boom");
        }
        Ok::<(), String>(())
    });
    let worker = RunningWorker::start(worker);
    wait_until(T, "one dead letter, nothing pending", || async {
        q.dead_letters().await.len() == 1 && q.pending().await == 0 && q.group_progress().await == (2, 0)
    })
    .await;
    let summary = worker.stop().await.expect("the worker survived the panic");
    assert_eq!(
        (summary.acked, summary.failed, summary.dead_lettered),
        (1, 1, 1),
        "{summary:?}"
    );
    let dead = q.dead_letters().await;
    assert_eq!(dead[0].1["streamq.original-id"], bad);
    assert!(
        dead[0].1["streamq.error"].contains("handler panicked: cannot handle boom"),
        "{:?}",
        dead[0].1
    );
    assert_ne!(dead[0].1["streamq.original-id"], good);
}
