//! The Queue controller.

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::{Controller, controller::Action, watcher};

use crate::{
    api::{Broker, Condition, Queue, QueueStatus, merge_conditions},
    context::Context,
    k8s,
};

const CONTROLLER: &str = "queue";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("writing Queue status: {0}")]
    Status(#[source] kube::Error),
}

impl Error {
    fn metric_label(&self) -> &'static str {
        match self {
            Self::Status(_) => "status",
        }
    }
}

pub async fn reconcile(queue: Arc<Queue>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile_started(CONTROLLER);
    let previous = queue.status.clone().unwrap_or_default();
    let conditions = vec![Condition::new(
        "Ready",
        false,
        "NotImplemented",
        "Queue provisioning is not implemented yet",
    )];
    let status = QueueStatus {
        observed_generation: queue.metadata.generation,
        conditions: merge_conditions(
            &previous.conditions,
            conditions,
            Timestamp::now(),
            queue.metadata.generation,
        ),
        broker: Some(
            match queue.spec.broker {
                Broker::External(_) => "external",
                Broker::Managed(_) => "managed",
            }
            .into(),
        ),
        stream_key: Some(queue.stream_key()),
        dead_letter_stream_key: queue.dead_letter_stream_key(),
        ..previous
    };
    k8s::apply_status(&ctx.client, queue.as_ref(), &status)
        .await
        .map_err(Error::Status)?;
    Ok(Action::requeue(ctx.resync))
}

fn error_policy(_queue: Arc<Queue>, err: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(error = %err, "queue reconcile failed");
    ctx.metrics.reconcile_failed(CONTROLLER, err.metric_label());
    Action::requeue(std::time::Duration::from_secs(5))
}

/// The controller, ready to run until `shutdown` resolves.
pub fn controller(
    ctx: Arc<Context>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> (impl Future<Output = ()>, kube::runtime::reflector::Store<Queue>) {
    let queues = ctx.scope.api::<Queue>(ctx.client.clone());
    let controller = Controller::new(queues, watcher::Config::default().any_semantic()).graceful_shutdown_on(shutdown);
    let store = controller.store();
    let fut = controller.run(reconcile, error_policy, ctx).for_each(|res| async move {
        if let Err(err) = res {
            tracing::debug!(%err, "queue controller");
        }
    });
    (fut, store)
}
