//! The Helm chart in tests: render it, install it (or only its RBAC), and
//! authenticate as its ServiceAccount with a TokenRequest token.

use std::{
    collections::BTreeSet,
    path::PathBuf,
    process::{Command, Output},
};

use serde_json::{Value, json};

use super::{
    audit::Access,
    env::{TestEnv, repo_root},
    kubectl::{kubectl, kubectl_ok},
    process::stdout_ok,
};

pub fn helm(args: &[&str]) -> Output {
    Command::new("helm")
        .args(args)
        .current_dir(repo_root())
        .output()
        .expect("run helm (is tests/cluster/up's PATH exported?)")
}

/// Runs helm and fails the test unless it succeeds; returns its stdout.
pub fn helm_ok(args: &[&str]) -> String {
    stdout_ok(&format!("helm {args:?}"), helm(args))
}

/// `helm template` of the chart, parsed: one JSON value per rendered object.
pub fn render(args: &[&str]) -> Vec<Value> {
    let mut all = vec!["template", "t", "charts/streamq", "-n", "streamq-system"];
    all.extend_from_slice(args);
    let yaml = helm_ok(&all);
    serde_saphyr::from_multiple::<Value>(&yaml)
        .unwrap()
        .into_iter()
        .filter(|v| !v.is_null())
        .collect()
}

/// A release of the chart in a test's namespace, uninstalled when dropped
/// (its ClusterRole and ClusterRoleBinding are cluster-scoped and would
/// otherwise outlive the namespace), with any extra ServiceAccounts bound to
/// the same roles.
pub struct Release {
    pub name: String,
    pub namespace: String,
    /// `<release>-streamq`: the ClusterRole, and the ServiceAccount.
    pub fullname: String,
    extra_bindings: Vec<String>,
    installed: bool,
}

impl Release {
    /// `helm install` into the test's namespace, watching only it, with `set`
    /// extra `--set` values (e.g. `replicaCount=0` for the RBAC alone).
    pub fn install(env: &TestEnv, set: &[&str]) -> Self {
        let name = format!("sq-{}", env.namespace);
        let mut args = vec![
            "install".to_owned(),
            name.clone(),
            "charts/streamq".into(),
            "-n".into(),
            env.namespace.clone(),
            "--set".into(),
            format!("watchNamespace={}", env.namespace),
        ];
        for s in set {
            args.extend(["--set".to_owned(), (*s).to_owned()]);
        }
        let release = Self {
            fullname: format!("{name}-streamq"),
            name,
            namespace: env.namespace.clone(),
            extra_bindings: vec![],
            installed: true,
        };
        helm_ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
        release
    }

    /// The chart's ServiceAccount.
    pub fn service_account(&self) -> &str {
        &self.fullname
    }

    /// `kubectl get <kind>` of the release's objects (by its instance label), as `jsonpath`.
    pub fn get(&self, kind: &str, jsonpath: &str) -> String {
        let selector = format!("app.kubernetes.io/instance={}", self.name);
        let jsonpath = format!("jsonpath={jsonpath}");
        kubectl_ok(Some(&self.namespace), &["get", kind, "-l", &selector, "-o", &jsonpath])
    }

    /// Waits until the operator Deployment has rolled out; returns its pods' phases.
    pub fn rolled_out(&self) -> Vec<String> {
        let selector = format!("app.kubernetes.io/instance={}", self.name);
        kubectl_ok(
            Some(&self.namespace),
            &["rollout", "status", "deployment", "-l", &selector, "--timeout=120s"],
        );
        let phases = self.get("pods", "{.items[*].status.phase}");
        phases.split_whitespace().map(str::to_owned).collect()
    }

    /// `helm uninstall --wait`; fails the test unless it succeeds.
    pub fn uninstall(mut self) {
        helm_ok(&["uninstall", &self.name, "-n", &self.namespace, "--wait"]);
        self.installed = false;
    }

