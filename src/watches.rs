//! What the operator watches: one watch per kind, each into a stripped cache
//! (see `k8s::cache`) that every reader shares. The Queue controller, the
//! Consumer controller and the sampler all read Queues from one store.

use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{Pod, Secret},
};
use kube::{Client, api::PartialObjectMeta, core::DeserializeGuard, runtime::watcher::Config};

use crate::{
    api::{Consumer, Queue},
    consumer::build::CONSUMER_LABEL,
    k8s::{
        Scope,
        cache::{Cache, SharedCache, cache, shared_cache, strip_deployment, strip_metadata, strip_pod, watch},
    },
};

/// The label streamq puts on what it creates.
const MANAGED: &str = "app.kubernetes.io/managed-by=streamq";

pub struct Watches {
    /// Guarded: one object the types cannot read must not stop the watch of all (see `guard`).
    pub queues: SharedCache<DeserializeGuard<Queue>>,
    pub consumers: SharedCache<DeserializeGuard<Consumer>>,
    /// Metadata only: Secret data never sits in a cache.
    pub secrets: SharedCache<PartialObjectMeta<Secret>>,
    pub deployments: SharedCache<Deployment>,
    pub pods: Cache<Pod>,
}

impl Watches {
    pub fn new(scope: &Scope, client: &Client) -> Self {
        let api = || client.clone();
        Self {
            queues: shared_cache(
                watch(scope.api(api()), Config::default().any_semantic()),
                strip_metadata,
            ),
            consumers: shared_cache(
                watch(scope.api(api()), Config::default().any_semantic()),
                strip_metadata,
            ),
            secrets: shared_cache(watch(scope.api(api()), Config::default()), strip_metadata),
            deployments: shared_cache(
                watch(scope.api(api()), Config::default().labels(MANAGED)),
                strip_deployment,
            ),
            pods: cache(
                watch(scope.api(api()), Config::default().labels(CONSUMER_LABEL)),
                strip_pod,
            ),
        }
    }
}
