//! `make bench-scale`: the operator (a release build, outside the cluster, as
//! the chart's ServiceAccount so the audit log attributes its requests) with
//! 100, 300 and 1,000 Queue + Consumer pairs (autoscaled, minReplicas 0,
//! one external Redis) in one namespace of the local control plane.
//!
//! At each size: all Ready from the objects' own timestamps, then a quiet
//! window of idle queues (operator CPU and memory, Redis CPU and clients,
//! the operator's apiserver writes). At the largest size: a busy window with
//! 100 Consumers receiving messages (sample delay), and a restart.
//!
//! STREAMQ_SCALE_SIZES overrides the sizes (e.g. `50,100`), STREAMQ_SCALE_WINDOW the window (s).

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use k8s_openapi::jiff::Timestamp;
use redis::aio::MultiplexedConnection;
use support::{
    chart::{Release, service_account_kubeconfig},
    redis_client::connect,
    scale::*,
    *,
};
use tokio_util::sync::CancellationToken;

const BUSY: usize = 100;
/// How long all objects may take to be Ready before the bench records how far they got.
const READY_TIMEOUT: Duration = Duration::from_secs(300);
const BUSY_RATE: u32 = 2;

/// What one quiet or busy window measured.
struct Window {
    pairs: usize,
    /// Seconds to all Ready, or how many were Ready when the wait gave up.
    ready: Option<String>,
    create_rate: Option<f64>,
    operator_cpu: f64,
    rss_mib: f64,
    peak_rss_mib: f64,
    redis_cpu: f64,
    redis_clients: usize,
    apiserver_cpu: f64,
    writes_per_object: f64,
    reads_per_second: f64,
    writes: String,
    sample_delay_p99: f64,
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run());
}

fn sizes() -> Vec<usize> {
    std::env::var("STREAMQ_SCALE_SIZES")
        .unwrap_or_else(|_| "100,300,1000".into())
        .split(',')
        .map(|s| s.trim().parse().expect("STREAMQ_SCALE_SIZES: comma-separated numbers"))
        .collect()
}

fn window_length() -> Duration {
    let secs = std::env::var("STREAMQ_SCALE_WINDOW").map_or(60, |s| s.parse().expect("STREAMQ_SCALE_WINDOW: seconds"));
    Duration::from_secs(secs)
}

struct Bench {
    env: TestEnv,
    sa: String,
    kubeconfig: String,
    redis: MultiplexedConnection,
}

impl Bench {
    fn start_operator(&self) -> Operator {
        Operator::start_with(
            &self.env.namespace,
            &["--resync-interval", "10s"],
            &[("KUBECONFIG", self.kubeconfig.as_str()), ("RUST_LOG", "info")],
        )
    }

    /// Measures a window of `length` with `pairs` pairs in place.
    async fn window(&mut self, operator: &Operator, pairs: usize, length: Duration) -> Window {
        let apiserver = cluster_pid("kube-apiserver");
        let (op0, api0, redis0) = (
            process_usage(operator.pid()),
            process_usage(apiserver),
            redis_cpu(&mut self.redis).await,
        );
        let metrics0 = operator.get("/metrics").await.1;
        let (since, started) = (Timestamp::now(), Instant::now());
        tokio::time::sleep(length).await;
        let elapsed = started.elapsed();
        let until = Timestamp::now();
        let (op1, api1, redis1) = (
            process_usage(operator.pid()),
            process_usage(apiserver),
            redis_cpu(&mut self.redis).await,
        );
        let metrics1 = operator.get("/metrics").await.1;
        let share = |a: Duration, b: Duration| (b - a).as_secs_f64() / elapsed.as_secs_f64() * 100.0;
        let requests = operator_requests(&self.env.namespace, &self.sa, since, until);
        let writes = requests
            .writes
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ");
        Window {
            pairs,
            ready: None,
            create_rate: None,
            operator_cpu: share(op0.cpu, op1.cpu),
            rss_mib: op1.rss_kib as f64 / 1024.0,
            peak_rss_mib: op1.peak_rss_kib as f64 / 1024.0,
            redis_cpu: share(redis0, redis1),
            redis_clients: redis_clients(&mut self.redis).await,
            apiserver_cpu: share(api0.cpu, api1.cpu),
            writes_per_object: requests.writes_per_object_per_10min(2 * pairs, elapsed),
            reads_per_second: requests.reads as f64 / elapsed.as_secs_f64(),
            writes,
            sample_delay_p99: delay_quantile(&metrics0, &metrics1, 0.99),
        }
    }
}

