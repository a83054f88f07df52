//! The Queue controller: validate → build → apply → status.
//!
//! `validate`, `build` and `status` are pure and unit-tested; this module is
//! the apply phase, the only place the Queue controller does I/O.

pub mod build;
pub mod status;
pub mod validate;

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use futures::StreamExt;
use k8s_openapi::{
    api::{
        apps::v1::StatefulSet,
        core::v1::{ConfigMap, Secret, Service},
    },
    jiff::Timestamp,
};
use kube::{
    Api, Resource, ResourceExt,
    api::{PartialObjectMeta, Patch, PatchParams, PostParams},
    core::{DeserializeGuard, error_boundary::InvalidObject},
    runtime::{
        Controller,
        controller::Action,
        events::EventType,
        finalizer::{Event as Finalizer, finalizer},
        reflector::{ObjectRef, Store},
        watcher,
    },
};
use tokio::sync::Mutex;

use self::status::{Problem, Provisioned};
use crate::{
    api::{Broker, Queue},
    context::Context,
    guard::ValidStore,
    k8s::{self, FIELD_MANAGER},
    redis::{
        acl::{self, Role},
        admin::{self, Admin, Changes},
    },
};

const CONTROLLER: &str = "queue";
/// Removes the Queue's users (and, with deletionPolicy Delete, its data) from Redis before it goes.
pub const FINALIZER: &str = "streamq.dev/redis-cleanup";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("writing Queue status: {0}")]
    Status(#[source] kube::Error),
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("cleaning up Redis: {0}")]
    Cleanup(String),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
}

impl Error {
    fn metric_label(&self) -> &'static str {
        match self {
            Self::Status(_) => "status",
            Self::Kube(_) => "kube",
            Self::Cleanup(_) => "cleanup",
            Self::Finalizer(_) => "finalizer",
        }
    }
}

/// What the controller remembers about a Queue between resyncs.
#[derive(Default)]
pub struct QueueMemory(Mutex<HashMap<String, Remembered>>);

#[derive(Default, Clone)]
struct Remembered {
    /// `entries-added` at the last sample, for the ingress rate.
    last_added: Option<(u64, Instant)>,
    ingress_rate: Option<f64>,
    /// Consecutive failed rounds, for the back-off.
    failures: u32,
    cleanup_failing_since: Option<Instant>,
    /// Provisioned at least once: anything missing later is drift, and is reported as such.
    provisioned: bool,
    /// The admin URL of the last successful round, for the sampler, which
    /// must not read Secrets every second.
    admin_url: Option<String>,
}

impl QueueMemory {
    async fn with<T>(&self, uid: &str, f: impl FnOnce(&mut Remembered) -> T) -> T {
        f(self.0.lock().await.entry(uid.to_owned()).or_default())
    }

    async fn forget(&self, uid: &str) {
        self.0.lock().await.remove(uid);
    }

    /// The admin URL of a provisioned Queue's Redis.
    pub async fn admin_url(&self, uid: &str) -> Option<String> {
        self.0.lock().await.get(uid).and_then(|m| m.admin_url.clone())
    }
}

/// The ingress rate is smoothed with a time-based EWMA (time constant 30 s):
/// a status column should move with the traffic, not with every sample's
/// Poisson noise, and the weight must not depend on how often we sample.
const RATE_TIME_CONSTANT_S: f64 = 30.0;

fn smooth_rate(previous: Option<f64>, sample: f64, dt: f64) -> f64 {
    match previous {
        None => sample,
        Some(prev) => {
            let alpha = 1.0 - (-dt / RATE_TIME_CONSTANT_S).exp();
            prev + alpha * (sample - prev)
        }
    }
}

