//! The operator pods (from the chart) and a managed Queue's Redis pod are
//! admitted in a namespace that enforces the Pod Security `restricted`
//! profile, on the real apiserver (its PodSecurity admission plugin), and run
//! (kwok plays the kubelet).

mod support;

use kube::api::PostParams;
use serde_json::json;
use streamq::api::Queue;
use support::{Operator, TestEnv, chart::Release, queue};

#[tokio::test]
async fn chart_pods_and_managed_redis_pods_pass_restricted_pod_security() {
    let env = TestEnv::new("psa").await;
    let ns = env.namespace.as_str();
    env.kubectl_ok(&[
        "label",
        "namespace",
        ns,
        "pod-security.kubernetes.io/enforce=restricted",
        "pod-security.kubernetes.io/enforce-version=latest",
        "pod-security.kubernetes.io/warn=restricted",
        "pod-security.kubernetes.io/audit=restricted",
    ]);
    // The control: enforcement is on, a pod without the hardening is refused.
    let refused = env.apply_yaml(
        &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "plain"},
                "spec": {"containers": [{"name": "c", "image": "example.com/c:1"}]}})
        .to_string(),
    );
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && stderr.contains("violates PodSecurity \"restricted:latest\""),
        "an unhardened pod must be refused in this namespace: {stderr}"
    );

    // The chart with its defaults: two replicas with leader election.
    let release = Release::install(&env, &[]);
    let selector = format!("app.kubernetes.io/instance={}", release.name);
    env.kubectl_ok(&["rollout", "status", "deployment", "-l", &selector, "--timeout=120s"]);
    let phases = env.kubectl_ok(&[
        "get",
        "pods",
        "-l",
        &selector,
        "-o",
        "jsonpath={.items[*].status.phase}",
    ]);
    assert_eq!(phases.split_whitespace().collect::<Vec<_>>(), ["Running", "Running"]);

    // A managed Queue: the operator (run here; the chart's pods run no
    // container under kwok) creates the StatefulSet, whose controller creates
    // the Redis pod through the same admission.
    let _operator = Operator::start(ns, &[]);
    env.api::<Queue>()
        .create(
            &PostParams::default(),
            &queue("cache", json!({"broker": {"managed": {"appendfsync": "everysec"}}})),
        )
        .await
        .unwrap();
    // The pod exists only if admission let it in; kwok then makes it Running.
    let deadline = std::time::Instant::now() + support::TIMEOUT;
    loop {
        let phase = env.kubectl(&["get", "pod", "cache-redis-0", "-o", "jsonpath={.status.phase}"]);
        if String::from_utf8_lossy(&phase.stdout) == "Running" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the managed Redis pod never ran; events:\n{}",
            env.kubectl_ok(&["get", "events"])
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }

    let failed = env.kubectl_ok(&[
        "get",
        "events",
        "--field-selector",
        "reason=FailedCreate",
        "-o",
        "jsonpath={range .items[*]}{.involvedObject.kind}/{.involvedObject.name}: {.message}{\"\\n\"}{end}",
    ]);
    assert!(
        failed.trim().is_empty(),
        "no controller may have been refused a pod:\n{failed}"
    );
    let forbidden = env.kubectl_ok(&["get", "events", "-o", "jsonpath={.items[*].message}"]);
    assert!(!forbidden.contains("forbidden"), "{forbidden}");
}
