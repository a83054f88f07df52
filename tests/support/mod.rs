//! Shared harness of the integration tests. Every test gets its own
//! namespace on the real local control plane (tests/cluster/up), a
//! `kube::Client`, and a connection to the real redis-server.
//!
//! A missing cluster is a failure, never a skip: `make test` starts it, and
//! `eval "$(tests/cluster/up)"` does so for a shell.
#![allow(dead_code)] // each test binary uses a different part of the harness

pub mod chaos;
pub mod chart;
pub mod closed_loop;
pub mod hardening;

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use k8s_openapi::{
    NamespaceResourceScope, api::core::v1::Namespace,
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, Client, Resource,
    api::{DeleteParams, PostParams},
    runtime::wait::{await_condition, conditions::is_crd_established},
};
use serde::de::DeserializeOwned;
use tokio::sync::OnceCell;

pub const TIMEOUT: Duration = Duration::from_secs(60);

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn require_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: these tests need the local control plane and redis-server.\n\
             Run `make test`, or `eval \"$(tests/cluster/up)\"` in this shell first."
        )
    })
}

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
        let redis_url = require_env("STREAMQ_REDIS_URL");
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

    /// Runs kubectl in this test's namespace.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        kubectl(Some(&self.namespace), args)
    }

    /// Runs kubectl in this test's namespace and fails the test unless it succeeds.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        kubectl_ok(Some(&self.namespace), args)
    }

    /// Applies a YAML manifest into this test's namespace with kubectl.
    pub fn apply_yaml(&self, yaml: &str) -> Output {
        kubectl_stdin(Some(&self.namespace), &["apply", "-f", "-"], yaml)
    }

    /// `streamq run` watching only this namespace, as a child process.
    pub fn start_operator(&self) -> Operator {
        Operator::start(&self.namespace, &[])
    }

    pub async fn redis(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.redis_url.as_str())
            .expect("a valid STREAMQ_REDIS_URL")
            .get_multiplexed_async_connection_with_config(&patient_redis())
            .await
            .expect("connect to redis-server")
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

pub fn kubectl(namespace: Option<&str>, args: &[&str]) -> Output {
    let mut cmd = Command::new("kubectl");
    if let Some(ns) = namespace {
        cmd.args(["-n", ns]);
    }
    cmd.args(args)
        .current_dir(repo_root())
        .output()
        .expect("run kubectl (is tests/cluster/up's PATH exported?)")
}

pub fn kubectl_ok(namespace: Option<&str>, args: &[&str]) -> String {
    let out = kubectl(namespace, args);
    assert!(
        out.status.success(),
        "kubectl {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

pub fn kubectl_stdin(namespace: Option<&str>, args: &[&str], stdin: &str) -> Output {
    use std::io::Write;
    let mut cmd = Command::new("kubectl");
    if let Some(ns) = namespace {
        cmd.args(["-n", ns]);
    }
    let mut child = cmd
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run kubectl");
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

/// Waits until `cond` holds for the named object, or fails the test after `timeout`.
pub async fn wait_for<K>(api: &Api<K>, name: &str, what: &str, cond: impl Fn(&K) -> bool) -> K
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    wait_for_within(api, name, what, TIMEOUT, cond).await
}

pub async fn wait_for_within<K>(api: &Api<K>, name: &str, what: &str, timeout: Duration, cond: impl Fn(&K) -> bool) -> K
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let found = tokio::time::timeout(
        timeout,
        await_condition(api.clone(), name, |o: Option<&K>| o.is_some_and(&cond)),
    )
    .await;
    match found {
        Ok(Ok(Some(obj))) => obj,
        Ok(Ok(None)) => unreachable!("the condition requires the object"),
        Ok(Err(err)) => panic!("watching {name} for {what}: {err}"),
        Err(_) => {
            let last = api.get_opt(name).await;
            panic!("timed out after {timeout:?} waiting for {name}: {what}; last seen: {last:#?}")
        }
    }
}

pub async fn delete<K>(api: &Api<K>, name: &str)
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let _ = api.delete(name, &DeleteParams::default()).await;
}

/// A `streamq run` child process, killed when dropped.
pub struct Operator {
    child: Child,
    pub metrics_addr: String,
    log: PathBuf,
}

impl Operator {
    pub fn start(namespace: &str, extra_env: &[(&str, &str)]) -> Self {
        Self::start_with(namespace, &[], extra_env)
    }