    /// Creates one more ServiceAccount with exactly the chart's roles (its
    /// ClusterRole and, with leader election, its Lease Role).
    pub fn extra_service_account(&mut self, sa: &str) {
        let ns = self.namespace.as_str();
        kubectl_ok(Some(ns), &["create", "serviceaccount", sa]);
        let binding = format!("{}-{sa}", self.fullname);
        let subject = format!("--serviceaccount={ns}:{sa}");
        kubectl_ok(
            None,
            &[
                "create",
                "clusterrolebinding",
                &binding,
                &format!("--clusterrole={}", self.fullname),
                &subject,
            ],
        );
        self.extra_bindings.push(binding.clone());
        kubectl_ok(
            Some(ns),
            &[
                "create",
                "rolebinding",
                &binding,
                &format!("--role={}-leader-election", self.fullname),
                &subject,
            ],
        );
    }

    /// The rules the release grants: its ClusterRole and Role(s), each rule
    /// expanded to (verb, apiGroup, resource, subresource).
    pub fn granted(&self) -> BTreeSet<Access> {
        let manifest = helm_ok(&["get", "manifest", &self.name, "-n", &self.namespace]);
        let mut granted = BTreeSet::new();
        for v in serde_saphyr::from_multiple::<Value>(&manifest).unwrap() {
            if !matches!(v["kind"].as_str(), Some("ClusterRole" | "Role")) {
                continue;
            }
            for rule in v["rules"].as_array().unwrap() {
                for group in rule["apiGroups"].as_array().unwrap() {
                    for resource in rule["resources"].as_array().unwrap() {
                        let (resource, sub) = resource
                            .as_str()
                            .unwrap()
                            .split_once('/')
                            .unwrap_or((resource.as_str().unwrap(), ""));
                        for verb in rule["verbs"].as_array().unwrap() {
                            granted.insert(Access {
                                verb: verb.as_str().unwrap().to_owned(),
                                group: group.as_str().unwrap().to_owned(),
                                resource: resource.to_owned(),
                                subresource: sub.to_owned(),
                            });
                        }
                    }
                }
            }
        }
        granted
    }
}

impl Drop for Release {
    fn drop(&mut self) {
        for b in &self.extra_bindings {
            let _ = kubectl(None, &["delete", "clusterrolebinding", b, "--ignore-not-found"]);
        }
        if self.installed {
            let _ = helm(&["uninstall", &self.name, "-n", &self.namespace]);
        }
    }
}

/// A kubeconfig that authenticates only with a fresh TokenRequest token of
/// ServiceAccount `ns/sa`, against the test cluster's apiserver and CA.
pub fn service_account_kubeconfig(ns: &str, sa: &str) -> PathBuf {
    let token = kubectl_ok(Some(ns), &["create", "token", sa, "--duration=2h"]);
    let server = kubectl_ok(
        None,
        &[
            "config",
            "view",
            "--minify",
            "-o",
            "jsonpath={.clusters[0].cluster.server}",
        ],
    );
    let ca = match std::env::var("STREAMQ_CLUSTER_DIR") {
        Ok(dir) => format!("{dir}/pki/ca.crt"),
        Err(_) => kubectl_ok(
            None,
            &[
                "config",
                "view",
                "--minify",
                "--raw",
                "-o",
                "jsonpath={.clusters[0].cluster.certificate-authority}",
            ],
        ),
    };
    let path = std::env::temp_dir().join(format!("{ns}-{sa}.kubeconfig"));
    std::fs::write(
        &path,
        serde_saphyr::to_string(&json!({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "c", "cluster": {"server": server, "certificate-authority": ca}}],
            "users": [{"name": sa, "user": {"token": token.trim()}}],
            "contexts": [{"name": "c", "context": {"cluster": "c", "user": sa, "namespace": ns}}],
            "current-context": "c",
        }))
        .unwrap(),
    )
    .unwrap();
    path
}
