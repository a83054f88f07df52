//! The apply phase: the Kubernetes objects a Queue needs (the managed Redis,
//! the credentials Secrets), then its stream, groups and users in Redis.

use k8s_openapi::api::{
    apps::v1::StatefulSet,
    core::v1::{ConfigMap, Secret, Service},
};
use kube::{Api, ResourceExt};

use super::{Context, build, claim, events, managed, status::Provisioned, validate};
use crate::{
    api::{Broker, ManagedBroker, Queue, Reason},
    broker::{self, Access},
    k8s::{self, applied::Version},
    problem::Problem,
    redis::admin::{Admin, Changes, QueueSpec, Snapshot},
};

/// Everything from the spec to a provisioned queue in Redis.
pub(super) async fn provision(queue: &Queue, ctx: &Context) -> Result<Provisioned, Problem> {
    validate::validate(queue).map_err(|e| Problem::fault(Reason::InvalidSpec, e.0))?;
    let access = broker_access(queue, ctx).await?;
    let mut admin = ctx.shared.brokers.connect(&access.admin_url).await?;
    let credentials = existing_credentials(queue, ctx).await?;
    let spec = build::redis_spec(queue, credentials.producer, credentials.consumer);
    let (snapshot, changes) = provision_redis(queue, ctx, &access, &mut admin, &spec).await?;
    let names = apply_credential_secrets(queue, ctx, &access, &spec).await?;
    let uid = queue.uid().unwrap_or_default();
    ctx.shared.brokers.remember(&uid, &access.admin_url).await;
    // The status in the cache may lag one round behind; memory does not.
    let provisioned_before =
        ctx.memory.provisioned(&uid).await || queue.status.as_ref().is_some_and(|s| s.producer_secret.is_some());
    events::provisioned(
        queue,
        &ctx.shared,
        &names,
        credentials.created,
        &changes,
        provisioned_before,
    )
    .await;
    Ok(Provisioned {
        server: format!("Redis {} at {}", admin.version, access.endpoint.addr()),
        snapshot,
        producer_secret: names.producer_secret,
        consumer_secret: names.consumer_secret,
    })
}

/// The external URL, or the managed Redis applied and ready.
async fn broker_access(queue: &Queue, ctx: &Context) -> Result<Access, Problem> {
    match &queue.spec.broker {
        Broker::External(_) => {
            ctx.shared
                .brokers
                .resolve(queue, &ctx.shared.client, &ctx.shared.secrets)
                .await
        }
        // Boxed: its applies would make every external Queue's round larger.
        Broker::Managed(managed) => Box::pin(apply_managed_redis(queue, managed, ctx)).await,
    }
}

/// Applies the managed Redis' ConfigMap, Service and StatefulSet; its pod must be ready.
async fn apply_managed_redis(queue: &Queue, managed: &ManagedBroker, ctx: &Context) -> Result<Access, Problem> {
    let shared = &ctx.shared;
    let ns = queue.namespace().unwrap_or_default();
    let names = build::names(queue);
    let password = admin_password(queue, ctx).await?;
    let conf = managed::redis_conf(queue, managed, &password);
    let applying = |name: &str| {
        let name = name.to_owned();
        move |e| Problem::kube("applying", &name, e)
    };
    let config_maps = Api::<ConfigMap>::namespaced(shared.client.clone(), &ns);
    k8s::apply(&config_maps, &names.config, &managed::config_map(queue, &conf))
        .await
        .map_err(applying(&names.config))?;
    let services = Api::<Service>::namespaced(shared.client.clone(), &ns);
    k8s::apply(&services, &names.redis, &managed::service(queue))
        .await
        .map_err(applying(&names.redis))?;
    let sets: Api<StatefulSet> = Api::namespaced(shared.client.clone(), &ns);
    let existed = k8s::sent(sets.get_opt(&names.redis))
        .await
        .map_err(|e| Problem::kube("reading", &names.redis, e))?
        .is_some();
    let applied = k8s::apply(&sets, &names.redis, &managed::stateful_set(queue, managed, &conf))
        .await
        .map_err(applying(&names.redis))?;
    if !existed {
        events::managed_redis_created(queue, shared, &names.redis).await;
    }
    if applied.status.and_then(|s| s.ready_replicas).unwrap_or(0) < 1 {
        return Err(Problem::waiting(
            Reason::WaitingForRedis,
            format!("StatefulSet {} has no ready Redis pod yet", names.redis),
        ));
    }
    Ok(shared.brokers.managed_access(queue, &password))
}

