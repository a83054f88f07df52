//! The Consumer controller, in phases each with a file: `validate` (pure),
//! `inputs` (its Queue), `plan` (the replicas, pure), `build` (the
//! Deployment, pure), `apply` (group, Deployment) and `status` (pure). The
//! `sampler` feeds the autoscaler's `decisions`. This file is the driver and
//! the watch wiring.

mod apply;
pub mod build;
mod decisions;
mod inputs;
mod plan;
pub mod sampler;
mod startup;
mod status;
mod validate;

use std::{sync::Arc, time::Duration};

use futures::StreamExt;
use k8s_openapi::{
    api::{apps::v1::Deployment, core::v1::Pod},
    jiff::Timestamp,
};
use kube::{
    Resource, ResourceExt,
    core::DeserializeGuard,
    runtime::{
        Controller,
        controller::Action,
        reflector::{ObjectRef, Store},
    },
};

use self::{apply::Workload, decisions::Decisions};
use crate::{
    api::{Consumer, Queue},
    context::Shared,
    guard::ValidStore,
    k8s::cache::Synced,
    problem::Problem,
};

const CONTROLLER: &str = "consumer";
/// An autoscaled Consumer is resynced every this many resync intervals: its
/// sampler wakes it whenever a round has something to do (see `sampler`),
/// so the resync only catches what neither a watch nor a sample shows, such
/// as departed consumer names to remove from the group. At a thousand
/// Consumers a 10 s resync was 100 rounds a second that found nothing to do.
const SAMPLED_RESYNCS: u32 = 6;

/// The Consumer controller's own context, shared with its sampler.
pub struct Context {
    pub shared: Arc<Shared>,
    /// The autoscaler's latest decision per Consumer, written by the sampler.
    decisions: Decisions,
    sample_interval: Duration,
    pod_startup: PodStartup,
    stores: Stores,
}

/// The watch caches a Consumer round reads instead of the apiserver.
pub struct Stores {
    pub queues: ValidStore<Queue>,
    /// Stripped of their pod templates (see `k8s::cache`).
    pub deployments: Store<Deployment>,
    /// The Consumers' pods, stripped of their specs.
    pub pods: Store<Pod>,
    /// Whether those three caches have synced.
    pub synced: [Synced; 3],
}

/// Where the autoscaler's time from replicas raised to a worker consuming comes from.
#[derive(Clone, Copy, Debug)]
pub struct PodStartup {
    /// Used until a pod of the Consumer was Ready, and always when not `measured`.
    pub prior: Duration,
    /// Size with each Consumer's measured start-up once there is one.
    pub measured: bool,
}

impl Stores {
    /// Waits until every cache holds the cluster's state: before that, a
    /// missing Queue or Deployment may only not have arrived yet, and a round
    /// would report a fault or size from nothing. Immediate once synced.
    async fn synced(&self) {
        for synced in &self.synced {
            synced.wait().await;
        }
    }
}

impl Context {
    pub fn new(shared: Arc<Shared>, sample_interval: Duration, pod_startup: PodStartup, stores: Stores) -> Self {
        Self {
            shared,
            decisions: Decisions::default(),
            sample_interval,
            pod_startup,
            stores,
        }
    }

    /// The Consumer's pods, from the cache.
    fn pods_of(&self, consumer: &Consumer) -> Vec<Arc<Pod>> {
        // Runs every round over every cached pod: compare in place, copy nothing.
        let (ns, name) = (consumer.meta().namespace.as_deref(), consumer.meta().name.as_deref());
        self.stores.pods.state_filter(|p| {
            let label = p.metadata.labels.as_ref().and_then(|l| l.get(build::CONSUMER_LABEL));
            p.metadata.namespace.as_deref() == ns && label.map(String::as_str) == name
        })
    }
}

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

/// One round (see `k8s::boxed_round` for why boxed).
pub fn reconcile(
    guard: Arc<DeserializeGuard<Consumer>>,
    ctx: Arc<Context>,
) -> futures::future::BoxFuture<'static, Result<Action, Error>> {
    crate::k8s::boxed_round(reconcile_round(guard, ctx))
}

