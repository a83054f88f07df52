//! Leader election between two real `streamq run --leader-election`
//! processes, each authenticated as its own ServiceAccount bound to the
//! chart's roles, so that the apiserver's audit log tells who wrote what.

mod support;

use std::time::{Duration, Instant};

use k8s_openapi::{api::coordination::v1::Lease, jiff::Timestamp};
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;
use streamq::api::Consumer;
use support::{
    audit::audit_log,
    chart::{Release, service_account_kubeconfig},
    *,
};

const LEASE: &str = "streamq-operator";
const TRIALS: usize = 10;
const FAILOVER_GOAL: Duration = Duration::from_secs(15);

/// One of the two operator "slots": a ServiceAccount and the process that
/// currently runs as it (restarted after each kill, never two at once).
struct Slot {
    service_account: String,
    kubeconfig: String,
    process: Option<Operator>,
}

impl Slot {
    fn start(&mut self, ns: &str) {
        self.process = Some(Operator::start_with(
            ns,
            &electing(ns),
            &[("KUBECONFIG", self.kubeconfig.as_str())],
        ));
    }

    fn identity_suffix(&self) -> String {
        format!("_{}", self.process.as_ref().unwrap().pid())
    }
}

/// `streamq run` arguments: take part in the election on the Lease in `ns`.
fn electing(ns: &str) -> [&str; 3] {
    ["--leader-election", "--leader-election-namespace", ns]
}

/// The chart's RBAC only (no operator pod) with its ServiceAccount, plus
/// `second`, a ServiceAccount with the same roles, so that the audit log
/// tells two processes apart. Returns each account's name and kubeconfig.
fn two_accounts(env: &TestEnv, second: &str) -> (Release, [(String, String); 2]) {
    let mut release = Release::install(env, &["replicaCount=0"]);
    release.extra_service_account(second);
    let accounts = [release.service_account().to_owned(), second.to_owned()].map(|sa| {
        let kubeconfig = service_account_kubeconfig(&env.namespace, &sa);
        (sa, kubeconfig.to_string_lossy().into_owned())
    });
    (release, accounts)
}

/// Whether the process whose identity ends with `suffix` holds the Lease.
fn held_by(lease: &Lease, suffix: &str) -> bool {
    lease
        .spec
        .as_ref()
        .and_then(|s| s.holder_identity.as_ref())
        .is_some_and(|h| h.ends_with(suffix))
}

async fn holder(env: &TestEnv) -> Option<(String, i32)> {
    let lease = env.api::<Lease>().get_opt(LEASE).await.unwrap()?;
    let spec = lease.spec?;
    Some((spec.holder_identity?, spec.lease_transitions.unwrap_or(0)))
}

