//! Settling handler results: acks, consumer stats and dead-letter moves.

use std::sync::{Arc, atomic::Ordering};

use tokio::sync::mpsc;

use super::{
    config::WorkerConfig,
    connection::{Link, with_retries},
    dispatch::HandlerRun,
    report::WorkerError,
    shared::Shared,
};
use crate::redis::stream::{self, DeadLetter, Stats, StreamEntry};

/// Sends (each a group of handler runs) taken per round trip; the XACKs of a
/// round trip go out in commands of at most 1024 ids.
const MAX_SENDS: usize = 64;

/// Settles handler results in batches: one pipeline of XACK + stats per
/// batch, dead-letter moves for exhausted failures. Ends when every
/// dispatcher is gone and the channel is drained.
pub(super) async fn settle_loop(
    cfg: Arc<WorkerConfig>,
    mut link: Link,
    shared: Arc<Shared>,
    mut done: mpsc::UnboundedReceiver<Vec<HandlerRun>>,
) -> Result<(), WorkerError> {
    let mut batch = Vec::with_capacity(MAX_SENDS);
    while done.recv_many(&mut batch, MAX_SENDS).await > 0 {
        let round = Round::sort(&cfg, &shared, batch.drain(..).flatten());
        let acked: Vec<&str> = round.acks.iter().map(|e| e.id.as_str()).collect();
        ack(&cfg, &mut link, &shared, &acked, round.stats).await?;
        for (entry, deliveries, error) in round.exhausted {
            dead_letter_failed(&cfg, &mut link, &shared, &entry, deliveries, error).await?;
            shared.settled([&entry.id]);
        }
        shared.settled(acked.iter().copied().chain(round.failed_ids.iter().map(String::as_str)));
    }
    Ok(())
}

/// One round trip's handler results, sorted by how each is settled.
#[derive(Default)]
struct Round {
    /// Successes: acked together.
    acks: Vec<Arc<StreamEntry>>,
    /// Of every result, recorded with the acks.
    stats: Stats,
    /// Failures out of deliveries, with their delivery count and error:
    /// moved to the dead-letter stream.
    exhausted: Vec<(Arc<StreamEntry>, u64, String)>,
    /// Other failures: left pending for redelivery.
    failed_ids: Vec<String>,
}

impl Round {
    fn sort(cfg: &WorkerConfig, shared: &Shared, runs: impl Iterator<Item = HandlerRun>) -> Self {
        let mut round = Self::default();
        for run in runs {
            round.stats.processed += 1;
            round.stats.busy_us += u64::try_from(run.busy.as_micros()).unwrap_or(u64::MAX);
            match run.result {
                Ok(()) => round.acks.push(run.entry),
                Err(e) => {
                    shared.counters.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(id = %run.entry.id, delivery = run.delivery_count, error = %e, "handler failed");
                    if cfg.dead_letter_stream.is_some() && run.delivery_count >= cfg.max_deliveries {
                        round.exhausted.push((run.entry, run.delivery_count, e.0));
                    } else {
                        shared.remember_error(&run.entry.id, &e.0);
                        round.failed_ids.push(run.entry.id.clone());
                    }
                }
            }
        }
        round
    }
}

/// Acks `ids` and records `stats` in one round trip, retried. Acks lost to
/// a Redis that stays away only mean redeliveries.
async fn ack(
    cfg: &WorkerConfig,
    link: &mut Link,
    shared: &Shared,
    ids: &[&str],
    stats: Stats,
) -> Result<(), WorkerError> {
    let acked = with_retries(link, move |mut conn| async move {
        stream::ack_with_stats(&mut conn, &cfg.stream, &cfg.group, &cfg.consumer, ids, stats).await
    })
    .await;
    match acked {
        Ok(_) => {
            shared.counters.acked.fetch_add(ids.len() as u64, Ordering::Relaxed);
            shared.forget_errors(ids);
        }
        Err(e) if !e.is_transient() => return Err(e.into()),
        Err(e) => tracing::error!(error = %e, count = ids.len(), "acks lost; these messages will be redelivered"),
    }
    Ok(())
}

/// Moves a message whose handler failed on its last allowed delivery to the
/// dead-letter stream, retried. If Redis stays away, it stays pending and a
/// reclaim step dead-letters it later, with `error`.
async fn dead_letter_failed(
    cfg: &WorkerConfig,
    link: &mut Link,
    shared: &Shared,
    entry: &StreamEntry,
    deliveries: u64,
    error: String,
) -> Result<(), WorkerError> {
    let why = &DeadLetter {
        dead_letter_stream: cfg.dead_letter_stream.as_deref().unwrap_or_default(),
        deliveries,
        error: &error,
    };
    let moved = with_retries(link, move |mut conn| async move {
        stream::dead_letter(&mut conn, &cfg.stream, &cfg.group, entry, why).await
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
            shared.remember_error(&entry.id, &error);
            tracing::error!(id = %entry.id, error = %e, "dead-letter move failed; will retry at reclaim");
        }
    }
    Ok(())
}
