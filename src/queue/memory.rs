//! What the Queue controller remembers about each Queue between resyncs.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use tokio::sync::Mutex;

/// By Queue uid.
#[derive(Default)]
pub struct QueueMemory(Mutex<HashMap<String, Remembered>>);

#[derive(Default, Clone)]
pub struct Remembered {
    /// `entries-added` at the last sample, for the ingress rate.
    last_added: Option<(u64, Instant)>,
    ingress_rate: Option<f64>,
    /// Consecutive failed rounds, for the back-off.
    failures: u32,
    cleanup_failing_since: Option<Instant>,
    /// Provisioned at least once: anything missing later is drift, and is reported as such.
    provisioned: bool,
    /// The ACL users as last set: a digest of what they were set from, and when.
    users_set: Option<([u8; 32], Instant)>,
}

/// How often ACL users that exist are set again anyway, which puts back rules
/// edited in place by hand. A missing user is recreated at the next resync
/// whatever this says, and new passwords or keys are set at once; only an
/// in-place edit waits this long. Setting both users of 1,000 Queues every
/// 10 s resync was 200 `ACL SETUSER`s a second, 27 µs each on Redis 7.0.15.
pub const USERS_REFRESH: Duration = Duration::from_secs(300);

/// The ingress rate is smoothed with a time-based EWMA (time constant 30 s):
/// a status column should move with the traffic, not with every sample's
/// Poisson noise, and the weight must not depend on how often we sample.
const RATE_TIME_CONSTANT_S: f64 = 30.0;

fn smooth_rate(previous: Option<f64>, sample: f64, dt: f64) -> f64 {
    match previous {
        None => sample,
        Some(prev) => {
            let alpha = 1.0 - (-dt / RATE_TIME_CONSTANT_S).exp();
            prev + alpha * (sample - prev)
        }
    }
}

impl QueueMemory {
    async fn with<T>(&self, uid: &str, f: impl FnOnce(&mut Remembered) -> T) -> T {
        f(self.0.lock().await.entry(uid.to_owned()).or_default())
    }

    pub async fn forget(&self, uid: &str) {
        self.0.lock().await.remove(uid);
    }

    /// Folds the stream's `entries-added` counter into the smoothed ingress rate.
    pub async fn ingress_rate(&self, uid: &str, entries_added: u64) -> f64 {
        self.with(uid, |m| {
            let now = Instant::now();
            if let Some((added, at)) = m.last_added {
                let dt = now.duration_since(at).as_secs_f64();
                if dt > 0.0 {
                    let sample = entries_added.saturating_sub(added) as f64 / dt;
                    m.ingress_rate = Some(smooth_rate(m.ingress_rate, sample, dt));
                }
            }
            m.last_added = Some((entries_added, now));
            m.ingress_rate.unwrap_or(0.0)
        })
        .await
    }

    pub async fn succeeded(&self, uid: &str) {
        self.with(uid, |m| {
            m.failures = 0;
            m.provisioned = true;
        })
        .await;
    }

    /// Counts a failed round; returns the delay before the next: 1 s, 2 s,
    /// 4 s… up to `resync`, so a fixed fault recovers quickly and a lasting
    /// one costs little.
    pub async fn failed(&self, uid: &str, resync: Duration) -> Duration {
        let failures = self
            .with(uid, |m| {
                m.failures = m.failures.saturating_add(1);
                m.failures
            })
            .await;
        Duration::from_secs(1 << failures.min(6)).min(resync)
    }

    /// Whether the round at `now` should set the existing ACL users (see [`USERS_REFRESH`]).
    pub async fn users_due(&self, uid: &str, digest: &[u8; 32], now: Instant) -> bool {
        self.with(uid, |m| {
            m.users_set
                .is_none_or(|(d, at)| &d != digest || now.duration_since(at) >= USERS_REFRESH)
        })
        .await
    }

    pub async fn users_set(&self, uid: &str, digest: [u8; 32], at: Instant) {
        self.with(uid, |m| m.users_set = Some((digest, at))).await;
    }

    pub async fn provisioned(&self, uid: &str) -> bool {
        self.with(uid, |m| m.provisioned).await
    }

    /// Since when cleanup has been failing (starting now if it was not).
    pub async fn cleanup_failing_since(&self, uid: &str) -> Instant {
        self.with(uid, |m| *m.cleanup_failing_since.get_or_insert_with(Instant::now))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn existing_users_are_set_again_on_a_change_or_once_the_refresh_is_due() {
        let memory = QueueMemory::default();
        let (a, b, t0) = ([1; 32], [2; 32], Instant::now());
        assert!(memory.users_due("q", &a, t0).await, "never set: due");
        memory.users_set("q", a, t0).await;
        assert!(!memory.users_due("q", &a, t0 + Duration::from_secs(10)).await);
        assert!(
            memory.users_due("q", &b, t0 + Duration::from_secs(10)).await,
            "new passwords or keys: due at once"
        );
        assert!(memory.users_due("q", &a, t0 + USERS_REFRESH).await);
    }
}
