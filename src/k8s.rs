//! The Kubernetes I/O layer: every write streamq makes to the API server goes
//! through here, with server-side apply under one field manager.

use std::fmt::Debug;

use k8s_openapi::NamespaceResourceScope;
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::events::{Event, EventType, Recorder},
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
    api.patch_status(
        &obj.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

/// Publishes an Event about `obj`. Failing to publish is logged, never fatal:
/// an Event is a courtesy, the status is the record.
pub async fn publish_event<K>(recorder: &Recorder, obj: &K, type_: EventType, reason: &str, action: &str, note: String)
where
    K: Resource<DynamicType = ()>,
{
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: action.into(),
        secondary: None,
    };
    if let Err(err) = recorder.publish(&event, &obj.object_ref(&())).await {
        tracing::warn!(%err, reason, "could not publish event");
    }
}

/// Backoff of the controllers' watches after an error: 250 ms doubling to at most
/// 5 s, reset by the next event that arrives.
///
/// kube's default (800 ms doubling to 30 s, reset only after 120 s without a
/// backoff) is shared by all watches of one controller, so an apiserver restart
/// (connection errors from every watch, then `410 Expired` on resume) pushed it
/// to 30 s steps and left changes unreconciled for 64 to 137 s in the chaos
/// suite. An operator has few watches; retrying every 5 s costs the apiserver nothing.
#[derive(Debug, Clone)]
pub struct WatchBackoff {
    next: std::time::Duration,
}

impl WatchBackoff {
    const FIRST: std::time::Duration = std::time::Duration::from_millis(250);
    const MAX: std::time::Duration = std::time::Duration::from_secs(5);
}

impl Default for WatchBackoff {
    fn default() -> Self {
        Self { next: Self::FIRST }
    }
}

impl Iterator for WatchBackoff {
    type Item = std::time::Duration;

    fn next(&mut self) -> Option<Self::Item> {
        let delay = self.next;
        self.next = (delay * 2).min(Self::MAX);
        Some(delay)
    }
}

impl kube::runtime::utils::Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

#[cfg(test)]
mod watch_backoff_tests {
    use std::time::Duration;

    use kube::runtime::utils::Backoff;

    use super::WatchBackoff;

    #[test]
    fn doubles_to_five_seconds_and_resets() {
        let mut b = WatchBackoff::default();
        let first: Vec<_> = b.by_ref().take(7).collect();
        assert_eq!(
            first,
            [250, 500, 1000, 2000, 4000, 5000, 5000].map(Duration::from_millis)
        );
        b.reset();
        assert_eq!(b.next(), Some(Duration::from_millis(250)));
    }
}
