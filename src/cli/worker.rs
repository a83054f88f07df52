//! `streamq worker`: picks a handler (a command per message, or a POST to a
//! local URL), wires SIGTERM/SIGINT to graceful shutdown, and optionally
//! serves the worker's Prometheus metrics.

use std::{net::SocketAddr, sync::Arc, time::Duration as StdDuration};

use anyhow::Context;
use streamq::{
    api::Duration,
    endpoints,
    worker::{self, Counters, ExecHandler, HttpHandler, Message, Worker, WorkerConfig},
};

/// Arguments of `streamq worker`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Example: streamq worker --stream orders --group billing -- ./bill.sh")]
pub struct WorkerArgs {
    /// Redis URL (redis:// or rediss://), with user and password.
    #[arg(long, env = "STREAMQ_REDIS_URL", hide_env_values = true)]
    pub redis_url: String,
    /// Stream key to consume.
    #[arg(long, env = "STREAMQ_STREAM")]
    pub stream: String,
    /// Consumer group (created by the operator).
    #[arg(long, env = "STREAMQ_GROUP")]
    pub group: String,
    /// Consumer name; defaults to `$HOSTNAME-<pid>`.
    #[arg(long, env = "STREAMQ_CONSUMER")]
    pub consumer: Option<String>,
    /// Messages handled at once.
    #[arg(long, env = "STREAMQ_CONCURRENCY", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub concurrency: u32,
    /// Deliveries after which a failing message goes to the dead-letter stream.
    #[arg(long, env = "STREAMQ_MAX_DELIVERIES", default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_deliveries: u64,
    /// Idle time (ms) after which a pending message may be taken over by another worker.
    #[arg(long, env = "STREAMQ_VISIBILITY_TIMEOUT_MS", default_value_t = 300_000,
          value_parser = clap::value_parser!(u64).range(100..))]
    pub visibility_timeout_ms: u64,
    /// Dead-letter stream; without it failing messages are redelivered forever.
    #[arg(long, env = "STREAMQ_DEAD_LETTER_STREAM")]
    pub dead_letter_stream: Option<String>,
    /// Per-message time limit (e.g. 30s); a timeout counts as a failure.
    #[arg(long, env = "STREAMQ_TIMEOUT")]
    pub timeout: Option<Duration>,
    /// After SIGTERM, how long in-flight messages may finish.
    #[arg(long, env = "STREAMQ_GRACE", default_value = "25s")]
    pub grace: Duration,
    /// POST each message to this local URL instead of running a command.
    #[arg(long, env = "STREAMQ_HTTP_URL", conflicts_with = "command")]
    pub http: Option<String>,
    /// Serve Prometheus metrics on this address (e.g. 0.0.0.0:9090).
    #[arg(long, env = "STREAMQ_WORKER_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// The handler command, run once per message with the payload on stdin.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

enum CliHandler {
    Exec(ExecHandler),
    Http(HttpHandler),
}

impl CliHandler {
    fn from_args(args: &WorkerArgs) -> anyhow::Result<Self> {
        match &args.http {
            Some(url) => Ok(Self::Http(HttpHandler::new(url).map_err(anyhow::Error::msg)?)),
            None => Ok(Self::Exec(
                ExecHandler::new(args.command.clone()).map_err(anyhow::Error::msg)?,
            )),
        }
    }
}

pub async fn main(args: WorkerArgs) -> anyhow::Result<()> {
    let handler = Arc::new(CliHandler::from_args(&args)?);
    let consumer = args.consumer.clone().unwrap_or_else(default_consumer_name);
    let mut config = WorkerConfig::new(&args.redis_url, &args.stream, &args.group, consumer);
    config.concurrency = args.concurrency as usize;
    config.max_deliveries = args.max_deliveries;
    config.visibility_timeout = StdDuration::from_millis(args.visibility_timeout_ms);
    config.dead_letter_stream = args.dead_letter_stream.clone().filter(|s| !s.is_empty());
    config.handler_timeout = args.timeout.map(Duration::as_std);
    config.grace = args.grace.as_std();

    let worker = Worker::new(config, move |msg: Message| {
        let handler = handler.clone();
        async move {
            match &*handler {
                CliHandler::Exec(h) => h.handle(msg).await,
                CliHandler::Http(h) => h.handle(msg).await,
            }
        }
    });
    if let Some(addr) = args.metrics_addr {
        serve_metrics(addr, worker.counters()).await?;
    }
    let summary = worker.run(shutdown_signal()).await?;
    tracing::info!(
        acked = summary.acked,
        failed = summary.failed,
        dead_lettered = summary.dead_lettered,
        abandoned = summary.abandoned,
        "exiting"
    );
    Ok(())
}

fn default_consumer_name() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "worker".to_owned());
    format!("{host}-{}", std::process::id())
}

/// Resolves on the first SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = int.recv() => tracing::info!("SIGINT: stopping"),
    }
}

async fn serve_metrics(addr: SocketAddr, counters: Arc<Counters>) -> anyhow::Result<()> {
    let listener = endpoints::bind(addr)
        .await
        .with_context(|| format!("cannot listen on --metrics-addr {addr}"))?;
    let ready = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let encode = move || worker::encode_metrics(&counters);
    tokio::spawn(async move {
        if let Err(e) = endpoints::serve(listener, encode, ready, std::future::pending()).await {
            tracing::error!(error = %e, "metrics server stopped");
        }
    });
    Ok(())
}
