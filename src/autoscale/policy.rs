//! What the user asked for: `Consumer.spec.autoscaling` and `concurrency`.

use std::time::Duration;

#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    pub min_replicas: u32,
    pub max_replicas: u32,
    pub concurrency: u32,
    pub target_latency: Duration,
    pub scale_down_delay: Duration,
    /// Used only until the processing time is measured.
    pub processing_time_hint: Option<Duration>,
    /// Expected time from replicas raised to consuming (measured by the operator or a flag).
    pub pod_startup: Duration,
}

/// A policy the autoscaler cannot honour as written. The CRD's validation rejects these; the
/// autoscaler still accepts them (see [`super::Autoscaler::new`]) so that it never panics.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("minReplicas ({min}) is greater than maxReplicas ({max})")]
    MinAboveMax { min: u32, max: u32 },
    #[error("maxReplicas must be at least 1")]
    ZeroMaxReplicas,
    #[error("concurrency must be at least 1")]
    ZeroConcurrency,
    #[error("targetLatency must be greater than 0")]
    ZeroTargetLatency,
}

impl Policy {
    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.max_replicas == 0 {
            return Err(PolicyError::ZeroMaxReplicas);
        }
        if self.min_replicas > self.max_replicas {
            return Err(PolicyError::MinAboveMax {
                min: self.min_replicas,
                max: self.max_replicas,
            });
        }
        if self.concurrency == 0 {
            return Err(PolicyError::ZeroConcurrency);
        }
        if self.target_latency.is_zero() {
            return Err(PolicyError::ZeroTargetLatency);
        }
        Ok(())
    }

    /// The policy with invalid values made usable: max ≥ max(min, 1), concurrency ≥ 1, target > 0.
    pub(super) fn sanitized(mut self) -> Self {
        self.max_replicas = self.max_replicas.max(self.min_replicas).max(1);
        self.concurrency = self.concurrency.max(1);
        if self.target_latency.is_zero() {
            self.target_latency = Duration::from_millis(1);
        }
        self
    }
}
