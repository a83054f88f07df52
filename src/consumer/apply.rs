//! The apply phase: the consumer group in Redis, the Deployment, and the
//! housekeeping around scale-down (busy pods protected, departed names removed).

use std::{collections::BTreeMap, sync::Arc};

use k8s_openapi::api::{apps::v1::Deployment, core::v1::Pod};
use kube::{
    Api, ResourceExt,
    runtime::{events::EventType, reflector::ObjectRef},
};

use super::{Context, build, build::QueueFacts, plan, startup};
use crate::{
    api::{Consumer, Queue, StartFrom},
    k8s::{self, applied::Version},
    problem::Problem,
    redis::admin::Admin,
};

const DELETION_COST: &str = "controller.kubernetes.io/pod-deletion-cost";

/// What the workload looks like after a successful round.
pub struct Workload {
    pub desired: i32,
    pub replicas: i32,
    pub ready: i32,
    /// Set when this round changed the replica count: why.
    pub scaled: Option<String>,
}

/// The group exists before any worker starts (XGROUP CREATE is idempotent
/// here). Skipped when the sampler's last sample of this autoscaled Consumer
/// found it: at a thousand Consumers, a thousand round trips per resync.
pub async fn ensure_group(consumer: &Consumer, queue: &Queue, stream: &str, ctx: &Context) -> Result<Admin, Problem> {
    let mut admin = ctx
        .shared
        .brokers
        .admin(queue, &ctx.shared.client, &ctx.shared.secrets)
        .await?;
    let uid = consumer.uid().unwrap_or_default();
    if ctx.decisions.group_seen(&uid, stream, &consumer.group()).await {
        return Ok(admin);
    }
    let from = match consumer.spec.start_from {
        StartFrom::Earliest => "0",
        StartFrom::Latest => "$",
    };
    match admin.ensure_group(stream, &consumer.group(), from).await {
        Ok(true) => {
            let note = format!("consumer group {} created on {stream} from {from}", consumer.group());
            k8s::publish_event(
                &ctx.shared.recorder,
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
            ctx.shared
                .brokers
                .forget_admin(queue, &ctx.shared.client, &ctx.shared.secrets)
                .await;
            return Err(Problem::redis(&e));
        }
    }
    Ok(admin)
}

/// Sizes and applies the Deployment; on scale-down, busy pods go last.
pub async fn deployment(
    consumer: &Consumer,
    facts: &QueueFacts,
    admin: &mut Admin,
    ctx: &Context,
) -> Result<Workload, Problem> {
    let ns = consumer.namespace().unwrap_or_default();
    let uid = consumer.uid().unwrap_or_default();
    let deployments: Api<Deployment> = Api::namespaced(ctx.shared.client.clone(), &ns);
    let pods: Api<Pod> = Api::namespaced(ctx.shared.client.clone(), &ns);
    let pod_list = ctx.pods_of(consumer);
    ctx.decisions
        .record_startups(&uid, pod_list.iter().filter_map(|p| startup::of(p)))
        .await;
    let consumer_pending = ctx.decisions.consumer_pending(&uid).await;
    tidy_group(
        consumer,
        ctx,
        admin,
        &facts.stream,
        &pod_list,
        consumer_pending.as_ref(),
    )
    .await;
    let name = consumer.name_any();
    let existing = ctx.stores.deployments.get(&ObjectRef::new(&name).within(&ns));
    let current = existing.as_ref().and_then(|d| d.spec.as_ref()?.replicas);
    let desired = plan::desired_replicas(consumer, ctx.decisions.replicas(&uid).await, current);
    if current.is_some_and(|c| desired < c) {
        protect_busy_pods(&pods, &pod_list, consumer_pending.as_ref()).await?;
    }
    let applied = ctx
        .shared
        .applied
        .apply(
            &deployments,
            &build::deployment(consumer, facts, desired),
            existing.as_ref().map(|d| &d.metadata),
            Version::Generation,
        )
        .await
        .map_err(|e| Problem::kube("applying Deployment", &name, e))?;
    let mut scaled = None;
    if current != Some(desired) {
        let why = plan::scale_reason(consumer, ctx.decisions.reason(&uid).await);
        if let Some(current) = current {
            let note = format!("replicas {current} → {desired}: {why}");
            k8s::publish_event(
                &ctx.shared.recorder,
                consumer,
                EventType::Normal,
                "Scaled",
                "Scale",
                note,
            )
            .await;
        }
        scaled = Some(why);
    }
    // Skipped (unchanged): the cached Deployment's status is as fresh as the watch.
    let status = applied
        .or_else(|| existing.map(|d| d.as_ref().clone()))
        .and_then(|d| d.status)
        .unwrap_or_default();
    Ok(Workload {
        desired,
        replicas: status.replicas.unwrap_or(0),
        ready: status.ready_replicas.unwrap_or(0),
        scaled,
    })
}

/// The ReplicaSet controller removes pods with the lowest
/// `pod-deletion-cost` first. Cost = the pod's pending messages, so on
/// scale-down idle workers go and busy ones finish their work.
async fn protect_busy_pods(
    pods: &Api<Pod>,
    items: &[Arc<Pod>],
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
        if let Err(e) = k8s::annotate(pods, &name, DELETION_COST, &cost).await {
            // A pod that just went away needs no protection.
            if !matches!(&e, kube::Error::Api(s) if s.code == 404) {
                return Err(Problem::kube("annotating pod", &name, e));
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
    admin: &mut Admin,
    stream: &str,
    pods: &[Arc<Pod>],
    pending: Option<&BTreeMap<String, u64>>,
) {
    let Some(pending) = pending else { return };
    let pod_names: Vec<String> = pods.iter().map(|p| p.name_any()).collect();
    let prefix = format!("{}-", consumer.name_any());
    let mut removed = vec![];
    for (name, count) in pending {
        // Only names shaped like this Consumer's pods: other clients of the group are not ours to remove.
        if *count > 0 || pod_names.contains(name) || !name.starts_with(&prefix) {
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
            &ctx.shared.recorder,
            consumer,
            EventType::Normal,
            "ConsumersRemoved",
            "Scale",
            note,
        )
        .await;
    }
}
