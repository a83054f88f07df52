//! Phase 2, pure: the Kubernetes objects a Queue owns, built from its spec and
//! the secrets already known. No client; unit-tested from YAML fixtures.

use std::collections::BTreeMap;

use k8s_openapi::{
    ByteString,
    api::{
        apps::v1::{StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec},
        core::v1::{
            Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, ExecAction,
            PersistentVolumeClaim, PersistentVolumeClaimSpec, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
            SeccompProfile, Secret, SecurityContext, Service, ServicePort, ServiceSpec, TCPSocketAction, Volume,
            VolumeMount, VolumeResourceRequirements,
        },
    },
    apimachinery::pkg::{
        api::resource::Quantity,
        apis::meta::v1::{LabelSelector, ObjectMeta},
        util::intstr::IntOrString,
    },
};
use kube::{Resource, ResourceExt};
use sha2::{Digest, Sha256};

use crate::api::{AppendFsync, DeletionPolicy, ManagedBroker, Queue};

pub const REDIS_PORT: i32 = 6379;
/// The managed Redis' administrative ACL user: the operator's own.
pub const ADMIN_USER: &str = "streamq-admin";
/// A user that may only PING, without a password: the readiness probe's.
pub const PROBE_USER: &str = "streamq-probe";
/// Redis 7.2 is the newest BSD-licensed Redis; Valkey images work as well.
pub const DEFAULT_IMAGE: &str = "docker.io/library/redis:7.2.7";
/// The uid of the `redis` user in the official image; the pod runs as it.
const REDIS_UID: i64 = 999;
const CONFIG_HASH_ANNOTATION: &str = "streamq.dev/config-hash";

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

fn labels(queue: &Queue, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".into(), component.into()),
        ("app.kubernetes.io/instance".into(), queue.name_any()),
        ("app.kubernetes.io/managed-by".into(), "streamq".into()),
        ("streamq.dev/queue".into(), queue.name_any()),
    ])
}

