//! The fault-injection suite: real operator, real `streamq worker` processes
//! (played per Pod by `support::kubelet::Kubelet`, since kwok runs no
//! containers), the library Producer, real redis-server and kube-apiserver.
//! Every scenario counts the messages published (acknowledged by Redis),
//! acked, dead-lettered, lost and delivered twice, prints one `chaos-row:`
//! table row, and fails if one message is lost.
//!
//! The cheap scenarios run in `make test`; the disruptive ones (Redis
//! restarts, a 30 s outage, the apiserver restart, which every other test
//! on that apiserver would feel) are `#[ignore]`d and run by `make chaos`,
//! one at a time.

mod support;

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Patch, PatchParams};
use serde_json::json;
use streamq::{
    api::{Condition, ConditionStatus, Consumer, Queue},
    producer::Producer,
    worker::{HandlerError, Message, Worker, WorkerConfig},
};
use support::{
    apiserver::{kill_apiserver, start_apiserver},
    deliveries::{Deliveries, Sink, Tally},
    kubelet::{Exit, Kubelet},
    load::{Load, Published},
    redis_queue::RunningWorker,
    redis_server::PrivateRedis,
    *,
};
use tokio_util::sync::CancellationToken;

const DRAIN: Duration = Duration::from_secs(180);

/// The streams of a Ready Queue: (stream, dead-letter stream).
struct Streams {
    stream: String,
    dead_letter: String,
}

/// An external Queue `jobs` on `redis_url` (Secret `redis-admin`), Ready.
async fn ready_queue(env: &TestEnv, redis_url: &str, extra: serde_json::Value) -> Streams {
    env.create_admin_secret_for(redis_url).await;
    env.create(&external_queue("jobs", extra)).await;
    let s = wait_ready(&env.api::<Queue>(), "jobs").await.status.unwrap();
    Streams {
        stream: s.stream_key.expect("status.streamKey"),
        dead_letter: s.dead_letter_stream_key.expect("status.deadLetterStreamKey"),
    }
}

/// A Consumer of Queue `jobs`; `spec` adds to the minimal spec.
async fn create_consumer(env: &TestEnv, name: &str, spec: serde_json::Value) {
    env.create(&consumer(name, "jobs", spec)).await;
}

/// Consumer spec fields: scaled from zero to `max` replicas, for messages of 1 s to start within 20 s.
fn autoscaled_up_to(max: i32) -> serde_json::Value {
    json!({"autoscaling": {"minReplicas": 0, "maxReplicas": max, "targetLatency": "20s",
                           "processingTime": "1s", "scaleDownDelay": "5s"}})
}

async fn producer(url: &str, stream: &str) -> Producer {
    Producer::connect(url, stream).await.expect("the producer connects")
}

/// The workers of a Consumer's Pods: the kubelet runs one `streamq worker
/// --http` per Pod, POSTing to a sink that takes `delay` per message.
struct Workers {
    sink: Sink,
    kubelet: Kubelet,
}

/// How a scenario ended: its row of the fault table, and what it is made of.
struct Outcome {
    tally: Tally,
    seen: Deliveries,
    dead: HashSet<String>,
    exits: Vec<Exit>,
}

impl Workers {
    /// `args`: more `streamq worker` arguments.
    async fn start(env: &TestEnv, consumer: &str, delay: Duration, args: &[&str]) -> Self {
        let sink = Sink::start(delay).await;
        let kubelet = Kubelet::start(env, consumer, &sink.url, args);
        Self { sink, kubelet }
    }

    /// Stops the workers and counts what became of the `published` messages.
    async fn finish(self, fault: &str, published: &Published, redis_url: &str, dead_letter: &str) -> Outcome {
        let exits = self.kubelet.shutdown(Duration::from_secs(30)).await;
        let seen = self.sink.snapshot();
        let dead = dead_letter_ids(redis_url, dead_letter).await;
        let tally = Tally::new(fault, &published.ids, &seen, &dead);
        Outcome {
            tally,
            seen,
            dead,
            exits,
        }
    }
}

