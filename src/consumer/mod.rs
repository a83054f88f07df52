//! The Consumer controller.

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::{Controller, controller::Action, watcher};

use crate::{
    api::{Condition, Consumer, ConsumerStatus, merge_conditions},
    context::Context,
    k8s,
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

pub async fn reconcile(consumer: Arc<Consumer>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile_started(CONTROLLER);
    let previous = consumer.status.clone().unwrap_or_default();
    let conditions = vec![Condition::new(
        "Ready",
        false,
        "NotImplemented",
        "Consumer workloads are not implemented yet",
    )];
    let status = ConsumerStatus {
        observed_generation: consumer.metadata.generation,
        conditions: merge_conditions(
            &previous.conditions,
            conditions,
            Timestamp::now(),
            consumer.metadata.generation,
        ),
        ..previous
    };
    k8s::apply_status(&ctx.client, consumer.as_ref(), &status)
        .await
        .map_err(Error::Status)?;
    Ok(Action::requeue(ctx.resync))
}

fn error_policy(_consumer: Arc<Consumer>, err: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(error = %err, "consumer reconcile failed");
    ctx.metrics.reconcile_failed(CONTROLLER, err.metric_label());
    Action::requeue(std::time::Duration::from_secs(5))
}

/// The controller, ready to run until `shutdown` resolves.
pub fn controller(
    ctx: Arc<Context>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> (impl Future<Output = ()>, kube::runtime::reflector::Store<Consumer>) {
    let consumers = ctx.scope.api::<Consumer>(ctx.client.clone());
    let controller =
        Controller::new(consumers, watcher::Config::default().any_semantic()).graceful_shutdown_on(shutdown);
    let store = controller.store();
    let fut = controller.run(reconcile, error_policy, ctx).for_each(|res| async move {
        if let Err(err) = res {
            tracing::debug!(%err, "consumer controller");
        }
    });
    (fut, store)
}