fn meta(queue: &Queue, name: &str, component: &str) -> ObjectMeta {
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

/// redis.conf. The admin password appears only as its SHA-256 (`#<hash>`), so
/// the ConfigMap holds no secret.
pub fn redis_conf(queue: &Queue, managed: &ManagedBroker, admin_password: &str) -> String {
    let fsync = match managed.appendfsync {
        AppendFsync::Always => "always",
        AppendFsync::Everysec => "everysec",
        AppendFsync::No => "no",
    };
    let hash = hex::encode(Sha256::digest(admin_password.as_bytes()));
    format!(
        "# Generated by streamq for Queue {ns}/{name}; edits are overwritten.\n\
         bind * -::*\n\
         port {REDIS_PORT}\n\
         protected-mode yes\n\
         dir /data\n\
         # The append-only file is the persistence; no RDB snapshots compete for I/O.\n\
         appendonly yes\n\
         appendfsync {fsync}\n\
         save \"\"\n\
         # Nobody connects without a user: the default user is off.\n\
         user default off\n\
         user {ADMIN_USER} on #{hash} ~* &* +@all\n\
         user {PROBE_USER} on nopass -@all +ping\n",
        ns = queue.namespace().unwrap_or_default(),
        name = queue.name_any(),
    )
}

pub fn config_map(queue: &Queue, conf: &str) -> ConfigMap {
    ConfigMap {
        metadata: meta(queue, &names(queue).config, "redis"),
        data: Some(BTreeMap::from([("redis.conf".to_owned(), conf.to_owned())])),
        ..ConfigMap::default()
    }
}

/// Headless, so the name resolves to the one pod: the StatefulSet's governing Service.
pub fn service(queue: &Queue) -> Service {
    let n = names(queue);
    Service {
        metadata: meta(queue, &n.redis, "redis"),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            selector: Some(labels(queue, "redis")),
            ports: Some(vec![ServicePort {
                name: Some("redis".into()),
                port: REDIS_PORT,
                target_port: Some(IntOrString::String("redis".into())),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

pub fn stateful_set(queue: &Queue, managed: &ManagedBroker, conf: &str) -> StatefulSet {
    let n = names(queue);
    let selector = labels(queue, "redis");
    let (data_volume, claims) = match &managed.storage {
        Some(storage) => (
            None,
            Some(vec![PersistentVolumeClaim {
                metadata: ObjectMeta {
                    name: Some("data".into()),
                    ..ObjectMeta::default()
                },
                spec: Some(PersistentVolumeClaimSpec {
                    access_modes: Some(vec!["ReadWriteOnce".into()]),
                    storage_class_name: storage.storage_class_name.clone(),
                    resources: Some(VolumeResourceRequirements {
                        requests: Some(BTreeMap::from([("storage".into(), Quantity(storage.size.clone()))])),
                        ..VolumeResourceRequirements::default()
                    }),
                    ..PersistentVolumeClaimSpec::default()
                }),
                ..PersistentVolumeClaim::default()
            }]),
        ),
        None => (
            Some(Volume {
                name: "data".into(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Volume::default()
            }),
            None,
        ),
    };
    let volumes = std::iter::once(Volume {
        name: "config".into(),
        config_map: Some(ConfigMapVolumeSource {
            name: n.config.clone(),
            ..ConfigMapVolumeSource::default()
        }),
        ..Volume::default()
    })
    .chain(data_volume)
    .collect();
    // Delete the claim with the StatefulSet only when the user asked for the data to go.
    let claim_policy = match queue.spec.deletion_policy {
        DeletionPolicy::Delete => "Delete",
        DeletionPolicy::Retain => "Retain",
    };
    let container = Container {
        name: "redis".into(),
        image: Some(managed.image.clone().unwrap_or_else(|| DEFAULT_IMAGE.into())),
        command: Some(vec!["redis-server".into(), "/etc/redis/redis.conf".into()]),
        ports: Some(vec![ContainerPort {
            name: Some("redis".into()),
            container_port: REDIS_PORT,
            ..ContainerPort::default()
        }]),
        readiness_probe: Some(Probe {
            exec: Some(ExecAction {
                command: Some(vec![
                    "sh".into(),
                    "-c".into(),
                    format!("redis-cli --no-auth-warning --user {PROBE_USER} --pass probe ping | grep -q PONG"),
                ]),
            }),
            period_seconds: Some(5),
            timeout_seconds: Some(3),
            ..Probe::default()
        }),
        liveness_probe: Some(Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::String("redis".into()),
                ..TCPSocketAction::default()
            }),
            initial_delay_seconds: Some(10),
            period_seconds: Some(10),
            ..Probe::default()
        }),
        resources: managed.resources.clone(),
        // Pod Security `restricted`, complete on the container itself (not
        // only inherited from the pod) so that it holds for every container
        // this pod ever gets.
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(REDIS_UID),
            run_as_group: Some(REDIS_UID),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Capabilities::default()
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..SeccompProfile::default()
            }),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(vec![
            VolumeMount {
                name: "data".into(),
                mount_path: "/data".into(),
                ..VolumeMount::default()
            },
            VolumeMount {
                name: "config".into(),
                mount_path: "/etc/redis".into(),
                read_only: Some(true),
                ..VolumeMount::default()
            },
        ]),
        ..Container::default()
    };
    StatefulSet {
        metadata: meta(queue, &n.redis, "redis"),
        spec: Some(StatefulSetSpec {
            replicas: Some(1),
            service_name: Some(n.redis.clone()),
            selector: LabelSelector {
                match_labels: Some(selector.clone()),
                ..LabelSelector::default()
            },
            persistent_volume_claim_retention_policy: Some(StatefulSetPersistentVolumeClaimRetentionPolicy {
                when_deleted: Some(claim_policy.into()),
                when_scaled: Some("Retain".into()),
            }),
            volume_claim_templates: claims,
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(selector),
                    // A config change rolls the pod.
                    annotations: Some(BTreeMap::from([(
                        CONFIG_HASH_ANNOTATION.into(),
                        hex::encode(&Sha256::digest(conf.as_bytes())[..8]),
                    )])),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    enable_service_links: Some(false),
                    automount_service_account_token: Some(false),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(REDIS_UID),
                        run_as_group: Some(REDIS_UID),
                        fs_group: Some(REDIS_UID),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".into(),
                            ..SeccompProfile::default()
                        }),
                        ..PodSecurityContext::default()
                    }),
                    containers: vec![container],
                    volumes: Some(volumes),
                    ..PodSpec::default()
                }),
            },
            ..StatefulSetSpec::default()
        }),
        ..StatefulSet::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn managed_queue(extra: &str) -> (Queue, ManagedBroker) {
        let yaml = format!(
            "apiVersion: streamq.dev/v1alpha1\nkind: Queue\nmetadata: {{name: orders, namespace: shop, uid: u1}}\n\
             spec: {{broker: {{managed: {{appendfsync: always{extra}}}}}}}"
        );
        let q: Queue = crate::api::from_yaml(&yaml).unwrap();
        let crate::api::Broker::Managed(m) = q.spec.broker.clone() else {
            unreachable!()
        };
        (q, m)
    }

    #[test]
    fn redis_conf_has_aof_acl_and_no_plain_password() {
        let (q, m) = managed_queue("");
        let conf = redis_conf(&q, &m, "s3cret");
        for line in [
            "appendonly yes",
            "appendfsync always",
            "protected-mode yes",
            "user default off",
        ] {
            assert!(conf.lines().any(|l| l == line), "missing {line:?} in\n{conf}");
        }
        assert!(conf.contains(&format!("user {ADMIN_USER} on #")));
        assert!(!conf.contains("s3cret"));
    }

    #[test]
    fn without_storage_the_data_is_an_empty_dir() {
        let (q, m) = managed_queue("");
        let sts = stateful_set(&q, &m, "conf");
        let spec = sts.spec.unwrap();
        assert!(spec.volume_claim_templates.is_none());
        let volumes = spec.template.spec.unwrap().volumes.unwrap();
        assert!(volumes.iter().any(|v| v.name == "data" && v.empty_dir.is_some()));
    }

    #[test]
    fn with_storage_a_claim_template_is_used() {
        let (q, m) = managed_queue(", storage: {size: 2Gi, storageClassName: fast}");
        let spec = stateful_set(&q, &m, "conf").spec.unwrap();
        let claim = &spec.volume_claim_templates.unwrap()[0];
        let claim_spec = claim.spec.as_ref().unwrap();
        assert_eq!(claim_spec.storage_class_name.as_deref(), Some("fast"));
        assert_eq!(
            claim_spec.resources.as_ref().unwrap().requests.as_ref().unwrap()["storage"],
            Quantity("2Gi".into())
        );
        assert!(
            !spec
                .template
                .spec
                .unwrap()
                .volumes
                .unwrap()
                .iter()
                .any(|v| v.name == "data")
        );
    }

    /// The Pod Security `restricted` checks, for every container (init
    /// containers included), with a container's own settings taking
    /// precedence over the pod's as the kubelet applies them.
    fn restricted_violations(pod: &PodSpec) -> Vec<String> {
        let psc = pod.security_context.clone().unwrap_or_default();
        let mut violations = vec![];
        if psc.run_as_user == Some(0) {
            violations.push("pod runAsUser 0".to_owned());
        }
        for c in pod.containers.iter().chain(pod.init_containers.iter().flatten()) {
            let sc = c.security_context.clone().unwrap_or_default();
            let mut check = |ok: bool, what: &str| {
                if !ok {
                    violations.push(format!("{}: {what}", c.name));
                }
            };
            check(sc.run_as_non_root.or(psc.run_as_non_root) == Some(true), "runAsNonRoot");
            check(
                sc.run_as_user.or(psc.run_as_user).is_some_and(|uid| uid > 0),
                "a numeric non-root runAsUser",
            );
            check(
                sc.allow_privilege_escalation == Some(false),
                "allowPrivilegeEscalation false",
            );
            check(
                sc.capabilities.as_ref().and_then(|c| c.drop.as_deref()) == Some(&["ALL".to_owned()][..]),
                "capabilities drop ALL",
            );
            check(
                sc.capabilities
                    .as_ref()
                    .and_then(|c| c.add.as_ref())
                    .is_none_or(|add| add.is_empty()),
                "no added capability",
            );
            check(
                sc.seccomp_profile
                    .as_ref()
                    .or(psc.seccomp_profile.as_ref())
                    .is_some_and(|p| p.type_ == "RuntimeDefault" || p.type_ == "Localhost"),
                "seccompProfile RuntimeDefault",
            );
            check(sc.privileged != Some(true), "not privileged");
        }
        violations
    }

    #[test]
    fn pod_is_restricted_and_probed() {
        for extra in ["", ", storage: {size: 1Gi}"] {
            let (q, m) = managed_queue(extra);
            let pod = stateful_set(&q, &m, "conf").spec.unwrap().template.spec.unwrap();
            assert_eq!(restricted_violations(&pod), Vec::<String>::new());
            let c = &pod.containers[0];
            assert_eq!(c.security_context.as_ref().unwrap().run_as_user, Some(REDIS_UID));
            assert!(c.readiness_probe.as_ref().unwrap().exec.is_some());
            assert!(pod.volumes.unwrap().iter().all(|v| v.host_path.is_none()));
        }
    }

    #[test]
    fn the_restricted_check_catches_what_it_must() {
        let (q, m) = managed_queue("");
        let mut pod = stateful_set(&q, &m, "conf").spec.unwrap().template.spec.unwrap();
        let mut init = pod.containers[0].clone();
        init.name = "init".into();
        init.security_context = None;
        pod.init_containers = Some(vec![init]);
        pod.security_context = None;
        let violations = restricted_violations(&pod);
        assert!(
            violations.contains(&"init: allowPrivilegeEscalation false".to_owned()),
            "{violations:?}"
        );
        assert!(violations.contains(&"init: runAsNonRoot".to_owned()), "{violations:?}");
        assert!(!violations.iter().any(|v| v.starts_with("redis:")), "{violations:?}");
    }

    #[test]
    fn owned_objects_point_at_the_queue() {
        let (q, m) = managed_queue("");
        let sts = stateful_set(&q, &m, "conf");
        let owner = &sts.metadata.owner_references.unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.controller),
            ("Queue", "orders", Some(true))
        );
    }

    #[test]
    fn passwords_are_random_hex() {
        let (a, b) = (generate_password(), generate_password());
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
    }
}
