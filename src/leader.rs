//! Leader election on a `coordination.k8s.io/v1` Lease, so that several
//! operator replicas can run with exactly one of them reconciling.
//!
//! The protocol is the one client-go's leaderelection package uses, written
//! with optimistic concurrency (every write is a replace carrying the
//! resourceVersion that was read, so two candidates can never both win the
//! same takeover: the second gets 409 Conflict):
//!
//! - a candidate reads the Lease; if nobody holds it, or the holder's record
//!   has not changed for `lease_duration` *as timed by the candidate's own
//!   clock*, it writes itself in as holder and increments `leaseTransitions`
//!   (the term);
//! - the leader rewrites `renewTime` every `renew_interval`; if it cannot do
//!   so for `renew_deadline` (shorter than `lease_duration`) it must stop, so
//!   it has stopped before any candidate can consider the Lease expired.
//!
//! Expiry is judged from when *this* process last saw the record change, never
//! from the timestamps in it, so clock skew between nodes cannot make two
//! leaders; only the clocks' rates matter, and the 1/3 margin between
//! `renew_deadline` and `lease_duration` covers those.

use std::time::Duration;

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::Timestamp,
};
use kube::{Api, Client, ResourceExt, api::PostParams};
use tokio::time::Instant;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Lease {namespace}/{name} is now held by {holder:?}: leadership lost")]
    Lost {
        namespace: String,
        name: String,
        holder: Option<String>,
    },
    #[error("could not renew Lease {namespace}/{name} for {elapsed:?} (deadline {deadline:?}); last error: {last}")]
    RenewDeadline {
        namespace: String,
        name: String,
        elapsed: Duration,
        deadline: Duration,
        last: String,
    },
}

/// Where the Lease is, who we are, and how long a term lasts.
#[derive(Clone, Debug)]
pub struct Config {
    pub namespace: String,
    pub name: String,
    /// Unique per process: pod name (or host name) and pid.
    pub identity: String,
    /// How long a candidate waits, after the Lease last changed, before it
    /// takes the Lease over. The failover time after a leader dies is at most
    /// this plus `retry_interval` (twice: once to notice the last renewal,
    /// once to notice expiry).
    pub lease_duration: Duration,
}

impl Config {
    /// The leader renews this often: five times per lease duration, so
    /// several renewals can fail in a row before the deadline.
    pub fn renew_interval(&self) -> Duration {
        self.lease_duration / 5
    }

    /// After this long without a successful renewal the leader gives up; two
    /// thirds of the lease duration leaves a third as margin before a
    /// candidate may take over.
    pub fn renew_deadline(&self) -> Duration {
        self.lease_duration * 2 / 3
    }

    /// A candidate, and a leader whose renewal failed, retry this often.
    pub fn retry_interval(&self) -> Duration {
        self.lease_duration / 10
    }
}

/// The identity of this process: `<pod or host name>_<pid>`. The pid tells
/// two processes on one host apart (as in the tests); in a pod the name does.
pub fn default_identity() -> String {
    let host = std::env::var("POD_NAME")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "streamq".to_owned());
    format!("{host}_{}", std::process::id())
}

/// What one look at the Lease found.
#[derive(Debug, PartialEq, Eq)]
enum Attempt {
    /// We hold the Lease, in this term (its `leaseTransitions`).
    Leading { term: i32 },
    /// Someone else holds it (or won a race for it).
    Following { holder: Option<String> },
}

pub struct Elector {
    api: Api<Lease>,
    config: Config,
    /// The resourceVersion last seen, and when this process first saw it.
    observed: Option<(String, Instant)>,
    /// The term currently held, if any.
    term: Option<i32>,
    /// When the last successful write of the Lease by this process was
    /// *sent*: the apiserver stored it no earlier than that.
    written_at: Instant,
}

