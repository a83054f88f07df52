//! Malformed stream entries (hostile input): entries written with a
//! plain `XADD` that `streamq publish` would never produce must reach the
//! worker runtime without crashing it, in the library and in exec mode.
//!
//! Documented behaviour (src/worker/mod.rs):
//! - no `data` field: the payload is empty (empty stdin), every field is a header;
//! - binary payloads and header values are passed through byte-exact
//!   (exec mode: a header value holding NUL, or too long for one environment
//!   variable, is left out of the env with a warning);
//! - a 10 MB payload is passed through whole; exec mode writes stdin while it
//!   drains the child's stderr, so neither side can block the other.
//!
//! Each of these is handled and acked like any other message, and the
//! worker goes on with the next normal message.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use crate::support::{redis_queue::*, *};
use streamq::worker::{Message, Worker, WorkerConfig};

const T: Duration = Duration::from_secs(60);
const TEN_MB: usize = 10 * 1024 * 1024;

/// Deterministic bytes covering all 256 values, so that invalid UTF-8, NUL
/// and CR/LF all occur (a simple xorshift; reproducible on failure).
fn binary_payload(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

#[test]
fn binary_payload_is_really_binary() {
    let p = binary_payload(4096, 7);
    assert!(std::str::from_utf8(&p).is_err(), "must not be valid UTF-8");
    assert!(p.contains(&0) && p.contains(&b'\n') && p.contains(&0xff));
}

#[derive(Clone, Debug)]
struct Received {
    data: Vec<u8>,
    has_data: bool,
    headers: Vec<(String, Vec<u8>)>,
    delivery: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn library_worker_receives_malformed_entries_byte_exact() {
    let q = TestQueue::new("mal-lib").await;
    let binary = binary_payload(64 * 1024, 1);
    let binary_header = [0xff, 0x00, 0x80, b'\n', 0xc3, 0x28];
    let big = binary_payload(TEN_MB, 2);

    let no_data = q.publish_raw(&[(b"tenant", b"acme"), (b"kind", b"no-data")]).await;
    let bin = q
        .publish_raw(&[(b"data", &binary), (b"blob", &binary_header), (b"name\xff", b"v")])
        .await;
    let huge = q.publish_raw(&[(b"data", &big)]).await;
    let after = q.publish("after", &[("tenant", "acme")]).await;

    let received: Arc<Mutex<HashMap<String, Received>>> = Arc::default();
    let mut config = WorkerConfig::new(&q.consumer_url, &q.stream, &q.group, "lib-mal");
    config.concurrency = 2;
    config.dead_letter_stream = Some(q.dlq.clone());
    config.max_deliveries = 1;
    let worker = {
        let received = received.clone();
        Worker::new(config, move |msg: Message| {
            let received = received.clone();
            async move {
                let r = Received {
                    data: msg.data().to_vec(),
                    has_data: msg.field("data").is_some(),
                    headers: msg.headers().map(|(k, v)| (k.to_owned(), v.to_vec())).collect(),
                    delivery: msg.delivery_count(),
                };
                received.lock().unwrap().insert(msg.id().to_owned(), r);
                Ok::<(), String>(())
            }
        })
    };
    let worker = RunningWorker::start(worker);
    wait_until(T, "all four entries handled and acked", || async {
        received.lock().unwrap().len() == 4 && q.pending().await == 0 && q.group_progress().await == (4, 0)
    })
    .await;
    let summary = worker.stop().await.expect("the worker ran and stopped cleanly");

    let got = received.lock().unwrap().clone();
    let no_data = &got[&no_data];
    assert!(no_data.data.is_empty(), "missing data is an empty payload");
    assert!(!no_data.has_data, "and can be told from an empty one");
    assert_eq!(
        no_data.headers,
        vec![
            ("tenant".to_owned(), b"acme".to_vec()),
            ("kind".to_owned(), b"no-data".to_vec())
        ],
        "every field of a data-less entry is a header, in stream order"
    );
    let bin = &got[&bin];
    assert!(bin.data == binary, "binary payload altered ({} bytes)", bin.data.len());
    assert!(bin.has_data);
    assert_eq!(
        bin.headers,
        vec![
            ("blob".to_owned(), binary_header.to_vec()),
            ("name\u{fffd}".to_owned(), b"v".to_vec())
        ],
        "values byte-exact; a non-UTF-8 field name made text"
    );
    let huge = &got[&huge];
    assert_eq!(huge.data.len(), TEN_MB);
    assert!(huge.data == big, "10 MB payload altered");
    assert!(huge.headers.is_empty());
    assert_eq!(got[&after].data, b"after");
    assert!(got.values().all(|r| r.delivery == 1), "each handled once");

    assert_eq!(summary.acked, 4, "{summary:?}");
    assert_eq!(summary.failed, 0, "{summary:?}");
    assert_eq!(summary.dead_lettered, 0, "{summary:?}");
    assert!(q.dead_letters().await.is_empty());
    assert_eq!(q.stats().await.get("processed:lib-mal"), Some(&4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_worker_passes_malformed_entries_on_stdin_byte_exact() {
    let q = TestQueue::new("mal-exec").await;
    let out = q.subdir("out");
    // stdin to <id>.stdin, the header env to <id>.env, then the id to `done`
    // (last, so a listed id has complete files).
    let handler = q.script(
        "h.sh",
        &format!(
            "set -e\n\
             cat > {o}/\"$STREAMQ_MESSAGE_ID\".stdin\n\
             env | grep '^STREAMQ_HEADER_' | sort > {o}/\"$STREAMQ_MESSAGE_ID\".env || true\n\
             echo \"$STREAMQ_MESSAGE_ID\" >> {o}/done",
            o = out.display()
        ),
    );
    let binary = binary_payload(64 * 1024, 3);
    let big = binary_payload(TEN_MB, 4);
    // Too long for one environment variable (Linux: 128 KiB): left out, not fatal.
    let long_header = vec![b'h'; 200 * 1024];

    let no_data = q.publish_raw(&[(b"tenant", b"acme"), (b"kind", b"no-data")]).await;
    let bin = q
        .publish_raw(&[(b"data", &binary), (b"with-nul", b"a\0b"), (b"ok", b"fine")])
        .await;
    let huge = q.publish_raw(&[(b"data", &big), (b"long", &long_header)]).await;
    let after = q.publish("after", &[]).await;

    let w = q.worker("c1", &["--concurrency", "2", "--max-deliveries", "1"], &[&handler]);
    wait_until(T, "all four entries handled and acked", || async {
        read_lines(&out.join("done")).len() == 4 && q.pending().await == 0 && q.group_progress().await == (4, 0)
    })
    .await;

    let stdin = |id: &str| std::fs::read(out.join(format!("{id}.stdin"))).expect("stdin file");
    let env = |id: &str| read_lines(&out.join(format!("{id}.env")));
    assert!(stdin(&no_data).is_empty(), "missing data is empty stdin");
    assert_eq!(
        env(&no_data),
        vec!["STREAMQ_HEADER_KIND=no-data", "STREAMQ_HEADER_TENANT=acme"]
    );
    assert!(stdin(&bin) == binary, "binary stdin altered");
    assert_eq!(env(&bin), vec!["STREAMQ_HEADER_OK=fine"], "the NUL header is left out");
    let got = stdin(&huge);
    assert_eq!(got.len(), TEN_MB);
    assert!(got == big, "10 MB stdin altered");
    assert!(env(&huge).is_empty(), "the over-long header is left out");
    assert_eq!(stdin(&after), b"after");

    assert!(q.dead_letters().await.is_empty(), "nothing failed");
    assert_eq!(q.stats().await.get("processed:c1"), Some(&4));
    let log = w.log();
    assert!(!log.contains("panicked"), "{log}");
    assert!(
        log.contains("contains NUL") && log.contains("too long"),
        "warnings logged:\n{log}"
    );
}

/// A handler that never reads its 10 MB stdin, and one that writes more
/// than a pipe buffer of stderr before it reads: neither may hang the
/// worker. Both succeed, so both are acked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_big_stdin_does_not_deadlock() {
    let q = TestQueue::new("mal-pipe").await;
    let out = q.subdir("out");
    let handler = q.script(
        "h.sh",
        &format!(
            "set -e\n\
             case \"$STREAMQ_HEADER_MODE\" in\n\
             ignore) ;;\n\
             stderr-first) head -c 262144 /dev/zero | tr '\\0' e >&2; cat > {o}/\"$STREAMQ_MESSAGE_ID\".stdin ;;\n\
             *) cat > {o}/\"$STREAMQ_MESSAGE_ID\".stdin ;;\n\
             esac\n\
             echo \"$STREAMQ_MESSAGE_ID\" >> {o}/done",
            o = out.display()
        ),
    );
    let big = binary_payload(TEN_MB, 5);
    let ignored = q.publish_raw(&[(b"data", &big), (b"mode", b"ignore")]).await;
    let stderr_first = q.publish_raw(&[(b"data", &big), (b"mode", b"stderr-first")]).await;
    let after = q.publish("after", &[]).await;
    let _w = q.worker("c1", &["--max-deliveries", "1", "--timeout", "40s"], &[&handler]);
    wait_until(T, "all three handled and acked", || async {
        read_lines(&out.join("done")).len() == 3 && q.pending().await == 0 && q.group_progress().await == (3, 0)
    })
    .await;
    assert_eq!(
        read_lines(&out.join("done")),
        vec![ignored, stderr_first.clone(), after.clone()]
    );
    assert!(std::fs::read(out.join(format!("{stderr_first}.stdin"))).unwrap() == big);
    assert_eq!(std::fs::read(out.join(format!("{after}.stdin"))).unwrap(), b"after");
    assert!(q.dead_letters().await.is_empty(), "nothing failed");
}

/// A malformed entry whose handler fails is dead-lettered with its fields
/// byte-exact (binary payload, no `data`), and the worker carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_malformed_entries_are_dead_lettered_byte_exact() {
    let q = TestQueue::new("mal-dlq").await;
    let binary = binary_payload(4096, 6);
    let bin = q.publish_raw(&[(b"data", &binary)]).await;
    let no_data = q.publish_raw(&[(b"only", b"header")]).await;
    let after = q.publish("after", &[]).await;
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut config = WorkerConfig::new(&q.consumer_url, &q.stream, &q.group, "lib-dlq");
    config.dead_letter_stream = Some(q.dlq.clone());
    config.max_deliveries = 1;
    let worker = {
        let seen = seen.clone();
        Worker::new(config, move |msg: Message| {
            let seen = seen.clone();
            async move {
                seen.lock().unwrap().push(msg.id().to_owned());
                if msg.data() == b"after" {
                    Ok(())
                } else {
                    Err("cannot parse")
                }
            }
        })
    };
    let worker = RunningWorker::start(worker);
    wait_until(T, "two dead letters, nothing pending", || async {
        seen.lock().unwrap().len() == 3 && q.pending().await == 0
    })
    .await;
    let summary = worker.stop().await.expect("the worker ran");
    assert_eq!(
        (summary.acked, summary.failed, summary.dead_lettered),
        (1, 2, 2),
        "{summary:?}"
    );

    let mut conn = admin().await;
    let dead: Vec<(String, HashMap<String, Vec<u8>>)> = cmd(&mut conn, &["XRANGE", &q.dlq, "-", "+"]).await;
    let by_original: HashMap<Vec<u8>, &HashMap<String, Vec<u8>>> = dead
        .iter()
        .map(|(_, f)| (f["streamq.original-id"].clone(), f))
        .collect();
    assert_eq!(by_original.len(), 2, "{dead:?}");
    let b = by_original[bin.as_bytes()];
    assert!(b["data"] == binary, "dead-lettered payload altered");
    let n = by_original[no_data.as_bytes()];
    assert_eq!(n["only"], b"header");
    assert!(!n.contains_key("data"), "no data field invented");
    assert_eq!(n["streamq.error"], b"cannot parse");
    assert!(!by_original.contains_key(after.as_bytes()));
}
