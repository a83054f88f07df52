//! The policies compared: streamq's own autoscaler, and models of KEDA and of the
//! WorkerPodAutoscaler built from their sources.

use std::{collections::VecDeque, time::Duration};

use super::{
    engine::{Removal, ScalingPolicy, Sim},
    scenario::Scenario,
};
use crate::autoscale::{Autoscaler, Policy};

/// The operator's default sampling interval.
pub const STREAMQ_SAMPLE_INTERVAL: f64 = 1.0;
/// `spec.autoscaling.scaleDownDelay`'s default in the CRD.
pub const STREAMQ_SCALE_DOWN_DELAY: Duration = Duration::from_secs(60);

/// streamq: the production [`Autoscaler`], fed by a sampler every second. It is told only what
/// a user writes in the Consumer (target latency, min/max replicas, concurrency) and the pod
/// start-up the operator measures; no processing-time hint.
pub struct Streamq {
    autoscaler: Autoscaler,
    next: f64,
    /// Print every decision that changes replicas to stderr (`--trace`).
    trace: bool,
}

impl Streamq {
    pub fn new(scenario: &Scenario, trace: bool) -> Self {
        let consumer = scenario.consumer;
        Self {
            trace,
            autoscaler: Autoscaler::new(Policy {
                min_replicas: consumer.min_replicas,
                max_replicas: consumer.max_replicas,
                concurrency: consumer.concurrency,
                target_latency: scenario.slo.target_latency.as_std(),
                scale_down_delay: STREAMQ_SCALE_DOWN_DELAY,
                processing_time_hint: None,
                pod_startup: scenario.pod_startup.as_std(),
            }),
            next: STREAMQ_SAMPLE_INTERVAL,
        }
    }
}

impl ScalingPolicy for Streamq {
    fn removal(&self) -> Removal {
        Removal::Graceful
    }

    fn next_tick(&self) -> f64 {
        self.next
    }

    fn tick(&mut self, now: f64, sim: &Sim<'_>) -> Option<u32> {
        self.next = now + STREAMQ_SAMPLE_INTERVAL;
        let decision = self.autoscaler.observe(&sim.observation());
        if self.trace && (decision.hold || decision.replicas != sim.desired()) {
            eprintln!("{}: t={now:.0}s {}", sim.scenario().name, decision.reason);
        }
        (!decision.hold).then_some(decision.replicas)
    }
}

/// KEDA's operator polling interval (`pollingInterval` default): activation and deactivation.
pub const KEDA_POLLING_INTERVAL: f64 = 30.0;
/// KEDA's `cooldownPeriod` default: inactive this long before scaling to zero.
pub const KEDA_COOLDOWN: f64 = 300.0;
/// The HPA controller's sync period (`--horizontal-pod-autoscaler-sync-period`).
pub const HPA_SYNC_PERIOD: f64 = 15.0;
/// The HPA's `--horizontal-pod-autoscaler-tolerance`.
pub const HPA_TOLERANCE: f64 = 0.1;
/// Default HPA behavior (kubernetes.io docs, "Default Behavior"): scale-down stabilization
/// window 300 s; scale-up no stabilization, at most max(+100 %, +4 pods) per 15 s.
pub const HPA_SCALE_DOWN_STABILIZATION: f64 = 300.0;
pub const HPA_SCALE_UP_PERIOD: f64 = 15.0;
pub const HPA_SCALE_UP_PODS: u32 = 4;
pub const HPA_SCALE_UP_PERCENT: f64 = 100.0;

