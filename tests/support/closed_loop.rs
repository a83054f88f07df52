//! The closed loop on the real cluster: kwok runs no containers, so this harness plays the
//! kubelet and the containers of a Consumer's pods ([`PodWorkers`]), serves the workers'
//! handler ([`Handler`]), records the Deployment's scaling ([`ChangeLog`]), and turns those
//! records into the simulator's measures ([`measure`]).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::SocketAddr,
    path::PathBuf,
    process::ExitStatus,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{WatchStreamExt, watcher},
};
use streamq::simulate::{Measures, Meter};
use tokio::{sync::mpsc, task::JoinHandle};

/// One pod's life as the harness saw it.
#[derive(Clone, Debug)]
pub struct PodLife {
    pub name: String,
    /// When the watch first showed the pod.
    pub created: Instant,
    /// When its worker process was started.
    pub worker_started: Option<Instant>,
    /// When the watch showed it terminating (or gone).
    pub deleted: Option<Instant>,
    /// When its worker process exited, and how.
    pub worker_exited: Option<(Instant, ExitStatus)>,
    pid: Option<u32>,
    running: bool,
    pod: Pod,
}

impl PodLife {
    /// The pod counts from its creation until it is deleted and its worker has drained, like a
    /// pod in the simulator (starting and draining pods included); `None` while it lives.
    pub fn end(&self) -> Option<Instant> {
        let deleted = self.deleted?;
        match (self.worker_started, self.worker_exited) {
            (None, _) => Some(deleted),
            (Some(_), Some((exited, _))) => Some(deleted.max(exited)),
            (Some(_), None) => None,
        }
    }
}

#[derive(Default)]
struct Shared {
    pods: BTreeMap<String, PodLife>,
    /// Anything that went wrong in the harness itself; the test asserts it stays empty.
    errors: Vec<String>,
}

/// One local `streamq worker` process per pod of a Consumer, started the scenario's start-up
/// after the pod appeared, with the environment the kubelet would give its container, and sent
/// SIGTERM when the pod is deleted. The pod is reported Ready only once its worker runs, so that
/// `readyReplicas` and the ReplicaSet's choice of pods to delete (not-ready first) mean what
/// they mean on a real cluster.
pub struct PodWorkers {
    shared: Arc<Mutex<Shared>>,
    task: JoinHandle<()>,
    pub log_dir: PathBuf,
}

impl PodWorkers {
    /// Watches the pods labelled `streamq.dev/consumer=<consumer>` in `namespace`.
    pub fn start(client: kube::Client, namespace: &str, consumer: &str, startup: Duration) -> Self {
        let shared = Arc::new(Mutex::new(Shared::default()));
        let log_dir = std::env::temp_dir().join(format!("streamq-closed-loop-{namespace}"));
        std::fs::create_dir_all(&log_dir).unwrap();
        let kubelet = Kubelet {
            pods: Api::namespaced(client.clone(), namespace),
            secrets: Api::namespaced(client, namespace),
            startup,
            shared: shared.clone(),
            log_dir: log_dir.clone(),
        };
        let selector = format!("streamq.dev/consumer={consumer}");
        let task = tokio::spawn(kubelet.run(selector));
        Self { shared, task, log_dir }
    }

    pub fn pods(&self) -> Vec<PodLife> {
        self.shared.lock().unwrap().pods.values().cloned().collect()
    }

    pub fn errors(&self) -> Vec<String> {
        self.shared.lock().unwrap().errors.clone()
    }

    /// Workers running for pods that are not terminating.
    pub fn running_workers(&self) -> usize {
        self.shared
            .lock()
            .unwrap()
            .pods
            .values()
            .filter(|p| p.worker_started.is_some() && p.deleted.is_none() && p.worker_exited.is_none())
            .count()
    }

