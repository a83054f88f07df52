//! Redis key names and stream-entry field names that several parts of
//! streamq (operator, worker, producer) must agree on.

/// Field holding a message's payload.
pub const DATA_FIELD: &str = "data";

/// Fields a dead-lettered entry gains, beside its original fields.
pub const DLQ_ORIGINAL_ID: &str = "streamq.original-id";
pub const DLQ_DELIVERIES: &str = "streamq.deliveries";
pub const DLQ_GROUP: &str = "streamq.group";
/// The worker's last error for the entry: exit code or HTTP status, and the stderr tail.
pub const DLQ_ERROR: &str = "streamq.error";

/// The hash where workers of `group` account their work, one field pair per
/// consumer: `processed:<consumer>` (count) and `busy_us:<consumer>`
/// (cumulative microseconds spent in the handler). It shares the stream's
/// `{hash tag}` by being a suffix of the stream key, so it lives in the same
/// Redis Cluster slot.
pub fn stats_key(stream: &str, group: &str) -> String {
    format!("{stream}:stats:{group}")
}

pub fn stats_processed_field(consumer: &str) -> String {
    format!("processed:{consumer}")
}

pub fn stats_busy_field(consumer: &str) -> String {
    format!("busy_us:{consumer}")
}
