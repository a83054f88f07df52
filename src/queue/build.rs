//! The build phase, pure: the names, Secrets and Redis-side spec of a Queue,
//! from its spec and the passwords already known. No client; unit-tested.
//! The managed Redis' own objects are built in [`super::managed`].

use std::collections::BTreeMap;

use k8s_openapi::{ByteString, api::core::v1::Secret, apimachinery::pkg::apis::meta::v1::ObjectMeta};
use kube::{Resource, ResourceExt};

use super::claim::Claim;
use crate::{
    api::Queue,
    redis::{
        acl::{self, Role},
        admin::QueueSpec,
    },
};

pub const REDIS_PORT: i32 = 6379;
/// The managed Redis' administrative ACL user: the operator's own.
pub const ADMIN_USER: &str = "streamq-admin";

/// Names of everything a Queue owns.
pub struct Names {
    pub redis: String,
    pub admin_secret: String,
    pub config: String,
    pub producer_secret: String,
    pub consumer_secret: String,
}

pub fn names(queue: &Queue) -> Names {
    let q = queue.name_any();
    Names {
        redis: format!("{q}-redis"),
        admin_secret: format!("{q}-redis-admin"),
        config: format!("{q}-redis-config"),
        producer_secret: format!("{q}-producer"),
        consumer_secret: format!("{q}-consumer"),
    }
}

/// A fresh random password: 32 hex characters, 128 bits.
pub fn generate_password() -> String {
    use rand::{TryRngCore, rngs::OsRng};
    let mut bytes = [0u8; 16];
    // The OS random source failing is not something to recover from.
    OsRng
        .try_fill_bytes(&mut bytes)
        .expect("the operating system's random source");
    hex::encode(bytes)
}

pub(super) fn labels(queue: &Queue, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".into(), component.into()),
        ("app.kubernetes.io/instance".into(), queue.name_any()),
        ("app.kubernetes.io/managed-by".into(), "streamq".into()),
        ("streamq.dev/queue".into(), queue.name_any()),
    ])
}

pub(super) fn meta(queue: &Queue, name: &str, component: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: queue.namespace(),
        labels: Some(labels(queue, component)),
        owner_references: queue.controller_owner_ref(&()).map(|r| vec![r]),
        ..ObjectMeta::default()
    }
}

fn secret_data(pairs: &[(&str, &str)]) -> BTreeMap<String, ByteString> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), ByteString(v.as_bytes().to_vec())))
        .collect()
}

/// The Secret holding one role's credentials: what a producer or a worker pod mounts.
pub fn credentials_secret(
    queue: &Queue,
    name: &str,
    url: &str,
    username: &str,
    password: &str,
    dead_letter: Option<&str>,
) -> Secret {
    Secret {
        metadata: meta(queue, name, "streamq-credentials"),
        data: Some(secret_data(&[
            ("url", url),
            ("username", username),
            ("password", password),
            ("stream", &queue.stream_key()),
            ("deadLetterStream", dead_letter.unwrap_or("")),
        ])),
        type_: Some("Opaque".into()),
        ..Secret::default()
    }
}

/// The managed Redis' admin Secret, created once with a generated password.
pub fn admin_secret(queue: &Queue, password: &str) -> Secret {
    let n = names(queue);
    let url = format!("redis://{ADMIN_USER}:{password}@{}:{REDIS_PORT}/0", service_host(queue));
    Secret {
        metadata: meta(queue, &n.admin_secret, "redis"),
        data: Some(secret_data(&[
            ("username", ADMIN_USER),
            ("password", password),
            ("url", &url),
        ])),
        type_: Some("Opaque".into()),
        ..Secret::default()
    }
}

/// The in-cluster address of the managed Redis.
pub fn service_host(queue: &Queue) -> String {
    format!("{}.{}.svc", names(queue).redis, queue.namespace().unwrap_or_default())
}

/// What `queue` wants inside Redis, with these passwords.
pub fn redis_spec(queue: &Queue, producer_password: String, consumer_password: String) -> QueueSpec {
    let ns = queue.namespace().unwrap_or_default();
    let name = queue.name_any();
    let retention = queue.spec.retention.clone().unwrap_or_default();
    QueueSpec {
        stream: queue.stream_key(),
        dead_letter: queue.dead_letter_stream_key(),
        owner: Claim::of(queue),
        producer_user: acl::user_name(&ns, &name, Role::Producer),
        producer_password,
        consumer_user: acl::user_name(&ns, &name, Role::Consumer),
        consumer_password,
        max_length: retention.max_length,
        max_age: retention.max_age.map(|d| d.as_std()),
        drop_unprocessed: retention.drop_unprocessed,
        max_deliveries: queue.spec.delivery.max_deliveries,
        visibility_timeout: queue.spec.delivery.visibility_timeout.as_std(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_random_hex() {
        let (a, b) = (generate_password(), generate_password());
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn redis_spec_names_the_users_by_namespace_queue_and_role() {
        let q: Queue = crate::api::from_yaml(
            "apiVersion: streamq.dev/v1alpha1\nkind: Queue\nmetadata: {name: orders, namespace: shop, uid: u1}\n\
             spec: {broker: {managed: {}}, retention: {maxLength: 10}}",
        )
        .unwrap();
        let spec = redis_spec(&q, "p".into(), "c".into());
        assert_eq!(spec.producer_user, "streamq.shop.orders.producer");
        assert_eq!(spec.consumer_user, "streamq.shop.orders.consumer");
        assert_eq!(spec.max_length, Some(10));
        assert!(spec.owner.starts_with("shop/orders/u1/"), "{}", spec.owner);
    }
}
