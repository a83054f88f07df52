//! The sizing formula: how many replicas keep every message's wait under the target.
//!
//! ```text
//!   p        processing time of one message (s)       λ   arrival rate (msg/s, smoothed)
//!   c        concurrency per replica                   T   target latency (s)
//!   S        pod start-up (s)                          B   backlog now: lag + pending beyond concurrency
//!   μ_ready  = ready × c ÷ p        μ_asked = current × c ÷ p      (service rates, msg/s)
//!
//!   B_then   = B + max(0, λ − μ_ready)·S/2 + max(0, λ − μ_asked)·S/2
//!   D        = max(T − S − 1 s, T ÷ 4)
//!   slots    = max( λ·p·(1 + HEADROOM),  B_then·p ÷ D )
//!   replicas = ceil(slots ÷ c)
//! ```
//!
//! Why each part:
//! - `λ·p` is Little's law: the number of messages in service at once in the steady state.
//!   `HEADROOM` is spare capacity on top; it is 0 because the second term already acts as the
//!   headroom, and only where it is needed (see below).
//! - `B_then·p ÷ D` keeps the wait under the target. In a FIFO queue served at rate μ, the newest
//!   message behind a backlog B waits B ÷ μ; serving at least B ÷ D keeps that under D. It is a
//!   `max`, not a sum: a backlog is not a problem until waiting through it would take longer
//!   than D, so a small queue (Poisson noise, a replica count rounded down) costs nothing, and
//!   the queue may use the latency budget the user granted instead of replicas. When arrivals
//!   exceed service for long enough (a burst, a too-low processing-time estimate) the backlog
//!   grows past λ·D and this term takes over, at once.
//! - Capacity asked for now serves only after the pods start, `S` later, and until then the
//!   backlog keeps growing by what arrives minus what is served. Replicas already asked for but
//!   not yet ready start somewhere within that time, so the growth is counted half with the
//!   ready capacity and half with the asked one.
//! - `D`, the time allowed to drain, is what remains of the target once the new pods start (and
//!   one sampling interval to notice): the oldest waiting message has already used that much.
//!   When start-up eats (nearly) all of the target, the target cannot be met for a burst anyway;
//!   `T ÷ 4` then still drains fast without asking for unbounded capacity.
//!
//! The function is pure and separate from the state in [`super::Autoscaler`] so that it can be
//! tested and documented on its own.

use std::time::Duration;

/// Fraction of capacity kept spare in the steady state. None: the backlog term adds capacity as
/// soon as waiting would approach the drain time, and every percent of headroom is a percent of
/// replica-seconds. (Evaluated with `streamq simulate` on bench/scenarios: 5 % bought no SLO
/// attainment anywhere and cost 3–10 % replica-seconds.)
pub const HEADROOM: f64 = 0.0;
/// The shortest drain time, as a fraction of the target latency (see the module docs).
pub const MIN_DRAIN_FRACTION: f64 = 0.25;
/// The time to notice a change: the sampler's default interval.
pub const SAMPLING_ALLOWANCE: Duration = Duration::from_secs(1);
/// Guards `ceil` against floating-point dust: 4.000000001 slots are 4 slots.
const CEIL_EPSILON: f64 = 1e-6;

/// The inputs of one sizing.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SizingInput {
    pub arrival_rate: f64,
    pub processing_time: Duration,
    pub concurrency: u32,
    pub backlog: u64,
    pub ready_replicas: u32,
    pub current_replicas: u32,
    pub target_latency: Duration,
    pub pod_startup: Duration,
}

/// The result of one sizing, with its intermediate values for the decision's reason.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sizing {
    /// Replicas the formula asks for, before min/max and the scale-down rules.
    pub replicas: u64,
    /// Concurrent slots for the steady state (Little's law with headroom).
    pub steady_slots: f64,
    /// Concurrent slots for draining the projected backlog.
    pub drain_slots: f64,
    /// The backlog projected to when new pods start.
    pub projected_backlog: f64,
    /// The time allowed to drain it.
    pub drain_time: Duration,
}

/// The time allowed to drain a backlog: `max(T − S − 1 s, T ÷ 4)`.
pub fn drain_time(target_latency: Duration, pod_startup: Duration) -> Duration {
    let floor = target_latency.mul_f64(MIN_DRAIN_FRACTION);
    target_latency
        .saturating_sub(pod_startup)
        .saturating_sub(SAMPLING_ALLOWANCE)
        .max(floor)
}

