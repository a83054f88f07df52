//! The scale-down window: replicas come down only after a whole `scale_down_delay` of fresh
//! samples, and only to the highest recommendation within it, so that a short dip in demand
//! costs no churn.

use std::{collections::VecDeque, time::Duration};

#[derive(Clone, Debug)]
pub struct ScaleDownWindow {
    delay: Duration,
    /// Recommendations of the fresh samples within the last `delay`, oldest first.
    recommendations: VecDeque<(Duration, u32)>,
    /// Since when every sample was fresh (no gap, no failure).
    fresh_since: Option<Duration>,
}

impl ScaleDownWindow {
    pub fn new(delay: Duration) -> Self {
        Self {
            delay,
            recommendations: VecDeque::new(),
            fresh_since: None,
        }
    }

    /// The new delay applies from the next recommendation on.
    pub fn set_delay(&mut self, delay: Duration) {
        self.delay = delay;
    }

    /// Sampling failed: the window starts again with the next sample.
    pub fn clear(&mut self) {
        self.recommendations.clear();
        self.fresh_since = None;
    }

    /// The first sample, or the first after a gap: the window starts again at `at`.
    pub fn restart(&mut self, at: Duration) {
        self.recommendations.clear();
        self.fresh_since = Some(at);
    }

    /// Forgets the recommendations but not since when the samples were fresh.
    pub fn forget_recommendations(&mut self) {
        self.recommendations.clear();
    }

    /// Adds the recommendation of the sample at `at` and drops those older than the delay. The
    /// first sample after [`Self::clear`] starts the window again: a failure shorter than a gap
    /// is followed by fresh samples, which do not restart it.
    pub fn record(&mut self, at: Duration, recommended: u32) {
        self.fresh_since.get_or_insert(at);
        self.recommendations.push_back((at, recommended));
        let start = self.start(at);
        while self.recommendations.front().is_some_and(|(t, _)| *t < start) {
            self.recommendations.pop_front();
        }
    }

    /// The highest recommendation within the window.
    pub fn highest(&self) -> Option<u32> {
        self.recommendations.iter().map(|(_, r)| *r).max()
    }

    /// Whether the samples were fresh for the whole delay up to `at`.
    pub fn is_full(&self, at: Duration) -> bool {
        self.fresh_since.is_some_and(|since| since <= self.start(at))
    }

    /// How long the samples have been fresh at `at`.
    pub fn fresh_for(&self, at: Duration) -> Duration {
        self.fresh_since
            .map_or(Duration::ZERO, |since| at.saturating_sub(since))
    }

    fn start(&self, at: Duration) -> Duration {
        at.saturating_sub(self.delay)
    }
}