impl Elector {
    pub fn new(client: Client, config: Config) -> Self {
        Self {
            api: Api::namespaced(client, &config.namespace),
            config,
            observed: None,
            term: None,
            written_at: Instant::now(),
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Waits until this process holds the Lease and returns the term.
    /// `on_observed` runs once, after the first successful read of the Lease:
    /// from then on the process takes part in the election (a follower is
    /// ready). API errors are logged and retried: a candidate has nothing to
    /// lose by waiting.
    pub async fn acquire(&mut self, on_observed: impl FnOnce()) -> i32 {
        let mut on_observed = Some(on_observed);
        let mut last_holder: Option<Option<String>> = None;
        loop {
            match self.try_acquire_or_renew().await {
                Ok(Attempt::Leading { term }) => {
                    if let Some(f) = on_observed.take() {
                        f();
                    }
                    tracing::info!(
                        identity = %self.config.identity,
                        lease = %self.config.name,
                        term,
                        "acquired leadership"
                    );
                    return term;
                }
                Ok(Attempt::Following { holder }) => {
                    if let Some(f) = on_observed.take() {
                        f();
                    }
                    if last_holder.as_ref() != Some(&holder) {
                        tracing::info!(holder = ?holder, "following: another process leads");
                        last_holder = Some(holder);
                    }
                }
                Err(err) => tracing::warn!(%err, lease = %self.config.name, "reading the leader election Lease"),
            }
            tokio::time::sleep(self.config.retry_interval()).await;
        }
    }

    /// Renews the Lease until that fails; returns why leadership ended. The
    /// caller must stop acting as leader at once when this returns.
    pub async fn hold(&mut self) -> Error {
        let mut last = String::new();
        loop {
            tokio::time::sleep(if last.is_empty() {
                self.config.renew_interval()
            } else {
                self.config.retry_interval()
            })
            .await;
            let left = self.config.renew_deadline().saturating_sub(self.written_at.elapsed());
            match tokio::time::timeout(left, self.try_acquire_or_renew()).await {
                Ok(Ok(Attempt::Leading { .. })) => last.clear(),
                Ok(Ok(Attempt::Following { holder })) => {
                    self.term = None;
                    return Error::Lost {
                        namespace: self.config.namespace.clone(),
                        name: self.config.name.clone(),
                        holder,
                    };
                }
                Ok(Err(err)) => last = err.to_string(),
                Err(_) => last = "timed out".to_owned(),
            }
            if !last.is_empty() {
                tracing::warn!(error = %last, "renewing the leader election Lease");
                if self.written_at.elapsed() >= self.config.renew_deadline() {
                    self.term = None;
                    return Error::RenewDeadline {
                        namespace: self.config.namespace.clone(),
                        name: self.config.name.clone(),
                        elapsed: self.written_at.elapsed(),
                        deadline: self.config.renew_deadline(),
                        last,
                    };
                }
            }
        }
    }

    /// Gives the Lease up (empty holder) after a graceful shutdown, so a
    /// follower takes over at its next retry instead of waiting for expiry.
    /// Best effort: if it fails, the Lease simply expires.
    pub async fn release(&mut self) {
        if self.term.take().is_none() {
            return;
        }
        let result = async {
            let Some(mut lease) = self.api.get_opt(&self.config.name).await? else {
                return Ok(());
            };
            let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
            if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
                return Ok(());
            }
            spec.holder_identity = None;
            spec.renew_time = Some(MicroTime(Timestamp::now()));
            self.api
                .replace(&self.config.name, &PostParams::default(), &lease)
                .await
                .map(|_| ())
        }
        .await;
        match result {
            Ok(()) => tracing::info!(lease = %self.config.name, "released leadership"),
            Err(err) => tracing::warn!(%err, "releasing the leader election Lease; it will expire instead"),
        }
    }

    async fn try_acquire_or_renew(&mut self) -> Result<Attempt, kube::Error> {
        let sent = Instant::now();
        let now = MicroTime(Timestamp::now());
        let me = self.config.identity.clone();
        let Some(mut lease) = self.api.get_opt(&self.config.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.config.name.clone()),
                    namespace: Some(self.config.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(me),
                    lease_duration_seconds: Some(self.duration_seconds()),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(created) => Ok(self.won(&created, 0, sent)),
                Err(kube::Error::Api(s)) if s.is_already_exists() => Ok(Attempt::Following { holder: None }),
                Err(err) => Err(err),
            };
        };

        let version = lease.resource_version().unwrap_or_default();
        let changed = self.observed.as_ref().is_none_or(|(seen, _)| *seen != version);
        if changed {
            self.observed = Some((version, Instant::now()));
        }
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let held_by_me = holder.as_deref() == Some(me.as_str());
        let duration = spec
            .lease_duration_seconds
            .and_then(|s| u64::try_from(s).ok())
            .map_or(self.config.lease_duration, Duration::from_secs);
        let expired = self
            .observed
            .as_ref()
            .is_some_and(|(_, since)| since.elapsed() >= duration);
        if !held_by_me && holder.is_some() && !expired {
            self.term = None;
            return Ok(Attempt::Following { holder });
        }

        let mut term = spec.lease_transitions.unwrap_or(0);
        if !held_by_me {
            term += 1;
            spec.lease_transitions = Some(term);
            spec.acquire_time = Some(now.clone());
            spec.holder_identity = Some(me);
        }
        spec.renew_time = Some(now);
        spec.lease_duration_seconds = Some(self.duration_seconds());
        // The resourceVersion read above makes this a compare-and-swap.
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
        {
            Ok(written) => Ok(self.won(&written, term, sent)),
            Err(kube::Error::Api(s)) if s.is_conflict() => {
                self.term = None;
                Ok(Attempt::Following {
                    holder: Some("(changed concurrently)".into()),
                })
            }
            Err(err) => Err(err),
        }
    }

    fn won(&mut self, written: &Lease, term: i32, sent: Instant) -> Attempt {
        // Our own write is a change we have seen.
        self.observed = Some((written.resource_version().unwrap_or_default(), Instant::now()));
        self.term = Some(term);
        self.written_at = sent;
        Attempt::Leading { term }
    }

    fn duration_seconds(&self) -> i32 {
        i32::try_from(self.config.lease_duration.as_secs().max(1)).unwrap_or(i32::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leader_gives_up_well_before_a_candidate_may_take_over() {
        for secs in [2, 10, 15, 60] {
            let config = Config {
                namespace: "ns".into(),
                name: "lease".into(),
                identity: "me".into(),
                lease_duration: Duration::from_secs(secs),
            };
            assert!(
                config.renew_interval() * 3 <= config.renew_deadline(),
                "{secs}: several renewals per deadline"
            );
            assert!(
                config.renew_deadline() + config.lease_duration / 4 < config.lease_duration,
                "{secs}: a margin"
            );
            assert!(config.retry_interval() < config.renew_interval());
        }
    }

    #[test]
    fn identities_tell_processes_on_one_host_apart() {
        let id = default_identity();
        assert!(id.ends_with(&format!("_{}", std::process::id())), "{id}");
        assert!(id.len() > 2);
    }
}