/// (when, Deployment replicas, group lag + pending if Redis answered).
type Samples = Arc<Mutex<Vec<(Instant, i32, Option<i64>)>>>;

/// Watches a Deployment's replicas next to the group's backlog, every 100 ms.
struct ReplicaMonitor {
    samples: Samples,
    stop: CancellationToken,
}

impl ReplicaMonitor {
    fn start(env: &TestEnv, name: &str, redis_url: &str, stream: &str, group: &str) -> Self {
        let samples: Samples = Arc::default();
        let stop = CancellationToken::new();
        let deployments = env.api::<Deployment>();
        let (name, url, stream, group) = (
            name.to_owned(),
            redis_url.to_owned(),
            stream.to_owned(),
            group.to_owned(),
        );
        tokio::spawn({
            let (samples, stop) = (samples.clone(), stop.clone());
            async move {
                while !stop.is_cancelled() {
                    // Replicas first, backlog second: with no new messages the backlog
                    // only shrinks, so "0 replicas and a backlog" is never a false alarm.
                    if let Ok(d) = deployments.get(&name).await {
                        let backlog = group_backlog(&url, &stream, &group).await.map(|(l, p)| l + p);
                        samples.lock().unwrap().push((Instant::now(), replicas(&d), backlog));
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        });
        Self { samples, stop }
    }

    /// The fewest replicas seen since `from`.
    fn min_since(&self, from: Instant) -> Option<i32> {
        self.samples
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, ..)| *t >= from)
            .map(|(_, r, _)| *r)
            .min()
    }

    fn count_since(&self, from: Instant) -> usize {
        self.samples.lock().unwrap().iter().filter(|(t, ..)| *t >= from).count()
    }

    /// Samples with no replica while messages waited, once it had scaled up
    /// (before the first scale-up the autoscaler has not reacted yet).
    fn zero_with_backlog(&self) -> Vec<(i32, Option<i64>)> {
        self.samples
            .lock()
            .unwrap()
            .iter()
            .skip_while(|(_, r, _)| *r == 0)
            .filter(|(_, r, b)| *r == 0 && b.is_some_and(|b| b > 0))
            .map(|(_, r, b)| (*r, *b))
            .collect()
    }
}

impl Drop for ReplicaMonitor {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Scenario 1: workers SIGKILLed at random under load; the kubelet restarts them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_sigkilled_at_random_under_load_lose_nothing() {
    const TOTAL: usize = 3000;
    const POISON_EVERY: usize = 100;
    let env = TestEnv::new("chaos-kill").await;
    let _op = env.start_operator();
    let s = ready_queue(
        &env,
        &env.redis_url,
        json!({"delivery": {"maxDeliveries": 2, "visibilityTimeout": "1s"}}),
    )
    .await;
    create_consumer(&env, "workers", json!({"replicas": 3, "concurrency": 4})).await;
    wait_for(&env.api::<Deployment>(), "workers", "3 replicas", |d| replicas(d) == 3).await;
    let workers = Workers::start(&env, "workers", Duration::from_millis(5), &["--grace", "10s"]).await;
    workers.kubelet.wait_running(3).await;