/// The managed Redis' admin password: from its Secret, or generated into a new one.
async fn admin_password(queue: &Queue, ctx: &Context) -> Result<String, Problem> {
    let ns = queue.namespace().unwrap_or_default();
    let name = build::names(queue).admin_secret;
    let secrets: Api<Secret> = Api::namespaced(ctx.shared.client.clone(), &ns);
    match ctx
        .shared
        .secrets
        .get(&ctx.shared.client, &ns, &name)
        .await
        .map_err(|e| Problem::kube("reading", &name, e))?
    {
        Some(secret) => broker::managed_password(&ns, &name, &secret),
        None => {
            let password = build::generate_password();
            // Created by a concurrent reconcile: an error now, theirs on the next round.
            k8s::create(&secrets, &build::admin_secret(queue, &password))
                .await
                .map_err(|e| Problem::kube("creating", &name, e))?;
            Ok(password)
        }
    }
}

/// The producer's and consumer's passwords: the existing Secrets' or new ones.
struct Credentials {
    producer: String,
    consumer: String,
    /// At least one was generated in this round.
    created: bool,
}

async fn existing_credentials(queue: &Queue, ctx: &Context) -> Result<Credentials, Problem> {
    let names = build::names(queue);
    let ns = queue.namespace().unwrap_or_default();
    let mut passwords = Vec::with_capacity(2);
    for name in [&names.producer_secret, &names.consumer_secret] {
        let secret = ctx
            .shared
            .secrets
            .get(&ctx.shared.client, &ns, name)
            .await
            .map_err(|e| Problem::kube("reading", name, e))?;
        passwords.push(secret.and_then(|s| broker::secret_value(&s, "password")));
    }
    let created = passwords.iter().any(Option::is_none);
    let mut passwords = passwords
        .into_iter()
        .map(|p| p.unwrap_or_else(build::generate_password));
    Ok(Credentials {
        producer: passwords.next().unwrap_or_default(),
        consumer: passwords.next().unwrap_or_default(),
        created,
    })
}

/// Redis' part: one round trip reads the queue's state (and maintains a
/// stream that is there and this Queue's), then the ownership claim is
/// decided, and a second round trip creates, claims or sets only what needs it.
async fn provision_redis(
    queue: &Queue,
    ctx: &Context,
    access: &Access,
    admin: &mut Admin,
    spec: &QueueSpec,
) -> Result<(Snapshot, Changes), Problem> {
    let snapshot = match admin.snapshot(spec).await {
        Ok(s) => s,
        Err(e) => {
            ctx.shared.brokers.forget_connection(&access.admin_url).await;
            return Err(Problem::redis(&e));
        }
    };
    let claim = claim::decide(queue, &ctx.shared.client, spec, snapshot.owner.as_deref(), admin).await?;
    let uid = queue.uid().unwrap_or_default();
    let (digest, now) = (spec.users_digest(), std::time::Instant::now());
    let refresh_users = ctx.memory.users_due(&uid, &digest, now).await;
    match admin.provision(spec, &snapshot, claim, refresh_users).await {
        Ok(changes) => {
            if refresh_users {
                ctx.memory.users_set(&uid, digest, now).await;
            }
            Ok((snapshot, changes))
        }
        Err(e) => {
            if matches!(e, crate::redis::Error::Unreachable { .. }) {
                ctx.shared.brokers.forget_connection(&access.admin_url).await;
            }
            Err(Problem::redis(&e).past_the_broker())
        }
    }
}

/// Writes the producer's and consumer's Secrets, each with its URL.
async fn apply_credential_secrets(
    queue: &Queue,
    ctx: &Context,
    access: &Access,
    spec: &QueueSpec,
) -> Result<build::Names, Problem> {
    let names = build::names(queue);
    let ns = queue.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(ctx.shared.client.clone(), &ns);
    let dead_letter = queue.dead_letter_stream_key();
    for (name, user, password) in [
        (&names.producer_secret, &spec.producer_user, &spec.producer_password),
        (&names.consumer_secret, &spec.consumer_user, &spec.consumer_password),
    ] {
        let url = access.endpoint.url_for(user, password);
        // Everything `credentials_secret` reads: the Queue only for its name, namespace and uid.
        let inputs = (
            queue.uid(),
            queue.name_any(),
            &url,
            user,
            password,
            &dead_letter,
            queue.stream_key(),
        );
        let live = ctx.shared.secrets.watched(&ns, name);
        ctx.shared
            .applied
            .apply_built(
                &secrets,
                (&ns, name),
                inputs,
                live.as_ref().map(|l| &l.metadata),
                Version::ResourceVersion,
                || build::credentials_secret(queue, name, &url, user, password, dead_letter.as_deref()),
            )
            .await
            .map_err(|e| Problem::kube("applying", name, e))?;
    }
    Ok(names)
}
