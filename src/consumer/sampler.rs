//! The sampler: every `--sample-interval`, one round trip per Redis server
//! (two when some stream is busy, see `redis::sampler`) reads every
//! Consumer's stream and group, the pure autoscaler decides, and
//! the Consumer controller is woken where a round has something to do: the
//! replicas should change, the figures in the status are due for a write,
//! or the group is missing. An autoscaled Consumer's own resync is then only
//! a safety net (see `SAMPLED_RESYNCS`).

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Arc,
    time::{Duration, Instant},
};

use futures::{SinkExt, channel::mpsc::Sender};
use kube::{Resource, ResourceExt, runtime::reflector::ObjectRef};
use tokio_util::sync::CancellationToken;

use super::{Consumer, Context, decisions::Latest, status};
use crate::{
    api::{Duration as ApiDuration, Queue},
    autoscale::{Autoscaler, ConsumerObservation, Observation, Policy},
    guard::{Valid, ValidStore},
    metrics::{ConsumerLabels, ConsumerMetrics, ConsumerSeries},
    redis::sampler::{Carried, StreamSample, Targets},
    status_writes,
};

fn policy(consumer: &Consumer, pod_startup: Duration) -> Option<Policy> {
    let a = consumer.spec.autoscaling.as_ref()?;
    let to_u32 = |i: i32| u32::try_from(i).unwrap_or(0);
    Some(Policy {
        min_replicas: to_u32(a.min_replicas),
        max_replicas: to_u32(a.max_replicas),
        concurrency: consumer.spec.concurrency,
        target_latency: a.target_latency.as_std(),
        scale_down_delay: a.scale_down_delay.as_std(),
        processing_time_hint: a.processing_time.map(ApiDuration::as_std),
        pod_startup,
    })
}

/// The sampler's state across intervals: an autoscaler per Consumer uid.
#[derive(Default)]
struct Scalers {
    by_uid: HashMap<String, Autoscaler>,
    series_by_uid: HashMap<String, ConsumerSeries>,
    /// When each Consumer's last decision was made, for the sample delay metric.
    decided_at: HashMap<String, Instant>,
    /// What each Redis server's earlier samples carry over, by admin URL.
    carried: HashMap<String, Carried>,
}

/// The autoscaled Consumers on one Redis server, each with its stream.
type Members = Vec<(Valid<Consumer>, String)>;

/// Runs until `shutdown`.
pub async fn run(
    ctx: Arc<Context>,
    consumers: ValidStore<Consumer>,
    queues: ValidStore<Queue>,
    mut wake: Sender<ObjectRef<Consumer>>,
    shutdown: CancellationToken,
) {
    let epoch = Instant::now();
    let mut scalers = Scalers::default();
    let mut ticker = tokio::time::interval(ctx.sample_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let all = consumers.state();
        let by_redis = group_by_redis(&ctx, &all, &queues, &mut scalers).await;
        let at = epoch.elapsed();
        scalers.carried.retain(|url, _| by_redis.contains_key(url));
        for (url, members) in by_redis {
            sample_server(&ctx, &url, members, at, &mut scalers, &mut wake).await;
        }
        forget_departed(&ctx, &all, &mut scalers).await;
    }
}

/// Consumers with autoscaling, grouped by the Redis their Queue lives on;
/// each gets its autoscaler, with the policy its spec says now.
async fn group_by_redis(
    ctx: &Context,
    all: &[Valid<Consumer>],
    queues: &ValidStore<Queue>,
    scalers: &mut Scalers,
) -> BTreeMap<String, Members> {
    let mut by_redis: BTreeMap<String, Members> = BTreeMap::new();
    for consumer in all {
        let uid = consumer.uid().unwrap_or_default();
        let measured = if ctx.pod_startup.measured {
            ctx.decisions.pod_startup(&uid).await
        } else {
            None
        };
        let Some(policy) = policy(consumer, measured.unwrap_or(ctx.pod_startup.prior)) else {
            continue;
        };
        let queue_ref = ObjectRef::new(&consumer.spec.queue_ref.name).within(&consumer.namespace().unwrap_or_default());
        let Some(queue) = queues.get(&queue_ref) else { continue };
        let Some(url) = ctx.shared.brokers.admin_url(&queue.uid().unwrap_or_default()).await else {
            continue;
        };
        let scaler = scalers
            .by_uid
            .entry(uid)
            .or_insert_with(|| Autoscaler::new(policy.clone()));
        if scaler.policy() != &policy {
            scaler.set_policy(policy);
        }
        by_redis
            .entry(url)
            .or_default()
            .push((consumer.clone(), queue.stream_key()));
    }
    by_redis
}

