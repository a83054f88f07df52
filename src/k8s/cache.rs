//! The operator's watch caches: one watch per kind, its store shared by every
//! reader (both controllers and the sampler read Queues; the Consumer
//! controller reads Deployments and Pods from here instead of asking the
//! apiserver each round), and holding only what streamq reads.
//!
//! Objects are stripped on the way in: `managedFields` and kubectl's
//! last-applied annotation (together often larger than the object) go from
//! every kind, a Deployment's pod template and a Pod's spec too, since the
//! operator compares Deployments by generation and reads Pods only for their
//! names, annotations and readiness.

use std::{fmt::Debug, hash::Hash};

use futures::{Stream, StreamExt, future::BoxFuture};
use k8s_openapi::api::{apps::v1::Deployment, core::v1::Pod};
use kube::{
    Api, Resource,
    runtime::{
        WatchStreamExt,
        reflector::{self, ReflectHandle, Store},
        watcher,
    },
};

/// How many events a slow subscriber may fall behind before the watch waits for it.
const SUBSCRIBER_BUFFER: usize = 1024;

/// A cache's store, and the future that keeps it filled (run it until shutdown).
pub struct Cache<K: Resource + Clone + 'static>
where
    K::DynamicType: Eq + Hash + Clone,
{
    pub store: Store<K>,
    pub driver: BoxFuture<'static, ()>,
}

/// A cache others also subscribe to: each subscription sees every change.
pub struct SharedCache<K: Resource + Clone + 'static>
where
    K::DynamicType: Eq + Hash + Clone,
{
    pub store: Store<K>,
    pub changes: ReflectHandle<K>,
    pub driver: BoxFuture<'static, ()>,
}

/// Drops what no part of streamq reads from any object.
pub fn strip_metadata<K: Resource>(obj: &mut K) {
    let meta = obj.meta_mut();
    meta.managed_fields = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}

/// A Deployment as the Consumer controller reads it: replicas, generation and status.
pub fn strip_deployment(d: &mut Deployment) {
    strip_metadata(d);
    if let Some(spec) = d.spec.as_mut() {
        spec.template = Default::default();
    }
}

/// A Pod as the Consumer controller reads it: metadata and status.
pub fn strip_pod(p: &mut Pod) {
    strip_metadata(p);
    p.spec = None;
}

/// A cache of `events` (a `watcher` or `metadata_watcher` stream), each object passed through `strip`.
pub fn cache<K, S>(events: S, strip: fn(&mut K)) -> Cache<K>
where
    K: Resource<DynamicType = ()> + Clone + Debug + Send + Sync + 'static,
    S: Stream<Item = watcher::Result<watcher::Event<K>>> + Send + 'static,
{
    let (store, writer) = reflector::store();
    let driver = drive(events.modify(strip).reflect(writer));
    Cache { store, driver }
}

/// [`cache`], with subscriptions to its changes.
pub fn shared_cache<K, S>(events: S, strip: fn(&mut K)) -> SharedCache<K>
where
    K: Resource<DynamicType = ()> + Clone + Debug + Send + Sync + 'static,
    S: Stream<Item = watcher::Result<watcher::Event<K>>> + Send + 'static,
{
    let (store, writer) = reflector::store_shared(SUBSCRIBER_BUFFER);
    let changes = writer.subscribe().expect("a shared store has subscribers");
    let driver = drive(events.modify(strip).reflect_shared(writer));
    SharedCache { store, changes, driver }
}

/// Every change of `api`'s objects, retried with [`super::watch_backoff`].
pub fn watch<K>(api: Api<K>, config: watcher::Config) -> impl Stream<Item = watcher::Result<watcher::Event<K>>> + Send
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + Debug + Send + 'static,
{
    watcher::watcher(api, config).backoff(super::watch_backoff())
}

fn drive<K, S>(stream: S) -> BoxFuture<'static, ()>
where
    K: Resource + Send + 'static,
    S: Stream<Item = watcher::Result<watcher::Event<K>>> + Send + 'static,
{
    Box::pin(stream.for_each(|event| async move {
        if let Err(err) = event {
            tracing::debug!(%err, kind = %std::any::type_name::<K>(), "watch");
        }
    }))
}
