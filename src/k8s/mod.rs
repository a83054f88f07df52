//! The Kubernetes I/O layer: every write streamq makes to the objects it
//! reconciles goes through here, under one field manager, with server-side
//! apply wherever streamq owns the object. The one exception is the leader
//! election Lease, which `leader.rs` writes with create/replace under its
//! resourceVersion: an election needs that compare-and-swap.

pub mod applied;
pub mod cache;
pub mod recorder;
pub mod secrets;

use std::fmt::Debug;

use k8s_openapi::NamespaceResourceScope;
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{Patch, PatchParams, PostParams},
    runtime::{
        events::{Event, EventType},
        watcher::ExponentialBackoff,
    },
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::json;

/// The one field manager of every streamq write.
pub const FIELD_MANAGER: &str = "streamq";

/// Where the operator looks for objects: the whole cluster, or one namespace.
#[derive(Clone, Debug)]
pub enum Scope {
    Cluster,
    Namespace(String),
}

impl Scope {
    pub fn api<K>(&self, client: Client) -> Api<K>
    where
        K: Resource<DynamicType = (), Scope = NamespaceResourceScope>,
    {
        match self {
            Self::Cluster => Api::all(client),
            Self::Namespace(ns) => Api::namespaced(client, ns),
        }
    }
}

/// Writes `status` with server-side apply. `force`: streamq owns status.
pub async fn apply_status<K>(client: &Client, obj: &K, status: &impl Serialize) -> Result<(), kube::Error>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope> + Clone + DeserializeOwned + Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), &obj.namespace().unwrap_or_default());
    let patch = json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    let params = PatchParams::apply(FIELD_MANAGER).force();
    sent(api.patch_status(&obj.name_any(), &params, &Patch::Apply(&patch))).await?;
    Ok(())
}

/// Publishes an Event about `obj`. Failing to publish is logged, never fatal:
/// an Event is a courtesy, the status is the record.
pub async fn publish_event<K>(
    recorder: &recorder::Recorder,
    obj: &K,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) where
    K: Resource<DynamicType = ()>,
{
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: action.into(),
        secondary: None,
    };
    // Boxed as a request (see `sent`): most rounds that may publish do not.
    if let Err(err) = sent(recorder.publish(&event, &obj.object_ref(&()))).await {
        tracing::warn!(%err, reason, "could not publish event");
    }
}

/// Applies `obj` (named `name`) with server-side apply. `force`: streamq owns
/// the fields it sets on the objects it creates.
pub async fn apply<K>(api: &Api<K>, name: &str, obj: &K) -> Result<K, kube::Error>
where
    K: Resource + Clone + Serialize + DeserializeOwned + Debug,
{
    sent(api.patch(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(obj))).await
}

/// Creates `obj`, failing if it exists: for objects whose first content must
/// never be overwritten (a generated password).
pub async fn create<K>(api: &Api<K>, obj: &K) -> Result<K, kube::Error>
where
    K: Resource + Clone + Serialize + DeserializeOwned + Debug,
{
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PostParams::default()
    };
    sent(api.create(&params, obj)).await
}

/// Sets one annotation on an object that streamq does not own (a pod of a
/// Deployment), by a merge patch of its metadata only.
pub async fn annotate<K>(api: &Api<K>, name: &str, key: &str, value: &str) -> Result<(), kube::Error>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    let patch = json!({"metadata": {"annotations": {key: value}}});
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PatchParams::default()
    };
    sent(api.patch_metadata(name, &params, &Patch::Merge(&patch))).await?;
    Ok(())
}

/// Removes `finalizer` from `obj`, guarded by its resourceVersion, for an
/// object that cannot be reconciled (kube's `finalizer` helper needs a readable one).
pub async fn remove_finalizer<K>(api: &Api<K>, obj: &K, finalizer: &str) -> Result<(), kube::Error>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    let remaining: Vec<&String> = obj.finalizers().iter().filter(|f| *f != finalizer).collect();
    let patch = json!({"metadata": {
        "finalizers": remaining,
        "resourceVersion": obj.resource_version(),
    }});
    sent(api.patch(&obj.name_any(), &PatchParams::default(), &Patch::Merge(&patch))).await?;
    Ok(())
}

/// Backoff of the controllers' watches after an error: 250 ms doubling to at
/// most 5 s, reset by the next event that arrives.
///
/// kube's default (800 ms doubling to 30 s, reset only after 120 s without a
/// backoff) is shared by all watches of one controller, so an apiserver restart
/// pushed it to 30 s steps and left changes unreconciled for minutes. An
/// operator has few watches; retrying every 5 s costs the apiserver nothing.
pub fn watch_backoff() -> ExponentialBackoff {
    backon::ExponentialBuilder::default()
        .with_min_delay(std::time::Duration::from_millis(250))
        .with_max_delay(std::time::Duration::from_secs(5))
        .with_factor(2.0)
        .without_max_times()
        .into()
}

/// How many objects one controller reconciles at once. Unbounded (kube's
/// default), a start with 1,000 Queues and 1,000 Consumers ran every round at
/// once: each opened its own HTTP/1.1 connection to the apiserver, and the
/// 1,230 connections' buffers and TLS state were the largest share of the
/// operator's memory (heaptrack). A round takes a few milliseconds, so 32 at
/// once reconcile 1,000 objects in seconds, and a round stuck on an
/// unreachable Redis (3 s timeout) holds up only one of 32.
pub const RECONCILE_CONCURRENCY: u16 = 32;

/// A request to the apiserver, boxed. A kube request future is a few KiB,
/// and held inline it would make every round that might send one that much
/// larger, sent or not; most rounds send none, and a round's future is
/// allocated afresh each time (see [`boxed_round`]): at a thousand Queues the
/// Queue round's 12.3 KiB allocation was about 4 % of the idle operator's CPU
/// (`perf`); with its requests boxed the round is 3.3 KiB.
pub fn sent<F: Future>(request: F) -> std::pin::Pin<Box<F>> {
    Box::pin(request)
}

/// A controller's round, boxed: kube-runtime spawns each round as a task,
/// and a task holding the round's future inline (3–9 KiB) is a
/// 128-byte-aligned allocation, which glibc's `posix_memalign` served slowly
/// from the operator's heap (3 % of the idle operator's CPU at a thousand
/// pairs, in `perf`); a plain allocation of the same size is not.
pub fn boxed_round<T>(round: impl Future<Output = T> + Send + 'static) -> futures::future::BoxFuture<'static, T> {
    Box::pin(round)
}

/// The configuration both controllers run with.
pub fn controller_config() -> kube::runtime::controller::Config {
    kube::runtime::controller::Config::default().concurrency(RECONCILE_CONCURRENCY)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use kube::runtime::utils::Backoff;

    use super::watch_backoff;

    #[test]
    fn watch_backoff_doubles_to_five_seconds_and_resets() {
        let mut b = watch_backoff();
        let first: Vec<_> = b.by_ref().take(7).collect();
        assert_eq!(
            first,
            [250, 500, 1000, 2000, 4000, 5000, 5000].map(Duration::from_millis)
        );
        b.reset();
        assert_eq!(b.next(), Some(Duration::from_millis(250)));
    }
}
