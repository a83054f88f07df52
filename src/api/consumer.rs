//! The `Consumer` custom resource: the user's workers for one Queue, autoscaled to a latency SLO.
// Several printcolumn(...) entries repeat `type_ = ...`; clippy reads them as
// duplicated attributes of one item.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::api::core::v1::PodTemplateSpec;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Condition, Duration, LocalRef};

/// Workers for one Queue, run as a Deployment and scaled to keep every message's wait under
/// `autoscaling.targetLatency`.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "streamq.dev",
    version = "v1alpha1",
    kind = "Consumer",
    namespaced,
    status = "ConsumerStatus",
    shortname = "sqc",
    category = "streamq",
    doc = "Workers for one Queue, run as a Deployment and autoscaled to a latency target.",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(
        name = "Queue",
        type_ = "string",
        json_path = ".spec.queueRef.name",
        description = "The Queue consumed"
    ),
    printcolumn(
        name = "Replicas",
        type_ = "integer",
        json_path = ".status.replicas",
        description = "Worker pods now"
    ),
    printcolumn(
        name = "Desired",
        type_ = "integer",
        json_path = ".status.desiredReplicas",
        description = "Worker pods wanted"
    ),
    printcolumn(
        name = "Lag",
        type_ = "integer",
        json_path = ".status.lag",
        description = "Entries not yet delivered to the group"
    ),
    printcolumn(
        name = "Pending",
        type_ = "integer",
        json_path = ".status.pending",
        description = "Entries delivered but not acknowledged"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    printcolumn(
        name = "Rate",
        type_ = "number",
        json_path = ".status.arrivalRate",
        priority = 1,
        description = "Messages arriving per second"
    ),
    printcolumn(
        name = "Processing",
        type_ = "string",
        json_path = ".status.processingTime",
        priority = 1,
        description = "Measured processing time of one message"
    )
)]
#[x_kube(validation = Rule::new("has(self.group) == has(oldSelf.group) && (!has(self.group) || self.group == oldSelf.group)").message("spec.group is immutable: it cannot be set, changed or removed after creation; create a new Consumer instead"))]
#[serde(rename_all = "camelCase")]
pub struct ConsumerSpec {
    /// The Queue to consume, in the same namespace. Immutable.
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.queueRef is immutable: create a new Consumer to consume another Queue"))]
    pub queue_ref: LocalRef,

    /// The Redis consumer group. Immutable. Defaults to the Consumer's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub group: Option<String>,

    /// Where a new group starts reading: `Earliest` takes every entry still in the stream,
    /// `Latest` only entries added after the group is created.
    #[serde(default)]
    pub start_from: StartFrom,

    /// The worker pods. streamq adds the labels it selects on and the STREAMQ_* environment
    /// variables to every container that does not set them; it changes nothing else.
    #[schemars(schema_with = "super::pod_template::schema")]
    pub template: PodTemplateSpec,

    /// Messages each replica processes at once.
    #[serde(default = "default_concurrency")]
    #[schemars(range(min = 1, max = 10000))]
    pub concurrency: u32,

    /// Replicas when `autoscaling` is absent; set by `kubectl scale`. Ignored while autoscaling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub replicas: Option<i32>,

    /// Size the Deployment to keep message wait under `targetLatency`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<Autoscaling>,
}

fn default_concurrency() -> u32 {
    1
}

/// Where a new consumer group starts reading.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum StartFrom {
    /// From the first entry still in the stream (`XGROUP CREATE … 0`).
    #[default]
    Earliest,
    /// From entries added after the group is created (`XGROUP CREATE … $`).
    Latest,
}

/// Autoscaling to a latency target from lag, in-flight messages and measured processing time.
#[derive(KubeSchema, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[x_kube(validation = Rule::new("self.minReplicas <= self.maxReplicas").message("autoscaling.minReplicas must not be greater than autoscaling.maxReplicas"))]
#[serde(rename_all = "camelCase")]
pub struct Autoscaling {
    /// Fewest replicas. 0 lets the Consumer scale to zero when the queue is idle.
    #[serde(default = "default_min_replicas")]
    #[schemars(range(min = 0))]
    pub min_replicas: i32,
    /// Most replicas.
    #[x_kube(validation = Rule::new("self >= 1").message("autoscaling.maxReplicas must be at least 1"))]
    pub max_replicas: i32,
    /// The longest a message should wait from being added to processing starting.
    #[serde(default = "default_target_latency")]
    pub target_latency: Duration,
    /// A hint of how long one message takes, used only until processing time is measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processing_time: Option<Duration>,
    /// How long demand must stay lower before replicas are removed.
    #[serde(default = "default_scale_down_delay")]
    pub scale_down_delay: Duration,
}

fn default_min_replicas() -> i32 {
    1
}
fn default_target_latency() -> Duration {
    Duration::from_secs(30)
}
fn default_scale_down_delay() -> Duration {
    Duration::from_secs(60)
}

/// Observed state of a Consumer.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConsumerStatus {
    /// The metadata.generation last reconciled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Scaling and Degraded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Label selector of the worker pods, for the scale subresource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Worker pods that exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// Worker pods that are ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,
    /// Worker pods the operator wants.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_replicas: Option<i32>,
    /// Entries not yet delivered to the group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<u64>,
    /// How `lag` was obtained: `exact` from Redis, or `counted`/`estimated` when Redis reports no
    /// lag (after XDEL or trimming).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_source: Option<String>,
    /// Entries delivered to a worker and not yet acknowledged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<u64>,
    /// Age of the oldest undelivered entry, such as `12s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_message_age: Option<String>,
    /// Messages arriving per second, smoothed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arrival_rate: Option<f64>,
    /// Messages acknowledged per second, smoothed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_rate: Option<f64>,
    /// Measured processing time of one message, such as `190ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processing_time: Option<String>,
    /// Measured time from a worker pod's creation to Ready, such as `1.2s`: the median over the
    /// Consumer's 20 most recent pods, to the second (the API's time resolution). The autoscaler sizes with it; until a pod was Ready it
    /// uses the operator's `--pod-startup`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_startup: Option<String>,
    /// When the operator last changed the replica count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    /// Why, in words: the numbers the decision was made from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_reason: Option<String>,
}

impl Consumer {
    /// The consumer group in force: the spec's, or the Consumer's name.
    pub fn group(&self) -> String {
        self.spec
            .group
            .clone()
            .unwrap_or_else(|| self.metadata.name.clone().unwrap_or_default())
    }
}
