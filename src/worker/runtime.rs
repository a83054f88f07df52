//! The library worker: reads a consumer group, runs a handler per message
//! with bounded concurrency, acks successes (with stats, in the same round
//! trip), reclaims abandoned work and dead-letters poison messages.

use std::{
    collections::{HashMap, HashSet},
    fmt,
    future::Future,
    panic::AssertUnwindSafe,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    task::Poll,
    time::{Duration, Instant},
};

use ::redis::aio::MultiplexedConnection;
use futures::{FutureExt, StreamExt, stream::FuturesUnordered};
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore, mpsc},
    task::JoinSet,
};

use crate::redis::{
    Error as StreamError,
    stream::{self, DeadLetter, Stats, StreamEntry},
};

/// How a [`Worker`] consumes its stream.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    pub redis_url: String,
    pub stream: String,
    pub group: String,
    /// This worker's consumer name in the group; unique per live worker.
    pub consumer: String,
    /// Messages handled at once.
    pub concurrency: usize,
    /// Deliveries after which a failing message is dead-lettered (when a
    /// dead-letter stream is set; otherwise it is redelivered forever).
    pub max_deliveries: u64,
    /// Idle time after which another consumer may take a pending message.
    pub visibility_timeout: Duration,
    pub dead_letter_stream: Option<String>,
    /// Per-message handler time limit; a timeout counts as a failure.
    pub handler_timeout: Option<Duration>,
    /// How long in-flight messages may finish after shutdown is requested.
    pub grace: Duration,
    /// Longest `BLOCK` of one `XREADGROUP`.
    pub block: Duration,
}

impl WorkerConfig {
    /// A configuration with the defaults of `streamq worker`: concurrency
    /// 1, 5 deliveries, 5-minute visibility timeout, no dead-letter stream,
    /// no handler timeout, 25 s grace.
    pub fn new(
        redis_url: impl Into<String>,
        stream: impl Into<String>,
        group: impl Into<String>,
        consumer: impl Into<String>,
    ) -> Self {
        Self {
            redis_url: redis_url.into(),
            stream: stream.into(),
            group: group.into(),
            consumer: consumer.into(),
            concurrency: 1,
            max_deliveries: 5,
            visibility_timeout: Duration::from_secs(300),
            dead_letter_stream: None,
            handler_timeout: None,
            grace: Duration::from_secs(25),
            block: Duration::from_secs(2),
        }
    }
}

/// Errors that stop a [`Worker`].
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("invalid worker configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Redis(#[from] StreamError),
}

/// A message handed to the handler.
#[derive(Clone, Debug)]
pub struct Message {
    entry: Arc<StreamEntry>,
    delivery_count: u64,
}

impl Message {
    pub fn id(&self) -> &str {
        &self.entry.id
    }

    /// The payload (the `data` field).
    pub fn data(&self) -> &[u8] {
        self.entry.data()
    }

    /// 1 on first delivery, higher on redelivery.
    pub fn delivery_count(&self) -> u64 {
        self.delivery_count
    }

    /// Every field but the payload, in stream order.
    pub fn headers(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.entry.headers()
    }

    /// The first field named `name`, if any: `field("data")` tells a
    /// missing payload from an empty one.
    pub fn field(&self, name: &str) -> Option<&[u8]> {
        self.entry.field(name)
    }
}

/// Why a handler failed; recorded as the dead-letter entry's `streamq.error`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HandlerError(pub String);

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for HandlerError {}

type HandlerFuture = Pin<Box<dyn Future<Output = Result<(), HandlerError>> + Send>>;
type HandlerFn = dyn Fn(Message) -> HandlerFuture + Send + Sync;

/// What a run did, returned when the worker stops.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunSummary {
    /// Handler successes that were acked.
    pub acked: u64,
    /// Handler failures and timeouts (left pending or dead-lettered).
    pub failed: u64,
    pub dead_lettered: u64,
    /// Pending entries found trimmed from the stream, acked and dropped.
    pub trimmed: u64,
    /// Entries taken over from idle consumers.
    pub reclaimed: u64,
    /// Handlers still running when the grace period ended; left pending.
    pub abandoned: u64,
}

