//! Taking over abandoned work: entries idle past the visibility timeout
//! (`XAUTOCLAIM`), from this or any consumer of the group.

use std::{
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use ::redis::aio::MultiplexedConnection;
use tokio::sync::OwnedSemaphorePermit;

use super::{
    config::WorkerConfig,
    dispatch::{Dispatch, Job},
    shared::Shared,
};
use crate::redis::{
    Error as StreamError,
    stream::{self, DeadLetter, Stats, StreamEntry},
};

/// When the next reclaim step is due, and where in the pending list it
/// goes on from.
pub(super) struct Reclaim {
    /// Pause between full passes over the pending list.
    every: Duration,
    next: Instant,
    cursor: String,
}

impl Reclaim {
    /// Due at once: work left by a crashed predecessor is taken over first.
    pub(super) fn new(cfg: &WorkerConfig) -> Self {
        Self {
            every: (cfg.visibility_timeout / 4).clamp(Duration::from_millis(100), Duration::from_secs(30)),
            next: Instant::now(),
            cursor: "0-0".to_owned(),
        }
    }

    pub(super) fn is_due(&self) -> bool {
        Instant::now() >= self.next
    }

    pub(super) fn due_in(&self) -> Duration {
        self.next.saturating_duration_since(Instant::now())
    }

    /// One step: take over up to `permits.len()` entries idle past the
    /// visibility timeout, dead-letter the exhausted ones, ack the trimmed
    /// ones, start the rest. A pass goes on until the cursor wraps around.
    pub(super) async fn step(
        &mut self,
        cfg: &WorkerConfig,
        conn: &mut MultiplexedConnection,
        dispatch: &mut Dispatch,
        permits: &mut Vec<OwnedSemaphorePermit>,
    ) -> Result<(), StreamError> {
        let claimed = stream::auto_claim(
            conn,
            &cfg.stream,
            &cfg.group,
            &cfg.consumer,
            cfg.visibility_timeout,
            &self.cursor,
            permits.len(),
        )
        .await?;
        if !claimed.deleted.is_empty() {
            ack_trimmed(cfg, conn, dispatch.shared(), &claimed.deleted).await?;
        }
        if !claimed.entries.is_empty() {
            take_over(cfg, conn, dispatch, permits, claimed.entries).await?;
        }
        if claimed.next_start == "0-0" {
            self.next = Instant::now() + self.every;
        }
        self.cursor = claimed.next_start;
        Ok(())
    }
}

/// Acks pending entries whose content was trimmed from the stream: there is
/// nothing left to handle.
async fn ack_trimmed(
    cfg: &WorkerConfig,
    conn: &mut MultiplexedConnection,
    shared: &Shared,
    deleted: &[String],
) -> Result<(), StreamError> {
    // Redis 7 already drops these from the PEL; the ack is for 6.2 and harmless.
    let ids: Vec<&str> = deleted.iter().map(String::as_str).collect();
    stream::ack_with_stats(conn, &cfg.stream, &cfg.group, &cfg.consumer, &ids, Stats::default()).await?;
    shared.counters.trimmed.fetch_add(ids.len() as u64, Ordering::Relaxed);
    tracing::warn!(count = ids.len(), ids = ?ids, "pending entries were trimmed from the stream; acked and dropped");
    Ok(())
}

/// Starts the claimed entries again, except those this worker is still
/// handling and those out of deliveries, which are dead-lettered.
async fn take_over(
    cfg: &WorkerConfig,
    conn: &mut MultiplexedConnection,
    dispatch: &mut Dispatch,
    permits: &mut Vec<OwnedSemaphorePermit>,
    entries: Vec<StreamEntry>,
) -> Result<(), StreamError> {
    let ids: Vec<&str> = entries.iter().map(|e| e.id.as_str()).collect();
    let counts = stream::delivery_counts(conn, &cfg.stream, &cfg.group, &cfg.consumer, &ids).await?;
    let shared = dispatch.shared();
    let mut jobs = Vec::new();
    for entry in entries {
        if shared.is_in_flight(&entry.id) {
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
            dead_letter_reclaimed(cfg, conn, shared, dlq, &entry, deliveries).await?;
            continue;
        }
        let Some(permit) = permits.pop() else {
            break;
        };
        tracing::info!(id = %entry.id, delivery = count, "reclaimed idle message");
        jobs.push(Job::new(entry, count, permit));
    }
    dispatch.start(jobs);
    Ok(())
}

/// Moves an entry out of deliveries to the dead-letter stream, with the
/// last error this worker saw for it, if any.
async fn dead_letter_reclaimed(
    cfg: &WorkerConfig,
    conn: &mut MultiplexedConnection,
    shared: &Shared,
    dlq: &str,
    entry: &StreamEntry,
    deliveries: u64,
) -> Result<(), StreamError> {
    let error = shared.take_error(&entry.id).unwrap_or_else(|| {
        "unknown: the last delivery ended without a result reaching this worker (crashed or killed handler?)".to_owned()
    });
    let why = DeadLetter {
        dead_letter_stream: dlq,
        deliveries,
        error: &error,
    };
    let dead_id = stream::dead_letter(conn, &cfg.stream, &cfg.group, entry, &why).await?;
    shared.counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
    tracing::warn!(id = %entry.id, dead_id, deliveries, error, "dead-lettered at reclaim");
    Ok(())
}
