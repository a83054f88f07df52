//! What every reconciler shares.

use std::time::Duration;

use kube::{Client, runtime::events::Recorder};

use crate::{k8s::Scope, metrics::Metrics};

pub struct Context {
    pub client: Client,
    /// The one Recorder all Events go through.
    pub recorder: Recorder,
    pub metrics: Metrics,
    pub scope: Scope,
    /// How often an object is reconciled when nothing changed.
    pub resync: Duration,
}