    /// Stops watching, sends SIGTERM to every worker still running and waits for them all.
    pub async fn shutdown(self, within: Duration) -> Vec<PodLife> {
        self.task.abort();
        let _ = self.task.await;
        let pids: Vec<u32> = {
            let shared = self.shared.lock().unwrap();
            shared
                .pods
                .values()
                .filter(|p| p.worker_exited.is_none())
                .filter_map(|p| p.pid)
                .collect()
        };
        for pid in &pids {
            super::signal(*pid, "TERM");
        }
        let deadline = Instant::now() + within;
        // The exit watchers outlive the aborted loop only as far as the processes do: poll
        // for the processes themselves.
        while pids.iter().any(|pid| process_alive(*pid)) {
            assert!(
                Instant::now() < deadline,
                "workers did not exit within {within:?} of SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let shared = self.shared.lock().unwrap();
        shared.pods.values().cloned().collect()
    }
}

fn process_alive(pid: u32) -> bool {
    // A zombie (exited, not yet reaped) counts as gone.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'))
        .unwrap_or(false)
}

struct Kubelet {
    pods: Api<Pod>,
    secrets: Api<Secret>,
    startup: Duration,
    shared: Arc<Mutex<Shared>>,
    log_dir: PathBuf,
}

impl Kubelet {
    async fn run(self, selector: String) {
        let (exits_tx, mut exits) = mpsc::unbounded_channel::<(String, Instant, std::io::Result<ExitStatus>)>();
        let mut events = watcher(self.pods.clone(), watcher::Config::default().labels(&selector))
            .default_backoff()
            .boxed();
        let mut relisted: Option<BTreeSet<String>> = None;
        loop {
            let next_due = self.next_due();
            let sleep = tokio::time::sleep_until(
                next_due.map_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600), Into::into),
            );
            tokio::select! {
                event = events.next() => match event {
                    Some(Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod))) => {
                        if let Some(seen) = relisted.as_mut() {
                            seen.insert(pod.name_any());
                        }
                        self.observe(pod).await;
                    }
                    Some(Ok(watcher::Event::Delete(pod))) => self.deleted(&pod.name_any()),
                    Some(Ok(watcher::Event::Init)) => relisted = Some(BTreeSet::new()),
                    Some(Ok(watcher::Event::InitDone)) => {
                        // A pod missing from a relist went away while the watch was down.
                        let seen = relisted.take().unwrap_or_default();
                        let known: Vec<String> = self.shared.lock().unwrap().pods.keys().cloned().collect();
                        for name in known.iter().filter(|n| !seen.contains(*n)) {
                            self.deleted(name);
                        }
                    }
                    Some(Err(e)) => record_error(&self.shared, format!("pod watch: {e}")),
                    None => return,
                },
                Some((name, at, status)) = exits.recv() => self.exited(&name, at, status),
                () = sleep, if next_due.is_some() => self.start_due(&exits_tx).await,
            }
        }
    }

    /// The earliest start-up deadline of a Running pod still without a worker.
    fn next_due(&self) -> Option<Instant> {
        let shared = self.shared.lock().unwrap();
        shared
            .pods
            .values()
            .filter(|p| p.running && p.worker_started.is_none() && p.deleted.is_none())
            .map(|p| p.created + self.startup)
            .min()
    }

    async fn observe(&self, pod: Pod) {
        let name = pod.name_any();
        if pod.metadata.deletion_timestamp.is_some() {
            self.deleted(&name);
            return;
        }
        let running = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
        let kwok_said_ready = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        let report_not_ready = {
            let mut shared = self.shared.lock().unwrap();
            let life = shared.pods.entry(name.clone()).or_insert_with(|| PodLife {
                name: name.clone(),
                created: Instant::now(),
                worker_started: None,
                deleted: None,
                worker_exited: None,
                pid: None,
                running: false,
                pod: pod.clone(),
            });
            if life.deleted.is_some() {
                return;
            }
            life.running |= running;
            life.pod = pod;
            // kwok marks a Running pod Ready at once; its container has not started yet.
            running && kwok_said_ready && life.worker_started.is_none()
        };
        if report_not_ready {
            self.report_ready(&name, false).await;
        }
    }

    fn deleted(&self, name: &str) {
        let mut shared = self.shared.lock().unwrap();
        let Some(life) = shared.pods.get_mut(name) else { return };
        if life.deleted.is_some() {
            return;
        }
        life.deleted = Some(Instant::now());
        if let (Some(pid), None) = (life.pid, life.worker_exited) {
            // What the kubelet does to a deleted pod's container: SIGTERM, then the worker
            // finishes its in-flight messages and exits.
            super::signal(pid, "TERM");
        }
    }

    fn exited(&self, name: &str, at: Instant, status: std::io::Result<ExitStatus>) {
        let mut shared = self.shared.lock().unwrap();
        let status = match status {
            Ok(status) => status,
            Err(e) => {
                shared.errors.push(format!("waiting for the worker of {name}: {e}"));
                return;
            }
        };
        let Some(life) = shared.pods.get_mut(name) else { return };
        life.worker_exited = Some((at, status));
        let premature = life.deleted.is_none();
        if premature || !status.success() {
            let log = self.log_dir.join(format!("{name}.log"));
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            shared.errors.push(format!(
                "the worker of pod {name} exited with {status}{}:\n{text}",
                if premature { " while its pod was alive" } else { "" }
            ));
        }
    }

    async fn start_due(&self, exits: &mpsc::UnboundedSender<(String, Instant, std::io::Result<ExitStatus>)>) {
        let now = Instant::now();
        let due: Vec<Pod> = {
            let shared = self.shared.lock().unwrap();
            shared
                .pods
                .values()
                .filter(|p| p.running && p.worker_started.is_none() && p.deleted.is_none())
                .filter(|p| p.created + self.startup <= now)
                .map(|p| p.pod.clone())
                .collect()
        };
        for pod in due {
            let name = pod.name_any();
            match self.spawn_worker(&pod, exits).await {
                Ok(pid) => {
                    {
                        let mut shared = self.shared.lock().unwrap();
                        let Some(life) = shared.pods.get_mut(&name) else {
                            continue;
                        };
                        life.worker_started = Some(Instant::now());
                        life.pid = Some(pid);
                        if life.deleted.is_some() {
                            // Deleted while the environment was being resolved.
                            super::signal(pid, "TERM");
                            continue;
                        }
                    }
                    self.report_ready(&name, true).await;
                }
                Err(e) => {
                    let mut shared = self.shared.lock().unwrap();
                    shared.errors.push(format!("starting the worker of pod {name}: {e}"));
                    // Never retried: the error fails the test.
                    if let Some(life) = shared.pods.get_mut(&name) {
                        life.worker_started = Some(Instant::now());
                        life.worker_exited = None;
                    }
                }
            }
        }
    }

    /// Runs the pod's (only) container as a local process: `streamq` with the container's args
    /// and its environment resolved.
    async fn spawn_worker(
        &self,
        pod: &Pod,
        exits: &mpsc::UnboundedSender<(String, Instant, std::io::Result<ExitStatus>)>,
    ) -> Result<u32, String> {
        let name = pod.name_any();
        let spec = pod.spec.as_ref().ok_or("the pod has no spec")?;
        let [container] = spec.containers.as_slice() else {
            return Err(format!("expected one container, found {}", spec.containers.len()));
        };
        let env = self
            .resolve_env(pod, container.env.as_deref().unwrap_or_default())
            .await?;
        let log = std::fs::File::create(self.log_dir.join(format!("{name}.log"))).map_err(|e| e.to_string())?;
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_streamq"))
            .args(container.args.as_deref().unwrap_or_default())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOSTNAME", &name)
            .env("RUST_LOG", "info")
            .envs(env)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("spawn streamq worker: {e}"))?;
        let pid = child.id().ok_or("the worker exited at once")?;
        let exits = exits.clone();
        tokio::spawn(async move {
            let status = child.wait().await;
            let _ = exits.send((name, Instant::now(), status));
        });
        Ok(pid)
    }

    /// The container's environment as the kubelet builds it: values, Secret keys and the pod's
    /// own name and namespace.
    async fn resolve_env(
        &self,
        pod: &Pod,
        vars: &[k8s_openapi::api::core::v1::EnvVar],
    ) -> Result<Vec<(String, String)>, String> {
        let mut env = Vec::new();
        for var in vars {
            let value = match (&var.value, &var.value_from) {
                (Some(v), _) => v.clone(),
                (None, Some(from)) => {
                    if let Some(s) = &from.secret_key_ref {
                        let secret = self
                            .secrets
                            .get(&s.name)
                            .await
                            .map_err(|e| format!("Secret {} for {}: {e}", s.name, var.name))?;
                        let bytes = secret
                            .data
                            .as_ref()
                            .and_then(|d| d.get(&s.key))
                            .ok_or_else(|| format!("Secret {} has no key {}", s.name, s.key))?;
                        String::from_utf8(bytes.0.clone()).map_err(|e| e.to_string())?
                    } else if let Some(f) = &from.field_ref {
                        match f.field_path.as_str() {
                            "metadata.name" => pod.name_any(),
                            "metadata.namespace" => pod.namespace().unwrap_or_default(),
                            other => return Err(format!("fieldRef {other} is not supported by the harness")),
                        }
                    } else {
                        return Err(format!("{}: only secretKeyRef and fieldRef are supported", var.name));
                    }
                }
                (None, None) => String::new(),
            };
            env.push((var.name.clone(), value));
        }
        Ok(env)
    }

    /// Sets the pod's Ready (and ContainersReady) condition, as the kubelet reports readiness.
    async fn report_ready(&self, name: &str, ready: bool) {
        let status = if ready { "True" } else { "False" };
        let now = k8s_openapi::jiff::Timestamp::now().to_string();
        let patch = serde_json::json!({"status": {"conditions": [
            {"type": "Ready", "status": status, "lastTransitionTime": now, "reason": "ClosedLoopWorker"},
            {"type": "ContainersReady", "status": status, "lastTransitionTime": now, "reason": "ClosedLoopWorker"},
        ]}});
        if let Err(e) = self
            .pods
            .patch_status(name, &PatchParams::default(), &Patch::Strategic(&patch))
            .await
        {
            // A pod that went away needs no readiness.
            if !matches!(&e, kube::Error::Api(s) if s.code == 404) {
                record_error(&self.shared, format!("reporting {name} ready={ready}: {e}"));
            }
        }
    }
}

