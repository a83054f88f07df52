//! The Consumer controller: validate → build → apply → status.

pub mod build;
pub mod sampler;

use std::{sync::Arc, time::Duration};

use futures::StreamExt;
use std::collections::BTreeMap;

use k8s_openapi::{
    api::{apps::v1::Deployment, core::v1::Pod},
    jiff::Timestamp,
};
use kube::{
    Api, ResourceExt,
    api::{ListParams, PartialObjectMeta, Patch, PatchParams},
    core::DeserializeGuard,
    runtime::{
        Controller,
        controller::Action,
        events::EventType,
        reflector::{ObjectRef, Store},
        watcher,
    },
};

use self::build::QueueFacts;
use crate::{
    api::{Condition, Consumer, ConsumerStatus, Queue, StartFrom, merge_conditions},
    context::Context,
    guard::ValidStore,
    k8s::{self, FIELD_MANAGER},
    queue::status::Problem,
};

const CONTROLLER: &str = "consumer";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("writing Consumer status: {0}")]
    Status(#[source] kube::Error),
}

impl Error {
    fn metric_label(&self) -> &'static str {
        match self {
            Self::Status(_) => "status",
        }
    }
}

/// What the workload looks like after a successful round.
struct Workload {
    desired: i32,
    replicas: i32,
    ready: i32,
    /// Set when this round changed the replica count: why.
    scaled: Option<String>,
}

pub async fn reconcile(guard: Arc<DeserializeGuard<Consumer>>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile_started(CONTROLLER);
    let consumer = match &guard.0 {
        Ok(consumer) => Arc::new(consumer.clone()),
        // Unreadable (see crate::guard): reported on itself; the others go on.
        Err(invalid) => {
            crate::guard::report(&ctx, guard.as_ref(), invalid)
                .await
                .map_err(Error::Status)?;
            return Ok(Action::await_change());
        }
    };
    let outcome = workload(&consumer, &ctx).await;
    let previous = consumer.status.clone().unwrap_or_default();
    let generation = consumer.metadata.generation;
    let conditions = match &outcome {
        Ok(w) => vec![
            Condition::new(
                "Ready",
                w.ready >= w.desired,
                if w.ready >= w.desired {
                    "Running"
                } else {
                    "ReplicasNotReady"
                },
                format!("{}/{} replicas ready", w.ready, w.desired),
            ),
            Condition::new(
                "Scaling",
                w.replicas != w.desired,
                if w.replicas != w.desired { "Scaling" } else { "Stable" },
                format!("{} → {} replicas", w.replicas, w.desired),
            ),
            Condition::new("Degraded", false, "AsExpected", ""),
        ],
        Err(p) => vec![
            Condition::new("Ready", false, p.reason, p.message.clone()),
            Condition::new("Scaling", false, p.reason, "not scaling until this is resolved"),
            if p.fault {
                Condition::new("Degraded", true, p.reason, p.message.clone())
            } else {
                Condition::new("Degraded", false, "AsExpected", "")
            },
        ],
    };
    let uid = consumer.uid().unwrap_or_default();
    if let Some(why) = outcome.as_ref().ok().and_then(|w| w.scaled.clone()) {
        ctx.decisions.record_scale(&uid, why).await;
    }
    let last_scale = ctx.decisions.last_scale(&uid).await;
    let status = ConsumerStatus {
        observed_generation: generation,
        conditions: merge_conditions(&previous.conditions, conditions, Timestamp::now(), generation),
        selector: Some(build::selector(&consumer)),
        replicas: outcome.as_ref().ok().map(|w| w.replicas).or(previous.replicas),
        ready_replicas: outcome.as_ref().ok().map(|w| w.ready).or(previous.ready_replicas),
        desired_replicas: outcome.as_ref().ok().map(|w| w.desired).or(previous.desired_replicas),
        last_scale_time: last_scale
            .as_ref()
            .map(|l| l.time.clone())
            .or(previous.last_scale_time.clone()),
        last_scale_reason: last_scale.map(|l| l.reason).or(previous.last_scale_reason.clone()),
        ..ctx
            .decisions
            .observed_status(&consumer.uid().unwrap_or_default(), previous)
            .await
    };
    k8s::apply_status(&ctx.client, consumer.as_ref(), &status)
        .await
        .map_err(Error::Status)?;
    Ok(match outcome {
        Ok(_) => Action::requeue(ctx.resync),
        Err(p) => {
            tracing::info!(consumer = %consumer.name_any(), reason = p.reason, message = %p.message, "consumer not ready");
            Action::requeue(Duration::from_secs(2).min(ctx.resync))
        }
    })
}

