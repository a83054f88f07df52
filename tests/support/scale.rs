//! Many Queues and Consumers at once, and what they cost the operator, the
//! apiserver and Redis: the harness of `make bench-scale` and of the
//! steady-state regression test.

use std::{collections::BTreeMap, time::Duration};

use futures::{StreamExt, stream};
use k8s_openapi::{api::apps::v1::Deployment, jiff::Timestamp};
use kube::{Api, ResourceExt, api::ListParams};
use redis::aio::MultiplexedConnection;
use serde_json::json;
use streamq::api::{ConditionStatus, ConditionType, Consumer, Queue, find_condition};

use super::{
    audit::audit_log,
    env::{TestEnv, cluster_dir},
    objects::{consumer, external_queue},
    operator::{Operator, http_get},
    redis_client::cmd,
    wait::poll_every,
};

/// How many creations are in flight at once.
const CREATE_CONCURRENCY: usize = 16;

pub fn queue_name(i: usize) -> String {
    format!("q{i:04}")
}

pub fn consumer_name(i: usize) -> String {
    format!("c{i:04}")
}

/// Creates Queue and Consumer pairs `range` (autoscaled, minReplicas 0, on
/// the Secret `redis-admin`), a few at a time; returns when all are created.
pub async fn create_pairs(env: &TestEnv, range: std::ops::Range<usize>) {
    let queues = env.api::<Queue>();
    let consumers = env.api::<Consumer>();
    let autoscaling = json!({"autoscaling": {"minReplicas": 0, "maxReplicas": 2, "targetLatency": "30s"}});
    stream::iter(range)
        .map(|i| {
            let (queues, consumers, autoscaling) = (queues.clone(), consumers.clone(), autoscaling.clone());
            async move {
                let pp = Default::default();
                queues
                    .create(&pp, &external_queue(&queue_name(i), json!({})))
                    .await
                    .unwrap_or_else(|e| panic!("create Queue {}: {e}", queue_name(i)));
                consumers
                    .create(&pp, &consumer(&consumer_name(i), &queue_name(i), autoscaling))
                    .await
                    .unwrap_or_else(|e| panic!("create Consumer {}: {e}", consumer_name(i)));
            }
        })
        .buffer_unordered(CREATE_CONCURRENCY)
        .collect::<Vec<()>>()
        .await;
}

/// From the objects' own timestamps: the last creation, and the last Ready transition.
pub struct Readiness {
    /// Objects Ready, of `2 × pairs`.
    pub ready: usize,
    pub objects: usize,
    pub last_created: Option<Timestamp>,
    pub last_ready: Option<Timestamp>,
}

impl Readiness {
    pub fn all(&self) -> bool {
        self.ready == self.objects
    }

    /// Seconds from the last object's creation to the last object Ready
    /// (whole seconds, as the API keeps them), once all are Ready.
    pub fn seconds(&self) -> Option<i64> {
        let (created, ready) = (self.last_created?, self.last_ready?);
        self.all().then(|| (ready.as_second() - created.as_second()).max(0))
    }
}

/// How many of the Queues and Consumers are Ready, from one list of each.
pub async fn readiness(env: &TestEnv) -> Result<Readiness, kube::Error> {
    let queues = env.api::<Queue>().list(&ListParams::default()).await?;
    let consumers = env.api::<Consumer>().list(&ListParams::default()).await?;
    let objects = queues.items.len() + consumers.items.len();
    let mut times = vec![];
    let all = queues
        .items
        .iter()
        .map(|q| (q.creation_timestamp(), q.status.as_ref().map(|s| &s.conditions)))
        .chain(
            consumers
                .items
                .iter()
                .map(|c| (c.creation_timestamp(), c.status.as_ref().map(|s| &s.conditions))),
        );
    for (created, conditions) in all {
        let ready = conditions
            .and_then(|c| find_condition(c, ConditionType::Ready))
            .filter(|c| c.status == ConditionStatus::True);
        if let (Some(created), Some(ready)) = (created, ready) {
            times.push((created.0, ready.last_transition_time.0));
        }
    }
    Ok(Readiness {
        ready: times.len(),
        objects,
        last_created: times.iter().map(|t| t.0).max(),
        last_ready: times.iter().map(|t| t.1).max(),
    })
}

