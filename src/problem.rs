//! Why an object is not (yet) usable, as its user should read it, and the
//! one place the Ready and Degraded conditions are derived from it.

use crate::{
    api::{Condition, ConditionType, Reason},
    redis,
};

#[derive(Clone, Debug, PartialEq)]
pub struct Problem {
    pub reason: Reason,
    /// What happened and what to do about it. Never holds a credential.
    pub message: String,
    /// A fault (Degraded=True), or only a step still under way (e.g. the managed Redis starting).
    pub fault: bool,
    /// Whether the broker itself answered; the problem is then further in.
    pub broker_ready: bool,
}

impl Problem {
    pub fn fault(reason: Reason, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
            fault: true,
            broker_ready: false,
        }
    }

    /// A step still under way: not Ready, but not Degraded either.
    pub fn waiting(reason: Reason, message: impl Into<String>) -> Self {
        Self {
            fault: false,
            ..Self::fault(reason, message)
        }
    }

    /// A problem found after the broker answered.
    pub fn past_the_broker(self) -> Self {
        Self {
            broker_ready: true,
            ..self
        }
    }

    /// A failed Kubernetes call: `action` (reading, applying…) on `name`.
    pub fn kube(action: &str, name: &str, err: kube::Error) -> Self {
        Self::fault(Reason::KubernetesError, format!("{action} {name}: {err}"))
    }

    pub fn redis(err: &redis::Error) -> Self {
        Self::fault(redis_reason(err), err.to_string())
    }

    /// `Ready=False` with this problem, and `Degraded` as its fault says.
    pub fn ready_and_degraded(&self) -> [Condition; 2] {
        [
            Condition::new(ConditionType::Ready, false, self.reason, self.message.clone()),
            if self.fault {
                Condition::new(ConditionType::Degraded, true, self.reason, self.message.clone())
            } else {
                not_degraded()
            },
        ]
    }
}

/// `Degraded=False`: nothing is at fault.
pub fn not_degraded() -> Condition {
    Condition::new(ConditionType::Degraded, false, Reason::AsExpected, "")
}

fn redis_reason(err: &redis::Error) -> Reason {
    use redis::Error as E;
    match err {
        E::InvalidUrl(_) => Reason::InvalidURL,
        E::Authentication { .. } => Reason::AuthenticationFailed,
        E::Unreachable { .. } => Reason::Unreachable,
        E::UnsupportedVersion { .. } => Reason::UnsupportedVersion,
        E::WrongType { .. } => Reason::WrongKeyType,
        E::NoPermission { .. } => Reason::NoPermission,
        E::NoGroup { .. } | E::NoStream { .. } | E::Command { .. } | E::Reply { .. } => Reason::RedisError,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ConditionStatus;

    #[test]
    fn a_fault_is_degraded_and_a_wait_is_not() {
        let [ready, degraded] = Problem::fault(Reason::Conflict, "taken").ready_and_degraded();
        assert_eq!(
            (ready.status, ready.reason.as_str()),
            (ConditionStatus::False, "Conflict")
        );
        assert_eq!(
            (degraded.status, degraded.reason.as_str()),
            (ConditionStatus::True, "Conflict")
        );
        let [_, degraded] = Problem::waiting(Reason::WaitingForRedis, "starting").ready_and_degraded();
        assert_eq!(
            (degraded.status, degraded.reason.as_str()),
            (ConditionStatus::False, "AsExpected")
        );
    }
}
