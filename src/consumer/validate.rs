//! The validate phase, pure: what admission cannot check about a Consumer.

use crate::{
    api::{Consumer, Reason},
    problem::Problem,
};

pub fn validate(consumer: &Consumer) -> Result<(), Problem> {
    let no_containers = consumer
        .spec
        .template
        .spec
        .as_ref()
        .is_none_or(|s| s.containers.is_empty());
    if no_containers {
        return Err(Problem::fault(
            Reason::InvalidSpec,
            "spec.template.spec.containers is empty: give the worker pods at least one container",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_template_without_containers_is_refused() {
        let c: Consumer = crate::api::from_yaml(
            "apiVersion: streamq.dev/v1alpha1\nkind: Consumer\nmetadata: {name: c, namespace: ns}\n\
             spec: {queueRef: {name: q}, template: {spec: {containers: []}}}",
        )
        .unwrap();
        let p = validate(&c).unwrap_err();
        assert_eq!(p.reason, Reason::InvalidSpec);
        assert!(p.fault);
    }
}
