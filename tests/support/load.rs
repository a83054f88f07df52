//! [`Load`]: the library Producer publishing at a fixed pace (or flat out)
//! from a background task, keeping the id of every publish Redis acknowledged.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use streamq::producer::{NewMessage, Producer};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Publishing at a fixed pace (or flat out), from a background task.
pub struct Load {
    stop: CancellationToken,
    task: JoinHandle<Published>,
    acknowledged: Arc<Mutex<usize>>,
}

#[derive(Clone, Debug, Default)]
pub struct Published {
    /// Ids of the publishes Redis acknowledged, in order.
    pub ids: Vec<String>,
    /// Publishes that failed (not acknowledged: not counted as published).
    pub errors: u64,
    /// From the first publish to the last acknowledged one.
    pub elapsed: Duration,
}

impl Published {
    pub fn rate(&self) -> f64 {
        self.ids.len() as f64 / self.elapsed.as_secs_f64().max(1e-3)
    }
}

impl Load {
    /// `per_second`: None publishes one message at a time as fast as Redis
    /// acknowledges; `poison_every`: every n-th message is a poison message;
    /// `total`: stop after that many acknowledged publishes.
    pub fn start(
        producer: Producer,
        per_second: Option<u32>,
        poison_every: Option<usize>,
        total: Option<usize>,
    ) -> Self {
        let stop = CancellationToken::new();
        let acknowledged: Arc<Mutex<usize>> = Arc::default();
        let task = tokio::spawn({
            let stop = stop.clone();
            let acknowledged = acknowledged.clone();
            async move {
                let mut out = Published::default();
                let start = Instant::now();
                // Batches every 20 ms at a pace; one message per round trip flat out.
                let tick = Duration::from_millis(20);
                let mut ticker = tokio::time::interval(tick);
                let mut n = 0usize;
                while !stop.is_cancelled() && total.is_none_or(|t| out.ids.len() < t) {
                    let batch = match per_second {
                        Some(rate) => {
                            ticker.tick().await;
                            let due = (start.elapsed().as_secs_f64() * f64::from(rate)) as usize;
                            due.saturating_sub(n)
                        }
                        None => 1,
                    };
                    let batch = total.map_or(batch, |t| batch.min(t - out.ids.len()));
                    if batch == 0 {
                        continue;
                    }
                    let messages: Vec<NewMessage> = (n..n + batch)
                        .map(|i| {
                            let poison = poison_every.is_some_and(|p| i % p == p - 1);
                            NewMessage::new(if poison { format!("poison {i}") } else { format!("m{i}") })
                        })
                        .collect();
                    n += batch;
                    match tokio::select! {
                        r = producer.publish_batch(&messages) => r,
                        _ = stop.cancelled() => break,
                    } {
                        Ok(ids) => {
                            out.ids.extend(ids);
                            out.elapsed = start.elapsed();
                            *acknowledged.lock().unwrap() = out.ids.len();
                        }
                        Err(e) => {
                            // Not acknowledged, so not published; the message
                            // may or may not be in the stream.
                            out.errors += batch as u64;
                            log_publish_error(&format!("publish failed: {e}"));
                            if per_second.is_none() {
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                        }
                    }
                }
                out
            }
        });
        Self {
            stop,
            task,
            acknowledged,
        }
    }

    /// Acknowledged publishes so far.
    pub fn acknowledged(&self) -> usize {
        *self.acknowledged.lock().unwrap()
    }

    pub async fn stop(self) -> Published {
        self.stop.cancel();
        self.task.await.expect("the load task")
    }

    /// Waits until it published `total` messages (see [`Load::start`]).
    pub async fn finish(self, timeout: Duration) -> Published {
        tokio::time::timeout(timeout, self.task)
            .await
            .expect("the load finished in time")
            .expect("the load task")
    }
}

fn log_publish_error(line: &str) {
    static LOGGED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    // A dead Redis fails every publish: the first few say enough.
    if LOGGED.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < 3 {
        eprintln!("{line}");
    }
}
