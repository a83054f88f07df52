//! Helpers of the hardening tests (redis_access, redis_tls, hostile_input,
//! secrets_leak): conditions, credentials Secrets and raw Redis commands.

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Resource};
use serde::de::DeserializeOwned;
use streamq::api::{Condition, ConditionStatus, Consumer, Queue};

use super::TestEnv;

/// The condition `type_` of a Queue or Consumer, from its raw JSON (so it
/// also works on objects the Rust types cannot read).
pub fn condition_of(obj: &serde_json::Value, type_: &str) -> Option<Condition> {
    obj.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .filter_map(|c| serde_json::from_value::<Condition>(c.clone()).ok())
        .find(|c| c.type_ == type_)
}

pub fn queue_condition(q: &Queue, type_: &str) -> Option<Condition> {
    q.status.as_ref()?.conditions.iter().find(|c| c.type_ == type_).cloned()
}

pub fn consumer_condition(c: &Consumer, type_: &str) -> Option<Condition> {
    c.status.as_ref()?.conditions.iter().find(|c| c.type_ == type_).cloned()
}

/// Waits until the Queue has condition `type_` with `status` and `reason`.
pub async fn wait_queue(env: &TestEnv, name: &str, type_: &str, status: ConditionStatus, reason: &str) -> Queue {
    super::wait_for(
        &env.api::<Queue>(),
        name,
        &format!("{type_}={status:?} ({reason})"),
        |q: &Queue| queue_condition(q, type_).is_some_and(|c| c.status == status && c.reason == reason),
    )
    .await
}

pub async fn wait_queue_ready(env: &TestEnv, name: &str) -> Queue {
    wait_queue(env, name, "Ready", ConditionStatus::True, "Provisioned").await
}

/// One key of a Secret, as text.
pub async fn secret_text(env: &TestEnv, name: &str, key: &str) -> String {
    let s = env.api::<Secret>().get(name).await.unwrap();
    let data = s.data.unwrap_or_default();
    let bytes = data
        .get(key)
        .unwrap_or_else(|| panic!("Secret {name} has no key {key}"));
    String::from_utf8(bytes.0.clone()).unwrap()
}

/// What a Queue's two credentials Secrets hold.
pub struct QueueCredentials {
    pub stream: String,
    pub dead_letter: String,
    pub producer_url: String,
    pub consumer_url: String,
}

impl QueueCredentials {
    pub async fn read(env: &TestEnv, queue: &str) -> Self {
        Self {
            stream: secret_text(env, &format!("{queue}-consumer"), "stream").await,
            dead_letter: secret_text(env, &format!("{queue}-consumer"), "deadLetterStream").await,
            producer_url: secret_text(env, &format!("{queue}-producer"), "url").await,
            consumer_url: secret_text(env, &format!("{queue}-consumer"), "url").await,
        }
    }

    /// The stats hash of `group`: streamq's own key naming.
    pub fn stats(&self, group: &str) -> String {
        streamq::redis::keys::stats_key(&self.stream, group)
    }
}

pub async fn connect(url: &str) -> ::redis::aio::MultiplexedConnection {
    let config = ::redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(10)))
        .set_response_timeout(Some(Duration::from_secs(10)));
    ::redis::Client::open(url)
        .unwrap_or_else(|e| panic!("a Redis URL: {e}"))
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"))
}

/// Sends one raw command.
pub async fn run(
    conn: &mut ::redis::aio::MultiplexedConnection,
    args: &[&str],
) -> ::redis::RedisResult<::redis::Value> {
    let mut c = ::redis::cmd(args[0]);
    for a in &args[1..] {
        c.arg(*a);
    }
    c.query_async(conn).await
}

/// The command was refused by the ACL: the server's NOPERM, nothing else.
#[track_caller]
pub fn assert_noperm(result: &::redis::RedisResult<::redis::Value>, what: &str) {
    match result {
        Err(e) => assert_eq!(
            e.kind(),
            ::redis::ErrorKind::Server(::redis::ServerErrorKind::NoPerm),
            "{what}: expected NOPERM, got {e}"
        ),
        Ok(v) => panic!("{what}: expected NOPERM, but it was allowed and returned {v:?}"),
    }
}

#[track_caller]
pub fn assert_allowed(result: &::redis::RedisResult<::redis::Value>, what: &str) {
    if let Err(e) = result {
        panic!("{what}: expected to be allowed, got {e}");
    }
}

/// Polls `cond` every 100 ms until it holds; fails after `timeout`.
pub async fn poll<F, Fut>(timeout: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if cond().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every object of `K` in the namespace as raw JSON (status included).
pub async fn list_raw<K>(env: &TestEnv) -> Vec<serde_json::Value>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + serde::Serialize,
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