/// The p99 sample delay in a window: the histogram's difference between two scrapes.
fn delay_quantile(before: &str, after: &str, q: f64) -> f64 {
    const NAME: &str = "streamq_sample_delay_seconds";
    let diff: String = after
        .lines()
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let was = metric_in(before, series);
            Some(format!("{series} {}\n", value.parse::<f64>().ok()? - was))
        })
        .collect();
    histogram_quantile(&diff, NAME, q)
}

async fn run() {
    let env = TestEnv::new("scale").await;
    env.create_admin_secret().await;
    let release = Release::install(&env, &["replicaCount=0"]);
    let sa = release.service_account().to_owned();
    let kubeconfig = service_account_kubeconfig(&env.namespace, &sa)
        .to_string_lossy()
        .into_owned();
    let redis = connect(&env.redis_url).await;
    let mut bench = Bench {
        env,
        sa,
        kubeconfig,
        redis,
    };
    let operator = bench.start_operator();
    operator.wait_ready().await;
    let length = window_length();
    let mut rows = vec![];
    let mut created = 0;
    println!("{}", header(length));
    for n in sizes() {
        let started = Instant::now();
        create_pairs(&bench.env, created..n).await;
        let create_rate = (n - created) as f64 / started.elapsed().as_secs_f64();
        created = n;
        let ready = wait_all_ready(&bench.env, n, READY_TIMEOUT).await;
        let ready = match ready.seconds() {
            Some(s) => format!("{s} s"),
            None => format!(
                "{} of {} Ready after {} s",
                ready.ready,
                ready.objects,
                READY_TIMEOUT.as_secs()
            ),
        };
        settle(&bench.env, &operator, n).await;
        let mut row = bench.window(&operator, n, length).await;
        row.ready = Some(ready);
        row.create_rate = Some(create_rate);
        println!("{}", row_line("idle", &row));
        rows.push(row);
    }
    let busy = busy_window(&mut bench, &operator, created, length).await;
    let (restart, _operator) = restart(&bench, operator, created).await;
    print_report(&rows, &busy, &restart);
    // Deleted while the operator runs, so it removes their finalizers: the
    // namespace's deletion alone would take the operator's ServiceAccount
    // first and leave every Queue stuck in Terminating.
    let started = Instant::now();
    let deleted = bench
        .env
        .kubectl(&["delete", "consumers,queues", "--all", "--timeout=900s"]);
    println!(
        "- deleting the {created} pairs with the operator running: {} after {:.1} s",
        if deleted.status.success() {
            "done".into()
        } else {
            format!("not done ({})", String::from_utf8_lossy(&deleted.stderr).trim())
        },
        started.elapsed().as_secs_f64()
    );
}

/// A window with [`BUSY`] Consumers receiving messages.
async fn busy_window(
    bench: &mut Bench,
    operator: &Operator,
    pairs: usize,
    length: Duration,
) -> (Window, CancellationToken) {
    let ns = bench.env.namespace.clone();
    let streams = (0..BUSY.min(pairs))
        .map(|i| format!("streamq:{{{ns}.{}}}", queue_name(i)))
        .collect();
    let stop = CancellationToken::new();
    tokio::spawn(publish_to(
        connect(&bench.env.redis_url).await,
        streams,
        BUSY_RATE,
        stop.clone(),
    ));
    let window = bench.window(operator, pairs, length).await;
    println!("{}", row_line("busy", &window));
    (window, stop)
}

/// What an operator restart at full size measured.
struct Restart {
    exited_on_sigterm: bool,
    ready: Duration,
    /// None: not within 120 s.
    all_reconciled: Option<Duration>,
    wrong_scale: Vec<String>,
}

