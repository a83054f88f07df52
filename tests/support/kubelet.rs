//! [`Kubelet`]: kwok runs no containers, so this runs one real `streamq
//! worker` process per Pod of a Consumer, with the env the operator put in
//! the Deployment, SIGTERMs it when its Pod is deleted and restarts it when it dies.

use std::{
    collections::{BTreeMap, HashSet},
    path::PathBuf,
    process::{Child, ExitStatus},
    sync::{Arc, Mutex},
    time::Duration,
};

use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{Pod, Secret},
};
use kube::{Api, Client, ResourceExt, api::ListParams};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{
    env::TestEnv,
    process::{signal, spawn_worker},
    wait::{poll, wait_until},
};

/// How a worker process ended.
#[derive(Clone, Debug)]
pub struct Exit {
    pub pod: String,
    pub status: Option<ExitStatus>,
    /// From the worker's "exiting" log line: handlers still running when grace ended.
    pub abandoned: Option<u64>,
    pub acked: Option<u64>,
    /// From the "stopping: waiting for in-flight messages" line: handlers running at SIGTERM.
    pub in_flight_at_stop: Option<u64>,
    /// SIGTERMed because its Pod was deleted (rather than killed by the test).
    pub terminated_for_scale_down: bool,
    pub log: String,
}

struct WorkerProcess {
    pod: String,
    child: Child,
    log: PathBuf,
}

impl WorkerProcess {
    fn exit(mut self, status: Option<ExitStatus>, terminated_for_scale_down: bool) -> Exit {
        let status = status.or_else(|| self.child.wait().ok());
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        // Kept in the Exit, which failing assertions print.
        let _ = std::fs::remove_file(&self.log);
        let field = |line: &str, name: &str| {
            log.lines()
                .rev()
                .find(|l| l.contains(line))
                .and_then(|l| l.split_whitespace().find_map(|w| w.strip_prefix(name)))
                .and_then(|v| v.parse().ok())
        };
        Exit {
            pod: self.pod,
            status,
            abandoned: field("exiting", "abandoned="),
            acked: field("exiting", "acked="),
            in_flight_at_stop: field("waiting for in-flight", "running="),
            terminated_for_scale_down,
            log,
        }
    }
}

#[derive(Default)]
struct KubeletState {
    running: BTreeMap<String, WorkerProcess>,
    terminating: Vec<WorkerProcess>,
    exited: Vec<Exit>,
    /// Resolved env of the worker container, with the pod name left out.
    env: Option<Vec<(String, EnvValue)>>,
}

#[derive(Clone)]
enum EnvValue {
    Literal(String),
    PodName,
}

/// Plays the kubelet for one Consumer's Pods: one `streamq worker --http
/// <sink>` per live Pod, named after it and given the env the operator wrote
/// into the Deployment (the consumer URL read from its Secret). A deleted
/// Pod's worker gets SIGTERM and drains; a worker that dies is restarted.
pub struct Kubelet {
    state: Arc<Mutex<KubeletState>>,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Kubelet {
    /// `extra_args`: more `streamq worker` arguments (e.g. `--grace 20s`).
    pub fn start(env: &TestEnv, consumer: &str, sink_url: &str, extra_args: &[&str]) -> Self {
        let (client, namespace) = (env.client.clone(), env.namespace.as_str());
        let state: Arc<Mutex<KubeletState>> = Arc::default();
        let stop = CancellationToken::new();
        let mut args: Vec<String> = vec!["worker".into(), "--http".into(), sink_url.into()];
        args.extend(extra_args.iter().map(|s| (*s).to_owned()));
        let task = tokio::spawn({
            let (state, stop, ns, consumer) = (state.clone(), stop.clone(), namespace.to_owned(), consumer.to_owned());
            async move {
                let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
                let selector = format!("streamq.dev/consumer={consumer}");
                let mut n = 0u32;
                while !stop.is_cancelled() {
                    let needs_env = state.lock().unwrap().env.is_none();
                    if needs_env && let Some(env) = worker_env(&client, &ns, &consumer).await {
                        state.lock().unwrap().env = Some(env);
                    }
                    // The apiserver may be down (one scenario restarts it): keep the workers as they are.
                    if let Ok(list) = pods.list_metadata(&ListParams::default().labels(&selector)).await {
                        let live: HashSet<String> = list
                            .items
                            .iter()
                            .filter(|p| p.metadata.deletion_timestamp.is_none())
                            .map(|p| p.name_any())
                            .collect();
                        let mut s = state.lock().unwrap();
                        if let Some(env) = s.env.clone() {
                            for pod in &live {
                                if !s.running.contains_key(pod) {
                                    n += 1;
                                    let w = start_pod_worker(&args, &env, pod, &ns, n);
                                    s.running.insert(pod.clone(), w);
                                }
                            }
                        }
                        let gone: Vec<String> = s.running.keys().filter(|p| !live.contains(*p)).cloned().collect();
                        for pod in gone {
                            let w = s.running.remove(&pod).unwrap();
                            signal(w.child.id(), "TERM");
                            s.terminating.push(w);
                        }
                    }
                    reap(&mut state.lock().unwrap(), &args, &ns, &mut n);
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    }
                }
            }
        });
        Self {
            state,
            stop,
            task: Some(task),
        }
    }

