//! A test's environment: the local control plane and redis-server that
//! tests/cluster/up started (found through its exported variables), and a
//! namespace of the test's own on it.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use k8s_openapi::{
    NamespaceResourceScope,
    api::core::v1::{Namespace, Secret},
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, Client, Resource,
    api::PostParams,
    runtime::wait::{await_condition, conditions::is_crd_established},
};
use serde::{Serialize, de::DeserializeOwned};
use streamq::api::Queue;
use tokio::sync::OnceCell;

use super::{
    kubectl::{kubectl, kubectl_ok, kubectl_stdin},
    objects::{external_queue, secret, wait_ready},
    operator::Operator,
    redis_client::connect,
};

pub const TIMEOUT: Duration = Duration::from_secs(60);

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A file of the repository, as text.
pub fn read(path: impl AsRef<Path>) -> String {
    std::fs::read_to_string(repo_root().join(path.as_ref()))
        .unwrap_or_else(|e| panic!("read {}: {e}", path.as_ref().display()))
}

/// A variable tests/cluster/up exports. Missing is a failure, never a skip:
/// `make test` starts the cluster, and `eval "$(tests/cluster/up)"` does so for a shell.
fn require_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: these tests need the local control plane and redis-server.\n\
             Run `make test`, or `eval \"$(tests/cluster/up)\"` in this shell first."
        )
    })
}

/// The admin URL of the shared redis-server.
pub fn redis_url() -> String {
    require_env("STREAMQ_REDIS_URL")
}

/// Where tests/cluster/up keeps the control plane's pids, logs and CA.
pub fn cluster_dir() -> PathBuf {
    PathBuf::from(require_env("STREAMQ_CLUSTER_DIR"))
}

/// A name no other test (in this or another process) uses.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{prefix}-{:x}{:x}{}",
        std::process::id(),
        nanos % 0xfff,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A namespace of the test's own, a `kube::Client`, and the shared redis-server.
pub struct TestEnv {
    pub client: Client,
    pub namespace: String,
    pub redis_url: String,
}

static CRDS_INSTALLED: OnceCell<()> = OnceCell::const_new();

impl TestEnv {
    /// A fresh namespace `<prefix>-<unique>`, with the CRDs from `crds/` installed.
    pub async fn new(prefix: &str) -> Self {
        require_env("KUBECONFIG");
        let redis_url = redis_url();
        let client = Client::try_default().await.expect("a kube client from KUBECONFIG");
        CRDS_INSTALLED
            .get_or_init(|| async {
                kubectl_ok(None, &["apply", "--server-side", "--force-conflicts", "-f", "crds/"]);
                // Watched, not `kubectl wait`: right after a first apply the CRD may have no
                // status.conditions yet, and `kubectl wait` fails on that instead of waiting.
                let crds = Api::<CustomResourceDefinition>::all(client.clone());
                for name in ["queues.streamq.dev", "consumers.streamq.dev"] {
                    tokio::time::timeout(TIMEOUT, await_condition(crds.clone(), name, is_crd_established()))
                        .await
                        .unwrap_or_else(|_| panic!("CRD {name} not Established within {TIMEOUT:?}"))
                        .unwrap_or_else(|err| panic!("watching CRD {name}: {err}"));
                }
            })
            .await;

        let namespace = unique_name(prefix);
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {"name": namespace, "labels": {"streamq.dev/test": "true"}}
        }))
        .unwrap();
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .expect("create namespace");
        Self {
            client,
            namespace,
            redis_url,
        }
    }

    pub fn api<K>(&self) -> Api<K>
    where
        K: Resource<DynamicType = (), Scope = NamespaceResourceScope>,
    {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// Creates `obj` in this test's namespace; fails the test if it is refused.
    pub async fn create<K>(&self, obj: &K) -> K
    where
        K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
            + Clone
            + DeserializeOwned
            + Serialize
            + std::fmt::Debug,
    {
        self.api::<K>()
            .create(&PostParams::default(), obj)
            .await
            .unwrap_or_else(|e| panic!("create {:?}: {e}", obj.meta().name))
    }

    /// Runs kubectl in this test's namespace.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        kubectl(Some(&self.namespace), args)
    }

    /// Runs kubectl in this test's namespace and fails the test unless it succeeds.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        kubectl_ok(Some(&self.namespace), args)
    }

    /// Sets labels (`key=value`) on this test's namespace.
    pub fn label_namespace(&self, labels: &[&str]) {
        let mut args = vec!["label", "namespace", &self.namespace];
        args.extend_from_slice(labels);
        self.kubectl_ok(&args);
    }

    /// Applies a YAML manifest into this test's namespace with kubectl.
    pub fn apply_yaml(&self, yaml: &str) -> Output {
        kubectl_stdin(Some(&self.namespace), &["apply", "-f", "-"], yaml)
    }

    /// `streamq run` watching only this namespace, as a child process.
    pub fn start_operator(&self) -> Operator {
        Operator::start(&self.namespace, &[])
    }

    /// An admin connection to the shared redis-server.
    pub async fn redis(&self) -> ::redis::aio::MultiplexedConnection {
        connect(&self.redis_url).await
    }

    /// The Secret `redis-admin` with `url`, where external Queues find their Redis.
    pub async fn create_admin_secret_for(&self, url: &str) {
        self.create(&secret("redis-admin", "url", url)).await;
    }

    /// The Secret `redis-admin` holding the shared redis-server's admin URL.
    pub async fn create_admin_secret(&self) {
        self.create_admin_secret_for(&self.redis_url).await;
    }

    /// Creates an external Queue `name` (and the admin Secret) and waits until it is Ready.
    pub async fn ready_queue(&self, name: &str) -> Queue {
        self.ready_queue_at(name, &self.redis_url).await
    }

    /// [`Self::ready_queue`] on the Redis at `url` (for pods: the shared server's pod address).
    pub async fn ready_queue_at(&self, name: &str, url: &str) -> Queue {
        self.create_admin_secret_for(url).await;
        self.create(&external_queue(name, serde_json::json!({}))).await;
        wait_ready(&self.api::<Queue>(), name).await
    }

    /// One key of a Secret, as text.
    pub async fn secret_text(&self, name: &str, key: &str) -> String {
        let s = self.api::<Secret>().get(name).await.unwrap();
        let data = s.data.unwrap_or_default();
        let bytes = data
            .get(key)
            .unwrap_or_else(|| panic!("Secret {name} has no key {key}"));
        String::from_utf8(bytes.0.clone()).unwrap()
    }
}

impl Drop for TestEnv {
    /// Deletes the namespace without waiting; a failing test leaves nothing
    /// behind that a later run could trip over.
    fn drop(&mut self) {
        let _ = Command::new("kubectl")
            .args([
                "delete",
                "namespace",
                &self.namespace,
                "--wait=false",
                "--ignore-not-found",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