/// Live counters, readable while the worker runs (e.g. for metrics).
#[derive(Debug, Default)]
pub struct Counters {
    pub acked: AtomicU64,
    pub failed: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub trimmed: AtomicU64,
    pub reclaimed: AtomicU64,
    pub in_flight: AtomicU64,
}

/// A stream consumer running an async handler per message.
///
/// ```no_run
/// use streamq::worker::{HandlerError, Message, Worker, WorkerConfig};
///
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// let mut config = WorkerConfig::new("redis://127.0.0.1/", "orders", "billing", "billing-1");
/// config.concurrency = 8;
/// config.dead_letter_stream = Some("orders:dlq".into());
/// let worker = Worker::new(config, |msg: Message| async move {
///     if msg.data().is_empty() {
///         return Err(HandlerError("empty order".into()));
///     }
///     println!("order {}: {}", msg.id(), String::from_utf8_lossy(msg.data()));
///     Ok(())
/// });
/// let summary = worker
///     .run(async {
///         let _ = tokio::signal::ctrl_c().await;
///     })
///     .await?;
/// println!("acked {}", summary.acked);
/// # Ok(())
/// # }
/// ```
pub struct Worker {
    config: WorkerConfig,
    handler: Arc<HandlerFn>,
    counters: Arc<Counters>,
}

impl Worker {
    pub fn new<F, Fut, E>(config: WorkerConfig, handler: F) -> Self
    where
        F: Fn(Message) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: fmt::Display,
    {
        let handler = Arc::new(move |msg: Message| -> HandlerFuture {
            let fut = handler(msg);
            Box::pin(async move { fut.await.map_err(|e| HandlerError(e.to_string())) })
        });
        Self {
            config,
            handler,
            counters: Arc::default(),
        }
    }

    pub fn config(&self) -> &WorkerConfig {
        &self.config
    }

    /// Counters that keep counting while [`Worker::run`] runs.
    pub fn counters(&self) -> Arc<Counters> {
        self.counters.clone()
    }

    /// Consumes until `shutdown` completes, then stops reading, lets
    /// in-flight handlers finish within the grace period, acks them and
    /// returns. Errors only on what retrying cannot fix (missing group,
    /// ACL denial, bad credentials) or when Redis cannot be reached at start.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<RunSummary, WorkerError> {
        let cfg = Arc::new(self.config);
        validate(&cfg)?;
        let mut control = Link::connect(&cfg, "ctl", Duration::from_secs(10)).await?;
        stream::check_group(&mut control.conn, &cfg.stream, &cfg.group, &cfg.consumer).await?;
        let mut reader = Link::connect(&cfg, "read", cfg.block + Duration::from_secs(5)).await?;
        let acker_link = Link::connect(&cfg, "ack", Duration::from_secs(10)).await?;
        tracing::info!(
            stream = %cfg.stream, group = %cfg.group, consumer = %cfg.consumer,
            concurrency = cfg.concurrency, "worker started"
        );

        let shared = Arc::new(Shared {
            in_flight: Mutex::default(),
            last_errors: Mutex::default(),
            counters: self.counters.clone(),
        });
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let mut acker = tokio::spawn(settle_loop(cfg.clone(), acker_link, shared.clone(), done_rx));
        let semaphore = Arc::new(Semaphore::new(cfg.concurrency));
        let mut tasks = JoinSet::new();
        let dispatch = Dispatch {
            handler: self.handler,
            timeout: cfg.handler_timeout,
            done: done_tx,
            shared: shared.clone(),
            lanes: tokio::runtime::Handle::current().metrics().num_workers().max(1),
        };

        let reclaim_every = (cfg.visibility_timeout / 4).clamp(Duration::from_millis(100), Duration::from_secs(30));
        let mut next_reclaim = Instant::now();
        let mut reclaim_cursor = "0-0".to_owned();
        let mut backoff = Backoff::default();
        let mut fatal: Option<WorkerError> = None;
        let mut acker_result = None;
        tokio::pin!(shutdown);

