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
