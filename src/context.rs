//! What every reconciler shares.

use std::{collections::BTreeMap, time::Duration};

use kube::{Client, runtime::events::Recorder};

use crate::{consumer::sampler::Decisions, k8s::Scope, metrics::Metrics, queue::QueueMemory, redis::pool::AdminPool};

pub struct Context {
    pub client: Client,
    /// The one Recorder all Events go through.
    pub recorder: Recorder,
    pub metrics: Metrics,
    pub scope: Scope,
    /// How often an object is reconciled when nothing changed.
    pub resync: Duration,
    /// Administrative Redis connections, shared by all Queues on a server.
    pub redis: AdminPool,
    /// What the Queue controller remembers between resyncs, by Queue uid.
    pub queues: QueueMemory,
    /// Development only: `namespace/queue` → `host:port` of the managed Redis,
    /// for running the operator outside the cluster (see `--dev-redis-address`).
    pub dev_redis_addresses: BTreeMap<String, String>,
    /// How long a deleted Queue waits for Redis before its cleanup is abandoned.
    pub cleanup_timeout: Duration,
    /// The autoscaler's latest decision per Consumer, written by the sampler.
    pub decisions: Decisions,
    pub sample_interval: Duration,
    pub pod_startup: Duration,
}
