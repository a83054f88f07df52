//! Redis connections that survive the server going away: [`Link`], with
//! backoff and retries.

use std::{future::Future, time::Duration};

use ::redis::aio::MultiplexedConnection;

use super::config::WorkerConfig;
use crate::redis::{Error as StreamError, stream};

/// Runs `op` on the link's connection; on a transient error, backs off,
/// reconnects and tries again, up to 5 retries.
pub(super) async fn with_retries<T, F, Fut>(link: &mut Link, mut op: F) -> Result<T, StreamError>
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
                link.reconnect().await;
            }
            Err(e) => return Err(e),
        }
    }
    unreachable!("the retry loop returns")
}

/// A connection that can be replaced after the server went away.
pub(super) struct Link {
    url: String,
    name: String,
    timeout: Duration,
    pub(super) conn: MultiplexedConnection,
}

impl Link {
    pub(super) async fn connect(cfg: &WorkerConfig, role: &str, timeout: Duration) -> Result<Self, StreamError> {
        let name = format!("streamq-worker:{}:{role}", cfg.consumer);
        let conn = stream::connect(&cfg.redis_url, &name, timeout).await?;
        Ok(Self {
            url: cfg.redis_url.clone(),
            name,
            timeout,
            conn,
        })
    }

    /// Replaces the connection. On failure the old one stays, and the next
    /// call through it fails and leads here again.
    pub(super) async fn reconnect(&mut self) {
        match stream::connect(&self.url, &self.name, self.timeout).await {
            Ok(conn) => self.conn = conn,
            Err(e) => tracing::warn!(error = %e, "reconnect failed"),
        }
    }
}

/// Delays between retries: 100 ms, doubling up to 6.4 s.
#[derive(Default)]
pub(super) struct Backoff {
    attempt: u32,
}

impl Backoff {
    pub(super) fn next(&mut self) -> Duration {
        let delay = Duration::from_millis(100 * 2u64.pow(self.attempt.min(6)));
        self.attempt += 1;
        delay
    }

    pub(super) fn reset(&mut self) {
        self.attempt = 0;
    }
}
