//! Settling handler results: acks, consumer stats and dead-letter moves.

use std::sync::{Arc, atomic::Ordering};

use tokio::sync::mpsc;

use super::{
    config::WorkerConfig,
    connection::{Link, with_retries},
    dispatch::HandlerRun,
    runtime::{Shared, WorkerError},
};
use crate::redis::stream::{self, DeadLetter, Stats, StreamEntry};

/// Settles handler results in batches: one pipeline of XACK + stats per
/// batch, dead-letter moves for exhausted failures. Ends when every
/// dispatcher is gone and the channel is drained.
pub(super) async fn settle_loop(
    cfg: Arc<WorkerConfig>,
    mut link: Link,
    shared: Arc<Shared>,
    mut done: mpsc::UnboundedReceiver<Vec<HandlerRun>>,
) -> Result<(), WorkerError> {
    // Sends (each a group of handler runs) taken per round trip; the XACKs of a
    // round trip go out in commands of at most 1024 ids.
    const MAX_SENDS: usize = 64;
    let mut batch = Vec::with_capacity(MAX_SENDS);
    while done.recv_many(&mut batch, MAX_SENDS).await > 0 {
        let mut acks: Vec<Arc<StreamEntry>> = Vec::new();
        let mut stats = Stats::default();
        let mut exhausted = Vec::new();
        let mut failed_ids = Vec::new();
        for run in batch.drain(..).flatten() {
            stats.processed += 1;
            stats.busy_us += u64::try_from(run.busy.as_micros()).unwrap_or(u64::MAX);
            match run.result {
                Ok(()) => acks.push(run.entry),
                Err(e) => {
                    shared.counters.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(id = %run.entry.id, delivery = run.delivery_count, error = %e, "handler failed");
                    if cfg.dead_letter_stream.is_some() && run.delivery_count >= cfg.max_deliveries {
                        exhausted.push((run.entry, run.delivery_count, e.0));
                    } else {
                        shared.remember_error(&run.entry.id, &e.0);
                        failed_ids.push(run.entry.id.clone());
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