    let load = Load::start(
        producer(&env.redis_url, &s.stream).await,
        Some(300),
        Some(POISON_EVERY),
        Some(TOTAL),
    );
    let mut kills = 0;
    while load.acknowledged() < TOTAL {
        // The fault's cadence (0.5–1.5 s apart), not a synchronisation.
        tokio::time::sleep(Duration::from_millis(500 + (kills * 397 % 1000) as u64)).await;
        if let Some(pod) = workers.kubelet.kill_random() {
            kills += 1;
            eprintln!("SIGKILLed the worker of {pod} at {} published", load.acknowledged());
        }
    }
    let published = load.finish(Duration::from_secs(60)).await;
    wait_drained(&env.redis_url, &s.stream, "workers", DRAIN).await;
    let fault = format!("{kills} workers SIGKILLed at random under load");
    let Outcome {
        tally,
        seen,
        dead,
        exits,
    } = workers.finish(&fault, &published, &env.redis_url, &s.dead_letter).await;
    tally.report_and_assert_none_lost();
    println!(
        "{kills} SIGKILLs, {} worker processes in all, {} redeliveries",
        exits.len(),
        seen.redelivered
    );
    assert!(kills >= 3, "only {kills} kills: the scenario proves little");
    // Every poison message is dead-lettered. A good one may be too: one whose
    // handler was killed on each of its maxDeliveries (2) deliveries.
    assert_eq!(
        published.errors, 0,
        "the payload index is the position in published.ids"
    );
    let poison: Vec<&String> = published
        .ids
        .iter()
        .skip(POISON_EVERY - 1)
        .step_by(POISON_EVERY)
        .collect();
    assert_eq!(poison.len(), TOTAL / POISON_EVERY);
    assert!(
        poison.iter().all(|id| dead.contains(*id)),
        "a poison message was not dead-lettered"
    );
    println!(
        "{} poison messages dead-lettered, and {} killed on every delivery",
        poison.len(),
        tally.dead_lettered - poison.len()
    );
}

/// Scenario 2: scale-down under load. The Pods' workers get SIGTERM, finish
/// and ack what they hold: nothing is redelivered, nothing abandoned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_down_under_load_interrupts_nothing() {
    const TOTAL: usize = 180;
    let env = TestEnv::new("chaos-down").await;
    let _op = env.start_operator();
    let s = ready_queue(&env, &env.redis_url, json!({"delivery": {"visibilityTimeout": "2s"}})).await;
    create_consumer(&env, "workers", json!({"replicas": 4, "concurrency": 2})).await;
    wait_for(&env.api::<Deployment>(), "workers", "4 replicas", |d| replicas(d) == 4).await;
    // 300 ms a message: every worker has messages in flight when it is told to go.
    let workers = Workers::start(&env, "workers", Duration::from_millis(300), &["--grace", "20s"]).await;
    workers.kubelet.wait_running(4).await;

    let load = Load::start(producer(&env.redis_url, &s.stream).await, Some(12), None, Some(TOTAL));
    wait_until(Duration::from_secs(60), "a third of the load published", || async {
        load.acknowledged() >= TOTAL / 3
    })
    .await;
    env.kubectl_ok(&["scale", "consumer/workers", "--replicas=1"]);
    wait_until(Duration::from_secs(60), "3 workers drained and gone", || async {
        workers.kubelet.exits().len() >= 3
    })
    .await;
    let scaled_down = workers.kubelet.exits();
    let published = load.finish(Duration::from_secs(60)).await;
    wait_drained(&env.redis_url, &s.stream, "workers", DRAIN).await;
    let Outcome { tally, seen, .. } = workers
        .finish(
            "scale-down 4 → 1 under load (streamq worker, SIGTERM)",
            &published,
            &env.redis_url,
            &s.dead_letter,
        )
        .await;

