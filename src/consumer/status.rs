//! The status phase, pure: the conditions and figures a round's outcome means.

use k8s_openapi::jiff::Timestamp;

use super::{apply::Workload, build, decisions::LastScale};
use crate::{
    api::{Condition, ConditionType as Type, Consumer, ConsumerStatus, Reason, merge_conditions},
    problem::{Problem, not_degraded},
};

pub fn conditions(outcome: &Result<Workload, Problem>) -> Vec<Condition> {
    match outcome {
        Ok(w) => {
            let ready = w.ready >= w.desired;
            let scaling = w.replicas != w.desired;
            vec![
                Condition::new(
                    Type::Ready,
                    ready,
                    if ready {
                        Reason::Running
                    } else {
                        Reason::ReplicasNotReady
                    },
                    format!("{}/{} replicas ready", w.ready, w.desired),
                ),
                Condition::new(
                    Type::Scaling,
                    scaling,
                    if scaling { Reason::Scaling } else { Reason::Stable },
                    format!("{} → {} replicas", w.replicas, w.desired),
                ),
                not_degraded(),
            ]
        }
        Err(p) => {
            let [ready, degraded] = p.ready_and_degraded();
            let scaling = Condition::new(Type::Scaling, false, p.reason, "not scaling until this is resolved");
            vec![ready, scaling, degraded]
        }
    }
}

/// The status: this round's workload over `observed` (the sampler's figures
/// on top of the previous status), which it keeps where the round failed.
pub fn build(
    consumer: &Consumer,
    outcome: &Result<Workload, Problem>,
    last_scale: Option<LastScale>,
    observed: ConsumerStatus,
    now: Timestamp,
) -> ConsumerStatus {
    let previous = consumer.status.clone().unwrap_or_default();
    let generation = consumer.metadata.generation;
    let workload = outcome.as_ref().ok();
    ConsumerStatus {
        observed_generation: generation,
        conditions: merge_conditions(&previous.conditions, conditions(outcome), now, generation),
        selector: Some(build::selector(consumer)),
        replicas: workload.map(|w| w.replicas).or(previous.replicas),
        ready_replicas: workload.map(|w| w.ready).or(previous.ready_replicas),
        desired_replicas: workload.map(|w| w.desired).or(previous.desired_replicas),
        last_scale_time: last_scale
            .as_ref()
            .map(|l| l.time.clone())
            .or(previous.last_scale_time.clone()),
        last_scale_reason: last_scale.map(|l| l.reason).or(previous.last_scale_reason.clone()),
        ..observed
    }
}

/// The status fields the sampler's figures fill (see
/// `Decisions::observed_status`), alone: what the sampler compares to tell
/// whether a round would write them.
pub fn figures(status: Option<&ConsumerStatus>) -> ConsumerStatus {
    let Some(s) = status else {
        return ConsumerStatus::default();
    };
    ConsumerStatus {
        lag: s.lag,
        lag_source: s.lag_source.clone(),
        pending: s.pending,
        oldest_message_age: s.oldest_message_age.clone(),
        arrival_rate: s.arrival_rate,
        completion_rate: s.completion_rate,
        processing_time: s.processing_time.clone(),
        pod_startup: s.pod_startup.clone(),
        ..ConsumerStatus::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ConditionStatus;

    #[test]
    fn a_queue_fault_holds_scaling_and_degrades() {
        let p = Problem::fault(Reason::QueueDegraded, "Queue q is degraded");
        let c = conditions(&Err(p));
        let by = |t: Type| c.iter().find(|c| c.type_ == t.as_str()).unwrap();
        assert_eq!(by(Type::Ready).status, ConditionStatus::False);
        assert_eq!(by(Type::Scaling).reason, "QueueDegraded");
        assert_eq!(by(Type::Degraded).status, ConditionStatus::True);
    }

    #[test]
    fn replicas_short_of_desired_are_not_ready_and_scaling() {
        let w = Workload {
            desired: 3,
            replicas: 2,
            ready: 1,
            scaled: None,
        };
        let c = conditions(&Ok(w));
        assert_eq!(
            (c[0].status, c[0].reason.as_str()),
            (ConditionStatus::False, "ReplicasNotReady")
        );
        assert_eq!((c[1].status, c[1].reason.as_str()), (ConditionStatus::True, "Scaling"));
    }
}
