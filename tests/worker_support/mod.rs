//! Helpers of the worker and producer tests: unique names on the shared
//! redis-server, a restricted consumer ACL user, `streamq` child processes,
//! and polling with timeouts (never sleeps as synchronisation).
#![allow(dead_code)] // each test binary uses a different part

use std::{
    future::Future,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use ::redis::{Value, aio::MultiplexedConnection};

pub const STREAMQ: &str = env!("CARGO_BIN_EXE_streamq");

/// The admin URL of the test redis-server. Missing is a failure, not a skip.
pub fn redis_url() -> String {
    std::env::var("STREAMQ_REDIS_URL").unwrap_or_else(|_| {
        panic!(
            "STREAMQ_REDIS_URL is not set: these tests need the local redis-server.\n\
             Run `make test`, or `source /tmp/sq/env.sh` / `eval \"$(tests/cluster/up)\"` first."
        )
    })
}

/// A name no other test (in this or another process) uses.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "sqtest-{prefix}-{}-{}-{nanos:x}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

pub async fn admin() -> MultiplexedConnection {
    let client = ::redis::Client::open(redis_url()).expect("a valid STREAMQ_REDIS_URL");
    client
        .get_multiplexed_async_connection_with_config(&patient_redis())
        .await
        .expect("connect to the test redis-server with STREAMQ_REDIS_URL")
}

pub async fn cmd<T: ::redis::FromRedisValue>(conn: &mut MultiplexedConnection, args: &[&str]) -> T {
    let mut c = ::redis::cmd(args[0]);
    for a in &args[1..] {
        c.arg(*a);
    }
    c.query_async(conn).await.unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

/// A queue: stream + group (+ dead-letter stream name), made the way the
/// operator makes them, and a consumer user restricted the way the
/// operator restricts it. Keys and user are removed on drop.
pub struct TestQueue {
    pub stream: String,
    pub group: String,
    pub dlq: String,
    pub user: String,
    pub consumer_url: String,
    pub dir: PathBuf,
}

impl TestQueue {
    pub async fn new(prefix: &str) -> Self {
        let stream = unique(prefix);
        let group = "workers".to_owned();
        let dlq = format!("{stream}-dlq");
        let user = format!("{stream}-user");
        let password = format!("pw-{}", unique("p"));
        let mut conn = admin().await;
        let _: () = cmd(&mut conn, &["XGROUP", "CREATE", &stream, &group, "0", "MKSTREAM"]).await;
        // Exactly the rules the operator gives a Queue's consumer user.
        let rules =
            streamq::redis::acl::setuser_rules(streamq::redis::acl::Role::Consumer, &password, &stream, Some(&dlq));
        let mut args = vec!["ACL", "SETUSER", user.as_str()];
        args.extend(rules.iter().map(String::as_str));
        let _: () = cmd(&mut conn, &args).await;
        let consumer_url = with_credentials(&redis_url(), &user, &password);
        let dir = std::env::temp_dir().join(&stream);
        std::fs::create_dir_all(&dir).expect("create a scratch directory");
        Self {
            stream,
            group,
            dlq,
            user,
            consumer_url,
            dir,
        }
    }

    pub fn stats_key(&self) -> String {
        format!("{}:stats:{}", self.stream, self.group)
    }

    /// XADD with the admin user (the consumer user may not).
    pub async fn publish(&self, data: &str, headers: &[(&str, &str)]) -> String {
        let mut conn = admin().await;
        let mut c = ::redis::cmd("XADD");
        c.arg(&self.stream).arg("*").arg("data").arg(data);
        for (k, v) in headers {
            c.arg(*k).arg(*v);
        }
        c.query_async(&mut conn).await.expect("XADD")
    }

    /// XADD of arbitrary field/value bytes with the admin user: entries
    /// `streamq publish` would never write (no `data`, binary, huge).
    pub async fn publish_raw(&self, fields: &[(&[u8], &[u8])]) -> String {
        let mut conn = admin().await;
        let mut c = ::redis::cmd("XADD");
        c.arg(&self.stream).arg("*");
        for (k, v) in fields {
            c.arg(*k).arg(*v);
        }
        c.query_async(&mut conn).await.expect("XADD")
    }

    pub async fn pending(&self) -> i64 {
        let mut conn = admin().await;
        let v: Value = cmd(&mut conn, &["XPENDING", &self.stream, &self.group]).await;
        match v {
            Value::Array(items) => match items.first() {
                Some(Value::Int(n)) => *n,
                _ => panic!("XPENDING summary: {items:?}"),
            },
            other => panic!("XPENDING summary: {other:?}"),
        }
    }

    /// `(entries-read, lag)` of the group.
    pub async fn group_progress(&self) -> (i64, i64) {
        let mut conn = admin().await;
        let v: Vec<std::collections::HashMap<String, Value>> = cmd(&mut conn, &["XINFO", "GROUPS", &self.stream]).await;
        let g = v
            .iter()
            .find(|g| matches!(g.get("name"), Some(Value::BulkString(n)) if n == self.group.as_bytes()))
            .expect("the group exists");
        let int = |k: &str| match g.get(k) {
            Some(Value::Int(n)) => *n,
            _ => -1,
        };
        (int("entries-read"), int("lag"))
    }

    pub async fn dead_letters(&self) -> Vec<(String, std::collections::HashMap<String, String>)> {
        let mut conn = admin().await;
        let v: Vec<(String, std::collections::HashMap<String, String>)> =
            cmd(&mut conn, &["XRANGE", &self.dlq, "-", "+"]).await;
        v
    }

    pub async fn stats(&self) -> std::collections::HashMap<String, i64> {
        let mut conn = admin().await;
        cmd(&mut conn, &["HGETALL", &self.stats_key()]).await
    }

    /// A `streamq worker` as the restricted user, in its own process group
    /// (so [`WorkerProcess::kill_group`] takes its handlers down too).
    pub fn worker(&self, consumer: &str, extra: &[&str], handler: &[&str]) -> WorkerProcess {
        let log = self.dir.join(format!("{consumer}.log"));
        let mut cmd = Command::new(STREAMQ);
        cmd.arg("worker")
            .args(extra)
            .arg("--")
            .args(handler)
            .env("STREAMQ_REDIS_URL", &self.consumer_url)
            .env("STREAMQ_STREAM", &self.stream)
            .env("STREAMQ_GROUP", &self.group)
            .env("STREAMQ_CONSUMER", consumer)
            .env("STREAMQ_DEAD_LETTER_STREAM", &self.dlq)
            .env("RUST_LOG", "streamq=info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::from(std::fs::File::create(&log).expect("log file")))
            .stderr(Stdio::from(
                std::fs::OpenOptions::new().append(true).open(&log).expect("log file"),
            ))
            .process_group(0);
        let child = cmd.spawn().expect("spawn streamq worker");
        WorkerProcess { child, log }
    }

    /// A handler script in the scratch directory.
    pub fn script(&self, name: &str, body: &str) -> String {
        let path = self.dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write handler script");
        let mut perms = std::fs::metadata(&path).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
        std::fs::set_permissions(&path, perms).unwrap();
        path.to_string_lossy().into_owned()
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl Drop for TestQueue {
    fn drop(&mut self) {
        // Best effort, synchronously: the runtime may be gone.
        if let Ok(client) = ::redis::Client::open(redis_url())
            && let Ok(mut conn) = client.get_connection()
        {
            let _: Result<(), _> = ::redis::cmd("DEL")
                .arg(&self.stream)
                .arg(&self.dlq)
                .arg(self.stats_key())
                .query(&mut conn);
            let _: Result<(), _> = ::redis::cmd("ACL").arg("DELUSER").arg(&self.user).query(&mut conn);
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// `redis://[old creds@]host...` → `redis://user:password@host...`.
pub fn with_credentials(url: &str, user: &str, password: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("URL with a scheme");
    let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    format!("{scheme}://{user}:{password}@{host}")
}

pub struct WorkerProcess {
    pub child: Child,
    pub log: PathBuf,
}

impl WorkerProcess {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill -{sig} {}", self.pid());
    }

    /// SIGKILL to the worker and its handlers.
    pub fn kill_group(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.pid())])
            .status();
        let _ = self.child.wait();
    }

    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "worker did not exit within {timeout:?}; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.kill_group();
        }
    }
}

/// Polls `cond` every 20 ms until it holds; panics with `what` after `timeout`.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if cond().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn read_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Runs `streamq` to completion with `env`, stdin from `input`.
pub fn run_streamq(args: &[&str], env: &[(&str, &str)], input: Option<&[u8]>) -> Output {
    use std::io::Write;
    let mut cmd = Command::new(STREAMQ);
    cmd.args(args)
        .env_remove("STREAMQ_REDIS_URL")
        .env_remove("STREAMQ_STREAM")
        .env("NO_COLOR", "1")
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn streamq");
    if let Some(input) = input {
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(input).expect("write stdin");
    }
    child.wait_with_output().expect("wait for streamq")
}

pub fn assert_clean_failure(out: &Output, expect_in_stderr: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "expected failure, got {:?}; stderr:\n{stderr}",
        out.status
    );
    assert!(!stderr.contains("panicked"), "panicked:\n{stderr}");
    assert!(
        stderr.contains(expect_in_stderr),
        "stderr should contain {expect_in_stderr:?}:\n{stderr}"
    );
}

/// Connection settings for test clients. redis-rs defaults to a 1 s connect and a
/// 500 ms response timeout, which a loaded 2-core CI box running a 100,000-message
/// test beside this one can exceed without anything being wrong.
pub fn patient_redis() -> ::redis::AsyncConnectionConfig {
    ::redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(std::time::Duration::from_secs(10)))
        .set_response_timeout(Some(std::time::Duration::from_secs(30)))
}