fn record_error(shared: &Mutex<Shared>, error: String) {
    shared.lock().unwrap().errors.push(error);
}

/// Every change of one field of a named object, with when the watch showed it: the
/// Deployment's `spec.replicas`, the Consumer's `status.lastScaleReason`.
pub struct ChangeLog<T> {
    changes: Arc<Mutex<Vec<(Instant, T)>>>,
    task: JoinHandle<()>,
}

impl<T: Clone + PartialEq + Send + 'static> ChangeLog<T> {
    pub fn start<K>(api: Api<K>, name: &str, field: impl Fn(&K) -> Option<T> + Send + 'static) -> Self
    where
        K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    {
        let changes = Arc::new(Mutex::new(Vec::<(Instant, T)>::new()));
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let log = changes.clone();
        let task = tokio::spawn(async move {
            let mut events = watcher(api, config).default_backoff().applied_objects().boxed();
            while let Some(event) = events.next().await {
                let Some(value) = event.ok().as_ref().and_then(&field) else {
                    continue;
                };
                let mut changes = log.lock().unwrap();
                if changes.last().is_none_or(|(_, last)| *last != value) {
                    changes.push((Instant::now(), value));
                }
            }
        });
        Self { changes, task }
    }

    pub fn changes(&self) -> Vec<(Instant, T)> {
        self.changes.lock().unwrap().clone()
    }
}

