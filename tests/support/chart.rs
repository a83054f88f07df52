//! The Helm chart in tests: install it (or only its RBAC), authenticate as its
//! ServiceAccount with a TokenRequest token, and read what that account did
//! from the apiserver's audit log.

use std::{
    collections::BTreeSet,
    io::BufRead,
    path::PathBuf,
    process::{Command, Output},
};

use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};

use super::{TestEnv, kubectl, kubectl_ok, repo_root};

pub fn helm(args: &[&str]) -> Output {
    Command::new("helm")
        .args(args)
        .current_dir(repo_root())
        .output()
        .expect("run helm (is tests/cluster/up's PATH exported?)")
}

pub fn helm_ok(args: &[&str]) -> String {
    let out = helm(args);
    assert!(
        out.status.success(),
        "helm {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
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
        };
        helm_ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
        release
    }

    /// The chart's ServiceAccount.
    pub fn service_account(&self) -> &str {
        &self.fullname
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
        let _ = helm(&["uninstall", &self.name, "-n", &self.namespace]);
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

/// One kind of API request: what RBAC authorizes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Access {
    pub verb: String,
    /// "" for the core group.
    pub group: String,
    pub resource: String,
    pub subresource: String,
}

impl std::fmt::Display for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let group = if self.group.is_empty() { "core" } else { &self.group };
        write!(f, "{:<7} {group:<20} {}", self.verb, self.resource)?;
        if !self.subresource.is_empty() {
            write!(f, "/{}", self.subresource)?;
        }
        Ok(())
    }
}

/// One completed request from the audit log.
#[derive(Clone, Debug)]
pub struct Audited {
    pub access: Access,
    pub user: String,
    pub namespace: String,
    pub name: String,
    pub code: u16,
    /// When the apiserver received it, and when it completed.
    pub received: Timestamp,
    pub completed: Timestamp,
}

impl Audited {
    pub fn mutating(&self) -> bool {
        matches!(
            self.access.verb.as_str(),
            "create" | "update" | "patch" | "delete" | "deletecollection"
        )
    }

    pub fn succeeded(&self) -> bool {
        (200..300).contains(&self.code)
    }
}

/// Every completed request of users whose name starts with `user_prefix`,
/// received at or after `since`, from the apiserver's audit log (Metadata
/// level, ServiceAccounts only) and its rotated backup. The log is shared by
/// all tests, so the filter is by user and time.
pub fn audit_log(user_prefix: &str, since: Timestamp) -> Vec<Audited> {
    let dir = PathBuf::from(
        std::env::var("STREAMQ_CLUSTER_DIR")
            .expect("STREAMQ_CLUSTER_DIR is not set: run `eval \"$(tests/cluster/up)\"` (the audit log lives there)"),
    )
    .join("logs");
    let mut found = vec![];
    let mut files = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let file_name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !(file_name.starts_with("audit") && file_name.ends_with(".log")) {
            continue;
        }
        files += 1;
        let needle = format!("\"username\":\"{user_prefix}");
        for line in std::io::BufReader::new(std::fs::File::open(&path).unwrap()).lines() {
            let Ok(line) = line else { continue };
            if !line.contains(&needle) {
                continue;
            }
            let event: Value = serde_json::from_str(&line).unwrap();
            if event["stage"] != "ResponseComplete" {
                continue;
            }
            let received: Timestamp = event["requestReceivedTimestamp"].as_str().unwrap().parse().unwrap();
            if received < since {
                continue;
            }
            let object = &event["objectRef"];
            let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
            found.push(Audited {
                access: Access {
                    verb: text(&event["verb"]),
                    group: text(&object["apiGroup"]),
                    resource: text(&object["resource"]),
                    subresource: text(&object["subresource"]),
                },
                user: text(&event["user"]["username"]),
                namespace: text(&object["namespace"]),
                name: text(&object["name"]),
                code: event["responseStatus"]["code"].as_u64().unwrap_or(0) as u16,
                received,
                completed: event["stageTimestamp"].as_str().unwrap().parse().unwrap(),
            });
        }
    }
    assert!(files > 0, "no audit log in {}", dir.display());
    found.sort_by_key(|a| a.completed);
    found
}
