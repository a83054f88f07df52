//! `streamq run`: the operator's flags.

use std::net::SocketAddr;

use clap::Args;
use streamq::{api::Duration, operator};

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Address of the /metrics, /healthz and /readyz endpoints.
    #[arg(long, env = "STREAMQ_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,
    /// Watch only this namespace instead of the whole cluster.
    #[arg(long, env = "STREAMQ_WATCH_NAMESPACE")]
    pub namespace: Option<String>,
    /// How often every object is reconciled even when nothing changed. An
    /// autoscaled Consumer, which its sampler wakes whenever a round has
    /// something to do, only every 6 intervals.
    #[arg(long, env = "STREAMQ_RESYNC_INTERVAL", default_value = "10s")]
    pub resync_interval: Duration,
    /// How often the sampler reads every autoscaled Consumer's stream (one
    /// round trip per Redis server each time, two when some stream is busy).
    #[arg(long, env = "STREAMQ_SAMPLE_INTERVAL", default_value = "1s")]
    pub sample_interval: Duration,
    /// Expected time from replicas raised to a new worker consuming; the
    /// autoscaler sizes so that backlog drains within targetLatency minus this.
    #[arg(long, env = "STREAMQ_POD_STARTUP", default_value = "10s")]
    pub pod_startup: Duration,
    /// Measure each Consumer's pod start-up (creation → Ready, the median of
    /// its recent pods) and size with it, `--pod-startup` being the prior
    /// until a pod was Ready. `false` sizes every Consumer with
    /// `--pod-startup`, for workers whose Ready does not mean consuming.
    #[arg(long, env = "STREAMQ_MEASURE_POD_STARTUP", default_value_t = true, action = clap::ArgAction::Set)]
    pub measure_pod_startup: bool,
    /// How long a deleted Queue waits for its Redis to come back before the
    /// cleanup is abandoned (an Event says so) and the finalizer removed.
    #[arg(long, env = "STREAMQ_QUEUE_CLEANUP_TIMEOUT", default_value = "2m")]
    pub queue_cleanup_timeout: Duration,
    /// DEVELOPMENT ONLY: reach the managed Redis of Queue NAMESPACE/NAME at
    /// HOST:PORT instead of its in-cluster Service, for an operator running
    /// outside the cluster. Repeatable. Never use it in production.
    #[arg(long = "dev-redis-address", value_name = "NAMESPACE/NAME=HOST:PORT", value_parser = parse_dev_address)]
    pub dev_redis_addresses: Vec<(String, String)>,
    /// Reconcile only while holding a coordination.k8s.io Lease, so several
    /// replicas can run with one active; the others stay ready and idle, and
    /// one of them takes over when the leader is gone.
    #[arg(long)]
    pub leader_election: bool,
    /// Namespace of the leader election Lease (default: the pod's namespace).
    #[arg(long, env = "POD_NAMESPACE")]
    pub leader_election_namespace: Option<String>,
    /// Name of the leader election Lease.
    #[arg(long, default_value = "streamq-operator")]
    pub leader_election_lease_name: String,
    /// How long a leader's Lease lasts unrenewed before another replica takes
    /// over: the failover time after a leader dies is at most this plus two
    /// retries of a tenth of it. The leader renews every fifth of it and
    /// stops if it cannot renew for two thirds of it.
    #[arg(long, default_value = "10s")]
    pub leader_election_lease_duration: Duration,
}

fn parse_dev_address(s: &str) -> Result<(String, String), String> {
    let (queue, addr) = s.split_once('=').ok_or("expected NAMESPACE/NAME=HOST:PORT")?;
    if !queue.contains('/') || !addr.contains(':') {
        return Err("expected NAMESPACE/NAME=HOST:PORT".into());
    }
    Ok((queue.to_owned(), addr.to_owned()))
}

pub async fn main(args: RunArgs) -> anyhow::Result<()> {
    let config = operator::Config {
        metrics_addr: args.metrics_addr,
        namespace: args.namespace,
        resync_interval: args.resync_interval.as_std(),
        sample_interval: args.sample_interval.as_std(),
        pod_startup: streamq::consumer::PodStartup {
            prior: args.pod_startup.as_std(),
            measured: args.measure_pod_startup,
        },
        queue_cleanup_timeout: args.queue_cleanup_timeout.as_std(),
        dev_redis_addresses: args.dev_redis_addresses.into_iter().collect(),
        leader_election: args.leader_election.then(|| operator::LeaderElection {
            namespace: args.leader_election_namespace,
            lease_name: args.leader_election_lease_name,
            lease_duration: args.leader_election_lease_duration.as_std(),
        }),
    };
    operator::run(config).await?;
    Ok(())
}
