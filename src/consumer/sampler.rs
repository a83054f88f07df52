//! The sampler: every `--sample-interval`, one round trip per Redis server
//! reads every Consumer's stream and group, the pure autoscaler decides, and
//! the Consumer controller is woken where the decision changed.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::{Duration, Instant},
};

use futures::{SinkExt, channel::mpsc::Sender};
use kube::{ResourceExt, runtime::reflector::ObjectRef};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use super::Consumer;
use crate::{
    api::{ConsumerStatus, Duration as ApiDuration, Queue},
    autoscale::{Autoscaler, ConsumerObservation, Decision, LagSource, Observation, Policy},
    context::Context,
    guard::ValidStore,
    metrics::{ConsumerLabels, ConsumerMetrics},
    redis::sampler::{StreamSample, Targets},
};

/// The latest decision and observation per Consumer uid, and the last
/// scaling the controller did (kept here, not read back from the cached
/// status, which can be one write behind).
#[derive(Default)]
pub struct Decisions(Mutex<HashMap<String, Latest>>, Mutex<HashMap<String, LastScale>>);

#[derive(Clone)]
pub struct LastScale {
    pub time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
    pub reason: String,
}

#[derive(Clone)]
struct Latest {
    decision: Decision,
    lag_source: &'static str,
    pending: u64,
    oldest_age: Option<Duration>,
    /// Pending entries per consumer name (the pod name) at the last sample.
    consumer_pending: BTreeMap<String, u64>,
}

impl Decisions {
    /// The replicas the autoscaler wants, unless it is holding for lack of data.
    pub async fn replicas(&self, uid: &str) -> Option<i32> {
        let latest = self.0.lock().await.get(uid).cloned()?;
        (!latest.decision.hold).then(|| i32::try_from(latest.decision.replicas).unwrap_or(i32::MAX))
    }

    /// Pending entries per consumer name at the last good sample.
    pub async fn consumer_pending(&self, uid: &str) -> Option<BTreeMap<String, u64>> {
        let latest = self.0.lock().await.get(uid).cloned()?;
        (!latest.decision.hold).then_some(latest.consumer_pending)
    }

    pub async fn record_scale(&self, uid: &str, reason: String) {
        let time = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now());
        self.1.lock().await.insert(uid.to_owned(), LastScale { time, reason });
    }

    pub async fn last_scale(&self, uid: &str) -> Option<LastScale> {
        self.1.lock().await.get(uid).cloned()
    }

    pub async fn reason(&self, uid: &str) -> Option<String> {
        self.0.lock().await.get(uid).map(|l| l.decision.reason.to_string())
    }

    /// The status fields the sampler knows, over `previous`.
    pub async fn observed_status(&self, uid: &str, previous: ConsumerStatus) -> ConsumerStatus {
        let Some(latest) = self.0.lock().await.get(uid).cloned() else {
            return previous;
        };
        let e = &latest.decision.estimates;
        let round = |r: f64| (r * 100.0).round() / 100.0;
        ConsumerStatus {
            lag: e.lag.or(previous.lag),
            lag_source: Some(match e.lag_source {
                LagSource::Exact => latest.lag_source.to_owned(),
                LagSource::Estimated => "estimated".into(),
                LagSource::Unknown => "unknown".into(),
            }),
            pending: Some(latest.pending),
            oldest_message_age: Some(
                latest
                    .oldest_age
                    .map_or_else(|| "0s".into(), |d| ApiDuration::from(round_to_second(d)).to_string()),
            ),
            arrival_rate: e.arrival_rate.map(round),
            completion_rate: e.completion_rate.map(round),
            processing_time: Some(
                ApiDuration::from_millis(u64::try_from(e.processing_time.as_millis()).unwrap_or(u64::MAX)).to_string(),
            ),
            ..previous
        }
    }

    async fn forget_missing(&self, alive: &[String]) {
        self.0.lock().await.retain(|uid, _| alive.contains(uid));
        self.1.lock().await.retain(|uid, _| alive.contains(uid));
    }
}

fn round_to_second(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs())
}

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

