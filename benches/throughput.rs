//! `make bench`: streamq's producer and worker against `redis-benchmark` on
//! the same redis-server (STREAMQ_REDIS_URL).
//!
//! 1. `redis-benchmark -P 64 -n 1000000 XADD` — the server's own ceiling.
//! 2. `streamq publish --file` of 1,000,000 small messages (wall time of the process).
//! 3. Library `Worker` consume + ack of those 1,000,000 with a no-op handler.
//! 4. `streamq worker -- true` (a process per message), fewer messages.

use std::{
    process::Command,
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use streamq::worker::{Message, Worker, WorkerConfig};

const N: usize = 1_000_000;
const EXEC_N: usize = 2_000;

fn main() {
    let url = std::env::var("STREAMQ_REDIS_URL")
        .expect("STREAMQ_REDIS_URL is not set: run `make bench`, or `eval \"$(tests/cluster/up)\"` first");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let tag = format!("bench-{}", std::process::id());

    let redis_rate = redis_benchmark(&url, &format!("{tag}-rb"));
    println!("redis-benchmark XADD -P 64:      {redis_rate:>12.0} msg/s");

    let stream = format!("{tag}-stream");
    rt.block_on(admin(&url, &["XGROUP", "CREATE", &stream, "g", "0", "MKSTREAM"]));
    let publish_rate = publish(&url, &stream);
    println!("streamq publish (1M lines):      {publish_rate:>12.0} msg/s");

    let consume_rate = rt.block_on(consume(&url, &stream));
    println!("streamq Worker consume+ack:      {consume_rate:>12.0} msg/s");

    let exec_stream = format!("{tag}-exec");
    let exec_rate = rt.block_on(exec_mode(&url, &exec_stream));
    println!("streamq worker exec mode (`true`, concurrency 8): {exec_rate:.0} msg/s ({EXEC_N} messages)");

    println!();
    println!(
        "publish / redis-benchmark:      {:.2}  (goal >= 0.5)",
        publish_rate / redis_rate
    );
    println!(
        "consume+ack / redis-benchmark:  {:.2}  (goal >= 0.25)",
        consume_rate / redis_rate
    );

    rt.block_on(admin(
        &url,
        &[
            "DEL",
            &format!("{tag}-rb"),
            &stream,
            &format!("{stream}:stats:g"),
            &exec_stream,
            &format!("{exec_stream}:stats:g"),
        ],
    ));
}

async fn admin(url: &str, args: &[&str]) {
    let client = ::redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let mut c = ::redis::cmd(args[0]);
    for a in &args[1..] {
        c.arg(*a);
    }
    let _: ::redis::Value = c.query_async(&mut conn).await.unwrap();
}

fn redis_benchmark(url: &str, key: &str) -> f64 {
    let parsed = ::redis::parse_redis_url(url).expect("a redis:// URL");
    let mut cmd = Command::new("redis-benchmark");
    cmd.args(["-h", parsed.host_str().unwrap_or("127.0.0.1")])
        .args(["-p", &parsed.port().unwrap_or(6379).to_string()]);
    if !parsed.username().is_empty() {
        cmd.args(["--user", parsed.username()]);
    }
    if let Some(pw) = parsed.password() {
        cmd.args(["-a", pw]);
    }
    let out = cmd
        .args(["-P", "64", "-n", &N.to_string(), "-q", "XADD", key, "*", "data", "x"])
        .output()
        .expect("run redis-benchmark (Debian package redis-tools)");
    let text = String::from_utf8_lossy(&out.stdout);
    // "XADD ...: 854700.88 requests per second, p50=..." (after \r progress lines)
    let line = text
        .rsplit('\r')
        .flat_map(|s| s.lines())
        .find(|l| l.contains("requests per second"))
        .unwrap_or_else(|| panic!("unexpected redis-benchmark output: {text}"));
    line.split(": ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("cannot parse {line:?}"))
}

fn publish(url: &str, stream: &str) -> f64 {
    let file = std::env::temp_dir().join(format!("{stream}.txt"));
    let lines: String = (0..N).map(|i| format!("message {i}\n")).collect();
    std::fs::write(&file, lines).unwrap();
    let start = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_streamq"))
        .args([
            "publish",
            "--url",
            url,
            "--stream",
            stream,
            "--file",
            file.to_str().unwrap(),
        ])
        .output()
        .expect("run streamq publish");
    let elapsed = start.elapsed();
    let _ = std::fs::remove_file(&file);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    print!("  {}", String::from_utf8_lossy(&out.stdout));
    N as f64 / elapsed.as_secs_f64()
}

async fn consume(url: &str, stream: &str) -> f64 {
    let mut config = WorkerConfig::new(url, stream, "g", "bench");
    config.concurrency = 1024;
    let worker = Worker::new(config, |_msg: Message| async { Ok::<(), String>(()) });
    let counters = worker.counters();
    let stop = tokio_util::sync::CancellationToken::new();
    let start = Instant::now();
    let run = tokio::spawn(worker.run(stop.clone().cancelled_owned()));
    while counters.acked.load(Ordering::Relaxed) < N as u64 {
        assert!(start.elapsed() < Duration::from_secs(300), "consume did not finish");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = start.elapsed();
    stop.cancel();
    run.await.unwrap().unwrap();
    N as f64 / elapsed.as_secs_f64()
}

async fn exec_mode(url: &str, stream: &str) -> f64 {
    admin(url, &["XGROUP", "CREATE", stream, "g", "0", "MKSTREAM"]).await;
    let producer = streamq::producer::Producer::connect(url, stream).await.unwrap();
    let batch: Vec<_> = (0..EXEC_N)
        .map(|i| streamq::producer::NewMessage::new(i.to_string()))
        .collect();
    producer.publish_batch(&batch).await.unwrap();
    let start = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_streamq"))
        .args([
            "worker",
            "--redis-url",
            url,
            "--stream",
            stream,
            "--group",
            "g",
            "--consumer",
            "exec",
        ])
        .args(["--concurrency", "8", "--", "true"])
        .env("RUST_LOG", "warn")
        .spawn()
        .expect("spawn streamq worker");
    let client = ::redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let key = format!("{stream}:stats:g");
    loop {
        let processed: Option<u64> = ::redis::cmd("HGET")
            .arg(&key)
            .arg("processed:exec")
            .query_async(&mut conn)
            .await
            .unwrap();
        if processed.unwrap_or(0) >= EXEC_N as u64 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(300), "exec mode did not finish");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = start.elapsed();
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let _ = child.wait();
    EXEC_N as f64 / elapsed.as_secs_f64()
}