    // A worker whose log has no summary counts as having abandoned everything.
    let abandoned = scaled_down
        .iter()
        .fold(0u64, |sum, e| sum.saturating_add(e.abandoned.unwrap_or(u64::MAX)));
    let in_flight: Vec<Option<u64>> = scaled_down.iter().map(|e| e.in_flight_at_stop).collect();
    let interrupted = seen.redelivered.saturating_add(abandoned);
    tally.report_and_assert_none_lost();
    println!("scale-down: in flight at SIGTERM per worker {in_flight:?}; interrupted {interrupted}");
    for e in &scaled_down {
        assert!(e.terminated_for_scale_down, "{} was not SIGTERMed", e.pod);
        assert!(
            e.status.is_some_and(|s| s.success()),
            "{} exited {:?}:\n{}",
            e.pod,
            e.status,
            e.log
        );
        assert_eq!(e.abandoned, Some(0), "{} abandoned messages:\n{}", e.pod, e.log);
    }
    assert!(
        in_flight.iter().flatten().sum::<u64>() > 0,
        "no worker had a message in flight at SIGTERM: the scenario proves nothing"
    );
    assert_eq!(interrupted, 0, "messages redelivered because of the scale-down");
    assert_eq!(tally.duplicates, 0);
}

/// Scenario 3: the operator SIGKILLed mid-burst, then restarted. The new
/// process has no history: it must not scale down a backlog that needs
/// every replica, never go to zero with messages waiting, and its status
/// must catch up with a spec change made while it was dead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_sigkilled_mid_burst_restarts_without_wrong_scaling() {
    const MAX: i32 = 5;
    let env = TestEnv::new("chaos-op").await;
    let op = env.start_operator();
    let s = ready_queue(&env, &env.redis_url, json!({})).await;
    create_consumer(&env, "workers", autoscaled_up_to(MAX)).await;
    let deployments = env.api::<Deployment>();
    let consumers = env.api::<Consumer>();
    let monitor = ReplicaMonitor::start(&env, "workers", &env.redis_url, &s.stream, "workers");
    // 40 messages/s of 1 s each, nobody consuming yet: the backlog needs far more than MAX.
    let load = Load::start(producer(&env.redis_url, &s.stream).await, Some(40), None, None);
    wait_for(&deployments, "workers", "scaled to max", |d| replicas(d) == MAX).await;
    let at_max = Instant::now();

    signal(op.pid(), "KILL");
    wait_until(Duration::from_secs(10), "the operator to die", || async {
        !alive(op.pid())
    })
    .await;
    drop(op);
    // While it is dead: a spec change (spec.replicas is ignored while autoscaling).
    let patched = consumers
        .patch(
            "workers",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 2}})),
        )
        .await
        .unwrap();
    let generation = patched.metadata.generation;
    // The outage itself: 3 s of burst with no operator.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let restarted = Instant::now();
    let _op2 = env.start_operator();
    let recovered = wait_for(&consumers, "workers", "Ready at the new generation", |c: &Consumer| {
        c.status.as_ref().is_some_and(|s| s.observed_generation == generation) && c.is("Ready", ConditionStatus::True)
    })
    .await;
    let recovery = restarted.elapsed();
    // Ten more seconds of burst under the new process, with its history rebuilt.
    let watch_until = Instant::now() + Duration::from_secs(10);
    wait_until(Duration::from_secs(30), "10 s of monitoring", || async {
        Instant::now() >= watch_until
    })
    .await;
    let published = load.stop().await;
    let min_after = monitor.min_since(at_max);
    println!(
        "operator restart: status recovered {recovery:?} after restart (observedGeneration {:?}), \
         replicas min {min_after:?} over {} samples since reaching {MAX}",
        recovered.status.as_ref().unwrap().observed_generation,
        monitor.count_since(at_max)
    );
    assert_eq!(
        min_after,
        Some(MAX),
        "replicas dropped below what the backlog needs across the restart"
    );

    // Workers drain the backlog; scaling to zero only once it is gone.
    let workers = Workers::start(&env, "workers", Duration::ZERO, &["--grace", "10s"]).await;
    wait_drained(&env.redis_url, &s.stream, "workers", DRAIN).await;
    wait_for_within(&deployments, "workers", "back to zero", Duration::from_secs(90), |d| {
        replicas(d) == 0
    })
    .await;
    let fault = "operator SIGKILLed mid-burst, restarted 3 s later";
    let outcome = workers.finish(fault, &published, &env.redis_url, &s.dead_letter).await;
    outcome.tally.report_and_assert_none_lost();
    let zero_with_backlog = monitor.zero_with_backlog();
    assert!(
        zero_with_backlog.is_empty(),
        "scaled to zero with messages waiting: {zero_with_backlog:?}"
    );
}