/// Runs until `shutdown`.
pub async fn run(
    ctx: Arc<Context>,
    consumers: ValidStore<Consumer>,
    queues: ValidStore<Queue>,
    mut wake: Sender<ObjectRef<Consumer>>,
    shutdown: CancellationToken,
) {
    let epoch = Instant::now();
    let mut scalers: HashMap<String, Autoscaler> = HashMap::new();
    let mut labels_by_uid: HashMap<String, ConsumerLabels> = HashMap::new();
    let mut ticker = tokio::time::interval(ctx.sample_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        // Consumers with autoscaling, grouped by the Redis their Queue lives on.
        let mut by_redis: BTreeMap<String, Vec<(Arc<Consumer>, String)>> = BTreeMap::new();
        let all = consumers.state();
        for consumer in &all {
            let Some(policy) = policy(consumer, ctx.pod_startup) else {
                continue;
            };
            let uid = consumer.uid().unwrap_or_default();
            let queue = queues
                .get(&ObjectRef::new(&consumer.spec.queue_ref.name).within(&consumer.namespace().unwrap_or_default()));
            let Some(queue) = queue else { continue };
            let Some(url) = ctx.queues.admin_url(&queue.uid().unwrap_or_default()).await else {
                continue;
            };
            let scaler = scalers.entry(uid).or_insert_with(|| Autoscaler::new(policy.clone()));
            if scaler.policy() != &policy {
                scaler.set_policy(policy);
            }
            by_redis
                .entry(url)
                .or_default()
                .push((consumer.clone(), queue.stream_key()));
        }
        let at = epoch.elapsed();
        for (url, members) in by_redis {
            let mut targets = Targets::new();
            for (c, stream) in &members {
                targets.entry(stream.clone()).or_default().push(c.group());
            }
            let samples = match ctx.redis.get(&url).await {
                Ok(mut admin) => admin.sample(&targets).await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            if samples.is_err() {
                ctx.redis.forget(&url).await;
            }
            for (consumer, stream) in members {
                let uid = consumer.uid().unwrap_or_default();
                let Some(scaler) = scalers.get_mut(&uid) else { continue };
                let status = consumer.status.clone().unwrap_or_default();
                let current = u32::try_from(status.desired_replicas.unwrap_or(0)).unwrap_or(0);
                let ready = u32::try_from(status.ready_replicas.unwrap_or(0)).unwrap_or(0);
                let observed = samples
                    .as_ref()
                    .ok()
                    .and_then(|s| s.get(&stream))
                    .and_then(|s| observe(s, &consumer.group(), at, current, ready));
                let latest = match observed {
                    Some((obs, lag_source, oldest_age)) => Latest {
                        pending: obs.pending,
                        consumer_pending: obs.consumers.iter().map(|c| (c.name.clone(), c.pending)).collect(),
                        decision: scaler.observe(&obs),
                        lag_source,
                        oldest_age,
                    },
                    None => {
                        if let Err(e) = &samples {
                            tracing::warn!(consumer = %consumer.name_any(), error = %e, "sampling failed; holding replicas");
                        }
                        let pending = status.pending.unwrap_or(0);
                        Latest {
                            decision: scaler.no_data(at),
                            lag_source: "unknown",
                            pending,
                            oldest_age: None,
                            consumer_pending: BTreeMap::new(),
                        }
                    }
                };
                record(&ctx.metrics.consumers, &consumer, &latest, current);
                let change = !latest.decision.hold && latest.decision.replicas != current;
                ctx.decisions.0.lock().await.insert(uid, latest);
                if change {
                    // Full channel: a wake-up is already queued for the controller.
                    let _ = wake.send(ObjectRef::from_obj(consumer.as_ref())).await;
                }
            }
        }
        let alive: Vec<String> = all.iter().filter_map(|c| c.uid()).collect();
        for gone in scalers.keys().filter(|uid| !alive.contains(uid)) {
            if let Some(labels) = labels_by_uid.remove(gone) {
                ctx.metrics.consumers.forget(&labels);
            }
        }
        for c in &all {
            if let Some(uid) = c.uid() {
                labels_by_uid.entry(uid).or_insert_with(|| labels(c));
            }
        }
        scalers.retain(|uid, _| alive.contains(uid));
        ctx.decisions.forget_missing(&alive).await;
    }
}

fn labels(consumer: &Consumer) -> ConsumerLabels {
    ConsumerLabels {
        namespace: consumer.namespace().unwrap_or_default(),
        consumer: consumer.name_any(),
    }
}

fn record(m: &ConsumerMetrics, consumer: &Consumer, latest: &Latest, current: u32) {
    let l = labels(consumer);
    let e = &latest.decision.estimates;
    let gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    if let Some(lag) = e.lag {
        m.lag.get_or_create(&l).set(gauge(lag));
    }
    m.pending.get_or_create(&l).set(gauge(latest.pending));
    if let Some(r) = e.arrival_rate {
        m.arrival_rate.get_or_create(&l).set(r);
    }
    if let Some(r) = e.completion_rate {
        m.completion_rate.get_or_create(&l).set(r);
    }
    m.processing_seconds
        .get_or_create(&l)
        .set(e.processing_time.as_secs_f64());
    m.desired_replicas
        .get_or_create(&l)
        .set(i64::from(latest.decision.replicas));
    m.current_replicas.get_or_create(&l).set(i64::from(current));
    m.decisions.get_or_create(&l).inc();
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
        .map(|ms| Duration::from_millis(s.now_ms.saturating_sub(ms)));
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
