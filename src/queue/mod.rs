//! The Queue controller, in phases each with a file: `validate` and `build`
//! (pure), `apply` (Kubernetes objects, then Redis), `status` (pure),
//! `events` (what a round tells the user) and `cleanup` (the finalizer).
//! This file is the driver and the watch wiring.

mod apply;
pub mod build;
mod claim;
mod cleanup;
mod events;
pub mod managed;
mod memory;
pub mod status;
pub mod validate;

use std::{sync::Arc, time::Duration};

use futures::StreamExt;
use k8s_openapi::{
    api::{apps::v1::StatefulSet, core::v1::Secret},
    jiff::Timestamp,
};
use kube::{
    Api, Resource, ResourceExt,
    api::PartialObjectMeta,
    core::DeserializeGuard,
    runtime::{
        Controller,
        controller::Action,
        finalizer::{Event as Finalizer, finalizer},
        reflector::{ObjectRef, Store},
        watcher,
    },
};

use self::memory::QueueMemory;
use crate::{
    api::{Broker, ConditionType, Queue, find_condition},
    context::Shared,
};

const CONTROLLER: &str = "queue";
/// Removes the Queue's users (and, with deletionPolicy Delete, its data) from Redis before it goes.
pub const FINALIZER: &str = "streamq.dev/redis-cleanup";

/// The Queue controller's own context.
pub struct Context {
    pub shared: Arc<Shared>,
    memory: QueueMemory,
    /// How long a deleted Queue waits for Redis before its cleanup is abandoned.
    cleanup_timeout: Duration,
}

impl Context {
    pub fn new(shared: Arc<Shared>, cleanup_timeout: Duration) -> Self {
        Self {
            shared,
            memory: QueueMemory::default(),
            cleanup_timeout,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("writing Queue status: {0}")]
    Status(#[source] kube::Error),
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("cleaning up Redis: {0}")]
    Cleanup(String),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
}

impl Error {
    fn metric_label(&self) -> &'static str {
        match self {
            Self::Status(_) => "status",
            Self::Kube(_) => "kube",
            Self::Cleanup(_) => "cleanup",
            Self::Finalizer(_) => "finalizer",
        }
    }
}

/// One round (see `k8s::boxed_round` for why boxed).
pub fn reconcile(
    guard: Arc<DeserializeGuard<Queue>>,
    ctx: Arc<Context>,
) -> futures::future::BoxFuture<'static, Result<Action, Error>> {
    crate::k8s::boxed_round(reconcile_round(guard, ctx))
}

async fn reconcile_round(guard: Arc<DeserializeGuard<Queue>>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.shared.metrics.reconcile_started(CONTROLLER);
    let queue = match &guard.0 {
        Ok(queue) => Arc::new(queue.clone()),
        Err(invalid) => return cleanup::unreadable(&guard, invalid, &ctx).await,
    };
    let api: Api<Queue> = Api::namespaced(ctx.shared.client.clone(), &queue.namespace().unwrap_or_default());
    finalizer(&api, FINALIZER, queue, |event| async {
        match event {
            Finalizer::Apply(queue) => reconcile_live(&queue, &ctx).await,
            Finalizer::Cleanup(queue) => cleanup::cleanup(&queue, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

/// One round for a live Queue: provision, then write the status the outcome means.
async fn reconcile_live(queue: &Queue, ctx: &Context) -> Result<Action, Error> {
    let uid = queue.uid().unwrap_or_default();
    let outcome = apply::provision(queue, ctx).await;
    let ingress_rate = match &outcome {
        Ok(p) => Some(ctx.memory.ingress_rate(&uid, p.snapshot.entries_added).await),
        Err(_) => None,
    };
    let status = status::build(queue, &outcome, ingress_rate, Timestamp::now());
    let previous_problem = queue
        .status
        .as_ref()
        .and_then(|s| find_condition(&s.conditions, ConditionType::Degraded))
        .map(|c| c.reason.clone());
    let previous = queue.status.clone().unwrap_or_default();
    ctx.shared
        .write_status(queue, &previous, &status)
        .await
        .map_err(Error::Status)?;
    match outcome {
        Ok(_) => {
            ctx.memory.succeeded(&uid).await;
            Ok(Action::requeue(ctx.shared.next_resync()))
        }
        Err(problem) => {
            if problem.fault && previous_problem.as_deref() != Some(problem.reason.as_str()) {
                events::fault(queue, &ctx.shared, &problem).await;
            }
            tracing::info!(queue = %queue.name_any(), reason = %problem.reason, message = %problem.message, "queue not ready");
            Ok(Action::requeue(ctx.memory.failed(&uid, ctx.shared.resync).await))
        }
    }
}

fn error_policy(_queue: Arc<DeserializeGuard<Queue>>, err: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(error = %err, "queue reconcile failed");
    ctx.shared.metrics.reconcile_failed(CONTROLLER, err.metric_label());
    Action::requeue(Duration::from_secs(2))
}

/// Which Queues a Secret concerns: the one that owns it, and every external
/// Queue whose URL it holds (so a rotated URL is picked up at once).
fn queues_for_secret(
    store: &Store<DeserializeGuard<Queue>>,
    secret: &PartialObjectMeta<Secret>,
) -> Vec<ObjectRef<DeserializeGuard<Queue>>> {
    let (ns, name) = (secret.metadata.namespace.as_deref(), secret.metadata.name.as_deref());
    store
        .state_filter(|q| {
            let owns = || {
                secret
                    .owner_references()
                    .iter()
                    .any(|o| Some(o.uid.as_str()) == q.meta().uid.as_deref())
            };
            let references = || {
                matches!(&q.0, Ok(q) if matches!(&q.spec.broker, Broker::External(e) if Some(e.url_secret_ref.name.as_str()) == name))
            };
            q.meta().namespace.as_deref() == ns && (owns() || references())
        })
        .iter()
        .map(|q| ObjectRef::from_obj(q.as_ref()))
        .collect()
}

/// The controller, ready to run until `shutdown` resolves. It is woken by
/// its Queues and their Secrets (shared watch caches' changes) and by the
/// managed Redis StatefulSets it owns.
pub fn controller(
    ctx: Arc<Context>,
    queues: Store<DeserializeGuard<Queue>>,
    queue_changes: impl futures::Stream<Item = Arc<DeserializeGuard<Queue>>> + Send + 'static,
    secret_changes: impl futures::Stream<Item = Arc<PartialObjectMeta<Secret>>> + Send + 'static,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> impl Future<Output = ()> {
    let shared = &ctx.shared;
    let secret_store = queues.clone();
    Controller::for_shared_stream(queue_changes, queues)
        .owns(
            shared.scope.api::<StatefulSet>(shared.client.clone()),
            watcher::Config::default().labels("app.kubernetes.io/managed-by=streamq"),
        )
        .watches_shared_stream(secret_changes, move |secret| queues_for_secret(&secret_store, &secret))
        .with_config(crate::k8s::controller_config())
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(err) = res {
                tracing::debug!(%err, "queue controller");
            }
        })
}
