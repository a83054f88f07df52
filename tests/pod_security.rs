//! The operator pods (from the chart) and a managed Queue's Redis pod are
//! admitted in a namespace that enforces the Pod Security `restricted`
//! profile, on the real apiserver (its PodSecurity admission plugin), and run
//! (kwok plays the kubelet).

mod support;

use k8s_openapi::api::core::v1::Pod;
use kube::runtime::wait::await_condition;
use serde_json::json;
use support::{chart::Release, *};

#[tokio::test]
async fn chart_pods_and_managed_redis_pods_pass_restricted_pod_security() {
    let env = TestEnv::new("psa").await;
    let ns = env.namespace.as_str();
    env.label_namespace(&[
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
    assert_eq!(release.rolled_out(), ["Running", "Running"]);

    // A managed Queue: the operator (run here; the chart's pods run no
    // container under kwok) creates the StatefulSet, whose controller creates
    // the Redis pod through the same admission.
    let _operator = Operator::start(ns, &[]);
    env.create(&queue(
        "cache",
        json!({"broker": {"managed": {"appendfsync": "everysec"}}}),
    ))
    .await;
    // The pod exists only if admission let it in; kwok then makes it Running.
    let running = |p: Option<&Pod>| p.and_then(|p| p.status.as_ref()?.phase.as_deref()) == Some("Running");
    let ran = tokio::time::timeout(TIMEOUT, await_condition(env.api(), "cache-redis-0", running)).await;
    assert!(
        matches!(ran, Ok(Ok(_))),
        "the managed Redis pod never ran; events:\n{}",
        env.kubectl_ok(&["get", "events"])
    );

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
