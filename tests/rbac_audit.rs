//! RBAC proven, not assumed: the operator runs the whole end-to-end
//! authenticated only as the chart's ServiceAccount (a TokenRequest token),
//! against the real apiserver with RBAC authorization; then the apiserver's
//! audit log says which (verb, group, resource, subresource) it really used,
//! and the chart's ClusterRole and Role may grant nothing beyond that.

mod support;

use std::{collections::BTreeSet, time::Duration};

use k8s_openapi::{api::apps::v1::Deployment, jiff::Timestamp};
use kube::api::{DeleteParams, PostParams};
use serde_json::json;
use streamq::api::{ConditionStatus, Consumer, Queue};
use support::{
    Operator, TestEnv,
    chart::{Access, Release, audit_log, service_account_kubeconfig},
    external_queue, queue, wait_for, wait_for_within,
};

fn ready(conditions: &[streamq::api::Condition]) -> bool {
    conditions
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == ConditionStatus::True)
}

/// Grants that no API request exercises, each with the reason it stays.
/// Nothing else may be granted without being used.
const NOT_REQUESTS: &[(&str, &str, &str, &str, &str)] = &[
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
];

struct RedisServer(std::process::Child);

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

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
    let port = support::free_port();
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
    queues
        .create(
            &PostParams::default(),
            &queue("cache", json!({"broker": {"managed": {"appendfsync": "always"}}})),
        )
        .await
        .unwrap();
    env.create_admin_secret().await;
    queues
        .create(&PostParams::default(), &external_queue("jobs", json!({})))
        .await
        .unwrap();

    let deadline = std::time::Instant::now() + support::TIMEOUT;
    let conf = loop {
        let out = env.kubectl(&[
            "get",
            "configmap",
            "cache-redis-config",
            "-o",
            "jsonpath={.data.redis\\.conf}",
        ]);
        if out.status.success() && !out.stdout.is_empty() {
            break String::from_utf8(out.stdout).unwrap();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no redis.conf; operator log:\n{}",
            operator.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let dir = std::env::temp_dir().join(format!("redis-{ns}"));
    std::fs::create_dir_all(&dir).unwrap();
    let conf_path = dir.join("redis.conf");
    std::fs::write(&conf_path, conf.replace("dir /data", &format!("dir {}", dir.display()))).unwrap();
    let _redis = RedisServer(
        std::process::Command::new("redis-server")
            .arg(&conf_path)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start redis-server"),
    );
    for name in ["cache", "jobs"] {
        wait_for(&queues, name, "Ready", |q: &Queue| {
            q.status.as_ref().is_some_and(|s| ready(&s.conditions))
        })
        .await;
    }

    // An autoscaled Consumer, a burst that scales it up, the workers (played
    // here) drain it, and it scales back down, marking pods by deletion cost.
    let consumers = env.api::<Consumer>();
    let consumer: Consumer = serde_json::from_value(json!({
        "apiVersion": "streamq.dev/v1alpha1", "kind": "Consumer", "metadata": {"name": "workers"},
        "spec": {"queueRef": {"name": "jobs"},
                 "autoscaling": {"minReplicas": 1, "maxReplicas": 4, "targetLatency": "10s", "processingTime": "1s", "scaleDownDelay": "2s"},
                 "template": {"spec": {"containers": [{"name": "w", "image": "example.com/w:1"}]}}},
    }))
    .unwrap();
    consumers.create(&PostParams::default(), &consumer).await.unwrap();
    wait_for(&consumers, "workers", "Ready", |c: &Consumer| {
        c.status.as_ref().is_some_and(|s| ready(&s.conditions))
    })
    .await;
    let deployments = env.api::<Deployment>();
    let replicas = |d: &Deployment| d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
    wait_for(&deployments, "workers", "minReplicas", |d| replicas(d) == 1).await;
    let stream = format!("streamq:{{{ns}.jobs}}");
    let mut redis = env.redis().await;
    let mut pipe = redis::pipe();
    for i in 0..400 {
        pipe.cmd("XADD").arg(&stream).arg("*").arg("data").arg(i).ignore();
    }
    let _: () = pipe.query_async(&mut redis).await.unwrap();
    wait_for(&deployments, "workers", "scaled up by the burst", |d| replicas(d) > 1).await;
    // Every worker pod Running, so scale-down has pods to rank.
    env.kubectl_ok(&["rollout", "status", "deployment/workers", "--timeout=120s"]);
    loop {
        let read: redis::streams::StreamReadReply = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg("workers")
            .arg("test-worker")
            .arg("COUNT")
            .arg(1000)
            .arg("STREAMS")
            .arg(&stream)
            .arg(">")
            .query_async(&mut redis)
            .await
            .unwrap();
        let ids: Vec<String> = read
            .keys
            .iter()
            .flat_map(|k| k.ids.iter().map(|e| e.id.clone()))
            .collect();
        if ids.is_empty() {
            break;
        }
        let _: i64 = redis::cmd("XACK")
            .arg(&stream)
            .arg("workers")
            .arg(&ids)
            .query_async(&mut redis)
            .await
            .unwrap();
    }
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
        let deadline = std::time::Instant::now() + support::TIMEOUT;
        while queues.get_opt(name).await.unwrap().is_some() {
            assert!(std::time::Instant::now() < deadline, "Queue {name} never went away");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
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
    println!("granted for admission checks, never a request ({}):", kept.len());
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
