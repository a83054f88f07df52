//! The consumer runtime behind `streamq worker`: [`Worker`] reads a queue's
//! stream through its consumer group and runs a handler per message, a
//! command ([`ExecHandler`]) or a POST to a local URL ([`HttpHandler`]).
//!
//! Delivery is at least once: a message is acked only after its handler
//! succeeded (a panic or timeout is a failure). A failed message stays
//! pending and is taken over (`XAUTOCLAIM`) once idle for the visibility
//! timeout, by any worker of the group. With a dead-letter stream, a message
//! that failed its `max_deliveries`-th delivery, or is found at reclaim with
//! that many behind it, moves there; without one it is redelivered forever.
//!
//! Entries not written by `streamq publish` are handled like any other and
//! never crash the worker: without a `data` field the payload is empty and
//! every field is a header; payloads and header values pass byte-exact
//! (field names are text: bytes that are not UTF-8 become U+FFFD); a header
//! the handler cannot be given (exec: NUL or over 128 KiB; HTTP: not a valid
//! header value) is left out with a warning.

mod config;
mod connection;
mod dispatch;
mod exec;
mod http;
mod message;
mod metrics;
mod reclaim;
mod report;
mod runtime;
mod settle;
mod shared;

pub use config::WorkerConfig;
pub use exec::{ExecHandler, header_env_name};
pub use http::HttpHandler;
pub use message::{HandlerError, Message};
pub use metrics::encode_metrics;
pub use report::{Counters, RunSummary, WorkerError};
pub use runtime::Worker;
