//! RBAC proven, not assumed: the operator runs the whole end-to-end
//! authenticated only as the chart's ServiceAccount (a TokenRequest token),
//! against the real apiserver with RBAC authorization; then the apiserver's
//! audit log says which (verb, group, resource, subresource) it really used,
//! and the chart's ClusterRole and Role may grant nothing beyond that.

mod support;

use std::{collections::BTreeSet, time::Duration};

use k8s_openapi::{api::apps::v1::Deployment, jiff::Timestamp};
use kube::api::DeleteParams;
use serde_json::json;
use streamq::api::{Consumer, Queue};
use support::{
    audit::{Access, audit_log},
    chart::{Release, service_account_kubeconfig},
    redis_server::{RedisServer, managed_redis_conf},
    *,
};

/// Grants that no API request of this test exercises, each with the reason it stays.
/// Nothing else may be granted without being used.
const NOT_REQUESTS: &[(&str, &str, &str, &str, &str)] = &[
    (
        "get",
        "streamq.dev",
        "queues",
        "",
        "read only when two Queues claim one stream key, to tell the older (tests/queue.rs the_younger_of_two_queues_on_one_stream_key_gets_conflict_and_touches_nothing); this test has no conflict",
    ),
    (
        "update",
        "streamq.dev",
        "queues",
        "finalizers",
        "checked by the OwnerReferencesPermissionEnforcement admission plugin (not enabled in the test apiserver, on by default in OpenShift) when the operator sets blockOwnerDeletion on objects a Queue owns",
    ),
    (
        "update",
        "streamq.dev",
        "consumers",
        "finalizers",
        "the same admission check, for the Deployment a Consumer owns",
    ),
    (
        "patch",
        "events.k8s.io",
        "events",
        "",
        "counts up a repeated Event's series (tests/events.rs a_repeated_event_counts_up_its_series_and_a_new_note_is_a_new_event); this test repeats no Event",
    ),
];

