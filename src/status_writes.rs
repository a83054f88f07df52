//! When a freshly built status is worth writing to the apiserver.
//!
//! Every reconcile builds the whole status, but most rounds find nothing a
//! user would notice: an idle queue's figures stay at 0, a busy one's length
//! moves by a few entries. Writing each of those would cost the apiserver a
//! write per object per resync. The rule:
//!
//! - any change outside the figures (conditions, replicas, Secret names, scale
//!   reason, start-up, …) is written at once;
//! - a figure (length, lag, pending, rates, ages, processing time) is written at
//!   once when it changes by at least [`SIGNIFICANT`] of its size, or moves to or
//!   from zero;
//! - smaller changes of a figure are written once the last write is [`STALE_AFTER`] old.
//!
//! So an idle object is never written, and a busy one about once per
//! [`STALE_AFTER`] (at the next resync after it) unless something changes shape.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use serde::Serialize;
use serde_json::Value;
use tokio::sync::Mutex;

/// A relative change of a figure that is written at once.
pub const SIGNIFICANT: f64 = 0.10;
/// How old a written figure may get while it drifts by less than
/// [`SIGNIFICANT`]: the HorizontalPodAutoscaler's own sync period, so a busy
/// Consumer's figures are no staler than an HPA's.
pub const STALE_AFTER: Duration = Duration::from_secs(15);

/// The status fields that are figures, in their API (camelCase) names.
const FIGURES: &[&str] = &[
    "length",
    "deadLetterLength",
    "ingressRate",
    "lag",
    "pending",
    "oldestMessageAge",
    "arrivalRate",
    "completionRate",
    "processingTime",
];

/// What a comparison of two statuses found.
#[derive(Debug, PartialEq, Eq)]
pub enum Change {
    None,
    /// Only figures moved, each by less than [`SIGNIFICANT`].
    Drift,
    /// `field` changed in a way a user would see.
    Visible {
        field: String,
    },
}

/// Compares the status an object has with the one a round built.
pub fn change<S: Serialize + PartialEq>(previous: &S, next: &S) -> Change {
    // Most rounds build the status the object has: no need to look closer.
    if previous == next {
        return Change::None;
    }
    let (Ok(Value::Object(previous)), Ok(Value::Object(next))) =
        (serde_json::to_value(previous), serde_json::to_value(next))
    else {
        return Change::Visible { field: "status".into() };
    };
    let mut found = Change::None;
    for key in previous.keys().chain(next.keys()) {
        let (a, b) = (previous.get(key), next.get(key));
        if a == b {
            continue;
        }
        let visible = || Change::Visible { field: key.clone() };
        if !FIGURES.contains(&key.as_str()) {
            return visible();
        }
        match (a.and_then(figure), b.and_then(figure)) {
            (Some(a), Some(b)) if !significant(a, b) => found = Change::Drift,
            _ => return visible(),
        }
    }
    found
}

/// A figure as a number: counts and rates as they are, durations (`"1500ms"`, `"3s"`) in ms.
fn figure(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.parse::<crate::api::Duration>().ok().map(|d| d.as_millis() as f64),
        _ => None,
    }
}

fn significant(a: f64, b: f64) -> bool {
    if (a == 0.0) != (b == 0.0) {
        return true;
    }
    (a - b).abs() >= SIGNIFICANT * a.abs().max(b.abs())
}

/// When each object's status was last written, by uid: the memory the rule needs.
#[derive(Default)]
pub struct StatusWrites {
    written: Mutex<HashMap<String, Instant>>,
}

impl StatusWrites {
    /// Whether `next` should replace `previous` on object `uid` at `now`:
    /// if so, why (the field that changed, or stale figures).
    pub async fn due<S: Serialize + PartialEq>(
        &self,
        uid: &str,
        previous: &S,
        next: &S,
        now: Instant,
    ) -> Option<String> {
        match change(previous, next) {
            Change::None => None,
            Change::Visible { field } => Some(field),
            Change::Drift => self
                .written
                .lock()
                .await
                .get(uid)
                .is_none_or(|at| now.duration_since(*at) >= STALE_AFTER)
                .then(|| "figures (stale)".into()),
        }
    }

    /// Whether object `uid` was written less than `within` before `now`:
    /// its cached copy may not show that write yet.
    pub async fn written_within(&self, uid: &str, within: Duration, now: Instant) -> bool {
        let written = self.written.lock().await;
        written.get(uid).is_some_and(|at| now.duration_since(*at) < within)
    }

    pub async fn wrote(&self, uid: &str, now: Instant) {
        self.written.lock().await.insert(uid.to_owned(), now);
    }

    /// Forgets an object that is gone.
    pub async fn forget(&self, uid: &str) {
        self.written.lock().await.remove(uid);
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn visible(field: &str) -> Change {
        Change::Visible { field: field.into() }
    }

    #[test]
    fn identical_statuses_need_no_write() {
        let s = json!({"length": 0, "conditions": [{"type": "Ready", "status": "True"}]});
        assert_eq!(change(&s, &s.clone()), Change::None);
    }

    #[test]
    fn a_condition_or_replica_change_is_visible() {
        let a = json!({"desiredReplicas": 1, "lag": 10});
        assert_eq!(
            change(&a, &json!({"desiredReplicas": 2, "lag": 10})),
            visible("desiredReplicas")
        );
        let c = json!({"conditions": [{"type": "Ready", "status": "False"}]});
        assert_eq!(
            change(&c, &json!({"conditions": [{"type": "Ready", "status": "True"}]})),
            visible("conditions")
        );
    }

    #[test]
    fn a_small_drift_of_a_figure_is_drift_and_a_large_one_visible() {
        let a = json!({"length": 1000, "ingressRate": 50.0, "processingTime": "200ms"});
        assert_eq!(
            change(
                &a,
                &json!({"length": 1040, "ingressRate": 50.0, "processingTime": "200ms"})
            ),
            Change::Drift
        );
        assert_eq!(
            change(
                &a,
                &json!({"length": 1000, "ingressRate": 51.3, "processingTime": "210ms"})
            ),
            Change::Drift
        );
        assert_eq!(
            change(
                &a,
                &json!({"length": 1200, "ingressRate": 50.0, "processingTime": "200ms"})
            ),
            visible("length")
        );
        assert_eq!(
            change(
                &a,
                &json!({"length": 1000, "ingressRate": 50.0, "processingTime": "1s"})
            ),
            visible("processingTime")
        );
    }

    #[test]
    fn to_or_from_zero_is_visible() {
        assert_eq!(change(&json!({"lag": 0}), &json!({"lag": 1})), visible("lag"));
        assert_eq!(
            change(&json!({"pending": 3}), &json!({"pending": 0})),
            visible("pending")
        );
    }

    #[test]
    fn a_figure_appearing_is_visible() {
        assert_eq!(change(&json!({}), &json!({"length": 5})), visible("length"));
    }

    #[tokio::test]
    async fn drift_is_written_once_the_last_write_is_stale() {
        let writes = StatusWrites::default();
        let (a, b) = (json!({"length": 1000}), json!({"length": 1001}));
        let t0 = Instant::now();
        assert!(
            writes.due("u", &a, &b, t0).await.is_some(),
            "never written: the first drift is written"
        );
        writes.wrote("u", t0).await;
        assert_eq!(writes.due("u", &a, &b, t0 + Duration::from_secs(10)).await, None);
        assert!(writes.due("u", &a, &b, t0 + STALE_AFTER).await.is_some());
        assert_eq!(
            writes.due("u", &a, &a.clone(), t0 + STALE_AFTER).await,
            None,
            "no change: no write"
        );
    }
}
