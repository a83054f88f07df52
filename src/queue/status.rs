//! The status phase, pure: the status a reconcile outcome means.

use k8s_openapi::jiff::Timestamp;

use crate::{
    api::{Broker, Condition, ConditionType as Type, Queue, QueueStatus, Reason, merge_conditions},
    problem::{Problem, not_degraded},
    redis::admin::Snapshot,
};

/// What a successful provisioning round saw.
#[derive(Clone, Debug, PartialEq)]
pub struct Provisioned {
    pub server: String,
    pub snapshot: Snapshot,
    pub producer_secret: String,
    pub consumer_secret: String,
}

pub fn build(
    queue: &Queue,
    outcome: &Result<Provisioned, Problem>,
    ingress_rate: Option<f64>,
    now: Timestamp,
) -> QueueStatus {
    let previous = queue.status.clone().unwrap_or_default();
    let generation = queue.metadata.generation;
    let mut conditions = match outcome {
        Ok(p) => vec![
            Condition::new(
                Type::Ready,
                true,
                Reason::Provisioned,
                format!("stream {} is ready on {}", queue.stream_key(), p.server),
            ),
            Condition::new(
                Type::BrokerReady,
                true,
                Reason::Connected,
                format!("connected to {}", p.server),
            ),
            not_degraded(),
        ],
        Err(problem) => {
            let [ready, degraded] = problem.ready_and_degraded();
            let broker = if problem.broker_ready {
                Condition::new(Type::BrokerReady, true, Reason::Connected, "the broker answers")
            } else {
                Condition::new(Type::BrokerReady, false, problem.reason, problem.message.clone())
            };
            vec![ready, broker, degraded]
        }
    };
    if let Broker::Managed(managed) = &queue.spec.broker {
        conditions.push(match &managed.storage {
            Some(s) => Condition::new(
                Type::Persistence,
                true,
                Reason::AppendOnlyFile,
                format!("append-only file on a {} PersistentVolumeClaim", s.size),
            ),
            None => Condition::new(
                Type::Persistence,
                false,
                Reason::EmptyDir,
                "no spec.broker.managed.storage: the data lives in an emptyDir and is lost with the pod; set storage to keep it",
            ),
        });
    }
    let snapshot = outcome.as_ref().ok().map(|p| &p.snapshot);
    QueueStatus {
        observed_generation: generation,
        conditions: merge_conditions(&previous.conditions, conditions, now, generation),
        broker: Some(match queue.spec.broker {
            Broker::External(_) => "external".into(),
            Broker::Managed(_) => "managed".into(),
        }),
        stream_key: Some(queue.stream_key()),
        dead_letter_stream_key: queue.dead_letter_stream_key(),
        // Keep the last known figures while Redis is away rather than blanking them.
        length: snapshot.map(|s| s.length).or(previous.length),
        dead_letter_length: snapshot
            .and_then(|s| s.dead_letter_length)
            .or(previous.dead_letter_length),
        ingress_rate: ingress_rate
            .map(|r| (r * 100.0).round() / 100.0)
            .or(previous.ingress_rate),
        producer_secret: outcome
            .as_ref()
            .ok()
            .map(|p| p.producer_secret.clone())
            .or(previous.producer_secret),
        consumer_secret: outcome
            .as_ref()
            .ok()
            .map(|p| p.consumer_secret.clone())
            .or(previous.consumer_secret),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue() -> Queue {
        crate::api::from_yaml(
            "apiVersion: streamq.dev/v1alpha1\nkind: Queue\nmetadata: {name: q, namespace: ns, generation: 3}\n\
             spec: {broker: {managed: {}}}",
        )
        .unwrap()
    }

    fn condition<'a>(s: &'a QueueStatus, t: &str) -> &'a Condition {
        s.conditions.iter().find(|c| c.type_ == t).unwrap()
    }

    #[test]
    fn a_fault_is_degraded_with_its_reason_and_message() {
        let problem = Problem::fault(Reason::SecretNotFound, "Secret ns/redis not found: create it");
        let s = build(&queue(), &Err(problem), None, Timestamp::UNIX_EPOCH);
        assert_eq!(s.observed_generation, Some(3));
        for t in ["Ready", "BrokerReady", "Degraded"] {
            assert_eq!(condition(&s, t).reason, "SecretNotFound", "{t}");
        }
        assert_eq!(condition(&s, "Degraded").status, crate::api::ConditionStatus::True);
        assert!(condition(&s, "Ready").message.contains("create it"));
    }

    #[test]
    fn managed_without_storage_warns_about_persistence() {
        let problem = Problem::waiting(Reason::WaitingForRedis, "starting");
        let s = build(&queue(), &Err(problem), None, Timestamp::UNIX_EPOCH);
        assert_eq!(condition(&s, "Persistence").reason, "EmptyDir");
        assert_eq!(condition(&s, "Degraded").status, crate::api::ConditionStatus::False);
    }
}