impl<T> Drop for ChangeLog<T> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One message as the handler saw it.
#[derive(Clone, Copy, Debug)]
pub struct Handled {
    /// When its first delivery reached the handler.
    pub first_start: SystemTime,
    /// Deliveries that reached the handler.
    pub deliveries: u32,
    /// Deliveries the handler answered 200.
    pub completed: u32,
}

type ServiceTime = dyn Fn(&[u8], SystemTime) -> Duration + Send + Sync;

struct HandlerState {
    handled: Mutex<HashMap<String, Handled>>,
    service_time: Box<ServiceTime>,
}

/// The workers' `--http` endpoint: records each message's processing start, then takes the
/// service time `service_time(payload, start)` and answers 200 (ack).
pub struct Handler {
    pub addr: SocketAddr,
    state: Arc<HandlerState>,
    task: JoinHandle<()>,
}

impl Handler {
    pub async fn start(service_time: impl Fn(&[u8], SystemTime) -> Duration + Send + Sync + 'static) -> Self {
        use axum::{Router, extract::State, http::HeaderMap, routing::post};
        let state = Arc::new(HandlerState {
            handled: Mutex::new(HashMap::new()),
            service_time: Box::new(service_time),
        });
        async fn handle(
            State(state): State<Arc<HandlerState>>,
            headers: HeaderMap,
            body: axum::body::Bytes,
        ) -> axum::http::StatusCode {
            let start = SystemTime::now();
            let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
            let Some(id) = header("x-streamq-message-id") else {
                return axum::http::StatusCode::BAD_REQUEST;
            };
            state
                .handled
                .lock()
                .unwrap()
                .entry(id.clone())
                .and_modify(|h| h.deliveries += 1)
                .or_insert(Handled {
                    first_start: start,
                    deliveries: 1,
                    completed: 0,
                });
            // The message's service time: this is the work being modelled, not a wait for
            // something else to happen.
            tokio::time::sleep((state.service_time)(&body, start)).await;
            if let Some(h) = state.handled.lock().unwrap().get_mut(&id) {
                h.completed += 1;
            }
            axum::http::StatusCode::OK
        }
        let app = Router::new().route("/", post(handle)).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { addr, state, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    pub fn handled(&self) -> HashMap<String, Handled> {
        self.state.handled.lock().unwrap().clone()
    }
}

impl Drop for Handler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What happened to one message, in seconds since the start of the scenario.
#[derive(Clone, Copy, Debug)]
pub struct MessageTimes {
    /// Enqueue time (from the stream ID).
    pub enqueued: f64,
    /// Processing start of its first delivery; `None` if it never started.
    pub started: Option<f64>,
    pub deliveries: u32,
}

/// The measures over `[0, duration]`, taken by the simulator's own [`Meter`] as the engine takes
/// them: a message waits until its first processing start, a pod counts from its creation until
/// it is gone (`None`: still alive), scale events are changes of spec.replicas within the
/// window, and a message delivered more than once was interrupted.
pub fn measure(
    messages: &[MessageTimes],
    pods: &[(f64, Option<f64>)],
    replica_changes: &[f64],
    target: f64,
    duration: f64,
) -> Measures {
    #[derive(Clone, Copy)]
    enum Change {
        Enqueued,
        Started,
        PodCreated,
        PodGone,
        Scaled,
    }
    let mut changes: Vec<(f64, Change)> = messages
        .iter()
        .flat_map(|m| {
            [
                Some((m.enqueued, Change::Enqueued)),
                m.started.map(|t| (t, Change::Started)),
            ]
        })
        .chain(
            pods.iter()
                .flat_map(|&(created, end)| [Some((created, Change::PodCreated)), end.map(|t| (t, Change::PodGone))]),
        )
        .flatten()
        .chain(replica_changes.iter().map(|&t| (t, Change::Scaled)))
        .filter(|&(t, _)| t <= duration)
        .collect();
    changes.sort_by(|a, b| a.0.total_cmp(&b.0));
    // In enqueue order, the oldest waiting message is the first one not started yet.
    let mut by_enqueue: Vec<&MessageTimes> = messages.iter().collect();
    by_enqueue.sort_by(|a, b| a.enqueued.total_cmp(&b.enqueued));
    let mut first_unstarted = 0;
    let mut oldest_waiting = |at: f64| {
        while by_enqueue
            .get(first_unstarted)
            .is_some_and(|m| m.started.is_some_and(|s| s <= at))
        {
            first_unstarted += 1;
        }
        by_enqueue.get(first_unstarted).map(|m| m.enqueued).filter(|&e| e <= at)
    };

    let mut meter = Meter::new(target);
    // The state since `since`; what happened before 0 only sets the initial state.
    let (mut since, mut pods_alive, mut waiting) = (0.0, 0usize, 0i64);
    let mut changes = changes.into_iter().peekable();
    while let Some(&(t, _)) = changes.peek() {
        if t > since {
            meter.elapse(since, t, pods_alive, oldest_waiting(since));
            since = t;
        }
        while let Some((_, change)) = changes.next_if(|&(at, _)| at == t) {
            match change {
                Change::Enqueued => waiting += 1,
                Change::Started => waiting -= 1,
                Change::PodCreated => pods_alive += 1,
                Change::PodGone => pods_alive -= 1,
                Change::Scaled if t > 0.0 => meter.scaled(),
                Change::Scaled => {}
            }
        }
        meter.backlog(u64::try_from(waiting).unwrap_or(0));
    }
    meter.elapse(since, duration, pods_alive, oldest_waiting(since));
    meter.interrupted(messages.iter().filter(|m| m.deliveries > 1).count() as u64);
    meter.finish(duration, messages.iter().map(|m| (m.enqueued, m.started)))
}

/// The milliseconds part of a stream ID: when Redis appended the entry.
pub fn id_millis(id: &str) -> u64 {
    id.split_once('-')
        .and_then(|(ms, _)| ms.parse().ok())
        .unwrap_or_else(|| panic!("not a stream ID: {id}"))
}
