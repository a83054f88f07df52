//! Taking over abandoned work: entries idle past the visibility timeout
//! (`XAUTOCLAIM`), from this or any consumer of the group.

use std::sync::{Arc, atomic::Ordering};

use ::redis::aio::MultiplexedConnection;
use tokio::{sync::OwnedSemaphorePermit, task::JoinSet};

use super::{
    config::WorkerConfig,
    dispatch::{Dispatch, Job},
    runtime::Shared,
};
use crate::redis::stream::{self, DeadLetter, Stats, StreamError};

/// One reclaim step: take over entries idle past the visibility timeout,
/// dead-letter the exhausted ones, ack the trimmed ones, run the rest.
/// Returns the next XAUTOCLAIM cursor.
pub(super) async fn reclaim(
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
