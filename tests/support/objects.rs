//! The objects tests create (Secrets, Queues, Consumers) and what the
//! operator reports on them: conditions, and the Queues' credentials Secrets.

use k8s_openapi::api::{apps::v1::Deployment, core::v1::Secret};
use kube::{Api, api::ObjectMeta};
use serde_json::{Value, json};
use streamq::api::{Condition, ConditionStatus, Consumer, Queue};

use super::{api::wait_for, env::TestEnv};

/// `base` with the top-level fields of `extra` set (replaced, not merged deeper).
pub fn with_fields(mut base: Value, extra: Value) -> Value {
    for (k, v) in extra.as_object().expect("an object of fields") {
        base[k] = v.clone();
    }
    base
}

/// A Secret with one key.
pub fn secret(name: &str, key: &str, value: &str) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        data: Some([(key.to_owned(), k8s_openapi::ByteString(value.as_bytes().to_vec()))].into()),
        ..Default::default()
    }
}

/// A Queue with the given spec.
pub fn queue(name: &str, spec: Value) -> Queue {
    serde_json::from_value(
        json!({"apiVersion": "streamq.dev/v1alpha1", "kind": "Queue", "metadata": {"name": name}, "spec": spec}),
    )
    .unwrap()
}

/// A Queue on the Redis of the Secret `redis-admin`, with `extra` spec fields.
pub fn external_queue(name: &str, extra: Value) -> Queue {
    let spec = json!({"broker": {"external": {"urlSecretRef": {"name": "redis-admin", "key": "url"}}}});
    queue(name, with_fields(spec, extra))
}

/// A Consumer of Queue `queue` with a one-container template, and `extra` spec fields.
pub fn consumer(name: &str, queue: &str, extra: Value) -> Consumer {
    let spec = json!({"queueRef": {"name": queue},
                      "template": {"spec": {"containers": [{"name": "w", "image": "example.com/w:1"}]}}});
    serde_json::from_value(json!({
        "apiVersion": "streamq.dev/v1alpha1", "kind": "Consumer", "metadata": {"name": name},
        "spec": with_fields(spec, extra),
    }))
    .unwrap()
}

/// The replicas a Deployment's spec asks for.
pub fn replicas(d: &Deployment) -> i32 {
    d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0)
}

/// The status conditions of a Queue or a Consumer.
pub trait Conditions {
    fn conditions(&self) -> &[Condition];

    fn condition(&self, type_: &str) -> Option<&Condition> {
        self.conditions().iter().find(|c| c.type_ == type_)
    }

    /// Whether condition `type_` is there with `status`.
    fn is(&self, type_: &str, status: ConditionStatus) -> bool {
        self.condition(type_).is_some_and(|c| c.status == status)
    }
}

impl Conditions for [Condition] {
    fn conditions(&self) -> &[Condition] {
        self
    }
}

impl Conditions for Queue {
    fn conditions(&self) -> &[Condition] {
        self.status.as_ref().map_or(&[], |s| &s.conditions)
    }
}

impl Conditions for Consumer {
    fn conditions(&self) -> &[Condition] {
        self.status.as_ref().map_or(&[], |s| &s.conditions)
    }
}

/// The condition `type_` of a Queue or Consumer, from its raw JSON (so it
/// also works on objects the Rust types cannot read).
pub fn condition_of(obj: &Value, type_: &str) -> Option<Condition> {
    obj.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .filter_map(|c| serde_json::from_value::<Condition>(c.clone()).ok())
        .find(|c| c.type_ == type_)
}

/// Waits until the object has condition `type_` with `status` and `reason`.
pub async fn wait_condition<K>(api: &Api<K>, name: &str, type_: &str, status: ConditionStatus, reason: &str) -> K
where
    K: Conditions + kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    wait_for(api, name, &format!("{type_}={status:?} ({reason})"), |o: &K| {
        o.condition(type_)
            .is_some_and(|c| c.status == status && c.reason == reason)
    })
    .await
}

/// Waits until the object is Ready, for whatever reason.
pub async fn wait_ready<K>(api: &Api<K>, name: &str) -> K
where
    K: Conditions + kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    wait_for(api, name, "Ready", |o: &K| o.is("Ready", ConditionStatus::True)).await
}

/// Waits until the Queue is Ready because its Redis is provisioned.
pub async fn wait_provisioned(env: &TestEnv, name: &str) -> Queue {
    wait_condition(&env.api::<Queue>(), name, "Ready", ConditionStatus::True, "Provisioned").await
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
        let consumer = format!("{queue}-consumer");
        Self {
            stream: env.secret_text(&consumer, "stream").await,
            dead_letter: env.secret_text(&consumer, "deadLetterStream").await,
            producer_url: env.secret_text(&format!("{queue}-producer"), "url").await,
            consumer_url: env.secret_text(&consumer, "url").await,
        }
    }

    /// The stats hash of `group`: streamq's own key naming.
    pub fn stats(&self, group: &str) -> String {
        streamq::redis::keys::stats_key(&self.stream, group)
    }
}
