//! redis-servers of a test's own, beside the shared one: to kill, stop and
//! restart ([`PrivateRedis`]), or standing in for the Redis pod of a managed
//! Queue, which kwok does not run ([`RedisServer::stand_in`]).

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use k8s_openapi::api::core::v1::ConfigMap;

use super::{
    api::wait_for,
    env::{TestEnv, unique_name},
    process::{free_port, log_file, signal},
    wait::wait_until,
};

/// The redis.conf the operator generated for managed Queue `queue`, once its ConfigMap is there.
pub async fn managed_redis_conf(env: &TestEnv, queue: &str) -> String {
    let has_conf = |cm: &ConfigMap| cm.data.as_ref().is_some_and(|d| d.contains_key("redis.conf"));
    let name = format!("{queue}-redis-config");
    let cm = wait_for(&env.api::<ConfigMap>(), &name, "the redis.conf", has_conf).await;
    cm.data.unwrap().remove("redis.conf").unwrap()
}

/// A redis-server child in a directory of its own, logging to `redis.log`
/// there. Killed on drop; its log is printed if the test failed, the
/// directory removed if it passed.
pub struct RedisServer {
    pub dir: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
}

impl RedisServer {
    pub fn start(dir: PathBuf, args: Vec<String>) -> Self {
        std::fs::create_dir_all(&dir).unwrap();
        let mut server = Self { dir, args, child: None };
        server.spawn();
        server
    }

    /// The Redis pod of managed Queue `namespace/queue`, played by a local
    /// redis-server with the operator's own redis.conf on `port` (the
    /// operator reaches it through `--dev-redis-address`).
    pub fn stand_in(namespace: &str, conf: &str, port: u16) -> Self {
        let dir = std::env::temp_dir().join(format!("redis-{namespace}"));
        std::fs::create_dir_all(&dir).unwrap();
        let conf_path = dir.join("redis.conf");
        // The pod mounts its volume at /data; here that is the directory.
        std::fs::write(&conf_path, conf.replace("dir /data", &format!("dir {}", dir.display()))).unwrap();
        let args = [
            &conf_path.to_string_lossy(),
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
        ]
        .map(|s| s.to_owned())
        .to_vec();
        Self::start(dir, args)
    }

    fn spawn(&mut self) {
        let (stdout, stderr) = log_file(&self.dir.join("redis.log"));
        let child = Command::new("redis-server")
            .args(&self.args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("start redis-server (is it on PATH?)");
        self.child = Some(child);
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("redis-server runs").id()
    }

    /// SIGKILL: whatever Redis had not written to its files is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("--- private redis-server log ---\n{}", self.log());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A redis-server of the test's own, on a free port and in its own
/// directory, so that it can be killed, stopped and restarted on the same
/// data without touching the shared one.
pub struct PrivateRedis {
    pub port: u16,
    password: String,
    server: RedisServer,
    stopped: bool,
}

impl PrivateRedis {
    /// `extra`: configuration arguments, e.g. `["--appendonly", "yes"]`.
    pub async fn start(name: &str, extra: &[&str]) -> Self {
        let port = free_port();
        let dir = std::env::temp_dir().join(unique_name(&format!("streamq-chaos-redis-{name}")));
        let password = unique_name("pw");
        let mut args: Vec<String> = [
            "--bind",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--dir",
            &dir.to_string_lossy(),
            "--requirepass",
            &password,
            "--save",
            "",
            "--protected-mode",
            "yes",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let redis = Self {
            port,
            password,
            server: RedisServer::start(dir, args),
            stopped: false,
        };
        redis.wait_answering().await;
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://default:{}@127.0.0.1:{}/0", self.password, self.port)
    }

    async fn wait_answering(&self) {
        let url = self.url();
        wait_until(Duration::from_secs(30), "the private redis-server to answer", || {
            let url = url.clone();
            async move {
                let Ok(client) = ::redis::Client::open(url) else {
                    return false;
                };
                let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
                    return false;
                };
                // LOADING is an error: the AOF is not fully read yet.
                ::redis::cmd("PING").query_async::<String>(&mut conn).await.is_ok()
            }
        })
        .await;
    }

    /// SIGKILL: whatever Redis had not written to its files is gone.
    pub fn kill(&mut self) {
        self.server.kill();
    }

    /// Starts redis-server again with the same arguments, on the same port and directory.
    pub async fn restart(&mut self) {
        assert!(self.server.child.is_none(), "kill it first");
        self.server.spawn();
        self.wait_answering().await;
    }

    /// SIGSTOP: the port still accepts connections, nothing answers.
    pub fn pause(&mut self) {
        signal(self.server.pid(), "STOP");
        self.stopped = true;
    }

    pub fn resume(&mut self) {
        signal(self.server.pid(), "CONT");
        self.stopped = false;
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        if self.stopped && self.server.child.is_some() {
            signal(self.server.pid(), "CONT");
        }
    }
}