/// Scenarios 4 and 5: a private redis-server with `appendonly yes` and the
/// given fsync policy, SIGKILLed under a flat-out publish, restarted on the
/// same directory. Returns the tally (lost = acknowledged publishes missing
/// after the restart) and the publish rate.
async fn redis_sigkill_restart(fsync: &str) -> (Tally, f64) {
    let mut redis = PrivateRedis::start(fsync, &["--appendonly", "yes", "--appendfsync", fsync]).await;
    let url = redis.url();
    let (stream, group) = ("chaos-aof", "workers");
    let _: () = cmd(
        &mut connect(&url).await,
        &["XGROUP", "CREATE", stream, group, "0", "MKSTREAM"],
    )
    .await;
    let load = Load::start(producer(&url, stream).await, None, None, None);
    wait_until(Duration::from_secs(60), "5000 acknowledged publishes", || async {
        load.acknowledged() >= 5000
    })
    .await;
    redis.kill();
    let published = load.stop().await;
    redis.restart().await;
    let present = stream_ids(&url, stream).await;
    let missing = published.ids.iter().filter(|id| !present.contains(*id)).count();
    println!(
        "appendfsync {fsync}: {} publishes acknowledged at {:.0}/s before SIGKILL, {missing} missing after restart, {} entries in the stream",
        published.ids.len(),
        published.rate(),
        present.len()
    );

    // Everything still there is consumed, with the library Worker.
    let seen: Arc<Mutex<Deliveries>> = Arc::default();
    let mut config = WorkerConfig::new(&url, stream, group, "w1");
    config.concurrency = 16;
    let worker = Worker::new(config, {
        let seen = seen.clone();
        move |msg: Message| {
            let seen = seen.clone();
            async move {
                seen.lock()
                    .unwrap()
                    .record(msg.id(), msg.delivery_count(), msg.data())
                    .map_err(|()| HandlerError("poison".into()))
            }
        }
    });
    let worker = RunningWorker::start(worker);
    wait_drained(&url, stream, group, DRAIN).await;
    worker.stop().await.expect("the worker ran");
    let seen = seen.lock().unwrap().clone();
    let tally = Tally::new(
        &format!("redis-server SIGKILLed + restarted, appendfsync {fsync}"),
        &published.ids,
        &seen,
        &HashSet::new(),
    );
    assert_eq!(tally.lost, missing, "every message still in the stream was consumed");
    (tally, published.rate())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "restarts a redis-server: run by `make chaos`"]
async fn redis_restart_with_appendfsync_always_keeps_every_acknowledged_publish() {
    let (tally, _) = redis_sigkill_restart("always").await;
    tally.report_and_assert_none_lost();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "restarts a redis-server: run by `make chaos`"]
async fn redis_restart_with_appendfsync_everysec_loses_at_most_a_second() {
    let (tally, rate) = redis_sigkill_restart("everysec").await;
    tally.print();
    let bound = rate.ceil() as usize;
    println!(
        "appendfsync everysec: lost {} acknowledged publishes = {:.3} s of writes at {rate:.0}/s (bound: 1 s = {bound})",
        tally.lost,
        tally.lost as f64 / rate
    );
    assert!(
        tally.lost <= bound,
        "lost {} acknowledged publishes: more than 1 s of writes ({bound})",
        tally.lost
    );
    assert_eq!(tally.acked + tally.lost, tally.published);
}

