//! `streamq run`: wires the controllers, the HTTP endpoints and shutdown together.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures::future::BoxFuture;
use k8s_openapi::api::{apps::v1::Deployment, core::v1::Secret};
use kube::{Client, api::PartialObjectMeta, core::DeserializeGuard, runtime::reflector::ReflectHandle};
use tokio_util::sync::CancellationToken;

use crate::{
    api::{Consumer, Queue},
    broker::Brokers,
    consumer,
    context::Shared,
    endpoints,
    guard::ValidStore,
    k8s::{
        Scope,
        applied::Applied,
        cache::SharedCache,
        recorder::{Recorder, Reporter},
        secrets::SecretReader,
    },
    leader,
    metrics::Metrics,
    queue,
    status_writes::StatusWrites,
    watches::Watches,
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("connecting to Kubernetes: {0}")]
    Kube(#[from] kube::Error),
    #[error("serving {addr}: {source}")]
    Http {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// What `streamq run` is told on its command line.
#[derive(Debug)]
pub struct Config {
    /// Address of the /metrics, /healthz and /readyz endpoints.
    pub metrics_addr: std::net::SocketAddr,
    /// Watch only this namespace instead of the whole cluster.
    pub namespace: Option<String>,
    pub resync_interval: Duration,
    pub sample_interval: Duration,
    pub pod_startup: consumer::PodStartup,
    pub queue_cleanup_timeout: Duration,
    /// Development only: `namespace/queue` → `host:port` of a managed Redis.
    pub dev_redis_addresses: BTreeMap<String, String>,
    /// Reconcile only while holding a Lease; `None` runs unconditionally.
    pub leader_election: Option<LeaderElection>,
}

#[derive(Debug)]
pub struct LeaderElection {
    /// Namespace of the Lease; the client's default namespace when unset.
    pub namespace: Option<String>,
    pub lease_name: String,
    pub lease_duration: Duration,
}

pub async fn run(config: Config) -> Result<(), Error> {
    let client = Client::try_default().await?;
    let mut elector = config.leader_election.map(|election| {
        let lease = leader::Config {
            namespace: election
                .namespace
                .unwrap_or_else(|| client.default_namespace().to_owned()),
            name: election.lease_name,
            identity: leader::default_identity(),
            lease_duration: election.lease_duration,
        };
        leader::Elector::new(client.clone(), lease)
    });
    let reporter = Reporter {
        controller: "streamq".into(),
        // The pod name, so Events from several replicas can be told apart.
        instance: std::env::var("POD_NAME").ok(),
    };
    let scope = config.namespace.map_or(Scope::Cluster, Scope::Namespace);
    let Watches {
        queues,
        consumers,
        secrets,
        deployments,
        pods,
    } = Watches::new(&scope, &client);
    let shared = Arc::new(Shared {
        recorder: Recorder::new(client.clone(), reporter),
        client,
        metrics: Metrics::default(),
        scope,
        resync: config.resync_interval,
        brokers: Brokers::new(config.dev_redis_addresses),
        status_writes: StatusWrites::default(),
        applied: Applied::default(),
        secrets: SecretReader::new(secrets.store.clone()),
    });
    let stores = consumer::Stores {
        queues: ValidStore::new(queues.store.clone()),
        deployments: deployments.store.clone(),
        pods: pods.store.clone(),
        synced: [queues.synced.clone(), deployments.synced.clone(), pods.synced.clone()],
    };
    let controllers = Controllers {
        queue: Arc::new(queue::Context::new(shared.clone(), config.queue_cleanup_timeout)),
        consumer: Arc::new(consumer::Context::new(
            shared.clone(),
            config.sample_interval,
            config.pod_startup,
            stores,
        )),
        queue_consumer_changes: queues.changes.clone(),
        queues,
        consumers,
        secrets,
        deployments,
        cache_drivers: vec![pods.driver],
    };

    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));

    let listener = endpoints::bind(config.metrics_addr)
        .await
        .map_err(|source| Error::Http {
            addr: config.metrics_addr,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| Error::Http {
        addr: config.metrics_addr,
        source,
    })?;
    tracing::info!(%addr, scope = ?shared.scope, "streamq operator starting");

    let ready = Arc::new(AtomicBool::new(false));
    let encode = {
        let shared = shared.clone();
        move || shared.metrics.encode()
    };
    let server = endpoints::serve(listener, encode, ready.clone(), shutdown.clone().cancelled_owned());
    // A follower serves /healthz, /readyz (ready once it takes part in the
    // election) and /metrics, but starts no controller until it leads.
    let work = async {
        let term = match elector.as_mut() {
            None => None,
            Some(elector) => {
                let config = elector.config();
                tracing::info!(
                    identity = %config.identity,
                    lease = %format!("{}/{}", config.namespace, config.name),
                    "leader election: waiting for the Lease"
                );
                let ready = ready.clone();
                tokio::select! {
                    term = elector.acquire(move || ready.store(true, Ordering::Relaxed)) => Some(term),
                    () = shutdown.cancelled() => return,
                }
            }
        };
        run_controllers(controllers, ready.clone(), shutdown.clone(), elector.as_mut(), term).await;
    };
    let ((), served) = tokio::join!(work, server);
    served.map_err(|source| Error::Http { addr, source })?;
    tracing::info!("streamq operator stopped");
    Ok(())
}

/// What the controllers run on: their contexts and the watch caches.
struct Controllers {
    queue: Arc<queue::Context>,
    consumer: Arc<consumer::Context>,
    queues: SharedCache<DeserializeGuard<Queue>>,
    /// The Consumer controller's own subscription to the Queues' changes.
    queue_consumer_changes: ReflectHandle<DeserializeGuard<Queue>>,
    consumers: SharedCache<DeserializeGuard<Consumer>>,
    secrets: SharedCache<PartialObjectMeta<Secret>>,
    deployments: SharedCache<Deployment>,
    /// Caches no controller subscribes to.
    cache_drivers: Vec<BoxFuture<'static, ()>>,
}

/// Runs the caches, the controllers and the sampler until shutdown; with
/// leader election, only while the Lease is held.
async fn run_controllers(
    c: Controllers,
    ready: Arc<AtomicBool>,
    shutdown: CancellationToken,
    elector: Option<&mut leader::Elector>,
    term: Option<i32>,
) {
    if let Some(term) = term {
        tracing::info!(term, "leading: starting the controllers");
    }
    let (queue_store, consumer_store) = (
        ValidStore::new(c.queues.store.clone()),
        ValidStore::new(c.consumers.store.clone()),
    );
    let synced = [c.queues.synced.clone(), c.consumers.synced.clone()];
    let queues = queue::controller(
        c.queue,
        c.queues.store,
        c.queues.changes,
        c.secrets.changes,
        shutdown.clone().cancelled_owned(),
    );
    // The sampler wakes the Consumer controller when a decision changes.
    let (wake, woken) = futures::channel::mpsc::channel(256);
    let triggers = consumer::Triggers {
        consumers: c.consumers.changes,
        queues: c.queue_consumer_changes,
        deployments: c.deployments.changes,
        woken,
    };
    let consumers = consumer::controller(
        c.consumer.clone(),
        c.consumers.store,
        triggers,
        shutdown.clone().cancelled_owned(),
    );
    let sampler = consumer::sampler::run(
        c.consumer,
        consumer_store.clone(),
        queue_store.clone(),
        wake,
        shutdown.clone(),
    );
    let mut drivers = c.cache_drivers;
    drivers.extend([
        c.queues.driver,
        c.consumers.driver,
        c.secrets.driver,
        c.deployments.driver,
    ]);
    let mark_ready = {
        let (ready, shutdown) = (ready.clone(), shutdown.clone());
        async move {
            // Not ready until both caches hold the cluster's state; a
            // reconcile before that could act on a partial view.
            let synced = async {
                for cache in &synced {
                    cache.wait().await;
                }
            };
            // A shutdown before the caches synced ends this wait at once,
            // not only when the watches have stopped.
            tokio::select! {
                () = synced => {
                    ready.store(true, Ordering::Relaxed);
                    tracing::info!("caches synced; ready");
                }
                () = shutdown.cancelled() => {}
            }
        }
    };
    // One task each, not one `join!` of them all: a joined future polls
    // every branch whenever any one is woken, so at a thousand objects each
    // Redis reply and timer polled every watch and both controllers again
    // (a sixth of the idle operator's CPU in `perf`).
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(queues);
    tasks.spawn(consumers);
    tasks.spawn(sampler);
    tasks.spawn(mark_ready);
    for driver in drivers {
        // The watches stop at shutdown; the controllers' running rounds then finish on what the caches hold.
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            tokio::select! {
                () = driver => {}
                () = shutdown.cancelled() => {}
            }
        });
    }
    let controllers = join_every(tasks);
    let Some(elector) = elector else {
        controllers.await;
        return;
    };
    let lost = tokio::select! {
        () = controllers => None,
        lost = elector.hold() => Some(lost),
    };
    match lost {
        // Shut down gracefully while still leading: hand the Lease over now.
        None => elector.release().await,
        // Leadership lost (another process may already lead): stop at once.
        // Exiting is the one way to be sure no reconcile, sampler or Event
        // task of this term writes anything more: dropping the futures would
        // leave spawned tasks and in-flight requests behind, and a graceful
        // shutdown would let running reconciles finish their writes. The exit
        // is non-zero so that Kubernetes restarts the container, which joins
        // the election again as a follower with empty caches and no memory
        // of its old term.
        Some(lost) => {
            tracing::error!(%lost, "leadership lost: exiting so that nothing more is reconciled");
            std::process::exit(1);
        }
    }
}

/// Waits for every task. A task that panicked takes the process with it,
/// as it did when the tasks were one future: an operator whose controller
/// is gone must not go on looking healthy.
async fn join_every(mut tasks: tokio::task::JoinSet<()>) {
    while let Some(done) = tasks.join_next().await {
        if let Err(err) = done
            && err.is_panic()
        {
            std::panic::resume_unwind(err.into_panic());
        }
    }
}

/// Cancels `token` on SIGTERM (Kubernetes stopping the pod) or SIGINT (Ctrl-C).
async fn cancel_on_signal(token: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::error!("cannot install signal handlers; stop the operator with SIGKILL");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
    token.cancel();
}
