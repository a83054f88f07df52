//! Reads a worker pod's start-up (creation → Ready) for the autoscaler's
//! estimate. Pure: the pods come from the apply phase's list.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;

use crate::autoscale::startup::PodStart;

/// The pod's time from creation to its first Ready; `None` while not Ready,
/// or after a container restarted (its Ready time then says nothing of start-up).
pub fn of(pod: &Pod) -> Option<PodStart> {
    let created = pod.metadata.creation_timestamp.as_ref()?.0;
    let status = pod.status.as_ref()?;
    if status.container_statuses.iter().flatten().any(|c| c.restart_count > 0) {
        return None;
    }
    let ready = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Ready" && c.status == "True")?
        .last_transition_time
        .as_ref()?
        .0;
    let took = Duration::try_from(ready.duration_since(created)).ok()?;
    Some(PodStart {
        uid: pod.metadata.uid.clone()?,
        created_ms: created.as_millisecond(),
        took,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(yaml: &str) -> Pod {
        crate::api::from_yaml(yaml).expect("a Pod")
    }

    const READY: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: workers-abc, uid: u1, creationTimestamp: "2026-12-02T10:00:00Z"}
status:
  conditions:
    - {type: PodScheduled, status: "True", lastTransitionTime: "2026-12-02T10:00:00Z"}
    - {type: Ready, status: "True", lastTransitionTime: "2026-12-02T10:00:03Z"}
  containerStatuses:
    - {name: worker, image: w, imageID: "", ready: true, restartCount: 0}
"#;

    #[test]
    fn a_ready_pod_took_from_creation_to_ready() {
        let start = of(&pod(READY)).expect("measured");
        assert_eq!(start.took, Duration::from_secs(3));
        assert_eq!(start.uid, "u1");
    }

    #[test]
    fn a_pod_not_yet_ready_is_not_measured() {
        let yaml = READY.replace(r#"{type: Ready, status: "True""#, r#"{type: Ready, status: "False""#);
        assert_eq!(of(&pod(&yaml)), None);
    }

    #[test]
    fn a_restarted_pod_is_not_measured() {
        let yaml = READY.replace("restartCount: 0", "restartCount: 2");
        assert_eq!(of(&pod(&yaml)), None);
    }
}
