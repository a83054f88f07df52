//! The pieces the fault-injection suite (tests/chaos.rs) combines:
//! - [`Sink`]: the workers' HTTP handler; counts deliveries per message id;
//! - [`Kubelet`]: kwok runs no containers, so this runs one real
//!   `streamq worker` process per Pod of a Consumer, with the env the
//!   operator put in the Deployment, SIGTERMs it when its Pod is deleted and
//!   restarts it when it dies;
//! - [`Load`]: the library Producer publishing at a fixed pace, keeping the
//!   id of every publish Redis acknowledged;
//! - [`PrivateRedis`]: a redis-server of the test's own, to kill, stop and restart;
//! - [`kill_apiserver`]/[`start_apiserver`]: the control plane's
//!   kube-apiserver, found through `$STREAMQ_CLUSTER_DIR/pids`, restarted
//!   with its own command line.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    os::unix::process::CommandExt,
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{Pod, Secret},
};
use kube::{Api, Client, ResourceExt, api::ListParams};
use streamq::producer::{NewMessage, Producer};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const STREAMQ: &str = env!("CARGO_BIN_EXE_streamq");

/// Polls `cond` every 100 ms until it holds; fails the test with `what` after `timeout`.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !cond().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn nanos() -> usize {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() as usize)
}

// ------------------------------------------------------------------ deliveries

/// What the handlers saw.
#[derive(Clone, Debug, Default)]
pub struct Deliveries {
    /// Successful handler runs per message id (a count above 1 is a duplicate).
    pub handled: HashMap<String, u32>,
    /// Deliveries with a delivery count above 1: messages redelivered after a
    /// worker died, failed, or gave them up.
    pub redelivered: u64,
    /// Handler runs that failed on purpose (poison messages).
    pub failed: u64,
}

impl Deliveries {
    /// Records one delivery; `Err` for a poison message (its payload starts with "poison").
    pub fn record(&mut self, id: &str, delivery_count: u64, data: &[u8]) -> Result<(), ()> {
        if delivery_count > 1 {
            self.redelivered += 1;
        }
        if data.starts_with(b"poison") {
            self.failed += 1;
            return Err(());
        }
        *self.handled.entry(id.to_owned()).or_default() += 1;
        Ok(())
    }
}

/// The HTTP endpoint `streamq worker --http` POSTs every message to. It
/// takes `delay` per message (so that workers have messages in flight),
/// answers 500 to poison messages and 200 to the rest.
pub struct Sink {
    pub url: String,
    pub deliveries: Arc<Mutex<Deliveries>>,
    server: JoinHandle<()>,
}

