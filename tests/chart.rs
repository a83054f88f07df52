//! The Helm chart, installed into the real local control plane, and its RBAC
//! proven by running the operator with the chart's ServiceAccount token.

mod support;

use serde_json::{Value, json};
use streamq::api::{Consumer, Queue};
use support::{
    chart::{Release, helm, helm_ok, render, service_account_kubeconfig},
    *,
};

fn kind<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

fn deployment(objects: &[Value]) -> &Value {
    let found = kind(objects, "Deployment");
    assert_eq!(found.len(), 1, "one Deployment");
    found[0]
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

#[test]
fn by_default_two_replicas_elect_a_leader_with_a_pod_disruption_budget() {
    let objects = render(&[]);
    let deploy = deployment(&objects);
    assert_eq!(deploy["spec"]["replicas"], 2);
    assert!(
        deploy["spec"]["strategy"].is_null(),
        "rolling updates are safe with leader election"
    );
    let container = &deploy["spec"]["template"]["spec"]["containers"][0];
    let args: Vec<&str> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(args.contains(&"--leader-election"), "{args:?}");
    for (name, field) in [("POD_NAME", "metadata.name"), ("POD_NAMESPACE", "metadata.namespace")] {
        let env = container["env"].as_array().unwrap().iter().find(|e| e["name"] == name);
        assert_eq!(
            env.map(|e| &e["valueFrom"]["fieldRef"]["fieldPath"]),
            Some(&json!(field)),
            "{name} from the downward API"
        );
    }

    let pdbs = kind(&objects, "PodDisruptionBudget");
    assert_eq!(pdbs.len(), 1);
    assert_eq!(pdbs[0]["spec"]["minAvailable"], 1);
    let pod_labels = deploy["spec"]["template"]["metadata"]["labels"].as_object().unwrap();
    for (k, v) in pdbs[0]["spec"]["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(pod_labels.get(k), Some(v), "the budget selects the operator pods");
    }

    let roles = kind(&objects, "Role");
    assert_eq!(roles.len(), 1);
    assert_eq!(roles[0]["metadata"]["namespace"], "streamq-system");
    assert_eq!(
        roles[0]["rules"],
        json!([{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create", "update"]}])
    );
    let bindings = kind(&objects, "RoleBinding");
    assert_eq!(bindings.len(), 1);
    assert_eq!(bindings[0]["roleRef"]["name"], roles[0]["metadata"]["name"]);
}

#[test]
fn one_replica_has_no_budget_and_no_leader_election_means_no_lease_access() {
    let single = render(&["--set", "replicaCount=1"]);
    assert!(
        kind(&single, "PodDisruptionBudget").is_empty(),
        "a budget would block drains"
    );
    assert_eq!(deployment(&single)["spec"]["replicas"], 1);

    let off = render(&["--set", "leaderElection.enabled=false", "--set", "replicaCount=1"]);
    assert!(kind(&off, "Role").is_empty() && kind(&off, "RoleBinding").is_empty());
    let deploy = deployment(&off);
    assert_eq!(deploy["spec"]["strategy"]["type"], "Recreate");
    let container = &deploy["spec"]["template"]["spec"]["containers"][0];
    assert!(
        !container["args"]
            .as_array()
            .unwrap()
            .contains(&json!("--leader-election"))
    );
    assert!(
        !container["env"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "POD_NAMESPACE")
    );
}

#[test]
fn the_operator_pod_is_hardened_for_restricted_pod_security() {
    let objects = render(&[]);
    let pod = &deployment(&objects)["spec"]["template"]["spec"];
    let psc = &pod["securityContext"];
    assert_eq!(psc["runAsNonRoot"], true);
    assert!(
        psc["runAsUser"].as_i64().is_some_and(|uid| uid > 0),
        "a numeric non-root uid"
    );
    assert_eq!(psc["seccompProfile"]["type"], "RuntimeDefault");
    let containers = pod["containers"]
        .as_array()
        .unwrap()
        .iter()
        .chain(pod["initContainers"].as_array().into_iter().flatten());
    for c in containers {
        let sc = &c["securityContext"];
        assert_eq!(sc["allowPrivilegeEscalation"], false, "{}", c["name"]);
        assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]), "{}", c["name"]);
    }
}

#[tokio::test]
async fn chart_installs_under_restricted_pod_security_and_its_rbac_runs_the_operator() {
    let env = TestEnv::new("chart").await;
    let ns = env.namespace.as_str();
    env.label_namespace(&["pod-security.kubernetes.io/enforce=restricted"]);
    let release = Release::install(&env, &[]);

    // kwok plays the kubelet: the operator pod becomes Running on a fake node.
    assert_eq!(release.rolled_out(), ["Running", "Running"]);
    // The PodDisruptionBudget sees both pods and allows one disruption.
    let allowed = release.get(
        "poddisruptionbudget",
        "{.items[0].status.expectedPods} {.items[0].status.disruptionsAllowed}",
    );
    assert_eq!(allowed.trim(), "2 1");

    let sa = release.get("serviceaccount", "{.items[0].metadata.name}");
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
        ("get", "leases.coordination.k8s.io", "", "yes"),
        ("update", "leases.coordination.k8s.io", "", "yes"),
        ("patch", "leases.coordination.k8s.io", "", "no"),
        ("list", "leases.coordination.k8s.io", "", "no"),
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
    let kubeconfig = service_account_kubeconfig(ns, &sa);
    let operator = Operator::start(ns, &[("KUBECONFIG", kubeconfig.to_str().unwrap())]);

    env.create(&external_queue("orders", json!({}))).await;
    env.create(&consumer("billing", "orders", json!({}))).await;
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

    release.uninstall();
}
