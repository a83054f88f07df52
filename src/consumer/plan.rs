//! The replica plan, pure: how many workers the Deployment gets this round,
//! and why, from the spec, the autoscaler's latest decision and what runs.

use crate::api::Consumer;

/// The replicas for this round. Without autoscaling, `spec.replicas`; with
/// it, the sampler's latest decision. Until there is one (or while it holds
/// on missing data) keep what runs, or start at the minimum.
pub fn desired_replicas(consumer: &Consumer, decided: Option<i32>, current: Option<i32>) -> i32 {
    match &consumer.spec.autoscaling {
        None => consumer.spec.replicas.unwrap_or(1),
        Some(a) => decided
            .or(current)
            .unwrap_or(a.min_replicas)
            .clamp(a.min_replicas, a.max_replicas.max(a.min_replicas)),
    }
}

/// Why the replicas change: the spec, or the autoscaler's reason.
pub fn scale_reason(consumer: &Consumer, autoscaler_reason: Option<String>) -> String {
    match &consumer.spec.autoscaling {
        None => "spec.replicas".to_owned(),
        Some(_) => autoscaler_reason.unwrap_or_else(|| "minReplicas".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn consumer(spec: &str) -> Consumer {
        crate::api::from_yaml(&format!(
            "apiVersion: streamq.dev/v1alpha1\nkind: Consumer\nmetadata: {{name: c, namespace: ns}}\n\
             spec: {{queueRef: {{name: q}}, template: {{spec: {{containers: [{{name: w, image: i}}]}}}}, {spec}}}"
        ))
        .unwrap()
    }

    #[test]
    fn fixed_replicas_follow_the_spec() {
        let c = consumer("replicas: 3");
        assert_eq!(desired_replicas(&c, Some(9), Some(1)), 3);
        assert_eq!(scale_reason(&c, Some("lag".into())), "spec.replicas");
    }

    #[test]
    fn autoscaled_replicas_follow_the_decision_within_bounds() {
        let c = consumer("autoscaling: {minReplicas: 1, maxReplicas: 5, targetLatency: 10s}");
        assert_eq!(desired_replicas(&c, Some(9), Some(2)), 5, "clamped to max");
        assert_eq!(desired_replicas(&c, None, Some(2)), 2, "no decision keeps what runs");
        assert_eq!(desired_replicas(&c, None, None), 1, "nothing runs: the minimum");
        assert_eq!(scale_reason(&c, None), "minReplicas");
    }
}
