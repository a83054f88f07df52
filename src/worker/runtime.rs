//! The worker itself: [`Worker::run`] reads the stream, reclaims idle
//! entries, starts handlers and, on shutdown, drains them within the grace
//! period.

use std::{
    collections::{HashMap, HashSet},
    fmt,
    future::Future,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::{
    sync::{Semaphore, mpsc},
    task::JoinSet,
};

use super::{
    config::{WorkerConfig, validate},
    connection::{Backoff, Link},
    dispatch::{Dispatch, HandlerFn, HandlerFuture, Job},
    message::{HandlerError, Message},
    reclaim::reclaim,
    settle::settle_loop,
};
use crate::redis::stream::{self, StreamError};

/// Errors that stop a [`Worker`].
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("invalid worker configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Redis(#[from] StreamError),
}

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

/// State shared by the dispatcher and the settle loop.
pub(super) struct Shared {
    /// Ids claimed by this worker and not settled yet (running, or done and
    /// waiting for their ack). A reclaim pass that sweeps one of them up
    /// must not start it a second time.
    pub(super) in_flight: Mutex<HashSet<String>>,
    /// The last handler error per message id, for `streamq.error` when a
    /// message is dead-lettered at reclaim time.
    last_errors: Mutex<HashMap<String, String>>,
    pub(super) counters: Arc<Counters>,
}

/// Cap on remembered errors; beyond it the oldest knowledge is dropped and
/// the dead-letter entry says the error is unknown.
const MAX_REMEMBERED_ERRORS: usize = 10_000;

impl Shared {
    pub(super) fn remember_error(&self, id: &str, error: &str) {
        let mut errors = self.last_errors.lock().unwrap_or_else(|p| p.into_inner());
        if errors.len() >= MAX_REMEMBERED_ERRORS
            && !errors.contains_key(id)
            && let Some(k) = errors.keys().next().cloned()
        {
            errors.remove(&k);
        }
        errors.insert(id.to_owned(), error.to_owned());
    }

    pub(super) fn take_error(&self, id: &str) -> Option<String> {
        self.last_errors.lock().unwrap_or_else(|p| p.into_inner()).remove(id)
    }

    /// Drops what is remembered about `ids` (acked: no longer needed), under
    /// one lock for the whole batch.
    pub(super) fn forget_errors(&self, ids: &[&str]) {
        let mut errors = self.last_errors.lock().unwrap_or_else(|p| p.into_inner());
        if errors.is_empty() {
            return;
        }
        for id in ids {
            errors.remove(*id);
        }
    }

    pub(super) fn settled(&self, ids: impl IntoIterator<Item = impl AsRef<str>>) {
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        for id in ids {
            in_flight.remove(id.as_ref());
        }
        self.counters.in_flight.store(in_flight.len() as u64, Ordering::Relaxed);
    }
}