        loop {
            while tasks.try_join_next().is_some() {}
            let first = tokio::select! {
                biased;
                () = &mut shutdown => break,
                r = &mut acker => { acker_result = Some(r); break }
                p = semaphore.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            };
            let mut permits = vec![first];
            while let Ok(p) = semaphore.clone().try_acquire_owned() {
                permits.push(p);
            }
            // With fast handlers, permits come back one by one; reading
            // right away would issue many tiny XREADGROUPs. Waiting up to a
            // millisecond for a quarter of them batches the reads.
            let want = (cfg.concurrency / 4).max(1);
            if permits.len() < want
                && let Ok(Ok(mut more)) = tokio::time::timeout(
                    Duration::from_millis(1),
                    semaphore.clone().acquire_many_owned((want - permits.len()) as u32),
                )
                .await
            {
                while more.num_permits() > 1 {
                    permits.extend(more.split(1));
                }
                permits.push(more);
            }

            let mut stopping = false;
            let step = if Instant::now() >= next_reclaim {
                let r = reclaim(
                    &cfg,
                    &mut control.conn,
                    &shared,
                    &dispatch,
                    &mut tasks,
                    &mut permits,
                    &reclaim_cursor,
                )
                .await;
                match r {
                    Ok(next) => {
                        if next == "0-0" {
                            next_reclaim = Instant::now() + reclaim_every;
                        }
                        reclaim_cursor = next;
                        Ok(())
                    }
                    Err(e) => Err((e, &mut control)),
                }
            } else {
                let wait = next_reclaim
                    .saturating_duration_since(Instant::now())
                    .clamp(Duration::from_millis(1), cfg.block);
                let read = {
                    let read = stream::read_group(
                        &mut reader.conn,
                        &cfg.stream,
                        &cfg.group,
                        &cfg.consumer,
                        permits.len(),
                        wait,
                    );
                    tokio::pin!(read);
                    tokio::select! {
                        biased;
                        r = &mut read => r,
                        () = &mut shutdown => {
                            // The XREADGROUP may already be at Redis: what it delivers is this
                            // consumer's from then on. Finish the read (at most `wait`) and handle
                            // its entries within the grace period, rather than drop the reply and
                            // leave them pending for a redelivery after the visibility timeout.
                            stopping = true;
                            read.await
                        }
                    }
                };
                match read {
                    Ok(entries) => {
                        let mut jobs = Vec::with_capacity(entries.len());
                        for entry in entries {
                            // A permit per entry: XREADGROUP returned at most permits.len().
                            let Some(permit) = permits.pop() else {
                                tracing::error!(id = %entry.id, "more entries than requested; left pending");
                                break;
                            };
                            jobs.push(Job {
                                entry: Arc::new(entry),
                                delivery_count: 1,
                                permit,
                            });
                        }
                        dispatch.start(&mut tasks, jobs);
                        Ok(())
                    }
                    Err(e) => Err((e, &mut reader)),
                }
            };
            drop(permits);
            if stopping {
                break;
            }
            match step {
                Ok(()) => backoff.reset(),
                Err((e, _)) if !e.is_transient() => {
                    fatal = Some(e.into());
                    break;
                }
                Err((e, link)) => {
                    let delay = backoff.next();
                    tracing::warn!(error = %e, retry_in = ?delay, "Redis unavailable; retrying");
                    tokio::select! {
                        () = &mut shutdown => break,
                        () = tokio::time::sleep(delay) => {}
                    }
                    if let Err(e) = link.reconnect().await {
                        tracing::warn!(error = %e, "reconnect failed");
                    }
                }
            }
        }

        // Stop reading; give in-flight handlers the grace period. A
        // handler holds its permit exactly while it runs.
        let running = |semaphore: &Semaphore| cfg.concurrency.saturating_sub(semaphore.available_permits()) as u64;
        if running(&semaphore) > 0 {
            tracing::info!(running = running(&semaphore), grace = ?cfg.grace, "stopping: waiting for in-flight messages");
        }
        let drained = tokio::time::timeout(cfg.grace, async { while tasks.join_next().await.is_some() {} }).await;
        let abandoned = if drained.is_err() {
            let left = running(&semaphore);
            tracing::warn!(
                left,
                "grace period over: unfinished messages stay pending for redelivery"
            );
            // Dropping the handler futures kills their child processes.
            tasks.shutdown().await;
            left
        } else {
            0
        };
        drop(dispatch);
        let settled = match acker_result {
            Some(r) => r,
            None => acker.await,
        };
        match settled {
            Ok(Ok(())) => {}
            Ok(Err(e)) => fatal = fatal.or(Some(e)),
            Err(join) => fatal = fatal.or(Some(WorkerError::Config(format!("acker task failed: {join}")))),
        }
        if let Some(e) = fatal {
            return Err(e);
        }
        let c = &self.counters;
        let summary = RunSummary {
            acked: c.acked.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            dead_lettered: c.dead_lettered.load(Ordering::Relaxed),
            trimmed: c.trimmed.load(Ordering::Relaxed),
            reclaimed: c.reclaimed.load(Ordering::Relaxed),
            abandoned,
        };
        tracing::info!(?summary, "worker stopped");
        Ok(summary)
    }
}

