//! [`WorkerConfig`] and its checks.

use std::time::Duration;

use super::report::WorkerError;

/// How a [`Worker`] consumes its stream.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    pub redis_url: String,
    pub stream: String,
    pub group: String,
    /// This worker's consumer name in the group; unique per live worker.
    pub consumer: String,
    /// Messages handled at once.
    pub concurrency: usize,
    /// Deliveries after which a failing message is dead-lettered (when a
    /// dead-letter stream is set; otherwise it is redelivered forever).
    pub max_deliveries: u64,
    /// Idle time after which another consumer may take a pending message.
    pub visibility_timeout: Duration,
    pub dead_letter_stream: Option<String>,
    /// Per-message handler time limit; a timeout counts as a failure.
    pub handler_timeout: Option<Duration>,
    /// How long in-flight messages may finish after shutdown is requested.
    pub grace: Duration,
    /// Longest `BLOCK` of one `XREADGROUP`.
    pub block: Duration,
}

impl WorkerConfig {
    /// A configuration with the defaults of `streamq worker`: concurrency
    /// 1, 5 deliveries, 5-minute visibility timeout, no dead-letter stream,
    /// no handler timeout, 25 s grace.
    pub fn new(
        redis_url: impl Into<String>,
        stream: impl Into<String>,
        group: impl Into<String>,
        consumer: impl Into<String>,
    ) -> Self {
        Self {
            redis_url: redis_url.into(),
            stream: stream.into(),
            group: group.into(),
            consumer: consumer.into(),
            concurrency: 1,
            max_deliveries: 5,
            visibility_timeout: Duration::from_secs(300),
            dead_letter_stream: None,
            handler_timeout: None,
            grace: Duration::from_secs(25),
            block: Duration::from_secs(2),
        }
    }

    /// Rejects a configuration the worker cannot run with; warns about one
    /// it runs badly with.
    pub(super) fn validate(&self) -> Result<(), WorkerError> {
        let bad = |what: &str| Err(WorkerError::Config(what.to_owned()));
        if self.stream.is_empty() {
            return bad("the stream name is empty");
        }
        if self.group.is_empty() {
            return bad("the group name is empty");
        }
        if self.consumer.is_empty() {
            return bad("the consumer name is empty");
        }
        if self.concurrency == 0 {
            return bad("concurrency must be at least 1");
        }
        if self.max_deliveries == 0 {
            return bad("max deliveries must be at least 1");
        }
        if self.visibility_timeout < Duration::from_millis(100) {
            return bad("the visibility timeout must be at least 100ms");
        }
        if self.block.is_zero() {
            return bad("the read block time must be positive (0 would block forever)");
        }
        if let Some(t) = self.handler_timeout
            && t >= self.visibility_timeout
        {
            tracing::warn!(
                timeout = ?t, visibility_timeout = ?self.visibility_timeout,
                "handler timeout is not below the visibility timeout: slow messages may be redelivered while still running"
            );
        }
        Ok(())
    }
}