/// KEDA's redis-streams scaler in `lagCount` mode driving an HPA.
///
/// Modelled from:
/// - kedacore/keda `pkg/scalers/redis_streams_scaler.go`: in lagCount mode the metric is the
///   group's `lag` (XINFO GROUPS), exposed as an External metric with an `AverageValue` target
///   of `lagCount`; the scaler is active when lag > `activationLagCount` (default 0).
/// - kedacore/keda's scale loop (`pkg/scaling/scale_handler.go`, `pkg/scaling/executor`):
///   every `pollingInterval` (30 s) it scales 0 → 1 when active, and to zero when inactive for
///   `cooldownPeriod` (300 s) with minReplicaCount 0; between 1 and max the HPA decides.
/// - kubernetes `pkg/controller/podautoscaler/horizontal.go` and `replica_calculator.go`
///   (`GetExternalPerPodMetricReplicas`): desired = ceil(metric ÷ target) unless
///   |metric ÷ (target × current) − 1| ≤ tolerance (0.1); then `stabilizeRecommendationWithBehaviors`
///   (scale down to the highest recommendation of the last 300 s) and
///   `convertDesiredReplicasWithBehaviorRate` (scale up at most to max(2 ×, +4) the replicas at
///   the start of the last 15 s); clamped to [max(minReplicas, 1), maxReplicas].
pub struct Keda {
    lag_target: u64,
    min_replicas: u32,
    max_replicas: u32,
    next_poll: f64,
    next_sync: f64,
    last_active: f64,
    /// HPA recommendations (time, replicas) within the stabilization window.
    recommendations: VecDeque<(f64, u32)>,
    /// HPA scale-up events (time, replicas added) within the scale-up period.
    scale_ups: VecDeque<(f64, u32)>,
}

impl Keda {
    pub fn new(scenario: &Scenario, lag_target: u64) -> Self {
        Self {
            lag_target: lag_target.max(1),
            min_replicas: scenario.consumer.min_replicas,
            max_replicas: scenario.consumer.max_replicas,
            next_poll: KEDA_POLLING_INTERVAL,
            next_sync: HPA_SYNC_PERIOD,
            last_active: 0.0,
            recommendations: VecDeque::new(),
            scale_ups: VecDeque::new(),
        }
    }

    #[cfg(test)]
    pub(super) fn hpa_sync_for_test(&mut self, now: f64, current: u32, lag: u64) -> Option<u32> {
        self.hpa_sync(now, current, lag)
    }

    /// One HPA reconcile; `None` when replicas stay.
    fn hpa_sync(&mut self, now: f64, current: u32, lag: u64) -> Option<u32> {
        // The HPA does nothing while the target is scaled to zero: KEDA owns 0 ↔ 1.
        if current == 0 {
            return None;
        }
        let hpa_min = self.min_replicas.max(1);
        let target = self.lag_target as f64;
        // The ratio is against status.replicas; pods are created at once (starting) here, so it
        // equals spec.replicas.
        let usage_ratio = lag as f64 / (target * f64::from(current));
        let proposal = if (1.0 - usage_ratio).abs() > HPA_TOLERANCE {
            (lag as f64 / target).ceil().min(f64::from(u32::MAX)) as u32
        } else {
            current
        };
        // The HPA clamps the metric's proposal to [minReplicas, maxReplicas] before behaviors.
        let desired = proposal.clamp(hpa_min, self.max_replicas);
        // stabilizeRecommendationWithBehaviors: the scale-up window is 0 s, so only a
        // scale-down is stabilized, to the highest recommendation of the last 300 s.
        if self.recommendations.is_empty() {
            // maybeInitScaleDownStabilizationWindow: the current count counts as a recommendation.
            self.recommendations.push_back((now, current));
        }
        self.recommendations.push_back((now, desired));
        while self
            .recommendations
            .front()
            .is_some_and(|(t, _)| *t <= now - HPA_SCALE_DOWN_STABILIZATION)
        {
            self.recommendations.pop_front();
        }
        let down_recommendation = self.recommendations.iter().map(|(_, r)| *r).max().unwrap_or(desired);
        let mut stabilized = current;
        if stabilized < desired {
            stabilized = desired;
        }
        if stabilized > down_recommendation {
            stabilized = down_recommendation;
        }
        // convertDesiredReplicasWithBehaviorRate: the scale-up limit.
        while self
            .scale_ups
            .front()
            .is_some_and(|(t, _)| *t <= now - HPA_SCALE_UP_PERIOD)
        {
            self.scale_ups.pop_front();
        }
        let added: u32 = self.scale_ups.iter().map(|(_, n)| *n).sum();
        let period_start = current.saturating_sub(added);
        let by_pods = period_start + HPA_SCALE_UP_PODS;
        let by_percent = (f64::from(period_start) * (1.0 + HPA_SCALE_UP_PERCENT / 100.0)).ceil() as u32;
        let up_limit = by_pods.max(by_percent).min(self.max_replicas);
        let next = stabilized.min(up_limit).clamp(hpa_min, self.max_replicas);
        if next > current {
            self.scale_ups.push_back((now, next - current));
        }
        (next != current).then_some(next)
    }
}

