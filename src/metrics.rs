//! Prometheus metrics of the operator itself.

use std::time::Instant;

use std::sync::atomic::AtomicU64;

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    pub controller: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    pub controller: &'static str,
    pub error: String,
}

/// One Consumer, for the per-Consumer series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConsumerLabels {
    pub namespace: String,
    pub consumer: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// What the autoscaler saw and decided, per Consumer, at the last sample.
#[derive(Default)]
pub struct ConsumerMetrics {
    pub lag: Family<ConsumerLabels, Gauge>,
    pub pending: Family<ConsumerLabels, Gauge>,
    pub arrival_rate: Family<ConsumerLabels, FloatGauge>,
    pub completion_rate: Family<ConsumerLabels, FloatGauge>,
    pub processing_seconds: Family<ConsumerLabels, FloatGauge>,
    pub desired_replicas: Family<ConsumerLabels, Gauge>,
    pub current_replicas: Family<ConsumerLabels, Gauge>,
    pub decisions: Family<ConsumerLabels, Counter>,
}

impl ConsumerMetrics {
    fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("consumer");
        r.register("lag", "Entries not yet delivered to the group", self.lag.clone());
        r.register(
            "pending",
            "Entries delivered and not acknowledged",
            self.pending.clone(),
        );
        r.register(
            "arrival_rate",
            "Messages added per second, smoothed",
            self.arrival_rate.clone(),
        );
        r.register(
            "completion_rate",
            "Messages acknowledged per second, smoothed",
            self.completion_rate.clone(),
        );
        r.register(
            "processing_seconds",
            "Processing time of one message used for sizing",
            self.processing_seconds.clone(),
        );
        r.register(
            "desired_replicas",
            "Replicas the autoscaler wants",
            self.desired_replicas.clone(),
        );
        r.register(
            "current_replicas",
            "Replicas the Deployment has",
            self.current_replicas.clone(),
        );
        r.register("decisions", "Autoscaler decisions made", self.decisions.clone());
    }

    /// One Consumer's series, to be set every sample without looking them
    /// up again (a family's lookup hashes the labels under a lock; 8 a
    /// Consumer a second were a sixth of the sampler). Optional figures
    /// get their series once first known.
    pub fn series(&self, labels: ConsumerLabels) -> ConsumerSeries {
        ConsumerSeries {
            pending: self.pending.get_or_create(&labels).clone(),
            processing_seconds: self.processing_seconds.get_or_create(&labels).clone(),
            desired_replicas: self.desired_replicas.get_or_create(&labels).clone(),
            current_replicas: self.current_replicas.get_or_create(&labels).clone(),
            decisions: self.decisions.get_or_create(&labels).clone(),
            lag: None,
            arrival_rate: None,
            completion_rate: None,
            labels,
        }
    }

    /// Drops the series of a Consumer that is gone.
    pub fn forget(&self, labels: &ConsumerLabels) {
        self.lag.remove(labels);
        self.pending.remove(labels);
        self.arrival_rate.remove(labels);
        self.completion_rate.remove(labels);
        self.processing_seconds.remove(labels);
        self.desired_replicas.remove(labels);
        self.current_replicas.remove(labels);
        self.decisions.remove(labels);
    }
}

/// Handles on one Consumer's series in [`ConsumerMetrics`] (each shares its
/// value with the family's); from [`ConsumerMetrics::series`].
pub struct ConsumerSeries {
    pub labels: ConsumerLabels,
    pub lag: Option<Gauge>,
    pub pending: Gauge,
    pub arrival_rate: Option<FloatGauge>,
    pub completion_rate: Option<FloatGauge>,
    pub processing_seconds: FloatGauge,
    pub desired_replicas: Gauge,
    pub current_replicas: Gauge,
    pub decisions: Counter,
}

pub struct Metrics {
    registry: Registry,
    pub consumers: ConsumerMetrics,
    pub reconciliations: Family<ControllerLabels, Counter>,
    pub failures: Family<FailureLabels, Counter>,
    pub reconcile_duration: Family<ControllerLabels, Histogram>,
    /// How late each Consumer's sample came: the time since its previous one, less the interval.
    pub sample_delay: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("streamq");
        let reconciliations = Family::<ControllerLabels, Counter>::default();
        let failures = Family::<FailureLabels, Counter>::default();
        let reconcile_duration = Family::<ControllerLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0])
        });
        registry.register("reconciliations", "Reconciliations started", reconciliations.clone());
        registry.register(
            "reconcile_failures",
            "Reconciliations that returned an error",
            failures.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time spent in one reconciliation",
            reconcile_duration.clone(),
        );
        let sample_delay = Histogram::new([0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]);
        registry.register(
            "sample_delay_seconds",
            "How much later than the sample interval each Consumer's sample came",
            sample_delay.clone(),
        );
        let consumers = ConsumerMetrics::default();
        consumers.register(&mut registry);
        Self {
            sample_delay,
            registry,
            consumers,
            reconciliations,
            failures,
            reconcile_duration,
        }
    }
}

impl Metrics {
    /// Counts a reconciliation and times it until the returned guard drops.
    pub fn reconcile_started(&self, controller: &'static str) -> ReconcileTimer<'_> {
        self.reconciliations
            .get_or_create(&ControllerLabels { controller })
            .inc();
        ReconcileTimer {
            metrics: self,
            controller,
            start: Instant::now(),
        }
    }

    pub fn reconcile_failed(&self, controller: &'static str, error: &str) {
        self.failures
            .get_or_create(&FailureLabels {
                controller,
                error: error.to_owned(),
            })
            .inc();
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

pub struct ReconcileTimer<'a> {
    metrics: &'a Metrics,
    controller: &'static str,
    start: Instant,
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        self.metrics
            .reconcile_duration
            .get_or_create(&ControllerLabels {
                controller: self.controller,
            })
            .observe(self.start.elapsed().as_secs_f64());
    }
}
