//! The `Queue` custom resource: a Redis stream managed as a work queue.
// Several printcolumn(...) entries repeat `type_ = ...`; clippy reads them as
// duplicated attributes of one item.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::api::core::v1::ResourceRequirements;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Condition, Duration, SecretKeyRef};

/// A durable work queue on a Redis stream: the broker, the stream, its dead-letter stream,
/// retention and per-queue credentials.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "streamq.dev",
    version = "v1alpha1",
    kind = "Queue",
    namespaced,
    status = "QueueStatus",
    shortname = "sq",
    category = "streamq",
    doc = "A durable work queue on a Redis stream, provisioned and kept in shape by streamq.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].status"#,
        description = "Whether the queue is usable"
    ),
    printcolumn(
        name = "Broker",
        type_ = "string",
        json_path = ".status.broker",
        description = "managed or external Redis"
    ),
    printcolumn(
        name = "Length",
        type_ = "integer",
        json_path = ".status.length",
        description = "Entries in the stream"
    ),
    printcolumn(
        name = "Rate",
        type_ = "number",
        json_path = ".status.ingressRate",
        description = "Messages added per second"
    ),
    printcolumn(
        name = "DLQ",
        type_ = "integer",
        json_path = ".status.deadLetterLength",
        description = "Entries in the dead-letter stream"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[x_kube(validation = Rule::new("has(self.streamKey) == has(oldSelf.streamKey) && (!has(self.streamKey) || self.streamKey == oldSelf.streamKey)").message("spec.streamKey is immutable: it cannot be set, changed or removed after creation; create a new Queue instead"))]
#[serde(rename_all = "camelCase")]
pub struct QueueSpec {
    /// Where the Redis server comes from: exactly one of `external` or `managed`.
    #[x_kube(validation = Rule::new("has(self.external) != has(self.managed)").message("spec.broker must set exactly one of external or managed"))]
    pub broker: Broker,

    /// The Redis key of the stream. Immutable. Defaults to `streamq:{<namespace>.<name>}`;
    /// the braces make the stream, its dead letters and stats share one Redis Cluster slot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub stream_key: Option<String>,

    /// How long entries are kept. Without it the stream grows until entries are deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<Retention>,

    /// Redelivery of messages that a worker took but did not acknowledge.
    #[serde(default)]
    pub delivery: Delivery,

    /// Where messages go after too many failed deliveries.
    #[serde(default)]
    pub dead_letter: DeadLetter,

    /// What happens to the data in Redis when the Queue is deleted.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
}

/// The Redis server behind a Queue.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Broker {
    /// A Redis (7.0 or newer) or Valkey server run elsewhere.
    External(ExternalBroker),
    /// A Redis server that streamq runs for this Queue as a StatefulSet.
    Managed(ManagedBroker),
}

/// Written by hand: the derived schema of an externally tagged enum is a
/// `oneOf`, whose admission error ("must validate one and only one schema")
/// hides the CEL rule's message that says what to fix. Both variants are
/// plain optional properties here; the rule on `spec.broker` demands one.
impl JsonSchema for Broker {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Broker".into()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let mut external = generator.subschema_for::<ExternalBroker>();
        external.insert(
            "description".into(),
            "A Redis (7.0 or newer) or Valkey server run elsewhere.".into(),
        );
        let mut managed = generator.subschema_for::<ManagedBroker>();
        managed.insert(
            "description".into(),
            "A Redis server that streamq runs for this Queue as a StatefulSet.".into(),
        );
        schemars::json_schema!({
            "type": "object",
            "properties": { "external": external, "managed": managed },
        })
    }
}

/// A Redis server that streamq does not run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExternalBroker {
    /// A Secret key holding a `redis://[user:pass@]host:port[/db]` or `rediss://` URL of a user
    /// allowed to administer streams and ACL users. The Secret is watched, so a rotated URL is picked up.
    pub url_secret_ref: SecretKeyRef,
}