fn validate(cfg: &WorkerConfig) -> Result<(), WorkerError> {
    let bad = |what: &str| Err(WorkerError::Config(what.to_owned()));
    if cfg.stream.is_empty() {
        return bad("the stream name is empty");
    }
    if cfg.group.is_empty() {
        return bad("the group name is empty");
    }
    if cfg.consumer.is_empty() {
        return bad("the consumer name is empty");
    }
    if cfg.concurrency == 0 {
        return bad("concurrency must be at least 1");
    }
    if cfg.max_deliveries == 0 {
        return bad("max deliveries must be at least 1");
    }
    if cfg.visibility_timeout < Duration::from_millis(100) {
        return bad("the visibility timeout must be at least 100ms");
    }
    if cfg.block.is_zero() {
        return bad("the read block time must be positive (0 would block forever)");
    }
    if let Some(t) = cfg.handler_timeout
        && t >= cfg.visibility_timeout
    {
        tracing::warn!(
            timeout = ?t, visibility_timeout = ?cfg.visibility_timeout,
            "handler timeout is not below the visibility timeout: slow messages may be redelivered while still running"
        );
    }
    Ok(())
}

/// State shared by the dispatcher and the settle loop.
struct Shared {
    /// Ids claimed by this worker and not settled yet (running, or done and
    /// waiting for their ack). A reclaim pass that sweeps one of them up
    /// must not start it a second time.
    in_flight: Mutex<HashSet<String>>,
    /// The last handler error per message id, for `streamq.error` when a
    /// message is dead-lettered at reclaim time.
    last_errors: Mutex<HashMap<String, String>>,
    counters: Arc<Counters>,
}

/// Cap on remembered errors; beyond it the oldest knowledge is dropped and
/// the dead-letter entry says the error is unknown.
const MAX_REMEMBERED_ERRORS: usize = 10_000;

impl Shared {
    fn remember_error(&self, id: &str, error: &str) {
        let mut errors = self.last_errors.lock().unwrap_or_else(|p| p.into_inner());
        if errors.len() >= MAX_REMEMBERED_ERRORS
            && !errors.contains_key(id)
            && let Some(k) = errors.keys().next().cloned()
        {
            errors.remove(&k);
        }
        errors.insert(id.to_owned(), error.to_owned());
    }

    fn take_error(&self, id: &str) -> Option<String> {
        self.last_errors.lock().unwrap_or_else(|p| p.into_inner()).remove(id)
    }

    /// Drops what is remembered about `ids` (acked: no longer needed), under
    /// one lock for the whole batch.
    fn forget_errors(&self, ids: &[&str]) {
        let mut errors = self.last_errors.lock().unwrap_or_else(|p| p.into_inner());
        if errors.is_empty() {
            return;
        }
        for id in ids {
            errors.remove(*id);
        }
    }

    fn settled(&self, ids: impl IntoIterator<Item = impl AsRef<str>>) {
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        for id in ids {
            in_flight.remove(id.as_ref());
        }
        self.counters.in_flight.store(in_flight.len() as u64, Ordering::Relaxed);
    }
}

/// The result of one handler run, on its way to the settle loop.
struct Outcome {
    entry: Arc<StreamEntry>,
    delivery_count: u64,
    result: Result<(), HandlerError>,
    busy: Duration,
}

/// A message about to be handled, with the concurrency permit it holds
/// while its handler runs.
struct Job {
    entry: Arc<StreamEntry>,
    delivery_count: u64,
    permit: OwnedSemaphorePermit,
}

/// Fewest messages worth a task of their own: a batch is split over the
/// runtime's worker threads only when each part has at least this many.
const MIN_JOBS_PER_TASK: usize = 32;