#[tokio::test]
async fn the_chart_grants_exactly_what_the_operator_uses_end_to_end() {
    let env = TestEnv::new("rbac").await;
    let ns = env.namespace.clone();
    let since = Timestamp::now();
    // The chart's RBAC and ServiceAccount; no operator pod (kwok runs no
    // container): the operator runs here, as that ServiceAccount.
    let release = Release::install(&env, &["replicaCount=0"]);
    let sa = release.service_account().to_owned();
    let kubeconfig = service_account_kubeconfig(&ns, &sa);

    // The managed Queue's Redis, played by a local redis-server started from
    // the generated redis.conf, reached through the development-only mapping.
    let port = free_port();
    let mapping = format!("{ns}/cache=127.0.0.1:{port}");
    let operator = Operator::start_with(
        &ns,
        &[
            "--leader-election",
            "--leader-election-namespace",
            &ns,
            "--dev-redis-address",
            &mapping,
        ],
        &[("KUBECONFIG", kubeconfig.to_str().unwrap())],
    );

    let queues = env.api::<Queue>();
    env.create(&queue(
        "cache",
        json!({"broker": {"managed": {"appendfsync": "always"}}}),
    ))
    .await;
    env.create_admin_secret().await;
    env.create(&external_queue("jobs", json!({}))).await;
    let conf = managed_redis_conf(&env, "cache").await;
    let _redis = RedisServer::stand_in(&ns, &conf, port);
    for name in ["cache", "jobs"] {
        wait_ready(&queues, name).await;
    }

    // An autoscaled Consumer, a burst that scales it up, the workers (played
    // here) drain it, and it scales back down, marking pods by deletion cost.
    let consumers = env.api::<Consumer>();
    env.create(&consumer(
        "workers",
        "jobs",
        json!({"autoscaling": {"minReplicas": 1, "maxReplicas": 4, "targetLatency": "10s",
                               "processingTime": "1s", "scaleDownDelay": "2s"}}),
    ))
    .await;
    wait_ready(&consumers, "workers").await;
    let deployments = env.api::<Deployment>();
    wait_for(&deployments, "workers", "minReplicas", |d| replicas(d) == 1).await;
    let stream = format!("streamq:{{{ns}.jobs}}");
    let mut redis = env.redis().await;
    xadd_n(&mut redis, &stream, 400).await;
    wait_for(&deployments, "workers", "scaled up by the burst", |d| replicas(d) > 1).await;
    // Every worker pod Running, so scale-down has pods to rank.
    env.kubectl_ok(&["rollout", "status", "deployment/workers", "--timeout=120s"]);
    read_and_ack_all(&mut redis, &stream, "workers", "test-worker").await;
    wait_for_within(
        &deployments,
        "workers",
        "scaled back down",
        Duration::from_secs(120),
        |d| replicas(d) == 1,
    )
    .await;

    // Deletion: the Consumer, then both Queues through their finalizers.
    consumers.delete("workers", &DeleteParams::default()).await.unwrap();
    for name in ["cache", "jobs"] {
        queues.delete(name, &DeleteParams::default()).await.unwrap();
    }
    for name in ["cache", "jobs"] {
        wait_deleted(&queues, name).await;
    }
    let logs = operator.logs();
    assert!(operator.terminate(Duration::from_secs(30)).await.success());
    assert!(!logs.contains("forbidden"), "the operator hit RBAC denials:\n{logs}");

    // What the ServiceAccount used, from the audit log.
    let user = format!("system:serviceaccount:{ns}:{sa}");
    let requests = audit_log(&user, since);
    let requests: Vec<_> = requests.into_iter().filter(|r| r.user == user).collect();
    assert!(!requests.is_empty(), "no audit events for {user}");
    let denied: Vec<_> = requests
        .iter()
        .filter(|r| r.code == 403)
        .map(|r| format!("{} {}/{}", r.access, r.namespace, r.name))
        .collect();
    let mut used: BTreeSet<Access> = requests.iter().map(|r| r.access.clone()).collect();
    // A server-side apply PATCH that creates its object (201 Created) is
    // authorized as create as well (the apiserver checks it inside the one
    // request, kubernetes#66002): that create permission was used.
    used.extend(
        requests
            .iter()
            .filter(|r| r.access.verb == "patch" && r.code == 201)
            .map(|r| Access {
                verb: "create".into(),
                ..r.access.clone()
            }),
    );
    let granted = release.granted();
    // Caches list then watch; the one they were granted for counts as used
    // when the other was (a watch may not have been re-established yet).
    let cached: BTreeSet<(String, String)> = used
        .iter()
        .filter(|a| matches!(a.verb.as_str(), "list" | "watch") && a.subresource.is_empty())
        .map(|a| (a.group.clone(), a.resource.clone()))
        .collect();
    let exempt = |a: &Access| {
        NOT_REQUESTS
            .iter()
            .any(|(v, g, r, s, _)| a.verb == *v && a.group == *g && a.resource == *r && a.subresource == *s)
    };
    let unused: Vec<&Access> = granted
        .iter()
        .filter(|a| !used.contains(*a))
        .filter(|a| {
            !(matches!(a.verb.as_str(), "list" | "watch") && cached.contains(&(a.group.clone(), a.resource.clone())))
        })
        .collect();
    let (kept, unused): (Vec<&Access>, Vec<&Access>) = unused.into_iter().partition(|a| exempt(a));
    let missing: Vec<&Access> = used.iter().filter(|a| !granted.contains(*a)).collect();

    println!("{} requests by {user}; used:", requests.len());
    for a in &used {
        println!("  {a}");
    }
    println!("granted but unused ({}):", unused.len());
    for a in &unused {
        println!("  - {a}");
    }
    println!("granted, never a request in this test ({}):", kept.len());
    for a in &kept {
        let why = NOT_REQUESTS
            .iter()
            .find(|n| a.verb == n.0 && a.resource == n.2)
            .unwrap()
            .4;
        println!("  ~ {a}: {why}");
    }
    println!("used but not granted ({}):", missing.len());
    for a in &missing {
        println!("  + {a}");
    }
    assert!(denied.is_empty(), "requests denied by RBAC:\n{}", denied.join("\n"));
    assert!(
        unused.is_empty() && missing.is_empty(),
        "the chart's RBAC differs from what the operator used (see the diff above)"
    );
    drop(release);
}
