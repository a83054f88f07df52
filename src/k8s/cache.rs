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
use tokio::sync::watch;

/// How many events a slow subscriber may fall behind before the watch waits for it.
const SUBSCRIBER_BUFFER: usize = 1024;

/// A cache's store, and the future that keeps it filled (run it until shutdown).
pub struct Cache<K: Resource + Clone + 'static>
where
    K::DynamicType: Eq + Hash + Clone,
{
    pub store: Store<K>,
    pub synced: Synced,
    pub driver: BoxFuture<'static, ()>,
}

/// Whether a cache has held the cluster's state once, for any number of
/// waiters at a time.
///
/// `Store::wait_until_ready` is not that: it polls one oneshot receiver,
/// which keeps only the last poller's waker, so of two tasks waiting together
/// (a controller's runner and a reconcile, or two reconciles) one can sleep
/// for good. streamq leaves that wait to kube's runners (one per store) and
/// waits here.
#[derive(Clone)]
pub struct Synced(watch::Receiver<bool>);

impl Synced {
    /// Returns once the cache has synced, or once its watch has stopped (shutdown).
    pub async fn wait(&self) {
        let mut synced = self.0.clone();
        let _ = synced.wait_for(|s| *s).await;
    }
}

/// A cache others also subscribe to: each subscription sees every change.
pub struct SharedCache<K: Resource + Clone + 'static>
where
    K::DynamicType: Eq + Hash + Clone,
{
    pub store: Store<K>,
    pub changes: ReflectHandle<K>,
    pub synced: Synced,
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
    let (synced, driver) = drive(events.modify(strip).reflect(writer));
    Cache { store, synced, driver }
}

/// [`cache`], with subscriptions to its changes.
pub fn shared_cache<K, S>(events: S, strip: fn(&mut K)) -> SharedCache<K>
where
    K: Resource<DynamicType = ()> + Clone + Debug + Send + Sync + 'static,
    S: Stream<Item = watcher::Result<watcher::Event<K>>> + Send + 'static,
{
    let (store, writer) = reflector::store_shared(SUBSCRIBER_BUFFER);
    let changes = writer.subscribe().expect("a shared store has subscribers");
    let (synced, driver) = drive(events.modify(strip).reflect_shared(writer));
    SharedCache {
        store,
        changes,
        synced,
        driver,
    }
}

/// Every change of `api`'s objects, retried with [`super::watch_backoff`].
pub fn watch<K>(api: Api<K>, config: watcher::Config) -> impl Stream<Item = watcher::Result<watcher::Event<K>>> + Send
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + Debug + Send + 'static,
{
    watcher::watcher(api, config).backoff(super::watch_backoff())
}

/// Runs a reflector's event stream; the events come out of it once applied
/// to the store, so the first `InitDone` marks the store synced.
fn drive<K, S>(stream: S) -> (Synced, BoxFuture<'static, ()>)
where
    K: Resource + Send + 'static,
    S: Stream<Item = watcher::Result<watcher::Event<K>>> + Send + 'static,
{
    let (tx, rx) = watch::channel(false);
    let driver = Box::pin(stream.for_each(move |event| {
        match event {
            Ok(watcher::Event::InitDone) => {
                tx.send_replace(true);
            }
            Ok(_) => {}
            Err(err) => tracing::debug!(%err, kind = %std::any::type_name::<K>(), "watch"),
        }
        futures::future::ready(())
    }));
    (Synced(rx), driver)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures::channel::mpsc;

    use super::*;

    fn pod(name: &str) -> Pod {
        let mut pod = Pod::default();
        pod.metadata.name = Some(name.into());
        pod
    }

    /// Several tasks wait for one cache at once, as a controller's runner and
    /// the rounds it starts do: every one of them must wake when it syncs.
    #[tokio::test]
    async fn every_concurrent_waiter_wakes_when_the_cache_syncs() {
        let (events, rx) = mpsc::unbounded();
        let Cache { store, synced, driver } = cache(rx.map(Ok), strip_pod);
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let synced = synced.clone();
                tokio::spawn(async move { synced.wait().await })
            })
            .collect();
        // Let each waiter reach its wait before the cache syncs.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        let driver = tokio::spawn(driver);
        for event in [
            watcher::Event::Init,
            watcher::Event::InitApply(pod("a")),
            watcher::Event::InitDone,
        ] {
            events.unbounded_send(event).unwrap();
        }
        for waiter in waiters {
            tokio::time::timeout(Duration::from_secs(10), waiter)
                .await
                .expect("a waiter left asleep after the cache synced")
                .unwrap();
        }
        assert_eq!(
            store.state().len(),
            1,
            "synced means the store holds the listed objects"
        );
        drop(events);
        driver.await.unwrap();
    }

    #[tokio::test]
    async fn a_stopped_watch_releases_its_waiters() {
        let (events, rx) = mpsc::unbounded::<watcher::Event<Pod>>();
        let Cache { synced, driver, .. } = cache(rx.map(Ok), strip_pod);
        drop(events);
        driver.await;
        tokio::time::timeout(Duration::from_secs(10), synced.wait())
            .await
            .expect("waiting on a cache whose watch ended must not hang");
    }
}