impl ScalingPolicy for Keda {
    fn removal(&self) -> Removal {
        Removal::Arbitrary
    }

    fn next_tick(&self) -> f64 {
        self.next_poll.min(self.next_sync)
    }

    fn tick(&mut self, now: f64, sim: &Sim<'_>) -> Option<u32> {
        let current = sim.desired();
        let lag = sim.lag();
        if self.next_poll <= now {
            self.next_poll = now + KEDA_POLLING_INTERVAL;
            if lag > 0 {
                self.last_active = now;
                if current == 0 {
                    return Some(1);
                }
            } else if self.min_replicas == 0 && current > 0 && now - self.last_active >= KEDA_COOLDOWN {
                return Some(0);
            }
            return None;
        }
        self.next_sync = now + HPA_SYNC_PERIOD;
        self.hpa_sync(now, current, lag)
    }
}

/// The WorkerPodAutoscaler's resync period.
pub const WPA_LOOP: f64 = 20.0;
pub const WPA_TARGET_MESSAGES_PER_WORKER: f64 = 10.0;
pub const WPA_TOLERANCE: f64 = 0.1;
/// `--scale-down-delay-after-last-scale-activity` default.
pub const WPA_SCALE_DOWN_DELAY: f64 = 600.0;

/// practo/k8s-worker-pod-autoscaler (`pkg/controller/controller.go`, `GetDesiredWorkers`,
/// and `pkg/queue/sqs.go` for the rate): every 20 s,
/// desired = max(ceil((visible + in-flight) ÷ targetMessagesPerWorker),
///               ceil(secondsToProcessOneJob × messages sent per second)),
/// with the rate averaged over [now − 10 min, now − 5 min] (CloudWatch's delayed
/// NumberOfMessagesSent), a 0.1 tolerance around the current count, and scale-down only 600 s
/// after the last scale activity. `secondsToProcessOneJob` is the scenario's initial mean: what
/// a user would configure. The Deployment removes arbitrary pods, like the HPA's.
pub struct Wpa {
    seconds_per_job: f64,
    min_replicas: u32,
    max_replicas: u32,
    next: f64,
    last_scale: f64,
}

impl Wpa {
    pub fn new(scenario: &Scenario) -> Self {
        Self {
            seconds_per_job: scenario.processing.mean.as_secs_f64(),
            min_replicas: scenario.consumer.min_replicas,
            max_replicas: scenario.consumer.max_replicas,
            next: WPA_LOOP,
            last_scale: f64::NEG_INFINITY,
        }
    }
}

impl ScalingPolicy for Wpa {
    fn removal(&self) -> Removal {
        Removal::Arbitrary
    }

    fn next_tick(&self) -> f64 {
        self.next
    }

    fn tick(&mut self, now: f64, sim: &Sim<'_>) -> Option<u32> {
        self.next = now + WPA_LOOP;
        let current = sim.desired();
        let queue_messages = sim.lag() + sim.pending();
        let (from, to) = ((now - 600.0).max(0.0), (now - 300.0).max(0.0));
        let rate = if to > from {
            sim.arrivals_between(from, to) as f64 / 300.0
        } else {
            0.0
        };
        let by_rate = (self.seconds_per_job * rate).ceil() as u32;
        let min_workers = self.min_replicas.max(by_rate);
        let desired = if queue_messages > 0 {
            let usage_ratio = queue_messages as f64 / (WPA_TARGET_MESSAGES_PER_WORKER * f64::from(current));
            if current > 0 && (1.0 - usage_ratio).abs() <= WPA_TOLERANCE {
                current
            } else {
                (queue_messages as f64 / WPA_TARGET_MESSAGES_PER_WORKER).ceil() as u32
            }
        } else if rate > 0.0 {
            min_workers
        } else if sim.in_flight() == 0 {
            // Every worker idle: the massive scale-down (to minWorkers).
            0
        } else {
            current
        };
        let desired = desired.clamp(min_workers.min(self.max_replicas), self.max_replicas);
        if desired == current || (desired < current && now - self.last_scale < WPA_SCALE_DOWN_DELAY) {
            return None;
        }
        self.last_scale = now;
        Some(desired)
    }
}