pub fn size(input: &SizingInput) -> Sizing {
    let p = input.processing_time.as_secs_f64().max(1e-6);
    let c = f64::from(input.concurrency.max(1));
    let lambda = if input.arrival_rate.is_finite() {
        input.arrival_rate.max(0.0)
    } else {
        0.0
    };
    let startup = input.pod_startup.as_secs_f64();
    let served_ready = f64::from(input.ready_replicas) * c / p;
    let served_asked = f64::from(input.current_replicas) * c / p;
    let growth = (lambda - served_ready).max(0.0) * startup / 2.0 + (lambda - served_asked).max(0.0) * startup / 2.0;
    let projected_backlog = input.backlog as f64 + growth;
    let drain_time = drain_time(input.target_latency, input.pod_startup);
    let steady_slots = lambda * p * (1.0 + HEADROOM);
    let drain_slots = projected_backlog * p / drain_time.as_secs_f64().max(1e-3);
    let replicas = (steady_slots.max(drain_slots) / c - CEIL_EPSILON).ceil().max(0.0);
    // A backlog always needs someone to serve it, however small the numbers.
    let replicas = if input.backlog > 0 { replicas.max(1.0) } else { replicas };
    Sizing {
        replicas: if replicas >= u64::MAX as f64 {
            u64::MAX
        } else {
            replicas as u64
        },
        steady_slots,
        drain_slots,
        projected_backlog,
        drain_time,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input() -> SizingInput {
        SizingInput {
            arrival_rate: 100.0,
            processing_time: Duration::from_millis(200),
            concurrency: 1,
            backlog: 0,
            ready_replicas: 25,
            current_replicas: 25,
            target_latency: Duration::from_secs(30),
            pod_startup: Duration::from_secs(15),
        }
    }

    #[test]
    fn steady_state_is_littles_law() {
        // 100/s × 0.2 s = 20 busy slots.
        let s = size(&input());
        assert_eq!(s.replicas, 20);
        assert_eq!(s.drain_slots, 0.0);
    }

    #[test]
    fn concurrency_divides_the_slots() {
        let s = size(&SizingInput {
            concurrency: 3,
            ..input()
        });
        assert_eq!(s.replicas, 7); // 20 slots ÷ 3
    }

    #[test]
    fn a_backlog_that_can_wait_costs_nothing() {
        // D = 30 − 15 − 1 = 14 s. 1000 waiting behind 100/s served wait 10 s < 14 s.
        let s = size(&SizingInput {
            backlog: 1000,
            ..input()
        });
        assert_eq!(s.drain_time, Duration::from_secs(14));
        assert_eq!(s.replicas, 20);
    }

    #[test]
    fn a_backlog_that_would_wait_too_long_is_served_within_the_drain_time() {
        // 2800 waiting × 0.2 s ÷ 14 s = 40 slots: the newest waits 2800 ÷ 200/s = 14 s.
        let s = size(&SizingInput {
            backlog: 2800,
            ..input()
        });
        assert_eq!(s.replicas, 40);
    }

    #[test]
    fn backlog_growth_during_startup_is_counted() {
        // 5 ready, 5 asked: 100/s arrive, 25/s served, for 15 s: +1125 by the time pods start.
        let s = size(&SizingInput {
            ready_replicas: 5,
            current_replicas: 5,
            ..input()
        });
        assert_eq!(s.projected_backlog, 1125.0);
        // Replicas already asked for start earlier: half the growth.
        let s = size(&SizingInput {
            ready_replicas: 5,
            current_replicas: 40,
            ..input()
        });
        assert_eq!(s.projected_backlog, 562.5);
    }

    #[test]
    fn drain_time_has_a_floor_when_startup_exceeds_the_target() {
        assert_eq!(
            drain_time(Duration::from_secs(10), Duration::from_secs(60)),
            Duration::from_millis(2500)
        );
    }

    #[test]
    fn any_backlog_needs_a_replica() {
        let s = size(&SizingInput {
            arrival_rate: 0.0,
            backlog: 1,
            processing_time: Duration::from_millis(1),
            ..input()
        });
        assert_eq!(s.replicas, 1);
        let s = size(&SizingInput {
            arrival_rate: 0.0,
            ..input()
        });
        assert_eq!(s.replicas, 0);
    }
}