/// One round trip to the server at `url` for all its `members`, then a
/// decision for each; wakes the controller where the replicas should change.
async fn sample_server(
    ctx: &Context,
    url: &str,
    members: Members,
    at: Duration,
    scalers: &mut Scalers,
    wake: &mut Sender<ObjectRef<Consumer>>,
) {
    let mut targets = Targets::new();
    for (c, stream) in &members {
        targets.entry(stream.clone()).or_default().push(c.group());
    }
    let samples = match ctx.shared.brokers.connect(url).await {
        Ok(mut admin) => {
            let carried = scalers.carried.entry(url.to_owned()).or_default();
            admin.sample(&targets, carried).await.map_err(|e| e.to_string())
        }
        Err(problem) => Err(problem.message),
    };
    if samples.is_err() {
        ctx.shared.brokers.forget_connection(url).await;
        // The server behind the URL may be another one next time.
        scalers.carried.remove(url);
    }
    for (consumer, stream) in members {
        let uid = consumer.uid().unwrap_or_default();
        let Some(scaler) = scalers.by_uid.get_mut(&uid) else {
            continue;
        };
        let sample = samples.as_ref().ok().and_then(|s| s.get(&stream));
        let group = consumer.group();
        let (mut latest, current) = decide(scaler, &consumer, &group, sample, at);
        let seen = sample.is_some_and(|s| s.groups.contains_key(&group));
        // On a stream that exists: a missing stream is the Queue's to create.
        let group_missing = !seen && sample.is_some_and(|s| s.entries_added.is_some());
        if seen {
            latest.seen_group = Some((stream.clone(), group));
        }
        if sample.is_none()
            && let Err(e) = &samples
        {
            tracing::warn!(consumer = %consumer.name_any(), error = %e, "sampling failed; holding replicas");
        }
        let metrics = &ctx.shared.metrics;
        if !scalers.series_by_uid.contains_key(&uid) {
            let series = metrics.consumers.series(labels(&consumer));
            scalers.series_by_uid.insert(uid.clone(), series);
        }
        if let Some(series) = scalers.series_by_uid.get_mut(&uid) {
            record(&metrics.consumers, series, &latest, current);
        }
        let now = Instant::now();
        match scalers.decided_at.get_mut(&uid) {
            Some(previous) => {
                let late = now.duration_since(*previous).saturating_sub(ctx.sample_interval);
                metrics.sample_delay.observe(late.as_secs_f64());
                *previous = now;
            }
            None => {
                scalers.decided_at.insert(uid.clone(), now);
            }
        }
        let change = !latest.decision.hold && latest.decision.replicas != current;
        ctx.decisions.record(uid.clone(), latest).await;
        if change || group_missing || figures_due(ctx, &consumer, &uid).await {
            // Full channel: a wake-up is already queued for the controller.
            let _ = wake.send(ObjectRef::from_obj(consumer.as_ref())).await;
        }
    }
}

/// Whether a round would now write the sampler's figures (by the rule of
/// `status_writes`): the figures the status has against those the last
/// sample gives. At most once a resync interval (or `STALE_AFTER`, if
/// shorter), as when every resync was a round: a busy Consumer's figures move
/// visibly nearly every second, and each write is one for the apiserver (and
/// its cached copy would not show it yet a sample later).
async fn figures_due(ctx: &Context, consumer: &Consumer, uid: &str) -> bool {
    let now = Instant::now();
    let writes = &ctx.shared.status_writes;
    let spacing = ctx.shared.resync.min(status_writes::STALE_AFTER);
    if writes.written_within(uid, spacing, now).await {
        return false;
    }
    let previous = status::figures(consumer.status.as_ref());
    let observed = ctx.decisions.observed_status(uid, previous.clone()).await;
    writes.due(uid, &previous, &observed, now).await.is_some()
}

