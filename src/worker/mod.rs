//! The consumer runtime behind `streamq worker`: [`Worker`] reads a queue's
//! stream through its consumer group and runs a handler per message; the
//! handlers here run a command per message ([`ExecHandler`]) or POST it to a
//! local URL ([`HttpHandler`]).
//!
//! Delivery semantics: at least once. A message is acked only after its
//! handler succeeded; on failure it stays pending and is taken over
//! (`XAUTOCLAIM`) once idle for the visibility timeout, by this or any other
//! worker of the group. A message whose handler failed on its
//! `max_deliveries`-th delivery is moved to the dead-letter stream right
//! away; one found at reclaim time with `max_deliveries` deliveries behind
//! it (its last handler crashed) is moved then. Without a dead-letter
//! stream, failing messages are redelivered forever.
//!
//! Entries not written by `streamq publish` (any `XADD`) are handled like
//! any other message, never crash the worker, and are acked on success:
//! - no `data` field: the payload is empty (library: [`Message::data`] is
//!   empty and [`Message::field`]`("data")` is `None`; exec: empty stdin;
//!   HTTP: empty body), and every field is a header;
//! - binary payloads and header values are passed through byte-exact (exec:
//!   on stdin; HTTP: as the body). Field names are text: bytes in a name that
//!   are not UTF-8 become U+FFFD. If `data` occurs twice, the first is the
//!   payload and the others are dropped;
//! - large payloads (tested with 10 MB) are passed through whole. Exec mode
//!   writes stdin while it drains the child's stderr and waits for it, so a
//!   child that writes before it reads, or never reads, cannot deadlock it;
//! - exec mode leaves out, with a warning, a header whose value holds NUL or
//!   is too long for one environment variable (128 KiB); if all headers
//!   together exceed the kernel's limit, the handler cannot start and the
//!   message fails (and is dead-lettered after `max_deliveries`). HTTP mode
//!   leaves out header values that are not valid in HTTP.
//!
//! A handler that panics (library) fails its message like an `Err`.

mod config;
mod connection;
mod dispatch;
mod exec;
mod http;
mod message;
mod metrics;
mod reclaim;
mod runtime;
mod settle;
mod shared;

pub use config::WorkerConfig;
pub use exec::{ExecHandler, header_env_name};
pub use http::HttpHandler;
pub use message::{HandlerError, Message};
pub use metrics::encode_metrics;
pub use runtime::{Counters, RunSummary, Worker, WorkerError};
