//! The worker's own Prometheus metrics, served by `streamq worker --metrics-addr`.

use std::sync::atomic::Ordering;

use super::Counters;

/// The worker's counters in the Prometheus text format, under `streamq_worker_`.
pub fn encode_metrics(c: &Counters) -> String {
    use prometheus_client::{
        encoding::text::encode,
        metrics::{counter::ConstCounter, gauge::ConstGauge},
        registry::Registry,
    };
    let mut registry = Registry::with_prefix("streamq_worker");
    let counter = |a: &std::sync::atomic::AtomicU64| ConstCounter::new(a.load(Ordering::Relaxed));
    registry.register("acked", "Messages handled successfully and acked", counter(&c.acked));
    registry.register("failed", "Handler failures and timeouts", counter(&c.failed));
    registry.register(
        "dead_lettered",
        "Messages moved to the dead-letter stream",
        counter(&c.dead_lettered),
    );
    registry.register(
        "trimmed",
        "Pending messages found trimmed from the stream",
        counter(&c.trimmed),
    );
    registry.register(
        "reclaimed",
        "Messages taken over from idle consumers",
        counter(&c.reclaimed),
    );
    registry.register(
        "in_flight",
        "Messages claimed and not yet settled",
        ConstGauge::new(c.in_flight.load(Ordering::Relaxed) as i64),
    );
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut out, &registry);
    out
}
