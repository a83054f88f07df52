//! What a Consumer round reads first: its Queue, which must be Ready, and the
//! facts about it the worker pods need.

use kube::{ResourceExt, runtime::reflector::ObjectRef};

use super::build::QueueFacts;
use crate::{
    api::{ConditionStatus, ConditionType, Consumer, Queue, Reason, find_condition, is_true},
    guard::{Valid, ValidStore},
    problem::Problem,
};

/// The Consumer's Queue (from the watch cache), Ready, with the facts the Deployment is built from.
pub fn queue(consumer: &Consumer, queues: &ValidStore<Queue>) -> Result<(Valid<Queue>, QueueFacts), Problem> {
    let ns = consumer.namespace().unwrap_or_default();
    let name = &consumer.spec.queue_ref.name;
    let queue = queues.get(&ObjectRef::new(name).within(&ns)).ok_or_else(|| {
        Problem::fault(
            Reason::QueueNotFound,
            format!(
                "Queue {ns}/{name} (spec.queueRef) does not exist: create it, or point queueRef at an existing Queue"
            ),
        )
    })?;
    let facts = facts(&queue)?;
    Ok((queue, facts))
}

/// The facts of a Ready Queue; why the Consumer must wait otherwise.
pub fn facts(queue: &Queue) -> Result<QueueFacts, Problem> {
    let status = queue.status.as_ref();
    let ready = status.is_some_and(|s| is_true(&s.conditions, ConditionType::Ready));
    let (Some(consumer_secret), true) = (status.and_then(|s| s.consumer_secret.clone()), ready) else {
        return Err(queue_not_ready(queue));
    };
    Ok(QueueFacts {
        stream: queue.stream_key(),
        dead_letter: queue.dead_letter_stream_key(),
        consumer_secret,
        max_deliveries: queue.spec.delivery.max_deliveries,
        visibility_timeout_ms: queue.spec.delivery.visibility_timeout.as_millis(),
    })
}

/// Why the Consumer cannot run while its Queue is not Ready. A Queue at
/// fault (e.g. its Redis unreachable) is a fault here too, so that both show
/// Degraded with the cause; a Queue still being set up is only a wait.
fn queue_not_ready(queue: &Queue) -> Problem {
    let name = queue.name_any();
    let conditions = queue.status.as_ref().map_or(&[][..], |s| &s.conditions[..]);
    let degraded = find_condition(conditions, ConditionType::Degraded).filter(|c| c.status == ConditionStatus::True);
    if let Some(d) = degraded {
        return Problem::fault(
            Reason::QueueDegraded,
            format!(
                "Queue {name} is degraded ({}: {}); replicas are held until it recovers",
                d.reason, d.message
            ),
        );
    }
    let why = find_condition(conditions, ConditionType::Ready)
        .map(|c| format!(" ({}: {})", c.reason, c.message))
        .unwrap_or_default();
    Problem::waiting(
        Reason::QueueNotReady,
        format!("waiting for Queue {name} to become Ready{why}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(status: &str) -> Queue {
        crate::api::from_yaml(&format!(
            "apiVersion: streamq.dev/v1alpha1\nkind: Queue\nmetadata: {{name: jobs, namespace: ns}}\n\
             spec: {{broker: {{managed: {{}}}}}}\nstatus: {status}"
        ))
        .unwrap()
    }

    #[test]
    fn a_degraded_queue_degrades_its_consumers_with_the_cause() {
        let q = queue(
            "{conditions: [{type: Ready, status: 'False', reason: Unreachable, message: 'cannot reach Redis at 10.0.0.1:6379: timed out', lastTransitionTime: '2026-01-01T00:00:00Z'}, \
             {type: Degraded, status: 'True', reason: Unreachable, message: 'cannot reach Redis at 10.0.0.1:6379: timed out', lastTransitionTime: '2026-01-01T00:00:00Z'}]}",
        );
        let p = facts(&q).unwrap_err();
        assert!(p.fault);
        assert_eq!(p.reason, Reason::QueueDegraded);
        assert!(
            p.message.contains("Queue jobs") && p.message.contains("cannot reach Redis at 10.0.0.1:6379"),
            "{}",
            p.message
        );
    }

    #[test]
    fn a_queue_still_starting_is_only_a_wait() {
        let q = queue(
            "{conditions: [{type: Ready, status: 'False', reason: WaitingForRedis, message: starting, lastTransitionTime: '2026-01-01T00:00:00Z'}, \
             {type: Degraded, status: 'False', reason: AsExpected, message: '', lastTransitionTime: '2026-01-01T00:00:00Z'}]}",
        );
        let p = facts(&q).unwrap_err();
        assert!(!p.fault);
        assert_eq!(p.reason, Reason::QueueNotReady);
        assert!(p.message.contains("WaitingForRedis: starting"), "{}", p.message);
    }
}