pub async fn reconcile(guard: Arc<DeserializeGuard<Queue>>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile_started(CONTROLLER);
    let queue = match &guard.0 {
        Ok(queue) => Arc::new(queue.clone()),
        Err(invalid) => return unreadable(&guard, invalid, &ctx).await,
    };
    let api: Api<Queue> = Api::namespaced(ctx.client.clone(), &queue.namespace().unwrap_or_default());
    finalizer(&api, FINALIZER, queue, |event| async {
        match event {
            Finalizer::Apply(queue) => apply(&queue, &ctx).await,
            Finalizer::Cleanup(queue) => cleanup(&queue, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

/// A Queue streamq cannot read (see [`crate::guard`]): say so on it and wait
/// for it to change. Deleted, it loses the finalizer at once: without its
/// spec there is no telling which Redis to clean, and deletion must not hang.
async fn unreadable(guard: &DeserializeGuard<Queue>, invalid: &InvalidObject, ctx: &Context) -> Result<Action, Error> {
    let ns = guard.namespace().unwrap_or_default();
    if guard.meta().deletion_timestamp.is_some() {
        if guard.finalizers().iter().any(|f| f == FINALIZER) {
            let remaining: Vec<&String> = guard.finalizers().iter().filter(|f| *f != FINALIZER).collect();
            let patch = serde_json::json!({"metadata": {
                "finalizers": remaining,
                "resourceVersion": guard.resource_version(),
            }});
            Api::<DeserializeGuard<Queue>>::namespaced(ctx.client.clone(), &ns)
                .patch(&guard.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
            let note = format!(
                "Redis not cleaned up: the Queue cannot be read ({}), so its broker is unknown; \
                 the ACL users streamq.{ns}.{}.* and the stream may remain",
                invalid.error,
                guard.name_any()
            );
            k8s::publish_event(
                &ctx.recorder,
                guard,
                EventType::Warning,
                "CleanupAbandoned",
                "Delete",
                note,
            )
            .await;
        }
        return Ok(Action::await_change());
    }
    crate::guard::report(ctx, guard, invalid).await.map_err(Error::Status)?;
    Ok(Action::await_change())
}

async fn apply(queue: &Queue, ctx: &Context) -> Result<Action, Error> {
    let uid = queue.uid().unwrap_or_default();
    let outcome = provision(queue, ctx).await;
    let ingress_rate = match &outcome {
        Ok(p) => Some(
            ctx.queues
                .with(&uid, |m| {
                    let now = Instant::now();
                    if let Some((added, at)) = m.last_added {
                        let dt = now.duration_since(at).as_secs_f64();
                        if dt > 0.0 {
                            let sample = p.snapshot.entries_added.saturating_sub(added) as f64 / dt;
                            m.ingress_rate = Some(smooth_rate(m.ingress_rate, sample, dt));
                        }
                    }
                    m.last_added = Some((p.snapshot.entries_added, now));
                    m.ingress_rate.unwrap_or(0.0)
                })
                .await,
        ),
        Err(_) => None,
    };
    let status = status::build(queue, &outcome, ingress_rate, Timestamp::now());
    let was_problem = queue
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Degraded"))
        .map(|c| c.reason.clone());
    k8s::apply_status(&ctx.client, queue, &status)
        .await
        .map_err(Error::Status)?;

    match outcome {
        Ok(_) => {
            ctx.queues
                .with(&uid, |m| {
                    m.failures = 0;
                    m.provisioned = true;
                })
                .await;
            Ok(Action::requeue(ctx.resync))
        }
        Err(problem) => {
            if problem.fault && was_problem.as_deref() != Some(problem.reason) {
                k8s::publish_event(
                    &ctx.recorder,
                    queue,
                    EventType::Warning,
                    problem.reason,
                    "Provision",
                    problem.message.clone(),
                )
                .await;
            }
            tracing::info!(queue = %queue.name_any(), reason = problem.reason, message = %problem.message, "queue not ready");
            // Back off 1 s, 2 s, 4 s… up to the resync interval: a fixed fault
            // recovers quickly, a lasting one costs little.
            let failures = ctx
                .queues
                .with(&uid, |m| {
                    m.failures = m.failures.saturating_add(1);
                    m.failures
                })
                .await;
            Ok(Action::requeue(
                Duration::from_secs(1 << failures.min(6)).min(ctx.resync),
            ))
        }
    }
}

/// Everything from the spec to a provisioned queue in Redis.
async fn provision(queue: &Queue, ctx: &Context) -> Result<Provisioned, Problem> {
    validate::validate(queue).map_err(|e| Problem::fault("InvalidSpec", e.0))?;
    let broker = resolve_broker(queue, ctx, true).await?;
    let mut admin = connect(ctx, &broker.admin_url).await?;
    let names = build::names(queue);
    let ns = queue.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let existing_password = |name: String| {
        let secrets = secrets.clone();
        async move {
            let secret = secrets
                .get_opt(&name)
                .await
                .map_err(|e| kube_problem("reading", &name, e))?;
            Ok::<_, Problem>(secret.and_then(|s| secret_value(&s, "password")))
        }
    };
    let producer_existing = existing_password(names.producer_secret.clone()).await?;
    let consumer_existing = existing_password(names.consumer_secret.clone()).await?;
    let credentials_created = producer_existing.is_none() || consumer_existing.is_none();
    let producer_password = producer_existing.unwrap_or_else(build::generate_password);
    let consumer_password = consumer_existing.unwrap_or_else(build::generate_password);
    let spec = redis_spec(queue, producer_password, consumer_password);

    let redis_problem = |e: admin::Error| Problem::fault(e.reason(), e.to_string());
    let snapshot = match admin.snapshot(&spec).await {
        Ok(s) => s,
        Err(e) => {
            ctx.redis.forget(&broker.admin_url).await;
            return Err(redis_problem(e));
        }
    };
    let claim = ownership(queue, ctx, &spec, snapshot.owner.as_deref(), &admin).await?;
    let changes = match admin.provision(&spec, &snapshot, claim).await {
        Ok(c) => c,
        Err(e) => {
            if matches!(e, admin::Error::Unreachable { .. }) {
                ctx.redis.forget(&broker.admin_url).await;
            }
            return Err(Problem {
                broker_ready: true,
                ..redis_problem(e)
            });
        }
    };

    let dead_letter = queue.dead_letter_stream_key();
    for (name, user, password) in [
        (&names.producer_secret, &spec.producer_user, &spec.producer_password),
        (&names.consumer_secret, &spec.consumer_user, &spec.consumer_password),
    ] {
        let url = broker.endpoint.url_for(user, password);
        let secret = build::credentials_secret(queue, name, &url, user, password, dead_letter.as_deref());
        apply_object(&secrets, name, &secret).await?;
    }
    ctx.queues
        .with(&queue.uid().unwrap_or_default(), |m| {
            m.admin_url = Some(broker.admin_url.clone())
        })
        .await;
    if credentials_created {
        let note = format!(
            "credentials Secrets {} and {} written",
            names.producer_secret, names.consumer_secret
        );
        k8s::publish_event(
            &ctx.recorder,
            queue,
            EventType::Normal,
            "CredentialsCreated",
            "Provision",
            note,
        )
        .await;
    }
    // The status in the cache may lag one round behind; memory does not.
    let provisioned_before = ctx
        .queues
        .with(&queue.uid().unwrap_or_default(), |m| m.provisioned)
        .await
        || queue.status.as_ref().is_some_and(|s| s.producer_secret.is_some());
    announce(queue, ctx, &changes, provisioned_before).await;
    Ok(Provisioned {
        server: format!("Redis {} at {}", admin.version, broker.endpoint.addr()),
        snapshot,
        producer_secret: names.producer_secret,
        consumer_secret: names.consumer_secret,
    })
}

/// Events for what a provisioning round changed. The first round creates;
/// later ones repair drift, and say so.
async fn announce(queue: &Queue, ctx: &Context, changes: &Changes, provisioned_before: bool) {
    let (verb, reason_prefix) = if provisioned_before {
        ("recreated (it had gone missing)", "Recreated")
    } else {
        ("created", "Created")
    };
    let mut notes = vec![];
    if changes.stream_created {
        notes.push((
            format!("Stream{reason_prefix}"),
            format!("stream {} {verb}", queue.stream_key()),
        ));
    }
    if changes.dead_letter_created {
        notes.push((
            format!("DeadLetterStream{reason_prefix}"),
            format!(
                "dead-letter stream {} {verb}",
                queue.dead_letter_stream_key().unwrap_or_default()
            ),
        ));
    }
    // One Event for both users: the Recorder folds Events with one reason into a series.
    let users: Vec<String> = [
        (changes.producer_user_created, Role::Producer),
        (changes.consumer_user_created, Role::Consumer),
    ]
    .into_iter()
    .filter(|(created, _)| *created)
    .map(|(_, role)| acl::user_name(&queue.namespace().unwrap_or_default(), &queue.name_any(), role))
    .collect();
    if !users.is_empty() {
        notes.push((
            format!("AclUser{reason_prefix}"),
            format!("ACL user(s) {} {verb}", users.join(", ")),
        ));
    }
    for (reason, note) in notes {
        let type_ = if provisioned_before {
            EventType::Warning
        } else {
            EventType::Normal
        };
        k8s::publish_event(&ctx.recorder, queue, type_, &reason, "Provision", note).await;
    }
    if changes.dead_lettered > 0 || changes.vanished > 0 {
        let note = format!(
            "moved {} message(s) that exhausted their deliveries to {}{}",
            changes.dead_lettered,
            queue.dead_letter_stream_key().unwrap_or_default(),
            if changes.vanished > 0 {
                format!("; acked {} that had been trimmed away", changes.vanished)
            } else {
                String::new()
            }
        );
        k8s::publish_event(
            &ctx.recorder,
            queue,
            EventType::Warning,
            "DeadLettered",
            "DeadLetter",
            note,
        )
        .await;
    }
}

/// Decides whether this Queue may use its stream key, and whether to write
/// the claim. The older of two Queues claiming one key keeps it; the younger
/// gets `Conflict` and touches nothing.
async fn ownership(
    queue: &Queue,
    ctx: &Context,
    spec: &admin::QueueSpec,
    owner: Option<&str>,
    admin: &Admin,
) -> Result<bool, Problem> {
    let Some(owner) = owner else { return Ok(true) };
    if owner == spec.owner {
        return Ok(false);
    }
    let Some(other) = Claim::parse(owner) else {
        return Ok(true);
    };
    let ours = Claim::parse(&spec.owner).expect("our own claim parses");
    // A claim left by a Queue that no longer exists is free to take.
    let others: Api<Queue> = Api::namespaced(ctx.client.clone(), &other.namespace);
    let alive = match others.get_opt(&other.name).await {
        Ok(found) => found.is_some_and(|q| q.uid().as_deref() == Some(other.uid.as_str())),
        // Cannot tell (e.g. no access to that namespace): assume it lives.
        Err(_) => true,
    };
    if alive && (other.created, other.uid.as_str()) < (ours.created, ours.uid.as_str()) {
        return Err(Problem {
            broker_ready: true,
            ..Problem::fault(
                "Conflict",
                format!(
                    "stream key {} on {} already belongs to the older Queue {}/{}: give this Queue another spec.streamKey",
                    queue.stream_key(),
                    admin.endpoint.addr(),
                    other.namespace,
                    other.name
                ),
            )
        });
    }
    Ok(true)
}

/// `<namespace>/<name>/<uid>/<created unix seconds>`, stored at `<stream>:owner`.
struct Claim {
    namespace: String,
    name: String,
    uid: String,
    created: i64,
}

impl Claim {
    fn of(queue: &Queue) -> String {
        let created = queue.meta().creation_timestamp.as_ref().map_or(0, |t| t.0.as_second());
        format!(
            "{}/{}/{}/{created}",
            queue.namespace().unwrap_or_default(),
            queue.name_any(),
            queue.uid().unwrap_or_default()
        )
    }

    fn parse(s: &str) -> Option<Self> {
        let mut parts = s.split('/');
        Some(Self {
            namespace: parts.next()?.to_owned(),
            name: parts.next()?.to_owned(),
            uid: parts.next()?.to_owned(),
            created: parts.next()?.parse().ok()?,
        })
    }
}

fn redis_spec(queue: &Queue, producer_password: String, consumer_password: String) -> admin::QueueSpec {
    let ns = queue.namespace().unwrap_or_default();
    let name = queue.name_any();
    let retention = queue.spec.retention.clone().unwrap_or_default();
    admin::QueueSpec {
        stream: queue.stream_key(),
        dead_letter: queue.dead_letter_stream_key(),
        owner: Claim::of(queue),
        producer_user: acl::user_name(&ns, &name, Role::Producer),
        producer_password,
        consumer_user: acl::user_name(&ns, &name, Role::Consumer),
        consumer_password,
        max_length: retention.max_length,
        max_age: retention.max_age.map(|d| d.as_std()),
        drop_unprocessed: retention.drop_unprocessed,
        max_deliveries: queue.spec.delivery.max_deliveries,
        visibility_timeout: queue.spec.delivery.visibility_timeout.as_std(),
    }
}

/// How to reach a Queue's Redis as its administrator.
struct BrokerAccess {
    admin_url: String,
    /// The address workers and producers use, which goes into their Secrets.
    endpoint: admin::Endpoint,
}

/// Reads the external URL, or (with `provision`) applies the managed Redis'
/// objects and waits for its pod.
async fn resolve_broker(queue: &Queue, ctx: &Context, provision: bool) -> Result<BrokerAccess, Problem> {
    let ns = queue.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    match &queue.spec.broker {
        Broker::External(external) => {
            let r = &external.url_secret_ref;
            let secret = secrets.get_opt(&r.name).await.map_err(|e| kube_problem("reading", &r.name, e))?.ok_or_else(|| {
                Problem::fault(
                    "SecretNotFound",
                    format!("Secret {ns}/{} (spec.broker.external.urlSecretRef) does not exist: create it with key {:?} holding a redis:// URL", r.name, r.key),
                )
            })?;
            let url = secret_value(&secret, &r.key).ok_or_else(|| {
                let keys: Vec<_> = secret.data.iter().flat_map(|d| d.keys().cloned()).collect();
                Problem::fault(
                    "SecretKeyMissing",
                    format!(
                        "Secret {ns}/{} has no key {:?} (its keys: {keys:?}): add the Redis URL under that key",
                        r.name, r.key
                    ),
                )
            })?;
            let (_, endpoint) = admin::parse_url(&url)
                .map_err(|e| Problem::fault(e.reason(), format!("Secret {ns}/{} key {:?}: {e}", r.name, r.key)))?;
            Ok(BrokerAccess {
                admin_url: url,
                endpoint,
            })
        }
        Broker::Managed(managed) => {
            let names = build::names(queue);
            let password = match secrets
                .get_opt(&names.admin_secret)
                .await
                .map_err(|e| kube_problem("reading", &names.admin_secret, e))?
            {
                Some(s) => secret_value(&s, "password").ok_or_else(|| {
                    Problem::fault(
                        "SecretKeyMissing",
                        format!(
                            "Secret {ns}/{} lost its password key: delete it to have a new one generated",
                            names.admin_secret
                        ),
                    )
                })?,
                None if provision => {
                    let password = build::generate_password();
                    match secrets
                        .create(
                            &PostParams {
                                field_manager: Some(FIELD_MANAGER.into()),
                                ..PostParams::default()
                            },
                            &build::admin_secret(queue, &password),
                        )
                        .await
                    {
                        Ok(_) => password,
                        // Created by a concurrent reconcile: use theirs on the next round.
                        Err(e) => return Err(kube_problem("creating", &names.admin_secret, e)),
                    }
                }
                None => {
                    return Err(Problem::fault(
                        "SecretNotFound",
                        format!("Secret {ns}/{} does not exist", names.admin_secret),
                    ));
                }
            };
            let address = ctx
                .dev_redis_addresses
                .get(&format!("{ns}/{}", queue.name_any()))
                .cloned()
                .unwrap_or_else(|| format!("{}:{}", build::service_host(queue), build::REDIS_PORT));
            if provision {
                let conf = build::redis_conf(queue, managed, &password);
                apply_object(
                    &Api::<ConfigMap>::namespaced(ctx.client.clone(), &ns),
                    &names.config,
                    &build::config_map(queue, &conf),
                )
                .await?;
                apply_object(
                    &Api::<Service>::namespaced(ctx.client.clone(), &ns),
                    &names.redis,
                    &build::service(queue),
                )
                .await?;
                let sets: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), &ns);
                let existed = sets
                    .get_opt(&names.redis)
                    .await
                    .map_err(|e| kube_problem("reading", &names.redis, e))?
                    .is_some();
                let applied = apply_object(&sets, &names.redis, &build::stateful_set(queue, managed, &conf)).await?;
                if !existed {
                    k8s::publish_event(
                        &ctx.recorder,
                        queue,
                        EventType::Normal,
                        "ManagedRedisCreated",
                        "Provision",
                        format!("StatefulSet {} and Service {} created", names.redis, names.redis),
                    )
                    .await;
                }
                let ready = applied.status.and_then(|s| s.ready_replicas).unwrap_or(0);
                if ready < 1 {
                    return Err(Problem {
                        fault: false,
                        ..Problem::fault(
                            "WaitingForRedis",
                            format!("StatefulSet {} has no ready Redis pod yet", names.redis),
                        )
                    });
                }
            }
            let endpoint = admin::Endpoint {
                tls: false,
                host: build::service_host(queue),
                port: build::REDIS_PORT as u16,
                db: 0,
            };
            Ok(BrokerAccess {
                admin_url: format!("redis://{}:{password}@{address}/0", build::ADMIN_USER),
                endpoint,
            })
        }
    }
}

/// An administrative connection to a Queue's Redis, for the Consumer
/// controller (group creation). The Queue controller has provisioned it.
pub(crate) async fn admin_for(queue: &Queue, ctx: &Context) -> Result<Admin, Problem> {
    let broker = resolve_broker(queue, ctx, false).await?;
    connect(ctx, &broker.admin_url).await
}

/// Drops a cached connection to a Queue's Redis after an error.
pub(crate) async fn forget_admin(queue: &Queue, ctx: &Context) {
    if let Ok(broker) = resolve_broker(queue, ctx, false).await {
        ctx.redis.forget(&broker.admin_url).await;
    }
}

async fn connect(ctx: &Context, url: &str) -> Result<Admin, Problem> {
    ctx.redis
        .get(url)
        .await
        .map_err(|e| Problem::fault(e.reason(), e.to_string()))
}

async fn apply_object<K>(api: &Api<K>, name: &str, obj: &K) -> Result<K, Problem>
where
    K: Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.patch(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(obj))
        .await
        .map_err(|e| kube_problem("applying", name, e))
}

fn kube_problem(action: &str, name: &str, err: kube::Error) -> Problem {
    Problem::fault("KubernetesError", format!("{action} {name}: {err}"))
}

fn secret_value(secret: &Secret, key: &str) -> Option<String> {
    let bytes = secret.data.as_ref()?.get(key)?;
    String::from_utf8(bytes.0.clone())
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

/// Finalizer: take the Queue's users (and, with `Delete`, its data) out of
/// Redis. While Redis cannot be reached the Queue says why; after
/// `cleanup_timeout` it gives up with an Event, so deletion never hangs forever.
async fn cleanup(queue: &Queue, ctx: &Context) -> Result<Action, Error> {
    let uid = queue.uid().unwrap_or_default();
    let result = async {
        let broker = resolve_broker(queue, ctx, false).await?;
        let mut admin = connect(ctx, &broker.admin_url).await?;
        let spec = redis_spec(queue, String::new(), String::new());
        let owner = admin
            .snapshot(&spec)
            .await
            .map_err(|e| Problem::fault(e.reason(), e.to_string()))?
            .owner;
        // Never delete data another Queue owns (this one may have been the younger of a conflict).
        let ours = owner.as_deref().is_none_or(|o| o == spec.owner);
        let delete_data = ours && queue.spec.deletion_policy == crate::api::DeletionPolicy::Delete;
        admin
            .remove(&spec, ours, delete_data)
            .await
            .map_err(|e| Problem::fault(e.reason(), e.to_string()))?;
        Ok::<_, Problem>(delete_data)
    }
    .await;
    match result {
        Ok(deleted_data) => {
            ctx.queues.forget(&uid).await;
            let what = if deleted_data {
                "ACL users, streams and stats removed from Redis"
            } else {
                "ACL users removed from Redis; the stream data is retained"
            };
            k8s::publish_event(
                &ctx.recorder,
                queue,
                EventType::Normal,
                "CleanedUp",
                "Delete",
                what.into(),
            )
            .await;
            Ok(Action::await_change())
        }
        Err(problem) => {
            let since = ctx
                .queues
                .with(&uid, |m| *m.cleanup_failing_since.get_or_insert_with(Instant::now))
                .await;
            if since.elapsed() >= ctx.cleanup_timeout {
                ctx.queues.forget(&uid).await;
                let note = format!(
                    "gave up cleaning Redis after {:?}: {}; the ACL users streamq.{}.{}.* may remain",
                    ctx.cleanup_timeout,
                    problem.message,
                    queue.namespace().unwrap_or_default(),
                    queue.name_any()
                );
                k8s::publish_event(
                    &ctx.recorder,
                    queue,
                    EventType::Warning,
                    "CleanupAbandoned",
                    "Delete",
                    note,
                )
                .await;
                return Ok(Action::await_change());
            }
            let waiting = Problem {
                message: format!(
                    "deleting: cannot clean up Redis yet ({}); retrying for up to {:?} before giving up",
                    problem.message, ctx.cleanup_timeout
                ),
                ..Problem::fault("CleanupPending", "")
            };
            let status = status::build(queue, &Err(waiting), None, Timestamp::now());
            k8s::apply_status(&ctx.client, queue, &status)
                .await
                .map_err(Error::Status)?;
            Err(Error::Cleanup(problem.message))
        }
    }
}

fn error_policy(_queue: Arc<DeserializeGuard<Queue>>, err: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(error = %err, "queue reconcile failed");
    ctx.metrics.reconcile_failed(CONTROLLER, err.metric_label());
    Action::requeue(Duration::from_secs(2))
}

/// Which Queues a Secret concerns: the one that owns it, and every external
/// Queue whose URL it holds (so a rotated URL is picked up at once).
fn queues_for_secret(
    store: &Store<DeserializeGuard<Queue>>,
    secret: &PartialObjectMeta<Secret>,
) -> Vec<ObjectRef<DeserializeGuard<Queue>>> {
    let ns = secret.namespace().unwrap_or_default();
    let name = secret.name_any();
    store
        .state()
        .iter()
        .filter(|q| q.namespace().as_deref() == Some(ns.as_str()))
        .filter(|q| {
            let owns = secret
                .owner_references()
                .iter()
                .any(|o| Some(&o.uid) == q.uid().as_ref());
            let references =
                matches!(&q.0, Ok(q) if matches!(&q.spec.broker, Broker::External(e) if e.url_secret_ref.name == name));
            owns || references
        })
        .map(|q| ObjectRef::from_obj(q.as_ref()))
        .collect()
}

/// The controller, ready to run until `shutdown` resolves.
pub fn controller(
    ctx: Arc<Context>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> (impl Future<Output = ()>, ValidStore<Queue>) {
    // Guarded: one Queue the types cannot read must not stop the watch of all.
    let queues = ctx.scope.api::<DeserializeGuard<Queue>>(ctx.client.clone());
    let controller = Controller::new(queues, watcher::Config::default().any_semantic())
        .trigger_backoff(crate::k8s::WatchBackoff::default());
    let store = controller.store();
    let secret_store = store.clone();
    // Secrets are watched as metadata only: their data never sits in the cache.
    let secrets = ctx.scope.api::<PartialObjectMeta<Secret>>(ctx.client.clone());
    let controller = controller
        .owns(
            ctx.scope.api::<StatefulSet>(ctx.client.clone()),
            watcher::Config::default().labels("app.kubernetes.io/managed-by=streamq"),
        )
        .watches(secrets, watcher::Config::default(), move |secret| {
            queues_for_secret(&secret_store, &secret)
        })
        .graceful_shutdown_on(shutdown);
    let fut = controller.run(reconcile, error_policy, ctx).for_each(|res| async move {
        if let Err(err) = res {
            tracing::debug!(%err, "queue controller");
        }
    });
    (fut, ValidStore::new(store))
}
