//! The sampler's latest decision and observation per Consumer, which the
//! Consumer controller reads when it reconciles.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    time::Duration,
};

use tokio::sync::Mutex;

use crate::{
    api::{ConsumerStatus, Duration as ApiDuration},
    autoscale::{
        Decision, LagSource,
        startup::{PodStart, StartupHistory},
    },
};

/// The latest decision and observation per Consumer uid, and the last
/// scaling the controller did (kept here, not read back from the cached
/// status, which can be one write behind).
#[derive(Default)]
pub struct Decisions {
    latest: Mutex<HashMap<String, Latest>>,
    last_scale: Mutex<HashMap<String, LastScale>>,
    /// The start-ups of each Consumer's recent pods.
    startups: Mutex<HashMap<String, StartupHistory>>,
}

#[derive(Clone)]
pub struct LastScale {
    pub time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
    pub reason: String,
}

#[derive(Clone)]
pub(super) struct Latest {
    pub(super) decision: Decision,
    pub(super) lag_source: &'static str,
    pub(super) pending: u64,
    pub(super) oldest_age: Option<Duration>,
    /// Pending entries per consumer name (the pod name) at the last sample.
    pub(super) consumer_pending: BTreeMap<String, u64>,
    /// The stream and group, when the last sample found that group there.
    pub(super) seen_group: Option<(String, String)>,
}

impl Decisions {
    /// The replicas the autoscaler wants, unless it is holding for lack of data.
    pub async fn replicas(&self, uid: &str) -> Option<i32> {
        let latest = self.latest.lock().await.get(uid).cloned()?;
        (!latest.decision.hold).then(|| i32::try_from(latest.decision.replicas).unwrap_or(i32::MAX))
    }

    /// Pending entries per consumer name at the last good sample.
    pub async fn consumer_pending(&self, uid: &str) -> Option<BTreeMap<String, u64>> {
        let latest = self.latest.lock().await.get(uid).cloned()?;
        (!latest.decision.hold).then_some(latest.consumer_pending)
    }

    /// Whether the last sample found `group` on `stream`: then the round
    /// need not ask Redis to create it.
    pub async fn group_seen(&self, uid: &str, stream: &str, group: &str) -> bool {
        let latest = self.latest.lock().await;
        let seen = latest.get(uid).and_then(|l| l.seen_group.as_ref());
        seen.is_some_and(|(s, g)| s == stream && g == group)
    }

    pub async fn record_scale(&self, uid: &str, reason: String) {
        // Whole seconds, as the API stores it: so the status a round builds
        // from it equals the one read back, and is not taken for a change.
        let now = k8s_openapi::jiff::Timestamp::now();
        let now = k8s_openapi::jiff::Timestamp::from_second(now.as_second()).unwrap_or(now);
        let time = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now);
        self.last_scale
            .lock()
            .await
            .insert(uid.to_owned(), LastScale { time, reason });
    }

    pub async fn last_scale(&self, uid: &str) -> Option<LastScale> {
        self.last_scale.lock().await.get(uid).cloned()
    }

    /// Records the start-up of the Consumer's pods that were Ready.
    pub async fn record_startups(&self, uid: &str, starts: impl IntoIterator<Item = PodStart>) {
        self.startups
            .lock()
            .await
            .entry(uid.to_owned())
            .or_default()
            .record(starts);
    }

    /// The measured pod start-up: the median of the recent pods.
    pub async fn pod_startup(&self, uid: &str) -> Option<Duration> {
        self.startups.lock().await.get(uid)?.median()
    }

    pub async fn reason(&self, uid: &str) -> Option<String> {
        self.latest.lock().await.get(uid).map(|l| l.decision.reason.to_string())
    }

    /// The status fields the sampler knows, over `previous`.
    pub async fn observed_status(&self, uid: &str, previous: ConsumerStatus) -> ConsumerStatus {
        let previous = ConsumerStatus {
            pod_startup: self
                .pod_startup(uid)
                .await
                .map(|d| millis(d).to_string())
                .or(previous.pod_startup),
            ..previous
        };
        let Some(latest) = self.latest.lock().await.get(uid).cloned() else {
            return previous;
        };
        let e = &latest.decision.estimates;
        let round = |r: f64| (r * 100.0).round() / 100.0;
        ConsumerStatus {
            lag: e.lag.or(previous.lag),
            lag_source: Some(match e.lag_source {
                LagSource::Exact => latest.lag_source.to_owned(),
                LagSource::Estimated => "estimated".into(),
                LagSource::Unknown => "unknown".into(),
            }),
            pending: Some(latest.pending),
            oldest_message_age: Some(
                latest
                    .oldest_age
                    .map_or_else(|| "0s".into(), |d| ApiDuration::from(round_to_second(d)).to_string()),
            ),
            arrival_rate: e.arrival_rate.map(round),
            completion_rate: e.completion_rate.map(round),
            processing_time: Some(millis(e.processing_time).to_string()),
            ..previous
        }
    }

    pub(super) async fn record(&self, uid: String, latest: Latest) {
        self.latest.lock().await.insert(uid, latest);
    }

    pub(super) async fn forget_missing(&self, alive: &HashSet<&str>) {
        self.latest.lock().await.retain(|uid, _| alive.contains(uid.as_str()));
        self.last_scale
            .lock()
            .await
            .retain(|uid, _| alive.contains(uid.as_str()));
        self.startups.lock().await.retain(|uid, _| alive.contains(uid.as_str()));
    }
}

fn millis(d: Duration) -> ApiDuration {
    ApiDuration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn round_to_second(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs())
}
