//! Pod start-up, measured: how long a Consumer's worker pods took from creation to Ready.
//!
//! The caller reads each pod's creation and Ready times and records them; the estimate is the
//! median of the most recent pods, so one pod that waited for a node or an image does not set
//! the autoscaler's lead time. Pure: times come in as values.

use std::{collections::BTreeMap, time::Duration};

/// How many of the most recent pods the estimate is taken over.
pub const RECENT_PODS: usize = 20;

/// One pod's start-up, as read from the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodStart {
    /// Identifies the pod across readings, so a pod is counted once.
    pub uid: String,
    /// Creation time, in any monotonic unit the caller keeps (orders pods by age).
    pub created_ms: i64,
    /// Creation to Ready.
    pub took: Duration,
}

/// The start-ups of a Consumer's most recent pods, kept after the pods are gone.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StartupHistory {
    /// By (creation, uid): the oldest is dropped first.
    recent: BTreeMap<(i64, String), Duration>,
}

impl StartupHistory {
    /// Records pods not yet seen; keeps only the [`RECENT_PODS`] most recent.
    pub fn record(&mut self, starts: impl IntoIterator<Item = PodStart>) {
        for start in starts {
            self.recent.insert((start.created_ms, start.uid), start.took);
        }
        while self.recent.len() > RECENT_PODS {
            self.recent.pop_first();
        }
    }

    /// The median start-up of the recent pods (the lower middle of an even count, so the
    /// estimate is always a start-up that was seen); `None` before the first pod was Ready.
    pub fn median(&self) -> Option<Duration> {
        let mut took: Vec<Duration> = self.recent.values().copied().collect();
        took.sort_unstable();
        took.get(took.len().checked_sub(1)? / 2).copied()
    }

    /// Pods the estimate is taken over.
    pub fn len(&self) -> usize {
        self.recent.len()
    }

    pub fn is_empty(&self) -> bool {
        self.recent.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(n: i64, secs: u64) -> PodStart {
        PodStart {
            uid: format!("pod-{n}"),
            created_ms: n * 1000,
            took: Duration::from_secs(secs),
        }
    }

    #[test]
    fn nothing_measured_gives_no_estimate() {
        assert_eq!(StartupHistory::default().median(), None);
    }

    #[test]
    fn one_slow_pod_does_not_set_the_estimate() {
        let mut history = StartupHistory::default();
        history.record([pod(1, 2), pod(2, 3), pod(3, 120), pod(4, 2), pod(5, 3)]);
        assert_eq!(history.median(), Some(Duration::from_secs(3)));
    }

    #[test]
    fn an_even_count_takes_the_lower_middle() {
        let mut history = StartupHistory::default();
        history.record([pod(1, 4), pod(2, 1), pod(3, 9), pod(4, 2)]);
        assert_eq!(history.median(), Some(Duration::from_secs(2)));
    }

    #[test]
    fn a_pod_read_twice_counts_once() {
        let mut history = StartupHistory::default();
        history.record([pod(1, 5)]);
        history.record([pod(1, 5), pod(2, 1)]);
        assert_eq!(history.len(), 2);
        assert_eq!(history.median(), Some(Duration::from_secs(1)));
    }

    #[test]
    fn only_the_most_recent_pods_count() {
        let mut history = StartupHistory::default();
        // Twenty slow pods, then twenty fast ones: the slow ones age out.
        history.record((0..20).map(|n| pod(n, 60)));
        history.record((20..40).map(|n| pod(n, 2)));
        assert_eq!(history.len(), RECENT_PODS);
        assert_eq!(history.median(), Some(Duration::from_secs(2)));
    }

    #[test]
    fn the_estimate_follows_a_change_in_start_up() {
        let mut history = StartupHistory::default();
        history.record((0..20).map(|n| pod(n, 2)));
        history.record((20..31).map(|n| pod(n, 30)));
        assert_eq!(history.median(), Some(Duration::from_secs(30)));
    }
}