impl Sink {
    pub async fn start(delay: Duration) -> Self {
        use axum::{Router, body::Bytes, http::HeaderMap, http::StatusCode, routing::post};
        let deliveries: Arc<Mutex<Deliveries>> = Arc::default();
        let seen = deliveries.clone();
        let app = Router::new().route(
            "/",
            post(move |headers: HeaderMap, body: Bytes| {
                let seen = seen.clone();
                async move {
                    tokio::time::sleep(delay).await;
                    let header = |name: &str| {
                        headers
                            .get(name)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_owned()
                    };
                    let id = header("x-streamq-message-id");
                    let count = header("x-streamq-delivery-count").parse().unwrap_or(0);
                    match seen.lock().unwrap().record(&id, count, &body) {
                        Ok(()) => StatusCode::OK,
                        Err(()) => StatusCode::INTERNAL_SERVER_ERROR,
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("the sink serves");
        });
        Self {
            url,
            deliveries,
            server,
        }
    }

    pub fn snapshot(&self) -> Deliveries {
        self.deliveries.lock().unwrap().clone()
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.server.abort();
    }
}

// ------------------------------------------------------------------ tally

/// One row of the fault table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tally {
    pub fault: String,
    pub published: usize,
    pub acked: usize,
    pub dead_lettered: usize,
    pub lost: usize,
    pub duplicates: u64,
}

impl Tally {
    /// `published`: ids Redis acknowledged to the producer; `dead`: original
    /// ids found in the dead-letter stream.
    pub fn new(fault: &str, published: &[String], seen: &Deliveries, dead: &HashSet<String>) -> Self {
        let mut t = Self {
            fault: fault.to_owned(),
            published: published.len(),
            acked: 0,
            dead_lettered: 0,
            lost: 0,
            duplicates: 0,
        };
        for id in published {
            let handled = seen.handled.get(id).copied().unwrap_or(0);
            t.duplicates += u64::from(handled.saturating_sub(1));
            if dead.contains(id) {
                t.dead_lettered += 1;
            } else if handled > 0 {
                t.acked += 1;
            } else {
                t.lost += 1;
            }
        }
        t
    }

    /// Prints the table row (grep `chaos-row`).
    pub fn print(&self) {
        println!("chaos-row: | fault | published | acked | dead-lettered | lost | duplicates |");
        println!(
            "chaos-row: | {} | {} | {} | {} | {} | {} |",
            self.fault, self.published, self.acked, self.dead_lettered, self.lost, self.duplicates
        );
    }

    /// Prints the row and fails the test if a message was lost.
    pub fn report_and_assert_none_lost(&self) {
        self.print();
        assert!(self.published > 0, "nothing was published: the scenario proves nothing");
        assert_eq!(self.lost, 0, "messages lost: {self:?}");
        assert_eq!(self.acked + self.dead_lettered, self.published, "{self:?}");
    }
}

// ------------------------------------------------------------------ redis

pub async fn connect(url: &str) -> ::redis::aio::MultiplexedConnection {
    let config = ::redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_response_timeout(Some(Duration::from_secs(10)));
    ::redis::Client::open(url)
        .expect("a valid Redis URL")
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .unwrap_or_else(|e| panic!("connect to Redis: {e}"))
}

/// `(lag, pending)` of a consumer group; `None` while Redis does not answer.
pub async fn group_backlog(url: &str, stream: &str, group: &str) -> Option<(i64, i64)> {
    let mut conn = ::redis::Client::open(url)
        .ok()?
        .get_multiplexed_async_connection_with_config(
            &::redis::AsyncConnectionConfig::new()
                .set_connection_timeout(Some(Duration::from_secs(2)))
                .set_response_timeout(Some(Duration::from_secs(2))),
        )
        .await
        .ok()?;
    let groups: Vec<HashMap<String, ::redis::Value>> = ::redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(stream)
        .query_async(&mut conn)
        .await
        .ok()?;
    let g = groups
        .iter()
        .find(|g| matches!(g.get("name"), Some(::redis::Value::BulkString(n)) if n == group.as_bytes()))?;
    let int = |k: &str| match g.get(k) {
        Some(::redis::Value::Int(n)) => Some(*n),
        _ => None,
    };
    Some((int("lag")?, int("pending")?))
}

/// Waits until the group has read and acknowledged everything in the stream.
pub async fn wait_drained(url: &str, stream: &str, group: &str, timeout: Duration) {
    wait_until(timeout, "the group to read and ack everything", || async {
        group_backlog(url, stream, group).await == Some((0, 0))
    })
    .await;
}

/// The original ids of the entries in a dead-letter stream.
pub async fn dead_letter_ids(url: &str, dead_letter_stream: &str) -> HashSet<String> {
    let mut conn = connect(url).await;
    let entries: Vec<(String, HashMap<String, String>)> = ::redis::cmd("XRANGE")
        .arg(dead_letter_stream)
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .expect("XRANGE the dead-letter stream");
    entries
        .into_iter()
        .filter_map(|(_, f)| f.get("streamq.original-id").cloned())
        .collect()
}

/// The ids in a stream.
pub async fn stream_ids(url: &str, stream: &str) -> HashSet<String> {
    let mut conn = connect(url).await;
    let mut ids = HashSet::new();
    let mut from = "-".to_owned();
    loop {
        let page: Vec<(String, HashMap<String, ::redis::Value>)> = ::redis::cmd("XRANGE")
            .arg(stream)
            .arg(&from)
            .arg("+")
            .arg("COUNT")
            .arg(10_000)
            .query_async(&mut conn)
            .await
            .expect("XRANGE");
        let Some((last, _)) = page.last() else { break };
        from = format!("({last}");
        ids.extend(page.into_iter().map(|(id, _)| id));
    }
    ids
}

/// A redis-server of the test's own, on a free port and in its own
/// directory, so that it can be killed, stopped and restarted on the same
/// data without touching the shared one.
pub struct PrivateRedis {
    pub port: u16,
    pub dir: PathBuf,
    password: String,
    args: Vec<String>,
    child: Option<Child>,
    stopped: bool,
}

impl PrivateRedis {
    /// `extra`: configuration arguments, e.g. `["--appendonly", "yes"]`.
    pub async fn start(name: &str, extra: &[&str]) -> Self {
        let port = super::free_port();
        let dir = std::env::temp_dir().join(super::unique_name(&format!("streamq-chaos-redis-{name}")));
        std::fs::create_dir_all(&dir).unwrap();
        let password = format!("{:x}{:x}", nanos(), std::process::id());
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
            "--logfile",
            "redis.log",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let mut redis = Self {
            port,
            dir,
            password,
            args,
            child: None,
            stopped: false,
        };
        redis.spawn().await;
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://default:{}@127.0.0.1:{}/0", self.password, self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("redis-server runs").id()
    }

    async fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(&self.args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server (is it on PATH?)");
        self.child = Some(child);
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
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts redis-server again with the same arguments, on the same port and directory.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "kill it first");
        self.spawn().await;
    }

    /// SIGSTOP: the port still accepts connections, nothing answers.
    pub fn pause(&mut self) {
        super::signal(self.pid(), "STOP");
        self.stopped = true;
    }

    pub fn resume(&mut self) {
        super::signal(self.pid(), "CONT");
        self.stopped = false;
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default()
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        if self.stopped && self.child.is_some() {
            super::signal(self.pid(), "CONT");
        }
        self.kill();
        if std::thread::panicking() {
            eprintln!("--- private redis-server log ---\n{}", self.log());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

// ------------------------------------------------------------------ load

/// Publishing at a fixed pace (or flat out), from a background task.
pub struct Load {
    stop: CancellationToken,
    task: JoinHandle<Published>,
    acknowledged: Arc<Mutex<usize>>,
}

#[derive(Clone, Debug, Default)]
pub struct Published {
    /// Ids of the publishes Redis acknowledged, in order.
    pub ids: Vec<String>,
    /// Publishes that failed (not acknowledged: not counted as published).
    pub errors: u64,
    /// From the first publish to the last acknowledged one.
    pub elapsed: Duration,
}

impl Published {
    pub fn rate(&self) -> f64 {
        self.ids.len() as f64 / self.elapsed.as_secs_f64().max(1e-3)
    }
}

impl Load {
    /// `per_second`: None publishes one message at a time as fast as Redis
    /// acknowledges; `poison_every`: every n-th message is a poison message;
    /// `total`: stop after that many acknowledged publishes.
    pub fn start(
        producer: Producer,
        per_second: Option<u32>,
        poison_every: Option<usize>,
        total: Option<usize>,
    ) -> Self {
        let stop = CancellationToken::new();
        let acknowledged: Arc<Mutex<usize>> = Arc::default();
        let task = tokio::spawn({
            let stop = stop.clone();
            let acknowledged = acknowledged.clone();
            async move {
                let mut out = Published::default();
                let start = Instant::now();
                // Batches every 20 ms at a pace; one message per round trip flat out.
                let tick = Duration::from_millis(20);
                let mut ticker = tokio::time::interval(tick);
                let mut n = 0usize;
                while !stop.is_cancelled() && total.is_none_or(|t| out.ids.len() < t) {
                    let batch = match per_second {
                        Some(rate) => {
                            ticker.tick().await;
                            let due = (start.elapsed().as_secs_f64() * f64::from(rate)) as usize;
                            due.saturating_sub(n)
                        }
                        None => 1,
                    };
                    let batch = total.map_or(batch, |t| batch.min(t - out.ids.len()));
                    if batch == 0 {
                        continue;
                    }
                    let messages: Vec<NewMessage> = (n..n + batch)
                        .map(|i| {
                            let poison = poison_every.is_some_and(|p| i % p == p - 1);
                            NewMessage::new(if poison { format!("poison {i}") } else { format!("m{i}") })
                        })
                        .collect();
                    n += batch;
                    match tokio::select! {
                        r = producer.publish_batch(&messages) => r,
                        _ = stop.cancelled() => break,
                    } {
                        Ok(ids) => {
                            out.ids.extend(ids);
                            out.elapsed = start.elapsed();
                            *acknowledged.lock().unwrap() = out.ids.len();
                        }
                        Err(e) => {
                            // Not acknowledged, so not published; the message
                            // may or may not be in the stream.
                            out.errors += batch as u64;
                            log_publish_error(&format!("publish failed: {e}"));
                            if per_second.is_none() {
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                        }
                    }
                }
                out
            }
        });
        Self {
            stop,
            task,
            acknowledged,
        }
    }

    /// Acknowledged publishes so far.
    pub fn acknowledged(&self) -> usize {
        *self.acknowledged.lock().unwrap()
    }

    pub async fn stop(self) -> Published {
        self.stop.cancel();
        self.task.await.expect("the load task")
    }

    /// Waits until it published `total` messages (see [`Load::start`]).
    pub async fn finish(self, timeout: Duration) -> Published {
        tokio::time::timeout(timeout, self.task)
            .await
            .expect("the load finished in time")
            .expect("the load task")
    }
}

fn log_publish_error(line: &str) {
    static LOGGED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    // A dead Redis fails every publish: the first few say enough.
    if LOGGED.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < 3 {
        eprintln!("{line}");
    }
}

// ------------------------------------------------------------------ kubelet

/// How a worker process ended.
#[derive(Clone, Debug)]
pub struct Exit {
    pub pod: String,
    pub status: Option<ExitStatus>,
    /// From the worker's "exiting" log line: handlers still running when grace ended.
    pub abandoned: Option<u64>,
    pub acked: Option<u64>,
    /// From the "stopping: waiting for in-flight messages" line: handlers running at SIGTERM.
    pub in_flight_at_stop: Option<u64>,
    /// SIGTERMed because its Pod was deleted (rather than killed by the test).
    pub terminated_for_scale_down: bool,
    pub log: String,
}

struct WorkerProcess {
    pod: String,
    child: Child,
    log: PathBuf,
}

impl WorkerProcess {
    fn exit(mut self, status: Option<ExitStatus>, terminated_for_scale_down: bool) -> Exit {
        let status = status.or_else(|| self.child.wait().ok());
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        // Kept in the Exit, which failing assertions print.
        let _ = std::fs::remove_file(&self.log);
        let field = |line: &str, name: &str| {
            log.lines()
                .rev()
                .find(|l| l.contains(line))
                .and_then(|l| l.split_whitespace().find_map(|w| w.strip_prefix(name)))
                .and_then(|v| v.parse().ok())
        };
        Exit {
            pod: self.pod,
            status,
            abandoned: field("exiting", "abandoned="),
            acked: field("exiting", "acked="),
            in_flight_at_stop: field("waiting for in-flight", "running="),
            terminated_for_scale_down,
            log,
        }
    }
}

#[derive(Default)]
struct KubeletState {
    running: BTreeMap<String, WorkerProcess>,
    terminating: Vec<WorkerProcess>,
    exited: Vec<Exit>,
    started: u32,
    killed: u32,
    /// Resolved env of the worker container, with the pod name left out.
    env: Option<Vec<(String, EnvValue)>>,
}

#[derive(Clone)]
enum EnvValue {
    Literal(String),
    PodName,
}

/// Plays the kubelet for one Consumer's Pods: one `streamq worker --http
/// <sink>` per live Pod, named after it and given the env the operator wrote
/// into the Deployment (the consumer URL read from its Secret). A deleted
/// Pod's worker gets SIGTERM and drains; a worker that dies is restarted.
pub struct Kubelet {
    state: Arc<Mutex<KubeletState>>,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Kubelet {
    /// `extra_args`: more `streamq worker` arguments (e.g. `--grace 20s`).
    pub fn start(client: Client, namespace: &str, consumer: &str, sink_url: &str, extra_args: &[&str]) -> Self {
        let state: Arc<Mutex<KubeletState>> = Arc::default();
        let stop = CancellationToken::new();
        let mut args: Vec<String> = vec!["worker".into(), "--http".into(), sink_url.into()];
        args.extend(extra_args.iter().map(|s| (*s).to_owned()));
        let task = tokio::spawn({
            let (state, stop, ns, consumer) = (state.clone(), stop.clone(), namespace.to_owned(), consumer.to_owned());
            async move {
                let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
                let selector = format!("streamq.dev/consumer={consumer}");
                let mut n = 0u32;
                while !stop.is_cancelled() {
                    let needs_env = state.lock().unwrap().env.is_none();
                    if needs_env && let Some(env) = worker_env(&client, &ns, &consumer).await {
                        state.lock().unwrap().env = Some(env);
                    }
                    // The apiserver may be down (one scenario restarts it): keep the workers as they are.
                    if let Ok(list) = pods.list_metadata(&ListParams::default().labels(&selector)).await {
                        let live: HashSet<String> = list
                            .items
                            .iter()
                            .filter(|p| p.metadata.deletion_timestamp.is_none())
                            .map(|p| p.name_any())
                            .collect();
                        let mut s = state.lock().unwrap();
                        if let Some(env) = s.env.clone() {
                            for pod in &live {
                                if !s.running.contains_key(pod) {
                                    n += 1;
                                    let w = spawn_worker(&args, &env, pod, &ns, n);
                                    s.started += 1;
                                    s.running.insert(pod.clone(), w);
                                }
                            }
                        }
                        let gone: Vec<String> = s.running.keys().filter(|p| !live.contains(*p)).cloned().collect();
                        for pod in gone {
                            let w = s.running.remove(&pod).unwrap();
                            super::signal(w.child.id(), "TERM");
                            s.terminating.push(w);
                        }
                    }
                    reap(&mut state.lock().unwrap(), &args, &ns, &mut n);
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    }
                }
            }
        });
        Self {
            state,
            stop,
            task: Some(task),
        }
    }

    pub fn running(&self) -> usize {
        self.state.lock().unwrap().running.len()
    }

    /// The workers that have ended so far.
    pub fn exits(&self) -> Vec<Exit> {
        self.state.lock().unwrap().exited.clone()
    }

    pub fn started(&self) -> u32 {
        self.state.lock().unwrap().started
    }

    /// SIGKILLs a random running worker; the next round restarts it under
    /// the same name, as a kubelet restarts a crashed container. Returns the pod.
    pub fn kill_random(&self) -> Option<String> {
        let mut s = self.state.lock().unwrap();
        if s.running.is_empty() {
            return None;
        }
        let pod = s.running.keys().nth(nanos() % s.running.len()).cloned()?;
        let mut w = s.running.remove(&pod).unwrap();
        let _ = w.child.kill();
        let status = w.child.wait().ok();
        s.killed += 1;
        let exit = w.exit(status, false);
        s.exited.push(exit);
        Some(pod)
    }

    /// Stops mirroring, SIGTERMs every worker and waits for them all; returns every exit.
    pub async fn shutdown(mut self, within: Duration) -> Vec<Exit> {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        {
            let mut s = self.state.lock().unwrap();
            let running: Vec<WorkerProcess> = std::mem::take(&mut s.running).into_values().collect();
            for w in running {
                super::signal(w.child.id(), "TERM");
                s.terminating.push(w);
            }
        }
        let deadline = Instant::now() + within;
        loop {
            {
                let mut s = self.state.lock().unwrap();
                let mut n = 0;
                reap(&mut s, &[], "", &mut n);
                if s.terminating.is_empty() {
                    return std::mem::take(&mut s.exited);
                }
                assert!(
                    Instant::now() < deadline,
                    "{} workers still running {within:?} after SIGTERM",
                    s.terminating.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Collects exited workers; restarts the running ones that died (unless `args` is empty).
fn reap(s: &mut KubeletState, args: &[String], ns: &str, n: &mut u32) {
    let mut i = 0;
    while i < s.terminating.len() {
        if let Ok(Some(status)) = s.terminating[i].child.try_wait() {
            let w = s.terminating.remove(i);
            s.exited.push(w.exit(Some(status), true));
        } else {
            i += 1;
        }
    }
    let died: Vec<String> = s
        .running
        .iter_mut()
        .filter_map(|(pod, w)| matches!(w.child.try_wait(), Ok(Some(_))).then(|| pod.clone()))
        .collect();
    for pod in died {
        let w = s.running.remove(&pod).unwrap();
        eprintln!(
            "worker {pod} exited on its own; log:\n{}",
            std::fs::read_to_string(&w.log).unwrap_or_default()
        );
        s.exited.push(w.exit(None, false));
        if let (false, Some(env)) = (args.is_empty(), s.env.clone()) {
            *n += 1;
            let w = spawn_worker(args, &env, &pod, ns, *n);
            s.started += 1;
            s.running.insert(pod, w);
        }
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            task.abort();
        }
        let mut s = self.state.lock().unwrap();
        let all: Vec<WorkerProcess> = std::mem::take(&mut s.running)
            .into_values()
            .chain(std::mem::take(&mut s.terminating))
            .collect();
        for mut w in all {
            let _ = w.child.kill();
            let _ = w.child.wait();
        }
    }
}

fn spawn_worker(args: &[String], env: &[(String, EnvValue)], pod: &str, ns: &str, n: u32) -> WorkerProcess {
    let log = std::env::temp_dir().join(format!("streamq-chaos-{ns}-{pod}-{n}.log"));
    let file = std::fs::File::create(&log).expect("worker log file");
    let child = Command::new(STREAMQ)
        .args(args)
        .envs(env.iter().map(|(k, v)| {
            (
                k.clone(),
                match v {
                    EnvValue::Literal(s) => s.clone(),
                    EnvValue::PodName => pod.to_owned(),
                },
            )
        }))
        .env("RUST_LOG", "streamq=info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .process_group(0)
        .spawn()
        .expect("spawn streamq worker");
    WorkerProcess {
        pod: pod.to_owned(),
        child,
        log,
    }
}

/// The STREAMQ_* env of the Deployment's first container, resolved as the
/// kubelet would: literal values, Secret keys, and the pod name.
async fn worker_env(client: &Client, ns: &str, consumer: &str) -> Option<Vec<(String, EnvValue)>> {
    let deployment = Api::<Deployment>::namespaced(client.clone(), ns)
        .get_opt(consumer)
        .await
        .ok()??;
    let container = deployment.spec?.template.spec?.containers.into_iter().next()?;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let mut env = vec![];
    for var in container.env.unwrap_or_default() {
        let value = if let Some(v) = var.value {
            EnvValue::Literal(v)
        } else if let Some(from) = var.value_from {
            if let Some(r) = from.secret_key_ref {
                let secret = secrets.get_opt(&r.name).await.ok()??;
                let bytes = secret.data?.remove(&r.key)?;
                EnvValue::Literal(String::from_utf8(bytes.0).ok()?)
            } else if from.field_ref.is_some_and(|f| f.field_path == "metadata.name") {
                EnvValue::PodName
            } else {
                continue;
            }
        } else {
            continue;
        };
        env.push((var.name, value));
    }
    Some(env)
}

// ------------------------------------------------------------------ apiserver

fn cluster_dir() -> PathBuf {
    PathBuf::from(std::env::var("STREAMQ_CLUSTER_DIR").expect(
        "STREAMQ_CLUSTER_DIR is not set: run `make chaos`, or `eval \"$(tests/cluster/up)\"` in this shell first",
    ))
}

fn apiserver_pid_file() -> PathBuf {
    cluster_dir().join("pids/kube-apiserver.pid")
}

fn cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_default()
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// SIGKILLs the control plane's kube-apiserver (the pid tests/cluster/up
/// recorded) and waits until it is gone; returns its command line.
pub async fn kill_apiserver() -> Vec<String> {
    let pid: u32 = std::fs::read_to_string(apiserver_pid_file())
        .expect("the kube-apiserver pid file")
        .trim()
        .parse()
        .expect("a pid");
    let argv = cmdline(pid);
    assert!(
        argv.first().is_some_and(|a| a.ends_with("kube-apiserver")),
        "pid {pid} is not kube-apiserver: {argv:?}"
    );
    super::signal(pid, "KILL");
    // Gone, or a zombie (empty cmdline) waiting for its reaper.
    wait_until(Duration::from_secs(30), "kube-apiserver to die", || async move {
        cmdline(pid).is_empty()
    })
    .await;
    argv
}

/// Starts kube-apiserver with `argv`, detached and logging where
/// tests/cluster/up has it log, records its pid for tests/cluster/down, and
/// waits for /readyz.
pub async fn start_apiserver(argv: &[String]) {
    let dir = cluster_dir();
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("logs/kube-apiserver.log"))
        .expect("the kube-apiserver log");
    let child = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .process_group(0)
        .spawn()
        .expect("restart kube-apiserver");
    std::fs::write(apiserver_pid_file(), format!("{}\n", child.id())).expect("write the pid file");
    // Reaped here should it die while the tests run; it outlives them otherwise,
    // like the one tests/cluster/up started (tests/cluster/down stops it by pid).
    let mut child = child;
    std::thread::spawn(move || child.wait());
    wait_until(Duration::from_secs(120), "kube-apiserver /readyz", || async {
        super::kubectl(None, &["get", "--raw", "/readyz"]).status.success()
    })
    .await;
}

/// Whether a process is alive (a zombie is not).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with(|c| c != 'Z'))
        })
        .unwrap_or(false)
}