async fn workload(consumer: &Consumer, ctx: &Context) -> Result<Workload, Problem> {
    let ns = consumer.namespace().unwrap_or_default();
    if consumer
        .spec
        .template
        .spec
        .as_ref()
        .is_none_or(|s| s.containers.is_empty())
    {
        return Err(Problem::fault(
            "InvalidSpec",
            "spec.template.spec.containers is empty: give the worker pods at least one container",
        ));
    }
    let queue_name = &consumer.spec.queue_ref.name;
    let queue = Api::<Queue>::namespaced(ctx.client.clone(), &ns)
        .get_opt(queue_name)
        .await
        .map_err(|e| Problem::fault("KubernetesError", format!("reading Queue {queue_name}: {e}")))?
        .ok_or_else(|| Problem::fault("QueueNotFound", format!("Queue {ns}/{queue_name} (spec.queueRef) does not exist: create it, or point queueRef at an existing Queue")))?;
    let ready = queue
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"));
    let (Some(consumer_secret), Some(true)) = (
        queue.status.as_ref().and_then(|s| s.consumer_secret.clone()),
        ready.map(|c| c.status == crate::api::ConditionStatus::True),
    ) else {
        return Err(queue_not_ready(&queue));
    };
    let facts = QueueFacts {
        stream: queue.stream_key(),
        dead_letter: queue.dead_letter_stream_key(),
        consumer_secret,
        max_deliveries: queue.spec.delivery.max_deliveries,
        visibility_timeout_ms: queue.spec.delivery.visibility_timeout.as_millis(),
    };

    // The group exists before any worker starts (XGROUP CREATE is idempotent here).
    let mut admin = crate::queue::admin_for(&queue, ctx).await?;
    let from = match consumer.spec.start_from {
        StartFrom::Earliest => "0",
        StartFrom::Latest => "$",
    };
    match admin.ensure_group(&facts.stream, &consumer.group(), from).await {
        Ok(true) => {
            let note = format!(
                "consumer group {} created on {} from {from}",
                consumer.group(),
                facts.stream
            );
            k8s::publish_event(
                &ctx.recorder,
                consumer,
                EventType::Normal,
                "GroupCreated",
                "Provision",
                note,
            )
            .await;
        }
        Ok(false) => {}
        Err(e) => {
            crate::queue::forget_admin(&queue, ctx).await;
            return Err(Problem::fault(e.reason(), e.to_string()));
        }
    }

    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let selector = build::selector(consumer);
    let pod_list = pods
        .list_metadata(&ListParams::default().labels(&selector))
        .await
        .map_err(|e| Problem::fault("KubernetesError", format!("listing pods {selector}: {e}")))?;
    let pod_names: Vec<String> = pod_list.items.iter().map(|p| p.name_any()).collect();
    let consumer_pending = ctx
        .decisions
        .consumer_pending(&consumer.uid().unwrap_or_default())
        .await;
    tidy_group(
        consumer,
        ctx,
        &mut admin,
        &facts.stream,
        &pod_names,
        consumer_pending.as_ref(),
    )
    .await;
    let name = consumer.name_any();
    let existing = deployments
        .get_opt(&name)
        .await
        .map_err(|e| Problem::fault("KubernetesError", format!("reading Deployment {name}: {e}")))?;
    let current = existing.as_ref().and_then(|d| d.spec.as_ref()?.replicas);
    let decided = ctx.decisions.replicas(&consumer.uid().unwrap_or_default()).await;
    let desired = match &consumer.spec.autoscaling {
        None => consumer.spec.replicas.unwrap_or(1),
        // The sampler's latest decision; until there is one (or while it
        // holds on missing data) keep what runs, or start at the minimum.
        Some(a) => decided
            .or(current)
            .unwrap_or(a.min_replicas)
            .clamp(a.min_replicas, a.max_replicas.max(a.min_replicas)),
    };
    if current.is_some_and(|c| desired < c) {
        protect_busy_pods(&pods, &pod_list.items, consumer_pending.as_ref()).await?;
    }
    let applied = deployments
        .patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(build::deployment(consumer, &facts, desired)),
        )
        .await
        .map_err(|e| Problem::fault("KubernetesError", format!("applying Deployment {name}: {e}")))?;
    let mut scaled = None;
    if current != Some(desired) {
        let why = match &consumer.spec.autoscaling {
            None => "spec.replicas".to_owned(),
            Some(_) => ctx
                .decisions
                .reason(&consumer.uid().unwrap_or_default())
                .await
                .unwrap_or_else(|| "minReplicas".into()),
        };
        if let Some(current) = current {
            let note = format!("replicas {current} → {desired}: {why}");
            k8s::publish_event(&ctx.recorder, consumer, EventType::Normal, "Scaled", "Scale", note).await;
        }
        scaled = Some(why);
    }
    let status = applied.status.unwrap_or_default();
    Ok(Workload {
        desired,
        replicas: status.replicas.unwrap_or(0),
        ready: status.ready_replicas.unwrap_or(0),
        scaled,
    })
}

