//! The operator's Recorder against a real apiserver: a repeated Event folds
//! into its series (the `patch` the chart grants on events), another note or
//! object gets its own Event.

mod support;

use k8s_openapi::api::{core::v1::ConfigMap, events::v1::Event};
use kube::{
    Resource,
    api::{ListParams, PostParams},
    runtime::events::{Event as Occurrence, EventType},
};
use streamq::k8s::recorder::{Recorder, Reporter};
use support::*;

#[tokio::test]
async fn a_repeated_event_counts_up_its_series_and_a_new_note_is_a_new_event() {
    let env = TestEnv::new("events").await;
    let configs = env.api::<ConfigMap>();
    let mut object = ConfigMap::default();
    object.metadata.name = Some("regarding".into());
    let object = configs.create(&PostParams::default(), &object).await.unwrap();
    let reference = object.object_ref(&());
    let reporter = Reporter {
        controller: "streamq-test".into(),
        instance: None,
    };
    let recorder = Recorder::new(env.client.clone(), reporter);
    for text in ["replicas 1 → 2", "replicas 1 → 2", "replicas 1 → 2", "replicas 2 → 3"] {
        let scaled = Occurrence {
            type_: EventType::Normal,
            reason: "Scaled".into(),
            note: Some(text.into()),
            action: "Scale".into(),
            secondary: None,
        };
        recorder.publish(&scaled, &reference).await.unwrap();
    }

    let events = env.api::<Event>().list(&ListParams::default()).await.unwrap().items;
    let mut seen: Vec<(String, i32)> = events
        .iter()
        .map(|e| {
            let count = e.series.as_ref().map_or(1, |s| s.count);
            (e.note.clone().unwrap_or_default(), count)
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        vec![("replicas 1 → 2".into(), 3), ("replicas 2 → 3".into(), 1)],
        "events: {events:#?}"
    );
    let regarding = events[0].regarding.as_ref().and_then(|r| r.uid.clone());
    assert_eq!(regarding, object.metadata.uid);
}
