//! The Kubernetes API in tests: waiting on objects, updating them against a
//! concurrent writer, and reading what the operator reported.

use std::time::Duration;

use k8s_openapi::{NamespaceResourceScope, api::events::v1::Event};
use kube::{
    Api, Resource,
    api::{ListParams, PostParams},
    runtime::wait::await_condition,
};
use serde::{Serialize, de::DeserializeOwned};

use super::{
    env::{TIMEOUT, TestEnv},
    wait::{poll, wait_until},
};

/// Waits until `cond` holds for the named object, or fails the test after [`TIMEOUT`].
pub async fn wait_for<K>(api: &Api<K>, name: &str, what: &str, cond: impl Fn(&K) -> bool) -> K
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    wait_for_within(api, name, what, TIMEOUT, cond).await
}

pub async fn wait_for_within<K>(api: &Api<K>, name: &str, what: &str, timeout: Duration, cond: impl Fn(&K) -> bool) -> K
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let found = tokio::time::timeout(
        timeout,
        await_condition(api.clone(), name, |o: Option<&K>| o.is_some_and(&cond)),
    )
    .await;
    match found {
        Ok(Ok(Some(obj))) => obj,
        Ok(Ok(None)) => unreachable!("the condition requires the object"),
        Ok(Err(err)) => panic!("watching {name} for {what}: {err}"),
        Err(_) => {
            let last = api.get_opt(name).await;
            panic!("timed out after {timeout:?} waiting for {name}: {what}; last seen: {last:#?}")
        }
    }
}

/// Waits until the object is gone from the API server.
pub async fn wait_deleted<K>(api: &Api<K>, name: &str)
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    wait_until(TIMEOUT, &format!("{name} to be deleted"), || async {
        api.get_opt(name).await.unwrap().is_none()
    })
    .await
}

/// Get, modify, replace, retried on 409 Conflict: the operator writes the same object
/// (status, finalizers) concurrently, so a replace may carry a stale resourceVersion.
pub async fn update<K>(api: &Api<K>, name: &str, modify: impl Fn(&mut K)) -> K
where
    K: Resource + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    for _ in 0..20 {
        let mut obj = api.get(name).await.unwrap_or_else(|e| panic!("get {name}: {e}"));
        modify(&mut obj);
        match api.replace(name, &PostParams::default(), &obj).await {
            Ok(updated) => return updated,
            Err(kube::Error::Api(status)) if status.code == 409 => continue,
            Err(e) => panic!("replace {name}: {e}"),
        }
    }
    panic!("replace {name}: still conflicting after 20 attempts")
}

/// Every object of `K` in the namespace as raw JSON (status included).
pub async fn list_raw<K>(env: &TestEnv) -> Vec<serde_json::Value>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Serialize,
{
    let api: Api<K> = env.api();
    api.list(&Default::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|o| serde_json::to_value(o).unwrap())
        .collect()
}

/// The notes of the namespace's Events with `reason`.
pub async fn events(env: &TestEnv, reason: &str) -> Vec<String> {
    env.api::<Event>()
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .map(|e| e.note.unwrap_or_default())
        .collect()
}

/// Waits for at least one Event with `reason`; returns the notes of all of them.
pub async fn wait_event(env: &TestEnv, reason: &str) -> Vec<String> {
    poll(TIMEOUT, &format!("a {reason} Event"), || async {
        let found = events(env, reason).await;
        if found.is_empty() {
            Err(String::new())
        } else {
            Ok(found)
        }
    })
    .await
}
