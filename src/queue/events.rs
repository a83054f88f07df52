//! The Events a Queue round publishes, and their texts: one per change a
//! user should know of, never one per resync.

use kube::{ResourceExt, runtime::events::EventType};

use super::build::Names;
use crate::{
    api::Queue,
    context::Shared,
    k8s,
    problem::Problem,
    redis::{
        acl::{self, Role},
        admin::Changes,
    },
};

/// A new fault (the status says so too; the Event reaches `kubectl get events` watchers).
pub async fn fault(queue: &Queue, shared: &Shared, problem: &Problem) {
    let reason = problem.reason.as_str();
    k8s::publish_event(
        &shared.recorder,
        queue,
        EventType::Warning,
        reason,
        "Provision",
        problem.message.clone(),
    )
    .await;
}

pub async fn managed_redis_created(queue: &Queue, shared: &Shared, name: &str) {
    let note = format!("StatefulSet {name} and Service {name} created");
    k8s::publish_event(
        &shared.recorder,
        queue,
        EventType::Normal,
        "ManagedRedisCreated",
        "Provision",
        note,
    )
    .await;
}

/// What a provisioning round changed. The first round creates; later ones
/// repair drift, and say so.
pub async fn provisioned(
    queue: &Queue,
    shared: &Shared,
    names: &Names,
    credentials_created: bool,
    changes: &Changes,
    provisioned_before: bool,
) {
    if credentials_created {
        let note = format!(
            "credentials Secrets {} and {} written",
            names.producer_secret, names.consumer_secret
        );
        k8s::publish_event(
            &shared.recorder,
            queue,
            EventType::Normal,
            "CredentialsCreated",
            "Provision",
            note,
        )
        .await;
    }
    let type_ = if provisioned_before {
        EventType::Warning
    } else {
        EventType::Normal
    };
    for (reason, note) in created_notes(queue, changes, provisioned_before) {
        k8s::publish_event(&shared.recorder, queue, type_, &reason, "Provision", note).await;
    }
    if changes.maintenance.dead_lettered > 0 || changes.maintenance.vanished > 0 {
        let note = dead_lettered_note(queue, changes);
        k8s::publish_event(
            &shared.recorder,
            queue,
            EventType::Warning,
            "DeadLettered",
            "DeadLetter",
            note,
        )
        .await;
    }
}

/// (reason, note) for each thing a round created or recreated.
fn created_notes(queue: &Queue, changes: &Changes, provisioned_before: bool) -> Vec<(String, String)> {
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
    // One Event for both users, so one note says what this round created.
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
    notes
}

fn dead_lettered_note(queue: &Queue, changes: &Changes) -> String {
    let vanished = if changes.maintenance.vanished > 0 {
        format!("; acked {} that had been trimmed away", changes.maintenance.vanished)
    } else {
        String::new()
    };
    format!(
        "moved {} message(s) that exhausted their deliveries to {}{vanished}",
        changes.maintenance.dead_lettered,
        queue.dead_letter_stream_key().unwrap_or_default(),
    )
}

pub async fn cleaned_up(queue: &Queue, shared: &Shared, deleted_data: bool) {
    let what = if deleted_data {
        "ACL users, streams and stats removed from Redis"
    } else {
        "ACL users removed from Redis; the stream data is retained"
    };
    k8s::publish_event(
        &shared.recorder,
        queue,
        EventType::Normal,
        "CleanedUp",
        "Delete",
        what.into(),
    )
    .await;
}

/// Cleanup given up: `note` says why and what may remain.
pub async fn cleanup_abandoned<K>(obj: &K, shared: &Shared, note: String)
where
    K: kube::Resource<DynamicType = ()>,
{
    k8s::publish_event(
        &shared.recorder,
        obj,
        EventType::Warning,
        "CleanupAbandoned",
        "Delete",
        note,
    )
    .await;
}