struct Dispatch {
    handler: Arc<HandlerFn>,
    timeout: Option<Duration>,
    done: mpsc::UnboundedSender<Vec<Outcome>>,
    shared: Arc<Shared>,
    /// Worker threads of the runtime: a batch runs on at most this many tasks.
    lanes: usize,
}

impl Dispatch {
    /// Starts the handlers of one read (or reclaim) batch. Rather than a
    /// task per message, the batch runs on a few tasks (one per worker
    /// thread, at most), each driving its handlers concurrently: with fast
    /// handlers, the per-message task (spawn, JoinSet bookkeeping, wake-ups)
    /// and its channel send showed high in `perf` for a no-op handler.
    fn start(&self, tasks: &mut JoinSet<()>, mut jobs: Vec<Job>) {
        if jobs.is_empty() {
            return;
        }
        {
            let mut in_flight = self.shared.in_flight.lock().unwrap_or_else(|p| p.into_inner());
            in_flight.extend(jobs.iter().map(|j| j.entry.id.clone()));
            self.shared
                .counters
                .in_flight
                .store(in_flight.len() as u64, Ordering::Relaxed);
        }
        let parts = self.lanes.min(jobs.len() / MIN_JOBS_PER_TASK).max(1);
        let per_part = jobs.len().div_ceil(parts);
        while !jobs.is_empty() {
            let rest = jobs.split_off(per_part.min(jobs.len()));
            let part = std::mem::replace(&mut jobs, rest);
            tasks.spawn(run_jobs(self.handler.clone(), self.timeout, self.done.clone(), part));
        }
    }
}

/// Runs `jobs` concurrently and passes their outcomes on, all that finished
/// together in one send.
async fn run_jobs(
    handler: Arc<HandlerFn>,
    timeout: Option<Duration>,
    done: mpsc::UnboundedSender<Vec<Outcome>>,
    jobs: Vec<Job>,
) {
    let mut running: FuturesUnordered<_> = jobs.into_iter().map(|job| run_one(&*handler, timeout, job)).collect();
    loop {
        let finished = std::future::poll_fn(|cx| {
            let mut finished = Vec::new();
            loop {
                match running.poll_next_unpin(cx) {
                    Poll::Ready(Some(outcome)) => finished.push(outcome),
                    Poll::Ready(None) if finished.is_empty() => return Poll::Ready(None),
                    Poll::Pending if finished.is_empty() => return Poll::Pending,
                    Poll::Ready(None) | Poll::Pending => return Poll::Ready(Some(finished)),
                }
            }
        })
        .await;
        let Some(finished) = finished else {
            return;
        };
        // The settle loop outlives every task; a send error means the
        // worker is going down and the messages stay pending.
        let _ = done.send(finished);
    }
}

/// One handler run, bounded by the handler timeout. A panicking handler is
/// a failed message, not a lost batch.
async fn run_one(handler: &HandlerFn, timeout: Option<Duration>, job: Job) -> Outcome {
    let Job {
        entry,
        delivery_count,
        permit,
    } = job;
    let msg = Message {
        entry: entry.clone(),
        delivery_count,
    };
    let start = Instant::now();
    let call = AssertUnwindSafe(handler(msg)).catch_unwind();
    let result = match timeout {
        Some(limit) => match tokio::time::timeout(limit, call).await {
            Ok(r) => r,
            Err(_) => Ok(Err(HandlerError(format!("timed out after {limit:?}")))),
        },
        None => call.await,
    };
    let busy = start.elapsed();
    drop(permit);
    let result = result.unwrap_or_else(|panic| {
        let why = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a non-string panic payload".to_owned());
        Err(HandlerError(format!("handler panicked: {why}")))
    });
    Outcome {
        entry,
        delivery_count,
        result,
        busy,
    }
}