    pub fn start_with(namespace: &str, extra_args: &[&str], extra_env: &[(&str, &str)]) -> Self {
        let port = free_port();
        let metrics_addr = format!("127.0.0.1:{port}");
        let log = std::env::temp_dir().join(format!("streamq-operator-{namespace}-{port}.log"));
        let log_file = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_streamq"))
            .args([
                "run",
                "--namespace",
                namespace,
                "--metrics-addr",
                &metrics_addr,
                "--resync-interval",
                "2s",
            ])
            .args(extra_args)
            .envs(extra_env.iter().copied())
            .env("RUST_LOG", "info,streamq=debug")
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .expect("start streamq run");
        Self {
            child,
            metrics_addr,
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// GETs a path of the operator's HTTP endpoint, retrying until it answers.
    pub async fn get(&self, path: &str) -> (u16, String) {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            if let Ok(resp) = http_get(&self.metrics_addr, path).await {
                return resp;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "operator never answered on {}",
                self.metrics_addr
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Sends SIGTERM and waits for the exit status.
    pub async fn terminate(mut self, within: Duration) -> std::process::ExitStatus {
        signal(self.child.id(), "TERM");
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "operator did not exit within {within:?} of SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- operator log ({}) ---\n{}", self.log.display(), self.logs());
        }
    }
}

pub fn signal(pid: u32, sig: &str) {
    Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .expect("kill");
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A minimal HTTP/1.0 GET, enough for the operator's own endpoints.
pub async fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut buf = String::new();
    stream.read_to_string(&mut buf).await?;
    let status = buf.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

pub fn read(path: impl AsRef<Path>) -> String {
    std::fs::read_to_string(repo_root().join(path.as_ref()))
        .unwrap_or_else(|e| panic!("read {}: {e}", path.as_ref().display()))
}

/// A Secret with one key.
pub fn secret(name: &str, key: &str, value: &str) -> k8s_openapi::api::core::v1::Secret {
    k8s_openapi::api::core::v1::Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        data: Some([(key.to_owned(), k8s_openapi::ByteString(value.as_bytes().to_vec()))].into()),
        ..Default::default()
    }
}

/// A Queue with the given spec.
pub fn queue(name: &str, spec: serde_json::Value) -> streamq::api::Queue {
    serde_json::from_value(
        serde_json::json!({"apiVersion": "streamq.dev/v1alpha1", "kind": "Queue", "metadata": {"name": name}, "spec": spec}),
    )
    .unwrap()
}

/// A Queue on the test's redis-server, through the Secret `redis-admin`, with `extra` spec fields.
pub fn external_queue(name: &str, extra: serde_json::Value) -> streamq::api::Queue {
    let mut spec = serde_json::json!({"broker": {"external": {"urlSecretRef": {"name": "redis-admin", "key": "url"}}}});
    for (k, v) in extra.as_object().unwrap() {
        spec[k] = v.clone();
    }
    queue(name, spec)
}

impl TestEnv {
    /// The Secret `redis-admin` holding the test redis-server's admin URL.
    pub async fn create_admin_secret(&self) {
        self.api::<k8s_openapi::api::core::v1::Secret>()
            .create(&PostParams::default(), &secret("redis-admin", "url", &self.redis_url))
            .await
            .unwrap();
    }

    /// Creates an external Queue `name` (and the admin Secret) and waits until it is Ready.
    pub async fn ready_queue(&self, name: &str) -> streamq::api::Queue {
        self.create_admin_secret().await;
        self.api::<streamq::api::Queue>()
            .create(&PostParams::default(), &external_queue(name, serde_json::json!({})))
            .await
            .unwrap();
        wait_for(
            &self.api::<streamq::api::Queue>(),
            name,
            "Ready",
            |q: &streamq::api::Queue| {
                q.status.as_ref().is_some_and(|s| {
                    s.conditions
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.status == streamq::api::ConditionStatus::True)
                })
            },
        )
        .await
    }
}

/// Get, modify, replace, retried on 409 Conflict: the operator writes the same object
/// (status, finalizers) concurrently, so a replace may carry a stale resourceVersion.
pub async fn update<K>(api: &Api<K>, name: &str, modify: impl Fn(&mut K)) -> K
where
    K: Resource + Clone + DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    for _ in 0..20 {
        let mut obj = api.get(name).await.unwrap_or_else(|e| panic!("get {name}: {e}"));
        modify(&mut obj);
        match api.replace(name, &PostParams::default(), &obj).await {
            Ok(updated) => return updated,
            Err(kube::Error::Api(status)) if status.code == 409 => continue,
            Err(e) => panic!("replace {name}: {e}"),
        }
    }
    panic!("replace {name}: still conflicting after 20 attempts")
}

/// Connection settings for test clients. redis-rs defaults to a 1 s connect and a
/// 500 ms response timeout, which a loaded 2-core CI box running a 100,000-message
/// test beside this one can exceed without anything being wrong.
pub fn patient_redis() -> ::redis::AsyncConnectionConfig {
    ::redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(std::time::Duration::from_secs(10)))
        .set_response_timeout(Some(std::time::Duration::from_secs(30)))
}
