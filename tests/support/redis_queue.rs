//! A queue straight on the shared redis-server, without the operator: a
//! stream and group made the way the operator makes them, a consumer user
//! restricted the way it restricts one, and workers on it: `streamq worker`
//! processes and the library's [`Worker`].

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::{Child, ExitStatus},
    time::Duration,
};

use ::redis::{Value, aio::MultiplexedConnection};
use streamq::worker::{RunSummary, Worker, WorkerError};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{
    env::{redis_url, unique_name},
    process::{spawn_worker, wait_exit},
    redis_client::{cmd, connect, group_info, int_field, with_credentials},
};

/// An admin connection to the shared redis-server.
pub async fn admin() -> MultiplexedConnection {
    connect(&redis_url()).await
}

/// A stream, its group `workers` and dead-letter stream, and a consumer user
/// with exactly the operator's rules. Keys and user are removed on drop.
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
        let stream = unique_name(&format!("sqtest-{prefix}"));
        let group = "workers".to_owned();
        let dlq = format!("{stream}-dlq");
        let user = format!("{stream}-user");
        let password = unique_name("pw");
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
        let mut fields: Vec<(&[u8], &[u8])> = vec![(b"data", data.as_bytes())];
        fields.extend(headers.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes())));
        self.publish_raw(&fields).await
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
        let g = group_info(&mut admin().await, &self.stream, &self.group)
            .await
            .expect("the group exists");
        let int = |k: &str| int_field(&g, k).unwrap_or(-1);
        (int("entries-read"), int("lag"))
    }

    pub async fn dead_letters(&self) -> Vec<(String, HashMap<String, String>)> {
        cmd(&mut admin().await, &["XRANGE", &self.dlq, "-", "+"]).await
    }

    pub async fn stats(&self) -> HashMap<String, i64> {
        cmd(&mut admin().await, &["HGETALL", &self.stats_key()]).await
    }

    /// A `streamq worker` as the restricted user, in its own process group
    /// (so [`WorkerProcess::kill_group`] takes its handlers down too).
    pub fn worker(&self, consumer: &str, extra: &[&str], handler: &[&str]) -> WorkerProcess {
        let log = self.dir.join(format!("{consumer}.log"));
        let mut args = vec!["worker"];
        args.extend_from_slice(extra);
        args.push("--");
        args.extend_from_slice(handler);
        let env = [
            ("STREAMQ_REDIS_URL", self.consumer_url.as_str()),
            ("STREAMQ_STREAM", &self.stream),
            ("STREAMQ_GROUP", &self.group),
            ("STREAMQ_CONSUMER", consumer),
            ("STREAMQ_DEAD_LETTER_STREAM", &self.dlq),
        ];
        let child = spawn_worker(&args, env, &log);
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

    /// A path in the scratch directory.
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// A directory in the scratch directory, created.
    pub fn subdir(&self, name: &str) -> PathBuf {
        let dir = self.dir.join(name);
        std::fs::create_dir_all(&dir).expect("create a scratch directory");
        dir
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
        let ok = std::process::Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill -{sig} {}", self.pid());
    }

    /// SIGKILL to the worker and its handlers.
    pub fn kill_group(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.pid())])
            .status();
        let _ = self.child.wait();
    }

    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let what = format!("worker {} to exit", self.log.display());
        wait_exit(&mut self.child, timeout, &what).await
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.kill_group();
        }
        if std::thread::panicking() {
            eprintln!("--- worker log ({}) ---\n{}", self.log.display(), self.log());
        }
    }
}

/// The lines of a file, none if it does not exist (yet).
pub fn read_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// A library [`Worker`] running in a task of its own until [`RunningWorker::stop`].
pub struct RunningWorker {
    stop: CancellationToken,
    task: JoinHandle<Result<RunSummary, WorkerError>>,
}

impl RunningWorker {
    pub fn start(worker: Worker) -> Self {
        let stop = CancellationToken::new();
        let task = tokio::spawn(worker.run(stop.clone().cancelled_owned()));
        Self { stop, task }
    }

    /// Shuts it down and returns how its run went.
    pub async fn stop(self) -> Result<RunSummary, WorkerError> {
        self.stop.cancel();
        self.task.await.expect("the worker task")
    }
}