/// One reclaim step: take over entries idle past the visibility timeout,
/// dead-letter the exhausted ones, ack the trimmed ones, run the rest.
/// Returns the next XAUTOCLAIM cursor.
async fn reclaim(
    cfg: &WorkerConfig,
    conn: &mut MultiplexedConnection,
    shared: &Shared,
    dispatch: &Dispatch,
    tasks: &mut JoinSet<()>,
    permits: &mut Vec<OwnedSemaphorePermit>,
    cursor: &str,
) -> Result<String, StreamError> {
    let claimed = stream::auto_claim(
        conn,
        &cfg.stream,
        &cfg.group,
        &cfg.consumer,
        cfg.visibility_timeout,
        cursor,
        permits.len(),
    )
    .await?;
    if !claimed.deleted.is_empty() {
        // Redis 7 already drops these from the PEL; the ack is for 6.2 and harmless.
        let ids: Vec<&str> = claimed.deleted.iter().map(String::as_str).collect();
        stream::ack_with_stats(conn, &cfg.stream, &cfg.group, &cfg.consumer, &ids, Stats::default()).await?;
        shared.counters.trimmed.fetch_add(ids.len() as u64, Ordering::Relaxed);
        tracing::warn!(count = ids.len(), ids = ?ids, "pending entries were trimmed from the stream; acked and dropped");
    }
    if claimed.entries.is_empty() {
        return Ok(claimed.next_start);
    }
    let ids: Vec<&str> = claimed.entries.iter().map(|e| e.id.as_str()).collect();
    let counts = stream::delivery_counts(conn, &cfg.stream, &cfg.group, &cfg.consumer, &ids).await?;
    let mut jobs = Vec::new();
    for entry in claimed.entries {
        let already_ours = shared
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&entry.id);
        if already_ours {
            tracing::debug!(id = %entry.id, "reclaimed an entry this worker is still handling; not starting it twice");
            continue;
        }
        let Some(&count) = counts.get(&entry.id) else {
            // Acked or taken by another consumer between the two calls.
            continue;
        };
        shared.counters.reclaimed.fetch_add(1, Ordering::Relaxed);
        // `count` includes this claim. Deliveries that reached a handler: count - 1.
        let deliveries = count.saturating_sub(1);
        if let Some(dlq) = &cfg.dead_letter_stream
            && deliveries >= cfg.max_deliveries
        {
            let error = shared.take_error(&entry.id).unwrap_or_else(|| {
                "unknown: the last delivery ended without a result reaching this worker (crashed or killed handler?)"
                    .to_owned()
            });
            let why = DeadLetter {
                dead_letter_stream: dlq,
                deliveries,
                error: &error,
            };
            let dead_id = stream::dead_letter(conn, &cfg.stream, &cfg.group, &entry, &why).await?;
            shared.counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(id = %entry.id, dead_id, deliveries, error, "dead-lettered at reclaim");
            continue;
        }
        let Some(permit) = permits.pop() else {
            break;
        };
        tracing::info!(id = %entry.id, delivery = count, "reclaimed idle message");
        jobs.push(Job {
            entry: Arc::new(entry),
            delivery_count: count,
            permit,
        });
    }
    dispatch.start(tasks, jobs);
    Ok(claimed.next_start)
}

