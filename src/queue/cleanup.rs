//! The finalizer: take a deleted Queue's users (and, with `Delete`, its data)
//! out of Redis. While Redis cannot be reached the Queue says why; after the
//! cleanup timeout it gives up with an Event, so deletion never hangs forever.

use k8s_openapi::jiff::Timestamp;
use kube::{
    Api, Resource, ResourceExt,
    core::{DeserializeGuard, error_boundary::InvalidObject},
    runtime::controller::Action,
};

use super::{Context, Error, FINALIZER, build, events, status};
use crate::{
    api::{DeletionPolicy, Queue, Reason},
    k8s,
    problem::Problem,
};

pub(super) async fn cleanup(queue: &Queue, ctx: &Context) -> Result<Action, Error> {
    let uid = queue.uid().unwrap_or_default();
    match remove_from_redis(queue, ctx).await {
        Ok(deleted_data) => {
            forget(ctx, &uid).await;
            events::cleaned_up(queue, &ctx.shared, deleted_data).await;
            Ok(Action::await_change())
        }
        Err(problem) => {
            let since = ctx.memory.cleanup_failing_since(&uid).await;
            if since.elapsed() >= ctx.cleanup_timeout {
                forget(ctx, &uid).await;
                let note = format!(
                    "gave up cleaning Redis after {:?}: {}; the ACL users streamq.{}.{}.* may remain",
                    ctx.cleanup_timeout,
                    problem.message,
                    queue.namespace().unwrap_or_default(),
                    queue.name_any()
                );
                events::cleanup_abandoned(queue, &ctx.shared, note).await;
                return Ok(Action::await_change());
            }
            let waiting = Problem::fault(
                Reason::CleanupPending,
                format!(
                    "deleting: cannot clean up Redis yet ({}); retrying for up to {:?} before giving up",
                    problem.message, ctx.cleanup_timeout
                ),
            );
            let status = status::build(queue, &Err(waiting), None, Timestamp::now());
            k8s::apply_status(&ctx.shared.client, queue, &status)
                .await
                .map_err(Error::Status)?;
            Err(Error::Cleanup(problem.message))
        }
    }
}

async fn forget(ctx: &Context, uid: &str) {
    ctx.memory.forget(uid).await;
    ctx.shared.brokers.forget(uid).await;
    ctx.shared.status_writes.forget(uid).await;
}

/// Removes the users, and the data when the policy says so and the stream is
/// ours. Returns whether the data went.
async fn remove_from_redis(queue: &Queue, ctx: &Context) -> Result<bool, Problem> {
    let mut admin = ctx
        .shared
        .brokers
        .admin(queue, &ctx.shared.client, &ctx.shared.secrets)
        .await?;
    let spec = build::redis_spec(queue, String::new(), String::new());
    let owner = admin.owner(&spec).await.map_err(|e| Problem::redis(&e))?;
    // Never delete data another Queue owns (this one may have been the younger of a conflict).
    let ours = owner.as_deref().is_none_or(|o| o == spec.owner);
    let delete_data = ours && queue.spec.deletion_policy == DeletionPolicy::Delete;
    admin
        .remove(&spec, ours, delete_data)
        .await
        .map_err(|e| Problem::redis(&e))?;
    Ok(delete_data)
}

/// A Queue streamq cannot read (see [`crate::guard`]): say so on it and wait
/// for it to change. Deleted, it loses the finalizer at once: without its
/// spec there is no telling which Redis to clean, and deletion must not hang.
pub(super) async fn unreadable(
    guard: &DeserializeGuard<Queue>,
    invalid: &InvalidObject,
    ctx: &Context,
) -> Result<Action, Error> {
    let shared = &ctx.shared;
    if guard.meta().deletion_timestamp.is_none() {
        crate::guard::report(shared, guard, invalid)
            .await
            .map_err(Error::Status)?;
        return Ok(Action::await_change());
    }
    if guard.finalizers().iter().any(|f| f == FINALIZER) {
        let ns = guard.namespace().unwrap_or_default();
        let api = Api::<DeserializeGuard<Queue>>::namespaced(shared.client.clone(), &ns);
        k8s::remove_finalizer(&api, guard, FINALIZER).await?;
        let note = format!(
            "Redis not cleaned up: the Queue cannot be read ({}), so its broker is unknown; \
             the ACL users streamq.{ns}.{}.* and the stream may remain",
            invalid.error,
            guard.name_any()
        );
        events::cleanup_abandoned(guard, shared, note).await;
    }
    Ok(Action::await_change())
}
