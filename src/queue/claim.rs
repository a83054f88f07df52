//! The ownership claim on a stream key: two Queues that name one stream on
//! one Redis must not both manage it.

use kube::{Api, Client, Resource, ResourceExt};

use crate::{
    api::{Queue, Reason},
    problem::Problem,
    redis::admin::{Admin, QueueSpec},
};

/// `<namespace>/<name>/<uid>/<created unix seconds>`, stored at `<stream>:owner`.
pub struct Claim {
    namespace: String,
    name: String,
    uid: String,
    created: i64,
}

impl Claim {
    pub fn of(queue: &Queue) -> String {
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

    /// The older claim wins; the uid breaks a tie.
    fn is_older_than(&self, other: &Self) -> bool {
        (self.created, self.uid.as_str()) < (other.created, other.uid.as_str())
    }
}

/// Whether this Queue may use its stream key (`Err`: another one owns it),
/// and whether to write the claim. The older of two live Queues claiming one
/// key keeps it; the younger gets `Conflict` and touches nothing.
pub async fn decide(
    queue: &Queue,
    client: &Client,
    spec: &QueueSpec,
    owner: Option<&str>,
    admin: &Admin,
) -> Result<bool, Problem> {
    let Some(owner) = owner else { return Ok(true) };
    if owner == spec.owner {
        return Ok(false);
    }
    let (Some(other), Some(ours)) = (Claim::parse(owner), Claim::parse(&spec.owner)) else {
        return Ok(true);
    };
    // A claim left by a Queue that no longer exists is free to take.
    let others: Api<Queue> = Api::namespaced(client.clone(), &other.namespace);
    let alive = match crate::k8s::sent(others.get_opt(&other.name)).await {
        Ok(found) => found.is_some_and(|q| q.uid().as_deref() == Some(other.uid.as_str())),
        // Cannot tell (e.g. no access to that namespace): assume it lives.
        Err(_) => true,
    };
    if alive && other.is_older_than(&ours) {
        let message = format!(
            "stream key {} on {} already belongs to the older Queue {}/{}: give this Queue another spec.streamKey",
            queue.stream_key(),
            admin.endpoint.addr(),
            other.namespace,
            other.name
        );
        return Err(Problem::fault(Reason::Conflict, message).past_the_broker());
    }
    Ok(true)
}
