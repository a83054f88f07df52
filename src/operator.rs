//! `streamq run`: wires the controllers, the HTTP endpoints and shutdown together.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use kube::{
    Client,
    runtime::events::{Recorder, Reporter},
};
use tokio_util::sync::CancellationToken;

use crate::{cli::RunArgs, consumer, context::Context, http, k8s::Scope, metrics::Metrics, queue};

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

pub async fn run(args: RunArgs) -> Result<(), Error> {
    let client = Client::try_default().await?;
    let reporter = Reporter {
        controller: "streamq".into(),
        // The pod name, so Events from several replicas can be told apart.
        instance: std::env::var("POD_NAME").ok(),
    };
    let ctx = Arc::new(Context {
        recorder: Recorder::new(client.clone(), reporter),
        client,
        metrics: Metrics::default(),
        scope: args.namespace.map_or(Scope::Cluster, Scope::Namespace),
        resync: args.resync_interval.as_std(),
        redis: Default::default(),
        queues: Default::default(),
        dev_redis_addresses: args.dev_redis_addresses.into_iter().collect(),
        cleanup_timeout: args.queue_cleanup_timeout.as_std(),
        decisions: Default::default(),
        sample_interval: args.sample_interval.as_std(),
        pod_startup: args.pod_startup.as_std(),
    });

    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));

    let listener = http::bind(args.metrics_addr).await.map_err(|source| Error::Http {
        addr: args.metrics_addr,
        source,
    })?;
    let addr = listener.local_addr().map_err(|source| Error::Http {
        addr: args.metrics_addr,
        source,
    })?;
    tracing::info!(%addr, scope = ?ctx.scope, "streamq operator starting");

    let ready = Arc::new(AtomicBool::new(false));
    let (queues, queue_store) = queue::controller(ctx.clone(), shutdown.clone().cancelled_owned());
    // The sampler wakes the Consumer controller when a decision changes.
    let (wake, woken) = futures::channel::mpsc::channel(256);
    let (consumers, consumer_store) = consumer::controller(ctx.clone(), woken, shutdown.clone().cancelled_owned());
    let sampler = consumer::sampler::run(
        ctx.clone(),
        consumer_store.clone(),
        queue_store.clone(),
        wake,
        shutdown.clone(),
    );
    let mark_ready = {
        let ready = ready.clone();
        async move {
            // Not ready until both caches hold the cluster's state; a
            // reconcile before that could act on a partial view.
            if queue_store.wait_until_ready().await.is_ok() && consumer_store.wait_until_ready().await.is_ok() {
                ready.store(true, Ordering::Relaxed);
                tracing::info!("caches synced; ready");
            }
        }
    };
    let server = http::serve(
        listener,
        http::encoder(ctx.clone()),
        ready,
        shutdown.clone().cancelled_owned(),
    );

    let (_, _, _, _, served) = tokio::join!(queues, consumers, sampler, mark_ready, server);
    served.map_err(|source| Error::Http { addr, source })?;
    tracing::info!("streamq operator stopped");
    Ok(())
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