    pub fn running(&self) -> usize {
        self.state.lock().unwrap().running.len()
    }

    /// Waits until `n` workers run.
    pub async fn wait_running(&self, n: usize) {
        wait_until(Duration::from_secs(60), &format!("{n} workers running"), || async {
            self.running() == n
        })
        .await;
    }

    /// The workers that have ended so far.
    pub fn exits(&self) -> Vec<Exit> {
        self.state.lock().unwrap().exited.clone()
    }

    /// SIGKILLs a random running worker; the next round restarts it under
    /// the same name, as a kubelet restarts a crashed container. Returns the pod.
    pub fn kill_random(&self) -> Option<String> {
        let mut s = self.state.lock().unwrap();
        if s.running.is_empty() {
            return None;
        }
        let pod = s.running.keys().nth(nanos() % s.running.len()).cloned()?;
        let mut w = s.running.remove(&pod).unwrap();
        let _ = w.child.kill();
        let status = w.child.wait().ok();
        let exit = w.exit(status, false);
        s.exited.push(exit);
        Some(pod)
    }

    /// Stops mirroring, SIGTERMs every worker and waits for them all; returns every exit.
    pub async fn shutdown(mut self, within: Duration) -> Vec<Exit> {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        {
            let mut s = self.state.lock().unwrap();
            let running: Vec<WorkerProcess> = std::mem::take(&mut s.running).into_values().collect();
            for w in running {
                signal(w.child.id(), "TERM");
                s.terminating.push(w);
            }
        }
        poll(within, "the workers to exit after SIGTERM", || {
            let mut s = self.state.lock().unwrap();
            reap(&mut s, &[], "", &mut 0);
            let exited = if s.terminating.is_empty() {
                Ok(std::mem::take(&mut s.exited))
            } else {
                Err(format!("{} still running", s.terminating.len()))
            };
            async move { exited }
        })
        .await
    }
}

/// Collects exited workers; restarts the running ones that died (unless `args` is empty).
fn reap(s: &mut KubeletState, args: &[String], ns: &str, n: &mut u32) {
    let mut i = 0;
    while i < s.terminating.len() {
        if let Ok(Some(status)) = s.terminating[i].child.try_wait() {
            let w = s.terminating.remove(i);
            s.exited.push(w.exit(Some(status), true));
        } else {
            i += 1;
        }
    }
    let died: Vec<String> = s
        .running
        .iter_mut()
        .filter_map(|(pod, w)| matches!(w.child.try_wait(), Ok(Some(_))).then(|| pod.clone()))
        .collect();
    for pod in died {
        let w = s.running.remove(&pod).unwrap();
        eprintln!(
            "worker {pod} exited on its own; log:\n{}",
            std::fs::read_to_string(&w.log).unwrap_or_default()
        );
        s.exited.push(w.exit(None, false));
        if let (false, Some(env)) = (args.is_empty(), s.env.clone()) {
            *n += 1;
            let w = start_pod_worker(args, &env, &pod, ns, *n);
            s.running.insert(pod, w);
        }
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            task.abort();
        }
        let mut s = self.state.lock().unwrap();
        let all: Vec<WorkerProcess> = std::mem::take(&mut s.running)
            .into_values()
            .chain(std::mem::take(&mut s.terminating))
            .collect();
        for mut w in all {
            let _ = w.child.kill();
            let _ = w.child.wait();
        }
    }
}

fn start_pod_worker(args: &[String], env: &[(String, EnvValue)], pod: &str, ns: &str, n: u32) -> WorkerProcess {
    let log = std::env::temp_dir().join(format!("streamq-chaos-{ns}-{pod}-{n}.log"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let env = env.iter().map(|(k, v)| match v {
        EnvValue::Literal(s) => (k, s.as_str()),
        EnvValue::PodName => (k, pod),
    });
    let child = spawn_worker(&args, env, &log);
    WorkerProcess {
        pod: pod.to_owned(),
        child,
        log,
    }
}

/// The STREAMQ_* env of the Deployment's first container, resolved as the
/// kubelet would: literal values, Secret keys, and the pod name.
async fn worker_env(client: &Client, ns: &str, consumer: &str) -> Option<Vec<(String, EnvValue)>> {
    let deployment = Api::<Deployment>::namespaced(client.clone(), ns)
        .get_opt(consumer)
        .await
        .ok()??;
    let container = deployment.spec?.template.spec?.containers.into_iter().next()?;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let mut env = vec![];
    for var in container.env.unwrap_or_default() {
        let value = if let Some(v) = var.value {
            EnvValue::Literal(v)
        } else if let Some(from) = var.value_from {
            if let Some(r) = from.secret_key_ref {
                let secret = secrets.get_opt(&r.name).await.ok()??;
                let bytes = secret.data?.remove(&r.key)?;
                EnvValue::Literal(String::from_utf8(bytes.0).ok()?)
            } else if from.field_ref.is_some_and(|f| f.field_path == "metadata.name") {
                EnvValue::PodName
            } else {
                continue;
            }
        } else {
            continue;
        };
        env.push((var.name, value));
    }
    Some(env)
}

fn nanos() -> usize {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() as usize)
}