#[tokio::test]
async fn a_standby_takes_over_within_15s_of_a_sigkill_and_no_two_leaders_ever_write() {
    let env = TestEnv::new("leader").await;
    let ns = env.namespace.clone();
    let since = Timestamp::now();
    let (release, accounts) = two_accounts(&env, "standby");
    let mut slots = accounts.map(|(service_account, kubeconfig)| Slot {
        service_account,
        kubeconfig,
        process: None,
    });
    for slot in &mut slots {
        slot.start(&ns);
    }

    env.create_admin_secret().await;
    env.create(&external_queue("jobs", json!({}))).await;
    env.create(&consumer("workers", "jobs", json!({"replicas": 1}))).await;
    let consumers = env.api::<Consumer>();
    wait_ready(&consumers, "workers").await;

    let mut failovers = vec![];
    for trial in 0..TRIALS {
        for slot in &slots {
            slot.process.as_ref().unwrap().wait_ready().await;
        }
        let (identity, term) = holder(&env).await.expect("a Lease with a holder");
        let leader = slots
            .iter()
            .position(|s| identity.ends_with(&s.identity_suffix()))
            .unwrap_or_else(|| panic!("the Lease is held by {identity:?}, none of the two processes"));
        let standby = 1 - leader;

        // SIGKILL (Child::kill), and wait until the process is gone.
        drop(slots[leader].process.take());
        let killed = Instant::now();
        // A change made right after the kill, that only a leader reconciles.
        let changed = consumers
            .patch(
                "workers",
                &PatchParams::default(),
                &Patch::Merge(
                    json!({"spec": {"template": {"metadata": {"annotations": {"trial": trial.to_string()}}}}}),
                ),
            )
            .await
            .unwrap();
        let generation = changed.metadata.generation.unwrap();
        wait_for_within(
            &consumers,
            "workers",
            "the change reconciled by the new leader",
            Duration::from_secs(60),
            |c: &Consumer| c.status.as_ref().and_then(|s| s.observed_generation) == Some(generation),
        )
        .await;
        let failover = killed.elapsed();
        let deployment = env
            .api::<k8s_openapi::api::apps::v1::Deployment>()
            .get("workers")
            .await
            .unwrap();
        let annotations = deployment
            .spec
            .unwrap()
            .template
            .metadata
            .unwrap()
            .annotations
            .unwrap_or_default();
        assert_eq!(
            annotations.get("trial"),
            Some(&trial.to_string()),
            "the Deployment follows the change"
        );
        let (new_identity, new_term) = holder(&env).await.unwrap();
        assert!(
            new_identity.ends_with(&slots[standby].identity_suffix()),
            "trial {trial}: the standby ({}) leads now, not {new_identity}",
            slots[standby].service_account
        );
        assert!(
            new_term > term,
            "trial {trial}: a takeover starts a new term ({term} → {new_term})"
        );
        println!("trial {trial}: failover {failover:.1?} (term {term} → {new_term})");
        failovers.push(failover);

        slots[leader].start(&ns);
    }
    for slot in &mut slots {
        let op = slot.process.take().unwrap();
        // Ready means started, signal handlers included: a SIGTERM before
        // that would kill the process outright.
        op.wait_ready().await;
        assert!(op.terminate(Duration::from_secs(30)).await.success());
    }

    failovers.sort();
    let median = (failovers[TRIALS / 2 - 1] + failovers[TRIALS / 2]) / 2;
    let max = *failovers.last().unwrap();
    println!("failover over {TRIALS} SIGKILLs: median {median:.1?}, max {max:.1?} (goal < {FAILOVER_GOAL:?})");
    assert!(max < FAILOVER_GOAL, "failovers {failovers:?}");

    // The audit log: every write either process made, in the apiserver's
    // order. The holder is whoever last wrote the Lease successfully; nobody
    // else may write anything (a Deployment above all) until the Lease changes hands.
    let users = slots
        .iter()
        .map(|s| format!("system:serviceaccount:{ns}:{}", s.service_account))
        .collect::<Vec<_>>();
    let TermCheck {
        writes,
        handovers,
        deployment_writes,
        violations,
    } = check_terms(&ns, &users, since);
    println!("audit log: {writes} writes, {handovers} handovers, Deployment writes per process: {deployment_writes:?}");
    assert!(
        violations.is_empty(),
        "writes outside the writer's term:\n{}",
        violations.join("\n")
    );
    assert!(
        handovers >= TRIALS,
        "the audit log shows {handovers} handovers for {TRIALS} kills"
    );
    assert!(
        deployment_writes.iter().all(|&n| n > 0),
        "both processes led and wrote the Deployment: {deployment_writes:?}"
    );
    drop(release);
}

struct TermCheck {
    writes: usize,
    handovers: usize,
    /// Per user, in the order given.
    deployment_writes: Vec<usize>,
    violations: Vec<String>,
}

/// Walks the successful writes of `users` in the apiserver's order (the
/// audit log). The holder is whoever last wrote the Lease; any other write
/// by a user who does not hold it is a violation: two processes acting in one term.
fn check_terms(ns: &str, users: &[String], since: Timestamp) -> TermCheck {
    let events: Vec<_> = audit_log(&format!("system:serviceaccount:{ns}:"), since)
        .into_iter()
        .filter(|e| users.contains(&e.user) && e.mutating() && e.succeeded())
        .collect();
    let mut holder_user: Option<&str> = None;
    let mut check = TermCheck {
        writes: events.len(),
        handovers: 0,
        deployment_writes: vec![0; users.len()],
        violations: vec![],
    };
    for e in &events {
        if e.access.resource == "leases" && e.name == LEASE {
            if holder_user.is_some_and(|h| h != e.user) {
                check.handovers += 1;
            }
            holder_user = Some(e.user.as_str());
            continue;
        }
        if holder_user != Some(e.user.as_str()) {
            check.violations.push(format!(
                "{} {} {}/{} by {} while {holder_user:?} held the Lease",
                e.completed, e.access, e.namespace, e.name, e.user
            ));
        }
        if e.access.resource == "deployments" {
            check.deployment_writes[users.iter().position(|u| *u == e.user).unwrap()] += 1;
        }
    }
    check
}