/// A single-replica Redis that streamq runs, with append-only persistence.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ManagedBroker {
    /// Container image of Redis 7.0+ or Valkey. Defaults to the image streamq was tested with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// A PersistentVolumeClaim for the data. Without it the data lives in an emptyDir and is lost
    /// with the pod; the Queue then reports Persistence=False.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<Storage>,
    /// How often the append-only file is fsynced: `always` loses nothing that was acknowledged,
    /// `everysec` may lose about one second of writes on a crash, `no` leaves it to the kernel.
    #[serde(default)]
    pub appendfsync: AppendFsync,
    /// CPU and memory for the Redis container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

/// Persistent storage for the managed Redis.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Storage {
    /// Requested size, as a Kubernetes quantity such as `1Gi`.
    pub size: String,
    /// StorageClass of the claim. Defaults to the cluster's default class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
}

/// The `appendfsync` policy of Redis' append-only file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AppendFsync {
    Always,
    #[default]
    Everysec,
    No,
}

/// Retention of stream entries. Both limits may be set; each is applied on every resync.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Retention {
    /// Keep about this many entries (`XTRIM MAXLEN ~`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_length: Option<u64>,
    /// Drop entries older than this (`XTRIM MINID ~`), such as `24h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<Duration>,
    /// By default trimming never removes an entry some consumer group has not yet acknowledged,
    /// so the limits are soft. Set true to make them hard caps that may drop unprocessed messages.
    #[serde(default)]
    pub drop_unprocessed: bool,
}

/// Redelivery policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Delivery {
    /// Deliveries after which a message that is still not acknowledged goes to the dead-letter stream.
    #[serde(default = "default_max_deliveries")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_deliveries: u32,
    /// How long a delivered, unacknowledged message stays with its worker before another may take it.
    #[serde(default = "default_visibility_timeout")]
    pub visibility_timeout: Duration,
}

fn default_max_deliveries() -> u32 {
    5
}
fn default_visibility_timeout() -> Duration {
    Duration::from_secs(300)
}

impl Default for Delivery {
    fn default() -> Self {
        Self {
            max_deliveries: default_max_deliveries(),
            visibility_timeout: default_visibility_timeout(),
        }
    }
}

/// The dead-letter stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    /// Move messages that exhausted their deliveries to the dead-letter stream. When false they are
    /// redelivered forever.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Redis key of the dead-letter stream. Defaults to `<streamKey>:dlq`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub stream_key: Option<String>,
}

fn default_true() -> bool {
    true
}

impl Default for DeadLetter {
    fn default() -> Self {
        Self {
            enabled: true,
            stream_key: None,
        }
    }
}

/// What deleting the Queue does to its data.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum DeletionPolicy {
    /// Keep the streams; remove only the Queue's ACL users.
    #[default]
    Retain,
    /// Remove the streams, the dead-letter stream, stats keys and ACL users.
    Delete,
}

/// Observed state of a Queue.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueueStatus {
    /// The metadata.generation last reconciled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, BrokerReady, Degraded and Persistence.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// `managed` or `external`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker: Option<String>,
    /// The Redis key of the stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_key: Option<String>,
    /// The Redis key of the dead-letter stream, when enabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter_stream_key: Option<String>,
    /// Entries in the stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub length: Option<u64>,
    /// Entries in the dead-letter stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter_length: Option<u64>,
    /// Messages added per second, smoothed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_rate: Option<f64>,
    /// Secret with the producer credentials (url, username, password, stream, deadLetterStream).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub producer_secret: Option<String>,
    /// Secret with the consumer credentials (url, username, password, stream, deadLetterStream).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer_secret: Option<String>,
}

impl Queue {
    /// The stream key in force: the spec's, or the default `streamq:{<namespace>.<name>}`.
    pub fn stream_key(&self) -> String {
        self.spec.stream_key.clone().unwrap_or_else(|| {
            let ns = self.metadata.namespace.as_deref().unwrap_or("default");
            let name = self.metadata.name.as_deref().unwrap_or_default();
            format!("streamq:{{{ns}.{name}}}")
        })
    }

    /// The dead-letter stream key in force, when dead-lettering is enabled.
    pub fn dead_letter_stream_key(&self) -> Option<String> {
        self.spec.dead_letter.enabled.then(|| {
            self.spec
                .dead_letter
                .stream_key
                .clone()
                .unwrap_or_else(|| format!("{}:dlq", self.stream_key()))
        })
    }
}
