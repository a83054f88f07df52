//! What both controllers and the sampler share. Each controller keeps its own
//! memory in its own context (`queue::Context`, `consumer::Context`).

use std::time::Duration;

use kube::{Client, runtime::events::Recorder};

use crate::{broker::Brokers, k8s::Scope, metrics::Metrics};

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
}