/// Waits until `n` Queues and `n` Consumers are Ready, listing every second;
/// after `timeout`, returns how far they got.
pub async fn wait_all_ready(env: &TestEnv, n: usize, timeout: Duration) -> Readiness {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let now = readiness(env).await;
        if let Ok(r) = &now
            && r.objects == 2 * n
            && (r.all() || std::time::Instant::now() >= deadline)
        {
            return now.unwrap();
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// A process' CPU time and memory from /proc.
#[derive(Clone, Copy, Debug)]
pub struct ProcessUsage {
    pub cpu: Duration,
    pub rss_kib: u64,
    pub peak_rss_kib: u64,
}

pub fn process_usage(pid: u32) -> ProcessUsage {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("the process' /proc stat");
    // Fields after the command name, which may hold spaces: utime and stime are the 12th and 13th.
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    ProcessUsage {
        cpu: Duration::from_secs_f64(ticks as f64 / clock_ticks() as f64),
        rss_kib: kib("VmRSS:"),
        peak_rss_kib: kib("VmHWM:"),
    }
}

fn clock_ticks() -> u64 {
    let out = std::process::Command::new("getconf").arg("CLK_TCK").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(100)
}

/// The pid tests/cluster/up recorded for one of its processes.
pub fn cluster_pid(name: &str) -> u32 {
    let path = cluster_dir().join("pids").join(format!("{name}.pid"));
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
        .trim()
        .parse()
        .unwrap()
}

/// Redis' own CPU time so far (`INFO cpu`).
pub async fn redis_cpu(conn: &mut MultiplexedConnection) -> Duration {
    let info: String = cmd(conn, &["INFO", "cpu"]).await;
    let field = |key: &str| -> f64 {
        info.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    };
    Duration::from_secs_f64(field("used_cpu_user:") + field("used_cpu_sys:"))
}

/// Client connections to Redis other than `conn` itself (`CLIENT LIST`).
pub async fn redis_clients(conn: &mut MultiplexedConnection) -> usize {
    let me: i64 = cmd(conn, &["CLIENT", "ID"]).await;
    let list: String = cmd(conn, &["CLIENT", "LIST"]).await;
    list.lines().filter(|l| !l.starts_with(&format!("id={me} "))).count()
}

/// The operator's requests to the apiserver in a window, from the audit log.
#[derive(Debug, Default)]
pub struct Requests {
    /// Mutating requests, by `verb resource[/subresource]`.
    pub writes: BTreeMap<String, usize>,
    pub reads: usize,
}

impl Requests {
    pub fn total_writes(&self) -> usize {
        self.writes.values().sum()
    }

    /// The writes per object per 10 minutes, over `objects` objects and a `window`.
    pub fn writes_per_object_per_10min(&self, objects: usize, window: Duration) -> f64 {
        self.total_writes() as f64 / objects as f64 * 600.0 / window.as_secs_f64()
    }
}

/// Requests of ServiceAccount `ns/sa` received in `[since, until)`.
pub fn operator_requests(ns: &str, sa: &str, since: Timestamp, until: Timestamp) -> Requests {
    let mut out = Requests::default();
    for r in audit_log(&format!("system:serviceaccount:{ns}:{sa}"), since) {
        if r.received >= until {
            continue;
        }
        if r.mutating() {
            let sub = if r.access.subresource.is_empty() {
                String::new()
            } else {
                format!("/{}", r.access.subresource)
            };
            *out.writes
                .entry(format!("{} {}{sub}", r.access.verb, r.access.resource))
                .or_default() += 1;
        } else {
            out.reads += 1;
        }
    }
    out
}

/// One series' value from the operator's /metrics (the sum over its label sets).
pub async fn metric(addr: &str, series: &str) -> f64 {
    let (_, body) = http_get(addr, "/metrics").await.expect("the operator's /metrics");
    metric_in(&body, series)
}

/// `series` (a name, optionally with a `{label="..."` prefix) summed over matching lines.
pub fn metric_in(body: &str, series: &str) -> f64 {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(series)
                .is_some_and(|rest| rest.starts_with([' ', '{', ',']) || series.ends_with('"'))
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// The upper bound of the histogram bucket that holds quantile `q` of `name`.
pub fn histogram_quantile(body: &str, name: &str, q: f64) -> f64 {
    let mut buckets: Vec<(f64, f64)> = body
        .lines()
        .filter_map(|l| l.strip_prefix(&format!("{name}_bucket{{le=\"")))
        .filter_map(|rest| {
            let (le, count) = rest.split_once("\"} ")?;
            let le = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
            Some((le, count.split_whitespace().next()?.parse().ok()?))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last().map_or(0.0, |b| b.1);
    buckets
        .iter()
        .find(|(_, count)| *count >= q * total)
        .map_or(f64::NAN, |b| b.0)
}

/// The replicas each Consumer's Deployment asks for, by name.
pub async fn deployment_replicas(env: &TestEnv) -> BTreeMap<String, i32> {
    let deployments: Api<Deployment> = env.api();
    deployments
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|d| (d.name_any(), d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0)))
        .collect()
}

/// Publishes to the streams of `queues` at `per_second` each until `stop`.
pub async fn publish_to(
    mut conn: MultiplexedConnection,
    streams: Vec<String>,
    per_second: u32,
    stop: tokio_util::sync::CancellationToken,
) {
    let tick = Duration::from_millis(100);
    let per_tick = (per_second as f64 * tick.as_secs_f64()).ceil() as usize;
    let mut ticker = tokio::time::interval(tick);
    while !stop.is_cancelled() {
        ticker.tick().await;
        let mut pipe = redis::pipe();
        for s in &streams {
            for _ in 0..per_tick {
                pipe.cmd("XADD").arg(s).arg("*").arg("body").arg("x").ignore();
            }
        }
        let _: () = pipe.query_async(&mut conn).await.expect("XADD to the busy streams");
    }
}

async fn reconciliations(operator: &Operator) -> usize {
    metric(&operator.metrics_addr, "streamq_reconciliations_total").await as usize
}

/// Waits until the pairs are past their start-up writes: every Consumer's
/// status carries the sampler's first figures (an arrival rate needs two
/// samples, so it comes a round or more after Ready), then one more round
/// for what follows from them.
pub async fn settle(env: &TestEnv, operator: &Operator, pairs: usize) {
    let consumers = env.api::<Consumer>();
    poll_every(
        Duration::from_millis(500),
        Duration::from_secs(120),
        "every Consumer's first figures",
        || async {
            let list = consumers
                .list(&ListParams::default())
                .await
                .map_err(|e| e.to_string())?;
            let with = list
                .items
                .iter()
                .filter(|c| c.status.as_ref().is_some_and(|s| s.arrival_rate.is_some()))
                .count();
            if with >= pairs {
                Ok(())
            } else {
                Err(format!("{with} of {pairs} Consumers with an arrival rate in status"))
            }
        },
    )
    .await;
    wait_rounds(operator, pairs, 1).await;
}

/// Waits until each of `pairs` Queue + Consumer pairs was reconciled `rounds`
/// more times (by the reconciliation counter): one round after all are Ready,
/// each has written the first figures it legitimately writes, and what
/// follows is steady state.
pub async fn wait_rounds(operator: &Operator, pairs: usize, rounds: usize) {
    let from = reconciliations(operator).await;
    let want = from + rounds * 2 * pairs;
    poll_every(
        Duration::from_millis(500),
        Duration::from_secs(120),
        "resync rounds",
        || async {
            let now = reconciliations(operator).await;
            if now >= want {
                Ok(())
            } else {
                Err(format!("{now} of {want} reconciliations"))
            }
        },
    )
    .await;
}
