//! The worker itself: [`Worker::run`] reads the stream, reclaims idle
//! entries, starts handlers and, on shutdown, drains them within the grace
//! period.

use std::{fmt, future::Future, ops::ControlFlow, pin::Pin, sync::Arc, time::Duration};

use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore, mpsc},
    task::{JoinError, JoinHandle},
};

use super::{
    config::WorkerConfig,
    connection::{Backoff, Link},
    dispatch::{Dispatch, HandlerFn, HandlerFuture, Job},
    message::{HandlerError, Message},
    reclaim::Reclaim,
    report::{Counters, RunSummary, WorkerError},
    settle::settle_loop,
    shared::Shared,
};
use crate::redis::{
    Error as StreamError,
    stream::{self, StreamEntry},
};

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
        let (mut session, mut settler) = Session::open(self.config, self.handler, self.counters.clone()).await?;
        tokio::pin!(shutdown);
        let stop = loop {
            session.dispatch.reap_finished();
            let first = tokio::select! {
                biased;
                () = &mut shutdown => break Stop::Shutdown,
                r = &mut settler => break Stop::SettleEnded(r),
                p = session.free_slot() => p,
            };
            let permits = session.more_free_slots(first).await;
            match session.read_or_reclaim(permits, shutdown.as_mut()).await {
                Step::Done => session.backoff.reset(),
                Step::Stopping => break Stop::Shutdown,
                Step::Failed(e, _) if !e.is_transient() => break Stop::Fatal(e.into()),
                Step::Failed(e, role) => {
                    if session.back_off(&e, role, shutdown.as_mut()).await.is_break() {
                        break Stop::Shutdown;
                    }
                }
            }
        };
        let abandoned = session.drain().await;
        first_error(stop, settler).await?;
        let summary = self.counters.summary(abandoned);
        tracing::info!(?summary, "worker stopped");
        Ok(summary)
    }
}

type Permits = Vec<OwnedSemaphorePermit>;
type Settler = JoinHandle<Result<(), WorkerError>>;

/// Why the read loop ended.
enum Stop {
    Shutdown,
    /// The settle loop ended on its own: an error it cannot retry, or a panic.
    SettleEnded(Result<Result<(), WorkerError>, JoinError>),
    /// An error retrying cannot fix.
    Fatal(WorkerError),
}

/// How one read or reclaim step ended.
enum Step {
    Done,
    /// Shutdown came during a read; what the read returned was started.
    Stopping,
    Failed(StreamError, Role),
}

/// Which connection a failed step used: the one to replace.
#[derive(Clone, Copy)]
enum Role {
    Control,
    Reader,
}

/// One run of a worker: its connections and what the read loop keeps from
/// step to step.
struct Session {
    cfg: Arc<WorkerConfig>,
    /// Group check and reclaim.
    control: Link,
    /// XREADGROUP, which blocks.
    reader: Link,
    /// One permit per handler slot; a handler holds its permit exactly while
    /// it runs.
    semaphore: Arc<Semaphore>,
    dispatch: Dispatch,
    reclaim: Reclaim,
    backoff: Backoff,
}

impl Session {
    /// Checks the configuration and the group, connects, and starts the
    /// settle loop on a connection of its own.
    async fn open(
        config: WorkerConfig,
        handler: Arc<HandlerFn>,
        counters: Arc<Counters>,
    ) -> Result<(Self, Settler), WorkerError> {
        let cfg = Arc::new(config);
        cfg.validate()?;
        let mut control = Link::connect(&cfg, "ctl", Duration::from_secs(10)).await?;
        stream::check_group(&mut control.conn, &cfg.stream, &cfg.group, &cfg.consumer).await?;
        let reader = Link::connect(&cfg, "read", cfg.block + Duration::from_secs(5)).await?;
        let settle_link = Link::connect(&cfg, "ack", Duration::from_secs(10)).await?;
        tracing::info!(
            stream = %cfg.stream, group = %cfg.group, consumer = %cfg.consumer,
            concurrency = cfg.concurrency, "worker started"
        );
        let shared = Arc::new(Shared::new(counters));
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let settler = tokio::spawn(settle_loop(cfg.clone(), settle_link, shared.clone(), done_rx));
        let session = Self {
            dispatch: Dispatch::new(handler, cfg.handler_timeout, done_tx, shared),
            semaphore: Arc::new(Semaphore::new(cfg.concurrency)),
            reclaim: Reclaim::new(&cfg),
            backoff: Backoff::default(),
            control,
            reader,
            cfg,
        };
        Ok((session, settler))
    }

    /// Waits for a free handler slot.
    async fn free_slot(&self) -> OwnedSemaphorePermit {
        let permit = self.semaphore.clone().acquire_owned().await;
        permit.expect("the semaphore is never closed")
    }

