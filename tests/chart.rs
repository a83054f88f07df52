//! The Helm chart, installed into the real local control plane, and its RBAC
//! proven by running the operator with the chart's ServiceAccount token.

mod support;

use std::process::Command;

use kube::api::PostParams;
use serde_json::json;
use streamq::api::{Consumer, Queue};
use support::{TestEnv, wait_for};

fn helm(args: &[&str]) -> std::process::Output {
    Command::new("helm")
        .args(args)
        .current_dir(support::repo_root())
        .output()
        .expect("run helm")
}

fn helm_ok(args: &[&str]) -> String {
    let out = helm(args);
    assert!(
        out.status.success(),
        "helm {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn helm_lint_passes() {
    let out = helm_ok(&["lint", "--strict", "charts/streamq"]);
    assert!(out.contains("0 chart(s) failed"), "{out}");
}

#[test]
fn values_schema_rejects_typos_and_wrong_types() {
    for bad in [["--set", "replicaCount=abc"], ["--set", "replicaCuont=2"]] {
        let out = helm(&["template", "t", "charts/streamq", bad[0], bad[1]]);
        assert!(!out.status.success(), "helm template accepted {bad:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("values don't meet the specifications of the schema"),
            "{err}"
        );
    }
}

#[tokio::test]
async fn chart_installs_under_restricted_pod_security_and_its_rbac_runs_the_operator() {
    let env = TestEnv::new("chart").await;
    let ns = env.namespace.as_str();
    env.kubectl_ok(&[
        "label",
        "namespace",
        ns,
        "pod-security.kubernetes.io/enforce=restricted",
    ]);
    let release = format!("sq-{ns}");
    helm_ok(&[
        "install",
        &release,
        "charts/streamq",
        "-n",
        ns,
        "--set",
        &format!("watchNamespace={ns}"),
    ]);

    // kwok plays the kubelet: the operator pod becomes Running on a fake node.
    let selector = format!("app.kubernetes.io/instance={release}");
    env.kubectl_ok(&["rollout", "status", "deployment", "-l", &selector, "--timeout=120s"]);
    let phases = env.kubectl_ok(&[
        "get",
        "pods",
        "-l",
        &selector,
        "-o",
        "jsonpath={.items[*].status.phase}",
    ]);
    assert_eq!(phases.trim(), "Running");

    let sa = env.kubectl_ok(&[
        "get",
        "serviceaccount",
        "-l",
        &selector,
        "-o",
        "jsonpath={.items[0].metadata.name}",
    ]);
    let as_sa = format!("--as=system:serviceaccount:{ns}:{sa}");
    // Least privilege, spot-checked: what the reconcilers need, and not Secrets.
    for (verb, resource, subresource, want) in [
        ("watch", "queues.streamq.dev", "", "yes"),
        ("patch", "consumers.streamq.dev", "status", "yes"),
        ("create", "events.events.k8s.io", "", "yes"),
        ("list", "pods", "", "yes"),
        ("create", "pods", "", "no"),
        ("delete", "pods", "", "no"),
        ("get", "nodes", "", "no"),
        ("delete", "queues.streamq.dev", "", "no"),
        ("delete", "secrets", "", "no"),
    ] {
        let sub = format!("--subresource={subresource}");
        let mut args = vec!["auth", "can-i", verb, resource, as_sa.as_str()];
        if !subresource.is_empty() {
            args.push(&sub);
        }
        let out = env.kubectl(&args);
        let got = String::from_utf8_lossy(&out.stdout);
        assert_eq!(got.trim(), want, "can {sa} {verb} {resource} {subresource}?");
    }

    // The operator, authenticated only by a TokenRequest token of the chart's
    // ServiceAccount, can watch and patch status.
    let token = env.kubectl_ok(&["create", "token", &sa, "--duration=1h"]);
    let server = support::kubectl_ok(
        None,
        &[
            "config",
            "view",
            "--minify",
            "-o",
            "jsonpath={.clusters[0].cluster.server}",
        ],
    );
    let ca = support::kubectl_ok(
        None,
        &[
            "config",
            "view",
            "--minify",
            "--raw",
            "-o",
            "jsonpath={.clusters[0].cluster.certificate-authority}",
        ],
    );
    let kubeconfig = std::env::temp_dir().join(format!("{ns}.kubeconfig"));
    std::fs::write(
        &kubeconfig,
        serde_yaml::to_string(&json!({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "c", "cluster": {"server": server, "certificate-authority": ca}}],
            "users": [{"name": "sa", "user": {"token": token.trim()}}],
            "contexts": [{"name": "c", "context": {"cluster": "c", "user": "sa", "namespace": ns}}],
            "current-context": "c",
        }))
        .unwrap(),
    )
    .unwrap();
    let operator = support::Operator::start(ns, &[("KUBECONFIG", kubeconfig.to_str().unwrap())]);

    let queue: Queue = serde_json::from_value(json!({
        "apiVersion": "streamq.dev/v1alpha1", "kind": "Queue", "metadata": {"name": "orders"},
        "spec": {"broker": {"external": {"urlSecretRef": {"name": "redis", "key": "url"}}}},
    }))
    .unwrap();
    let consumer: Consumer = serde_json::from_value(json!({
        "apiVersion": "streamq.dev/v1alpha1", "kind": "Consumer", "metadata": {"name": "billing"},
        "spec": {"queueRef": {"name": "orders"}, "template": {"spec": {"containers": [{"name": "w", "image": "w"}]}}},
    }))
    .unwrap();
    env.api::<Queue>().create(&PostParams::default(), &queue).await.unwrap();
    env.api::<Consumer>()
        .create(&PostParams::default(), &consumer)
        .await
        .unwrap();
    wait_for(
        &env.api::<Queue>(),
        "orders",
        "status written by the chart's ServiceAccount",
        |q: &Queue| q.status.as_ref().and_then(|s| s.observed_generation) == Some(1),
    )
    .await;
    wait_for(
        &env.api::<Consumer>(),
        "billing",
        "status written by the chart's ServiceAccount",
        |c: &Consumer| c.status.as_ref().and_then(|s| s.observed_generation) == Some(1),
    )
    .await;
    let logs = operator.logs();
    assert!(!logs.contains("forbidden"), "the operator hit RBAC denials:\n{logs}");
    drop(operator);

    helm_ok(&["uninstall", &release, "-n", ns, "--wait"]);
}
