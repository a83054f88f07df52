//! The operator's steady-state cost with many idle Queues and Consumers:
//! no apiserver writes round after round, and one Redis connection for all.
//! `make bench-scale` measures the same at 100 to 1,000 pairs.

mod support;

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use support::{
    chart::{Release, service_account_kubeconfig},
    scale::*,
    *,
};

const PAIRS: usize = 50;
/// Resyncs of every object the steady-state window spans.
const ROUNDS: usize = 5;

#[tokio::test]
async fn idle_queues_and_consumers_cost_no_apiserver_writes_and_one_redis_connection() {
    let env = TestEnv::new("scale").await;
    env.create_admin_secret().await;
    let release = Release::install(&env, &["replicaCount=0"]);
    let kubeconfig = service_account_kubeconfig(&env.namespace, release.service_account());
    // The test harness' 2 s resync: each object is reconciled several times in the window.
    let operator = Operator::start(&env.namespace, &[("KUBECONFIG", kubeconfig.to_str().unwrap())]);
    create_pairs(&env, 0..PAIRS).await;
    let ready = wait_all_ready(&env, PAIRS, Duration::from_secs(180)).await;
    assert!(ready.all(), "{} of {} objects Ready", ready.ready, ready.objects);
    settle(&env, &operator, PAIRS).await;

    let (since, started) = (Timestamp::now(), std::time::Instant::now());
    wait_rounds(&operator, PAIRS, ROUNDS).await;
    let (until, window) = (Timestamp::now(), started.elapsed());
    let requests = operator_requests(&env.namespace, release.service_account(), since, until);
    let rate = requests.writes_per_object_per_10min(2 * PAIRS, window);
    assert!(
        rate < 1.0,
        "{} writes in {window:?} over {ROUNDS} resync rounds of {PAIRS} idle pairs: {rate:.1} per object per 10 min (goal < 1): {:?}; the operator's status writes:\n{}",
        requests.total_writes(),
        requests.writes,
        operator
            .logs()
            .lines()
            .filter(|l| l.contains("writing status"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    let mut redis = redis_client::connect(&env.redis_url).await;
    let list: String = redis_client::cmd(&mut redis, &["CLIENT", "LIST"]).await;
    let ours = list.lines().filter(|l| l.contains(" name=streamq-operator ")).count();
    assert!(
        (1..=2).contains(&ours),
        "{ours} operator connections to Redis for {PAIRS} Queues on it (want one, two at most):\n{list}"
    );
}