/// Restarts the operator while the busy Consumers still receive messages.
async fn restart(bench: &Bench, old: Operator, pairs: usize) -> (Restart, Operator) {
    let before = deployment_replicas(&bench.env).await;
    let started = Instant::now();
    // An operator that does not stop within 30 s of SIGTERM is killed, and that is reported.
    signal(old.pid(), "TERM");
    let deadline = Instant::now() + Duration::from_secs(30);
    while alive(old.pid()) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let exited_on_sigterm = !alive(old.pid());
    drop(old);
    let operator = bench.start_operator();
    operator.wait_ready().await;
    let ready = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(120);
    let all_reconciled = loop {
        let q = metric(
            &operator.metrics_addr,
            "streamq_reconciliations_total{controller=\"queue\"",
        )
        .await;
        let c = metric(
            &operator.metrics_addr,
            "streamq_reconciliations_total{controller=\"consumer\"",
        )
        .await;
        if q as usize >= pairs && c as usize >= pairs {
            break Some(started.elapsed());
        }
        if Instant::now() >= deadline {
            eprintln!("after the restart: {q} Queue and {c} Consumer reconciliations of {pairs} in 120 s");
            break None;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    // Idle Consumers stay at 0; busy ones are not scaled down by a lost history.
    tokio::time::sleep(Duration::from_secs(20)).await;
    let after = deployment_replicas(&bench.env).await;
    let busy: Vec<String> = (0..BUSY.min(pairs)).map(consumer_name).collect();
    let wrong_scale = after
        .iter()
        .filter_map(|(name, &now)| {
            let was = before.get(name).copied().unwrap_or(0);
            let wrong = if busy.contains(name) { now < was } else { now > was };
            wrong.then(|| format!("{name} {was}→{now}"))
        })
        .collect();
    let restart = Restart {
        exited_on_sigterm,
        ready,
        all_reconciled,
        wrong_scale,
    };
    (restart, operator)
}

fn header(length: Duration) -> String {
    format!(
        "\n## streamq operator at scale ({} s windows)\n\n\
         | pairs | created/s | all Ready after | operator CPU | operator RSS (peak) | Redis CPU | Redis clients | apiserver CPU | operator writes /object/10 min | operator reads/s | sample delay p99 |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        length.as_secs()
    )
}

fn row_line(label: &str, w: &Window) -> String {
    format!(
        "| {} {label} | {} | {} | {:.1} % | {:.1} MiB ({:.1}) | {:.1} % | {} | {:.1} % | {:.2} | {:.1} | {:.2} s |",
        w.pairs,
        w.create_rate.map_or("–".into(), |r| format!("{r:.1}")),
        w.ready.as_deref().unwrap_or("–"),
        w.operator_cpu,
        w.rss_mib,
        w.peak_rss_mib,
        w.redis_cpu,
        w.redis_clients,
        w.apiserver_cpu,
        w.writes_per_object,
        w.reads_per_second,
        w.sample_delay_p99,
    )
}

fn print_report(rows: &[Window], busy: &(Window, CancellationToken), restart: &Restart) {
    busy.1.cancel();
    println!();
    for w in rows.iter().chain(std::iter::once(&busy.0)) {
        println!(
            "- writes at {} pairs: {}",
            w.pairs,
            if w.writes.is_empty() { "none" } else { &w.writes }
        );
    }
    if let (Some(first), Some(last)) = (rows.first(), rows.last())
        && last.pairs > first.pairs
    {
        let d = (last.pairs - first.pairs) as f64;
        println!(
            "- slope per pair: RSS {:.1} KiB, peak RSS {:.1} KiB, operator CPU {:.3} % of a core",
            (last.rss_mib - first.rss_mib) * 1024.0 / d,
            (last.peak_rss_mib - first.peak_rss_mib) * 1024.0 / d,
            (last.operator_cpu - first.operator_cpu) / d,
        );
    }
    println!(
        "- restart at {} pairs: {}; ready {:.1} s, every object reconciled {}; wrong scale decisions in the 20 s after: {}",
        busy.0.pairs,
        if restart.exited_on_sigterm {
            "exited on SIGTERM"
        } else {
            "did not exit within 30 s of SIGTERM (killed)"
        },
        restart.ready.as_secs_f64(),
        restart
            .all_reconciled
            .map_or("not within 120 s".into(), |d| format!("{:.1} s", d.as_secs_f64())),
        if restart.wrong_scale.is_empty() {
            "none".into()
        } else {
            restart.wrong_scale.join(", ")
        }
    );
}