/// Why the Consumer cannot run while its Queue is not Ready. A Queue at
/// fault (e.g. its Redis unreachable) is a fault here too, so that both show
/// Degraded with the cause; a Queue still being set up is only a wait.
fn queue_not_ready(queue: &Queue) -> Problem {
    let name = queue.name_any();
    let conditions = queue.status.as_ref().map_or(&[][..], |s| &s.conditions[..]);
    let degraded = conditions
        .iter()
        .find(|c| c.type_ == "Degraded" && c.status == crate::api::ConditionStatus::True);
    if let Some(d) = degraded {
        return Problem::fault(
            "QueueDegraded",
            format!(
                "Queue {name} is degraded ({}: {}); replicas are held until it recovers",
                d.reason, d.message
            ),
        );
    }
    let why = conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| format!(" ({}: {})", c.reason, c.message))
        .unwrap_or_default();
    Problem {
        fault: false,
        ..Problem::fault(
            "QueueNotReady",
            format!("waiting for Queue {name} to become Ready{why}"),
        )
    }
}

/// The ReplicaSet controller removes pods with the lowest
/// `pod-deletion-cost` first. Cost = the pod's pending messages, so on
/// scale-down idle workers go and busy ones finish their work.
async fn protect_busy_pods(
    pods: &Api<Pod>,
    items: &[PartialObjectMeta<Pod>],
    pending: Option<&BTreeMap<String, u64>>,
) -> Result<(), Problem> {
    for pod in items {
        let name = pod.name_any();
        let cost = pending
            .and_then(|p| p.get(&name))
            .copied()
            .unwrap_or(0)
            .min(i32::MAX as u64)
            .to_string();
        if pod.annotations().get(DELETION_COST) == Some(&cost) {
            continue;
        }
        let patch = serde_json::json!({"metadata": {"annotations": {DELETION_COST: cost}}});
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..PatchParams::default()
        };
        if let Err(e) = pods.patch_metadata(&name, &params, &Patch::Merge(&patch)).await {
            // A pod that just went away needs no protection.
            if !matches!(&e, kube::Error::Api(s) if s.code == 404) {
                return Err(Problem::fault("KubernetesError", format!("annotating pod {name}: {e}")));
            }
        }
    }
    Ok(())
}