/// Scenario 6: the Queue's Redis unreachable for 30 s (SIGSTOP: connections
/// hang, the harder case than a refused one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a 30 s Redis outage: run by `make chaos`"]
async fn redis_unreachable_for_30s_degrades_holds_replicas_and_recovers() {
    const MAX: i32 = 4;
    const OUTAGE: Duration = Duration::from_secs(30);
    let mut redis = PrivateRedis::start("outage", &[]).await;
    let url = redis.url();
    let env = TestEnv::new("chaos-outage").await;
    let _op = env.start_operator();
    let s = ready_queue(&env, &url, json!({"delivery": {"visibilityTimeout": "5s"}})).await;
    create_consumer(&env, "workers", autoscaled_up_to(MAX)).await;
    let (deployments, queues, consumers) = (env.api::<Deployment>(), env.api::<Queue>(), env.api::<Consumer>());
    let published = Load::start(producer(&url, &s.stream).await, None, None, Some(300))
        .finish(Duration::from_secs(60))
        .await;
    wait_for(&deployments, "workers", "scaled to max", |d| replicas(d) == MAX).await;
    let monitor = ReplicaMonitor::start(&env, "workers", &url, &s.stream, "workers");

    redis.pause();
    let down = Instant::now();
    let names_redis = |c: &Condition| c.message.contains("Redis") && c.message.contains(&redis.port.to_string());
    let q = wait_for(&queues, "jobs", "Queue Degraded", |q: &Queue| {
        q.condition("Degraded")
            .is_some_and(|c| c.status == ConditionStatus::True && names_redis(c))
    })
    .await;
    let c = wait_for(&consumers, "workers", "Consumer Degraded", |c: &Consumer| {
        c.condition("Degraded")
            .is_some_and(|c| c.status == ConditionStatus::True && names_redis(c))
    })
    .await;
    let detected = down.elapsed();
    let (qd, cd) = (q.condition("Degraded").unwrap(), c.condition("Degraded").unwrap());
    println!("Queue Degraded after ≤{detected:?}: {}: {}", qd.reason, qd.message);
    println!("Consumer Degraded: {}: {}", cd.reason, cd.message);
    // The rest of the outage: replicas hold (the monitor), and both stay
    // Degraded rather than flapping back to a mere "waiting".
    let mut flaps: Vec<String> = vec![];
    while down.elapsed() < OUTAGE {
        let (q, c) = (
            queues.get("jobs").await.unwrap(),
            consumers.get("workers").await.unwrap(),
        );
        for (what, conditions) in [("Queue", q.conditions()), ("Consumer", c.conditions())] {
            if !conditions.is("Degraded", ConditionStatus::True) {
                flaps.push(format!(
                    "{what} at {:?}: {:?}",
                    down.elapsed(),
                    conditions.condition("Degraded")
                ));
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(flaps.is_empty(), "not Degraded during the outage: {flaps:#?}");
    let during = monitor.min_since(down);
    redis.resume();
    let up = Instant::now();
    wait_for(&queues, "jobs", "Queue Ready again", |q: &Queue| {
        q.is("Ready", ConditionStatus::True) && q.is("Degraded", ConditionStatus::False)
    })
    .await;
    wait_for(&consumers, "workers", "Consumer Ready again", |c: &Consumer| {
        c.is("Ready", ConditionStatus::True) && c.is("Degraded", ConditionStatus::False)
    })
    .await;
    let recovery = up.elapsed();
    println!(
        "Redis away {OUTAGE:?}: replicas min {during:?} during it ({} samples); Queue and Consumer Ready {recovery:?} after it returned",
        monitor.count_since(down)
    );
    assert_eq!(during, Some(MAX), "replicas changed while Redis was unreachable");

    let workers = Workers::start(&env, "workers", Duration::ZERO, &["--grace", "10s"]).await;
    wait_drained(&url, &s.stream, "workers", DRAIN).await;
    let outcome = workers
        .finish("Redis unreachable 30 s (SIGSTOP)", &published, &url, &s.dead_letter)
        .await;
    let zero_with_backlog = monitor.zero_with_backlog();
    assert!(
        zero_with_backlog.is_empty(),
        "scaled to zero with messages waiting: {zero_with_backlog:?}"
    );
    outcome.tally.report_and_assert_none_lost();
}

/// Scenario 7: kube-apiserver SIGKILLed right after a spec change (mid-
/// reconcile), down for 5 s, restarted with its own command line. The same
/// operator process reconnects; the change made before the kill and one made
/// right after the restart are both reconciled; messages keep flowing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "restarts the kube-apiserver every test uses: run by `make chaos`, single-threaded"]
async fn apiserver_restarted_mid_reconcile_loses_no_reconcile() {
    let env = TestEnv::new("chaos-api").await;
    let op = env.start_operator();
    let s = ready_queue(&env, &env.redis_url, json!({"delivery": {"visibilityTimeout": "2s"}})).await;
    create_consumer(&env, "before", json!({"replicas": 1})).await;
    create_consumer(&env, "after", json!({"replicas": 1, "group": "after"})).await;
    let (deployments, consumers) = (env.api::<Deployment>(), env.api::<Consumer>());
    for name in ["before", "after"] {
        wait_for(&deployments, name, "1 replica", |d| replicas(d) == 1).await;
    }
    let workers = Workers::start(&env, "before", Duration::from_millis(2), &["--grace", "10s"]).await;
    workers.kubelet.wait_running(1).await;
    let load = Load::start(producer(&env.redis_url, &s.stream).await, Some(50), None, None);
    wait_until(Duration::from_secs(30), "load flowing", || async {
        load.acknowledged() >= 100
    })
    .await;

    let scale = |replicas: i32| Patch::Merge(json!({"spec": {"replicas": replicas}}));
    let before = consumers
        .patch("before", &PatchParams::default(), &scale(3))
        .await
        .unwrap();
    let argv = kill_apiserver().await;
    let killed = Instant::now();
    // The outage: 5 s without an apiserver (the operator's watches fail and back off).
    tokio::time::sleep(Duration::from_secs(5)).await;
    start_apiserver(&argv).await;
    let downtime = killed.elapsed();
    let after = consumers
        .patch("after", &PatchParams::default(), &scale(2))
        .await
        .unwrap();
    let restarted = Instant::now();
    let mut timings = vec![];
    for (name, want, generation) in [
        ("before", 3, before.metadata.generation),
        ("after", 2, after.metadata.generation),
    ] {
        wait_for_within(
            &deployments,
            name,
            "the change reconciled",
            // Measured 12.3 s here. With kube's default watcher backoff (30 s
            // steps, shared by all watches) it was 64–137 s; the operator's
            // WatchBackoff caps a step at 5 s, and this bound fails a regression.
            Duration::from_secs(45),
            |d| replicas(d) == want,
        )
        .await;
        wait_for_within(
            &consumers,
            name,
            "status at the new generation",
            Duration::from_secs(45),
            |c: &Consumer| c.status.as_ref().is_some_and(|s| s.observed_generation == generation),
        )
        .await;
        timings.push(format!("{name} → {want} replicas by {:.1?}", restarted.elapsed()));
    }
    let reconciled = restarted.elapsed();
    assert!(alive(op.pid()), "the operator process died:\n{}", op.logs());
    println!(
        "apiserver down {downtime:.1?} (kill → /readyz); both changes reconciled {reconciled:.1?} after it was back \
         ({}), by the same operator process",
        timings.join(", ")
    );
    let log = op.logs();
    for line in log
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .take(15)
    {
        println!("operator: {line}");
    }
    let published = load.stop().await;
    workers.kubelet.wait_running(3).await;
    wait_drained(&env.redis_url, &s.stream, "before", DRAIN).await;
    let fault = "kube-apiserver SIGKILLed mid-reconcile, restarted";
    let outcome = workers.finish(fault, &published, &env.redis_url, &s.dead_letter).await;
    outcome.tally.report_and_assert_none_lost();
}