/// Settles handler outcomes in batches: one pipeline of XACK + stats per
/// batch, dead-letter moves for exhausted failures. Ends when every
/// dispatcher is gone and the channel is drained.
async fn settle_loop(
    cfg: Arc<WorkerConfig>,
    mut link: Link,
    shared: Arc<Shared>,
    mut done: mpsc::UnboundedReceiver<Vec<Outcome>>,
) -> Result<(), WorkerError> {
    // Sends (each a group of outcomes) taken per round trip; the XACKs of a
    // round trip go out in commands of at most 1024 ids.
    const MAX_SENDS: usize = 64;
    let mut batch = Vec::with_capacity(MAX_SENDS);
    while done.recv_many(&mut batch, MAX_SENDS).await > 0 {
        let mut acks: Vec<Arc<StreamEntry>> = Vec::new();
        let mut stats = Stats::default();
        let mut exhausted = Vec::new();
        let mut failed_ids = Vec::new();
        for o in batch.drain(..).flatten() {
            stats.processed += 1;
            stats.busy_us += u64::try_from(o.busy.as_micros()).unwrap_or(u64::MAX);
            match o.result {
                Ok(()) => acks.push(o.entry),
                Err(e) => {
                    shared.counters.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(id = %o.entry.id, delivery = o.delivery_count, error = %e, "handler failed");
                    if cfg.dead_letter_stream.is_some() && o.delivery_count >= cfg.max_deliveries {
                        exhausted.push((o.entry, o.delivery_count, e.0));
                    } else {
                        shared.remember_error(&o.entry.id, &e.0);
                        failed_ids.push(o.entry.id.clone());
                    }
                }
            }
        }
        let ids: Vec<&str> = acks.iter().map(|e| e.id.as_str()).collect();
        let r = with_retries(&mut link, |conn| {
            let ids = ids.clone();
            let cfg = cfg.clone();
            async move {
                let mut conn = conn;
                stream::ack_with_stats(&mut conn, &cfg.stream, &cfg.group, &cfg.consumer, &ids, stats).await
            }
        })
        .await;
        match r {
            Ok(_) => {
                shared.counters.acked.fetch_add(ids.len() as u64, Ordering::Relaxed);
                shared.forget_errors(&ids);
            }
            Err(e) if !e.is_transient() => return Err(e.into()),
            Err(e) => tracing::error!(error = %e, count = ids.len(), "acks lost; these messages will be redelivered"),
        }
        for (entry, deliveries, error) in exhausted {
            let dlq = cfg.dead_letter_stream.as_deref().unwrap_or_default();
            let why = DeadLetter {
                dead_letter_stream: dlq,
                deliveries,
                error: &error,
            };
            let moved = with_retries(&mut link, |conn| {
                let (cfg, entry, why) = (cfg.clone(), entry.clone(), why.clone());
                async move {
                    let mut conn = conn;
                    stream::dead_letter(&mut conn, &cfg.stream, &cfg.group, &entry, &why).await
                }
            })
            .await;
            match moved {
                Ok(dead_id) => {
                    shared.counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
                    shared.take_error(&entry.id);
                    tracing::warn!(id = %entry.id, dead_id, deliveries, error, "dead-lettered");
                }
                Err(e) if !e.is_transient() => return Err(e.into()),
                Err(e) => {
                    // It stays pending; a reclaim pass dead-letters it later.
                    shared.remember_error(&entry.id, &error);
                    tracing::error!(id = %entry.id, error = %e, "dead-letter move failed; will retry at reclaim");
                }
            }
            shared.settled([&entry.id]);
        }
        shared.settled(ids.iter().copied().chain(failed_ids.iter().map(String::as_str)));
    }
    Ok(())
}

async fn with_retries<T, F, Fut>(link: &mut Link, mut op: F) -> Result<T, StreamError>
where
    F: FnMut(MultiplexedConnection) -> Fut,
    Fut: Future<Output = Result<T, StreamError>>,
{
    let mut backoff = Backoff::default();
    for attempt in 0.. {
        let conn = link.conn.clone();
        match op(conn).await {
            Ok(v) => return Ok(v),
            Err(e) if e.is_transient() && attempt < 5 => {
                let delay = backoff.next();
                tracing::warn!(error = %e, retry_in = ?delay, "Redis call failed; retrying");
                tokio::time::sleep(delay).await;
                if let Err(e) = link.reconnect().await {
                    tracing::warn!(error = %e, "reconnect failed");
                }
            }
            Err(e) => return Err(e),
        }
    }
    unreachable!("the retry loop returns")
}

/// A connection that can be replaced after the server went away.
struct Link {
    url: String,
    name: String,
    timeout: Duration,
    conn: MultiplexedConnection,
}

impl Link {
    async fn connect(cfg: &WorkerConfig, role: &str, timeout: Duration) -> Result<Self, StreamError> {
        let name = format!("streamq-worker:{}:{role}", cfg.consumer);
        let conn = stream::connect(&cfg.redis_url, &name, timeout).await?;
        Ok(Self {
            url: cfg.redis_url.clone(),
            name,
            timeout,
            conn,
        })
    }

    async fn reconnect(&mut self) -> Result<(), StreamError> {
        self.conn = stream::connect(&self.url, &self.name, self.timeout).await?;
        Ok(())
    }
}

#[derive(Default)]
struct Backoff {
    attempt: u32,
}

impl Backoff {
    fn next(&mut self) -> Duration {
        let delay = Duration::from_millis(100 * 2u64.pow(self.attempt.min(6)));
        self.attempt += 1;
        delay
    }

    fn reset(&mut self) {
        self.attempt = 0;
    }
}