/// Consumer names stay in the group after their pod is gone. Once their
/// pending entries have been reclaimed by the other workers (XAUTOCLAIM), the
/// name is deleted; a name still holding entries is left for the next round.
async fn tidy_group(
    consumer: &Consumer,
    ctx: &Context,
    admin: &mut crate::redis::admin::Admin,
    stream: &str,
    pod_names: &[String],
    pending: Option<&BTreeMap<String, u64>>,
) {
    let Some(pending) = pending else { return };
    let mut removed = vec![];
    for (name, count) in pending {
        // Only names shaped like this Consumer's pods: other clients of the group are not ours to remove.
        if *count > 0 || pod_names.contains(name) || !name.starts_with(&format!("{}-", consumer.name_any())) {
            continue;
        }
        match admin.delete_idle_consumer(stream, &consumer.group(), name).await {
            Ok(true) => removed.push(name.clone()),
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(consumer = %consumer.name_any(), error = %e, "could not remove a departed consumer from the group")
            }
        }
    }
    if !removed.is_empty() {
        let note = format!(
            "removed departed consumer(s) {} from group {}: their pods are gone and nothing was pending",
            removed.join(", "),
            consumer.group()
        );
        k8s::publish_event(
            &ctx.recorder,
            consumer,
            EventType::Normal,
            "ConsumersRemoved",
            "Scale",
            note,
        )
        .await;
    }
}

const DELETION_COST: &str = "controller.kubernetes.io/pod-deletion-cost";

fn error_policy(_consumer: Arc<DeserializeGuard<Consumer>>, err: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(error = %err, "consumer reconcile failed");
    ctx.metrics.reconcile_failed(CONTROLLER, err.metric_label());
    Action::requeue(Duration::from_secs(5))
}

/// The Consumers of a Queue: reconciled when it changes (e.g. becomes Ready).
/// By the Queue's name only, so an unreadable Queue still wakes them.
fn consumers_of(
    store: &Store<DeserializeGuard<Consumer>>,
    queue: &DeserializeGuard<Queue>,
) -> Vec<ObjectRef<DeserializeGuard<Consumer>>> {
    store
        .state()
        .iter()
        .filter(|c| c.namespace() == queue.namespace())
        .filter(|c| matches!(&c.0, Ok(c) if c.spec.queue_ref.name == queue.name_any()))
        .map(|c| ObjectRef::from_obj(c.as_ref()))
        .collect()
}

/// The controller, ready to run until `shutdown` resolves.
pub fn controller(
    ctx: Arc<Context>,
    woken: impl futures::Stream<Item = ObjectRef<Consumer>> + Send + 'static,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> (impl Future<Output = ()>, ValidStore<Consumer>) {
    // Guarded: one Consumer (or Queue) the types cannot read must not stop the watch of all.
    let consumers = ctx.scope.api::<DeserializeGuard<Consumer>>(ctx.client.clone());
    let controller = Controller::new(consumers, watcher::Config::default().any_semantic())
        .trigger_backoff(crate::k8s::WatchBackoff::default());
    let store = controller.store();
    let mapper_store = store.clone();
    let woken = woken.map(|r| {
        let mut guarded = ObjectRef::<DeserializeGuard<Consumer>>::new(&r.name);
        guarded.namespace = r.namespace;
        guarded
    });
    let controller = controller
        .owns(
            ctx.scope.api::<Deployment>(ctx.client.clone()),
            watcher::Config::default().labels("app.kubernetes.io/managed-by=streamq"),
        )
        .watches(
            ctx.scope.api::<DeserializeGuard<Queue>>(ctx.client.clone()),
            watcher::Config::default(),
            move |q| consumers_of(&mapper_store, &q),
        )
        .reconcile_on(woken)
        .graceful_shutdown_on(shutdown);
    let fut = controller.run(reconcile, error_policy, ctx).for_each(|res| async move {
        if let Err(err) = res {
            tracing::debug!(%err, "consumer controller");
        }
    });
    (fut, ValidStore::new(store))
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
        let p = queue_not_ready(&q);
        assert!(p.fault);
        assert_eq!(p.reason, "QueueDegraded");
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
        let p = queue_not_ready(&q);
        assert!(!p.fault);
        assert_eq!(p.reason, "QueueNotReady");
        assert!(p.message.contains("WaitingForRedis: starting"), "{}", p.message);
    }
}
