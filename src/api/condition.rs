//! Status conditions, shaped like `metav1.Condition` so `kubectl wait
//! --for=condition=Ready` and every dashboard that knows conditions work.

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One aspect of the object's current state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// The aspect: Ready, BrokerReady, Degraded, Scaling, Persistence.
    #[serde(rename = "type")]
    pub type_: String,
    /// True, False or Unknown.
    pub status: ConditionStatus,
    /// A CamelCase word for the cause, stable enough to alert on.
    pub reason: String,
    /// What happened, and what to do about it, for a human.
    #[serde(default)]
    pub message: String,
    /// When status last changed.
    pub last_transition_time: Time,
    /// The metadata.generation this condition was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ConditionStatus {
    True,
    False,
    Unknown,
}

impl Condition {
    pub fn new(type_: &str, status: bool, reason: &str, message: impl Into<String>) -> Self {
        Self {
            type_: type_.to_owned(),
            status: if status {
                ConditionStatus::True
            } else {
                ConditionStatus::False
            },
            reason: reason.to_owned(),
            message: message.into(),
            last_transition_time: Time(Timestamp::UNIX_EPOCH),
            observed_generation: None,
        }
    }
}

/// Merges freshly computed conditions into the previous ones. A condition
/// keeps its old `lastTransitionTime` unless its status changed, so the
/// time means what Kubernetes says it means.
pub fn merge_conditions(
    previous: &[Condition],
    fresh: Vec<Condition>,
    now: Timestamp,
    generation: Option<i64>,
) -> Vec<Condition> {
    fresh
        .into_iter()
        .map(|mut c| {
            c.observed_generation = generation;
            c.last_transition_time = previous
                .iter()
                .find(|p| p.type_ == c.type_ && p.status == c.status)
                .map_or(Time(now), |p| p.last_transition_time.clone());
            c
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_time_moves_only_when_status_changes() {
        let t0 = Timestamp::from_second(1_000).unwrap();
        let t1 = Timestamp::from_second(2_000).unwrap();
        let first = merge_conditions(&[], vec![Condition::new("Ready", false, "A", "")], t0, Some(1));
        assert_eq!(first[0].last_transition_time, Time(t0));

        let same = merge_conditions(&first, vec![Condition::new("Ready", false, "B", "x")], t1, Some(2));
        assert_eq!(same[0].last_transition_time, Time(t0), "same status keeps its time");
        assert_eq!(same[0].reason, "B");
        assert_eq!(same[0].observed_generation, Some(2));

        let flipped = merge_conditions(&same, vec![Condition::new("Ready", true, "C", "")], t1, Some(2));
        assert_eq!(flipped[0].last_transition_time, Time(t1));
    }
}