async fn reconcile_round(guard: Arc<DeserializeGuard<Consumer>>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.shared.metrics.reconcile_started(CONTROLLER);
    let consumer = match &guard.0 {
        Ok(consumer) => Arc::new(consumer.clone()),
        // Unreadable (see crate::guard): reported on itself; the others go on.
        Err(invalid) => {
            crate::guard::report(&ctx.shared, guard.as_ref(), invalid)
                .await
                .map_err(Error::Status)?;
            return Ok(Action::await_change());
        }
    };
    let outcome = workload(&consumer, &ctx).await;
    let uid = consumer.uid().unwrap_or_default();
    if let Some(why) = outcome.as_ref().ok().and_then(|w| w.scaled.clone()) {
        ctx.decisions.record_scale(&uid, why).await;
    }
    let observed = ctx
        .decisions
        .observed_status(&uid, consumer.status.clone().unwrap_or_default())
        .await;
    let last_scale = ctx.decisions.last_scale(&uid).await;
    let status = status::build(&consumer, &outcome, last_scale, observed, Timestamp::now());
    let previous = consumer.status.clone().unwrap_or_default();
    ctx.shared
        .write_status(consumer.as_ref(), &previous, &status)
        .await
        .map_err(Error::Status)?;
    Ok(match outcome {
        Ok(_) if consumer.spec.autoscaling.is_some() => Action::requeue(ctx.shared.next_resync() * SAMPLED_RESYNCS),
        Ok(_) => Action::requeue(ctx.shared.next_resync()),
        Err(p) => {
            tracing::info!(consumer = %consumer.name_any(), reason = %p.reason, message = %p.message, "consumer not ready");
            Action::requeue(Duration::from_secs(2).min(ctx.shared.resync))
        }
    })
}

/// One round's phases: validate, read the Queue, ensure the group, apply the Deployment.
async fn workload(consumer: &Consumer, ctx: &Context) -> Result<Workload, Problem> {
    validate::validate(consumer)?;
    ctx.stores.synced().await;
    let (queue, facts) = inputs::queue(consumer, &ctx.stores.queues)?;
    let mut admin = apply::ensure_group(consumer, &queue, &facts.stream, ctx).await?;
    apply::deployment(consumer, &facts, &mut admin, ctx).await
}

fn error_policy(_consumer: Arc<DeserializeGuard<Consumer>>, err: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(error = %err, "consumer reconcile failed");
    ctx.shared.metrics.reconcile_failed(CONTROLLER, err.metric_label());
    Action::requeue(Duration::from_secs(5))
}

/// The Consumers of a Queue: reconciled when it changes (e.g. becomes Ready).
/// By the Queue's name only, so an unreadable Queue still wakes them.
fn consumers_of(
    store: &Store<DeserializeGuard<Consumer>>,
    queue: &DeserializeGuard<Queue>,
) -> Vec<ObjectRef<DeserializeGuard<Consumer>>> {
    let (ns, name) = (queue.meta().namespace.as_deref(), queue.meta().name.as_deref());
    store
        .state_filter(|c| {
            let of_queue = matches!(&c.0, Ok(c) if Some(c.spec.queue_ref.name.as_str()) == name);
            of_queue && c.meta().namespace.as_deref() == ns
        })
        .iter()
        .map(|c| ObjectRef::from_obj(c.as_ref()))
        .collect()
}

/// What the Consumer controller is woken by: its Consumers, their Queues and
/// Deployments (each a shared watch cache's changes), and the sampler.
pub struct Triggers<C, Q, D, W> {
    pub consumers: C,
    pub queues: Q,
    pub deployments: D,
    pub woken: W,
}

/// The controller, ready to run until `shutdown` resolves.
pub fn controller<C, Q, D, W>(
    ctx: Arc<Context>,
    consumers: Store<DeserializeGuard<Consumer>>,
    triggers: Triggers<C, Q, D, W>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> impl Future<Output = ()>
where
    C: futures::Stream<Item = Arc<DeserializeGuard<Consumer>>> + Send + 'static,
    Q: futures::Stream<Item = Arc<DeserializeGuard<Queue>>> + Send + 'static,
    D: futures::Stream<Item = Arc<Deployment>> + Send + 'static,
    W: futures::Stream<Item = ObjectRef<Consumer>> + Send + 'static,
{
    let mapper_store = consumers.clone();
    let woken = triggers.woken.map(|r| {
        let mut guarded = ObjectRef::<DeserializeGuard<Consumer>>::new(&r.name);
        guarded.namespace = r.namespace;
        guarded
    });
    Controller::for_shared_stream(triggers.consumers, consumers)
        .owns_shared_stream(triggers.deployments)
        .watches_shared_stream(triggers.queues, move |q| consumers_of(&mapper_store, &q))
        .reconcile_on(woken)
        .with_config(crate::k8s::controller_config())
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(err) = res {
                tracing::debug!(%err, "consumer controller");
            }
        })
}
