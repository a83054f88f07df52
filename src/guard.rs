//! Objects the Rust types cannot read must not stall the controllers.
//!
//! The API server admits what the CRD schema admits; serde can still refuse
//! it: an object written before a schema change, or a value the schema's
//! pattern lets through that the type rejects (`visibilityTimeout:
//! 99999999999999999999s` matches the duration pattern but overflows). A
//! plain watcher fails its whole list on one such object, and every Queue
//! or Consumer in scope would stop being reconciled. The controllers
//! therefore watch `DeserializeGuard<K>`: the readable objects are reconciled
//! as usual, the unreadable one is reported on its own status and in an Event,
//! and the rest go on.

use std::sync::Arc;

use k8s_openapi::{NamespaceResourceScope, jiff::Timestamp};
use kube::{
    Resource, ResourceExt,
    core::{DeserializeGuard, error_boundary::InvalidObject},
    runtime::{
        events::EventType,
        reflector::{ObjectRef, Store},
    },
};
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::{
    api::{Condition, Reason},
    context::Shared,
    k8s,
    problem::Problem,
};

/// The readable objects of a controller's `DeserializeGuard` cache, for the
/// parts of the operator (the sampler) that only care about those.
pub struct ValidStore<K>(Store<DeserializeGuard<K>>)
where
    K: Resource<DynamicType = ()> + Clone + 'static;

impl<K> Clone for ValidStore<K>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<K> ValidStore<K>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    pub fn new(store: Store<DeserializeGuard<K>>) -> Self {
        Self(store)
    }

    /// Every readable object.
    pub fn state(&self) -> Vec<Valid<K>> {
        self.0.state().into_iter().filter_map(Valid::new).collect()
    }

    /// The object `key`, when it exists and is readable.
    pub fn get(&self, key: &ObjectRef<K>) -> Option<Valid<K>> {
        let mut guarded = ObjectRef::<DeserializeGuard<K>>::new(&key.name);
        guarded.namespace = key.namespace.clone();
        Valid::new(self.0.get(&guarded)?)
    }
}

/// A readable object of a guarded cache, shared with the cache rather than copied out of it.
pub struct Valid<K>(Arc<DeserializeGuard<K>>);

impl<K> Valid<K> {
    fn new(guarded: Arc<DeserializeGuard<K>>) -> Option<Self> {
        guarded.0.is_ok().then_some(Self(guarded))
    }
}

impl<K> Clone for Valid<K> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<K> std::ops::Deref for Valid<K> {
    type Target = K;

    fn deref(&self) -> &K {
        match &self.0.0 {
            Ok(k) => k,
            // `new` admits only readable objects, and the guard never changes.
            Err(_) => unreachable!("a Valid object is readable"),
        }
    }
}

impl<K> AsRef<K> for Valid<K> {
    fn as_ref(&self) -> &K {
        self
    }
}

/// The message an unreadable object gets: what serde said, and what to do.
pub fn message<K: Resource<DynamicType = ()>>(invalid: &InvalidObject) -> String {
    format!(
        "streamq cannot read this {}: {}. Correct the field holding that value (kubectl edit), \
         or recreate the object from the current CRD; until then it is not reconciled",
        K::kind(&()),
        invalid.error
    )
}

/// Reports an unreadable object: `Ready=False` and `Degraded=True` with
/// reason `InvalidObject` on its status, and a Warning Event.
pub async fn report<K>(shared: &Shared, guard: &DeserializeGuard<K>, invalid: &InvalidObject) -> Result<(), kube::Error>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope> + Clone + DeserializeOwned + std::fmt::Debug,
{
    let note = message::<K>(invalid);
    let generation = guard.meta().generation;
    let now = Timestamp::now();
    let conditions: Vec<Condition> = Problem::fault(Reason::InvalidObject, note.clone())
        .ready_and_degraded()
        .into_iter()
        .map(|mut c| {
            c.last_transition_time = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now);
            c.observed_generation = generation;
            c
        })
        .collect();
    tracing::warn!(kind = %K::kind(&()), name = %guard.name_any(), error = %invalid.error, "object cannot be read; not reconciled");
    let reason = Reason::InvalidObject.as_str();
    k8s::publish_event(&shared.recorder, guard, EventType::Warning, reason, "Read", note).await;
    k8s::apply_status(
        &shared.client,
        guard,
        &json!({"observedGeneration": generation, "conditions": conditions}),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Queue;

    /// A value the CRD's duration pattern admits but the type refuses: the
    /// guard keeps the object, with its metadata, as an error.
    #[test]
    fn an_overflowing_duration_is_caught_with_its_metadata() {
        let raw = json!({
            "apiVersion": "streamq.dev/v1alpha1", "kind": "Queue",
            "metadata": {"name": "q", "namespace": "ns", "uid": "u1", "generation": 2},
            "spec": {"broker": {"managed": {}}, "delivery": {"visibilityTimeout": "99999999999999999999s"}},
        });
        let guard: DeserializeGuard<Queue> = serde_json::from_value(raw).expect("the guard itself never fails");
        assert_eq!(guard.name_any(), "q");
        assert_eq!(guard.meta().generation, Some(2));
        let invalid = guard.0.as_ref().expect_err("the duration overflows");
        let text = message::<Queue>(invalid);
        assert!(text.contains("99999999999999999999s"), "{text}");
        assert!(text.contains("cannot read this Queue"), "{text}");
    }

    #[test]
    fn a_readable_object_passes_through() {
        let raw = json!({
            "apiVersion": "streamq.dev/v1alpha1", "kind": "Queue",
            "metadata": {"name": "q", "namespace": "ns"},
            "spec": {"broker": {"managed": {}}},
        });
        let guard: DeserializeGuard<Queue> = serde_json::from_value(raw).unwrap();
        assert!(guard.0.is_ok());
    }
}
