//! The build phase, pure: the Deployment a Consumer runs. The user's template is
//! taken as it is; streamq only adds the label it selects on and the STREAMQ_*
//! environment to containers that do not define those names.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        apps::v1::{Deployment, DeploymentSpec},
        core::v1::{EnvVar, EnvVarSource, ObjectFieldSelector, SecretKeySelector},
    },
    apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta},
};
use kube::{Resource, ResourceExt};

use crate::api::Consumer;

/// The label every worker pod of a Consumer carries, and the Deployment selects on.
pub const CONSUMER_LABEL: &str = "streamq.dev/consumer";

/// What a Consumer's Deployment needs to know of its Queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueFacts {
    pub stream: String,
    pub dead_letter: Option<String>,
    /// The Queue's consumer credentials Secret (key `url`).
    pub consumer_secret: String,
    pub max_deliveries: u32,
    pub visibility_timeout_ms: u64,
}

/// `status.selector` and the Deployment's selector.
pub fn selector(consumer: &Consumer) -> String {
    format!("{CONSUMER_LABEL}={}", consumer.name_any())
}

/// The env contract, in the order containers get it.
pub fn env_contract(consumer: &Consumer, queue: &QueueFacts) -> Vec<EnvVar> {
    let value = |name: &str, value: String| EnvVar {
        name: name.into(),
        value: Some(value),
        ..EnvVar::default()
    };
    let mut env = vec![
        EnvVar {
            name: "STREAMQ_REDIS_URL".into(),
            // Never inlined: the URL carries the consumer user's password.
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: queue.consumer_secret.clone(),
                    key: "url".into(),
                    optional: Some(false),
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        },
        value("STREAMQ_STREAM", queue.stream.clone()),
        value("STREAMQ_GROUP", consumer.group()),
    ];
    if let Some(dlq) = &queue.dead_letter {
        env.push(value("STREAMQ_DEAD_LETTER_STREAM", dlq.clone()));
    }
    env.push(EnvVar {
        name: "STREAMQ_CONSUMER".into(),
        // The pod name: unique per worker, and what scale-down protection keys on.
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: "metadata.name".into(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    });
    env.push(value("STREAMQ_CONCURRENCY", consumer.spec.concurrency.to_string()));
    env.push(value("STREAMQ_MAX_DELIVERIES", queue.max_deliveries.to_string()));
    env.push(value(
        "STREAMQ_VISIBILITY_TIMEOUT_MS",
        queue.visibility_timeout_ms.to_string(),
    ));
    env
}

pub fn deployment(consumer: &Consumer, queue: &QueueFacts, replicas: i32) -> Deployment {
    let name = consumer.name_any();
    let mut template = consumer.spec.template.clone();
    let meta = template.metadata.get_or_insert_with(ObjectMeta::default);
    meta.labels
        .get_or_insert_with(BTreeMap::new)
        .insert(CONSUMER_LABEL.into(), name.clone());
    if let Some(pod) = template.spec.as_mut() {
        let contract = env_contract(consumer, queue);
        for container in &mut pod.containers {
            let env = container.env.get_or_insert_with(Vec::new);
            for var in &contract {
                // The user's own definition of a name wins.
                if !env.iter().any(|e| e.name == var.name) {
                    env.push(var.clone());
                }
            }
        }
    }
    Deployment {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: consumer.namespace(),
            labels: Some(BTreeMap::from([
                (CONSUMER_LABEL.into(), name.clone()),
                ("app.kubernetes.io/managed-by".into(), "streamq".into()),
            ])),
            owner_references: consumer.controller_owner_ref(&()).map(|r| vec![r]),
            ..ObjectMeta::default()
        },
        spec: Some(DeploymentSpec {
            replicas: Some(replicas),
            selector: LabelSelector {
                match_labels: Some(BTreeMap::from([(CONSUMER_LABEL.into(), name)])),
                ..LabelSelector::default()
            },
            template,
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONSUMER: &str = r#"
apiVersion: streamq.dev/v1alpha1
kind: Consumer
metadata: {name: billing, namespace: shop, uid: u1}
spec:
  queueRef: {name: orders}
  concurrency: 4
  template:
    metadata:
      labels: {team: payments}
      annotations: {prometheus.io/scrape: "true"}
    spec:
      serviceAccountName: billing
      containers:
      - name: worker
        image: example.com/billing:1
        args: [worker, --, ./handle]
        env:
        - {name: STREAMQ_CONCURRENCY, value: "2"}
        - {name: LOG_LEVEL, value: debug}
        resources: {requests: {cpu: 100m}}
      - name: sidecar
        image: example.com/sidecar:1
"#;

    fn facts() -> QueueFacts {
        QueueFacts {
            stream: "streamq:{shop.orders}".into(),
            dead_letter: Some("streamq:{shop.orders}:dlq".into()),
            consumer_secret: "orders-consumer".into(),
            max_deliveries: 5,
            visibility_timeout_ms: 300_000,
        }
    }

    fn build() -> (Consumer, Deployment) {
        let c: Consumer = crate::api::from_yaml(CONSUMER).unwrap();
        let d = deployment(&c, &facts(), 3);
        (c, d)
    }

    fn env(d: &Deployment, container: usize) -> &[EnvVar] {
        d.spec.as_ref().unwrap().template.spec.as_ref().unwrap().containers[container]
            .env
            .as_deref()
            .unwrap()
    }

    #[test]
    fn the_template_is_kept_as_the_user_wrote_it() {
        let (c, d) = build();
        let original = c.spec.template.spec.unwrap();
        let built = d.spec.as_ref().unwrap().template.spec.clone().unwrap();
        assert_eq!(built.service_account_name, original.service_account_name);
        for (b, o) in built.containers.iter().zip(&original.containers) {
            assert_eq!(
                (&b.name, &b.image, &b.args, &b.resources),
                (&o.name, &o.image, &o.args, &o.resources)
            );
        }
        let meta = d.spec.as_ref().unwrap().template.metadata.as_ref().unwrap();
        assert_eq!(meta.labels.as_ref().unwrap()["team"], "payments");
        assert_eq!(meta.labels.as_ref().unwrap()[CONSUMER_LABEL], "billing");
        assert_eq!(meta.annotations, c.spec.template.metadata.unwrap().annotations);
    }

    #[test]
    fn the_env_contract_is_added_without_overriding_the_user() {
        let (_, d) = build();
        let worker = env(&d, 0);
        let concurrency: Vec<_> = worker.iter().filter(|e| e.name == "STREAMQ_CONCURRENCY").collect();
        assert_eq!(concurrency.len(), 1);
        assert_eq!(concurrency[0].value.as_deref(), Some("2"), "the user's value wins");
        assert!(worker.iter().any(|e| e.name == "LOG_LEVEL"));
        let url = worker.iter().find(|e| e.name == "STREAMQ_REDIS_URL").unwrap();
        assert!(url.value.is_none(), "the URL is never inlined");
        let secret = url.value_from.as_ref().unwrap().secret_key_ref.as_ref().unwrap();
        assert_eq!((secret.name.as_str(), secret.key.as_str()), ("orders-consumer", "url"));
        let sidecar = env(&d, 1);
        for name in [
            "STREAMQ_REDIS_URL",
            "STREAMQ_STREAM",
            "STREAMQ_GROUP",
            "STREAMQ_DEAD_LETTER_STREAM",
            "STREAMQ_CONSUMER",
            "STREAMQ_CONCURRENCY",
            "STREAMQ_MAX_DELIVERIES",
            "STREAMQ_VISIBILITY_TIMEOUT_MS",
        ] {
            assert!(sidecar.iter().any(|e| e.name == name), "{name} missing");
        }
        let consumer = sidecar.iter().find(|e| e.name == "STREAMQ_CONSUMER").unwrap();
        assert_eq!(
            consumer
                .value_from
                .as_ref()
                .unwrap()
                .field_ref
                .as_ref()
                .unwrap()
                .field_path,
            "metadata.name"
        );
        assert_eq!(
            sidecar
                .iter()
                .find(|e| e.name == "STREAMQ_GROUP")
                .unwrap()
                .value
                .as_deref(),
            Some("billing")
        );
    }

    #[test]
    fn the_deployment_selects_its_pods_and_is_owned() {
        let (c, d) = build();
        let spec = d.spec.as_ref().unwrap();
        assert_eq!(spec.replicas, Some(3));
        assert_eq!(spec.selector.match_labels.as_ref().unwrap()[CONSUMER_LABEL], "billing");
        assert_eq!(selector(&c), "streamq.dev/consumer=billing");
        assert_eq!(d.metadata.owner_references.unwrap()[0].kind, "Consumer");
    }
}
