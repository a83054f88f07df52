//! What both controllers and the sampler share. Each controller keeps its own
//! memory in its own context (`queue::Context`, `consumer::Context`).

use std::{
    fmt::Debug,
    time::{Duration, Instant},
};

use k8s_openapi::NamespaceResourceScope;
use kube::{Client, Resource, ResourceExt};
use serde::{Serialize, de::DeserializeOwned};

use crate::{
    broker::Brokers,
    k8s::{self, Scope, applied::Applied, recorder::Recorder, secrets::SecretReader},
    metrics::Metrics,
    status_writes::StatusWrites,
};

pub struct Shared {
    pub client: Client,
    /// The one Recorder all Events go through.
    pub recorder: Recorder,
    pub metrics: Metrics,
    pub scope: Scope,
    /// How often an object is reconciled when nothing changed.
    pub resync: Duration,
    /// How to reach each Queue's Redis, and the connections to it.
    pub brokers: Brokers,
    /// When each object's status was last written: most rounds change nothing worth a write.
    pub status_writes: StatusWrites,
    /// The objects streamq applied, so an unchanged one is not applied again.
    pub applied: Applied,
    /// The Secrets streamq reads, read again only when they change.
    pub secrets: SecretReader,
}

/// How far a resync may stray from `resync`, either way.
pub const RESYNC_JITTER: f64 = 0.1;

impl Shared {
    /// When to reconcile an object again that is fine: `resync` ± 10 %, at
    /// random. All objects are reconciled together at start-up; without the
    /// jitter they would stay in step, a burst every interval.
    pub fn next_resync(&self) -> Duration {
        let factor = 1.0 + RESYNC_JITTER * (2.0 * rand::random::<f64>() - 1.0);
        self.resync.mul_f64(factor)
    }

    /// Writes `next` as `obj`'s status when it differs from `previous` in a
    /// way worth a write (see [`crate::status_writes`]); returns whether it wrote.
    pub async fn write_status<K, S>(&self, obj: &K, previous: &S, next: &S) -> Result<bool, kube::Error>
    where
        K: Resource<DynamicType = (), Scope = NamespaceResourceScope> + Clone + DeserializeOwned + Debug,
        S: Serialize + PartialEq,
    {
        let uid = obj.uid().unwrap_or_default();
        let now = Instant::now();
        let Some(why) = self.status_writes.due(&uid, previous, next, now).await else {
            return Ok(false);
        };
        tracing::debug!(object = %obj.name_any(), kind = %K::kind(&()), changed = %why, "writing status");
        k8s::apply_status(&self.client, obj, next).await?;
        self.status_writes.wrote(&uid, now).await;
        Ok(true)
    }
}
