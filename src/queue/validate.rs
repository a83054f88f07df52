//! The validate phase, pure: is the spec usable? Admission already rejects what the
//! schema and CEL can express; this catches what they cannot.

use crate::api::{Broker, Queue};

/// A reason the spec cannot be acted on, phrased as what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

pub fn validate(queue: &Queue) -> Result<(), Invalid> {
    let stream = queue.stream_key();
    if let Some(dlq) = queue.dead_letter_stream_key()
        && dlq == stream
    {
        return Err(Invalid(format!(
            "spec.deadLetter.streamKey is the stream itself ({stream:?}): give the dead-letter stream its own key"
        )));
    }
    // Redis refuses ACL key patterns with whitespace (`ACL SETUSER … ~a b` is a
    // syntax error), so such a key could never get its per-queue users.
    for (field, key) in [
        ("spec.streamKey", Some(&stream)),
        ("spec.deadLetter.streamKey", queue.dead_letter_stream_key().as_ref()),
    ] {
        if let Some(key) = key
            && key.chars().any(char::is_whitespace)
        {
            return Err(Invalid(format!(
                "{field} {key:?} contains whitespace, which Redis ACL key patterns cannot hold: choose a key without spaces"
            )));
        }
    }
    if stream.ends_with(":owner") || stream.contains(":stats:") {
        return Err(Invalid(format!(
            "spec.streamKey {stream:?} collides with streamq's own keys (':owner', ':stats:'): choose another key"
        )));
    }
    if let Broker::Managed(managed) = &queue.spec.broker
        && let Some(storage) = &managed.storage
        && !is_quantity(&storage.size)
    {
        return Err(Invalid(format!(
            "spec.broker.managed.storage.size {:?} is not a Kubernetes quantity: write it like 1Gi or 500Mi",
            storage.size
        )));
    }
    if queue.spec.delivery.visibility_timeout.as_millis() < 1_000 {
        return Err(Invalid(
            "spec.delivery.visibilityTimeout must be at least 1s: shorter would redeliver messages still being processed"
                .into(),
        ));
    }
    Ok(())
}

/// A plain decimal with an optional binary or decimal SI suffix: what a
/// storage request is written as in practice.
fn is_quantity(s: &str) -> bool {
    let digits = s.bytes().take_while(|b| b.is_ascii_digit() || *b == b'.').count();
    digits > 0
        && s[..digits].parse::<f64>().is_ok()
        && matches!(
            &s[digits..],
            "" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei" | "k" | "M" | "G" | "T" | "P" | "E"
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(yaml: &str) -> Queue {
        crate::api::from_yaml(yaml).unwrap()
    }

    const BASE: &str = "apiVersion: streamq.dev/v1alpha1\nkind: Queue\nmetadata: {name: q, namespace: ns}\n";

    #[test]
    fn a_plain_external_queue_is_valid() {
        let q = queue(&format!(
            "{BASE}spec: {{broker: {{external: {{urlSecretRef: {{name: s, key: url}}}}}}}}"
        ));
        assert_eq!(validate(&q), Ok(()));
    }

    #[test]
    fn dead_letter_stream_must_differ_from_the_stream() {
        let q = queue(&format!(
            "{BASE}spec: {{broker: {{managed: {{}}}}, streamKey: s, deadLetter: {{enabled: true, streamKey: s}}}}"
        ));
        assert!(validate(&q).unwrap_err().0.contains("its own key"));
    }

    #[test]
    fn storage_size_must_be_a_quantity() {
        let q = queue(&format!(
            "{BASE}spec: {{broker: {{managed: {{storage: {{size: lots}}}}}}}}"
        ));
        assert!(validate(&q).unwrap_err().0.contains("like 1Gi"));
        let ok = queue(&format!(
            "{BASE}spec: {{broker: {{managed: {{storage: {{size: 1Gi}}}}}}}}"
        ));
        assert_eq!(validate(&ok), Ok(()));
    }

    #[test]
    fn keys_with_whitespace_are_refused() {
        let q = queue(&format!(
            "{BASE}spec: {{broker: {{managed: {{}}}}, streamKey: \"a b\"}}"
        ));
        assert!(
            validate(&q)
                .unwrap_err()
                .0
                .contains("spec.streamKey \"a b\" contains whitespace")
        );
        let q = queue(&format!(
            "{BASE}spec: {{broker: {{managed: {{}}}}, deadLetter: {{streamKey: \"dead\\tletters\"}}}}"
        ));
        assert!(validate(&q).unwrap_err().0.contains("spec.deadLetter.streamKey"));
    }

    #[test]
    fn visibility_timeout_has_a_floor() {
        let q = queue(&format!(
            "{BASE}spec: {{broker: {{managed: {{}}}}, delivery: {{maxDeliveries: 3, visibilityTimeout: 500ms}}}}"
        ));
        assert!(validate(&q).unwrap_err().0.contains("at least 1s"));
    }
}
