//! Running handlers: a read (or reclaim) batch becomes a few tasks, each
//! driving its handlers concurrently and passing their results to the settle
//! loop.

use std::{
    future::Future,
    panic::AssertUnwindSafe,
    pin::Pin,
    sync::{Arc, atomic::Ordering},
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
    runtime::Shared,
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
    pub(super) entry: Arc<StreamEntry>,
    pub(super) delivery_count: u64,
    pub(super) permit: OwnedSemaphorePermit,
}

/// Fewest messages worth a task of their own: a batch is split over the
/// runtime's worker threads only when each part has at least this many.
const MIN_JOBS_PER_TASK: usize = 32;

pub(super) struct Dispatch {
    pub(super) handler: Arc<HandlerFn>,
    pub(super) timeout: Option<Duration>,
    pub(super) done: mpsc::UnboundedSender<Vec<HandlerRun>>,
    pub(super) shared: Arc<Shared>,
    /// Worker threads of the runtime: a batch runs on at most this many tasks.
    pub(super) lanes: usize,
}

impl Dispatch {
    /// Starts the handlers of one read (or reclaim) batch. Rather than a
    /// task per message, the batch runs on a few tasks (one per worker
    /// thread, at most), each driving its handlers concurrently: with fast
    /// handlers, the per-message task (spawn, JoinSet bookkeeping, wake-ups)
    /// and its channel send showed high in `perf` for a no-op handler.
    pub(super) fn start(&self, tasks: &mut JoinSet<()>, mut jobs: Vec<Job>) {
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
    HandlerRun {
        entry,
        delivery_count,
        result,
        busy,
    }
}
