//! Where a Queue's Redis is and how to administer it: the admin URL from the
//! external broker's Secret or the managed broker's admin Secret. Both
//! controllers and the sampler use it; only the Queue controller provisions.
//! It holds the administrative connections too, one per Redis server.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::Secret;
use kube::{Client, ResourceExt};
use tokio::sync::Mutex;

use crate::{
    api::{Broker, Queue, Reason},
    k8s::secrets::SecretReader,
    problem::Problem,
    queue::build,
    redis::{
        admin::Admin,
        connection::{self, Endpoint},
        pool::AdminPool,
    },
};

/// How many parsed URLs [`Brokers`] keeps.
const MAX_ENDPOINTS: usize = 4096;

/// How to reach a Queue's Redis as its administrator.
pub struct Access {
    pub admin_url: String,
    /// The address workers and producers use, which goes into their Secrets.
    pub endpoint: Endpoint,
}

/// The admin URLs of the Queues provisioned so far (for the sampler, which
/// must not read Secrets every second), the administrative connections, one
/// per server, and the development address overrides.
#[derive(Default)]
pub struct Brokers {
    connections: AdminPool,
    /// Development only: `namespace/queue` → `host:port` of the managed Redis,
    /// for running the operator outside the cluster (see `--dev-redis-address`).
    dev_addresses: BTreeMap<String, String>,
    /// Queue uid → admin URL of its last successful provisioning.
    provisioned: Mutex<HashMap<String, String>>,
    /// Admin URL → where it points: every round of every Queue and Consumer
    /// resolves its URL, and parsing one is most of that round's work.
    endpoints: std::sync::Mutex<HashMap<String, Endpoint>>,
}

impl Brokers {
    pub fn new(dev_addresses: BTreeMap<String, String>) -> Self {
        Self {
            connections: AdminPool::default(),
            dev_addresses,
            provisioned: Mutex::default(),
            endpoints: std::sync::Mutex::default(),
        }
    }

    /// Where `url` points, parsed once per URL.
    fn endpoint(&self, url: &str) -> Result<Endpoint, crate::redis::Error> {
        let mut endpoints = self.endpoints.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(endpoint) = endpoints.get(url) {
            return Ok(endpoint.clone());
        }
        let (_, endpoint) = connection::parse_url(url)?;
        // Rotated URLs leave their old entries behind: start over past a bound.
        if endpoints.len() >= MAX_ENDPOINTS {
            endpoints.clear();
        }
        endpoints.insert(url.to_owned(), endpoint.clone());
        Ok(endpoint)
    }

    pub async fn remember(&self, uid: &str, admin_url: &str) {
        self.provisioned
            .lock()
            .await
            .insert(uid.to_owned(), admin_url.to_owned());
    }

    pub async fn forget(&self, uid: &str) {
        self.provisioned.lock().await.remove(uid);
    }

    /// The admin URL of a provisioned Queue's Redis.
    pub async fn admin_url(&self, uid: &str) -> Option<String> {
        self.provisioned.lock().await.get(uid).cloned()
    }

    /// Reads how to reach `queue`'s Redis, provisioning nothing.
    pub async fn resolve(&self, queue: &Queue, client: &Client, secrets: &SecretReader) -> Result<Access, Problem> {
        let ns = queue.namespace().unwrap_or_default();
        match &queue.spec.broker {
            Broker::External(external) => {
                let r = &external.url_secret_ref;
                let secret = secrets
                    .get(client, &ns, &r.name)
                    .await
                    .map_err(|e| Problem::kube("reading", &r.name, e))?;
                let url = external_url(&ns, r.name.as_str(), &r.key, secret.as_deref())?;
                let endpoint = self.endpoint(&url).map_err(|e| Problem {
                    message: format!("Secret {ns}/{} key {:?}: {e}", r.name, r.key),
                    ..Problem::redis(&e)
                })?;
                Ok(Access {
                    admin_url: url,
                    endpoint,
                })
            }
            Broker::Managed(_) => {
                let name = build::names(queue).admin_secret;
                let secret = secrets
                    .get(client, &ns, &name)
                    .await
                    .map_err(|e| Problem::kube("reading", &name, e))?;
                let secret = secret.ok_or_else(|| {
                    Problem::fault(Reason::SecretNotFound, format!("Secret {ns}/{name} does not exist"))
                })?;
                Ok(self.managed_access(queue, &managed_password(&ns, &name, &secret)?))
            }
        }
    }

    /// An administrative connection to `queue`'s Redis, from the pool.
    pub async fn admin(&self, queue: &Queue, client: &Client, secrets: &SecretReader) -> Result<Admin, Problem> {
        let access = self.resolve(queue, client, secrets).await?;
        self.connect(&access.admin_url).await
    }

    /// An administrative connection to `url`, from the pool.
    pub async fn connect(&self, url: &str) -> Result<Admin, Problem> {
        self.connections.get(url).await.map_err(|e| Problem::redis(&e))
    }

    /// Drops a pooled connection after an error, so the next use reconnects.
    pub async fn forget_connection(&self, url: &str) {
        self.connections.forget(url).await;
    }

    /// Drops the pooled connection to `queue`'s Redis after an error.
    pub async fn forget_admin(&self, queue: &Queue, client: &Client, secrets: &SecretReader) {
        if let Ok(access) = self.resolve(queue, client, secrets).await {
            self.forget_connection(&access.admin_url).await;
        }
    }

    /// The managed Redis of `queue`, reached with `password`.
    pub fn managed_access(&self, queue: &Queue, password: &str) -> Access {
        let ns = queue.namespace().unwrap_or_default();
        let address = self
            .dev_addresses
            .get(&format!("{ns}/{}", queue.name_any()))
            .cloned()
            .unwrap_or_else(|| format!("{}:{}", build::service_host(queue), build::REDIS_PORT));
        Access {
            admin_url: format!("redis://{}:{password}@{address}/0", build::ADMIN_USER),
            endpoint: Endpoint {
                tls: false,
                host: build::service_host(queue),
                port: build::REDIS_PORT as u16,
                db: 0,
            },
        }
    }
}

/// The external broker's URL from its Secret (`None`: the Secret is missing).
pub fn external_url(ns: &str, name: &str, key: &str, secret: Option<&Secret>) -> Result<String, Problem> {
    let secret = secret.ok_or_else(|| {
        Problem::fault(
            Reason::SecretNotFound,
            format!(
                "Secret {ns}/{name} (spec.broker.external.urlSecretRef) does not exist: create it with key {key:?} holding a redis:// URL"
            ),
        )
    })?;
    secret_value(secret, key).ok_or_else(|| {
        let keys: Vec<_> = secret.data.iter().flat_map(|d| d.keys().cloned()).collect();
        Problem::fault(
            Reason::SecretKeyMissing,
            format!("Secret {ns}/{name} has no key {key:?} (its keys: {keys:?}): add the Redis URL under that key"),
        )
    })
}

/// The managed Redis' admin password from its Secret.
pub fn managed_password(ns: &str, name: &str, secret: &Secret) -> Result<String, Problem> {
    secret_value(secret, "password").ok_or_else(|| {
        Problem::fault(
            Reason::SecretKeyMissing,
            format!("Secret {ns}/{name} lost its password key: delete it to have a new one generated"),
        )
    })
}

/// A Secret's value as trimmed text; `None` when absent, empty or not UTF-8.
pub fn secret_value(secret: &Secret, key: &str) -> Option<String> {
    let bytes = secret.data.as_ref()?.get(key)?;
    String::from_utf8(bytes.0.clone())
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}