    /// `first` and every other free slot. With fast handlers, permits come
    /// back one by one; reading right away would issue many tiny
    /// XREADGROUPs. Waiting up to a millisecond for a quarter of them
    /// batches the reads.
    async fn more_free_slots(&self, first: OwnedSemaphorePermit) -> Permits {
        let mut permits = vec![first];
        while let Ok(p) = self.semaphore.clone().try_acquire_owned() {
            permits.push(p);
        }
        let want = (self.cfg.concurrency / 4).max(1);
        if permits.len() < want
            && let Ok(Ok(mut more)) = tokio::time::timeout(
                Duration::from_millis(1),
                self.semaphore.clone().acquire_many_owned((want - permits.len()) as u32),
            )
            .await
        {
            while more.num_permits() > 1 {
                permits.extend(more.split(1));
            }
            permits.push(more);
        }
        permits
    }

    /// A reclaim step when one is due, else a read; either starts handlers
    /// on `permits`. The permits left unused go back when it returns.
    async fn read_or_reclaim<S: Future<Output = ()>>(&mut self, mut permits: Permits, shutdown: Pin<&mut S>) -> Step {
        if !self.reclaim.is_due() {
            return self.read(&mut permits, shutdown).await;
        }
        let reclaimed = self
            .reclaim
            .step(&self.cfg, &mut self.control.conn, &mut self.dispatch, &mut permits)
            .await;
        match reclaimed {
            Ok(()) => Step::Done,
            Err(e) => Step::Failed(e, Role::Control),
        }
    }

    /// Reads up to one entry per permit, blocking at most until the next
    /// reclaim step is due, and starts their handlers.
    async fn read<S: Future<Output = ()>>(&mut self, permits: &mut Permits, shutdown: Pin<&mut S>) -> Step {
        let wait = self.reclaim.due_in().clamp(Duration::from_millis(1), self.cfg.block);
        let mut stopping = false;
        let read = {
            let cfg = &*self.cfg;
            let read = stream::read_group(
                &mut self.reader.conn,
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
                () = shutdown => {
                    // The XREADGROUP may already be at Redis: what it delivers is this
                    // consumer's from then on. Finish the read (at most `wait`) and handle
                    // its entries within the grace period, rather than drop the reply and
                    // leave them pending for a redelivery after the visibility timeout.
                    stopping = true;
                    read.await
                }
            }
        };
        let step = match read {
            Ok(entries) => {
                self.start_read(entries, permits);
                Step::Done
            }
            Err(e) => Step::Failed(e, Role::Reader),
        };
        if stopping { Step::Stopping } else { step }
    }

    fn start_read(&mut self, entries: Vec<StreamEntry>, permits: &mut Permits) {
        let mut jobs = Vec::with_capacity(entries.len());
        for entry in entries {
            // A permit per entry: XREADGROUP returned at most permits.len().
            let Some(permit) = permits.pop() else {
                tracing::error!(id = %entry.id, "more entries than requested; left pending");
                break;
            };
            jobs.push(Job::new(entry, 1, permit));
        }
        self.dispatch.start(jobs);
    }

    /// Waits before the next step, then replaces the connection that failed.
    /// Breaks if shutdown comes first.
    async fn back_off<S: Future<Output = ()>>(
        &mut self,
        e: &StreamError,
        role: Role,
        shutdown: Pin<&mut S>,
    ) -> ControlFlow<()> {
        let delay = self.backoff.next();
        tracing::warn!(error = %e, retry_in = ?delay, "Redis unavailable; retrying");
        tokio::select! {
            () = shutdown => return ControlFlow::Break(()),
            () = tokio::time::sleep(delay) => {}
        }
        match role {
            Role::Control => self.control.reconnect().await,
            Role::Reader => self.reader.reconnect().await,
        }
        ControlFlow::Continue(())
    }

    /// Reads no more; gives in-flight handlers the grace period. Returns how
    /// many were still running at its end: their messages stay pending.
    /// Dropping the session lets the settle loop end.
    async fn drain(mut self) -> u64 {
        let running = self.running();
        if running > 0 {
            tracing::info!(running, grace = ?self.cfg.grace, "stopping: waiting for in-flight messages");
        }
        if self.dispatch.finish_within(self.cfg.grace).await {
            return 0;
        }
        let left = self.running();
        tracing::warn!(
            left,
            "grace period over: unfinished messages stay pending for redelivery"
        );
        self.dispatch.abandon().await;
        left
    }

    /// Handlers running now.
    fn running(&self) -> u64 {
        self.cfg.concurrency.saturating_sub(self.semaphore.available_permits()) as u64
    }
}

/// The error that ended the run, if any: the read loop's first, else the
/// settle loop's, which is awaited here unless it already ended.
async fn first_error(stop: Stop, settler: Settler) -> Result<(), WorkerError> {
    let (fatal, settled) = match stop {
        Stop::Shutdown => (None, settler.await),
        Stop::Fatal(e) => (Some(e), settler.await),
        Stop::SettleEnded(r) => (None, r),
    };
    if let Some(e) = fatal {
        return Err(e);
    }
    settled.unwrap_or_else(|join| Err(WorkerError::Config(format!("acker task failed: {join}"))))
}