/// The control for the check above: a process run *without* leader election
/// next to a leader is caught writing outside any term of its own.
#[tokio::test]
async fn the_term_check_catches_a_process_that_writes_without_the_lease() {
    let env = TestEnv::new("leader-rogue").await;
    let ns = env.namespace.clone();
    let since = Timestamp::now();
    let (_release, [(leader, leader_config), (rogue, rogue_config)]) = two_accounts(&env, "rogue");
    let _leader = Operator::start_with(&ns, &electing(&ns), &[("KUBECONFIG", leader_config.as_str())]);
    let _rogue = Operator::start_with(&ns, &[], &[("KUBECONFIG", rogue_config.as_str())]);
    env.ready_queue("jobs").await;
    let users = [leader, rogue].map(|sa| format!("system:serviceaccount:{ns}:{sa}"));
    // Reading the whole audit log is costly: twice a second is often enough.
    let caught = poll_every(
        Duration::from_millis(500),
        TIMEOUT,
        "the rogue's writes to be flagged",
        || async {
            let check = check_terms(&ns, &users, since);
            match check.violations.first() {
                Some(v) => Ok(v.clone()),
                None => Err(format!("{} writes seen, none flagged", check.writes)),
            }
        },
    )
    .await;
    println!("caught: {caught}");
}

#[tokio::test]
async fn a_follower_is_ready_and_idle_and_a_graceful_leader_hands_over_at_once() {
    let env = TestEnv::new("leader-idle").await;
    let ns = env.namespace.clone();
    let first = Operator::start_with(&ns, &electing(&ns), &[]);
    let lease = wait_for(&env.api::<Lease>(), LEASE, "a holder", |l: &Lease| {
        l.spec.as_ref().and_then(|s| s.holder_identity.as_ref()).is_some()
    })
    .await;
    let first_identity = lease.spec.unwrap().holder_identity.unwrap();
    assert!(
        first_identity.ends_with(&format!("_{}", first.pid())),
        "{first_identity}"
    );

    let second = Operator::start_with(&ns, &electing(&ns), &[]);
    second.wait_ready().await;
    let (_, metrics) = second.get("/metrics").await;
    assert!(metrics.contains("# EOF"), "a follower serves /metrics:\n{metrics}");
    env.ready_queue("jobs").await;
    second.wait_log("following: another process leads").await;
    assert!(
        !second.logs().contains("starting the controllers"),
        "a follower reconciles nothing:\n{}",
        second.logs()
    );

    // SIGTERM: the leader stops its controllers and releases the Lease, so
    // the follower takes over at its next retry, not after expiry.
    let stopped = Instant::now();
    assert!(first.terminate(Duration::from_secs(30)).await.success());
    let suffix = format!("_{}", second.pid());
    wait_for_within(
        &env.api::<Lease>(),
        LEASE,
        "the follower leads",
        Duration::from_secs(30),
        |l: &Lease| held_by(l, &suffix),
    )
    .await;
    let handover = stopped.elapsed();
    println!("graceful handover: {handover:.1?}");
    assert!(
        handover < Duration::from_secs(5),
        "released Lease taken over in {handover:?}, not at expiry (10 s)"
    );
    // The Lease write comes first, then the controllers start.
    second.wait_log("leading: starting the controllers").await;
}

#[tokio::test]
async fn a_leader_whose_lease_is_taken_exits_non_zero_at_its_next_renewal() {
    let env = TestEnv::new("leader-lost").await;
    let ns = env.namespace.as_str();
    let mut op = Operator::start_with(ns, &electing(ns), &[]);
    let suffix = format!("_{}", op.pid());
    let leases = env.api::<Lease>();
    let mut lease = wait_for(&leases, LEASE, "held by the operator", |l: &Lease| held_by(l, &suffix)).await;

    // Someone else takes the Lease (as a candidate would after expiry).
    let spec = lease.spec.as_mut().unwrap();
    spec.holder_identity = Some("usurper".into());
    spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    leases.replace(LEASE, &PostParams::default(), &lease).await.unwrap();
    let taken = Instant::now();
    let status = op.wait_exit(Duration::from_secs(10)).await;
    let exited = taken.elapsed();
    let logs = op.logs();
    println!("exited {exited:.1?} after losing the Lease, with {status}");
    assert!(
        !status.success(),
        "a lost leadership is a failure exit: {status}\n{logs}"
    );
    assert!(logs.contains("leadership lost"), "{logs}");
    // It notices at its next renewal, every 2 s with the default 10 s lease.
    assert!(exited < Duration::from_secs(4), "took {exited:?}");
}
