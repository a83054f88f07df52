//! What a handler is given ([`Message`]) and how it reports failure ([`HandlerError`]).

use std::{fmt, sync::Arc};

use crate::redis::stream::StreamEntry;

/// A message handed to the handler.
#[derive(Clone, Debug)]
pub struct Message {
    entry: Arc<StreamEntry>,
    delivery_count: u64,
}

impl Message {
    pub(super) fn new(entry: Arc<StreamEntry>, delivery_count: u64) -> Self {
        Self { entry, delivery_count }
    }

    pub fn id(&self) -> &str {
        &self.entry.id
    }

    /// The payload (the `data` field).
    pub fn data(&self) -> &[u8] {
        self.entry.data()
    }

    /// 1 on first delivery, higher on redelivery.
    pub fn delivery_count(&self) -> u64 {
        self.delivery_count
    }

    /// Every field but the payload, in stream order.
    pub fn headers(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.entry.headers()
    }

    /// The first field named `name`, if any: `field("data")` tells a
    /// missing payload from an empty one.
    pub fn field(&self, name: &str) -> Option<&[u8]> {
        self.entry.field(name)
    }
}

/// Why a handler failed; recorded as the dead-letter entry's `streamq.error`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HandlerError(pub String);

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for HandlerError {}

/// Bytes of a handler's output (exec: stderr; HTTP: the error response's
/// body) kept for `streamq.error`.
pub(super) const OUTPUT_TAIL: usize = 2048;

impl HandlerError {
    /// `how` the handler failed, followed by the end of its `output`
    /// (called `what`) if there is any.
    pub(super) fn with_output(how: String, what: &str, output: &[u8]) -> Self {
        let start = output.len().saturating_sub(OUTPUT_TAIL);
        let tail = String::from_utf8_lossy(&output[start..]);
        let tail = tail.trim();
        Self(if tail.is_empty() {
            how
        } else {
            format!("{how}; {what}: {tail}")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_with_output_keeps_the_end() {
        assert_eq!(
            HandlerError::with_output("exit code 1".into(), "stderr", b" \n").0,
            "exit code 1"
        );
        let mut output = vec![b'a'; OUTPUT_TAIL];
        output.extend_from_slice(b"last words\n");
        let e = HandlerError::with_output("exit code 2".into(), "stderr", &output);
        assert!(e.0.starts_with("exit code 2; stderr: a"), "{e}");
        assert!(e.0.ends_with("last words"), "{e}");
        assert_eq!(e.0.len(), "exit code 2; stderr: ".len() + OUTPUT_TAIL - 1);
    }
}
