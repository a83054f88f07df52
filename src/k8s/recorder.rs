//! The one Recorder all Events go through (events.k8s.io/v1).
//!
//! An Event repeated while its series is fresh (the same object, type,
//! reason, action and note within [`SERIES_TTL`]) is not created again: the
//! first one's series count is patched up, as `kubectl get events` expects.
//!
//! kube-rs' own Recorder does the same, but it keeps the whole Event and its
//! key, two `ObjectReference`s among them, inline in its cache's table: about
//! 3 KiB a slot, 12 MiB of the operator's heap after 1,000 Queues and
//! Consumers had each published their first Events (heaptrack), and a table
//! that never shrinks. Here a series is a hash and the few fields its patch
//! needs.

use std::{
    collections::HashMap,
    hash::{DefaultHasher, Hash, Hasher},
    time::{Duration, Instant},
};

use k8s_openapi::{
    api::{core::v1::ObjectReference, events::v1::Event},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::Timestamp,
};
use kube::{
    Api, Client,
    api::{Patch, PatchParams, PostParams},
    runtime::events::{Event as Occurrence, EventType},
};
use serde_json::json;
use tokio::sync::Mutex;

/// How long after its last occurrence an Event still folds repeats into its
/// series: kube-rs' and client-go's six minutes.
pub const SERIES_TTL: Duration = Duration::from_secs(6 * 60);

/// Who publishes: the controller's name, and which replica.
pub struct Reporter {
    pub controller: String,
    /// The pod name, so Events from several replicas can be told apart.
    pub instance: Option<String>,
}

/// One Event already published, as much as a repeat needs.
struct Series {
    namespace: String,
    name: String,
    count: i32,
    last: Instant,
}

pub struct Recorder {
    client: Client,
    reporter: Reporter,
    /// By a hash of the object, and the Event's type, reason, action, note
    /// and related object. Two Events colliding in 64 bits would share one series.
    series: Mutex<HashMap<u64, Series>>,
}

impl Recorder {
    pub fn new(client: Client, reporter: Reporter) -> Self {
        Self {
            client,
            reporter,
            series: Mutex::default(),
        }
    }

    /// Publishes `what` about `regarding`: a new Event, or one more of a fresh series.
    pub async fn publish(&self, what: &Occurrence, regarding: &ObjectReference) -> Result<(), kube::Error> {
        let key = series_key(what, regarding);
        let now = Instant::now();
        let repeat = {
            let mut series = self.series.lock().await;
            prune(&mut series, now);
            series.get_mut(&key).map(|s| {
                s.count += 1;
                s.last = now;
                (s.namespace.clone(), s.name.clone(), s.count)
            })
        };
        if let Some((namespace, name, count)) = repeat {
            let events: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
            let patch = json!({"series": {"count": count, "lastObservedTime": MicroTime(Timestamp::now())}});
            match super::sent(events.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))).await {
                // The apiserver dropped the Event (its own TTL): start a new series.
                Err(kube::Error::Api(e)) if e.code == 404 => {
                    self.series.lock().await.remove(&key);
                }
                other => return other.map(drop),
            }
        }
        let event = self.event(what, regarding);
        let namespace = event.metadata.namespace.clone().unwrap_or_default();
        let events: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        super::sent(events.create(&PostParams::default(), &event)).await?;
        let series = Series {
            namespace,
            name: event.metadata.name.unwrap_or_default(),
            count: 1,
            last: now,
        };
        self.series.lock().await.insert(key, series);
        Ok(())
    }

    fn event(&self, what: &Occurrence, regarding: &ObjectReference) -> Event {
        let now = Timestamp::now();
        let controller = &self.reporter.controller;
        let object = regarding.name.as_deref().unwrap_or(controller);
        Event {
            action: Some(what.action.clone()),
            reason: Some(what.reason.clone()),
            note: what.note.clone(),
            event_time: Some(MicroTime(now)),
            regarding: Some(regarding.clone()),
            related: what.secondary.clone(),
            metadata: ObjectMeta {
                namespace: Some(regarding.namespace.clone().unwrap_or_else(|| "default".into())),
                name: Some(format!("{object}.{:x}", now.as_nanosecond())),
                ..Default::default()
            },
            reporting_controller: Some(controller.clone()),
            reporting_instance: Some(self.reporter.instance.clone().unwrap_or_else(|| controller.clone())),
            type_: Some(type_name(what.type_).into()),
            ..Default::default()
        }
    }
}

fn type_name(t: EventType) -> &'static str {
    match t {
        EventType::Normal => "Normal",
        EventType::Warning => "Warning",
    }
}

fn series_key(what: &Occurrence, regarding: &ObjectReference) -> u64 {
    let related = what
        .secondary
        .as_ref()
        .map(|r| (&r.uid, &r.kind, &r.namespace, &r.name));
    let mut h = DefaultHasher::new();
    (
        (&regarding.uid, &regarding.kind, &regarding.namespace, &regarding.name),
        what.type_,
        &what.reason,
        &what.action,
        &what.note,
        related,
    )
        .hash(&mut h);
    h.finish()
}

/// Forgets the series that ended, and gives back the table's room once most
/// of it is empty (a start-up's first Events are many; later ones are few).
fn prune(series: &mut HashMap<u64, Series>, now: Instant) {
    series.retain(|_, s| now.duration_since(s.last) < SERIES_TTL);
    if series.capacity() > 64 && series.len() < series.capacity() / 4 {
        series.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(uid: &str) -> ObjectReference {
        ObjectReference {
            uid: Some(uid.into()),
            kind: Some("Queue".into()),
            namespace: Some("ns".into()),
            name: Some("q".into()),
            ..Default::default()
        }
    }

    #[test]
    fn a_repeat_shares_the_series_and_another_note_or_object_does_not() {
        let key = |text: &str, uid: &str| {
            let what = Occurrence {
                type_: EventType::Normal,
                reason: "Scaled".into(),
                note: Some(text.into()),
                action: "Scale".into(),
                secondary: None,
            };
            series_key(&what, &reference(uid))
        };
        let a = key("replicas 1 → 2", "u1");
        assert_eq!(a, key("replicas 1 → 2", "u1"));
        assert_ne!(a, key("replicas 2 → 3", "u1"));
        assert_ne!(a, key("replicas 1 → 2", "u2"));
    }

    #[test]
    fn ended_series_are_forgotten_and_their_room_given_back() {
        let t0 = Instant::now();
        let mut series: HashMap<u64, Series> = (0..1000)
            .map(|k| {
                let s = Series {
                    namespace: "ns".into(),
                    name: format!("e{k}"),
                    count: 1,
                    last: t0,
                };
                (k, s)
            })
            .collect();
        series.get_mut(&7).unwrap().last = t0 + SERIES_TTL;
        prune(&mut series, t0 + SERIES_TTL + Duration::from_secs(1));
        assert_eq!(series.keys().copied().collect::<Vec<_>>(), vec![7]);
        assert!(series.capacity() < 64, "capacity {} kept", series.capacity());
    }
}
