//! The closed loop on the real node: [`PodLives`] follows a Consumer's real pods (created,
//! Ready, terminating, gone, and how their worker exited), [`Handler`] serves the workers'
//! `--http` endpoint, [`ChangeLog`] records the Deployment's scaling, and [`measure`] turns those
//! records into the simulator's measures.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api,
    runtime::{WatchStreamExt, watcher},
};
use streamq::simulate::{Measures, Meter};
use tokio::task::JoinHandle;

/// One pod's life as the watch showed it.
#[derive(Clone, Debug)]
pub struct PodLife {
    pub name: String,
    /// When the watch first showed the pod.
    pub created: Instant,
    /// When the watch first showed it Ready (its init container done, its worker started).
    pub ready: Option<Instant>,
    /// When the watch showed it terminating.
    pub terminating: Option<Instant>,
    /// When it was gone from the API: the kubelet removes a pod once its containers exited. A
    /// pod counts from `created` to `gone`, like a pod in the simulator (starting and draining
    /// pods included).
    pub gone: Option<Instant>,
    /// The worker container's exit code, if the watch saw it terminated.
    pub exit_code: Option<i32>,
}

impl PodLife {
    fn observe(&mut self, pod: &Pod, now: Instant) {
        let status = pod.status.as_ref();
        let ready = status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        if ready && self.ready.is_none() {
            self.ready = Some(now);
        }
        if pod.metadata.deletion_timestamp.is_some() && self.terminating.is_none() {
            self.terminating = Some(now);
        }
        let exit = status
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.name == "worker"))
            .and_then(|c| c.state.as_ref()?.terminated.as_ref())
            .map(|t| t.exit_code);
        self.exit_code = exit.or(self.exit_code);
    }
}

/// The pods labelled `streamq.dev/consumer=<consumer>`, as a watch shows them.
pub struct PodLives {
    pods: Arc<Mutex<BTreeMap<String, PodLife>>>,
    errors: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

impl PodLives {
    pub fn start(client: kube::Client, namespace: &str, consumer: &str) -> Self {
        let pods = Arc::new(Mutex::new(BTreeMap::<String, PodLife>::new()));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let api: Api<Pod> = Api::namespaced(client, namespace);
        let config = watcher::Config::default().labels(&format!("streamq.dev/consumer={consumer}"));
        let (log, errs) = (pods.clone(), errors.clone());
        let task = tokio::spawn(async move {
            let mut events = watcher(api, config).default_backoff().boxed();
            while let Some(event) = events.next().await {
                let now = Instant::now();
                let mut pods = log.lock().unwrap();
                match event {
                    Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) => {
                        let name = pod.metadata.name.clone().unwrap_or_default();
                        pods.entry(name.clone())
                            .or_insert_with(|| PodLife {
                                name,
                                created: now,
                                ready: None,
                                terminating: None,
                                gone: None,
                                exit_code: None,
                            })
                            .observe(&pod, now);
                    }
                    Ok(watcher::Event::Delete(pod)) => {
                        if let Some(life) = pod.metadata.name.as_ref().and_then(|n| pods.get_mut(n)) {
                            life.observe(&pod, now);
                            life.gone.get_or_insert(now);
                        }
                    }
                    Ok(watcher::Event::Init | watcher::Event::InitDone) => {}
                    Err(e) => errs.lock().unwrap().push(format!("pod watch: {e}")),
                }
            }
        });
        Self { pods, errors, task }
    }

    pub fn pods(&self) -> Vec<PodLife> {
        self.pods.lock().unwrap().values().cloned().collect()
    }

    /// What went wrong with the watch itself; the test asserts it stays empty.
    pub fn errors(&self) -> Vec<String> {
        self.errors.lock().unwrap().clone()
    }

    /// Ready pods that are not terminating.
    pub fn ready(&self) -> usize {
        self.pods
            .lock()
            .unwrap()
            .values()
            .filter(|p| p.ready.is_some() && p.terminating.is_none() && p.gone.is_none())
            .count()
    }
}

impl Drop for PodLives {
    fn drop(&mut self) {
        self.task.abort();
    }
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
    /// Serves on `addr` (the harness port that pods reach, or `127.0.0.1:0`).
    pub async fn start(
        addr: SocketAddr,
        service_time: impl Fn(&[u8], SystemTime) -> Duration + Send + Sync + 'static,
    ) -> Self {
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
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .unwrap_or_else(|e| panic!("bind the handler to {addr}: {e}"));
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { addr, state, task }
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
