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

/// Declares a `&'static str`-backed enum whose `as_str` is the wire value.
macro_rules! wire_names {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident),* $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name { $($(#[$vmeta])* $variant),* }

        impl $name {
            pub const fn as_str(self) -> &'static str {
                match self { $(Self::$variant => stringify!($variant)),* }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

wire_names! {
    /// The aspects streamq reports as conditions.
    ConditionType { Ready, BrokerReady, Degraded, Scaling, Persistence }
}

wire_names! {
    /// Every condition reason streamq writes: CamelCase, stable enough to alert on.
    Reason {
        // All is well.
        Provisioned, Connected, AsExpected, Running, Stable, Scaling,
        // Persistence of a managed Queue.
        AppendOnlyFile, EmptyDir,
        // Waiting, not at fault.
        WaitingForRedis, ReplicasNotReady, QueueNotReady, CleanupPending,
        // Faults the user fixes.
        InvalidSpec, InvalidObject, SecretNotFound, SecretKeyMissing, QueueNotFound, QueueDegraded, Conflict,
        // Faults of the broker.
        InvalidURL, AuthenticationFailed, Unreachable, UnsupportedVersion, WrongKeyType, NoPermission, RedisError,
        // Faults talking to Kubernetes.
        KubernetesError,
    }
}

impl Condition {
    pub fn new(type_: ConditionType, status: bool, reason: Reason, message: impl Into<String>) -> Self {
        Self {
            type_: type_.as_str().to_owned(),
            status: if status {
                ConditionStatus::True
            } else {
                ConditionStatus::False
            },
            reason: reason.as_str().to_owned(),
            message: message.into(),
            last_transition_time: Time(Timestamp::UNIX_EPOCH),
            observed_generation: None,
        }
    }
}

/// Whether `conditions` hold `type_` with status True.
pub fn is_true(conditions: &[Condition], type_: ConditionType) -> bool {
    find_condition(conditions, type_).is_some_and(|c| c.status == ConditionStatus::True)
}

/// The condition of `type_`, if present.
pub fn find_condition(conditions: &[Condition], type_: ConditionType) -> Option<&Condition> {
    conditions.iter().find(|c| c.type_ == type_.as_str())
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
        let first = merge_conditions(
            &[],
            vec![Condition::new(ConditionType::Ready, false, Reason::WaitingForRedis, "")],
            t0,
            Some(1),
        );
        assert_eq!(first[0].last_transition_time, Time(t0));

        let same = merge_conditions(
            &first,
            vec![Condition::new(ConditionType::Ready, false, Reason::Unreachable, "x")],
            t1,
            Some(2),
        );
        assert_eq!(same[0].last_transition_time, Time(t0), "same status keeps its time");
        assert_eq!(same[0].reason, "Unreachable");
        assert_eq!(same[0].observed_generation, Some(2));

        let flipped = merge_conditions(
            &same,
            vec![Condition::new(ConditionType::Ready, true, Reason::Provisioned, "")],
            t1,
            Some(2),
        );
        assert_eq!(flipped[0].last_transition_time, Time(t1));
    }
}
