//! Running handlers: a read (or reclaim) batch becomes a few tasks, each
//! driving its handlers concurrently and passing their results to the settle
//! loop.

use std::{
    any::Any,
    future::Future,
    panic::AssertUnwindSafe,
    pin::Pin,
    sync::Arc,
    task::Poll,
    time::{Duration, Instant},
};

use futures::{FutureExt, StreamExt, stream::FuturesUnordered};
use tokio::{
    sync::{OwnedSemaphorePermit, mpsc},
    task::JoinSet,
};

use super::{
    message::{HandlerError, Message},
    shared::Shared,
};
use crate::redis::stream::StreamEntry;

pub(super) type HandlerFuture = Pin<Box<dyn Future<Output = Result<(), HandlerError>> + Send>>;
pub(super) type HandlerFn = dyn Fn(Message) -> HandlerFuture + Send + Sync;

/// The result of one handler run, on its way to the settle loop.
pub(super) struct HandlerRun {
    pub(super) entry: Arc<StreamEntry>,
    pub(super) delivery_count: u64,
    pub(super) result: Result<(), HandlerError>,
    pub(super) busy: Duration,
}

/// A message about to be handled, with the concurrency permit it holds
/// while its handler runs.
pub(super) struct Job {
    entry: Arc<StreamEntry>,
    delivery_count: u64,
    permit: OwnedSemaphorePermit,
}

impl Job {
    pub(super) fn new(entry: StreamEntry, delivery_count: u64, permit: OwnedSemaphorePermit) -> Self {
        Self {
            entry: Arc::new(entry),
            delivery_count,
            permit,
        }
    }
}

/// Fewest messages worth a task of their own: a batch is split over the
/// runtime's worker threads only when each part has at least this many.
const MIN_JOBS_PER_TASK: usize = 32;

/// Starts handlers and keeps the tasks that run them.
pub(super) struct Dispatch {
    handler: Arc<HandlerFn>,
    timeout: Option<Duration>,
    done: mpsc::UnboundedSender<Vec<HandlerRun>>,
    shared: Arc<Shared>,
    tasks: JoinSet<()>,
    /// Worker threads of the runtime: a batch runs on at most this many tasks.
    lanes: usize,
}

impl Dispatch {
    /// Sends the results to `done`; the settle loop ends once this and every
    /// task it started are gone.
    pub(super) fn new(
        handler: Arc<HandlerFn>,
        timeout: Option<Duration>,
        done: mpsc::UnboundedSender<Vec<HandlerRun>>,
        shared: Arc<Shared>,
    ) -> Self {
        Self {
            handler,
            timeout,
            done,
            shared,
            tasks: JoinSet::new(),
            lanes: tokio::runtime::Handle::current().metrics().num_workers().max(1),
        }
    }

    pub(super) fn shared(&self) -> &Shared {
        &self.shared
    }

    /// Starts the handlers of one read (or reclaim) batch. Rather than a
    /// task per message, the batch runs on a few tasks (one per worker
    /// thread, at most), each driving its handlers concurrently: with fast
    /// handlers, the per-message task (spawn, JoinSet bookkeeping, wake-ups)
    /// and its channel send showed high in `perf` for a no-op handler.
    pub(super) fn start(&mut self, mut jobs: Vec<Job>) {
        if jobs.is_empty() {
            return;
        }
        self.shared.started(jobs.iter().map(|j| j.entry.id.as_str()));
        let parts = self.lanes.min(jobs.len() / MIN_JOBS_PER_TASK).max(1);
        let per_part = jobs.len().div_ceil(parts);
        while !jobs.is_empty() {
            let rest = jobs.split_off(per_part.min(jobs.len()));
            let part = std::mem::replace(&mut jobs, rest);
            self.tasks
                .spawn(run_jobs(self.handler.clone(), self.timeout, self.done.clone(), part));
        }
    }

    /// Forgets the tasks that have finished.
    pub(super) fn reap_finished(&mut self) {
        while self.tasks.try_join_next().is_some() {}
    }

    /// Waits up to `grace` for every task to finish; false if some did not.
    pub(super) async fn finish_within(&mut self, grace: Duration) -> bool {
        tokio::time::timeout(grace, async { while self.tasks.join_next().await.is_some() {} })
            .await
            .is_ok()
    }

    /// Stops the tasks still running; dropping the handler futures kills
    /// their child processes.
    pub(super) async fn abandon(&mut self) {
        self.tasks.shutdown().await;
    }
}

/// Runs `jobs` concurrently and passes their results on, all that finished
/// together in one send.
async fn run_jobs(
    handler: Arc<HandlerFn>,
    timeout: Option<Duration>,
    done: mpsc::UnboundedSender<Vec<HandlerRun>>,
    jobs: Vec<Job>,
) {
    let mut running: FuturesUnordered<_> = jobs.into_iter().map(|job| run_one(&*handler, timeout, job)).collect();
    loop {
        let finished = std::future::poll_fn(|cx| {
            let mut finished = Vec::new();
            loop {
                match running.poll_next_unpin(cx) {
                    Poll::Ready(Some(run)) => finished.push(run),
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
async fn run_one(handler: &HandlerFn, timeout: Option<Duration>, job: Job) -> HandlerRun {
    let Job {
        entry,
        delivery_count,
        permit,
    } = job;
    let msg = Message::new(entry.clone(), delivery_count);
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
    let result = result.unwrap_or_else(|panic| Err(HandlerError(format!("handler panicked: {}", panic_text(&*panic)))));
    HandlerRun {
        entry,
        delivery_count,
        result,
        busy,
    }
}

fn panic_text(panic: &(dyn Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-string panic payload".to_owned())
}