/// The autoscaler's decision for `consumer` from its stream's sample (none:
/// hold); also returns the replicas it has now.
fn decide(
    scaler: &mut Autoscaler,
    consumer: &Consumer,
    group: &str,
    sample: Option<&StreamSample>,
    at: Duration,
) -> (Latest, u32) {
    let status = consumer.status.as_ref();
    let replicas = |r: Option<Option<i32>>| u32::try_from(r.flatten().unwrap_or(0)).unwrap_or(0);
    let current = replicas(status.map(|s| s.desired_replicas));
    let ready = replicas(status.map(|s| s.ready_replicas));
    let observed = sample.and_then(|s| observe(s, group, at, current, ready));
    let latest = match observed {
        Some((obs, lag_source, oldest_age)) => Latest {
            pending: obs.pending,
            consumer_pending: obs.consumers.iter().map(|c| (c.name.clone(), c.pending)).collect(),
            decision: scaler.observe(&obs),
            lag_source,
            oldest_age,
            seen_group: None,
        },
        None => Latest {
            decision: scaler.no_data(at),
            lag_source: "unknown",
            pending: status.and_then(|s| s.pending).unwrap_or(0),
            oldest_age: None,
            consumer_pending: BTreeMap::new(),
            seen_group: None,
        },
    };
    (latest, current)
}

/// Drops the state and metric series of Consumers that are gone. Runs every
/// interval over every Consumer, so it borrows their uids rather than copy them.
async fn forget_departed(ctx: &Context, all: &[Valid<Consumer>], scalers: &mut Scalers) {
    let alive: HashSet<&str> = all.iter().filter_map(|c| c.meta().uid.as_deref()).collect();
    for gone in scalers.by_uid.keys().filter(|uid| !alive.contains(uid.as_str())) {
        if let Some(series) = scalers.series_by_uid.remove(gone) {
            ctx.shared.metrics.consumers.forget(&series.labels);
        }
        ctx.shared.status_writes.forget(gone).await;
    }
    scalers.by_uid.retain(|uid, _| alive.contains(uid.as_str()));
    scalers.decided_at.retain(|uid, _| alive.contains(uid.as_str()));
    ctx.decisions.forget_missing(&alive).await;
}

fn labels(consumer: &Consumer) -> ConsumerLabels {
    ConsumerLabels {
        namespace: consumer.namespace().unwrap_or_default(),
        consumer: consumer.name_any(),
    }
}

fn record(m: &ConsumerMetrics, s: &mut ConsumerSeries, latest: &Latest, current: u32) {
    let e = &latest.decision.estimates;
    let gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    if let Some(lag) = e.lag {
        s.lag
            .get_or_insert_with(|| m.lag.get_or_create(&s.labels).clone())
            .set(gauge(lag));
    }
    s.pending.set(gauge(latest.pending));
    if let Some(r) = e.arrival_rate {
        let series = s
            .arrival_rate
            .get_or_insert_with(|| m.arrival_rate.get_or_create(&s.labels).clone());
        series.set(r);
    }
    if let Some(r) = e.completion_rate {
        let series = s
            .completion_rate
            .get_or_insert_with(|| m.completion_rate.get_or_create(&s.labels).clone());
        series.set(r);
    }
    s.processing_seconds.set(e.processing_time.as_secs_f64());
    s.desired_replicas.set(i64::from(latest.decision.replicas));
    s.current_replicas.set(i64::from(current));
    s.decisions.inc();
}

/// The autoscaler's view of one group in a stream sample.
fn observe(
    s: &StreamSample,
    group: &str,
    at: Duration,
    current: u32,
    ready: u32,
) -> Option<(Observation, &'static str, Option<Duration>)> {
    let g = s.groups.get(group)?;
    let oldest_age = g
        .oldest_undelivered_ms
        .zip(s.now_ms)
        .map(|(ms, now)| Duration::from_millis(now.saturating_sub(ms)));
    let obs = Observation {
        at,
        entries_added: s.entries_added?,
        entries_read: g.entries_read,
        // Past the counting bound the count is a lower bound: let the
        // autoscaler estimate rather than take it as exact.
        lag: (g.lag_source != "estimated").then_some(g.lag),
        pending: g.pending,
        oldest_undelivered_age: oldest_age,
        consumers: g
            .consumers
            .iter()
            .map(|c| ConsumerObservation {
                name: c.name.clone(),
                pending: c.pending,
                idle: c.idle,
                processed: c.processed,
                busy: c.busy,
            })
            .collect(),
        current_replicas: current,
        ready_replicas: ready,
    };
    Some((obs, g.lag_source, oldest_age))
}
